import Testing

@testable import BatchhouseCore

private func scan(_ text: String, _ format: InputFormat) throws(RowScanError) -> ScannedRows {
    try RowScanner.scan(Array(text.utf8), format: format)
}

private func ranges(_ text: String, _ format: InputFormat) throws(RowScanError) -> [Range<Int>] {
    try RowScanner.rowRanges(Array(text.utf8), format: format)
}

private func scanError(_ text: String, _ format: InputFormat) -> RowScanError? {
    do {
        _ = try scan(text, format)
        return nil
    } catch {
        return error
    }
}

private func rows(_ count: Int, _ rows: Range<Int>, header: Range<Int>? = nil, newline: Bool = false) -> ScannedRows {
    ScannedRows(rowCount: count, header: header, rows: rows, endsWithNewline: newline)
}

private let bom = "\u{FEFF}"

@Suite struct ValuesScannerTests {
    @Test func separators() throws {
        #expect(try scan("(1),(2)", .values) == rows(2, 0..<7))
        #expect(try scan("(1) (2)", .values) == rows(2, 0..<7))
        #expect(try scan("(1)(2)", .values) == rows(2, 0..<6))
        #expect(try scan("(1),\n\t(2) ,(3)", .values) == rows(3, 0..<14))
    }

    @Test func surroundingWhitespaceTrailingCommaAndSemicolon() throws {
        #expect(try scan("  (1), (2) ;  \n", .values) == rows(2, 2..<10))
        #expect(try scan("(1),", .values) == rows(1, 0..<3))
        #expect(try scan("(1),;", .values) == rows(1, 0..<3))
        #expect(try scan("\n(1)\n", .values) == rows(1, 1..<4))
    }

    @Test func empty() throws {
        #expect(try scan("", .values) == rows(0, 0..<0))
        #expect(try scan(" \n ", .values) == rows(0, 0..<0))
        #expect(try scan(";", .values) == rows(0, 0..<0))
    }

    @Test func strings() throws {
        #expect(try scan("(1, 'a(b'), (2, 'it\\'s'), (3, 'it''s'), (4, '\\\\')", .values).rowCount == 4)
        #expect(try scan("('a)'), ('\\\\'), ('x\\\\\\'y)')", .values).rowCount == 3)
        #expect(try scan("(\"a)b\", `c)d`, 'e\"f`')", .values).rowCount == 1)
        #expect(try scan("('line\none', 'two\n\nlines'),\n('x')", .values).rowCount == 2)
    }

    @Test func nestedBrackets() throws {
        let text = "([1, [2, 3]], (4, {'a': [5]}), map('k', (6, 7))), ([], (), {})"
        #expect(try ranges(text, .values) == [0..<48, 50..<62])
    }

    @Test func bomIsExcluded() throws {
        #expect(try scan(bom + "(1)", .values) == rows(1, 3..<6))
    }

    @Test func rowRanges() throws {
        #expect(try ranges("(1), (2,'x') (3)", .values) == [0..<3, 5..<12, 13..<16])
        #expect(try ranges("", .values) == [])
    }

    @Test func garbageBetweenRows() throws {
        let junk = try #require(scanError("(1), x (2)", .values))
        #expect(junk.code == 27)
        #expect(junk.name == "CANNOT_PARSE_INPUT_ASSERTION_FAILED")
        #expect(junk.offset == 5)
        #expect(junk.message.contains("expected '('"))
        #expect(junk.message.contains("row 2"))
        #expect(junk.message.contains("offset 5"))

        let doubleComma = try #require(scanError("(1),,(2)", .values))
        #expect(doubleComma.code == 27)
        #expect(doubleComma.offset == 4)

        #expect(scanError("x", .values)?.offset == 0)
        #expect(scanError(")", .values)?.code == 27)
        #expect(scanError(",(1)", .values)?.code == 27)
    }

