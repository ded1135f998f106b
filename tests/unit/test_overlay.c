/* SPDX-License-Identifier: MIT */
/*
 * Disk overlays (formats/overlay.c) and disk backends (vmm/blkdev.c), on temporary files:
 * read-through, writes, partial writes, flush, discard and write-zeroes, chains and freezing,
 * base identity checks, crash consistency, refusal of corrupt headers and maps.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/evp.h>

#include "formats/crc32c.h"
#include "formats/overlay.h"
#include "util/log.h"
#include "vmm/blkdev.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)

struct fx {
	char dir[64];
	char base[128], ov[128], ov2[128];
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	strcpy(f->dir, "/tmp/test_overlay.XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	snprintf(f->base, sizeof(f->base), "%s/base.raw", f->dir);
	snprintf(f->ov, sizeof(f->ov), "%s/top.ovl", f->dir);
	snprintf(f->ov2, sizeof(f->ov2), "%s/top2.ovl", f->dir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
	if (system(cmd) != 0)
		return -1;
	free(f);
	return 0;
}

static uint8_t pattern(uint64_t off, unsigned int seed)
{
	return (uint8_t)(off * 31 + seed + off / 4093);
}

static uint8_t *make_pattern(uint64_t size, unsigned int seed)
{
	uint8_t *p = malloc(size);
	for (uint64_t i = 0; i < size; i++)
		p[i] = pattern(i, seed);
	return p;
}

static void write_file(const char *path, const void *buf, uint64_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, buf, len, 0), (ssize_t)len);
	close(fd);
}

static uint8_t *make_raw(const char *path, uint64_t size, unsigned int seed)
{
	uint8_t *p = make_pattern(size, seed);
	write_file(path, p, size);
	return p;
}

static uint64_t fsize(const char *path)
{
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	return (uint64_t)st.st_size;
}

static void file_pwrite(const char *path, const void *buf, size_t len, uint64_t off)
{
	int fd = open(path, O_WRONLY);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, buf, len, (off_t)off), (ssize_t)len);
	close(fd);
}

static void file_pread(const char *path, void *buf, size_t len, uint64_t off)
{
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, buf, len, (off_t)off), (ssize_t)len);
	close(fd);
}

static void file_hash(const char *path, uint8_t sha[32])
{
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(ovl_content_hash(fd, sha), 0);
	close(fd);
}

/* The whole disk equals @model. */
static void check_disk(struct blkdev *d, const uint8_t *model, uint64_t size)
{
	uint8_t *buf = malloc(size);
	assert_int_equal(blkdev_size(d), size);
	assert_int_equal(blkdev_pread(d, buf, size, 0), 0);
	for (uint64_t i = 0; i < size; i++)
		if (buf[i] != model[i])
			fail_msg("disk byte %llu is 0x%02x, expected 0x%02x", (unsigned long long)i,
				 buf[i], model[i]);
	free(buf);
}

/* The file's bytes equal @model (the base was never written). */
static void check_file(const char *path, const uint8_t *model, uint64_t size)
{
	uint8_t *buf = malloc(size);
	assert_int_equal(fsize(path), size);
	file_pread(path, buf, size, 0);
	assert_memory_equal(buf, model, size);
	free(buf);
}

static void model_write(struct blkdev *d, uint8_t *model, uint64_t off, uint64_t len,
			unsigned int seed)
{
	uint8_t *p = make_pattern(len, seed);
	assert_int_equal(blkdev_pwrite(d, p, len, off), 0);
	memcpy(model + off, p, len);
	free(p);
}

/* Header fields as stored: read, patch, fix the CRC. */
static void patch_header(const char *path, size_t off, const void *v, size_t len, bool fix_crc)
{
	uint8_t h[8192];
	file_pread(path, h, 16, 0);
	uint32_t hl =
	    (uint32_t)h[12] | (uint32_t)h[13] << 8 | (uint32_t)h[14] << 16 | (uint32_t)h[15] << 24;
	assert_true(hl <= sizeof(h));
	file_pread(path, h, hl, 0);
	memcpy(h + off, v, len);
	if (fix_crc) {
		uint32_t hl2 = (uint32_t)h[12] | (uint32_t)h[13] << 8 | (uint32_t)h[14] << 16 |
			       (uint32_t)h[15] << 24;
		if (hl2 >= 8 && hl2 <= sizeof(h))
			hl = hl2;
		uint32_t crc = crc32c(0, h, hl - 4);
		for (int i = 0; i < 4; i++)
			h[hl - 4 + (uint32_t)i] = (uint8_t)(crc >> (8 * i));
	}
	file_pwrite(path, h, hl, 0);
}

static uint64_t header_u64(const char *path, size_t off)
{
	uint8_t b[8];
	uint64_t v = 0;
	file_pread(path, b, 8, off);
	for (int i = 7; i >= 0; i--)
		v = v << 8 | b[i];
	return v;
}

static void put_u64(const char *path, uint64_t off, uint64_t v)
{
	uint8_t b[8];
	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(v >> (8 * i));
	file_pwrite(path, b, 8, off);
}

/* Create an overlay with @bs-byte blocks on @base, a disk of @size bytes. */
static void create_overlay(const char *ov, const char *base, uint32_t bs, uint64_t size)
{
	uint8_t sha[32];
	file_hash(base, sha);
	assert_int_equal(ovl_create(ov, size, bs, base, sha), 0);
}

/* ---- Raw disks --------------------------------------------------------------------------- */

