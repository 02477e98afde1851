import CCurl

/// libcurl's global state, set up once before the first handle. `curl_global_init` is not
/// thread-safe on every libcurl build; a Swift global initialiser runs exactly once.
enum CurlGlobal {
    static let initialized: Bool = {
        let code = curl_global_init(BH_CURL_GLOBAL_ALL)
        precondition(code == CURLE_OK, "curl_global_init failed: \(code.rawValue)")
        return true
    }()
}

/// Owns one easy handle, its error buffer and its header list, and frees them together.
/// Lives and is used only on the curl thread.
///
/// Between transfers a handle goes back to ``CurlEasyPool`` through ``reset()``, which returns it to the
/// state `init()` leaves it in, so a transfer configures a reused handle exactly as a new one.
final class CurlEasy {
    let handle: UnsafeMutableRawPointer
    private let errorBuffer: UnsafeMutablePointer<CChar>
    private var headerList: UnsafeMutablePointer<curl_slist>?
    /// The first option libcurl refused, reported instead of starting the transfer.
    private(set) var setupFailure: (option: CURLoption, code: CURLcode)?

    init() {
        _ = CurlGlobal.initialized
        guard let handle = curl_easy_init() else {
            fatalError("curl_easy_init failed (out of memory)")
        }
        self.handle = handle
        let size = Int(BH_CURL_ERROR_SIZE)
        errorBuffer = .allocate(capacity: size)
        errorBuffer.initialize(repeating: 0, count: size)
        attachErrorBuffer()
    }

    /// Forgets everything the last transfer set: every option (URL, method, credentials, timeouts, callbacks and
    /// their userdata pointers, the header list), its info and its auth state. What curl_easy_reset keeps (live
    /// connections, the DNS and TLS session caches, cookies) is the multi handle's here, or never enabled (cookies).
    /// The handle must not be in a multi handle.
    func reset() {
        curl_easy_reset(handle)
        // After the reset: until then CURLOPT_HTTPHEADER still points at the list.
        curl_slist_free_all(headerList)
        headerList = nil
        errorBuffer.update(repeating: 0, count: Int(BH_CURL_ERROR_SIZE))
        setupFailure = nil
        // curl_easy_reset dropped the buffer too.
        attachErrorBuffer()
    }

    private func attachErrorBuffer() {
        check(CURLOPT_ERRORBUFFER, bh_curl_easy_setopt_pointer(handle, CURLOPT_ERRORBUFFER, errorBuffer))
    }

    deinit {
        curl_easy_cleanup(handle)
        // After the handle: libcurl may still look at both until curl_easy_cleanup returns.
        curl_slist_free_all(headerList)
        errorBuffer.deallocate()
    }

    // MARK: Options

    func set(_ option: CURLoption, _ value: Int) {
        check(option, bh_curl_easy_setopt_long(handle, option, value))
    }

    func set(_ option: CURLoption, _ value: Bool) {
        set(option, value ? 1 : 0)
    }

    func set(_ option: CURLoption, offset value: Int64) {
        check(option, bh_curl_easy_setopt_off_t(handle, option, curl_off_t(value)))
    }

    /// libcurl copies the string.
    func set(_ option: CURLoption, _ value: String) {
        check(option, value.withCString { bh_curl_easy_setopt_string(handle, option, $0) })
    }

    func set(_ option: CURLoption, pointer value: UnsafeMutableRawPointer?) {
        check(option, bh_curl_easy_setopt_pointer(handle, option, value))
    }

    func set(_ option: CURLoption, writeFunction value: curl_write_callback) {
        check(option, bh_curl_easy_setopt_write_function(handle, option, value))
    }

    func set(_ option: CURLoption, readFunction value: curl_read_callback) {
        check(option, bh_curl_easy_setopt_read_function(handle, option, value))
    }

    func set(_ option: CURLoption, seekFunction value: curl_seek_callback) {
        check(option, bh_curl_easy_setopt_seek_function(handle, option, value))
    }

    /// Replaces the request header list (CURLOPT_HTTPHEADER); the list lives as long as this handle.
    func setHeaders(_ lines: [String]) {
        var list: UnsafeMutablePointer<curl_slist>?
        for line in lines {
            guard let appended = line.withCString({ curl_slist_append(list, $0) }) else {
                curl_slist_free_all(list)
                fatalError("curl_slist_append failed (out of memory)")
            }
            list = appended
        }
        check(CURLOPT_HTTPHEADER, bh_curl_easy_setopt_slist(handle, CURLOPT_HTTPHEADER, list))
        curl_slist_free_all(headerList)
        headerList = list
    }

    private func check(_ option: CURLoption, _ code: CURLcode) {
        if code != CURLE_OK && setupFailure == nil {
            setupFailure = (option, code)
        }
    }

    /// Pauses or resumes the two directions together, as curl_easy_pause takes the whole state.
    /// Must be called on the curl thread; unpausing may call the write callback before returning.
    @discardableResult
    func pause(receive: Bool, send: Bool) -> CURLcode {
        let mask = (receive ? BH_CURLPAUSE_RECV : 0) | (send ? BH_CURLPAUSE_SEND : 0)
        return curl_easy_pause(handle, mask)
    }

    // MARK: Info

    func info(long info: CURLINFO) -> Int? {
        var value = 0
        return bh_curl_easy_getinfo_long(handle, info, &value) == CURLE_OK ? value : nil
    }

    func info(offset info: CURLINFO) -> Int64? {
        var value: curl_off_t = 0
        return bh_curl_easy_getinfo_off_t(handle, info, &value) == CURLE_OK ? Int64(value) : nil
    }

    /// The message libcurl left in the error buffer for the last transfer, or its generic text for `code`.
    func errorMessage(for code: CURLcode) -> String {
        let buffered = String(cString: errorBuffer)
        if !buffered.isEmpty { return buffered }
        return String(cString: curl_easy_strerror(code))
    }
}

/// Owns one multi handle. `wakeup()` is the only method that may be called off the curl thread, and
/// only before `close()`; CurlMultiThread guarantees both.
final class CurlMulti: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer
    private var isClosed = false

    init(maxConnections: Int) {
        _ = CurlGlobal.initialized
        guard let handle = curl_multi_init() else {
            fatalError("curl_multi_init failed (out of memory)")
        }
        self.handle = handle
        // The connection cache: idle keep-alive connections to the upstream, reused by later transfers.
        _ = bh_curl_multi_setopt_long(handle, CURLMOPT_MAXCONNECTS, max(1, maxConnections))
    }

    deinit {
        close()
    }

    /// Frees the handle and closes the cached connections. Every easy handle must have been removed
    /// (CurlMultiThread's loop ends with none in it).
    func close() {
        guard !isClosed else { return }
        isClosed = true
        curl_multi_cleanup(handle)
    }

    /// Interrupts a curl_multi_poll on the curl thread. Thread-safe by libcurl's contract.
    func wakeup() {
        _ = curl_multi_wakeup(handle)
    }
}
