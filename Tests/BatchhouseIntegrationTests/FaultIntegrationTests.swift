import BatchhouseCore
import Foundation
import Testing

@testable import BatchhouseServer

/// Nothing acknowledged is lost: the proxy killed, ClickHouse stopped, a bad row, a corrupt spool.
/// Each test counts rows by content (ids), so a loss or a duplicate shows.
@Suite(.serialized, .enabled(if: TestEnvironment.hasClickHouse, "needs CLICKHOUSE_URL (scripts/test sets it)"))
struct FaultIntegrationTests {
    /// Ids a load acknowledged, collected from many tasks.
    final class AckedIDs: @unchecked Sendable {
        private let lock = NSLock()
        private var ids: [Int] = []
        private var refused = 0
        func add(_ batch: [Int]) {
            lock.lock()
            ids += batch
            lock.unlock()
        }
        func refuse() {
            lock.lock()
            refused += 1
            lock.unlock()
        }
        var all: [Int] {
            lock.lock()
            defer { lock.unlock() }
            return ids
        }
        var refusedCount: Int {
            lock.lock()
            defer { lock.unlock() }
            return refused
        }
    }

    /// Every acknowledged id is in `table` exactly once, and no id is there twice.
    func assertLandedOnce(_ db: TestDatabase, _ table: String, acked: [Int], sourceLocation: SourceLocation = #_sourceLocation)
        async throws -> (rows: Int, distinct: Int, missing: Int)
    {
        let landed = try await db.clickHouse.sql("SELECT id FROM \(db.name).\(table) FORMAT TSV")
        var counts: [Int: Int] = [:]
        for line in landed.split(separator: "\n") { counts[Int(line)!, default: 0] += 1 }
        let duplicates = counts.values.filter { $0 > 1 }.count
        let missing = acked.filter { counts[$0] == nil }.count
        #expect(duplicates == 0, "\(duplicates) ids landed more than once", sourceLocation: sourceLocation)
        #expect(missing == 0, "\(missing) acknowledged ids are missing", sourceLocation: sourceLocation)
        return (counts.values.reduce(0, +), counts.count, missing)
    }

    @Test func killedWithSigkillInDurableModeLosesNoAcknowledgedRow() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).k (id UInt64) ENGINE = MergeTree ORDER BY id")
        let spoolDir = NSTemporaryDirectory() + "bh-spool-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: spoolDir) }
        // Flushes by time, and the kill below falls between two flushes. (A kill in the instant between
        // ClickHouse committing a batch and the proxy recording it would replay that batch: the at-least-once
        // window the README describes; a test that kills during a flush hits it on purpose.)
        let config = """
            defaults: { strategy: hybrid, max_rows: 1000000, max_delay: 500ms, ack: durable }
            spool: { dir: \(spoolDir) }
            """
        let first = try ProcessIntegrationTests.RunningProxy(config: config)
        try await first.waitUntilReady()
        let acked = AckedIDs()
        let rowsPerRequest = 10
        let requests = 5_000  // 50,000 rows
        let target = EndpointBox(first.endpoint)
        let table = "\(db.name).k"
        // The load goes on through the kill: requests that fail are dropped (never acknowledged), the rest go
        // to whichever proxy is up.
        let load = Task {
            try? await runConcurrently(count: requests, concurrency: 16) { request in
                let ids = (0..<rowsPerRequest).map { request * rowsPerRequest + $0 }
                let body = "INSERT INTO \(table) VALUES " + ids.map { "(\($0))" }.joined(separator: ",")
                guard let result = try? await target.endpoint.post("/", body: body) else {
                    acked.refuse()
                    try? await Task.sleep(for: .milliseconds(50))
                    return
                }
                if result.status == 200 && result.header("X-Batchhouse-Ack") == "durable" {
                    acked.add(ids)
                } else {
                    acked.refuse()
                }
            }
        }
        while acked.all.count < 12_340 { try await Task.sleep(for: .milliseconds(20)) }
        // Kill mid-cycle: right after a flush landed, halfway to the next one.
        let landedBefore = try await db.count("k")
        var landedNow = landedBefore
        while landedNow == landedBefore {
            try await Task.sleep(for: .milliseconds(10))
            landedNow = try await db.count("k")
        }
        try await Task.sleep(for: .milliseconds(200))
        kill(first.process.processIdentifier, SIGKILL)
        first.process.waitUntilExit()
        let ackedBeforeKill = acked.all.count

