import BatchhouseConfig
import BatchhouseCore
import BatchhouseUpstream
import Logging
import NIOCore
import Synchronization

/// One INSERT of a batch's rows, before it is addressed to a server: what the gateway turns into an HTTP request.
package struct BatchRequest: Sendable {
    /// `INSERT INTO db.table (cols) FORMAT fmt`.
    package var statement: String
    package var settings: [Setting]
    package var data: [UInt8]
    /// Whose credentials the rows came with (ignored when `upstream.user` is set).
    package var identity: ClientIdentity
    /// The sealed batch's id, kept across retries: the deduplication token is made from it. Nil for none.
    package var batchID: UInt64?
    /// Sent as `query_id`, and as the deduplication token where the server takes one; kept across retries and
    /// restarts (docs/spool-and-acks.md, "Exactly once").
    package var queryID: String?
    /// `log_queries=1`, so `system.query_log` can tell later whether the query finished.
    package var logQueries = false

    package init(
        statement: String, settings: [Setting], data: [UInt8], identity: ClientIdentity, batchID: UInt64?,
        queryID: String? = nil, logQueries: Bool = false
    ) {
        self.statement = statement
        self.settings = settings
        self.data = data
        self.identity = identity
        self.batchID = batchID
        self.queryID = queryID
        self.logQueries = logQueries
    }

    package init(_ batch: SealedBatch, logQueries: Bool = false) {
        self.init(
            statement: batch.key.insertStatement, settings: batch.key.settings, data: batch.data,
            identity: batch.key.identity, batchID: batch.id, queryID: batch.queryID, logQueries: logQueries)
    }
}

/// Where a passthrough request goes and how to connect there.
package struct PassthroughTarget: Sendable {
    /// The server's base URL, without a trailing slash.
    package var server: String
    package var connectTimeout: Duration
    package var tls: UpstreamTLS?
}

