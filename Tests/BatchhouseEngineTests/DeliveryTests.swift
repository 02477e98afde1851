import BatchhouseCore
import BatchhouseEngine
import BatchhouseUpstream
import Foundation
import Logging
import NIOCore
import Synchronization
import Testing

/// Delivery against a scripted upstream: attempts, retries and backoff, bad-row splitting, dead letters, circuit
/// breakers, server choice, deduplication tokens, priorities, spool deferral, credentials and compression.
@Suite struct DeliveryTests {
    static let statement = "INSERT INTO `db`.`t` FORMAT Values"
    static let oneServer = "http://upstream.test:8123"

    /// A duration in milliseconds, rounded to the microsecond (backoffs are computed in floating point).
    static func ms(_ duration: Duration) -> Double {
        (duration.seconds * 1_000_000).rounded() / 1000
    }

    /// The rows of a Values body (`(1),(2)` gives `["(1)", "(2)"]`; test rows hold no commas).
    static func rows(_ body: String) -> [String] {
        body.split(separator: ",").map(String.init)
    }

    /// `(1)`, `(2)`, ... `(n)`.
    static func numbered(_ count: Int) -> String {
        (1...count).map { "(\($0))" }.joined(separator: ",")
    }

    /// Each dead letter in the fixture's folder: its data and its record.
    static func deadLetters(_ fixture: EngineFixture) throws -> [(data: String, record: DeadLetterWriter.Record)] {
        let files = fixture.deadLetterFiles
        let bases = files.filter { $0.hasSuffix(".data") }.map { String($0.dropLast(".data".count)) }
        #expect(files.count == bases.count * 2, "every .data has its .json: \(files)")
        return try bases.map { base in
            let directory = fixture.deadLetters.path
            let data = try String(contentsOfFile: "\(directory)/\(base).data", encoding: .utf8)
            let json = try Data(contentsOf: URL(fileURLWithPath: "\(directory)/\(base).json"))
            return (data, try JSONDecoder().decode(DeadLetterWriter.Record.self, from: json))
        }
    }

    /// Waits in real time, briefly, until `condition` holds; returns whether it did.
    static func eventually(timeout: Duration = .seconds(30), _ condition: () -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while !condition() {
            if ContinuousClock.now >= deadline { return false }
            try? await Task.sleep(for: .milliseconds(1))
        }
        return true
    }

    static func upstream(_ extra: String, servers: [String] = [oneServer]) -> String {
        let list = servers.map { "\"\($0)\"" }.joined(separator: ", ")
        return "{ servers: [\(list)], \(extra) }"
    }

    static let quiet: Logger = {
        var logger = Logger(label: "delivery-test")
        logger.logLevel = .critical
        return logger
    }()

    // MARK: Landing

    @Test func aBatchLandsInOneRequestWithTheStatementInTheURL() async throws {
        let fixture = try EngineFixture()
        let report = await fixture.engine.delivery.deliver(valuesBatch(rows: 3))

        #expect(report.landedRows == 3)
        #expect(report.failures.isEmpty)
        let sent = fixture.transport.requests
        try #require(sent.count == 1)
        #expect(sent[0].url.hasPrefix(Self.oneServer + "/?query="))
        #expect(sent[0].statement == Self.statement)
        #expect(sent[0].body == "(1),(2),(3)")
        #expect(sent[0].auth == nil, "an anonymous client's rows go without credentials")
        #expect(!sent[0].headers.contains { $0.0.lowercased() == "content-encoding" })
        #expect(fixture.clock.sleeps.isEmpty)
        #expect(fixture.deadLetterFiles.isEmpty)
    }

    @Test func rowsOfSeveralInsertsLandAsOneJoinedRequest() async throws {
        let fixture = try EngineFixture()
        #expect(fixture.insert("INSERT INTO db.t VALUES (1),(2)").acceptedRows == 2)
        #expect(fixture.insert("INSERT INTO db.t VALUES (3)").acceptedRows == 1)
        #expect(fixture.transport.requests.isEmpty, "buffered until the flush")
        await fixture.drain()

        let inserts = fixture.transport.inserts
        try #require(inserts.count == 1)
        #expect(inserts[0].statement == Self.statement)
        #expect(inserts[0].body == "(1),(2),(3)")
        let totals = fixture.engine.metrics.snapshot
        #expect(totals.rowsFlushed == 3)
        #expect(totals.batches == 1)
        #expect(totals.failedBatches == 0)
    }

    // MARK: Retries

