import BatchhouseConfig
import Foundation
import Testing

@Suite("ConfigurationError")
struct ConfigurationErrorTests {
    @Test func unknownRuleKeyNamesPathLineAllowedKeysAndSuggestion() throws {
        let error = try #require(
            parseError(
                """
                listen: 0.0.0.0:8123
                tables:
                  default.visitors:
                    strategy: size
                    max_row: 5000
                """
            )
        )
        #expect(error.code == .unknownKey)
        #expect(error.line == 5)
        #expect(error.column == 5)
        #expect(error.key == "tables.\"default.visitors\".max_row")
        #expect(
            error.description
                == "batchhouse.yaml:5: unknown key 'max_row' in tables.\"default.visitors\" (allowed: strategy, max_rows, max_bytes, max_delay, priority, retries, retry_backoff, ack, sample, passthrough, read_your_writes, aggregate; did you mean 'max_rows'?)"
        )
    }

    @Test func unknownKeysInEverySection() throws {
        let cases: [(yaml: String, line: Int, key: String, suggestion: String?)] = [
            ("listen: :1\nupstreams: {}", 2, "upstreams", "upstream"),
            ("upstream:\n  server: [http://a:1]", 2, "upstream.server", "servers"),
            ("upstream:\n  tls: { ca_flie: /x }", 2, "upstream.tls.ca_flie", "ca_file"),
            ("limits:\n\n  max_buffer_mem: 1MiB", 3, "limits.max_buffer_mem", "max_buffer_memory"),
            ("spool:\n  dir: /s\n  maxSize: 1GiB", 3, "spool.maxSize", "max_size"),
            ("defaults:\n  Strategy: size", 2, "defaults.Strategy", "strategy"),
            ("defaults:\n  colour: blue", 2, "defaults.colour", nil),
        ]
        for test in cases {
            let error = try #require(parseError(test.yaml))
            #expect(error.code == .unknownKey, "\(test.yaml)")
            #expect(error.line == test.line, "\(test.yaml)")
            #expect(error.key == test.key, "\(test.yaml)")
            if let suggestion = test.suggestion {
                #expect(error.message.contains("did you mean '\(suggestion)'?"), "\(error)")
            } else {
                #expect(!error.message.contains("did you mean"), "\(error)")
            }
        }
    }

    @Test func ruleKeyAtTopLevelGetsAHint() throws {
        let error = try #require(parseError("max_rows: 5"))
        #expect(error.code == .unknownKey)
        #expect(error.message.contains("unknown top-level key 'max_rows'"))
        #expect(error.message.contains("go under defaults: or tables:"))
    }

    @Test func invalidValuesNameKeyLineValueAndWhatIsAllowed() throws {
        let cases: [(yaml: String, line: Int, key: String, fragments: [String])] = [
            ("defaults:\n  max_rows: 0", 2, "defaults.max_rows", ["'0'", "1 or more"]),
            ("defaults:\n  max_rows: lots", 2, "defaults.max_rows", ["'lots'", "not a whole number"]),
            ("defaults:\n  max_rows: 1.5", 2, "defaults.max_rows", ["'1.5'", "whole number"]),
            ("tables:\n  t: { priority: 6 }", 2, "tables.t.priority", ["'6'", "from 1 to 5", "1 highest"]),
            ("tables:\n  t: { priority: 0 }", 2, "tables.t.priority", ["'0'", "from 1 to 5"]),
            ("tables:\n  t:\n    retries: -1", 3, "tables.t.retries", ["'-1'", "0 or more"]),
            ("defaults: { strategy: hybird }", 1, "defaults.strategy", ["'hybird'", "immediate, size, time, hybrid, memory, adaptive", "did you mean 'hybrid'?"]),
            ("defaults: { ack: eventually }", 1, "defaults.ack", ["'eventually'", "enqueued, durable, flushed"]),
            ("defaults: { sample: 1.5 }", 1, "defaults.sample", ["'1.5'", "from 0.0 to 1.0"]),
            ("defaults: { sample: half }", 1, "defaults.sample", ["'half'", "not a number"]),
            ("defaults: { passthrough: maybe }", 1, "defaults.passthrough", ["'maybe'", "true or false"]),
            ("defaults: { max_delay: 5 }", 1, "defaults.max_delay", ["'5'", "no unit", "250ms"]),
            ("defaults: { max_delay: 0s }", 1, "defaults.max_delay", ["'0s'", "more than zero"]),
            ("defaults: { max_delay: 5d }", 1, "defaults.max_delay", ["'5d'", "unknown unit 'd'"]),
            ("defaults: { max_delay: -1s }", 1, "defaults.max_delay", ["'-1s'", "negative"]),
            ("defaults: { max_bytes: -1MiB }", 1, "defaults.max_bytes", ["'-1MiB'", "negative"]),
            ("defaults: { max_bytes: 0 }", 1, "defaults.max_bytes", ["'0'", "at least 1 byte"]),
            ("defaults: { max_bytes: 16 MegaBytes }", 1, "defaults.max_bytes", ["unknown unit 'megabytes'", "KiB, MiB"]),
            ("defaults: { max_bytes: 1.5 }", 1, "defaults.max_bytes", ["fraction of a byte"]),
            ("defaults: { max_bytes: 20000000TiB }", 1, "defaults.max_bytes", ["too large"]),
            ("upstream:\n  compression: brotli", 2, "upstream.compression", ["'brotli'", "none, gzip, lz4, zstd"]),
            ("upstream:\n  max_concurrent_flushes: 0", 2, "upstream.max_concurrent_flushes", ["from 1 to 1024"]),
            ("upstream:\n  timeout: forever", 2, "upstream.timeout", ["'forever'", "not a duration"]),
            ("upstream:\n  user: ''", 2, "upstream.user", ["must not be empty"]),
            ("upstream:\n  tls: { verify: sometimes }", 2, "upstream.tls.verify", ["'sometimes'", "true or false"]),
            ("upstream:\n  settings: { \"bad name\": 1 }", 2, "upstream.settings.\"bad name\"", ["not a ClickHouse setting name"]),
            ("upstream:\n  settings: { max_threads: [1] }", 2, "upstream.settings.max_threads", ["single value, found a list"]),
            ("listen: 0.0.0.0", 1, "listen", ["'0.0.0.0'", "has no port"]),
            ("listen: 0.0.0.0:99999", 1, "listen", ["invalid port"]),
            ("listen: '::1:8123'", 1, "listen", ["without brackets"]),
            ("limits:\n  max_request_body: big", 2, "limits.max_request_body", ["'big'", "not a size"]),
            ("limits:\n  header_timeout: 0s", 2, "limits.header_timeout", ["'0s'"]),
            ("limits:\n\n  idle_timeout: soon", 3, "limits.idle_timeout", ["'soon'", "not a duration"]),
            ("limits:\n  max_connections: 0", 2, "limits.max_connections", ["from 1 to 1000000"]),
            ("spool:\n  dir: ''", 2, "spool.dir", ["must not be empty"]),
            ("upstream:\n  servers: []", 2, "upstream.servers", ["at least one URL"]),
            ("upstream:\n  servers: { a: 1 }", 2, "upstream.servers", ["list of URLs", "found a mapping"]),
            ("upstream:\n  servers:\n    - http://a:1\n    - ftp://b", 4, "upstream.servers[1]", ["http:// or https://"]),
            ("upstream:\n  servers: [http://a:0]", 2, "upstream.servers[0]", ["invalid port"]),
            ("upstream:\n  servers: [\"http://a:1?x=1\"]", 2, "upstream.servers[0]", ["query"]),
            ("upstream: [a]", 1, "upstream", ["must be a mapping", "found a list"]),
            ("tables:\n  t: size", 2, "tables.t", ["mapping of rule keys", "default.visitors: { strategy: size"]),
            ("tables:\n  \"\": {}", 2, "tables.\"\"", ["table pattern", "is empty"]),
            ("tables:\n  \"logs.\": {}", 2, "tables.\"logs.\"", ["empty database or table part"]),
            ("tables:\n  \"my table\": {}", 2, "tables.\"my table\"", ["space"]),
            ("dead_letter_dir: [a]", 1, "dead_letter_dir", ["single value"]),
        ]
        for test in cases {
            guard let error = parseError(test.yaml) else { continue }
            #expect(error.code == .invalidValue, "\(test.yaml): \(error)")
            #expect(error.line == test.line, "\(test.yaml): \(error)")
            #expect(error.key == test.key, "\(test.yaml): \(error)")
            for fragment in test.fragments {
                #expect(error.message.contains(fragment), "\(test.yaml): '\(fragment)' not in: \(error.message)")
            }
            #expect(error.description.hasPrefix("batchhouse.yaml:\(test.line): "))
        }
    }

    @Test func durableAckNeedsSpool() throws {
        let inDefaults = try #require(parseError("defaults:\n  strategy: size\n  ack: durable"))
        #expect(inDefaults.code == .invalidValue)
        #expect(inDefaults.line == 3)
        #expect(inDefaults.key == "defaults.ack")
        #expect(inDefaults.message.contains("needs a spool"))
        let inTable = try #require(parseError("tables:\n  a: {}\n  default.orders: { ack: durable }"))
        #expect(inTable.line == 3)
        #expect(inTable.key == "tables.\"default.orders\".ack")
    }

    @Test func missingKeys() throws {
        let spool = try #require(parseError("listen: :1\nspool:\n  max_size: 1GiB"))
        #expect(spool.code == .missingKey)
        #expect(spool.line == 2)
        #expect(spool.key == "spool.dir")
        #expect(spool.message.contains("spool needs 'dir'"))

        let password = try #require(parseError("upstream:\n  password: x"))
        #expect(password.code == .missingKey)
        #expect(password.line == 2)
        #expect(password.key == "upstream.user")
    }

    @Test func missingVariableNamesItAndItsLine() throws {
        let error = try #require(
            parseError(
                """
                upstream:
                  user: batchhouse
                  # password: ${IGNORED_IN_COMMENTS}
                  password: ${CH_PASSWORD}
                """,
                environment: ["OTHER": "x"]
            )
        )
        #expect(error.code == .missingVariable)
        #expect(error.line == 4)
        #expect(error.key == "upstream.password")
        #expect(error.message.contains("'CH_PASSWORD'"))
        #expect(error.description.hasPrefix("batchhouse.yaml:4: environment variable 'CH_PASSWORD' is not set"))
    }

    @Test func malformedVariableReference() throws {
        let unterminated = try #require(parseError("dead_letter_dir: ${DIR"))
        #expect(unterminated.code == .invalidValue)
        #expect(unterminated.line == 1)
        #expect(unterminated.message.contains("closing '}'"))
        let badName = try #require(parseError("dead_letter_dir: ${1DIR}"))
        #expect(badName.message.contains("not a variable name"))
    }

    @Test func yamlSyntaxErrorsHaveLines() throws {
        let indentation = try #require(
            parseError(
                """
                listen: :8123
                upstream:
                  servers: [http://a:1]
                 timeout: 5s
                """
            )
        )
        #expect(indentation.code == .yamlSyntax)
        #expect(indentation.line == 4)
        #expect(indentation.description.hasPrefix("batchhouse.yaml:4: YAML syntax error:"))

        let unclosed = try #require(parseError("listen: \"0.0.0.0:8123\nupstream: {}\n"))
        #expect(unclosed.code == .yamlSyntax)
        #expect(unclosed.line != nil)

        let tab = try #require(parseError("upstream:\n\ttimeout: 5s\n"))
        #expect(tab.code == .yamlSyntax)
        #expect(tab.line == 2)
        #expect(tab.message.contains("tabs"))

        let alias = try #require(parseError("defaults: *missing\n"))
        #expect(alias.code == .yamlSyntax)
        #expect(alias.line == 1)
    }

    @Test func duplicateKeys() throws {
        let literal = try #require(
            parseError(
                """
                tables:
                  default.a: { max_rows: 1 }
                  default.b: { max_rows: 2 }
                  default.a: { max_rows: 3 }
                """
            )
        )
        #expect(literal.code == .duplicateKey)
        #expect(literal.line == 4)
        #expect(literal.message.contains("'default.a'"))
        #expect(literal.message.contains("first at line 2"))

        // Two keys that only become equal after substitution.
        let substituted = try #require(
            parseError("tables:\n  ${DB}.a: {}\n  x.a: {}\n", environment: ["DB": "x"])
        )
        #expect(substituted.code == .duplicateKey)
        #expect(substituted.line == 3)
        #expect(substituted.key == "tables.\"x.a\"")
    }

    @Test func unreadableFile() throws {
        let missing = "/nonexistent/batchhouse-\(UInt32.random(in: 0...UInt32.max)).yaml"
        do {
            _ = try ConfigurationLoader.load(path: missing, environment: [:])
            Issue.record("loaded a missing file")
        } catch {
            #expect(error.code == .fileUnreadable)
            #expect(error.file == missing)
            #expect(error.line == nil)
            #expect(error.description == "\(missing): cannot read the configuration file: it does not exist")
        }
        do {
            _ = try ConfigurationLoader.load(path: NSTemporaryDirectory(), environment: [:])
            Issue.record("loaded a directory")
        } catch {
            #expect(error.code == .fileUnreadable)
            #expect(error.message.contains("directory"))
        }
    }

    @Test func loadNamesTheFileInErrors() throws {
        let path = NSTemporaryDirectory() + "batchhouse-test-\(UInt32.random(in: 0...UInt32.max)).yaml"
        try "listen: :8123\nlimits:\n  max_request_body: 0\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        do {
            _ = try ConfigurationLoader.load(path: path, environment: [:])
            Issue.record("accepted max_request_body: 0")
        } catch {
            #expect(error.file == path)
            #expect(error.description.hasPrefix("\(path):3: invalid value '0' for limits.max_request_body"))
        }
    }

    @Test func descriptionWithoutFileOrLine() {
        #expect(ConfigurationError(code: .invalidValue, line: 3, message: "m").description == "line 3: m")
        #expect(ConfigurationError(code: .invalidValue, message: "m").description == "m")
        #expect(ConfigurationError(code: .invalidValue, file: "f", message: "m").description == "f: m")
    }
}
