import Foundation
import Testing

@testable import BatchhouseServer

/// The `aggregate:` rule against the real ClickHouse: the summaries that land, compared with ClickHouse's own
/// aggregate functions over the same rows (docs/aggregation.md).
@Suite(.serialized, .enabled(if: TestEnvironment.hasClickHouse, "needs CLICKHOUSE_URL (scripts/test sets it)"))
struct AggregationIntegrationTests {
    static func targetTable(_ db: String, _ name: String, keys: String = "endpoint String") -> String {
        """
        CREATE TABLE \(db).\(name) (window_start DateTime, \(keys), count UInt64, d_min Float64, d_max Float64,
          d_avg Float64, d_sum Float64, d_p50 Float64, d_p95 Float64, d_p99 Float64)
        ENGINE = MergeTree ORDER BY window_start
        """
    }

    static func patternsTable(_ db: String) -> String {
        """
        CREATE TABLE \(db).patterns (window_start DateTime, table String, group_key String, column String,
          kind String, value Float64, baseline Float64) ENGINE = MergeTree ORDER BY window_start
        """
    }

    /// Polls `query` until it returns something other than `empty`.
    static func waitFor(_ db: TestDatabase, _ query: String, not empty: String = "0\n", timeout: Duration = .seconds(20))
        async throws -> String
    {
        let deadline = ContinuousClock.now + timeout
        var last = try await db.clickHouse.sql(query)
        while last == empty && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
            last = try await db.clickHouse.sql(query)
        }
        return last
    }

    @Test func aThousandRowsBecomeOneRowThatMatchesClickHousesOwnAggregates() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql(Self.targetTable(db.name, "rt_1m"))
        // keep_raw: the same rows land raw too, so ClickHouse can aggregate them itself.
        try await db.clickHouse.sql(
            "CREATE TABLE \(db.name).rt (ts DateTime, endpoint String, d Float64, id UInt64) ENGINE = MergeTree ORDER BY id")
        let proxy = try await ProxyUnderTest.start(
            """
            defaults: { max_delay: 200ms }
            tables:
              \(db.name).rt:
                aggregate:
                  into: \(db.name).rt_1m
                  window: 1m
                  time_column: ts
                  group_by: [endpoint]
                  values: [d]
                  keep_raw: true
            """)
        var generator = SystemRandomNumberGenerator()
        let values = (0..<1_000).map { _ in (Double.random(in: 0..<5_000, using: &generator) * 100).rounded() / 100 }
        // 1,000 single-row INSERTs, in three client shapes.
        try await runConcurrently(count: values.count, concurrency: 16) { id in
            let value = values[id]
            let body: String
            switch id % 3 {
            case 0: body = "INSERT INTO \(db.name).rt FORMAT JSONEachRow {\"ts\":\"2027-01-15 08:00:10\",\"endpoint\":\"/api\",\"d\":\(value),\"id\":\(id)}"
            case 1: body = "INSERT INTO \(db.name).rt (id, endpoint, ts, d) VALUES (\(id), '/api', 1800000020, \(value))"
            default: body = "INSERT INTO \(db.name).rt FORMAT CSVWithNames\nts,endpoint,d,id\n1800000059,\"/api\",\(value),\(id)\n"
            }
            let result = try await proxy.endpoint.post("/", body: body)
            guard result.status == 200 else { throw TestFailure("\(result.status) \(result.body)") }
        }
        try await proxy.stop()
        let summary = try await db.clickHouse.sql(
            "SELECT toUInt32(window_start), endpoint, count, d_min, d_max, d_sum, d_avg, d_p50, d_p99 FROM \(db.name).rt_1m FORMAT TSV")
        let rows = summary.split(separator: "\n").map { $0.split(separator: "\t").map(String.init) }
        #expect(rows.count == 1, "\(summary)")
        let own = try await db.clickHouse.sql(
            "SELECT count(), min(d), max(d), sum(d), avg(d), quantileExact(0.5)(d), quantileExact(0.99)(d) FROM \(db.name).rt FORMAT TSV"
        ).split(separator: "\t").map { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) ?? .nan }
        guard let row = rows.first, row.count == 9, own.count == 7 else { return }
        #expect(row[0] == "1800000000")
        #expect(row[1] == "/api")
        #expect(Int(row[2]) == 1_000)
        #expect(Double(row[3]) == own[1])
        #expect(Double(row[4]) == own[2])
        #expect(abs((Double(row[5]) ?? 0) - own[3]) <= 1e-9 * own[3])
        #expect(abs((Double(row[6]) ?? 0) - own[4]) <= 1e-9 * own[4])
        // Exact below exact_values: ClickHouse's quantileExact, to the value.
        #expect(Double(row[7]) == own[5])
        #expect(Double(row[8]) == own[6])
    }

    @Test func tenSteadyWindowsThenOneAtTenTimesLandASpikeRow() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql(Self.targetTable(db.name, "rt_1s"))
        try await db.clickHouse.sql(Self.patternsTable(db.name))
        let proxy = try await ProxyUnderTest.start(
            """
            tables:
              \(db.name).rt:
                aggregate:
                  into: \(db.name).rt_1s
                  window: 1s
                  time_column: ts
                  group_by: [endpoint]
                  values: [d]
                  patterns: { into: \(db.name).patterns, history: 10 }
            """)
        for second in 0..<11 {
            let rows = (0..<50).map { index in
                let value = second < 10 ? 20 + Double(index % 5) : 220 + Double(index % 5)
                return "{\"endpoint\":\"/checkout\",\"ts\":\(1_800_000_000 + second),\"d\":\(value)}"
            }
            let result = try await proxy.endpoint.post(
                "/?query=" + "INSERT INTO \(db.name).rt FORMAT JSONEachRow".addingPercentEncoding(withAllowedCharacters: .alphanumerics)!,
                body: rows.joined(separator: "\n"))
            #expect(result.status == 200, "\(result.body)")
        }
        let found = try await Self.waitFor(
            db, "SELECT toUInt32(window_start), table, group_key, column, kind, value, baseline FROM \(db.name).patterns FORMAT TSV",
            not: "")
        #expect(found == "1800000010\t\(db.name).rt\t{\"endpoint\":\"/checkout\"}\td\tspike\t222\t22\n", "\(found)")
        #expect(try await db.count("rt_1s") == 11)
        let metrics = try await proxy.metricsText()
        #expect(metrics.contains("batchhouse_patterns_total{table=\"\(db.name).rt\",kind=\"spike\"} 1"))
        try await proxy.stop()
    }

    @Test func aTargetWithoutTheColumnsRefusesTheRowsInsteadOfLosingThem() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql(
            "CREATE TABLE \(db.name).short (window_start DateTime, endpoint String, count UInt64) ENGINE = MergeTree ORDER BY window_start")
        let proxy = try await ProxyUnderTest.start(
            """
            tables:
              \(db.name).rt:
                aggregate: { into: \(db.name).short, window: 1s, group_by: [endpoint], values: [d] }
            """)
        var result = try await proxy.endpoint.post(
            "/", body: "INSERT INTO \(db.name).rt FORMAT JSONEachRow {\"endpoint\":\"/a\",\"d\":1}")
        // The check runs once the proxy has started; until it has answered, wait for it.
        let deadline = ContinuousClock.now + .seconds(10)
        while result.status == 200 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
            result = try await proxy.endpoint.post(
                "/", body: "INSERT INTO \(db.name).rt FORMAT JSONEachRow {\"endpoint\":\"/a\",\"d\":1}")
        }
        #expect(result.status == 400)
        #expect(result.body.contains("Code: 16"), "\(result.body)")
        #expect(result.body.contains("d_min"), "\(result.body)")
        try await proxy.stop()
    }

    @Test func aValueThatIsNotANumberIsRefusedLikeClickHouseWouldAndNothingElseIsLost() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql(Self.targetTable(db.name, "rt_1s"))
        let proxy = try await ProxyUnderTest.start(
            """
            tables:
              \(db.name).rt:
                aggregate: { into: \(db.name).rt_1s, window: 1s, group_by: [endpoint], values: [d] }
            """)
        let bad = try await proxy.endpoint.post(
            "/", body: "INSERT INTO \(db.name).rt FORMAT JSONEachRow {\"endpoint\":\"/a\",\"d\":7}\n{\"endpoint\":\"/a\",\"d\":\"fast\"}")
        #expect(bad.status == 400)
        #expect(bad.body.hasPrefix("Code: 72. DB::Exception: Batchhouse: row 2"), "\(bad.body)")
        #expect(bad.header("X-ClickHouse-Exception-Code") == "72")
        let good = try await proxy.endpoint.post(
            "/", body: "INSERT INTO \(db.name).rt FORMAT JSONEachRow {\"endpoint\":\"/a\",\"d\":5}")
        #expect(good.status == 200)
        try await proxy.stop()
        #expect(try await db.clickHouse.sql("SELECT count, d_sum FROM \(db.name).rt_1s FORMAT TSV") == "1\t5\n")
    }
}
