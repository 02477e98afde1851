import BatchhouseCore

/// Everything the strategy file (README.md, "Strategy file (YAML)") says, with every key defaulted.
///
/// Build one with `ConfigurationLoader.load(path:environment:)`, or directly in tests.
public struct BatchhouseConfiguration: Sendable, Equatable, CustomStringConvertible {
    /// `listen`: where clients send ClickHouse HTTP. Default `0.0.0.0:8123`.
    public var listen: ListenAddress
    /// `upstream`: the ClickHouse servers batches go to.
    public var upstream: UpstreamConfiguration
    /// `defaults` and `tables`.
    public var rules: TableRules
    /// `limits`
    public var limits: Limits
    /// `spool`: the optional write-ahead log; nil keeps buffers in memory only.
    public var spool: SpoolConfiguration?
    /// `dead_letter_dir`: where batches that exhausted their retries are written.
    public var deadLetterDir: String

    /// - Parameter deadLetterDir: nil picks `defaultDeadLetterDir(spool:)`.
    public init(
        listen: ListenAddress = ListenAddress(),
        upstream: UpstreamConfiguration = UpstreamConfiguration(),
        rules: TableRules = TableRules(),
        limits: Limits = Limits(),
        spool: SpoolConfiguration? = nil,
        deadLetterDir: String? = nil
    ) {
        self.listen = listen
        self.upstream = upstream
        self.rules = rules
        self.limits = limits
        self.spool = spool
        self.deadLetterDir = deadLetterDir ?? Self.defaultDeadLetterDir(spool: spool)
    }

    /// `<spool.dir>/dead-letter` with a spool, `./batchhouse-dead-letter` without one.
    public static func defaultDeadLetterDir(spool: SpoolConfiguration?) -> String {
        guard let spool else { return "./batchhouse-dead-letter" }
        return spool.dir.hasSuffix("/") ? spool.dir + "dead-letter" : spool.dir + "/dead-letter"
    }

    /// One line per section; never contains the upstream password.
    public var description: String {
        var lines = [
            "listen: \(listen)",
            "upstream: \(upstream)",
            "limits: max_buffer_memory=\(ValueFormat.size(limits.maxBufferMemory)) max_request_body=\(ValueFormat.size(limits.maxRequestBody))"
                + " header_timeout=\(ValueFormat.duration(limits.headerTimeout)) body_timeout=\(ValueFormat.duration(limits.bodyTimeout))"
                + " request_timeout=\(ValueFormat.duration(limits.requestTimeout)) idle_timeout=\(ValueFormat.duration(limits.idleTimeout))"
                + " max_connections=\(limits.maxConnections)",
        ]
        if let spool {
            lines.append("spool: dir=\(spool.dir) max_size=\(ValueFormat.size(spool.maxSize))")
        } else {
            lines.append("spool: none (buffers in memory only)")
        }
        lines.append("dead_letter_dir: \(deadLetterDir)")
        lines.append("tables: \(rules.entries.count) rule(s) over defaults")
        return lines.joined(separator: "\n")
    }
}

