import BatchhouseCore
import CLZ4
import NIOCore

/// ClickHouse's own compressed-block framing, which `decompress=1` says a request body is in (what
/// `clickhouse-compressor` writes and `compress=1` answers). Each block is a 16-byte CityHash128 v1.0.2 checksum
/// of the rest of the block, then a 9-byte header (method byte, UInt32 LE compressed size counting the header,
/// UInt32 LE decompressed size), then the compressed data. Methods: 0x82 LZ4 block, 0x90 ZSTD frame, 0x02 none.
/// Errors carry the codes and messages ClickHouse answers with (src/Compression/CompressedReadBufferBase.cpp).
///
/// A block is decoded whole once all its bytes are here, into a staging buffer that `decode` hands out a slice at a
/// time; before that, its sizes are checked against the limit, so memory is at most one block's compressed and
/// decompressed bytes, each within the limit.
public final class CompressedBlockDecoder: BodyDecoder {
    public static let checksumSize = 16
    public static let headerSize = 9
    /// ClickHouse refuses larger blocks as corrupt (DBMS_MAX_COMPRESSED_SIZE, 1 GiB).
    public static let maxCompressedSize = 0x4000_0000

    public enum Method: UInt8, Sendable, CaseIterable {
        case none = 0x02
        case lz4 = 0x82
        case zstd = 0x90
    }

    /// Method bytes newer ClickHouse releases know and the proxy does not decode: Multiple (0x91), Delta, T64,
    /// DoubleDelta, Gorilla, the AES codecs, FPC, DEFLATE_QPL, GCD, ZSTD_QPL (src/Compression/CompressionInfo.h).
    static let knownElsewhere: ClosedRange<UInt8> = 0x91...0x9B

    private let limit: Int
    private var pending = ByteBuffer()
    /// A decoded block not handed out yet.
    private var staged = ByteBuffer()
    public private(set) var totalOutput = 0
    /// Decoded bytes promised by the headers read so far (checked against the limit before decoding).
    private var promised = 0

    public init(limit: Int) {
        self.limit = limit
    }

    public var pendingInput: Int { pending.readableBytes }

    public func append(_ input: ByteBuffer) {
        guard input.readableBytes > 0 else { return }
        if pending.readableBytes == 0 {
            pending = input
        } else {
            var input = input
            if pending.readerIndex > 64 * 1024 { pending.discardReadBytes() }
            pending.writeBuffer(&input)
        }
    }

    public func decode(into output: inout ByteBuffer, maxOutput: Int) throws(BodyDecodingError) -> DecodeProgress {
        var produced = 0
        while true {
            if staged.readableBytes > 0 {
                let count = min(staged.readableBytes, maxOutput - produced)
                if count > 0, var slice = staged.readSlice(length: count) {
                    output.writeBuffer(&slice)
                    produced += count
                    totalOutput += count
                }
                if staged.readableBytes > 0 { return .outputPending }
                staged = ByteBuffer()
            }
            guard try decodeBlock() else { return .needInput }
            if produced >= maxOutput && staged.readableBytes > 0 { return .outputPending }
        }
    }

    public func finish() throws(BodyDecodingError) {
        let remaining = pending.readableBytes
        guard remaining > 0 else { return }
        // ClickHouse's readStrict of the checksum and header, or of the block's data, comes up short.
        let expected: Int
        if remaining < Self.checksumSize + Self.headerSize {
            expected = Self.checksumSize + Self.headerSize
        } else {
            expected = Self.checksumSize + Int(readUInt32(at: Self.checksumSize + 1))
        }
        throw BodyDecodingError(
            code: .truncated,
            message: "Cannot read all data. Bytes read: \(remaining). Bytes expected: \(expected).",
            clickHouseCode: 33, clickHouseName: "CANNOT_READ_ALL_DATA")
    }

