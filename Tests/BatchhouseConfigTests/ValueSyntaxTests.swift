import BatchhouseConfig
import Testing

/// Durations, sizes and numbers, through the public parser.
@Suite("Value syntax")
struct ValueSyntaxTests {
    private func maxDelay(_ text: String) throws(ConfigurationError) -> Duration? {
        try parse("defaults: { max_delay: \"\(text)\" }").rules.defaults.maxDelay
    }

    private func retryBackoff(_ text: String) throws(ConfigurationError) -> Duration {
        try parse("defaults: { retry_backoff: \"\(text)\" }").rules.defaults.retryBackoff
    }

    private func bufferMemory(_ text: String) throws(ConfigurationError) -> Int {
        try parse("limits: { max_buffer_memory: \"\(text)\" }").limits.maxBufferMemory
    }

    @Test(arguments: [
        ("250ms", Duration.milliseconds(250)),
        ("2s", .seconds(2)),
        ("5m", .seconds(300)),
        ("1h", .seconds(3600)),
        ("1m30s", .seconds(90)),
        ("1h 2m 3s 4ms", .milliseconds(3_723_004)),
        ("1.5s", .milliseconds(1500)),
        (".5s", .milliseconds(500)),
        ("0.25m", .seconds(15)),
        ("1.0000000001s", .nanoseconds(1_000_000_000)),
        ("10S", .seconds(10)),
        (" 3s ", .seconds(3)),
        ("100000h", .seconds(360_000_000)),
    ])
    func durations(text: String, expected: Duration) throws {
        #expect(try maxDelay(text) == expected)
    }

    @Test func zeroDurations() throws {
        #expect(try retryBackoff("0") == .zero)
        #expect(try retryBackoff("0ms") == .zero)
        #expect(try retryBackoff("0s") == .zero)
    }

    @Test(arguments: ["", "5", "s", "1.5", "-1s", "1x", "1s2", "5 minutes", "1e3ms", "9999999999999h", "1s-"])
    func badDurations(text: String) {
        let error = parseError("defaults: { max_delay: \"\(text)\" }")
        #expect(error?.code == .invalidValue)
        #expect(error?.key == "defaults.max_delay")
    }

    @Test func plainYAMLNumbersAreDurationsOnlyWhenZero() throws {
        #expect(try parse("defaults: { retry_backoff: 0 }").rules.defaults.retryBackoff == .zero)
        #expect(parseError("defaults: { retry_backoff: 200 }")?.message.contains("no unit") == true)
    }

    @Test(arguments: [
        ("1", 1),
        ("1048576", 1_048_576),
        ("512KiB", 512 * 1024),
        ("16MiB", 16 << 20),
        ("1GiB", 1 << 30),
        ("2TiB", 2 << 40),
        ("16 MiB", 16 << 20),
        ("16mib", 16 << 20),
        ("16Mi", 16 << 20),
        ("16M", 16 << 20),
        ("1.5GiB", 1_610_612_736),
        ("0.5KiB", 512),
        ("1KB", 1000),
        ("16MB", 16_000_000),
        ("1GB", 1_000_000_000),
        ("100B", 100),
        ("1.0001KiB", 1024),
    ])
    func sizes(text: String, expected: Int) throws {
        #expect(try bufferMemory(text) == expected)
    }

    @Test(arguments: ["", "-1", "-16MiB", "0", "0MiB", "1.5", "MiB", "16 MiBs", "1e6", "16MiB extra", "99999999999TiB", "0x10"])
    func badSizes(text: String) {
        let error = parseError("limits: { max_buffer_memory: \"\(text)\" }")
        #expect(error?.code == .invalidValue)
        #expect(error?.key == "limits.max_buffer_memory")
    }

    @Test func wholeNumbers() throws {
        #expect(try parse("defaults: { max_rows: 100_000 }").rules.defaults.maxRows == 100_000)
        #expect(try parse("defaults: { max_rows: +7 }").rules.defaults.maxRows == 7)
        #expect(try parse("defaults: { max_rows: \"42\" }").rules.defaults.maxRows == 42)
        #expect(try parse("defaults: { max_rows: 9223372036854775807 }").rules.defaults.maxRows == Int.max)
        for bad in ["_1", "1_", "1__0", "1e5", "0x10", "9223372036854775808", "ten", "1 000"] {
            #expect(parseError("defaults: { max_rows: \"\(bad)\" }")?.code == .invalidValue, "\(bad)")
        }
    }

    @Test func booleansAndFractions() throws {
        for (text, value) in [("true", true), ("False", false), ("yes", true), ("no", false), ("on", true), ("OFF", false)] {
            #expect(try parse("defaults: { passthrough: \(text) }").rules.defaults.passthrough == value)
        }
        #expect(parseError("defaults: { passthrough: 1 }")?.code == .invalidValue)
        #expect(try parse("defaults: { sample: 0 }").rules.defaults.sample == 0)
        #expect(try parse("defaults: { sample: 1 }").rules.defaults.sample == 1)
        #expect(try parse("defaults: { sample: 0.25 }").rules.defaults.sample == 0.25)
        for bad in ["-0.1", "1.01", "nan", "inf", ".nan", "10%"] {
            #expect(parseError("defaults: { sample: \"\(bad)\" }")?.code == .invalidValue, "\(bad)")
        }
    }
}
