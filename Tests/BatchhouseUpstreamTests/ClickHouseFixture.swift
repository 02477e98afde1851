@testable import BatchhouseUpstream
import Foundation
import NIOCore
import Testing

/// The ClickHouse the integration tests talk to: `CLICKHOUSE_URL` if set, otherwise one started for
/// the suite with scripts/clickhouse-start and stopped with scripts/clickhouse-stop afterwards.
enum ClickHouse {
    @TaskLocal static var url: String?

    static var environmentURL: String? {
        ProcessInfo.processInfo.environment["CLICKHOUSE_URL"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// Whether the tests can reach or start a server; the suite is skipped, visibly, otherwise.
    static var isAvailable: Bool {
        environmentURL != nil
            || FileManager.default.isExecutableFile(atPath: "/usr/bin/clickhouse-server")
            || FileManager.default.isExecutableFile(atPath: "/usr/sbin/clickhouse-server")
    }

    static var scriptsDirectory: URL {
        // Resolve symlinks: the tests may be built through a symlinked checkout.
        URL(fileURLWithPath: #filePath).resolvingSymlinksInPath()
            .deletingLastPathComponent()  // BatchhouseUpstreamTests
            .deletingLastPathComponent()  // Tests
            .deletingLastPathComponent()  // repository
            .appendingPathComponent("scripts")
    }

    /// Runs the script on a GCD thread: a start takes seconds, and Swift's cooperative pool has one thread per core.
    static func runScript(_ name: String, _ arguments: [String]) async throws -> String {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(with: Result { try runScriptBlocking(name, arguments) }) }
        }
    }

    private static func runScriptBlocking(_ name: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = scriptsDirectory.appendingPathComponent(name)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            throw FixtureError(message: "\(name) exited with \(process.terminationStatus): \(text)")
        }
        return text
    }

    struct FixtureError: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    /// `query` as the value of a `query=` URL parameter.
    static func encode(_ query: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return query.addingPercentEncoding(withAllowedCharacters: allowed)!
    }

    static func queryURL(_ base: String, _ query: String, extra: String = "") -> String {
        "\(base)/?query=\(encode(query))\(extra)"
    }

    /// Runs `query` (POST, so DDL and INSERT work too) and returns the body; fails on a non-200 answer.
    @discardableResult
    static func run(_ client: CurlClient, _ base: String, _ query: String) async throws -> String {
        let response = try await client.execute(
            UpstreamRequest(method: "POST", url: queryURL(base, query), timeout: .seconds(30))
        )
        let body = String(buffer: response.body)
        guard response.status == 200 else {
            throw FixtureError(message: "\(query) -> \(response.status): \(body)")
        }
        return body
    }

    static func uniqueTable(_ prefix: String) -> String {
        "default.bh_upstream_\(prefix)_\(UInt32.random(in: 0...UInt32.max))"
    }
}

/// Starts (or finds) the server once for the suite it is attached to.
struct ClickHouseServerTrait: SuiteTrait, TestScoping {
    func provideScope(
        for test: Test,
        testCase: Test.Case?,
        performing function: @Sendable () async throws -> Void
    ) async throws {
        if let url = ClickHouse.environmentURL {
            try await ClickHouse.$url.withValue(url) { try await function() }
            return
        }
        let output = try await ClickHouse.runScript("clickhouse-start", [])
        var values: [String: String] = [:]
        for line in output.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
            if parts.count == 2 { values[parts[0]] = parts[1] }
        }
        guard let url = values["CLICKHOUSE_URL"], let dir = values["CLICKHOUSE_DIR"] else {
            throw ClickHouse.FixtureError(message: "clickhouse-start printed no CLICKHOUSE_URL: \(output)")
        }
        do {
            try await ClickHouse.$url.withValue(url) { try await function() }
        } catch {
            _ = try? await ClickHouse.runScript("clickhouse-stop", [dir])
            throw error
        }
        _ = try await ClickHouse.runScript("clickhouse-stop", [dir])
    }
}

extension Trait where Self == ClickHouseServerTrait {
    static var clickHouseServer: Self { Self() }
}

/// Records what an ``UpstreamStream`` delivers, optionally pausing the response now and then.
final class StreamRecorder: UpstreamStreamDelegate {
    struct State {
        var status: Int?
        var headers: [(String, String)] = []
        var headCount = 0
        var bodyBeforeHead = false
        var body = ByteBuffer()
        var bodyBytes = 0
        var calls = 0
        var pauses = 0
        var wantsMore = 0
        var finishCount = 0
        var error: UpstreamError?
        var finishWaiters: [CheckedContinuation<UpstreamError?, Never>] = []
        var paused = false
    }

    /// Return false on every n-th body call (nil: never pause).
    let pauseEvery: Int?
    let resumeAfter: Duration
    let keepBody: Bool
    let state = Locked(State())
    let wantsMoreEvents: AsyncStream<Void>
    private let wantsMoreContinuation: AsyncStream<Void>.Continuation

    init(pauseEvery: Int? = nil, resumeAfter: Duration = .milliseconds(2), keepBody: Bool = true) {
        self.pauseEvery = pauseEvery
        self.resumeAfter = resumeAfter
        self.keepBody = keepBody
        (wantsMoreEvents, wantsMoreContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    func upstreamStream(_ stream: UpstreamStream, didReceiveHead status: Int, headers: [(String, String)]) {
        state.withLock { state in
            state.status = status
            state.headers = headers
            state.headCount += 1
        }
    }

    func upstreamStream(_ stream: UpstreamStream, didReceiveBody bytes: UnsafeRawBufferPointer) -> Bool {
        let pause = state.withLock { state -> Bool in
            if state.headCount == 0 { state.bodyBeforeHead = true }
            precondition(!state.paused, "body delivered while paused")
            state.calls += 1
            if let pauseEvery, state.calls % pauseEvery == 0 {
                state.pauses += 1
                state.paused = true
                return true
            }
            state.bodyBytes += bytes.count
            if keepBody { state.body.writeBytes(bytes) }
            return false
        }
        if pause {
            let delay = resumeAfter
            Task {
                try? await Task.sleep(for: delay)
                self.state.withLock { $0.paused = false }
                stream.resumeResponse()
            }
            return false
        }
        return true
    }

    func upstreamStreamWantsMoreRequestBody(_ stream: UpstreamStream) {
        state.withLock { $0.wantsMore += 1 }
        wantsMoreContinuation.yield()
    }

    func upstreamStream(_ stream: UpstreamStream, didFinishWith error: UpstreamError?) {
        let waiters = state.withLock { state in
            state.finishCount += 1
            state.error = error
            defer { state.finishWaiters = [] }
            return state.finishWaiters
        }
        for waiter in waiters { waiter.resume(returning: error) }
        wantsMoreContinuation.finish()
    }

    /// Waits for `didFinishWith` and returns its error.
    func finished() async -> UpstreamError? {
        await withCheckedContinuation { continuation in
            let done = state.withLock { state -> (Bool, UpstreamError?) in
                if state.finishCount > 0 { return (true, state.error) }
                state.finishWaiters.append(continuation)
                return (false, nil)
            }
            if done.0 { continuation.resume(returning: done.1) }
        }
    }

    var snapshot: State { state.withLock { $0 } }
}
