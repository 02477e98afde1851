import BatchhouseConfig
import BatchhouseCore
import BatchhouseEngine
import BatchhouseSpool
import BatchhouseUpstream
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// The composition root: opens the spool, builds the engine and the HTTP server from a configuration, and hands
/// out the services to run. `services` go into one `ServiceGroup`, ordered so that graceful shutdown stops the
/// HTTP server first (no new requests, in-flight ones finish), then the flush service (every buffer is sent),
/// then the health checks (docs/architecture.md, "Threads and shutdown").
public final class BatchhouseApplication: Sendable {
    let engine: BatchhouseEngine
    let logger: Logger
    private let client: CurlClient
    private let eventLoopGroup: MultiThreadedEventLoopGroup
    private let server: HTTPServer
    private let flushService: FlushService
    private let healthService: HealthService

    /// One event loop per core. (Measured on 2 cores with wrk on the same machine, `scripts/bench` with
    /// `BATCHHOUSE_ARGS="--threads 1"`: one loop matched two on plain inserts but lost with the spool,
    /// 0.38 vs 0.49 of nginx, where each request also writes the spool on its loop.)
    public static var defaultEventLoopThreads: Int { System.coreCount }

    /// Opens the spool (if configured) and puts every row it holds that ClickHouse does not have yet back into
    /// batches, so they are sent before or alongside new rows.
    /// `fastPath`: false sends every request through NIO's codec (`--no-fast-path`).
    public init(
        configuration: BatchhouseConfiguration, logger: Logger, eventLoopThreads: Int? = nil, fastPath: Bool = true
    ) throws {
        var spool: Spool?
        var recovery: SpoolRecovery?
        // Identity tags: keyed by a key kept in the spool (stable across restarts, like the batches it holds),
        // else by one made for this process (docs/credentials.md, "Identity tags").
        var identityTags = IdentityTags.random()
        if let spoolConfiguration = configuration.spool {
            do {
                (spool, recovery) = try Spool.open(directory: spoolConfiguration.dir, maxSize: spoolConfiguration.maxSize)
            } catch {
                throw BatchhouseStartupError(message: "cannot open the spool in \(spoolConfiguration.dir): \(error)")
            }
            do {
                identityTags = try IdentityTags.load(directory: spoolConfiguration.dir)
            } catch {
                spool?.close()
                throw BatchhouseStartupError(message: "cannot use the identity key: \(error)")
            }
        }
        let threads = eventLoopThreads ?? Self.defaultEventLoopThreads
        eventLoopGroup = MultiThreadedEventLoopGroup(numberOfThreads: max(1, threads))
        self.logger = logger
        client = CurlClient(maxConnections: max(64, configuration.upstream.maxConcurrentFlushes * 4))
        engine = BatchhouseEngine(
            configuration: configuration, transport: client, spool: spool, logger: logger, identityTags: identityTags)
        if let armed = CrashPoints.description {
            logger.warning("test hook armed: the process will kill itself", metadata: ["crash_at": "\(armed)"])
        }
        if let recovery { engine.restore(recovery) }
        let serving = ServingState()
        server = HTTPServer(
            host: configuration.listen.host, port: configuration.listen.port, group: eventLoopGroup,
            handler: RequestHandler.Dependencies(
                intake: engine.intake, configuration: engine.configuration, gateway: engine.gateway, client: client,
                metrics: engine.metrics, endpoints: LocalEndpoints(engine: engine, serving: serving),
                buffering: engine.buffering, engine: engine, sessions: SessionRegistry(), fastPath: fastPath),
            serving: serving, logger: logger)
        flushService = FlushService(engine: engine, logger: logger)
        healthService = HealthService(gateway: engine.gateway, logger: logger)
    }

    /// In start order; a `ServiceGroup` stops them in reverse.
    public var services: [any Service] { [healthService, flushService, server] }

    /// The port the server listens on, once it does (nil if binding failed).
    public func waitUntilListening() async -> Int? {
        await server.waitUntilBound()
    }

    /// Applies a new configuration to the running proxy (hot reload); returns notes on what could not change
    /// without a restart.
    @discardableResult
    public func apply(_ new: BatchhouseConfiguration) -> [String] {
        engine.apply(new)
    }

    /// A service that reloads `path` on SIGHUP and when the file changes (checked every `pollInterval`).
    /// `overrides` re-applies command-line options to each new file.
    public func configurationWatcher(
        path: String, pollInterval: Duration = .seconds(1),
        environment: @escaping @Sendable () -> [String: String] = { ProcessInfo.processInfo.environment },
        overrides: @escaping @Sendable (inout BatchhouseConfiguration) -> Void = { _ in }
    ) -> any Service {
        ConfigurationWatcher(
            path: path, engine: engine, logger: logger, pollInterval: pollInterval, environment: environment,
            overrides: overrides)
    }

    /// Stops the upstream client's thread; call after the service group has finished.
    public func shutdown() {
        client.shutdown()
        engine.spool?.close()
        eventLoopGroup.shutdownGracefully { _ in }
    }
}

/// Why the proxy could not start (a spool that cannot be opened, ...).
public struct BatchhouseStartupError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}
