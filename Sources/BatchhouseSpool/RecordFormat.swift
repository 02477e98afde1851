import BatchhouseCore
import CZlib

/// The bytes of a spool segment file.
///
/// ```
/// segment  := header record*
/// header   := "BHSP" version:u8 reserved:u8[3]                       (8 bytes)
/// record   := magic:u32 type:u8 length:u32 crc:u32 payload[length]     (13 + length bytes)
///             crc = CRC-32 (zlib) of the type byte followed by the payload
/// chunk    := id:u64 rows:i64 flags:u8(bit 0: ends with newline)
///             user:optstr password:optstr database:optstr table:str
///             columns:(present:u8 [count:u32 str*]) format:str header:optbytes
///             settings:(count:u32 (name:str value:str)*) data:bytes
/// delivered:= count:u32 (first:u64 last:u64)*                           (inclusive id ranges)
/// sending  := query_id:str batch:u64 count:u32 ids:uleb128*             (first id, then increasing deltas)
/// settled  := query_id:str outcome:u8 note:str
/// str      := bytes (UTF-8);  bytes := length:u32 byte*;  opt<T> := present:u8 [T]
/// ```
/// Every integer is little-endian. The chunk id comes first in its payload so it can be
/// assigned under the spool's lock after the rest was encoded and checksummed outside it.
enum RecordFormat {
    static let segmentMagic: [UInt8] = Array("BHSP".utf8)
    static let version: UInt8 = 1
    static let segmentHeaderSize = 8
    static let recordMagic: UInt32 = 0x5EC0_4DB1
    static let recordHeaderSize = 13
    /// The payload length field is a u32.
    static let maxPayloadLength = Int(UInt32.max)

    enum RecordType: UInt8 {
        case chunk = 1
        case delivered = 2
        /// A sealed batch is about to be sent under this query id, with these chunks (docs/spool-and-acks.md,
        /// "Exactly once").
        case sending = 3
        /// How a batch found in doubt at start was settled.
        case settled = 4
    }

    static var segmentHeader: [UInt8] { segmentMagic + [version, 0, 0, 0] }

    // MARK: Segment file names

    static let segmentPrefix = "segment-"
    static let segmentSuffix = ".wal"

    /// `segment-<20 digits>.wal`: names sort as their numbers do.
    static func segmentFileName(_ number: UInt64) -> String {
        let digits = String(number)
        return segmentPrefix + String(repeating: "0", count: 20 - digits.count) + digits + segmentSuffix
    }

    static func segmentNumber(fileName: String) -> UInt64? {
        guard fileName.hasPrefix(segmentPrefix), fileName.hasSuffix(segmentSuffix) else { return nil }
        let digits = fileName.dropFirst(segmentPrefix.count).dropLast(segmentSuffix.count)
        guard digits.count == 20, digits.allSatisfy({ $0 >= "0" && $0 <= "9" }) else { return nil }
        return UInt64(digits)
    }

    // MARK: Checksums

    static func crc(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return crc }
        return UInt32(crc32_z(UInt(crc), base.assumingMemoryBound(to: UInt8.self), bytes.count))
    }

    static func crc(_ bytes: [UInt8], continuing crc: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { Self.crc($0, continuing: crc) }
    }

    /// The CRC of `a + b` from the CRCs of `a` and `b` and the length of `b`.
    static func combine(_ crcA: UInt32, _ crcB: UInt32, lengthB: Int) -> UInt32 {
        UInt32(crc32_combine(UInt(crcA), UInt(crcB), lengthB))
    }
}

// MARK: - Encoding

struct ByteWriter {
    var bytes: [UInt8] = []

    init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }

    mutating func u8(_ value: UInt8) { bytes.append(value) }

    mutating func u32(_ value: UInt32) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func u64(_ value: UInt64) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func bytes<C: Collection>(_ value: C) where C.Element == UInt8 {
        u32(UInt32(value.count))
        bytes.append(contentsOf: value)
    }

    mutating func string(_ value: String) { bytes(value.utf8) }

    /// Unsigned LEB128: 7 bits a byte, low bits first.
    mutating func uleb128(_ value: UInt64) {
        var value = value
        while value >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
    }

    mutating func optionalString(_ value: String?) {
        if let value {
            u8(1)
            string(value)
        } else {
            u8(0)
        }
    }
}

/// A chunk record laid out for writing: `head` is the record header, the chunk id and the key;
/// the data follows it on disk without being copied. ``seal(id:)`` fills in the id and checksum.
struct EncodedChunk {
    /// Record header + payload up to (and including) the data's length field.
    var head: [UInt8]
    /// CRC of the payload after the id: the rest of `head`, then the data.
    let tailCRC: UInt32
    let tailLength: Int
    let dataLength: Int

