/* SPDX-License-Identifier: MIT */
/*
 * Split virtqueue, device side: rings built by hand in guest RAM (no KVM), the way a driver
 * lays them out (virtio 1.2, 2.7).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "formats/codec.h"
#include "util/log.h"
#include "vmm/gmem.h"
#include "vmm/virtq.h"

#define F_NEXT	   1
#define F_WRITE	   2
#define F_INDIRECT 4

#define RAM_SIZE  (8ull << 20)
#define DESC_GPA  0x1000ull
#define AVAIL_GPA 0x6000ull
#define USED_GPA  0x7000ull
#define TABLE_GPA 0x8000ull  /* indirect tables */
#define BUF_GPA	  0x20000ull /* buffers */

struct fx {
	struct gmem m;
	struct virtq q;
	struct virtq_elem e;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	if (!f || gmem_create(&f->m, RAM_SIZE, GMEM_MEMFD))
		return -1;
	f->q.size = 8;
	f->q.desc_gpa = DESC_GPA;
	f->q.avail_gpa = AVAIL_GPA;
	f->q.used_gpa = USED_GPA;
	f->q.ready = true;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	gmem_free(&f->m);
	free(f);
	return 0;
}

static uint8_t *host(struct fx *f, uint64_t gpa)
{
	uint8_t *p = gmem_ptr(&f->m, gpa, 1);
	assert_non_null(p);
	return p;
}

static void put16(struct fx *f, uint64_t gpa, uint16_t v)
{
	memcpy(host(f, gpa), &v, 2); /* x86: little-endian like the ring */
}

static uint16_t get16(struct fx *f, uint64_t gpa)
{
	uint16_t v;
	memcpy(&v, host(f, gpa), 2);
	return v;
}

static uint32_t get32(struct fx *f, uint64_t gpa)
{
	uint32_t v;
	memcpy(&v, host(f, gpa), 4);
	return v;
}

/* Descriptor @i of the table at @table. */
static void desc_at(struct fx *f, uint64_t table, unsigned int i, uint64_t addr, uint32_t len,
		    uint16_t flags, uint16_t next)
{
	uint8_t *p = host(f, table + 16ull * i);
	memcpy(p, &addr, 8);
	memcpy(p + 8, &len, 4);
	memcpy(p + 12, &flags, 2);
	memcpy(p + 14, &next, 2);
}

static void desc(struct fx *f, unsigned int i, uint64_t addr, uint32_t len, uint16_t flags,
		 uint16_t next)
{
	desc_at(f, f->q.desc_gpa, i, addr, len, flags, next);
}

static uint16_t avail_idx(struct fx *f)
{
	return get16(f, f->q.avail_gpa + 2);
}

/* Offer chain @head: ring entry, then idx (what a driver does). */
static void offer(struct fx *f, uint16_t head)
{
	uint16_t idx = avail_idx(f);
	put16(f, f->q.avail_gpa + 4 + 2u * (idx % f->q.size), head);
	put16(f, f->q.avail_gpa + 2, (uint16_t)(idx + 1));
}

static uint16_t used_idx(struct fx *f)
{
	return get16(f, f->q.used_gpa + 2);
}

static void used_elem(struct fx *f, uint16_t idx, uint32_t *id, uint32_t *len)
{
	uint64_t at = f->q.used_gpa + 4 + 8ull * (idx % f->q.size);
	*id = get32(f, at);
	*len = get32(f, at + 4);
}

