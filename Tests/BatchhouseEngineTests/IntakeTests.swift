import Logging
import BatchhouseCore
import BatchhouseEngine
import BatchhouseSpool
import BatchhouseUpstream
import Foundation
import NIOCore
import Testing

/// The intake's decisions, from the request to the batch, against a scripted upstream: no ClickHouse, no sockets.
@Suite struct IntakeTests {
    @Test func valuesRowsAreCountedBufferedAndAcknowledgedAsEnqueued() async throws {
        let fixture = try EngineFixture()
        let decision = fixture.insert("INSERT INTO db.t VALUES (1, 'a'), (2, 'b')")
        #expect(decision.acceptedRows == 2)
        #expect(decision.ack == .enqueued)
        #expect(fixture.engine.buffering.bufferedByTable()["db.t"]?.rows == 2)
        await fixture.drain()
        let sent = fixture.transport.inserts
        #expect(sent.count == 1)
        #expect(sent.first?.statement == "INSERT INTO `db`.`t` FORMAT Values")
        #expect(sent.first?.body == "(1, 'a'), (2, 'b')")
    }

    @Test func theStatementMaySplitAnywhereBetweenQueryAndBody() async throws {
        let fixture = try EngineFixture()
        #expect(fixture.insert("1\tx\n2\ty\n", query: "INSERT INTO db.tsv FORMAT TSV").acceptedRows == 2)
        #expect(fixture.insert("into db.tsv format TSV\n3\tz\n", query: "insert").acceptedRows == 1)
        await fixture.drain()
        let sent = fixture.transport.inserts
        #expect(sent.count == 1, "same key, one batch")
        #expect(sent.first?.body == "1\tx\n2\ty\n3\tz\n")
    }

