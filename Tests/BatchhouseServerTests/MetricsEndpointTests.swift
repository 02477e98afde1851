import BatchhouseEngine
import Foundation
import Testing

@testable import BatchhouseServer

/// What `/metrics` counts per request, through the handler: refusals by reason, answer latency by ack mode, and
/// the JSON view's `metrics` and `calculated` blocks (docs/architecture.md, "Metrics").
@Suite struct MetricsEndpointTests {
    typealias Fixture = RequestHandlerTests.Fixture

    static func post(_ fixture: Fixture, _ body: String, headers: String = "") throws -> String {
        try fixture.exchange(
            "POST / HTTP/1.1\r\nHost: x\r\n\(headers)Content-Length: \(body.utf8.count)\r\n\r\n\(body)")
    }

    /// The value of the sample `series` (name and labels as written) in Prometheus text.
    static func sample(_ text: String, _ series: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    @Test func refusalsAreCountedByReason() throws {
        let fixture = try Fixture(
            """
            limits: { max_request_body: 1KiB, max_buffer_memory: 1000 }
            tables:
              default.big: { max_rows: 1000000 }
            """)
        #expect(try Self.post(fixture, "INSERT INTO t VALUES (1)").hasPrefix("HTTP/1.1 200"))
        #expect(try Self.post(fixture, "INSERT INTO t VALUES ('unterminated").hasPrefix("HTTP/1.1 400"))
        #expect(try Self.post(fixture, "INSERT INTO big VALUES ('" + String(repeating: "x", count: 900) + "')").hasPrefix("HTTP/1.1 503"))
        let mixed = try Self.post(
            fixture, "INSERT INTO t VALUES (2)",
            headers: "X-ClickHouse-User: a\r\nAuthorization: Basic Yjpj\r\n")
        #expect(mixed.hasPrefix("HTTP/1.1 401"))
        // Last: a body too large is not read, and the connection closes after the answer.
        #expect(try Self.post(fixture, "INSERT INTO t VALUES " + String(repeating: "(1),", count: 400)).hasPrefix("HTTP/1.1 413"))
        let text = String(decoding: fixture.engine.prometheusText(), as: UTF8.self)
        for (reason, count) in [
            ("syntax", 1.0), ("limit", 1), ("memory", 1), ("auth", 1), ("spool", 0), ("upstream", 0), ("clickhouse", 0),
            ("other", 0),
        ] {
            #expect(Self.sample(text, "batchhouse_refused_requests_total{reason=\"\(reason)\"}") == count, "\(reason)")
        }
        #expect(Self.sample(text, "batchhouse_requests_total{kind=\"batched_insert\"}") == 1)
        #expect(Self.sample(text, "batchhouse_requests_total{kind=\"rejected\"}") == 4)
        // Only the accepted INSERT has an answer latency, under its ack mode.
        #expect(Self.sample(text, "batchhouse_insert_latency_seconds_count{ack=\"enqueued\"}") == 1)
        #expect(Self.sample(text, "batchhouse_insert_latency_seconds_bucket{ack=\"enqueued\",le=\"+Inf\"}") == 1)
        #expect(Self.sample(text, "batchhouse_insert_latency_seconds_count{ack=\"flushed\"}") == 0)
    }

    @Test func aRequestNIOCannotParseIsCountedAsSyntax() throws {
        let fixture = try Fixture()
        let response = try fixture.exchange("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: banana\r\n\r\n")
        #expect(response.hasPrefix("HTTP/1.1 400"), "\(response)")
        let text = String(decoding: fixture.engine.prometheusText(), as: UTF8.self)
        #expect(Self.sample(text, "batchhouse_refused_requests_total{reason=\"syntax\"}") == 1)
        #expect(Self.sample(text, "batchhouse_requests_total{kind=\"rejected\"}") == 1)
    }

    @Test func theJSONViewHasTheGuidesMetricsAndCalculatedBlocks() throws {
        let fixture = try Fixture()
        for id in 0..<3 { _ = try Self.post(fixture, "INSERT INTO t VALUES (\(id))") }
        _ = try Self.post(fixture, "INSERT INTO t VALUES (")
        let response = try fixture.exchange("GET /metrics?format=json HTTP/1.1\r\nHost: x\r\n\r\n")
        let body = try #require(response.range(of: "\r\n\r\n").map { response[$0.upperBound...] })
        let object = try #require(try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])
        let metrics = try #require(object["metrics"] as? [String: Any])
        let calculated = try #require(object["calculated"] as? [String: Any])
        #expect(object["batching"] is [String: Any])
        #expect(metrics["event_count"] as? Int == 4, "four INSERTs; the local endpoints are not events")
        #expect(metrics["error_count"] as? Int == 1)
        #expect(calculated["error_rate"] as? Double == 0.25)
        #expect((metrics["avg_latency_ms"] as? Double).map { $0 >= 0 } == true)
        #expect(metrics["connection_count"] as? Int == 0, "an EmbeddedChannel is not counted as accepted")
        #expect(metrics["health_status"] as? String == "initializing")
        let start = try #require(metrics["start_time_unix"] as? Double)
        #expect(abs(start - Date().timeIntervalSince1970) < 600)
        #expect(metrics["uptime_seconds"] is Double || metrics["uptime_seconds"] is Int)
        #expect(calculated["events_per_second"] is Double || calculated["events_per_second"] is Int)
        #expect(calculated["batch_success_rate"] != nil)
    }

    @Test func prometheusTextHasTheHealthStatusAndTheMemoryBound() throws {
        let fixture = try Fixture("limits: { max_buffer_memory: 1MiB }")
        _ = try Self.post(fixture, "INSERT INTO t VALUES (1)")
        let text = try fixture.exchange("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(Self.sample(text, "batchhouse_health_status{status=\"initializing\"}") == 1)
        #expect(Self.sample(text, "batchhouse_health_status{status=\"healthy\"}") == 0)
        #expect(Self.sample(text, "batchhouse_memory_limit_bytes") == 1_048_576)
        #expect((Self.sample(text, "batchhouse_memory_in_use_bytes") ?? 0) > 0, "the open batch's row")
        #expect(Self.sample(text, "batchhouse_upstream_breaker_state{upstream=\"http://127.0.0.1:9\"}") == 0)
        #expect(Self.sample(text, "batchhouse_upstream_up{upstream=\"http://127.0.0.1:9\"}") == nil, "not checked yet")
        #expect(Self.sample(text, "batchhouse_spool_max_bytes") == nil, "no spool")
    }
}
