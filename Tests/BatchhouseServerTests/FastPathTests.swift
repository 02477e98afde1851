import BatchhouseConfig
import BatchhouseCore
import BatchhouseEngine
import BatchhouseUpstream
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Foundation
import Testing

@testable import BatchhouseServer

/// The fast path against the general path: the same bytes in, on a connection with the fast path and one without it
/// (`--no-fast-path`), must give the same bytes out, the same rows buffered and the same connection state. Only
/// requests that never reach upstream are here (EmbeddedChannel); FastPathIntegrationTests covers the rest.
@Suite struct FastPathTests {
    typealias Fixture = RequestHandlerTests.Fixture

    /// One case: the writes of one connection, in order (each write is one read for the handler).
    struct Case: CustomStringConvertible {
        var name: String
        var writes: [String]
        /// Whether the fast path should have served every request of the case itself.
        var staysFast: Bool
        var yaml = ""
        /// What NIO's codec writes after the general path's answers where the fast path writes nothing.
        var generalAlsoWrites = ""
        var description: String { name }
    }

    static func post(_ body: String, target: String = "/", headers: String = "Host: x\r\n", version: String = "HTTP/1.1")
        -> String
    {
        "POST \(target) \(version)\r\n\(headers)Content-Length: \(body.utf8.count)\r\n\r\n\(body)"
    }

    static let tsvTarget = "/?query=INSERT%20INTO%20db.t%20FORMAT%20TabSeparated"

    static let cases: [Case] = [
        Case(name: "one VALUES insert", writes: [post("INSERT INTO db.t VALUES (1, 'x')")], staysFast: true),
        Case(name: "the statement in the URL", writes: [post("1\tx\n2\ty\n", target: tsvTarget)], staysFast: true),
        Case(
            name: "five pipelined inserts in one read",
            writes: [(0..<5).map { post("INSERT INTO db.t VALUES (\($0), 'x')") }.joined()], staysFast: true),
        Case(
            name: "rows of two shapes",
            writes: [post("INSERT INTO db.t VALUES (1, 'x')"), post("INSERT INTO db.t VALUES (1, 'xyz'), (2, 'w')")],
            staysFast: true),
        Case(
            name: "Connection: close",
            writes: [post("INSERT INTO db.t VALUES (1)", headers: "Host: x\r\nConnection: close\r\n")], staysFast: true),
        Case(
            name: "requests after Connection: close are not served",
            writes: [
                post("INSERT INTO db.t VALUES (1)", headers: "Host: x\r\nConnection: close\r\n")
                    + post("INSERT INTO db.t VALUES (2)")
            ], staysFast: true,
            // NIO's decoder refuses bytes after a `Connection: close` request, and its error handler answers them
            // 400 although the client said it reads nothing more; the fast path drops them.
            generalAlsoWrites: "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"),
        Case(
            name: "the database from X-ClickHouse-Database",
            writes: [post("INSERT INTO t VALUES (1)", headers: "Host: x\r\nX-ClickHouse-Database: other\r\n")],
            staysFast: true),
        Case(
            name: "a malformed row gets ClickHouse's error and the connection goes on",
            writes: [post("INSERT INTO db.t VALUES (1, 'unterminated)"), post("INSERT INTO db.t VALUES (2)")],
            staysFast: true),
        Case(
            name: "mixed credential schemes are refused",
            writes: [
                post(
                    "INSERT INTO db.t VALUES (1)",
                    headers: "Host: x\r\nX-ClickHouse-User: a\r\nAuthorization: Basic YjpjCg==\r\n")
            ], staysFast: true),
        Case(
            name: "full buffers answer 503",
            writes: [post("INSERT INTO db.t VALUES ('" + String(repeating: "x", count: 100) + "')")], staysFast: true,
            yaml: "limits: { max_buffer_memory: 64 }\n"),
        Case(
            name: "an empty INSERT", writes: [post("INSERT INTO db.t VALUES")], staysFast: true),
        Case(name: "HTTP/1.0", writes: [post("INSERT INTO db.t VALUES (1)", version: "HTTP/1.0")], staysFast: false),
        Case(
            name: "HTTP/1.0 keep-alive",
            writes: [post("INSERT INTO db.t VALUES (1)", headers: "Host: x\r\nConnection: keep-alive\r\n", version: "HTTP/1.0")],
            staysFast: false),
        Case(
            name: "a local endpoint after inserts",
            writes: [post("INSERT INTO db.t VALUES (1)") + "GET /ping HTTP/1.1\r\nHost: x\r\n\r\n" + post("INSERT INTO db.t VALUES (2)")],
            staysFast: false),
        Case(name: "POST /ping", writes: [post("", target: "/ping")], staysFast: false),
        Case(name: "no length", writes: ["POST / HTTP/1.1\r\nHost: x\r\n\r\nINSERT INTO db.t VALUES (1)"], staysFast: false),
        Case(
            name: "a length that is not a number",
            writes: ["POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\nINSERT INTO db.t VALUES (1)"],
            staysFast: false),
        Case(
            name: "two different lengths",
            writes: ["POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 27\r\nContent-Length: 3\r\n\r\nINSERT INTO db.t VALUES (1)"],
            staysFast: false),
        Case(
            name: "a negative length",
            writes: ["POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\nINSERT INTO db.t VALUES (1)"],
            staysFast: false),
        Case(
            name: "length and chunked",
            writes: [
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 27\r\nTransfer-Encoding: chunked\r\n\r\n1b\r\nINSERT INTO db.t VALUES (1)\r\n0\r\n\r\n"
            ], staysFast: false),
        Case(
            name: "a folded header is refused",
            writes: [post("INSERT INTO db.t VALUES (1)", headers: "Host: x\r\nX-A: a\r\n b\r\n")], staysFast: false),
        Case(
            name: "a header with a bare LF",
            writes: ["POST / HTTP/1.1\nHost: x\nContent-Length: 27\n\nINSERT INTO db.t VALUES (1)"], staysFast: false),
        Case(
            name: "a body larger than max_request_body",
            writes: [post("INSERT INTO db.t VALUES " + String(repeating: "(1),", count: 400))], staysFast: false,
            yaml: "limits: { max_request_body: 1KiB }\n"),
        Case(
            name: "a request split across two reads",
            writes: ["POST / HTTP/1.1\r\nHost: x\r\nContent-Len", "gth: 27\r\n\r\nINSERT INTO db.t VALUES (1)"],
            staysFast: false),
        Case(
            name: "a body split across two reads",
            writes: ["POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 27\r\n\r\nINSERT INTO", " db.t VALUES (1)"],
            staysFast: false),
        Case(
            name: "fast, then split, then fast again on the general path",
            writes: [
                post("INSERT INTO db.t VALUES (1)") + "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 27\r\n\r\nINSERT",
                " INTO db.t VALUES (2)" + post("INSERT INTO db.t VALUES (3)"),
            ], staysFast: false),
        Case(
            name: "Expect: 100-continue",
            writes: [
                "POST \(tsvTarget) HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n", "1\tx\n",
            ], staysFast: false),
        Case(
            name: "decompress=1: ClickHouse's compressed blocks are the general path's",
            writes: [post("1\tx\n", target: tsvTarget + "&decompress=1")], staysFast: false),
        Case(name: "garbage", writes: ["\u{1}\u{2}GARBAGE\r\n\r\n"], staysFast: false),
    ]

