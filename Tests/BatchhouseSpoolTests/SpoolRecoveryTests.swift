import BatchhouseCore
import Foundation
import Testing

@testable import BatchhouseSpool

@Suite("Spool recovery")
struct SpoolRecoveryTests {
    /// Appends `count` chunks in one segment, closes, and returns them with the segment's path.
    func spoolOf(_ count: Int, in directory: TemporaryDirectory, size: Int = 200) throws -> ([Appended], String) {
        let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        defer { spool.close() }
        let appended = try (0..<count).map { index in
            try append(spool, secretKey, pseudoRandomBytes(size, seed: UInt64(index + 1)), rows: index + 1)
        }
        return (appended, directory.spool + "/" + RecordFormat.segmentFileName(appended[0].position.segment))
    }

    @Test func tornTailIsReportedAndEarlierChunksRecovered() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (appended, segment) = try spoolOf(3, in: directory)
        // Cut the third record in the middle, as a crash during its write would.
        let cut = (appended[1].position.offset + appended[2].position.offset) / 2
        try truncateFile(segment, to: cut)

        do {
            let (spool, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
            expectSame(recovery.chunks, Array(appended.prefix(2)), in: spool)
            #expect(recovery.corruptions.count == 1)
            let corruption = try #require(recovery.corruptions.first)
            #expect(corruption.segment == RecordFormat.segmentFileName(appended[0].position.segment))
            #expect(corruption.offset == appended[1].position.offset)
            #expect(corruption.reason.contains("truncated"))
            #expect(!corruption.description.contains("s3cr3t"))
            // New chunks go to a new segment, never after the torn tail.
            let next = try append(spool, plainKey, "{}")
            #expect(next.position.segment != appended[0].position.segment)
            #expect(fileSize(segment) == cut)
            spool.close()
        }
        // The same damage is found again (the segment is kept until its chunks are delivered),
        // and the chunk written after it is recovered too.
        let (spool, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        defer { spool.close() }
        #expect(recovery.chunks.count == 3)
        #expect(recovery.corruptions.count == 1)
    }

    @Test func tornRecordHeaderIsReported() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (appended, segment) = try spoolOf(2, in: directory)
        try truncateFile(segment, to: appended[0].position.offset + 5)
        let (spool, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        defer { spool.close() }
        expectSame(recovery.chunks, Array(appended.prefix(1)), in: spool)
        #expect(recovery.corruptions.map(\.offset) == [appended[0].position.offset])
        #expect(recovery.corruptions.first?.reason.contains("truncated record header") == true)
    }

    @Test func flippedByteInTheMiddleRecordSkipsOnlyThatRecord() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (appended, segment) = try spoolOf(3, in: directory)
        let middle = (appended[0].position.offset + appended[1].position.offset) / 2
        let original = try #require(FileManager.default.contents(atPath: segment))
        try patch(segment, at: middle, [original[middle] ^ 0x10])

        let (spool, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        defer { spool.close() }
        expectSame(recovery.chunks, [appended[0], appended[2]], in: spool)
        #expect(recovery.corruptions.count == 1)
        let corruption = try #require(recovery.corruptions.first)
        #expect(corruption.offset == appended[0].position.offset)
        #expect(corruption.reason.contains("checksum mismatch"))
        #expect(corruption.reason.contains("skipped \(appended[1].position.offset - appended[0].position.offset) bytes"))
    }

    @Test func damagedLengthFieldIsSkipped() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (appended, segment) = try spoolOf(3, in: directory)
        // An absurd payload length in the first record: must not be trusted or allocated.
        try patch(segment, at: RecordFormat.segmentHeaderSize + 5, [0xff, 0xff, 0xff, 0x7f])
        let (spool, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        defer { spool.close() }
        expectSame(recovery.chunks, Array(appended.dropFirst()), in: spool)
        #expect(recovery.corruptions.count == 1)
    }

    @Test func damagedSegmentHeaderStillRecoversRecords() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (appended, segment) = try spoolOf(2, in: directory)
        try patch(segment, at: 0, [0, 0, 0])
        let (spool, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        defer { spool.close() }
        expectSame(recovery.chunks, appended, in: spool)
        #expect(recovery.corruptions.map(\.offset) == [0])
    }

    @Test func garbageFilesDoNotCrash() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        try FileManager.default.createDirectory(atPath: directory.spool, withIntermediateDirectories: true)
        let magic = withUnsafeBytes(of: RecordFormat.recordMagic.littleEndian) { Array($0) }
        var adversarial: [UInt8] = []
        for index in 0..<20_000 {
            // Record magics with plausible lengths and wrong checksums, over and over.
            adversarial += magic + [1] + [UInt8(index % 200), 0, 0, 0] + [0, 0, 0, 0]
        }
        let files: [(UInt64, [UInt8])] = [
            (1, pseudoRandomBytes(1 << 20, seed: 7)),
            (2, []),
            (3, RecordFormat.segmentHeader + pseudoRandomBytes(5000, seed: 8)),
            (4, RecordFormat.segmentHeader + adversarial),
            (5, Array(RecordFormat.segmentHeader.prefix(3))),
            (6, RecordFormat.segmentHeader + magic + [2, 0xff, 0xff, 0xff, 0xff]),
        ]
        for (number, bytes) in files {
            #expect(FileManager.default.createFile(atPath: directory.spool + "/" + RecordFormat.segmentFileName(number), contents: Data(bytes)))
        }
        #expect(FileManager.default.createFile(atPath: directory.spool + "/notes.txt", contents: Data("hello".utf8)))

        let (spool, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        #expect(recovery.chunks.isEmpty)
        #expect(recovery.segments == files.count)
        #expect(Set(recovery.corruptions.map(\.segment)) == Set(files.map { RecordFormat.segmentFileName($0.0) }))
        // Nothing in them to replay: they are deleted, and the spool works.
        #expect(segmentFiles(directory.spool).count == 1)
        let appended = try append(spool, plainKey, "{}")
        #expect(appended.position.chunkID > 6)
        spool.close()
        let (reopened, again) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        defer { reopened.close() }
        #expect(again.corruptions.isEmpty)
        expectSame(again.chunks, [appended], in: reopened)
    }

    @Test func unknownFormatVersionRefusesToStart() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (_, segment) = try spoolOf(1, in: directory)
        try patch(segment, at: 4, [9])
        do {
            _ = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
            Issue.record("opened a version 9 segment")
        } catch {
            #expect(error.code == .io)
            #expect(error.message.contains("version 9"))
        }
        #expect(FileManager.default.fileExists(atPath: segment))
    }