static void test_simple(void **state)
{
	struct fx *f = *state;
	uint32_t id, len;

	assert_int_equal(virtq_check(&f->q, &f->m), 0);
	assert_false(virtq_has_work(&f->q, &f->m));
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), 0);

	desc(f, 3, BUF_GPA, 100, 0, 0);
	offer(f, 3);
	assert_true(virtq_has_work(&f->q, &f->m));
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), 1);
	assert_int_equal(f->e.head, 3);
	assert_int_equal(f->e.n_out, 1);
	assert_int_equal(f->e.n_in, 0);
	assert_int_equal(f->e.out_len, 100);
	assert_int_equal(f->e.in_len, 0);
	assert_ptr_equal(f->e.out[0].iov_base, host(f, BUF_GPA));
	assert_int_equal(f->e.out[0].iov_len, 100);
	assert_int_equal(f->q.last_avail, 1);
	assert_false(virtq_has_work(&f->q, &f->m));
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), 0);

	virtq_push(&f->q, &f->m, &f->e, 0);
	assert_int_equal(used_idx(f), 1);
	assert_int_equal(f->q.used_idx, 1);
	used_elem(f, 0, &id, &len);
	assert_int_equal(id, 3);
	assert_int_equal(len, 0);

	/* Not ready: nothing is taken and nothing is written. */
	offer(f, 3);
	f->q.ready = false;
	assert_false(virtq_has_work(&f->q, &f->m));
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), 0);
	virtq_push(&f->q, &f->m, &f->e, 0);
	assert_int_equal(used_idx(f), 1);
}

static void test_out_then_in(void **state)
{
	struct fx *f = *state;
	uint8_t buf[600];
	uint32_t id, len;

	desc(f, 0, BUF_GPA, 16, F_NEXT, 5);
	desc(f, 5, BUF_GPA + 0x1000, 512, F_NEXT, 2);
	desc(f, 2, BUF_GPA + 0x3000, 0, F_NEXT | F_WRITE, 7); /* zero length: skipped */
	desc(f, 7, BUF_GPA + 0x2000, 1, F_WRITE, 0);
	for (unsigned int i = 0; i < 16; i++)
		host(f, BUF_GPA)[i] = (uint8_t)i;
	for (unsigned int i = 0; i < 512; i++)
		host(f, BUF_GPA + 0x1000)[i] = (uint8_t)(100 + i);
	offer(f, 0);

	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), 1);
	assert_int_equal(f->e.head, 0);
	assert_int_equal(f->e.n_out, 2);
	assert_int_equal(f->e.n_in, 1);
	assert_int_equal(f->e.out_len, 528);
	assert_int_equal(f->e.in_len, 1);
	assert_int_equal(f->e.in_gpa[0], BUF_GPA + 0x2000);
	assert_ptr_equal(f->e.in[0].iov_base, host(f, BUF_GPA + 0x2000));

	/* Copies cross segment boundaries and stop at the end. */
	memset(buf, 0, sizeof(buf));
	assert_int_equal(virtq_copy_from_out(&f->e, 10, buf, sizeof(buf)), 518);
	assert_int_equal(buf[0], 10);
	assert_int_equal(buf[5], 15);
	assert_int_equal(buf[6], 100);
	assert_int_equal(buf[517], (uint8_t)(100 + 511));
	assert_int_equal(virtq_copy_from_out(&f->e, 528, buf, 1), 0);
	assert_int_equal(virtq_copy_to_in(&f->e, 0, "\x42\x43", 2), 1);
	assert_int_equal(host(f, BUF_GPA + 0x2000)[0], 0x42);
	assert_int_equal(virtq_copy_to_in(&f->e, 1, "\x44", 1), 0);

	/* More than was written into: clamped to the in[] total. */
	virtq_push(&f->q, &f->m, &f->e, 1000);
	used_elem(f, 0, &id, &len);
	assert_int_equal(id, 0);
	assert_int_equal(len, 1);
}

