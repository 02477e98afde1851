/// One row as an aggregate rule reads it: the window it falls in, its group and its values.
public struct AggregateInput: Sendable, Hashable {
    /// Unix seconds, a multiple of the rule's window.
    public var windowStart: Int64
    /// One value per `group_by` column.
    public var group: [FieldValue]
    /// One per `values` column; nil for NULL, which the column's summary skips.
    public var values: [Double?]

    public init(windowStart: Int64, group: [FieldValue], values: [Double?]) {
        self.windowStart = windowStart
        self.group = group
        self.values = values
    }
}

/// The summaries of one window (or part of one: late rows, an evicted group), ready to be written.
public struct EmittedWindow: Sendable {
    public struct Row: Sendable {
        public var group: [FieldValue]
        public var count: Int
        /// One per `values` column.
        public var summaries: [ValueSummary]
    }

    public struct Finding: Sendable, Hashable {
        public var group: [FieldValue]
        public var column: String
        public var finding: PatternFinding
    }

    /// Unique per window instance, so requests can wait for the one holding their rows.
    public var id: UInt64
    public var windowStart: Int64
    public var rows: [Row]
    public var findings: [Finding]
    /// Rows folded into it.
    public var inputRows: Int
    /// Not the first emission of this window_start: late rows, or a group evicted before its window ended.
    public var isPartial: Bool
    /// The last emission of window `id`: false only for groups evicted while the rest of the window stays open.
    public var isFinal: Bool
}

/// The windows and groups of one aggregate rule (docs/aggregation.md): tumbling windows aligned to the epoch, each
/// emitted once it has been open for `window + grace` after its first row arrived; a row for a window already
/// emitted opens a new, partial one for the same `window_start`. Groups are bounded by `max_groups`: the least
/// recently seen are evicted (their open rows emitted at once, their pattern history dropped). Pure: time comes in.
public struct WindowAggregator: Sendable {
    public let rule: AggregateRule

    private struct GroupSummary {
        var count = 0
        var summaries: [ValueSummary]
    }

    private struct OpenWindow {
        var id: UInt64
        var start: Int64
        var firstArrival: Instant
        var groups: [[FieldValue]: GroupSummary] = [:]
        var inputRows = 0
        var isPartial: Bool
    }

    private struct GroupState {
        var lastSeen: UInt64
        var history: [PatternHistory]
        /// The newest window_start whose averages were judged: late and partial rows are not judged again.
        var lastJudgedStart: Int64 = .min
    }

    private var open: [Int64: OpenWindow] = [:]
    private var groups: [[FieldValue]: GroupState] = [:]
    /// window_starts emitted before, so a later row for one is known as late: the last `rememberedStarts` emitted,
    /// whatever their times (a far-future timestamp must not make every later window look late).
    private var emittedStarts: Set<Int64> = []
    private var emittedOrder: [Int64] = []
    private var emittedOrderHead = 0
    static let rememberedStarts = 4_096
    private var nextID: UInt64
    private var sequence: UInt64 = 0
    public private(set) var evictedGroups = 0
    /// Windows emitted early because `maxOpenWindows` were open.
    public private(set) var evictedWindows = 0
    /// Open windows per rule and identity at most.
    public static let maxOpenWindows = 1_024
    public private(set) var lateRows = 0

    /// `firstID`: where window ids start (ids stay unique across the aggregators of one engine when each gets its
    /// own range).
    public init(rule: AggregateRule, firstID: UInt64 = 1) {
        self.rule = rule
        self.nextID = firstID
    }

    public var groupCount: Int { groups.count }
    public var openWindowCount: Int { open.count }
    public var openRows: Int { open.values.reduce(0) { $0 + $1.inputRows } }

    /// The window a time falls in, in Unix seconds; nil outside DateTime's range (1970 to 2106).
    public static func windowStart(unixSeconds: Double, windowSeconds: Int64) -> Int64? {
        guard unixSeconds.isFinite, unixSeconds >= 0, unixSeconds < 4_294_967_296 else { return nil }
        let whole = Int64(unixSeconds.rounded(.down))
        return whole - whole % windowSeconds
    }

    /// Folds rows in; returns the ids of the windows that hold them and the windows emitted early because groups
    /// were evicted to make room. Everything is changed in place: a copy of a window or a group's values per row
    /// would make a request cost as much as the state it lands in.
    public mutating func add(_ inputs: [AggregateInput], arrival: Instant) -> (windows: [UInt64], evicted: [EmittedWindow]) {
        var touched: [UInt64] = []
        var evicted: [EmittedWindow] = []
        let emptySummaries = Array(repeating: ValueSummary(exactLimit: rule.exactValues), count: rule.values.count)
        for input in inputs {
            sequence &+= 1
            if groups[input.group] != nil {
                groups[input.group]!.lastSeen = sequence
            } else {
                if groups.count >= rule.maxGroups { evicted += evictOldest() }
                let history = rule.patterns.map { patterns in
                    Array(repeating: PatternHistory(thresholds: patterns.thresholds), count: rule.values.count)
                } ?? []
                groups[input.group] = GroupState(lastSeen: sequence, history: history)
            }
            if open[input.windowStart] == nil {
                // Event time can open a window per row (a backfill, bad clocks): beyond the bound, the window that
                // has waited longest goes at once, cut short, so state and the windows due in one tick stay bounded.
                if open.count >= Self.maxOpenWindows, let oldest = open.values.min(by: { $0.firstArrival < $1.firstArrival }) {
                    evicted.append(emit(start: oldest.start, judge: false, cutShort: true))
                    evictedWindows += 1
                }
                open[input.windowStart] = OpenWindow(
                    id: takeID(), start: input.windowStart, firstArrival: arrival,
                    isPartial: emittedStarts.contains(input.windowStart))
            }
            let id = open[input.windowStart]!.id
            if touched.last != id && !touched.contains(id) { touched.append(id) }
            open[input.windowStart]!.inputRows += 1
            if open[input.windowStart]!.isPartial { lateRows += 1 }
            open[input.windowStart]!.groups[input.group, default: GroupSummary(summaries: emptySummaries)].count += 1
            for (index, value) in input.values.enumerated() where index < emptySummaries.count {
                if let value {
                    open[input.windowStart]!.groups[input.group, default: GroupSummary(summaries: emptySummaries)]
                        .summaries[index].add(value)
                }
            }
        }
        return (touched, evicted)
    }

