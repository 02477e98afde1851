import BatchhouseConfig
import BatchhouseCore
import Foundation
import Synchronization
import Testing

@testable import BatchhouseEngine

/// A proxy restarted while ClickHouse is unreachable still takes the clients ClickHouse accepted before
/// (docs/credentials.md, "Verification"); the file holds keyed digests only.
@Suite struct VerifiedIdentityFileTests {
    final class Upstream: Sendable {
        let reachable = Atomic<Bool>(true)
    }

    static func verifier(_ upstream: Upstream, file: VerifiedIdentityFile, tags: IdentityTags) throws -> CredentialVerifier {
        let transport = ScriptedTransport(routing: { _, url, _ in
            upstream.reachable.load(ordering: .relaxed) ? .ok : .failure(.connect)
        })
        let gateway = UpstreamGateway(
            transport: transport,
            upstream: try ConfigurationLoader.parse(
                yaml: "upstream: { servers: [\"http://upstream.test:8123\"] }", environment: [:]
            ).upstream,
            clock: TestClock())
        return CredentialVerifier(tags: tags, gateway: gateway, clock: TestClock(), file: file)
    }

    static func outcome(_ verifier: CredentialVerifier, _ identity: ClientIdentity) async -> CredentialVerifier.Outcome {
        guard case .mustVerify(let digest) = verifier.check(identity) else { return .verified }
        return await withCheckedContinuation { continuation in
            verifier.verify(identity, digest: digest) { continuation.resume(returning: $0) }
        }
    }

    @Test func anAcceptedIdentityIsTakenAfterARestartWhileClickHouseIsUnreachable() async throws {
        let directory = TemporaryDirectory()
        let file = VerifiedIdentityFile(directory: directory.path)
        let tags = IdentityTags.random()
        let alice = ClientIdentity(user: "alice", password: "alice-pw")
        let stranger = ClientIdentity(user: "mallory", password: "guess")
        let upstream = Upstream()

        let first = try Self.verifier(upstream, file: file, tags: tags)
        guard case .verified = await Self.outcome(first, alice) else {
            Issue.record("alice was not verified")
            return
        }
        let text = try String(contentsOfFile: file.path, encoding: .utf8)
        #expect(!text.contains("alice"), "digests only")
        #expect(text.contains(tags.digest(of: alice).hex))
        let mode = try FileManager.default.attributesOfItem(atPath: file.path)[.posixPermissions] as? Int
        #expect(mode == 0o600)

        upstream.reachable.store(false, ordering: .relaxed)
        let restarted = try Self.verifier(upstream, file: file, tags: tags)
        guard case .verified = await Self.outcome(restarted, alice) else {
            Issue.record("alice was refused after the restart")
            return
        }
        guard case .unavailable = await Self.outcome(restarted, stranger) else {
            Issue.record("an identity never accepted was taken while ClickHouse was unreachable")
            return
        }
        restarted.forget(alice)
        #expect(!(try String(contentsOfFile: file.path, encoding: .utf8)).contains(tags.digest(of: alice).hex))
    }

    @Test func digestsRoundTripThroughHex() {
        let digest = IdentityTags.random().digest(of: ClientIdentity(user: "u", password: "p"))
        #expect(digest.hex.count == 64)
        #expect(IdentityDigest(hex: Substring(digest.hex)) == digest)
        #expect(IdentityDigest(hex: "zz") == nil)
    }
}
