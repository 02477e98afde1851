import BatchhouseSpool
import BatchhouseUpstream
import NIOCore

/// An error made by the proxy itself, shaped like ClickHouse's so clients that key on `Code: N` understand it.
package struct ClickHouseError: Error, Sendable, Hashable {
    package var code: Int
    package var name: String
    package var message: String
    /// The HTTP status ClickHouse would answer with.
    package var status: Int
    package var retryAfterSeconds: Int?
    /// What `batchhouse_refused_requests_total` counts it under.
    package var reason: RefusalReason

    /// `reason` nil: from the status and code (400 syntax, 401 and 403 auth, 408, 411 and 413 limit, 241 memory,
    /// 243 spool, 210 upstream, else other).
    package init(
        code: Int, name: String, message: String, status: Int, retryAfterSeconds: Int? = nil,
        reason: RefusalReason? = nil
    ) {
        self.code = code
        self.name = name
        self.message = message
        self.status = status
        self.retryAfterSeconds = retryAfterSeconds
        self.reason = reason ?? Self.reason(code: code, status: status)
    }

    private static func reason(code: Int, status: Int) -> RefusalReason {
        switch (code, status) {
        case (241, _): .memory
        case (243, _): .spool
        case (210, _): .upstream
        case (_, 400): .syntax
        case (_, 401), (_, 403): .auth
        case (_, 408), (_, 411), (_, 413): .limit
        default: .other
        }
    }

    package static func syntax(_ message: String) -> ClickHouseError {
        ClickHouseError(code: 62, name: "SYNTAX_ERROR", message: message, status: 400)
    }

    package static func bodyTooLarge(limit: Int) -> ClickHouseError {
        ClickHouseError(
            code: 307, name: "TOO_MANY_BYTES",
            message: "Batchhouse: request body is larger than limits.max_request_body (\(limit) bytes)",
            status: 413)
    }

    /// What ClickHouse answers to a request of a session that another request holds (18.16: 500, Code 373).
    package static let sessionLocked = ClickHouseError(
        code: 373, name: "SESSION_IS_LOCKED", message: "Session is locked by a concurrent client", status: 500)

    package static let lengthRequired = ClickHouseError(
        code: 1001, name: "STD_EXCEPTION",
        message: "Batchhouse: POST request needs Content-Length or Transfer-Encoding: chunked",
        status: 411)

    package static func memoryLimit(_ message: String) -> ClickHouseError {
        ClickHouseError(code: 241, name: "MEMORY_LIMIT_EXCEEDED", message: message, status: 503, retryAfterSeconds: 1)
    }

    package static func upstreamUnavailable(_ message: String) -> ClickHouseError {
        ClickHouseError(code: 210, name: "NETWORK_ERROR", message: message, status: 502)
    }

    package static func spoolFull(_ message: String) -> ClickHouseError {
        ClickHouseError(code: 243, name: "NOT_ENOUGH_SPACE", message: message, status: 503, retryAfterSeconds: 1)
    }

    /// A spool append that failed: a full spool (`spool.max_size`) or a full disk is a 503 the client retries
    /// (code 243, as ClickHouse says when its own disk is full); anything else is a 500
    /// (docs/spool-and-acks.md, "A full disk").
    package static func spoolRefused(_ error: SpoolError) -> ClickHouseError {
        switch error.code {
        case .full: spoolFull("Batchhouse: the spool is full (spool.max_size); retry later")
        case .noSpace: spoolFull("Batchhouse: no space left on the spool's disk (\(error.message)); retry later")
        case .io, .closed: spoolFailed("Batchhouse: cannot write the spool: \(error.message)")
        }
    }

    package static func spoolFailed(_ message: String) -> ClickHouseError {
        ClickHouseError(code: 1001, name: "STD_EXCEPTION", message: message, status: 500, reason: .spool)
    }

    /// A request body the proxy could not decode, answered as ClickHouse answers it: each decoder's own code (354
    /// ZLIB_INFLATE_FAILED for gzip/deflate, 618 for lz4, 40 CHECKSUM_DOESNT_MATCH for a compressed block, ...;
    /// `BodyDecodingError`) and HTTP 500, since exceptionCodeToHTTPStatus (src/Server/HTTPHandler.cpp) maps none
    /// of them to a 4xx.
    package static func bodyDecoding(_ error: BodyDecodingError) -> ClickHouseError {
        ClickHouseError(
            code: error.clickHouseCode, name: error.clickHouseName, message: error.message, status: 500, reason: .syntax)
    }

    /// `X-ClickHouse-User`/`X-ClickHouse-Key` together with `Authorization` or `?user=`/`?password=`, refused as
    /// ClickHouse refuses it: 401 and REQUIRED_PASSWORD (194) up to 21.3, AUTHENTICATION_FAILED (516) later
    /// (docs/credentials.md, "Resolution").
    package static func mixedCredentialSchemes(modern: Bool) -> ClickHouseError {
        modern
            ? ClickHouseError(
                code: 516, name: "AUTHENTICATION_FAILED",
                message:
                    "Invalid authentication: it is not allowed to use X-ClickHouse HTTP headers and other authentication methods simultaneously",
                status: 401)
            : ClickHouseError(
                code: 194, name: "REQUIRED_PASSWORD",
                message:
                    "Invalid authentication: it is not allowed to use X-ClickHouse HTTP headers and other authentication methods simultaneously",
                status: 401)
    }

    /// A new identity's credentials could not be checked: no server answered. Nothing of the request is kept.
    package static func credentialsUnverifiable(_ reason: String) -> ClickHouseError {
        ClickHouseError(
            code: 210, name: "NETWORK_ERROR",
            message: "Batchhouse: cannot check these credentials with ClickHouse (\(reason)); nothing was stored, retry later",
            status: 503, retryAfterSeconds: 1, reason: .auth)
    }

    /// A client too slow with its request (`limits.header_timeout`, `body_timeout`, `request_timeout`).
    /// ClickHouse has no code for this on the HTTP side; 209 SOCKET_TIMEOUT is what it says when a socket read
    /// times out, and 408 is HTTP's status for it (docs/architecture.md, "Bounds on clients").
    package static func requestTimeout(_ message: String) -> ClickHouseError {
        ClickHouseError(code: 209, name: "SOCKET_TIMEOUT", message: message, status: 408)
    }

    /// A connection beyond `limits.max_connections`: answered at once, then closed.
    package static func tooManyConnections(limit: Int) -> ClickHouseError {
        ClickHouseError(
            code: 202, name: "TOO_MANY_SIMULTANEOUS_QUERIES",
            message: "Batchhouse: too many open connections (limits.max_connections \(limit)); retry later",
            status: 503, retryAfterSeconds: 1, reason: .limit)
    }

    package static let shuttingDown = ClickHouseError(
        code: 202, name: "TOO_MANY_SIMULTANEOUS_QUERIES", message: "Batchhouse is shutting down",
        status: 503, retryAfterSeconds: 1, reason: .other)

    /// `Code: N. DB::Exception: message. (NAME)`, as current ClickHouse releases write it.
    package var body: String {
        var text = message
        while text.hasSuffix(".") { text.removeLast() }
        return "Code: \(code). DB::Exception: \(text). (\(name))\n"
    }

    package var headers: [(String, String)] {
        var headers = [("Content-Type", "text/plain; charset=UTF-8"), ("X-ClickHouse-Exception-Code", String(code))]
        if let retryAfterSeconds { headers.append(("Retry-After", String(retryAfterSeconds))) }
        return headers
    }
}

/// The `Code: N` of a ClickHouse error body, if it has one (both the 18.x and the current wording start so).
package func clickHouseErrorCode(in body: ByteBuffer) -> Int? {
    let view = body.readableBytesView.prefix(256)
    let prefix = Array("Code: ".utf8)
    guard let start = view.firstRange(of: prefix)?.upperBound else { return nil }
    var value = 0
    var digits = 0
    var index = start
    while index < view.endIndex, let digit = Optional(view[index]), digit >= 48 && digit <= 57 {
        value = value * 10 + Int(digit - 48)
        digits += 1
        index += 1
    }
    return digits > 0 ? value : nil
}
