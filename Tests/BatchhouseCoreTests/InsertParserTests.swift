import Testing

@testable import BatchhouseCore

/// The parse result with `statementEnd` set to `dataOffset`, so expectations name the data offset only
/// (`statementEndIsWhereMaxQuerySizeMustReach` checks `statementEnd` itself).
private func parse(_ text: String, complete: Bool = false, settingsAfterFormat: Bool = false) -> InsertParseResult {
    var result = rawParse(text, complete: complete, settingsAfterFormat: settingsAfterFormat)
    if case .insert(var statement) = result {
        statement.statementEnd = statement.dataOffset
        result = .insert(statement)
    }
    return result
}

private func rawParse(_ text: String, complete: Bool = false, settingsAfterFormat: Bool = false) -> InsertParseResult {
    InsertParser.parse(Array(text.utf8), isComplete: complete, allowSettingsAfterFormat: settingsAfterFormat)
}

/// Byte offset of the first occurrence of `needle` in `text`.
private func offset(of needle: String, in text: String) -> Int {
    let h = Array(text.utf8)
    let n = Array(needle.utf8)
    for i in 0...(h.count - n.count) where Array(h[i..<(i + n.count)]) == n { return i }
    fatalError("\(needle) not in \(text)")
}

private func insert(
    _ table: String, db: String? = nil, columns: [String]? = nil, format: InputFormat = .values,
    settings: [Setting] = [], at dataOffset: Int
) -> InsertParseResult {
    .insert(InsertStatement(database: db, table: table, columns: columns, format: format, settings: settings, dataOffset: dataOffset))
}

private func isPassthrough(_ result: InsertParseResult) -> Bool {
    if case .passthrough = result { return true }
    return false
}

@Suite struct InsertParserTests {
    // MARK: Batchable statements

    @Test func statementEndIsWhereMaxQuerySizeMustReach() {
        func end(_ text: String, settingsAfterFormat: Bool = false) -> Int? {
            guard case .insert(let statement) = rawParse(text, complete: true, settingsAfterFormat: settingsAfterFormat)
            else { return nil }
            return statement.statementEnd
        }
        // ClickHouse 18.16 takes `insert\ninto t612 values (1, 1)` with max_query_size=23 and refuses it with 22.
        #expect(end("insert\ninto t612 values (1, 1)") == 23)
        #expect(end("insert\ninto t612 FORMAT TSV\n5\t5\n") == 27)
        #expect(end("INSERT INTO t FORMAT TSV SETTINGS a = 1\n1\n", settingsAfterFormat: true) == 39)
        #expect(end("INSERT INTO t VALUES SETTINGS a = 1 (1)", settingsAfterFormat: true) == 35)
    }

    @Test func plainValues() {
        let text = "INSERT INTO t VALUES (1)"
        #expect(parse(text) == insert("t", at: 21))
    }

    @Test func statementSplitBetweenQueryAndBody() {
        // query=INSERT INTO t, body VALUES (1): reassembled with "\n" in between.
        let text = "INSERT INTO t\nVALUES (1)"
        #expect(parse(text) == insert("t", at: 21))
        let split = "insert\ninto t values (1),(2)"
        #expect(parse(split) == insert("t", at: 21))
    }

    @Test func commentsQuotedNamesAndFormat() {
        let text = "/* c */ InSeRt -- x\n INTO db.`my table` (a, \"b c\") FORMAT JSONEachRow\n{\"a\":1}"
        #expect(parse(text) == insert("my table", db: "db", columns: ["a", "b c"], format: .jsonEachRow, at: offset(of: "{", in: text)))
    }

    @Test func optionalTableKeyword() {
        #expect(parse("INSERT INTO TABLE t VALUES (1)") == insert("t", at: 27))
        #expect(parse("insert into table db.t values(1)") == insert("t", db: "db", at: 29))
    }

    @Test func hashAndSlashComments() {
        let text = "# note\nINSERT // c\nINTO t VALUES #! x\n(1)"
        #expect(parse(text) == insert("t", at: offset(of: "(1)", in: text)))
    }

