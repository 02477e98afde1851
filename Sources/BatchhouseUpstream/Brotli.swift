import CBrotli
import NIOCore

/// A brotli stream (`Content-Encoding: br`). Brotli has no concatenation: bytes after its end are trailing data.
final class BrotliEngine: StreamEngine {
    private let state: OpaquePointer?

    init() { state = BrotliDecoderCreateInstance(nil, nil, nil) }

    deinit { BrotliDecoderDestroyInstance(state) }

    func step(input: UnsafeRawBufferPointer, output: UnsafeMutableRawBufferPointer) -> DecodeStep {
        guard let state else { return DecodeStep(consumed: 0, written: 0, event: .failed("out of memory")) }
        var availableIn = input.count
        var nextIn = input.baseAddress?.assumingMemoryBound(to: UInt8.self)
        var availableOut = output.count
        var nextOut = output.baseAddress?.assumingMemoryBound(to: UInt8.self)
        let result = BrotliDecoderDecompressStream(state, &availableIn, &nextIn, &availableOut, &nextOut, nil)
        let consumed = input.count - availableIn
        let written = output.count - availableOut
        switch result {
        case BROTLI_DECODER_RESULT_SUCCESS:
            return DecodeStep(consumed: consumed, written: written, event: .frameEnded)
        case BROTLI_DECODER_RESULT_ERROR:
            let message = String(cString: BrotliDecoderErrorString(BrotliDecoderGetErrorCode(state)))
            return DecodeStep(consumed: consumed, written: written, event: .failed(message))
        default:
            return DecodeStep(consumed: consumed, written: written, event: .running)
        }
    }

    func startNextFrame() -> Bool { false }
}

enum Brotli {
    /// One-shot brotli at quality 4 (test bodies; batches go upstream as gzip, lz4 or zstd).
    static func compress(_ input: UnsafeRawBufferPointer, into output: inout ByteBuffer) {
        let bound = BrotliEncoderMaxCompressedSize(input.count)
        output.writeWithUnsafeMutableBytes(minimumWritableBytes: max(bound, 64)) { space in
            var size = space.count
            let ok = BrotliEncoderCompress(
                4, BROTLI_DEFAULT_WINDOW, BROTLI_MODE_GENERIC, input.count,
                input.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? UnsafePointer(bitPattern: 1),
                &size, space.baseAddress!.assumingMemoryBound(to: UInt8.self))
            precondition(ok == BROTLI_TRUE, "BrotliEncoderCompress failed")
            return size
        }
    }
}
