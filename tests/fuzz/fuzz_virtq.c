/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for the device side of the split virtqueue: the input is guest RAM contents,
 * the ring addresses and a script of device pops/pushes and driver writes, so arbitrary
 * descriptor chains (loops, indirect tables, addresses outside RAM, huge lengths) reach
 * virtq_pop(). Must never crash or touch memory outside guest RAM, and every request it
 * hands out must describe only RAM.
 *
 * Layout (little-endian):
 *   u8 size_log2 (% 11: 1..1024 entries), u8 flags (bit 0: skip virtq_check, use the rings
 *   as they are; bit 1: dirty tracking on), u16 last_avail, u16 used_idx, u16 mem_len,
 *   u32 desc_gpa, u32 avail_gpa, u32 used_gpa,
 *   mem_len bytes copied to guest-physical 0,
 *   script: op bytes (op % 6), some followed by arguments:
 *     0 pop            1 push the oldest taken request, u8 (written / 8)
 *     2 driver write: u16 gpa, u8 value      3 driver offers: u16 head (ring entry + idx)
 *     4 copy to/from the oldest request at u8 offset      5 state round trip, queries
 *
 * Seeds in tests/fuzz/corpus/fuzz_virtq/: run this binary with FUZZ_VIRTQ_GEN_SEEDS=DIR to
 * regenerate them (see gen_seeds()).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/codec.h"
#include "util/log.h"
#include "vmm/gmem.h"
#include "vmm/virtq.h"

#define RAM_SIZE    (64u << 10) /* = the reach of a u16 address in the script */
#define HDR_SIZE    20
#define MAX_PENDING 4

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct gmem ram;
static uint64_t dirty[RAM_SIZE / 4096 / 64 + 1];
static struct virtq_elem pending[MAX_PENDING];
static unsigned int npending;
static struct virtq_elem scratch;

static void check(bool ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "fuzz_virtq: invariant broken: %s\n", what);
		abort();
	}
}

static bool in_ram(const void *p, size_t len)
{
	const uint8_t *b = p;
	return b >= ram.host && b <= ram.host + RAM_SIZE &&
	       len <= (size_t)(ram.host + RAM_SIZE - b);
}

static void check_elem(const struct virtq_elem *e)
{
	uint64_t out = 0, in = 0;
	check(e->n_out <= VIRTQ_MAX_IOV && e->n_in <= VIRTQ_MAX_IOV &&
		  e->n_out + e->n_in <= VIRTQ_MAX_IOV,
	      "segment count");
	for (unsigned int i = 0; i < e->n_out; i++) {
		check(e->out[i].iov_len > 0 && in_ram(e->out[i].iov_base, e->out[i].iov_len),
		      "out segment in RAM");
		out += e->out[i].iov_len;
	}
	for (unsigned int i = 0; i < e->n_in; i++) {
		check(e->in[i].iov_len > 0 && in_ram(e->in[i].iov_base, e->in[i].iov_len),
		      "in segment in RAM");
		check(gmem_ptr(&ram, e->in_gpa[i], e->in[i].iov_len) == e->in[i].iov_base,
		      "in_gpa matches its segment");
		in += e->in[i].iov_len;
	}
	check(out == e->out_len && in == e->in_len, "byte totals");
	check(out + in <= UINT32_MAX, "total under 4 GiB");
}

static void pop(struct virtq *q)
{
	uint16_t last = q->last_avail, used = q->used_idx;
	struct virtq_elem *e = npending < MAX_PENDING ? &pending[npending] : &scratch;
	int r = virtq_pop(q, &ram, e);
	switch (r) {
	case 1:
		check(q->last_avail == (uint16_t)(last + 1), "pop advances last_avail");
		check_elem(e);
		if (e != &scratch)
			npending++;
		else
			virtq_push(q, &ram, e, (uint32_t)e->in_len);
		break;
	case -EINVAL:
		check(q->last_avail == (uint16_t)(last + 1), "bad chain consumed");
		check(!q->ready || q->broken || q->used_idx == (uint16_t)(used + 1),
		      "bad chain given back");
		break;
	case 0:
	case -EIO:
		check(q->last_avail == last, "no request, nothing consumed");
		check(r == 0 || q->broken, "-EIO breaks the queue");
		break;
	default: check(false, "pop return value");
	}
}

