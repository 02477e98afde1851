import BatchhouseCore
import Synchronization

/// The shared `BatchStore` behind a lock, plus the global memory limit. Event loops append to it;
/// the flush scheduler seals due batches; sealed batches go to the `Flusher`.
final class Batcher: Sendable {
    enum AppendResult: Sendable {
        case accepted
        case overMemoryLimit(bufferedBytes: Int)
    }

    private let store: Mutex<BatchStore>
    private let flusher: Flusher
    private let clock: any NowProvider
    private let maxBufferMemory: Atomic<Int>

    init(flusher: Flusher, clock: any NowProvider, maxBufferMemory: Int) {
        self.store = Mutex(BatchStore())
        self.flusher = flusher
        self.clock = clock
        self.maxBufferMemory = Atomic(maxBufferMemory)
    }

    func setMaxBufferMemory(_ bytes: Int) { maxBufferMemory.store(bytes, ordering: .relaxed) }

    /// Rows in open batches plus bytes of sealed batches not yet in ClickHouse.
    var memoryInUse: Int { store.withLock { $0.bufferedBytes } + flusher.queuedBytes }

    var bufferedRows: Int { store.withLock { $0.bufferedRows } }
    var bufferedBytes: Int { store.withLock { $0.bufferedBytes } }

    func append(
        key: BatchKey, rule: TableRule, chunk: UnsafeRawBufferPointer, rows: Int, endsWithNewline: Bool,
        token: UInt64 = 0, spoolChunk: UInt64? = nil, ignoringMemoryLimit: Bool = false
    ) -> AppendResult {
        let limit = maxBufferMemory.load(ordering: .relaxed)
        let queued = flusher.queuedBytes
        let now = clock.now()
        let outcome: (sealed: [SealedBatch], refusedAt: Int?) = store.withLock { store in
            let inUse = store.bufferedBytes + queued
            if !ignoringMemoryLimit
                && !AdmissionControl.admits(priority: rule.priority, inUse: inUse, incoming: chunk.count, limit: limit)
            {
                return ([], inUse)
            }
            let sealed = store.append(
                key: key, rule: rule, chunk: chunk, rows: rows, endsWithNewline: endsWithNewline, now: now,
                token: token, spoolChunk: spoolChunk)
            return (sealed, nil)
        }
        if let refusedAt = outcome.refusedAt { return .overMemoryLimit(bufferedBytes: refusedAt) }
        for batch in outcome.sealed { flusher.submit(batch) }
        return .accepted
    }

    /// A batch of one request's rows for the `immediate` strategy (numbered like the others).
    func single(
        key: BatchKey, rule: TableRule, chunk: UnsafeRawBufferPointer, rows: Int, endsWithNewline: Bool,
        token: UInt64 = 0
    ) -> SealedBatch {
        let now = clock.now()
        return store.withLock {
            $0.single(
                key: key, rule: rule, chunk: chunk, rows: rows, endsWithNewline: endsWithNewline, now: now, token: token)
        }
    }

    /// Seals and submits every batch whose `max_delay` has passed; returns the next deadline.
    @discardableResult
    func flushDue() -> Instant? {
        let now = clock.now()
        let (due, next) = store.withLock { store in (store.sealDue(now: now), store.nextDeadline) }
        for batch in due { flusher.submit(batch) }
        return next
    }

    func flushAll(trigger: FlushTrigger) {
        let now = clock.now()
        let all = store.withLock { $0.sealAll(trigger: trigger, now: now) }
        for batch in all { flusher.submit(batch) }
    }

    func updateRules(_ ruleFor: (BatchKey) -> TableRule) {
        let now = clock.now()
        let sealed = store.withLock { $0.updateRules(now: now, ruleFor) }
        for batch in sealed { flusher.submit(batch) }
    }

    /// An upstream attempt's outcome, for the adaptive strategy's controllers.
    func recordFlush(_ batch: SealedBatch, latency: Duration, result: FlushResult) {
        guard batch.rule.strategy == .adaptive else { return }
        let now = clock.now()
        store.withLock {
            $0.recordFlush(
                table: batch.key.qualifiedTable, rows: batch.rows, bytes: batch.data.count, latency: latency,
                result: result, now: now)
        }
    }

    func adaptiveTargets() -> [String: AdaptiveTarget] {
        store.withLock { $0.adaptiveTargets() }
    }

    func bufferedByTable() -> [String: (rows: Int, bytes: Int)] {
        store.withLock { $0.bufferedByTable() }
    }

    func now() -> Instant { clock.now() }
}
