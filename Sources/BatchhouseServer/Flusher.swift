import BatchhouseCore
import BatchhouseUpstream
import Foundation
import Logging
import NIOCore
import Synchronization

/// Why part of a batch did not land.
enum FailureReason: Sendable {
    /// ClickHouse refused it for good (4xx, or an error about the data); it is in the dead-letter folder.
    case rejected(UpstreamResponse)
    /// No answer after every retry; it is in the dead-letter folder.
    case failed(UpstreamError)
    /// Not delivered before shutdown; it stays in the spool and is sent after the next start.
    case deferred(UpstreamError?)
}

/// What became of one sealed batch: how many rows landed, and which parts did not.
struct FlushReport: Sendable {
    struct Failure: Sendable {
        var part: SealedBatch
        var reason: FailureReason
    }

    var batch: SealedBatch
    var landedRows: Int
    var failures: [Failure]

    /// The failure that holds rows of the request with `token`, if any.
    func failure(for token: UInt64) -> Failure? {
        failures.first { $0.part.contributions.contains { $0.token == token } }
    }
}

/// Sends sealed batches upstream: at most `max_concurrent_flushes` at once, higher priority first, retries
/// with jittered exponential backoff, and bad-row isolation: a batch ClickHouse refuses for its data is split
/// in halves until the rows it objects to are alone; the rest lands, those go to the dead-letter folder.
final class Flusher: Sendable {
    typealias Completion = @Sendable (FlushReport) -> Void

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
    /// With a spool, rows are safe on disk: transport failures are retried until they succeed (or shutdown,
    /// which leaves them in the spool) instead of going to the dead-letter folder after `retries`.
    private let retryUntilDelivered: Bool
    private let sleep: @Sendable (Duration) async -> Void
    /// Closures are kept in a struct: a bare function type as a Mutex's value is re-abstracted on every
    /// `withLock { $0 }` (inout write-back), so each read wrapped it in two more thunks, without bound.
    private struct Observer<Argument>: Sendable {
        let call: @Sendable (Argument) -> Void
    }
    private let attemptObserver = Mutex<Observer<(SealedBatch, Duration, FlushResult)>?>(nil)
    private let reportObserver = Mutex<Observer<FlushReport>?>(nil)
    private let landedObserver = Mutex<Observer<SealedBatch>?>(nil)
    /// Ids for the halves of split batches; far above the store's own numbering.
    private static let firstPartID: UInt64 = 1 << 48
    private let nextPartID = Mutex<UInt64>(Flusher.firstPartID)

    init(
        sender: BatchSender, deadLetters: DeadLetterWriter, metrics: BatchhouseMetrics, logger: Logger,
        concurrency: Int, retryUntilDelivered: Bool = false,
        sleep: @escaping @Sendable (Duration) async -> Void = { try? await Task.sleep(for: $0) }
    ) {
        self.sender = sender
        self.deadLetters = deadLetters
        self.metrics = metrics
        self.logger = logger
        self.concurrency = max(1, concurrency)
        self.retryUntilDelivered = retryUntilDelivered
        self.sleep = sleep
    }

    /// Told about every upstream attempt (the adaptive strategy learns from latency and errors).
    func observeAttempts(_ observer: @escaping @Sendable (SealedBatch, Duration, FlushResult) -> Void) {
        attemptObserver.withLock { $0 = Observer(call: { observer($0.0, $0.1, $0.2) }) }
    }

    /// Told about every finished batch (acks waiting for it, the spool's delivered marks).
    func observeReports(_ observer: @escaping @Sendable (FlushReport) -> Void) {
        reportObserver.withLock { $0 = Observer(call: observer) }
    }

    /// Told the moment a whole (unsplit) batch is in ClickHouse, before anything else happens, so the spool
    /// can record the delivery with the smallest possible gap after ClickHouse's commit.
    func observeLanded(_ observer: @escaping @Sendable (SealedBatch) -> Void) {
        landedObserver.withLock { $0 = Observer(call: observer) }
    }

    /// ClickHouse error codes that mean "too much at once", not "wrong data".
    static let overloadCodes: Set<Int> = [252, 202, 159, 209, 241]

    /// ClickHouse error codes that say the data itself is wrong: retrying the same bytes cannot help, but
    /// splitting the batch finds the rows at fault.
    static let dataErrorCodes: Set<Int> = [
        6, 25, 26, 27, 32, 33, 38, 41, 53, 62, 69, 70, 72, 73, 76, 84, 108, 117, 130, 131, 321, 349,
    ]

    private func report(_ batch: SealedBatch, latency: Duration, result: Result<UpstreamResponse, UpstreamError>) {
        guard let observer = attemptObserver.withLock({ $0 }) else { return }
        let outcome: FlushResult
        switch result {
        case .success(let response) where (200..<300).contains(response.status):
            outcome = .ok
        case .success(let response):
            let code = clickHouseErrorCode(in: response.body)
            let overloaded =
                response.status == 503 || response.status == 429 || code.map(Self.overloadCodes.contains) == true
            outcome = overloaded ? .struggling : .failed
        case .failure(let error):
            outcome = error.kind == .timeout ? .struggling : .failed
        }
        observer.call((batch, latency, outcome))
    }

    /// Bytes of batches queued or being sent.
    var queuedBytes: Int { state.withLock { $0.queuedBytes } }

