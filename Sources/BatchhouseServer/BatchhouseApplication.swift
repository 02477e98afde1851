import BatchhouseConfig
import BatchhouseCore
import BatchhouseSpool
import BatchhouseUpstream
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// The composition root: builds every part from a configuration and hands out the services to run.
/// `services` go into one `ServiceGroup`; they are ordered so that graceful shutdown stops the HTTP server
/// first (no new requests, in-flight ones finish) and the flush service last (every buffer is sent).
public final class BatchhouseApplication: Sendable {
    let app: AppContext
    private let eventLoopGroup: MultiThreadedEventLoopGroup
    private let server: HTTPServer

    /// One event loop per core. (Measured on 2 cores with wrk on the same machine, `scripts/bench` with
    /// `BATCHHOUSE_ARGS="--threads 1"`: one loop matched two on plain inserts but lost with the spool,
    /// 0.38 vs 0.49 of nginx, where each request also writes the spool on its loop.)
    public static var defaultEventLoopThreads: Int { System.coreCount }
    private let flushService: FlushService

    /// Opens the spool (if configured) and puts every row it holds that ClickHouse does not have yet back into
    /// batches, so they are sent before or alongside new rows.
    public init(
        configuration: BatchhouseConfiguration, logger: Logger,
        eventLoopThreads: Int? = nil
    ) throws {
        let threads = eventLoopThreads ?? Self.defaultEventLoopThreads
        let eventLoopGroup = MultiThreadedEventLoopGroup(numberOfThreads: max(1, threads))
        self.eventLoopGroup = eventLoopGroup
        var spool: Spool?
        var recovery: SpoolRecovery?
        if let spoolConfiguration = configuration.spool {
            do {
                let (opened, recovered) = try Spool.open(
                    directory: spoolConfiguration.dir, maxSize: spoolConfiguration.maxSize)
                spool = opened
                recovery = recovered
            } catch {
                throw BatchhouseStartupError(message: "cannot open the spool in \(spoolConfiguration.dir): \(error)")
            }
        }
        let client = CurlClient(maxConnections: max(64, configuration.upstream.maxConcurrentFlushes * 4))
        let metrics = BatchhouseMetrics()
        let sender = BatchSender(client: client, upstream: configuration.upstream)
        let flusher = Flusher(
            sender: sender, deadLetters: DeadLetterWriter(directory: configuration.deadLetterDir, logger: logger),
            metrics: metrics, logger: logger, concurrency: configuration.upstream.maxConcurrentFlushes,
            retryUntilDelivered: spool != nil)
        let batcher = Batcher(
            flusher: flusher, clock: MonotonicClock(), maxBufferMemory: configuration.limits.maxBufferMemory)
        flusher.observeAttempts { [weak batcher] batch, latency, result in
            batcher?.recordFlush(batch, latency: latency, result: result)
        }
        let acks = PendingAcks()
        flusher.observeLanded { [weak spool] batch in
            let chunks = batch.contributions.compactMap(\.spoolChunk)
            if !chunks.isEmpty { spool?.markDelivered(chunks) }
        }
        flusher.observeReports { [weak spool] report in
            acks.resolve(report)
            guard let spool else { return }
            // Rows that landed or went to the dead-letter folder leave the spool; deferred ones stay for replay.
            var kept = Set<UInt64>()
            for failure in report.failures {
                if case .deferred = failure.reason { kept.formUnion(failure.part.contributions.compactMap(\.spoolChunk)) }
            }
            let done = report.batch.contributions.compactMap(\.spoolChunk).filter { !kept.contains($0) }
            if !done.isEmpty { spool.markDelivered(done) }
        }
        app = AppContext(
            configuration: configuration, batcher: batcher, flusher: flusher, sender: sender, client: client,
            metrics: metrics, logger: logger, acks: acks, spool: spool)
        if let recovery {
            Self.replay(recovery, into: app, logger: logger)
        }
        server = HTTPServer(
            host: configuration.listen.host, port: configuration.listen.port, group: eventLoopGroup, app: app,
            logger: logger)
        flushService = FlushService(app: app, logger: logger)
    }

