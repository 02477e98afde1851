import BatchhouseUpstream
import NIOCore
import NIOHTTP1
import Synchronization

/// Connects one client request to one streaming upstream transfer, with backpressure both ways:
/// the client is not read while the upstream request body is backed up, and the upstream response is paused
/// while the client has not taken what was already written.
final class PassthroughBridge: UpstreamStreamDelegate, Sendable {
    /// Response bytes written to the client but not yet flushed to its socket, before pausing upstream.
    static let responseHighWatermark = 1 << 20
    static let responseLowWatermark = 256 << 10
    /// Request bytes queued for upstream before the client is no longer read.
    static let requestHighWatermark = 512 << 10

    let requestHead: HTTPRequestHead
    private let eventLoop: any EventLoop
    private let target: NIOLoopBound<RequestHandler>
    private let allocator: ByteBufferAllocator

    private struct State {
        var stream: UpstreamStream?
        var unflushedResponseBytes = 0
        var responsePaused = false
        var headSent = false
        /// Response bytes from curl not yet handed to the event loop. ClickHouse streams in small HTTP chunks
        /// (libcurl calls back once per chunk, often 4 KiB): they are gathered here and handed over in one
        /// event loop task, instead of a task, a write and a flush per chunk.
        var pendingBody: ByteBuffer?
        var deliveryScheduled = false
    }
    private let state = Mutex(State())

    init(handler: RequestHandler, context: ChannelHandlerContext, requestHead: HTTPRequestHead) {
        self.requestHead = requestHead
        self.eventLoop = context.eventLoop
        self.target = NIOLoopBound(handler, eventLoop: context.eventLoop)
        self.allocator = context.channel.allocator
    }

    func start(client: CurlClient, request: UpstreamRequest, requestBodyLength: Int?, hasBody: Bool) {
        let stream = client.stream(request, requestBodyLength: requestBodyLength, delegate: self)
        state.withLock { $0.stream = stream }
        if !hasBody { finishRequestBody() }
    }

    // MARK: Client side (event loop)

    func writeRequestBody(_ buffer: ByteBuffer) {
        guard let stream = state.withLock({ $0.stream }) else { return }
        stream.writeRequestBody(buffer)
        if stream.pendingRequestBodyBytes > Self.requestHighWatermark {
            target.value.pauseReading()
        }
    }

    func finishRequestBody() {
        state.withLock { $0.stream }?.finishRequestBody()
    }

    func cancel() {
        state.withLock { $0.stream }?.cancel()
    }

    /// The client's socket took `count` response bytes.
    func wrote(_ count: Int) {
        let resume = state.withLock { state -> UpstreamStream? in
            state.unflushedResponseBytes -= count
            if state.responsePaused && state.unflushedResponseBytes <= Self.responseLowWatermark {
                state.responsePaused = false
                return state.stream
            }
            return nil
        }
        resume?.resumeResponse()
    }

    // MARK: Upstream side (curl thread)

    func upstreamStream(_ stream: UpstreamStream, didReceiveHead status: Int, headers: [(String, String)]) {
        state.withLock { $0.headSent = true }
        eventLoop.execute {
            self.target.value.passthroughHead(status: status, headers: headers, bridge: self)
        }
    }

    func upstreamStream(_ stream: UpstreamStream, didReceiveBody bytes: UnsafeRawBufferPointer) -> Bool {
        let allocator = self.allocator
        let (accept, schedule) = state.withLock { state -> (Bool, Bool) in
            if state.unflushedResponseBytes >= Self.responseHighWatermark {
                state.responsePaused = true
                return (false, false)
            }
            state.unflushedResponseBytes += bytes.count
            if state.pendingBody == nil {
                state.pendingBody = allocator.buffer(capacity: max(bytes.count, Self.deliveryBufferCapacity))
            }
            state.pendingBody!.writeBytes(bytes)
            if state.deliveryScheduled { return (true, false) }
            state.deliveryScheduled = true
            return (true, true)
        }
        guard accept else { return false }
        if schedule {
            eventLoop.execute {
                let buffer = self.state.withLock { state -> ByteBuffer? in
                    state.deliveryScheduled = false
                    defer { state.pendingBody = nil }
                    return state.pendingBody
                }
                if let buffer { self.target.value.passthroughBody(buffer, bridge: self) }
            }
        }
        return true
    }

    /// The first capacity of a buffer gathering response bytes (it grows if the event loop falls behind).
    static let deliveryBufferCapacity = 64 << 10

    func upstreamStreamWantsMoreRequestBody(_ stream: UpstreamStream) {
        eventLoop.execute {
            self.target.value.resumeReading()
        }
    }

    func upstreamStream(_ stream: UpstreamStream, didFinishWith error: UpstreamError?) {
        let headSent = state.withLock { $0.headSent }
        eventLoop.execute {
            self.target.value.passthroughFinished(error: error, headSent: headSent, bridge: self)
        }
    }
}
