import Testing

@testable import BatchhouseCore

/// `IngestAnomalyDetector` driven by a test clock: cumulative totals in, edge-triggered findings out.
@Suite struct IngestAnomalyDetectorTests {
    /// The caller's side: cumulative totals and the clock, one observation per step.
    struct Feed {
        var detector: IngestAnomalyDetector
        var totals: [String: Int]
        var now = Instant.zero
        var findings: [IngestFinding] = []

        init(_ detector: IngestAnomalyDetector = IngestAnomalyDetector(), tables: [String: Int]) {
            self.detector = detector
            totals = tables
            #expect(self.detector.nextObservation == nil)
            #expect(self.detector.observe(totals: totals, at: now).isEmpty)
        }

        /// Adds `rows` to the totals and observes `seconds` later; `omit` leaves tables out of the totals passed.
        @discardableResult
        mutating func step(_ rows: [String: Int], seconds: Int64 = 10, omit: Set<String> = [], count: Int = 1)
            -> [IngestFinding]
        {
            var all: [IngestFinding] = []
            for _ in 0..<count {
                for (table, added) in rows { totals[table, default: 0] += added }
                now = now + .seconds(seconds)
                let passed = totals.filter { !omit.contains($0.key) }
                let found = detector.observe(totals: passed, at: now)
                all += found
                findings += found
            }
            return all
        }
    }

    @Test func silenceAfterSteadyTrafficIsOneDropThenForgotten() {
        var feed = Feed(tables: ["events": 0, "logs": 0])
        feed.step(["events": 1000, "logs": 1000], count: 12)  // 100 rows/s for 2 minutes
        #expect(feed.findings.isEmpty)
        #expect(feed.detector.nextObservation == feed.now + .seconds(10))
        // events stays in the totals, unchanged; logs disappears from them: both are silent.
        let first = feed.step([:], omit: ["logs"])
        #expect(
            first == [
                IngestFinding(table: "events", kind: .drop, rate: 0, baseline: 100),
                IngestFinding(table: "logs", kind: .drop, rate: 0, baseline: 100),
            ])
        feed.step([:], omit: ["logs"], count: 28)
        #expect(feed.findings.count == 2)
        #expect(feed.detector.trackedTables == 2)
        // The 30th silent interval fills the history with zeros: both are forgotten.
        feed.step([:], omit: ["logs"])
        #expect(feed.findings.count == 2)
        #expect(feed.detector.trackedTables == 0)
        #expect(feed.detector.heldTables == ["events", "logs"])
        feed.step([:], omit: ["logs"], count: 10)
        #expect(feed.findings.count == 2)

        // Back to steady traffic: a fresh history from the last total (its earlier 12,000 rows are not a burst).
        feed.step(["events": 1000], count: 20)
        #expect(feed.findings.count == 2)
        #expect(feed.detector.trackedTables == 1)
    }

    @Test func burstIsOneSpikeAndTheStateResets() {
        var feed = Feed(tables: ["events": 0])
        feed.step(["events": 1000], count: 30)
        let burst = feed.step(["events": 10_000])
        #expect(burst == [IngestFinding(table: "events", kind: .spike, rate: 1000, baseline: 100)])
        feed.step(["events": 1000], count: 30)
        #expect(feed.findings.count == 1)
        // Back to normal in between, so the next burst is a new spike.
        #expect(feed.step(["events": 10_000]).map(\.kind) == [.spike])
    }

    @Test func belowMinimumRateNothingIsJudged() {
        // 0.5 rows/s: a 10× burst and a silence say nothing.
        var trickle = Feed(tables: ["t": 0])
        trickle.step(["t": 5], count: 12)
        trickle.step(["t": 50])
        trickle.step(["t": 5], count: 12)
        trickle.step([:], count: 30)
        #expect(trickle.findings.isEmpty)
        // The same shape at 5 rows/s is a spike and a drop.
        var steady = Feed(tables: ["t": 0])
        steady.step(["t": 50], count: 12)
        steady.step(["t": 500])
        steady.step(["t": 50], count: 12)
        steady.step([:], count: 30)
        #expect(steady.findings.map(\.kind) == [.spike, .drop])
    }

    @Test func needsMinimumHistory() {
        var feed = Feed(tables: ["t": 0])
        feed.step(["t": 1000], count: 5)
        #expect(feed.step([:]).isEmpty)  // 5 previous rates < 6
        var six = Feed(tables: ["t": 0])
        six.step(["t": 1000], count: 6)
        #expect(six.step([:]).map(\.kind) == [.drop])
    }

    @Test func lateCallDividesByTheActualElapsedTime() {
        var feed = Feed(tables: ["t": 0])
        feed.step(["t": 1000], count: 12)
        // 30 s late with 30 s of rows: still 100 rows/s.
        #expect(feed.step(["t": 3000], seconds: 30).isEmpty)
        #expect(feed.detector.nextObservation == feed.now + .seconds(10))
        // The same rows in 10 s are 300 rows/s.
        #expect(feed.step(["t": 3000]) == [IngestFinding(table: "t", kind: .spike, rate: 300, baseline: 100)])
        // A call at the same instant has no interval: ignored.
        #expect(feed.detector.observe(totals: feed.totals, at: feed.now).isEmpty)
    }

    @Test func newTableCountsFromZero() {
        var feed = Feed(tables: [:])
        feed.step(["late": 2000])  // created after the first call: 200 rows/s in its first interval
        feed.step(["late": 1000], count: 6)
        let found = feed.step([:])
        #expect(found == [IngestFinding(table: "late", kind: .drop, rate: 0, baseline: 800.0 / 7)])
    }

    @Test func maxTablesEvictsTheLeastRecentlyActive() {
        var feed = Feed(IngestAnomalyDetector(maxTables: 3), tables: ["a": 0, "b": 0, "c": 0])
        feed.step(["a": 10, "b": 10, "c": 10])
        feed.step(["b": 10, "c": 10])
        #expect(feed.detector.heldTables == ["a", "b", "c"])
        feed.step(["b": 10, "c": 10, "d": 10])
        #expect(feed.detector.heldTables == ["b", "c", "d"])
        #expect(feed.detector.trackedTables == 3)
        // Too many at the first call: the limit holds from the start.
        var crowded = Feed(IngestAnomalyDetector(maxTables: 2), tables: ["a": 1, "b": 1, "c": 1])
        #expect(crowded.detector.heldTables.count == 2)
        crowded.step(["a": 1, "b": 1, "c": 1, "d": 1, "e": 1])
        #expect(crowded.detector.trackedTables == 2)
    }
}
