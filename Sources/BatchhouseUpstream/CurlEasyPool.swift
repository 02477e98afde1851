/// Easy handles kept between transfers, so that a transfer does not pay for curl_easy_init and
/// curl_easy_cleanup (allocating and freeing libcurl's per-handle state) each time: with a thousand tables, a
/// batch is one small INSERT per table and the setup was a large part of its cost. Curl thread only.
///
/// A handle comes back through ``recycle(_:)`` only after a transfer libcurl finished with CURLE_OK (an HTTP
/// error status included) and curl_multi_remove_handle took it out of the multi handle. One that failed, was
/// cancelled or was refused an option is freed instead: failures are rare, so nothing is lost, and a fresh
/// handle rules out whatever state an odd failure left behind.
final class CurlEasyPool {
    struct Counts: Sendable, Equatable {
        /// Handles made with curl_easy_init.
        var created = 0
        /// Transfers that got an idle handle instead of a new one.
        var reused = 0
        /// Idle handles now.
        var idle = 0
    }

    /// Idle handles kept at most. The same as CurlClient's default `maxConnections`, the idle connections the
    /// multi handle keeps: after a burst of up to that many concurrent transfers, the next burst of the same size
    /// finds a handle for each, and handles beyond it (a rare larger burst) are freed rather than held. An idle
    /// handle holds about 7 KiB (libcurl 7.88 frees its transfer buffers when a transfer ends), so 64 of them
    /// stay under half a MiB.
    static let defaultCapacity = 64

    let capacity: Int
    private var idle: [CurlEasy] = []
    /// Mirrors what happens here for readers on other threads (tests).
    private let counts: Locked<Counts>

    init(capacity: Int = defaultCapacity, counts: Locked<Counts>) {
        self.capacity = capacity
        self.counts = counts
        idle.reserveCapacity(capacity)
    }

    /// An idle handle, in the state of a new one, or a new one.
    func take() -> CurlEasy {
        if let easy = idle.popLast() {
            counts.withLock { counts in
                counts.reused += 1
                counts.idle = idle.count
            }
            return easy
        }
        counts.withLock { $0.created += 1 }
        return CurlEasy()
    }

    /// Resets the handle and keeps it, or frees it when the pool is full. `easy` must be out of the multi
    /// handle, and this the last reference to it: a handle that something else still holds could be configured
    /// by two transfers at once, so it is freed (when the last holder lets go) instead.
    func recycle(_ easy: inout CurlEasy?) {
        guard isKnownUniquelyReferenced(&easy), let handle = easy else { return }
        easy = nil
        guard idle.count < capacity else { return }
        handle.reset()
        idle.append(handle)
        counts.withLock { $0.idle = idle.count }
    }

    /// Frees every idle handle (before the multi handle goes, at shutdown).
    func removeAll() {
        idle.removeAll()
        counts.withLock { $0.idle = 0 }
    }
}
