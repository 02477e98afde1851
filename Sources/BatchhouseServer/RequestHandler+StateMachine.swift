import BatchhouseConfig
import BatchhouseCore
import BatchhouseEngine
import BatchhouseUpstream
import NIOCore
import NIOHTTP1

/// Where a connection holds bytes of a request body that has not ended: `Buffering`'s memory budget in the server,
/// a fake in tests.
protocol IncomingBodyBudget {
    /// False when the budget cannot take `bytes` more.
    func reserve(_ bytes: Int) -> Bool
    func release(_ bytes: Int)
}

extension Buffering: IncomingBodyBudget {
    func reserve(_ bytes: Int) -> Bool { reserveIncoming(bytes: bytes) == nil }
    func release(_ bytes: Int) { releaseIncoming(bytes: bytes) }
}

/// No budget (handler tests without an engine).
struct UnlimitedBodyBudget: IncomingBodyBudget {
    func reserve(_ bytes: Int) -> Bool { true }
    func release(_ bytes: Int) {}
}

/// How long a client may take: `limits.header_timeout`, `body_timeout`, `request_timeout`, `idle_timeout`.
struct ConnectionTimeouts: Equatable {
    var header: TimeAmount
    var body: TimeAmount
    var request: TimeAmount
    var idle: TimeAmount

    init(header: TimeAmount, body: TimeAmount, request: TimeAmount, idle: TimeAmount) {
        self.header = header
        self.body = body
        self.request = request
        self.idle = idle
    }

    init(_ limits: Limits) {
        self.init(
            header: Self.amount(limits.headerTimeout), body: Self.amount(limits.bodyTimeout),
            request: Self.amount(limits.requestTimeout), idle: Self.amount(limits.idleTimeout))
    }

    /// The shortest of them: the connection's timer never sleeps longer, so a phase that starts between two
    /// checks is never checked late and no event on the hot path has to move the timer.
    var shortest: TimeAmount { min(header, body, request, idle) }

    static func amount(_ duration: Duration) -> TimeAmount {
        let (seconds, attoseconds) = duration.components
        return .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}

/// Which bound a connection ran into (the `kind` label of `batchhouse_timeouts_total`).
enum ConnectionTimeoutKind: String, CaseIterable, Sendable {
    case header
    case body
    case request
    case idle
}

extension RequestHandler {
    /// What one connection is doing with its current request, as a plain value: each event from the channel goes
    /// in, an action for the handler comes out. It decides which requests are the proxy's own, which are buffered
    /// as INSERTs and which stream to ClickHouse, and when a connection must close; it performs nothing itself,
    /// so it is tested without sockets (docs/architecture.md, "The HTTP server").
    struct StateMachine {
        struct BufferedRequest {
            var head: HTTPRequestHead
            var parameters: RequestParameters
            var body: ByteBuffer
            var coding: ContentCoding?
            var statement: InsertStatement?
            var classificationDone = false
            /// An encoded body (a Content-Encoding, `decompress=1`'s compressed blocks, or both) is decoded as it
            /// arrives into `body`.
            var decoder: (any BodyDecoder)?
            /// The encoded body as received, kept until the statement is classified (a request that is not an
            /// INSERT goes upstream as it came).
            var encoded: ByteBuffer?
            /// The end arrived while decoded output was still pending.
            var ended = false
            /// Decoding stopped at an output slice; `continueDecoding` goes on.
            var decodePending = false
        }

        enum State {
            case idle
            case local(LocalEndpoint, HTTPRequestHead)
            case buffering(BufferedRequest)
            /// The body ended; the intake decides.
            case intaking(HTTPRequestHead, body: ByteBuffer)
            /// Streaming to ClickHouse; `requestEnded` once the client's body is all forwarded.
            case passthrough(HTTPRequestHead, requestEnded: Bool)
            /// An INSERT waits for its ack: an fsync (`durable`), its batch's outcome (`flushed`, `immediate`), or
            /// ClickHouse's word on a new identity's credentials or on the table's columns. `body` is kept only in
            /// the last two cases, where the intake may still say to pass the request through.
            case awaitingAck(HTTPRequestHead, body: ByteBuffer?)
            /// An error was answered before the body ended; the rest of the body is dropped, then the connection
            /// closes.
            case discarding
        }