static void test_raw_sizes_and_errors(void **state)
{
	struct fx *f = *state;
	struct blkdev *d;
	char p[160];

	snprintf(p, sizeof(p), "%s/missing", f->dir);
	assert_int_equal(blkdev_open(&d, p, false, NULL), -ENOENT);
	assert_null(d);
	assert_int_equal(blkdev_open(&d, f->dir, true, NULL), -EISDIR);
	write_file(f->base, "", 0);
	assert_int_equal(blkdev_open(&d, f->base, false, NULL), -EINVAL);
	free(make_raw(f->base, 100, 1));
	assert_int_equal(blkdev_open(&d, f->base, false, NULL), -EINVAL);
	free(make_raw(f->base, 1000, 1));
	assert_int_equal(blkdev_open(&d, f->base, false, NULL), -EINVAL);
	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), -EINVAL);
	assert_int_equal(access(f->ov, F_OK), -1); /* no overlay made on a refused base */
	chmod(f->base, 0);
	if (geteuid() != 0)
		assert_int_equal(blkdev_open(&d, f->base, true, NULL), -EACCES);
	chmod(f->base, 0644);

	uint8_t *model = make_raw(f->base, 1024, 2);
	assert_int_equal(blkdev_open(&d, f->base, true, NULL), 0);
	assert_int_equal(blkdev_size(d), 1024);
	assert_true(blkdev_readonly(d));
	check_disk(d, model, 1024);
	assert_int_equal(blkdev_pwrite(d, "x", 1, 0), -EROFS);
	assert_int_equal(blkdev_write_zeroes(d, 0, 512, true), -EROFS);
	assert_int_equal(blkdev_discard(d, 0, 512), -EROFS);
	assert_int_equal(blkdev_flush(d), 0);
	uint8_t buf[16];
	assert_int_equal(blkdev_pread(d, buf, 16, 1020), -EINVAL);
	assert_int_equal(blkdev_pread(d, buf, 16, UINT64_MAX - 4), -EINVAL);
	assert_int_equal(blkdev_close(d), 0);
	free(model);
}

static void test_raw_io(void **state)
{
	struct fx *f = *state;
	struct blkdev *d;
	const uint64_t size = 1 * MiB;
	uint8_t *model = make_raw(f->base, size, 3);

	assert_int_equal(blkdev_open(&d, f->base, false, NULL), 0);
	assert_false(blkdev_readonly(d));
	assert_true(blkdev_discard_granularity(d) >= 512);
	model_write(d, model, 4096 + 512, 8192, 9);
	/* Vector write with odd splits, then vector read. */
	uint8_t a[700], b[300], c[1024];
	memset(a, 0xa1, sizeof(a));
	memset(b, 0xb2, sizeof(b));
	memset(c, 0xc3, sizeof(c));
	struct iovec v[3] = {{a, sizeof(a)}, {b, sizeof(b)}, {c, sizeof(c)}};
	assert_int_equal(blkdev_pwritev(d, v, 3, 100 * KiB), 0);
	memcpy(model + 100 * KiB, a, 700);
	memcpy(model + 100 * KiB + 700, b, 300);
	memcpy(model + 100 * KiB + 1000, c, 1024);
	check_disk(d, model, size);
	assert_int_equal(blkdev_write_zeroes(d, 8192, 3 * 4096 + 512, false), 0);
	memset(model + 8192, 0, 3 * 4096 + 512);
	assert_int_equal(blkdev_write_zeroes(d, 64 * KiB, 64 * KiB, true), 0);
	memset(model + 64 * KiB, 0, 64 * KiB);
	check_disk(d, model, size);
	/* Discard: the range reads as zeros where the file system punches (tmpfs, ext4...). */
	assert_int_equal(blkdev_discard(d, 512 * KiB, 128 * KiB), 0);
	uint8_t *z = malloc(128 * KiB);
	assert_int_equal(blkdev_pread(d, z, 128 * KiB, 512 * KiB), 0);
	if (z[0] == 0)
		memset(model + 512 * KiB, 0, 128 * KiB);
	free(z);
	check_disk(d, model, size);
	assert_int_equal(blkdev_pwrite(d, "x", 1, size), -EINVAL);
	assert_int_equal(blkdev_write_zeroes(d, size - 512, 1024, false), -EINVAL);
	assert_int_equal(blkdev_flush(d), 0);

	/* A raw disk must not become an "overlay" by a guest write. */
	assert_int_equal(blkdev_pwrite(d, OVL_MAGIC, 8, 0), -EPERM);
	assert_int_equal(blkdev_pwrite(d, "VMSN", 4, 0), 0);
	memcpy(model, "VMSN", 4);
	assert_int_equal(blkdev_pwrite(d, "APOV", 4, 4), -EPERM);
	assert_int_equal(blkdev_pwrite(d, "APOX", 4, 4), 0);
	memcpy(model + 4, "APOX", 4);
	/* The first 8 bytes go separately from the rest: iovecs split across them. */
	uint8_t x[1000];
	memset(x, 0x77, sizeof(x));
	struct iovec h[4] = {{"ab", 2}, {"cdefg", 5}, {x, 0}, {x, sizeof(x)}};
	assert_int_equal(blkdev_pwritev(d, h, 4, 3), 0);
	memcpy(model + 3, "abcdefg", 7);
	memcpy(model + 10, x, sizeof(x));
	check_disk(d, model, size);
	assert_int_equal(blkdev_close(d), 0);

	check_file(f->base, model, size);
	free(model);
}

/* ---- Overlays ---------------------------------------------------------------------------- */

