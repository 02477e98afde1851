/// One field's value as text, unescaped per its format.
public enum FieldValue: Sendable, Hashable {
    /// TabSeparated/TSKV `\N`, CSV `\N` unquoted, Values `NULL` (any case), JSON `null`.
    case null
    /// `quoted`: the value was a string literal (`'...'` or `"..."` in Values, `"..."` in JSON and CSV). Numbers,
    /// `true`/`false`, expressions and nested arrays, objects and tuples come as their raw text, `quoted: false`.
    case text(String, quoted: Bool)
}

/// Reads the values of named columns out of the rows of the text input formats, for edge aggregation (the proxy
/// summarises numeric columns per group). Only the wanted fields become Strings; the others are skipped in place.
///
/// Unescaping follows ClickHouse (ReadHelpers.cpp: readEscapedString, readQuotedString, readCSVString,
/// readJSONString; TSKVRowInputFormat, JSONEachRowRowInputFormat):
/// - Values: `( v1, v2, ... )`; `'...'` and `"..."` strings with backslash escapes and a doubled quote as an escaped
///   quote; `NULL` in any case is null; anything else (numbers, expressions, nested `()` `[]` `{}`) is its trimmed
///   raw text.
/// - TabSeparated (+WithNames, +WithNamesAndTypes): fields split at `\t`; backslash escapes; a field that is exactly
///   `\N` is null. TabSeparatedRaw: no escapes and no null. A "\r" before the line feed stays in the last field.
/// - CSV (+WithNames): `,`-delimited; a field is quoted when `"` is its first byte after spaces and tabs, `""` inside
///   is a quote; unquoted fields are raw (nothing trimmed); unquoted `\N` is null; a "\r\n" line end is accepted and
///   one extra `,` at the end of a line is ignored, as ClickHouse does.
/// - JSONEachRow: keys and string values fully unescaped; numbers, `true`/`false` raw; `null` is null; nested
///   objects and arrays raw. JSONCompactEachRow*: the same values, by position.
/// - TSKV: `key=value` fields split at `\t`, TabSeparated escapes in keys and values; a bare `tskv` field is ignored;
///   an empty line is a row without fields.
///
/// Escapes in Values strings, TabSeparated and TSKV: `\a \b \e \f \n \r \t \v \0`, `\xHH`, `\N` (nothing inside a
/// longer value, as in ClickHouse), and any other byte after a backslash stands for itself.
public enum RowFieldReader {
    /// Names of the columns of positional formats: from the statement's column list, or from the header of *WithNames
    /// formats. `header`: the bytes of ScannedRows.header (nil when none).
    ///
    /// For *WithNames formats the header's names win over the statement's list (ClickHouse maps the data's columns
    /// by the header, input_format_with_names_use_header); without a header (empty data) the list is returned.
    /// JSONEachRow and TSKV name their fields in each row: the statement's list is returned as given. Binary formats
    /// throw (36 BAD_ARGUMENTS).
    public static func columnNames(
        format: InputFormat, statementColumns: [String]?, header: UnsafeRawBufferPointer?
    ) throws(RowScanError) -> [String]? {
        if format.isBinary { throw FieldErrors.binary(format) }
        guard format.headerRows > 0, let header, let base = header.baseAddress, header.count > 0 else {
            return statementColumns
        }
        let p = base.assumingMemoryBound(to: UInt8.self)
        let count = header.count
        var sink = CollectSink()
        var scratch: [UInt8] = []
        switch format.withoutHeader {
        case .tabSeparated:
            let lineEnd = LineScanner.lineEnd(p, from: 0, start: 0, end: count, backslashEscapes: true)
            let end = TextRows.contentEnd(p, 0..<lineEnd, escapes: true)
            _ = TextRows.tsvRow(p, start: 0, end: end, escapes: true, sink: &sink, scratch: &scratch)
        case .csv:
            let rowEnd = try CSVScanner.rowEnd(p, from: 0, end: count, row: 1)
            let end = TextRows.csvContentEnd(p, 0..<rowEnd)
            _ = try TextRows.csvRow(p, start: 0, end: end, row: 0, expected: -1, sink: &sink, scratch: &scratch)
        default: // JSONCompactEachRow: the first header array has the names
            let i = ValuesScanner.skipWhitespace(p, 0, count)
            guard i < count, p[i] == UInt8(ascii: "[") else {
                throw FieldErrors.expected("'['", row: 0, p, at: i, end: count)
            }
            let arrayEnd = try JSONFields.skipNested(p, from: i, end: count, row: 0)
            _ = try JSONFields.arrayRow(p, start: i, end: arrayEnd, row: 0, sink: &sink, scratch: &scratch)
        }
        var names: [String] = []
        names.reserveCapacity(sink.values.count)
        for value in sink.values {
            switch value {
            case .text(let name, _):
                names.append(name)
            case .null:
                names.append("\\N")
            }
        }
        if format.withoutHeader == .jsonCompactEachRow {
            for (index, value) in sink.values.enumerated() {
                guard case .text(_, quoted: true) = value else {
                    throw FieldErrors.make(
                        27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
                        "the header: Cannot parse input: expected a quoted column name, found \(FieldErrors.describe(value)) as name \(index + 1)",
                        offset: 0)
                }
            }
        }
        return names
    }

