import BatchhouseConfig
import BatchhouseEngine
import Foundation
import Logging
import ServiceLifecycle
import UnixSignals

/// Hot reload: on SIGHUP, and when the file's modification time or size changes, the strategy file is
/// parsed and validated again. A valid file is applied without dropping or duplicating a buffered row; an
/// invalid one is logged with its error, counted in `batchhouse_config_reload_failures_total`, and the
/// running configuration stays.
final class ConfigurationWatcher: Service, Sendable {
    private let path: String
    private let engine: BatchhouseEngine
    private let logger: Logger
    private let environment: @Sendable () -> [String: String]
    private let pollInterval: Duration
    private let overrides: @Sendable (inout BatchhouseConfiguration) -> Void

    init(
        path: String, engine: BatchhouseEngine, logger: Logger, pollInterval: Duration,
        environment: @escaping @Sendable () -> [String: String],
        overrides: @escaping @Sendable (inout BatchhouseConfiguration) -> Void
    ) {
        self.path = path
        self.engine = engine
        self.logger = logger
        self.pollInterval = pollInterval
        self.environment = environment
        self.overrides = overrides
    }

    private struct FileStamp: Equatable {
        var modified: Date?
        var size: Int?
    }

    private func stamp() -> FileStamp {
        let attributes = try? FileManager.default.attributesOfItem(atPath: path)
        return FileStamp(
            modified: attributes?[.modificationDate] as? Date, size: (attributes?[.size] as? NSNumber)?.intValue)
    }

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await _ in signals {
                        self.reload(reason: "SIGHUP")
                    }
                }
                group.addTask {
                    var last = self.stamp()
                    while !Task.isCancelled {
                        try? await Task.sleep(for: self.pollInterval)
                        let current = self.stamp()
                        if current != last {
                            last = current
                            self.reload(reason: "file changed")
                        }
                    }
                }
                await group.next()
                group.cancelAll()
            }
        }
    }

    private func reload(reason: String) {
        do {
            var configuration = try ConfigurationLoader.load(path: path, environment: environment())
            overrides(&configuration)
            let notes = engine.apply(configuration)
            logger.info(
                "configuration reloaded",
                metadata: ["reason": "\(reason)", "file": "\(path)", "notes": "\(notes.joined(separator: "; "))"])
        } catch {
            engine.metrics.configReloaded(ok: false)
            logger.error(
                "configuration reload rejected; keeping the running configuration",
                metadata: ["reason": "\(reason)", "error": "\(error)"])
        }
    }
}
