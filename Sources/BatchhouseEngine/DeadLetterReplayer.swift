import BatchhouseConfig
import BatchhouseCore
import BatchhouseUpstream
import Foundation
import NIOCore

/// `batchhouse spool replay-dead-letters DIR`: re-sends dead letters after the cause was fixed (a missing
/// table created, a column type changed). Each `.data` file goes upstream with its `.json` statement and
/// settings; files ClickHouse accepts are removed, the others stay with the new error recorded.
/// Dead letters hold no credentials, so the account comes from the command line or `upstream.user`. That is why
/// rows ClickHouse refused for who sent them (authentication, permission), and rows whose clients were answered
/// with the failure, are skipped unless `includeRefused` says otherwise (docs/credentials.md, "Dead letters and
/// replay").
public enum DeadLetterReplayer {
    public struct Summary: Sendable, CustomStringConvertible {
        public var sent = 0
        public var rows = 0
        public var failed: [(file: String, error: String)] = []
        /// Not sent: refused for their identity, or their clients were told they failed.
        public var skipped: [(file: String, reason: String)] = []

        public var description: String {
            var text = "replayed \(sent) dead letters (\(rows) rows)"
            if !skipped.isEmpty {
                text += "; \(skipped.count) skipped (send them with --include-refused):\n"
                for skip in skipped { text += "  \(skip.file): \(skip.reason)\n" }
            }
            if !failed.isEmpty {
                text += "; \(failed.count) still refused:\n"
                for failure in failed { text += "  \(failure.file): \(failure.error)\n" }
            }
            return text
        }
    }

    /// Re-sends every dead letter in `directory` to the server in `upstream.servers` (the CLI gives one), each
    /// request built by the same `UpstreamGateway` as live batches (compression, TLS, `upstream.settings`, the
    /// `upstream.user` account). Dead letters hold no credentials: without `upstream.user` they go up as
    /// ClickHouse's default user.
    public static func replay(directory: String, upstream: UpstreamConfiguration, includeRefused: Bool = false) async
        -> Summary
    {
        let client = CurlClient(maxConnections: 4)
        defer { client.shutdown() }
        return await replay(directory: directory, upstream: upstream, includeRefused: includeRefused, transport: client)
    }

    /// Why a dead letter is not replayed without `includeRefused`, or nil when it is.
    package static func reasonToSkip(_ record: DeadLetterWriter.Record) -> String? {
        let refusal = record.refusalKind
        if refusal.refusesTheIdentity {
            return "refused for its \(refusal == .authentication ? "credentials" : "permissions") (\(record.identity), "
                + "HTTP \(record.httpStatus.map(String.init) ?? "none")): another account would insert what ClickHouse refused"
        }
        if let told = record.clientsToldFailed, told > 0 {
            return "\(told) of \(record.requests ?? told) requests were answered with this failure: their clients may have sent the rows again"
        }
        return nil
    }

    package static func replay(
        directory: String, upstream: UpstreamConfiguration, includeRefused: Bool = false,
        transport: any UpstreamTransport
    ) async -> Summary {
        var upstream = upstream
        // A dead letter may be a whole large batch: give it at least the minute the replayer always had.
        upstream.timeout = max(upstream.timeout, .seconds(60))
        let gateway = UpstreamGateway(transport: transport, upstream: upstream, clock: MonotonicClock())
        let server = gateway.passthroughTarget().server
        var summary = Summary()
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .filter { $0.hasSuffix(".json") }.sorted()
        for metaFile in files {
            let metaPath = directory + "/" + metaFile
            let dataPath = String(metaPath.dropLast(".json".count)) + ".data"
            guard let metaData = FileManager.default.contents(atPath: metaPath),
                var record = try? JSONDecoder().decode(DeadLetterWriter.Record.self, from: metaData),
                let data = FileManager.default.contents(atPath: dataPath)
            else {
                summary.failed.append((metaFile, "unreadable dead letter (no matching .data or bad JSON)"))
                continue
            }
            if !includeRefused, let reason = reasonToSkip(record) {
                summary.skipped.append((metaFile, reason))
                continue
            }
            let batch = BatchRequest(
                statement: record.statement,
                settings: record.settings.sorted { $0.key < $1.key }.map { Setting(name: $0.key, value: $0.value) },
                data: Array(data), identity: .anonymous, batchID: nil)
            // Straight to the server, not through the pool: a dead letter ClickHouse still refuses (often with a
            // 500 on 18.16) must not open a breaker for the others.
            let request = gateway.request(for: batch, server: server)
            do {
                let response = try await transport.execute(request)
                if (200..<300).contains(response.status) {
                    try? FileManager.default.removeItem(atPath: dataPath)
                    try? FileManager.default.removeItem(atPath: metaPath)
                    summary.sent += 1
                    summary.rows += record.rows
                } else {
                    let error = String(decoding: response.body.readableBytesView.prefix(500), as: UTF8.self)
                        .trimmingCharacters(in: .whitespacesAndNewlines)
                    record.error = error
                    record.httpStatus = response.status
                    record.attempts += 1
                    record.refusal = RefusalKind(status: response.status, code: clickHouseErrorCode(in: response.body))
                    if let updated = try? DeadLetterWriter.encoder().encode(record) {
                        try? DeadLetterWriter.writePrivate(updated, to: metaPath)
                    }
                    summary.failed.append((metaFile, error))
                }
            } catch {
                summary.failed.append((metaFile, "\(error.kind): \(error.message)"))
            }
        }
        return summary
    }
}
