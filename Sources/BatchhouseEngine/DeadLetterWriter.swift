import BatchhouseCore
import Foundation
import Logging

/// Writes batches ClickHouse would not take to a folder: the data as it would have been sent, and a JSON file
/// with the statement, settings, error, why it was refused and whether the clients were told, so a person can
/// fix and re-send them. Never a credential: the client's identity appears only as its keyed tag
/// (docs/credentials.md, "Dead letters and replay"). The folder is made 0700 and every file 0600.
package struct DeadLetterWriter: Sendable {
    package let directory: String
    let logger: Logger

    package init(directory: String, logger: Logger) {
        self.directory = directory
        self.logger = logger
    }

    /// One dead letter's `.json`. Fields after `writtenAt` came later: records written before them decode with
    /// those fields nil (the replayer then reads the refusal from `error`).
    package struct Record: Codable {
        package var batchID: UInt64
        package var table: String
        package var database: String?
        package var statement: String
        package var settings: [String: String]
        package var format: String
        package var rows: Int
        /// `user#` and 16 hex digits of a keyed hash (`IdentityTags`).
        package var identity: String
        package var attempts: Int
        package var error: String
        package var httpStatus: Int?
        package var writtenAt: String
        /// Why ClickHouse did not take the rows (`RefusalKind`).
        package var refusal: RefusalKind?
        /// Requests whose rows these are, and how many of them were answered with the failure (`ack: flushed`,
        /// `immediate`): those clients know, and may have sent the rows again.
        package var requests: Int?
        package var clientsToldFailed: Int?

        /// The refusal as recorded, else read from the error text (records of earlier versions).
        package var refusalKind: RefusalKind {
            refusal ?? RefusalKind(status: httpStatus, code: clickHouseErrorCode(inText: error))
        }
    }

    /// What is known about the failure besides the rows.
    package struct Failure: Sendable {
        package var attempts: Int
        package var error: String
        package var httpStatus: Int?
        package var refusal: RefusalKind
        package var identityTag: String
        package var clientsToldFailed: Int

        package init(
            attempts: Int, error: String, httpStatus: Int?, refusal: RefusalKind, identityTag: String,
            clientsToldFailed: Int
        ) {
            self.attempts = attempts
            self.error = error
            self.httpStatus = httpStatus
            self.refusal = refusal
            self.identityTag = identityTag
            self.clientsToldFailed = clientsToldFailed
        }
    }

    /// How dead-letter records are written (also when the replayer records a new error).
    package static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return encoder
    }

    /// Returns the data file's path, or nil when it could not be written (logged).
    @discardableResult
    package func write(_ batch: SealedBatch, _ failure: Failure, at unixSeconds: Double) -> String? {
        let stamp = Date(timeIntervalSince1970: unixSeconds)
        let millis = Int64(stamp.timeIntervalSince1970 * 1000)
        let safeTable = String(batch.key.qualifiedTable.map { $0.isLetter || $0.isNumber || $0 == "." || $0 == "_" ? $0 : "_" })
        let base = "\(directory)/\(millis)-\(batch.id)-\(safeTable)"
        let record = Record(
            batchID: batch.id, table: batch.key.table, database: batch.key.database,
            statement: batch.key.insertStatement,
            settings: Dictionary(batch.key.settings.map { ($0.name, $0.value) }, uniquingKeysWith: { $1 }),
            format: batch.key.format.rawValue, rows: batch.rows, identity: failure.identityTag,
            attempts: failure.attempts, error: failure.error, httpStatus: failure.httpStatus,
            writtenAt: ISO8601DateFormatter().string(from: stamp), refusal: failure.refusal,
            requests: batch.contributions.count, clientsToldFailed: failure.clientsToldFailed)
        do {
            try Self.makeDirectory(directory)
            try Self.writePrivate(Data(batch.data), to: base + ".data", syncFolder: false)
            try Self.writePrivate(Self.encoder().encode(record), to: base + ".json")
            return base + ".data"
        } catch {
            logger.error(
                "could not write dead letter",
                metadata: ["table": "\(batch.key.qualifiedTable)", "batch": "\(batch.id)", "error": "\(error)"])
            return nil
        }
    }

    /// The folder, made if missing, and set to 0700 (folders of earlier versions were 0755).
    static func makeDirectory(_ path: String) throws {
        try FileManager.default.createDirectory(
            atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        chmod(path, 0o700)
    }

    /// Writes `data` to `path` readable by its owner only (0600), replacing what is there.
    /// `syncFolder`: also sync the folder, so the new name is on disk (once for files written together).
    package static func writePrivate(_ data: Data, to path: String, syncFolder: Bool = true) throws {
        // Written aside, synced, then renamed and the folder synced: the spool marks these rows delivered right
        // after, so the file must be whole and on disk first (and a rewrite by the replayer never leaves half a
        // record).
        let temporary = path + ".tmp"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard descriptor >= 0 else { throw DeadLetterFileError(path: temporary, errno: errno) }
        var closed = false
        defer { if !closed { close(descriptor) } }
        // O_CREAT's mode applies to new files only; an existing one is tightened too.
        fchmod(descriptor, 0o600)
        var offset = 0
        let failed = data.withUnsafeBytes { bytes -> Bool in
            while offset < bytes.count {
                let written = Foundation.write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    return true
                }
                offset += written
            }
            return false
        }
        if failed || fsync(descriptor) != 0 {
            let error = errno
            unlink(temporary)
            throw DeadLetterFileError(path: path, errno: error)
        }
        closed = true
        close(descriptor)
        guard rename(temporary, path) == 0 else {
            let error = errno
            unlink(temporary)
            throw DeadLetterFileError(path: path, errno: error)
        }
        guard syncFolder else { return }
        let folder = open((path as NSString).deletingLastPathComponent, O_RDONLY | O_DIRECTORY)
        if folder >= 0 {
            defer { close(folder) }
            if fsync(folder) != 0 { throw DeadLetterFileError(path: path, errno: errno) }
        }
    }
}

struct DeadLetterFileError: Error, CustomStringConvertible {
    var path: String
    var errno: Int32
    var description: String { "cannot write \(path): \(String(cString: strerror(errno)))" }
}
