/// One request the fast path serves, as offsets into the bytes it was read from.
package struct FastRequest: Equatable, Sendable {
    /// The request-target (`/?query=...`), between the method and the version.
    package var target: Range<Int>
    /// Every header field in order: the name as sent, the value without leading and trailing spaces or tabs.
    package var headers: [FastHeader]
    /// The body: `Content-Length` bytes right after the head.
    package var body: Range<Int>
    /// Where the next request starts: the head's and the body's length together (== body.upperBound).
    package var length: Int { body.upperBound }
    /// `Connection: close`: the connection closes after the answer.
    package var closes: Bool

    package init(target: Range<Int>, headers: [FastHeader], body: Range<Int>, closes: Bool) {
        self.target = target
        self.headers = headers
        self.body = body
        self.closes = closes
    }
}

/// One header field of a `FastRequest`, as offsets into the request's bytes. A value that is empty after trimming
/// is the empty range right after the colon.
package struct FastHeader: Equatable, Sendable {
    package var name: Range<Int>
    package var value: Range<Int>

    package init(name: Range<Int>, value: Range<Int>) {
        self.name = name
        self.value = value
    }
}

/// What `FastRequestParser.parse` makes of the bytes at the start of a connection's buffer.
package enum FastParseResult: Equatable, Sendable {
    case request(FastRequest)
    /// What is there so far could still become a request the fast path serves.
    case needMore
    /// Not the common case: the general path (NIO's codec) takes these bytes from here on.
    case general
}

