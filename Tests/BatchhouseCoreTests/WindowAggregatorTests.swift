import Testing

@testable import BatchhouseCore

/// `WindowAggregator` and `AggregateEncoding` with an injected clock (docs/aggregation.md, "Windows").
@Suite struct WindowAggregatorTests {
    static func rule(window: Duration = .seconds(60), grace: Duration = .zero, maxGroups: Int = 100, patterns: Bool = false)
        -> AggregateRule
    {
        AggregateRule(
            into: AggregateRule.Target(database: nil, table: "out"), window: window, grace: grace, groupBy: ["k"],
            values: ["v"], maxGroups: maxGroups,
            patterns: patterns ? AggregateRule.Patterns(into: AggregateRule.Target(database: nil, table: "p")) : nil)
    }

    static func input(_ start: Int64, _ key: String, _ value: Double?) -> AggregateInput {
        AggregateInput(windowStart: start, group: [.text(key, quoted: true)], values: [value])
    }

    static let t0 = Instant(nanoseconds: 5_000_000_000)

    @Test func aWindowIsEmittedWindowPlusGraceAfterItsFirstRowArrived() {
        var aggregator = WindowAggregator(rule: Self.rule(grace: .seconds(5)))
        _ = aggregator.add([Self.input(60, "a", 1)], arrival: Self.t0)
        _ = aggregator.add([Self.input(60, "a", 2)], arrival: Self.t0 + .seconds(30))
        #expect(aggregator.nextDeadline == Self.t0 + .seconds(65))
        #expect(aggregator.emitDue(now: Self.t0 + .seconds(64)).isEmpty)
        let emitted = aggregator.emitDue(now: Self.t0 + .seconds(65))
        #expect(emitted.count == 1)
        #expect(emitted.first?.rows.first?.count == 2)
        #expect(emitted.first?.isPartial == false)
        #expect(aggregator.nextDeadline == nil)
    }

    @Test func aRowForAnEmittedWindowStartsAPartialOneOfTheSameStart() {
        var aggregator = WindowAggregator(rule: Self.rule())
        _ = aggregator.add([Self.input(120, "a", 1)], arrival: Self.t0)
        _ = aggregator.emitDue(now: Self.t0 + .seconds(60))
        // 120 was emitted: its row is late. 60 never was, so its row is not, however old.
        _ = aggregator.add([Self.input(120, "a", 5), Self.input(60, "a", 7)], arrival: Self.t0 + .seconds(70))
        #expect(aggregator.lateRows == 1)
        let late = aggregator.emitDue(now: Self.t0 + .seconds(130))
        #expect(late.map(\.windowStart) == [60, 120])
        #expect(late.map(\.isPartial) == [false, true])
        #expect(late.last?.rows.first?.summaries.first?.sum == 5)
        // A row from far in the future makes no later window look late.
        _ = aggregator.add([Self.input(4_000_000_000, "a", 1)], arrival: Self.t0 + .seconds(200))
        _ = aggregator.emitDue(now: Self.t0 + .seconds(260))
        _ = aggregator.add([Self.input(180, "a", 1)], arrival: Self.t0 + .seconds(270))
        #expect(aggregator.emitDue(now: Self.t0 + .seconds(330)).map(\.isPartial) == [false])
    }

    @Test func windowStartsAreAlignedToTheEpochAndBoundedByDateTime() {
        #expect(WindowAggregator.windowStart(unixSeconds: 1_800_000_059.9, windowSeconds: 60) == 1_800_000_000)
        #expect(WindowAggregator.windowStart(unixSeconds: 1_800_000_060, windowSeconds: 60) == 1_800_000_060)
        #expect(WindowAggregator.windowStart(unixSeconds: 7, windowSeconds: 1) == 7)
        #expect(WindowAggregator.windowStart(unixSeconds: -1, windowSeconds: 1) == nil)
        #expect(WindowAggregator.windowStart(unixSeconds: 4_294_967_296, windowSeconds: 1) == nil)
        #expect(WindowAggregator.windowStart(unixSeconds: .nan, windowSeconds: 1) == nil)
    }

