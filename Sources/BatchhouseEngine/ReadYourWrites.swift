import BatchhouseCore
import Synchronization

/// Which sealed batches still hold rows acknowledged to which identities, and the requests that wait for them
/// (docs/delivery.md, "Read your writes").
///
/// A batch is registered when it is sealed (under `Buffering`'s lock, so a batch is never out of the store and
/// not yet here), only when its rule has `read_your_writes`, and leaves when `Settlement` settles it: landed,
/// dead-lettered, failed or deferred. Nothing here runs per INSERT: one entry per batch, one per waiting request.
package final class ReadYourWrites: Sendable {
    /// A waiting request, known by a number so that a timeout can take it back.
    package typealias Ticket = UInt64

    private struct Waiter {
        var remaining: Set<UInt64>
        var resume: @Sendable () -> Void
    }

    private struct State {
        /// Sealed, unsettled batches (by id) and the identities whose rows they hold.
        var unsettled: [UInt64: [ClientIdentity]] = [:]
        var waiters: [Ticket: Waiter] = [:]
        var nextTicket: Ticket = 1
    }

    private let state = Mutex(State())

    package init() {}

    /// Sealed batches that hold acknowledged rows (called under `Buffering`'s lock; the lock order is always
    /// Buffering, then this).
    package func sealed(_ batches: [SealedBatch]) {
        var tracked: [(UInt64, [ClientIdentity])] = []
        for batch in batches where batch.rule.readYourWrites {
            tracked.append((batch.id, batch.identities))
        }
        guard !tracked.isEmpty else { return }
        state.withLock { state in
            for (id, identities) in tracked { state.unsettled[id] = identities }
        }
    }

    /// Batch `id` has an outcome; the requests that waited only for it and others already settled go on.
    package func settled(_ id: UInt64) {
        let ready = state.withLock { state -> [@Sendable () -> Void] in
            guard state.unsettled.removeValue(forKey: id) != nil, !state.waiters.isEmpty else { return [] }
            var ready: [@Sendable () -> Void] = []
            for (ticket, var waiter) in state.waiters where waiter.remaining.contains(id) {
                waiter.remaining.remove(id)
                if waiter.remaining.isEmpty {
                    state.waiters[ticket] = nil
                    ready.append(waiter.resume)
                } else {
                    state.waiters[ticket] = waiter
                }
            }
            return ready
        }
        for resume in ready { resume() }
    }

    /// Waits for every unsettled batch holding rows of `identity`: nil when there is none (`resume` is not called),
    /// else a ticket, and `resume` is called once they all have an outcome (on the thread that settles the last).
    package func wait(for identity: ClientIdentity, resume: @escaping @Sendable () -> Void) -> Ticket? {
        state.withLock { state in
            var remaining = Set<UInt64>()
            for (id, identities) in state.unsettled where identities.contains(identity) { remaining.insert(id) }
            guard !remaining.isEmpty else { return nil }
            let ticket = state.nextTicket
            state.nextTicket += 1
            state.waiters[ticket] = Waiter(remaining: remaining, resume: resume)
            return ticket
        }
    }

    /// Takes a waiting request back (its bound ran out, or its client left). False when it was already resumed.
    package func cancel(_ ticket: Ticket) -> Bool {
        state.withLock { $0.waiters.removeValue(forKey: ticket) != nil }
    }

    /// Unsettled batches registered (for tests and figures).
    package var unsettledBatches: Int { state.withLock { $0.unsettled.count } }
    package var waitingRequests: Int { state.withLock { $0.waiters.count } }
}

extension SealedBatch {
    /// The identities whose rows it holds: the contributors recorded in service-account mode (where the key's
    /// identity is `.anonymous`), else the key's.
    var identities: [ClientIdentity] { contributors.isEmpty ? [key.identity] : contributors }
}
