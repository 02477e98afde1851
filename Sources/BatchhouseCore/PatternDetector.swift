/// How far a value must stray from its series' recent past to count as a pattern.
public struct PatternThresholds: Sendable, Hashable {
    /// A value above `spike ×` the baseline mean is a spike.
    public var spike: Double
    /// A value below `drop ×` the baseline mean is a drop.
    public var drop: Double
    /// A value more than `sigma` standard deviations from the baseline mean is an anomaly.
    public var sigma: Double
    /// How many recent values make the baseline.
    public var history: Int

    public init(spike: Double = 2.0, drop: Double = 0.5, sigma: Double = 3, history: Int = 10) {
        self.spike = spike
        self.drop = drop
        self.sigma = sigma
        self.history = history
    }
}

public enum PatternKind: String, Sendable, Hashable, CaseIterable {
    case spike, drop, anomaly
    case trendUp = "trend_up"
    case trendDown = "trend_down"
}

/// One pattern in one value: what it was and what it was judged against.
public struct PatternFinding: Sendable, Hashable {
    public var kind: PatternKind
    public var value: Double
    /// The mean of the history for spike, drop and anomaly; the first of the five windows for a trend.
    public var baseline: Double

    public init(kind: PatternKind, value: Double, baseline: Double) {
        self.kind = kind
        self.value = value
        self.baseline = baseline
    }
}

/// The recent values of one series (one group's v_avg of one column, window after window).
///
/// The rules, with `history` = `thresholds.history` (at least 1):
/// - Baseline: the mean m and sample standard deviation s (n − 1) of the last `history` recorded values.
/// - spike and drop are judged only once at least `min(history, 3)` values are recorded; anomaly only once `history`
///   are (a deviation from a few windows is too small a yardstick: it flagged ordinary noise).
/// - spike: m > 0 and value > spike × m (baseline m). drop: m > 0 and value < drop × m (baseline m).
/// - anomaly: only when neither spike nor drop fired; s > 0 and |value − m| > sigma × s (baseline m).
/// - trend: needs the last 4 recorded values plus `value` (5 windows): strictly increasing and
///   (value − first)/|first| > 0.2 with first ≠ 0 → trend_up (baseline = first); strictly decreasing and
///   (first − value)/|first| > 0.2 → trend_down. Independent of the other kinds (a window can be both spike and
///   trend_up).
/// - A non-finite `value` (NaN, ±inf) is judged as nothing and not recorded.
/// - `values` keeps the last max(history, 4) recorded values (trend needs 4).
public struct PatternHistory: Sendable, Hashable {
    public let thresholds: PatternThresholds
    /// Oldest first, at most max(history, 4).
    public private(set) var values: [Double] = []
    private let capacity: Int
    private let history: Int

    public init(thresholds: PatternThresholds) {
        self.thresholds = thresholds
        history = Swift.max(thresholds.history, 1)
        capacity = Swift.max(history, 4)
    }

    /// Judges `value` against the values seen before it, then records it. Returns every finding (possibly none).
    public mutating func judge(_ value: Double) -> [PatternFinding] {
        guard value.isFinite else { return [] }
        let recent = values
        var findings: [PatternFinding] = []
        if let level = Self.judgeLevel(value, against: recent.suffix(history), thresholds: thresholds) {
            findings.append(level)
        }
        if recent.count >= 4 {
            let window = Array(recent.suffix(4)) + [value]
            let first = window[0]
            if first != 0 {
                let pairs = zip(window, window.dropFirst())
                if pairs.allSatisfy({ $0 < $1 }), (value - first) / Swift.abs(first) > 0.2 {
                    findings.append(PatternFinding(kind: .trendUp, value: value, baseline: first))
                } else if pairs.allSatisfy({ $0 > $1 }), (first - value) / Swift.abs(first) > 0.2 {
                    findings.append(PatternFinding(kind: .trendDown, value: value, baseline: first))
                }
            }
        }
        record(value)
        return findings
    }

    /// A plain array, not a ring buffer: it holds a handful of values, and equal histories compare equal.
    private mutating func record(_ value: Double) {
        values.append(value)
        if values.count > capacity { values.removeFirst(values.count - capacity) }
    }

    /// spike, drop or anomaly of `value` against `baseline` (the rules above), nil when normal or when fewer than
    /// `min(history, 3)` values are given. Shared with `IngestAnomalyDetector`, which passes its own minimum.
    static func judgeLevel(
        _ value: Double, against baseline: some Collection<Double>, thresholds: PatternThresholds,
        minimumCount: Int? = nil
    ) -> PatternFinding? {
        let needed = minimumCount ?? Swift.min(Swift.max(thresholds.history, 1), 3)
        guard baseline.count >= Swift.max(needed, 1) else { return nil }
        let n = Double(baseline.count)
        let mean = baseline.reduce(0, +) / n
        let variance = n > 1 ? baseline.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / (n - 1) : 0
        let deviation = variance.squareRoot()
        let judgesAnomaly = baseline.count >= Swift.max(thresholds.history, needed, 2)
        if mean > 0, value > thresholds.spike * mean {
            return PatternFinding(kind: .spike, value: value, baseline: mean)
        }
        if mean > 0, value < thresholds.drop * mean {
            return PatternFinding(kind: .drop, value: value, baseline: mean)
        }
        if judgesAnomaly, deviation > 0, Swift.abs(value - mean) > thresholds.sigma * deviation {
            return PatternFinding(kind: .anomaly, value: value, baseline: mean)
        }
        return nil
    }
}
