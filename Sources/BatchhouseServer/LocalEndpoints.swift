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
            if wantsJSON { return metricsJSON(engine.status()) }
            return Response(
                status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: engine.prometheusText())
        }
    }

    /// `initializing` until the first health check; `healthy` when every server answers `/ping` and no breaker
    /// is open; `degraded` when some are down; `unhealthy` (503) when none can take inserts; `disconnected`
    /// once shutdown began.
    private func health(_ status: BatchhouseEngine.Status) -> Response {
        let servers = status.upstreams
        let usable = servers.filter { $0.state != .open && $0.healthy != false }.count
        let state: String
        if !serving.isAccepting {
            state = "disconnected"
        } else if !status.hasCheckedHealth {
            state = "initializing"
        } else if usable == servers.count {
            state = "healthy"
        } else if usable > 0 {
            state = "degraded"
        } else {
            state = "unhealthy"
        }
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
        let object: [String: Any] = [
            "batching": batching,
            "calculated": [
                "batch_success_rate": attempts > 0 ? Double(totals.batches) / Double(attempts) : 1.0,
                "events_per_second": Double(totals.rowsReceived) / uptime,
            ],
        ]
        let body = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
        return Response(status: 200, contentType: "application/json", body: Array(body))
    }
}
