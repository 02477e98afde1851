import BatchhouseConfig
import BatchhouseCore
import BatchhouseUpstream
import Foundation
import Logging
import NIOCore
import Synchronization
import Testing

@testable import BatchhouseEngine

/// How delivery reads ClickHouse's answers (docs/delivery.md, "Reading an answer"): by exception code, so a healthy
/// 18.16 that refuses rows with status 500 neither opens a breaker nor gets the same bad batch forever.
@Suite struct AnswerReadingTests {
    /// The table rule's default retries, with a spool: unavailability is retried past them, refusals are not.
    @Test func aPermanentRefusalWithStatus500IsDeadLetteredAtOnceEvenWithASpool() async throws {
        let transport = ScriptedTransport { _, _ in
            .error(status: 500, code: 16, message: "There is no column 'x' in table db.t")
        }
        let fixture = try EngineFixture(transport: transport, spool: true)
        let report = await fixture.engine.delivery.deliver(valuesBatch(rows: 4))

        #expect(fixture.transport.inserts.count == 1, "neither retried nor split")
        #expect(fixture.clock.sleeps.isEmpty)
        #expect(report.landedRows == 0)
        #expect(report.failures.count == 1)
        let letters = try DeliveryTests.deadLetters(fixture)
        #expect(letters.map(\.data) == ["(1),(2),(3),(4)"])
        #expect(fixture.engine.gateway.serverStates().map(\.state) == [.closed])
    }

    @Test func anUnknownErrorFromAServerThatIsUpIsRetriedItsRetriesThenDeadLetteredEvenWithASpool() async throws {
        let transport = ScriptedTransport { _, _ in .error(status: 500, code: 1001, message: "std::exception") }
        let fixture = try EngineFixture(transport: transport, spool: true)
        let rule = TableRule(retries: 2, retryBackoff: .milliseconds(100))
        let report = await fixture.engine.delivery.deliver(valuesBatch(rows: 2, rule: rule))

        #expect(fixture.transport.inserts.count == 3, "the first attempt and 2 retries")
        #expect(fixture.clock.sleeps.map(DeliveryTests.ms) == [50, 100])
        #expect(report.failures.count == 1)
        #expect(try DeliveryTests.deadLetters(fixture).map(\.data) == ["(1),(2)"])
        #expect(fixture.engine.gateway.serverStates().map(\.state) == [.closed], "an answer is not an outage")
    }

    @Test func refusalsDoNotOpenTheBreakerButUnavailabilityDoes() async throws {
        for (reply, opens) in [
            (Reply.error(status: 500, code: 27, message: "Cannot parse input"), false),
            (.error(status: 500, code: 16, message: "No such column"), false),
            (.error(status: 404, code: 60, message: "Table doesn't exist"), false),
            (.error(status: 401, code: 193, message: "Wrong password"), false),
            (.error(status: 500, code: 252, message: "Too many parts"), true),
            (.error(status: 500, code: 210, message: "Network error"), true),
            (.status(503, body: "Service Unavailable"), true),
            (.status(502, body: "Bad Gateway"), true),
            (.failure(.connect), true),
            (.failure(.timeout), true),
        ] {
            let fixture = try EngineFixture(transport: ScriptedTransport { _, _ in reply })
            let rule = TableRule(retries: 0, retryBackoff: .milliseconds(10))
            for id in 1...6 {
                _ = await fixture.engine.delivery.deliver(valuesBatch(id: UInt64(id), rows: 1, rule: rule))
            }
            let state = fixture.engine.gateway.serverStates()[0].state
            #expect((state == .open) == opens, "\(reply): breaker \(state)")
        }
    }

    @Test func theExceptionCodeHeaderIsReadBeforeTheBody() {
        let both = UpstreamResponse(
            status: 500, headers: [("x-clickhouse-exception-code", " 62 ")], body: ByteBuffer(string: "Code: 27, e.displayText()"))
        #expect(both.exceptionCode == 62)
        let bodyOnly = UpstreamResponse(status: 500, headers: [], body: ByteBuffer(string: "Code: 27, e.displayText() = x"))
        #expect(bodyOnly.exceptionCode == 27)
        let neither = UpstreamResponse(status: 502, headers: [], body: ByteBuffer(string: "Bad Gateway"))
        #expect(neither.exceptionCode == nil)
    }

