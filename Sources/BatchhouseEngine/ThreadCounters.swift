import Atomics
import BatchhouseCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The counters every request moves, kept per thread and summed when read (docs/architecture.md, "Metrics").
///
/// A request is served on its connection's event loop, so each event loop has a block of its own: one writer, no
/// lock, no dictionary, no cache line shared with another core. The block is found through a thread-specific
/// pointer; a thread that is not an event loop (a credential check finishing on the libcurl thread) gets a block
/// of its own the same way. A scrape sums the blocks.
package final class ThreadCounters: @unchecked Sendable {
    // @unchecked: `slots` is written only by the thread that owns this block (load and store of a relaxed atomic:
    // a plain move on x86 and ARM, no read-modify-write) and read by any; every access is atomic.

    /// Where each counter lives in a block.
    package enum Layout {
        package static let requestKinds = BatchhouseMetrics.RequestKind.allCases.count
        package static let refusalReasons = RefusalReason.allCases.count
        package static let acks = LatencyAck.allCases.count
        /// Upper bounds of the answer-latency buckets, in seconds (the last bucket, +Inf, has no bound).
        package static let latencyBounds: [Double] = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
        ]
        /// The bounds in nanoseconds, compared with a measured answer time.
        static let latencyBoundNanos: [Int64] = latencyBounds.map { Int64(($0 * 1e9).rounded()) }
        /// Per ack mode: one count per bucket (not cumulative) and the sum of nanoseconds.
        package static let latencySlots = latencyBounds.count + 2

        static let requests = 0
        static let refused = requests + requestKinds
        static let latency = refused + refusalReasons
        static let count = latency + acks * latencySlots

        static func latencyBucket(_ ack: LatencyAck, _ bucket: Int) -> Int { latency + ack.index * latencySlots + bucket }
        static func latencySum(_ ack: LatencyAck) -> Int { latency + ack.index * latencySlots + latencySlots - 1 }
    }

    /// The ack modes answer latency is kept for (an `immediate` table answers as `flushed`).
    package enum LatencyAck: String, CaseIterable, Sendable {
        case enqueued, durable, flushed

        package init(_ ack: AckMode) {
            switch ack {
            case .enqueued: self = .enqueued
            case .durable: self = .durable
            case .flushed: self = .flushed
            }
        }

        var index: Int {
            switch self {
            case .enqueued: 0
            case .durable: 1
            case .flushed: 2
            }
        }
    }

    private let slots: UnsafeMutablePointer<UnsafeAtomic<Int>.Storage>

    init() {
        // A block of its own cache lines: no false sharing with another thread's block.
        let raw = UnsafeMutableRawPointer.allocate(
            byteCount: Layout.count * MemoryLayout<UnsafeAtomic<Int>.Storage>.stride, alignment: 128)
        slots = raw.bindMemory(to: UnsafeAtomic<Int>.Storage.self, capacity: Layout.count)
        slots.initialize(repeating: UnsafeAtomic<Int>.Storage(0), count: Layout.count)
    }

    deinit {
        slots.deinitialize(count: Layout.count)
        UnsafeMutableRawPointer(slots).deallocate()
    }

    /// Adds `amount` to a slot of this block; only its own thread calls it.
    @inline(__always)
    private func add(_ slot: Int, _ amount: Int) {
        let atomic = UnsafeAtomic<Int>(at: slots + slot)
        atomic.store(atomic.load(ordering: .relaxed) &+ amount, ordering: .relaxed)
    }

    /// A slot's value; any thread.
    func value(_ slot: Int) -> Int {
        UnsafeAtomic<Int>(at: slots + slot).load(ordering: .relaxed)
    }

    @inline(__always)
    func request(_ kind: BatchhouseMetrics.RequestKind) { add(Layout.requests + kind.index, 1) }

    @inline(__always)
    func refused(_ reason: RefusalReason) { add(Layout.refused + reason.index, 1) }

    @inline(__always)
    func answered(_ ack: LatencyAck, nanoseconds: Int64) {
        var bucket = 0
        let bounds = Layout.latencyBoundNanos
        while bucket < bounds.count, nanoseconds > bounds[bucket] { bucket += 1 }
        add(Layout.latencyBucket(ack, bucket), 1)
        add(Layout.latencySum(ack), Int(max(nanoseconds, 0)))
    }
}

