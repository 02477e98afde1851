import BatchhouseCore
import BatchhouseUpstream
import Crypto
import Foundation
import Synchronization
import Testing

@testable import BatchhouseEngine

/// Credentials checked with ClickHouse before rows are acknowledged, refused as ClickHouse refuses them, tagged
/// with a keyed hash, and dead letters that say why they were refused (docs/credentials.md).
@Suite struct CredentialTests {
    static let alice = ClientIdentity(user: "alice", password: "right")
    static let aliceWrong = ClientIdentity(user: "alice", password: "WRONG")

    /// ClickHouse as 18.16 answers: `SELECT 1` is 200 for alice:right, 401 code 193 for anything else; INSERTs
    /// answer `insert`. `down` makes every request a connection error; `slowCheck` delays each `SELECT 1`.
    final class Upstream: Sendable {
        let down = Atomic<Bool>(false)
        let insert: Reply
        let slowCheck: Bool
        init(insert: Reply = .ok, slowCheck: Bool = false) {
            self.insert = insert
            self.slowCheck = slowCheck
        }

        func transport() -> ScriptedTransport {
            ScriptedTransport(authenticating: { [self] request in
                if down.load(ordering: .relaxed) { return .failure(.connect) }
                guard request.statement == "SELECT 1" else { return insert }
                if slowCheck { usleep(100_000) }
                return request.auth == "alice:right"
                    ? .ok : .error(status: 401, code: 193, message: "Wrong password for user alice")
            })
        }
    }

    static func fixture(_ yaml: String = "", upstream: Upstream = Upstream(), serviceAccount: Bool = false) throws
        -> EngineFixture
    {
        try EngineFixture(
            yaml, transport: upstream.transport(),
            upstream: serviceAccount
                ? "{ servers: [\"http://upstream.test:8123\"], compression: none, user: svc, password: s }"
                : "{ servers: [\"http://upstream.test:8123\"], compression: none }",
            verifiesCredentials: true)
    }

    @Test func aNewIdentityIsCheckedOnceThenTakenOnTheHotPath() async throws {
        let fixture = try Self.fixture()
        let first = Answers()
        #expect(fixture.insert("INSERT INTO t VALUES (1)", identity: Self.alice, answers: first).waitsForVerification)
        #expect(await first.wait(for: 1).first?.acceptedAck == .enqueued)
        #expect(fixture.insert("INSERT INTO t VALUES (2)", identity: Self.alice).acceptedRows == 1)
        await fixture.drain()
        #expect(fixture.transport.verifications.map(\.auth) == ["alice:right"])
        #expect(fixture.transport.inserts.map(\.body) == ["(1),(2)"])
        #expect(fixture.transport.inserts.map(\.auth) == ["alice:right"])
    }

    /// Issue 9, item 7: with `ack: enqueued` a wrong password got 200 and its rows were dead-lettered.
    @Test func aWrongPasswordGetsClickHousesOwnRefusalAndNothingIsKept() async throws {
        let fixture = try Self.fixture()
        for _ in 0..<2 {
            let answers = Answers()
            #expect(fixture.insert("INSERT INTO t VALUES (1)", identity: Self.aliceWrong, answers: answers).waitsForVerification)
            let answer = try #require(await answers.wait(for: 1).first)
            guard case .relayed(let response) = answer else {
                Issue.record("expected ClickHouse's refusal, got \(answer)")
                return
            }
            #expect(response.status == 401)
            #expect(String(buffer: response.body).contains("Code: 193"))
        }
        await fixture.drain()
        #expect(fixture.transport.inserts.isEmpty)
        #expect(fixture.deadLetterFiles.isEmpty)
        #expect(fixture.transport.verifications.count == 2, "a refusal is not cached: ClickHouse is asked each time")
        #expect(fixture.engine.buffering.sealedBytes == 0)
    }

    @Test func requestsOfOneNewIdentityShareOneCheck() async throws {
        let fixture = try Self.fixture(upstream: Upstream(slowCheck: true))
        let answers = Answers()
        for row in 1...3 {
            #expect(fixture.insert("INSERT INTO t VALUES (\(row))", identity: Self.alice, answers: answers).waitsForVerification)
        }
        #expect(await answers.wait(for: 3).compactMap(\.acceptedAck) == [.enqueued, .enqueued, .enqueued])
        #expect(fixture.transport.verifications.count == 1)
    }

    /// A body waiting for its identity's check holds its bytes in the memory budget (shed first, as priority 5),
    /// and gives them back once the check is answered.
    @Test func aBodyWaitingForItsCheckIsCountedInTheBudget() async throws {
        let fixture = try Self.fixture("limits: { max_buffer_memory: 1000 }", upstream: Upstream(slowCheck: true))
        let answers = Answers()
        let row = "INSERT INTO t VALUES ('" + String(repeating: "x", count: 500) + "')"
        #expect(fixture.insert(row, identity: Self.alice, answers: answers).waitsForVerification)
        #expect(fixture.engine.buffering.memoryInUse >= 500, "held while ClickHouse is asked")
        let refused = fixture.insert(row, identity: Self.alice).refusal
        #expect(refused?.code == 241, "a second waiting body is over the budget's priority-5 share")
        #expect(await answers.wait(for: 1).first?.acceptedAck == .enqueued)
        #expect(fixture.engine.buffering.memoryInUse < 600, "the waiting reservation was given back")
    }

