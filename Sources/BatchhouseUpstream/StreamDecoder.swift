import NIOCore

/// One step of a C streaming decoder (LZ4F_decompress, ZSTD_decompressStream, BrotliDecoderDecompressStream,
/// lzma_code): as much of `input` as it takes, into at most `output.count` bytes.
struct DecodeStep {
    enum Event {
        /// Progress, or none possible until more input or output room.
        case running
        /// A frame (stream) ended exactly at `consumed`.
        case frameEnded
        case failed(String)
        /// Valid data the proxy will not decode within its bounds (a window or dictionary larger than it
        /// allows): ClickHouse can take the body as it came.
        case unsupported(String)
    }

    var consumed: Int
    var written: Int
    var event: Event
}

/// What a library has to offer `StreamDecoder`. The engine owns the library's state and frees it in deinit.
protocol StreamEngine: AnyObject {
    func step(input: UnsafeRawBufferPointer, output: UnsafeMutableRawBufferPointer) -> DecodeStep
    /// After a frame ended, whether more input may start another one (concatenated .lz4/.zst/.xz files do), and
    /// prepares for it. Brotli has one stream: false.
    func startNextFrame() -> Bool
}

/// The bounded slicing, limit and end-of-stream rules shared by every library decoder, as `StreamingInflater`
/// has them for zlib.
final class StreamDecoder<Engine: StreamEngine>: BodyDecoder {
    private let engine: Engine
    private let coding: ContentCoding
    private let limit: Int
    private var pending = ByteBuffer()
    /// At a frame boundary: nothing of a frame is half decoded (true before the first byte).
    private var atBoundary = true
    /// A frame ended and no byte of another was given to the engine yet.
    private var frameJustEnded = false
    /// The last step filled its output room: the library may hold more output without any input.
    private var outputMayBePending = false
    private(set) var totalOutput = 0

    init(engine: Engine, coding: ContentCoding, limit: Int) {
        self.engine = engine
        self.coding = coding
        self.limit = limit
    }

    var pendingInput: Int { pending.readableBytes }

    func append(_ input: ByteBuffer) {
        guard input.readableBytes > 0 else { return }
        if pending.readableBytes == 0 {
            pending = input
        } else {
            var input = input
            if pending.readerIndex > 64 * 1024 { pending.discardReadBytes() }
            pending.writeBuffer(&input)
        }
    }

    func decode(into output: inout ByteBuffer, maxOutput: Int) throws(BodyDecodingError) -> DecodeProgress {
        var produced = 0
        while pending.readableBytes > 0 || outputMayBePending {
            if produced >= maxOutput { return .outputPending }
            if frameJustEnded && pending.readableBytes > 0 {
                guard engine.startNextFrame() else {
                    throw .coding(
                        coding, .trailingData, "\(pending.readableBytes) bytes after the end of the \(coding) stream")
                }
                frameJustEnded = false
            }
            let left = limit - totalOutput
            let allowed = max(1, min(maxOutput - produced, left == Int.max ? left : left + 1))
            var step = DecodeStep(consumed: 0, written: 0, event: .running)
            // The room given to the library: the buffer may have less than `allowed` free.
            var room = 0
            _ = pending.withUnsafeReadableBytes { input in
                output.writeWithUnsafeMutableBytes(minimumWritableBytes: min(64 * 1024, allowed)) { space in
                    let bounded = UnsafeMutableRawBufferPointer(rebasing: space.prefix(allowed))
                    room = bounded.count
                    step = engine.step(input: input, output: bounded)
                    return step.written
                }
            }
            pending.moveReaderIndex(forwardBy: step.consumed)
            produced += step.written
            totalOutput += step.written
            if totalOutput > limit { throw .limitExceeded(limit) }
            if step.consumed > 0 { atBoundary = false }
            outputMayBePending = step.written == room
            switch step.event {
            case .failed(let message):
                throw .coding(coding, .invalidData, "cannot decode the \(coding) body: \(message)")
            case .unsupported(let message):
                throw .coding(coding, .unsupportedMethod, "cannot decode the \(coding) body within bounds: \(message)")
            case .frameEnded:
                atBoundary = true
                frameJustEnded = true
                outputMayBePending = false
            case .running:
                if step.consumed == 0 && step.written == 0 && !outputMayBePending {
                    // The library holds a partial header or block and needs more bytes.
                    if pending.readableBytes > 0 {
                        throw .coding(coding, .invalidData, "the \(coding) decoder made no progress")
                    }
                }
            }
        }
        return .needInput
    }

    func finish() throws(BodyDecodingError) {
        guard atBoundary && pending.readableBytes == 0 else {
            throw .coding(coding, .truncated, "the \(coding) stream ends before its end")
        }
    }
}
