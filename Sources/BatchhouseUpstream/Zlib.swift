import CZlib
import NIOCore

/// The HTTP content codings Batchhouse can decode from clients, and use for batches sent upstream (gzip, lz4,
/// zstd; the others only arrive). ClickHouse 18.16 accepts exactly `gzip` and `deflate` as a request
/// `Content-Encoding`; a modern server also `br`, `xz`, `zstd` and `lz4` (src/IO/CompressionMethod.cpp).
public enum ContentCoding: String, Sendable, Hashable, CaseIterable {
    case gzip
    /// HTTP "deflate" is meant to be zlib-wrapped (RFC 9110), but some clients send raw deflate;
    /// decompression accepts both.
    case deflate
    /// The LZ4 frame format (lz4frame.h), not ClickHouse's own LZ4 blocks.
    case lz4
    case zstd
    case br
    case xz

    /// Parses a `Content-Encoding` value: `gzip`, `x-gzip` or `deflate`, any case, surrounding
    /// whitespace ignored, and the newer codings as ``init(clickHouseRequestEncoding:)`` reads them.
    /// Anything else (including a list of codings) is nil.
    public init?(headerValue: some StringProtocol) {
        switch headerValue.trimmingASCIIWhitespace().lowercased() {
        case "gzip", "x-gzip": self = .gzip
        case "deflate": self = .deflate
        default:
            guard let coding = ContentCoding(clickHouseRequestEncoding: headerValue.trimmingASCIIWhitespace()) else {
                return nil
            }
            self = coding
        }
    }

    /// A request's `Content-Encoding` as the proxy decodes it for ClickHouse: `gzip` and `deflate` exactly (18.16
    /// refuses `GZIP` or `x-gzip` with Code 89, so those go to it as received), and the codings only a modern
    /// server decodes as it names them: chooseCompressionMethod lowercases the value and takes `lz4`,
    /// `zstd`/`zst`, `br`/`brotli` and `xz`/`lzma`.
    public init?(clickHouseRequestEncoding value: some StringProtocol) {
        switch value {
        case "gzip": self = .gzip
        case "deflate": self = .deflate
        default:
            switch value.lowercased() {
            case "lz4": self = .lz4
            case "zstd", "zst": self = .zstd
            case "br", "brotli": self = .br
            case "xz", "lzma": self = .xz
            default: return nil
            }
        }
    }

    /// The value to send in `Content-Encoding`.
    public var headerValue: String { rawValue }

    /// gzip or deflate: what `Zlib` handles.
    public var isZlib: Bool { self == .gzip || self == .deflate }
}

public struct ZlibError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: Sendable, Hashable {
        /// The decoded output would exceed the caller's limit (for example a zip bomb).
        case outputLimitExceeded
        /// The input is not valid gzip / zlib / deflate data.
        case invalidData
        /// The input ended before the end of the compressed stream.
        case truncated
        /// Bytes after the end of the compressed stream that are not another gzip member.
        case trailingData
        /// zlib itself failed (out of memory, version mismatch).
        case zlibFailure
    }

    public var code: Code
    public var message: String

    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "ZlibError(\(code)): \(message)" }
}

/// One-shot gzip / deflate compression and bounded decompression.
public enum Zlib {
    /// Compresses `bytes`. Level 1 is the fast end: batches go over a local network, where
    /// compression speed matters more than the last percent of size.
    public static func compress(
        _ bytes: UnsafeRawBufferPointer,
        as coding: ContentCoding,
        level: Int32 = 1
    ) -> [UInt8] {
        var output = ByteBuffer()
        compress(bytes, as: coding, level: level, into: &output)
        return output.readBytes(length: output.readableBytes) ?? []
    }

    /// Compresses the readable bytes of `buffer` (its reader index is not moved).
    public static func compress(
        _ buffer: ByteBuffer,
        as coding: ContentCoding,
        level: Int32 = 1,
        allocator: ByteBufferAllocator = ByteBufferAllocator()
    ) -> ByteBuffer {
        var output = allocator.buffer(capacity: 0)
        buffer.withUnsafeReadableBytes { compress($0, as: coding, level: level, into: &output) }
        return output
    }

    /// Decompresses `bytes`, producing at most `limit` bytes. A gzip input with several members
    /// (concatenated `.gz` files) decodes to the concatenation of all of them. `.deflate` accepts
    /// zlib-wrapped and raw deflate data. An empty input decodes to an empty output.
    public static func decompress(
        _ bytes: UnsafeRawBufferPointer,
        as coding: ContentCoding,
        limit: Int
    ) throws(ZlibError) -> [UInt8] {
        var output = ByteBuffer()
        try decompress(bytes, as: coding, limit: limit, into: &output)
        return output.readBytes(length: output.readableBytes) ?? []
    }

