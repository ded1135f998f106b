/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_UTIL_PARSE_H
#define VMSNAP_UTIL_PARSE_H

#include <stdint.h>

/**
 * Parse a size like "512M", "4G", "65536", "1T", "64K" (binary units, optional "iB"/"B"
 * suffix, case-insensitive) into bytes. Returns 0, or -EINVAL for anything else (empty,
 * negative, garbage, trailing characters) and -ERANGE on overflow.
 */
int parse_size(const char *s, uint64_t *out);

/** Parse a decimal unsigned integer in [min, max]. Returns 0, -EINVAL or -ERANGE. */
int parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out);

#endif
