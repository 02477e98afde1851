import BatchhouseCore

/// The text forms of values in the strategy file, parsed without YAML's own typing so that `${VAR}`
/// substitutions and quoted values behave the same as plain ones.
///
/// - Durations: one or more `<number><unit>` parts, units `ms`, `s`, `m`, `h` (case-insensitive),
///   e.g. `250ms`, `2s`, `1.5s`, `5m`, `1h`, `1m30s`. A plain number is rejected (seconds or
///   milliseconds? the file must say), except `0`. Never negative.
/// - Sizes: plain bytes (`1048576`), or a number with a unit: `KiB`, `MiB`, `GiB`, `TiB` (also `K`/`Ki`...,
///   powers of 1024) or `KB`, `MB`, `GB`, `TB` (powers of 1000, as in SI and ClickHouse). Units are
///   case-insensitive, a space before the unit is allowed, fractions need a unit (`1.5GiB`) and round down
///   to whole bytes. Never negative.
/// - Whole numbers: optional sign, digits, `_` between digits (`100_000`).
/// - Booleans: `true`/`false`, `yes`/`no`, `on`/`off`, case-insensitive.
enum ValueSyntax {
    struct Problem: Error {
        var reason: String
    }

    static let durationExamples = "250ms, 2s, 1.5s, 5m, 1h or 1m30s"
    static let sizeExamples = "plain bytes, or 512KiB, 16MiB, 1GiB"

    // MARK: Durations

    private static let durationUnits: [String: Int64] = [
        "ms": 1_000_000,
        "s": 1_000_000_000,
        "m": 60_000_000_000,
        "h": 3_600_000_000_000,
    ]

    static func duration(_ text: String) throws(Problem) -> Duration {
        let scanner = Scanner(text)
        if scanner.isAtEnd { throw Problem(reason: "is empty") }
        if scanner.peek == UInt8(ascii: "-") { throw Problem(reason: "must not be negative") }
        if text.trimmedSpaces == "0" { return .zero }
        var total: Int64 = 0
        while !scanner.isAtEnd {
            guard let number = scanner.decimal() else {
                throw Problem(reason: "is not a duration")
            }
            scanner.skipSpaces()
            let unitText = scanner.letters().lowercased()
            if unitText.isEmpty {
                throw Problem(reason: "has no unit (a plain number could be seconds or milliseconds)")
            }
            guard let unit = durationUnits[unitText] else {
                throw Problem(reason: "has an unknown unit '\(unitText)' (units: ms, s, m, h)")
            }
            guard let nanoseconds = number.scaled(by: unit), case (let sum, false) = total.addingReportingOverflow(nanoseconds) else {
                throw Problem(reason: "is too long")
            }
            total = sum
            scanner.skipSpaces()
        }
        return .nanoseconds(total)
    }

    // MARK: Sizes

    private static let sizeUnits: [String: Int64] = [
        "": 1, "b": 1,
        "k": 1 << 10, "ki": 1 << 10, "kib": 1 << 10, "kb": 1_000,
        "m": 1 << 20, "mi": 1 << 20, "mib": 1 << 20, "mb": 1_000_000,
        "g": 1 << 30, "gi": 1 << 30, "gib": 1 << 30, "gb": 1_000_000_000,
        "t": 1 << 40, "ti": 1 << 40, "tib": 1 << 40, "tb": 1_000_000_000_000,
    ]

    static func size(_ text: String) throws(Problem) -> Int {
        let scanner = Scanner(text)
        if scanner.isAtEnd { throw Problem(reason: "is empty") }
        if scanner.peek == UInt8(ascii: "-") { throw Problem(reason: "must not be negative") }
        guard let number = scanner.decimal() else { throw Problem(reason: "is not a size") }
        scanner.skipSpaces()
        let unitText = scanner.letters().lowercased()
        scanner.skipSpaces()
        guard scanner.isAtEnd else { throw Problem(reason: "is not a size") }
        guard let unit = sizeUnits[unitText] else {
            throw Problem(reason: "has an unknown unit '\(unitText)' (units: KiB, MiB, GiB, TiB; KB, MB, GB, TB are powers of 1000)")
        }
        if unitText.isEmpty || unitText == "b", !number.fraction.isEmpty {
            throw Problem(reason: "is a fraction of a byte")
        }
        guard let bytes = number.scaled(by: unit) else { throw Problem(reason: "is too large") }
        return Int(bytes)
    }

    // MARK: Numbers and booleans

    static func integer(_ text: String) throws(Problem) -> Int {
        var digits = Substring(text.trimmedSpaces)
        var negative = false
        if let sign = digits.first, sign == "-" || sign == "+" {
            negative = sign == "-"
            digits = digits.dropFirst()
        }
        guard let first = digits.first, first.isASCIIDigit, let last = digits.last, last.isASCIIDigit,
            digits.allSatisfy({ $0.isASCIIDigit || $0 == "_" }), !digits.contains("__")
        else {
            throw Problem(reason: "is not a whole number")
        }
        guard let magnitude = Int(digits.filter { $0 != "_" }) else { throw Problem(reason: "is too large") }
        return negative ? -magnitude : magnitude
    }

