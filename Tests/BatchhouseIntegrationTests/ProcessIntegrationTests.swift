import BatchhouseCore
import Foundation
import Testing

/// The real `batchhouse` executable as a separate process: signals, exit codes, and its own memory.
/// (`RunningProxy` is only touched from the test task; its Process is thread-safe for what is used.)
@Suite(.serialized, .enabled(if: TestEnvironment.hasClickHouse, "needs CLICKHOUSE_URL (scripts/test sets it)"))
struct ProcessIntegrationTests {
    static let repo: String = {
        if let repo = ProcessInfo.processInfo.environment["BATCHHOUSE_REPO"] { return repo }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
    }()

    final class RunningProxy: @unchecked Sendable {
        let process = Process()
        private(set) var port = 0
        let logFile: String
        /// Standard output when `separateStandardOutput`; otherwise it goes to `logFile` too.
        let standardOutputFile: String
        let workDir: String

        /// `fileLimit`: the open-file limit (soft and hard) the proxy runs under, set by a shell's `ulimit -n`.
        /// `environment` is added to the test's own (e.g. `BATCHHOUSE_CRASH_AT`); `upstream` replaces ClickHouse 18.16.
        /// `arguments` come after the usual ones (e.g. `--log-format json`).
        init(
            config: String, fileLimit: Int? = nil, environment: [String: String] = [:], upstream: String? = nil,
            arguments extraArguments: [String] = [], separateStandardOutput: Bool = false
        ) throws {
            workDir = NSTemporaryDirectory() + "bh-proc-\(UInt32.random(in: 0...UInt32.max))"
            try FileManager.default.createDirectory(atPath: workDir, withIntermediateDirectories: true)
            let configPath = workDir + "/batchhouse.yaml"
            try (config + "\ndead_letter_dir: \(workDir)/dead-letter\n").write(
                toFile: configPath, atomically: true, encoding: .utf8)
            logFile = workDir + "/batchhouse.log"
            _ = FileManager.default.createFile(atPath: logFile, contents: nil)
            let executable = ProcessIntegrationTests.repo + "/.build/debug/batchhouse"
            let arguments =
                [
                    "--config", configPath, "--listen", "127.0.0.1:0", "--upstream",
                    upstream ?? TestEnvironment.clickHouseURL!,
                ] + extraArguments
            if !environment.isEmpty {
                process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
            }
            if let fileLimit {
                process.executableURL = URL(fileURLWithPath: "/bin/sh")
                process.arguments = ["-c", "ulimit -n \(fileLimit) && exec \"$0\" \"$@\"", executable] + arguments
            } else {
                process.executableURL = URL(fileURLWithPath: executable)
                process.arguments = arguments
            }
            let log = FileHandle(forWritingAtPath: logFile)
            standardOutputFile = separateStandardOutput ? workDir + "/stdout.log" : logFile
            if separateStandardOutput {
                _ = FileManager.default.createFile(atPath: standardOutputFile, contents: nil)
                process.standardOutput = FileHandle(forWritingAtPath: standardOutputFile)
            } else {
                process.standardOutput = log
            }
            process.standardError = log
            try process.run()
        }

        var endpoint: HTTPEndpoint { HTTPEndpoint(baseURL: "http://127.0.0.1:\(port)") }

        /// Reads the port from the "listening" log line (the proxy binds port 0), then waits for `/ping`.
        func waitUntilReady() async throws {
            for _ in 0..<300 {
                if port == 0,
                    let range = log.range(of: "address=127.0.0.1:") ?? log.range(of: #""address":"127.0.0.1:"#)
                {
                    port = Int(log[range.upperBound...].prefix { $0.isNumber }) ?? 0
                }
                if port != 0, let ping = try? await endpoint.get("/ping"), ping.status == 200 { return }
                try await Task.sleep(for: .milliseconds(100))
            }
            throw TestFailure("batchhouse did not answer /ping; log:\n\(log)")
        }

        var log: String { (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? "" }
        var standardOutput: String { (try? String(contentsOfFile: standardOutputFile, encoding: .utf8)) ?? "" }

        /// Resident memory of the proxy process now, in bytes.
        var residentBytes: Int {
            let status = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)) ?? ""
            for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
                let kilobytes = line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
                return kilobytes * 1024
            }
            return 0
        }

        func terminateAndWait() async -> Int32 {
            process.terminate()  // SIGTERM
            for _ in 0..<300 where process.isRunning {
                try? await Task.sleep(for: .milliseconds(100))
            }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
            return process.terminationStatus
        }

