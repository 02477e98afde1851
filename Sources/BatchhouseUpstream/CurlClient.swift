import Logging
import NIOCore

/// An HTTP/1.1 client for ClickHouse built on libcurl.
///
/// One dedicated thread drives all transfers through a curl multi handle, which also keeps a cache of
/// keep-alive connections (up to `maxConnections` idle ones). No call into libcurl happens on the
/// caller's thread, so the client is safe to use from event loops and tasks.
public final class CurlClient: Sendable {
    private let driver: CurlMultiThread

    /// - Parameters:
    ///   - maxConnections: how many idle connections the cache keeps (CURLMOPT_MAXCONNECTS). Concurrent
    ///     transfers are not limited by it.
    ///   - idleConnectionTimeout: an idle connection older than this is not reused. Keep it below the
    ///     server's keep-alive timeout (3 s on ClickHouse 18.16, 10 s on current releases), so that a
    ///     request does not race the server closing the connection. libcurl counts whole seconds.
    ///   - logger: failures at debug level; never credentials.
    public init(
        maxConnections: Int = 64,
        idleConnectionTimeout: Duration = .seconds(2),
        logger: Logger = Logger(label: "batchhouse.upstream")
    ) {
        // libcurl reuses a connection while (idle seconds, rounded down) <= CURLOPT_MAXAGE_CONN.
        let seconds = Int(idleConnectionTimeout.components.seconds)
        driver = CurlMultiThread(
            maxConnections: maxConnections,
            maxIdleSeconds: max(0, seconds - 1),
            logger: logger
        )
    }

    /// Shuts the thread down (see ``shutdown()``).
    deinit {
        driver.shutdown()
    }

    /// Sends `request` with its whole body and collects the whole response. Cancelling the task
    /// cancels the transfer (an error of kind `.cancelled`). An HTTP error status is a response, not
    /// an error.
    public func execute(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
        let collector = ResponseCollector()
        let stream = UpstreamStream(
            request: request,
            framing: RequestFraming(method: request.method, bodyLength: request.body?.readableBytes ?? 0),
            delegate: collector,
            driver: driver,
            rewindable: true
        )
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                collector.setContinuation(continuation)
                start(stream)
            }
        } onCancel: {
            stream.cancel()
        }
        return try result.get()
    }

    /// Starts a transfer whose body is written piece by piece and whose response is delivered as it
    /// arrives, with backpressure both ways (see ``UpstreamStream`` and ``UpstreamStreamDelegate``).
    ///
    /// - Parameter requestBodyLength: the body's length (`Content-Length`), or nil when unknown:
    ///   then methods that carry a body send it chunked, and GET, HEAD, DELETE, OPTIONS and TRACE send
    ///   none. `request.body`, if any, is the start of the body.
    ///
    /// After ``shutdown()`` the delegate gets `didFinishWith` `.cancelled` at once, on this thread.
    public func stream(
        _ request: UpstreamRequest,
        requestBodyLength: Int?,
        delegate: any UpstreamStreamDelegate
    ) -> UpstreamStream {
        let stream = UpstreamStream(
            request: request,
            framing: RequestFraming(method: request.method, bodyLength: requestBodyLength),
            delegate: delegate,
            driver: driver,
            rewindable: false
        )
        start(stream)
        return stream
    }

    /// Fails every transfer with `.cancelled`, closes the cached connections and stops the thread;
    /// new transfers fail at once. Waits for the thread unless called from a delegate callback.
    /// Idempotent; `deinit` calls it too.
    public func shutdown() {
        driver.shutdown()
    }

    /// How many easy handles the curl thread made and reused, and how many are idle (tests check the reuse).
    var easyHandleCounts: CurlEasyPool.Counts {
        driver.easyHandleCounts.withLock { $0 }
    }

    private func start(_ stream: UpstreamStream) {
        if !driver.add(stream) {
            stream.finish(UpstreamError(kind: .cancelled, message: "the upstream client was shut down"))
        }
    }
}

/// The delegate behind ``CurlClient/execute(_:)``: buffers the response and resumes the caller.
private final class ResponseCollector: UpstreamStreamDelegate {
    private struct State {
        var continuation: CheckedContinuation<Result<UpstreamResponse, UpstreamError>, Never>?
        var status = 0
        var headers: [(String, String)] = []
        var body = ByteBuffer()
    }

    private let state = Locked(State())

    func setContinuation(_ continuation: CheckedContinuation<Result<UpstreamResponse, UpstreamError>, Never>) {
        state.withLock { $0.continuation = continuation }
    }

    func upstreamStream(_ stream: UpstreamStream, didReceiveHead status: Int, headers: [(String, String)]) {
        state.withLock { state in
            state.status = status
            state.headers = headers
        }
    }

    func upstreamStream(_ stream: UpstreamStream, didReceiveBody bytes: UnsafeRawBufferPointer) -> Bool {
        state.withLock { state in
            _ = state.body.writeBytes(bytes)
        }
        return true
    }

    func upstreamStreamWantsMoreRequestBody(_ stream: UpstreamStream) {}

    func upstreamStream(_ stream: UpstreamStream, didFinishWith error: UpstreamError?) {
        let (continuation, result) = state.withLock { state in
            let result: Result<UpstreamResponse, UpstreamError> =
                if let error { .failure(error) } else {
                    .success(UpstreamResponse(status: state.status, headers: state.headers, body: state.body))
                }
            defer {
                state.continuation = nil
                state.body = ByteBuffer()
            }
            return (state.continuation, result)
        }
        continuation?.resume(returning: result)
    }
}
