/// Settings that judge a statement's text (its size, its syntax tree) rather than its rows. A batch goes upstream
/// under a statement the proxy wrote (`BatchKey.insertStatement`), longer than many clients' own, so these settings
/// are checked against the client's statement here and never forwarded with a batch (docs/request-path.md,
/// "Settings that judge the statement").
public enum StatementTextSettings {
    /// `max_query_size` bounds the text ClickHouse parses; the others bound the parsed tree.
    public static let names: Set<String> = [
        "max_query_size", "max_parser_depth", "max_parser_backtracks", "max_ast_depth", "max_ast_elements",
        "max_expanded_ast_elements",
    ]

    /// What to do with an INSERT sent with `settings`.
    public enum Verdict: Sendable, Hashable {
        /// None of them applies, or the statement clearly fits: batch it, without them.
        case batch
        /// ClickHouse must judge the client's own statement: send it as received, so the answer is ClickHouse's.
        case passthrough(reason: String)
    }

    /// `max_query_size`: ClickHouse 18.16 takes `insert\ninto t values (1)` when the limit reaches the end of `values`
    /// and needs one byte more after a format name (and none in some spellings), so a statement within one byte of
    /// the limit, or beyond it, goes to ClickHouse, which answers as it would without the proxy. The tree limits
    /// cannot be judged without ClickHouse's parser: an INSERT that sets them goes to ClickHouse as received.
    public static func verdict(for statement: InsertStatement, settings: [Setting]) -> Verdict {
        var maxQuerySize: String?
        for setting in settings where names.contains(setting.name) {
            guard setting.name == "max_query_size" else {
                return .passthrough(reason: "\(setting.name) is judged by ClickHouse on the client's statement")
            }
            maxQuerySize = setting.value
        }
        guard let maxQuerySize else { return .batch }
        guard let limit = Int(maxQuerySize) else {
            return .passthrough(reason: "max_query_size=\(maxQuerySize) is for ClickHouse to read")
        }
        if statement.statementEnd + 1 >= limit {
            return .passthrough(reason: "the statement does not clearly fit max_query_size=\(limit)")
        }
        return .batch
    }

    /// `settings` without the ones that judge a statement's text.
    public static func removed(from settings: [Setting]) -> [Setting] {
        guard settings.contains(where: { names.contains($0.name) }) else { return settings }
        return settings.filter { !names.contains($0.name) }
    }
}
