import BatchhouseCore
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

/// The fast parser against NIO's own decoder: whatever the fast parser takes as a request, NIO's
/// `HTTPRequestDecoder` reads from the same bytes as the same request (method, target, fields in order, body, where
/// the next request starts, whether the connection stays open), without an error. Requests come from a seeded
/// generator, first as made, then mutated a byte or a field at a time.
@Suite struct FastRequestParserConformanceTests {
    static let maxBody = 65_536
    /// Generated requests, each also mutated once: about 2.5 s in a debug build.
    static let iterations = 5_000

    /// A valid request NIO reads after the one under test, to show where NIO thinks the first one ends.
    static let next = Array("POST /next HTTP/1.1\r\nContent-Length: 1\r\n\r\nN".utf8)

    // MARK: NIO's reading

    /// What NIO's decoder made of some bytes: the parts in order and the first error, if any.
    struct Decoded {
        var parts: [HTTPServerRequestPart] = []
        var error: (any Error)? = nil
    }

    static func decode(_ bytes: [UInt8]) -> Decoded {
        let channel = EmbeddedChannel(
            handler: ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes)))
        var decoded = Decoded()
        do {
            try channel.writeInbound(channel.allocator.buffer(bytes: bytes))
        } catch {
            decoded.error = error
        }
        while let part = try? channel.readInbound(as: HTTPServerRequestPart.self) { decoded.parts.append(part) }
        _ = try? channel.finish()
        return decoded
    }

    static func trimmed(_ value: String) -> Substring {
        var s = Substring(value)
        while let c = s.first, c == " " || c == "\t" { s.removeFirst() }
        while let c = s.last, c == " " || c == "\t" { s.removeLast() }
        return s
    }

    /// Checks that NIO reads `bytes` as the fast parser's `request`; records a failure naming `label` when not.
    static func expectNIOAgrees(
        _ bytes: [UInt8], _ request: FastRequest, _ label: String, sourceLocation: SourceLocation = #_sourceLocation
    ) {
        func text(_ range: Range<Int>) -> String { String(decoding: bytes[range], as: UTF8.self) }
        func fail(_ why: String) {
            Issue.record("\(why): \(label) \(String(decoding: bytes, as: UTF8.self).debugDescription)",
                sourceLocation: sourceLocation)
        }
        // After `Connection: close` llhttp refuses further bytes, so the next request goes only after keep-alive.
        let input = Array(bytes[0..<request.length]) + (request.closes ? [] : next)
        let decoded = decode(input)
        if let error = decoded.error { return fail("NIO refused it (\(error))") }
        var parts = decoded.parts[...]
        guard case .head(let head) = parts.popFirst() else { return fail("no head") }
        if head.method != .POST { fail("method \(head.method)") }
        if head.version != .http1_1 { fail("version \(head.version)") }
        if head.uri != text(request.target) { fail("target \(head.uri.debugDescription)") }
        let nioFields = head.headers.map { ($0.name, String(trimmed($0.value))) }
        let fastFields = request.headers.map { (text($0.name), text($0.value)) }
        if !nioFields.elementsEqual(fastFields, by: { $0 == $1 }) { fail("fields \(nioFields) vs \(fastFields)") }
        if head.isKeepAlive == request.closes { fail("keep-alive \(head.isKeepAlive)") }
        var body: [UInt8] = []
        while case .body(let chunk) = parts.first {
            body += chunk.readableBytesView
            parts.removeFirst()
        }
        if body != Array(bytes[request.body]) { fail("body of \(body.count) bytes") }
        guard case .end(let trailers) = parts.popFirst(), trailers == nil else { return fail("no end") }
        if !request.closes {
            guard case .head(let nextHead) = parts.popFirst(), nextHead.uri == "/next" else {
                return fail("the next request is not where the fast parser says")
            }
        }
    }

    static func fastParse(_ bytes: [UInt8]) -> FastParseResult {
        bytes.withUnsafeBytes { FastRequestParser.parse($0, maxBody: maxBody) }
    }

    // MARK: The property

    @Test func everyRequestTheFastParserTakesNIOReadsTheSame() {
        var generator = RequestGenerator(seed: 0xFA57_0001)
        var requests = 0
        var general = 0
        var needMore = 0
        for iteration in 0..<Self.iterations {
            let bytes = generator.request()
            guard case .request(let request) = Self.fastParse(bytes) else {
                Issue.record("a generated request is not fast: \(String(decoding: bytes, as: UTF8.self).debugDescription)")
                continue
            }
            Self.expectNIOAgrees(bytes, request, "generated #\(iteration)")
            let prefix = generator.int(0...(request.length - 1))
            #expect(Self.fastParse(Array(bytes[0..<prefix])) == .needMore, "generated #\(iteration), \(prefix) bytes")

            let mutated = generator.mutate(bytes)
            switch Self.fastParse(mutated) {
            case .request(let request):
                requests += 1
                Self.expectNIOAgrees(mutated, request, "mutated #\(iteration)")
            case .general: general += 1
            case .needMore: needMore += 1
            }
        }
        // Both sides are exercised: mutations that keep a request and ones the fast path leaves to NIO.
        #expect(requests > 500, "mutations still requests: \(requests)")
        #expect(general > 1_500, "mutations left to NIO: \(general)")
        #expect(requests + general + needMore == Self.iterations)
    }

    /// Edge cases of the grammar the fast parser takes, each checked against NIO.
    static let accepted: [String] = [
        "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        "POST /?a=1#frag HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
        "POST /!\"$%&'()*+,-./:;<=>?@[\\]^_`{|}~ HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 0000000003\r\n\r\nabc",
        "POST / HTTP/1.1\r\nContent-Length:\t \t3   \r\n\r\nabc",
        "POST / HTTP/1.1\r\nX-Empty:\r\nX-Blank: \t \r\nContent-Length: 0\r\n\r\n",
        "POST / HTTP/1.1\r\nX: \t a \t b \t \r\nContent-Length: 0\r\n\r\n",
        "POST / HTTP/1.1\r\n!#$%&'*+-.^_`|~09azAZ: v\r\nContent-Length: 0\r\n\r\n",
        "POST / HTTP/1.1\r\nConnection:\t keep-alive  \r\nContent-Length: 0\r\n\r\n",
        "POST / HTTP/1.1\r\nconnection: CLOSE   \r\nContent-Length: 0\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Type: text/csv\r\nContent-Length: 0\r\n\r\n",
        "POST / HTTP/1.1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nContent-Length: 0\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nPOST",
    ]

    @Test(arguments: accepted)
    func edgeCasesNIOReadsTheSame(_ text: String) {
        let bytes = Array(text.utf8)
        guard case .request(let request) = Self.fastParse(bytes) else {
            Issue.record("not fast: \(text.debugDescription)")
            return
        }
        Self.expectNIOAgrees(bytes, request, "edge case")
    }

    /// The `.general` rules that come from how llhttp reads values, not from what the fast path serves: NIO reads
    /// each of these differently from the plain reading, which is why the fast parser leaves them to NIO.
    @Test func whereLlhttpReadsValuesItsOwnWay() {
        func head(_ fields: String) -> Decoded {
            Self.decode(Array("POST / HTTP/1.1\r\n\(fields)Content-Length: 0\r\n\r\n".utf8))
        }
        func keepAlive(_ decoded: Decoded) -> Bool? {
            guard decoded.error == nil, case .head(let head) = decoded.parts.first else { return nil }
            return head.isKeepAlive
        }
        // Proxy-Connection closes the connection like Connection does.
        #expect(keepAlive(head("Proxy-Connection: close\r\n")) == false)
        // A tab after a Connection token makes it an unknown token: `close` then does not close.
        #expect(keepAlive(head("Connection: close\t\r\n")) == true)
        #expect(keepAlive(head("Connection: close \r\n")) == false)
        // A tab after Content-Length's digits is refused; spaces are not.
        #expect(Self.decode(Array("POST / HTTP/1.1\r\nContent-Length: 0\t\r\n\r\n".utf8)).error != nil)
        #expect(Self.decode(Array("POST / HTTP/1.1\r\nContent-Length: 0 \r\n\r\n".utf8)).error == nil)
        for fields in ["Proxy-Connection: close\r\n", "Connection: close\t\r\n"] {
            #expect(Self.fastParse(Array("POST / HTTP/1.1\r\n\(fields)Content-Length: 0\r\n\r\n".utf8)) == .general)
        }
    }
}

