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

    /// A streamed passthrough response's headers as they go to the client (framing is the proxy's own).
    static func relayedStreamHeaders(_ headers: [(String, String)]) -> HTTPHeaders {
        var relayed = HTTPHeaders()
        for (name, value) in headers where !hopByHopResponse.contains(name.lowercased()) {
            relayed.add(name: name, value: value)
        }
        return relayed
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
