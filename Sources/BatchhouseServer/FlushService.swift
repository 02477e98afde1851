import BatchhouseCore
import BatchhouseEngine
import Logging
import ServiceLifecycle

/// Seals batches when their `max_delay` passes and runs the delivery workers. On graceful shutdown (after the
/// HTTP server has drained, since it is started before it and so stopped after it) it seals every open batch,
/// sends them all, and returns when the delivery queue is empty.
final class FlushService: Service, Sendable {
    private let engine: BatchhouseEngine
    private let logger: Logger
    /// Longest sleep between deadline checks, so a batch opened during a sleep is not held much past its deadline.
    private let maxTick: Duration

    init(engine: BatchhouseEngine, logger: Logger, maxTick: Duration = .milliseconds(20)) {
        self.engine = engine
        self.logger = logger
        self.maxTick = maxTick
    }

    func run() async throws {
        let delivery = engine.delivery
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await delivery.run() }
            // Batches that were being sent when the process last stopped: asked about before they go again.
            group.addTask { await self.engine.settleInDoubt() }
            // The target tables of aggregate rules: checked once a server answers, and again after reloads.
            let checks = Task { await self.engine.checkAggregateTargets() }
            await withGracefulShutdownHandler {
                await self.tickUntilShutdown()
            } onGracefulShutdown: {}
            checks.cancel()
            engine.drain()
            await group.waitForAll()
            logger.info("flush queue empty")
        }
    }

    private func tickUntilShutdown() async {
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            var sleep = maxTick
            if let next = engine.flushDue() {
                sleep = min(max(next - engine.buffering.now(), .milliseconds(1)), maxTick)
            }
            try? await Task.sleep(for: sleep)
        }
    }
}
