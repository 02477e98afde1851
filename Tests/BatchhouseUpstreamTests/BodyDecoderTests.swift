import BatchhouseCore
import NIOCore
import Testing

@testable import BatchhouseUpstream

/// Every content coding's decoder, and ClickHouse's compressed blocks: any split of the input decodes to the same
/// bytes, a bomb stops at the limit after bounded work per call, and broken input gets ClickHouse's error.
@Suite("BodyDecoders")
struct BodyDecoderTests {
    static let codings: [ContentCoding] = [.gzip, .deflate, .lz4, .zstd, .br, .xz]

    struct Run {
        var output: [UInt8]
        var largestSlice: Int
        var largestPending: Int
    }

    /// Feeds `input` in pieces of `piece` bytes, decoding `slice` bytes at a time.
    static func decode(
        _ input: [UInt8], coding: ContentCoding?, blocks: Bool = false, piece: Int, slice: Int = 1 << 20,
        limit: Int = 1 << 30
    ) throws(BodyDecodingError) -> Run {
        let decoder = BodyDecoders.make(coding: coding, clickHouseBlocks: blocks, limit: limit)!
        var output = ByteBuffer()
        var run = Run(output: [], largestSlice: 0, largestPending: 0)
        var offset = 0
        repeat {
            let end = min(offset + piece, input.count)
            decoder.append(ByteBuffer(bytes: input[offset..<end]))
            offset = end
            while true {
                let before = output.readableBytes
                let progress = try decoder.decode(into: &output, maxOutput: slice)
                run.largestSlice = max(run.largestSlice, output.readableBytes - before)
                run.largestPending = max(run.largestPending, decoder.pendingInput)
                if progress == .needInput { break }
            }
        } while offset < input.count
        try decoder.finish()
        #expect(decoder.totalOutput == output.readableBytes)
        run.output = Array(output.readableBytesView)
        return run
    }

    static func error(_ body: () throws -> Void) -> BodyDecodingError? {
        do {
            try body()
            return nil
        } catch let error as BodyDecodingError {
            return error
        } catch {
            Issue.record("not a BodyDecodingError: \(error)")
            return nil
        }
    }

    static func sample(count: Int) -> [UInt8] {
        var generator = SplitMix64(seed: 42)
        let words = ["INSERT", "row", "value", "1234", "\t", "\n", "{\"id\":", "}", "zstd", "lz4"]
        var bytes: [UInt8] = []
        while bytes.count < count { bytes += Array(words[Int(generator.next() % UInt64(words.count))].utf8) }
        return Array(bytes.prefix(count))
    }

    @Test(arguments: [1, 7, 4096, 1 << 20])
    func anySplitDecodesToTheOriginal(piece: Int) throws {
        let data = Self.sample(count: piece == 1 ? 20_000 : 300_000)
        for coding in Self.codings {
            let encoded = BodyCompression.compress(data, as: coding)
            for slice in [1000, 1 << 20] {
                let run = try Self.decode(encoded, coding: coding, piece: piece, slice: slice)
                #expect(run.output == data, "\(coding) piece \(piece) slice \(slice)")
                #expect(run.largestSlice <= slice)
            }
        }
    }

    @Test func concatenatedFramesDecodeToTheirConcatenation() throws {
        let first = Array("1\ta\n".utf8)
        let second = Array("2\tb\n".utf8)
        for coding in [ContentCoding.gzip, .lz4, .zstd, .xz] {
            let joined = BodyCompression.compress(first, as: coding) + BodyCompression.compress(second, as: coding)
            for piece in [1, 5, joined.count] {
                #expect(try Self.decode(joined, coding: coding, piece: piece).output == first + second, "\(coding)")
            }
        }
    }

    @Test func anEmptyBodyIsEmpty() throws {
        for coding in Self.codings {
            #expect(try Self.decode([], coding: coding, piece: 1).output == [])
        }
        #expect(try Self.decode([], coding: nil, blocks: true, piece: 1).output == [])
    }

    @Test func aTruncatedStreamIsRefusedWhenTheBodyEnds() {
        let data = Self.sample(count: 50_000)
        for coding in Self.codings {
            let encoded = BodyCompression.compress(data, as: coding)
            for cut in [1, 10, encoded.count / 2, encoded.count - 1] {
                let error = Self.error { _ = try Self.decode(Array(encoded.prefix(cut)), coding: coding, piece: 333) }
                #expect(error != nil, "\(coding) cut at \(cut)")
                // Truncated, or (a cut inside a header) invalid: never accepted.
                #expect(error?.code == .truncated || error?.code == .invalidData, "\(coding) \(String(describing: error))")
            }
        }
    }

