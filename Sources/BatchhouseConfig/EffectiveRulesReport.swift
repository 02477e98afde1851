import BatchhouseCore

extension BatchhouseConfiguration {
    /// The rule every table pattern ends up with after inheriting from `defaults`, in the order the
    /// patterns are tried, for `batchhouse check-config`. Values are printed in the file's own syntax.
    ///
    /// ```
    /// defaults
    ///   strategy=hybrid max_rows=100000 max_bytes=16MiB max_delay=1s priority=3 retries=3 ...
    /// default.payments  (exact db.table; sets strategy, priority, retries)
    ///   strategy=immediate max_rows=100000 ...
    /// ```
    public func describeEffectiveRules() -> String {
        var lines = [
            "Table rules, most specific first. A table takes the first pattern that matches it, else defaults;",
            "a pattern inherits every key it does not set from defaults.",
            "",
            "defaults",
            "  " + Self.describe(rules.defaults),
        ]
        let ordered = rules.entriesBySpecificity
        if ordered.isEmpty {
            lines.append("")
            lines.append("(no table patterns: every table uses defaults)")
        }
        for entry in ordered {
            let kind: String
            switch entry.pattern.kind {
            case .exactDatabaseTable: kind = "exact db.table"
            case .exactTable: kind = "exact table, any database"
            case .glob: kind = entry.pattern.hasDatabasePart ? "glob on db.table" : "glob on table name"
            }
            let set = Self.keysSet(by: entry.rule)
            let sets = set.isEmpty ? "sets nothing" : "sets " + set.joined(separator: ", ")
            lines.append("\(entry.pattern.text)  (\(kind); \(sets))")
            let effective = rules.effectiveRule(of: entry)
            lines.append("  " + Self.describe(effective))
            if let aggregate = effective.aggregate { lines.append("  " + Self.describe(aggregate)) }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    static func describe(_ rule: TableRule) -> String {
        var delay = "max_delay=\(ValueFormat.duration(rule.effectiveMaxDelay))"
        if rule.maxDelay == nil { delay += " (\(rule.strategy.rawValue) default)" }
        return [
            "strategy=\(rule.strategy.rawValue)",
            "max_rows=\(rule.maxRows)",
            "max_bytes=\(ValueFormat.size(rule.maxBytes))",
            delay,
            "priority=\(rule.priority)",
            "retries=\(rule.retries)",
            "retry_backoff=\(ValueFormat.duration(rule.retryBackoff))",
            "ack=\(rule.ack.rawValue)",
            "sample=\(rule.sample)",
            "passthrough=\(rule.passthrough)",
            "read_your_writes=\(rule.readYourWrites)",
        ].joined(separator: " ")
    }

    static func describe(_ rule: AggregateRule) -> String {
        var parts = [
            "aggregate: into=\(rule.into)",
            "window=\(ValueFormat.duration(rule.window))",
            "grace=\(ValueFormat.duration(rule.grace))",
            "time_column=\(rule.timeColumn ?? "(arrival time)")",
            "group_by=[\(rule.groupBy.joined(separator: ", "))]",
            "values=[\(rule.values.joined(separator: ", "))]",
            "quantiles=[\(rule.quantiles.map { "\($0)" }.joined(separator: ", "))]",
            "keep_raw=\(rule.keepRaw)",
            "max_groups=\(rule.maxGroups)",
            "exact_values=\(rule.exactValues)",
        ]
        if let patterns = rule.patterns {
            parts.append(
                "patterns: into=\(patterns.into) spike=\(patterns.spike) drop=\(patterns.drop) sigma=\(patterns.sigma) history=\(patterns.history)"
            )
        }
        return parts.joined(separator: " ") + "\n    target columns: " + rule.targetColumns.joined(separator: ", ")
    }

    static func keysSet(by rule: PartialTableRule) -> [String] {
        var keys: [String] = []
        if rule.strategy != nil { keys.append("strategy") }
        if rule.maxRows != nil { keys.append("max_rows") }
        if rule.maxBytes != nil { keys.append("max_bytes") }
        if rule.maxDelay != nil { keys.append("max_delay") }
        if rule.priority != nil { keys.append("priority") }
        if rule.retries != nil { keys.append("retries") }
        if rule.retryBackoff != nil { keys.append("retry_backoff") }
        if rule.ack != nil { keys.append("ack") }
        if rule.sample != nil { keys.append("sample") }
        if rule.passthrough != nil { keys.append("passthrough") }
        if rule.readYourWrites != nil { keys.append("read_your_writes") }
        if rule.aggregate != nil { keys.append("aggregate") }
        return keys
    }
}
