import Testing

@testable import BatchhouseCore

@Suite struct BatchStoreTests {
    let key = BatchKey(
        identity: .anonymous, database: "default", table: "events", columns: nil, format: .values, header: nil,
        settings: []
    )

    func at(_ seconds: Double) -> Instant { Instant(nanoseconds: Int64(seconds * 1e9)) }

    func append(_ store: inout BatchStore, _ text: String, rule: TableRule, now: Instant, key: BatchKey? = nil)
        -> [SealedBatch]
    {
        let bytes = Array(text.utf8)
        return bytes.withUnsafeBytes {
            store.append(key: key ?? self.key, rule: rule, chunk: $0, rows: 1, endsWithNewline: text.hasSuffix("\n"), now: now)
        }
    }

    @Test func oneRowFlushesAfterMaxDelay() {
        var store = BatchStore()
        let rule = TableRule(strategy: .hybrid, maxRows: 100, maxDelay: .seconds(1))
        #expect(append(&store, "(1)", rule: rule, now: at(0)).isEmpty)
        #expect(store.nextDeadline == at(1))
        #expect(store.sealDue(now: at(0.999)).isEmpty)
        let due = store.sealDue(now: at(1))
        #expect(due.count == 1)
        #expect(due.first?.rows == 1)
        #expect(due.first?.trigger == .time)
        #expect(due.first.map { String(decoding: $0.data, as: UTF8.self) } == "(1)")
        #expect(store.bufferedRows == 0)
        #expect(store.nextDeadline == nil)
    }

    @Test func maxRowsFlushesAtOnce() {
        var store = BatchStore()
        let rule = TableRule(strategy: .size, maxRows: 3)
        #expect(append(&store, "(1)", rule: rule, now: at(0)).isEmpty)
        #expect(append(&store, "(2)", rule: rule, now: at(0.1)).isEmpty)
        let sealed = append(&store, "(3)", rule: rule, now: at(0.2))
        #expect(sealed.count == 1)
        #expect(sealed[0].trigger == .rows)
        #expect(sealed[0].rows == 3)
        #expect(String(decoding: sealed[0].data, as: UTF8.self) == "(1),(2),(3)")
        #expect(store.bufferedRows == 0 && store.bufferedBytes == 0)
    }

    @Test func sizeStrategyWaitsSixtySecondsBySafetyNet() {
        var store = BatchStore()
        let rule = TableRule(strategy: .size, maxRows: 1000)
        _ = append(&store, "(1)", rule: rule, now: at(0))
        #expect(store.sealDue(now: at(59.9)).isEmpty)
        #expect(store.sealDue(now: at(60)).count == 1)
    }

    @Test func rowsSpreadOverTwoIntervalsMakeTwoFlushes() {
        var store = BatchStore()
        let rule = TableRule(strategy: .time, maxRows: 1, maxDelay: .seconds(2))
        // `time` ignores max_rows: both rows of the first interval wait for its end.
        #expect(append(&store, "(1)", rule: rule, now: at(0)).isEmpty)
        #expect(append(&store, "(2)", rule: rule, now: at(1.5)).isEmpty)
        let first = store.sealDue(now: at(2))
        #expect(first.map(\.rows) == [2])
        #expect(append(&store, "(3)", rule: rule, now: at(2.5)).isEmpty)
        #expect(store.sealDue(now: at(4)).isEmpty)
        let second = store.sealDue(now: at(4.5))
        #expect(second.map(\.rows) == [1])
        #expect(first[0].id < second[0].id)
        #expect(String(decoding: second[0].data, as: UTF8.self) == "(3)")
    }

    @Test func maxBytesSealsBeforeCrossing() {
        var store = BatchStore()
        let rule = TableRule(strategy: .hybrid, maxRows: 1000, maxBytes: 10)
        #expect(append(&store, "(11)", rule: rule, now: at(0)).isEmpty)  // 4 bytes
        #expect(append(&store, "(22)", rule: rule, now: at(0)).isEmpty)  // 9 bytes with the comma
        let sealed = append(&store, "(33)", rule: rule, now: at(0))  // would be 14: seal first
        #expect(sealed.count == 1)
        #expect(sealed[0].trigger == .bytes)
        #expect(String(decoding: sealed[0].data, as: UTF8.self) == "(11),(22)")
        #expect(store.bufferedRows == 1)
        #expect(store.bufferedBytes == 4)
    }

    @Test func shutdownFlushesWhatIsLeft() {
        var store = BatchStore()
        let rule = TableRule(strategy: .hybrid, maxRows: 1000, maxDelay: .seconds(60))
        let other = BatchKey(
            identity: ClientIdentity(user: "u", password: "p"), database: "default", table: "events", columns: nil,
            format: .values, header: nil, settings: []
        )
        _ = append(&store, "(1)", rule: rule, now: at(0))
        _ = append(&store, "(2)", rule: rule, now: at(0), key: other)
        _ = append(&store, "(3)", rule: rule, now: at(0))
        let all = store.sealAll(trigger: .shutdown, now: at(1))
        #expect(all.count == 2)
        #expect(all.allSatisfy { $0.trigger == .shutdown })
        #expect(all.map(\.rows).sorted() == [1, 2])
        #expect(store.openBatchCount == 0)
        #expect(store.bufferedRows == 0)
    }

