import BatchhouseCore
import Testing

@Suite("TableRules")
struct TableRulesTests {
    private func partial(_ configure: (inout PartialTableRule) -> Void) -> PartialTableRule {
        var rule = PartialTableRule()
        configure(&rule)
        return rule
    }

    /// An entry that sets only `priority`, so each pattern's rule is recognisable.
    private func entry(_ pattern: TablePattern, priority: Int) -> TableRules.Entry {
        .init(pattern: pattern, rule: partial { $0.priority = priority })
    }

    @Test func noEntriesGivesDefaults() {
        let defaults = TableRule(strategy: .size, maxRows: 7)
        let rules = TableRules(defaults: defaults)
        #expect(rules.rule(database: "default", table: "anything") == defaults)
        #expect(rules.matchingPattern(database: "default", table: "anything") == nil)
    }

    @Test func exactDatabaseTableBeatsTableBeatsGlobs() {
        // File order is deliberately least specific first.
        let rules = TableRules(entries: [
            entry("*", priority: 5),
            entry("*.events", priority: 4),
            entry("events", priority: 3),
            entry("analytics.events", priority: 1),
        ])
        #expect(rules.rule(database: "analytics", table: "events").priority == 1)
        #expect(rules.rule(database: "other", table: "events").priority == 3)
        #expect(rules.rule(database: "other", table: "clicks").priority == 5)
        #expect(rules.matchingPattern(database: "analytics", table: "events") == "analytics.events")
        #expect(rules.matchingPattern(database: "other", table: "events") == "events")
        #expect(rules.matchingPattern(database: "other", table: "clicks") == "*")
        #expect(rules.entriesBySpecificity.map(\.pattern) == ["analytics.events", "events", "*.events", "*"])
    }

    @Test func globWithMoreLiteralCharactersWins() {
        let rules = TableRules(entries: [
            entry("events_*", priority: 4),  // 7 literal characters
            entry("events_2024_*", priority: 2),  // 12
            entry("*_2024_??", priority: 3),  // 6
        ])
        #expect(rules.matchingPattern(database: "db", table: "events_2024_01") == "events_2024_*")
        #expect(rules.matchingPattern(database: "db", table: "events_2023_01") == "events_*")
        #expect(rules.matchingPattern(database: "db", table: "clicks_2024_01") == "*_2024_??")
        #expect(rules.matchingPattern(database: "db", table: "clicks_2024_001") == nil)
    }

    @Test func equalLiteralCountPrefersDatabasePartThenFileOrder() {
        // "*_x" and "l.*" both have 2 literal characters; "l.*" has a database part.
        let rules = TableRules(entries: [entry("*_x", priority: 4), entry("l.*", priority: 2)])
        #expect(rules.matchingPattern(database: "l", table: "a_x") == "l.*")
        #expect(rules.matchingPattern(database: "m", table: "a_x") == "*_x")
        // Same count, neither has a database part: file order.
        let twins = TableRules(entries: [entry("a*", priority: 1), entry("*a", priority: 2)])
        #expect(twins.matchingPattern(database: "db", table: "aa") == "a*")
        let swapped = TableRules(entries: [entry("*a", priority: 2), entry("a*", priority: 1)])
        #expect(swapped.matchingPattern(database: "db", table: "aa") == "*a")
    }

    @Test func patternWithDotMatchesDatabaseAndTable() {
        let rules = TableRules(entries: [entry("logs.*", priority: 2), entry("*.tmp_*", priority: 4)])
        #expect(rules.matchingPattern(database: "logs", table: "nginx") == "logs.*")
        #expect(rules.matchingPattern(database: "default", table: "nginx") == nil)
        #expect(rules.matchingPattern(database: "default", table: "tmp_1") == "*.tmp_*")
        // Both have 5 literal characters and a database part: file order.
        #expect(rules.matchingPattern(database: "logs", table: "tmp_1") == "logs.*")
        // A pattern without a dot never sees the database.
        let tableOnly = TableRules(entries: [entry("log*", priority: 1)])
        #expect(tableOnly.matchingPattern(database: "logs", table: "x") == nil)
        #expect(tableOnly.matchingPattern(database: "x", table: "logins") == "log*")
    }

    @Test func globSyntax() {
        #expect(TablePattern("*").matches(database: "d", table: ""))
        #expect(TablePattern("a?c").matches(database: "d", table: "abc"))
        #expect(!TablePattern("a?c").matches(database: "d", table: "ac"))
        #expect(TablePattern("a*b*c").matches(database: "d", table: "aXXbYYbZc"))
        #expect(!TablePattern("a*b*c").matches(database: "d", table: "aXXbYYbZ"))
        #expect(TablePattern("**x").matches(database: "d", table: "x"))
        #expect(TablePattern("?é*").matches(database: "d", table: "zé_table"))
        #expect(TablePattern("Events").matches(database: "d", table: "Events"))
        #expect(!TablePattern("Events").matches(database: "d", table: "events"))  // case-sensitive
        #expect(TablePattern("d*.t").matches(database: "db.x", table: "t"))  // * crosses dots
        #expect(TablePattern("logs.*").literalCount == 5)
        #expect(TablePattern("*.tmp_*").kind == .glob)
        #expect(TablePattern("default.payments").kind == .exactDatabaseTable)
        #expect(TablePattern("payments").kind == .exactTable)
    }

