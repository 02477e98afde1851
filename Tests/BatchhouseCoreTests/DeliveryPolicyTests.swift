import Testing

@testable import BatchhouseCore

@Suite struct DeliveryPolicyTests {
    /// Without a spool: 3 retries, 200 ms first backoff (the table rule's defaults).
    let withoutSpool = DeliveryPolicy(retries: 3, backoffBase: .milliseconds(200), retryUntilDelivered: false)
    /// With a spool: the same numbers, retried until delivered.
    let withSpool = DeliveryPolicy(retries: 3, backoffBase: .milliseconds(200), retryUntilDelivered: true)

    static func error(_ status: Int, _ code: Int? = nil) -> UpstreamAnswer {
        .response(status: status, exceptionCode: code)
    }

    /// A duration in milliseconds, rounded to the microsecond (backoffs are computed in floating point).
    static func ms(_ duration: Duration) -> Double {
        (duration.seconds * 1_000_000).rounded() / 1000
    }

    /// The backoff of a `.retry` decision in milliseconds, nil for any other decision.
    static func retryMilliseconds(_ decision: DeliveryDecision) -> Double? {
        if case .retry(let after) = decision { return ms(after) }
        return nil
    }

    // MARK: Classification

    @Test(arguments: [200, 201, 204, 299])
    func successIsLandedWhateverTheAttempt(status: Int) {
        for policy in [withoutSpool, withSpool] {
            for attempt in [0, 3, 10] {
                #expect(policy.decide(Self.error(status), attempt: attempt, closing: false, jitter: 0.5) == .landed)
                #expect(policy.decide(Self.error(status), attempt: attempt, closing: true, jitter: 0.5) == .landed)
            }
        }
    }

    /// ClickHouse 18.16 answers data errors with status 500; newer servers with 400. Either way: split.
    @Test(arguments: [(500, 27), (500, 53), (400, 27), (400, 26), (500, 6), (500, 117)])
    func dataErrorsAreSplitNotRetried(status: Int, code: Int) {
        let answer = Self.error(status, code)
        #expect(DeliveryPolicy.isAboutTheData(answer))
        #expect(!DeliveryPolicy.isRetryable(answer))
        for policy in [withoutSpool, withSpool] {
            #expect(policy.decide(answer, attempt: 0, closing: false, jitter: 0) == .split)
            // Even after the retries ran out, and while closing: the data is wrong, halving finds the rows.
            #expect(policy.decide(answer, attempt: 7, closing: true, jitter: 0) == .split)
        }
    }

    @Test(arguments: [(404, 60), (401, 193), (403, 497), (400, 62_000), (400, -1)])
    func clientErrorsNotAboutTheDataAreDeadLetteredAtOnce(status: Int, code: Int) {
        let answer = Self.error(status, code == -1 ? nil : code)
        #expect(!DeliveryPolicy.isAboutTheData(answer))
        #expect(!DeliveryPolicy.isRetryable(answer))
        for policy in [withoutSpool, withSpool] {
            #expect(policy.decide(answer, attempt: 0, closing: false, jitter: 0) == .deadLetter)
        }
    }

    @Test func serverErrorsRetryWithBackoffThenDeadLetterWithoutSpool() {
        for answer in [Self.error(500), Self.error(503), Self.error(502, 210), UpstreamAnswer.failure(.connect),
            .failure(.timeout), .failure(.transport)]
        {
            #expect(DeliveryPolicy.isRetryable(answer), "\(answer)")
            let backoffs = (0..<3).map {
                Self.retryMilliseconds(withoutSpool.decide(answer, attempt: $0, closing: false, jitter: 0))
            }
            #expect(backoffs == [100, 200, 400], "half of 200 ms * 2^n with jitter 0, for \(answer)")
            #expect(withoutSpool.decide(answer, attempt: 3, closing: false, jitter: 0) == .deadLetter)
            #expect(withoutSpool.decide(answer, attempt: 3, closing: true, jitter: 0) == .deadLetter)
        }
    }

