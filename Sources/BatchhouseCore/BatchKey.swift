/// Who sent an INSERT, as far as ClickHouse is concerned: rows with different identities never share
/// an upstream request, and each batch goes upstream with the credentials of its rows.
///
/// The secret is kept in memory only so the batch can be sent (and in the spool, for replay). `description`
/// shows the user name only: the tag that tells two secrets of one user apart is a keyed hash made by the
/// engine (`IdentityTags`, docs/credentials.md), since anything derived from the secret without a key lets a
/// password guess be checked offline.
public struct ClientIdentity: Hashable, Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    public var user: String?
    public var password: String?

    public init(user: String?, password: String?) {
        self.user = user
        self.password = password
    }

    public static let anonymous = ClientIdentity(user: nil, password: nil)

    public var description: String { user ?? "default" }
    public var debugDescription: String { description }
}

/// Rows share a batch only when every field here is equal (docs/request-path.md, "Batch key").
///
/// Every request looks its key up in the open batches, so the hash of all fields is computed once, when the key
/// is made (again when a field changes), and equality compares that hash before the fields.
public struct BatchKey: Hashable, Sendable, CustomStringConvertible {
    public var identity: ClientIdentity { didSet { rehash() } }
    /// Effective database; nil means the upstream user's default database.
    public var database: String? { didSet { rehash() } }
    public var table: String { didSet { rehash() } }
    public var columns: [String]? { didSet { rehash() } }
    public var format: InputFormat { didSet { rehash() } }
    /// Header line(s) of text *WithNames formats, as sent; for RowBinary (+WithNames, +WithNamesAndTypes) and Native
    /// the columns' `ColumnSignature.encoded`. Part of the key; what of it a batch writes is
    /// `InputFormat.batchHeader(forKey:)`.
    public var header: [UInt8]? { didSet { rehash() } }
    /// Settings from URL parameters and SETTINGS clauses, sorted by name, last value wins.
    public var settings: [Setting] { didSet { rehash() } }
    /// The hash of every field above.
    private var fieldsHash = 0

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
        rehash()
    }

    private mutating func rehash() {
        var hasher = Hasher()
        hasher.combine(identity)
        hasher.combine(database)
        hasher.combine(table)
        hasher.combine(columns)
        hasher.combine(format)
        hasher.combine(header)
        hasher.combine(settings)
        fieldsHash = hasher.finalize()
    }

    public static func == (lhs: BatchKey, rhs: BatchKey) -> Bool {
        lhs.fieldsHash == rhs.fieldsHash && lhs.table == rhs.table && lhs.database == rhs.database
            && lhs.format == rhs.format && lhs.columns == rhs.columns && lhs.identity == rhs.identity
            && lhs.settings == rhs.settings && lhs.header == rhs.header
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(fieldsHash)
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
