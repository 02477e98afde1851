import ArgumentParser
import BatchhouseConfig
import BatchhouseEngine
import BatchhouseServer
import BatchhouseSpool
import Foundation
import Logging
import ServiceLifecycle

@main
struct Batchhouse: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "batchhouse",
        abstract: "A ClickHouse HTTP proxy that merges many small INSERTs into few large ones.",
        discussion: """
            Point clients at Batchhouse instead of ClickHouse's HTTP port. INSERTs it can parse are validated, \
            merged per table following the strategy file, and sent upstream as large inserts; everything else \
            (SELECT, DDL, other formats) is streamed to ClickHouse untouched.

            Without --config, built-in defaults apply: listen 0.0.0.0:8123, upstream http://127.0.0.1:8124, \
            every table on the hybrid strategy (100000 rows, 16MiB or 1s, whichever first), ack enqueued, \
            gzip to upstream, 4 concurrent flushes, dead letters in ./batchhouse-dead-letter.
            """,
        subcommands: [Serve.self, CheckConfig.self, SpoolCommand.self],
        defaultSubcommand: Serve.self
    )
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the proxy (the default command).")

    @Option(
        name: .long,
        help: "The YAML strategy file. Without it, the built-in defaults apply. Reloaded on SIGHUP and when it changes.")
    var config: String?

    @Option(name: .long, help: "Where to listen, host:port (overrides `listen` in the file).")
    var listen: String?

    @Option(
        name: .long,
        help: "Upstream ClickHouse HTTP URL; repeat for replicas (overrides `upstream.servers` in the file).")
    var upstream: [String] = []

    @Option(name: .long, help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    @Option(name: .long, help: "text (swift-log's lines) or json (one JSON object per line); both on standard error.")
    var logFormat: LogFormat = .text

    @Option(
        name: .long,
        help: "Event-loop threads serving clients (default: one per core).")
    var threads: Int?

    @Flag(
        name: .long,
        help: "Serve every request through the general HTTP path, also small INSERTs (for comparisons and diagnosis).")
    var noFastPath = false

    func run() async throws {
        // Before the first Logger is made: a logger keeps the handler it was made with.
        logFormat.bootstrap()
        var logger = Logger(label: "batchhouse")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        var configuration: BatchhouseConfiguration
        let overrides: @Sendable (inout BatchhouseConfiguration) -> Void
        do {
            let listenOverride = try listen.map { try ListenAddress(parsing: $0) }
            let upstreamOverride = upstream
            overrides = { configuration in
                if let listenOverride { configuration.listen = listenOverride }
                if !upstreamOverride.isEmpty { configuration.upstream.servers = upstreamOverride }
            }
            configuration = try loadConfiguration(path: config)
            overrides(&configuration)
        } catch {
            FileHandle.standardError.write(Data("batchhouse: \(error)\n".utf8))
            throw ExitCode(2)
        }
        let application: BatchhouseApplication
        do {
            application = try BatchhouseApplication(
                configuration: configuration, logger: logger, eventLoopThreads: threads, fastPath: !noFastPath)
        } catch {
            FileHandle.standardError.write(Data("batchhouse: \(error)\n".utf8))
            throw ExitCode(2)
        }
        var services = application.services
        if let config {
            // Last in the list, so it is the first to stop.
            services.append(application.configurationWatcher(path: config, overrides: overrides))
        }
        let group = ServiceGroup(
            configuration: .init(
                services: services.map { .init(service: $0) },
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        do {
            try await group.run()
        } catch {
            application.shutdown()
            logger.error("stopped with an error", metadata: ["error": "\(error)"])
            throw ExitCode(1)
        }
        application.shutdown()
        logger.info("stopped")
    }
}

/// What `serve` logs in. Only `serve` bootstraps the logging system; the other commands keep swift-log's default.
enum LogFormat: String, CaseIterable, ExpressibleByArgument {
    case text
    case json

    func bootstrap() {
        switch self {
        case .text:
            // What swift-log does when nobody bootstraps it, said out loud: the fault suite and people's greps read
            // these lines, so they stay as they are, on standard error.
            LoggingSystem.bootstrap(StreamLogHandler.standardError)
        case .json:
            LoggingSystem.bootstrap { label in
                JSONLogHandler(label: label, metadataProvider: LoggingSystem.metadataProvider)
            }
        }
    }
}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate a strategy file and print the effective rule of every table pattern.")

    @Argument(help: "The YAML strategy file.")
    var file: String

    func run() throws {
        do {
            let configuration = try loadConfiguration(path: file)
            print(configuration.describeEffectiveRules())
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

func loadConfiguration(path: String?) throws -> BatchhouseConfiguration {
    guard let path else { return BatchhouseConfiguration() }
    return try ConfigurationLoader.load(path: path, environment: ProcessInfo.processInfo.environment)
}

struct SpoolCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spool",
        abstract: "Look into a spool directory, or re-send dead letters.",
        subcommands: [Inspect.self, ReplayDeadLetters.self])

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show what a spool directory holds: segments, undelivered rows per table, corruptions.")

        @Argument(help: "The spool directory (spool.dir).")
        var directory: String

        func run() throws {
            print(SpoolInspector.report(directory: directory), terminator: "")
        }
    }

    struct ReplayDeadLetters: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "replay-dead-letters",
            abstract: "Re-send dead letters (after fixing what ClickHouse refused); sent ones are removed.")

        @Argument(help: "The dead-letter directory (dead_letter_dir).")
        var directory: String

        @Option(name: .long, help: "ClickHouse HTTP URL to send to (default: the first upstream server of --config).")
        var upstream: String?

        @Option(name: .long, help: "A strategy file whose upstream server and user/password are used.")
        var config: String?

        @Option(name: .long, help: "ClickHouse user (dead letters hold no credentials).")
        var user: String?

        @Option(name: .long, help: "Password for --user; better: the CLICKHOUSE_PASSWORD environment variable.")
        var password: String?

        @Flag(
            name: .long,
            help: """
                Also send dead letters ClickHouse refused for their credentials or permissions, and those whose \
                clients were answered with the failure (skipped by default: they would go up as --user).
                """)
        var includeRefused = false

        func run() async throws {
            let configuration = try loadConfiguration(path: config)
            guard let server = upstream ?? (config != nil ? configuration.upstream.servers.first : nil) else {
                throw ValidationError("give --upstream URL or --config FILE")
            }
            var upstream = configuration.upstream
            upstream.servers = [server]
            upstream.user = user ?? configuration.upstream.user
            upstream.password =
                password ?? ProcessInfo.processInfo.environment["CLICKHOUSE_PASSWORD"] ?? configuration.upstream.password
            let summary = await DeadLetterReplayer.replay(
                directory: directory, upstream: upstream, includeRefused: includeRefused)
            print(summary)
            if !summary.failed.isEmpty { throw ExitCode(1) }
        }
    }
}
