/// Who sent an INSERT, as far as ClickHouse is concerned: rows with different identities never share
/// an upstream request, and each batch goes upstream with the credentials of its rows.
///
/// The secret is kept in memory only so the batch can be sent; `description` shows a fingerprint.
public struct ClientIdentity: Hashable, Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    public var user: String?
    public var password: String?

    public init(user: String?, password: String?) {
        self.user = user
        self.password = password
    }

    public static let anonymous = ClientIdentity(user: nil, password: nil)

    /// A short, stable, non-reversible tag of user + secret (FNV-1a 64), for logs and metrics.
    public var fingerprint: String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ string: String?) {
            for byte in (string ?? "\u{0}").utf8 {
                hash ^= UInt64(byte)
                hash &*= 0x100_0000_01b3
            }
            hash ^= 0xff
            hash &*= 0x100_0000_01b3
        }
        mix(user)
        mix(password)
        let hex = String(hash >> 32, radix: 16)
        return String(repeating: "0", count: max(0, 8 - hex.count)) + hex
    }

    public var description: String { "\(user ?? "default")#\(fingerprint)" }
    public var debugDescription: String { description }
}

/// Rows share a batch only when every field here is equal (DESIGN.md, "Batch key").
public struct BatchKey: Hashable, Sendable, CustomStringConvertible {
    public var identity: ClientIdentity
    /// Effective database; nil means the upstream user's default database.
    public var database: String?
    public var table: String
    public var columns: [String]?
    public var format: InputFormat
    /// Header line(s) of *WithNames formats, as sent; part of the key.
    public var header: [UInt8]?
    /// Settings from URL parameters and SETTINGS clauses, sorted by name, last value wins.
    public var settings: [Setting]

    public init(
        identity: ClientIdentity,
        database: String?,
        table: String,
        columns: [String]?,
        format: InputFormat,
        header: [UInt8]?,
        settings: [Setting]
    ) {
        self.identity = identity
        self.database = database
        self.table = table
        self.columns = columns
        self.format = format
        self.header = header
        self.settings = BatchKey.normalized(settings)
    }

    /// Sorted by name; when a name repeats, the last value wins (as ClickHouse applies them).
    public static func normalized(_ settings: [Setting]) -> [Setting] {
        if settings.isEmpty { return settings }
        var byName: [String: String] = [:]
        for setting in settings { byName[setting.name] = setting.value }
        return byName.map { Setting(name: $0.key, value: $0.value) }.sorted { $0.name < $1.name }
    }

    /// `db.table` as the rules and metrics name it; the database is "default" when unknown.
    public var qualifiedTable: String { "\(database ?? "default").\(table)" }

    /// The statement a flush of this key sends upstream; the data follows in the body.
    public var insertStatement: String {
        var sql = "INSERT INTO "
        if let database { sql += Self.quote(database) + "." }
        sql += Self.quote(table)
        if let columns {
            sql += " (" + columns.map(Self.quote).joined(separator: ", ") + ")"
        }
        sql += " FORMAT " + format.rawValue
        return sql
    }

    /// A backtick-quoted identifier, with `\` and `` ` `` escaped.
    public static func quote(_ identifier: String) -> String {
        var out = "`"
        for character in identifier {
            if character == "`" || character == "\\" { out.append("\\") }
            out.append(character)
        }
        out.append("`")
        return out
    }

    public var description: String { "\(qualifiedTable) [\(format.rawValue), \(identity)]" }
}
