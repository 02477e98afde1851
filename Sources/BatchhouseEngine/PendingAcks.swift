import BatchhouseCore
import Synchronization

/// Requests waiting for their rows' batch (`ack: flushed`, the `immediate` strategy): each gets a token that
/// travels with its rows through the batch, its halves if the batch is split, and the flush report.
package final class PendingAcks: Sendable {
    package typealias Callback = @Sendable (FlushReport.Failure?) -> Void

    private struct State {
        var next: UInt64 = 1
        var waiting: [UInt64: Callback] = [:]
    }
    private let state = Mutex(State())

    package init() {}

    /// A token for a request that will be answered by `callback` (nil failure: its rows landed).
    package func register(_ callback: @escaping Callback) -> UInt64 {
        state.withLock { state in
            let token = state.next
            state.next += 1
            state.waiting[token] = callback
            return token
        }
    }

    /// Forgets a token whose rows never reached a batch (refused at intake).
    package func cancel(_ token: UInt64) {
        _ = state.withLock { $0.waiting.removeValue(forKey: token) }
    }

    /// Answers every request with rows in `report`'s batch, or in a failed part of it (rows whose spool record
    /// could not be read back are in no batch).
    package func resolve(_ report: FlushReport) {
        var tokens = Set(report.batch.contributions.lazy.map(\.token).filter { $0 != 0 })
        for failure in report.failures { tokens.formUnion(failure.part.contributions.lazy.map(\.token).filter { $0 != 0 }) }
        guard !tokens.isEmpty else { return }
        let callbacks: [(UInt64, Callback)] = state.withLock { state in
            tokens.compactMap { token in state.waiting.removeValue(forKey: token).map { (token, $0) } }
        }
        for (token, callback) in callbacks {
            callback(report.failure(for: token))
        }
    }

    package var count: Int { state.withLock { $0.waiting.count } }
}
