import BatchhouseConfig
import BatchhouseCore
import BatchhouseEngine
import BatchhouseSpool
import BatchhouseUpstream
import NIOCore
import NIOHTTP1

/// One per connection, after NIO's HTTP/1.1 codec and pipelining handler. It feeds each request part to its
/// `StateMachine` and performs the action that comes back: answer a local endpoint, hand an INSERT to the
/// engine's `Intake`, stream anything else to ClickHouse through a `PassthroughBridge`, write responses.
/// It holds no batching logic (docs/architecture.md, "The HTTP server").
final class RequestHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// What a connection's handler uses of the rest of the proxy.
    struct Dependencies: Sendable {
        var intake: Intake
        var configuration: LiveConfiguration
        var gateway: UpstreamGateway
        /// Streams passthrough requests.
        var client: CurlClient
        var metrics: BatchhouseMetrics
        var endpoints: LocalEndpoints
        /// The memory budget that bodies still arriving are held against.
        var buffering: Buffering
        /// Makes a passthrough wait for its identity's batches first (`read_your_writes`); nil: never waits.
        var engine: BatchhouseEngine? = nil
        /// The sessions seen by every connection (which session INSERTs may be batched); nil: session requests
        /// always stream.
        var sessions: SessionRegistry? = nil
        /// Small INSERTs are served by `FastPathHandler` before NIO's codec; false: every request takes the general
        /// path (`--no-fast-path`, for comparisons).
        var fastPath = true
    }

    private let dependencies: Dependencies
    private var machine = StateMachine()
    private var bridge: PassthroughBridge?
    /// The relayed response can only end by closing the connection (no length, a client that cannot take chunks).
    private var passthroughCloses = false
    /// A passthrough held back until its identity's batches have an outcome (`read_your_writes`), with the body
    /// parts that arrived meanwhile (reading stops while it waits, so they are what one read had decoded).
    private struct HeldPassthrough {
        var head: HTTPRequestHead
        var body: ByteBuffer?
        var bodyComplete: Bool
        var ticket: ReadYourWrites.Ticket
        var since: NIODeadline
        var timer: Scheduled<Void>?
    }
    private var held: HeldPassthrough?
    /// Reading stops while a passthrough is held.
    private var holdPaused = false
    private var readPaused = false
    /// Reading stops while a decoded slice is pending (`decodeMore`).
    private var decodePaused = false
    private var readPending = false
    private var context: ChannelHandlerContext?
    /// Sees the raw bytes before the HTTP decoder; writes the answers to requests whose head never completed.
    private let clientBytes: ClientBytesHandler?
    /// The connection's one timer (header, body, request and idle timeouts); see `StateMachine.nextCheck`.
    private var timer: Scheduled<Void>?
    /// A request the fast path served waits for its answer: the connection is not idle.
    private var fastPathBusy = false
    /// The last `X-ClickHouse-Summary` value: clients sending rows of the same shape get the same one.
    private var lastSummary: (rows: Int, bytes: Int, text: String)?

    init(_ dependencies: Dependencies, clientBytes: ClientBytesHandler? = nil) {
        self.dependencies = dependencies
        self.clientBytes = clientBytes
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        machine = StateMachine(
            budget: dependencies.buffering,
            timeouts: ConnectionTimeouts(dependencies.configuration.snapshot.value.limits), now: context.eventLoop.now)
        machine.sessions = dependencies.sessions
        clientBytes?.requestHandler = self
        armTimer(context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        self.context = nil
    }

    // MARK: Timeouts

    /// Raw bytes arrived from the client (called by `ClientBytesHandler`, on this event loop).
    func bytesArrived() {
        guard let context else { return }
        machine.bytesArrived(at: context.eventLoop.now)
    }

    private func armTimer(context: ChannelHandlerContext) {
        guard timer == nil else { return }
        let next = machine.nextCheck(now: context.eventLoop.now)
        timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: next) { [self] in
            timer = nil
            guard let context = self.context else { return }
            if fastPathBusy, case .idle = machine.state {
                armTimer(context: context)
                return
            }
            var draining = false
            if case .discarding = machine.state { draining = true }
            if let (action, kind) = machine.timerFired(at: context.eventLoop.now) {
                // The end of a drain after an error already answered is not another timeout.
                if !draining { dependencies.metrics.timedOut(kind.rawValue) }
                perform(action, context: context)
                // Bounds the drain of what a timed-out client still sends.
                if self.context != nil { armTimer(context: context) }
                return
            }
            // A reload may have changed the timeouts; an idle connection picks them up here.
            if case .idle = machine.state {
                machine.timeouts = ConnectionTimeouts(dependencies.configuration.snapshot.value.limits)
            }
            armTimer(context: context)
        }
    }

    /// The fast path served requests on this connection (`FastPathHandler`); `busy`: some still wait for their
    /// answers. Not busy, the connection is idle from `now`.
    func fastPathActivity(busy: Bool, at now: NIODeadline) {
        fastPathBusy = busy
        if !busy { machine.answered(at: now) }
    }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let action: StateMachine.Action
        switch unwrapInboundIn(data) {
        case .head(let head):
            let limits = dependencies.configuration.snapshot.value.limits
            machine.timeouts = ConnectionTimeouts(limits)
            action = machine.receivedHead(head, maxRequestBody: limits.maxRequestBody, now: context.eventLoop.now)
        case .body(let part):
            action = machine.receivedBody(part)
        case .end:
            action = machine.receivedEnd()
        }
        perform(action, context: context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        perform(machine.channelClosed(), context: context)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // NIO's HTTPServerProtocolErrorHandler, before this handler, answered a request it could not parse with
        // 400 and passes the error on.
        if error is HTTPParserError {
            dependencies.metrics.request(.rejected)
            dependencies.metrics.refused(.syntax)
        }
        perform(machine.channelClosed(), context: context)
        context.close(promise: nil)
    }

    // MARK: Actions

    private func perform(_ action: StateMachine.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .sendContinue(let head):
            context.writeAndFlush(
                wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))), promise: nil)
        case .respondLocal(let endpoint, let head):
            dependencies.metrics.request(.local)
            let (_, query) = HeaderPolicy.split(uri: head.uri)
            let response = dependencies.endpoints.respond(
                endpoint, query: query, acceptHeader: head.headers.first(name: "accept"))
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: response.contentType)
            respond(
                head: head, status: HTTPResponseStatus(statusCode: response.status), headers: headers,
                body: head.method == .HEAD ? [] : response.body, close: false, context: context)
        case .respondError(let error, let head, let close):
            dependencies.metrics.request(.rejected)
            respondError(error, head: head, close: close, context: context)
        case .respond(let response, let head):
            respond(response, head: head, context: context)
        case .startPassthrough(let head, let initialBody, let bodyComplete):
            dependencies.metrics.request(.passthrough)
            if !holdForWrites(head: head, initialBody: initialBody, bodyComplete: bodyComplete, context: context) {
                startPassthrough(head: head, initialBody: initialBody, bodyComplete: bodyComplete, context: context)
            }
        case .forwardBody(var part):
            if held != nil {
                if held!.body == nil { held!.body = part } else { held!.body!.writeBuffer(&part) }
            } else {
                bridge?.writeRequestBody(part)
            }
        case .finishPassthroughBody:
            if held != nil { held!.bodyComplete = true } else { bridge?.finishRequestBody() }
        case .cancelPassthrough:
            if let waiting = held {
                held = nil
                waiting.timer?.cancel()
                _ = dependencies.engine?.writes.cancel(waiting.ticket)
            }
            bridge?.cancel()
            bridge = nil
        case .intake(var request):
            request.eventLoop = context.eventLoop
            let decision = dependencies.intake.accept(request) { self.completion(context: context) }
            perform(machine.intakeDecided(decision), context: context)
        case .decodeMore:
            decodePaused = true
            // A scheduled task, not `execute`: NIO runs tasks queued by tasks in the same tick, so a chain of
            // `execute`s would decode a whole bomb before the loop looks at any other socket (measured: 1-row
            // INSERTs waited 400 ms next to 1 GiB bombs). The pause ends the tick.
            context.eventLoop.assumeIsolated().scheduleTask(in: Self.decodeYield) { [self] in
                guard let context = self.context else { return }
                let next = machine.continueDecoding()
                if case .decodeMore = next {} else { resumeAfterDecoding() }
                perform(next, context: context)
            }
        case .respondRawError(let error):
            dependencies.metrics.request(.rejected)
            dependencies.metrics.refused(error.reason)
            if let clientBytes {
                clientBytes.writeAndClose(Self.rawResponse(error))
            } else {
                context.close(promise: nil)
            }
        case .close:
            context.close(promise: nil)
        }
    }

    /// How long a connection whose decoded slice filled up lets the event loop serve others.
    static let decodeYield: TimeAmount = .milliseconds(1)

    /// A whole HTTP/1.1 error response as bytes, for a request whose head never completed (so NIO's HTTP
    /// encoder has no request to answer).
    static func rawResponse(_ error: ClickHouseError) -> [UInt8] {
        let status = HTTPResponseStatus(statusCode: error.status)
        let body = Array(error.body.utf8)
        var text = "HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\n"
        for (name, value) in error.headers { text += "\(name): \(value)\r\n" }
        text += "Content-Length: \(body.count)\r\nConnection: close\r\n\r\n"
        return Array(text.utf8) + body
    }

    /// How a waiting INSERT's answer gets back onto this connection's event loop.
    private func completion(context: ChannelHandlerContext) -> IntakeCompletion {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        return { response in
            eventLoop.execute {
                let (handler, context) = loopBound.value
                handler.perform(handler.machine.ackArrived(response), context: context)
            }
        }
    }

    // MARK: Outbound read control (backpressure towards the client)

    func read(context: ChannelHandlerContext) {
        if readPaused || decodePaused || holdPaused {
            readPending = true
        } else {
            context.read()
        }
    }

    func pauseReading() {
        readPaused = true
    }

    func resumeReading() {
        guard readPaused else { return }
        readPaused = false
        if readPending, !decodePaused, !holdPaused, let context {
            readPending = false
            context.read()
        }
    }

    private func resumeAfterDecoding() {
        guard decodePaused else { return }
        decodePaused = false
        if readPending, !readPaused, !holdPaused, let context {
            readPending = false
            context.read()
        }
    }

    // MARK: Passthrough

    /// Read your writes: a request that is not a batchable INSERT waits, before it goes upstream, for the batches
    /// holding rows already acknowledged to its identity (they are sealed and sent at once), at most
    /// `readYourWritesBound`. The connection is not read meanwhile. False when there is nothing to wait for.
    private func holdForWrites(
        head: HTTPRequestHead, initialBody: ByteBuffer?, bodyComplete: Bool, context: ChannelHandlerContext
    ) -> Bool {
        guard let engine = dependencies.engine else { return false }
        // A statement that reads no rows (clickhouse-connect's DESCRIBE TABLE before every insert) needs no batch
        // to land first: waiting would flush one batch per insert.
        if Self.seesNoRows(head: head, initialBody: initialBody) { return false }
        let identity = RequestParameters(uriQuery: HeaderPolicy.split(uri: head.uri).query) { name in
            head.headers.first(name: name)
        }.identity
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        let resume: @Sendable () -> Void = {
            eventLoop.execute { loopBound.value.releaseHeld(timedOut: false) }
        }
        guard let ticket = engine.awaitWrites(of: identity, resume: resume) else { return false }
        holdPaused = true
        held = HeldPassthrough(
            head: head, body: initialBody, bodyComplete: bodyComplete, ticket: ticket, since: context.eventLoop.now)
        let limit = engine.readYourWritesBound.components
        let bound = TimeAmount.nanoseconds(limit.seconds * 1_000_000_000 + limit.attoseconds / 1_000_000_000)
        held?.timer = context.eventLoop.assumeIsolated().scheduleTask(in: bound) { [self] in
            guard let waiting = held, engine.writes.cancel(waiting.ticket) else { return }
            releaseHeld(timedOut: true)
        }
        return true
    }

    /// Whether the request's statement (the `query` parameter, else the start of a body that is not encoded)
    /// begins with a word of a statement that reads no rows.
    static func seesNoRows(head: HTTPRequestHead, initialBody: ByteBuffer?) -> Bool {
        let query = HeaderPolicy.split(uri: head.uri).query
        for (name, value) in QueryString.parse(query) where name == "query" && value.utf8.contains(where: { $0 > 0x20 }) {
            return SessionStatements.seesNoRows(value.utf8)
        }
        guard let initialBody, !head.headers.contains(name: "content-encoding"),
            !RequestParameters.decompressRequested(uriQuery: query)
        else { return false }
        return SessionStatements.seesNoRows(initialBody.readableBytesView)
    }

    /// The held passthrough goes upstream: its batches have an outcome, or its bound ran out.
    private func releaseHeld(timedOut: Bool) {
        guard let waiting = held, let context else { return }
        held = nil
        waiting.timer?.cancel()
        let waited = context.eventLoop.now - waiting.since
        dependencies.metrics.readWaited(seconds: Double(waited.nanoseconds) / 1e9, timedOut: timedOut)
        startPassthrough(
            head: waiting.head, initialBody: waiting.body, bodyComplete: waiting.bodyComplete, context: context)
        holdPaused = false
        if readPending, !readPaused, !decodePaused {
            readPending = false
            context.read()
        }
    }

    private func startPassthrough(
        head: HTTPRequestHead, initialBody: ByteBuffer?, bodyComplete: Bool, context: ChannelHandlerContext
    ) {
        let target = dependencies.gateway.passthroughTarget(
            session: RequestParameters.sessionID(uriQuery: HeaderPolicy.split(uri: head.uri).query))
        let hasBody = head.method != .GET && head.method != .HEAD
        let length = head.headers.first(name: "content-length").flatMap(Int.init)
        var request = UpstreamRequest(
            method: head.method.rawValue, url: target.server + head.uri,
            headers: HeaderPolicy.upstreamRequestHeaders(head.headers), body: nil, basicAuth: nil,
            connectTimeout: target.connectTimeout, timeout: nil)
        request.tls = target.tls
        let bridge = PassthroughBridge(handler: self, context: context, requestHead: head)
        self.bridge = bridge
        passthroughCloses = false
        bridge.start(
            client: dependencies.client, request: request, requestBodyLength: hasBody ? length : nil, hasBody: hasBody)
        if let initialBody, initialBody.readableBytes > 0 {
            bridge.writeRequestBody(initialBody)
        }
        if bodyComplete { bridge.finishRequestBody() }
    }

    /// Called by the bridge on this event loop.
    func passthroughHead(status: Int, headers upstreamHeaders: [(String, String)], bridge: PassthroughBridge) {
        guard let context, self.bridge === bridge, machine.isPassthrough else { return }
        guard HeaderPolicy.areValidToSend(upstreamHeaders) else {
            bridge.cancel()
            context.close(promise: nil)
            return
        }
        let head = bridge.requestHead
        let (headers, closes) = HeaderPolicy.relayedStreamHeaders(
            upstreamHeaders, persistence: persistence(close: false, head: head), clientVersion: head.version,
            status: status, isHead: head.method == .HEAD)
        passthroughCloses = closes
        context.writeAndFlush(
            wrapOutboundOut(
                .head(HTTPResponseHead(version: head.version, status: HTTPResponseStatus(statusCode: status), headers: headers))),
            promise: nil)
    }

    /// Whether the connection stays open after this response, and for how long when idle.
    private func persistence(close: Bool, head: HTTPRequestHead) -> HeaderPolicy.Persistence {
        if close || !head.isKeepAlive { return .close }
        return .keepAlive(timeoutSeconds: keepAliveSeconds)
    }

    /// `limits.idle_timeout` in whole seconds (at least 1), as `Keep-Alive: timeout=N` announces it.
    private var keepAliveSeconds: Int {
        max(1, Int(machine.timeouts.idle.nanoseconds / 1_000_000_000))
    }

    func passthroughBody(_ buffer: ByteBuffer, bridge: PassthroughBridge) {
        guard let context, self.bridge === bridge, machine.isPassthrough else { return }
        let count = buffer.readableBytes
        let promise = context.eventLoop.makePromise(of: Void.self)
        promise.futureResult.whenComplete { _ in bridge.wrote(count) }
        context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: promise)
    }

    func passthroughFinished(error: UpstreamError?, headSent: Bool, bridge: PassthroughBridge) {
        guard let context, self.bridge === bridge, let (head, requestEnded) = machine.passthroughFinished() else {
            return
        }
        self.bridge = nil
        resumeReading()
        if let error {
            if headSent {
                context.close(promise: nil)
            } else {
                respondError(
                    .upstreamUnavailable("Batchhouse: ClickHouse is unreachable: \(error.message)"), head: head,
                    close: !requestEnded, context: context)
            }
            return
        }
        if !headSent {
            // The transfer ended without an answer from ClickHouse.
            dependencies.metrics.refused(.upstream)
            var headers = HTTPHeaders([("Content-Length", "0")])
            headers.add(contentsOf: HeaderPolicy.connectionFields(persistence(close: !requestEnded, head: head)))
            context.write(
                wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .badGateway, headers: headers))),
                promise: nil)
        }
        let close = !head.isKeepAlive || !requestEnded || passthroughCloses
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if close { channel.close(promise: nil) }
        }
        machine.answered(at: context.eventLoop.now)
    }

    // MARK: Responses

    private func respond(_ response: IntakeResponse, head: HTTPRequestHead, context: ChannelHandlerContext) {
        switch response {
        case .accepted(let rows, let bytes, let ack):
            respondAccepted(head: head, rows: rows, bytes: bytes, ack: ack, context: context)
        case .refused(let error, let close):
            respondError(error, head: head, close: close, context: context)
        case .passThrough:
            // The state machine turns this into a pass-through before any answer is written.
            respondError(
                ClickHouseError(
                    code: 1001, name: "STD_EXCEPTION", message: "Batchhouse: a pass-through came after the request ended",
                    status: 500), head: head, close: true, context: context)
        case .relayed(let upstream):
            // ClickHouse refused the rows this request waited for, or its credentials.
            let refusal = RefusalKind(status: upstream.status, code: clickHouseErrorCode(in: upstream.body))
            dependencies.metrics.refused(refusal == .authentication || refusal == .permission ? .auth : .clickhouse)
            guard HeaderPolicy.areValidToSend(upstream.headers) else {
                context.close(promise: nil)
                return
            }
            var headers = HeaderPolicy.relayedBufferedHeaders(upstream.headers)
            headers.replaceOrAdd(name: "X-Batchhouse-Ack", value: AckMode.flushed.rawValue)
            respond(
                head: head, status: HTTPResponseStatus(statusCode: upstream.status), headers: headers,
                body: Array(upstream.body.readableBytesView), close: false, context: context)
        }
    }

    /// The answer to a batched INSERT: 200, no body (the hot path: headers built in one go, no future).
    private func respondAccepted(head: HTTPRequestHead, rows: Int, bytes: Int, ack: AckMode, context: ChannelHandlerContext) {
        CrashPoint.beforeAck.reach()
        answered(ack: ThreadCounters.LatencyAck(ack), context: context)
        // Before the answer is written: the client's next request of the session may come on another connection.
        machine.answering()
        let summary: String
        if let last = lastSummary, last.rows == rows, last.bytes == bytes {
            summary = last.text
        } else {
            summary =
                "{\"read_rows\":\"0\",\"read_bytes\":\"0\",\"written_rows\":\"\(rows)\",\"written_bytes\":\"\(bytes)\",\"total_rows_to_read\":\"0\"}"
            lastSummary = (rows, bytes, summary)
        }
        let close = !head.isKeepAlive
        var fields = [("X-ClickHouse-Summary", summary), ("X-Batchhouse-Ack", ack.rawValue), ("Content-Length", "0")]
        fields.append(contentsOf: HeaderPolicy.connectionFields(persistence(close: close, head: head)))
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: HTTPHeaders(fields)))),
            promise: nil)
        if close {
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
        } else {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
        machine.answered(at: context.eventLoop.now)
    }

    /// The latency of an INSERT's ack, from its head to now.
    private func answered(ack: ThreadCounters.LatencyAck, context: ChannelHandlerContext) {
        let nanoseconds = context.eventLoop.now.uptimeNanoseconds &- machine.requestStarted.uptimeNanoseconds
        dependencies.metrics.answered(ack: ack, nanoseconds: Int64(truncatingIfNeeded: nanoseconds))
    }

    private func respondError(_ error: ClickHouseError, head: HTTPRequestHead, close: Bool, context: ChannelHandlerContext) {
        dependencies.metrics.refused(error.reason)
        respond(
            head: head, status: HTTPResponseStatus(statusCode: error.status), headers: HTTPHeaders(error.headers),
            body: Array(error.body.utf8), close: close, context: context)
    }

    private func respond(
        head: HTTPRequestHead, status: HTTPResponseStatus, headers: HTTPHeaders, body: [UInt8], close: Bool,
        context: ChannelHandlerContext
    ) {
        machine.answering()
        var headers = headers
        let close = close || !head.isKeepAlive
        headers.replaceOrAdd(name: "Content-Length", value: String(body.count))
        headers.remove(name: "Connection")
        headers.remove(name: "Keep-Alive")
        headers.add(contentsOf: HeaderPolicy.connectionFields(persistence(close: close, head: head)))
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if !body.isEmpty {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if close {
            let channel = context.channel
            // A body still arriving is drained rather than reset, so the client reads the answer: only the
            // write side closes now; the client's close (or the body timeout) ends the connection.
            let mode: CloseMode = machine.isDiscarding ? .output : .all
            done.whenComplete { _ in channel.close(mode: mode, promise: nil) }
        }
        machine.answered(at: context.eventLoop.now)
    }
}
