/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_VMM_IOBUS_H
#define VMSNAP_VMM_IOBUS_H

#include <stdbool.h>
#include <stdint.h>

/*
 * Port I/O and MMIO dispatch. Port I/O and MMIO share one handler signature; a handler owns
 * a range [base, base+len) of one space and is called with the offset inside it.
 */
enum io_space { IO_SPACE_PIO = 0, IO_SPACE_MMIO = 1 };

/**
 * Handle one access of @len bytes (1, 2, 4 or 8) at @offset in the handler's range.
 * For a write, @data holds the value (little-endian); for a read, fill @data.
 * Called from vCPU threads: a handler does its own locking. A handler never fails: a
 * guest's bad access is answered as hardware would (ignored write, all-ones read).
 */
typedef void (*io_handler_fn)(void *opaque, uint64_t offset, uint8_t *data, unsigned int len,
			      bool is_write);

#define IOBUS_MAX_HANDLERS 64

struct iobus_range {
	enum io_space space;
	uint64_t base;
	uint64_t len;
	io_handler_fn fn;
	void *opaque;
	const char *name;
};

struct iobus {
	unsigned int n;
	struct iobus_range r[IOBUS_MAX_HANDLERS];
};

/** Register a handler; returns 0, -EEXIST if it overlaps another, -ENOSPC if full. */
int iobus_register(struct iobus *bus, enum io_space space, uint64_t base, uint64_t len,
		   io_handler_fn fn, void *opaque, const char *name);

/**
 * Dispatch one access. Returns true if a handler took it; false otherwise, in which case a
 * read has been answered with all-ones. Lock-free: registration happens before vCPUs run.
 */
bool iobus_dispatch(const struct iobus *bus, enum io_space space, uint64_t addr, uint8_t *data,
		    unsigned int len, bool is_write);

#endif
