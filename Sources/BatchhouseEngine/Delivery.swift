import BatchhouseCore
import BatchhouseSpool
import BatchhouseUpstream
import Foundation
import Synchronization

/// Sends sealed batches upstream: a queue per priority, fair across tables, at most `max_concurrent_flushes` batches
/// in flight, and per batch the attempts, retries and bad-row splitting that the core's `DeliveryPolicy`
/// decides. Every outcome goes to `Settlement`; nothing here touches the spool, acks or metrics
/// (docs/architecture.md, "Delivery").
package final class Delivery: Sendable {
    private struct State: Sendable {
        var queue = PriorityQueue<SealedBatch>()
        /// Batches that a helping send found refused whole for their data: taken by the next worker that is free,
        /// before the queue, and never by a helper (see `helpOneWaiting`).
        var parked = Fifo<SealedBatch>()
        var waiters: [CheckedContinuation<SealedBatch?, Never>] = []
        var closed = false
    }

    private let state = Mutex(State())
    private let gateway: UpstreamGateway
    private let settlement: Settlement
    /// With a spool: batches in the backlog are read back from it, each batch is recorded as being sent before
    /// it goes, and is sent with `log_queries=1` so its outcome can be asked for (docs/spool-and-acks.md).
    private let spool: Spool?
    /// Makes query ids unique to this process: batch ids restart at 1 with every start.
    package let instance: String
    private let clock: any EngineClock
    /// A value in 0...1 for each backoff's jitter.
    private let jitter: @Sendable () -> Double
    private let concurrency: Int
    /// With a spool, transport failures are retried until delivered (see `DeliveryPolicy.retryUntilDelivered`).
    private let retryUntilDelivered: Bool
    /// Ids for the halves of split batches; far above the store's own numbering.
    package static let firstPartID: UInt64 = 1 << 48
    private let nextPartID = Atomic<UInt64>(Delivery.firstPartID)
    /// Told of a RowBinary batch that ClickHouse refused: the table's columns may have changed since the rows were
    /// read, so they are described again before the next request's rows are (`TableSchemas.forget`).
    private let refusedBinaryBatch: @Sendable (BatchKey) -> Void
    /// The refusals of parked batches, by id: the worker that takes one as its own starts its split with this answer
    /// instead of sending it whole again (see `helpOneWaiting`).
    private let refusedWhole = Mutex<[UInt64: (response: UpstreamResponse, attempts: Int)]>([:])

    package init(
        gateway: UpstreamGateway, settlement: Settlement, clock: any EngineClock, concurrency: Int,
        retryUntilDelivered: Bool, spool: Spool? = nil,
        instance: String = String(UInt64.random(in: 0...UInt64.max), radix: 36),
        jitter: @escaping @Sendable () -> Double = { Double.random(in: 0...1) },
        refusedBinaryBatch: @escaping @Sendable (BatchKey) -> Void = { _ in }
    ) {
        self.refusedBinaryBatch = refusedBinaryBatch
        self.gateway = gateway
        self.settlement = settlement
        self.spool = spool
        self.instance = instance
        self.clock = clock
        self.concurrency = max(1, concurrency)
        self.retryUntilDelivered = retryUntilDelivered
        self.jitter = jitter
    }

    // MARK: Queue

    package func submit(_ batch: SealedBatch) {
        let waiter: CheckedContinuation<SealedBatch?, Never>? = state.withLock { state in
            if !state.waiters.isEmpty { return state.waiters.removeFirst() }
            state.queue.push(batch, priority: batch.rule.priority, lane: Self.lane(of: batch))
            return nil
        }
        waiter?.resume(returning: batch)
    }

    /// What the queue is fair across: the batch's table, as the client named it.
    static func lane(of batch: SealedBatch) -> String {
        (batch.key.database.map { $0 + "." } ?? "") + batch.key.table
    }

    package func submit(_ batches: [SealedBatch]) {
        for batch in batches { submit(batch) }
    }

    /// Batches waiting for a worker.
    package var queuedBatches: Int { state.withLock { $0.queue.count + $0.parked.count } }

    /// A batch refused whole by a helping send: for the next free worker, or the first idle one.
    private func park(_ batch: SealedBatch) {
        let waiter: CheckedContinuation<SealedBatch?, Never>? = state.withLock { state in
            if !state.waiters.isEmpty { return state.waiters.removeFirst() }
            state.parked.append(batch)
            return nil
        }
        waiter?.resume(returning: batch)
    }

    package var isClosed: Bool { state.withLock { $0.closed } }

    /// Runs the workers until `close()` was called and the queue is empty.
    package func run() async {
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<concurrency {
                group.addTask { await self.work() }
            }
        }
    }

    /// No more batches will come: the workers send what is queued, then `run()` returns.
    package func close() {
        let waiters = state.withLock { state in
            state.closed = true
            let waiting = state.waiters
            state.waiters.removeAll()
            return waiting
        }
        for waiter in waiters { waiter.resume(returning: nil) }
    }

    private func next() async -> SealedBatch? {
        await withCheckedContinuation { (continuation: CheckedContinuation<SealedBatch?, Never>) in
            let immediate: SealedBatch?? = state.withLock { state in
                if let batch = state.parked.popFirst() ?? state.queue.pop() { return .some(batch) }
                if state.closed { return .some(nil) }
                state.waiters.append(continuation)
                return nil
            }
            if let immediate { continuation.resume(returning: immediate) }
        }
    }

    private func work() async {
        while let batch = await next() {
            let started = clock.now()
            if case .settled(let report) = await deliverQueued(batch) {
                settlement.settle(report, deliveryStartedAt: started)
            }
        }
    }

    /// A batch waiting in the queue, if any; never waits.
    private func takeWaiting() -> SealedBatch? {
        state.withLock { $0.queue.pop() }
    }

    /// How a worker sends a batch (docs/delivery.md, "Splitting to isolate bad rows").
    package enum Mode: Sendable {
        /// Its own batch, from the queue: while splitting it, the worker sends one waiting batch before each half.
        case own
        /// A waiting batch sent between two halves of another: it does not help in turn; if its first attempt must
        /// be retried (and surely did not land) it goes back to the queue, and if it is refused whole for its data
        /// it is parked, instead of holding up the split.
        case helping
    }

    /// Between two steps of a split, a worker first sends one batch that waits in the queue, so that a table whose
    /// rows ClickHouse refuses cannot hold every worker while other tables wait. A helping send gets one attempt:
    /// refused whole for its data, the batch is parked for a worker of its own to split (which helps in turn), and
    /// the helper goes on helping; so a helper does not split in full without helping (except a batch with a
    /// damaged spool record, settled in place). After a batch that must be retried (put back in the queue), the
    /// worker stops helping for the rest of this split.
    private func helpOneWaiting(_ helping: inout Bool) async {
        guard helping, let waiting = takeWaiting() else { return }
        let started = clock.now()
        switch await deliverQueued(waiting, mode: .helping) {
        case .settled(let report): settlement.settle(report, deliveryStartedAt: started)
        case .putBack(let keepHelping): helping = keepHelping
        }
    }

    /// What became of a batch taken from the queue.
    package enum QueuedOutcome: Sendable {
        case settled(FlushReport)
        /// It went back to the queue. `keepHelping`: it was refused whole for its data and parked, its split left to
        /// a worker of its own; otherwise it must be retried or read again, and a helping worker stops helping.
        case putBack(keepHelping: Bool)
    }

    /// The query id of batch `id`, made unique to this process.
    package func queryID(for id: UInt64) -> String { "batchhouse-\(instance)-\(id)" }

    /// A batch from the queue: its rows read back from the spool first if they are there. Put back in the queue
    /// when the spool could not be read for now (a failed system call, not damage; after a pause unless
    /// `helping`), or when a `helping` send must be retried; parked when a `helping` send is refused whole.
    package func deliverQueued(_ queued: SealedBatch, mode: Mode = .own) async -> QueuedOutcome {
        var batch = queued
        if batch.queryID == nil { batch.queryID = queryID(for: batch.id) }
        guard batch.bodyInSpool, let spool else { return await deliver(batch, mode: mode) }
        // Shutting down with the upstream unwell: the rows wait in the spool for the next start, unread.
        if isClosed && gateway.isDegraded { return .settled(deferUnread(batch)) }
        let read = spool.readChunks(batch.spooled.chunks)
        if !read.failed.isEmpty {
            settlement.readBackFailed(batch, reason: read.failed.values.first ?? "")
            if mode == .helping {
                requeue(queued)
                return .putBack(keepHelping: false)
            }
            await pause(for: .seconds(1))
            if isClosed { return .settled(deferUnread(batch)) }
            requeue(queued)
            return .putBack(keepHelping: false)
        }
        let (loaded, lost) = Self.readBack(batch, read)
        settlement.readBack(batch, as: loaded, lost: lost)
        // A refusal of the whole batch says nothing about what is left of it: that is sent again.
        if lost != nil { forgetRefusal(of: batch.id) }
        guard loaded.rows > 0 || lost == nil else {
            return .settled(FlushReport(batch: loaded, failures: lost.map { [$0] } ?? []))
        }
        // With a part unreadable, the batch is settled in place (never put back), so that the part is settled with it.
        let outcome = await deliver(loaded, mode: mode, inPlace: lost != nil, unread: queued)
        guard case .settled(var report) = outcome else { return outcome }
        if let lost { report.failures.append(lost) }
        return .settled(report)
    }

    /// A batch left in the spool unread at shutdown. The report answers whoever waits for its rows, so it needs them
    /// as contributions again. Not sent by this process: a `sending` record it has (a batch in doubt from before)
    /// stays as it is.
    private func deferUnread(_ batch: SealedBatch) -> FlushReport {
        forgetRefusal(of: batch.id)
        var batch = batch
        batch.contributions = batch.spooled.expanded
        settlement.deferred(batch, mayHaveLanded: true)
        return FlushReport(batch: batch, failures: [.init(part: batch, reason: .deferred(nil))])
    }

    /// `batch`'s rows from its spool chunks, joined as they were when it was sealed. Chunks whose record cannot be
    /// read back (damaged on disk since) are left out and returned as a failed part of their own.
    package static func readBack(_ batch: SealedBatch, _ read: SpoolReadOutcome) -> (SealedBatch, FlushReport.Failure?) {
        let spooled = batch.spooled
        var buffer = BatchBuffer(format: batch.key.format, header: batch.key.header, reservingCapacity: batch.spooledBytes)
        var lostContributions: [Contribution] = []
        var reasons: [String] = []
        for (index, chunk) in spooled.chunks.enumerated() {
            guard let body = read.bodies[chunk] else {
                lostContributions.append(
                    Contribution(token: spooled.token(at: index), spoolChunk: chunk, range: 0..<0, rows: spooled.rows(at: index)))
                if let reason = read.unreadable[chunk] { reasons.append(reason) }
                continue
            }
            body.data.withUnsafeBytes {
                buffer.append(
                    $0, rows: spooled.rows(at: index), endsWithNewline: body.endsWithNewline,
                    token: spooled.token(at: index), spoolChunk: chunk)
            }
        }
        var loaded = batch
        loaded.spooled = SpooledContributions()
        loaded.bodyInSpool = false
        loaded.spooledBytes = 0
        loaded.data = buffer.data
        loaded.rows = buffer.rows
        loaded.requests = buffer.requests
        loaded.contributions = buffer.contributions
        guard !lostContributions.isEmpty else { return (loaded, nil) }
        var lost = batch
        lost.spooled = SpooledContributions()
        lost.bodyInSpool = false
        lost.spooledBytes = 0
        lost.data = []
        lost.contributions = lostContributions
        lost.rows = lostContributions.reduce(0) { $0 + $1.rows }
        lost.requests = lostContributions.count
        let reason = "\(lostContributions.count) spool record(s) unreadable: " + reasons.prefix(3).joined(separator: "; ")
        return (loaded, .init(part: lost, reason: .unreadable(reason)))
    }

    // MARK: One batch

    /// One batch, with retries and bad-row isolation: a batch ClickHouse refuses for its data is split in
    /// halves until the rows it objects to are alone; the rest lands, those go to the dead-letter folder. Before
    /// each half, one batch waiting in the queue is sent first (see `helpOneWaiting`).
    package func deliver(_ batch: SealedBatch) async -> FlushReport {
        let batch = recorded(batch)
        var report = FlushReport(batch: batch)
        var helping = true
        if let refused = refusedWhole.withLock({ $0.removeValue(forKey: batch.id) }) {
            // A helping send found it refused whole: split it without sending it whole again.
            await handle(
                .split(refused.response, attempts: refused.attempts), of: batch, original: batch, into: &report,
                helping: &helping)
        } else {
            await isolate(batch, original: batch, into: &report, helping: &helping)
        }
        return report
    }

    /// `deliver` in either mode. A `helping` send that must be retried goes back to the queue, and one that
    /// ClickHouse refused whole for its data is parked, unless `inPlace`. `unread`: the batch as it was queued, its
    /// rows in the spool; put back so, its rows leave memory until a worker reads them again, so that helps cannot
    /// pull a backlog into memory (docs/spool-and-acks.md, "The budget").
    private func deliver(
        _ batch: SealedBatch, mode: Mode, inPlace: Bool = false, unread: SealedBatch? = nil
    ) async -> QueuedOutcome {
        guard mode == .helping else { return .settled(await deliver(batch)) }
        let batch = recorded(batch)
        let outcome = await attempt(batch, putBackOnRetry: !inPlace)
        switch outcome {
        case .putBack:
            submit(putBackForm(of: batch, unread: unread))
            return .putBack(keepHelping: false)
        case .split(let response, let attempts) where !inPlace:
            if batch.key.format.needsTableColumns { refusedBinaryBatch(batch.key) }
            refusedWhole.withLock { $0[batch.id] = (response, attempts) }
            park(putBackForm(of: batch, unread: unread))
            return .putBack(keepHelping: true)
        default:
            var report = FlushReport(batch: batch)
            var helping = false
            await handle(outcome, of: batch, original: batch, into: &report, helping: &helping)
            return .settled(report)
        }
    }

    /// What goes back to the queue of a batch a helper sent: its unread form when it came from the spool (its
    /// bytes leave the budget for the backlog again), else the batch itself.
    private func putBackForm(of batch: SealedBatch, unread: SealedBatch?) -> SealedBatch {
        guard let unread else { return batch }
        settlement.putBackUnread(unread, readAs: batch)
        return unread
    }

    /// Back to the queue; parked if a helper found it refused whole, so that no helper sends it whole again.
    private func requeue(_ batch: SealedBatch) {
        if refusedWhole.withLock({ $0[batch.id] != nil }) {
            park(batch)
        } else {
            submit(batch)
        }
    }

    private func forgetRefusal(of id: UInt64) {
        _ = refusedWhole.withLock { $0.removeValue(forKey: id) }
    }

    /// `batch` with its query id, recorded in the spool as being sent (docs/spool-and-acks.md, "Exactly once").
    private func recorded(_ batch: SealedBatch) -> SealedBatch {
        var batch = batch
        if batch.queryID == nil { batch.queryID = queryID(for: batch.id) }
        if let spool, let queryID = batch.queryID, batch.id < Self.firstPartID {
            let chunks = batch.contributions.compactMap(\.spoolChunk)
            if !chunks.isEmpty && !spool.recordSending(queryID: queryID, batch: batch.id, chunks: chunks) {
                settlement.sendingNotRecorded(batch)
            }
        }
        return batch
    }

    private func isolate(
        _ part: SealedBatch, original: SealedBatch, into report: inout FlushReport, helping: inout Bool
    ) async {
        await handle(await attempt(part), of: part, original: original, into: &report, helping: &helping)
    }

    private func handle(
        _ outcome: AttemptOutcome, of part: SealedBatch, original: SealedBatch, into report: inout FlushReport,
        helping: inout Bool
    ) async {
        switch outcome {
        case .landed:
            report.landedRows += part.rows
        case .putBack:
            // Only a helping send's first attempt ends so, and `deliver(_:mode:)` takes care of it: send in place.
            await isolate(part, original: original, into: &report, helping: &helping)
        case .split(let response, let attempts):
            if part.key.format.needsTableColumns { refusedBinaryBatch(part.key) }
            if let (first, second) = halves(of: part) {
                settlement.splitting(part, error: Self.text(response))
                await helpOneWaiting(&helping)
                await isolate(first, original: original, into: &report, helping: &helping)
                await helpOneWaiting(&helping)
                await isolate(second, original: original, into: &report, helping: &helping)
            } else {
                let written = settlement.deadLetter(
                    part, of: original, attempts: attempts, error: Self.text(response), status: response.status)
                report.failures.append(.init(part: part, reason: .rejected(response), keptInSpool: !written))
            }
        case .rejected(let response, let attempts):
            if part.key.format.needsTableColumns { refusedBinaryBatch(part.key) }
            let written = settlement.deadLetter(
                part, of: original, attempts: attempts, error: Self.text(response), status: response.status)
            report.failures.append(.init(part: part, reason: .rejected(response), keptInSpool: !written))
        case .failed(let error, let attempts):
            let written = settlement.deadLetter(
                part, of: original, attempts: attempts, error: "\(error.kind): \(error.message)", status: nil)
            report.failures.append(.init(part: part, reason: .failed(error), keptInSpool: !written))
        case .deferred(let error, let mayHaveLanded):
            settlement.deferred(part, mayHaveLanded: mayHaveLanded)
            report.failures.append(.init(part: part, reason: .deferred(error)))
        }
    }

    private func halves(of part: SealedBatch) -> (SealedBatch, SealedBatch)? {
        let first = nextPartID.add(2, ordering: .relaxed).oldValue
        guard var (one, two) = BatchSplitter.halves(of: part, firstID: first, secondID: first + 1) else { return nil }
        one.queryID = queryID(for: one.id)
        two.queryID = queryID(for: two.id)
        return (one, two)
    }

    private enum AttemptOutcome {
        case landed
        /// Refused for its data: halve it.
        case split(UpstreamResponse, attempts: Int)
        /// Refused for good, or retries ran out with an error answer.
        case rejected(UpstreamResponse, attempts: Int)
        case failed(UpstreamError, attempts: Int)
        /// `mayHaveLanded`: an attempt got no answer, so the next start must ask before sending it again.
        case deferred(UpstreamError?, mayHaveLanded: Bool)
        /// Asked for with `putBackOnRetry`: the first attempt must be retried, and surely did not land.
        case putBack
    }

    private static func text(_ response: UpstreamResponse) -> String {
        String(decoding: response.body.readableBytesView.prefix(2000), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Sends `part` until the policy says it landed, must be split, dead-lettered or deferred.
    private func attempt(_ part: SealedBatch, putBackOnRetry: Bool = false) async -> AttemptOutcome {
        let policy = DeliveryPolicy(rule: part.rule, retryUntilDelivered: retryUntilDelivered)
        let request = BatchRequest(part, logQueries: spool != nil)
        let started = clock.now()
        var attempt = 0
        var lastServer: Int?
        var lastError: UpstreamError?
        // The last attempt may have reached ClickHouse without an answer coming back (a timeout, a reset): before
        // sending the rows again, ask whether that query finished (docs/spool-and-acks.md, "Exactly once").
        var unsure = false
        // Some attempt may have landed and no answer since says it did not: a deferral must leave the batch in doubt.
        var mayHaveLanded = false
        // When the first of those attempts went out: a server that started after it may have lost its log entry.
        var firstUnanswered: Instant?
        while true {
            if unsure, let queryID = part.queryID {
                switch await settledUpstream(queryID: queryID, part: part, firstSent: firstUnanswered ?? started) {
                case .finished:
                    settlement.landed(
                        part, whole: part.id < Self.firstPartID, attempts: attempt, elapsed: clock.now() - started)
                    return .landed
                case .send(let definitive):
                    unsure = false
                    if definitive {
                        mayHaveLanded = false
                        firstUnanswered = nil
                    }
                case .unreachable:
                    // Sending now could land the rows a second time: wait until the question can be answered.
                    if isClosed { return .deferred(lastError, mayHaveLanded: true) }
                    await pause(for: DeliveryPolicy.backoff(base: part.rule.retryBackoff, attempt: attempt, jitter: jitter()))
                    attempt += 1
                    continue
                }
            }
            let result: Result<UpstreamResponse, UpstreamError>
            let attemptStarted = clock.now()
            do {
                let (response, server) = try await gateway.send(request, avoiding: lastServer)
                lastServer = server
                result = .success(response)
            } catch {
                result = .failure(error)
            }
            let answer = result.answer
            settlement.attempted(part, latency: clock.now() - attemptStarted, answer: answer)
            if case .failure(let error) = result, error.kind != .cancelled { lastError = error }
            if spool != nil, case .failure(let error) = result, error.kind == .timeout || error.kind == .transport {
                unsure = true
                mayHaveLanded = true
                if firstUnanswered == nil { firstUnanswered = attemptStarted }
            }
            let decision = policy.decide(answer, attempt: attempt, closing: isClosed, jitter: jitter())
            switch (decision, result) {
            case (.landed, _):
                settlement.landed(
                    part, whole: part.id < Self.firstPartID, attempts: attempt + 1, elapsed: clock.now() - started)
                return .landed
            case (.split, .success(let response)):
                settlement.failed(part, elapsed: clock.now() - started)
                return .split(response, attempts: attempt + 1)
            case (.deadLetter, .success(let response)):
                settlement.failed(part, elapsed: clock.now() - started)
                return .rejected(response, attempts: attempt + 1)
            case (.deadLetter, .failure(let error)):
                if error.kind != .cancelled { settlement.failed(part, elapsed: clock.now() - started) }
                return .failed(error, attempts: attempt + 1)
            case (.deferToSpool, .failure(let error)) where error.kind == .cancelled:
                return .deferred(error, mayHaveLanded: true)
            case (.deferToSpool, _):
                return .deferred(lastError, mayHaveLanded: mayHaveLanded)
            case (.retry(let backoff), _):
                let failure: String
                switch result {
                case .success(let response): failure = Self.text(response)
                case .failure(let error): failure = "\(error.kind): \(error.message)"
                }
                settlement.retrying(part, attempt: attempt, backoff: backoff, error: failure)
                // Sure not to have landed (an answer, or no connection): another worker can take it from the start.
                if putBackOnRetry && !mayHaveLanded { return .putBack }
                await pause(for: backoff)
                attempt += 1
            case (.split, .failure(let error)):
                // The policy splits only on error responses; a failure without one is dead-lettered.
                return .failed(error, attempts: attempt + 1)
            }
        }
    }
}

extension Delivery {
    fileprivate enum UpstreamKnowledge {
        /// The query finished: the rows are in.
        case finished
        /// It did not finish (`definitive`), or it cannot be told: send the rows.
        case send(definitive: Bool)
        /// No server answered: ask again before the next attempt.
        case unreachable
    }

    /// Whether the query sent for `part` finished upstream; waits while it still runs.
    fileprivate func settledUpstream(queryID: String, part: SealedBatch, firstSent: Instant) async -> UpstreamKnowledge {
        while true {
            switch await gateway.queryOutcome(queryID: queryID, identity: part.key.identity, firstSent: firstSent) {
            case .finished:
                settlement.foundFinished(part, queryID: queryID)
                return .finished
            case .failed, .absent:
                return .send(definitive: true)
            case .unknown(let reason):
                settlement.outcomeUnknown(part, queryID: queryID, reason: reason)
                return .send(definitive: false)
            case .unreachable:
                return .unreachable
            case .running:
                if isClosed { return .unreachable }
                await clock.sleep(for: .seconds(1))
            }
        }
    }

    /// A retry's backoff, cut short when a server that was down answers `/ping` again.
    fileprivate func pause(for backoff: Duration) async {
        let clock = self.clock
        let recovered = gateway.recovered
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await clock.sleep(for: backoff) }
            group.addTask { await recovered.wait() }
            await group.next()
            group.cancelAll()
        }
    }
}

