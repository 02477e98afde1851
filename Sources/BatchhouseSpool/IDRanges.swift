/// Chunk ids as inclusive ranges: how `delivered` records store them and how recovery looks them up.
struct IDRanges {
    /// Sorted, disjoint and not adjacent.
    private(set) var ranges: [ClosedRange<UInt64>] = []

    init() {}

    /// Coalesces ids (in any order, duplicates allowed) into ranges.
    init<S: Sequence>(ids: S) where S.Element == UInt64 {
        self.init(ranges: ids.sorted().map { $0...$0 })
    }

    init(ranges: [ClosedRange<UInt64>]) {
        var merged: [ClosedRange<UInt64>] = []
        merged.reserveCapacity(ranges.count)
        for range in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if let last = merged.last, last.upperBound == .max || range.lowerBound <= last.upperBound + 1 {
                merged[merged.count - 1] = last.lowerBound...max(last.upperBound, range.upperBound)
            } else {
                merged.append(range)
            }
        }
        self.ranges = merged
    }

    var isEmpty: Bool { ranges.isEmpty }

    func contains(_ id: UInt64) -> Bool {
        let index = firstIndex(endingAtOrAfter: id)
        return index < ranges.count && ranges[index].contains(id)
    }

    func overlaps(_ other: ClosedRange<UInt64>) -> Bool {
        let index = firstIndex(endingAtOrAfter: other.lowerBound)
        return index < ranges.count && ranges[index].lowerBound <= other.upperBound
    }

    /// The first range whose upper bound is at least `id`.
    private func firstIndex(endingAtOrAfter id: UInt64) -> Int {
        var low = 0
        var high = ranges.count
        while low < high {
            let middle = (low + high) / 2
            if ranges[middle].upperBound < id {
                low = middle + 1
            } else {
                high = middle
            }
        }
        return low
    }

    /// The ids of `span` that are not in `excluded`, as ranges.
    static func complement<C: Collection>(of excluded: C, in span: ClosedRange<UInt64>) -> [ClosedRange<UInt64>]
    where C.Element == UInt64 {
        var result: [ClosedRange<UInt64>] = []
        var next = span.lowerBound
        var exhausted = false
        for id in excluded.sorted() where span.contains(id) {
            if id > next { result.append(next...(id - 1)) }
            if id == span.upperBound {
                exhausted = true
                break
            }
            next = id + 1
        }
        if !exhausted { result.append(next...span.upperBound) }
        return result
    }
}
