/// Recognises the head of a batchable INSERT in the statement text ClickHouse would parse: the `query` URL parameter,
/// "\n", then (a prefix of) the body (docs/request-path.md, "Reassembling the statement").
///
/// Grammar accepted, following ClickHouse's ParserInsertQuery (18.x and current):
///
///     INSERT INTO [TABLE] [db.]table [(col, n.x, `quoted col`, ...)] [SETTINGS k = v, ...]
///         ( VALUES | FORMAT name ) [SETTINGS k = v, ...   -- only with `allowSettingsAfterFormat`]
///
/// Tokens follow ClickHouse's Lexer: keywords are case-insensitive; identifiers are bare words or `backtick` /
/// "double" quoted with `\` escapes and doubled quotes; whitespace and comments (`-- ...`, `// ...`, `# ...`,
/// `#!...`, `/* ... */`) may appear between any two tokens. Setting values are numbers (optionally signed),
/// 'strings' (unescaped) or bare words (`true`, `1`, ...).
///
/// Where the data begins, as in ParserInsertQuery::parseImpl:
/// - After `VALUES` the data is `pos->begin`, the start of the next token: whitespace and comments after `VALUES`
///   are skipped and the data starts at the first tuple (or at a `;`, which means no data).
/// - After `FORMAT name` ClickHouse takes the end of the name token (or of the last setting when SETTINGS follow
///   the format), refuses a `;` right there (SYNTAX_ERROR, so we pass it through), then skips spaces, tabs and
///   form feeds, then one "\r" if present, then one "\n" if present. Comments there are data, not skipped. "Data
///   starts after the first newline, if there is one, or after all the whitespace characters, otherwise."
///   So `FORMAT TSV\n\n1` has an empty first row, and `FORMAT JSONEachRow {"a":1}` starts at `{`.
///
/// SETTINGS after FORMAT/VALUES is ambiguous: current ClickHouse reads it as settings only when
/// `allow_settings_after_format_in_insert` is on (it is off by default, and then the words are data), and 18.16
/// has no SETTINGS clause at all. Unless the caller says the setting is on, such statements are passed through
/// so that ClickHouse decides.
///
/// Format names are matched exactly as `InputFormat(clickHouseName:)` knows them (18.16 matches format names
/// case-sensitively; current releases do not): other spellings are passed through and ClickHouse decides.
public enum InsertParser {
    /// - Parameters:
    ///   - text: the reassembled statement head.
    ///   - isComplete: true when `text` is everything there is (query and whole body), so reaching its end is final:
    ///     the result is never `.needMoreData` then.
    ///   - allowSettingsAfterFormat: the request runs with `allow_settings_after_format_in_insert = 1`.
    public static func parse(
        _ text: UnsafeRawBufferPointer, isComplete: Bool = false, allowSettingsAfterFormat: Bool = false
    ) -> InsertParseResult {
        guard let base = text.baseAddress, text.count > 0 else {
            return isComplete ? .passthrough(reason: "empty query") : .needMoreData
        }
        var parser = Parser(
            p: base.assumingMemoryBound(to: UInt8.self), n: text.count,
            isComplete: isComplete, allowSettingsAfterFormat: allowSettingsAfterFormat
        )
        do throws(Stop) {
            return .insert(try parser.parseInsert())
        } catch {
            switch error {
            case .needMore: return isComplete ? .passthrough(reason: "incomplete statement") : .needMoreData
            case .passthrough(let reason): return .passthrough(reason: reason)
            }
        }
    }

    public static func parse(_ bytes: [UInt8], isComplete: Bool = false, allowSettingsAfterFormat: Bool = false) -> InsertParseResult {
        bytes.withUnsafeBytes { parse($0, isComplete: isComplete, allowSettingsAfterFormat: allowSettingsAfterFormat) }
    }
}

private enum Stop: Error {
    case needMore
    case passthrough(String)
}

private struct Token {
    enum Kind: Equatable {
        case word
        case quotedIdentifier
        case string
        case number
        case punctuation
        case other
        case end
    }

    var kind: Kind
    var range: Range<Int>
    /// The token reaches the end of the text and more bytes could still extend it.
    var open: Bool
}

private struct Parser {
    let p: UnsafePointer<UInt8>
    let n: Int
    let isComplete: Bool
    let allowSettingsAfterFormat: Bool
    var pos = 0
    /// Just after the statement's last token, once known (`InsertStatement.statementEnd`).
    var statementEnd = 0

