import BatchhouseCore
import BatchhouseSpool
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
        package var rowsReceived = 0
        package var bytesReceived = 0
    }

    package let registry = PrometheusCollectorRegistry()
    private let requests: [RequestKind: Counter]
    private let flushDuration: DurationHistogram
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
    /// Received rows and bytes change on every request, from every event loop: atomics, not the `totals` lock.
    private let rowsReceivedTotal = Atomic<Int>(0)
    private let bytesReceivedTotal = Atomic<Int>(0)
    /// The spool's counters at the last scrape, so each scrape adds what they grew by.
    private let spoolCounters = Mutex<[String: Int]>([:])

    struct TableCounters: Sendable {
        var rowsReceived: Counter
        var bytesReceived: Counter
        var rowsFlushed: Counter
        var batchesFlushed: Counter
        var flushFailures: Counter
        var rowsDeadLettered: Counter
        var rowsSampledOut: Counter
    }

    /// The `kind` labels of `batchhouse_timeouts_total`.
    package static let timeoutKinds = ["header", "body", "request", "idle"]

    package init() {
        var requests: [RequestKind: Counter] = [:]
        for kind in RequestKind.allCases {
            requests[kind] = registry.makeCounter(
                descriptor: .init(
                    namespace: "batchhouse", metricName: "requests", unitName: "total",
                    helpText: "HTTP requests by kind: batched_insert, immediate_insert, passthrough, local, rejected"),
                labels: [("kind", kind.rawValue)])
        }
        self.requests = requests
        flushDuration = registry.makeDurationHistogram(
            descriptor: .init(
                namespace: "batchhouse", metricName: "flush_duration", unitName: "seconds",
                helpText: "Time from a batch's first upstream attempt to its outcome, retries included"),
            labels: [],
            buckets: [
                .milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
                .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5),
                .seconds(10), .seconds(30),
            ])
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

    package func request(_ kind: RequestKind) {
        requests[kind]?.increment()
    }

    private func table(_ name: String) -> TableCounters {
        if let counters = perTable.withLock({ $0[name] }) { return counters }
        func counter(_ metric: String, _ help: String) -> Counter {
            registry.makeCounter(
                descriptor: .init(namespace: "batchhouse", metricName: metric, unitName: "total", helpText: help),
                labels: [("table", name)])
        }
        let counters = TableCounters(
            rowsReceived: counter("received_rows", "Rows accepted from clients into batches"),
            bytesReceived: counter("received_bytes", "Row bytes accepted from clients into batches"),
            rowsFlushed: counter("flushed_rows", "Rows ClickHouse accepted in batch inserts"),
            batchesFlushed: counter("flushed_batches", "Batch inserts ClickHouse accepted"),
            flushFailures: counter("flush_failures", "Batch inserts that failed for good (after retries)"),
            rowsDeadLettered: counter("dead_lettered_rows", "Rows written to the dead-letter folder"),
            rowsSampledOut: counter("sampled_out_rows", "Rows dropped on purpose by a table's `sample` rule")
        )
        return perTable.withLock { tables in
            if let existing = tables[name] { return existing }
            tables[name] = counters
            return counters
        }
    }

    package func received(table name: String, rows: Int, bytes: Int) {
        let counters = table(name)
        counters.rowsReceived.increment(by: Int64(rows))
        counters.bytesReceived.increment(by: Int64(bytes))
        rowsReceivedTotal.add(rows, ordering: .relaxed)
        bytesReceivedTotal.add(bytes, ordering: .relaxed)
    }

    package func sampledOut(table name: String, rows: Int) {
        table(name).rowsSampledOut.increment(by: Int64(rows))
    }

    package func flushed(table name: String, rows: Int, duration: Duration, unixTime: Double) {
        let counters = table(name)
        counters.rowsFlushed.increment(by: Int64(rows))
        counters.batchesFlushed.increment()
        flushDuration.record(duration)
        totals.withLock {
            $0.batches += 1
            $0.rowsFlushed += rows
            $0.flushLatencySeconds += duration.seconds
            $0.lastFlushUnixSeconds = unixTime
        }
    }

    package func flushFailed(table name: String, duration: Duration) {
        table(name).flushFailures.increment()
        flushDuration.record(duration)
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

    package var snapshot: Totals {
        var snapshot = totals.withLock { $0 }
        snapshot.rowsReceived = rowsReceivedTotal.load(ordering: .relaxed)
        snapshot.bytesReceived = bytesReceivedTotal.load(ordering: .relaxed)
        return snapshot
    }

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
            registry.makeGauge(
                descriptor: .init(namespace: "batchhouse", metricName: name, unitName: unit, helpText: help)
            ).set(Double(value))
        }
        gauge("spool", "bytes", "Bytes of spool segment files on disk (delivered data included until reclaimed)", statistics.fileBytes)
        gauge("spool_live", "bytes", "Record bytes of spooled rows not yet in ClickHouse: what spool.max_size bounds", statistics.liveBytes)
        gauge("spool_undelivered_chunks", "", "Spooled requests whose rows are not yet in ClickHouse", statistics.undeliveredChunks)
        gauge("spool_reserve", "bytes", "Bytes preallocated for delivered marks and rollovers on a full disk", statistics.reserveBytes)
        gauge(
            "spool_unwritten_marks", "",
            "Delivered spooled requests whose delivered mark is not written yet (retried; a restart would replay them)",
            statistics.unwrittenMarks)
        // Counters: each scrape adds what the spool's own counts grew by since the last one (under one lock, so
        // concurrent scrapes never add the same growth twice).
        let counters = statistics.counters
        let current = [
            "max_size": counters.refusedMaxSize, "no_space": counters.refusedNoSpace, "io": counters.failedIO,
            "delivered_mark": counters.markFailures, "reserve_released": counters.reserveReleasedBytes,
        ]
        let growth = spoolCounters.withLock { last in
            defer { last = current }
            return current.map { (key: $0.key, delta: $0.value - (last[$0.key] ?? 0)) }
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

    package func prometheusText() -> [UInt8] {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return buffer
    }
}