        enum Action {
            case none
            /// `100 Continue` before the body (`Expect: 100-continue`).
            case sendContinue(HTTPRequestHead)
            case respondLocal(LocalEndpoint, HTTPRequestHead)
            /// An error the server makes before the intake sees the request (411, 413).
            case respondError(ClickHouseError, HTTPRequestHead, close: Bool)
            case respond(IntakeResponse, HTTPRequestHead)
            /// Open the upstream stream, send `initialBody`, and finish it if `bodyComplete`.
            case startPassthrough(HTTPRequestHead, initialBody: ByteBuffer?, bodyComplete: Bool)
            case forwardBody(ByteBuffer)
            case finishPassthroughBody
            case cancelPassthrough
            case intake(InsertRequest)
            /// A decoded slice filled up: stop reading the client and call `continueDecoding` on a later turn of
            /// the event loop, so a body that inflates to a lot never holds the loop for long.
            case decodeMore
            /// An error for a request whose head never completed: written as raw HTTP/1.1, then the connection
            /// closes.
            case respondRawError(ClickHouseError)
            case close
        }

        private(set) var state: State = .idle
        private var classifier = StatementClassifier()
        private let budget: any IncomingBodyBudget
        var timeouts: ConnectionTimeouts
        /// Bytes of the buffered body held against the budget.
        private(set) var reservedBytes = 0
        /// The first byte of a request head that has not completed yet.
        private var headStartedAt: NIODeadline?
        /// When the connection last had nothing to do (no request in progress).
        private var idleSince: NIODeadline
        /// The current request's head and its body's last bytes.
        private var requestStartedAt: NIODeadline
        private var bodyProgressAt: NIODeadline

        /// Bytes of a buffered body held without asking the budget: a single-row INSERT never touches it.
        static let unreservedBodyBytes = 16 * 1024
        /// Reservations grow in steps of this size.
        static let reservationStep = 1 << 20
        /// Decoded bytes produced per turn of the event loop.
        static let decodeSlice = 1 << 20

        init(
            budget: any IncomingBodyBudget = UnlimitedBodyBudget(),
            timeouts: ConnectionTimeouts = ConnectionTimeouts(Limits()), now: NIODeadline = .uptimeNanoseconds(0)
        ) {
            self.budget = budget
            self.timeouts = timeouts
            idleSince = now
            requestStartedAt = now
            bodyProgressAt = now
        }

        // MARK: Time

        /// Bytes came from the client (seen before the HTTP decoder, so a head trickled byte by byte counts from
        /// its first byte).
        mutating func bytesArrived(at now: NIODeadline) {
            switch state {
            case .buffering, .local:
                bodyProgressAt = now
            case .discarding:
                // What arrives after an error is dropped, for at most body_timeout after the body's last byte
                // before it: a client that keeps sending does not hold the connection.
                break
            case .passthrough(_, requestEnded: false):
                break
            case .idle, .intaking, .awaitingAck, .passthrough(_, requestEnded: true):
                // The next request's head (pipelined, or after the answer).
                if headStartedAt == nil { headStartedAt = now }
            }
        }

        /// The bound that applies now, if any. Passthrough requests and INSERTs waiting for their ack have none
        /// here: ClickHouse's and the upstream timeouts bound them.
        func deadline() -> (at: NIODeadline, kind: ConnectionTimeoutKind)? {
            switch state {
            case .idle:
                if let headStartedAt { return (headStartedAt + timeouts.header, .header) }
                return (idleSince + timeouts.idle, .idle)
            case .buffering:
                let body = bodyProgressAt + timeouts.body
                let request = requestStartedAt + timeouts.request
                return request < body ? (request, .request) : (body, .body)
            case .local, .discarding:
                return (bodyProgressAt + timeouts.body, .body)
            case .intaking, .awaitingAck, .passthrough:
                return nil
            }
        }

