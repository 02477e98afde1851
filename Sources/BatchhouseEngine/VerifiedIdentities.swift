import Foundation

/// Which identities ClickHouse accepted, and when (Unix seconds), kept next to the identity key in the spool
/// directory. A proxy restarted while ClickHouse is unreachable then still takes the clients ClickHouse accepted
/// within `CredentialVerifier.trustedWhileUnreachableFor`, so their rows go to the spool instead of being refused
/// (docs/credentials.md, "Verification"). It holds keyed digests only, never a secret; the file is 0600.
package struct VerifiedIdentityFile: Sendable {
    package static let fileName = "verified-identities"
    package let path: String

    package init(directory: String) {
        path = directory + "/" + Self.fileName
    }

    /// What the file holds; an unreadable or malformed file is an empty list (identities are then asked again).
    package func load() -> [IdentityDigest: Double] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [:] }
        var entries: [IdentityDigest: Double] = [:]
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count == 2, let digest = IdentityDigest(hex: fields[0]), let at = Double(fields[1]) else {
                continue
            }
            entries[digest] = at
        }
        return entries
    }

    /// Replaces the file (written aside, then renamed, 0600).
    package func save(_ entries: [IdentityDigest: Double]) throws {
        var text = ""
        for (digest, at) in entries { text += "\(digest.hex) \(Int(at))\n" }
        let temporary = path + ".tmp"
        guard FileManager.default.createFile(
            atPath: temporary, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600])
        else { throw CocoaError(.fileWriteUnknown) }
        if rename(temporary, path) != 0 { throw CocoaError(.fileWriteUnknown) }
    }
}

extension IdentityDigest {
    /// 64 hex digits.
    package var hex: String {
        wordList.map { word in
            let digits = String(word, radix: 16)
            return String(repeating: "0", count: 16 - digits.count) + digits
        }.joined()
    }

    package init?(hex: Substring) {
        guard hex.count == 64, hex.allSatisfy(\.isHexDigit) else { return nil }
        var values: [UInt64] = []
        var index = hex.startIndex
        for _ in 0..<4 {
            let end = hex.index(index, offsetBy: 16)
            guard let value = UInt64(hex[index..<end], radix: 16) else { return nil }
            values.append(value)
            index = end
        }
        self.init(words: (values[0], values[1], values[2], values[3]))
    }
}