static void test_indirect(void **state)
{
	struct fx *f = *state;

	/* Table: [0] out 8 -> [2] in 32 -> [1] in 4 (chained by next inside the table). */
	desc_at(f, TABLE_GPA, 0, BUF_GPA, 8, F_NEXT, 2);
	desc_at(f, TABLE_GPA, 2, BUF_GPA + 0x100, 32, F_NEXT | F_WRITE, 1);
	desc_at(f, TABLE_GPA, 1, BUF_GPA + 0x200, 4, F_WRITE, 0);
	/* The WRITE flag on the descriptor of the table itself is ignored. */
	desc(f, 4, TABLE_GPA, 3 * 16, F_INDIRECT | F_WRITE, 0);
	offer(f, 4);
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), 1);
	assert_int_equal(f->e.head, 4);
	assert_int_equal(f->e.n_out, 1);
	assert_int_equal(f->e.n_in, 2);
	assert_int_equal(f->e.out_len, 8);
	assert_int_equal(f->e.in_len, 36);
	assert_int_equal(f->e.in_gpa[0], BUF_GPA + 0x100);
	assert_int_equal(f->e.in_gpa[1], BUF_GPA + 0x200);

	/* Direct descriptors, then a table ending the chain. */
	desc(f, 0, BUF_GPA + 0x300, 2, F_NEXT, 1);
	desc(f, 1, TABLE_GPA + 16, 16, F_INDIRECT, 0); /* the table is entry [1] above */
	offer(f, 0);
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), 1);
	assert_int_equal(f->e.n_out, 1);
	assert_int_equal(f->e.n_in, 1);
	assert_int_equal(f->e.in_len, 4);

	/* The largest table: VIRTQ_MAX_IOV one-byte segments. */
	for (unsigned int i = 0; i < VIRTQ_MAX_IOV; i++)
		desc_at(f, TABLE_GPA, i, BUF_GPA + i, 1, i + 1 < VIRTQ_MAX_IOV ? F_NEXT : 0,
			(uint16_t)(i + 1));
	desc(f, 6, TABLE_GPA, 16 * VIRTQ_MAX_IOV, F_INDIRECT, 0);
	offer(f, 6);
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), 1);
	assert_int_equal(f->e.n_out, VIRTQ_MAX_IOV);
	assert_int_equal(f->e.out_len, VIRTQ_MAX_IOV);
	assert_ptr_equal(f->e.out[VIRTQ_MAX_IOV - 1].iov_base,
			 host(f, BUF_GPA + VIRTQ_MAX_IOV - 1));
}

static void test_wraparound(void **state)
{
	struct fx *f = *state;
	uint32_t id, len;

	/* The 16-bit indices run over 0xffff while the ring slots go round. */
	f->q.last_avail = f->q.used_idx = 0xfffd;
	put16(f, f->q.avail_gpa + 2, 0xfffd);
	put16(f, f->q.used_gpa + 2, 0xfffd);
	for (uint16_t h = 0; h < 6; h++) {
		desc(f, h, BUF_GPA + h * 0x100, 0x10, F_WRITE, 0);
		offer(f, h);
	}
	assert_int_equal(avail_idx(f), 3);
	for (uint16_t h = 0; h < 6; h++) {
		assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), 1);
		assert_int_equal(f->e.head, h);
		virtq_push(&f->q, &f->m, &f->e, h);
		assert_int_equal(used_idx(f), (uint16_t)(0xfffd + h + 1));
		used_elem(f, (uint16_t)(0xfffd + h), &id, &len);
		assert_int_equal(id, h);
		assert_int_equal(len, h);
	}
	assert_int_equal(f->q.last_avail, 3);
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), 0);
}

static void test_full_and_broken(void **state)
{
	struct fx *f = *state;

	/* A full ring (size requests) is fine. */
	for (uint16_t h = 0; h < 8; h++) {
		desc(f, h, BUF_GPA, 1, 0, 0);
		offer(f, h);
	}
	for (uint16_t h = 0; h < 8; h++) {
		assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), 1);
		assert_int_equal(f->e.head, h);
	}
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), 0);

	/* size + 1 ahead: the ring is broken until reset. */
	put16(f, f->q.avail_gpa + 2, (uint16_t)(f->q.last_avail + 9));
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), -EIO);
	assert_true(f->q.broken);
	assert_int_equal(f->q.last_avail, 8);
	assert_false(virtq_has_work(&f->q, &f->m));
	put16(f, f->q.avail_gpa + 2, 9);
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), -EIO);
	virtq_reset(&f->q);
	assert_false(f->q.broken);
	assert_false(f->q.ready);

	/* A ring that was never checked and is not in RAM breaks instead of being read. */
	f->q.size = 8;
	f->q.ready = true;
	f->q.desc_gpa = DESC_GPA;
	f->q.used_gpa = USED_GPA;
	f->q.avail_gpa = RAM_SIZE - 4;
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), -EIO);
	assert_true(f->q.broken);
	f->q.broken = false;
	f->q.avail_gpa = AVAIL_GPA;
	f->q.desc_gpa = RAM_SIZE - 64;
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), -EIO);
}

