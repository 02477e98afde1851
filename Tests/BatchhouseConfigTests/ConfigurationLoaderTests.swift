import BatchhouseConfig
import BatchhouseCore
import Foundation
import Testing

/// Parses with an explicit, empty-by-default environment so tests never depend on the process's.
func parse(_ yaml: String, environment: [String: String] = [:]) throws(ConfigurationError) -> BatchhouseConfiguration {
    try ConfigurationLoader.parse(yaml: yaml, environment: environment, file: "batchhouse.yaml")
}

/// The error `yaml` is rejected with; records an issue when it is accepted.
func parseError(
    _ yaml: String, environment: [String: String] = [:], sourceLocation: SourceLocation = #_sourceLocation
) -> ConfigurationError? {
    do {
        _ = try parse(yaml, environment: environment)
        Issue.record("accepted: \(yaml)", sourceLocation: sourceLocation)
        return nil
    } catch {
        return error
    }
}

@Suite("ConfigurationLoader")
struct ConfigurationLoaderTests {
    /// The full example strategy file of the product contract (every documented key), verbatim.
    static let designExample = """
        listen: 0.0.0.0:8123            # where clients already send ClickHouse HTTP
        upstream:
          servers: [http://clickhouse:8123]   # one or more replicas
          connect_timeout: 5s
          timeout: 30s                  # one batch request
          compression: gzip             # none | gzip | lz4 | zstd: how batches travel upstream
          max_concurrent_flushes: 4
          # user/password: insert batches with this account instead of each client's own
          # tls: { ca_file: /etc/ssl/ca.pem, verify: true }
        defaults:                       # for every table that no rule below matches
          strategy: hybrid              # immediate | size | time | hybrid | memory | adaptive
          max_rows: 100000
          max_bytes: 16MiB
          max_delay: 1s
          priority: 3                   # 1 highest .. 5 lowest
          retries: 3                    # exponential backoff, jittered
          ack: enqueued                 # enqueued | durable | flushed
        tables:                         # key: db.table, table (any database), or a glob; most specific wins
          default.payments: { strategy: immediate, priority: 1, retries: 5 }
          default.mthreads: { strategy: time, max_delay: 5s, priority: 2 }
          default.visitors: { strategy: size, max_rows: 5000 }
          "logs.*":         { strategy: memory, max_bytes: 64MiB }
          default.metrics:  { strategy: adaptive, max_delay: 5s }
          default.debug:    { sample: 0.1 }
          default.legacy:   { passthrough: true }
          default.response_times:            # edge aggregation: one row per window and group instead of every event
            aggregate: { into: default.response_times_1m, window: 1m, time_column: ts, group_by: [endpoint],
                         values: [duration_ms], quantiles: [0.5, 0.95, 0.99], keep_raw: false,
                         patterns: { into: default.patterns, spike: 2.0, drop: 0.5, sigma: 3, history: 10 } }
        limits:
          max_buffer_memory: 512MiB     # all buffered rows together; beyond it inserts get 503 + Retry-After, lowest priority first
          max_request_body: 256MiB
        spool:                          # optional write-ahead log; without it buffers live in memory only
          dir: /var/lib/batchhouse
          max_size: 10GiB
        """

    /// Checks every value of that example; `servers` differs between it and examples/batchhouse.yaml.
    static func expectDesignExample(_ config: BatchhouseConfiguration, servers: [String]) {
        #expect(config.listen == .init(host: "0.0.0.0", port: 8123))

        let upstream = config.upstream
        #expect(upstream.servers == servers)
        #expect(upstream.connectTimeout == .seconds(5))
        #expect(upstream.timeout == .seconds(30))
        #expect(upstream.compression == .gzip)
        #expect(upstream.maxConcurrentFlushes == 4)
        #expect(upstream.user == nil)
        #expect(upstream.password == nil)
        #expect(upstream.tls == nil)
        #expect(upstream.settings.isEmpty)

        let defaults = config.rules.defaults
        #expect(
            defaults
                == TableRule(
                    strategy: .hybrid, maxRows: 100_000, maxBytes: 16 << 20, maxDelay: .seconds(1), priority: 3,
                    retries: 3, retryBackoff: .milliseconds(200), ack: .enqueued, sample: 1.0, passthrough: false
                )
        )

