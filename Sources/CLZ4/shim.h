// Entry points into liblz4's frame format (the one `Content-Encoding: lz4` means) for Swift.
#ifndef BATCHHOUSE_CLZ4_SHIM_H
#define BATCHHOUSE_CLZ4_SHIM_H

#include <lz4.h>
#include <lz4frame.h>

#endif
