import BatchhouseConfig
import BatchhouseCore
import BatchhouseSpool
import BatchhouseUpstream
import Logging

/// The parts an INSERT passes through, built once from a configuration and wired in one direction:
/// `Intake` → `Buffering` → `Delivery` → `UpstreamGateway`, and every outcome into `Settlement`
/// (docs/architecture.md). The HTTP server hands requests to `intake`; the flush service drives `flushDue()`,
/// `delivery.run()` and `drain()`; the local endpoints read `status()`.
package final class BatchhouseEngine: Sendable {
    package let configuration: LiveConfiguration
    package let intake: Intake
    package let buffering: Buffering
    package let delivery: Delivery
    package let settlement: Settlement
    package let gateway: UpstreamGateway
    package let spool: Spool?
    package let metrics: BatchhouseMetrics
    package let acks: PendingAcks
    package let clock: any EngineClock
    /// Nil when credentials are not verified (`verifiesCredentials: false`).
    package let verifier: CredentialVerifier?
    package let identityTags: IdentityTags
    private let logger: Logger
    private let startedAt: Instant

    package init(
        configuration: BatchhouseConfiguration, transport: any UpstreamTransport, spool: Spool?, logger: Logger,
        clock: any EngineClock = MonotonicClock(),
        jitter: @escaping @Sendable () -> Double = { Double.random(in: 0...1) },
        identityTags: IdentityTags = .random(), verifiesCredentials: Bool = true
    ) {
        self.configuration = LiveConfiguration(configuration)
        self.spool = spool
        self.clock = clock
        self.logger = logger
        self.startedAt = clock.now()
        metrics = BatchhouseMetrics()
        acks = PendingAcks()
        gateway = UpstreamGateway(transport: transport, upstream: configuration.upstream, clock: clock)
        self.identityTags = identityTags
        verifier =
            verifiesCredentials
            ? CredentialVerifier(
                tags: identityTags, gateway: gateway, clock: clock,
                file: configuration.spool.map { VerifiedIdentityFile(directory: $0.dir) })
            : nil
        buffering = Buffering(clock: clock, maxBufferMemory: configuration.limits.maxBufferMemory)
        settlement = Settlement(
            buffering: buffering, spool: spool, acks: acks, metrics: metrics,
            deadLetters: DeadLetterWriter(directory: configuration.deadLetterDir, logger: logger), clock: clock,
            logger: logger, tags: identityTags, verifier: verifier)
        delivery = Delivery(
            gateway: gateway, settlement: settlement, clock: clock,
            concurrency: configuration.upstream.maxConcurrentFlushes, retryUntilDelivered: spool != nil,
            jitter: jitter)
        intake = Intake(
            configuration: self.configuration, buffering: buffering, delivery: delivery, spool: spool, acks: acks,
            metrics: metrics, gateway: gateway, verifier: verifier)
    }

    // MARK: Start

    /// Puts every row the spool holds that ClickHouse does not have yet back into batches, so they are sent
    /// before or alongside new rows (docs/spool-and-acks.md, "Replay").
    package func restore(_ recovery: SpoolRecovery) {
        for corruption in recovery.corruptions {
            logger.error("spool corruption skipped", metadata: ["where": "\(corruption)"])
        }
        metrics.spoolCorruptions(recovery.corruptions.count)
        let rules = configuration.value.rules
        var rows = 0
        for chunk in recovery.chunks {
            let rule = rules.rule(database: chunk.key.database ?? "default", table: chunk.key.table)
            rows += chunk.rows
            let sealed = chunk.data.withUnsafeBytes {
                buffering.append(
                    key: chunk.key, rule: rule, chunk: $0, rows: chunk.rows, endsWithNewline: chunk.endsWithNewline,
                    token: 0, spoolChunk: chunk.id, reservation: .alreadyAccepted)
            }
            delivery.submit(sealed)
        }
        logger.notice(
            "spool recovered",
            metadata: [
                "segments": "\(recovery.segments)", "bytes": "\(recovery.bytes)", "chunks": "\(recovery.chunks.count)",
                "rows": "\(rows)", "corruptions": "\(recovery.corruptions.count)",
            ])
    }

    // MARK: Flushing

    /// Seals and submits every batch whose `max_delay` has passed; returns the next deadline.
    @discardableResult
    package func flushDue() -> Instant? {
        let (due, next) = buffering.sealDue()
        delivery.submit(due)
        // Delivered marks that found no room before are written as soon as there is (one atomic load otherwise).
        spool?.retryUnwrittenMarks()
        return next
    }

    /// Shutdown: seals every open batch and closes the delivery queue; `delivery.run()` returns once all is sent.
    package func drain() {
        logger.info("flushing everything before exit", metadata: ["buffered_rows": "\(buffering.bufferedRows)"])
        delivery.submit(buffering.sealAll(trigger: .shutdown))
        delivery.close()
    }

    // MARK: Reload

    /// Applies a new configuration (hot reload). Buffered rows stay in their batches and follow the new rules from
    /// now on; a batch that already meets its new limits is flushed. Returns notes on what could not change without
    /// a restart.
    @discardableResult
    package func apply(_ new: BatchhouseConfiguration) -> [String] {
        let old = configuration.value
        var applied = new
        var notes: [String] = []
        if new.listen != old.listen {
            notes.append("listen stays \(old.listen) until a restart")
            applied.listen = old.listen
        }
        if new.upstream.maxConcurrentFlushes != old.upstream.maxConcurrentFlushes {
            notes.append("max_concurrent_flushes stays \(old.upstream.maxConcurrentFlushes) until a restart")
            applied.upstream.maxConcurrentFlushes = old.upstream.maxConcurrentFlushes
        }
        if new.spool != old.spool {
            notes.append("spool settings stay as they were until a restart")
            applied.spool = old.spool
        }
        if new.deadLetterDir != old.deadLetterDir {
            notes.append("dead_letter_dir stays \(old.deadLetterDir) until a restart")
            applied.deadLetterDir = old.deadLetterDir
        }
        gateway.update(applied.upstream)
        configuration.replace(with: applied)
        buffering.setMaxBufferMemory(applied.limits.maxBufferMemory)
        let rules = applied.rules
        delivery.submit(buffering.updateRules { key in rules.rule(database: key.database ?? "default", table: key.table) })
        metrics.configReloaded(ok: true)
        return notes
    }

    // MARK: Figures

    /// What `/health` and `/metrics?format=json` report.
    package struct Status: Sendable {
        package var upstreams: [(url: String, state: UpstreamPool.BreakerState, inFlight: Int, healthy: Bool?)]
        package var hasCheckedHealth: Bool
        package var bufferedRows: Int
        /// Bytes in open batches.
        package var bufferedBytes: Int
        /// Bytes of sealed batches waiting for delivery or in flight.
        package var queuedBytes: Int
        package var memoryInUse: Int
        package var spoolBytes: Int
        package var uptime: Duration
        package var totals: BatchhouseMetrics.Totals
    }

    package func status() -> Status {
        Status(
            upstreams: gateway.serverStates(), hasCheckedHealth: gateway.hasCheckedHealth,
            bufferedRows: buffering.bufferedRows, bufferedBytes: buffering.bufferedBytes,
            queuedBytes: buffering.sealedBytes,
            memoryInUse: buffering.memoryInUse, spoolBytes: spool?.sizeBytes ?? 0, uptime: clock.now() - startedAt,
            totals: metrics.snapshot)
    }

    /// Prometheus text, with the gauges that are read at scrape time brought up to date.
    package func prometheusText() -> [UInt8] {
        metrics.setQueueBytes(buffering.sealedBytes)
        metrics.setReceivingBytes(buffering.incomingBytes)
        metrics.updateBuffered(buffering.bufferedByTable())
        metrics.updateAdaptiveTargets(buffering.adaptiveTargets())
        if let spool { metrics.updateSpool(spool.statistics) }
        return metrics.prometheusText()
    }
}