    static let idOffset = RecordFormat.recordHeaderSize
    var recordLength: Int { head.count + dataLength }

    /// Returns nil when the record would not fit its u32 length field.
    init?(key: BatchKey, rows: Int, endsWithNewline: Bool, data: UnsafeRawBufferPointer) {
        var writer = ByteWriter(capacity: 128 + key.table.utf8.count + (key.header?.count ?? 0))
        writer.u32(RecordFormat.recordMagic)
        writer.u8(RecordFormat.RecordType.chunk.rawValue)
        writer.u32(0)  // payload length, below
        writer.u32(0)  // crc, in seal(id:)
        writer.u64(0)  // chunk id, in seal(id:)
        let tailStart = writer.bytes.count
        writer.u64(UInt64(bitPattern: Int64(rows)))
        writer.u8(endsWithNewline ? 1 : 0)
        writer.optionalString(key.identity.user)
        writer.optionalString(key.identity.password)
        writer.optionalString(key.database)
        writer.string(key.table)
        if let columns = key.columns {
            writer.u8(1)
            writer.u32(UInt32(columns.count))
            for column in columns { writer.string(column) }
        } else {
            writer.u8(0)
        }
        writer.string(key.format.rawValue)
        if let header = key.header {
            writer.u8(1)
            writer.bytes(header)
        } else {
            writer.u8(0)
        }
        writer.u32(UInt32(key.settings.count))
        for setting in key.settings {
            writer.string(setting.name)
            writer.string(setting.value)
        }
        guard data.count <= RecordFormat.maxPayloadLength else { return nil }
        writer.u32(UInt32(data.count))

        let payloadLength = writer.bytes.count - RecordFormat.recordHeaderSize + data.count
        guard payloadLength <= RecordFormat.maxPayloadLength else { return nil }
        writer.bytes.withUnsafeMutableBytes {
            $0.storeBytes(of: UInt32(payloadLength).littleEndian, toByteOffset: 5, as: UInt32.self)
        }
        head = writer.bytes
        tailLength = head.count - tailStart + data.count
        dataLength = data.count
        let metadataCRC = head.withUnsafeBytes { RecordFormat.crc(UnsafeRawBufferPointer(rebasing: $0[tailStart...])) }
        tailCRC = RecordFormat.crc(data, continuing: metadataCRC)
    }

    /// Writes the id into the payload and the checksum into the header; cheap, so it runs under the lock.
    mutating func seal(id: UInt64) {
        let (tailCRC, tailLength) = (self.tailCRC, self.tailLength)
        head.withUnsafeMutableBytes { Self.seal($0, at: 0, id: id, tailCRC: tailCRC, tailLength: tailLength) }
    }

    /// Seals the chunk record that starts at `start` in `bytes` (its head, at least, is there): the id into its
    /// payload, the checksum of type, id and `tailCRC` (over `tailLength` bytes after the id) into its header.
    static func seal(
        _ bytes: UnsafeMutableRawBufferPointer, at start: Int, id: UInt64, tailCRC: UInt32, tailLength: Int
    ) {
        var prefix = ByteWriter(capacity: 9)
        prefix.u8(RecordFormat.RecordType.chunk.rawValue)
        prefix.u64(id)
        let crc = RecordFormat.combine(RecordFormat.crc(prefix.bytes), tailCRC, lengthB: tailLength)
        bytes.storeBytes(of: crc.littleEndian, toByteOffset: start + 9, as: UInt32.self)
        bytes.storeBytes(of: id.littleEndian, toByteOffset: start + idOffset, as: UInt64.self)
    }
}

extension RecordFormat {
    /// A complete `delivered` record for these inclusive id ranges.
    static func deliveredRecord(_ ranges: [ClosedRange<UInt64>]) -> [UInt8] {
        var payload = ByteWriter(capacity: 4 + ranges.count * 16)
        payload.u32(UInt32(ranges.count))
        for range in ranges {
            payload.u64(range.lowerBound)
            payload.u64(range.upperBound)
        }
        return record(type: .delivered, payload: payload.bytes)
    }

    /// A `sending` record: `chunks` must be in increasing order.
    static func sendingRecord(queryID: String, batch: UInt64, chunks: [UInt64]) -> [UInt8] {
        var payload = ByteWriter(capacity: 32 + queryID.utf8.count + chunks.count * 2)
        payload.string(queryID)
        payload.u64(batch)
        payload.u32(UInt32(chunks.count))
        var previous: UInt64 = 0
        for id in chunks {
            payload.uleb128(id &- previous)
            previous = id
        }
        return record(type: .sending, payload: payload.bytes)
    }

