import BatchhouseConfig
import BatchhouseCore
import Testing

/// The `aggregate:` key of a table rule (README, "Edge aggregation").
@Suite struct AggregateRuleTests {
    @Test func theIssuesExampleParsesWithItsDefaults() throws {
        let configuration = try parse(
            """
            tables:
              default.response_times:
                aggregate:
                  into: default.response_times_1m
                  window: 1m
                  time_column: ts
                  group_by: [endpoint]
                  values: [duration_ms]
                  quantiles: [0.5, 0.95, 0.99]
                  keep_raw: false
                  patterns: { into: default.patterns, spike: 2.0, drop: 0.5, sigma: 3, history: 10 }
            """)
        let rule = try #require(configuration.rules.rule(database: "default", table: "response_times").aggregate)
        #expect(rule.into == AggregateRule.Target(database: "default", table: "response_times_1m"))
        #expect(rule.window == .seconds(60))
        #expect(rule.grace == .zero)
        #expect(rule.timeColumn == "ts")
        #expect(rule.maxGroups == 10_000)
        #expect(rule.exactValues == 1_000)
        #expect(rule.patterns?.thresholds == PatternThresholds(spike: 2, drop: 0.5, sigma: 3, history: 10))
        #expect(
            rule.targetColumns == [
                "window_start", "endpoint", "count", "duration_ms_min", "duration_ms_max", "duration_ms_avg",
                "duration_ms_sum", "duration_ms_p50", "duration_ms_p95", "duration_ms_p99",
            ])
        // Other tables are not aggregated.
        #expect(configuration.rules.rule(database: "default", table: "other").aggregate == nil)
        let report = configuration.describeEffectiveRules()
        #expect(report.contains("target columns: window_start, endpoint, count, duration_ms_min"))
    }

    @Test func quantileNamesArePAndThePercentage() {
        #expect(AggregateRule.quantileName(0.5) == "p50")
        #expect(AggregateRule.quantileName(0.99) == "p99")
        #expect(AggregateRule.quantileName(0.999) == "p99_9")
        #expect(AggregateRule.quantileName(0.9999) == "p99_99")
        #expect(AggregateRule.quantileName(0.05) == "p5")
        #expect(AggregateRule.quantileName(0.125) == "p12_5")
    }

    @Test func badRulesNameTheKeyAndLine() throws {
        func message(_ aggregate: String, under pattern: String = "default.rt") -> String {
            parseError("tables:\n  \(pattern):\n    aggregate: \(aggregate)\n").map { "\($0)" } ?? "accepted"
        }
        let good = "into: default.rt_1m, window: 1m, group_by: [endpoint], values: [d]"
        #expect(message("{ window: 1m, values: [d] }").contains("needs 'into'"))
        #expect(message("{ into: x, window: 1m }").contains("needs 'values'"))
        #expect(message("{ into: x, values: [d] }").contains("needs 'window'"))
        #expect(message("{ into: x, window: 1500ms, values: [d] }").contains("whole seconds"))
        #expect(message("{ into: 'a b', window: 1s, values: [d] }").contains("expected a table"))
        #expect(message("{ into: 'logs.*', window: 1s, values: [d] }").contains("glob"))
        #expect(message("{ into: x, window: 1s, values: [d], group_by: [d] }").contains("'d' twice"))
        #expect(message("{ into: x, window: 1s, values: [d], quantiles: [0.5, 1] }").contains("more than 0 and less than 1"))
        #expect(message("{ into: x, window: 1s, values: [d], quantiles: [0.5, 0.50] }").contains("p50 twice"))
        #expect(message("{ into: x, window: 1s, values: [d], group_by: [d_min] }").contains("written twice"))
        #expect(message("{ into: x, window: 1s, values: [d], patterns: { into: p, spike: 0.5 } }").contains("above 1"))
        #expect(message("{ into: x, window: 1s, values: [d], patterns: { into: p, history: 1 } }").contains("history"))
        #expect(message("{ into: x, window: 1s, values: [d], patterns: { spike: 3 } }").contains("needs 'into'"))
        #expect(message("{ into: x, window: 1s, values: [d], windows: 2 }").contains("unknown key 'windows'"))
        #expect(message("{ \(good) }", under: "\"logs.*\"").contains("not a glob"))
        #expect(message("{ into: x, window: 1s }").hasPrefix("batchhouse.yaml:3:"))
        let inDefaults = parseError("defaults:\n  aggregate: { \(good) }\n").map { "\($0)" } ?? ""
        #expect(inDefaults.contains("not to defaults"))
        let both = parseError("tables:\n  t: { passthrough: true, aggregate: { \(good) } }\n").map { "\($0)" } ?? ""
        #expect(both.contains("cannot both pass through and be aggregated"))
        let inherited = parseError("defaults: { passthrough: true }\ntables:\n  t: { aggregate: { \(good) } }\n").map { "\($0)" } ?? ""
        #expect(inherited.contains("set passthrough: false"))
        _ = try parse("defaults: { passthrough: true }\ntables:\n  t: { passthrough: false, aggregate: { \(good) } }\n")
        // A good rule is accepted.
        _ = try parse("tables:\n  default.rt:\n    aggregate: { \(good) }\n")
    }
}
