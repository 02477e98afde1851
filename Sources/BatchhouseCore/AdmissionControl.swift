/// Load shedding under memory pressure (`limits.max_buffer_memory`): the lowest priority tables are refused
/// first. Shedding begins at 80% of the limit for priority 5 and steps up 5 points per priority level, so
/// priority 1 is accepted until the hard limit itself.
public enum AdmissionControl {
    /// The share of the limit up to which rows of `priority` (1 highest .. 5 lowest) are accepted.
    public static func threshold(priority: Int) -> Double {
        let clamped = min(max(priority, 1), 5)
        return 1.0 - Double(clamped - 1) * 0.05
    }

    /// Whether `incoming` more bytes of a table with `priority` may be buffered when `inUse` of `limit` are taken.
    public static func admits(priority: Int, inUse: Int, incoming: Int, limit: Int) -> Bool {
        let allowed = Double(limit) * threshold(priority: priority)
        return Double(inUse + incoming) <= allowed
    }
}