    @Test func corruptInputIsInvalidWithClickHousesCode() {
        let expected: [ContentCoding: (Int, String)] = [
            .gzip: (354, "ZLIB_INFLATE_FAILED"), .deflate: (354, "ZLIB_INFLATE_FAILED"),
            .lz4: (618, "LZ4_DECODER_FAILED"), .zstd: (561, "ZSTD_DECODER_FAILED"),
            .br: (448, "BROTLI_READ_FAILED"), .xz: (554, "LZMA_STREAM_DECODER_FAILED"),
        ]
        for coding in Self.codings {
            let garbage: [UInt8] = Array("this is not compressed at all, not in any coding".utf8)
            let error = Self.error { _ = try Self.decode(garbage, coding: coding, piece: 7) }
            #expect(error?.code == .invalidData, "\(coding)")
            #expect(error?.clickHouseCode == expected[coding]?.0)
            #expect(error?.clickHouseName == expected[coding]?.1)
        }
    }

    @Test func trailingGarbageIsRefused() {
        let data = Self.sample(count: 10_000)
        for coding in Self.codings {
            let encoded = BodyCompression.compress(data, as: coding) + Array("garbage after the end".utf8)
            let error = Self.error { _ = try Self.decode(encoded, coding: coding, piece: 1000) }
            #expect(error != nil, "\(coding)")
            #expect(error?.code == .trailingData || error?.code == .invalidData, "\(coding)")
        }
    }

    @Test func aBombStopsAtTheLimitInBoundedSlices() throws {
        // 64 MiB of zeros; every coding shrinks it by 1000 or more, so feeding it whole is a bomb.
        let zeros = [UInt8](repeating: 0, count: 64 << 20)
        let limit = 1 << 20
        let slice = 64 * 1024
        for coding in Self.codings {
            let frame = BodyCompression.compress(zeros, as: coding)
            #expect(frame.count < 400_000, "\(coding): \(frame.count)")
            // Where frames may follow each other, 16 of them: 1 GiB of zeros.
            let bomb = coding == .br || coding == .deflate ? frame : Array([[UInt8]](repeating: frame, count: 16).joined())
            let decoder = BodyDecoders.make(coding: coding, clickHouseBlocks: false, limit: limit)!
            decoder.append(ByteBuffer(bytes: bomb))
            var output = ByteBuffer()
            var calls = 0
            let error = Self.error {
                while true {
                    let before = output.readableBytes
                    _ = try decoder.decode(into: &output, maxOutput: slice)
                    #expect(output.readableBytes - before <= slice)
                    calls += 1
                }
            }
            #expect(error?.code == .outputLimitExceeded, "\(coding)")
            #expect(output.readableBytes <= limit + 1)
            #expect(calls <= limit / slice + 1)
        }
    }

    @Test func aGibibyteOfZerosInBlocksNeverCostsMoreThanTheLimit() throws {
        // 1024 blocks of 1 MiB of zeros: the block past the limit is refused by its header.
        let block = CompressedBlockEncoder.block([UInt8](repeating: 0, count: 1 << 20), method: .lz4)
        var input: [UInt8] = []
        for _ in 0..<1024 { input += block }
        let error = Self.error { _ = try Self.decode(input, coding: nil, blocks: true, piece: 1 << 16, limit: 4 << 20) }
        #expect(error?.code == .outputLimitExceeded)
        var lying = block
        lying[16 + 5..<16 + 9] = [0, 0, 0, 0x40]  // decompressed size 1 GiB
        let lie = Self.error { _ = try Self.decode(lying, coding: nil, blocks: true, piece: 30, limit: 4 << 20) }
        #expect(lie?.code == .outputLimitExceeded)
    }

    // MARK: ClickHouse's compressed blocks

    /// An 18.16 server's `compress=1` answer (an exception's text, the one answer it flushes): one LZ4 block.
    static let answerFrom1816 = hex(
        "7202055a681f85aa8e6fff61353adda3825d00000065000000f028436f64653a2034362c20652e646973706c617954657874"
            + "2829203d2044423a3a457863657074696f6e3a20556e6b6e6f776e2066756e63120074206e6f737563680f000042003b77"
            + "68613b005074696f6e0a")
    static let answerText =
        "Code: 46, e.displayText() = DB::Exception: Unknown function nosuchfunction, e.what() = DB::Exception\n"

    static func hex(_ string: String) -> [UInt8] {
        var bytes: [UInt8] = []
        var index = string.startIndex
        while index < string.endIndex {
            let next = string.index(index, offsetBy: 2)
            bytes.append(UInt8(string[index..<next], radix: 16)!)
            index = next
        }
        return bytes
    }

    @Test func anAnswerOfClickHouse1816Decodes() throws {
        for piece in [1, 5, 25, 26, 1000] {
            let run = try Self.decode(Self.answerFrom1816, coding: nil, blocks: true, piece: piece, slice: 10)
            #expect(String(decoding: run.output, as: UTF8.self) == Self.answerText)
            #expect(run.largestSlice <= 10)
        }
    }

    @Test func theEncoderWritesWhat1816Wrote() {
        // The same header and checksum for the same data (LZ4 output may differ between liblz4 versions, so the
        // checksum is checked over the server's own data).
        let body = Array(Self.answerFrom1816[16...])
        #expect(CityHash128.hash(body).bytes == Array(Self.answerFrom1816[0..<16]))
    }

