import BatchhouseCore
import Foundation
import Yams

/// Reads the strategy file (README.md, "Strategy file (YAML)") into a `BatchhouseConfiguration`.
///
/// The YAML is composed into a node tree (so every value keeps its line) and walked section by section.
/// Every problem is a `ConfigurationError` naming the key path and line: unknown keys (with the allowed
/// keys and a "did you mean"), values of the wrong type or out of range, duplicate keys, undefined
/// `${VAR}`s. Value syntax is described in `ValueSyntax` and `EnvironmentSubstitution`.
///
/// YAML merge keys (`<<: *anchor`) work in every mapping, so table rules can share an anchored block.
public enum ConfigurationLoader {
    /// Reads and parses the file at `path`. Errors carry `path` as their `file`.
    public static func load(
        path: String,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(ConfigurationError) -> BatchhouseConfiguration {
        let text = try readFile(path)
        return try parse(yaml: text, environment: environment, file: path)
    }

    /// Parses strategy-file text. An empty document gives the all-defaults configuration.
    ///
    /// - Parameter file: only used to name the source in errors.
    public static func parse(
        yaml: String,
        environment: [String: String] = ProcessInfo.processInfo.environment,
        file: String? = nil
    ) throws(ConfigurationError) -> BatchhouseConfiguration {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch {
            throw syntaxError(error, yaml: yaml, file: file)
        }
        let reader = ConfigurationReader(environment: environment, file: file)
        return try reader.configuration(from: root)
    }

    private static func readFile(_ path: String) throws(ConfigurationError) -> String {
        func unreadable(_ why: String) -> ConfigurationError {
            ConfigurationError(code: .fileUnreadable, file: path, message: "cannot read the configuration file: \(why)")
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw unreadable("it does not exist")
        }
        if isDirectory.boolValue { throw unreadable("it is a directory") }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw unreadable("permission denied or I/O error")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw unreadable("it is not UTF-8 text") }
        return text
    }

    /// Turns a Yams error into a located `yamlSyntax`/`duplicateKey` error. Never quotes the file's text:
    /// the offending line may hold a password.
    static func syntaxError(_ error: any Error, yaml: String, file: String?) -> ConfigurationError {
        guard let yamlError = error as? YamlError else {
            return ConfigurationError(code: .yamlSyntax, file: file, message: "cannot parse the YAML")
        }
        switch yamlError {
        case .scanner(let context, let problem, let mark, _),
            .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            var message = "YAML syntax error: \(problem)"
            if let context {
                message += " (\(context.text) at line \(context.mark.line))"
            }
            let lines = yaml.split(separator: "\n", omittingEmptySubsequences: false)
            let candidates = [mark.line, context?.mark.line].compactMap { $0 }
            if candidates.contains(where: { $0 >= 1 && $0 <= lines.count && lines[$0 - 1].prefix(while: \.isWhitespace).contains("\t") }) {
                message += "; YAML does not allow tabs for indentation, use spaces"
            } else if problem.contains("alias") || context?.text.contains("alias") == true {
                message += "; a key or value starting with * must be quoted, e.g. \"*.tmp_*\""
            } else if problem == "did not find expected key" {
                message += "; check this line's indentation"
            }
            return ConfigurationError(code: .yamlSyntax, line: mark.line, column: mark.column, file: file, message: message)
        case .reader(let problem, let offset, _, _):
            let line = offset.map { offset in yaml.prefix(offset).reduce(1) { $0 + ($1 == "\n" ? 1 : 0) } }
            return ConfigurationError(code: .yamlSyntax, line: line, file: file, message: "cannot read the YAML: \(problem)")
        case .duplicatedKeysInMapping(let duplicates, let context):
            let key = duplicates.first ?? "?"
            let first = context.mark
            let again = lineOfRepeatedKey(key, after: first, in: yaml)
            var message = "duplicate key '\(key)'"
            if again != nil { message += " (first at line \(first.line))" }
            if duplicates.count > 1 { message += "; also repeated: \(duplicates.dropFirst().map { "'\($0)'" }.joined(separator: ", "))" }
            return ConfigurationError(
                code: .duplicateKey, key: key, line: again ?? first.line, column: first.column, file: file, message: message
            )
        default:
            return ConfigurationError(code: .yamlSyntax, file: file, message: "cannot parse the YAML")
        }
    }

    /// The line of the second `key:` at the first one's column, for block mappings; nil when not found.
    private static func lineOfRepeatedKey(_ key: String, after first: Mark, in yaml: String) -> Int? {
        let lines = yaml.split(separator: "\n", omittingEmptySubsequences: false)
        guard first.line >= 1, first.line < lines.count else { return nil }
        let spellings = [key, "\"\(key)\"", "'\(key)'"]
        for number in (first.line + 1)...lines.count {
            let line = lines[number - 1]
            let indent = line.prefix(while: { $0 == " " }).count
            guard indent == first.column - 1 else { continue }
            let rest = line.dropFirst(indent)
            for spelling in spellings where rest.hasPrefix(spelling) {
                let after = rest.dropFirst(spelling.count).drop(while: { $0 == " " })
                if after.hasPrefix(":") { return number }
            }
        }
        return nil
    }
}

