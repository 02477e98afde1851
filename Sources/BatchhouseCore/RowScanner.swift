/// The rows found in one request's data, as byte ranges of that data.
public struct ScannedRows: Sendable, Hashable {
    /// Number of rows.
    public var rowCount: Int
    /// The header of *WithNames / *WithNamesAndTypes formats; nil for other formats and for empty data.
    /// Line formats: the 1 or 2 header lines including their trailing newline (if the data has one).
    /// JSONCompactEachRow*: from the first header array's `[` to the last header array's `]`, without
    /// separators; a batch writer puts a newline after it, as between rows.
    public var header: Range<Int>?
    /// The row data: a UTF-8 BOM at the start and the header removed. For Values and the JSON formats it runs from
    /// the first row's opening bracket to the last row's closing bracket (surrounding whitespace, a trailing `,` or
    /// `;`, and JSONEachRow's optional `[ ... ]` wrapper removed); separators between rows stay as sent.
    /// For line formats it runs to the end of the data. RowBinary: after the header to the end, Native: the whole
    /// data (a BOM is data there).
    public var rows: Range<Int>
    /// Whether `rows` ends with a row terminator (an unescaped "\n"). Line formats need one appended before the next
    /// chunk when this is false and `rows` is not empty. Always false for the other formats and for empty rows.
    public var endsWithNewline: Bool
    /// Binary formats: the columns of the rows, for the batch key's header (`ColumnSignature.encoded`). RowBinary:
    /// the signature passed in; RowBinaryWithNames: the header's names with the passed signature's types;
    /// RowBinaryWithNamesAndTypes: the header; Native: the first block's columns (nil when there are no blocks).
    /// Nil for text formats.
    public var signature: ColumnSignature?

    public init(rowCount: Int, header: Range<Int>?, rows: Range<Int>, endsWithNewline: Bool, signature: ColumnSignature? = nil) {
        self.rowCount = rowCount
        self.header = header
        self.rows = rows
        self.endsWithNewline = endsWithNewline
        self.signature = signature
    }
}

/// Data that cannot be batched because it is malformed. Reported to the client the way ClickHouse reports it:
/// `Code: <code>. DB::Exception: <message>. (<name>)`.
public struct RowScanError: Error, Sendable, Hashable {
    /// ClickHouse error code, e.g. 27 CANNOT_PARSE_INPUT_ASSERTION_FAILED.
    public var code: Int
    /// ClickHouse error name, e.g. "CANNOT_PARSE_INPUT_ASSERTION_FAILED".
    public var name: String
    /// A message for a person: what was expected, the row number (1-based) and the byte offset; quotes at most
    /// 100 bytes of the data.
    public var message: String
    /// Byte offset in the scanned data where the problem was found.
    public var offset: Int
    /// The data is not known to be malformed, but the proxy cannot batch it (binary data without column types, a
    /// type whose layout it does not know, Native blocks with different columns): pass the request through and let
    /// ClickHouse answer it. False for malformed data.
    public var isUnsupported: Bool

    public init(code: Int, name: String, message: String, offset: Int, isUnsupported: Bool = false) {
        self.code = code
        self.name = name
        self.message = message
        self.offset = offset
        self.isUnsupported = isUnsupported
    }
}

/// Validates and counts the rows of one request's data, so rows from many requests can be concatenated into one
/// INSERT. The checks are structural (brackets, quotes, separators), not typed: a row that is well-formed but has
/// wrong values still goes upstream and fails there.
///
/// Format rules (ClickHouse sources: ValuesBlockInputFormat, JSONEachRowRowInputFormat, readCSVStringInto,
/// readEscapedString):
/// - Values: top-level `( ... )` tuples separated by whitespace and at most one `,`; inside them `'...'`, `"..."` and
///   `` `...` `` strings with `\` escapes and doubled quotes, and nested `()` `[]` `{}` that must match. A trailing
///   `;` may only be followed by whitespace. Comments inside tuples are not recognised.
/// - TabSeparated, TabSeparatedRaw, TSKV: one row per line. In TabSeparated and TSKV a "\n" preceded by an odd
///   number of backslashes is an escaped line feed inside a value, not a row end. A final line without "\n"
///   counts; empty data is 0 rows.
/// - CSV: one row per line outside double-quoted fields. A field is quoted only when `"` is its first byte after
///   spaces/tabs (`,` is assumed to be the delimiter; single-quoted fields are not recognised); `""` inside is an
///   escaped quote. An unterminated quoted field is an error.
/// - JSONEachRow: top-level `{...}` objects separated by whitespace and at most one `,`, optionally wrapped in
///   `[ ... ]` as current ClickHouse allows; a trailing `;` may only be followed by whitespace.
///   JSONCompactEachRow*: the same with top-level `[...]` arrays.
/// - RowBinary (+WithNames, +WithNamesAndTypes), Native: walked with the column types (`RowBinaryScanner`,
///   `NativeScanner`); without types the data is unsupported (`RowScanError.isUnsupported`).
public enum RowScanner {
    /// Validates `data` and counts its rows. Binary formats need `columns` (RowBinary, RowBinaryWithNames) or read
    /// them from the data (RowBinaryWithNamesAndTypes, Native); text formats ignore it.
    public static func scan(
        _ data: UnsafeRawBufferPointer, format: InputFormat, columns: ColumnSignature?
    ) throws(RowScanError) -> ScannedRows {
        var sink = CountingSink()
        return try run(data, format: format, columns: columns, sink: &sink)
    }

