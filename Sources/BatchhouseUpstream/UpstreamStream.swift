import CCurl
import NIOCore

/// Receives the events of one ``UpstreamStream``. Every method is called on the curl thread, one at a
/// time, so an implementation hops to its own event loop and returns quickly: while it runs, no other
/// transfer of the same ``CurlClient`` makes progress.
public protocol UpstreamStreamDelegate: AnyObject, Sendable {
    /// The final response head (interim `100 Continue` responses are skipped). Called once, before the
    /// first body byte; for an empty body, before `didFinishWith`. Not called when the transfer fails
    /// before a response head arrived.
    func upstreamStream(_ stream: UpstreamStream, didReceiveHead status: Int, headers: [(String, String)])

    /// A piece of the response body, valid only during the call. Return false to pause the response:
    /// libcurl keeps these bytes and delivers them again (possibly together with more) after
    /// ``UpstreamStream/resumeResponse()``.
    func upstreamStream(_ stream: UpstreamStream, didReceiveBody bytes: UnsafeRawBufferPointer) -> Bool

    /// The queued request body fell below ``UpstreamStream/requestBodyLowWatermark``, or libcurl has
    /// sent all of it and waits for more. A caller that stopped reading its client (because
    /// ``UpstreamStream/pendingRequestBodyBytes`` was above its high watermark) reads again.
    func upstreamStreamWantsMoreRequestBody(_ stream: UpstreamStream)

    /// The end: `nil` after the whole response was delivered, otherwise why it stopped. Called exactly
    /// once per stream. Nothing is called after it, and the stream lets go of its delegate.
    ///
    /// It can come before the request body is complete: a server may answer early (an error for an
    /// INSERT it rejected) and libcurl then stops sending. A caller waiting for
    /// `upstreamStreamWantsMoreRequestBody` stops waiting here too; later writes are ignored.
    func upstreamStream(_ stream: UpstreamStream, didFinishWith error: UpstreamError?)
}

/// One transfer that streams its request body up and its response down, for proxying.
///
/// Thread model: the public methods may be called from any thread. They change state behind a lock
/// and, when libcurl has to act (resume a paused direction, cancel), queue the stream on the curl
/// thread and wake it. Everything that touches the easy handle runs on the curl thread.
public final class UpstreamStream: Sendable {
    /// See ``UpstreamStreamDelegate/upstreamStreamWantsMoreRequestBody(_:)``.
    public static let requestBodyLowWatermark = 64 * 1024

    let request: UpstreamRequest
    let framing: RequestFraming
    let driver: CurlMultiThread
    /// State shared between the caller's threads and the curl thread.
    let shared: Locked<SharedState>
    /// State of the curl thread alone.
    let curl: CurlSideState

    struct SharedState {
        var body = CircularBuffer<ByteBuffer>()
        var pendingBytes = 0
        var sentBytes = 0
        var bodyFinished = false
        /// A copy of the whole body (``CurlClient/execute(_:)`` only), so that libcurl can rewind
        /// when it resends the request on a fresh connection after a reused one turned out dead.
        var rewindableBody: ByteBuffer?
        /// libcurl rewound a body it had already started to send: the request went out on a connection that
        /// then closed without an answer, so the server may have run it even if the resend fails.
        var resentAfterSending = false
        /// The read callback returned CURL_READFUNC_PAUSE and nobody has resumed it yet.
        var sendPaused = false
        var wantsMoreNotified = false
        var resumeRequested = false
        var cancelRequested = false
        /// The stream is queued on the curl thread for a look at the flags above.
        var pokeQueued = false
        var finished = false
    }

    /// Touched only on the curl thread (and, for a stream the curl thread never saw, by the thread
    /// that failed to hand it over), hence unchecked.
    final class CurlSideState: @unchecked Sendable {
        /// Released after `didFinishWith`, so a delegate that holds its stream makes no lasting cycle.
        var delegate: (any UpstreamStreamDelegate)?
        var easy: CurlEasy?
        var head = ResponseHeadParser()
        var receivePaused = false
        var finished = false
        /// Credentials to scrub from libcurl's messages, in case a server echoes them.
        var secrets: [String] = []
    }

