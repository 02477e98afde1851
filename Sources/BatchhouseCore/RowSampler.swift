/// The `sample` rule: keeps about `fraction` of a chunk's rows, chosen at random. Lossy by design.
public enum RowSampler {
    public struct Kept: Sendable {
        public var data: [UInt8]
        public var rows: Int
    }

    /// Returns the kept rows joined as the format needs (Values with `,`, every other format one row a line),
    /// or nil when the rows cannot be split.
    public static func sample<G: RandomNumberGenerator>(
        _ rows: UnsafeRawBufferPointer, format: InputFormat, fraction: Double, using generator: inout G
    ) -> Kept? {
        guard let ranges = try? RowScanner.rowRanges(rows, format: format.withoutHeader) else { return nil }
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

    public static func sample(_ rows: UnsafeRawBufferPointer, format: InputFormat, fraction: Double) -> Kept? {
        var generator = SystemRandomNumberGenerator()
        return sample(rows, format: format, fraction: fraction, using: &generator)
    }
}
