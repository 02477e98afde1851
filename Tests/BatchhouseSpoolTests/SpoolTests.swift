import BatchhouseCore
import Foundation
import Testing

@testable import BatchhouseSpool

@Suite("Spool")
struct SpoolTests {
    @Test func roundTripKeepsKeysRowsAndBytes() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        var appended: [Appended] = []
        do {
            let (spool, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
            #expect(recovery.chunks.isEmpty)
            #expect(recovery.corruptions.isEmpty)
            appended.append(try append(spool, secretKey, "1\ta\t1.5\n2\tb\t2.5\n", rows: 2))
            appended.append(try append(spool, plainKey, #"{"x":1}"#, rows: 1, endsWithNewline: false))
            appended.append(try append(spool, secretKey, [UInt8](), rows: 0, endsWithNewline: false))
            let binary = BatchKey(
                identity: ClientIdentity(user: "bob", password: nil),
                database: "",
                table: "t`x",
                columns: [],
                format: .rowBinary,
                header: [],
                settings: [Setting(name: "k", value: "")]
            )
            appended.append(try append(spool, binary, (0...255).map { UInt8($0) }, rows: 7))
            #expect(spool.undeliveredChunks == 4)
            #expect(appended.map(\.position.chunkID) == [1, 2, 3, 4])
            spool.close()
        }
        let (spool, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        defer { spool.close() }
        #expect(recovery.corruptions.isEmpty)
        #expect(recovery.segments == 1)
        expectSame(recovery.chunks, appended, in: spool)
        #expect(spool.undeliveredChunks == 4)
        // New ids continue after the recovered ones.
        #expect(try append(spool, plainKey, "{}").position.chunkID == 5)
    }

    @Test func largeChunkRoundTrip() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let data = pseudoRandomBytes(3 << 20, seed: 42)
        let appended: Appended
        do {
            let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
            appended = try append(spool, plainKey, data, rows: 1000)
            spool.close()
        }
        let (spool, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        defer { spool.close() }
        expectSame(recovery.chunks, [appended], in: spool)
    }

    @Test func recoveryReturnsExactlyTheUndeliveredChunksInOrder() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        var appended: [Appended] = []
        do {
            let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30, segmentSize: 600)
            for index in 0..<30 {
                let key = index % 3 == 0 ? secretKey : plainKey
                appended.append(try append(spool, key, "row \(index)\n", rows: 1))
            }
            #expect(segmentFiles(directory.spool).count > 3)
            let delivered = appended.map(\.position.chunkID).filter { $0 % 4 == 1 || $0 > 25 }
            spool.markDelivered(delivered)
            spool.markDelivered(delivered)  // twice: ignored
            spool.markDelivered([999, 0])  // unknown: ignored
            #expect(spool.undeliveredChunks == 30 - delivered.count)
            spool.close()
        }
        let expected = appended.filter { !($0.position.chunkID % 4 == 1 || $0.position.chunkID > 25) }
        do {
            let (spool, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30, segmentSize: 600)
            #expect(recovery.corruptions.isEmpty)
            expectSame(recovery.chunks, expected, in: spool)
            #expect(spool.undeliveredChunks == expected.count)
            // Deliver half of the recovered chunks in this run.
            spool.markDelivered(recovery.chunks.prefix(5).map(\.id))
            spool.close()
        }
        let (spool, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30, segmentSize: 600)
        defer { spool.close() }
        expectSame(recovery.chunks, Array(expected.dropFirst(5)), in: spool)
    }

    @Test func deliveredSegmentsAreDeleted() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30, segmentSize: 1000)
        defer { spool.close() }
        var ids: [UInt64] = []
        for index in 0..<40 {
            ids.append(try append(spool, plainKey, String(repeating: "x", count: 100) + "\(index)").position.chunkID)
        }
        let files = segmentFiles(directory.spool)
        #expect(files.count >= 5)
        let sizeBefore = spool.sizeBytes
        #expect(sizeBefore == files.reduce(0) { $0 + fileSize(directory.spool + "/" + $1) })

        // Delivering all but the first chunk keeps the first segment only (and the active one).
        spool.markDelivered(ids.dropFirst())
        let remaining = segmentFiles(directory.spool)
        #expect(remaining.count == 2)
        #expect(remaining.first == files.first)
        #expect(remaining.last == files.last)
        #expect(spool.sizeBytes < sizeBefore)
        #expect(spool.undeliveredChunks == 1)

