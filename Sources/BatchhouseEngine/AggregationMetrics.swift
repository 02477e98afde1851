import Synchronization

/// The aggregation's figures (docs/aggregation.md, "Metrics"), written as Prometheus text by the proxy itself so
/// that every family has its `# TYPE` line before its first series: alerts on findings are then valid from the start.
package final class AggregationMetrics: Sendable {
    package struct TableFigures: Sendable, Hashable {
        package var rowsIn = 0
        package var rowsOut = 0
        package var windows = 0
        package var partialWindows = 0
        package var lateRows = 0
        package var evictedGroups = 0
        package var refusedRows = 0
    }

    private struct State {
        var tables: [String: TableFigures] = [:]
        var groups: [String: Int] = [:]
        var patterns: [String: [String: Int]] = [:]
        var ingestAnomalies: [String: [String: Int]] = [:]
    }

    private let state = Mutex(State())

    package init() {}

    package func update(table: String, _ change: (inout TableFigures) -> Void) {
        state.withLock { change(&$0.tables[table, default: TableFigures()]) }
    }

    package func setGroups(_ groups: [String: Int]) {
        state.withLock { state in
            // A table that had groups and has none now shows 0 rather than vanishing.
            for table in state.groups.keys where groups[table] == nil { state.groups[table] = 0 }
            for (table, count) in groups { state.groups[table] = count }
        }
    }

    package func pattern(table: String, kind: String) {
        state.withLock { $0.patterns[table, default: [:]][kind, default: 0] += 1 }
    }

    package func ingestAnomaly(table: String, kind: String) {
        state.withLock { $0.ingestAnomalies[table, default: [:]][kind, default: 0] += 1 }
    }

    package func figures(table: String) -> TableFigures { state.withLock { $0.tables[table] ?? TableFigures() } }
    package func patterns(table: String, kind: String) -> Int { state.withLock { $0.patterns[table]?[kind] ?? 0 } }
    package func ingestAnomalies(table: String, kind: String) -> Int {
        state.withLock { $0.ingestAnomalies[table]?[kind] ?? 0 }
    }

    package func emit(into buffer: inout [UInt8]) {
        let state = state.withLock { $0 }
        var text = ""
        func family(_ name: String, _ type: String, _ help: String) {
            text += "# HELP batchhouse_\(name) \(help)\n# TYPE batchhouse_\(name) \(type)\n"
        }
        func perTable(_ name: String, _ help: String, _ value: (TableFigures) -> Int) {
            family(name, "counter", help)
            for table in state.tables.keys.sorted() {
                text += "batchhouse_\(name){table=\"\(Self.escaped(table))\"} \(value(state.tables[table]!))\n"
            }
        }
        perTable("aggregate_rows_in_total", "Rows of aggregated tables folded into windows") { $0.rowsIn }
        perTable("aggregate_rows_out_total", "Summary rows aggregated tables emitted (one per window and group)") {
            $0.rowsOut
        }
        perTable("aggregate_windows_total", "Windows (and parts of windows) aggregated tables emitted") { $0.windows }
        perTable("aggregate_partial_windows_total", "Emitted parts of windows: late rows, evicted groups, shutdown or a changed rule") {
            $0.partialWindows
        }
        perTable("aggregate_late_rows_total", "Rows for a window that had been emitted already (they make a partial row)") {
            $0.lateRows
        }
        perTable("aggregate_evicted_groups_total", "Groups evicted beyond max_groups (their open rows emitted at once)") {
            $0.evictedGroups
        }
        perTable("aggregate_refused_rows_total", "Rows refused because their time, key or value columns did not read") {
            $0.refusedRows
        }
        family("aggregate_groups", "gauge", "Groups an aggregate rule tracks now (bounded by max_groups)")
        for table in state.groups.keys.sorted() {
            text += "batchhouse_aggregate_groups{table=\"\(Self.escaped(table))\"} \(state.groups[table]!)\n"
        }
        family("patterns_total", "counter", "Pattern findings on emitted windows, by table and kind (spike, drop, anomaly, trend_up, trend_down)")
        for table in state.patterns.keys.sorted() {
            for kind in state.patterns[table]!.keys.sorted() {
                text += "batchhouse_patterns_total{table=\"\(Self.escaped(table))\",kind=\"\(kind)\"} \(state.patterns[table]![kind]!)\n"
            }
        }
        family("ingest_anomalies_total", "counter", "Changes in a table's rows per second against its last 5 minutes, by kind (spike, drop, anomaly)")
        for table in state.ingestAnomalies.keys.sorted() {
            for kind in state.ingestAnomalies[table]!.keys.sorted() {
                text += "batchhouse_ingest_anomalies_total{table=\"\(Self.escaped(table))\",kind=\"\(kind)\"} \(state.ingestAnomalies[table]![kind]!)\n"
            }
        }
        buffer.append(contentsOf: text.utf8)
    }

    /// A label value in Prometheus text: backslash, quote and line feed escaped.
    static func escaped(_ value: String) -> String {
        var out = ""
        for character in value {
            switch character {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        return out
    }
}
