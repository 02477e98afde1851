/// Splits a batch ClickHouse refused into two halves by rows, so the rows it objects to can be isolated:
/// the halves that ClickHouse takes land, the halves it refuses are split again, down to single rows.
public enum BatchSplitter {
    /// The two halves of `batch` (each with the batch's header), or nil when it has fewer than two rows or its
    /// rows cannot be found (binary formats: the columns in `batch.key.header` are unknown). Each row keeps the
    /// token and spool chunk of the request it came from. Native batches are split by blocks; the block holding the
    /// middle row is sliced in two.
    public static func halves(of batch: SealedBatch, firstID: UInt64, secondID: UInt64) -> (SealedBatch, SealedBatch)? {
        let format = batch.key.format
        guard format.isRowCounted, batch.rows >= 2 else { return nil }
        if format == .native { return nativeHalves(of: batch, firstID: firstID, secondID: secondID) }
        let headerLength = BatchBuffer(format: format, header: batch.key.header).data.count
        let columns = format.isBinary ? batch.key.header.flatMap { ColumnSignature(decoding: $0) } : nil
        let ranges: [Range<Int>]
        do {
            ranges = try batch.data.withUnsafeBytes { bytes throws(RowScanError) in
                try RowScanner.rowRanges(
                    UnsafeRawBufferPointer(rebasing: bytes[headerLength...]), format: format.withoutHeader,
                    columns: columns)
            }
        } catch {
            return nil
        }
        guard ranges.count >= 2 else { return nil }
        let middle = ranges.count / 2
        let origin = origins(of: batch)
        func build(_ rows: ArraySlice<Range<Int>>, id: UInt64) -> SealedBatch {
            var buffer = BatchBuffer(format: format, header: batch.key.header)
            batch.data.withUnsafeBytes { bytes in
                for range in rows {
                    let absolute = (range.lowerBound + headerLength)..<(range.upperBound + headerLength)
                    var row = absolute
                    let isLineFormat: Bool
                    switch format {
                    case .values, .jsonEachRow, .jsonCompactEachRow, .jsonCompactEachRowWithNames,
                        .jsonCompactEachRowWithNamesAndTypes:
                        isLineFormat = false
                        while row.upperBound > row.lowerBound,
                            [UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: " "), UInt8(ascii: "\t"),
                             UInt8(ascii: ","), UInt8(ascii: ";")].contains(bytes[row.upperBound - 1])
                        {
                            row = row.lowerBound..<(row.upperBound - 1)
                        }
                    case .rowBinary, .rowBinaryWithNames, .rowBinaryWithNamesAndTypes, .native:
                        isLineFormat = false
                    default:
                        isLineFormat = true
                    }
                    let source = origin(absolute.lowerBound)
                    let slice = UnsafeRawBufferPointer(rebasing: bytes[row])
                    if isLineFormat && slice.isEmpty {
                        // An empty line is a row of its own in line formats.
                        let newline: [UInt8] = [UInt8(ascii: "\n")]
                        newline.withUnsafeBytes {
                            buffer.append($0, rows: 1, endsWithNewline: true, token: source.token, spoolChunk: source.spoolChunk)
                        }
                    } else {
                        buffer.append(
                            slice, rows: 1, endsWithNewline: !format.isBinary && slice.last == UInt8(ascii: "\n"),
                            token: source.token, spoolChunk: source.spoolChunk)
                    }
                }
            }
            return finished(batch, buffer, rows: rows.count, id: id)
        }
        return (build(ranges[..<middle], id: firstID), build(ranges[middle...], id: secondID))
    }

    /// Native: whole blocks go to the half their rows belong to; the block holding the middle row is sliced.
    private static func nativeHalves(of batch: SealedBatch, firstID: UInt64, secondID: UInt64) -> (SealedBatch, SealedBatch)? {
        let origin = origins(of: batch)
        return batch.data.withUnsafeBytes { bytes -> (SealedBatch, SealedBatch)? in
            guard let blocks = try? RowScanner.nativeBlocks(bytes) else { return nil }
            let total = blocks.reduce(0) { $0 + $1.rows }
            guard total >= 2 else { return nil }
            let middle = total / 2
            var first = BatchBuffer(format: .native, header: batch.key.header)
            var second = BatchBuffer(format: .native, header: batch.key.header)
            var before = 0
            for block in blocks where block.rows > 0 {
                let source = origin(block.range.lowerBound)
                let low = before
                let high = before + block.rows
                before = high
                let cut = min(max(middle, low), high)
                for (buffer, part) in [(0, low..<cut), (1, cut..<high)] where !part.isEmpty {
                    let piece: [UInt8]
                    if part.count == block.rows {
                        piece = Array(bytes[block.range])
                    } else {
                        piece = block.slice(bytes, rows: (part.lowerBound - low)..<(part.upperBound - low))
                    }
                    piece.withUnsafeBytes {
                        if buffer == 0 {
                            first.append($0, rows: part.count, endsWithNewline: false, token: source.token, spoolChunk: source.spoolChunk)
                        } else {
                            second.append($0, rows: part.count, endsWithNewline: false, token: source.token, spoolChunk: source.spoolChunk)
                        }
                    }
                }
            }
            return (finished(batch, first, rows: middle, id: firstID), finished(batch, second, rows: total - middle, id: secondID))
        }
    }

    private static func finished(_ batch: SealedBatch, _ buffer: BatchBuffer, rows: Int, id: UInt64) -> SealedBatch {
        var half = batch
        half.id = id
        half.data = buffer.data
        half.rows = rows
        half.contributions = merged(buffer.contributions)
        half.requests = Set(half.contributions.map(\.token)).count
        return half
    }

    /// The token and spool chunk of the request whose contribution holds a byte offset of the batch.
    private static func origins(of batch: SealedBatch) -> (Int) -> (token: UInt64, spoolChunk: UInt64?) {
        let contributions = batch.contributions.sorted { $0.range.lowerBound < $1.range.lowerBound }
        return { offset in
            // The last contribution starting at or before `offset`.
            var low = 0
            var high = contributions.count
            while low < high {
                let mid = (low + high) / 2
                if contributions[mid].range.lowerBound <= offset { low = mid + 1 } else { high = mid }
            }
            guard low > 0 else { return (0, nil) }
            return (contributions[low - 1].token, contributions[low - 1].spoolChunk)
        }
    }

    /// Adjacent rows of the same request become one contribution again.
    private static func merged(_ contributions: [Contribution]) -> [Contribution] {
        var result: [Contribution] = []
        for contribution in contributions {
            if var last = result.last, last.token == contribution.token, last.spoolChunk == contribution.spoolChunk {
                last.range = last.range.lowerBound..<contribution.range.upperBound
                last.rows += contribution.rows
                result[result.count - 1] = last
            } else {
                result.append(contribution)
            }
        }
        return result
    }
}
