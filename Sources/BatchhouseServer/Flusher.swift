import BatchhouseCore
import BatchhouseUpstream
import Foundation
import Logging
import NIOCore
import Synchronization

/// How a batch ended.
enum FlushOutcome: Sendable {
    /// ClickHouse accepted it.
    case inserted(UpstreamResponse)
    /// ClickHouse refused it for good (4xx, or an error about the data); it is in the dead-letter folder.
    case rejected(UpstreamResponse)
    /// No answer after every retry; it is in the dead-letter folder.
    case failed(UpstreamError)
}

/// Sends sealed batches upstream: at most `max_concurrent_flushes` at once, higher priority first,
/// retries with jittered exponential backoff, dead letters for what cannot be delivered.
final class Flusher: Sendable {
    typealias Completion = @Sendable (FlushOutcome) -> Void

    struct Job: Sendable {
        var batch: SealedBatch
        var completion: Completion?
    }

    private struct State: Sendable {
        /// One FIFO per priority 1...5.
        var queues: [[Job]] = Array(repeating: [], count: 5)
        var queueHeads: [Int] = Array(repeating: 0, count: 5)
        var waiters: [CheckedContinuation<Job?, Never>] = []
        var closed = false
        var queuedBytes = 0

        mutating func pop() -> Job? {
            for priority in 0..<5 where queueHeads[priority] < queues[priority].count {
                let job = queues[priority][queueHeads[priority]]
                queueHeads[priority] += 1
                if queueHeads[priority] > 64 && queueHeads[priority] * 2 > queues[priority].count {
                    queues[priority].removeFirst(queueHeads[priority])
                    queueHeads[priority] = 0
                }
                return job
            }
            return nil
        }
    }

    private let state = Mutex(State())
    private let sender: BatchSender
    private let deadLetters: DeadLetterWriter
    private let metrics: BatchhouseMetrics
    private let logger: Logger
    private let concurrency: Int
    private let sleep: @Sendable (Duration) async -> Void
    private let attemptObserver = Mutex<(@Sendable (SealedBatch, Duration, FlushResult) -> Void)?>(nil)

    init(
        sender: BatchSender, deadLetters: DeadLetterWriter, metrics: BatchhouseMetrics, logger: Logger,
        concurrency: Int,
        sleep: @escaping @Sendable (Duration) async -> Void = { try? await Task.sleep(for: $0) }
    ) {
        self.sender = sender
        self.deadLetters = deadLetters
        self.metrics = metrics
        self.logger = logger
        self.concurrency = max(1, concurrency)
        self.sleep = sleep
    }

    /// Told about every upstream attempt (the adaptive strategy learns from latency and errors).
    func observeAttempts(_ observer: @escaping @Sendable (SealedBatch, Duration, FlushResult) -> Void) {
        attemptObserver.withLock { $0 = observer }
    }

    /// ClickHouse error codes that mean "too much at once", not "wrong data".
    static let overloadCodes: Set<Int> = [252, 202, 159, 209, 241]

    private func report(_ batch: SealedBatch, latency: Duration, result: Result<UpstreamResponse, UpstreamError>) {
        guard let observer = attemptObserver.withLock({ $0 }) else { return }
        let outcome: FlushResult
        switch result {
        case .success(let response) where (200..<300).contains(response.status):
            outcome = .ok
        case .success(let response):
            let code = clickHouseErrorCode(in: response.body)
            let overloaded = response.status == 503 || response.status == 429 || code.map(Self.overloadCodes.contains) == true
            outcome = overloaded ? .struggling : .failed
        case .failure(let error):
            outcome = error.kind == .timeout ? .struggling : .failed
        }
        observer(batch, latency, outcome)
    }

    /// Bytes of batches queued or being sent.
    var queuedBytes: Int { state.withLock { $0.queuedBytes } }

    func submit(_ batch: SealedBatch, completion: Completion? = nil) {
        let job = Job(batch: batch, completion: completion)
        let waiter: CheckedContinuation<Job?, Never>? = state.withLock { state in
            state.queuedBytes += batch.data.count
            if !state.waiters.isEmpty { return state.waiters.removeFirst() }
            state.queues[min(max(batch.rule.priority, 1), 5) - 1].append(job)
            return nil
        }
        metrics.setQueueBytes(queuedBytes)
        waiter?.resume(returning: job)
    }