    /// When the next window is due; nil when none is open.
    public var nextDeadline: Instant? {
        open.values.map(\.firstArrival).min().map { $0 + rule.window + rule.grace }
    }

    /// Every window that has been open for `window + grace`, oldest window_start first, with its pattern findings.
    public mutating func emitDue(now: Instant) -> [EmittedWindow] {
        let span = rule.window + rule.grace
        let due = open.values.filter { $0.firstArrival + span <= now }.map(\.start).sorted()
        return due.map { emit(start: $0, judge: true, cutShort: false) }
    }

    /// Every open window at once (shutdown, or the rule changed): cut short, so partial rows, not judged for
    /// patterns (a window of a few seconds' rows would be judged against full ones).
    public mutating func emitAll() -> [EmittedWindow] {
        open.keys.sorted().map { emit(start: $0, judge: false, cutShort: true) }
    }

    private mutating func emit(start: Int64, judge: Bool, cutShort: Bool) -> EmittedWindow {
        let window = open.removeValue(forKey: start)!
        let keys = window.groups.keys.sorted(by: Self.precedes)
        var rows: [EmittedWindow.Row] = []
        var findings: [EmittedWindow.Finding] = []
        rows.reserveCapacity(keys.count)
        for key in keys {
            let summary = window.groups[key]!
            rows.append(EmittedWindow.Row(group: key, count: summary.count, summaries: summary.summaries))
            guard judge, !window.isPartial, rule.patterns != nil, var state = groups[key], start > state.lastJudgedStart
            else { continue }
            state.lastJudgedStart = start
            for (index, column) in rule.values.enumerated() where index < state.history.count {
                let mean = summary.summaries[index].mean
                guard mean.isFinite else { continue }
                for finding in state.history[index].judge(mean) {
                    findings.append(EmittedWindow.Finding(group: key, column: column, finding: finding))
                }
            }
            groups[key] = state
        }
        if !window.isPartial { remember(start) }
        return EmittedWindow(
            id: window.id, windowStart: start, rows: rows, findings: findings, inputRows: window.inputRows,
            isPartial: window.isPartial || cutShort, isFinal: true)
    }

    private mutating func remember(_ start: Int64) {
        guard emittedStarts.insert(start).inserted else { return }
        emittedOrder.append(start)
        if emittedOrder.count - emittedOrderHead > Self.rememberedStarts {
            emittedStarts.remove(emittedOrder[emittedOrderHead])
            emittedOrderHead += 1
            if emittedOrderHead > Self.rememberedStarts {
                emittedOrder.removeFirst(emittedOrderHead)
                emittedOrderHead = 0
            }
        }
    }

    /// Evicts the least recently seen sixteenth of the groups (at least one), so a stream of new groups pays for a
    /// sort only now and then. Their rows in open windows are emitted at once, as partial windows.
    private mutating func evictOldest() -> [EmittedWindow] {
        let count = max(1, rule.maxGroups / 16)
        let victims = groups.sorted { $0.value.lastSeen < $1.value.lastSeen }.prefix(count).map(\.key)
        var emitted: [EmittedWindow] = []
        let victimSet = Set(victims)
        for victim in victims { groups[victim] = nil }
        evictedGroups += victims.count
        for start in open.keys.sorted() {
            var taken: [[FieldValue]: GroupSummary] = [:]
            for victim in victimSet {
                if let summary = open[start]!.groups.removeValue(forKey: victim) { taken[victim] = summary }
            }
            guard !taken.isEmpty else { continue }
            let rows = taken.keys.sorted(by: Self.precedes).map { key in
                EmittedWindow.Row(group: key, count: taken[key]!.count, summaries: taken[key]!.summaries)
            }
            let inputRows = rows.reduce(0) { $0 + $1.count }
            open[start]!.inputRows -= inputRows
            let emptied = open[start]!.groups.isEmpty
            emitted.append(
                EmittedWindow(
                    id: open[start]!.id, windowStart: start, rows: rows, findings: [], inputRows: inputRows,
                    isPartial: true, isFinal: emptied))
            if emptied { open[start] = nil }
        }
        return emitted
    }

    private mutating func takeID() -> UInt64 {
        defer { nextID &+= 1 }
        return nextID
    }

    /// A stable order of groups, so emitted rows come out the same way every time.
    static func precedes(_ a: [FieldValue], _ b: [FieldValue]) -> Bool {
        for (x, y) in zip(a, b) where x != y {
            switch (x, y) {
            case (.null, _): return true
            case (_, .null): return false
            case (.text(let p, _), .text(let q, _)): if p != q { return p < q }
            }
        }
        return a.count < b.count
    }
}
