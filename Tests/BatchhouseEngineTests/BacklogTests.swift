import BatchhouseCore
import BatchhouseSpool
import BatchhouseUpstream
import Foundation
import Synchronization
import Testing

@testable import BatchhouseEngine

/// An upstream that answers the questions the engine asks about earlier queries (`SYSTEM FLUSH LOGS`,
/// `system.query_log`, `system.processes`, `uptime()`: up for a day unless told) from `log`, and inserts from
/// `insert`.
private func upstream(
    log: @escaping @Sendable (_ queryID: String) -> Reply = { _ in .status(200, body: "") },
    processes: @escaping @Sendable () -> Reply = { .status(200, body: "0\n") },
    uptime: @escaping @Sendable () -> Reply = { .status(200, body: "86400\n") },
    insert: @escaping @Sendable (_ index: Int) -> Reply = { _ in .ok }
) -> ScriptedTransport {
    let inserts = Atomic<Int>(0)
    return ScriptedTransport(authenticating: { request in
        let statement = request.statement ?? ""
        if statement == "SYSTEM FLUSH LOGS" { return .ok }
        if statement.contains("system.query_log") {
            let queryID = statement.split(separator: "'").dropFirst().first.map(String.init) ?? ""
            return log(queryID)
        }
        if statement.contains("system.processes") { return processes() }
        if statement.hasPrefix("SELECT uptime()") { return uptime() }
        return insert(inserts.add(1, ordering: .relaxed).oldValue)
    })
}

/// Changes the first byte of `text` in the fixture's spool segment to `replacement`: the record holding it no
/// longer verifies.
private func damage(_ fixture: EngineFixture, where text: String, with replacement: Character) throws {
    try damage(spool: try #require(fixture.spoolDirectory).path, where: text, with: replacement)
}

private func damage(spool: String, where text: String, with replacement: Character) throws {
    let directory = spool + "/spool"
    let segment = try #require(
        try FileManager.default.contentsOfDirectory(atPath: directory).first { $0.hasPrefix("segment-") })
    let url = URL(fileURLWithPath: directory + "/" + segment)
    var bytes = try [UInt8](Data(contentsOf: url))
    let needle = Array(text.utf8)
    let at = try #require(bytes.indices.first { Array(bytes[$0..<min($0 + needle.count, bytes.count)]) == needle })
    bytes[at] = replacement.asciiValue!
    try Data(bytes).write(to: url)
}

@Suite struct BacklogTests {
    /// Four rows of about 100 bytes, tagged `tag`: `('tag-0xxx...'),...`.
    static func paddedRows(_ tag: String) -> String {
        let padding = String(repeating: "x", count: 100)
        return (0..<4).map { "('\(tag)-\($0)\(padding)')" }.joined(separator: ",")
    }

    /// Sends the ten batches `insert` makes (4 rows each) through one worker and a spool, answered by `reply`. Returns
    /// the most bytes read back from the spool at once (seen at every request sent), the bytes of one batch, and the
    /// fixture, drained.
    static func peakReadBack(
        _ configuration: String, reply: @escaping @Sendable (String) -> Reply, insert: (EngineFixture) -> Void
    ) async throws -> (peak: Int, batchBytes: Int, fixture: EngineFixture) {
        let buffering = Mutex<Buffering?>(nil)
        let peak = Atomic<Int>(0)
        let transport = ScriptedTransport { _, body in
            if let sealed = buffering.withLock({ $0?.sealedBytes }) { peak.max(sealed, ordering: .relaxed) }
            return reply(body)
        }
        let fixture = try EngineFixture(configuration, transport: transport, spool: true, upstream: oneWorkerUpstream)
        buffering.withLock { $0 = fixture.engine.buffering }
        insert(fixture)
        #expect(fixture.engine.delivery.queuedBatches == 10)
        let batchBytes = fixture.engine.buffering.backlogBytes / 10
        await fixture.drain()
        return (peak.load(ordering: .relaxed), batchBytes, fixture)
    }

