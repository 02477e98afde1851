import BatchhouseCore
import BatchhouseEngine
import BatchhouseUpstream
import NIOCore
import NIOHTTP1
import Testing

@testable import BatchhouseServer

/// Bodies in the newer content codings and in `decompress=1`'s compressed blocks, through the connection state
/// machine: decoded while they arrive, classified like any body, and passed through as they came, or decoded
/// without their coding and `decompress`, when they are not batched.
@Suite struct EncodedBodyStateMachineTests {
    typealias Machine = RequestHandler.StateMachine

    static func head(_ uri: String, _ headers: [(String, String)]) -> HTTPRequestHead {
        HTTPRequestHead(version: .http1_1, method: .POST, uri: uri, headers: HTTPHeaders(headers))
    }

    /// Sends `body` in pieces of `piece` bytes, going on after each `decodeMore`; the last action.
    static func send(_ body: [UInt8], piece: Int, to machine: inout Machine) -> Machine.Action {
        var offset = 0
        var action = Machine.Action.none
        while offset < body.count {
            let end = min(offset + piece, body.count)
            action = machine.receivedBody(ByteBuffer(bytes: body[offset..<end]))
            while case .decodeMore = action { action = machine.continueDecoding() }
            if case .none = action {} else { return action }
            offset = end
        }
        action = machine.receivedEnd()
        while case .decodeMore = action { action = machine.continueDecoding() }
        return action
    }

    static let rows = Array((1...200).map { "{\"id\":\($0),\"name\":\"row \($0)\"}\n" }.joined().utf8)
    static let insertQuery = "query=INSERT%20INTO%20db.t%20FORMAT%20JSONEachRow"

    @Test(arguments: [ContentCoding.lz4, .zstd, .br, .xz])
    func aBodyInANewerCodingIsDecodedAndBatched(coding: ContentCoding) {
        for piece in [1, 100, 1 << 20] {
            var machine = Machine()
            let body = BodyCompression.compress(Self.rows, as: coding)
            _ = machine.receivedHead(
                Self.head("/?" + Self.insertQuery, [("Content-Length", "\(body.count)"), ("Content-Encoding", coding.rawValue.uppercased())]),
                maxRequestBody: 1 << 20)
            guard case .intake(let request) = Self.send(body, piece: piece, to: &machine) else {
                Issue.record("\(coding): the intake gets the decoded body")
                continue
            }
            #expect(Array(request.body.readableBytesView) == Self.rows)
            #expect(request.statement?.table == "t")
            #expect(request.coding == nil)
            guard case .intaking(let head, _) = machine.state else { Issue.record("intaking"); continue }
            #expect(head.headers["content-encoding"].isEmpty)
            #expect(head.headers.first(name: "content-length") == String(Self.rows.count))
        }
    }

    @Test func decompressBlocksAreDecodedAndThePassthroughGoesWithoutDecompress() {
        for method in CompressedBlockDecoder.Method.allCases {
            var machine = Machine()
            let body = CompressedBlockEncoder.encode(Self.rows, method: method, blockSize: 1000)
            let uri = "/?decompress=1&" + Self.insertQuery + "&max_threads=2&param_x=%20a"
            _ = machine.receivedHead(Self.head(uri, [("Content-Length", "\(body.count)")]), maxRequestBody: 1 << 20)
            guard case .intake(let request) = Self.send(body, piece: 77, to: &machine) else {
                Issue.record("\(method): the intake gets the decoded body")
                continue
            }
            #expect(Array(request.body.readableBytesView) == Self.rows)
            #expect(request.parameters.decompress == false)
            // The intake passes it through after all: decoded, without `decompress`, the rest byte-exact.
            guard case .startPassthrough(let head, let initial, true) = machine.intakeDecided(.passthrough) else {
                Issue.record("passthrough")
                continue
            }
            #expect(head.uri == "/?" + Self.insertQuery + "&max_threads=2&param_x=%20a")
            #expect(initial.map { Array($0.readableBytesView) } == Self.rows)
        }
    }