    /// Decompresses the readable bytes of `buffer` (its reader index is not moved); see
    /// ``decompress(_:as:limit:)-(UnsafeRawBufferPointer,_,_)``.
    public static func decompress(
        _ buffer: ByteBuffer,
        as coding: ContentCoding,
        limit: Int,
        allocator: ByteBufferAllocator = ByteBufferAllocator()
    ) throws(ZlibError) -> ByteBuffer {
        var output = allocator.buffer(capacity: 0)
        let result: Result<Void, ZlibError> = buffer.withUnsafeReadableBytes { input in
            Result { () throws(ZlibError) in try decompress(input, as: coding, limit: limit, into: &output) }
        }
        try result.get()
        return output
    }

    // MARK: Implementation

    /// zlib's `avail_in` / `avail_out` are 32-bit; larger buffers are fed in pieces.
    private static let maxChunk = Int(UInt32.max)

    static func compress(
        _ input: UnsafeRawBufferPointer,
        as coding: ContentCoding,
        level: Int32,
        into output: inout ByteBuffer,
        pool: DeflateStreamPool = .shared
    ) {
        precondition(coding.isZlib, "Zlib compresses gzip and deflate only, not \(coding)")
        pool.withStream(level: level, windowBits: coding == .gzip ? 15 + 16 : 15) { stream in
            deflate(input, with: stream, into: &output)
        }
    }

    /// Compresses the whole input with `stream`, new or reset, to the end of its stream.
    static func deflate(_ input: UnsafeRawBufferPointer, with stream: ZStream, into output: inout ByteBuffer) {
        output.reserveCapacity(minimumWritableBytes: stream.deflateBound(input.count))
        var offset = 0
        while true {
            let chunk = min(input.count - offset, maxChunk)
            let isLast = offset + chunk == input.count
            stream.setInput(input, offset: offset, count: chunk)
            offset += chunk
            while true {
                var status = Z_OK
                output.writeWithUnsafeMutableBytes(minimumWritableBytes: 64 * 1024) { space in
                    let (written, result) = stream.run(output: space, limit: space.count, flush: isLast ? Z_FINISH : Z_NO_FLUSH)
                    status = result
                    return written
                }
                if status == Z_STREAM_END { return }
                // Z_OK: progress made, go on; Z_BUF_ERROR: this piece of input is used up. With Z_FINISH and
                // 64 KiB of room, zlib always makes progress: Z_BUF_ERROR there means a stream that cannot go on
                // (one finished and not reset), which would otherwise loop here for ever.
                precondition(status == Z_OK || (status == Z_BUF_ERROR && !isLast), "deflate failed: \(status)")
                if !isLast && stream.availableInput == 0 { break }
            }
        }
    }

    static func decompress(
        _ input: UnsafeRawBufferPointer,
        as coding: ContentCoding,
        limit: Int,
        into output: inout ByteBuffer
    ) throws(ZlibError) {
        guard input.count > 0 else { return }
        let startIndex = output.writerIndex
        switch coding {
        case .gzip:
            try inflate(input, windowBits: 15 + 16, multiMember: true, limit: limit, into: &output)
        case .deflate:
            if looksLikeZlibHeader(input) {
                do {
                    try inflate(input, windowBits: 15, multiMember: false, limit: limit, into: &output)
                    return
                } catch where error.code == .invalidData {
                    // A raw deflate stream whose first two bytes happen to form a valid zlib header.
                    output.moveWriterIndex(to: startIndex)
                }
            }
            try inflate(input, windowBits: -15, multiMember: false, limit: limit, into: &output)
        case .lz4, .zstd, .br, .xz:
            throw ZlibError(code: .zlibFailure, message: "zlib does not decode \(coding); use BodyDecoders")
        }
    }

    /// RFC 1950: compression method 8 (deflate), window at most 32 KiB, header checksum.
    static func looksLikeZlibHeader(_ input: UnsafeRawBufferPointer) -> Bool {
        guard input.count >= 2 else { return false }
        let cmf = Int(input[0])
        let flg = Int(input[1])
        return cmf & 0x0F == 8 && cmf >> 4 <= 7 && (cmf << 8 | flg) % 31 == 0
    }

