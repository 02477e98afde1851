import Foundation
import Testing

@testable import BatchhouseCore

/// Captures from ClickHouse 18.16 and 26.9 (Fixtures/Binary/capture.sh): `SELECT * FROM fx FORMAT ...` of a table
/// with every known type, and DESCRIBE TABLE of it.
enum BinaryFixtures {
    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/Binary")

    static func bytes(_ name: String) -> [UInt8] {
        (try? [UInt8](Data(contentsOf: folder.appendingPathComponent(name)))) ?? []
    }

    static func describe(_ name: String) -> TableDescription? {
        TableDescription(describeOutput: String(decoding: bytes(name), as: UTF8.self))
    }

    static var oldSignature: ColumnSignature? { describe("old-describe.tsv")?.signature(for: nil) }
    static var modernSignature: ColumnSignature? { describe("modern-describe.tsv")?.signature(for: nil) }

    /// Per row, a canonical encoding of the row's values: LowCardinality resolved to its key, arrays to their
    /// elements. Two blocks hold the same rows when these are equal, whatever their dictionaries.
    static func values(_ block: NativeBlock, in data: [UInt8]) -> [[UInt8]] {
        var rows = [[UInt8]](repeating: [], count: block.rows)
        for column in block.columns {
            for row in 0..<block.rows { rows[row] += value(column.layout, row, data) }
        }
        return rows
    }

    static func value(_ layout: NativeColumn.Layout, _ row: Int, _ data: [UInt8]) -> [UInt8] {
        switch layout {
        case .fixed(let start, let width):
            return Array(data[(start + row * width)..<(start + (row + 1) * width)])
        case .strings(let bounds):
            return Array(data[bounds[row]..<bounds[row + 1]])
        case .nullable(let mapStart, let nested):
            return data[mapStart + row] != 0 ? [1] : [0] + value(nested, row, data)
        case .array(let offsets, let nested):
            let low = row == 0 ? 0 : offsets[row - 1]
            var out = [UInt8(truncatingIfNeeded: offsets[row] - low)]
            for element in low..<offsets[row] { out += value(nested, element, data) }
            return out
        case .tuple(let elements):
            return elements.flatMap { value($0, row, data) }
        case .lowCardinality(let groups):
            let group = groups.first { row >= $0.firstRow && row < $0.firstRow + $0.rows }!
            let at = group.indexesStart + (row - group.firstRow) * group.width
            var index = 0
            for i in 0..<group.width { index |= Int(data[at + i]) << (8 * i) }
            return [UInt8(index == 0 ? 0 : 1)] + value(group.keyLayout, index, data)
        }
    }

    static func blocks(_ data: [UInt8]) throws -> [NativeBlock] {
        try data.withUnsafeBytes { bytes in try RowScanner.nativeBlocks(bytes) }
    }

    static func slice(_ block: NativeBlock, _ data: [UInt8], _ rows: Range<Int>) -> [UInt8] {
        data.withUnsafeBytes { block.slice($0, rows: rows) }
    }
}

@Suite struct ColumnTypeTests {
    @Test func parsesWhatBothServersDescribe() throws {
        for name in ["old-describe.tsv", "modern-describe.tsv"] {
            let table = try #require(BinaryFixtures.describe(name))
            for column in table.columns {
                #expect(ColumnType(parsing: column.type) != nil, "\(column.name): \(column.type)")
            }
        }
    }

