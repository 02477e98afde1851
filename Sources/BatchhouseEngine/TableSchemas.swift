import BatchhouseCore
import BatchhouseUpstream
import Synchronization

/// The columns of the tables RowBinary rows go to, as the upstream describes them to each identity: RowBinary has
/// no row boundaries without the column types, so the intake reads its rows with these (docs/request-path.md,
/// "RowBinary and Native").
///
/// One `DESCRIBE TABLE` per table and identity, shared by the requests that wait for it; the answer is kept until a
/// batch of the table fails for its schema or a request's rows do not read with it (then asked again, at most once
/// per `refreshAfter`). Generic over the parsed form so the cache is tested without a parser.
package final class TableSchemas<Schema: Sendable>: Sendable {
    package struct Key: Hashable, Sendable {
        package var identity: ClientIdentity
        package var database: String?
        package var table: String

        package init(identity: ClientIdentity, database: String?, table: String) {
            self.identity = identity
            self.database = database
            self.table = table
        }
    }

    package enum Lookup: Sendable {
        case described(Schema)
        /// ClickHouse refused the question (no such table, no right to describe it): the INSERT goes to ClickHouse
        /// as received, which answers it itself.
        case refused(UpstreamResponse)
        /// The answer could not be read as a table's columns.
        case unreadable(String)
        /// No server answered.
        case unreachable(String)
    }

    private struct Entry {
        var schema: Schema?
        var describedAt: Instant
        var waiters: [@Sendable (Lookup) -> Void]?
    }

    /// A described table is asked again for a request's rows that do not read with it at most this often.
    package static var refreshAfter: Duration { .seconds(1) }
    /// Entries beyond this are dropped, oldest first.
    package static var maxEntries: Int { 10_000 }

    private let entries = Mutex<[Key: Entry]>([:])
    private let clock: any NowProvider
    private let parse: @Sendable ([UInt8]) -> Schema?
    private let ask: @Sendable (Key) async -> UpstreamGateway.DescribeAnswer

    package init(
        clock: any NowProvider, parse: @escaping @Sendable ([UInt8]) -> Schema?,
        ask: @escaping @Sendable (Key) async -> UpstreamGateway.DescribeAnswer
    ) {
        self.clock = clock
        self.parse = parse
        self.ask = ask
    }

    package convenience init(gateway: UpstreamGateway, clock: any NowProvider, parse: @escaping @Sendable ([UInt8]) -> Schema?) {
        self.init(clock: clock, parse: parse) { key in
            await gateway.describe(database: key.database, table: key.table, identity: key.identity)
        }
    }

    /// The hot path: the table's columns if they are known.
    package func cached(_ key: Key) -> Schema? {
        entries.withLock { $0[key]?.schema }
    }

    /// Whether `key` may be described again now: it was described longer than `refreshAfter` ago.
    package func mayRefresh(_ key: Key) -> Bool {
        let now = clock.now()
        return entries.withLock { entries in
            guard let entry = entries[key] else { return true }
            return entry.waiters == nil && entry.describedAt + Self.refreshAfter <= now
        }
    }

    /// Asks ClickHouse (or joins the question already asked) and calls `then` once, from a task, with the answer.
    package func describe(_ key: Key, then: @escaping @Sendable (Lookup) -> Void) {
        let now = clock.now()
        let first = entries.withLock { entries -> Bool in
            if var entry = entries[key], entry.waiters != nil {
                entry.waiters!.append(then)
                entries[key] = entry
                return false
            }
            if entries[key] == nil && entries.count >= Self.maxEntries {
                let oldest = entries.filter { $0.value.waiters == nil }.min { $0.value.describedAt < $1.value.describedAt }
                if let oldest { entries[oldest.key] = nil }
            }
            var entry = entries[key] ?? Entry(schema: nil, describedAt: now)
            entry.waiters = [then]
            entries[key] = entry
            return true
        }
        guard first else { return }
        Task {
            let lookup: Lookup
            switch await ask(key) {
            case .described(let text):
                if let schema = parse(text) {
                    lookup = .described(schema)
                } else {
                    lookup = .unreadable("the upstream's DESCRIBE TABLE answer is not a list of columns")
                }
            case .refused(let response): lookup = .refused(response)
            case .unreachable(let reason): lookup = .unreachable(reason)
            }
            let at = clock.now()
            let waiters = entries.withLock { entries -> [@Sendable (Lookup) -> Void] in
                let waiters = entries[key]?.waiters ?? []
                if case .described(let schema) = lookup {
                    entries[key] = Entry(schema: schema, describedAt: at, waiters: nil)
                } else {
                    // A refusal is not remembered: the next request asks again (the table may be created meanwhile).
                    entries[key] = nil
                }
                return waiters
            }
            for waiter in waiters { waiter(lookup) }
        }
    }

    /// A batch of `database.table` failed for its schema (a column or type changed): every identity's description
    /// of it is asked again before the next request's rows are read.
    package func forget(database: String?, table: String) {
        entries.withLock { entries in
            for (key, entry) in entries where key.table == table && key.database == database && entry.waiters == nil {
                entries[key] = nil
            }
        }
    }

    /// How many tables are described (for tests).
    package var count: Int { entries.withLock { $0.count } }
}
