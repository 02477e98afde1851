import CZstd
import NIOCore

/// zstd frames (`Content-Encoding: zstd`); several frames decode to their concatenation.
final class ZstdEngine: StreamEngine {
    private let context: OpaquePointer?
    /// The largest window a frame may ask for: 2^24 bytes (16 MiB) of decoder memory, enough for every level
    /// up to 19. A frame with a larger window (`--long`, `--ultra`) goes to ClickHouse as it came.
    static let windowLogMax: Int32 = 24

    init() {
        context = ZSTD_createDCtx()
        if let context { ZSTD_DCtx_setParameter(context, ZSTD_d_windowLogMax, Self.windowLogMax) }
    }

    deinit { ZSTD_freeDCtx(context) }

    func step(input: UnsafeRawBufferPointer, output: UnsafeMutableRawBufferPointer) -> DecodeStep {
        guard let context else { return DecodeStep(consumed: 0, written: 0, event: .failed("out of memory")) }
        var inBuffer = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        var outBuffer = ZSTD_outBuffer(dst: output.baseAddress, size: output.count, pos: 0)
        let result = ZSTD_decompressStream(context, &outBuffer, &inBuffer)
        if ZSTD_isError(result) != 0 {
            let message = String(cString: ZSTD_getErrorName(result))
            let event: DecodeStep.Event =
                ZSTD_getErrorCode(result) == ZSTD_error_frameParameter_windowTooLarge
                ? .unsupported(message) : .failed(message)
            return DecodeStep(consumed: inBuffer.pos, written: outBuffer.pos, event: event)
        }
        return DecodeStep(consumed: inBuffer.pos, written: outBuffer.pos, event: result == 0 ? .frameEnded : .running)
    }

    func startNextFrame() -> Bool { true }
}

/// One-shot zstd: batches sent upstream, test bodies, and ClickHouse's ZSTD blocks (method 0x90), which are
/// whole frames.
enum Zstd {
    static func compress(_ input: UnsafeRawBufferPointer, level: Int32 = 1, into output: inout ByteBuffer) {
        output.writeWithUnsafeMutableBytes(minimumWritableBytes: ZSTD_compressBound(input.count)) { space in
            let written = ZSTD_compress(space.baseAddress, space.count, input.baseAddress, input.count, level)
            precondition(ZSTD_isError(written) == 0, "ZSTD_compress failed")
            return written
        }
    }

    /// Decompresses one block that must decode to exactly `output.count` bytes; nil on success, else why not.
    static func decompressExactly(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer)
        -> String?
    {
        let written = ZSTD_decompress(output.baseAddress, output.count, input.baseAddress, input.count)
        if ZSTD_isError(written) != 0 { return String(cString: ZSTD_getErrorName(written)) }
        return written == output.count ? nil : "decoded \(written) bytes, the block header says \(output.count)"
    }
}
