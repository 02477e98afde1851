import BatchhouseCore
import Foundation

/// Reads the time for the core, which never reads a clock itself.
package protocol NowProvider: Sendable {
    func now() -> Instant
}

/// Every time-dependent part of the engine (flush deadlines, backoff, breakers, latencies, dead-letter stamps)
/// reads time through this, so tests drive time instead of sleeping (docs/architecture.md, "Time").
package protocol EngineClock: NowProvider {
    /// Suspends for `duration` of this clock's time; returns early if the task is cancelled.
    func sleep(for duration: Duration) async
    /// Seconds since 1970, for figures people read (`last_flush_time`, dead-letter file names).
    func wallClockSeconds() -> Double
}

/// The process's monotonic clock, as the core's `Instant`.
package struct MonotonicClock: EngineClock {
    private static let origin = ContinuousClock.now

    package init() {}

    package func now() -> Instant {
        Instant(nanoseconds: (ContinuousClock.now - Self.origin).nanoseconds)
    }

    package func sleep(for duration: Duration) async {
        try? await Task.sleep(for: duration)
    }

    package func wallClockSeconds() -> Double { Date().timeIntervalSince1970 }
}