    static func fraction(_ text: String) throws(Problem) -> Double {
        let trimmed = text.trimmedSpaces
        guard !trimmed.isEmpty, trimmed.allSatisfy({ $0.isASCIIDigit || "+-.eE".contains($0) }),
            let value = Double(trimmed), value.isFinite
        else {
            throw Problem(reason: "is not a number")
        }
        return value
    }

    static func bool(_ text: String) -> Bool? {
        switch text.trimmedSpaces.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: return nil
        }
    }

    // MARK: Addresses

    /// `host:port`, `[v6]:port`, `:port` (all interfaces) or a bare port.
    static func listenAddress(_ text: String) throws(Problem) -> ListenAddress {
        let trimmed = text.trimmedSpaces
        let host: Substring
        let portText: Substring
        if trimmed.hasPrefix("[") {
            guard let close = trimmed.firstIndex(of: "]") else {
                throw Problem(reason: "has '[' without ']'")
            }
            host = trimmed[trimmed.index(after: trimmed.startIndex)..<close]
            let rest = trimmed[trimmed.index(after: close)...]
            guard rest.hasPrefix(":") else { throw Problem(reason: "needs ':port' after ']'") }
            portText = rest.dropFirst()
        } else if let colon = trimmed.lastIndex(of: ":") {
            host = trimmed[..<colon]
            portText = trimmed[trimmed.index(after: colon)...]
            if host.contains(":") {
                throw Problem(reason: "has an IPv6 address without brackets (write [::1]:8123)")
            }
        } else if trimmed.allSatisfy(\.isASCIIDigit) {
            host = ""
            portText = Substring(trimmed)
        } else {
            throw Problem(reason: "has no port")
        }
        guard !host.contains(where: \.isWhitespace) else { throw Problem(reason: "has a space in the host") }
        guard !portText.isEmpty, portText.allSatisfy(\.isASCIIDigit), let port = Int(portText), port <= 65535 else {
            throw Problem(reason: "has an invalid port '\(portText)' (0..65535)")
        }
        return .init(host: host.isEmpty ? "0.0.0.0" : String(host), port: port)
    }

    /// `http(s)://host[:port][/path]`, returned without a trailing `/`.
    /// Never echoes the URL in a problem: it might carry credentials.
    static func serverURL(_ text: String) throws(Problem) -> String {
        var url = text.trimmedSpaces
        let lower = url.lowercased()
        let schemeLength: Int
        if lower.hasPrefix("http://") {
            schemeLength = 7
        } else if lower.hasPrefix("https://") {
            schemeLength = 8
        } else {
            throw Problem(reason: "must start with http:// or https://")
        }
        let afterScheme = url.dropFirst(schemeLength)
        let authority = afterScheme.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        if authority.contains("@") {
            throw Problem(reason: "must not contain credentials; set upstream.user and upstream.password instead")
        }
        if afterScheme.contains("?") || afterScheme.contains("#") {
            throw Problem(reason: "must not have a query or fragment")
        }
        if afterScheme.contains(where: \.isWhitespace) {
            throw Problem(reason: "must not contain spaces")
        }
        let hostPart: Substring
        var portPart: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw Problem(reason: "has '[' without ']'") }
            hostPart = authority[authority.index(after: authority.startIndex)..<close]
            let rest = authority[authority.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":") else { throw Problem(reason: "has text after ']' that is not ':port'") }
                portPart = rest.dropFirst()
            }
        } else if let colon = authority.firstIndex(of: ":") {
            hostPart = authority[..<colon]
            portPart = authority[authority.index(after: colon)...]
        } else {
            hostPart = authority
        }
        if hostPart.isEmpty { throw Problem(reason: "has no host") }
        if let portPart {
            guard !portPart.isEmpty, portPart.allSatisfy(\.isASCIIDigit), let port = Int(portPart), (1...65535).contains(port)
            else {
                throw Problem(reason: "has an invalid port (1..65535)")
            }
        }
        while url.hasSuffix("/") { url.removeLast() }
        return url
    }

    // MARK: Suggestions

    /// The closest candidate to a mistyped word, when it is close enough to be a typo.
    static func suggestion(for word: String, among candidates: [String]) -> String? {
        func normalized(_ text: String) -> [Character] {
            Array(text.lowercased().map { $0 == "-" ? "_" : $0 })
        }
        let target = normalized(word)
        var best: (candidate: String, distance: Int)?
        for candidate in candidates {
            let other = normalized(candidate)
            let distance = editDistance(target, other)
            let limit = min(2, max(1, other.count / 3))
            let compact = target.filter { $0 != "_" } == other.filter { $0 != "_" }
            // A cut-short key (`max_buffer_mem`) is a typo too, however far its edit distance.
            let truncated = target.count >= 4 && other.starts(with: target)
            guard distance <= limit || compact || truncated else { continue }
            let score = compact ? 0 : truncated ? 1 : distance
            if best == nil || score < best!.distance { best = (candidate, score) }
        }
        return best?.candidate
    }

    private static func editDistance(_ a: [Character], _ b: [Character]) -> Int {
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                let cost = a[i - 1] == b[j - 1] ? 0 : 1
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }
}