    @Test func zeroRetriesDeadLetterAfterTheFirstAttempt() {
        let policy = DeliveryPolicy(retries: 0, backoffBase: .milliseconds(200), retryUntilDelivered: false)
        #expect(policy.decide(Self.error(503), attempt: 0, closing: false, jitter: 0) == .deadLetter)
        #expect(policy.decide(.failure(.timeout), attempt: 0, closing: false, jitter: 0) == .deadLetter)
    }

    @Test func withSpoolFailuresAreRetriedPastRetriesWhileNotClosing() {
        for answer in [Self.error(503), UpstreamAnswer.failure(.connect), .failure(.timeout)] {
            #expect(Self.retryMilliseconds(withSpool.decide(answer, attempt: 2, closing: false, jitter: 0)) == 400)
            #expect(Self.retryMilliseconds(withSpool.decide(answer, attempt: 3, closing: false, jitter: 0)) == 800)
            #expect(Self.retryMilliseconds(withSpool.decide(answer, attempt: 4, closing: false, jitter: 1)) == 3200)
            // Far past the retries: still retrying, at the capped backoff.
            #expect(Self.retryMilliseconds(withSpool.decide(answer, attempt: 50, closing: false, jitter: 1)) == 10_000)
            #expect(Self.retryMilliseconds(withSpool.decide(answer, attempt: 500, closing: false, jitter: 0)) == 5000)
        }
    }

    @Test func withSpoolClosingDefersOnceTheRetriesAreUsed() {
        for answer in [Self.error(500), UpstreamAnswer.failure(.connect), .failure(.transport)] {
            // While closing, the retries a batch still has are used.
            #expect(Self.retryMilliseconds(withSpool.decide(answer, attempt: 0, closing: true, jitter: 0)) == 100)
            #expect(Self.retryMilliseconds(withSpool.decide(answer, attempt: 2, closing: true, jitter: 0)) == 400)
            // Then the rows are left in the spool, never dead-lettered.
            #expect(withSpool.decide(answer, attempt: 3, closing: true, jitter: 0) == .deferToSpool)
            #expect(withSpool.decide(answer, attempt: 40, closing: true, jitter: 0) == .deferToSpool)
        }
    }

    @Test func cancelledDefersWithSpoolAndDeadLettersWithout() {
        let cancelled = UpstreamAnswer.failure(.cancelled)
        #expect(!DeliveryPolicy.isRetryable(cancelled))
        for attempt in [0, 5] {
            for closing in [false, true] {
                #expect(withSpool.decide(cancelled, attempt: attempt, closing: closing, jitter: 0) == .deferToSpool)
                #expect(withoutSpool.decide(cancelled, attempt: attempt, closing: closing, jitter: 0) == .deadLetter)
            }
        }
    }

    @Test func requestTimeoutAndTooManyRequestsAreRetryable() {
        for status in [408, 429] {
            let answer = Self.error(status)
            #expect(DeliveryPolicy.isRetryable(answer))
            #expect(Self.retryMilliseconds(withoutSpool.decide(answer, attempt: 1, closing: false, jitter: 0)) == 200)
            #expect(withoutSpool.decide(answer, attempt: 3, closing: false, jitter: 0) == .deadLetter)
        }
        for status in [400, 401, 403, 404, 413] {
            #expect(!DeliveryPolicy.isRetryable(Self.error(status)), "\(status)")
        }
        #expect(!DeliveryPolicy.isRetryable(Self.error(200)))
    }

    @Test func isAboutTheDataNeedsADataCode() {
        #expect(!DeliveryPolicy.isAboutTheData(Self.error(500)))
        #expect(!DeliveryPolicy.isAboutTheData(Self.error(500, 252)), "TOO_MANY_PARTS is about load")
        #expect(!DeliveryPolicy.isAboutTheData(.failure(.transport)))
        #expect(DeliveryPolicy.isAboutTheData(Self.error(500, 53)))
        // An overload code is retried, not split.
        #expect(Self.retryMilliseconds(withoutSpool.decide(Self.error(500, 252), attempt: 0, closing: false, jitter: 0)) == 100)
    }

    // MARK: Backoff

