import BatchhouseCore
import Foundation
import NIOCore
import NIOHTTP1

/// `/ping`, `/health` and `/metrics`, answered by the proxy itself.
enum LocalEndpoint: String, Sendable {
    case ping = "/ping"
    case health = "/health"
    case metrics = "/metrics"

    init?(path: Substring) {
        self.init(rawValue: String(path))
    }

    struct Response {
        var status: HTTPResponseStatus
        var contentType: String
        var body: [UInt8]
    }

    func respond(query: Substring, acceptHeader: String?, app: AppContext) -> Response {
        switch self {
        case .ping:
            if app.isAcceptingInserts {
                return Response(status: .ok, contentType: "text/plain; charset=UTF-8", body: Array("Ok.\n".utf8))
            }
            return Response(
                status: .serviceUnavailable, contentType: "text/plain; charset=UTF-8",
                body: Array(ClickHouseError.shuttingDown.body.utf8))
        case .health:
            return health(app)
        case .metrics:
            let wantsJSON =
                QueryString.parse(query).contains { $0.name == "format" && $0.value.lowercased() == "json" }
                || (acceptHeader?.contains("application/json") ?? false)
            app.metrics.updateBuffered(app.batcher.bufferedByTable())
            app.metrics.updateAdaptiveTargets(app.batcher.adaptiveTargets())
            if let spool = app.spool {
                app.metrics.updateSpool(bytes: spool.sizeBytes, undeliveredChunks: spool.undeliveredChunks)
            }
            if wantsJSON { return metricsJSON(app) }
            return Response(
                status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8",
                body: app.metrics.prometheusText())
        }
    }

    /// `initializing` until the first health check; `healthy` when every server answers `/ping` and no breaker
    /// is open; `degraded` when some are down; `unhealthy` (503) when none can take inserts; `disconnected`
    /// once shutdown began.
    private func health(_ app: AppContext) -> Response {
        let now = app.sender.clock.now()
        let servers = app.sender.pool.withLock { $0.states(now: now) }
        let usable = servers.filter { $0.state != .open && $0.healthy != false }.count
        let status: String
        if !app.isAcceptingInserts {
            status = "disconnected"
        } else if !app.hasCheckedHealth {
            status = "initializing"
        } else if usable == servers.count {
            status = "healthy"
        } else if usable > 0 {
            status = "degraded"
        } else {
            status = "unhealthy"
        }
        let object: [String: Any] = [
            "status": status,
            "upstreams": servers.map { server -> [String: Any] in
                [
                    "url": redacted(server.url), "breaker": server.state.rawValue, "in_flight": server.inFlight,
                    "healthy": server.healthy.map { $0 as Any } ?? NSNull(),
                ]
            },
            "buffered_rows": app.batcher.bufferedRows,
            "buffered_bytes": app.batcher.bufferedBytes,
            "spool_bytes": app.spool?.sizeBytes ?? 0,
            "uptime_seconds": (ContinuousClock.now - app.startedAt).seconds.rounded(),
        ]
        let body = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
        let failing = status == "unhealthy" || status == "disconnected"
        return Response(status: failing ? .serviceUnavailable : .ok, contentType: "application/json", body: Array(body))
    }

    private func metricsJSON(_ app: AppContext) -> Response {
        let totals = app.metrics.snapshot
        let uptime = max((ContinuousClock.now - app.startedAt).seconds, 0.001)
        let attempts = totals.batches + totals.failedBatches
        var batching: [String: Any] = [
            "total_batches": totals.batches,
            "total_items": totals.rowsFlushed,
            "failed_batches": totals.failedBatches,
            "avg_batch_size": totals.batches > 0 ? Double(totals.rowsFlushed) / Double(totals.batches) : 0,
            "avg_flush_latency_ms": totals.batches > 0 ? totals.flushLatencySeconds * 1000 / Double(totals.batches) : 0,
            "queued_items": app.batcher.bufferedRows,
            "memory_usage_mb": Double(app.batcher.memoryInUse) / 1_048_576,
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
        return Response(status: .ok, contentType: "application/json", body: Array(body))
    }
}

/// A server URL without any `user:password@` part.
func redacted(_ url: String) -> String {
    guard let scheme = url.range(of: "://"), let at = url[scheme.upperBound...].firstIndex(of: "@") else { return url }
    return String(url[..<scheme.upperBound]) + String(url[url.index(after: at)...])
}
