@testable import BatchhouseUpstream
import CCurl
import Foundation
import NIOCore
import Testing

/// The curl thread reuses easy handles (CurlEasyPool): nothing a request set may reach the next one on the
/// same handle. Against a local server that records each request as it arrived.
@Suite("Easy handle reuse", .timeLimit(.minutes(3)))
struct EasyHandleReuseTests {
    /// One request of a varied mix, and what the server must see for it and nothing else.
    struct Case: Sendable {
        var id: Int
        var method: String
        var headers: [(String, String)] = []
        var body: [UInt8]?
        /// Sent through ``CurlClient/stream(_:requestBodyLength:delegate:)`` without a length: chunked.
        var chunked = false
        var auth: (user: String, password: String)?
        var timeout: Duration?

        var path: String { "/r/\(id)" }

        func request(base: String) -> UpstreamRequest {
            UpstreamRequest(
                method: method, url: base + path, headers: headers,
                body: chunked ? nil : body.map { ByteBuffer(bytes: $0) }, basicAuth: auth, timeout: timeout)
        }
    }

    /// A mix where neighbours differ: methods with and without bodies, HEAD, chunked uploads, headers whose names
    /// only this request uses and a shared name with its own value, credentials on about half, several timeouts.
    static func cases(_ ids: Range<Int>, seed: UInt64) -> [Case] {
        var random = SplitMix64(seed: seed)
        return ids.map { id in
            let method = ["GET", "GET", "POST", "POST", "PUT", "HEAD", "DELETE"][random.below(7)]
            var test = Case(id: id, method: method)
            if random.chance(0.6) { test.headers.append(("X-Only-\(id)", "only \(id)")) }
            if random.chance(0.5) { test.headers.append(("X-Shared", "shared \(id)")) }
            if random.chance(0.2) { test.headers.append(("Accept", "application/x-accept-\(id)")) }
            if method == "POST" || method == "PUT" {
                let count = random.chance(0.1) ? 0 : 1 + random.below(3000)
                test.body = (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ id) }
                test.chunked = random.chance(0.25) && count > 0
                if random.chance(0.3) { test.headers.append(("Content-Type", "text/x-type-\(id)")) }
            }
            if random.chance(0.45) { test.auth = (user: "user\(id)", password: "password-\(id)-\(random.below(1000))") }
            test.timeout = [nil, .seconds(20), .seconds(30), .seconds(45)][random.below(4)]
            return test
        }
    }

    /// Sends `test` and checks the response; the server's record is checked afterwards (``check(_:against:)``).
    static func send(_ test: Case, client: CurlClient, base: String) async throws {
        var status: Int?
        var body: [UInt8] = []
        if test.chunked {
            let recorder = StreamRecorder()
            let stream = client.stream(test.request(base: base), requestBodyLength: nil, delegate: recorder)
            let bytes = test.body ?? []
            stream.writeRequestBody(ByteBuffer(bytes: bytes.prefix(bytes.count / 2)))
            stream.writeRequestBody(ByteBuffer(bytes: bytes.dropFirst(bytes.count / 2)))
            stream.finishRequestBody()
            let error = await recorder.finished()
            #expect(error == nil, "\(test.path): \(String(describing: error))")
            let state = recorder.snapshot
            status = state.status
            body = Array(state.body.readableBytesView)
        } else {
            let response = try await client.execute(test.request(base: base))
            status = response.status
            body = Array(response.body.readableBytesView)
        }
        #expect(status == 200, "\(test.path)")
        // The right stream got the answer: callbacks and their userdata belong to this request.
        #expect(body == (test.method == "HEAD" ? [] : Array(test.path.utf8)), "\(test.path)")
    }

    /// The pool's counts once `settled` holds: a handle goes back to the pool just after its caller was resumed.
    static func settledCounts(
        _ client: CurlClient, _ settled: (CurlEasyPool.Counts) -> Bool
    ) async throws -> CurlEasyPool.Counts {
        for _ in 0..<200 where !settled(client.easyHandleCounts) {
            try await Task.sleep(for: .milliseconds(10))
        }
        return client.easyHandleCounts
    }

    /// What the server saw for `test` is exactly what `test` asked for.
    static func check(_ test: Case, against requests: [RecordingHTTPServer.Request]) {
        let seen = requests.filter { $0.uri == test.path }
        guard seen.count == 1, let request = seen.first else {
            Issue.record("\(test.path) arrived \(seen.count) times")
            return
        }
        let context = "\(test.path) \(test.method)"
        #expect(request.method == test.method, "\(context)")
        let custom = { (headers: [(String, String)]) in
            headers.filter { $0.0.lowercased().hasPrefix("x-") }.map { "\($0.0.lowercased()): \($0.1)" }.sorted()
        }
        #expect(custom(request.headers) == custom(test.headers), "\(context)")
        let expectedAuth = test.auth.map { "Basic " + Data("\($0.user):\($0.password)".utf8).base64EncodedString() }
        #expect(request.values("Authorization") == (expectedAuth.map { [$0] } ?? []), "\(context)")
        #expect(request.values("Cookie") == [], "\(context): cookies must not be kept")
        #expect(request.values("Accept") == test.headers.filter { $0.0 == "Accept" }.map(\.1), "\(context)")
        #expect(request.values("Content-Type") == test.headers.filter { $0.0 == "Content-Type" }.map(\.1), "\(context)")
        #expect(request.body == (test.body ?? []), "\(context)")
        let carriesBody = test.method == "POST" || test.method == "PUT"
        #expect(request.values("Transfer-Encoding") == (test.chunked ? ["chunked"] : []), "\(context)")
        let length = test.chunked || !carriesBody ? [] : [String(test.body?.count ?? 0)]
        #expect(request.values("Content-Length") == length, "\(context)")
        #expect(request.values("Expect") == [], "\(context)")
    }

    @Test("200 sequential requests share one handle, and none carries anything of the one before")
    func sequential() async throws {
        let server = try await RecordingHTTPServer()
        let client = CurlClient()
        defer { client.shutdown() }
        let cases = Self.cases(0..<200, seed: 0x5EED_0001)
        for test in cases {
            try await Self.send(test, client: client, base: server.url)
        }
        let requests = server.requests
        for test in cases { Self.check(test, against: requests) }
        // Each transfer is over, and its handle back in the pool, before the next one is added.
        let counts = try await Self.settledCounts(client) { $0.idle == 1 }
        #expect(counts.created == 1, "\(counts)")
        #expect(counts.reused == cases.count - 1, "\(counts)")
        #expect(counts.idle == 1, "\(counts)")
        await server.stop()
    }

    @Test("200 requests, 16 at a time, reuse at most 16 handles, and none carries anything of another")
    func concurrent() async throws {
        let server = try await RecordingHTTPServer()
        let client = CurlClient()
        defer { client.shutdown() }
        let cases = Self.cases(1000..<1200, seed: 0x5EED_0002)
        let width = 16
        let base = server.url
        try await withThrowingTaskGroup(of: Void.self) { group in
            var pending = cases[...]
            for test in pending.prefix(width) { group.addTask { try await Self.send(test, client: client, base: base) } }
            pending = pending.dropFirst(width)
            while try await group.next() != nil {
                guard let test = pending.popFirst() else { continue }
                group.addTask { try await Self.send(test, client: client, base: base) }
            }
        }
        let requests = server.requests
        for test in cases { Self.check(test, against: requests) }
        let counts = try await Self.settledCounts(client) { $0.idle == $0.created }
        #expect(counts.created <= width, "\(counts)")
        #expect(counts.created + counts.reused == cases.count, "\(counts)")
        #expect(counts.idle == counts.created, "\(counts)")
        await server.stop()
    }

    @Test("timeouts and error messages on reused handles are the request's own; failed handles are not reused")
    func timeoutsAndErrors() async throws {
        let server = try await RecordingHTTPServer()
        // Not the default: a loaded machine may stall for longer than it between two requests.
        let client = CurlClient(idleConnectionTimeout: .seconds(300))
        defer { client.shutdown() }
        let closedPort = try OneConnectionServer.unusedPort()
        for round in 0..<2 {
            // A short timeout on a quick answer; the handle goes back to the pool.
            let quick = try await client.execute(UpstreamRequest(url: server.url + "/t/\(round)/quick", timeout: .milliseconds(800)))
            #expect(quick.status == 200)
            // No timeout on the same handle: the 800 ms of the last request are gone.
            let start = ContinuousClock.now
            let slow = try await client.execute(UpstreamRequest(url: server.url + "/t/\(round)/slow?delay=1500", timeout: nil))
            #expect(slow.status == 200)
            #expect(ContinuousClock.now - start >= .milliseconds(1500))
            // A timeout on a reused handle: libcurl's own message (in the error buffer, attached again after the
            // reset) rather than the generic "Timeout was reached".
            do {
                _ = try await client.execute(UpstreamRequest(url: server.url + "/t/\(round)/late?delay=3000", timeout: .milliseconds(300)))
                Issue.record("expected a timeout")
            } catch {
                #expect(error.kind == .timeout, "\(error)")
                #expect(error.message.contains("milliseconds"), "\(error.message)")
            }
            let again = try await client.execute(UpstreamRequest(url: server.url + "/t/\(round)/again"))
            #expect(again.status == 200)
            // A refused connect on a reused handle names the port: again the error buffer, and empty before.
            do {
                _ = try await client.execute(UpstreamRequest(url: "http://127.0.0.1:\(closedPort)/refused"))
                Issue.record("nothing listens there")
            } catch {
                #expect(error.kind == .connect, "\(error)")
                #expect(error.message.contains("\(closedPort)"), "\(error.message)")
                #expect(!error.message.contains("milliseconds with"), "\(error.message)")
            }
            let after = try await client.execute(UpstreamRequest(url: server.url + "/t/\(round)/after"))
            #expect(after.status == 200)
        }
        // Per round: quick (new, or reused after the last round), slow (reused), late (reused, then freed:
        // it failed), again (new), refused (reused, freed), after (new).
        let counts = client.easyHandleCounts
        #expect(counts.created == 5, "\(counts)")
        #expect(counts.reused == 7, "\(counts)")
        await server.stop()
    }
}

