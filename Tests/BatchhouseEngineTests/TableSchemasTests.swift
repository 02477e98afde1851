import BatchhouseCore
import BatchhouseUpstream
import NIOCore
import Synchronization
import Testing

@testable import BatchhouseEngine

/// The cache of table descriptions, with a scripted `DESCRIBE` and the description kept as text.
@Suite struct TableSchemasTests {
    private final class Asker: Sendable {
        let asked = Mutex<[TableSchemas<String>.Key]>([])
        let answers = Mutex<[UpstreamGateway.DescribeAnswer]>([])
        /// Released one at a time, so several requests can wait on one question.
        let gate = AsyncStream<Void>.makeStream()

        func ask(_ key: TableSchemas<String>.Key) async -> UpstreamGateway.DescribeAnswer {
            asked.withLock { $0.append(key) }
            for await _ in gate.stream { break }
            return answers.withLock { $0.isEmpty ? .unreachable("no answer scripted") : $0.removeFirst() }
        }
    }

    private func make(_ asker: Asker, clock: TestClock) -> TableSchemas<String> {
        TableSchemas<String>(clock: clock, parse: { text in text.isEmpty ? nil : String(decoding: text, as: UTF8.self) }) {
            await asker.ask($0)
        }
    }

    private func lookup(_ schemas: TableSchemas<String>, _ key: TableSchemas<String>.Key) async
        -> TableSchemas<String>.Lookup
    {
        await withCheckedContinuation { continuation in
            schemas.describe(key) { continuation.resume(returning: $0) }
        }
    }

    private let alice = ClientIdentity(user: "alice", password: "a")
    private let bob = ClientIdentity(user: "bob", password: "b")

    @Test func requestsThatOverlapShareOneQuestionAndTheAnswerIsKept() async {
        let asker = Asker()
        let clock = TestClock()
        let schemas = make(asker, clock: clock)
        let key = TableSchemas<String>.Key(identity: alice, database: "default", table: "t")
        asker.answers.withLock { $0 = [.described(Array("id\tUInt64\n".utf8))] }
        async let first = lookup(schemas, key)
        async let second = lookup(schemas, key)
        while asker.asked.withLock({ $0.count }) == 0 { await Task.yield() }
        try? await Task.sleep(for: .milliseconds(20))
        asker.gate.continuation.yield()
        let answers = await [first, second]
        for answer in answers {
            guard case .described(let text) = answer else {
                Issue.record("expected a description, got \(answer)")
                continue
            }
            #expect(text == "id\tUInt64\n")
        }
        #expect(asker.asked.withLock { $0.count } == 1)
        #expect(schemas.cached(key) == "id\tUInt64\n")
        // Another identity has its own description: what one account may see says nothing of another's.
        #expect(schemas.cached(.init(identity: bob, database: "default", table: "t")) == nil)
    }

    @Test func aRefusalIsNotKeptAndAnUnreadableAnswerIsSaidSo() async {
        let asker = Asker()
        let schemas = make(asker, clock: TestClock())
        let key = TableSchemas<String>.Key(identity: alice, database: nil, table: "missing")
        let refusal = UpstreamResponse(
            status: 404, headers: [], body: ByteBuffer(string: "Code: 60. DB::Exception: Table default.missing doesn't exist"))
        asker.answers.withLock { $0 = [.refused(refusal), .described([])] }
        asker.gate.continuation.yield()
        guard case .refused(let response) = await lookup(schemas, key) else {
            Issue.record("expected the refusal")
            return
        }
        #expect(response.status == 404)
        #expect(schemas.cached(key) == nil)
        asker.gate.continuation.yield()
        guard case .unreadable = await lookup(schemas, key) else {
            Issue.record("expected an unreadable answer")
            return
        }
        #expect(asker.asked.withLock { $0.count } == 2)
    }

    @Test func aRefreshWaitsForTheIntervalAndForgetClearsEveryIdentity() async {
        let asker = Asker()
        let clock = TestClock()
        let schemas = make(asker, clock: clock)
        let a = TableSchemas<String>.Key(identity: alice, database: "db", table: "t")
        let b = TableSchemas<String>.Key(identity: bob, database: "db", table: "t")
        let other = TableSchemas<String>.Key(identity: bob, database: "db", table: "u")
        asker.answers.withLock { $0 = [.described(Array("1".utf8)), .described(Array("2".utf8)), .described(Array("3".utf8))] }
        for key in [a, b, other] {
            asker.gate.continuation.yield()
            _ = await lookup(schemas, key)
        }
        #expect(!schemas.mayRefresh(a))
        clock.advance(by: TableSchemas<String>.refreshAfter)
        #expect(schemas.mayRefresh(a))
        schemas.forget(database: "db", table: "t")
        #expect(schemas.cached(a) == nil)
        #expect(schemas.cached(b) == nil)
        #expect(schemas.cached(other) == "3")
    }
}
