import BatchhouseCore
import Foundation
import Testing

/// The proxy killed (SIGKILL, through the `after-commit` crash point) after ClickHouse committed a batch and before
/// the spool marked it delivered, again and again: every acknowledged row lands once, and no row lands twice
/// (docs/spool-and-acks.md, "Exactly once"). On 18.16 through `system.query_log`; on the modern upstream through
/// the query log, and through the deduplication token where the server has no query log.
@Suite(.serialized, .enabled(if: TestEnvironment.hasClickHouse, "needs CLICKHOUSE_URL (scripts/test sets it)"))
struct ExactlyOnceTests {
    /// Acknowledged ids, from many tasks.
    final class Acked: @unchecked Sendable {
        private let lock = NSLock()
        private var ids: [Int] = []
        func add(_ batch: [Int]) {
            lock.lock()
            ids += batch
            lock.unlock()
        }
        var all: [Int] {
            lock.lock()
            defer { lock.unlock() }
            return ids
        }
        private var nextID = 0
        private var stopped = false
        /// The next `count` ids, none handed out before.
        func take(_ count: Int) -> [Int] {
            lock.lock()
            defer { lock.unlock() }
            nextID += count
            return Array(nextID - count..<nextID)
        }
        var isStopped: Bool {
            lock.lock()
            defer { lock.unlock() }
            return stopped
        }
        func stop() {
            lock.lock()
            stopped = true
            lock.unlock()
        }
    }

    struct Outcome {
        var acked: [Int]
        /// Every id in the table, with how many times it landed.
        var landed: [Int: Int]
        var badPayloads: Int
        var logs: String

        var duplicates: Int { landed.values.reduce(0) { $0 + max($1 - 1, 0) } }
        var missing: Int { acked.filter { landed[$0] == nil }.count }
    }

