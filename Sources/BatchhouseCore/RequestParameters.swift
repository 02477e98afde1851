/// What a ClickHouse HTTP request says besides its body: the `query` parameter, the database, who sends it
/// and which settings apply. Parsed from the URL's query string and the headers ClickHouse reads.
public struct RequestParameters: Sendable, Hashable {
    /// The `query` URL parameter, decoded; the statement is this + "\n" + body.
    public var query: String?
    /// `database` parameter, else the `X-ClickHouse-Database` header.
    public var database: String?
    /// The credentials as ClickHouse resolves them (docs/credentials.md).
    public var credentials: Credentials
    /// URL parameters that are ClickHouse settings (everything not in `nonSettingParameters`).
    public var settings: [Setting]
    /// `decompress=1`: the body is in ClickHouse's native compression, which is not batched.
    public var decompress: Bool

    /// `session_id`: the request runs in a ClickHouse session (temporary tables, SET, USE), so it is never
    /// batched and always goes to the same server (docs/request-path.md, "Sessions").
    public var sessionID: String?

    /// The non-empty `session_id` of a request target's query string (still percent-encoded), found without
    /// parsing the rest: a query string that does not mention it costs one byte search.
    public static func sessionID(uriQuery: Substring) -> String? {
        guard uriQuery.contains("session_id") else { return nil }
        for (name, value) in QueryString.parse(uriQuery) where name == "session_id" && !value.isEmpty {
            return value
        }
        return nil
    }

    /// Whether the URL asks for `decompress=1` (ClickHouse's compressed blocks), without parsing the rest.
    public static func decompressRequested(uriQuery: Substring) -> Bool {
        guard uriQuery.contains("decompress") else { return false }
        // The last occurrence, as `init(uriQuery:header:)` reads it.
        var requested = false
        for (name, value) in QueryString.parse(uriQuery) where name == "decompress" {
            requested = value != "0" && !value.isEmpty
        }
        return requested
    }

    /// The identity the rows go upstream with; `.anonymous` when the credentials did not resolve to one.
    public var identity: ClientIdentity {
        if case .resolved(let identity) = credentials { return identity }
        return .anonymous
    }

    /// URL parameters ClickHouse's HTTP handler reads itself; every other parameter is a setting.
    /// `query_id` and `session_*` are deliberately not part of a batch key and not forwarded with batches.
    public static let nonSettingParameters: Set<String> = [
        "query", "database", "default_format", "user", "password", "quota_key", "query_id", "session_id",
        "session_timeout", "session_check", "compress", "decompress", "buffer_size", "wait_end_of_query",
        "stacktrace", "role", "client_protocol_version", "with_stacktrace",
    ]

    public init(query: String?, database: String?, credentials: Credentials, settings: [Setting], decompress: Bool) {
        self.query = query
        self.database = database
        self.credentials = credentials
        self.settings = settings
        self.decompress = decompress
    }

    public init(query: String?, database: String?, identity: ClientIdentity, settings: [Setting], decompress: Bool) {
        self.init(
            query: query, database: database, credentials: .resolved(identity), settings: settings,
            decompress: decompress)
    }

    /// - Parameters:
    ///   - uriQuery: the part of the request target after `?` (without it), still percent-encoded.
    ///   - header: looks a request header up by lowercase name.
    public init(uriQuery: Substring, header: (String) -> String?) {
        var query: String?
        var database: String?
        var given = GivenCredentials()
        var settings: [Setting] = []
        var decompress = false
        var sessionID: String?
        for (name, value) in QueryString.parse(uriQuery) {
            switch name {
            case "query": query = value
            case "database": database = value
            case "user": given.userParameter = value
            case "password": given.passwordParameter = value
            case "quota_key": given.hasQuotaKeyParameter = true
            case "decompress": decompress = value != "0" && !value.isEmpty
            case "session_id": if !value.isEmpty { sessionID = value }
            default:
                if !Self.nonSettingParameters.contains(name) && !name.hasPrefix("param_") {
                    settings.append(Setting(name: name, value: value))
                }
            }
        }
        if database == nil || database?.isEmpty == true, let headerDatabase = header("x-clickhouse-database"),
            !headerDatabase.isEmpty
        {
            database = headerDatabase
        }
        given.headerUser = header("x-clickhouse-user") ?? ""
        given.headerKey = header("x-clickhouse-key") ?? ""
        given.headerQuotaKey = header("x-clickhouse-quota") ?? ""
        given.authorization = header("authorization")
        self.init(
            query: query,
            database: database?.isEmpty == true ? nil : database,
            credentials: given.resolved(),
            settings: settings,
            decompress: decompress
        )
        self.sessionID = sessionID
    }
}

