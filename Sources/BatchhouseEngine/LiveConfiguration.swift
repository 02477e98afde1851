import BatchhouseConfig
import Synchronization

/// The running configuration. A request reads it with one lock and one retain instead of copying the whole
/// struct (its rules, arrays and strings); a reload swaps the snapshot.
package final class LiveConfiguration: Sendable {
    package final class Snapshot: Sendable {
        package let value: BatchhouseConfiguration
        init(_ value: BatchhouseConfiguration) { self.value = value }
    }

    private let current: Mutex<Snapshot>

    package init(_ configuration: BatchhouseConfiguration) {
        current = Mutex(Snapshot(configuration))
    }

    /// The current configuration, for the per-request path.
    package var snapshot: Snapshot { current.withLock { $0 } }

    package var value: BatchhouseConfiguration { snapshot.value }

    package func replace(with configuration: BatchhouseConfiguration) {
        let snapshot = Snapshot(configuration)
        current.withLock { $0 = snapshot }
    }
}
