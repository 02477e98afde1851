import BatchhouseCore
import Foundation
import Testing

@testable import BatchhouseServer

/// `read_your_writes` against ClickHouse 18.16: an identity that inserts and then reads (or drops the table) sees
/// what ClickHouse alone would show, however long `max_delay` is; other identities are not delayed.
@Suite(.serialized, .enabled(if: TestEnvironment.hasClickHouse, "needs CLICKHOUSE_URL"))
struct ReadYourWritesIntegrationTests {
    static let alice = "&user=alice&password=alice-pw"

    static func rows(_ first: Int, _ count: Int) -> String {
        (first..<(first + count)).map { "(\($0), 'r\($0)')" }.joined(separator: ",")
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    @Test(arguments: ["enqueued", "durable", "flushed"])
    func aSelectRightAfterInsertingSeesEveryAcknowledgedRow(ack: String) async throws {
        let database = try await TestDatabase.create()
        try await database.clickHouse.sql("CREATE TABLE \(database.name).t (id UInt32, s String) ENGINE = Memory")
        let spool = NSTemporaryDirectory() + "bh-ryw-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: spool) }
        let proxy = try await ProxyUnderTest.start(
            "defaults: { max_delay: 1h, ack: \(ack) }\nspool: { dir: \(spool) }\n")
        let endpoint = proxy.endpoint
        let requests = 10
        var pendingInserts: Task<Void, any Error>?
        if ack == "flushed" {
            // Flushed INSERTs are answered once their batch lands: under a 1 h max_delay they wait, until a read of
            // the same identity flushes their batch at once.
            pendingInserts = Task {
                try await runConcurrently(count: requests, concurrency: requests) { index in
                    let answer = try await endpoint.post(
                        "/", body: "INSERT INTO \(database.name).t VALUES \(Self.rows(index * 5, 5))")
                    #expect(answer.status == 200)
                }
            }
            let deadline = ContinuousClock.now + .seconds(30)
            while proxy.application.engine.buffering.bufferedRows < 50 && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(proxy.application.engine.buffering.bufferedRows == 50)
        } else {
            for index in 0..<requests {
                let answer = try await endpoint.post("/", body: "INSERT INTO \(database.name).t VALUES \(Self.rows(index * 5, 5))")
                #expect(answer.status == 200)
                #expect(answer.header("X-Batchhouse-Ack") == ack)
            }
        }
        #expect(try await database.count("t") == 0, "still buffered under a 1 h max_delay")
        let started = ContinuousClock.now
        let count = try await endpoint.post(EndpointPath.query("SELECT count() FROM \(database.name).t"), body: "")
        let waited = ContinuousClock.now - started
        #expect(count.body == "50\n", "ack \(ack)")
        print("[read_your_writes] ack=\(ack): SELECT after 10 buffered INSERTs took \(Self.seconds(waited) * 1000) ms")
        try await pendingInserts?.value
        let metrics = try await proxy.metricsText()
        #expect(metrics.contains("batchhouse_read_your_writes_waits_total 1"))
        try await proxy.stop()
        await database.drop()
    }

    @Test func dropRightAfterInsertingThenCreateAgainShowsNoOldRows() async throws {
        let database = try await TestDatabase.create()
        let table = "\(database.name).t"
        try await database.clickHouse.sql("CREATE TABLE \(table) (id UInt32, s String) ENGINE = MergeTree ORDER BY id")
        let proxy = try await ProxyUnderTest.start("defaults: { max_delay: 1h }\n")
        for index in 0..<5 {
            #expect(try await proxy.endpoint.post("/", body: "INSERT INTO \(table) VALUES \(Self.rows(index, 1))").status == 200)
        }
        #expect(try await proxy.endpoint.post("/", body: "DROP TABLE \(table)").status == 200)
        #expect(
            try await proxy.endpoint.post("/", body: "CREATE TABLE \(table) (id UInt32, s String) ENGINE = MergeTree ORDER BY id")
                .status == 200)
        #expect(try await proxy.endpoint.post("/", body: "SELECT count() FROM \(table)").body == "0\n")
        try await proxy.stop()
        #expect(try await database.count("t") == 0, "nothing of the old table landed in the new one, even after the drain")
        await database.drop()
    }