    /// Validates `data` and counts its rows. Binary formats come back unsupported: they need `columns`.
    public static func scan(_ data: UnsafeRawBufferPointer, format: InputFormat) throws(RowScanError) -> ScannedRows {
        try scan(data, format: format, columns: nil)
    }

    /// Byte ranges of each data row inside `data` (headers excluded), for splitting a batch; same rules as `scan`.
    /// Line formats: each line including its "\n" (the last one may lack it). Values and JSON: each tuple, object or
    /// array from its opening to its closing bracket. RowBinary: each row's values. Native: each block (see
    /// `nativeBlocks` for their rows and slicing).
    public static func rowRanges(
        _ data: UnsafeRawBufferPointer, format: InputFormat, columns: ColumnSignature?
    ) throws(RowScanError) -> [Range<Int>] {
        if format == .native { return try nativeBlocks(data).map(\.range) }
        var sink = CollectingSink()
        _ = try run(data, format: format, columns: columns, sink: &sink)
        return sink.ranges
    }

    public static func rowRanges(_ data: UnsafeRawBufferPointer, format: InputFormat) throws(RowScanError) -> [Range<Int>] {
        try rowRanges(data, format: format, columns: nil)
    }

    /// The blocks of Native data, validated (`NativeScanner`).
    public static func nativeBlocks(_ data: UnsafeRawBufferPointer) throws(RowScanError) -> [NativeBlock] {
        guard let base = data.baseAddress, !data.isEmpty else { return [] }
        return try NativeScanner.blocks(base.assumingMemoryBound(to: UInt8.self), end: data.count)
    }