        /// When the connection's timer should look again: the deadline, but never later than the shortest
        /// timeout from now.
        func nextCheck(now: NIODeadline) -> NIODeadline {
            let latest = now + timeouts.shortest
            guard let deadline = deadline() else { return latest }
            return min(deadline.at, latest)
        }

        /// The timer fired: the action for a bound that has passed, and which one.
        mutating func timerFired(at now: NIODeadline) -> (action: Action, kind: ConnectionTimeoutKind)? {
            guard let (deadline, kind) = deadline(), deadline <= now else { return nil }
            switch state {
            case .idle:
                state = .discarding
                if kind == .idle { return (.close, kind) }
                // The raw answer closes the write side; the rest of the head is drained for body_timeout.
                bodyProgressAt = now
                return (
                    .respondRawError(
                        .requestTimeout(
                            "Batchhouse: the request head did not arrive within limits.header_timeout (\(timeouts.header.milliseconds) ms)"
                        )), kind
                )
            case .buffering(let request):
                releaseReservation()
                state = .discarding
                let message =
                    kind == .request
                    ? "Batchhouse: the request body did not end within limits.request_timeout (\(timeouts.request.milliseconds) ms)"
                    : "Batchhouse: no byte of the request body for limits.body_timeout (\(timeouts.body.milliseconds) ms)"
                return (.respondError(.requestTimeout(message), request.head, close: true), kind)
            case .local(_, let head):
                state = .discarding
                return (
                    .respondError(
                        .requestTimeout(
                            "Batchhouse: no byte of the request body for limits.body_timeout (\(timeouts.body.milliseconds) ms)"),
                        head, close: true), kind
                )
            case .discarding:
                // The error was answered; the client keeps sending slowly.
                return (.close, kind)
            case .intaking, .awaitingAck, .passthrough:
                return nil
            }
        }

        // MARK: Request parts

        /// `maxRequestBody`: `limits.max_request_body` as it is now.
        mutating func receivedHead(
            _ head: HTTPRequestHead, maxRequestBody: Int, now: NIODeadline = .uptimeNanoseconds(0)
        ) -> Action {
            // An error was answered and the connection closes once the rest is drained: a head that completes
            // meanwhile (a slow head answered 408, a pipelined request) is not served. The client was told.
            if case .discarding = state { return .none }
            self.maxRequestBody = maxRequestBody
            headStartedAt = nil
            requestStartedAt = now
            bodyProgressAt = now
            releaseReservation()
            let (path, query) = HeaderPolicy.split(uri: head.uri)
            if let endpoint = LocalEndpoint(path: path) {
                state = .local(endpoint, head)
                return .none
            }
            // A session's requests share ClickHouse's state and its lock: streamed at once, never held back for
            // classification, so a concurrent one gets ClickHouse's own SESSION_IS_LOCKED. The exception is an
            // INSERT named in the URL, in a session that holds no state and runs nothing now: it is batched like any
            // INSERT (clickhouse-connect gives every client a session; docs/request-path.md, "Sessions").
            if let session = RequestParameters.sessionID(uriQuery: query) {
                guard let sessions else { return startPassthrough(head, initialBody: nil, bodyComplete: false) }
                switch sessions.admit(session, mayHold: head.method == .POST && Self.mayBatchInSession(query)) {
                case .locked:
                    state = .discarding
                    return .respondError(.sessionLocked, head, close: true)
                case .stream:
                    return startSessionPassthrough(head, session: session, query: query)
                case .hold:
                    heldSession = session
                }
            } else if head.method != .POST {
                return startPassthrough(head, initialBody: nil, bodyComplete: false)
            }
            let hasLength = head.headers.contains(name: "content-length")
            if !hasLength && !head.headers[canonicalForm: "transfer-encoding"].contains(where: { $0.lowercased() == "chunked" }) {
                state = .discarding
                return .respondError(.lengthRequired, head, close: true)
            }
            let parameters = RequestParameters(uriQuery: query) { name in head.headers.first(name: name) }
            // What ClickHouse decodes itself, spelled as it accepts them (18.16 refuses `identity`, `x-gzip` or
            // `GZIP` with Code 89): anything else goes to it as received, so it answers.
            let coding: ContentCoding?
            switch head.headers.first(name: "content-encoding") {
            case nil, "": coding = nil
            case let value?:
                guard let known = ContentCoding(clickHouseRequestEncoding: value) else {
                    return startPassthrough(head, initialBody: nil, bodyComplete: false)
                }
                coding = known
            }
            if HeaderPolicy.isMultipart(head.headers.first(name: "content-type")) {
                return startPassthrough(head, initialBody: nil, bodyComplete: false)
            }
            var request = BufferedRequest(head: head, parameters: parameters, body: ByteBuffer(), coding: coding)
            if let decoder = BodyDecoders.make(
                coding: coding, clickHouseBlocks: parameters.decompress, limit: maxRequestBody)
            {
                request.decoder = decoder
                request.encoded = ByteBuffer()
            }
            state = .buffering(request)
            if head.headers.first(name: "expect")?.lowercased() == "100-continue" { return .sendContinue(head) }
            return .none
        }