    init(p: UnsafePointer<UInt8>, n: Int, isComplete: Bool, allowSettingsAfterFormat: Bool) {
        self.p = p
        self.n = n
        self.isComplete = isComplete
        self.allowSettingsAfterFormat = allowSettingsAfterFormat
    }

    // MARK: Grammar

    mutating func parseInsert() throws(Stop) -> InsertStatement {
        let first = try lex()
        if first.kind == .word && first.open && !isComplete {
            // Wait for the rest of the word only if it can still become INSERT.
            if isPrefix(first.range, of: "INSERT") { throw .needMore }
            throw .passthrough("not an INSERT")
        }
        if first.kind == .end { throw .needMore }
        guard isKeyword(first, "INSERT") else { throw .passthrough("not an INSERT") }
        guard isKeyword(try next(), "INTO") else { throw .passthrough("INSERT without INTO") }

        var token = try next()
        if isKeyword(token, "TABLE") { token = try next() }
        if isKeyword(token, "FUNCTION") { throw .passthrough("INSERT INTO FUNCTION") }
        guard let firstName = try identifier(token) else { throw .passthrough("expected a table name") }
        var database: String?
        var table = firstName
        token = try next()
        if isPunctuation(token, ".") {
            guard let name = try identifier(try next()) else { throw .passthrough("expected a table name after the database") }
            database = firstName
            table = name
            token = try next()
        }

        var columns: [String]?
        if isPunctuation(token, "(") {
            columns = try columnList()
            token = try next()
        }

        if isKeyword(token, "FROM") { throw .passthrough("INSERT ... FROM INFILE") }

        var settings: [Setting] = []
        if isKeyword(token, "SETTINGS") {
            let after = try settingsList(into: &settings)
            pos = after
            token = try next()
        }

        if isKeyword(token, "VALUES") {
            statementEnd = token.range.upperBound
            let dataOffset = try valuesData(after: token.range.upperBound, settings: &settings)
            return InsertStatement(
                database: database, table: table, columns: columns, format: .values, settings: settings,
                dataOffset: dataOffset, statementEnd: statementEnd)
        }
        if isKeyword(token, "FORMAT") {
            let nameToken = try next()
            guard let name = try identifier(nameToken) else { throw .passthrough("expected a format name") }
            guard let format = InputFormat(clickHouseName: name) else { throw .passthrough("format \(name) is not batchable") }
            statementEnd = nameToken.range.upperBound
            let dataOffset = try formatData(after: nameToken.range.upperBound, settings: &settings)
            return InsertStatement(
                database: database, table: table, columns: columns, format: format, settings: settings,
                dataOffset: dataOffset, statementEnd: statementEnd)
        }
        if isKeyword(token, "SELECT") { throw .passthrough("INSERT ... SELECT") }
        if isKeyword(token, "WITH") { throw .passthrough("INSERT ... WITH") }
        if isKeyword(token, "WATCH") { throw .passthrough("INSERT ... WATCH") }
        throw .passthrough("expected VALUES or FORMAT")
    }

    /// `(a, b.c, `d`)` after its `(`; ClickHouse requires at least one column.
    mutating func columnList() throws(Stop) -> [String] {
        var columns: [String] = []
        while true {
            guard var name = try identifier(try next()) else { throw .passthrough("unsupported column list") }
            var token = try next()
            while isPunctuation(token, ".") {
                guard let part = try identifier(try next()) else { throw .passthrough("unsupported column list") }
                name += "." + part
                token = try next()
            }
            columns.append(name)
            if isPunctuation(token, ")") { return columns }
            guard isPunctuation(token, ",") else { throw .passthrough("unsupported column list") }
        }
    }

