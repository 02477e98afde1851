import BatchhouseCore
import BatchhouseEngine
import Foundation
import Synchronization

/// `/ping`, `/health` and `/metrics`, answered by the proxy itself.
enum LocalEndpoint: String, Sendable {
    case ping = "/ping"
    case health = "/health"
    case metrics = "/metrics"

    init?(path: Substring) {
        self.init(rawValue: String(path))
    }
}

/// Whether the proxy takes new work: false once graceful shutdown began, so `/ping` answers 503 and load balancers
/// move away while connections drain.
final class ServingState: Sendable {
    private let accepting = Atomic<Bool>(true)

    var isAccepting: Bool { accepting.load(ordering: .relaxed) }

    func stopAccepting() { accepting.store(false, ordering: .relaxed) }
}

/// The answers of `/ping`, `/health` and `/metrics`, from the engine's figures.
final class LocalEndpoints: Sendable {
    struct Response {
        var status: Int
        var contentType: String
        var body: [UInt8]
    }

    private let engine: BatchhouseEngine
    private let serving: ServingState

    init(engine: BatchhouseEngine, serving: ServingState) {
        self.engine = engine
        self.serving = serving
    }

    func respond(_ endpoint: LocalEndpoint, query: Substring, acceptHeader: String?) -> Response {
        switch endpoint {
        case .ping:
            if serving.isAccepting {
                return Response(status: 200, contentType: "text/plain; charset=UTF-8", body: Array("Ok.\n".utf8))
            }
            return Response(
                status: 503, contentType: "text/plain; charset=UTF-8",
                body: Array(ClickHouseError.shuttingDown.body.utf8))
        case .health:
            return health(engine.status())
        case .metrics:
            let wantsJSON =
                QueryString.parse(query).contains { $0.name == "format" && $0.value.lowercased() == "json" }
                || (acceptHeader?.contains("application/json") ?? false)
            let status = engine.status()
            if wantsJSON { return metricsJSON(status) }
            return Response(
                status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8",
                body: engine.prometheusText(health: healthStatus(status)))
        }
    }

    /// `initializing` until the first health check; `healthy` when every server answers `/ping` and no breaker
    /// is open; `degraded` when some are down; `unhealthy` (503) when none can take inserts; `disconnected`
    /// once shutdown began.
    private func healthStatus(_ status: BatchhouseEngine.Status) -> String {
        let servers = status.upstreams
        let usable = servers.filter { $0.state != .open && $0.healthy != false }.count
        if !serving.isAccepting { return "disconnected" }
        if !status.hasCheckedHealth { return "initializing" }
        if usable == servers.count { return "healthy" }
        return usable > 0 ? "degraded" : "unhealthy"
    }

    private func health(_ status: BatchhouseEngine.Status) -> Response {
        let servers = status.upstreams
        let state = healthStatus(status)
        let object: [String: Any] = [
            "status": state,
            "upstreams": servers.map { server -> [String: Any] in
                [
                    "url": redacted(server.url), "breaker": server.state.rawValue, "in_flight": server.inFlight,
                    "healthy": server.healthy.map { $0 as Any } ?? NSNull(),
                ]
            },
            "buffered_rows": status.bufferedRows,
            // Open batches and sealed ones waiting for delivery, in memory or in the spool: everything not yet in
            // ClickHouse.
            "buffered_bytes": status.bufferedBytes + status.queuedBytes + status.backlogBytes,
            "queued_bytes": status.queuedBytes + status.backlogBytes,
            "backlog_bytes": status.backlogBytes,
            "spool_bytes": status.spoolBytes,
            "uptime_seconds": status.uptime.seconds.rounded(),
        ]
        let body = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
        let failing = state == "unhealthy" || state == "disconnected"
        return Response(status: failing ? 503 : 200, contentType: "application/json", body: Array(body))
    }

    private func metricsJSON(_ status: BatchhouseEngine.Status) -> Response {
        let totals = status.totals
        let uptime = max(status.uptime.seconds, 0.001)
        let attempts = totals.batches + totals.failedBatches
        var batching: [String: Any] = [
            "total_batches": totals.batches,
            "total_items": totals.rowsFlushed,
            "failed_batches": totals.failedBatches,
            "avg_batch_size": totals.batches > 0 ? Double(totals.rowsFlushed) / Double(totals.batches) : 0,
            "avg_flush_latency_ms": totals.batches > 0 ? totals.flushLatencySeconds * 1000 / Double(totals.batches) : 0,
            "queued_items": status.bufferedRows,
            "memory_usage_mb": Double(status.memoryInUse) / 1_048_576,
        ]
        if let last = totals.lastFlushUnixSeconds {
            batching["last_flush_time"] = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: last))
        } else {
            batching["last_flush_time"] = NSNull()
        }
        // Events: requests other than those of the local endpoints; errors: those answered with an error
        // (batchhouse_refused_requests_total). Latency: an INSERT's head to its ack.
        let requests = status.requests
        let metrics: [String: Any] = [
            "event_count": requests.events,
            "error_count": requests.errors,
            "avg_latency_ms": requests.answered > 0 ? requests.answerSeconds * 1000 / Double(requests.answered) : 0,
            "connection_count": status.connections,
            "health_status": healthStatus(status),
            "start_time_unix": status.startTimeUnix,
            "uptime_seconds": status.uptime.seconds.rounded(),
        ]
        let object: [String: Any] = [
            "batching": batching,
            "metrics": metrics,
            "calculated": [
                "batch_success_rate": attempts > 0 ? Double(totals.batches) / Double(attempts) : 1.0,
                "events_per_second": Double(requests.events) / uptime,
                "error_rate": requests.events > 0 ? Double(requests.errors) / Double(requests.events) : 0,
            ],
        ]
        let body = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
        return Response(status: 200, contentType: "application/json", body: Array(body))
    }
}
