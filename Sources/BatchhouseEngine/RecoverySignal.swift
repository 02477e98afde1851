import Synchronization

/// Wakes everything waiting on it at once: retries sleeping out a backoff are woken when a server that was down
/// answers `/ping` again, so delivery resumes within about a second of ClickHouse's return instead of after the
/// longest backoff (docs/delivery.md, "Breakers").
package final class RecoverySignal: Sendable {
    private let waiters = Mutex<[UInt64: CheckedContinuation<Void, Never>]>([:])
    private let nextID = Atomic<UInt64>(0)

    package init() {}

    package func signal() {
        let waiting = waiters.withLock { waiters in
            defer { waiters.removeAll() }
            return Array(waiters.values)
        }
        for waiter in waiting { waiter.resume() }
    }

    /// Returns at the next `signal()`, or when the task is cancelled.
    package func wait() async {
        let id = nextID.add(1, ordering: .relaxed).oldValue
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let cancelled = waiters.withLock { waiters -> Bool in
                    if Task.isCancelled { return true }
                    waiters[id] = continuation
                    return false
                }
                if cancelled { continuation.resume() }
            }
        } onCancel: {
            waiters.withLock { $0.removeValue(forKey: id) }?.resume()
        }
    }
}
