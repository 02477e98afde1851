/// What a statement does, judged from its first words (`query` + "\n" + body, as ClickHouse joins them): whether
/// it changes a ClickHouse session's state (docs/request-path.md, "Sessions"), and whether it can see rows at all
/// (docs/delivery.md, "Read your writes").
public enum SessionStatements {
    /// Words that begin a statement which leaves a session's settings, database and temporary tables alone.
    static let stateless: Set<String> = ["SELECT", "WITH", "SHOW", "DESC", "DESCRIBE", "EXISTS", "EXPLAIN", "INSERT"]
    /// Words that begin DDL, which changes tables but not the session, unless it names a temporary table.
    static let statelessUnlessTemporary: Set<String> = [
        "CREATE", "DROP", "ALTER", "TRUNCATE", "OPTIMIZE", "RENAME", "ATTACH", "DETACH", "EXCHANGE",
    ]
    /// Words that begin a statement which reads no table's rows: metadata, settings, plans.
    static let seesNoRows: Set<String> = ["DESC", "DESCRIBE", "SHOW", "EXISTS", "SET", "USE", "EXPLAIN"]

    /// The first word, upper-cased, and where it ends; nil when `text` ends before it does (`isComplete`: nothing
    /// follows). "(" for a parenthesised statement, "" when there is no word.
    static func firstWord(_ bytes: [UInt8], truncated: Bool, isComplete: Bool) -> (word: String, end: Int)? {
        var i = 0
        let settled = isComplete || truncated
        while i < bytes.count {
            let byte = bytes[i]
            if byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D || byte == 0x0C {
                i += 1
            } else if byte == UInt8(ascii: "-"), i + 1 < bytes.count, bytes[i + 1] == UInt8(ascii: "-") {
                while i < bytes.count && bytes[i] != 0x0A { i += 1 }
            } else if byte == UInt8(ascii: "/"), i + 1 < bytes.count, bytes[i + 1] == UInt8(ascii: "*") {
                i += 2
                while i + 1 < bytes.count && !(bytes[i] == UInt8(ascii: "*") && bytes[i + 1] == UInt8(ascii: "/")) {
                    i += 1
                }
                if i + 1 >= bytes.count { return settled ? ("", bytes.count) : nil }
                i += 2
            } else if (byte == UInt8(ascii: "-") || byte == UInt8(ascii: "/")) && i + 1 == bytes.count {
                return settled ? ("", bytes.count) : nil  // may start a comment
            } else {
                break
            }
        }
        guard i < bytes.count else { return settled ? ("", i) : nil }
        if bytes[i] == UInt8(ascii: "(") { return ("(", i + 1) }
        var word: [UInt8] = []
        while i < bytes.count, (bytes[i] | 0x20) >= UInt8(ascii: "a"), (bytes[i] | 0x20) <= UInt8(ascii: "z") {
            word.append(bytes[i] & ~0x20)
            i += 1
        }
        if i == bytes.count && !settled { return nil }
        return (String(decoding: word, as: UTF8.self), i)
    }

    /// True when the statement starting `text` leaves the session's state alone, false when it may change it, nil
    /// when `text` ends before that can be told (`isComplete`: nothing follows, then false).
    public static func leavesStateAlone(_ text: some Collection<UInt8>, isComplete: Bool) -> Bool? {
        let bytes = Array(text.prefix(4096))
        let truncated = bytes.count < text.count
        guard let (first, end) = firstWord(bytes, truncated: truncated, isComplete: isComplete) else { return nil }
        if first == "(" || stateless.contains(first) { return true }
        guard statelessUnlessTemporary.contains(first) else { return false }
        // `CREATE TEMPORARY TABLE`, `DROP TEMPORARY TABLE`: the word comes right after the first one.
        let rest = bytes[end...].prefix(64)
        if String(decoding: rest, as: UTF8.self).uppercased().contains("TEMPORARY") { return false }
        return rest.count >= 12 || isComplete || truncated ? true : nil
    }

    /// True when the statement starting `text` reads no table's rows (DESCRIBE, SHOW, EXISTS, SET, USE, EXPLAIN):
    /// it needs no batch to land first. False when it may, or when `text` does not say yet.
    public static func seesNoRows(_ text: some Collection<UInt8>) -> Bool {
        let bytes = Array(text.prefix(256))
        guard let (first, _) = firstWord(bytes, truncated: bytes.count < text.count, isComplete: false) else {
            return false
        }
        return seesNoRows.contains(first)
    }
}
