import BatchhouseCore
import BatchhouseUpstream
import Foundation
import Synchronization

/// Sends sealed batches upstream: a queue with one FIFO per priority, at most `max_concurrent_flushes` batches
/// in flight, and per batch the attempts, retries and bad-row splitting that the core's `DeliveryPolicy`
/// decides. Every outcome goes to `Settlement`; nothing here touches the spool, acks or metrics
/// (docs/architecture.md, "Delivery").
package final class Delivery: Sendable {
    private struct State: Sendable {
        var queue = PriorityQueue<SealedBatch>()
        var waiters: [CheckedContinuation<SealedBatch?, Never>] = []
        var closed = false
    }

    private let state = Mutex(State())
    private let gateway: UpstreamGateway
    private let settlement: Settlement
    private let clock: any EngineClock
    /// A value in 0...1 for each backoff's jitter.
    private let jitter: @Sendable () -> Double
    private let concurrency: Int
    /// With a spool, transport failures are retried until delivered (see `DeliveryPolicy.retryUntilDelivered`).
    private let retryUntilDelivered: Bool
    /// Ids for the halves of split batches; far above the store's own numbering.
    package static let firstPartID: UInt64 = 1 << 48
    private let nextPartID = Atomic<UInt64>(Delivery.firstPartID)

    package init(
        gateway: UpstreamGateway, settlement: Settlement, clock: any EngineClock, concurrency: Int,
        retryUntilDelivered: Bool, jitter: @escaping @Sendable () -> Double = { Double.random(in: 0...1) }
    ) {
        self.gateway = gateway
        self.settlement = settlement
        self.clock = clock
        self.concurrency = max(1, concurrency)
        self.retryUntilDelivered = retryUntilDelivered
        self.jitter = jitter
    }

    // MARK: Queue

    package func submit(_ batch: SealedBatch) {
        let waiter: CheckedContinuation<SealedBatch?, Never>? = state.withLock { state in
            if !state.waiters.isEmpty { return state.waiters.removeFirst() }
            state.queue.push(batch, priority: batch.rule.priority)
            return nil
        }
        waiter?.resume(returning: batch)
    }

    package func submit(_ batches: [SealedBatch]) {
        for batch in batches { submit(batch) }
    }

    /// Batches waiting for a worker.
    package var queuedBatches: Int { state.withLock { $0.queue.count } }

    private var isClosed: Bool { state.withLock { $0.closed } }

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
                if let batch = state.queue.pop() { return .some(batch) }
                if state.closed { return .some(nil) }
                state.waiters.append(continuation)
                return nil
            }
            if let immediate { continuation.resume(returning: immediate) }
        }
    }

    private func work() async {
        while let batch = await next() {
            settlement.settle(await deliver(batch))
        }
    }

    // MARK: One batch

    /// One batch, with retries and bad-row isolation: a batch ClickHouse refuses for its data is split in
    /// halves until the rows it objects to are alone; the rest lands, those go to the dead-letter folder.
    package func deliver(_ batch: SealedBatch) async -> FlushReport {
        var report = FlushReport(batch: batch)
        await isolate(batch, original: batch, into: &report)
        return report
    }

    private func isolate(_ part: SealedBatch, original: SealedBatch, into report: inout FlushReport) async {
        switch await attempt(part) {
        case .landed:
            report.landedRows += part.rows
        case .split(let response, let attempts):
            if let (first, second) = halves(of: part) {
                settlement.splitting(part, error: Self.text(response))
                await isolate(first, original: original, into: &report)
                await isolate(second, original: original, into: &report)
            } else {
                let written = settlement.deadLetter(
                    part, of: original, attempts: attempts, error: Self.text(response), status: response.status)
                report.failures.append(.init(part: part, reason: .rejected(response), keptInSpool: !written))
            }
        case .rejected(let response, let attempts):
            let written = settlement.deadLetter(
                part, of: original, attempts: attempts, error: Self.text(response), status: response.status)
            report.failures.append(.init(part: part, reason: .rejected(response), keptInSpool: !written))
        case .failed(let error, let attempts):
            let written = settlement.deadLetter(
                part, of: original, attempts: attempts, error: "\(error.kind): \(error.message)", status: nil)
            report.failures.append(.init(part: part, reason: .failed(error), keptInSpool: !written))
        case .deferred(let error):
            settlement.deferred(part)
            report.failures.append(.init(part: part, reason: .deferred(error)))
        }
    }

    private func halves(of part: SealedBatch) -> (SealedBatch, SealedBatch)? {
        let first = nextPartID.add(2, ordering: .relaxed).oldValue
        return BatchSplitter.halves(of: part, firstID: first, secondID: first + 1)
    }

    private enum AttemptOutcome {
        case landed
        /// Refused for its data: halve it.
        case split(UpstreamResponse, attempts: Int)
        /// Refused for good, or retries ran out with an error answer.
        case rejected(UpstreamResponse, attempts: Int)
        case failed(UpstreamError, attempts: Int)
        case deferred(UpstreamError?)
    }

    private static func text(_ response: UpstreamResponse) -> String {
        String(decoding: response.body.readableBytesView.prefix(2000), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Sends `part` until the policy says it landed, must be split, dead-lettered or deferred.
    private func attempt(_ part: SealedBatch) async -> AttemptOutcome {
        let policy = DeliveryPolicy(rule: part.rule, retryUntilDelivered: retryUntilDelivered)
        let request = BatchRequest(part)
        let started = clock.now()
        var attempt = 0
        var lastServer: Int?
        var lastError: UpstreamError?
        while true {
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
                return .deferred(error)
            case (.deferToSpool, _):
                return .deferred(lastError)
            case (.retry(let backoff), _):
                let failure: String
                switch result {
                case .success(let response): failure = Self.text(response)
                case .failure(let error): failure = "\(error.kind): \(error.message)"
                }
                settlement.retrying(part, attempt: attempt, backoff: backoff, error: failure)
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

/// One FIFO per priority 1...5; `pop` takes from the highest priority that has anything.
package struct PriorityQueue<Element: Sendable>: Sendable {
    private var queues: [[Element]] = Array(repeating: [], count: 5)
    private var heads: [Int] = Array(repeating: 0, count: 5)
    package private(set) var count = 0

    package init() {}

    package mutating func push(_ element: Element, priority: Int) {
        queues[min(max(priority, 1), 5) - 1].append(element)
        count += 1
    }

    package mutating func pop() -> Element? {
        for priority in 0..<5 where heads[priority] < queues[priority].count {
            let element = queues[priority][heads[priority]]
            heads[priority] += 1
            // Compact now and then instead of removing from the front every time.
            if heads[priority] > 64 && heads[priority] * 2 > queues[priority].count {
                queues[priority].removeFirst(heads[priority])
                heads[priority] = 0
            }
            count -= 1
            return element
        }
        return nil
    }
}
