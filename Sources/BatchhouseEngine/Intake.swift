import BatchhouseConfig
import BatchhouseCore
import BatchhouseSpool
import BatchhouseUpstream
import Logging
import NIOCore

/// A POST whose body was read to its end and that looked like a batchable INSERT so far.
package struct InsertRequest: Sendable {
    package var parameters: RequestParameters
    /// As received: still encoded when `coding` is set.
    package var body: ByteBuffer
    package var coding: ContentCoding?
    /// Parsed from the start of the (undecoded) body while it arrived; nil when that was not possible.
    package var statement: InsertStatement?
    /// The event loop `accept` is called on: its spool records of one turn are written together (`SpoolStage`);
    /// nil, each request writes its own.
    package var eventLoop: (any EventLoop)?

    package init(
        parameters: RequestParameters, body: ByteBuffer, coding: ContentCoding?, statement: InsertStatement?,
        eventLoop: (any EventLoop)? = nil
    ) {
        self.parameters = parameters
        self.body = body
        self.coding = coding
        self.statement = statement
        self.eventLoop = eventLoop
    }
}

/// The answer to an INSERT, in ClickHouse's terms; the HTTP server writes it.
package enum IntakeResponse: Sendable {
    /// 200, empty body, `X-ClickHouse-Summary` with these figures, `X-Batchhouse-Ack: ack`.
    case accepted(rows: Int, bytes: Int, ack: AckMode)
    /// An error made by the proxy; `close` ends the connection after it.
    case refused(ClickHouseError, close: Bool)
    /// ClickHouse's own refusal of the request's rows (`ack: flushed`, `immediate`), relayed as it came.
    case relayed(UpstreamResponse)
    /// Only after a wait (`awaitVerification`, `awaitDescription`): not batchable after all (the table's columns
    /// could not be learnt, or a type is one the scanners do not know), so the server sends the request upstream
    /// as received.
    case passThrough
}

/// What the server does with an INSERT once the intake has seen it.
package enum IntakeDecision: Sendable {
    /// Answer now.
    case answer(IntakeResponse)
    /// Not batchable after all (its table's rule, or its decoded body is not an INSERT): send it upstream as
    /// received.
    case passthrough
    /// The rows are buffered and in the spool; the completion is called once an fsync covers them.
    case awaitDurable(SpoolPosition)
    /// The rows wait for their spool record to be written with the others of this turn of the event loop; the
    /// completion is called with the answer (`enqueued` once written, or as `durable` and `flushed` say).
    case awaitSpool
    /// The rows are in a batch; the completion is called with the batch's outcome for them.
    case awaitBatch(token: UInt64)
    /// The client's credentials are being checked with ClickHouse (a new identity); the completion is called
    /// with the answer: the intake's own once they are taken, ClickHouse's refusal if not.
    case awaitVerification
    /// The table's columns are being asked for (`DESCRIBE TABLE`, for RowBinary rows); the completion is called
    /// with the answer to the rows once they are read with them, or `.passThrough`.
    case awaitDescription
}

/// Called once, from any thread, with the answer to a request that was told to wait.
package typealias IntakeCompletion = @Sendable (IntakeResponse) -> Void

