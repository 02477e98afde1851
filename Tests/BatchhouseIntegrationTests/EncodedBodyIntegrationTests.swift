import BatchhouseCore
import BatchhouseEngine
import BatchhouseUpstream
import Foundation
import Testing

@testable import BatchhouseServer

/// Single-row INSERTs in the codings clickhouse-connect and friends send (lz4, zstd, br, xz) and in
/// `decompress=1`'s compressed blocks, through the proxy in front of the real 18.16 (which decodes none of the
/// four codings itself): every row lands once, in few inserts, and a corrupt block gets ClickHouse's Code 40.
@Suite(.serialized, .enabled(if: TestEnvironment.hasClickHouse, "needs CLICKHOUSE_URL (scripts/test sets it)"))
struct EncodedBodyIntegrationTests {
    static let codings: [ContentCoding] = [.lz4, .zstd, .br, .xz]
    static let methods: [CompressedBlockDecoder.Method] = [.lz4, .zstd, .none]

    @Test func encodedSingleRowInsertsLandOnceInFewInserts() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        let tables = Self.codings.map(\.rawValue) + Self.methods.map { "blocks_\($0)" }
        for table in tables {
            try await db.clickHouse.sql(
                "CREATE TABLE \(db.name).\(table) (id UInt64, payload String) ENGINE = MergeTree ORDER BY id")
        }
        let proxy = try await ProxyUnderTest.start(
            """
            defaults:
              strategy: hybrid
              max_rows: 100000
              max_delay: 2s
            """, upstreamSettings: "{ log_queries: 1 }")
        let perTable = 40
        let kinds = tables.count
        let started = ContinuousClock.now
        try await runConcurrently(count: perTable * kinds + 1, concurrency: 8) { index in
            if index == perTable * kinds {
                // Another client's corrupt body, among the others.
                var body = CompressedBlockEncoder.encode(
                    Array("INSERT INTO \(db.name).blocks_lz4 VALUES (999999, 'lost')".utf8), method: .lz4)
                body[5] ^= 0x01
                let result = try await proxy.endpoint.post("/?decompress=1", body: body)
                guard result.status == 500, result.body.hasPrefix("Code: 40. DB::Exception: Checksum doesn't match")
                else { throw TestFailure("corrupt block: \(result.status) \(result.body)") }
                return
            }
            let id = index / kinds
            let kind = index % kinds
            let result: HTTPResult
            if kind < Self.codings.count {
                let coding = Self.codings[kind]
                let row = "{\"id\":\(id),\"payload\":\"\(coding) \(id)\"}\n"
                result = try await proxy.endpoint.post(
                    HTTPEndpoint.query("INSERT INTO \(db.name).\(coding.rawValue) FORMAT JSONEachRow"),
                    body: BodyCompression.compress(Array(row.utf8), as: coding),
                    headers: [("Content-Encoding", coding.rawValue)])
            } else {
                let method = Self.methods[kind - Self.codings.count]
                let statement = "INSERT INTO \(db.name).blocks_\(method) VALUES (\(id), '\(method) \(id)')"
                var body = CompressedBlockEncoder.encode(Array(statement.utf8), method: method)
                var headers: [(String, String)] = []
                if id % 2 == 1 {
                    // Blocks inside a Content-Encoding: the proxy undoes both, as ClickHouse would.
                    body = BodyCompression.compress(body, as: .zstd)
                    headers.append(("Content-Encoding", "zstd"))
                }
                result = try await proxy.endpoint.post("/?decompress=1", body: body, headers: headers)
            }
            guard result.status == 200, result.header("X-Batchhouse-Ack") == "enqueued" else {
                throw TestFailure("insert \(index): \(result.status) \(result.headers) \(result.body)")
            }
        }
        let elapsed = ContinuousClock.now - started
        try await proxy.stop()

