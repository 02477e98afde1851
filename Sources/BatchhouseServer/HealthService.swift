import BatchhouseEngine
import Logging
import ServiceLifecycle

/// Upstream health: every server is pinged every `interval`, which feeds its circuit breaker, and the upstream's
/// version is asked until it is known (it decides which settings may be sent). Stops on graceful shutdown.
final class HealthService: Service, Sendable {
    private let gateway: UpstreamGateway
    private let logger: Logger
    private let interval: Duration

    init(gateway: UpstreamGateway, logger: Logger, interval: Duration = .seconds(5)) {
        self.gateway = gateway
        self.logger = logger
        self.interval = interval
    }

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await self.gateway.checkHealth()
                if self.gateway.capabilities == nil {
                    await self.gateway.probeVersion(logger: self.logger)
                }
                try? await Task.sleep(for: self.interval)
            }
        }
    }
}
