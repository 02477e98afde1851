#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging

/// `--log-format json`: every entry as one JSON object on one line, for log collectors that would otherwise parse
/// swift-log's text lines.
///
/// Fields: `timestamp` (UTC, ISO 8601 with milliseconds), `level`, `label`, `source` and `message`, then every
/// metadata key as a field of its own, sorted by key. A value is a string, or a nested object or array where the
/// metadata is one. A metadata key named like one of those fields, or `metadata`, goes into a `metadata` object
/// instead, so it can never replace them. Metadata merges as in swift-log's `StreamLogHandler`: the handler's own,
/// then the provider's, then the entry's, and an entry's error adds `error.message` and `error.type`. The handler
/// adds nothing else: what is in a line is what the code logged.
public struct JSONLogHandler: LogHandler {
    /// The fields every line has. Metadata keys with these names go under `metadata`.
    public static let reservedFields: Set<String> = ["timestamp", "level", "label", "source", "message", "metadata"]

    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let sink: LogLineSink
    private let wallClock: @Sendable () -> Duration

    /// - Parameters:
    ///   - sink: receives each line whole, newline included.
    ///   - wallClock: the time since 1970 for `timestamp`; tests pass a fixed one.
    public init(
        label: String, metadataProvider: Logger.MetadataProvider? = nil, sink: LogLineSink = .standardError,
        wallClock: @escaping @Sendable () -> Duration = JSONLogHandler.systemWallClock
    ) {
        self.label = label
        self.metadataProvider = metadataProvider
        self.sink = sink
        self.wallClock = wallClock
    }

    /// CLOCK_REALTIME.
    public static let systemWallClock: @Sendable () -> Duration = {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return .seconds(now.tv_sec) + .nanoseconds(now.tv_nsec)
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let explicit = event.metadata { merged.merge(explicit) { $1 } }
        if let error = event.error {
            merged["error.message"] = "\(error)"
            merged["error.type"] = "\(String(reflecting: type(of: error)))"
        }
        sink.write(line(for: event, metadata: merged))
    }

    @available(*, deprecated, renamed: "log(event:)")
    public func log(
        level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String, file: String,
        function: String, line: UInt
    ) {
        log(
            event: LogEvent(
                level: level, message: message, metadata: metadata, source: source, file: file, function: function,
                line: line))
    }

    private func line(for event: LogEvent, metadata: Logger.Metadata) -> [UInt8] {
        var json = JSONLineWriter()
        json.beginObject()
        json.key("timestamp")
        json.string(Self.timestamp(wallClock()))
        json.key("level")
        json.string(event.level.rawValue)
        json.key("label")
        json.string(label)
        json.key("source")
        json.string(event.source)
        json.key("message")
        json.string(event.message.description)
        var collided: Logger.Metadata = [:]
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) {
            if Self.reservedFields.contains(key) {
                collided[key] = value
            } else {
                json.key(key)
                json.value(value)
            }
        }
        if !collided.isEmpty {
            json.key("metadata")
            json.value(.dictionary(collided))
        }
        json.endObject()
        json.newline()
        return json.bytes
    }

    /// `2025-12-01T09:05:03.042Z`: UTC, milliseconds rounded down.
    static func timestamp(_ sinceEpoch: Duration) -> String {
        let (seconds, attoseconds) = sinceEpoch.components
        var time = time_t(seconds)
        var parts = tm()
        guard gmtime_r(&time, &parts) != nil else { return "<unknown>" }
        let milliseconds = max(0, Int(attoseconds / 1_000_000_000_000_000))
        func padded(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return padded(parts.tm_year + 1900, 4) + "-" + padded(parts.tm_mon + 1, 2) + "-" + padded(parts.tm_mday, 2)
            + "T" + padded(parts.tm_hour, 2) + ":" + padded(parts.tm_min, 2) + ":" + padded(parts.tm_sec, 2) + "."
            + padded(Int32(milliseconds), 3) + "Z"
    }
}

/// Builds one JSON line as UTF-8 bytes. Commas go in by themselves: before every member of an object and every
/// element of an array but the first.
struct JSONLineWriter {
    private(set) var bytes: [UInt8] = []
    /// One entry per open object or array: whether it has a member yet.
    private var hasMember: [Bool] = []
    /// Set by `key`: the value that comes next completes that member and needs no comma.
    private var valuePending = false
    private static let hexDigits = Array("0123456789abcdef".utf8)

    init() {
        bytes.reserveCapacity(256)
    }

    mutating func beginObject() {
        separate()
        bytes.append(UInt8(ascii: "{"))
        hasMember.append(false)
    }

    mutating func endObject() {
        hasMember.removeLast()
        bytes.append(UInt8(ascii: "}"))
    }

    mutating func key(_ key: String) {
        separate()
        append(quoted: key)
        bytes.append(UInt8(ascii: ":"))
        valuePending = true
    }

    mutating func string(_ value: String) {
        separate()
        append(quoted: value)
    }

    mutating func value(_ value: Logger.Metadata.Value) {
        switch value {
        case .string(let text):
            string(text)
        case .stringConvertible(let convertible):
            string(convertible.description)
        case .dictionary(let dictionary):
            beginObject()
            for (key, member) in dictionary.sorted(by: { $0.key < $1.key }) {
                self.key(key)
                self.value(member)
            }
            endObject()
        case .array(let elements):
            separate()
            bytes.append(UInt8(ascii: "["))
            hasMember.append(false)
            for element in elements { self.value(element) }
            hasMember.removeLast()
            bytes.append(UInt8(ascii: "]"))
        }
    }

    mutating func newline() {
        bytes.append(UInt8(ascii: "\n"))
    }

    private mutating func separate() {
        if valuePending {
            valuePending = false
            return
        }
        guard let last = hasMember.indices.last else { return }
        if hasMember[last] { bytes.append(UInt8(ascii: ",")) }
        hasMember[last] = true
    }

    /// Quotes and escapes `text`: `"` and `\`, and every control character (U+0000 to U+001F), as RFC 8259 asks.
    /// Everything else, non-ASCII included, goes through as its UTF-8 bytes.
    private mutating func append(quoted text: String) {
        bytes.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case 0x0A: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case 0x0D: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case 0x09: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0x08: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "b")])
            case 0x0C: bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "f")])
            case 0x00..<0x20:
                bytes.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0")])
                bytes.append(Self.hexDigits[Int(byte >> 4)])
                bytes.append(Self.hexDigits[Int(byte & 0x0F)])
            default: bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}
