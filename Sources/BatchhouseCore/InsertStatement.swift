/// A ClickHouse setting, from a URL parameter or a `SETTINGS k = v` clause; `value` is unquoted.
public struct Setting: Sendable, Hashable {
    public var name: String
    public var value: String
    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}

/// The prefix of a batchable INSERT: everything up to where its data begins.
public struct InsertStatement: Sendable, Hashable {
    /// From a `db.` prefix; nil when the statement names no database.
    public var database: String?
    /// Unquoted table name.
    public var table: String
    /// Unquoted column names from `(a, b, c)`; nil when the statement lists none.
    public var columns: [String]?
    public var format: InputFormat
    /// From the statement's SETTINGS clauses, in order.
    public var settings: [Setting]
    /// Byte offset in the parsed text where the data begins.
    public var dataOffset: Int
    /// Byte offset in the parsed text just after the statement's last token (the `VALUES` keyword, the format name,
    /// or a SETTINGS clause after them): what ClickHouse's `max_query_size` must cover.
    public var statementEnd: Int

    public init(
        database: String?, table: String, columns: [String]?, format: InputFormat, settings: [Setting], dataOffset: Int,
        statementEnd: Int? = nil
    ) {
        self.database = database
        self.table = table
        self.columns = columns
        self.format = format
        self.settings = settings
        self.dataOffset = dataOffset
        self.statementEnd = statementEnd ?? dataOffset
    }
}

/// What the INSERT parser made of a statement's head.
public enum InsertParseResult: Sendable, Hashable {
    /// A batchable INSERT.
    case insert(InsertStatement)
    /// The text ends before the parser could decide; give it more bytes (or treat as not batchable at end of input).
    case needMoreData
    /// Not something to batch: not an INSERT, INSERT ... SELECT, INSERT INTO FUNCTION, FROM INFILE, an unbatchable
    /// format, or anything the parser does not understand. Forward it as is.
    case passthrough(reason: String)
}
