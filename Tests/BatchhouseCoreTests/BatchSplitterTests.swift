import Testing

@testable import BatchhouseCore

@Suite struct BatchSplitterTests {
    func batch(format: InputFormat, header: String? = nil, chunks: [(String, Int, UInt64)]) -> SealedBatch {
        var store = BatchStore()
        let key = BatchKey(
            identity: .anonymous, database: "d", table: "t", columns: nil, format: format,
            header: header.map { Array($0.utf8) }, settings: [])
        let rule = TableRule(strategy: .size, maxRows: 1_000_000, maxDelay: .seconds(60))
        for (text, rows, token) in chunks {
            let bytes = Array(text.utf8)
            _ = bytes.withUnsafeBytes {
                store.append(
                    key: key, rule: rule, chunk: $0, rows: rows, endsWithNewline: text.hasSuffix("\n"),
                    now: .zero, token: token, spoolChunk: token + 100)
            }
        }
        return store.sealAll(trigger: .shutdown, now: .zero)[0]
    }

    func text(_ batch: SealedBatch) -> String { String(decoding: batch.data, as: UTF8.self) }

    @Test func valuesSplitInHalvesKeepingWhoSentWhat() throws {
        let whole = batch(format: .values, chunks: [("(1,'a'),(2,'b')", 2, 1), ("(3,'c')", 1, 2), ("(4,'d') (5,'e')", 2, 3)])
        #expect(text(whole) == "(1,'a'),(2,'b'),(3,'c'),(4,'d') (5,'e')")
        let (first, second) = try #require(BatchSplitter.halves(of: whole, firstID: 10, secondID: 11))
        #expect(text(first) == "(1,'a'),(2,'b')")
        #expect(text(second) == "(3,'c'),(4,'d'),(5,'e')")
        #expect(first.rows == 2 && second.rows == 3)
        #expect(first.id == 10 && second.id == 11)
        #expect(first.contributions.map(\.token) == [1])
        #expect(second.contributions.map(\.token) == [2, 3])
        #expect(second.contributions.map(\.spoolChunk) == [102, 103])
        #expect(second.contributions.map(\.rows) == [1, 2])
    }

    @Test func linesKeepTheHeaderInEachHalf() throws {
        let whole = batch(format: .tabSeparatedWithNames, header: "id\tname\n", chunks: [("1\ta\n2\tb\n", 2, 1), ("3\tc", 1, 2), ("\n", 1, 3)])
        let (first, second) = try #require(BatchSplitter.halves(of: whole, firstID: 1, secondID: 2))
        #expect(text(first) == "id\tname\n1\ta\n2\tb\n")
        #expect(text(second) == "id\tname\n3\tc\n\n")
        #expect(second.rows == 2)
    }

    @Test func splittingDownToSingleRowsIsolatesTheBadOne() throws {
        let rows = (0..<100).map { "{\"id\":\($0)}" }
        let whole = batch(format: .jsonEachRow, chunks: rows.enumerated().map { ($1, 1, UInt64($0)) })
        var pending = [whole]
        var singles: [SealedBatch] = []
        var nextID: UInt64 = 1000
        var splits = 0
        while let current = pending.popLast() {
            // Pretend ClickHouse refuses any batch holding id 42.
            guard text(current).contains("{\"id\":42}") else { continue }
            if let (a, b) = BatchSplitter.halves(of: current, firstID: nextID, secondID: nextID + 1) {
                nextID += 2
                splits += 1
                pending += [a, b]
            } else {
                singles.append(current)
            }
        }
        #expect(singles.count == 1)
        #expect(text(singles[0]) == "{\"id\":42}\n")
        #expect(singles[0].contributions.map(\.token) == [42])
        #expect(splits <= 7)
    }

    @Test func binaryFormatsAndSingleRowsDoNotSplit() {
        let binary = batch(format: .rowBinary, chunks: [("\u{1}\u{2}", 0, 1), ("\u{3}", 0, 2)])
        #expect(BatchSplitter.halves(of: binary, firstID: 1, secondID: 2) == nil)
        let one = batch(format: .values, chunks: [("(1)", 1, 1)])
        #expect(BatchSplitter.halves(of: one, firstID: 1, secondID: 2) == nil)
    }
}
