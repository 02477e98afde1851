@testable import BatchhouseUpstream
import Foundation
import NIOCore
import Testing

/// libcurl sends a request again on a fresh connection when a reused one closes without an answer. If that
/// second connect fails, the error must not say "nothing was sent": the first copy reached the server, which may
/// have run it (a ClickHouse stopped with SIGTERM commits an insert and closes the connection unanswered).
@Suite struct ResentRequestTests {
    @Test func aConnectFailureAfterAResendOnAFreshConnectionMayHaveReachedTheServer() async throws {
        let server = try OneConnectionServer()
        // Reused however long a loaded machine stalls between the two requests (the default drops it after 1 s).
        let client = CurlClient(idleConnectionTimeout: .seconds(300))
        defer { client.shutdown() }
        let url = "http://127.0.0.1:\(server.port)/?query=INSERT%20INTO%20t%20FORMAT%20TSV"
        let first = try await client.execute(
            UpstreamRequest(method: "POST", url: url, body: ByteBuffer(string: "1\n"), connectTimeout: .seconds(2)))
        #expect(first.status == 200)

        // The same connection is reused; the server reads the whole request, stops listening and hangs up.
        var failure: UpstreamError?
        do {
            _ = try await client.execute(
                UpstreamRequest(method: "POST", url: url, body: ByteBuffer(string: "2\n"), connectTimeout: .seconds(2)))
        } catch {
            failure = error
        }
        let seen = await server.requests()
        #expect(seen.count == 2 && seen.last?.hasSuffix("\r\n\r\n2\n") == true, "\(seen)")
        let error = try #require(failure, "the second request cannot succeed")
        #expect(error.kind == .transport, "\(error.kind): \(error.message)")
        #expect(error.message.contains("reused connection"), "\(error.message)")
    }

    /// Without a resend, a refused connection is still `.connect`: the request never left.
    @Test func aRefusedFirstConnectIsAConnectError() async throws {
        let port = try OneConnectionServer.unusedPort()
        let client = CurlClient()
        defer { client.shutdown() }
        do {
            _ = try await client.execute(
                UpstreamRequest(
                    method: "POST", url: "http://127.0.0.1:\(port)/", body: ByteBuffer(string: "1\n"),
                    connectTimeout: .seconds(2)))
            Issue.record("nothing listens there")
        } catch {
            #expect(error.kind == .connect, "\(error.kind): \(error.message)")
        }
    }
}

/// A loopback HTTP/1.1 server for one connection, on its own thread: it answers the first request with 200 and
/// keeps the connection open; it reads the second one whole, closes its listening socket (so a reconnect is
/// refused) and then the connection, without an answer.
final class OneConnectionServer: @unchecked Sendable {
    let port: Int
    private let listener: Int32
    private let lock = NSLock()
    private var received: [String] = []
    private let done = DispatchSemaphore(value: 0)

    init() throws {
        (listener, port) = try Self.loopbackSocket(listening: true)
        let thread = Thread { [self] in serve() }
        thread.start()
    }

    /// What the server read, request by request, once it has hung up.
    func requests() async -> [String] {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async { [self] in
                _ = done.wait(timeout: .now() + 10)
                continuation.resume(returning: lock.withLock { received })
            }
        }
    }

    private func serve() {
        defer { done.signal() }
        let connection = accept(listener, nil, nil)
        guard connection >= 0 else { return }
        var pending: [UInt8] = []
        for index in 0..<2 {
            guard let request = Self.readRequest(connection, &pending) else { break }
            lock.withLock { received.append(request) }
            if index == 0 {
                let answer = Array("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nOk\n".utf8)
                _ = answer.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            }
        }
        close(listener)
        close(connection)
    }

    /// One request with a Content-Length body, as text; nil if the peer went away first.
    private static func readRequest(_ fd: Int32, _ pending: inout [UInt8]) -> String? {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let text = String(decoding: pending, as: UTF8.self)
            if let end = text.range(of: "\r\n\r\n") {
                let head = text[..<end.upperBound]
                let length = head.lowercased().split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                    .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
                let total = head.utf8.count + length
                if pending.count >= total {
                    let request = String(decoding: pending[0..<total], as: UTF8.self)
                    pending.removeFirst(total)
                    return request
                }
            }
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count <= 0 { return nil }
            pending += buffer[0..<count]
        }
    }

    /// A TCP socket bound to a free port on 127.0.0.1, listening or not.
    static func loopbackSocket(listening: Bool) throws -> (fd: Int32, port: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && (!listening || listen(fd, 4) == 0) && getsockname(fd, $0, &length) == 0
            }
        }
        guard bound else {
            close(fd)
            throw ClickHouse.FixtureError(message: "could not bind a port")
        }
        return (fd, Int(UInt16(bigEndian: address.sin_port)))
    }

    /// A port nothing listens on (bound, then closed).
    static func unusedPort() throws -> Int {
        let (fd, port) = try loopbackSocket(listening: false)
        close(fd)
        return port
    }
}
