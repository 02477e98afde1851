import BatchhouseCore
import BatchhouseEngine
import BatchhouseSpool
import NIOCore
import NIOEmbedded
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// One spool write per turn of an event loop (docs/spool-and-acks.md, "One write per turn"): requests taken on a
/// loop wait for the turn's write, then go into their batches and are answered, in order, as their ack mode says.
@Suite struct SpoolStageTests {
    static func accepted(_ response: IntakeResponse) -> AckMode? {
        if case .accepted(_, _, let ack) = response { return ack }
        return nil
    }

    static func refusalCode(_ response: IntakeResponse) -> Int? {
        if case .refused(let error, _) = response { return error.code }
        return nil
    }

    @Test func requestsOfOneTurnAreWrittenTogetherThenBufferedAndAnswered() throws {
        let fixture = try EngineFixture(spool: true)
        let spool = try #require(fixture.spool)
        let loop = EmbeddedEventLoop()
        let answers = Answers()
        for id in 0..<5 {
            let decision = fixture.insert("INSERT INTO t VALUES (\(id))", answers: answers, eventLoop: loop)
            guard case .awaitSpool = decision else {
                Issue.record("\(decision)")
                return
            }
        }
        #expect(spool.undeliveredChunks == 0, "nothing is written before the turn ends")
        #expect(fixture.engine.buffering.bufferedRows == 0, "nor buffered")
        #expect(answers.all.isEmpty, "nor answered")
        loop.run()
        #expect(spool.undeliveredChunks == 5)
        #expect(fixture.engine.buffering.bufferedRows == 5)
        #expect(answers.all.map(Self.accepted) == Array(repeating: .enqueued, count: 5))
        // Without a loop (a request finishing off the loop), the record is written at once, as before.
        #expect(fixture.insert("INSERT INTO t VALUES (5)").acceptedRows == 1)
        #expect(spool.undeliveredChunks == 6)
    }

    @Test func aRequestThatDoesNotFitTheSpoolIsRefusedAndTheOthersOfItsTurnGoOn() throws {
        let fixture = try EngineFixture(spool: true, spoolMaxSize: "400")
        let spool = try #require(fixture.spool)
        let loop = EmbeddedEventLoop()
        let answers = Answers()
        fixture.insert("INSERT INTO t VALUES ('" + String(repeating: "a", count: 100) + "')", answers: answers, eventLoop: loop)
        fixture.insert("INSERT INTO t VALUES ('" + String(repeating: "b", count: 300) + "')", answers: answers, eventLoop: loop)
        fixture.insert("INSERT INTO t VALUES ('c')", answers: answers, eventLoop: loop)
        loop.run()
        let all = answers.all
        #expect(all.count == 3)
        #expect(Self.accepted(all[0]) == .enqueued)
        #expect(Self.refusalCode(all[1]) == 243, "NOT_ENOUGH_SPACE, as a single write refused")
        #expect(Self.accepted(all[2]) == .enqueued)
        #expect(spool.undeliveredChunks == 2)
        #expect(fixture.engine.buffering.bufferedRows == 2, "the refused request left nothing behind")
        #expect(fixture.engine.buffering.memoryInUse == fixture.engine.buffering.bufferedBytes, "its reservation was freed")
    }

    /// Synchronous, like the tests above: an `EmbeddedEventLoop` is used and released on the thread that made it,
    /// which an async test does not promise across its waits. The answers come from the spool's sync thread.
    @Test func durableRequestsOfOneTurnAreAnsweredOnceTheFsyncCoversThem() throws {
        let fixture = try EngineFixture("defaults: { ack: durable }", spool: true)
        let loop = EmbeddedEventLoop()
        let answers = Answers()
        for id in 0..<4 { fixture.insert("INSERT INTO t VALUES (\(id))", answers: answers, eventLoop: loop) }
        loop.run()
        let deadline = ContinuousClock.now + .seconds(30)
        while answers.all.count < 4 && ContinuousClock.now < deadline { usleep(2_000) }
        let all = answers.all
        #expect(all.map(Self.accepted) == Array(repeating: .durable, count: 4))
        #expect(fixture.engine.buffering.bufferedRows == 4)
    }
}
