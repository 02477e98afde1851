/// CityHash128 exactly as CityHash v1.0.2 computes it, the version ClickHouse vendors (contrib/cityhash102) and
/// checksums its compressed blocks with. Later CityHash releases (1.0.3, 1.1) changed the function, so no other
/// implementation will do: 1.1 rewrote the short-input path (HashLen0to16) and the tail loop of the long one.
///
/// The result's `low` is the first and `high` the second half of CityHash's `uint128` pair; ClickHouse stores a
/// checksum as that pair's memory on a little-endian machine: `low` in bytes 0..<8, `high` in 8..<16, each
/// little-endian (``bytes``).
public struct CityHash128: Sendable, Hashable, CustomStringConvertible {
    public var low: UInt64
    public var high: UInt64

    public init(low: UInt64, high: UInt64) {
        self.low = low
        self.high = high
    }

    /// The 16 bytes of a compressed block's checksum as ClickHouse writes them.
    public var bytes: [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: low >> (8 * $0)) } + (0..<8).map { UInt8(truncatingIfNeeded: high >> (8 * $0)) }
    }

    /// Reads a checksum as ClickHouse stores it (the inverse of ``bytes``); `bytes` has at least 16 bytes.
    public init(checksumBytes bytes: some Collection<UInt8>) {
        var low: UInt64 = 0
        var high: UInt64 = 0
        for (index, byte) in bytes.prefix(16).enumerated() {
            if index < 8 { low |= UInt64(byte) << (8 * index) } else { high |= UInt64(byte) << (8 * (index - 8)) }
        }
        self.init(low: low, high: high)
    }

    /// Both halves in hex, `low` first, as ClickHouse prints a checksum in "Checksum doesn't match".
    public var description: String { Self.hex(low) + Self.hex(high) }

    private static func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    public static func hash(_ bytes: UnsafeRawBufferPointer) -> CityHash128 {
        var input = Input(bytes: bytes, offset: 0)
        let len = bytes.count
        if len >= 16 {
            let seed = (input.fetch64(0) ^ k3, input.fetch64(8))
            input.offset = 16
            return hashWithSeed(input, len - 16, seed)
        } else if len >= 8 {
            let seed = (input.fetch64(0) ^ (UInt64(len) &* k0), input.fetch64(len - 8) ^ k1)
            return hashWithSeed(input, 0, seed)
        } else {
            return hashWithSeed(input, len, (k0, k1))
        }
    }

    public static func hash(_ bytes: [UInt8]) -> CityHash128 {
        bytes.withUnsafeBytes { hash($0) }
    }

    // MARK: CityHash v1.0.2

    private static let k0: UInt64 = 0xc3a5_c85c_97cb_3127
    private static let k1: UInt64 = 0xb492_b66f_be98_f273
    private static let k2: UInt64 = 0x9ae1_6a3b_2f90_404f
    private static let k3: UInt64 = 0xc949_d7c7_509e_6557

    /// The input from `offset` on; fetches are little-endian and unaligned, as on the x86 ClickHouse runs on.
    private struct Input {
        let bytes: UnsafeRawBufferPointer
        var offset: Int

        func fetch64(_ at: Int) -> UInt64 {
            UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + at, as: UInt64.self))
        }

        func fetch32(_ at: Int) -> UInt64 {
            UInt64(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + at, as: UInt32.self)))
        }

        func byte(_ at: Int) -> UInt64 { UInt64(bytes[offset + at]) }
    }

    private static func rotate(_ value: UInt64, _ shift: UInt64) -> UInt64 {
        shift == 0 ? value : (value >> shift) | (value << (64 - shift))
    }

    private static func rotateByAtLeast1(_ value: UInt64, _ shift: UInt64) -> UInt64 {
        (value >> shift) | (value << ((64 &- shift) & 63))
    }

    private static func shiftMix(_ value: UInt64) -> UInt64 { value ^ (value >> 47) }

    private static func hash128to64(_ low: UInt64, _ high: UInt64) -> UInt64 {
        let kMul: UInt64 = 0x9ddf_ea08_eb38_2d69
        var a = (low ^ high) &* kMul
        a ^= a >> 47
        var b = (high ^ a) &* kMul
        b ^= b >> 47
        return b &* kMul
    }

    private static func hashLen16(_ u: UInt64, _ v: UInt64) -> UInt64 { hash128to64(u, v) }

    private static func hashLen0to16(_ s: Input, _ len: Int) -> UInt64 {
        if len > 8 {
            let a = s.fetch64(0)
            let b = s.fetch64(len - 8)
            return hashLen16(a, rotateByAtLeast1(b &+ UInt64(len), UInt64(len))) ^ b
        }
        if len >= 4 {
            let a = s.fetch32(0)
            return hashLen16(UInt64(len) &+ (a << 3), s.fetch32(len - 4))
        }
        if len > 0 {
            let y = UInt64(UInt32(truncatingIfNeeded: s.byte(0) + (s.byte(len >> 1) << 8)))
            let z = UInt64(UInt32(truncatingIfNeeded: UInt64(len) + (s.byte(len - 1) << 2)))
            return shiftMix((y &* k2) ^ (z &* k3)) &* k2
        }
        return k2
    }

    private static func weakHashLen32WithSeeds(
        _ w: UInt64, _ x: UInt64, _ y: UInt64, _ z: UInt64, _ a: UInt64, _ b: UInt64
    ) -> (UInt64, UInt64) {
        var a = a &+ w
        var b = rotate(b &+ a &+ z, 21)
        let c = a
        a = a &+ x
        a = a &+ y
        b = b &+ rotate(a, 44)
        return (a &+ z, b &+ c)
    }

    private static func weakHashLen32WithSeeds(_ s: Input, _ at: Int, _ a: UInt64, _ b: UInt64) -> (UInt64, UInt64) {
        weakHashLen32WithSeeds(s.fetch64(at), s.fetch64(at + 8), s.fetch64(at + 16), s.fetch64(at + 24), a, b)
    }

    private static func cityMurmur(_ input: Input, _ len: Int, _ seed: (UInt64, UInt64)) -> CityHash128 {
        var s = input
        var a = seed.0
        var b = seed.1
        var c: UInt64
        var d: UInt64
        var l = len - 16
        if l <= 0 {
            a = shiftMix(a &* k1) &* k1
            c = b &* k1 &+ hashLen0to16(s, len)
            d = shiftMix(a &+ (len >= 8 ? s.fetch64(0) : c))
        } else {
            c = hashLen16(s.fetch64(len - 8) &+ k1, a)
            d = hashLen16(b &+ UInt64(len), c &+ s.fetch64(len - 16))
            a = a &+ d
            repeat {
                a ^= shiftMix(s.fetch64(0) &* k1) &* k1
                a = a &* k1
                b ^= a
                c ^= shiftMix(s.fetch64(8) &* k1) &* k1
                c = c &* k1
                d ^= c
                s.offset += 16
                l -= 16
            } while l > 0
        }
        a = hashLen16(a, c)
        b = hashLen16(d, b)
        return CityHash128(low: a ^ b, high: hashLen16(b, a))
    }

    private static func hashWithSeed(_ input: Input, _ length: Int, _ seed: (UInt64, UInt64)) -> CityHash128 {
        if length < 128 { return cityMurmur(input, length, seed) }
        var s = input
        var len = length
        var v: (UInt64, UInt64)
        var w: (UInt64, UInt64)
        var x = seed.0
        var y = seed.1
        var z = UInt64(len) &* k1
        v.0 = rotate(y ^ k1, 49) &* k1 &+ s.fetch64(0)
        v.1 = rotate(v.0, 42) &* k1 &+ s.fetch64(8)
        w.0 = rotate(y &+ z, 35) &* k1 &+ x
        w.1 = rotate(x &+ s.fetch64(88), 53) &* k1
        repeat {
            for _ in 0..<2 {
                x = rotate(x &+ y &+ v.0 &+ s.fetch64(16), 37) &* k1
                y = rotate(y &+ v.1 &+ s.fetch64(48), 42) &* k1
                x ^= w.1
                y ^= v.0
                z = rotate(z ^ w.0, 33)
                v = weakHashLen32WithSeeds(s, 0, v.1 &* k1, x &+ w.0)
                w = weakHashLen32WithSeeds(s, 32, z &+ w.1, y)
                swap(&z, &x)
                s.offset += 64
            }
            len -= 128
        } while len >= 128
        y = y &+ rotate(w.0, 37) &* k0 &+ z
        x = x &+ rotate(v.0 &+ z, 49) &* k0
        var tailDone = 0
        while tailDone < len {
            tailDone += 32
            y = rotate(y &- x, 42) &* k0 &+ v.1
            w.0 = w.0 &+ s.fetch64(len - tailDone + 16)
            x = rotate(x, 49) &* k0 &+ w.0
            w.0 = w.0 &+ v.0
            v = weakHashLen32WithSeeds(s, len - tailDone, v.0, v.1)
        }
        x = hashLen16(x, v.0)
        y = hashLen16(y, w.0)
        return CityHash128(low: hashLen16(x &+ v.1, w.1) &+ y, high: hashLen16(x &+ w.1, y &+ v.1))
    }
}
