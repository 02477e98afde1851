/// One request's rows inside a batch: who is waiting for them (`token`, 0 for nobody), which spool chunk
/// holds them, and where they are in the batch's data.
public struct Contribution: Sendable, Hashable {
    public var token: UInt64
    public var spoolChunk: UInt64?
    /// Byte range of the rows in the batch's `data` (separators excluded).
    public var range: Range<Int>
    public var rows: Int

    public init(token: UInt64, spoolChunk: UInt64?, range: Range<Int>, rows: Int) {
        self.token = token
        self.spoolChunk = spoolChunk
        self.range = range
        self.rows = rows
    }
}

/// The requests of a batch whose rows are in the spool: per request its chunk id and row count, and the token of
/// the few that wait for the batch (ack `flushed`). The compact form of `contributions` while a batch waits on disk.
public struct SpooledContributions: Sendable {
    public private(set) var chunks: [UInt64] = []
    private var rowCounts: [UInt32] = []
    /// By position in `chunks`.
    private var tokens: [Int: UInt64] = [:]

    public init() {}

    /// Every contribution must have a spool chunk.
    public init(_ contributions: [Contribution]) {
        chunks.reserveCapacity(contributions.count)
        rowCounts.reserveCapacity(contributions.count)
        for contribution in contributions {
            append(chunk: contribution.spoolChunk ?? 0, rows: contribution.rows, token: contribution.token)
        }
    }

    public var count: Int { chunks.count }

    public mutating func append(chunk: UInt64, rows: Int, token: UInt64) {
        if token != 0 { tokens[chunks.count] = token }
        chunks.append(chunk)
        rowCounts.append(UInt32(clamping: rows))
    }

    public func rows(at index: Int) -> Int { Int(rowCounts[index]) }
    public func token(at index: Int) -> UInt64 { tokens[index] ?? 0 }

    /// As contributions, without byte ranges (the rows are not in memory).
    public var expanded: [Contribution] {
        chunks.indices.map {
            Contribution(token: token(at: $0), spoolChunk: chunks[$0], range: 0..<0, rows: rows(at: $0))
        }
    }
}

/// A batch closed for appends, ready to go upstream as one INSERT.
public struct SealedBatch: Sendable {
    /// Unique within the process; kept across retries.
    public var id: UInt64
    public var key: BatchKey
    public var rule: TableRule
    /// The request body: header (for *WithNames formats) followed by the concatenated rows.
    public var data: [UInt8]
    public var rows: Int
    /// How many client requests contributed rows.
    public var requests: Int
    public var trigger: FlushTrigger
    public var firstRowAt: Instant
    public var sealedAt: Instant
    /// The requests whose rows are in this batch, in order.
    public var contributions: [Contribution]
    /// With a spool, a sealed batch's rows leave memory: `data` is empty, `contributions` too, and `spooled` says
    /// which spool chunks hold its rows, until delivery reads them back (docs/spool-and-acks.md, "The spool as
    /// backlog").
    public var bodyInSpool = false
    public var spooled = SpooledContributions()
    /// The bytes `data` held when its body went to the spool (what it will hold again once read back).
    public var spooledBytes = 0
    /// The query id it is sent under, kept across retries and, through the spool, across restarts; nil until
    /// delivery gives it one.
    public var queryID: String?
    /// In service-account mode (the key's identity is `.anonymous`): the identities of the requests whose rows it
    /// holds, each once, for `read_your_writes`. Empty otherwise: the key's identity is theirs.
    public var contributors: [ClientIdentity] = []

    /// Bytes of row data, in memory or in the spool.
    public var bodyBytes: Int { bodyInSpool ? spooledBytes : data.count }

    /// Leaves only the bookkeeping in memory; the rows are in the spool chunks of `contributions`.
    public mutating func moveBodyToSpool() {
        spooledBytes = data.count
        data = []
        bodyInSpool = true
        // What stays is what a backlog costs in memory: 12 bytes a request, no spare capacity.
        spooled = SpooledContributions(contributions)
        contributions = []
    }

    /// Every contribution has its rows in a spool chunk: the body may leave memory.
    public var isWhollySpooled: Bool {
        !contributions.isEmpty && contributions.allSatisfy { $0.spoolChunk != nil }
    }

    public init(
        id: UInt64, key: BatchKey, rule: TableRule, data: [UInt8], rows: Int, requests: Int,
        trigger: FlushTrigger, firstRowAt: Instant, sealedAt: Instant, contributions: [Contribution] = []
    ) {
        self.contributions = contributions
        self.id = id
        self.key = key
        self.rule = rule
        self.data = data
        self.rows = rows
        self.requests = requests
        self.trigger = trigger
        self.firstRowAt = firstRowAt
        self.sealedAt = sealedAt
    }
}