/// Everything the proxy says to ClickHouse goes through here: the replica pool with its circuit breakers, the
/// version probe and what it allows, health checks, and the one place batch requests are built (the dead-letter
/// replayer uses it too). Pure decisions live in the core's `UpstreamPool` and `UpstreamCapabilities`; this
/// holds them behind locks and acts outside them (docs/architecture.md, "Upstream").
package final class UpstreamGateway: Sendable {
    private let transport: any UpstreamTransport
    private let current: Mutex<UpstreamConfiguration>
    private let pool: Mutex<UpstreamPool>
    private let clock: any NowProvider
    /// From the upstream's `SELECT version()`; nil until known (then nothing version-dependent is sent).
    private let known = Mutex<UpstreamCapabilities?>(nil)
    private let healthCheckedOnce = Atomic<Bool>(false)
    /// The fallback from `upstream.compression` lz4/zstd to gzip was logged.
    private let compressionFallbackLogged = Atomic<Bool>(false)
    /// Makes deduplication tokens unique to this process: batch ids restart at 1 with every start.
    private let instance: String

    package init(
        transport: any UpstreamTransport, upstream: UpstreamConfiguration, clock: any NowProvider,
        instance: String = String(UInt64.random(in: 0...UInt64.max), radix: 36)
    ) {
        self.transport = transport
        self.current = Mutex(upstream)
        self.pool = Mutex(UpstreamPool(servers: upstream.servers))
        self.clock = clock
        self.instance = instance
    }

    package var upstream: UpstreamConfiguration { current.withLock { $0 } }

    package var capabilities: UpstreamCapabilities? { known.withLock { $0 } }

    /// Whether a health check has finished since start (`/health` says `initializing` until then).
    package var hasCheckedHealth: Bool { healthCheckedOnce.load(ordering: .relaxed) }

    /// A reload: servers, timeouts, compression, credentials and settings apply to the next request.
    package func update(_ upstream: UpstreamConfiguration) {
        current.withLock { $0 = upstream }
        pool.withLock { $0.update(servers: upstream.servers) }
    }

    /// Each server's breaker and health, for `/health`.
    package func serverStates() -> [(url: String, state: UpstreamPool.BreakerState, inFlight: Int, healthy: Bool?)] {
        let now = clock.now()
        return pool.withLock { $0.states(now: now) }
    }

    /// How many times each server's breaker opened, by URL.
    package func breakerOpenings() -> [(url: String, openings: Int)] {
        pool.withLock { $0.servers.map { ($0.url, $0.openings) } }
    }

    /// Where a passthrough request goes: the least-loaded server whose breaker is closed (else the first).
    /// Passthrough requests are not counted as load: a long SELECT would skew the batch inserts' choice.
    /// A request of a session (`session_id`) always goes to the same server: `UpstreamPool.sessionServer`.
    package func passthroughTarget(session: String? = nil) -> PassthroughTarget {
        let now = clock.now()
        let upstream = self.upstream
        let server = pool.withLock { pool in
            if let session, let index = pool.sessionServer(for: session, now: now) { return pool.servers[index].url }
            let candidates = pool.servers.indices.filter { pool.servers[$0].state(now: now) == .closed }
            let best = candidates.min { pool.servers[$0].inFlight < pool.servers[$1].inFlight } ?? 0
            return pool.servers[best].url
        }
        return PassthroughTarget(
            server: Self.trimmed(server), connectTimeout: upstream.connectTimeout, tls: upstream.upstreamTLS)
    }

    /// The HTTP request for `batch` on `server`: statement and settings in the URL, the body compressed as
    /// `upstream.compression` says, the batch's credentials (or the service account), and the deduplication
    /// token where the server's version takes it.
    package func request(for batch: BatchRequest, server: String) -> UpstreamRequest {
        let upstream = self.upstream
        var url = Self.trimmed(server) + "/?query=" + QueryString.encode(batch.statement)
        var seen = Set<String>()
        // The proxy's own settings come first (the first occurrence of a name wins): exactly once depends on them,
        // so neither a client's nor `upstream.settings` can turn them off.
        var settings: [Setting] = []
        if let queryID = batch.queryID { settings.append(Setting(name: "query_id", value: queryID)) }
        if batch.logQueries { settings.append(Setting(name: "log_queries", value: "1")) }
        if let token = batch.queryID ?? batch.batchID.map({ "batchhouse-\(instance)-\($0)" }),
            capabilities?.supportsDeduplicationToken == true
        {
            // One token per batch, kept across its retries and (through the spool) restarts: a batch sent again
            // after it did land is dropped by ClickHouse instead of inserted twice (replicated tables, or a
            // MergeTree with `non_replicated_deduplication_window`).
            settings.append(Setting(name: "insert_deduplication_token", value: token))
        }
        settings += batch.settings + upstream.settings
        for setting in settings where seen.insert(setting.name).inserted {
            url += "&" + QueryString.encode(setting.name) + "=" + QueryString.encode(setting.value)
        }
        var headers: [(String, String)] = [("Content-Type", "application/octet-stream")]
        let body: ByteBuffer
        if let coding = Self.coding(for: upstream.compression, capabilities: capabilities) {
            body = BodyCompression.compress(ByteBuffer(bytes: batch.data), as: coding)
            headers.append(("Content-Encoding", coding.headerValue))
        } else {
            body = ByteBuffer(bytes: batch.data)
        }
        var request = UpstreamRequest(
            method: "POST", url: url, headers: headers, body: body, basicAuth: Self.auth(for: batch.identity, upstream),
            connectTimeout: upstream.connectTimeout, timeout: upstream.timeout)
        request.tls = upstream.upstreamTLS
        return request
    }

    /// The coding a batch is sent in: lz4 and zstd only to a server whose version decodes them, else gzip (also
    /// while the version is not known). Nil for `none`.
    package static func coding(for compression: UpstreamConfiguration.Compression, capabilities: UpstreamCapabilities?)
        -> ContentCoding?
    {
        switch compression {
        case .none: nil
        case .gzip: .gzip
        case .lz4: capabilities?.decodesLZ4RequestBodies == true ? .lz4 : .gzip
        case .zstd: capabilities?.decodesZstdRequestBodies == true ? .zstd : .gzip
        }
    }

    /// The service account when `upstream.user` is set, else the identity's own (nothing for `.anonymous`).
    private static func auth(for identity: ClientIdentity, _ upstream: UpstreamConfiguration)
        -> (user: String, password: String)?
    {
        if let user = upstream.user { return (user, upstream.password ?? "") }
        if identity.user != nil || identity.password != nil {
            return (identity.user ?? "default", identity.password ?? "")
        }
        return nil
    }

    /// Every server's URL, those whose breaker is closed first: where a question that is not load (a credential
    /// check, a table's description) is asked, until one answers.
    private func serversClosedFirst() -> [String] {
        let now = clock.now()
        return pool.withLock { pool in
            let closed = pool.servers.indices.filter { pool.servers[$0].state(now: now) == .closed }
            let others = pool.servers.indices.filter { !closed.contains($0) }
            return (closed + others).map { pool.servers[$0].url }
        }
    }

    /// What ClickHouse says to `identity`'s credentials.
    package enum VerificationAnswer: Sendable {
        case accepted
        /// ClickHouse's refusal of the credentials (401, codes 192/193/194/195/516), to relay as it came.
        case refused(UpstreamResponse)
        /// No server gave an answer that says either way.
        case unreachable(String)
    }

    /// Asks ClickHouse whether `identity` may log in: `SELECT 1` with its credentials, on the servers whose breaker
    /// is closed first, then the others, until one answers (docs/credentials.md, "Verification"). Any answer but
    /// an authentication refusal or a 5xx means the credentials were taken: ClickHouse authenticates a request
    /// before it reads the query. Not counted as load and not held against a server's breaker.
    package func verify(_ identity: ClientIdentity) async -> VerificationAnswer {
        let upstream = self.upstream
        let servers = serversClosedFirst()
        var last = "no upstream server"
        for server in servers {
            var request = UpstreamRequest(
                method: "GET", url: Self.trimmed(server) + "/?query=" + QueryString.encode("SELECT 1"), headers: [],
                body: nil, basicAuth: Self.auth(for: identity, upstream), connectTimeout: upstream.connectTimeout,
                timeout: .seconds(10))
            request.tls = upstream.upstreamTLS
            do {
                let response = try await transport.execute(request)
                // The code decides, whatever the status: an authentication code is a refusal, any other answer
                // from ClickHouse (an error with a code, or a success) means it took the credentials; only
                // unavailability (5xx without a code, overload, network codes) says nothing.
                let code = (200..<300).contains(response.status) ? nil : response.exceptionCode
                if let code, RefusalKind.authenticationCodes.contains(code) { return .refused(response) }
                let answer = UpstreamAnswer.response(status: response.status, exceptionCode: code)
                if !DeliveryPolicy.countsAgainstServer(answer) {
                    if code == nil && response.status >= 300 && RefusalKind(status: response.status, code: nil) == .authentication {
                        return .refused(response)
                    }
                    return .accepted
                }
                last = "HTTP \(response.status) from \(redacted(server))"
            } catch {
                last = "\(error.kind) at \(redacted(server)): \(error.message)"
            }
        }
        return .unreachable(last)
    }

    /// What ClickHouse says when asked to describe a table.
    package enum DescribeAnswer: Sendable {
        /// `DESCRIBE TABLE ... FORMAT TabSeparated` output.
        case described([UInt8])
        /// ClickHouse answered with an error (no such table, access denied, ...).
        case refused(UpstreamResponse)
        /// No server gave an answer.
        case unreachable(String)
    }

    /// `DESCRIBE TABLE db.table` with `identity`'s credentials (the account the rows would go up with), on the
    /// servers whose breaker is closed first: the column types RowBinary rows are read with
    /// (docs/request-path.md, "RowBinary and Native"). Not counted as load.
    package func describe(database: String?, table: String, identity: ClientIdentity) async -> DescribeAnswer {
        let upstream = self.upstream
        let servers = serversClosedFirst()
        let name = (database.map { BatchKey.quote($0) + "." } ?? "") + BatchKey.quote(table)
        var last = "no upstream server"
        for server in servers {
            var request = UpstreamRequest(
                method: "GET",
                url: Self.trimmed(server) + "/?query=" + QueryString.encode("DESCRIBE TABLE \(name) FORMAT TabSeparated"),
                headers: [], body: nil, basicAuth: Self.auth(for: identity, upstream),
                connectTimeout: upstream.connectTimeout, timeout: .seconds(10))
            request.tls = upstream.upstreamTLS
            do {
                let response = try await transport.execute(request)
                if response.status == 200 { return .described(Array(response.body.readableBytesView)) }
                let code = response.exceptionCode
                let answer = UpstreamAnswer.response(status: response.status, exceptionCode: code)
                if !DeliveryPolicy.countsAgainstServer(answer) { return .refused(response) }
                last = "HTTP \(response.status) from \(redacted(server))"
            } catch {
                last = "\(error.kind) at \(redacted(server)): \(error.message)"
            }
        }
        return .unreachable(last)
    }

    /// What ClickHouse knows of a query sent earlier under `queryID` (with `log_queries=1`).
    package enum QueryOutcome: Sendable, Equatable {
        /// `system.query_log` has its QueryFinish: the rows are in.
        case finished
        /// Logged as failed (ExceptionBeforeStart / ExceptionWhileProcessing): nothing of it landed.
        case failed
        /// Still in `system.processes`: wait for it.
        case running
        /// Neither logged nor running: it never arrived, or its server stopped before finishing it. Only said of a
        /// server that has been up since the query was first sent, so its log cannot have lost the query.
        case absent
        /// It cannot be told: no `system.query_log`, this identity may not read it, or the server restarted since the
        /// query was sent.
        case unknown(String)
        /// No server answered.
        case unreachable(String)
    }

    /// Asks every server (a batch may have gone to any of them) whether the query `queryID` finished: `SYSTEM FLUSH
    /// LOGS` first (or, where the identity may not run it, a wait of 8 s for the log's own 7.5 s flush), then
    /// `system.query_log`, then `system.processes` (docs/spool-and-acks.md, "Exactly once").
    ///
    /// `firstSent` is when the first attempt that may have landed was sent (no answer came back), or a later instant
    /// when that is not known (a batch from before a restart of the proxy: then a restart of ClickHouse between the
    /// two goes unseen). A server that started since then may have committed the rows and died before its log was
    /// written: its silence says nothing, and the answer is `unknown` instead of `absent` or `failed`.
    package func queryOutcome(queryID: String, identity: ClientIdentity, firstSent: Instant) async -> QueryOutcome {
        let upstream = self.upstream
        let servers = pool.withLock { $0.servers.map(\.url) }
        let quoted = "'" + queryID.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + "'"
        var answers: [QueryOutcome] = []
        for server in servers {
            func run(_ query: String, post: Bool = false) async -> Result<(status: Int, code: Int?, text: String), UpstreamError> {
                var request = UpstreamRequest(
                    method: post ? "POST" : "GET",
                    url: Self.trimmed(server) + "/?query=" + QueryString.encode(query), headers: [],
                    body: post ? ByteBuffer() : nil, basicAuth: Self.auth(for: identity, upstream),
                    connectTimeout: upstream.connectTimeout, timeout: .seconds(30))
                request.tls = upstream.upstreamTLS
                do {
                    let response = try await transport.execute(request)
                    let text = String(decoding: response.body.readableBytesView, as: UTF8.self)
                    return .success((response.status, (200..<300).contains(response.status) ? nil : response.exceptionCode, text))
                } catch {
                    return .failure(error)
                }
            }
            // Still running (an attempt the proxy gave up on, or one whose client died): wait for it. Asked before
            // the log is flushed, so a query that ends meanwhile shows in the log. A server that does not answer
            // is unreachable, not unknown: the question is asked again later, and nothing is sent meanwhile.
            func running() async -> QueryOutcome? {
                switch await run("SELECT count() FROM system.processes WHERE query_id = \(quoted) FORMAT TSV") {
                case .failure(let error):
                    return .unreachable("\(error.kind) at \(redacted(server)): \(error.message)")
                case .success(let processes) where processes.status >= 500 && processes.code == nil:
                    return .unreachable("HTTP \(processes.status) from \(redacted(server))")
                case .success(let processes) where processes.status != 200 || processes.code != nil:
                    return .unknown("system.processes cannot be read on \(redacted(server))")
                case .success(let processes):
                    return Int(processes.text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0 > 0 ? .running : nil
                }
            }
            if let answer = await running() {
                answers.append(answer)
                continue
            }
            switch await run("SYSTEM FLUSH LOGS", post: true) {
            case .failure(let error):
                answers.append(.unreachable("\(error.kind) at \(redacted(server)): \(error.message)"))
                continue
            case .success(let answer) where answer.code != nil || answer.status >= 300:
                if answer.status >= 500 && answer.code == nil {
                    answers.append(.unreachable("HTTP \(answer.status) from \(redacted(server))"))
                    continue
                }
                // Not allowed to flush: the log writes itself every 7.5 s by default.
                try? await Task.sleep(for: .seconds(8))
            case .success:
                break
            }
            // Every attempt of a batch used the same query id: one QueryFinish among them is enough. The date bound
            // keeps the scan to the log's recent partitions.
            let logged = await run(
                "SELECT toString(type) FROM system.query_log WHERE query_id = \(quoted) AND event_date >= today() - 30 FORMAT TSV")
            guard case .success(let log) = logged else {
                if case .failure(let error) = logged { answers.append(.unreachable("\(error.kind): \(error.message)")) }
                continue
            }
            guard log.code == nil, log.status == 200 else {
                // One line, so that the log line it goes into stays one.
                let reason = log.text.prefix(300).split(whereSeparator: \.isNewline).joined(separator: " ")
                    .trimmingCharacters(in: .whitespaces)
                answers.append(.unknown("system.query_log cannot be read on \(redacted(server)): \(reason)"))
                continue
            }
            let types = log.text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            if types.contains("QueryFinish") || types.contains("2") { return .finished }
            // A start without an end: running after all (started between the two questions), or its server stopped.
            if let answer = await running() {
                answers.append(answer)
                continue
            }
            // A log kept since the query was sent is the whole story; one that began later may lack its end.
            switch await run("SELECT uptime() FORMAT TSV") {
            case .failure(let error):
                answers.append(.unreachable("\(error.kind) at \(redacted(server)): \(error.message)"))
                continue
            case .success(let uptime) where uptime.status >= 500 && uptime.code == nil:
                answers.append(.unreachable("HTTP \(uptime.status) from \(redacted(server))"))
                continue
            case .success(let uptime):
                let elapsed = (clock.now() - firstSent).seconds
                guard uptime.status == 200, uptime.code == nil,
                    let seconds = Double(uptime.text.trimmingCharacters(in: .whitespacesAndNewlines))
                else {
                    answers.append(.unknown("uptime() cannot be read on \(redacted(server))"))
                    continue
                }
                // uptime() counts whole seconds: within a second of the first send counts as a restart since.
                if seconds < elapsed + 1 {
                    answers.append(.unknown(
                        "\(redacted(server)) restarted \(Int(seconds)) s ago, after the query was sent \(Int(elapsed)) s ago; "
                            + "its query log may have lost it"))
                    continue
                }
            }
            let failed = types.contains { ["ExceptionWhileProcessing", "ExceptionBeforeStart", "3", "4"].contains($0) }
            answers.append(failed ? .failed : .absent)
        }
        // Finished anywhere has returned above; then the most cautious answer wins.
        if answers.contains(.running) { return .running }
        if let unreachable = answers.first(where: { if case .unreachable = $0 { true } else { false } }) { return unreachable }
        if let unknown = answers.first(where: { if case .unknown = $0 { true } else { false } }) { return unknown }
        if answers.contains(.failed) { return .failed }
        return answers.isEmpty ? .unreachable("no upstream server") : .absent
    }

    /// One attempt on the least-loaded server whose breaker lets it through (`avoiding` the one that just
    /// failed, when there is another). Connection errors, timeouts, overload and unavailability count against the
    /// server; ClickHouse's refusals of the rows do not.
    package func send(_ batch: BatchRequest, avoiding: Int?) async throws(UpstreamError) -> (UpstreamResponse, server: Int) {
        let now = clock.now()
        guard let (index, url) = pool.withLock({ pool in
            pool.acquire(now: now, avoiding: avoiding).map { ($0, pool.servers[$0].url) }
        }) else {
            throw UpstreamError(kind: .connect, message: "every upstream server's circuit breaker is open")
        }
        do {
            let response = try await transport.execute(request(for: batch, server: url))
            // A refusal of the data, the statement or the credentials comes from a healthy server: only
            // unavailability and overload count against its breaker (docs/delivery.md, "Reading an answer").
            let alive = !DeliveryPolicy.countsAgainstServer(Result.success(response).answer)
            pool.withLock { $0.release(index, success: alive, now: clock.now()) }
            return (response, index)
        } catch {
            let alive = !DeliveryPolicy.countsAgainstServer(.failure(error.kind.transportFailure))
            pool.withLock { $0.release(index, success: alive, now: clock.now()) }
            throw error
        }
    }

    /// `SELECT version()` on a server; sets `capabilities` and logs the answer.
    @discardableResult
    package func probeVersion(logger: Logger) async -> String? {
        let upstream = self.upstream
        let url = passthroughTarget().server
        var request = UpstreamRequest(
            method: "GET", url: url + "/?query=" + QueryString.encode("SELECT version()"), headers: [], body: nil,
            basicAuth: upstream.user.map { ($0, upstream.password ?? "") },
            connectTimeout: upstream.connectTimeout, timeout: .seconds(10))
        request.tls = upstream.upstreamTLS
        guard let response = try? await transport.execute(request), response.status == 200 else {
            logger.debug("upstream version not known yet")
            return nil
        }
        let text = String(decoding: response.body.readableBytesView, as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let capabilities = UpstreamCapabilities(version: text)
        known.withLock { $0 = capabilities }
        let wanted = upstream.compression
        if wanted == .lz4 || wanted == .zstd, Self.coding(for: wanted, capabilities: capabilities) == .gzip,
            !compressionFallbackLogged.exchange(true, ordering: .relaxed)
        {
            logger.notice(
                "upstream.compression: this ClickHouse does not decode \(wanted.rawValue) request bodies; batches go as gzip",
                metadata: ["version": "\(text)"])
        }
        logger.info(
            "upstream ClickHouse",
            metadata: [
                "version": "\(text)", "server": "\(redacted(url))",
                "deduplication_token": "\(capabilities?.supportsDeduplicationToken ?? false)",
            ])
        return text
    }

    /// Signalled when a server that was down answers `/ping` again: retries waiting out a backoff go at once.
    package let recovered = RecoverySignal()

    /// Whether some server is down, failing or behind an open breaker.
    package var isDegraded: Bool {
        let now = clock.now()
        return pool.withLock { $0.anyUnwell(now: now) }
    }

    /// Pings every server once (`/ping`, 2 s timeout) and records the outcome in the pool; a server that is back
    /// has its breaker closed and wakes the retries waiting for it.
    package func checkHealth() async {
        let servers = pool.withLock { $0.servers.map(\.url) }
        let upstream = self.upstream
        let timeout = min(upstream.connectTimeout, .seconds(2))
        let tls = upstream.upstreamTLS
        let transport = self.transport
        await withTaskGroup(of: (Int, Bool).self) { group in
            for (index, server) in servers.enumerated() {
                group.addTask {
                    var request = UpstreamRequest(
                        method: "GET", url: Self.trimmed(server) + "/ping", headers: [], body: nil, basicAuth: nil,
                        connectTimeout: timeout, timeout: .seconds(2))
                    request.tls = tls
                    let response = try? await transport.execute(request)
                    return (index, response?.status == 200)
                }
            }
            for await (index, ok) in group {
                let now = clock.now()
                let recovery = pool.withLock { pool in
                    // The list may have changed under a reload; only record for the same server.
                    guard pool.servers.indices.contains(index) && pool.servers[index].url == servers[index] else {
                        return false
                    }
                    return pool.healthCheck(index, ok: ok, now: now)
                }
                if recovery { recovered.signal() }
            }
        }
        healthCheckedOnce.store(true, ordering: .relaxed)
    }

    private static func trimmed(_ url: String) -> String {
        var url = url
        while url.hasSuffix("/") { url.removeLast() }
        return url
    }
}

extension UpstreamConfiguration {
    /// `upstream.tls` as the client takes it.
    package var upstreamTLS: UpstreamTLS? {
        tls.map { UpstreamTLS(caFile: $0.caFile, verify: $0.verify) }
    }
}

/// A server URL without any `user:password@` part.
package func redacted(_ url: String) -> String {
    guard let scheme = url.range(of: "://"), let at = url[scheme.upperBound...].firstIndex(of: "@") else { return url }
    return String(url[..<scheme.upperBound]) + String(url[url.index(after: at)...])
}
