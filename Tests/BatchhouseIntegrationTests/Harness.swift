import BatchhouseConfig
import BatchhouseCore
import BatchhouseUpstream
import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Testing

@testable import BatchhouseServer

/// The ClickHouse server the test script started (`CLICKHOUSE_URL`).
enum TestEnvironment {
    static let clickHouseURL = ProcessInfo.processInfo.environment["CLICKHOUSE_URL"]
    static var hasClickHouse: Bool { clickHouseURL != nil }
    /// The modern test upstream (ClickHouse 26.9's engine behind scripts/fixtures/chdb_http.py), when started.
    static let modernURL = ProcessInfo.processInfo.environment["MODERN_URL"]
    static var hasModern: Bool { modernURL != nil }
    /// A second modern upstream that answers as a server without `system.query_log` (`--hide-query-log`).
    static let modernWithoutQueryLogURL = ProcessInfo.processInfo.environment["MODERN_NOLOG_URL"]
    static let client = CurlClient(maxConnections: 64)
}

struct HTTPResult: Sendable {
    var status: Int
    var headers: [(String, String)]
    var body: String

    func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }
}

/// Talks to a server the way a client would: plain HTTP through libcurl.
struct HTTPEndpoint: Sendable {
    var baseURL: String

    func post(
        _ pathAndQuery: String, body: [UInt8], headers: [(String, String)] = [],
        auth: (user: String, password: String)? = nil
    ) async throws -> HTTPResult {
        let response = try await TestEnvironment.client.execute(
            UpstreamRequest(
                method: "POST", url: baseURL + pathAndQuery, headers: headers, body: ByteBuffer(bytes: body),
                basicAuth: auth, connectTimeout: .seconds(5), timeout: .seconds(60)))
        return HTTPResult(
            status: response.status, headers: response.headers,
            body: String(decoding: response.body.readableBytesView, as: UTF8.self))
    }

    func post(_ pathAndQuery: String, body: String, headers: [(String, String)] = []) async throws -> HTTPResult {
        try await post(pathAndQuery, body: Array(body.utf8), headers: headers)
    }

    func get(_ pathAndQuery: String, headers: [(String, String)] = []) async throws -> (status: Int, body: [UInt8]) {
        let response = try await TestEnvironment.client.execute(
            UpstreamRequest(
                method: "GET", url: baseURL + pathAndQuery, headers: headers, body: nil, basicAuth: nil,
                connectTimeout: .seconds(5), timeout: .seconds(120)))
        return (response.status, Array(response.body.readableBytesView))
    }

    /// Runs a statement (query in the body) and returns the text; throws on a non-200 answer.
    @discardableResult
    func sql(_ statement: String) async throws -> String {
        let result = try await post("/", body: statement)
        guard result.status == 200 else {
            throw TestFailure("ClickHouse said \(result.status) to `\(statement.prefix(200))`: \(result.body)")
        }
        return result.body
    }

    static func query(_ sql: String) -> String { "/?query=" + QueryString.encode(sql) }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A throwaway database in the test ClickHouse, dropped by `drop()`.
struct TestDatabase: Sendable {
    let name: String
    let clickHouse: HTTPEndpoint

    static func create(on url: String? = nil) async throws -> TestDatabase {
        let clickHouse = HTTPEndpoint(baseURL: url ?? TestEnvironment.clickHouseURL!)
        let name = "bh_\(UInt32.random(in: 0...UInt32.max))"
        try await clickHouse.sql("CREATE DATABASE \(name)")
        return TestDatabase(name: name, clickHouse: clickHouse)
    }

    func drop() async {
        _ = try? await clickHouse.sql("DROP DATABASE IF EXISTS \(name)")
    }

    func count(_ table: String) async throws -> Int {
        Int(try await clickHouse.sql("SELECT count() FROM \(name).\(table)").trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    }

    /// Polls until `table` holds `expected` rows (or the timeout passes) and returns the last count.
    func waitForCount(_ table: String, _ expected: Int, timeout: Duration = .seconds(20)) async throws -> Int {
        let deadline = ContinuousClock.now + timeout
        var last = try await count(table)
        while last < expected && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
            last = try await count(table)
        }
        return last
    }

    /// ClickHouse's own count of INSERT queries it received (`system.events`, InsertQuery).
    func insertQueries() async throws -> Int {
        let text = try await clickHouse.sql("SELECT sum(value) FROM system.events WHERE event = 'InsertQuery'")
        return Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
    }
}

/// A Batchhouse running in this process in front of the test ClickHouse, on a free loopback port.
final class ProxyUnderTest: Sendable {
    let application: BatchhouseApplication
    let group: ServiceGroup
    let task: Task<Void, any Error>
    let endpoint: HTTPEndpoint
    let deadLetterDir: String

