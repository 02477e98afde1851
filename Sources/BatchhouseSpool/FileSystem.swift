#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An open file descriptor, closed when the last reference to it goes: the fsync thread can keep
/// syncing a segment that the appending side has already rotated away from.
final class OpenFile: Sendable {
    let descriptor: Int32
    let path: String

    init(descriptor: Int32, path: String) {
        self.descriptor = descriptor
        self.path = path
    }

    deinit { close(descriptor) }
}

/// The few system calls the spool makes, with EINTR handled and errors turned into ``SpoolError``.
enum FileSystem {
    static func message(_ what: String, _ path: String, _ code: Int32) -> String {
        "\(what) \(path): \(String(cString: strerror(code))) (errno \(code))"
    }

    /// ENOSPC and EDQUOT become `.noSpace` (the client may retry later), anything else `.io`.
    static func ioError(_ what: String, _ path: String, _ code: Int32 = errno) -> SpoolError {
        SpoolError(code: isNoSpace(code) ? .noSpace : .io, message: message(what, path, code))
    }

    /// The filesystem (or the user's quota) is full.
    static func isNoSpace(_ code: Int32) -> Bool {
        code == ENOSPC || code == EDQUOT
    }

    /// Creates the directory (and its parents) if needed and makes it 0700: segment files hold
    /// client credentials.
    static func makePrivateDirectory(_ path: String) throws(SpoolError) {
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                throw ioError("cannot create directory", prefix)
            }
        }
        var info = stat()
        guard stat(path, &info) == 0 else { throw ioError("cannot stat", path) }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            throw SpoolError(code: .io, message: "\(path) is not a directory")
        }
        if info.st_mode & 0o777 != 0o700 && chmod(path, 0o700) != 0 {
            throw ioError("cannot make directory private (chmod 0700)", path)
        }
    }

    static func openDirectory(_ path: String) throws(SpoolError) -> OpenFile {
        let descriptor = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else { throw ioError("cannot open directory", path) }
        return OpenFile(descriptor: descriptor, path: path)
    }

    /// An exclusive advisory lock on `DIR/lock`, so two processes never share a spool.
    static func lockDirectory(_ directory: String) throws(SpoolError) -> OpenFile {
        let path = directory + "/lock"
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw ioError("cannot open", path) }
        let file = OpenFile(descriptor: descriptor, path: path)
        var result: Int32
        repeat { result = flock(descriptor, LOCK_EX | LOCK_NB) } while result != 0 && errno == EINTR
        if result != 0 {
            if errno == EWOULDBLOCK {
                throw SpoolError(code: .io, message: "spool directory \(directory) is in use by another process")
            }
            throw ioError("cannot lock", path)
        }
        return file
    }

    /// A new segment file, mode 0600 whatever the umask, holding the segment header.
    static func createSegment(_ path: String) throws(SpoolError) -> OpenFile {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw ioError("cannot create", path) }
        let file = OpenFile(descriptor: descriptor, path: path)
        guard fchmod(descriptor, 0o600) == 0 else { throw ioError("cannot chmod 0600", path) }
        let header = RecordFormat.segmentHeader
        let failure = header.withUnsafeBytes { write(descriptor, at: 0, $0) }
        if let failure {
            unlink(path)
            throw ioError("cannot write header of", path, failure)
        }
        return file
    }

    /// An existing segment opened to append to (when no new one can be created on a full disk).
    static func openSegmentForAppend(_ path: String) throws(SpoolError) -> OpenFile {
        let descriptor = open(path, O_WRONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw ioError("cannot open", path) }
        return OpenFile(descriptor: descriptor, path: path)
    }

    /// Opens (creating if needed, 0600) a file and returns it with its size. Nil when that fails.
    static func openOrCreate(_ path: String) -> (OpenFile, Int)? {
        let descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { return nil }
        let file = OpenFile(descriptor: descriptor, path: path)
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { return nil }
        return (file, Int(info.st_size))
    }

    /// posix_fallocate(3): blocks for `[0, size)` are allocated (glibc writes zeros where the filesystem cannot
    /// preallocate). Returns the error code of a failure.
    static func allocate(_ descriptor: Int32, size: Int) -> Int32? {
        var result: Int32
        repeat { result = posix_fallocate(descriptor, 0, off_t(size)) } while result == EINTR
        return result == 0 ? nil : result
    }

    /// The total size of the filesystem holding `path` (statvfs), nil when unknown.
    static func filesystemSize(_ path: String) -> Int? {
        var info = statvfs()
        guard statvfs(path, &info) == 0 else { return nil }
        let size = Int(clamping: UInt64(info.f_blocks) &* UInt64(info.f_frsize))
        return size > 0 ? size : nil
    }

    /// Bytes this process can still allocate on the filesystem of an open file (fstatvfs; root may also use the
    /// blocks reserved for it), nil when unknown.
    static func availableBytes(_ descriptor: Int32) -> Int? {
        var info = statvfs()
        guard fstatvfs(descriptor, &info) == 0 else { return nil }
        let blocks = geteuid() == 0 ? UInt64(info.f_bfree) : UInt64(info.f_bavail)
        return Int(clamping: blocks &* UInt64(info.f_frsize))
    }

    /// Names of `segment-*.wal` files in the directory with their numbers, sorted by number.
    static func segmentFiles(in directory: String) throws(SpoolError) -> [(number: UInt64, name: String)] {
        guard let stream = opendir(directory) else { throw ioError("cannot list", directory) }
        defer { closedir(stream) }
        var found: [(number: UInt64, name: String)] = []
        while let entry = readdir(stream) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: MemoryLayout.size(ofValue: entry.pointee.d_name)) {
                    String(cString: $0)
                }
            }
            if let number = RecordFormat.segmentNumber(fileName: name) {
                found.append((number, name))
            }
        }
        return found.sorted { $0.number < $1.number }
    }

    /// The whole file. A file still growing is read up to the size it had when opened.
    static func readFile(_ path: String) throws(SpoolError) -> [UInt8] {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw ioError("cannot open", path) }
        defer { close(descriptor) }
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { throw ioError("cannot stat", path) }
        let size = Int(info.st_size)
        var failure: Int32 = 0
        let bytes = [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
            count = 0
            while count < size {
                let result = read(descriptor, buffer.baseAddress! + count, size - count)
                if result < 0 {
                    if errno == EINTR { continue }
                    failure = errno
                    return
                }
                if result == 0 { break }
                count += result
            }
        }
        if failure != 0 { throw ioError("cannot read", path, failure) }
        return bytes
    }

    static func openForReading(_ path: String) throws(SpoolError) -> OpenFile {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw ioError("cannot open", path) }
        return OpenFile(descriptor: descriptor, path: path)
    }

    /// `count` bytes at `offset` (fewer at the end of the file), with pread(2).
    static func readAt(_ descriptor: Int32, offset: Int, count: Int) -> (bytes: [UInt8], failure: Int32?) {
        var failure: Int32 = 0
        let bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, filled in
            filled = 0
            while filled < count {
                let result = pread(descriptor, buffer.baseAddress! + filled, count - filled, off_t(offset + filled))
                if result < 0 {
                    if errno == EINTR { continue }
                    failure = errno
                    return
                }
                if result == 0 { break }
                filled += result
            }
        }
        return (bytes, failure == 0 ? nil : failure)
    }

    static func setPrivate(_ path: String) {
        _ = chmod(path, 0o600)
    }

    /// Writes all of `parts` at `offset`, in one pwritev(2) unless the kernel writes less.
    /// Returns the errno of a failure, nil on success.
    static func write(_ descriptor: Int32, at offset: Int, _ parts: UnsafeRawBufferPointer...) -> Int32? {
        write(descriptor, at: offset, parts)
    }

    static func write(_ descriptor: Int32, at offset: Int, _ parts: [UnsafeRawBufferPointer]) -> Int32? {
        var parts = parts.filter { $0.count > 0 }
        var position = offset
        while !parts.isEmpty {
            var vectors = parts.map { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count) }
            let written = pwritev(descriptor, &vectors, Int32(vectors.count), off_t(position))
            if written < 0 {
                if errno == EINTR { continue }
                return errno
            }
            if written == 0 { return EIO }
            position += written
            var left = written
            while left > 0 {
                if parts[0].count <= left {
                    left -= parts[0].count
                    parts.removeFirst()
                } else {
                    parts[0] = UnsafeRawBufferPointer(rebasing: parts[0][left...])
                    left = 0
                }
            }
        }
        return nil
    }

    /// fdatasync(2): the data and the size, not the timestamps. Returns the errno of a failure.
    static func syncData(_ descriptor: Int32) -> Int32? {
        var result: Int32
        repeat {
            #if canImport(Darwin)
            result = fcntl(descriptor, F_FULLFSYNC)
            #else
            result = fdatasync(descriptor)
            #endif
        } while result != 0 && errno == EINTR
        return result == 0 ? nil : errno
    }

    /// fsync(2), for the directory after a file was created in it.
    static func sync(_ descriptor: Int32) -> Int32? {
        var result: Int32
        repeat { result = fsync(descriptor) } while result != 0 && errno == EINTR
        return result == 0 ? nil : errno
    }

    /// Cuts a failed partial write off the end of a segment. Returns false when that failed too.
    static func truncate(_ descriptor: Int32, to size: Int) -> Bool {
        var result: Int32
        repeat { result = ftruncate(descriptor, off_t(size)) } while result != 0 && errno == EINTR
        return result == 0
    }

    static func remove(_ path: String) {
        _ = unlink(path)
    }
}
