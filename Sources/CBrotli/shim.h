// Entry points into libbrotli's decoder and encoder for Swift.
#ifndef BATCHHOUSE_CBROTLI_SHIM_H
#define BATCHHOUSE_CBROTLI_SHIM_H

#include <brotli/decode.h>
#include <brotli/encode.h>

#endif