/// Why the proxy answered a request with an error (`batchhouse_refused_requests_total`).
package enum RefusalReason: String, CaseIterable, Sendable {
    /// `limits.max_buffer_memory`.
    case memory
    /// The spool is full, out of disk, or failed.
    case spool
    /// A bound on clients: `max_connections`, `max_request_body`, a timeout, no length.
    case limit
    /// Credentials: refused by ClickHouse, mixed schemes, or not checkable.
    case auth
    /// Rows, a statement or a body that does not parse or decode.
    case syntax
    /// ClickHouse could not be reached for a request that needed it.
    case upstream
    /// ClickHouse refused the rows of a request that waited for them (`ack: flushed`, `immediate`).
    case clickhouse
    /// Anything else (shutting down, a locked session).
    case other

    /// Its place in `allCases` (a switch: this runs per request).
    var index: Int {
        switch self {
        case .memory: 0
        case .spool: 1
        case .limit: 2
        case .auth: 3
        case .syntax: 4
        case .upstream: 5
        case .clickhouse: 6
        case .other: 7
        }
    }
}

extension BatchhouseMetrics.RequestKind {
    /// Its place in `allCases` (a switch: this runs per request).
    var index: Int {
        switch self {
        case .batchedInsert: 0
        case .immediateInsert: 1
        case .passthrough: 2
        case .local: 3
        case .rejected: 4
        }
    }
}

/// The blocks of every thread that counted for one `BatchhouseMetrics`, and the thread-specific pointer that finds
/// the current thread's block. A thread keeps the blocks of metrics it counted for (a few hundred bytes each; in
/// production there is one).
final class ThreadCounterBlocks: Sendable {
    /// One key for the process (keys are few: PTHREAD_KEYS_MAX); each thread's value is a `ThreadBlocks` that maps
    /// metrics instances to blocks, so tests with many engines in one process stay apart.
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        // Blocks live as long as their metrics (a thread that ends leaves its block with its totals in the sum).
        precondition(pthread_key_create(&key, nil) == 0, "pthread_key_create failed")
        return key
    }()

    /// What a thread keeps: the block of the metrics it counted for last, and those of others.
    private final class ThreadBlocks {
        var lastOwner: UInt64 = 0
        var last: ThreadCounters?
        var others: [(owner: UInt64, block: ThreadCounters)] = []
    }

    private let all = Mutex<[ThreadCounters]>([])
    /// Tells these blocks from those of other metrics on the same thread (never reused, unlike an address).
    private let owner: UInt64
    private static let nextOwner = Atomic<UInt64>(1)

    init() {
        owner = Self.nextOwner.add(1, ordering: .relaxed).oldValue
    }

    /// The current thread's block; made and registered the first time.
    @inline(__always)
    func current() -> ThreadCounters {
        let blocks: ThreadBlocks
        if let raw = pthread_getspecific(Self.key) {
            blocks = Unmanaged<ThreadBlocks>.fromOpaque(raw).takeUnretainedValue()
            if blocks.lastOwner == owner, let last = blocks.last { return last }
        } else {
            blocks = ThreadBlocks()
            // Retained for the thread's life (a few bytes per thread).
            pthread_setspecific(Self.key, Unmanaged.passRetained(blocks).toOpaque())
        }
        return switchBlock(blocks)
    }

    private func switchBlock(_ blocks: ThreadBlocks) -> ThreadCounters {
        if let previous = blocks.last { blocks.others.append((blocks.lastOwner, previous)) }
        let block: ThreadCounters
        if let index = blocks.others.firstIndex(where: { $0.owner == owner }) {
            block = blocks.others.remove(at: index).block
        } else {
            block = ThreadCounters()
            all.withLock { $0.append(block) }
        }
        blocks.lastOwner = owner
        blocks.last = block
        return block
    }

    /// Every slot summed, in one pass under the lock.
    func sums() -> [Int] {
        all.withLock { blocks in
            var totals = [Int](repeating: 0, count: ThreadCounters.Layout.count)
            for block in blocks {
                for slot in 0..<totals.count { totals[slot] += block.value(slot) }
            }
            return totals
        }
    }
}
