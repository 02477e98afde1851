/// When a table's buffered rows go upstream.
public enum FlushStrategy: String, Sendable, Hashable, CaseIterable {
    /// No buffering: the request's rows go upstream at once and the client gets ClickHouse's answer.
    case immediate
    /// Flush at `maxRows`; `maxDelay` (60 s unless set) is only a safety net.
    case size
    /// Flush every `maxDelay`, whatever the size.
    case time
    /// Flush at `maxRows`, `maxBytes` or `maxDelay` after the first row, whichever comes first.
    case hybrid
    /// Flush at `maxBytes`; `maxDelay` is the safety net.
    case memory
    /// The proxy picks the flush point within the bounds from what it measures.
    case adaptive
}

/// When a client's INSERT is answered.
public enum AckMode: String, Sendable, Hashable, CaseIterable {
    /// After the rows are validated and buffered.
    case enqueued
    /// After the spool write is fsynced.
    case durable
    /// After ClickHouse accepted the batch.
    case flushed
}

/// The effective rule for one table: `defaults` with the table's own keys laid over them.
public struct TableRule: Sendable, Hashable {
    public var strategy: FlushStrategy
    public var maxRows: Int
    public var maxBytes: Int
    /// nil means "the strategy's default" (60 s for `size` and `memory`, 5 s for `adaptive`, 1 s otherwise).
    public var maxDelay: Duration?
    public var priority: Int
    public var retries: Int
    public var retryBackoff: Duration
    public var ack: AckMode
    public var sample: Double
    public var passthrough: Bool
    /// A request of an identity that is not a batchable INSERT waits until the batches holding that identity's
    /// acknowledged rows of this table have an outcome (docs/delivery.md, "Read your writes").
    public var readYourWrites: Bool
    /// `aggregate:`: rows are summarised per window and group into another table (docs/aggregation.md).
    public var aggregate: AggregateRule?

    public init(
        strategy: FlushStrategy = .hybrid,
        maxRows: Int = 100_000,
        maxBytes: Int = 16 << 20,
        maxDelay: Duration? = nil,
        priority: Int = 3,
        retries: Int = 3,
        retryBackoff: Duration = .milliseconds(200),
        ack: AckMode = .enqueued,
        sample: Double = 1.0,
        passthrough: Bool = false,
        readYourWrites: Bool = true,
        aggregate: AggregateRule? = nil
    ) {
        self.strategy = strategy
        self.maxRows = maxRows
        self.maxBytes = maxBytes
        self.maxDelay = maxDelay
        self.priority = priority
        self.retries = retries
        self.retryBackoff = retryBackoff
        self.ack = ack
        self.sample = sample
        self.passthrough = passthrough
        self.readYourWrites = readYourWrites
        self.aggregate = aggregate
    }

    /// The delay after a batch's first row at which it is flushed at the latest.
    public var effectiveMaxDelay: Duration {
        if let maxDelay { return maxDelay }
        switch strategy {
        case .size, .memory: return .seconds(60)
        // Room for the adaptive controller to lengthen the interval when ClickHouse struggles.
        case .adaptive: return .seconds(5)
        default: return .seconds(1)
        }
    }
}

/// A rule as written in the YAML file: only the keys it sets. Unset keys come from `defaults`.
public struct PartialTableRule: Sendable, Hashable {
    public var strategy: FlushStrategy?
    public var maxRows: Int?
    public var maxBytes: Int?
    public var maxDelay: Duration?
    public var priority: Int?
    public var retries: Int?
    public var retryBackoff: Duration?
    public var ack: AckMode?
    public var sample: Double?
    public var passthrough: Bool?
    public var readYourWrites: Bool?
    public var aggregate: AggregateRule?

    public init() {}

    /// This rule's keys laid over `base`.
    public func applied(to base: TableRule) -> TableRule {
        var rule = base
        if let strategy { rule.strategy = strategy }
        if let maxRows { rule.maxRows = maxRows }
        if let maxBytes { rule.maxBytes = maxBytes }
        if let maxDelay { rule.maxDelay = maxDelay }
        if let priority { rule.priority = priority }
        if let retries { rule.retries = retries }
        if let retryBackoff { rule.retryBackoff = retryBackoff }
        if let ack { rule.ack = ack }
        if let sample { rule.sample = sample }
        if let passthrough { rule.passthrough = passthrough }
        if let readYourWrites { rule.readYourWrites = readYourWrites }
        if let aggregate { rule.aggregate = aggregate }
        return rule
    }
}
