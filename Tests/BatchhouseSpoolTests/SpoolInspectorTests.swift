import BatchhouseCore
import Foundation
import Testing

@testable import BatchhouseSpool

@Suite("SpoolInspector")
struct SpoolInspectorTests {
    @Test func reportsTablesAndCorruptionsButNeverCredentials() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let segment: String
        do {
            let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
            defer { spool.close() }
            let first = try append(spool, secretKey, "1\ta\t1\n2\tb\t2\n", rows: 2)
            try append(spool, secretKey, "3\tc\t3\n", rows: 1)
            try append(spool, plainKey, #"{"a":1}"#, rows: 1)
            let delivered = try append(spool, plainKey, #"{"a":2}"#, rows: 1)
            spool.markDelivered([delivered.position.chunkID])
            let last = try append(spool, plainKey, #"{"a":3}"#, rows: 1)
            segment = directory.spool + "/" + RecordFormat.segmentFileName(first.position.segment)
            // A torn tail after the last record.
            try truncateFile(segment, to: last.position.offset - 3)
        }

        let report = SpoolInspector.report(directory: directory.spool)
        #expect(!report.contains("s3cr3t-pa55"))
        #expect(!report.contains("alice"))
        #expect(report.contains("analytics.events (TabSeparatedWithNames): 2 chunks, 3 rows"))
        #expect(report.contains("default.visits (JSONEachRow): 1 chunk, 1 row"))
        #expect(report.contains("undelivered: 3 chunks, 4 rows"))
        #expect(report.contains("corruptions: 1"))
        #expect(report.contains("truncated record"))
        #expect(report.contains(RecordFormat.segmentFileName(1)))
        // Read-only: nothing changed.
        #expect(segmentFiles(directory.spool).count == 1)
    }

    @Test func missingDirectoryIsReportedNotThrown() {
        let report = SpoolInspector.report(directory: "/nonexistent/batchhouse-spool")
        #expect(report.contains("cannot list"))
    }

    @Test func sizes() {
        #expect(SpoolInspector.sizeText(10) == "10 B")
        #expect(SpoolInspector.sizeText(1536) == "1.5 KiB (1536 B)")
        #expect(SpoolInspector.sizeText(64 << 20) == "64.0 MiB (67108864 B)")
    }
}

@Suite("Spool record format")
struct RecordFormatTests {
    @Test func sealedChecksumEqualsAFullChecksum() throws {
        let data = pseudoRandomBytes(10_000, seed: 3)
        var record = try #require(
            data.withUnsafeBytes { EncodedChunk(key: secretKey, rows: 3, endsWithNewline: true, data: $0) }
        )
        record.seal(id: 0x0102_0304_0506_0708)
        let bytes = record.head + data
        let stored = bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 9, as: UInt32.self)) }
        #expect(stored == RecordFormat.crc(Array(bytes[4...4]) + Array(bytes[13...])))
        let chunk = try bytes.withUnsafeBytes { try RecordFormat.decodeChunk(UnsafeRawBufferPointer(rebasing: $0[13...])) }
        #expect(chunk.id == 0x0102_0304_0506_0708)
        #expect(chunk.key == secretKey)
        #expect(chunk.dataLength == data.count)
        let body = try bytes.withUnsafeBytes { try RecordFormat.decodeChunkBody(UnsafeRawBufferPointer(rebasing: $0[13...])) }
        #expect(body.id == chunk.id && body.rows == 3 && body.endsWithNewline)
        #expect(Array(body.data) == data)
    }

    @Test func truncatedPayloadsFailToDecodeWithoutTrapping() throws {
        var record = try #require(
            [UInt8](repeating: 1, count: 50).withUnsafeBytes { EncodedChunk(key: secretKey, rows: 3, endsWithNewline: true, data: $0) }
        )
        record.seal(id: 1)
        let payload = Array(record.head.dropFirst(13)) + [UInt8](repeating: 1, count: 50)
        for length in 0..<payload.count {
            #expect(throws: RecordDecodingError.self) {
                try payload.prefix(length).withUnsafeBytes { try RecordFormat.decodeChunk($0) }
            }
        }
    }

    @Test func segmentNames() {
        #expect(RecordFormat.segmentFileName(42) == "segment-00000000000000000042.wal")
        #expect(RecordFormat.segmentNumber(fileName: "segment-00000000000000000042.wal") == 42)
        #expect(RecordFormat.segmentFileName(.max) == "segment-18446744073709551615.wal")
        #expect(RecordFormat.segmentNumber(fileName: "segment-42.wal") == nil)
        #expect(RecordFormat.segmentNumber(fileName: "segment-0000000000000000004x.wal") == nil)
        #expect(RecordFormat.segmentNumber(fileName: "lock") == nil)
    }

    @Test func idRanges() {
        let ranges = IDRanges(ids: [5, 1, 2, 3, 9, 10, 3])
        #expect(ranges.ranges == [1...3, 5...5, 9...10])
        #expect(ranges.contains(2) && ranges.contains(10) && !ranges.contains(4) && !ranges.contains(11))
        #expect(ranges.overlaps(4...5) && !ranges.overlaps(6...8))
        #expect(IDRanges(ranges: [1...4, 3...8, 9...9, 20...21]).ranges == [1...9, 20...21])
        #expect(IDRanges.complement(of: [3, 10], in: 1...10) == [1...2, 4...9])
        #expect(IDRanges.complement(of: [], in: 1...10) == [1...10])
        #expect(IDRanges.complement(of: [1, 2], in: 1...2) == [])
    }
}
