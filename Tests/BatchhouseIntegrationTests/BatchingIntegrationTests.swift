import BatchhouseCore
import BatchhouseUpstream
import Foundation
@testable import BatchhouseServer
import Testing

/// End to end against the real ClickHouse the test script started: rows go through the proxy, and the
/// assertions read them back from ClickHouse directly.
@Suite(.serialized, .enabled(if: TestEnvironment.hasClickHouse, "needs CLICKHOUSE_URL (scripts/test sets it)"))
struct BatchingIntegrationTests {
    /// A payload with what breaks naive scanners: quotes, brackets, separators, escapes, non-ASCII.
    static func payload(_ i: Int) -> String {
        "row \(i): it's (a) [b] {c}, \"q\"; x\\y ü " + String(repeating: "z", count: i % 7)
    }

    static func valuesLiteral(_ s: String) -> String {
        "'" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + "'"
    }

    static func tsvField(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\t", with: "\\t")
            .replacingOccurrences(of: "\n", with: "\\n")
    }

    /// How ClickHouse 18.16 writes a string in TabSeparated output (it escapes `'` too).
    static func tsvOutput(_ s: String) -> String {
        tsvField(s).replacingOccurrences(of: "'", with: "\\'")
    }

    static func jsonString(_ s: String) -> String {
        "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    @Test func singleRowInsertsFromManyClientsLandOnceInFewInserts() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        for table in ["v", "j", "t"] {
            try await db.clickHouse.sql(
                "CREATE TABLE \(db.name).\(table) (id UInt64, payload String) ENGINE = MergeTree ORDER BY id")
        }
        // log_queries on every batch insert: query_log then counts the inserts into these tables alone, even
        // while other suites insert elsewhere; system.events' InsertQuery is the server-wide cross-check.
        let proxy = try await ProxyUnderTest.start(
            """
            defaults:
              strategy: hybrid
              max_rows: 100000
              max_delay: 5s
            """, upstreamSettings: "{ log_queries: 1 }")
        let insertsBefore = try await db.insertQueries()
        let perFormat = 7_000
        let total = perFormat * 3
        let started = ContinuousClock.now
        try await runConcurrently(count: total, concurrency: 16) { index in
            let id = index / 3
            let payload = Self.payload(id)
            let result: HTTPResult
            switch index % 3 {
            case 0:
                result = try await proxy.endpoint.post(
                    "/", body: "INSERT INTO \(db.name).v (id, payload) VALUES (\(id), \(Self.valuesLiteral(payload)))")
            case 1:
                result = try await proxy.endpoint.post(
                    HTTPEndpoint.query("INSERT INTO \(db.name).j FORMAT JSONEachRow"),
                    body: "{\"id\":\(id),\"payload\":\(Self.jsonString(payload))}\n")
            default:
                result = try await proxy.endpoint.post(
                    "/?database=\(db.name)&query=" + QueryString.encode("INSERT INTO t FORMAT TSV"),
                    body: "\(id)\t\(Self.tsvField(payload))\n")
            }
            guard result.status == 200 else { throw TestFailure("insert \(index): \(result.status) \(result.body)") }
            guard result.header("X-Batchhouse-Ack") == "enqueued",
                result.header("X-ClickHouse-Summary")?.contains("\"written_rows\":\"1\"") == true
            else { throw TestFailure("insert \(index): unexpected headers \(result.headers)") }
        }
        let elapsed = ContinuousClock.now - started
        try await proxy.stop()

        let expected = (0..<perFormat).map { "\($0)\t\(Self.tsvOutput(Self.payload($0)))\n" }.joined()
        for table in ["v", "j", "t"] {
            let landed = try await db.clickHouse.sql(
                "SELECT id, payload FROM \(db.name).\(table) ORDER BY id, payload FORMAT TabSeparated")
            #expect(landed == expected, "table \(table): rows differ from what was sent")
        }
        let serverWide = try await db.insertQueries() - insertsBefore
        try await db.clickHouse.sql("SYSTEM FLUSH LOGS")
        let perTable = try await db.clickHouse.sql(
            """
            SELECT count() FROM system.query_log
            WHERE type = 2 AND query LIKE 'INSERT INTO `\(db.name)`.%' FORMAT TSV
            """)
        let inserts = Int(perTable.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        print(
            "batching: \(total) single-row INSERTs in \(elapsed) -> \(inserts) ClickHouse inserts into the 3 tables "
                + "(InsertQuery grew by \(serverWide) server-wide, other suites included)")
        // 3 tables, max_delay 5 s: one insert per table per 5 s of load, plus the shutdown flush.
        let allowed = 3 * (Int(elapsed.seconds / 5) + 2)
        #expect(inserts >= 3 && inserts <= allowed, "ClickHouse received \(inserts) inserts for \(total) rows")
        #expect(serverWide >= inserts)
    }

