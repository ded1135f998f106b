/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_VMM_GMEM_H
#define VMSNAP_VMM_GMEM_H

#include <stddef.h>
#include <stdint.h>

/*
 * Guest physical memory. RAM is one host mapping (normally a memfd, MAP_SHARED) laid out as
 * at most two guest-physical regions: [0, min(size, GMEM_LOW_END)) and, for what does not fit
 * below the 32-bit MMIO hole, [GMEM_HIGH_START, ...). The host mapping is contiguous: the
 * high region follows the low one at host offset low_size.
 */
#define GMEM_LOW_END 0xC0000000ull	  /* 3 GiB: [3 GiB, 4 GiB) is the MMIO hole */
#define GMEM_HIGH_START 0x100000000ull /* 4 GiB */
#define GMEM_PAGE_SIZE 4096ull
#define GMEM_MAX_REGIONS 2

struct gmem_region {
	uint64_t gpa;	 /* guest-physical start */
	uint64_t size;	 /* bytes */
	uint64_t offset; /* offset into the host mapping and the memfd */
};

struct gmem {
	int fd;		   /* memfd backing RAM, or -1 when the mapping has no fd (tests) */
	uint8_t *host;	   /* host mapping of all RAM, @size bytes */
	uint64_t size;	   /* total RAM bytes */
	unsigned int nregions;
	struct gmem_region regions[GMEM_MAX_REGIONS];
	/*
	 * Optional VMM-write bitmap (vmm/dirty.h; bit i = RAM page i, i.e. host offset / 4 KiB),
	 * set while migration tracks dirty pages: gmem_write() marks the pages it writes.
	 */
	uint64_t *_Atomic dirty;
};

/**
 * Compute the region layout for @size bytes of RAM into @m (does not allocate; host and fd
 * are left untouched). @size must be a non-zero multiple of GMEM_PAGE_SIZE.
 * Returns 0 or -EINVAL.
 */
int gmem_layout(struct gmem *m, uint64_t size);

/**
 * How RAM is backed.
 *   GMEM_MEMFD: a memfd mapped MAP_SHARED (the default): another process can map it, and
 *     pages the guest never touched are holes the VMM can find (SEEK_DATA) without reading.
 *     Backed by 4 KiB pages unless the host enables THP for shmem (most do not).
 *   GMEM_ANON: anonymous private memory with MADV_HUGEPAGE: 2 MiB pages where the host has
 *     THP for madvise (Debian's default), which makes first touch and guest paging far
 *     cheaper (docs/BENCHMARKS.md); not shareable, and every page counts as possibly data.
 */
enum gmem_backend { GMEM_MEMFD = 0, GMEM_ANON = 1 };

/** "memfd" or "anon" (NULL means memfd) into @out; -EINVAL for anything else. */
int gmem_backend_parse(const char *name, enum gmem_backend *out);

/**
 * Create RAM of @size bytes backed as @backend, with the layout of gmem_layout().
 * Returns 0 or -errno (-ENOMEM when the host cannot provide it). Release with gmem_free().
 */
int gmem_create(struct gmem *m, uint64_t size, enum gmem_backend backend);

/**
 * Map @size bytes of the file @fd from @offset (page-aligned) MAP_PRIVATE as RAM: pages are
 * read from the file's page cache on first touch and copied on the guest's first write, so
 * the file is never changed and many VMs can share its pages. @fd is not kept (the mapping
 * holds the file). The layout is gmem_layout()'s. Returns 0 or -errno.
 */
int gmem_map_file(struct gmem *m, uint64_t size, int fd, uint64_t offset);

/**
 * Set bit i of @bitmap (ceil(size / 4 KiB / 64) words, zeroed by the caller) for every RAM
 * page i that may hold data: from the memfd's allocated ranges (SEEK_DATA/SEEK_HOLE), so RAM
 * the guest never touched stays clear and need not be read. Without a memfd (a file mapped
 * copy-on-write) every bit is set. Returns 0 or -errno.
 */
int gmem_nonzero_bitmap(const struct gmem *m, uint64_t *bitmap);

/** Unmap and close what gmem_create() made. Safe on a zeroed struct. */
void gmem_free(struct gmem *m);

/**
 * Host pointer for guest-physical [gpa, gpa+len), or NULL unless the whole range lies inside
 * one RAM region. Every access to guest memory by the VMM goes through this check.
 */
void *gmem_ptr(const struct gmem *m, uint64_t gpa, uint64_t len);

/** Host-mapping offset of @gpa, or UINT64_MAX if it is not RAM. */
uint64_t gmem_offset(const struct gmem *m, uint64_t gpa);

/**
 * Mark host-mapping bytes [offset, offset+len) as written by the VMM in the dirty bitmap, if
 * one is set (a VMM write through a gmem_ptr() pointer must call this). Thread-safe.
 */
void gmem_mark_dirty(struct gmem *m, uint64_t offset, uint64_t len);

/** Copy into guest memory (marking the pages dirty); returns 0 or -EFAULT if not RAM. */
int gmem_write(struct gmem *m, uint64_t gpa, const void *src, size_t len);

/** Copy out of guest memory; returns 0 or -EFAULT if the range is not RAM. */
int gmem_read(const struct gmem *m, uint64_t gpa, void *dst, size_t len);

#endif