    /// `k = v, k = v` after the SETTINGS keyword. Returns the position after the last value (the next token starts
    /// at or after it). The look-ahead for `,` only needs the next significant byte, so data after the list is never
    /// tokenised.
    mutating func settingsList(into settings: inout [Setting]) throws(Stop) -> Int {
        while true {
            let nameToken = try next()
            guard var name = try identifier(nameToken) else { throw .passthrough("unsupported SETTINGS clause") }
            var token = try next()
            while isPunctuation(token, ".") {
                guard let part = try identifier(try next()) else { throw .passthrough("unsupported SETTINGS clause") }
                name += "." + part
                token = try next()
            }
            guard isPunctuation(token, "=") else { throw .passthrough("unsupported SETTINGS clause") }
            let valueToken = try next()
            let value: String
            switch valueToken.kind {
            case .number, .word:
                value = text(valueToken.range)
            case .string:
                guard let unescaped = unquote(valueToken.range) else { throw .passthrough("setting value is not UTF-8") }
                value = unescaped
            case .punctuation where isPunctuation(valueToken, "-") || isPunctuation(valueToken, "+"):
                let number = try next()
                guard number.kind == .number else { throw .passthrough("unsupported setting value") }
                value = (isPunctuation(valueToken, "-") ? "-" : "") + text(number.range)
            default:
                throw .passthrough("unsupported setting value")
            }
            settings.append(Setting(name: name, value: value))
            let after = pos
            let s = try skipInsignificant(from: after, lenient: true)
            if s == n {
                if !isComplete { throw .needMore }
                return after
            }
            if p[s] != UInt8(ascii: ",") { return after }
            pos = s &+ 1
        }
    }

    /// Data offset after `VALUES` (token end at `end`): the start of the next token.
    mutating func valuesData(after end: Int, settings: inout [Setting]) throws(Stop) -> Int {
        var start = try skipInsignificant(from: end, lenient: true)
        if start == n {
            if isComplete { return n }
            throw .needMore
        }
        if try startsWithSettings(at: start) {
            guard allowSettingsAfterFormat else {
                throw .passthrough("SETTINGS after VALUES (allow_settings_after_format_in_insert)")
            }
            pos = start &+ 8
            let after = try settingsList(into: &settings)
            statementEnd = after
            start = try skipInsignificant(from: after, lenient: true)
            if start == n { return n } // settingsList already asked for more when incomplete
        }
        // ClickHouse's lexer also skips Unicode whitespace, which we do not know; let it decide.
        if p[start] >= 0x80 { throw .passthrough("unrecognised byte after VALUES") }
        return start
    }

    /// Data offset after `FORMAT name` (name token end at `end`), following ClickHouse's rule (see the type's doc).
    mutating func formatData(after end: Int, settings: inout [Setting]) throws(Stop) -> Int {
        var last = end
        if last < n && p[last] == UInt8(ascii: ";") { throw .passthrough("';' right after the format name") }
        let peek = try skipInsignificant(from: last, lenient: true)
        if peek == n && !isComplete { throw .needMore }
        if peek < n, try startsWithSettings(at: peek) {
            guard allowSettingsAfterFormat else {
                throw .passthrough("SETTINGS after FORMAT (allow_settings_after_format_in_insert)")
            }
            pos = peek &+ 8
            last = try settingsList(into: &settings)
            statementEnd = last
            if last < n && p[last] == UInt8(ascii: ";") { throw .passthrough("';' right after the SETTINGS clause") }
        }
        var d = last
        while d < n && (p[d] == 0x20 || p[d] == 0x09 || p[d] == 0x0C) { d &+= 1 }
        if d < n && p[d] == 0x0D { d &+= 1 }
        if d == n {
            // A newline may still follow, which would move the data start past it.
            if isComplete { return n }
            throw .needMore
        }
        if p[d] == 0x0A { d &+= 1 }
        return d
    }

    /// Whether the next token at `start` is the keyword SETTINGS. Needs the byte after the word to be sure.
    func startsWithSettings(at start: Int) throws(Stop) -> Bool {
        let keyword: StaticString = "SETTINGS"
        let k = keyword.utf8Start
        var i = start
        for j in 0..<keyword.utf8CodeUnitCount {
            if i == n { if isComplete { return false } else { throw .needMore } }
            if upper(p[i]) != k[j] { return false }
            i &+= 1
        }
        if i == n { if isComplete { return true } else { throw .needMore } }
        return !isWordByte(p[i])
    }

    // MARK: Tokens

    /// The next token, which must not be cut off by the end of the text.
    mutating func next() throws(Stop) -> Token {
        let token = try lex()
        if token.open && !isComplete { throw .needMore }
        if token.kind == .end { throw .needMore } // callers always need another token here
        return token
    }