        private var maxRequestBody = Int.max

        mutating func receivedBody(_ part: ByteBuffer) -> Action {
            if sessionSniff != nil { sniffSessionBody(part) }
            switch state {
            case .buffering(var request):
                state = .idle  // keep `request` uniquely referenced while it grows
                if let decoder = request.decoder {
                    if !request.classificationDone {
                        var copy = part
                        request.encoded?.writeBuffer(&copy)
                    }
                    decoder.append(part)
                    if request.decodePending {
                        state = .buffering(request)
                        return .none
                    }
                    return decode(&request)
                }
                if request.body.readableBytes == 0 {
                    request.body = part
                } else {
                    var part = part
                    request.body.writeBuffer(&part)
                }
                if let action = grew(&request) { return action }
                state = .buffering(request)
                return .none
            case .passthrough:
                return .forwardBody(part)
            case .idle, .local, .intaking, .awaitingAck, .discarding:
                return .none
            }
        }

        mutating func receivedEnd() -> Action {
            switch state {
            case .local(let endpoint, let head):
                state = .idle
                return .respondLocal(endpoint, head)
            case .buffering(var request):
                guard request.decoder != nil else { return finishBody(request) }
                request.ended = true
                if request.decodePending {
                    state = .buffering(request)
                    return .none
                }
                state = .idle  // keep `request` uniquely referenced while it grows
                return decode(&request)
            case .passthrough(let head, _):
                state = .passthrough(head, requestEnded: true)
                return .finishPassthroughBody
            case .discarding:
                state = .idle
                return .close
            case .idle, .intaking, .awaitingAck:
                return .none
            }
        }

        // MARK: Answers

        /// The intake's decision on the request that just ended.
        mutating func intakeDecided(_ decision: IntakeDecision) -> Action {
            guard case .intaking(let head, let body) = state else { return .none }
            switch decision {
            case .answer(let response):
                state = .idle
                return .respond(response, head)
            case .passthrough:
                return startPassthrough(head, initialBody: body, bodyComplete: true)
            case .awaitDurable, .awaitSpool, .awaitBatch:
                state = .awaitingAck(head, body: nil)
                return .none
            case .awaitVerification, .awaitDescription:
                state = .awaitingAck(head, body: body)
                return .none
            }
        }