/// One walk over the composed YAML.
private struct ConfigurationReader {
    let environment: [String: String]
    let file: String?

    static let topLevelKeys = ["listen", "upstream", "defaults", "tables", "limits", "spool", "dead_letter_dir"]
    static let upstreamKeys = [
        "servers", "connect_timeout", "timeout", "compression", "max_concurrent_flushes", "user", "password", "tls",
        "settings",
    ]
    static let tlsKeys = ["ca_file", "verify"]
    static let ruleKeys = [
        "strategy", "max_rows", "max_bytes", "max_delay", "priority", "retries", "retry_backoff", "ack", "sample",
        "passthrough", "read_your_writes", "aggregate",
    ]
    static let aggregateKeys = [
        "into", "window", "grace", "time_column", "group_by", "values", "quantiles", "keep_raw", "max_groups",
        "exact_values", "patterns",
    ]
    static let patternsKeys = ["into", "spike", "drop", "sigma", "history"]
    static let limitsKeys = [
        "max_buffer_memory", "max_request_body", "header_timeout", "body_timeout", "request_timeout", "idle_timeout",
        "max_connections",
    ]
    static let spoolKeys = ["dir", "max_size"]

    /// A key of a mapping with its value, after `${VAR}` substitution of the key and merge-key expansion.
    struct Field {
        let key: String
        let keyNode: Node
        let value: Node
        let path: ConfigPath
        var line: Int? { keyNode.mark?.line }
        var column: Int? { keyNode.mark?.column }
    }

    // MARK: Sections

    func configuration(from root: Node?) throws(ConfigurationError) -> BatchhouseConfiguration {
        guard let root, !Self.isNull(root) else { return BatchhouseConfiguration() }
        guard case .mapping = root else {
            throw error(.invalidValue, at: nil, node: root, "the file must be a mapping of sections (\(Self.topLevelKeys.joined(separator: ", "))), found \(Self.kind(of: root))")
        }
        let sections = try fields(of: root, at: .root, allowed: Self.topLevelKeys)
        var configuration = BatchhouseConfiguration()
        if let field = sections["listen"] {
            configuration.listen = try listenAddress(field)
        }
        if let field = sections["upstream"] {
            configuration.upstream = try upstream(field)
        }
        if let field = sections["limits"] {
            configuration.limits = try limits(field)
        }
        if let field = sections["spool"] {
            configuration.spool = try spool(field)
        }
        let hasSpool = configuration.spool != nil
        var defaults = TableRule()
        if let field = sections["defaults"] {
            defaults = try rule(field, hasSpool: hasSpool, isDefaults: true).applied(to: TableRule())
        }
        var entries: [TableRules.Entry] = []
        if let field = sections["tables"] {
            entries = try tables(field, hasSpool: hasSpool, defaults: defaults)
        }
        configuration.rules = TableRules(defaults: defaults, entries: entries)
        if let field = sections["dead_letter_dir"] {
            configuration.deadLetterDir = try string(field, expected: "a directory path")
        } else {
            configuration.deadLetterDir = BatchhouseConfiguration.defaultDeadLetterDir(spool: configuration.spool)
        }
        return configuration
    }

    private func listenAddress(_ field: Field) throws(ConfigurationError) -> ListenAddress {
        let text = try requiredScalar(field, expected: "host:port, [::1]:port or :port")
        do {
            return try ValueSyntax.listenAddress(text)
        } catch {
            throw invalidValue(field, text, "\(error.reason); expected host:port, [::1]:port or :port")
        }
    }

    private func upstream(_ section: Field) throws(ConfigurationError) -> UpstreamConfiguration {
        var upstream = UpstreamConfiguration()
        let fields = try fields(of: section, allowed: Self.upstreamKeys)
        if let field = fields["servers"] {
            upstream.servers = try servers(field)
        }
        if let field = fields["connect_timeout"] {
            upstream.connectTimeout = try duration(field, allowZero: false)
        }
        if let field = fields["timeout"] {
            upstream.timeout = try duration(field, allowZero: false)
        }
        if let field = fields["compression"] {
            upstream.compression = try choice(field, of: UpstreamConfiguration.Compression.self)
        }
        if let field = fields["max_concurrent_flushes"] {
            upstream.maxConcurrentFlushes = try integer(field, in: 1...1024)
        }
        if let field = fields["user"] {
            upstream.user = try scalar(field).map { text throws(ConfigurationError) in
                guard !text.isEmpty else { throw invalidValue(field, text, "must not be empty") }
                return text
            }
        }
        if let field = fields["password"] {
            upstream.password = try scalar(field)
            if upstream.password != nil, upstream.user == nil {
                throw error(
                    .missingKey, at: section.path.key("user"), line: field.line, column: field.column,
                    "upstream.password needs upstream.user (write 'user: default' for the default account)"
                )
            }
        }
        if let field = fields["tls"] {
            upstream.tls = try tls(field)
        }
        if let field = fields["settings"] {
            upstream.settings = try settings(field)
        }
        return upstream
    }

