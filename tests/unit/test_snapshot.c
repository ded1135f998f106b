/* SPDX-License-Identifier: MIT */
/*
 * Snapshot images against damage: every truncation of the committed fixtures at each section
 * boundary (and one byte either side) and at a stride through memory, and single-bit flips
 * in every non-memory section (every byte of small ones, a stride through large ones) and a
 * sample of memory, each through open + verify (snap_verify_fd). Each must be refused with a
 * message that names where (section, offset or page) — never accepted, never a crash.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "formats/image.h"
#include "snapshot/snapshot.h"

struct fixture {
	uint8_t *data;
	size_t size;
	int fd; /* memfd holding the intact image */
};

static char fixture_dir[4096];

static void load(struct fixture *f, const char *name)
{
	char path[8192];
	snprintf(path, sizeof(path), "%s/%s", fixture_dir, name);
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		fail_msg("cannot open fixture %s", path);
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	f->size = (size_t)st.st_size;
	f->data = malloc(f->size);
	assert_non_null(f->data);
	assert_int_equal(pread(fd, f->data, f->size, 0), (ssize_t)f->size);
	close(fd);
	f->fd = memfd_create("fixture", 0);
	assert_true(f->fd >= 0);
	/* Only the non-zero pages: the rest stay holes, as in the real file. */
	for (size_t off = 0; off < f->size; off += 4096) {
		size_t n = f->size - off < 4096 ? f->size - off : 4096;
		bool zero = true;
		for (size_t i = 0; i < n && zero; i++)
			zero = !f->data[off + i];
		if (!zero)
			assert_int_equal(pwrite(f->fd, f->data + off, n, (off_t)off), (ssize_t)n);
	}
	assert_int_equal(ftruncate(f->fd, (off_t)f->size), 0);
}

static void unload(struct fixture *f)
{
	free(f->data);
	close(f->fd);
}

static bool names_where(const char *msg)
{
	static const char *const words[] = {"offset", "section",   "header", "end record",
					    "page",   "truncated", "index",  "memory",
					    "vcpu",   "device",	   "byte",   NULL};
	for (int i = 0; words[i]; i++)
		if (strstr(msg, words[i]))
			return true;
	return false;
}

static void expect_refused(int fd, const char *what, size_t at)
{
	struct snap_verify_result res;
	char err[1024];
	int r = snap_verify_fd(fd, &res, err, sizeof(err));
	if (r == 0)
		fail_msg("%s at %zu: accepted", what, at);
	if (!err[0] || !names_where(err))
		fail_msg("%s at %zu: message does not say where: '%s'", what, at, err);
}

static void test_fixture_sound(void **state)
{
	const char *names[] = {"v1.0-plain-16m-2cpu.img", "v1.0-lz4-16m-2cpu.img"};
	for (int i = 0; i < 2; i++) {
		struct fixture f;
		struct snap_verify_result res;
		char err[1024];
		load(&f, names[i]);
		assert_int_equal(snap_verify_fd(f.fd, &res, err, sizeof(err)), 0);
		assert_true(res.sections > 0);
		unload(&f);
	}
}

/* Offsets worth cutting at: every section frame and payload end, ±1, plus a stride. */
static size_t cut_points(const struct fixture *f, size_t *out, size_t max)
{
	struct img *img;
	size_t n = 0;
	assert_int_equal(img_open(&img, f->fd), 0);
	for (size_t i = 0; i < img_section_count(img); i++) {
		const struct img_section_info *s = img_section_at(img, i);
		size_t b[] = {s->offset, s->offset + IMG_FRAME_SIZE,
			      s->offset + IMG_FRAME_SIZE + s->length,
			      s->offset + IMG_FRAME_SIZE + s->length + IMG_CRC_SIZE};
		for (int k = 0; k < 4; k++)
			for (int d = -1; d <= 1; d++)
				if (n < max && b[k] + d < f->size && b[k] + d > 0)
					out[n++] = b[k] + d;
	}
	img_close(img);
	for (size_t at = 1; at < 64 && n < max; at++) /* the header */
		out[n++] = at;
	for (size_t d = 1; d <= 65 && n < max; d++) /* the end record */
		out[n++] = f->size - d;
	for (size_t at = 4096; at < f->size && n < max; at += 64 * 1024 + 17)
		out[n++] = at;
	return n;
}

static void walk_truncations(const char *name)
{
	struct fixture f;
	size_t cuts[2048];
	load(&f, name);
	size_t n = cut_points(&f, cuts, 2048);
	for (size_t i = 0; i < n; i++) {
		int fd = memfd_create("cut", 0);
		assert_true(fd >= 0);
		size_t len = cuts[i];
		for (size_t off = 0; off < len; off += 4096) {
			size_t k = len - off < 4096 ? len - off : 4096;
			bool zero = true;
			for (size_t j = 0; j < k && zero; j++)
				zero = !f.data[off + j];
			if (!zero)
				assert_int_equal(pwrite(fd, f.data + off, k, (off_t)off),
						 (ssize_t)k);
		}
		assert_int_equal(ftruncate(fd, (off_t)len), 0);
		expect_refused(fd, "truncation", len);
		close(fd);
	}
	unload(&f);
}

