import NIOCore

/// Decodes a request body while it arrives, in bounded slices: the caller appends each received piece and asks
/// for at most `maxOutput` decoded bytes at a time, so a piece that decodes to a lot (a bomb) never costs more
/// than a slice of work and memory per call. A decoder's memory is its library's state plus the input not decoded
/// yet (`pendingInput`), which the caller bounds by not reading while output is pending. The decoded total stops
/// at the decoder's limit (`.outputLimitExceeded`). `StreamingInflater` is the gzip/deflate one; docs/request-path.md,
/// "Encoded bodies", has the others.
public protocol BodyDecoder: AnyObject {
    func append(_ input: ByteBuffer)
    /// Decodes appended input into `output`, at most `maxOutput` bytes in this call.
    func decode(into output: inout ByteBuffer, maxOutput: Int) throws(BodyDecodingError) -> DecodeProgress
    /// The input ended: a stream cut short is `.truncated`. Call once `decode` answered `.needInput`.
    func finish() throws(BodyDecodingError)
    /// Input bytes held and not decoded yet.
    var pendingInput: Int { get }
    /// Decoded bytes produced so far.
    var totalOutput: Int { get }
}

public enum DecodeProgress: Sendable, Equatable {
    /// Every byte appended so far is decoded; append more (or `finish`).
    case needInput
    /// The slice is full: call `decode` again before appending more.
    case outputPending
}

/// Why a body could not be decoded, with what a ClickHouse server would answer for it (`clickHouseCode`,
/// `clickHouseName`; it answers all of them with HTTP 500).
public struct BodyDecodingError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: Sendable, Hashable {
        /// The decoded output would exceed the caller's limit (for example a bomb).
        case outputLimitExceeded
        /// The input is not valid data of its coding.
        case invalidData
        /// The input ended before the end of the stream (or of a compressed block).
        case truncated
        /// Bytes after the end of the stream that cannot start another one.
        case trailingData
        /// A compressed block's CityHash128 does not match its bytes.
        case checksumMismatch
        /// A compressed block's method byte is unknown to ClickHouse.
        case unknownMethod
        /// A method ClickHouse knows (Delta, Multiple, ...) that the proxy does not decode: ClickHouse can take
        /// the body as it came.
        case unsupportedMethod
        /// The library itself failed (out of memory).
        case libraryFailure
    }

    public var code: Code
    public var message: String
    public var clickHouseCode: Int
    public var clickHouseName: String

    public init(code: Code, message: String, clickHouseCode: Int, clickHouseName: String) {
        self.code = code
        self.message = message
        self.clickHouseCode = clickHouseCode
        self.clickHouseName = clickHouseName
    }

    public var description: String { "BodyDecodingError(\(code)): \(message)" }

    /// The error a content coding's decoder raises in ClickHouse (src/Common/ErrorCodes.cpp): each read buffer
    /// (ZlibInflatingReadBuffer, Lz4InflatingReadBuffer, ...) has its own.
    static func coding(_ coding: ContentCoding, _ code: Code, _ message: String) -> BodyDecodingError {
        let (number, name): (Int, String)
        switch coding {
        case .gzip, .deflate: (number, name) = (354, "ZLIB_INFLATE_FAILED")
        case .lz4: (number, name) = (618, "LZ4_DECODER_FAILED")
        case .zstd: (number, name) = (561, "ZSTD_DECODER_FAILED")
        case .br: (number, name) = (448, "BROTLI_READ_FAILED")
        case .xz: (number, name) = (554, "LZMA_STREAM_DECODER_FAILED")
        }
        return BodyDecodingError(code: code, message: message, clickHouseCode: number, clickHouseName: name)
    }

    static func limitExceeded(_ limit: Int) -> BodyDecodingError {
        BodyDecodingError(
            code: .outputLimitExceeded, message: "decompressed body exceeds the limit of \(limit) bytes",
            clickHouseCode: 307, clickHouseName: "TOO_MANY_BYTES")
    }
}

public enum BodyDecoders {
    /// The decoder for a body with HTTP coding `coding` and, when `clickHouseBlocks` (`decompress=1`), ClickHouse's
    /// compressed blocks inside it: ClickHouse undoes the Content-Encoding first, then reads blocks from what that
    /// gives (src/Server/HTTPHandler.cpp). Nil when neither applies. `limit` bounds the final decoded output.
    public static func make(coding: ContentCoding?, clickHouseBlocks: Bool, limit: Int) -> (any BodyDecoder)? {
        let outer = coding.map { contentDecoder($0, limit: clickHouseBlocks ? Int.max : limit) }
        guard clickHouseBlocks else { return outer }
        let blocks = CompressedBlockDecoder(limit: limit)
        guard let outer else { return blocks }
        return ChainedDecoder(outer: outer, inner: blocks)
    }

    static func contentDecoder(_ coding: ContentCoding, limit: Int) -> any BodyDecoder {
        switch coding {
        case .gzip, .deflate: InflatingDecoder(coding: coding, limit: limit)
        case .lz4: StreamDecoder(engine: LZ4FrameEngine(), coding: .lz4, limit: limit)
        case .zstd: StreamDecoder(engine: ZstdEngine(), coding: .zstd, limit: limit)
        case .br: StreamDecoder(engine: BrotliEngine(), coding: .br, limit: limit)
        case .xz: StreamDecoder(engine: XzEngine(), coding: .xz, limit: limit)
        }
    }

    /// Decodes a whole body at once (the intake's one-shot path and tests).
    public static func decodeAll(
        _ body: ByteBuffer, coding: ContentCoding?, clickHouseBlocks: Bool, limit: Int
    ) throws(BodyDecodingError) -> ByteBuffer {
        guard let decoder = make(coding: coding, clickHouseBlocks: clickHouseBlocks, limit: limit) else { return body }
        var output = ByteBuffer()
        decoder.append(body)
        while try decoder.decode(into: &output, maxOutput: 1 << 20) == .outputPending {}
        try decoder.finish()
        return output
    }
}

/// A content coding's decoder and then ClickHouse's compressed blocks over what it produces. What the outer one
/// decodes is fed to the blocks only while they need input, so at most one block and one slice wait between them.
final class ChainedDecoder: BodyDecoder {
    private let outer: any BodyDecoder
    private let inner: any BodyDecoder
    private var outerEnded = false
    /// Outer output per step: small, since it is held again as the inner decoder's input.
    private static let step = 256 * 1024

    init(outer: any BodyDecoder, inner: any BodyDecoder) {
        self.outer = outer
        self.inner = inner
    }

    var pendingInput: Int { outer.pendingInput + inner.pendingInput }
    var totalOutput: Int { inner.totalOutput }

    func append(_ input: ByteBuffer) { outer.append(input) }

    func decode(into output: inout ByteBuffer, maxOutput: Int) throws(BodyDecodingError) -> DecodeProgress {
        var produced = 0
        while true {
            let before = output.writerIndex
            let progress = try inner.decode(into: &output, maxOutput: maxOutput - produced)
            produced += output.writerIndex - before
            if progress == .outputPending { return .outputPending }
            var middle = ByteBuffer()
            let outerProgress = try outer.decode(into: &middle, maxOutput: Self.step)
            if middle.readableBytes == 0 { return outerProgress }
            inner.append(middle)
            if produced >= maxOutput { return .outputPending }
        }
    }

    func finish() throws(BodyDecodingError) {
        try outer.finish()
        try inner.finish()
    }
}
