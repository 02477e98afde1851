/// One block of a Native stream: where it lies in the data, its rows and its columns.
public struct NativeBlock: Sendable {
    /// The whole block, header included, in the scanned data.
    public var range: Range<Int>
    public var rows: Int
    public var signature: ColumnSignature
    /// Per column: its name and type (as sent), its serialization prefix and where its values lie.
    var columns: [NativeColumn]

    /// A valid Native block holding only the given rows (ascending, each < `rows`), taken from `data`, the bytes
    /// the block was scanned in. LowCardinality columns keep their dictionary; only their indexes are sliced.
    public func slice(_ data: UnsafeRawBufferPointer, rows selected: [Int]) -> [UInt8] {
        var out: [UInt8] = []
        guard let base = data.baseAddress else { return out }
        let p = base.assumingMemoryBound(to: UInt8.self)
        BinaryWriter.varint(UInt64(columns.count), into: &out)
        BinaryWriter.varint(UInt64(selected.count), into: &out)
        for column in columns {
            out.append(contentsOf: UnsafeBufferPointer(start: p + column.header.lowerBound, count: column.header.count))
            guard !selected.isEmpty else { continue }
            out.append(contentsOf: UnsafeBufferPointer(start: p + column.prefix.lowerBound, count: column.prefix.count))
            NativeColumn.gather(column.layout, rows: selected, p, into: &out)
        }
        return out
    }

    public func slice(_ data: UnsafeRawBufferPointer, rows selected: Range<Int>) -> [UInt8] {
        slice(data, rows: Array(selected))
    }
}

struct NativeColumn: Sendable {
    /// Name and type strings.
    var header: Range<Int>
    /// Serialization state prefixes (LowCardinality key versions), written once before the data.
    var prefix: Range<Int>
    var layout: Layout

    indirect enum Layout: Sendable {
        case fixed(start: Int, width: Int)
        /// Row i is `bounds[i]..<bounds[i + 1]` (its varint length and bytes).
        case strings(bounds: [Int])
        case nullable(mapStart: Int, nested: Layout)
        /// Cumulative element counts, one per row.
        case array(offsets: [Int], nested: Layout)
        case tuple([Layout])
        case lowCardinality([DictionaryGroup])
    }

    /// One run of LowCardinality indexes with the dictionary they refer to.
    struct DictionaryGroup: Sendable {
        /// The index type word and the dictionary keys (count and column), copied as they are.
        var head: Range<Int>
        var width: Int
        var indexesStart: Int
        var firstRow: Int
        var rows: Int
        var keys: Int
        /// Where the dictionary keys lie (a column of the dictionary type without Nullable).
        var keyLayout: Layout
    }

    static func gather(_ layout: Layout, rows: [Int], _ p: UnsafePointer<UInt8>, into out: inout [UInt8]) {
        switch layout {
        case .fixed(let start, let width):
            for row in rows { out.append(contentsOf: UnsafeBufferPointer(start: p + start + row * width, count: width)) }
        case .strings(let bounds):
            for row in rows {
                out.append(contentsOf: UnsafeBufferPointer(start: p + bounds[row], count: bounds[row + 1] - bounds[row]))
            }
        case .nullable(let mapStart, let nested):
            for row in rows { out.append(p[mapStart + row]) }
            gather(nested, rows: rows, p, into: &out)
        case .array(let offsets, let nested):
            var total = 0
            var elements: [Int] = []
            for row in rows {
                let low = row == 0 ? 0 : offsets[row - 1]
                let high = offsets[row]
                total += high - low
                BinaryWriter.uint64(UInt64(total), into: &out)
                elements.append(contentsOf: low..<high)
            }
            gather(nested, rows: elements, p, into: &out)
        case .tuple(let elements):
            for element in elements { gather(element, rows: rows, p, into: &out) }
        case .lowCardinality(let groups):
            var index = 0
            for group in groups {
                var picked: [Int] = []
                while index < rows.count, rows[index] < group.firstRow + group.rows {
                    picked.append(rows[index])
                    index += 1
                }
                guard !picked.isEmpty else { continue }
                out.append(contentsOf: UnsafeBufferPointer(start: p + group.head.lowerBound, count: group.head.count))
                BinaryWriter.uint64(UInt64(picked.count), into: &out)
                for row in picked {
                    let at = group.indexesStart + (row - group.firstRow) * group.width
                    out.append(contentsOf: UnsafeBufferPointer(start: p + at, count: group.width))
                }
            }
        }
    }
}