    /// Runs the workers until `close()` was called and the queue is empty.
    func run() async {
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<concurrency {
                group.addTask { await self.work() }
            }
        }
    }

    /// No more batches will come: the workers send what is queued, then `run()` returns.
    func close() {
        let waiters = state.withLock { state in
            state.closed = true
            let waiting = state.waiters
            state.waiters.removeAll()
            return waiting
        }
        for waiter in waiters { waiter.resume(returning: nil) }
    }

    private func next() async -> Job? {
        await withCheckedContinuation { (continuation: CheckedContinuation<Job?, Never>) in
            let immediate: Job?? = state.withLock { state in
                if let job = state.pop() { return .some(job) }
                if state.closed { return .some(nil) }
                state.waiters.append(continuation)
                return nil
            }
            if let immediate { continuation.resume(returning: immediate) }
        }
    }

    private func work() async {
        while let job = await next() {
            let outcome = await deliver(job.batch)
            state.withLock { $0.queuedBytes -= job.batch.data.count }
            metrics.setQueueBytes(queuedBytes)
            job.completion?(outcome)
        }
    }

    /// ClickHouse error codes that say the data itself is wrong: retrying the same bytes cannot help.
    static let dataErrorCodes: Set<Int> = [
        6, 25, 26, 27, 32, 33, 38, 41, 53, 62, 69, 70, 72, 73, 76, 84, 108, 117, 130, 131, 321,
    ]

    private func isRetryable(status: Int, body: ByteBuffer) -> Bool {
        if let code = clickHouseErrorCode(in: body), Self.dataErrorCodes.contains(code) { return false }
        return status >= 500 || status == 408 || status == 429
    }

    func deliver(_ batch: SealedBatch) async -> FlushOutcome {
        let table = batch.key.qualifiedTable
        let started = ContinuousClock.now
        var attempt = 0
        while true {
            let result: Result<UpstreamResponse, UpstreamError>
            let attemptStarted = ContinuousClock.now
            do {
                result = .success(try await sender.send(batch, attempt: attempt))
            } catch {
                result = .failure(error)
            }
            report(batch, latency: ContinuousClock.now - attemptStarted, result: result)
            let retryable: Bool
            let failure: String
            var httpStatus: Int?
            switch result {
            case .success(let response) where (200..<300).contains(response.status):
                let elapsed = ContinuousClock.now - started
                metrics.flushed(table: table, rows: batch.rows, duration: elapsed, unixTime: Date().timeIntervalSince1970)
                logger.info(
                    "flushed batch",
                    metadata: [
                        "table": "\(table)", "rows": "\(batch.rows)", "bytes": "\(batch.data.count)",
                        "requests": "\(batch.requests)", "trigger": "\(batch.trigger.rawValue)",
                        "batch": "\(batch.id)", "attempts": "\(attempt + 1)",
                        "ms": "\(Int(elapsed.seconds * 1000))",
                    ])
                return .inserted(response)
            case .success(let response):
                retryable = isRetryable(status: response.status, body: response.body)
                httpStatus = response.status
                failure = String(decoding: response.body.readableBytesView.prefix(2000), as: UTF8.self)
                    .trimmingCharacters(in: .whitespacesAndNewlines)
                if !retryable || attempt >= batch.rule.retries {
                    return giveUp(batch, attempts: attempt + 1, error: failure, status: httpStatus, started: started) {
                        .rejected(response)
                    }
                }
            case .failure(let error):
                retryable = error.kind != .cancelled
                failure = "\(error.kind): \(error.message)"
                if !retryable || attempt >= batch.rule.retries {
                    return giveUp(batch, attempts: attempt + 1, error: failure, status: nil, started: started) {
                        .failed(error)
                    }
                }
            }
            let backoff = Self.backoff(base: batch.rule.retryBackoff, attempt: attempt)
            logger.warning(
                "batch insert failed, will retry",
                metadata: [
                    "table": "\(table)", "batch": "\(batch.id)", "attempt": "\(attempt + 1)",
                    "retry_in_ms": "\(Int(backoff.seconds * 1000))", "error": "\(failure.prefix(300))",
                ])
            metrics.retried()
            await sleep(backoff)
            attempt += 1
        }
    }

    private func giveUp(
        _ batch: SealedBatch, attempts: Int, error: String, status: Int?, started: ContinuousClock.Instant,
        outcome: () -> FlushOutcome
    ) -> FlushOutcome {
        let table = batch.key.qualifiedTable
        metrics.flushFailed(table: table, duration: ContinuousClock.now - started)
        let path = deadLetters.write(batch, attempts: attempts, error: error, httpStatus: status)
        if path != nil { metrics.deadLettered(table: table, rows: batch.rows) }
        logger.error(
            "batch insert failed for good, written to the dead-letter folder",
            metadata: [
                "table": "\(table)", "batch": "\(batch.id)", "rows": "\(batch.rows)", "attempts": "\(attempts)",
                "status": "\(status.map(String.init) ?? "none")", "error": "\(error.prefix(500))",
                "dead_letter": "\(path ?? "not written")",
            ])
        return outcome()
    }

    /// base * 2^attempt, capped at 30 s, with "equal jitter": between half and all of it.
    static func backoff(base: Duration, attempt: Int) -> Duration {
        let exponential = min(base.seconds * pow(2, Double(min(attempt, 20))), 30)
        return .seconds(exponential / 2 + Double.random(in: 0...(exponential / 2)))
    }
}
