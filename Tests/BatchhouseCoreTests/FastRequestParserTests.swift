import Testing

@testable import BatchhouseCore

private func parse(_ bytes: [UInt8], maxBody: Int = 1024) -> FastParseResult {
    bytes.withUnsafeBytes { FastRequestParser.parse($0, maxBody: maxBody) }
}

private func parse(_ text: String, maxBody: Int = 1024) -> FastParseResult {
    parse(Array(text.utf8), maxBody: maxBody)
}

/// The request `text` parses to, or nil (with the result recorded) when it is not a request.
private func request(_ text: String, maxBody: Int = 1024, sourceLocation: SourceLocation = #_sourceLocation)
    -> FastRequest?
{
    let result = parse(text, maxBody: maxBody)
    guard case .request(let request) = result else {
        Issue.record("expected a request, got \(result) for \(text.debugDescription)", sourceLocation: sourceLocation)
        return nil
    }
    return request
}

/// The text of `range` in `text`.
private func slice(_ text: String, _ range: Range<Int>) -> String {
    String(decoding: Array(text.utf8)[range], as: UTF8.self)
}

/// A request with the given head fields (each a full line without CRLF) and body.
private func post(_ fields: [String], body: String = "", target: String = "/") -> String {
    "POST \(target) HTTP/1.1\r\n" + fields.map { $0 + "\r\n" }.joined() + "\r\n" + body
}

private let insert =
    "POST /?query=INSERT%20INTO%20t%20FORMAT%20TSV HTTP/1.1\r\nHost: localhost:8123\r\n"
    + "Content-Length: 8\r\nX-ClickHouse-User: default\r\n\r\n1\ta\n2\tb\n"

@Suite struct FastRequestParserTests {
    // MARK: The common case

    @Test func anInsertIsARequestWithItsTargetFieldsAndBody() throws {
        let r = try #require(request(insert))
        #expect(slice(insert, r.target) == "/?query=INSERT%20INTO%20t%20FORMAT%20TSV")
        #expect(r.headers.map { slice(insert, $0.name) } == ["Host", "Content-Length", "X-ClickHouse-User"])
        #expect(r.headers.map { slice(insert, $0.value) } == ["localhost:8123", "8", "default"])
        #expect(slice(insert, r.body) == "1\ta\n2\tb\n")
        #expect(r.length == insert.utf8.count)
        #expect(!r.closes)
    }

    @Test func anEmptyBodyAndLeadingZerosInContentLength() throws {
        let empty = try #require(request(post(["Content-Length: 0"])))
        #expect(empty.body.isEmpty && empty.length == post(["Content-Length: 0"]).utf8.count)
        // llhttp reads the digits as a number, leading zeros included.
        let text = post(["Content-Length: 004"], body: "abcd")
        let r = try #require(request(text))
        #expect(slice(text, r.body) == "abcd")
    }

    @Test func everyStrictPrefixOfARequestNeedsMore() {
        let bytes = Array(insert.utf8)
        for n in 0..<bytes.count {
            #expect(parse(Array(bytes[0..<n])) == .needMore, "prefix of \(n) bytes")
        }
        #expect(parse(bytes) != .needMore)
    }

    @Test func pipelinedRequestsAreReadOneAfterTheOther() throws {
        let second = post(["Content-Length: 3", "Connection: close"], body: "xyz", target: "/b")
        let text = insert + second
        let bytes = Array(text.utf8)
        guard case .request(let first) = parse(bytes) else {
            Issue.record("the first request")
            return
        }
        #expect(first.length == insert.utf8.count)
        #expect(!first.closes)
        let rest = Array(bytes[first.length...])
        guard case .request(let next) = parse(rest) else {
            Issue.record("the second request")
            return
        }
        #expect(slice(second, next.target) == "/b")
        #expect(slice(second, next.body) == "xyz")
        #expect(next.length == rest.count)
        #expect(next.closes)
    }

    @Test func connectionCloseAndKeepAlive() {
        #expect(request(post(["Content-Length: 0", "Connection: close"]))?.closes == true)
        #expect(request(post(["Content-Length: 0", "CONNECTION:  CLOSE  "]))?.closes == true)
        #expect(request(post(["Content-Length: 0", "connection:\tcLoSe  "]))?.closes == true)
        #expect(request(post(["Content-Length: 0", "Connection: Keep-Alive"]))?.closes == false)
        #expect(request(post(["Content-Length: 0"]))?.closes == false)
    }

    @Test func valuesAreTrimmedOfSpacesAndTabs() throws {
        let text = post(["X-A: \t v a\tl \t ", "X-Empty:", "X-Blank:  \t ", "Content-Length:\t 2 ", "X-B:c"], body: "hi")
        let r = try #require(request(text))
        #expect(r.headers.map { slice(text, $0.value) } == ["v a\tl", "", "", "2", "c"])
        #expect(r.headers.map { slice(text, $0.name) } == ["X-A", "X-Empty", "X-Blank", "Content-Length", "X-B"])
    }

    @Test func valueOfComparesNamesIgnoringCase() throws {
        let text = post(["x-clickhouse-USER: alice", "X-ClickHouse-User: bob", "Content-Length: 0", "X-E:"])
        let r = try #require(request(text))
        let values = Array(text.utf8).withUnsafeBytes { bytes in
            ["x-clickhouse-user", "content-length", "x-e", "x-missing", "x-clickhouse-use"].map {
                FastRequestParser.value(of: $0, in: r, bytes: bytes)
            }
        }
        #expect(values == ["alice", "0", "", nil, nil])
    }

    @Test func contentTypeOtherThanMultipartIsKept() throws {
        let text = post(["Content-Type: text/tab-separated-values", "Content-Length: 0"])
        #expect(try #require(request(text)).headers.count == 2)
        #expect(request(post(["Content-Type: application/x-multipart/", "Content-Length: 0"])) != nil)
    }

    // MARK: What the fast path leaves to the general one

    /// Complete inputs that are not the common case, each with why.
    static let general: [(String, String)] = [
        ("another method", "GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        ("the method in lowercase", "post / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        ("a longer method", "POSTS / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        ("a CRLF before the request line", "\r\n" + post(["Content-Length: 0"])),
        ("two spaces after the method", "POST  / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        ("two spaces after the target", "POST /  HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        ("a tab after the method", "POST\t/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        ("an absolute target", "POST http://h/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        ("an asterisk target", "POST * HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        ("a tab in the target", "POST /a\tb HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        ("DEL in the target", "POST /a\u{7F} HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        ("UTF-8 in the target", "POST /é HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        ("HTTP/1.0", "POST / HTTP/1.0\r\nContent-Length: 0\r\n\r\n"),
        ("HTTP/2.0", "POST / HTTP/2.0\r\nContent-Length: 0\r\n\r\n"),
        ("the version in lowercase", "POST / http/1.1\r\nContent-Length: 0\r\n\r\n"),
        ("a space after the version", "POST / HTTP/1.1 \r\nContent-Length: 0\r\n\r\n"),
        ("a bare LF after the request line", "POST / HTTP/1.1\nContent-Length: 0\r\n\r\n"),
        ("a bare LF after a field", "POST / HTTP/1.1\r\nContent-Length: 0\n\r\n"),
        ("a bare LF as the blank line", "POST / HTTP/1.1\r\nContent-Length: 0\r\n\n"),
        ("a CR without LF in a value", post(["X: a\rb", "Content-Length: 0"])),
        ("a CR without LF at the end", "POST / HTTP/1.1\r\nContent-Length: 0\r\n\rx"),
        ("an LF in a value", post(["X: a\nb", "Content-Length: 0"])),
        ("an obs-fold with a space", post(["X: a", " b", "Content-Length: 0"])),
        ("an obs-fold with a tab", post(["X: a", "\tb", "Content-Length: 0"])),
        ("a space before the colon", post(["Content-Length : 0"])),
        ("a tab before the colon", post(["X\t: 1", "Content-Length: 0"])),
        ("an empty name", post([": 1", "Content-Length: 0"])),
        ("a name with a parenthesis", post(["X(y): 1", "Content-Length: 0"])),
        ("a name with a space", post(["X y: 1", "Content-Length: 0"])),
        ("a line without a colon", post(["Host", "Content-Length: 0"])),
        ("a NUL in a value", post(["X: a\u{0}b", "Content-Length: 0"])),
        ("a control byte in a value", post(["X: a\u{1}b", "Content-Length: 0"])),
        ("DEL in a value", post(["X: a\u{7F}", "Content-Length: 0"])),
        ("obs-text in a value", post(["X: café", "Content-Length: 0"])),
        ("no Content-Length", post(["Host: h"])),
        ("two equal Content-Lengths", post(["Content-Length: 1", "Content-Length: 1"], body: "a")),
        ("two different Content-Lengths", post(["Content-Length: 1", "content-length: 2"], body: "ab")),
        ("a non-digit Content-Length", post(["Content-Length: abc"])),
        ("a negative Content-Length", post(["Content-Length: -1"])),
        ("a signed Content-Length", post(["Content-Length: +1"], body: "a")),
        ("a hexadecimal Content-Length", post(["Content-Length: 0x1"], body: "a")),
        ("a list in Content-Length", post(["Content-Length: 1, 1"], body: "a")),
        ("two numbers in Content-Length", post(["Content-Length: 1 2"], body: "a")),
        ("an empty Content-Length", post(["Content-Length:"])),
        ("an 11-digit Content-Length", post(["Content-Length: 00000000001"], body: "a")),
        ("a tab after Content-Length's digits", post(["Content-Length: 1\t"], body: "a")),
        ("a body over maxBody", post(["Content-Length: 1025"], body: String(repeating: "a", count: 1025))),
        ("Transfer-Encoding", post(["Transfer-Encoding: chunked", "Content-Length: 0"])),
        ("Transfer-Encoding in capitals", post(["Content-Length: 0", "TRANSFER-ENCODING: identity"])),
        ("Expect", post(["Expect: 100-continue", "Content-Length: 0"])),
        ("Content-Encoding", post(["Content-Encoding: gzip", "Content-Length: 0"])),
        ("Upgrade", post(["Upgrade: websocket", "Content-Length: 0"])),
        ("Proxy-Connection, which llhttp reads as Connection", post(["Proxy-Connection: close", "Content-Length: 0"])),
        ("Connection: upgrade", post(["Connection: upgrade", "Content-Length: 0"])),
        ("a Connection list", post(["Connection: keep-alive, TE", "Content-Length: 0"])),
        ("an empty Connection", post(["Connection:", "Content-Length: 0"])),
        ("two Connections", post(["Connection: close", "Connection: close", "Content-Length: 0"])),
        ("Connection: closed", post(["Connection: closed", "Content-Length: 0"])),
        ("a tab after the Connection token", post(["Connection: close\t", "Content-Length: 0"])),
        ("a multipart body", post(["Content-Type: multipart/form-data; boundary=x", "Content-Length: 0"])),
        ("a multipart body in capitals", post(["Content-Type: \tMultiPart/Mixed", "Content-Length: 0"])),
    ]

    @Test(arguments: general)
    func notTheCommonCaseIsGeneral(_ reason: String, _ text: String) {
        #expect(parse(text) == .general, "\(reason)")
    }

    @Test func generalIsDecidedAsSoonAsTheBytesRuleARequestOut() {
        #expect(parse("G") == .general)
        #expect(parse("POST x") == .general)
        #expect(parse("POST /x HTTP/1.0") == .general)
        #expect(parse("POST / HTTP/1.1\r\nX: \u{1}") == .general)
        #expect(parse("POST / HTTP/1.1\r\n ") == .general)
        #expect(parse("POST / HTTP/1.1\r\nX-A\n") == .general)
        #expect(parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n") == .general)
        #expect(parse("POST / HTTP/1.1\r\nContent-Length: 2000\r\n") == .general)
    }

    @Test func aCompleteHeadNeedsItsWholeBody() {
        let text = post(["Content-Length: 5"], body: "abcd")
        #expect(parse(text) == .needMore)
        #expect(parse(text + "e") != .needMore)
    }

    // MARK: Bounds

    /// A request whose head is `headLength` bytes long, padded by one field.
    private func padded(headLength: Int) -> String {
        let bare = post(["Content-Length: 0", "X-Pad: "])
        return post(["Content-Length: 0", "X-Pad: " + String(repeating: "p", count: headLength - bare.utf8.count)])
    }

    @Test func aHeadOfMaxHeadBytesIsReadAndOneMoreIsNot() {
        let max = FastRequestParser.maxHead
        let atLimit = padded(headLength: max)
        #expect(atLimit.utf8.count == max)
        #expect(parse(atLimit).isRequest)
        #expect(parse(String(atLimit.dropLast())) == .needMore)
        let over = padded(headLength: max + 1)
        #expect(over.utf8.count == max + 1)
        #expect(parse(over) == .general)
        // Decided once `maxHead` bytes are there and the head has not ended.
        #expect(parse(Array(Array(over.utf8)[0..<max])) == .general)
        #expect(parse(Array(Array(over.utf8)[0..<(max - 1)])) == .needMore)
    }

    @Test func maxFieldsFieldsAreReadAndOneMoreIsNot() {
        let max = FastRequestParser.maxFields
        let fields = ["Content-Length: 0"] + (1..<max).map { "X-\($0): \($0)" }
        #expect(parse(post(fields)).fieldCount == max)
        #expect(parse(post(fields + ["X-Last: 1"])) == .general)
    }

    @Test func aBodyOfMaxBodyBytesIsReadAndOneMoreIsNot() {
        let atLimit = post(["Content-Length: 100"], body: String(repeating: "b", count: 100))
        #expect(parse(atLimit, maxBody: 100).isRequest)
        let over = post(["Content-Length: 101"], body: String(repeating: "b", count: 101))
        #expect(parse(over, maxBody: 100) == .general)
        #expect(parse(over, maxBody: 101).isRequest)
    }

    // MARK: Bytes

    @Test func tcharsAreRFC9110s() {
        let tchars = Set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
        for b in 0...255 {
            #expect(FastRequestParser.isTChar(UInt8(b)) == tchars.contains(UInt8(b)), "byte \(b)")
        }
    }

    @Test func aLongerInputIsNeverLessDecided() {
        // Once general, more bytes never make it a request: every prefix of a general input is needMore or general.
        for (reason, text) in Self.general {
            let bytes = Array(text.utf8)
            var seenGeneral = false
            for n in 0...bytes.count {
                let result = parse(Array(bytes[0..<n]))
                if seenGeneral { #expect(result == .general, "\(reason), prefix of \(n)") }
                if result == .general { seenGeneral = true }
                #expect(!result.isRequest, "\(reason), prefix of \(n)")
            }
        }
    }
}

extension FastParseResult {
    fileprivate var isRequest: Bool {
        if case .request = self { return true }
        return false
    }

    fileprivate var fieldCount: Int? {
        if case .request(let r) = self { return r.headers.count }
        return nil
    }
}