    /// `rules` is YAML for `defaults:`/`tables:` (and anything else but listen/upstream/dead_letter_dir).
    /// With `watchedFile`, the YAML is written there and reloaded when it changes (checked every 100 ms).
    static func start(
        _ rules: String, upstream: String? = nil, upstreamSettings: String = "{}", watchedFile: String? = nil,
        compression: String = "gzip", fastPath: Bool = true
    ) async throws -> ProxyUnderTest {
        let deadLetterDir = NSTemporaryDirectory() + "bh-dead-letter-\(UInt32.random(in: 0...UInt32.max))"
        let yaml = """
            listen: 127.0.0.1:0
            upstream:
              servers: [\(upstream ?? TestEnvironment.clickHouseURL!)]
              connect_timeout: 2s
              timeout: 20s
              compression: \(compression)
              settings: \(upstreamSettings)
            dead_letter_dir: \(deadLetterDir)
            \(rules)
            """
        let configuration = try ConfigurationLoader.parse(yaml: yaml, environment: [:])
        if let watchedFile { try yaml.write(toFile: watchedFile, atomically: true, encoding: .utf8) }
        var logger = Logger(label: "batchhouse-test")
        logger.logLevel = ProcessInfo.processInfo.environment["BATCHHOUSE_TEST_LOG"].flatMap { Logger.Level(rawValue: $0) } ?? .warning
        let application = try BatchhouseApplication(configuration: configuration, logger: logger, fastPath: fastPath)
        var services = application.services
        if let watchedFile {
            services.append(application.configurationWatcher(path: watchedFile, pollInterval: .milliseconds(100)))
        }
        let group = ServiceGroup(
            configuration: .init(services: services.map { .init(service: $0) }, logger: logger))
        let task = Task { try await group.run() }
        guard let port = await application.waitUntilListening() else {
            task.cancel()
            throw TestFailure("proxy did not start listening")
        }
        return ProxyUnderTest(
            application: application, group: group, task: task,
            endpoint: HTTPEndpoint(baseURL: "http://127.0.0.1:\(port)"), deadLetterDir: deadLetterDir)
    }

    private init(
        application: BatchhouseApplication, group: ServiceGroup, task: Task<Void, any Error>, endpoint: HTTPEndpoint,
        deadLetterDir: String
    ) {
        self.application = application
        self.group = group
        self.task = task
        self.endpoint = endpoint
        self.deadLetterDir = deadLetterDir
    }

    /// Graceful shutdown, as on SIGTERM: drain connections, flush every buffer, stop.
    func stop() async throws {
        await group.triggerGracefulShutdown()
        try await task.value
        application.shutdown()
        try? FileManager.default.removeItem(atPath: deadLetterDir)
    }

    /// The YAML `start` used, with `rules` replaced: what a reload test writes to the watched file.
    static func configurationText(_ rules: String, deadLetterDir: String) -> String {
        """
        listen: 127.0.0.1:0
        upstream:
          servers: [\(TestEnvironment.clickHouseURL!)]
          connect_timeout: 2s
          timeout: 20s
        dead_letter_dir: \(deadLetterDir)
        \(rules)
        """
    }

    /// A hot reload, as the file watcher or SIGHUP would do it, with `rules` in place of the running ones (the
    /// upstream is the test ClickHouse; `listen` stays as it is).
    func reload(_ rules: String) throws {
        let yaml = Self.configurationText(rules, deadLetterDir: deadLetterDir)
        application.engine.apply(try ConfigurationLoader.parse(yaml: yaml, environment: [:]))
    }

    func metricsText() async throws -> String {
        String(decoding: try await endpoint.get("/metrics").body, as: UTF8.self)
    }

    func deadLetterFiles() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: deadLetterDir)) ?? []).sorted()
    }
}

/// Runs `count` jobs on `concurrency` workers, each worker taking the next index in turn.
func runConcurrently(count: Int, concurrency: Int, _ job: @escaping @Sendable (Int) async throws -> Void) async throws {
    let next = NextIndex()
    try await withThrowingTaskGroup(of: Void.self) { group in
        for _ in 0..<concurrency {
            group.addTask {
                while let index = next.take(below: count) {
                    try await job(index)
                }
            }
        }
        try await group.waitForAll()
    }
}

final class NextIndex: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func take(below limit: Int) -> Int? {
        lock.lock()
        defer { lock.unlock() }
        guard value < limit else { return nil }
        defer { value += 1 }
        return value
    }
}

/// Runs blocking work (a socket read, a script, a process to wait for) on a GCD thread, off Swift's cooperative
/// pool: that pool has one thread per core, and the in-process proxy's tasks and every other test share it.
func offPool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        DispatchQueue.global().async { continuation.resume(returning: body()) }
    }
}

/// `offPool` for work that throws.
func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async { continuation.resume(with: Result { try body() }) }
    }
}
