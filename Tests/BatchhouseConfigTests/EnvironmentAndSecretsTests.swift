import BatchhouseConfig
import BatchhouseCore
import Testing

@Suite("${VAR} substitution")
struct EnvironmentSubstitutionTests {
    @Test func substitutesInValues() throws {
        let config = try parse(
            """
            listen: ${HOST}:${PORT}
            upstream:
              servers: ["http://${CH_HOST}:8123", "${SECOND}"]
              user: ${CH_USER}
              password: ${CH_PASSWORD}
              timeout: ${TIMEOUT}s
            defaults:
              max_rows: ${ROWS}
              passthrough: ${PASS}
            """,
            environment: [
                "HOST": "127.0.0.1", "PORT": "9000", "CH_HOST": "ch", "SECOND": "https://ch2:8443", "CH_USER": "u",
                "CH_PASSWORD": "p: #x'\"\n{", "TIMEOUT": "7", "ROWS": "500", "PASS": "true",
            ]
        )
        #expect(config.listen == .init(host: "127.0.0.1", port: 9000))
        #expect(config.upstream.servers == ["http://ch:8123", "https://ch2:8443"])
        #expect(config.upstream.user == "u")
        // YAML-significant characters in a value do not change the document's structure.
        #expect(config.upstream.password == "p: #x'\"\n{")
        #expect(config.upstream.timeout == .seconds(7))
        #expect(config.rules.defaults.maxRows == 500)
        #expect(config.rules.defaults.passthrough)
    }

    @Test func substitutesInTablePatterns() throws {
        let config = try parse("tables:\n  ${DB}.events: { priority: 1 }\n", environment: ["DB": "prod"])
        #expect(config.rules.entries.map(\.pattern) == ["prod.events"])
        #expect(config.rules.rule(database: "prod", table: "events").priority == 1)
    }

    @Test func fallbacksAndEscapes() throws {
        let yaml = """
            upstream:
              user: ${USER_NAME:-batchhouse}
              password: "$${NOT_A_VAR} $HOME $$ ${EMPTY:-fallback} ${EMPTY}."
            """
        let config = try parse(yaml, environment: ["EMPTY": ""])
        #expect(config.upstream.user == "batchhouse")
        #expect(config.upstream.password == "${NOT_A_VAR} $HOME $$ fallback .")
        let set = try parse(yaml, environment: ["EMPTY": "", "USER_NAME": "alice"])
        #expect(set.upstream.user == "alice")
    }

    @Test func setButEmptyVariableIsEmpty() throws {
        let config = try parse("upstream: { user: u, password: \"${PW}\" }", environment: ["PW": ""])
        #expect(config.upstream.password == "")
        #expect(parseError("listen: \"${L}\"", environment: ["L": ""])?.code == .invalidValue)
    }
}

@Suite("Secrets stay out of output")
struct SecretRedactionTests {
    static let secret = "Sup3r-S3cret-Pa55"

    @Test func passwordNeverPrinted() throws {
        let config = try parse(
            "upstream: { user: batchhouse, password: \"${PW}\", settings: { max_threads: 2 } }",
            environment: ["PW": Self.secret]
        )
        #expect(config.upstream.password == Self.secret)
        var dumped = ""
        dump(config, to: &dumped)
        var dumpedUpstream = ""
        dump(config.upstream, to: &dumpedUpstream)
        let outputs = [
            config.description, String(describing: config), String(reflecting: config), "\(config)",
            config.upstream.description, config.upstream.debugDescription, String(describing: config.upstream),
            String(reflecting: config.upstream), "\(config.upstream)", dumped, dumpedUpstream,
            config.describeEffectiveRules(),
        ]
        for output in outputs {
            #expect(!output.contains(Self.secret), "password in: \(output)")
        }
        #expect(config.upstream.description.contains("password=<redacted>"))
        #expect(config.upstream.description.contains("user=batchhouse"))
        #expect(dumpedUpstream.contains("<redacted>"))
    }

    @Test func credentialsInServerURLAreRejectedWithoutEchoingThem() throws {
        let error = try #require(parseError("upstream:\n  servers: [\"http://admin:\(Self.secret)@ch:8123\"]"))
        #expect(error.code == .invalidValue)
        #expect(error.line == 2)
        #expect(error.message.contains("upstream.user and upstream.password"))
        #expect(!error.description.contains(Self.secret))
    }

    @Test func syntaxErrorOnThePasswordLineDoesNotQuoteIt() throws {
        let error = try #require(parseError("upstream:\n  user: u\n  password: \"\(Self.secret)\n"))
        #expect(error.code == .yamlSyntax)
        #expect(!error.description.contains(Self.secret))
    }
}