    @Test func aSealedBatchLeavesMemoryAndIsReadBackWhenItsTurnComes() async throws {
        let transport = ScriptedTransport()
        let fixture = try EngineFixture("defaults: { max_rows: 3 }", transport: transport, spool: true)
        fixture.insert("INSERT INTO db.t VALUES (1),(2)")
        fixture.insert("INSERT INTO db.t VALUES (3)")
        #expect(fixture.engine.delivery.queuedBatches == 1, "sealed at max_rows")
        #expect(fixture.engine.buffering.memoryInUse == 0, "its rows are in the spool only")
        #expect(fixture.engine.buffering.backlogBytes == "(1),(2),(3)".utf8.count)
        await fixture.drain()
        #expect(transport.inserts.map(\.body) == ["(1),(2),(3)"], "joined as they were sealed")
        #expect(transport.inserts.first?.parameter("query_id")?.hasPrefix("batchhouse-") == true)
        #expect(transport.inserts.first?.parameter("log_queries") == "1")
        #expect(fixture.engine.buffering.backlogBytes == 0)
        #expect(fixture.engine.buffering.memoryInUse == 0)
        #expect(fixture.spool?.undeliveredChunks == 0)
        #expect(fixture.spool?.sendingBatches == 0, "settled: nothing left in doubt")
    }

    @Test func anOutageIsBoundedByTheSpoolNotByMemory() async throws {
        let up = Atomic<Bool>(false)
        let transport = ScriptedTransport { _, _ in up.load(ordering: .relaxed) ? .ok : .failure(.connect) }
        let fixture = try EngineFixture(
            "limits: { max_buffer_memory: 64KiB }\ndefaults: { max_rows: 50 }", transport: transport, spool: true)
        // 4 MB of rows against a 64 KiB budget, with nothing delivered.
        var accepted = 0
        let padding = String(repeating: "x", count: 400)
        for id in 0..<10_000 {
            if case .answer(.accepted) = fixture.insert("INSERT INTO db.t VALUES (\(id),'\(padding)')") { accepted += 1 }
            #expect(fixture.engine.buffering.memoryInUse <= 64 << 10)
        }
        #expect(accepted == 10_000, "every insert accepted: the backlog waits on disk")
        #expect(fixture.engine.buffering.backlogBytes > 4_000_000)
        up.store(true, ordering: .relaxed)
        await fixture.drain()
        var landed: [Int] = []
        for insert in transport.inserts where !insert.body.isEmpty {
            for row in insert.body.split(separator: "),(") {
                landed.append(Int(row.drop { !$0.isNumber }.prefix { $0.isNumber })!)
            }
        }
        #expect(landed.sorted() == Array(0..<10_000), "each row landed once")
        #expect(fixture.spool?.undeliveredChunks == 0)
    }

    @Test func aLongBacklogDoesNotHoldBackANewHighPriorityBatch() async throws {
        let transport = ScriptedTransport()
        let fixture = try EngineFixture(
            """
            defaults: { max_rows: 1 }
            tables: { db.low: { priority: 5 }, db.high: { priority: 1 } }
            """, transport: transport, spool: true,
            upstream: oneWorkerUpstream)
        for id in 0..<50 { fixture.insert("INSERT INTO db.low VALUES (\(id))") }
        fixture.insert("INSERT INTO db.high VALUES (1000)")
        #expect(fixture.engine.delivery.queuedBatches == 51)
        await fixture.drain()
        #expect(transport.inserts.first?.statement?.contains("`high`") == true, "sent before the backlog: \(transport.inserts.prefix(3).map { $0.statement ?? "" })")
        #expect(transport.inserts.count == 51)
    }

    @Test func rowsWhoseRecordIsDamagedOnDiskAreCountedAndTheRestGoes() async throws {
        let transport = ScriptedTransport()
        let fixture = try EngineFixture("defaults: { max_rows: 3 }", transport: transport, spool: true)
        fixture.insert("INSERT INTO db.t VALUES (1)")
        fixture.insert("INSERT INTO db.t VALUES (22)")
        fixture.insert("INSERT INTO db.t VALUES (3)")
        try damage(fixture, where: "22", with: "9")
        await fixture.drain()
        #expect(transport.inserts.map(\.body) == ["(1),(3)"])
        let text = String(decoding: fixture.engine.prometheusText(), as: UTF8.self)
        #expect(text.contains("batchhouse_spool_corruptions_total 1"))
        #expect(fixture.spool?.undeliveredChunks == 0, "the lost chunk does not block its segment")
    }

