import BatchhouseCore
import Foundation
import Testing

@testable import BatchhouseServer

/// The spool's disk fills up, for real (a small tmpfs), and `spool.max_size` is reached: the proxy answers
/// 503 + Retry-After with code 243, keeps nothing of what it refused, gets its space back once the rows are in
/// ClickHouse, restarts on a full disk, and every acknowledged id lands exactly once (docs/spool-and-acks.md,
/// "A full disk").
@Suite(
    .serialized, .enabled(if: TestEnvironment.hasClickHouse, "needs CLICKHOUSE_URL (scripts/test sets it)"),
    .enabled(if: MountedTmpfs.canMount, "needs to mount a tmpfs (root, or CAP_SYS_ADMIN) to fill a disk for real"))
struct AdversarialSpoolTests {
    /// What a load saw: acknowledged ids and the refusals.
    final class Outcomes: @unchecked Sendable {
        private let lock = NSLock()
        private var acked: [Int] = []
        private var refusals: [HTTPResult] = []
        func add(_ ids: [Int]) { lock.withLock { acked += ids } }
        func refuse(_ result: HTTPResult) { lock.withLock { refusals.append(result) } }
        var ids: [Int] { lock.withLock { acked } }
        var refused: [HTTPResult] { lock.withLock { refusals } }
    }

    static let padding = String(repeating: "p", count: 480)

    /// One INSERT of `rows` ids starting at `first`, each with about 500 bytes of padding.
    static func insert(_ table: String, first: Int, rows: Int) -> String {
        "INSERT INTO \(table) VALUES " + (first..<first + rows).map { "(\($0), '\(padding)')" }.joined(separator: ",")
    }