    @Test func aNewIdentityIsRefusedWhileClickHouseCannotBeAskedAKnownOneIsTaken() async throws {
        let upstream = Upstream()
        let fixture = try Self.fixture(upstream: upstream)
        let known = Answers()
        fixture.insert("INSERT INTO t VALUES (1)", identity: Self.alice, answers: known)
        #expect(await known.wait(for: 1).first?.acceptedAck == .enqueued)
        upstream.down.store(true, ordering: .relaxed)
        fixture.clock.advance(by: .seconds(61))

        let stranger = Answers()
        fixture.insert("INSERT INTO t VALUES (2)", identity: ClientIdentity(user: "bob", password: "b"), answers: stranger)
        let refusal = try #require(await stranger.wait(for: 1).first?.refusal)
        #expect(refusal.status == 503)
        #expect(refusal.code == 210)
        #expect(refusal.retryAfterSeconds == 1)
        #expect(!refusal.body.contains("b@") && !refusal.body.contains(":b"))

        let stale = Answers()
        #expect(fixture.insert("INSERT INTO t VALUES (3)", identity: Self.alice, answers: stale).waitsForVerification)
        #expect(await stale.wait(for: 1).first?.acceptedAck == .enqueued, "verified a minute ago: taken")
        #expect(fixture.insert("INSERT INTO t VALUES (4)", identity: Self.alice).acceptedRows == 1, "not asked again at once")

        fixture.clock.advance(by: .seconds(2 * 3600))
        let tooOld = Answers()
        fixture.insert("INSERT INTO t VALUES (5)", identity: Self.alice, answers: tooOld)
        #expect(await tooOld.wait(for: 1).first?.refusal?.status == 503)
    }

    /// A password changed after the check: the batch is refused, the identity is asked again, and the dead letter
    /// says why and that nobody was told.
    @Test func aBatchRefusedForItsCredentialsIsRecordedAsSoAndForgotten() async throws {
        let fixture = try Self.fixture(
            upstream: Upstream(insert: .error(status: 401, code: 193, message: "Wrong password for user alice")))
        let answers = Answers()
        fixture.insert("INSERT INTO t VALUES (1)", identity: Self.alice, answers: answers)
        #expect(await answers.wait(for: 1).first?.acceptedAck == .enqueued)
        await fixture.drain()
        #expect(fixture.transport.inserts.count == 1, "a 401 is not retried")
        let record = try Self.onlyRecord(fixture)
        #expect(record.refusal == .authentication)
        #expect(record.clientsToldFailed == 0)
        #expect(record.requests == 1)
        #expect(fixture.insert("INSERT INTO t VALUES (2)", identity: Self.alice).waitsForVerification)
    }

    @Test func deadLettersAreOwnerOnlyAndSayWhoWasToldOfTheFailure() async throws {
        let fixture = try Self.fixture(
            "defaults: { ack: flushed }", upstream: Upstream(insert: .error(status: 500, code: 164, message: "readonly")))
        let answers = Answers()
        fixture.insert("INSERT INTO t VALUES (1)", identity: Self.alice, answers: answers)
        try await Self.waitUntilBuffered(fixture, rows: 1)
        await fixture.drain()
        #expect(await answers.wait(for: 1).first?.relayedStatus == 500)
        #expect(fixture.transport.inserts.count == 1, "a readonly refusal is not retried")
        let record = try Self.onlyRecord(fixture)
        #expect(record.refusal == .permission)
        #expect(record.clientsToldFailed == 1)
        #expect(record.identity.hasPrefix("alice#") && record.identity.count == "alice#".count + 16)
        #expect(try Self.mode(fixture.deadLetters.path) == 0o700)
        for file in fixture.deadLetterFiles {
            #expect(try Self.mode(fixture.deadLetters.path + "/" + file) == 0o600, "\(file)")
        }
    }

    /// Issue 9, item 7: `X-ClickHouse-User` with `?user=` is 401 code 194 on 18.16.
    @Test func mixedSchemesAreRefusedAtOnceAndUnresolvedOnesPassThrough() async throws {
        let fixture = try Self.fixture()
        let refusal = try #require(fixture.insert("INSERT INTO t VALUES (1)", credentials: .mixedSchemes).refusal)
        #expect(refusal.status == 401)
        #expect(refusal.code == 194)
        #expect(refusal.body.contains("X-ClickHouse HTTP headers and other authentication methods simultaneously"))
        #expect(fixture.insert("INSERT INTO t VALUES (1)", credentials: .unresolved(.authorizationAndParameters)).isPassthrough)
        await fixture.drain()
        #expect(fixture.transport.requests.isEmpty)
    }

