// Micro-benchmarks of Batchhouse's pure core: the INSERT parser, the row scanners and batch appends.
//
// Build and run in release mode (debug numbers mean nothing):
//
//     swift build -c release --product batchhouse-microbench
//     $(swift build -c release --show-bin-path)/batchhouse-microbench [--quick] [--runs N] [--mb N] [--filter S] [--strict]
//
// Every case runs N times (default 5, --quick 3) and the best run is reported: the best is the run least
// disturbed by the rest of the machine. MB/s and GB/s are decimal (10^6, 10^9 bytes per second). The goals
// from the performance issue are checked at the end; --strict makes a missed goal exit with status 1.
// --filter S runs only the cases whose name contains S (e.g. `--filter append` under `perf record`).
//
// Output is a table on stdout plus one `MICROBENCH name=value ...` line per case for scripts.

import BatchhouseCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

// MARK: Options

struct Options {
    var runs = 5
    var megabytes = 50
    var strict = false
    var quick = false
    var filter: String?
}

func parseOptions() -> Options {
    var options = Options()
    var arguments = CommandLine.arguments.dropFirst().makeIterator()
    func number(_ name: String) -> Int {
        guard let text = arguments.next(), let value = Int(text), value > 0 else {
            printError("batchhouse-microbench: \(name) needs a positive number\n")
            exit(2)
        }
        return value
    }
    var runsSet = false
    var sizeSet = false
    while let argument = arguments.next() {
        switch argument {
        case "--quick": options.quick = true
        case "--strict": options.strict = true
        case "--runs":
            options.runs = number(argument)
            runsSet = true
        case "--mb":
            options.megabytes = number(argument)
            sizeSet = true
        case "--filter":
            guard let text = arguments.next() else {
                printError("batchhouse-microbench: --filter needs a substring of case names\n")
                exit(2)
            }
            options.filter = text
        case "-h", "--help":
            print("usage: batchhouse-microbench [--quick] [--runs N] [--mb MEGABYTES] [--filter SUBSTRING] [--strict]")
            exit(0)
        default:
            printError("batchhouse-microbench: unknown argument \(argument)\n")
            exit(2)
        }
    }
    if options.quick {
        if !runsSet { options.runs = 3 }
        if !sizeSet { options.megabytes = 20 }
    }
    return options
}

/// Writes to standard error (unbuffered, no shared C `stderr` global involved).
func printError(_ text: String) {
    var text = text
    text.withUTF8 { bytes in
        var offset = 0
        while offset < bytes.count {
            let written = write(2, bytes.baseAddress! + offset, bytes.count - offset)
            if written <= 0 { return }
            offset += written
        }
    }
}

// MARK: Timing

@inline(never)
func nowNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Keeps results alive so the optimiser cannot drop the work that produced them.
nonisolated(unsafe) var blackHole = 0

@inline(never)
func consume(_ value: Int) {
    blackHole &+= value
}

/// Runs `body` `runs` times after one warm-up run; returns the best time in nanoseconds.
func best(runs: Int, _ body: () -> Void) -> UInt64 {
    body()
    var bestTime = UInt64.max
    for _ in 0..<runs {
        let start = nowNanoseconds()
        body()
        let elapsed = nowNanoseconds() - start
        bestTime = min(bestTime, elapsed)
    }
    return max(bestTime, 1)
}

// MARK: Synthetic data

