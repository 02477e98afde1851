import Foundation
import Logging
import Synchronization
import Testing

@testable import BatchhouseServer

/// `--log-format json`: what one entry becomes, byte for byte, with a fixed clock and the lines collected in memory.
@Suite struct JSONLogHandlerTests {
    /// 2025-12-01T09:05:03.042Z.
    static let instant: Duration = .seconds(1_764_579_903) + .milliseconds(42)

    final class Lines: Sendable {
        private let collected = Mutex<[[UInt8]]>([])
        var sink: LogLineSink { LogLineSink { line in self.collected.withLock { $0.append(line) } } }
        var all: [[UInt8]] { collected.withLock { $0 } }
        var texts: [String] { all.map { String(decoding: $0, as: UTF8.self) } }
    }

    static func logger(_ lines: Lines, level: Logger.Level = .info) -> Logger {
        var logger = Logger(label: "batchhouse") { label in
            JSONLogHandler(label: label, sink: lines.sink, wallClock: { JSONLogHandlerTests.instant })
        }
        logger.logLevel = level
        return logger
    }

    static func object(_ line: String) throws -> [String: Any] {
        let parsed = try JSONSerialization.jsonObject(with: Data(line.utf8))
        return try #require(parsed as? [String: Any], "not an object: \(line)")
    }

