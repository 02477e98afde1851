import BatchhouseCore
import BatchhouseUpstream
import Dispatch
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@testable import BatchhouseServer

/// Clients that hold the proxy's resources on purpose, over real sockets, against a proxy with short limits:
/// slow heads, idle keep-alives, stalled and trickled bodies, too many connections, unfinished bodies beyond the
/// memory budget, gzip bombs, and a file descriptor limit. Each test checks that the bound holds and that a good
/// client's rows still land (counted by id in ClickHouse).
@Suite(.serialized, .enabled(if: TestEnvironment.hasClickHouse, "needs CLICKHOUSE_URL (scripts/test sets it)"))
struct AdversarialConnectionTests {
    static let shortTimeouts =
        "limits: { header_timeout: 300ms, body_timeout: 300ms, request_timeout: 1s, idle_timeout: 500ms }"
    static let fastFlush = "defaults: { strategy: hybrid, max_delay: 100ms }"

    // MARK: Timeouts

    @Test func aSlowlorisHeadGets408AfterHeaderTimeout() async throws {
        let proxy = try await ProxyUnderTest.start(Self.fastFlush + "\n" + Self.shortTimeouts)
        defer { Task { try? await proxy.stop() } }
        let client = try RawClient(proxy)
        // One byte every 20 ms of a head that would take seconds to finish.
        let head = "POST /?query=INSERT%20INTO%20t%20FORMAT%20TSV HTTP/1.1\r\nHost: x\r\nX-Pad: " + String(repeating: "a", count: 300)
        let (answer, elapsed) = await offPool { client.trickle(head, every: .milliseconds(20)) }
        #expect(answer.hasPrefix("HTTP/1.1 408 Request Timeout\r\n"), "got \(answer.prefix(200))")
        #expect(answer.contains("X-ClickHouse-Exception-Code: 209"))
        #expect(answer.contains("(SOCKET_TIMEOUT)"))
        #expect(elapsed >= .milliseconds(280) && elapsed < .milliseconds(1_500), "closed after \(elapsed)")
        #expect(client.isClosedByPeer)
        #expect(try await proxy.metricsText().contains("batchhouse_timeouts_total{kind=\"header\"} 1"))
    }