    @Test func aClientWaitingForRowsWhoseRecordIsDamagedIsAnswered() async throws {
        let transport = ScriptedTransport()
        let fixture = try EngineFixture("defaults: { max_rows: 2, ack: flushed }", transport: transport, spool: true)
        let answers = Answers()
        fixture.insert("INSERT INTO db.t VALUES (1)", answers: answers)
        fixture.insert("INSERT INTO db.t VALUES (77)", answers: answers)
        try damage(fixture, where: "77", with: "8")
        await fixture.drain()
        let received = await answers.wait(for: 2)
        #expect(received.count == 2, "both clients are answered")
        #expect(received.filter { $0.refusal == nil }.count == 1, "the intact row's client gets its 200")
        #expect(transport.inserts.map(\.body) == ["(1)"])
    }

    /// A batch with a damaged record, sent between the halves of another table's split, whose attempt must be
    /// retried: it is retried in place, not put back, so the client of the damaged row is answered too (a put-back
    /// batch used to drop that part, and its client waited for ever).
    @Test func aHelpedBatchWithADamagedRecordIsSettledWholeWhenItMustBeRetried() async throws {
        let answer = refusingOops(overloadingOnce: "(1)")
        let transport = ScriptedTransport { _, body in answer(body) }
        let fixture = try EngineFixture(
            "defaults: { max_rows: 2, ack: flushed }", transport: transport, spool: true,
            upstream: oneWorkerUpstream)
        let answers = Answers()
        fixture.insert("INSERT INTO db.a VALUES ('oops1'),('oops2')")
        fixture.insert("INSERT INTO db.t VALUES (1)", answers: answers)
        fixture.insert("INSERT INTO db.t VALUES (77)", answers: answers)
        try damage(fixture, where: "77", with: "8")
        await fixture.drain()
        let received = await answers.wait(for: 2, timeout: .seconds(5))
        #expect(received.count == 2, "both clients are answered")
        #expect(received.filter { $0.refusal == nil }.count == 1, "the intact row's client gets its 200")
        #expect(transport.inserts.map(\.body).filter { $0 == "(1)" }.count == 2, "refused once, then landed")
        #expect(fixture.spool?.undeliveredChunks == 0)
    }

    /// A backlog of bad batches on disk is not pulled into memory by the helps of a split: a batch a helper read
    /// back and found refused whole goes back unread, its rows in the spool only. In memory at any insert: the
    /// worker's own batch and the one it is helping with.
    @Test func helpsDoNotPullABacklogOfBadBatchesIntoMemory() async throws {
        let (peak, batchBytes, fixture) = try await Self.peakReadBack(
            "defaults: { max_rows: 4 }", reply: refusingOops()
        ) { fixture in
            for batch in 0..<10 { fixture.insert("INSERT INTO db.a VALUES " + Self.paddedRows("oops\(batch)")) }
        }
        #expect(peak <= 2 * batchBytes, "at most two batches read back at a time")
        #expect(fixture.engine.buffering.memoryInUse == 0)
        #expect(fixture.engine.buffering.backlogBytes == 0)
        #expect(fixture.spool?.undeliveredChunks == 0)
        #expect(fixture.deadLetterFiles.filter { $0.hasSuffix(".data") }.count == 40)
    }

    /// The same bound when the batches helpers send must be retried (ClickHouse overloaded once for each): each goes
    /// back to the queue unread, not with its rows in memory.
    @Test func helpsThatMustBeRetriedDoNotPullABacklogIntoMemory() async throws {
        let sentBefore = Mutex<Set<String>>([])
        let (peak, batchBytes, fixture) = try await Self.peakReadBack(
            "defaults: { max_rows: 4, retry_backoff: 1ms }",
            reply: { body in
                if let refusal = oopsRefusal(body) { return refusal }
                // Each of t's batches: overloaded the first time it is sent.
                if sentBefore.withLock({ $0.insert(body).inserted }) {
                    return .error(status: 500, code: 252, message: "Too many parts")
                }
                return .ok
            }
        ) { fixture in
            for batch in 0..<5 {
                fixture.insert("INSERT INTO db.a VALUES " + Self.paddedRows("oops\(batch)"))
                fixture.insert("INSERT INTO db.t VALUES " + Self.paddedRows("ok\(batch)"))
            }
        }
        #expect(peak <= 2 * batchBytes, "at most two batches read back at a time")
        #expect(fixture.engine.buffering.memoryInUse == 0)
        #expect(fixture.spool?.undeliveredChunks == 0)
        let landed = fixture.transport.inserts.filter { $0.statement?.contains("`t`") == true }.map(\.body)
        #expect(Set(landed).count == 5, "each of t's batches sent until it landed")
        #expect(fixture.deadLetterFiles.filter { $0.hasSuffix(".data") }.count == 20)
    }