static void test_overlay_readthrough_and_writes(void **state)
{
	struct fx *f = *state;
	struct blkdev *d;
	const uint64_t size = 1 * MiB + 512; /* a short last block */
	uint8_t *base = make_raw(f->base, size, 5);
	uint8_t *model = malloc(size);
	memcpy(model, base, size);

	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
	assert_int_equal(access(f->ov, F_OK), 0);
	assert_int_equal(blkdev_discard_granularity(d), OVL_BLOCK_SIZE_DEFAULT);
	check_disk(d, model, size);
	/* Partial write inside a block: the rest of the block comes from the base. */
	model_write(d, model, 70000 - 70000 % 512, 4096, 11);
	/* Whole blocks, then a write across three blocks at odd offsets. */
	model_write(d, model, 128 * KiB, 128 * KiB, 12);
	model_write(d, model, 320 * KiB - 1536, 64 * KiB + 3072, 13);
	/* The short last block, partly and wholly. */
	model_write(d, model, 1 * MiB, 512, 14);
	model_write(d, model, 1 * MiB - 1024, 1536, 15);
	/* Overwrite in place. */
	model_write(d, model, 128 * KiB + 512, 1024, 16);
	check_disk(d, model, size);
	assert_int_equal(blkdev_close(d), 0);
	check_file(f->base, base, size);
	/* The stored short last block is zero past the disk's end. */
	uint64_t e16 = header_u64(f->ov, header_u64(f->ov, 40) + 16 * 8);
	uint8_t *tail = malloc(64 * KiB - 512);
	file_pread(f->ov, tail, 64 * KiB - 512, e16 + 512);
	for (uint64_t i = 0; i < 64 * KiB - 512; i++)
		assert_int_equal(tail[i], 0);
	free(tail);

	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
	check_disk(d, model, size);
	assert_int_equal(blkdev_close(d), 0);
	/* Read-only over an existing overlay: reads it, writes nothing. */
	assert_int_equal(blkdev_open(&d, f->base, true, f->ov), 0);
	check_disk(d, model, size);
	assert_int_equal(blkdev_pwrite(d, "x", 1, 0), -EROFS);
	assert_int_equal(blkdev_close(d), 0);
	/* A read-only disk does not create an overlay. */
	assert_int_equal(blkdev_open(&d, f->base, true, f->ov2), -ENOENT);
	assert_int_equal(access(f->ov2, F_OK), -1);
	check_file(f->base, base, size);
	free(base);
	free(model);
}

static void test_overlay_zeroes_and_discard(void **state)
{
	struct fx *f = *state;
	struct blkdev *d;
	const uint64_t size = 2 * MiB;
	const uint64_t bs = OVL_BLOCK_SIZE_DEFAULT;
	uint8_t *base = make_raw(f->base, size, 6);
	uint8_t *model = malloc(size);
	memcpy(model, base, size);

	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
	model_write(d, model, 0, 4 * bs, 21); /* blocks 0-3 held */
	/* Held whole block: punched. Absent whole block: ZERO entry. Partial: zeros written. */
	assert_int_equal(blkdev_write_zeroes(d, bs, bs, false), 0);
	assert_int_equal(blkdev_write_zeroes(d, 8 * bs, 2 * bs, true), 0);
	assert_int_equal(blkdev_write_zeroes(d, 12 * bs + 512, 1024, false), 0);
	assert_int_equal(blkdev_write_zeroes(d, 2 * bs + 4096, 512, false), 0);
	memset(model + bs, 0, bs);
	memset(model + 8 * bs, 0, 2 * bs);
	memset(model + 12 * bs + 512, 0, 1024);
	memset(model + 2 * bs + 4096, 0, 512);
	check_disk(d, model, size);
	/* Discard: whole blocks zeroed, partial ends left. */
	assert_int_equal(blkdev_discard(d, 14 * bs + 512, 3 * bs), 0);
	memset(model + 15 * bs, 0, 2 * bs);
	assert_int_equal(blkdev_discard(d, 3 * bs + 512, 1024), 0);
	check_disk(d, model, size);
	/* Writing into a ZERO block: the rest of the block stays zero, not the base. */
	model_write(d, model, 8 * bs + 4096, 512, 22);
	check_disk(d, model, size);
	assert_int_equal(blkdev_close(d), 0);
	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
	check_disk(d, model, size);
	assert_int_equal(blkdev_close(d), 0);
	check_file(f->base, base, size);
	free(base);
	free(model);
}