/// The bytes of one open batch, joined as ClickHouse needs them (docs/request-path.md, "Formats and joining").
public struct BatchBuffer: Sendable {
    public private(set) var data: [UInt8]
    public private(set) var rows: Int = 0
    public private(set) var requests: Int = 0
    public let format: InputFormat
    /// Bytes of row data, without the header (what `max_bytes` and memory limits count).
    public private(set) var rowBytes: Int = 0
    public private(set) var contributions: [Contribution] = []
    private let headerBytes: Int

    /// `header` is the batch key's header: text formats' header lines, binary formats' column signature, of which
    /// only `InputFormat.batchHeader(forKey:)` is written.
    public init(format: InputFormat, header: [UInt8]?, reservingCapacity capacity: Int = 0) {
        self.format = format
        var data: [UInt8] = []
        data.reserveCapacity(capacity + (header?.count ?? 0))
        if let header {
            if format.isBinary {
                data.append(contentsOf: format.batchHeader(forKey: header))
            } else {
                data.append(contentsOf: header)
                if header.last != UInt8(ascii: "\n") { data.append(UInt8(ascii: "\n")) }
            }
        }
        self.data = data
        self.headerBytes = data.count
    }

    /// The bytes a chunk adds to a batch, separators included.
    public func joinedSize(of chunk: Int, endsWithNewline: Bool) -> Int {
        chunk + separatorCost(endsWithNewline: endsWithNewline)
    }

    private func separatorCost(endsWithNewline: Bool) -> Int {
        switch format {
        case .values: return rows > 0 || requests > 0 ? 1 : 0
        case .rowBinary, .rowBinaryWithNames, .rowBinaryWithNamesAndTypes, .native: return 0
        case .jsonEachRow, .jsonCompactEachRow, .jsonCompactEachRowWithNames, .jsonCompactEachRowWithNamesAndTypes:
            return 1
        default: return endsWithNewline ? 0 : 1
        }
    }

    /// Appends one request's rows (already validated by the row scanner).
    public mutating func append(
        _ chunk: UnsafeRawBufferPointer, rows chunkRows: Int, endsWithNewline: Bool, token: UInt64 = 0,
        spoolChunk: UInt64? = nil
    ) {
        let before = data.count
        if format == .values && requests > 0 && !chunk.isEmpty { data.append(UInt8(ascii: ",")) }
        let start = data.count
        contributions.append(
            Contribution(token: token, spoolChunk: spoolChunk, range: start..<(start + chunk.count), rows: chunkRows))
        switch format {
        case .values:
            data.append(contentsOf: chunk)
        case .rowBinary, .rowBinaryWithNames, .rowBinaryWithNamesAndTypes, .native:
            data.append(contentsOf: chunk)
        case .jsonEachRow, .jsonCompactEachRow, .jsonCompactEachRowWithNames, .jsonCompactEachRowWithNamesAndTypes:
            data.append(contentsOf: chunk)
            data.append(UInt8(ascii: "\n"))
        default:
            data.append(contentsOf: chunk)
            if !endsWithNewline && !chunk.isEmpty { data.append(UInt8(ascii: "\n")) }
        }
        if !chunk.isEmpty { requests += 1 }
        rows += chunkRows
        rowBytes += data.count - before
    }

    public var isEmpty: Bool { data.count == headerBytes }
}

/// Every open batch, keyed by `BatchKey`: where rows wait for their flush.
///
/// A plain value with no clock and no locks: callers pass `now` and serialise access themselves.
public struct BatchStore: Sendable {
    struct OpenBatch: Sendable {
        var buffer: BatchBuffer
        var rule: TableRule
        var firstRowAt: Instant
        var deadline: Instant
        /// See `SealedBatch.contributors`.
        var contributors: [ClientIdentity] = []

        /// Records a contributor (service-account mode only); a batch's list is short, and the common case is the
        /// same identity as the last one. True when it is new to the batch.
        mutating func note(_ contributor: ClientIdentity?) -> Bool {
            guard let contributor, contributors.last != contributor, !contributors.contains(contributor) else {
                return false
            }
            contributors.append(contributor)
            return true
        }

