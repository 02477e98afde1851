/// Writes emitted windows as TabSeparated rows for the target and patterns tables (docs/aggregation.md, "Target
/// table"). TabSeparated reads every column type from text, so a key copied from JSON, Values or CSV lands in
/// whatever type the target declares; `window_start` is written as Unix seconds, which DateTime reads in every
/// time zone alike.
public enum AggregateEncoding {
    /// One row per group: `window_start`, the keys, `count`, then per value column min, max, avg, sum and the
    /// quantiles (`AggregateRule.targetColumns`).
    public static func targetRows(_ window: EmittedWindow, rule: AggregateRule) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(window.rows.count * (32 + rule.values.count * (4 + rule.quantiles.count) * 12))
        for row in window.rows {
            append("\(window.windowStart)", to: &out)
            for key in row.group {
                out.append(UInt8(ascii: "\t"))
                appendField(key, to: &out)
            }
            out.append(UInt8(ascii: "\t"))
            append("\(row.count)", to: &out)
            for summary in row.summaries {
                // A column that was NULL in every row of the group: no min, max, avg or quantile (nan), and a sum of
                // 0, so that sum(v_sum) over many rows stays a number.
                let empty = summary.count == 0
                for (index, figure) in ([summary.min, summary.max, summary.mean, summary.sum] + summary.quantiles(rule.quantiles)).enumerated() {
                    out.append(UInt8(ascii: "\t"))
                    append(number(empty ? (index == 3 ? 0 : .nan) : figure), to: &out)
                }
            }
            out.append(UInt8(ascii: "\n"))
        }
        return out
    }

    /// One row per finding: `window_start, table, group_key, column, kind, value, baseline`.
    public static func patternRows(_ window: EmittedWindow, table: String, rule: AggregateRule) -> [UInt8] {
        var out: [UInt8] = []
        for finding in window.findings {
            append("\(window.windowStart)\t", to: &out)
            appendEscaped(table, to: &out)
            out.append(UInt8(ascii: "\t"))
            appendEscaped(groupKey(finding.group, columns: rule.groupBy), to: &out)
            out.append(UInt8(ascii: "\t"))
            appendEscaped(finding.column, to: &out)
            append("\t\(finding.finding.kind.rawValue)\t\(number(finding.finding.value))\t\(number(finding.finding.baseline))\n", to: &out)
        }
        return out
    }

    /// A group as a JSON object of its key columns, e.g. `{"endpoint":"/api"}`: unambiguous whatever the values hold,
    /// and readable with ClickHouse's JSON functions.
    public static func groupKey(_ group: [FieldValue], columns: [String]) -> String {
        var out = "{"
        for (index, (column, value)) in zip(columns, group).enumerated() {
            if index > 0 { out += "," }
            out += json(column) + ":"
            switch value {
            case .null: out += "null"
            case .text(let text, _): out += json(text)
            }
        }
        return out + "}"
    }

    /// Shortest text that reads back as the same Float64 (`nan` and `inf` as ClickHouse writes them).
    public static func number(_ value: Double) -> String {
        if value.isNaN { return "nan" }
        if value.isInfinite { return value < 0 ? "-inf" : "inf" }
        return "\(value)"
    }

    private static func append(_ text: String, to out: inout [UInt8]) {
        out.append(contentsOf: text.utf8)
    }

    private static func appendField(_ value: FieldValue, to out: inout [UInt8]) {
        switch value {
        case .null: out.append(contentsOf: "\\N".utf8)
        case .text(let text, _): appendEscaped(text, to: &out)
        }
    }

    /// TabSeparated escaping: backslash, tab, line feed, carriage return, NUL, backspace and form feed.
    static func appendEscaped(_ text: String, to out: inout [UInt8]) {
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case UInt8(ascii: "\t"): out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
            case UInt8(ascii: "\n"): out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
            case UInt8(ascii: "\r"): out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
            case 0: out += [UInt8(ascii: "\\"), UInt8(ascii: "0")]
            case 8: out += [UInt8(ascii: "\\"), UInt8(ascii: "b")]
            case 12: out += [UInt8(ascii: "\\"), UInt8(ascii: "f")]
            default: out.append(byte)
            }
        }
    }

    private static func json(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}
