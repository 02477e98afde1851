import BatchhouseCore
import Synchronization

/// The open batches (the core's `BatchStore`, behind one lock) and the one owner of the memory budget
/// (`limits.max_buffer_memory`): bytes in open batches, bytes of request bodies still arriving, bytes reserved by
/// requests on their way in (between admission and the append, while their spool record is written), and bytes of
/// sealed batches until their outcome is settled (queued or in an upstream request). Sealed batches are returned to the caller, never sent
/// from here (docs/architecture.md, "Buffering").
package final class Buffering: Sendable {
    /// Bytes admitted for one request, held until its rows are appended or it is refused.
    package struct Reservation: Sendable {
        package let bytes: Int
    }

    package enum Admission: Sendable {
        case admitted(Reservation)
        /// Over the share of the limit this priority may use; `inUse` bytes were taken.
        case refused(inUse: Int)
    }

    private struct State {
        var store = BatchStore()
        var reserved = 0
        /// Held by connections for bodies that have not ended yet (`reserveIncoming`).
        var incoming = 0

        var inUse: Int { store.bufferedBytes + reserved + incoming }
    }

    private let state = Mutex(State())
    /// Sealed, not yet settled. Added to under the store's lock; an atomic so that the flush-queue gauge is read and
    /// settlement subtracts without that lock.
    private let sealed = Atomic<Int>(0)
    /// Bytes of sealed batches whose rows wait in the spool, not in memory (docs/spool-and-acks.md, "The spool as
    /// backlog"): outside the budget, bounded by `spool.max_size`.
    private let backlog = Atomic<Int>(0)
    private let clock: any NowProvider
    private let maxBufferMemory: Atomic<Int>
    /// With a spool: sealed batches whose rows are all in it leave memory at once.
    private let spoolBacked: Bool
    /// Told of every sealed batch under the store's lock, so a batch is never out of the store and unknown there.
    private let writes: ReadYourWrites?

    package init(
        clock: any NowProvider, maxBufferMemory: Int, spoolBacked: Bool = false, writes: ReadYourWrites? = nil
    ) {
        self.clock = clock
        self.writes = writes
        self.maxBufferMemory = Atomic(maxBufferMemory)
        self.spoolBacked = spoolBacked
    }

    package func setMaxBufferMemory(_ bytes: Int) { maxBufferMemory.store(bytes, ordering: .relaxed) }

    package var limit: Int { maxBufferMemory.load(ordering: .relaxed) }

    /// Everything the budget counts: open, arriving, reserved and sealed-but-unsettled bytes.
    package var memoryInUse: Int { state.withLock { $0.inUse } + sealedBytes }
    /// Bytes held for request bodies that are still arriving.
    package var incomingBytes: Int { state.withLock { $0.incoming } }
    /// Sealed bytes in memory: queued without a spool, or read back and in flight.
    package var sealedBytes: Int { sealed.load(ordering: .relaxed) }
    /// Sealed bytes waiting in the spool.
    package var backlogBytes: Int { backlog.load(ordering: .relaxed) }
    package var bufferedRows: Int { state.withLock { $0.store.bufferedRows } }
    package var bufferedBytes: Int { state.withLock { $0.store.bufferedBytes } }

    // MARK: Admission

    /// Admits `bytes` of a table with `priority` (shedding order in the core's `AdmissionControl`) and holds
    /// them until `append(..., reservation:)` or `cancel(_:)`. Called before anything is written to the spool.
    package func reserve(bytes: Int, priority: Int) -> Admission {
        let limit = self.limit
        return state.withLock { state in
            let inUse = state.inUse + sealedBytes
            guard AdmissionControl.admits(priority: priority, inUse: inUse, incoming: bytes, limit: limit) else {
                return .refused(inUse: inUse)
            }
            state.reserved += bytes
            return .admitted(Reservation(bytes: bytes))
        }
    }

    /// A request refused after its admission (the spool would not take it): its bytes are free again.
    package func cancel(_ reservation: Reservation) {
        state.withLock { $0.reserved -= reservation.bytes }
    }

    /// Admits `bytes` more of a request body that is still arriving (its table and priority may not be known yet).
    /// It is shed like the lowest priority: a body that has not ended is the cheapest thing to refuse, and the
    /// share above it stays free for finished requests. Returns the bytes in use when refused. The connection gives
    /// the bytes back with `releaseIncoming` when the body ends, fails or its connection closes.
    package func reserveIncoming(bytes: Int) -> Int? {
        let limit = self.limit
        return state.withLock { state in
            let inUse = state.inUse + sealedBytes
            guard AdmissionControl.admits(priority: 5, inUse: inUse, incoming: bytes, limit: limit) else { return inUse }
            state.incoming += bytes
            return nil
        }
    }

    package func releaseIncoming(bytes: Int) {
        guard bytes > 0 else { return }
        state.withLock { $0.incoming -= bytes }
    }

    // MARK: Appending

    /// Admission and append in one step (no spool write between them). Nil when refused.
    /// `contributor`: the request's identity in service-account mode (`SealedBatch.contributors`), else nil.
    package func admitAndAppend(
        key: BatchKey, rule: TableRule, chunk: UnsafeRawBufferPointer, rows: Int, endsWithNewline: Bool,
        token: UInt64, contributor: ClientIdentity? = nil
    ) -> Result<[SealedBatch], AdmissionRefusal> {
        let limit = self.limit
        let now = clock.now()
        return state.withLock { state in
            let inUse = state.inUse + sealedBytes
            guard AdmissionControl.admits(priority: rule.priority, inUse: inUse, incoming: chunk.count, limit: limit)
            else { return .failure(AdmissionRefusal(inUse: inUse)) }
            return .success(
                counted(
                    state.store.append(
                        key: key, rule: rule, chunk: chunk, rows: rows, endsWithNewline: endsWithNewline, now: now,
                        token: token, contributor: contributor)))
        }
    }

    /// Appends admitted rows (their reservation ends here). Returns the batches that must go upstream now.
    package func append(
        key: BatchKey, rule: TableRule, chunk: UnsafeRawBufferPointer, rows: Int, endsWithNewline: Bool,
        token: UInt64, spoolChunk: UInt64?, reservation: Reservation, contributor: ClientIdentity? = nil
    ) -> [SealedBatch] {
        let now = clock.now()
        return state.withLock { state in
            state.reserved -= reservation.bytes
            return counted(
                state.store.append(
                    key: key, rule: rule, chunk: chunk, rows: rows, endsWithNewline: endsWithNewline, now: now,
                    token: token, spoolChunk: spoolChunk, contributor: contributor))
        }
    }

    /// A batch of one request's rows for the `immediate` strategy (numbered like the others); its reservation
    /// becomes the sealed batch's share of the budget.
    package func single(
        key: BatchKey, rule: TableRule, chunk: UnsafeRawBufferPointer, rows: Int, endsWithNewline: Bool,
        token: UInt64, reservation: Reservation
    ) -> SealedBatch {
        let now = clock.now()
        return state.withLock { state in
            state.reserved -= reservation.bytes
            let batch = state.store.single(
                key: key, rule: rule, chunk: chunk, rows: rows, endsWithNewline: endsWithNewline, now: now, token: token)
            sealed.add(batch.data.count, ordering: .relaxed)
            return batch
        }
    }

    /// A batch of summaries an aggregate rule emitted (one window's rows), sealed at once. Its bytes are taken, not
    /// admitted: the rows they summarise were taken already, and refusing them now would lose acknowledged rows.
    package func emitted(
        key: BatchKey, rule: TableRule, chunk: UnsafeRawBufferPointer, rows: Int, token: UInt64, spoolChunk: UInt64?
    ) -> SealedBatch {
        let now = clock.now()
        return state.withLock { state in
            var batch = state.store.single(
                key: key, rule: rule, chunk: chunk, rows: rows, endsWithNewline: true, now: now, token: token,
                spoolChunk: spoolChunk)
            batch.trigger = .aggregate
            sealed.add(batch.data.count, ordering: .relaxed)
            return batch
        }
    }

    // MARK: Sealing

    /// Seals every batch whose `max_delay` has passed; returns them and the next deadline.
    package func sealDue() -> (due: [SealedBatch], next: Instant?) {
        let now = clock.now()
        return state.withLock { state in (counted(state.store.sealDue(now: now)), state.store.nextDeadline) }
    }

    /// Seals the open batches holding rows of `identity` under `read_your_writes`: a read of it waits for them.
    package func seal(holding identity: ClientIdentity) -> [SealedBatch] {
        let now = clock.now()
        return state.withLock { counted($0.store.seal(holding: identity, now: now)) }
    }

    package func sealAll(trigger: FlushTrigger) -> [SealedBatch] {
        let now = clock.now()
        return state.withLock { counted($0.store.sealAll(trigger: trigger, now: now)) }
    }

    /// New rules for open batches (hot reload); returns the batches that now meet their limits.
    package func updateRules(_ ruleFor: (BatchKey) -> TableRule) -> [SealedBatch] {
        let now = clock.now()
        return state.withLock { counted($0.store.updateRules(now: now, ruleFor)) }
    }

    /// A sealed batch's outcome is settled: its bytes leave the budget (or the backlog, if it never left the spool).
    package func release(_ batch: SealedBatch) {
        if batch.bodyInSpool {
            backlog.subtract(batch.spooledBytes, ordering: .relaxed)
        } else {
            sealed.subtract(batch.data.count, ordering: .relaxed)
        }
    }

    /// A batch from the backlog was read back (`readBack`, its rows now in `data`): its bytes move from the backlog
    /// into the budget until it is settled. They are not admitted but taken: at most two batches per delivery worker
    /// are read back at a time (docs/spool-and-acks.md, "The budget").
    package func readBack(_ original: SealedBatch, as loaded: SealedBatch) {
        backlog.subtract(original.spooledBytes, ordering: .relaxed)
        sealed.add(loaded.data.count, ordering: .relaxed)
    }

    /// The inverse of `readBack`: a batch read back goes back to the queue with its rows in the spool only.
    package func putBackUnread(_ original: SealedBatch, readAs loaded: SealedBatch) {
        sealed.subtract(loaded.data.count, ordering: .relaxed)
        backlog.add(original.spooledBytes, ordering: .relaxed)
    }

    /// Batches made from spooled chunks (at start), counted in the backlog.
    package func countBacklog(_ batches: [SealedBatch]) {
        backlog.add(batches.reduce(0) { $0 + $1.spooledBytes }, ordering: .relaxed)
    }

    /// A number for a batch made outside the store.
    package func takeBatchID() -> UInt64 { state.withLock { $0.store.takeBatchID() } }

    /// Adds freshly sealed batches to the sealed share of the budget, under the store's lock (so admission, which
    /// reads it under the same lock, never sees bytes leave the store before they arrive here). With a spool, a
    /// batch whose rows are all in it leaves memory here and counts in the backlog instead.
    private func counted(_ batches: [SealedBatch]) -> [SealedBatch] {
        guard !batches.isEmpty else { return batches }
        writes?.sealed(batches)
        guard spoolBacked else {
            sealed.add(batches.reduce(0) { $0 + $1.data.count }, ordering: .relaxed)
            return batches
        }
        var batches = batches
        var inMemory = 0
        var spooled = 0
        for index in batches.indices {
            if batches[index].isWhollySpooled {
                batches[index].moveBodyToSpool()
                spooled += batches[index].spooledBytes
            } else {
                inMemory += batches[index].data.count
            }
        }
        if inMemory > 0 { sealed.add(inMemory, ordering: .relaxed) }
        if spooled > 0 { backlog.add(spooled, ordering: .relaxed) }
        return batches
    }

    // MARK: Adaptive strategy and figures

    /// An upstream attempt's outcome, for the adaptive strategy's controllers.
    package func recordFlush(_ batch: SealedBatch, latency: Duration, result: FlushResult) {
        guard batch.rule.strategy == .adaptive else { return }
        let now = clock.now()
        state.withLock {
            $0.store.recordFlush(
                table: batch.key.qualifiedTable, rows: batch.rows, bytes: batch.data.count, latency: latency,
                result: result, now: now)
        }
    }

    package func adaptiveTargets() -> [String: AdaptiveTarget] {
        state.withLock { $0.store.adaptiveTargets() }
    }

    package func bufferedByTable() -> [String: (rows: Int, bytes: Int)] {
        state.withLock { $0.store.bufferedByTable() }
    }

    /// Rows and row bytes received per `db.table`, sealed or still open (`BatchStore.receivedByTable`).
    package func receivedByTable() -> [String: (rows: Int, bytes: Int)] {
        state.withLock { $0.store.receivedByTable() }
    }

    package func now() -> Instant { clock.now() }
}

/// Rows refused for memory: how much of the budget was taken.
package struct AdmissionRefusal: Error, Sendable {
    package var inUse: Int
}
