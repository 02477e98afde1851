// Entry points into libzstd for Swift.
#ifndef BATCHHOUSE_CZSTD_SHIM_H
#define BATCHHOUSE_CZSTD_SHIM_H

#include <zstd.h>
#include <zstd_errors.h>

#endif
