import Testing

@testable import BatchhouseCore

/// CityHash128 v1.0.2 against ClickHouse's own: `low`/`high` are the halves of the checksum ClickHouse writes
/// before a compressed block. Vectors from clickhouse-cityhash (the Python binding of contrib/cityhash102 that
/// clickhouse-driver uses) over bytes `(i * 31 + 7) % 256`, and one block an 18.16 server wrote.
@Suite("CityHash128")
struct CityHash128Tests {
    static let vectors: [(length: Int, low: UInt64, high: UInt64)] = [
        (0, 0x3df09dfc64c09a2b, 0x3cb540c392e51e29),
        (1, 0x8be55b379cce0e40, 0x05ab4744478b1cba),
        (2, 0x701c733aee3382d4, 0xba4eae41e0e6dc7a),
        (3, 0xe407deda7bb0f294, 0x0a3a0d146e27f1bd),
        (4, 0x905dcb2063ae124f, 0x57fd5b5954a593c5),
        (7, 0xd7ba2459ab7c2913, 0x53dd430b513ca460),
        (8, 0xf5a4ca47208136a0, 0x3dd4575b3d46e5ab),
        (9, 0x338434c54a2565e1, 0x1001bbb07bd33771),
        (15, 0xd956065c63d9ab15, 0x9623caadd0037b73),
        (16, 0x3f3a3275564b7f48, 0xb48a2a7a16bac60b),
        (17, 0xaee34bf68bb2e0a2, 0xe0d6910555f00b87),
        (31, 0x9b7f93e5ecfaed63, 0xd646e40154fb0d6b),
        (32, 0x250e8c8007bfad61, 0xe42486b6776ae8db),
        (33, 0x4e495b057af3b520, 0xabae1d24f18410b5),
        (64, 0xe225cf33b373dc02, 0x8d252ce5152d6d96),
        (100, 0x49c189a397bdadee, 0x0e8155bdfd58d3d3),
        (127, 0xc244dc8a06ce8c41, 0xf30e2cf6b33629a6),
        (128, 0xba863c0c70f32346, 0x24b156fc6f3c170a),
        (129, 0x238598064c8ee2f1, 0x6c89b9263ef7410b),
        (159, 0x153212af41a165d1, 0x67f31b763b6e0566),
        (160, 0x5cb38c23f218820b, 0x28eec84c96793879),
        (200, 0x67b5c9a4f885f24b, 0xb4a0f54a58082487),
        (255, 0xc87d0f456f6a514b, 0xf35b13ec94eb8a52),
        (256, 0xb1cfa883f958dcfa, 0x39f0dfb3be182292),
        (257, 0xd4cb7b11f9ef2055, 0xae5243f6dbcd4c28),
        (300, 0x0ad7d1f77d7e62c5, 0x0702d3372375ccf2),
        (1000, 0x597ff4957972ad7e, 0x7f39a4abd7c010e1),
        (4096, 0x1bd11ecfd108678f, 0x723d5024904233bb),
    ]

    @Test func matchesClickHousesCityHash102AtEveryLengthClass() {
        for vector in Self.vectors {
            let bytes = (0..<vector.length).map { UInt8(($0 * 31 + 7) % 256) }
            let hash = CityHash128.hash(bytes)
            #expect(hash == CityHash128(low: vector.low, high: vector.high), "length \(vector.length)")
        }
    }

    @Test func checksumBytesAreLowThenHighLittleEndian() {
        let hash = CityHash128(low: 0x0102_0304_0506_0708, high: 0x1112_1314_1516_1718)
        #expect(hash.bytes == [8, 7, 6, 5, 4, 3, 2, 1, 0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11])
        #expect(CityHash128(checksumBytes: hash.bytes) == hash)
        #expect(hash.description == "01020304050607081112131415161718")
    }

    @Test func aBlockClickHouse1816WroteHasItsChecksum() {
        // `compress=1` answer of an 18.16 server: checksum, then method 0x82, sizes and LZ4 data.
        let hex =
            "7202055a681f85aa8e6fff61353adda3825d00000065000000f028436f64653a2034362c20652e646973706c617954657874"
            + "2829203d2044423a3a457863657074696f6e3a20556e6b6e6f776e2066756e63120074206e6f737563680f000042003b77"
            + "68613b005074696f6e0a"
        var bytes: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            bytes.append(UInt8(hex[index..<next], radix: 16)!)
            index = next
        }
        #expect(CityHash128.hash(Array(bytes[16...])).bytes == Array(bytes[0..<16]))
        #expect(CityHash128(checksumBytes: bytes[0..<16]).low == 0xaa85_1f68_5a05_0272)
    }
}
