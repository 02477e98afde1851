import Testing

@testable import BatchhouseCore

/// Requests with a `session_id` (ClickHouse's session state): found from the URL alone, and pinned to one server.
@Suite struct SessionTests {
    func at(_ seconds: Double) -> Instant { Instant(nanoseconds: Int64(seconds * 1e9)) }

    @Test func theSessionIDIsReadFromTheQueryStringOnly() {
        #expect(RequestParameters.sessionID(uriQuery: "session_id=abc&query=SELECT%201") == "abc")
        #expect(RequestParameters.sessionID(uriQuery: "query=SELECT+1&session_id=a%20b") == "a b")
        #expect(RequestParameters.sessionID(uriQuery: "session_id=&query=x") == nil, "empty: no session, as ClickHouse")
        #expect(RequestParameters.sessionID(uriQuery: "session_timeout=60") == nil)
        #expect(RequestParameters.sessionID(uriQuery: "query=SELECT%20%27session_id%27") == nil)
        #expect(RequestParameters.sessionID(uriQuery: "") == nil)
        let parameters = RequestParameters(uriQuery: "session_id=s1&session_timeout=60&max_threads=2") { _ in nil }
        #expect(parameters.sessionID == "s1")
        #expect(parameters.settings.map(\.name) == ["max_threads"], "session_* are not settings of a batch")
    }

    @Test func oneSessionAlwaysGoesToOneServerAndSessionsSpread() {
        let pool = UpstreamPool(servers: ["http://a:8123", "http://b:8123", "http://c:8123"])
        var used = Set<Int>()
        for number in 0..<60 {
            let first = pool.sessionServer(for: "session-\(number)", now: at(0))
            #expect(first != nil)
            for _ in 0..<3 { #expect(pool.sessionServer(for: "session-\(number)", now: at(0)) == first) }
            if let first { used.insert(first) }
        }
        #expect(used == [0, 1, 2])
    }

    @Test func aSessionMovesOnlyWhenItsServerIsDownAndComesBackAfter() {
        var pool = UpstreamPool(servers: ["http://a:8123", "http://b:8123"], failureThreshold: 1)
        let sessions = (0..<40).map { "s\($0)" }
        let home = sessions.map { pool.sessionServer(for: $0, now: at(0))! }
        let onA = sessions.indices.filter { home[$0] == 0 }
        let onB = sessions.indices.filter { home[$0] == 1 }
        #expect(!onA.isEmpty && !onB.isEmpty)
        pool.release(0, success: false, now: at(1))  // a's breaker opens
        for index in onA { #expect(pool.sessionServer(for: sessions[index], now: at(2)) == 1) }
        for index in onB { #expect(pool.sessionServer(for: sessions[index], now: at(2)) == 1) }
        _ = pool.healthCheck(0, ok: true, now: at(3))
        for index in sessions.indices { #expect(pool.sessionServer(for: sessions[index], now: at(4)) == home[index]) }
    }
}
