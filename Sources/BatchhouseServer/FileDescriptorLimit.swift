#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The process's open-file limit (RLIMIT_NOFILE), which bounds client connections together with everything
/// else the proxy opens (upstream sockets, spool segments, the curl thread's wakeup pipe).
enum FileDescriptorLimit {
    /// RLIM_INFINITY (all bits set); Glibc's macro does not import as a Swift constant.
    private static let infinity = rlim_t.max

    /// Descriptors kept free for everything that is not a client connection: up to 64 pooled upstream
    /// connections and the passthrough streams, event loops' epoll/event/timer descriptors, spool segments, logs.
    static func reserve(for limit: Int) -> Int { max(160, limit / 8) }

    /// Raises the soft limit to the hard one; returns the limits before and after (nil if they cannot be read).
    static func raiseSoftLimit() -> (before: Int, after: Int)? {
        var limits = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits) == 0 else { return nil }
        let before = limits.rlim_cur
        // Linux refuses RLIM_INFINITY for RLIMIT_NOFILE; fs.nr_open is at most 2^20 by default.
        let target = limits.rlim_max == infinity ? max(before, 1 << 20) : limits.rlim_max
        if target > before {
            var raised = limits
            raised.rlim_cur = target
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 {
                return (Int(clamping: before), Int(clamping: target))
            }
        }
        return (Int(clamping: before), Int(clamping: before))
    }

    /// The most client connections this process can hold (its soft limit less the reserve), and how many refused
    /// ones may linger on top of them (a quarter of the reserve). Running out of descriptors is not only refused accepts:
    /// libdispatch's worker-pool monitor crashes the process when it cannot open /proc/self/task/*/stat (seen at
    /// the limit: SIGILL in `_dispatch_workq_monitor_pools`), so the connections must never reach the limit.
    static func connectionBudget() -> (connections: Int, lingeringRefusals: Int) {
        var limits = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits) == 0, limits.rlim_cur != infinity else {
            return (Int.max, 1024)
        }
        let soft = Int(clamping: limits.rlim_cur)
        let reserve = reserve(for: soft)
        return (max(1, soft - reserve), reserve / 4)
    }
}