    /// Three failures of different kinds, then success: the backoff doubles from the rule's 200 ms, and with jitter
    /// 0 it is half of base * 2^n, with jitter 1 all of it. Every attempt sends the same bytes.
    @Test(arguments: [(0.0, [100.0, 200, 400]), (1.0, [200.0, 400, 800])])
    func retriesWithDoublingBackoffThenLand(jitter: Double, expected: [Double]) async throws {
        let transport = ScriptedTransport(replies: [
            .status(502, body: "Bad Gateway"), .failure(.timeout), .error(status: 500, code: 241, message: "Memory limit"),
        ])
        let fixture = try EngineFixture(transport: transport, jitter: jitter)
        let report = await fixture.engine.delivery.deliver(valuesBatch(rows: 3))

        #expect(report.landedRows == 3)
        #expect(report.failures.isEmpty)
        #expect(fixture.clock.sleeps.map(Self.ms) == expected)
        let inserts = fixture.transport.inserts
        #expect(inserts.count == 4)
        #expect(inserts.allSatisfy { $0.body == "(1),(2),(3)" && $0.statement == Self.statement })
        #expect(fixture.deadLetterFiles.isEmpty)
    }

    @Test func retriesExhaustedWithoutSpoolDeadLetterExactlyTheRows() async throws {
        let fixture = try EngineFixture(transport: ScriptedTransport { _, _ in .failure(.timeout) })
        let report = await fixture.engine.delivery.deliver(valuesBatch(id: 7, rows: 3))

        #expect(fixture.transport.inserts.count == 4, "the first attempt and 3 retries")
        #expect(fixture.clock.sleeps.map(Self.ms) == [100, 200, 400])
        #expect(report.landedRows == 0)
        try #require(report.failures.count == 1)
        #expect(report.failures[0].part.rows == 3)
        guard case .failed(let error) = report.failures[0].reason else {
            Issue.record("expected .failed, got \(report.failures[0].reason)")
            return
        }
        #expect(error.kind == .timeout)

        let letters = try Self.deadLetters(fixture)
        try #require(letters.count == 1)
        #expect(letters[0].data == "(1),(2),(3)")
        #expect(letters[0].record.rows == 3)
        #expect(letters[0].record.attempts == 4)
        #expect(letters[0].record.httpStatus == nil)
        #expect(letters[0].record.statement == Self.statement)
        #expect(letters[0].record.batchID == 7)
        #expect(letters[0].record.error.contains("timeout"))
        #expect(fixture.engine.metrics.snapshot.failedBatches == 1)
    }

    @Test func serverErrorAnswersExhaustedAreRejectedWithTheirStatus() async throws {
        let transport = ScriptedTransport { _, _ in .status(503, body: "Service Unavailable") }
        let fixture = try EngineFixture(transport: transport)
        let report = await fixture.engine.delivery.deliver(valuesBatch(rows: 2))

        #expect(fixture.transport.inserts.count == 4)
        try #require(report.failures.count == 1)
        guard case .rejected(let response) = report.failures[0].reason else {
            Issue.record("expected .rejected, got \(report.failures[0].reason)")
            return
        }
        #expect(response.status == 503)
        let letters = try Self.deadLetters(fixture)
        try #require(letters.count == 1)
        #expect(letters[0].data == "(1),(2)")
        #expect(letters[0].record.httpStatus == 503)
        #expect(letters[0].record.attempts == 4)
        #expect(letters[0].record.error == "Service Unavailable")
    }

    @Test func aRefusalNotAboutTheDataIsDeadLetteredAtOnce() async throws {
        let transport = ScriptedTransport { _, _ in
            .error(status: 404, code: 60, message: "Table db.t doesn't exist")
        }
        let fixture = try EngineFixture(transport: transport)
        let report = await fixture.engine.delivery.deliver(valuesBatch(rows: 3))

        #expect(fixture.transport.inserts.count == 1, "no retry")
        #expect(fixture.clock.sleeps.isEmpty)
        #expect(report.landedRows == 0)
        try #require(report.failures.count == 1)
        guard case .rejected(let response) = report.failures[0].reason else {
            Issue.record("expected .rejected, got \(report.failures[0].reason)")
            return
        }
        #expect(response.status == 404)
        #expect(String(buffer: response.body).contains("Code: 60"))
        let letters = try Self.deadLetters(fixture)
        try #require(letters.count == 1)
        #expect(letters[0].data == "(1),(2),(3)")
        #expect(letters[0].record.httpStatus == 404)
        #expect(letters[0].record.attempts == 1)
        #expect(letters[0].record.error.contains("Code: 60"))
    }

    /// With `ack: flushed` the client gets ClickHouse's own refusal.
    @Test func aWaitingClientGetsTheRefusalRelayed() async throws {
        let transport = ScriptedTransport { _, _ in .error(status: 404, code: 60, message: "Table db.t doesn't exist") }
        let fixture = try EngineFixture("defaults: { ack: flushed }", transport: transport)
        let answers = Answers()
        #expect(fixture.insert("INSERT INTO db.t VALUES (1),(2)", answers: answers).waitsForBatch)
        await fixture.drain()

        let received = await answers.wait(for: 1)
        try #require(received.count == 1)
        #expect(received[0].relayedStatus == 404)
        #expect(fixture.transport.inserts.map(\.body) == ["(1),(2)"])
        #expect(try Self.deadLetters(fixture).map(\.data) == ["(1),(2)"])
    }

    // MARK: Bad rows

