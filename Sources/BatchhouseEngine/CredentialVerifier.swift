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
    private let clock: any EngineClock
    private let entries = Mutex<[IdentityDigest: Entry]>([:])
    /// With a spool: the accepted identities survive a restart (`VerifiedIdentityFile`).
    private let file: VerifiedIdentityFile?
    /// What the file holds (Unix seconds of the acceptance written), and the lock that orders its writes.
    private let persisted = Mutex<[IdentityDigest: Double]>([:])
    /// An acceptance is written again only when the one on file is older than this.
    package static let persistEvery: Double = 300

    package init(tags: IdentityTags, gateway: UpstreamGateway, clock: any EngineClock, file: VerifiedIdentityFile? = nil) {
        self.tags = tags
        self.gateway = gateway
        self.clock = clock
        self.file = file
        guard let file else { return }
        // Acceptances from before a restart, made relative to this process's clock: they count while ClickHouse is
        // unreachable, and the first request still asks it when it can be asked.
        let wall = clock.wallClockSeconds()
        let now = clock.now()
        let window = Self.trustedWhileUnreachableFor.seconds
        let recent = file.load().filter { wall - $0.value < window && $0.value <= wall }
        persisted.withLock { $0 = recent }
        entries.withLock { entries in
            for (digest, at) in recent {
                let age = Int64((wall - at) * 1e9)
                entries[digest] = Entry(verifiedAt: Instant(nanoseconds: now.nanoseconds - age), trustedUntil: nil, waiters: nil)
            }
        }
    }

    /// Records an acceptance (or, with `at` nil, a refusal) in the file, if there is one.
    private func persist(_ digest: IdentityDigest, acceptedAt at: Double?) {
        guard let file else { return }
        persisted.withLock { persisted in
            if let at {
                if let known = persisted[digest], at - known < Self.persistEvery { return }
                persisted[digest] = at
            } else if persisted.removeValue(forKey: digest) == nil {
                return
            }
            let window = Self.trustedWhileUnreachableFor.seconds
            let wall = clock.wallClockSeconds()
            persisted = persisted.filter { wall - $0.value < window }
            // A failed write only loses the restart convenience: identities are asked again.
            try? file.save(persisted)
        }
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
        enum Role { case joined, first, uncached }
        let role = entries.withLock { entries -> Role in
            if var entry = entries[digest] {
                if entry.waiters != nil {
                    entry.waiters!.append(then)
                    entries[digest] = entry
                    return .joined
                }
                entry.waiters = [then]
                entries[digest] = entry
                return .first
            }
            if entries.count >= Self.maxEntries { Self.prune(&entries, now: now) }
            // Still full of fresh or pending identities: this one is checked without being remembered.
            if entries.count >= Self.maxEntries { return .uncached }
            entries[digest] = Entry(waiters: [then])
            return .first
        }
        let gateway = self.gateway
        if role == .uncached {
            Task {
                switch await gateway.verify(identity) {
                case .accepted: then(.verified)
                case .refused(let response): then(.refused(response))
                case .unreachable(let message): then(.unavailable(message))
                }
            }
            return
        }
        guard role == .first else { return }
        Task {
            let answer = await gateway.verify(identity)
            self.settle(digest, answer)
        }
    }

    /// A batch of this identity was refused for its credentials: ask again before the next acknowledgement.
    package func forget(_ identity: ClientIdentity) {
        let digest = tags.digest(of: identity)
        defer { persist(digest, acceptedAt: nil) }
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
        switch answer {
        case .accepted: persist(digest, acceptedAt: clock.wallClockSeconds())
        case .refused: persist(digest, acceptedAt: nil)
        case .unreachable: break
        }
        for waiter in waiters { waiter(outcome) }
    }

    /// Drops what is neither pending, fresh, nor within the trusted-while-unreachable window; if that is not
    /// enough, the entries only kept for that window go too.
    private static func prune(_ entries: inout [IdentityDigest: Entry], now: Instant) {
        func fresh(_ entry: Entry) -> Bool { entry.waiters != nil || (entry.trustedUntil.map { now < $0 } ?? false) }
        entries = entries.filter { _, entry in
            fresh(entry) || (entry.verifiedAt.map { now - $0 < trustedWhileUnreachableFor } ?? false)
        }
        if entries.count >= maxEntries { entries = entries.filter { fresh($0.value) } }
    }
}