        /// Takes the rule of this request and appends its rows, unless they would cross `max_bytes` (nil: seal
        /// first). Returns the bytes added and the batch's new size.
        mutating func append(
            _ chunk: UnsafeRawBufferPointer, rows: Int, endsWithNewline: Bool, rule: TableRule, token: UInt64,
            spoolChunk: UInt64?
        ) -> (bytes: Int, batchRows: Int, batchBytes: Int)? {
            self.rule = rule
            let incoming = buffer.joinedSize(of: chunk.count, endsWithNewline: endsWithNewline)
            if FlushPolicy.mustFlushBefore(appending: incoming, to: buffer.rowBytes, rule: rule) { return nil }
            let before = buffer.rowBytes
            buffer.append(chunk, rows: rows, endsWithNewline: endsWithNewline, token: token, spoolChunk: spoolChunk)
            return (buffer.rowBytes - before, buffer.rows, buffer.rowBytes)
        }
    }

    /// The controller of one `adaptive` table, with a key of that table to ask for its rule on reload.
    struct AdaptiveTable: Sendable {
        var controller: AdaptiveController
        var sampleKey: BatchKey
    }

    /// A controller idle this long (no arrival, no flush result, no open batch) is dropped.
    static let adaptiveIdleLimit: Duration = .seconds(600)

    private var open: [BatchKey: OpenBatch] = [:]
    /// Rows and row bytes of the batches sealed so far, per `db.table` (`receivedByTable`).
    private var sealedByTable: [String: (rows: Int, bytes: Int)] = [:]
    /// The open batches holding rows of each identity (the key's, or a contributor's in service-account mode), for
    /// a read that must seal them (`seal(holding:)`). Changed when a batch opens, gains a contributor or is sealed:
    /// once per batch, never per request.
    private var openByIdentity: [ClientIdentity: Set<BatchKey>] = [:]
    /// One controller per `db.table` whose rule says `strategy: adaptive`.
    private var adaptive: [String: AdaptiveTable] = [:]
    private var lastAdaptivePrune: Instant?
    private var nextID: UInt64
    public private(set) var bufferedRows = 0
    public private(set) var bufferedBytes = 0

    /// `firstBatchID` lets a restarted process continue numbering after what its spool already holds.
    public init(firstBatchID: UInt64 = 1) {
        self.nextID = firstBatchID
    }

    public var openBatchCount: Int { open.count }

    /// A number for a batch made outside the store (rows read back from the spool), from the same sequence.
    public mutating func takeBatchID() -> UInt64 {
        defer { nextID += 1 }
        return nextID
    }

    /// Appends a request's rows to the open batch of `key`, opening one if needed.
    /// Returns the batches that must go upstream now: at most one sealed before the append (the chunk would
    /// have crossed `max_bytes`) and one sealed after it (a size limit reached).
    public mutating func append(
        key: BatchKey, rule: TableRule, chunk: UnsafeRawBufferPointer, rows: Int, endsWithNewline: Bool, now: Instant,
        token: UInt64 = 0, spoolChunk: UInt64? = nil, contributor: ClientIdentity? = nil
    ) -> [SealedBatch] {
        var sealed: [SealedBatch] = []
        let target = adaptiveTarget(key: key, rule: rule, rows: rows, bytes: chunk.count, now: now)
        // One hash lookup per request: the open batch is then changed in place through its index.
        if let index = open.index(forKey: key) {
            if let added = open.values[index].append(
                chunk, rows: rows, endsWithNewline: endsWithNewline, rule: rule, token: token, spoolChunk: spoolChunk)
            {
                if open.values[index].note(contributor) { openByIdentity[contributor!, default: []].insert(key) }
                bufferedRows += rows
                bufferedBytes += added.bytes
                if let trigger = FlushPolicy.trigger(
                    rule: rule, target: target, rows: added.batchRows, bytes: added.batchBytes)
                {
                    let full = open.remove(at: index).value
                    sealed.append(seal(key: key, full, trigger: trigger, now: now))
                }
                return sealed
            }
            // The chunk would cross `max_bytes`: what is there goes first.
            let full = open.remove(at: index).value
            sealed.append(seal(key: key, full, trigger: .bytes, now: now))
        }
        var batch = OpenBatch(
            buffer: BatchBuffer(format: key.format, header: key.header, reservingCapacity: min(rule.maxBytes, 64 * 1024)),
            rule: rule,
            firstRowAt: now,
            deadline: FlushPolicy.deadline(rule: rule, target: target, firstRowAt: now)
        )
        let before = batch.buffer.rowBytes
        batch.buffer.append(chunk, rows: rows, endsWithNewline: endsWithNewline, token: token, spoolChunk: spoolChunk)
        _ = batch.note(contributor)
        bufferedRows += rows
        bufferedBytes += batch.buffer.rowBytes - before
        if let trigger = FlushPolicy.trigger(
            rule: rule, target: target, rows: batch.buffer.rows, bytes: batch.buffer.rowBytes)
        {
            sealed.append(seal(key: key, batch, trigger: trigger, now: now))
        } else {
            open[key] = batch
            for identity in batch.contributors.isEmpty ? [key.identity] : batch.contributors {
                openByIdentity[identity, default: []].insert(key)
            }
        }
        return sealed
    }