    @Test func layouts() {
        #expect(ColumnType(parsing: "Tuple(\n    a Int8,\n    b String)") == .tuple([.fixed(width: 1), .string]))
        #expect(ColumnType(parsing: "Tuple(Int8, String)") == .tuple([.fixed(width: 1), .string]))
        #expect(ColumnType(parsing: "Nested(x UInt8, `y z` String)") == .array(.tuple([.fixed(width: 1), .string])))
        #expect(ColumnType(parsing: "Enum8('b,(c)' = -2, 'a' = 1, 'q\\'\\'' = 3, ')' = 4)") == .fixed(width: 1))
        #expect(ColumnType(parsing: "Enum16('big' = 1000)") == .fixed(width: 2))
        #expect(ColumnType(parsing: "Decimal(38, 10)") == .fixed(width: 16))
        #expect(ColumnType(parsing: "Decimal(76, 5)") == .fixed(width: 32))
        #expect(ColumnType(parsing: "Decimal(9, 2)") == .fixed(width: 4))
        #expect(ColumnType(parsing: "Decimal64(3)") == .fixed(width: 8))
        #expect(ColumnType(parsing: "DateTime64(3, 'UTC')") == .fixed(width: 8))
        #expect(ColumnType(parsing: "DateTime('Europe/Moscow')") == .fixed(width: 4))
        #expect(ColumnType(parsing: "FixedString(3)") == .fixedString(length: 3))
        #expect(ColumnType(parsing: "Map(String, Array(UInt8))") == .map(key: .string, value: .array(.fixed(width: 1))))
        #expect(ColumnType(parsing: "LowCardinality(Nullable(String))") == .lowCardinality(.nullable(.string)))
        #expect(ColumnType(parsing: "SimpleAggregateFunction(anyLast, Nullable(String))") == .nullable(.string))
        #expect(ColumnType(parsing: "SimpleAggregateFunction(groupUniqArrayArray(10), Array(String))") == .array(.string))
        #expect(ColumnType(parsing: "Nullable(Nothing)") == .nullable(.nothing))
        #expect(ColumnType(parsing: "IntervalSecond") == .fixed(width: 8))
        #expect(ColumnType(parsing: "Int256") == .fixed(width: 32))
        #expect(ColumnType(parsing: "BFloat16") == .fixed(width: 2))
    }

    @Test func unknownLayoutsAreNil() {
        for name in [
            "JSON", "Object('json')", "Variant(String, UInt8)", "Dynamic", "AggregateFunction(sum, UInt64)", "Point",
            "Ring", "Time", "Time64(3)", "Foo", "Nullable(JSON)", "Array(Dynamic)", "", "Int8(1)", "Array(", "Array()",
            "Decimal(77, 1)", "FixedString(0)", "String String", "Tuple()", "Map(String)",
            String(repeating: "Array(", count: 40) + "UInt8" + String(repeating: ")", count: 40),
        ] {
            #expect(ColumnType(parsing: name) == nil, "\(name)")
        }
    }
}

@Suite struct TableDescriptionTests {
    @Test func oldServer() throws {
        let table = try #require(BinaryFixtures.describe("old-describe.tsv"))
        #expect(table.columns.count == 21)
        #expect(table.columns[10] == .init(name: "dtz", type: "DateTime('UTC')", defaultKind: ""))
        #expect(table.columns[12].type == "Enum8('b,(c)' = -2, 'a' = 1)")
        #expect(table.columns.map(\.name).suffix(3) == ["n.x", "n.y", "t"])
    }

    @Test func modernServerLeavesOutMaterializedAliasAndWithoutAListEphemeral() throws {
        let table = try #require(BinaryFixtures.describe("modern-describe.tsv"))
        #expect(table.columns.count == 36)
        #expect(table.columns.first { $0.name == "t" }?.type == "Tuple(\n    a Int8,\n    b String)")
        #expect(table.columns.first { $0.name == "e8" }?.type == "Enum8('b,(c)' = -2, 'a' = 1, 'q\\'\\'' = 3)")
        #expect(table.insertable.map(\.name).suffix(3) == ["saf", "eph", "def"])
        let all = try #require(table.signature(for: nil))
        #expect(all.names.count == 33)
        #expect(!all.names.contains("eph") && !all.names.contains("mat") && !all.names.contains("al"))
        let listed = try #require(table.signature(for: ["s", "eph", "i8"]))
        #expect(listed.names == ["s", "eph", "i8"])
        #expect(listed.typeNames == ["String", "UInt8", "Int8"])
        #expect(table.signature(for: ["s", "mat"]) == nil)
        #expect(table.signature(for: ["nope"]) == nil)
    }

    @Test func unknownTypesGiveNoSignature() throws {
        let table = try #require(TableDescription(describeOutput: "a\tUInt8\t\t\t\t\nj\tJSON\t\t\t\t\n"))
        #expect(table.signature(for: ["a"]) != nil)
        #expect(table.signature(for: nil) == nil)
    }
}