    /// A retry sleeping out a long backoff goes as soon as a health check finds the server back, not when the
    /// backoff ends: the clock here never wakes a sleeper by itself.
    @Test func aRecoveredServerWakesTheRetriesWaitingForIt() async throws {
        let inserts = Counter()
        let transport = ScriptedTransport(routing: { _, url, _ in
            if url.hasSuffix("/ping") { return .ok }
            return inserts.next() == 0 ? .failure(.connect) : .ok
        })
        let clock = SuspendingClock()
        let configuration = try ConfigurationLoader.parse(
            yaml: """
                upstream: { servers: ["http://upstream.test:8123"], compression: none }
                dead_letter_dir: \(NSTemporaryDirectory())bh-recovery-\(UInt32.random(in: 0...UInt32.max))
                """, environment: [:])
        var logger = Logger(label: "recovery-test")
        logger.logLevel = .critical
        let engine = BatchhouseEngine(
            configuration: configuration, transport: transport, spool: nil, logger: logger, clock: clock, jitter: { 1 })
        let rule = TableRule(retries: 3, retryBackoff: .seconds(60))
        let delivery = Task { await engine.delivery.deliver(valuesBatch(rows: 3, rule: rule)) }
        let deadline = ContinuousClock.now + .seconds(30)
        while clock.sleepers == 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(clock.sleepers == 1, "the retry waits out its backoff")
        #expect(engine.gateway.isDegraded, "one failure: health checks go faster")

        await engine.gateway.checkHealth()
        let report = await delivery.value
        #expect(report.landedRows == 3)
        #expect(inserts.value == 2)
        #expect(!engine.gateway.isDegraded)
    }

    @Test func aSignalWakesEveryWaiterAndCancellationEndsAWait() async {
        let signal = RecoverySignal()
        let woken = Counter()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<3 {
                group.addTask {
                    await signal.wait()
                    woken.next()
                }
            }
            try? await Task.sleep(for: .milliseconds(50))
            signal.signal()
        }
        #expect(woken.value == 3)
        let cancelled = Task { await signal.wait() }
        cancelled.cancel()
        await cancelled.value
    }
}

/// A clock whose `sleep` returns only when the sleeping task is cancelled.
final class SuspendingClock: EngineClock {
    private let count = Atomic<Int>(0)

    var sleepers: Int { count.load(ordering: .relaxed) }

    func now() -> Instant { MonotonicClock().now() }

    func sleep(for duration: Duration) async {
        count.add(1, ordering: .relaxed)
        defer { count.subtract(1, ordering: .relaxed) }
        try? await Task.sleep(for: .seconds(3600))
    }

    func wallClockSeconds() -> Double { Date().timeIntervalSince1970 }
}

final class Counter: Sendable {
    private let count = Atomic<Int>(0)

    /// The value before this call's increment.
    @discardableResult
    func next() -> Int { count.add(1, ordering: .relaxed).oldValue }

    var value: Int { count.load(ordering: .relaxed) }
}

@Suite struct CredentialCheckReadingTests {
    static func gateway(_ reply: Reply) throws -> UpstreamGateway {
        UpstreamGateway(
            transport: ScriptedTransport { _, _ in reply },
            upstream: try ConfigurationLoader.parse(
                yaml: "upstream: { servers: [\"http://upstream.test:8123\"] }", environment: [:]
            ).upstream,
            clock: TestClock())
    }

    /// The check of a new identity reads the code as delivery does: an authentication code is a refusal whatever
    /// the status, another ClickHouse answer means the credentials were taken, and only unavailability is
    /// "cannot ask".
    @Test func theCodeDecidesWhatACheckSays() async throws {
        let identity = ClientIdentity(user: "alice", password: "x")
        for (reply, expected) in [
            (Reply.error(status: 500, code: 193, message: "Wrong password"), "refused"),
            (.error(status: 401, code: 516, message: "Authentication failed"), "refused"),
            (.status(401, body: "Unauthorized"), "refused"),
            (.error(status: 500, code: 62, message: "Syntax error"), "accepted"),
            (.ok, "accepted"),
            (.status(503, body: "Service Unavailable"), "unreachable"),
            (.error(status: 500, code: 210, message: "Network error"), "unreachable"),
            (.failure(.connect), "unreachable"),
        ] {
            let answer = await (try Self.gateway(reply)).verify(identity)
            let said: String
            switch answer {
            case .accepted: said = "accepted"
            case .refused: said = "refused"
            case .unreachable: said = "unreachable"
            }
            #expect(said == expected, "\(reply)")
        }
    }
}
