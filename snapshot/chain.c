/* SPDX-License-Identifier: MIT */
/* Incremental chains: open an image and its ancestors, fill or map RAM from all of them. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/image.h"
#include "snapshot/snapshot_internal.h"
#include "util/log.h"

static void sha_hex(char out[65], const uint8_t *b)
{
	for (int i = 0; i < 32; i++)
		sprintf(out + 2 * i, "%02x", b[i]);
}

int snap_parent_resolve(const char *child, const char *ref, char *out, size_t outlen)
{
	int n;
	if (ref[0] == '/') {
		n = snprintf(out, outlen, "%s", ref);
	} else {
		char *copy = strdup(child);
		if (!copy)
			return -ENOMEM;
		n = snprintf(out, outlen, "%s/%s", dirname(copy), ref);
		free(copy);
	}
	return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

int snap_parent_ref(const char *child, const char *parent, char *out, size_t outlen)
{
	char *c = strdup(child), *p = strdup(parent), *pb = strdup(parent);
	int r = -ENOMEM;
	if (c && p && pb) {
		const char *cd = dirname(c), *pd = dirname(p);
		/* Same directory: a bare name, so that the chain's directory can move as one. */
		int n = snprintf(out, outlen, "%s", strcmp(cd, pd) ? parent : basename(pb));
		r = n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
	}
	free(c);
	free(p);
	free(pb);
	return r;
}

void snap_chain_close(struct snap_chain *c)
{
	for (size_t i = 0; i < c->n; i++) {
		img_close(c->link[i].img);
		if (c->link[i].fd >= 0)
			close(c->link[i].fd);
		free(c->link[i].path);
	}
	c->n = 0;
}

static int open_one(const char *path, struct snap_link *l)
{
	struct stat sb;
	l->fd = -1;
	l->img = NULL;
	l->path = strdup(path);
	if (!l->path)
		return -ENOMEM;
	l->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (l->fd < 0)
		return -errno;
	if (fstat(l->fd, &sb) < 0 || !S_ISREG(sb.st_mode))
		return -EINVAL;
	return img_open(&l->img, l->fd);
}

/* Same RAM size and layout: a child's pages index its parent's RAM. */
static bool same_memory(const struct img_header *a, const struct img_header *b)
{
	if (a->vm.ram_size != b->vm.ram_size || a->vm.nregions != b->vm.nregions)
		return false;
	for (uint32_t i = 0; i < a->vm.nregions; i++)
		if (memcmp(&a->vm.regions[i], &b->vm.regions[i], sizeof(a->vm.regions[i])))
			return false;
	return true;
}

int snap_chain_open(struct snap_chain *c, const char *path)
{
	char next[IMG_STR_MAX + 4096];
	int r;

	memset(c, 0, sizeof(*c));
	snprintf(next, sizeof(next), "%s", path);
	for (;;) {
		struct snap_link *l = &c->link[c->n];
		const char *child = c->n ? c->link[c->n - 1].path : NULL;
		r = open_one(next, l);
		c->n++;
		if (r) {
			if (l->fd < 0 && child)
				log_err(
				    "%s: its parent image %s cannot be opened: %s (an incremental "
				    "image needs every image of its chain)",
				    child, next, strerror(-r));
			else if (l->fd < 0)
				log_err("cannot open image %s: %s", next, strerror(-r));
			else if (!l->img && r == -EINVAL)
				log_err("%s is not a regular file", next);
			else if (child) /* img_open logged what and where */
				log_err("%s: its parent image %s is not usable", child, next);
			goto fail;
		}
		if (child) {
			/* The reference: the parent's SHA-256 from its end record. */
			const uint8_t *want = c->link[c->n - 2].parent_sha;
			if (memcmp(img_get_sha256(l->img), want, 32)) {
				char a[65], b[65];
				sha_hex(a, img_get_sha256(l->img));
				sha_hex(b, want);
				log_err("%s: its parent %s is not the image it was saved against "
					"(SHA-256 %.16s..., expected %.16s...): the parent was "
					"replaced or modified",
					child, next, a, b);
				r = -EBADMSG;
				goto fail;
			}
			if (!same_memory(img_get_header(l->img), img_get_header(c->link[0].img))) {
				log_err("%s: its parent %s has a different memory layout", child,
					next);
				r = -EBADMSG;
				goto fail;
			}
		}
		const char *ref;
		if (img_get_parent(l->img, l->parent_sha, &ref))
			break; /* a full image: the base of the chain */
		if (c->n == SNAP_CHAIN_MAX) {
			log_err("%s: the chain of parents is longer than %d images (a loop?)", path,
				SNAP_CHAIN_MAX);
			r = -ELOOP;
			goto fail;
		}
		r = snap_parent_resolve(l->path, ref, next, sizeof(next));
		if (r) {
			log_err("%s: parent path too long", l->path);
			goto fail;
		}
	}
	return 0;
fail:
	snap_chain_close(c);
	return r;
}

