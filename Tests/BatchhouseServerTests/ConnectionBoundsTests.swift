import BatchhouseConfig
import BatchhouseCore
import BatchhouseEngine
import BatchhouseUpstream
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import BatchhouseServer

/// Every client-held resource is bounded: the state machine's timeouts with time passed in, bodies held against a
/// (fake) budget, gzip decoded as it arrives; then the handler on an EmbeddedChannel with the loop's clock moved.
@Suite struct ConnectionBoundsTests {
    typealias Machine = RequestHandler.StateMachine

    /// Counts what the machine holds, refusing beyond `limit`.
    final class FakeBudget: IncomingBodyBudget {
        var held = 0
        var limit: Int
        var reservations = 0
        init(limit: Int = .max) { self.limit = limit }
        func reserve(_ bytes: Int) -> Bool {
            reservations += 1
            guard held + bytes <= limit else { return false }
            held += bytes
            return true
        }
        func release(_ bytes: Int) { held -= bytes }
    }

    static let timeouts = ConnectionTimeouts(
        header: .milliseconds(100), body: .milliseconds(200), request: .seconds(1), idle: .seconds(5))
    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    static func at(_ milliseconds: Int64) -> NIODeadline { start + .milliseconds(milliseconds) }

    static func insertHead(_ headers: [(String, String)]) -> HTTPRequestHead {
        HTTPRequestHead(
            version: .http1_1, method: .POST, uri: "/?query=INSERT%20INTO%20t%20FORMAT%20TSV",
            headers: HTTPHeaders(headers))
    }

    // MARK: Timeouts

    @Test func anIdleConnectionClosesSilentlyAfterIdleTimeout() {
        var machine = Machine(timeouts: Self.timeouts, now: Self.start)
        #expect(machine.deadline()?.kind == .idle)
        #expect(machine.timerFired(at: Self.at(4_999)) == nil)
        // The timer never sleeps longer than the shortest timeout, so a head that starts meanwhile is seen in time.
        #expect(machine.nextCheck(now: Self.at(0)) == Self.at(100))
        guard let (action, kind) = machine.timerFired(at: Self.at(5_000)), case .close = action else {
            Issue.record("expected a silent close")
            return
        }
        #expect(kind == .idle)
    }

    @Test func aHeadTrickledFromItsFirstByteGets408AfterHeaderTimeout() {
        var machine = Machine(timeouts: Self.timeouts, now: Self.start)
        machine.bytesArrived(at: Self.at(1_000))
        // More bytes of the same head do not extend it.
        machine.bytesArrived(at: Self.at(1_050))
        #expect(machine.deadline()?.at == Self.at(1_100))
        #expect(machine.timerFired(at: Self.at(1_099)) == nil)
        guard let (action, kind) = machine.timerFired(at: Self.at(1_100)), case .respondRawError(let error) = action else {
            Issue.record("expected a raw 408")
            return
        }
        #expect(kind == .header)
        #expect(error.status == 408)
        #expect(error.code == 209)
        #expect(error.message.contains("limits.header_timeout"))
        let raw = String(decoding: RequestHandler.rawResponse(error), as: UTF8.self)
        #expect(raw.hasPrefix("HTTP/1.1 408 Request Timeout\r\n"))
        #expect(raw.contains("X-ClickHouse-Exception-Code: 209\r\n"))
        #expect(raw.contains("Connection: close\r\n"))
        #expect(raw.hasSuffix("\r\n\r\nCode: 209. DB::Exception: Batchhouse: the request head did not arrive within limits.header_timeout (100 ms). (SOCKET_TIMEOUT)\n"))
    }

    @Test func aCompleteHeadStopsTheHeaderTimerAndABodyThatStallsGets408() {
        var machine = Machine(timeouts: Self.timeouts, now: Self.start)
        machine.bytesArrived(at: Self.at(10))
        _ = machine.receivedHead(Self.insertHead([("Content-Length", "10")]), maxRequestBody: 1 << 20, now: Self.at(20))
        #expect(machine.deadline()?.kind == .body)
        machine.bytesArrived(at: Self.at(150))
        _ = machine.receivedBody(ByteBuffer(string: "1\t2\n"))
        // Body bytes move the body deadline: 150 + 200.
        #expect(machine.timerFired(at: Self.at(300)) == nil)
        guard let (action, kind) = machine.timerFired(at: Self.at(350)),
            case .respondError(let error, _, close: true) = action
        else {
            Issue.record("expected a 408 that closes")
            return
        }
        #expect(kind == .body)
        #expect(error.status == 408 && error.code == 209)
        guard case .discarding = machine.state else { Issue.record("the rest is dropped"); return }
    }

