/// How a request's method and body length map onto libcurl's options, and which header lines go out.
/// Pure, so the rules are tested without a server.
struct RequestFraming: Equatable {
    enum Body: Equatable {
        case none
        /// Sent with `Content-Length`.
        case length(Int64)
        /// Sent with `Transfer-Encoding: chunked`.
        case chunked
    }

    enum Verb: Equatable {
        /// CURLOPT_HTTPGET
        case get
        /// CURLOPT_NOBODY: curl sends HEAD and does not wait for a response body.
        case head
        /// CURLOPT_POST with a read function.
        case post
    }

    var verb: Verb
    /// CURLOPT_CUSTOMREQUEST, when the method is not what `verb` sends by itself.
    var customMethod: String?
    var body: Body

    /// `bodyLength` nil means unknown: chunked for methods that normally carry a body, no body for
    /// GET, HEAD, DELETE, OPTIONS and TRACE. A HEAD never sends a body.
    init(method: String, bodyLength: Int?) {
        let bodylessByDefault: Set<String> = ["GET", "HEAD", "DELETE", "OPTIONS", "TRACE"]
        if method == "HEAD" {
            body = .none
        } else if let bodyLength {
            body = bodyLength > 0 || !bodylessByDefault.contains(method) ? .length(Int64(bodyLength)) : .none
        } else {
            body = bodylessByDefault.contains(method) ? .none : .chunked
        }
        switch (method, body) {
        case ("HEAD", _):
            verb = .head
            customMethod = nil
        case ("GET", .none):
            verb = .get
            customMethod = nil
        case (_, .none):
            verb = .get
            customMethod = method
        case ("POST", _):
            verb = .post
            customMethod = nil
        default:
            verb = .post
            customMethod = method
        }
    }

    var hasBody: Bool { body != .none }

    /// CURLOPT_POSTFIELDSIZE_LARGE: -1 lets curl stream a body of unknown length.
    var postFieldSize: Int64? {
        switch body {
        case .none: nil
        case .length(let length): length
        case .chunked: -1
        }
    }

    /// The caller's headers as curl header lines, plus the lines that stop curl from adding its own
    /// defaults (`Expect: 100-continue`, `Accept: */*`, a form `Content-Type`).
    func headerLines(_ headers: [(String, String)]) -> [String] {
        var lines: [String] = []
        lines.reserveCapacity(headers.count + 4)
        var hasAccept = false
        var hasContentType = false
        for (name, value) in headers {
            guard Self.isSafe(name), Self.isSafe(value), !name.isEmpty, !name.contains(":") else { continue }
            switch name.lowercased() {
            case "content-length", "transfer-encoding", "expect":
                continue
            case "accept":
                hasAccept = true
            case "content-type":
                hasContentType = true
            default:
                break
            }
            // "Name:" would tell curl to remove the header; "Name;" sends it with an empty value.
            lines.append(value.isEmpty ? "\(name);" : "\(name): \(value)")
        }
        if !hasAccept { lines.append("Accept:") }
        if hasBody && !hasContentType { lines.append("Content-Type:") }
        lines.append("Expect:")
        if body == .chunked { lines.append("Transfer-Encoding: chunked") }
        return lines
    }

    private static func isSafe(_ string: String) -> Bool {
        !string.utf8.contains { $0 == 0x0D || $0 == 0x0A || $0 == 0x00 }
    }
}

/// Parses the status and header lines that libcurl hands to CURLOPT_HEADERFUNCTION, one line per call
/// (CRLF included), and produces the final response head once.
struct ResponseHeadParser {
    private var status: Int?
    private var headers: [(String, String)] = []
    private(set) var isComplete = false

    /// Returns the head when `line` ends the headers of a final (non-1xx) response. Lines after that
    /// (chunked trailers) are ignored, as are interim responses such as `100 Continue`.
    mutating func consume(_ line: UnsafeRawBufferPointer) -> (status: Int, headers: [(String, String)])? {
        guard !isComplete else { return nil }
        var end = line.count
        while end > 0 && (line[end - 1] == 0x0A || line[end - 1] == 0x0D) { end -= 1 }
        let content = UnsafeRawBufferPointer(rebasing: line[0..<end])

        if content.isEmpty {
            guard let status else { return nil }
            if (100..<200).contains(status) && status != 101 {
                self.status = nil
                headers = []
                return nil
            }
            isComplete = true
            return (status, headers)
        }
        if content.starts(with: "HTTP/".utf8) {
            status = Self.parseStatus(content)
            headers = []
            return nil
        }
        if content[0] == 0x20 || content[0] == 0x09 {
            // Obsolete line folding: a continuation of the previous value.
            if !headers.isEmpty {
                headers[headers.count - 1].1 += " " + Self.trimmed(content)
            }
            return nil
        }
        guard let colon = content.firstIndex(of: UInt8(ascii: ":")) else { return nil }
        let name = String(decoding: content[..<colon], as: UTF8.self)
        let value = Self.trimmed(UnsafeRawBufferPointer(rebasing: content[(colon + 1)...]))
        headers.append((name, value))
        return nil
    }

    /// The head to deliver when the transfer ends without a blank line having been seen, e.g. an
    /// HTTP/0.9 style answer; `fallbackStatus` comes from CURLINFO_RESPONSE_CODE.
    mutating func finish(fallbackStatus: Int) -> (status: Int, headers: [(String, String)])? {
        guard !isComplete else { return nil }
        isComplete = true
        return (status ?? fallbackStatus, headers)
    }

    private static func parseStatus(_ line: UnsafeRawBufferPointer) -> Int? {
        // "HTTP/1.1 200 OK": the three digits after the first space.
        guard let space = line.firstIndex(of: 0x20) else { return nil }
        var code = 0
        var digits = 0
        var index = space + 1
        while index < line.count, digits < 3, (0x30...0x39).contains(line[index]) {
            code = code * 10 + Int(line[index] - 0x30)
            digits += 1
            index += 1
        }
        return digits == 3 ? code : nil
    }

    private static func trimmed(_ bytes: UnsafeRawBufferPointer) -> String {
        var start = 0
        var end = bytes.count
        while start < end && (bytes[start] == 0x20 || bytes[start] == 0x09) { start += 1 }
        while end > start && (bytes[end - 1] == 0x20 || bytes[end - 1] == 0x09) { end -= 1 }
        return String(decoding: bytes[start..<end], as: UTF8.self)
    }
}

extension Duration {
    /// Whole milliseconds, rounded up so that a short positive timeout never becomes 0 (which libcurl
    /// reads as "no timeout" or "default").
    var curlMilliseconds: Int {
        let (seconds, attoseconds) = components
        guard seconds >= 0 else { return 1 }
        let (wholeMilliseconds, overflow) = seconds.multipliedReportingOverflow(by: 1000)
        if overflow { return Int.max }
        let fraction = (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        return max(1, Int(wholeMilliseconds + fraction))
    }
}