    private func servers(_ field: Field) throws(ConfigurationError) -> [String] {
        var items: [(text: String, path: ConfigPath, node: Node)] = []
        switch field.value {
        case .sequence(let sequence):
            for (position, item) in sequence.enumerated() {
                let path = field.path.index(position)
                guard case .scalar(let scalar) = item, !Self.isNull(item) else {
                    throw error(.invalidValue, at: path, node: item, "\(path) must be a URL such as http://clickhouse:8123, found \(Self.kind(of: item))")
                }
                items.append((try substitute(scalar.string, at: path, node: item), path, item))
            }
        case .scalar:
            // One URL, or several separated by commas (handy with `${CLICKHOUSE_URLS}`).
            let text = try requiredScalar(field, expected: "a list of URLs such as [http://clickhouse:8123]")
            for (position, part) in text.split(separator: ",").enumerated() {
                items.append((String(part), field.path.index(position), field.value))
            }
        default:
            throw error(.invalidValue, at: field.path, line: field.line, column: field.column, "\(field.path) must be a list of URLs such as [http://clickhouse:8123], found \(Self.kind(of: field.value))")
        }
        guard !items.isEmpty else {
            throw error(.invalidValue, at: field.path, line: field.line, column: field.column, "\(field.path) needs at least one URL such as http://clickhouse:8123")
        }
        var servers: [String] = []
        for item in items {
            do {
                servers.append(try ValueSyntax.serverURL(item.text))
            } catch {
                // The URL is not quoted back: it may carry credentials.
                throw self.error(.invalidValue, at: item.path, line: item.node.mark?.line, column: item.node.mark?.column, "invalid URL in \(item.path): it \(error.reason); expected http(s)://host:port")
            }
        }
        return servers
    }

    private func tls(_ section: Field) throws(ConfigurationError) -> UpstreamConfiguration.TLSConfiguration? {
        if Self.isNull(section.value) { return nil }
        let fields = try fields(of: section, allowed: Self.tlsKeys)
        var tls = UpstreamConfiguration.TLSConfiguration()
        if let field = fields["ca_file"] {
            tls.caFile = try string(field, expected: "the path of a PEM file")
        }
        if let field = fields["verify"] {
            tls.verify = try bool(field)
        }
        return tls
    }

    private func settings(_ section: Field) throws(ConfigurationError) -> [Setting] {
        var settings: [Setting] = []
        for field in try orderedFields(of: section, allowed: nil) {
            let name = field.key
            guard let first = name.first, first == "_" || (first.isASCII && first.isLetter),
                name.allSatisfy({ $0 == "_" || ($0.isASCII && ($0.isLetter || $0.isNumber)) })
            else {
                throw error(.invalidValue, at: field.path, line: field.line, column: field.column, "'\(name)' in \(section.path) is not a ClickHouse setting name (letters, digits and _)")
            }
            let text = try requiredScalar(field, expected: "a number, a string or true/false")
            // Booleans travel as 1/0, which every ClickHouse version accepts for boolean settings.
            var value = text
            if case .scalar(let scalar) = field.value, scalar.style == .plain || scalar.style == .any {
                switch text.lowercased() {
                case "true": value = "1"
                case "false": value = "0"
                default: break
                }
            }
            settings.append(Setting(name: name, value: value))
        }
        return settings
    }

    private func limits(_ section: Field) throws(ConfigurationError) -> Limits {
        var limits = Limits()
        let fields = try fields(of: section, allowed: Self.limitsKeys)
        if let field = fields["max_buffer_memory"] {
            limits.maxBufferMemory = try size(field)
        }
        if let field = fields["max_request_body"] {
            limits.maxRequestBody = try size(field)
        }
        if let field = fields["header_timeout"] {
            limits.headerTimeout = try duration(field, allowZero: false)
        }
        if let field = fields["body_timeout"] {
            limits.bodyTimeout = try duration(field, allowZero: false)
        }
        if let field = fields["request_timeout"] {
            limits.requestTimeout = try duration(field, allowZero: false)
        }
        if let field = fields["idle_timeout"] {
            limits.idleTimeout = try duration(field, allowZero: false)
        }
        if let field = fields["max_connections"] {
            limits.maxConnections = try integer(field, in: 1...1_000_000)
        }
        return limits
    }

