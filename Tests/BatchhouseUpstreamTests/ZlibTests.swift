import NIOCore
import Testing

@testable import BatchhouseUpstream

@Suite("Zlib")
struct ZlibTests {
    /// Text that compresses well plus bytes that do not, so both code paths of deflate run.
    static func sample(count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { index in
            index % 3 == 0 ? UInt8.random(in: 0...255, using: &generator) : UInt8(ascii: "a") + UInt8(index % 26)
        }
    }

    static func compress(_ bytes: [UInt8], _ coding: ContentCoding, level: Int32 = 1) -> [UInt8] {
        bytes.withUnsafeBytes { Zlib.compress($0, as: coding, level: level) }
    }

    static func decompress(_ bytes: [UInt8], _ coding: ContentCoding, limit: Int = 1 << 30) throws(ZlibError) -> [UInt8] {
        let result: Result<[UInt8], ZlibError> = bytes.withUnsafeBytes { input in
            Result { () throws(ZlibError) in try Zlib.decompress(input, as: coding, limit: limit) }
        }
        return try result.get()
    }

    /// Raw deflate (no zlib header), as some clients send for `Content-Encoding: deflate`.
    static func rawDeflate(_ bytes: [UInt8]) -> [UInt8] {
        let stream = ZStream(deflateLevel: 6, windowBits: -15)
        var output = ByteBuffer()
        bytes.withUnsafeBytes { input in
            stream.setInput(input, offset: 0, count: input.count)
            while true {
                var status: Int32 = 0
                output.writeWithUnsafeMutableBytes(minimumWritableBytes: 1024) { space in
                    let (written, result) = stream.run(output: space, limit: space.count, flush: 4 /* Z_FINISH */)
                    status = result
                    return written
                }
                if status == 1 /* Z_STREAM_END */ { break }
            }
        }
        return Array(output.readableBytesView)
    }

    @Test("round trip", arguments: [ContentCoding.gzip, .deflate], [0, 1, 1000, 300_000])
    func roundTrip(coding: ContentCoding, count: Int) throws {
        let original = Self.sample(count: count)
        let compressed = Self.compress(original, coding)
        #expect(try Self.decompress(compressed, coding) == original)
        if count >= 1000 {
            #expect(compressed.count < original.count)
        }
    }

    @Test("gzip output has the gzip magic, deflate output a zlib header")
    func framing() {
        let gzip = Self.compress(Array("hello".utf8), .gzip)
        #expect(Array(gzip.prefix(2)) == [0x1F, 0x8B])
        let deflate = Self.compress(Array("hello".utf8), .deflate)
        #expect(deflate.withUnsafeBytes { Zlib.looksLikeZlibHeader($0) })
    }

    @Test("decodes gzip made by the gzip tool")
    func gzipToolOutput() throws {
        // printf 'hello\n' | gzip -n
        let bytes: [UInt8] = [
            0x1F, 0x8B, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xCB, 0x48,
            0xCD, 0xC9, 0xC9, 0xE7, 0x02, 0x00, 0x20, 0x30, 0x3A, 0x36, 0x06, 0x00,
            0x00, 0x00,
        ]
        #expect(try Self.decompress(bytes, .gzip) == Array("hello\n".utf8))
    }

    @Test("deflate accepts zlib-wrapped and raw streams")
    func deflateBothForms() throws {
        // Python: zlib.compress(b"hello\n") and the same stream without header and checksum.
        let wrapped: [UInt8] = [120, 156, 203, 72, 205, 201, 201, 231, 2, 0, 8, 75, 2, 31]
        let raw: [UInt8] = [203, 72, 205, 201, 201, 231, 2, 0]
        #expect(try Self.decompress(wrapped, .deflate) == Array("hello\n".utf8))
        #expect(try Self.decompress(raw, .deflate) == Array("hello\n".utf8))

        let original = Self.sample(count: 100_000)
        #expect(try Self.decompress(Self.rawDeflate(original), .deflate) == original)
    }