    mutating func lex() throws(Stop) -> Token {
        let s = try skipInsignificant(from: pos, lenient: false)
        if s == n {
            pos = n
            return Token(kind: .end, range: n..<n, open: !isComplete)
        }
        let c = p[s]
        var e = s &+ 1
        let kind: Token.Kind
        if isIdentifierStart(c) {
            while e < n && isWordByte(p[e]) { e &+= 1 }
            kind = .word
        } else if isDigit(c) || (c == UInt8(ascii: ".") && s &+ 1 < n && isDigit(p[s &+ 1])) {
            while e < n {
                let b = p[e]
                if isWordByte(b) || b == UInt8(ascii: ".") {
                    e &+= 1
                } else if (b == UInt8(ascii: "+") || b == UInt8(ascii: "-")) && (p[e &- 1] | 0x20) == UInt8(ascii: "e")
                            && !(e &- s >= 2 && (p[s &+ 1] | 0x20) == UInt8(ascii: "x")) {
                    e &+= 1
                } else {
                    break
                }
            }
            kind = .number
        } else if c == UInt8(ascii: "'") || c == UInt8(ascii: "\"") || c == UInt8(ascii: "`") {
            e = try quotedEnd(from: s, quote: c)
            kind = c == UInt8(ascii: "'") ? .string : .quotedIdentifier
        } else if c < 0x80 && c > 0x20 {
            kind = .punctuation
        } else {
            kind = .other
        }
        pos = e
        // A closed quoted token at the very end could still be continued by a doubled quote.
        let open = e == n && kind != .punctuation && kind != .other
        return Token(kind: kind, range: s..<e, open: open)
    }

    /// End (after the closing quote) of the quoted token starting at `s`.
    func quotedEnd(from s: Int, quote: UInt8) throws(Stop) -> Int {
        var j = s &+ 1
        while j < n {
            let b = p[j]
            if b == UInt8(ascii: "\\") {
                j &+= 2
            } else if b == quote {
                if j &+ 1 < n && p[j &+ 1] == quote {
                    j &+= 2
                } else {
                    return j &+ 1
                }
            } else {
                j &+= 1
            }
        }
        if isComplete { throw .passthrough("unclosed quote") }
        throw .needMore
    }

    /// Skips whitespace and comments from `from`; returns the start of the next token, or `n`.
    /// `lenient`: an unclosed `/*` at the end of complete text is returned as a token start instead of refused
    /// (after VALUES/FORMAT it is data for ClickHouse's row parser, not our business).
    func skipInsignificant(from: Int, lenient: Bool) throws(Stop) -> Int {
        var i = from
        while i < n {
            let c = p[i]
            if c == 0x20 || (c >= 0x09 && c <= 0x0D) {
                i &+= 1
                continue
            }
            let isCommentStart: Bool
            let isBlock: Bool
            switch c {
            case UInt8(ascii: "-"):
                if i &+ 1 == n { if isComplete { return i } else { throw .needMore } }
                isCommentStart = p[i &+ 1] == UInt8(ascii: "-")
                isBlock = false
            case UInt8(ascii: "/"):
                if i &+ 1 == n { if isComplete { return i } else { throw .needMore } }
                isCommentStart = p[i &+ 1] == UInt8(ascii: "/") || p[i &+ 1] == UInt8(ascii: "*")
                isBlock = p[i &+ 1] == UInt8(ascii: "*")
            case UInt8(ascii: "#"):
                if i &+ 1 == n { if isComplete { return i } else { throw .needMore } }
                isCommentStart = p[i &+ 1] == UInt8(ascii: " ") || p[i &+ 1] == UInt8(ascii: "!")
                isBlock = false
            default:
                return i
            }
            if !isCommentStart { return i }
            if !isBlock {
                var j = i &+ 2
                while j < n && p[j] != 0x0A { j &+= 1 }
                if j == n && !isComplete { throw .needMore }
                i = j
                continue
            }
            // Block comment. Current ClickHouse nests them, 18.x does not: a nested opener is ambiguous.
            var j = i &+ 2
            var closed = false
            while j &+ 1 < n {
                if p[j] == UInt8(ascii: "*") && p[j &+ 1] == UInt8(ascii: "/") {
                    closed = true
                    break
                }
                if p[j] == UInt8(ascii: "/") && p[j &+ 1] == UInt8(ascii: "*") {
                    throw .passthrough("nested block comment")
                }
                j &+= 1
            }
            if !closed {
                if !isComplete { throw .needMore }
                if lenient { return i }
                throw .passthrough("unclosed comment")
            }
            i = j &+ 2
        }
        return n
    }

