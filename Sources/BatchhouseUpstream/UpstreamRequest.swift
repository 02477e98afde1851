import NIOCore

/// One HTTP request to ClickHouse.
public struct UpstreamRequest: Sendable {
    /// `GET`, `POST`, `HEAD`, or any other method (sent as given).
    public var method: String
    /// The full URL with its query string, already percent-encoded.
    public var url: String
    /// Sent as given, in order. The caller removes hop-by-hop headers. `Content-Length`,
    /// `Transfer-Encoding` and `Expect` are ignored: the client sets the framing itself. Headers
    /// whose name or value contain CR, LF or NUL are dropped. When the caller gives no `Accept`,
    /// none is sent; when a request with a body has no `Content-Type`, none is sent.
    public var headers: [(String, String)]
    /// The request body for ``CurlClient/execute(_:)``; nil sends none (POST sends `Content-Length: 0`).
    /// For ``CurlClient/stream(_:requestBodyLength:delegate:)`` these bytes are queued as the start of
    /// the streamed body.
    public var body: ByteBuffer?
    /// Sent as HTTP basic authentication. Never logged, never part of an error message.
    public var basicAuth: (user: String, password: String)?
    public var connectTimeout: Duration
    /// The whole transfer, connect included; nil for none (a passthrough SELECT may run for long).
    public var timeout: Duration?
    /// For https:// URLs: a CA file to trust instead of the system's, and whether to verify the server's
    /// certificate and host name (true unless set otherwise).
    public var tls: UpstreamTLS?

    public init(
        method: String = "GET",
        url: String,
        headers: [(String, String)] = [],
        body: ByteBuffer? = nil,
        basicAuth: (user: String, password: String)? = nil,
        connectTimeout: Duration = .seconds(5),
        timeout: Duration? = .seconds(30)
    ) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.basicAuth = basicAuth
        self.connectTimeout = connectTimeout
        self.timeout = timeout
    }
}

/// TLS options for https:// upstreams.
public struct UpstreamTLS: Sendable, Hashable {
    public var caFile: String?
    public var verify: Bool

    public init(caFile: String? = nil, verify: Bool = true) {
        self.caFile = caFile
        self.verify = verify
    }
}

/// A complete (buffered) response.
public struct UpstreamResponse: Sendable {
    public var status: Int
    /// In the order received. Names keep their case as sent by the server.
    public var headers: [(String, String)]
    /// As received: a `Content-Encoding` of the response is not undone.
    public var body: ByteBuffer

    public init(status: Int, headers: [(String, String)], body: ByteBuffer) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// The first value of the header `name` (case-insensitive).
    public func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }
}

/// A transfer that did not produce a complete response. An HTTP error status is not an
/// `UpstreamError`: it is a response.
public struct UpstreamError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// No connection: refused, unresolvable host, or the connect timed out. The request was not
        /// sent, so it is safe to retry, also on another replica.
        case connect
        /// The request was sent but the transfer did not finish within its timeout.
        case timeout
        /// The connection failed after the request was (possibly) sent: reset, closed early,
        /// malformed response, or a failure in libcurl itself.
        case transport
        /// Cancelled by the caller (task cancellation, ``UpstreamStream/cancel()``) or by
        /// ``CurlClient/shutdown()``.
        case cancelled
    }

    public var kind: Kind
    /// From libcurl's error buffer; never contains credentials.
    public var message: String

    public init(kind: Kind, message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { "UpstreamError(\(kind)): \(message)" }
}
