import BatchhouseCore

/// Reads the time for the core, which never reads a clock itself.
protocol NowProvider: Sendable {
    func now() -> Instant
}

/// The process's monotonic clock, as the core's `Instant`.
struct MonotonicClock: NowProvider {
    private static let origin = ContinuousClock.now

    func now() -> Instant {
        Instant(nanoseconds: (ContinuousClock.now - Self.origin).nanoseconds)
    }
}