    // MARK: Helpers

    /// The unquoted name of an identifier token, or nil when the token is not one.
    func identifier(_ token: Token) throws(Stop) -> String? {
        switch token.kind {
        case .word:
            return text(token.range)
        case .quotedIdentifier:
            guard let name = unquote(token.range) else { throw .passthrough("identifier is not UTF-8") }
            if name.isEmpty { throw .passthrough("empty identifier") }
            return name
        default:
            return nil
        }
    }

    func isKeyword(_ token: Token, _ keyword: StaticString) -> Bool {
        guard token.kind == .word, token.range.count == keyword.utf8CodeUnitCount else { return false }
        let k = keyword.utf8Start
        var i = 0
        for j in token.range {
            if upper(p[j]) != k[i] { return false }
            i &+= 1
        }
        return true
    }

    func isPrefix(_ range: Range<Int>, of keyword: StaticString) -> Bool {
        guard range.count <= keyword.utf8CodeUnitCount else { return false }
        let k = keyword.utf8Start
        var i = 0
        for j in range {
            if upper(p[j]) != k[i] { return false }
            i &+= 1
        }
        return true
    }

    func isPunctuation(_ token: Token, _ c: Unicode.Scalar) -> Bool {
        token.kind == .punctuation && p[token.range.lowerBound] == UInt8(ascii: c)
    }

    func text(_ range: Range<Int>) -> String {
        String(decoding: UnsafeBufferPointer(start: p + range.lowerBound, count: range.count), as: UTF8.self)
    }

    /// Contents of a quoted token with ClickHouse's escapes resolved (readQuotedStringWithSQLStyle and friends):
    /// doubled quotes, `\x` + two hex digits, `\N` (nothing), `\a \b \e \f \n \r \t \v \0`; `\\ \' \" \` \/` give the
    /// character; any other `\c` keeps its backslash. Nil when the result is not valid UTF-8.
    func unquote(_ range: Range<Int>) -> String? {
        let quote = p[range.lowerBound]
        var out: [UInt8] = []
        out.reserveCapacity(range.count)
        var i = range.lowerBound &+ 1
        let end = range.upperBound &- 1
        while i < end {
            let c = p[i]
            if c == UInt8(ascii: "\\") && i &+ 1 < end {
                let e = p[i &+ 1]
                i &+= 2
                switch e {
                case UInt8(ascii: "x"):
                    if i &+ 1 < end, let hi = hexValue(p[i]), let lo = hexValue(p[i &+ 1]) {
                        out.append(hi &<< 4 | lo)
                        i &+= 2
                    } else {
                        out.append(contentsOf: [UInt8(ascii: "\\"), e])
                    }
                case UInt8(ascii: "N"): break
                case UInt8(ascii: "a"): out.append(0x07)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "e"): out.append(0x1B)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "v"): out.append(0x0B)
                case UInt8(ascii: "0"): out.append(0x00)
                case UInt8(ascii: "\\"), UInt8(ascii: "'"), UInt8(ascii: "\""), UInt8(ascii: "`"), UInt8(ascii: "/"):
                    out.append(e)
                default:
                    if e < 0x20 || e == 0x7F {
                        out.append(e)
                    } else {
                        out.append(contentsOf: [UInt8(ascii: "\\"), e])
                    }
                }
            } else if c == quote {
                out.append(quote) // first of a doubled quote
                i &+= 2
            } else {
                out.append(c)
                i &+= 1
            }
        }
        return String(validating: out, as: UTF8.self)
    }

    func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c &- UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c &- UInt8(ascii: "a") &+ 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c &- UInt8(ascii: "A") &+ 10
        default: return nil
        }
    }

    func upper(_ c: UInt8) -> UInt8 {
        (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) ? c &- 0x20 : c
    }

    func isDigit(_ c: UInt8) -> Bool { c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") }

    func isIdentifierStart(_ c: UInt8) -> Bool {
        (c | 0x20) >= UInt8(ascii: "a") && (c | 0x20) <= UInt8(ascii: "z") || c == UInt8(ascii: "_")
    }

    func isWordByte(_ c: UInt8) -> Bool {
        isIdentifierStart(c) || isDigit(c) || c == UInt8(ascii: "$")
    }
}
