import BatchhouseCore
import Dispatch
import Synchronization

/// The write-ahead spool (`spool.dir`): every chunk of rows the proxy acknowledges is written here
/// first, so a crash or a kill loses nothing that was not yet in ClickHouse.
///
/// - Segment files `DIR/segment-<20-digit number>.wal` (format in ``RecordFormat``), where the
///   number is the id of the first chunk written to the file. Appends go to the newest segment;
///   it is rotated once it would pass `segmentSize`. A segment is deleted once every chunk in it
///   is delivered (``markDelivered(_:)``).
/// - Every record is checksummed (CRC-32). ``open(directory:maxSize:segmentSize:)`` replays what
///   was not delivered; a torn or corrupt stretch is reported in ``SpoolRecovery/corruptions``
///   and skipped, and appends then go to a new segment.
/// - `append` writes the whole record with one write(2) before it returns: once a request is
///   acknowledged its rows survive the process being killed (ack `enqueued`). ``waitDurable(_:)``
///   waits for an fdatasync(2) that covers the record (ack `durable`); concurrent waiters share
///   one fsync (group commit) done by a dedicated thread, never on the caller's thread.
///
/// Credentials: a chunk must be replayed after a restart with the identity it came with, so each
/// chunk record holds the client's user and password in clear. That is why the directory is made
/// 0700 and every segment file is created 0600 (whatever the umask): only the proxy's user can read
/// them. Nothing else the spool produces (errors, ``SpoolCorruption``, ``SpoolInspector`` reports)
/// contains a password.
///
/// The directory is locked (`DIR/lock`, flock) so two processes never share it.
public final class Spool: Sendable {
    /// Shared with the sync thread, which must not keep the spool itself alive.
    let core: SpoolCore
    let directory: String
    let maxSize: Int
    let segmentSize: Int

    /// Opens (creating if needed) the spool in `directory`, reading back what it holds.
    ///
    /// - Parameters:
    ///   - maxSize: bytes of segment files beyond which ``append(key:rows:endsWithNewline:data:)``
    ///     throws `.full`; recovered segments count too.
    ///   - segmentSize: a segment is rotated when the next record would take it past this size.
    /// - Throws: `.io` when the directory cannot be created, locked or read, or when a segment has a
    ///   format version this build does not know. Damaged records are not errors: they are reported
    ///   in the recovery.
    public static func open(
        directory: String,
        maxSize: Int,
        segmentSize: Int = 64 << 20
    ) throws(SpoolError) -> (Spool, SpoolRecovery) {
        try FileSystem.makePrivateDirectory(directory)
        let lockFile = try FileSystem.lockDirectory(directory)
        let directoryFile = try FileSystem.openDirectory(directory)
        var recovered = try Recovery.run(directory: directory)

        let number = recovered.nextChunkID
        let path = directory + "/" + RecordFormat.segmentFileName(number)
        let file = try FileSystem.createSegment(path)
        let active = SegmentState(
            number: number,
            path: path,
            file: file,
            size: RecordFormat.segmentHeaderSize,
            durableSize: 0,
            needsDirectorySync: true
        )
        recovered.segments.append(active)
        var state = SpoolState(
            segments: recovered.segments,
            nextChunkID: number,
            totalBytes: recovered.segments.reduce(0) { $0 + $1.size },
            undeliveredCount: recovered.chunks.count
        )
        state.lockFile = lockFile
        let spool = Spool(state: state, directory: directory, directoryFile: directoryFile, maxSize: maxSize, segmentSize: segmentSize)
        spool.core.startSyncThread()
        // Segments whose chunks were all delivered before the restart go now.
        spool.markDelivered([])
        let report = SpoolRecovery(
            chunks: recovered.chunks,
            corruptions: recovered.corruptions,
            segments: recovered.fileCount,
            bytes: recovered.bytes
        )
        return (spool, report)
    }

