import BatchhouseCore
import Foundation
import Logging

/// Writes batches ClickHouse would not take to a folder: the data as it would have been sent, and a JSON file
/// with the statement, settings and error, so a person can fix and re-send them. Never a credential: the
/// client's identity appears only as its fingerprint.
package struct DeadLetterWriter: Sendable {
    package let directory: String
    let logger: Logger

    package init(directory: String, logger: Logger) {
        self.directory = directory
        self.logger = logger
    }

    package struct Record: Codable {
        package var batchID: UInt64
        package var table: String
        package var database: String?
        package var statement: String
        package var settings: [String: String]
        package var format: String
        package var rows: Int
        package var identity: String
        package var attempts: Int
        package var error: String
        package var httpStatus: Int?
        package var writtenAt: String
    }

    /// How dead-letter records are written (also when the replayer records a new error).
    package static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return encoder
    }

    /// Returns the data file's path, or nil when it could not be written (logged).
    @discardableResult
    package func write(_ batch: SealedBatch, attempts: Int, error: String, httpStatus: Int?, at unixSeconds: Double)
        -> String?
    {
        let stamp = Date(timeIntervalSince1970: unixSeconds)
        let millis = Int64(stamp.timeIntervalSince1970 * 1000)
        let safeTable = String(batch.key.qualifiedTable.map { $0.isLetter || $0.isNumber || $0 == "." || $0 == "_" ? $0 : "_" })
        let base = "\(directory)/\(millis)-\(batch.id)-\(safeTable)"
        let record = Record(
            batchID: batch.id, table: batch.key.table, database: batch.key.database,
            statement: batch.key.insertStatement,
            settings: Dictionary(batch.key.settings.map { ($0.name, $0.value) }, uniquingKeysWith: { $1 }),
            format: batch.key.format.rawValue, rows: batch.rows, identity: batch.key.identity.description,
            attempts: attempts, error: error, httpStatus: httpStatus,
            writtenAt: ISO8601DateFormatter().string(from: stamp))
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try Data(batch.data).write(to: URL(fileURLWithPath: base + ".data"))
            try Self.encoder().encode(record).write(to: URL(fileURLWithPath: base + ".json"))
            return base + ".data"
        } catch {
            logger.error(
                "could not write dead letter",
                metadata: ["table": "\(batch.key.qualifiedTable)", "batch": "\(batch.id)", "error": "\(error)"])
            return nil
        }
    }
}