/* Offer the chain at @head and expect it refused: given back empty, the queue goes on. */
static void expect_bad(struct fx *f, uint16_t head)
{
	uint16_t used = f->q.used_idx, last = f->q.last_avail;
	uint32_t id, len;

	offer(f, head);
	/* Poison the used entry so "len 0" is really written. */
	uint64_t at = f->q.used_gpa + 4 + 8ull * (used % f->q.size);
	memset(host(f, at), 0xee, 8);
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), -EINVAL);
	assert_false(f->q.broken);
	assert_int_equal(f->q.last_avail, (uint16_t)(last + 1));
	assert_int_equal(f->q.used_idx, (uint16_t)(used + 1));
	assert_int_equal(used_idx(f), (uint16_t)(used + 1));
	used_elem(f, used, &id, &len);
	assert_int_equal(id, head);
	assert_int_equal(len, 0);
	assert_int_equal(f->e.n_out + f->e.n_in, 0);

	/* The next good request is served. */
	desc(f, 7, BUF_GPA, 4, 0, 0);
	offer(f, 7);
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), 1);
	assert_int_equal(f->e.head, 7);
	virtq_push(&f->q, &f->m, &f->e, 0);
}

static void test_bad_chains(void **state)
{
	struct fx *f = *state;

	/* Loop. */
	desc(f, 0, BUF_GPA, 4, F_NEXT, 1);
	desc(f, 1, BUF_GPA, 4, F_NEXT, 0);
	expect_bad(f, 0);
	/* Self loop of zero-length descriptors. */
	desc(f, 2, BUF_GPA, 0, F_NEXT, 2);
	expect_bad(f, 2);
	/* Head and next index out of range. */
	expect_bad(f, 8);
	expect_bad(f, 0xffff);
	desc(f, 0, BUF_GPA, 4, F_NEXT, 8);
	expect_bad(f, 0);
	/* Buffers outside RAM, or running past its end, or wrapping the address space. */
	desc(f, 0, RAM_SIZE, 1, 0, 0);
	expect_bad(f, 0);
	desc(f, 0, RAM_SIZE - 8, 16, 0, 0);
	expect_bad(f, 0);
	desc(f, 0, UINT64_MAX - 3, 16, F_WRITE, 0);
	expect_bad(f, 0);
	desc(f, 0, 0xC0000000ull, 1, 0, 0); /* the MMIO hole */
	expect_bad(f, 0);
	/* Readable after writable. */
	desc(f, 0, BUF_GPA, 4, F_WRITE | F_NEXT, 1);
	desc(f, 1, BUF_GPA, 4, 0, 0);
	expect_bad(f, 0);
	/* Even when the writable one is empty. */
	desc(f, 0, BUF_GPA, 0, F_WRITE | F_NEXT, 1);
	expect_bad(f, 0);
	/* Indirect with NEXT in the same descriptor. */
	desc_at(f, TABLE_GPA, 0, BUF_GPA, 4, 0, 0);
	desc(f, 0, TABLE_GPA, 16, F_INDIRECT | F_NEXT, 1);
	desc(f, 1, BUF_GPA, 4, 0, 0);
	expect_bad(f, 0);
	/* Indirect table length: zero, not a multiple of 16, more than VIRTQ_MAX_IOV entries. */
	desc(f, 0, TABLE_GPA, 0, F_INDIRECT, 0);
	expect_bad(f, 0);
	desc(f, 0, TABLE_GPA, 24, F_INDIRECT, 0);
	expect_bad(f, 0);
	desc(f, 0, TABLE_GPA, 16 * (VIRTQ_MAX_IOV + 1), F_INDIRECT, 0);
	expect_bad(f, 0);
	/* Table outside RAM. */
	desc(f, 0, RAM_SIZE - 16, 32, F_INDIRECT, 0);
	expect_bad(f, 0);
	/* Nested table. */
	desc_at(f, TABLE_GPA, 0, BUF_GPA, 4, F_NEXT, 1);
	desc_at(f, TABLE_GPA, 1, TABLE_GPA + 0x1000, 16, F_INDIRECT, 0);
	desc_at(f, TABLE_GPA + 0x1000, 0, BUF_GPA, 4, 0, 0);
	desc(f, 0, TABLE_GPA, 32, F_INDIRECT, 0);
	expect_bad(f, 0);
	/* Loop and out-of-table next inside a table. */
	desc_at(f, TABLE_GPA, 0, BUF_GPA, 4, F_NEXT, 1);
	desc_at(f, TABLE_GPA, 1, BUF_GPA, 4, F_NEXT, 0);
	desc(f, 0, TABLE_GPA, 32, F_INDIRECT, 0);
	expect_bad(f, 0);
	desc_at(f, TABLE_GPA, 1, BUF_GPA, 4, F_NEXT, 2);
	expect_bad(f, 0);
	/* In-before-out inside a table. */
	desc_at(f, TABLE_GPA, 0, BUF_GPA, 4, F_WRITE | F_NEXT, 1);
	desc_at(f, TABLE_GPA, 1, BUF_GPA, 4, 0, 0);
	expect_bad(f, 0);
	/* Too many segments: a full table behind direct descriptors. */
	for (unsigned int i = 0; i < VIRTQ_MAX_IOV; i++)
		desc_at(f, TABLE_GPA, i, BUF_GPA, 1, i + 1 < VIRTQ_MAX_IOV ? F_NEXT : 0,
			(uint16_t)(i + 1));
	desc(f, 0, BUF_GPA, 1, F_NEXT, 1);
	desc(f, 1, TABLE_GPA, 16 * VIRTQ_MAX_IOV, F_INDIRECT, 0);
	expect_bad(f, 0);
}