    /// A parked batch (a helper found it refused whole) that loses a record when its own worker reads it again: the
    /// refusal was of the whole, so what is left is sent again, not dead-lettered unsent.
    @Test func aParkedBatchThatLosesARecordSendsWhatIsLeftAgain() async throws {
        let spoolPath = Mutex<String?>(nil)
        let damaged = Atomic<Bool>(false)
        let transport = ScriptedTransport { _, body in
            // a2 sent whole by the helper: its bad row's record is damaged before its own worker reads it again.
            if body.contains("oops3") && body.contains("good") && !damaged.exchange(true, ordering: .relaxed),
                let path = spoolPath.withLock({ $0 })
            {
                try? damage(spool: path, where: "oops3", with: "X")
            }
            return oopsRefusal(body) ?? .ok
        }
        let fixture = try EngineFixture(
            "defaults: { max_rows: 2 }", transport: transport, spool: true,
            upstream: oneWorkerUpstream)
        spoolPath.withLock { $0 = fixture.spoolDirectory?.path }
        fixture.insert("INSERT INTO db.a VALUES ('oops1'),('oops2')")
        fixture.insert("INSERT INTO db.a VALUES ('oops3')")
        fixture.insert("INSERT INTO db.a VALUES ('good')")
        await fixture.drain()
        let wasDamaged = damaged.load(ordering: .relaxed)
        #expect(wasDamaged)
        #expect(fixture.transport.inserts.map(\.body).last == "('good')", "\(fixture.transport.inserts.map(\.body))")
        #expect(fixture.deadLetterFiles.filter { $0.hasSuffix(".data") }.count == 2, "a1's two rows only")
        let text = String(decoding: fixture.engine.prometheusText(), as: UTF8.self)
        #expect(text.contains("batchhouse_spool_corruptions_total 1"))
        #expect(fixture.spool?.undeliveredChunks == 0)
    }

    @Test func anAttemptWhoseOutcomeCouldNotBeToldStaysInDoubtWhenItIsDeferred() async throws {
        let directory = TemporaryDirectory()
        do {
            // A timeout, no readable query log, then no connection until shutdown.
            let transport = upstream(
                log: { _ in .error(status: 404, code: 60, message: "Table system.query_log doesn't exist") },
                insert: { index in index == 0 ? .failure(.timeout) : .failure(.connect) })
            let fixture = try EngineFixture("defaults: { retries: 1 }", transport: transport, spoolDirectory: directory)
            fixture.insert("INSERT INTO db.t VALUES (1)")
            await fixture.drain()
            #expect(transport.inserts.count >= 2)
            fixture.spool?.close()
        }
        let (spool, recovery) = try Spool.open(directory: directory.path + "/spool", maxSize: 1 << 30)
        defer { spool.close() }
        #expect(recovery.inDoubt.count == 1, "the timed-out attempt may have landed: the next start must ask")
    }

    @Test func anAttemptWithoutAnAnswerIsNotSentAgainWhenItsQueryFinished() async throws {
        let transport = upstream(log: { _ in .status(200, body: "QueryStart\nQueryFinish\n") }, insert: { index in
            index == 0 ? .failure(.timeout) : .ok
        })
        let fixture = try EngineFixture(transport: transport, spool: true)
        fixture.insert("INSERT INTO db.t VALUES (1)")
        await fixture.drain()
        #expect(transport.inserts.count == 1, "sent once: the timed-out attempt had landed")
        let asked = transport.requests.filter { $0.statement?.contains("system.query_log") == true }
        let queryID = try #require(transport.inserts.first?.parameter("query_id"))
        #expect(asked.count == 1)
        #expect(asked.first?.statement?.contains("'\(queryID)'") == true)
        #expect(fixture.spool?.undeliveredChunks == 0)
    }