    @Test func valuesDataSkipsWhitespaceAndComments() {
        let text = "INSERT INTO t VALUES /* a */ -- b\n  (1)"
        #expect(parse(text) == insert("t", at: offset(of: "(1)", in: text)))
        #expect(parse("INSERT INTO t VALUES(1)") == insert("t", at: 20))
        // `;` right after VALUES: ClickHouse takes the data to start there (and finds none).
        #expect(parse("INSERT INTO t VALUES;") == insert("t", at: 20))
    }

    @Test func formatDataStartsAfterFirstNewline() {
        #expect(parse("INSERT INTO t FORMAT TSV\n1\t2\n") == insert("t", format: .tabSeparated, at: 25))
        // Only one newline is skipped: a second one is an (empty) first row.
        #expect(parse("INSERT INTO t FORMAT TSV\n\n1") == insert("t", format: .tabSeparated, at: 25))
        // Spaces, tabs and form feeds, then "\r\n".
        #expect(parse("INSERT INTO t FORMAT CSV \t\u{0C}\r\n1,2") == insert("t", format: .csv, at: 29))
        // A lone "\r" is skipped too.
        #expect(parse("INSERT INTO t FORMAT CSV \r1,2") == insert("t", format: .csv, at: 26))
        // No newline: data starts after the spaces.
        #expect(parse("INSERT INTO t FORMAT JSONEachRow   {\"a\":1}") == insert("t", format: .jsonEachRow, at: 35))
        // A comment after the format name is data.
        #expect(parse("INSERT INTO t FORMAT TSV -- x\n1") == insert("t", format: .tabSeparated, at: 25))
        // Other whitespace (a vertical tab) stops the skipping.
        #expect(parse("INSERT INTO t FORMAT TSV\u{0B}\n1") == insert("t", format: .tabSeparated, at: 24))
    }

    @Test func formatAliasesAndQuotedFormatName() {
        #expect(parse("INSERT INTO t FORMAT TSVWithNames\na\n") == insert("t", format: .tabSeparatedWithNames, at: 34))
        #expect(parse("INSERT INTO t FORMAT NDJSON\n{}") == insert("t", format: .jsonEachRow, at: 28))
        #expect(parse("INSERT INTO t FORMAT `CSV`\n1") == insert("t", format: .csv, at: 27))
        #expect(parse("INSERT INTO t FORMAT Values\n(1)") == insert("t", format: .values, at: 28))
        #expect(parse("INSERT INTO t FORMAT RowBinary\n\u{01}") == insert("t", format: .rowBinary, at: 31))
    }

    @Test func columnsWithNestedAndQuotedNames() {
        let text = "INSERT INTO t (n.x, `n`.`y`, \"a b\", c) VALUES (1,2,3,4)"
        #expect(parse(text) == insert("t", columns: ["n.x", "n.y", "a b", "c"], at: offset(of: "(1", in: text)))
    }

    @Test func identifierEscapes() {
        let text = #"INSERT INTO "we\"ird"."ta""ble" (`a\`b`, `c\x41\n`, `\q`) VALUES (1)"#
        #expect(parse(text) == insert("ta\"ble", db: "we\"ird", columns: ["a`b", "cA\n", "\\q"], at: offset(of: "(1)", in: text)))
    }

    @Test func utf8Identifiers() {
        let text = "INSERT INTO `таблица` (`колонка`) VALUES (1)"
        #expect(parse(text) == insert("таблица", columns: ["колонка"], at: offset(of: "(1)", in: text)))
    }

    @Test func settingsBeforeFormat() {
        let text = "INSERT INTO t SETTINGS max_threads = 8, s='it''s \\n', neg = -5, f=1.5e-3, b = true FORMAT CSV\n1,2"
        let settings = [
            Setting(name: "max_threads", value: "8"), Setting(name: "s", value: "it's \n"),
            Setting(name: "neg", value: "-5"), Setting(name: "f", value: "1.5e-3"), Setting(name: "b", value: "true"),
        ]
        #expect(parse(text) == insert("t", format: .csv, settings: settings, at: offset(of: "1,2", in: text)))
    }

    @Test func settingsBeforeValues() {
        let text = "INSERT INTO t (a) SETTINGS x=1 VALUES (1)"
        #expect(parse(text) == insert("t", columns: ["a"], settings: [Setting(name: "x", value: "1")], at: 38))
    }