        // Restart on the same spool: it replays what ClickHouse does not have, and takes the rest of the load.
        let second = try ProcessIntegrationTests.RunningProxy(config: config)
        try await second.waitUntilReady()
        target.endpoint = second.endpoint
        await load.value
        let ids = acked.all
        _ = try await db.waitForCount("k", ids.count, timeout: .seconds(30))
        #expect(await second.terminateAndWait() == 0)
        let result = try await assertLandedOnce(db, "k", acked: ids)
        #expect(ids.count > ackedBeforeKill, "the restarted proxy took the rest of the load")
        print(
            "sigkill: sent \(requests * rowsPerRequest) rows, acknowledged \(ids.count) (\(ackedBeforeKill) before the "
                + "kill), failed requests \(acked.refusedCount), landed \(result.rows) (\(result.distinct) distinct, "
                + "\(result.missing) acknowledged missing); "
                + (second.log.split(separator: "\n").first { $0.contains("spool recovered") }.map(String.init) ?? "no recovery log"))
    }

    @Test func clickHouseDownForTwentySecondsLosesNothingAndInsertsAreAcceptedAllAlong() async throws {
        try await DedicatedClickHouse.with { try await outage($0) }
    }

    func outage(_ upstream: DedicatedClickHouse) async throws {
        let direct = HTTPEndpoint(baseURL: upstream.url)
        try await direct.sql("CREATE TABLE default.outage (id UInt64) ENGINE = MergeTree ORDER BY id")
        let spoolDir = NSTemporaryDirectory() + "bh-spool-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: spoolDir) }
        let proxy = try await ProxyUnderTest.start(
            """
            defaults: { strategy: hybrid, max_rows: 10000, max_delay: 500ms, retries: 2, retry_backoff: 100ms }
            spool: { dir: \(spoolDir) }
            """, upstream: upstream.url)
        let acked = AckedIDs()
        let stopAt = ContinuousClock.now + .seconds(3)
        let restartAt = stopAt + .seconds(20)
        let loadEnd = restartAt + .seconds(3)
        let next = NextIndex()
        let load = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<4 {
                    group.addTask {
                        while ContinuousClock.now < loadEnd, let id = next.take(below: Int.max) {
                            let result = try await proxy.endpoint.post("/", body: "INSERT INTO default.outage VALUES (\(id))")
                            if result.status == 200 { acked.add([id]) } else { acked.refuse() }
                            try await Task.sleep(for: .milliseconds(2))
                        }
                    }
                }
                try await group.waitForAll()
            }
        }
        try await Task.sleep(until: stopAt)
        await upstream.pause()
        let ackedAtStop = acked.all.count
        try await Task.sleep(until: restartAt)
        let ackedDuringOutage = acked.all.count - ackedAtStop
        try await upstream.resume()
        try await load.value
        let ids = acked.all
        let landedCount = try await TestDatabase(name: "default", clickHouse: direct)
            .waitForCount("outage", ids.count, timeout: .seconds(40))
        try await proxy.stop()
        let result = try await assertLandedOnce(TestDatabase(name: "default", clickHouse: direct), "outage", acked: ids)
        #expect(acked.refusedCount == 0, "inserts refused during the outage")
        #expect(ackedDuringOutage > 100, "inserts were not accepted while ClickHouse was down")
        print(
            "outage: acknowledged \(ids.count) (\(ackedDuringOutage) while ClickHouse was down), refused "
                + "\(acked.refusedCount), landed \(result.rows) (\(result.distinct) distinct) [\(landedCount) at wait end]")
    }

    @Test func aDeadReplicaIsRoutedAroundByItsCircuitBreaker() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).f (id UInt64) ENGINE = MergeTree ORDER BY id")
        // Port 9 (discard) has nothing listening on loopback: every attempt there is a connection error.
        let proxy = try await ProxyUnderTest.start(
            "defaults: { strategy: hybrid, max_rows: 100, max_delay: 100ms, retries: 5, retry_backoff: 10ms }",
            upstream: "http://127.0.0.1:9, \(TestEnvironment.clickHouseURL!)")
        try await runConcurrently(count: 3_000, concurrency: 8) { id in
            let result = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).f VALUES (\(id))")
            guard result.status == 200 else { throw TestFailure("\(result.status) \(result.body)") }
        }
        #expect(try await db.waitForCount("f", 3_000) == 3_000)
        let health = String(decoding: try await proxy.endpoint.get("/health").body, as: UTF8.self)
        try await proxy.stop()
        _ = try await assertLandedOnce(db, "f", acked: Array(0..<3_000))
        #expect(health.contains("\"breaker\":\"open\""), "\(health)")
        #expect(health.contains("\"status\":\"degraded\""), "\(health)")
        print("failover: 3000 rows landed with one of two replicas dead; /health: \(health)")
    }

    @Test func oneMalformedRowAmongTenThousandIsIsolated() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).x (id UInt64, v UInt32) ENGINE = MergeTree ORDER BY id")
        try await db.clickHouse.sql("CREATE TABLE \(db.name).y (id UInt64) ENGINE = MergeTree ORDER BY id")
        let proxy = try await ProxyUnderTest.start(
            "defaults: { strategy: hybrid, max_rows: 100000, max_delay: 60s, retries: 1, retry_backoff: 10ms }")
        try await runConcurrently(count: 10_000, concurrency: 16) { id in
            // Structurally a fine row; only ClickHouse can tell that 'oops' is not a UInt32.
            let value = id == 4_321 ? "'oops'" : "\(id % 1000)"
            let x = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).x VALUES (\(id), \(value))")
            let y = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).y VALUES (\(id))")
            guard x.status == 200 && y.status == 200 else { throw TestFailure("\(x.status) \(y.status)") }
        }
        let deadLetterDir = proxy.deadLetterDir
        let metricsBefore = try await proxy.metricsText()
        #expect(metricsBefore.contains("batchhouse_buffered_rows{table=\"\(db.name).x\"} 10000"))
        await proxy.group.triggerGracefulShutdown()
        try await proxy.task.value
        proxy.application.shutdown()
        defer { try? FileManager.default.removeItem(atPath: deadLetterDir) }

        let x = try await assertLandedOnce(db, "x", acked: (0..<10_000).filter { $0 != 4_321 })
        #expect(x.rows == 9_999)
        let y = try await assertLandedOnce(db, "y", acked: Array(0..<10_000))
        #expect(y.rows == 10_000)
        let files = (try? FileManager.default.contentsOfDirectory(atPath: deadLetterDir)) ?? []
        let data = files.filter { $0.hasSuffix(".data") }
        #expect(data.count == 1)
        if let file = data.first {
            let text = try String(contentsOfFile: deadLetterDir + "/" + file, encoding: .utf8)
            #expect(text == "(4321, 'oops')")
            let meta = try String(contentsOfFile: deadLetterDir + "/" + file.replacingOccurrences(of: ".data", with: ".json"), encoding: .utf8)
            #expect(meta.contains("Code: 53"))
            #expect(meta.contains("\"rows\" : 1"))
        }
        print("bad row: 10000 sent to x, \(x.rows) landed, \(data.count) dead-letter file; y: \(y.rows) of 10000")
    }

    @Test func aCorruptSpoolSegmentIsReportedAndTheRestIsDelivered() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).c (id UInt64) ENGINE = MergeTree ORDER BY id")
        let spoolDir = NSTemporaryDirectory() + "bh-spool-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: spoolDir) }
        // Rows wait a minute in buffers, so they are only in the spool when the process is killed.
        let config = """
            defaults: { strategy: hybrid, max_rows: 1000000, max_delay: 60s, ack: durable }
            spool: { dir: \(spoolDir) }
            """
        let first = try ProcessIntegrationTests.RunningProxy(config: config)
        try await first.waitUntilReady()
        for id in 0..<300 {
            let result = try await first.endpoint.post("/", body: "INSERT INTO \(db.name).c VALUES (\(id))")
            #expect(result.status == 200)
        }
        kill(first.process.processIdentifier, SIGKILL)
        first.process.waitUntilExit()
        #expect(try await db.count("c") == 0)

        // Flip bytes in the middle of the segment: one record's checksum no longer matches.
        let segments = try FileManager.default.contentsOfDirectory(atPath: spoolDir).filter { $0.hasSuffix(".wal") }.sorted()
        let segment = try #require(segments.first)
        let handle = try #require(FileHandle(forUpdatingAtPath: spoolDir + "/" + segment))
        let size = try handle.seekToEnd()
        try handle.seek(toOffset: size / 2)
        try handle.write(contentsOf: Data([0xFF, 0x00, 0xFF, 0x00]))
        try handle.close()

        let second = try ProcessIntegrationTests.RunningProxy(config: config)
        try await second.waitUntilReady()
        let metrics = String(decoding: try await second.endpoint.get("/metrics").body, as: UTF8.self)
        #expect(metrics.contains("batchhouse_spool_corruptions_total 1"), "\(metrics)")
        #expect(await second.terminateAndWait() == 0)
        let landed = try await db.count("c")
        #expect(landed >= 297 && landed < 300, "landed \(landed) of 300 with one corrupt record")
        #expect(try await db.clickHouse.sql("SELECT count() = uniqExact(id) FROM \(db.name).c") == "1\n")
        #expect(second.log.contains("spool corruption"))
        print("corrupt spool: 300 acknowledged, \(landed) landed after the corrupt record was skipped")
    }
}