    private func spool(_ section: Field) throws(ConfigurationError) -> SpoolConfiguration? {
        if Self.isNull(section.value) { return nil }
        let fields = try fields(of: section, allowed: Self.spoolKeys)
        guard let dirField = fields["dir"] else {
            throw error(.missingKey, at: section.path.key("dir"), line: section.line, column: section.column, "spool needs 'dir', the directory of the write-ahead log (e.g. dir: /var/lib/batchhouse)")
        }
        var spool = SpoolConfiguration(dir: try string(dirField, expected: "a directory path"))
        if let field = fields["max_size"] {
            spool.maxSize = try size(field)
        }
        return spool
    }

    private func tables(_ section: Field, hasSpool: Bool, defaults: TableRule) throws(ConfigurationError) -> [TableRules.Entry] {
        var entries: [TableRules.Entry] = []
        for field in try orderedFields(of: section, allowed: nil) {
            try validatePattern(field)
            if case .scalar = field.value, !Self.isNull(field.value) {
                throw error(.invalidValue, at: field.path, line: field.line, column: field.column, "\(field.path) must be a mapping of rule keys; each key under tables is a table pattern, e.g. default.visitors: { strategy: size, max_rows: 5000 }")
            }
            let pattern = TablePattern(field.key)
            let rule = try rule(field, hasSpool: hasSpool, isDefaults: false)
            if rule.aggregate != nil, let aggregateField = try fields(of: field, allowed: Self.ruleKeys)["aggregate"] {
                if pattern.isGlob {
                    throw error(.invalidValue, at: aggregateField.path, line: aggregateField.line, column: aggregateField.column, "\(aggregateField.path): an aggregate rule needs one source table (db.table or table), not a glob: the summaries do not say which table their rows came from")
                }
                if rule.passthrough == nil && defaults.passthrough {
                    throw error(.invalidValue, at: aggregateField.path, line: aggregateField.line, column: aggregateField.column, "\(aggregateField.path): defaults has passthrough: true, so this table's rows would pass through unaggregated; set passthrough: false in this rule")
                }
            }
            entries.append(TableRules.Entry(pattern: pattern, rule: rule))
        }
        return entries
    }

    private func validatePattern(_ field: Field) throws(ConfigurationError) {
        let pattern = field.key
        let reason: String?
        if pattern.isEmpty {
            reason = "is empty"
        } else if pattern.contains(where: { $0.isWhitespace || $0.unicodeScalars.contains { $0.properties.generalCategory == .control } }) {
            reason = "contains a space or control character"
        } else if pattern.hasPrefix(".") || pattern.hasSuffix(".") || pattern.contains("..") {
            reason = "has an empty database or table part around '.'"
        } else {
            reason = nil
        }
        if let reason {
            throw error(.invalidValue, at: field.path, line: field.line, column: field.column, "invalid table pattern '\(pattern)': it \(reason); expected db.table, table, or a glob such as logs.* or events_*")
        }
    }

    /// A `defaults:` block or one `tables:` entry.
    private func rule(_ section: Field, hasSpool: Bool, isDefaults: Bool) throws(ConfigurationError) -> PartialTableRule {
        var rule = PartialTableRule()
        let fields = try fields(of: section, allowed: Self.ruleKeys)
        if let field = fields["strategy"] {
            rule.strategy = try choice(field, of: FlushStrategy.self)
        }
        if let field = fields["max_rows"] {
            rule.maxRows = try integer(field, in: 1...Int.max)
        }
        if let field = fields["max_bytes"] {
            rule.maxBytes = try size(field)
        }
        if let field = fields["max_delay"] {
            rule.maxDelay = try duration(field, allowZero: false)
        }
        if let field = fields["priority"] {
            rule.priority = try integer(field, in: 1...5, hint: "1 highest .. 5 lowest")
        }
        if let field = fields["retries"] {
            rule.retries = try integer(field, in: 0...Int.max)
        }
        if let field = fields["retry_backoff"] {
            rule.retryBackoff = try duration(field, allowZero: true)
        }
        if let field = fields["ack"] {
            let ack = try choice(field, of: AckMode.self)
            if ack == .durable, !hasSpool {
                throw error(.invalidValue, at: field.path, line: field.line, column: field.column, "\(field.path): ack 'durable' needs a spool (it answers after the spool write is fsynced); add spool: { dir: /var/lib/batchhouse } or use ack: enqueued or flushed")
            }
            rule.ack = ack
        }
        if let field = fields["sample"] {
            rule.sample = try fraction(field, in: 0...1)
        }
        if let field = fields["passthrough"] {
            rule.passthrough = try bool(field)
        }
        if let field = fields["read_your_writes"] {
            rule.readYourWrites = try bool(field)
        }
        if let field = fields["aggregate"] {
            if isDefaults {
                throw error(.invalidValue, at: field.path, line: field.line, column: field.column, "\(field.path): aggregate belongs to one table's rule under tables, not to defaults")
            }
            if rule.passthrough == true {
                throw error(.invalidValue, at: field.path, line: field.line, column: field.column, "\(field.path): a table cannot both pass through and be aggregated; remove passthrough or aggregate")
            }
            rule.aggregate = try aggregate(field)
        }
        return rule
    }