        /// The ack a waiting INSERT was promised.
        mutating func ackArrived(_ response: IntakeResponse) -> Action {
            guard case .awaitingAck(let head, let body) = state else { return .none }
            if case .passThrough = response {
                return startPassthrough(head, initialBody: body ?? ByteBuffer(), bodyComplete: true)
            }
            state = .idle
            return .respond(response, head)
        }

        /// The upstream stream finished. Returns the request it served and whether the client's body had ended;
        /// nil if no passthrough was going on. A body still arriving is dropped, then the connection closes.
        mutating func passthroughFinished() -> (head: HTTPRequestHead, requestEnded: Bool)? {
            guard case .passthrough(let head, let requestEnded) = state else { return nil }
            endSessionRequest()
            state = requestEnded ? .idle : .discarding
            return (head, requestEnded)
        }

        /// An error was answered while the request's body still arrives.
        var isDiscarding: Bool {
            if case .discarding = state { return true }
            return false
        }

        var isPassthrough: Bool {
            if case .passthrough = state { return true }
            return false
        }

        /// The connection closed or failed.
        mutating func channelClosed() -> Action {
            endSessionRequest()
            releaseHeldSession()
            let wasPassthrough = isPassthrough
            releaseReservation()
            state = .idle
            return wasPassthrough ? .cancelPassthrough : .none
        }

        /// Goes on decoding a body whose last slice filled up (`decodeMore`).
        mutating func continueDecoding() -> Action {
            guard case .buffering(var request) = state, request.decodePending else { return .none }
            request.decodePending = false
            state = .idle
            return decode(&request)
        }

        /// Stamps the time an answer went out: the connection is idle from then on.
        /// An answer is about to be written: a session request the proxy held no longer holds its session. Only here,
        /// before the write: writing an answer can start the next pipelined request (NIO's pipelining handler hands
        /// it on from inside the write), and that one may hold its own session.
        mutating func answering() {
            releaseHeldSession()
        }

        /// When the current request's head arrived (its answer's latency counts from here).
        var requestStarted: NIODeadline { requestStartedAt }

        mutating func answered(at now: NIODeadline) {
            if case .idle = state { idleSince = now }
        }

        // MARK: Body

        /// One slice of decoding, then the same checks as a plain body; at the end of the body, the intake.
        /// `request` is the caller's only copy (the state is not holding it meanwhile): a second reference to its
        /// body would make every slice copy the whole body.
        private mutating func decode(_ request: inout BufferedRequest) -> Action {
            guard let decoder = request.decoder else { return finishBody(request) }
            let progress: DecodeProgress
            do throws(BodyDecodingError) {
                progress = try decoder.decode(into: &request.body, maxOutput: Self.decodeSlice)
                if progress == .needInput && request.ended { try decoder.finish() }
            } catch {
                let tooLarge = error.code == .outputLimitExceeded
                if (tooLarge || error.code == .unsupportedMethod) && !request.classificationDone {
                    // Too large to batch, or in a form the proxy does not decode, and not known to be an INSERT:
                    // ClickHouse gets it as it came.
                    heldSessionStreams(request.head, decoded: request.body)
                    return startPassthrough(
                        request.head, initialBody: request.encoded ?? ByteBuffer(), bodyComplete: request.ended)
                }
                releaseReservation()
                state = .discarding
                if tooLarge {
                    return .respondError(.bodyTooLarge(limit: maxRequestBody), request.head, close: true)
                }
                return .respondError(.bodyDecoding(error), request.head, close: true)
            }
            if let action = grew(&request) { return action }
            if progress == .outputPending {
                request.decodePending = true
                state = .buffering(request)
                return .decodeMore
            }
            if request.ended { return finishBody(request) }
            state = .buffering(request)
            return .none
        }