    @Test func aBodyThatKeepsTricklingIsStoppedByRequestTimeout() {
        var machine = Machine(timeouts: Self.timeouts, now: Self.start)
        _ = machine.receivedHead(Self.insertHead([("Transfer-Encoding", "chunked")]), maxRequestBody: 1 << 20, now: Self.at(0))
        var now: Int64 = 0
        var fired: (action: Machine.Action, kind: ConnectionTimeoutKind)?
        while fired == nil && now < 5_000 {
            now += 100
            machine.bytesArrived(at: Self.at(now))
            _ = machine.receivedBody(ByteBuffer(string: "1\n"))
            fired = machine.timerFired(at: Self.at(now))
        }
        #expect(fired?.kind == .request)
        #expect(now == 1_000)
        guard case .respondError(let error, _, close: true)? = fired?.action else {
            Issue.record("expected a 408")
            return
        }
        #expect(error.message.contains("limits.request_timeout"))
    }

    @Test func waitingForAnAckOrUpstreamHasNoTimeoutHere() {
        var machine = Machine(timeouts: Self.timeouts, now: Self.start)
        _ = machine.receivedHead(
            HTTPRequestHead(version: .http1_1, method: .GET, uri: "/?query=SELECT%20sleep(3)"), maxRequestBody: 100,
            now: Self.at(0))
        _ = machine.receivedEnd()
        #expect(machine.isPassthrough)
        #expect(machine.deadline() == nil)
        #expect(machine.timerFired(at: Self.at(60_000)) == nil)
        // A pipelined head trickling meanwhile is timed from its first byte once the connection is free again.
        machine.bytesArrived(at: Self.at(1_000))
        _ = machine.passthroughFinished()
        #expect(machine.deadline()?.kind == .header)
        #expect(machine.deadline()?.at == Self.at(1_100))
    }

    // MARK: Budget

    @Test func smallBodiesNeverTouchTheBudgetAndLargeOnesReserveInSteps() {
        let budget = FakeBudget()
        var machine = Machine(budget: budget, timeouts: Self.timeouts, now: Self.start)
        _ = machine.receivedHead(Self.insertHead([("Content-Length", "100")]), maxRequestBody: 64 << 20)
        _ = machine.receivedBody(ByteBuffer(string: "1\t2\n"))
        guard case .intake = machine.receivedEnd() else { Issue.record("intake"); return }
        #expect(budget.reservations == 0)

        _ = machine.receivedHead(Self.insertHead([("Content-Length", "\(3 << 20)")]), maxRequestBody: 64 << 20)
        let piece = ByteBuffer(bytes: [UInt8](repeating: UInt8(ascii: "1"), count: 64 * 1024 - 1) + [10])
        for _ in 0..<48 { _ = machine.receivedBody(piece) }  // 3 MiB
        #expect(budget.held == 3 << 20)
        #expect(budget.reservations == 3)
        // The end hands the body to the intake, which admits the rows itself: the reservation ends.
        guard case .intake(let request) = machine.receivedEnd() else { Issue.record("intake"); return }
        #expect(request.body.readableBytes == 3 << 20)
        #expect(budget.held == 0)
    }

    @Test func aBodyBeyondTheBudgetGets503AndItsBytesAreReleased() {
        let budget = FakeBudget(limit: 2 << 20)
        var machine = Machine(budget: budget, timeouts: Self.timeouts, now: Self.start)
        _ = machine.receivedHead(Self.insertHead([("Content-Length", "\(10 << 20)")]), maxRequestBody: 64 << 20)
        let piece = ByteBuffer(bytes: [UInt8](repeating: UInt8(ascii: "1"), count: 64 * 1024 - 1) + [10])
        var refusal: ClickHouseError?
        for _ in 0..<160 {
            if case .respondError(let error, _, close: true) = machine.receivedBody(piece) {
                refusal = error
                break
            }
        }
        #expect(refusal?.status == 503)
        #expect(refusal?.code == 241)
        #expect(refusal?.retryAfterSeconds == 1)
        #expect(budget.held == 0)
        guard case .discarding = machine.state else { Issue.record("the rest is dropped"); return }
    }