    @Test func aFlushLineIsOneObjectWithTheFieldsInOrderAndMetadataSorted() {
        let lines = Lines()
        Self.logger(lines).info(
            "flushed batch", metadata: ["trigger": "size", "table": "db.t", "rows": "3"], source: "BatchhouseEngine")
        #expect(
            lines.texts == [
                #"{"timestamp":"2025-12-01T09:05:03.042Z","level":"info","label":"batchhouse","source":"BatchhouseEngine","#
                    + #""message":"flushed batch","rows":"3","table":"db.t","trigger":"size"}"# + "\n"
            ])
    }

    @Test func quotesBackslashesAndControlCharactersAreEscapedAndNonASCIIStaysUTF8() throws {
        let lines = Lines()
        let tricky = "a \"quoted\" \\ path\nnext\r\ttab \u{08}\u{0C} \u{01}\u{1F}\u{7F} Zürich ✓ 🙂 \u{2028}"
        Self.logger(lines).warning("\(tricky)", metadata: ["key \"with\" quotes\n": "\(tricky)"], source: "test")
        let line = try #require(lines.texts.first)
        #expect(
            line.contains(
                #""message":"a \"quoted\" \\ path\nnext\r\ttab \b\f \u0001\u001f"# + "\u{7F} Zürich ✓ 🙂 \u{2028}\""))
        #expect(line.contains(#""key \"with\" quotes\n":"a \"quoted\""#))
        // Nothing raw below U+0020 is left; the only newline is the one that ends the line.
        #expect(!lines.all[0].dropLast().contains { $0 < 0x20 })
        #expect(lines.all[0].last == UInt8(ascii: "\n"))
        let object = try Self.object(line)
        #expect(object["message"] as? String == tricky)
        #expect(object["key \"with\" quotes\n"] as? String == tricky)
    }

    @Test func nestedMetadataBecomesObjectsAndArraysWithSortedKeys() throws {
        let lines = Lines()
        Self.logger(lines).info(
            "nested",
            metadata: [
                "peer": ["port": "8123", "host": "127.0.0.1"], "ids": ["1", "2", ["deep": "x"]],
                "count": .stringConvertible(42), "empty": [:], "none": [],
            ], source: "test")
        let line = try #require(lines.texts.first)
        #expect(
            line.hasSuffix(
                #""count":"42","empty":{},"ids":["1","2",{"deep":"x"}],"none":[],"peer":{"host":"127.0.0.1","port":"8123"}}"#
                    + "\n"))
        let object = try Self.object(line)
        #expect((object["peer"] as? [String: String]) == ["host": "127.0.0.1", "port": "8123"])
        #expect((object["ids"] as? [Any])?.count == 3)
    }

    @Test func metadataMergesHandlerThenProviderThenEntry() throws {
        let lines = Lines()
        let provider = Logger.MetadataProvider { ["request": "from-provider", "shared": "provider"] }
        var logger = Logger(label: "batchhouse") { label in
            JSONLogHandler(
                label: label, metadataProvider: provider, sink: lines.sink, wallClock: { JSONLogHandlerTests.instant })
        }
        logger[metadataKey: "connection"] = "7"
        logger[metadataKey: "shared"] = "handler"
        logger.info("merged", metadata: ["shared": "entry"], source: "test")
        logger.info("without entry metadata", source: "test")
        let first = try Self.object(lines.texts[0])
        #expect(first["connection"] as? String == "7")
        #expect(first["request"] as? String == "from-provider")
        #expect(first["shared"] as? String == "entry")
        let second = try Self.object(lines.texts[1])
        #expect(second["shared"] as? String == "provider")
    }

    @Test func aKeyNamedLikeAFieldGoesUnderMetadata() throws {
        let lines = Lines()
        Self.logger(lines).info(
            "the real message",
            metadata: [
                "message": "a key called message", "level": "a key called level", "timestamp": "t", "label": "l",
                "source": "s", "metadata": "a key called metadata", "table": "db.t",
            ], source: "BatchhouseEngine")
        let line = try #require(lines.texts.first)
        let object = try Self.object(line)
        #expect(object["message"] as? String == "the real message")
        #expect(object["level"] as? String == "info")
        #expect(object["timestamp"] as? String == "2025-12-01T09:05:03.042Z")
        #expect(object["label"] as? String == "batchhouse")
        #expect(object["source"] as? String == "BatchhouseEngine")
        #expect(object["table"] as? String == "db.t")
        #expect(
            (object["metadata"] as? [String: String]) == [
                "message": "a key called message", "level": "a key called level", "timestamp": "t", "label": "l",
                "source": "s", "metadata": "a key called metadata",
            ])
        // Each name appears once at the top: JSONSerialization would hide a second one.
        #expect(line.components(separatedBy: #""message":"#).count == 3)  // the field, and the key under metadata
        #expect(line.hasSuffix(#""metadata":"a key called metadata","source":"s","timestamp":"t"}}"# + "\n"))
    }

    @Test func theLevelIsItsNameAndEntriesBelowTheLoggersLevelAreNotWritten() throws {
        let lines = Lines()
        let logger = Self.logger(lines, level: .notice)
        logger.trace("t")
        logger.debug("d")
        logger.info("i")
        logger.notice("n")
        logger.warning("w")
        logger.error("e")
        logger.critical("c")
        let levels = try lines.texts.map { try Self.object($0)["level"] as? String }
        #expect(levels == ["notice", "warning", "error", "critical"])
    }

    @Test func anErrorAddsItsMessageAndType() throws {
        struct Refused: Error, CustomStringConvertible { var description: String { "refused \"here\"" } }
        let lines = Lines()
        Self.logger(lines).error("stopped with an error", error: Refused(), source: "test")
        let object = try Self.object(try #require(lines.texts.first))
        #expect(object["error.message"] as? String == "refused \"here\"")
        #expect((object["error.type"] as? String)?.hasSuffix("Refused") == true)
    }

    @Test func timestampsAreUTCWithMillisecondsRoundedDown() {
        #expect(JSONLogHandler.timestamp(.zero) == "1970-01-01T00:00:00.000Z")
        #expect(JSONLogHandler.timestamp(Self.instant) == "2025-12-01T09:05:03.042Z")
        #expect(JSONLogHandler.timestamp(.seconds(951_868_799) + .nanoseconds(999_999_999)) == "2000-02-29T23:59:59.999Z")
        let now = JSONLogHandler.timestamp(JSONLogHandler.systemWallClock())
        #expect(now.count == 24 && now.hasSuffix("Z"), "\(now)")
    }

    /// Each entry reaches the sink as one call with one whole line, from however many threads.
    @Test func everyEntryIsOneSinkCallWithOneLine() async throws {
        let lines = Lines()
        let logger = Self.logger(lines)
        await Self.onThreads(8) { task in
            for entry in 0..<200 {
                logger.info("entry \(entry)\nwith a newline", metadata: ["task": "\(task)"], source: "test")
            }
        }
        #expect(lines.all.count == 1600)
        for line in lines.all {
            #expect(line.filter { $0 == UInt8(ascii: "\n") }.count == 1 && line.last == UInt8(ascii: "\n"))
        }
    }

    /// The real writer: lines from many threads into one file descriptor come out whole, none lost or mixed.
    @Test func theFileDescriptorWriterKeepsLinesWholeAcrossThreads() async throws {
        let path = NSTemporaryDirectory() + "bh-jsonlog-\(UInt32.random(in: 0...UInt32.max)).log"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0o600)
        try #require(descriptor >= 0)
        defer { close(descriptor) }
        let writer = FileDescriptorLineWriter(descriptor: descriptor)
        let logger = Logger(label: "batchhouse") { label in
            JSONLogHandler(
                label: label, sink: LogLineSink { writer.write($0) }, wallClock: { JSONLogHandlerTests.instant })
        }
        // Lines longer than stdio's buffer, so a writer that split them would show it.
        let filler = String(repeating: "x", count: 10_000)
        await Self.onThreads(4) { task in
            for entry in 0..<50 {
                logger.info("\(filler)", metadata: ["task": "\(task)", "entry": "\(entry)"], source: "test")
            }
        }
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let written = text.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(written.count == 201 && written.last == "")
        var seen = Set<String>()
        for line in written.dropLast() {
            let object = try Self.object(String(line))
            #expect(object["message"] as? String == filler)
            seen.insert("\(object["task"] ?? "")/\(object["entry"] ?? "")")
        }
        #expect(seen.count == 200)
    }

    /// Runs `body(index)` on `count` threads of their own and waits for them: the rendering and writing stay off
    /// the cooperative pool, which the timing-sensitive tests of other suites share.
    static func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) async {
        final class Countdown: Sendable {
            let left: Atomic<Int>
            init(_ count: Int) { left = Atomic(count) }
        }
        let countdown = Countdown(count)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            for index in 0..<count {
                Thread.detachNewThread {
                    body(index)
                    if countdown.left.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 {
                        continuation.resume()
                    }
                }
            }
        }
    }
}
