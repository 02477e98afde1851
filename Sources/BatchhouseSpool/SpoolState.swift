#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One caller waiting for a record to be on stable storage (``Spool/whenDurable(_:_:)``): called once, on the sync
/// thread, or on the caller's when the record is durable already.
struct DurabilityContinuation: Sendable {
    let done: @Sendable (Result<Void, SpoolError>) -> Void

    func resume(returning result: Result<Void, SpoolError>) { done(result) }
}

/// Where an undelivered chunk's record is in its segment: what a read-back needs and what `spool.max_size` counts.
struct ChunkSlot {
    var offset: Int
    var length: Int
}

/// The undelivered chunks of one segment, by id. A segment's ids are increasing, so this is a flat table indexed
/// from its lowest id rather than a hash table: 16 bytes a chunk, the part of a backlog that stays in memory while its
/// rows wait on disk. A delivered chunk leaves a hole until its segment is reclaimed; holes at the end are trimmed.
struct SlotTable {
    private var base: UInt64 = 0
    private var offsets: [Int] = []
    /// 0 for a hole: a record is never empty.
    private var lengths: [Int] = []
    private(set) var count = 0

    var isEmpty: Bool { count == 0 }

    subscript(id: UInt64) -> ChunkSlot? {
        get {
            guard id >= base, id - base < UInt64(lengths.count) else { return nil }
            let index = Int(id - base)
            return lengths[index] == 0 ? nil : ChunkSlot(offset: offsets[index], length: lengths[index])
        }
        set {
            guard let newValue, newValue.length > 0 else {
                _ = removeValue(forKey: id)
                return
            }
            if lengths.isEmpty {
                base = id
            } else if id < base {
                // Out of order (files moved by hand): make room in front.
                let gap = Int(base - id)
                offsets.insert(contentsOf: repeatElement(0, count: gap), at: 0)
                lengths.insert(contentsOf: repeatElement(0, count: gap), at: 0)
                base = id
            }
            let index = Int(id - base)
            if index >= lengths.count {
                let gap = index - lengths.count + 1
                offsets.append(contentsOf: repeatElement(0, count: gap))
                lengths.append(contentsOf: repeatElement(0, count: gap))
            }
            if lengths[index] == 0 { count += 1 }
            offsets[index] = newValue.offset
            lengths[index] = newValue.length
        }
    }

    mutating func removeValue(forKey id: UInt64) -> ChunkSlot? {
        guard let slot = self[id] else { return nil }
        let index = Int(id - base)
        lengths[index] = 0
        count -= 1
        if count == 0 {
            offsets = []
            lengths = []
            base = 0
        } else if index == lengths.count - 1 {
            // Holes at the end go at once.
            var end = lengths.count
            while end > 0 && lengths[end - 1] == 0 { end -= 1 }
            offsets.removeSubrange(end...)
            lengths.removeSubrange(end...)
        }
        return slot
    }

    /// The ids held, in increasing order.
    var keys: [UInt64] {
        lengths.indices.compactMap { lengths[$0] == 0 ? nil : base + UInt64($0) }
    }
}

/// A batch being sent: its `sending` record, kept so it can be written again (carried forward) when the segment
/// holding it is reclaimed while the batch is still in flight.
struct SendingEntry {
    var segment: UInt64
    var record: [UInt8]
}

/// What the spool knows about one segment file. Lives under the spool's lock.
struct SegmentState {
    let number: UInt64
    let path: String
    /// Open while it is the active segment, and after rotation until its last bytes are synced.
    /// Recovered segments are never written and need no descriptor.
    var file: OpenFile?
    var size: Int
    /// Bytes known to be on stable storage.
    var durableSize: Int
    /// Set when fdatasync failed: nothing more in this file can be promised durable.
    var syncFailure: SpoolError?
    /// A new file is durable only once its directory entry is too.
    var needsDirectorySync: Bool
    /// Chunks in this segment not yet delivered, with where their records are. A few dozen bytes per chunk: the
    /// part of a backlog that stays in memory while its rows wait on disk.
    var undelivered = SlotTable()
    /// The span of chunk ids written to this segment, delivered or not.
    var firstID: UInt64?
    var lastID: UInt64?
    /// Segments holding `delivered` records for this segment's chunks. Deleting one of them would
    /// forget that those chunks were delivered, so their ids are first written again to the active
    /// segment (see ``SpoolState/planRemovals()``).
    var markerSegments: Set<UInt64> = []
    /// A `delivered` record for this segment's chunks could not be written; write them again.
    var markersUnwritten = false
    var waiters: [(offset: Int, continuation: DurabilityContinuation)] = []

