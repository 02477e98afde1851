import BatchhouseCore
import BatchhouseEngine
import Synchronization
import Testing

/// `read_your_writes`: a read of an identity seals that identity's open batches at once and waits for every
/// unsettled batch holding its acknowledged rows; other identities neither wait nor have their batches sealed.
@Suite struct ReadYourWritesTests {
    static let alice = ClientIdentity(user: "alice", password: "a")
    static let bob = ClientIdentity(user: "bob", password: "b")

    /// Counts how often a wait was resumed.
    final class Resumed: Sendable {
        private let count = Atomic<Int>(0)
        func callAsFunction() { count.add(1, ordering: .relaxed) }
        var value: Int { count.load(ordering: .relaxed) }
    }

    @Test func aReadSealsItsIdentitysOpenBatchesAndWaitsForTheirOutcome() async throws {
        let fixture = try EngineFixture("defaults: { max_delay: 1h }\n")
        #expect(fixture.insert("INSERT INTO db.t VALUES (1)", identity: Self.alice).acceptedRows == 1)
        #expect(fixture.insert("INSERT INTO db.u VALUES (2)", identity: Self.alice).acceptedRows == 1)
        #expect(fixture.insert("INSERT INTO db.t VALUES (3)", identity: Self.bob).acceptedRows == 1)
        let resumed = Resumed()
        let ticket = fixture.engine.awaitWrites(of: Self.alice) { resumed() }
        #expect(ticket != nil)
        // Alice's two batches were sealed at once (no timer); Bob's stays open.
        #expect(fixture.engine.buffering.bufferedRows == 1)
        #expect(fixture.engine.delivery.queuedBatches == 2)
        #expect(resumed.value == 0)
        let worker = Task { await fixture.engine.delivery.run() }
        #expect(await DeliveryTests.eventually { resumed.value == 1 })
        #expect(fixture.transport.inserts.count == 2)
        #expect(fixture.engine.writes.unsettledBatches == 0)
        // Nothing left to wait for: the next read goes at once.
        #expect(fixture.engine.awaitWrites(of: Self.alice) { resumed() } == nil)
        fixture.engine.drain()
        await worker.value
        #expect(resumed.value == 1)
    }

    @Test func anotherIdentitysReadNeitherWaitsNorSeals() throws {
        let fixture = try EngineFixture("defaults: { max_delay: 1h }\n")
        fixture.insert("INSERT INTO db.t VALUES (1)", identity: Self.alice)
        #expect(fixture.engine.awaitWrites(of: Self.bob) {} == nil)
        #expect(fixture.engine.buffering.bufferedRows == 1)
        #expect(fixture.engine.delivery.queuedBatches == 0)
    }

    @Test func aTableWithoutReadYourWritesIsNotWaitedFor() throws {
        let fixture = try EngineFixture(
            "defaults: { max_delay: 1h }\ntables:\n  db.fast: { read_your_writes: false }\n")
        fixture.insert("INSERT INTO db.fast VALUES (1)", identity: Self.alice)
        #expect(fixture.engine.awaitWrites(of: Self.alice) {} == nil)
        #expect(fixture.engine.buffering.bufferedRows == 1, "not sealed either")
    }

    @Test func batchesSealedByTheirOwnLimitsAreWaitedForToo() async throws {
        // max_rows 1: every insert seals its batch at once; they wait in the queue with no worker running.
        let fixture = try EngineFixture("defaults: { max_rows: 1, max_delay: 1h }\n")
        fixture.insert("INSERT INTO db.t VALUES (1)", identity: Self.alice)
        fixture.insert("INSERT INTO db.t VALUES (2)", identity: Self.alice)
        let resumed = Resumed()
        let ticket = try #require(fixture.engine.awaitWrites(of: Self.alice) { resumed() })
        #expect(fixture.engine.writes.unsettledBatches == 2)
        // The bound ran out: the ticket is taken back and is never resumed afterwards.
        #expect(fixture.engine.writes.cancel(ticket))
        await fixture.drain()
        #expect(resumed.value == 0)
        #expect(fixture.engine.writes.unsettledBatches == 0)
    }

    @Test func aDeadLetteredBatchIsAnOutcomeToo() async throws {
        let fixture = try EngineFixture(
            "defaults: { max_delay: 1h, retries: 0 }\n",
            transport: ScriptedTransport(replies: [.error(status: 400, code: 27, message: "cannot parse")]))
        fixture.insert("INSERT INTO db.t VALUES (1)", identity: Self.alice)
        let resumed = Resumed()
        #expect(fixture.engine.awaitWrites(of: Self.alice) { resumed() } != nil)
        let worker = Task { await fixture.engine.delivery.run() }
        #expect(await DeliveryTests.eventually { resumed.value == 1 })
        fixture.engine.drain()
        await worker.value
    }

    @Test func inServiceAccountModeTheContributorsOfABatchAreTracked() async throws {
        let fixture = try EngineFixture(
            "defaults: { max_delay: 1h }\n",
            upstream: "{ servers: [\"http://upstream.test:8123\"], compression: none, user: svc, password: s }")
        fixture.insert("INSERT INTO db.t VALUES (1)", identity: Self.alice)
        fixture.insert("INSERT INTO db.t VALUES (2)", identity: Self.bob)
        // One batch (the key's identity is the service account's), holding rows of both.
        #expect(fixture.engine.awaitWrites(of: ClientIdentity(user: "carol", password: "c")) {} == nil)
        #expect(fixture.engine.buffering.bufferedRows == 2)
        let resumed = Resumed()
        #expect(fixture.engine.awaitWrites(of: Self.bob) { resumed() } != nil)
        #expect(fixture.engine.buffering.bufferedRows == 0)
        let worker = Task { await fixture.engine.delivery.run() }
        #expect(await DeliveryTests.eventually { resumed.value == 1 })
        #expect(fixture.transport.inserts.count == 1)
        fixture.engine.drain()
        await worker.value
    }

    /// The cost of a read that finds nothing of its own: one pass over the open batches and the unsettled ones.
    @Test func aReadAmongManyOpenBatchesOfOthersCostsOnePassOverThem() throws {
        let fixture = try EngineFixture("defaults: { max_delay: 1h }\n")
        var figures: [String] = []
        for open in [0, 100, 10_000] {
            for table in 0..<open where table >= (open == 10_000 ? 100 : 0) {
                fixture.insert("INSERT INTO db.t\(table) VALUES (1)", identity: Self.bob)
            }
            let reads = 1000
            let started = ContinuousClock.now
            for _ in 0..<reads { #expect(fixture.engine.awaitWrites(of: Self.alice) {} == nil) }
            let each = (ContinuousClock.now - started) / reads
            figures.append("\(open) open: \(Double(each.components.attoseconds) / 1e12) µs")
        }
        print("[read_your_writes] a read with nothing to wait for, per call: \(figures.joined(separator: ", "))")
        #expect(fixture.engine.buffering.bufferedRows == 10_000)
    }

    @Test func theBoundIsOneBatchRequestWithItsRetriesWithinTheRequestTimeout() throws {
        let fixture = try EngineFixture(
            "defaults: { retries: 2 }\nlimits: { request_timeout: 5m }\n",
            upstream: "{ servers: [\"http://upstream.test:8123\"], compression: none, timeout: 10s }")
        #expect(fixture.engine.readYourWritesBound == .seconds(30))
        let capped = try EngineFixture(
            "defaults: { retries: 100 }\nlimits: { request_timeout: 1m }\n")
        #expect(capped.engine.readYourWritesBound == .seconds(60))
    }
}