    /// ClickHouse (18.16 style: status 500) refuses any body holding a bad row; the batch is halved until the bad
    /// rows are alone: only they are dead-lettered, every other row lands exactly once.
    @Test(arguments: [[6], [0], [9], [1, 8], [3, 4]])
    func badRowsAreIsolatedBySplitting(bad: [Int]) async throws {
        let values = (0..<10).map { bad.contains($0) ? "('oops\($0)')" : "(\($0 + 1))" }
        let transport = ScriptedTransport { _, body in
            body.contains("'oops")
                ? .error(status: 500, code: 53, message: "Cannot parse input: expected ) before: 'oops'") : .ok
        }
        let fixture = try EngineFixture(transport: transport)
        let report = await fixture.engine.delivery.deliver(valuesBatch(values: values))

        let good = values.enumerated().filter { !bad.contains($0.offset) }.map(\.element)
        let badRows = bad.map { values[$0] }
        #expect(report.landedRows == good.count)
        #expect(report.failures.count == bad.count)
        #expect(report.failures.allSatisfy { $0.part.rows == 1 })
        for failure in report.failures {
            guard case .rejected(let response) = failure.reason else {
                Issue.record("expected .rejected, got \(failure.reason)")
                continue
            }
            #expect(response.status == 500)
        }
        #expect(Set(report.failures.map { String(decoding: $0.part.data, as: UTF8.self) }) == Set(badRows))

        let inserts = fixture.transport.inserts
        let landed = inserts.filter { !$0.body.contains("'oops") }.flatMap { Self.rows($0.body) }
        #expect(landed.sorted() == good.sorted(), "every good row lands exactly once")
        #expect(inserts.first?.body == values.joined(separator: ","), "the whole batch was tried first")
        #expect(inserts.allSatisfy { $0.statement == Self.statement })
        #expect(fixture.clock.sleeps.isEmpty, "a data error is split, never retried")

        let letters = try Self.deadLetters(fixture)
        #expect(letters.map(\.data).sorted() == badRows.sorted())
        for letter in letters {
            #expect(letter.record.rows == 1)
            #expect(letter.record.httpStatus == 500)
            #expect(letter.record.attempts == 1)
            #expect(letter.record.error.contains("Code: 53"))
        }
    }

    /// ClickHouse 18.16 answers data errors with status 500. Isolating a bad row at the front of a 32-row batch
    /// takes 6 refusals in a row (32, 16, 8, 4, 2, 1 rows); they come from a healthy server, so its breaker stays
    /// closed and all 31 good rows land (it used to open halfway and dead-letter the good rows).
    @Test("18.16 data errors (status 500) do not open the circuit breaker while splitting")
    func isolatingABadRowDoesNotOpenTheBreaker() async throws {
        let values = ["('oops')"] + (2...32).map { "(\($0))" }
        let transport = ScriptedTransport { _, body in
            body.contains("'oops") ? .error(status: 500, code: 27, message: "Cannot parse input") : .ok
        }
        let fixture = try EngineFixture(transport: transport)
        let report = await fixture.engine.delivery.deliver(valuesBatch(values: values))

        let deadLettered = try Self.deadLetters(fixture).map(\.data)
        #expect(report.landedRows == 31)
        #expect(report.failures.map { String(decoding: $0.part.data, as: UTF8.self) } == ["('oops')"])
        #expect(deadLettered == ["('oops')"])
        let landed = fixture.transport.inserts.filter { !$0.body.contains("'oops") }.flatMap { Self.rows($0.body) }
        #expect(landed.sorted() == values.dropFirst().sorted())
        #expect(fixture.engine.gateway.serverStates().map(\.state) == [.closed])
    }

    /// A part that cannot be split is dead-lettered with the attempts it really took (retries before ClickHouse
    /// refused it for its data included).
    @Test("the dead letter of an unsplittable part records its real attempts")
    func anUnsplittablePartRecordsItsRealAttempts() async throws {
        let transport = ScriptedTransport(replies: [
            .status(503, body: "Service Unavailable"), .error(status: 500, code: 27, message: "Cannot parse input"),
        ])
        let fixture = try EngineFixture(transport: transport)
        _ = await fixture.engine.delivery.deliver(valuesBatch(rows: 1))

        #expect(fixture.transport.inserts.count == 2)
        let letters = try Self.deadLetters(fixture)
        try #require(letters.count == 1)
        #expect(letters[0].data == "(1)")
        #expect(letters[0].record.attempts == 2)
    }

    @Test func aSingleRowRefusedForItsDataIsDeadLettered() async throws {
        let transport = ScriptedTransport { _, _ in .error(status: 500, code: 27, message: "Cannot parse input") }
        let fixture = try EngineFixture(transport: transport)
        let report = await fixture.engine.delivery.deliver(valuesBatch(rows: 1))

        #expect(fixture.transport.inserts.map(\.body) == ["(1)"], "one attempt, nothing to split")
        #expect(fixture.clock.sleeps.isEmpty)
        #expect(report.landedRows == 0)
        try #require(report.failures.count == 1)
        guard case .rejected(let response) = report.failures[0].reason else {
            Issue.record("expected .rejected, got \(report.failures[0].reason)")
            return
        }
        #expect(response.status == 500)
        let letters = try Self.deadLetters(fixture)
        #expect(letters.map(\.data) == ["(1)"])
        #expect(letters.first?.record.httpStatus == 500)
    }