    @Test func settingsAfterFormatNeedTheSetting() {
        let text = "INSERT INTO t FORMAT TSV SETTINGS max_threads=1, y = 'a'\n1\t2"
        #expect(isPassthrough(parse(text)))
        let settings = [Setting(name: "max_threads", value: "1"), Setting(name: "y", value: "a")]
        #expect(parse(text, settingsAfterFormat: true) == insert("t", format: .tabSeparated, settings: settings, at: offset(of: "1\t2", in: text)))

        let values = "INSERT INTO t VALUES SETTINGS x = 1 (1)"
        #expect(isPassthrough(parse(values)))
        #expect(parse(values, settingsAfterFormat: true) == insert("t", settings: [Setting(name: "x", value: "1")], at: 36))
    }

    // MARK: Not batchable

    @Test(arguments: [
        "SELECT 1",
        "select * from t format JSON",
        "CREATE TABLE t (a UInt8) ENGINE = Memory",
        "INSERT INTO t SELECT 1",
        "INSERT INTO t (a) SELECT number FROM numbers(10)",
        "INSERT INTO t WITH 1 AS x SELECT x",
        "INSERT INTO FUNCTION remote('h', db.t) VALUES (1)",
        "INSERT INTO TABLE FUNCTION s3('u') FORMAT CSV\n1",
        "INSERT INTO t FROM INFILE 'data.csv' FORMAT CSV",
        "INSERT INTO t FORMAT Parquet\nPAR1",
        "INSERT INTO t FORMAT Avro\nObj",
        "INSERT INTO t FORMAT Template\nx",
        "INSERT INTO t FORMAT tsv\n1",
        "INSERT INTO t FORMAT TSV;1",
        "INSERT INTO t (*) VALUES (1)",
        "INSERT INTO t () VALUES (1)",
        "INSERT INTO t (a, ) VALUES (1)",
        "INSERT t VALUES (1)",
        "INSERT INTO t VALUE (1)",
        "INSERT INTO `` VALUES (1)",
        "INSERT INTO {t:Identifier} VALUES (1)",
        "INSERT INTO 1t VALUES (1)",
        "INSERT INTO t SETTINGS x = [1, 2] VALUES (1)",
        "INSERT INTO t SETTINGS x VALUES (1)",
        "INSERT INTO t /* a /* nested */ */ VALUES (1)",
        "INSERT INTO t VALUES \u{00A0}(1)",
        "INSERT INTO tаблица VALUES (1)",
        "\u{FEFF}INSERT INTO t VALUES (1)",
        "WITH 1 AS x INSERT INTO t VALUES (1)",
    ])
    func passthrough(_ text: String) {
        #expect(isPassthrough(parse(text)))
        #expect(isPassthrough(parse(text, complete: true)))
    }

    // MARK: Incomplete text

    @Test(arguments: [
        "",
        "   ",
        "INS",
        "insert",
        "INSERT INTO",
        "INSERT INTO t",
        "INSERT INTO t ",
        "INSERT INTO db.",
        "INSERT INTO `t",
        "INSERT INTO `t`",
        "INSERT INTO t (a, b",
        "INSERT INTO t /* comment",
        "INSERT INTO t -- comment",
        "INSERT INTO t -",
        "INSERT INTO t /",
        "INSERT INTO t VALUE",
        "INSERT INTO t VALUES",
        "INSERT INTO t VALUES   \n ",
        "INSERT INTO t VALUES /* c",
        "INSERT INTO t FORMAT",
        "INSERT INTO t FORMAT JSONEach",
        "INSERT INTO t FORMAT TSV",
        "INSERT INTO t FORMAT TSV  \t",
        "INSERT INTO t FORMAT TSV\r",
        "INSERT INTO t FORMAT TSV\n",
        "INSERT INTO t FORMAT TSV\nSETT",
        "INSERT INTO t SETTINGS a = 'x",
        "INSERT INTO t SETTINGS a = 1",
    ])
    func needsMoreData(_ text: String) {
        #expect(parse(text) == .needMoreData)
        #expect(parse(text, complete: true) != .needMoreData)
    }

