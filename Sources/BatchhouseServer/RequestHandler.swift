import BatchhouseCore
import BatchhouseSpool
import BatchhouseUpstream
import Logging
import NIOCore
import NIOHTTP1

/// One per connection, after NIO's HTTP/1.1 codec and pipelining handler. It decides per request whether
/// the proxy answers it (local endpoints), batches it (INSERTs it can parse) or streams it to ClickHouse.
/// Decisions live in `RequestRouting` and the core; this type performs them.
final class RequestHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// How much of a body is read to find where an INSERT's data begins before giving up and streaming it.
    static let classificationLimit = 64 * 1024

    private enum State {
        case idle
        case local(LocalEndpoint, HTTPRequestHead)
        case buffering(BufferedRequest)
        case passthrough(PassthroughBridge)
        /// An INSERT waits for its ack: an fsync (`durable`) or its batch's outcome (`flushed`, `immediate`).
        case awaitingAck(HTTPRequestHead)
        /// An error was answered before the body ended; the rest of the body is dropped, then the connection closes.
        case discarding
    }

    struct BufferedRequest {
        var head: HTTPRequestHead
        var parameters: RequestParameters
        var body: ByteBuffer
        var coding: ContentCoding?
        var statement: InsertStatement?
        var classificationDone = false
    }

    private let app: AppContext
    private var state: State = .idle
    private var readPaused = false
    private var readPending = false
    private var context: ChannelHandlerContext?
    /// Reused for `query` + "\n" + body when the statement starts in the URL (kept only while small).
    private var statementScratch: [UInt8] = []
    /// The last `X-ClickHouse-Summary` value: clients sending rows of the same shape get the same one.
    private var lastSummary: (rows: Int, bytes: Int, text: String)?

    init(app: AppContext) {
        self.app = app
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            receivedHead(head, context: context)
        case .body(let part):
            receivedBody(part, context: context)
        case .end:
            receivedEnd(context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if case .passthrough(let bridge) = state {
            bridge.cancel()
        }
        state = .idle
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if case .passthrough(let bridge) = state { bridge.cancel() }
        context.close(promise: nil)
    }

    // MARK: Outbound read control (backpressure towards the client)

    func read(context: ChannelHandlerContext) {
        if readPaused {
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
        if readPending, let context {
            readPending = false
            context.read()
        }
    }

    // MARK: Request parts

    private func receivedHead(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        let (path, query) = Self.split(uri: head.uri)
        if let endpoint = LocalEndpoint(path: path) {
            state = .local(endpoint, head)
            return
        }
        guard head.method == .POST else {
            startPassthrough(head: head, initialBody: nil, bodyComplete: false, context: context)
            return
        }
        let hasLength = head.headers.contains(name: "content-length")
        if !hasLength && !head.headers[canonicalForm: "transfer-encoding"].contains(where: { $0.lowercased() == "chunked" }) {
            app.metrics.request(.rejected)
            respondError(.lengthRequired, head: head, close: true, context: context)
            state = .discarding
            return
        }
        let parameters = RequestParameters(uriQuery: query) { name in head.headers.first(name: name) }
        let encoding = head.headers.first(name: "content-encoding")?.lowercased().trimmingCharacters(in: .whitespaces)
        let coding: ContentCoding?
        switch encoding {
        case nil, "", "identity": coding = nil
        case "gzip", "x-gzip": coding = .gzip
        case "deflate": coding = .deflate
        default:
            startPassthrough(head: head, initialBody: nil, bodyComplete: false, context: context)
            return
        }
        if parameters.decompress || Self.isMultipart(head.headers.first(name: "content-type")) {
            startPassthrough(head: head, initialBody: nil, bodyComplete: false, context: context)
            return
        }
        if head.headers.first(name: "expect")?.lowercased() == "100-continue" {
            context.writeAndFlush(
                wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))), promise: nil)
        }
        state = .buffering(
            BufferedRequest(
                head: head, parameters: parameters, body: context.channel.allocator.buffer(capacity: 0),
                coding: coding))
    }

    private func receivedBody(_ part: ByteBuffer, context: ChannelHandlerContext) {
        switch state {
        case .buffering(var request):
            state = .idle  // keep `request` uniquely referenced while it grows
            if request.body.readableBytes == 0 {
                request.body = part
            } else {
                var part = part
                request.body.writeBuffer(&part)
            }
            if request.coding == nil && !request.classificationDone {
                switch classify(query: request.parameters.query, body: request.body, isComplete: false) {
                case .insert(let statement):
                    request.statement = statement
                    request.classificationDone = true
                case .passthrough:
                    startPassthrough(head: request.head, initialBody: request.body, bodyComplete: false, context: context)
                    return
                case .needMoreData:
                    if request.body.readableBytes > Self.classificationLimit {
                        startPassthrough(head: request.head, initialBody: request.body, bodyComplete: false, context: context)
                        return
                    }
                }
            }
            let limit = app.configurationSnapshot.value.limits.maxRequestBody
            if request.body.readableBytes > limit {
                if request.statement != nil {
                    app.metrics.request(.rejected)
                    respondError(.bodyTooLarge(limit: limit), head: request.head, close: true, context: context)
                    state = .discarding
                } else {
                    // Too large to batch: ClickHouse gets it as it came.
                    startPassthrough(head: request.head, initialBody: request.body, bodyComplete: false, context: context)
                }
                return
            }
            state = .buffering(request)
        case .passthrough(let bridge):
            bridge.writeRequestBody(part)
        case .idle, .local, .awaitingAck, .discarding:
            break
        }
    }

    private func receivedEnd(context: ChannelHandlerContext) {
        switch state {
        case .local(let endpoint, let head):
            state = .idle
            app.metrics.request(.local)
            let (_, query) = Self.split(uri: head.uri)
            let response = endpoint.respond(query: query, acceptHeader: head.headers.first(name: "accept"), app: app)
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: response.contentType)
            respond(
                head: head, status: response.status, headers: headers,
                body: head.method == .HEAD ? [] : response.body, close: false, context: context)
        case .buffering(let request):
            state = .idle
            finishBuffered(request, context: context)
        case .passthrough(let bridge):
            bridge.finishRequestBody()
        case .discarding:
            state = .idle
            context.close(promise: nil)
        case .idle, .awaitingAck:
            break
        }
    }

    // MARK: INSERT intake

    /// Parses the statement `query` + "\n" + body (DESIGN.md, request path item 4), up to `classificationLimit`
    /// bytes of the body.
    private func classify(query: String?, body: ByteBuffer, isComplete: Bool) -> InsertParseResult {
        let bodyPrefix = min(body.readableBytes, Self.classificationLimit)
        let complete = isComplete && bodyPrefix == body.readableBytes
        guard let query else {
            // The statement is the body alone: parse it where it lies.
            return body.withUnsafeReadableBytes {
                InsertParser.parse(UnsafeRawBufferPointer(rebasing: $0.prefix(bodyPrefix)), isComplete: complete)
            }
        }
        statementScratch.removeAll(keepingCapacity: true)
        statementScratch.reserveCapacity(query.utf8.count + 1 + bodyPrefix)
        statementScratch.append(contentsOf: query.utf8)
        statementScratch.append(UInt8(ascii: "\n"))
        body.withUnsafeReadableBytes { statementScratch.append(contentsOf: $0.prefix(bodyPrefix)) }
        let result = statementScratch.withUnsafeBytes { InsertParser.parse($0, isComplete: complete) }
        if statementScratch.capacity > 16 * 1024 { statementScratch = [] }
        return result
    }

    private func finishBuffered(_ request: BufferedRequest, context: ChannelHandlerContext) {
        var request = request
        var decoded = request.body
        if let coding = request.coding {
            do {
                let limit = app.configuration.limits.maxRequestBody
                let bytes = try request.body.withUnsafeReadableBytes { try Zlib.decompress($0, as: coding, limit: limit) }
                decoded = ByteBuffer(bytes: bytes)
            } catch {
                app.metrics.request(.rejected)
                respondError(
                    .cannotDecompress("Batchhouse: cannot decode the \(coding) request body: \(error)"),
                    head: request.head, close: false, context: context)
                return
            }
        }
        if request.statement == nil || request.coding != nil {
            switch classify(query: request.parameters.query, body: decoded, isComplete: true) {
            case .insert(let statement):
                request.statement = statement
            case .passthrough, .needMoreData:
                startPassthrough(head: request.head, initialBody: request.body, bodyComplete: true, context: context)
                return
            }
        }
        guard let statement = request.statement else { return }
        intake(request, statement: statement, decodedBody: decoded, context: context)
    }

    private func intake(
        _ request: BufferedRequest, statement: InsertStatement, decodedBody: ByteBuffer, context: ChannelHandlerContext
    ) {
        let configuration = app.configurationSnapshot.value
        let serviceAccount = configuration.upstream.user != nil
        let database = statement.database ?? request.parameters.database
        let rule = configuration.rules.rule(database: database ?? "default", table: statement.table)
        if rule.passthrough {
            startPassthrough(head: request.head, initialBody: request.body, bodyComplete: true, context: context)
            return
        }
        // The data is whatever follows `dataOffset` in query + "\n" + body.
        let query = request.parameters.query
        let prefixLength = query.map { $0.utf8.count + 1 } ?? 0
        var data: ByteBuffer
        if statement.dataOffset >= prefixLength {
            data = decodedBody.getSlice(
                at: decodedBody.readerIndex + statement.dataOffset - prefixLength,
                length: decodedBody.readableBytes - (statement.dataOffset - prefixLength)) ?? ByteBuffer()
        } else {
            data = ByteBuffer()
            if let query {
                data.writeBytes(query.utf8.dropFirst(statement.dataOffset))
                data.writeInteger(UInt8(ascii: "\n"))
            }
            var body = decodedBody
            data.writeBuffer(&body)
        }

        let outcome = data.withUnsafeReadableBytes { bytes -> IntakeOutcome in
            let scanned: ScannedRows
            do throws(RowScanError) {
                scanned = try RowScanner.scan(bytes, format: statement.format)
            } catch {
                return .invalid(error)
            }
            let header = scanned.header.map { Array(bytes[$0]) }
            let key = BatchKey(
                // Service-account mode: every batch goes up as `upstream.user`, so clients' identities neither
                // split batches nor reach the spool.
                identity: serviceAccount ? .anonymous : request.parameters.identity, database: database,
                table: statement.table,
                columns: statement.columns, format: statement.format, header: header,
                settings: request.parameters.settings + statement.settings)
            let rows = UnsafeRawBufferPointer(rebasing: bytes[scanned.rows])
            if rule.sample < 1.0 && statement.format.isRowCounted && scanned.rowCount > 0 {
                guard let kept = RowSampler.sample(rows, format: statement.format, fraction: rule.sample) else {
                    return .invalid(nil)
                }
                app.metrics.sampledOut(table: key.qualifiedTable, rows: scanned.rowCount - kept.rows)
                if kept.rows == 0 { return .acceptedEmpty(key: key) }
                return kept.data.withUnsafeBytes { keptBytes in
                    self.store(
                        key: key, rule: rule, rows: keptBytes, rowCount: kept.rows, endsWithNewline: true,
                        context: context)
                }
            }
            return store(
                key: key, rule: rule, rows: rows, rowCount: scanned.rowCount, endsWithNewline: scanned.endsWithNewline,
                context: context)
        }

        switch outcome {
        case .invalid(let error):
            app.metrics.request(.rejected)
            let clickHouseError =
                error.map { ClickHouseError(code: $0.code, name: $0.name, message: $0.message, status: .badRequest) }
                ?? .syntax("Batchhouse: cannot split the data into rows")
            respondError(clickHouseError, head: request.head, close: false, context: context)
        case .overMemory(let inUse):
            app.metrics.request(.rejected)
            respondError(
                .memoryLimit(
                    "Batchhouse: buffers are full for priority \(rule.priority) tables (\(inUse) bytes in use of limits.max_buffer_memory \(configuration.limits.maxBufferMemory); shedding starts at 80% for priority 5); retry later"
                ), head: request.head, close: false, context: context)
        case .acceptedEmpty:
            app.metrics.request(.batchedInsert)
            respondAccepted(head: request.head, rows: 0, bytes: 0, ack: "enqueued", context: context)
        case .enqueued(let key, let rows, let bytes):
            app.metrics.request(.batchedInsert)
            app.metrics.received(table: key.qualifiedTable, rows: rows, bytes: bytes)
            respondAccepted(head: request.head, rows: rows, bytes: bytes, ack: "enqueued", context: context)
        case .durable(let key, let rows, let bytes, let position, let spool):
            app.metrics.request(.batchedInsert)
            app.metrics.received(table: key.qualifiedTable, rows: rows, bytes: bytes)
            state = .awaitingAck(request.head)
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let eventLoop = context.eventLoop
            let head = request.head
            Task {
                var synced: SpoolError?
                do throws(SpoolError) { try await spool.waitDurable(position) } catch { synced = error }
                let failure = synced
                eventLoop.execute {
                    let (handler, context) = loopBound.value
                    handler.durableAnswered(failure, head: head, rows: rows, bytes: bytes, context: context)
                }
            }
        case .waiting(let key, let rows, let bytes, let immediate):
            // The answer comes from the flush report, through `flushAnswered`, on this event loop.
            state = .awaitingAck(request.head)
            app.metrics.request(immediate ? .immediateInsert : .batchedInsert)
            app.metrics.received(table: key.qualifiedTable, rows: rows, bytes: bytes)
        case .spoolRefused(let error):
            app.metrics.request(.rejected)
            respondError(
                error.code == .full
                    ? .spoolFull("Batchhouse: the spool is full (spool.max_size); retry later")
                    : .spoolFailed("Batchhouse: cannot write the spool: \(error.message)"),
                head: request.head, close: false, context: context)
        }
    }

    private enum IntakeOutcome {
        case invalid(RowScanError?)
        case overMemory(Int)
        case acceptedEmpty(key: BatchKey)
        /// Buffered (and written to the spool, if any); answer now.
        case enqueued(key: BatchKey, rows: Int, bytes: Int)
        /// Buffered and written to the spool; answer once an fsync covers it.
        case durable(key: BatchKey, rows: Int, bytes: Int, position: SpoolPosition, spool: Spool)
        /// Answered when the batch holding the rows has an outcome (`ack: flushed`, `immediate`).
        case waiting(key: BatchKey, rows: Int, bytes: Int, immediate: Bool)
        case spoolRefused(SpoolError)
    }

    private func store(
        key: BatchKey, rule: TableRule, rows: UnsafeRawBufferPointer, rowCount: Int, endsWithNewline: Bool,
        context: ChannelHandlerContext
    ) -> IntakeOutcome {
        if rowCount == 0 && rows.isEmpty { return .acceptedEmpty(key: key) }
        let immediate = rule.strategy == .immediate
        var token: UInt64 = 0
        if immediate || rule.ack == .flushed {
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let eventLoop = context.eventLoop
            let bytes = rows.count
            token = app.acks.register { failure in
                eventLoop.execute {
                    let (handler, context) = loopBound.value
                    handler.flushAnswered(failure, rows: rowCount, bytes: bytes, context: context)
                }
            }
        }
        // `immediate` rows wait for ClickHouse's own answer, so they are not spooled.
        var position: SpoolPosition?
        if let spool = app.spool, !immediate {
            do throws(SpoolError) {
                position = try spool.append(key: key, rows: rowCount, endsWithNewline: endsWithNewline, data: rows)
            } catch {
                app.acks.cancel(token)
                return .spoolRefused(error)
            }
        }
        if immediate {
            let batch = app.batcher.single(
                key: key, rule: rule, chunk: rows, rows: rowCount, endsWithNewline: endsWithNewline, token: token)
            app.flusher.submit(batch)
            return .waiting(key: key, rows: rowCount, bytes: rows.count, immediate: true)
        }
        switch app.batcher.append(
            key: key, rule: rule, chunk: rows, rows: rowCount, endsWithNewline: endsWithNewline, token: token,
            spoolChunk: position?.chunkID)
        {
        case .accepted:
            if token != 0 { return .waiting(key: key, rows: rowCount, bytes: rows.count, immediate: false) }
            if rule.ack == .durable, let position, let spool = app.spool {
                return .durable(key: key, rows: rowCount, bytes: rows.count, position: position, spool: spool)
            }
            return .enqueued(key: key, rows: rowCount, bytes: rows.count)
        case .overMemoryLimit(let inUse):
            app.acks.cancel(token)
            if let position { app.spool?.markDelivered([position.chunkID]) }
            return .overMemory(inUse)
        }
    }

    private func durableAnswered(
        _ failure: SpoolError?, head: HTTPRequestHead, rows: Int, bytes: Int, context: ChannelHandlerContext
    ) {
        guard case .awaitingAck = state else { return }
        state = .idle
        if let failure {
            respondError(.spoolFailed("Batchhouse: the spool could not be synced: \(failure.message)"), head: head, close: false, context: context)
        } else {
            respondAccepted(head: head, rows: rows, bytes: bytes, ack: "durable", context: context)
        }
    }

    /// The batch holding this request's rows has an outcome (`ack: flushed`, `immediate`).
    private func flushAnswered(_ failure: FlushReport.Failure?, rows: Int, bytes: Int, context: ChannelHandlerContext) {
        guard case .awaitingAck(let head) = state else { return }
        state = .idle
        guard let failure else {
            respondAccepted(head: head, rows: rows, bytes: bytes, ack: "flushed", context: context)
            return
        }
        switch failure.reason {
        case .rejected(let response):
            guard Self.areValidToSend(response.headers) else {
                context.close(promise: nil)
                return
            }
            var headers = HTTPHeaders()
            for (name, value) in response.headers where !Self.hopByHop.contains(name.lowercased())
                && name.lowercased() != "content-length"
            {
                headers.add(name: name, value: value)
            }
            headers.replaceOrAdd(name: "X-Batchhouse-Ack", value: "flushed")
            respond(
                head: head, status: HTTPResponseStatus(statusCode: response.status), headers: headers,
                body: Array(response.body.readableBytesView), close: false, context: context)
        case .failed(let error):
            respondError(
                .upstreamUnavailable("Batchhouse: ClickHouse did not take the rows: \(error.message)"), head: head,
                close: false, context: context)
        case .deferred:
            respondError(
                .spoolFull("Batchhouse: the rows are in the spool but not yet in ClickHouse (shutting down)"),
                head: head, close: true, context: context)
        }
    }

    // MARK: Passthrough

    /// Response headers that describe the upstream connection, not the response: never relayed.
    static let hopByHopResponse: Set<String> = ["connection", "keep-alive", "transfer-encoding", "proxy-connection"]

    static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "expect",
        "host", "content-length",
    ]

    private func startPassthrough(
        head: HTTPRequestHead, initialBody: ByteBuffer?, bodyComplete: Bool, context: ChannelHandlerContext
    ) {
        app.metrics.request(.passthrough)
        let configuration = app.configurationSnapshot.value
        var server = app.sender.passthroughServer()
        while server.hasSuffix("/") { server.removeLast() }
        var headers: [(String, String)] = []
        for header in head.headers where !Self.hopByHop.contains(header.name.lowercased()) {
            headers.append((header.name, header.value))
        }
        let hasBody = head.method != .GET && head.method != .HEAD
        let length = head.headers.first(name: "content-length").flatMap(Int.init)
        var request = UpstreamRequest(
            method: head.method.rawValue, url: server + head.uri, headers: headers, body: nil, basicAuth: nil,
            connectTimeout: configuration.upstream.connectTimeout, timeout: nil)
        request.tls = configuration.upstream.upstreamTLS
        let bridge = PassthroughBridge(handler: self, context: context, requestHead: head)
        state = .passthrough(bridge)
        bridge.start(client: app.client, request: request, requestBodyLength: hasBody ? length : nil, hasBody: hasBody)
        if let initialBody, initialBody.readableBytes > 0 {
            bridge.writeRequestBody(initialBody)
        }
        if bodyComplete || !hasBody {
            if bodyComplete { bridge.finishRequestBody() }
        }
    }

    /// Called by the bridge on this event loop.
    func passthroughHead(status: Int, headers upstreamHeaders: [(String, String)], bridge: PassthroughBridge) {
        guard let context, case .passthrough(let current) = state, current === bridge else { return }
        guard Self.areValidToSend(upstreamHeaders) else {
            bridge.cancel()
            context.close(promise: nil)
            return
        }
        var headers = HTTPHeaders()
        for (name, value) in upstreamHeaders where !Self.hopByHopResponse.contains(name.lowercased()) {
            headers.add(name: name, value: value)
        }
        let head = bridge.requestHead
        if !head.isKeepAlive {
            headers.replaceOrAdd(name: "Connection", value: "close")
        } else if head.version.minor == 0 {
            headers.replaceOrAdd(name: "Connection", value: "keep-alive")
        }
        context.writeAndFlush(
            wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: HTTPResponseStatus(statusCode: status), headers: headers))),
            promise: nil)
    }

    func passthroughBody(_ buffer: ByteBuffer, bridge: PassthroughBridge) {
        guard let context, case .passthrough(let current) = state, current === bridge else { return }
        let count = buffer.readableBytes
        let promise = context.eventLoop.makePromise(of: Void.self)
        promise.futureResult.whenComplete { _ in bridge.wrote(count) }
        context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: promise)
    }

    func passthroughFinished(error: UpstreamError?, headSent: Bool, requestEnded: Bool, bridge: PassthroughBridge) {
        guard let context, case .passthrough(let current) = state, current === bridge else { return }
        state = requestEnded ? .idle : .discarding
        resumeReading()
        let head = bridge.requestHead
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
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .badGateway))), promise: nil)
        }
        let close = !head.isKeepAlive || !requestEnded
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if close { channel.close(promise: nil) }
        }
    }

    // MARK: Responses

    /// The answer to a batched INSERT: 200, no body (the hot path: headers built in one go, no future).
    private func respondAccepted(head: HTTPRequestHead, rows: Int, bytes: Int, ack: String, context: ChannelHandlerContext) {
        let summary: String
        if let last = lastSummary, last.rows == rows, last.bytes == bytes {
            summary = last.text
        } else {
            summary =
                "{\"read_rows\":\"0\",\"read_bytes\":\"0\",\"written_rows\":\"\(rows)\",\"written_bytes\":\"\(bytes)\",\"total_rows_to_read\":\"0\"}"
            lastSummary = (rows, bytes, summary)
        }
        var fields = [("X-ClickHouse-Summary", summary), ("X-Batchhouse-Ack", ack), ("Content-Length", "0")]
        let close = !head.isKeepAlive
        if close {
            fields.append(("Connection", "close"))
        } else if head.version.minor == 0 {
            fields.append(("Connection", "keep-alive"))
        }
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: HTTPHeaders(fields)))),
            promise: nil)
        if close {
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
        } else {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }

    private func respondError(_ error: ClickHouseError, head: HTTPRequestHead, close: Bool, context: ChannelHandlerContext) {
        respond(
            head: head, status: error.status, headers: error.headers, body: Array(error.body.utf8), close: close,
            context: context)
    }

    private func respond(
        head: HTTPRequestHead, status: HTTPResponseStatus, headers: HTTPHeaders, body: [UInt8], close: Bool,
        context: ChannelHandlerContext
    ) {
        var headers = headers
        let close = close || !head.isKeepAlive
        headers.replaceOrAdd(name: "Content-Length", value: String(body.count))
        if close {
            headers.replaceOrAdd(name: "Connection", value: "close")
        } else if head.version.minor == 0 {
            headers.replaceOrAdd(name: "Connection", value: "keep-alive")
        }
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if !body.isEmpty {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if close {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }

    /// Whether headers from ClickHouse may be sent to a client (RFC 9110: names are tokens, values have no control
    /// characters but HTAB). The pipeline runs without NIO's outbound header validator, which checked every response
    /// on the hot path although the proxy's own headers are constants; headers it did not write are checked here,
    /// and, as with that validator, a response carrying an invalid one closes the connection.
    static func areValidToSend(_ headers: [(String, String)]) -> Bool {
        headers.allSatisfy { name, value in
            !name.isEmpty
                && name.utf8.allSatisfy { byte in
                    switch byte {
                    case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                        UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"),
                        UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"),
                        UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"),
                        UInt8(ascii: "|"), UInt8(ascii: "~"):
                        return true
                    default:
                        return false
                    }
                }
                && value.utf8.allSatisfy { $0 == UInt8(ascii: "\t") || ($0 > 0x1f && $0 != 0x7f) }
        }
    }

    /// `Content-Type: multipart/...`, in any case.
    static func isMultipart(_ contentType: String?) -> Bool {
        guard let contentType else { return false }
        let prefix = "multipart/".utf8
        guard contentType.utf8.count >= prefix.count else { return false }
        return zip(contentType.utf8, prefix).allSatisfy { byte, expected in
            (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte) ? byte | 0x20 == expected : byte == expected
        }
    }

    static func split(uri: String) -> (path: Substring, query: Substring) {
        if let question = uri.firstIndex(of: "?") {
            return (uri[..<question], uri[uri.index(after: question)...])
        }
        return (uri[...], "")
    }
}
