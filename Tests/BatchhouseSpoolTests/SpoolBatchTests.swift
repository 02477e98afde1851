import BatchhouseCore
import Testing

@testable import BatchhouseSpool

/// `Spool.append(_:)`: many chunks in one write, each refused or placed as a single append would be, and read back
/// after a restart exactly as written.
@Suite struct SpoolBatchTests {
    static func batch(_ texts: [String], key: BatchKey) -> SpoolBatch {
        var batch = SpoolBatch()
        for text in texts {
            _ = Array(text.utf8).withUnsafeBytes { batch.add(key: key, rows: 1, endsWithNewline: true, data: $0) }
        }
        return batch
    }

    @Test func aBatchIsWrittenAcrossSegmentsAndRecoveredChunkForChunk() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        var appended: [Appended] = []
        do {
            // Small segments: the batches cross several of them, each run one write.
            let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30, segmentSize: 700)
            appended.append(try append(spool, plainKey, "single before\n"))
            for round in 0..<4 {
                let texts = (0..<7).map { "round \(round) row \($0)\n" }
                let key = round % 2 == 0 ? plainKey : secretKey
                var batch = Self.batch(texts, key: key)
                let results = spool.append(&batch)
                #expect(results.count == texts.count)
                for (index, result) in results.enumerated() {
                    let position = try result.get()
                    #expect(batch.withData(of: index) { Array($0) } == Array(texts[index].utf8))
                    appended.append(
                        Appended(position: position, key: key, rows: 1, endsWithNewline: true, data: Array(texts[index].utf8)))
                }
            }
            appended.append(try append(spool, plainKey, "single after\n"))
            let ids = appended.map(\.position.chunkID)
            #expect(ids == ids.sorted() && Set(ids).count == ids.count, "ids rise, one per chunk")
            #expect(segmentFiles(directory.spool).count > 2)
            #expect(spool.undeliveredChunks == appended.count)
            spool.close()
        }
        let (spool, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30, segmentSize: 700)
        defer { spool.close() }
        #expect(recovery.corruptions.isEmpty)
        expectSame(recovery.chunks, appended, in: spool)
    }

    @Test func chunksBeyondMaxSizeAreRefusedAndTheRestIsWritten() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 400, segmentSize: 1 << 20)
        defer { spool.close() }
        let texts = [String(repeating: "a", count: 100), String(repeating: "b", count: 200), "c\n", String(repeating: "d", count: 300)]
        var batch = Self.batch(texts, key: plainKey)
        let results = spool.append(&batch)
        let codes = results.map { result -> String in
            switch result {
            case .success: "ok"
            case .failure(let error): "\(error.code)"
            }
        }
        // 100 + 200 bytes of rows (with their headers) fit in 400; the 300 do not; the 1-byte row does.
        #expect(codes == ["ok", "full", "ok", "full"] || codes == ["ok", "ok", "ok", "full"], "\(codes)")
        let written = results.compactMap { try? $0.get() }
        #expect(spool.undeliveredChunks == written.count)
        #expect(written.map(\.chunkID) == written.map(\.chunkID).sorted())
        // What was refused left nothing: a restart finds exactly the written chunks.
        spool.close()
        let (reopened, recovery) = try Spool.open(directory: directory.spool, maxSize: 400, segmentSize: 1 << 20)
        defer { reopened.close() }
        #expect(recovery.chunks.map(\.id) == written.map(\.chunkID))
    }

    @Test func aClosedSpoolRefusesTheWholeBatch() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 20)
        spool.close()
        var batch = Self.batch(["x\n", "y\n"], key: plainKey)
        let results = spool.append(&batch)
        #expect(results.allSatisfy { if case .failure(let error) = $0 { error.code == .closed } else { false } })
    }
}
