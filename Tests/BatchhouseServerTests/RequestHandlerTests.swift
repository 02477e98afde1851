import BatchhouseConfig
import BatchhouseCore
import BatchhouseEngine
import BatchhouseUpstream
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import BatchhouseServer

/// The request handler on an EmbeddedChannel: raw HTTP bytes in, raw bytes out, no sockets. Only paths that
/// never reach upstream are exercised here; the integration tests cover the rest against ClickHouse.
@Suite struct RequestHandlerTests {
    /// An upstream that is never reached: these tests stay on paths that do not flush.
    struct UnreachableUpstream: UpstreamTransport {
        func execute(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
            throw UpstreamError(kind: .connect, message: "no upstream in handler tests")
        }
    }

    /// One handler on an EmbeddedChannel in front of an engine with no upstream (no application, no threads).
    final class Fixture {
        let engine: BatchhouseEngine
        let client = CurlClient(maxConnections: 1)
        let channel = EmbeddedChannel()

        /// `fastPath`: false sends every request through the general path (`--no-fast-path`).
        init(_ yaml: String = "", fastPath: Bool = true) throws {
            engine = try Self.engine(yaml)
            try HTTPServer.configure(
                channel, dependencies: Self.dependencies(engine: engine, client: client, fastPath: fastPath))
        }

        /// An engine whose upstream cannot be reached, with `yaml` after its `upstream` section.
        static func engine(_ yaml: String) throws -> BatchhouseEngine {
            let configuration = try ConfigurationLoader.parse(
                yaml: "upstream: { servers: [\"http://127.0.0.1:9\"] }\n" + yaml, environment: [:])
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            return BatchhouseEngine(
                configuration: configuration, transport: UnreachableUpstream(), spool: nil, logger: logger,
                verifiesCredentials: false)
        }

        static func dependencies(engine: BatchhouseEngine, client: CurlClient, fastPath: Bool)
            -> RequestHandler.Dependencies
        {
            RequestHandler.Dependencies(
                intake: engine.intake, configuration: engine.configuration, gateway: engine.gateway,
                client: client, metrics: engine.metrics,
                endpoints: LocalEndpoints(engine: engine, serving: ServingState()), buffering: engine.buffering,
                fastPath: fastPath)
        }

        deinit {
            _ = try? channel.finish()
            client.shutdown()
        }

        var batcher: Buffering { engine.buffering }

        /// Writes `text` as inbound bytes and returns everything the handler wrote back.
        func exchange(_ text: String) throws -> String {
            try channel.writeInbound(ByteBuffer(string: text))
            return try output()
        }