        /// After the (decoded) body grew: classify it, bound it, hold it against the budget. Nil to go on
        /// buffering, else the action that ends buffering (the state is then set).
        private mutating func grew(_ request: inout BufferedRequest) -> Action? {
            if !request.classificationDone {
                switch classifier.classify(query: request.parameters.query, body: request.body, isComplete: false) {
                case .insert(let statement):
                    request.statement = statement
                    request.classificationDone = true
                    request.encoded = nil
                case .passthrough:
                    heldSessionStreams(request.head, decoded: request.body)
                    return startPassthrough(
                        request.head, initialBody: request.encoded ?? request.body, bodyComplete: request.ended)
                case .needMoreData:
                    if request.body.readableBytes > StatementClassifier.limit {
                        heldSessionStreams(request.head, decoded: request.body)
                        return startPassthrough(
                            request.head, initialBody: request.encoded ?? request.body, bodyComplete: request.ended)
                    }
                }
            }
            if request.body.readableBytes > maxRequestBody {
                if request.statement != nil {
                    releaseReservation()
                    state = .discarding
                    return .respondError(.bodyTooLarge(limit: maxRequestBody), request.head, close: true)
                }
                // Too large to batch: ClickHouse gets it as it came.
                heldSessionStreams(request.head, decoded: request.body)
                return startPassthrough(
                    request.head, initialBody: request.encoded ?? request.body, bodyComplete: request.ended)
            }
            let held =
                request.body.readableBytes + (request.encoded?.readableBytes ?? 0)
                + (request.decoder?.pendingInput ?? 0)
            if held > reservedBytes + Self.unreservedBodyBytes {
                let needed = held - Self.unreservedBodyBytes - reservedBytes
                let step = (needed + Self.reservationStep - 1) / Self.reservationStep * Self.reservationStep
                guard budget.reserve(step) else {
                    releaseReservation()
                    state = .discarding
                    return .respondError(
                        .memoryLimit(
                            "Batchhouse: buffers are full (limits.max_buffer_memory), and this request's body is still arriving; retry later"
                        ), request.head, close: true)
                }
                reservedBytes += step
            }
            return nil
        }

        /// The whole body is here: the intake takes it (decoded) and its reservation ends, as the intake admits
        /// the rows against the budget itself.
        private mutating func finishBody(_ request: BufferedRequest) -> Action {
            releaseReservation()
            var head = request.head
            var parameters = request.parameters
            if request.decoder != nil {
                // Should the intake pass it through after all, it goes upstream decoded: without its coding, and
                // without `decompress` when it was in compressed blocks.
                head.headers.remove(name: "content-encoding")
                head.headers.remove(name: "transfer-encoding")
                head.headers.replaceOrAdd(name: "content-length", value: String(request.body.readableBytes))
                if parameters.decompress {
                    head.uri = HeaderPolicy.removingParameter("decompress", from: head.uri)
                    parameters.decompress = false
                }
            }
            state = .intaking(head, body: request.body)
            return .intake(
                InsertRequest(parameters: parameters, body: request.body, coding: nil, statement: request.statement))
        }

        private mutating func releaseReservation() {
            guard reservedBytes > 0 else { return }
            budget.release(reservedBytes)
            reservedBytes = 0
        }

        // MARK: Sessions

        /// The sessions seen by every connection of the server; nil (handler tests): session requests always stream.
        var sessions: SessionRegistry?
        /// The session whose request is streaming now.
        private var streamingSession: String?
        /// The first bytes of that request's statement while its first word is not known yet.
        private var sessionSniff: [UInt8]?

        /// The session request held while its body arrives (it may be an INSERT to batch).
        private var heldSession: String?

        /// A session request the proxy may hold to look at: one without `session_check` or `session_timeout`, which
        /// ClickHouse acts on for the session itself, and whose statement, if the URL has it, is an INSERT.
        static func mayBatchInSession(_ uriQuery: Substring) -> Bool {
            for (name, value) in QueryString.parse(uriQuery) {
                switch name {
                case "query":
                    guard value.utf8.contains(where: { $0 > 0x20 }) else { continue }
                    var words = value.utf8.drop { $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }
                    words = words.prefix { ($0 | 0x20) >= UInt8(ascii: "a") && ($0 | 0x20) <= UInt8(ascii: "z") }
                    if String(decoding: words, as: UTF8.self).uppercased() != "INSERT" { return false }
                case "session_check" where value != "0", "session_timeout": return false
                default: break
                }
            }
            return true
        }