/// Makes requests the fast path serves, with random targets, fields, case, spaces and bodies, and mutates them.
/// Works on bytes rather than Strings: it makes tens of thousands of fields in a debug build.
struct RequestGenerator {
    var random: SplitMix64

    init(seed: UInt64) { random = SplitMix64(seed: seed) }

    /// A number in `range` (modulo's bias is of no matter here, and it is much faster than `Int.random` in debug).
    mutating func int(_ range: ClosedRange<Int>) -> Int {
        range.lowerBound + Int(truncatingIfNeeded: random.next() % UInt64(range.count))
    }
    mutating func chance(_ percent: Int) -> Bool { int(0...99) < percent }
    mutating func pick<T>(_ choices: [T]) -> T { choices[int(0...(choices.count - 1))] }

    static func ascii(_ text: String) -> [UInt8] { Array(text.utf8) }

    static let visible = Array(UInt8(0x21)...UInt8(0x7E))
    static let anyByte = Array(UInt8(0)...UInt8(255))
    static let tchars = ascii("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    static let tableChars = ascii("abcdefghij_")
    static let names = [
        "Host", "User-Agent", "Accept", "Authorization", "X-ClickHouse-User", "X-ClickHouse-Key",
        "X-ClickHouse-Database", "Content-Type", "Accept-Encoding", "X-Forwarded-For", "Keep-Alive", "TE",
    ].map(ascii)
    /// Names the generated fields must not take by chance: the parser looks into these.
    static let special = Set(
        [
            "content-length", "transfer-encoding", "expect", "content-encoding", "upgrade", "connection",
            "proxy-connection",
        ].map(ascii))
    static let multipart = ascii("multipart/")
    static let crlf: [UInt8] = [0x0D, 0x0A]

    static func lowercased(_ bytes: [UInt8]) -> [UInt8] {
        bytes.map { (0x41...0x5A).contains($0) ? $0 | 0x20 : $0 }
    }

    /// `bytes` with about a third of its letters in the other case.
    mutating func randomCase(_ bytes: [UInt8]) -> [UInt8] {
        var out = bytes
        for i in out.indices where (0x41...0x5A).contains(out[i] & ~0x20) && chance(30) { out[i] ^= 0x20 }
        return out
    }

    /// Spaces and tabs, or only spaces when `tabs` is false.
    mutating func ows(tabs: Bool = true) -> [UInt8] {
        (0..<pick([0, 0, 1, 1, 1, 2, 3])).map { _ in tabs && chance(30) ? 0x09 : 0x20 }
    }

    mutating func bytes(_ count: Int, from set: [UInt8]) -> [UInt8] { (0..<count).map { _ in pick(set) } }

    /// `count` bytes of any value, eight from each random number.
    mutating func anyBytes(_ count: Int) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count + 8)
        while out.count < count { withUnsafeBytes(of: random.next()) { out += $0 } }
        out.removeLast(out.count - count)
        return out
    }

    mutating func target() -> [UInt8] {
        if chance(50) {
            return Self.ascii("/?query=INSERT%20INTO%20") + bytes(int(1...10), from: Self.tableChars)
                + Self.ascii("%20FORMAT%20TSV") + (chance(30) ? Self.ascii("&database=db") : [])
        }
        return [0x2F] + bytes(int(0...40), from: Self.visible)
    }

    mutating func name() -> [UInt8] {
        while true {
            let name = chance(60) ? randomCase(pick(Self.names)) : bytes(int(1...16), from: Self.tchars)
            if !Self.special.contains(Self.lowercased(name)) { return name }
        }
    }

    /// A value with spaces and tabs inside but not at its ends; never one that makes a multipart content type.
    mutating func value() -> [UInt8] {
        var value = bytes(int(0...30), from: Self.visible)
        if !value.isEmpty {
            for _ in 0..<int(0...2) { value.insert(pick([0x20, 0x09]), at: int(1...value.count)) }
            if value.last == 0x20 || value.last == 0x09 { value.append(0x61) }
        }
        if Self.lowercased(value).starts(with: Self.multipart) { value.insert(0x78, at: 0) }
        return value
    }

    /// One request the fast path serves, as bytes.
    mutating func request() -> [UInt8] {
        var fields: [[UInt8]] = (0..<int(0...8)).map { _ in name() + [0x3A] + ows() + value() + ows() }
        let bodyLength = chance(10) ? 0 : int(1...(chance(5) ? 4_000 : 200))
        var digits = Self.ascii(String(bodyLength))
        if chance(10) { digits = [UInt8](repeating: 0x30, count: int(1...(10 - digits.count))) + digits }
        let contentLength = randomCase(Self.ascii("Content-Length")) + [0x3A] + ows() + digits + ows(tabs: false)
        fields.insert(contentLength, at: int(0...fields.count))
        if chance(40) {
            let token = randomCase(Self.ascii(chance(50) ? "close" : "keep-alive"))
            fields.insert(
                randomCase(Self.ascii("Connection")) + [0x3A] + ows() + token + ows(tabs: false),
                at: int(0...fields.count))
        }
        var head = Self.ascii("POST ") + target() + Self.ascii(" HTTP/1.1\r\n")
        for field in fields { head += field + Self.crlf }
        return head + Self.crlf + anyBytes(bodyLength)
    }

    static let interesting: [UInt8] = [0x00, 0x09, 0x0A, 0x0D, 0x20, 0x2C, 0x30, 0x3A, 0x61, 0x7F, 0x80, 0xFF]
    static let fields = [
        "Transfer-Encoding: chunked", "Expect: 100-continue", "Content-Encoding: gzip", "Upgrade: h2c",
        "Proxy-Connection: close", "Connection: upgrade", "Connection: close\t", "Connection: keep-alive, close",
        "Connection: close", "Content-Length: 0", "Content-Length: 1\t", "Content-Length: 01", "Content-Length:  +1",
        "Content-Length: 1, 1", "Content-Length: 99999999999", "Content-Type: multipart/mixed", "X-A: b",
        "X-Empty:", " folded", "\tfolded", "X-B : c", ": empty", "Host: a\u{80}",
    ].map { ascii($0) + crlf }
    static let swaps: [([UInt8], [UInt8])] = [
        ("POST", "PUT"), ("POST", "post"), ("HTTP/1.1", "HTTP/1.0"), ("HTTP/1.1", "HTTP/1.10"),
        ("POST ", "POST  "), (" HTTP", "  HTTP"), ("POST /", "POST http://h/"),
    ].map { (ascii($0.0), ascii($0.1)) }
    static let lengths = ["0", "1", "00", "007", "65536", "65537", " 5", "5 ", "-1", "1e3", "4294967296"].map(ascii)
    static let lengthField = ascii("ength:")

    /// `bytes` with one to three mutations: bytes flipped, inserted or deleted, fields duplicated, inserted or
    /// folded, spaces and tabs swapped or added at line ends, the method, version or length changed, the body cut
    /// or extended.
    mutating func mutate(_ original: [UInt8]) -> [UInt8] {
        var bytes = original
        let headEnd = (Self.find([0x0D, 0x0A, 0x0D, 0x0A], in: bytes) ?? (bytes.count - 4)) + 4
        for _ in 0..<pick([1, 1, 1, 2, 3]) {
            guard !bytes.isEmpty else { break }
            // Most mutations land in the head, where the parser decides.
            let at = chance(90) ? int(0...(min(headEnd, bytes.count) - 1)) : int(0...(bytes.count - 1))
            switch int(0...11) {
            case 0: bytes[at] = pick(Self.anyByte)
            case 1: bytes[at] = pick(Self.interesting)
            case 2: bytes.insert(pick(Self.interesting), at: at)
            case 3: bytes.remove(at: at)
            case 4:
                // Duplicate the line `at` is in.
                if let line = Self.line(around: at, in: bytes, headEnd: min(headEnd, bytes.count)) {
                    bytes.insert(contentsOf: bytes[line], at: line.upperBound)
                }
            case 5:
                // A field inserted before the line `at` is in.
                if let line = Self.line(around: at, in: bytes, headEnd: min(headEnd, bytes.count)), line.lowerBound > 0 {
                    bytes.insert(contentsOf: randomCase(pick(Self.fields)), at: line.lowerBound)
                }
            case 6:
                // A lone LF or CR, or a CRLF that becomes an obs-fold.
                switch int(0...2) {
                case 0: bytes.insert(0x0A, at: at)
                case 1: bytes.insert(0x0D, at: at)
                default: bytes.insert(contentsOf: [0x0D, 0x0A, pick([0x20, 0x09])], at: at)
                }
            case 7:
                // Another method or version.
                let (from, to) = pick(Self.swaps)
                if let i = Self.find(from, in: bytes) { bytes.replaceSubrange(i..<(i + from.count), with: to) }
            case 8:
                // The body cut or extended: Content-Length still says where it ends.
                if chance(50), bytes.count > headEnd {
                    bytes.removeLast(int(1...(bytes.count - headEnd)))
                } else {
                    bytes += anyBytes(int(1...20))
                }
            case 10:
                // The first space or tab from `at` on swapped for the other (llhttp takes only spaces after some values).
                var i = at
                while i < min(headEnd, bytes.count) && bytes[i] != 0x20 && bytes[i] != 0x09 { i += 1 }
                if i < min(headEnd, bytes.count) { bytes[i] ^= 0x20 ^ 0x09 }
            case 11:
                // A space or tab at the end of the line `at` is in.
                if let line = Self.line(around: at, in: bytes, headEnd: min(headEnd, bytes.count)) {
                    bytes.insert(pick([0x20, 0x09]), at: line.upperBound - 2)
                }
            default:
                // Content-Length's value changed.
                if let i = Self.find(Self.lengthField, in: bytes) {
                    bytes.insert(contentsOf: pick(Self.lengths), at: i + Self.lengthField.count)
                }
            }
        }
        return bytes
    }

    /// The first index of `needle` in `haystack`.
    static func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count, let first = needle.first else { return nil }
        var i = 0
        search: while i <= haystack.count - needle.count {
            defer { i += 1 }
            guard haystack[i] == first else { continue }
            for k in 1..<needle.count where haystack[i + k] != needle[k] { continue search }
            return i
        }
        return nil
    }

    /// The head line (with its CRLF) that holds `at`, if `at` is in the head and the line ends in CRLF.
    static func line(around at: Int, in bytes: [UInt8], headEnd: Int) -> Range<Int>? {
        guard at < headEnd else { return nil }
        var start = at
        while start > 0 && !(bytes[start - 1] == 0x0A && start >= 2 && bytes[start - 2] == 0x0D) { start -= 1 }
        var end = at
        while end + 1 < headEnd && !(bytes[end] == 0x0D && bytes[end + 1] == 0x0A) { end += 1 }
        guard end + 1 < headEnd else { return nil }
        return start..<(end + 2)
    }
}