static void test_truncations_plain(void **state)
{
	walk_truncations("v1.0-plain-16m-2cpu.img");
}

static void test_truncations_lz4(void **state)
{
	walk_truncations("v1.0-lz4-16m-2cpu.img");
}

static void flip_at(struct fixture *f, size_t at, unsigned int bit)
{
	uint8_t b = f->data[at] ^ (uint8_t)(1u << bit);
	assert_int_equal(pwrite(f->fd, &b, 1, (off_t)at), 1);
	expect_refused(f->fd, "bit flip", at);
	assert_int_equal(pwrite(f->fd, &f->data[at], 1, (off_t)at), 1);
}

static void walk_flips(const char *name)
{
	struct fixture f;
	struct img *img;
	load(&f, name);
	assert_int_equal(img_open(&img, f.fd), 0);
	/* The header: every byte up to the first section. */
	size_t first = img_section_at(img, 0)->offset;
	size_t nsec = img_section_count(img);
	struct img_section_info secs[64];
	assert_true(nsec <= 64);
	for (size_t i = 0; i < nsec; i++)
		secs[i] = *img_section_at(img, i);
	struct img_mem_info mi;
	assert_int_equal(img_get_mem_info(img, &mi), 0);
	size_t nruns;
	const struct img_run *runs = img_get_runs(img, &nruns);
	struct img_run sample[16];
	size_t ns = 0;
	uint64_t zero_pages[8];
	size_t nzero = 0;
	for (size_t i = 0; i < nruns && ns < 16; i++)
		if (runs[i].kind == IMG_RUN_DATA || runs[i].kind == IMG_RUN_LZ4)
			sample[ns++] = runs[i];
	for (size_t i = 0; mi.linear && i < nruns && nzero < 8; i++)
		if (runs[i].kind == IMG_RUN_ZERO)
			zero_pages[nzero++] = runs[i].page + runs[i].npages / 2;
	img_close(img);

	for (size_t at = 0; at<first; at += first> 2048 ? 3 : 1)
		flip_at(&f, at, at % 8);
	for (size_t i = 0; i < nsec; i++) {
		const struct img_section_info *s = &secs[i];
		size_t start = s->offset, end = s->offset + IMG_FRAME_SIZE + IMG_CRC_SIZE;
		bool is_data = IMG_SEC_TYPE(s->id) == IMG_SEC_MEM_DATA;
		if (!is_data)
			end += s->length;
		/* Frame and CRC bytes of every section, each payload byte of small ones. */
		size_t stride = end - start > 1024 ? 13 : 1;
		for (size_t at = start; at < end; at += stride)
			flip_at(&f, at, (unsigned int)(at % 8));
		if (is_data) /* the CRC after the memory payload */
			for (size_t k = 0; k < IMG_CRC_SIZE; k++)
				flip_at(&f, s->offset + IMG_FRAME_SIZE + s->length + k,
					(unsigned)k);
	}
	/* The bytes between the index and the end of the file: the end record. */
	for (size_t at = f.size - 64; at < f.size; at++)
		flip_at(&f, at, at % 8);
	/* Memory: a sample of stored runs, a few bytes each. */
	for (size_t i = 0; i < ns; i++)
		for (size_t k = 0; k < 4; k++)
			flip_at(&f, sample[i].offset + (sample[i].stored_len - 1) * k / 3,
				(unsigned int)(i + k) % 8);
	/* And holes inside a linear memory payload must stay zero. */
	for (size_t i = 0; i < nzero; i++)
		flip_at(&f, mi.data_offset + zero_pages[i] * IMG_PAGE_SIZE + 100 * i, 1);
	unload(&f);
}

static void test_flips_plain(void **state)
{
	walk_flips("v1.0-plain-16m-2cpu.img");
}

static void test_flips_lz4(void **state)
{
	walk_flips("v1.0-lz4-16m-2cpu.img");
}

static void test_mem_mode_parse(void **state)
{
	enum snap_mem_mode m;
	assert_int_equal(snap_mem_mode_parse("mmap", &m), 0);
	assert_int_equal(m, SNAP_MEM_MMAP);
	assert_int_equal(snap_mem_mode_parse("eager", &m), 0);
	assert_int_equal(m, SNAP_MEM_EAGER);
	assert_int_equal(snap_mem_mode_parse("auto", &m), 0);
	assert_int_equal(m, SNAP_MEM_AUTO);
	assert_int_equal(snap_mem_mode_parse("lazy", &m), -EINVAL);
	assert_int_equal(snap_mem_mode_parse(NULL, &m), -EINVAL);
}

int main(void)
{
	char src[] = __FILE__;
	snprintf(fixture_dir, sizeof(fixture_dir), "%s/../../formats/fixtures", dirname(src));
	img_set_quiet(true);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_mem_mode_parse),    cmocka_unit_test(test_fixture_sound),
	    cmocka_unit_test(test_truncations_plain), cmocka_unit_test(test_truncations_lz4),
	    cmocka_unit_test(test_flips_plain),	      cmocka_unit_test(test_flips_lz4),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