    init(number: UInt64, path: String, file: OpenFile?, size: Int, durableSize: Int, needsDirectorySync: Bool) {
        self.number = number
        self.path = path
        self.file = file
        self.size = size
        self.durableSize = durableSize
        self.needsDirectorySync = needsDirectorySync
    }

    var deliveredSpan: [ClosedRange<UInt64>] {
        guard let firstID, let lastID else { return [] }
        return IDRanges.complement(of: undelivered.keys, in: firstID...lastID)
    }
}

/// A fully delivered segment whose file waits for the carried-forward `delivered` record that
/// replaces its own to be synced before it is unlinked.
struct PendingRemoval {
    var path: String
    var bytes: Int
    var segment: UInt64
    var durableSize: Int
}

/// Everything mutable in a spool; every field is guarded by the spool's lock.
struct SpoolState {
    /// Sorted by number; the last one is the active segment, where appends go.
    var segments: [SegmentState]
    var nextChunkID: UInt64
    /// Live segments plus files waiting to be unlinked: the spool's size on disk.
    var totalBytes: Int
    /// Record bytes of undelivered chunks: what `spool.max_size` bounds. Delivered data still in a file does
    /// not count, so the limit clears as soon as ClickHouse has the rows.
    var liveBytes: Int
    var undeliveredCount: Int
    var reserve: SpoolReserve
    /// Chunks delivered whose `delivered` record is not on disk yet (a write failed even with the reserve);
    /// ``planRemovals()`` writes them again on every later call.
    var unwrittenMarkChunks = 0
    /// An append found the disk full (or the reserve short) since the last rollover: a fully delivered active
    /// segment then rolls over whatever its size, to give its space back.
    var diskWasFull = false
    var counters = SpoolStatistics.Counters()
    var pendingRemovals: [PendingRemoval] = []
    /// Batches being sent, by query id (``Spool/recordSending(queryID:batch:chunks:)``).
    var sending: [String: SendingEntry] = [:]
    var rotateBeforeNextAppend = false
    var closed = false
    /// The sync thread is running (or has been signalled to run); see ``Spool`` for the protocol.
    var syncThreadBusy = false
    var fsyncCount = 0
    var lockFile: OpenFile?
    /// The errno of the last failed bookkeeping write, for the caller's log.
    var lastMarkFailure: Int32?

    var activeIndex: Int { segments.count - 1 }

    func index(ofSegment number: UInt64) -> Int? {
        var low = 0
        var high = segments.count
        while low < high {
            let middle = (low + high) / 2
            if segments[middle].number < number {
                low = middle + 1
            } else {
                high = middle
            }
        }
        return low < segments.count && segments[low].number == number ? low : nil
    }

    /// The segment holding an undelivered chunk. A segment's chunk ids are at least its number
    /// and below the next segment's number; the linear fallback only guards against files that
    /// were moved around by hand.
    func index(holdingUndelivered id: UInt64) -> Int? {
        var low = 0
        var high = segments.count
        while low < high {
            let middle = (low + high) / 2
            if segments[middle].number <= id {
                low = middle + 1
            } else {
                high = middle
            }
        }
        if low > 0 && segments[low - 1].undelivered[id] != nil { return low - 1 }
        return segments.firstIndex { $0.undelivered[id] != nil }
    }

