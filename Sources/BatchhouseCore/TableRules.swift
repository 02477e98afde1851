/// Which tables a rule under `tables:` applies to.
///
/// - `db.table`: that table in that database.
/// - `table` (no `.`): a table of that name in any database.
/// - a glob with `*` (any run of characters, `.` included) and `?` (one character), e.g. `logs.*`,
///   `events_*`, `*.tmp_*`. There is no escape: table names with `*` or `?` cannot be matched exactly.
///
/// A pattern containing `.` is matched against `database.table`, otherwise against the table name alone.
/// Matching is case-sensitive, as ClickHouse's identifiers are.
public struct TablePattern: Sendable, Hashable, CustomStringConvertible, ExpressibleByStringLiteral {
    public var text: String

    public init(_ text: String) {
        self.text = text
    }

    public init(stringLiteral text: String) {
        self.text = text
    }

    /// How a pattern matches, from most to least specific.
    public enum Kind: Int, Sendable, Hashable, Comparable {
        /// `db.table`
        case exactDatabaseTable = 0
        /// `table`, any database
        case exactTable = 1
        /// contains `*` or `?`
        case glob = 2

        public static func < (lhs: Kind, rhs: Kind) -> Bool { lhs.rawValue < rhs.rawValue }
    }

    public var kind: Kind {
        if isGlob { return .glob }
        return hasDatabasePart ? .exactDatabaseTable : .exactTable
    }

    public var isGlob: Bool {
        text.unicodeScalars.contains { $0 == "*" || $0 == "?" }
    }

    /// True when the pattern contains `.` and so is matched against `database.table`.
    public var hasDatabasePart: Bool {
        text.unicodeScalars.contains(".")
    }

    /// Characters other than `*` and `?`: among globs, more of them is more specific.
    public var literalCount: Int {
        text.unicodeScalars.reduce(0) { $0 + (($1 == "*" || $1 == "?") ? 0 : 1) }
    }

    public func matches(database: String, table: String) -> Bool {
        CompiledPattern(self).matches(database: database, table: table)
    }

    public var description: String { text }
}

/// The rules of the strategy file: `defaults` plus the `tables:` entries, resolved per table.
///
/// Resolution runs for every request, so everything that does not depend on the table is computed once
/// when the rules are built: exact patterns sit in dictionaries, globs are compiled and sorted by
/// specificity, and each entry's merged rule is precomputed. A lookup is at most two dictionary probes
/// plus one pass over the globs, and allocates nothing unless a glob with a database part has to be tried.
public struct TableRules: Sendable, Equatable {
    /// One `tables:` entry as written: its pattern and only the keys it sets.
    public struct Entry: Sendable, Hashable {
        public var pattern: TablePattern
        public var rule: PartialTableRule

        public init(pattern: TablePattern, rule: PartialTableRule) {
            self.pattern = pattern
            self.rule = rule
        }
    }

    /// The rule of every table that no entry matches, and the base every entry is laid over.
    public var defaults: TableRule {
        didSet { index = Index(defaults: defaults, entries: entries) }
    }

    /// The entries in file order. When two entries have the same pattern, the first one is used.
    public var entries: [Entry] {
        didSet { index = Index(defaults: defaults, entries: entries) }
    }

    private var index: Index

    public init(defaults: TableRule = TableRule(), entries: [Entry] = []) {
        self.defaults = defaults
        self.entries = entries
        self.index = Index(defaults: defaults, entries: entries)
    }

    /// The effective rule for a table: the most specific matching entry laid over `defaults`, or `defaults`.
    ///
    /// Pass the effective database of the INSERT (docs/request-path.md, "Reassembling the statement").
    public func rule(database: String, table: String) -> TableRule {
        guard let position = index.match(database: database, table: table) else { return defaults }
        return index.merged[position]
    }

    /// The pattern of the entry that decides `rule(database:table:)`; nil when `defaults` applies.
    public func matchingPattern(database: String, table: String) -> TablePattern? {
        guard let position = index.match(database: database, table: table) else { return nil }
        return entries[position].pattern
    }

    /// The entries in the order resolution tries them: exact `db.table`, exact `table`, then globs with
    /// more literal characters first, a database part before none, and file order last. Entries whose
    /// pattern repeats an earlier one are left out: they never decide a rule.
    public var entriesBySpecificity: [Entry] {
        index.order.map { entries[$0] }
    }

    /// What a table matched by `entry` gets: the entry's keys laid over `defaults` (see `merge(_:over:)`).
    public func effectiveRule(of entry: Entry) -> TableRule {
        Self.merge(entry.rule, over: defaults)
    }

    /// `partial` laid over `defaults`, key by key, with one exception: a rule that picks a different
    /// `strategy` but sets no `max_delay` gets that strategy's own default delay (nil, see
    /// `TableRule.effectiveMaxDelay`) instead of the one in `defaults`. The delay means different things
    /// per strategy (the flush trigger for `time`, a safety net for `size` and `memory`), so a table
    /// written as `{ strategy: size, max_rows: 5000 }` should not flush every second because the
    /// defaults' hybrid strategy does.
    public static func merge(_ partial: PartialTableRule, over defaults: TableRule) -> TableRule {
        var rule = partial.applied(to: defaults)
        if partial.maxDelay == nil, let strategy = partial.strategy, strategy != defaults.strategy {
            rule.maxDelay = nil
        }
        return rule
    }

    public static func == (lhs: TableRules, rhs: TableRules) -> Bool {
        lhs.defaults == rhs.defaults && lhs.entries == rhs.entries
    }
}