    /// A table's `aggregate:` block (docs/aggregation.md).
    private func aggregate(_ section: Field) throws(ConfigurationError) -> AggregateRule {
        guard case .mapping = section.value else {
            throw error(.invalidValue, at: section.path, line: section.line, column: section.column, "\(section.path) must be a mapping such as { into: default.response_times_1m, window: 1m, group_by: [endpoint], values: [duration_ms] }, found \(Self.kind(of: section.value))")
        }
        let fields = try fields(of: section, allowed: Self.aggregateKeys)
        func required(_ key: String, _ example: String) throws(ConfigurationError) -> Field {
            guard let field = fields[key] else {
                throw error(.missingKey, at: section.path.key(key), line: section.line, column: section.column, "\(section.path) needs '\(key)' (e.g. \(key): \(example))")
            }
            return field
        }
        let into = try target(try required("into", "default.response_times_1m"))
        let windowField = try required("window", "1m")
        let window = try duration(windowField, allowZero: false)
        let (seconds, attoseconds) = window.components
        guard attoseconds == 0, seconds <= 86_400 * 31 else {
            throw invalidValue(windowField, ValueFormat.duration(window), "must be whole seconds (window_start is a DateTime), at most 31 days")
        }
        let values = try names(try required("values", "[duration_ms]"), allowEmpty: false)
        var rule = AggregateRule(into: into, window: window, values: values)
        if let field = fields["grace"] { rule.grace = try duration(field, allowZero: true) }
        if let field = fields["time_column"] { rule.timeColumn = try string(field, expected: "a column name") }
        if let field = fields["group_by"] { rule.groupBy = try names(field, allowEmpty: true) }
        if let field = fields["quantiles"] {
            let levels = try numbers(field)
            for (index, level) in levels.enumerated() where !(level > 0 && level < 1) {
                throw error(.invalidValue, at: field.path.index(index), line: field.line, column: field.column, "\(field.path.index(index)) is \(level): a quantile is more than 0 and less than 1, e.g. [0.5, 0.95, 0.99]")
            }
            let names = levels.map(AggregateRule.quantileName)
            if let repeated = names.firstRepeated {
                throw invalidValue(field, "\(levels)", "names the quantile \(repeated) twice")
            }
            rule.quantiles = levels
        }
        if let field = fields["keep_raw"] { rule.keepRaw = try bool(field) }
        if let field = fields["max_groups"] { rule.maxGroups = try integer(field, in: 1...10_000_000) }
        if let field = fields["exact_values"] { rule.exactValues = try integer(field, in: 0...1_000_000) }
        if let field = fields["patterns"] { rule.patterns = try patterns(field) }
        // A column read twice would be written twice into the target, which ClickHouse refuses.
        let read = (rule.timeColumn.map { [$0] } ?? []) + rule.groupBy + rule.values
        if let repeated = read.firstRepeated {
            throw error(.invalidValue, at: section.path, line: section.line, column: section.column, "\(section.path) names the column '\(repeated)' twice among time_column, group_by and values; each column has one role")
        }
        if let repeated = rule.targetColumns.firstRepeated {
            throw error(.invalidValue, at: section.path, line: section.line, column: section.column, "\(section.path): the target column '\(repeated)' would be written twice (a group_by column named like window_start, count or a value's _min/_max/... column); rename the column")
        }
        return rule
    }

    private func patterns(_ section: Field) throws(ConfigurationError) -> AggregateRule.Patterns {
        guard case .mapping = section.value else {
            throw error(.invalidValue, at: section.path, line: section.line, column: section.column, "\(section.path) must be a mapping such as { into: default.patterns, spike: 2.0, drop: 0.5, sigma: 3, history: 10 }, found \(Self.kind(of: section.value))")
        }
        let fields = try fields(of: section, allowed: Self.patternsKeys)
        guard let intoField = fields["into"] else {
            throw error(.missingKey, at: section.path.key("into"), line: section.line, column: section.column, "\(section.path) needs 'into', the table findings go to (e.g. into: default.patterns)")
        }
        var patterns = AggregateRule.Patterns(into: try target(intoField))
        if let field = fields["spike"] {
            patterns.spike = try number(field, where: { $0 > 1 }, "a factor above 1, e.g. 2.0 (a window's average above 2x the recent mean)")
        }
        if let field = fields["drop"] {
            patterns.drop = try number(field, where: { $0 > 0 && $0 < 1 }, "a factor between 0 and 1, e.g. 0.5 (below half the recent mean)")
        }
        if let field = fields["sigma"] {
            patterns.sigma = try number(field, where: { $0 > 0 }, "a number of standard deviations above 0, e.g. 3")
        }
        if let field = fields["history"] { patterns.history = try integer(field, in: 2...1_000) }
        return patterns
    }