    private init(state: SpoolState, directory: String, directoryFile: OpenFile, maxSize: Int, segmentSize: Int) {
        self.core = SpoolCore(state: state, directoryFile: directoryFile)
        self.directory = directory
        self.maxSize = maxSize
        self.segmentSize = segmentSize
    }

    deinit { close() }

    /// Writes one chunk (one request's rows for one key) and returns where it is. The record is in
    /// the kernel when this returns, not necessarily on disk: see ``waitDurable(_:)``.
    ///
    /// - Throws: `.full` when the spool would pass `maxSize`, `.io` when the write failed (nothing
    ///   of the record stays in the file), `.closed` after ``close()``.
    public func append(key: BatchKey, rows: Int, endsWithNewline: Bool, data: UnsafeRawBufferPointer) throws(SpoolError) -> SpoolPosition {
        // Encoding and most of the checksum happen before taking the lock.
        guard var record = EncodedChunk(key: key, rows: rows, endsWithNewline: endsWithNewline, data: data) else {
            throw SpoolError(code: .io, message: "a chunk of \(data.count) bytes is larger than a spool record can hold (4 GiB)")
        }
        let (position, wake) = try core.state.withLock { state throws(SpoolError) -> (SpoolPosition, Bool) in
            guard !state.closed else { throw SpoolError(code: .closed, message: "cannot append") }
            var wake = false
            // Only the size: a copy of the segment would make the insert below copy its id set.
            let activeSize = state.segments[state.activeIndex].size
            if state.rotateBeforeNextAppend
                || (activeSize > RecordFormat.segmentHeaderSize && activeSize + record.recordLength > segmentSize)
            {
                let needed = RecordFormat.segmentHeaderSize + record.recordLength
                guard state.totalBytes + needed <= maxSize else { throw full(state, needed) }
                wake = try rotate(&state)
            }
            guard state.totalBytes + record.recordLength <= maxSize else { throw full(state, record.recordLength) }

            let id = state.nextChunkID
            record.seal(id: id)
            let failure = record.head.withUnsafeBytes { head in state.writeToActive(head, data) }
            let index = state.activeIndex
            if let failure {
                throw FileSystem.ioError("cannot append to", state.segments[index].path, failure)
            }
            state.nextChunkID += 1
            state.undeliveredCount += 1
            state.segments[index].undelivered.insert(id)
            if state.segments[index].firstID == nil { state.segments[index].firstID = id }
            state.segments[index].lastID = id
            let position = SpoolPosition(chunkID: id, segment: state.segments[index].number, offset: state.segments[index].size)
            return (position, wake)
        }
        if wake { core.wakeSyncThread.signal() }
        return position
    }

    private func full(_ state: SpoolState, _ needed: Int) -> SpoolError {
        SpoolError(
            code: .full,
            message: "\(state.totalBytes) bytes spooled, \(needed) more would pass spool.max_size (\(maxSize) bytes)"
        )
    }

    /// Starts a new active segment. The old one keeps its descriptor until the sync thread has
    /// synced its last bytes. Returns whether the sync thread must be signalled.
    private func rotate(_ state: inout SpoolState) throws(SpoolError) -> Bool {
        let old = state.activeIndex
        let number = max(state.nextChunkID, state.segments[old].number + 1)
        let path = directory + "/" + RecordFormat.segmentFileName(number)
        let file = try FileSystem.createSegment(path)
        state.nextChunkID = number
        state.rotateBeforeNextAppend = false
        if state.segments[old].durableSize >= state.segments[old].size && !state.segments[old].needsDirectorySync
            || state.segments[old].syncFailure != nil
        {
            state.segments[old].file = nil
        }
        state.segments.append(
            SegmentState(
                number: number,
                path: path,
                file: file,
                size: RecordFormat.segmentHeaderSize,
                durableSize: 0,
                needsDirectorySync: true
            )
        )
        state.totalBytes += RecordFormat.segmentHeaderSize
        guard state.segments[old].file != nil, !state.syncThreadBusy else { return false }
        state.syncThreadBusy = true
        return true
    }