    /// Seals every batch whose deadline is at or before `now`.
    public mutating func sealDue(now: Instant) -> [SealedBatch] {
        var due: [SealedBatch] = []
        for (key, batch) in open where batch.deadline <= now {
            open[key] = nil
            due.append(seal(key: key, batch, trigger: .time, now: now))
        }
        pruneIdleControllers(now: now)
        return due.sorted { $0.id < $1.id }
    }

    /// Seals every batch holding rows of `identity` whose rule has `read_your_writes` (a read of that identity
    /// waits for them), found through `openByIdentity`: a read costs what its own batches cost.
    public mutating func seal(holding identity: ClientIdentity, now: Instant) -> [SealedBatch] {
        guard let holding = openByIdentity[identity] else { return [] }
        var sealed: [SealedBatch] = []
        for key in holding {
            guard let batch = open[key], batch.rule.readYourWrites else { continue }
            open[key] = nil
            sealed.append(seal(key: key, batch, trigger: .read, now: now))
        }
        return sealed.sorted { $0.id < $1.id }
    }

    /// The earliest deadline of any open batch.
    public var nextDeadline: Instant? {
        open.values.lazy.map(\.deadline).min()
    }

    /// Seals everything (shutdown, or a reload that must close batches).
    public mutating func sealAll(trigger: FlushTrigger, now: Instant) -> [SealedBatch] {
        let all = open.map { seal(key: $0.key, $0.value, trigger: trigger, now: now) }
        open.removeAll()
        openByIdentity.removeAll()
        return all.sorted { $0.id < $1.id }
    }

    /// Applies new rules to open batches (hot reload): each keeps its rows and first-row time, gets the new
    /// deadline, and is sealed at once if it already meets the new rule's limits.
    public mutating func updateRules(now: Instant, _ ruleFor: (BatchKey) -> TableRule) -> [SealedBatch] {
        var sealed: [SealedBatch] = []
        for (table, var entry) in adaptive {
            let rule = ruleFor(entry.sampleKey)
            if rule.strategy == .adaptive && !rule.passthrough {
                entry.controller.update(rule: rule)
                adaptive[table] = entry
            } else {
                adaptive[table] = nil
            }
        }
        for (key, var batch) in open {
            let rule = ruleFor(key)
            let target = rule.strategy == .adaptive ? adaptive[key.qualifiedTable]?.controller.target : nil
            batch.rule = rule
            batch.deadline = FlushPolicy.deadline(rule: rule, target: target, firstRowAt: batch.firstRowAt)
            let full = FlushPolicy.trigger(
                rule: rule, target: target, rows: batch.buffer.rows, bytes: batch.buffer.rowBytes)
            if rule.passthrough || rule.strategy == .immediate || full != nil {
                open[key] = nil
                sealed.append(seal(key: key, batch, trigger: .reload, now: now))
            } else {
                open[key] = batch
            }
        }
        return sealed.sorted { $0.id < $1.id }
    }

    /// Rows and row bytes each `db.table` has received: those of the batches sealed so far and those still open.
    /// Counted per batch when it is sealed, never per request; a row moves from open to sealed under the same
    /// lock, so the figures only grow.
    public func receivedByTable() -> [String: (rows: Int, bytes: Int)] {
        var result = sealedByTable
        for (key, batch) in open {
            let current = result[key.qualifiedTable] ?? (0, 0)
            result[key.qualifiedTable] = (current.rows + batch.buffer.rows, current.bytes + batch.buffer.rowBytes)
        }
        return result
    }

    private mutating func countSealed(table: String, rows: Int, bytes: Int) {
        let current = sealedByTable[table] ?? (0, 0)
        sealedByTable[table] = (current.rows + rows, current.bytes + bytes)
    }

    /// Buffered rows and bytes per `db.table`, for gauges.
    public func bufferedByTable() -> [String: (rows: Int, bytes: Int)] {
        var result: [String: (rows: Int, bytes: Int)] = [:]
        for (key, batch) in open {
            let name = key.qualifiedTable
            let current = result[name] ?? (0, 0)
            result[name] = (current.rows + batch.buffer.rows, current.bytes + batch.buffer.rowBytes)
        }
        return result
    }

