import Foundation
import Testing

@testable import BatchhouseCore

/// Drives a `BatchStore` with one `adaptive` table through simulated time: requests arrive at a fixed pace,
/// due batches are sealed exactly at their deadline (as the flush scheduler does), each sealed batch comes
/// back from "upstream" `latency` later with the result `upstream` gives for that moment.
struct AdaptiveLoadSimulation {
    static let key = BatchKey(
        identity: .anonymous, database: "default", table: "metrics", columns: nil, format: .values, header: nil,
        settings: []
    )
    static let table = "default.metrics"
    /// 19 bytes a row, rows joined by `,`: 50 rows are 999 bytes.
    static func chunk(rows: Int) -> [UInt8] {
        Array(Array(repeating: "(1,'abcdefghijklm')", count: rows).joined(separator: ",").utf8)
    }

    var store = BatchStore()
    var rule: TableRule
    var now = Instant.zero
    var latency: Duration = .milliseconds(50)
    var upstream: (Instant) -> FlushResult = { _ in .ok }
    private(set) var flushed: [SealedBatch] = []
    private(set) var appendedRows = 0
    private var inFlight: [(done: Instant, batch: SealedBatch)] = []

    init(rule: TableRule) { self.rule = rule }

    /// Sends `rows` rows every `period` from now until `end` (exclusive), processing deadlines and results
    /// in time order; then processes everything due at `end`.
    mutating func run(rows: Int, every period: Duration, until end: Instant) {
        let chunk = Self.chunk(rows: rows)
        var nextArrival = now
        while true {
            let completion = inFlight.map(\.done).min()
            let deadline = store.nextDeadline
            let next = [completion, deadline, nextArrival < end ? nextArrival : nil].compactMap { $0 }.min()
            guard let next, next <= end else { break }
            now = next
            if let completion, completion == next {
                complete(at: next)
            } else if let deadline, deadline == next {
                submit(store.sealDue(now: next))
            } else {
                appendedRows += rows
                submit(
                    chunk.withUnsafeBytes {
                        store.append(
                            key: Self.key, rule: rule, chunk: $0, rows: rows, endsWithNewline: false, now: next)
                    })
                nextArrival = nextArrival + period
            }
        }
        now = end
    }

    private mutating func submit(_ batches: [SealedBatch]) {
        for batch in batches {
            flushed.append(batch)
            inFlight.append((batch.sealedAt + latency, batch))
        }
    }

    private mutating func complete(at time: Instant) {
        let index = inFlight.firstIndex { $0.done == time }!
        let batch = inFlight.remove(at: index).batch
        store.recordFlush(
            table: Self.table, rows: batch.rows, bytes: batch.data.count, latency: latency, result: upstream(time),
            now: time)
    }

    /// Batches sealed in [from, to).
    func batches(from: Instant, to: Instant) -> [SealedBatch] {
        flushed.filter { $0.sealedAt >= from && $0.sealedAt < to }
    }

    func insertsPerSecond(from: Instant, to: Instant) -> Double {
        Double(batches(from: from, to: to).count) / (to - from).seconds
    }

    var longestWait: Duration { flushed.map { $0.sealedAt - $0.firstRowAt }.max() ?? .zero }

    var target: AdaptiveTarget { store.adaptiveTargets()[Self.table]! }
}

@Suite struct AdaptiveControllerTests {
    func at(_ seconds: Double) -> Instant { Instant(nanoseconds: Int64(seconds * 1e9)) }

    /// `adaptive` with room to grow: up to 20,000 rows or 5 s.
    let rule = TableRule(strategy: .adaptive, maxRows: 20_000, maxBytes: 16 << 20, maxDelay: .seconds(5))

    /// 5,000 rows/s as 50 rows every 10 ms, 50 ms upstream latency, all ok, for 60 s.
    func steady() -> AdaptiveLoadSimulation {
        var simulation = AdaptiveLoadSimulation(rule: rule)
        simulation.run(rows: 50, every: .milliseconds(10), until: at(60))
        return simulation
    }

    @Test func steadyLoadConvergesToOneInsertPerSecond() {
        let simulation = steady()
        let late = simulation.batches(from: at(30), to: at(60))
        #expect(simulation.insertsPerSecond(from: at(30), to: at(60)) == 1.0)
        #expect(late.allSatisfy { $0.rows == 5_000 && $0.trigger == .time })
        // From the very first batch (no warm-up): one batch of 5,000 rows a second, sealed 1 s after its first row.
        #expect(simulation.flushed.count == 60)
        #expect(simulation.flushed.allSatisfy { $0.rows == 5_000 && $0.sealedAt - $0.firstRowAt == .seconds(1) })
        #expect(simulation.longestWait == .seconds(1))
        let target = simulation.target
        #expect(target.maxDelay == .seconds(1))
        #expect(target.maxRows == 10_000)  // twice the expected batch
        #expect(target.maxBytes == 199_800)
        let controller = simulation.store.adaptiveController(table: AdaptiveLoadSimulation.table)!
        #expect(abs(controller.rowsPerSecond - 5_000) < 1)
        #expect(abs(controller.bytesPerSecond - 99_900) < 1)
        #expect(simulation.flushed.map(\.rows).reduce(0, +) + simulation.store.bufferedRows == simulation.appendedRows)
    }