    init(
        request: UpstreamRequest,
        framing: RequestFraming,
        delegate: any UpstreamStreamDelegate,
        driver: CurlMultiThread,
        rewindable: Bool
    ) {
        self.request = request
        self.framing = framing
        self.driver = driver
        var state = SharedState()
        if let body = request.body, body.readableBytes > 0 {
            state.body.append(body)
            state.pendingBytes = body.readableBytes
            if rewindable { state.rewindableBody = body }
        }
        state.bodyFinished = !framing.hasBody
        shared = Locked(state)
        curl = CurlSideState()
        curl.delegate = delegate
    }

    // MARK: Public API

    /// Queues `bytes` for the request body. Ignored after ``finishRequestBody()`` or the end of the
    /// transfer.
    public func writeRequestBody(_ bytes: ByteBuffer) {
        guard bytes.readableBytes > 0 else { return }
        let poke = shared.withLock { state -> Bool in
            guard !state.finished, !state.bodyFinished else { return false }
            state.body.append(bytes)
            state.pendingBytes += bytes.readableBytes
            state.wantsMoreNotified = false
            return state.sendPaused && Self.queuePoke(&state)
        }
        if poke { driver.poke(self) }
    }

    /// Marks the end of the request body. With a declared length, the bytes written must add up to it
    /// (libcurl fails the transfer otherwise).
    public func finishRequestBody() {
        let poke = shared.withLock { state -> Bool in
            guard !state.finished, !state.bodyFinished else { return false }
            state.bodyFinished = true
            return state.sendPaused && Self.queuePoke(&state)
        }
        if poke { driver.poke(self) }
    }

    /// Request body bytes written but not yet taken by libcurl.
    public var pendingRequestBodyBytes: Int {
        shared.withLock { $0.pendingBytes }
    }

    /// Resumes the response after the delegate returned false from `didReceiveBody`.
    public func resumeResponse() {
        let poke = shared.withLock { state -> Bool in
            guard !state.finished else { return false }
            state.resumeRequested = true
            return Self.queuePoke(&state)
        }
        if poke { driver.poke(self) }
    }

    /// Stops the transfer; the delegate gets `didFinishWith` an error of kind `.cancelled` unless the
    /// transfer already ended.
    public func cancel() {
        let poke = shared.withLock { state -> Bool in
            guard !state.finished, !state.cancelRequested else { return false }
            state.cancelRequested = true
            return Self.queuePoke(&state)
        }
        if poke { driver.poke(self) }
    }

    private static func queuePoke(_ state: inout SharedState) -> Bool {
        guard !state.pokeQueued else { return false }
        state.pokeQueued = true
        return true
    }

    // MARK: Curl thread

    var isCancelRequested: Bool { shared.withLock { $0.cancelRequested } }

