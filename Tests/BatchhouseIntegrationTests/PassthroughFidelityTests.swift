import BatchhouseCore
import Foundation
import Testing

/// What passes through is untouched: every URL parameter and request header reaches ClickHouse as the client sent
/// it, and ClickHouse's status, headers (names in its own case, in its order) and body come back as it sent them,
/// with the proxy's own `Connection`/`Keep-Alive` (the client's connection is to the proxy).
@Suite(.serialized)
struct PassthroughFidelityTests {
    static let target =
        "/?query=SELECT%201&insert_deduplicate=0&format_schema=schema.proto%3AMessage&log_comment=caf%C3%A9+%26+tea"
        + "&Odd_Case=A%2bB&max_result_rows=10"

    @Test func everyParameterAndHeaderReachesUpstreamByteExact() async throws {
        let upstream = try await RecordingUpstream()
        let proxy = try await ProxyUnderTest.start(
            "tables:\n  default.legacy: { passthrough: true }\n", upstream: upstream.url)
        let client = try WireClient(url: proxy.endpoint.baseURL)
        let custom = [
            ("X-Custom-Header", "Value  With Spaces"), ("x-lower-case", "v"), ("X-ClickHouse-Format", "TSV"),
            ("X-ClickHouse-Database", "default"), ("Accept-Encoding", "gzip"),
        ]
        let headerText = custom.map { "\($0.0): \($0.1)\r\n" }.joined()
        // A GET, a POST that is not an INSERT, an INSERT ... SELECT (held for classification, then streamed) and an
        // INSERT into a table whose rule passes it through.
        let bodies = ["", "SELECT 2", "INSERT INTO t SELECT 1", "INSERT INTO legacy VALUES (1)"]
        for body in bodies {
            let method = body.isEmpty ? "GET" : "POST"
            let length = body.isEmpty ? "" : "Content-Length: \(body.utf8.count)\r\n"
            let response = try await client.exchange(
                "\(method) \(Self.target) HTTP/1.1\r\nHost: proxy\r\n\(headerText)\(length)\r\n\(body)")
            #expect(response.status == 200, "\(body): \(response.statusLine)")
        }
        let seen = upstream.clientRequests
        #expect(seen.count == bodies.count)
        for (request, body) in zip(seen, bodies) {
            #expect(request.uri == Self.target, "the request target byte for byte")
            #expect(request.body == body)
            for (name, value) in custom {
                #expect(
                    request.headers.contains { $0.0 == name && $0.1 == value }, "\(name) arrived as sent: \(request.headers)")
            }
        }
        try await proxy.stop()
        await upstream.stop()
    }

    /// The requests compared, direct and proxied.
    static let compared: [(name: String, request: String, head: Bool)] = [
        ("select", "GET /?query=SELECT%20number%20FROM%20system.numbers%20LIMIT%205 HTTP/1.1\r\nHost: ch\r\n\r\n", false),
        ("head", "HEAD /?query=SELECT%201 HTTP/1.1\r\nHost: ch\r\n\r\n", true),
        (
            "compress=1",
            "GET /?compress=1&query=SELECT%20number%20FROM%20system.numbers%20LIMIT%201000 HTTP/1.1\r\nHost: ch\r\n\r\n",
            false
        ),
        (
            "gzip",
            "GET /?enable_http_compression=1&query=SELECT%20number%20FROM%20system.numbers%20LIMIT%201000 HTTP/1.1\r\n"
                + "Host: ch\r\nAccept-Encoding: gzip\r\n\r\n", false
        ),
        ("error", "GET /?query=SELECT%20*%20FROM%20no_such_table_here HTTP/1.1\r\nHost: ch\r\n\r\n", false),
        ("post", "POST / HTTP/1.1\r\nHost: ch\r\nContent-Length: 8\r\n\r\nSELECT 3", false),
    ]

    @Test(.enabled(if: TestEnvironment.hasClickHouse, "needs CLICKHOUSE_URL"))
    func proxiedResponsesAreClickHousesOwnWithTheProxysKeepAlive() async throws {
        let proxy = try await ProxyUnderTest.start("limits: { idle_timeout: 45s }\n")
        let direct = try WireClient(url: TestEnvironment.clickHouseURL!)
        let proxied = try WireClient(url: proxy.endpoint.baseURL)
        for (name, request, head) in Self.compared {
            // Twice on each connection: the second answer proves the connection was kept.
            for _ in 0..<2 {
                let expected = try await direct.exchange(request, head: head)
                let got = try await proxied.exchange(request, head: head)
                print("[fidelity] \(name) direct:  \(expected.statusLine) | \(expected.headers.map { "\($0.0): \($0.1)" })")
                print("[fidelity] \(name) proxied: \(got.statusLine) | \(got.headers.map { "\($0.0): \($0.1)" })")
                #expect(got.statusLine == expected.statusLine, "\(name)")
                #expect(got.headers.map(\.0) == expected.headers.map(\.0), "\(name): names, case and order")
                for ((name, value), (_, want)) in zip(got.headers, expected.headers) {
                    switch name.lowercased() {
                    case "date": continue
                    case "keep-alive": #expect(value == "timeout=45", "the proxy's own idle timeout")
                    default: #expect(value == want, "\(name)")
                    }
                }
                #expect(got.chunked == expected.chunked, "\(name): framing")
                #expect(got.body == expected.body, "\(name): body byte for byte")
            }
        }
        try await proxy.stop()
    }

    @Test func theProxysOwnAnswersCarryKeepAliveAndCloseWhenTheyClose() async throws {
        let upstream = try await RecordingUpstream()
        let proxy = try await ProxyUnderTest.start(
            "limits: { idle_timeout: 7s }\ndefaults: { max_delay: 1h, read_your_writes: false }\n", upstream: upstream.url)
        let client = try WireClient(url: proxy.endpoint.baseURL)
        for request in [
            "GET /ping HTTP/1.1\r\nHost: p\r\n\r\n", "GET /health HTTP/1.1\r\nHost: p\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nHost: p\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: p\r\nContent-Length: 25\r\n\r\nINSERT INTO t VALUES (1)\n",
            "POST / HTTP/1.1\r\nHost: p\r\nContent-Length: 26\r\n\r\nINSERT INTO t VALUES (1, '",
            "GET /?query=SELECT%201 HTTP/1.1\r\nHost: p\r\n\r\n",
        ] {
            let response = try await client.exchange(request)
            #expect(response.header("Connection") == "Keep-Alive", "\(request): \(response.headers)")
            #expect(response.header("Keep-Alive") == "timeout=7", "\(request): \(response.headers)")
        }
        let closing = try await client.exchange("GET /ping HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        #expect(closing.header("Connection") == "close")
        #expect(closing.header("Keep-Alive") == nil)
        try await proxy.stop()
        await upstream.stop()
    }
}