    @Test func blocksInsideAContentCodingAreDecodedBoth() {
        var machine = Machine()
        let body = BodyCompression.compress(CompressedBlockEncoder.encode(Self.rows, method: .zstd), as: .lz4)
        _ = machine.receivedHead(
            Self.head("/?" + Self.insertQuery + "&decompress=1", [("Content-Length", "\(body.count)"), ("Content-Encoding", "lz4")]),
            maxRequestBody: 1 << 20)
        guard case .intake(let request) = Self.send(body, piece: 50, to: &machine) else {
            Issue.record("the intake gets the decoded body")
            return
        }
        #expect(Array(request.body.readableBytesView) == Self.rows)
        guard case .intaking(let head, _) = machine.state else { Issue.record("intaking"); return }
        #expect(head.uri == "/?" + Self.insertQuery)
        #expect(head.headers["content-encoding"].isEmpty)
    }

    @Test func aSelectInBlocksGoesUpstreamAsItCame() {
        var machine = Machine()
        let body = CompressedBlockEncoder.encode(Array("SELECT 1".utf8), method: .lz4)
        let uri = "/?decompress=1"
        _ = machine.receivedHead(Self.head(uri, [("Content-Length", "\(body.count)")]), maxRequestBody: 1 << 20)
        guard case .startPassthrough(let head, let initial, _) = Self.send(body, piece: 1 << 20, to: &machine) else {
            Issue.record("passthrough as received")
            return
        }
        #expect(head.uri == uri)
        #expect(initial.map { Array($0.readableBytesView) } == body)
    }

    @Test func aBadChecksumIsCode40AndTheConnectionCloses() {
        var machine = Machine()
        var body = CompressedBlockEncoder.encode(Self.rows, method: .lz4)
        body[0] ^= 0xFF
        _ = machine.receivedHead(
            Self.head("/?decompress=1&" + Self.insertQuery, [("Content-Length", "\(body.count)")]), maxRequestBody: 1 << 20)
        guard case .respondError(let error, _, close: true) = Self.send(body, piece: 1000, to: &machine) else {
            Issue.record("refused")
            return
        }
        #expect(error.code == 40)
        #expect(error.name == "CHECKSUM_DOESNT_MATCH")
        #expect(error.status == 500)
        #expect(error.body.hasPrefix("Code: 40. DB::Exception: Checksum doesn't match: corrupted data."))
    }

    @Test func aTruncatedLZ4BodyIsRefusedWithLZ4sCode() {
        var machine = Machine()
        let body = Array(BodyCompression.compress(Self.rows, as: .lz4).dropLast(3))
        _ = machine.receivedHead(
            Self.head("/?" + Self.insertQuery, [("Content-Length", "\(body.count)"), ("Content-Encoding", "lz4")]),
            maxRequestBody: 1 << 20)
        guard case .respondError(let error, _, close: true) = Self.send(body, piece: 1000, to: &machine) else {
            Issue.record("refused")
            return
        }
        #expect(error.code == 618)
        #expect(error.name == "LZ4_DECODER_FAILED")
    }

    @Test func spellingsAModernServerDoesNotTakeGoThroughAsReceived() {
        for value in ["x-lz4", "lz4, gzip", "GZIP", "identity"] {
            var machine = Machine()
            let head = Self.head("/?" + Self.insertQuery, [("Content-Length", "3"), ("Content-Encoding", value)])
            guard case .startPassthrough = machine.receivedHead(head, maxRequestBody: 1 << 20) else {
                Issue.record("\(value): passthrough at the head")
                continue
            }
        }
    }

    @Test func helperRemovesOnlyDecompress() {
        #expect(HeaderPolicy.removingParameter("decompress", from: "/?decompress=1") == "/")
        #expect(HeaderPolicy.removingParameter("decompress", from: "/x?a=%41&decompress=1&b") == "/x?a=%41&b")
        #expect(HeaderPolicy.removingParameter("decompress", from: "/?de%63ompress=1&q=1") == "/?q=1")
        #expect(HeaderPolicy.removingParameter("decompress", from: "/?decompressed=1") == "/?decompressed=1")
        #expect(HeaderPolicy.removingParameter("decompress", from: "/?a=1&&b=2") == "/?a=1&&b=2")
        #expect(HeaderPolicy.removingParameter("decompress", from: "/ping") == "/ping")
    }
}
