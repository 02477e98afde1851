/// Splits a batch ClickHouse refused into two halves by rows, so the rows it objects to can be isolated:
/// the halves that ClickHouse takes land, the halves it refuses are split again, down to single rows.
public enum BatchSplitter {
    /// The two halves of `batch` (each with the batch's header), or nil when it has fewer than two rows or its
    /// format has no row boundaries (RowBinary, Native). Each row keeps the token and spool chunk of the
    /// request it came from.
    public static func halves(of batch: SealedBatch, firstID: UInt64, secondID: UInt64) -> (SealedBatch, SealedBatch)? {
        let format = batch.key.format
        guard format.isRowCounted, batch.rows >= 2 else { return nil }
        let headerLength = BatchBuffer(format: format, header: batch.key.header).data.count
        let ranges: [Range<Int>]
        do {
            ranges = try batch.data.withUnsafeBytes { bytes throws(RowScanError) in
                try RowScanner.rowRanges(
                    UnsafeRawBufferPointer(rebasing: bytes[headerLength...]), format: format.withoutHeader)
            }
        } catch {
            return nil
        }
        guard ranges.count >= 2 else { return nil }
        let middle = ranges.count / 2
        let contributions = batch.contributions.sorted { $0.range.lowerBound < $1.range.lowerBound }
        func origin(of offset: Int) -> (token: UInt64, spoolChunk: UInt64?) {
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
                    default:
                        isLineFormat = true
                    }
                    let source = origin(of: absolute.lowerBound)
                    let slice = UnsafeRawBufferPointer(rebasing: bytes[row])
                    if isLineFormat && slice.isEmpty {
                        // An empty line is a row of its own in line formats.
                        let newline: [UInt8] = [UInt8(ascii: "\n")]
                        newline.withUnsafeBytes {
                            buffer.append($0, rows: 1, endsWithNewline: true, token: source.token, spoolChunk: source.spoolChunk)
                        }
                    } else {
                        buffer.append(
                            slice, rows: 1, endsWithNewline: slice.last == UInt8(ascii: "\n"), token: source.token,
                            spoolChunk: source.spoolChunk)
                    }
                }
            }
            var half = batch
            half.id = id
            half.data = buffer.data
            half.rows = rows.count
            half.contributions = merged(buffer.contributions)
            half.requests = Set(half.contributions.map(\.token)).count
            return half
        }
        return (build(ranges[..<middle], id: firstID), build(ranges[middle...], id: secondID))
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
