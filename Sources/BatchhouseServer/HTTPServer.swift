import BatchhouseEngine
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Synchronization

/// The listening socket and its connections. On graceful shutdown it stops accepting, lets each connection
/// finish the request it is in (NIO's pipelining handler closes idle ones on the quiesce event), and waits for
/// them to close, up to `drainTimeout`.
final class HTTPServer: Service, Sendable {
    private let host: String
    private let port: Int
    private let group: any EventLoopGroup
    private let handlerDependencies: RequestHandler.Dependencies
    private let serving: ServingState
    private let logger: Logger
    private let drainTimeout: Duration
    private let connections = Mutex<[ObjectIdentifier: any Channel]>([:])
    private let boundPort = Mutex<Int?>(nil)
    private let bound = AsyncStream<Int>.makeStream()

    init(
        host: String, port: Int, group: any EventLoopGroup, handler: RequestHandler.Dependencies, serving: ServingState,
        logger: Logger, drainTimeout: Duration = .seconds(30)
    ) {
        self.host = host
        self.port = port
        self.group = group
        self.handlerDependencies = handler
        self.serving = serving
        self.logger = logger
        self.drainTimeout = drainTimeout
    }

    /// The port actually bound (useful with port 0); waits until the socket is listening.
    func waitUntilBound() async -> Int? {
        if let port = boundPort.withLock({ $0 }) { return port }
        for await port in bound.stream { return port }
        return boundPort.withLock { $0 }
    }

    /// One connection's pipeline, set up in one synchronous step: the fast path, the raw-bytes watcher, NIO's
    /// HTTP/1.1 codec with pipelining assistance and error handling, then the request handler.
    static func configure(_ channel: any Channel, dependencies: RequestHandler.Dependencies) throws {
        var fastPath: FastPathHandler?
        if dependencies.fastPath {
            let handler = FastPathHandler(
                intake: dependencies.intake, configuration: dependencies.configuration, metrics: dependencies.metrics)
            try channel.pipeline.syncOperations.addHandler(handler)
            fastPath = handler
        }
        let clientBytes = ClientBytesHandler()
        try channel.pipeline.syncOperations.addHandler(clientBytes)
        // No outbound header validator: the proxy's own headers are constants, and the headers it relays from
        // ClickHouse are checked by `HeaderPolicy.areValidToSend` (the validator cost ~5% of the CPU of a batched
        // INSERT).
        // No automatic framing headers either: the encoder would rewrite a relayed `Transfer-Encoding: chunked` as
        // `transfer-encoding`. Every response the proxy writes carries its own Content-Length, and a relayed one
        // keeps ClickHouse's framing (`HeaderPolicy.relayedStreamHeaders`).
        var encoder = HTTPResponseEncoder.Configuration()
        encoder.automaticallySetFramingHeaders = false
        try channel.pipeline.syncOperations.configureHTTPServerPipeline(
            withPipeliningAssistance: true, withErrorHandling: true, withOutboundHeaderValidation: false,
            withEncoderConfiguration: encoder)
        let requestHandler = RequestHandler(dependencies, clientBytes: clientBytes)
        try channel.pipeline.syncOperations.addHandler(requestHandler)
        fastPath?.requestHandler = requestHandler
    }

    /// How long accepting pauses after accept(2) failed (EMFILE, ENFILE, ...). Without a pause the listening
    /// socket stays readable and the event loop retries accept(2) at once, forever (measured: 17,000 failed
    /// accept4 calls in 2 s at the file limit, a core at 60-100%). See `AcceptPauseHandler`.
    static let acceptBackoff: TimeAmount = .milliseconds(200)

    func run() async throws {
        let dependencies = handlerDependencies
        let metrics = dependencies.metrics
        let configuration = dependencies.configuration
        let logger = self.logger
        if let (before, after) = FileDescriptorLimit.raiseSoftLimit(), after != before {
            logger.notice("raised the open file limit", metadata: ["from": "\(before)", "to": "\(after)"])
        }
        let (ceiling, lingeringRefusals) = FileDescriptorLimit.connectionBudget()
        let configured = configuration.snapshot.value.limits.maxConnections
        if configured > ceiling {
            logger.warning(
                "limits.max_connections is above what the open file limit allows; capped",
                metadata: ["max_connections": "\(configured)", "capped_to": "\(ceiling)"])
        }
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let log = AcceptErrorLog(logger: logger)
                    try channel.pipeline.syncOperations.addHandler(
                        AcceptPauseHandler(
                            pause: Self.acceptBackoff, metrics: metrics,
                            ceiling: {
                                // Past the lingering refusals, as many again are refused and closed at once.
                                min(configuration.snapshot.value.limits.maxConnections, ceiling) + 2 * lingeringRefusals
                            },
                            failed: { error in
                                metrics.acceptFailed()
                                log.failed(error)
                            }))
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { [weak self] channel in
                // Counted when accepted, by `AcceptPauseHandler`.
                let open = metrics.connectionsOpenCount
                let limit = min(configuration.snapshot.value.limits.maxConnections, ceiling)
                if open > limit {
                    metrics.connectionRefused()
                    // Its client's request is answered 503 unread: an event refused for a limit.
                    metrics.request(.rejected)
                    metrics.refused(.limit)
                    // Refused connections linger (so the 503 is read, not reset) only while few do; beyond that
                    // they close at once, keeping the process's descriptors below its limit.
                    let linger: TimeAmount = open <= limit + lingeringRefusals ? .seconds(1) : .zero
                    return channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            ConnectionRefusalHandler(
                                response: RequestHandler.rawResponse(.tooManyConnections(limit: limit)), linger: linger))
                    }
                }
                self?.track(channel)
                return channel.eventLoop.makeCompletedFuture {
                    try Self.configure(channel, dependencies: dependencies)
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.bind(host: host, port: port).get()
        } catch {
            bound.continuation.finish()
            throw error
        }
        let actualPort = channel.localAddress?.port ?? port
        boundPort.withLock { $0 = actualPort }
        bound.continuation.yield(actualPort)
        bound.continuation.finish()
        logger.info("listening", metadata: ["address": "\(host):\(actualPort)"])

