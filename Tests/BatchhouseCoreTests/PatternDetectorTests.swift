import Testing

@testable import BatchhouseCore

/// `PatternHistory`'s rules, one per test.
@Suite struct PatternDetectorTests {
    static let steady: [Double] = [100, 101, 99, 100, 101, 99, 100, 100, 101, 99]

    /// A series fed `values`, which (when `quiet`) must judge as nothing.
    func history(_ values: [Double], thresholds: PatternThresholds = PatternThresholds(), quiet: Bool = true)
        -> PatternHistory
    {
        var history = PatternHistory(thresholds: thresholds)
        for value in values {
            let findings = history.judge(value)
            if quiet { #expect(findings.isEmpty, "setup value \(value)") }
        }
        return history
    }

    func mean(_ values: [Double]) -> Double { values.reduce(0, +) / Double(values.count) }

    @Test func spikeThenDrop() {
        var series = history(Self.steady)
        #expect(series.judge(1000) == [PatternFinding(kind: .spike, value: 1000, baseline: 100)])
        let baseline = mean(Array(Self.steady.dropFirst()) + [1000])
        #expect(series.judge(10) == [PatternFinding(kind: .drop, value: 10, baseline: baseline)])
        #expect(series.values == Array(Self.steady.dropFirst(2)) + [1000, 10])
    }

    @Test func spikeNeedsMoreThanTwiceTheMean() {
        var series = history(Array(repeating: 100, count: 10))
        // s = 0, so no anomaly either.
        #expect(series.judge(200).isEmpty)
        var other = history(Array(repeating: 100, count: 10))
        #expect(other.judge(50).isEmpty)
        var below = history(Array(repeating: 100, count: 10))
        #expect(below.judge(49.9).map(\.kind) == [.drop])
    }

    @Test func anomalyBeyondSigmaButNotSpike() {
        var series = history(Self.steady)
        // s ≈ 0.77: 110 is 13σ away but well under 2× the mean.
        #expect(series.judge(110) == [PatternFinding(kind: .anomaly, value: 110, baseline: 100)])
        var low = history(Self.steady)
        #expect(low.judge(90).map(\.kind) == [.anomaly])
        var near = history(Self.steady)
        #expect(near.judge(102).isEmpty)  // within 3σ
    }

    @Test func trends() {
        var up = history([100, 106, 112, 118])
        #expect(up.judge(125) == [PatternFinding(kind: .trendUp, value: 125, baseline: 100)])
        var slight = history([100, 102.5, 105, 107.5])
        #expect(slight.judge(110).isEmpty)  // +10 %
        var down = history([100, 95, 90, 85])
        #expect(down.judge(79) == [PatternFinding(kind: .trendDown, value: 79, baseline: 100)])
        var notStrict = history([100, 106, 112, 112])
        #expect(!notStrict.judge(125).contains { $0.kind == .trendUp })
        var fromZero = history([0, 1, 2, 3], quiet: false)
        #expect(!fromZero.judge(4).contains { $0.kind == .trendUp })
        var three = history([100, 110, 120])
        #expect(three.judge(130).isEmpty)  // four windows are not a trend
    }

    @Test func spikeAndTrendTogether() {
        var series = history([100, 110, 120, 130])
        #expect(series.judge(300).map(\.kind) == [.spike, .trendUp])
    }

    @Test func nanIsIgnored() {
        var series = history(Self.steady)
        #expect(series.judge(.nan).isEmpty)
        #expect(series.judge(.infinity).isEmpty)
        #expect(series.values == Self.steady)
    }

    @Test func fewerThanThreeValuesJudgeNothing() {
        var two = history([100, 100])
        #expect(two.judge(1000).isEmpty)
        var three = history([100, 100, 100])
        #expect(three.judge(1000).map(\.kind) == [.spike])
        // A history of 2 needs only 2.
        var short = history([100, 100], thresholds: PatternThresholds(history: 2))
        #expect(short.judge(1000).map(\.kind) == [.spike])
    }

    @Test func baselineIsTheLastHistoryValues() {
        // history 3 (the ring still keeps 4): the baseline forgets the early 1,000s.
        var series = history([1000, 1000, 1000, 10, 10, 10], thresholds: PatternThresholds(history: 3), quiet: false)
        #expect(series.values == [1000, 10, 10, 10])
        #expect(series.judge(10).isEmpty)
        #expect(series.judge(100) == [PatternFinding(kind: .spike, value: 100, baseline: 10)])
    }

    @Test func ringKeepsMaxOfHistoryAndFour() {
        var short = PatternHistory(thresholds: PatternThresholds(history: 2))
        for value in 1...9 { _ = short.judge(Double(value)) }
        #expect(short.values == [6, 7, 8, 9])
        var long = PatternHistory(thresholds: PatternThresholds())
        for value in 1...25 { _ = long.judge(Double(value)) }
        #expect(long.values == (16...25).map(Double.init))
    }
}
