/// Walks the records of one segment file held in memory, verifying each, and resynchronizes past
/// damage: after a bad record it looks for the next offset where a whole record verifies (magic,
/// length within the file, checksum) and goes on from there. It never trusts a length beyond the
/// bytes that exist, and it bounds the work spent resynchronizing, so a garbage file costs a few
/// passes over its bytes at most.
struct SegmentScanner {
    enum Outcome {
        /// The file was read; its bad stretches are in `corruptions`.
        case scanned
        /// A well-formed header of a format version this build does not know: nothing was read.
        case unsupportedVersion(UInt8)
    }

    let bytes: UnsafeRawBufferPointer
    let fileName: String
    private(set) var corruptions: [SpoolCorruption] = []
    /// The end of the header or of the last record that verified: what follows holds nothing valid, so a file
    /// reused for appends is cut back to it.
    private(set) var validEnd = 0
    /// How many payload bytes resynchronization may still checksum.
    private var resyncBudget: Int

    init(bytes: UnsafeRawBufferPointer, fileName: String) {
        self.bytes = bytes
        self.fileName = fileName
        self.resyncBudget = 8 * bytes.count + (1 << 20)
    }

    /// Calls `body` with the type, payload and offset of each record whose checksum verifies, in file order.
    mutating func scan(
        _ body: (_ type: RecordFormat.RecordType, _ payload: UnsafeRawBufferPointer, _ offset: Int) -> Void
    ) -> Outcome {
        var offset = 0
        if bytes.count == 0 {
            report(0, "empty file (torn while being created)")
            return .scanned
        }
        if bytes.count >= RecordFormat.segmentHeaderSize
            && RecordFormat.segmentMagic.indices.allSatisfy({ bytes[$0] == RecordFormat.segmentMagic[$0] })
        {
            let version = bytes[RecordFormat.segmentMagic.count]
            guard version == RecordFormat.version else { return .unsupportedVersion(version) }
            offset = RecordFormat.segmentHeaderSize
            validEnd = offset
        } else {
            // Damaged header: the records after it may still be fine.
            let next = resync(from: 0)
            report(0, "bad segment header" + skipped(from: 0, to: next))
            guard let next else { return .scanned }
            offset = next
        }

        while offset < bytes.count {
            switch check(offset) {
            case .valid(let rawType, let payload):
                if let type = RecordFormat.RecordType(rawValue: rawType) {
                    body(type, payload, offset)
                } else {
                    report(offset, "unknown record type \(rawType) (\(payload.count) bytes skipped)")
                }
                offset += RecordFormat.recordHeaderSize + payload.count
                validEnd = offset
            case .invalid(let reason):
                let next = resync(from: offset + 1)
                report(offset, reason + skipped(from: offset, to: next))
                guard let next else { return .scanned }
                offset = next
            }
        }
        return .scanned
    }

    mutating func report(_ offset: Int, _ reason: String) {
        corruptions.append(SpoolCorruption(segment: fileName, offset: offset, reason: reason))
    }

    private func skipped(from offset: Int, to next: Int?) -> String {
        if let next {
            return "; skipped \(next - offset) bytes to the next valid record"
        }
        return "; nothing valid in the last \(bytes.count - offset) bytes"
    }

    enum Check {
        case valid(type: UInt8, payload: UnsafeRawBufferPointer)
        case invalid(String)
    }

    /// The record at `offset`, verified: magic, length within the bytes, checksum.
    func check(_ offset: Int) -> Check {
        let remaining = bytes.count - offset
        guard remaining >= RecordFormat.recordHeaderSize else {
            return .invalid("truncated record header (\(remaining) of \(RecordFormat.recordHeaderSize) bytes)")
        }
        guard UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) == RecordFormat.recordMagic
        else {
            return .invalid("bad record magic")
        }
        let type = bytes[offset + 4]
        let length = Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 5, as: UInt32.self)))
        let stored = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 9, as: UInt32.self))
        let payloadStart = offset + RecordFormat.recordHeaderSize
        guard length <= bytes.count - payloadStart else {
            return .invalid("truncated record (payload of \(length) bytes, \(bytes.count - payloadStart) left)")
        }
        let payload = UnsafeRawBufferPointer(rebasing: bytes[payloadStart..<payloadStart + length])
        let crc = RecordFormat.crc(payload, continuing: RecordFormat.crc([type]))
        guard crc == stored else { return .invalid("checksum mismatch") }
        return .valid(type: type, payload: payload)
    }

    /// The first offset at or after `start` where a whole record verifies, if any within budget.
    private mutating func resync(from start: Int) -> Int? {
        // The magic is stored little-endian: its least significant byte comes first.
        let firstByte = UInt8(truncatingIfNeeded: RecordFormat.recordMagic)
        var offset = start
        let last = bytes.count - RecordFormat.recordHeaderSize
        while offset <= last {
            if bytes[offset] == firstByte,
                UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) == RecordFormat.recordMagic
            {
                let length = Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 5, as: UInt32.self)))
                if length <= bytes.count - offset - RecordFormat.recordHeaderSize {
                    resyncBudget -= length
                    if resyncBudget < 0 { return nil }
                    if case .valid = check(offset) { return offset }
                }
            }
            offset += 1
        }
        return nil
    }
}
