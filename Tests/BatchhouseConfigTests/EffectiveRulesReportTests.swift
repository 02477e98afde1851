import BatchhouseConfig
import Testing

@Suite("describeEffectiveRules")
struct EffectiveRulesReportTests {
    @Test func designExampleReport() throws {
        let report = try parse(ConfigurationLoaderTests.designExample).describeEffectiveRules()
        let lines = report.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let defaultsAt = try #require(lines.firstIndex(of: "defaults"))
        #expect(
            lines[defaultsAt + 1]
                == "  strategy=hybrid max_rows=100000 max_bytes=16MiB max_delay=1s priority=3 retries=3 retry_backoff=200ms ack=enqueued sample=1.0 passthrough=false read_your_writes=true"
        )
        // Most specific first: the seven exact db.table patterns in file order, then the glob.
        let headers = lines.filter { !$0.hasPrefix("  ") && $0.contains("  (") }
        #expect(
            headers == [
                "default.payments  (exact db.table; sets strategy, priority, retries)",
                "default.mthreads  (exact db.table; sets strategy, max_delay, priority)",
                "default.visitors  (exact db.table; sets strategy, max_rows)",
                "default.metrics  (exact db.table; sets strategy, max_delay)",
                "default.debug  (exact db.table; sets sample)",
                "default.legacy  (exact db.table; sets passthrough)",
                "default.response_times  (exact db.table; sets aggregate)",
                "logs.*  (glob on db.table; sets strategy, max_bytes)",
            ]
        )
        let visitors = try #require(lines.firstIndex { $0.hasPrefix("default.visitors") })
        #expect(
            lines[visitors + 1]
                == "  strategy=size max_rows=5000 max_bytes=16MiB max_delay=1m (size default) priority=3 retries=3 retry_backoff=200ms ack=enqueued sample=1.0 passthrough=false read_your_writes=true"
        )
        let payments = try #require(lines.firstIndex { $0.hasPrefix("default.payments") })
        #expect(lines[payments + 1].hasPrefix("  strategy=immediate max_rows=100000 max_bytes=16MiB max_delay=1s (immediate default) priority=1 retries=5 "))
        let logs = try #require(lines.firstIndex { $0.hasPrefix("logs.*") })
        #expect(lines[logs + 1].contains("strategy=memory max_rows=100000 max_bytes=64MiB max_delay=1m (memory default)"))
        let responseTimes = try #require(lines.firstIndex { $0.hasPrefix("default.response_times") })
        #expect(
            lines[responseTimes + 2]
                == "  aggregate: into=default.response_times_1m window=1m grace=0s time_column=ts group_by=[endpoint] values=[duration_ms] quantiles=[0.5, 0.95, 0.99] keep_raw=false max_groups=10000 exact_values=1000 patterns: into=default.patterns spike=2.0 drop=0.5 sigma=3.0 history=10"
        )
        let debug = try #require(lines.firstIndex { $0.hasPrefix("default.debug") })
        #expect(lines[debug + 1].contains("max_delay=1s priority=3") && lines[debug + 1].contains("sample=0.1"))
    }

    @Test func reportWithoutTables() throws {
        let report = try parse("defaults: { max_bytes: 1000, retry_backoff: 1.5s }").describeEffectiveRules()
        #expect(report.contains("max_bytes=1000 "))
        #expect(report.contains("max_delay=1s (hybrid default)"))
        #expect(report.contains("retry_backoff=1500ms"))
        #expect(report.contains("(no table patterns: every table uses defaults)"))
    }

    @Test func globsAreListedBySpecificity() throws {
        let report = try parse(
            """
            tables:
              "*": { priority: 5 }
              "events_*": { priority: 4 }
              events: { priority: 3 }
              "*.tmp_*": { priority: 2 }
            """
        ).describeEffectiveRules()
        let headers = report.split(separator: "\n").filter { !$0.hasPrefix("  ") && $0.contains("  (") }
        #expect(
            headers == [
                "events  (exact table, any database; sets priority)",
                "events_*  (glob on table name; sets priority)",
                "*.tmp_*  (glob on db.table; sets priority)",
                "*  (glob on table name; sets priority)",
            ]
        )
    }
}