/// A deterministic pseudo-random generator (xorshift64*), so every run scans the same bytes.
struct Generator {
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

let users = ["alice", "bob", "carol", "dave", "eve", "mallory", "trent", "peggy", "victor", "walter"]
let actions = ["click", "view", "scroll", "purchase", "logout", "add_to_cart", "search", "share"]
let urls = [
    "https://example.com/", "https://example.com/products/42?ref=home", "https://shop.example.org/cart",
    "https://example.com/search?q=clickhouse+batching&page=2", "https://blog.example.net/2024/01/02/post",
]

/// One row of a web-events table in each format: id, timestamp, user, action, url, duration, tags, and a string
/// with characters that need escaping (a quote, a tab or a comma) in a fraction of the rows.
struct Row {
    var id: Int
    var ts: String
    var user: String
    var action: String
    var url: String
    var duration: Double
    var tags: [Int]
    var tricky: Bool
}

func makeRow(_ g: inout Generator, id: Int) -> Row {
    let second = g.below(86_400)
    let ts = "2024-05-\(10 + g.below(18)) \(pad(second / 3600)):\(pad(second / 60 % 60)):\(pad(second % 60))"
    return Row(
        id: id, ts: ts, user: users[g.below(users.count)] + "-\(g.below(10_000))", action: actions[g.below(actions.count)],
        url: urls[g.below(urls.count)], duration: Double(g.below(100_000)) / 100,
        tags: (0..<g.below(4)).map { _ in g.below(1000) }, tricky: g.below(8) == 0)
}

func pad(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }

func valuesRow(_ r: Row) -> String {
    let note = r.tricky ? "it\\'s a (quoted) [note], with ''commas''" : "plain note"
    return "(\(r.id), '\(r.ts)', '\(r.user)', '\(r.action)', '\(r.url)', \(r.duration), [\(r.tags.map(String.init).joined(separator: ","))], '\(note)')"
}

func tsvRow(_ r: Row) -> String {
    let note = r.tricky ? "tab\\there\\nnewline \\\\ back" : "plain note"
    return "\(r.id)\t\(r.ts)\t\(r.user)\t\(r.action)\t\(r.url)\t\(r.duration)\t[\(r.tags.map(String.init).joined(separator: ","))]\t\(note)\n"
}

func csvRow(_ r: Row) -> String {
    let note = r.tricky ? "\"a \"\"quoted\"\", comma\nand newline\"" : "plain note"
    return "\(r.id),\(r.ts),\(r.user),\(r.action),\"\(r.url)\",\(r.duration),\"[\(r.tags.map(String.init).joined(separator: ","))]\",\(note)\n"
}

func jsonRow(_ r: Row) -> String {
    let note = r.tricky ? "a \\\"quoted\\\" {brace} [bracket] \\\\ back" : "plain note"
    return "{\"id\":\(r.id),\"ts\":\"\(r.ts)\",\"user\":\"\(r.user)\",\"action\":\"\(r.action)\",\"url\":\"\(r.url)\",\"duration\":\(r.duration),\"tags\":[\(r.tags.map(String.init).joined(separator: ","))],\"note\":\"\(note)\"}\n"
}

/// About `bytes` of data: the rows as a contiguous buffer, the row count, and the first row alone.
func makeData(bytes: Int, separator: String = "", _ render: (Row) -> String) -> (data: [UInt8], rows: Int, first: [UInt8]) {
    var g = Generator()
    var data: [UInt8] = []
    data.reserveCapacity(bytes + 1024)
    var rows = 0
    var first: [UInt8] = []
    while data.count < bytes {
        let text = render(makeRow(&g, id: rows + 1))
        if rows == 0 {
            first = Array(text.utf8)
        } else {
            data.append(contentsOf: separator.utf8)
        }
        data.append(contentsOf: text.utf8)
        rows += 1
    }
    return (data, rows, first)
}

// MARK: Results

struct Result {
    var name: String
    var bytes: Int
    var items: Int
    var nanoseconds: UInt64
    var unit: String  // what one item is: row, statement, request

    var megabytesPerSecond: Double { bytes == 0 ? 0 : Double(bytes) / Double(nanoseconds) * 1e3 }
    var nanosecondsPerItem: Double { Double(nanoseconds) / Double(max(items, 1)) }
    var itemsPerSecond: Double { Double(items) / Double(nanoseconds) * 1e9 }
}

nonisolated(unsafe) var results: [Result] = []

func record(_ result: Result) {
    results.append(result)
    // Machine-readable, one line per case.
    print(
        "MICROBENCH name=\(result.name) bytes=\(result.bytes) items=\(result.items) unit=\(result.unit) "
            + "best_ns=\(result.nanoseconds) mb_per_s=\(format(result.megabytesPerSecond, 1)) "
            + "ns_per_item=\(format(result.nanosecondsPerItem, 1))")
}

func format(_ value: Double, _ decimals: Int) -> String {
    if !value.isFinite { return "-" }
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let rounded = (value * scale).rounded() / scale
    var text = "\(rounded)"
    if text.contains("e") { return "\(Int(rounded))" }
    if decimals == 0, text.hasSuffix(".0") { text.removeLast(2) }
    if let dot = text.firstIndex(of: ".") {
        let fraction = text.distance(from: dot, to: text.endIndex) - 1
        if fraction < decimals { text += String(repeating: "0", count: decimals - fraction) }
    }
    return text
}

func leftPad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text : String(repeating: " ", count: width - text.count) + text
}

func rightPad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
}

// MARK: Cases

let options = parseOptions()
let targetBytes = options.megabytes * 1_000_000
print("batchhouse-microbench: best of \(options.runs) runs, ~\(options.megabytes) MB per scanner case")

/// RowScanner.scan over one big buffer; also checks the row count so a broken scanner cannot look fast.
func selected(_ name: String) -> Bool {
    guard let filter = options.filter else { return true }
    return name.contains(filter)
}

