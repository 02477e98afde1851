import Foundation
import Testing

/// `batchhouse check-config` on every shipped example, and on a file with a typo.
@Suite struct CheckConfigTests {
    /// Runs the built binary off Swift's cooperative pool (see `offPool`).
    static func run(_ arguments: [String]) async throws -> (status: Int32, output: String) {
        try await offPool { try runBlocking(arguments) }
    }

    private static func runBlocking(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: ProcessIntegrationTests.repo + "/.build/debug/batchhouse")
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    static let examples: [String] = {
        let dir = ProcessIntegrationTests.repo + "/examples"
        return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [])
            .filter { $0.hasSuffix(".yaml") }.sorted().map { dir + "/" + $0 }
    }()

    @Test func thereAreExamplesForEachUseCase() {
        let names = Set(Self.examples.map { URL(fileURLWithPath: $0).lastPathComponent })
        #expect(
            names.isSuperset(of: [
                "batchhouse.yaml", "high-volume-events.yaml", "critical-payments.yaml", "campaign-telemetry.yaml",
                "low-latency.yaml", "memory-constrained.yaml",
            ]))
    }

    @Test(arguments: examples)
    func everyExamplePrintsItsEffectiveRules(path: String) async throws {
        let (status, output) = try await Self.run(["check-config", path])
        #expect(status == 0, "\(output)")
        #expect(output.contains("defaults\n  strategy="))
        // Every pattern in the file appears with a merged rule line.
        let text = try String(contentsOfFile: path, encoding: .utf8)
        if let tables = text.range(of: "\ntables:") {
            for line in text[tables.upperBound...].split(separator: "\n") {
                // Table patterns are the keys indented by two; deeper lines belong to a rule (aggregate: {...}).
                guard line.hasPrefix("  "), !line.hasPrefix("   "), !line.trimmingCharacters(in: .whitespaces).hasPrefix("#"),
                    let colon = line.range(of: ": {")
                else {
                    if !line.hasPrefix(" ") && !line.hasPrefix("#") { break }
                    continue
                }
                let pattern = line[..<colon.lowerBound].trimmingCharacters(in: .whitespaces)
                    .trimmingCharacters(in: CharacterSet(charactersIn: "\""))
                #expect(output.contains("\n\(pattern)  ("), "pattern \(pattern) missing from:\n\(output)")
            }
        }
    }

    @Test func aTypoNamesTheKeyAndItsLine() async throws {
        let path = NSTemporaryDirectory() + "bh-typo-\(UInt32.random(in: 0...UInt32.max)).yaml"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try """
        defaults:
          strategy: hybrid
        tables:
          default.visitors: { strategy: size, max_row: 5000 }
        """.write(toFile: path, atomically: true, encoding: .utf8)
        let (status, output) = try await Self.run(["check-config", path])
        #expect(status == 1)
        #expect(output.contains(":4:"), "\(output)")
        #expect(output.contains("'max_row'"))
        #expect(output.contains("max_rows"))
    }
}
