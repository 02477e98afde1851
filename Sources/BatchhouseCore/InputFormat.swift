/// An input format ClickHouse accepts on INSERT, as far as batching is concerned.
///
/// Only formats whose chunks can be concatenated are batchable; everything else is
/// forwarded to ClickHouse as received (docs/request-path.md, "What is not batched").
public enum InputFormat: String, Sendable, Hashable, CaseIterable {
    case values = "Values"
    case tabSeparated = "TabSeparated"
    case tabSeparatedRaw = "TabSeparatedRaw"
    case tabSeparatedWithNames = "TabSeparatedWithNames"
    case tabSeparatedWithNamesAndTypes = "TabSeparatedWithNamesAndTypes"
    case csv = "CSV"
    case csvWithNames = "CSVWithNames"
    case jsonEachRow = "JSONEachRow"
    case jsonCompactEachRow = "JSONCompactEachRow"
    case jsonCompactEachRowWithNames = "JSONCompactEachRowWithNames"
    case jsonCompactEachRowWithNamesAndTypes = "JSONCompactEachRowWithNamesAndTypes"
    case tskv = "TSKV"
    case rowBinary = "RowBinary"
    case rowBinaryWithNames = "RowBinaryWithNames"
    case rowBinaryWithNamesAndTypes = "RowBinaryWithNamesAndTypes"
    case native = "Native"

    /// Resolves a format name as written in `FORMAT name`, including ClickHouse's aliases.
    /// Returns nil for formats that cannot be batched (Parquet, Avro, Template, ...) or unknown names.
    public init?(clickHouseName name: String) {
        switch name {
        case "TSV": self = .tabSeparated
        case "TSVRaw", "TabSeparatedRaw": self = .tabSeparatedRaw
        case "TSVWithNames": self = .tabSeparatedWithNames
        case "TSVWithNamesAndTypes": self = .tabSeparatedWithNamesAndTypes
        case "JSONLines", "NDJSON": self = .jsonEachRow
        default:
            guard let format = InputFormat(rawValue: name) else { return nil }
            self = format
        }
    }

    /// How many header lines (or header arrays) precede the rows. They are part of the batch key
    /// and are written once at the head of a batch.
    public var headerRows: Int {
        switch self {
        case .tabSeparatedWithNames, .csvWithNames, .jsonCompactEachRowWithNames: return 1
        case .tabSeparatedWithNamesAndTypes, .jsonCompactEachRowWithNamesAndTypes: return 2
        default: return 0
        }
    }

    /// The same format without header lines: how rows that follow the header are read.
    public var withoutHeader: InputFormat {
        switch self {
        case .tabSeparatedWithNames, .tabSeparatedWithNamesAndTypes: return .tabSeparated
        case .csvWithNames: return .csv
        case .jsonCompactEachRowWithNames, .jsonCompactEachRowWithNamesAndTypes: return .jsonCompactEachRow
        case .rowBinaryWithNames, .rowBinaryWithNamesAndTypes: return .rowBinary
        default: return self
        }
    }

    /// Whether rows are counted structurally. True for every format; the binary ones need the column types
    /// (`RowScanner.scan(_:format:columns:)`), without them their data is unsupported and passed through.
    public var isRowCounted: Bool { true }

    /// RowBinary (+WithNames, +WithNamesAndTypes) and Native: rows are found with the column types, and the batch
    /// key's header is the columns' `ColumnSignature` encoding rather than header lines.
    public var isBinary: Bool {
        switch self {
        case .rowBinary, .rowBinaryWithNames, .rowBinaryWithNamesAndTypes, .native: return true
        default: return false
        }
    }

    /// RowBinary and RowBinaryWithNames: the data does not say its column types, so rows are read with the table's
    /// (`TableDescription`, from the upstream's `DESCRIBE TABLE`).
    public var needsTableColumns: Bool { self == .rowBinary || self == .rowBinaryWithNames }

    /// The part of a batch key's header that is written at the head of a batch. Text formats: the header lines.
    /// RowBinary and Native: nothing (the signature is only part of the key). RowBinaryWithNames: the names part of
    /// the signature, RowBinaryWithNamesAndTypes: all of it, both being the header ClickHouse reads.
    public func batchHeader(forKey header: [UInt8]) -> [UInt8] {
        switch self {
        case .rowBinary, .native:
            return []
        case .rowBinaryWithNames:
            return ColumnSignature.namesPart(of: header)
        default:
            return header
        }
    }
}
