/// What the upstream said to one attempt at inserting a batch, reduced to what a delivery decision needs.
public enum UpstreamAnswer: Sendable, Hashable {
    /// An HTTP response; `exceptionCode` is the `Code: N` of a ClickHouse error body, if there is one.
    case response(status: Int, exceptionCode: Int?)
    /// No complete response.
    case failure(TransportFailure)

    public var isSuccess: Bool {
        if case .response(let status, _) = self { return (200..<300).contains(status) }
        return false
    }
}

/// Why a transfer produced no response (the upstream client's error kinds, without the client).
public enum TransportFailure: Sendable, Hashable {
    /// Not connected: nothing was sent.
    case connect
    case timeout
    /// The connection broke after the request was (possibly) sent.
    case transport
    /// Cancelled by the proxy itself (shutdown).
    case cancelled
}

/// What to do with a batch after one attempt (docs/delivery.md).
public enum DeliveryDecision: Sendable, Hashable {
    /// ClickHouse took it.
    case landed
    /// Try the same bytes again after this long.
    case retry(after: Duration)
    /// ClickHouse refused it for its data: retrying cannot help, but halving the batch can find the rows at fault.
    case split
    /// Refused for good, or the retries ran out: the rows go to the dead-letter folder.
    case deadLetter
    /// Not delivered, but safe in the spool: leave it there for the next start (shutdown).
    case deferToSpool
}

/// The delivery rules of one batch, as a pure function of the answers it got: classify an answer, retry with
/// jittered exponential backoff, split, dead-letter or defer. No clock and no randomness of its own: the
/// caller passes the attempt number and a jitter value in 0...1.
public struct DeliveryPolicy: Sendable, Hashable {
    /// Retries after the first attempt (the table rule's `retries`).
    public var retries: Int
    /// The first backoff (the table rule's `retry_backoff`); doubles with every retry.
    public var backoffBase: Duration
    /// The longest backoff, so a recovered upstream is used again within seconds.
    public var backoffCap: Duration
    /// With a spool the rows are safe on disk: an unavailable or overloaded upstream is retried until it takes them,
    /// or until shutdown leaves them in the spool, instead of going to the dead-letter folder after `retries`.
    /// Refusals from a server that is up (permanent or unknown errors) are dead-lettered either way.
    public var retryUntilDelivered: Bool

    public static let defaultBackoffCap: Duration = .seconds(10)

    public init(retries: Int, backoffBase: Duration, backoffCap: Duration = defaultBackoffCap, retryUntilDelivered: Bool) {
        self.retries = retries
        self.backoffBase = backoffBase
        self.backoffCap = backoffCap
        self.retryUntilDelivered = retryUntilDelivered
    }

    public init(rule: TableRule, retryUntilDelivered: Bool) {
        self.init(retries: rule.retries, backoffBase: rule.retryBackoff, retryUntilDelivered: retryUntilDelivered)
    }

    /// ClickHouse error codes that mean "too much at once", not "wrong data": retried, and counted against the
    /// server's breaker. 216 (a query with the same id is still running): a batch sent again while its first
    /// attempt still runs upstream waits for it to finish (docs/spool-and-acks.md, "Exactly once").
    public static let overloadCodes: Set<Int> = [252, 202, 159, 209, 241, 216]

    /// ClickHouse error codes that say the data itself is wrong: retrying the same bytes cannot help, but
    /// splitting the batch finds the rows at fault.
    public static let dataErrorCodes: Set<Int> = [
        6, 25, 26, 27, 32, 33, 38, 41, 53, 62, 69, 70, 72, 73, 76, 84, 108, 117, 130, 131, 321, 349,
    ]

    /// ClickHouse error codes that are about the statement, the table or the account, the same for every row:
    /// neither retrying nor splitting can help, so the batch is dead-lettered at once (unknown column, table or
    /// database, a wrong password, access denied, readonly, an unknown setting, ...).
    public static let permanentCodes: Set<Int> = [
        1, 8, 10, 16, 36, 44, 46, 47, 48, 50, 60, 81, 115, 164, 192, 193, 194, 195, 291, 452, 497, 516,
    ]

    /// ClickHouse error codes for a server that cannot serve right now (network, ZooKeeper, a replica gone
    /// read-only): retried like a connection failure, and counted against the server's breaker.
    public static let unavailableCodes: Set<Int> = [210, 225, 242, 319, 394, 999]

