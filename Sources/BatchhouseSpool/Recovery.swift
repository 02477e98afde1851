import BatchhouseCore

/// Reads a spool directory back at start.
///
/// Segments are read newest first: a `delivered` record is always written after its chunk, so in
/// the chunk's segment or a newer one. By the time a segment is read, every delivery of its chunks
/// is known, and only undelivered chunks are decoded and kept, without their data (chunks of one key share its
/// storage): memory holds the bookkeeping of what to replay plus one segment, not the spool's rows.
enum Recovery {
    struct Result {
        /// Sorted by number, none of them open.
        var segments: [SegmentState]
        var chunks: [SpooledChunk]
        var inDoubt: [InDoubtBatch]
        /// The `sending` records of `inDoubt`, by query id: the segment holding each and its bytes.
        var sending: [String: SendingEntry]
        var corruptions: [SpoolCorruption]
        var fileCount: Int
        var bytes: Int
        /// Above every chunk id and segment number seen, so new segment names never collide.
        var nextChunkID: UInt64
        /// Record bytes of the undelivered chunks.
        var liveBytes: Int
        /// Where the newest segment's valid records end (see ``SegmentScanner/validEnd``).
        var newestValidEnd: Int?
    }

    static func run(directory: String) throws(SpoolError) -> Result {
        let files = try FileSystem.segmentFiles(in: directory)
        var delivered = IDRanges()
        var markers: [(segment: UInt64, ranges: IDRanges)] = []
        var segments: [SegmentState] = []
        var chunks: [SpooledChunk] = []
        var kept = Set<UInt64>()
        var corruptions: [SpoolCorruption] = []
        var bytesTotal = 0
        var highest: UInt64 = files.last?.number ?? 0
        var liveBytes = 0
        var newestValidEnd: Int?
        // Chunks of one key share its storage.
        var keys: [BatchKey: BatchKey] = [:]
        // Per query id: the outcome of its newest record if that is a `settled` one, and its newest `sending`
        // record with the segment holding it. Files are read newest first, and each file's records newest first.
        var newestRecord: [String: SettledOutcome?] = [:]
        var newestSending: [String: (segment: UInt64, batch: UInt64, chunks: [UInt64])] = [:]

        for (number, name) in files.reversed() {
            let path = directory + "/" + name
            FileSystem.setPrivate(path)
            let bytes = try FileSystem.readFile(path)
            bytesTotal += bytes.count
            var segment = SegmentState(
                number: number,
                path: path,
                file: nil,
                size: bytes.count,
                durableSize: bytes.count,
                needsDirectorySync: false
            )
            var fileMarkers: [ClosedRange<UInt64>] = []
            var chunkRecords: [(offset: Int, payload: Range<Int>)] = []
            var batchRecords: [(queryID: String, sending: (batch: UInt64, chunks: [UInt64])?, settled: SettledOutcome?)] = []
            var scanner: SegmentScanner?
            let outcome = bytes.withUnsafeBytes { buffer in
                var reader = SegmentScanner(bytes: buffer, fileName: name)
                let outcome = reader.scan { type, payload, offset in
                    let start = offset + RecordFormat.recordHeaderSize
                    switch type {
                    case .chunk:
                        chunkRecords.append((offset, start..<start + payload.count))
                    case .delivered:
                        do throws(RecordDecodingError) {
                            fileMarkers += try RecordFormat.decodeDelivered(payload)
                        } catch {
                            corruptions.append(
                                SpoolCorruption(segment: name, offset: offset, reason: "malformed delivered record: \(error.reason)")
                            )
                        }
                    case .sending, .settled:
                        do throws(RecordDecodingError) {
                            if type == .sending {
                                let record = try RecordFormat.decodeSending(payload)
                                batchRecords.append((record.queryID, (record.batch, record.chunks), nil))
                            } else {
                                let record = try RecordFormat.decodeSettled(payload)
                                batchRecords.append((record.queryID, nil, record.outcome))
                            }
                        } catch {
                            corruptions.append(
                                SpoolCorruption(segment: name, offset: offset, reason: "malformed \(type) record: \(error.reason)"))
                        }
                    }
                }
                scanner = reader
                return outcome
            }
            if case .unsupportedVersion(let version) = outcome {
                throw SpoolError(
                    code: .io,
                    message: "\(path) has spool format version \(version); this build reads version \(RecordFormat.version). Move it aside to start."
                )
            }
            for record in batchRecords.reversed() {
                if newestRecord[record.queryID] == nil { newestRecord[record.queryID] = .some(record.settled) }
                if let sending = record.sending, newestSending[record.queryID] == nil {
                    newestSending[record.queryID] = (number, sending.batch, sending.chunks)
                }
            }
            corruptions += scanner?.corruptions ?? []
            if number == files.last?.number { newestValidEnd = scanner?.validEnd }

            if !fileMarkers.isEmpty {
                let ranges = IDRanges(ranges: fileMarkers)
                markers.append((number, ranges))
                delivered = IDRanges(ranges: delivered.ranges + ranges.ranges)
                highest = max(highest, ranges.ranges.last!.upperBound)
            }
            bytes.withUnsafeBytes { buffer in
                for record in chunkRecords {
                    let payload = UnsafeRawBufferPointer(rebasing: buffer[record.payload])
                    guard payload.count >= 8 else {
                        corruptions.append(SpoolCorruption(segment: name, offset: record.offset, reason: "malformed chunk record: no id"))
                        continue
                    }
                    let id = UInt64(littleEndian: payload.loadUnaligned(as: UInt64.self))
                    segment.firstID = min(segment.firstID ?? id, id)
                    segment.lastID = max(segment.lastID ?? id, id)
                    highest = max(highest, id)
                    if delivered.contains(id) { continue }
                    do throws(RecordDecodingError) {
                        var chunk = try RecordFormat.decodeChunk(payload)
                        if kept.contains(id) {
                            corruptions.append(SpoolCorruption(segment: name, offset: record.offset, reason: "duplicate chunk id \(id), skipped"))
                            continue
                        }
                        kept.insert(id)
                        if let shared = keys[chunk.key] {
                            chunk.key = shared
                        } else {
                            keys[chunk.key] = chunk.key
                        }
                        let bytes = RecordFormat.recordHeaderSize + payload.count
                        segment.undelivered[id] = ChunkSlot(offset: record.offset, length: bytes)
                        liveBytes += bytes
                        chunks.append(chunk)
                    } catch {
                        corruptions.append(
                            SpoolCorruption(segment: name, offset: record.offset, reason: "malformed chunk record: \(error.reason)")
                        )
                    }
                }
            }
            segments.append(segment)
        }

        segments.reverse()
        for index in segments.indices {
            guard let first = segments[index].firstID, let last = segments[index].lastID else { continue }
            for marker in markers where marker.segment >= segments[index].number && marker.ranges.overlaps(first...last) {
                segments[index].markerSegments.insert(marker.segment)
            }
        }
        chunks.sort { $0.id < $1.id }

        // A batch is in doubt while any of its chunks is undelivered, unless a `settled` record says it landed
        // (the marks that follow it were cut short): then it is settled again without asking.
        var inDoubt: [InDoubtBatch] = []
        var sending: [String: SendingEntry] = [:]
        for (queryID, entry) in newestSending {
            let (batch, batchChunks) = (entry.batch, entry.chunks)
            let undelivered = batchChunks.filter { kept.contains($0) }
            guard !undelivered.isEmpty else { continue }
            // The newest record decides. `notSent`, or `resent` with no newer `sending` record (the resend never
            // went out, or its rest went as a batch of its own): nothing of it can have landed since it was asked.
            // `atLeastOnce` stays in doubt: it was never known.
            if let newest = newestRecord[queryID], let outcome = newest, outcome == .notSent || outcome == .resent {
                continue
            }
            inDoubt.append(
                InDoubtBatch(
                    queryID: queryID, batch: batch, chunks: batchChunks, complete: undelivered.count == batchChunks.count,
                    settledLanded: newestRecord[queryID] == .some(.landed)))
            sending[queryID] = SendingEntry(
                segment: entry.segment,
                record: RecordFormat.sendingRecord(queryID: queryID, batch: batch, chunks: batchChunks))
        }
        inDoubt.sort { ($0.chunks.first ?? 0, $0.queryID) < ($1.chunks.first ?? 0, $1.queryID) }
        corruptions.sort { ($0.segment, $0.offset) < ($1.segment, $1.offset) }
        return Result(
            segments: segments,
            chunks: chunks,
            inDoubt: inDoubt,
            sending: sending,
            corruptions: corruptions,
            fileCount: files.count,
            bytes: bytesTotal,
            nextChunkID: highest == .max ? .max : max(highest + 1, 1),
            liveBytes: liveBytes,
            newestValidEnd: newestValidEnd
        )
    }
}

extension RecordDecodingError {
    var reason: String {
        switch self {
        case .malformed(let reason): reason
        }
    }
}
