import BatchhouseCore
import BatchhouseEngine
import BatchhouseSpool
import NIOCore
import NIOHTTP1

/// First in each connection's pipeline: serves the common case, a small batchable INSERT sent as a POST with
/// Content-Length and read whole in one read burst, straight from the channel's bytes, without NIO's HTTP codec,
/// and writes the answers of one burst in one write (docs/architecture.md, "The fast path").
///
/// `FastRequestParser` recognises such a request; this handler checks what the general path would check before its
/// intake (not a local endpoint, no session, an INSERT statement) and hands the request to the same `Intake`. The
/// moment a request is anything else (a SELECT, chunked, `Expect`, compressed, a session, a head or body split across
/// reads, a malformed head) the connection moves to the general path for good: the bytes from that request on go to
/// NIO's codec and the `RequestHandler`, after every answer of the fast path before them was written.
///
/// Answers keep the requests' order: an answer that waits (`durable`, `flushed`) holds the ones after it. A request
/// whose answer may still turn out to be "pass it to ClickHouse" (a new identity's credentials, a RowBinary table's
/// columns) stops the parsing of what follows until it is known.
final class FastPathHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// The largest body served here; larger ones take the general path (which bounds, budgets and decodes them).
    static let maxBody = 64 * 1024
    /// Answers waiting at most; beyond that the connection is not read until some are written.
    static let maxWaiting = 128

    private let intake: Intake
    private let configuration: LiveConfiguration
    private let metrics: BatchhouseMetrics
    /// Told of the fast path's activity, so its idle timer is right.
    weak var requestHandler: RequestHandler?

    private var context: ChannelHandlerContext?
    private var general = false
    /// Bytes of requests not served yet (a request in progress at the end of a read, or ones parsed later).
    private var pending: ByteBuffer?
    /// Answers not written yet, in order.
    private var out: ByteBuffer?
    /// Answers not written yet because an earlier one waits, oldest first. Their ids are consecutive.
    private var queue = CircularBuffer<Slot>()
    private var nextID: UInt64 = 0
    /// A request waits whose answer may send it to the general path: nothing after it is parsed meanwhile.
    private var holding = false
    /// Bytes for the general path, waiting for the answers before them.
    private var handOff: ByteBuffer?
    /// An answer that closes the connection was queued: nothing after it is served or read.
    private var closing = false
    private var closeRequested = false
    private var quiescing = false
    private var readPending = false
    /// A write of the answers that arrived since is due on this turn of the event loop.
    private var flushScheduled = false
    /// When the current read burst began (the latency of its answers counts from here).
    private var burstStarted = NIODeadline.uptimeNanoseconds(0)
    /// The last 200 written and what it answered: clients sending rows of one shape get the same bytes.
    private var lastAccepted: (rows: Int, bytes: Int, ack: AckMode, keepAlive: Int?, response: ByteBuffer)?
    private var keepAliveSeconds = 1
    /// One per connection, as the general path keeps one: its scratch space is reused.
    private var classifier = StatementClassifier()

    private struct Slot {
        var id: UInt64
        var answer: ByteBuffer?
        var closes: Bool
        var started: NIODeadline
        /// The request as received, kept while its answer may be "pass it through".
        var request: ByteBuffer?
    }

    init(intake: Intake, configuration: LiveConfiguration, metrics: BatchhouseMetrics) {
        self.intake = intake
        self.configuration = configuration
        self.metrics = metrics
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    /// Whether the connection has moved to the general path.
    var isGeneral: Bool { general }

    /// Whether the general path has the connection and nothing waits for it here.
    private var handedOver: Bool { general && handOff == nil }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if handedOver {
            context.fireChannelRead(data)
            return
        }
        var bytes = unwrapInboundIn(data)
        if handOff != nil {
            handOff!.writeBuffer(&bytes)
            return
        }
        if closing || quiescing { return }
        if var earlier = pending, earlier.readableBytes > 0 {
            pending = nil  // one reference, so the buffer grows in place
            earlier.discardReadBytes()
            earlier.writeBuffer(&bytes)
            pending = earlier
        } else {
            if pending == nil { burstStarted = context.eventLoop.now }
            pending = bytes
        }
        serve(context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if handedOver {
            context.fireChannelReadComplete()
            return
        }
        moveToGeneralIfIncomplete(context: context)
        flushAnswers(context: context)
        if pending?.readableBytes == 0 { pending = nil }
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Bytes waiting for the general path wait for fast-path answers: those are written first.
        guard event is ChannelShouldQuiesceEvent, !handedOver else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        // Graceful shutdown: the answers already promised are written, then the connection closes. What was
        // pipelined after them is not served (as NIO's pipelining handler does on the general path).
        quiescing = true
        pending = nil
        handOff = nil
        if queue.isEmpty { flushAnswers(context: context) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        queue.removeAll()
        pending = nil
        handOff = nil
        context.fireChannelInactive()
    }

    // MARK: Outbound

    func read(context: ChannelHandlerContext) {
        if readsPaused {
            readPending = true
        } else {
            context.read()
        }
    }

    /// Reading stops while a request holds the parsing, bytes wait for the general path, many answers wait, or
    /// the connection is closing.
    private var readsPaused: Bool {
        handOff != nil || (!general && (holding || closing || queue.count >= Self.maxWaiting))
    }

    // MARK: Serving

    /// Serves every whole request at the start of `pending`, up to `maxWaiting` waiting answers.
    private func serve(context: ChannelHandlerContext) {
        guard !holding, !closing, !quiescing, handOff == nil else { return }
        let limits = configuration.snapshot.value.limits
        keepAliveSeconds = max(1, Int(ConnectionTimeouts.amount(limits.idleTimeout).nanoseconds / 1_000_000_000))
        let maxBody = min(Self.maxBody, limits.maxRequestBody)
        while queue.count < Self.maxWaiting, let bytes = pending, bytes.readableBytes > 0, !holding, !closing {
            let parsed = bytes.withUnsafeReadableBytes { FastRequestParser.parse($0, maxBody: maxBody) }
            switch parsed {
            case .needMore:
                return
            case .general:
                moveToGeneral(context: context)
                return
            case .request(let head):
                guard let request = insertRequest(head, in: bytes) else {
                    moveToGeneral(context: context)
                    return
                }
                guard let raw = pending!.readSlice(length: head.length) else { return }
                if !serve(request, raw: raw, closes: head.closes, context: context) {
                    // The intake says ClickHouse answers it: the general path streams it, and what follows.
                    var rest = pending ?? ByteBuffer()
                    var whole = raw
                    whole.writeBuffer(&rest)
                    pending = whole
                    moveToGeneral(context: context)
                    return
                }
            }
        }
    }

    /// What the general path would hand the intake for this request, or nil when it would not (a local endpoint, a
    /// session, compressed blocks, a statement that is not an INSERT).
    private func insertRequest(_ head: FastRequest, in bytes: ByteBuffer) -> InsertRequest? {
        bytes.withUnsafeReadableBytes { raw -> InsertRequest? in
            let target = UnsafeRawBufferPointer(rebasing: raw[head.target])
            let question = target.firstIndex(of: UInt8(ascii: "?")) ?? target.count
            let path = String(decoding: UnsafeRawBufferPointer(rebasing: target[..<question]), as: UTF8.self)
            if LocalEndpoint(path: path[...]) != nil { return nil }
            let query =
                question < target.count
                ? String(decoding: UnsafeRawBufferPointer(rebasing: target[(question + 1)...]), as: UTF8.self) : ""
            let parameters = RequestParameters(uriQuery: query[...]) { name in
                FastRequestParser.value(of: name, in: head, bytes: raw)
            }
            // A session, or a body in ClickHouse's compressed blocks (`decompress=1`): the general path's.
            if parameters.sessionID != nil || parameters.decompress { return nil }
            guard let body = bytes.getSlice(at: bytes.readerIndex + head.body.lowerBound, length: head.body.count) else {
                return nil
            }
            guard case .insert(let statement) = classifier.classify(query: parameters.query, body: body, isComplete: true)
            else { return nil }
            return InsertRequest(
                parameters: parameters, body: body, coding: nil, statement: statement, eventLoop: context?.eventLoop)
        }
    }

    /// Hands one request to the intake and queues its answer. False when the intake passes it to ClickHouse.
    private func serve(_ request: InsertRequest, raw: ByteBuffer, closes: Bool, context: ChannelHandlerContext) -> Bool {
        let id = nextID
        nextID &+= 1
        let decision = intake.accept(request) { self.completion(id, context: context) }
        switch decision {
        case .answer(.passThrough), .passthrough:
            return false
        case .answer(let response):
            answer(response, id: id, closes: closes, context: context)
        case .awaitDurable, .awaitSpool, .awaitBatch:
            queue.append(Slot(id: id, answer: nil, closes: closes, started: burstStarted, request: nil))
        case .awaitVerification, .awaitDescription:
            queue.append(Slot(id: id, answer: nil, closes: closes, started: burstStarted, request: raw))
            holding = true
        }
        if closes { closing = true }
        return true
    }

    /// How a waiting answer gets back onto this connection's event loop.
    private func completion(_ id: UInt64, context: ChannelHandlerContext) -> IntakeCompletion {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        return { response in
            eventLoop.execute {
                let (handler, context) = loopBound.value
                handler.arrived(response, for: id, context: context)
            }
        }
    }

    /// A waiting request's answer arrived.
    private func arrived(_ response: IntakeResponse, for id: UInt64, context: ChannelHandlerContext) {
        guard self.context != nil, let first = queue.first, id >= first.id, id - first.id < UInt64(queue.count) else {
            return
        }
        let index = queue.index(queue.startIndex, offsetBy: Int(id - first.id))
        let slot = queue[index]
        guard slot.id == id, slot.answer == nil else { return }
        let last = Int(id - first.id) == queue.count - 1
        if case .passThrough = response, let raw = slot.request, last {
            // Only the request that held the parsing can pass through: nothing after it was parsed. The general
            // path streams it, and what follows (its own `Connection: close` included).
            queue.removeLast()
            holding = false
            closing = false
            var rest = pending ?? ByteBuffer()
            var whole = raw
            whole.writeBuffer(&rest)
            pending = whole
            moveToGeneral(context: context)
        } else {
            let (encoded, closes) = encode(
                response, closes: slot.closes, mayClose: last, started: slot.started, context: context)
            queue[index].answer = encoded
            queue[index].closes = closes
            if closes { closing = true }
            if slot.request != nil { holding = false }
        }
        writeReadyAnswers()
        if !holding, !closing, !quiescing, handOff == nil, pending != nil {
            burstStarted = context.eventLoop.now
            serve(context: context)
            // No read is under way: what is left incomplete is the general path's to time and bound.
            moveToGeneralIfIncomplete(context: context)
        }
        // The answers of every waiting request completed on this turn of the loop go out in one write.
        if !flushScheduled {
            flushScheduled = true
            context.eventLoop.assumeIsolated().execute { [self] in
                flushScheduled = false
                guard let context = self.context else { return }
                flushAnswers(context: context)
                resumeReadingIfAllowed(context: context)
            }
        }
    }

    /// Queues an answer known now: behind waiting ones, or straight into this burst's write.
    private func answer(_ response: IntakeResponse, id: UInt64, closes: Bool, context: ChannelHandlerContext) {
        var (encoded, closes) = encode(response, closes: closes, mayClose: true, started: burstStarted, context: context)
        if queue.isEmpty {
            if out == nil { out = encoded } else { out!.writeBuffer(&encoded) }
        } else {
            queue.append(Slot(id: id, answer: encoded, closes: closes, started: burstStarted, request: nil))
        }
        if closes { closing = true }
    }

    /// Moves the answers at the front of the queue that are known into the next write. Nothing follows an answer
    /// that closes the connection.
    private func writeReadyAnswers() {
        while let first = queue.first, var answer = first.answer {
            queue.removeFirst()
            if out == nil { out = answer } else { out!.writeBuffer(&answer) }
            if first.closes {
                closing = true
                queue.removeAll()
            }
        }
    }

    /// Writes the answers due in one write; then hands bytes waiting for the general path over, or closes after a
    /// closing answer or at the end of a graceful shutdown, once every answer is written.
    private func flushAnswers(context: ChannelHandlerContext) {
        if handedOver { return }
        requestHandler?.fastPathActivity(busy: !queue.isEmpty, at: context.eventLoop.now)
        if let answers = out {
            out = nil
            context.writeAndFlush(wrapOutboundOut(answers), promise: nil)
        }
        guard queue.isEmpty else { return }
        if quiescing, let bytes = handOff {
            // A request that held the parsing passes through after shutdown began: the general path serves it,
            // then closes.
            handOff = nil
            context.fireChannelRead(wrapInboundOut(bytes))
            context.fireChannelReadComplete()
            context.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        } else if closing || quiescing {
            closeAfterWrites(context: context)
        } else if let bytes = handOff {
            handOff = nil
            context.fireChannelRead(wrapInboundOut(bytes))
            context.fireChannelReadComplete()
            resumeReadingIfAllowed(context: context)
        }
    }

    /// Closes once every answer written so far is on the socket (closing at once would drop them: NIO fails the
    /// writes still pending). Writes complete in order, so an empty one completes after all of them.
    private func closeAfterWrites(context: ChannelHandlerContext) {
        guard !closeRequested else { return }
        closeRequested = true
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(capacity: 0))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    /// From the request at the start of `pending` on, the connection is the general path's. Its bytes go there
    /// once every answer before them is written.
    private func moveToGeneral(context: ChannelHandlerContext) {
        general = true
        var bytes = pending ?? ByteBuffer()
        pending = nil
        if handOff == nil { handOff = bytes } else { handOff!.writeBuffer(&bytes) }
        if queue.isEmpty { flushAnswers(context: context) }
    }

    /// A request still incomplete when no more bytes are being read is a slow or large one: the general path
    /// times and bounds it. (Not while parsing is held or many answers wait: those requests wait here.)
    private func moveToGeneralIfIncomplete(context: ChannelHandlerContext) {
        guard !general, !holding, handOff == nil, !closing, !quiescing, queue.count < Self.maxWaiting,
            let pending, pending.readableBytes > 0
        else { return }
        moveToGeneral(context: context)
    }

    private func resumeReadingIfAllowed(context: ChannelHandlerContext) {
        guard readPending, !readsPaused else { return }
        readPending = false
        context.read()
    }

    // MARK: Answers

    /// The bytes of an answer, as the general path writes it (`RequestHandler.respond`), whether the connection
    /// closes after it, and its metrics. `closes`: the client asked to close; `mayClose`: an answer that closes
    /// the connection may be written (no answer follows it).
    private func encode(
        _ response: IntakeResponse, closes: Bool, mayClose: Bool, started: NIODeadline, context: ChannelHandlerContext
    ) -> (ByteBuffer, closes: Bool) {
        let keepAlive = closes ? nil : keepAliveSeconds
        let allocator = context.channel.allocator
        switch response {
        case .accepted(let rows, let bytes, let ack):
            CrashPoint.beforeAck.reach()
            let nanoseconds = context.eventLoop.now.uptimeNanoseconds &- started.uptimeNanoseconds
            metrics.answered(ack: ThreadCounters.LatencyAck(ack), nanoseconds: Int64(truncatingIfNeeded: nanoseconds))
            if let last = lastAccepted, last.rows == rows, last.bytes == bytes, last.ack == ack, last.keepAlive == keepAlive {
                return (last.response, closes)
            }
            let encoded = FastResponse.accepted(rows: rows, bytes: bytes, ack: ack, keepAlive: keepAlive, allocator: allocator)
            lastAccepted = (rows, bytes, ack, keepAlive, encoded)
            return (encoded, closes)
        case .refused(let error, let close):
            metrics.refused(error.reason)
            let closing = closes || (close && mayClose)
            return (
                FastResponse.encode(
                    status: error.status, headers: error.headers, body: Array(error.body.utf8),
                    keepAlive: closing ? nil : keepAliveSeconds, allocator: allocator), closing
            )
        case .relayed(let upstream):
            let refusal = RefusalKind(status: upstream.status, code: clickHouseErrorCode(in: upstream.body))
            metrics.refused(refusal == .authentication || refusal == .permission ? .auth : .clickhouse)
            var headers = HeaderPolicy.relayedBufferedHeaders(upstream.headers)
            headers.replaceOrAdd(name: "X-Batchhouse-Ack", value: AckMode.flushed.rawValue)
            headers.remove(name: "Connection")
            headers.remove(name: "Keep-Alive")
            guard HeaderPolicy.areValidToSend(upstream.headers) else {
                // The general path closes the connection unanswered. With answers after it, that would make the
                // client read the next one as this one's: it gets a 502 instead.
                if mayClose { return (allocator.buffer(capacity: 0), true) }
                let error = ClickHouseError.upstreamUnavailable(
                    "Batchhouse: ClickHouse's answer carried a header that cannot be sent to the client")
                return (
                    FastResponse.encode(
                        status: error.status, headers: error.headers, body: Array(error.body.utf8),
                        keepAlive: keepAlive, allocator: allocator), closes
                )
            }
            return (
                FastResponse.encode(
                    status: upstream.status, headers: headers.map { ($0.name, $0.value) },
                    body: Array(upstream.body.readableBytesView), keepAlive: keepAlive, allocator: allocator), closes
            )
        case .passThrough:
            // Only the request that held the parsing may pass through after waiting (see `arrived`).
            let error = ClickHouseError(
                code: 1001, name: "STD_EXCEPTION", message: "Batchhouse: a pass-through came after the request ended",
                status: 500)
            return (
                FastResponse.encode(
                    status: error.status, headers: error.headers, body: Array(error.body.utf8),
                    keepAlive: mayClose ? nil : keepAlive, allocator: allocator), closes || mayClose
            )
        }
    }
}

/// Whole HTTP/1.1 responses as bytes, written by the fast path: the same status line, headers, order and framing
/// as NIO's encoder writes for the general path's `HTTPResponseHead`.
enum FastResponse {
    /// The 200 of a batched INSERT (`RequestHandler.respondAccepted`).
    static func accepted(rows: Int, bytes: Int, ack: AckMode, keepAlive: Int?, allocator: ByteBufferAllocator)
        -> ByteBuffer
    {
        let summary =
            "{\"read_rows\":\"0\",\"read_bytes\":\"0\",\"written_rows\":\"\(rows)\",\"written_bytes\":\"\(bytes)\",\"total_rows_to_read\":\"0\"}"
        return encode(
            status: 200, headers: [("X-ClickHouse-Summary", summary), ("X-Batchhouse-Ack", ack.rawValue)], body: [],
            keepAlive: keepAlive, allocator: allocator)
    }

    /// `headers` must not hold `Content-Length`, `Connection` or `Keep-Alive`: they are written here.
    /// `keepAlive`: the idle timeout announced, nil for `Connection: close`.
    static func encode(
        status: Int, headers: [(String, String)], body: [UInt8], keepAlive: Int?, allocator: ByteBufferAllocator
    ) -> ByteBuffer {
        let phrase = HTTPResponseStatus(statusCode: status).reasonPhrase
        var buffer = allocator.buffer(capacity: 160 + body.count)
        buffer.writeString("HTTP/1.1 \(status) \(phrase)\r\n")
        for (name, value) in headers where name.lowercased() != "content-length" {
            buffer.writeString(name)
            buffer.writeStaticString(": ")
            buffer.writeString(value)
            buffer.writeStaticString("\r\n")
        }
        buffer.writeString("Content-Length: \(body.count)\r\n")
        for (name, value) in HeaderPolicy.connectionFields(keepAlive.map { .keepAlive(timeoutSeconds: $0) } ?? .close) {
            buffer.writeString(name)
            buffer.writeStaticString(": ")
            buffer.writeString(value)
            buffer.writeStaticString("\r\n")
        }
        buffer.writeStaticString("\r\n")
        buffer.writeBytes(body)
        return buffer
    }
}