@Suite struct ColumnSignatureTests {
    @Test func encodesAsARowBinaryWithNamesAndTypesHeader() throws {
        let data = BinaryFixtures.bytes("modern-all.rowbinarywnt")
        let scanned = try RowScanner.scan(data, format: .rowBinaryWithNamesAndTypes, columns: nil)
        let signature = try #require(scanned.signature)
        #expect(signature.encoded == Array(data[try #require(scanned.header)]))
        #expect(ColumnSignature(decoding: signature.encoded) == signature)
        #expect(Array(signature.encoded.prefix(signature.encodedNames.count)) == signature.encodedNames)
        #expect(signature.encodedNames == Array(BinaryFixtures.bytes("modern-all.rowbinarywn").prefix(signature.encodedNames.count)))
        #expect(ColumnSignature(decoding: signature.encoded + [0]) == nil)
        #expect(ColumnSignature(decoding: Array(signature.encoded.dropLast())) == nil)
        #expect(ColumnSignature(decoding: []) == nil)
    }
}

@Suite struct RowBinaryScannerTests {
    @Test func capturedRowsAreCounted() throws {
        let old = try #require(BinaryFixtures.oldSignature)
        let modern = try #require(BinaryFixtures.modernSignature)
        for (file, signature) in [("old-all.rowbinary", old), ("modern-all.rowbinary", modern)] {
            let data = BinaryFixtures.bytes(file)
            let scanned = try RowScanner.scan(data, format: .rowBinary, columns: signature)
            #expect(scanned.rowCount == 3)
            #expect(scanned.rows == 0..<data.count)
            #expect(scanned.signature == signature)
            let ranges = try RowScanner.rowRanges(data, format: .rowBinary, columns: signature)
            #expect(ranges.count == 3)
            #expect(ranges.first?.lowerBound == 0 && ranges.last?.upperBound == data.count)
            #expect(zip(ranges, ranges.dropFirst()).allSatisfy { $0.upperBound == $1.lowerBound })
        }
    }

    @Test func headersAreReadAndTheRowsAreThoseOfRowBinary() throws {
        let plain = BinaryFixtures.bytes("modern-all.rowbinary")
        let modern = try #require(BinaryFixtures.modernSignature)
        let withTypes = BinaryFixtures.bytes("modern-all.rowbinarywnt")
        let a = try RowScanner.scan(withTypes, format: .rowBinaryWithNamesAndTypes, columns: nil)
        #expect(a.rowCount == 3)
        #expect(Array(withTypes[a.rows]) == plain)
        #expect(a.signature?.names == modern.names)
        let withNames = BinaryFixtures.bytes("modern-all.rowbinarywn")
        let b = try RowScanner.scan(withNames, format: .rowBinaryWithNames, columns: modern)
        #expect(b.rowCount == 3)
        #expect(Array(withNames[b.rows]) == plain)
        #expect(b.header == 0..<(withNames.count - plain.count))
        #expect(b.signature?.typeNames == modern.typeNames)
        #expect(b.signature?.encodedNames == Array(withNames[try #require(b.header)]))
    }

    @Test func withNamesTakesTypesByNameInTheHeadersOrder() throws {
        let table = try #require(TableDescription(describeOutput: "a\tUInt8\t\t\t\t\nb\tString\t\t\t\t\n"))
        let data: [UInt8] = [2, 1, 0x62, 1, 0x61, 1, 0x78, 7]  // header (b, a), then b = "x", a = 7
        let scanned = try RowScanner.scan(data, format: .rowBinaryWithNames, columns: table.signature(for: nil))
        #expect(scanned.rowCount == 1)
        #expect(scanned.signature?.names == ["b", "a"])
        #expect(scanned.signature?.typeNames == ["String", "UInt8"])
        let unknown: [UInt8] = [1, 1, 0x63, 7]
        #expect(throws: RowScanError.self) { try RowScanner.scan(unknown, format: .rowBinaryWithNames, columns: table.signature(for: nil)) }
        do {
            _ = try RowScanner.scan(unknown, format: .rowBinaryWithNames, columns: table.signature(for: nil))
        } catch {
            #expect(error.isUnsupported)
        }
    }

