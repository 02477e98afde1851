/// What the upstream ClickHouse understands, from its `SELECT version()`. 18.16 rejects settings it does not
/// know, so nothing newer is sent unless the version says it is known.
public struct UpstreamCapabilities: Sendable, Hashable {
    public var version: [Int]

    /// nil when the text is not a version (`18.16.1`, `23.8.2.7`, `24.3.1.2672-lts`...).
    public init?(version text: String) {
        let numbers = text.trimmingCharacters(in: " \n\t").split(separator: ".").prefix(4).map {
            Int($0.prefix { $0.isNumber })
        }
        guard numbers.count >= 2, numbers.allSatisfy({ $0 != nil }) else { return nil }
        version = numbers.map { $0! }
    }

    public func isAtLeast(_ major: Int, _ minor: Int) -> Bool {
        let (ourMajor, ourMinor) = (version[0], version[1])
        return ourMajor > major || (ourMajor == major && ourMinor >= minor)
    }

    /// `insert_deduplication_token` (22.2+): a retried batch with the same token is not inserted twice into a
    /// replicated table (and into any MergeTree with `non_replicated_deduplication_window`).
    public var supportsDeduplicationToken: Bool { isAtLeast(22, 2) }

    /// `INSERT INTO t SETTINGS k = v FORMAT ...`: added to ClickHouse's INSERT parser in early 2019 (PR #4174);
    /// taken from 19.3 on, a safe margin. 18.16 refuses the syntax.
    public var supportsInsertSettingsClause: Bool { isAtLeast(19, 3) }

    /// Whether the server reads `format` as INSERT input. 18.16 has neither JSONCompactEachRow nor the RowBinary
    /// variants with a header as input formats; they came in 2020 and 2021 (a batch of them would be refused
    /// with UNKNOWN_FORMAT after the clients were acknowledged). Taken from 21.8 on, a safe margin.
    public func readsInput(_ format: InputFormat) -> Bool {
        if Self.everyVersionReads(format) { return true }
        return isAtLeast(21, 8)
    }

    /// The input formats 18.16 already reads: batched even before the version is known.
    public static func everyVersionReads(_ format: InputFormat) -> Bool {
        switch format {
        case .jsonCompactEachRow, .jsonCompactEachRowWithNames, .jsonCompactEachRowWithNamesAndTypes,
            .rowBinaryWithNames, .rowBinaryWithNamesAndTypes:
            return false
        default:
            return true
        }
    }

    /// A request body in `Content-Encoding: zstd`: ZstdInflatingReadBuffer and the HTTP handler's
    /// chooseCompressionMethod came in during 2020 (20.x); 21.1 is a margin, since the exact release was not
    /// pinned down. 18.16 refuses it with Code 89.
    public var decodesZstdRequestBodies: Bool { isAtLeast(21, 1) }

    /// `Content-Encoding: lz4` (the frame format): Lz4InflatingReadBuffer landed in late 2021 (21.12); 22.1 is
    /// the margin, for the same reason.
    public var decodesLZ4RequestBodies: Bool { isAtLeast(22, 1) }
}

extension String {
    fileprivate func trimmingCharacters(in set: String) -> Substring {
        var result = self[...]
        while let first = result.first, set.contains(first) { result.removeFirst() }
        while let last = result.last, set.contains(last) { result.removeLast() }
        return result
    }
}