    /// What a connection gave back: every byte written, the rows buffered, whether it is still open.
    struct Outcome: Equatable {
        var output: String
        var rows: Int
        var tables: [String: Int]
        var open: Bool
    }

    static func run(_ testCase: Case, fastPath: Bool) throws -> (Outcome, general: Bool) {
        let fixture = try Fixture(testCase.yaml, fastPath: fastPath)
        try fixture.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        let handler = fastPath ? try fixture.channel.pipeline.syncOperations.handler(type: FastPathHandler.self) : nil
        var output = ""
        for write in testCase.writes {
            _ = try? fixture.channel.writeInbound(ByteBuffer(string: write))
            output += try fixture.output()
        }
        fixture.channel.embeddedEventLoop.run()
        output += try fixture.output()
        let general = handler?.isGeneral ?? true
        let outcome = Outcome(
            output: output, rows: fixture.batcher.bufferedRows,
            tables: fixture.batcher.bufferedByTable().mapValues(\.rows), open: fixture.channel.isActive)
        return (outcome, general)
    }

    @Test(arguments: cases)
    func theFastPathAnswersAsTheGeneralPathDoes(_ testCase: Case) throws {
        let (fast, movedToGeneral) = try Self.run(testCase, fastPath: true)
        var (general, _) = try Self.run(testCase, fastPath: false)
        if !testCase.generalAlsoWrites.isEmpty, general.output.hasSuffix(testCase.generalAlsoWrites) {
            general.output.removeLast(testCase.generalAlsoWrites.count)
        }
        #expect(fast == general)
        #expect(!fast.output.isEmpty, "every case is answered")
        #expect(movedToGeneral == !testCase.staysFast, "which path served it")
    }