    static func settledRecord(queryID: String, outcome: SettledOutcome, note: String) -> [UInt8] {
        var payload = ByteWriter(capacity: 16 + queryID.utf8.count + note.utf8.count)
        payload.string(queryID)
        payload.u8(outcome.rawValue)
        payload.string(note)
        return record(type: .settled, payload: payload.bytes)
    }

    static func record(type: RecordType, payload: [UInt8]) -> [UInt8] {
        var writer = ByteWriter(capacity: recordHeaderSize + payload.count)
        writer.u32(recordMagic)
        writer.u8(type.rawValue)
        writer.u32(UInt32(payload.count))
        writer.u32(crc(payload, continuing: crc([type.rawValue])))
        writer.bytes.append(contentsOf: payload)
        return writer.bytes
    }
}

// MARK: - Decoding

/// Bounds-checked reads over a payload; every read fails (returns nil) instead of trapping, and no
/// count read from the file is trusted for an allocation before the bytes behind it are known to exist.
struct ByteReader {
    let buffer: UnsafeRawBufferPointer
    var offset = 0

    init(_ buffer: UnsafeRawBufferPointer) { self.buffer = buffer }

    var remaining: Int { buffer.count - offset }

    mutating func u8() -> UInt8? {
        guard remaining >= 1 else { return nil }
        defer { offset += 1 }
        return buffer[offset]
    }