/* Random operations with random iovec splits against a model, 4 KiB blocks, reopening. */
static void test_overlay_random_model(void **state)
{
	struct fx *f = *state;
	struct blkdev *d;
	const uint64_t size = 3 * MiB + 1536;
	const uint64_t bs = 4096, sectors = size / 512;
	uint8_t *base = make_raw(f->base, size, 7);
	uint8_t *model = malloc(size), *buf = malloc(64 * 512);
	unsigned int seed = (unsigned int)time(NULL);
	memcpy(model, base, size);
	srand(seed);
	print_message("seed %u\n", seed);

	create_overlay(f->ov, f->base, (uint32_t)bs, size);
	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
	assert_int_equal(blkdev_discard_granularity(d), bs);
	for (int it = 0; it < 600; it++) {
		uint64_t s = (uint64_t)rand() % sectors;
		uint64_t n = 1 + (uint64_t)rand() % 64;
		if (s + n > sectors)
			n = sectors - s;
		uint64_t off = s * 512, len = n * 512;
		int op = rand() % 10;
		if (op < 5) {
			for (uint64_t i = 0; i < len; i++)
				buf[i] = (uint8_t)rand();
			struct iovec v[4];
			uint64_t c1 = (uint64_t)rand() % (len + 1),
				 c2 = (uint64_t)rand() % (len + 1);
			if (c1 > c2) {
				uint64_t t = c1;
				c1 = c2;
				c2 = t;
			}
			v[0] = (struct iovec){buf, c1};
			v[1] = (struct iovec){buf + c1, 0};
			v[2] = (struct iovec){buf + c1, c2 - c1};
			v[3] = (struct iovec){buf + c2, len - c2};
			assert_int_equal(blkdev_pwritev(d, v, 4, off), 0);
			memcpy(model + off, buf, len);
		} else if (op < 7) {
			struct iovec v[2] = {{buf, len / 3}, {buf + len / 3, len - len / 3}};
			assert_int_equal(blkdev_preadv(d, v, 2, off), 0);
			assert_memory_equal(buf, model + off, len);
		} else if (op == 7) {
			assert_int_equal(blkdev_write_zeroes(d, off, len, true), 0);
			memset(model + off, 0, len);
		} else if (op == 8) {
			assert_int_equal(blkdev_discard(d, off, len), 0);
			for (uint64_t b = (off + bs - 1) / bs; b * bs < off + len; b++) {
				uint64_t end = (b + 1) * bs < size ? (b + 1) * bs : size;
				if (end <= off + len)
					memset(model + b * bs, 0, end - b * bs);
			}
		} else if (rand() % 4 == 0) {
			assert_int_equal(blkdev_close(d), 0);
			assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
		} else {
			assert_int_equal(blkdev_flush(d), 0);
		}
	}
	check_disk(d, model, size);
	assert_int_equal(blkdev_close(d), 0);
	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
	check_disk(d, model, size);
	assert_int_equal(blkdev_close(d), 0);
	check_file(f->base, base, size);
	free(base);
	free(model);
	free(buf);
}

static void test_flush_writes_map_after_data(void **state)
{
	struct fx *f = *state;
	struct blkdev *d;
	const uint64_t size = 1 * MiB, bs = OVL_BLOCK_SIZE_DEFAULT;
	uint8_t *base = make_raw(f->base, size, 8);
	uint8_t *model = malloc(size);
	memcpy(model, base, size);

	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
	uint64_t map = header_u64(f->ov, 40), data = header_u64(f->ov, 48);
	assert_true(map >= 4096 && map % 4096 == 0);
	assert_true(data >= map + 16 * 8 && data % bs == 0);
	model_write(d, model, 3 * bs + 512, 512, 31);
	/* Before the flush the entry is not in the file, the data is. */
	assert_int_equal(header_u64(f->ov, map + 3 * 8), 0);
	assert_true(fsize(f->ov) >= data + bs);
	assert_int_equal(blkdev_flush(d), 0);
	uint64_t e = header_u64(f->ov, map + 3 * 8);
	assert_true(e >= data && e % bs == 0);
	uint8_t sec[512];
	file_pread(f->ov, sec, 512, e + 512);
	assert_memory_equal(sec, model + 3 * bs + 512, 512);
	assert_int_equal(blkdev_close(d), 0);
	free(base);
	free(model);
}

/* ---- Chains, freezing, identity ---------------------------------------------------------- */

static void test_chain_and_freeze(void **state)
{
	struct fx *f = *state;
	struct blkdev *d;
	struct blkdev_identity frozen, id, id2;
	const uint64_t size = 1 * MiB;
	uint8_t sha[32];
	char ov3[160], ov4[160];
	uint8_t *base = make_raw(f->base, size, 9);
	uint8_t *model = malloc(size);
	memcpy(model, base, size);
	snprintf(ov3, sizeof(ov3), "%s/top3.ovl", f->dir);
	snprintf(ov4, sizeof(ov4), "%s/top4.ovl", f->dir);

	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
	/* An empty overlay adds nothing: the identity is the base's. */
	assert_int_equal(blkdev_identity(d, &id), 0);
	file_hash(f->base, sha);
	assert_memory_equal(id.sha256, sha, 32);
	assert_string_equal(id.path, f->base);
	assert_int_equal(id.size, size);

	model_write(d, model, 100 * KiB, 8 * KiB, 41);
	assert_int_equal(blkdev_freeze_new_overlay(d, f->ov2, &frozen, NULL), 0);
	assert_string_equal(frozen.path, f->ov);
	file_hash(f->ov, sha);
	assert_memory_equal(frozen.sha256, sha, 32);
	/* The new top is empty: the disk's identity is the frozen layer's. */
	assert_int_equal(blkdev_identity(d, &id), 0);
	assert_memory_equal(id.sha256, frozen.sha256, 32);
	uint8_t *after_freeze = malloc(size);
	memcpy(after_freeze, model, size);
	model_write(d, model, 96 * KiB, 64 * KiB, 42);
	model_write(d, model, 900 * KiB, 512, 43);
	assert_int_equal(blkdev_identity(d, &id), 0);
	assert_string_equal(id.path, f->ov2);
	assert_memory_not_equal(id.sha256, frozen.sha256, 32);
	/* Freezing onto an existing file is refused and changes nothing. */
	assert_int_equal(blkdev_freeze_new_overlay(d, f->ov2, NULL, NULL), -EEXIST);
	check_disk(d, model, size);
	assert_int_equal(blkdev_close(d), 0);
	file_hash(f->ov, sha);
	assert_memory_equal(frozen.sha256, sha, 32); /* never written after the freeze */

	/* Opening the top follows the chain; the frozen layer alone shows the older disk. */
	assert_int_equal(blkdev_open(&d, f->ov2, false, NULL), 0);
	check_disk(d, model, size);
	assert_int_equal(blkdev_close(d), 0);
	assert_int_equal(blkdev_open(&d, f->ov, true, NULL), 0);
	check_disk(d, after_freeze, size);
	assert_int_equal(blkdev_close(d), 0);
	/* A second, independent overlay on the frozen layer (a clone). */
	assert_int_equal(blkdev_open(&d, f->ov, false, ov3), 0);
	assert_int_equal(blkdev_identity(d, &id2), 0);
	assert_memory_equal(id2.sha256, frozen.sha256, 32);
	check_disk(d, after_freeze, size);
	assert_int_equal(blkdev_close(d), 0);
	/* Relative base paths resolve from the overlay's directory: open from elsewhere. */
	char cwd[4096];
	assert_non_null(getcwd(cwd, sizeof(cwd)));
	assert_int_equal(chdir(f->dir), 0);
	assert_int_equal(blkdev_open(&d, "top2.ovl", false, "top4.ovl"), 0);
	assert_int_equal(blkdev_close(d), 0);
	assert_int_equal(chdir(cwd), 0);
	assert_int_equal(blkdev_open(&d, ov4, false, NULL), 0);
	check_disk(d, model, size);
	assert_int_equal(blkdev_close(d), 0);
	check_file(f->base, base, size);
	free(base);
	free(model);
	free(after_freeze);
}

