import BatchhouseConfig
import BatchhouseCore
import BatchhouseEngine
import BatchhouseSpool
import BatchhouseUpstream
import Foundation
import Logging
import NIOCore
import Synchronization

/// A clock the test drives: `sleep` records the duration and moves time forward by it at once, so retries and
/// backoff run without waiting.
final class TestClock: EngineClock {
    private struct State {
        var now = Instant(nanoseconds: 1_000_000_000)
        var sleeps: [Duration] = []
    }
    private let state = Mutex(State())

    func now() -> Instant { state.withLock { $0.now } }

    func advance(by duration: Duration) { state.withLock { $0.now = $0.now + duration } }

    func sleep(for duration: Duration) async {
        state.withLock {
            $0.sleeps.append(duration)
            $0.now = $0.now + duration
        }
        await Task.yield()
    }

    func wallClockSeconds() -> Double { 1_700_000_000 + Double(now().nanoseconds) / 1e9 }

    /// Every backoff slept so far, in order.
    var sleeps: [Duration] { state.withLock { $0.sleeps } }
}

/// What the fake upstream answers to one request.
enum Reply: Sendable {
    case ok
    /// A ClickHouse error answer: `Code: code. DB::Exception: message`.
    case error(status: Int, code: Int, message: String = "test")
    case status(Int, body: String)
    case failure(UpstreamError.Kind)
}

/// One upstream, bodies sent as they are, one delivery worker: batches go in queue order, one at a time.
let oneWorkerUpstream = "{ servers: [\"http://upstream.test:8123\"], compression: none, max_concurrent_flushes: 1 }"

/// How an upstream answers a body holding an `'oops` row: refused for its data (a parse error). Nil for other
/// bodies.
func oopsRefusal(_ body: String) -> Reply? {
    body.contains("'oops") ? .error(status: 500, code: 53, message: "Cannot parse input: 'oops'") : nil
}

/// Answers for an upstream that refuses the bodies holding an `'oops` row for their data, answers `overloaded`
/// with TOO_MANY_PARTS the first time it is sent, and takes the rest.
func refusingOops(overloadingOnce overloaded: String? = nil) -> @Sendable (String) -> Reply {
    let first = Atomic<Bool>(true)
    return { body in
        if let refusal = oopsRefusal(body) { return refusal }
        if body == overloaded && first.exchange(false, ordering: .relaxed) {
            return .error(status: 500, code: 252, message: "Too many parts")
        }
        return .ok
    }
}

/// An upstream transport that answers from a script and records every request (bodies in plain text: the
/// engines here use `compression: none`).
final class ScriptedTransport: UpstreamTransport {
    struct Sent: Sendable {
        var url: String
        var body: String
        var auth: String?
        var headers: [(String, String)]
        /// The body's bytes as sent (compressed when the engine compresses).
        var bytes: [UInt8] = []

        /// The `query` parameter, decoded.
        var statement: String? {
            guard let query = url.split(separator: "?", maxSplits: 1).last else { return nil }
            return QueryString.parse(query).first { $0.name == "query" }?.value
        }

        func parameter(_ name: String) -> String? {
            guard let query = url.split(separator: "?", maxSplits: 1).last else { return nil }
            return QueryString.parse(query).first { $0.name == name }?.value
        }
    }

    private let sent = Mutex<[Sent]>([])
    private let script: @Sendable (_ index: Int, _ url: String, _ auth: String?, _ body: String) -> Reply

    /// `script` gets the request's number (0 first) and its body.
    init(_ script: @escaping @Sendable (_ index: Int, _ body: String) -> Reply = { _, _ in .ok }) {
        self.script = { index, _, _, body in script(index, body) }
    }

    /// `script` also gets the request's URL, to answer per server.
    init(routing script: @escaping @Sendable (_ index: Int, _ url: String, _ body: String) -> Reply) {
        self.script = { index, url, _, body in script(index, url, body) }
    }

    /// `script` gets the whole request (with its Basic credentials as `user:password`), to answer per identity.
    init(authenticating script: @escaping @Sendable (_ request: Sent) -> Reply) {
        self.script = { _, url, auth, body in script(Sent(url: url, body: body, auth: auth, headers: [])) }
    }

    /// Answers from `replies` in turn, then `.ok`.
    convenience init(replies: [Reply]) {
        self.init { index, _ in index < replies.count ? replies[index] : .ok }
    }

