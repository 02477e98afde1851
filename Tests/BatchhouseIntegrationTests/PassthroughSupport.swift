import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// One HTTP/1.1 response as it came over the wire: status line, header lines in order and case, the body with
/// chunking undone.
struct WireResponse: Sendable {
    var statusLine: String
    var headers: [(String, String)]
    var body: [UInt8]
    var chunked: Bool

    var status: Int { Int(statusLine.split(separator: " ").dropFirst().first ?? "") ?? 0 }

    func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }

    var bodyText: String { String(decoding: body, as: UTF8.self) }
}

/// Sends raw requests on one keep-alive connection and reads whole responses, byte for byte.
final class WireClient: @unchecked Sendable {
    private let fd: Int32
    private var pending: [UInt8] = []

    init(url: String) throws {
        guard let port = URLComponents(string: url)?.port else { throw TestFailure("no port in \(url)") }
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else {
            Glibc.close(fd)
            throw TestFailure("connect: \(errno)")
        }
    }

    deinit { Glibc.close(fd) }

    /// Sends `request` (a whole HTTP/1.1 request) and reads its response; `head` says it answers a HEAD.
    /// `blockingExchange` off the cooperative pool: the in-process proxy's tasks (a credential check, a
    /// DESCRIBE) need the pool's threads while this one waits for the answer.
    func exchange(_ request: String, head: Bool = false, timeout: Duration = .seconds(30)) async throws -> WireResponse {
        try await offPool { try self.blockingExchange(request, head: head, timeout: timeout) }
    }

    func blockingExchange(_ request: String, head: Bool = false, timeout: Duration = .seconds(30)) throws -> WireResponse {
        let bytes = Array(request.utf8)
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard sent > 0 else { throw TestFailure("send failed") }
            offset += sent
        }
        let deadline = ContinuousClock.now + timeout
        let headEnd = try readUntil(deadline) { Self.find([13, 10, 13, 10], in: $0) }
        let headText = String(decoding: pending[..<headEnd], as: UTF8.self)
        pending.removeFirst(headEnd + 4)
        var lines = headText.components(separatedBy: "\r\n")
        let statusLine = lines.removeFirst()
        let headers = lines.map { line -> (String, String) in
            let colon = line.firstIndex(of: ":")!
            return (String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        }
        var response = WireResponse(statusLine: statusLine, headers: headers, body: [], chunked: false)
        let status = response.status
        if head || status == 204 || status == 304 || (100..<200).contains(status) { return response }
        if response.header("transfer-encoding")?.lowercased() == "chunked" {
            response.chunked = true
            while true {
                let lineEnd = try readUntil(deadline) { Self.find([13, 10], in: $0) }
                let sizeText = String(decoding: pending[..<lineEnd], as: UTF8.self).split(separator: ";").first ?? ""
                pending.removeFirst(lineEnd + 2)
                guard let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16) else {
                    throw TestFailure("bad chunk size \(sizeText)")
                }
                _ = try readUntil(deadline) { $0.count >= size + 2 ? size : nil }
                response.body += pending[..<size]
                pending.removeFirst(size + 2)
                if size == 0 { break }
            }
        } else if let length = response.header("content-length").flatMap(Int.init) {
            _ = try readUntil(deadline) { $0.count >= length ? length : nil }
            response.body = Array(pending[..<length])
            pending.removeFirst(length)
        } else {
            // Framed by closing.
            _ = try? readUntil(deadline, closes: true) { _ in nil }
            response.body = pending
            pending = []
        }
        return response
    }

    private func readUntil(_ deadline: ContinuousClock.Instant, closes: Bool = false, _ done: ([UInt8]) -> Int?) throws -> Int {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            if let found = done(pending) { return found }
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw TestFailure("timed out reading a response") }
            var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let milliseconds = Int32(left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000)
            guard poll(&descriptor, 1, max(1, milliseconds)) > 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count <= 0 {
                if closes { return pending.count }
                throw TestFailure("closed before the response was complete")
            }
            pending += buffer[0..<count]
        }
    }

    private static func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for index in 0...(haystack.count - needle.count) where haystack[index..<(index + needle.count)].elementsEqual(needle) {
            return index
        }
        return nil
    }
}

/// A loopback HTTP server that records every request's target and headers as received, and answers each with
/// `Ok.\n` (what `/ping` expects) or, for other paths, the request target and header lines as its body.
final class RecordingUpstream: Sendable {
    struct Received: Sendable {
        var method: String
        var uri: String
        var headers: [(String, String)]
        var body: String

        func parameter(_ name: String) -> String? {
            guard let query = uri.split(separator: "?", maxSplits: 1).dropFirst().first else { return nil }
            for pair in query.split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                if parts.first.map(String.init) == name { return parts.count > 1 ? String(parts[1]) : "" }
            }
            return nil
        }
    }

    private let received = Mutex<[Received]>([])
    private let channel: any Channel
    let url: String

    init() async throws {
        let box = RecordBox()
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Handler(box: box))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        url = "http://127.0.0.1:\(channel.localAddress!.port!)"
        box.upstream.withLock { $0 = self }
    }

    func record(_ request: Received) { received.withLock { $0.append(request) } }

    var requests: [Received] { received.withLock { $0 } }

    /// Requests other than the proxy's own health checks and version probes.
    var clientRequests: [Received] {
        requests.filter { $0.uri != "/ping" && !$0.uri.contains("version()") && !$0.uri.contains("version%28%29") }
    }

    func stop() async { try? await channel.close() }

    final class RecordBox: Sendable {
        let upstream = Mutex<RecordingUpstream?>(nil)
    }

    final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let box: RecordBox
        var head: HTTPRequestHead?
        var body = ""

        init(box: RecordBox) { self.box = box }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                self.head = head
                body = ""
            case .body(let buffer):
                body += String(buffer: buffer)
            case .end:
                guard let head else { return }
                let headers = head.headers.map { ($0.name, $0.value) }
                box.upstream.withLock { $0 }?.record(
                    Received(method: head.method.rawValue, uri: head.uri, headers: headers, body: body))
                var text = "Ok.\n"
                if head.uri != "/ping" {
                    text = head.uri + "\n" + headers.map { "\($0.0): \($0.1)" }.joined(separator: "\n") + "\n"
                }
                let bytes = ByteBuffer(string: text)
                context.write(
                    wrapOutboundOut(
                        .head(
                            HTTPResponseHead(
                                version: head.version, status: .ok,
                                headers: HTTPHeaders([("Content-Length", String(bytes.readableBytes))])))),
                    promise: nil)
                context.write(wrapOutboundOut(.body(.byteBuffer(bytes))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
        }
    }
}