    /// An attempt without an answer whose query the log does not know is sent again under the same id. From a server
    /// up since the attempt that silence is an answer. From one that restarted since (ClickHouse SIGKILLed between
    /// committing the batch and logging it) it proves nothing, and the batch counts as sent again at least once.
    @Test(arguments: [("86400", false), ("0", true)])
    func anAttemptWithoutAnAnswerIsSentAgainUnderTheSameIDWhenItsQueryDidNotFinish(uptime: String, restarted: Bool)
        async throws
    {
        let transport = upstream(log: { _ in .status(200, body: "") }, uptime: { .status(200, body: uptime + "\n") }) {
            index in index == 0 ? .failure(.transport) : .ok
        }
        let fixture = try EngineFixture(transport: transport, spool: true)
        fixture.insert("INSERT INTO db.t VALUES (1)")
        await fixture.drain()
        #expect(transport.inserts.count == 2)
        #expect(Set(transport.inserts.map { $0.parameter("query_id") }).count == 1, "the same query id")
        #expect(transport.requests.contains { $0.statement?.contains("system.processes") == true })
        #expect(transport.requests.contains { $0.statement?.hasPrefix("SELECT uptime()") == true })
        let text = String(decoding: fixture.engine.prometheusText(), as: UTF8.self)
        let unknown = "batchhouse_unanswered_attempts_settled_total{outcome=\"unknown\"} 1"
        #expect(text.contains(unknown) == restarted, "\(text)")
        #expect(fixture.spool?.undeliveredChunks == 0)
    }

    /// Refused connections say the rows did not land, so a server restart during them is no reason to doubt: only a
    /// restart after the first attempt without an answer is.
    @Test func aRestartBeforeTheFirstAttemptWithoutAnAnswerLeavesTheLogsSilenceAnAnswer() async throws {
        // Refused at 0 s and 0.5 s, a timeout at 1.5 s, asked at 3.5 s (backoffs 0.5, 1 and 2 s): up for 4 s, so it
        // started after the first refusal but before the timeout.
        let transport = upstream(log: { _ in .status(200, body: "") }, uptime: { .status(200, body: "4\n") }) {
            index in index < 2 ? .failure(.connect) : index == 2 ? .failure(.timeout) : .ok
        }
        let fixture = try EngineFixture("defaults: { retry_backoff: 1s }", transport: transport, spool: true)
        fixture.insert("INSERT INTO db.t VALUES (1)")
        await fixture.drain()
        #expect(transport.inserts.count == 4)
        #expect(fixture.clock.sleeps.map(DeliveryTests.ms) == [500, 1000, 2000])
        let text = String(decoding: fixture.engine.prometheusText(), as: UTF8.self)
        #expect(!text.contains("batchhouse_unanswered_attempts_settled_total{outcome=\"unknown\"}"), "\(text)")
    }