        /// The held session request was answered by the proxy.
        private mutating func releaseHeldSession() {
            guard let session = heldSession else { return }
            heldSession = nil
            sessions?.released(session)
        }

        /// The held session request streams to ClickHouse after all: what its statement does to the session is
        /// read from the URL's `query` or the start of the body (when the body is not encoded); not known, it
        /// counts as changing the session's state.
        private mutating func heldSessionStreams(_ head: HTTPRequestHead, decoded initialBody: ByteBuffer?) {
            guard let session = heldSession else { return }
            heldSession = nil
            let query = HeaderPolicy.split(uri: head.uri).query
            var statement: String?
            for (name, value) in QueryString.parse(query) where name == "query" { statement = value }
            var verdict: Bool?
            if let statement, statement.utf8.contains(where: { $0 > 0x20 }) {
                verdict = SessionStatements.leavesStateAlone(statement.utf8, isComplete: true).map { !$0 }
            } else if let initialBody {
                verdict = SessionStatements.leavesStateAlone(initialBody.readableBytesView, isComplete: false).map { !$0 }
            }
            sessions?.streams(session, changesState: verdict ?? true)
            streamingSession = session
        }

        private mutating func startSessionPassthrough(_ head: HTTPRequestHead, session: String, query: Substring)
            -> Action
        {
            var statement: String?
            for (name, value) in QueryString.parse(query) where name == "query" { statement = value }
            var verdict: Bool?
            let hasBody = head.method != .GET && head.method != .HEAD
            if let statement, statement.utf8.contains(where: { $0 > 0x20 }) {
                verdict = SessionStatements.leavesStateAlone(statement.utf8, isComplete: true).map { !$0 }
            } else if !hasBody {
                verdict = false
            }
            sessions?.began(session, changesState: verdict)
            streamingSession = session
            sessionSniff = verdict == nil ? [] : nil
            return startPassthrough(head, initialBody: nil, bodyComplete: false)
        }

        /// The statement of a streaming session request is in its body: its first word says whether it may
        /// change the session's state (a body that ends before saying counts as changing it).
        private mutating func sniffSessionBody(_ part: ByteBuffer) {
            guard var sniff = sessionSniff, let session = streamingSession else { return }
            sniff.append(contentsOf: part.readableBytesView.prefix(4096 - sniff.count))
            let verdict = SessionStatements.leavesStateAlone(sniff, isComplete: sniff.count >= 4096)
            if let verdict {
                if !verdict { sessions?.changedState(session) }
                sessionSniff = nil
            } else {
                sessionSniff = sniff
            }
        }

        private mutating func endSessionRequest() {
            guard let session = streamingSession else { return }
            if sessionSniff != nil { sessions?.changedState(session) }
            sessionSniff = nil
            streamingSession = nil
            sessions?.ended(session)
        }

        private mutating func startPassthrough(_ head: HTTPRequestHead, initialBody: ByteBuffer?, bodyComplete: Bool)
            -> Action
        {
            // Called from every path to a passthrough; the ones with a decoded body have told it already.
            if heldSession != nil {
                let encoded =
                    head.headers.contains(name: "content-encoding")
                    || RequestParameters.decompressRequested(uriQuery: HeaderPolicy.split(uri: head.uri).query)
                heldSessionStreams(head, decoded: encoded ? nil : initialBody)
            }
            let hasBody = head.method != .GET && head.method != .HEAD
            releaseReservation()
            state = .passthrough(head, requestEnded: bodyComplete || !hasBody)
            return .startPassthrough(head, initialBody: initialBody, bodyComplete: bodyComplete)
        }
    }
}

extension TimeAmount {
    fileprivate var milliseconds: Int64 { nanoseconds / 1_000_000 }
}
