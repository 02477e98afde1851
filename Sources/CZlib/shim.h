// Entry points into zlib for Swift.
//
// deflateInit2 and inflateInit2 are macros that pass ZLIB_VERSION and sizeof(z_stream) to the real
// functions; Swift does not import function-like macros, so they are wrapped here.
#ifndef BATCHHOUSE_CZLIB_SHIM_H
#define BATCHHOUSE_CZLIB_SHIM_H

#include <zlib.h>

/// windowBits: 8...15 for a zlib wrapper, -8...-15 for raw deflate, 16 + 8...15 for gzip.
static inline int bh_deflateInit2(z_streamp stream, int level, int windowBits, int memLevel, int strategy) {
    return deflateInit2(stream, level, Z_DEFLATED, windowBits, memLevel, strategy);
}

/// windowBits: 8...15 for a zlib wrapper, -8...-15 for raw deflate, 16 + 8...15 for gzip only,
/// 32 + 8...15 for zlib or gzip detected from the header.
static inline int bh_inflateInit2(z_streamp stream, int windowBits) {
    return inflateInit2(stream, windowBits);
}

#endif
