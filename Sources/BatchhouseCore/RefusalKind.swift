/// Why ClickHouse did not take a batch's rows, as the dead-letter record keeps it: the replayer sends rows
/// refused for who sent them only when asked to (docs/credentials.md, "Dead letters and replay").
public enum RefusalKind: String, Sendable, Codable, Hashable, CaseIterable {
    /// The credentials were not accepted: UNKNOWN_USER (192), WRONG_PASSWORD (193), REQUIRED_PASSWORD (194),
    /// IP_ADDRESS_NOT_ALLOWED (195), AUTHENTICATION_FAILED (516).
    case authentication
    /// The identity may not insert there: READONLY (164), DATABASE_ACCESS_DENIED (291),
    /// SETTING_CONSTRAINT_VIOLATION (452), ACCESS_DENIED (497).
    case permission
    /// The data itself is wrong (`DeliveryPolicy.dataErrorCodes`).
    case data
    /// Any other error answer.
    case other
    /// No answer after every retry.
    case unreachable

    public static let authenticationCodes: Set<Int> = [192, 193, 194, 195, 516]
    public static let permissionCodes: Set<Int> = [164, 291, 452, 497]
    /// Both of the above: never retried, never split.
    public static let identityCodes: Set<Int> = authenticationCodes.union(permissionCodes)

    /// `code`: the `Code: N` of the answer's body; `status` nil when there was no answer.
    public init(status: Int?, code: Int?) {
        guard status != nil else {
            self = .unreachable
            return
        }
        if let code {
            if Self.authenticationCodes.contains(code) {
                self = .authentication
                return
            }
            if Self.permissionCodes.contains(code) {
                self = .permission
                return
            }
            if DeliveryPolicy.dataErrorCodes.contains(code) {
                self = .data
                return
            }
        }
        switch status {
        case 401: self = .authentication
        case 403: self = .permission
        default: self = .other
        }
    }

    /// Refused for who sent the rows: replaying them with another account would insert what ClickHouse refused.
    public var refusesTheIdentity: Bool { self == .authentication || self == .permission }
}

/// The `Code: N` of a ClickHouse error text, if it has one (both the 18.x and the current wording start so).
public func clickHouseErrorCode(inText text: some StringProtocol) -> Int? {
    let head = text.prefix(512)
    guard let range = head.firstRange(of: "Code: ") else { return nil }
    let digits = head[range.upperBound...].prefix { $0.isASCII && $0.isNumber }
    return Int(digits)
}
