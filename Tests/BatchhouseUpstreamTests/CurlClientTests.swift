@testable import BatchhouseUpstream
import Foundation
import NIOCore
import Testing

/// End-to-end tests against a real ClickHouse (see ``ClickHouse``).
@Suite(
    "CurlClient against ClickHouse",
    .clickHouseServer,
    .enabled(if: ClickHouse.isAvailable, "needs clickhouse-server (scripts/install-deps) or CLICKHOUSE_URL"),
    .timeLimit(.minutes(2))
)
struct CurlClientTests {
    let base: String
    let client = CurlClient()

    init() throws {
        base = try #require(ClickHouse.url, "the suite trait provides the server")
    }

    @Test("execute: SELECT version()")
    func version() async throws {
        let response = try await client.execute(
            UpstreamRequest(url: ClickHouse.queryURL(base, "SELECT version()"))
        )
        #expect(response.status == 200)
        let version = String(buffer: response.body).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(version.split(separator: ".").count >= 3, "got \(version)")
        #expect(response.header("content-type")?.contains("text/tab-separated-values") == true)
    }

    @Test("execute: GET /ping")
    func ping() async throws {
        let response = try await client.execute(UpstreamRequest(url: "\(base)/ping"))
        #expect(response.status == 200)
        #expect(String(buffer: response.body) == "Ok.\n")
    }

    @Test("HEAD: a head and no body, from execute and from stream")
    func head() async throws {
        let response = try await client.execute(UpstreamRequest(method: "HEAD", url: "\(base)/ping"))
        #expect(response.status == 200)
        #expect(response.body.readableBytes == 0)
        #expect(response.header("Content-Length") == "4")

        let recorder = StreamRecorder()
        _ = client.stream(UpstreamRequest(method: "HEAD", url: "\(base)/ping"), requestBodyLength: nil, delegate: recorder)
        #expect(await recorder.finished() == nil)
        let state = recorder.snapshot
        #expect(state.status == 200)
        #expect(state.headCount == 1)
        #expect(state.bodyBytes == 0)
    }

    @Test("execute: a compressed response passes through undecoded", arguments: [ContentCoding.gzip, .deflate])
    func compressedResponse(coding: ContentCoding) async throws {
        let response = try await client.execute(
            UpstreamRequest(
                url: ClickHouse.queryURL(base, "SELECT number FROM numbers(1000)", extra: "&enable_http_compression=1"),
                headers: [("Accept-Encoding", coding.headerValue)]
            )
        )
        #expect(response.status == 200)
        #expect(response.header("Content-Encoding") == coding.headerValue)
        let decoded = try Zlib.decompress(response.body, as: coding, limit: 1 << 20)
        #expect(String(buffer: decoded) == (0..<1000).map { "\($0)\n" }.joined())
    }

    @Test("execute: a compressed INSERT body lands its rows", arguments: [ContentCoding.gzip, .deflate])
    func compressedInsert(coding: ContentCoding) async throws {
        let table = ClickHouse.uniqueTable("compressed")
        try await ClickHouse.run(client, base, "CREATE TABLE \(table) (id UInt64, name String) ENGINE = Memory")
        defer { Task { [client, base] in try? await ClickHouse.run(client, base, "DROP TABLE \(table)") } }

        var tsv = ""
        for id in 1...10_000 { tsv += "\(id)\tname \(id)\n" }
        let compressed = Zlib.compress(ByteBuffer(string: tsv), as: coding)
        #expect(compressed.readableBytes < tsv.utf8.count / 2)

        let response = try await client.execute(
            UpstreamRequest(
                method: "POST",
                url: ClickHouse.queryURL(base, "INSERT INTO \(table) FORMAT TabSeparated"),
                headers: [("Content-Encoding", coding.headerValue)],
                body: compressed
            )
        )
        #expect(response.status == 200, "\(String(buffer: response.body))")
        let result = try await ClickHouse.run(client, base, "SELECT count(), sum(id), max(name) FROM \(table)")
        #expect(result == "10000\t50005000\tname 9999\n")
    }

    @Test("execute: an error status comes back as a response with ClickHouse's text")
    func errorResponse() async throws {
        let response = try await client.execute(
            UpstreamRequest(url: ClickHouse.queryURL(base, "SELEC 1"))
        )
        #expect([400, 500].contains(response.status))
        #expect(String(buffer: response.body).contains("Code: 62"))

        let missing = try await client.execute(
            UpstreamRequest(url: ClickHouse.queryURL(base, "SELECT * FROM default.bh_no_such_table"))
        )
        #expect(missing.status >= 400)
        #expect(String(buffer: missing.body).contains("Code: 60"))
    }

