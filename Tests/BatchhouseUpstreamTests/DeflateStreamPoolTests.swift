import NIOCore
import Testing

@testable import BatchhouseUpstream

/// A reset deflate stream must write exactly what a new one writes, or batches would change on the wire.
@Suite("DeflateStreamPool")
struct DeflateStreamPoolTests {
    /// Bodies of many sizes, around zlib's and the output loop's boundaries, with text, incompressible bytes,
    /// runs of one byte, and mixes of them.
    static func bodies(seed: UInt64) -> [[UInt8]] {
        var random = SplitMix64(seed: seed)
        var sizes = [0, 1, 2, 3, 100, 1000, 4095, 4096, 16_383, 16_384, 32_768, 65_535, 65_536, 65_537, 200_000, 1_100_000]
        sizes += (0..<300).map { _ in random.chance(0.8) ? random.below(4096) : random.below(300_000) }
        return sizes.map { size in
            let kind = random.below(4)
            var row = 0
            var bytes: [UInt8] = []
            bytes.reserveCapacity(size)
            while bytes.count < size {
                switch kind {
                case 0: bytes += Array("\(row)\tname \(row % 97)\t2024-01-0\(row % 9 + 1)\n".utf8)
                case 1: bytes.append(UInt8(truncatingIfNeeded: random.next()))
                case 2: bytes += [UInt8](repeating: UInt8(row % 3), count: 1 + random.below(500))
                default: bytes += random.chance(0.5) ? Array("INSERT row \(row)\n".utf8) : [UInt8(truncatingIfNeeded: random.next())]
                }
                row += 1
            }
            return Array(bytes.prefix(size))
        }
    }

    /// What the code did before the pool: a new stream for the body.
    static func fresh(_ body: [UInt8], _ coding: ContentCoding, level: Int32) -> [UInt8] {
        var output = ByteBuffer()
        let stream = ZStream(deflateLevel: level, windowBits: coding == .gzip ? 15 + 16 : 15)
        body.withUnsafeBytes { Zlib.deflate($0, with: stream, into: &output) }
        return Array(output.readableBytesView)
    }

    static func pooled(_ body: [UInt8], _ coding: ContentCoding, level: Int32, pool: DeflateStreamPool) -> [UInt8] {
        var output = ByteBuffer()
        body.withUnsafeBytes { Zlib.compress($0, as: coding, level: level, into: &output, pool: pool) }
        return Array(output.readableBytesView)
    }

    @Test("over 316 bodies, gzip and deflate, a reused stream writes the bytes of a new one, which decode back")
    func byteIdentical() throws {
        let pool = DeflateStreamPool()
        let bodies = Self.bodies(seed: 0xDEF1_A7E5)
        var compressions = 0
        for (index, body) in bodies.enumerated() {
            // Mostly the production level; now and then others, so a stream must not serve another level.
            let level: Int32 = index % 7 == 3 ? 6 : (index % 11 == 5 ? 9 : 1)
            for coding in [ContentCoding.gzip, .deflate] {
                let reused = Self.pooled(body, coding, level: level, pool: pool)
                compressions += 1
                let expected = Self.fresh(body, coding, level: level)
                // Compared outside #expect, which would print both arrays (a megabyte each) on a failure.
                let firstDifference = zip(reused, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(reused.count, expected.count)
                let identical = reused == expected
                #expect(
                    identical,
                    "body \(index) (\(body.count) bytes), \(coding), level \(level): \(reused.count) bytes against \(expected.count), first difference at \(firstDifference)"
                )
                let decoded = try reused.withUnsafeBytes { try Zlib.decompress($0, as: coding, limit: body.count) }
                let roundTrips = decoded == body
                #expect(roundTrips, "body \(index), \(coding)")
            }
        }
        // One stream for each of the six level and coding pairs, reused for every other body.
        let counts = pool.counts
        #expect(counts.created == 6, "\(counts)")
        #expect(counts.reused == compressions - 6, "\(counts)")
        #expect(counts.idle == 6, "\(counts)")
    }

    @Test("the shared pool behind Zlib.compress writes the bytes of a new stream")
    func sharedPool() {
        for body in Self.bodies(seed: 7).prefix(40) {
            for coding in [ContentCoding.gzip, .deflate] {
                let identical = body.withUnsafeBytes { Zlib.compress($0, as: coding) } == Self.fresh(body, coding, level: 1)
                #expect(identical, "\(body.count) bytes, \(coding)")
            }
        }
    }

    @Test("8 tasks compressing through one pool of 4: same bytes, at most 4 idle streams")
    func concurrent() async throws {
        let pool = DeflateStreamPool(capacity: 4)
        let bodies = Self.bodies(seed: 11).filter { $0.count < 100_000 }.prefix(120)
        let expected = bodies.map { Self.fresh($0, .gzip, level: 1) }
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    for (index, body) in zip(bodies.indices, bodies) where (index + worker) % 2 == 0 {
                        let identical = Self.pooled(body, .gzip, level: 1, pool: pool) == expected[index - bodies.startIndex]
                        #expect(identical, "body \(index) (\(body.count) bytes)")
                    }
                }
            }
        }
        let counts = pool.counts
        #expect(counts.idle <= 4, "\(counts)")
        let total = (0..<8).reduce(0) { sum, worker in sum + bodies.indices.filter { ($0 + worker) % 2 == 0 }.count }
        #expect(counts.created + counts.reused == total, "\(counts)")
    }

    @Test("streams beyond the capacity are freed when given back")
    func capacity() {
        let pool = DeflateStreamPool(capacity: 2)
        // Three at once (nested), so three are made; only two are kept.
        pool.withStream(level: 1, windowBits: 31) { _ in
            pool.withStream(level: 1, windowBits: 31) { _ in
                pool.withStream(level: 1, windowBits: 31) { _ in }
            }
        }
        #expect(pool.counts == DeflateStreamPool.Counts(created: 3, reused: 0, idle: 2))
        pool.withStream(level: 1, windowBits: 31) { _ in }
        #expect(pool.counts == DeflateStreamPool.Counts(created: 3, reused: 1, idle: 2))
    }
}
