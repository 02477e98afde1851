/// Rows of JSONEachRow (top-level objects) and JSONCompactEachRow* (top-level arrays).
///
/// Between rows: whitespace and at most one `,` (not before the first row), which both ClickHouse 18.x and current
/// releases accept. A `;` ends the data and may only be followed by whitespace (current releases assert end of
/// data there; 18.x took `;` as a separator). JSONEachRow data may be wrapped in `[ ... ]` (current releases).
/// Inside a row only the structure is checked: strings with `\` escapes, and `{}` / `[]` that must match.
enum JSONScanner {
    enum Kind {
        case objects
        case arrays
    }

    static func scan<Sink: RowSink>(
        _ p: UnsafePointer<UInt8>, start: Int, end: Int, kind: Kind, headerRows: Int, sink: inout Sink
    ) throws(RowScanError) -> ScannedRows {
        let formatName = kind == .objects ? "JSONEachRow" : "JSONCompactEachRow"
        let opener = kind == .objects ? UInt8(ascii: "{") : UInt8(ascii: "[")
        var stack = BracketStack()
        defer { stack.deallocate() }

        var i = ValuesScanner.skipWhitespace(p, start, end)
        var wrapped = false
        if kind == .objects && i < end && p[i] == UInt8(ascii: "[") {
            wrapped = true
            i &+= 1
        }
        let bodyStart = i
        var count = 0
        var headersSeen = 0
        var headerStart = -1
        var headerEnd = -1
        var first = -1
        var last = bodyStart
        var seenValue = false
        var afterComma = false
        while true {
            i = ValuesScanner.skipWhitespace(p, i, end)
            if i == end {
                if wrapped { throw ScanErrors.unexpectedEnd(formatName, at: i, row: count &+ 1) }
                break
            }
            let c = p[i]
            if c == opener {
                let valueEnd = try scanValue(p, from: i, end: end, row: count &+ 1, formatName: formatName, stack: &stack)
                if headersSeen < headerRows {
                    if headerStart < 0 { headerStart = i }
                    headerEnd = valueEnd
                    headersSeen &+= 1
                } else {
                    sink.row(i..<valueEnd)
                    if first < 0 { first = i }
                    last = valueEnd
                    count &+= 1
                }
                seenValue = true
                afterComma = false
                i = valueEnd
                continue
            }
            if c == UInt8(ascii: ",") && seenValue && !afterComma {
                afterComma = true
                i &+= 1
                continue
            }
            if (wrapped && c == UInt8(ascii: "]")) || (!wrapped && c == UInt8(ascii: ";")) {
                i = ValuesScanner.skipWhitespace(p, i &+ 1, end)
                if wrapped && i < end && p[i] == UInt8(ascii: ";") {
                    i = ValuesScanner.skipWhitespace(p, i &+ 1, end)
                }
                if i != end { throw ScanErrors.expected("eof", p, at: i, end: end, row: count &+ 1) }
                break
            }
            throw ScanErrors.expected("'\(Character(Unicode.Scalar(opener)))'", p, at: i, end: end, row: count &+ 1)
        }
        let header = headerStart < 0 ? nil : headerStart..<headerEnd
        let rowsStart = first < 0 ? (headerEnd < 0 ? bodyStart : headerEnd) : first
        let rows = first < 0 ? rowsStart..<rowsStart : first..<last
        return ScannedRows(rowCount: count, header: header, rows: rows, endsWithNewline: false)
    }

    /// Scans one object or array from its opening bracket; returns the index after its closing bracket.
    @inline(__always)
    static func scanValue(
        _ p: UnsafePointer<UInt8>, from: Int, end: Int, row: Int, formatName: String, stack: inout BracketStack
    ) throws(RowScanError) -> Int {
        stack.reset()
        stack.push(p[from] == UInt8(ascii: "{") ? UInt8(ascii: "}") : UInt8(ascii: "]"))
        var i = from &+ 1
        while true {
            i = ByteSearch.findJSONStructural(in: p, from: i, end: end)
            if i == end { throw ScanErrors.unexpectedEnd(formatName, at: end, row: row) }
            let c = p[i]
            if c == UInt8(ascii: "\"") {
                let stringStart = i
                i &+= 1
                while true {
                    i = ByteSearch.find(UInt8(ascii: "\""), UInt8(ascii: "\\"), in: p, from: i, end: end)
                    if i >= end { throw ScanErrors.unterminatedString(at: stringStart, row: row, p, end: end) }
                    if p[i] == UInt8(ascii: "\"") { break }
                    i &+= 2
                }
                i &+= 1
                continue
            }
            if c == UInt8(ascii: "{") || c == UInt8(ascii: "[") {
                guard stack.push(c &+ 2) else { // `{`+2 is `}`, `[`+2 is `]`
                    throw ScanErrors.incorrect("JSON nesting deeper than \(BracketStack.capacity)", p, at: i, end: end, row: row)
                }
                i &+= 1
                continue
            }
            if stack.top != c {
                throw ScanErrors.incorrect("Unbalanced JSON: unexpected '\(Character(Unicode.Scalar(c)))'", p, at: i, end: end, row: row)
            }
            stack.pop()
            i &+= 1
            if stack.isEmpty { return i }
        }
    }
}
