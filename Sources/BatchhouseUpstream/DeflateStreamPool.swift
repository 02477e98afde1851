/// Deflate streams kept between bodies. deflateInit2 allocates about 256 KiB of state (window, hash chains,
/// pending buffer at windowBits 15, memLevel 8) and deflateEnd frees it again; a batch of one small INSERT per
/// table paid that for a body of a few hundred bytes. deflateReset makes a used stream start over as a new one
/// with the same level, window bits, memLevel and strategy, so a reused stream writes the same bytes a new one
/// would (ZlibTests checks it).
///
/// A pool under a lock rather than a stream per thread: compression runs on whatever thread builds the request
/// (the cooperative pool, an event loop), and a pool bounds the memory however many threads that is. The lock is
/// held only to take or give back a stream, never while compressing.
///
/// `@unchecked Sendable`: an idle stream belongs to no thread; one is taken under the lock, used by that caller
/// alone, reset and given back under the lock.
final class DeflateStreamPool: @unchecked Sendable {
    struct Counts: Sendable, Equatable {
        /// Streams made with deflateInit2.
        var created = 0
        /// Bodies compressed with a reset stream instead of a new one.
        var reused = 0
        /// Idle streams now, all shapes together.
        var idle = 0
    }

    /// The parameters deflateReset keeps: only a stream made with both may serve a body.
    private struct Shape: Hashable {
        var level: Int32
        var windowBits: Int32
    }

    private struct State {
        var idle: [Shape: [ZStream]] = [:]
        var counts = Counts()
    }

    static let shared = DeflateStreamPool()

    /// Idle streams kept at most, all shapes together: as many as bodies compressed at the same moment on an
    /// 8-core machine (compression is CPU-bound, so rarely more than one per core), about 2 MiB. Streams beyond
    /// it are freed when given back.
    static let defaultCapacity = 8

    let capacity: Int
    private let state: Locked<State>

    init(capacity: Int = defaultCapacity) {
        self.capacity = capacity
        state = Locked(State())
    }

    /// Runs `body` with a deflate stream for `level` and `windowBits` that has not produced anything yet.
    func withStream<Result>(level: Int32, windowBits: Int32, _ body: (ZStream) -> Result) -> Result {
        let shape = Shape(level: level, windowBits: windowBits)
        let idle = state.withLock { state -> ZStream? in
            guard let stream = state.idle[shape]?.popLast() else {
                state.counts.created += 1
                return nil
            }
            state.counts.reused += 1
            state.counts.idle -= 1
            return stream
        }
        let stream = idle ?? ZStream(deflateLevel: level, windowBits: windowBits)
        let result = body(stream)
        guard stream.resetDeflate() else { return result }
        state.withLock { state in
            guard state.counts.idle < capacity else { return }
            state.idle[shape, default: []].append(stream)
            state.counts.idle += 1
        }
        return result
    }

    var counts: Counts { state.withLock { $0.counts } }
}
