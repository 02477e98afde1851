import BatchhouseCore
import BatchhouseSpool
import NIOCore

/// The spool records of the requests one event loop takes on one turn, written together when the turn ends: one
/// write and one turn of the spool's lock for all of them instead of one each (docs/spool-and-acks.md, "One write
/// per turn"). The first request of a turn schedules the write with `execute`, which NIO runs after every channel
/// that was ready on this turn has been read. Then each request's rows go into their batch and its client is
/// answered, in the order the requests came.
///
/// One stage per event-loop thread (`PerThread`), used only on that thread: no lock.
final class SpoolStage {
    /// What a staged request needs once its record is written.
    struct Entry {
        let intake: Intake
        let spool: Spool
        let key: BatchKey
        let rule: TableRule
        let rows: Int
        let bytes: Int
        let reservation: Buffering.Reservation
        let contributor: ClientIdentity?
        let completion: IntakeCompletion
    }

    private var batch = SpoolBatch()
    private var entries: [(entry: Entry, endsWithNewline: Bool)] = []
    private var scheduled = false

    /// Stages one request's record, and schedules this turn's write if it is the first. False when the rows are
    /// larger than a record can hold.
    func add(_ entry: Entry, endsWithNewline: Bool, data: UnsafeRawBufferPointer, loop: any EventLoop) -> Bool {
        // Records of another spool (tests run several engines on one thread) go in a write of their own.
        if let first = entries.first, first.entry.spool !== entry.spool { write() }
        guard batch.add(key: entry.key, rows: entry.rows, endsWithNewline: endsWithNewline, data: data) != nil else {
            return false
        }
        entries.append((entry, endsWithNewline))
        if !scheduled {
            scheduled = true
            loop.assumeIsolated().execute { [self] in
                scheduled = false
                write()
            }
        }
        return true
    }

    /// Writes what is staged and finishes every request in it.
    private func write() {
        guard let spool = entries.first?.entry.spool else { return }
        var written = batch
        let staged = entries
        batch = SpoolBatch()
        entries = []
        let results = spool.append(&written)
        for (index, (entry, endsWithNewline)) in staged.enumerated() {
            written.withData(of: index) { rows in
                entry.intake.finishStaged(entry, results[index], rows: rows, endsWithNewline: endsWithNewline)
            }
        }
    }

    private static let stages = PerThread { SpoolStage() }

    /// This thread's stage.
    static func ofThisThread() -> SpoolStage { stages.current }
}
