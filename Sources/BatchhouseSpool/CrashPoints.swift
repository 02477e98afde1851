#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// A test hook: named places where the process kills itself with SIGKILL, so the fault suite can crash the
/// release binary at the worst moments (docs/testing.md, "Crash points"). Off unless the environment variable
/// `BATCHHOUSE_CRASH_AT` is set when the process starts:
///
/// ```
/// BATCHHOUSE_CRASH_AT=after-commit          # the first time ClickHouse took a batch, before the spool knows
/// BATCHHOUSE_CRASH_AT=after-spool-write@50  # the 50th time a chunk record was written
/// ```
///
/// One point per process (the last one named wins). When it is off, reaching a point costs one load of a
/// constant and a branch.
public enum CrashPoint: String, Sendable, CaseIterable {
    /// A chunk record is written to the spool (not yet fsynced, the client not yet answered).
    case afterSpoolWrite = "after-spool-write"
    /// An fdatasync of the spool succeeded, before its waiters (`durable` acks) are resumed.
    case afterFsync = "after-fsync"
    /// A batched INSERT is about to be answered 200.
    case beforeAck = "before-ack"
    /// The spool recorded that a batch is being sent, before the request goes out.
    case afterSendingMark = "after-sending-mark"
    /// ClickHouse answered 2xx for a batch, before the spool marks its chunks delivered.
    case afterCommit = "after-commit"
    /// As `after-commit`, for a batch replayed from the spool after a restart.
    case duringRecovery = "during-recovery"

    /// Kills the process if this is the armed point and it has now been reached its set number of times.
    @inline(__always)
    public func reach() {
        guard let armed = CrashPoints.armed, armed.point == self else { return }
        CrashPoints.count(armed)
    }
}

/// The armed crash point, read once from the environment.
public enum CrashPoints {
    struct Armed: Sendable {
        var point: CrashPoint
        var after: Int
    }

    static let armed: Armed? = parse(getenv("BATCHHOUSE_CRASH_AT").map { String(cString: $0) })
    private static let reached = Atomic<Int>(0)

    /// `name` or `name@N` (N ≥ 1, default 1); nil for anything else.
    static func parse(_ value: String?) -> Armed? {
        guard let value, !value.isEmpty else { return nil }
        let parts = value.split(separator: "@", maxSplits: 1).map(String.init)
        guard let point = CrashPoint(rawValue: parts[0]) else { return nil }
        let after = parts.count == 2 ? Int(parts[1]) ?? 0 : 1
        guard after >= 1 else { return nil }
        return Armed(point: point, after: after)
    }

    /// What the environment armed, for the start-up log (nil when off).
    public static var description: String? { armed.map { "\($0.point.rawValue)@\($0.after)" } }

    fileprivate static func count(_ armed: Armed) {
        if reached.add(1, ordering: .relaxed).newValue >= armed.after {
            kill(getpid(), SIGKILL)
            // SIGKILL cannot be caught; this only keeps the compiler and a stopped process honest.
            while true { pause() }
        }
    }
}
