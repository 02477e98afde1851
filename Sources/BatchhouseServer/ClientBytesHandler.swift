import NIOCore

/// First in each connection's pipeline, before NIO's HTTP decoder: it tells the `RequestHandler` when bytes
/// arrive, so a request head trickled byte by byte is timed from its first byte (`limits.header_timeout`) and a
/// body from its last one (`body_timeout`), and it writes the raw answer to a request whose head never completed.
/// It decides nothing (docs/architecture.md, "Bounds on clients").
final class ClientBytesHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    weak var requestHandler: RequestHandler?
    private var context: ChannelHandlerContext?

    init() {}

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        requestHandler?.bytesArrived()
        context.fireChannelRead(data)
    }

    /// Writes `bytes` straight to the socket, then closes its write side (what the client still sends is dropped
    /// until it closes or the request handler's timer closes the connection).
    func writeAndClose(_ bytes: [UInt8]) {
        guard let context else { return }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: bytes))).whenComplete { _ in
            channel.close(mode: .output, promise: nil)
        }
    }
}

/// The whole pipeline of a connection beyond `limits.max_connections`: a 503 written at once (no request is read),
/// then the write side is shut and whatever the client still sends is dropped until it closes or `linger` passes,
/// so the answer is not lost to a reset. With no `linger` the connection closes as soon as the 503 is written.
final class ConnectionRefusalHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let response: [UInt8]
    private let linger: TimeAmount
    private var lingerTimer: Scheduled<Void>?
    private var refused = false

    init(response: [UInt8], linger: TimeAmount = .seconds(1)) {
        self.response = response
        self.linger = linger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { refuse(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        refuse(context: context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    func channelInactive(context: ChannelHandlerContext) {
        lingerTimer?.cancel()
        lingerTimer = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    private func refuse(context: ChannelHandlerContext) {
        guard !refused else { return }
        refused = true
        let channel = context.channel
        let linger = self.linger
        context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(bytes: response))).whenComplete { _ in
            channel.close(mode: linger == .zero ? .all : .output, promise: nil)
        }
        guard linger > .zero else { return }
        lingerTimer = context.eventLoop.assumeIsolated().scheduleTask(in: linger) {
            channel.close(promise: nil)
        }
    }
}