    @Test func theAnswersOfOneReadGoOutInOneWrite() throws {
        let fixture = try Fixture()
        let requests = (0..<8).map { Self.post("INSERT INTO db.t VALUES (\($0))") }.joined()
        try fixture.channel.writeInbound(ByteBuffer(string: requests))
        var writes = 0
        var text = ""
        while let buffer = try fixture.channel.readOutbound(as: ByteBuffer.self) {
            writes += 1
            text += String(buffer: buffer)
        }
        #expect(writes == 1)
        #expect(text.components(separatedBy: "HTTP/1.1 200 OK\r\n").count == 9)
        #expect(fixture.batcher.bufferedRows == 8)
    }

    @Test func theIdleTimeoutCountsFromTheLastFastAnswer() throws {
        let fixture = try Fixture("limits: { idle_timeout: 2s }\n")
        try fixture.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        let loop = fixture.channel.embeddedEventLoop
        for second in 0..<4 {
            loop.advanceTime(by: .milliseconds(1500))
            #expect(fixture.channel.isActive, "busy for \(second) s: not idle")
            try fixture.channel.writeInbound(ByteBuffer(string: Self.post("INSERT INTO db.t VALUES (\(second))")))
            #expect(try fixture.output().hasPrefix("HTTP/1.1 200 OK"))
        }
        loop.advanceTime(by: .milliseconds(2100))
        #expect(!fixture.channel.isActive, "idle for 2.1 s after the last answer: closed")
    }

    @Test func aGracefulStopClosesAnIdleFastConnection() throws {
        let fixture = try Fixture()
        try fixture.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        #expect(fixture.channel.isActive)
        try fixture.channel.writeInbound(ByteBuffer(string: Self.post("INSERT INTO db.t VALUES (1)")))
        #expect(try fixture.output().hasPrefix("HTTP/1.1 200 OK"))
        fixture.channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        fixture.channel.embeddedEventLoop.run()
        #expect(!fixture.channel.isActive)
        #expect(fixture.batcher.bufferedRows == 1)
    }

    /// Answers wait (`flushed`, with no delivery running here): at most `maxWaiting` requests are taken, the rest
    /// wait in the connection; a graceful stop keeps the connection open until the promised answers are written.
    /// The batches here are settled by the delivery workers, on other threads than the test's, while the test
    /// turns the channel's loop: an `NIOAsyncTestingChannel`, whose loop takes work from any thread (an
    /// `EmbeddedEventLoop` must not be touched off the thread that made it).
    @Test func atMostMaxWaitingAnswersWaitAndAGracefulStopWritesThemBeforeClosing() async throws {
        let deadLetters = NSTemporaryDirectory() + "bh-fast-path-dead-letter-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: deadLetters) }
        let engine = try Fixture.engine(
            "dead_letter_dir: \(deadLetters)\ndefaults: { ack: flushed, max_delay: 1h, retries: 0 }\n")
        let client = CurlClient(maxConnections: 1)
        defer { client.shutdown() }
        let channel = NIOAsyncTestingChannel()
        let dependencies = Fixture.dependencies(engine: engine, client: client, fastPath: true)
        try await channel.testingEventLoop.executeInContext {
            try HTTPServer.configure(channel, dependencies: dependencies)
        }
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
        func written() async throws -> String {
            var out = ""
            while let buffer = try await channel.readOutbound(as: ByteBuffer.self) { out += String(buffer: buffer) }
            return out
        }
        let count = FastPathHandler.maxWaiting + 40
        let requests = (0..<count).map { Self.post("INSERT INTO db.t VALUES (\($0))") }.joined()
        try await channel.writeInbound(ByteBuffer(string: requests))
        #expect(try await written() == "", "every answer waits for its batch")
        #expect(engine.buffering.bufferedRows == FastPathHandler.maxWaiting, "the rest is not taken yet")
        channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        await channel.testingEventLoop.run()
        #expect(channel.isActive, "answers are promised: the connection stays")
        // The end of the graceful stop: the batches are settled (the upstream is unreachable: refused).
        let delivery = engine.delivery
        let workers = Task { await delivery.run() }
        defer { workers.cancel() }
        engine.drain()
        var output = ""
        let deadline = ContinuousClock.now + .seconds(30)
        while channel.isActive && ContinuousClock.now < deadline {
            await channel.testingEventLoop.run()
            output += try await written()
            try await Task.sleep(for: .milliseconds(5))
        }
        output += try await written()
        #expect(output.components(separatedBy: "HTTP/1.1 ").count - 1 == FastPathHandler.maxWaiting, "\(output.prefix(300))")
        #expect(!channel.isActive, "closed once they are written")
        let kept = (try? FileManager.default.contentsOfDirectory(atPath: deadLetters)) ?? []
        #expect(kept.filter { $0.hasSuffix(".json") }.count == 1, "the refused batch is a dead letter: \(kept)")
        _ = try? await channel.finish()
    }
}