    @Test("a raw stream that starts like a zlib header still decodes")
    func rawStreamWithZlibLookingHeader() throws {
        // zlib never writes such a stream, but a valid one exists: a stored block whose ignored
        // padding bits make the first byte 0x08 and whose length (29) makes the second byte pass
        // the zlib header checksum. Read as zlib, it fails; read as raw deflate, it is fine.
        let data = Array("twenty-nine bytes of payload!".utf8)
        try #require(data.count == 29)
        let raw: [UInt8] = [0x08, 29, 0, ~29, 0xFF] + data + [0x01, 0x00, 0x00, 0xFF, 0xFF]
        #expect(raw.withUnsafeBytes { Zlib.looksLikeZlibHeader($0) })
        #expect(try Self.decompress(raw, .deflate) == data)
    }

    @Test("multi-member gzip decodes to the concatenation of its members")
    func multiMember() throws {
        let first = Self.sample(count: 50_000)
        let second = Array("second member\n".utf8)
        let third = Self.sample(count: 10)
        let joined = Self.compress(first, .gzip) + Self.compress(second, .gzip) + Self.compress(third, .gzip)
        #expect(try Self.decompress(joined, .gzip) == first + second + third)
    }

    @Test("output over the limit is an error, output at the limit is not")
    func limit() throws {
        let zeros = [UInt8](repeating: 0, count: 10 * 1024 * 1024)
        let bomb = Self.compress(zeros, .gzip, level: 9)
        #expect(bomb.count < 20_000)
        #expect(throws: ZlibError.self) { try Self.decompress(bomb, .gzip, limit: 1024 * 1024) }
        do {
            _ = try Self.decompress(bomb, .gzip, limit: 1024 * 1024)
        } catch {
            #expect(error.code == .outputLimitExceeded)
        }
        #expect(try Self.decompress(bomb, .gzip, limit: zeros.count).count == zeros.count)
        do {
            _ = try Self.decompress(bomb, .gzip, limit: zeros.count - 1)
            Issue.record("expected outputLimitExceeded")
        } catch {
            #expect(error.code == .outputLimitExceeded)
        }
        // The limit covers all members together.
        let twoMembers = Self.compress(Array(zeros[0..<1000]), .gzip) + Self.compress(Array(zeros[0..<1000]), .gzip)
        do {
            _ = try Self.decompress(twoMembers, .gzip, limit: 1500)
            Issue.record("expected outputLimitExceeded")
        } catch {
            #expect(error.code == .outputLimitExceeded)
        }
    }

    @Test("truncated, corrupt and trailing input are errors")
    func badInput() throws {
        let compressed = Self.compress(Self.sample(count: 10_000), .gzip)
        func code(_ bytes: [UInt8], _ coding: ContentCoding) -> ZlibError.Code? {
            do {
                _ = try Self.decompress(bytes, coding)
                return nil
            } catch {
                return error.code
            }
        }
        #expect(code(Array(compressed.dropLast(20)), .gzip) == .truncated)
        #expect(code(Array("not gzip at all".utf8), .gzip) == .invalidData)
        #expect(code(compressed + [1, 2, 3], .gzip) == .trailingData)
        var flipped = compressed
        flipped[flipped.count / 2] ^= 0xFF
        #expect(code(flipped, .gzip) != nil)
        #expect(code(Self.compress(Array("x".utf8), .deflate) + [0], .deflate) == .trailingData)
    }

    @Test("empty input decodes to empty output")
    func empty() throws {
        #expect(try Self.decompress([], .gzip).isEmpty)
        #expect(try Self.decompress([], .deflate).isEmpty)
    }

    @Test("ByteBuffer helpers leave the input's reader index alone")
    func byteBuffers() throws {
        var input = ByteBuffer(string: "prefix")
        input.moveReaderIndex(forwardBy: 6)
        input.writeString(String(repeating: "INSERT rows\n", count: 1000))
        let compressed = Zlib.compress(input, as: .gzip)
        #expect(input.readerIndex == 6)
        let decoded = try Zlib.decompress(compressed, as: .gzip, limit: 1 << 20)
        #expect(decoded == input)
    }

    @Test(
        "Content-Encoding values",
        arguments: [
            ("gzip", ContentCoding.gzip), ("GZIP", .gzip), (" x-gzip ", .gzip), ("deflate", .deflate),
            ("Deflate\t", .deflate), ("br", .br), ("ZSTD", .zstd), ("lz4", .lz4), ("bz2", nil), ("gzip, deflate", nil), ("", nil), ("identity", nil),
        ] as [(String, ContentCoding?)]
    )
    func headerValues(value: String, expected: ContentCoding?) {
        #expect(ContentCoding(headerValue: value) == expected)
    }
}
