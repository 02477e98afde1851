import CCurl
import Dispatch
import Foundation
import Logging

/// One thread that drives a curl multi handle: every easy handle is created, configured, paused,
/// resumed, removed, reset for reuse and freed here. Other threads talk to it only through `inbox` (a locked queue of
/// commands) followed by `curl_multi_wakeup`, which interrupts `curl_multi_poll`.
///
/// Each turn of the loop: take the commands, act on them, let libcurl do its I/O
/// (`curl_multi_perform`), finish the transfers that completed, then sleep in `curl_multi_poll` until
/// a socket is ready, a libcurl timer is due, or a command arrives.
final class CurlMultiThread: Sendable {
    enum Command {
        /// Create the stream's easy handle and add it to the multi handle.
        case add(UpstreamStream)
        /// Look at the stream's flags: resume a paused direction, or cancel.
        case poke(UpstreamStream)
    }

    private struct Inbox {
        var commands: [Command] = []
        /// False once the loop has taken its last commands; later ones are refused.
        var accepting = true
        var shuttingDown = false
        var thread: UInt?
    }

    let multi: CurlMulti
    /// CURLOPT_MAXAGE_CONN for every transfer.
    let maxIdleSeconds: Int
    let logger: Logger
    /// What the curl thread's ``CurlEasyPool`` did, for tests.
    let easyHandleCounts = Locked(CurlEasyPool.Counts())
    private let inbox = Locked(Inbox())
    private let exited = DispatchSemaphore(value: 0)

    init(maxConnections: Int, maxIdleSeconds: Int, logger: Logger) {
        multi = CurlMulti(maxConnections: maxConnections)
        self.maxIdleSeconds = maxIdleSeconds
        self.logger = logger
        let thread = Thread { [self] in
            self.run()
        }
        thread.name = "batchhouse-curl"
        thread.start()
    }

    // MARK: Any thread

    /// Hands a new stream to the curl thread. False when the loop has stopped; the stream was not
    /// touched by it then.
    func add(_ stream: UpstreamStream) -> Bool {
        submit(.add(stream))
    }

    func poke(_ stream: UpstreamStream) {
        _ = submit(.poke(stream))
    }

    private func submit(_ command: Command) -> Bool {
        inbox.withLock { inbox in
            guard inbox.accepting else { return false }
            // Queued commands mean a wakeup is already pending: the loop has not taken them yet.
            let wake = inbox.commands.isEmpty
            inbox.commands.append(command)
            // Under the lock: the loop closes the multi handle only after it stopped accepting.
            if wake { multi.wakeup() }
            return true
        }
    }

    /// Cancels every transfer (their delegates get `.cancelled`) and stops the thread. Waits for it,
    /// except when called on the curl thread itself (from a delegate). Idempotent.
    func shutdown() {
        let onCurlThread = inbox.withLock { inbox -> Bool in
            inbox.shuttingDown = true
            if inbox.accepting { multi.wakeup() }
            return inbox.thread == currentThreadID()
        }
        if !onCurlThread {
            exited.wait()
            // Pass it on: every other shutdown(), concurrent or later, returns too.
            exited.signal()
        }
    }

    // MARK: Curl thread

    private func run() {
        inbox.withLock { $0.thread = currentThreadID() }
        let loop = CurlLoop(multi: multi, pool: CurlEasyPool(counts: easyHandleCounts), logger: logger)
        while true {
            let (commands, shuttingDown) = inbox.withLock { inbox -> ([Command], Bool) in
                defer { inbox.commands.removeAll(keepingCapacity: true) }
                return (inbox.commands, inbox.shuttingDown)
            }
            for command in commands { loop.handle(command) }
            if shuttingDown { break }
            loop.perform()
            loop.poll()
        }
        let error = UpstreamError(kind: .cancelled, message: "the upstream client was shut down")
        loop.removeAll(with: error)
        // Streams added while the active ones were being finished (by their delegates) end here.
        let last = inbox.withLock { inbox -> [Command] in
            inbox.accepting = false
            defer { inbox.commands.removeAll() }
            return inbox.commands
        }
        for case .add(let stream) in last {
            stream.finish(error)
        }
        loop.pool.removeAll()
        // No more wakeups can come (`accepting` is false), so the multi handle can go now; this closes
        // the cached connections.
        multi.close()
        exited.signal()
    }
}

