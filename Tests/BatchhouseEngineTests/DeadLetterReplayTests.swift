import BatchhouseConfig
import BatchhouseCore
import Foundation
import Testing

@testable import BatchhouseEngine

/// `spool replay-dead-letters` sends rows up with the operator's account: rows ClickHouse refused for who sent
/// them, and rows whose clients were answered with the failure, are skipped unless asked for
/// (docs/credentials.md, "Dead letters and replay"; issue 9, item 8).
@Suite struct DeadLetterReplayTests {
    static func record(error: String, status: Int?, refusal: RefusalKind?, told: Int?) -> String {
        var fields = [
            "\"batchID\": 1", "\"table\": \"t\"", "\"statement\": \"INSERT INTO `db`.`t` FORMAT Values\"",
            "\"settings\": {}", "\"format\": \"Values\"", "\"rows\": 1", "\"identity\": \"alice#0011223344556677\"",
            "\"attempts\": 1", "\"error\": \"\(error)\"", "\"writtenAt\": \"2026-12-01T10:00:00Z\"",
        ]
        if let status { fields.append("\"httpStatus\": \(status)") }
        if let refusal { fields.append("\"refusal\": \"\(refusal.rawValue)\"") }
        if let told { fields += ["\"clientsToldFailed\": \(told)", "\"requests\": 1"] }
        return "{" + fields.joined(separator: ", ") + "}"
    }

    static func write(_ directory: TemporaryDirectory, _ name: String, _ json: String, data: String = "(1)") throws {
        try json.write(toFile: directory.path + "/\(name).json", atomically: true, encoding: .utf8)
        try data.write(toFile: directory.path + "/\(name).data", atomically: true, encoding: .utf8)
    }

    static func directory() throws -> TemporaryDirectory {
        let directory = TemporaryDirectory()
        try write(directory, "1-wrong-password", record(error: "Code: 193, e.displayText() = DB::Exception: Wrong password for user alice", status: 401, refusal: .authentication, told: 0))
        try write(directory, "2-readonly", record(error: "Code: 164, e.displayText() = DB::Exception: readonly", status: 500, refusal: .permission, told: 0))
        try write(directory, "3-flushed-client-told", record(error: "Code: 60, e.displayText() = DB::Exception: no table", status: 404, refusal: .other, told: 1))
        try write(directory, "4-missing-table", record(error: "Code: 60, e.displayText() = DB::Exception: no table", status: 404, refusal: .other, told: 0))
        // Written by the previous version: no refusal, no counts.
        try write(directory, "5-old-wrong-password", record(error: "Code: 193, e.displayText() = DB::Exception: Wrong password for user alice", status: 401, refusal: nil, told: nil))
        try write(directory, "6-old-missing-table", record(error: "Code: 60, e.displayText() = DB::Exception: no table", status: 404, refusal: nil, told: nil))
        return directory
    }

    static let upstream = UpstreamConfiguration(servers: ["http://upstream.test:8123"], compression: .none)

    @Test func refusedAndToldRowsAreSkippedAndSaidSo() async throws {
        let directory = try Self.directory()
        let transport = ScriptedTransport()
        let summary = await DeadLetterReplayer.replay(directory: directory.path, upstream: Self.upstream, transport: transport)
        #expect(summary.sent == 2)
        #expect(summary.skipped.map(\.file) == [
            "1-wrong-password.json", "2-readonly.json", "3-flushed-client-told.json", "5-old-wrong-password.json",
        ])
        #expect(transport.inserts.count == 2)
        #expect(directory.files == [
            "1-wrong-password.data", "1-wrong-password.json", "2-readonly.data", "2-readonly.json",
            "3-flushed-client-told.data", "3-flushed-client-told.json", "5-old-wrong-password.data",
            "5-old-wrong-password.json",
        ])
        #expect(summary.description.contains("4 skipped (send them with --include-refused)"))
        #expect(summary.description.contains("1-wrong-password.json: refused for its credentials"))
        #expect(summary.description.contains("3-flushed-client-told.json: 1 of 1 requests were answered"))
    }

    @Test func includeRefusedSendsEverything() async throws {
        let directory = try Self.directory()
        let transport = ScriptedTransport()
        let summary = await DeadLetterReplayer.replay(
            directory: directory.path, upstream: Self.upstream, includeRefused: true, transport: transport)
        #expect(summary.sent == 6)
        #expect(summary.skipped.isEmpty)
        #expect(directory.files.isEmpty)
    }

    @Test func aRecordRefusedAgainKeepsOwnerOnlyModeAndItsNewRefusal() async throws {
        let directory = try Self.directory()
        let transport = ScriptedTransport { _, _ in .error(status: 401, code: 516, message: "Authentication failed") }
        let summary = await DeadLetterReplayer.replay(directory: directory.path, upstream: Self.upstream, transport: transport)
        #expect(summary.failed.count == 2)
        let path = directory.path + "/4-missing-table.json"
        let record = try JSONDecoder().decode(
            DeadLetterWriter.Record.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
        #expect(record.refusal == .authentication)
        #expect(record.attempts == 2)
        let mode = (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int ?? 0) & 0o777
        #expect(mode == 0o600)
        let again = await DeadLetterReplayer.replay(directory: directory.path, upstream: Self.upstream, transport: transport)
        #expect(again.sent == 0 && again.failed.isEmpty && again.skipped.count == 6)
    }
}
