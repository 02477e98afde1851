import BatchhouseCore
import NIOHTTP1

/// Which headers cross the proxy, in which direction, and which it may write at all.
enum HeaderPolicy {
    /// Request headers that describe the client's connection to the proxy: never sent upstream (libcurl frames
    /// the upstream request itself).
    static let hopByHopRequest: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect",
        "host", "content-length",
    ]

    /// Response headers that describe the upstream connection, not the response: never relayed.
    static let hopByHopResponse: Set<String> = ["connection", "keep-alive", "transfer-encoding", "proxy-connection"]

    /// The client's headers as they go upstream with a passthrough request.
    static func upstreamRequestHeaders(_ headers: HTTPHeaders) -> [(String, String)] {
        var forwarded: [(String, String)] = []
        for header in headers where !hopByHopRequest.contains(header.name.lowercased()) {
            forwarded.append((header.name, header.value))
        }
        return forwarded
    }

    /// How the proxy's connection to the client goes on after a response: kept open for `idle_timeout`, or closed.
    enum Persistence: Equatable {
        case keepAlive(timeoutSeconds: Int)
        case close
    }

    /// The two headers that say so, as ClickHouse writes them (`Connection: Keep-Alive`, `Keep-Alive: timeout=N`),
    /// with the proxy's own idle timeout: the client's connection is to the proxy.
    static func connectionFields(_ persistence: Persistence) -> [(String, String)] {
        switch persistence {
        case .keepAlive(let seconds): [("Connection", "Keep-Alive"), ("Keep-Alive", "timeout=\(seconds)")]
        case .close: [("Connection", "close")]
        }
    }

    /// A streamed passthrough response's headers as they go to the client: ClickHouse's own, in its order and its
    /// case, framing included (the pipeline's encoder does not rewrite framing headers, which it would lower-case).
    /// `Connection` and `Keep-Alive` are replaced in place by the proxy's own, except a `Connection: close`, which is
    /// kept as written and closes the client's connection after the response too. A response ClickHouse framed by
    /// closing its connection is chunked for an HTTP/1.1 client; an HTTP/1.0 client gets no chunking, so such a
    /// response ends by closing (`closesToFrame`).
    static func relayedStreamHeaders(
        _ headers: [(String, String)], persistence: Persistence, clientVersion: HTTPVersion, status: Int,
        isHead: Bool
    ) -> (headers: HTTPHeaders, closesToFrame: Bool) {
        var relayed = HTTPHeaders()
        let chunkedAllowed = clientVersion.major == 1 && clientVersion.minor >= 1
        var hasLength = false
        var hasChunked = false
        var wroteConnection = false
        var wroteKeepAlive = false
        var persistence = persistence
        let mayHaveBody = !(100..<200).contains(status) && status != 204 && status != 304
        for (name, _) in headers where name.lowercased() == "content-length" { hasLength = true }
        if !hasLength && !chunkedAllowed && mayHaveBody && !isHead { persistence = .close }
        // ClickHouse closes after some answers (18.16's 404 for an unknown path): so does the proxy, as it says.
        let upstreamCloses = headers.contains { $0.0.lowercased() == "connection" && $0.1.lowercased() == "close" }
        if upstreamCloses { persistence = .close }
        for (name, value) in headers {
            switch name.lowercased() {
            case "connection":
                guard !wroteConnection else { continue }
                wroteConnection = true
                if upstreamCloses {
                    relayed.add(name: name, value: value)
                    continue
                }
                for field in connectionFields(persistence) where field.0 == "Connection" {
                    relayed.add(name: name, value: field.1)
                }
            case "keep-alive":
                guard !wroteKeepAlive, case .keepAlive(let seconds) = persistence else { continue }
                wroteKeepAlive = true
                relayed.add(name: name, value: "timeout=\(seconds)")
            case "transfer-encoding":
                guard chunkedAllowed, !hasLength, !hasChunked else { continue }
                hasChunked = true
                // libcurl has undone the chunking; the encoder chunks again when the value is exactly "chunked".
                relayed.add(name: name, value: "chunked")
            case "proxy-connection":
                continue
            default:
                relayed.add(name: name, value: value)
            }
        }
        if mayHaveBody && !hasLength && !hasChunked && chunkedAllowed && !isHead {
            relayed.add(name: "Transfer-Encoding", value: "chunked")
        }
        for (name, value) in connectionFields(persistence) {
            if name == "Connection" && !wroteConnection { relayed.add(name: name, value: value) }
            if name == "Keep-Alive" && !wroteKeepAlive { relayed.add(name: name, value: value) }
        }
        return (relayed, persistence == .close)
    }

    /// A buffered ClickHouse response's headers (its refusal of an INSERT's rows) as they go to the client; the
    /// proxy sets Content-Length itself.
    static func relayedBufferedHeaders(_ headers: [(String, String)]) -> HTTPHeaders {
        var relayed = HTTPHeaders()
        for (name, value) in headers
        where !hopByHopRequest.contains(name.lowercased()) && name.lowercased() != "content-length" {
            relayed.add(name: name, value: value)
        }
        return relayed
    }

    /// Whether headers from ClickHouse may be sent to a client (RFC 9110: names are tokens, values have no control
    /// characters but HTAB). The pipeline runs without NIO's outbound header validator, which checked every response
    /// on the hot path although the proxy's own headers are constants; headers it did not write are checked here,
    /// and, as with that validator, a response carrying an invalid one closes the connection.
    static func areValidToSend(_ headers: [(String, String)]) -> Bool {
        headers.allSatisfy { name, value in
            !name.isEmpty
                && name.utf8.allSatisfy { byte in
                    switch byte {
                    case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                        UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"),
                        UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"),
                        UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"),
                        UInt8(ascii: "|"), UInt8(ascii: "~"):
                        return true
                    default:
                        return false
                    }
                }
                && value.utf8.allSatisfy { $0 == UInt8(ascii: "\t") || ($0 > 0x1f && $0 != 0x7f) }
        }
    }

    /// `Content-Type: multipart/...`, in any case.
    static func isMultipart(_ contentType: String?) -> Bool {
        guard let contentType else { return false }
        let prefix = "multipart/".utf8
        guard contentType.utf8.count >= prefix.count else { return false }
        return zip(contentType.utf8, prefix).allSatisfy { byte, expected in
            (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte) ? byte | 0x20 == expected : byte == expected
        }
    }

    /// `uri` without its `name` query parameters, the path and every other parameter byte-exact (the `?` goes too
    /// when nothing is left).
    static func removingParameter(_ name: String, from uri: String) -> String {
        let (path, query) = split(uri: uri)
        guard uri.contains("?") else { return uri }
        let rest = QueryString.removing(name, from: query)
        if rest.count == query.count { return uri }
        return rest.isEmpty ? String(path) : String(path) + "?" + rest
    }

    static func split(uri: String) -> (path: Substring, query: Substring) {
        if let question = uri.firstIndex(of: "?") {
            return (uri[..<question], uri[uri.index(after: question)...])
        }
        return (uri[...], "")
    }
}
