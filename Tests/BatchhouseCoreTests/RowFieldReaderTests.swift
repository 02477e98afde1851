import Testing

@testable import BatchhouseCore

private func t(_ text: String) -> FieldValue { .text(text, quoted: false) }
private func q(_ text: String) -> FieldValue { .text(text, quoted: true) }

/// Scans `text` like the proxy does, takes the column names from the statement's list or the header, and reads the
/// wanted values of every row.
private func readRows(
    _ text: String, _ format: InputFormat, columns: [String]? = nil, wanted: [String]
) throws -> [[FieldValue]] {
    try readRows(Array(text.utf8), format, columns: columns, wanted: wanted)
}

private func readRows(
    _ bytes: [UInt8], _ format: InputFormat, columns: [String]? = nil, wanted: [String]
) throws -> [[FieldValue]] {
    let scanned = try RowScanner.scan(bytes, format: format)
    var out: [[FieldValue]] = []
    try bytes.withUnsafeBytes { buffer in
        let header = scanned.header.map { UnsafeRawBufferPointer(rebasing: buffer[$0]) }
        let names = try RowFieldReader.columnNames(format: format, statementColumns: columns, header: header)
        let rows = UnsafeRawBufferPointer(rebasing: buffer[scanned.rows])
        try RowFieldReader.read(rows, format: format, columns: names, wanted: wanted) { row, values in
            #expect(row == out.count + 1)
            out.append(values)
        }
    }
    return out
}

private func readError(_ text: String, _ format: InputFormat, columns: [String]? = nil, wanted: [String]) -> RowScanError? {
    do {
        _ = try readRows(text, format, columns: columns, wanted: wanted)
        return nil
    } catch let error as RowScanError {
        return error
    } catch {
        Issue.record("unexpected error \(error)")
        return nil
    }
}

/// `read` on the bytes as given, without scanning them first.
private func directError(_ text: String, _ format: InputFormat, columns: [String]?, wanted: [String]) -> RowScanError? {
    do throws(RowScanError) {
        try RowFieldReader.read(Array(text.utf8), format: format, columns: columns, wanted: wanted) { _, _ in }
        return nil
    } catch {
        return error
    }
}

private func headerNames(_ text: String, _ format: InputFormat, columns: [String]? = nil) throws -> [String]? {
    let bytes = Array(text.utf8)
    let scanned = try RowScanner.scan(bytes, format: format)
    return try bytes.withUnsafeBytes { buffer in
        let header = scanned.header.map { UnsafeRawBufferPointer(rebasing: buffer[$0]) }
        return try RowFieldReader.columnNames(format: format, statementColumns: columns, header: header)
    }
}

@Suite struct RowFieldReaderTests {
    // MARK: Values