/* Byte totals: 4 GiB - 1 is the most a chain may describe. */
static void test_length_limit(void **state)
{
	struct fx *f = *state;
	const uint32_t seg = (uint32_t)RAM_SIZE; /* 8 MiB: 512 of them make 4 GiB */

	for (unsigned int i = 0; i < 512; i++)
		desc_at(f, TABLE_GPA, i, 0, seg, i < 511 ? F_NEXT : 0, (uint16_t)(i + 1));
	desc(f, 0, TABLE_GPA, 16 * 512, F_INDIRECT, 0);
	expect_bad(f, 0);

	desc_at(f, TABLE_GPA, 511, 0, seg - 1, 0, 0);
	offer(f, 0);
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), 1);
	assert_int_equal(f->e.out_len, UINT32_MAX);
	assert_int_equal(f->e.n_out, 512);
}

/* A buffer contiguous on the host but crossing from one RAM region into the next. */
static void test_region_boundary(void **state)
{
	struct fx *f = *state;
	uint64_t hi = 0x100000000ull;

	f->m.nregions = 2;
	f->m.regions[0].size = RAM_SIZE / 2;
	f->m.regions[1] =
	    (struct gmem_region){.gpa = hi, .size = RAM_SIZE / 2, .offset = RAM_SIZE / 2};
	desc(f, 0, RAM_SIZE / 2 - 8, 16, 0, 0);
	expect_bad(f, 0);
	/* Both sides on their own are fine. */
	desc(f, 0, RAM_SIZE / 2 - 8, 8, F_NEXT, 1);
	desc(f, 1, hi, 8, F_WRITE, 0);
	offer(f, 0);
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), 1);
	assert_int_equal(f->e.out_len + f->e.in_len, 16);
	assert_ptr_equal(f->e.in[0].iov_base, f->m.host + RAM_SIZE / 2);
	f->m.nregions = 1;
	f->m.regions[0].size = RAM_SIZE;
}

static bool bit(const uint64_t *bm, uint64_t page)
{
	return bm[page / 64] & (1ull << (page % 64));
}

static unsigned int nbits(const uint64_t *bm, size_t words)
{
	unsigned int n = 0;
	for (size_t i = 0; i < words; i++)
		n += (unsigned int)__builtin_popcountll(bm[i]);
	return n;
}

