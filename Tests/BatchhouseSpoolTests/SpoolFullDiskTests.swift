import BatchhouseCore
import Foundation
import Testing

@testable import BatchhouseSpool

/// The spool on a real full disk: a small tmpfs per test (docs/spool-and-acks.md, "A full disk").
@Suite("Spool on a full disk", .enabled(if: SmallFilesystem.canMount, SmallFilesystem.whyNot))
struct SpoolFullDiskTests {
    /// Appends chunks of `size` bytes until the disk refuses one; returns what was appended and that error.
    func fill(_ spool: Spool, size: Int, seed: UInt64 = 1) throws -> ([Appended], SpoolError) {
        var appended: [Appended] = []
        for index in 0..<100_000 {
            do {
                appended.append(try append(spool, plainKey, pseudoRandomBytes(size, seed: seed + UInt64(index)), rows: 1))
            } catch let error as SpoolError {
                return (appended, error)
            }
        }
        throw TestError("the disk never filled")
    }

    @Test func aFullDiskRefusesWithNoSpaceAndLeavesNoPartialRecord() throws {
        let disk = try SmallFilesystem(size: "1m")
        defer { disk.unmount() }
        var appended: [Appended] = []
        do {
            let (spool, _) = try Spool.open(directory: disk.spool, maxSize: 1 << 30)
            let (written, error) = try fill(spool, size: 3000)
            appended = written
            #expect(error.code == .noSpace, "\(error)")
            let last = try #require(appended.last)
            let segment = disk.spool + "/" + RecordFormat.segmentFileName(last.position.segment)
            #expect(fileSize(segment) == last.position.offset, "the refused record was cut off")
            // Refused again, and still nothing written.
            #expect(throws: SpoolError.self) { try append(spool, plainKey, pseudoRandomBytes(3000, seed: 99)) }
            #expect(fileSize(segment) == last.position.offset)
            #expect(spool.statistics.counters.refusedNoSpace >= 2)
            #expect(spool.undeliveredChunks == appended.count)
            spool.close()
        }
        // Reopened on the still full disk: exactly the accepted chunks, nothing torn.
        let (spool, recovery) = try Spool.open(directory: disk.spool, maxSize: 1 << 30)
        defer { spool.close() }
        #expect(recovery.corruptions.isEmpty, "\(recovery.corruptions)")
        expectSame(recovery.chunks, appended, in: spool)
    }

    @Test func deliveredMarksAreWrittenOnAFullDiskAndItsSpaceComesBack() throws {
        let disk = try SmallFilesystem(size: "1m")
        defer { disk.unmount() }
        var later: Appended?
        do {
            let (spool, _) = try Spool.open(directory: disk.spool, maxSize: 1 << 30)
            let (appended, error) = try fill(spool, size: 2000)
            #expect(error.code == .noSpace)
            let full = spool.sizeBytes
            // One record per chunk, far more than the slack at the end of the file's last page.
            for chunk in appended {
                let outcome = spool.markDelivered([chunk.position.chunkID])
                #expect(outcome.unwrittenChunks == 0, "\(outcome)")
            }
            let statistics = spool.statistics
            #expect(statistics.unwrittenMarks == 0)
            #expect(statistics.liveBytes == 0)
            #expect(statistics.fileBytes < full / 10, "the delivered active segment was reclaimed: \(statistics)")
            // The space is back without a restart: the reserve is made whole again and rows are taken.
            later = try append(spool, plainKey, "after the disk was full")
            #expect(spool.statistics.reserveBytes == spool.statistics.reserveTarget)
            spool.close()
        }
        // No delivered chunk comes back.
        let (spool, recovery) = try Spool.open(directory: disk.spool, maxSize: 1 << 30)
        defer { spool.close() }
        #expect(recovery.chunks.map(\.id) == [later!.position.chunkID])
    }

    @Test func startingOnAFullDiskReplaysDeliversAndReclaims() throws {
        let disk = try SmallFilesystem(size: "1m")
        defer { disk.unmount() }
        var appended: [Appended] = []
        do {
            let (spool, _) = try Spool.open(directory: disk.spool, maxSize: 1 << 30)
            appended = try fill(spool, size: 2500).0
            spool.close()
        }
        disk.fillUp()
        // Today's spool needed a new segment header before it could replay anything.
        let (spool, recovery) = try Spool.open(directory: disk.spool, maxSize: 1 << 30)
        defer { spool.close() }
        #expect(recovery.corruptions.isEmpty)
        expectSame(recovery.chunks, appended, in: spool)
        for chunk in recovery.chunks {
            #expect(spool.markDelivered([chunk.id]).unwrittenChunks == 0)
        }
        #expect(spool.statistics.fileBytes < 64 << 10, "\(spool.statistics)")
        // The filler still takes the rest of the disk, but the reclaimed space takes new rows.
        let next = try append(spool, plainKey, "after replay")
        spool.close()
        let (again, second) = try Spool.open(directory: disk.spool, maxSize: 1 << 30)
        defer { again.close() }
        #expect(second.chunks.map(\.id) == [next.position.chunkID])
    }

