/// The upstream replicas and what the proxy knows of each: requests in flight, consecutive failures, a circuit
/// breaker. Requests go to the least-loaded server whose breaker lets them through.
///
/// Breaker: `failureThreshold` consecutive failures (requests or `/ping` health checks) open it for
/// `openDuration`; after that one probe is let through (half-open): success closes it, failure opens it again.
/// A good `/ping` closes it at any time. Only unavailability counts as a failure (`DeliveryPolicy.countsAgainstServer`):
/// a server that refuses bad rows is healthy.
public struct UpstreamPool: Sendable {
    public enum BreakerState: String, Sendable, Hashable {
        case closed
        case open
        case halfOpen = "half_open"
    }

    public struct Server: Sendable, Hashable {
        public var url: String
        public var inFlight = 0
        public var consecutiveFailures = 0
        public var openUntil: Instant?
        public var probeInFlight = false
        public var lastHealthy: Bool?
        /// How many times its breaker opened (from closed or half-open).
        public var openings = 0

        public init(url: String) { self.url = url }

        /// Answering pings, no recent failure, breaker closed.
        public func isWell(now: Instant) -> Bool {
            lastHealthy != false && consecutiveFailures == 0 && state(now: now) == .closed
        }

        public func state(now: Instant) -> BreakerState {
            guard let openUntil else { return .closed }
            return now < openUntil ? .open : .halfOpen
        }
    }

    public private(set) var servers: [Server]
    public let failureThreshold: Int
    public let openDuration: Duration
    private var rotation = 0

    public init(servers: [String], failureThreshold: Int = 5, openDuration: Duration = .seconds(30)) {
        self.servers = servers.map(Server.init(url:))
        self.failureThreshold = failureThreshold
        self.openDuration = openDuration
    }

    /// Replaces the server list (reload), keeping what is known of servers that stay.
    public mutating func update(servers urls: [String]) {
        let known = Dictionary(servers.map { ($0.url, $0) }, uniquingKeysWith: { first, _ in first })
        servers = urls.map { known[$0] ?? Server(url: $0) }
        rotation = 0
    }

    /// The server for the next request, marked as started; nil when every breaker is open.
    /// Among closed breakers the least-loaded wins (ties rotate); a half-open server gets one probe.
    public mutating func acquire(now: Instant, avoiding avoided: Int? = nil) -> Int? {
        var best: Int?
        var probe: Int?
        let count = servers.count
        for offset in 0..<count {
            let index = (rotation + offset) % count
            if index == avoided && count > 1 { continue }
            let server = servers[index]
            switch server.state(now: now) {
            case .closed:
                if best == nil || server.inFlight < servers[best!].inFlight { best = index }
            case .halfOpen:
                if !server.probeInFlight && probe == nil { probe = index }
            case .open:
                break
            }
        }
        rotation = (rotation + 1) % max(count, 1)
        if let probe {
            // A recovering server is probed before more load goes elsewhere.
            servers[probe].probeInFlight = true
            servers[probe].inFlight += 1
            return probe
        }
        if let best {
            servers[best].inFlight += 1
            return best
        }
        return nil
    }

    /// The server for a request of session `sessionID`: every request of one session goes to the same server
    /// while its breaker is not open (rendezvous hashing: each server scores the session, the highest closed one
    /// wins), so a session moves only when its server fails, and only its own sessions move. Nil when the list is
    /// empty.
    public func sessionServer(for sessionID: String, now: Instant) -> Int? {
        var best: (index: Int, score: UInt64)?
        var fallback: (index: Int, score: UInt64)?
        for (index, server) in servers.enumerated() {
            let score = Self.score(sessionID, server.url)
            if fallback == nil || score > fallback!.score { fallback = (index, score) }
            guard server.state(now: now) != .open else { continue }
            if best == nil || score > best!.score { best = (index, score) }
        }
        return (best ?? fallback)?.index
    }

    /// FNV-1a over the session id, a separator and the server's URL, finished by SplitMix64's mixer: stable across
    /// processes and restarts (Swift's `Hasher` is seeded per process).
    static func score(_ sessionID: String, _ url: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in sessionID.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        hash = (hash ^ 0xff) &* 0x100_0000_01b3
        for byte in url.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        var z = hash &+ 0x9e37_79b9_7f4a_7c15
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    /// A request to server `index` ended; `success` is false for connection errors, timeouts and 5xx.
    public mutating func release(_ index: Int, success: Bool, now: Instant) {
        guard servers.indices.contains(index) else { return }
        servers[index].inFlight = max(0, servers[index].inFlight - 1)
        record(index, success: success, now: now)
    }

    /// A `/ping` health check of server `index`. A good answer closes the breaker at once, whatever its state:
    /// the server is back, so delivery resumes without waiting out the open period. Returns true when the server
    /// was counted as down or failing before (a recovery: retries waiting for it may go now).
    @discardableResult
    public mutating func healthCheck(_ index: Int, ok: Bool, now: Instant) -> Bool {
        guard servers.indices.contains(index) else { return false }
        let wasDown = !servers[index].isWell(now: now)
        servers[index].lastHealthy = ok
        guard ok else {
            record(index, success: false, now: now)
            return false
        }
        servers[index].consecutiveFailures = 0
        servers[index].openUntil = nil
        return wasDown
    }

    /// Whether some server is down, failing or behind an open breaker (health checks then run more often).
    public func anyUnwell(now: Instant) -> Bool {
        servers.contains { !$0.isWell(now: now) }
    }

    private mutating func record(_ index: Int, success: Bool, now: Instant) {
        let wasProbe = servers[index].probeInFlight
        servers[index].probeInFlight = false
        if success {
            servers[index].consecutiveFailures = 0
            if servers[index].state(now: now) != .open || wasProbe { servers[index].openUntil = nil }
            return
        }
        servers[index].consecutiveFailures += 1
        let state = servers[index].state(now: now)
        if state == .halfOpen || (state == .closed && servers[index].consecutiveFailures >= failureThreshold) {
            servers[index].openUntil = now + openDuration
            servers[index].openings += 1
        }
    }

    public func states(now: Instant) -> [(url: String, state: BreakerState, inFlight: Int, healthy: Bool?)] {
        servers.map { ($0.url, $0.state(now: now), $0.inFlight, $0.lastHealthy) }
    }
}
