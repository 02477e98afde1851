import Testing

@testable import BatchhouseCore

/// Each strategy's flush decisions (README.md, "Strategies"), driven through a `BatchStore` with a test clock.
/// `adaptive` has its own suite, `AdaptiveControllerTests`.
@Suite struct FlushStrategyTests {
    let key = BatchKey(
        identity: .anonymous, database: "default", table: "events", columns: nil, format: .values, header: nil,
        settings: []
    )

    func at(_ seconds: Double) -> Instant { Instant(nanoseconds: Int64(seconds * 1e9)) }

    /// Appends `text` as `rows` rows.
    func append(_ store: inout BatchStore, _ text: String, rows: Int = 1, rule: TableRule, now: Instant)
        -> [SealedBatch]
    {
        let bytes = Array(text.utf8)
        return bytes.withUnsafeBytes {
            store.append(key: key, rule: rule, chunk: $0, rows: rows, endsWithNewline: false, now: now)
        }
    }

    @Test func defaultDelaysPerStrategy() {
        for strategy in FlushStrategy.allCases {
            let expected: Duration =
                switch strategy {
                case .size, .memory: .seconds(60)
                case .adaptive: .seconds(5)
                default: .seconds(1)
                }
            #expect(TableRule(strategy: strategy).effectiveMaxDelay == expected)
            #expect(TableRule(strategy: strategy, maxDelay: .milliseconds(250)).effectiveMaxDelay == .milliseconds(250))
        }
    }

    // MARK: immediate

    @Test func immediateNeverBuffers() {
        let rule = TableRule(strategy: .immediate)
        #expect(FlushPolicy.trigger(rule: rule, rows: 0, bytes: 0) == .immediate)
        var store = BatchStore()
        let batch = Array("(1),(2)".utf8).withUnsafeBytes {
            store.single(key: key, rule: rule, chunk: $0, rows: 2, endsWithNewline: false, now: at(3))
        }
        #expect(batch.trigger == .immediate && batch.rows == 2 && batch.sealedAt == at(3))
        #expect(String(decoding: batch.data, as: UTF8.self) == "(1),(2)")
        #expect(store.openBatchCount == 0 && store.bufferedRows == 0 && store.nextDeadline == nil)
    }

    @Test func reloadToImmediateSealsOpenBatches() {
        var store = BatchStore()
        _ = append(&store, "(1)", rule: TableRule(strategy: .hybrid, maxRows: 100), now: at(0))
        let sealed = store.updateRules(now: at(0.5)) { _ in TableRule(strategy: .immediate) }
        #expect(sealed.map(\.trigger) == [.reload])
        #expect(store.openBatchCount == 0)
    }

    // MARK: size

    @Test func sizeFlushesAtMaxRowsAndStillObeysMaxBytes() {
        var store = BatchStore()
        let rule = TableRule(strategy: .size, maxRows: 3, maxBytes: 12)
        #expect(append(&store, "(1)", rule: rule, now: at(0)).isEmpty)
        #expect(append(&store, "(2)", rule: rule, now: at(0)).isEmpty)
        #expect(append(&store, "(3)", rule: rule, now: at(0)).map(\.trigger) == [.rows])
        // 4 + 1 + 4 + 1 + 4 = 14 bytes would cross 12: the first two rows go alone.
        #expect(append(&store, "(11)", rule: rule, now: at(1)).isEmpty)
        #expect(append(&store, "(22)", rule: rule, now: at(1)).isEmpty)
        let crossing = append(&store, "(33)", rule: rule, now: at(1))
        #expect(crossing.map(\.trigger) == [.bytes] && crossing.map(\.rows) == [2])
        // The last row waits for the 60 s safety net, counted from its own batch's first row.
        #expect(store.nextDeadline == at(61))
    }

    // MARK: time

    @Test func timeIgnoresMaxRowsAndFlushesEveryMaxDelay() {
        var store = BatchStore()
        let rule = TableRule(strategy: .time, maxRows: 10, maxDelay: .seconds(2))
        // 1,000 rows in 100 requests, ten times max_rows: nothing leaves before the deadline.
        for step in 0..<100 {
            #expect(append(&store, "(1)", rows: 10, rule: rule, now: at(Double(step) * 0.01)).isEmpty)
        }
        #expect(store.bufferedRows == 1_000)
        #expect(store.nextDeadline == at(2))
        #expect(store.sealDue(now: at(1.999)).isEmpty)
        let due = store.sealDue(now: at(2))
        #expect(due.map(\.rows) == [1_000] && due.map(\.trigger) == [.time])
    }