    private func target(_ field: Field) throws(ConfigurationError) -> AggregateRule.Target {
        let text = try string(field, expected: "a table: db.table or table")
        guard let target = AggregateRule.Target(parsing: text.trimmedSpaces), !text.contains(where: \.isWhitespace),
            !target.table.contains(".")
        else {
            throw invalidValue(field, text, "expected a table: db.table or table (no glob, no spaces)")
        }
        if target.table.contains(where: { "*?[".contains($0) }) {
            throw invalidValue(field, text, "is a glob; expected one table: db.table or table")
        }
        return target
    }

    /// A list of column names (a YAML sequence, or one name).
    private func names(_ field: Field, allowEmpty: Bool) throws(ConfigurationError) -> [String] {
        var names: [String] = []
        switch field.value {
        case .sequence(let sequence):
            for (position, item) in sequence.enumerated() {
                let path = field.path.index(position)
                guard case .scalar(let scalar) = item, !Self.isNull(item) else {
                    throw error(.invalidValue, at: path, node: item, "\(path) must be a column name, found \(Self.kind(of: item))")
                }
                let name = try substitute(scalar.string, at: path, node: item).trimmedSpaces
                guard !name.isEmpty else { throw error(.invalidValue, at: path, node: item, "\(path) is empty; expected a column name") }
                names.append(name)
            }
        case .scalar:
            if let text = try scalar(field), !text.trimmedSpaces.isEmpty { names = [text.trimmedSpaces] }
        default:
            throw error(.invalidValue, at: field.path, line: field.line, column: field.column, "\(field.path) must be a list of column names such as [endpoint], found \(Self.kind(of: field.value))")
        }
        if names.isEmpty && !allowEmpty {
            throw error(.invalidValue, at: field.path, line: field.line, column: field.column, "\(field.path) needs at least one column name, e.g. [duration_ms]")
        }
        if let repeated = names.firstRepeated {
            throw error(.invalidValue, at: field.path, line: field.line, column: field.column, "\(field.path) names '\(repeated)' twice")
        }
        return names
    }

    /// A list of numbers (a YAML sequence, or one number).
    private func numbers(_ field: Field) throws(ConfigurationError) -> [Double] {
        let allowed = "a list of numbers such as [0.5, 0.95, 0.99]"
        var texts: [(String, ConfigPath, Node)] = []
        switch field.value {
        case .sequence(let sequence):
            for (position, item) in sequence.enumerated() {
                let path = field.path.index(position)
                guard case .scalar(let scalar) = item, !Self.isNull(item) else {
                    throw error(.invalidValue, at: path, node: item, "\(path) must be a number, found \(Self.kind(of: item))")
                }
                texts.append((try substitute(scalar.string, at: path, node: item), path, item))
            }
        case .scalar:
            texts = [(try requiredScalar(field, expected: allowed), field.path, field.value)]
        default:
            throw error(.invalidValue, at: field.path, line: field.line, column: field.column, "\(field.path) must be \(allowed), found \(Self.kind(of: field.value))")
        }
        guard !texts.isEmpty else {
            throw error(.invalidValue, at: field.path, line: field.line, column: field.column, "\(field.path) needs at least one quantile; expected \(allowed)")
        }
        var numbers: [Double] = []
        for (text, path, node) in texts {
            guard let value = try? ValueSyntax.fraction(text) else {
                throw error(.invalidValue, at: path, node: node, "\(path) is '\(text)'; expected a number such as 0.95")
            }
            numbers.append(value)
        }
        return numbers
    }

    private func number(_ field: Field, where valid: (Double) -> Bool, _ allowed: String) throws(ConfigurationError) -> Double {
        let text = try requiredScalar(field, expected: allowed)
        guard let value = try? ValueSyntax.fraction(text), valid(value) else {
            throw invalidValue(field, text, "expected \(allowed)")
        }
        return value
    }

    // MARK: Mappings

    /// The fields of a section as a dictionary, after checking its keys against `allowed`.
    private func fields(of section: Field, allowed: [String]) throws(ConfigurationError) -> [String: Field] {
        try fields(of: section.value, at: section.path, line: section.line, allowed: allowed)
    }

    private func fields(of node: Node, at path: ConfigPath, line: Int? = nil, allowed: [String]) throws(ConfigurationError) -> [String: Field] {
        var byKey: [String: Field] = [:]
        for field in try orderedFields(of: node, at: path, line: line, allowed: allowed) {
            byKey[field.key] = field
        }
        return byKey
    }