    private static func replay(_ recovery: SpoolRecovery, into app: AppContext, logger: Logger) {
        for corruption in recovery.corruptions {
            logger.error("spool corruption skipped", metadata: ["where": "\(corruption)"])
        }
        app.metrics.spoolCorruptions(recovery.corruptions.count)
        let rules = app.configuration.rules
        var rows = 0
        for chunk in recovery.chunks {
            let rule = rules.rule(database: chunk.key.database ?? "default", table: chunk.key.table)
            rows += chunk.rows
            _ = chunk.data.withUnsafeBytes {
                app.batcher.append(
                    key: chunk.key, rule: rule, chunk: $0, rows: chunk.rows, endsWithNewline: chunk.endsWithNewline,
                    spoolChunk: chunk.id, ignoringMemoryLimit: true)
            }
        }
        logger.notice(
            "spool recovered",
            metadata: [
                "segments": "\(recovery.segments)", "bytes": "\(recovery.bytes)", "chunks": "\(recovery.chunks.count)",
                "rows": "\(rows)", "corruptions": "\(recovery.corruptions.count)",
            ])
    }

    /// In start order; a `ServiceGroup` stops them in reverse.
    public var services: [any Service] { [flushService, server] }

    /// The port the server listens on, once it does (nil if binding failed).
    public func waitUntilListening() async -> Int? {
        await server.waitUntilBound()
    }

    /// Applies a new configuration to the running proxy (hot reload). Buffered rows stay in their batches and
    /// follow the new rules from now on; a batch that already meets its new limits is flushed. Returns notes on
    /// what could not change without a restart.
    @discardableResult
    public func apply(_ new: BatchhouseConfiguration) -> [String] {
        let old = app.configuration
        var applied = new
        var notes: [String] = []
        if new.listen != old.listen {
            notes.append("listen stays \(old.listen) until a restart")
            applied.listen = old.listen
        }
        if new.upstream.maxConcurrentFlushes != old.upstream.maxConcurrentFlushes {
            notes.append("max_concurrent_flushes stays \(old.upstream.maxConcurrentFlushes) until a restart")
            applied.upstream.maxConcurrentFlushes = old.upstream.maxConcurrentFlushes
        }
        if new.spool != old.spool {
            notes.append("spool settings stay as they were until a restart")
            applied.spool = old.spool
        }
        if new.deadLetterDir != old.deadLetterDir {
            notes.append("dead_letter_dir stays \(old.deadLetterDir) until a restart")
            applied.deadLetterDir = old.deadLetterDir
        }
        app.sender.update(applied.upstream)
        app.replaceConfiguration(applied)
        app.batcher.setMaxBufferMemory(applied.limits.maxBufferMemory)
        let rules = applied.rules
        app.batcher.updateRules { key in rules.rule(database: key.database ?? "default", table: key.table) }
        app.metrics.configReloaded(ok: true)
        return notes
    }

    /// A service that reloads `path` on SIGHUP and when the file changes (checked every `pollInterval`).
    /// `overrides` re-applies command-line options to each new file.
    public func configurationWatcher(
        path: String, pollInterval: Duration = .seconds(1),
        environment: @escaping @Sendable () -> [String: String] = { ProcessInfo.processInfo.environment },
        overrides: @escaping @Sendable (inout BatchhouseConfiguration) -> Void = { _ in }
    ) -> any Service {
        ConfigurationWatcher(
            path: path, application: self, pollInterval: pollInterval, environment: environment, overrides: overrides)
    }

    /// Stops the upstream client's thread; call after the service group has finished.
    public func shutdown() {
        app.client.shutdown()
        app.spool?.close()
        eventLoopGroup.shutdownGracefully { _ in }
    }
}

/// Why the proxy could not start (a spool that cannot be opened, ...).
public struct BatchhouseStartupError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}