/// Reads a Native stream (ClickHouse's NativeReader with revision 0, as HTTP input uses: no block info, no
/// custom-serialization flags): a sequence of blocks, each a varint column count and row count, then per column its
/// name, its type and, when the block has rows, the column's prefixes and values (`deserializeBinaryBulk`).
///
/// Checked: every length and count is within the data; array offsets do not decrease; LowCardinality index types
/// are 1, 2, 4 or 8 bytes, the key version is 1 and indexes are below the dictionary size. Types whose layout is
/// unknown, blocks without columns, a global LowCardinality dictionary and blocks whose columns differ from the
/// first block's are unsupported (the request is passed through).
enum NativeScanner {
    static let maxColumns: UInt64 = 1_000_000
    static let maxRows: UInt64 = 1_000_000_000_000

    static func blocks(_ p: UnsafePointer<UInt8>, end: Int) throws(RowScanError) -> [NativeBlock] {
        var reader = BinaryReader(p, start: 0, end: end)
        var blocks: [NativeBlock] = []
        var rowsBefore = 0
        while reader.at < end {
            let start = reader.at
            reader.row = rowsBefore + 1
            let columnCount = try reader.varint()
            let rowCount = try reader.varint()
            guard columnCount > 0 else {
                // ClickHouse takes a block without columns as the end of the stream and ignores what follows.
                throw BinaryErrors.unsupported("a Native block without columns", at: start)
            }
            guard columnCount <= maxColumns else {
                throw BinaryErrors.incorrect("Suspiciously many columns in Native format: \(columnCount)", at: start, row: reader.row)
            }
            // Every column's name and type take at least two bytes.
            guard columnCount <= UInt64(reader.remaining) else {
                throw BinaryErrors.cannotReadAll(read: reader.remaining, expected: Int(columnCount), at: reader.at, row: reader.row)
            }
            guard rowCount <= maxRows, rowCount <= UInt64(reader.remaining) else {
                // Every value of every type takes at least a byte, so more rows than bytes cannot be there.
                if rowCount > maxRows {
                    throw BinaryErrors.incorrect("Suspiciously many rows in Native format: \(rowCount)", at: start, row: reader.row)
                }
                throw BinaryErrors.cannotReadAll(read: reader.remaining, expected: Int(rowCount), at: reader.at, row: reader.row)
            }
            let rows = Int(rowCount)
            var names: [String] = []
            var typeNames: [String] = []
            var columns: [NativeColumn] = []
            for _ in 0..<columnCount {
                let headerStart = reader.at
                let name = try reader.string()
                let typeName = try reader.string()
                guard let type = ColumnType(parsing: typeName) else {
                    throw BinaryErrors.unsupported("column \(name) has a type whose layout is not known: \(typeName)", at: headerStart)
                }
                let header = headerStart..<reader.at
                let prefixStart = reader.at
                if rows > 0 { try readPrefix(type, &reader) }
                let prefix = prefixStart..<reader.at
                let layout = try readData(type, rows: rows, &reader)
                names.append(name)
                typeNames.append(typeName)
                columns.append(NativeColumn(header: header, prefix: prefix, layout: layout))
            }
            guard let signature = ColumnSignature(names: names, typeNames: typeNames) else {
                throw BinaryErrors.unsupported("a Native block whose columns are not known", at: start)
            }
            if let first = blocks.first, first.signature != signature {
                throw BinaryErrors.unsupported("Native blocks with different columns in one request", at: start)
            }
            blocks.append(NativeBlock(range: start..<reader.at, rows: rows, signature: signature, columns: columns))
            rowsBefore += rows
        }
        return blocks
    }

    /// `deserializeBinaryBulkStatePrefix`: nested types' prefixes in order; LowCardinality writes its key version.
    private static func readPrefix(_ type: ColumnType, _ reader: inout BinaryReader) throws(RowScanError) {
        switch type {
        case .nullable(let inner), .array(let inner):
            try readPrefix(inner, &reader)
        case .map(let key, let value):
            try readPrefix(key, &reader)
            try readPrefix(value, &reader)
        case .tuple(let elements):
            for element in elements { try readPrefix(element, &reader) }
        case .lowCardinality:
            let at = reader.at
            let version = try reader.uint64()
            guard version == 1 else {
                throw BinaryErrors.incorrect(
                    "Invalid version for SerializationLowCardinality key column: \(version)", at: at, row: reader.row)
            }
        case .fixed, .string, .fixedString, .nothing:
            break
        }
    }