        await withGracefulShutdownHandler {
            try? await channel.closeFuture.get()
        } onGracefulShutdown: {
            channel.close(promise: nil)
        }
        await drainConnections()
    }

    private func track(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        connections.withLock { $0[id] = channel }
        channel.closeFuture.whenComplete { [weak self] _ in
            _ = self?.connections.withLock { $0.removeValue(forKey: id) }
        }
    }

    private func drainConnections() async {
        serving.stopAccepting()
        // Requests waiting for an aggregate window (durable, flushed acks) are answered while their connections
        // drain, not after: the windows go now, as partial rows (docs/aggregation.md, "Acks").
        handlerDependencies.engine?.aggregation.emitAll()
        let open = connections.withLock { Array($0.values) }
        logger.info("stopped accepting connections; draining", metadata: ["open_connections": "\(open.count)"])
        for channel in open {
            channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        }
        let deadline = ContinuousClock.now + drainTimeout
        while ContinuousClock.now < deadline {
            if connections.withLock({ $0.isEmpty }) { return }
            try? await Task.sleep(for: .milliseconds(20))
        }
        let stuck = connections.withLock { Array($0.values) }
        logger.warning("closing connections still busy after the drain timeout", metadata: ["count": "\(stuck.count)"])
        for channel in stuck { channel.close(promise: nil) }
    }
}

/// On the listening socket, before NIO's accept handler: after a failed accept(2) it turns `autoRead` off for
/// `pause`, which takes the socket out of epoll, then on again. NIO's own `AcceptBackoffHandler` delays the next
/// `read()` instead, but when the very first accept of a round fails NIO never asks for one (the read it asked for
/// is still pending), so the socket stays registered as readable and accept(2) is retried in a busy loop.
///
/// It also counts connections as they are accepted (on the listening socket's loop, before the child is handed to
/// its own loop, so a burst of accepts cannot outrun the count) and pauses accepting the same way while `ceiling()`
/// connections are open: `max_connections`, the refusals allowed to linger, and as many refused and closed at once.
/// Beyond that the kernel's backlog holds them, retried every 10 ms.
final class AcceptPauseHandler: ChannelInboundHandler {
    typealias InboundIn = any Channel
    typealias InboundOut = any Channel

    private let pause: TimeAmount
    private let metrics: BatchhouseMetrics
    private let ceiling: () -> Int
    private let failed: (IOError) -> Void
    private var resume: Scheduled<Void>?

    init(
        pause: TimeAmount, metrics: BatchhouseMetrics, ceiling: @escaping () -> Int,
        failed: @escaping (IOError) -> Void
    ) {
        self.pause = pause
        self.metrics = metrics
        self.ceiling = ceiling
        self.failed = failed
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let child = unwrapInboundIn(data)
        let metrics = self.metrics
        let open = metrics.connectionOpened()
        child.closeFuture.whenComplete { _ in metrics.connectionClosed() }
        context.fireChannelRead(data)
        if open >= ceiling() { pauseAccepting(for: Self.fullPause, context: context) }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard let error = error as? IOError else {
            context.fireErrorCaught(error)
            return
        }
        failed(error)
        pauseAccepting(for: pause, context: context)
    }

    /// How often accepting is retried while the connections are at the ceiling: refused ones close within
    /// milliseconds, and the backlog should drain at that pace.
    static let fullPause: TimeAmount = .milliseconds(10)

    private func pauseAccepting(for duration: TimeAmount, context: ChannelHandlerContext) {
        guard resume == nil, let options = context.channel.syncOptions else { return }
        try? options.setOption(.autoRead, value: false)
        let channel = context.channel
        resume = context.eventLoop.assumeIsolated().scheduleTask(in: duration) { [self] in
            resume = nil
            if metrics.connectionsOpenCount >= ceiling() {
                pauseAccepting(for: Self.fullPause, context: context)
            } else {
                try? channel.syncOptions?.setOption(.autoRead, value: true)
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        resume?.cancel()
        resume = nil
        context.fireChannelInactive()
    }
}

/// At most one log line per `interval` about failed accepts, with how many failed since the last one. Used on the
/// listening socket's event loop only.
final class AcceptErrorLog {
    private let logger: Logger
    private let interval: TimeAmount
    private var lastLogged: NIODeadline?
    private var suppressed = 0

    init(logger: Logger, interval: TimeAmount = .seconds(10)) {
        self.logger = logger
        self.interval = interval
    }

    func failed(_ error: IOError) {
        let now = NIODeadline.now()
        if let lastLogged, now - lastLogged < interval {
            suppressed += 1
            return
        }
        logger.error(
            "cannot accept connections; pausing accept",
            metadata: [
                "error": "\(error)", "pause_ms": "\(HTTPServer.acceptBackoff.nanoseconds / 1_000_000)",
                "failures_since_last_log": "\(suppressed)",
            ])
        lastLogged = now
        suppressed = 0
    }
}
