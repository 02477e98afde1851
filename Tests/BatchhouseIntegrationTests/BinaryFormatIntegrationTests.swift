import BatchhouseCore
import BatchhouseUpstream
import Foundation
import Testing

/// RowBinary and Native INSERTs against the real ClickHouse 18.16: their rows are read with the column types
/// (RowBinary's from `DESCRIBE TABLE`, Native's from each block), batched, counted, and checked by content.
@Suite(.serialized, .enabled(if: TestEnvironment.hasClickHouse, "needs CLICKHOUSE_URL (scripts/test sets it)"))
struct BinaryFormatIntegrationTests {
    /// Columns of every table here, in order.
    static let columns = "id UInt64, payload String, n Nullable(Int32), tags Array(String)"

    struct Row {
        var id: UInt64
        var payload: String
        var n: Int32?
        var tags: [String]

        static func make(_ id: Int) -> Row {
            Row(
                id: UInt64(id), payload: "row \(id): 'q' \"d\" \t\\ ü" + String(repeating: "z", count: id % 5),
                n: id % 3 == 0 ? nil : Int32(id) - 500, tags: (0..<(id % 4)).map { "t\($0)-\(id)" })
        }

        /// How ClickHouse 18.16 prints the row in TabSeparated.
        var tsv: String {
            func escaped(_ s: String) -> String {
                s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\t", with: "\\t")
                    .replacingOccurrences(of: "'", with: "\\'")
            }
            let array = "[" + tags.map { "'" + escaped($0) + "'" }.joined(separator: ",") + "]"
            return "\(id)\t\(escaped(payload))\t\(n.map(String.init) ?? "\\N")\t\(array)\n"
        }
    }

    static func varint(_ value: Int, into out: inout [UInt8]) {
        var v = UInt64(value)
        while v >= 0x80 {
            out.append(UInt8(v & 0x7F) | 0x80)
            v >>= 7
        }
        out.append(UInt8(v))
    }

    static func string(_ s: String, into out: inout [UInt8]) {
        varint(s.utf8.count, into: &out)
        out.append(contentsOf: s.utf8)
    }

    static func integer<T: FixedWidthInteger>(_ value: T, into out: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { out.append(contentsOf: $0) }
    }

    static func rowBinary(_ rows: [Row]) -> [UInt8] {
        var out: [UInt8] = []
        for row in rows {
            integer(row.id, into: &out)
            string(row.payload, into: &out)
            if let n = row.n {
                out.append(0)
                integer(n, into: &out)
            } else {
                out.append(1)
            }
            varint(row.tags.count, into: &out)
            for tag in row.tags { string(tag, into: &out) }
        }
        return out
    }

    /// One Native block of `rows`, columns as the table has them.
    static func native(_ rows: [Row]) -> [UInt8] {
        var out: [UInt8] = []
        varint(4, into: &out)
        varint(rows.count, into: &out)
        string("id", into: &out)
        string("UInt64", into: &out)
        for row in rows { integer(row.id, into: &out) }
        string("payload", into: &out)
        string("String", into: &out)
        for row in rows { string(row.payload, into: &out) }
        string("n", into: &out)
        string("Nullable(Int32)", into: &out)
        for row in rows { out.append(row.n == nil ? 1 : 0) }
        for row in rows { integer(row.n ?? 0, into: &out) }
        string("tags", into: &out)
        string("Array(String)", into: &out)
        var offset: UInt64 = 0
        for row in rows {
            offset += UInt64(row.tags.count)
            integer(offset, into: &out)
        }
        for row in rows { for tag in row.tags { string(tag, into: &out) } }
        return out
    }

