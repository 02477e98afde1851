import BatchhouseEngine
import Logging
import ServiceLifecycle

/// Upstream health: every server is pinged every `interval` (every `recoveryInterval` while one is down), which feeds its circuit breaker, and the upstream's
/// version is asked until it is known (it decides which settings may be sent). Stops on graceful shutdown.
final class HealthService: Service, Sendable {
    private let gateway: UpstreamGateway
    private let logger: Logger
    private let interval: Duration
    private let recoveryInterval: Duration

    init(
        gateway: UpstreamGateway, logger: Logger, interval: Duration = .seconds(5),
        recoveryInterval: Duration = .seconds(1)
    ) {
        self.gateway = gateway
        self.logger = logger
        self.interval = interval
        self.recoveryInterval = recoveryInterval
    }

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await self.gateway.checkHealth()
                if self.gateway.capabilities == nil {
                    await self.gateway.probeVersion(logger: self.logger)
                }
                // While a server is down or failing, every second: a recovered ClickHouse gets load again
                // within about a second (docs/delivery.md, "Breakers").
                try? await Task.sleep(for: self.gateway.isDegraded ? min(self.interval, self.recoveryInterval) : self.interval)
            }
        }
    }
}
