import BatchhouseCore

/// One client request's validated rows for one batch key, as recovery finds them: everything but the data,
/// which stays in its segment until ``Spool/readChunks(_:)`` reads it back (docs/spool-and-acks.md, "The spool
/// as backlog"). Chunks with the same key share the key's storage.
///
/// `key.identity` holds the client's user and password: replay must send these rows upstream with
/// the identity they came with, so the spool keeps them (see ``Spool`` for where and how).
public struct SpooledChunk: Sendable {
    /// Assigned by the spool; increasing in append order, also across restarts.
    public var id: UInt64
    public var key: BatchKey
    public var rows: Int
    public var endsWithNewline: Bool
    /// Bytes of row data in the record.
    public var dataLength: Int

    public init(id: UInt64, key: BatchKey, rows: Int, endsWithNewline: Bool, dataLength: Int) {
        self.id = id
        self.key = key
        self.rows = rows
        self.endsWithNewline = endsWithNewline
        self.dataLength = dataLength
    }
}

/// A chunk's rows read back from its segment.
public struct SpoolChunkBody: Sendable {
    public var id: UInt64
    public var rows: Int
    public var endsWithNewline: Bool
    public var data: [UInt8]
}

/// What ``Spool/readChunks(_:)`` found: the bodies by id, and the ids it could not read with why (a record
/// damaged on disk since it was written, an unreadable file, or an id the spool does not hold undelivered).
public struct SpoolReadOutcome: Sendable {
    public var bodies: [UInt64: SpoolChunkBody] = [:]
    /// Records damaged on disk, or ids the spool does not hold undelivered: those rows cannot be read, ever.
    public var unreadable: [UInt64: String] = [:]
    /// A system call failed (open, pread: too many open files, an I/O error): the records may be fine; try again.
    public var failed: [UInt64: String] = [:]
}

/// How a batch found in doubt at start was settled (the `settled` record; `batchhouse spool inspect` shows it).
public enum SettledOutcome: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// ClickHouse had finished the batch's query: its chunks were marked delivered, nothing was sent again.
    case landed = 1
    /// ClickHouse had no finished query under that id: the same rows go again under the same id.
    case resent = 2
    /// It could not be told (no `system.query_log`, or the user may not read it): sent again, at least once.
    case atLeastOnce = 3
    /// Written by the process that sent it: every attempt failed before reaching ClickHouse or was refused by
    /// it, so nothing landed; the rows are replayed as usual, without asking.
    case notSent = 4

    public var description: String {
        switch self {
        case .landed: "landed before the crash (found finished in system.query_log): not sent again"
        case .resent: "not finished upstream: sent again under the same query id"
        case .atLeastOnce: "could not be told: sent again (at least once)"
        case .notSent: "not delivered before a stop, and no attempt reached ClickHouse unanswered: replayed as usual"
        }
    }
}

/// A batch whose `sending` record was written but whose chunks were not all marked delivered: the process
/// stopped between sending it and learning the answer. Settle it before sending its rows again.
public struct InDoubtBatch: Sendable {
    public var queryID: String
    /// The batch's number in the process that sent it.
    public var batch: UInt64
    /// Every chunk the batch held, in order.
    public var chunks: [UInt64]
    /// Every one of them is still undelivered: the batch can be sent again exactly as it was.
    public var complete: Bool
    /// A `settled` record says it landed (the marks did not follow before the next stop).
    public var settledLanded: Bool
}

/// Where an appended chunk ended up: what ``Spool/waitDurable(_:)`` waits for.
public struct SpoolPosition: Sendable, Hashable {
    public var chunkID: UInt64
    /// The segment's number (the number in its file name).
    public var segment: UInt64
    /// The offset just past the chunk's record in that segment.
    public var offset: Int

    public init(chunkID: UInt64, segment: UInt64, offset: Int) {
        self.chunkID = chunkID
        self.segment = segment
        self.offset = offset
    }
}

