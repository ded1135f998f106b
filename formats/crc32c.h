/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_FORMATS_CRC32C_H
#define VMSNAP_FORMATS_CRC32C_H

/*
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78, initial value and final xor ~0), the
 * checksum of every image section and memory run (formats/SPEC.md). Uses the SSE4.2 crc32
 * instruction when the CPU has it (checked once at run time), a slicing-by-8 table otherwise.
 */

#include <stddef.h>
#include <stdint.h>

/**
 * Extend @crc (0 to start, or the result of a previous call over the preceding bytes) with
 * @len bytes at @buf and return the new CRC32C. crc32c(0, "123456789", 9) == 0xE3069283.
 * Thread-safe.
 */
uint32_t crc32c(uint32_t crc, const void *buf, size_t len);

/** The table implementation of crc32c(), always (for tests and CPUs without SSE4.2). */
uint32_t crc32c_sw(uint32_t crc, const void *buf, size_t len);

/** True when crc32c() uses the SSE4.2 instruction. */
int crc32c_hw_available(void);

#endif