    // MARK: Servers

    @Test func fiveConnectFailuresOpenTheBreakerAndAHalfOpenSuccessClosesIt() async throws {
        // Requests that reach the transport: five refused connections, then success.
        let transport = ScriptedTransport { index, _ in index < 5 ? .failure(.connect) : .ok }
        let fixture = try EngineFixture(transport: transport)
        let gateway = fixture.engine.gateway

        // 1 attempt + 4 retries: five consecutive connection failures.
        let first = await fixture.engine.delivery.deliver(valuesBatch(id: 1, rows: 2, rule: TableRule(retries: 4)))
        #expect(fixture.transport.requests.count == 5)
        #expect(first.failures.count == 1)
        #expect(gateway.serverStates().map(\.state) == [.open])

        // While open, sends fail fast without reaching the transport.
        let second = await fixture.engine.delivery.deliver(valuesBatch(id: 2, rows: 2, rule: TableRule(retries: 0)))
        #expect(fixture.transport.requests.count == 5, "nothing reached the upstream")
        try #require(second.failures.count == 1)
        guard case .failed(let error) = second.failures[0].reason else {
            Issue.record("expected .failed, got \(second.failures[0].reason)")
            return
        }
        #expect(error.message.contains("circuit breaker is open"))
        await #expect(throws: UpstreamError.self) {
            _ = try await gateway.send(BatchRequest(valuesBatch(id: 3, rows: 1)), avoiding: nil)
        }
        #expect(fixture.transport.requests.count == 5)