    @Test func malformedTuples() throws {
        let unbalanced = try #require(scanError("(1), (1, [2)", .values))
        #expect(unbalanced.code == 62)
        #expect(unbalanced.name == "SYNTAX_ERROR")
        #expect(unbalanced.offset == 11)
        #expect(unbalanced.message.contains("row 2"))

        let unterminated = try #require(scanError("(1, 'abc)", .values))
        #expect(unterminated.code == 62)
        #expect(unterminated.offset == 4)

        let open = try #require(scanError("(1),(2", .values))
        #expect(open.code == 62)
        #expect(open.offset == 4)

        #expect(scanError("(1, '\\')", .values)?.code == 62)  // the quote is escaped
        #expect(scanError("(1, \"a)", .values)?.code == 62)
        #expect(scanError("(1, ]", .values)?.code == 62)
    }

    @Test func dataAfterSemicolonIsRejected() throws {
        let error = try #require(scanError("(1); (2)", .values))
        #expect(error.code == 62)
        #expect(error.offset == 5)
    }

    @Test func messagesQuoteAtMostHundredBytes() throws {
        let text = "(1), " + String(repeating: "x", count: 5000)
        let error = try #require(scanError(text, .values))
        #expect(error.message.utf8.count < 200)
        #expect(error.message.contains(String(repeating: "x", count: 100)))
        #expect(!error.message.contains(String(repeating: "x", count: 101)))
    }

    @Test func deepNestingIsBounded() throws {
        let deep = "(" + String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000) + ")"
        #expect(scanError(deep, .values)?.code == 62)
        let fine = "(" + String(repeating: "[", count: 900) + String(repeating: "]", count: 900) + ")"
        #expect(try scan(fine, .values).rowCount == 1)
    }
}

@Suite struct LineScannerTests {
    @Test func tabSeparated() throws {
        #expect(try scan("", .tabSeparated) == rows(0, 0..<0))
        #expect(try scan("1\t2\n3\t4\n", .tabSeparated) == rows(2, 0..<8, newline: true))
        #expect(try scan("1\t2\n3\t4", .tabSeparated) == rows(2, 0..<7))
        #expect(try scan("\n", .tabSeparated) == rows(1, 0..<1, newline: true))
        #expect(try scan("1\n\n", .tabSeparated) == rows(2, 0..<3, newline: true))
        #expect(try scan("1\r\n2\r\n", .tabSeparated) == rows(2, 0..<6, newline: true))
    }

    @Test func escapedLineFeeds() throws {
        // `\` followed by a real line feed is a line feed inside the value.
        #expect(try scan("a\\\nb\n", .tabSeparated) == rows(1, 0..<5, newline: true))
        // An escaped backslash before the line feed does not escape it.
        #expect(try scan("a\\\\\nb\n", .tabSeparated) == rows(2, 0..<6, newline: true))
        #expect(try scan("a\\\\\\\nb\n", .tabSeparated).rowCount == 1)
        // Ending in an escaped line feed means the row is not terminated.
        #expect(try scan("a\\\n", .tabSeparated) == rows(1, 0..<3))
        #expect(try scan("a\\\n", .tskv) == rows(1, 0..<3))
        // TabSeparatedRaw has no escapes.
        #expect(try scan("a\\\nb\n", .tabSeparatedRaw) == rows(2, 0..<5, newline: true))
        #expect(try scan("a\\", .tabSeparatedRaw) == rows(1, 0..<2))
    }

    @Test func danglingBackslashAtEnd() throws {
        // A row separator appended after it would become an escaped line feed, so it is refused like ClickHouse does.
        let error = try #require(scanError("1\n2\\", .tabSeparated))
        #expect(error.code == 25)
        #expect(error.name == "CANNOT_PARSE_ESCAPE_SEQUENCE")
        #expect(error.offset == 3)
        #expect(error.message.contains("row 2"))
        #expect(scanError("a\\\\\\", .tskv)?.code == 25)
        #expect(try scan("a\\\\", .tabSeparated) == rows(1, 0..<3))
    }

