/// The columns of a binary INSERT, in the order their values appear: names and ClickHouse type names.
///
/// Encoded exactly like a RowBinaryWithNamesAndTypes header (varint count, the names, then the types, each a varint
/// length and bytes), so the encoding of the columns of a RowBinaryWithNames request starts with that request's own
/// header. The encoding is what `BatchKey.header` holds for RowBinary, RowBinaryWithNames,
/// RowBinaryWithNamesAndTypes and Native (docs/request-path.md, "RowBinary and Native").
public struct ColumnSignature: Sendable, Hashable {
    public let names: [String]
    /// The type names as DESCRIBE TABLE or the data's header printed them.
    public let typeNames: [String]
    /// The parsed types, one per name.
    public let types: [ColumnType]

    /// Nil when the counts differ, there are no columns, or a type's layout is unknown (`ColumnType(parsing:)`).
    public init?(names: [String], typeNames: [String]) {
        guard names.count == typeNames.count, !names.isEmpty else { return nil }
        var types: [ColumnType] = []
        types.reserveCapacity(typeNames.count)
        for name in typeNames {
            guard let type = ColumnType(parsing: name) else { return nil }
            types.append(type)
        }
        self.names = names
        self.typeNames = typeNames
        self.types = types
    }

    /// Pairs of name and type name.
    public init?(_ columns: [(name: String, type: String)]) {
        self.init(names: columns.map(\.name), typeNames: columns.map(\.type))
    }

    /// The RowBinaryWithNamesAndTypes header of these columns.
    public var encoded: [UInt8] {
        var out: [UInt8] = []
        BinaryWriter.varint(UInt64(names.count), into: &out)
        for name in names { BinaryWriter.string(name, into: &out) }
        for type in typeNames { BinaryWriter.string(type, into: &out) }
        return out
    }

    /// The RowBinaryWithNames header of these columns: a prefix of `encoded`.
    public var encodedNames: [UInt8] {
        var out: [UInt8] = []
        BinaryWriter.varint(UInt64(names.count), into: &out)
        for name in names { BinaryWriter.string(name, into: &out) }
        return out
    }

    /// The RowBinaryWithNames header inside an `encoded` signature: its count and names, read without parsing the
    /// types (a spool written by a build that knew a type this one does not still gives the right header). Empty
    /// when the bytes do not start with a count and that many names.
    public static func namesPart(of encoded: [UInt8]) -> [UInt8] {
        encoded.withUnsafeBytes { buffer -> [UInt8] in
            guard let base = buffer.baseAddress, !buffer.isEmpty else { return [] }
            var reader = BinaryReader(base.assumingMemoryBound(to: UInt8.self), start: 0, end: buffer.count)
            guard let count = try? reader.varint(), count > 0, count <= UInt64(buffer.count) else { return [] }
            for _ in 0..<count { guard (try? reader.string()) != nil else { return [] } }
            return Array(encoded[..<reader.at])
        }
    }

    /// Decodes `encoded`; nil when the bytes are not exactly one header or a type is unknown.
    public init?(decoding bytes: [UInt8]) {
        let decoded: ColumnSignature?? = bytes.withUnsafeBytes { buffer in
            guard let base = buffer.baseAddress, !buffer.isEmpty else { return nil }
            var reader = BinaryReader(base.assumingMemoryBound(to: UInt8.self), start: 0, end: buffer.count)
            guard let count = try? reader.varint(), count > 0, count <= UInt64(buffer.count) else { return nil }
            var names: [String] = []
            var types: [String] = []
            for _ in 0..<count { guard let s = try? reader.string() else { return nil }; names.append(s) }
            for _ in 0..<count { guard let s = try? reader.string() else { return nil }; types.append(s) }
            guard reader.at == buffer.count else { return nil }
            return ColumnSignature(names: names, typeNames: types)
        }
        guard let signature = decoded ?? nil else { return nil }
        self = signature
    }
}

/// Appends ClickHouse's binary encodings.
enum BinaryWriter {
    static func varint(_ value: UInt64, into out: inout [UInt8]) {
        var v = value
        while v >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        out.append(UInt8(v))
    }

    static func string(_ value: String, into out: inout [UInt8]) {
        let utf8 = Array(value.utf8)
        varint(UInt64(utf8.count), into: &out)
        out.append(contentsOf: utf8)
    }

    static func uint64(_ value: UInt64, into out: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { out.append(contentsOf: $0) }
    }
}