    /// Returns once the record at `position` is on stable storage (fdatasync done), sharing the
    /// fsync with every other caller waiting at the time.
    ///
    /// Returns at once for a chunk whose segment was already deleted (its rows are in ClickHouse).
    /// - Throws: `.io` when the fsync failed (the segment is then retired: later appends go to a new
    ///   one), `.closed` when the spool was closed before the record could be synced.
    public func waitDurable(_ position: SpoolPosition) async throws(SpoolError) {
        let result = await withCheckedContinuation { (continuation: DurabilityContinuation) in
            enum Action {
                case resume(Result<Void, SpoolError>)
                case wait(signal: Bool)
            }
            let action = core.state.withLock { state -> Action in
                guard let index = state.index(ofSegment: position.segment) else { return .resume(.success(())) }
                if let failure = state.segments[index].syncFailure { return .resume(.failure(failure)) }
                if state.segments[index].durableSize >= position.offset { return .resume(.success(())) }
                if state.closed {
                    return .resume(.failure(SpoolError(code: .closed, message: "closed before chunk \(position.chunkID) was synced")))
                }
                state.segments[index].waiters.append((position.offset, continuation))
                guard !state.syncThreadBusy else { return .wait(signal: false) }
                state.syncThreadBusy = true
                return .wait(signal: true)
            }
            switch action {
            case .resume(let result): continuation.resume(returning: result)
            case .wait(let signal): if signal { core.wakeSyncThread.signal() }
            }
        }
        try result.get()
    }

    /// Records that these chunks are in ClickHouse (one `delivered` record, written without fsync)
    /// and deletes every segment, but the active one, whose chunks are all delivered. Unknown or
    /// already delivered ids are ignored. Call it before ``close()``: after it, it does nothing.
    public func markDelivered<S: Sequence>(_ chunkIDs: S) where S.Element == UInt64 {
        let removals = core.state.withLock { state -> SpoolState.Removals? in
            guard !state.closed else { return nil }
            var delivered: [UInt64] = []
            var touched = Set<Int>()
            for id in chunkIDs {
                guard let index = state.index(holdingUndelivered: id) else { continue }
                state.segments[index].undelivered.remove(id)
                state.undeliveredCount -= 1
                delivered.append(id)
                touched.insert(index)
            }
            if !delivered.isEmpty {
                let record = RecordFormat.deliveredRecord(IDRanges(ids: delivered).ranges)
                let failure = record.withUnsafeBytes { state.writeToActive($0) }
                let active = state.segments[state.activeIndex].number
                for index in touched {
                    if failure == nil {
                        state.segments[index].markerSegments.insert(active)
                    } else {
                        state.segments[index].markersUnwritten = true
                    }
                }
            }
            return state.planRemovals()
        }
        guard let removals else { return }
        for continuation in removals.resume { continuation.resume(returning: .success(())) }
        for path in removals.unlinkNow { FileSystem.remove(path) }
        if removals.wakeSyncThread { core.wakeSyncThread.signal() }
    }

    /// Bytes of segment files, including those about to be deleted.
    public var sizeBytes: Int { core.state.withLock { $0.totalBytes } }

    public var undeliveredChunks: Int { core.state.withLock { $0.undeliveredCount } }

    /// How many fdatasync calls the sync thread made (for tests of group commit).
    var fsyncCount: Int { core.state.withLock { $0.fsyncCount } }

    /// Syncs what was written, stops the sync thread and closes the files and the directory lock.
    /// Blocks until that is done. Idempotent; waiters not yet satisfied get `.closed`.
    public func close() {
        let (first, signal) = core.state.withLock { state -> (Bool, Bool) in
            guard !state.closed else { return (false, false) }
            state.closed = true
            guard !state.syncThreadBusy else { return (true, false) }
            state.syncThreadBusy = true
            return (true, true)
        }
        guard first else { return }
        if signal { core.wakeSyncThread.signal() }
        core.syncThreadExited.wait()
        core.state.withLock { state in
            for index in state.segments.indices { state.segments[index].file = nil }
            state.lockFile = nil
        }
    }
}