    /// Takes an easy handle from `pool` (new, or reset after an earlier transfer: every option starts at
    /// libcurl's default either way) and sets every option this transfer needs. Returns nil (after finishing
    /// the stream) when libcurl refused an option; that handle is freed, not pooled.
    func makeEasyHandle(from pool: CurlEasyPool) -> CurlEasy? {
        let easy = pool.take()
        let userdata = Unmanaged.passUnretained(self).toOpaque()

        easy.set(CURLOPT_URL, request.url)
        easy.set(CURLOPT_NOSIGNAL, true)
        easy.set(CURLOPT_TCP_NODELAY, true)
        easy.set(CURLOPT_TCP_KEEPALIVE, true)
        easy.set(CURLOPT_HTTP_VERSION, BH_CURL_HTTP_VERSION_1_1)
        easy.set(CURLOPT_PROTOCOLS_STR, "http,https")
        easy.set(CURLOPT_FOLLOWLOCATION, false)
        // The path goes upstream as the client sent it (no "/../" folding), and not through a proxy
        // named by http_proxy / HTTP_PROXY in the environment, which libcurl would otherwise honour.
        easy.set(CURLOPT_PATH_AS_IS, true)
        easy.set(CURLOPT_PROXY, "")
        // Bytes pass through as received: no Accept-Encoding is added, and a Content-Encoding of
        // the response is not undone.
        easy.set(CURLOPT_HTTP_CONTENT_DECODING, false)
        easy.set(CURLOPT_BUFFERSIZE, 64 * 1024)
        easy.set(CURLOPT_UPLOAD_BUFFERSIZE, 64 * 1024)
        easy.set(CURLOPT_CONNECTTIMEOUT_MS, request.connectTimeout.curlMilliseconds)
        easy.set(CURLOPT_TIMEOUT_MS, request.timeout?.curlMilliseconds ?? 0)
        easy.set(CURLOPT_MAXAGE_CONN, driver.maxIdleSeconds)

        switch framing.verb {
        case .get: easy.set(CURLOPT_HTTPGET, true)
        case .head: easy.set(CURLOPT_NOBODY, true)
        case .post: easy.set(CURLOPT_POST, true)
        }
        if let method = framing.customMethod { easy.set(CURLOPT_CUSTOMREQUEST, method) }
        if let size = framing.postFieldSize {
            easy.set(CURLOPT_POSTFIELDSIZE_LARGE, offset: size)
            easy.set(CURLOPT_READFUNCTION, readFunction: curlReadCallback)
            easy.set(CURLOPT_READDATA, pointer: userdata)
            easy.set(CURLOPT_SEEKFUNCTION, seekFunction: curlSeekCallback)
            easy.set(CURLOPT_SEEKDATA, pointer: userdata)
        }
        easy.setHeaders(framing.headerLines(request.headers))

        if let auth = request.basicAuth {
            easy.set(CURLOPT_HTTPAUTH, BH_CURLAUTH_BASIC)
            easy.set(CURLOPT_USERNAME, auth.user)
            easy.set(CURLOPT_PASSWORD, auth.password)
            curl.secrets = [auth.password].filter { $0.count >= 3 }
        }

        if let tls = request.tls {
            if let caFile = tls.caFile { easy.set(CURLOPT_CAINFO, caFile) }
            easy.set(CURLOPT_SSL_VERIFYPEER, tls.verify ? 1 : 0)
            easy.set(CURLOPT_SSL_VERIFYHOST, tls.verify ? 2 : 0)
        }

        easy.set(CURLOPT_HEADERFUNCTION, writeFunction: curlHeaderCallback)
        easy.set(CURLOPT_HEADERDATA, pointer: userdata)
        easy.set(CURLOPT_WRITEFUNCTION, writeFunction: curlWriteCallback)
        easy.set(CURLOPT_WRITEDATA, pointer: userdata)

        if let failure = easy.setupFailure {
            let text = String(cString: curl_easy_strerror(failure.code))
            finish(UpstreamError(kind: .transport, message: "libcurl refused option \(failure.option.rawValue): \(text)"))
            return nil
        }
        curl.easy = easy
        return easy
    }