/// The batches of one priority, fair across lanes (tables): each lane is a FIFO, and `pop` serves the lanes in
/// turn, one batch each, so a table with a backlog of batches cannot keep another table's batch waiting behind all
/// of them. A new lane (a table not served in the last round) is served before the lanes that wait in turn, as
/// FQ-CoDel serves new flows first: a table that sends one batch now and then goes ahead of a backlog
/// (docs/delivery.md, "The queue and the workers").
package struct FairQueue<Element: Sendable>: Sendable {
    /// A lane stays here, possibly empty, while it is on one of the two lists.
    private var lanes: [String: Fifo<Element>] = [:]
    /// Lanes that were new when their first batch came, in the order they came: served first.
    private var fresh = Fifo<String>()
    /// Lanes that were served: served in turn after the fresh ones. A lane is dropped when its turn finds it empty,
    /// so a table that sends one batch at a time is fresh only once per round and cannot keep the others waiting.
    private var waiting = Fifo<String>()
    package private(set) var count = 0

    package init() {}

    package mutating func push(_ element: Element, lane: String) {
        if lanes[lane] == nil { fresh.append(lane) }
        lanes[lane, default: Fifo()].append(element)
        count += 1
    }

    package mutating func pop() -> Element? {
        while let lane = fresh.popFirst() ?? waiting.popFirst() {
            guard let element = lanes[lane]?.popFirst() else {
                lanes[lane] = nil
                continue
            }
            waiting.append(lane)
            count -= 1
            return element
        }
        return nil
    }
}