    /// Sends requests of 20 rows on 4 connections until `refusals` were refused (or `limit` requests were sent).
    static func load(
        _ proxy: HTTPEndpoint, _ table: String, from start: Int, into outcomes: Outcomes, refusals: Int,
        limit: Int = 5_000
    ) async throws {
        let next = NextIndex()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<4 {
                group.addTask {
                    while outcomes.refused.count < refusals, let index = next.take(below: limit) {
                        let first = start + index * 20
                        let result = try await proxy.post("/", body: insert(table, first: first, rows: 20))
                        if result.status == 200 {
                            outcomes.add(Array(first..<first + 20))
                        } else {
                            outcomes.refuse(result)
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    /// Every refusal is ClickHouse's "not enough space": 503, Retry-After, code 243 in header and body.
    static func expectNotEnoughSpace(_ refusals: [HTTPResult], sourceLocation: SourceLocation = #_sourceLocation) {
        for result in refusals {
            #expect(result.status == 503, "\(result.status) \(result.body)", sourceLocation: sourceLocation)
            #expect(result.header("Retry-After") != nil, sourceLocation: sourceLocation)
            #expect(result.header("X-ClickHouse-Exception-Code") == "243", sourceLocation: sourceLocation)
            #expect(result.body.hasPrefix("Code: 243."), "\(result.body)", sourceLocation: sourceLocation)
        }
    }

    /// A metric's value in Prometheus text (the first sample whose name and labels are `series`).
    static func metric(_ text: String, _ series: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    /// Polls until an insert is accepted (space came back) and returns how long that took.
    static func waitUntilAccepted(
        _ proxy: HTTPEndpoint, _ table: String, first: Int, outcomes: Outcomes, timeout: Duration = .seconds(15)
    ) async throws -> Duration? {
        let start = ContinuousClock.now
        while ContinuousClock.now - start < timeout {
            let result = try await proxy.post("/", body: insert(table, first: first, rows: 20))
            if result.status == 200 {
                outcomes.add(Array(first..<first + 20))
                return ContinuousClock.now - start
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        return nil
    }

    /// Every acknowledged id is in the table exactly once.
    static func expectLandedOnce(_ db: TestDatabase, _ table: String, acked: [Int], sourceLocation: SourceLocation = #_sourceLocation)
        async throws -> (rows: Int, duplicates: Int, missing: Int)
    {
        let landed = try await db.clickHouse.sql("SELECT id FROM \(db.name).\(table) FORMAT TSV")
        var counts: [Int: Int] = [:]
        for line in landed.split(separator: "\n") { counts[Int(line)!, default: 0] += 1 }
        let duplicates = counts.values.reduce(0) { $0 + ($1 > 1 ? $1 - 1 : 0) }
        let missing = acked.filter { counts[$0] == nil }.count
        #expect(duplicates == 0, "\(duplicates) duplicate rows", sourceLocation: sourceLocation)
        #expect(missing == 0, "\(missing) acknowledged ids are missing", sourceLocation: sourceLocation)
        return (counts.values.reduce(0, +), duplicates, missing)
    }

    @Test func aFullSpoolDiskRefusesCleanlyGetsItsSpaceBackAndRestartsWithoutDuplicates() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).s (id UInt64, pad String) ENGINE = MergeTree ORDER BY id")
        let disk = try MountedTmpfs(size: "4m")
        defer { disk.unmount() }
        let table = "\(db.name).s"
        // Nothing is flushed while the disk fills (max_delay 10 min, however slow the machine), so the spool holds
        // it all; a reload to 500 ms then flushes. `upstream` comes from ProxyUnderTest.start.
        func config(maxDelay: String) -> String {
            """
            defaults: { strategy: hybrid, max_rows: 1000000, max_bytes: 64MiB, max_delay: \(maxDelay) }
            spool: { dir: \(disk.path)/spool }
            """
        }
        let outcomes = Outcomes()
        var proxy = try await ProxyUnderTest.start(config(maxDelay: "10m"))

        // 1. Fill the disk: refusals are 503 + Retry-After, code 243, and leave nothing in the spool.
        let fillStarted = ContinuousClock.now
        try await Self.load(proxy.endpoint, table, from: 0, into: outcomes, refusals: 20)
        let fillTime = ContinuousClock.now - fillStarted
        Self.expectNotEnoughSpace(outcomes.refused)
        let acceptedRequests = outcomes.ids.count / 20
        let before = try await proxy.metricsText()
        #expect(try await db.count("s") == 0, "filled in \(fillTime): nothing may be delivered yet")
        #expect(Self.metric(before, "batchhouse_spool_undelivered_chunks") == Double(acceptedRequests))
        var refusedAgain = 0
        for index in 0..<10 {
            let result = try await proxy.endpoint.post("/", body: Self.insert(table, first: 1_000_000 + index * 20, rows: 20))
            if result.status != 200 { refusedAgain += 1 }
            Self.expectNotEnoughSpace(result.status == 200 ? [] : [result])
        }
        #expect(refusedAgain == 10)
        let after = try await proxy.metricsText()
        #expect(Self.metric(after, "batchhouse_spool_undelivered_chunks") == Double(acceptedRequests), "refused requests were spooled")
        // Live bytes: the rows of undelivered chunks. (File bytes may grow by a batch's `sending` record if its
        // max_delay falls in this loop.)
        #expect(Self.metric(after, "batchhouse_spool_live_bytes") == Self.metric(before, "batchhouse_spool_live_bytes"))
        #expect((Self.metric(after, "batchhouse_spool_write_failures_total{reason=\"no_space\"}") ?? 0) >= 30)

        // 2. Once the rows are in ClickHouse the space comes back, without a restart.
        try proxy.reload(config(maxDelay: "500ms"))
        _ = try await db.waitForCount("s", outcomes.ids.count, timeout: .seconds(30))
        let recovered = try await Self.waitUntilAccepted(proxy.endpoint, table, first: 2_000_000, outcomes: outcomes)
        #expect(recovered != nil, "inserts were still refused 15 s after every row landed")
        let reclaimed = try await proxy.metricsText()
        #expect((Self.metric(reclaimed, "batchhouse_spool_bytes") ?? .infinity) < Double(1 << 20), "\(reclaimed)")
        #expect(Self.metric(reclaimed, "batchhouse_spool_unwritten_marks") == 0)

        // 3. Full again while ClickHouse cannot be reached (port 9), so a graceful stop leaves the rows in the spool;
        //    then a restart on a disk with no byte left replays them, delivers and reclaims.
        try await proxy.stop()
        proxy = try await ProxyUnderTest.start(config(maxDelay: "1s"), upstream: "http://127.0.0.1:9")
        let beforeRefill = outcomes.ids.count
        try await Self.load(proxy.endpoint, table, from: 3_000_000, into: outcomes, refusals: 25)
        #expect(outcomes.ids.count - beforeRefill > 1_000, "the disk took rows again before it was full")
        try await proxy.stop()
        disk.fillUp()
        proxy = try await ProxyUnderTest.start(config(maxDelay: "1s"))
        let replayed = try await db.waitForCount("s", outcomes.ids.count, timeout: .seconds(30))
        #expect(replayed == outcomes.ids.count, "the rows spooled before the restart were replayed")
        disk.removeFiller()
        let afterRestart = try await Self.waitUntilAccepted(proxy.endpoint, table, first: 4_000_000, outcomes: outcomes)
        #expect(afterRestart != nil, "inserts refused after the restart")
        try await proxy.stop()

        let landed = try await Self.expectLandedOnce(db, "s", acked: outcomes.ids)
        print(
            "full spool disk (4 MiB tmpfs): filled in \(fillTime), \(acceptedRequests) requests accepted then "
                + "\(outcomes.refused.count) refused with 503/243; inserts accepted again \(recovered.map { "\($0)" } ?? "never") "
                + "after every row landed; restart on a full disk ok; \(outcomes.ids.count) ids acknowledged, \(landed.rows) rows "
                + "landed, \(landed.duplicates) duplicates, \(landed.missing) missing")
    }

    @Test func maxSizeClearsOnceTheRowsAreDelivered() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).m (id UInt64, pad String) ENGINE = MergeTree ORDER BY id")
        let spoolDir = NSTemporaryDirectory() + "bh-spool-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: spoolDir) }
        // The 8 MiB limit of the report, scaled down: 256 KiB is about 25 requests of 20 rows.
        let proxy = try await ProxyUnderTest.start(
            """
            defaults: { strategy: hybrid, max_rows: 1000000, max_delay: 3s }
            spool: { dir: \(spoolDir), max_size: 256KiB }
            """)
        let outcomes = Outcomes()
        let table = "\(db.name).m"
        try await Self.load(proxy.endpoint, table, from: 0, into: outcomes, refusals: 10)
        Self.expectNotEnoughSpace(outcomes.refused)
        #expect(outcomes.refused.allSatisfy { $0.body.contains("spool.max_size") })
        let metrics = try await proxy.metricsText()
        #expect((Self.metric(metrics, "batchhouse_spool_write_failures_total{reason=\"max_size\"}") ?? 0) >= 10)
        #expect((Self.metric(metrics, "batchhouse_spool_live_bytes") ?? .infinity) <= 256 * 1024)

        _ = try await db.waitForCount("m", outcomes.ids.count, timeout: .seconds(20))
        let cleared = try await Self.waitUntilAccepted(proxy.endpoint, table, first: 1_000_000, outcomes: outcomes, timeout: .seconds(5))
        #expect(cleared != nil, "spool.max_size still refused inserts 5 s after every row landed")
        // A second fill takes as much as the first: the limit counts only what is not delivered.
        let firstFill = outcomes.ids.count
        try await Self.load(proxy.endpoint, table, from: 2_000_000, into: outcomes, refusals: 20)
        #expect(outcomes.ids.count - firstFill >= firstFill / 2)
        try await proxy.stop()
        let landed = try await Self.expectLandedOnce(db, "m", acked: outcomes.ids)
        print(
            "max_size 256KiB: accepted again \(cleared.map { "\($0)" } ?? "never") after delivery; \(outcomes.ids.count) ids "
                + "acknowledged, \(landed.rows) landed, \(landed.duplicates) duplicates")
    }
}

/// A tmpfs mounted for one test (`mount -t tmpfs -o size=...`), unmounted by `unmount()`.
struct MountedTmpfs {
    let path: String
    var filler: String { path + "/filler" }

    init(size: String) throws {
        path = NSTemporaryDirectory() + "bh-tmpfs-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let mounted = "size=\(size),mode=0700".withCString { mount("tmpfs", path, "tmpfs", 0, $0) }
        guard mounted == 0 else {
            let code = errno
            _ = rmdir(path)
            throw TestFailure("mount -t tmpfs -o size=\(size) tmpfs \(path): \(String(cString: strerror(code)))")
        }
    }

    func unmount() {
        _ = umount2(path, Int32(MNT_DETACH))
        _ = rmdir(path)
    }

    /// Writes a file until the disk refuses even one more byte.
    func fillUp() {
        let descriptor = open(filler, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        guard descriptor >= 0 else { return }
        defer { close(descriptor) }
        for blockSize in [65536, 4096, 512, 1] {
            let block = [UInt8](repeating: 0x55, count: blockSize)
            while block.withUnsafeBytes({ write(descriptor, $0.baseAddress, blockSize) }) == blockSize {}
        }
    }

    func removeFiller() { _ = unlink(filler) }

    static let canMount: Bool = {
        guard let probe = try? MountedTmpfs(size: "64k") else { return false }
        probe.unmount()
        return true
    }()
}
