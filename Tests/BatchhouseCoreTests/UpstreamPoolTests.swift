import Testing

@testable import BatchhouseCore

@Suite struct UpstreamPoolTests {
    func at(_ seconds: Double) -> Instant { Instant(nanoseconds: Int64(seconds * 1e9)) }

    /// Acquires a server that must exist (-1 records a failed expectation).
    func take(_ pool: inout UpstreamPool, _ now: Instant, avoiding: Int? = nil) -> Int {
        let server = pool.acquire(now: now, avoiding: avoiding)
        #expect(server != nil)
        return server ?? -1
    }

    @Test func leastLoadedServerIsChosen() {
        var pool = UpstreamPool(servers: ["a", "b", "c"])
        let first = take(&pool, at(0))
        let second = take(&pool, at(0))
        let third = take(&pool, at(0))
        #expect(Set([first, second, third]) == [0, 1, 2], "each gets one before any gets two")
        pool.release(1, success: true, now: at(0))
        #expect(pool.acquire(now: at(0)) == 1, "the idle one is next")
    }

    @Test func fiveConsecutiveFailuresOpenTheBreakerForThirtySeconds() {
        var pool = UpstreamPool(servers: ["a", "b"])
        for _ in 0..<4 {
            pool.release(take(&pool, at(0), avoiding: 1), success: false, now: at(0))
        }
        #expect(pool.servers[0].state(now: at(0)) == .closed)
        pool.release(take(&pool, at(0), avoiding: 1), success: false, now: at(1))
        #expect(pool.servers[0].state(now: at(1)) == .open)
        // While open, everything goes to b.
        for _ in 0..<10 {
            let server = take(&pool, at(5))
            #expect(server == 1)
            pool.release(server, success: true, now: at(5))
        }
        // After 30 s exactly one probe goes to a.
        #expect(pool.servers[0].state(now: at(31)) == .halfOpen)
        #expect(pool.acquire(now: at(31)) == 0)
        #expect(pool.acquire(now: at(31)) == 1, "no second probe while the first is out")
        pool.release(0, success: true, now: at(31.5))
        #expect(pool.servers[0].state(now: at(31.5)) == .closed)
    }

    @Test func aFailedProbeOpensItAgain() {
        var pool = UpstreamPool(servers: ["a"], failureThreshold: 2, openDuration: .seconds(10))
        pool.release(take(&pool, at(0)), success: false, now: at(0))
        pool.release(take(&pool, at(0)), success: false, now: at(0))
        #expect(pool.acquire(now: at(5)) == nil, "the only server is open: nothing to send to")
        let probe = take(&pool, at(10))
        pool.release(probe, success: false, now: at(10.2))
        #expect(pool.servers[0].state(now: at(15)) == .open)
        #expect(pool.servers[0].state(now: at(20.2)) == .halfOpen)
    }

    @Test func healthChecksCountAndAGoodPingClosesTheBreakerAtOnce() {
        var pool = UpstreamPool(servers: ["a", "b"], failureThreshold: 3, openDuration: .seconds(30))
        #expect(!pool.anyUnwell(now: at(0)))
        for second in 0..<3 {
            let recovery = pool.healthCheck(0, ok: false, now: at(Double(second)))
            #expect(!recovery)
        }
        #expect(pool.servers[0].state(now: at(3)) == .open)
        #expect(pool.anyUnwell(now: at(3)))
        let recovered = pool.healthCheck(0, ok: true, now: at(10))
        #expect(recovered, "a recovery")
        #expect(pool.servers[0].state(now: at(10)) == .closed, "the server is back: no waiting out the 30 s")
        #expect(pool.servers[0].lastHealthy == true)
        #expect(pool.servers[0].consecutiveFailures == 0)
        #expect(!pool.anyUnwell(now: at(10)))
        let again = pool.healthCheck(0, ok: true, now: at(11))
        #expect(!again, "already well: not a recovery")
    }

    @Test func aFailedRequestThenAGoodPingIsARecovery() {
        var pool = UpstreamPool(servers: ["a"], failureThreshold: 3, openDuration: .seconds(30))
        pool.release(take(&pool, at(0)), success: false, now: at(0))
        #expect(pool.anyUnwell(now: at(0)), "one failure: pings go faster")
        let recovered = pool.healthCheck(0, ok: true, now: at(1))
        #expect(recovered)
        #expect(!pool.anyUnwell(now: at(1)))
    }

    @Test func reloadKeepsWhatIsKnown() {
        var pool = UpstreamPool(servers: ["a", "b"], failureThreshold: 1)
        pool.healthCheck(1, ok: false, now: at(0))
        pool.update(servers: ["b", "c"])
        #expect(pool.servers.map(\.url) == ["b", "c"])
        #expect(pool.servers[0].state(now: at(1)) == .open)
    }
}
