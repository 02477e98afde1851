/// A ClickHouse column type as far as its binary layout is concerned (RowBinary values, Native columns).
///
/// Parsed from the type names DESCRIBE TABLE and Native block headers print (ClickHouse 18.16 and 26.x). Types
/// whose layout the proxy does not know (JSON, Object, Variant, Dynamic, AggregateFunction, geo types, Time, ...)
/// do not parse: an INSERT with such a column is passed through unbatched.
public indirect enum ColumnType: Sendable, Hashable {
    /// Numbers, dates, UUID, IPv4/IPv6, Decimal, Enum, Bool, Interval: a fixed number of little-endian bytes.
    case fixed(width: Int)
    /// RowBinary: varint length and bytes. Native: the same for each row.
    case string
    case fixedString(length: Int)
    /// RowBinary: a flag byte (non-zero: NULL, no value follows). Native: a null map of one byte a row, then the
    /// nested column for every row.
    case nullable(ColumnType)
    /// RowBinary: varint size, then the elements. Native: UInt64 cumulative offsets, then the nested column.
    case array(ColumnType)
    /// Each element in turn (RowBinary), each element column in turn (Native). Names are not on the wire.
    case tuple([ColumnType])
    /// Array(Tuple(K, V)) on the wire.
    case map(key: ColumnType, value: ColumnType)
    /// RowBinary: the value of the dictionary type. Native: key version prefix, then dictionary and indexes.
    case lowCardinality(ColumnType)
    /// Native: one byte a row. Not readable in RowBinary (ClickHouse cannot read it either).
    case nothing

    /// Parses a type name; nil for types whose layout is unknown or for malformed names.
    public init?(parsing name: String) {
        var parser = ColumnTypeParser(Array(name.utf8))
        guard let type = parser.parseType(depth: 0), parser.atEnd else { return nil }
        self = type
    }

    /// The dictionary keys' type of a LowCardinality column: the type without Nullable (NULL is index 0).
    var dictionaryKeys: ColumnType {
        if case .nullable(let inner) = self { return inner }
        return self
    }
}

/// A recursive-descent reader of ClickHouse type names (DataTypeFactory's syntax, whitespace allowed anywhere).
struct ColumnTypeParser {
    private let bytes: [UInt8]
    private var at = 0
    private static let maxDepth = 32

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var atEnd: Bool {
        mutating get {
            skipSpace()
            return at == bytes.count
        }
    }

    private static let widths: [String: Int] = [
        "Int8": 1, "UInt8": 1, "Bool": 1, "Int16": 2, "UInt16": 2, "Date": 2, "BFloat16": 2,
        "Int32": 4, "UInt32": 4, "Float32": 4, "Date32": 4, "IPv4": 4,
        "Int64": 8, "UInt64": 8, "Float64": 8,
        "Int128": 16, "UInt128": 16, "UUID": 16, "IPv6": 16, "Int256": 32, "UInt256": 32,
        "IntervalNanosecond": 8, "IntervalMicrosecond": 8, "IntervalMillisecond": 8, "IntervalSecond": 8,
        "IntervalMinute": 8, "IntervalHour": 8, "IntervalDay": 8, "IntervalWeek": 8, "IntervalMonth": 8,
        "IntervalQuarter": 8, "IntervalYear": 8,
    ]

    mutating func parseType(depth: Int) -> ColumnType? {
        guard depth < Self.maxDepth, let family = identifier() else { return nil }
        skipSpace()
        let hasArguments = peek(UInt8(ascii: "("))
        if let width = Self.widths[family] {
            return hasArguments ? nil : .fixed(width: width)
        }
        switch family {
        case "String":
            return hasArguments ? nil : .string
        case "Nothing":
            return hasArguments ? nil : .nothing
        case "DateTime":
            if hasArguments {
                guard expect("("), quoted() != nil, expect(")") else { return nil }
            }
            return .fixed(width: 4)
        case "DateTime64":
            guard expect("("), let precision = integer(), (0...9).contains(precision) else { return nil }
            if expect(",") { guard quoted() != nil else { return nil } }
            return expect(")") ? .fixed(width: 8) : nil
        case "FixedString":
            guard expect("("), let length = integer(), length > 0, length <= 1 << 30, expect(")") else { return nil }
            return .fixedString(length: length)
        case "Decimal":
            guard expect("("), let precision = integer() else { return nil }
            var scale = 0
            if expect(",") { guard let s = integer() else { return nil }; scale = s }
            guard expect(")"), scale <= precision else { return nil }
            return Self.decimal(precision: precision)
        case "Decimal32", "Decimal64", "Decimal128", "Decimal256":
            guard expect("("), let scale = integer(), expect(")") else { return nil }
            let width = ["Decimal32": 4, "Decimal64": 8, "Decimal128": 16, "Decimal256": 32][family]!
            let maxPrecision = [4: 9, 8: 18, 16: 38, 32: 76][width]!
            return scale <= maxPrecision ? .fixed(width: width) : nil
        case "Enum8", "Enum16":
            guard expect("(") else { return nil }
            repeat {
                guard quoted() != nil else { return nil }
                if expect("=") {
                    _ = expect("-")
                    guard integer() != nil else { return nil }
                }
            } while expect(",")
            guard expect(")") else { return nil }
            return .fixed(width: family == "Enum8" ? 1 : 2)
        case "Nullable", "Array", "LowCardinality":
            guard expect("("), let inner = parseType(depth: depth + 1), expect(")") else { return nil }
            switch family {
            case "Nullable": return .nullable(inner)
            case "Array": return .array(inner)
            default: return .lowCardinality(inner)
            }
        case "Map":
            guard expect("("), let key = parseType(depth: depth + 1), expect(","),
                let value = parseType(depth: depth + 1), expect(")")
            else { return nil }
            return .map(key: key, value: value)
        case "Tuple", "Nested":
            guard expect("(") else { return nil }
            var elements: [ColumnType] = []
            repeat {
                guard let element = tupleElement(depth: depth + 1, named: family == "Nested") else { return nil }
                elements.append(element)
            } while expect(",")
            guard expect(")") else { return nil }
            return family == "Tuple" ? .tuple(elements) : .array(.tuple(elements))
        case "SimpleAggregateFunction":
            // The function (possibly with parameters) does not change the layout: the value is stored as its type.
            guard expect("("), skipArgument(), expect(","), let inner = parseType(depth: depth + 1), expect(")")
            else { return nil }
            return inner
        default:
            return nil
        }
    }

