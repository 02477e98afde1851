/// Why a batch left its buffer. Logged with every flush.
public enum FlushTrigger: String, Sendable, Hashable, CaseIterable {
    /// `max_rows` reached.
    case rows
    /// `max_bytes` reached, or the next chunk would have crossed it.
    case bytes
    /// `max_delay` after the batch's first row.
    case time
    /// The `immediate` strategy: one request, one upstream insert.
    case immediate
    /// The proxy is stopping and flushes everything.
    case shutdown
    /// A new configuration changed the table's rule so the batch had to close.
    case reload
    /// Rows read back from the spool at start (accepted before a restart).
    case recovery
    /// A request of an identity whose rows it holds waits to read them (`read_your_writes`).
    case read
    /// The summaries of a window an aggregate rule emitted (docs/aggregation.md).
    case aggregate
}

/// The strategies' flush decisions, as pure functions of a rule and a batch's size and age.
public enum FlushPolicy {
    /// Whether a batch of `rows` rows and `bytes` bytes must be flushed now, and why.
    public static func trigger(rule: TableRule, rows: Int, bytes: Int) -> FlushTrigger? {
        switch rule.strategy {
        case .immediate:
            return .immediate
        case .size, .hybrid, .adaptive:
            if rows >= rule.maxRows { return .rows }
            if bytes >= rule.maxBytes { return .bytes }
            return nil
        case .time, .memory:
            if bytes >= rule.maxBytes { return .bytes }
            return nil
        }
    }

    /// As `trigger(rule:rows:bytes:)`, except that an `adaptive` rule's batches close at the controller's
    /// current target (which lies within the rule's bounds) instead of the bounds themselves.
    public static func trigger(rule: TableRule, target: AdaptiveTarget?, rows: Int, bytes: Int) -> FlushTrigger? {
        guard rule.strategy == .adaptive, let target else { return trigger(rule: rule, rows: rows, bytes: bytes) }
        if rows >= min(target.maxRows, rule.maxRows) { return .rows }
        if bytes >= min(target.maxBytes, rule.maxBytes) { return .bytes }
        return nil
    }

    /// Whether a batch already holding `bytes` bytes must be flushed before `incoming` more bytes join it,
    /// so that no batch grows past `max_bytes` (a single larger chunk still forms a batch of its own).
    public static func mustFlushBefore(appending incoming: Int, to bytes: Int, rule: TableRule) -> Bool {
        bytes > 0 && bytes + incoming > rule.maxBytes
    }

    /// The latest moment a batch whose first row arrived at `firstRowAt` may stay buffered.
    public static func deadline(rule: TableRule, firstRowAt: Instant) -> Instant {
        firstRowAt + rule.effectiveMaxDelay
    }

    /// As `deadline(rule:firstRowAt:)`, except that an `adaptive` rule's batches use the controller's current
    /// delay, never past `max_delay`.
    public static func deadline(rule: TableRule, target: AdaptiveTarget?, firstRowAt: Instant) -> Instant {
        guard rule.strategy == .adaptive, let target else { return deadline(rule: rule, firstRowAt: firstRowAt) }
        return firstRowAt + min(target.maxDelay, rule.effectiveMaxDelay)
    }
}