    @Test func strugglingUpstreamGetsFewerLargerInsertsWithinBounds() {
        var simulation = steady()
        simulation.upstream = { _ in .struggling }  // TOO_MANY_PARTS on every insert
        var targets: [AdaptiveTarget] = []
        for second in 61...90 {
            simulation.run(rows: 50, every: .milliseconds(10), until: at(Double(second)))
            targets.append(simulation.target)
        }
        // The interval doubles once per round trip: 1 s -> 2 s -> 4 s -> 5 s (max_delay). A batch opened before
        // a doubling keeps its deadline, and its result does not double again. At 5 s the rows target is capped
        // at max_rows, so batches close at 20,000 rows, every 4 s.
        let intervals = simulation.batches(from: at(60), to: at(90)).map { $0.sealedAt - $0.firstRowAt }
        #expect(
            Array(intervals.prefix(6))
                == [.seconds(1), .seconds(1), .seconds(2), .seconds(2), .milliseconds(3_990), .milliseconds(3_990)])
        let late = simulation.batches(from: at(70), to: at(90))
        #expect(simulation.insertsPerSecond(from: at(70), to: at(90)) == 0.25)
        #expect(late.allSatisfy { $0.rows == 20_000 && $0.trigger == .rows })
        #expect(simulation.target == AdaptiveTarget(maxRows: 20_000, maxBytes: 999_000, maxDelay: .seconds(5)))
        #expect(targets.allSatisfy { $0.maxRows <= 20_000 && $0.maxBytes <= 16 << 20 && $0.maxDelay <= .seconds(5) })
        #expect(simulation.longestWait <= .seconds(5))
        #expect(simulation.flushed.allSatisfy { $0.rows <= 20_000 })
    }

    @Test func recoveryShrinksBackToOneInsertPerSecond() {
        var simulation = steady()
        simulation.upstream = { _ in .struggling }
        simulation.run(rows: 50, every: .milliseconds(10), until: at(90))
        simulation.upstream = { _ in .ok }
        simulation.run(rows: 50, every: .milliseconds(10), until: at(150))
        let recovering = simulation.batches(from: at(90), to: at(150))
        // Each ok adds 0.1 insert/s: 1/I goes 0.2 (capped at 20,000 rows: 3.99 s), 0.3, 0.4, ... 1.0, then stays.
        // The first ok result (of the batch sealed at 92.99 s) arrives while the next batch is already open.
        let intervals = recovering.map { (($0.sealedAt - $0.firstRowAt).seconds * 1000).rounded() }
        #expect(Array(intervals.prefix(10)) == [3990, 3990, 3333, 2500, 2000, 1667, 1429, 1250, 1111, 1000])
        #expect(intervals.dropFirst(9).allSatisfy { $0 == 1000 })
        #expect(recovering[9].firstRowAt < at(110.5))  // back to one insert a second ~17 s after the first ok
        #expect(simulation.insertsPerSecond(from: at(130), to: at(150)) == 1.0)
        #expect(simulation.batches(from: at(130), to: at(150)).allSatisfy { $0.rows == 5_000 })
        #expect(simulation.target.maxDelay == .seconds(1))
        #expect(simulation.longestWait <= .seconds(5))
    }

    @Test func lightTrafficIsFlushedAfterTheFloorDelay() {
        var simulation = AdaptiveLoadSimulation(rule: rule)
        simulation.run(rows: 1, every: .seconds(10), until: at(300))
        let waits = simulation.flushed.map { $0.sealedAt - $0.firstRowAt }
        #expect(simulation.flushed.count == 30)
        #expect(simulation.flushed.allSatisfy { $0.rows == 1 })
        // A new table's first row counts as one second of traffic: 1 row expected, so it waits 1 s / 4.
        #expect(waits.first == .milliseconds(250))
        #expect(waits.dropFirst().allSatisfy { $0 == .milliseconds(50) })
        #expect(simulation.longestWait <= .seconds(5))
    }

    @Test func slowUpstreamStretchesTheInterval() {
        var simulation = AdaptiveLoadSimulation(rule: rule)
        simulation.latency = .milliseconds(800)
        simulation.run(rows: 50, every: .milliseconds(10), until: at(60))
        // Interval >= 2 x latency: one insert every 1.6 s, about one in flight at a time.
        #expect(simulation.target.maxDelay == .milliseconds(1_600))
        let late = simulation.batches(from: at(30), to: at(60))
        #expect(late.allSatisfy { $0.sealedAt - $0.firstRowAt == .milliseconds(1_600) && $0.rows == 8_000 })
        #expect(abs(simulation.insertsPerSecond(from: at(30), to: at(60)) - 1 / 1.6) < 0.05)
    }

    @Test func burstIsFlushedAtTwiceTheExpectedBatch() {
        let roomy = TableRule(strategy: .adaptive, maxRows: 100_000, maxBytes: 16 << 20, maxDelay: .seconds(5))
        var simulation = AdaptiveLoadSimulation(rule: roomy)
        simulation.run(rows: 50, every: .milliseconds(10), until: at(60))
        // Ten times the rate (50,000 rows/s) for 3 s: a batch closes at twice the expected batch, and that
        // target follows the rate estimate up, so the burst takes 5 inserts, not 30 (nor one huge one).
        simulation.run(rows: 500, every: .milliseconds(10), until: at(63))
        simulation.run(rows: 50, every: .milliseconds(10), until: at(70))
        let burst = simulation.batches(from: at(60.1), to: at(64))
        #expect(burst.map(\.rows) == [15_500, 23_000, 32_500, 43_000, 37_400])
        #expect(burst.map(\.trigger) == [.rows, .rows, .rows, .rows, .time])
        // Back at 5,000 rows/s: one batch of 5,000 rows a second again.
        let after = simulation.batches(from: at(64), to: at(70))
        #expect(after.count == 6 && after.allSatisfy { $0.rows == 5_000 && $0.sealedAt - $0.firstRowAt == .seconds(1) })
        #expect(simulation.longestWait == .seconds(1))
    }

    @Test func lonelyRowsWaitLessAsTheRateEstimateDecays() {
        var simulation = steady()
        // Heavy traffic stops at 60 s; then one row every 10 s. The rows of the next half minute still expect
        // traffic and wait the 1 s interval; as the estimate decays (5 s time constant) the delay falls to 50 ms.
        simulation.run(rows: 1, every: .seconds(10), until: at(200))
        let lonely = simulation.batches(from: at(70), to: at(200))
        let waits = lonely.map { (($0.sealedAt - $0.firstRowAt).seconds * 1000).rounded() }
        #expect(lonely.allSatisfy { $0.rows == 1 })
        #expect(waits == [1000, 1000, 1000, 443, 82, 50, 50, 50, 50, 50, 50, 50, 50])
    }

    @Test func maxBytesCapsTheBytesTarget() {
        let tight = TableRule(strategy: .adaptive, maxRows: 100_000, maxBytes: 50_000, maxDelay: .seconds(5))
        var simulation = AdaptiveLoadSimulation(rule: tight)
        simulation.run(rows: 50, every: .milliseconds(10), until: at(20))
        // 100 KB/s: batches close at 50,000 bytes (2,500 rows of 20 bytes, minus the commas), twice a second.
        #expect(simulation.target.maxBytes == 50_000)
        let late = simulation.batches(from: at(10), to: at(20))
        #expect(late.allSatisfy { $0.data.count <= 50_000 && $0.trigger == .bytes })
        #expect(simulation.insertsPerSecond(from: at(10), to: at(20)) == 2.0)
    }

    @Test func failedResultsAreIgnored() {
        var controller = AdaptiveController(rule: rule)
        controller.recordFlush(rows: 10, bytes: 100, latency: .seconds(20), result: .failed, now: at(1))
        #expect(controller.interval == 1)
        #expect(controller.latency == nil)
    }

    @Test func intervalDoublesOncePerIntervalAndRecoversAdditively() {
        var controller = AdaptiveController(rule: rule)
        func struggle(_ seconds: Double) {
            controller.recordFlush(rows: 1, bytes: 1, latency: .zero, result: .struggling, now: at(seconds))
        }
        func ok(_ seconds: Double) {
            controller.recordFlush(rows: 1, bytes: 1, latency: .zero, result: .ok, now: at(seconds))
        }
        struggle(10)
        #expect(controller.interval == 2)
        struggle(10.5)  // a batch sealed before the doubling: no second doubling
        #expect(controller.interval == 2)
        struggle(11)
        #expect(controller.interval == 4)
        struggle(13)
        #expect(controller.interval == 5)  // max_delay
        struggle(100)
        #expect(controller.interval == 5)
        // 1/I: 0.2 -> 0.3 -> 0.4 -> ... -> 1.0 (8 ok results), never below 1 s.
        var intervals: [Double] = []
        for step in 1...9 {
            ok(100 + Double(step))
            intervals.append(controller.interval)
        }
        let expected: [Double] = [1 / 0.3, 1 / 0.4, 1 / 0.5, 1 / 0.6, 1 / 0.7, 1 / 0.8, 1 / 0.9, 1, 1]
        #expect(zip(intervals, expected).allSatisfy { abs($0 - $1) < 1e-9 })
    }

    @Test func rateEstimateIsExactForPeriodicArrivals() {
        var controller = AdaptiveController(rule: rule)
        // The first arrival counts as one second of traffic (3 rows/s)...
        controller.recordArrival(rows: 3, bytes: 30, now: at(0))
        #expect(abs(controller.rowsPerSecond - 3) < 1e-9)
        // ...with a weight that decays like any other: 2 s later it weighs (1 - e^-0.2)·e^-0.4 against
        // 1 - e^-0.4 for the measured 30 rows/s.
        for step in 1...20 { controller.recordArrival(rows: 3, bytes: 30, now: at(Double(step) * 0.1)) }
        let prior: Double = (1 - exp(-0.2)) * exp(-0.4)
        let measured: Double = 1 - exp(-0.4)
        let expected: Double = (3 * prior + 30 * measured) / (prior + measured)
        #expect(abs(controller.rowsPerSecond - expected) < 1e-9)
        for step in 21..<600 { controller.recordArrival(rows: 3, bytes: 30, now: at(Double(step) * 0.1)) }
        #expect(abs(controller.rowsPerSecond - 30) < 1e-3)
        #expect(abs(controller.bytesPerSecond - 300) < 1e-2)
        // Rows arriving at the same instant count as a burst, not as an infinite rate.
        controller.recordArrival(rows: 5, bytes: 50, now: at(59.9))
        #expect(controller.rowsPerSecond.isFinite)
        #expect(abs(controller.rowsPerSecond - 31) < 1e-3)  // + 5 rows / 5 s time constant
    }

    @Test func boundsShorterThanTheDefaultsWin() {
        let short = TableRule(strategy: .adaptive, maxRows: 2, maxBytes: 10, maxDelay: .milliseconds(20))
        var controller = AdaptiveController(rule: short)
        controller.recordArrival(rows: 1, bytes: 4, now: at(0))
        #expect(controller.target == AdaptiveTarget(maxRows: 2, maxBytes: 10, maxDelay: .milliseconds(20)))
        controller.recordFlush(rows: 1, bytes: 4, latency: .seconds(30), result: .struggling, now: at(1))
        #expect(controller.target.maxDelay == .milliseconds(20))
        #expect(controller.interval == 0.02)
    }

    @Test func reloadUpdatesOrDropsControllers() {
        var simulation = steady()
        simulation.upstream = { _ in .struggling }
        simulation.run(rows: 50, every: .milliseconds(10), until: at(75))
        #expect(simulation.target.maxDelay == .seconds(5))
        let tighter = TableRule(strategy: .adaptive, maxRows: 3_000, maxBytes: 16 << 20, maxDelay: .seconds(2))
        let sealed = simulation.store.updateRules(now: at(75)) { _ in tighter }
        #expect(simulation.target == AdaptiveTarget(maxRows: 3_000, maxBytes: 399_600, maxDelay: .seconds(2)))
        // The open batch already holds more than 3,000 rows: sealed by the reload.
        #expect(sealed.count == 1 && sealed[0].trigger == .reload)
        let hybrid = TableRule(strategy: .hybrid, maxRows: 100_000, maxDelay: .seconds(1))
        _ = simulation.store.updateRules(now: at(75)) { _ in hybrid }
        #expect(simulation.store.adaptiveTargets().isEmpty)
    }

    @Test func otherStrategiesHaveNoControllerAndIgnoreResults() {
        var store = BatchStore()
        let hybrid = TableRule(strategy: .hybrid, maxRows: 3, maxDelay: .seconds(1))
        let chunk = AdaptiveLoadSimulation.chunk(rows: 1)
        _ = chunk.withUnsafeBytes {
            store.append(
                key: AdaptiveLoadSimulation.key, rule: hybrid, chunk: $0, rows: 1, endsWithNewline: false, now: at(0))
        }
        store.recordFlush(
            table: AdaptiveLoadSimulation.table, rows: 1, bytes: 1, latency: .zero, result: .struggling, now: at(0))
        #expect(store.adaptiveTargets().isEmpty)
        #expect(store.nextDeadline == at(1))
    }

    @Test func idleControllersAreDropped() {
        var simulation = AdaptiveLoadSimulation(rule: rule)
        simulation.run(rows: 1, every: .seconds(10), until: at(1))
        #expect(simulation.store.adaptiveTargets().count == 1)
        _ = simulation.store.sealDue(now: at(300))
        #expect(simulation.store.adaptiveTargets().count == 1)
        _ = simulation.store.sealDue(now: at(700))
        #expect(simulation.store.adaptiveTargets().isEmpty)
    }
}
