import CZlib
import NIOCore

/// Decodes a gzip or deflate request body while it arrives, in bounded slices: the caller appends each received
/// piece and asks for at most `maxOutput` decoded bytes at a time, so one piece that inflates to a lot (a zip
/// bomb) never costs more than a slice of work and memory per call. Working memory is zlib's state (about 40 KiB)
/// plus the compressed bytes not yet inflated, which the caller bounds by not reading while output is pending.
/// The decoded total stops at `limit` (`.outputLimitExceeded`). Accepts gzip with
/// several members, and for `.deflate` zlib-wrapped data only, as ClickHouse does (docs/architecture.md, "Bounds on
/// clients").
public final class StreamingInflater {
    public enum Progress: Sendable, Equatable {
        /// Every byte appended so far is decoded; append more (or `finish`).
        case needInput
        /// The slice is full: call `inflate` again before appending more.
        case outputPending
    }

    private enum Mode {
        /// `.deflate` before its first two bytes are seen.
        case undecided
        case gzip
        case zlib
        case raw
    }

    private let coding: ContentCoding
    private let limit: Int
    private var stream: ZStream?
    private var mode: Mode
    private var pending = ByteBuffer()
    /// The compressed stream reached its end marker (a new gzip member may follow).
    private var ended = false
    /// While a zlib-wrapped guess has produced nothing, the input it consumed, to retry as raw deflate.
    private var retained: ByteBuffer?
    public private(set) var totalOutput = 0

    /// Input kept for the raw-deflate retry; beyond it a zlib-looking stream that fails is simply invalid.
    private static let retainLimit = 64 * 1024

    public init(coding: ContentCoding, limit: Int) {
        self.coding = coding
        self.limit = limit
        // `deflate` is zlib-wrapped only, as ClickHouse reads it (it refuses raw deflate with Code 354).
        mode = coding == .gzip ? .gzip : .zlib
    }

    /// Compressed bytes not inflated yet.
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

    /// Inflates appended input into `output`, at most `maxOutput` bytes in this call.
    public func inflate(into output: inout ByteBuffer, maxOutput: Int) throws(ZlibError) -> Progress {
        var produced = 0
        while pending.readableBytes > 0 {
            if produced >= maxOutput { return .outputPending }
            if ended {
                // Only another gzip member may follow the end of a stream.
                guard mode == .gzip, pending.readableBytesView.first == 0x1F else {
                    throw ZlibError(
                        code: .trailingData,
                        message: "\(pending.readableBytes) bytes after the end of the compressed stream")
                }
                stream?.resetInflate()
                ended = false
            }
            if stream == nil {
                guard try start() else { return .needInput }
            }
            guard let stream else { return .needInput }
            let room = limit - totalOutput
            let allowed = min(maxOutput - produced, room == Int.max ? room : room + 1)
            var status = Z_OK
            var written = 0
            let before = pending.readableBytes
            pending.withUnsafeReadableBytes { input in
                stream.setInput(input, offset: 0, count: min(input.count, Int(UInt32.max)))
                output.writeWithUnsafeMutableBytes(minimumWritableBytes: min(64 * 1024, max(allowed, 1))) { space in
                    let (count, result) = stream.run(output: space, limit: allowed, flush: Z_NO_FLUSH)
                    status = result
                    written = count
                    return count
                }
            }
            let consumed = before - stream.availableInput
            stream.setInput(UnsafeRawBufferPointer(start: nil, count: 0), offset: 0, count: 0)
            if retained != nil {
                if written > 0 || mode != .zlib {
                    retained = nil
                } else if let slice = pending.getSlice(at: pending.readerIndex, length: consumed) {
                    var slice = slice
                    retained!.writeBuffer(&slice)
                    if retained!.readableBytes > Self.retainLimit { retained = nil }
                }
            }
            pending.moveReaderIndex(forwardBy: consumed)
            produced += written
            totalOutput += written
            if totalOutput > limit {
                throw ZlibError(
                    code: .outputLimitExceeded, message: "decompressed body exceeds the limit of \(limit) bytes")
            }
            switch status {
            case Z_OK:
                continue
            case Z_STREAM_END:
                ended = true
            case Z_BUF_ERROR:
                // No progress possible: the output slice is full, or the input is used up mid-stream.
                if written == 0 && consumed == 0 && pending.readableBytes > 0 && allowed > 0 {
                    throw ZlibError(code: .invalidData, message: "inflate made no progress")
                }
            case Z_DATA_ERROR, Z_NEED_DICT:
                if mode == .zlib, var retry = retained {
                    // A raw deflate stream whose first two bytes happen to form a valid zlib header.
                    retry.writeBuffer(&pending)
                    pending = retry
                    retained = nil
                    mode = .raw
                    self.stream = try ZStream(inflateWindowBits: -15)
                    continue
                }
                throw ZlibError(code: .invalidData, message: "invalid compressed data: \(stream.message ?? "unknown")")
            default:
                throw ZlibError(code: .zlibFailure, message: "inflate failed with status \(status)")
            }
        }
        return .needInput
    }

