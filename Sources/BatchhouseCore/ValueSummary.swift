/// Count, min, max, sum and quantiles of one numeric column within one window and group.
///
/// Small groups (most of them) keep their values, so their quantiles are exact and match ClickHouse's
/// `quantileExact`; a group that grows past `exactLimit` moves to a `QuantileDigest` (compression 200), so its
/// memory stays bounded whatever the traffic. Count, min, max and sum stay exact in both modes.
///
/// Non-finite values (NaN, ±inf) are ignored and not counted: one of them would turn the sum and mean into NaN.
public struct ValueSummary: Sendable, Hashable {
    private enum Storage: Sendable, Hashable {
        case exact([Double])
        case digest(QuantileDigest)
    }

    /// The most values kept exactly.
    public let exactLimit: Int
    private var storage: Storage = .exact([])
    public private(set) var count: Int = 0
    public private(set) var min: Double = .infinity
    public private(set) var max: Double = -.infinity
    /// Neumaier-compensated: `sum` is the running total plus the rounding error it has lost so far.
    public private(set) var sum: Double = 0
    private var runningSum: Double = 0
    private var compensation: Double = 0

    public init(exactLimit: Int = 1_000) {
        self.exactLimit = Swift.max(exactLimit, 0)
    }

    /// sum / count; NaN when empty.
    public var mean: Double { count == 0 ? .nan : sum / Double(count) }

    /// Whether quantiles are exact (values kept) rather than estimated by the digest.
    public var isExact: Bool {
        if case .exact = storage { return true }
        return false
    }

    /// Memory held: the struct plus the kept values or the digest's arrays.
    public var approximateBytes: Int {
        switch storage {
        case .exact(let values):
            return MemoryLayout<Self>.size + 8 * values.capacity
        case .digest(let digest):
            return MemoryLayout<Self>.size + digest.approximateBytes - MemoryLayout<QuantileDigest>.size
        }
    }

    public mutating func add(_ value: Double) {
        guard value.isFinite else { return }
        count += 1
        if value < min { min = value }
        if value > max { max = value }
        accumulate(value)
        switch storage {
        case .exact(var values):
            storage = .exact([])  // drop the enum's reference so the append does not copy
            if count <= exactLimit {
                values.append(value)
                storage = .exact(values)
            } else {
                var digest = Self.digest(of: values)
                digest.add(value)
                storage = .digest(digest)
            }
        case .digest(var digest):
            storage = .exact([])
            digest.add(value)
            storage = .digest(digest)
        }
    }

    /// Exact plus exact stays exact while the total fits in `exactLimit` (this summary's); otherwise a digest.
    public mutating func merge(_ other: ValueSummary) {
        guard other.count > 0 else { return }
        let merged: Storage
        switch (storage, other.storage) {
        case (.exact(let mine), .exact(let theirs)):
            merged = count + other.count <= exactLimit ? .exact(mine + theirs) : .digest(Self.digest(of: mine + theirs))
        case (.exact(let mine), .digest(let theirs)):
            var digest = Self.digest(of: mine)
            digest.merge(theirs)
            merged = .digest(digest)
        case (.digest(var digest), .exact(let theirs)):
            for value in theirs { digest.add(value) }
            merged = .digest(digest)
        case (.digest(var digest), .digest(let theirs)):
            digest.merge(theirs)
            merged = .digest(digest)
        }
        storage = merged
        count += other.count
        if other.min < min { min = other.min }
        if other.max > max { max = other.max }
        accumulate(other.runningSum)
        accumulate(other.compensation)
    }

    /// The value at each level, sorting once. Exact mode mirrors ClickHouse's `quantileExact`: for a level below 1
    /// the element at index `Int(level × count)` of the sorted values (clamped to 0...count−1), for a level of 1 or
    /// more the max. Digest mode: the digest's estimate. NaN when empty or for a NaN level.
    public func quantiles(_ levels: [Double]) -> [Double] {
        guard count > 0 else { return levels.map { _ in .nan } }
        switch storage {
        case .exact(let values):
            let sorted = values.sorted()
            return levels.map { level in
                if level.isNaN { return .nan }
                if level >= 1 { return max }
                let index = level <= 0 ? 0 : Int(level * Double(sorted.count))
                return sorted[Swift.min(index, sorted.count - 1)]
            }
        case .digest(let digest):
            return digest.quantiles(levels)
        }
    }

    private static func digest(of values: [Double]) -> QuantileDigest {
        var digest = QuantileDigest(compression: 200)
        for value in values { digest.add(value) }
        return digest
    }

    /// One Neumaier step: the low-order bits lost by `runningSum + value` go into `compensation`.
    private mutating func accumulate(_ value: Double) {
        let total = runningSum + value
        if Swift.abs(runningSum) >= Swift.abs(value) {
            compensation += (runningSum - total) + value
        } else {
            compensation += (value - total) + runningSum
        }
        runningSum = total
        sum = runningSum + compensation
    }
}
