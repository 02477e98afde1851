/// Vectorised byte searches for the row scanners' hot loops.
///
/// Each function looks at 16 bytes at a time with SIMD compares and finishes the tail byte by byte; they return
/// `end` when nothing matches. Callers guarantee `0 <= from` and `end <=` the buffer size.
///
/// Written so that the optimiser emits plain SSE2 (pcmpeqb/por): compare vectors with vectors, never with a scalar
/// (the scalar-broadcast operators lower to per-lane loops), and test the mask through its two 64-bit halves
/// rather than `any(_:)`, which is not always inlined.
enum ByteSearch {
    typealias Block = SIMD16<UInt8>
    typealias Mask = SIMDMask<Block.MaskStorage>

    @inline(__always)
    static func load(_ p: UnsafePointer<UInt8>, _ i: Int) -> Block {
        UnsafeRawPointer(p + i).loadUnaligned(as: Block.self)
    }

    @inline(__always)
    static func splat(_ c: UInt8) -> Block { Block(repeating: c) }

    /// The offset of the first true lane, or nil when no lane is true.
    @inline(__always)
    static func firstLane(_ mask: Mask) -> Int? {
        let words = unsafeBitCast(mask, to: SIMD2<UInt64>.self)
        if words[0] != 0 { return words[0].trailingZeroBitCount &>> 3 }
        if words[1] != 0 { return 8 &+ (words[1].trailingZeroBitCount &>> 3) }
        return nil
    }

    /// First index of `a` in `p[from..<end]`.
    @inline(__always)
    static func find(_ a: UInt8, in p: UnsafePointer<UInt8>, from: Int, end: Int) -> Int {
        var i = from
        let va = splat(a)
        while i &+ 16 <= end {
            if let lane = firstLane(load(p, i) .== va) { return i &+ lane }
            i &+= 16
        }
        while i < end {
            if p[i] == a { return i }
            i &+= 1
        }
        return end
    }

    /// First index of `a` or `b` in `p[from..<end]`.
    @inline(__always)
    static func find(_ a: UInt8, _ b: UInt8, in p: UnsafePointer<UInt8>, from: Int, end: Int) -> Int {
        var i = from
        let va = splat(a)
        let vb = splat(b)
        while i &+ 16 <= end {
            let v = load(p, i)
            if let lane = firstLane((v .== va) .| (v .== vb)) { return i &+ lane }
            i &+= 16
        }
        while i < end {
            let c = p[i]
            if c == a || c == b { return i }
            i &+= 1
        }
        return end
    }

    /// First index of a JSON structural byte: `"` `{` `}` `[` `]`.
    @inline(__always)
    static func findJSONStructural(in p: UnsafePointer<UInt8>, from: Int, end: Int) -> Int {
        var i = from
        // `[` 0x5B and `]` 0x5D become `{` 0x7B and `}` 0x7D when bit 0x20 is set; no other byte does.
        let bit20 = splat(0x20)
        let quote = splat(0x22)
        let open = splat(0x7B)
        let close = splat(0x7D)
        while i &+ 16 <= end {
            let v = load(p, i)
            let folded = v | bit20
            if let lane = firstLane((v .== quote) .| (folded .== open) .| (folded .== close)) { return i &+ lane }
            i &+= 16
        }
        while i < end {
            if isJSONStructural(p[i]) { return i }
            i &+= 1
        }
        return end
    }

    @inline(__always)
    static func isJSONStructural(_ c: UInt8) -> Bool {
        let folded = c | 0x20
        return c == 0x22 || folded == 0x7B || folded == 0x7D
    }

    /// First index of a byte that matters inside a Values tuple: quotes `'` `"` `` ` `` and brackets `()[]{}`.
    @inline(__always)
    static func findSQLStructural(in p: UnsafePointer<UInt8>, from: Int, end: Int) -> Int {
        var i = from
        let bit20 = splat(0x20)
        let low = splat(0xFE)
        let single = splat(0x27)
        let double = splat(0x22)
        let back = splat(0x60)
        let paren = splat(0x28) // `(` 0x28 and `)` 0x29 once the low bit is cleared
        let open = splat(0x7B)
        let close = splat(0x7D)
        while i &+ 16 <= end {
            let v = load(p, i)
            let folded = v | bit20
            let quotes = (v .== single) .| (v .== double) .| (v .== back)
            let brackets = ((v & low) .== paren) .| (folded .== open) .| (folded .== close)
            if let lane = firstLane(quotes .| brackets) { return i &+ lane }
            i &+= 16
        }
        while i < end {
            if isSQLStructural(p[i]) { return i }
            i &+= 1
        }
        return end
    }

    @inline(__always)
    static func isSQLStructural(_ c: UInt8) -> Bool {
        let folded = c | 0x20
        return c == 0x27 || c == 0x22 || c == 0x60 || (c & 0xFE) == 0x28 || folded == 0x7B || folded == 0x7D
    }
}