static void test_push_dirty(void **state)
{
	struct fx *f = *state;
	uint64_t bm[RAM_SIZE / 4096 / 64];
	uint32_t id, len;

	/* Used ring straddling a page: idx on page 2, ring[0] on page 3. */
	f->q.used_gpa = 0x2ffc;
	assert_int_equal(virtq_check(&f->q, &f->m), 0);
	desc(f, 0, BUF_GPA, 64, F_NEXT, 1);		     /* out: never marked */
	desc(f, 1, 0x10000, 4096 + 10, F_WRITE | F_NEXT, 2); /* pages 16, 17 */
	desc(f, 2, 0x30000, 100, F_WRITE, 0);		     /* page 48 */
	offer(f, 0);
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), 1);

	memset(bm, 0, sizeof(bm));
	f->m.dirty = bm;
	virtq_push(&f->q, &f->m, &f->e, 5);
	assert_true(bit(bm, 16));
	assert_true(bit(bm, 2));
	assert_true(bit(bm, 3));
	assert_int_equal(nbits(bm, sizeof(bm) / 8), 3);
	used_elem(f, 0, &id, &len);
	assert_int_equal(len, 5);

	/* All of it: both in segments, nothing else. */
	offer(f, 0);
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), 1);
	memset(bm, 0, sizeof(bm));
	virtq_push(&f->q, &f->m, &f->e, 4096 + 20);
	assert_true(bit(bm, 16));
	assert_true(bit(bm, 17));
	assert_true(bit(bm, 48));
	assert_true(bit(bm, 3)); /* ring[1] */
	assert_true(bit(bm, 2)); /* idx */
	assert_int_equal(nbits(bm, sizeof(bm) / 8), 5);
	/* The refused chain's used entry is marked too. */
	memset(bm, 0, sizeof(bm));
	desc(f, 4, RAM_SIZE, 1, 0, 0);
	offer(f, 4);
	assert_int_equal(virtq_pop(&f->q, &f->m, &f->e), -EINVAL);
	assert_true(bit(bm, 3));
	assert_true(bit(bm, 2));
	assert_int_equal(nbits(bm, sizeof(bm) / 8), 2);
	f->m.dirty = NULL;
}

static void test_should_notify(void **state)
{
	struct fx *f = *state;
	assert_true(virtq_should_notify(&f->q, &f->m));
	put16(f, f->q.avail_gpa, 1); /* VIRTQ_AVAIL_F_NO_INTERRUPT */
	assert_false(virtq_should_notify(&f->q, &f->m));
	put16(f, f->q.avail_gpa, 0);
	f->q.ready = false;
	assert_false(virtq_should_notify(&f->q, &f->m));
}

static void test_check(void **state)
{
	struct fx *f = *state;
	struct virtq q = f->q;

	assert_int_equal(virtq_check(&q, &f->m), 0);
	q.size = VIRTQ_MAX_SIZE;
	assert_int_equal(virtq_check(&q, &f->m), 0);
	q.size = 6;
	assert_int_equal(virtq_check(&q, &f->m), -EINVAL);
	q.size = 0;
	assert_int_equal(virtq_check(&q, &f->m), -EINVAL);
	q.size = 2 * VIRTQ_MAX_SIZE;
	assert_int_equal(virtq_check(&q, &f->m), -EINVAL);
	q = f->q;
	q.desc_gpa += 8;
	assert_int_equal(virtq_check(&q, &f->m), -EINVAL);
	q = f->q;
	q.avail_gpa += 1;
	assert_int_equal(virtq_check(&q, &f->m), -EINVAL);
	q = f->q;
	q.used_gpa += 2;
	assert_int_equal(virtq_check(&q, &f->m), -EINVAL);
	q = f->q;
	q.used_gpa = RAM_SIZE - 72; /* 70 bytes, 4-aligned */
	assert_int_equal(virtq_check(&q, &f->m), 0);
	q.used_gpa += 4;
	assert_int_equal(virtq_check(&q, &f->m), -EINVAL);
	q = f->q;
	q.desc_gpa = RAM_SIZE - 16 * 8 + 16;
	assert_int_equal(virtq_check(&q, &f->m), -EINVAL);
	q = f->q;
	q.avail_gpa = UINT64_MAX - 1;
	assert_int_equal(virtq_check(&q, &f->m), -EINVAL);
}

