// A libFuzzer target for the parts of the core that read untrusted bytes: the INSERT statement parser, the row
// scanners of every batchable format, the row sampler and splitter built on them, the aggregate rule's field
// reader (and the windows and encoder behind it), CityHash128, and the fast path's request parser. Built and run
// for a bounded time by `scripts/fuzz` (part of `scripts/test`); a crash or a broken invariant stops the run with
// the input that caused it (docs/architecture.md, "Testing").

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    guard let start, count > 0 else { return 0 }
    let input = UnsafeRawBufferPointer(start: start, count: count)
    let selector = input[0]
    let data = UnsafeRawBufferPointer(rebasing: input[1...])
    let formats = InputFormat.allCases

    // The statement parser, as a prefix and as the whole text.
    for isComplete in [false, true] {
        let result = InsertParser.parse(data, isComplete: isComplete, allowSettingsAfterFormat: selector & 1 == 1)
        switch result {
        case .insert(let statement):
            check(statement.dataOffset >= 0 && statement.dataOffset <= data.count, "data offset out of the text")
            check(!statement.table.isEmpty, "an INSERT without a table")
        case .needMoreData:
            check(!isComplete, "needMoreData for a complete text")
        case .passthrough:
            break
        }
    }

    // CityHash128 v1.0.2 (the checksum of decompress=1's blocks) reads at offsets computed from the length, some
    // behind its cursor: every length, under ASan. The framing decoder itself needs NIO and the C libraries,
    // which this swiftc-built target does not link; BodyDecoderTests cover it.
    let hash = CityHash128.hash(data)
    check(CityHash128(checksumBytes: hash.bytes) == hash, "checksum bytes do not read back")

    // The row scanner of one format, chosen by the first byte.
    let format = formats[Int(selector >> 1) % formats.count]
    if let scanned = try? RowScanner.scan(data, format: format) {
        check(scanned.rows.lowerBound >= 0 && scanned.rows.upperBound <= data.count, "rows out of the data")
        if let header = scanned.header {
            check(header.lowerBound >= 0 && header.upperBound <= scanned.rows.lowerBound, "header after the rows")
        }
        check(scanned.rowCount >= 0, "negative row count")
        let rows = UnsafeRawBufferPointer(rebasing: data[scanned.rows])
        if format.isRowCounted, let ranges = try? RowScanner.rowRanges(rows, format: format.withoutHeader) {
            var last = 0
            for range in ranges {
                check(range.lowerBound >= last && range.upperBound <= rows.count, "row ranges overlap or overrun")
                last = range.upperBound
            }
            var generator = SplitMix64(seed: UInt64(count))  // deterministic: a crash reproduces from its input
            if let kept = RowSampler.sample(rows, format: format, fraction: 0.5, using: &generator) {
                check(kept.rows >= 0 && kept.rows <= ranges.count, "sampled more rows than there are")
            }
        }
        if !format.isBinary { fuzzAggregate(data, scanned: scanned, format: format, timed: selector & 1 == 1) }
    }
    fuzzBinary(data)
    fuzzFastRequest(data)
    return 0
}

/// Columns of many layouts for the RowBinary scanners (WithNamesAndTypes reads its own). Made for every input: a
/// global would live to the end of the run, which LeakSanitizer reports as a leak.
private func binaryColumns() -> ColumnSignature? {
    ColumnSignature(
    names: ["a", "b", "c", "d", "e", "f"],
    typeNames: [
        "Nullable(String)", "Array(LowCardinality(Nullable(String)))", "Map(String, Array(UInt8))",
        "Tuple(x Int8, y FixedString(2))", "Decimal(38, 10)", "Enum8('a' = 1)",
    ])
}

/// The RowBinary scanners with `binaryColumns`, and the Native scanner with its block slicer.
private func fuzzBinary(_ data: UnsafeRawBufferPointer) {
    let binaryColumns = binaryColumns()
    for format in [InputFormat.rowBinary, .rowBinaryWithNames, .rowBinaryWithNamesAndTypes] {
        guard let scanned = try? RowScanner.scan(data, format: format, columns: binaryColumns),
            let ranges = try? RowScanner.rowRanges(data, format: format, columns: binaryColumns)
        else { continue }
        check(ranges.count == scanned.rowCount, "RowBinary ranges and count differ")
        check(ranges.last.map { $0.upperBound == data.count } ?? true, "RowBinary rows do not reach the end")
    }
    guard let blocks = try? RowScanner.nativeBlocks(data) else { return }
    for block in blocks where block.rows > 0 {
        check(block.range.upperBound <= data.count, "a Native block beyond the data")
        let half = block.slice(data, rows: 0..<((block.rows + 1) / 2))
        let rows = half.withUnsafeBytes { (try? RowScanner.nativeBlocks($0))?.first?.rows }
        check(rows == (block.rows + 1) / 2, "a Native slice does not scan as its rows")
    }
}