func benchScan(_ name: String, format: InputFormat, separator: String = "", _ render: (Row) -> String) {
    guard selected(name) else { return }
    let (data, rows, _) = makeData(bytes: targetBytes, separator: separator, render)
    var expected = -1
    data.withUnsafeBytes { buffer in
        do throws(RowScanError) {
            expected = try RowScanner.scan(buffer, format: format).rowCount
        } catch {
            printError("batchhouse-microbench: \(name): scan failed: \(error.message)\n")
            exit(1)
        }
    }
    if expected != rows {
        printError("batchhouse-microbench: \(name): scanner counted \(expected) rows, generated \(rows)\n")
        exit(1)
    }
    let time = data.withUnsafeBytes { buffer in
        best(runs: options.runs) {
            consume((try? RowScanner.scan(buffer, format: format).rowCount) ?? -1)
        }
    }
    record(Result(name: name, bytes: data.count, items: rows, nanoseconds: time, unit: "row"))
}

benchScan("scan.values", format: .values, separator: ",", valuesRow)
benchScan("scan.tsv", format: .tabSeparated, tsvRow)
benchScan("scan.csv", format: .csv, csvRow)
benchScan("scan.jsoneachrow", format: .jsonEachRow, jsonRow)

/// RowScanner.scan of one small single-row chunk, called many times: the per-request fixed cost.
func benchSmallScan(_ name: String, format: InputFormat, _ render: (Row) -> String) {
    guard selected(name) else { return }
    var g = Generator()
    let chunk = Array(render(makeRow(&g, id: 1)).utf8)
    let iterations = options.quick ? 100_000 : 500_000
    let time = chunk.withUnsafeBytes { buffer in
        best(runs: options.runs) {
            var total = 0
            for _ in 0..<iterations {
                total &+= (try? RowScanner.scan(buffer, format: format).rowCount) ?? -1
            }
            consume(total)
        }
    }
    record(Result(name: name, bytes: chunk.count * iterations, items: iterations, nanoseconds: time, unit: "row"))
}

benchSmallScan("scan1.values", format: .values, valuesRow)
benchSmallScan("scan1.jsoneachrow", format: .jsonEachRow, jsonRow)

// InsertParser.parse on typical statement heads (with a little data after the head, as the server sees them).
let statements: [(String, String)] = [
    ("parse.values", "INSERT INTO events (id, ts, user, action) VALUES (1, '2024-05-10 12:00:00', 'alice', 'click')"),
    ("parse.db_values", "insert into analytics.events values (1, 'a', 'b')"),
    ("parse.jsoneachrow", "INSERT INTO default.events FORMAT JSONEachRow\n{\"id\":1,\"user\":\"alice\",\"action\":\"click\"}"),
    ("parse.quoted_cols", "INSERT INTO `my db`.\"events\" (`id`, \"user name\", action) FORMAT TSV\n1\talice\tclick\n"),
    (
        "parse.comments_settings",
        "/* client v1.2 */ INSERT INTO events -- trailing comment\n (id, user) SETTINGS input_format_skip_unknown_fields = 1, max_insert_block_size=100000 FORMAT CSV\n1,alice\n"
    ),
]

for (name, text) in statements where selected(name) {
    let bytes = Array(text.utf8)
    guard case .insert = InsertParser.parse(bytes, isComplete: true) else {
        printError("batchhouse-microbench: \(name): the parser does not take \(text.debugDescription)\n")
        exit(1)
    }
    let iterations = options.quick ? 100_000 : 300_000
    let time = bytes.withUnsafeBytes { buffer in
        best(runs: options.runs) {
            var total = 0
            for _ in 0..<iterations {
                if case .insert(let statement) = InsertParser.parse(buffer, isComplete: true) {
                    total &+= statement.dataOffset
                }
            }
            consume(total)
        }
    }
    record(Result(name: name, bytes: bytes.count * iterations, items: iterations, nanoseconds: time, unit: "statement"))
}

/// BatchStore.append of single-row chunks into `tables` keys, default rule (hybrid, 100000 rows, 16 MiB, 1 s),
/// the clock advancing 20 µs per row so time-based seals happen as in a 50k rows/s stream.
func benchAppend(_ name: String, tables: Int) {
    guard selected(name) else { return }
    var g = Generator()
    let rows = options.quick ? 200_000 : 500_000
    let chunks: [[UInt8]] = (0..<1000).map { Array(valuesRow(makeRow(&g, id: $0)).utf8) }
    let keys = (0..<tables).map {
        BatchKey(
            identity: .anonymous, database: "bench", table: "t\($0)", columns: ["id", "ts", "user", "action"], format: .values,
            header: nil, settings: [])
    }
    let rule = TableRule()
    var totalBytes = 0
    for i in 0..<rows { totalBytes += chunks[i % chunks.count].count }
    let time = best(runs: options.runs) {
        var store = BatchStore()
        var sealed = 0
        var now = Instant(nanoseconds: 1_000_000_000)
        for i in 0..<rows {
            now.nanoseconds += 20_000
            let chunk = chunks[i % chunks.count]
            let out = chunk.withUnsafeBytes {
                store.append(key: keys[i % tables], rule: rule, chunk: $0, rows: 1, endsWithNewline: false, now: now)
            }
            sealed &+= out.count
            if i & 1023 == 0 { sealed &+= store.sealDue(now: now).count }
        }
        sealed &+= store.sealAll(trigger: .shutdown, now: now).count
        consume(sealed)
    }
    record(Result(name: name, bytes: totalBytes, items: rows, nanoseconds: time, unit: "row"))
}