/// `listen: host:port`. IPv6 hosts are stored without brackets.
public struct ListenAddress: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    /// 0 lets the system pick a free port (useful in tests).
    public var port: Int

    public init(host: String = "0.0.0.0", port: Int = 8123) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port`, `[::1]:port`, `:port` (all interfaces) or a bare port, as `listen:` does;
    /// for command-line overrides. The error's key is `listen`.
    public init(parsing text: String) throws(ConfigurationError) {
        do {
            self = try ValueSyntax.listenAddress(text)
        } catch {
            throw ConfigurationError(
                code: .invalidValue, key: "listen",
                message: "invalid listen address '\(text)': it \(error.reason); expected host:port, [::1]:port or :port")
        }
    }

    /// `host:port`, with `[...]` around an IPv6 host.
    public var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

/// `upstream:`
public struct UpstreamConfiguration: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable
{
    /// How batches travel upstream. `lz4` and `zstd` are used only once the upstream's version is known to decode
    /// them as a request `Content-Encoding` (`UpstreamCapabilities`); until then, and on older servers, gzip.
    public enum Compression: String, Sendable, Hashable, CaseIterable {
        case none
        case gzip
        case lz4
        case zstd
    }

    /// `upstream.tls`: how `https://` servers are verified.
    public struct TLSConfiguration: Sendable, Hashable {
        /// PEM file of the CAs to trust instead of the system's.
        public var caFile: String?
        /// false skips certificate and host name verification (testing only).
        public var verify: Bool

        public init(caFile: String? = nil, verify: Bool = true) {
            self.caFile = caFile
            self.verify = verify
        }
    }

    /// The upstream used when the file names none. Not `:8123`: that is where Batchhouse itself
    /// listens by default, taking over ClickHouse's usual port, so ClickHouse is expected to move to 8124.
    public static let defaultServer = "http://127.0.0.1:8124"

    /// `servers`: `http(s)://host[:port][/path]` base URLs of replicas of one cluster, without a trailing `/`;
    /// at least one. URLs with credentials are rejected (use `user`/`password`).
    public var servers: [String]
    /// `connect_timeout`
    public var connectTimeout: Duration
    /// `timeout`: one whole batch request.
    public var timeout: Duration
    /// `compression`
    public var compression: Compression
    /// `max_concurrent_flushes`: batch requests in flight at once, over all tables.
    public var maxConcurrentFlushes: Int
    /// `user`: insert batches as this account instead of each client's own.
    public var user: String?
    /// `password`: for `user`. Never printed by `description`, `debugDescription` or `dump`.
    public var password: String?
    /// `tls`
    public var tls: TLSConfiguration?
    /// `settings`: ClickHouse settings added to every batch INSERT, in file order.
    public var settings: [Setting]

    public init(
        servers: [String] = [UpstreamConfiguration.defaultServer],
        connectTimeout: Duration = .seconds(5),
        timeout: Duration = .seconds(30),
        compression: Compression = .gzip,
        maxConcurrentFlushes: Int = 4,
        user: String? = nil,
        password: String? = nil,
        tls: TLSConfiguration? = nil,
        settings: [Setting] = []
    ) {
        self.servers = servers
        self.connectTimeout = connectTimeout
        self.timeout = timeout
        self.compression = compression
        self.maxConcurrentFlushes = maxConcurrentFlushes
        self.user = user
        self.password = password
        self.tls = tls
        self.settings = settings
    }

    public var description: String {
        var parts = [
            "servers=[\(servers.joined(separator: ", "))]",
            "connect_timeout=\(ValueFormat.duration(connectTimeout))",
            "timeout=\(ValueFormat.duration(timeout))",
            "compression=\(compression.rawValue)",
            "max_concurrent_flushes=\(maxConcurrentFlushes)",
        ]
        if let user { parts.append("user=\(user)") }
        if password != nil { parts.append("password=<redacted>") }
        if let tls {
            parts.append("tls={ca_file=\(tls.caFile ?? "<system>"), verify=\(tls.verify)}")
        }
        if !settings.isEmpty {
            parts.append("settings={\(settings.map { "\($0.name)=\($0.value)" }.joined(separator: ", "))}")
        }
        return parts.joined(separator: " ")
    }

    public var debugDescription: String { "UpstreamConfiguration(\(description))" }

    /// Keeps the password out of `dump` and reflection-based printing.
    public var customMirror: Mirror {
        Mirror(
            self,
            children: [
                "servers": servers as Any,
                "connectTimeout": connectTimeout as Any,
                "timeout": timeout as Any,
                "compression": compression as Any,
                "maxConcurrentFlushes": maxConcurrentFlushes as Any,
                "user": user as Any,
                "password": (password == nil ? "nil" : "<redacted>") as Any,
                "tls": tls as Any,
                "settings": settings as Any,
            ],
            displayStyle: .struct
        )
    }
}

/// `limits:`: every client-held resource has a bound (docs/architecture.md, "Bounds on clients").
public struct Limits: Sendable, Hashable {
    /// `max_buffer_memory`: all buffered rows together, and the bodies still arriving; beyond it inserts get
    /// 503 + Retry-After.
    public var maxBufferMemory: Int
    /// `max_request_body`: one client request body, decoded.
    public var maxRequestBody: Int
    /// `header_timeout`: from the first byte of a request head until the head is complete; then 408.
    public var headerTimeout: Duration
    /// `body_timeout`: the longest pause between two pieces of a buffered request body; then 408.
    public var bodyTimeout: Duration
    /// `request_timeout`: from the head to the end of a buffered request body, however it trickles; then 408.
    public var requestTimeout: Duration
    /// `idle_timeout`: a keep-alive connection with no request in progress is closed after this.
    public var idleTimeout: Duration
    /// `max_connections`: open client connections; the ones beyond get 503 + Retry-After and are closed.
    /// Capped at start below the process's file descriptor limit.
    public var maxConnections: Int

    public init(
        maxBufferMemory: Int = 512 << 20, maxRequestBody: Int = 256 << 20, headerTimeout: Duration = .seconds(10),
        bodyTimeout: Duration = .seconds(30), requestTimeout: Duration = .seconds(300),
        idleTimeout: Duration = .seconds(60), maxConnections: Int = 4096
    ) {
        self.maxBufferMemory = maxBufferMemory
        self.maxRequestBody = maxRequestBody
        self.headerTimeout = headerTimeout
        self.bodyTimeout = bodyTimeout
        self.requestTimeout = requestTimeout
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
    }
}

/// `spool:`
public struct SpoolConfiguration: Sendable, Hashable {
    /// `dir`
    public var dir: String
    /// `max_size`: the spool's total size on disk.
    public var maxSize: Int

    public init(dir: String, maxSize: Int = 10 << 30) {
        self.dir = dir
        self.maxSize = maxSize
    }
}
