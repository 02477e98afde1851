import CLzma
import NIOCore

/// An .xz stream (`Content-Encoding: xz`); concatenated streams decode to their concatenation (stream padding
/// between them is not accepted).
final class XzEngine: StreamEngine {
    private let stream: UnsafeMutablePointer<lzma_stream>
    private var ready = false
    /// Decoder memory at most: xz -9 needs 65 MiB. A stream that needs more goes to ClickHouse as it came.
    static let memoryLimit: UInt64 = 96 << 20

    init() {
        stream = .allocate(capacity: 1)
        stream.initialize(to: bh_lzma_stream_init())
        ready = lzma_stream_decoder(stream, Self.memoryLimit, 0) == LZMA_OK
    }

    deinit {
        lzma_end(stream)
        stream.deallocate()
    }

    func step(input: UnsafeRawBufferPointer, output: UnsafeMutableRawBufferPointer) -> DecodeStep {
        guard ready else { return DecodeStep(consumed: 0, written: 0, event: .failed("out of memory")) }
        stream.pointee.next_in = input.baseAddress?.assumingMemoryBound(to: UInt8.self)
        stream.pointee.avail_in = input.count
        stream.pointee.next_out = output.baseAddress?.assumingMemoryBound(to: UInt8.self)
        stream.pointee.avail_out = output.count
        let result = lzma_code(stream, LZMA_RUN)
        let consumed = input.count - stream.pointee.avail_in
        let written = output.count - stream.pointee.avail_out
        stream.pointee.next_in = nil
        stream.pointee.avail_in = 0
        stream.pointee.next_out = nil
        stream.pointee.avail_out = 0
        switch result {
        case LZMA_OK, LZMA_BUF_ERROR:
            return DecodeStep(consumed: consumed, written: written, event: .running)
        case LZMA_STREAM_END:
            return DecodeStep(consumed: consumed, written: written, event: .frameEnded)
        case LZMA_MEMLIMIT_ERROR:
            return DecodeStep(consumed: consumed, written: written, event: .unsupported("the stream needs more memory than \(Self.memoryLimit >> 20) MiB"))
        case LZMA_FORMAT_ERROR:
            return DecodeStep(consumed: consumed, written: written, event: .failed("not in the .xz format"))
        case LZMA_OPTIONS_ERROR:
            return DecodeStep(consumed: consumed, written: written, event: .failed("unsupported options"))
        case LZMA_DATA_ERROR:
            return DecodeStep(consumed: consumed, written: written, event: .failed("corrupt data"))
        default:
            return DecodeStep(consumed: consumed, written: written, event: .failed("lzma_code failed with \(result.rawValue)"))
        }
    }

    func startNextFrame() -> Bool {
        ready = lzma_stream_decoder(stream, Self.memoryLimit, 0) == LZMA_OK
        return true
    }
}

enum Xz {
    /// One-shot .xz at preset 1 (test bodies).
    static func compress(_ input: UnsafeRawBufferPointer, into output: inout ByteBuffer) {
        let bound = lzma_stream_buffer_bound(input.count)
        output.writeWithUnsafeMutableBytes(minimumWritableBytes: bound) { space in
            var position = 0
            let result = lzma_easy_buffer_encode(
                1, LZMA_CHECK_CRC64, nil, input.baseAddress?.assumingMemoryBound(to: UInt8.self), input.count,
                space.baseAddress!.assumingMemoryBound(to: UInt8.self), &position, space.count)
            precondition(result == LZMA_OK, "lzma_easy_buffer_encode failed: \(result.rawValue)")
            return position
        }
    }
}