    /// Calls `visit` once per row, in order, with the values of `wanted` columns in `wanted` order.
    /// `rows`: the ScannedRows.rows region. `columns`: positional formats' names (from columnNames); ignored by
    /// JSONEachRow and TSKV, which name fields in each row.
    ///
    /// Data without rows returns without checking `columns`. In JSONEachRow and TSKV a wanted key that appears twice
    /// in a row is an error (117 INCORRECT_DATA, like ClickHouse for a table column); other keys are not checked.
    public static func read(
        _ rows: UnsafeRawBufferPointer, format: InputFormat, columns: [String]?, wanted: [String],
        visit: (_ row: Int, _ values: [FieldValue]) throws(RowScanError) -> Void
    ) throws(RowScanError) {
        if format.isBinary { throw FieldErrors.binary(format) }
        let rowFormat = format.withoutHeader
        let ranges: [Range<Int>]
        do throws(RowScanError) {
            ranges = try RowScanner.rowRanges(rows, format: rowFormat)
        } catch {
            var error = error
            error.message = "Batchhouse: " + error.message
            throw error
        }
        guard !ranges.isEmpty, let base = rows.baseAddress else { return }
        let p = base.assumingMemoryBound(to: UInt8.self)
        let names = WantedNames(wanted)
        var scratch: [UInt8] = []

        switch rowFormat {
        case .jsonEachRow, .tskv:
            let table = NameTable(names.unique)
            var sink = KeyedSink(count: names.unique.count)
            var keyScratch: [UInt8] = []
            for (index, range) in ranges.enumerated() {
                let row = index &+ 1
                sink.startRow()
                if rowFormat == .tskv {
                    let end = TextRows.contentEnd(p, range, escapes: true)
                    try TextRows.tskvRow(
                        p, start: range.lowerBound, end: end, row: row, table: table, sink: &sink, scratch: &scratch,
                        keyScratch: &keyScratch)
                } else {
                    try JSONFields.objectRow(
                        p, start: range.lowerBound, end: range.upperBound, row: row, table: table, sink: &sink,
                        scratch: &scratch, keyScratch: &keyScratch)
                }
                if let missing = sink.firstMissing {
                    throw FieldErrors.make(
                        16, "NO_SUCH_COLUMN_IN_TABLE",
                        "row \(row) has no value for column '\(names.unique[missing])', which the table's aggregate rule reads",
                        offset: range.lowerBound)
                }
                try visit(row, names.expand(sink.values))
            }
        default:
            guard let columns else { throw FieldErrors.noColumnNames() }
            var positionOf: [String: Int] = [:]
            positionOf.reserveCapacity(columns.count)
            for (position, name) in columns.enumerated() where positionOf[name] == nil { positionOf[name] = position }
            var slotAt = [Int](repeating: -1, count: columns.count)
            for (slot, name) in names.unique.enumerated() {
                guard let position = positionOf[name] else { throw FieldErrors.notAmongColumns(name, columns) }
                slotAt[position] = slot
            }
            var sink = SlotSink(slotAt: slotAt, count: names.unique.count)
            let expected = columns.count
            for (index, range) in ranges.enumerated() {
                let row = index &+ 1
                let found: Int
                switch rowFormat {
                case .values:
                    found = try ValuesFields.row(p, start: range.lowerBound, end: range.upperBound, row: row, sink: &sink, scratch: &scratch)
                case .tabSeparated, .tabSeparatedRaw:
                    let escapes = rowFormat == .tabSeparated
                    let end = TextRows.contentEnd(p, range, escapes: escapes)
                    found = TextRows.tsvRow(p, start: range.lowerBound, end: end, escapes: escapes, sink: &sink, scratch: &scratch)
                case .csv:
                    let end = TextRows.csvContentEnd(p, range)
                    found = try TextRows.csvRow(
                        p, start: range.lowerBound, end: end, row: row, expected: expected, sink: &sink, scratch: &scratch)
                default: // .jsonCompactEachRow
                    found = try JSONFields.arrayRow(p, start: range.lowerBound, end: range.upperBound, row: row, sink: &sink, scratch: &scratch)
                }
                if found != expected {
                    throw FieldErrors.make(
                        27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
                        "row \(row): Cannot parse input: expected \(expected) fields, found \(found): '\(ScanErrors.quote(p, range.lowerBound, range.upperBound))'",
                        offset: range.lowerBound)
                }
                try visit(row, names.expand(sink.values))
            }
        }
    }

