/// `batchhouse spool inspect DIR`: what a spool directory holds, read-only (it takes no lock and
/// writes nothing, so it can run beside a live proxy; a record being written at that moment may
/// then show as a torn tail).
///
/// Tables are named `db.table` with their format; identities, settings and data are never shown.
public enum SpoolInspector {
    public static func report(directory: String) -> String {
        let files: [(number: UInt64, name: String)]
        do throws(SpoolError) {
            files = try FileSystem.segmentFiles(in: directory)
        } catch {
            return "spool \(directory): \(error.message)\n"
        }

        struct SegmentSummary {
            var name: String
            var bytes = 0
            var chunkRecords = 0
            var deliveredRecords = 0
            var undelivered = 0
            var firstID: UInt64?
            var lastID: UInt64?
            var problem: String?
        }
        struct TableSummary {
            var chunks = 0
            var rows = 0
            var bytes = 0
            var oldestID = UInt64.max
        }

        var delivered = IDRanges()
        var summaries: [SegmentSummary] = []
        var tables: [String: TableSummary] = [:]
        var corruptions: [SpoolCorruption] = []
        // Batches being sent and how those found in doubt at a start were settled, by query id (newest record).
        var sendingBatches: [String: (batch: UInt64, chunks: [UInt64])] = [:]
        var settledBatches: [String: (SettledOutcome, String)] = [:]
        var newestIsSending: [String: Bool] = [:]

        // Newest first, as in recovery: a chunk's deliveries are all known when its segment is read.
        for (_, name) in files.reversed() {
            var summary = SegmentSummary(name: name)
            let bytes: [UInt8]
            do throws(SpoolError) {
                bytes = try FileSystem.readFile(directory + "/" + name)
            } catch {
                summary.problem = error.message
                summaries.append(summary)
                continue
            }
            summary.bytes = bytes.count
            bytes.withUnsafeBytes { buffer in
                var scanner = SegmentScanner(bytes: buffer, fileName: name)
                var chunkRecords: [(offset: Int, payload: UnsafeRawBufferPointer)] = []
                var markers: [ClosedRange<UInt64>] = []
                var batchRecords: [(queryID: String, batch: UInt64?, chunks: [UInt64]?, settled: (SettledOutcome, String)?)] = []
                let outcome = scanner.scan { type, payload, offset in
                    switch type {
                    case .chunk:
                        chunkRecords.append((offset, payload))
                    case .sending:
                        if let record = try? RecordFormat.decodeSending(payload) {
                            batchRecords.append((record.queryID, record.batch, record.chunks, nil))
                        } else {
                            corruptions.append(SpoolCorruption(segment: name, offset: offset, reason: "malformed sending record"))
                        }
                    case .settled:
                        if let record = try? RecordFormat.decodeSettled(payload) {
                            batchRecords.append((record.queryID, nil, nil, (record.outcome, record.note)))
                        } else {
                            corruptions.append(SpoolCorruption(segment: name, offset: offset, reason: "malformed settled record"))
                        }
                    case .delivered:
                        summary.deliveredRecords += 1
                        do throws(RecordDecodingError) {
                            markers += try RecordFormat.decodeDelivered(payload)
                        } catch {
                            corruptions.append(SpoolCorruption(segment: name, offset: offset, reason: "malformed delivered record: \(error.reason)"))
                        }
                    }
                }
                if case .unsupportedVersion(let version) = outcome {
                    summary.problem = "format version \(version), not readable by this build (version \(RecordFormat.version))"
                    return
                }
                corruptions += scanner.corruptions
                for record in batchRecords.reversed() {
                    if let settled = record.settled, settledBatches[record.queryID] == nil {
                        settledBatches[record.queryID] = settled
                    }
                    if let chunks = record.chunks, sendingBatches[record.queryID] == nil {
                        sendingBatches[record.queryID] = (record.batch ?? 0, chunks)
                    }
                    if newestIsSending[record.queryID] == nil { newestIsSending[record.queryID] = record.chunks != nil }
                }
                delivered = IDRanges(ranges: delivered.ranges + markers)
                summary.chunkRecords = chunkRecords.count
                for (offset, payload) in chunkRecords {
                    do throws(RecordDecodingError) {
                        let chunk = try RecordFormat.decodeChunkFields(payload)
                        summary.firstID = min(summary.firstID ?? chunk.id, chunk.id)
                        summary.lastID = max(summary.lastID ?? chunk.id, chunk.id)
                        guard !delivered.contains(chunk.id) else { continue }
                        summary.undelivered += 1
                        let table = "\(chunk.key.qualifiedTable) (\(chunk.key.format.rawValue))"
                        tables[table, default: TableSummary()].chunks += 1
                        tables[table]!.rows += chunk.rows
                        tables[table]!.bytes += chunk.data.count
                        tables[table]!.oldestID = min(tables[table]!.oldestID, chunk.id)
                    } catch {
                        corruptions.append(SpoolCorruption(segment: name, offset: offset, reason: "malformed chunk record: \(error.reason)"))
                    }
                }
            }
            summaries.append(summary)
        }
        summaries.reverse()

        let totalBytes = summaries.reduce(0) { $0 + $1.bytes }
        var out = "spool \(directory): \(files.count) segment file\(files.count == 1 ? "" : "s"), \(sizeText(totalBytes))\n"
        for summary in summaries {
            out += "  \(summary.name)  \(sizeText(summary.bytes))"
            if let problem = summary.problem {
                out += "  \(problem)\n"
                continue
            }
            out += "  \(summary.chunkRecords) chunk\(summary.chunkRecords == 1 ? "" : "s")"
            if let first = summary.firstID, let last = summary.lastID {
                out += " (ids \(first)-\(last))"
            }
            out += ", \(summary.undelivered) undelivered, \(summary.deliveredRecords) delivered record\(summary.deliveredRecords == 1 ? "" : "s")\n"
        }

        let chunks = tables.values.reduce(0) { $0 + $1.chunks }
        let rows = tables.values.reduce(0) { $0 + $1.rows }
        let dataBytes = tables.values.reduce(0) { $0 + $1.bytes }
        out += "undelivered: \(chunks) chunk\(chunks == 1 ? "" : "s"), \(rows) row\(rows == 1 ? "" : "s"), \(sizeText(dataBytes)) of data\n"
        for (table, summary) in tables.sorted(by: { $0.key < $1.key }) {
            out += "  \(table): \(summary.chunks) chunk\(summary.chunks == 1 ? "" : "s"), \(summary.rows) row\(summary.rows == 1 ? "" : "s"), "
            out += "\(sizeText(summary.bytes)), oldest chunk \(summary.oldestID)\n"
        }
        out += batchLines(sending: sendingBatches, settled: settledBatches, newestIsSending: newestIsSending, delivered: delivered)
        corruptions.sort { ($0.segment, $0.offset) < ($1.segment, $1.offset) }
        out += "corruptions: \(corruptions.count)\n"
        for corruption in corruptions {
            out += "  \(corruption)\n"
        }
        return out
    }