    @Test func aClosedOrTimedOutBodyGivesItsBytesBack() {
        let budget = FakeBudget()
        var machine = Machine(budget: budget, timeouts: Self.timeouts, now: Self.start)
        _ = machine.receivedHead(Self.insertHead([("Content-Length", "\(4 << 20)")]), maxRequestBody: 64 << 20, now: Self.at(0))
        _ = machine.receivedBody(ByteBuffer(bytes: [UInt8](repeating: 0x31, count: 2 << 20)))
        #expect(budget.held == 2 << 20)
        _ = machine.timerFired(at: Self.at(10_000))
        #expect(budget.held == 0)
        // Answered 408 and draining: a head that completes now is not served (the client was told).
        #expect(machine.receivedHead(Self.insertHead([("Content-Length", "1")]), maxRequestBody: 64 << 20).isNone)
        guard case .discarding = machine.state else { Issue.record("still draining"); return }

        machine = Machine(budget: budget, timeouts: Self.timeouts, now: Self.start)
        _ = machine.receivedHead(Self.insertHead([("Content-Length", "\(4 << 20)")]), maxRequestBody: 64 << 20)
        _ = machine.receivedBody(ByteBuffer(bytes: [UInt8](repeating: 0x31, count: 2 << 20)))
        #expect(budget.held == 2 << 20)
        _ = machine.channelClosed()
        #expect(budget.held == 0)
    }

    // MARK: gzip

    static func gzip(_ text: String) -> [UInt8] {
        Array(text.utf8).withUnsafeBytes { Zlib.compress($0, as: .gzip) }
    }

    @Test func aGzipInsertIsDecodedAsItArrivesAndTheIntakeGetsPlainRows() {
        var machine = Machine(timeouts: Self.timeouts, now: Self.start)
        let body = Self.gzip("1\ta\n2\tb\n")
        _ = machine.receivedHead(
            Self.insertHead([("Content-Length", "\(body.count)"), ("Content-Encoding", "gzip")]), maxRequestBody: 1 << 20)
        for byte in body { _ = machine.receivedBody(ByteBuffer(bytes: [byte])) }
        guard case .intake(let request) = machine.receivedEnd() else { Issue.record("intake"); return }
        #expect(request.coding == nil)
        #expect(String(buffer: request.body) == "1\ta\n2\tb\n")
        #expect(request.statement?.table == "t")
    }

    @Test func aGzipBombGets413WithinTheLimitInSlices() {
        let budget = FakeBudget()
        var machine = Machine(budget: budget, timeouts: Self.timeouts, now: Self.start)
        let ones = [UInt8](repeating: UInt8(ascii: "1"), count: 64 << 20)
        let bomb = ones.withUnsafeBytes { Zlib.compress($0, as: .gzip, level: 9) }
        _ = machine.receivedHead(
            Self.insertHead([("Content-Length", "\(bomb.count)"), ("Content-Encoding", "gzip")]), maxRequestBody: 4 << 20)
        var slices = 0
        var action = machine.receivedBody(ByteBuffer(bytes: bomb))
        while case .decodeMore = action {
            slices += 1
            action = machine.continueDecoding()
        }
        guard case .respondError(let error, _, close: true) = action else {
            Issue.record("expected 413")
            return
        }
        #expect(error.status == 413)
        #expect(error.code == 307)
        // About one slice per MiB of the 4 MiB limit, never the whole 64 MiB.
        #expect(slices >= 3 && slices <= 5)
        #expect(budget.held == 0)
    }

    @Test func aCorruptOrTruncatedGzipBodyIsRefusedWithCode354() {
        for body in [Array(Self.gzip("1\ta\n2\tb\n").dropLast(4)), [0x1f, 0x8b, 0x08, 0x00, 0xde, 0xad, 0xbe, 0xef]] {
            var machine = Machine(timeouts: Self.timeouts, now: Self.start)
            _ = machine.receivedHead(
                Self.insertHead([("Content-Length", "\(body.count)"), ("Content-Encoding", "gzip")]), maxRequestBody: 1 << 20)
            var action = machine.receivedBody(ByteBuffer(bytes: body))
            if case .none = action { action = machine.receivedEnd() }
            guard case .respondError(let error, _, close: true) = action else {
                Issue.record("expected a refusal")
                continue
            }
            #expect(error.code == 354)
            #expect(error.name == "ZLIB_INFLATE_FAILED")
            // ClickHouse answers a body it cannot decode with 500 (exceptionCodeToHTTPStatus has no 4xx for it).
            #expect(error.status == 500)
        }
    }