/// Values printed back in the file's own syntax, so a report can be pasted into a strategy file.
enum ValueFormat {
    static func duration(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let nanoseconds = seconds * 1_000_000_000 + attoseconds / 1_000_000_000
        if nanoseconds == 0 { return "0s" }
        for (unit, size) in [("h", Int64(3_600_000_000_000)), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000)]
        where nanoseconds % size == 0 {
            return "\(nanoseconds / size)\(unit)"
        }
        var fraction = String(nanoseconds % 1_000_000_000)
        fraction = String(repeating: "0", count: 9 - fraction.count) + fraction
        while fraction.hasSuffix("0") { fraction.removeLast() }
        return "\(nanoseconds / 1_000_000_000).\(fraction)s"
    }

    static func size(_ bytes: Int) -> String {
        if bytes == 0 { return "0" }
        for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] where bytes % (1 << shift) == 0 {
            return "\(bytes >> shift)\(unit)"
        }
        return String(bytes)
    }
}

/// Where a value sits in the file, printed as `tables."default.payments".max_rows` or `upstream.servers[1]`.
struct ConfigPath: CustomStringConvertible {
    private(set) var text: String

    static let root = ConfigPath(text: "")

    func key(_ key: String) -> ConfigPath {
        let isPlain = !key.isEmpty && key.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }
        let component = isPlain ? key : "\"" + key.replacingAll("\"", with: "\\\"") + "\""
        return ConfigPath(text: text.isEmpty ? component : text + "." + component)
    }

    func index(_ index: Int) -> ConfigPath {
        ConfigPath(text: text + "[\(index)]")
    }

    var isRoot: Bool { text.isEmpty }
    var description: String { text }
}

/// A cursor over the UTF-8 of one value.
private final class Scanner {
    struct Decimal {
        var whole: Substring.UTF8View
        var fraction: Substring.UTF8View

        /// `whole.fraction × unit`, truncated to an integer; nil on overflow.
        func scaled(by unit: Int64) -> Int64? {
            guard let whole = Self.integer(whole), case (let result, false) = whole.multipliedReportingOverflow(by: unit)
            else { return nil }
            // Digits past the 18th are dropped: they are worth far less than a nanosecond or a byte.
            let digits = fraction.prefix(18)
            guard !digits.isEmpty, let numerator = Self.integer(digits) else { return result }
            var denominator: Int64 = 1
            for _ in digits { denominator *= 10 }
            let part = denominator.dividingFullWidth(numerator.multipliedFullWidth(by: unit)).quotient
            guard case (let sum, false) = result.addingReportingOverflow(part) else { return nil }
            return sum
        }

        private static func integer(_ digits: some Collection<UInt8>) -> Int64? {
            var value: Int64 = 0
            for digit in digits {
                let (times10, o1) = value.multipliedReportingOverflow(by: 10)
                let (next, o2) = times10.addingReportingOverflow(Int64(digit - UInt8(ascii: "0")))
                if o1 || o2 { return nil }
                value = next
            }
            return value
        }
    }

    private let text: Substring.UTF8View
    private var position: Substring.UTF8View.Index

    init(_ text: String) {
        self.text = Substring(text.trimmedSpaces).utf8
        self.position = self.text.startIndex
    }

    var isAtEnd: Bool { position == text.endIndex }
    var peek: UInt8? { isAtEnd ? nil : text[position] }

    func skipSpaces() {
        while let byte = peek, byte == UInt8(ascii: " ") { position = text.index(after: position) }
    }

    func letters() -> String {
        let start = position
        while let byte = peek, (byte | 0x20) >= UInt8(ascii: "a"), (byte | 0x20) <= UInt8(ascii: "z") {
            position = text.index(after: position)
        }
        return String(decoding: text[start..<position], as: UTF8.self)
    }

    func digits() -> Substring.UTF8View {
        let start = position
        while let byte = peek, byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") {
            position = text.index(after: position)
        }
        return text[start..<position]
    }

    /// `123`, `1.5` or `.5`; nil (and nothing consumed) when there is no number here.
    func decimal() -> Decimal? {
        let start = position
        let whole = digits()
        var fraction = text[position..<position]
        if peek == UInt8(ascii: ".") {
            position = text.index(after: position)
            fraction = digits()
        }
        if whole.isEmpty && fraction.isEmpty {
            position = start
            return nil
        }
        return Decimal(whole: whole, fraction: fraction)
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}

extension String {
    /// Without leading and trailing spaces, tabs and newlines.
    var trimmedSpaces: String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return String(self[first...last])
    }

    func replacingAll(_ target: Character, with replacement: String) -> String {
        var result = ""
        for character in self {
            if character == target { result += replacement } else { result.append(character) }
        }
        return result
    }
}