    /// Appends a record to the active segment. On a failed write the partial record is cut off;
    /// if even that fails, the next append starts a new segment.
    mutating func writeToActive(_ parts: UnsafeRawBufferPointer...) -> Int32? {
        let index = activeIndex
        guard let file = segments[index].file else { return EBADF }
        let length = parts.reduce(0) { $0 + $1.count }
        let offset = segments[index].size
        if let failure = FileSystem.write(file.descriptor, at: offset, parts) {
            if !FileSystem.truncate(file.descriptor, to: offset) { rotateBeforeNextAppend = true }
            return failure
        }
        segments[index].size += length
        totalBytes += length
        return nil
    }

    /// Writes a record that must fit even on a full disk (delivered marks, carried marks): when the disk is
    /// full, a step of the reserve is freed and the write tried again.
    mutating func writeBookkeeping(_ record: UnsafeRawBufferPointer) -> Int32? {
        while true {
            guard let failure = writeToActive(record) else { return nil }
            guard FileSystem.isNoSpace(failure), releaseReserve() else { return failure }
        }
    }

    /// Frees a step of the reserve for a write that must fit. False when it is used up.
    mutating func releaseReserve() -> Bool {
        let before = reserve.size
        guard reserve.release() else { return false }
        counters.reserveReleasedBytes += before - reserve.size
        return true
    }

    // MARK: Delivery and segment removal

    /// Files to unlink now and waiters to resume, once the lock is released.
    struct Removals {
        var unlinkNow: [String] = []
        var resume: [DurabilityContinuation] = []
        var wakeSyncThread = false
    }

    /// Removes every segment but the active one whose chunks are all delivered. Before that, the
    /// `delivered` ids those files hold for chunks of segments that stay are written again to the
    /// active segment; such files are then unlinked only after that record is synced, so no crash
    /// brings back chunks that ClickHouse already has.
    mutating func planRemovals() -> Removals {
        var result = Removals()
        let active = activeIndex
        let removable = segments[..<active].indices.filter { segments[$0].undelivered.isEmpty }
        // Unwritten marks are retried here too, the active segment's own included.
        guard !removable.isEmpty || unwrittenMarkChunks > 0 else { return result }
        let removedNumbers = Set(removable.map { segments[$0].number })

        let carried = segments.indices.filter { index in
            !removedNumbers.contains(segments[index].number)
                && (segments[index].markersUnwritten || !segments[index].markerSegments.isDisjoint(with: removedNumbers))
        }
        let ranges = IDRanges(ranges: carried.flatMap { segments[$0].deliveredSpan }).ranges
        var carriedTo: (segment: UInt64, size: Int)?
        // `sending` records of batches still in flight move to the active segment, or a crash would forget that
        // they may have landed. One that cannot be written leaves that batch at least once, nothing worse.
        for (queryID, entry) in sending where removedNumbers.contains(entry.segment) {
            let failure = entry.record.withUnsafeBytes { writeBookkeeping($0) }
            if failure == nil {
                sending[queryID]!.segment = segments[active].number
                if segments[active].syncFailure == nil {
                    carriedTo = (segments[active].number, segments[active].size)
                }
            }
        }
        if !ranges.isEmpty {
            let record = RecordFormat.deliveredRecord(ranges)
            let failure = record.withUnsafeBytes { writeBookkeeping($0) }
            // Without the carried record, removing the files would forget deliveries: try again later.
            if let failure {
                counters.markFailures += 1
                lastMarkFailure = failure
                return result
            }
            // A segment whose sync already failed cannot be made durable: do not wait for it.
            if segments[active].syncFailure == nil {
                carriedTo = (segments[active].number, segments[active].size)
            }
        }
        for index in carried {
            segments[index].markerSegments = [segments[active].number]
            segments[index].markersUnwritten = false
        }
        // Every segment's marks are now on disk (or its file goes below, and with it the need for them).
        unwrittenMarkChunks = 0

        for index in removable.reversed() {
            let segment = segments.remove(at: index)
            result.resume += segment.waiters.map(\.continuation)
            if let carriedTo {
                pendingRemovals.append(
                    PendingRemoval(path: segment.path, bytes: segment.size, segment: carriedTo.segment, durableSize: carriedTo.size)
                )
            } else {
                totalBytes -= segment.size
                result.unlinkNow.append(segment.path)
            }
        }
        // Removals that waited for a carried record in a file removed now: that record either
        // moved on with this carry, or nothing kept depends on it any more.
        for index in pendingRemovals.indices.reversed() where removedNumbers.contains(pendingRemovals[index].segment) {
            if let carriedTo {
                pendingRemovals[index].segment = carriedTo.segment
                pendingRemovals[index].durableSize = carriedTo.size
            } else {
                let removal = pendingRemovals.remove(at: index)
                totalBytes -= removal.bytes
                result.unlinkNow.append(removal.path)
            }
        }
        if carriedTo != nil && !syncThreadBusy {
            syncThreadBusy = true
            result.wakeSyncThread = true
        }
        return result
    }

