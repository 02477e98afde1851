import BatchhouseCore
import Crypto
import Foundation

/// HMAC-SHA256 of a client's user and secret under a random per-installation key: the one thing derived from a
/// secret that the proxy keeps or shows. Its first 8 bytes make the tag `user#0123456789abcdef` in logs and
/// dead-letter records; the whole digest keys the credential cache. Without the key, a tag does not let a
/// password guess be checked offline (docs/credentials.md, "Identity tags").
package struct IdentityTags: Sendable {
    /// The key file's name in the spool directory.
    package static let keyFileName = "identity.key"
    private static let keyBytes = 32

    private let box: KeyBox

    /// HMAC's two keyed SHA-256 states, absorbed once: H((K ^ opad) || H((K ^ ipad) || m)) then costs two
    /// hashes of short inputs per request (about 1.2 µs in a release build) instead of swift-crypto's `HMAC`
    /// setting the key up each time (about 5.7 µs). The states are only copied, never changed, so sharing them
    /// between threads is safe although swift-crypto 3 does not mark them `Sendable`.
    private final class KeyBox: @unchecked Sendable {
        let inner: SHA256
        let outer: SHA256

        init(_ key: SymmetricKey) {
            var innerPad = [UInt8](repeating: 0x36, count: SHA256.blockByteCount)
            var outerPad = [UInt8](repeating: 0x5c, count: SHA256.blockByteCount)
            key.withUnsafeBytes { bytes in
                // Keys here are 32 bytes, shorter than a block, so they are used as they are (RFC 2104).
                precondition(bytes.count <= SHA256.blockByteCount)
                for index in bytes.indices {
                    innerPad[index] ^= bytes[index]
                    outerPad[index] ^= bytes[index]
                }
            }
            var inner = SHA256()
            inner.update(data: innerPad)
            var outer = SHA256()
            outer.update(data: outerPad)
            self.inner = inner
            self.outer = outer
        }
    }

    package init(key: SymmetricKey) {
        self.box = KeyBox(key)
    }

    /// A key for this process only (no spool: nothing outlives the process that needs the same tags).
    package static func random() -> IdentityTags {
        IdentityTags(key: SymmetricKey(size: .bits256))
    }

    /// The key kept in `directory` (the spool's), made on first use: 32 random bytes, mode 0600. Tags stay the same
    /// across restarts, so log lines and dead letters of one client can be matched up over time.
    package static func load(directory: String) throws -> IdentityTags {
        let path = directory + "/" + keyFileName
        if let existing = FileManager.default.contents(atPath: path) {
            guard existing.count == keyBytes else {
                throw IdentityKeyError(message: "\(path) is not a \(keyBytes)-byte identity key")
            }
            chmod(path, 0o600)
            return IdentityTags(key: SymmetricKey(data: existing))
        }
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<keyBytes).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard descriptor >= 0 else {
            throw IdentityKeyError(message: "cannot create \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        let written = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        guard written == keyBytes, fsync(descriptor) == 0 else {
            unlink(path)
            throw IdentityKeyError(message: "cannot write \(path): \(String(cString: strerror(errno)))")
        }
        return IdentityTags(key: SymmetricKey(data: bytes))
    }

    /// HMAC-SHA256 over (presence, length, bytes) of the user, then of the password, so that no two identities
    /// share an input.
    package func digest(of identity: ClientIdentity) -> IdentityDigest {
        let last = LastDigest.ofThisThread()
        if last.key === box, last.identity == identity, let digest = last.digest { return digest }
        var inner = box.inner
        Self.absorb(identity.user, into: &inner)
        Self.absorb(identity.password, into: &inner)
        var outer = box.outer
        inner.finalize().withUnsafeBytes { outer.update(data: $0) }
        let digest = IdentityDigest(outer.finalize())
        last.key = box
        last.identity = identity
        last.digest = digest
        return digest
    }

    /// `user#` and 16 hex digits (the first 64 bits of the digest).
    package func tag(of identity: ClientIdentity) -> String {
        digest(of: identity).tag(user: identity.user)
    }

    private static func absorb(_ field: String?, into hmac: inout SHA256) {
        guard var field else {
            hmac.update(data: [UInt8(0)])
            return
        }
        var header = (UInt8(1), UInt64(field.utf8.count).littleEndian)
        withUnsafeBytes(of: &header.0) { hmac.update(data: $0) }
        withUnsafeBytes(of: &header.1) { hmac.update(data: $0) }
        field.withUTF8 { hmac.update(data: UnsafeRawBufferPointer($0)) }
    }
}

/// A whole HMAC-SHA256 digest as four words: a dictionary key that costs no allocation.
package struct IdentityDigest: Hashable, Sendable {
    private let words: (UInt64, UInt64, UInt64, UInt64)

    init(_ code: SHA256.Digest) {
        var words: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        code.withUnsafeBytes { bytes in
            withUnsafeMutableBytes(of: &words) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes.prefix(32))) }
        }
        self.words = words
    }

    package init(words: (UInt64, UInt64, UInt64, UInt64)) {
        self.words = words
    }

    /// The four words, in order (for the verified-identities file).
    package var wordList: [UInt64] { [words.0, words.1, words.2, words.3] }

    package static func == (lhs: IdentityDigest, rhs: IdentityDigest) -> Bool {
        lhs.words.0 == rhs.words.0 && lhs.words.1 == rhs.words.1 && lhs.words.2 == rhs.words.2
            && lhs.words.3 == rhs.words.3
    }

    package func hash(into hasher: inout Hasher) {
        hasher.combine(words.0)
        hasher.combine(words.1)
    }

    /// `user#` + the first 8 bytes in hex.
    package func tag(user: String?) -> String {
        var first = words.0
        let bytes = withUnsafeBytes(of: &first) { Array($0) }
        let hex = Array("0123456789abcdef".utf8)
        var text = (user ?? "default") + "#"
        for byte in bytes {
            text.unicodeScalars.append(Unicode.Scalar(hex[Int(byte >> 4)]))
            text.unicodeScalars.append(Unicode.Scalar(hex[Int(byte & 0xf)]))
        }
        return text
    }
}

/// The identity key file could not be read or made.
package struct IdentityKeyError: Error, CustomStringConvertible {
    package var message: String
    package var description: String { message }
}

/// The identity whose digest this thread computed last, under which key, and the digest. A connection's requests
/// arrive one after another on its event loop with the same credentials, so most requests need no hashing (the
/// two SHA-256 rounds were ~5% of the CPU of a single-row INSERT). Per thread: no lock, no cache line shared. It
/// holds one identity in memory, as that identity's requests and batches do anyway.
private final class LastDigest {
    /// The key's box; weak, so a key that is gone (an engine of a test) never matches a new one at its address.
    weak var key: AnyObject?
    var identity: ClientIdentity?
    var digest: IdentityDigest?

    private static let lasts = PerThread { LastDigest() }

    static func ofThisThread() -> LastDigest { lasts.current }
}
