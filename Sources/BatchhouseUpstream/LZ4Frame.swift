import CLZ4
import NIOCore

/// The LZ4 frame format (`Content-Encoding: lz4`, what clickhouse-connect sends by default). Concatenated frames
/// decode to the concatenation, as the lz4 tool has them; LZ4F_decompress starts the next frame by itself.
final class LZ4FrameEngine: StreamEngine {
    private var context: OpaquePointer?

    init() {
        // Fails only when out of memory; `step` then reports it.
        _ = LZ4F_createDecompressionContext(&context, UInt32(LZ4F_VERSION))
    }

    deinit { LZ4F_freeDecompressionContext(context) }

    func step(input: UnsafeRawBufferPointer, output: UnsafeMutableRawBufferPointer) -> DecodeStep {
        guard let context else { return DecodeStep(consumed: 0, written: 0, event: .failed("out of memory")) }
        var sourceSize = input.count
        var destinationSize = output.count
        let hint = LZ4F_decompress(context, output.baseAddress, &destinationSize, input.baseAddress, &sourceSize, nil)
        if LZ4F_isError(hint) != 0 {
            return DecodeStep(
                consumed: sourceSize, written: destinationSize,
                event: .failed(String(cString: LZ4F_getErrorName(hint))))
        }
        return DecodeStep(consumed: sourceSize, written: destinationSize, event: hint == 0 ? .frameEnded : .running)
    }

    func startNextFrame() -> Bool { true }
}

/// One-shot LZ4 frame compression (batches sent upstream, test bodies).
enum LZ4Frame {
    static func compress(_ input: UnsafeRawBufferPointer, into output: inout ByteBuffer) {
        var preferences = LZ4F_preferences_t()
        preferences.frameInfo.contentChecksumFlag = LZ4F_contentChecksumEnabled
        let bound = LZ4F_compressFrameBound(input.count, &preferences)
        output.writeWithUnsafeMutableBytes(minimumWritableBytes: bound) { space in
            let written = LZ4F_compressFrame(space.baseAddress, space.count, input.baseAddress, input.count, &preferences)
            precondition(LZ4F_isError(written) == 0, "LZ4F_compressFrame failed")
            return written
        }
    }
}