    /// Convenience for tests and small inputs.
    public static func read(
        _ bytes: [UInt8], format: InputFormat, columns: [String]?, wanted: [String],
        visit: (_ row: Int, _ values: [FieldValue]) throws(RowScanError) -> Void
    ) throws(RowScanError) {
        let result: Result<Void, RowScanError> = bytes.withUnsafeBytes { buffer in
            do throws(RowScanError) {
                try read(buffer, format: format, columns: columns, wanted: wanted, visit: visit)
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try result.get()
    }

    /// A finite decimal number in `value` (text, quoted or not; surrounding spaces allowed; sign, digits, '.',
    /// exponent; 0x hex is not accepted). Nil for null, empty, non-numeric, inf/nan, or non-finite results.
    public static func number(_ value: FieldValue) -> Double? {
        guard case .text(let text, _) = value else { return nil }
        return withBytes(text) { bytes in
            let (start, end) = TimeText.trimmed(bytes)
            return decimal(bytes, start, end)
        }
    }

    /// A point in time as Unix seconds (fractional allowed): a number is Unix seconds; 'YYYY-MM-DD hh:mm:ss[.fraction]'
    /// and 'YYYY-MM-DD' are UTC; ISO 8601 'YYYY-MM-DDThh:mm:ss[.fraction](Z|+hh:mm|-hh:mm|+hhmm)' honours the offset.
    /// Either separator (' ' or 'T') may go with or without an offset; no offset means UTC. Surrounding spaces are
    /// allowed. Nil otherwise (and for invalid calendar dates like 2026-02-30, hour 24, second 60, etc.).
    public static func unixSeconds(_ value: FieldValue) -> Double? {
        guard case .text(let text, _) = value else { return nil }
        return withBytes(text) { bytes in
            let (start, end) = TimeText.trimmed(bytes)
            if let seconds = decimal(bytes, start, end) { return seconds }
            return TimeText.dateTime(bytes, start, end)
        }
    }

    private static func withBytes<T>(_ text: String, _ body: (UnsafeBufferPointer<UInt8>) -> T?) -> T? {
        if let result = text.utf8.withContiguousStorageIfAvailable(body) { return result }
        return Array(text.utf8).withUnsafeBufferPointer(body)
    }

    /// `[+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)?`, then converted by the standard library.
    private static func decimal(_ b: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> Double? {
        var i = start
        if i < end && (b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-")) { i &+= 1 }
        var digits = 0
        while i < end && TimeText.isDigit(b[i]) { i &+= 1; digits &+= 1 }
        if i < end && b[i] == UInt8(ascii: ".") {
            i &+= 1
            while i < end && TimeText.isDigit(b[i]) { i &+= 1; digits &+= 1 }
        }
        if digits == 0 { return nil }
        if i < end && (b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E")) {
            i &+= 1
            if i < end && (b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-")) { i &+= 1 }
            var exponentDigits = 0
            while i < end && TimeText.isDigit(b[i]) { i &+= 1; exponentDigits &+= 1 }
            if exponentDigits == 0 { return nil }
        }
        if i != end { return nil }
        let text = String(decoding: UnsafeBufferPointer(rebasing: b[start..<end]), as: UTF8.self)
        guard let value = Double(text), value.isFinite else { return nil }
        return value
    }
}

// MARK: - Wanted names

/// `wanted` without repeats (values are read once per name), and how to spread them back in `wanted` order.
struct WantedNames {
    let unique: [String]
    private let uniqueIndex: [Int]
    private let isIdentity: Bool

    init(_ wanted: [String]) {
        var unique: [String] = []
        var indexOf: [String: Int] = [:]
        var uniqueIndex: [Int] = []
        uniqueIndex.reserveCapacity(wanted.count)
        for name in wanted {
            if let index = indexOf[name] {
                uniqueIndex.append(index)
            } else {
                indexOf[name] = unique.count
                uniqueIndex.append(unique.count)
                unique.append(name)
            }
        }
        self.unique = unique
        self.uniqueIndex = uniqueIndex
        self.isIdentity = unique.count == wanted.count
    }

    @inline(__always)
    func expand(_ values: [FieldValue]) -> [FieldValue] {
        isIdentity ? values : uniqueIndex.map { values[$0] }
    }
}

/// Looks up a key given as bytes among the wanted names without building a String: open addressing on FNV-1a.
struct NameTable {
    private let names: [[UInt8]]
    private let slots: [Int]
    private let mask: Int

    init(_ list: [String]) {
        let names = list.map { Array($0.utf8) }
        var capacity = 8
        while capacity < list.count &* 2 { capacity &<<= 1 }
        let mask = capacity &- 1
        var slots = [Int](repeating: -1, count: capacity)
        for (index, name) in names.enumerated() {
            let h = name.withUnsafeBufferPointer { Self.hash($0.baseAddress, $0.count) }
            var slot = h & mask
            while slots[slot] >= 0 { slot = (slot &+ 1) & mask }
            slots[slot] = index
        }
        self.names = names
        self.slots = slots
        self.mask = mask
    }

    @inline(__always)
    static func hash(_ p: UnsafePointer<UInt8>?, _ count: Int) -> Int {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        if let p {
            for i in 0..<count {
                h = (h ^ UInt64(p[i])) &* 0x0000_0100_0000_01B3
            }
        }
        return Int(truncatingIfNeeded: h ^ (h >> 29))
    }

    /// The index in the list of the name spelled by `p[0..<count]`, or nil.
    @inline(__always)
    func index(_ p: UnsafePointer<UInt8>?, _ count: Int) -> Int? {
        if names.isEmpty { return nil }
        var slot = Self.hash(p, count) & mask
        while true {
            let index = slots[slot]
            if index < 0 { return nil }
            let equal = names[index].withUnsafeBufferPointer { name -> Bool in
                guard name.count == count else { return false }
                guard let p, let q = name.baseAddress else { return count == 0 }
                for i in 0..<count where p[i] != q[i] { return false }
                return true
            }
            if equal { return index }
            slot = (slot &+ 1) & mask
        }
    }

    func index(_ bytes: [UInt8]) -> Int? {
        bytes.withUnsafeBufferPointer { index($0.baseAddress, $0.count) }
    }
}

// MARK: - Sinks

/// Where a row's fields go: positional readers ask per field whether to decode it.
protocol FieldSink {
    func wants(_ field: Int) -> Bool
    mutating func put(_ field: Int, _ value: FieldValue)
}

/// Positional formats: field position → slot of a wanted name.
struct SlotSink: FieldSink {
    let slotAt: [Int]
    var values: [FieldValue]

    init(slotAt: [Int], count: Int) {
        self.slotAt = slotAt
        values = [FieldValue](repeating: .null, count: count)
    }

    @inline(__always)
    func wants(_ field: Int) -> Bool { field < slotAt.count && slotAt[field] >= 0 }

    @inline(__always)
    mutating func put(_ field: Int, _ value: FieldValue) { values[slotAt[field]] = value }
}

/// Headers: every field.
struct CollectSink: FieldSink {
    var values: [FieldValue] = []

    func wants(_ field: Int) -> Bool { true }

    mutating func put(_ field: Int, _ value: FieldValue) { values.append(value) }
}

/// JSONEachRow and TSKV: values by wanted index, and which were seen in the current row.
struct KeyedSink {
    var values: [FieldValue]
    private var seen: [Bool]

    init(count: Int) {
        values = [FieldValue](repeating: .null, count: count)
        seen = [Bool](repeating: false, count: count)
    }

    mutating func startRow() {
        for i in seen.indices { seen[i] = false }
    }

    /// False when the key was already seen in this row.
    @inline(__always)
    mutating func put(_ index: Int, _ value: FieldValue) -> Bool {
        if seen[index] { return false }
        seen[index] = true
        values[index] = value
        return true
    }

    var firstMissing: Int? { seen.firstIndex(of: false) }
}

// MARK: - Shared decoding

enum Unescape {
    @inline(__always)
    static func string(_ p: UnsafePointer<UInt8>, _ start: Int, _ end: Int) -> String {
        String(decoding: UnsafeBufferPointer(start: p + start, count: end &- start), as: UTF8.self)
    }

    @inline(__always)
    static func append(_ p: UnsafePointer<UInt8>, _ start: Int, _ end: Int, to out: inout [UInt8]) {
        if end > start { out.append(contentsOf: UnsafeBufferPointer(start: p + start, count: end &- start)) }
    }

    /// ClickHouse's parseEscapeSequence: the byte a one-character escape stands for.
    @inline(__always)
    static func simpleEscape(_ c: UInt8) -> UInt8 {
        switch c {
        case UInt8(ascii: "a"): return 0x07
        case UInt8(ascii: "b"): return 0x08
        case UInt8(ascii: "e"): return 0x1B
        case UInt8(ascii: "f"): return 0x0C
        case UInt8(ascii: "n"): return 0x0A
        case UInt8(ascii: "r"): return 0x0D
        case UInt8(ascii: "t"): return 0x09
        case UInt8(ascii: "v"): return 0x0B
        case UInt8(ascii: "0"): return 0x00
        default: return c
        }
    }

    @inline(__always)
    static func hexDigit(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c &- UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c &- UInt8(ascii: "a") &+ 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c &- UInt8(ascii: "A") &+ 10
        default: return nil
        }
    }

    /// ClickHouse's parseComplexEscapeSequence for the backslash at `k`: `\xHH`, `\N` (nothing), or a one-character
    /// escape. `\x` without two hex digits is taken as `x`. A backslash at `end` stays a backslash. Returns the index
    /// after the sequence.
    @inline(__always)
    static func complexEscape(_ p: UnsafePointer<UInt8>, at k: Int, end: Int, into out: inout [UInt8]) -> Int {
        let n = k &+ 1
        if n >= end {
            out.append(UInt8(ascii: "\\"))
            return end
        }
        let c = p[n]
        if c == UInt8(ascii: "x") {
            if n &+ 2 < end, let high = hexDigit(p[n &+ 1]), let low = hexDigit(p[n &+ 2]) {
                out.append(high &<< 4 | low)
                return n &+ 3
            }
            out.append(c)
            return n &+ 1
        }
        if c == UInt8(ascii: "N") { return n &+ 1 }
        out.append(simpleEscape(c))
        return n &+ 1
    }

    /// `p[start..<end]` with TabSeparated escapes decoded.
    static func escaped(_ p: UnsafePointer<UInt8>, _ start: Int, _ end: Int, scratch: inout [UInt8]) -> String {
        scratch.removeAll(keepingCapacity: true)
        var i = start
        while i < end {
            let k = ByteSearch.find(UInt8(ascii: "\\"), in: p, from: i, end: end)
            append(p, i, k, to: &scratch)
            if k >= end { break }
            i = complexEscape(p, at: k, end: end, into: &scratch)
        }
        return String(decoding: scratch, as: UTF8.self)
    }
}

// MARK: - Line formats: TabSeparated, TabSeparatedRaw, CSV, TSKV

enum TextRows {
    /// The end of a line row's content: without its terminating (unescaped) "\n".
    @inline(__always)
    static func contentEnd(_ p: UnsafePointer<UInt8>, _ range: Range<Int>, escapes: Bool) -> Int {
        var end = range.upperBound
        if end > range.lowerBound && p[end &- 1] == UInt8(ascii: "\n")
            && !(escapes && LineScanner.isEscaped(p, newlineAt: end &- 1, start: range.lowerBound)) {
            end &-= 1
        }
        return end
    }

    /// CSV: without the "\n" or "\r\n" that ends the row (outside quotes by construction of the row ranges).
    @inline(__always)
    static func csvContentEnd(_ p: UnsafePointer<UInt8>, _ range: Range<Int>) -> Int {
        var end = range.upperBound
        if end > range.lowerBound && p[end &- 1] == UInt8(ascii: "\n") {
            end &-= 1
            if end > range.lowerBound && p[end &- 1] == UInt8(ascii: "\r") { end &-= 1 }
        }
        return end
    }

    /// The end of the TabSeparated field starting at `from` (its `\t` or `end`), and whether it has a backslash.
    @inline(__always)
    static func tsvFieldEnd(_ p: UnsafePointer<UInt8>, from: Int, end: Int, escapes: Bool) -> (end: Int, escaped: Bool) {
        if !escapes { return (ByteSearch.find(UInt8(ascii: "\t"), in: p, from: from, end: end), false) }
        var i = from
        var escaped = false
        while true {
            i = ByteSearch.find(UInt8(ascii: "\t"), UInt8(ascii: "\\"), in: p, from: i, end: end)
            if i >= end { return (end, escaped) }
            if p[i] == UInt8(ascii: "\t") { return (i, escaped) }
            escaped = true
            i &+= 2 // the backslash and the escaped byte, which may be a tab
        }
    }

    @inline(__always)
    static func tsvValue(
        _ p: UnsafePointer<UInt8>, _ start: Int, _ end: Int, escapes: Bool, escaped: Bool, scratch: inout [UInt8]
    ) -> FieldValue {
        if !escapes || !escaped { return .text(Unescape.string(p, start, end), quoted: false) }
        if end &- start == 2 && p[start] == UInt8(ascii: "\\") && p[start &+ 1] == UInt8(ascii: "N") { return .null }
        return .text(Unescape.escaped(p, start, end, scratch: &scratch), quoted: false)
    }

    /// The fields of one TabSeparated row `p[start..<end]` (no line feed); returns how many there are.
    static func tsvRow<Sink: FieldSink>(
        _ p: UnsafePointer<UInt8>, start: Int, end: Int, escapes: Bool, sink: inout Sink, scratch: inout [UInt8]
    ) -> Int {
        var i = start
        var field = 0
        while true {
            let (fieldEnd, escaped) = tsvFieldEnd(p, from: i, end: end, escapes: escapes)
            if sink.wants(field) {
                sink.put(field, tsvValue(p, i, fieldEnd, escapes: escapes, escaped: escaped, scratch: &scratch))
            }
            field &+= 1
            if fieldEnd >= end { return field }
            i = fieldEnd &+ 1
        }
    }

    /// The fields of one TSKV row `p[start..<end]` (no line feed).
    static func tskvRow(
        _ p: UnsafePointer<UInt8>, start: Int, end: Int, row: Int, table: NameTable, sink: inout KeyedSink,
        scratch: inout [UInt8], keyScratch: inout [UInt8]
    ) throws(RowScanError) {
        if start == end { return } // an empty line: a row without fields, as ClickHouse allows
        var i = start
        while true {
            let (fieldEnd, escaped) = tsvFieldEnd(p, from: i, end: end, escapes: true)
            // The key ends at the first unescaped `=`.
            var eq = i
            var keyEscaped = false
            while true {
                eq = ByteSearch.find(UInt8(ascii: "="), UInt8(ascii: "\\"), in: p, from: eq, end: fieldEnd)
                if eq >= fieldEnd {
                    eq = fieldEnd
                    break
                }
                if p[eq] == UInt8(ascii: "=") { break }
                keyEscaped = true
                eq &+= 2
            }
            if eq == fieldEnd {
                let isTSKV = fieldEnd &- i == 4 && p[i] == UInt8(ascii: "t") && p[i &+ 1] == UInt8(ascii: "s")
                    && p[i &+ 2] == UInt8(ascii: "k") && p[i &+ 3] == UInt8(ascii: "v")
                if !isTSKV {
                    let name = Unescape.escaped(p, i, fieldEnd, scratch: &keyScratch)
                    throw FieldErrors.make(
                        117, "INCORRECT_DATA",
                        "row \(row): Found field without value while parsing TSKV format: '\(FieldErrors.clip(name))'", offset: i)
                }
            } else {
                let index: Int?
                if keyEscaped {
                    keyScratch.removeAll(keepingCapacity: true)
                    var k = i
                    while k < eq {
                        let b = ByteSearch.find(UInt8(ascii: "\\"), in: p, from: k, end: eq)
                        Unescape.append(p, k, b, to: &keyScratch)
                        if b >= eq { break }
                        k = Unescape.complexEscape(p, at: b, end: eq, into: &keyScratch)
                    }
                    index = table.index(keyScratch)
                } else {
                    index = table.index(p + i, eq &- i)
                }
                if let index {
                    let value = tsvValue(p, eq &+ 1, fieldEnd, escapes: true, escaped: escaped, scratch: &scratch)
                    if !sink.put(index, value) {
                        let key = keyEscaped ? String(decoding: keyScratch, as: UTF8.self) : Unescape.string(p, i, eq)
                        throw FieldErrors.make(
                            117, "INCORRECT_DATA", "row \(row): Duplicate field found while parsing TSKV format: \(FieldErrors.clip(key))",
                            offset: i)
                    }
                }
            }
            if fieldEnd >= end { return }
            i = fieldEnd &+ 1
        }
    }

    @inline(__always)
    static func isBlank(_ c: UInt8) -> Bool { c == UInt8(ascii: " ") || c == UInt8(ascii: "\t") }

    /// The fields of one CSV row `p[start..<end]` (no line end); returns how many there are. `expected`: the number
    /// of columns, for ClickHouse's tolerance of one extra delimiter at the end of a line (-1: none).
    static func csvRow<Sink: FieldSink>(
        _ p: UnsafePointer<UInt8>, start: Int, end: Int, row: Int, expected: Int, sink: inout Sink, scratch: inout [UInt8]
    ) throws(RowScanError) -> Int {
        var i = start
        var field = 0
        while true {
            var k = i
            while k < end && isBlank(p[k]) { k &+= 1 }
            let next: Int // the delimiter after the field, or `end`
            if k < end && p[k] == UInt8(ascii: "\"") {
                var j = k &+ 1
                var doubled = false
                var close = 0
                while true {
                    let q = ByteSearch.find(UInt8(ascii: "\""), in: p, from: j, end: end)
                    if q >= end { throw FieldErrors.unterminated(row: row, p, at: k, end: end) }
                    if q &+ 1 < end && p[q &+ 1] == UInt8(ascii: "\"") {
                        doubled = true
                        j = q &+ 2
                        continue
                    }
                    close = q
                    break
                }
                var after = close &+ 1
                while after < end && isBlank(p[after]) { after &+= 1 }
                if after < end && p[after] != UInt8(ascii: ",") {
                    throw FieldErrors.expected("',' after a quoted CSV field", row: row, p, at: after, end: end)
                }
                if sink.wants(field) {
                    let text: String
                    if doubled {
                        scratch.removeAll(keepingCapacity: true)
                        var s = k &+ 1
                        while s < close {
                            let q = ByteSearch.find(UInt8(ascii: "\""), in: p, from: s, end: close)
                            Unescape.append(p, s, q, to: &scratch)
                            if q >= close { break }
                            scratch.append(UInt8(ascii: "\""))
                            s = q &+ 2
                        }
                        text = String(decoding: scratch, as: UTF8.self)
                    } else {
                        text = Unescape.string(p, k &+ 1, close)
                    }
                    sink.put(field, .text(text, quoted: true))
                }
                next = after
            } else {
                let j = ByteSearch.find(UInt8(ascii: ","), in: p, from: i, end: end)
                if sink.wants(field) {
                    if j &- i == 2 && p[i] == UInt8(ascii: "\\") && p[i &+ 1] == UInt8(ascii: "N") {
                        sink.put(field, .null)
                    } else {
                        sink.put(field, .text(Unescape.string(p, i, j), quoted: false))
                    }
                }
                next = j
            }
            field &+= 1
            if next >= end { return field }
            if field == expected {
                var t = next &+ 1
                while t < end && isBlank(p[t]) { t &+= 1 }
                if t == end { return field }
            }
            i = next &+ 1
        }
    }
}

// MARK: - Values

enum ValuesFields {
    /// The fields of one `( ... )` tuple `p[start..<end]`; returns how many there are.
    static func row<Sink: FieldSink>(
        _ p: UnsafePointer<UInt8>, start: Int, end: Int, row: Int, sink: inout Sink, scratch: inout [UInt8]
    ) throws(RowScanError) -> Int {
        var i = ValuesScanner.skipWhitespace(p, start &+ 1, end)
        if i < end && p[i] == UInt8(ascii: ")") { return 0 }
        var field = 0
        while true {
            let s = i
            let e = try fieldEnd(p, from: s, end: end, row: row)
            var t = e
            while t > s && ValuesScanner.isWhitespace(p[t &- 1]) { t &-= 1 }
            if t == s { throw FieldErrors.syntax("expected a value", row: row, p, at: e, end: end) }
            if sink.wants(field) { sink.put(field, try value(p, s, t, row: row, scratch: &scratch)) }
            field &+= 1
            if p[e] == UInt8(ascii: ")") { return field }
            i = ValuesScanner.skipWhitespace(p, e &+ 1, end)
        }
    }

    /// The `,` or `)` that ends the field starting at `from`, outside strings and nested brackets.
    @inline(__always)
    static func fieldEnd(_ p: UnsafePointer<UInt8>, from: Int, end: Int, row: Int) throws(RowScanError) -> Int {
        var i = from
        var depth = 0
        while i < end {
            let c = p[i]
            switch c {
            case UInt8(ascii: ","):
                if depth == 0 { return i }
                i &+= 1
            case UInt8(ascii: "("), UInt8(ascii: "["), UInt8(ascii: "{"):
                depth &+= 1
                i &+= 1
            case UInt8(ascii: ")"), UInt8(ascii: "]"), UInt8(ascii: "}"):
                if depth == 0 { return i }
                depth &-= 1
                i &+= 1
            case UInt8(ascii: "'"), UInt8(ascii: "\""), UInt8(ascii: "`"):
                i = try quotedEnd(p, from: i, end: end, row: row)
            default:
                i &+= 1
            }
        }
        throw FieldErrors.syntax("unterminated tuple: expected ')'", row: row, p, at: from, end: end)
    }

    /// The index after the string whose opening quote is at `from` (a backslash escapes the next byte).
    @inline(__always)
    static func quotedEnd(_ p: UnsafePointer<UInt8>, from: Int, end: Int, row: Int) throws(RowScanError) -> Int {
        let quote = p[from]
        var i = from &+ 1
        while true {
            i = ByteSearch.find(quote, UInt8(ascii: "\\"), in: p, from: i, end: end)
            if i >= end { throw FieldErrors.unterminated(row: row, p, at: from, end: end) }
            if p[i] == quote { return i &+ 1 }
            i &+= 2
        }
    }

    static func value(_ p: UnsafePointer<UInt8>, _ s: Int, _ t: Int, row: Int, scratch: inout [UInt8]) throws(RowScanError) -> FieldValue {
        let c = p[s]
        if c == UInt8(ascii: "'") || c == UInt8(ascii: "\"") {
            // One literal, possibly with doubled quotes: `'it''s'` ends and restarts.
            var e = try quotedEnd(p, from: s, end: t, row: row)
            while e < t && p[e] == c { e = try quotedEnd(p, from: e, end: t, row: row) }
            if e == t { return .text(decodeQuoted(p, s, t, scratch: &scratch), quoted: true) }
        }
        if t &- s == 4 && (p[s] | 0x20) == UInt8(ascii: "n") && (p[s &+ 1] | 0x20) == UInt8(ascii: "u")
            && (p[s &+ 2] | 0x20) == UInt8(ascii: "l") && (p[s &+ 3] | 0x20) == UInt8(ascii: "l") {
            return .null
        }
        return .text(Unescape.string(p, s, t), quoted: false)
    }

    /// ClickHouse's readQuotedStringWithSQLStyle for the literal `p[s..<t]` (quotes included).
    static func decodeQuoted(_ p: UnsafePointer<UInt8>, _ s: Int, _ t: Int, scratch: inout [UInt8]) -> String {
        let quote = p[s]
        let inner = t &- 1
        if ByteSearch.find(quote, UInt8(ascii: "\\"), in: p, from: s &+ 1, end: inner) == inner {
            return Unescape.string(p, s &+ 1, inner)
        }
        scratch.removeAll(keepingCapacity: true)
        var i = s &+ 1
        while i < t {
            let k = ByteSearch.find(quote, UInt8(ascii: "\\"), in: p, from: i, end: t)
            Unescape.append(p, i, k, to: &scratch)
            if k >= t { break }
            if p[k] == quote {
                if k &+ 1 < t && p[k &+ 1] == quote {
                    scratch.append(quote)
                    i = k &+ 2
                    continue
                }
                break
            }
            i = Unescape.complexEscape(p, at: k, end: t, into: &scratch)
        }
        return String(decoding: scratch, as: UTF8.self)
    }
}

// MARK: - JSON

enum JSONFields {
    /// The index after the string whose opening quote is at `from`, and whether it has a backslash.
    @inline(__always)
    static func stringEnd(_ p: UnsafePointer<UInt8>, from: Int, end: Int, row: Int) throws(RowScanError) -> (end: Int, escaped: Bool) {
        var i = from &+ 1
        var escaped = false
        while true {
            i = ByteSearch.find(UInt8(ascii: "\""), UInt8(ascii: "\\"), in: p, from: i, end: end)
            if i >= end { throw FieldErrors.unterminated(row: row, p, at: from, end: end) }
            if p[i] == UInt8(ascii: "\"") { return (i &+ 1, escaped) }
            escaped = true
            i &+= 2
        }
    }

    /// The index after the object or array whose opening bracket is at `from` (brackets were matched by the scanner).
    static func skipNested(_ p: UnsafePointer<UInt8>, from: Int, end: Int, row: Int) throws(RowScanError) -> Int {
        var depth = 0
        var i = from
        while true {
            i = ByteSearch.findJSONStructural(in: p, from: i, end: end)
            if i >= end { throw FieldErrors.make(33, "CANNOT_READ_ALL_DATA", "\(FieldErrors.at(row)): Unexpected end of stream in a JSON value", offset: from) }
            let c = p[i]
            if c == UInt8(ascii: "\"") {
                i = try stringEnd(p, from: i, end: end, row: row).end
            } else if c == UInt8(ascii: "{") || c == UInt8(ascii: "[") {
                depth &+= 1
                i &+= 1
            } else {
                depth &-= 1
                i &+= 1
                if depth == 0 { return i }
            }
        }
    }

    @inline(__always)
    static func hex4(_ p: UnsafePointer<UInt8>, at i: Int, end: Int) -> UInt32? {
        guard i &+ 4 <= end,
            let a = Unescape.hexDigit(p[i]), let b = Unescape.hexDigit(p[i &+ 1]),
            let c = Unescape.hexDigit(p[i &+ 2]), let d = Unescape.hexDigit(p[i &+ 3])
        else { return nil }
        return UInt32(a) << 12 | UInt32(b) << 8 | UInt32(c) << 4 | UInt32(d)
    }

    @inline(__always)
    static func appendUTF8(_ code: UInt32, to out: inout [UInt8]) {
        if code < 0x80 {
            out.append(UInt8(code))
        } else if code < 0x800 {
            out.append(UInt8(0xC0 | (code >> 6)))
            out.append(UInt8(0x80 | (code & 0x3F)))
        } else if code < 0x10000 {
            out.append(UInt8(0xE0 | (code >> 12)))
            out.append(UInt8(0x80 | ((code >> 6) & 0x3F)))
            out.append(UInt8(0x80 | (code & 0x3F)))
        } else {
            out.append(UInt8(0xF0 | (code >> 18)))
            out.append(UInt8(0x80 | ((code >> 12) & 0x3F)))
            out.append(UInt8(0x80 | ((code >> 6) & 0x3F)))
            out.append(UInt8(0x80 | (code & 0x3F)))
        }
    }

    /// ClickHouse's readJSONString for the content `p[start..<end]` (between the quotes) into `out`.
    static func decode(_ p: UnsafePointer<UInt8>, _ start: Int, _ end: Int, row: Int, into out: inout [UInt8]) throws(RowScanError) {
        out.removeAll(keepingCapacity: true)
        var i = start
        while i < end {
            let k = ByteSearch.find(UInt8(ascii: "\\"), in: p, from: i, end: end)
            Unescape.append(p, i, k, to: &out)
            if k >= end { return }
            let n = k &+ 1
            if n >= end { throw FieldErrors.badEscape("the string ends with a backslash", row: row, p, at: k, end: end) }
            switch p[n] {
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                guard let code = hex4(p, at: n &+ 1, end: end) else {
                    throw FieldErrors.badEscape("expected four hex digits after \\u", row: row, p, at: k, end: end)
                }
                i = n &+ 5
                if code >= 0xD800 && code <= 0xDBFF {
                    guard i &+ 1 < end, p[i] == UInt8(ascii: "\\"), p[i &+ 1] == UInt8(ascii: "u"),
                        let low = hex4(p, at: i &+ 2, end: end)
                    else {
                        throw FieldErrors.badEscape("missing second part of surrogate pair", row: row, p, at: k, end: end)
                    }
                    guard low >= 0xDC00 && low <= 0xDFFF else {
                        throw FieldErrors.badEscape("incorrect surrogate pair of unicode escape sequences", row: row, p, at: k, end: end)
                    }
                    appendUTF8(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00), to: &out)
                    i &+= 6
                } else {
                    appendUTF8(code, to: &out) // a lone low surrogate becomes U+FFFD when the String is made
                }
                continue
            default: out.append(p[n]) // `"`, `\`, `/`, and, as in ClickHouse, any other byte for itself
            }
            i = n &+ 1
        }
    }

    @inline(__always)
    static func isTokenEnd(_ c: UInt8) -> Bool {
        switch c {
        case UInt8(ascii: ","), UInt8(ascii: "}"), UInt8(ascii: "]"), UInt8(ascii: ":"), UInt8(ascii: "\""),
            UInt8(ascii: "{"), UInt8(ascii: "["):
            return true
        default:
            return ValuesScanner.isWhitespace(c)
        }
    }

    /// One value at `i` (no whitespace before it): its decoded form when `want` (else `.null`) and the index after it.
    @inline(__always)
    static func value(
        _ p: UnsafePointer<UInt8>, at i: Int, end: Int, row: Int, want: Bool, scratch: inout [UInt8]
    ) throws(RowScanError) -> (FieldValue, Int) {
        guard i < end else { throw FieldErrors.expected("a JSON value", row: row, p, at: i, end: end) }
        let c = p[i]
        if c == UInt8(ascii: "\"") {
            let (stringEnd, escaped) = try stringEnd(p, from: i, end: end, row: row)
            guard want else { return (.null, stringEnd) }
            if !escaped { return (.text(Unescape.string(p, i &+ 1, stringEnd &- 1), quoted: true), stringEnd) }
            try decode(p, i &+ 1, stringEnd &- 1, row: row, into: &scratch)
            return (.text(String(decoding: scratch, as: UTF8.self), quoted: true), stringEnd)
        }
        if c == UInt8(ascii: "{") || c == UInt8(ascii: "[") {
            let nestedEnd = try skipNested(p, from: i, end: end, row: row)
            return (want ? .text(Unescape.string(p, i, nestedEnd), quoted: false) : .null, nestedEnd)
        }
        var j = i
        while j < end && !isTokenEnd(p[j]) { j &+= 1 }
        if j == i { throw FieldErrors.expected("a JSON value", row: row, p, at: i, end: end) }
        guard want else { return (.null, j) }
        if j &- i == 4 && p[i] == UInt8(ascii: "n") && p[i &+ 1] == UInt8(ascii: "u") && p[i &+ 2] == UInt8(ascii: "l")
            && p[i &+ 3] == UInt8(ascii: "l") {
            return (.null, j)
        }
        return (.text(Unescape.string(p, i, j), quoted: false), j)
    }

    /// The values of one `[ ... ]` array `p[start..<end]`; returns how many there are.
    static func arrayRow<Sink: FieldSink>(
        _ p: UnsafePointer<UInt8>, start: Int, end: Int, row: Int, sink: inout Sink, scratch: inout [UInt8]
    ) throws(RowScanError) -> Int {
        var i = ValuesScanner.skipWhitespace(p, start &+ 1, end)
        if i < end && p[i] == UInt8(ascii: "]") { return 0 }
        var field = 0
        while true {
            let want = sink.wants(field)
            let (value, next) = try value(p, at: i, end: end, row: row, want: want, scratch: &scratch)
            if want { sink.put(field, value) }
            field &+= 1
            i = ValuesScanner.skipWhitespace(p, next, end)
            if i < end && p[i] == UInt8(ascii: ",") {
                i = ValuesScanner.skipWhitespace(p, i &+ 1, end)
                continue
            }
            if i < end && p[i] == UInt8(ascii: "]") { return field }
            throw FieldErrors.expected("',' or ']'", row: row, p, at: i, end: end)
        }
    }

    /// The wanted values of one `{ ... }` object `p[start..<end]`.
    static func objectRow(
        _ p: UnsafePointer<UInt8>, start: Int, end: Int, row: Int, table: NameTable, sink: inout KeyedSink,
        scratch: inout [UInt8], keyScratch: inout [UInt8]
    ) throws(RowScanError) {
        var i = ValuesScanner.skipWhitespace(p, start &+ 1, end)
        if i < end && p[i] == UInt8(ascii: "}") { return }
        while true {
            guard i < end, p[i] == UInt8(ascii: "\"") else { throw FieldErrors.expected("'\"'", row: row, p, at: i, end: end) }
            let keyStart = i
            let (keyEnd, keyEscaped) = try stringEnd(p, from: i, end: end, row: row)
            let index: Int?
            if keyEscaped {
                try decode(p, keyStart &+ 1, keyEnd &- 1, row: row, into: &keyScratch)
                index = table.index(keyScratch)
            } else {
                index = table.index(p + (keyStart &+ 1), keyEnd &- keyStart &- 2)
            }
            i = ValuesScanner.skipWhitespace(p, keyEnd, end)
            guard i < end, p[i] == UInt8(ascii: ":") else { throw FieldErrors.expected("':'", row: row, p, at: i, end: end) }
            i = ValuesScanner.skipWhitespace(p, i &+ 1, end)
            let (value, next) = try value(p, at: i, end: end, row: row, want: index != nil, scratch: &scratch)
            if let index, !sink.put(index, value) {
                let key = keyEscaped ? String(decoding: keyScratch, as: UTF8.self) : Unescape.string(p, keyStart &+ 1, keyEnd &- 1)
                throw FieldErrors.make(
                    117, "INCORRECT_DATA", "row \(row): Duplicate field found while parsing JSONEachRow format: \(FieldErrors.clip(key))",
                    offset: keyStart)
            }
            i = ValuesScanner.skipWhitespace(p, next, end)
            if i < end && p[i] == UInt8(ascii: ",") {
                i = ValuesScanner.skipWhitespace(p, i &+ 1, end)
                continue
            }
            if i < end && p[i] == UInt8(ascii: "}") { return }
            throw FieldErrors.expected("',' or '}'", row: row, p, at: i, end: end)
        }
    }
}

// MARK: - Dates

enum TimeText {
    @inline(__always)
    static func isDigit(_ c: UInt8) -> Bool { c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") }

    /// Without the ASCII whitespace around it.
    static func trimmed(_ b: UnsafeBufferPointer<UInt8>) -> (Int, Int) {
        var start = 0
        var end = b.count
        while start < end && ValuesScanner.isWhitespace(b[start]) { start &+= 1 }
        while end > start && ValuesScanner.isWhitespace(b[end &- 1]) { end &-= 1 }
        return (start, end)
    }

    /// `count` digits at `i` as a number, or nil.
    @inline(__always)
    static func digits(_ b: UnsafeBufferPointer<UInt8>, _ i: Int, _ count: Int, _ end: Int) -> Int? {
        guard i &+ count <= end else { return nil }
        var value = 0
        for k in i..<(i &+ count) {
            guard isDigit(b[k]) else { return nil }
            value = value &* 10 &+ Int(b[k] &- UInt8(ascii: "0"))
        }
        return value
    }

    static func isLeap(_ year: Int) -> Bool { (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 }

    static func daysInMonth(_ year: Int, _ month: Int) -> Int {
        switch month {
        case 2: return isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    static func daysFromCivil(_ year: Int, _ month: Int, _ day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    /// `YYYY-MM-DD`, or that followed by ` ` or `T`, `hh:mm:ss`, an optional `.fraction` and an optional
    /// `Z`, `±hh:mm` or `±hhmm`.
    static func dateTime(_ b: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> Double? {
        var i = start
        guard let year = digits(b, i, 4, end), i &+ 4 < end, b[i &+ 4] == UInt8(ascii: "-"),
            let month = digits(b, i &+ 5, 2, end), i &+ 7 < end, b[i &+ 7] == UInt8(ascii: "-"),
            let day = digits(b, i &+ 8, 2, end)
        else { return nil }
        guard month >= 1 && month <= 12 && day >= 1 && day <= daysInMonth(year, month) else { return nil }
        i &+= 10
        let days = Double(daysFromCivil(year, month, day))
        if i == end { return days * 86_400 }
        guard b[i] == UInt8(ascii: " ") || b[i] == UInt8(ascii: "T") else { return nil }
        i &+= 1
        guard let hour = digits(b, i, 2, end), i &+ 2 < end, b[i &+ 2] == UInt8(ascii: ":"),
            let minute = digits(b, i &+ 3, 2, end), i &+ 5 < end, b[i &+ 5] == UInt8(ascii: ":"),
            let second = digits(b, i &+ 6, 2, end)
        else { return nil }
        guard hour < 24 && minute < 60 && second < 60 else { return nil }
        i &+= 8
        var fraction = 0.0
        if i < end && b[i] == UInt8(ascii: ".") {
            i &+= 1
            var numerator = 0
            var scale = 1.0
            var count = 0
            while i < end && isDigit(b[i]) {
                if count < 15 {
                    numerator = numerator &* 10 &+ Int(b[i] &- UInt8(ascii: "0"))
                    scale *= 10
                }
                count &+= 1
                i &+= 1
            }
            if count == 0 { return nil }
            fraction = Double(numerator) / scale
        }
        var offset = 0
        if i < end {
            let c = b[i]
            if c == UInt8(ascii: "Z") {
                i &+= 1
            } else if c == UInt8(ascii: "+") || c == UInt8(ascii: "-") {
                guard let offsetHours = digits(b, i &+ 1, 2, end) else { return nil }
                var k = i &+ 3
                if k < end && b[k] == UInt8(ascii: ":") { k &+= 1 }
                guard let offsetMinutes = digits(b, k, 2, end), offsetHours < 24, offsetMinutes < 60 else { return nil }
                offset = (offsetHours * 3600 + offsetMinutes * 60) * (c == UInt8(ascii: "-") ? -1 : 1)
                i = k &+ 2
            } else {
                return nil
            }
        }
        guard i == end else { return nil }
        let seconds = Double(hour * 3600 + minute * 60 + second - offset)
        return days * 86_400 + seconds + fraction
    }
}

// MARK: - Errors

/// The errors of `RowFieldReader`; every message starts with "Batchhouse: " and names the 1-based row.
enum FieldErrors {
    static func make(_ code: Int, _ name: String, _ message: String, offset: Int) -> RowScanError {
        RowScanError(code: code, name: name, message: "Batchhouse: " + message, offset: offset)
    }

    static func at(_ row: Int) -> String { row == 0 ? "the header" : "row \(row)" }

    /// At most `ScanErrors.maxQuoted` bytes of `text`.
    static func clip(_ text: String) -> String {
        if text.utf8.count <= ScanErrors.maxQuoted { return text }
        return String(decoding: text.utf8.prefix(ScanErrors.maxQuoted), as: UTF8.self)
    }

    static func describe(_ value: FieldValue) -> String {
        switch value {
        case .null: return "null"
        case .text(let text, _): return "'\(clip(text))'"
        }
    }

    static func binary(_ format: InputFormat) -> RowScanError {
        make(
            36, "BAD_ARGUMENTS",
            "data in format \(format.rawValue) cannot be aggregated: the proxy reads aggregated columns from text formats only (JSONEachRow, TSV, CSV, Values, ...)",
            offset: 0)
    }

    static func noColumnNames() -> RowScanError {
        make(
            36, "BAD_ARGUMENTS",
            "an aggregated table needs the column names: give a column list (INSERT INTO t (a, b, ...)) or use a format that names them (JSONEachRow, TSVWithNames, CSVWithNames)",
            offset: 0)
    }

    static func notAmongColumns(_ name: String, _ columns: [String]) -> RowScanError {
        make(
            16, "NO_SUCH_COLUMN_IN_TABLE",
            "the data has no column '\(clip(name))', which the table's aggregate rule reads (its columns: \(clip(columns.joined(separator: ", "))))",
            offset: 0)
    }

    /// 27, ClickHouse's assertChar.
    static func expected(_ what: String, row: Int, _ p: UnsafePointer<UInt8>, at: Int, end: Int) -> RowScanError {
        let found = at < end ? "before: '\(ScanErrors.quote(p, at, end))'" : "at end of row"
        return make(27, "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "\(self.at(row)): Cannot parse input: expected \(what) \(found)", offset: at)
    }

    /// 26: a string without its closing quote.
    static func unterminated(row: Int, _ p: UnsafePointer<UInt8>, at: Int, end: Int) -> RowScanError {
        make(
            26, "CANNOT_PARSE_QUOTED_STRING",
            "\(self.at(row)): Cannot parse quoted string: expected closing quote for the string starting at '\(ScanErrors.quote(p, at, end))'",
            offset: at)
    }

    /// 25: a bad JSON escape sequence (ClickHouse's parseJSONEscapeSequence).
    static func badEscape(_ what: String, row: Int, _ p: UnsafePointer<UInt8>, at: Int, end: Int) -> RowScanError {
        make(
            25, "CANNOT_PARSE_ESCAPE_SEQUENCE", "\(self.at(row)): Cannot parse escape sequence: \(what): '\(ScanErrors.quote(p, at, end))'",
            offset: at)
    }

    /// 62: a malformed Values tuple.
    static func syntax(_ what: String, row: Int, _ p: UnsafePointer<UInt8>, at: Int, end: Int) -> RowScanError {
        let found = at < end ? " here: '\(ScanErrors.quote(p, at, end))'" : ""
        return make(62, "SYNTAX_ERROR", "\(self.at(row)): Syntax error: \(what)\(found)", offset: at)
    }
}