extension TableRules {
    /// Everything precomputed from `defaults` and `entries`. Values are positions in `entries`.
    fileprivate struct Index: Sendable {
        /// database -> table -> entry. A pattern `a.b.c` is filed under every split at a `.`
        /// (`a` / `b.c` and `a.b` / `c`), so it matches exactly the pairs whose `database.table` is `a.b.c`.
        var exactDatabaseTable: [String: [String: Int]] = [:]
        var exactTable: [String: Int] = [:]
        /// Most specific first.
        var globs: [(pattern: CompiledPattern, position: Int)] = []
        var anyGlobHasDatabasePart = false
        /// Per entry: its rule merged over the defaults.
        var merged: [TableRule] = []
        /// Positions in resolution order, without repeated patterns.
        var order: [Int] = []

        init(defaults: TableRule, entries: [Entry]) {
            merged = entries.map { TableRules.merge($0.rule, over: defaults) }
            var seen = Set<TablePattern>()
            var exactQualifiedOrder: [Int] = []
            var exactTableOrder: [Int] = []
            for (position, entry) in entries.enumerated() where seen.insert(entry.pattern).inserted {
                let pattern = entry.pattern
                switch pattern.kind {
                case .exactDatabaseTable:
                    exactQualifiedOrder.append(position)
                    let scalars = Array(pattern.text.unicodeScalars)
                    for split in scalars.indices where scalars[split] == "." {
                        let database = String(String.UnicodeScalarView(scalars[..<split]))
                        let table = String(String.UnicodeScalarView(scalars[(split + 1)...]))
                        if exactDatabaseTable[database, default: [:]][table] == nil {
                            exactDatabaseTable[database, default: [:]][table] = position
                        }
                    }
                case .exactTable:
                    exactTableOrder.append(position)
                    exactTable[pattern.text] = position
                case .glob:
                    let compiled = CompiledPattern(pattern)
                    globs.append((compiled, position))
                    anyGlobHasDatabasePart = anyGlobHasDatabasePart || compiled.hasDatabasePart
                }
            }
            // Stable: equal specificity keeps file order.
            globs = globs.enumerated().sorted { lhs, rhs in
                let (a, b) = (lhs.element.pattern, rhs.element.pattern)
                if a.literalCount != b.literalCount { return a.literalCount > b.literalCount }
                if a.hasDatabasePart != b.hasDatabasePart { return a.hasDatabasePart }
                return lhs.offset < rhs.offset
            }.map(\.element)
            order = exactQualifiedOrder + exactTableOrder + globs.map(\.position)
        }

        func match(database: String, table: String) -> Int? {
            if let position = exactDatabaseTable[database]?[table] { return position }
            if let position = exactTable[table] { return position }
            guard !globs.isEmpty else { return nil }
            var qualified: [Unicode.Scalar] = []
            if anyGlobHasDatabasePart {
                qualified.reserveCapacity(database.unicodeScalars.count + 1 + table.unicodeScalars.count)
                qualified.append(contentsOf: database.unicodeScalars)
                qualified.append(".")
                qualified.append(contentsOf: table.unicodeScalars)
            }
            for glob in globs {
                let hit = glob.pattern.hasDatabasePart
                    ? glob.pattern.matches(qualified)
                    : glob.pattern.matches(table.unicodeScalars)
                if hit { return glob.position }
            }
            return nil
        }
    }
}

/// A pattern turned into tokens once, so matching does no string work.
private struct CompiledPattern: Sendable {
    enum Token: Sendable, Equatable {
        case literal(Unicode.Scalar)
        case one
        case any
    }

    let tokens: [Token]
    let hasDatabasePart: Bool
    let literalCount: Int

    init(_ pattern: TablePattern) {
        var tokens: [Token] = []
        for scalar in pattern.text.unicodeScalars {
            switch scalar {
            case "*":
                if tokens.last != .any { tokens.append(.any) }
            case "?":
                tokens.append(.one)
            default:
                tokens.append(.literal(scalar))
            }
        }
        self.tokens = tokens
        self.hasDatabasePart = pattern.hasDatabasePart
        self.literalCount = pattern.literalCount
    }

    func matches(database: String, table: String) -> Bool {
        guard hasDatabasePart else { return matches(table.unicodeScalars) }
        var subject = Array(database.unicodeScalars)
        subject.append(".")
        subject.append(contentsOf: table.unicodeScalars)
        return matches(subject)
    }

    /// Glob matching with single-star backtracking: linear for one `*`, O(n·m) at worst.
    func matches<Subject: Collection>(_ subject: Subject) -> Bool where Subject.Element == Unicode.Scalar {
        var t = 0
        var s = subject.startIndex
        var star: (token: Int, subject: Subject.Index)?
        while s != subject.endIndex {
            if t < tokens.count {
                switch tokens[t] {
                case .any:
                    star = (t, s)
                    t += 1
                    continue
                case .one:
                    t += 1
                    s = subject.index(after: s)
                    continue
                case .literal(let scalar) where scalar == subject[s]:
                    t += 1
                    s = subject.index(after: s)
                    continue
                case .literal:
                    break
                }
            }
            // Mismatch: let the last `*` swallow one more character, or fail.
            guard let last = star else { return false }
            let next = subject.index(after: last.subject)
            star = (last.token, next)
            t = last.token + 1
            s = next
        }
        while t < tokens.count, tokens[t] == .any { t += 1 }
        return t == tokens.count
    }
}
