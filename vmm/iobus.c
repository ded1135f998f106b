/* SPDX-License-Identifier: MIT */
#include "iobus.h"

#include <errno.h>
#include <string.h>

int iobus_register(struct iobus *bus, enum io_space space, uint64_t base, uint64_t len,
		   io_handler_fn fn, void *opaque, const char *name)
{
	if (len == 0 || base + len < base)
		return -EINVAL;
	for (unsigned int i = 0; i < bus->n; i++) {
		const struct iobus_range *r = &bus->r[i];
		if (r->space == space && base < r->base + r->len && r->base < base + len)
			return -EEXIST;
	}
	if (bus->n == IOBUS_MAX_HANDLERS)
		return -ENOSPC;
	bus->r[bus->n++] = (struct iobus_range){ space, base, len, fn, opaque, name };
	return 0;
}

bool iobus_dispatch(const struct iobus *bus, enum io_space space, uint64_t addr, uint8_t *data,
		    unsigned int len, bool is_write)
{
	for (unsigned int i = 0; i < bus->n; i++) {
		const struct iobus_range *r = &bus->r[i];
		if (r->space == space && addr >= r->base && addr - r->base < r->len) {
			r->fn(r->opaque, addr - r->base, data, len, is_write);
			return true;
		}
	}
	if (!is_write)
		memset(data, 0xff, len);
	return false;
}
