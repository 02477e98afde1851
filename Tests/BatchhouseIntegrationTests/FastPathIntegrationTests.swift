import BatchhouseCore
import Foundation
import Testing

/// The fast path (docs/architecture.md, "The fast path") against a real ClickHouse 18.16, on real sockets, with the
/// general path (`--no-fast-path`) as the reference: answers in order when some wait, a connection that moves to
/// the general path mid-pipeline, durable acks, and the rows that land, by content.
@Suite(.serialized, .enabled(if: TestEnvironment.hasClickHouse, "needs CLICKHOUSE_URL (scripts/test sets it)"))
struct FastPathIntegrationTests {
    static func post(_ body: String, headers: String = "") -> String {
        "POST / HTTP/1.1\r\nHost: x\r\n\(headers)Content-Length: \(body.utf8.count)\r\n\r\n\(body)"
    }

    /// Status line, `X-Batchhouse-Ack` and body of each response in `text`, in order. (Bytes, not Characters:
    /// to Swift "\r\n" is one Character.)
    static func answers(_ text: String) -> [String] {
        var answers: [String] = []
        var rest = Array(text.utf8)[...]
        func line() -> String? {
            guard let end = rest.indices.first(where: { rest[$0] == 13 && $0 + 1 < rest.endIndex && rest[$0 + 1] == 10 })
            else { return nil }
            defer { rest = rest[(end + 2)...] }
            return String(decoding: rest[..<end], as: UTF8.self)
        }
        while !rest.isEmpty, let status = line() {
            var fields: [String] = []
            while let field = line(), !field.isEmpty { fields.append(field.lowercased()) }
            func value(_ name: String) -> String? {
                fields.first { $0.hasPrefix(name + ":") }.map { $0.dropFirst(name.count + 1).trimmingCharacters(in: .whitespaces) }
            }
            var body: [UInt8] = []
            if value("transfer-encoding") == "chunked" {
                // Chunks: a hexadecimal size line, the data, CRLF; a zero size ends them.
                while let sizeLine = line(), let size = Int(sizeLine, radix: 16) {
                    body += rest.prefix(size)
                    rest = rest.dropFirst(size + 2)
                    if size == 0 { break }
                }
            } else {
                let length = value("content-length").flatMap { Int($0) } ?? 0
                body += rest.prefix(length)
                rest = rest.dropFirst(length)
            }
            let text = String(decoding: body, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            answers.append("\(status) | \(value("x-batchhouse-ack") ?? "-") | \(text)")
        }
        return answers
    }

    /// One write holds: an INSERT whose answer waits for its batch (`flushed`), one answered at once, a SELECT that
    /// goes to ClickHouse (the connection moves to the general path there), an INSERT after it, and one that
    /// closes. The answers come in that order, with the SELECT seeing the first row, and the rows land once.
    @Test(arguments: [true, false])
    func pipelinedAnswersKeepTheirOrderWhenOneWaitsAndTheConnectionMovesToTheGeneralPath(fastPath: Bool) async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        for table in ["w", "e"] {
            try await db.clickHouse.sql("CREATE TABLE \(db.name).\(table) (id UInt64) ENGINE = MergeTree ORDER BY id")
        }
        let proxy = try await ProxyUnderTest.start(
            """
            defaults: { max_delay: 200ms }
            tables:
              \(db.name).w: { ack: flushed }
            """, fastPath: fastPath)
        // The identity's credentials are checked on its first request, which holds the parsing of what follows
        // until then: a first request of its own, so that the pipelined ones below are served at once.
        _ = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).e VALUES (0)")
        let select = "SELECT count() FROM \(db.name).w"
        let requests =
            Self.post("INSERT INTO \(db.name).w VALUES (1)")
            + Self.post("INSERT INTO \(db.name).e VALUES (2)")
            + "GET /?query=\(QueryString.encode(select)) HTTP/1.1\r\nHost: x\r\n\r\n"
            + Self.post("INSERT INTO \(db.name).e VALUES (3)")
            + Self.post("INSERT INTO \(db.name).e VALUES (4)", headers: "Connection: close\r\n")
        let client = try RawClient(proxy)
        client.send(requests)
        let text = await offPool { client.readUntilClosed(timeout: .seconds(15)) }
        #expect(text.closed, "the last request said Connection: close")
        #expect(
            Self.answers(text.text) == [
                "HTTP/1.1 200 OK | flushed | ", "HTTP/1.1 200 OK | enqueued | ", "HTTP/1.1 200 OK | - | 1",
                "HTTP/1.1 200 OK | enqueued | ", "HTTP/1.1 200 OK | enqueued | ",
            ], "\(text.text)")
        try await proxy.stop()
        #expect(try await db.clickHouse.sql("SELECT groupArray(id) FROM (SELECT id FROM \(db.name).w ORDER BY id)") == "[1]\n")
        #expect(
            try await db.clickHouse.sql("SELECT groupArray(id) FROM (SELECT id FROM \(db.name).e ORDER BY id)") == "[0,2,3,4]\n")
    }

    /// A RowBinary INSERT into a table the proxy has not described yet holds the parsing of what follows; the table
    /// does not exist, so the request goes to ClickHouse as it came (the general path from there on), which refuses
    /// it; the INSERT pipelined behind it is served after it, and lands.
    @Test(arguments: [true, false])
    func aRequestThatTurnsOutToPassThroughKeepsItsPlaceInThePipeline(fastPath: Bool) async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).e (id UInt64) ENGINE = MergeTree ORDER BY id")
        let proxy = try await ProxyUnderTest.start("defaults: { max_delay: 100ms }", fastPath: fastPath)
        _ = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).e VALUES (0)")
        let binary = "POST /?query=\(QueryString.encode("INSERT INTO \(db.name).missing FORMAT RowBinary")) HTTP/1.1\r\n"
            + "Host: x\r\nContent-Length: 8\r\n\r\n\u{5}\0\0\0\0\0\0\0"
        let client = try RawClient(proxy)
        client.send(binary + Self.post("INSERT INTO \(db.name).e VALUES (1)", headers: "Connection: close\r\n"))
        let text = await onThread { client.readUntilClosed(timeout: .seconds(15)) }
        let answers = Self.answers(text.text)
        #expect(answers.count == 2, "\(text.text)")
        #expect(answers.first?.contains("Code: 60") == true, "ClickHouse's own answer: \(answers)")
        #expect(answers.last == "HTTP/1.1 200 OK | enqueued | ")
        try await proxy.stop()
        #expect(
            try await db.clickHouse.sql("SELECT groupArray(id) FROM (SELECT id FROM \(db.name).e ORDER BY id)") == "[0,1]\n")
    }

    /// Durable acks on the fast path: 16 connections each pipeline 50 single-row INSERTs in one write; every
    /// answer is `durable`, in order, and after a graceful stop each id is in ClickHouse exactly once.
    @Test(arguments: [true, false])
    func pipelinedDurableAcksAreAnsweredInOrderAndEveryRowLandsOnce(fastPath: Bool) async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).d (id UInt64) ENGINE = MergeTree ORDER BY id")
        let spoolDir = NSTemporaryDirectory() + "bh-fast-durable-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: spoolDir) }
        let proxy = try await ProxyUnderTest.start(
            """
            defaults: { ack: durable, max_delay: 100ms }
            spool: { dir: \(spoolDir) }
            """, fastPath: fastPath)
        let started = ContinuousClock.now
        let connections = 16
        let perConnection = 50
        try await runConcurrently(count: connections, concurrency: connections) { connection in
            let client = try RawClient(proxy)
            var requests = ""
            for index in 0..<perConnection {
                let id = connection * 1000 + index
                let close = index == perConnection - 1 ? "Connection: close\r\n" : ""
                requests += Self.post("INSERT INTO \(db.name).d VALUES (\(id))", headers: close)
            }
            client.send(requests)
            // A thread of its own: GCD's pool would add threads for 16 blocked reads only one a second.
            let text = await onThread { client.readUntilClosed(timeout: .seconds(20)) }
            let answers = Self.answers(text.text)
            guard answers == Array(repeating: "HTTP/1.1 200 OK | durable | ", count: perConnection) else {
                throw TestFailure("connection \(connection): \(answers.count) answers: \(answers.prefix(3))")
            }
        }
        print("durable, fast path \(fastPath): answered in \(ContinuousClock.now - started)")
        try await proxy.stop()
        let landed = try await db.clickHouse.sql("SELECT count(), uniqExact(id) FROM \(db.name).d")
        #expect(landed == "\(connections * perConnection)\t\(connections * perConnection)\n")
    }
}

/// Runs blocking work on a thread of its own.
func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread { continuation.resume(returning: body()) }.start()
    }
}
