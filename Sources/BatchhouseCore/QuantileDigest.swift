#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A mergeable quantile sketch: Dunning's merging t-digest with the k1 (arcsine) scale function,
/// `k(q) = δ/(2π) · asin(2q − 1)`, where δ is the compression.
///
/// Why k1: it keeps clusters small at both tails (where p99 and p999 live) and, unlike k2/k3, needs no
/// normalizer that depends on the count, so a digest's bound does not drift as it grows or merges.
/// A centroid grows only while it spans at most one unit of k, so there are at most about δ centroids;
/// incoming values wait in a buffer of at most 2δ and are merged in when it fills, in alternating directions
/// (Dunning's remedy for the bias a one-way merge leaves). The buffer is smaller than the reference's 5δ: it is most
/// of a digest's memory and the accuracy hardly changes. The exact min and max are kept so the ends are exact.
///
/// Non-finite values and non-positive or non-finite weights are ignored: one NaN would poison every mean.
/// Equality compares the representation (the unmerged buffer included), not only the distribution.
public struct QuantileDigest: Sendable, Hashable {
    /// δ: larger is more accurate and bigger.
    public let compression: Double
    private struct Centroid: Sendable, Hashable {
        var mean: Double
        var weight: Double
    }
    /// Sorted by mean.
    private var centroids: [Centroid] = []
    /// Values not yet merged into the centroids, in arrival order.
    private var buffer: [Centroid] = []
    private let bufferLimit: Int
    private var centroidWeight: Double = 0
    private var bufferWeight: Double = 0
    /// Exact extremes of everything added (+inf / -inf when empty).
    private(set) var min: Double = .infinity
    private(set) var max: Double = -.infinity
    /// Flips on every merge pass (alternating direction).
    private var mergeDescending = false

    /// `compression` is clamped to at least 10: below that the scale function leaves too few clusters to interpolate.
    public init(compression: Double = 200) {
        let delta = compression.isFinite ? Swift.max(compression, 10) : 200
        self.compression = delta
        bufferLimit = Int(2 * delta)
    }

    /// Total weight added (the number of values when every weight is 1).
    public var count: Double { centroidWeight + bufferWeight }

    /// Centroids once the buffer is merged in; the digest's size in the long run.
    public var centroidCount: Int {
        var copy = self
        copy.compress()
        return copy.centroids.count
    }

    /// Memory held: the struct, the centroids and the buffer (by capacity, as the arrays keep it).
    public var approximateBytes: Int {
        MemoryLayout<Self>.size + MemoryLayout<Centroid>.stride * (centroids.capacity + buffer.capacity)
    }

    public mutating func add(_ value: Double, weight: Double = 1) {
        guard value.isFinite, weight.isFinite, weight > 0 else { return }
        if value < min { min = value }
        if value > max { max = value }
        appendBuffered(Centroid(mean: value, weight: weight))
    }

    /// Adds `other`'s centroids as weighted points: the result obeys the same size bound as a digest built directly.
    public mutating func merge(_ other: QuantileDigest) {
        guard other.count > 0 else { return }
        if other.min < min { min = other.min }
        if other.max > max { max = other.max }
        for centroid in other.centroids { appendBuffered(centroid) }
        for centroid in other.buffer { appendBuffered(centroid) }
        compress()
    }

    private mutating func appendBuffered(_ centroid: Centroid) {
        if buffer.capacity == 0 { buffer.reserveCapacity(bufferLimit) }  // not the next power of two
        buffer.append(centroid)
        bufferWeight += centroid.weight
        if buffer.count >= bufferLimit { compress() }
    }

    /// Merges the buffer into the centroids: one sorted pass, greedy, each cluster at most one unit of k wide.
    mutating func compress() {
        guard !buffer.isEmpty else { return }
        Self.sortByMean(&buffer)
        // Both runs are sorted: one linear merge gives every point in order.
        var sorted: [Centroid] = []
        sorted.reserveCapacity(centroids.count + buffer.count)
        var left = 0
        var right = 0
        while left < centroids.count || right < buffer.count {
            if right == buffer.count || (left < centroids.count && centroids[left].mean <= buffer[right].mean) {
                sorted.append(centroids[left])
                left += 1
            } else {
                sorted.append(buffer[right])
                right += 1
            }
        }
        buffer.removeAll(keepingCapacity: true)
        let total = centroidWeight + bufferWeight
        bufferWeight = 0
        centroidWeight = total

        let descending = mergeDescending
        mergeDescending.toggle()
        var merged: [Centroid] = []
        merged.reserveCapacity(Int(compression) + 8)
        var weightSoFar = 0.0  // weight of the closed clusters
        var limit = total * inverseScale(scale(0) + 1)
        var current = sorted[descending ? sorted.count - 1 : 0]
        for position in 1..<sorted.count {
            let next = sorted[descending ? sorted.count - 1 - position : position]
            if weightSoFar + current.weight + next.weight <= limit {
                current.weight += next.weight
                // Incremental weighted mean: stays between the two means, no large intermediate sums.
                current.mean += (next.mean - current.mean) * next.weight / current.weight
            } else {
                merged.append(current)
                weightSoFar += current.weight
                limit = total * inverseScale(scale(weightSoFar / total) + 1)
                current = next
            }
        }
        merged.append(current)
        if descending { merged.reverse() }
        // Rounding in the incremental means can leave neighbours a hair out of order; keep the invariant.
        for index in merged.indices.dropFirst() where merged[index].mean < merged[index - 1].mean {
            merged[index].mean = merged[index - 1].mean
        }
        centroids = merged
    }