    /// The answers ClickHouse 26.9 gave to the same bytes for a table (s String, a Array(UInt8)).
    @Test func errorsAreClickHouses() throws {
        let columns = try #require(ColumnSignature(names: ["s", "a"], typeNames: ["String", "Array(UInt8)"]))
        func error(_ bytes: [UInt8]) -> RowScanError? {
            do {
                _ = try RowScanner.scan(bytes, format: .rowBinary, columns: columns)
                return nil
            } catch {
                return error
            }
        }
        let short = try #require(error([5, 0x61, 0x62]))
        #expect(short.code == 33)
        #expect(short.message.hasPrefix("Cannot read all data. Bytes read: 2. Bytes expected: 5."))
        #expect(error([1, 0x61, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F])?.code == 128)
        #expect(error([1, 0x61, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F])?.message.hasPrefix("Too large array size: 4294967295. The maximum is: 1073741824.") == true)
        #expect(error([1, 0x61, 5, 1])?.code == 33)
        #expect(error([1, 0x61, 0x80])?.code == 32)
        #expect(error([0xFF, 0xFF, 0xFF, 0xFF, 0x0F])?.code == 131)
        // ClickHouse reads at most 10 varint bytes: the 11th starts the next row.
        let long: [UInt8] = [1, 0x61] + [UInt8](repeating: 0x80, count: 9) + [0x00, 0x01]
        let e = try #require(error(long))
        #expect(e.code == 33 && e.message.contains("at row 2"))
    }

    @Test func withoutColumnsItIsUnsupported() {
        for format in [InputFormat.rowBinary, .rowBinaryWithNames] {
            do {
                _ = try RowScanner.scan([1, 2, 3], format: format, columns: nil)
                Issue.record("scanned without columns")
            } catch {
                #expect(error.isUnsupported)
            }
        }
        do {
            _ = try RowScanner.scan([1, 2, 3], format: .rowBinary)
            Issue.record("scanned without columns")
        } catch {
            #expect(error.isUnsupported)
        }
        let json: [UInt8] = [1, 1, 0x6A, 4] + Array("JSON".utf8) + [0]
        do {
            _ = try RowScanner.scan(json, format: .rowBinaryWithNamesAndTypes, columns: nil)
            Issue.record("scanned JSON")
        } catch {
            #expect(error.isUnsupported)
        }
    }

    @Test func emptyDataIsNoRows() throws {
        let columns = try #require(BinaryFixtures.modernSignature)
        #expect(try RowScanner.scan([], format: .rowBinary, columns: columns).rowCount == 0)
        #expect(try RowScanner.rowRanges([], format: .native, columns: nil) == [])
    }
}

@Suite struct NativeScannerTests {
    @Test func capturedBlocksAreCounted() throws {
        for file in ["old-all.native", "modern-all.native"] {
            let data = BinaryFixtures.bytes(file)
            let scanned = try RowScanner.scan(data, format: .native, columns: nil)
            #expect(scanned.rowCount == 3)
            #expect(scanned.rows == 0..<data.count)
            #expect(try RowScanner.rowRanges(data, format: .native, columns: nil) == [0..<data.count])
        }
        let modern = try #require(BinaryFixtures.modernSignature)
        let scanned = try RowScanner.scan(BinaryFixtures.bytes("modern-all.native"), format: .native, columns: nil)
        #expect(scanned.signature?.names == modern.names)
        let old = try #require(BinaryFixtures.oldSignature)
        let oldNative = try RowScanner.scan(BinaryFixtures.bytes("old-all.native"), format: .native, columns: nil).signature
        #expect(oldNative?.names == old.names)
        #expect(oldNative?.types == old.types)
        // Native output prints DateTime('UTC') as DateTime (server time zone UTC); the layout is the same.
        let differing = zip(oldNative?.typeNames ?? [], old.typeNames).filter { $0 != $1 }.map { "\($0) for \($1)" }
        #expect(differing == ["DateTime for DateTime('UTC')"])
    }

