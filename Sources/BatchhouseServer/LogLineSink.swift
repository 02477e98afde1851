#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// Where `JSONLogHandler` puts its lines: each call gets one whole line, newline included. Tests pass a closure
/// that collects them; the proxy writes to standard error, the stream swift-log's default handler writes to.
public struct LogLineSink: Sendable {
    private let writeLine: @Sendable ([UInt8]) -> Void

    public init(_ writeLine: @escaping @Sendable ([UInt8]) -> Void) {
        self.writeLine = writeLine
    }

    func write(_ line: [UInt8]) { writeLine(line) }

    /// File descriptor 2, one write(2) per line.
    public static let standardError: LogLineSink = {
        let writer = FileDescriptorLineWriter(descriptor: 2)
        return LogLineSink { writer.write($0) }
    }()
}

/// Writes lines to a file descriptor so that lines from different threads never interleave.
final class FileDescriptorLineWriter: Sendable {
    private let descriptor: Int32
    // The write happens inside the lock on purpose: the lock exists to keep the lines whole and in order, as
    // stdio's flockfile does for swift-log's own handler.
    private let lock = Mutex(())

    init(descriptor: Int32) {
        self.descriptor = descriptor
    }

    /// One write(2) for the whole line; more only if the kernel takes part of it (a full pipe) or a signal
    /// interrupts it. A line that cannot be written is dropped: logging never fails the caller.
    func write(_ line: [UInt8]) {
        lock.withLock { _ in
            line.withUnsafeBytes { bytes in
                guard var next = bytes.baseAddress else { return }
                var left = bytes.count
                while left > 0 {
                    let written = systemWrite(descriptor, next, left)
                    if written > 0 {
                        next += written
                        left -= written
                    } else if written < 0 && errno == EINTR {
                        continue
                    } else {
                        return
                    }
                }
            }
        }
    }
}

/// write(2), under a name that the writer's own `write(_:)` does not hide.
private func systemWrite(_ descriptor: Int32, _ bytes: UnsafeRawPointer, _ count: Int) -> Int {
    #if canImport(Glibc)
    Glibc.write(descriptor, bytes, count)
    #elseif canImport(Darwin)
    Darwin.write(descriptor, bytes, count)
    #endif
}