    @Test func rowsOfManyRequestsJoinOneBatchPerKey() async throws {
        let fixture = try EngineFixture()
        for id in 0..<50 { fixture.insert("INSERT INTO db.a VALUES (\(id))") }
        for id in 0..<20 { fixture.insert("INSERT INTO db.b FORMAT JSONEachRow {\"id\":\(id)}") }
        await fixture.drain()
        let bodies = Dictionary(
            fixture.transport.inserts.map { ($0.statement ?? "", $0.body) }, uniquingKeysWith: { $0 + "|" + $1 })
        #expect(bodies.count == 2)
        #expect(bodies["INSERT INTO `db`.`a` FORMAT Values"] == (0..<50).map { "(\($0))" }.joined(separator: ","))
        #expect(
            bodies["INSERT INTO `db`.`b` FORMAT JSONEachRow"]
                == (0..<20).map { "{\"id\":\($0)}\n" }.joined())
    }

    @Test func malformedRowsAreRefusedWithClickHousesShapeAndNothingIsBuffered() throws {
        let fixture = try EngineFixture()
        let refusal = fixture.insert("INSERT INTO db.t VALUES (1, 'unterminated)").refusal
        #expect(refusal?.code == 62)
        #expect(refusal?.status == 400)
        #expect(refusal?.body.hasPrefix("Code: 62. DB::Exception: ") == true)
        #expect(fixture.engine.buffering.bufferedRows == 0)
        #expect(fixture.engine.buffering.memoryInUse == 0)
    }

    @Test func gzipAndDeflateBodiesAreDecodedFirst() async throws {
        let fixture = try EngineFixture()
        #expect(fixture.insert("INSERT INTO db.z FORMAT CSV\n1,\"a\"\n2,\"b\"\n", coding: .gzip).acceptedRows == 2)
        #expect(fixture.insert("INSERT INTO db.z FORMAT CSV\n3,\"c\"\n", coding: .deflate).acceptedRows == 1)
        await fixture.drain()
        #expect(fixture.transport.inserts.map(\.body) == ["1,\"a\"\n2,\"b\"\n3,\"c\"\n"])
    }

    @Test func aCorruptCompressedBodyIsRefusedAsCannotDecompress() throws {
        let fixture = try EngineFixture()
        let request = InsertRequest(
            parameters: RequestParameters(query: nil, database: nil, identity: .anonymous, settings: [], decompress: false),
            body: ByteBuffer(bytes: [0x1f, 0x8b, 0x08, 0x00, 0xde, 0xad, 0xbe, 0xef]), coding: .gzip, statement: nil)
        let decision = fixture.engine.intake.accept(request) { { _ in } }
        #expect(decision.refusal?.code == 354)
        #expect(fixture.engine.buffering.bufferedRows == 0)
    }

    @Test func whatIsNotABatchableInsertPassesThrough() throws {
        let fixture = try EngineFixture()
        #expect(fixture.insert("SELECT 1").isPassthrough)
        #expect(fixture.insert("INSERT INTO db.t SELECT * FROM db.u").isPassthrough)
        #expect(fixture.insert("INSERT INTO db.t FORMAT Parquet\nPAR1").isPassthrough)
        #expect(fixture.engine.buffering.bufferedRows == 0)
    }

    /// A RowBinary or Native chunk cut short would swallow the next client's rows if joined byte for byte: rows are
    /// read with their column types first. Native carries them; RowBinary's are asked of the upstream.
    @Test func rowBinaryAndNativeAreNotJoinedUnchecked() async throws {
        // The refusal's status follows the upstream's version (18.16: 500), so it is known first; before that,
        // ClickHouse answers a malformed binary body itself.
        let transport = ScriptedTransport(routing: { _, url, _ in
            url.contains("version") ? .status(200, body: "18.16.1\n") : .ok
        })
        let fixture = try EngineFixture(transport: transport)
        var block: [UInt8] = [1, 1, 2]
        block += Array("id".utf8) + [6] + Array("UInt64".utf8) + [7, 0, 0]
        #expect(
            fixture.insert("INSERT INTO db.t FORMAT Native\n" + String(decoding: block, as: UTF8.self)).isPassthrough,
            "version not known yet")
        await fixture.engine.gateway.probeVersion(logger: Logger(label: "test"))
        // A block of one UInt64 column `id` that announces one row and ends before its value.
        let truncated = fixture.insert(
            "INSERT INTO db.t FORMAT Native\n" + String(decoding: block, as: UTF8.self))
        guard case .answer(.refused(let error, _)) = truncated else {
            Issue.record("expected a refusal, got \(truncated)")
            return
        }
        #expect(error.code == 33 && error.name == "CANNOT_READ_ALL_DATA")
        #expect(error.status == 500, "as 18.16 answers it")
        // RowBinary waits for the table's description (the scripted upstream is asked `DESCRIBE TABLE`).
        guard case .awaitDescription = fixture.insert("INSERT INTO db.t FORMAT RowBinary\n\u{02}\0\0\0") else {
            Issue.record("RowBinary should wait for the table's columns")
            return
        }
        #expect(fixture.engine.buffering.bufferedRows == 0)
    }

    /// 18.16 has no SETTINGS clause on INSERT: batched, the clause would vanish into URL settings and the rows land
    /// where ClickHouse itself refuses them. Until the version is known to take it, ClickHouse answers.
    @Test func insertSettingsAreBatchedOnlyWhereTheUpstreamTakesThem() async throws {
        let statement = "INSERT INTO db.t SETTINGS max_insert_block_size = 1000 VALUES (1)"
        for (version, batched) in [(nil, false), ("18.16.1", false), ("23.8.2.7", true)] as [(String?, Bool)] {
            let transport = ScriptedTransport(routing: { _, url, _ in
                url.contains("version") ? .status(200, body: (version ?? "") + "\n") : .ok
            })
            let fixture = try EngineFixture(transport: transport)
            if version != nil { await fixture.engine.gateway.probeVersion(logger: Logger(label: "test")) }
            let decision = fixture.insert(statement)
            #expect(decision.isPassthrough == !batched, "\(version ?? "unknown version")")
            #expect(decision.acceptedRows == (batched ? 1 : nil))
        }
    }

    @Test func aTableWhoseRuleSaysPassthroughIsNotBatched() throws {
        let fixture = try EngineFixture("tables: { legacy: { passthrough: true } }")
        #expect(fixture.insert("INSERT INTO legacy VALUES (1)").isPassthrough)
        #expect(fixture.insert("INSERT INTO other VALUES (1)").acceptedRows == 1)
    }

    @Test func fullBuffersRefuseWith503AndRetryAfter() throws {
        let fixture = try EngineFixture("limits: { max_buffer_memory: 64 }")
        let refusal = fixture.insert("INSERT INTO t VALUES ('" + String(repeating: "x", count: 100) + "')").refusal
        #expect(refusal?.code == 241)
        #expect(refusal?.status == 503)
        #expect(refusal?.retryAfterSeconds == 1)
        #expect(fixture.engine.buffering.memoryInUse == 0)
    }

    @Test func admissionComesBeforeTheSpoolWrite() throws {
        let fixture = try EngineFixture("limits: { max_buffer_memory: 64 }", spool: true)
        let spool = try #require(fixture.spool)
        let before = spool.sizeBytes
        #expect(fixture.insert("INSERT INTO t VALUES ('" + String(repeating: "x", count: 100) + "')").refusal?.code == 241)
        #expect(spool.undeliveredChunks == 0)
        #expect(spool.sizeBytes == before, "a refused request leaves no spool record")
        #expect(fixture.insert("INSERT INTO t VALUES (1)").acceptedRows == 1)
        #expect(spool.undeliveredChunks == 1)
    }

    @Test func aFullSpoolRefusesWith503AndFreesTheReservation() throws {
        let fixture = try EngineFixture(spool: true, spoolMaxSize: "200")
        let refusal = fixture.insert("INSERT INTO t VALUES ('" + String(repeating: "y", count: 300) + "')").refusal
        #expect(refusal?.code == 243)
        #expect(refusal?.status == 503)
        #expect(fixture.engine.buffering.memoryInUse == 0, "the reservation was given back")
        #expect(fixture.engine.buffering.bufferedRows == 0)
        // Counted by reason once per refusal, however often /metrics is scraped.
        for _ in 0..<2 {
            let text = String(decoding: fixture.engine.prometheusText(), as: UTF8.self)
            #expect(text.contains("batchhouse_spool_write_failures_total{reason=\"max_size\"} 1\n"), "\(text)")
            #expect(text.contains("batchhouse_spool_live_bytes 0.0\n"))
        }
    }

    @Test func aFullSpoolDiskIsNotEnoughSpaceNotAnInternalError() {
        let noSpace = ClickHouseError.spoolRefused(
            SpoolError(code: .noSpace, message: "cannot append to /s/segment-1.wal: No space left on device (errno 28)"))
        #expect(noSpace.status == 503)
        #expect(noSpace.code == 243)
        #expect(noSpace.name == "NOT_ENOUGH_SPACE")
        #expect(noSpace.retryAfterSeconds == 1)
        #expect(noSpace.body.hasPrefix("Code: 243. DB::Exception: Batchhouse: no space left on the spool's disk"))
        let io = ClickHouseError.spoolRefused(SpoolError(code: .io, message: "Input/output error"))
        #expect(io.status == 500)
        #expect(io.code == 1001)
    }

    @Test func spooledRowsLeaveTheSpoolOnceTheyLanded() async throws {
        let fixture = try EngineFixture(spool: true)
        let spool = try #require(fixture.spool)
        for id in 0..<5 { fixture.insert("INSERT INTO t VALUES (\(id))") }
        #expect(spool.undeliveredChunks == 5)
        await fixture.drain()
        #expect(spool.undeliveredChunks == 0)
        #expect(fixture.transport.inserts.map(\.body) == ["(0),(1),(2),(3),(4)"])
    }

    @Test func durableAcksAnswerOnceTheSpoolIsSynced() async throws {
        let fixture = try EngineFixture("defaults: { ack: durable }", spool: true)
        let answers = Answers()
        let decision = fixture.insert("INSERT INTO t VALUES (1),(2)", answers: answers)
        #expect(decision.waitsForDurable)
        let received = await answers.wait(for: 1)
        #expect(received.count == 1)
        #expect(received.first?.acceptedAck == .durable)
        await fixture.drain()
    }

    @Test func flushedAcksAnswerWithTheBatchsOutcome() async throws {
        let fixture = try EngineFixture("defaults: { ack: flushed }")
        let answers = Answers()
        #expect(fixture.insert("INSERT INTO t VALUES (1)", answers: answers).waitsForBatch)
        #expect(fixture.insert("INSERT INTO t VALUES (2)", answers: answers).waitsForBatch)
        #expect(answers.all.isEmpty, "nothing is answered before the batch lands")
        await fixture.drain()
        let received = await answers.wait(for: 2)
        #expect(received.map(\.acceptedAck) == [.flushed, .flushed])
        #expect(fixture.transport.inserts.count == 1, "flushed acks still batch")
    }

    @Test func flushedAcksRelayClickHousesOwnRefusal() async throws {
        let transport = ScriptedTransport { _, _ in .error(status: 404, code: 60, message: "Table db.gone doesn't exist") }
        let fixture = try EngineFixture("defaults: { ack: flushed }", transport: transport)
        let answers = Answers()
        fixture.insert("INSERT INTO db.gone VALUES (1)", answers: answers)
        await fixture.drain()
        let received = await answers.wait(for: 1)
        #expect(received.first?.relayedStatus == 404)
        #expect(fixture.deadLetterFiles.count == 2, "the rows are in the dead-letter folder (.data and .json)")
    }

    @Test func flushedAcksSayUpstreamUnavailableWhenRetriesRunOut() async throws {
        let fixture = try EngineFixture(
            "defaults: { ack: flushed, retries: 1 }", transport: ScriptedTransport { _, _ in .failure(.connect) })
        let answers = Answers()
        fixture.insert("INSERT INTO t VALUES (1)", answers: answers)
        await fixture.drain()
        let received = await answers.wait(for: 1)
        #expect(received.first?.refusal?.code == 210)
        #expect(fixture.transport.inserts.count == 2, "one attempt and one retry")
    }

    @Test func immediateRowsGoUpAloneAndAreNotSpooled() async throws {
        let fixture = try EngineFixture("tables: { pay: { strategy: immediate } }", spool: true)
        let spool = try #require(fixture.spool)
        let answers = Answers()
        let delivery = fixture.engine.delivery
        let worker = Task { await delivery.run() }
        #expect(fixture.insert("INSERT INTO pay VALUES (1)", answers: answers).waitsForBatch)
        #expect(fixture.insert("INSERT INTO pay VALUES (2)", answers: answers).waitsForBatch)
        #expect(spool.undeliveredChunks == 0)
        let received = await answers.wait(for: 2)
        #expect(received.map(\.acceptedAck) == [.flushed, .flushed])
        #expect(Set(fixture.transport.inserts.map(\.body)) == ["(1)", "(2)"])
        fixture.engine.drain()
        await worker.value
    }

    @Test func clientsWithDifferentCredentialsNeverShareABatch() async throws {
        let fixture = try EngineFixture()
        fixture.insert("INSERT INTO t VALUES (1)", identity: ClientIdentity(user: "alice", password: "a-secret"))
        fixture.insert("INSERT INTO t VALUES (2)", identity: ClientIdentity(user: "bob", password: "b-secret"))
        fixture.insert("INSERT INTO t VALUES (3)", identity: ClientIdentity(user: "alice", password: "a-secret"))
        await fixture.drain()
        let byAuth = Dictionary(fixture.transport.inserts.map { ($0.auth ?? "", $0.body) }, uniquingKeysWith: { $0 + $1 })
        #expect(byAuth == ["alice:a-secret": "(1),(3)", "bob:b-secret": "(2)"])
    }

    @Test func aServiceAccountJoinsEveryClientsRowsAndSendsItsOwnCredentials() async throws {
        let fixture = try EngineFixture(
            upstream: "{ servers: [\"http://upstream.test:8123\"], compression: none, user: svc, password: pw }")
        fixture.insert("INSERT INTO t VALUES (1)", identity: ClientIdentity(user: "alice", password: "a"))
        fixture.insert("INSERT INTO t VALUES (2)", identity: ClientIdentity(user: "bob", password: "b"))
        await fixture.drain()
        #expect(fixture.transport.inserts.map(\.body) == ["(1),(2)"])
        #expect(fixture.transport.inserts.map(\.auth) == ["svc:pw"])
    }

    @Test func settingsAreSentAndSplitBatches() async throws {
        let fixture = try EngineFixture()
        fixture.insert("INSERT INTO t VALUES (1)", settings: [Setting(name: "max_insert_block_size", value: "10")])
        fixture.insert("INSERT INTO t VALUES (2)")
        await fixture.drain()
        let sent = fixture.transport.inserts
        #expect(sent.count == 2)
        #expect(sent.first { $0.body == "(1)" }?.parameter("max_insert_block_size") == "10")
        #expect(sent.first { $0.body == "(2)" }?.parameter("max_insert_block_size") == nil)
    }

    @Test func sampledRowsAreCountedAsKept() async throws {
        let fixture = try EngineFixture("tables: { debug: { sample: 0.5 } }")
        let rows = (0..<1000).map { "\($0)\n" }.joined()
        let kept = try #require(fixture.insert("INSERT INTO debug FORMAT TSV\n" + rows).acceptedRows)
        #expect(kept > 300 && kept < 700)
        #expect(fixture.engine.buffering.bufferedRows == kept)
        await fixture.drain()
        let body = try #require(fixture.transport.inserts.first?.body)
        #expect(body.split(separator: "\n").count == kept, "every kept row, one per line")
    }

    @Test func sealedBatchesCountAgainstMemoryUntilTheyAreSettled() async throws {
        let transport = ScriptedTransport()
        let fixture = try EngineFixture("defaults: { strategy: size, max_rows: 2 }", transport: transport)
        fixture.insert("INSERT INTO t VALUES (1)")
        fixture.insert("INSERT INTO t VALUES (2)")
        #expect(fixture.engine.buffering.bufferedRows == 0, "the batch is sealed")
        #expect(fixture.engine.buffering.memoryInUse == "(1),(2)".utf8.count, "but not yet settled")
        await fixture.drain()
        #expect(fixture.engine.buffering.memoryInUse == 0)
    }

    @Test func aReloadAppliesNewRulesToOpenBatches() async throws {
        let fixture = try EngineFixture("defaults: { strategy: size, max_rows: 100 }")
        for id in 0..<10 { fixture.insert("INSERT INTO t VALUES (\(id))") }
        #expect(fixture.engine.buffering.bufferedRows == 10)
        var configuration = fixture.engine.configuration.value
        configuration.rules = TableRules(defaults: TableRule(strategy: .size, maxRows: 5))
        let notes = fixture.engine.apply(configuration)
        #expect(notes.isEmpty)
        #expect(fixture.engine.buffering.bufferedRows == 0, "the open batch meets the new max_rows and is sealed")
        #expect(fixture.engine.delivery.queuedBatches == 1)
        await fixture.drain()
        #expect(fixture.transport.inserts.map(\.body) == [(0..<10).map { "(\($0))" }.joined(separator: ",")])
    }
}