static void test_chain_depth_limit(void **state)
{
	struct fx *f = *state;
	struct blkdev *d;
	char p[OVL_MAX_DEPTH + 2][160];
	uint8_t *model = make_raw(f->base, 64 * KiB, 10);

	for (unsigned int i = 0; i <= OVL_MAX_DEPTH + 1; i++)
		snprintf(p[i], sizeof(p[i]), "%s/l%u.ovl", f->dir, i);
	assert_int_equal(blkdev_open(&d, f->base, false, p[0]), 0);
	for (unsigned int i = 1; i < OVL_MAX_DEPTH; i++) {
		model_write(d, model, 512 * i, 512, 50 + i);
		assert_int_equal(blkdev_freeze_new_overlay(d, p[i], NULL, NULL), 0);
	}
	assert_int_equal(blkdev_freeze_new_overlay(d, p[OVL_MAX_DEPTH], NULL, NULL), -ELOOP);
	assert_int_equal(access(p[OVL_MAX_DEPTH], F_OK), -1);
	model_write(d, model, 0, 512, 70);
	check_disk(d, model, 64 * KiB);
	assert_int_equal(blkdev_close(d), 0);
	/* Sixteen overlays open; a seventeenth on top (made by hand) is refused. */
	assert_int_equal(blkdev_open(&d, p[OVL_MAX_DEPTH - 1], false, NULL), 0);
	check_disk(d, model, 64 * KiB);
	assert_int_equal(blkdev_close(d), 0);
	assert_int_equal(blkdev_open(&d, p[OVL_MAX_DEPTH - 1], false, p[OVL_MAX_DEPTH]), -ELOOP);
	create_overlay(p[OVL_MAX_DEPTH], p[OVL_MAX_DEPTH - 1], 4096, 64 * KiB);
	assert_int_equal(blkdev_open(&d, p[OVL_MAX_DEPTH], true, NULL), -ELOOP);
	/* A loop: an overlay naming itself as its base. */
	uint8_t sha[32] = {0};
	assert_int_equal(ovl_create(p[OVL_MAX_DEPTH + 1], 64 * KiB, 4096, "l17.ovl", sha), 0);
	assert_int_equal(blkdev_open(&d, p[OVL_MAX_DEPTH + 1], true, NULL), -ELOOP);
	free(model);
}

static void test_base_mismatch(void **state)
{
	struct fx *f = *state;
	struct blkdev *d;
	const uint64_t size = 4 * MiB;
	char other[160];
	uint8_t *base = make_raw(f->base, size, 11);
	snprintf(other, sizeof(other), "%s/other.raw", f->dir);

	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
	assert_int_equal(blkdev_pwrite(d, "abc", 3, 5000), 0);
	assert_int_equal(blkdev_close(d), 0);
	/* Content: a byte in the first MiB, the last MiB, a sampled block. */
	uint64_t offs[3] = {17, size - 3, ((size - 4096) * 20 / 63) & ~4095ull};
	for (int i = 0; i < 3; i++) {
		uint8_t orig, x;
		file_pread(f->base, &orig, 1, offs[i]);
		x = (uint8_t)~orig;
		file_pwrite(f->base, &x, 1, offs[i]);
		assert_int_equal(blkdev_open(&d, f->base, false, f->ov), -ESTALE);
		assert_int_equal(blkdev_open(&d, f->ov, true, NULL), -ESTALE);
		file_pwrite(f->base, &orig, 1, offs[i]);
		assert_int_equal(blkdev_open(&d, f->base, true, f->ov), 0);
		assert_int_equal(blkdev_close(d), 0);
	}
	/* Size: one more sector. */
	assert_int_equal(truncate(f->base, (off_t)(size + 512)), 0);
	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), -ESTALE);
	assert_int_equal(truncate(f->base, (off_t)size), 0);
	/* Another disk of the same size. */
	free(make_raw(other, size, 12));
	assert_int_equal(blkdev_open(&d, other, false, f->ov), -ESTALE);
	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
	assert_int_equal(blkdev_close(d), 0);
	free(base);
}