    /// Acts on what the public methods asked for. Called on the curl thread while the stream is in
    /// the multi handle. Returns true when the stream must be cancelled.
    func serviceRequests() -> Bool {
        let (cancel, resumeSend, resumeReceive) = shared.withLock { state -> (Bool, Bool, Bool) in
            state.pokeQueued = false
            if state.cancelRequested { return (true, false, false) }
            var resumeSend = false
            if state.sendPaused && (!state.body.isEmpty || state.bodyFinished) {
                state.sendPaused = false
                resumeSend = true
            }
            let resumeReceive = state.resumeRequested
            state.resumeRequested = false
            return (false, resumeSend, resumeReceive)
        }
        if cancel { return true }
        guard let easy = curl.easy else { return false }
        let receiveResumes = resumeReceive && curl.receivePaused
        if resumeSend || receiveResumes {
            if receiveResumes { curl.receivePaused = false }
            // The send side is paused in libcurl exactly when the shared flag says so; it was just
            // cleared if resuming, and may be set again by a read callback inside curl_easy_pause.
            let sendStillPaused = !resumeSend && shared.withLock { $0.sendPaused }
            easy.pause(receive: curl.receivePaused, send: sendStillPaused)
        }
        return false
    }

    /// Ends the stream: lets go of the easy handle (already removed from the multi handle; the curl loop may
    /// keep it for another transfer), delivers a head that is still due, and tells the delegate. Runs once.
    func finish(_ error: UpstreamError?) {
        guard !curl.finished else { return }
        curl.finished = true
        shared.withLock { state in
            state.finished = true
            state.body.removeAll()
            state.pendingBytes = 0
            state.rewindableBody = nil
        }
        if error == nil, let easy = curl.easy,
            let head = curl.head.finish(fallbackStatus: easy.info(long: CURLINFO_RESPONSE_CODE) ?? 0)
        {
            curl.delegate?.upstreamStream(self, didReceiveHead: head.status, headers: head.headers)
        }
        curl.easy = nil
        let delegate = curl.delegate
        curl.delegate = nil
        delegate?.upstreamStream(self, didFinishWith: error)
    }

    /// The error for a transfer that libcurl ended with `code`.
    func error(for code: CURLcode) -> UpstreamError? {
        guard code != CURLE_OK else { return nil }
        guard let easy = curl.easy else {
            return UpstreamError(kind: .transport, message: String(cString: curl_easy_strerror(code)))
        }
        let message = easy.errorMessage(for: code)
        if code == CURLE_ABORTED_BY_CALLBACK && isCancelRequested {
            return UpstreamError(kind: .cancelled, message: "cancelled")
        }
        let requestSent = (easy.info(long: CURLINFO_REQUEST_SIZE) ?? 0) > 0
        var scrubbed = message
        for secret in curl.secrets where scrubbed.contains(secret) {
            scrubbed = scrubbed.replacing(secret, with: "***")
        }
        var kind = CurlErrorKind.classify(code, requestSent: requestSent)
        // Body bytes went out before a connect failed: libcurl was resending on a fresh connection (it rewinds just
        // before it sends again), and the first copy reached the server (docs/delivery.md, "Reading an answer").
        if kind == .connect && shared.withLock({ $0.sentBytes > 0 || $0.resentAfterSending }) {
            kind = .transport
            scrubbed += " (resending after a reused connection closed without an answer)"
        }
        return UpstreamError(kind: kind, message: scrubbed)
    }

    // MARK: Callbacks (curl thread)

    fileprivate func receiveHeaderLine(_ line: UnsafeRawBufferPointer) {
        if let head = curl.head.consume(line) {
            curl.delegate?.upstreamStream(self, didReceiveHead: head.status, headers: head.headers)
        }
    }

    fileprivate func receiveBody(_ bytes: UnsafeRawBufferPointer) -> Int {
        if !curl.head.isComplete, let easy = curl.easy,
            let head = curl.head.finish(fallbackStatus: easy.info(long: CURLINFO_RESPONSE_CODE) ?? 0)
        {
            curl.delegate?.upstreamStream(self, didReceiveHead: head.status, headers: head.headers)
        }
        if curl.delegate?.upstreamStream(self, didReceiveBody: bytes) ?? true {
            return bytes.count
        }
        curl.receivePaused = true
        return BH_CURL_WRITEFUNC_PAUSE
    }