        for (offset, table) in tables.enumerated() {
            let label = offset < Self.codings.count ? table : String(table.dropFirst("blocks_".count))
            let expected = (0..<perTable).map { "\($0)\t\(label) \($0)\n" }.joined()
            let landed = try await db.clickHouse.sql(
                "SELECT id, payload FROM \(db.name).\(table) ORDER BY id FORMAT TabSeparated")
            #expect(landed == expected, "table \(table): rows differ from what was sent")
        }
        try await db.clickHouse.sql("SYSTEM FLUSH LOGS")
        let insertsText = try await db.clickHouse.sql(
            """
            SELECT count() FROM system.query_log
            WHERE type = 2 AND query LIKE 'INSERT INTO `\(db.name)`.%' FORMAT TSV
            """)
        let inserts = Int(insertsText.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        print("encoded bodies: \(perTable * kinds) single-row INSERTs in \(elapsed) -> \(inserts) ClickHouse inserts")
        // One insert per table per 2 s of load, plus the shutdown flush.
        let allowed = kinds * (Int(elapsed.seconds / 2) + 2)
        #expect(inserts >= kinds && inserts <= allowed, "ClickHouse received \(inserts) inserts")
    }

    /// The block encoder the tests use writes what ClickHouse itself reads: 18.16 takes its LZ4, ZSTD and NONE
    /// blocks directly; and a statement in blocks that is not an INSERT reaches it through the proxy as it came.
    @Test func clickHouseReadsTheEncodersBlocksAndAnswersWhatIsNotAnInsert() async throws {
        let db = try await TestDatabase.create()
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql("CREATE TABLE \(db.name).direct (id UInt64, payload String) ENGINE = Memory")
        for (index, method) in Self.methods.enumerated() {
            let statement = "INSERT INTO \(db.name).direct VALUES (\(index), '\(method)')"
            let body = CompressedBlockEncoder.encode(Array(statement.utf8), method: method, blockSize: 16)
            let result = try await db.clickHouse.post("/?decompress=1", body: body)
            #expect(result.status == 200, "\(method): \(result.body)")
        }
        let landed = try await db.clickHouse.sql("SELECT id, payload FROM \(db.name).direct ORDER BY id FORMAT TSV")
        #expect(landed == "0\tlz4\n1\tzstd\n2\tnone\n")

        let proxy = try await ProxyUnderTest.start("defaults: { max_delay: 1s }")
        let select = CompressedBlockEncoder.encode(Array("SELECT 40 + 2".utf8), method: .zstd)
        let answer = try await proxy.endpoint.post("/?decompress=1", body: select)
        try await proxy.stop()
        #expect(answer.status == 200)
        #expect(answer.body == "42\n")
    }

    /// `upstream.compression: lz4` and `zstd` against the modern upstream (26.9's engine behind the test front,
    /// which decodes both): the version probe allows them, and the batches land.
    @Test(
        .enabled(if: TestEnvironment.hasModern, "needs MODERN_URL (scripts/test sets it)"),
        arguments: ["lz4", "zstd"])
    func batchesTravelInLZ4OrZstdToAServerThatDecodesThem(compression: String) async throws {
        let url = try #require(TestEnvironment.modernURL)
        let db = try await TestDatabase.create(on: url)
        defer { Task { await db.drop() } }
        try await db.clickHouse.sql(
            "CREATE TABLE \(db.name).c (id UInt64, payload String) ENGINE = MergeTree ORDER BY id")
        let proxy = try await ProxyUnderTest.start(
            "defaults: { max_delay: 1s, max_rows: 100000 }", upstream: url, compression: compression)
        let gateway = proxy.application.engine.gateway
        let deadline = ContinuousClock.now + .seconds(30)
        while gateway.capabilities == nil && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
        let capabilities = try #require(gateway.capabilities, "the version probe answered")
        let expected: ContentCoding = compression == "lz4" ? .lz4 : .zstd
        #expect(UpstreamGateway.coding(for: gateway.upstream.compression, capabilities: capabilities) == expected)
        try await runConcurrently(count: 30, concurrency: 6) { id in
            let result = try await proxy.endpoint.post(
                HTTPEndpoint.query("INSERT INTO \(db.name).c FORMAT JSONEachRow"),
                body: "{\"id\":\(id),\"payload\":\"\(compression) \(id)\"}\n")
            guard result.status == 200 else { throw TestFailure("insert \(id): \(result.status) \(result.body)") }
        }
        try await proxy.stop()
        let landed = try await db.clickHouse.sql("SELECT id, payload FROM \(db.name).c ORDER BY id FORMAT TSV")
        #expect(landed == (0..<30).map { "\($0)\t\(compression) \($0)\n" }.joined())
    }
}
