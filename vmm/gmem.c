/* SPDX-License-Identifier: MIT */
#include "gmem.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "util/log.h"

int gmem_layout(struct gmem *m, uint64_t size)
{
	if (size == 0 || size % GMEM_PAGE_SIZE)
		return -EINVAL;
	uint64_t low = size < GMEM_LOW_END ? size : GMEM_LOW_END;
	m->size = size;
	m->nregions = 1;
	m->regions[0] = (struct gmem_region){ .gpa = 0, .size = low, .offset = 0 };
	if (size > low) {
		m->regions[1] = (struct gmem_region){
			.gpa = GMEM_HIGH_START, .size = size - low, .offset = low
		};
		m->nregions = 2;
	}
	return 0;
}

int gmem_backend_parse(const char *name, enum gmem_backend *out)
{
	if (!name || !strcmp(name, "memfd"))
		*out = GMEM_MEMFD;
	else if (!strcmp(name, "anon"))
		*out = GMEM_ANON;
	else
		return -EINVAL;
	return 0;
}

int gmem_create(struct gmem *m, uint64_t size, enum gmem_backend backend)
{
	memset(m, 0, sizeof(*m));
	m->fd = -1;
	int r = gmem_layout(m, size);
	if (r)
		return r;
	if (backend == GMEM_ANON) {
		void *a = mmap(NULL, size, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (a == MAP_FAILED) {
			r = -errno;
			log_errno("cannot map %llu bytes of guest RAM", (unsigned long long)size);
			return r;
		}
		/* Advisory: without THP for madvise the RAM still works, with 4 KiB pages. */
		if (madvise(a, size, MADV_HUGEPAGE) < 0)
			log_debug("MADV_HUGEPAGE on guest RAM: %s", strerror(errno));
		m->host = a;
		return 0;
	}
	m->fd = memfd_create("vmsnap-ram", MFD_CLOEXEC);
	if (m->fd < 0) {
		r = -errno;
		log_errno("memfd_create");
		return r;
	}
	if (ftruncate(m->fd, (off_t)size) < 0) {
		r = -errno;
		log_errno("cannot size guest RAM to %llu bytes", (unsigned long long)size);
		goto fail;
	}
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, m->fd, 0);
	if (p == MAP_FAILED) {
		r = -errno;
		log_errno("cannot map %llu bytes of guest RAM", (unsigned long long)size);
		goto fail;
	}
	m->host = p;
	return 0;
fail:
	close(m->fd);
	m->fd = -1;
	return r;
}

int gmem_map_file(struct gmem *m, uint64_t size, int fd, uint64_t offset)
{
	memset(m, 0, sizeof(*m));
	m->fd = -1;
	int r = gmem_layout(m, size);
	if (r)
		return r;
	if (offset % GMEM_PAGE_SIZE)
		return -EINVAL;
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd,
		       (off_t)offset);
	if (p == MAP_FAILED) {
		r = -errno;
		log_errno("cannot map %llu bytes of guest RAM from the image",
			  (unsigned long long)size);
		return r;
	}
	m->host = p;
	return 0;
}

static void set_bits(uint64_t *bm, uint64_t from, uint64_t to)
{
	for (uint64_t i = from; i < to;) {
		if (i % 64 == 0 && to - i >= 64) {
			bm[i / 64] = ~0ull;
			i += 64;
		} else {
			bm[i / 64] |= 1ull << (i % 64);
			i++;
		}
	}
}

int gmem_nonzero_bitmap(const struct gmem *m, uint64_t *bitmap)
{
	uint64_t pages = m->size / GMEM_PAGE_SIZE;
	if (m->fd < 0) {
		set_bits(bitmap, 0, pages);
		return 0;
	}
	for (uint64_t off = 0; off < m->size;) {
		off_t data = lseek(m->fd, (off_t)off, SEEK_DATA);
		if (data < 0) {
			if (errno == ENXIO)
				return 0; /* only holes from here */
			set_bits(bitmap, off / GMEM_PAGE_SIZE, pages); /* cannot tell: all may be data */
			return 0;
		}
		off_t hole = lseek(m->fd, data, SEEK_HOLE);
		uint64_t end = hole < 0 ? m->size : (uint64_t)hole;
		if (end > m->size)
			end = m->size;
		set_bits(bitmap, (uint64_t)data / GMEM_PAGE_SIZE,
			 (end + GMEM_PAGE_SIZE - 1) / GMEM_PAGE_SIZE);
		off = end;
	}
	return 0;
}

void gmem_free(struct gmem *m)
{
	if (m->host)
		munmap(m->host, m->size);
	if (m->fd >= 0)
		close(m->fd);
	m->host = NULL;
	m->fd = -1;
}

uint64_t gmem_offset(const struct gmem *m, uint64_t gpa)
{
	for (unsigned int i = 0; i < m->nregions; i++) {
		const struct gmem_region *r = &m->regions[i];
		if (gpa >= r->gpa && gpa - r->gpa < r->size)
			return r->offset + (gpa - r->gpa);
	}
	return UINT64_MAX;
}

void *gmem_ptr(const struct gmem *m, uint64_t gpa, uint64_t len)
{
	for (unsigned int i = 0; i < m->nregions; i++) {
		const struct gmem_region *r = &m->regions[i];
		if (gpa >= r->gpa && gpa - r->gpa <= r->size && len <= r->size - (gpa - r->gpa))
			return m->host + r->offset + (gpa - r->gpa);
	}
	return NULL;
}

void gmem_mark_dirty(struct gmem *m, uint64_t offset, uint64_t len)
{
	uint64_t *bm = atomic_load(&m->dirty);
	if (!bm || len == 0)
		return;
	for (uint64_t pg = offset / GMEM_PAGE_SIZE; pg <= (offset + len - 1) / GMEM_PAGE_SIZE; pg++)
		__atomic_fetch_or(&bm[pg / 64], 1ull << (pg % 64), __ATOMIC_RELAXED);
}

int gmem_write(struct gmem *m, uint64_t gpa, const void *src, size_t len)
{
	void *p = gmem_ptr(m, gpa, len);
	if (!p)
		return -EFAULT;
	memcpy(p, src, len);
	gmem_mark_dirty(m, (uint64_t)((uint8_t *)p - m->host), len);
	return 0;
}

int gmem_read(const struct gmem *m, uint64_t gpa, void *dst, size_t len)
{
	const void *p = gmem_ptr(m, gpa, len);
	if (!p)
		return -EFAULT;
	memcpy(dst, p, len);
	return 0;
}