    @Test func headers() throws {
        #expect(try scan("a\tb\n1\t2\n", .tabSeparatedWithNames) == rows(1, 4..<8, header: 0..<4, newline: true))
        #expect(try scan("a\tb\nUInt8\tString\n1\tx\n3\ty", .tabSeparatedWithNamesAndTypes)
            == rows(2, 17..<24, header: 0..<17, newline: false))
        #expect(try scan("a\tb", .tabSeparatedWithNames) == rows(0, 3..<3, header: 0..<3))
        #expect(try scan("a\tb\n", .tabSeparatedWithNamesAndTypes) == rows(0, 4..<4, header: 0..<4))
        #expect(try scan("", .tabSeparatedWithNames) == rows(0, 0..<0))
        #expect(try scan(bom + "a\n1\n", .tabSeparatedWithNames) == rows(1, 5..<7, header: 3..<5, newline: true))
    }

    @Test func tskvAndBOM() throws {
        #expect(try scan("a=1\tb=2\nc=3\n", .tskv) == rows(2, 0..<12, newline: true))
        #expect(try scan(bom + "1\n", .tabSeparated) == rows(1, 3..<5, newline: true))
    }

    @Test func rowRanges() throws {
        #expect(try ranges("1\n2\n3", .tabSeparated) == [0..<2, 2..<4, 4..<5])
        #expect(try ranges("h\n1\n2\n", .tabSeparatedWithNames) == [2..<4, 4..<6])
        #expect(try ranges("", .tabSeparated) == [])
    }
}

@Suite struct CSVScannerTests {
    @Test func quotedLineFeedsAndEscapedQuotes() throws {
        let text = "1,\"a\nb\"\n2,\"c\"\"d\"\n"
        #expect(try scan(text, .csv) == rows(2, 0..<17, newline: true))
        #expect(try ranges(text, .csv) == [0..<8, 8..<17])
    }

    @Test func quoteOnlyOpensAtFieldStart() throws {
        #expect(try scan("1,ab\"c\n2,x\n", .csv).rowCount == 2)
        #expect(try scan("1, \"x,\ny\"\n", .csv).rowCount == 1)
        #expect(try scan("\"\",1\n\"\"\"\",2", .csv) == rows(2, 0..<11))
    }

    @Test func unterminatedQuote() throws {
        let error = try #require(scanError("1,2\n3,\"abc\n4,5\n", .csv))
        #expect(error.code == 26)
        #expect(error.name == "CANNOT_PARSE_QUOTED_STRING")
        #expect(error.offset == 6)
        #expect(error.message.contains("row 2"))
    }

    @Test func headerMayContainQuotedLineFeeds() throws {
        #expect(try scan("\"a\nb\",c\n1,2\n", .csvWithNames) == rows(1, 8..<12, header: 0..<8, newline: true))
        #expect(try scan("a,b", .csvWithNames) == rows(0, 3..<3, header: 0..<3))
    }
}

@Suite struct JSONScannerTests {
    @Test func eachRow() throws {
        let text = "{\"a\":1}\n{\"a\":\"}{\"}\n"
        #expect(try scan(text, .jsonEachRow) == rows(2, 0..<18))
        #expect(try ranges(text, .jsonEachRow) == [0..<7, 8..<18])
    }

    @Test func stringsAndNesting() throws {
        #expect(try scan(#"{"a":"x\"}"} {"b":[1,{"c":2}],"d":"\\"}"#, .jsonEachRow).rowCount == 2)
        #expect(try scan(#"{"a":"[{"}{"b":"\u005d"}"#, .jsonEachRow).rowCount == 2)
    }