    @Test func withoutAReserveMarksWaitInMemoryUntilThereIsRoom() throws {
        let disk = try SmallFilesystem(size: "1m")
        defer { disk.unmount() }
        var appended: [Appended] = []
        do {
            let (spool, _) = try Spool.open(directory: disk.spool, maxSize: 1 << 30)
            appended = try fill(spool, size: 2500).0
            spool.close()
        }
        // A spool written before there was a reserve, on a disk that is full to the last byte.
        try FileManager.default.removeItem(atPath: disk.spool + "/" + Spool.reserveFileName)
        disk.fillUp()
        let (spool, recovery) = try Spool.open(directory: disk.spool, maxSize: 1 << 30)
        defer { spool.close() }
        expectSame(recovery.chunks, appended, in: spool)
        var unwritten = 0
        for chunk in recovery.chunks {
            unwritten = spool.markDelivered([chunk.id]).unwrittenChunks
        }
        #expect(unwritten > 0, "some marks found no room")
        #expect(spool.statistics.unwrittenMarks == unwritten)
        #expect(spool.statistics.counters.markFailures > 0)
        #expect(throws: SpoolError.self) { try append(spool, plainKey, "no room") }
        // Room again: the retry writes every mark and the spool reclaims its files.
        disk.removeFiller()
        #expect(spool.retryUnwrittenMarks().unwrittenChunks == 0)
        #expect(spool.statistics.fileBytes < 64 << 10, "\(spool.statistics)")
        let next = try append(spool, plainKey, "after the retry")
        spool.close()
        let (again, second) = try Spool.open(directory: disk.spool, maxSize: 1 << 30)
        defer { again.close() }
        #expect(second.chunks.map(\.id) == [next.position.chunkID], "no delivered chunk is replayed")
    }

    @Test func aMarkThatFailedIsWrittenAtClose() throws {
        let disk = try SmallFilesystem(size: "1m")
        defer { disk.unmount() }
        var appended: [Appended] = []
        do {
            // Something else holds 128 KiB of the disk while the spool fills the rest.
            disk.fillUp(bytes: 128 << 10)
            let (spool, _) = try Spool.open(directory: disk.spool, maxSize: 1 << 30, reserve: 0)
            appended = try fill(spool, size: 2500).0
            disk.fillUp()
            var unwritten = 0
            for chunk in appended.dropLast() { unwritten = spool.markDelivered([chunk.position.chunkID]).unwrittenChunks }
            #expect(unwritten > 0)
            disk.removeFiller()
            spool.close()
        }
        let (spool, recovery) = try Spool.open(directory: disk.spool, maxSize: 1 << 30)
        defer { spool.close() }
        #expect(recovery.chunks.map(\.id) == [appended.last!.position.chunkID])
    }
}

@Suite("Spool max_size")
struct SpoolMaxSizeTests {
    @Test func maxSizeCountsOnlyUndeliveredRowsAndARefusalWritesNothing() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let (spool, _) = try Spool.open(directory: directory.spool, maxSize: 20_000)
        defer { spool.close() }
        var ids: [UInt64] = []
        var refusal: SpoolError?
        for index in 0..<100 {
            do {
                ids.append(try append(spool, plainKey, pseudoRandomBytes(1000, seed: UInt64(index + 1))).position.chunkID)
            } catch let error as SpoolError {
                refusal = error
                break
            }
        }
        #expect(refusal?.code == .full)
        let before = spool.sizeBytes
        #expect(throws: SpoolError.self) { try append(spool, plainKey, pseudoRandomBytes(1000, seed: 7)) }
        #expect(spool.sizeBytes == before, "a refused chunk writes nothing")
        #expect(spool.undeliveredChunks == ids.count)
        #expect(spool.statistics.counters.refusedMaxSize == 2)

        spool.markDelivered(ids)
        #expect(spool.statistics.liveBytes == 0)
        // Delivered data no longer counts, whether or not its file is gone yet.
        for index in 0..<ids.count {
            try append(spool, plainKey, pseudoRandomBytes(1000, seed: UInt64(200 + index)))
        }
    }
}

struct TestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A tmpfs of its own, mounted for one test and unmounted by `unmount()`: a disk that really fills up.
struct SmallFilesystem {
    let path: String
    var spool: String { path + "/spool" }
    var filler: String { path + "/filler" }

    init(size: String) throws {
        let directory = try TemporaryDirectory()
        path = directory.path
        let mounted = "size=\(size),mode=0700".withCString { mount("tmpfs", path, "tmpfs", 0, $0) }
        guard mounted == 0 else {
            let code = errno
            directory.remove()
            throw TestError("mount -t tmpfs -o size=\(size) tmpfs \(path): \(String(cString: strerror(code)))")
        }
    }

    func unmount() {
        _ = umount2(path, Int32(MNT_DETACH))
        _ = rmdir(path)
    }

    /// Grows the filler file by `bytes`, or until the disk refuses even one more byte.
    func fillUp(bytes limit: Int = .max) {
        let descriptor = open(filler, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        guard descriptor >= 0 else { return }
        defer { close(descriptor) }
        var written = 0
        for blockSize in [65536, 4096, 512, 1] {
            let block = [UInt8](repeating: 0x55, count: blockSize)
            while written + blockSize <= limit,
                block.withUnsafeBytes({ write(descriptor, $0.baseAddress, blockSize) }) == blockSize
            {
                written += blockSize
            }
        }
    }

    func removeFiller() { _ = unlink(filler) }

    static let canMount: Bool = {
        guard let probe = try? SmallFilesystem(size: "64k") else { return false }
        probe.unmount()
        return true
    }()

    static let whyNot: Comment = "needs to mount a tmpfs (root, or CAP_SYS_ADMIN) to fill a disk for real"
}
