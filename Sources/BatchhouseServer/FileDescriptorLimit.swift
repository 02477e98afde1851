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

    /// Descriptors kept free for everything that is not a client connection.
    static func reserve(for limit: Int) -> Int { max(64, limit / 10) }

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

    /// The most client connections this process can hold: its soft limit less the reserve.
    static func connectionCeiling() -> Int {
        var limits = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits) == 0, limits.rlim_cur != infinity else {
            return Int.max
        }
        let soft = Int(clamping: limits.rlim_cur)
        return max(1, soft - reserve(for: soft))
    }
}
