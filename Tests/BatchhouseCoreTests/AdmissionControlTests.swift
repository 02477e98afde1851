import Testing

@testable import BatchhouseCore

@Suite struct AdmissionControlTests {
    @Test func sheddingStartsAtEightyPercentForTheLowestPriority() {
        let limit = 1000
        #expect(AdmissionControl.admits(priority: 5, inUse: 790, incoming: 10, limit: limit))
        #expect(!AdmissionControl.admits(priority: 5, inUse: 791, incoming: 10, limit: limit))
        #expect(AdmissionControl.admits(priority: 4, inUse: 840, incoming: 10, limit: limit))
        #expect(!AdmissionControl.admits(priority: 4, inUse: 841, incoming: 10, limit: limit))
        #expect(AdmissionControl.admits(priority: 3, inUse: 890, incoming: 10, limit: limit))
        #expect(AdmissionControl.admits(priority: 2, inUse: 940, incoming: 10, limit: limit))
        #expect(!AdmissionControl.admits(priority: 2, inUse: 941, incoming: 10, limit: limit))
    }

    @Test func priorityOneIsAcceptedUntilTheHardLimit() {
        #expect(AdmissionControl.admits(priority: 1, inUse: 990, incoming: 10, limit: 1000))
        #expect(!AdmissionControl.admits(priority: 1, inUse: 991, incoming: 10, limit: 1000))
        // Out-of-range priorities are clamped.
        #expect(AdmissionControl.threshold(priority: 0) == 1.0)
        #expect(AdmissionControl.threshold(priority: 9) == AdmissionControl.threshold(priority: 5))
    }
}
