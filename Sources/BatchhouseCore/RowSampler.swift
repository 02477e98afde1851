/// The `sample` rule: keeps about `fraction` of a chunk's rows, chosen at random. Lossy by design.
public enum RowSampler {
    public struct Kept: Sendable {
        public var data: [UInt8]
        public var rows: Int
    }

    /// Returns the kept rows joined as the format needs (Values with `,`, binary formats back to back, every other
    /// format one row a line), or nil when the rows cannot be split. `rows` is the data after any header
    /// (`ScannedRows.rows`); RowBinary formats need their `columns` (`ScannedRows.signature`). Native keeps each
    /// block's chosen rows as a sliced block.
    public static func sample<G: RandomNumberGenerator>(
        _ rows: UnsafeRawBufferPointer, format: InputFormat, columns: ColumnSignature? = nil, fraction: Double,
        using generator: inout G
    ) -> Kept? {
        if format == .native { return sampleNative(rows, fraction: fraction, using: &generator) }
        guard let ranges = try? RowScanner.rowRanges(rows, format: format.withoutHeader, columns: columns) else { return nil }
        if format.isBinary {
            var data: [UInt8] = []
            var kept = 0
            for range in ranges where fraction >= 1 || Double.random(in: 0..<1, using: &generator) < fraction {
                data.append(contentsOf: rows[range])
                kept += 1
            }
            return Kept(data: data, rows: kept)
        }
        var data: [UInt8] = []
        var kept = 0
        for range in ranges where fraction >= 1 || Double.random(in: 0..<1, using: &generator) < fraction {
            var row = range
            while row.upperBound > row.lowerBound,
                rows[row.upperBound - 1] == UInt8(ascii: "\n") || rows[row.upperBound - 1] == UInt8(ascii: ",")
            {
                row = row.lowerBound..<(row.upperBound - 1)
            }
            if format == .values {
                if kept > 0 { data.append(UInt8(ascii: ",")) }
                data.append(contentsOf: rows[row])
            } else {
                data.append(contentsOf: rows[row])
                data.append(UInt8(ascii: "\n"))
            }
            kept += 1
        }
        return Kept(data: data, rows: kept)
    }

    public static func sample(
        _ rows: UnsafeRawBufferPointer, format: InputFormat, columns: ColumnSignature? = nil, fraction: Double
    ) -> Kept? {
        var generator = SystemRandomNumberGenerator()
        return sample(rows, format: format, columns: columns, fraction: fraction, using: &generator)
    }

    private static func sampleNative<G: RandomNumberGenerator>(
        _ data: UnsafeRawBufferPointer, fraction: Double, using generator: inout G
    ) -> Kept? {
        guard let blocks = try? RowScanner.nativeBlocks(data) else { return nil }
        var out: [UInt8] = []
        var kept = 0
        for block in blocks where block.rows > 0 {
            var picked: [Int] = []
            for row in 0..<block.rows where fraction >= 1 || Double.random(in: 0..<1, using: &generator) < fraction {
                picked.append(row)
            }
            if picked.isEmpty { continue }
            if picked.count == block.rows {
                out.append(contentsOf: data[block.range])
            } else {
                out.append(contentsOf: block.slice(data, rows: picked))
            }
            kept += picked.count
        }
        return Kept(data: out, rows: kept)
    }
}