    @Test func anIdleKeepAliveConnectionIsClosedAfterIdleTimeout() async throws {
        let proxy = try await ProxyUnderTest.start(Self.fastFlush + "\n" + Self.shortTimeouts)
        defer { Task { try? await proxy.stop() } }
        let client = try RawClient(proxy)
        let (ping, idle) = await offPool { () -> (String, (text: String, closed: Bool, elapsed: Duration)) in
            client.send("GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            let ping = client.readResponse(timeout: .seconds(2))
            return (ping, client.readUntilClosed(timeout: .seconds(3)))
        }
        #expect(ping.hasSuffix("\r\n\r\nOk.\n"))
        // Closed silently: no bytes, no 408.
        #expect(idle.closed)
        #expect(idle.text == "")
        #expect(idle.elapsed >= .milliseconds(450) && idle.elapsed < .milliseconds(2_000), "closed after \(idle.elapsed)")
    }

    @Test func aStalledBodyIsClosedAfterBodyTimeoutAndItsBytesLeaveTheBudget() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).t (id UInt64, s String) ENGINE = MergeTree ORDER BY id")
        let proxy = try await ProxyUnderTest.start(
            Self.fastFlush + "\nlimits: { body_timeout: 600ms, idle_timeout: 5s }")
        defer { Task { try? await proxy.stop() } }
        let rows = (0..<20_000).map { "\($0)\tpadding-padding\n" }.joined()  // ~440 kB
        let client = try RawClient(proxy)
        client.send(
            "POST /?query=\(QueryString.encode("INSERT INTO \(db.name).t FORMAT TSV")) HTTP/1.1\r\nHost: x\r\n"
                + "Content-Length: \(rows.utf8.count + 1)\r\n\r\n" + rows)
        // While it stalls, its bytes are held against limits.max_buffer_memory.
        let held = try await Self.gauge(proxy, "batchhouse_receiving_bytes", until: { $0 > 0 })
        #expect(held == Double(1 << 20))
        let (answer, elapsed) = await offPool { () -> (String, Duration) in
            let started = ContinuousClock.now
            let answer = client.readUntilClosed(timeout: .seconds(5))
            return (answer.text, ContinuousClock.now - started)
        }
        #expect(answer.hasPrefix("HTTP/1.1 408 Request Timeout\r\n"), "got \(answer.prefix(200))")
        #expect(answer.contains("limits.body_timeout"))
        #expect(elapsed < .milliseconds(2_000))
        #expect(try await Self.gauge(proxy, "batchhouse_receiving_bytes", until: { $0 == 0 }) == 0)
        try await Task.sleep(for: .milliseconds(400))
        #expect(try await db.count("t") == 0)
    }

    @Test func aSlowChunkedInsertIsAnsweredAtRequestTimeoutAndNothingLands() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).t (id UInt64) ENGINE = MergeTree ORDER BY id")
        let proxy = try await ProxyUnderTest.start(Self.fastFlush + "\n" + Self.shortTimeouts)
        defer { Task { try? await proxy.stop() } }
        let client = try RawClient(proxy)
        let head =
            "POST /?query=\(QueryString.encode("INSERT INTO \(db.name).t FORMAT TSV")) HTTP/1.1\r\nHost: x\r\n"
            + "Transfer-Encoding: chunked\r\n\r\n"
        // A chunk every 150 ms: never idle for body_timeout (300 ms), never done.
        let (answer, elapsed) = await offPool { () -> (String, Duration) in
            client.send(head)
            let started = ContinuousClock.now
            var id = 0
            while ContinuousClock.now - started < .seconds(5) {
                if client.hasBytesToRead { break }
                id += 1
                let row = "\(id)\n"
                guard client.send(String(row.utf8.count, radix: 16) + "\r\n" + row + "\r\n") else { break }
                usleep(150_000)
            }
            return (client.readUntilClosed(timeout: .seconds(2)).text, ContinuousClock.now - started)
        }
        #expect(answer.hasPrefix("HTTP/1.1 408 Request Timeout\r\n"), "got \(answer.prefix(200))")
        #expect(answer.contains("limits.request_timeout"))
        #expect(elapsed >= .milliseconds(950) && elapsed < .milliseconds(2_500), "answered after \(elapsed)")
        try await Task.sleep(for: .milliseconds(400))
        #expect(try await db.count("t") == 0)
        #expect(try await proxy.metricsText().contains("batchhouse_timeouts_total{kind=\"request\"} 1"))
    }

    // MARK: Connections

    @Test func theConnectionBeyondMaxConnectionsGets503AndAGoodClientStillInserts() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).t (id UInt64) ENGINE = MergeTree ORDER BY id")
        let proxy = try await ProxyUnderTest.start(Self.fastFlush + "\nlimits: { max_connections: 4, idle_timeout: 10s }")
        defer { Task { try? await proxy.stop() } }
        var held: [RawClient] = []
        for _ in 0..<4 {
            let client = try RawClient(proxy)
            client.send("GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(await offPool { client.readResponse(timeout: .seconds(2)) }.hasSuffix("Ok.\n"))
            held.append(client)
        }
        let extra = try RawClient(proxy)
        let refused = await offPool { () -> (text: String, closed: Bool, elapsed: Duration) in
            extra.send("GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            return extra.readUntilClosed(timeout: .seconds(3))
        }
        #expect(refused.text.hasPrefix("HTTP/1.1 503 Service Unavailable\r\n"), "got \(refused.text.prefix(200))")
        #expect(refused.text.contains("Retry-After: 1\r\n"))
        #expect(refused.text.contains("(TOO_MANY_SIMULTANEOUS_QUERIES)"))
        #expect(refused.closed)
        #expect(refused.elapsed < .seconds(2))
        extra.close()
        for client in held { client.close() }

        // The held connections are gone: a good client inserts (retrying while the proxy sees them close).
        let id = UInt64.random(in: 1...UInt64.max / 2)
        var status = 0
        var refusedWhileClosing = 0
        for _ in 0..<600 where status != 200 {
            let result = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).t VALUES (\(id))")
            status = result.status
            if status == 503 && result.body.contains("(TOO_MANY_SIMULTANEOUS_QUERIES)") { refusedWhileClosing += 1 }
            if status != 200 { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(status == 200)
        #expect(try await db.waitForCount("t", 1) == 1)
        #expect(try await db.clickHouse.sql("SELECT id FROM \(db.name).t FORMAT TSV") == "\(id)\n")
        // The extra connection, and any attempt made before the proxy saw the held ones close.
        let metrics = try await proxy.metricsText()
        #expect(
            metrics.contains("batchhouse_connections_refused_total \(1 + refusedWhileClosing)\n"),
            "\(refusedWhileClosing) refused while closing; \(metrics.split(separator: "\n").filter { $0.contains("refused") })")
        // Only the connection asking for the metrics is left.
        #expect(try await Self.gauge(proxy, "batchhouse_connections_open", until: { $0 == 1 }) == 1)
    }

    @Test func unfinishedBodiesBeyondTheBudgetGet503WhileASmallInsertStillLands() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).t (id UInt64, s String) ENGINE = MergeTree ORDER BY id")
        // Bodies still arriving may take 80% of 4 MiB: three 1 MiB steps, not four.
        let proxy = try await ProxyUnderTest.start(
            Self.fastFlush
                + "\nlimits: { max_buffer_memory: 4MiB, max_request_body: 64MiB, body_timeout: 10s, request_timeout: 20s }")
        defer { Task { try? await proxy.stop() } }
        let rows = (0..<40_000).map { "\($0)\tpadding\n" }.joined()  // ~630 kB of a 200 MiB body
        let head =
            "POST /?query=\(QueryString.encode("INSERT INTO \(db.name).t FORMAT TSV")) HTTP/1.1\r\nHost: x\r\n"
            + "Content-Length: \(200 << 20)\r\n\r\n"
        var stalled: [RawClient] = []
        for index in 0..<3 {
            let client = try RawClient(proxy)
            client.send(head + rows)
            stalled.append(client)
            let held = try await Self.gauge(proxy, "batchhouse_receiving_bytes", until: { $0 >= Double((index + 1) << 20) })
            #expect(held == Double((index + 1) << 20))
        }
        let beyond = try RawClient(proxy)
        let refused = await offPool { () -> (text: String, closed: Bool, elapsed: Duration) in
            beyond.send(head + rows)
            return beyond.readUntilClosed(timeout: .seconds(3))
        }
        #expect(refused.text.hasPrefix("HTTP/1.1 503 Service Unavailable\r\n"), "got \(refused.text.prefix(200))")
        #expect(refused.text.contains("Retry-After: 1\r\n"))
        #expect(refused.text.contains("(MEMORY_LIMIT_EXCEEDED)"))
        #expect(refused.closed)
        for client in stalled { #expect(!client.hasBytesToRead, "a stalled body within the budget is not answered") }

        // A small INSERT from another client is admitted and lands.
        let id = UInt64.random(in: 1...UInt64.max / 2)
        let good = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).t VALUES (\(id), 'good')")
        #expect(good.status == 200, "\(good.body)")
        #expect(try await db.waitForCount("t", 1) == 1)
        #expect(try await db.clickHouse.sql("SELECT id FROM \(db.name).t FORMAT TSV") == "\(id)\n")

        for client in stalled { client.close() }
        #expect(try await Self.gauge(proxy, "batchhouse_receiving_bytes", until: { $0 == 0 }) == 0)
        try await Task.sleep(for: .milliseconds(300))
        #expect(try await db.count("t") == 1)
    }

    // MARK: gzip

    @Test func aGzipBombGets413FastWhileAConcurrentInsertIsAnsweredQuicklyAndLands() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).t (id UInt64) ENGINE = MergeTree ORDER BY id")
        try await db.clickHouse.sql("CREATE TABLE \(db.name).b (id UInt64) ENGINE = MergeTree ORDER BY id")
        let proxy = try await ProxyUnderTest.start(Self.fastFlush + "\nlimits: { max_request_body: 1MiB }")
        defer { Task { try? await proxy.stop() } }
        // 16 MiB of valid rows compress to about 16 kB, a ratio of 1000.
        let plain = Array(String(repeating: "1\n", count: 8 << 20).utf8)
        let bomb = plain.withUnsafeBytes { Zlib.compress($0, as: .gzip, level: 9) }
        #expect(bomb.count < 50_000)
        let bombPath = "/?query=" + QueryString.encode("INSERT INTO \(db.name).b FORMAT TSV")
        let endpoint = proxy.endpoint
        let stop = ContinuousClock.now + .seconds(2)
        struct Answer: Sendable {
            var status: Int
            var body: String
            var elapsed: Duration
        }
        let bombs = Task { () throws -> [Answer] in
            var results: [Answer] = []
            while ContinuousClock.now < stop {
                let started = ContinuousClock.now
                let result = try await endpoint.post(bombPath, body: bomb, headers: [("Content-Encoding", "gzip")])
                results.append(Answer(status: result.status, body: result.body, elapsed: ContinuousClock.now - started))
            }
            return results
        }
        var latencies: [Duration] = []
        var ids: [Int] = []
        var id = 0
        while ContinuousClock.now < stop {
            id += 1
            let started = ContinuousClock.now
            let result = try await endpoint.post("/", body: "INSERT INTO \(db.name).t VALUES (\(id))")
            latencies.append(ContinuousClock.now - started)
            if result.status == 200 { ids.append(id) }
            try await Task.sleep(for: .milliseconds(10))
        }
        let bombResults = try await bombs.value
        #expect(bombResults.count >= 3)
        for result in bombResults {
            #expect(result.status == 413, "\(result.body)")
            #expect(result.body.contains("Code: 307."))
            #expect(result.elapsed < .milliseconds(500), "a bomb took \(result.elapsed)")
        }
        #expect(ids.count == id, "every concurrent insert was accepted")
        latencies.sort()
        let median = latencies[latencies.count / 2]
        // Starved, the median was 481 ms; fed between slices, a few ms. The bound leaves room for a loaded 2-core CI
        // machine running a debug build (one run there: 51 ms) and still catches starvation.
        #expect(median < .milliseconds(200), "median 1-row insert latency \(median) during bombs")
        #expect(try await db.waitForCount("t", ids.count) == ids.count)
        #expect(try await db.count("b") == 0)
        let distinct = try await db.clickHouse.sql("SELECT uniqExact(id) FROM \(db.name).t")
        #expect(distinct == "\(ids.count)\n")
        print(
            "gzip bombs: \(bombResults.count) answered 413 (slowest \(bombResults.map(\.elapsed).max()!)); "
                + "\(ids.count) concurrent 1-row inserts, median \(median), max \(latencies.last!)")
    }

    // MARK: File descriptors

    @Test func atALowFileLimitConnectionsAreCappedRefusedAndNothingSpins() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).t (id UInt64) ENGINE = MergeTree ORDER BY id")
        let proxy = try ProcessIntegrationTests.RunningProxy(
            config: "defaults: { strategy: hybrid, max_delay: 100ms }\nlimits: { idle_timeout: 30s }", fileLimit: 256)
        defer { Task { _ = await proxy.terminateAndWait() } }
        try await proxy.waitUntilReady()
        #expect(proxy.log.contains("capped"), "the log says max_connections was capped: \(proxy.log)")
        // Far more connections than 256 descriptors: the first ones are served, the rest refused or left in the
        // backlog while accepting pauses.
        var clients: [RawClient] = []
        for _ in 0..<500 {
            if let client = try? RawClient(port: proxy.port) { clients.append(client) }
        }
        let cpuBefore = proxy.cpuSeconds
        try await Task.sleep(for: .seconds(2))
        let cpu = proxy.cpuSeconds - cpuBefore
        #expect(cpu < 0.5, "the proxy used \(cpu) s of CPU in 2 s with its descriptors exhausted")
        let opened = clients
        let refused = await offPool {
            opened.filter { $0.readUntilClosed(timeout: .milliseconds(20)).text.contains(" 503 ") }.count
        }
        #expect(refused > 0)
        #expect(proxy.process.isRunning, "the proxy survived: \(proxy.log.suffix(2000))")
        for client in clients { client.close() }
        let id = UInt64.random(in: 1...UInt64.max / 2)
        var status = 0
        for _ in 0..<300 where status != 200 {
            status = (try? await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).t VALUES (\(id))").status) ?? 0
            if status != 200 { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(status == 200)
        #expect(try await db.waitForCount("t", 1) == 1)
        print("fd limit 256: \(clients.count) connections opened, \(refused) answered 503, proxy CPU \(cpu) s in 2 s")
    }

    // MARK: Helpers

    /// Reads a gauge from `/metrics` until `condition` holds (or 30 s pass); returns the last value.
    static func gauge(_ proxy: ProxyUnderTest, _ name: String, until condition: (Double) -> Bool) async throws -> Double {
        let deadline = ContinuousClock.now + .seconds(30)
        var value = -1.0
        repeat {
            let text = try await proxy.metricsText()
            value = text.split(separator: "\n").first { $0.hasPrefix(name + " ") }
                .flatMap { Double($0.split(separator: " ").last ?? "") } ?? -1
            if condition(value) { return value }
            try await Task.sleep(for: .milliseconds(20))
        } while ContinuousClock.now < deadline
        return value
    }
}