    /// Heapsort by mean. Not the standard library's sort: that one is generic, and unspecialized (debug builds, where
    /// the tests feed millions of values) it allocates per element and is some 20× slower; this one is fast in both.
    private static func sortByMean(_ items: inout [Centroid]) {
        items.withUnsafeMutableBufferPointer { heap in
            func siftDown(_ start: Int, _ end: Int) {
                var root = start
                let item = heap[root]
                while true {
                    var child = 2 * root + 1
                    if child >= end { break }
                    if child + 1 < end, heap[child + 1].mean > heap[child].mean { child += 1 }
                    if heap[child].mean <= item.mean { break }
                    heap[root] = heap[child]
                    root = child
                }
                heap[root] = item
            }
            let n = heap.count
            var start = n / 2 - 1
            while start >= 0 {
                siftDown(start, n)
                start -= 1
            }
            var end = n - 1
            while end > 0 {
                heap.swapAt(0, end)
                siftDown(0, end)
                end -= 1
            }
        }
    }

    /// k1: `δ/(2π) · asin(2q − 1)`.
    private func scale(_ q: Double) -> Double {
        compression / (2 * Double.pi) * asin(Swift.min(Swift.max(2 * q - 1, -1), 1))
    }

    /// The inverse of k1, clamped to q in 0...1.
    private func inverseScale(_ k: Double) -> Double {
        let angle = k * 2 * Double.pi / compression
        if angle >= Double.pi / 2 { return 1 }
        return (sin(Swift.max(angle, -Double.pi / 2)) + 1) / 2
    }

    /// The value at rank `q × count`. Each centroid's weight is taken as spread around its mean, values are
    /// interpolated linearly between neighbouring means, from the exact min to the first mean and from the last
    /// mean to the exact max; a weight-1 centroid is a single known value. NaN when empty; q is clamped to 0...1.
    public func quantile(_ q: Double) -> Double {
        quantiles([q])[0]
    }

    /// Several quantiles for the price of one buffer merge.
    func quantiles(_ levels: [Double]) -> [Double] {
        var digest = self
        digest.compress()
        return levels.map { digest.compressedQuantile($0) }
    }

    private func compressedQuantile(_ rawQ: Double) -> Double {
        let n = centroids.count
        guard n > 0, !rawQ.isNaN else { return .nan }
        let q = Swift.min(Swift.max(rawQ, 0), 1)
        if q == 0 { return min }
        if q == 1 { return max }
        let first = centroids[0]
        let last = centroids[n - 1]
        if n == 1 {
            if first.weight <= 1 || min == max { return first.mean }
            // One cluster: all we know is min, mean and max; interpolate between them.
            let index = q * first.weight
            let half = first.weight / 2
            return index < half
                ? min + (first.mean - min) * index / half
                : first.mean + (max - first.mean) * (index - half) / half
        }
        let total = centroidWeight
        let index = q * total
        // The first and last unit of weight sit at the exact extremes.
        if index < 1 { return min }
        if index > total - 1 { return max }
        if first.weight > 2, index < first.weight / 2 {
            return min + (index - 1) / (first.weight / 2 - 1) * (first.mean - min)
        }
        if last.weight > 2, total - index <= last.weight / 2 {
            return max - (total - index - 1) / (last.weight / 2 - 1) * (max - last.mean)
        }
        var weightSoFar = first.weight / 2  // rank of centroid i's mean
        for i in 0..<(n - 1) {
            let a = centroids[i]
            let b = centroids[i + 1]
            let gap = (a.weight + b.weight) / 2
            if weightSoFar + gap > index {
                var leftUnit = 0.0
                if a.weight == 1 {
                    if index - weightSoFar < 0.5 { return a.mean }
                    leftUnit = 0.5
                }
                var rightUnit = 0.0
                if b.weight == 1 {
                    if weightSoFar + gap - index <= 0.5 { return b.mean }
                    rightUnit = 0.5
                }
                let towardsA = weightSoFar + gap - index - rightUnit
                let towardsB = index - weightSoFar - leftUnit
                return Self.interpolate(a.mean, towardsA, b.mean, towardsB)
            }
            weightSoFar += gap
        }
        // Between the last mean and the max.
        let past = index - (total - last.weight / 2)
        return Self.interpolate(last.mean, last.weight / 2 - past, max, past)
    }

    /// `(x1·w1 + x2·w2) / (w1 + w2)`, kept within [x1, x2] against rounding.
    private static func interpolate(_ x1: Double, _ w1: Double, _ x2: Double, _ w2: Double) -> Double {
        let sum = w1 + w2
        guard sum > 0 else { return (x1 + x2) / 2 }
        let value = (x1 * w1 + x2 * w2) / sum
        return Swift.min(Swift.max(value, Swift.min(x1, x2)), Swift.max(x1, x2))
    }
}
