// Typed entry points into libcurl for Swift.
//
// curl_easy_setopt, curl_easy_getinfo and curl_multi_setopt are variadic, so Swift cannot call them.
// Each wrapper below fixes the type of the third argument. Pick the one that matches the option's
// documented type: passing a long where libcurl reads a curl_off_t (the *_LARGE options) is undefined
// behaviour on 32-bit platforms, which is exactly what these wrappers exist to prevent.
//
// A few macros that Swift does not import (casts, composite expressions) are re-exported as constants.
#ifndef BATCHHOUSE_CCURL_SHIM_H
#define BATCHHOUSE_CCURL_SHIM_H

#include <curl/curl.h>

// MARK: curl_easy_setopt

static inline CURLcode bh_curl_easy_setopt_long(CURL *handle, CURLoption option, long value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode bh_curl_easy_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode bh_curl_easy_setopt_pointer(CURL *handle, CURLoption option, void *value) {
    return curl_easy_setopt(handle, option, value);
}

/// libcurl copies string options (all but CURLOPT_POSTFIELDS), so the string may be freed after the call.
static inline CURLcode bh_curl_easy_setopt_string(CURL *handle, CURLoption option, const char *value) {
    return curl_easy_setopt(handle, option, value);
}

/// The list is not copied: it must outlive the transfer.
static inline CURLcode bh_curl_easy_setopt_slist(CURL *handle, CURLoption option, struct curl_slist *value) {
    return curl_easy_setopt(handle, option, value);
}

/// CURLOPT_WRITEFUNCTION and CURLOPT_HEADERFUNCTION share this signature.
static inline CURLcode bh_curl_easy_setopt_write_function(CURL *handle, CURLoption option, curl_write_callback value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode bh_curl_easy_setopt_read_function(CURL *handle, CURLoption option, curl_read_callback value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode bh_curl_easy_setopt_seek_function(CURL *handle, CURLoption option, curl_seek_callback value) {
    return curl_easy_setopt(handle, option, value);
}

static inline CURLcode bh_curl_easy_setopt_xferinfo_function(CURL *handle, CURLoption option, curl_xferinfo_callback value) {
    return curl_easy_setopt(handle, option, value);
}

// MARK: curl_easy_getinfo

static inline CURLcode bh_curl_easy_getinfo_long(CURL *handle, CURLINFO info, long *value) {
    return curl_easy_getinfo(handle, info, value);
}

static inline CURLcode bh_curl_easy_getinfo_double(CURL *handle, CURLINFO info, double *value) {
    return curl_easy_getinfo(handle, info, value);
}

static inline CURLcode bh_curl_easy_getinfo_off_t(CURL *handle, CURLINFO info, curl_off_t *value) {
    return curl_easy_getinfo(handle, info, value);
}

/// The string belongs to the handle; copy it before the handle goes away.
static inline CURLcode bh_curl_easy_getinfo_string(CURL *handle, CURLINFO info, char **value) {
    return curl_easy_getinfo(handle, info, value);
}

static inline CURLcode bh_curl_easy_getinfo_pointer(CURL *handle, CURLINFO info, void **value) {
    return curl_easy_getinfo(handle, info, value);
}

// MARK: curl_multi_setopt

static inline CURLMcode bh_curl_multi_setopt_long(CURLM *handle, CURLMoption option, long value) {
    return curl_multi_setopt(handle, option, value);
}

// MARK: CURLMsg

/// The result code of a CURLMSG_DONE message (a member of an anonymous union in C).
static inline CURLcode bh_curl_msg_result(const CURLMsg *message) {
    return message->data.result;
}

// MARK: Macros Swift does not import

static const long BH_CURLAUTH_BASIC = (long)CURLAUTH_BASIC;
static const long BH_CURL_GLOBAL_ALL = CURL_GLOBAL_ALL;
static const int BH_CURLPAUSE_RECV = CURLPAUSE_RECV;
static const int BH_CURLPAUSE_SEND = CURLPAUSE_SEND;
static const int BH_CURLPAUSE_ALL = CURLPAUSE_ALL;
static const int BH_CURLPAUSE_CONT = CURLPAUSE_CONT;
static const size_t BH_CURL_READFUNC_PAUSE = CURL_READFUNC_PAUSE;
static const size_t BH_CURL_READFUNC_ABORT = CURL_READFUNC_ABORT;
static const size_t BH_CURL_WRITEFUNC_PAUSE = CURL_WRITEFUNC_PAUSE;
static const int BH_CURL_SEEKFUNC_OK = CURL_SEEKFUNC_OK;
static const int BH_CURL_SEEKFUNC_FAIL = CURL_SEEKFUNC_FAIL;
static const int BH_CURL_SEEKFUNC_CANTSEEK = CURL_SEEKFUNC_CANTSEEK;
static const long BH_CURL_HTTP_VERSION_1_1 = CURL_HTTP_VERSION_1_1;
static const int BH_CURL_ERROR_SIZE = CURL_ERROR_SIZE;

#endif
