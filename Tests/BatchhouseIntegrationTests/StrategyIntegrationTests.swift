import BatchhouseCore
import Foundation
import Testing

@testable import BatchhouseServer

/// Several strategies at once, and hot reload under load, against the real ClickHouse.
@Suite(.serialized, .enabled(if: TestEnvironment.hasClickHouse, "needs CLICKHOUSE_URL (scripts/test sets it)"))
struct StrategyIntegrationTests {
    @Test func twoStrategiesAndAReloadMidLoadLoseAndDuplicateNothing() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        for table in ["a", "b"] {
            try await db.clickHouse.sql("CREATE TABLE \(db.name).\(table) (id UInt64) ENGINE = MergeTree ORDER BY id")
        }
        let file = NSTemporaryDirectory() + "bh-reload-\(UInt32.random(in: 0...UInt32.max)).yaml"
        defer { try? FileManager.default.removeItem(atPath: file) }
        @Sendable func rules(maxRowsA: Int, typo: Bool = false) -> String {
            """
            defaults: { strategy: hybrid, max_delay: 60s }
            tables:
              \(db.name).a: { strategy: size, \(typo ? "max_row" : "max_rows"): \(maxRowsA), max_delay: 60s }
              \(db.name).b: { strategy: time, max_delay: 300ms }
            """
        }
        let proxy = try await ProxyUnderTest.start(rules(maxRowsA: 1_000_000), watchedFile: file)
        let total = 6_000
        let reloaded = ReloadFlag()
        try await runConcurrently(count: total, concurrency: 8) { index in
            if index == total / 2 && reloaded.setOnce() {
                // Mid-load: a's batches now close at 250 rows instead of a million.
                try ProxyUnderTest.configurationText(rules(maxRowsA: 250), deadLetterDir: proxy.deadLetterDir)
                    .write(toFile: file, atomically: true, encoding: .utf8)
            }
            let table = index % 2 == 0 ? "a" : "b"
            let result = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).\(table) VALUES (\(index))")
            guard result.status == 200 else { throw TestFailure("\(result.status) \(result.body)") }
        }
        // The reload happened and took effect: a flushed by rows, b by time.
        var metrics = try await proxy.metricsText()
        for _ in 0..<300 where !metrics.contains("batchhouse_config_reloads_total 1") {
            try await Task.sleep(for: .milliseconds(100))
            metrics = try await proxy.metricsText()
        }
        #expect(metrics.contains("batchhouse_config_reloads_total 1"))
        #expect(proxy.application.engine.configuration.value.rules.rule(database: db.name, table: "a").maxRows == 250)

        // An invalid file is refused and the running rules stay.
        try ProxyUnderTest.configurationText(rules(maxRowsA: 5, typo: true), deadLetterDir: proxy.deadLetterDir)
            .write(toFile: file, atomically: true, encoding: .utf8)
        for _ in 0..<300 where !metrics.contains("batchhouse_config_reload_failures_total 1") {
            try await Task.sleep(for: .milliseconds(100))
            metrics = try await proxy.metricsText()
        }
        #expect(metrics.contains("batchhouse_config_reload_failures_total 1"))
        #expect(proxy.application.engine.configuration.value.rules.rule(database: db.name, table: "a").maxRows == 250)
        // ...and keep working: 250 more rows of a flush on their own, by rows, before any max_delay.
        let aBefore = try await db.count("a")
        for id in total..<(total + 500) where id % 2 == 0 {
            let result = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).a VALUES (\(id))")
            #expect(result.status == 200)
        }
        #expect(try await db.waitForCount("a", aBefore + 250, timeout: .seconds(30)) >= aBefore + 250)
        #expect(try await db.waitForCount("b", total / 2, timeout: .seconds(30)) == total / 2, "time strategy flushes")
        try await proxy.stop()

        for (table, ids) in [("a", Array(stride(from: 0, to: total + 500, by: 2))), ("b", Array(stride(from: 1, to: total, by: 2)))] {
            let figures = try await db.clickHouse.sql(
                "SELECT count(), uniqExact(id), sum(id) FROM \(db.name).\(table) FORMAT TSV")
            #expect(figures == "\(ids.count)\t\(ids.count)\t\(ids.reduce(0, +))\n", "table \(table)")
        }
    }

    @Test func immediateTablesAnswerWithClickHousesOwnResult() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).p (id UInt64, amount Decimal(18, 2)) ENGINE = MergeTree ORDER BY id")
        let proxy = try await ProxyUnderTest.start(
            """
            defaults: { strategy: hybrid, max_delay: 60s }
            tables:
              p: { strategy: immediate, priority: 1 }
            """)
        let ok = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).p VALUES (1, 10.50)")
        #expect(ok.status == 200)
        #expect(ok.header("X-Batchhouse-Ack") == "flushed")
        #expect(try await db.count("p") == 1, "immediate rows are in ClickHouse when the client gets its answer")
        // ClickHouse's own refusal comes back to the client, status and body.
        let refused = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).p VALUES (2, 'not a number')")
        #expect(refused.status != 200)
        #expect(refused.body.contains("Code: "), "body: \(refused.body)")
        try await proxy.stop()
        #expect(try await db.count("p") == 1)
    }

    @Test func flushedAckBatchesRequestsAndGivesEachItsOwnOutcome() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).fl (id UInt64, v UInt32) ENGINE = MergeTree ORDER BY id")
        let proxy = try await ProxyUnderTest.start(
            "defaults: { strategy: hybrid, max_delay: 300ms, ack: flushed, retries: 0 }", upstreamSettings: "{ log_queries: 1 }")
        let results = ErrorBox()
        // 40 requests at once: they share batches; one of them carries a row ClickHouse refuses.
        try await runConcurrently(count: 40, concurrency: 40) { id in
            let value = id == 17 ? "'bad'" : "\(id)"
            var result = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).fl VALUES (\(id), \(value))")
            result.body = "\(id)|" + result.body
            results.add(result)
        }
        try await proxy.stop()
        let all = results.all
        let refused = all.filter { $0.status != 200 }
        #expect(refused.count == 1)
        #expect(refused.first?.body.hasPrefix("17|Code: 53") == true, "\(refused.first?.body ?? "")")
        #expect(all.filter { $0.status == 200 }.allSatisfy { $0.header("X-Batchhouse-Ack") == "flushed" })
        #expect(try await db.count("fl") == 39)
        try await db.clickHouse.sql("SYSTEM FLUSH LOGS")
        let inserts = try await db.clickHouse.sql(
            "SELECT count() FROM system.query_log WHERE type = 2 AND query LIKE 'INSERT INTO `\(db.name)`.`fl`%' FORMAT TSV")
        #expect((Int(inserts.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 99) < 20, "flushed acks still batch: \(inserts)")
    }

    @Test func passthroughAndSampleRules() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        for table in ["legacy", "debug"] {
            try await db.clickHouse.sql("CREATE TABLE \(db.name).\(table) (id UInt64) ENGINE = MergeTree ORDER BY id")
        }
        let proxy = try await ProxyUnderTest.start(
            """
            defaults: { strategy: hybrid, max_delay: 60s }
            tables:
              legacy: { passthrough: true }
              debug: { sample: 0.25 }
            """)
        let legacy = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).legacy VALUES (1), (2)")
        #expect(legacy.status == 200)
        #expect(legacy.header("X-Batchhouse-Ack") == nil, "passthrough answers are ClickHouse's own")
        #expect(try await db.count("legacy") == 2)
        let rows = (0..<4_000).map { "(\($0))" }.joined(separator: ",")
        let sampled = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).debug VALUES \(rows)")
        #expect(sampled.status == 200)
        try await proxy.stop()
        let kept = try await db.count("debug")
        // Binomial(4000, 0.25): mean 1000, sd ~27; 6 sd either side.
        #expect((840...1160).contains(kept), "kept \(kept) of 4000 rows at sample 0.25")
    }
}

final class ReloadFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var done = false
    func setOnce() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if done { return false }
        done = true
        return true
    }
}
