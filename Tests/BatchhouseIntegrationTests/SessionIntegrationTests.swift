import BatchhouseCore
import Foundation
import Testing

/// Requests with a `session_id` are ClickHouse's session state (temporary tables, SET, USE): streamed at once,
/// never batched, and every request of one session goes to the same server (00463_long_sessions_in_http_interface).
@Suite(.serialized, .enabled(if: TestEnvironment.hasClickHouse, "needs CLICKHOUSE_URL"))
struct SessionIntegrationTests {
    static func session(_ id: String, _ extra: String = "") -> String { "/?session_id=\(id)&session_timeout=60\(extra)" }

    @Test func temporaryTablesSetAndUseLiveAcrossTheRequestsOfOneSession() async throws {
        let database = try await TestDatabase.create()
        let proxy = try await ProxyUnderTest.start("defaults: { max_delay: 1h }\n")
        let id = "bh-session-\(UInt32.random(in: 0...UInt32.max))"
        let path = Self.session(id)
        #expect(try await proxy.endpoint.post(path, body: "CREATE TEMPORARY TABLE tmp (x UInt8)").status == 200)
        // An INSERT the proxy would batch without the session: it must land in the session's temporary table.
        let insert = try await proxy.endpoint.post(path, body: "INSERT INTO tmp VALUES (1), (2), (3)")
        #expect(insert.status == 200, "\(insert.body)")
        #expect(insert.header("X-Batchhouse-Ack") == nil, "ClickHouse's own answer, not a batch's")
        let tsv = try await proxy.endpoint.post(path + "&query=INSERT%20INTO%20tmp%20FORMAT%20TSV", body: "4\n")
        #expect(tsv.status == 200, "\(tsv.body)")
        #expect(try await proxy.endpoint.post(path, body: "SELECT count() FROM tmp").body == "4\n")
        #expect(try await proxy.endpoint.post(path, body: "SET max_threads = 3").status == 200)
        #expect(
            try await proxy.endpoint.post(path, body: "SELECT value FROM system.settings WHERE name = 'max_threads'").body
                == "3\n")
        #expect(try await proxy.endpoint.post(path, body: "USE \(database.name)").status == 200)
        #expect(try await proxy.endpoint.post(path, body: "SELECT currentDatabase()").body == "\(database.name)\n")
        // Another session sees none of it.
        let other = Self.session(id + "-other")
        #expect(try await proxy.endpoint.post(other, body: "SELECT count() FROM tmp").status != 200)
        #expect(try await proxy.endpoint.post(other, body: "SELECT currentDatabase()").body == "default\n")
        try await proxy.stop()
        await database.drop()
    }

    @Test func aConcurrentRequestToALockedSessionGetsClickHousesCode373() async throws {
        let proxy = try await ProxyUnderTest.start("defaults: { max_delay: 1h }\n")
        let id = "bh-locked-\(UInt32.random(in: 0...UInt32.max))"
        let path = Self.session(id)
        #expect(try await proxy.endpoint.post(path, body: "CREATE TEMPORARY TABLE tmp (x UInt8)").status == 200)
        let endpoint = proxy.endpoint
        let long = Task { try await endpoint.post(path, body: "SELECT sleep(2)") }
        try await Task.sleep(for: .milliseconds(600))
        // Both a SELECT and an INSERT (which the proxy would otherwise hold and batch) get ClickHouse's answer.
        let select = try await proxy.endpoint.post(path, body: "SELECT 1")
        let insert = try await proxy.endpoint.post(path, body: "INSERT INTO tmp VALUES (1)")
        let first = try await long.value
        #expect(first.status == 200)
        for answer in [select, insert] {
            #expect(answer.status == 500, "\(answer.body)")
            #expect(answer.body.contains("Code: 373"), "\(answer.body)")
        }
        try await proxy.stop()
    }

    @Test func everyRequestOfASessionGoesToTheSameServer() async throws {
        let recording = try await RecordingUpstream()
        let proxy = try await ProxyUnderTest.start(
            "defaults: { max_delay: 1h }\n", upstream: "\(TestEnvironment.clickHouseURL!), \(recording.url)")
        let ids = (0..<16).map { "bh-sticky-\($0)-\(UInt32.random(in: 0...UInt32.max))" }
        var onReal = 0
        for id in ids {
            let path = Self.session(id)
            let created = try await proxy.endpoint.post(path, body: "CREATE TEMPORARY TABLE tmp (x UInt8)")
            for _ in 0..<3 { _ = try await proxy.endpoint.post(path, body: "INSERT INTO tmp VALUES (7)") }
            let count = try await proxy.endpoint.post(path, body: "SELECT count() FROM tmp")
            let recorded = recording.clientRequests.filter { $0.parameter("session_id") == id }.count
            #expect(recorded == 0 || recorded == 5, "\(id): all or none of its 5 requests on the recording server")
            if recorded == 0 {
                onReal += 1
                #expect(created.status == 200)
                #expect(count.body == "3\n", "the session's state was on the one server it went to")
            }
        }
        print("[sessions] \(onReal) of \(ids.count) sessions on the real server, the rest on the recording one")
        #expect(onReal > 0 && onReal < ids.count, "sessions spread over both servers")
        try await proxy.stop()
        await recording.stop()
    }
}
