import BatchhouseConfig
import BatchhouseCore
import Foundation

@testable import BatchhouseEngine
import Synchronization
import Testing

/// The per-table histograms and the counters moved per batch or per thread (docs/architecture.md, "Metrics").
@Suite struct MetricsTests {
    /// The value of the sample `series` (name and labels as written) in Prometheus text.
    static func sample(_ text: String, _ series: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    static func text(_ fixture: EngineFixture) -> String {
        String(decoding: fixture.engine.prometheusText(), as: UTF8.self)
    }

    @Test func batchSizeFlushLatencyAndTimeInBufferArePerTable() async throws {
        let fixture = try EngineFixture("tables:\n  db.a: { max_delay: 5s }\n  db.b: { max_delay: 5s }\n")
        fixture.insert("INSERT INTO db.a VALUES (1)")
        fixture.clock.advance(by: .seconds(2))
        fixture.insert("INSERT INTO db.a VALUES (2),(3)")
        fixture.insert("INSERT INTO db.b VALUES (9)")
        await fixture.drain()
        let text = Self.text(fixture)
        #expect(Self.sample(text, "batchhouse_batch_rows_count{table=\"db.a\"}") == 1)
        #expect(Self.sample(text, "batchhouse_batch_rows_sum{table=\"db.a\"}") == 3)
        #expect(Self.sample(text, "batchhouse_batch_rows_bucket{table=\"db.a\",le=\"1.0\"}") == 0)
        #expect(Self.sample(text, "batchhouse_batch_rows_bucket{table=\"db.a\",le=\"10.0\"}") == 1)
        #expect(Self.sample(text, "batchhouse_batch_rows_sum{table=\"db.b\"}") == 1)
        let bytes = try #require(Self.sample(text, "batchhouse_batch_bytes_sum{table=\"db.a\"}"))
        #expect(bytes == Self.sample(text, "batchhouse_received_bytes_total{table=\"db.a\"}"), "the same rows")
        // db.a's first row waited 2 s for the drain that sealed it; db.b's row none.
        #expect(Self.sample(text, "batchhouse_time_in_buffer_seconds_sum{table=\"db.a\"}") == 2)
        #expect(Self.sample(text, "batchhouse_time_in_buffer_seconds_bucket{table=\"db.a\",le=\"1.0\"}") == 0)
        #expect(Self.sample(text, "batchhouse_time_in_buffer_seconds_bucket{table=\"db.a\",le=\"2.5\"}") == 1)
        #expect(Self.sample(text, "batchhouse_time_in_buffer_seconds_sum{table=\"db.b\"}") == 0)
        #expect(Self.sample(text, "batchhouse_flush_duration_seconds_count{table=\"db.a\"}") == 1)
        #expect(Self.sample(text, "batchhouse_flush_duration_seconds_count{table=\"db.b\"}") == 1)
    }

    @Test func aSplitBatchCountsEachInsertItsPartsMadeAndItsWaitOnce() async throws {
        let transport = ScriptedTransport { _, body in
            body.contains("'oops'") ? .error(status: 500, code: 27, message: "Cannot parse input") : .ok
        }
        let fixture = try EngineFixture(transport: transport)
        fixture.insert("INSERT INTO t VALUES (1)")
        fixture.insert("INSERT INTO t VALUES ('oops')")
        fixture.insert("INSERT INTO t VALUES (3),(4)")
        await fixture.drain()
        let text = Self.text(fixture)
        // Whole (refused), then [1] landed and ['oops', 3 4] refused, then ['oops'] refused and [3 4] landed.
        #expect(Self.sample(text, "batchhouse_batch_rows_count{table=\"default.t\"}") == 2)
        #expect(Self.sample(text, "batchhouse_batch_rows_sum{table=\"default.t\"}") == 3)
        #expect(Self.sample(text, "batchhouse_time_in_buffer_seconds_count{table=\"default.t\"}") == 1)
        #expect(Self.sample(text, "batchhouse_flushed_rows_total{table=\"default.t\"}") == 3)
    }

    @Test func receivedRowsCountOpenAndSealedRowsOnceAndOnlyGrow() async throws {
        let fixture = try EngineFixture()
        fixture.insert("INSERT INTO db.m VALUES (1),(2)")
        #expect(Self.sample(Self.text(fixture), "batchhouse_received_rows_total{table=\"db.m\"}") == 2, "open rows count")
        await fixture.drain()
        fixture.insert("INSERT INTO db.m VALUES (3)")
        fixture.insert("INSERT INTO db.n VALUES (4)")
        let text = Self.text(fixture)
        #expect(Self.sample(text, "batchhouse_received_rows_total{table=\"db.m\"}") == 3, "two sealed, one open")
        #expect(Self.sample(text, "batchhouse_received_rows_total{table=\"db.n\"}") == 1)
        #expect(Self.sample(text, "batchhouse_received_bytes_total{table=\"db.n\"}") == 3)
        await fixture.drain()
        #expect(Self.sample(Self.text(fixture), "batchhouse_received_rows_total{table=\"db.m\"}") == 3, "sealed: not twice")
    }

    @Test func theBreakerStateAndItsOpeningsArePerUpstream() async throws {
        let transport = ScriptedTransport { index, _ in index < 5 ? .failure(.connect) : .ok }
        let fixture = try EngineFixture(transport: transport)
        let series = "{upstream=\"http://upstream.test:8123\"}"
        #expect(Self.sample(Self.text(fixture), "batchhouse_upstream_breaker_state" + series) == 0)
        _ = await fixture.engine.delivery.deliver(valuesBatch(id: 1, rows: 2, rule: TableRule(retries: 4)))
        var text = Self.text(fixture)
        #expect(Self.sample(text, "batchhouse_upstream_breaker_state" + series) == 2, "open")
        #expect(Self.sample(text, "batchhouse_upstream_breaker_openings_total" + series) == 1)
        fixture.clock.advance(by: .seconds(30))
        #expect(Self.sample(Self.text(fixture), "batchhouse_upstream_breaker_state" + series) == 1, "half-open")
        _ = await fixture.engine.delivery.deliver(valuesBatch(id: 2, rows: 1))
        text = Self.text(fixture)
        #expect(Self.sample(text, "batchhouse_upstream_breaker_state" + series) == 0, "closed by the trial insert")
        #expect(Self.sample(text, "batchhouse_upstream_breaker_openings_total" + series) == 1, "counted once")
    }

    /// Two scrapes at once: one reads 100, the other 150 and updates first; the older reading arrives last.
    @Test func anOlderReadingArrivingLastAddsNothing() {
        let metrics = BatchhouseMetrics()
        metrics.updateReceived(["db.m": (rows: 80, bytes: 800)])
        metrics.updateReceived(["db.m": (rows: 150, bytes: 1500)])
        metrics.updateReceived(["db.m": (rows: 100, bytes: 1000)])
        metrics.updateReceived(["db.m": (rows: 150, bytes: 1500)])
        metrics.updateBreakerOpenings([("http://one.test:8123", 3)])
        metrics.updateBreakerOpenings([("http://one.test:8123", 2)])
        metrics.updateBreakerOpenings([("http://one.test:8123", 3)])
        let text = String(decoding: metrics.prometheusText(), as: UTF8.self)
        #expect(Self.sample(text, "batchhouse_received_rows_total{table=\"db.m\"}") == 150)
        #expect(Self.sample(text, "batchhouse_received_bytes_total{table=\"db.m\"}") == 1500)
        #expect(Self.sample(text, "batchhouse_upstream_breaker_openings_total{upstream=\"http://one.test:8123\"}") == 3)
    }

    @Test func aServerAReloadRemovedLosesItsSeries() throws {
        let fixture = try EngineFixture(
            upstream: "{ servers: [\"http://one.test:8123\", \"http://two.test:8123\"], compression: none }")
        var text = Self.text(fixture)
        #expect(Self.sample(text, "batchhouse_upstream_breaker_state{upstream=\"http://two.test:8123\"}") == 0)
        #expect(Self.sample(text, "batchhouse_upstream_breaker_openings_total{upstream=\"http://two.test:8123\"}") == 0)
        var configuration = fixture.engine.configuration.value
        configuration.upstream.servers = ["http://one.test:8123"]
        _ = fixture.engine.apply(configuration)
        text = Self.text(fixture)
        #expect(Self.sample(text, "batchhouse_upstream_breaker_state{upstream=\"http://one.test:8123\"}") == 0)
        #expect(!text.contains("two.test"), "\(text)")
    }

    @Test func theIndexesOfTheCountersFollowTheirCases() {
        for (index, reason) in RefusalReason.allCases.enumerated() { #expect(reason.index == index) }
        for (index, kind) in BatchhouseMetrics.RequestKind.allCases.enumerated() { #expect(kind.index == index) }
    }

    @Test func requestCountersFromManyThreadsAddUpAndMetricsStayApart() async throws {
        let metrics = BatchhouseMetrics()
        let other = BatchhouseMetrics()
        let threads = 4
        let perThread = 10_000
        let done = Atomic<Int>(0)
        for _ in 0..<threads {
            Thread.detachNewThread {
                for index in 0..<perThread {
                    metrics.request(.batchedInsert)
                    if index % 2 == 0 { other.request(.batchedInsert) }
                    metrics.answered(ack: .durable, nanoseconds: 3_000_000)
                    if index % 100 == 0 { metrics.refused(.memory) }
                }
                done.add(1, ordering: .releasing)
            }
        }
        while done.load(ordering: .acquiring) < threads { try await Task.sleep(for: .milliseconds(5)) }
        let figures = metrics.requestFigures
        #expect(figures.requests[.batchedInsert] == threads * perThread)
        #expect(figures.refused[.memory] == threads * perThread / 100)
        #expect(figures.answered == threads * perThread)
        #expect(abs(figures.answerSeconds - Double(threads * perThread) * 0.003) < 1e-6)
        #expect(other.requestFigures.requests[.batchedInsert] == threads * perThread / 2)
        let text = String(decoding: metrics.prometheusText(), as: UTF8.self)
        #expect(Self.sample(text, "batchhouse_requests_total{kind=\"batched_insert\"}") == Double(threads * perThread))
        // 3 ms falls in the 5 ms bucket, not the 2.5 ms one.
        #expect(Self.sample(text, "batchhouse_insert_latency_seconds_bucket{ack=\"durable\",le=\"0.0025\"}") == 0)
        #expect(Self.sample(text, "batchhouse_insert_latency_seconds_bucket{ack=\"durable\",le=\"0.005\"}") == Double(threads * perThread))
    }
}