    private func orderedFields(of section: Field, allowed: [String]?) throws(ConfigurationError) -> [Field] {
        try orderedFields(of: section.value, at: section.path, line: section.line, allowed: allowed)
    }

    /// The keys of a mapping in file order; null counts as an empty mapping. Keys from `<<` merges come
    /// after the mapping's own keys and never override them.
    private func orderedFields(of node: Node, at path: ConfigPath, line: Int?, allowed: [String]?) throws(ConfigurationError) -> [Field] {
        if Self.isNull(node) { return [] }
        guard case .mapping(let mapping) = node else {
            let what = path.isRoot ? "the file" : "\(path)"
            throw error(.invalidValue, at: path.isRoot ? nil : path, line: line ?? node.mark?.line, column: node.mark?.column, "\(what) must be a mapping of keys, found \(Self.kind(of: node))")
        }
        var own: [Field] = []
        var merged: [Field] = []
        for (keyNode, value) in mapping {
            guard case .scalar(let keyScalar) = keyNode else {
                throw error(.invalidValue, at: path.isRoot ? nil : path, node: keyNode, "keys must be plain text, found \(Self.kind(of: keyNode)) as a key")
            }
            if keyScalar.string == "<<", keyScalar.style == .plain {
                let sources = value.sequence.map(Array.init) ?? [value]
                for source in sources {
                    merged += try orderedFields(of: source, at: path, line: keyNode.mark?.line, allowed: allowed)
                }
                continue
            }
            let key = try substitute(keyScalar.string, at: path, node: keyNode)
            let field = Field(key: key, keyNode: keyNode, value: value, path: path.key(key))
            if let allowed, !allowed.contains(key) {
                throw unknownKey(field, in: path, allowed: allowed)
            }
            if let earlier = own.first(where: { $0.key == key }) {
                throw error(.duplicateKey, at: field.path, line: field.line, column: field.column, "duplicate key '\(key)' in \(path.isRoot ? "the file" : path.description) (first at line \(earlier.line ?? 0))")
            }
            own.append(field)
        }
        var seen = Set(own.map(\.key))
        return own + merged.filter { seen.insert($0.key).inserted }
    }

    private func unknownKey(_ field: Field, in path: ConfigPath, allowed: [String]) -> ConfigurationError {
        var message = path.isRoot ? "unknown top-level key '\(field.key)'" : "unknown key '\(field.key)' in \(path)"
        message += " (allowed: \(allowed.joined(separator: ", "))"
        if let suggestion = ValueSyntax.suggestion(for: field.key, among: allowed) {
            message += "; did you mean '\(suggestion)'?"
        } else if path.isRoot, Self.ruleKeys.contains(field.key) {
            message += "; table rule keys go under defaults: or tables:"
        } else if path.isRoot, Self.upstreamKeys.contains(field.key) {
            message += "; did you mean upstream.\(field.key)?"
        }
        message += ")"
        return error(.unknownKey, at: field.path, line: field.line, column: field.column, message)
    }

    // MARK: Scalars

    /// The value's text after `${VAR}` substitution; nil for a null value (`key:`, `~`, `null`).
    private func scalar(_ field: Field) throws(ConfigurationError) -> String? {
        switch field.value {
        case .scalar(let scalar):
            if Self.isNull(field.value) { return nil }
            return try substitute(scalar.string, at: field.path, node: field.value)
        default:
            throw error(.invalidValue, at: field.path, line: field.line, column: field.column, "\(field.path) must be a single value, found \(Self.kind(of: field.value))")
        }
    }

    private func requiredScalar(_ field: Field, expected: String) throws(ConfigurationError) -> String {
        guard let text = try scalar(field) else {
            throw error(.invalidValue, at: field.path, line: field.line, column: field.column, "\(field.path) has no value; expected \(expected)")
        }
        return text
    }

    private func string(_ field: Field, expected: String) throws(ConfigurationError) -> String {
        let text = try requiredScalar(field, expected: expected)
        guard !text.trimmedSpaces.isEmpty else { throw invalidValue(field, text, "must not be empty; expected \(expected)") }
        return text
    }

    private func integer(_ field: Field, in range: ClosedRange<Int>, hint: String? = nil) throws(ConfigurationError) -> Int {
        let allowed: String
        if range.upperBound == Int.max {
            allowed = "a whole number, \(range.lowerBound) or more"
        } else {
            allowed = "a whole number from \(range.lowerBound) to \(range.upperBound)" + (hint.map { " (\($0))" } ?? "")
        }
        let text = try requiredScalar(field, expected: allowed)
        let value: Int
        do {
            value = try ValueSyntax.integer(text)
        } catch {
            throw invalidValue(field, text, "\(error.reason); expected \(allowed)")
        }
        guard range.contains(value) else { throw invalidValue(field, text, "out of range; expected \(allowed)") }
        return value
    }