final class EndpointBox: @unchecked Sendable {
    private let lock = NSLock()
    private var current: HTTPEndpoint
    init(_ endpoint: HTTPEndpoint) { current = endpoint }
    var endpoint: HTTPEndpoint {
        get { lock.lock(); defer { lock.unlock() }; return current }
        set { lock.lock(); current = newValue; lock.unlock() }
    }
}

/// A ClickHouse of its own for a test that stops it, so the shared one keeps serving the other tests.
final class DedicatedClickHouse: @unchecked Sendable {
    let url: String
    let dir: String
    private var pid: Int32

    private init(url: String, dir: String, pid: Int32) {
        self.url = url
        self.dir = dir
        self.pid = pid
    }

    /// Starts one for `body` and stops it afterwards, whether `body` throws or not.
    static func with(_ body: (DedicatedClickHouse) async throws -> Void) async throws {
        let upstream = try await start()
        do {
            try await body(upstream)
        } catch {
            await upstream.stop()
            throw error
        }
        await upstream.stop()
    }

    static func start() async throws -> DedicatedClickHouse {
        let output = try await run(ProcessIntegrationTests.repo + "/scripts/clickhouse-start", [])
        var values: [String: String] = [:]
        for line in output.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { values[String(parts[0])] = String(parts[1]) }
        }
        guard let url = values["CLICKHOUSE_URL"], let dir = values["CLICKHOUSE_DIR"],
            let pid = values["CLICKHOUSE_PID"].flatMap({ Int32($0) })
        else { throw TestFailure("clickhouse-start said: \(output)") }
        return DedicatedClickHouse(url: url, dir: dir, pid: pid)
    }

    /// Stops the server (SIGTERM, then waits for it to exit).
    func pause() async {
        kill(pid, SIGTERM)
        for _ in 0..<200 where kill(pid, 0) == 0 { try? await Task.sleep(for: .milliseconds(50)) }
    }

    /// Starts the server again on the same folder and ports, and waits for `/ping`.
    func resume() async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["--default-signal", "clickhouse-server", "--config-file=\(dir)/config.xml"]
        process.currentDirectoryURL = URL(fileURLWithPath: dir)
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        pid = process.processIdentifier
        try? "\(pid)".write(toFile: dir + "/clickhouse.pid", atomically: true, encoding: .utf8)
        for _ in 0..<150 {
            if let ping = try? await HTTPEndpoint(baseURL: url).get("/ping"), ping.status == 200 { return }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw TestFailure("ClickHouse did not come back")
    }

    func stop() async {
        _ = try? await Self.run(ProcessIntegrationTests.repo + "/scripts/clickhouse-stop", [dir])
    }

    /// The script's output; it runs off Swift's cooperative pool, which a start of several seconds would block.
    private static func run(_ path: String, _ arguments: [String]) async throws -> String {
        try await offPool { try runBlocking(path, arguments) }
    }

    private static func runBlocking(_ path: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }
}
