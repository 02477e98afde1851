#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import BatchhouseCore
import Dispatch
import Synchronization

/// The write-ahead spool (`spool.dir`): every chunk of rows the proxy acknowledges is written here
/// first, so a crash or a kill loses nothing that was not yet in ClickHouse.
///
/// - Segment files `DIR/segment-<20-digit number>.wal` (format in ``RecordFormat``), where the
///   number is the id of the first chunk written to the file. Appends go to the newest segment;
///   it is rotated once it would pass `segmentSize`. A segment is deleted once every chunk in it
///   is delivered (``markDelivered(_:)``); the active one is rolled over first.
/// - A full disk: appends are refused with `.noSpace`, while delivered marks and rollovers take
///   from a preallocated reserve (``SpoolReserve``), so deliveries are never forgotten and space
///   comes back without a restart (docs/spool-and-acks.md, "A full disk").
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
    public let maxSize: Int
    let segmentSize: Int
    let rolloverSize: Int

    /// Opens (creating if needed) the spool in `directory`, reading back what it holds.
    ///
    /// - Parameters:
    ///   - maxSize: record bytes of undelivered chunks beyond which
    ///     ``append(key:rows:endsWithNewline:data:)`` throws `.full`; recovered chunks count too, delivered
    ///     ones do not.
    ///   - segmentSize: a segment is rotated when the next record would take it past this size.
    ///   - reserve: bytes kept preallocated in `DIR/reserve` for delivered marks and rollovers on a full disk
    ///     (``SpoolReserve``); nil picks ``SpoolReserve/defaultTarget(maxSize:filesystemSize:)``.
    ///   - rolloverSize: an active segment whose chunks are all delivered is rolled over (and its file
    ///     reclaimed) once it holds this many bytes; nil picks the smaller of `segmentSize` and 1 MiB.
    /// - Throws: `.io` when the directory cannot be created, locked or read, or when a segment has a
    ///   format version this build does not know. Damaged records are not errors: they are reported
    ///   in the recovery. A full disk is not an error either when there is a segment to go on with.
    public static func open(
        directory: String,
        maxSize: Int,
        segmentSize: Int = 64 << 20,
        reserve reserveTarget: Int? = nil,
        rolloverSize: Int? = nil
    ) throws(SpoolError) -> (Spool, SpoolRecovery) {
        try FileSystem.makePrivateDirectory(directory)
        let lockFile = try FileSystem.lockDirectory(directory)
        let directoryFile = try FileSystem.openDirectory(directory)
        var recovered = try Recovery.run(directory: directory)
        var reserve = SpoolReserve(
            path: directory + "/" + reserveFileName,
            target: reserveTarget
                ?? SpoolReserve.defaultTarget(maxSize: maxSize, filesystemSize: FileSystem.filesystemSize(directory)))

        // A new active segment, from the reserve if the disk is full. Failing that, the newest segment goes
        // on as the active one: recovery must not need a new file to run (docs/spool-and-acks.md, "A full disk").
        let number = recovered.nextChunkID
        let path = directory + "/" + RecordFormat.segmentFileName(number)
        var released = 0
        do throws(SpoolError) {
            let file = try createSegment(path, reserve: &reserve, released: &released)
            recovered.segments.append(
                SegmentState(
                    number: number,
                    path: path,
                    file: file,
                    size: RecordFormat.segmentHeaderSize,
                    durableSize: 0,
                    needsDirectorySync: true
                ))
        } catch {
            guard error.code == .noSpace, var newest = recovered.segments.popLast() else { throw error }
            newest.file = try FileSystem.openSegmentForAppend(newest.path)
            if let validEnd = recovered.newestValidEnd, validEnd >= RecordFormat.segmentHeaderSize,
                validEnd < newest.size, FileSystem.truncate(newest.file!.descriptor, to: validEnd)
            {
                // Nothing valid follows: appending after a torn tail would only make it a corruption in the middle.
                newest.size = validEnd
                newest.durableSize = validEnd
            } else if recovered.newestValidEnd ?? 0 < RecordFormat.segmentHeaderSize {
                throw SpoolError(
                    code: .noSpace,
                    message: "no space for a new segment in \(directory), and \(newest.path) has no valid header to append to")
            }
            recovered.segments.append(newest)
        }
        var state = SpoolState(
            segments: recovered.segments,
            nextChunkID: max(number, recovered.segments.last!.number),
            totalBytes: recovered.segments.reduce(0) { $0 + $1.size },
            liveBytes: recovered.liveBytes,
            undeliveredCount: recovered.chunks.count,
            reserve: reserve
        )
        state.counters.reserveReleasedBytes = released
        state.diskWasFull = state.reserve.isShort
        state.sending = recovered.sending
        state.lockFile = lockFile
        let spool = Spool(
            state: state, directory: directory, directoryFile: directoryFile, maxSize: maxSize, segmentSize: segmentSize,
            rolloverSize: rolloverSize ?? min(segmentSize, 1 << 20))
        spool.core.startSyncThread()
        // Segments whose chunks were all delivered before the restart go now.
        spool.markDelivered([])
        let report = SpoolRecovery(
            chunks: recovered.chunks,
            inDoubt: recovered.inDoubt,
            corruptions: recovered.corruptions,
            segments: recovered.fileCount,
            bytes: recovered.bytes
        )
        return (spool, report)
    }

    /// The preallocated reserve (``SpoolReserve``); not a segment, so recovery and `spool inspect` skip it.
    static let reserveFileName = "reserve"

    /// A new segment file; on a full disk, steps of the reserve are freed until it fits.
    private static func createSegment(
        _ path: String, reserve: inout SpoolReserve, released: inout Int
    ) throws(SpoolError) -> OpenFile {
        while true {
            do throws(SpoolError) {
                return try FileSystem.createSegment(path)
            } catch {
                let before = reserve.size
                guard error.code == .noSpace, reserve.release() else { throw error }
                released += before - reserve.size
            }
        }
    }

    private init(
        state: SpoolState, directory: String, directoryFile: OpenFile, maxSize: Int, segmentSize: Int, rolloverSize: Int
    ) {
        self.core = SpoolCore(state: state, directoryFile: directoryFile)
        self.directory = directory
        self.maxSize = maxSize
        self.segmentSize = segmentSize
        self.rolloverSize = rolloverSize
    }

    deinit { close() }

    /// Writes one chunk (one request's rows for one key) and returns where it is. The record is in
    /// the kernel when this returns, not necessarily on disk: see ``waitDurable(_:)``.
    ///
    /// Every check comes before the write, and a write that fails is cut off again, so a refused request
    /// leaves nothing in the spool.
    /// - Throws: `.full` when the undelivered chunks would pass `maxSize`; `.noSpace` when the disk is full
    ///   (ENOSPC, EDQUOT) or the reserve is in use and cannot be allocated back; `.io` when the write failed
    ///   otherwise; `.closed` after ``close()``.
    public func append(key: BatchKey, rows: Int, endsWithNewline: Bool, data: UnsafeRawBufferPointer) throws(SpoolError) -> SpoolPosition {
        // Encoding and most of the checksum happen before taking the lock.
        guard var record = EncodedChunk(key: key, rows: rows, endsWithNewline: endsWithNewline, data: data) else {
            throw SpoolError(code: .io, message: "a chunk of \(data.count) bytes is larger than a spool record can hold (4 GiB)")
        }
        let (position, wake) = try core.state.withLock { state throws(SpoolError) -> (SpoolPosition, Bool) in
            guard !state.closed else { throw SpoolError(code: .closed, message: "cannot append") }
            guard state.liveBytes + record.recordLength <= maxSize else {
                state.counters.refusedMaxSize += 1
                throw full(state, record.recordLength)
            }
            // Data never takes from the reserve: while it is short, new rows wait until it can be made whole.
            guard state.reserve.replenish() else {
                state.counters.refusedNoSpace += 1
                state.diskWasFull = true
                throw SpoolError(
                    code: .noSpace,
                    message: "the disk is full: \(state.reserve.size) of the \(state.reserve.target) bytes reserved for delivered marks are left"
                )
            }
            var wake = false
            // Only the size: a copy of the segment would make the insert below copy its id set.
            let activeSize = state.segments[state.activeIndex].size
            if state.rotateBeforeNextAppend
                || (activeSize > RecordFormat.segmentHeaderSize && activeSize + record.recordLength > segmentSize)
            {
                do throws(SpoolError) {
                    wake = try rotate(&state, fromReserve: false)
                } catch {
                    count(error, in: &state)
                    throw error
                }
            }

            let id = state.nextChunkID
            record.seal(id: id)
            let failure = record.head.withUnsafeBytes { head in state.writeToActive(head, data) }
            let index = state.activeIndex
            if let failure {
                let error = FileSystem.ioError("cannot append to", state.segments[index].path, failure)
                count(error, in: &state)
                throw error
            }
            state.nextChunkID += 1
            state.undeliveredCount += 1
            state.liveBytes += record.recordLength
            state.segments[index].undelivered[id] = ChunkSlot(
                offset: state.segments[index].size - record.recordLength, length: record.recordLength)
            if state.segments[index].firstID == nil { state.segments[index].firstID = id }
            state.segments[index].lastID = id
            let position = SpoolPosition(chunkID: id, segment: state.segments[index].number, offset: state.segments[index].size)
            CrashPoint.afterSpoolWrite.reach()
            return (position, wake)
        }
        if wake { core.wakeSyncThread.signal() }
        return position
    }

    func count(_ error: SpoolError, in state: inout SpoolState) {
        if error.code == .noSpace {
            state.counters.refusedNoSpace += 1
            state.diskWasFull = true
        } else {
            state.counters.failedIO += 1
        }
    }

    /// `pending`: bytes of chunks taken in the same batch, not written yet.
    func full(_ state: SpoolState, _ needed: Int, pending: Int = 0) -> SpoolError {
        SpoolError(
            code: .full,
            message:
                "\(state.liveBytes + pending) bytes of undelivered rows spooled, \(needed) more would pass spool.max_size (\(maxSize) bytes)"
        )
    }

    /// Starts a new active segment. The old one keeps its descriptor until the sync thread has
    /// synced its last bytes. Returns whether the sync thread must be signalled. `fromReserve`: on a
    /// full disk, steps of the reserve are freed until the new file fits (a rollover that gives space back).
    func rotate(_ state: inout SpoolState, fromReserve: Bool) throws(SpoolError) -> Bool {
        let old = state.activeIndex
        let number = max(state.nextChunkID, state.segments[old].number + 1)
        let path = directory + "/" + RecordFormat.segmentFileName(number)
        let file: OpenFile
        if fromReserve {
            var released = 0
            file = try Self.createSegment(path, reserve: &state.reserve, released: &released)
            state.counters.reserveReleasedBytes += released
        } else {
            file = try FileSystem.createSegment(path)
        }
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

    /// An active segment whose chunks are all delivered and that has grown to `rolloverSize` (after the disk
    /// was found full: to 16 KiB) is replaced by a new one, so ``SpoolState/planRemovals()`` can reclaim its file
    /// without waiting for more rows to fill it.
    private func rollOverIfDelivered(_ state: inout SpoolState) -> Bool {
        let active = state.activeIndex
        let size = state.segments[active].size
        guard state.segments[active].undelivered.isEmpty,
            size >= rolloverSize || (state.diskWasFull && size >= 16 << 10)
        else { return false }
        do throws(SpoolError) {
            let wake = try rotate(&state, fromReserve: true)
            state.diskWasFull = false
            return wake
        } catch {
            // The segment stays active; the next mark tries again.
            return false
        }
    }

    /// Returns once the record at `position` is on stable storage (fdatasync done), sharing the
    /// fsync with every other caller waiting at the time.
    ///
    /// Returns at once for a chunk whose segment was already deleted (its rows are in ClickHouse).
    /// - Throws: `.io` when the fsync failed (the segment is then retired: later appends go to a new
    ///   one), `.closed` when the spool was closed before the record could be synced.
    public func waitDurable(_ position: SpoolPosition) async throws(SpoolError) {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Void, SpoolError>, Never>) in
            whenDurable(position) { continuation.resume(returning: $0) }
        }
        try result.get()
    }

    /// Calls `done` once the record at `position` is on stable storage, or with the error that keeps it from
    /// getting there, as ``waitDurable(_:)`` returns: on the sync thread, which shares one fsync among every
    /// waiter of the time; at once on this thread when nothing needs syncing; or on the thread that marked the
    /// segment's last chunks delivered. Never under the spool's lock. No task, no thread hop of its own: `done`
    /// should only hand the result on (a `durable` ack completes on its connection's event loop).
    public func whenDurable(_ position: SpoolPosition, _ done: @escaping @Sendable (Result<Void, SpoolError>) -> Void) {
        let continuation = DurabilityContinuation(done: done)
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

    /// Records that these chunks are in ClickHouse (one `delivered` record, written without fsync)
    /// and deletes every segment, but the active one, whose chunks are all delivered; an active segment
    /// whose chunks are all delivered is rolled over first once it holds `rolloverSize` bytes. Unknown or
    /// already delivered ids are ignored. Call it before ``close()``: after it, it does nothing.
    ///
    /// The record is written from the reserve when the disk is full. If even that fails, the deliveries are
    /// kept in memory and written again by every later call (and ``retryUnwrittenMarks()``): the outcome says
    /// how many are waiting, for the caller's log.
    @discardableResult
    public func markDelivered<S: Sequence>(_ chunkIDs: S) -> SpoolMarkOutcome where S.Element == UInt64 {
        let result = core.state.withLock { state -> (SpoolState.Removals, SpoolMarkOutcome)? in
            guard !state.closed else { return nil }
            var delivered: [UInt64] = []
            var touched = Set<Int>()
            for id in chunkIDs {
                guard let index = state.index(holdingUndelivered: id),
                    let bytes = state.segments[index].undelivered.removeValue(forKey: id)?.length
                else { continue }
                state.undeliveredCount -= 1
                state.liveBytes -= bytes
                delivered.append(id)
                touched.insert(index)
            }
            if !delivered.isEmpty {
                let record = RecordFormat.deliveredRecord(IDRanges(ids: delivered).ranges)
                let failure = record.withUnsafeBytes { state.writeBookkeeping($0) }
                let active = state.segments[state.activeIndex].number
                for index in touched {
                    if failure == nil {
                        state.segments[index].markerSegments.insert(active)
                    } else {
                        state.segments[index].markersUnwritten = true
                    }
                }
                if let failure {
                    state.counters.markFailures += 1
                    state.lastMarkFailure = failure
                    state.unwrittenMarkChunks += delivered.count
                }
            }
            let wake = rollOverIfDelivered(&state)
            var removals = state.planRemovals()
            if wake { removals.wakeSyncThread = true }
            // A carried record written by planRemovals can itself take a fully delivered active segment to
            // rolloverSize: decide again, and reclaim the segment rolled over now in the same call.
            let active = state.segments[state.activeIndex].number
            if rollOverIfDelivered(&state) { removals.wakeSyncThread = true }
            if state.segments[state.activeIndex].number != active {
                let more = state.planRemovals()
                removals.unlinkNow += more.unlinkNow
                removals.resume += more.resume
                if more.wakeSyncThread { removals.wakeSyncThread = true }
            }
            var outcome = SpoolMarkOutcome.written
            if state.unwrittenMarkChunks > 0 {
                outcome.unwrittenChunks = state.unwrittenMarkChunks
                outcome.failure = state.lastMarkFailure.map {
                    FileSystem.message("cannot write a delivered record to", state.segments[state.activeIndex].path, $0)
                }
            }
            core.marksPending.store(state.unwrittenMarkChunks > 0, ordering: .relaxed)
            return (removals, outcome)
        }
        guard let (removals, outcome) = result else { return .written }
        for continuation in removals.resume { continuation.resume(returning: .success(())) }
        for path in removals.unlinkNow { FileSystem.remove(path) }
        if removals.wakeSyncThread { core.wakeSyncThread.signal() }
        return outcome
    }

    /// Writes deliveries whose mark could not be written before (cheap when there are none: one atomic load).
    /// The engine calls it on its flush ticks, so a mark waits at most one tick once space is back.
    @discardableResult
    public func retryUnwrittenMarks() -> SpoolMarkOutcome {
        guard core.marksPending.load(ordering: .relaxed) else { return .written }
        return markDelivered([])
    }

    // MARK: Reading back

    private struct Wanted {
        var id: UInt64
        var slot: ChunkSlot
    }

    /// Gap between two wanted records below which one read covers both (and the bytes between them).
    static let readGap = 64 << 10
    /// The most one read takes at a time, unless a single record is larger: the read-ahead's bound.
    static let readWindow = 1 << 20

    /// Reads the rows of undelivered chunks back from their segments, for a batch whose turn has come
    /// (docs/spool-and-acks.md, "The spool as backlog"). Records are read in file order, neighbours in one
    /// pread(2) of at most ``readWindow`` bytes, and each is verified (magic, checksum, id) before its rows are
    /// used. Runs outside the spool's lock but for the lookup, so appends go on meanwhile.
    public func readChunks(_ ids: [UInt64]) -> SpoolReadOutcome {
        var outcome = SpoolReadOutcome()
        let groups = core.state.withLock { state -> [(path: String, wanted: [Wanted])] in
            var bySegment: [UInt64: (path: String, wanted: [Wanted])] = [:]
            for id in ids {
                guard let index = state.index(holdingUndelivered: id), let slot = state.segments[index].undelivered[id]
                else {
                    outcome.unreadable[id] = "chunk \(id) is not undelivered in the spool"
                    continue
                }
                let segment = state.segments[index]
                bySegment[segment.number, default: (segment.path, [])].wanted.append(Wanted(id: id, slot: slot))
            }
            return bySegment.sorted { $0.key < $1.key }.map(\.value)
        }
        for (path, unsorted) in groups {
            let wanted = unsorted.sorted { $0.slot.offset < $1.slot.offset }
            let file: OpenFile
            do throws(SpoolError) {
                file = try FileSystem.openForReading(path)
            } catch {
                // A segment that is gone (removed by hand) will not come back; anything else may be passing.
                let gone = access(path, F_OK) != 0 && errno == ENOENT
                for item in wanted {
                    if gone { outcome.unreadable[item.id] = error.message } else { outcome.failed[item.id] = error.message }
                }
                continue
            }
            var start = 0
            while start < wanted.count {
                // One window: neighbours close enough, up to the read-ahead bound.
                let windowStart = wanted[start].slot.offset
                var windowEnd = windowStart + wanted[start].slot.length
                var end = start + 1
                while end < wanted.count {
                    let next = wanted[end].slot
                    guard next.offset - windowEnd <= Self.readGap, next.offset + next.length - windowStart <= Self.readWindow
                    else { break }
                    windowEnd = max(windowEnd, next.offset + next.length)
                    end += 1
                }
                let (bytes, failure) = FileSystem.readAt(file.descriptor, offset: windowStart, count: windowEnd - windowStart)
                bytes.withUnsafeBytes { buffer in
                    let scanner = SegmentScanner(bytes: buffer, fileName: path)
                    for item in wanted[start..<end] {
                        if let failure {
                            outcome.failed[item.id] = FileSystem.message("cannot read", path, failure)
                            continue
                        }
                        let check = scanner.check(item.slot.offset - windowStart)
                        guard case .valid(let type, let payload) = check, type == RecordFormat.RecordType.chunk.rawValue else {
                            if case .invalid(let reason) = check {
                                outcome.unreadable[item.id] = "\(path) at offset \(item.slot.offset): \(reason)"
                            } else {
                                outcome.unreadable[item.id] = "\(path) at offset \(item.slot.offset): not a chunk record"
                            }
                            continue
                        }
                        do throws(RecordDecodingError) {
                            let body = try RecordFormat.decodeChunkBody(payload)
                            guard body.id == item.id else {
                                outcome.unreadable[item.id] =
                                    "\(path) at offset \(item.slot.offset): holds chunk \(body.id), not \(item.id)"
                                continue
                            }
                            outcome.bodies[item.id] = SpoolChunkBody(
                                id: body.id, rows: body.rows, endsWithNewline: body.endsWithNewline, data: Array(body.data))
                        } catch {
                            outcome.unreadable[item.id] = "\(path) at offset \(item.slot.offset): \(error.reason)"
                        }
                    }
                }
                start = end
            }
        }
        return outcome
    }

    // MARK: Batches being sent

    /// Records that a batch is about to be sent under `queryID` with these chunks (a `sending` record, written
    /// like a delivered mark: one pwrite, no fsync). After a crash, recovery reports the batch in
    /// ``SpoolRecovery/inDoubt`` until its chunks are marked delivered, so the next start can ask ClickHouse
    /// whether that query finished before sending the rows again (docs/spool-and-acks.md, "Exactly once").
    /// Returns false when the record could not be written (a full disk): that batch is then at least once.
    @discardableResult
    public func recordSending(queryID: String, batch: UInt64, chunks: [UInt64]) -> Bool {
        let record = RecordFormat.sendingRecord(queryID: queryID, batch: batch, chunks: chunks.sorted())
        let written = core.state.withLock { state -> Bool in
            guard !state.closed else { return false }
            // Not from the reserve: that is kept for delivered marks, which matter more on a full disk.
            guard record.withUnsafeBytes({ state.writeToActive($0) }) == nil else { return false }
            state.sending[queryID] = SendingEntry(segment: state.segments[state.activeIndex].number, record: record)
            return true
        }
        if written { CrashPoint.afterSendingMark.reach() }
        return written
    }

    /// The batch sent under `queryID` is settled (its chunks marked delivered, or left for a replay that will
    /// record itself again): its `sending` record need not be carried forward any more.
    public func finishSending(queryID: String) {
        core.state.withLock { _ = $0.sending.removeValue(forKey: queryID) }
    }

    /// Records how a batch found in doubt at start was settled, for `batchhouse spool inspect` and for the next
    /// start (a batch settled as landed is not asked about again).
    public func recordSettled(queryID: String, outcome: SettledOutcome, note: String) {
        let record = RecordFormat.settledRecord(queryID: queryID, outcome: outcome, note: note)
        core.state.withLock { state in
            guard !state.closed else { return }
            _ = record.withUnsafeBytes { state.writeToActive($0) }
        }
    }

    /// Whether a `sending` record of `queryID` is kept (the batch was recorded as being sent and is not settled).
    public func isSending(queryID: String) -> Bool { core.state.withLock { $0.sending[queryID] != nil } }

    /// Batches being sent now (their `sending` records are kept).
    public var sendingBatches: Int { core.state.withLock { $0.sending.count } }

    /// Bytes of segment files, including those about to be deleted.
    public var sizeBytes: Int { core.state.withLock { $0.totalBytes } }

    public var undeliveredChunks: Int { core.state.withLock { $0.undeliveredCount } }

    /// Sizes, the reserve and failure counts, for `/metrics`.
    public var statistics: SpoolStatistics {
        core.state.withLock { state in
            SpoolStatistics(
                fileBytes: state.totalBytes, liveBytes: state.liveBytes, undeliveredChunks: state.undeliveredCount,
                reserveBytes: state.reserve.size, reserveTarget: state.reserve.target,
                unwrittenMarks: state.unwrittenMarkChunks, counters: state.counters)
        }
    }

    /// How many fdatasync calls the sync thread made (for tests of group commit).
    var fsyncCount: Int { core.state.withLock { $0.fsyncCount } }

    /// Syncs what was written, stops the sync thread and closes the files and the directory lock.
    /// Blocks until that is done. Idempotent; waiters not yet satisfied get `.closed`.
    public func close() {
        // Deliveries whose mark is still in memory get a last chance before the files are closed.
        retryUnwrittenMarks()
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
            state.reserve.closeFile()
            state.lockFile = nil
        }
    }
}