    /// The body ended. Throws `.truncated` when the compressed stream did not reach its end marker. An empty body
    /// is an empty output, as `Zlib.decompress` has it.
    public func finish() throws(ZlibError) {
        if stream == nil && pending.readableBytes == 0 { return }
        guard ended && pending.readableBytes == 0 else {
            throw ZlibError(code: .truncated, message: "compressed stream ends before its end marker")
        }
    }

    /// Creates the zlib stream once the mode is known; false while a deflate body has fewer than two bytes.
    private func start() throws(ZlibError) -> Bool {
        if mode == .undecided {
            guard pending.readableBytes >= 2 else { return false }
            let isZlib = pending.withUnsafeReadableBytes { Zlib.looksLikeZlibHeader($0) }
            mode = isZlib ? .zlib : .raw
            if isZlib { retained = ByteBuffer() }
        }
        switch mode {
        case .gzip: stream = try ZStream(inflateWindowBits: 15 + 16)
        case .zlib: stream = try ZStream(inflateWindowBits: 15)
        case .raw, .undecided: stream = try ZStream(inflateWindowBits: -15)
        }
        return true
    }
}

/// `StreamingInflater` as a `BodyDecoder`, its `ZlibError`s turned into what ClickHouse answers for a bad gzip
/// or deflate body (Code 354, ZLIB_INFLATE_FAILED).
final class InflatingDecoder: BodyDecoder {
    private let inflater: StreamingInflater
    private let coding: ContentCoding
    private let limit: Int

    init(coding: ContentCoding, limit: Int) {
        inflater = StreamingInflater(coding: coding, limit: limit)
        self.coding = coding
        self.limit = limit
    }

    var pendingInput: Int { inflater.pendingInput }
    var totalOutput: Int { inflater.totalOutput }

    func append(_ input: ByteBuffer) { inflater.append(input) }

    func decode(into output: inout ByteBuffer, maxOutput: Int) throws(BodyDecodingError) -> DecodeProgress {
        do {
            return try inflater.inflate(into: &output, maxOutput: maxOutput) == .needInput ? .needInput : .outputPending
        } catch {
            throw translate(error)
        }
    }

    func finish() throws(BodyDecodingError) {
        do { try inflater.finish() } catch { throw translate(error) }
    }

    private func translate(_ error: ZlibError) -> BodyDecodingError {
        let code: BodyDecodingError.Code
        switch error.code {
        case .outputLimitExceeded: return .limitExceeded(limit)
        case .invalidData: code = .invalidData
        case .truncated: code = .truncated
        case .trailingData: code = .trailingData
        case .zlibFailure: code = .libraryFailure
        }
        return .coding(coding, code, error.message)
    }
}
