import BatchhouseCore
import BatchhouseEngine
import BatchhouseUpstream
import NIOCore
import NIOHTTP1

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
            /// ClickHouse's word on a new identity's credentials.
            case awaitingAck(HTTPRequestHead)
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
            case close
        }

        private(set) var state: State = .idle
        private var classifier = StatementClassifier()

        init() {}

        // MARK: Request parts

        /// `maxRequestBody`: `limits.max_request_body` as it is now.
        mutating func receivedHead(_ head: HTTPRequestHead, maxRequestBody: Int) -> Action {
            self.maxRequestBody = maxRequestBody
            let (path, query) = HeaderPolicy.split(uri: head.uri)
            if let endpoint = LocalEndpoint(path: path) {
                state = .local(endpoint, head)
                return .none
            }
            guard head.method == .POST else { return startPassthrough(head, initialBody: nil, bodyComplete: false) }
            let hasLength = head.headers.contains(name: "content-length")
            if !hasLength && !head.headers[canonicalForm: "transfer-encoding"].contains(where: { $0.lowercased() == "chunked" }) {
                state = .discarding
                return .respondError(.lengthRequired, head, close: true)
            }
            let parameters = RequestParameters(uriQuery: query) { name in head.headers.first(name: name) }
            let encoding = head.headers.first(name: "content-encoding")?.lowercased().trimmingCharacters(in: .whitespaces)
            let coding: ContentCoding?
            switch encoding {
            case nil, "", "identity": coding = nil
            case "gzip", "x-gzip": coding = .gzip
            case "deflate": coding = .deflate
            default: return startPassthrough(head, initialBody: nil, bodyComplete: false)
            }
            if parameters.decompress || HeaderPolicy.isMultipart(head.headers.first(name: "content-type")) {
                return startPassthrough(head, initialBody: nil, bodyComplete: false)
            }
            state = .buffering(BufferedRequest(head: head, parameters: parameters, body: ByteBuffer(), coding: coding))
            if head.headers.first(name: "expect")?.lowercased() == "100-continue" { return .sendContinue(head) }
            return .none
        }

        private var maxRequestBody = Int.max

        mutating func receivedBody(_ part: ByteBuffer) -> Action {
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
                    switch classifier.classify(query: request.parameters.query, body: request.body, isComplete: false) {
                    case .insert(let statement):
                        request.statement = statement
                        request.classificationDone = true
                    case .passthrough:
                        return startPassthrough(request.head, initialBody: request.body, bodyComplete: false)
                    case .needMoreData:
                        if request.body.readableBytes > StatementClassifier.limit {
                            return startPassthrough(request.head, initialBody: request.body, bodyComplete: false)
                        }
                    }
                }
                if request.body.readableBytes > maxRequestBody {
                    if request.statement != nil {
                        state = .discarding
                        return .respondError(.bodyTooLarge(limit: maxRequestBody), request.head, close: true)
                    }
                    // Too large to batch: ClickHouse gets it as it came.
                    return startPassthrough(request.head, initialBody: request.body, bodyComplete: false)
                }
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
            case .buffering(let request):
                state = .intaking(request.head, body: request.body)
                return .intake(
                    InsertRequest(
                        parameters: request.parameters, body: request.body, coding: request.coding,
                        statement: request.statement))
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
            case .awaitDurable, .awaitBatch, .awaitVerification:
                state = .awaitingAck(head)
                return .none
            }
        }

        /// The ack a waiting INSERT was promised.
        mutating func ackArrived(_ response: IntakeResponse) -> Action {
            guard case .awaitingAck(let head) = state else { return .none }
            state = .idle
            return .respond(response, head)
        }

        /// The upstream stream finished. Returns the request it served and whether the client's body had ended;
        /// nil if no passthrough was going on. A body still arriving is dropped, then the connection closes.
        mutating func passthroughFinished() -> (head: HTTPRequestHead, requestEnded: Bool)? {
            guard case .passthrough(let head, let requestEnded) = state else { return nil }
            state = requestEnded ? .idle : .discarding
            return (head, requestEnded)
        }

        var isPassthrough: Bool {
            if case .passthrough = state { return true }
            return false
        }

        /// The connection closed or failed.
        mutating func channelClosed() -> Action {
            let wasPassthrough = isPassthrough
            state = .idle
            return wasPassthrough ? .cancelPassthrough : .none
        }

        private mutating func startPassthrough(_ head: HTTPRequestHead, initialBody: ByteBuffer?, bodyComplete: Bool)
            -> Action
        {
            let hasBody = head.method != .GET && head.method != .HEAD
            state = .passthrough(head, requestEnded: bodyComplete || !hasBody)
            return .startPassthrough(head, initialBody: initialBody, bodyComplete: bodyComplete)
        }
    }
}