        // 30 s later one probe goes through; its success closes the breaker.
        fixture.clock.advance(by: .seconds(30))
        #expect(gateway.serverStates().map(\.state) == [.halfOpen])
        let third = await fixture.engine.delivery.deliver(valuesBatch(id: 4, rows: 3))
        #expect(third.landedRows == 3)
        #expect(fixture.transport.requests.count == 6)
        #expect(fixture.transport.requests.last?.body == "(1),(2),(3)")
        #expect(gateway.serverStates().map(\.state) == [.closed])
    }

    @Test func aBatchMovesToTheOtherServerWhenTheFirstRefusesConnections() async throws {
        let (a, b) = ("http://a.test:8123", "http://b.test:8123")
        let transport = ScriptedTransport(routing: { _, url, _ in url.hasPrefix(a) ? .failure(.connect) : .ok })
        let fixture = try EngineFixture(
            transport: transport, upstream: Self.upstream("compression: none", servers: [a, b]))

        let report = await fixture.engine.delivery.deliver(valuesBatch(id: 1, rows: 2))
        #expect(report.landedRows == 2)
        let sent = fixture.transport.requests
        try #require(sent.count == 2)
        #expect(sent[0].url.hasPrefix(a + "/?query="), "the first pick is the first server")
        #expect(sent[1].url.hasPrefix(b + "/?query="), "the retry avoids the server that just failed")
        #expect(sent.map(\.body) == ["(1),(2)", "(1),(2)"])
        #expect(fixture.clock.sleeps.map(Self.ms) == [100])

        // More batches: each lands once, on b.
        for id in 2...4 {
            let more = await fixture.engine.delivery.deliver(valuesBatch(id: UInt64(id), rows: id))
            #expect(more.landedRows == id)
            #expect(more.failures.isEmpty)
        }
        let onB = fixture.transport.requests.filter { $0.url.hasPrefix(b) }.map(\.body)
        #expect(onB == ["(1),(2)", Self.numbered(2), Self.numbered(3), Self.numbered(4)])
        #expect(fixture.deadLetterFiles.isEmpty)

        // Whatever the rotation, a send avoiding the first server goes to the second.
        for id in 5...8 {
            let (response, server) = try await fixture.engine.gateway.send(
                BatchRequest(valuesBatch(id: UInt64(id), rows: 1)), avoiding: 0)
            #expect(server == 1)
            #expect(response.status == 200)
        }
    }

    // MARK: Deduplication token

    @Test(arguments: [("23.8.1.1", true), ("22.2.1.1", true), ("22.1.3.7", false), ("18.16.1", false)])
    func deduplicationTokenFollowsTheProbedVersion(version: String, sendsToken: Bool) async throws {
        let transport = ScriptedTransport(replies: [
            .status(200, body: version + "\n"), .status(503, body: "Service Unavailable"),
        ])
        let fixture = try EngineFixture(transport: transport)
        let gateway = fixture.engine.gateway
        #expect(await gateway.probeVersion(logger: Self.quiet) == version)
        #expect(fixture.transport.requests.first?.statement == "SELECT version()")
        #expect(gateway.capabilities?.supportsDeduplicationToken == sendsToken)

        let report = await fixture.engine.delivery.deliver(valuesBatch(id: 42, rows: 2))
        #expect(report.landedRows == 2)
        let inserts = fixture.transport.inserts
        try #require(inserts.count == 2, "one 503, one retry")
        let tokens = inserts.map { $0.parameter("insert_deduplication_token") }
        if sendsToken {
            let token = try #require(tokens[0])
            #expect(token.hasPrefix("batchhouse-"))
            #expect(token.hasSuffix("-42"), "made from the batch id")
            #expect(tokens[1] == token, "the same token on the retry")
        } else {
            #expect(tokens == [nil, nil])
        }
        #expect(inserts.allSatisfy { $0.statement == Self.statement && $0.body == "(1),(2)" })
    }

    @Test func noDeduplicationTokenBeforeTheVersionIsKnown() async throws {
        let fixture = try EngineFixture()
        #expect(fixture.engine.gateway.capabilities == nil)
        _ = await fixture.engine.delivery.deliver(valuesBatch(rows: 1))
        #expect(fixture.transport.inserts.count == 1)
        #expect(fixture.transport.inserts.first?.parameter("insert_deduplication_token") == nil)
    }

    // MARK: Queue

    /// A one-worker fixture whose upstream refuses, for their data, the batches holding an `'oops` row.
    static func oneWorkerRefusingOops() throws -> EngineFixture {
        let answer = refusingOops()
        return try EngineFixture(transport: ScriptedTransport { _, body in answer(body) }, upstream: oneWorkerUpstream)
    }

    /// The table of each insert sent, in order.
    static func tables(_ fixture: EngineFixture) -> [String] {
        fixture.transport.inserts.map { String($0.statement?.split(separator: "`")[3] ?? "") }
    }

    /// A batch of table `a` with `count` bad rows, tagged `n`.
    static func bad(_ n: Int, rows count: Int = 16) -> SealedBatch {
        valuesBatch(id: UInt64(n), table: "a", values: (0..<count).map { "('oops\(n)-\($0)')" })
    }

    @Test func higherPriorityBatchesAreDeliveredFirst() async throws {
        let fixture = try EngineFixture(upstream: Self.upstream("compression: none, max_concurrent_flushes: 1"))
        let batches = [("p5a", 5), ("p1a", 1), ("p3", 3), ("p1b", 1), ("p5b", 5), ("p2", 2)].enumerated().map {
            valuesBatch(id: UInt64($0.offset + 1), table: $0.element.0, rows: 1, rule: TableRule(priority: $0.element.1))
        }
        let delivery = fixture.engine.delivery
        delivery.submit(batches)
        #expect(delivery.queuedBatches == 6)
        delivery.close()
        await delivery.run()

        let order = fixture.transport.inserts.map { $0.statement ?? "" }
        #expect(order == ["p1a", "p1b", "p2", "p3", "p5a", "p5b"].map { "INSERT INTO `db`.`\($0)` FORMAT Values" })
        #expect(delivery.queuedBatches == 0)
    }

    /// One table's bad rows do not hold the only worker while other tables wait: before each half of a split it
    /// sends a waiting batch first. Without that, the other tables went after all 31 inserts of `a`'s isolation.
    @Test func aSplittingWorkerSendsAWaitingBatchBeforeEachHalf() async throws {
        let fixture = try Self.oneWorkerRefusingOops()
        let delivery = fixture.engine.delivery
        let bad = (0..<16).map { "('oops\($0)')" }
        let others = (1...40).map { valuesBatch(id: UInt64($0 + 1), table: "o\($0)", rows: 1) }
        delivery.submit([valuesBatch(id: 1, table: "a", values: bad)] + others)
        delivery.close()
        await delivery.run()

        let tables = Self.tables(fixture)
        #expect(tables.prefix(4) == ["a", "o1", "a", "o2"], "\(tables)")
        // 15 splits, two helps each; the other 10 go after.
        let lastOfA = try #require(tables.lastIndex(of: "a"))
        #expect(tables[..<lastOfA].filter { $0 != "a" }.count == 30, "\(tables)")
        #expect(tables.filter { $0 == "a" }.count == 31, "every bad row isolated: 16 leaves, 15 inner parts")
        #expect(tables.count == 71)
        #expect(try Self.deadLetters(fixture).count == 16)
        #expect(delivery.queuedBatches == 0)
    }

    /// A table with a backlog of bad batches does not keep another table's batch behind all of them: the queue
    /// serves tables in turn, and a table that had nothing queued first. In one FIFO, `b` went after the isolation
    /// of every batch of `a` (each helping send of `a` split in full).
    @Test func aBacklogOfOneTableDoesNotHoldUpAnotherTablesBatch() async throws {
        let fixture = try Self.oneWorkerRefusingOops()
        let delivery = fixture.engine.delivery
        let backlog = (1...10).map { Self.bad($0, rows: 4) }
        delivery.submit(backlog + [valuesBatch(id: 11, table: "b", rows: 1)])
        delivery.close()
        await delivery.run()

        let tables = Self.tables(fixture)
        // a's first batch is refused whole; before its first half the worker helps: b, the fresh table, goes.
        #expect(tables.prefix(2) == ["a", "b"], "\(tables)")
        #expect(tables.filter { $0 == "a" }.count == 70, "10 batches of 4 bad rows, 7 inserts each")
        #expect(try Self.deadLetters(fixture).count == 40)
        #expect(delivery.queuedBatches == 0)
    }

    /// A helping send that ClickHouse refuses whole is parked for a worker of its own to split,
    /// instead of being split in full by the helper (which then helps nobody): a batch of another table that comes
    /// meanwhile goes at the splitting worker's next help.
    @Test func aHelpedBatchRefusedWholeIsSplitByAWorkerOfItsOwn() async throws {
        let delivery = Mutex<Delivery?>(nil)
        let arrived = Atomic<Bool>(false)
        let transport = ScriptedTransport { _, body in
            // a2 sent whole (by the helper): b's batch is sealed now.
            if body.contains("oops2-0") && body.contains("oops2-15") && !arrived.exchange(true, ordering: .relaxed) {
                delivery.withLock { $0 }?.submit(valuesBatch(id: 3, table: "b", rows: 1))
            }
            return oopsRefusal(body) ?? .ok
        }
        let fixture = try EngineFixture(
            transport: transport, upstream: Self.upstream("compression: none, max_concurrent_flushes: 1"))
        delivery.withLock { $0 = fixture.engine.delivery }
        fixture.engine.delivery.submit([Self.bad(1), Self.bad(2)])
        fixture.engine.delivery.close()
        await fixture.engine.delivery.run()

        let tables = Self.tables(fixture)
        // a1 whole, a2 whole (helping; parked), a1's first half, then b at the next help.
        #expect(tables.prefix(4) == ["a", "a", "a", "b"], "\(tables)")
        #expect(tables.filter { $0 == "a" }.count == 62, "31 inserts per batch of 16 bad rows, a2's whole sent once")
        #expect(try Self.deadLetters(fixture).count == 32)
        #expect(fixture.engine.delivery.queuedBatches == 0)
    }

    /// A parked batch (refused whole by a helper) is left to a worker of its own and never offered to a helper
    /// again, so later helps go to other tables' batches: b's second batch goes at the third help, not after the
    /// whole split (a parked batch put back in the queue came out first at every help).
    @Test func aParkedBatchDoesNotUseUpTheHelpsOfASplit() async throws {
        let fixture = try Self.oneWorkerRefusingOops()
        let delivery = fixture.engine.delivery
        delivery.submit([Self.bad(1), Self.bad(2), valuesBatch(id: 3, table: "b", rows: 1), valuesBatch(id: 4, table: "b", rows: 1)])
        delivery.close()
        await delivery.run()

        let tables = Self.tables(fixture)
        // a1 whole; help: b1 (fresh); a1's half; help: a2 whole (parked); a1's quarter; help: b2.
        #expect(tables.prefix(6) == ["a", "b", "a", "a", "a", "b"], "\(tables)")
        #expect(tables.filter { $0 == "a" }.count == 62, "31 inserts each: a2's whole sent once, by the helper")
        #expect(try Self.deadLetters(fixture).count == 32)
        #expect(delivery.queuedBatches == 0)
    }

    @Test func theQueueServesTablesInTurnAndAFreshTableFirst() {
        var queue = PriorityQueue<String>()
        for n in 1...3 { queue.push("a\(n)", priority: 3, lane: "a") }
        for n in 1...2 { queue.push("b\(n)", priority: 3, lane: "b") }
        #expect(queue.pop() == "a1")
        #expect(queue.pop() == "b1")
        queue.push("c1", priority: 3, lane: "c")  // fresh: ahead of a and b, which wait in turn
        queue.push("p1", priority: 1, lane: "a")  // a higher priority goes first whatever the lane
        #expect(queue.pop() == "p1")
        #expect(queue.pop() == "c1")
        #expect(queue.pop() == "a2")
        #expect(queue.pop() == "b2")
        #expect(queue.pop() == "a3")
        #expect(queue.count == 0)
        #expect(queue.pop() == nil)
        queue.push("a4", priority: 3, lane: "a")  // a lane dropped when found empty starts fresh again
        #expect(queue.count == 1)
        #expect(queue.pop() == "a4")
        #expect(queue.pop() == nil)
        // A table that sends one batch at a time is fresh once per round, not each time: y's backlog gets its turn.
        for n in 1...3 { queue.push("y\(n)", priority: 3, lane: "y") }
        #expect(queue.pop() == "y1")
        queue.push("x1", priority: 3, lane: "x")
        #expect(queue.pop() == "x1")
        queue.push("x2", priority: 3, lane: "x")
        #expect(queue.pop() == "y2")
        #expect(queue.pop() == "x2")
        #expect(queue.pop() == "y3")
        #expect(queue.pop() == nil)
        #expect(queue.count == 0)
    }

    /// A waiting batch that must be retried is not retried in place by a worker that is splitting: it goes back to
    /// the queue, the split goes on without more help, and the batch lands once afterwards.
    @Test func aHelpedBatchThatMustBeRetriedGoesBackToTheQueue() async throws {
        let answer = refusingOops(overloadingOnce: "(1)")
        let fixture = try EngineFixture(transport: ScriptedTransport { _, body in answer(body) }, upstream: oneWorkerUpstream)
        let delivery = fixture.engine.delivery
        let bad = (0..<4).map { "('oops\($0)')" }
        delivery.submit([
            valuesBatch(id: 1, table: "a", values: bad), valuesBatch(id: 2, table: "b", rows: 1),
            valuesBatch(id: 3, table: "c", rows: 1),
        ])
        delivery.close()
        await delivery.run()

        let tables = Self.tables(fixture)
        // b is refused (TOO_MANY_PARTS) and put back; no more help for this split; b goes again after c.
        #expect(tables == ["a", "b", "a", "a", "a", "a", "a", "a", "c", "b"], "\(tables)")
        #expect(fixture.clock.sleeps.isEmpty, "the split never waited for b's backoff")
        #expect(try Self.deadLetters(fixture).count == 4)
        #expect(delivery.queuedBatches == 0)
    }

    // MARK: Spool

    /// With a spool, a batch whose server refuses connections is retried far past `retries` while the proxy
    /// runs; once the queue is closed it is left in the spool, not dead-lettered.
    @Test func withSpoolAConnectFailureRetriesUntilClosedThenDefers() async throws {
        let fixture = try EngineFixture(transport: ScriptedTransport { _, _ in .failure(.connect) }, spool: true)
        let delivery = fixture.engine.delivery
        let clock = fixture.clock
        let attempt = Task { await delivery.deliver(valuesBatch(rows: 2)) }
        // A generous bound: each retry hops through the cooperative pool several times, and the whole suite shares it
        // (once 30 s were not enough there).
        #expect(await Self.eventually(timeout: .seconds(120)) { clock.sleeps.count >= 10 }, "still retrying after 3 retries")
        delivery.close()
        let report = await attempt.value

        #expect(report.landedRows == 0)
        try #require(report.failures.count == 1)
        guard case .deferred(let error) = report.failures[0].reason else {
            Issue.record("expected .deferred, got \(report.failures[0].reason)")
            return
        }
        #expect(error?.kind == .connect)
        #expect(report.failures[0].part.rows == 2)
        #expect(fixture.deadLetterFiles.isEmpty)
        #expect(fixture.transport.inserts.allSatisfy { $0.body == "(1),(2)" })
        // The backoff grew to its cap (jitter 0: 5 s) instead of stopping.
        #expect(clock.sleeps.map(Self.ms).prefix(3) == [100, 200, 400])
        #expect(clock.sleeps.map(Self.ms).last == 5000)
    }

    @Test func withSpoolDrainLeavesAnUndeliveredBatchInTheSpool() async throws {
        let fixture = try EngineFixture(
            "defaults: { strategy: size, max_rows: 2 }", transport: ScriptedTransport { _, _ in .failure(.connect) },
            spool: true)
        let spool = try #require(fixture.spool)
        #expect(fixture.insert("INSERT INTO db.t VALUES (1),(2)").acceptedRows == 2)
        #expect(spool.undeliveredChunks == 1)

        let delivery = fixture.engine.delivery
        let worker = Task { await delivery.run() }
        let clock = fixture.clock
        #expect(await Self.eventually { clock.sleeps.count >= 6 }, "retrying past the 3 retries")
        fixture.engine.drain()
        await worker.value

        #expect(fixture.deadLetterFiles.isEmpty)
        #expect(spool.undeliveredChunks == 1, "the rows stay for the next start")
        #expect(!fixture.transport.inserts.isEmpty)
        #expect(fixture.transport.inserts.allSatisfy { $0.body == "(1),(2)" })
        #expect(fixture.engine.metrics.snapshot.rowsFlushed == 0)
    }

    @Test(arguments: [false, true])
    func aCancelledAttemptIsDeadLetteredWithoutSpoolAndDeferredWithIt(spool: Bool) async throws {
        let fixture = try EngineFixture(transport: ScriptedTransport { _, _ in .failure(.cancelled) }, spool: spool)
        let report = await fixture.engine.delivery.deliver(valuesBatch(rows: 2))

        #expect(fixture.transport.inserts.count == 1, "never retried")
        #expect(fixture.clock.sleeps.isEmpty)
        try #require(report.failures.count == 1)
        switch (spool, report.failures[0].reason) {
        case (true, .deferred):
            #expect(fixture.deadLetterFiles.isEmpty)
        case (false, .failed(let error)):
            #expect(error.kind == .cancelled)
            #expect(try Self.deadLetters(fixture).map(\.data) == ["(1),(2)"])
        default:
            Issue.record("unexpected \(report.failures[0].reason) with spool \(spool)")
        }
    }

    // MARK: Requests

    @Test func aServiceAccountReplacesTheClientsCredentials() async throws {
        let fixture = try EngineFixture(
            upstream: Self.upstream("compression: none, user: svc, password: s3cret"))
        let alice = ClientIdentity(user: "alice", password: "pw")
        fixture.insert("INSERT INTO db.t VALUES (1)", identity: alice)
        fixture.insert("INSERT INTO db.t VALUES (2)", identity: ClientIdentity(user: "bob", password: "x"))
        await fixture.engine.gateway.probeVersion(logger: Self.quiet)
        await fixture.drain()

        let inserts = fixture.transport.inserts
        #expect(inserts.map(\.body) == ["(1),(2)"], "one batch: identities do not split batches")
        #expect(inserts.map(\.auth) == ["svc:s3cret"])
        let probe = fixture.transport.requests.first { $0.statement == "SELECT version()" }
        #expect(probe?.auth == "svc:s3cret")
    }

    @Test func withoutAServiceAccountEachBatchCarriesItsClientsCredentials() async throws {
        let fixture = try EngineFixture()
        fixture.insert("INSERT INTO db.t VALUES (1)", identity: ClientIdentity(user: "alice", password: "pw"))
        fixture.insert("INSERT INTO db.t VALUES (2)", identity: ClientIdentity(user: nil, password: "secret"))
        fixture.insert("INSERT INTO db.t VALUES (3)")
        await fixture.drain()

        let sent = fixture.transport.inserts.map { ($0.body, $0.auth) }
        #expect(sent.count == 3)
        #expect(sent.contains { $0 == ("(1)", "alice:pw") })
        #expect(sent.contains { $0 == ("(2)", "default:secret") })
        #expect(sent.contains { $0 == ("(3)", nil) })
    }

    @Test func gzipCompressesTheBody() async throws {
        let fixture = try EngineFixture(upstream: Self.upstream("compression: gzip"))
        let report = await fixture.engine.delivery.deliver(valuesBatch(rows: 5))
        #expect(report.landedRows == 5)

        let sent = try #require(fixture.transport.inserts.first)
        #expect(sent.headers.contains { $0.0 == "Content-Encoding" && $0.1 == "gzip" })
        #expect(sent.bytes.starts(with: [0x1f, 0x8b]), "a gzip member")
        let plain = try sent.bytes.withUnsafeBytes { try Zlib.decompress($0, as: .gzip, limit: 1 << 20) }
        #expect(String(decoding: plain, as: UTF8.self) == Self.numbered(5))
        #expect(sent.statement == Self.statement)
    }

    @Test func lz4AndZstdAreUsedOnlyWhereTheServerDecodesThem() {
        typealias Gateway = UpstreamGateway
        let old = UpstreamCapabilities(version: "18.16.1")
        let zstdOnly = UpstreamCapabilities(version: "21.8.15.7")
        let modern = UpstreamCapabilities(version: "23.8.1.1")
        #expect(Gateway.coding(for: .lz4, capabilities: nil) == .gzip, "version not known yet")
        #expect(Gateway.coding(for: .zstd, capabilities: nil) == .gzip)
        #expect(Gateway.coding(for: .lz4, capabilities: old) == .gzip)
        #expect(Gateway.coding(for: .zstd, capabilities: old) == .gzip)
        #expect(Gateway.coding(for: .lz4, capabilities: zstdOnly) == .gzip)
        #expect(Gateway.coding(for: .zstd, capabilities: zstdOnly) == .zstd)
        #expect(Gateway.coding(for: .lz4, capabilities: modern) == .lz4)
        #expect(Gateway.coding(for: .none, capabilities: modern) == nil)
        #expect(Gateway.coding(for: .gzip, capabilities: old) == .gzip)
    }

    @Test(arguments: [("lz4", "23.8.1.1", "lz4"), ("zstd", "23.8.1.1", "zstd"), ("lz4", "18.16.1", "gzip"), ("zstd", "18.16.1", "gzip")])
    func aProbedVersionChoosesTheBatchesCoding(compression: String, version: String, expected: String) async throws {
        let transport = ScriptedTransport(replies: [.status(200, body: version + "\n")])
        let fixture = try EngineFixture(transport: transport, upstream: Self.upstream("compression: \(compression)"))
        await fixture.engine.gateway.probeVersion(logger: Self.quiet)
        let report = await fixture.engine.delivery.deliver(valuesBatch(rows: 5))
        #expect(report.landedRows == 5)
        let sent = try #require(fixture.transport.inserts.first)
        #expect(sent.headers.contains { $0.0 == "Content-Encoding" && $0.1 == expected })
        let coding = try #require(ContentCoding(clickHouseRequestEncoding: expected))
        let plain = try BodyDecoders.decodeAll(ByteBuffer(bytes: sent.bytes), coding: coding, clickHouseBlocks: false, limit: 1 << 20)
        #expect(String(buffer: plain) == Self.numbered(5))
    }
}
