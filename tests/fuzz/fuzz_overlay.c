/* SPDX-License-Identifier: MIT */
/*
 * Overlay reader fuzz target: the input is the bytes of an overlay file, opened with
 * blkdev_open() over a fixed 64 KiB raw base; when it opens, the whole disk is read, written,
 * zeroed, discarded, flushed and read again. Every input is also run a second time with its
 * header CRC made valid, so mutations get past the checksum into the field checks. Must never
 * crash, hang or allocate beyond the input's size. Both files are memfds (opened again through
 * /proc/self/fd), so flushes cost nothing.
 *
 * Seeds in tests/fuzz/corpus/fuzz_overlay/: run this binary with FUZZ_OVERLAY_GEN_SEEDS=DIR to
 * regenerate them (they embed the base's content hash, so they depend on base_byte()).
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "formats/crc32c.h"
#include "formats/overlay.h"
#include "util/log.h"
#include "vmm/blkdev.h"

#define BASE_SIZE (64u << 10)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int base_fd = -1, ovl_fd = -1;
static char base_path[64], ovl_path[64];

static uint8_t base_byte(uint32_t i)
{
	return (uint8_t)(i * 7 + i / 511);
}

static void write_base(int fd)
{
	static uint8_t buf[BASE_SIZE];
	for (uint32_t i = 0; i < BASE_SIZE; i++)
		buf[i] = base_byte(i);
	if (ftruncate(fd, 0) || pwrite(fd, buf, BASE_SIZE, 0) != BASE_SIZE)
		abort();
}

/* ---- Seeds ------------------------------------------------------------------------------- */

static void copy_out(const char *from, const char *dir, const char *name)
{
	char path[4096];
	static uint8_t buf[1 << 20];
	int in = open(from, O_RDONLY);
	ssize_t n = in >= 0 ? read(in, buf, sizeof(buf)) : -1;
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int out = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (n < 0 || out < 0 || write(out, buf, (size_t)n) != n)
		abort();
	close(in);
	close(out);
}

static void gen_seed(const char *dir, const char *base, const char *name, uint32_t bs, int kind)
{
	char tmp[4096];
	uint8_t sha[32], sec[1024];
	struct blkdev *d;
	int fd = open(base, O_RDONLY);
	snprintf(tmp, sizeof(tmp), "%s/%s.tmp", dir, name);
	unlink(tmp);
	if (fd < 0 || ovl_content_hash(fd, sha) || ovl_create(tmp, BASE_SIZE, bs, base, sha) ||
	    blkdev_open(&d, base, false, tmp))
		abort();
	close(fd);
	memset(sec, 0x5a, sizeof(sec));
	if (kind >= 1) {
		blkdev_pwrite(d, sec, 512, 4096 + 512);	     /* partial block */
		blkdev_pwrite(d, sec, 1024, 3 * 4096 - 512); /* across blocks */
	}
	if (kind >= 2) {
		blkdev_write_zeroes(d, 8 * 4096, 2 * 4096, true); /* ZERO entries */
		blkdev_pwrite(d, sec, 512, 9 * 4096);		  /* written into a ZERO block */
		blkdev_discard(d, 12 * 4096, 4 * 4096);
	}
	if (blkdev_close(d))
		abort();
	copy_out(tmp, dir, name);
	unlink(tmp);
}

__attribute__((constructor)) static void maybe_gen_seeds(void)
{
	const char *dir = getenv("FUZZ_OVERLAY_GEN_SEEDS");
	char base[4096];
	if (!dir)
		return;
	snprintf(base, sizeof(base), "%s/base.tmp", dir);
	int fd = open(base, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		abort();
	write_base(fd);
	close(fd);
	gen_seed(dir, base, "empty-4k.ovl", 4096, 0);
	gen_seed(dir, base, "written-4k.ovl", 4096, 1);
	gen_seed(dir, base, "zeroed-4k.ovl", 4096, 2);
	gen_seed(dir, base, "written-64k.ovl", 65536, 1);
	unlink(base);
	exit(0);
}

/* ---- Target ------------------------------------------------------------------------------ */

static void exercise(const uint8_t *data, size_t size)
{
	static uint8_t buf[BASE_SIZE];
	struct blkdev *d;

	if (ftruncate(ovl_fd, 0) || (size && pwrite(ovl_fd, data, size, 0) != (ssize_t)size))
		abort();
	if (blkdev_open(&d, base_path, false, ovl_path))
		return;
	uint64_t len = blkdev_size(d);
	if (len != BASE_SIZE)
		abort(); /* the base check passed: sizes must agree */
	if (blkdev_pread(d, buf, len, 0))
		goto out;
	/* Writes placed by the input's bytes, so the fuzzer steers them. */
	uint64_t a = size > 20 ? data[size / 2] % 128 : 3, b = size > 20 ? data[size / 3] % 128 : 7;
	blkdev_pwrite(d, buf, 1536, a * 512);
	blkdev_pwrite(d, buf + 4096, 8192, b * 512);
	blkdev_write_zeroes(d, (a + b) % 120 * 512, 4096 + 512, false);
	blkdev_discard(d, b * 512, 3 * 4096);
	blkdev_flush(d);
	blkdev_pread(d, buf, len, 0);
out:
	blkdev_close(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (base_fd < 0) {
		log_set_level((enum log_level) - 1); /* rejected inputs log an error each */
		base_fd = memfd_create("fuzz_overlay_base", MFD_CLOEXEC);
		ovl_fd = memfd_create("fuzz_overlay", MFD_CLOEXEC);
		if (base_fd < 0 || ovl_fd < 0)
			abort();
		write_base(base_fd);
		snprintf(base_path, sizeof(base_path), "/proc/self/fd/%d", base_fd);
		snprintf(ovl_path, sizeof(ovl_path), "/proc/self/fd/%d", ovl_fd);
	}
	exercise(data, size);

	/* Again with a valid header CRC (when the header length fits the input). */
	if (size >= OVL_HEADER_MIN) {
		uint32_t hl = (uint32_t)data[12] | (uint32_t)data[13] << 8 |
			      (uint32_t)data[14] << 16 | (uint32_t)data[15] << 24;
		if (hl >= OVL_HEADER_MIN && hl <= size) {
			uint8_t *copy = malloc(size);
			memcpy(copy, data, size);
			uint32_t crc = crc32c(0, copy, hl - 4);
			for (int i = 0; i < 4; i++)
				copy[hl - 4 + (uint32_t)i] = (uint8_t)(crc >> (8 * i));
			exercise(copy, size);
			free(copy);
		}
	}
	return 0;
}
