import BatchhouseCore
import BatchhouseEngine
import BatchhouseSpool
import BatchhouseUpstream
import Foundation
import NIOCore
import Testing

/// What happens once a batch has an outcome: spool marks, acks per request, dead letters, metrics, the memory
/// budget, and shutdown with batches that could not be delivered.
@Suite struct SettlementTests {
    /// Refuses (500, Code 27 as ClickHouse 18.16 does) any body holding the row `('oops')`.
    static func refusesOops() -> ScriptedTransport {
        ScriptedTransport { _, body in
            body.contains("'oops'") ? .error(status: 500, code: 27, message: "Cannot parse input") : .ok
        }
    }

    @Test func aBadRowIsIsolatedAndOnlyItsRequestGetsClickHousesRefusal() async throws {
        let fixture = try EngineFixture("defaults: { ack: flushed }", transport: Self.refusesOops())
        let answers = [Answers(), Answers(), Answers()]
        fixture.insert("INSERT INTO t VALUES (1),(2)", answers: answers[0])
        fixture.insert("INSERT INTO t VALUES ('oops')", answers: answers[1])
        fixture.insert("INSERT INTO t VALUES (4),(5),(6)", answers: answers[2])
        await fixture.drain()
        #expect(await answers[0].wait(for: 1).first?.acceptedAck == .flushed)
        #expect(await answers[1].wait(for: 1).first?.relayedStatus == 500)
        #expect(await answers[2].wait(for: 1).first?.acceptedAck == .flushed)
        let landed = fixture.transport.inserts.filter { !$0.body.contains("oops") }.map(\.body)
        let rows = landed.flatMap { $0.split(separator: ",") }.map(String.init).sorted()
        #expect(rows == ["(1)", "(2)", "(4)", "(5)", "(6)"], "every good row landed exactly once")
        let data = fixture.deadLetterFiles.filter { $0.hasSuffix(".data") }
        #expect(data.count == 1)
        let content = try String(contentsOfFile: fixture.deadLetters.path + "/" + data[0], encoding: .utf8)
        #expect(content == "('oops')")
    }

    @Test func deadLetterRecordsHoldTheStatementAndErrorButNoCredential() async throws {
        let transport = ScriptedTransport { _, _ in .error(status: 404, code: 60, message: "Table db.nope doesn't exist") }
        let fixture = try EngineFixture(transport: transport)
        fixture.insert("INSERT INTO db.nope VALUES (7)", identity: ClientIdentity(user: "alice", password: "hunter2"))
        await fixture.drain()
        let json = try #require(fixture.deadLetterFiles.first { $0.hasSuffix(".json") })
        let text = try String(contentsOfFile: fixture.deadLetters.path + "/" + json, encoding: .utf8)
        #expect(text.contains("INSERT INTO `db`.`nope` FORMAT Values"))
        #expect(text.contains("Code: 60"))
        #expect(text.contains("alice#"))
        #expect(!text.contains("hunter2"))
        #expect(fixture.transport.inserts.count == 1, "a 404 is not retried")
    }

    @Test func landedAndDeadLetteredRowsLeaveTheSpool() async throws {
        let fixture = try EngineFixture(transport: Self.refusesOops(), spool: true)
        let spool = try #require(fixture.spool)
        fixture.insert("INSERT INTO t VALUES (1)")
        fixture.insert("INSERT INTO t VALUES ('oops')")
        fixture.insert("INSERT INTO t VALUES (3)")
        #expect(spool.undeliveredChunks == 3)
        await fixture.drain()
        #expect(spool.undeliveredChunks == 0, "landed rows and the dead-lettered one are settled")
        #expect(fixture.deadLetterFiles.count == 2)
    }

    @Test func metricsCountWhatLandedAndTheQueueEmpties() async throws {
        let fixture = try EngineFixture()
        for id in 0..<7 { fixture.insert("INSERT INTO db.m VALUES (\(id))") }
        await fixture.drain()
        let text = String(decoding: fixture.engine.prometheusText(), as: UTF8.self)
        #expect(text.contains("batchhouse_received_rows_total{table=\"db.m\"} 7"))
        #expect(text.contains("batchhouse_flushed_rows_total{table=\"db.m\"} 7"))
        #expect(text.contains("batchhouse_flushed_batches_total{table=\"db.m\"} 1"))
        #expect(text.contains("batchhouse_flush_queue_bytes 0"))
        let status = fixture.engine.status()
        #expect(status.totals.batches == 1)
        #expect(status.totals.rowsFlushed == 7)
        #expect(status.totals.lastFlushUnixSeconds != nil)
        #expect(status.memoryInUse == 0)
    }