    @Test func values() throws {
        let columns = ["id", "s", "n", "arr", "q", "esc", "dq", "tup", "n2", "num", "expr", "m", "hex"]
        let text = #"""
            (1, 'a,b', NULL, [1, 'x]'], 'it''s', 'x\ty\n\\\'', "d""q", (3, 'z)'), null, -1.5e3, 'a' || 'b', map('k', 1), '\x41\q\N\"'),
              (2,'',Null,[],'', '' , "", (), nUlL, 0, 1 + 2, {}, '\0\b\f\r'); 
            """#
        let all = try readRows(text, .values, columns: columns, wanted: columns)
        #expect(all == [
            [t("1"), q("a,b"), .null, t("[1, 'x]']"), q("it's"), q("x\ty\n\\'"), q("d\"q"), t("(3, 'z)')"), .null, t("-1.5e3"),
             t("'a' || 'b'"), t("map('k', 1)"), q("Aq\"")],
            [t("2"), q(""), .null, t("[]"), q(""), q(""), q(""), t("()"), .null, t("0"), t("1 + 2"), t("{}"), q("\u{0}\u{8}\u{C}\r")],
        ])
        // A subset in another order, with a repeat.
        let some = try readRows(text, .values, columns: columns, wanted: ["hex", "id", "n", "id"])
        #expect(some == [[q("Aq\""), t("1"), .null, t("1")], [q("\u{0}\u{8}\u{C}\r"), t("2"), .null, t("2")]])
        #expect(try readRows("", .values, columns: nil, wanted: ["a"]) == [])
        #expect(try readRows("('a\nb', \"x'y\")", .values, columns: ["a", "b"], wanted: ["b", "a"]) == [[q("x'y"), q("a\nb")]])
    }

    @Test func valuesMalformedFields() throws {
        let empty = try #require(readError("(1, , 2)", .values, columns: ["a", "b", "c"], wanted: ["a"]))
        #expect(empty.code == 62)
        #expect(empty.message.hasPrefix("Batchhouse: row 1"))
        let count = try #require(readError("(1, 2), (1, 2, 3)", .values, columns: ["a", "b"], wanted: ["a"]))
        #expect(count.code == 27)
        #expect(count.name == "CANNOT_PARSE_INPUT_ASSERTION_FAILED")
        #expect(count.message.hasPrefix("Batchhouse: row 2"))
        #expect(count.message.contains("expected 2 fields, found 3"))
        #expect(count.offset == 8)
        let none = try #require(readError("(1, 2), ()", .values, columns: ["a", "b"], wanted: ["a"]))
        #expect(none.message.contains("expected 2 fields, found 0"))
        // The scanner's own errors come with the prefix too.
        let error = directError("(1, 'abc)", .values, columns: ["a"], wanted: ["a"])
        #expect(error?.code == 62)
        #expect(error?.message.hasPrefix("Batchhouse: ") == true)
    }

    // MARK: TabSeparated

    @Test func tabSeparated() throws {
        let columns = ["id", "s", "n", "arr", "raw"]
        let text = "1\ta\\tb\\\\c\\nd\t\\N\t[1,'x\\ty']\tq\\'\\x41\\N\\%\n"
            + "2\tesc\\\ttab\t\\\\N\t{}\t\r\n"
            + "3\t\t\t\t"
        let values = try readRows(text, .tabSeparated, columns: columns, wanted: ["raw", "s", "n", "arr", "id"])
        #expect(values == [
            [t("q'A%"), t("a\tb\\c\nd"), .null, t("[1,'x\ty']"), t("1")],
            [t("\r"), t("esc\ttab"), t("\\N"), t("{}"), t("2")],
            [t(""), t(""), t(""), t(""), t("3")],
        ])
        // An escaped line feed stays in the value.
        #expect(try readRows("a\\\nb\tc\n", .tabSeparated, columns: ["x", "y"], wanted: ["x", "y"]) == [[t("a\nb"), t("c")]])
    }

    @Test func tabSeparatedRaw() throws {
        let text = "a\\tb\t\\N\tx\\\ny\t\t\n"
        #expect(try readRows(text, .tabSeparatedRaw, columns: ["a", "b", "c"], wanted: ["c", "b", "a"]) == [
            [t("x\\"), t("\\N"), t("a\\tb")],
            [t(""), t(""), t("y")],
        ])
    }

    @Test func tabSeparatedWithNames() throws {
        let text = "id\tna\\tme\tn\n1\tx\\ny\t\\N\n2\t\t3\n"
        #expect(try headerNames(text, .tabSeparatedWithNames) == ["id", "na\tme", "n"])
        // The header's names win over the statement's list.
        #expect(try headerNames(text, .tabSeparatedWithNames, columns: ["n", "id", "x"]) == ["id", "na\tme", "n"])
        #expect(try readRows(text, .tabSeparatedWithNames, wanted: ["n", "na\tme"]) == [[.null, t("x\ny")], [t("3"), t("")]])
        let typed = "id\tv\nUInt8\tNullable(Float64)\n1\t2.5\n2\t\\N"
        #expect(try readRows(typed, .tabSeparatedWithNamesAndTypes, wanted: ["v", "id"]) == [[t("2.5"), t("1")], [.null, t("2")]])
        // Without rows there is nothing to check, not even the names.
        #expect(try readRows("", .tabSeparatedWithNames, wanted: ["v"]) == [])
        #expect(try readRows("id\tv\n", .tabSeparatedWithNames, wanted: ["v"]) == [])
    }

    // MARK: CSV

    @Test func csv() throws {
        let columns = ["id", "s", "say", "n", "qn", "sp", "ml", "e"]
        let text = "1,\"a,b\",\"say \"\"hi\"\"\",\\N,\"\\N\", x ,\"multi\nline\",\r\n"
            + "2,  \"lead\" ,'x',,\"\",\"\",\"\"\"\",[1 2]\n"
            + "3,a\"b,c\\,\\N ,\",\", , ,x,\n"
            + "4,\"\r\n\",,,,,,\"end\""
        let values = try readRows(text, .csv, columns: columns, wanted: columns)
        #expect(values == [
            [t("1"), q("a,b"), q("say \"hi\""), .null, q("\\N"), t(" x "), q("multi\nline"), t("")],
            [t("2"), q("lead"), t("'x'"), t(""), q(""), q(""), q("\""), t("[1 2]")],
            [t("3"), t("a\"b"), t("c\\"), t("\\N "), q(","), t(" "), t(" "), t("x")],
            [t("4"), q("\r\n"), t(""), t(""), t(""), t(""), t(""), q("end")],
        ])
        #expect(try readRows(text, .csv, columns: columns, wanted: ["e", "n"]).map(\.first) == [t(""), t("[1 2]"), t("x"), q("end")])
        let named = "\"id\",na me,\"x,y\"\n1,\"2\",\\N\r\n"
        #expect(try headerNames(named, .csvWithNames) == ["id", "na me", "x,y"])
        #expect(try readRows(named, .csvWithNames, wanted: ["x,y", "na me", "id"]) == [[.null, q("2"), t("1")]])
    }

    @Test func csvMalformedFields() throws {
        let garbage = try #require(readError("1,2\n3,\"ab\"cd\n", .csv, columns: ["a", "b"], wanted: ["b"]))
        #expect(garbage.code == 27)
        #expect(garbage.message.hasPrefix("Batchhouse: row 2"))
        #expect(garbage.message.contains("before: 'cd"))
        let count = try #require(readError("1,2\n3\n", .csv, columns: ["a", "b"], wanted: ["b"]))
        #expect(count.code == 27)
        #expect(count.message.contains("row 2"))
        #expect(count.message.contains("expected 2 fields, found 1"))
        // Only one extra delimiter is forgiven.
        #expect(readError("1,2,,\n", .csv, columns: ["a", "b"], wanted: ["b"])?.code == 27)
        // Data that did not go through the scanner first: its errors come with the prefix too.
        let unterminated = try #require(directError("1,\"ab\n", .csv, columns: ["a", "b"], wanted: ["b"]))
        #expect(unterminated.code == 26)
        #expect(unterminated.message.hasPrefix("Batchhouse: Cannot parse quoted string"))
    }

    // MARK: JSON

    @Test func jsonEachRow() throws {
        let text = #"""
            {"id": 1, "name": "a\"b\\c\/d\u00e9\ud83d\ude00\n\t\b\f\r\q", "n": null, "obj": {"k": [1, "]}"]}, "extra": {"x": "}"}, "arr": [1, [2]], "ok": true, "s": "12.5"}
            {"s" : "" ,"ok":false,"arr":[],"obj":{},"n":-0.5e-3,"na\u006de":"\u0000","id":2}, {"id":3,"name":"x","n":"null","obj":"{}","arr":"[]","ok":null,"s":"\\N"}
            """#
        let wanted = ["id", "name", "n", "obj", "arr", "ok", "s"]
        #expect(try readRows(text, .jsonEachRow, wanted: wanted) == [
            [t("1"), q("a\"b\\c/d\u{E9}\u{1F600}\n\t\u{8}\u{C}\rq"), .null, t(#"{"k": [1, "]}"]}"#), t("[1, [2]]"), t("true"), q("12.5")],
            [t("2"), q("\u{0}"), t("-0.5e-3"), t("{}"), t("[]"), t("false"), q("")],
            [t("3"), q("x"), q("null"), q("{}"), q("[]"), .null, q("\\N")],
        ])
        #expect(try readRows("[{\"a\": 1}, {\"a\": 2}]", .jsonEachRow, wanted: ["a", "a"]) == [[t("1"), t("1")], [t("2"), t("2")]])
        #expect(try readRows("{}", .jsonEachRow, wanted: []) == [[]])
        // Column names are not needed: the rows name their fields.
        #expect(try headerNames("{\"a\":1}", .jsonEachRow) == nil)
    }

    @Test func jsonEachRowErrors() throws {
        let missing = try #require(readError("{\"d\":1}\n{\"d\":2}\n{\"x\":3, \"y\": {\"duration_ms\": 1}}", .jsonEachRow, wanted: ["d", "duration_ms"]))
        #expect(missing.code == 16)
        #expect(missing.name == "NO_SUCH_COLUMN_IN_TABLE")
        #expect(missing.message == "Batchhouse: row 1 has no value for column 'duration_ms', which the table's aggregate rule reads")
        let third = try #require(readError("{\"d\":1}\n{\"d\":2}\n{\"x\":3}", .jsonEachRow, wanted: ["d"]))
        #expect(third.message == "Batchhouse: row 3 has no value for column 'd', which the table's aggregate rule reads")
        #expect(third.offset == 16)
        #expect(third.isUnsupported == false)

        let duplicate = try #require(readError("{\"a\":1,\"b\":2,\"a\":3}", .jsonEachRow, wanted: ["a"]))
        #expect(duplicate.code == 117)
        #expect(duplicate.name == "INCORRECT_DATA")
        #expect(duplicate.message == "Batchhouse: row 1: Duplicate field found while parsing JSONEachRow format: a")
        // An escaped spelling of the same key is the same key.
        #expect(readError("{\"a\":1,\"\\u0061\":3}", .jsonEachRow, wanted: ["a"])?.code == 117)
        // Keys that are not read are not checked.
        #expect(try readRows("{\"a\":1,\"b\":2,\"b\":3}", .jsonEachRow, wanted: ["a"]) == [[t("1")]])

        let badEscape = try #require(readError("{\"a\":\"\\u12\"}", .jsonEachRow, wanted: ["a"]))
        #expect(badEscape.code == 25)
        #expect(badEscape.name == "CANNOT_PARSE_ESCAPE_SEQUENCE")
        #expect(readError("{\"a\":\"\\ud83d x\"}", .jsonEachRow, wanted: ["a"])?.code == 25)
        #expect(readError("{\"a\":\"\\ud83d\\u0041\"}", .jsonEachRow, wanted: ["a"])?.code == 25)
        let colon = try #require(readError("{\"a\":1}\n{\"a\" 1}", .jsonEachRow, wanted: ["a"]))
        #expect(colon.code == 27)
        #expect(colon.message.hasPrefix("Batchhouse: row 2: Cannot parse input: expected ':'"))
        #expect(readError("{\"a\":1 \"b\":2}", .jsonEachRow, wanted: ["a"])?.code == 27)
        #expect(readError("{\"a\":}", .jsonEachRow, wanted: ["a"])?.code == 27)
        #expect(readError("{1:2}", .jsonEachRow, wanted: ["a"])?.code == 27)
        #expect(readError("{\"a\":1,}", .jsonEachRow, wanted: ["a"])?.code == 27)
    }

    @Test func jsonCompactEachRow() throws {
        let text = #"[1, "a,\"b\"", null, [1, [2, "]"]], {"a": [1]}, true, "\u00e9"] , ["2","",  -3e2 ,[],{}, false,"\\"]"#
        let columns = ["id", "s", "n", "arr", "obj", "b", "u"]
        #expect(try readRows(text, .jsonCompactEachRow, columns: columns, wanted: columns.reversed()) == [
            [q("\u{E9}"), t("true"), t(#"{"a": [1]}"#), t(#"[1, [2, "]"]]"#), .null, q("a,\"b\""), t("1")],
            [q("\\"), t("false"), t("{}"), t("[]"), t("-3e2"), q(""), q("2")],
        ])
        let named = "[\"id\", \"na\\\"me\"]\n[1, \"x\"]\n[2, null]"
        #expect(try headerNames(named, .jsonCompactEachRowWithNames) == ["id", "na\"me"])
        #expect(try readRows(named, .jsonCompactEachRowWithNames, wanted: ["na\"me"]) == [[q("x")], [.null]])
        let typed = "[\"id\",\"v\"],\n[\"UInt8\",\"Float64\"]\n[1,2.5]"
        #expect(try headerNames(typed, .jsonCompactEachRowWithNamesAndTypes) == ["id", "v"])
        #expect(try readRows(typed, .jsonCompactEachRowWithNamesAndTypes, wanted: ["v", "id"]) == [[t("2.5"), t("1")]])
        #expect(readError("[1,2]\n[1,]", .jsonCompactEachRow, columns: ["a", "b"], wanted: ["a"])?.code == 27)
        #expect(readError("[1,2]\n[1 2]", .jsonCompactEachRow, columns: ["a", "b"], wanted: ["a"])?.code == 27)
        let count = try #require(readError("[1,2]\n[1,2,[3]]", .jsonCompactEachRow, columns: ["a", "b"], wanted: ["a"]))
        #expect(count.code == 27)
        #expect(count.message.contains("row 2"))
        #expect(count.message.contains("expected 2 fields, found 3"))
        let badName = try #require(readError("[\"a\", 1]\n[1, 2]", .jsonCompactEachRowWithNames, wanted: ["a"]))
        #expect(badName.code == 27)
    }

    // MARK: TSKV

    @Test func tskv() throws {
        let text = "tskv\tid=1\tk\\=v=a=b\tmsg=x\\ty\\\\\tn=\\N\tother=\\N\n"
            + "n=3\tid=2\tmsg=\tk\\=v=\\=\ttskv\n"
            + "msg=esc\\\ttab\tid=3\tk\\=v=\tn=\n"
        #expect(try readRows(text, .tskv, wanted: ["id", "k=v", "msg", "n"]) == [
            [t("1"), t("a=b"), t("x\ty\\"), .null],
            [t("2"), t("="), t(""), t("3")],
            [t("3"), t(""), t("esc\ttab"), t("")],
        ])
        #expect(try headerNames("a=1", .tskv, columns: ["a"]) == ["a"])
    }

    @Test func tskvErrors() throws {
        let missing = try #require(readError("a=1\nb=2\n", .tskv, wanted: ["a"]))
        #expect(missing.code == 16)
        #expect(missing.message == "Batchhouse: row 2 has no value for column 'a', which the table's aggregate rule reads")
        // An empty line is a row without fields.
        #expect(readError("a=1\n\na=2\n", .tskv, wanted: ["a"])?.message.contains("row 2 has no value") == true)
        let noValue = try #require(readError("a=1\tjunk\n", .tskv, wanted: ["a"]))
        #expect(noValue.code == 117)
        #expect(noValue.message == "Batchhouse: row 1: Found field without value while parsing TSKV format: 'junk'")
        #expect(readError("a=1\t\n", .tskv, wanted: ["a"])?.code == 117)
        let duplicate = try #require(readError("a=1\ta=2\n", .tskv, wanted: ["a"]))
        #expect(duplicate.code == 117)
        #expect(duplicate.message == "Batchhouse: row 1: Duplicate field found while parsing TSKV format: a")
    }

    // MARK: Errors common to the positional formats

    @Test func positionalFormatsNeedColumnNames() throws {
        let message = "Batchhouse: an aggregated table needs the column names: give a column list (INSERT INTO t (a, b, ...)) or use a format that names them (JSONEachRow, TSVWithNames, CSVWithNames)"
        let cases: [(InputFormat, String)] = [
            (.values, "(1)"), (.tabSeparated, "1\n"), (.tabSeparatedRaw, "1"), (.csv, "1"), (.jsonCompactEachRow, "[1]"),
        ]
        for (format, text) in cases {
            let error = try #require(readError(text, format, wanted: ["a"]))
            #expect(error.code == 36)
            #expect(error.name == "BAD_ARGUMENTS")
            #expect(error.message == message)
            #expect(error.isUnsupported == false)
            let other = try #require(readError(text, format, columns: ["b"], wanted: ["a"]))
            #expect(other.code == 16)
            #expect(other.name == "NO_SUCH_COLUMN_IN_TABLE")
            #expect(other.message.hasPrefix("Batchhouse: "))
            #expect(other.message.contains("'a'"))
        }
        #expect(readError("x\n1\n", .tabSeparatedWithNames, wanted: ["a"])?.code == 16)
        #expect(try readRows("x\n1\n", .tabSeparatedWithNames, wanted: []) == [[]])
    }

    @Test func fieldCountMismatch() throws {
        let error = try #require(readError("1\t2\n1\t2\t3\n", .tabSeparated, columns: ["a", "b"], wanted: ["b"]))
        #expect(error.code == 27)
        #expect(error.name == "CANNOT_PARSE_INPUT_ASSERTION_FAILED")
        #expect(error.message == "Batchhouse: row 2: Cannot parse input: expected 2 fields, found 3: '1\t2\t3\n'")
        #expect(error.offset == 4)
        let long = String(repeating: "x", count: 5000)
        let quoted = try #require(readError("\(long)\t\(long)\n", .tabSeparated, columns: ["a"], wanted: ["a"]))
        #expect(quoted.message.contains(String(repeating: "x", count: 100)))
        #expect(!quoted.message.contains(String(repeating: "x", count: 101)))
    }

    @Test func binaryFormatsCannotBeAggregated() throws {
        for format in InputFormat.allCases where format.isBinary {
            let bytes: [UInt8] = [1, 2, 3]
            let error = bytes.withUnsafeBytes { buffer -> RowScanError? in
                do throws(RowScanError) {
                    try RowFieldReader.read(buffer, format: format, columns: ["a"], wanted: ["a"]) { _, _ in }
                    return nil
                } catch { return error }
            }
            #expect(error?.code == 36)
            #expect(error?.name == "BAD_ARGUMENTS")
            #expect(error?.message.hasPrefix("Batchhouse: ") == true)
            #expect(error?.message.contains("format \(format.rawValue) cannot be aggregated") == true)
            #expect(error?.isUnsupported == false)
            #expect(throws: RowScanError.self) {
                try RowFieldReader.columnNames(format: format, statementColumns: ["a"], header: nil)
            }
        }
    }

    // MARK: number and unixSeconds

    @Test func numbers() {
        func n(_ text: String, quoted: Bool = false) -> Double? { RowFieldReader.number(.text(text, quoted: quoted)) }
        #expect(n("1") == 1)
        #expect(n("-1.5e3") == -1500)
        #expect(n(" 2 ") == 2)
        #expect(n("\t2\n") == 2)
        #expect(n("2", quoted: true) == 2)
        #expect(n("+7") == 7)
        #expect(n("1.") == 1)
        #expect(n(".5") == 0.5)
        #expect(n("-.5E+1") == -5)
        #expect(n("0.1") == 0.1)
        #expect(n("123456789012345678901234567890") == 1.2345678901234568e29)
        #expect(n("1e-400") == 0)
        #expect(n("1e400") == nil)
        #expect(n("-1e400") == nil)
        #expect(n("nan") == nil)
        #expect(n("inf") == nil)
        #expect(n("-Infinity") == nil)
        #expect(n("") == nil)
        #expect(n("  ") == nil)
        #expect(n("0x10") == nil)
        #expect(n(".") == nil)
        #expect(n("-") == nil)
        #expect(n("1e") == nil)
        #expect(n("1e+") == nil)
        #expect(n("1 2") == nil)
        #expect(n("1,5") == nil)
        #expect(n("true") == nil)
        #expect(n("\u{661}") == nil)
        #expect(RowFieldReader.number(.null) == nil)
    }

    @Test func unixSeconds() {
        func s(_ text: String) -> Double? { RowFieldReader.unixSeconds(.text(text, quoted: true)) }
        // Expected values from `date -u -d '<text>' +%s`.
        #expect(s("1700000000") == 1_700_000_000)
        #expect(s("1700000000.25") == 1_700_000_000.25)
        #expect(s("-1") == -1)
        #expect(s("2026-12-02 01:02:03") == 1_796_173_323)
        #expect(s(" 2026-12-02 01:02:03 ") == 1_796_173_323)
        #expect(s("2026-12-02 01:02:03.25") == 1_796_173_323.25)
        #expect(s("2026-12-02") == 1_796_169_600)
        #expect(s("2026-12-02T01:02:03Z") == 1_796_173_323)
        #expect(s("2026-12-02T01:02:03") == 1_796_173_323)
        #expect(s("2026-12-02T03:02:03+02:00") == 1_796_173_323)
        #expect(s("2026-12-02T03:02:03+0200") == 1_796_173_323)
        #expect(s("2026-12-01T23:32:03-01:30") == 1_796_173_323)
        #expect(s("2026-12-02T01:02:03.500Z") == 1_796_173_323.5)
        #expect(s("1970-01-01 00:00:00") == 0)
        #expect(s("1969-12-31 23:59:59") == -1)
        #expect(s("2000-02-29") == 951_782_400)
        #expect(s("2024-02-29 00:00:00") == 1_709_164_800)
        #expect(s("2023-02-29") == nil)
        #expect(s("1900-02-29") == nil)
        #expect(s("2026-02-30") == nil)
        #expect(s("2026-13-01") == nil)
        #expect(s("2026-00-01") == nil)
        #expect(s("2026-04-31") == nil)
        #expect(s("2026-12-02 24:00:00") == nil)
        #expect(s("2026-12-02 23:60:00") == nil)
        #expect(s("2026-12-02 23:59:60") == nil)
        #expect(s("2026-12-02 1:02:03") == nil)
        #expect(s("2026-12-02T01:02:03.") == nil)
        #expect(s("2026-12-02T01:02:03+2") == nil)
        #expect(s("2026-12-02T01:02:03+02:0") == nil)
        #expect(s("2026-12-02T01:02:03 Z") == nil)
        #expect(s("2026-12-02x") == nil)
        #expect(s("26-12-02") == nil)
        #expect(s("") == nil)
        #expect(s("yesterday") == nil)
        #expect(RowFieldReader.unixSeconds(.null) == nil)
    }

    // MARK: Round trips

    @Test func randomStringsRoundTrip() throws {
        var rng = SplitMix64(seed: 0x5EED)
        for format in InputFormat.allCases where !format.isBinary {
            for _ in 0..<50 {
                RoundTrip.check(format, rng: &rng)
            }
        }
    }
}

/// Random rows of random strings, encoded the way a client would for each format, must decode to the same strings.
private enum RoundTrip {
    static let alphabet: [String] = [
        "a", "Z", "0", "7", " ", "\t", "\n", "\r", "\\", "'", "\"", "`", ",", "=", ";", "(", ")", "[", "]", "{", "}",
        "N", "\u{E9}", "\u{4E2D}", "\u{1F600}", "\u{0}", "\u{1}", "\u{8}", "\u{C}", "\u{7F}", "x", "-", ".", ":", "/",
    ]
    static let names = ["id", "k=v", "na\"me", "last"]

    static func randomString(_ rng: inout SplitMix64, excluding: Set<String> = []) -> String {
        let length = Int.random(in: 0...10, using: &rng)
        var text = ""
        var count = 0
        while count < length {
            let piece = alphabet[Int.random(in: 0..<alphabet.count, using: &rng)]
            if excluding.contains(piece) { continue }
            text += piece
            count += 1
        }
        return text
    }

    static func check(_ format: InputFormat, rng: inout SplitMix64) {
        let rowCount = Int.random(in: 1...8, using: &rng)
        let raw = format == .tabSeparatedRaw
        var rows: [[String?]] = []
        for _ in 0..<rowCount {
            var row: [String?] = []
            for _ in names {
                if !raw && Int.random(in: 0..<6, using: &rng) == 0 {
                    row.append(nil)
                } else {
                    row.append(randomString(&rng, excluding: raw ? ["\t", "\n"] : []))
                }
            }
            rows.append(row)
        }
        // The data's column order, shuffled for the formats whose header says it.
        let order = format.headerRows > 0 ? Array(names.indices).shuffled(using: &rng) : Array(names.indices)
        let rowFormat = format.withoutHeader
        var text = ""
        if format.headerRows > 0 {
            let headerNames = order.map { names[$0] }
            switch rowFormat {
            case .tabSeparated: text += headerNames.map { tsv($0) }.joined(separator: "\t") + "\n"
            case .csv: text += headerNames.map { csv($0, &rng) }.joined(separator: ",") + "\n"
            default: text += "[" + headerNames.map { json($0, &rng) }.joined(separator: ", ") + "]\n"
            }
            if format.headerRows == 2 {
                switch rowFormat {
                case .tabSeparated: text += order.map { _ in "Nullable(String)" }.joined(separator: "\t") + "\n"
                default: text += "[" + order.map { _ in "\"Nullable(String)\"" }.joined(separator: ",") + "]\n"
                }
            }
        }
        for (index, row) in rows.enumerated() {
            let fields = order.map { row[$0] }
            let last = index + 1 == rows.count
            switch rowFormat {
            case .values:
                let separator = Bool.random(using: &rng) ? "," : " ,\n "
                text += "(" + fields.map { values($0, &rng) }.joined(separator: separator) + ")"
                text += last ? ";" : (Bool.random(using: &rng) ? ", " : "\n")
            case .tabSeparated, .tabSeparatedRaw:
                text += fields.map { field in raw ? field! : (field.map { tsv($0) } ?? "\\N") }.joined(separator: "\t")
                if !last || Bool.random(using: &rng) { text += "\n" }
            case .csv:
                text += fields.map { field in field.map { csv($0, &rng) } ?? "\\N" }.joined(separator: ",")
                if !last || Bool.random(using: &rng) { text += Bool.random(using: &rng) ? "\r\n" : "\n" }
            case .jsonCompactEachRow:
                text += "[" + fields.map { field in field.map { json($0, &rng) } ?? "null" }.joined(separator: ", ") + "]\n"
            case .jsonEachRow:
                var members: [String] = []
                for column in names.indices {
                    members.append(json(names[column], &rng) + ": " + (row[column].map { json($0, &rng) } ?? "null"))
                }
                members.append("\"extra\": {\"id\": [1, \"}\"]}")
                members.shuffle(using: &rng)
                text += "{" + members.joined(separator: ",") + "}\n"
            case .tskv:
                var members: [String] = []
                for column in names.indices {
                    members.append(tsv(names[column], escapeEquals: true) + "=" + (row[column].map { tsv($0) } ?? "\\N"))
                }
                members.append("other=\\t=x")
                members.shuffle(using: &rng)
                if Bool.random(using: &rng) { members.insert("tskv", at: 0) }
                text += members.joined(separator: "\t") + "\n"
            default:
                Issue.record("no encoder for \(format)")
            }
        }
        let columns: [String]? = format.headerRows > 0 || rowFormat == .jsonEachRow || rowFormat == .tskv ? nil : names
        let decoded: [[FieldValue]]
        do {
            decoded = try readRows(text, format, columns: columns, wanted: [names[3], names[0], names[2], names[1]])
        } catch {
            Issue.record("\(format): \(error) for \(text.debugDescription)")
            return
        }
        let expected = rows.map { row in [row[3], row[0], row[2], row[1]] }
        let actual = decoded.map { row in
            row.map { value -> String? in
                if case .text(let text, _) = value { return text }
                return nil
            }
        }
        #expect(actual == expected, "\(format): \(text.debugDescription)")
    }

    /// TabSeparated escaping (ClickHouse's writeEscapedString), and `=` for TSKV keys.
    static func tsv(_ text: String, escapeEquals: Bool = false) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\t": out += "\\t"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\u{0}": out += "\\0"
            case "\u{8}": out += "\\b"
            case "\u{C}": out += "\\f"
            case "'": out += "\\'"
            case "=" where escapeEquals: out += "\\="
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// CSV: quoted with `""` for a quote, or bare when nothing needs quoting (randomly).
    static func csv(_ text: String, _ rng: inout SplitMix64) -> String {
        let special = text.unicodeScalars.contains { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }
        if !special && !text.isEmpty && text != "\\N" && Bool.random(using: &rng) { return text }
        var out = "\""
        for scalar in text.unicodeScalars {
            if scalar == "\"" { out += "\"\"" } else { out.unicodeScalars.append(scalar) }
        }
        return out + "\""
    }

    /// JSON: the required escapes, and randomly `\uXXXX` (surrogate pairs above U+FFFF) for other characters.
    static func json(_ text: String, _ rng: inout SplitMix64) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += Bool.random(using: &rng) ? "\\t" : "\\u0009"
            case "/": out += Bool.random(using: &rng) ? "\\/" : "/"
            default:
                if scalar.value < 0x20 || (scalar.value > 0x7E && Bool.random(using: &rng)) {
                    if scalar.value > 0xFFFF {
                        let v = scalar.value - 0x10000
                        out += "\\u" + hex4(0xD800 + (v >> 10), &rng) + "\\u" + hex4(0xDC00 + (v & 0x3FF), &rng)
                    } else {
                        out += "\\u" + hex4(scalar.value, &rng)
                    }
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    static func hex4(_ value: UInt32, _ rng: inout SplitMix64) -> String {
        let digits = String(value, radix: 16, uppercase: Bool.random(using: &rng))
        return String(repeating: "0", count: 4 - digits.count) + digits
    }

    /// Values: `'...'` (sometimes `"..."`) with backslash escapes or doubled quotes; NULL in either case.
    static func values(_ text: String?, _ rng: inout SplitMix64) -> String {
        guard let text else { return Bool.random(using: &rng) ? "NULL" : "null" }
        let quote: Unicode.Scalar = Int.random(in: 0..<4, using: &rng) == 0 ? "\"" : "'"
        var out = String(quote)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case quote: out += Bool.random(using: &rng) ? "\\" + String(quote) : String(quote) + String(quote)
            case "\n": out += Bool.random(using: &rng) ? "\\n" : "\n"
            case "\t": out += Bool.random(using: &rng) ? "\\t" : "\t"
            case "\u{0}": out += "\\0"
            case "a" where Bool.random(using: &rng): out += "\\x61"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + String(quote)
    }
}