    @Test func evictedGroupsAreEmittedAtOnceAndNoRowIsLost() {
        var aggregator = WindowAggregator(rule: Self.rule(maxGroups: 32))
        var emitted: [EmittedWindow] = []
        for key in 0..<100 {
            let (windows, evicted) = aggregator.add(
                [Self.input(0, "g\(key)", 1), Self.input(60, "g\(key)", 2)], arrival: Self.t0 + .milliseconds(key))
            #expect(windows.count == 2)
            emitted += evicted
            #expect(aggregator.groupCount <= 32)
        }
        #expect(emitted.allSatisfy { $0.isPartial && !$0.isFinal })
        emitted += aggregator.emitAll()
        let rows = emitted.flatMap(\.rows)
        #expect(rows.reduce(0) { $0 + $1.count } == 200)
        #expect(Set(rows.map(\.group)).count == 100)
        #expect(aggregator.evictedGroups == 100 - aggregator.groupCount)
    }

    @Test func openWindowsAreBoundedTheLongestWaitingGoingFirst() {
        var aggregator = WindowAggregator(rule: Self.rule(window: .seconds(1)))
        var early: [EmittedWindow] = []
        for second in 0..<(WindowAggregator.maxOpenWindows + 10) {
            early += aggregator.add([Self.input(Int64(second), "a", 1)], arrival: Self.t0 + .milliseconds(second)).evicted
        }
        #expect(aggregator.openWindowCount == WindowAggregator.maxOpenWindows)
        #expect(early.map(\.windowStart) == Array(0..<10))
        #expect(early.allSatisfy { $0.isPartial && $0.isFinal })
        #expect(aggregator.evictedWindows == 10)
        #expect(early.count + aggregator.emitAll().count == WindowAggregator.maxOpenWindows + 10)
    }

    @Test func patternsAreJudgedOldestFirstAndNotOnPartialRows() {
        var aggregator = WindowAggregator(rule: Self.rule(window: .seconds(1), patterns: true))
        let inputs = (0..<11).map { second in Self.input(Int64(second), "a", second < 10 ? 10 : 50) }
        _ = aggregator.add(inputs.reversed(), arrival: Self.t0)
        let emitted = aggregator.emitDue(now: Self.t0 + .seconds(1))
        #expect(emitted.map(\.windowStart) == Array(0...10))
        #expect(emitted.flatMap(\.findings).map(\.finding.kind) == [.spike])
        #expect(emitted.last?.findings.first?.finding.baseline == 10)
        // A late row for window 10: a partial row, not judged again.
        _ = aggregator.add([Self.input(10, "a", 500)], arrival: Self.t0 + .seconds(2))
        let late = aggregator.emitDue(now: Self.t0 + .seconds(3))
        #expect(late.first?.isPartial == true)
        #expect(late.first?.findings.isEmpty == true)
        // A window cut short by a stop (or a changed rule) is partial and not judged either.
        _ = aggregator.add([Self.input(11, "a", 5_000)], arrival: Self.t0 + .seconds(4))
        let cut = aggregator.emitAll()
        #expect(cut.first?.isPartial == true)
        #expect(cut.first?.findings.isEmpty == true)
    }

    @Test func rowsAreWrittenAsTabSeparatedWithEscapesNullsAndNaN() {
        let rule = AggregateRule(
            into: AggregateRule.Target(database: nil, table: "out"), window: .seconds(60), groupBy: ["k"],
            values: ["v", "w"], quantiles: [0.5])
        var aggregator = WindowAggregator(rule: rule)
        _ = aggregator.add(
            [
                AggregateInput(windowStart: 60, group: [.text("a\tb\\c\nd", quoted: true)], values: [1.5, nil]),
                AggregateInput(windowStart: 60, group: [.null], values: [2, nil]),
            ], arrival: Self.t0)
        let window = aggregator.emitAll()[0]
        let text = String(decoding: AggregateEncoding.targetRows(window, rule: rule), as: UTF8.self)
        #expect(
            text == "60\t\\N\t1\t2.0\t2.0\t2.0\t2.0\t2.0\tnan\tnan\tnan\t0.0\tnan\n"
                + "60\ta\\tb\\\\c\\nd\t1\t1.5\t1.5\t1.5\t1.5\t1.5\tnan\tnan\tnan\t0.0\tnan\n")
        #expect(AggregateEncoding.groupKey([.text("x\"y", quoted: true), .null], columns: ["a", "b"]) == "{\"a\":\"x\\\"y\",\"b\":null}")
    }
}