/* The content hash is the one OVERLAY.md defines (computed here independently). */
static void spec_hash(const uint8_t *data, uint64_t len, uint8_t out[32])
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	uint8_t l[8];
	unsigned int n;
	for (int i = 0; i < 8; i++)
		l[i] = (uint8_t)(len >> (8 * i));
	EVP_DigestInit_ex(c, EVP_sha256(), NULL);
	EVP_DigestUpdate(c, l, 8);
	if (len <= 2 * MiB) {
		EVP_DigestUpdate(c, data, len);
	} else {
		EVP_DigestUpdate(c, data, MiB);
		EVP_DigestUpdate(c, data + len - MiB, MiB);
		for (uint64_t i = 0; i < 64; i++)
			EVP_DigestUpdate(c, data + (((len - 4096) * i / 63) & ~4095ull), 4096);
	}
	EVP_DigestFinal_ex(c, out, &n);
	EVP_MD_CTX_free(c);
}

static void test_content_hash(void **state)
{
	struct fx *f = *state;
	uint64_t sizes[4] = {512, 2 * MiB, 2 * MiB + 512, 5 * MiB + 4096 * 3 + 1024};
	uint8_t a[32], b[32];
	for (int i = 0; i < 4; i++) {
		uint8_t *p = make_raw(f->base, sizes[i], (unsigned int)i);
		file_hash(f->base, a);
		spec_hash(p, sizes[i], b);
		assert_memory_equal(a, b, 32);
		free(p);
	}
}

/* ---- Corrupt and foreign files ----------------------------------------------------------- */

static void test_corrupt_header(void **state)
{
	struct fx *f = *state;
	struct blkdev *d;
	uint8_t hdr[4096];
	uint8_t *base = make_raw(f->base, 256 * KiB, 13);
	create_overlay(f->ov, f->base, 4096, 256 * KiB);
	file_pread(f->ov, hdr, sizeof(hdr), 0);
	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
	assert_int_equal(blkdev_close(d), 0);

	struct {
		size_t off;
		uint64_t v;
		size_t len;
		bool fix;
		int err;
	} cases[] = {
	    {0, 0x58, 1, true, -EBADMSG},	 /* magic */
	    {8, 2, 2, true, -ENOTSUP},		 /* major 2 */
	    {8, 0, 2, true, -EBADMSG},		 /* major 0 */
	    {10, 7, 2, true, 0},		 /* a newer minor opens */
	    {12, 70000, 4, false, -EBADMSG},	 /* header_len too big */
	    {12, 50, 4, true, -EBADMSG},	 /* header_len too small */
	    {16, 0x10000, 4, true, -ENOTSUP},	 /* incompatible flag */
	    {16, 0x1, 4, true, 0},		 /* informational flag */
	    {20, 3000, 4, true, -EBADMSG},	 /* block size not a power of two */
	    {20, 1024, 4, true, -EBADMSG},	 /* block size too small */
	    {24, 1000, 8, true, -EBADMSG},	 /* virtual size not sectors */
	    {32, 63, 8, true, -EBADMSG},	 /* nblocks mismatch */
	    {32, 1ull << 40, 8, true, -EBADMSG}, /* nblocks huge */
	    {40, 0, 8, true, -EBADMSG},		 /* map over the header */
	    {40, 4097, 8, true, -EBADMSG},	 /* map misaligned */
	    {40, 1ull << 40, 8, true, -EBADMSG}, /* map past the file */
	    {48, 4096, 8, true, -EBADMSG},	 /* data over the map */
	    {48, 1ull << 40, 8, true, -EBADMSG}, /* data past the file */
	    {56, 512, 8, true, -EBADMSG},	 /* base size differs */
	    {64, 0x55, 1, true, -ESTALE},	 /* base hash */
	    {96, 5000, 4, true, -EBADMSG},	 /* path length overruns */
	    {96, 0, 4, true, -EBADMSG},		 /* empty path */
	    {30, 0x99, 1, false, -EBADMSG},	 /* any byte without fixing the CRC */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint8_t v[8];
		for (int k = 0; k < 8; k++)
			v[k] = (uint8_t)(cases[i].v >> (8 * k));
		file_pwrite(f->ov, hdr, sizeof(hdr), 0);
		patch_header(f->ov, cases[i].off, v, cases[i].len, cases[i].fix);
		int err = blkdev_open(&d, f->base, false, f->ov);
		if (err != cases[i].err)
			fail_msg("case %zu (offset %zu): got %d, expected %d", i, cases[i].off, err,
				 cases[i].err);
		if (!err)
			assert_int_equal(blkdev_close(d), 0);
	}
	/* A truncated header. */
	assert_int_equal(truncate(f->ov, 50), 0);
	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), -EBADMSG);
	/* Not an overlay at all. */
	write_file(f->ov, base, 4096);
	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), -EBADMSG);
	free(base);
}