    /// What an answer says, read from ClickHouse's exception code first and from the HTTP status only where there is
    /// no code: 18.16 answers parse errors with status 500, so a status alone says nothing (docs/delivery.md).
    public enum Reading: Sendable, Hashable {
        case success
        /// Wrong data: split to find the rows at fault.
        case dataError
        /// Wrong statement, table or account: dead-letter at once.
        case permanent
        /// Too much at once: retry later; counts against the breaker.
        case overload
        /// No answer, a timeout, or a server (or something in front of it) that cannot serve: retry; counts against
        /// the breaker.
        case unavailable
        /// A ClickHouse error of no known kind: retried `retries` times, then dead-lettered (even with a spool: the
        /// server is up and said no). Does not count against the breaker.
        case otherError
        /// The proxy itself gave up (shutdown).
        case cancelled
    }

    public static func read(_ answer: UpstreamAnswer) -> Reading {
        switch answer {
        case .response(let status, _) where (200..<300).contains(status):
            return .success
        case .response(let status, let code?):
            if dataErrorCodes.contains(code) { return .dataError }
            if permanentCodes.contains(code) { return .permanent }
            if overloadCodes.contains(code) { return .overload }
            if unavailableCodes.contains(code) { return .unavailable }
            return status >= 500 || status == 408 || status == 429 ? .otherError : .permanent
        case .response(let status, nil):
            if status == 429 { return .overload }
            if status == 408 || status >= 500 { return .unavailable }
            return .permanent
        case .failure(.cancelled):
            return .cancelled
        case .failure:
            return .unavailable
        }
    }

    /// Whether an error response refuses the rows' identity rather than their data (`RefusalKind`): sending the
    /// same bytes with the same credentials again cannot help.
    public static func refusesTheIdentity(_ answer: UpstreamAnswer) -> Bool {
        guard case .response(_, let code?) = answer else { return false }
        return RefusalKind.identityCodes.contains(code)
    }

    /// Whether an error response is about the data (its code is one of `dataErrorCodes`).
    public static func isAboutTheData(_ answer: UpstreamAnswer) -> Bool {
        read(answer) == .dataError
    }

    /// Whether an answer that is not a success may succeed if the same bytes are sent again.
    public static func isRetryable(_ answer: UpstreamAnswer) -> Bool {
        switch read(answer) {
        case .overload, .unavailable, .otherError: return true
        case .success, .dataError, .permanent, .cancelled: return false
        }
    }

    /// Whether the answer says the server is in trouble, as its circuit breaker and `/health` count it: transport
    /// failures, timeouts, overload and unavailability. A refusal of the data, the statement or the credentials
    /// comes from a healthy server and counts as a success.
    public static func countsAgainstServer(_ answer: UpstreamAnswer) -> Bool {
        switch read(answer) {
        case .overload, .unavailable: return true
        case .success, .dataError, .permanent, .otherError, .cancelled: return false
        }
    }

    /// The decision after attempt number `attempt` (0 for the first) got `answer`. `closing`: the proxy is
    /// shutting down, so a spooled batch that already used its retries is left for the next start.
    public func decide(_ answer: UpstreamAnswer, attempt: Int, closing: Bool, jitter: Double) -> DeliveryDecision {
        switch Self.read(answer) {
        case .success:
            return .landed
        case .cancelled:
            return retryUntilDelivered ? .deferToSpool : .deadLetter
        case .dataError:
            return .split
        case .permanent:
            return .deadLetter
        case .otherError:
            if attempt >= retries { return .deadLetter }
        case .overload, .unavailable:
            if retryUntilDelivered {
                if closing && attempt >= retries { return .deferToSpool }
            } else if attempt >= retries {
                return .deadLetter
            }
        }
        return .retry(after: Self.backoff(base: backoffBase, attempt: attempt, cap: backoffCap, jitter: jitter))
    }

    /// base * 2^attempt, capped at `cap`, with "equal jitter": between half and all of it (`jitter` in 0...1
    /// picks where).
    public static func backoff(base: Duration, attempt: Int, cap: Duration = defaultBackoffCap, jitter: Double)
        -> Duration
    {
        var exponential = base.seconds
        for _ in 0..<min(max(attempt, 0), 40) {
            exponential *= 2
            if exponential >= cap.seconds { break }
        }
        exponential = min(exponential, cap.seconds)
        let unit = min(max(jitter, 0), 1)
        return .seconds(exponential / 2 + unit * exponential / 2)
    }

    /// What the adaptive strategy learns from one attempt: ok, struggling (overload, timeouts: grow batches),
    /// or failed.
    public static func feedback(_ answer: UpstreamAnswer) -> FlushResult {
        switch answer {
        case .response(let status, _) where (200..<300).contains(status):
            return .ok
        case .response(let status, let code):
            let overloaded = status == 503 || status == 429 || code.map(overloadCodes.contains) == true
            return overloaded ? .struggling : .failed
        case .failure(let failure):
            return failure == .timeout ? .struggling : .failed
        }
    }
}
