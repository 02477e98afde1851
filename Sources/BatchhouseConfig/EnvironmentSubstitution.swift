/// `${VAR}` in the strategy file.
///
/// Substitution happens in each YAML scalar (keys and values) after the file is parsed, not in the raw
/// text: a substituted value can then hold `#`, `: `, quotes or newlines (a password, say) without
/// changing the document's structure, a `${VAR}` inside a comment is ignored, and an error points at the
/// key that uses the variable.
///
/// - `${VAR}`: the variable's value; an error when it is not set (set but empty gives "").
/// - `${VAR:-fallback}`: the fallback when the variable is unset or empty.
/// - `$${`: a literal `${`. A `$` not followed by `{` is kept as is.
enum EnvironmentSubstitution {
    enum Problem: Error {
        case undefined(name: String)
        case malformed(String)
    }

    static func apply(_ text: String, environment: [String: String]) throws(Problem) -> String {
        guard text.utf8.contains(UInt8(ascii: "$")) else { return text }
        var result = ""
        var rest = Substring(text)
        while let dollar = rest.firstIndex(of: "$") {
            result += rest[..<dollar]
            let afterDollar = rest[rest.index(after: dollar)...]
            if afterDollar.hasPrefix("${") {
                result += "${"
                rest = afterDollar.dropFirst(2)
                continue
            }
            guard afterDollar.hasPrefix("{") else {
                result += "$"
                rest = afterDollar
                continue
            }
            guard let close = afterDollar.firstIndex(of: "}") else {
                throw .malformed("'${' without a closing '}'")
            }
            let body = afterDollar[afterDollar.index(after: afterDollar.startIndex)..<close]
            let name: Substring
            var fallback: Substring?
            if let separator = body.firstRange(of: ":-") {
                name = body[..<separator.lowerBound]
                fallback = body[separator.upperBound...]
            } else {
                name = body
            }
            guard let first = name.first, first == "_" || (first.isASCII && first.isLetter),
                name.allSatisfy({ $0 == "_" || ($0.isASCII && ($0.isLetter || $0.isNumber)) })
            else {
                throw .malformed("'${\(body)}' is not a variable name (letters, digits and _, not starting with a digit)")
            }
            let value = environment[String(name)]
            if let fallback, value?.isEmpty ?? true {
                result += fallback
            } else if let value {
                result += value
            } else {
                throw .undefined(name: String(name))
            }
            rest = afterDollar[afterDollar.index(after: close)...]
        }
        result += rest
        return result
    }
}