    private static func readData(_ type: ColumnType, rows: Int, _ reader: inout BinaryReader) throws(RowScanError) -> NativeColumn.Layout {
        switch type {
        case .fixed(let width):
            let start = reader.at
            try reader.skip(rows, width: width)
            return .fixed(start: start, width: width)
        case .nothing:
            let start = reader.at
            try reader.skip(rows)
            return .fixed(start: start, width: 1)
        case .fixedString(let length):
            let start = reader.at
            try reader.skip(rows, width: length)
            return .fixed(start: start, width: length)
        case .string:
            guard rows <= reader.remaining else {
                throw BinaryErrors.cannotReadAll(read: reader.remaining, expected: rows, at: reader.at, row: reader.row)
            }
            var bounds: [Int] = []
            bounds.reserveCapacity(rows + 1)
            bounds.append(reader.at)
            for _ in 0..<rows {
                let length = try reader.stringLength()
                try reader.skip(length)
                bounds.append(reader.at)
            }
            return .strings(bounds: bounds)
        case .nullable(let inner):
            let mapStart = reader.at
            try reader.skip(rows)
            return .nullable(mapStart: mapStart, nested: try readData(inner, rows: rows, &reader))
        case .array(let inner):
            return try readArray(inner, rows: rows, &reader)
        case .map(let key, let value):
            return try readArray(.tuple([key, value]), rows: rows, &reader)
        case .tuple(let elements):
            var layouts: [NativeColumn.Layout] = []
            for element in elements { layouts.append(try readData(element, rows: rows, &reader)) }
            return .tuple(layouts)
        case .lowCardinality(let inner):
            return try readLowCardinality(inner, rows: rows, &reader)
        }
    }

    private static func readArray(_ inner: ColumnType, rows: Int, _ reader: inout BinaryReader) throws(RowScanError) -> NativeColumn.Layout {
        let start = reader.at
        try reader.skip(rows, width: 8)
        var offsets: [Int] = []
        offsets.reserveCapacity(rows)
        var previous: UInt64 = 0
        for i in 0..<rows {
            let offset = reader.unsigned(at: start + i * 8, width: 8)
            guard offset >= previous else {
                throw BinaryErrors.incorrect(
                    "Array offsets decrease: \(offset) after \(previous)", at: start + i * 8, row: reader.row)
            }
            // Every element takes at least a byte, so an offset beyond the data cannot be satisfied.
            guard offset <= UInt64(reader.remaining) else {
                throw BinaryErrors.cannotReadAll(read: reader.remaining, expected: Int(clamping: offset), at: reader.at, row: reader.row)
            }
            offsets.append(Int(offset))
            previous = offset
        }
        let nested = try readData(inner, rows: offsets.last ?? 0, &reader)
        return .array(offsets: offsets, nested: nested)
    }

    private static let needGlobalDictionary: UInt64 = 1 << 8
    private static let hasAdditionalKeys: UInt64 = 1 << 9

    /// SerializationLowCardinality::deserializeBinaryBulkWithMultipleStreams: groups of (index type word,
    /// additional keys, row count, indexes) until the column's rows are read.
    private static func readLowCardinality(_ inner: ColumnType, rows: Int, _ reader: inout BinaryReader) throws(RowScanError) -> NativeColumn.Layout {
        var groups: [NativeColumn.DictionaryGroup] = []
        var done = 0
        while done < rows {
            let headStart = reader.at
            let flags = try reader.uint64()
            let indexType = flags & 0xFF
            guard indexType <= 3 else {
                throw BinaryErrors.incorrect("Invalid type for low cardinality index: \(indexType)", at: headStart, row: reader.row)
            }
            guard flags & needGlobalDictionary == 0 else {
                throw BinaryErrors.unsupported("a LowCardinality column with a global dictionary", at: headStart)
            }
            guard flags & hasAdditionalKeys != 0 else {
                throw BinaryErrors.incorrect("No dictionary found for LowCardinality column", at: headStart, row: reader.row)
            }
            let keysAt = reader.at
            let keyCount = try reader.uint64()
            guard keyCount <= UInt64(reader.remaining) else {
                throw BinaryErrors.cannotReadAll(read: reader.remaining, expected: Int(clamping: keyCount), at: keysAt, row: reader.row)
            }
            let keyLayout = try readData(inner.dictionaryKeys, rows: Int(keyCount), &reader)
            let head = headStart..<reader.at
            let countAt = reader.at
            let groupRows = try reader.uint64()
            guard groupRows <= UInt64(rows - done) else {
                throw BinaryErrors.incorrect(
                    "LowCardinality indexes for \(groupRows) rows where \(rows - done) remain", at: countAt, row: reader.row)
            }
            let width = 1 << Int(indexType)
            let indexesStart = reader.at
            try reader.skip(Int(groupRows), width: width)
            for i in 0..<Int(groupRows) {
                let index = reader.unsigned(at: indexesStart + i * width, width: width)
                guard index < keyCount else {
                    throw BinaryErrors.incorrect(
                        "Index for LowCardinality is out of range. Dictionary size is \(keyCount), but found index with value \(index)",
                        at: indexesStart + i * width, row: reader.row)
                }
            }
            groups.append(
                NativeColumn.DictionaryGroup(
                    head: head, width: width, indexesStart: indexesStart, firstRow: done, rows: Int(groupRows),
                    keys: Int(keyCount), keyLayout: keyLayout))
            done += Int(groupRows)
        }
        return .lowCardinality(groups)
    }
}