/// Recognises the common request of the fast path, a `POST` with `Content-Length` and a small body, without NIO's
/// HTTP codec.
///
/// It only recognises: whatever it is not sure NIO's `HTTPRequestDecoder` (llhttp, not lenient) would read as the
/// same method, target, fields, body and request boundary is `.general`, and the caller hands those bytes to the
/// codec, which serves or refuses them as it always does. So the grammar here is deliberately narrower than
/// RFC 9112: one spelling of the request line, CRLF only, no obs-fold, no obs-text, and none of the fields that
/// change how a body is framed or how the connection goes on. Besides the fields the fast path does not serve
/// (`Transfer-Encoding`, `Expect`, `Content-Encoding`, `Upgrade`, multipart bodies), two come from how llhttp
/// reads values: it treats `Proxy-Connection` as `Connection`, and it takes only spaces after the digits of
/// `Content-Length` (a tab is an error) and after a `Connection` token (a tab makes the token unrecognised), so
/// those are `.general` too.
///
/// The parse is one pass over the head with no String or per-field allocation; the caller parses again from the
/// start when more bytes arrive (heads are small and bounded by `maxHead`).
package enum FastRequestParser {
    /// The longest head (request line and fields, through the blank line) the fast path reads.
    package static let maxHead = 8192
    /// The most header fields.
    package static let maxFields = 64

    /// Reads one request at the start of `bytes`. `maxBody`: the largest body served here (longer ones: `.general`).
    ///
    /// A rule is judged as soon as the bytes that decide it are there: a wrong byte at once, a field's value at the
    /// end of its line, a head that cannot end within `maxHead` bytes once `maxHead` bytes are there. Bytes after
    /// the request's `length` are not looked at.
    package static func parse(_ bytes: UnsafeRawBufferPointer, maxBody: Int) -> FastParseResult {
        let count = bytes.count
        // The head must end within the first `maxHead` bytes; running out of those means the head is too long
        // when that many are there, and that more are needed when not.
        let end = min(count, maxHead)
        let outOfHead: FastParseResult = count >= maxHead ? .general : .needMore

        // The request line: `POST /target HTTP/1.1` CRLF, one space each.
        switch match("POST /", bytes, at: 0, end: end) {
        case .matched: break
        case .short: return outOfHead
        case .mismatch: return .general
        }
        let targetStart = 5
        var i = 6
        while true {
            if i == end { return outOfHead }
            let b = bytes[i]
            if b == space { break }
            guard isVisible(b) else { return .general }
            i &+= 1
        }
        let target = targetStart..<i
        i &+= 1
        switch match("HTTP/1.1\r\n", bytes, at: i, end: end) {
        case .matched: break
        case .short: return outOfHead
        case .mismatch: return .general
        }
        i &+= 10

        var headers: [FastHeader] = []
        headers.reserveCapacity(16)
        var contentLength = -1
        var connectionCloses: Bool? = nil
        while true {
            // A field line, or the blank line that ends the head. A line that starts with a space or tab is an
            // obs-fold, one that starts with anything but a tchar a broken field: both are not a tchar.
            if i == end { return outOfHead }
            let first = bytes[i]
            if first == cr {
                if i &+ 1 == end { return outOfHead }
                guard bytes[i &+ 1] == lf else { return .general }
                i &+= 2
                break
            }
            guard isTChar(first), headers.count < maxFields else { return .general }

            let nameStart = i
            i &+= 1
            while true {
                if i == end { return outOfHead }
                let b = bytes[i]
                if b == colon { break }
                guard isTChar(b) else { return .general }
                i &+= 1
            }
            let name = nameStart..<i
            i &+= 1

            // The value: visible bytes, spaces and tabs up to CRLF; `valueStart..<valueEnd` without the spaces and
            // tabs at either end (empty right after the colon when there is nothing else).
            let afterColon = i
            var valueStart = -1
            var valueEnd = afterColon
            while true {
                if i == end { return outOfHead }
                let b = bytes[i]
                if b == cr { break }
                if isVisible(b) {
                    if valueStart < 0 { valueStart = i }
                    valueEnd = i &+ 1
                } else if b != space && b != tab {
                    return .general
                }
                i &+= 1
            }
            if i &+ 1 == end { return outOfHead }
            guard bytes[i &+ 1] == lf else { return .general }
            let value = valueStart < 0 ? afterColon..<afterColon : valueStart..<valueEnd
            let trailing = value.upperBound..<i

            switch field(name, bytes) {
            case .other:
                break
            case .refused:
                return .general
            case .contentLength:
                guard contentLength < 0, onlySpaces(bytes, trailing),
                    let length = decimal(bytes, value), length <= maxBody
                else { return .general }
                contentLength = length
            case .connection:
                guard connectionCloses == nil, onlySpaces(bytes, trailing) else { return .general }
                if equalsFolded(bytes, value, "close") {
                    connectionCloses = true
                } else if equalsFolded(bytes, value, "keep-alive") {
                    connectionCloses = false
                } else {
                    return .general
                }
            case .contentType:
                if hasFoldedPrefix(bytes, value, "multipart/") { return .general }
            }
            headers.append(FastHeader(name: name, value: value))
            i &+= 2
        }

        guard contentLength >= 0 else { return .general }
        let bodyEnd = i &+ contentLength
        guard count >= bodyEnd else { return .needMore }
        return .request(
            FastRequest(target: target, headers: headers, body: i..<bodyEnd, closes: connectionCloses ?? false))
    }

    /// The value of the first field named `lowercasedName` (ASCII case-insensitive compare of the name), decoded as
    /// UTF-8; nil if absent.
    package static func value(of lowercasedName: String, in request: FastRequest, bytes: UnsafeRawBufferPointer)
        -> String?
    {
        let wanted = lowercasedName.utf8
        for header in request.headers
        where header.name.count == wanted.count && header.value.upperBound <= bytes.count
            && header.name.upperBound <= bytes.count
        {
            var same = true
            var k = header.name.lowerBound
            for c in wanted {
                if lowercased(bytes[k]) != c {
                    same = false
                    break
                }
                k &+= 1
            }
            if same { return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[header.value]), as: UTF8.self) }
        }
        return nil
    }

    // MARK: Fields

    /// The fields the parse looks into; the others are kept as they are.
    private enum Field {
        case other
        /// A field the fast path does not serve: it frames the body or the connection in a way the fast path
        /// does not, or llhttp reads it in a way this parser does not follow.
        case refused
        case contentLength
        case connection
        case contentType
    }

    /// Which field `name` is, compared ASCII case-insensitively; the length picks the candidates.
    @inline(__always)
    private static func field(_ name: Range<Int>, _ bytes: UnsafeRawBufferPointer) -> Field {
        switch name.count {
        case 6: return equalsFolded(bytes, name, "expect") ? .refused : .other
        case 7: return equalsFolded(bytes, name, "upgrade") ? .refused : .other
        case 10: return equalsFolded(bytes, name, "connection") ? .connection : .other
        case 12: return equalsFolded(bytes, name, "content-type") ? .contentType : .other
        case 14: return equalsFolded(bytes, name, "content-length") ? .contentLength : .other
        case 16:
            return equalsFolded(bytes, name, "content-encoding") || equalsFolded(bytes, name, "proxy-connection")
                ? .refused : .other
        case 17: return equalsFolded(bytes, name, "transfer-encoding") ? .refused : .other
        default: return .other
        }
    }

    /// `Content-Length`'s value as a number: 1 to 10 ASCII digits and nothing else. Leading zeros are read as
    /// llhttp reads them, as part of the number.
    private static func decimal(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Int? {
        guard !range.isEmpty, range.count <= 10 else { return nil }
        var n = 0
        for k in range {
            let digit = bytes[k] &- zero
            guard digit < 10 else { return nil }
            n = n &* 10 &+ Int(digit)
        }
        return n
    }

    // MARK: Bytes

    private static let space = UInt8(ascii: " ")
    private static let tab = UInt8(ascii: "\t")
    private static let cr = UInt8(ascii: "\r")
    private static let lf = UInt8(ascii: "\n")
    private static let colon = UInt8(ascii: ":")
    private static let zero = UInt8(ascii: "0")

    /// The tchars of RFC 9110 (`!#$%&'*+-.^_`|~`, digits, letters) below 64 and from 64 to 127, one bit each.
    private static let tcharLow: UInt64 = 0x03FF_6CFA_0000_0000
    private static let tcharHigh: UInt64 = 0x57FF_FFFF_C7FF_FFFE

    /// Whether `b` may be in a field name.
    @inline(__always)
    static func isTChar(_ b: UInt8) -> Bool {
        if b < 64 { return (tcharLow &>> UInt64(b)) & 1 == 1 }
        if b < 128 { return (tcharHigh &>> UInt64(b &- 64)) & 1 == 1 }
        return false
    }

    /// A visible ASCII byte (VCHAR, 0x21...0x7E).
    @inline(__always)
    private static func isVisible(_ b: UInt8) -> Bool { b &- 0x21 < 0x5E }

    /// `b` with an ASCII capital letter made small.
    @inline(__always)
    private static func lowercased(_ b: UInt8) -> UInt8 { b &- 0x41 < 26 ? b | 0x20 : b }

    /// Whether the bytes in `range` are all spaces (no tabs): what llhttp allows after `Content-Length`'s digits
    /// and after a `Connection` token.
    @inline(__always)
    private static func onlySpaces(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> Bool {
        for k in range where bytes[k] != space { return false }
        return true
    }

    /// Whether `bytes[range]` is `lowercased` (a lowercase ASCII literal), ignoring ASCII case.
    @inline(__always)
    private static func equalsFolded(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ lowercased: StaticString)
        -> Bool
    {
        range.count == lowercased.utf8CodeUnitCount && hasFoldedPrefix(bytes, range, lowercased)
    }

    /// Whether `bytes[range]` starts with `lowercased` (a lowercase ASCII literal), ignoring ASCII case.
    @inline(__always)
    private static func hasFoldedPrefix(
        _ bytes: UnsafeRawBufferPointer, _ range: Range<Int>, _ lowercased: StaticString
    ) -> Bool {
        let n = lowercased.utf8CodeUnitCount
        guard range.count >= n else { return false }
        let literal = lowercased.utf8Start
        for k in 0..<n where Self.lowercased(bytes[range.lowerBound &+ k]) != literal[k] { return false }
        return true
    }

    /// How far the bytes at `start` agree with `literal`.
    private enum LiteralMatch {
        case matched
        /// Every byte there agrees, but the bytes end before the literal does.
        case short
        case mismatch
    }

    /// Compares `literal` with `bytes[start..<end]` byte by byte: a wrong byte is a mismatch even when the bytes
    /// end before the literal.
    @inline(__always)
    private static func match(_ literal: StaticString, _ bytes: UnsafeRawBufferPointer, at start: Int, end: Int)
        -> LiteralMatch
    {
        let p = literal.utf8Start
        for k in 0..<literal.utf8CodeUnitCount {
            let at = start &+ k
            if at == end { return .short }
            if bytes[at] != p[k] { return .mismatch }
        }
        return .matched
    }
}