    @Test func serviceAccountModeLooksAtNoClientCredentials() async throws {
        let fixture = try Self.fixture(serviceAccount: true)
        #expect(fixture.insert("INSERT INTO t VALUES (1)", credentials: .mixedSchemes).acceptedRows == 1)
        #expect(fixture.insert("INSERT INTO t VALUES (2)", identity: Self.aliceWrong).acceptedRows == 1)
        await fixture.drain()
        #expect(fixture.transport.verifications.isEmpty)
        #expect(fixture.transport.inserts.map(\.auth) == ["svc:s"])
    }

    // MARK: Tags

    /// Issue 9, item 10: the tag was an unsalted FNV-1a of user and password, checkable offline.
    @Test func tagsAreKeyedAndStableWithTheSameKeyFile() throws {
        let directory = TemporaryDirectory()
        let tags = try IdentityTags.load(directory: directory.path)
        let path = directory.path + "/" + IdentityTags.keyFileName
        #expect(try Self.mode(path) == 0o600)
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)).count == 32)
        let tag = tags.tag(of: Self.alice)
        #expect(tag.hasPrefix("alice#") && tag.count == "alice#".count + 16)
        #expect(tag.dropFirst("alice#".count).allSatisfy { $0.isHexDigit && !$0.isUppercase })
        #expect(try IdentityTags.load(directory: directory.path).tag(of: Self.alice) == tag, "same key after a restart")
        #expect(IdentityTags.random().tag(of: Self.alice) != tag, "another key, another tag")
        #expect(tags.tag(of: Self.aliceWrong) != tag)
        #expect(tags.tag(of: ClientIdentity(user: "alice", password: nil)) != tags.tag(of: ClientIdentity(user: "alice", password: "")))
        #expect(tags.digest(of: Self.alice) == tags.digest(of: ClientIdentity(user: "alice", password: "right")))
        #expect(!tag.contains(Self.unkeyedFingerprint(Self.alice)))
    }

    /// The precomputed pads give exactly HMAC-SHA256 over the encoded fields.
    @Test func theDigestIsHMACSHA256() throws {
        let key = SymmetricKey(size: .bits256)
        var reference = HMAC<SHA256>(key: key)
        var message: [UInt8] = [1]
        withUnsafeBytes(of: UInt64(5).littleEndian) { message += $0 }
        message += Array("alice".utf8) + [1]
        withUnsafeBytes(of: UInt64(5).littleEndian) { message += $0 }
        message += Array("right".utf8)
        reference.update(data: message)
        let expected = Array(reference.finalize())
        let tag = IdentityTags(key: key).tag(of: Self.alice)
        let hex = expected.prefix(8).map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
        #expect(tag == "alice#" + hex)
    }

    /// The last digest is kept per thread: what comes back is still the digest of this identity under this key.
    @Test func theKeptDigestIsTheOneOfThisIdentityUnderThisKey() throws {
        let first = IdentityTags(key: SymmetricKey(size: .bits256))
        let second = IdentityTags(key: SymmetricKey(size: .bits256))
        let bob = ClientIdentity(user: "alice", password: "wrong")
        let aliceFirst = first.digest(of: Self.alice)
        #expect(first.digest(of: Self.alice) == aliceFirst)
        #expect(second.digest(of: Self.alice) != aliceFirst, "another key, another digest")
        #expect(first.digest(of: bob) != aliceFirst, "another password, another digest")
        #expect(first.digest(of: Self.alice) == aliceFirst)
        #expect(first.digest(of: .anonymous) != aliceFirst)
        #expect(first.tag(of: Self.alice) == first.tag(of: ClientIdentity(user: "alice", password: "right")))
    }

    @Test func aKeyFileOfTheWrongSizeIsRefused() throws {
        let directory = TemporaryDirectory()
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: directory.path + "/" + IdentityTags.keyFileName))
        #expect(throws: IdentityKeyError.self) { try IdentityTags.load(directory: directory.path) }
    }

    // MARK: Helpers

    /// The previous version's tag: FNV-1a 64 of user and password, top 32 bits.
    static func unkeyedFingerprint(_ identity: ClientIdentity) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for field in [identity.user, identity.password] {
            for byte in (field ?? "\u{0}").utf8 {
                hash ^= UInt64(byte)
                hash &*= 0x100_0000_01b3
            }
            hash ^= 0xff
            hash &*= 0x100_0000_01b3
        }
        let hex = String(hash >> 32, radix: 16)
        return String(repeating: "0", count: max(0, 8 - hex.count)) + hex
    }

    /// `ack: flushed` answers only after the batch: wait until the verified rows are in a batch.
    static func waitUntilBuffered(_ fixture: EngineFixture, rows: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        while fixture.engine.buffering.bufferedRows < rows && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(2))
        }
        #expect(fixture.engine.buffering.bufferedRows == rows)
    }

    static func onlyRecord(_ fixture: EngineFixture) throws -> DeadLetterWriter.Record {
        let json = try #require(fixture.deadLetterFiles.first { $0.hasSuffix(".json") })
        let data = try Data(contentsOf: URL(fileURLWithPath: fixture.deadLetters.path + "/" + json))
        return try JSONDecoder().decode(DeadLetterWriter.Record.self, from: data)
    }

    static func mode(_ path: String) throws -> Int {
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        return (attributes[.posixPermissions] as? Int ?? -1) & 0o777
    }
}