        spool.markDelivered([ids[0]])
        #expect(segmentFiles(directory.spool) == [files.last!])
        #expect(spool.undeliveredChunks == 0)
        #expect(spool.sizeBytes == fileSize(directory.spool + "/" + files.last!))
    }

    @Test func rotationNamesSegmentsByTheirFirstChunk() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30, segmentSize: 4096)
        var positions: [SpoolPosition] = []
        for _ in 0..<100 {
            positions.append(try append(spool, secretKey, String(repeating: "y", count: 200)).position)
        }
        spool.close()
        let files = segmentFiles(directory.spool)
        let segments = Set(positions.map(\.segment)).sorted()
        #expect(files == segments.map { RecordFormat.segmentFileName($0) })
        for segment in segments {
            let first = positions.first { $0.segment == segment }!
            #expect(first.chunkID == segment)
            #expect(fileSize(directory.spool + "/" + RecordFormat.segmentFileName(segment)) <= 4096)
        }
        let (reopened, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30, segmentSize: 4096)
        defer { reopened.close() }
        #expect(recovery.chunks.map(\.id) == positions.map(\.chunkID))
        #expect(recovery.segments == files.count)
    }

    @Test func maxSizeRejectsWithFullUntilSegmentsAreDeleted() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 4000, segmentSize: 1000)
        defer { spool.close() }
        var ids: [UInt64] = []
        var thrown: SpoolError?
        for _ in 0..<100 {
            do {
                ids.append(try append(spool, plainKey, String(repeating: "z", count: 150)).position.chunkID)
            } catch let error as SpoolError {
                thrown = error
                break
            }
        }
        let error = try #require(thrown)
        #expect(error.code == .full)
        #expect(spool.sizeBytes <= 4000)
        #expect(error.description.contains("spool.max_size"))
        // Still full on retry.
        #expect(throws: SpoolError.self) { try append(spool, plainKey, String(repeating: "z", count: 150)) }

        spool.markDelivered(ids)
        #expect(spool.sizeBytes < 1000)
        try append(spool, plainKey, String(repeating: "z", count: 150))
    }

    @Test func groupCommitSharesFsyncs() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        defer { spool.close() }
        let before = spool.fsyncCount
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<200 {
                group.addTask {
                    let position = try append(spool, plainKey, #"{"n":\#(index)}"#).position
                    try await spool.waitDurable(position)
                }
            }
            try await group.waitForAll()
        }
        let fsyncs = spool.fsyncCount - before
        #expect(fsyncs >= 1)
        #expect(fsyncs < 50, "200 waiters took \(fsyncs) fsyncs")
        // Already durable: returns without another fsync.
        let position = try append(spool, plainKey, "{}").position
        try await spool.waitDurable(position)
        let count = spool.fsyncCount
        try await spool.waitDurable(position)
        #expect(spool.fsyncCount == count)
    }

    @Test func waitDurableAcrossRotation() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30, segmentSize: 2000)
        defer { spool.close() }
        var positions: [SpoolPosition] = []
        for _ in 0..<50 {
            positions.append(try append(spool, plainKey, String(repeating: "w", count: 300)).position)
        }
        #expect(Set(positions.map(\.segment)).count > 5)
        for position in positions.shuffled() {
            try await spool.waitDurable(position)
        }
    }

    @Test func waitDurableOnDeliveredSegmentReturns() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30, segmentSize: 500)
        defer { spool.close() }
        let first = try append(spool, plainKey, String(repeating: "a", count: 300)).position
        try append(spool, plainKey, String(repeating: "b", count: 300))
        spool.markDelivered([first.chunkID])
        #expect(!segmentFiles(directory.spool).contains(RecordFormat.segmentFileName(first.segment)))
        try await spool.waitDurable(first)
    }

    @Test func closeIsIdempotentAndRefusesLaterWork() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        let written = try append(spool, plainKey, "{}").position
        spool.close()
        spool.close()
        // Close synced it.
        try await spool.waitDurable(written)
        do {
            try append(spool, plainKey, "{}")
            Issue.record("append after close succeeded")
        } catch let error as SpoolError {
            #expect(error.code == .closed)
        }
        spool.markDelivered([written.chunkID])  // ignored
        // The directory lock was released.
        let (again, recovery) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        again.close()
        #expect(recovery.chunks.map(\.id) == [written.chunkID])
    }

    @Test func aSecondSpoolOnTheSameDirectoryIsRefused() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
        defer { spool.close() }
        do {
            _ = try Spool.open(directory: directory.spool, maxSize: 1 << 30)
            Issue.record("second open succeeded")
        } catch {
            #expect(error.code == .io)
            #expect(error.message.contains("in use"))
        }
    }

    @Test func directoryIs0700AndSegmentsAre0600() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        // An existing, too open directory is tightened; the umask does not loosen files.
        #expect(mkdir(directory.spool, 0o755) == 0)
        #expect(chmod(directory.spool, 0o755) == 0)
        let oldMask = umask(0)
        defer { umask(oldMask) }
        let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 1 << 30, segmentSize: 300)
        defer { spool.close() }
        for _ in 0..<5 { try append(spool, secretKey, String(repeating: "p", count: 200)) }
        #expect(permissions(directory.spool) == 0o700)
        let files = segmentFiles(directory.spool)
        #expect(files.count >= 3)
        for file in files {
            #expect(permissions(directory.spool + "/" + file) == 0o600, "\(file)")
        }
        #expect(permissions(directory.spool + "/lock") == 0o600)
    }

    @Test func nestedDirectoriesAreCreated() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (spool, _) = try Spool.open(directory: directory.path + "/a/b/c", maxSize: 1 << 30)
        spool.close()
        #expect(permissions(directory.path + "/a/b/c") == 0o700)
    }
}
