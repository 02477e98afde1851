import BatchhouseCore
import BatchhouseUpstream
import Synchronization

/// Makes sure ClickHouse takes an identity's credentials before the proxy acknowledges rows sent with them, so a
/// wrong password gets ClickHouse's own 401 at once instead of a 200 and a dead letter later
/// (docs/credentials.md, "Verification").
///
/// The cache is keyed by the identity's keyed digest (`IdentityTags`), never by the secret. The hot path, an
/// identity verified within `freshFor`, is one HMAC, one lock and one dictionary lookup. Verifications of one
/// identity that overlap share one `SELECT 1`.
package final class CredentialVerifier: Sendable {
    /// How long a successful verification is trusted without asking again.
    package static let freshFor: Duration = .seconds(60)
    /// While ClickHouse cannot be reached, an identity it accepted within this long is still taken (its rows are
    /// sent when it is back; if it refuses them then, they are dead-lettered as refused, never replayed unasked).
    package static let trustedWhileUnreachableFor: Duration = .seconds(3600)
    /// While ClickHouse cannot be reached, how long such an identity is taken before it is asked again.
    package static let recheckWhileUnreachableAfter: Duration = .seconds(5)
    /// Entries beyond this are pruned (the stale ones first); past it, identities are verified without caching.
    package static let maxEntries = 10_000

    package enum Check: Sendable {
        case verified
        /// Unknown or stale: call `verify` with this digest.
        case mustVerify(IdentityDigest)
    }

    package enum Outcome: Sendable {
        case verified
        /// ClickHouse's own refusal, to relay to the client.
        case refused(UpstreamResponse)
        /// ClickHouse could not be asked and this identity was not accepted recently enough.
        case unavailable(String)
    }

    private struct Entry {
        /// The last time ClickHouse accepted the credentials.
        var verifiedAt: Instant?
        /// Requests are taken without asking until then.
        var trustedUntil: Instant?
        /// Non-nil while a verification is in flight: who waits for it.
        var waiters: [@Sendable (Outcome) -> Void]?
    }

    package let tags: IdentityTags
    private let gateway: UpstreamGateway
    private let clock: any NowProvider
    private let entries = Mutex<[IdentityDigest: Entry]>([:])

    package init(tags: IdentityTags, gateway: UpstreamGateway, clock: any NowProvider) {
        self.tags = tags
        self.gateway = gateway
        self.clock = clock
    }

    /// The hot path: whether `identity` may be taken now without asking ClickHouse.
    package func check(_ identity: ClientIdentity) -> Check {
        let digest = tags.digest(of: identity)
        let now = clock.now()
        let trusted = entries.withLock { entries in
            guard let until = entries[digest]?.trustedUntil else { return false }
            return now < until
        }
        return trusted ? .verified : .mustVerify(digest)
    }

    /// Asks ClickHouse (or joins the question already asked) and calls `then` once with the outcome, from a task.
    package func verify(
        _ identity: ClientIdentity, digest: IdentityDigest, then: @escaping @Sendable (Outcome) -> Void
    ) {
        let now = clock.now()
        let first = entries.withLock { entries -> Bool in
            if var entry = entries[digest] {
                if entry.waiters != nil {
                    entry.waiters!.append(then)
                    entries[digest] = entry
                    return false
                }
                entry.waiters = [then]
                entries[digest] = entry
                return true
            }
            if entries.count >= Self.maxEntries { Self.prune(&entries, now: now) }
            entries[digest] = Entry(waiters: [then])
            return true
        }
        guard first else { return }
        let gateway = self.gateway
        Task {
            let answer = await gateway.verify(identity)
            self.settle(digest, answer)
        }
    }

    /// A batch of this identity was refused for its credentials: ask again before the next acknowledgement.
    package func forget(_ identity: ClientIdentity) {
        let digest = tags.digest(of: identity)
        entries.withLock { entries in
            guard var entry = entries[digest] else { return }
            entry.verifiedAt = nil
            entry.trustedUntil = nil
            if entry.waiters == nil {
                entries[digest] = nil
            } else {
                entries[digest] = entry
            }
        }
    }

    /// How many identities are cached (for tests).
    package var count: Int { entries.withLock { $0.count } }

    private func settle(_ digest: IdentityDigest, _ answer: UpstreamGateway.VerificationAnswer) {
        let now = clock.now()
        let (waiters, outcome) = entries.withLock { entries -> ([@Sendable (Outcome) -> Void], Outcome) in
            var entry = entries[digest] ?? Entry()
            let waiters = entry.waiters ?? []
            entry.waiters = nil
            let outcome: Outcome
            switch answer {
            case .accepted:
                entry.verifiedAt = now
                entry.trustedUntil = now + Self.freshFor
                outcome = .verified
            case .refused(let response):
                entry.verifiedAt = nil
                entry.trustedUntil = nil
                outcome = .refused(response)
            case .unreachable(let message):
                if let at = entry.verifiedAt, now - at < Self.trustedWhileUnreachableFor {
                    entry.trustedUntil = now + Self.recheckWhileUnreachableAfter
                    outcome = .verified
                } else {
                    outcome = .unavailable(message)
                }
            }
            entries[digest] = entry.verifiedAt == nil ? nil : entry
            return (waiters, outcome)
        }
        for waiter in waiters { waiter(outcome) }
    }

    private static func prune(_ entries: inout [IdentityDigest: Entry], now: Instant) {
        entries = entries.filter { _, entry in
            entry.waiters != nil || (entry.trustedUntil.map { now < $0 } ?? false)
        }
    }
}
