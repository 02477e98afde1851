import BatchhouseCore
import BatchhouseSpool
import Foundation
import Prometheus
import Synchronization

/// Every figure Batchhouse exports, in Prometheus text and as the JSON block of `/metrics?format=json`.
package final class BatchhouseMetrics: Sendable {
    package enum RequestKind: String, CaseIterable {
        case batchedInsert = "batched_insert"
        case immediateInsert = "immediate_insert"
        case passthrough
        case local
        case rejected
    }

    package struct Totals: Sendable {
        package var batches = 0
        package var rowsFlushed = 0
        package var failedBatches = 0
        package var flushLatencySeconds = 0.0
        package var lastFlushUnixSeconds: Double?
    }

    /// What the per-thread counters add up to (`ThreadCounters`), for the JSON view.
    package struct RequestFigures: Sendable {
        /// Requests by kind.
        package var requests: [RequestKind: Int] = [:]
        /// Requests answered with an error, by reason.
        package var refused: [RefusalReason: Int] = [:]
        /// INSERTs answered with an ack, and the seconds their answers took.
        package var answered = 0
        package var answerSeconds = 0.0

        /// Every request but those of the local endpoints: what the JSON view calls an event.
        package var events: Int { requests.filter { $0.key != .local }.values.reduce(0, +) }
        package var errors: Int { refused.values.reduce(0, +) }
    }

    package let registry = PrometheusCollectorRegistry()
    /// Requests, refusals and answer latency: moved by every request, so kept per thread (`ThreadCounters`).
    private let threadCounters = ThreadCounterBlocks()
    /// Aggregate rules' and ingest anomalies' figures (docs/aggregation.md).
    package let aggregation = AggregationMetrics()
    private let retries: Counter
    private let queueBytes: Gauge
    private let configReloads: Counter
    private let configReloadFailures: Counter
    private let connectionsOpen: Gauge
    private let connectionsRefused: Counter
    private let acceptErrors: Counter
    private let timeouts: [String: Counter]
    private let receivingBytes: Gauge
    private let readWaits: Counter
    private let readWaitSeconds: Counter
    private let readWaitTimeouts: Counter
    /// Open client connections, for `limits.max_connections` (the gauge follows it).
    private let openConnections = Atomic<Int>(0)
    private let perTable = Mutex<[String: TableCounters]>([:])
    private let bufferedTables = Mutex<Set<String>>([])
    private let totals = Mutex(Totals())
    /// Rows and bytes received per table at the last scrape (`updateReceived`), so each scrape adds the growth.
    private let receivedAtLastScrape = Mutex<[String: (rows: Int, bytes: Int)]>([:])
    /// Breaker openings per server URL at the last scrape.
    private let breakerOpenings = Mutex<[String: Int]>([:])
    /// The server URLs of the last scrape: a server a reload removed loses its series.
    private let knownUpstreams = Mutex<Set<String>>([])
    /// One scrape at a time: a scrape reads figures, then moves counters by their growth since the last one; two
    /// at once could record an older reading as the last and add the same growth twice.
    private let scrapeLock = Mutex(())
    /// The spool's counters at the last scrape, so each scrape adds what they grew by.
    private let spoolCounters = Mutex<[String: Int]>([:])
    /// Wall-clock seconds since 1970 when these metrics were made (the proxy's start).
    package let startTimeUnix: Double

    struct TableCounters: Sendable {
        var rowsReceived: Counter
        var bytesReceived: Counter
        var rowsFlushed: Counter
        var batchesFlushed: Counter
        var flushFailures: Counter
        var rowsDeadLettered: Counter
        var rowsSampledOut: Counter
        var flushDuration: DurationHistogram
        var batchRows: ValueHistogram
        var batchBytes: ValueHistogram
        var timeInBuffer: DurationHistogram
    }

    /// Buckets of `batchhouse_flush_duration_seconds`.
    static let flushDurationBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
        .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5),
        .seconds(10), .seconds(30),
    ]
    /// Buckets of `batchhouse_time_in_buffer_seconds`: up to the longest `max_delay` anyone sets, and a backlog's waits.
    static let timeInBufferBuckets: [Duration] = [
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
        .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10), .seconds(30),
        .seconds(60), .seconds(120), .seconds(300),
    ]
    static let batchRowsBuckets: [Double] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000]
    /// Powers of 4 from 1 KiB to 256 MiB.
    static let batchBytesBuckets: [Double] = (0..<10).map { Double(1024 << (2 * $0)) }

    /// The `kind` labels of `batchhouse_timeouts_total`.
    package static let timeoutKinds = ["header", "body", "request", "idle"]

    /// `startTimeUnix`: the wall clock at the proxy's start (tests pass their own).
    package init(startTimeUnix: Double = Date().timeIntervalSince1970) {
        self.startTimeUnix = startTimeUnix
        retries = registry.makeCounter(
            descriptor: .init(
                namespace: "batchhouse", metricName: "upstream_retries", unitName: "total",
                helpText: "Batch inserts retried after a connection error, timeout or retryable ClickHouse error"))
        queueBytes = registry.makeGauge(
            descriptor: .init(
                namespace: "batchhouse", metricName: "flush_queue", unitName: "bytes",
                helpText: "Bytes of sealed batches waiting for or in an upstream insert"))
        configReloads = registry.makeCounter(
            descriptor: .init(
                namespace: "batchhouse", metricName: "config_reloads", unitName: "total",
                helpText: "Configuration reloads applied"))
        configReloadFailures = registry.makeCounter(
            descriptor: .init(
                namespace: "batchhouse", metricName: "config_reload_failures", unitName: "total",
                helpText: "Configuration reloads rejected because the new file was invalid"))
        connectionsOpen = registry.makeGauge(
            descriptor: .init(
                namespace: "batchhouse", metricName: "connections_open", unitName: "",
                helpText: "Open client connections (limits.max_connections)"))
        connectionsRefused = registry.makeCounter(
            descriptor: .init(
                namespace: "batchhouse", metricName: "connections_refused", unitName: "total",
                helpText: "Client connections answered 503 and closed because limits.max_connections were open"))
        acceptErrors = registry.makeCounter(
            descriptor: .init(
                namespace: "batchhouse", metricName: "accept_errors", unitName: "total",
                helpText: "Failed accepts (EMFILE, ENFILE, ...), each followed by a pause in accepting"))
        var timeouts: [String: Counter] = [:]
        for kind in Self.timeoutKinds {
            timeouts[kind] = registry.makeCounter(
                descriptor: .init(
                    namespace: "batchhouse", metricName: "timeouts", unitName: "total",
                    helpText: "Client connections closed for a timeout: header, body, request (408) or idle"),
                labels: [("kind", kind)])
        }
        self.timeouts = timeouts
        receivingBytes = registry.makeGauge(
            descriptor: .init(
                namespace: "batchhouse", metricName: "receiving", unitName: "bytes",
                helpText: "Bytes of request bodies still arriving, held against limits.max_buffer_memory"))
        readWaits = registry.makeCounter(
            descriptor: .init(
                namespace: "batchhouse", metricName: "read_your_writes_waits", unitName: "total",
                helpText: "Requests that waited for batches holding their identity's acknowledged rows"))
        readWaitSeconds = registry.makeCounter(
            descriptor: .init(
                namespace: "batchhouse", metricName: "read_your_writes_wait", unitName: "seconds_total",
                helpText: "Time requests spent waiting for their identity's batches (read_your_writes)"))
        readWaitTimeouts = registry.makeCounter(
            descriptor: .init(
                namespace: "batchhouse", metricName: "read_your_writes_timeouts", unitName: "total",
                helpText: "Waits for an identity's batches that ran out of time; the request went upstream anyway"))
    }

    /// A request waited `seconds` for its identity's batches; `timedOut` when its bound ran out first.
    package func readWaited(seconds: Double, timedOut: Bool) {
        readWaits.increment()
        readWaitSeconds.increment(by: seconds)
        if timedOut { readWaitTimeouts.increment() }
    }

    // MARK: Connections

    /// A connection was accepted; returns how many are open now, this one included.
    package func connectionOpened() -> Int {
        let open = openConnections.add(1, ordering: .relaxed).newValue
        connectionsOpen.increment()
        return open
    }

    package func connectionClosed() {
        openConnections.subtract(1, ordering: .relaxed)
        connectionsOpen.decrement()
    }

    package var connectionsOpenCount: Int { openConnections.load(ordering: .relaxed) }

    package func connectionRefused() { connectionsRefused.increment() }

    package func acceptFailed() { acceptErrors.increment() }

    /// `kind`: one of `timeoutKinds`.
    package func timedOut(_ kind: String) { timeouts[kind]?.increment() }

    package func setReceivingBytes(_ bytes: Int) { receivingBytes.set(Double(bytes)) }

    /// Counted on the calling thread's own block: no lock, no lookup (`ThreadCounters`).
    @inline(__always)
    package func request(_ kind: RequestKind) {
        threadCounters.current().request(kind)
    }

    /// A request answered with an error of the proxy's own, or with ClickHouse's refusal of rows it waited for.
    @inline(__always)
    package func refused(_ reason: RefusalReason) {
        threadCounters.current().refused(reason)
    }

    /// An INSERT the proxy took in was answered with `ack` after `nanoseconds` (from its head to the answer).
    @inline(__always)
    package func answered(ack: ThreadCounters.LatencyAck, nanoseconds: Int64) {
        threadCounters.current().answered(ack, nanoseconds: nanoseconds)
    }

    /// The per-thread counters, summed.
    package var requestFigures: RequestFigures {
        let sums = threadCounters.sums()
        typealias Layout = ThreadCounters.Layout
        var figures = RequestFigures()
        for kind in RequestKind.allCases { figures.requests[kind] = sums[Layout.requests + kind.index] }
        for reason in RefusalReason.allCases { figures.refused[reason] = sums[Layout.refused + reason.index] }
        for ack in ThreadCounters.LatencyAck.allCases {
            for bucket in 0...Layout.latencyBounds.count { figures.answered += sums[Layout.latencyBucket(ack, bucket)] }
            figures.answerSeconds += Double(sums[Layout.latencySum(ack)]) / 1e9
        }
        return figures
    }

    private func table(_ name: String) -> TableCounters {
        if let counters = perTable.withLock({ $0[name] }) { return counters }
        func counter(_ metric: String, _ help: String) -> Counter {
            registry.makeCounter(
                descriptor: .init(namespace: "batchhouse", metricName: metric, unitName: "total", helpText: help),
                labels: [("table", name)])
        }
        let labels = [("table", name)]
        let counters = TableCounters(
            rowsReceived: counter("received_rows", "Rows accepted from clients into batches"),
            bytesReceived: counter("received_bytes", "Row bytes accepted from clients into batches"),
            rowsFlushed: counter("flushed_rows", "Rows ClickHouse accepted in batch inserts"),
            batchesFlushed: counter("flushed_batches", "Batch inserts ClickHouse accepted"),
            flushFailures: counter("flush_failures", "Batch inserts that failed for good (after retries)"),
            rowsDeadLettered: counter("dead_lettered_rows", "Rows written to the dead-letter folder"),
            rowsSampledOut: counter("sampled_out_rows", "Rows dropped on purpose by a table's `sample` rule"),
            flushDuration: registry.makeDurationHistogram(
                descriptor: .init(
                    namespace: "batchhouse", metricName: "flush_duration", unitName: "seconds",
                    helpText: "Time from a batch's first upstream attempt to its outcome, retries included"),
                labels: labels, buckets: Self.flushDurationBuckets),
            batchRows: registry.makeValueHistogram(
                descriptor: .init(
                    namespace: "batchhouse", metricName: "batch_rows", unitName: "",
                    helpText: "Rows per batch insert ClickHouse accepted (each part of a split batch is one)"),
                labels: labels, buckets: Self.batchRowsBuckets),
            batchBytes: registry.makeValueHistogram(
                descriptor: .init(
                    namespace: "batchhouse", metricName: "batch_bytes", unitName: "",
                    helpText: "Bytes of the body of each batch insert ClickHouse accepted, before compression (each part of a split batch is one)"),
                labels: labels, buckets: Self.batchBytesBuckets),
            timeInBuffer: registry.makeDurationHistogram(
                descriptor: .init(
                    namespace: "batchhouse", metricName: "time_in_buffer", unitName: "seconds",
                    helpText: "Time from a batch's first row to the start of the delivery that settled it, once per batch"),
                labels: labels, buckets: Self.timeInBufferBuckets)
        )
        return perTable.withLock { tables in
            if let existing = tables[name] { return existing }
            tables[name] = counters
            return counters
        }
    }

    /// Moves the received counters to the store's figures (`Buffering.receivedByTable`: rows of sealed batches
    /// plus open ones, counted per batch under the store's lock, never per request). Called at scrape time.
    /// The figures only grow, so a reading older than the last one (a scrape that read before another but got
    /// here after it) adds nothing and is not kept.
    package func updateReceived(_ byTable: [String: (rows: Int, bytes: Int)]) {
        let growth = receivedAtLastScrape.withLock { last in
            byTable.map { name, now in
                let before = last[name] ?? (0, 0)
                last[name] = (max(before.rows, now.rows), max(before.bytes, now.bytes))
                return (name: name, rows: now.rows - before.rows, bytes: now.bytes - before.bytes)
            }
        }
        for (name, rows, bytes) in growth where rows > 0 || bytes > 0 {
            let counters = table(name)
            if rows > 0 { counters.rowsReceived.increment(by: Int64(rows)) }
            if bytes > 0 { counters.bytesReceived.increment(by: Int64(bytes)) }
        }
    }

    package func sampledOut(table name: String, rows: Int) {
        table(name).rowsSampledOut.increment(by: Int64(rows))
    }

    /// ClickHouse took a batch insert of `rows` rows and `bytes` bytes (each part of a split batch is one) after
    /// `duration`.
    package func flushed(table name: String, rows: Int, bytes: Int, duration: Duration, unixTime: Double) {
        let counters = table(name)
        counters.rowsFlushed.increment(by: Int64(rows))
        counters.batchesFlushed.increment()
        counters.flushDuration.record(duration)
        counters.batchRows.record(Double(rows))
        counters.batchBytes.record(Double(bytes))
        totals.withLock {
            $0.batches += 1
            $0.rowsFlushed += rows
            $0.flushLatencySeconds += duration.seconds
            $0.lastFlushUnixSeconds = unixTime
        }
    }

    /// A batch of `table` waited `duration` from its first row to the start of the delivery that settled it.
    package func timeInBuffer(table name: String, _ duration: Duration) {
        table(name).timeInBuffer.record(max(duration, .zero))
    }

    package func flushFailed(table name: String, duration: Duration) {
        let counters = table(name)
        counters.flushFailures.increment()
        counters.flushDuration.record(duration)
        totals.withLock { $0.failedBatches += 1 }
    }

    package func deadLettered(table name: String, rows: Int) {
        table(name).rowsDeadLettered.increment(by: Int64(rows))
    }

    package func retried() { retries.increment() }

    package func configReloaded(ok: Bool) {
        (ok ? configReloads : configReloadFailures).increment()
    }

    package func setQueueBytes(_ bytes: Int) { queueBytes.set(Double(bytes)) }

    package var snapshot: Totals { totals.withLock { $0 } }

    /// Sets the per-table buffer gauges from the store's figures (tables that emptied go to 0).
    package func updateBuffered(_ byTable: [String: (rows: Int, bytes: Int)]) {
        let previous = bufferedTables.withLock { known in
            let old = known
            known.formUnion(byTable.keys)
            return old
        }
        for name in previous.union(byTable.keys) {
            let figures = byTable[name] ?? (0, 0)
            registry.makeGauge(
                descriptor: .init(
                    namespace: "batchhouse", metricName: "buffered_rows", unitName: "",
                    helpText: "Rows waiting in open batches"),
                labels: [("table", name)]
            ).set(Double(figures.rows))
            registry.makeGauge(
                descriptor: .init(
                    namespace: "batchhouse", metricName: "buffered_bytes", unitName: "",
                    helpText: "Row bytes waiting in open batches"),
                labels: [("table", name)]
            ).set(Double(figures.bytes))
        }
    }

    /// The spool's size, live data, reserve and backlog, set at scrape time; its failure counters move by what
    /// they grew since the last scrape. Corruptions found at start are counted by `spoolCorruptions`.
    package func updateSpool(_ statistics: SpoolStatistics) {
        func gauge(_ name: String, _ unit: String, _ help: String, _ value: Int) {
            setGauge(name, unit: unit, help, Double(value))
        }
        gauge("spool", "bytes", "Bytes of spool segment files on disk (delivered data included until reclaimed)", statistics.fileBytes)
        gauge("spool_live", "bytes", "Record bytes of spooled rows not yet in ClickHouse: what spool.max_size bounds", statistics.liveBytes)
        gauge("spool_undelivered_chunks", "", "Spooled requests whose rows are not yet in ClickHouse", statistics.undeliveredChunks)
        gauge("spool_reserve", "bytes", "Bytes preallocated for delivered marks and rollovers on a full disk", statistics.reserveBytes)
        gauge(
            "spool_unwritten_marks", "",
            "Delivered spooled requests whose delivered mark is not written yet (retried; a restart would replay them)",
            statistics.unwrittenMarks)
        // Counters: each scrape adds what the spool's own counts grew by since the highest reading so far (they
        // only grow; scrapes also run one at a time, `scraping`).
        let counters = statistics.counters
        let current = [
            "max_size": counters.refusedMaxSize, "no_space": counters.refusedNoSpace, "io": counters.failedIO,
            "delivered_mark": counters.markFailures, "reserve_released": counters.reserveReleasedBytes,
        ]
        let growth = spoolCounters.withLock { last in
            current.map { key, value in
                let before = last[key] ?? 0
                last[key] = max(before, value)
                return (key: key, delta: value - before)
            }
        }
        for (key, delta) in growth {
            let counter =
                key == "reserve_released"
                ? registry.makeCounter(
                    descriptor: .init(
                        namespace: "batchhouse", metricName: "spool_reserve_released_bytes", unitName: "total",
                        helpText: "Bytes of the spool reserve given up so that delivered marks or a rollover fit on a full disk"))
                : registry.makeCounter(
                    descriptor: .init(
                        namespace: "batchhouse", metricName: "spool_write_failures", unitName: "total",
                        helpText:
                            "Spool writes that failed or were refused, by reason: max_size (spool.max_size reached), no_space (disk full or reserve in use), io, delivered_mark (a delivered mark that did not fit even from the reserve; retried)"
                    ),
                    labels: [("reason", key)])
            if delta > 0 { counter.increment(by: Int64(delta)) }
        }
    }

    package func spoolCorruptions(_ count: Int) {
        registry.makeCounter(
            descriptor: .init(
                namespace: "batchhouse", metricName: "spool_corruptions", unitName: "total",
                helpText: "Corrupt or torn spool records found and skipped at start, or unreadable when read back")
        ).increment(by: Int64(count))
    }

    /// Sealed batches waiting in the spool (their rows on disk, not in memory), set at scrape time.
    package func setBacklog(bytes: Int, batches: Int) {
        registry.makeGauge(
            descriptor: .init(
                namespace: "batchhouse", metricName: "backlog", unitName: "bytes",
                helpText: "Bytes of sealed batches waiting for delivery in the spool, not in memory")
        ).set(Double(bytes))
        registry.makeGauge(
            descriptor: .init(
                namespace: "batchhouse", metricName: "delivery_queue_batches", unitName: "",
                helpText: "Sealed batches waiting for a delivery worker")
        ).set(Double(batches))
    }

    /// A batch found in doubt at start (sent before a crash, outcome unknown) was settled: `landed` (found finished
    /// in system.query_log, not sent again), `resent` (not finished: sent again under its query id), `at_least_once`
    /// (could not be told: sent again).
    package func inDoubtSettled(_ outcome: String) {
        registry.makeCounter(
            descriptor: .init(
                namespace: "batchhouse", metricName: "in_doubt_batches", unitName: "total",
                helpText: "Batches found in doubt at start, by how they were settled: landed, resent, at_least_once"),
            labels: [("outcome", outcome)]
        ).increment()
    }

    /// An attempt without an answer was followed by a question to system.query_log: `found` when the query had
    /// finished (the batch was not sent again), else it was unknown (sent again, at least once).
    package func queryOutcomeChecked(found: Bool) {
        registry.makeCounter(
            descriptor: .init(
                namespace: "batchhouse", metricName: "unanswered_attempts_settled", unitName: "total",
                helpText:
                    "Attempts without an answer settled by asking system.query_log: landed (not sent again) or unknown (sent again)"),
            labels: [("outcome", found ? "landed" : "unknown")]
        ).increment()
    }

    /// The adaptive controllers' current flush points, per table.
    package func updateAdaptiveTargets(_ targets: [String: AdaptiveTarget]) {
        for (table, target) in targets {
            for (metric, help, value) in [
                ("adaptive_target_rows", "Rows at which the adaptive strategy flushes this table now", Double(target.maxRows)),
                ("adaptive_target_bytes", "Bytes at which the adaptive strategy flushes this table now", Double(target.maxBytes)),
                ("adaptive_target_delay_seconds", "Delay after the first row at which the adaptive strategy flushes now", target.maxDelay.seconds),
            ] {
                registry.makeGauge(
                    descriptor: .init(namespace: "batchhouse", metricName: metric, unitName: "", helpText: help),
                    labels: [("table", table)]
                ).set(value)
            }
        }
    }

    // MARK: Scrape-time figures

    /// The `/health` statuses, each a series of `batchhouse_health_status` (1 for the current one).
    package static let healthStatuses = ["initializing", "healthy", "degraded", "unhealthy", "disconnected"]

    /// Runs one scrape's reads and updates (`BatchhouseEngine.prometheusText`) with no other scrape in between.
    package func scraping<Result>(_ body: () -> Result) -> Result {
        scrapeLock.withLock { _ in body() }
    }

    private func upstreamUpGauge(_ url: String) -> Gauge {
        registry.makeGauge(
            descriptor: .init(
                namespace: "batchhouse", metricName: "upstream_up", unitName: "",
                helpText: "1 when the server answered its last /ping health check, 0 when it did not"),
            labels: [("upstream", url)])
    }

    private func breakerStateGauge(_ url: String) -> Gauge {
        registry.makeGauge(
            descriptor: .init(
                namespace: "batchhouse", metricName: "upstream_breaker_state", unitName: "",
                helpText: "The server's circuit breaker: 0 closed, 1 half-open (one trial insert), 2 open"),
            labels: [("upstream", url)])
    }

    private func breakerOpeningsCounter(_ url: String) -> Counter {
        registry.makeCounter(
            descriptor: .init(
                namespace: "batchhouse", metricName: "upstream_breaker_openings", unitName: "total",
                helpText: "Times the server's circuit breaker opened (failures in a row, or a failed trial insert)"),
            labels: [("upstream", url)])
    }

    /// Each server's last `/ping` (once checked) and breaker, by its URL without credentials. A server no longer
    /// configured (a reload removed it) loses its series, so no alert stays on a server that is gone.
    package func updateUpstreams(_ servers: [(url: String, state: UpstreamPool.BreakerState, healthy: Bool?)]) {
        let current = Set(servers.map(\.url))
        let removed = knownUpstreams.withLock { known in
            defer { known = current }
            return known.subtracting(current)
        }
        for url in removed {
            registry.unregisterGauge(upstreamUpGauge(url))
            registry.unregisterGauge(breakerStateGauge(url))
            registry.unregisterCounter(breakerOpeningsCounter(url))
            breakerOpenings.withLock { $0[url] = nil }
        }
        for server in servers {
            if let healthy = server.healthy { upstreamUpGauge(server.url).set(Double(healthy ? 1 : 0)) }
            let state: Double =
                switch server.state {
                case .closed: 0
                case .halfOpen: 1
                case .open: 2
                }
            breakerStateGauge(server.url).set(state)
        }
    }

    /// Each server's breaker openings so far; the counter grows by what they grew since the last scrape.
    package func updateBreakerOpenings(_ servers: [(url: String, openings: Int)]) {
        // Openings only grow while a server is configured (a removed one is forgotten, `updateUpstreams`): an
        // older reading adds nothing and is not kept.
        let growth = breakerOpenings.withLock { last in
            servers.map { server in
                let before = last[server.url] ?? 0
                last[server.url] = max(before, server.openings)
                return (url: server.url, delta: server.openings - before)
            }
        }
        for (url, delta) in growth {
            let counter = breakerOpeningsCounter(url)
            if delta > 0 { counter.increment(by: Int64(delta)) }
        }
    }

    /// `status`: the one `/health` answers now.
    package func updateHealth(_ status: String) {
        for candidate in Self.healthStatuses {
            registry.makeGauge(
                descriptor: .init(
                    namespace: "batchhouse", metricName: "health_status", unitName: "",
                    helpText: "1 for the status /health answers now, 0 for the others"),
                labels: [("status", candidate)]
            ).set(Double(candidate == status ? 1 : 0))
        }
    }

    /// The memory budget and what it counts; the spool's bound when there is a spool; when the proxy started.
    package func updateLimits(memoryInUse: Int, memoryLimit: Int, spoolMaxBytes: Int?) {
        setGauge(
            "memory_in_use_bytes",
            "Bytes counted in limits.max_buffer_memory: open batches, bodies arriving, reserved and sealed in memory",
            Double(memoryInUse))
        setGauge("memory_limit_bytes", "limits.max_buffer_memory", Double(memoryLimit))
        if let spoolMaxBytes {
            setGauge("spool_max_bytes", "spool.max_size: the bound on spool_live_bytes", Double(spoolMaxBytes))
        }
        setGauge("start_time_seconds", "When the proxy started, in seconds since 1970", startTimeUnix)
    }

    /// An unlabelled gauge `batchhouse_<name>[_<unit>]`, set to `value`.
    private func setGauge(_ name: String, unit: String = "", _ help: String, _ value: Double) {
        registry.makeGauge(
            descriptor: .init(namespace: "batchhouse", metricName: name, unitName: unit, helpText: help)
        ).set(value)
    }

    package func prometheusText() -> [UInt8] {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        emitThreadCounters(into: &buffer)
        aggregation.emit(into: &buffer)
        return buffer
    }

    /// The per-thread counters, summed, in Prometheus text (the registry cannot hold them: it has no bulk add).
    private func emitThreadCounters(into buffer: inout [UInt8]) {
        let sums = threadCounters.sums()
        typealias Layout = ThreadCounters.Layout
        var text = ""
        text += "# HELP batchhouse_requests_total HTTP requests by kind: batched_insert, immediate_insert, passthrough, local, rejected\n"
        text += "# TYPE batchhouse_requests_total counter\n"
        for kind in RequestKind.allCases {
            text += "batchhouse_requests_total{kind=\"\(kind.rawValue)\"} \(sums[Layout.requests + kind.index])\n"
        }
        text += "# HELP batchhouse_refused_requests_total Requests answered with an error, by reason: memory, spool, limit, auth, syntax, upstream, clickhouse, other\n"
        text += "# TYPE batchhouse_refused_requests_total counter\n"
        for reason in RefusalReason.allCases {
            text += "batchhouse_refused_requests_total{reason=\"\(reason.rawValue)\"} \(sums[Layout.refused + reason.index])\n"
        }
        text += "# HELP batchhouse_insert_latency_seconds Time from an INSERT's head to its answer, by ack mode (immediate tables answer as flushed)\n"
        text += "# TYPE batchhouse_insert_latency_seconds histogram\n"
        for ack in ThreadCounters.LatencyAck.allCases {
            var cumulative = 0
            for (bucket, bound) in Layout.latencyBounds.enumerated() {
                cumulative += sums[Layout.latencyBucket(ack, bucket)]
                text += "batchhouse_insert_latency_seconds_bucket{ack=\"\(ack.rawValue)\",le=\"\(bound)\"} \(cumulative)\n"
            }
            cumulative += sums[Layout.latencyBucket(ack, Layout.latencyBounds.count)]
            text += "batchhouse_insert_latency_seconds_bucket{ack=\"\(ack.rawValue)\",le=\"+Inf\"} \(cumulative)\n"
            text += "batchhouse_insert_latency_seconds_sum{ack=\"\(ack.rawValue)\"} \(Double(sums[Layout.latencySum(ack)]) / 1e9)\n"
            text += "batchhouse_insert_latency_seconds_count{ack=\"\(ack.rawValue)\"} \(cumulative)\n"
        }
        buffer.append(contentsOf: text.utf8)
    }
}