    @Test func backoffDoublesFromTheBase() {
        let full = (0..<6).map { Self.ms(DeliveryPolicy.backoff(base: .milliseconds(200), attempt: $0, jitter: 1)) }
        #expect(full == [200, 400, 800, 1600, 3200, 6400])
        let half = (0..<4).map { Self.ms(DeliveryPolicy.backoff(base: .milliseconds(100), attempt: $0, jitter: 0)) }
        #expect(half == [50, 100, 200, 400])
    }

    @Test func backoffIsCappedAtTenSeconds() {
        #expect(DeliveryPolicy.defaultBackoffCap == .seconds(10))
        #expect(Self.ms(DeliveryPolicy.backoff(base: .milliseconds(200), attempt: 6, jitter: 1)) == 10_000, "12.8 s capped")
        #expect(Self.ms(DeliveryPolicy.backoff(base: .milliseconds(200), attempt: 6, jitter: 0)) == 5000)
        #expect(Self.ms(DeliveryPolicy.backoff(base: .milliseconds(200), attempt: 1_000_000, jitter: 1)) == 10_000)
        #expect(Self.ms(DeliveryPolicy.backoff(base: .seconds(60), attempt: 0, jitter: 1)) == 10_000, "even the first")
        #expect(
            Self.ms(DeliveryPolicy.backoff(base: .milliseconds(200), attempt: 3, cap: .seconds(1), jitter: 1)) == 1000)
        // A negative attempt counts as the first.
        #expect(Self.ms(DeliveryPolicy.backoff(base: .milliseconds(200), attempt: -3, jitter: 1)) == 200)
    }

    @Test func jitterPicksBetweenHalfAndAll() {
        func at(_ jitter: Double) -> Double {
            Self.ms(DeliveryPolicy.backoff(base: .milliseconds(400), attempt: 1, jitter: jitter))
        }
        #expect(at(0) == 400)
        #expect(at(1) == 800)
        #expect(at(0.5) == 600)
        #expect(at(0.25) == 500)
        #expect(at(-2) == 400, "clamped to 0")
        #expect(at(7) == 800, "clamped to 1")
    }

    @Test func policyFromTheTableRule() {
        let rule = TableRule(retries: 7, retryBackoff: .milliseconds(50))
        let policy = DeliveryPolicy(rule: rule, retryUntilDelivered: true)
        #expect(policy.retries == 7)
        #expect(policy.backoffBase == .milliseconds(50))
        #expect(policy.backoffCap == .seconds(10))
        #expect(policy.retryUntilDelivered)
        #expect(Self.retryMilliseconds(policy.decide(Self.error(503), attempt: 2, closing: false, jitter: 1)) == 200)
        #expect(policy.decide(Self.error(503), attempt: 7, closing: true, jitter: 1) == .deferToSpool)
        #expect(Self.retryMilliseconds(policy.decide(Self.error(503), attempt: 6, closing: true, jitter: 1)) == 3200)
    }

    // MARK: Feedback

    @Test func overloadAndTimeoutsAreStruggling() {
        #expect(DeliveryPolicy.feedback(Self.error(503)) == .struggling)
        #expect(DeliveryPolicy.feedback(Self.error(429)) == .struggling)
        #expect(DeliveryPolicy.feedback(Self.error(500, 252)) == .struggling, "TOO_MANY_PARTS")
        for code in DeliveryPolicy.overloadCodes {
            #expect(DeliveryPolicy.feedback(Self.error(500, code)) == .struggling, "code \(code)")
        }
        #expect(DeliveryPolicy.feedback(.failure(.timeout)) == .struggling)
    }

    @Test func successIsOkAndEverythingElseFailed() {
        #expect(DeliveryPolicy.feedback(Self.error(200)) == .ok)
        #expect(DeliveryPolicy.feedback(Self.error(204)) == .ok)
        for answer in [Self.error(500), Self.error(500, 53), Self.error(404, 60), Self.error(401, 193),
            Self.error(502), UpstreamAnswer.failure(.connect), .failure(.transport), .failure(.cancelled)]
        {
            #expect(DeliveryPolicy.feedback(answer) == .failed, "\(answer)")
        }
    }
}

@Suite struct AnswerReadingPolicyTests {
    static func error(_ status: Int, _ code: Int? = nil) -> UpstreamAnswer {
        .response(status: status, exceptionCode: code)
    }

