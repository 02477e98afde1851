/// A table's `aggregate:` rule: its rows are summarised per window and group into another table instead of (or as
/// well as, with `keepRaw`) being inserted as sent (docs/aggregation.md).
public struct AggregateRule: Sendable, Hashable {
    /// A table the summaries go to: `database` nil means the source table's database.
    public struct Target: Sendable, Hashable, CustomStringConvertible {
        public var database: String?
        public var table: String

        public init(database: String?, table: String) {
            self.database = database
            self.table = table
        }

        /// `db.table` or `table`, split at the first `.`.
        public init?(parsing text: String) {
            guard !text.isEmpty else { return nil }
            if let dot = text.firstIndex(of: ".") {
                let database = String(text[..<dot])
                let table = String(text[text.index(after: dot)...])
                guard !database.isEmpty, !table.isEmpty else { return nil }
                self.init(database: database, table: table)
            } else {
                self.init(database: nil, table: text)
            }
        }

        /// The database rows go to when the source's is `sourceDatabase`.
        public func database(forSource sourceDatabase: String?) -> String? { database ?? sourceDatabase }

        public var description: String { database.map { "\($0).\(table)" } ?? table }
    }

    /// `patterns:`: findings on each emitted window's averages, as rows of `into`.
    public struct Patterns: Sendable, Hashable {
        public var into: Target
        public var spike: Double
        public var drop: Double
        public var sigma: Double
        public var history: Int

        public init(into: Target, spike: Double = 2.0, drop: Double = 0.5, sigma: Double = 3, history: Int = 10) {
            self.into = into
            self.spike = spike
            self.drop = drop
            self.sigma = sigma
            self.history = history
        }

        public var thresholds: PatternThresholds {
            PatternThresholds(spike: spike, drop: drop, sigma: sigma, history: history)
        }

        /// The columns of a patterns table, in the order rows are written.
        public static let columns = ["window_start", "table", "group_key", "column", "kind", "value", "baseline"]
    }

    public var into: Target
    /// Tumbling windows of this length, aligned to the Unix epoch; whole seconds (DateTime has no finer unit).
    public var window: Duration
    /// Added to `window` before a window is emitted, so rows a little late still make it.
    public var grace: Duration
    /// The column whose time places a row in its window; nil: the time the row arrived.
    public var timeColumn: String?
    public var groupBy: [String]
    public var values: [String]
    public var quantiles: [Double]
    /// The raw rows are also inserted into the source table, as without the rule.
    public var keepRaw: Bool
    /// At most this many groups are tracked per rule; the least recently seen is evicted beyond it.
    public var maxGroups: Int
    /// Values kept exactly per window, group and column; beyond it, quantiles come from a t-digest.
    public var exactValues: Int
    public var patterns: Patterns?

    public static let defaultQuantiles = [0.5, 0.95, 0.99]

    public init(
        into: Target, window: Duration, grace: Duration = .zero, timeColumn: String? = nil, groupBy: [String] = [],
        values: [String], quantiles: [Double] = AggregateRule.defaultQuantiles, keepRaw: Bool = false,
        maxGroups: Int = 10_000, exactValues: Int = 1_000, patterns: Patterns? = nil
    ) {
        self.into = into
        self.window = window
        self.grace = grace
        self.timeColumn = timeColumn
        self.groupBy = groupBy
        self.values = values
        self.quantiles = quantiles
        self.keepRaw = keepRaw
        self.maxGroups = maxGroups
        self.exactValues = exactValues
        self.patterns = patterns
    }

    /// `window` in whole seconds.
    public var windowSeconds: Int64 { max(1, window.components.seconds) }

    /// The columns every row read for the rule must have: the time column (if any), the keys, the values.
    public var readColumns: [String] { (timeColumn.map { [$0] } ?? []) + groupBy + values }

    /// The target's columns, in the order rows are written: `window_start`, the keys, `count`, then per value column
    /// `v_min`, `v_max`, `v_avg`, `v_sum` and one `v_pNN` per quantile.
    public var targetColumns: [String] {
        var columns = ["window_start"] + groupBy + ["count"]
        for value in values {
            columns += ["\(value)_min", "\(value)_max", "\(value)_avg", "\(value)_sum"]
            columns += quantiles.map { "\(value)_\(Self.quantileName($0))" }
        }
        return columns
    }

    /// `p` and the percentage: 0.5 → `p50`, 0.95 → `p95`, 0.999 → `p99_9`.
    public static func quantileName(_ level: Double) -> String {
        let scaled = (level * 10_000).rounded()
        let whole = Int(scaled) / 100
        var fraction = Int(scaled) % 100
        guard fraction != 0 else { return "p\(whole)" }
        var digits = fraction < 10 ? "0\(fraction)" : "\(fraction)"
        while digits.hasSuffix("0") {
            digits.removeLast()
            fraction /= 10
        }
        return "p\(whole)_\(digits)"
    }
}
