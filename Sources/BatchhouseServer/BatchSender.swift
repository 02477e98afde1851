import BatchhouseConfig
import BatchhouseCore
import BatchhouseUpstream
import Foundation
import Logging
import NIOCore
import Synchronization

/// Turns a sealed batch into one upstream INSERT request and sends it to one of the servers.
final class BatchSender: Sendable {
    private let client: CurlClient
    private let current: Mutex<UpstreamConfiguration>
    let pool: Mutex<UpstreamPool>
    let clock: any NowProvider
    /// From the upstream's `SELECT version()`; nil until known (then nothing version-dependent is sent).
    let capabilities = Mutex<UpstreamCapabilities?>(nil)
    /// Makes deduplication tokens unique to this process: batch ids restart at 1 with every start.
    private let instance = String(UInt64.random(in: 0...UInt64.max), radix: 36)

    init(client: CurlClient, upstream: UpstreamConfiguration, clock: any NowProvider = MonotonicClock()) {
        self.client = client
        self.current = Mutex(upstream)
        self.pool = Mutex(UpstreamPool(servers: upstream.servers))
        self.clock = clock
    }

    var upstream: UpstreamConfiguration { current.withLock { $0 } }

    /// A reload: servers, timeouts, compression, credentials and settings apply to the next request.
    func update(_ upstream: UpstreamConfiguration) {
        current.withLock { $0 = upstream }
        pool.withLock { $0.update(servers: upstream.servers) }
    }

    /// Where a passthrough request goes: the least-loaded server whose breaker is closed (else the first).
    /// Passthrough requests are not counted as load: a long SELECT would skew the batch inserts' choice.
    func passthroughServer() -> String {
        let now = clock.now()
        return pool.withLock { pool in
            let candidates = pool.servers.indices.filter { pool.servers[$0].state(now: now) == .closed }
            let best = candidates.min { pool.servers[$0].inFlight < pool.servers[$1].inFlight } ?? 0
            return pool.servers[best].url
        }
    }

    func request(for batch: SealedBatch, server: String) -> UpstreamRequest {
        let upstream = self.upstream
        var url = server
        while url.hasSuffix("/") { url.removeLast() }
        url += "/?query=" + QueryString.encode(batch.key.insertStatement)
        var seen = Set<String>()
        var settings = batch.key.settings + upstream.settings
        if capabilities.withLock({ $0?.supportsDeduplicationToken }) == true {
            // One token per batch, kept across its retries: a retry after a timeout whose insert did land is
            // dropped by ClickHouse instead of inserted twice (replicated tables, or a deduplication window).
            settings.append(Setting(name: "insert_deduplication_token", value: "batchhouse-\(instance)-\(batch.id)"))
        }
        for setting in settings where seen.insert(setting.name).inserted {
            url += "&" + QueryString.encode(setting.name) + "=" + QueryString.encode(setting.value)
        }
        var headers: [(String, String)] = [("Content-Type", "application/octet-stream")]
        var body = ByteBuffer()
        switch upstream.compression {
        case .gzip:
            let compressed = batch.data.withUnsafeBytes { Zlib.compress($0, as: .gzip) }
            body = ByteBuffer(bytes: compressed)
            headers.append(("Content-Encoding", "gzip"))
        case .none:
            body = ByteBuffer(bytes: batch.data)
        }
        let auth: (user: String, password: String)?
        if let user = upstream.user {
            auth = (user, upstream.password ?? "")
        } else if batch.key.identity.user != nil || batch.key.identity.password != nil {
            auth = (batch.key.identity.user ?? "default", batch.key.identity.password ?? "")
        } else {
            auth = nil
        }
        var request = UpstreamRequest(
            method: "POST", url: url, headers: headers, body: body, basicAuth: auth,
            connectTimeout: upstream.connectTimeout, timeout: upstream.timeout)
        request.tls = upstream.upstreamTLS
        return request
    }

    /// One attempt on the least-loaded server whose breaker lets it through (`avoiding` the one that just
    /// failed, when there is another). Connection errors, timeouts and 5xx count against the server.
    func send(_ batch: SealedBatch, avoiding: Int?) async throws(UpstreamError) -> (UpstreamResponse, server: Int) {
        guard let (index, url) = pool.withLock({ pool in
            pool.acquire(now: clock.now(), avoiding: avoiding).map { ($0, pool.servers[$0].url) }
        }) else {
            throw UpstreamError(kind: .connect, message: "every upstream server's circuit breaker is open")
        }
        do {
            let response = try await client.execute(request(for: batch, server: url))
            let alive = response.status < 500
            pool.withLock { $0.release(index, success: alive, now: clock.now()) }
            return (response, index)
        } catch {
            pool.withLock { $0.release(index, success: error.kind == .cancelled, now: clock.now()) }
            throw error
        }
    }

    /// `SELECT version()` on the first server; sets `capabilities` and logs the answer.
    func probeVersion(logger: Logger) async -> String? {
        let upstream = self.upstream
        var url = passthroughServer()
        while url.hasSuffix("/") { url.removeLast() }
        var request = UpstreamRequest(
            method: "GET", url: url + "/?query=" + QueryString.encode("SELECT version()"), headers: [], body: nil,
            basicAuth: upstream.user.map { ($0, upstream.password ?? "") },
            connectTimeout: upstream.connectTimeout, timeout: .seconds(10))
        request.tls = upstream.upstreamTLS
        guard let response = try? await client.execute(request), response.status == 200 else {
            logger.debug("upstream version not known yet")
            return nil
        }
        let text = String(decoding: response.body.readableBytesView, as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let known = UpstreamCapabilities(version: text)
        capabilities.withLock { $0 = known }
        logger.info(
            "upstream ClickHouse",
            metadata: [
                "version": "\(text)", "server": "\(redacted(url))",
                "deduplication_token": "\(known?.supportsDeduplicationToken ?? false)",
            ])
        return text
    }

    /// Pings every server once (`/ping`, 2 s timeout) and records the outcome in the pool.
    func checkHealth() async {
        let servers = pool.withLock { $0.servers.map(\.url) }
        let timeout = min(upstream.connectTimeout, .seconds(2))
        let tls = upstream.upstreamTLS
        await withTaskGroup(of: (Int, Bool).self) { group in
            for (index, server) in servers.enumerated() {
                group.addTask {
                    var url = server
                    while url.hasSuffix("/") { url.removeLast() }
                    var request = UpstreamRequest(
                        method: "GET", url: url + "/ping", headers: [], body: nil, basicAuth: nil,
                        connectTimeout: timeout, timeout: .seconds(2))
                    request.tls = tls
                    let response = try? await self.client.execute(request)
                    return (index, response?.status == 200)
                }
            }
            for await (index, ok) in group {
                pool.withLock { pool in
                    // The list may have changed under a reload; only record for the same server.
                    if pool.servers.indices.contains(index) && pool.servers[index].url == servers[index] {
                        pool.healthCheck(index, ok: ok, now: clock.now())
                    }
                }
            }
        }
    }
}

extension UpstreamConfiguration {
    /// `upstream.tls` as the client takes it.
    var upstreamTLS: UpstreamTLS? {
        tls.map { UpstreamTLS(caFile: $0.caFile, verify: $0.verify) }
    }
}