    /// ClickHouse stopped with SIGTERM: it commits the insert in flight, hangs up unanswered, and is down for a
    /// while. Not being able to ask is not "cannot be told": the batch waits for an answer instead of going again.
    @Test func anAttemptWithoutAnAnswerWaitsWhileNoServerCanBeAsked() async throws {
        let asked = Atomic<Int>(0)
        let transport = upstream(
            log: { _ in .status(200, body: "QueryStart\nQueryFinish\n") },
            processes: { asked.add(1, ordering: .relaxed).oldValue < 3 ? .failure(.connect) : .status(200, body: "0\n") },
            insert: { index in index == 0 ? .failure(.transport) : .ok })
        let fixture = try EngineFixture("defaults: { max_rows: 1 }", transport: transport, spool: true)
        // Running, not shutting down (at shutdown a batch whose question finds no server is left in doubt).
        let workers = Task { await fixture.engine.delivery.run() }
        fixture.insert("INSERT INTO db.t VALUES (1)")
        let deadline = ContinuousClock.now + .seconds(30)
        while fixture.spool?.undeliveredChunks != 0 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(2))
        }
        fixture.engine.delivery.close()
        await workers.value
        #expect(transport.inserts.count == 1, "sent once: it had landed")
        #expect(asked.load(ordering: .relaxed) >= 4, "asked until the server answered")
        #expect(fixture.spool?.undeliveredChunks == 0)
    }

    /// A first process sends a batch whose attempt gets no answer, then stops: the batch is in doubt.
    private func crashedWithABatchInDoubt(_ directory: TemporaryDirectory) async throws -> String {
        let down = ScriptedTransport { _, _ in .failure(.timeout) }
        let fixture = try EngineFixture(transport: down, spoolDirectory: directory)
        fixture.insert("INSERT INTO db.t VALUES (1),(2)")
        await fixture.drain()
        let queryID = try #require(down.inserts.first?.parameter("query_id"))
        #expect(fixture.spool?.isSending(queryID: queryID) == true)
        fixture.spool?.close()
        return queryID
    }

    @Test func aBatchInDoubtThatLandedBeforeTheCrashIsMarkedDeliveredAndNotSentAgain() async throws {
        let directory = TemporaryDirectory()
        let queryID = try await crashedWithABatchInDoubt(directory)
        let transport = upstream(log: { id in .status(200, body: id == queryID ? "QueryFinish\n" : "") })
        let restarted = try EngineFixture(transport: transport, spoolDirectory: directory)
        #expect(restarted.engine.delivery.queuedBatches == 0, "held back until settled")
        await restarted.engine.settleInDoubt()
        await restarted.drain()
        #expect(transport.inserts.isEmpty, "not sent again")
        #expect(restarted.spool?.undeliveredChunks == 0)
        let text = String(decoding: restarted.engine.prometheusText(), as: UTF8.self)
        #expect(text.contains("batchhouse_in_doubt_batches_total{outcome=\"landed\"} 1"))
        restarted.spool?.close()
        let report = SpoolInspector.report(directory: directory.path + "/spool")
        #expect(report.contains("\(queryID) (batch 1): 1 chunk, 0 undelivered: settled: landed before the crash"), "\(report)")
    }

    @Test func aBatchInDoubtThatDidNotLandIsSentAgainExactlyAsItWas() async throws {
        let directory = TemporaryDirectory()
        let queryID = try await crashedWithABatchInDoubt(directory)
        let transport = upstream(log: { _ in .status(200, body: "") })
        let restarted = try EngineFixture(transport: transport, spoolDirectory: directory)
        await restarted.engine.settleInDoubt()
        await restarted.drain()
        #expect(transport.inserts.map(\.body) == ["(1),(2)"])
        #expect(transport.inserts.first?.parameter("query_id") == queryID, "same id, so the same deduplication token")
        #expect(restarted.spool?.undeliveredChunks == 0)
        restarted.spool?.close()
        let third = try EngineFixture(transport: ScriptedTransport(), spoolDirectory: directory)
        #expect(third.engine.delivery.queuedBatches == 0)
        await third.engine.settleInDoubt()
        #expect(third.transport.requests.isEmpty, "nothing left in doubt")
        third.spool?.close()
    }

    @Test func withoutAReadableQueryLogABatchInDoubtIsSentAgainAtLeastOnce() async throws {
        let directory = TemporaryDirectory()
        _ = try await crashedWithABatchInDoubt(directory)
        let transport = upstream(log: { _ in .error(status: 404, code: 60, message: "Table system.query_log doesn't exist") })
        let restarted = try EngineFixture(transport: transport, spoolDirectory: directory)
        await restarted.engine.settleInDoubt()
        await restarted.drain()
        #expect(transport.inserts.map(\.body) == ["(1),(2)"])
        let text = String(decoding: restarted.engine.prometheusText(), as: UTF8.self)
        #expect(text.contains("batchhouse_in_doubt_batches_total{outcome=\"at_least_once\"} 1"))
        restarted.spool?.close()
    }

    @Test func aBatchInDoubtOnAClickHouseThatRestartedSinceIsSentAgainAtLeastOnce() async throws {
        let directory = TemporaryDirectory()
        _ = try await crashedWithABatchInDoubt(directory)
        let transport = upstream(log: { _ in .status(200, body: "") }, uptime: { .status(200, body: "0\n") })
        let restarted = try EngineFixture(transport: transport, spoolDirectory: directory)
        await restarted.engine.settleInDoubt()
        await restarted.drain()
        #expect(transport.inserts.map(\.body) == ["(1),(2)"])
        let text = String(decoding: restarted.engine.prometheusText(), as: UTF8.self)
        #expect(text.contains("batchhouse_in_doubt_batches_total{outcome=\"at_least_once\"} 1"), "\(text)")
        restarted.spool?.close()
    }

    @Test func aBatchThatNeverReachedClickHouseIsNotInDoubt() async throws {
        let directory = TemporaryDirectory()
        do {
            let fixture = try EngineFixture(transport: ScriptedTransport { _, _ in .failure(.connect) }, spoolDirectory: directory)
            fixture.insert("INSERT INTO db.t VALUES (1)")
            await fixture.drain()
            fixture.spool?.close()
        }
        let (spool, recovery) = try Spool.open(directory: directory.path + "/spool", maxSize: 1 << 30)
        defer { spool.close() }
        #expect(recovery.chunks.count == 1)
        #expect(recovery.inDoubt.isEmpty, "every attempt was refused a connection: replayed without asking")
    }
}
