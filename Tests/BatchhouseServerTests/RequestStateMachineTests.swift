import BatchhouseCore
import BatchhouseEngine
import BatchhouseUpstream
import NIOCore
import NIOHTTP1
import Testing

@testable import BatchhouseServer

/// The connection state machine alone: request parts in, actions out, no channel and no engine.
@Suite struct RequestStateMachineTests {
    typealias Machine = RequestHandler.StateMachine

    static func head(_ method: HTTPMethod, _ uri: String, _ headers: [(String, String)] = []) -> HTTPRequestHead {
        HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: HTTPHeaders(headers))
    }

    static let insertQuery = "/?query=INSERT%20INTO%20t%20FORMAT%20TSV"

    @Test func localEndpointsAreAnsweredWhenTheRequestEnds() {
        var machine = Machine()
        guard case .none = machine.receivedHead(Self.head(.GET, "/ping"), maxRequestBody: 1 << 20) else {
            Issue.record("nothing before the end")
            return
        }
        guard case .respondLocal(.ping, _) = machine.receivedEnd() else {
            Issue.record("expected the local answer")
            return
        }
        guard case .idle = machine.state else { Issue.record("back to idle"); return }
    }

    @Test func aGetStreamsToClickHouseAndEndsIdle() {
        var machine = Machine()
        guard case .startPassthrough(_, nil, false) = machine.receivedHead(Self.head(.GET, "/?query=SELECT%201"), maxRequestBody: 100)
        else {
            Issue.record("a GET passes through at its head")
            return
        }
        #expect(machine.isPassthrough)
        guard case .finishPassthroughBody = machine.receivedEnd() else { Issue.record("finish the body"); return }
        let finished = machine.passthroughFinished()
        #expect(finished?.requestEnded == true)
        guard case .idle = machine.state else { Issue.record("back to idle"); return }
    }

    @Test func aSessionsInsertStreamsAtItsHeadUnheld() {
        var machine = Machine()
        let head = Self.head(.POST, Self.insertQuery + "&session_id=s1", [("Content-Length", "4")])
        guard case .startPassthrough(_, nil, false) = machine.receivedHead(head, maxRequestBody: 100) else {
            Issue.record("a session's request is streamed at its head, not held for classification")
            return
        }
        guard case .forwardBody = machine.receivedBody(ByteBuffer(string: "1\t2\n")) else {
            Issue.record("its body streams as it comes")
            return
        }
    }

    /// With the server's registry of sessions: an INSERT of a session with no state is held and batched like any
    /// other; once a SET went through the session, or while a request of it runs upstream, its requests stream;
    /// a request of a session whose INSERT the proxy holds gets ClickHouse's SESSION_IS_LOCKED.
    @Test func aSessionsInsertIsBatchedUntilTheSessionHoldsState() {
        let sessions = SessionRegistry()
        var first = Machine()
        first.sessions = sessions
        let insert = Self.head(.POST, Self.insertQuery + "&session_id=s1", [("Content-Length", "4")])
        guard case .none = first.receivedHead(insert, maxRequestBody: 100) else {
            Issue.record("an INSERT of a session without state is held like any INSERT")
            return
        }
        var second = Machine()
        second.sessions = sessions
        guard case .respondError(let error, _, close: true) = second.receivedHead(insert, maxRequestBody: 100) else {
            Issue.record("a concurrent request of the held session is refused as ClickHouse would")
            return
        }
        #expect(error.code == 373 && error.name == "SESSION_IS_LOCKED")
        // `answered` comes after the write, when a pipelined request of another session may hold its own already.
        first.answered(at: .uptimeNanoseconds(1))
        #expect(sessions.count == 1, "only the answer's start releases the hold")
        first.answering()
        #expect(sessions.count == 0, "an idle session without state is not remembered")
        // A SET through the session: streamed (its statement is in the URL) and the session holds state from then on.
        var set = Machine()
        set.sessions = sessions
        let setHead = Self.head(.POST, "/?session_id=s1&query=SET%20max_threads%3D1", [("Content-Length", "0")])
        guard case .startPassthrough = set.receivedHead(setHead, maxRequestBody: 100) else {
            Issue.record("SET streams")
            return
        }
        #expect(sessions.isStateful("s1"))
        _ = set.passthroughFinished()
        #expect(sessions.count == 1, "a session with state is remembered")
        var later = Machine()
        later.sessions = sessions
        guard case .startPassthrough = later.receivedHead(insert, maxRequestBody: 100) else {
            Issue.record("an INSERT of a session with state streams")
            return
        }
        // session_check asks ClickHouse about the session itself: streamed whatever the session holds.
        var checked = Machine()
        checked.sessions = sessions
        let check = Self.head(.POST, Self.insertQuery + "&session_id=s2&session_check=1", [("Content-Length", "4")])
        guard case .startPassthrough = checked.receivedHead(check, maxRequestBody: 100) else {
            Issue.record("session_check streams")
            return
        }
    }

    @Test func aPostWithoutALengthGets411AndTheConnectionCloses() {
        var machine = Machine()
        guard case .respondError(let error, _, close: true) = machine.receivedHead(Self.head(.POST, "/"), maxRequestBody: 100)
        else {
            Issue.record("411 expected")
            return
        }
        #expect(error.status == 411)
        guard case .none = machine.receivedBody(ByteBuffer(string: "ignored")) else { Issue.record("dropped"); return }
        guard case .close = machine.receivedEnd() else { Issue.record("closes after the body"); return }
    }

    @Test func expectContinueIsAnsweredAtTheHead() {
        var machine = Machine()
        let head = Self.head(.POST, Self.insertQuery, [("Content-Length", "4"), ("Expect", "100-continue")])
        guard case .sendContinue = machine.receivedHead(head, maxRequestBody: 100) else {
            Issue.record("100 Continue expected")
            return
        }
    }

    @Test func anInsertIsBufferedAcrossPartsAndHandedToTheIntakeWhole() {
        var machine = Machine()
        _ = machine.receivedHead(Self.head(.POST, Self.insertQuery, [("Content-Length", "8")]), maxRequestBody: 100)
        guard case .none = machine.receivedBody(ByteBuffer(string: "1\t2\n")) else { Issue.record("buffer"); return }
        guard case .none = machine.receivedBody(ByteBuffer(string: "3\t4\n")) else { Issue.record("buffer"); return }
        guard case .intake(let request) = machine.receivedEnd() else {
            Issue.record("the intake gets the request")
            return
        }
        #expect(String(buffer: request.body) == "1\t2\n3\t4\n")
        #expect(request.statement?.table == "t")
        #expect(request.statement?.format == .tabSeparated)
        #expect(request.parameters.query == "INSERT INTO t FORMAT TSV")
    }

    @Test func aBodyThatIsNotAnInsertStreamsWithWhatWasRead() {
        var machine = Machine()
        _ = machine.receivedHead(Self.head(.POST, "/", [("Content-Length", "20")]), maxRequestBody: 100)
        guard case .startPassthrough(_, let initial?, false) = machine.receivedBody(ByteBuffer(string: "SELECT 1 FORMAT TSV\n"))
        else {
            Issue.record("passthrough with the body read so far")
            return
        }
        #expect(String(buffer: initial) == "SELECT 1 FORMAT TSV\n")
        guard case .forwardBody = machine.receivedBody(ByteBuffer(string: "more")) else { Issue.record("forward"); return }
    }

    @Test func anInsertOverTheBodyLimitGets413AndIsDropped() {
        var machine = Machine()
        _ = machine.receivedHead(Self.head(.POST, Self.insertQuery, [("Content-Length", "64")]), maxRequestBody: 16)
        guard case .respondError(let error, _, close: true) = machine.receivedBody(ByteBuffer(repeating: 0x31, count: 32))
        else {
            Issue.record("413 expected")
            return
        }
        #expect(error.status == 413)
        #expect(error.code == 307)
        guard case .none = machine.receivedBody(ByteBuffer(repeating: 0x31, count: 32)) else { Issue.record("drop"); return }
        guard case .close = machine.receivedEnd() else { Issue.record("close"); return }
    }

    @Test(arguments: [
        // A modern ClickHouse decodes bz2 and snappy; the proxy does not.
        [("Content-Length", "1"), ("Content-Encoding", "bz2")],
        // ClickHouse 18.16 decodes exactly `gzip` and `deflate` and refuses these with Code 89: it answers them.
        [("Content-Length", "1"), ("Content-Encoding", "identity")],
        [("Content-Length", "1"), ("Content-Encoding", "x-gzip")],
        [("Content-Length", "1"), ("Content-Encoding", "GZIP")],
        [("Content-Length", "1"), ("Content-Type", "Multipart/form-data; boundary=x")],
    ])
    func bodiesTheProxyCannotReadPassThroughAtTheHead(headers: [(String, String)]) {
        var machine = Machine()
        guard case .startPassthrough = machine.receivedHead(Self.head(.POST, Self.insertQuery, headers), maxRequestBody: 100)
        else {
            Issue.record("passthrough expected")
            return
        }
    }

    @Test func decompressOneIsDecodedNotPassedThrough() {
        // Its compressed blocks are decoded as they arrive (EncodedBodyStateMachineTests).
        var machine = Machine()
        let head = Self.head(.POST, Self.insertQuery + "&decompress=1", [("Content-Length", "1")])
        guard case .none = machine.receivedHead(head, maxRequestBody: 100) else {
            Issue.record("buffered expected")
            return
        }
        guard case .buffering = machine.state else { Issue.record("buffering"); return }
    }

    @Test func theIntakesAnswerIsWrittenAndAPassthroughDecisionReplaysTheBody() {
        var machine = Machine()
        _ = machine.receivedHead(Self.head(.POST, Self.insertQuery, [("Content-Length", "4")]), maxRequestBody: 100)
        _ = machine.receivedBody(ByteBuffer(string: "1\t2\n"))
        _ = machine.receivedEnd()
        guard case .startPassthrough(_, let body?, true) = machine.intakeDecided(.passthrough) else {
            Issue.record("the whole body goes upstream")
            return
        }
        #expect(String(buffer: body) == "1\t2\n")

        var answered = Machine()
        _ = answered.receivedHead(Self.head(.POST, Self.insertQuery, [("Content-Length", "4")]), maxRequestBody: 100)
        _ = answered.receivedBody(ByteBuffer(string: "1\t2\n"))
        _ = answered.receivedEnd()
        guard case .respond(.accepted(rows: 1, bytes: 4, ack: .enqueued), _) =
            answered.intakeDecided(.answer(.accepted(rows: 1, bytes: 4, ack: .enqueued)))
        else {
            Issue.record("respond expected")
            return
        }
        guard case .idle = answered.state else { Issue.record("idle"); return }
    }

    @Test func aWaitingInsertIsAnsweredWhenItsAckArrivesAndOnlyThen() {
        var machine = Machine()
        guard case .none = machine.ackArrived(.accepted(rows: 1, bytes: 1, ack: .flushed)) else {
            Issue.record("no ack is expected while idle")
            return
        }
        _ = machine.receivedHead(Self.head(.POST, Self.insertQuery, [("Content-Length", "4")]), maxRequestBody: 100)
        _ = machine.receivedBody(ByteBuffer(string: "1\t2\n"))
        _ = machine.receivedEnd()
        guard case .none = machine.intakeDecided(.awaitBatch(token: 7)) else { Issue.record("wait"); return }
        guard case .awaitingAck = machine.state else { Issue.record("awaiting"); return }
        guard case .respond(.accepted(_, _, ack: .flushed), _) = machine.ackArrived(.accepted(rows: 1, bytes: 4, ack: .flushed))
        else {
            Issue.record("respond with the ack")
            return
        }
        guard case .none = machine.ackArrived(.accepted(rows: 1, bytes: 4, ack: .flushed)) else {
            Issue.record("a second ack is ignored")
            return
        }
    }

    /// A new identity's INSERT waits for ClickHouse's word on its credentials like any other ack.
    @Test func anInsertWaitingForItsCredentialsIsAnsweredWithTheOutcome() {
        var machine = Machine()
        _ = machine.receivedHead(Self.head(.POST, Self.insertQuery, [("Content-Length", "4")]), maxRequestBody: 100)
        _ = machine.receivedBody(ByteBuffer(string: "1\t2\n"))
        _ = machine.receivedEnd()
        guard case .none = machine.intakeDecided(.awaitVerification) else { Issue.record("wait"); return }
        guard case .awaitingAck = machine.state else { Issue.record("awaiting"); return }
        let refusal = UpstreamResponse(status: 401, headers: [], body: ByteBuffer(string: "Code: 193"))
        guard case .respond(.relayed(let relayed), _) = machine.ackArrived(.relayed(refusal)), relayed.status == 401 else {
            Issue.record("respond with ClickHouse's refusal")
            return
        }
        guard case .idle = machine.state else { Issue.record("idle"); return }
    }

    @Test func aClosedConnectionCancelsItsPassthroughOnly() {
        var idle = Machine()
        guard case .none = idle.channelClosed() else { Issue.record("nothing to cancel"); return }
        var streaming = Machine()
        _ = streaming.receivedHead(Self.head(.GET, "/?query=SELECT%201"), maxRequestBody: 100)
        guard case .cancelPassthrough = streaming.channelClosed() else { Issue.record("cancel"); return }
    }

    @Test func anUpstreamAnswerBeforeTheBodyEndedDropsTheRestAndCloses() {
        var machine = Machine()
        _ = machine.receivedHead(Self.head(.POST, "/", [("Content-Length", "100")]), maxRequestBody: 1000)
        _ = machine.receivedBody(ByteBuffer(string: "SELECT 1 FORMAT TSV\n"))
        #expect(machine.passthroughFinished()?.requestEnded == false)
        guard case .none = machine.receivedBody(ByteBuffer(string: "rest")) else { Issue.record("drop"); return }
        guard case .close = machine.receivedEnd() else { Issue.record("close"); return }
    }
}