/// The state of the curl thread: the multi handle's transfers, each retained while its easy handle
/// is in the multi (libcurl calls back into it only then), and the idle easy handles.
private final class CurlLoop {
    let multi: CurlMulti
    let pool: CurlEasyPool
    let logger: Logger
    var active: [UnsafeMutableRawPointer: UpstreamStream] = [:]

    init(multi: CurlMulti, pool: CurlEasyPool, logger: Logger) {
        self.multi = multi
        self.pool = pool
        self.logger = logger
    }

    func handle(_ command: CurlMultiThread.Command) {
        switch command {
        case .add(let stream):
            if stream.isCancelRequested {
                stream.finish(UpstreamError(kind: .cancelled, message: "cancelled"))
                return
            }
            guard let easy = stream.makeEasyHandle(from: pool) else { return }
            let code = curl_multi_add_handle(multi.handle, easy.handle)
            guard code == CURLM_OK else {
                let text = String(cString: curl_multi_strerror(code))
                stream.finish(UpstreamError(kind: .transport, message: "curl_multi_add_handle: \(text)"))
                return
            }
            active[easy.handle] = stream
        case .poke(let stream):
            guard let easy = stream.curl.easy, active[easy.handle] === stream else {
                // Not started yet (an execute() cancelled before it began; `add` looks at the flag) or
                // already finished.
                stream.shared.withLock { $0.pokeQueued = false }
                return
            }
            if stream.serviceRequests() {
                remove(easy.handle, with: UpstreamError(kind: .cancelled, message: "cancelled"))
            }
        }
    }

    func perform() {
        var running: Int32 = 0
        let code = curl_multi_perform(multi.handle, &running)
        if code != CURLM_OK {
            logger.error("curl_multi_perform failed", metadata: ["code": "\(code.rawValue)"])
        }
        var queued: Int32 = 0
        while let message = curl_multi_info_read(multi.handle, &queued) {
            guard message.pointee.msg == CURLMSG_DONE, let easy = message.pointee.easy_handle else { continue }
            // Read before remove: the message does not survive curl_multi_remove_handle.
            let result = bh_curl_msg_result(message)
            guard let stream = active[easy] else { continue }
            remove(easy, with: stream.error(for: result), reusable: result == CURLE_OK)
        }
    }

    func poll() {
        // libcurl shortens the wait to its next timer; the upper bound only matters if none is due.
        let code = curl_multi_poll(multi.handle, nil, 0, 1000, nil)
        if code != CURLM_OK {
            logger.error("curl_multi_poll failed", metadata: ["code": "\(code.rawValue)"])
        }
    }

    func removeAll(with error: UpstreamError) {
        for easy in Array(active.keys) {
            remove(easy, with: error)
        }
    }

    /// Takes the transfer out of the multi handle and finishes its stream. With `reusable` (the transfer
    /// succeeded), its easy handle goes back to the pool, otherwise it is freed.
    private func remove(_ easy: UnsafeMutableRawPointer, with error: UpstreamError?, reusable: Bool = false) {
        guard let stream = active.removeValue(forKey: easy) else { return }
        let removed = curl_multi_remove_handle(multi.handle, easy) == CURLM_OK
        if let error {
            logger.debug(
                "upstream transfer failed",
                metadata: ["kind": "\(error.kind)", "error": "\(error.message)"]
            )
        }
        // Held past finish(), which lets go of the stream's reference (and reads the response code first).
        var handle = reusable && removed ? stream.curl.easy : nil
        stream.finish(error)
        pool.recycle(&handle)
    }
}