static int load_bytes(struct virtq *q, const struct enc *e, unsigned int version)
{
	struct dec d;
	dec_init(&d, e->buf, e->len);
	return virtq_load(q, &d, version);
}

static void test_save_load(void **state)
{
	struct fx *f = *state;
	struct enc e1, e2;
	struct virtq q;

	f->q.last_avail = 0x1234;
	f->q.used_idx = 0x1230;
	f->q.desc_gpa = 0x123456780ull;
	enc_init(&e1);
	enc_init(&e2);
	assert_int_equal(virtq_save(&f->q, &e1), 0);
	memset(&q, 0x55, sizeof(q));
	assert_int_equal(load_bytes(&q, &e1, VIRTQ_STATE_VERSION), 0);
	assert_int_equal(q.size, 8);
	assert_true(q.ready);
	assert_false(q.broken);
	assert_int_equal(q.desc_gpa, 0x123456780ull);
	assert_int_equal(q.avail_gpa, AVAIL_GPA);
	assert_int_equal(q.used_gpa, USED_GPA);
	assert_int_equal(q.last_avail, 0x1234);
	assert_int_equal(q.used_idx, 0x1230);
	assert_int_equal(virtq_save(&q, &e2), 0);
	assert_int_equal(e1.len, e2.len);
	assert_memory_equal(e1.buf, e2.buf, e1.len);

	/* A queue never set up loads too. */
	struct virtq z;
	virtq_reset(&z);
	enc_reset(&e2);
	assert_int_equal(virtq_save(&z, &e2), 0);
	assert_int_equal(load_bytes(&q, &e2, VIRTQ_STATE_VERSION), 0);
	assert_int_equal(q.size, 0);
	assert_false(q.ready);

	/* Rejects leave the queue as it was. */
	struct virtq before = f->q, t;
	memcpy(&t, &before, sizeof(t));
	assert_int_equal(load_bytes(&t, &e1, 0), -ENOTSUP);
	assert_int_equal(load_bytes(&t, &e1, VIRTQ_STATE_VERSION + 1), -ENOTSUP);
	struct dec d;
	dec_init(&d, e1.buf, e1.len - 1);
	assert_int_equal(virtq_load(&t, &d, VIRTQ_STATE_VERSION), -EBADMSG);
	struct {
		struct virtq q;
	} bad[] = {
	    {{.size = 6, .ready = true, .desc_gpa = DESC_GPA}},
	    {{.size = 2048}},
	    {{.size = 0, .ready = true}},
	    {{.size = 8, .ready = true, .desc_gpa = DESC_GPA + 8}},
	    {{.size = 8, .ready = true, .avail_gpa = 1}},
	    {{.size = 8, .ready = true, .used_gpa = 2}},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		enc_reset(&e2);
		assert_int_equal(virtq_save(&bad[i].q, &e2), 0);
		assert_int_equal(load_bytes(&t, &e2, VIRTQ_STATE_VERSION), -EINVAL);
		assert_memory_equal(&t, &before, sizeof(t));
	}
	/* A queue the driver set not ready after it broke stays broken, and loads as saved
	 * (fuzz_virtio_blk's crash-ready0-after-broken-ring). */
	struct virtq nb = {.size = 8, .ready = false, .broken = true}, got;
	enc_reset(&e2);
	assert_int_equal(virtq_save(&nb, &e2), 0);
	assert_int_equal(load_bytes(&got, &e2, VIRTQ_STATE_VERSION), 0);
	assert_true(got.broken);
	assert_false(got.ready);
	/* A flag byte that is neither 0 nor 1. */
	enc_reset(&e2);
	assert_int_equal(virtq_save(&f->q, &e2), 0);
	e2.buf[2] = 2;
	assert_int_equal(load_bytes(&t, &e2, VIRTQ_STATE_VERSION), -EINVAL);
	enc_free(&e1);
	enc_free(&e2);
}

int main(void)
{
	log_set_level(LOG_ERR);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_simple, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_out_then_in, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_indirect, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_wraparound, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_full_and_broken, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bad_chains, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_length_limit, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_region_boundary, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_push_dirty, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_should_notify, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_check, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_save_load, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
