import Synchronization

/// The ClickHouse sessions the proxy has seen requests of (docs/request-path.md, "Sessions"). An INSERT in a session
/// is batched like any other only while the session has no state of its own that the INSERT could depend on (no
/// SET, USE or temporary table has gone through it) and no request of it is running upstream (ClickHouse would
/// answer a concurrent one with SESSION_IS_LOCKED). Every other session request streams to ClickHouse at once.
final class SessionRegistry: Sendable {
    private struct Entry {
        /// A request that may change the session's state went through it.
        var stateful = false
        /// Requests of it streaming to ClickHouse now.
        var inFlight = 0
        /// Requests of it the proxy holds while their body arrives (INSERTs it may batch).
        var held = 0
        /// When it was last used, in `clock` ticks: the least recently used go first when the registry is full.
        var used: UInt64 = 0
    }

    private struct State {
        var entries: [String: Entry] = [:]
        var clock: UInt64 = 0
    }

    /// Sessions remembered (only those with state or a request in progress are); beyond it the least recently used
    /// idle ones are forgotten, and an INSERT of a forgotten session with state would be batched without it.
    static let maxEntries = 100_000

    private let state = Mutex(State())

    init() {}

    enum Admission: Equatable {
        /// Buffer it like any request: it may be an INSERT to batch. Call `released` or `began` when it ends.
        case hold
        /// Stream it to ClickHouse at once (call `began`).
        case stream
        /// Another request of the session is held by the proxy: ClickHouse, which would have had that one since its
        /// head, would refuse this one with SESSION_IS_LOCKED, and so does the proxy.
        case locked
    }

    /// What to do with a new request of `session`; `mayHold`: it is a POST that may be a batchable INSERT.
    func admit(_ session: String, mayHold: Bool) -> Admission {
        state.withLock { state in
            state.clock &+= 1
            var entry = state.entries[session] ?? Entry()
            if entry.held > 0 { return .locked }
            guard mayHold, !entry.stateful, entry.inFlight == 0 else { return .stream }
            entry.held += 1
            entry.used = state.clock
            state.entries[session] = entry
            if state.entries.count > Self.maxEntries { Self.prune(&state) }
            return .hold
        }
    }

    /// A held request was answered by the proxy (batched, or refused).
    func released(_ session: String) {
        state.withLock { state in
            guard var entry = state.entries[session] else { return }
            entry.held = max(0, entry.held - 1)
            Self.store(entry, for: session, in: &state)
        }
    }

    /// A held request turned out not to be batchable and streams to ClickHouse now.
    func streams(_ session: String, changesState: Bool?) {
        released(session)
        began(session, changesState: changesState)
    }

    /// A request of `session` starts streaming to ClickHouse; `changesState`: its statement may change the
    /// session's state (nil: not known yet, see `learned`).
    func began(_ session: String, changesState: Bool?) {
        state.withLock { state in
            state.clock &+= 1
            var entry = state.entries[session] ?? Entry()
            entry.inFlight += 1
            entry.used = state.clock
            if changesState == true { entry.stateful = true }
            state.entries[session] = entry
            if state.entries.count > Self.maxEntries { Self.prune(&state) }
        }
    }

    /// The statement of a request that began without a verdict turned out to change the session's state.
    func changedState(_ session: String) {
        state.withLock { state in state.entries[session]?.stateful = true }
    }

    func ended(_ session: String) {
        state.withLock { state in
            guard var entry = state.entries[session] else { return }
            entry.inFlight = max(0, entry.inFlight - 1)
            Self.store(entry, for: session, in: &state)
        }
    }

    /// An idle session without state says nothing an absent one does not: it is forgotten, so the registry holds only
    /// sessions with state or with requests in progress.
    private static func store(_ entry: Entry, for session: String, in state: inout State) {
        if !entry.stateful && entry.inFlight == 0 && entry.held == 0 {
            state.entries[session] = nil
        } else {
            state.entries[session] = entry
        }
    }

    /// Sessions remembered now (for tests).
    var count: Int { state.withLock { $0.entries.count } }

    /// Whether `session` is known to hold state (for tests).
    func isStateful(_ session: String) -> Bool { state.withLock { $0.entries[session]?.stateful == true } }

    private static func prune(_ state: inout State) {
        let idle = state.entries.filter { $0.value.inFlight == 0 && $0.value.held == 0 }.sorted { $0.value.used < $1.value.used }
        for (session, _) in idle.prefix(max(1, state.entries.count - maxEntries * 9 / 10)) {
            state.entries[session] = nil
        }
    }
}