    private static func inflate(
        _ input: UnsafeRawBufferPointer,
        windowBits: Int32,
        multiMember: Bool,
        limit: Int,
        into output: inout ByteBuffer
    ) throws(ZlibError) {
        let stream = try ZStream(inflateWindowBits: windowBits)
        var produced = 0
        var offset = 0
        // A first guess at the output size, so small bodies do not regrow the buffer many times.
        output.reserveCapacity(minimumWritableBytes: min(max(limit, 0), max(input.count * 4, 4096)) + 1)
        feeding: while true {
            let chunk = min(input.count - offset, maxChunk)
            stream.setInput(input, offset: offset, count: chunk)
            while true {
                // At most one byte more than the limit allows, which is enough to tell that it was exceeded.
                let room = limit - produced
                let allowed = room == Int.max ? room : room + 1
                var status = Z_OK
                output.writeWithUnsafeMutableBytes(minimumWritableBytes: min(64 * 1024, allowed)) { space in
                    let (written, result) = stream.run(output: space, limit: allowed, flush: Z_NO_FLUSH)
                    status = result
                    produced += written
                    return written
                }
                let consumed = offset + chunk - stream.availableInput
                if produced > limit {
                    throw ZlibError(
                        code: .outputLimitExceeded,
                        message: "decompressed body exceeds the limit of \(limit) bytes"
                    )
                }
                switch status {
                case Z_OK:
                    continue
                case Z_STREAM_END:
                    guard consumed < input.count else { return }
                    let next = consumed
                    if multiMember && input.count - next >= 2 && input[next] == 0x1F && input[next + 1] == 0x8B {
                        stream.resetInflate()
                        offset = next
                        continue feeding
                    }
                    throw ZlibError(
                        code: .trailingData,
                        message: "\(input.count - next) bytes after the end of the compressed stream"
                    )
                case Z_BUF_ERROR:
                    if stream.availableInput == 0 && offset + chunk < input.count {
                        offset += chunk
                        continue feeding
                    }
                    throw ZlibError(code: .truncated, message: "compressed stream ends before its end marker")
                case Z_DATA_ERROR, Z_NEED_DICT:
                    throw ZlibError(code: .invalidData, message: "invalid compressed data: \(stream.message ?? "unknown")")
                default:
                    throw ZlibError(code: .zlibFailure, message: "inflate failed with status \(status)")
                }
            }
        }
    }
}

/// Owns one zlib stream. The `z_stream` lives on the heap because zlib keeps a pointer back to it.
final class ZStream {
    private enum Kind { case deflate, inflate }

    private let stream: UnsafeMutablePointer<z_stream>
    private let kind: Kind

    /// memLevel 8 and the default strategy, as zlib's deflateInit; ``DeflateStreamPool`` relies on these being
    /// the same for every stream of a level and window size.
    init(deflateLevel level: Int32, windowBits: Int32) {
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        kind = .deflate
        let status = bh_deflateInit2(stream, level, windowBits, 8, Z_DEFAULT_STRATEGY)
        // Fails only for invalid parameters (ours are constants) or when out of memory.
        precondition(status == Z_OK, "deflateInit2 failed: \(status)")
    }

    init(inflateWindowBits windowBits: Int32) throws(ZlibError) {
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        kind = .inflate
        let status = bh_inflateInit2(stream, windowBits)
        guard status == Z_OK else {
            stream.deallocate()
            throw ZlibError(code: .zlibFailure, message: "inflateInit2 failed with status \(status)")
        }
    }

    deinit {
        switch kind {
        case .deflate: deflateEnd(stream)
        case .inflate: inflateEnd(stream)
        }
        stream.deallocate()
    }

    var availableInput: Int { Int(stream.pointee.avail_in) }

    var message: String? { stream.pointee.msg.map { String(cString: $0) } }

    func deflateBound(_ count: Int) -> Int {
        Int(CZlib.deflateBound(stream, uLong(count)))
    }

    /// The input must stay valid until the next `setInput` or the end of the stream.
    func setInput(_ input: UnsafeRawBufferPointer, offset: Int, count: Int) {
        if let base = input.baseAddress {
            stream.pointee.next_in = UnsafeMutablePointer(mutating: base.assumingMemoryBound(to: Bytef.self) + offset)
        } else {
            stream.pointee.next_in = nil
        }
        stream.pointee.avail_in = uInt(count)
    }

    /// Runs deflate or inflate into at most `limit` bytes of `output`; returns zlib's status and the
    /// number of bytes written.
    func run(output: UnsafeMutableRawBufferPointer, limit: Int, flush: Int32) -> (Int, Int32) {
        let count = min(output.count, limit, Int(UInt32.max))
        stream.pointee.next_out = output.baseAddress?.assumingMemoryBound(to: Bytef.self)
        stream.pointee.avail_out = uInt(count)
        let status: Int32
        switch kind {
        case .deflate: status = CZlib.deflate(stream, flush)
        case .inflate: status = CZlib.inflate(stream, flush)
        }
        let written = count - Int(stream.pointee.avail_out)
        stream.pointee.next_out = nil
        stream.pointee.avail_out = 0
        return (written, status)
    }

    func resetInflate() {
        inflateReset(stream)
    }

    /// Makes a deflate stream start over as a new one with the same parameters: the next output is the bytes a
    /// new stream would produce. False if zlib found the stream unusable. Drops the pointer to the last input.
    func resetDeflate() -> Bool {
        precondition(kind == .deflate, "resetDeflate on an inflate stream")
        stream.pointee.next_in = nil
        stream.pointee.avail_in = 0
        return deflateReset(stream) == Z_OK
    }
}

extension StringProtocol {
    fileprivate func trimmingASCIIWhitespace() -> Substring {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        let string = Substring(self)
        guard let first = string.firstIndex(where: { !isSpace($0) }),
            let last = string.lastIndex(where: { !isSpace($0) })
        else { return "" }
        return string[first...last]
    }
}
