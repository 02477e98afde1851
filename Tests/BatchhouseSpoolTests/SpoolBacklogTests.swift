import BatchhouseCore
import Foundation
import Testing

@testable import BatchhouseSpool

/// Reading rows back from the segments (the spool as the backlog) and the records that make a batch's delivery
/// exactly once across a crash (docs/spool-and-acks.md, "The spool as backlog" and "Exactly once").
@Suite struct SpoolBacklogTests {
    @Test func chunksAreReadBackFromEverySegmentInOneWindowPerNeighbourhood() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30, segmentSize: 4096)
        defer { spool.close() }
        var appended: [Appended] = []
        for index in 0..<200 {
            let key = index % 3 == 0 ? secretKey : plainKey
            appended.append(try append(spool, key, pseudoRandomBytes(10 + index * 7 % 300, seed: UInt64(index)), rows: index % 5))
        }
        #expect(segmentFiles(directory.spool).count > 5, "the chunks span several segments")
        // Every third chunk, in an order unlike the file's: each comes back whole and verified.
        let wanted = appended.enumerated().filter { $0.offset % 3 == 0 }.map(\.element).reversed()
        let read = spool.readChunks(wanted.map(\.position.chunkID))
        #expect(read.unreadable.isEmpty)
        for chunk in wanted {
            let body = try #require(read.bodies[chunk.position.chunkID])
            #expect(body.data == chunk.data)
            #expect(body.rows == chunk.rows)
            #expect(body.endsWithNewline == chunk.endsWithNewline)
        }
    }

    @Test func aDeliveredOrUnknownChunkIsNotReadBack() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        defer { spool.close() }
        let first = try append(spool, plainKey, "{\"a\":1}")
        let second = try append(spool, plainKey, "{\"a\":2}")
        spool.markDelivered([first.position.chunkID])
        let read = spool.readChunks([first.position.chunkID, second.position.chunkID, 999])
        #expect(read.bodies.keys.sorted() == [second.position.chunkID])
        #expect(read.unreadable.keys.sorted() == [first.position.chunkID, 999])
    }

    @Test func aRecordDamagedOnDiskAfterItWasWrittenIsReportedNotReturned() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        defer { spool.close() }
        let first = try append(spool, plainKey, "{\"a\":1}")
        let second = try append(spool, plainKey, "{\"a\":2}")
        let segment = directory.spool + "/" + segmentFiles(directory.spool)[0]
        // The last byte of the first record's data: its checksum no longer matches.
        try patch(segment, at: first.position.offset - 1, [UInt8(ascii: "X")])
        let read = spool.readChunks([first.position.chunkID, second.position.chunkID])
        #expect(read.bodies.keys.sorted() == [second.position.chunkID])
        let reason = try #require(read.unreadable[first.position.chunkID])
        #expect(reason.contains("checksum mismatch"), "\(reason)")
    }

    // MARK: Batches in doubt

    @Test func aBatchRecordedAsSendingIsInDoubtAfterACrashUntilItsChunksAreDelivered() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        var ids: [UInt64] = []
        do {
            let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
            for index in 0..<4 { ids.append(try append(spool, secretKey, "\(index)\tx\t1\n").position.chunkID) }
            #expect(spool.recordSending(queryID: "q-1", batch: 7, chunks: [ids[2], ids[0], ids[1]]))
            #expect(spool.recordSending(queryID: "q-2", batch: 8, chunks: [ids[3]]))
            #expect(spool.sendingBatches == 2)
            spool.markDelivered([ids[3]])
            spool.finishSending(queryID: "q-2")
            spool.close()
        }
        let (spool, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        defer { spool.close() }
        #expect(recovery.inDoubt.count == 1, "q-2 was delivered")
        let doubt = try #require(recovery.inDoubt.first)
        #expect(doubt.queryID == "q-1")
        #expect(doubt.batch == 7)
        #expect(doubt.chunks == [ids[0], ids[1], ids[2]])
        #expect(doubt.complete)
        #expect(!doubt.settledLanded)
        #expect(spool.isSending(queryID: "q-1"), "kept, so it is carried forward until settled")
    }

    @Test func settledRecordsDecideWhatTheNextStartFinds() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        var ids: [UInt64] = []
        do {
            let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
            for index in 0..<4 { ids.append(try append(spool, plainKey, "{\"a\":\(index)}").position.chunkID) }
            spool.recordSending(queryID: "landed", batch: 1, chunks: [ids[0]])
            spool.recordSettled(queryID: "landed", outcome: .landed, note: "")
            spool.recordSending(queryID: "not-sent", batch: 2, chunks: [ids[1]])
            spool.recordSettled(queryID: "not-sent", outcome: .notSent, note: "")
            // Settled as not finished, then sent again: in doubt again.
            spool.recordSending(queryID: "resent", batch: 3, chunks: [ids[2]])
            spool.recordSettled(queryID: "resent", outcome: .resent, note: "")
            spool.recordSending(queryID: "resent", batch: 3, chunks: [ids[2]])
            // Partly delivered since (a split): not complete.
            spool.recordSending(queryID: "partly", batch: 4, chunks: [ids[3], ids[0]])
            spool.close()
        }
        let (spool, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        defer { spool.close() }
        let byID = Dictionary(uniqueKeysWithValues: recovery.inDoubt.map { ($0.queryID, $0) })
        #expect(byID.keys.sorted() == ["landed", "partly", "resent"])
        #expect(byID["landed"]?.settledLanded == true, "landed, but its marks did not follow: marked without asking")
        #expect(byID["resent"]?.settledLanded == false)
        #expect(byID["partly"]?.complete == true, "nothing of it is delivered yet")
        spool.markDelivered([ids[0]])
        spool.close()
        let (again, second) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        defer { again.close() }
        let partly = try #require(second.inDoubt.first { $0.queryID == "partly" })
        #expect(!partly.complete, "one of its chunks was delivered")
        #expect(second.inDoubt.map(\.queryID).sorted() == ["partly", "resent"])
    }

    @Test func aSendingRecordOutlivesTheSegmentItWasWrittenTo() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let chunk: UInt64
        do {
            let (spool, _) = try Spool.open(
                directory: directory.spool, maxSize: 1 << 30, segmentSize: 600, rolloverSize: 1 << 20)
            chunk = try append(spool, plainKey, "{\"a\":1}").position.chunkID
            // A segment of its own for the filler, then the sending record goes there too.
            let filler = try append(spool, plainKey, pseudoRandomBytes(700, seed: 1))
            spool.recordSending(queryID: "long", batch: 1, chunks: [chunk])
            let files = segmentFiles(directory.spool)
            #expect(files.count == 2)
            // Rotate again, and deliver the filler: its segment (holding the sending record) is reclaimed.
            _ = try append(spool, plainKey, pseudoRandomBytes(700, seed: 2))
            spool.markDelivered([filler.position.chunkID])
            // Unlinked once the carried records are synced, by the sync thread.
            for _ in 0..<3000 where segmentFiles(directory.spool).contains(files[1]) { usleep(10_000) }
            #expect(!segmentFiles(directory.spool).contains(files[1]), "the segment with the record is gone")
            spool.close()
        }
        let (spool, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        defer { spool.close() }
        #expect(recovery.inDoubt.map(\.queryID) == ["long"], "the record was carried forward")
        #expect(recovery.inDoubt.first?.chunks == [chunk])
    }

    @Test func inspectShowsEveryBatchInDoubtAndHowItWasSettled() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        let first = try append(spool, plainKey, "{\"a\":1}").position.chunkID
        let second = try append(spool, plainKey, "{\"a\":2}").position.chunkID
        spool.recordSending(queryID: "batchhouse-x-1", batch: 1, chunks: [first])
        spool.recordSending(queryID: "batchhouse-x-2", batch: 2, chunks: [second])
        spool.recordSettled(queryID: "batchhouse-x-2", outcome: .landed, note: "1 chunk, 1 rows")
        spool.markDelivered([second])
        spool.close()
        let report = SpoolInspector.report(directory: directory.spool)
        #expect(report.contains("batches in doubt or settled at a start: 2"), "\(report)")
        #expect(report.contains("batchhouse-x-1 (batch 1): 1 chunk, 1 undelivered: in doubt"), "\(report)")
        #expect(report.contains("batchhouse-x-2 (batch 2): 1 chunk, 0 undelivered: settled: landed before the crash"), "\(report)")
        #expect(!report.contains("alice") && !report.contains("s3cr3t"))
    }
}