/// Who a request says it is, resolved the way ClickHouse's HTTP handler does (docs/credentials.md).
public enum Credentials: Sendable, Hashable {
    /// One scheme, one identity. `.anonymous` when the request names nobody (ClickHouse's `default` user).
    case resolved(ClientIdentity)
    /// `X-ClickHouse-User`/`X-ClickHouse-Key` together with `Authorization` or `?user=`/`?password=`: every
    /// ClickHouse version refuses the request (18.16: 401, code 194; current: 401, code 516).
    case mixedSchemes
    /// ClickHouse versions disagree on this request, or the proxy cannot read it the way ClickHouse would: the
    /// request is passed through unbatched, so ClickHouse itself decides.
    case unresolved(Unresolved)

    public enum Unresolved: String, Sendable, Hashable {
        /// `Authorization` and `?user=`/`?password=`: 18.16 takes the header, later releases refuse (516), the
        /// newest take the parameters.
        case authorizationAndParameters
        /// A quota key (`X-ClickHouse-Quota` or `?quota_key=`): it counts as a scheme on 18.16 and not later, and a
        /// batch cannot carry one per request.
        case quotaKey
        /// An empty user name: 18.16 looks up the user "", later releases refuse.
        case emptyUser
        /// An `Authorization` header that is not `Basic` with `user:password` in base64.
        case unreadableAuthorization
    }
}

/// The credential-bearing parts of a request, as received; `resolved()` applies ClickHouse's rules.
public struct GivenCredentials: Sendable, Hashable {
    /// `X-ClickHouse-User`, `X-ClickHouse-Key`, `X-ClickHouse-Quota`: "" when absent (ClickHouse reads them so).
    public var headerUser = ""
    public var headerKey = ""
    public var headerQuotaKey = ""
    /// The `Authorization` header, if present (any scheme: its presence alone counts).
    public var authorization: String?
    /// `?user=`, `?password=`: nil when absent, "" when present and empty.
    public var userParameter: String?
    public var passwordParameter: String?
    public var hasQuotaKeyParameter = false

    public init() {}

    /// ClickHouse's HTTP handler (18.16's `HTTPHandler::processQuery`, current `authenticateUserByHTTP`):
    /// non-empty `X-ClickHouse-User`/`X-ClickHouse-Key` headers are one scheme and may not be combined with
    /// `Authorization` or `?user=`/`?password=`; otherwise Basic authorization, otherwise the parameters, with
    /// user "default" and an empty password where not given. Where versions differ, `.unresolved`.
    public func resolved() -> Credentials {
        let hasParameters = userParameter != nil || passwordParameter != nil
        if !headerUser.isEmpty || !headerKey.isEmpty {
            if authorization != nil || hasParameters { return .mixedSchemes }
            if !headerQuotaKey.isEmpty || hasQuotaKeyParameter { return .unresolved(.quotaKey) }
            if headerUser.isEmpty { return .unresolved(.emptyUser) }
            return .resolved(ClientIdentity(user: headerUser, password: headerKey))
        }
        if !headerQuotaKey.isEmpty || hasQuotaKeyParameter { return .unresolved(.quotaKey) }
        if let authorization {
            if hasParameters { return .unresolved(.authorizationAndParameters) }
            guard let basic = BasicAuthorization(headerValue: authorization) else {
                return .unresolved(.unreadableAuthorization)
            }
            if basic.user.isEmpty { return .unresolved(.emptyUser) }
            return .resolved(ClientIdentity(user: basic.user, password: basic.password))
        }
        if hasParameters {
            let user = userParameter ?? "default"
            if user.isEmpty { return .unresolved(.emptyUser) }
            return .resolved(ClientIdentity(user: user, password: passwordParameter ?? ""))
        }
        return .resolved(.anonymous)
    }
}