    @Test func selectThroughTheProxyIsByteIdentical() async throws {
        let proxy = try await ProxyUnderTest.start("defaults: { strategy: hybrid }")
        let direct = HTTPEndpoint(baseURL: TestEnvironment.clickHouseURL!)
        for sql in [
            "SELECT number, toString(number * 7), [number, 1] FROM system.numbers LIMIT 200000 FORMAT TabSeparated",
            "SELECT 'a\\tb', 1.5, NULL, now() > toDateTime('2000-01-01 00:00:00') FORMAT JSONEachRow",
            "SELECT name FROM system.functions ORDER BY name FORMAT JSON",
        ] {
            let viaProxy = try await proxy.endpoint.get(HTTPEndpoint.query(sql))
            let straight = try await direct.get(HTTPEndpoint.query(sql))
            #expect(viaProxy.status == 200)
            #expect(viaProxy.status == straight.status)
            // JSON output carries timing statistics; compare everything up to them.
            let cut: ([UInt8]) -> [UInt8] = { bytes in
                guard let range = bytes.firstRange(of: Array("\"statistics\"".utf8)) else { return bytes }
                return Array(bytes[..<range.lowerBound])
            }
            #expect(cut(viaProxy.body) == cut(straight.body), "differs for \(sql)")
        }
        // A POSTed SELECT (query in the body) and an error pass through as well.
        let posted = try await proxy.endpoint.post("/", body: "SELECT sum(number) FROM numbers(1000)")
        #expect(posted.status == 200 && posted.body == "499500\n")
        let bad = try await proxy.endpoint.post("/", body: "SELEKT 1")
        #expect(bad.status != 200 && bad.body.contains("Code: 62"))
        try await proxy.stop()
    }

