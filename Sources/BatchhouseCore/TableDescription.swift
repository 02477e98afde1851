/// A table's columns as `DESCRIBE TABLE db.t FORMAT TabSeparated` prints them (ClickHouse 18.16: name, type,
/// default_type, default_expression, comment, codec_expression; 26.x adds more columns), for the column types of
/// binary INSERTs.
public struct TableDescription: Sendable, Hashable {
    public struct Column: Sendable, Hashable {
        public var name: String
        public var type: String
        /// "", "DEFAULT", "MATERIALIZED", "ALIAS" or "EPHEMERAL".
        public var defaultKind: String

        public init(name: String, type: String, defaultKind: String) {
            self.name = name
            self.type = type
            self.defaultKind = defaultKind
        }
    }

    /// Every column DESCRIBE listed, in order.
    public var columns: [Column]

    public init(columns: [Column]) { self.columns = columns }

    /// Parses DESCRIBE's TabSeparated output (values TSV-escaped: `\t`, `\n`, `\\`, `\'`, ...); nil when a line has
    /// fewer than two fields or there are no columns.
    public init?(describeOutput text: String) {
        var columns: [Column] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false).map { Self.unescape(Substring($0)) }
            guard fields.count >= 2, !fields[0].isEmpty else { return nil }
            columns.append(Column(name: fields[0], type: fields[1], defaultKind: fields.count > 2 ? fields[2] : ""))
        }
        guard !columns.isEmpty else { return nil }
        self.columns = columns
    }

    /// Columns an INSERT may name (ClickHouse's getInsertable): all but MATERIALIZED and ALIAS.
    public var insertable: [Column] {
        columns.filter { $0.defaultKind != "MATERIALIZED" && $0.defaultKind != "ALIAS" }
    }

    /// Columns an INSERT without a column list takes (getSampleBlockNonMaterialized: the ordinary columns), which
    /// leaves EPHEMERAL columns out too.
    public var ordinary: [Column] {
        insertable.filter { $0.defaultKind != "EPHEMERAL" }
    }

    /// The columns of an INSERT with the list `names` (in that order), or without a list (nil). Nil when a name is
    /// not an insertable column or a type's layout is unknown: such INSERTs are passed through.
    public func signature(for names: [String]?) -> ColumnSignature? {
        guard let names else { return ColumnSignature(ordinary.map { ($0.name, $0.type) }) }
        var byName: [String: String] = [:]
        for column in insertable where byName[column.name] == nil { byName[column.name] = column.type }
        var pairs: [(name: String, type: String)] = []
        for name in names {
            guard let type = byName[name] else { return nil }
            pairs.append((name, type))
        }
        return ColumnSignature(pairs)
    }

    /// readEscapedString's escapes.
    static func unescape(_ field: Substring) -> String {
        guard field.contains("\\") else { return String(field) }
        var out: [UInt8] = []
        var bytes = Array(field.utf8)[...]
        while let b = bytes.popFirst() {
            guard b == UInt8(ascii: "\\"), let next = bytes.popFirst() else {
                out.append(b)
                continue
            }
            switch next {
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "0"): out.append(0x00)
            case UInt8(ascii: "a"): out.append(0x07)
            case UInt8(ascii: "v"): out.append(0x0B)
            case UInt8(ascii: "e"): out.append(0x1B)
            default: out.append(next)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