    @Test func rowBinaryAndNativeSingleRowInsertsLandOnceInFewInserts() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        for table in ["rb", "rbc", "nat"] {
            try await Self.createCountingParts(db, table)
        }
        // Reads of other suites run as the same user: without `read_your_writes: false` they would flush these
        // batches early. A loaded machine takes up to a minute for the 600 requests: the batches flush at the stop.
        let proxy = try await ProxyUnderTest.start(
            """
            defaults:
              strategy: hybrid
              max_delay: 1h
              read_your_writes: false
            """)
        let perTable = 200
        try await runConcurrently(count: perTable * 3, concurrency: 12) { index in
            let row = Row.make(index / 3)
            let result: HTTPResult
            switch index % 3 {
            case 0:
                result = try await proxy.endpoint.post(
                    HTTPEndpoint.query("INSERT INTO \(db.name).rb FORMAT RowBinary"), body: Self.rowBinary([row]))
            case 1:
                result = try await proxy.endpoint.post(
                    HTTPEndpoint.query("INSERT INTO \(db.name).rbc (id, payload, n, tags) FORMAT RowBinary"),
                    body: Self.rowBinary([row]))
            default:
                result = try await proxy.endpoint.post(
                    HTTPEndpoint.query("INSERT INTO \(db.name).nat FORMAT Native"), body: Self.native([row]))
            }
            guard result.status == 200, result.header("X-Batchhouse-Ack") == "enqueued",
                result.header("X-ClickHouse-Summary")?.contains("\"written_rows\":\"1\"") == true
            else { throw TestFailure("insert \(index): \(result.status) \(result.headers) \(result.body)") }
        }
        try await proxy.stop()
        let expected = (0..<perTable).map { Row.make($0).tsv }.joined()
        for table in ["rb", "rbc", "nat"] {
            let stored = try await db.clickHouse.sql("SELECT * FROM \(db.name).\(table) ORDER BY id FORMAT TabSeparated")
            #expect(stored == expected, "\(table)")
        }
        // 600 requests; one batch per table, sent at the stop (the DESCRIBE questions are not inserts).
        for table in ["rb", "rbc", "nat"] {
            let inserts = try await Self.parts(db, table)
            #expect(inserts == 1, "\(table): upstream inserts: \(inserts)")
        }
    }

    @Test func aTruncatedBodyGetsClickHousesErrorWhileTheNextClientsRowsLand() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        for table in ["rb", "nat"] {
            try await db.clickHouse.sql("CREATE TABLE \(db.name).\(table) (\(Self.columns)) ENGINE = MergeTree ORDER BY id")
        }
        let proxy = try await ProxyUnderTest.start(
            """
            defaults:
              strategy: hybrid
              max_delay: 300ms
            """)
        defer { Task { try? await proxy.stop() } }
        let good = (0..<3).map(Row.make)
        for (table, body) in [("rb", Self.rowBinary(good + [Row.make(10)])), ("nat", Self.native(good + [Row.make(10)]))] {
            let statement = HTTPEndpoint.query("INSERT INTO \(db.name).\(table) FORMAT \(table == "rb" ? "RowBinary" : "Native")")
            for cut in [1, 5, 9, body.count / 2] {
                let truncated = Array(body.dropLast(cut))
                let direct = try await db.clickHouse.post(statement, body: truncated)
                let proxied = try await proxy.endpoint.post(statement, body: truncated)
                #expect(direct.status != 200, "\(table) cut \(cut): ClickHouse took it")
                #expect(proxied.status != 200, "\(table) cut \(cut): the proxy took it: \(proxied.body)")
                #expect(
                    Self.code(proxied.body) == Self.code(direct.body),
                    "\(table) cut \(cut): proxy \(proxied.body) / ClickHouse \(direct.body)")
            }
            // The next client's rows land, and nothing of the refused requests.
            let next = try await proxy.endpoint.post(statement, body: table == "rb" ? Self.rowBinary([Row.make(20)]) : Self.native([Row.make(20)]))
            #expect(next.status == 200, "\(next.body)")
        }
        for table in ["rb", "nat"] {
            #expect(try await db.waitForCount(table, 1) == 1)
            let stored = try await db.clickHouse.sql("SELECT * FROM \(db.name).\(table) FORMAT TabSeparated")
            #expect(stored == Row.make(20).tsv)
        }
    }

    /// What clickhouse-driver-style clients send: RowBinary or Native in ClickHouse's own compressed blocks
    /// (`decompress=1`), here LZ4 and ZSTD, and Native in an lz4 body as clickhouse-connect sends it by default.
    @Test func compressedBinaryBodiesAreBatchedLikeAnyOther() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        for table in ["rb", "nat", "cc"] {
            try await Self.createCountingParts(db, table)
        }
        let proxy = try await ProxyUnderTest.start("defaults: { max_delay: 1h, read_your_writes: false }")
        let perTable = 100
        try await runConcurrently(count: perTable * 3, concurrency: 8) { index in
            let row = Row.make(index / 3)
            let result: HTTPResult
            switch index % 3 {
            case 0:
                let method: CompressedBlockDecoder.Method = index % 2 == 0 ? .lz4 : .zstd
                result = try await proxy.endpoint.post(
                    HTTPEndpoint.query("INSERT INTO \(db.name).rb FORMAT RowBinary") + "&decompress=1",
                    body: CompressedBlockEncoder.encode(Self.rowBinary([row]), method: method))
            case 1:
                result = try await proxy.endpoint.post(
                    HTTPEndpoint.query("INSERT INTO \(db.name).nat FORMAT Native") + "&decompress=1",
                    body: CompressedBlockEncoder.encode(Self.native([row]), method: .lz4))
            default:
                result = try await proxy.endpoint.post(
                    HTTPEndpoint.query("INSERT INTO \(db.name).cc FORMAT Native"),
                    body: BodyCompression.compress(Self.native([row]), as: .lz4), headers: [("Content-Encoding", "lz4")])
            }
            guard result.status == 200, result.header("X-ClickHouse-Summary")?.contains("\"written_rows\":\"1\"") == true
            else { throw TestFailure("insert \(index): \(result.status) \(result.body)") }
        }
        try await proxy.stop()
        let expected = (0..<perTable).map { Row.make($0).tsv }.joined()
        for table in ["rb", "nat", "cc"] {
            let stored = try await db.clickHouse.sql("SELECT * FROM \(db.name).\(table) ORDER BY id FORMAT TabSeparated")
            #expect(stored == expected, "\(table)")
        }
        for table in ["rb", "nat", "cc"] {
            let inserts = try await Self.parts(db, table)
            #expect(inserts == 1, "\(table): upstream inserts: \(inserts)")
        }
    }

    @Test func aTableThatCannotBeDescribedGetsClickHousesOwnAnswer() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        let proxy = try await ProxyUnderTest.start("defaults: { max_delay: 300ms }")
        defer { Task { try? await proxy.stop() } }
        let statement = HTTPEndpoint.query("INSERT INTO \(db.name).missing FORMAT RowBinary")
        let body = Self.rowBinary([Row.make(1)])
        let direct = try await db.clickHouse.post(statement, body: body)
        let proxied = try await proxy.endpoint.post(statement, body: body)
        #expect(proxied.status == direct.status)
        #expect(Self.code(proxied.body) == 60 && Self.code(direct.body) == 60, "\(proxied.body)")
    }

    @Test func rowsWrittenForAChangedTableAreReadWithItsNewColumns() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).t (id UInt64, payload String) ENGINE = MergeTree ORDER BY id")
        let proxy = try await ProxyUnderTest.start("defaults: { max_delay: 200ms }")
        defer { Task { try? await proxy.stop() } }
        let statement = HTTPEndpoint.query("INSERT INTO \(db.name).t FORMAT RowBinary")
        var first: [UInt8] = []
        Self.integer(UInt64(1), into: &first)
        Self.string("one", into: &first)
        #expect(try await proxy.endpoint.post(statement, body: first).status == 200)
        #expect(try await db.waitForCount("t", 1) == 1)
        try await db.clickHouse.sql("ALTER TABLE \(db.name).t ADD COLUMN extra UInt8")
        // A table is described again for rows that do not read with its columns at most once a second.
        try await Task.sleep(for: .milliseconds(1_100))
        var second = first
        second[0] = 2
        second.append(7)
        let answer = try await proxy.endpoint.post(statement, body: second)
        #expect(answer.status == 200, "\(answer.body)")
        #expect(try await db.waitForCount("t", 2) == 2)
        let stored = try await db.clickHouse.sql("SELECT id, payload, extra FROM \(db.name).t ORDER BY id FORMAT TabSeparated")
        #expect(stored == "1\tone\t0\n2\tone\t7\n")
    }

    /// A table whose active parts count the inserts it received (merges stopped).
    static func createCountingParts(_ db: TestDatabase, _ table: String) async throws {
        try await db.clickHouse.sql("CREATE TABLE \(db.name).\(table) (\(columns)) ENGINE = MergeTree ORDER BY id")
        try await db.clickHouse.sql("SYSTEM STOP MERGES \(db.name).\(table)")
    }

    static func parts(_ db: TestDatabase, _ table: String) async throws -> Int {
        let text = try await db.clickHouse.sql(
            "SELECT count() FROM system.parts WHERE database = '\(db.name)' AND table = '\(table)' AND active")
        return Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    }

    /// `Code: N` of a ClickHouse error text.
    static func code(_ body: String) -> Int? {
        guard let range = body.range(of: "Code: ") else { return nil }
        return Int(body[range.upperBound...].prefix { $0.isNumber })
    }
}
