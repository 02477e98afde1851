/// Space set aside on the spool's filesystem for the writes that must not fail when the disk is full: delivered
/// marks, the marks carried forward before a segment is unlinked, and the header of the segment a fully delivered
/// active segment rolls over to. Without them a full disk would lose deliveries (replayed as duplicates) and
/// never give its space back (docs/spool-and-acks.md, "A full disk").
///
/// The reserve is a preallocated file, `DIR/reserve`. When one of those writes finds the disk full, a step of the
/// file is cut off and the write is tried again. Data appends never take from it: while it is short of its target
/// they are refused (`.noSpace`), and each one first tries to allocate it back, which succeeds once reclaimed
/// segments have freed the space.
struct SpoolReserve {
    let path: String
    private var file: OpenFile?
    /// Bytes allocated now.
    private(set) var size = 0
    let target: Int
    let step: Int

    /// Opens or creates the file and tries to allocate it in full. Never fails: a reserve that cannot be made
    /// (a full disk at the first start) is short, and data appends wait until it can.
    init(path: String, target: Int) {
        self.path = path
        self.target = target
        self.step = max(4096, target / 8)
        if let (file, size) = FileSystem.openOrCreate(path) {
            self.file = file
            self.size = size
        }
        _ = replenish()
    }

    var isShort: Bool { size < target }

    /// Frees one step of the reserve for a bookkeeping write that found the disk full. False when nothing is left.
    mutating func release() -> Bool {
        guard let file, size > 0 else { return false }
        let smaller = max(0, size - step)
        guard FileSystem.truncate(file.descriptor, to: smaller) else { return false }
        size = smaller
        return true
    }

    /// Allocates the reserve back to its target. True when it is whole.
    mutating func replenish() -> Bool {
        guard isShort else { return true }
        if file == nil, let (opened, existing) = FileSystem.openOrCreate(path) {
            file = opened
            size = existing
        }
        guard let file else { return false }
        // statvfs first: on a full disk every append asks, and a doomed allocation is far dearer than a statvfs
        // (where the filesystem cannot preallocate, glibc would write the zeros).
        if let free = FileSystem.availableBytes(file.descriptor), free < target - size { return false }
        if FileSystem.allocate(file.descriptor, size: target) != nil {
            // A partial allocation would be counted nowhere: give it back.
            _ = FileSystem.truncate(file.descriptor, to: size)
            return false
        }
        size = target
        return true
    }

    /// Closes the file (at ``Spool/close()``); the space stays allocated for the next start.
    mutating func closeFile() { file = nil }

    /// The reserve's target for a spool bounded by `maxSize` on a filesystem of `filesystemSize` bytes: 1/32 of
    /// the smaller, between 64 KiB and 2 MiB. A delivered mark takes 33 bytes and up, so even the smallest
    /// reserve holds some 2,000 of them.
    static func defaultTarget(maxSize: Int, filesystemSize: Int?) -> Int {
        let base = min(maxSize, filesystemSize ?? maxSize)
        return min(2 << 20, max(64 << 10, base / 32))
    }
}