    func execute(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
        let body = request.body.map { String(buffer: $0) } ?? ""
        let auth = request.basicAuth.map { "\($0.user):\($0.password)" }
        let index = sent.withLock { sent in
            sent.append(
                Sent(
                    url: request.url, body: body, auth: auth,
                    headers: request.headers, bytes: request.body.map { Array($0.readableBytesView) } ?? []))
            return sent.count - 1
        }
        switch script(index, request.url, auth, body) {
        case .ok:
            return UpstreamResponse(status: 200, headers: [], body: ByteBuffer())
        case .error(let status, let code, let message):
            return UpstreamResponse(
                status: status, headers: [("X-ClickHouse-Exception-Code", String(code))],
                body: ByteBuffer(string: "Code: \(code), e.displayText() = DB::Exception: \(message)\n"))
        case .status(let status, let body):
            return UpstreamResponse(status: status, headers: [], body: ByteBuffer(string: body))
        case .failure(let kind):
            throw UpstreamError(kind: kind, message: "scripted \(kind)")
        }
    }

    var requests: [Sent] { sent.withLock { $0 } }

    /// Requests that were batch INSERTs (not health checks or version probes).
    var inserts: [Sent] { requests.filter { $0.statement?.hasPrefix("INSERT") == true } }

    /// Credential checks (`SELECT 1`).
    var verifications: [Sent] { requests.filter { $0.statement == "SELECT 1" } }
}

/// A temp folder removed when the value goes away.
final class TemporaryDirectory: Sendable {
    let path: String

    init() {
        path = NSTemporaryDirectory() + "bh-engine-test-\(UInt64.random(in: 0...UInt64.max))"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    var files: [String] { ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted() }
}

/// An engine in front of a scripted upstream, with a test clock and no jitter (backoff takes its lower half).
struct EngineFixture {
    let engine: BatchhouseEngine
    let transport: ScriptedTransport
    let clock: TestClock
    let deadLetters: TemporaryDirectory
    let spoolDirectory: TemporaryDirectory?

    /// `yaml` is added to a configuration with `upstream` (one server, `compression: none` unless given), and a
    /// dead-letter folder.
    /// With `spool: true` a real spool is opened in a temp folder. Credentials are not verified unless
    /// `verifiesCredentials` (the script would otherwise have to answer a `SELECT 1` before every first insert).
    init(
        _ yaml: String = "", transport: ScriptedTransport = ScriptedTransport(), spool: Bool = false,
        spoolMaxSize: String = "1GiB", spoolDirectory reused: TemporaryDirectory? = nil, jitter: Double = 0,
        upstream: String = "{ servers: [\"http://upstream.test:8123\"], compression: none }",
        verifiesCredentials: Bool = false
    ) throws {
        let deadLetters = TemporaryDirectory()
        let spoolDirectory = reused ?? (spool ? TemporaryDirectory() : nil)
        var text = """
            upstream: \(upstream)
            dead_letter_dir: \(deadLetters.path)

            """
        if let spoolDirectory { text += "spool: { dir: \(spoolDirectory.path)/spool, max_size: \(spoolMaxSize) }\n" }
        let configuration = try ConfigurationLoader.parse(yaml: text + yaml, environment: [:])
        var opened: Spool?
        var recovery: SpoolRecovery?
        if let spoolConfiguration = configuration.spool {
            (opened, recovery) = try Spool.open(directory: spoolConfiguration.dir, maxSize: spoolConfiguration.maxSize)
        }
        var logger = Logger(label: "engine-test")
        logger.logLevel = .critical
        let clock = TestClock()
        self.clock = clock
        self.transport = transport
        self.deadLetters = deadLetters
        self.spoolDirectory = spoolDirectory
        engine = BatchhouseEngine(
            configuration: configuration, transport: transport, spool: opened, logger: logger, clock: clock,
            jitter: { jitter }, verifiesCredentials: verifiesCredentials)
        if let recovery { engine.restore(recovery) }
    }

    var spool: Spool? { engine.spool }

    /// Hands `statement` (the whole body, no `query` parameter) to the intake. The completion, if the decision is
    /// to wait, goes to `answers`.
    @discardableResult
    func insert(
        _ body: String, query: String? = nil, identity: ClientIdentity = .anonymous, settings: [Setting] = [],
        coding: ContentCoding? = nil, answers: Answers? = nil, credentials: Credentials? = nil,
        eventLoop: (any EventLoop)? = nil
    ) -> IntakeDecision {
        var bytes = ByteBuffer(string: body)
        if let coding {
            bytes = ByteBuffer(bytes: Array(body.utf8).withUnsafeBytes { Zlib.compress($0, as: coding) })
        }
        let request = InsertRequest(
            parameters: RequestParameters(
                query: query, database: nil, credentials: credentials ?? .resolved(identity), settings: settings,
                decompress: false),
            body: bytes, coding: coding, statement: nil, eventLoop: eventLoop)
        return engine.intake.accept(request) {
            { response in answers?.append(response) }
        }
    }

