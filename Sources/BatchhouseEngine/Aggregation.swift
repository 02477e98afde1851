import BatchhouseConfig
import BatchhouseCore
import BatchhouseSpool
import Logging
import Synchronization

/// The tables with an `aggregate:` rule (docs/aggregation.md): their rows are folded into windows per identity and
/// source table, each window emitted as one batch of summaries through the normal delivery path (spool, retries,
/// metrics), with its pattern findings as a second batch. Requests whose ack is `durable` or `flushed` wait for the
/// windows that hold their rows. Also watches every table's ingest rate (`IngestAnomalyDetector`).
package final class Aggregation: Sendable {
    /// Whose rows, into which table: identities never share a summary, as they never share a batch.
    package struct Key: Hashable, Sendable {
        package var identity: ClientIdentity
        package var database: String?
        package var table: String

        package init(identity: ClientIdentity, database: String?, table: String) {
            self.identity = identity
            self.database = database
            self.table = table
        }

        package var qualifiedTable: String { "\(database ?? "default").\(table)" }
    }

    /// A request waiting for every window that holds its rows.
    private final class Join: Sendable {
        private struct State {
            var remaining: Int
            var failure: IntakeResponse?
        }
        private let state: Mutex<State>
        private let success: IntakeResponse
        private let completion: IntakeCompletion

        init(windows: Int, success: IntakeResponse, completion: @escaping IntakeCompletion) {
            state = Mutex(State(remaining: windows))
            self.success = success
            self.completion = completion
        }

        func windowDone(_ failure: IntakeResponse?) {
            let answer: IntakeResponse? = state.withLock { state in
                if state.failure == nil, let failure { state.failure = failure }
                state.remaining -= 1
                return state.remaining == 0 ? (state.failure ?? success) : nil
            }
            if let answer { completion(answer) }
        }
    }

    /// The requests waiting for one window (by id) and what its emissions still owe them.
    private struct Waiters {
        var durable: [Join] = []
        var flushed: [Join] = []
        var pendingDurable = 0
        var pendingFlushed = 0
        var durableFailure: IntakeResponse?
        var flushedFailure: IntakeResponse?
        /// The window's last emission has been sent: the waiters are answered once nothing is pending.
        var finalSent = false
    }

    private struct State {
        var aggregators: [Key: WindowAggregator] = [:]
        var waiters: [UInt64: Waiters] = [:]
        /// Each aggregator numbers its windows from its own range, so ids never collide.
        var nextRange: UInt64 = 1
        var rowsIn: [String: Int] = [:]
        var ingest = IngestAnomalyDetector()
        /// Source tables (`db.table` or `table`, as the rule's pattern says) whose target lacks columns, and why.
        var targetProblems: [String: String] = [:]
        /// Which target check is the latest: an older one finishing later does not overwrite its result.
        var checkGeneration = 0
        /// Tables summaries and findings went to: their rows are the proxy's own, so their rate is not watched.
        var summaryTables: Set<String> = []

        mutating func takeRange() -> UInt64 {
            defer { nextRange &+= 1 << 40 }
            return nextRange
        }

        /// Counts what each emitted window owes its waiters, under the same lock that emitted it: a window's last
        /// emission can then never be seen before an earlier one of the same window is accounted for.
        mutating func account(_ windows: [EmittedWindow]) -> [Emission] {
            windows.map { window in
                guard var entry = waiters[window.id] else { return Emission(window: window, durable: false, flushed: false) }
                let durable = !entry.durable.isEmpty
                let flushed = !entry.flushed.isEmpty
                if durable { entry.pendingDurable += 1 }
                if flushed { entry.pendingFlushed += 1 }
                if window.isFinal { entry.finalSent = true }
                waiters[window.id] = entry
                return Emission(window: window, durable: durable, flushed: flushed)
            }
        }
    }

    /// An emitted window and whether requests wait for its spool sync or its delivery.
    private struct Emission {
        var window: EmittedWindow
        var durable: Bool
        var flushed: Bool
    }

    private let state = Mutex(State())
    private let configuration: LiveConfiguration
    private let buffering: Buffering
    private let delivery: Delivery
    private let spool: Spool?
    private let acks: PendingAcks
    private let metrics: AggregationMetrics
    private let clock: any EngineClock
    private let logger: Logger

    package init(
        configuration: LiveConfiguration, buffering: Buffering, delivery: Delivery, spool: Spool?, acks: PendingAcks,
        metrics: AggregationMetrics, clock: any EngineClock, logger: Logger
    ) {
        self.configuration = configuration
        self.buffering = buffering
        self.delivery = delivery
        self.spool = spool
        self.acks = acks
        self.metrics = metrics
        self.clock = clock
        self.logger = logger
    }

    // MARK: Intake

    /// The wall clock, which places rows in windows when a rule has no `time_column`.
    package func arrivalSeconds() -> Double { clock.wallClockSeconds() }

    /// Folds a request's rows into their windows. `wait` (for `durable` and `flushed` acks without `keep_raw`):
    /// the completion is answered with `success` once every window holding the rows is spooled (durable) or in
    /// ClickHouse (flushed); the decision is then `.awaitBatch`. Otherwise the answer is `success` now.
    package func fold(
        _ inputs: [AggregateInput], key: Key, rule: AggregateRule, wait ack: AckMode?, success: IntakeResponse,
        completion: () -> IntakeCompletion
    ) -> IntakeDecision {
        let now = clock.now()
        var late = 0
        var evictedGroups = 0
        var retired: [Emission] = []
        var retiredRule: AggregateRule?
        var joinToWait: Join?
        let evicted: [Emission] = state.withLock { state in
            if state.aggregators[key]?.rule != rule {
                if var existing = state.aggregators.removeValue(forKey: key) {
                    // The rule changed under a request read with the new one: the old windows go as they are.
                    retired = state.account(existing.emitAll())
                    retiredRule = existing.rule
                }
                state.aggregators[key] = WindowAggregator(rule: rule, firstID: state.takeRange())
            }
            // In place (through the dictionary's subscript): a copy would cost as much as the whole state.
            let (lateBefore, evictedBefore) = (state.aggregators[key]!.lateRows, state.aggregators[key]!.evictedGroups)
            let (windows, evicted) = state.aggregators[key]!.add(inputs, arrival: now)
            late = state.aggregators[key]!.lateRows - lateBefore
            evictedGroups = state.aggregators[key]!.evictedGroups - evictedBefore
            if !rule.keepRaw { state.rowsIn[key.qualifiedTable, default: 0] += inputs.count }
            if let ack, !windows.isEmpty {
                let waiting = Join(windows: windows.count, success: success, completion: completion())
                for id in windows {
                    if ack == .durable {
                        state.waiters[id, default: Waiters()].durable.append(waiting)
                    } else {
                        state.waiters[id, default: Waiters()].flushed.append(waiting)
                    }
                }
                joinToWait = waiting
            }
            return state.account(evicted)
        }
        metrics.update(table: key.qualifiedTable) { figures in
            figures.rowsIn += inputs.count
            figures.lateRows += late
            figures.evictedGroups += evictedGroups
        }
        if let retiredRule { send(retired, key: key, rule: retiredRule) }
        send(evicted, key: key, rule: rule)
        if joinToWait != nil { return .awaitBatch(token: 0) }
        return .answer(success)
    }

    /// Rows of an aggregated table that were refused (their columns did not read).
    package func refused(rows: Int, table: String) {
        metrics.update(table: table) { $0.refusedRows += rows }
    }

    // MARK: Emitting

    /// Emits every window that is due, and judges the ingest rates when their interval has passed; returns the
    /// next deadline.
    @discardableResult
    package func emitDue() -> Instant? {
        let now = clock.now()
        var due: [(Key, AggregateRule, [Emission])] = []
        var next: Instant?
        var observe: Bool = false
        state.withLock { state in
            for key in Array(state.aggregators.keys) {
                guard let deadline = state.aggregators[key]!.nextDeadline else { continue }
                if deadline <= now {
                    let windows = state.aggregators[key]!.emitDue(now: now)
                    due.append((key, state.aggregators[key]!.rule, state.account(windows)))
                }
                if let later = state.aggregators[key]!.nextDeadline { next = min(next ?? later, later) }
            }
            if let at = state.ingest.nextObservation {
                observe = at <= now
                next = min(next ?? at, at)
            } else {
                observe = true
            }
        }
        for (key, rule, windows) in due { send(windows, key: key, rule: rule) }
        if observe { observeIngest(now: now) }
        return next
    }

    /// Shutdown: every open window goes now, as partial rows.
    package func emitAll() {
        let all: [(Key, AggregateRule, [Emission])] = state.withLock { state in
            Array(state.aggregators.keys).map { key in
                (key, state.aggregators[key]!.rule, state.account(state.aggregators[key]!.emitAll()))
            }
        }
        for (key, rule, windows) in all { send(windows, key: key, rule: rule) }
    }

    /// A reload: an aggregator whose table's rule is unchanged keeps its windows and history; one whose rule changed
    /// or went emits its open windows under the old rule and is dropped.
    package func update(_ rules: TableRules) {
        let retired: [(Key, AggregateRule, [Emission])] = state.withLock { state in
            var retired: [(Key, AggregateRule, [Emission])] = []
            for key in Array(state.aggregators.keys) {
                let rule = rules.rule(database: key.database ?? "default", table: key.table)
                guard rule.aggregate != state.aggregators[key]!.rule || rule.passthrough else { continue }
                var old = state.aggregators.removeValue(forKey: key)!
                retired.append((key, old.rule, state.account(old.emitAll())))
            }
            return retired
        }
        for (key, rule, windows) in retired { send(windows, key: key, rule: rule) }
    }

    /// Groups tracked and rows held in open windows, per source table.
    package func figures() -> (groups: [String: Int], openRows: Int) {
        state.withLock { state in
            var groups: [String: Int] = [:]
            var rows = 0
            for (key, aggregator) in state.aggregators {
                groups[key.qualifiedTable, default: 0] += aggregator.groupCount
                rows += aggregator.openRows
            }
            return (groups, rows)
        }
    }

    private func send(_ emissions: [Emission], key: Key, rule: AggregateRule) {
        guard !emissions.isEmpty else { return }
        let rules = configuration.snapshot.value.rules
        let source = key.qualifiedTable
        for emission in emissions {
            let window = emission.window
            let (durable, flushed) = (emission.durable, emission.flushed)
            let targetKey = BatchKey(
                identity: key.identity, database: rule.into.database(forSource: key.database), table: rule.into.table,
                columns: rule.targetColumns, format: .tabSeparated, header: nil, settings: [])
            let data = AggregateEncoding.targetRows(window, rule: rule)
            let id = window.id
            let position = submit(key: targetKey, rules: rules, data: data, rows: window.rows.count) { [self] spooled in
                // Summaries the spool would not take go up from memory: their durable waiters then wait for
                // ClickHouse to have them instead (a refusal would make their clients send the rows again).
                let viaDelivery = durable && !spooled
                guard flushed || viaDelivery else { return 0 }
                return acks.register { [self] failure in
                    if flushed { flushSettled(id, failure) }
                    if viaDelivery {
                        durableSettled(id, failure.map { Intake.response(to: $0, rows: 0, bytes: 0, spooled: false) })
                    }
                }
            }
            if durable, let position, let spool {
                Task { [self] in
                    do throws(SpoolError) {
                        try await spool.waitDurable(position)
                        durableSettled(id, nil)
                    } catch {
                        durableSettled(
                            id, .refused(.spoolFailed("Batchhouse: the spool could not be synced: \(error.message)"), close: false))
                    }
                }
            }
            // Nothing was waiting (or the last waiter is answered by the settlement above): a final emission with
            // nothing pending answers now.
            settleIfDone(id)
            metrics.update(table: source) { figures in
                figures.rowsOut += window.rows.count
                figures.windows += 1
                if window.isPartial { figures.partialWindows += 1 }
            }
            logger.debug(
                "window emitted",
                metadata: [
                    "table": "\(source)", "into": "\(targetKey.qualifiedTable)", "window_start": "\(window.windowStart)",
                    "rows_in": "\(window.inputRows)", "rows_out": "\(window.rows.count)", "partial": "\(window.isPartial)",
                ])
            guard let patterns = rule.patterns, !window.findings.isEmpty else { continue }
            for finding in window.findings {
                metrics.pattern(table: source, kind: finding.finding.kind.rawValue)
                logger.notice(
                    "pattern found",
                    metadata: [
                        "table": "\(source)", "window_start": "\(window.windowStart)",
                        "group_key": "\(AggregateEncoding.groupKey(finding.group, columns: rule.groupBy))",
                        "column": "\(finding.column)", "kind": "\(finding.finding.kind.rawValue)",
                        "value": "\(finding.finding.value)", "baseline": "\(finding.finding.baseline)",
                    ])
            }
            let patternsKey = BatchKey(
                identity: key.identity, database: patterns.into.database(forSource: key.database),
                table: patterns.into.table, columns: AggregateRule.Patterns.columns, format: .tabSeparated,
                header: nil, settings: [])
            _ = submit(
                key: patternsKey, rules: rules, data: AggregateEncoding.patternRows(window, table: source, rule: rule),
                rows: window.findings.count, token: { _ in 0 })
        }
        metrics.setGroups(figures().groups)
    }

    /// Spools (when there is a spool) and submits one batch of emitted rows; `token` is given whether the spool
    /// took them and returns the batch's `PendingAcks` token (0: none). Returns the spool position.
    private func submit(
        key: BatchKey, rules: TableRules, data: [UInt8], rows: Int, token: (_ spooled: Bool) -> UInt64
    ) -> SpoolPosition? {
        var rule = rules.rule(database: key.database ?? "default", table: key.table)
        rule.aggregate = nil
        state.withLock { _ = $0.summaryTables.insert(key.qualifiedTable) }
        var position: SpoolPosition?
        data.withUnsafeBytes { bytes in
            if let spool {
                do throws(SpoolError) {
                    position = try spool.append(key: key, rows: rows, endsWithNewline: true, data: bytes)
                } catch {
                    // The summaries still go up from memory; only a crash before they land would lose them.
                    logger.error(
                        "aggregated rows not spooled; sent from memory",
                        metadata: ["table": "\(key.qualifiedTable)", "rows": "\(rows)", "error": "\(error.message)"])
                }
            }
            let token = token(position != nil)
            delivery.submit([
                buffering.emitted(key: key, rule: rule, chunk: bytes, rows: rows, token: token, spoolChunk: position?.chunkID)
            ])
        }
        return position
    }

    private func durableSettled(_ id: UInt64, _ failure: IntakeResponse?) {
        state.withLock { state in
            guard state.waiters[id] != nil else { return }
            state.waiters[id]!.pendingDurable -= 1
            if state.waiters[id]!.durableFailure == nil { state.waiters[id]!.durableFailure = failure }
        }
        settleIfDone(id)
    }

    private func flushSettled(_ id: UInt64, _ failure: FlushReport.Failure?) {
        let response = failure.map { Intake.response(to: $0, rows: 0, bytes: 0, spooled: spool != nil) }
        state.withLock { state in
            guard state.waiters[id] != nil else { return }
            state.waiters[id]!.pendingFlushed -= 1
            if state.waiters[id]!.flushedFailure == nil { state.waiters[id]!.flushedFailure = response }
        }
        settleIfDone(id)
    }

    /// Answers a window's waiters once its last emission is sent and nothing it owes them is pending.
    private func settleIfDone(_ id: UInt64) {
        let done: (durable: [Join], durableFailure: IntakeResponse?, flushed: [Join], flushedFailure: IntakeResponse?)? =
            state.withLock { state in
                guard var waiters = state.waiters[id], waiters.finalSent else { return nil }
                var durable: [Join] = []
                var flushed: [Join] = []
                if waiters.pendingDurable == 0 { swap(&durable, &waiters.durable) }
                if waiters.pendingFlushed == 0 { swap(&flushed, &waiters.flushed) }
                if waiters.durable.isEmpty && waiters.flushed.isEmpty {
                    state.waiters[id] = nil
                } else {
                    state.waiters[id] = waiters
                }
                return (durable, waiters.durableFailure, flushed, waiters.flushedFailure)
            }
        guard let done else { return }
        for join in done.durable { join.windowDone(done.durableFailure) }
        for join in done.flushed { join.windowDone(done.flushedFailure) }
    }

    // MARK: Target tables

    /// What is wrong with the target of the rule for `database.table`, if the last check found something.
    package func targetProblem(database: String?, table: String) -> String? {
        state.withLock { state in
            state.targetProblems.isEmpty
                ? nil : state.targetProblems["\(database ?? "default").\(table)"] ?? state.targetProblems[table]
        }
    }

    /// Asks the upstream (`DESCRIBE TABLE`, as the service account or the default user) whether each aggregate
    /// rule's target and patterns tables have the columns the rule writes, with types that read its text (Float32 or
    /// Float64 for the figures). A rule whose table lacks some, or that ClickHouse says does not exist, is logged
    /// and its INSERTs are refused until a later check finds the columns; a table that cannot be described for
    /// another reason (no server, no right to describe it) is logged and not held against the rule. Waits up to
    /// `patience` for a server to answer. Returns whether a problem was found.
    @discardableResult
    package func checkTargets(gateway: UpstreamGateway, patience: Duration = .seconds(60)) async -> Bool {
        let generation = state.withLock { state in
            state.checkGeneration += 1
            return state.checkGeneration
        }
        let rules = configuration.snapshot.value.rules
        var problems: [String: String] = [:]
        func note(_ pattern: String, _ problem: String) {
            problems[pattern] = problems[pattern].map { $0 + "; " + problem } ?? problem
        }
        for entry in rules.entries {
            guard let rule = rules.effectiveRule(of: entry).aggregate else { continue }
            let pattern = entry.pattern.text
            let sourceDatabase = entry.pattern.hasDatabasePart ? String(pattern.prefix { $0 != "." }) : nil
            let figures = Set(rule.targetColumns.dropFirst(1 + rule.groupBy.count + 1))
            var tables: [(AggregateRule.Target, [String], Set<String>)] = [(rule.into, rule.targetColumns, figures)]
            if let patterns = rule.patterns {
                tables.append((patterns.into, AggregateRule.Patterns.columns, ["value", "baseline"]))
            }
            for (target, columns, floats) in tables {
                let database = target.database(forSource: sourceDatabase)
                let name = (database.map { "\($0)." } ?? "") + target.table
                let deadline = clock.now() + patience
                var wait = Duration.seconds(1)
                checking: while true {
                    switch await gateway.describe(database: database, table: target.table, identity: .anonymous) {
                    case .described(let text):
                        guard let description = TableDescription(describeOutput: String(decoding: text, as: UTF8.self)) else {
                            logger.warning("cannot read the description of an aggregate target", metadata: ["table": "\(name)"])
                            break checking
                        }
                        var types: [String: String] = [:]
                        for column in description.insertable { types[column.name] = column.type }
                        let missing = columns.filter { types[$0] == nil }
                        let mistyped = columns.filter { column in
                            guard floats.contains(column), let type = types[column] else { return false }
                            return !type.contains("Float32") && !type.contains("Float64")
                        }
                        if !missing.isEmpty {
                            note(pattern, "the aggregate rule of \(pattern) writes into \(name), which lacks the columns \(missing.joined(separator: ", ")) (it needs \(columns.joined(separator: ", ")))")
                            logger.error("aggregate target lacks columns", metadata: ["source": "\(pattern)", "table": "\(name)", "missing": "\(missing.joined(separator: ","))"])
                        }
                        if !mistyped.isEmpty {
                            note(pattern, "the aggregate rule of \(pattern) writes Float64 figures (and nan) into \(name), whose columns \(mistyped.map { "\($0) \(types[$0]!)" }.joined(separator: ", ")) would refuse them; make them Float64")
                            logger.error("aggregate target has columns of another type than Float64", metadata: ["source": "\(pattern)", "table": "\(name)", "columns": "\(mistyped.joined(separator: ","))"])
                        }
                        if missing.isEmpty && mistyped.isEmpty {
                            logger.info("aggregate target checked", metadata: ["source": "\(pattern)", "table": "\(name)"])
                        }
                        break checking
                    case .refused(let response):
                        let body = String(decoding: response.body.readableBytesView.prefix(300), as: UTF8.self)
                        // Only a table or database that does not exist holds the rule back; a refusal to describe
                        // it (access, authentication) says nothing of whether the rows would land.
                        if [60, 81].contains(response.exceptionCode) {
                            note(pattern, "the aggregate rule of \(pattern) writes into \(name), which does not exist: \(body)")
                            logger.error("aggregate target does not exist", metadata: ["source": "\(pattern)", "table": "\(name)", "answer": "\(body)"])
                        } else {
                            logger.warning("aggregate target not checked: ClickHouse would not describe it", metadata: ["source": "\(pattern)", "table": "\(name)", "answer": "\(body)"])
                        }
                        break checking
                    case .unreachable(let reason):
                        if clock.now() + wait > deadline || delivery.isClosed {
                            logger.warning("aggregate target not checked: no server answered", metadata: ["table": "\(name)", "reason": "\(reason.prefix(200))"])
                            break checking
                        }
                        await clock.sleep(for: wait)
                        wait = min(wait * 2, .seconds(10))
                    }
                }
            }
        }
        // Only the latest check's result stands: a reload starts another, which may finish first.
        state.withLock { state in
            if state.checkGeneration == generation { state.targetProblems = problems }
        }
        return !problems.isEmpty
    }

    // MARK: Ingest anomalies

    private func observeIngest(now: Instant) {
        var totals: [String: Int] = [:]
        for (table, figures) in buffering.receivedByTable() { totals[table] = figures.rows }
        let findings = state.withLock { state in
            for (table, rows) in state.rowsIn { totals[table, default: 0] += rows }
            for table in state.summaryTables { totals[table] = nil }
            return state.ingest.observe(totals: totals, at: now)
        }
        for finding in findings {
            metrics.ingestAnomaly(table: finding.table, kind: finding.kind.rawValue)
            logger.warning(
                "ingest anomaly",
                metadata: [
                    "table": "\(finding.table)", "kind": "\(finding.kind.rawValue)",
                    "rows_per_second": "\(finding.rate)", "baseline": "\(finding.baseline)",
                ])
        }
    }
}
