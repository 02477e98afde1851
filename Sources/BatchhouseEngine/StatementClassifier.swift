import BatchhouseCore
import NIOCore

/// Decides what a request's statement is, as ClickHouse reassembles it: the `query` parameter + "\n" + the
/// body (the split may fall anywhere). Only the first `limit` bytes of the body are looked at. One per
/// connection: it keeps a scratch buffer for the joined statement.
package struct StatementClassifier: Sendable {
    /// How much of a body is read to find where an INSERT's data begins before giving up and streaming it.
    package static let limit = 64 * 1024

    /// Reused for `query` + "\n" + body when the statement starts in the URL (kept only while small).
    private var scratch: [UInt8] = []

    package init() {}

    package mutating func classify(query: String?, body: ByteBuffer, isComplete: Bool) -> InsertParseResult {
        // RowBinary and Native are read with their column types by the intake (docs/request-path.md, "RowBinary and
        // Native").
        parse(query: query, body: body, isComplete: isComplete)
    }

    private mutating func parse(query: String?, body: ByteBuffer, isComplete: Bool) -> InsertParseResult {
        let bodyPrefix = min(body.readableBytes, Self.limit)
        let complete = isComplete && bodyPrefix == body.readableBytes
        guard let query else {
            // The statement is the body alone: parse it where it lies.
            return body.withUnsafeReadableBytes {
                InsertParser.parse(UnsafeRawBufferPointer(rebasing: $0.prefix(bodyPrefix)), isComplete: complete)
            }
        }
        scratch.removeAll(keepingCapacity: true)
        scratch.reserveCapacity(query.utf8.count + 1 + bodyPrefix)
        scratch.append(contentsOf: query.utf8)
        scratch.append(UInt8(ascii: "\n"))
        body.withUnsafeReadableBytes { scratch.append(contentsOf: $0.prefix(bodyPrefix)) }
        let result = scratch.withUnsafeBytes { InsertParser.parse($0, isComplete: complete) }
        if scratch.capacity > 16 * 1024 { scratch = [] }
        return result
    }

    /// The INSERT's data: whatever follows `statement.dataOffset` in `query` + "\n" + `body`.
    package static func data(of statement: InsertStatement, query: String?, body: ByteBuffer) -> ByteBuffer {
        let prefixLength = query.map { $0.utf8.count + 1 } ?? 0
        if statement.dataOffset >= prefixLength {
            let skip = statement.dataOffset - prefixLength
            return body.getSlice(at: body.readerIndex + skip, length: max(body.readableBytes - skip, 0)) ?? ByteBuffer()
        }
        var data = ByteBuffer()
        if let query {
            data.writeBytes(query.utf8.dropFirst(statement.dataOffset))
            data.writeInteger(UInt8(ascii: "\n"))
        }
        var body = body
        data.writeBuffer(&body)
        return data
    }
}
