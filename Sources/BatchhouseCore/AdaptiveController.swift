#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// How one upstream insert ended, as far as upstream load is concerned.
public enum FlushResult: Sendable, Hashable {
    /// ClickHouse accepted the batch.
    case ok
    /// Upstream is overloaded: TOO_MANY_PARTS (code 252), a timeout, 503 or another "slow down" answer.
    case struggling
    /// Any other failure (bad data, unknown table, authentication): says nothing about load.
    case failed
}

/// Where the `adaptive` strategy currently closes a table's batches; always within the rule's bounds.
public struct AdaptiveTarget: Sendable, Hashable {
    /// A batch is sealed when it holds this many rows...
    public var maxRows: Int
    /// ...or this many bytes of rows...
    public var maxBytes: Int
    /// ...or this long after its first row (fixed when the batch opens).
    public var maxDelay: Duration

    public init(maxRows: Int, maxBytes: Int, maxDelay: Duration) {
        self.maxRows = maxRows
        self.maxBytes = maxBytes
        self.maxDelay = maxDelay
    }
}

/// The `adaptive` strategy's controller for one table: picks the flush point within the rule's
/// `max_rows`/`max_bytes`/`max_delay` from what it measures. A plain value: it never reads a clock.
///
/// The control law:
///
/// - Arrival rate. `R` (rows/s) and `B` (bytes/s) are time-weighted moving averages, time constant 5 s, of the
///   rate between consecutive requests (a request's rows spread over the gap since the previous one), divided by
///   their total weight so they are right from the start; a table's first request counts as one second of
///   traffic. Exact for evenly spaced requests; rows arriving at the same instant add `rows / 5 s`.
/// - Interval. `I`, the wanted time between two inserts of the table, starts at 1 s and stays within
///   [1 s, `max_delay`]. A `struggling` result (TOO_MANY_PARTS, timeout, overload) sets `I = 2·Ie` (below), except
///   that results arriving within `Ie + ℓ` of the last doubling come from batches opened before it and are
///   ignored. Each `ok` result adds 0.1 insert/s: `1/I ← 1/I + 0.1/s`. So the insert rate is halved on trouble
///   and grows back additively (AIMD), from `max_delay` = 5 s to 1 s in 8 inserts (~17 s). `failed` results
///   (bad data, auth, ...) say nothing about load and are ignored.
/// - Latency. `ℓ` is the moving average (weight 0.3 for the newest) of upstream insert latency, `ok` and
///   `struggling` alike. The effective interval is `Ie = min(max_delay, max(I, 2ℓ))`: inserts that take more than
///   half the interval make batches larger, and a table has about one insert in flight at a time.
/// - Flush point, with `n = R·Ie` rows expected per interval: the delay is `Ie` when `n ≥ 4`, else
///   `max(50 ms, Ie·n/4)` (light traffic: a lone row waits ~50 ms, and inserts stay at most about one per
///   interval); the rows target is `⌈2n⌉` and the bytes target `⌈2·B·Ie⌉` (twice the expected batch: under steady
///   load the deadline sets the pace, a burst is flushed early), each at least 4 rows' worth and at most
///   `max_rows`/`max_bytes`. When `max_delay` is shorter than 1 s or 50 ms, it replaces them.
///
/// Under a steady load the deadline closes one batch per `Ie` after its first row: one insert per second per table
/// while upstream copes, fewer and larger inserts (down to one per `max_delay`) while it struggles. A batch's
/// deadline is fixed when it opens, so no row waits past `max_delay`.
public struct AdaptiveController: Sendable {
    /// The wanted interval between inserts while upstream copes.
    static let baseInterval = 1.0
    /// The shortest delay a lone row waits, so a few rows arriving together still share an insert.
    static let floorDelay: Duration = .milliseconds(50)
    /// Time constant of the arrival-rate averages, in seconds.
    static let rateTimeConstant = 5.0
    /// Below this many expected rows per interval, traffic is light and the delay shrinks.
    static let lightRows = 4.0
    /// Size targets are this many times the expected batch.
    static let headroom = 2.0
    /// Inserts per second added to `1/I` by each `ok` result.
    static let recoveryStep = 0.1
    /// Weight of the newest latency in its moving average.
    static let latencyWeight = 0.3
    /// The effective interval is at least this many times the average latency.
    static let latencyFactor = 2.0

