/// Why a strategy file was rejected, with where and what to change.
///
/// `description` reads like a compiler diagnostic:
/// `batchhouse.yaml:12: unknown key 'max_row' in tables."default.visitors" (allowed: ...; did you mean 'max_rows'?)`.
/// Messages never contain the upstream password or the value of an environment variable.
public struct ConfigurationError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: String, Sendable, Hashable, CaseIterable {
        /// The file is missing, a directory, unreadable or not UTF-8.
        case fileUnreadable
        /// Not well-formed YAML (bad indentation, tabs, unclosed quotes, ...).
        case yamlSyntax
        /// A key the section does not know; `message` lists the allowed ones.
        case unknownKey
        /// The same key twice in one mapping.
        case duplicateKey
        /// A required key is absent (e.g. `spool.dir`).
        case missingKey
        /// A value of the wrong type, out of range or not in the allowed set.
        case invalidValue
        /// `${VAR}` names a variable the environment does not have.
        case missingVariable
    }

    public var code: Code
    /// Path of the offending key, e.g. `tables."default.payments".max_rows`; nil for file-level problems.
    public var key: String?
    /// 1-based line in the file.
    public var line: Int?
    /// 1-based column in the file.
    public var column: Int?
    /// The file as given to the loader; nil for `parse(yaml:)` without a file name.
    public var file: String?
    /// What is wrong and what is allowed, without the location.
    public var message: String

    public init(code: Code, key: String? = nil, line: Int? = nil, column: Int? = nil, file: String? = nil, message: String) {
        self.code = code
        self.key = key
        self.line = line
        self.column = column
        self.file = file
        self.message = message
    }

    public var description: String {
        switch (file, line) {
        case let (file?, line?): return "\(file):\(line): \(message)"
        case let (nil, line?): return "line \(line): \(message)"
        case let (file?, nil): return "\(file): \(message)"
        case (nil, nil): return message
        }
    }
}
