/// Reads the rows of one INSERT into an aggregated table as `AggregateInput`s: the time, key and value columns of
/// every row, checked before any row is folded in, so a request is taken whole or refused whole
/// (docs/aggregation.md, "Input").
public enum AggregateReader {
    /// `data`: the request's data; `scanned`: what `RowScanner.scan` found in it. `arrivalUnixSeconds` places rows
    /// in windows when the rule has no `time_column`.
    public static func inputs(
        _ data: UnsafeRawBufferPointer, scanned: ScannedRows, format: InputFormat, statementColumns: [String]?,
        rule: AggregateRule, arrivalUnixSeconds: Double
    ) throws(RowScanError) -> [AggregateInput] {
        if format.isBinary {
            throw RowScanError(
                code: 36, name: "BAD_ARGUMENTS",
                message:
                    "Batchhouse: format \(format.rawValue) cannot be aggregated; the table's aggregate rule reads JSONEachRow, Values, TabSeparated, CSV, JSONCompactEachRow or TSKV rows",
                offset: 0)
        }
        let header = scanned.header.map { UnsafeRawBufferPointer(rebasing: data[$0]) }
        let columns = try RowFieldReader.columnNames(format: format, statementColumns: statementColumns, header: header)
        let rows = UnsafeRawBufferPointer(rebasing: data[scanned.rows])
        let windowSeconds = rule.windowSeconds
        let arrivalWindow = WindowAggregator.windowStart(unixSeconds: arrivalUnixSeconds, windowSeconds: windowSeconds) ?? 0
        let timed = rule.timeColumn != nil
        let keyOffset = timed ? 1 : 0
        let valueOffset = keyOffset + rule.groupBy.count
        var inputs: [AggregateInput] = []
        inputs.reserveCapacity(scanned.rowCount)
        // `row` is 1-based.
        try RowFieldReader.read(rows, format: format, columns: columns, wanted: rule.readColumns) {
            (row, fields) throws(RowScanError) in
            var start = arrivalWindow
            if let timeColumn = rule.timeColumn {
                guard let seconds = RowFieldReader.unixSeconds(fields[0]),
                    let windowStart = WindowAggregator.windowStart(unixSeconds: seconds, windowSeconds: windowSeconds)
                else {
                    throw RowScanError(
                        code: 41, name: "CANNOT_PARSE_DATETIME",
                        message:
                            "Batchhouse: row \(row): cannot read \(quoted(fields[0])) of column '\(timeColumn)' as a time (Unix seconds, 'YYYY-MM-DD hh:mm:ss' in UTC, or ISO 8601) between 1970 and 2106; the table's aggregate rule windows rows by it",
                        offset: 0)
                }
                start = windowStart
            }
            var values: [Double?] = []
            values.reserveCapacity(rule.values.count)
            for (index, column) in rule.values.enumerated() {
                let field = fields[valueOffset + index]
                if case .null = field {
                    values.append(nil)
                    continue
                }
                guard let number = RowFieldReader.number(field) else {
                    throw RowScanError(
                        code: 72, name: "CANNOT_PARSE_NUMBER",
                        message:
                            "Batchhouse: row \(row): cannot read \(quoted(field)) of column '\(column)' as a finite number; the table's aggregate rule summarises it",
                        offset: 0)
                }
                values.append(number)
            }
            // A key is its text: JSON's "200" and 200, or a CSV field quoted only when it had to be, are one group.
            let group = fields[keyOffset..<valueOffset].map { field -> FieldValue in
                if case .text(let text, quoted: true) = field { return .text(text, quoted: false) }
                return field
            }
            inputs.append(AggregateInput(windowStart: start, group: group, values: values))
        }
        return inputs
    }

    private static func quoted(_ field: FieldValue) -> String {
        switch field {
        case .null: return "NULL"
        case .text(let text, _):
            let shown = text.count > 100 ? String(text.prefix(100)) + "..." : text
            return "'\(shown)'"
        }
    }
}