    @Test func theCodeDecidesNotTheStatus() {
        #expect(DeliveryPolicy.read(Self.error(500, 27)) == .dataError, "18.16: parse errors are status 500")
        #expect(DeliveryPolicy.read(Self.error(400, 27)) == .dataError)
        #expect(DeliveryPolicy.read(Self.error(500, 16)) == .permanent, "no such column, status 500 on 18.16")
        #expect(DeliveryPolicy.read(Self.error(404, 60)) == .permanent)
        #expect(DeliveryPolicy.read(Self.error(401, 193)) == .permanent)
        #expect(DeliveryPolicy.read(Self.error(403, 497)) == .permanent)
        #expect(DeliveryPolicy.read(Self.error(500, 164)) == .permanent, "readonly")
        #expect(DeliveryPolicy.read(Self.error(500, 252)) == .overload)
        #expect(DeliveryPolicy.read(Self.error(500, 210)) == .unavailable)
        #expect(DeliveryPolicy.read(Self.error(500, 1001)) == .otherError)
        #expect(DeliveryPolicy.read(Self.error(400, 1001)) == .permanent, "an unknown code with a client status")
        #expect(DeliveryPolicy.read(Self.error(503)) == .unavailable, "no code: something in front of ClickHouse")
        #expect(DeliveryPolicy.read(Self.error(429)) == .overload)
        #expect(DeliveryPolicy.read(Self.error(400)) == .permanent)
        #expect(DeliveryPolicy.read(.failure(.connect)) == .unavailable)
        #expect(DeliveryPolicy.read(.failure(.cancelled)) == .cancelled)
    }

    @Test func onlyUnavailabilityAndOverloadCountAgainstAServer() {
        for answer in [Self.error(500, 27), Self.error(500, 16), Self.error(401, 193), Self.error(500, 1001),
            Self.error(200), UpstreamAnswer.failure(.cancelled)]
        {
            #expect(!DeliveryPolicy.countsAgainstServer(answer), "\(answer)")
        }
        for answer in [Self.error(500, 252), Self.error(500, 241), Self.error(503), Self.error(502),
            Self.error(500, 210), UpstreamAnswer.failure(.connect), .failure(.timeout), .failure(.transport)]
        {
            #expect(DeliveryPolicy.countsAgainstServer(answer), "\(answer)")
        }
    }

    @Test func permanentRefusalsAreDeadLetteredAtOnceWithOrWithoutSpool() {
        for retryUntilDelivered in [false, true] {
            let policy = DeliveryPolicy(retries: 3, backoffBase: .milliseconds(200), retryUntilDelivered: retryUntilDelivered)
            for answer in [Self.error(500, 16), Self.error(500, 81), Self.error(500, 115), Self.error(401, 516)] {
                #expect(policy.decide(answer, attempt: 0, closing: false, jitter: 0) == .deadLetter, "\(answer)")
            }
        }
    }

    @Test func unknownErrorsUseTheirRetriesEvenWithASpool() {
        let policy = DeliveryPolicy(retries: 2, backoffBase: .milliseconds(200), retryUntilDelivered: true)
        let answer = Self.error(500, 1001)
        #expect(policy.decide(answer, attempt: 0, closing: false, jitter: 0) == .retry(after: .milliseconds(100)))
        #expect(policy.decide(answer, attempt: 1, closing: false, jitter: 0) == .retry(after: .milliseconds(200)))
        #expect(policy.decide(answer, attempt: 2, closing: false, jitter: 0) == .deadLetter)
        #expect(policy.decide(Self.error(503), attempt: 2, closing: false, jitter: 0) == .retry(after: .milliseconds(400)))
    }

    @Test func authorizationRefusalsAreRecognised() {
        for code in [192, 193, 194, 516, 497, 164] {
            #expect(DeliveryPolicy.refusesTheIdentity(Self.error(401, code)), "\(code)")
        }
        #expect(RefusalKind(status: 401, code: nil).refusesTheIdentity)
        #expect(!DeliveryPolicy.refusesTheIdentity(Self.error(500, 27)))
        #expect(!DeliveryPolicy.refusesTheIdentity(.failure(.connect)))
    }
}
