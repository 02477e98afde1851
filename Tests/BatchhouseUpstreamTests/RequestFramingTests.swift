import CCurl
import Testing

@testable import BatchhouseUpstream

@Suite("Request framing and response heads")
struct RequestFramingTests {
    @Test(
        "method and body length map onto curl options",
        arguments: [
            ("GET", nil, RequestFraming.Verb.get, nil, RequestFraming.Body.none),
            ("GET", 0, .get, nil, .none),
            ("GET", 10, .post, "GET", .length(10)),
            ("HEAD", nil, .head, nil, .none),
            ("HEAD", 10, .head, nil, .none),
            ("POST", nil, .post, nil, .chunked),
            ("POST", 0, .post, nil, .length(0)),
            ("POST", 123, .post, nil, .length(123)),
            ("PUT", nil, .post, "PUT", .chunked),
            ("DELETE", nil, .get, "DELETE", .none),
            ("OPTIONS", 0, .get, "OPTIONS", .none),
        ] as [(String, Int?, RequestFraming.Verb, String?, RequestFraming.Body)]
    )
    func framing(method: String, length: Int?, verb: RequestFraming.Verb, custom: String?, body: RequestFraming.Body) {
        let framing = RequestFraming(method: method, bodyLength: length)
        #expect(framing.verb == verb)
        #expect(framing.customMethod == custom)
        #expect(framing.body == body)
    }

    @Test("post field size: the length, -1 for chunked, nil without a body")
    func postFieldSize() {
        #expect(RequestFraming(method: "POST", bodyLength: 5).postFieldSize == 5)
        #expect(RequestFraming(method: "POST", bodyLength: nil).postFieldSize == -1)
        #expect(RequestFraming(method: "GET", bodyLength: nil).postFieldSize == nil)
    }

    @Test("header lines suppress curl's defaults and drop framing headers")
    func headerLines() {
        let chunked = RequestFraming(method: "POST", bodyLength: nil)
        let lines = chunked.headerLines([
            ("X-ClickHouse-User", "default"),
            ("Content-Length", "10"),
            ("transfer-encoding", "chunked"),
            ("Expect", "100-continue"),
            ("X-Empty", ""),
            ("X-Bad", "a\r\nInjected: yes"),
            ("Content-Encoding", "gzip"),
        ])
        #expect(lines == [
            "X-ClickHouse-User: default",
            "X-Empty;",
            "Content-Encoding: gzip",
            "Accept:",
            "Content-Type:",
            "Expect:",
            "Transfer-Encoding: chunked",
        ])

        let get = RequestFraming(method: "GET", bodyLength: nil)
        #expect(get.headerLines([("Accept", "text/plain")]) == ["Accept: text/plain", "Expect:"])

        let withType = RequestFraming(method: "POST", bodyLength: 3)
        #expect(withType.headerLines([("Content-Type", "text/tab-separated-values")]) == [
            "Content-Type: text/tab-separated-values", "Accept:", "Expect:",
        ])
    }

    static func feed(_ parser: inout ResponseHeadParser, _ lines: [String]) -> [(Int, [(String, String)])] {
        var heads: [(Int, [(String, String)])] = []
        for line in lines {
            var bytes = Array(line.utf8)
            if let head = bytes.withUnsafeMutableBytes({ parser.consume(UnsafeRawBufferPointer($0)) }) {
                heads.append((head.status, head.headers))
            }
            bytes.removeAll()
        }
        return heads
    }

    @Test("the head is the final response's, once; 100 Continue and trailers are skipped")
    func heads() throws {
        var parser = ResponseHeadParser()
        let heads = Self.feed(&parser, [
            "HTTP/1.1 100 Continue\r\n", "\r\n",
            "HTTP/1.1 200 OK\r\n",
            "Content-Type: text/tab-separated-values; charset=UTF-8\r\n",
            "X-ClickHouse-Server-Display-Name:  host \r\n",
            "X-Folded: first\r\n",
            "\t second\r\n",
            "\r\n",
            "X-Trailer: ignored\r\n", "\r\n",
        ])
        try #require(heads.count == 1)
        #expect(heads[0].0 == 200)
        #expect(heads[0].1.map(\.0) == ["Content-Type", "X-ClickHouse-Server-Display-Name", "X-Folded"])
        #expect(heads[0].1.map(\.1) == ["text/tab-separated-values; charset=UTF-8", "host", "first second"])
        #expect(parser.isComplete)
        #expect(parser.finish(fallbackStatus: 0) == nil)
    }

    @Test("without a blank line the head comes at the end, with curl's status if none was parsed")
    func fallback() throws {
        var parser = ResponseHeadParser()
        _ = Self.feed(&parser, ["HTTP/1.0 404 Not Found\r\n", "X-A: b\r\n"])
        let finished = parser.finish(fallbackStatus: 0)
        let head = try #require(finished)
        #expect(head.status == 404)
        #expect(head.headers.count == 1)

        var empty = ResponseHeadParser()
        #expect(empty.finish(fallbackStatus: 204)?.status == 204)
    }

    @Test("durations become whole milliseconds, rounded up, never 0")
    func milliseconds() {
        #expect(Duration.seconds(5).curlMilliseconds == 5000)
        #expect(Duration.milliseconds(1500).curlMilliseconds == 1500)
        #expect(Duration.microseconds(1).curlMilliseconds == 1)
        #expect(Duration.microseconds(1001).curlMilliseconds == 2)
        #expect(Duration.zero.curlMilliseconds == 1)
        #expect(Duration.seconds(-3).curlMilliseconds == 1)
        #expect(Duration.seconds(Int64.max).curlMilliseconds == Int.max)
    }

    @Test("curl codes map onto error kinds")
    func errorKinds() {
        #expect(CurlErrorKind.classify(CURLE_COULDNT_CONNECT, requestSent: false) == .connect)
        #expect(CurlErrorKind.classify(CURLE_COULDNT_RESOLVE_HOST, requestSent: false) == .connect)
        #expect(CurlErrorKind.classify(CURLE_OPERATION_TIMEDOUT, requestSent: false) == .connect)
        #expect(CurlErrorKind.classify(CURLE_OPERATION_TIMEDOUT, requestSent: true) == .timeout)
        #expect(CurlErrorKind.classify(CURLE_RECV_ERROR, requestSent: true) == .transport)
        #expect(CurlErrorKind.classify(CURLE_GOT_NOTHING, requestSent: true) == .transport)
    }
}
