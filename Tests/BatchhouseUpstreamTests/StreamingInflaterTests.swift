import NIOCore
import Testing

@testable import BatchhouseUpstream

/// Decoding a body while it arrives: any split of the input gives `Zlib.decompress`'s output, a bomb stops at
/// the limit after bounded work, and broken streams are refused.
@Suite("StreamingInflater")
struct StreamingInflaterTests {
    /// Feeds `input` in pieces of `piece` bytes, inflating `slice` bytes at a time; returns the output and the
    /// largest output of one `inflate` call.
    static func inflate(
        _ input: [UInt8], _ coding: ContentCoding, piece: Int, slice: Int = 1 << 20, limit: Int = 1 << 30
    ) throws(ZlibError) -> (output: [UInt8], largestSlice: Int) {
        let inflater = StreamingInflater(coding: coding, limit: limit)
        var output = ByteBuffer()
        var largest = 0
        var offset = 0
        while offset < input.count {
            let end = min(offset + piece, input.count)
            inflater.append(ByteBuffer(bytes: input[offset..<end]))
            offset = end
            while true {
                let before = output.readableBytes
                let progress = try inflater.inflate(into: &output, maxOutput: slice)
                largest = max(largest, output.readableBytes - before)
                if progress == .needInput { break }
            }
        }
        try inflater.finish()
        return (Array(output.readableBytesView), largest)
    }

    @Test(arguments: [1, 7, 4096, 1 << 20])
    func anySplitDecodesLikeTheOneShotDecoder(piece: Int) throws {
        let data = ZlibTests.sample(count: 200_000)
        for coding in [ContentCoding.gzip, .deflate] {
            let compressed = ZlibTests.compress(data, coding)
            #expect(try Self.inflate(compressed, coding, piece: piece).output == data)
        }
        // ClickHouse reads `deflate` as zlib-wrapped and refuses raw deflate (Code 354): so does the proxy.
        #expect(throws: ZlibError.self) { try Self.inflate(ZlibTests.rawDeflate(data), .deflate, piece: piece) }
    }

    @Test func concatenatedGzipMembersDecodeToTheirConcatenation() throws {
        let first = Array("1\ta\n".utf8)
        let second = Array("2\tb\n".utf8)
        let joined = ZlibTests.compress(first, .gzip) + ZlibTests.compress(second, .gzip)
        for piece in [1, 3, joined.count] {
            #expect(try Self.inflate(joined, .gzip, piece: piece).output == first + second)
        }
    }

    @Test func aBombStopsAtTheLimitInBoundedSlices() throws {
        // 64 MiB of zeros compress to about 64 KiB: a ratio of 1000.
        let zeros = [UInt8](repeating: 0, count: 64 << 20)
        let bomb = ZlibTests.compress(zeros, .gzip, level: 9)
        #expect(bomb.count < 100_000)
        let limit = 1 << 20
        let slice = 64 * 1024
        let inflater = StreamingInflater(coding: .gzip, limit: limit)
        inflater.append(ByteBuffer(bytes: bomb))
        var output = ByteBuffer()
        var calls = 0
        var largest = 0
        do {
            while true {
                calls += 1
                let before = output.readableBytes
                _ = try inflater.inflate(into: &output, maxOutput: slice)
                largest = max(largest, output.readableBytes - before)
            }
        } catch {
            #expect(error.code == .outputLimitExceeded)
        }
        // It stopped one byte past the limit, having never produced more than a slice per call.
        #expect(output.readableBytes == limit + 1)
        #expect(largest <= slice)
        #expect(calls <= limit / slice + 2)
    }

    @Test func aTruncatedStreamIsRefusedAtItsEnd() throws {
        let compressed = ZlibTests.compress(ZlibTests.sample(count: 10_000), .gzip)
        for coding in [ContentCoding.gzip] {
            #expect(throws: ZlibError.self) {
                _ = try Self.inflate(Array(compressed.dropLast(9)), coding, piece: 100)
            }
            do {
                _ = try Self.inflate(Array(compressed.dropLast(9)), coding, piece: 100)
            } catch {
                #expect(error.code == .truncated)
            }
        }
        // A deflate body of one byte cannot even be told zlib from raw.
        do {
            _ = try Self.inflate([0x78], .deflate, piece: 1)
            Issue.record("one byte accepted")
        } catch {
            #expect(error.code == .truncated)
        }
    }

    @Test func corruptAndTrailingBytesAreRefused() throws {
        var corrupt = ZlibTests.compress(ZlibTests.sample(count: 10_000), .gzip)
        for index in 20..<60 { corrupt[index] ^= 0x5A }
        do {
            _ = try Self.inflate(corrupt, .gzip, piece: 512)
            Issue.record("corrupt gzip accepted")
        } catch {
            #expect(error.code == .invalidData)
        }
        do {
            _ = try Self.inflate([0xde, 0xad, 0xbe, 0xef, 0x00, 0x11], .gzip, piece: 2)
            Issue.record("not gzip accepted")
        } catch {
            #expect(error.code == .invalidData)
        }
        let trailing = ZlibTests.compress(Array("1\n".utf8), .gzip) + Array("junk".utf8)
        do {
            _ = try Self.inflate(trailing, .gzip, piece: 3)
            Issue.record("trailing bytes accepted")
        } catch {
            #expect(error.code == .trailingData)
        }
    }

    @Test func anEmptyBodyIsEmpty() throws {
        let inflater = StreamingInflater(coding: .gzip, limit: 10)
        var output = ByteBuffer()
        #expect(try inflater.inflate(into: &output, maxOutput: 10) == .needInput)
        try inflater.finish()
        #expect(output.readableBytes == 0)
    }
}