        func output() throws -> String {
            var out = ""
            while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
                out += String(buffer: buffer)
            }
            return out
        }
    }

    @Test func pingIsAnsweredLocally() throws {
        let fixture = try Fixture()
        let response = try fixture.exchange("GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(response.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(response.hasSuffix("\r\n\r\nOk.\n"))
    }

    @Test func everyAnswerOfTheProxyCarriesKeepAliveWithItsIdleTimeout() throws {
        let fixture = try Fixture("limits: { idle_timeout: 42s }\n")
        for request in [
            "GET /ping HTTP/1.1\r\nHost: x\r\n\r\n", "GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 25\r\n\r\nINSERT INTO t VALUES (1)\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 26\r\n\r\nINSERT INTO t VALUES (1, '",
        ] {
            let response = try fixture.exchange(request)
            #expect(response.contains("\r\nConnection: Keep-Alive\r\n"), "\(response)")
            #expect(response.contains("\r\nKeep-Alive: timeout=42\r\n"), "\(response)")
            #expect(response.contains("\r\nContent-Length: "), "every answer is framed by its length")
        }
    }

    @Test func anAnswerAfterWhichTheConnectionClosesSaysConnectionClose() throws {
        let fixture = try Fixture()
        let response = try fixture.exchange("GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        #expect(response.contains("\r\nConnection: close\r\n"))
        #expect(!response.lowercased().contains("keep-alive"))
        let refused = try Fixture().exchange("POST / HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(refused.contains("\r\nConnection: close\r\n"))
        #expect(!refused.lowercased().contains("keep-alive"))
    }

    @Test func postWithoutLengthGets411() throws {
        let fixture = try Fixture()
        let response = try fixture.exchange("POST / HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(response.hasPrefix("HTTP/1.1 411 Length Required\r\n"))
        #expect(response.contains("X-ClickHouse-Exception-Code: "))
        #expect(response.contains("Code: "))
        #expect(response.lowercased().contains("connection: close"))
    }

    @Test func expectContinueIsAnsweredBeforeTheBody() throws {
        let fixture = try Fixture()
        let head = "POST /?query=INSERT%20INTO%20t%20FORMAT%20TSV HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        let interim = try fixture.exchange(head)
        #expect(interim == "HTTP/1.1 100 Continue\r\n\r\n")
        let final = try fixture.exchange("1\t2\n")
        #expect(final.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(final.contains("X-Batchhouse-Ack: enqueued"))
        #expect(fixture.batcher.bufferedRows == 1)
    }

    @Test func pipelinedInsertsAreAnsweredInOrderAndBuffered() throws {
        let fixture = try Fixture()
        var requests = ""
        for id in 0..<5 {
            let body = "INSERT INTO db.t VALUES (\(id), 'x')"
            requests += "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
        }
        let response = try fixture.exchange(requests)
        #expect(response.components(separatedBy: "HTTP/1.1 200 OK").count == 6)
        #expect(response.components(separatedBy: "\"written_rows\":\"1\"").count == 6)
        #expect(fixture.batcher.bufferedRows == 5)
        #expect(fixture.batcher.bufferedByTable()["db.t"]?.rows == 5)
    }

    @Test func malformedValuesGetAClickHouseShapedError() throws {
        let fixture = try Fixture()
        let body = "INSERT INTO t VALUES (1, 'unterminated)"
        let response = try fixture.exchange(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
        #expect(response.hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        #expect(response.contains("X-ClickHouse-Exception-Code: 62"))
        #expect(response.contains("\r\n\r\nCode: 62. DB::Exception: "))
        #expect(response.hasSuffix("(SYNTAX_ERROR)\n"))
        #expect(fixture.batcher.bufferedRows == 0)
        // The connection stays usable.
        let next = try fixture.exchange("GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(next.hasSuffix("Ok.\n"))
    }

    @Test func oversizedInsertGets413() throws {
        let fixture = try Fixture("limits: { max_request_body: 1KiB }")
        let rows = String(repeating: "(1),", count: 400)
        let body = "INSERT INTO t VALUES " + rows
        let response = try fixture.exchange(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
        #expect(response.hasPrefix("HTTP/1.1 413 Payload Too Large\r\n"))
        #expect(response.contains("Code: 307. DB::Exception:"))
        #expect(fixture.batcher.bufferedRows == 0)
    }

    @Test func fullBuffersAnswer503WithRetryAfter() throws {
        let fixture = try Fixture("limits: { max_buffer_memory: 64 }")
        let body = "INSERT INTO t VALUES ('" + String(repeating: "x", count: 100) + "')"
        let response = try fixture.exchange(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
        #expect(response.hasPrefix("HTTP/1.1 503 Service Unavailable\r\n"))
        #expect(response.contains("Retry-After: 1"))
        #expect(response.contains("(MEMORY_LIMIT_EXCEEDED)"))
    }

    @Test func lowPriorityTablesAreShedFirst() throws {
        // 1000 bytes of memory: priority 5 is refused from 800, priority 1 only at 1000.
        let fixture = try Fixture(
            """
            limits: { max_buffer_memory: 1000 }
            defaults: { strategy: hybrid, max_delay: 60s }
            tables:
              low: { priority: 5 }
              high: { priority: 1 }
            """)
        func insert(_ table: String, _ size: Int) throws -> String {
            let body = "INSERT INTO \(table) VALUES ('" + String(repeating: "x", count: size) + "')"
            return try fixture.exchange(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
        }
        #expect(try insert("low", 700).hasPrefix("HTTP/1.1 200 OK"))  // 702 bytes in use
        #expect(try insert("low", 100).hasPrefix("HTTP/1.1 503"), "804 > 80% of 1000")
        #expect(try insert("high", 100).hasPrefix("HTTP/1.1 200 OK"), "priority 1 goes on")
        #expect(try insert("high", 150).hasPrefix("HTTP/1.1 200 OK"))  // 956
        #expect(try insert("high", 100).hasPrefix("HTTP/1.1 503"), "the hard limit")
        #expect(fixture.batcher.bufferedByTable()["default.low"]?.rows == 1)
        #expect(fixture.batcher.bufferedByTable()["default.high"]?.rows == 2)
    }

    @Test func chunkedGzipInsertIsDecodedAndBuffered() throws {
        let fixture = try Fixture()
        let plain = Array("INSERT INTO t FORMAT JSONEachRow\n{\"a\":1}\n{\"a\":2}\n".utf8)
        let gzipped = plain.withUnsafeBytes { Zlib.compress($0, as: .gzip) }
        try fixture.channel.writeInbound(
            ByteBuffer(string: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n"))
        for piece in stride(from: 0, to: gzipped.count, by: 7) {
            let chunk = gzipped[piece..<min(piece + 7, gzipped.count)]
            var buffer = ByteBuffer(string: String(chunk.count, radix: 16) + "\r\n")
            buffer.writeBytes(chunk)
            buffer.writeString("\r\n")
            try fixture.channel.writeInbound(buffer)
        }
        try fixture.channel.writeInbound(ByteBuffer(string: "0\r\n\r\n"))
        let response = try fixture.output()
        #expect(response.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(response.contains("\"written_rows\":\"2\""))
        #expect(fixture.batcher.bufferedRows == 2)
    }

    @Test func metricsAreServedAsPrometheusTextAndJSON() throws {
        let fixture = try Fixture()
        let body = "INSERT INTO db.m VALUES (1),(2),(3)"
        _ = try fixture.exchange("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
        let text = try fixture.exchange("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(text.contains("batchhouse_received_rows_total{table=\"db.m\"} 3"))
        #expect(text.contains("batchhouse_buffered_rows{table=\"db.m\"} 3"))
        #expect(text.contains("batchhouse_requests_total{kind=\"batched_insert\"} 1"))
        let json = try fixture.exchange("GET /metrics?format=json HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(json.contains("\"queued_items\":3"))
        #expect(json.contains("\"batch_success_rate\""))
        let health = try fixture.exchange("GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(health.contains("\"buffered_rows\":3"))
        #expect(health.contains("\"status\":\"initializing\""), "no health check has run on an EmbeddedChannel")
        #expect(health.contains("\"breaker\":\"closed\""))
    }
}