    /// Runs the delivery workers until `drain()` has sent everything; returns when the queue is empty.
    func drain() async {
        let delivery = engine.delivery
        let worker = Task { await delivery.run() }
        engine.drain()
        await worker.value
    }

    /// Seals what is due at the clock's now and sends it; waits for the outcome of everything sealed so far.
    func flushAll() async {
        await drain()
    }

    var deadLetterFiles: [String] { deadLetters.files }
}

/// Answers that arrived through an intake completion.
final class Answers: Sendable {
    private let received = Mutex<[IntakeResponse]>([])

    func append(_ response: IntakeResponse) { received.withLock { $0.append(response) } }

    var all: [IntakeResponse] { received.withLock { $0 } }

    /// Waits (real time, briefly) until `count` answers are there.
    func wait(for count: Int, timeout: Duration = .seconds(30)) async -> [IntakeResponse] {
        let deadline = ContinuousClock.now + timeout
        while all.count < count && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(2))
        }
        return all
    }
}

extension IntakeDecision {
    var acceptedRows: Int? {
        if case .answer(.accepted(let rows, _, _)) = self { return rows }
        return nil
    }

    var ack: AckMode? {
        if case .answer(.accepted(_, _, let ack)) = self { return ack }
        return nil
    }

    var refusal: ClickHouseError? {
        if case .answer(.refused(let error, _)) = self { return error }
        return nil
    }

    var isPassthrough: Bool {
        if case .passthrough = self { return true }
        return false
    }

    var waitsForBatch: Bool {
        if case .awaitBatch = self { return true }
        return false
    }

    var waitsForDurable: Bool {
        if case .awaitDurable = self { return true }
        return false
    }

    var waitsForVerification: Bool {
        if case .awaitVerification = self { return true }
        return false
    }
}

extension IntakeResponse {
    var acceptedAck: AckMode? {
        if case .accepted(_, _, let ack) = self { return ack }
        return nil
    }

    var refusal: ClickHouseError? {
        if case .refused(let error, _) = self { return error }
        return nil
    }

    var relayedStatus: Int? {
        if case .relayed(let response) = self { return response.status }
        return nil
    }
}

/// Builds a sealed batch of Values rows `(1),(2),...` directly, for delivery tests.
func valuesBatch(id: UInt64 = 1, table: String = "t", rows: Int, rule: TableRule = TableRule(), tokens: [UInt64] = [])
    -> SealedBatch
{
    var store = BatchStore(firstBatchID: id)
    let key = BatchKey(
        identity: .anonymous, database: "db", table: table, columns: nil, format: .values, header: nil, settings: [])
    var rule = rule
    rule.strategy = .size
    rule.maxRows = Int.max
    rule.maxBytes = Int.max
    for row in 1...rows {
        let text = Array("(\(row))".utf8)
        _ = text.withUnsafeBytes {
            store.append(
                key: key, rule: rule, chunk: $0, rows: 1, endsWithNewline: false, now: .zero,
                token: row <= tokens.count ? tokens[row - 1] : 0)
        }
    }
    return store.sealAll(trigger: .shutdown, now: .zero)[0]
}

/// Builds a sealed batch of Values rows with the given texts (`["(1)", "('oops')"]`), one request per row.
func valuesBatch(id: UInt64 = 1, table: String = "t", values: [String], rule: TableRule = TableRule()) -> SealedBatch {
    var store = BatchStore(firstBatchID: id)
    let key = BatchKey(
        identity: .anonymous, database: "db", table: table, columns: nil, format: .values, header: nil, settings: [])
    var rule = rule
    rule.strategy = .size
    rule.maxRows = Int.max
    rule.maxBytes = Int.max
    for value in values {
        let text = Array(value.utf8)
        _ = text.withUnsafeBytes {
            store.append(key: key, rule: rule, chunk: $0, rows: 1, endsWithNewline: false, now: .zero)
        }
    }
    return store.sealAll(trigger: .shutdown, now: .zero)[0]
}
