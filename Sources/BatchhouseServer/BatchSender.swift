import BatchhouseConfig
import BatchhouseCore
import BatchhouseUpstream
import NIOCore
import Synchronization

/// Turns a sealed batch into one upstream INSERT request and sends it to one of the servers.
final class BatchSender: Sendable {
    private let client: CurlClient
    private let current: Mutex<UpstreamConfiguration>
    private let nextServer = Mutex(0)

    init(client: CurlClient, upstream: UpstreamConfiguration) {
        self.client = client
        self.current = Mutex(upstream)
    }

    var upstream: UpstreamConfiguration { current.withLock { $0 } }

    /// A reload: servers, timeouts, compression, credentials and settings apply to the next request.
    func update(_ upstream: UpstreamConfiguration) {
        current.withLock { $0 = upstream }
    }

    /// The server for an attempt: round robin, so a retry after a failure goes to the next replica.
    func server(forAttempt attempt: Int) -> String {
        let servers = upstream.servers
        let start = nextServer.withLock { value in
            defer { value &+= 1 }
            return value
        }
        return servers[(start &+ attempt) % servers.count]
    }

    func request(for batch: SealedBatch, server: String) -> UpstreamRequest {
        let upstream = self.upstream
        var url = server
        while url.hasSuffix("/") { url.removeLast() }
        url += "/?query=" + QueryString.encode(batch.key.insertStatement)
        var seen = Set<String>()
        for setting in batch.key.settings + upstream.settings where seen.insert(setting.name).inserted {
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
        return UpstreamRequest(
            method: "POST", url: url, headers: headers, body: body, basicAuth: auth,
            connectTimeout: upstream.connectTimeout, timeout: upstream.timeout)
    }

    func send(_ batch: SealedBatch, attempt: Int) async throws(UpstreamError) -> UpstreamResponse {
        let server = server(forAttempt: attempt)
        return try await client.execute(request(for: batch, server: server))
    }
}