    /// The compiled matcher against a plain recursive definition of `*` and `?`, on random short strings.
    @Test func globMatcherAgreesWithReference() {
        func reference(_ pattern: Substring, _ subject: Substring) -> Bool {
            guard let first = pattern.first else { return subject.isEmpty }
            switch first {
            case "*":
                return reference(pattern.dropFirst(), subject) || (!subject.isEmpty && reference(pattern, subject.dropFirst()))
            case "?":
                return !subject.isEmpty && reference(pattern.dropFirst(), subject.dropFirst())
            default:
                return subject.first == first && reference(pattern.dropFirst(), subject.dropFirst())
            }
        }
        var generator = SystemRandomNumberGenerator()
        func random(_ alphabet: [Character], maxLength: Int) -> String {
            String((0..<Int.random(in: 0...maxLength, using: &generator)).map { _ in alphabet.randomElement(using: &generator)! })
        }
        for _ in 0..<5000 {
            let pattern = random(["a", "b", "*", "?"], maxLength: 6)
            let table = random(["a", "b"], maxLength: 8)
            #expect(
                TablePattern(pattern).matches(database: "db", table: table) == reference(Substring(pattern), Substring(table)),
                "'\(pattern)' vs '\(table)'"
            )
            let qualified = "a" + pattern
            let database = random(["a", "b"], maxLength: 3)
            let subject = database + "." + table
            #expect(
                TablePattern(qualified + ".*").matches(database: database, table: table)
                    == reference(Substring(qualified + ".*"), Substring(subject)),
                "'\(qualified).*' vs '\(subject)'"
            )
        }
    }

    @Test func exactPatternWithSeveralDotsMatchesEitherSplit() {
        let rules = TableRules(entries: [entry("a.b.c", priority: 1)])
        #expect(rules.matchingPattern(database: "a", table: "b.c") == "a.b.c")
        #expect(rules.matchingPattern(database: "a.b", table: "c") == "a.b.c")
        #expect(rules.matchingPattern(database: "a", table: "b") == nil)
    }

    @Test func repeatedPatternUsesTheFirst() {
        let rules = TableRules(entries: [entry("t", priority: 1), entry("t", priority: 5), entry("g*", priority: 2), entry("g*", priority: 4)])
        #expect(rules.rule(database: "d", table: "t").priority == 1)
        #expect(rules.rule(database: "d", table: "gx").priority == 2)
        #expect(rules.entriesBySpecificity.count == 2)
    }

    @Test func entryKeysAreLaidOverDefaults() {
        let defaults = TableRule(strategy: .hybrid, maxRows: 1000, maxBytes: 1 << 20, maxDelay: .seconds(2), priority: 3)
        let rules = TableRules(defaults: defaults, entries: [
            .init(pattern: "a", rule: partial { $0.maxRows = 10 }),
            .init(pattern: "b", rule: partial { $0.strategy = .size }),
            .init(pattern: "c", rule: partial { $0.strategy = .hybrid }),
            .init(pattern: "d", rule: partial { $0.strategy = .memory; $0.maxDelay = .seconds(9) }),
        ])
        let a = rules.rule(database: "x", table: "a")
        #expect(a.maxRows == 10 && a.maxBytes == 1 << 20 && a.maxDelay == .seconds(2) && a.strategy == .hybrid)
        // A different strategy without max_delay gets its own default delay, not the defaults' 2s.
        let b = rules.rule(database: "x", table: "b")
        #expect(b.strategy == .size && b.maxDelay == nil && b.effectiveMaxDelay == .seconds(60) && b.maxRows == 1000)
        // The same strategy restated keeps the inherited delay.
        #expect(rules.rule(database: "x", table: "c").maxDelay == .seconds(2))
        #expect(rules.rule(database: "x", table: "d").maxDelay == .seconds(9))
    }

    @Test func changingDefaultsOrEntriesRebuildsTheIndex() {
        var rules = TableRules(entries: [entry("t", priority: 1)])
        rules.defaults.priority = 5
        #expect(rules.rule(database: "d", table: "other").priority == 5)
        rules.entries.append(entry("o*", priority: 2))
        #expect(rules.rule(database: "d", table: "other").priority == 2)
        rules.defaults.maxRows = 42
        #expect(rules.rule(database: "d", table: "t").maxRows == 42)
        #expect(rules == TableRules(defaults: rules.defaults, entries: rules.entries))
    }
}