    @Test func anotherIdentityIsNotDelayedAndReadYourWritesFalseDoesNotWait() async throws {
        let database = try await TestDatabase.create()
        // A materialized view that sleeps makes every insert into `slow` take about a second.
        try await database.clickHouse.sql("CREATE TABLE \(database.name).slow (id UInt32, s String) ENGINE = Memory")
        try await database.clickHouse.sql("CREATE TABLE \(database.name).sink (n UInt8) ENGINE = Memory")
        try await database.clickHouse.sql(
            "CREATE MATERIALIZED VIEW \(database.name).mv TO \(database.name).sink AS SELECT sleep(1) AS n FROM \(database.name).slow")
        try await database.clickHouse.sql("CREATE TABLE \(database.name).fast (id UInt32, s String) ENGINE = Memory")
        let proxy = try await ProxyUnderTest.start(
            "defaults: { max_delay: 1h }\ntables:\n  \(database.name).fast: { read_your_writes: false }\n")
        let endpoint = proxy.endpoint
        let select = EndpointPath.query("SELECT 1")

        func timed(_ path: String) async throws -> Duration {
            let started = ContinuousClock.now
            let answer = try await endpoint.post(path, body: "")
            #expect(answer.status == 200, "\(answer.body)")
            return ContinuousClock.now - started
        }
        // Warm up both identities (credentials verified once), then the baseline with no batch open.
        _ = try await timed(select)
        _ = try await timed(select + Self.alice)
        var baseline: [Duration] = []
        for _ in 0..<20 { baseline.append(try await timed(select)) }

        // Alice's rows wait in an open batch of `slow`; the default user's SELECTs must not wait for them.
        #expect(
            try await endpoint.post("/?user=alice&password=alice-pw", body: "INSERT INTO \(database.name).slow VALUES (1, 'a')")
                .status == 200)
        var others: [Duration] = []
        for _ in 0..<20 { others.append(try await timed(select)) }
        #expect(try await database.count("slow") == 0, "the other identity's reads did not flush alice's batch")

        // Alice's own SELECT waits for her batch (about a second: the view's sleep), and then sees it.
        let aliceStarted = ContinuousClock.now
        let aliceCount = try await endpoint.post(
            EndpointPath.query("SELECT count() FROM \(database.name).slow") + Self.alice, body: "")
        let aliceWaited = ContinuousClock.now - aliceStarted
        #expect(aliceCount.body == "1\n")
        #expect(aliceWaited >= .milliseconds(800), "waited for the batch's outcome")

        // While another of alice's batches is in flight (slow), the default user is still not delayed.
        _ = try await endpoint.post(
            "/?user=alice&password=alice-pw", body: "INSERT INTO \(database.name).slow VALUES (2, 'b')")
        let aliceRead = Task { try await endpoint.post(select + Self.alice, body: "") }
        try await Task.sleep(for: .milliseconds(100))
        var duringFlush: [Duration] = []
        for _ in 0..<5 { duringFlush.append(try await timed(select)) }
        _ = try await aliceRead.value

        // read_your_writes: false: the rows stay buffered and the SELECT does not wait.
        #expect(try await endpoint.post("/", body: "INSERT INTO \(database.name).fast VALUES (1, 'f')").status == 200)
        let fastStarted = ContinuousClock.now
        let fastCount = try await endpoint.post(EndpointPath.query("SELECT count() FROM \(database.name).fast"), body: "")
        let fastWaited = ContinuousClock.now - fastStarted
        #expect(fastCount.body == "0\n", "not flushed for the read")

        func median(_ values: [Duration]) -> Double { Self.seconds(values.sorted()[values.count / 2]) * 1000 }
        print(
            "[read_your_writes] SELECT 1 median ms: no open batch \(median(baseline)); another identity's batch open "
                + "\(median(others)); another identity's batch in flight \(median(duringFlush)); own batch "
                + "(1 s insert) \(Self.seconds(aliceWaited) * 1000); read_your_writes=false \(Self.seconds(fastWaited) * 1000)")
        // Waiting for alice's batch would take over a second (the view's sleep); a loaded machine adds tens of ms.
        #expect(median(others) < 800 && median(duringFlush) < 800, "not delayed by alice's batches")
        #expect(fastWaited < .milliseconds(800))
        try await proxy.stop()
        await database.drop()
    }
}

enum EndpointPath {
    static func query(_ sql: String) -> String { "/?query=" + QueryString.encode(sql) }
}
