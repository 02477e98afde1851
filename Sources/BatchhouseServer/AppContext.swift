import BatchhouseConfig
import BatchhouseCore
import BatchhouseSpool
import BatchhouseUpstream
import Logging
import Synchronization

/// What every connection's handler shares: the current configuration, the batcher, the flusher,
/// the upstream client and the metrics. Swapping `configuration` is how a reload takes effect.
final class AppContext: Sendable {
    let batcher: Batcher
    let flusher: Flusher
    let sender: BatchSender
    let client: CurlClient
    let metrics: BatchhouseMetrics
    let logger: Logger
    let acks: PendingAcks
    /// The write-ahead spool, when `spool:` is configured.
    let spool: Spool?
    let startedAt: ContinuousClock.Instant
    /// The configuration in a box: a request reads it with one lock and one retain instead of copying the
    /// whole struct (its rules, arrays and strings) every time.
    final class ConfigurationSnapshot: Sendable {
        let value: BatchhouseConfiguration
        init(_ value: BatchhouseConfiguration) { self.value = value }
    }

    private let current: Mutex<ConfigurationSnapshot>
    private let acceptingInserts = Mutex(true)
    private let healthCheckedOnce = Mutex(false)

    func healthChecked() { healthCheckedOnce.withLock { $0 = true } }
    var hasCheckedHealth: Bool { healthCheckedOnce.withLock { $0 } }

    init(
        configuration: BatchhouseConfiguration, batcher: Batcher, flusher: Flusher, sender: BatchSender,
        client: CurlClient, metrics: BatchhouseMetrics, logger: Logger, acks: PendingAcks, spool: Spool?
    ) {
        self.acks = acks
        self.spool = spool
        self.current = Mutex(ConfigurationSnapshot(configuration))
        self.batcher = batcher
        self.flusher = flusher
        self.sender = sender
        self.client = client
        self.metrics = metrics
        self.logger = logger
        self.startedAt = .now
    }

    var configuration: BatchhouseConfiguration { current.withLock { $0 }.value }

    /// The current configuration, for the per-request path.
    var configurationSnapshot: ConfigurationSnapshot { current.withLock { $0 } }

    func replaceConfiguration(_ configuration: BatchhouseConfiguration) {
        let snapshot = ConfigurationSnapshot(configuration)
        current.withLock { $0 = snapshot }
    }

    /// False once shutdown began: `/ping` answers 503 so load balancers move away.
    var isAcceptingInserts: Bool {
        get { acceptingInserts.withLock { $0 } }
        set { acceptingInserts.withLock { $0 = newValue } }
    }
}
