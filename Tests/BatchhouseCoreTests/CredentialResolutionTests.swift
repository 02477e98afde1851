import Testing

@testable import BatchhouseCore

/// Credentials resolved as ClickHouse's HTTP handler resolves them (docs/credentials.md, "Resolution"): the
/// X-ClickHouse headers are one scheme and may not be mixed; else Basic; else the parameters; where versions
/// disagree the request is left to ClickHouse.
@Suite struct CredentialResolutionTests {
    static func credentials(_ query: Substring = "", headers: [String: String] = [:]) -> Credentials {
        RequestParameters(uriQuery: query) { headers[$0] }.credentials
    }

    static func basic(_ user: String, _ password: String) -> String {
        "Basic " + base64(Array("\(user):\(password)".utf8))
    }

    static func base64(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
        var out = ""
        var index = 0
        while index < bytes.count {
            let chunk = Array(bytes[index..<min(index + 3, bytes.count)])
            let value = chunk.enumerated().reduce(0) { $0 | Int($1.element) << (16 - 8 * $1.offset) }
            for position in 0..<4 {
                out.append(position <= chunk.count ? alphabet[(value >> (18 - 6 * position)) & 63] : "=")
            }
            index += 3
        }
        return out
    }

    static func identity(_ user: String?, _ password: String?) -> Credentials {
        .resolved(ClientIdentity(user: user, password: password))
    }

    @Test func eachSchemeAlone() {
        #expect(Self.credentials() == .resolved(.anonymous))
        #expect(Self.credentials("user=alice&password=pw") == Self.identity("alice", "pw"))
        #expect(Self.credentials("user=alice") == Self.identity("alice", ""))
        #expect(Self.credentials("password=pw") == Self.identity("default", "pw"))
        #expect(Self.credentials(headers: ["authorization": Self.basic("alice", "p:w")]) == Self.identity("alice", "p:w"))
        #expect(Self.credentials(headers: ["x-clickhouse-user": "alice", "x-clickhouse-key": "pw"]) == Self.identity("alice", "pw"))
        #expect(Self.credentials(headers: ["x-clickhouse-user": "alice"]) == Self.identity("alice", ""))
    }

    /// Issue 9, item 7: the proxy used to take `?user=` over Basic; 18.16 takes Basic, later releases refuse
    /// (516) and the newest take the parameters, so the request is left to ClickHouse.
    @Test func basicTogetherWithParametersIsLeftToClickHouse() {
        let basic = ["authorization": Self.basic("alice", "WRONG")]
        #expect(Self.credentials("user=alice&password=RIGHT", headers: basic) == .unresolved(.authorizationAndParameters))
        #expect(Self.credentials("user=default", headers: basic) == .unresolved(.authorizationAndParameters))
        #expect(Self.credentials("password=x", headers: basic) == .unresolved(.authorizationAndParameters))
        #expect(RequestParameters(uriQuery: "user=default") { basic[$0] }.identity == .anonymous)
    }

    /// Issue 9, item 7: `X-ClickHouse-User`/`-Key` with any other scheme is refused by every version.
    @Test func headersMixedWithAnotherSchemeAreRefused() {
        let headers = ["x-clickhouse-user": "alice", "x-clickhouse-key": "pw"]
        #expect(Self.credentials("user=alice", headers: headers) == .mixedSchemes)
        #expect(Self.credentials("password=pw", headers: headers) == .mixedSchemes)
        #expect(Self.credentials("user=", headers: headers) == .mixedSchemes, "present counts, even empty")
        var withBasic = headers
        withBasic["authorization"] = Self.basic("alice", "pw")
        #expect(Self.credentials(headers: withBasic) == .mixedSchemes)
        #expect(Self.credentials(headers: ["x-clickhouse-key": "pw", "authorization": "Bearer t"]) == .mixedSchemes)
        #expect(Self.credentials("user=bob", headers: ["x-clickhouse-key": "pw"]) == .mixedSchemes)
    }

    @Test func emptyHeadersCountAsAbsent() {
        let headers = ["x-clickhouse-user": "", "x-clickhouse-key": "", "authorization": Self.basic("bob", "b")]
        #expect(Self.credentials(headers: headers) == Self.identity("bob", "b"))
        #expect(Self.credentials("user=carol", headers: ["x-clickhouse-user": ""]) == Self.identity("carol", ""))
    }

    @Test func whatVersionsDisagreeOnIsLeftToClickHouse() {
        #expect(Self.credentials("quota_key=q") == .unresolved(.quotaKey))
        #expect(Self.credentials(headers: ["x-clickhouse-quota": "q"]) == .unresolved(.quotaKey))
        #expect(Self.credentials("quota_key=q", headers: ["x-clickhouse-user": "alice"]) == .unresolved(.quotaKey))
        #expect(Self.credentials(headers: ["x-clickhouse-key": "pw"]) == .unresolved(.emptyUser))
        #expect(Self.credentials("user=") == .unresolved(.emptyUser))
        #expect(Self.credentials(headers: ["authorization": Self.basic("", "pw")]) == .unresolved(.emptyUser))
        #expect(Self.credentials(headers: ["authorization": "Bearer abc"]) == .unresolved(.unreadableAuthorization))
        #expect(Self.credentials(headers: ["authorization": "Basic !!!"]) == .unresolved(.unreadableAuthorization))
        #expect(Self.credentials(headers: ["authorization": "Basic " + Self.base64(Array("nocolon".utf8))])
            == .unresolved(.unreadableAuthorization))
    }

    @Test func identityOfWhatDidNotResolveIsAnonymous() {
        let parameters = RequestParameters(uriQuery: "user=alice") { $0 == "x-clickhouse-user" ? "bob" : nil }
        #expect(parameters.credentials == .mixedSchemes)
        #expect(parameters.identity == .anonymous)
    }

    @Test func refusalsAreClassifiedByCode() {
        #expect(RefusalKind(status: 401, code: 193) == .authentication)
        #expect(RefusalKind(status: 401, code: 192) == .authentication)
        #expect(RefusalKind(status: 401, code: 194) == .authentication)
        #expect(RefusalKind(status: 401, code: 516) == .authentication)
        #expect(RefusalKind(status: 500, code: 164) == .permission)
        #expect(RefusalKind(status: 403, code: 497) == .permission)
        #expect(RefusalKind(status: 403, code: nil) == .permission)
        #expect(RefusalKind(status: 401, code: nil) == .authentication)
        #expect(RefusalKind(status: 500, code: 27) == .data)
        #expect(RefusalKind(status: 404, code: 60) == .other)
        #expect(RefusalKind(status: nil, code: nil) == .unreachable)
        #expect(clickHouseErrorCode(inText: "Code: 193, e.displayText() = DB::Exception: Wrong password") == 193)
        #expect(clickHouseErrorCode(inText: "Code: 516. DB::Exception: x. (AUTHENTICATION_FAILED)") == 516)
        #expect(clickHouseErrorCode(inText: "connect: refused") == nil)
    }

    /// A readonly refusal came back as a 500 on some versions: it was retried (and with a spool, forever).
    @Test func identityRefusalsAreNeverRetriedNorSplit() {
        let policy = DeliveryPolicy(retries: 3, backoffBase: .milliseconds(10), retryUntilDelivered: true)
        for code in RefusalKind.identityCodes {
            #expect(policy.decide(.response(status: 500, exceptionCode: code), attempt: 0, closing: false, jitter: 0) == .deadLetter)
        }
        #expect(policy.decide(.response(status: 500, exceptionCode: 27), attempt: 0, closing: false, jitter: 0) == .split)
    }
}