        deinit {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            try? FileManager.default.removeItem(atPath: workDir)
        }
    }

    @Test func sigtermFinishesRequestsFlushesEverythingAndExitsZero() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).g (id UInt64) ENGINE = MergeTree ORDER BY id")
        let proxy = try RunningProxy(config: "defaults: { strategy: hybrid, max_rows: 1000000, max_delay: 60s }")
        try await proxy.waitUntilReady()
        try await runConcurrently(count: 500, concurrency: 8) { id in
            let result = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).g VALUES (\(id))")
            guard result.status == 200 else { throw TestFailure("\(result.status) \(result.body)") }
        }
        #expect(try await db.count("g") == 0, "nothing should be flushed before max_delay")
        let status = await proxy.terminateAndWait()
        #expect(status == 0)
        #expect(try await db.count("g") == 500)
        #expect(try await db.clickHouse.sql("SELECT uniqExact(id) FROM \(db.name).g") == "500\n")
        #expect(proxy.log.contains("trigger=shutdown"))
    }

    @Test func largeSelectStreamsWithoutGrowingTheProxy() async throws {
        let proxy = try RunningProxy(config: "defaults: { strategy: hybrid }")
        try await proxy.waitUntilReady()
        let before = proxy.residentBytes
        // About 200 MB of TSV, read by a client that takes only 100 MB/s: the proxy must pause upstream
        // instead of buffering what the client has not taken.
        let query = "SELECT number, toString(number) FROM system.numbers LIMIT 12000000"
        let curl = Process()
        curl.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        curl.arguments = [
            "-sS", "--limit-rate", "100M", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
            "http://127.0.0.1:\(proxy.port)/?query=" + QueryString.encode(query),
        ]
        let output = Pipe()
        curl.standardOutput = output
        try curl.run()
        var peak = before
        while curl.isRunning {
            peak = max(peak, proxy.residentBytes)
            try await Task.sleep(for: .milliseconds(50))
        }
        let result = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let parts = result.split(separator: " ")
        #expect(parts.first == "200")
        let downloaded = parts.count > 1 ? Int(parts[1]) ?? 0 : 0
        #expect(downloaded > 150_000_000, "downloaded \(downloaded) bytes")
        let growth = peak - before
        print("streaming: \(downloaded) bytes through the proxy, RSS \(before >> 20) MiB -> peak \(peak >> 20) MiB")
        #expect(growth < 48 << 20, "proxy RSS grew by \(growth >> 20) MiB while streaming")
        #expect(await proxy.terminateAndWait() == 0)
    }

    @Test func deadLettersCanBeReplayedAfterTheFixAndTheSpoolInspected() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        let proxy = try RunningProxy(
            config: "defaults: { strategy: hybrid, max_delay: 100ms, retries: 0 }\nspool: { dir: SPOOL }"
                .replacingOccurrences(of: "SPOOL", with: NSTemporaryDirectory() + "bh-inspect-\(UInt32.random(in: 0...UInt32.max))"))
        try await proxy.waitUntilReady()
        // The table does not exist yet: ClickHouse refuses the batch (code 60), it becomes a dead letter.
        let result = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).later VALUES (1, 'one'), (2, 'two')")
        #expect(result.status == 200)
        let deadLetters = proxy.workDir + "/dead-letter"
        for _ in 0..<600 where ((try? FileManager.default.contentsOfDirectory(atPath: deadLetters)) ?? []).isEmpty {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(await proxy.terminateAndWait() == 0)
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: deadLetters)) ?? []).count == 2)

        // Without the table, a replay fails and keeps the files.
        let failed = try await CheckConfigTests.run(
            ["spool", "replay-dead-letters", deadLetters, "--upstream", TestEnvironment.clickHouseURL!])
        #expect(failed.status == 1)
        #expect(failed.output.contains("Code: 60"))
        // After the fix it lands and the files go.
        try await db.clickHouse.sql("CREATE TABLE \(db.name).later (id UInt64, s String) ENGINE = MergeTree ORDER BY id")
        let replayed = try await CheckConfigTests.run(
            ["spool", "replay-dead-letters", deadLetters, "--upstream", TestEnvironment.clickHouseURL!])
        #expect(replayed.status == 0, "\(replayed.output)")
        #expect(replayed.output.contains("replayed 1 dead letters (2 rows)"))
        #expect(try await db.clickHouse.sql("SELECT id, s FROM \(db.name).later ORDER BY id FORMAT TSV") == "1\tone\n2\ttwo\n")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: deadLetters)) ?? []).isEmpty)
    }

    @Test func spoolInspectShowsUndeliveredRowsWithoutSecrets() async throws {
        let spoolDir = NSTemporaryDirectory() + "bh-inspect-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: spoolDir) }
        // max_delay 60s: the rows are only in buffers and the spool when the process is killed. The credentials
        // are real (alice, from scripts/clickhouse-start): a wrong password would be refused before the spool.
        let proxy = try RunningProxy(
            config: "defaults: { strategy: hybrid, max_delay: 60s, ack: durable }\nspool: { dir: \(spoolDir) }")
        try await proxy.waitUntilReady()
        for id in 0..<25 {
            let result = try await proxy.endpoint.post(
                "/", body: Array("INSERT INTO inspect_db.t VALUES (\(id))".utf8), auth: ("alice", "alice-pw"))
            #expect(result.status == 200)
        }
        kill(proxy.process.processIdentifier, SIGKILL)
        proxy.process.waitUntilExit()
        let report = try await CheckConfigTests.run(["spool", "inspect", spoolDir])
        #expect(report.status == 0)
        #expect(report.output.contains("inspect_db.t"), "\(report.output)")
        #expect(report.output.contains("25"))
        #expect(!report.output.contains("alice-pw"))
        let attributes = try FileManager.default.attributesOfItem(atPath: spoolDir)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o700)
    }

    /// `--log-format json`: every line on standard error, where the text lines go, is one JSON object with the
    /// standard fields, each flush line has its trigger and table as fields, and standard output stays empty.
    @Test func jsonLogFormatWritesOneObjectPerLineOnStandardError() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).j (id UInt64, s String) ENGINE = MergeTree ORDER BY id")
        let proxy = try RunningProxy(
            config: "defaults: { strategy: hybrid, max_rows: 3, max_delay: 60s }", arguments: ["--log-format", "json"],
            separateStandardOutput: true)
        try await proxy.waitUntilReady()
        // Three rows fill a batch (trigger rows); the fourth waits for the shutdown flush (trigger shutdown).
        for id in 0..<4 {
            let result = try await proxy.endpoint.post("/", body: "INSERT INTO \(db.name).j VALUES (\(id), 'row')")
            #expect(result.status == 200, "\(result.body)")
        }
        #expect(try await db.waitForCount("j", 3) == 3)
        #expect(await proxy.terminateAndWait() == 0)
        #expect(try await db.count("j") == 4)

        let lines = proxy.log.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines.last == "", "the log ends with a newline")
        var entries: [[String: Any]] = []
        for line in lines.dropLast() {
            let parsed = try? JSONSerialization.jsonObject(with: Data(line.utf8))
            let entry = try #require(parsed as? [String: Any], "not a JSON object: \(line)")
            #expect(entry["level"] is String && entry["message"] is String && entry["label"] as? String == "batchhouse")
            let timestamp = try #require(entry["timestamp"] as? String)
            #expect(timestamp.wholeMatch(of: /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/) != nil, "\(timestamp)")
            entries.append(entry)
        }
        #expect(entries.contains { $0["message"] as? String == "listening" && $0["address"] is String })
        let flushes = entries.filter { $0["message"] as? String == "flushed batch" }
        #expect(flushes.map { $0["trigger"] as? String } == ["rows", "shutdown"], "\(proxy.log)")
        #expect(flushes.allSatisfy { $0["table"] as? String == "\(db.name).j" })
        #expect(entries.last?["message"] as? String == "stopped")
        #expect(proxy.standardOutput == "")
    }

    /// `--log-format` takes `text` or `json`; anything else is a usage error: ArgumentParser's EX_USAGE (64), like
    /// any other bad option, with the choices, and the proxy does not start.
    @Test func anUnknownLogFormatIsAUsageError() async throws {
        let result = try await CheckConfigTests.run(["--log-format", "xml", "--listen", "127.0.0.1:0"])
        #expect(result.status == 64, "\(result.output)")
        #expect(result.output.contains("'xml' is invalid for '--log-format"), "\(result.output)")
        #expect(result.output.contains("'text' and 'json'"))
        #expect(!result.output.contains("listening"))
    }

    @Test func sighupReloadsTheFile() async throws {
        let proxy = try RunningProxy(config: "defaults: { strategy: hybrid, max_delay: 1s }")
        try await proxy.waitUntilReady()
        kill(proxy.process.processIdentifier, SIGHUP)
        for _ in 0..<300 where !proxy.log.contains("reason=SIGHUP") {
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(proxy.log.contains("configuration reloaded"), "\(proxy.log)")
        #expect(proxy.log.contains("reason=SIGHUP"))
        #expect(await proxy.terminateAndWait() == 0)
    }
}