    private static func decimal(precision: Int) -> ColumnType? {
        switch precision {
        case 1...9: return .fixed(width: 4)
        case 10...18: return .fixed(width: 8)
        case 19...38: return .fixed(width: 16)
        case 39...76: return .fixed(width: 32)
        default: return nil
        }
    }

    /// `T` or `name T` (a named tuple element); Nested elements always have a name.
    private mutating func tupleElement(depth: Int, named: Bool) -> ColumnType? {
        skipSpace()
        let start = at
        guard let first = identifier() else { return nil }
        skipSpace()
        let next = at < bytes.count ? bytes[at] : 0
        let isTypeName = next == UInt8(ascii: ",") || next == UInt8(ascii: ")") || next == UInt8(ascii: "(")
        if isTypeName && !named && !Self.isQuotedIdentifier(bytes[start]) {
            // `first` was the type's family, not an element name.
            at = start
        }
        _ = first
        return parseType(depth: depth)
    }

    private static func isQuotedIdentifier(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: "`") || byte == UInt8(ascii: "\"")
    }

    private mutating func skipSpace() {
        while at < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[at]) { at += 1 }
    }

    private mutating func peek(_ byte: UInt8) -> Bool {
        skipSpace()
        return at < bytes.count && bytes[at] == byte
    }

    private mutating func expect(_ character: Unicode.Scalar) -> Bool {
        if peek(UInt8(ascii: character)) {
            at += 1
            return true
        }
        return false
    }

    /// A bare word, or a backquoted or double-quoted name with `\` escapes.
    private mutating func identifier() -> String? {
        skipSpace()
        guard at < bytes.count else { return nil }
        if Self.isQuotedIdentifier(bytes[at]) { return quoted() }
        let start = at
        while at < bytes.count {
            let b = bytes[at]
            let isWord = (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F
            if !isWord { break }
            at += 1
        }
        guard at > start, !(bytes[start] >= 0x30 && bytes[start] <= 0x39) else { return nil }
        return String(decoding: bytes[start..<at], as: UTF8.self)
    }

    /// A string in `'`, `` ` `` or `"` quotes, with backslash escapes and the quote doubled.
    private mutating func quoted() -> String? {
        skipSpace()
        guard at < bytes.count else { return nil }
        let quote = bytes[at]
        guard quote == UInt8(ascii: "'") || Self.isQuotedIdentifier(quote) else { return nil }
        at += 1
        var value: [UInt8] = []
        while at < bytes.count {
            let b = bytes[at]
            if b == UInt8(ascii: "\\") {
                guard at + 1 < bytes.count else { return nil }
                value.append(bytes[at + 1])
                at += 2
            } else if b == quote {
                if at + 1 < bytes.count && bytes[at + 1] == quote {
                    value.append(quote)
                    at += 2
                } else {
                    at += 1
                    return String(decoding: value, as: UTF8.self)
                }
            } else {
                value.append(b)
                at += 1
            }
        }
        return nil
    }

    private mutating func integer() -> Int? {
        skipSpace()
        var value = 0
        let start = at
        while at < bytes.count, bytes[at] >= 0x30, bytes[at] <= 0x39 {
            value = value * 10 + Int(bytes[at] - 0x30)
            if value > 1 << 40 { return nil }
            at += 1
        }
        return at > start ? value : nil
    }

    /// Skips one argument up to the next top-level `,` (brackets balanced, quotes respected).
    private mutating func skipArgument() -> Bool {
        var depth = 0
        skipSpace()
        let start = at
        while at < bytes.count {
            let b = bytes[at]
            if b == UInt8(ascii: "'") || Self.isQuotedIdentifier(b) {
                guard quoted() != nil else { return false }
                continue
            }
            if b == UInt8(ascii: "(") { depth += 1 }
            if b == UInt8(ascii: ")") {
                if depth == 0 { break }
                depth -= 1
            }
            if b == UInt8(ascii: ",") && depth == 0 { break }
            at += 1
        }
        return at > start && depth == 0
    }
}