    @Test func concatenatedBlocksAreOneStream() throws {
        let one = BinaryFixtures.bytes("modern-rows-0-1.native")
        let two = BinaryFixtures.bytes("modern-rows-1-2.native")
        let blocks = try BinaryFixtures.blocks(one + two)
        #expect(blocks.map(\.rows) == [1, 2])
        #expect(blocks.map(\.range) == [0..<one.count, one.count..<(one.count + two.count)])
        #expect(try RowScanner.scan(one + two, format: .native, columns: nil).rowCount == 3)
    }

    @Test func blocksWithoutRowsHoldOnlyTheirHeader() throws {
        let data = BinaryFixtures.bytes("modern-all.native")
        let block = try #require(try BinaryFixtures.blocks(data).first)
        let empty = BinaryFixtures.slice(block, data, 0..<0)
        let blocks = try BinaryFixtures.blocks(empty + data + empty)
        #expect(blocks.map(\.rows) == [0, 3, 0])
        #expect(blocks[0].signature == block.signature)
    }

    @Test func slicesEqualWhatClickHouseSendsForThoseRows() throws {
        for (all, rows12, rows01) in [
            ("modern-all.native", "modern-rows-1-2.native", Optional("modern-rows-0-1.native")),
            ("old-all.native", "old-rows-1-2.native", nil),
        ] {
            let data = BinaryFixtures.bytes(all)
            let block = try #require(try BinaryFixtures.blocks(data).first)
            var expectations = [(1..<3, rows12)]
            if let rows01 { expectations.append((0..<1, rows01)) }
            for (range, file) in expectations {
                let slice = BinaryFixtures.slice(block, data, range)
                let sliced = try #require(try BinaryFixtures.blocks(slice).first)
                let theirs = BinaryFixtures.bytes(file)
                let expected = try #require(try BinaryFixtures.blocks(theirs).first)
                #expect(sliced.rows == range.count)
                #expect(sliced.signature == expected.signature)
                #expect(BinaryFixtures.values(sliced, in: slice) == BinaryFixtures.values(expected, in: theirs), "\(file)")
                #expect(BinaryFixtures.values(sliced, in: slice) == Array(BinaryFixtures.values(block, in: data)[range]))
                // Columns other than LowCardinality come out byte for byte as ClickHouse writes them.
                for (mine, theirsColumn) in zip(sliced.columns, expected.columns) {
                    if case .lowCardinality = mine.layout { continue }
                    if case .array(_, .lowCardinality) = mine.layout { continue }
                    let end = { (blocks: NativeBlock, i: Int, size: Int) in i + 1 < blocks.columns.count ? blocks.columns[i + 1].header.lowerBound : size }
                    let i = sliced.columns.firstIndex { $0.header == mine.header }!
                    #expect(Array(slice[mine.header.lowerBound..<end(sliced, i, slice.count)])
                        == Array(theirs[theirsColumn.header.lowerBound..<end(expected, i, theirs.count)]),
                        "\(file) column \(sliced.signature.names[i])")
                }
            }
            // Every single row, and any subset, is a valid block again.
            for row in 0..<3 {
                let single = BinaryFixtures.slice(block, data, row..<(row + 1))
                #expect(try RowScanner.scan(single, format: .native, columns: nil).rowCount == 1)
            }
            let picked = data.withUnsafeBytes { block.slice($0, rows: [0, 2]) }
            let pickedBlock = try #require(try BinaryFixtures.blocks(picked).first)
            let values = BinaryFixtures.values(block, in: data)
            #expect(BinaryFixtures.values(pickedBlock, in: picked) == [values[0], values[2]])
        }
    }

    @Test func unsupportedBlocks() throws {
        func outcome(_ data: [UInt8]) -> RowScanError? {
            do {
                _ = try RowScanner.scan(data, format: .native, columns: nil)
                return nil
            } catch {
                return error
            }
        }
        // Columns that differ between blocks.
        let mixed = BinaryFixtures.bytes("old-all.native") + BinaryFixtures.bytes("modern-all.native")
        #expect(outcome(mixed)?.isUnsupported == true)
        // A JSON column.
        var json: [UInt8] = [1, 1, 1, 0x6A, 4]
        json += Array("JSON".utf8) + [0]
        #expect(outcome(json)?.isUnsupported == true)
        // No columns: ClickHouse stops reading there.
        #expect(outcome([0, 0]).map(\.isUnsupported) == true)
        // A global LowCardinality dictionary.
        var global: [UInt8] = [1, 1, 1, 0x6C] + [22] + Array("LowCardinality(String)".utf8)
        global += [1, 0, 0, 0, 0, 0, 0, 0] + [0, 1, 0, 0, 0, 0, 0, 0]
        #expect(outcome(global)?.isUnsupported == true)
    }

    @Test func malformedBlocks() throws {
        func code(_ data: [UInt8]) -> Int? {
            do {
                _ = try RowScanner.scan(data, format: .native, columns: nil)
                return nil
            } catch {
                return error.isUnsupported ? -1 : error.code
            }
        }
        let header: [UInt8] = [1, 2, 1, 0x61] + [12] + Array("Array(UInt8)".utf8)
        let offsets = { (a: UInt8, b: UInt8) -> [UInt8] in [a, 0, 0, 0, 0, 0, 0, 0, b, 0, 0, 0, 0, 0, 0, 0] }
        #expect(code(header + offsets(1, 2) + [7, 8]) == nil)
        #expect(code(header + offsets(2, 1) + [7, 8]) == 117)
        #expect(code(header + offsets(1, 3) + [7, 8]) == 33)
        let lc: [UInt8] = [1, 1, 1, 0x6C] + [22] + Array("LowCardinality(String)".utf8) + [1, 0, 0, 0, 0, 0, 0, 0]
        let keys: [UInt8] = [0, 2, 0, 0, 0, 0, 0, 0] + [1, 0, 0, 0, 0, 0, 0, 0] + [1, 0x7A] + [1, 0, 0, 0, 0, 0, 0, 0]
        #expect(code(lc + keys + [0]) == nil)
        #expect(code(lc + keys + [1]) == 117)
        var badVersion = lc
        badVersion[badVersion.count - 8] = 2
        #expect(code(badVersion + keys + [0]) == 117)
    }
}

