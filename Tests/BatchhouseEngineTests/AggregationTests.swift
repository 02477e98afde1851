import BatchhouseConfig
import BatchhouseCore
import BatchhouseEngine
import Foundation
import Testing

/// The `aggregate:` rule through the engine, with a test clock and a scripted upstream (docs/aggregation.md).
@Suite struct AggregationTests {
    static let rule = """
        tables:
          default.rt:
            aggregate: { into: default.rt_1m, window: 1m, group_by: [endpoint], values: [d] }

        """

    /// The summary rows that went to `table`, as fields.
    static func rows(_ transport: ScriptedTransport, into table: String) -> [[String]] {
        transport.inserts.filter { $0.statement?.contains("INSERT INTO `default`.`\(table)` ") == true }
            .flatMap { $0.body.split(separator: "\n").map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) } }
    }

    static func windowStart(_ fixture: EngineFixture, seconds: Int64) -> Int64 {
        let wall = Int64(fixture.clock.wallClockSeconds())
        return wall - wall % seconds
    }

    @Test func aThousandRowsOfOneEndpointInOneWindowBecomeOneExactRow() async throws {
        let fixture = try EngineFixture(Self.rule)
        let start = Self.windowStart(fixture, seconds: 60)
        var generator = SplitMix64(seed: 7)
        let values = (1...1000).map { Double($0) }.shuffled(using: &generator)
        for request in 0..<10 {
            let body = values[(request * 100)..<((request + 1) * 100)]
                .map { "{\"endpoint\":\"/api\",\"d\":\($0),\"other\":[1,2]}" }.joined(separator: "\n")
            let decision = fixture.insert("INSERT INTO default.rt FORMAT JSONEachRow\n" + body)
            #expect(decision.acceptedRows == 100)
        }
        // Not due before the window has been open a minute.
        fixture.clock.advance(by: .seconds(59))
        fixture.engine.flushDue()
        fixture.clock.advance(by: .seconds(1))
        fixture.engine.flushDue()
        await fixture.drain()
        let inserts = fixture.transport.inserts
        #expect(inserts.count == 1)
        #expect(
            inserts.first?.statement
                == "INSERT INTO `default`.`rt_1m` (`window_start`, `endpoint`, `count`, `d_min`, `d_max`, `d_avg`, `d_sum`, `d_p50`, `d_p95`, `d_p99`) FORMAT TabSeparated"
        )
        #expect(
            Self.rows(fixture.transport, into: "rt_1m") == [
                ["\(start)", "/api", "1000", "1.0", "1000.0", "500.5", "500500.0", "501.0", "951.0", "991.0"]
            ])
        let text = String(decoding: fixture.engine.prometheusText(), as: UTF8.self)
        #expect(text.contains("batchhouse_aggregate_rows_in_total{table=\"default.rt\"} 1000"))
        #expect(text.contains("batchhouse_aggregate_rows_out_total{table=\"default.rt\"} 1"))
    }

    @Test func tenSteadyWindowsThenOneAtTenTimesGiveASpikeRowAndTheMetric() async throws {
        let fixture = try EngineFixture(
            """
            tables:
              default.rt:
                aggregate:
                  into: default.rt_1s
                  window: 1s
                  time_column: ts
                  group_by: [endpoint]
                  values: [d]
                  patterns: { into: default.patterns, spike: 2.0, drop: 0.5, sigma: 3, history: 10 }

            """)
        var rows: [String] = []
        for window in 0..<11 {
            for index in 0..<20 {
                let value = window < 10 ? 100 + Double(index % 3) : 1_000
                rows.append("('/a', \(1_800_000_000 + window), \(value))")
            }
        }
        let decision = fixture.insert("INSERT INTO default.rt (endpoint, ts, d) VALUES " + rows.joined(separator: ","))
        #expect(decision.acceptedRows == 220)
        fixture.clock.advance(by: .seconds(1))
        fixture.engine.flushDue()
        await fixture.drain()
        #expect(Self.rows(fixture.transport, into: "rt_1s").count == 11)
        let patterns = Self.rows(fixture.transport, into: "patterns")
        #expect(patterns.count == 1)
        #expect(patterns.first?.prefix(5) == ["1800000010", "default.rt", "{\"endpoint\":\"/a\"}", "d", "spike"])
        #expect(patterns.first?[5] == "1000.0")
        #expect(abs((patterns.first.flatMap { Double($0[6]) } ?? 0) - 100.95) < 1e-9)
        let statement = fixture.transport.inserts.first { $0.statement?.contains("patterns") == true }?.statement
        #expect(
            statement
                == "INSERT INTO `default`.`patterns` (`window_start`, `table`, `group_key`, `column`, `kind`, `value`, `baseline`) FORMAT TabSeparated"
        )
        #expect(fixture.engine.metrics.aggregation.patterns(table: "default.rt", kind: "spike") == 1)
        let text = String(decoding: fixture.engine.prometheusText(), as: UTF8.self)
        #expect(text.contains("batchhouse_patterns_total{table=\"default.rt\",kind=\"spike\"} 1"))
    }

    @Test func lateRowsForAnEmittedWindowMakeAPartialRowOfTheSameWindowStart() async throws {
        let fixture = try EngineFixture(
            """
            tables:
              default.rt:
                aggregate: { into: default.rt_1m, window: 1m, time_column: ts, group_by: [endpoint], values: [d], grace: 5s }

            """)
        #expect(fixture.insert("INSERT INTO default.rt FORMAT JSONEachRow {\"endpoint\":\"/a\",\"ts\":1800000000,\"d\":1}").acceptedRows == 1)
        fixture.clock.advance(by: .seconds(64))
        fixture.engine.flushDue()
        #expect(fixture.engine.aggregation.figures().openRows == 1)
        fixture.clock.advance(by: .seconds(1))
        fixture.engine.flushDue()
        #expect(fixture.engine.aggregation.figures().openRows == 0)
        #expect(fixture.insert("INSERT INTO default.rt FORMAT JSONEachRow {\"endpoint\":\"/a\",\"ts\":\"2027-01-15 08:00:30\",\"d\":3}").acceptedRows == 1)
        fixture.clock.advance(by: .seconds(65))
        fixture.engine.flushDue()
        await fixture.drain()
        let rows = Self.rows(fixture.transport, into: "rt_1m")
        #expect(rows.map { Array($0.prefix(4)) } == [["1800000000", "/a", "1", "1.0"], ["1800000000", "/a", "1", "3.0"]])
        let figures = fixture.engine.metrics.aggregation.figures(table: "default.rt")
        #expect(figures.lateRows == 1)
        #expect(figures.partialWindows == 1)
    }

    @Test func aBadRowRefusesTheWholeRequestAndFoldsNothing() async throws {
        let fixture = try EngineFixture(Self.rule)
        let bad = fixture.insert("INSERT INTO default.rt FORMAT JSONEachRow {\"endpoint\":\"/a\",\"d\":1}\n{\"endpoint\":\"/a\",\"d\":\"slow\"}")
        #expect(bad.refusal?.code == 72)
        #expect(bad.refusal?.status == 400)
        #expect(bad.refusal?.message.contains("row 2") == true)
        let missing = fixture.insert("INSERT INTO default.rt FORMAT JSONEachRow {\"endpoint\":\"/a\"}")
        #expect(missing.refusal?.code == 16)
        let positional = fixture.insert("INSERT INTO default.rt VALUES ('/a', 1)")
        #expect(positional.refusal?.code == 36)
        let binary = fixture.insert("INSERT INTO default.rt FORMAT RowBinary abc")
        #expect(binary.refusal?.code == 36)
        #expect(fixture.engine.aggregation.figures().openRows == 0)
        fixture.clock.advance(by: .seconds(120))
        fixture.engine.flushDue()
        await fixture.drain()
        #expect(fixture.transport.inserts.isEmpty)
        #expect(fixture.engine.metrics.aggregation.figures(table: "default.rt").refusedRows == 4)
    }

    @Test func aFlushedAckWaitsForItsWindowAndCarriesClickHousesRefusal() async throws {
        let transport = ScriptedTransport { _, body in
            body.contains("/refused") ? .error(status: 400, code: 16, message: "No such column d_p99") : .ok
        }
        let fixture = try EngineFixture(
            """
            tables:
              default.rt:
                ack: flushed
                aggregate: { into: default.rt_1m, window: 1m, group_by: [endpoint], values: [d] }

            """, transport: transport)
        let answers = Answers()
        let first = fixture.insert("INSERT INTO default.rt FORMAT JSONEachRow {\"endpoint\":\"/ok\",\"d\":1}", answers: answers)
        #expect(first.waitsForBatch)
        fixture.clock.advance(by: .seconds(30))
        let second = fixture.insert(
            "INSERT INTO default.rt FORMAT TSVWithNames\nendpoint\td\n/ok\t2\n/refused\t3\n", answers: answers)
        #expect(second.waitsForBatch)
        #expect(answers.all.isEmpty)
        fixture.clock.advance(by: .seconds(30))
        fixture.engine.flushDue()
        await fixture.drain()
        let received = await answers.wait(for: 2)
        // Both requests' rows are in the one window, whose batch ClickHouse refused.
        #expect(received.count == 2)
        #expect(received.allSatisfy { $0.relayedStatus == 400 })
    }

    @Test func aDurableAckWaitsForTheWindowsSummariesInTheSpool() async throws {
        let fixture = try EngineFixture(
            """
            tables:
              default.rt:
                ack: durable
                aggregate: { into: default.rt_1m, window: 1m, group_by: [endpoint], values: [d] }

            """, spool: true)
        let answers = Answers()
        #expect(fixture.insert("INSERT INTO default.rt FORMAT CSVWithNames\nd,endpoint\n5,\"/a\"\n", answers: answers).waitsForBatch)
        try await Task.sleep(for: .milliseconds(50))
        #expect(answers.all.isEmpty)
        fixture.clock.advance(by: .seconds(60))
        fixture.engine.flushDue()
        let received = await answers.wait(for: 1)
        #expect(received.first?.acceptedAck == .durable)
        #expect((fixture.spool?.statistics.liveBytes ?? 0) > 0)
        await fixture.drain()
        #expect(Self.rows(fixture.transport, into: "rt_1m").map { Array($0.prefix(3)) }.last?.suffix(2) == ["/a", "1"])
    }

    @Test func aReloadKeepsTheWindowsOfAnUnchangedRuleAndEmitsThoseOfAChangedOne() async throws {
        let yaml = "upstream: { servers: [\"http://upstream.test:8123\"], compression: none }\n" + Self.rule
        let fixture = try EngineFixture(Self.rule)
        let deadLetters = "dead_letter_dir: \(fixture.deadLetters.path)\n"
        #expect(fixture.insert("INSERT INTO default.rt FORMAT JSONEachRow {\"endpoint\":\"/a\",\"d\":1}").acceptedRows == 1)
        fixture.engine.apply(try ConfigurationLoader.parse(yaml: yaml + deadLetters, environment: [:]))
        #expect(fixture.insert("INSERT INTO default.rt FORMAT JSONEachRow {\"endpoint\":\"/a\",\"d\":2}").acceptedRows == 1)
        #expect(fixture.engine.aggregation.figures().openRows == 2)
        // Same rule: one window still, with both rows.
        let changed = yaml.replacingOccurrences(of: "window: 1m", with: "window: 2m") + deadLetters
        fixture.engine.apply(try ConfigurationLoader.parse(yaml: changed, environment: [:]))
        #expect(fixture.engine.aggregation.figures().openRows == 0)
        await fixture.drain()
        let rows = Self.rows(fixture.transport, into: "rt_1m")
        #expect(rows.count == 1)
        #expect(rows.first?[2] == "2")
    }

    @Test func groupsBeyondMaxGroupsAreEvictedWithTheirRowsEmittedNotLost() async throws {
        let fixture = try EngineFixture(
            """
            tables:
              default.rt:
                aggregate: { into: default.rt_1m, window: 1m, group_by: [endpoint], values: [d], max_groups: 16 }

            """)
        for group in 0..<40 {
            let body = "{\"endpoint\":\"/\(group)\",\"d\":1}\n{\"endpoint\":\"/\(group)\",\"d\":2}"
            #expect(fixture.insert("INSERT INTO default.rt FORMAT JSONEachRow " + body).acceptedRows == 2)
        }
        #expect(fixture.engine.aggregation.figures().groups["default.rt"] ?? 0 <= 16)
        fixture.clock.advance(by: .seconds(60))
        fixture.engine.flushDue()
        await fixture.drain()
        let rows = Self.rows(fixture.transport, into: "rt_1m")
        #expect(rows.reduce(0) { $0 + (Int($1[2]) ?? 0) } == 80)
        #expect(Set(rows.map { $0[1] }).count == 40)
        #expect(fixture.engine.metrics.aggregation.figures(table: "default.rt").evictedGroups >= 24)
    }

    @Test func keepRawAlsoInsertsTheRowsAsSent() async throws {
        let fixture = try EngineFixture(
            """
            tables:
              default.rt:
                aggregate: { into: default.rt_1m, window: 1m, group_by: [endpoint], values: [d], keep_raw: true }

            """)
        #expect(fixture.insert("INSERT INTO default.rt FORMAT JSONEachRow {\"endpoint\":\"/a\",\"d\":1}").acceptedRows == 1)
        fixture.clock.advance(by: .seconds(60))
        fixture.engine.flushDue()
        await fixture.drain()
        let statements = fixture.transport.inserts.compactMap(\.statement)
        #expect(statements.contains { $0.hasPrefix("INSERT INTO `default`.`rt` FORMAT JSONEachRow") })
        #expect(Self.rows(fixture.transport, into: "rt_1m").count == 1)
    }

    @Test func aTableGoingSilentAfterSteadyTrafficIsOneIngestDrop() async throws {
        let fixture = try EngineFixture()
        let body = (0..<1_000).map { "(\($0))" }.joined(separator: ",")
        fixture.engine.flushDue()
        for _ in 0..<12 {
            fixture.insert("INSERT INTO default.events VALUES " + body)
            fixture.clock.advance(by: .seconds(10))
            fixture.engine.flushDue()
        }
        #expect(fixture.engine.metrics.aggregation.ingestAnomalies(table: "default.events", kind: "drop") == 0)
        for _ in 0..<6 {
            fixture.clock.advance(by: .seconds(10))
            fixture.engine.flushDue()
        }
        #expect(fixture.engine.metrics.aggregation.ingestAnomalies(table: "default.events", kind: "drop") == 1)
        let text = String(decoding: fixture.engine.prometheusText(), as: UTF8.self)
        #expect(text.contains("batchhouse_ingest_anomalies_total{table=\"default.events\",kind=\"drop\"} 1"))
        await fixture.drain()
    }

    @Test func aDurableAckWhoseSummariesTheSpoolRefusedWaitsForClickHouseInstead() async throws {
        let fixture = try EngineFixture(
            """
            tables:
              default.rt:
                ack: durable
                aggregate: { into: default.rt_1m, window: 1m, group_by: [endpoint], values: [d] }

            """, spool: true, spoolMaxSize: "1KiB")
        let answers = Answers()
        let endpoint = String(repeating: "x", count: 2_000)
        #expect(fixture.insert("INSERT INTO default.rt FORMAT JSONEachRow {\"endpoint\":\"\(endpoint)\",\"d\":1}", answers: answers).waitsForBatch)
        fixture.clock.advance(by: .seconds(60))
        fixture.engine.flushDue()
        try await Task.sleep(for: .milliseconds(50))
        // Not in the spool (too big for it), not yet in ClickHouse: no answer yet, and no refusal.
        #expect(answers.all.isEmpty)
        await fixture.drain()
        let received = await answers.wait(for: 1)
        #expect(received.first?.acceptedAck == .durable)
        #expect(Self.rows(fixture.transport, into: "rt_1m").count == 1)
    }

    @Test func aKeepRawRequestRefusedForMemoryFoldsNothing() async throws {
        let fixture = try EngineFixture(
            """
            limits: { max_buffer_memory: 1KiB }
            tables:
              default.rt:
                aggregate: { into: default.rt_1m, window: 1m, group_by: [endpoint], values: [d], keep_raw: true }

            """)
        let rows = (0..<100).map { "{\"endpoint\":\"/a\",\"d\":\($0)}" }.joined(separator: "\n")
        let refused = fixture.insert("INSERT INTO default.rt FORMAT JSONEachRow " + rows)
        #expect(refused.refusal?.code == 241)
        #expect(fixture.engine.aggregation.figures().openRows == 0)
    }

    @Test func aKeyIsItsTextWhetherQuotedOrNot() async throws {
        let fixture = try EngineFixture(
            """
            tables:
              default.rt:
                aggregate: { into: default.rt_1m, window: 1m, group_by: [status], values: [d] }

            """)
        #expect(fixture.insert("INSERT INTO default.rt FORMAT JSONEachRow {\"status\":200,\"d\":1} {\"status\":\"200\",\"d\":2}").acceptedRows == 2)
        #expect(fixture.insert("INSERT INTO default.rt FORMAT CSVWithNames\nstatus,d\n\"200\",3\n200,4\n").acceptedRows == 2)
        fixture.clock.advance(by: .seconds(60))
        fixture.engine.flushDue()
        await fixture.drain()
        #expect(Self.rows(fixture.transport, into: "rt_1m").map { Array($0[1...2]) } == [["200", "4"]])
    }

    @Test func theSummaryTablesOwnRowsAreNotWatchedForIngestAnomalies() async throws {
        let fixture = try EngineFixture(
            """
            tables:
              default.rt:
                aggregate: { into: default.rt_1m, window: 10s, group_by: [endpoint], values: [d] }

            """)
        fixture.engine.flushDue()
        // A minute-long window would write its rows in bursts (20, 0, 0, ...): never judged, so never a drop.
        for step in 0..<40 {
            if step < 30 {
                let body = (0..<50).map { "{\"endpoint\":\"/\($0)\",\"d\":1}" }.joined(separator: "\n")
                fixture.insert("INSERT INTO default.rt FORMAT JSONEachRow " + body)
            }
            fixture.clock.advance(by: .seconds(10))
            fixture.engine.flushDue()
        }
        #expect(fixture.engine.metrics.aggregation.ingestAnomalies(table: "default.rt_1m", kind: "drop") == 0)
        #expect(fixture.engine.metrics.aggregation.ingestAnomalies(table: "default.rt_1m", kind: "spike") == 0)
        // The source table's rows are watched: it went silent after 5 minutes of steady traffic.
        #expect(fixture.engine.metrics.aggregation.ingestAnomalies(table: "default.rt", kind: "drop") == 1)
        await fixture.drain()
    }
}