    /// Runs a steady load of unique ids through `kills` proxies armed with `BATCHHOUSE_CRASH_AT=after-commit`, each
    /// started on the spool of the one before once it has killed itself, then through a last one without the hook,
    /// which settles and drains everything.
    func killAfterCommit(
        upstream: String, db: TestDatabase, table: String, kills: Int, rowsPerRequest: Int = 5
    ) async throws -> Outcome {
        let spoolDir = NSTemporaryDirectory() + "bh-once-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: spoolDir) }
        let config = """
            defaults: { max_rows: 200, max_delay: 100ms, ack: enqueued }
            spool: { dir: \(spoolDir) }
            """
        let acked = Acked()
        var proxy = try ProcessIntegrationTests.RunningProxy(
            config: config, environment: ["BATCHHOUSE_CRASH_AT": "after-commit"], upstream: upstream)
        try await proxy.waitUntilReady()
        let target = EndpointBox(proxy.endpoint)
        let qualified = "\(db.name).\(table)"
        let load = Task {
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<8 {
                    group.addTask {
                        while !acked.isStopped {
                            let ids = acked.take(rowsPerRequest)
                            let body = "INSERT INTO \(qualified) VALUES " + ids.map { "(\($0),'p\($0)')" }.joined(separator: ",")
                            if let result = try? await target.endpoint.post("/", body: body), result.status == 200 {
                                acked.add(ids)
                            } else {
                                try? await Task.sleep(for: .milliseconds(20))
                            }
                        }
                    }
                }
            }
        }
        var logs = ""
        for round in 1...kills {
            // The crash point fires at the first batch ClickHouse takes from this process.
            let deadline = ContinuousClock.now + .seconds(60)
            while proxy.process.isRunning && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
            #expect(!proxy.process.isRunning, "round \(round): the crash point was reached")
            if proxy.process.isRunning { kill(proxy.process.processIdentifier, SIGKILL) }
            proxy.process.waitUntilExit()
            logs += proxy.log
            proxy = try ProcessIntegrationTests.RunningProxy(
                config: config, environment: round < kills ? ["BATCHHOUSE_CRASH_AT": "after-commit"] : [:],
                upstream: upstream)
            try await proxy.waitUntilReady()
            target.endpoint = proxy.endpoint
        }
        try await Task.sleep(for: .seconds(1))
        acked.stop()
        await load.value
        let ids = acked.all
        // Drained: every acknowledged id is in (polled by distinct ids, so duplicates cannot make it look done).
        let deadline = ContinuousClock.now + .seconds(90)
        var landed: [Int: Int] = [:]
        var badPayloads = 0
        repeat {
            try await Task.sleep(for: .milliseconds(300))
            let text = try await db.clickHouse.sql("SELECT id, payload FROM \(qualified) FORMAT TSV")
            landed = [:]
            badPayloads = 0
            for line in text.split(separator: "\n") {
                let fields = line.split(separator: "\t", omittingEmptySubsequences: false)
                guard let id = Int(fields[0]) else { continue }
                landed[id, default: 0] += 1
                if fields.count < 2 || fields[1] != "p\(id)" { badPayloads += 1 }
            }
        } while ids.contains(where: { landed[$0] == nil }) && ContinuousClock.now < deadline
        // Anything still in flight has its chance to land twice before the count is final.
        try await Task.sleep(for: .seconds(1))
        #expect(await proxy.terminateAndWait() == 0)
        logs += proxy.log
        let final = try await db.clickHouse.sql("SELECT id FROM \(qualified) FORMAT TSV")
        landed = [:]
        for line in final.split(separator: "\n") { if let id = Int(line) { landed[id, default: 0] += 1 } }
        return Outcome(acked: ids, landed: landed, badPayloads: badPayloads, logs: logs)
    }

    func settledLines(_ logs: String, _ outcome: String) -> Int {
        logs.split(separator: "\n").filter { $0.contains("batch in doubt settled") && $0.contains(outcome) }.count
    }

    @Test func killsBetweenClickHousesCommitAndTheDeliveredMarkDuplicateNothingOn1816() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).e (id UInt64, payload String) ENGINE = MergeTree ORDER BY id")
        let outcome = try await killAfterCommit(upstream: TestEnvironment.clickHouseURL!, db: db, table: "e", kills: 3)
        print(
            "exactly once, 18.16: 3 kills after commit, \(outcome.acked.count) acknowledged, \(outcome.landed.count) "
                + "distinct landed, \(outcome.duplicates) duplicates, \(outcome.missing) missing, "
                + "\(settledLines(outcome.logs, "landed before the crash")) batches settled through system.query_log")
        #expect(outcome.missing == 0)
        #expect(outcome.duplicates == 0)
        #expect(outcome.badPayloads == 0)
        #expect(settledLines(outcome.logs, "landed before the crash") >= 3, "each kill left a batch in doubt, found landed")
    }

    /// Two kills after commit on a modern upstream, into a MergeTree that deduplicates by token.
    func killAfterCommitOnModern(_ url: String) async throws -> Outcome {
        let db = try await TestDatabase.create(on: url)
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql(
            "CREATE TABLE \(db.name).e (id UInt64, payload String) ENGINE = MergeTree ORDER BY id "
                + "SETTINGS non_replicated_deduplication_window = 1000")
        return try await killAfterCommit(upstream: url, db: db, table: "e", kills: 2)
    }

    @Test(.enabled(if: TestEnvironment.hasModern, "needs MODERN_URL (scripts/test sets it)"))
    func killsAfterCommitDuplicateNothingOnTheModernUpstream() async throws {
        let outcome = try await killAfterCommitOnModern(try #require(TestEnvironment.modernURL))
        print(
            "exactly once, modern upstream: 2 kills after commit, \(outcome.acked.count) acknowledged, "
                + "\(outcome.duplicates) duplicates, \(outcome.missing) missing")
        #expect(outcome.missing == 0)
        #expect(outcome.duplicates == 0)
        #expect(settledLines(outcome.logs, "landed before the crash") >= 2)
    }

    /// Without a query log the batch in doubt is sent again (at least once), under the same id: the server's
    /// deduplication drops it. The upstream is a second modern fixture, started with `--hide-query-log`.
    @Test(.enabled(if: TestEnvironment.modernWithoutQueryLogURL != nil, "needs MODERN_NOLOG_URL (scripts/test sets it)"))
    func withoutAQueryLogTheDeduplicationTokenDropsTheReplay() async throws {
        let outcome = try await killAfterCommitOnModern(try #require(TestEnvironment.modernWithoutQueryLogURL))
        print(
            "exactly once, modern upstream without a query log: 2 kills, \(outcome.acked.count) acknowledged, "
                + "\(outcome.duplicates) duplicates, \(outcome.missing) missing, "
                + "\(settledLines(outcome.logs, "could not be told")) batches sent again at least once")
        #expect(outcome.missing == 0)
        #expect(outcome.duplicates == 0, "the replays carried the first attempts' tokens")
        #expect(settledLines(outcome.logs, "could not be told") >= 2, "the query log could not settle them")
    }
}
