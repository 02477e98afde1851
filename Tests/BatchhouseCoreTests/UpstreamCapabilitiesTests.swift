import Testing

@testable import BatchhouseCore

@Suite struct UpstreamCapabilitiesTests {
    @Test(arguments: [
        ("18.16.1", false), ("21.12.4.1", false), ("22.1.3.7", false), ("22.2.2.1", true), ("23.8.2.7\n", true),
        ("24.3.1.2672-lts", true),
    ])
    func deduplicationTokenOnlyFrom22Point2(version: String, supported: Bool) throws {
        let capabilities = try #require(UpstreamCapabilities(version: version))
        #expect(capabilities.supportsDeduplicationToken == supported)
    }

    @Test func garbageIsNotAVersion() {
        #expect(UpstreamCapabilities(version: "Code: 516. DB::Exception") == nil)
        #expect(UpstreamCapabilities(version: "") == nil)
    }
}
