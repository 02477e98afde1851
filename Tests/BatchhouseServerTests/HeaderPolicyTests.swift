import NIOHTTP1
import Testing

@testable import BatchhouseServer

/// ClickHouse's response headers as they go to the client: its names, case and order, its framing; `Connection`
/// and `Keep-Alive` are the proxy's (the client's connection is to the proxy).
@Suite struct HeaderPolicyTests {
    static let clickHouse: [(String, String)] = [
        ("Date", "Tue, 01 Dec 2026 10:00:00 GMT"), ("Connection", "Keep-Alive"),
        ("Content-Type", "text/tab-separated-values; charset=UTF-8"), ("X-ClickHouse-Server-Display-Name", "ch"),
        ("Transfer-Encoding", "chunked"), ("Keep-Alive", "timeout=10, max=9999"),
    ]

    static func fields(_ headers: HTTPHeaders) -> [String] { headers.map { "\($0.name): \($0.value)" } }

    @Test func namesCaseAndOrderAreClickHousesAndKeepAliveIsTheProxys() {
        let (headers, closes) = HeaderPolicy.relayedStreamHeaders(
            Self.clickHouse, persistence: .keepAlive(timeoutSeconds: 60), clientVersion: .http1_1, status: 200,
            isHead: false)
        #expect(
            Self.fields(headers) == [
                "Date: Tue, 01 Dec 2026 10:00:00 GMT", "Connection: Keep-Alive",
                "Content-Type: text/tab-separated-values; charset=UTF-8", "X-ClickHouse-Server-Display-Name: ch",
                "Transfer-Encoding: chunked", "Keep-Alive: timeout=60",
            ])
        #expect(!closes)
    }

    @Test func aClosingClientGetsConnectionCloseAndNoKeepAlive() {
        let (headers, closes) = HeaderPolicy.relayedStreamHeaders(
            Self.clickHouse, persistence: .close, clientVersion: .http1_1, status: 200, isHead: false)
        #expect(headers.first(name: "connection") == "close")
        #expect(!headers.contains(name: "keep-alive"))
        #expect(closes)
    }

    /// 18.16 answers an unknown path with `Connection: Close` and closes: the client hears the same, and the proxy
    /// closes its connection after the answer too.
    @Test func clickHousesConnectionCloseIsKeptAndCloses() {
        let (headers, closes) = HeaderPolicy.relayedStreamHeaders(
            [("Connection", "Close"), ("Content-Type", "text/html; charset=UTF-8"), ("Content-Length", "5")],
            persistence: .keepAlive(timeoutSeconds: 60), clientVersion: .http1_1, status: 404, isHead: false)
        #expect(Self.fields(headers) == ["Connection: Close", "Content-Type: text/html; charset=UTF-8", "Content-Length: 5"])
        #expect(closes)
    }

    @Test func aLengthIsKeptAndAnUnframedResponseIsChunkedOrClosed() {
        let sized = HeaderPolicy.relayedStreamHeaders(
            [("Content-Length", "3"), ("Connection", "Keep-Alive")], persistence: .keepAlive(timeoutSeconds: 5),
            clientVersion: .http1_1, status: 200, isHead: false)
        #expect(Self.fields(sized.headers) == ["Content-Length: 3", "Connection: Keep-Alive", "Keep-Alive: timeout=5"])
        let unframed = HeaderPolicy.relayedStreamHeaders(
            [("Content-Type", "text/plain")], persistence: .keepAlive(timeoutSeconds: 5), clientVersion: .http1_1,
            status: 200, isHead: false)
        #expect(unframed.headers.first(name: "Transfer-Encoding") == "chunked")
        // HTTP/1.0 cannot take chunks: the response ends by closing.
        let old = HeaderPolicy.relayedStreamHeaders(
            Self.clickHouse, persistence: .keepAlive(timeoutSeconds: 5), clientVersion: .http1_0, status: 200,
            isHead: false)
        #expect(!old.headers.contains(name: "transfer-encoding"))
        #expect(old.headers.first(name: "connection") == "close")
        #expect(old.closesToFrame)
    }

    @Test func aHeadAnswerKeepsClickHousesFramingHeaders() {
        let (headers, closes) = HeaderPolicy.relayedStreamHeaders(
            Self.clickHouse, persistence: .keepAlive(timeoutSeconds: 60), clientVersion: .http1_1, status: 200,
            isHead: true)
        #expect(headers.first(name: "Transfer-Encoding") == "chunked")
        #expect(!closes)
    }

    @Test func theProxysOwnConnectionFields() {
        #expect(HeaderPolicy.connectionFields(.keepAlive(timeoutSeconds: 60)).map { "\($0.0): \($0.1)" } == [
            "Connection: Keep-Alive", "Keep-Alive: timeout=60",
        ])
        #expect(HeaderPolicy.connectionFields(.close).map { "\($0.0): \($0.1)" } == ["Connection: close"])
    }
}
