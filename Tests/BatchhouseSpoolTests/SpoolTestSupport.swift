import BatchhouseCore
import Foundation
import Testing

@testable import BatchhouseSpool

/// A fresh directory under the system temp dir (or `parent`), removed by `remove()`.
struct TemporaryDirectory {
    let path: String

    init(under parent: String = NSTemporaryDirectory()) throws {
        var template = Array((parent + "/batchhouse-spool-XXXXXX").utf8CString)
        let created = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        try #require(created != nil)
        path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The spool's own directory, which the spool creates itself.
    var spool: String { path + "/spool" }

    func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }
}

func segmentFiles(_ directory: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
        .filter { $0.hasPrefix("segment-") }
        .sorted()
}

func fileSize(_ path: String) -> Int {
    ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? -1
}

func permissions(_ path: String) -> Int {
    var info = stat()
    guard stat(path, &info) == 0 else { return -1 }
    return Int(info.st_mode & 0o777)
}

let secretKey = BatchKey(
    identity: ClientIdentity(user: "alice", password: "s3cr3t-pa55"),
    database: "analytics",
    table: "events",
    columns: ["ts", "name", "value"],
    format: .tabSeparatedWithNames,
    header: Array("ts\tname\tvalue\n".utf8),
    settings: [Setting(name: "max_insert_block_size", value: "1000"), Setting(name: "async_insert", value: "0")]
)

let plainKey = BatchKey(
    identity: .anonymous,
    database: nil,
    table: "visits",
    columns: nil,
    format: .jsonEachRow,
    header: nil,
    settings: []
)

struct Appended {
    var position: SpoolPosition
    var key: BatchKey
    var rows: Int
    var endsWithNewline: Bool
    var data: [UInt8]
}

@discardableResult
func append(_ spool: Spool, _ key: BatchKey, _ text: String, rows: Int = 1, endsWithNewline: Bool = true) throws -> Appended {
    try append(spool, key, Array(text.utf8), rows: rows, endsWithNewline: endsWithNewline)
}

@discardableResult
func append(_ spool: Spool, _ key: BatchKey, _ data: [UInt8], rows: Int = 1, endsWithNewline: Bool = true) throws -> Appended {
    let position = try data.withUnsafeBytes { try spool.append(key: key, rows: rows, endsWithNewline: endsWithNewline, data: $0) }
    return Appended(position: position, key: key, rows: rows, endsWithNewline: endsWithNewline, data: data)
}

/// The recovered chunks are the appended ones, rows read back from the spool included.
func expectSame(
    _ recovered: [SpooledChunk], _ appended: [Appended], in spool: Spool, sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(recovered.map(\.id) == appended.map(\.position.chunkID), sourceLocation: sourceLocation)
    let read = spool.readChunks(recovered.map(\.id))
    #expect(read.unreadable.isEmpty, "\(read.unreadable)", sourceLocation: sourceLocation)
    for (chunk, original) in zip(recovered, appended) {
        #expect(chunk.key == original.key, sourceLocation: sourceLocation)
        #expect(chunk.key.identity.password == original.key.identity.password, sourceLocation: sourceLocation)
        #expect(chunk.rows == original.rows, sourceLocation: sourceLocation)
        #expect(chunk.endsWithNewline == original.endsWithNewline, sourceLocation: sourceLocation)
        #expect(chunk.dataLength == original.data.count, sourceLocation: sourceLocation)
        #expect(read.bodies[chunk.id]?.data == original.data, sourceLocation: sourceLocation)
        #expect(read.bodies[chunk.id]?.rows == original.rows, sourceLocation: sourceLocation)
        #expect(read.bodies[chunk.id]?.endsWithNewline == original.endsWithNewline, sourceLocation: sourceLocation)
    }
}

/// Overwrites bytes of a file in place.
func patch(_ path: String, at offset: Int, _ bytes: [UInt8]) throws {
    let handle = try #require(FileHandle(forUpdatingAtPath: path))
    defer { try? handle.close() }
    try handle.seek(toOffset: UInt64(offset))
    try handle.write(contentsOf: bytes)
}

func truncateFile(_ path: String, to size: Int) throws {
    let handle = try #require(FileHandle(forUpdatingAtPath: path))
    defer { try? handle.close() }
    try handle.truncate(atOffset: UInt64(size))
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
func pseudoRandomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed | 1
    return (0..<count).map { _ in
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return UInt8(truncatingIfNeeded: state)
    }
}