bool snap_chain_linear(const struct snap_chain *c)
{
	for (size_t i = 0; i < c->n; i++) {
		struct img_mem_info mi;
		if (img_get_mem_info(c->link[i].img, &mi) || !mi.linear)
			return false;
	}
	return true;
}

int snap_chain_read_memory(struct snap_chain *c, void *ram, uint64_t size, bool zeroed)
{
	/* Oldest first; a child's ZERO runs clear what its ancestors stored, PARENT runs stay. */
	for (size_t i = c->n; i-- > 0;) {
		int r = img_read_memory(c->link[i].img, ram, size,
					i == c->n - 1 && zeroed ? IMG_READ_DEST_ZEROED : 0);
		if (r) {
			/* The reader named the page; in a chain, say which file too. */
			if (c->n > 1)
				log_err("(in %s, image %zu of a chain of %zu)", c->link[i].path,
					c->n - i, c->n);
			return r;
		}
	}
	return 0;
}

/* Map one stretch of a child over RAM: its file pages (fd >= 0) or anonymous zeros. */
static int map_over(uint8_t *ram, uint64_t page, uint64_t npages, int fd, uint64_t off)
{
	void *at = ram + page * IMG_PAGE_SIZE;
	size_t len = npages * IMG_PAGE_SIZE;
	void *p = fd >= 0 ? mmap(at, len, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, fd, (off_t)off)
			  : mmap(at, len, PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE | MAP_ANONYMOUS, -1, 0);
	return p == MAP_FAILED ? -errno : 0;
}

/*
 * Count the mappings a child's overlay needs (adjacent DATA runs of a linear image are one
 * mapping, and so are adjacent ZERO runs).
 */
static size_t overlay_maps(const struct img_run *runs, size_t n)
{
	size_t maps = 0;
	for (size_t i = 0; i < n; i++) {
		if (runs[i].kind == IMG_RUN_PARENT)
			continue;
		if (i && runs[i - 1].kind == runs[i].kind &&
		    runs[i - 1].page + runs[i - 1].npages == runs[i].page)
			continue;
		maps++;
	}
	return maps;
}

int snap_chain_map_overlays(struct snap_chain *c, void *ram, uint64_t size, size_t *mapped,
			    size_t *read)
{
	*mapped = *read = 0;
	for (size_t i = c->n - 1; i-- > 0;) {
		struct snap_link *l = &c->link[i];
		struct img_mem_info mi;
		size_t nruns;
		const struct img_run *runs = img_get_runs(l->img, &nruns);
		int r;
		if (img_get_mem_info(l->img, &mi) || !mi.linear)
			return -EINVAL;
		/* Thousands of scattered runs would exhaust vm.max_map_count: read those. */
		if (overlay_maps(runs, nruns) > SNAP_OVERLAY_MAX_MAPS) {
			r = img_read_memory(l->img, ram, size, 0);
			if (r) {
				log_err("(in %s, a child in a chain of %zu)", l->path, c->n);
				return r;
			}
			(*read)++;
			continue;
		}
		for (size_t k = 0; k < nruns;) {
			uint8_t kind = runs[k].kind;
			uint64_t page = runs[k].page, np = runs[k].npages;
			size_t j = k + 1;
			if (kind == IMG_RUN_PARENT) {
				k = j;
				continue;
			}
			while (j < nruns && runs[j].kind == kind && runs[j].page == page + np) {
				np += runs[j].npages;
				j++;
			}
			r = map_over(ram, page, np, kind == IMG_RUN_DATA ? l->fd : -1,
				     kind == IMG_RUN_DATA ? runs[k].offset : 0);
			if (r) {
				log_err("cannot map pages %llu+%llu of %s over its parent: %s",
					(unsigned long long)page, (unsigned long long)np, l->path,
					strerror(-r));
				return r;
			}
			k = j;
		}
		(*mapped)++;
	}
	return 0;
}