static void push(struct virtq *q, uint32_t written)
{
	if (!npending)
		return;
	struct virtq_elem *e = &pending[0];
	uint16_t used = q->used_idx;
	dirty[0] = 0;
	virtq_push(q, &ram, e, written);
	if (q->used_idx != used && ram.dirty && written && e->n_in) {
		/* The first written byte's page is marked. */
		uint64_t page = gmem_offset(&ram, e->in_gpa[0]) / 4096;
		check(dirty[page / 64] & (1ull << (page % 64)), "written bytes marked dirty");
	}
	memmove(&pending[0], &pending[1], (npending - 1) * sizeof(pending[0]));
	npending--;
}

static void copy(const uint8_t off)
{
	uint8_t buf[300];
	if (!npending)
		return;
	const struct virtq_elem *e = &pending[0];
	size_t n = virtq_copy_from_out(e, off, buf, sizeof(buf));
	check(n <= sizeof(buf) && (off >= e->out_len ? n == 0 : n <= e->out_len - off),
	      "copy_from_out length");
	memset(buf, off, sizeof(buf));
	n = virtq_copy_to_in(e, off, buf, sizeof(buf));
	check(n <= sizeof(buf) && (off >= e->in_len ? n == 0 : n <= e->in_len - off),
	      "copy_to_in length");
}

static void roundtrip(const struct virtq *q)
{
	struct enc e1, e2;
	struct dec d;
	struct virtq v;

	enc_init(&e1);
	enc_init(&e2);
	check(virtq_save(q, &e1) == 0, "save");
	dec_init(&d, e1.buf, e1.len);
	/* A queue made up by the input may be rejected; one accepted must save back the same. */
	if (virtq_load(&v, &d, VIRTQ_STATE_VERSION) == 0) {
		check(virtq_save(&v, &e2) == 0, "save again");
		check(e1.len == e2.len && !memcmp(e1.buf, e2.buf, e1.len), "round trip");
	}
	enc_free(&e1);
	enc_free(&e2);
}

static uint16_t rd16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* What a driver does to offer a chain: ring entry, then idx. Ignored if not in RAM. */
static void offer(const struct virtq *q, uint16_t head)
{
	if (!q->size)
		return;
	uint8_t *avail = gmem_ptr(&ram, q->avail_gpa, 4 + 2ull * q->size);
	if (!avail)
		return;
	uint16_t idx = rd16(avail + 2);
	uint8_t *slot = avail + 4 + 2u * (idx % q->size);
	slot[0] = (uint8_t)head;
	slot[1] = (uint8_t)(head >> 8);
	idx++;
	avail[2] = (uint8_t)idx;
	avail[3] = (uint8_t)(idx >> 8);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct virtq q;

	log_set_level((enum log_level) - 1);
	if (!ram.host && gmem_create(&ram, RAM_SIZE, GMEM_ANON))
		abort();
	memset(ram.host, 0, RAM_SIZE);
	npending = 0;
	if (size < HDR_SIZE)
		return 0;

	virtq_reset(&q);
	q.size = (uint16_t)(1u << (data[0] % 11));
	uint8_t flags = data[1];
	q.last_avail = rd16(data + 2);
	q.used_idx = rd16(data + 4);
	size_t mem_len = rd16(data + 6);
	q.desc_gpa = rd32(data + 8);
	q.avail_gpa = rd32(data + 12);
	q.used_gpa = rd32(data + 16);
	size_t pos = HDR_SIZE;
	if (mem_len > size - pos)
		mem_len = size - pos;
	memcpy(ram.host, data + pos, mem_len);
	pos += mem_len;
	ram.dirty = (flags & 2) ? dirty : NULL;
	q.ready = (flags & 1) || virtq_check(&q, &ram) == 0;
	if (!q.ready)
		return 0;

	while (pos < size) {
		uint8_t op = data[pos++] % 6;
		switch (op) {
		case 0: pop(&q); break;
		case 1:
			if (pos < size)
				push(&q, data[pos++] * 8u);
			break;
		case 2:
			if (pos + 3 <= size) {
				/* A u16 address covers all of the 64 KiB of RAM. */
				ram.host[rd16(data + pos)] = data[pos + 2];
				pos += 3;
			}
			break;
		case 3:
			if (pos + 2 <= size) {
				offer(&q, rd16(data + pos));
				pos += 2;
			}
			break;
		case 4:
			if (pos < size)
				copy(data[pos++]);
			break;
		case 5:
			roundtrip(&q);
			(void)virtq_has_work(&q, &ram);
			(void)virtq_should_notify(&q, &ram);
			break;
		}
	}
	while (npending)
		push(&q, UINT32_MAX);
	ram.dirty = NULL;
	return 0;
}

