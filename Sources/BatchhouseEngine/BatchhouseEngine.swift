import BatchhouseConfig
import BatchhouseCore
import BatchhouseSpool
import BatchhouseUpstream
import Logging
import Synchronization

/// The parts an INSERT passes through, built once from a configuration and wired in one direction:
/// `Intake` → `Buffering` → `Delivery` → `UpstreamGateway`, and every outcome into `Settlement`
/// (docs/architecture.md). The HTTP server hands requests to `intake`; the flush service drives `flushDue()`,
/// `delivery.run()` and `drain()`; the local endpoints read `status()`.
package final class BatchhouseEngine: Sendable {
    package let configuration: LiveConfiguration
    package let intake: Intake
    /// The columns of the tables RowBinary rows go to (`DESCRIBE TABLE`, per identity).
    package let schemas: TableSchemas<TableDescription>
    package let buffering: Buffering
    package let delivery: Delivery
    /// The tables with an `aggregate:` rule, and every table's ingest rate.
    package let aggregation: Aggregation
    package let settlement: Settlement
    package let gateway: UpstreamGateway
    package let spool: Spool?
    package let metrics: BatchhouseMetrics
    package let acks: PendingAcks
    package let clock: any EngineClock
    /// Nil when credentials are not verified (`verifiesCredentials: false`).
    package let verifier: CredentialVerifier?
    package let identityTags: IdentityTags
    /// The sealed batches reads must wait for (`read_your_writes`).
    package let writes: ReadYourWrites
    private let logger: Logger
    private let startedAt: Instant

    package init(
        configuration: BatchhouseConfiguration, transport: any UpstreamTransport, spool: Spool?, logger: Logger,
        clock: any EngineClock = MonotonicClock(),
        jitter: @escaping @Sendable () -> Double = { Double.random(in: 0...1) },
        identityTags: IdentityTags = .random(), verifiesCredentials: Bool = true
    ) {
        self.configuration = LiveConfiguration(configuration)
        self.spool = spool
        self.clock = clock
        self.logger = logger
        self.startedAt = clock.now()
        metrics = BatchhouseMetrics()
        acks = PendingAcks()
        gateway = UpstreamGateway(transport: transport, upstream: configuration.upstream, clock: clock)
        self.identityTags = identityTags
        verifier =
            verifiesCredentials
            ? CredentialVerifier(
                tags: identityTags, gateway: gateway, clock: clock,
                file: configuration.spool.map { VerifiedIdentityFile(directory: $0.dir) })
            : nil
        writes = ReadYourWrites()
        buffering = Buffering(
            clock: clock, maxBufferMemory: configuration.limits.maxBufferMemory, spoolBacked: spool != nil,
            writes: writes)
        settlement = Settlement(
            buffering: buffering, spool: spool, acks: acks, metrics: metrics,
            deadLetters: DeadLetterWriter(directory: configuration.deadLetterDir, logger: logger), clock: clock,
            logger: logger, tags: identityTags, verifier: verifier, writes: writes)
        let schemas = TableSchemas<TableDescription>(gateway: gateway, clock: clock) { text in
            TableDescription(describeOutput: String(decoding: text, as: UTF8.self))
        }
        self.schemas = schemas
        delivery = Delivery(
            gateway: gateway, settlement: settlement, clock: clock,
            concurrency: configuration.upstream.maxConcurrentFlushes, retryUntilDelivered: spool != nil, spool: spool,
            jitter: jitter, refusedBinaryBatch: { key in schemas.forget(database: key.database, table: key.table) })
        aggregation = Aggregation(
            configuration: self.configuration, buffering: buffering, delivery: delivery, spool: spool, acks: acks,
            metrics: metrics.aggregation, clock: clock, logger: logger)
        intake = Intake(
            configuration: self.configuration, buffering: buffering, delivery: delivery, spool: spool, acks: acks,
            metrics: metrics, gateway: gateway, verifier: verifier, schemas: schemas, aggregation: aggregation)
    }

    // MARK: Start

    /// Batches found in doubt at start, waiting for `settleInDoubt()`, with their chunks.
    private let inDoubt = Mutex<[(batch: InDoubtBatch, chunks: [SpooledChunk])]>([])

    /// Puts every row the spool holds that ClickHouse does not have yet back on the delivery queue, as batches
    /// whose rows stay on disk until their turn (docs/spool-and-acks.md, "Replay"). Batches that were being sent
    /// when the process stopped are held back for `settleInDoubt()`.
    package func restore(_ recovery: SpoolRecovery) {
        for corruption in recovery.corruptions {
            logger.error("spool corruption skipped", metadata: ["where": "\(corruption)"])
        }
        metrics.spoolCorruptions(recovery.corruptions.count)
        // Chunks are sorted by id: the chunks of each batch in doubt are found by binary search.
        func chunk(_ id: UInt64) -> SpooledChunk? {
            var low = 0
            var high = recovery.chunks.count
            while low < high {
                let middle = (low + high) / 2
                if recovery.chunks[middle].id < id { low = middle + 1 } else { high = middle }
            }
            return low < recovery.chunks.count && recovery.chunks[low].id == id ? recovery.chunks[low] : nil
        }
        var held = Set<UInt64>()
        var doubts: [(batch: InDoubtBatch, chunks: [SpooledChunk])] = []
        for doubt in recovery.inDoubt {
            let chunks = doubt.chunks.compactMap(chunk).filter { !held.contains($0.id) }
            guard !chunks.isEmpty else {
                spool?.finishSending(queryID: doubt.queryID)
                continue
            }
            held.formUnion(chunks.map(\.id))
            var doubt = doubt
            // Chunks another batch in doubt already holds (or delivered ones) are not part of a resend under this id.
            if chunks.count < doubt.chunks.count { doubt.complete = false }
            doubts.append((doubt, chunks))
        }
        inDoubt.withLock { $0 = doubts }
        let batches = backlogBatches(recovery.chunks.lazy.filter { !held.contains($0.id) })
        buffering.countBacklog(batches)
        // Rows acknowledged before the restart: reads of their identity wait for them too.
        writes.sealed(batches)
        delivery.submit(batches)
        logger.notice(
            "spool recovered",
            metadata: [
                "segments": "\(recovery.segments)", "bytes": "\(recovery.bytes)", "chunks": "\(recovery.chunks.count)",
                "rows": "\(recovery.chunks.reduce(0) { $0 + $1.rows })", "batches": "\(batches.count)",
                "in_doubt": "\(doubts.count)", "corruptions": "\(recovery.corruptions.count)",
            ])
    }

    /// Spooled chunks grouped into batches by key, in id order, within each table's `max_rows` and `max_bytes`;
    /// their rows stay in the spool (`bodyInSpool`).
    private func backlogBatches<S: Sequence>(_ chunks: S, queryID: String? = nil) -> [SealedBatch]
    where S.Element == SpooledChunk {
        let rules = configuration.value.rules
        let now = clock.now()
        var open: [BatchKey: SealedBatch] = [:]
        var sealed: [SealedBatch] = []
        for chunk in chunks {
            let bytes = chunk.dataLength + 1
            if let batch = open[chunk.key], queryID == nil,
                batch.rows + chunk.rows > batch.rule.maxRows || batch.spooledBytes + bytes > batch.rule.maxBytes
            {
                sealed.append(batch)
                open[chunk.key] = nil
            }
            if open[chunk.key] == nil {
                var batch = SealedBatch(
                    id: buffering.takeBatchID(), key: chunk.key,
                    rule: rules.rule(database: chunk.key.database ?? "default", table: chunk.key.table), data: [],
                    rows: 0, requests: 0, trigger: .recovery, firstRowAt: now, sealedAt: now)
                batch.bodyInSpool = true
                batch.queryID = queryID
                open[chunk.key] = batch
            }
            open[chunk.key]!.rows += chunk.rows
            open[chunk.key]!.requests += 1
            open[chunk.key]!.spooledBytes += bytes
            open[chunk.key]!.spooled.append(chunk: chunk.id, rows: chunk.rows, token: 0)
        }
        return (sealed + open.values).sorted { $0.id < $1.id }
    }

    /// Settles every batch found in doubt at start: asks ClickHouse whether its query finished, and either marks
    /// its rows delivered or sends them again under the same query id (docs/spool-and-acks.md, "Exactly once").
    /// Waits while no server answers; returns when all are settled or delivery is closing.
    package func settleInDoubt() async {
        let doubts = inDoubt.withLock { doubts in
            defer { doubts = [] }
            return doubts
        }
        guard let spool, !doubts.isEmpty else { return }
        for (index, (doubt, chunks)) in doubts.enumerated() {
            if delivery.isClosed {
                // Still in the spool, still in doubt: the next start asks again.
                inDoubt.withLock { $0 += doubts[index...] }
                return
            }
            let identity = chunks[0].key.identity
            var outcome = SettledOutcome.atLeastOnce
            var note = "\(chunks.count) chunk\(chunks.count == 1 ? "" : "s"), \(chunks.reduce(0) { $0 + $1.rows }) rows"
            if doubt.settledLanded {
                outcome = .landed
            } else {
                var wait = Duration.seconds(1)
                asking: while true {
                    // Sent before this process started: a ClickHouse that started after the proxy did is seen restarted.
                    switch await gateway.queryOutcome(queryID: doubt.queryID, identity: identity, firstSent: startedAt) {
                    case .finished:
                        outcome = .landed
                        break asking
                    case .failed, .absent:
                        outcome = .resent
                        break asking
                    case .unknown(let reason):
                        outcome = .atLeastOnce
                        note += "; \(reason.prefix(200))"
                        logger.warning(
                            "cannot tell whether a batch sent before the restart landed; sending it again (at least once)",
                            metadata: [
                                "table": "\(chunks[0].key.qualifiedTable)", "rows": "\(chunks.reduce(0) { $0 + $1.rows })",
                                "query_id": "\(doubt.queryID)", "reason": "\(reason.prefix(300))",
                            ])
                        break asking
                    case .running:
                        if delivery.isClosed {
                            inDoubt.withLock { $0 += doubts[index...] }
                            return
                        }
                        await clock.sleep(for: .seconds(1))
                    case .unreachable(let reason):
                        if delivery.isClosed {
                            // Still in the spool, still in doubt: the next start asks again.
                            inDoubt.withLock { $0 += doubts[index...] }
                            return
                        }
                        logger.info(
                            "waiting for ClickHouse to settle a batch sent before the restart",
                            metadata: ["query_id": "\(doubt.queryID)", "reason": "\(reason.prefix(200))"])
                        await clock.sleep(for: wait)
                        wait = min(wait * 2, .seconds(5))
                    }
                }
            }
            if !doubt.complete && outcome != .landed { note += "; partly delivered before, the rest sent as a new batch" }
            spool.recordSettled(queryID: doubt.queryID, outcome: outcome, note: note)
            metrics.inDoubtSettled(
                outcome == .landed ? "landed" : outcome == .resent ? "resent" : "at_least_once")
            logger.notice(
                "batch in doubt settled",
                metadata: [
                    "query_id": "\(doubt.queryID)", "outcome": "\(outcome)", "chunks": "\(chunks.count)",
                    "table": "\(chunks[0].key.qualifiedTable)",
                ])
            if outcome == .landed {
                check(spool.markDelivered(chunks.map(\.id)))
                spool.finishSending(queryID: doubt.queryID)
                continue
            }
            // The same rows under the same query id (and so the same deduplication token), or, when some were
            // delivered since, the rest as an ordinary batch (this one is then no longer in doubt).
            let batches = backlogBatches(chunks, queryID: doubt.complete ? doubt.queryID : nil)
            if !doubt.complete {
                spool.recordSettled(queryID: doubt.queryID, outcome: .notSent, note: "the rest went as a new batch")
                spool.finishSending(queryID: doubt.queryID)
            } else if gateway.capabilities == nil {
                // The token goes only where the version is known to take it: learn it before the resend.
                await gateway.probeVersion(logger: logger)
            }
            buffering.countBacklog(batches)
            writes.sealed(batches)
            delivery.submit(batches)
        }
    }

    private func check(_ outcome: SpoolMarkOutcome) {
        guard outcome.unwrittenChunks > 0 else { return }
        logger.error(
            "spool delivered mark not written; kept in memory and retried",
            metadata: ["unwritten_chunks": "\(outcome.unwrittenChunks)", "error": "\(outcome.failure ?? "unknown")"])
    }

    /// Checks the target tables of the aggregate rules against the upstream (`Aggregation.checkTargets`).
    /// Runs until delivery closes or the task is cancelled: checks at once, again after each reload that touches an
    /// aggregate rule, and every `recheck` while a problem stands, so an `ALTER TABLE ... ADD COLUMN` is seen
    /// without a reload.
    package func checkAggregateTargets(recheck: Duration = .seconds(30)) async {
        var problems = await aggregation.checkTargets(gateway: gateway)
        var waited = Duration.zero
        while !delivery.isClosed && !Task.isCancelled {
            await clock.sleep(for: .seconds(1))
            waited += .seconds(1)
            if aggregateRulesChanged.exchange(false, ordering: .relaxed) || (problems && waited >= recheck) {
                problems = await aggregation.checkTargets(gateway: gateway)
                waited = .zero
            }
        }
    }

    /// Set by a reload that changed an aggregate rule: the target check runs again.
    private let aggregateRulesChanged = Atomic<Bool>(false)

    // MARK: Flushing

    /// Seals and submits every batch whose `max_delay` has passed; returns the next deadline.
    @discardableResult
    package func flushDue() -> Instant? {
        // Windows first: a window's summaries then go in the same tick as the batches already due.
        let window = aggregation.emitDue()
        var (due, next) = buffering.sealDue()
        if let window { next = min(next ?? window, window) }
        delivery.submit(due)
        // Delivered marks that found no room before are written as soon as there is (one atomic load otherwise).
        spool?.retryUnwrittenMarks()
        return next
    }

    /// Before a request of `identity` that is not a batchable INSERT goes upstream (`read_your_writes`): seals and
    /// submits at once the open batches holding its rows, then waits for every unsettled batch that holds them.
    /// Nil when there is nothing to wait for (`resume` is not called); else a ticket for `writes.cancel`, and
    /// `resume` runs once they all have an outcome. Other identities' batches are neither sealed nor waited for.
    package func awaitWrites(of identity: ClientIdentity, resume: @escaping @Sendable () -> Void)
        -> ReadYourWrites.Ticket?
    {
        delivery.submit(buffering.seal(holding: identity))
        return writes.wait(for: identity, resume: resume)
    }

    /// How long a read waits for its identity's batches at most: one batch request with every retry of the
    /// defaults (`upstream.timeout` × (retries + 1)), within `limits.request_timeout`. Then it goes upstream anyway.
    package var readYourWritesBound: Duration {
        let current = configuration.snapshot.value
        let retries = current.rules.defaults.retries
        return min(current.limits.requestTimeout, current.upstream.timeout * (retries + 1))
    }

    /// Shutdown: seals every open batch and closes the delivery queue; `delivery.run()` returns once all is sent.
    package func drain() {
        logger.info("flushing everything before exit", metadata: ["buffered_rows": "\(buffering.bufferedRows)"])
        // Open windows go as partial rows, before the delivery queue closes.
        aggregation.emitAll()
        delivery.submit(buffering.sealAll(trigger: .shutdown))
        delivery.close()
    }

    // MARK: Reload

    /// Applies a new configuration (hot reload). Buffered rows stay in their batches and follow the new rules from
    /// now on; a batch that already meets its new limits is flushed. Returns notes on what could not change without
    /// a restart.
    @discardableResult
    package func apply(_ new: BatchhouseConfiguration) -> [String] {
        let old = configuration.value
        var applied = new
        var notes: [String] = []
        if new.listen != old.listen {
            notes.append("listen stays \(old.listen) until a restart")
            applied.listen = old.listen
        }
        if new.upstream.maxConcurrentFlushes != old.upstream.maxConcurrentFlushes {
            notes.append("max_concurrent_flushes stays \(old.upstream.maxConcurrentFlushes) until a restart")
            applied.upstream.maxConcurrentFlushes = old.upstream.maxConcurrentFlushes
        }
        if new.spool != old.spool {
            notes.append("spool settings stay as they were until a restart")
            applied.spool = old.spool
        }
        if new.deadLetterDir != old.deadLetterDir {
            notes.append("dead_letter_dir stays \(old.deadLetterDir) until a restart")
            applied.deadLetterDir = old.deadLetterDir
        }
        gateway.update(applied.upstream)
        configuration.replace(with: applied)
        buffering.setMaxBufferMemory(applied.limits.maxBufferMemory)
        let rules = applied.rules
        delivery.submit(buffering.updateRules { key in rules.rule(database: key.database ?? "default", table: key.table) })
        aggregation.update(rules)
        if rules.entries.contains(where: { $0.rule.aggregate != nil }) || old.rules.entries.contains(where: { $0.rule.aggregate != nil }) {
            aggregateRulesChanged.store(true, ordering: .relaxed)
        }
        metrics.configReloaded(ok: true)
        return notes
    }

    // MARK: Figures

    /// What `/health` and `/metrics?format=json` report.
    package struct Status: Sendable {
        package var upstreams: [(url: String, state: UpstreamPool.BreakerState, inFlight: Int, healthy: Bool?)]
        package var hasCheckedHealth: Bool
        package var bufferedRows: Int
        /// Bytes in open batches.
        package var bufferedBytes: Int
        /// Bytes of sealed batches in memory: waiting for delivery (no spool) or in flight.
        package var queuedBytes: Int
        /// Bytes of sealed batches waiting in the spool.
        package var backlogBytes: Int
        package var memoryInUse: Int
        package var spoolBytes: Int
        package var uptime: Duration
        package var totals: BatchhouseMetrics.Totals
        /// The per-thread request counters, summed.
        package var requests: BatchhouseMetrics.RequestFigures
        /// Client connections open now.
        package var connections: Int
        package var startTimeUnix: Double
    }

    package func status() -> Status {
        Status(
            upstreams: gateway.serverStates(), hasCheckedHealth: gateway.hasCheckedHealth,
            bufferedRows: buffering.bufferedRows, bufferedBytes: buffering.bufferedBytes,
            queuedBytes: buffering.sealedBytes, backlogBytes: buffering.backlogBytes,
            memoryInUse: buffering.memoryInUse, spoolBytes: spool?.sizeBytes ?? 0, uptime: clock.now() - startedAt,
            totals: metrics.snapshot, requests: metrics.requestFigures, connections: metrics.connectionsOpenCount,
            startTimeUnix: metrics.startTimeUnix)
    }

    /// Prometheus text, with the gauges that are read at scrape time brought up to date. `health`: the status
    /// `/health` answers now (it depends on the server's state too); nil leaves it out.
    package func prometheusText(health: String? = nil) -> [UInt8] {
        metrics.scraping { scrape(health: health) }
    }

    private func scrape(health: String?) -> [UInt8] {
        if let health { metrics.updateHealth(health) }
        // Server URLs without their credentials, as /health shows them.
        metrics.updateUpstreams(gateway.serverStates().map { (redacted($0.url), $0.state, $0.healthy) })
        metrics.updateBreakerOpenings(gateway.breakerOpenings().map { (redacted($0.url), $0.openings) })
        metrics.updateReceived(buffering.receivedByTable())
        metrics.updateLimits(
            memoryInUse: buffering.memoryInUse, memoryLimit: buffering.limit,
            spoolMaxBytes: spool?.maxSize)
        metrics.setQueueBytes(buffering.sealedBytes)
        metrics.setBacklog(bytes: buffering.backlogBytes, batches: delivery.queuedBatches)
        metrics.setReceivingBytes(buffering.incomingBytes)
        metrics.updateBuffered(buffering.bufferedByTable())
        metrics.updateAdaptiveTargets(buffering.adaptiveTargets())
        if let spool { metrics.updateSpool(spool.statistics) }
        return metrics.prometheusText()
    }
}