    @Test("execute: basic auth for the second test user, and a wrong password")
    func basicAuth() async throws {
        let good = try await client.execute(
            UpstreamRequest(
                url: ClickHouse.queryURL(base, "SELECT 42"),
                basicAuth: (user: "batchhouse_test", password: "secret")
            )
        )
        #expect(good.status == 200)
        #expect(String(buffer: good.body) == "42\n")

        let bad = try await client.execute(
            UpstreamRequest(
                url: ClickHouse.queryURL(base, "SELECT 42"),
                basicAuth: (user: "batchhouse_test", password: "wrong-password")
            )
        )
        #expect(bad.status >= 400)
        #expect(String(buffer: bad.body).contains("Wrong password"))
    }

    @Test("execute: a closed port fails quickly with kind .connect")
    func connectError() async throws {
        // Bind a port, then close it: nothing listens there afterwards.
        let port = try OneConnectionServer.unusedPort()
        let start = ContinuousClock.now
        await #expect(throws: UpstreamError.self) {
            _ = try await client.execute(UpstreamRequest(url: "http://127.0.0.1:\(port)/ping"))
        }
        do {
            _ = try await client.execute(UpstreamRequest(url: "http://127.0.0.1:\(port)/ping"))
        } catch {
            #expect(error.kind == .connect)
            #expect(!error.message.isEmpty)
        }
        // A refused connect takes microseconds; the bound only tells it from a connect timeout (seconds), with room
        // for a loaded 2-core machine running the whole suite (2.5 s seen there).
        #expect(ContinuousClock.now - start < .seconds(8))
    }

    @Test("execute: SELECT sleep(3) with a 1 s timeout fails with kind .timeout")
    func timeout() async throws {
        let start = ContinuousClock.now
        do {
            _ = try await client.execute(
                UpstreamRequest(url: ClickHouse.queryURL(base, "SELECT sleep(3)"), timeout: .seconds(1))
            )
            Issue.record("expected a timeout")
        } catch {
            #expect(error.kind == .timeout, "\(error)")
        }
        // Without the timeout the query would answer 200 after 3 s; the upper bound is loose for slow
        // (sanitizer) runs.
        let elapsed = ContinuousClock.now - start
        #expect(elapsed >= .milliseconds(900) && elapsed < .seconds(5), "took \(elapsed)")
    }

    @Test("execute: cancelling the task cancels the transfer")
    func cancellation() async throws {
        let client = self.client
        let silent = try Self.silentServer()
        defer { close(silent.fd) }
        let url = silent.url
        let task = Task { try await client.execute(UpstreamRequest(url: url, timeout: Self.unlessCancelled)) }
        try await Task.sleep(for: .milliseconds(300))
        let start = ContinuousClock.now
        task.cancel()
        switch await task.result {
        case .success(let response): Issue.record("expected cancellation, got \(response.status)")
        case .failure(let error): #expect((error as? UpstreamError)?.kind == .cancelled)
        }
        #expect(ContinuousClock.now - start < .seconds(1))

        // An execute in an already-cancelled task does not start.
        let cancelled = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await client.execute(UpstreamRequest(url: url))
        }
        if case .failure(let error) = await cancelled.result {
            #expect((error as? UpstreamError)?.kind == .cancelled)
        } else {
            Issue.record("expected cancellation")
        }
    }

    @Test("execute: 50 concurrent requests")
    func concurrent() async throws {
        let client = self.client
        let base = self.base
        try await withThrowingTaskGroup(of: (Int, String).self) { group in
            for index in 0..<50 {
                group.addTask {
                    let response = try await client.execute(
                        UpstreamRequest(url: ClickHouse.queryURL(base, "SELECT \(index) * 1000 + number FROM numbers(3)"))
                    )
                    #expect(response.status == 200)
                    return (index, String(buffer: response.body))
                }
            }
            var seen = Set<Int>()
            for try await (index, body) in group {
                #expect(body == "\(index * 1000)\n\(index * 1000 + 1)\n\(index * 1000 + 2)\n")
                seen.insert(index)
            }
            #expect(seen.count == 50)
        }
    }

    @Test("stream: a ~50 MB SELECT with a delegate that pauses, byte-identical to execute")
    func streamLargeSelect() async throws {
        let url = ClickHouse.queryURL(base, "SELECT number FROM system.numbers LIMIT 6000000")
        let buffered = try await client.execute(UpstreamRequest(url: url, timeout: nil))
        #expect(buffered.status == 200)
        #expect(buffered.body.readableBytes > 45_000_000)

        let recorder = StreamRecorder(pauseEvery: 7, resumeAfter: .milliseconds(1))
        _ = client.stream(UpstreamRequest(url: url, timeout: nil), requestBodyLength: nil, delegate: recorder)
        let error = await recorder.finished()
        #expect(error == nil)
        let state = recorder.snapshot
        #expect(state.status == 200)
        #expect(state.headCount == 1)
        #expect(!state.bodyBeforeHead)
        #expect(state.pauses > 10)
        #expect(state.bodyBytes == buffered.body.readableBytes)
        #expect(state.body == buffered.body)
        #expect(state.finishCount == 1)
    }

    @Test("stream: a request body written in pieces, chunked and with a length", arguments: [false, true])
    func streamInsert(withLength: Bool) async throws {
        let table = ClickHouse.uniqueTable(withLength ? "length" : "chunked")
        try await ClickHouse.run(client, base, "CREATE TABLE \(table) (id UInt64, name String) ENGINE = Memory")
        defer { Task { [client, base] in try? await ClickHouse.run(client, base, "DROP TABLE \(table)") } }

        // About 4 MB in pieces of 100 rows.
        let rows = 200_000
        var pieces: [ByteBuffer] = []
        var piece = ByteBuffer()
        for id in 1...rows {
            piece.writeString("\(id)\tsome name for row \(id)\n")
            if id % 100 == 0 {
                pieces.append(piece)
                piece = ByteBuffer()
            }
        }
        let total = pieces.reduce(0) { $0 + $1.readableBytes }

        let recorder = StreamRecorder()
        let stream = client.stream(
            UpstreamRequest(
                method: "POST",
                url: ClickHouse.queryURL(base, "INSERT INTO \(table) FORMAT TabSeparated"),
                timeout: .seconds(60)
            ),
            requestBodyLength: withLength ? total : nil,
            delegate: recorder
        )
        // Like a proxy: stop above a high watermark, go on when the stream asks for more. Every so
        // often wait a little, so that libcurl drains the queue and pauses its read side.
        let highWatermark = 256 * 1024
        var wantsMore = recorder.wantsMoreEvents.makeAsyncIterator()
        var waitedForMore = 0
        for (index, piece) in pieces.enumerated() {
            stream.writeRequestBody(piece)
            while stream.pendingRequestBodyBytes > highWatermark {
                waitedForMore += 1
                _ = await wantsMore.next()
            }
            if index % 300 == 0 { try await Task.sleep(for: .milliseconds(5)) }
        }
        stream.finishRequestBody()
        let error = await recorder.finished()
        #expect(error == nil, "\(String(describing: error))")
        let state = recorder.snapshot
        #expect(state.status == 200, "\(String(buffer: state.body))")
        #expect(state.headCount == 1)
        #expect(state.wantsMore > 0)
        #expect(stream.pendingRequestBodyBytes == 0)

        let result = try await ClickHouse.run(client, base, "SELECT count(), sum(id) FROM \(table)")
        #expect(result == "\(rows)\t\(rows * (rows + 1) / 2)\n")
    }

    @Test("stream: an error response to a streamed INSERT is delivered with its body")
    func streamInsertError() async throws {
        let recorder = StreamRecorder()
        let stream = client.stream(
            UpstreamRequest(method: "POST", url: ClickHouse.queryURL(base, "INSERT INTO default.bh_missing_table FORMAT TSV")),
            requestBodyLength: nil,
            delegate: recorder
        )
        stream.writeRequestBody(ByteBuffer(string: "1\n"))
        stream.finishRequestBody()
        #expect(await recorder.finished() == nil)
        let state = recorder.snapshot
        #expect((state.status ?? 0) >= 400)
        #expect(String(buffer: state.body).contains("Code: 60"))
    }

    /// A server that never answers: a listening socket nobody accepts from (the kernel completes the handshake
    /// and takes the request). A transfer to it ends only by a cancel, however late a loaded machine wakes the test
    /// to cancel it; `SELECT sleep(3)` had finished by then once (a 200 ms sleep took 16 s on the whole suite).
    /// Close `fd` when done.
    static func silentServer() throws -> (fd: Int32, url: String) {
        let (fd, port) = try OneConnectionServer.loopbackSocket(listening: true)
        return (fd, "http://127.0.0.1:\(port)/?query=SELECT%201")
    }

    /// The timeout of a transfer to the silent server: a cancel that does not work fails the test with `.timeout`
    /// instead of hanging it.
    static let unlessCancelled: Duration = .seconds(60)

    @Test("stream: cancel() ends a running transfer with .cancelled")
    func streamCancel() async throws {
        let recorder = StreamRecorder()
        let silent = try Self.silentServer()
        defer { close(silent.fd) }
        let stream = client.stream(
            UpstreamRequest(url: silent.url, timeout: Self.unlessCancelled),
            requestBodyLength: nil,
            delegate: recorder
        )
        try await Task.sleep(for: .milliseconds(200))
        stream.cancel()
        stream.cancel()
        let error = await recorder.finished()
        #expect(error?.kind == .cancelled)
        #expect(recorder.snapshot.finishCount == 1)
    }

    @Test("a delegate that holds its stream keeps neither alive after the end")
    func noRetainCycle() async throws {
        weak var weakStream: UpstreamStream?
        weak var weakDelegate: HoldingDelegate?
        do {
            let delegate = HoldingDelegate()
            let stream = client.stream(UpstreamRequest(url: "\(base)/ping"), requestBodyLength: nil, delegate: delegate)
            delegate.hold(stream)
            weakStream = stream
            weakDelegate = delegate
            #expect(await delegate.recorder.finished() == nil)
        }
        // The curl thread lets go right after the delegate's last call returns.
        for _ in 0..<200 where weakStream != nil || weakDelegate != nil {
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(weakStream == nil)
        #expect(weakDelegate == nil)
    }

    @Test("shutdown cancels running transfers, and later ones fail at once")
    func shutdown() async throws {
        let client = CurlClient()
        let recorder = StreamRecorder()
        let silent = try Self.silentServer()
        defer { close(silent.fd) }
        _ = client.stream(
            UpstreamRequest(url: silent.url, timeout: Self.unlessCancelled),
            requestBodyLength: nil,
            delegate: recorder
        )
        try await Task.sleep(for: .milliseconds(200))
        let start = ContinuousClock.now
        client.shutdown()
        client.shutdown()
        #expect(ContinuousClock.now - start < .seconds(1))
        #expect(await recorder.finished()?.kind == .cancelled)
        do {
            _ = try await client.execute(UpstreamRequest(url: "\(base)/ping"))
            Issue.record("expected .cancelled after shutdown")
        } catch {
            #expect(error.kind == .cancelled)
        }
    }

    @Test("connections are reused across sequential requests")
    func connectionReuse() async throws {
        // The query log records each query's client port: one port means one connection.
        let marker = "reuse_\(UInt32.random(in: 0...UInt32.max))"
        for index in 0..<20 {
            let response = try await client.execute(
                UpstreamRequest(url: ClickHouse.queryURL(base, "SELECT \(index) AS \(marker)", extra: "&log_queries=1"))
            )
            #expect(response.status == 200)
        }
        // 18.16 may still be writing the log after SYSTEM FLUSH LOGS returns: poll until all 20 are in.
        var result = ""
        for _ in 0..<50 {
            try await ClickHouse.run(client, base, "SYSTEM FLUSH LOGS")
            result = try await ClickHouse.run(
                client, base,
                "SELECT count(), uniqExact(port) FROM system.query_log WHERE type = 1 AND query LIKE '%AS \(marker)%' AND query NOT LIKE '%query_log%'"
            )
            if result.hasPrefix("20\t") { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        let fields = result.split(separator: "\t")
        #expect(fields.first == "20", "\(result)")
        // One connection; two if the machine stalled for longer than the client's idle timeout (2 s)
        // between two requests, as happens under ThreadSanitizer.
        #expect(Int(fields.last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 99 <= 2, "\(result)")
    }
}

/// A delegate that keeps a strong reference to its stream, as a proxy's handler would.
final class HoldingDelegate: UpstreamStreamDelegate {
    let recorder = StreamRecorder()
    private let held = Locked<UpstreamStream?>(nil)

    func hold(_ stream: UpstreamStream) { held.withLock { $0 = stream } }

    func upstreamStream(_ stream: UpstreamStream, didReceiveHead status: Int, headers: [(String, String)]) {
        recorder.upstreamStream(stream, didReceiveHead: status, headers: headers)
    }

    func upstreamStream(_ stream: UpstreamStream, didReceiveBody bytes: UnsafeRawBufferPointer) -> Bool {
        recorder.upstreamStream(stream, didReceiveBody: bytes)
    }

    func upstreamStreamWantsMoreRequestBody(_ stream: UpstreamStream) {}

    func upstreamStream(_ stream: UpstreamStream, didFinishWith error: UpstreamError?) {
        recorder.upstreamStream(stream, didFinishWith: error)
    }
}