/* --- Seed generation --- */

struct seed {
	uint8_t buf[8192];
	size_t len;
};

static void put(struct seed *s, const void *p, size_t n)
{
	memcpy(s->buf + s->len, p, n);
	s->len += n;
}

static void put8(struct seed *s, uint8_t v)
{
	put(s, &v, 1);
}

static void put16(struct seed *s, uint16_t v)
{
	uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
	put(s, b, 2);
}

static void put32(struct seed *s, uint32_t v)
{
	uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
	put(s, b, 4);
}

/* Seed memory image: 8-entry rings at 0x100/0x200/0x300, tables at 0x400, buffers from 0x800. */
#define SEED_MEM 0xa00
static void set_desc(uint8_t *mem, uint32_t at, uint64_t addr, uint32_t len, uint16_t flags,
		     uint16_t next)
{
	for (int i = 0; i < 8; i++)
		mem[at + i] = (uint8_t)(addr >> (8 * i));
	for (int i = 0; i < 4; i++)
		mem[at + 8 + i] = (uint8_t)(len >> (8 * i));
	mem[at + 12] = (uint8_t)flags;
	mem[at + 13] = (uint8_t)(flags >> 8);
	mem[at + 14] = (uint8_t)next;
	mem[at + 15] = (uint8_t)(next >> 8);
}

static void seed_begin(struct seed *s, uint8_t *mem)
{
	s->len = 0;
	put8(s, 3);  /* 8 entries */
	put8(s, 2);  /* checked rings, dirty tracking */
	put16(s, 0); /* last_avail */
	put16(s, 0); /* used_idx */
	put16(s, SEED_MEM);
	put32(s, 0x100);
	put32(s, 0x200);
	put32(s, 0x300);
	memset(mem, 0, SEED_MEM);
}

static void seed_script(struct seed *s, const uint8_t *mem)
{
	put(s, mem, SEED_MEM);
	put8(s, 3); /* offer head 0 */
	put16(s, 0);
	put8(s, 0); /* pop */
	put8(s, 4); /* copy at 3 */
	put8(s, 3);
	put8(s, 5); /* round trip */
	put8(s, 1); /* push 64 bytes */
	put8(s, 8);
	put8(s, 3); /* offer head 0 again */
	put16(s, 0);
	put8(s, 2); /* driver rewrites the first descriptor's length meanwhile */
	put16(s, 0x108);
	put8(s, 0x40);
	put8(s, 0); /* pop */
	put8(s, 1); /* push */
	put8(s, 255);
}

static void write_seed(const char *dir, const char *name, const struct seed *s)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(s->buf, 1, s->len, f) != s->len || fclose(f)) {
		perror(path);
		exit(1);
	}
}

__attribute__((constructor)) static void gen_seeds(void)
{
	const char *dir = getenv("FUZZ_VIRTQ_GEN_SEEDS");
	static struct seed s;
	static uint8_t mem[SEED_MEM];
	if (!dir)
		return;

	/* out 16 bytes -> in 128 bytes. */
	seed_begin(&s, mem);
	set_desc(mem, 0x100, 0x800, 16, 1, 1);
	set_desc(mem, 0x110, 0x900, 128, 2, 0);
	seed_script(&s, mem);
	write_seed(dir, "chain", &s);

	/* Indirect table of three: out, in, in. */
	seed_begin(&s, mem);
	set_desc(mem, 0x100, 0x400, 48, 4, 0);
	set_desc(mem, 0x400, 0x800, 8, 1, 1);
	set_desc(mem, 0x410, 0x880, 64, 3, 2);
	set_desc(mem, 0x420, 0x900, 4, 2, 0);
	seed_script(&s, mem);
	write_seed(dir, "indirect", &s);

	/* A loop: 0 -> 1 -> 0. */
	seed_begin(&s, mem);
	set_desc(mem, 0x100, 0x800, 16, 1, 1);
	set_desc(mem, 0x110, 0x900, 16, 1, 0);
	seed_script(&s, mem);
	write_seed(dir, "loop", &s);
	exit(0);
}