@Suite struct BinaryTruncationTests {
    struct Case {
        var file: String
        var format: InputFormat
        var columns: ColumnSignature?
    }

    var cases: [Case] {
        [
            Case(file: "old-all.rowbinary", format: .rowBinary, columns: BinaryFixtures.oldSignature),
            Case(file: "modern-all.rowbinary", format: .rowBinary, columns: BinaryFixtures.modernSignature),
            Case(file: "modern-all.rowbinarywnt", format: .rowBinaryWithNamesAndTypes, columns: nil),
            Case(file: "modern-all.rowbinarywn", format: .rowBinaryWithNames, columns: BinaryFixtures.modernSignature),
            Case(file: "old-all.native", format: .native, columns: nil),
            Case(file: "modern-all.native", format: .native, columns: nil),
            Case(file: "modern-rows-1-2.native", format: .native, columns: nil),
        ]
    }

    /// Cut anywhere, the data is either rows up to a row (block) boundary, counted right, or an error for
    /// malformed data; never unsupported, never a crash.
    @Test func everyCutIsAnErrorOrTheRowsBeforeIt() throws {
        for test in cases {
            let data = BinaryFixtures.bytes(test.file)
            let full = try RowScanner.scan(data, format: test.format, columns: test.columns)
            let ranges = try RowScanner.rowRanges(data, format: test.format, columns: test.columns)
            let boundaries = Dictionary(uniqueKeysWithValues: ranges.enumerated().map { ($0.element.upperBound, $0.offset + 1) })
            let bodyStart = full.header?.upperBound ?? 0
            for cut in 1..<data.count {
                let prefix = Array(data[..<cut])
                do {
                    let scanned = try RowScanner.scan(prefix, format: test.format, columns: test.columns)
                    if test.format == .native {
                        #expect(boundaries[cut] == 1, "\(test.file) cut at \(cut) read as \(scanned.rowCount) rows")
                    } else {
                        let expected = cut == bodyStart ? 0 : boundaries[cut]
                        #expect(expected == scanned.rowCount, "\(test.file) cut at \(cut) read as \(scanned.rowCount) rows")
                    }
                } catch {
                    #expect(!error.isUnsupported, "\(test.file) cut at \(cut): \(error.message)")
                    #expect([32, 33].contains(error.code), "\(test.file) cut at \(cut): \(error.message)")
                }
            }
        }
    }