    @Test func retriesAreCountedAndTheAdaptiveStrategyHearsOfOverload() async throws {
        let transport = ScriptedTransport(replies: [.error(status: 500, code: 252, message: "Too many parts")])
        let fixture = try EngineFixture("defaults: { strategy: adaptive }", transport: transport)
        fixture.insert("INSERT INTO db.a VALUES (1)")
        let before = try #require(fixture.engine.buffering.adaptiveTargets()["db.a"])
        await fixture.drain()
        let after = try #require(fixture.engine.buffering.adaptiveTargets()["db.a"])
        #expect(after.maxDelay > before.maxDelay, "TOO_MANY_PARTS makes batches wait longer")
        let text = String(decoding: fixture.engine.prometheusText(), as: UTF8.self)
        #expect(text.contains("batchhouse_upstream_retries_total 1"))
        #expect(fixture.transport.inserts.map(\.body) == ["(1)", "(1)"])
    }

    @Test func shutdownLeavesUndeliveredRowsInTheSpoolAndTheNextStartSendsThemOnce() async throws {
        let directory = TemporaryDirectory()
        do {
            let down = ScriptedTransport { _, _ in .failure(.connect) }
            let fixture = try EngineFixture(
                "defaults: { ack: flushed, retries: 2 }", transport: down, spoolDirectory: directory)
            let answers = Answers()
            fixture.insert("INSERT INTO db.s VALUES (1),(2)", answers: answers)
            fixture.insert("INSERT INTO db.s VALUES (3)", answers: answers)
            await fixture.drain()
            let received = await answers.wait(for: 2)
            #expect(received.map(\.refusal?.code) == [243, 243], "told the rows wait in the spool")
            #expect(fixture.spool?.undeliveredChunks == 2)
            #expect(fixture.deadLetterFiles.isEmpty, "nothing is dead-lettered while a spool holds it")
            fixture.spool?.close()
        }
        let up = ScriptedTransport()
        let restarted = try EngineFixture(transport: up, spoolDirectory: directory)
        #expect(restarted.engine.delivery.queuedBatches == 1, "replayed as one batch")
        #expect(restarted.engine.buffering.backlogBytes > 0, "whose rows stay in the spool until sent")
        #expect(restarted.engine.buffering.memoryInUse == 0)
        await restarted.drain()
        #expect(up.inserts.map(\.body) == ["(1),(2),(3)"])
        #expect(restarted.spool?.undeliveredChunks == 0)
        restarted.spool?.close()
        let third = try EngineFixture(transport: ScriptedTransport(), spoolDirectory: directory)
        #expect(third.engine.delivery.queuedBatches == 0, "delivered rows are not replayed again")
        third.spool?.close()
    }

    @Test func withoutASpoolUndeliverableRowsGoToTheDeadLetterFolder() async throws {
        let fixture = try EngineFixture(
            "defaults: { retries: 2 }", transport: ScriptedTransport { _, _ in .failure(.timeout) })
        fixture.insert("INSERT INTO db.x VALUES (1),(2)")
        await fixture.drain()
        #expect(fixture.transport.inserts.count == 3)
        #expect(fixture.clock.sleeps == [.milliseconds(100), .milliseconds(200)], "200 ms base, doubled, lower half")
        let data = try #require(fixture.deadLetterFiles.first { $0.hasSuffix(".data") })
        #expect(try String(contentsOfFile: fixture.deadLetters.path + "/" + data, encoding: .utf8) == "(1),(2)")
        let text = String(decoding: fixture.engine.prometheusText(), as: UTF8.self)
        #expect(text.contains("batchhouse_dead_lettered_rows_total{table=\"db.x\"} 2"))
        #expect(text.contains("batchhouse_flush_failures_total{table=\"db.x\"} 1"))
    }
}

@Suite struct DeadLetterFailureTests {
    /// A refused row whose dead letter cannot be written (the folder is a file here; a full disk in life) is not
    /// marked delivered: it stays in the spool and is tried again after the next start, instead of vanishing.
    @Test func rowsWhoseDeadLetterCannotBeWrittenStayInTheSpool() async throws {
        let transport = ScriptedTransport { _, body in
            body.contains("'bad'") ? .error(status: 500, code: 27, message: "Cannot parse input") : .ok
        }
        let fixture = try EngineFixture("defaults: { strategy: size, max_rows: 100 }", transport: transport, spool: true)
        try FileManager.default.removeItem(atPath: fixture.deadLetters.path)
        try "not a folder".write(toFile: fixture.deadLetters.path, atomically: true, encoding: .utf8)
        #expect(fixture.insert("INSERT INTO db.t VALUES (1)").acceptedRows == 1)
        #expect(fixture.insert("INSERT INTO db.t VALUES ('bad')").acceptedRows == 1)
        #expect(fixture.spool?.undeliveredChunks == 2)
        await fixture.flushAll()

        #expect(fixture.transport.inserts.contains { $0.body == "(1)" }, "the good row landed alone")
        #expect(fixture.spool?.undeliveredChunks == 1, "the refused row's chunk stays in the spool")
    }
}