/// The start of an INSERT's life: decode, classify, find the table's rule, validate and count the rows, build the
/// batch key, sample, admit against the memory budget, write the spool, append to a batch, and say how the
/// client is answered (docs/architecture.md, "Intake"). Admission comes before the spool write, so a refused
/// request leaves no record behind.
package final class Intake: Sendable {
    private let configuration: LiveConfiguration
    private let buffering: Buffering
    private let delivery: Delivery
    private let spool: Spool?
    private let acks: PendingAcks
    private let metrics: BatchhouseMetrics
    private let gateway: UpstreamGateway
    /// Nil: identities are taken unverified (engine tests that script every upstream request).
    private let verifier: CredentialVerifier?
    /// The columns RowBinary rows are read with; nil: RowBinary INSERTs pass through.
    private let schemas: TableSchemas<TableDescription>?
    /// The tables with an `aggregate:` rule; nil: such rules are not applied (engine tests of other parts).
    private let aggregation: Aggregation?

    package init(
        configuration: LiveConfiguration, buffering: Buffering, delivery: Delivery, spool: Spool?, acks: PendingAcks,
        metrics: BatchhouseMetrics, gateway: UpstreamGateway, verifier: CredentialVerifier?,
        schemas: TableSchemas<TableDescription>? = nil, aggregation: Aggregation? = nil
    ) {
        self.schemas = schemas
        self.aggregation = aggregation
        self.configuration = configuration
        self.buffering = buffering
        self.delivery = delivery
        self.spool = spool
        self.acks = acks
        self.metrics = metrics
        self.gateway = gateway
        self.verifier = verifier
    }

    /// Takes an INSERT. `completion` is asked for only when the decision is to wait (`awaitDurable`,
    /// `awaitBatch`, `awaitVerification`), before anything can complete it. After a verification the rest of the
    /// intake runs on the task that got ClickHouse's answer, and every outcome reaches the completion.
    package func accept(_ request: InsertRequest, completion: () -> IntakeCompletion) -> IntakeDecision {
        // Fields are read through the snapshot: copying the whole configuration would retain every string and
        // array in it on each request.
        let current = configuration.snapshot
        // Service-account mode: every batch goes up as `upstream.user`, so clients' credentials are not looked at
        // (neither refused, verified, nor kept apart: docs/credentials.md).
        let serviceAccount = current.value.upstream.user != nil
        if !serviceAccount {
            switch request.parameters.credentials {
            case .resolved: break
            case .mixedSchemes:
                let modern = gateway.capabilities?.isAtLeast(21, 4) == true
                return refuse(.mixedCredentialSchemes(modern: modern))
            case .unresolved: return .passthrough
            }
        }
        var decoded = request.body
        if let coding = request.coding {
            do {
                let limit = current.value.limits.maxRequestBody
                decoded = try BodyDecoders.decodeAll(request.body, coding: coding, clickHouseBlocks: false, limit: limit)
            } catch {
                return refuse(.bodyDecoding(error))
            }
        }
        var statement = request.statement
        if statement == nil || request.coding != nil {
            var classifier = StatementClassifier()
            switch classifier.classify(query: request.parameters.query, body: decoded, isComplete: true) {
            case .insert(let parsed): statement = parsed
            case .passthrough, .needMoreData: return .passthrough
            }
        }
        guard let statement else { return .passthrough }
        // A SETTINGS clause the upstream may not take: ClickHouse answers it itself (18.16 refuses the syntax).
        if !statement.settings.isEmpty && gateway.capabilities?.supportsInsertSettingsClause != true { return .passthrough }
        // A format the upstream may not read: ClickHouse answers it itself, before any client is acknowledged.
        // (The version is looked up, under its lock, only for the formats that depend on it.)
        if !UpstreamCapabilities.everyVersionReads(statement.format) && gateway.capabilities?.readsInput(statement.format) != true {
            return .passthrough
        }
        let database = statement.database ?? request.parameters.database
        let rule = current.value.rules.rule(database: database ?? "default", table: statement.table)
        if rule.passthrough { return .passthrough }

        let data = StatementClassifier.data(of: statement, query: request.parameters.query, body: decoded)
        // Service-account mode: every batch goes up as `upstream.user`, so clients' identities neither split
        // batches nor reach the spool.
        let identity = serviceAccount ? .anonymous : request.parameters.identity
        // Who must read these rows back (`read_your_writes`): in service-account mode the batch key does not say.
        let contributor = serviceAccount ? request.parameters.identity : nil
        let memoryLimit = current.value.limits.maxBufferMemory
        // `readonly=1` or `2` forbids writing: ClickHouse refuses the INSERT itself (Code 164), and no client hears
        // 200 for rows it would not take.
        if request.parameters.settings.contains(where: { $0.name == "readonly" && $0.value != "0" }) {
            return .passthrough
        }
        // Settings that judge the statement's text apply to the client's statement, never to the batch's.
        if case .passthrough = StatementTextSettings.verdict(
            for: statement, settings: request.parameters.settings + statement.settings)
        {
            return .passthrough
        }
        let settings = StatementTextSettings.removed(from: request.parameters.settings)
        if !serviceAccount, let verifier, case .mustVerify(let digest) = verifier.check(identity) {
            // ClickHouse authenticates before it reads a query, so the credentials are checked before the rows.
            // The body waiting for the answer holds its bytes in the memory budget, shed first like a body still
            // arriving (priority 5).
            let held: Buffering.Reservation
            switch buffering.reserve(bytes: data.readableBytes, priority: 5) {
            case .admitted(let admitted): held = admitted
            case .refused(let inUse): return overMemory(inUse, rule: rule, limit: memoryLimit)
            }
            let completion = completion()
            verifier.verify(identity, digest: digest) { [self] outcome in
                buffering.cancel(held)
                switch outcome {
                case .verified:
                    let decision = scanAndStore(
                        statement: statement, database: database, rule: rule, data: data, settings: settings,
                        identity: identity, contributor: nil, memoryLimit: memoryLimit, completion: { completion })
                    Self.complete(decision, completion)
                case .refused(let response):
                    metrics.request(.rejected)
                    completion(.relayed(response))
                case .unavailable(let reason):
                    metrics.request(.rejected)
                    completion(.refused(.credentialsUnverifiable(reason), close: false))
                }
            }
            return .awaitVerification
        }
        // Staged only on the loop's own thread: the stage belongs to it.
        let loop = request.eventLoop.flatMap { $0.inEventLoop ? $0 : nil }
        return scanAndStore(
            statement: statement, database: database, rule: rule, data: data, settings: settings, identity: identity,
            contributor: contributor, memoryLimit: memoryLimit, loop: loop, completion: completion)
    }

    /// A decision reached after a wait, passed to the completion the wait was given: an answer now, a pass-through,
    /// or nothing (a further wait calls the completion itself).
    private static func complete(_ decision: IntakeDecision, _ completion: IntakeCompletion) {
        switch decision {
        case .answer(let response): completion(response)
        case .passthrough: completion(.passThrough)
        case .awaitDurable, .awaitSpool, .awaitBatch, .awaitVerification, .awaitDescription: break
        }
    }

    /// Validates and counts the rows, builds the batch key, samples and stores: the part of `accept` after the
    /// credentials are known to be good. `described`: the table was just described for this request, so rows that do
    /// not read with its columns are refused instead of asking again.
    private func scanAndStore(
        statement: InsertStatement, database: String?, rule: TableRule, data: ByteBuffer, settings: [Setting],
        identity: ClientIdentity, contributor: ClientIdentity?, memoryLimit: Int, described: Bool = false,
        loop: (any EventLoop)? = nil, completion: () -> IntakeCompletion
    ) -> IntakeDecision {
        if rule.aggregate != nil, aggregation != nil, statement.format.isBinary {
            return refuse(
                ClickHouseError(
                    code: 36, name: "BAD_ARGUMENTS",
                    message:
                        "Batchhouse: format \(statement.format.rawValue) cannot be aggregated; the table's aggregate rule reads JSONEachRow, Values, TabSeparated, CSV, JSONCompactEachRow or TSKV rows",
                    status: 400, reason: .syntax))
        }
        // RowBinary rows are read with the table's columns as the upstream describes them to this identity.
        var columns: ColumnSignature?
        var schemaKey: TableSchemas<TableDescription>.Key?
        if statement.format.needsTableColumns {
            guard let schemas else { return .passthrough }
            let key = TableSchemas<TableDescription>.Key(identity: identity, database: database, table: statement.table)
            guard let description = schemas.cached(key) else {
                return awaitDescription(
                    key, statement: statement, database: database, rule: rule, data: data, settings: settings,
                    identity: identity, contributor: contributor, memoryLimit: memoryLimit, completion: completion)
            }
            // RowBinaryWithNames names its columns in its header: any insertable column may appear there.
            let names = statement.format == .rowBinaryWithNames ? description.insertable.map(\.name) : statement.columns
            // A column the table does not have, or a type the scanners do not know: ClickHouse answers.
            guard let signature = description.signature(for: names) else { return .passthrough }
            columns = signature
            schemaKey = key
        }
        return data.withUnsafeReadableBytes { bytes -> IntakeDecision in
            let scanned: ScannedRows
            do throws(RowScanError) {
                scanned = try RowScanner.scan(bytes, format: statement.format, columns: columns)
            } catch {
                // A type the scanners do not know, or blocks of different columns: never joined unvalidated.
                if error.isUnsupported { return .passthrough }
                // Rows that do not read with a description kept from earlier: the table may have changed since.
                if let schemaKey, let schemas, !described, schemas.mayRefresh(schemaKey) {
                    return awaitDescription(
                        schemaKey, statement: statement, database: database, rule: rule, data: data,
                        settings: settings, identity: identity, contributor: contributor, memoryLimit: memoryLimit,
                        completion: completion)
                }
                // ClickHouse 18.16 answers every exception with 500; later versions answer data errors with 400.
                // Binary data is refused as the upstream would (text formats keep the proxy's 400); before its
                // version is known (the first probe not answered yet), ClickHouse answers such a body itself.
                if statement.format.isBinary && gateway.capabilities == nil { return .passthrough }
                let old = statement.format.isBinary && gateway.capabilities.map { !$0.isAtLeast(19, 1) } == true
                return refuse(
                    ClickHouseError(
                        code: error.code, name: error.name, message: error.message, status: old ? 500 : 400,
                        reason: .syntax))
            }
            let header: [UInt8]?
            if let signature = scanned.signature {
                header = signature.encoded
            } else {
                header = scanned.header.map { Array(bytes[$0]) }
            }
            let key = BatchKey(
                identity: identity, database: database, table: statement.table, columns: statement.columns,
                format: statement.format, header: header,
                settings: settings + StatementTextSettings.removed(from: statement.settings))
            let rows = UnsafeRawBufferPointer(rebasing: bytes[scanned.rows])
            if let aggregate = rule.aggregate, let aggregation, scanned.rowCount > 0 {
                let inputs: [AggregateInput]
                do throws(RowScanError) {
                    inputs = try AggregateReader.inputs(
                        bytes, scanned: scanned, format: statement.format, statementColumns: statement.columns,
                        rule: aggregate, arrivalUnixSeconds: aggregation.arrivalSeconds())
                } catch {
                    aggregation.refused(rows: scanned.rowCount, table: key.qualifiedTable)
                    return refuse(
                        ClickHouseError(
                            code: error.code, name: error.name, message: error.message, status: 400, reason: .syntax))
                }
                if let problem = aggregation.targetProblem(database: database, table: statement.table) {
                    return refuse(
                        ClickHouseError(
                            code: 16, name: "NO_SUCH_COLUMN_IN_TABLE", message: "Batchhouse: \(problem)", status: 400,
                            reason: .other))
                }
                let source = Aggregation.Key(identity: identity, database: database, table: statement.table)
                if !aggregate.keepRaw {
                    // The client's ack follows its windows: `durable` once their summaries are spooled and synced,
                    // `flushed` (and `immediate`) once ClickHouse took them (docs/aggregation.md, "Acks").
                    let wait: AckMode? = rule.strategy == .immediate ? .flushed : rule.ack == .enqueued ? nil : rule.ack
                    metrics.request(.batchedInsert)
                    return aggregation.fold(
                        inputs, key: source, rule: aggregate, wait: wait,
                        success: .accepted(rows: scanned.rowCount, bytes: rows.count, ack: wait ?? .enqueued),
                        completion: completion)
                }
                // keep_raw: the raw rows decide the ack, and the summaries (a by-product) take the rows only once
                // the raw rows were taken: a refused request, sent again, is not counted twice.
                let decision = storeRaw(
                    key: key, rule: rule, scanned: scanned, rows: rows, memoryLimit: memoryLimit,
                    contributor: contributor, loop: loop, completion: completion)
                if case .answer(.refused) = decision { return decision }
                _ = aggregation.fold(
                    inputs, key: source, rule: aggregate, wait: nil,
                    success: .accepted(rows: scanned.rowCount, bytes: rows.count, ack: .enqueued), completion: completion)
                return decision
            }
            return storeRaw(
                key: key, rule: rule, scanned: scanned, rows: rows, memoryLimit: memoryLimit,
                contributor: contributor, loop: loop, completion: completion)
        }
    }

    /// Samples (the `sample` rule) and stores a request's rows as they were sent.
    private func storeRaw(
        key: BatchKey, rule: TableRule, scanned: ScannedRows, rows: UnsafeRawBufferPointer, memoryLimit: Int,
        contributor: ClientIdentity?, loop: (any EventLoop)?, completion: () -> IntakeCompletion
    ) -> IntakeDecision {
        if rule.sample < 1.0 && scanned.rowCount > 0 {
            guard let kept = RowSampler.sample(rows, format: key.format, columns: scanned.signature, fraction: rule.sample) else {
                return refuse(.syntax("Batchhouse: cannot split the data into rows"))
            }
            metrics.sampledOut(table: key.qualifiedTable, rows: scanned.rowCount - kept.rows)
            if kept.rows == 0 { return accepted(rows: 0, bytes: 0, ack: .enqueued) }
            return kept.data.withUnsafeBytes { keptBytes in
                store(
                    key: key, rule: rule, rows: keptBytes, rowCount: kept.rows, endsWithNewline: true,
                    limit: memoryLimit, contributor: contributor, loop: loop, completion: completion)
            }
        }
        return store(
            key: key, rule: rule, rows: rows, rowCount: scanned.rowCount, endsWithNewline: scanned.endsWithNewline,
            limit: memoryLimit, contributor: contributor, loop: loop, completion: completion)
    }

    /// Asks for the table's columns, holding the body in the memory budget meanwhile (shed first, like a body still
    /// arriving), then reads the rows with them. A table ClickHouse will not describe goes to ClickHouse as
    /// received, which answers the INSERT itself.
    private func awaitDescription(
        _ key: TableSchemas<TableDescription>.Key, statement: InsertStatement, database: String?, rule: TableRule,
        data: ByteBuffer, settings: [Setting], identity: ClientIdentity, contributor: ClientIdentity?, memoryLimit: Int,
        completion: () -> IntakeCompletion
    ) -> IntakeDecision {
        guard let schemas else { return .passthrough }
        let held: Buffering.Reservation
        switch buffering.reserve(bytes: data.readableBytes, priority: 5) {
        case .admitted(let admitted): held = admitted
        case .refused(let inUse): return overMemory(inUse, rule: rule, limit: memoryLimit)
        }
        let completion = completion()
        schemas.describe(key) { [self] lookup in
            buffering.cancel(held)
            switch lookup {
            case .described:
                let decision = scanAndStore(
                    statement: statement, database: database, rule: rule, data: data, settings: settings,
                    identity: identity, contributor: contributor, memoryLimit: memoryLimit, described: true,
                    completion: { completion })
                Self.complete(decision, completion)
            case .refused, .unreadable, .unreachable:
                completion(.passThrough)
            }
        }
        return .awaitDescription
    }

    private func store(
        key: BatchKey, rule: TableRule, rows: UnsafeRawBufferPointer, rowCount: Int, endsWithNewline: Bool, limit: Int,
        contributor: ClientIdentity?, loop: (any EventLoop)?, completion: () -> IntakeCompletion
    ) -> IntakeDecision {
        if rowCount == 0 && rows.isEmpty { return accepted(rows: 0, bytes: 0, ack: .enqueued) }
        let immediate = rule.strategy == .immediate
        let waitsForBatch = immediate || rule.ack == .flushed
        // `immediate` rows wait for ClickHouse's own answer, so they are not spooled.
        let spool = immediate ? nil : self.spool

        // Without a spool write in between, admission and append are one step under one lock.
        if spool == nil && !immediate {
            let token = waitsForBatch ? register(rows: rowCount, bytes: rows.count, spooled: false, completion()) : 0
            switch buffering.admitAndAppend(
                key: key, rule: rule, chunk: rows, rows: rowCount, endsWithNewline: endsWithNewline, token: token,
                contributor: contributor)
            {
            case .success(let sealed):
                delivery.submit(sealed)
                return admitted(key: key, rows: rowCount, bytes: rows.count, token: token, immediate: false)
            case .failure(let refusal):
                if token != 0 { acks.cancel(token) }
                return overMemory(refusal.inUse, rule: rule, limit: limit)
            }
        }

        let reservation: Buffering.Reservation
        switch buffering.reserve(bytes: rows.count, priority: rule.priority) {
        case .admitted(let admitted): reservation = admitted
        case .refused(let inUse): return overMemory(inUse, rule: rule, limit: limit)
        }
        if let spool, !immediate, let loop {
            let stage = SpoolStage.ofThisThread()
            let staged = stage.add(
                SpoolStage.Entry(
                    intake: self, spool: spool, key: key, rule: rule, rows: rowCount, bytes: rows.count,
                    reservation: reservation, contributor: contributor, completion: completion()),
                endsWithNewline: endsWithNewline, data: rows, loop: loop)
            guard staged else {
                buffering.cancel(reservation)
                return refuse(
                    .spoolRefused(
                        SpoolError(
                            code: .io,
                            message: "a chunk of \(rows.count) bytes is larger than a spool record can hold (4 GiB)")))
            }
            return .awaitSpool
        }
        var position: SpoolPosition?
        if let spool {
            do throws(SpoolError) {
                position = try spool.append(key: key, rows: rowCount, endsWithNewline: endsWithNewline, data: rows)
            } catch {
                buffering.cancel(reservation)
                return refuse(.spoolRefused(error))
            }
        }
        let token = waitsForBatch ? register(rows: rowCount, bytes: rows.count, spooled: spool != nil, completion()) : 0
        if immediate {
            delivery.submit(
                buffering.single(
                    key: key, rule: rule, chunk: rows, rows: rowCount, endsWithNewline: endsWithNewline, token: token,
                    reservation: reservation))
            return admitted(key: key, rows: rowCount, bytes: rows.count, token: token, immediate: true)
        }
        delivery.submit(
            buffering.append(
                key: key, rule: rule, chunk: rows, rows: rowCount, endsWithNewline: endsWithNewline, token: token,
                spoolChunk: position?.chunkID, reservation: reservation, contributor: contributor))
        if token == 0, rule.ack == .durable, let position, let spool {
            metrics.request(.batchedInsert)
            waitDurable(position, spool: spool, rows: rowCount, bytes: rows.count, completion: completion())
            return .awaitDurable(position)
        }
        return admitted(key: key, rows: rowCount, bytes: rows.count, token: token, immediate: false)
    }

    /// A staged request's spool record was written (or refused) with the others of its turn: its rows go into
    /// their batch, and its client is answered as its ack mode says. On the event loop that staged it.
    func finishStaged(_ entry: SpoolStage.Entry, _ result: Result<SpoolPosition, SpoolError>, rows data: UnsafeRawBufferPointer, endsWithNewline: Bool) {
        let position: SpoolPosition
        switch result {
        case .failure(let error):
            buffering.cancel(entry.reservation)
            metrics.request(.rejected)
            entry.completion(.refused(.spoolRefused(error), close: false))
            return
        case .success(let written):
            position = written
        }
        let rule = entry.rule
        let token =
            rule.ack == .flushed
            ? register(rows: entry.rows, bytes: entry.bytes, spooled: true, entry.completion) : 0
        delivery.submit(
            buffering.append(
                key: entry.key, rule: rule, chunk: data, rows: entry.rows, endsWithNewline: endsWithNewline,
                token: token, spoolChunk: position.chunkID, reservation: entry.reservation,
                contributor: entry.contributor))
        metrics.request(.batchedInsert)
        if token != 0 { return }
        if rule.ack == .durable {
            waitDurable(position, spool: entry.spool, rows: entry.rows, bytes: entry.bytes, completion: entry.completion)
            return
        }
        entry.completion(.accepted(rows: entry.rows, bytes: entry.bytes, ack: .enqueued))
    }

    // MARK: Answers

    private func admitted(key: BatchKey, rows: Int, bytes: Int, token: UInt64, immediate: Bool) -> IntakeDecision {
        metrics.request(immediate ? .immediateInsert : .batchedInsert)
        if token != 0 { return .awaitBatch(token: token) }
        return .answer(.accepted(rows: rows, bytes: bytes, ack: .enqueued))
    }

    private func accepted(rows: Int, bytes: Int, ack: AckMode) -> IntakeDecision {
        metrics.request(.batchedInsert)
        return .answer(.accepted(rows: rows, bytes: bytes, ack: ack))
    }

    private func refuse(_ error: ClickHouseError) -> IntakeDecision {
        metrics.request(.rejected)
        return .answer(.refused(error, close: false))
    }

    private func overMemory(_ inUse: Int, rule: TableRule, limit: Int) -> IntakeDecision {
        refuse(
            .memoryLimit(
                "Batchhouse: buffers are full for priority \(rule.priority) tables (\(inUse) bytes in use of limits.max_buffer_memory \(limit); shedding starts at 80% for priority 5); retry later"
            ))
    }

    /// A token for a request answered by its batch's outcome (`ack: flushed`, `immediate`).
    private func register(rows: Int, bytes: Int, spooled: Bool, _ completion: @escaping IntakeCompletion) -> UInt64 {
        acks.register { failure in completion(Self.response(to: failure, rows: rows, bytes: bytes, spooled: spooled)) }
    }

    /// The answer for a request whose rows' batch has an outcome (`failure` nil: they landed).
    /// `spooled`: the rows were written to the spool (not `immediate` ones, nor any without a spool).
    package static func response(to failure: FlushReport.Failure?, rows: Int, bytes: Int, spooled: Bool)
        -> IntakeResponse
    {
        guard let failure else { return .accepted(rows: rows, bytes: bytes, ack: .flushed) }
        switch failure.reason {
        case .rejected(let response):
            return .relayed(response)
        case .failed(let error):
            return .refused(
                .upstreamUnavailable("Batchhouse: ClickHouse did not take the rows: \(error.message)"), close: false)
        case .unreadable(let reason):
            return .refused(.spoolFailed("Batchhouse: the rows were lost in the spool: \(reason)"), close: false)
        case .deferred:
            return .refused(
                spooled
                    ? .spoolFull("Batchhouse: the rows are in the spool but not yet in ClickHouse (shutting down)")
                    : .upstreamUnavailable(
                        "Batchhouse: ClickHouse did not take the rows before shutdown; they were not kept: send them again"),
                close: true)
        }
    }

    private func waitDurable(
        _ position: SpoolPosition, spool: Spool, rows: Int, bytes: Int, completion: @escaping IntakeCompletion
    ) {
        // Completed from the spool's sync thread: the completion hands the answer to the connection's event loop.
        spool.whenDurable(position) { result in
            switch result {
            case .success:
                completion(.accepted(rows: rows, bytes: bytes, ack: .durable))
            case .failure(let error):
                completion(
                    .refused(
                        .spoolFailed("Batchhouse: the spool could not be synced: \(error.message)"), close: false))
            }
        }
    }
}
