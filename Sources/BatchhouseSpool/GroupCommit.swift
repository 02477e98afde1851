import Dispatch
import Foundation
import Synchronization

/// The spool's state and its sync thread.
///
/// Group commit: callers of ``Spool/waitDurable(_:)`` queue on their segment; one thread syncs the
/// segment up to its size at that moment and resumes every waiter that sync covers. Waiters that
/// arrive while an fdatasync is running are covered by the next one, so N concurrent waiters cost
/// a handful of fsyncs, not N. The thread sleeps on a semaphore; whoever finds
/// ``SpoolState/syncThreadBusy`` false sets it and signals, and only the thread clears it (right
/// before it sleeps), so the semaphore never counts past one and no wake-up is lost.
final class SpoolCore: Sendable {
    let state: Mutex<SpoolState>
    let directoryFile: OpenFile
    let wakeSyncThread = DispatchSemaphore(value: 0)
    let syncThreadExited = DispatchSemaphore(value: 0)
    /// Some deliveries' marks are not on disk yet: ``Spool/retryUnwrittenMarks()`` takes the lock only then.
    let marksPending = Atomic<Bool>(false)

    init(state: SpoolState, directoryFile: OpenFile) {
        self.state = Mutex(state)
        self.directoryFile = directoryFile
    }

    func startSyncThread() {
        let thread = Thread { [self] in runSyncThread() }
        thread.name = "batchhouse-spool-sync"
        thread.start()
    }

    private func runSyncThread() {
        while true {
            wakeSyncThread.wait()
            rounds: while true {
                switch state.withLock({ $0.nextSyncStep() }) {
                case .idle:
                    break rounds
                case .exit(let waiters):
                    let closed = SpoolError(code: .closed, message: "closed before the chunk was synced")
                    for waiter in waiters { waiter.resume(returning: .failure(closed)) }
                    syncThreadExited.signal()
                    return
                case .sync(let targets):
                    let results = targets.map { target in (target: target, failure: sync(target)) }
                    if results.contains(where: { $0.failure == nil }) { CrashPoint.afterFsync.reach() }
                    let completion = state.withLock { $0.finishSync(results) }
                    for (continuation, result) in completion.resume { continuation.resume(returning: result) }
                    for path in completion.unlink { FileSystem.remove(path) }
                }
            }
        }
    }

    private func sync(_ target: SpoolState.SyncTarget) -> SpoolError? {
        if let failure = FileSystem.syncData(target.file.descriptor) {
            return FileSystem.ioError("fdatasync failed on", target.file.path, failure)
        }
        if target.directory, let failure = FileSystem.sync(directoryFile.descriptor) {
            return FileSystem.ioError("fsync failed on the directory of", target.file.path, failure)
        }
        return nil
    }
}
