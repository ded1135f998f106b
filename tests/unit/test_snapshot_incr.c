/* SPDX-License-Identifier: MIT */
/*
 * Live and incremental snapshots without a VM: the pre-copy convergence decision, parent
 * references, in-place (live) memory writing, chains (open, eager read, mmap overlay,
 * refusals) and merge, on images made with the writer.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "formats/image.h"
#include "snapshot/snapshot.h"
#include "snapshot/snapshot_internal.h"
#include "util/log.h"

#define PG    IMG_PAGE_SIZE
#define PAGES 300u /* more than one 256-page run */

static char dir[64];

static void make_header(struct img_header *h, bool incremental)
{
	memset(h, 0, sizeof(*h));
	strcpy(h->creator, "vmsnap test");
	img_host_cpu_probe(&h->cpu);
	h->flags = incremental ? IMG_HDR_INCREMENTAL : 0;
	h->vm.ram_size = PAGES * PG;
	h->vm.vcpus = 1;
	h->vm.nregions = 1;
	h->vm.regions[0] = (struct img_region){.gpa = 0, .size = PAGES * PG, .offset = 0};
	strcpy(h->vm.cpu_template, "host");
}

static void set_page(uint8_t *ram, unsigned int p, uint8_t v)
{
	memset(ram + (size_t)p * PG, v, PG);
}

static void path_of(char *out, const char *name)
{
	snprintf(out, 256, "%s/%s", dir, name);
}

/* A full image of @ram at @name (plain writer); its SHA-256 into @sha. */
static void write_full(const char *name, const uint8_t *ram, uint8_t sha[32])
{
	char p[256];
	struct img_header h;
	struct img_writer *w;
	struct img_write_stats st;
	path_of(p, name);
	int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	make_header(&h, false);
	assert_int_equal(img_writer_open(&w, fd, &h), 0);
	assert_int_equal(
	    img_write_section(w, IMG_SEC_ID(IMG_SEC_VM, 0), 1, IMG_SEC_REQUIRED, "base", 4), 0);
	assert_int_equal(img_write_memory(w, ram, PAGES * PG, NULL, NULL), 0);
	assert_int_equal(img_writer_finish(w, &st), 0);
	memcpy(sha, st.sha256, 32);
	img_writer_free(w);
	close(fd);
}

/*
 * A child written in place, as a live save does: first the "pre-copy" content @stale of
 * every page in @present, then the final content @ram of the pages in @redo (some turned
 * zero). Returns the writer's stats.
 */
static struct img_write_stats write_child_live(const char *name, const char *parent,
					       const uint8_t psha[32], const uint8_t *stale,
					       const uint8_t *ram, const uint64_t *present,
					       const uint64_t *redo)
{
	char p[256];
	struct img_header h;
	struct img_writer *w;
	struct img_write_stats st;
	path_of(p, name);
	int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	make_header(&h, true);
	assert_int_equal(img_writer_open(&w, fd, &h), 0);
	img_writer_defer_hash(w);
	assert_int_equal(img_write_parent(w, psha, parent), 0);
	assert_int_equal(img_write_memory_begin(w), 0);
	/* No section may land inside the memory payload. */
	assert_int_equal(img_write_section(w, IMG_SEC_ID(IMG_SEC_VM, 0), 1, 0, "x", 1), -EINVAL);
	for (unsigned int i = 0; i < PAGES; i++)
		if (present[i / 64] >> (i % 64) & 1)
			assert_int_equal(img_write_pages(w, stale + (size_t)i * PG, i, 1), 0);
	for (unsigned int i = 0; i < PAGES; i++)
		if (redo[i / 64] >> (i % 64) & 1)
			assert_int_equal(img_write_pages(w, ram + (size_t)i * PG, i, 1), 0);
	assert_int_equal(img_write_memory_end(w, present, NULL), 0);
	assert_int_equal(
	    img_write_section(w, IMG_SEC_ID(IMG_SEC_VM, 0), 1, IMG_SEC_REQUIRED, "kid!", 4), 0);
	assert_int_equal(img_writer_finish(w, &st), 0);
	img_writer_free(w);
	close(fd);
	return st;
}