    @Test func separators() throws {
        #expect(try scan("{\"a\":1},{\"a\":2}", .jsonEachRow) == rows(2, 0..<15))
        #expect(try scan(" {\"a\":1} ,\n {\"a\":2}, ", .jsonEachRow) == rows(2, 1..<19))
        #expect(try scan("{\"a\":1};", .jsonEachRow) == rows(1, 0..<7))
        #expect(try scan("{\"a\":1}\n;\n", .jsonEachRow) == rows(1, 0..<7))
        #expect(try scan("", .jsonEachRow) == rows(0, 0..<0))
        #expect(try scan(" \n", .jsonEachRow) == rows(0, 2..<2))
    }

    @Test func wrappedInArray() throws {
        #expect(try scan("[{\"a\":1},{\"a\":2}]", .jsonEachRow) == rows(2, 1..<16))
        #expect(try scan(" [ {\"a\":1} ] ; ", .jsonEachRow) == rows(1, 3..<10))
        #expect(try scan("[]", .jsonEachRow) == rows(0, 1..<1))
        #expect(scanError("[{\"a\":1}", .jsonEachRow)?.code == 33)
        #expect(scanError("[{\"a\":1}] {}", .jsonEachRow)?.code == 27)
    }

    @Test func bomIsExcluded() throws {
        #expect(try scan(bom + "{}", .jsonEachRow) == rows(1, 3..<5))
    }

    @Test func errors() throws {
        let junk = try #require(scanError("{\"a\":1} x {\"a\":2}", .jsonEachRow))
        #expect(junk.code == 27)
        #expect(junk.offset == 8)
        #expect(junk.message.contains("expected '{'"))
        #expect(junk.message.contains("row 2"))

        #expect(scanError(",{\"a\":1}", .jsonEachRow)?.offset == 0)
        #expect(scanError("{\"a\":1},,{\"a\":2}", .jsonEachRow)?.offset == 8)
        #expect(scanError("{\"a\":1};{\"b\":2}", .jsonEachRow)?.code == 27)

        let mismatched = try #require(scanError("{\"a\":[1}", .jsonEachRow))
        #expect(mismatched.code == 117)
        #expect(mismatched.name == "INCORRECT_DATA")
        #expect(mismatched.offset == 7)

        let truncated = try #require(scanError("{\"a\":1}\n{\"a\":1", .jsonEachRow))
        #expect(truncated.code == 33)
        #expect(truncated.name == "CANNOT_READ_ALL_DATA")
        #expect(truncated.message.contains("row 2"))

        let string = try #require(scanError("{\"a\":\"abc}", .jsonEachRow))
        #expect(string.code == 26)
        #expect(string.offset == 5)

        #expect(scanError("[1,2]", .jsonEachRow)?.code == 27) // arrays inside the wrapper are not rows
        let deep = String(repeating: "[", count: 2000) + String(repeating: "]", count: 2000)
        #expect(scanError("{\"a\":" + deep + "}", .jsonEachRow)?.code == 117)
    }

    @Test func compactEachRow() throws {
        #expect(try scan("[1,\"a\"]\n[2,\"]\"]", .jsonCompactEachRow) == rows(2, 0..<15))
        #expect(scanError("{\"a\":1}", .jsonCompactEachRow)?.message.contains("expected '['") == true)
    }

    @Test func compactHeaders() throws {
        #expect(try scan("[\"a\",\"b\"]\n[1,2]\n", .jsonCompactEachRowWithNames) == rows(1, 10..<15, header: 0..<9))
        let both = "[\"a\",\"b\"]\n[\"UInt8\",\"String\"]\n[1,\"x\"], [2,\"y\"]"
        #expect(try scan(both, .jsonCompactEachRowWithNamesAndTypes) == rows(2, 29..<45, header: 0..<28))
        #expect(try ranges(both, .jsonCompactEachRowWithNamesAndTypes) == [29..<36, 38..<45])
        #expect(try scan("[\"a\"]", .jsonCompactEachRowWithNamesAndTypes) == rows(0, 5..<5, header: 0..<5))
    }
}

