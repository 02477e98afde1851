#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One `Value` per thread, made on the thread's first use and released when the thread ends (a pthread key): state
/// an event loop keeps for itself without a lock (`SpoolStage`, the last identity digest). Only the thread that got
/// a value uses it.
final class PerThread<Value: AnyObject>: @unchecked Sendable {
    // @unchecked: `key` is written once, in `init`; each thread's value is reached only from that thread.
    private let key: pthread_key_t
    private let make: @Sendable () -> Value

    init(_ make: @escaping @Sendable () -> Value) {
        var key = pthread_key_t()
        let created = pthread_key_create(&key) { pointer in
            if let pointer { Unmanaged<AnyObject>.fromOpaque(pointer).release() }
        }
        precondition(created == 0, "pthread_key_create failed")
        self.key = key
        self.make = make
    }

    /// This thread's value.
    var current: Value {
        if let raw = pthread_getspecific(key) { return Unmanaged<Value>.fromOpaque(raw).takeUnretainedValue() }
        let value = make()
        pthread_setspecific(key, Unmanaged.passRetained(value).toOpaque())
        return value
    }
}
