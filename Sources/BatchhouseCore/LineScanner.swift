/// Rows of the line formats: TabSeparated (+WithNames, +WithNamesAndTypes), TabSeparatedRaw and TSKV.
///
/// Every "\n" ends a row, except in TabSeparated and TSKV where a "\n" preceded by an odd number of backslashes is
/// an escaped line feed inside a value (ClickHouse's readEscapedString accepts `\` followed by a real line feed).
/// A "\r" before "\n" stays part of the row. The only thing validated is the one way such data breaks
/// concatenation: with escapes, data ending in an odd number of backslashes would turn the "\n" a batch appends
/// into an escaped line feed (ClickHouse refuses it too: a backslash at end of data is a bad escape sequence).
enum LineScanner {
    static func scan<Sink: RowSink>(
        _ p: UnsafePointer<UInt8>, start: Int, end: Int, headerLines: Int, backslashEscapes: Bool, sink: inout Sink
    ) throws(RowScanError) -> ScannedRows {
        var i = start
        var header: Range<Int>?
        if headerLines > 0 && start < end {
            for _ in 0..<headerLines where i < end {
                i = lineEnd(p, from: i, start: start, end: end, backslashEscapes: backslashEscapes)
            }
            header = start..<i
        }
        let rowsStart = i
        var count = 0
        var terminated = false
        while i < end {
            let next = lineEnd(p, from: i, start: rowsStart, end: end, backslashEscapes: backslashEscapes)
            sink.row(i..<next)
            count &+= 1
            terminated = p[next &- 1] == UInt8(ascii: "\n") && !(backslashEscapes && isEscaped(p, newlineAt: next &- 1, start: i))
            if next == end && !terminated && backslashEscapes && isEscaped(p, newlineAt: end, start: i) {
                var run = end
                while run > i && p[run &- 1] == UInt8(ascii: "\\") { run &-= 1 }
                throw ScanErrors.danglingBackslash(at: run, row: count, p, end: end)
            }
            i = next
        }
        return ScannedRows(rowCount: count, header: header, rows: rowsStart..<end, endsWithNewline: terminated)
    }

    /// The index just after the "\n" that ends the row starting at `from`, or `end` when the row is unterminated.
    /// `start` bounds the backslash look-back.
    @inline(__always)
    static func lineEnd(_ p: UnsafePointer<UInt8>, from: Int, start: Int, end: Int, backslashEscapes: Bool) -> Int {
        var i = from
        while true {
            let nl = ByteSearch.find(UInt8(ascii: "\n"), in: p, from: i, end: end)
            if nl == end { return end }
            if backslashEscapes && isEscaped(p, newlineAt: nl, start: from) {
                i = nl &+ 1
                continue
            }
            return nl &+ 1
        }
    }

    /// Whether the "\n" at `nl` follows an odd run of backslashes that begins at or after `start`.
    @inline(__always)
    static func isEscaped(_ p: UnsafePointer<UInt8>, newlineAt nl: Int, start: Int) -> Bool {
        var j = nl
        while j > start && p[j &- 1] == UInt8(ascii: "\\") { j &-= 1 }
        return (nl &- j) & 1 == 1
    }
}

/// Rows of CSV and CSVWithNames: lines, except that a line feed inside a double-quoted field belongs to the field.
///
/// Like ClickHouse's readCSVStringInto, a field is quoted only when its first byte (after spaces and tabs, which
/// ClickHouse skips) is `"`; a `"` inside an unquoted field is an ordinary byte. Inside quotes `""` is an escaped
/// quote. The delimiter is assumed to be `,` (format_csv_delimiter is not known here) and single-quoted fields
/// (format_csv_allow_single_quotes, on by default in 18.x, off in current releases) are not recognised.
enum CSVScanner {
    static func scan<Sink: RowSink>(
        _ p: UnsafePointer<UInt8>, start: Int, end: Int, headerLines: Int, sink: inout Sink
    ) throws(RowScanError) -> ScannedRows {
        var i = start
        var header: Range<Int>?
        if headerLines > 0 && start < end {
            for _ in 0..<headerLines where i < end {
                i = try rowEnd(p, from: i, end: end, row: 0)
            }
            header = start..<i
        }
        let rowsStart = i
        var count = 0
        while i < end {
            let next = try rowEnd(p, from: i, end: end, row: count &+ 1)
            sink.row(i..<next)
            count &+= 1
            i = next
        }
        let terminated = end > rowsStart && p[end &- 1] == UInt8(ascii: "\n")
        return ScannedRows(rowCount: count, header: header, rows: rowsStart..<end, endsWithNewline: terminated)
    }

    /// The index just after the "\n" ending the CSV row that starts at `from`, or `end`.
    @inline(__always)
    static func rowEnd(_ p: UnsafePointer<UInt8>, from: Int, end: Int, row: Int) throws(RowScanError) -> Int {
        var i = from
        while true {
            let k = ByteSearch.find(UInt8(ascii: "\n"), UInt8(ascii: "\""), in: p, from: i, end: end)
            if k == end { return end }
            if p[k] == UInt8(ascii: "\n") { return k &+ 1 }
            // A quote: does it open a quoted field?
            if !isFieldStart(p, quoteAt: k, rowStart: from) {
                i = k &+ 1
                continue
            }
            var j = k &+ 1
            while true {
                let q = ByteSearch.find(UInt8(ascii: "\""), in: p, from: j, end: end)
                if q == end {
                    throw ScanErrors.unterminatedString(at: k, row: row == 0 ? 1 : row, p, end: end)
                }
                if q &+ 1 < end && p[q &+ 1] == UInt8(ascii: "\"") {
                    j = q &+ 2
                    continue
                }
                i = q &+ 1
                break
            }
        }
    }

    /// Whether only spaces and tabs separate the quote at `k` from the row start or the previous `,`.
    @inline(__always)
    static func isFieldStart(_ p: UnsafePointer<UInt8>, quoteAt k: Int, rowStart: Int) -> Bool {
        var j = k
        while j > rowStart {
            let c = p[j &- 1]
            if c == UInt8(ascii: ",") { return true }
            if c != UInt8(ascii: " ") && c != UInt8(ascii: "\t") { return false }
            j &-= 1
        }
        return true
    }
}