benchAppend("append.1table", tables: 1)
benchAppend("append.1000tables", tables: 1000)

/// The core work of one single-row request: parse the head, scan the data, append to the batch.
func benchPipeline() {
    guard selected("pipeline.values_request") else { return }
    var g = Generator()
    let requests: [[UInt8]] = (0..<1000).map {
        Array("INSERT INTO bench.events (id, ts, user, action, url, duration, tags, note) VALUES \(valuesRow(makeRow(&g, id: $0)))".utf8)
    }
    let iterations = options.quick ? 200_000 : 500_000
    var totalBytes = 0
    for i in 0..<iterations { totalBytes += requests[i % requests.count].count }
    let time = best(runs: options.runs) {
        var store = BatchStore()
        var total = 0
        var now = Instant(nanoseconds: 1_000_000_000)
        for i in 0..<iterations {
            now.nanoseconds += 20_000
            requests[i % requests.count].withUnsafeBytes { buffer in
                guard case .insert(let statement) = InsertParser.parse(buffer, isComplete: true) else { return }
                let data = UnsafeRawBufferPointer(rebasing: buffer[statement.dataOffset...])
                guard let scanned = try? RowScanner.scan(data, format: statement.format) else { return }
                let key = BatchKey(
                    identity: .anonymous, database: statement.database, table: statement.table,
                    columns: statement.columns, format: statement.format, header: nil, settings: statement.settings)
                let rows = UnsafeRawBufferPointer(rebasing: data[scanned.rows])
                total &+= store.append(
                    key: key, rule: TableRule(), chunk: rows, rows: scanned.rowCount,
                    endsWithNewline: scanned.endsWithNewline, now: now
                ).count
            }
            if i & 1023 == 0 { total &+= store.sealDue(now: now).count }
        }
        total &+= store.sealAll(trigger: .shutdown, now: now).count
        consume(total)
    }
    record(Result(name: "pipeline.values_request", bytes: totalBytes, items: iterations, nanoseconds: time, unit: "request"))
}

benchPipeline()

// MARK: Report

print("")
print(
    rightPad("case", 26) + leftPad("MB/s", 10) + leftPad("ns/item", 10) + leftPad("items/s", 14) + "  item"
        + "  (data size)")
print(String(repeating: "-", count: 86))
for result in results {
    print(
        rightPad(result.name, 26) + leftPad(format(result.megabytesPerSecond, 0), 10)
            + leftPad(format(result.nanosecondsPerItem, 1), 10) + leftPad(format(result.itemsPerSecond, 0), 14) + "  "
            + rightPad(result.unit, 9) + " (\(format(Double(result.bytes) / 1e6, 1)) MB, \(result.items) items)")
}

struct Goal {
    var text: String
    var measured: Double
    var minimum: Double
    var passed: Bool { measured >= minimum }
}

func mbps(_ name: String) -> Double { results.first { $0.name == name }?.megabytesPerSecond ?? 0 }

let goals = [
    ("scan.values", Goal(text: "Values scanner >= 300 MB/s", measured: mbps("scan.values"), minimum: 300)),
    ("scan.tsv", Goal(text: "TSV scanner >= 1 GB/s", measured: mbps("scan.tsv"), minimum: 1000)),
    ("scan.jsoneachrow", Goal(text: "JSONEachRow scanner >= 1 GB/s", measured: mbps("scan.jsoneachrow"), minimum: 1000)),
].filter { name, _ in results.contains { $0.name == name } }.map(\.1)
print("")
print("goals (one core):")
var failed = 0
for goal in goals {
    if !goal.passed { failed += 1 }
    print("  \(goal.passed ? "PASS" : "FAIL")  \(rightPad(goal.text, 32)) measured \(format(goal.measured, 0)) MB/s")
    print("MICROBENCH_GOAL \(goal.passed ? "PASS" : "FAIL") \(goal.text.replacingSpaces()) measured_mb_per_s=\(format(goal.measured, 0))")
}
print("(checksum \(blackHole))")
if options.strict && failed > 0 { exit(1) }

extension String {
    func replacingSpaces() -> String { String(map { $0 == " " ? "_" : $0 }) }
}