    /// Convenience for tests and small inputs.
    public static func scan(_ bytes: [UInt8], format: InputFormat, columns: ColumnSignature?) throws(RowScanError) -> ScannedRows {
        let result: Result<ScannedRows, RowScanError> = bytes.withUnsafeBytes { buffer in
            do throws(RowScanError) { return .success(try scan(buffer, format: format, columns: columns)) } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// Convenience for tests and small inputs.
    public static func rowRanges(_ bytes: [UInt8], format: InputFormat, columns: ColumnSignature?) throws(RowScanError) -> [Range<Int>] {
        let result: Result<[Range<Int>], RowScanError> = bytes.withUnsafeBytes { buffer in
            do throws(RowScanError) { return .success(try rowRanges(buffer, format: format, columns: columns)) } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// Convenience for tests and small inputs.
    public static func scan(_ bytes: [UInt8], format: InputFormat) throws(RowScanError) -> ScannedRows {
        let result: Result<ScannedRows, RowScanError> = bytes.withUnsafeBytes { buffer in
            do throws(RowScanError) { return .success(try scan(buffer, format: format)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// Convenience for tests and small inputs.
    public static func rowRanges(_ bytes: [UInt8], format: InputFormat) throws(RowScanError) -> [Range<Int>] {
        let result: Result<[Range<Int>], RowScanError> = bytes.withUnsafeBytes { buffer in
            do throws(RowScanError) { return .success(try rowRanges(buffer, format: format)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    private static func run<Sink: RowSink>(
        _ data: UnsafeRawBufferPointer, format: InputFormat, columns: ColumnSignature?, sink: inout Sink
    ) throws(RowScanError) -> ScannedRows {
        let count = data.count
        guard count > 0, let base = data.baseAddress else {
            let signature = format == .rowBinary || format == .rowBinaryWithNames ? columns : nil
            return ScannedRows(rowCount: 0, header: nil, rows: 0..<0, endsWithNewline: false, signature: signature)
        }
        let p = base.assumingMemoryBound(to: UInt8.self)
        switch format {
        case .rowBinary:
            return try RowBinaryScanner.scan(p, end: count, header: .none, columns: columns, sink: &sink)
        case .rowBinaryWithNames:
            return try RowBinaryScanner.scan(p, end: count, header: .names, columns: columns, sink: &sink)
        case .rowBinaryWithNamesAndTypes:
            return try RowBinaryScanner.scan(p, end: count, header: .namesAndTypes, columns: columns, sink: &sink)
        case .native:
            let blocks = try NativeScanner.blocks(p, end: count)
            for block in blocks { sink.row(block.range) }
            return ScannedRows(
                rowCount: blocks.reduce(0) { $0 + $1.rows }, header: nil, rows: 0..<count, endsWithNewline: false,
                signature: blocks.first?.signature)
        default:
            break
        }
        let start = hasBOM(p, count) ? 3 : 0
        switch format {
        case .values:
            return try ValuesScanner.scan(p, start: start, end: count, sink: &sink)
        case .tabSeparated, .tabSeparatedWithNames, .tabSeparatedWithNamesAndTypes, .tskv:
            return try LineScanner.scan(p, start: start, end: count, headerLines: format.headerRows, backslashEscapes: true, sink: &sink)
        case .tabSeparatedRaw:
            return try LineScanner.scan(p, start: start, end: count, headerLines: 0, backslashEscapes: false, sink: &sink)
        case .csv, .csvWithNames:
            return try CSVScanner.scan(p, start: start, end: count, headerLines: format.headerRows, sink: &sink)
        case .jsonEachRow:
            return try JSONScanner.scan(p, start: start, end: count, kind: .objects, headerRows: 0, sink: &sink)
        case .jsonCompactEachRow, .jsonCompactEachRowWithNames, .jsonCompactEachRowWithNamesAndTypes:
            return try JSONScanner.scan(p, start: start, end: count, kind: .arrays, headerRows: format.headerRows, sink: &sink)
        case .rowBinary, .rowBinaryWithNames, .rowBinaryWithNamesAndTypes, .native:
            preconditionFailure("handled above")
        }
    }

    @inline(__always)
    static func hasBOM(_ p: UnsafePointer<UInt8>, _ count: Int) -> Bool {
        count >= 3 && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF
    }
}

/// Receives each data row's range while a scanner runs; specialised away for plain counting.
protocol RowSink {
    mutating func row(_ range: Range<Int>)
}

struct CountingSink: RowSink {
    @inline(__always) mutating func row(_ range: Range<Int>) {}
}

struct CollectingSink: RowSink {
    var ranges: [Range<Int>] = []
    mutating func row(_ range: Range<Int>) { ranges.append(range) }
}

/// Builders for the errors the scanners report, worded like ClickHouse's own.
enum ScanErrors {
    static let maxQuoted = 100

    static func quote(_ p: UnsafePointer<UInt8>, _ at: Int, _ end: Int) -> String {
        let length = min(maxQuoted, end - at)
        if length <= 0 { return "" }
        return String(decoding: UnsafeBufferPointer(start: p + at, count: length), as: UTF8.self)
    }

    static func make(code: Int, name: String, _ what: String, row: Int, offset: Int) -> RowScanError {
        RowScanError(code: code, name: name, message: "\(what): at row \(row), byte offset \(offset)", offset: offset)
    }

    /// 27: a specific byte was expected (ClickHouse's assertChar).
    static func expected(_ what: String, _ p: UnsafePointer<UInt8>, at: Int, end: Int, row: Int) -> RowScanError {
        let found = at < end ? "before: '\(quote(p, at, end))'" : "at end of stream."
        return make(code: 27, name: "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "Cannot parse input: expected \(what) \(found)", row: row, offset: at)
    }

    /// 62: malformed Values tuple (ClickHouse falls back to its SQL parser there, which reports a syntax error).
    static func syntax(_ what: String, _ p: UnsafePointer<UInt8>, at: Int, end: Int, row: Int) -> RowScanError {
        let found = at < end ? " here: '\(quote(p, at, end))'" : " at end of data"
        return make(code: 62, name: "SYNTAX_ERROR", "\(what)\(found)", row: row, offset: at)
    }

    /// 26: a quoted string or field runs to the end of the data.
    static func unterminatedString(at: Int, row: Int, _ p: UnsafePointer<UInt8>, end: Int) -> RowScanError {
        make(code: 26, name: "CANNOT_PARSE_QUOTED_STRING",
             "Cannot parse quoted string: expected closing quote for the string starting at '\(quote(p, at, end))'", row: row, offset: at)
    }

    /// 33: the data ends inside a row.
    static func unexpectedEnd(_ format: String, at: Int, row: Int) -> RowScanError {
        make(code: 33, name: "CANNOT_READ_ALL_DATA", "Unexpected end of stream while parsing \(format) format", row: row, offset: at)
    }

    /// 25: the data ends with an unfinished backslash escape.
    static func danglingBackslash(at: Int, row: Int, _ p: UnsafePointer<UInt8>, end: Int) -> RowScanError {
        make(code: 25, name: "CANNOT_PARSE_ESCAPE_SEQUENCE",
             "Cannot parse escape sequence: the data ends with a backslash: '\(quote(p, at, end))'", row: row, offset: at)
    }

    /// 117: structurally wrong data (mismatched brackets, too deep nesting).
    static func incorrect(_ what: String, _ p: UnsafePointer<UInt8>, at: Int, end: Int, row: Int) -> RowScanError {
        make(code: 117, name: "INCORRECT_DATA", "\(what) before: '\(quote(p, at, end))'", row: row, offset: at)
    }
}