/// The pool on its own, without transfers.
@Suite("CurlEasyPool")
struct CurlEasyPoolTests {
    @Test("keeps at most its capacity of idle handles, and hands them out again")
    func capacity() {
        let counts = Locked(CurlEasyPool.Counts())
        let pool = CurlEasyPool(capacity: 4, counts: counts)
        var taken: [CurlEasy?] = (0..<6).map { _ in pool.take() }
        for index in taken.indices { pool.recycle(&taken[index]) }
        #expect(taken.allSatisfy { $0 == nil })
        #expect(counts.withLock { $0 } == CurlEasyPool.Counts(created: 6, reused: 0, idle: 4))
        let again = (0..<5).map { _ in pool.take() }
        #expect(counts.withLock { $0 } == CurlEasyPool.Counts(created: 7, reused: 4, idle: 0))
        withExtendedLifetime(again) {}
        pool.removeAll()
    }

    @Test("a handle something else still holds is not pooled")
    func sharedHandle() {
        let counts = Locked(CurlEasyPool.Counts())
        let pool = CurlEasyPool(capacity: 4, counts: counts)
        var handle: CurlEasy? = pool.take()
        let other = handle
        pool.recycle(&handle)
        #expect(counts.withLock { $0.idle } == 0)
        withExtendedLifetime(other) {}
    }

    @Test("reset forgets a refused option")
    func resetClearsSetupFailure() {
        let easy = CurlEasy()
        easy.set(CURLOPT_HTTP_VERSION, 999)
        #expect(easy.setupFailure != nil)
        easy.reset()
        #expect(easy.setupFailure == nil)
    }
}

/// A seeded generator, so a failing mix can be run again.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func below(_ bound: Int) -> Int { Int(next() % UInt64(bound)) }

    mutating func chance(_ probability: Double) -> Bool { Double(next() >> 11) / Double(1 << 53) < probability }
}