@Suite struct BinaryFormatTests {
    /// RowBinary needs the column types; without them its data is unsupported, not malformed (BinaryFormatTests.swift
    /// has the typed scans).
    @Test func binaryDataWithoutTypesIsUnsupported() throws {
        let data: [UInt8] = [0xEF, 0xBB, 0xBF, 0x01, 0x0A, 0x28]
        for format in [InputFormat.rowBinary, .rowBinaryWithNames] {
            #expect(throws: RowScanError.self) { try RowScanner.scan(data, format: format) }
            #expect(try RowScanner.rowRanges([], format: format) == [])
        }
    }
}

@Suite struct RowScannerPropertyTests {
    /// How a batch joins chunks (docs/request-path.md, "Formats and joining"): Values with `,`, JSON with "\n", line formats
    /// with a "\n" added when a chunk lacks one. The joined data must count as the sum of its chunks.
    func join(_ a: [UInt8], _ sa: ScannedRows, _ b: [UInt8], _ sb: ScannedRows, format: InputFormat) -> [UInt8] {
        var out = Array(a[sa.rows])
        switch format {
        case .values: out += Array(",".utf8)
        case .jsonEachRow, .jsonCompactEachRow: out += Array("\n".utf8)
        default: if !sa.endsWithNewline { out += Array("\n".utf8) }
        }
        return out + Array(b[sb.rows])
    }

    @Test(arguments: [InputFormat.values, .tabSeparated, .tabSeparatedRaw, .csv, .jsonEachRow, .jsonCompactEachRow, .tskv])
    func randomChunksScanSafelyAndConcatenate(format: InputFormat) throws {
        var rng = SplitMix64(seed: 7)
        let alphabet = Array("(){}[]'\"`\\,; \n\tab1:".utf8)
        var accepted = 0
        for round in 0..<4000 {
            var chunk: [UInt8] = []
            let length = Int(rng.next() % 24)
            for _ in 0..<length { chunk.append(alphabet[Int(rng.next() % UInt64(alphabet.count))]) }
            if round % 3 == 0 { chunk = Array(sample(format, &rng).utf8) }
            guard let scanned = try? RowScanner.scan(chunk, format: format) else { continue }
            accepted += 1
            #expect(scanned.rows.lowerBound >= 0 && scanned.rows.upperBound <= chunk.count)
            let pieces = try RowScanner.rowRanges(chunk, format: format)
            #expect(pieces.count == scanned.rowCount)
            for (piece, next) in zip(pieces, pieces.dropFirst()) { #expect(piece.upperBound <= next.lowerBound) }
            if let first = pieces.first, let last = pieces.last {
                #expect(first.lowerBound == scanned.rows.lowerBound)
                #expect(last.upperBound <= scanned.rows.upperBound)
            }
            guard scanned.rowCount > 0 else { continue }
            let other = Array(sample(format, &rng).utf8)
            let otherScanned = try RowScanner.scan(other, format: format)
            let joined = join(chunk, scanned, other, otherScanned, format: format)
            #expect(try RowScanner.scan(joined, format: format).rowCount == scanned.rowCount + otherScanned.rowCount,
                    "\(String(decoding: joined, as: UTF8.self))")
        }
        #expect(accepted > 100)
    }

    fileprivate func sample(_ format: InputFormat, _ rng: inout SplitMix64) -> String {
        let n = Int(rng.next() % 3) + 1
        let row: (Int) -> String
        switch format {
        case .values: row = { "(\($0), 'it''s \\' (', [1, (2)], \"x\")" }
        case .jsonEachRow: row = { "{\"id\":\($0),\"s\":\"}\\\"{\",\"a\":[{}]}" }
        case .jsonCompactEachRow: row = { "[\($0),\"]\\\"[\",{\"a\":[]}]" }
        case .csv: row = { "\($0),\"a\nb\"\"\",c\n" }
        default: row = { "\($0)\tx\\\ny\n" }
        }
        return (0..<n).map(row).joined(separator: format == .values ? ", " : "\n")
    }
}
