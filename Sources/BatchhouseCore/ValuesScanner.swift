/// Rows of the Values format: `(...)` tuples.
///
/// ClickHouse's ValuesBlockInputFormat skips whitespace, stops at end of data or `;`, asserts `(`, reads the fields,
/// and then skips whitespace and one optional `,`. So `(1),(2)`, `(1) (2)` and `(1)(2)` are all valid, and a `,`
/// after the last row too; `(1),,(2)` and `(1), x` are not. ClickHouse ignores whatever follows a `;`; this scanner
/// rejects anything but whitespace there, so that rows are never silently dropped from a batch.
enum ValuesScanner {
    static func scan<Sink: RowSink>(
        _ p: UnsafePointer<UInt8>, start: Int, end: Int, sink: inout Sink
    ) throws(RowScanError) -> ScannedRows {
        var stack = BracketStack()
        defer { stack.deallocate() }
        var i = start
        var count = 0
        var first = -1
        var last = start
        while true {
            i = skipWhitespace(p, i, end)
            if i == end { break }
            let c = p[i]
            if c == UInt8(ascii: "(") {
                let rowEnd = try scanTuple(p, from: i, end: end, row: count &+ 1, stack: &stack)
                sink.row(i..<rowEnd)
                if first < 0 { first = i }
                last = rowEnd
                count &+= 1
                i = skipWhitespace(p, rowEnd, end)
                if i < end && p[i] == UInt8(ascii: ",") { i &+= 1 }
                continue
            }
            if c == UInt8(ascii: ";") {
                let after = skipWhitespace(p, i &+ 1, end)
                if after != end {
                    throw ScanErrors.syntax("Unexpected data after ';' at the end of Values", p, at: after, end: end, row: count &+ 1)
                }
                break
            }
            throw ScanErrors.expected("'('", p, at: i, end: end, row: count &+ 1)
        }
        let rows = first < 0 ? start..<start : first..<last
        return ScannedRows(rowCount: count, header: nil, rows: rows, endsWithNewline: false)
    }

    /// Scans one tuple starting at its `(`; returns the index just after its `)`.
    @inline(__always)
    static func scanTuple(
        _ p: UnsafePointer<UInt8>, from: Int, end: Int, row: Int, stack: inout BracketStack
    ) throws(RowScanError) -> Int {
        stack.reset()
        stack.push(UInt8(ascii: ")"))
        var i = from &+ 1
        while true {
            i = ByteSearch.findSQLStructural(in: p, from: i, end: end)
            if i == end {
                throw ScanErrors.syntax("Unterminated tuple: expected ')'", p, at: from, end: end, row: row)
            }
            let c = p[i]
            switch c {
            case UInt8(ascii: "'"), UInt8(ascii: "\""), UInt8(ascii: "`"):
                i = try skipQuoted(p, from: i, end: end, quote: c, row: row)
            case UInt8(ascii: "("):
                guard stack.push(UInt8(ascii: ")")) else {
                    throw ScanErrors.syntax("Nesting deeper than \(BracketStack.capacity) in tuple", p, at: i, end: end, row: row)
                }
                i &+= 1
            case UInt8(ascii: "["):
                guard stack.push(UInt8(ascii: "]")) else {
                    throw ScanErrors.syntax("Nesting deeper than \(BracketStack.capacity) in tuple", p, at: i, end: end, row: row)
                }
                i &+= 1
            case UInt8(ascii: "{"):
                guard stack.push(UInt8(ascii: "}")) else {
                    throw ScanErrors.syntax("Nesting deeper than \(BracketStack.capacity) in tuple", p, at: i, end: end, row: row)
                }
                i &+= 1
            default: // a closing bracket
                if stack.top != c {
                    throw ScanErrors.syntax("Unbalanced brackets: unexpected '\(Character(Unicode.Scalar(c)))'", p, at: i, end: end, row: row)
                }
                stack.pop()
                i &+= 1
                if stack.isEmpty { return i }
            }
        }
    }

    /// Skips a quoted string starting at its opening quote; `\` escapes the next byte and a doubled quote is simply
    /// a string that ends and restarts. Returns the index after the closing quote.
    @inline(__always)
    static func skipQuoted(_ p: UnsafePointer<UInt8>, from: Int, end: Int, quote: UInt8, row: Int) throws(RowScanError) -> Int {
        var i = from &+ 1
        while true {
            i = ByteSearch.find(quote, UInt8(ascii: "\\"), in: p, from: i, end: end)
            if i >= end {
                throw ScanErrors.syntax("Unterminated quoted string", p, at: from, end: end, row: row)
            }
            if p[i] == quote { return i &+ 1 }
            i &+= 2 // backslash and the escaped byte
        }
    }

    /// ClickHouse's skipWhitespaceIfAny: space, \t, \n, \v, \f, \r.
    @inline(__always)
    static func skipWhitespace(_ p: UnsafePointer<UInt8>, _ from: Int, _ end: Int) -> Int {
        var i = from
        while i < end && isWhitespace(p[i]) { i &+= 1 }
        return i
    }

    @inline(__always)
    static func isWhitespace(_ c: UInt8) -> Bool {
        c == 0x20 || (c >= 0x09 && c <= 0x0D)
    }
}

/// The closing brackets still expected, innermost last. Allocated once per scan, never per row.
struct BracketStack {
    /// ClickHouse's own limits (max_parser_depth, input_format_json_max_depth) are 1000.
    static let capacity = 1000

    private let storage: UnsafeMutablePointer<UInt8>
    private(set) var depth = 0

    init() {
        storage = .allocate(capacity: Self.capacity)
    }

    func deallocate() { storage.deallocate() }

    var isEmpty: Bool {
        @inline(__always) get { depth == 0 }
    }

    /// The expected closer at the top, or 0 when empty.
    var top: UInt8 {
        @inline(__always) get { depth > 0 ? storage[depth &- 1] : 0 }
    }

    @inline(__always) mutating func reset() { depth = 0 }

    @discardableResult
    @inline(__always) mutating func push(_ closer: UInt8) -> Bool {
        if depth == Self.capacity { return false }
        storage[depth] = closer
        depth &+= 1
        return true
    }

    @inline(__always) mutating func pop() { depth &-= 1 }
}