    @Test(arguments: CompressedBlockDecoder.Method.allCases)
    func blocksRoundTripAtAnySplit(method: CompressedBlockDecoder.Method) throws {
        let data = Self.sample(count: 100_000)
        let encoded = CompressedBlockEncoder.encode(data, method: method, blockSize: 30_000)
        for piece in [1, 17, 4096, encoded.count] {
            let run = try Self.decode(encoded, coding: nil, blocks: true, piece: piece, slice: 8192)
            #expect(run.output == data)
            #expect(run.largestSlice <= 8192)
        }
        // Methods may differ from block to block.
        let mixed =
            CompressedBlockEncoder.block(Array(data[0..<10]), method: .lz4)
            + CompressedBlockEncoder.block(Array(data[10..<20]), method: .zstd)
            + CompressedBlockEncoder.block(Array(data[20..<30]), method: .none)
        #expect(try Self.decode(mixed, coding: nil, blocks: true, piece: 3).output == Array(data[0..<30]))
    }

    @Test func blocksInsideAContentCodingDecode() throws {
        let data = Self.sample(count: 50_000)
        let blocks = CompressedBlockEncoder.encode(data, method: .lz4, blockSize: 10_000)
        for coding in Self.codings {
            let encoded = BodyCompression.compress(blocks, as: coding)
            for piece in [1, 999, encoded.count] where piece != 1 || coding == .lz4 {
                #expect(try Self.decode(encoded, coding: coding, blocks: true, piece: piece).output == data, "\(coding)")
            }
        }
    }

    @Test func aFlippedChecksumIsCode40() {
        var block = CompressedBlockEncoder.block(Array("1\ta\n".utf8), method: .lz4)
        block[3] ^= 0x10
        let error = Self.error { _ = try Self.decode(block, coding: nil, blocks: true, piece: 100) }
        #expect(error?.code == .checksumMismatch)
        #expect(error?.clickHouseCode == 40)
        #expect(error?.clickHouseName == "CHECKSUM_DOESNT_MATCH")
        #expect(error?.message.hasPrefix("Checksum doesn't match: corrupted data. Reference: ") == true)
        // A flipped data bit too.
        var data = CompressedBlockEncoder.block(Array("1\ta\n".utf8), method: .none)
        data[data.count - 1] ^= 1
        #expect(Self.error { _ = try Self.decode(data, coding: nil, blocks: true, piece: 100) }?.clickHouseCode == 40)
    }

    @Test func methodsTheProxyDoesNotDecodeAreRefused() {
        for (byte, code) in [(UInt8(0x91), BodyDecodingError.Code.unsupportedMethod), (0x92, .unsupportedMethod), (0x07, .unknownMethod), (0xFF, .unknownMethod)] {
            var block = CompressedBlockEncoder.block(Array("1\ta\n".utf8), method: .none)
            block[16] = byte
            let rehashed = CityHash128.hash(Array(block[16...])).bytes + Array(block[16...])
            let error = Self.error { _ = try Self.decode(rehashed, coding: nil, blocks: true, piece: 100) }
            #expect(error?.code == code)
            #expect(error?.clickHouseCode == 432)
        }
    }

    @Test func lyingSizesAreRefused() {
        let original = CompressedBlockEncoder.block(Array("some row data\n".utf8), method: .lz4)
        func rehash(_ block: [UInt8]) -> [UInt8] { CityHash128.hash(Array(block[16...])).bytes + Array(block[16...]) }
        // Compressed size below the header: CORRUPTED_DATA.
        var small = original
        small[17..<21] = [3, 0, 0, 0]
        #expect(Self.error { _ = try Self.decode(rehash(small), coding: nil, blocks: true, piece: 100) }?.clickHouseCode == 246)
        // Above 1 GiB: TOO_LARGE_SIZE_COMPRESSED.
        var huge = original
        huge[17..<21] = [1, 0, 0, 0x40]
        #expect(Self.error { _ = try Self.decode(rehash(huge), coding: nil, blocks: true, piece: 100) }?.clickHouseCode == 39)
        // A decompressed size the data does not have: CANNOT_DECOMPRESS.
        var wrong = original
        wrong[21] = wrong[21] &+ 1
        let error = Self.error { _ = try Self.decode(rehash(wrong), coding: nil, blocks: true, piece: 100) }
        #expect(error?.clickHouseCode == 271)
        #expect(error?.clickHouseName == "CANNOT_DECOMPRESS")
        // A truncated block: CANNOT_READ_ALL_DATA when the body ends.
        for cut in [1, 20, 25, original.count - 1] {
            let truncated = Self.error { _ = try Self.decode(Array(original.prefix(cut)), coding: nil, blocks: true, piece: 7) }
            #expect(truncated?.code == .truncated)
            #expect(truncated?.clickHouseCode == 33)
        }
    }
}
