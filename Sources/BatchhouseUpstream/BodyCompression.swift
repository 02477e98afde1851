import NIOCore

/// One-shot compression in every content coding the proxy decodes: batches sent upstream (gzip, lz4, zstd) and
/// bodies for tests.
public enum BodyCompression {
    /// Compresses the readable bytes of `buffer` (its reader index is not moved), at a fast level.
    public static func compress(_ buffer: ByteBuffer, as coding: ContentCoding) -> ByteBuffer {
        if coding.isZlib { return Zlib.compress(buffer, as: coding) }
        var output = ByteBuffer()
        buffer.withUnsafeReadableBytes { input in
            switch coding {
            case .gzip, .deflate: break
            case .lz4: LZ4Frame.compress(input, into: &output)
            case .zstd: Zstd.compress(input, into: &output)
            case .br: Brotli.compress(input, into: &output)
            case .xz: Xz.compress(input, into: &output)
            }
        }
        return output
    }

    public static func compress(_ bytes: [UInt8], as coding: ContentCoding) -> [UInt8] {
        var buffer = compress(ByteBuffer(bytes: bytes), as: coding)
        return buffer.readBytes(length: buffer.readableBytes) ?? []
    }
}