/// `Authorization: Basic base64(user:password)`.
public struct BasicAuthorization: Sendable, Hashable {
    public var user: String
    public var password: String

    public init?(headerValue: String) {
        let parts = headerValue.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "basic",
            let decoded = Base64.decode(parts[1].trimmingSpaces())
        else { return nil }
        let text = String(decoding: decoded, as: UTF8.self)
        guard let colon = text.firstIndex(of: ":") else { return nil }
        user = String(text[..<colon])
        password = String(text[text.index(after: colon)...])
    }
}

/// Decoding of `application/x-www-form-urlencoded` query strings, as ClickHouse's HTTP handler reads them:
/// `&`-separated, `%XX` escapes, `+` as space.
public enum QueryString {
    /// `query` without the parameters named `name` (compared decoded); every other byte as it was, `&`s between
    /// the rest included. A request the proxy decoded goes upstream without `decompress`, since its body is then
    /// no longer in compressed blocks.
    public static func removing(_ name: String, from query: Substring) -> Substring {
        var kept: [Substring] = []
        var removedAny = false
        for pair in query.split(separator: "&", omittingEmptySubsequences: false) {
            let pairName = pair.firstIndex(of: "=").map { pair[..<$0] } ?? pair
            if !pair.isEmpty && decode(pairName) == name {
                removedAny = true
            } else {
                kept.append(pair)
            }
        }
        guard removedAny else { return query }
        return Substring(kept.joined(separator: "&"))
    }

    public static func parse(_ query: Substring) -> [(name: String, value: String)] {
        var items: [(name: String, value: String)] = []
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            if let equals = pair.firstIndex(of: "=") {
                items.append((decode(pair[..<equals]), decode(pair[pair.index(after: equals)...])))
            } else {
                items.append((decode(pair), ""))
            }
        }
        return items
    }

    public static func decode(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            switch byte {
            case UInt8(ascii: "+"):
                bytes.append(UInt8(ascii: " "))
            case UInt8(ascii: "%"):
                let high = iterator.next()
                let low = iterator.next()
                if let high, let low, let h = hexValue(high), let l = hexValue(low) {
                    bytes.append(h << 4 | l)
                } else {
                    bytes.append(byte)
                    if let high { bytes.append(high) }
                    if let low { bytes.append(low) }
                }
            default:
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Percent-encodes a value for a query string (RFC 3986 unreserved characters stay as they are).
    public static func encode(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        let hex = Array("0123456789ABCDEF".utf8)
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."),
                UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                out.unicodeScalars.append("%")
                out.unicodeScalars.append(Unicode.Scalar(hex[Int(byte >> 4)]))
                out.unicodeScalars.append(Unicode.Scalar(hex[Int(byte & 0xf)]))
            }
        }
        return out
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

enum Base64 {
    static func decode(_ text: Substring) -> [UInt8]? {
        var out: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        for byte in text.utf8 {
            let value: UInt8
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = byte - UInt8(ascii: "A")
            case UInt8(ascii: "a")...UInt8(ascii: "z"): value = byte - UInt8(ascii: "a") + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = byte - UInt8(ascii: "0") + 52
            case UInt8(ascii: "+"), UInt8(ascii: "-"): value = 62
            case UInt8(ascii: "/"), UInt8(ascii: "_"): value = 63
            case UInt8(ascii: "="): continue
            default: return nil
            }
            buffer = buffer << 6 | UInt32(value)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: buffer >> UInt32(bits)))
            }
        }
        return out
    }
}

extension Substring {
    func trimmingSpaces() -> Substring {
        var result = self
        while result.first == " " || result.first == "\t" { result.removeFirst() }
        while result.last == " " || result.last == "\t" { result.removeLast() }
        return result
    }
}