    fileprivate func readBody(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let low = Self.requestBodyLowWatermark
        let (result, notify) = shared.withLock { state -> (Int, Bool) in
            if state.cancelRequested { return (BH_CURL_READFUNC_ABORT, false) }
            var copied = 0
            while copied < buffer.count, let index = state.body.indices.first {
                let count = min(buffer.count - copied, state.body[index].readableBytes)
                state.body[index].withUnsafeReadableBytes { source in
                    UnsafeMutableRawBufferPointer(rebasing: buffer[copied..<(copied + count)])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: source[0..<count]))
                }
                state.body[index].moveReaderIndex(forwardBy: count)
                if state.body[index].readableBytes == 0 { state.body.removeFirst() }
                copied += count
            }
            if copied == 0 {
                if state.bodyFinished { return (0, false) }
                state.sendPaused = true
                let notify = !state.wantsMoreNotified
                state.wantsMoreNotified = true
                return (BH_CURL_READFUNC_PAUSE, notify)
            }
            let before = state.pendingBytes
            state.pendingBytes -= copied
            state.sentBytes += copied
            let crossed = before >= low && state.pendingBytes < low && !state.bodyFinished
            let notify = crossed && !state.wantsMoreNotified
            if notify { state.wantsMoreNotified = true }
            return (copied, notify)
        }
        if notify { curl.delegate?.upstreamStreamWantsMoreRequestBody(self) }
        return result
    }

    /// libcurl rewinds when it resends a request, e.g. on a fresh connection after a reused one was
    /// found closed. Possible when nothing was sent yet, or for a buffered body.
    fileprivate func rewindBody() -> Bool {
        shared.withLock { state in
            if state.sentBytes == 0 { return true }
            guard let body = state.rewindableBody else { return false }
            state.resentAfterSending = true
            state.body.removeAll()
            state.body.append(body)
            state.pendingBytes = body.readableBytes
            state.sentBytes = 0
            return true
        }
    }
}

/// Maps libcurl result codes onto ``UpstreamError/Kind``.
enum CurlErrorKind {
    static func classify(_ code: CURLcode, requestSent: Bool) -> UpstreamError.Kind {
        switch code {
        case CURLE_COULDNT_CONNECT, CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY:
            return .connect
        case CURLE_OPERATION_TIMEDOUT:
            // A timeout before the request went out is a connect timeout: nothing reached the server.
            return requestSent ? .timeout : .connect
        default:
            return .transport
        }
    }
}

// MARK: C callbacks

// Each receives the stream as an unretained pointer; CurlMultiThread keeps the stream alive while its
// easy handle is in the multi handle, which is the only time libcurl calls these.

private let curlWriteCallback: curl_write_callback = { data, size, count, userdata in
    let stream = Unmanaged<UpstreamStream>.fromOpaque(userdata!).takeUnretainedValue()
    return stream.receiveBody(UnsafeRawBufferPointer(start: data, count: size * count))
}

private let curlHeaderCallback: curl_write_callback = { data, size, count, userdata in
    let stream = Unmanaged<UpstreamStream>.fromOpaque(userdata!).takeUnretainedValue()
    stream.receiveHeaderLine(UnsafeRawBufferPointer(start: data, count: size * count))
    return size * count
}

private let curlReadCallback: curl_read_callback = { data, size, count, userdata in
    let stream = Unmanaged<UpstreamStream>.fromOpaque(userdata!).takeUnretainedValue()
    return stream.readBody(into: UnsafeMutableRawBufferPointer(start: data, count: size * count))
}

private let curlSeekCallback: curl_seek_callback = { userdata, offset, origin in
    let stream = Unmanaged<UpstreamStream>.fromOpaque(userdata!).takeUnretainedValue()
    // origin 0 is SEEK_SET: libcurl only ever asks to go back to the start.
    guard offset == 0, origin == 0, stream.rewindBody() else { return BH_CURL_SEEKFUNC_CANTSEEK }
    return BH_CURL_SEEKFUNC_OK
}