    private var isClosed: Bool { state.withLock { $0.closed } }

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
            let report = await deliver(job.batch)
            state.withLock { $0.queuedBytes -= job.batch.data.count }
            metrics.setQueueBytes(queuedBytes)
            reportObserver.withLock { $0 }?.call(report)
            job.completion?(report)
        }
    }

    // MARK: Delivery

    /// One batch, with retries and bad-row isolation.
    func deliver(_ batch: SealedBatch) async -> FlushReport {
        var report = FlushReport(batch: batch, landedRows: 0, failures: [])
        await isolate(batch, original: batch, into: &report)
        return report
    }

    private func isolate(_ part: SealedBatch, original: SealedBatch, into report: inout FlushReport) async {
        switch await attempt(part) {
        case .inserted:
            report.landedRows += part.rows
        case .rejected(let response, let aboutTheData):
            if aboutTheData, let (first, second) = splitIDs({ BatchSplitter.halves(of: part, firstID: $0, secondID: $1) }) {
                logger.warning(
                    "ClickHouse refused a batch for its data; splitting it to isolate the bad rows",
                    metadata: [
                        "table": "\(part.key.qualifiedTable)", "batch": "\(part.id)", "rows": "\(part.rows)",
                        "error": "\(Self.text(response).prefix(300))",
                    ])
                await isolate(first, original: original, into: &report)
                await isolate(second, original: original, into: &report)
            } else {
                deadLetter(part, original: original, attempts: 1, error: Self.text(response), status: response.status)
                report.failures.append(.init(part: part, reason: .rejected(response)))
            }
        case .failed(let error, let attempts):
            deadLetter(part, original: original, attempts: attempts, error: "\(error.kind): \(error.message)", status: nil)
            report.failures.append(.init(part: part, reason: .failed(error)))
        case .deferred(let error):
            logger.warning(
                "batch not delivered before shutdown; it stays in the spool for the next start",
                metadata: ["table": "\(part.key.qualifiedTable)", "batch": "\(part.id)", "rows": "\(part.rows)"])
            report.failures.append(.init(part: part, reason: .deferred(error)))
        }
    }

    private func splitIDs(_ split: (UInt64, UInt64) -> (SealedBatch, SealedBatch)?) -> (SealedBatch, SealedBatch)? {
        let ids = nextPartID.withLock { next in
            defer { next += 2 }
            return (next, next + 1)
        }
        return split(ids.0, ids.1)
    }

    private enum AttemptOutcome {
        case inserted(UpstreamResponse)
        /// Refused for good; `aboutTheData` when splitting can find the rows at fault.
        case rejected(UpstreamResponse, aboutTheData: Bool)
        case failed(UpstreamError, attempts: Int)
        case deferred(UpstreamError?)
    }

    private static func text(_ response: UpstreamResponse) -> String {
        String(decoding: response.body.readableBytesView.prefix(2000), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Sends `batch` until ClickHouse takes it, refuses it for good, or the retries run out.
    private func attempt(_ batch: SealedBatch) async -> AttemptOutcome {
        let table = batch.key.qualifiedTable
        let started = ContinuousClock.now
        var attempt = 0
        var lastServer: Int?
        while true {
            let result: Result<UpstreamResponse, UpstreamError>
            let attemptStarted = ContinuousClock.now
            do {
                let (response, server) = try await sender.send(batch, avoiding: lastServer)
                lastServer = server
                result = .success(response)
            } catch {
                result = .failure(error)
            }
            report(batch, latency: ContinuousClock.now - attemptStarted, result: result)
            let failure: String
            var lastError: UpstreamError?
            switch result {
            case .success(let response) where (200..<300).contains(response.status):
                // Halves of a split batch carry ids from `nextPartID`; their chunks may be partly elsewhere, so
                // only whole batches are reported here (halves are settled by the final report).
                if batch.id < Self.firstPartID {
                    landedObserver.withLock { $0 }?.call(batch)
                }
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
                let code = clickHouseErrorCode(in: response.body)
                let aboutTheData = code.map(Self.dataErrorCodes.contains) ?? false
                let retryable = !aboutTheData && (response.status >= 500 || response.status == 408 || response.status == 429)
                if !retryable {
                    metrics.flushFailed(table: table, duration: ContinuousClock.now - started)
                    return .rejected(response, aboutTheData: aboutTheData)
                }
                failure = Self.text(response)
            case .failure(let error):
                if error.kind == .cancelled {
                    return retryUntilDelivered ? .deferred(error) : .failed(error, attempts: attempt + 1)
                }
                failure = "\(error.kind): \(error.message)"
                lastError = error
            }
            if retryUntilDelivered {
                if isClosed && attempt >= batch.rule.retries { return .deferred(lastError) }
            } else if attempt >= batch.rule.retries {
                metrics.flushFailed(table: table, duration: ContinuousClock.now - started)
                switch result {
                case .success(let response): return .rejected(response, aboutTheData: false)
                case .failure(let error): return .failed(error, attempts: attempt + 1)
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

    private func deadLetter(_ part: SealedBatch, original: SealedBatch, attempts: Int, error: String, status: Int?) {
        let table = part.key.qualifiedTable
        let path = deadLetters.write(part, attempts: attempts, error: error, httpStatus: status)
        if path != nil { metrics.deadLettered(table: table, rows: part.rows) }
        logger.error(
            "rows written to the dead-letter folder",
            metadata: [
                "table": "\(table)", "batch": "\(original.id)", "rows": "\(part.rows)", "of_rows": "\(original.rows)",
                "attempts": "\(attempts)", "status": "\(status.map(String.init) ?? "none")",
                "error": "\(error.prefix(500))", "dead_letter": "\(path ?? "not written")",
            ])
    }

    /// base * 2^attempt, capped at 10 s (so a recovered upstream is used again within seconds), with "equal
    /// jitter": between half and all of it.
    static func backoff(base: Duration, attempt: Int) -> Duration {
        let exponential = min(base.seconds * pow(2, Double(min(attempt, 20))), 10)
        return .seconds(exponential / 2 + Double.random(in: 0...(exponential / 2)))
    }
}
