import BatchhouseCore
import BatchhouseUpstream
import Foundation
import NIOCore

/// `batchhouse spool replay-dead-letters DIR`: re-sends dead letters after the cause was fixed (a missing
/// table created, a column type changed). Each `.data` file goes upstream with its `.json` statement and
/// settings; files ClickHouse accepts are removed, the others stay with the new error recorded.
/// Dead letters hold no credentials, so the account comes from the command line or `upstream.user`.
public enum DeadLetterReplayer {
    public struct Summary: Sendable, CustomStringConvertible {
        public var sent = 0
        public var rows = 0
        public var failed: [(file: String, error: String)] = []

        public var description: String {
            var text = "replayed \(sent) dead letters (\(rows) rows)"
            if !failed.isEmpty {
                text += "; \(failed.count) still refused:\n"
                for failure in failed { text += "  \(failure.file): \(failure.error)\n" }
            }
            return text
        }
    }

    public static func replay(
        directory: String, upstream: String, user: String?, password: String?, timeout: Duration = .seconds(60)
    ) async -> Summary {
        let client = CurlClient(maxConnections: 4)
        defer { client.shutdown() }
        var summary = Summary()
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .filter { $0.hasSuffix(".json") }.sorted()
        var base = upstream
        while base.hasSuffix("/") { base.removeLast() }
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
            var url = base + "/?query=" + QueryString.encode(record.statement)
            for (name, value) in record.settings.sorted(by: { $0.key < $1.key }) {
                url += "&" + QueryString.encode(name) + "=" + QueryString.encode(value)
            }
            let request = UpstreamRequest(
                method: "POST", url: url, headers: [("Content-Type", "application/octet-stream")],
                body: ByteBuffer(bytes: data), basicAuth: user.map { ($0, password ?? "") },
                connectTimeout: .seconds(5), timeout: timeout)
            do {
                let response = try await client.execute(request)
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
                    if let updated = try? DeadLetterWriter.encoder().encode(record) { try? updated.write(to: URL(fileURLWithPath: metaPath)) }
                    summary.failed.append((metaFile, error))
                }
            } catch {
                summary.failed.append((metaFile, "\(error.kind): \(error.message)"))
            }
        }
        return summary
    }
}