    @Test func completeTextDecides() {
        #expect(parse("INSERT INTO t FORMAT TSV", complete: true) == insert("t", format: .tabSeparated, at: 24))
        #expect(parse("INSERT INTO t FORMAT TSV  ", complete: true) == insert("t", format: .tabSeparated, at: 26))
        #expect(parse("INSERT INTO t FORMAT TSV\r", complete: true) == insert("t", format: .tabSeparated, at: 25))
        #expect(parse("INSERT INTO t FORMAT TSV\n", complete: true) == insert("t", format: .tabSeparated, at: 25))
        #expect(parse("INSERT INTO t VALUES", complete: true) == insert("t", at: 20))
        #expect(parse("INSERT INTO t VALUES \n", complete: true) == insert("t", at: 22))
        #expect(isPassthrough(parse("INSERT INTO t", complete: true)))
        #expect(isPassthrough(parse("", complete: true)))
        // An unclosed comment after VALUES is where ClickHouse's data would start; the Values scanner rejects it.
        #expect(parse("INSERT INTO t VALUES /* c", complete: true) == insert("t", at: 21))
        #expect(parse("INSERT INTO t FORMAT CSV\n/* not a comment", complete: true) == insert("t", format: .csv, at: 25))
    }

    @Test func emptyBufferPointer() {
        #expect(InsertParser.parse(UnsafeRawBufferPointer(start: nil, count: 0)) == .needMoreData)
        #expect(isPassthrough(InsertParser.parse(UnsafeRawBufferPointer(start: nil, count: 0), isComplete: true)))
    }

    // MARK: Robustness

    /// Feeding a statement byte by byte never changes a decision once made: a prefix's `.insert` or `.passthrough`
    /// is what the whole text gives too, and complete text never asks for more.
    @Test func prefixesDecideConsistently() {
        let statements = [
            "INSERT INTO t VALUES (1)",
            "insert into db.`my table` (a, \"b c\", n.x) settings x = 'y', z = -1 format JSONEachRow\n{\"a\":1}\n",
            "/* c */ INSERT -- x\n INTO t FORMAT TSV \r\n1\t2\n",
            "INSERT INTO t SELECT 1",
            "INSERT INTO t FORMAT Parquet\nxx",
            "INSERT INTO t FORMAT CSV SETTINGS a=1\n1,2",
            "INSERT INTO t VALUES SETTINGS a=1 (1)",
            "# c\nINSERT INTO TABLE t (a) VALUES -- d\n(1)",
            "SELECT 1",
        ]
        for statement in statements {
            let bytes = Array(statement.utf8)
            for allow in [false, true] {
                let full = InsertParser.parse(bytes, isComplete: true, allowSettingsAfterFormat: allow)
                #expect(full != .needMoreData)
                for k in 0...bytes.count {
                    let prefix = Array(bytes[0..<k])
                    let partial = InsertParser.parse(prefix, allowSettingsAfterFormat: allow)
                    switch partial {
                    case .needMoreData:
                        break
                    case .insert(let statement):
                        #expect(partial == full, "prefix \(k) of \(statement)")
                        #expect(statement.dataOffset <= k)
                    case .passthrough:
                        #expect(isPassthrough(full), "prefix \(k) of \(statement)")
                    }
                    #expect(InsertParser.parse(prefix, isComplete: true, allowSettingsAfterFormat: allow) != .needMoreData)
                }
            }
        }
    }

    @Test func randomInputNeverCrashes() {
        var rng = SplitMix64(seed: 42)
        let alphabet = Array("INSERTinto VALUESFORMATSETTINGS tT(),.;='\"`\\-/*#!\n\r\t01xé".utf8)
        for _ in 0..<3000 {
            let length = Int(rng.next() % 60)
            var bytes = Array("INSERT INTO ".utf8)
            for _ in 0..<length { bytes.append(alphabet[Int(rng.next() % UInt64(alphabet.count))]) }
            let partial = InsertParser.parse(bytes)
            let complete = InsertParser.parse(bytes, isComplete: true)
            #expect(complete != .needMoreData)
            if case .insert(let statement) = partial { #expect(statement.dataOffset <= bytes.count) }
            if case .insert(let statement) = complete { #expect(statement.dataOffset <= bytes.count) }
        }
    }
}
