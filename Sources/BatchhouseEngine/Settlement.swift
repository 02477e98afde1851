import BatchhouseCore
import BatchhouseSpool
import Foundation
import Logging

/// The one sink for what happens to a batch upstream. Delivery tells it about every attempt and every final
/// outcome; it feeds the adaptive strategy, writes the spool's delivered marks, answers waiting requests,
/// records metrics and logs, writes dead letters, and gives the batch's bytes back to the memory budget
/// (docs/architecture.md, "Settlement"; the spool protocol in docs/spool-and-acks.md).
package final class Settlement: Sendable {
    private let buffering: Buffering
    private let spool: Spool?
    private let acks: PendingAcks
    private let metrics: BatchhouseMetrics
    private let deadLetters: DeadLetterWriter
    private let clock: any EngineClock
    private let logger: Logger
    private let tags: IdentityTags
    private let verifier: CredentialVerifier?

    /// Reads waiting for a batch's outcome (`read_your_writes`) go on once it is settled.
    private let writes: ReadYourWrites?

    package init(
        buffering: Buffering, spool: Spool?, acks: PendingAcks, metrics: BatchhouseMetrics,
        deadLetters: DeadLetterWriter, clock: any EngineClock, logger: Logger, tags: IdentityTags,
        verifier: CredentialVerifier?, writes: ReadYourWrites? = nil
    ) {
        self.writes = writes
        self.tags = tags
        self.verifier = verifier
        self.buffering = buffering
        self.spool = spool
        self.acks = acks
        self.metrics = metrics
        self.deadLetters = deadLetters
        self.clock = clock
        self.logger = logger
    }

    /// Every upstream attempt: the adaptive strategy learns from its latency and answer.
    package func attempted(_ part: SealedBatch, latency: Duration, answer: UpstreamAnswer) {
        buffering.recordFlush(part, latency: latency, result: DeliveryPolicy.feedback(answer))
    }

    /// ClickHouse took `part`. A whole batch (not a half of a split one) is marked delivered in the spool at
    /// once, before anything else happens, so the gap between ClickHouse's commit and the mark is as small as
    /// it can be; halves are marked when the whole batch settles, since their chunks may be partly elsewhere.
    package func landed(_ part: SealedBatch, whole: Bool, attempts: Int, elapsed: Duration) {
        if whole, let spool {
            if part.trigger == .recovery { CrashPoint.duringRecovery.reach() } else { CrashPoint.afterCommit.reach() }
            let chunks = part.contributions.compactMap(\.spoolChunk)
            if !chunks.isEmpty { check(spool.markDelivered(chunks), batch: part) }
        }
        let table = part.key.qualifiedTable
        metrics.flushed(
            table: table, rows: part.rows, bytes: part.data.count, duration: elapsed, unixTime: clock.wallClockSeconds())
        logger.info(
            "flushed batch",
            metadata: [
                "table": "\(table)", "rows": "\(part.rows)", "bytes": "\(part.data.count)",
                "requests": "\(part.requests)", "trigger": "\(part.trigger.rawValue)",
                "batch": "\(part.id)", "attempts": "\(attempts)",
                "ms": "\(Int(elapsed.seconds * 1000))",
            ])
    }

    /// An attempt failed and will be repeated after `backoff`.
    package func retrying(_ part: SealedBatch, attempt: Int, backoff: Duration, error: String) {
        metrics.retried()
        logger.warning(
            "batch insert failed, will retry",
            metadata: [
                "table": "\(part.key.qualifiedTable)", "batch": "\(part.id)", "attempt": "\(attempt + 1)",
                "retry_in_ms": "\(Int(backoff.seconds * 1000))", "error": "\(error.prefix(300))",
            ])
    }

    /// `part` failed for good (refused, or out of retries).
    package func failed(_ part: SealedBatch, elapsed: Duration) {
        metrics.flushFailed(table: part.key.qualifiedTable, duration: elapsed)
    }

    /// ClickHouse refused `part` for its data; it will be halved.
    package func splitting(_ part: SealedBatch, error: String) {
        logger.warning(
            "ClickHouse refused a batch for its data; splitting it to isolate the bad rows",
            metadata: [
                "table": "\(part.key.qualifiedTable)", "batch": "\(part.id)", "rows": "\(part.rows)",
                "error": "\(error.prefix(300))",
            ])
    }

    /// Writes `part` of `original` to the dead-letter folder, with why it was refused and how many of its
    /// requests are answered with the failure (they wait for it: `ack: flushed`, `immediate`). A refusal of the
    /// credentials also drops them from the verified ones, so the next request is checked again
    /// (docs/credentials.md). Returns false when the file could not be written: with a spool the rows then stay
    /// in it rather than being lost.
    @discardableResult
    package func deadLetter(_ part: SealedBatch, of original: SealedBatch, attempts: Int, error: String, status: Int?)
        -> Bool
    {
        let table = part.key.qualifiedTable
        let refusal = RefusalKind(status: status, code: clickHouseErrorCode(inText: error))
        if refusal == .authentication { verifier?.forget(part.key.identity) }
        let tag = tags.tag(of: part.key.identity)
        let told = part.contributions.reduce(0) { $0 + ($1.token != 0 ? 1 : 0) }
        let path = deadLetters.write(
            part,
            .init(
                attempts: attempts, error: error, httpStatus: status, refusal: refusal, identityTag: tag,
                clientsToldFailed: told),
            at: clock.wallClockSeconds())
        if path != nil { metrics.deadLettered(table: table, rows: part.rows) }
        logger.error(
            path != nil || spool == nil
                ? "rows written to the dead-letter folder"
                : "rows refused by ClickHouse kept in the spool: their dead letter could not be written",
            metadata: [
                "table": "\(table)", "batch": "\(original.id)", "rows": "\(part.rows)", "of_rows": "\(original.rows)",
                "attempts": "\(attempts)", "status": "\(status.map(String.init) ?? "none")",
                "refusal": "\(refusal.rawValue)", "identity": "\(tag)", "clients_told": "\(told)",
                "error": "\(error.prefix(500))", "dead_letter": "\(path ?? "not written")",
            ])
        return path != nil
    }

    /// A batch from the backlog was read back from the spool; chunks that could not be read are reported.
    package func readBack(_ batch: SealedBatch, as loaded: SealedBatch, lost: FlushReport.Failure?) {
        buffering.readBack(batch, as: loaded)
        guard let lost, case .unreadable(let reason) = lost.reason else { return }
        metrics.spoolCorruptions(lost.part.contributions.count)
        logger.error(
            "rows lost: their spool records could not be read back",
            metadata: [
                "table": "\(batch.key.qualifiedTable)", "batch": "\(batch.id)", "rows": "\(lost.part.rows)",
                "chunks": "\(lost.part.contributions.count)", "error": "\(reason.prefix(500))",
            ])
    }

    /// A batch read back and refused whole by a helping send goes back to the queue unread (docs/delivery.md,
    /// "Splitting to isolate bad rows"): its bytes leave the budget for the backlog again.
    package func putBackUnread(_ batch: SealedBatch, readAs loaded: SealedBatch) {
        buffering.putBackUnread(batch, readAs: loaded)
    }

    /// The spool could not be read for `batch` just now (a failed system call): it is tried again.
    package func readBackFailed(_ batch: SealedBatch, reason: String) {
        logger.error(
            "cannot read a batch back from the spool; trying again in 1 s",
            metadata: ["table": "\(batch.key.qualifiedTable)", "batch": "\(batch.id)", "error": "\(reason.prefix(300))"])
    }

    /// The spool could not record that `batch` is being sent (a full disk): a crash before its outcome is known
    /// would send it again.
    package func sendingNotRecorded(_ batch: SealedBatch) {
        logger.warning(
            "spool could not record a batch as being sent; if the proxy dies before ClickHouse answers, it is sent again",
            metadata: ["table": "\(batch.key.qualifiedTable)", "batch": "\(batch.id)", "rows": "\(batch.rows)"])
    }

    /// An attempt got no answer, and `system.query_log` says its query finished: it is not sent again.
    package func foundFinished(_ part: SealedBatch, queryID: String) {
        metrics.queryOutcomeChecked(found: true)
        logger.notice(
            "batch found landed after an attempt without an answer; not sent again",
            metadata: ["table": "\(part.key.qualifiedTable)", "batch": "\(part.id)", "query_id": "\(queryID)"])
    }

    /// An attempt got no answer, and whether its query finished cannot be told: it is sent again (at least once).
    package func outcomeUnknown(_ part: SealedBatch, queryID: String, reason: String) {
        metrics.queryOutcomeChecked(found: false)
        logger.warning(
            "cannot tell whether a batch without an answer landed; sending it again (at least once)",
            metadata: [
                "table": "\(part.key.qualifiedTable)", "batch": "\(part.id)", "rows": "\(part.rows)", "query_id": "\(queryID)",
                "reason": "\(reason.prefix(300))",
            ])
    }

    /// `part` was not delivered before shutdown; its rows stay in the spool. Unless an attempt went unanswered
    /// (`mayHaveLanded`), the spool is told it was not sent, so the next start replays it without asking.
    package func deferred(_ part: SealedBatch, mayHaveLanded: Bool) {
        if let spool, !mayHaveLanded, let queryID = part.queryID, spool.isSending(queryID: queryID) {
            spool.recordSettled(queryID: queryID, outcome: .notSent, note: "")
            spool.finishSending(queryID: queryID)
        }
        logger.warning(
            "batch not delivered before shutdown; it stays in the spool for the next start",
            metadata: ["table": "\(part.key.qualifiedTable)", "batch": "\(part.id)", "rows": "\(part.rows)"])
    }

    /// The batch's final outcome: its bytes leave the budget (first, so a client that sends more as soon as it is
    /// answered finds the room), requests waiting for it are answered, and rows that landed or went to the
    /// dead-letter folder leave the spool (deferred ones stay for replay).
    /// `deliveryStartedAt`: when the delivery that settled it took it from the queue.
    package func settle(_ report: FlushReport, deliveryStartedAt: Instant? = nil) {
        // Once per batch, whatever became of it: how long its first row waited before the delivery that settled it
        // began (the flush trigger, then the queue or the backlog; a batch put back waits again). A batch replayed
        // from the spool at start has no such wait of this run.
        if let deliveryStartedAt, report.batch.trigger != .recovery {
            metrics.timeInBuffer(table: report.batch.key.qualifiedTable, deliveryStartedAt - report.batch.firstRowAt)
        }
        buffering.release(report.batch)
        metrics.setQueueBytes(buffering.sealedBytes)
        acks.resolve(report)
        writes?.settled(report.batch.id)
        if let spool {
            let done = report.settledSpoolChunks
            if !done.isEmpty { check(spool.markDelivered(done), batch: report.batch) }
            // A deferred batch keeps its `sending` record: the next start asks whether its last attempt landed.
            let deferred = report.failures.contains { if case .deferred = $0.reason { true } else { false } }
            if let queryID = report.batch.queryID, !deferred { spool.finishSending(queryID: queryID) }
        }
    }

    /// A delivered mark the spool could not write, even from its reserve, is kept in memory and retried by the
    /// spool; until it is written a restart would replay those rows (docs/spool-and-acks.md, "A full disk").
    private func check(_ outcome: SpoolMarkOutcome, batch: SealedBatch) {
        guard outcome.unwrittenChunks > 0 else { return }
        logger.error(
            "spool delivered mark not written; kept in memory and retried (a restart before it is written replays these rows)",
            metadata: [
                "table": "\(batch.key.qualifiedTable)", "batch": "\(batch.id)",
                "unwritten_chunks": "\(outcome.unwrittenChunks)", "error": "\(outcome.failure ?? "unknown")",
            ])
    }
}
