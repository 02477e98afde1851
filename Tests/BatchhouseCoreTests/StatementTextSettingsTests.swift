import Testing

@testable import BatchhouseCore

@Suite struct StatementTextSettingsTests {
    private func statement(_ text: String) -> InsertStatement {
        guard case .insert(let statement) = InsertParser.parse(Array(text.utf8), isComplete: true) else {
            fatalError("not an insert: \(text)")
        }
        return statement
    }

    @Test func aStatementThatClearlyFitsIsBatchedWithoutTheSetting() {
        // ClickHouse's own test 00612: `query=insert`, body `into t values (1, 1), ...`, max_query_size=30.
        let insert = statement("insert\ninto tab_00612_1 values (1, 1), (2, 2)")
        let settings = [Setting(name: "max_query_size", value: "32"), Setting(name: "max_threads", value: "2")]
        #expect(StatementTextSettings.verdict(for: insert, settings: settings) == .batch)
        #expect(StatementTextSettings.removed(from: settings) == [Setting(name: "max_threads", value: "2")])
    }

    @Test func aStatementAtOrBeyondTheLimitGoesToClickHouse() {
        let insert = statement("insert\ninto tab_00612_1 values (1, 1), (2, 2)")  // `values` ends at byte 30
        for limit in [10, 29, 30, 31] {
            let verdict = StatementTextSettings.verdict(
                for: insert, settings: [Setting(name: "max_query_size", value: String(limit))])
            #expect(verdict != .batch, "max_query_size=\(limit)")
        }
        #expect(
            StatementTextSettings.verdict(for: insert, settings: [Setting(name: "max_query_size", value: "1k")]) != .batch)
    }

    @Test func treeLimitsAreLeftToClickHouse() {
        let insert = statement("INSERT INTO t VALUES (1)")
        for name in ["max_ast_elements", "max_parser_depth", "max_ast_depth"] {
            #expect(StatementTextSettings.verdict(for: insert, settings: [Setting(name: name, value: "1000")]) != .batch)
        }
        #expect(StatementTextSettings.verdict(for: insert, settings: []) == .batch)
    }
}