static void test_corrupt_map(void **state)
{
	struct fx *f = *state;
	struct blkdev *d;
	const uint64_t bs = 4096;
	const uint64_t size = 256 * KiB;
	uint8_t *base = make_raw(f->base, size, 14);
	create_overlay(f->ov, f->base, (uint32_t)bs, size);
	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
	assert_int_equal(blkdev_pwrite(d, "hello", 5, 0), 0);
	assert_int_equal(blkdev_pwrite(d, "world", 5, 5 * bs), 0);
	assert_int_equal(blkdev_close(d), 0);
	uint64_t map = header_u64(f->ov, 40), data = header_u64(f->ov, 48);
	uint64_t e0 = header_u64(f->ov, map), e5 = header_u64(f->ov, map + 5 * 8);
	uint64_t end = fsize(f->ov);
	assert_true(e0 >= data && e5 >= data && e0 != e5);

	uint64_t bad[] = {
	    2,	      /* neither a marker nor aligned */
	    e5 + 512, /* misaligned */
	    map,      /* inside the map */
	    end,      /* past the end */
	    UINT64_MAX & ~(bs - 1),
	    e0, /* shared with block 0 */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		put_u64(f->ov, map + 7 * 8, bad[i]);
		int err = blkdev_open(&d, f->base, false, f->ov);
		if (err != -EBADMSG)
			fail_msg("map entry %zu (0x%llx): got %d", i, (unsigned long long)bad[i],
				 err);
	}
	put_u64(f->ov, map + 7 * 8, OVL_ENTRY_ZERO);
	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
	uint8_t buf[bs];
	assert_int_equal(blkdev_pread(d, buf, bs, 7 * bs), 0);
	for (uint64_t i = 0; i < bs; i++)
		assert_int_equal(buf[i], 0);
	assert_int_equal(blkdev_pread(d, buf, 5, 5 * bs), 0);
	assert_memory_equal(buf, "world", 5);
	assert_int_equal(blkdev_close(d), 0);
	/* The referenced data cut off by a truncation: refused, not read past the end. */
	assert_int_equal(truncate(f->ov, (off_t)(end - 100)), 0);
	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), -EBADMSG);
	free(base);
}

/* ---- Crashes ----------------------------------------------------------------------------- */

static void test_crash_unflushed(void **state)
{
	struct fx *f = *state;
	struct blkdev *d;
	const uint64_t size = 1 * MiB, bs = OVL_BLOCK_SIZE_DEFAULT;
	uint8_t *base = make_raw(f->base, size, 15);
	uint8_t *model = malloc(size);
	memcpy(model, base, size);

	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
	model_write(d, model, 2 * bs, bs, 61);
	assert_int_equal(blkdev_flush(d), 0);
	assert_int_equal(blkdev_close(d), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* Flushed block 1, then unflushed: block 5 new, block 2 rewritten; killed. */
		struct blkdev *c;
		uint8_t buf[512];
		memset(buf, 0x11, sizeof(buf));
		if (blkdev_open(&c, f->base, false, f->ov) ||
		    blkdev_pwrite(c, buf, 512, bs + 512) || blkdev_flush(c))
			_exit(1);
		memset(buf, 0x55, sizeof(buf));
		if (blkdev_pwrite(c, buf, 512, 5 * bs) || blkdev_pwrite(c, buf, 512, 2 * bs))
			_exit(1);
		raise(SIGKILL);
		_exit(2);
	}
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	memset(model + bs + 512, 0x11, 512);
	memset(model + 2 * bs, 0x55, 512); /* in place: the page cache outlives the process */
	uint64_t len_before = fsize(f->ov);
	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
	check_disk(d, model, size); /* block 5 reads as the base: its entry was never written */
	/* The next new block goes after the leaked one. */
	model_write(d, model, 6 * bs, bs, 62);
	assert_int_equal(blkdev_close(d), 0);
	assert_int_equal(fsize(f->ov), len_before + bs);
	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
	check_disk(d, model, size);
	assert_int_equal(blkdev_close(d), 0);
	check_file(f->base, base, size);
	free(base);
	free(model);
}

/* Kill a writer at a random moment, many times: the overlay always opens, and every sector
 * holds the base or one whole sector some write wrote. */
static void test_crash_kill_loop(void **state)
{
	struct fx *f = *state;
	const uint64_t size = 512 * KiB, bs = 4096, nsec = size / 512;
	uint8_t *base = make_raw(f->base, size, 16);
	uint8_t *buf = malloc(size);
	create_overlay(f->ov, f->base, (uint32_t)bs, size);

	for (int round = 0; round < 6; round++) {
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			struct blkdev *c;
			uint8_t *w = malloc(16 * bs);
			if (blkdev_open(&c, f->base, false, f->ov))
				_exit(1);
			for (uint32_t i = 1;; i++) {
				uint64_t s = (uint64_t)rand() % nsec, n = 1 + (uint64_t)rand() % 64;
				if (s + n > nsec)
					n = nsec - s;
				/* Each sector says which write and which sector it is. */
				for (uint64_t k = 0; k < n; k++) {
					uint32_t tag[2] = {i, (uint32_t)(s + k)};
					for (int j = 0; j < 64; j++)
						memcpy(w + k * 512 + j * 8, tag, 8);
				}
				if (blkdev_pwrite(c, w, n * 512, s * 512))
					_exit(1);
				if (i % 5 == 0 && blkdev_flush(c))
					_exit(1);
			}
		}
		struct timespec ts = {0, (long)(10 + rand() % 40) * 1000000L};
		nanosleep(&ts, NULL);
		kill(pid, SIGKILL);
		int status;
		assert_int_equal(waitpid(pid, &status, 0), pid);
		assert_true(WIFSIGNALED(status));

		struct blkdev *d;
		assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
		assert_int_equal(blkdev_pread(d, buf, size, 0), 0);
		for (uint64_t s = 0; s < nsec; s++) {
			const uint8_t *p = buf + s * 512;
			if (memcmp(p, base + s * 512, 512) == 0)
				continue;
			uint32_t tag[2];
			memcpy(tag, p, 8);
			assert_int_equal(tag[1], s);
			for (int j = 1; j < 64; j++)
				assert_memory_equal(p + j * 8, p, 8);
		}
		assert_int_equal(blkdev_close(d), 0);
	}
	check_file(f->base, base, size);
	free(base);
	free(buf);
}

