@testable import BatchhouseUpstream
import NIOCore
import NIOHTTP1
import NIOPosix

/// A loopback HTTP/1.1 server (keep-alive, any number of connections) that records every request as it arrived
/// and answers 200 with the request's path as the body, after `delay` milliseconds when the query says
/// `?delay=N`. Every answer sets a cookie, so a client that kept cookies would send them back.
final class RecordingHTTPServer: Sendable {
    struct Request: Sendable {
        var method: String
        var uri: String
        var headers: [(String, String)]
        var body: [UInt8]

        func values(_ name: String) -> [String] {
            headers.filter { $0.0.lowercased() == name.lowercased() }.map(\.1)
        }
    }

    let port: Int
    private let channel: any Channel
    private let recorded: Locked<[Request]>

    var url: String { "http://127.0.0.1:\(port)" }

    init() async throws {
        let recorded = Locked<[Request]>([])
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 256)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Handler(recorded: recorded))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        port = channel.localAddress!.port!
        self.recorded = recorded
    }

    var requests: [Request] { recorded.withLock { $0 } }

    func stop() async { try? await channel.close() }

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        let recorded: Locked<[Request]>
        var head: HTTPRequestHead?
        var body: [UInt8] = []

        init(recorded: Locked<[Request]>) { self.recorded = recorded }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                self.head = head
                body = []
            case .body(let buffer):
                body += buffer.readableBytesView
            case .end:
                guard let head else { return }
                self.head = nil
                recorded.withLock {
                    $0.append(
                        Request(method: head.method.rawValue, uri: head.uri, headers: head.headers.map { ($0.name, $0.value) }, body: body))
                }
                let path = String(head.uri.prefix { $0 != "?" })
                let delay = head.uri.split(separator: "delay=").dropFirst().first.flatMap { Int($0) } ?? 0
                if delay > 0 {
                    context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(Int64(delay))) { [self] in
                        respond(context: context, path: path, head: head)
                    }
                } else {
                    respond(context: context, path: path, head: head)
                }
            }
        }

        private func respond(context: ChannelHandlerContext, path: String, head: HTTPRequestHead) {
            let bytes = ByteBuffer(string: path)
            let headers = HTTPHeaders([
                ("Content-Length", String(bytes.readableBytes)),
                ("Set-Cookie", "session=cookie-for-\(path.replacing("/", with: "-")); Path=/"),
            ])
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))), promise: nil)
            if head.method != .HEAD {
                context.write(wrapOutboundOut(.body(.byteBuffer(bytes))), promise: nil)
            }
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }
}