/// An array read from a moving head, compacted now and then instead of removing from the front every time.
fileprivate struct Fifo<Element: Sendable>: Sendable {
    private var elements: [Element] = []
    private var head = 0

    var isEmpty: Bool { head == elements.count }
    var count: Int { elements.count - head }

    mutating func append(_ element: Element) { elements.append(element) }

    mutating func popFirst() -> Element? {
        guard head < elements.count else { return nil }
        let element = elements[head]
        head += 1
        if head == elements.count {
            elements.removeAll()
            head = 0
        } else if head > 64 && head * 2 > elements.count {
            elements.removeFirst(head)
            head = 0
        }
        return element
    }
}

/// One `FairQueue` per priority 1...5; `pop` takes from the highest priority that has anything.
package struct PriorityQueue<Element: Sendable>: Sendable {
    private var queues = Array(repeating: FairQueue<Element>(), count: 5)
    package private(set) var count = 0

    package init() {}

    /// `lane`: what the queue is fair across (Delivery passes the table).
    package mutating func push(_ element: Element, priority: Int, lane: String = "") {
        queues[min(max(priority, 1), 5) - 1].push(element, lane: lane)
        count += 1
    }

    package mutating func pop() -> Element? {
        for priority in 0..<5 where queues[priority].count > 0 {
            count -= 1
            return queues[priority].pop()
        }
        return nil
    }
}