    private func fraction(_ field: Field, in range: ClosedRange<Double>) throws(ConfigurationError) -> Double {
        let allowed = "a number from \(range.lowerBound) to \(range.upperBound)"
        let text = try requiredScalar(field, expected: allowed)
        let value: Double
        do {
            value = try ValueSyntax.fraction(text)
        } catch {
            throw invalidValue(field, text, "\(error.reason); expected \(allowed)")
        }
        guard range.contains(value) else { throw invalidValue(field, text, "out of range; expected \(allowed)") }
        return value
    }

    private func duration(_ field: Field, allowZero: Bool) throws(ConfigurationError) -> Duration {
        let allowed = "a duration such as \(ValueSyntax.durationExamples)"
        let text = try requiredScalar(field, expected: allowed)
        let value: Duration
        do {
            value = try ValueSyntax.duration(text)
        } catch {
            throw invalidValue(field, text, "\(error.reason); expected \(allowed)")
        }
        if !allowZero, value == .zero { throw invalidValue(field, text, "must be more than zero; expected \(allowed)") }
        return value
    }

    private func size(_ field: Field) throws(ConfigurationError) -> Int {
        let allowed = "a size: \(ValueSyntax.sizeExamples)"
        let text = try requiredScalar(field, expected: allowed)
        let value: Int
        do {
            value = try ValueSyntax.size(text)
        } catch {
            throw invalidValue(field, text, "\(error.reason); expected \(allowed)")
        }
        guard value >= 1 else { throw invalidValue(field, text, "must be at least 1 byte; expected \(allowed)") }
        return value
    }

    private func bool(_ field: Field) throws(ConfigurationError) -> Bool {
        let allowed = "true or false"
        let text = try requiredScalar(field, expected: allowed)
        guard let value = ValueSyntax.bool(text) else { throw invalidValue(field, text, "expected \(allowed)") }
        return value
    }

    private func choice<Choice: RawRepresentable & CaseIterable>(_ field: Field, of _: Choice.Type) throws(ConfigurationError) -> Choice where Choice.RawValue == String {
        let names = Choice.allCases.map(\.rawValue)
        let allowed = "one of \(names.joined(separator: ", "))"
        let text = try requiredScalar(field, expected: allowed)
        if let value = Choice(rawValue: text.trimmedSpaces.lowercased()) { return value }
        var reason = "expected \(allowed)"
        if let suggestion = ValueSyntax.suggestion(for: text, among: names) { reason += "; did you mean '\(suggestion)'?" }
        throw invalidValue(field, text, reason)
    }

    private func substitute(_ text: String, at path: ConfigPath, node: Node) throws(ConfigurationError) -> String {
        do {
            return try EnvironmentSubstitution.apply(text, environment: environment)
        } catch {
            let place = path.isRoot ? "the file" : path.description
            switch error {
            case .undefined(let name):
                throw self.error(.missingVariable, at: path.isRoot ? nil : path, node: node, "environment variable '\(name)' is not set (used in \(place)); set it, or write ${\(name):-fallback}")
            case .malformed(let reason):
                throw self.error(.invalidValue, at: path.isRoot ? nil : path, node: node, "bad ${...} in \(place): \(reason); write $${ for a literal ${")
            }
        }
    }

    // MARK: Errors

    private func invalidValue(_ field: Field, _ text: String, _ reason: String) -> ConfigurationError {
        let shown = text.count > 60 ? String(text.prefix(57)) + "..." : text
        return error(.invalidValue, at: field.path, line: field.line, column: field.column, "invalid value '\(shown)' for \(field.path): \(reason)")
    }

    private func error(_ code: ConfigurationError.Code, at path: ConfigPath?, node: Node, _ message: String) -> ConfigurationError {
        error(code, at: path, line: node.mark?.line, column: node.mark?.column, message)
    }

    private func error(_ code: ConfigurationError.Code, at path: ConfigPath?, line: Int?, column: Int?, _ message: String) -> ConfigurationError {
        ConfigurationError(code: code, key: path?.description, line: line, column: column, file: file, message: message)
    }

    // MARK: Node helpers

    static func isNull(_ node: Node) -> Bool {
        guard case .scalar(let scalar) = node, scalar.style == .plain || scalar.style == .any else { return false }
        return ["", "~", "null", "Null", "NULL"].contains(scalar.string)
    }

    static func kind(of node: Node) -> String {
        switch node {
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .scalar: return isNull(node) ? "nothing" : "a single value"
        case .alias: return "an alias"
        }
    }
}

extension Array where Element: Hashable {
    /// The first element that appears a second time, if any.
    fileprivate var firstRepeated: Element? {
        var seen = Set<Element>()
        for element in self where !seen.insert(element).inserted { return element }
        return nil
    }
}