extension ProcessIntegrationTests.RunningProxy {
    /// User plus system CPU time of the proxy process so far.
    var cpuSeconds: Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After the command: state is field 3, utime 14 and stime 15 (1-based, from the pid).
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }
}


/// A plain blocking TCP client on loopback, for clients no HTTP library would be: trickling, stalling, holding.
final class RawClient: @unchecked Sendable {
    private let fd: Int32
    private var closed = false
    private(set) var isClosedByPeer = false

    convenience init(_ proxy: ProxyUnderTest) throws {
        guard let port = URLComponents(string: proxy.endpoint.baseURL)?.port else { throw TestFailure("no port") }
        try self.init(port: port)
    }

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else {
            Glibc.close(fd)
            throw TestFailure("connect: \(errno)")
        }
    }

    deinit { close() }

    func close() {
        guard !closed else { return }
        closed = true
        Glibc.close(fd)
    }

    /// False once the peer is gone.
    @discardableResult
    func send(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent <= 0 { return false }
            offset += sent
        }
        return true
    }

    var hasBytesToRead: Bool { wait(for: .zero) }

    private func wait(for timeout: Duration) -> Bool {
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let milliseconds = Int32(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        return poll(&descriptor, 1, milliseconds) > 0
    }

    /// Everything the peer sends until it closes or `timeout` passes.
    func readUntilClosed(timeout: Duration) -> (text: String, closed: Bool, elapsed: Duration) {
        let started = ContinuousClock.now
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let left = timeout - (ContinuousClock.now - started)
            guard left > .zero, wait(for: left) else { break }
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count <= 0 {
                isClosedByPeer = true
                return (String(decoding: bytes, as: UTF8.self), true, ContinuousClock.now - started)
            }
            bytes += buffer[0..<count]
        }
        return (String(decoding: bytes, as: UTF8.self), false, ContinuousClock.now - started)
    }

    /// One response with a Content-Length body.
    func readResponse(timeout: Duration) -> String {
        let started = ContinuousClock.now
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while ContinuousClock.now - started < timeout {
            let text = String(decoding: bytes, as: UTF8.self)
            if let end = text.range(of: "\r\n\r\n") {
                let headers = text[..<end.lowerBound].lowercased()
                let length = headers.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                    .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
                if text.utf8.count - text.utf8.distance(from: text.utf8.startIndex, to: end.upperBound.samePosition(in: text.utf8)!) >= length {
                    return text
                }
            }
            guard wait(for: .milliseconds(50)) else { continue }
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count <= 0 { break }
            bytes += buffer[0..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Sends `text` one byte at a time until the peer answers or closes; returns what it said and how long after
    /// the first byte it closed.
    func trickle(_ text: String, every interval: Duration) -> (String, Duration) {
        let started = ContinuousClock.now
        let micro = UInt32(interval.components.attoseconds / 1_000_000_000_000)
        for byte in text.utf8 {
            if hasBytesToRead { break }
            guard send(String(decoding: [byte], as: UTF8.self)) else { break }
            usleep(micro)
        }
        let answer = readUntilClosed(timeout: .seconds(5))
        return (answer.text, ContinuousClock.now - started)
    }
}