    /// Random byte changes never crash the scanners or the slicer.
    @Test func flippedBytesNeverCrash() throws {
        var random = SplitMix64(seed: 20261201)
        for test in cases {
            let data = BinaryFixtures.bytes(test.file)
            for _ in 0..<1500 {
                var changed = data
                for _ in 0..<Int.random(in: 1...3, using: &random) {
                    changed[Int.random(in: 0..<changed.count, using: &random)] = UInt8.random(in: 0...255, using: &random)
                }
                guard let scanned = try? RowScanner.scan(changed, format: test.format, columns: test.columns) else { continue }
                if test.format == .native, let blocks = try? BinaryFixtures.blocks(changed) {
                    #expect(blocks.reduce(0) { $0 + $1.rows } == scanned.rowCount)
                    for block in blocks where block.rows > 1 {
                        let half = BinaryFixtures.slice(block, changed, 0..<(block.rows / 2))
                        #expect(try RowScanner.scan(half, format: .native, columns: nil).rowCount == block.rows / 2)
                    }
                }
            }
        }
    }
}

@Suite struct BinaryBatchTests {
    func batch(format: InputFormat, header: [UInt8]?, chunks: [([UInt8], Int, UInt64)]) -> SealedBatch {
        var store = BatchStore()
        let key = BatchKey(
            identity: .anonymous, database: "d", table: "t", columns: nil, format: format, header: header, settings: [])
        let rule = TableRule(strategy: .size, maxRows: 1_000_000, maxDelay: .seconds(60))
        for (bytes, rows, token) in chunks {
            _ = bytes.withUnsafeBytes {
                store.append(
                    key: key, rule: rule, chunk: $0, rows: rows, endsWithNewline: false, now: .zero, token: token,
                    spoolChunk: token + 100)
            }
        }
        return store.sealAll(trigger: .shutdown, now: .zero)[0]
    }

    @Test func keyHeaderIsWrittenOnlyWhereClickHouseReadsIt() throws {
        let signature = try #require(BinaryFixtures.modernSignature)
        #expect(BatchBuffer(format: .rowBinary, header: signature.encoded).data.isEmpty)
        #expect(BatchBuffer(format: .native, header: signature.encoded).data.isEmpty)
        #expect(BatchBuffer(format: .rowBinaryWithNames, header: signature.encoded).data == signature.encodedNames)
        #expect(BatchBuffer(format: .rowBinaryWithNamesAndTypes, header: signature.encoded).data == signature.encoded)
        #expect(InputFormat(clickHouseName: "RowBinaryWithNames") == .rowBinaryWithNames)
        #expect(InputFormat.allCases.filter(\.isBinary).count == 4)
    }

    /// Splits down to single rows, as delivery isolates a bad row.
    func singles(_ whole: SealedBatch) -> [SealedBatch] {
        var pending = [whole]
        var out: [SealedBatch] = []
        var id: UInt64 = 10
        while let current = pending.popLast() {
            if let (a, b) = BatchSplitter.halves(of: current, firstID: id, secondID: id + 1) {
                id += 2
                pending += [b, a]
            } else {
                out.append(current)
            }
        }
        return out
    }

    @Test func rowBinarySplitsByRows() throws {
        let signature = try #require(BinaryFixtures.modernSignature)
        let data = BinaryFixtures.bytes("modern-all.rowbinary")
        let whole = batch(format: .rowBinary, header: signature.encoded, chunks: [(data, 3, 1), (data, 3, 2)])
        #expect(whole.data == data + data)
        let (first, second) = try #require(BatchSplitter.halves(of: whole, firstID: 1, secondID: 2))
        #expect(first.data == data && second.data == data)
        #expect(first.rows == 3 && first.contributions.map(\.token) == [1])
        #expect(second.contributions.map(\.token) == [2] && second.contributions.map(\.spoolChunk) == [102])
        let rows = try RowScanner.rowRanges(data, format: .rowBinary, columns: signature)
        let parts = singles(whole)
        #expect(parts.map(\.data) == (rows + rows).map { Array(data[$0]) })
        #expect(parts.map { $0.contributions.map(\.token) } == [[1], [1], [1], [2], [2], [2]])
    }