    @Test func timeStillObeysMaxBytes() {
        var store = BatchStore()
        let rule = TableRule(strategy: .time, maxRows: 1, maxBytes: 8, maxDelay: .seconds(2))
        #expect(append(&store, "(1)", rule: rule, now: at(0)).isEmpty)
        let full = append(&store, "(22)", rule: rule, now: at(0.1))  // 3 + 1 + 4 = 8 bytes: at max_bytes
        #expect(full.map(\.trigger) == [.bytes] && full.map(\.rows) == [2])
        #expect(append(&store, "(3)", rule: rule, now: at(0.2)).isEmpty)
        #expect(append(&store, "(4)", rule: rule, now: at(0.3)).isEmpty)  // 7 bytes
        let crossing = append(&store, "(5)", rule: rule, now: at(0.4))  // 11 would cross 8: sealed first
        #expect(crossing.map(\.trigger) == [.bytes] && crossing.map(\.rows) == [2])
        #expect(store.bufferedRows == 1 && store.nextDeadline == at(2.4))
    }

    // MARK: hybrid

    @Test func hybridFlushesAtWhicheverLimitComesFirst() {
        let rule = TableRule(strategy: .hybrid, maxRows: 3, maxBytes: 100, maxDelay: .milliseconds(500))
        var rows = BatchStore()
        _ = append(&rows, "(1)", rule: rule, now: at(0))
        _ = append(&rows, "(2)", rule: rule, now: at(0.1))
        #expect(append(&rows, "(3)", rule: rule, now: at(0.2)).map(\.trigger) == [.rows])

        var bytes = BatchStore()
        let big = String(repeating: "x", count: 98)
        #expect(append(&bytes, "(\(big))", rule: rule, now: at(0)).map(\.trigger) == [.bytes])

        var time = BatchStore()
        _ = append(&time, "(1)", rule: rule, now: at(0))
        _ = append(&time, "(2)", rule: rule, now: at(0.4))
        #expect(time.sealDue(now: at(0.499)).isEmpty)
        let due = time.sealDue(now: at(0.5))
        #expect(due.map(\.trigger) == [.time] && due.map(\.rows) == [2])
    }

    // MARK: memory

    @Test func memoryFlushesAtMaxBytesAndIgnoresMaxRows() {
        var store = BatchStore()
        let rule = TableRule(strategy: .memory, maxRows: 1, maxBytes: 9)
        #expect(append(&store, "(11)", rows: 5, rule: rule, now: at(0)).isEmpty)  // 5 rows > max_rows: kept
        let sealed = append(&store, "(22)", rows: 5, rule: rule, now: at(0.1))  // 9 bytes: at max_bytes
        #expect(sealed.map(\.trigger) == [.bytes])
        #expect(sealed.map(\.rows) == [10])
        #expect(sealed.first.map { String(decoding: $0.data, as: UTF8.self) } == "(11),(22)")
        #expect(store.bufferedBytes == 0)
    }

    @Test func memorySafetyNetIsSixtySecondsUnlessSet() {
        var store = BatchStore()
        let rule = TableRule(strategy: .memory, maxBytes: 64 << 20)
        _ = append(&store, "(1)", rule: rule, now: at(10))
        #expect(store.nextDeadline == at(70))
        #expect(store.sealDue(now: at(69.999)).isEmpty)
        #expect(store.sealDue(now: at(70)).map(\.trigger) == [.time])

        var set = BatchStore()
        _ = append(&set, "(1)", rule: TableRule(strategy: .memory, maxDelay: .seconds(5)), now: at(10))
        #expect(set.nextDeadline == at(15))
    }

    // MARK: adaptive without a controller

    @Test func adaptiveWithoutTargetUsesTheRuleBounds() {
        let rule = TableRule(strategy: .adaptive, maxRows: 10, maxBytes: 100, maxDelay: .seconds(5))
        #expect(FlushPolicy.trigger(rule: rule, target: nil, rows: 10, bytes: 0) == .rows)
        #expect(FlushPolicy.trigger(rule: rule, target: nil, rows: 9, bytes: 99) == nil)
        #expect(FlushPolicy.deadline(rule: rule, target: nil, firstRowAt: at(1)) == at(6))
        // A target never loosens the rule, even if handed one past its bounds.
        let loose = AdaptiveTarget(maxRows: 1_000, maxBytes: 1_000, maxDelay: .seconds(60))
        #expect(FlushPolicy.trigger(rule: rule, target: loose, rows: 10, bytes: 0) == .rows)
        #expect(FlushPolicy.deadline(rule: rule, target: loose, firstRowAt: at(1)) == at(6))
        // Other strategies ignore a target.
        let hybrid = TableRule(strategy: .hybrid, maxRows: 10, maxDelay: .seconds(1))
        let tight = AdaptiveTarget(maxRows: 1, maxBytes: 1, maxDelay: .milliseconds(1))
        #expect(FlushPolicy.trigger(rule: hybrid, target: tight, rows: 5, bytes: 5) == nil)
        #expect(FlushPolicy.deadline(rule: hybrid, target: tight, firstRowAt: at(1)) == at(2))
    }
}