    /// One line per batch in doubt (sent, not all marked delivered) or settled at a start, oldest first.
    static func batchLines(
        sending: [String: (batch: UInt64, chunks: [UInt64])], settled: [String: (SettledOutcome, String)],
        newestIsSending: [String: Bool], delivered: IDRanges
    ) -> String {
        var lines: [(first: UInt64, text: String)] = []
        for (queryID, batch) in sending {
            let undelivered = batch.chunks.filter { !delivered.contains($0) }.count
            // Batches that went through in one piece are not worth a line.
            guard undelivered > 0 || settled[queryID] != nil else { continue }
            let chunkText = "\(batch.chunks.count) chunk\(batch.chunks.count == 1 ? "" : "s"), \(undelivered) undelivered"
            var text = "  \(queryID) (batch \(batch.batch)): \(chunkText): "
            if let (outcome, note) = settled[queryID], newestIsSending[queryID] != true || undelivered == 0 {
                text += "settled: \(outcome)"
                if !note.isEmpty { text += " (\(note))" }
            } else if let (outcome, _) = settled[queryID] {
                text += "in doubt: being sent again after being settled as '\(outcome)'; settled at the next start"
            } else {
                text += "in doubt: sent, no answer recorded; settled at the next start"
            }
            lines.append((batch.chunks.first ?? 0, text))
        }
        var out = "batches in doubt or settled at a start: \(lines.count)\n"
        for line in lines.sorted(by: { $0.first < $1.first }) { out += line.text + "\n" }
        return out
    }

    static func sizeText(_ bytes: Int) -> String {
        let units = ["KiB", "MiB", "GiB", "TiB"]
        guard bytes >= 1024 else { return "\(bytes) B" }
        var value = Double(bytes)
        var unit = -1
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        let tenths = Int((value * 10).rounded())
        return "\(tenths / 10).\(tenths % 10) \(units[unit]) (\(bytes) B)"
    }
}