    public private(set) var rule: TableRule
    /// `I`, in seconds.
    private(set) var interval: Double
    /// `ℓ`, in seconds; nil before the first result.
    private(set) var latency: Double?
    private var rowRate = 0.0
    private var byteRate = 0.0
    /// Total weight of the rate averages (1 once they have seen a long history); divides out their start-up bias.
    private var rateWeight = 0.0
    private var lastArrival: Instant?
    private var lastGrowth: Instant?
    /// How long after the last doubling results still come from batches opened before it (the effective
    /// interval then, plus the average latency); those do not double the interval again.
    private var growthGuard = 0.0
    /// The last arrival or flush result, so idle controllers can be dropped.
    private(set) var lastActivity: Instant?
    /// Size of the last batch whose result was recorded.
    private(set) var lastBatch: (rows: Int, bytes: Int)?

    public init(rule: TableRule) {
        self.rule = rule
        self.interval = min(Self.baseInterval, rule.effectiveMaxDelay.seconds)
    }

    /// New bounds after a reload: measurements are kept, the interval is clamped into the new bounds.
    public mutating func update(rule: TableRule) {
        self.rule = rule
        interval = min(max(interval, base), maxDelay)
    }

    /// Rows per second arriving, as currently estimated.
    public var rowsPerSecond: Double { rateWeight > 0 ? rowRate / rateWeight : 0 }

    /// Bytes per second arriving, as currently estimated.
    public var bytesPerSecond: Double { rateWeight > 0 ? byteRate / rateWeight : 0 }

    /// The interval in force, `Ie`, in seconds.
    var effectiveInterval: Double {
        min(maxDelay, max(interval, Self.latencyFactor * (latency ?? 0)))
    }

    /// One request's rows joining the table's batches.
    public mutating func recordArrival(rows: Int, bytes: Int, now: Instant) {
        let gap = lastArrival.map { max(0, (now - $0).seconds) } ?? Self.baseInterval
        lastArrival = now
        lastActivity = now
        let x = gap / Self.rateTimeConstant
        let decay = exp(-x)
        // (1 - decay) / gap, the weight of a rate of 1/gap; tends to 1/τ as the gap shrinks to 0.
        let perRow = gap > 0 ? -expm1(-x) / gap : 1 / Self.rateTimeConstant
        rowRate = rowRate * decay + Double(rows) * perRow
        byteRate = byteRate * decay + Double(bytes) * perRow
        rateWeight = rateWeight * decay - expm1(-x)
    }

    /// The outcome of one upstream insert of this table (every attempt, retries included).
    public mutating func recordFlush(rows: Int, bytes: Int, latency: Duration, result: FlushResult, now: Instant) {
        lastActivity = now
        lastBatch = (rows, bytes)
        if result == .failed { return }
        let seconds = max(0, latency.seconds)
        self.latency = self.latency.map { $0 + Self.latencyWeight * (seconds - $0) } ?? seconds
        switch result {
        case .ok:
            interval = max(base, 1 / (1 / interval + Self.recoveryStep))
        case .struggling:
            if let lastGrowth, (now - lastGrowth).seconds < growthGuard { return }
            let before = effectiveInterval
            interval = min(maxDelay, before * 2)
            growthGuard = before + (self.latency ?? 0)
            lastGrowth = now
        case .failed:
            break
        }
    }

    /// Where batches close now, by the law above; always within the rule's bounds.
    public var target: AdaptiveTarget {
        let interval = effectiveInterval
        let maxRows = max(1, rule.maxRows)
        let maxBytes = max(1, rule.maxBytes)
        let expectedRows = rowsPerSecond * interval
        let delay: Duration
        if interval >= maxDelay && expectedRows >= Self.lightRows {
            delay = rule.effectiveMaxDelay
        } else {
            let seconds = expectedRows >= Self.lightRows ? interval : interval * expectedRows / Self.lightRows
            delay =
                seconds <= floorDelay.seconds
                ? floorDelay : min(.nanoseconds(Int64((seconds * 1e9).rounded())), rule.effectiveMaxDelay)
        }
        let rowsFloor = min(Self.lightRows, Double(maxRows))
        let rows = Self.clamp((Self.headroom * expectedRows).rounded(.up), rowsFloor, Double(maxRows))
        var bytes = maxBytes
        if rowsPerSecond > 0 {
            let bytesPerRow = bytesPerSecond / rowsPerSecond
            let bytesFloor = min(max(1, (Self.lightRows * bytesPerRow).rounded(.up)), Double(maxBytes))
            bytes = Self.clamp((Self.headroom * bytesPerSecond * interval).rounded(.up), bytesFloor, Double(maxBytes))
        }
        return AdaptiveTarget(maxRows: rows, maxBytes: bytes, maxDelay: delay)
    }

    private var maxDelay: Double { rule.effectiveMaxDelay.seconds }
    private var base: Double { min(Self.baseInterval, maxDelay) }
    private var floorDelay: Duration { min(Self.floorDelay, rule.effectiveMaxDelay) }

    private static func clamp(_ value: Double, _ low: Double, _ high: Double) -> Int {
        Int(min(max(value, low), high))
    }
}
