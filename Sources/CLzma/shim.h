// Entry points into liblzma for Swift.
//
// LZMA_STREAM_INIT is a macro Swift does not import; an all-zero lzma_stream is what it stands for.
#ifndef BATCHHOUSE_CLZMA_SHIM_H
#define BATCHHOUSE_CLZMA_SHIM_H

#include <lzma.h>

static inline lzma_stream bh_lzma_stream_init(void) {
    lzma_stream stream = LZMA_STREAM_INIT;
    return stream;
}

#endif