static void test_torn_map_and_orphan_data(void **state)
{
	struct fx *f = *state;
	struct blkdev *d;
	const uint64_t size = 4 * MiB, bs = 4096; /* 1024 entries: two map pages */
	uint8_t *base = make_raw(f->base, size, 17);
	uint8_t *model = malloc(size);
	memcpy(model, base, size);
	create_overlay(f->ov, f->base, (uint32_t)bs, size);
	uint64_t map = header_u64(f->ov, 40);

	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
	model_write(d, model, 0, 512, 71);
	uint8_t *before700 = malloc(bs);
	memcpy(before700, model + 700 * bs, bs);
	model_write(d, model, 700 * bs + 1024, 512, 72);
	assert_int_equal(blkdev_close(d), 0);
	/* The second map page's write is lost (power cut between the two): block 700 reverts. */
	put_u64(f->ov, map + 700 * 8, 0);
	memcpy(model + 700 * bs, before700, bs);
	/* Data appended with no entry (killed between data and map): ignored. */
	uint8_t junk[4096];
	memset(junk, 0xee, sizeof(junk));
	uint64_t end = fsize(f->ov);
	file_pwrite(f->ov, junk, sizeof(junk), end);
	file_pwrite(f->ov, junk, 100, end + sizeof(junk)); /* and a torn partial block */
	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
	check_disk(d, model, size);
	model_write(d, model, 700 * bs, 512, 73);
	model_write(d, model, 701 * bs, 2 * bs, 74);
	check_disk(d, model, size);
	assert_int_equal(blkdev_close(d), 0);
	assert_int_equal(blkdev_open(&d, f->base, false, f->ov), 0);
	check_disk(d, model, size);
	assert_int_equal(blkdev_close(d), 0);
	/* The junk stayed unused: new blocks start past it. */
	assert_true(header_u64(f->ov, map + 700 * 8) >= end + 2 * bs);
	free(before700);
	free(base);
	free(model);
}

/* Low-level ovl_* API: header roundtrip and direct use without a blkdev. */
static void test_ovl_api(void **state)
{
	struct fx *f = *state;
	struct ovl *o;
	uint8_t sha[32] = {1, 2, 3};
	assert_int_equal(ovl_create(f->ov, 8192, 4096, "base.raw", sha), 0);
	assert_int_equal(ovl_create(f->ov, 8192, 4096, "base.raw", sha), -EEXIST);
	assert_int_equal(ovl_create(f->ov2, 1000, 4096, "base.raw", sha), -EINVAL);
	assert_int_equal(ovl_create(f->ov2, 8192, 4095, "base.raw", sha), -EINVAL);
	int fd = open(f->ov, O_RDWR);
	assert_int_equal(ovl_probe(fd), 1);
	assert_int_equal(ovl_open(&o, fd, f->ov, true), 0);
	const struct ovl_header *h = ovl_get_header(o);
	assert_int_equal(h->major, OVL_FORMAT_MAJOR);
	assert_int_equal(h->block_size, 4096);
	assert_int_equal(h->virtual_size, 8192);
	assert_int_equal(h->nblocks, 2);
	assert_string_equal(h->base_path, "base.raw");
	assert_memory_equal(h->base_sha256, sha, 32);
	assert_int_equal(ovl_blocks_used(o), 0);
	/* No base set: reading an absent block is an error, not a crash. */
	uint8_t buf[512];
	struct iovec v = {buf, sizeof(buf)};
	assert_int_equal(ovl_preadv(o, &v, 1, 0), -EIO);
	assert_int_equal(ovl_write_zeroes(o, 0, 4096), 0);
	assert_int_equal(ovl_map_entry(o, 0), OVL_ENTRY_ZERO);
	assert_int_equal(ovl_preadv(o, &v, 1, 512), 0);
	assert_int_equal(buf[0], 0);
	assert_int_equal(ovl_preadv(o, &v, 1, 8192), -EINVAL);
	assert_int_equal(ovl_seal(o), 0);
	assert_int_equal(ovl_pwritev(o, &v, 1, 0), -EROFS);
	assert_int_equal(ovl_close(o), 0);
	char out[64];
	assert_int_equal(ovl_resolve_base("/a/b/c.ovl", "d.raw", out, sizeof(out)), 0);
	assert_string_equal(out, "/a/b/d.raw");
	assert_int_equal(ovl_resolve_base("c.ovl", "d.raw", out, sizeof(out)), 0);
	assert_string_equal(out, "d.raw");
	assert_int_equal(ovl_resolve_base("x/c.ovl", "/abs", out, sizeof(out)), 0);
	assert_string_equal(out, "/abs");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_raw_sizes_and_errors, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_raw_io, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_overlay_readthrough_and_writes, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_overlay_zeroes_and_discard, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_overlay_random_model, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_flush_writes_map_after_data, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_chain_and_freeze, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_chain_depth_limit, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_base_mismatch, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_content_hash, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_corrupt_header, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_corrupt_map, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_crash_unflushed, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_crash_kill_loop, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_torn_map_and_orphan_data, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_ovl_api, setup, teardown),
	};
	log_set_level(getenv("TEST_VERBOSE") ? LOG_DEBUG : (enum log_level) - 1);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