    @Test func malformedInsertGetsAClickHouseErrorAndOthersStillLand() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).e (id UInt64, s String) ENGINE = MergeTree ORDER BY id")
        let proxy = try await ProxyUnderTest.start("defaults: { strategy: hybrid, max_delay: 200ms }")
        let errors = ErrorBox()
        try await runConcurrently(count: 2_000, concurrency: 8) { index in
            if index % 500 == 250 {
                let bad = try await proxy.endpoint.post(
                    "/", body: "INSERT INTO \(db.name).e VALUES (\(index), 'unterminated)")
                errors.add(bad)
                return
            }
            let ok = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).e VALUES (\(index), 's\(index)')")
            guard ok.status == 200 else { throw TestFailure("\(ok.status) \(ok.body)") }
        }
        let bad = errors.all
        #expect(bad.count == 4)
        for result in bad {
            #expect(result.status == 400)
            #expect(result.body.hasPrefix("Code: 62. DB::Exception: "), "body: \(result.body)")
            #expect(result.header("X-ClickHouse-Exception-Code") == "62")
        }
        try await proxy.stop()
        #expect(try await db.count("e") == 1_996)
        let sum = try await db.clickHouse.sql("SELECT sum(id) FROM \(db.name).e")
        let expectedSum = (0..<2_000).filter { $0 % 500 != 250 }.reduce(0, +)
        #expect(sum.trimmingCharacters(in: .whitespacesAndNewlines) == String(expectedSum))
    }

    @Test func everyShapeOfInsertIsUnderstood() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql(
            "CREATE TABLE \(db.name).`odd table` (id UInt64, `the name` String) ENGINE = MergeTree ORDER BY id")
        let proxy = try await ProxyUnderTest.start("defaults: { strategy: size, max_rows: 1000000, max_delay: 60s }")
        let table = "\(db.name).`odd table`"
        var sent: [(Int, String)] = []
        func check(_ result: HTTPResult, _ what: String) {
            #expect(result.status == 200, "\(what): \(result.status) \(result.body)")
            #expect(result.header("X-Batchhouse-Ack") == "enqueued", "\(what) was not batched")
        }
        // Statement split between the query parameter and the body, anywhere.
        check(try await proxy.endpoint.post(HTTPEndpoint.query("INSERT INTO \(table)"), body: "VALUES (1, 'split-1')"), "split 1")
        sent.append((1, "split-1"))
        check(try await proxy.endpoint.post(HTTPEndpoint.query("insert"), body: "into \(table) values (2, 'split-2')"), "split 2")
        sent.append((2, "split-2"))
        check(try await proxy.endpoint.post(HTTPEndpoint.query("INSERT INTO \(table) VALUES (3, 'in-query')"), body: ""), "all in query")
        sent.append((3, "in-query"))
        // Comments, mixed case, quoted identifiers, column list, database parameter.
        check(
            try await proxy.endpoint.post(
                "/?database=\(db.name)",
                body: "/* c */ InSeRt -- note\n INTO \"odd table\" (`the name`, id) FORMAT JSONEachRow\n{\"the name\":\"json-4\",\"id\":4}\n{\"id\":5,\"the name\":\"json-5\"}"),
            "comments")
        sent += [(4, "json-4"), (5, "json-5")]
        // X-ClickHouse-Database header, CSV, several rows at once.
        check(
            try await proxy.endpoint.post(
                HTTPEndpoint.query("INSERT INTO `odd table` FORMAT CSV"), body: "6,\"csv \"\"6\"\"\"\n7,\"csv\n7\"\n",
                headers: [("X-ClickHouse-Database", db.name)]),
            "csv")
        sent += [(6, "csv \"6\""), (7, "csv\n7")]
        // TSVWithNames: the header is kept once per batch.
        check(
            try await proxy.endpoint.post(
                HTTPEndpoint.query("INSERT INTO \(table) FORMAT TSVWithNames"), body: "id\tthe name\n8\ttsv-8\n"),
            "tsv with names")
        sent.append((8, "tsv-8"))
        // gzip and deflate request bodies.
        let gz = Array("INSERT INTO \(table) VALUES (9, 'gzip-9'), (10, 'gzip-10')".utf8).withUnsafeBytes {
            Zlib.compress($0, as: .gzip)
        }
        check(try await proxy.endpoint.post("/", body: gz, headers: [("Content-Encoding", "gzip")]), "gzip")
        sent += [(9, "gzip-9"), (10, "gzip-10")]
        let deflated = Array("11\tdeflate-11\n".utf8).withUnsafeBytes { Zlib.compress($0, as: .deflate) }
        check(
            try await proxy.endpoint.post(
                HTTPEndpoint.query("INSERT INTO \(table) FORMAT TabSeparated"), body: deflated,
                headers: [("Content-Encoding", "deflate")]),
            "deflate")
        sent.append((11, "deflate-11"))
        // Values with every string trick, rows with and without commas, trailing semicolon.
        check(
            try await proxy.endpoint.post(
                "/",
                body: "INSERT INTO \(table) VALUES (12, 'a(b') (13, 'it\\'s') ,(14, 'it''s'),(15, '\\\\'),(16, 'line\nbreak');"),
            "values tricks")
        sent += [(12, "a(b"), (13, "it's"), (14, "it's"), (15, "\\"), (16, "line\nbreak")]
        try await proxy.stop()

        let landed = try await db.clickHouse.sql("SELECT id, `the name` FROM \(table) ORDER BY id FORMAT JSONCompact")
        let data = try JSONSerialization.jsonObject(with: Data(landed.utf8)) as? [String: Any]
        let rows = (data?["data"] as? [[Any]]) ?? []
        let got = rows.map { (Int("\($0[0])") ?? -1, "\($0[1])") }
        #expect(got.map(\.0) == sent.map(\.0))
        #expect(got.map(\.1) == sent.map(\.1))
    }

    @Test func rowsOfDifferentUsersGoUpstreamWithTheirOwnCredentials() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).u (id UInt64) ENGINE = MergeTree ORDER BY id")
        // log_queries on every batch insert, so ClickHouse's query_log says which user sent which rows.
        let proxy = try await ProxyUnderTest.start(
            "defaults: { strategy: size, max_rows: 1000, max_delay: 60s, retries: 0 }",
            upstreamSettings: "{ log_queries: 1 }")
        for id in 0..<20 {
            let statement = Array("INSERT INTO \(db.name).u (id) VALUES (\(id))".utf8)
            let result =
                id % 2 == 0
                ? try await proxy.endpoint.post("/", body: statement)
                : try await proxy.endpoint.post("/", body: statement, auth: ("batchhouse_test", "secret"))
            #expect(result.status == 200)
        }
        // A wrong password gets ClickHouse's own refusal at once, and nothing of it is kept (docs/credentials.md).
        let wrong = try await proxy.endpoint.post(
            "/", body: Array("INSERT INTO \(db.name).u (id) VALUES (999)".utf8), auth: ("batchhouse_test", "wrong"))
        #expect(wrong.status == 401)
        #expect(wrong.body.contains("Code: 193"))
        try await proxy.stop()
        #expect(try await db.clickHouse.sql("SELECT count(), sum(id) FROM \(db.name).u FORMAT TSV") == "20\t190\n")
        try await db.clickHouse.sql("SYSTEM FLUSH LOGS")
        let byUser = try await db.clickHouse.sql(
            """
            SELECT user, count(), sum(written_rows) FROM system.query_log
            WHERE type = 2 AND query LIKE 'INSERT INTO `\(db.name)`.`u`%' GROUP BY user ORDER BY user FORMAT TSV
            """)
        #expect(byUser == "batchhouse_test\t1\t10\ndefault\t1\t10\n")
    }

    @Test func serviceAccountModeInsertsEveryonesRowsAsOneAccount() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).sa (id UInt64) ENGINE = MergeTree ORDER BY id")
        let proxy = try await ProxyUnderTest.start(
            "defaults: { strategy: size, max_rows: 1000, max_delay: 60s }",
            upstreamSettings: "{ log_queries: 1 }\n  user: batchhouse_test\n  password: secret")
        for id in 0..<10 {
            let statement = Array("INSERT INTO \(db.name).sa VALUES (\(id))".utf8)
            let result =
                id % 2 == 0
                ? try await proxy.endpoint.post("/", body: statement)
                : try await proxy.endpoint.post("/", body: statement, auth: ("someone", "else"))
            #expect(result.status == 200)
        }
        try await proxy.stop()
        #expect(try await db.count("sa") == 10)
        try await db.clickHouse.sql("SYSTEM FLUSH LOGS")
        let byUser = try await db.clickHouse.sql(
            """
            SELECT user, count() FROM system.query_log
            WHERE type = 2 AND query LIKE 'INSERT INTO `\(db.name)`.`sa`%' GROUP BY user FORMAT TSV
            """)
        #expect(byUser == "batchhouse_test\t1\n", "one batch, sent as the service account")
    }

    @Test func shutdownFlushesBufferedRowsAndRejectedBatchesAreDeadLettered() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).s (id UInt64) ENGINE = MergeTree ORDER BY id")
        let proxy = try await ProxyUnderTest.start(
            """
            defaults: { strategy: hybrid, max_rows: 100000, max_delay: 60s, retries: 1, retry_backoff: 10ms }
            """)
        for id in 0..<50 {
            let result = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).s VALUES (\(id))")
            #expect(result.status == 200)
        }
        // Structurally fine, but not a number: only ClickHouse can refuse it.
        let poisoned = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).s_missing VALUES (1)")
        #expect(poisoned.status == 200)
        #expect(try await db.count("s") == 0, "rows flushed before max_delay")
        let deadLetterDir = proxy.deadLetterDir
        #expect(proxy.application.engine.buffering.bufferedRows == 51)
        await proxy.group.triggerGracefulShutdown()
        try await proxy.task.value
        proxy.application.shutdown()
        #expect(try await db.count("s") == 50)
        let files = (try? FileManager.default.contentsOfDirectory(atPath: deadLetterDir)) ?? []
        #expect(files.filter { $0.hasSuffix(".data") }.count == 1)
        if let json = files.first(where: { $0.hasSuffix(".json") }) {
            let text = try String(contentsOfFile: deadLetterDir + "/" + json, encoding: .utf8)
            #expect(text.contains("s_missing"))
            #expect(text.contains("Code: 60"))
        }
        try? FileManager.default.removeItem(atPath: deadLetterDir)
    }
}

final class ErrorBox: @unchecked Sendable {
    private let lock = NSLock()
    private var results: [HTTPResult] = []
    func add(_ result: HTTPResult) {
        lock.lock()
        results.append(result)
        lock.unlock()
    }
    var all: [HTTPResult] {
        lock.lock()
        defer { lock.unlock() }
        return results
    }
}