/// A stretch of a segment file that could not be read back: a torn write, a flipped bit, garbage.
/// Recovery reports it and goes on with the next record that verifies.
public struct SpoolCorruption: Sendable, Hashable, CustomStringConvertible {
    /// The segment's file name, e.g. `segment-00000000000000000001.wal`.
    public var segment: String
    /// Byte offset in that file where the bad data starts.
    public var offset: Int
    public var reason: String

    public init(segment: String, offset: Int, reason: String) {
        self.segment = segment
        self.offset = offset
        self.reason = reason
    }

    public var description: String { "\(segment) at offset \(offset): \(reason)" }
}

public struct SpoolError: Error, Sendable, CustomStringConvertible {
    public enum Code: Sendable {
        /// `spool.max_size` would be exceeded: answer 503 and let the client retry.
        case full
        /// The filesystem is full (ENOSPC, EDQUOT), or the reserve kept for delivered marks is in use: answer
        /// 503 and let the client retry; space comes back as delivered segments are reclaimed.
        case noSpace
        /// A system call failed (I/O error, permissions); `message` says which and why.
        case io
        /// The spool was closed.
        case closed
    }

    public var code: Code
    public var message: String

    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }

    public var description: String {
        switch code {
        case .full: "spool full: \(message)"
        case .noSpace: "spool disk full: \(message)"
        case .io: "spool I/O error: \(message)"
        case .closed: "spool closed: \(message)"
        }
    }
}

/// What ``Spool/open(directory:maxSize:segmentSize:)`` found on disk.
public struct SpoolRecovery: Sendable {
    /// Chunks not yet delivered, in id order: replay them, then call ``Spool/markDelivered(_:)``
    /// with their ids once ClickHouse has them.
    public var chunks: [SpooledChunk]
    /// Batches that were being sent when the process stopped (see ``InDoubtBatch``).
    public var inDoubt: [InDoubtBatch]
    public var corruptions: [SpoolCorruption]
    /// Segment files found (before any was deleted as fully delivered).
    public var segments: Int
    /// Their total size in bytes.
    public var bytes: Int

    public init(
        chunks: [SpooledChunk], inDoubt: [InDoubtBatch] = [], corruptions: [SpoolCorruption], segments: Int, bytes: Int
    ) {
        self.chunks = chunks
        self.inDoubt = inDoubt
        self.corruptions = corruptions
        self.segments = segments
        self.bytes = bytes
    }
}

/// The spool's figures for `/metrics`, read at scrape time (``Spool/statistics``).
public struct SpoolStatistics: Sendable, Hashable {
    /// Counts since the spool was opened.
    public struct Counters: Sendable, Hashable {
        /// Appends refused because `spool.max_size` would be passed.
        public var refusedMaxSize = 0
        /// Appends refused because the disk is full (ENOSPC, EDQUOT) or the reserve is in use.
        public var refusedNoSpace = 0
        /// Appends that failed for another reason (I/O error, permissions).
        public var failedIO = 0
        /// `delivered` records that could not be written even with the reserve (they are retried).
        public var markFailures = 0
        /// Bytes of the reserve given up so that marks or a rollover fit on a full disk.
        public var reserveReleasedBytes = 0
    }

    /// Bytes of segment files on disk (delivered data included until its file is reclaimed).
    public var fileBytes: Int
    /// Record bytes of undelivered chunks: what `spool.max_size` bounds.
    public var liveBytes: Int
    public var undeliveredChunks: Int
    /// Bytes held in the reserve now, and its target.
    public var reserveBytes: Int
    public var reserveTarget: Int
    /// Delivered chunks whose `delivered` record is not written yet (it is being retried).
    public var unwrittenMarks: Int
    public var counters: Counters
}

/// What ``Spool/markDelivered(_:)`` achieved.
public struct SpoolMarkOutcome: Sendable, Hashable {
    /// Delivered chunks whose mark is still not on disk (0: every delivery is recorded). The spool retries them
    /// on every later mark and at ``Spool/retryUnwrittenMarks()``; a restart before that replays them.
    public var unwrittenChunks: Int
    /// Why the last write failed, when `unwrittenChunks` is not 0.
    public var failure: String?

    public static let written = SpoolMarkOutcome(unwrittenChunks: 0, failure: nil)
}