    /// Feeds the outcome of one upstream insert (every attempt, retries included) to the table's `adaptive`
    /// controller; ignored for tables with another strategy. `table` is `BatchKey.qualifiedTable`.
    public mutating func recordFlush(
        table: String, rows: Int, bytes: Int, latency: Duration, result: FlushResult, now: Instant
    ) {
        adaptive[table]?.controller.recordFlush(rows: rows, bytes: bytes, latency: latency, result: result, now: now)
    }

    /// The current flush point of every `adaptive` table, by `db.table`, for gauges.
    public func adaptiveTargets() -> [String: AdaptiveTarget] {
        adaptive.mapValues(\.controller.target)
    }

    /// The controller of `table` (`db.table`), if it is `adaptive`.
    func adaptiveController(table: String) -> AdaptiveController? {
        adaptive[table]?.controller
    }

    /// Records an arrival with the table's controller and returns its target; nil unless the rule is `adaptive`.
    /// A table whose rule is no longer `adaptive` loses its controller.
    private mutating func adaptiveTarget(key: BatchKey, rule: TableRule, rows: Int, bytes: Int, now: Instant)
        -> AdaptiveTarget?
    {
        guard rule.strategy == .adaptive else {
            if !adaptive.isEmpty { adaptive[key.qualifiedTable] = nil }
            return nil
        }
        let table = key.qualifiedTable
        var entry = adaptive[table] ?? AdaptiveTable(controller: AdaptiveController(rule: rule), sampleKey: key)
        if entry.controller.rule != rule { entry.controller.update(rule: rule) }
        entry.controller.recordArrival(rows: rows, bytes: bytes, now: now)
        adaptive[table] = entry
        return entry.controller.target
    }

    /// Drops controllers of tables that went quiet, at most once a minute, so a table that stopped (or a
    /// client that tried many names) does not stay in memory and in the metrics forever.
    private mutating func pruneIdleControllers(now: Instant) {
        guard !adaptive.isEmpty else { return }
        if let last = lastAdaptivePrune, now - last < .seconds(60) { return }
        lastAdaptivePrune = now
        let busy = Set(open.keys.map(\.qualifiedTable))
        adaptive = adaptive.filter { table, entry in
            busy.contains(table) || entry.controller.lastActivity.map { now - $0 < Self.adaptiveIdleLimit } ?? false
        }
    }

    /// A batch of one request's rows that never waits in the store (the `immediate` strategy).
    public mutating func single(
        key: BatchKey, rule: TableRule, chunk: UnsafeRawBufferPointer, rows: Int, endsWithNewline: Bool, now: Instant,
        token: UInt64 = 0, spoolChunk: UInt64? = nil
    ) -> SealedBatch {
        var buffer = BatchBuffer(format: key.format, header: key.header, reservingCapacity: chunk.count + 1)
        buffer.append(chunk, rows: rows, endsWithNewline: endsWithNewline, token: token, spoolChunk: spoolChunk)
        countSealed(table: key.qualifiedTable, rows: rows, bytes: buffer.rowBytes)
        defer { nextID += 1 }
        return SealedBatch(
            id: nextID, key: key, rule: rule, data: buffer.data, rows: rows, requests: 1,
            trigger: .immediate, firstRowAt: now, sealedAt: now, contributions: buffer.contributions
        )
    }

    private mutating func seal(key: BatchKey, _ batch: OpenBatch, trigger: FlushTrigger, now: Instant) -> SealedBatch {
        for identity in batch.contributors.isEmpty ? [key.identity] : batch.contributors {
            if openByIdentity[identity]?.remove(key) != nil, openByIdentity[identity]?.isEmpty == true {
                openByIdentity[identity] = nil
            }
        }
        bufferedRows -= batch.buffer.rows
        bufferedBytes -= batch.buffer.rowBytes
        countSealed(table: key.qualifiedTable, rows: batch.buffer.rows, bytes: batch.buffer.rowBytes)
        defer { nextID += 1 }
        var sealed = SealedBatch(
            id: nextID, key: key, rule: batch.rule, data: batch.buffer.data, rows: batch.buffer.rows,
            requests: batch.buffer.requests, trigger: trigger, firstRowAt: batch.firstRowAt, sealedAt: now,
            contributions: batch.buffer.contributions
        )
        sealed.contributors = batch.contributors
        return sealed
    }
}
