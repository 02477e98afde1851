import BatchhouseCore
import Logging
import ServiceLifecycle

/// Seals batches when their `max_delay` passes and runs the flusher's workers. On graceful shutdown
/// (after the HTTP server has drained, since it is started first and stopped last) it seals every open batch,
/// sends them all, and returns when the flush queue is empty.
final class FlushService: Service, Sendable {
    private let app: AppContext
    private let logger: Logger
    /// Longest sleep between deadline checks, so a batch opened during a sleep is not held much past its deadline.
    private let maxTick: Duration

    init(app: AppContext, logger: Logger, maxTick: Duration = .milliseconds(20)) {
        self.app = app
        self.logger = logger
        self.maxTick = maxTick
    }

    func run() async throws {
        let app = self.app
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await app.flusher.run() }
            let health = Task {
                // Upstream health: every server pinged every 5 s feeds its circuit breaker.
                while !Task.isCancelled {
                    await app.sender.checkHealth()
                    app.healthChecked()
                    if app.sender.capabilities.withLock({ $0 == nil }) {
                        _ = await app.sender.probeVersion(logger: app.logger)
                    }
                    try? await Task.sleep(for: .seconds(5))
                }
            }
            await withGracefulShutdownHandler {
                await self.tickUntilShutdown()
            } onGracefulShutdown: {}
            health.cancel()
            let rows = app.batcher.bufferedRows
            logger.info("flushing everything before exit", metadata: ["buffered_rows": "\(rows)"])
            app.batcher.flushAll(trigger: .shutdown)
            app.flusher.close()
            await group.waitForAll()
            logger.info("flush queue empty")
        }
    }

    private func tickUntilShutdown() async {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            let next = app.batcher.flushDue()
            var sleep = maxTick
            if let next {
                let untilNext = next - app.batcher.now()
                sleep = min(max(untilNext, .milliseconds(1)), maxTick)
            }
            try? await Task.sleep(for: sleep)
        }
    }
}
