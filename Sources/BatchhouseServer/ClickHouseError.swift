import NIOCore
import NIOHTTP1

/// An error made by the proxy itself, shaped like ClickHouse's so clients that key on `Code: N` understand it.
struct ClickHouseError: Error, Sendable {
    var code: Int
    var name: String
    var message: String
    var status: HTTPResponseStatus
    var retryAfterSeconds: Int?

    static func syntax(_ message: String) -> ClickHouseError {
        ClickHouseError(code: 62, name: "SYNTAX_ERROR", message: message, status: .badRequest)
    }

    static func bodyTooLarge(limit: Int) -> ClickHouseError {
        ClickHouseError(
            code: 307, name: "TOO_MANY_BYTES",
            message: "Batchhouse: request body is larger than limits.max_request_body (\(limit) bytes)",
            status: .payloadTooLarge)
    }

    static let lengthRequired = ClickHouseError(
        code: 1001, name: "STD_EXCEPTION",
        message: "Batchhouse: POST request needs Content-Length or Transfer-Encoding: chunked",
        status: .lengthRequired)

    static func memoryLimit(_ message: String) -> ClickHouseError {
        ClickHouseError(code: 241, name: "MEMORY_LIMIT_EXCEEDED", message: message, status: .serviceUnavailable, retryAfterSeconds: 1)
    }

    static func upstreamUnavailable(_ message: String) -> ClickHouseError {
        ClickHouseError(code: 210, name: "NETWORK_ERROR", message: message, status: .badGateway)
    }

    static func spoolFull(_ message: String) -> ClickHouseError {
        ClickHouseError(code: 243, name: "NOT_ENOUGH_SPACE", message: message, status: .serviceUnavailable, retryAfterSeconds: 1)
    }

    static func spoolFailed(_ message: String) -> ClickHouseError {
        ClickHouseError(code: 1001, name: "STD_EXCEPTION", message: message, status: .internalServerError)
    }

    static func cannotDecompress(_ message: String) -> ClickHouseError {
        ClickHouseError(code: 354, name: "CANNOT_DECOMPRESS", message: message, status: .badRequest)
    }

    static let shuttingDown = ClickHouseError(
        code: 202, name: "TOO_MANY_SIMULTANEOUS_QUERIES", message: "Batchhouse is shutting down",
        status: .serviceUnavailable, retryAfterSeconds: 1)

    /// `Code: N. DB::Exception: message. (NAME)`, as current ClickHouse releases write it.
    var body: String {
        var text = message
        while text.hasSuffix(".") { text.removeLast() }
        return "Code: \(code). DB::Exception: \(text). (\(name))\n"
    }

    var headers: HTTPHeaders {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "text/plain; charset=UTF-8")
        headers.add(name: "X-ClickHouse-Exception-Code", value: String(code))
        if let retryAfterSeconds { headers.add(name: "Retry-After", value: String(retryAfterSeconds)) }
        return headers
    }
}

/// The `Code: N` of a ClickHouse error body, if it has one (both the 18.x and the current wording start so).
func clickHouseErrorCode(in body: ByteBuffer) -> Int? {
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
