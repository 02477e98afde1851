/// A change in one table's ingest rate (rows/s).
public struct IngestFinding: Sendable, Hashable {
    public var table: String
    /// spike, drop or anomaly.
    public var kind: PatternKind
    /// Rows/s over the interval just observed.
    public var rate: Double
    /// The mean of the table's previous rates.
    public var baseline: Double

    public init(table: String, kind: PatternKind, rate: Double, baseline: Double) {
        self.table = table
        self.kind = kind
        self.rate = rate
        self.baseline = baseline
    }
}

/// Per-table ingest rate anomalies, for every table, with no rule to configure: a table that suddenly sends far
/// more, far less or nothing at all is worth a log line even when nobody asked to watch it.
///
/// Each call turns every table's cumulative row count into a rate over the time since the previous call and
/// judges it with `PatternHistory`'s spike, drop and anomaly rules (no trend) against the table's up to `history`
/// previous rates (`thresholds.history` is not used), once it has at least `minimumHistory` of them and their
/// mean is at least `minimumRate` rows/s, so a trickle is never an incident.
///
/// Findings are edge-triggered: a table's state is its last judged kind or normal, and a finding is returned only
/// when the state changes to that kind. A table that falls silent after steady traffic gives one `drop`, not one
/// every interval. A table whose recorded rates are all zero over a full history is forgotten: its rates and
/// state go, and only its last total stays (so its earlier rows are not counted again if it comes back), until
/// `maxTables` evicts it. Beyond `maxTables` tables the least recently active (last growth of its total) is dropped;
/// an evicted table that reappears starts again from 0, like a new one.
public struct IngestAnomalyDetector: Sendable {
    private struct Table: Sendable {
        var total: Int
        /// Oldest first, at most `history`; empty for a forgotten table.
        var rates: [Double] = []
        /// The last judged kind; nil is normal.
        var state: PatternKind?
        var forgotten = false
        /// The last observation at which the total grew (or the table appeared).
        var lastActive: Instant
    }

    public let interval: Duration
    public let history: Int
    public let thresholds: PatternThresholds
    public let minimumHistory: Int
    public let minimumRate: Double
    public let maxTables: Int
    private var tables: [String: Table] = [:]
    private var lastObservation: Instant?

    /// `history` and `maxTables` are at least 1; `minimumHistory` is clamped to 1...history.
    public init(
        interval: Duration = .seconds(10), history: Int = 30, thresholds: PatternThresholds = PatternThresholds(),
        minimumHistory: Int = 6, minimumRate: Double = 1.0, maxTables: Int = 10_000
    ) {
        self.interval = interval
        self.history = Swift.max(history, 1)
        self.thresholds = thresholds
        self.minimumHistory = Swift.min(Swift.max(minimumHistory, 1), self.history)
        self.minimumRate = minimumRate
        self.maxTables = Swift.max(maxTables, 1)
    }

    /// When `observe` should next be called (nil before the first call: call it at once).
    public var nextObservation: Instant? { lastObservation.map { $0 + interval } }

    /// Tables with a rate history (forgotten ones excluded).
    public var trackedTables: Int { tables.values.count(where: { !$0.forgotten }) }

    /// Every table held, forgotten ones included, by name (for tests).
    var heldTables: [String] { tables.keys.sorted() }

    /// Feeds every table's cumulative row count (counts since process start; they only grow) at `now`.
    /// The first call only records the starting totals. Later calls compute each table's rate over the time since the
    /// previous call (rows / seconds) and judge it against that table's previous rates; returns the findings.
    ///
    /// A table missing from `totals` is unchanged (rate 0); one seen for the first time after the first call starts
    /// from 0. A total that went down (a counter reset) counts from 0 again. A call no later than the previous one
    /// is ignored: there is no interval to take a rate over. Findings are sorted by table.
    public mutating func observe(totals: [String: Int], at now: Instant) -> [IngestFinding] {
        guard let previous = lastObservation else {
            lastObservation = now
            for (name, total) in totals { tables[name] = Table(total: total, lastActive: now) }
            evictBeyondLimit()
            return []
        }
        guard now > previous else { return [] }
        lastObservation = now
        let seconds = (now - previous).seconds

        var findings: [IngestFinding] = []
        for name in totals.keys where tables[name] == nil {
            tables[name] = Table(total: 0, lastActive: now)
        }
        for name in tables.keys {
            guard var table = tables[name] else { continue }
            let total = totals[name] ?? table.total
            let rows = total >= table.total ? total - table.total : total
            table.total = total
            if rows > 0 { table.lastActive = now }
            if table.forgotten {
                // Silent and forgotten: nothing to judge until it sends again, then it starts a fresh history.
                guard rows > 0 else {
                    tables[name] = table
                    continue
                }
                table.forgotten = false
            }
            let rate = Double(rows) / seconds
            if let finding = judge(rate, &table) {
                findings.append(IngestFinding(table: name, kind: finding.kind, rate: rate, baseline: finding.baseline))
            }
            table.rates.append(rate)
            if table.rates.count > history { table.rates.removeFirst(table.rates.count - history) }
            if table.rates.count == history, table.rates.allSatisfy({ $0 == 0 }) {
                table.rates = []
                table.state = nil
                table.forgotten = true
            }
            tables[name] = table
        }
        evictBeyondLimit()
        return findings.sorted { $0.table < $1.table }
    }

    /// The finding to report, if the judgement changes the table's state; updates the state when judged.
    private func judge(_ rate: Double, _ table: inout Table) -> PatternFinding? {
        guard table.rates.count >= minimumHistory else { return nil }
        let mean = table.rates.reduce(0, +) / Double(table.rates.count)
        guard mean >= minimumRate else { return nil }
        let finding = PatternHistory.judgeLevel(
            rate, against: table.rates, thresholds: thresholds, minimumCount: minimumHistory)
        defer { table.state = finding?.kind }
        guard let finding, finding.kind != table.state else { return nil }
        return finding
    }

    private mutating func evictBeyondLimit() {
        let excess = tables.count - maxTables
        guard excess > 0 else { return }
        let oldest = tables.sorted {
            $0.value.lastActive != $1.value.lastActive ? $0.value.lastActive < $1.value.lastActive : $0.key < $1.key
        }
        for (name, _) in oldest.prefix(excess) { tables[name] = nil }
    }
}