/// Reads ClickHouse's binary encodings from `p[at..<end]`, failing the way ClickHouse's ReadBuffer does.
struct BinaryReader {
    let p: UnsafePointer<UInt8>
    var at: Int
    let end: Int
    /// 1-based row being read, for error messages.
    var row = 1

    init(_ p: UnsafePointer<UInt8>, start: Int, end: Int) {
        self.p = p
        self.at = start
        self.end = end
    }

    var remaining: Int { end - at }

    /// ClickHouse's readVarUInt: at most 10 bytes, the data ending inside one is "Attempt to read after eof".
    mutating func varint() throws(RowScanError) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<10 {
            guard at < end else {
                throw BinaryErrors.afterEOF(at: at, row: row)
            }
            let byte = p[at]
            at += 1
            value |= UInt64(byte & 0x7F) << UInt64(7 * i)
            if byte & 0x80 == 0 { break }
        }
        return value
    }

    /// Skips `count` bytes that must all be there (readStrict).
    mutating func skip(_ count: Int) throws(RowScanError) {
        guard count <= remaining else {
            throw BinaryErrors.cannotReadAll(read: remaining, expected: count, at: at, row: row)
        }
        at += count
    }

    /// Skips `count` values of `width` bytes.
    mutating func skip(_ count: Int, width: Int) throws(RowScanError) {
        let (total, overflow) = count.multipliedReportingOverflow(by: width)
        try skip(overflow ? Int.max : total)
    }

    mutating func byte() throws(RowScanError) -> UInt8 {
        try skip(1)
        return p[at - 1]
    }

    mutating func uint64() throws(RowScanError) -> UInt64 {
        try skip(8)
        var value: UInt64 = 0
        for i in 0..<8 { value |= UInt64(p[at - 8 + i]) << UInt64(8 * i) }
        return value
    }

    /// Reads an unsigned little-endian integer of 1, 2, 4 or 8 bytes at `offset` (already bounds-checked).
    func unsigned(at offset: Int, width: Int) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<width { value |= UInt64(p[offset + i]) << UInt64(8 * i) }
        return value
    }

    /// readStringBinary: a varint length and that many bytes.
    mutating func string() throws(RowScanError) -> String {
        let length = try stringLength()
        let start = at
        try skip(length)
        return String(decoding: UnsafeBufferPointer(start: p + start, count: length), as: UTF8.self)
    }

    /// A string's varint length, checked against ClickHouse's format_binary_max_string_size default (1 GiB).
    mutating func stringLength() throws(RowScanError) -> Int {
        let start = at
        let length = try varint()
        guard length <= BinaryErrors.maxSize else {
            throw BinaryErrors.tooLarge(
                code: 131, name: "TOO_LARGE_STRING_SIZE",
                "Too large string size: \(length). The maximum is: \(BinaryErrors.maxSize). To increase the maximum, use setting format_binary_max_string_size",
                at: start, row: row)
        }
        return Int(length)
    }
}

/// The errors of the binary scanners, worded like ClickHouse's.
enum BinaryErrors {
    /// ClickHouse's format_binary_max_string_size and format_binary_max_array_size defaults (1 GiB).
    static let maxSize: UInt64 = 1 << 30

    static func cannotReadAll(read: Int, expected: Int, at: Int, row: Int) -> RowScanError {
        ScanErrors.make(
            code: 33, name: "CANNOT_READ_ALL_DATA",
            "Cannot read all data. Bytes read: \(max(0, read)). Bytes expected: \(expected).", row: row, offset: at)
    }

    static func afterEOF(at: Int, row: Int) -> RowScanError {
        ScanErrors.make(code: 32, name: "ATTEMPT_TO_READ_AFTER_EOF", "Attempt to read after eof", row: row, offset: at)
    }

    static func tooLarge(code: Int, name: String, _ message: String, at: Int, row: Int) -> RowScanError {
        ScanErrors.make(code: code, name: name, message, row: row, offset: at)
    }

    static func incorrect(_ message: String, at: Int, row: Int) -> RowScanError {
        ScanErrors.make(code: 117, name: "INCORRECT_DATA", message, row: row, offset: at)
    }

    /// Not malformed, but not something the proxy can batch: the caller passes the request through.
    static func unsupported(_ message: String, at: Int) -> RowScanError {
        RowScanError(code: 48, name: "NOT_IMPLEMENTED", message: message, offset: at, isUnsupported: true)
    }
}