static void expect_image_sound(const char *name)
{
	char p[256];
	struct img *img;
	struct img_verify_stats vs;
	path_of(p, name);
	int fd = open(p, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(img_open(&img, fd), 0);
	assert_int_equal(img_verify(img, &vs), 0);
	img_close(img);
	close(fd);
}

static void test_live_decide(void **state)
{
	(void)state;
	struct snap_live_policy p = {.target_us = 10000, .max_rounds = 5, .max_time_us = 1000000};
	unsigned int stuck = 0;
	uint64_t exp;
	/* 1 GB/s: 100 pages take 0.4 ms + 1 ms fixed: fits. */
	assert_int_equal(snap_live_decide(&p, 1, 100, UINT64_MAX, &stuck, 1e9, 0, &exp),
			 SNAP_LIVE_FINAL);
	assert_true(exp < 2000);
	/* 100k pages at 1 GB/s: 410 ms, iterate. */
	assert_int_equal(snap_live_decide(&p, 1, 100000, UINT64_MAX, &stuck, 1e9, 0, &exp),
			 SNAP_LIVE_AGAIN);
	/* Not shrinking three times in a row: stuck. */
	stuck = 0;
	assert_int_equal(snap_live_decide(&p, 2, 100000, 100000, &stuck, 1e9, 0, &exp),
			 SNAP_LIVE_AGAIN);
	assert_int_equal(snap_live_decide(&p, 3, 99000, 100000, &stuck, 1e9, 0, &exp),
			 SNAP_LIVE_AGAIN);
	assert_int_equal(snap_live_decide(&p, 4, 99000, 99000, &stuck, 1e9, 0, &exp),
			 SNAP_LIVE_STUCK);
	/* Shrinking resets it. */
	stuck = 2;
	assert_int_equal(snap_live_decide(&p, 2, 50000, 100000, &stuck, 1e9, 0, &exp),
			 SNAP_LIVE_AGAIN);
	assert_int_equal(stuck, 0);
	/* Bounds. */
	assert_int_equal(snap_live_decide(&p, 6, 50000, 100000, &stuck, 1e9, 0, &exp),
			 SNAP_LIVE_MAX_ROUNDS);
	assert_int_equal(snap_live_decide(&p, 2, 50000, 100000, &stuck, 1e9, 1000000, &exp),
			 SNAP_LIVE_MAX_TIME);
	/* Unknown rate: a conservative default, not a division by zero. */
	assert_int_equal(snap_live_decide(&p, 1, 10, UINT64_MAX, &stuck, 0, 0, &exp),
			 SNAP_LIVE_FINAL);
}

static void test_parent_ref(void **state)
{
	(void)state;
	char out[4096];
	assert_int_equal(snap_parent_ref("/a/b/child.img", "/a/b/base.img", out, sizeof(out)), 0);
	assert_string_equal(out, "base.img");
	assert_int_equal(snap_parent_ref("/a/b/child.img", "/a/c/base.img", out, sizeof(out)), 0);
	assert_string_equal(out, "/a/c/base.img");
	assert_int_equal(snap_parent_resolve("/x/y/child.img", "base.img", out, sizeof(out)), 0);
	assert_string_equal(out, "/x/y/base.img");
	assert_int_equal(snap_parent_resolve("child.img", "base.img", out, sizeof(out)), 0);
	assert_string_equal(out, "./base.img");
	assert_int_equal(snap_parent_resolve("/x/child.img", "/abs/b.img", out, sizeof(out)), 0);
	assert_string_equal(out, "/abs/b.img");
	assert_int_equal(snap_parent_ref("/a/c/x", "/b/long", out, 3), -ENAMETOOLONG);
}

/* base -> child1 (live-written) -> child2: read, map, merge; then broken chains. */
static void test_chain(void **state)
{
	(void)state;
	uint8_t *base = calloc(PAGES, PG), *r1 = calloc(PAGES, PG), *r2 = calloc(PAGES, PG);
	uint8_t *stale = calloc(PAGES, PG), *got = calloc(PAGES, PG);
	uint64_t present[(PAGES + 63) / 64] = {0}, redo[(PAGES + 63) / 64] = {0};
	uint8_t sb[32], s1[32];
	char p[256], q[256];
	assert_non_null(got);

	for (unsigned int i = 0; i < PAGES; i += 2)
		set_page(base, i, (uint8_t)(i | 1));
	write_full("base.img", base, sb);

	/* child1: pages 10..19 and 260..279 changed; 14 became zero; 270 rewritten later. */
	memcpy(r1, base, (size_t)PAGES * PG);
	for (unsigned int i = 10; i < 20; i++) {
		present[i / 64] |= 1ull << (i % 64);
		set_page(r1, i, 0xA1);
	}
	for (unsigned int i = 260; i < 280; i++) {
		present[i / 64] |= 1ull << (i % 64);
		set_page(r1, i, 0xB2);
	}
	set_page(r1, 14, 0);
	memset(stale, 0x5A, (size_t)PAGES * PG);
	redo[14 / 64] |= 1ull << 14; /* non-zero when pre-copied, zero at the end */
	redo[270 / 64] |= 1ull << (270 % 64);
	memcpy(stale + 270 * PG, "stale", 5); /* pre-copied stale, rewritten */
	memcpy(stale + 10 * PG, r1 + 10 * PG, 10 * PG);
	memcpy(stale + 15 * PG, r1 + 15 * PG, 5 * PG);
	memcpy(stale + 260 * PG, r1 + 260 * PG, 20 * PG);
	memcpy(stale + 270 * PG, "stale", 5);
	struct img_write_stats st =
	    write_child_live("child1.img", "base.img", sb, stale, r1, present, redo);
	assert_int_equal(st.pages_parent, PAGES - 30);
	assert_int_equal(st.pages_zero, 1);
	assert_int_equal(st.pages_data, 29);
	memcpy(s1, st.sha256, 32);
	expect_image_sound("child1.img");

	/* child2: page 3 (zero in base) gets data, page 16 becomes zero. */
	memcpy(r2, r1, (size_t)PAGES * PG);
	memset(present, 0, sizeof(present));
	memset(redo, 0, sizeof(redo));
	present[0] |= 1ull << 3 | 1ull << 16;
	set_page(r2, 3, 0xC3);
	set_page(r2, 16, 0);
	write_child_live("child2.img", "child1.img", s1, r2, r2, present, redo);
	expect_image_sound("child2.img");

	struct snap_chain c;
	path_of(p, "child2.img");
	assert_int_equal(snap_chain_open(&c, p), 0);
	assert_int_equal(c.n, 3);
	assert_true(snap_chain_linear(&c));
	assert_int_equal(snap_chain_read_memory(&c, got, PAGES * PG, true), 0);
	assert_memory_equal(got, r2, (size_t)PAGES * PG);

	/* mmap: the base mapped copy-on-write, the children over it. */
	struct img_mem_info bmi;
	assert_int_equal(img_get_mem_info(c.link[2].img, &bmi), 0);
	uint8_t *m = mmap(NULL, PAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, c.link[2].fd,
			  (off_t)bmi.data_offset);
	assert_true(m != MAP_FAILED);
	size_t mapped, read;
	assert_int_equal(snap_chain_map_overlays(&c, m, PAGES * PG, &mapped, &read), 0);
	assert_int_equal(mapped, 2);
	assert_int_equal(read, 0);
	assert_memory_equal(m, r2, (size_t)PAGES * PG);
	m[16 * PG] = 1; /* private: writable, the file stays as it was */
	munmap(m, PAGES * PG);
	snap_chain_close(&c);

	/* merge: one full image with the same memory. */
	struct snap_merge_result mr;
	char err[256];
	path_of(q, "merged.img");
	assert_int_equal(snap_merge(p, q, false, &mr, err, sizeof(err)), 0);
	assert_int_equal(mr.chain, 3);
	expect_image_sound("merged.img");
	assert_int_equal(snap_chain_open(&c, q), 0);
	assert_int_equal(c.n, 1);
	memset(got, 0, (size_t)PAGES * PG);
	assert_int_equal(snap_chain_read_memory(&c, got, PAGES * PG, true), 0);
	assert_memory_equal(got, r2, (size_t)PAGES * PG);
	void *vb;
	size_t vl;
	uint16_t ver;
	assert_int_equal(img_read_section(c.link[0].img, IMG_SEC_ID(IMG_SEC_VM, 0), &vb, &vl, &ver),
			 0);
	assert_memory_equal(vb, "kid!", 4); /* the state is the newest image's */
	free(vb);
	snap_chain_close(&c);

	/* A parent replaced by another image, and a missing parent. */
	char b1[256];
	path_of(b1, "child1.img");
	path_of(q, "child1.saved");
	assert_int_equal(rename(b1, q), 0);
	write_full("child1.img", r1, sb);
	assert_int_equal(snap_chain_open(&c, p), -EBADMSG);
	unlink(b1);
	assert_int_equal(snap_chain_open(&c, p), -ENOENT);
	assert_int_equal(snap_merge(p, b1, false, &mr, err, sizeof(err)), -ENOENT);
	assert_int_equal(access(b1, F_OK), -1);
	assert_int_equal(rename(q, b1), 0);
	assert_int_equal(snap_chain_open(&c, p), 0);
	snap_chain_close(&c);

	free(base);
	free(r1);
	free(r2);
	free(stale);
	free(got);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_live_decide),
	    cmocka_unit_test(test_parent_ref),
	    cmocka_unit_test(test_chain),
	};
	snprintf(dir, sizeof(dir), "/tmp/test_snapshot_incr.XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	log_set_level(LOG_ERR);
	int r = cmocka_run_group_tests(tests, NULL, NULL);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd)) {
	}
	return r;
}
