import Testing

@testable import BatchhouseCore

/// `ValueSummary`: exact statistics and ClickHouse `quantileExact` indices while small, the digest past `exactLimit`.
@Suite struct ValueSummaryTests {
    /// 1...1000 in a seeded random order.
    func shuffled(_ range: ClosedRange<Int>, seed: UInt64 = 1) -> [Double] {
        var rng = SplitMix64(seed: seed)
        return range.map(Double.init).shuffled(using: &rng)
    }

    @Test func thousandValuesAreExact() {
        var summary = ValueSummary()
        let values = shuffled(1...1000)
        for value in values { summary.add(value) }
        #expect(summary.isExact)
        #expect(summary.count == 1000)
        #expect(summary.min == 1 && summary.max == 1000)
        #expect(summary.sum == 500_500)
        #expect(summary.mean == 500.5)
        let sorted = values.sorted()
        let levels = [0, 0.5, 0.9, 0.99, 0.999, 1]
        let expected = [sorted[0], sorted[500], sorted[900], sorted[990], sorted[999], 1000]
        #expect(summary.quantiles(levels) == expected)
        #expect(summary.quantiles(levels) == [1, 501, 901, 991, 1000, 1000])
    }

    @Test func quantileIndexMirrorsQuantileExact() {
        var summary = ValueSummary()
        for value in [30.0, 10, 20, 40] { summary.add(value) }
        // Int(level × 4): 0.25 → index 1, 0.49 → 1, 0.5 → 2, 0.74 → 2, 0.75 → 3, 0.99 → 3.
        #expect(summary.quantiles([0, 0.25, 0.49, 0.5, 0.74, 0.75, 0.99, 1, 2]) == [10, 20, 20, 30, 30, 40, 40, 40, 40])
        #expect(summary.quantiles([-1]) == [10])
        #expect(summary.quantiles([.nan])[0].isNaN)
    }

    @Test func emptySummary() {
        let summary = ValueSummary()
        #expect(summary.count == 0 && summary.sum == 0)
        #expect(summary.min == .infinity && summary.max == -.infinity)
        #expect(summary.mean.isNaN)
        #expect(summary.quantiles([0.5, 1]).allSatisfy { $0.isNaN })
        #expect(summary.isExact)
    }

    @Test func nonFiniteValuesAreIgnored() {
        var summary = ValueSummary()
        for value in [1.0, .nan, .infinity, -.infinity, 3] { summary.add(value) }
        #expect(summary.count == 2 && summary.sum == 4 && summary.min == 1 && summary.max == 3)
    }

    /// Cents: the compensated sum of 1,000 two-decimal values prints as the decimal total.
    @Test func compensatedSumOfCents() {
        var rng = SplitMix64(seed: 99)
        var cents = 0
        var summary = ValueSummary()
        var naive = 0.0
        for _ in 0..<1000 {
            let value = Int(rng.next() % 1_000_000)  // up to 9,999.99
            cents += value
            let amount = Double(value) / 100
            summary.add(amount)
            naive += amount
        }
        let exact = Double(cents) / 100
        #expect(summary.sum == exact)
        #expect("\(summary.sum)" == "\(exact)")
        // The data is meaningful: plain summation loses the last digit here.
        #expect(naive != exact)
    }

    @Test func switchesToDigestAtExactLimitPlusOne() {
        var summary = ValueSummary(exactLimit: 1000)
        let values = shuffled(1...1001, seed: 5)
        for value in values.prefix(1000) { summary.add(value) }
        #expect(summary.isExact)
        let exactBytes = summary.approximateBytes
        #expect(exactBytes >= 8000)
        summary.add(values[1000])
        #expect(!summary.isExact)
        #expect(summary.count == 1001 && summary.min == 1 && summary.max == 1001 && summary.sum == 501_501)
        let estimates = summary.quantiles([0, 0.5, 0.99, 1])
        #expect(estimates[0] == 1 && estimates[3] == 1001)
        #expect(abs(estimates[1] - 501) <= 5)
        #expect(abs(estimates[2] - 991) <= 3)
        // The digest stays bounded however many values follow.
        for value in 0..<100_000 { summary.add(Double(value % 1001)) }
        #expect(summary.approximateBytes < 40_000)
    }

    @Test func mergeExactAndExactStaysExactWithinLimit() {
        var left = ValueSummary(exactLimit: 10)
        var right = ValueSummary(exactLimit: 10)
        for value in [5.0, 1, 3, 9] { left.add(value) }
        for value in [2.0, 8, 4, 6, 7, 10] { right.add(value) }
        var merged = left
        merged.merge(right)
        #expect(merged.isExact)
        #expect(merged.count == 10 && merged.sum == 55 && merged.min == 1 && merged.max == 10)
        #expect(merged.quantiles([0.5, 0.95]) == [6, 10])

        right.add(11)
        merged = left
        merged.merge(right)
        #expect(!merged.isExact)
        #expect(merged.count == 11 && merged.sum == 66 && merged.min == 1 && merged.max == 11)
        #expect(abs(merged.quantiles([0.5])[0] - 6) <= 1)
    }

    /// Values 1...n split over summaries in both modes: the merge keeps exact totals and close quantiles.
    @Test func mergeWithDigests() {
        func summary(_ values: ArraySlice<Double>) -> ValueSummary {
            var summary = ValueSummary(exactLimit: 1000)
            for value in values { summary.add(value) }
            return summary
        }
        let values = shuffled(1...20_000, seed: 3)
        let small = summary(values[0..<500])  // exact
        let big = summary(values[500..<10_000])  // digest
        let other = summary(values[10_000..<20_000])  // digest
        #expect(small.isExact && !big.isExact && !other.isExact)

        for (first, second) in [(small, big), (big, small)] {
            var merged = first
            merged.merge(second)
            #expect(!merged.isExact && merged.count == 10_000)
            #expect(merged.sum == values[0..<10_000].reduce(0, +))
            #expect(merged.min == values[0..<10_000].min() && merged.max == values[0..<10_000].max())
        }

        var all = small
        all.merge(big)
        all.merge(other)
        var digests = big
        digests.merge(other)
        #expect(digests.count == 19_500 && all.count == 20_000)
        #expect(all.sum == 200_010_000 && all.min == 1 && all.max == 20_000)
        let estimates = all.quantiles([0.5, 0.99])
        #expect(abs(estimates[0] - 10_000) <= 50)  // 0.25 % of rank
        #expect(abs(estimates[1] - 19_800) <= 10)
    }
}