    @Test func differentIdentitiesNeverShareABatch() {
        var store = BatchStore()
        let rule = TableRule(strategy: .size, maxRows: 2)
        let alice = BatchKey(
            identity: ClientIdentity(user: "alice", password: "a"), database: nil, table: "t", columns: nil,
            format: .values, header: nil, settings: [])
        var bob = alice
        bob.identity = ClientIdentity(user: "alice", password: "b")
        #expect(append(&store, "(1)", rule: rule, now: at(0), key: alice).isEmpty)
        #expect(append(&store, "(2)", rule: rule, now: at(0), key: bob).isEmpty)
        #expect(store.openBatchCount == 2)
        let sealed = append(&store, "(3)", rule: rule, now: at(0), key: alice)
        #expect(sealed.count == 1 && sealed[0].key.identity.password == "a")
    }

    @Test func lineFormatsGetNewlinesAndHeadersOnce() {
        var store = BatchStore()
        let header = Array("a\tb\n".utf8)
        let tsvKey = BatchKey(
            identity: .anonymous, database: nil, table: "t", columns: nil, format: .tabSeparatedWithNames,
            header: header, settings: [])
        let rule = TableRule(strategy: .size, maxRows: 3)
        _ = append(&store, "1\tx", rule: rule, now: at(0), key: tsvKey)
        _ = append(&store, "2\ty\n", rule: rule, now: at(0), key: tsvKey)
        let sealed = append(&store, "3\tz", rule: rule, now: at(0), key: tsvKey)
        #expect(sealed.count == 1)
        #expect(String(decoding: sealed[0].data, as: UTF8.self) == "a\tb\n1\tx\n2\ty\n3\tz\n")
    }

    @Test func jsonChunksAreNewlineSeparated() {
        var store = BatchStore()
        let jsonKey = BatchKey(
            identity: .anonymous, database: nil, table: "t", columns: nil, format: .jsonEachRow, header: nil,
            settings: [])
        let rule = TableRule(strategy: .size, maxRows: 2)
        _ = append(&store, "{\"a\":1}", rule: rule, now: at(0), key: jsonKey)
        let sealed = append(&store, "{\"a\":2}", rule: rule, now: at(0), key: jsonKey)
        #expect(String(decoding: sealed[0].data, as: UTF8.self) == "{\"a\":1}\n{\"a\":2}\n")
    }

    @Test func reloadKeepsRowsAndAppliesNewLimits() {
        var store = BatchStore()
        let loose = TableRule(strategy: .size, maxRows: 100)
        _ = append(&store, "(1)", rule: loose, now: at(0))
        _ = append(&store, "(2)", rule: loose, now: at(0))
        let kept = store.updateRules(now: at(1)) { _ in TableRule(strategy: .size, maxRows: 50, maxDelay: .seconds(5)) }
        #expect(kept.isEmpty)
        #expect(store.nextDeadline == at(5))
        let tight = store.updateRules(now: at(1)) { _ in TableRule(strategy: .size, maxRows: 2) }
        #expect(tight.map(\.rows) == [2])
        #expect(tight.first?.trigger == .reload)
    }

    @Test func settingsAreNormalisedForTheKey() {
        let a = BatchKey(
            identity: .anonymous, database: nil, table: "t", columns: nil, format: .csv, header: nil,
            settings: [Setting(name: "b", value: "1"), Setting(name: "a", value: "2"), Setting(name: "b", value: "3")])
        let b = BatchKey(
            identity: .anonymous, database: nil, table: "t", columns: nil, format: .csv, header: nil,
            settings: [Setting(name: "a", value: "2"), Setting(name: "b", value: "3")])
        #expect(a == b)
        #expect(a.settings.map(\.name) == ["a", "b"])
    }

    @Test func statementQuotesIdentifiers() {
        let k = BatchKey(
            identity: .anonymous, database: "my db", table: "we`ird", columns: ["a", "b c"], format: .jsonEachRow,
            header: nil, settings: [])
        #expect(k.insertStatement == "INSERT INTO `my db`.`we\\`ird` (`a`, `b c`) FORMAT JSONEachRow")
    }

    /// The core shows the user only: anything it could derive from the secret without a key would let a
    /// password guess be checked offline (the keyed tag is the engine's `IdentityTags`).
    @Test func identityDescriptionShowsTheUserOnly() {
        let identity = ClientIdentity(user: "alice", password: "hunter2")
        #expect(identity.description == "alice")
        #expect(ClientIdentity(user: "alice", password: "hunter3").description == "alice")
        #expect(ClientIdentity.anonymous.description == "default")
    }
}
