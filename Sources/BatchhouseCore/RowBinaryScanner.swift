/// Walks RowBinary rows with the column types (ClickHouse's BinaryRowInputFormat and each type's
/// `deserializeBinary`), so each row's bytes are known.
///
/// Checked as ClickHouse checks when it reads: every value's bytes are there (33 CANNOT_READ_ALL_DATA), a varint
/// does not run past the end (32 ATTEMPT_TO_READ_AFTER_EOF), string lengths and array and map sizes are at most
/// 1 GiB (131 TOO_LARGE_STRING_SIZE, 128 TOO_LARGE_ARRAY_SIZE, the defaults of format_binary_max_string_size and
/// format_binary_max_array_size). Like ClickHouse it does not check values: any non-zero Nullable flag means NULL,
/// an Enum or Bool byte is taken as it is.
enum RowBinaryScanner {
    enum Header {
        case none, names, namesAndTypes
    }

    static func scan<Sink: RowSink>(
        _ p: UnsafePointer<UInt8>, end: Int, header: Header, columns: ColumnSignature?, sink: inout Sink
    ) throws(RowScanError) -> ScannedRows {
        var reader = BinaryReader(p, start: 0, end: end)
        var signature = columns
        var headerRange: Range<Int>?
        if header == .names && columns == nil {
            throw BinaryErrors.unsupported("RowBinaryWithNames needs the table's column types", at: 0)
        }
        if header != .none {
            let (parsed, range) = try readHeader(&reader, header: header, columns: columns)
            signature = parsed
            headerRange = range
        }
        guard let signature else {
            throw BinaryErrors.unsupported("RowBinary needs the table's column types", at: 0)
        }
        let types = signature.types
        let rowsStart = reader.at
        var rows = 0
        while reader.at < end {
            let start = reader.at
            reader.row = rows + 1
            for type in types { try skipValue(type, &reader) }
            sink.row(start..<reader.at)
            rows += 1
        }
        return ScannedRows(
            rowCount: rows, header: headerRange, rows: rowsStart..<end, endsWithNewline: false, signature: signature)
    }

    /// Names (and types) at the head of RowBinaryWithNames(AndTypes). For WithNames the types are those of the
    /// same names in `columns`; a name not there is left to ClickHouse (unsupported).
    private static func readHeader(
        _ reader: inout BinaryReader, header: Header, columns: ColumnSignature?
    ) throws(RowScanError) -> (ColumnSignature, Range<Int>) {
        let count = try reader.varint()
        // Every name takes at least a byte: a larger count cannot be a header of this data.
        guard count > 0, count <= UInt64(reader.remaining) else {
            if count == 0 { throw BinaryErrors.unsupported("a RowBinary header without columns", at: 0) }
            throw BinaryErrors.cannotReadAll(read: reader.remaining, expected: Int(clamping: count), at: reader.at, row: 0)
        }
        var names: [String] = []
        for _ in 0..<count { names.append(try reader.string()) }
        var typeNames: [String] = []
        if header == .namesAndTypes {
            for _ in 0..<count { typeNames.append(try reader.string()) }
        } else {
            guard let columns else { throw BinaryErrors.unsupported("RowBinaryWithNames needs the table's column types", at: 0) }
            var byName: [String: String] = [:]
            for (name, type) in zip(columns.names, columns.typeNames) where byName[name] == nil { byName[name] = type }
            for name in names {
                guard let type = byName[name] else {
                    throw BinaryErrors.unsupported("column \(name) of the header is not among the table's columns", at: 0)
                }
                typeNames.append(type)
            }
        }
        guard let signature = ColumnSignature(names: names, typeNames: typeNames) else {
            throw BinaryErrors.unsupported("a column type whose binary layout is not known", at: 0)
        }
        return (signature, 0..<reader.at)
    }

    static func skipValue(_ type: ColumnType, _ reader: inout BinaryReader) throws(RowScanError) {
        switch type {
        case .fixed(let width):
            try reader.skip(width)
        case .string:
            let length = try reader.stringLength()
            try reader.skip(length)
        case .fixedString(let length):
            try reader.skip(length)
        case .nullable(let inner):
            if try reader.byte() == 0 { try skipValue(inner, &reader) }
        case .array(let inner):
            let size = try size(&reader, what: "array")
            for _ in 0..<size { try skipValue(inner, &reader) }
        case .map(let key, let value):
            let size = try size(&reader, what: "map")
            for _ in 0..<size {
                try skipValue(key, &reader)
                try skipValue(value, &reader)
            }
        case .tuple(let elements):
            for element in elements { try skipValue(element, &reader) }
        case .lowCardinality(let inner):
            try skipValue(inner, &reader)
        case .nothing:
            throw BinaryErrors.unsupported("a Nothing value in RowBinary", at: reader.at)
        }
    }

    private static func size(_ reader: inout BinaryReader, what: String) throws(RowScanError) -> Int {
        let start = reader.at
        let size = try reader.varint()
        guard size <= BinaryErrors.maxSize else {
            throw BinaryErrors.tooLarge(
                code: 128, name: "TOO_LARGE_ARRAY_SIZE",
                "Too large \(what) size: \(size). The maximum is: \(BinaryErrors.maxSize). To increase the maximum, use setting format_binary_max_array_size",
                at: start, row: reader.row)
        }
        return Int(size)
    }
}