    mutating func u32() -> UInt32? {
        guard remaining >= 4 else { return nil }
        defer { offset += 4 }
        return UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    mutating func u64() -> UInt64? {
        guard remaining >= 8 else { return nil }
        defer { offset += 8 }
        return UInt64(littleEndian: buffer.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    mutating func bytes() -> UnsafeRawBufferPointer? {
        guard let length = u32().map(Int.init), length <= remaining else { return nil }
        defer { offset += length }
        return UnsafeRawBufferPointer(rebasing: buffer[offset..<offset + length])
    }

    mutating func string() -> String? {
        bytes().map { String(decoding: $0, as: UTF8.self) }
    }

    /// Skips a length-prefixed field.
    mutating func skipBytes() -> Bool {
        guard let length = u32().map(Int.init), length <= remaining else { return false }
        offset += length
        return true
    }

    mutating func skipOptional() -> Bool {
        switch u8() {
        case 0: return true
        case 1: return skipBytes()
        default: return false
        }
    }

    mutating func uleb128() -> UInt64? {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while let byte = u8() {
            guard shift < 64 else { return nil }
            value |= UInt64(byte & 0x7f) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
        }
        return nil
    }

    /// `.some(nil)` for an absent value, nil for malformed input.
    mutating func optional<T>(_ read: (inout ByteReader) -> T?) -> T?? {
        switch u8() {
        case 0: return .some(nil)
        case 1: return read(&self).map { .some($0) }
        default: return nil
        }
    }

    /// A count of items each at least `minimumSize` bytes long, checked against what is left.
    mutating func count(minimumSize: Int) -> Int? {
        guard let count = u32().map(Int.init), count <= remaining / minimumSize else { return nil }
        return count
    }
}

enum RecordDecodingError: Error {
    case malformed(String)
}

extension RecordFormat {
    /// A chunk record's fields, the data left where it is.
    struct ChunkFields {
        var id: UInt64
        var key: BatchKey
        var rows: Int
        var endsWithNewline: Bool
        var data: UnsafeRawBufferPointer
    }

    static func decodeChunk(_ payload: UnsafeRawBufferPointer) throws(RecordDecodingError) -> SpooledChunk {
        let fields = try decodeChunkFields(payload)
        return SpooledChunk(
            id: fields.id, key: fields.key, rows: fields.rows, endsWithNewline: fields.endsWithNewline,
            dataLength: fields.data.count)
    }

    static func decodeChunkFields(_ payload: UnsafeRawBufferPointer) throws(RecordDecodingError) -> ChunkFields {
        var reader = ByteReader(payload)
        func need<T>(_ value: T?, _ what: String) throws(RecordDecodingError) -> T {
            guard let value else { throw .malformed("bad \(what) at payload offset \(reader.offset)") }
            return value
        }
        let id = try need(reader.u64(), "id")
        let rows = Int(Int64(bitPattern: try need(reader.u64(), "row count")))
        let flags = try need(reader.u8(), "flags")
        let user = try need(reader.optional { $0.string() }, "user")
        let password = try need(reader.optional { $0.string() }, "password")
        let database = try need(reader.optional { $0.string() }, "database")
        let table = try need(reader.string(), "table")
        let columns: [String]? = try need(
            reader.optional { (reader: inout ByteReader) -> [String]? in
                guard let count = reader.count(minimumSize: 4) else { return nil }
                var columns: [String] = []
                columns.reserveCapacity(count)
                for _ in 0..<count {
                    guard let column = reader.string() else { return nil }
                    columns.append(column)
                }
                return columns
            },
            "column list"
        )
        let formatName = try need(reader.string(), "format")
        guard let format = InputFormat(rawValue: formatName) else {
            throw .malformed("unknown format '\(formatName)'")
        }
        let header = try need(reader.optional { $0.bytes().map(Array.init) }, "header")
        let settingCount = try need(reader.count(minimumSize: 8), "settings count")
        var settings: [Setting] = []
        settings.reserveCapacity(settingCount)
        for _ in 0..<settingCount {
            let name = try need(reader.string(), "setting name")
            let value = try need(reader.string(), "setting value")
            settings.append(Setting(name: name, value: value))
        }
        let data = try need(reader.bytes(), "data")
        guard reader.remaining == 0 else { throw .malformed("\(reader.remaining) bytes after the data") }
        let key = BatchKey(
            identity: ClientIdentity(user: user, password: password),
            database: database,
            table: table,
            columns: columns,
            format: format,
            header: header,
            settings: settings
        )
        return ChunkFields(id: id, key: key, rows: rows, endsWithNewline: flags & 1 != 0, data: data)
    }

    /// A chunk record's id, rows, flag and data, skipping the key without building it (the read-back of a batch).
    static func decodeChunkBody(_ payload: UnsafeRawBufferPointer) throws(RecordDecodingError) -> (
        id: UInt64, rows: Int, endsWithNewline: Bool, data: UnsafeRawBufferPointer
    ) {
        var reader = ByteReader(payload)
        guard let id = reader.u64(), let rows = reader.u64(), let flags = reader.u8(),
            reader.skipOptional(), reader.skipOptional(), reader.skipOptional(), reader.skipBytes()
        else { throw .malformed("bad chunk head") }
        switch reader.u8() {
        case 0: break
        case 1:
            guard let count = reader.count(minimumSize: 4) else { throw .malformed("bad column list") }
            for _ in 0..<count where !reader.skipBytes() { throw .malformed("bad column") }
        default: throw .malformed("bad column list")
        }
        guard reader.skipBytes(), reader.skipOptional(), let settings = reader.count(minimumSize: 8) else {
            throw .malformed("bad format or header")
        }
        for _ in 0..<(settings * 2) where !reader.skipBytes() { throw .malformed("bad setting") }
        guard let data = reader.bytes(), reader.remaining == 0 else { throw .malformed("bad data") }
        return (id, Int(Int64(bitPattern: rows)), flags & 1 != 0, data)
    }

    static func decodeSending(_ payload: UnsafeRawBufferPointer) throws(RecordDecodingError) -> (
        queryID: String, batch: UInt64, chunks: [UInt64]
    ) {
        var reader = ByteReader(payload)
        guard let queryID = reader.string(), let batch = reader.u64(), let count = reader.count(minimumSize: 1) else {
            throw .malformed("bad sending head")
        }
        var chunks: [UInt64] = []
        chunks.reserveCapacity(count)
        var previous: UInt64 = 0
        for _ in 0..<count {
            guard let delta = reader.uleb128() else { throw .malformed("bad chunk id") }
            previous &+= delta
            chunks.append(previous)
        }
        guard reader.remaining == 0 else { throw .malformed("\(reader.remaining) bytes after the chunk ids") }
        return (queryID, batch, chunks)
    }

    static func decodeSettled(_ payload: UnsafeRawBufferPointer) throws(RecordDecodingError) -> (
        queryID: String, outcome: SettledOutcome, note: String
    ) {
        var reader = ByteReader(payload)
        guard let queryID = reader.string(), let raw = reader.u8(), let outcome = SettledOutcome(rawValue: raw),
            let note = reader.string(), reader.remaining == 0
        else { throw .malformed("bad settled record") }
        return (queryID, outcome, note)
    }

    static func decodeDelivered(_ payload: UnsafeRawBufferPointer) throws(RecordDecodingError) -> [ClosedRange<UInt64>] {
        var reader = ByteReader(payload)
        guard let count = reader.count(minimumSize: 16) else { throw .malformed("bad range count") }
        var ranges: [ClosedRange<UInt64>] = []
        ranges.reserveCapacity(count)
        for _ in 0..<count {
            guard let first = reader.u64(), let last = reader.u64(), first <= last else {
                throw .malformed("bad id range")
            }
            ranges.append(first...last)
        }
        guard reader.remaining == 0 else { throw .malformed("\(reader.remaining) bytes after the ranges") }
        return ranges
    }
}