/// The aggregate rule's reader on rows the scanner took (columns a, b, c: key, value and, when `timed`, time), then
/// the windows and the TabSeparated encoder on what it read.
private func fuzzAggregate(_ data: UnsafeRawBufferPointer, scanned: ScannedRows, format: InputFormat, timed: Bool) {
    let rule = AggregateRule(
        into: AggregateRule.Target(database: nil, table: "out"), window: .seconds(60), timeColumn: timed ? "c" : nil,
        groupBy: ["a"], values: ["b"], exactValues: 4)
    guard let inputs = try? AggregateReader.inputs(
        data, scanned: scanned, format: format, statementColumns: ["a", "b", "c"], rule: rule,
        arrivalUnixSeconds: 1_800_000_000)
    else { return }
    check(inputs.count == scanned.rowCount, "the reader read another number of rows than the scanner")
    for input in inputs {
        check(input.group.count == 1 && input.values.count == 1, "a row read with other columns than the rule's")
        check(input.values[0].map(\.isFinite) ?? true, "a value that is not finite")
        check(input.windowStart >= 0 && input.windowStart % 60 == 0, "a window start off the epoch's grid")
    }
    var aggregator = WindowAggregator(rule: rule)
    _ = aggregator.add(inputs, arrival: Instant(nanoseconds: 0))
    let windows = aggregator.emitAll()
    check(windows.reduce(0) { $0 + $1.inputRows } == inputs.count, "rows lost between the reader and the windows")
    for window in windows {
        let text = AggregateEncoding.targetRows(window, rule: rule)
        check(text.filter { $0 == UInt8(ascii: "\n") }.count == window.rows.count, "an encoded row is not one line")
    }
}

/// The fast path's request parser on the whole input. A request it reads lies within the bytes in order, reads
/// the same from exactly its own bytes, is `.needMore` at sampled shorter prefixes, and what follows it parses
/// too; one byte less never decides otherwise than the whole (a `.general` or a request stays what it was).
private func fuzzFastRequest(_ data: UnsafeRawBufferPointer) {
    let maxBody = 65_536
    guard !data.isEmpty else { return }
    let result = FastRequestParser.parse(data, maxBody: maxBody)
    let allButLast = UnsafeRawBufferPointer(rebasing: data[0..<(data.count - 1)])
    let shorter = FastRequestParser.parse(allButLast, maxBody: maxBody)
    if shorter != .needMore { check(shorter == result, "one more byte changed a decided parse") }
    guard case .request(let request) = result else { return }
    check(!request.target.isEmpty && request.target.lowerBound >= 0, "an empty target")
    check(request.headers.count <= FastRequestParser.maxFields, "more fields than maxFields")
    var last = request.target.upperBound
    for header in request.headers {
        check(!header.name.isEmpty && header.name.lowerBound >= last, "a field name out of order")
        check(header.value.lowerBound > header.name.upperBound, "a field value before its name's colon")
        last = header.value.upperBound
    }
    check(request.body.lowerBound > last && request.body.lowerBound <= FastRequestParser.maxHead, "a head out of bounds")
    check(request.body.upperBound <= data.count && request.length == request.body.upperBound, "a body beyond the data")
    check(request.body.count <= maxBody, "a body over maxBody")
    let own = UnsafeRawBufferPointer(rebasing: data[0..<request.length])
    check(FastRequestParser.parse(own, maxBody: maxBody) == result, "its own bytes read otherwise")
    let length = request.length
    for n in [0, 1, request.target.upperBound, request.body.lowerBound - 1, request.body.lowerBound, length / 2,
        data.count * 7_919 % length, length - 1] where n >= 0 && n < length
    {
        let prefix = UnsafeRawBufferPointer(rebasing: data[0..<n])
        check(FastRequestParser.parse(prefix, maxBody: maxBody) == .needMore, "a prefix of a request is not needMore")
    }
    if let first = request.headers.first {
        let name = String(decoding: UnsafeRawBufferPointer(rebasing: data[first.name]), as: UTF8.self)
        check(FastRequestParser.value(of: name.lowercased(), in: request, bytes: data) != nil, "a field not found")
    }
    _ = FastRequestParser.parse(UnsafeRawBufferPointer(rebasing: data[length...]), maxBody: maxBody)
}

private func check(_ condition: Bool, _ message: StaticString) {
    if !condition { fatalError("invariant broken: \(message)") }
}