    @Test func rowBinaryWithNamesAndTypesKeepsItsHeader() throws {
        let data = BinaryFixtures.bytes("modern-all.rowbinarywnt")
        let scanned = try RowScanner.scan(data, format: .rowBinaryWithNamesAndTypes, columns: nil)
        let header = try #require(scanned.signature?.encoded)
        let rows = Array(data[scanned.rows])
        let whole = batch(format: .rowBinaryWithNamesAndTypes, header: header, chunks: [(rows, 3, 1)])
        #expect(whole.data == data)
        let (first, second) = try #require(BatchSplitter.halves(of: whole, firstID: 1, secondID: 2))
        #expect(try RowScanner.scan(first.data, format: .rowBinaryWithNamesAndTypes, columns: nil).rowCount == 1)
        #expect(try RowScanner.scan(second.data, format: .rowBinaryWithNamesAndTypes, columns: nil).rowCount == 2)
        #expect(Array(first.data.prefix(header.count)) == header)
    }

    @Test func nativeSplitsByBlocksAndSlicesTheMiddleOne() throws {
        let all = BinaryFixtures.bytes("modern-all.native")
        let one = BinaryFixtures.bytes("modern-rows-0-1.native")
        let signature = try #require(try RowScanner.scan(all, format: .native, columns: nil).signature)
        let whole = batch(format: .native, header: signature.encoded, chunks: [(all, 3, 1), (one, 1, 2)])
        #expect(whole.data == all + one)
        let (first, second) = try #require(BatchSplitter.halves(of: whole, firstID: 1, secondID: 2))
        #expect(first.rows == 2 && second.rows == 2)
        #expect(try RowScanner.scan(first.data, format: .native, columns: nil).rowCount == 2)
        #expect(try BinaryFixtures.blocks(second.data).map(\.rows) == [1, 1])
        #expect(first.contributions.map(\.token) == [1])
        #expect(second.contributions.map(\.token) == [1, 2])
        let parts = singles(whole)
        #expect(parts.map(\.rows) == [1, 1, 1, 1])
        #expect(parts.map { $0.contributions.map(\.token) } == [[1], [1], [1], [2]])
        let block = try #require(try BinaryFixtures.blocks(all).first)
        let values = BinaryFixtures.values(block, in: all)
        for (i, part) in parts.prefix(3).enumerated() {
            let sliced = try #require(try BinaryFixtures.blocks(part.data).first)
            #expect(BinaryFixtures.values(sliced, in: part.data) == [values[i]])
        }
        #expect(parts[3].data == one)
    }

    @Test func sampling() throws {
        let signature = try #require(BinaryFixtures.modernSignature)
        let rowBinary = BinaryFixtures.bytes("modern-all.rowbinary")
        let native = BinaryFixtures.bytes("modern-all.native")
        var random = SplitMix64(seed: 7)
        for (data, format, columns) in [(rowBinary, InputFormat.rowBinary, signature), (native, .native, nil)] {
            let all = try #require(data.withUnsafeBytes { RowSampler.sample($0, format: format, columns: columns, fraction: 1, using: &random) })
            #expect(all.rows == 3 && all.data == data)
            let none = try #require(data.withUnsafeBytes { RowSampler.sample($0, format: format, columns: columns, fraction: 0, using: &random) })
            #expect(none.rows == 0 && none.data.isEmpty)
            for _ in 0..<20 {
                let some = try #require(data.withUnsafeBytes { RowSampler.sample($0, format: format, columns: columns, fraction: 0.5, using: &random) })
                #expect(try RowScanner.scan(some.data, format: format, columns: columns).rowCount == some.rows)
            }
        }
        #expect(rowBinary.withUnsafeBytes { RowSampler.sample($0, format: .rowBinary, fraction: 1) }?.rows == nil)
    }
}
