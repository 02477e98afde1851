import BatchhouseCore

/// Chunk records made ready outside the spool's lock and written together by ``Spool/append(_:)``: one write for
/// all of them where they go to one segment. The records lie back to back in `bytes`, each a record header and its
/// payload (the rows included), so a run of them is written as it is, with no copy. An event loop collects the
/// requests of one turn in one batch (docs/spool-and-acks.md, "One write per turn").
public struct SpoolBatch: Sendable {
    struct Record: Sendable {
        var start: Int
        var headLength: Int
        var dataLength: Int
        var tailCRC: UInt32
        var tailLength: Int
        var length: Int { headLength + dataLength }
    }

    private(set) var bytes: [UInt8] = []
    private(set) var records: [Record] = []

    public init() {}

    public var count: Int { records.count }
    public var isEmpty: Bool { records.isEmpty }
    /// Bytes the records take.
    public var byteCount: Int { bytes.count }

    /// Adds one chunk (one request's rows for one key). Returns its index, or nil when it is larger than a record
    /// can hold (4 GiB).
    public mutating func add(key: BatchKey, rows: Int, endsWithNewline: Bool, data: UnsafeRawBufferPointer) -> Int? {
        guard let encoded = EncodedChunk(key: key, rows: rows, endsWithNewline: endsWithNewline, data: data) else {
            return nil
        }
        let start = bytes.count
        bytes.append(contentsOf: encoded.head)
        bytes.append(contentsOf: data)
        records.append(
            Record(
                start: start, headLength: encoded.head.count, dataLength: data.count, tailCRC: encoded.tailCRC,
                tailLength: encoded.tailLength))
        return records.count - 1
    }

    /// The rows of the chunk at `index`, as they were given to `add`.
    public func withData<T>(of index: Int, _ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        let record = records[index]
        return try bytes.withUnsafeBytes { all in
            try body(UnsafeRawBufferPointer(rebasing: all[(record.start + record.headLength)..<(record.start + record.length)]))
        }
    }

    /// Writes the id into the record's payload and the checksum into its header.
    mutating func seal(_ index: Int, id: UInt64) {
        let record = records[index]
        bytes.withUnsafeMutableBytes { all in
            EncodedChunk.seal(all, at: record.start, id: id, tailCRC: record.tailCRC, tailLength: record.tailLength)
        }
    }
}

extension Spool {
    /// Writes every chunk of `batch`, each checked as ``append(key:rows:endsWithNewline:data:)`` checks it (a
    /// refused one is left out and the others go on), under one lock and with one write per run of chunks that go
    /// to one segment. Returns each chunk's place or why it was refused, in the batch's order. A write that fails
    /// refuses every chunk in it and is cut off again, so a refused chunk leaves nothing in the spool.
    public func append(_ batch: inout SpoolBatch) -> [Result<SpoolPosition, SpoolError>] {
        guard !batch.isEmpty else { return [] }
        var results: [Result<SpoolPosition, SpoolError>?] = Array(repeating: nil, count: batch.count)
        let wake = core.state.withLock { state -> Bool in
            var wake = false
            // The chunks sealed for the write being gathered: batch indices, back to back in `batch.bytes`.
            var run: [Int] = []
            var runBytes = 0

            func writeRun() {
                guard let first = run.first else { return }
                let start = batch.records[first].start
                let failure = batch.bytes.withUnsafeBytes { all in
                    state.writeToActive(UnsafeRawBufferPointer(rebasing: all[start..<(start + runBytes)]))
                }
                let index = state.activeIndex
                if let failure {
                    let error = FileSystem.ioError("cannot append to", state.segments[index].path, failure)
                    // Counted per chunk refused, as one write each would be.
                    for chunk in run {
                        count(error, in: &state)
                        results[chunk] = .failure(error)
                    }
                } else {
                    var end = state.segments[index].size - runBytes
                    for chunk in run {
                        let id = state.nextChunkID
                        let length = batch.records[chunk].length
                        end += length
                        state.nextChunkID += 1
                        state.undeliveredCount += 1
                        state.liveBytes += length
                        state.segments[index].undelivered[id] = ChunkSlot(offset: end - length, length: length)
                        if state.segments[index].firstID == nil { state.segments[index].firstID = id }
                        state.segments[index].lastID = id
                        results[chunk] = .success(
                            SpoolPosition(chunkID: id, segment: state.segments[index].number, offset: end))
                    }
                    CrashPoint.afterSpoolWrite.reach()
                }
                run = []
                runBytes = 0
            }

            for chunk in 0..<batch.count {
                let length = batch.records[chunk].length
                guard !state.closed else {
                    results[chunk] = .failure(SpoolError(code: .closed, message: "cannot append"))
                    continue
                }
                guard state.liveBytes + runBytes + length <= maxSize else {
                    state.counters.refusedMaxSize += 1
                    results[chunk] = .failure(full(state, length, pending: runBytes))
                    continue
                }
                guard state.reserve.replenish() else {
                    state.counters.refusedNoSpace += 1
                    state.diskWasFull = true
                    results[chunk] = .failure(
                        SpoolError(
                            code: .noSpace,
                            message:
                                "the disk is full: \(state.reserve.size) of the \(state.reserve.target) bytes reserved for delivered marks are left"
                        ))
                    continue
                }
                let activeSize = state.segments[state.activeIndex].size + runBytes
                if state.rotateBeforeNextAppend
                    || (activeSize > RecordFormat.segmentHeaderSize && activeSize + length > segmentSize)
                {
                    writeRun()
                    do throws(SpoolError) {
                        if try rotate(&state, fromReserve: false) { wake = true }
                    } catch {
                        count(error, in: &state)
                        results[chunk] = .failure(error)
                        continue
                    }
                }
                // A chunk left out breaks the run: the next one starts a new write.
                if let last = run.last, batch.records[last].start + batch.records[last].length != batch.records[chunk].start {
                    writeRun()
                }
                batch.seal(chunk, id: state.nextChunkID + UInt64(run.count))
                run.append(chunk)
                runBytes += length
            }
            writeRun()
            return wake
        }
        if wake { core.wakeSyncThread.signal() }
        return results.map { $0 ?? .failure(SpoolError(code: .io, message: "not written")) }
    }
}