    /// Decodes the next block into `staged` if all of it is here; false when it needs more input.
    private func decodeBlock() throws(BodyDecodingError) -> Bool {
        let prefix = Self.checksumSize + Self.headerSize
        guard pending.readableBytes >= prefix else { return false }
        let methodByte = pending.getInteger(at: pending.readerIndex + Self.checksumSize, as: UInt8.self)!
        let compressedSize = Int(readUInt32(at: Self.checksumSize + 1))
        let decompressedSize = Int(readUInt32(at: Self.checksumSize + 5))
        guard let method = Method(rawValue: methodByte) else {
            if Self.knownElsewhere.contains(methodByte) {
                throw BodyDecodingError(
                    code: .unsupportedMethod,
                    message: "Batchhouse: compression method byte 0x\(String(methodByte, radix: 16)) is not decoded by the proxy",
                    clickHouseCode: 432, clickHouseName: "UNKNOWN_CODEC")
            }
            throw BodyDecodingError(
                code: .unknownMethod, message: "Unknown codec family code: \(methodByte)",
                clickHouseCode: 432, clickHouseName: "UNKNOWN_CODEC")
        }
        if decompressedSize > Self.maxCompressedSize {
            // ClickHouse's blocks are at most about 1 MiB decoded (max_compress_block_size); LZ4's API takes Int32.
            throw BodyDecodingError(
                code: .invalidData,
                message: "Too large size_decompressed: \(decompressedSize). Most likely corrupted data.",
                clickHouseCode: 246, clickHouseName: "CORRUPTED_DATA")
        }
        if compressedSize > Self.maxCompressedSize {
            throw BodyDecodingError(
                code: .invalidData,
                message: "Too large size_compressed_without_checksum: \(compressedSize). Most likely corrupted data.",
                clickHouseCode: 39, clickHouseName: "TOO_LARGE_SIZE_COMPRESSED")
        }
        if compressedSize < Self.headerSize {
            throw BodyDecodingError(
                code: .invalidData,
                message:
                    "Can't decompress data: the compressed data size (\(compressedSize), this should include header size) is less than the header size (\(Self.headerSize))",
                clickHouseCode: 246, clickHouseName: "CORRUPTED_DATA")
        }
        // Checked before the block's bytes are waited for: a header that promises too much costs nothing more.
        // So is a block whose compressed bytes alone could not fit (LZ4 and ZSTD grow incompressible data by well
        // under 1%): the input held for one block stays within about the limit too.
        let room = limit - promised
        if decompressedSize > room || compressedSize - Self.headerSize > room + room / 128 + 1024 {
            throw .limitExceeded(limit)
        }
        let blockSize = Self.checksumSize + compressedSize
        guard pending.readableBytes >= blockSize else { return false }
        try pending.withUnsafeReadableBytes { (bytes) throws(BodyDecodingError) in
            let block = UnsafeRawBufferPointer(rebasing: bytes[Self.checksumSize..<blockSize])
            let expected = CityHash128(checksumBytes: bytes[0..<Self.checksumSize])
            let actual = CityHash128.hash(block)
            guard expected == actual else {
                throw BodyDecodingError(
                    code: .checksumMismatch,
                    message:
                        "Checksum doesn't match: corrupted data. Reference: \(expected). Actual: \(actual). Size of compressed block: \(compressedSize)",
                    clickHouseCode: 40, clickHouseName: "CHECKSUM_DOESNT_MATCH")
            }
            let data = UnsafeRawBufferPointer(rebasing: block[Self.headerSize...])
            try Self.decompress(data, method: method, decompressedSize: decompressedSize, into: &staged)
        }
        pending.moveReaderIndex(forwardBy: blockSize)
        promised += decompressedSize
        return true
    }

    private static func decompress(
        _ data: UnsafeRawBufferPointer, method: Method, decompressedSize: Int, into staged: inout ByteBuffer
    ) throws(BodyDecodingError) {
        var failure: String?
        staged.writeWithUnsafeMutableBytes(minimumWritableBytes: decompressedSize) { space in
            let target = UnsafeMutableRawBufferPointer(rebasing: space.prefix(decompressedSize))
            switch method {
            case .none:
                if data.count != decompressedSize {
                    failure =
                        "Wrong data for compression codec NONE: source_size (\(data.count)) != uncompressed_size (\(decompressedSize))"
                    return 0
                }
                if decompressedSize > 0 { target.copyMemory(from: data) }
            case .lz4:
                let written = LZ4_decompress_safe(
                    data.baseAddress?.assumingMemoryBound(to: CChar.self),
                    target.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(data.count), Int32(decompressedSize))
                if written != decompressedSize {
                    failure = "Cannot decompress LZ4-encoded data"
                    return 0
                }
            case .zstd:
                if let reason = Zstd.decompressExactly(data, into: target) {
                    failure = "Cannot decompress ZSTD-encoded data: \(reason)"
                    return 0
                }
            }
            return decompressedSize
        }
        if let failure {
            let code = method == .none ? 246 : 271
            throw BodyDecodingError(
                code: .invalidData, message: failure, clickHouseCode: code,
                clickHouseName: method == .none ? "CORRUPTED_DATA" : "CANNOT_DECOMPRESS")
        }
    }

    private func readUInt32(at offset: Int) -> UInt32 {
        pending.getInteger(at: pending.readerIndex + offset, endianness: .little, as: UInt32.self) ?? 0
    }
}

/// Writes ClickHouse's compressed blocks (tests, fuzzing, and whoever needs to send `decompress=1` bodies).
public enum CompressedBlockEncoder {
    /// `bytes` in blocks of at most `blockSize` decoded bytes, each compressed with `method`.
    public static func encode(
        _ bytes: [UInt8], method: CompressedBlockDecoder.Method, blockSize: Int = 1 << 20
    ) -> [UInt8] {
        var output: [UInt8] = []
        var start = 0
        repeat {
            let end = min(bytes.count, start + blockSize)
            output += block(Array(bytes[start..<end]), method: method)
            start = end
        } while start < bytes.count
        return output
    }

    /// One block: checksum, header, data.
    public static func block(_ bytes: [UInt8], method: CompressedBlockDecoder.Method) -> [UInt8] {
        var data = ByteBuffer()
        bytes.withUnsafeBytes { input in
            switch method {
            case .none:
                data.writeBytes(input)
            case .lz4:
                let bound = Int(LZ4_compressBound(Int32(input.count)))
                data.writeWithUnsafeMutableBytes(minimumWritableBytes: bound) { space in
                    Int(
                        LZ4_compress_default(
                            input.baseAddress?.assumingMemoryBound(to: CChar.self),
                            space.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(input.count), Int32(bound)))
                }
            case .zstd:
                Zstd.compress(input, into: &data)
            }
        }
        var header: [UInt8] = [method.rawValue]
        let compressedSize = UInt32(CompressedBlockDecoder.headerSize + data.readableBytes)
        for value in [compressedSize, UInt32(bytes.count)] {
            header += (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) }
        }
        let body = header + (data.readBytes(length: data.readableBytes) ?? [])
        return CityHash128.hash(body).bytes + body
    }
}