    /// A kill leaves what write(2) wrote in the page cache: a copy of the files taken while the
    /// spool is open is what the next start would find.
    @Test func appendedChunksSurviveAKillWithoutClose() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30, segmentSize: 1000)
        defer { spool.close() }
        let appended = try (0..<20).map { try append(spool, secretKey, "row \($0)\n") }
        spool.markDelivered([appended[3].position.chunkID])

        let copy = directory.path + "/killed"
        try FileManager.default.createDirectory(atPath: copy, withIntermediateDirectories: false)
        for file in segmentFiles(directory.spool) {
            try FileManager.default.copyItem(atPath: directory.spool + "/" + file, toPath: copy + "/" + file)
        }
        let (recovered, recovery) = try Spool.open(directory: copy, maxSize: 1 << 30, segmentSize: 1000)
        defer { recovered.close() }
        #expect(recovery.corruptions.isEmpty)
        expectSame(recovery.chunks, appended.filter { $0.position.chunkID != appended[3].position.chunkID }, in: recovered)
    }

    /// Deleting a segment also deletes the `delivered` records it holds. Those that concern chunks of
    /// segments that stay must be written again first, or a restart would replay delivered chunks.
    @Test func deliveriesRecordedInADeletedSegmentAreCarriedForward() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (first, second, fourth): (Appended, Appended, Appended)
        do {
            let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30, segmentSize: 1000)
            // Segment A: chunks 1 and 2 (a slow table's chunk 1 stays undelivered).
            first = try append(spool, secretKey, String(repeating: "1", count: 300))
            second = try append(spool, plainKey, String(repeating: "2", count: 300))
            // Segment B: chunk 3; chunk 2's delivery is recorded in B.
            let third = try append(spool, plainKey, String(repeating: "3", count: 500))
            #expect(third.position.segment != first.position.segment)
            spool.markDelivered([second.position.chunkID])
            // Segment C: chunk 4. Delivering chunk 3 deletes B, which held chunk 2's delivery.
            fourth = try append(spool, plainKey, String(repeating: "4", count: 600))
            #expect(fourth.position.segment != third.position.segment)
            spool.markDelivered([third.position.chunkID])
            spool.close()
            #expect(segmentFiles(directory.spool) == [first.position.segment, fourth.position.segment].map { RecordFormat.segmentFileName($0) })
        }
        let (spool, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30, segmentSize: 1000)
        defer { spool.close() }
        #expect(recovery.corruptions.isEmpty)
        expectSame(recovery.chunks, [first, fourth], in: spool)
    }

    @Test func recoveredSegmentsAreDeletedOnceReplayedChunksAreDelivered() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        _ = try spoolOf(5, in: directory)
        let (spool, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        defer { spool.close() }
        #expect(recovery.chunks.count == 5)
        #expect(spool.undeliveredChunks == 5)
        #expect(segmentFiles(directory.spool).count == 2)
        spool.markDelivered(recovery.chunks.map(\.id))
        #expect(segmentFiles(directory.spool).count == 1)
        #expect(spool.undeliveredChunks == 0)
    }
}