        let entries = config.rules.entries
        #expect(
            entries.map(\.pattern.text) == [
                "default.payments", "default.mthreads", "default.visitors", "logs.*", "default.metrics",
                "default.debug", "default.legacy", "default.response_times",
            ]
        )
        let aggregate = config.rules.rule(database: "default", table: "response_times").aggregate
        #expect(aggregate?.into.description == "default.response_times_1m")
        #expect(aggregate?.timeColumn == "ts")
        #expect(aggregate?.patterns?.history == 10)
        var payments = PartialTableRule()
        payments.strategy = .immediate
        payments.priority = 1
        payments.retries = 5
        var mthreads = PartialTableRule()
        mthreads.strategy = .time
        mthreads.maxDelay = .seconds(5)
        mthreads.priority = 2
        var visitors = PartialTableRule()
        visitors.strategy = .size
        visitors.maxRows = 5000
        var logs = PartialTableRule()
        logs.strategy = .memory
        logs.maxBytes = 64 << 20
        var metrics = PartialTableRule()
        metrics.strategy = .adaptive
        metrics.maxDelay = .seconds(5)
        var debug = PartialTableRule()
        debug.sample = 0.1
        var legacy = PartialTableRule()
        legacy.passthrough = true
        var responseTimes = PartialTableRule()
        responseTimes.aggregate = AggregateRule(
            into: AggregateRule.Target(database: "default", table: "response_times_1m"), window: .seconds(60),
            timeColumn: "ts", groupBy: ["endpoint"], values: ["duration_ms"],
            patterns: AggregateRule.Patterns(into: AggregateRule.Target(database: "default", table: "patterns")))
        #expect(entries.map(\.rule) == [payments, mthreads, visitors, logs, metrics, debug, legacy, responseTimes])

        // Effective rules, as the request path sees them.
        let rules = config.rules
        var expected = defaults
        expected.strategy = .immediate
        expected.priority = 1
        expected.retries = 5
        expected.maxDelay = nil
        #expect(rules.rule(database: "default", table: "payments") == expected)

        expected = defaults
        expected.strategy = .time
        expected.maxDelay = .seconds(5)
        expected.priority = 2
        #expect(rules.rule(database: "default", table: "mthreads") == expected)

        expected = defaults
        expected.strategy = .size
        expected.maxRows = 5000
        expected.maxDelay = nil
        #expect(rules.rule(database: "default", table: "visitors") == expected)
        #expect(rules.rule(database: "default", table: "visitors").effectiveMaxDelay == .seconds(60))

        expected = defaults
        expected.strategy = .memory
        expected.maxBytes = 64 << 20
        expected.maxDelay = nil
        #expect(rules.rule(database: "logs", table: "nginx") == expected)
        #expect(rules.matchingPattern(database: "logs", table: "nginx") == "logs.*")

        expected = defaults
        expected.strategy = .adaptive
        expected.maxDelay = .seconds(5)
        #expect(rules.rule(database: "default", table: "metrics") == expected)

        expected = defaults
        expected.sample = 0.1
        #expect(rules.rule(database: "default", table: "debug") == expected)

        expected = defaults
        expected.passthrough = true
        #expect(rules.rule(database: "default", table: "legacy") == expected)

        #expect(rules.rule(database: "default", table: "unknown") == defaults)
        #expect(rules.rule(database: "other", table: "payments") == defaults)

        #expect(config.limits == .init(maxBufferMemory: 512 << 20, maxRequestBody: 256 << 20))
        #expect(config.spool == .init(dir: "/var/lib/batchhouse", maxSize: 10 << 30))
        #expect(config.deadLetterDir == "/var/lib/batchhouse/dead-letter")
    }

    @Test func designExample() throws {
        let config = try parse(Self.designExample)
        Self.expectDesignExample(config, servers: ["http://clickhouse:8123"])
    }

    @Test func shippedExampleLoads() throws {
        let repository = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let path = repository.appendingPathComponent("examples/batchhouse.yaml").path
        let config = try ConfigurationLoader.load(path: path, environment: [:])
        Self.expectDesignExample(config, servers: ["http://127.0.0.1:8124"])
        #expect(config.listen.description == "0.0.0.0:8123")
    }

    @Test func emptyFileGivesDefaults() throws {
        for yaml in ["", "# only a comment\n", "---\n", "~"] {
            let config = try parse(yaml)
            #expect(config == BatchhouseConfiguration())
        }
        let config = BatchhouseConfiguration()
        #expect(config.listen == .init(host: "0.0.0.0", port: 8123))
        #expect(config.upstream.servers == ["http://127.0.0.1:8124"])
        #expect(config.upstream.connectTimeout == .seconds(5))
        #expect(config.upstream.timeout == .seconds(30))
        #expect(config.upstream.compression == .gzip)
        #expect(config.upstream.maxConcurrentFlushes == 4)
        #expect(config.rules.defaults == TableRule())
        #expect(config.rules.entries.isEmpty)
        #expect(config.limits.maxBufferMemory == 512 * 1024 * 1024)
        #expect(config.limits.maxRequestBody == 256 * 1024 * 1024)
        #expect(config.spool == nil)
        #expect(config.deadLetterDir == "./batchhouse-dead-letter")
    }

    @Test func clientBoundsAreParsedAndDefaultedLikeNginx() throws {
        let defaults = BatchhouseConfiguration().limits
        #expect(defaults.headerTimeout == .seconds(10))
        #expect(defaults.bodyTimeout == .seconds(30))
        #expect(defaults.requestTimeout == .seconds(300))
        #expect(defaults.idleTimeout == .seconds(60))
        #expect(defaults.maxConnections == 4096)
        let config = try parse(
            "limits:\n  header_timeout: 250ms\n  body_timeout: 2s\n  request_timeout: 1m\n  idle_timeout: 5s\n  max_connections: 12\n")
        #expect(config.limits.headerTimeout == .milliseconds(250))
        #expect(config.limits.bodyTimeout == .seconds(2))
        #expect(config.limits.requestTimeout == .seconds(60))
        #expect(config.limits.idleTimeout == .seconds(5))
        #expect(config.limits.maxConnections == 12)
        #expect(config.limits.maxBufferMemory == defaults.maxBufferMemory)
        #expect(config.description.contains("header_timeout=250ms"))
        #expect(config.description.contains("max_connections=12"))
    }

    @Test func emptySectionsAreDefaults() throws {
        let config = try parse("upstream:\ndefaults:\ntables:\nlimits:\nspool:\n")
        #expect(config == BatchhouseConfiguration())
    }

    @Test(arguments: [
        ("0.0.0.0:8123", "0.0.0.0", 8123),
        ("127.0.0.1:9000", "127.0.0.1", 9000),
        ("localhost:80", "localhost", 80),
        ("\"[::1]:8123\"", "::1", 8123),
        ("'[::]:8123'", "::", 8123),
        ("\":8125\"", "0.0.0.0", 8125),
        ("8126", "0.0.0.0", 8126),
        ("127.0.0.1:0", "127.0.0.1", 0),
    ])
    func listenForms(yaml: String, host: String, port: Int) throws {
        let config = try parse("listen: \(yaml)")
        #expect(config.listen == .init(host: host, port: port))
    }

    @Test func listenAddressFromCommandLine() throws {
        #expect(try ListenAddress(parsing: "[::1]:9000") == ListenAddress(host: "::1", port: 9000))
        #expect(try ListenAddress(parsing: ":9001") == ListenAddress(host: "0.0.0.0", port: 9001))
        do {
            _ = try ListenAddress(parsing: "localhost")
            Issue.record("accepted a listen address without a port")
        } catch {
            #expect(error.code == .invalidValue)
            #expect(error.key == "listen")
            #expect(error.description == "invalid listen address 'localhost': it has no port; expected host:port, [::1]:port or :port")
        }
    }

    @Test func listenDescriptionBracketsIPv6() {
        #expect(ListenAddress(host: "::1", port: 8123).description == "[::1]:8123")
        #expect(ListenAddress(host: "10.0.0.1", port: 1).description == "10.0.0.1:1")
    }

    @Test func upstreamInFull() throws {
        let config = try parse(
            """
            upstream:
              servers:
                - http://ch1:8123
                - HTTPS://ch2.example.com:8443/
                - http://[fd00::1]:8123
              connect_timeout: 250ms
              timeout: 2m
              compression: none
              max_concurrent_flushes: 16
              user: batchhouse
              password: "p: #s"
              tls: { ca_file: /etc/ssl/ca.pem, verify: false }
              settings:
                max_insert_block_size: 1048576
                insert_quorum: 2
                input_format_skip_unknown_fields: true
                load_balancing: "random"
                quoted_bool: "true"
                insert_quorum_timeout: 60.5
            """
        )
        let upstream = config.upstream
        #expect(upstream.servers == ["http://ch1:8123", "HTTPS://ch2.example.com:8443", "http://[fd00::1]:8123"])
        #expect(upstream.connectTimeout == .milliseconds(250))
        #expect(upstream.timeout == .seconds(120))
        #expect(upstream.compression == UpstreamConfiguration.Compression.none)
        #expect(upstream.maxConcurrentFlushes == 16)
        #expect(upstream.user == "batchhouse")
        #expect(upstream.password == "p: #s")
        #expect(upstream.tls == .init(caFile: "/etc/ssl/ca.pem", verify: false))
        #expect(
            upstream.settings == [
                Setting(name: "max_insert_block_size", value: "1048576"),
                Setting(name: "insert_quorum", value: "2"),
                Setting(name: "input_format_skip_unknown_fields", value: "1"),
                Setting(name: "load_balancing", value: "random"),
                Setting(name: "quoted_bool", value: "true"),
                Setting(name: "insert_quorum_timeout", value: "60.5"),
            ]
        )
    }

    @Test func serversAsOneCommaSeparatedValue() throws {
        let config = try parse("upstream: { servers: \"${URLS}\" }", environment: ["URLS": "http://a:1,http://b:2"])
        #expect(config.upstream.servers == ["http://a:1", "http://b:2"])
        let single = try parse("upstream: { servers: http://a:8123 }")
        #expect(single.upstream.servers == ["http://a:8123"])
    }

    @Test func tlsAndSpoolNullMeanAbsent() throws {
        let config = try parse("upstream:\n  tls:\nspool: ~\n")
        #expect(config.upstream.tls == nil)
        #expect(config.spool == nil)
        let withEmptyTLS = try parse("upstream: { tls: {} }")
        #expect(withEmptyTLS.upstream.tls == .init(caFile: nil, verify: true))
    }

    @Test func deadLetterDirectory() throws {
        #expect(try parse("spool: { dir: /data/spool/ }").deadLetterDir == "/data/spool/dead-letter")
        #expect(try parse("spool: { dir: /data }\ndead_letter_dir: /dlq").deadLetterDir == "/dlq")
        #expect(try parse("dead_letter_dir: ./dlq").deadLetterDir == "./dlq")
        #expect(try parse("spool: { dir: /s }").spool?.maxSize == 10 << 30)
    }

    @Test func durableAckWithSpool() throws {
        let config = try parse("spool: { dir: /s }\ndefaults: { ack: durable }\ntables: { t: { ack: flushed } }")
        #expect(config.rules.defaults.ack == .durable)
        #expect(config.rules.rule(database: "d", table: "t").ack == .flushed)
    }

    @Test func everyRuleKeyInATable() throws {
        let config = try parse(
            """
            tables:
              "*.tmp_*":
                strategy: memory
                max_rows: 1_000
                max_bytes: 1.5MiB
                max_delay: 1m30s
                priority: 5
                retries: 0
                retry_backoff: 0
                ack: flushed
                sample: 0
                passthrough: no
                read_your_writes: false
            """
        )
        let rule = config.rules.rule(database: "x", table: "tmp_1")
        #expect(
            rule
                == TableRule(
                    strategy: .memory, maxRows: 1000, maxBytes: 1_572_864, maxDelay: .seconds(90), priority: 5,
                    retries: 0, retryBackoff: .zero, ack: .flushed, sample: 0, passthrough: false,
                    readYourWrites: false
                )
        )
    }

    @Test func readYourWritesDefaultsToTrueAndIsInheritedPerTable() throws {
        let config = try parse(
            """
            defaults: { read_your_writes: false }
            tables:
              default.orders: { read_your_writes: true }
            """
        )
        #expect(config.rules.rule(database: "default", table: "orders").readYourWrites)
        #expect(!config.rules.rule(database: "default", table: "other").readYourWrites)
        #expect(try parse("").rules.rule(database: "default", table: "t").readYourWrites)
        let error = parseError(
            """
            tables:
              t:
                read_your_writes: sometimes
            """)
        #expect(error?.line == 3)
        #expect(error?.message.contains("read_your_writes") == true)
    }

    @Test func mergeKeysShareRules() throws {
        let config = try parse(
            """
            tables:
              events: &fast { strategy: size, max_rows: 10, priority: 2 }
              clicks:
                <<: *fast
                priority: 4
            """
        )
        let clicks = config.rules.rule(database: "d", table: "clicks")
        #expect(clicks.strategy == .size && clicks.maxRows == 10 && clicks.priority == 4)
    }

    @Test func enumValuesAreCaseInsensitive() throws {
        let config = try parse("defaults: { strategy: Hybrid, ack: FLUSHED }\nupstream: { compression: GZIP }")
        #expect(config.rules.defaults.strategy == .hybrid)
        #expect(config.rules.defaults.ack == .flushed)
        #expect(config.upstream.compression == .gzip)
    }

    @Test func configurationIsSendableAcrossTasks() async throws {
        let config = try parse(Self.designExample)
        let priority = await Task.detached { config.rules.rule(database: "default", table: "payments").priority }.value
        #expect(priority == 1)
    }
}
