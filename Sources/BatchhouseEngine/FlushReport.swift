import BatchhouseCore
import BatchhouseUpstream

/// Why part of a batch did not land.
package enum FailureReason: Sendable {
    /// ClickHouse refused it for good (4xx, or an error about the data); it is in the dead-letter folder.
    case rejected(UpstreamResponse)
    /// No answer after every retry; it is in the dead-letter folder.
    case failed(UpstreamError)
    /// Not delivered before shutdown; it stays in the spool and is sent after the next start.
    case deferred(UpstreamError?)
    /// Its spool records could not be read back (damaged on disk after they were written): the rows are lost,
    /// counted as spool corruptions, and their chunks leave the spool.
    case unreadable(String)
}

/// What became of one sealed batch: how many rows landed, and which parts did not. Delivery makes one per
/// batch; `Settlement` acts on it (docs/architecture.md, "Settlement").
package struct FlushReport: Sendable {
    package struct Failure: Sendable {
        package var part: SealedBatch
        package var reason: FailureReason
        /// Its dead letter could not be written: its spool chunks stay undelivered, so the rows are not lost
        /// (they are tried again after the next start).
        package var keptInSpool = false

        package init(part: SealedBatch, reason: FailureReason, keptInSpool: Bool = false) {
            self.part = part
            self.reason = reason
            self.keptInSpool = keptInSpool
        }
    }

    package var batch: SealedBatch
    package var landedRows: Int
    package var failures: [Failure]

    package init(batch: SealedBatch, landedRows: Int = 0, failures: [Failure] = []) {
        self.batch = batch
        self.landedRows = landedRows
        self.failures = failures
    }

    /// The failure that holds rows of the request with `token`, if any.
    package func failure(for token: UInt64) -> Failure? {
        failures.first { $0.part.contributions.contains { $0.token == token } }
    }

    /// Spool chunks of the batch that are settled: landed or dead-lettered. Deferred ones, and those whose dead
    /// letter could not be written, stay for replay.
    package var settledSpoolChunks: [UInt64] {
        var kept = Set<UInt64>()
        for failure in failures {
            var stays = failure.keptInSpool
            if case .deferred = failure.reason { stays = true }
            if stays { kept.formUnion(failure.part.contributions.compactMap(\.spoolChunk)) }
        }
        // Parts with no rows of the batch's own (unreadable ones) are settled too.
        let own = batch.contributions.compactMap(\.spoolChunk)
        let ownSet = Set(own)
        let extra = failures.flatMap { $0.part.contributions.compactMap(\.spoolChunk) }.filter { !ownSet.contains($0) }
        return (own + extra).filter { !kept.contains($0) }
    }
}