    // MARK: Group commit

    struct SyncTarget {
        var segment: UInt64
        var file: OpenFile
        var size: Int
        var directory: Bool
    }

    enum SyncStep {
        case sync([SyncTarget])
        /// Nothing to do: the thread waits for the next signal.
        case idle
        /// Closed and everything synced: the thread resumes whoever still waits and exits.
        case exit([DurabilityContinuation])
    }

    /// Which segments to sync now: the active one when someone waits on it (or a removal waits
    /// for it, or the spool is closing), and every rotated segment with unsynced bytes.
    mutating func nextSyncStep() -> SyncStep {
        var targets: [SyncTarget] = []
        for index in segments.indices {
            guard let file = segments[index].file, segments[index].syncFailure == nil,
                segments[index].durableSize < segments[index].size || segments[index].needsDirectorySync
            else { continue }
            let number = segments[index].number
            let wanted =
                closed || index != activeIndex || !segments[index].waiters.isEmpty
                || pendingRemovals.contains { $0.segment == number }
            if wanted {
                targets.append(
                    SyncTarget(segment: number, file: file, size: segments[index].size, directory: segments[index].needsDirectorySync)
                )
            }
        }
        if !targets.isEmpty { return .sync(targets) }
        guard closed else {
            syncThreadBusy = false
            return .idle
        }
        var remaining: [DurabilityContinuation] = []
        for index in segments.indices {
            remaining += segments[index].waiters.map(\.continuation)
            segments[index].waiters = []
            segments[index].file = nil
        }
        return .exit(remaining)
    }

    struct SyncCompletion {
        var resume: [(DurabilityContinuation, Result<Void, SpoolError>)] = []
        var unlink: [String] = []
    }

    /// Records what a round of syncs achieved.
    mutating func finishSync(_ results: [(target: SyncTarget, failure: SpoolError?)]) -> SyncCompletion {
        var completion = SyncCompletion()
        for (target, failure) in results {
            fsyncCount += 1
            guard let index = index(ofSegment: target.segment) else { continue }
            if let failure {
                segments[index].syncFailure = failure
                completion.resume += segments[index].waiters.map { ($0.continuation, .failure(failure)) }
                segments[index].waiters = []
                if index == activeIndex {
                    rotateBeforeNextAppend = true
                } else {
                    segments[index].file = nil
                }
                continue
            }
            segments[index].durableSize = max(segments[index].durableSize, target.size)
            if target.directory { segments[index].needsDirectorySync = false }
            let durable = segments[index].durableSize
            var stillWaiting: [(offset: Int, continuation: DurabilityContinuation)] = []
            for waiter in segments[index].waiters {
                if waiter.offset <= durable {
                    completion.resume.append((waiter.continuation, .success(())))
                } else {
                    stillWaiting.append(waiter)
                }
            }
            segments[index].waiters = stillWaiting
            if index != activeIndex && durable >= segments[index].size {
                segments[index].file = nil
            }
        }
        // A failed sync does not hold removals back forever: the worst a crash can then do is
        // replay chunks ClickHouse already has, which at-least-once delivery allows.
        let settled = results.map { ($0.target.segment, $0.failure == nil ? $0.target.size : Int.max) }
        pendingRemovals.removeAll { removal in
            guard settled.contains(where: { $0.0 == removal.segment && $0.1 >= removal.durableSize }) else { return false }
            totalBytes -= removal.bytes
            completion.unlink.append(removal.path)
            return true
        }
        return completion
    }
}