    @Test func aGzipBodyThatIsNotAnInsertStreamsAsItCame() {
        var machine = Machine(timeouts: Self.timeouts, now: Self.start)
        let body = Self.gzip("SELECT 1")
        _ = machine.receivedHead(
            HTTPRequestHead(
                version: .http1_1, method: .POST, uri: "/",
                headers: HTTPHeaders([("Content-Length", "\(body.count)"), ("Content-Encoding", "gzip")])),
            maxRequestBody: 1 << 20)
        var action = machine.receivedBody(ByteBuffer(bytes: body))
        if case .none = action { action = machine.receivedEnd() }
        if case .intake = action {
            action = machine.intakeDecided(.passthrough)
        }
        guard case .startPassthrough(let head, let initial, _) = action else {
            Issue.record("expected a passthrough")
            return
        }
        // Either still encoded as received, or decoded with the coding header gone: never a mix.
        if head.headers.contains(name: "content-encoding") {
            #expect(initial.map { Array($0.readableBytesView) } == body)
        } else {
            #expect(initial.map { String(buffer: $0) } == "SELECT 1")
        }
    }

    // MARK: The handler, on the embedded loop's clock

    static let shortLimits = "limits: { header_timeout: 100ms, body_timeout: 200ms, request_timeout: 1s, idle_timeout: 500ms }"

    @Test func theHandlerAnswersATrickledHeadWith408AndClosesAnIdleConnectionSilently() throws {
        let fixture = try RequestHandlerTests.Fixture(Self.shortLimits)
        let loop = fixture.channel.embeddedEventLoop
        try fixture.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        #expect(try fixture.exchange("POST /?query=INSERT%20INTO") == "")
        loop.advanceTime(by: .milliseconds(99))
        #expect(try fixture.output() == "")
        #expect(fixture.channel.isActive)
        loop.advanceTime(by: .milliseconds(101))
        let answer = try fixture.output()
        #expect(answer.hasPrefix("HTTP/1.1 408 Request Timeout\r\n"))
        #expect(answer.contains("(SOCKET_TIMEOUT)"))
        #expect(!fixture.channel.isActive)
        #expect(String(decoding: fixture.engine.prometheusText(), as: UTF8.self).contains("batchhouse_timeouts_total{kind=\"header\"} 1"))

        let idle = try RequestHandlerTests.Fixture(Self.shortLimits)
        try idle.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        #expect(try idle.exchange("GET /ping HTTP/1.1\r\nHost: x\r\n\r\n").hasSuffix("Ok.\n"))
        idle.channel.embeddedEventLoop.advanceTime(by: .milliseconds(400))
        #expect(idle.channel.isActive)
        idle.channel.embeddedEventLoop.advanceTime(by: .milliseconds(200))
        #expect(try idle.output() == "")
        #expect(!idle.channel.isActive)
    }

    @Test func theHandlerAnswersAStalledBodyWith408AndGivesItsBytesBack() throws {
        let fixture = try RequestHandlerTests.Fixture(Self.shortLimits)
        try fixture.channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        let rows = String(repeating: "1\tabcdefgh\n", count: 20_000)  // 200 kB: over the unreserved allowance
        _ = try fixture.exchange(
            "POST /?query=INSERT%20INTO%20t%20FORMAT%20TSV HTTP/1.1\r\nHost: x\r\nContent-Length: \(rows.utf8.count + 1)\r\n\r\n\(rows)")
        #expect(fixture.engine.buffering.incomingBytes == 1 << 20)
        #expect(fixture.engine.buffering.memoryInUse == 1 << 20)
        fixture.channel.embeddedEventLoop.advanceTime(by: .milliseconds(250))
        let answer = try fixture.output()
        #expect(answer.hasPrefix("HTTP/1.1 408 Request Timeout\r\n"))
        #expect(answer.contains("limits.body_timeout"))
        #expect(fixture.engine.buffering.incomingBytes == 0)
        #expect(fixture.batcher.bufferedRows == 0)
        #expect(!fixture.channel.isActive)
    }
}

extension RequestHandler.StateMachine.Action {
    var isNone: Bool {
        if case .none = self { return true }
        return false
    }
}
