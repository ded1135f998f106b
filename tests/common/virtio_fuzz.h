/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_TESTS_VIRTIO_FUZZ_H
#define VMSNAP_TESTS_VIRTIO_FUZZ_H

/*
 * What the virtio device fuzz targets (tests/fuzz/fuzz_virtio_*.c) share: invariant checks,
 * little-endian reads of the input, the event-loop drain, the driver's script actions that do
 * not depend on the device (offer a head, fuzzed register accesses, writes to RAM, save/load
 * into a spare device) and the seed writer. Header-only (static inline).
 *
 * Before including it, define VFUZZ_NAME (the target's name, for messages) and VFUZZ_SEED_MEM
 * (bytes of RAM image the seed generator builds, in mem[]).
 */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/codec.h"
#include "vmm/evloop.h"
#include "vmm/gmem.h"
#include "vmm/virtio_mmio.h"
#include "vmm/virtq.h"
#include "tests/common/virtio_driver.h"

#if !defined(VFUZZ_NAME) || !defined(VFUZZ_SEED_MEM)
#error "define VFUZZ_NAME and VFUZZ_SEED_MEM before including virtio_fuzz.h"
#endif

#define VFUZZ_MAX_HANDLERS 1000 /* handler runs per drain before the loop counts as spinning */

static inline void check(bool ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, VFUZZ_NAME ": invariant broken: %s\n", what);
		abort();
	}
}

static inline void die(const char *what)
{
	fprintf(stderr, VFUZZ_NAME ": setup failed: %s\n", what);
	abort();
}

static inline uint16_t rd16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static inline uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- the driver's side ---- */

/* Run @loop until idle: it must go idle. */
static inline void vfuzz_drain(struct evloop *loop)
{
	int r, n = 0;
	while ((r = evloop_run_once(loop, 0)) > 0) {
		n += r;
		check(n <= VFUZZ_MAX_HANDLERS, "the event loop goes idle");
	}
	check(r == 0, "evloop_run_once");
}

static inline void vfuzz_ack_irq(struct virtio_mmio *t)
{
	uint64_t v;
	if (read(virtio_mmio_irq_fd(t), &v, sizeof(v)) < 0 && errno != EAGAIN)
		die("read of the interrupt eventfd");
	vdrv_ack(t);
}

/*
 * A fresh machine: device reset, RAM cleared, dirty tracking into @dirty (@dirty_size bytes)
 * when @track, then the input's RAM image (u16 length at @len_at, the image from @hdr_size).
 * Returns the input position after the image.
 */
static inline size_t vfuzz_fresh(struct evloop *loop, struct gmem *ram, struct virtio_mmio *t,
				 uint64_t *dirty, size_t dirty_size, bool track,
				 const uint8_t *data, size_t size, size_t hdr_size, size_t len_at)
{
	vdrv_wr(t, VIRTIO_MMIO_STATUS, 0);
	vfuzz_drain(loop);
	vfuzz_ack_irq(t);
	memset(ram->host, 0, ram->size);
	memset(dirty, 0, dirty_size);
	ram->dirty = track ? dirty : NULL;
	size_t pos = hdr_size, mem_len = rd16(data + len_at);
	if (mem_len > size - pos)
		mem_len = size - pos;
	memcpy(ram->host, data + pos, mem_len);
	return pos + mem_len;
}

/* ---- script actions ---- */

/* The driver puts @head in queue @qi's avail ring and bumps its index. */
static inline void vfuzz_offer(struct gmem *ram, struct virtio_mmio *t, unsigned int qi,
			       uint16_t head)
{
	virtio_mmio_lock(t);
	struct virtq q = *virtio_mmio_queue(t, qi);
	virtio_mmio_unlock(t);
	if (!q.size || q.size > VIRTQ_MAX_SIZE)
		return;
	uint8_t *avail = gmem_ptr(ram, q.avail_gpa, 4 + 2ull * q.size);
	if (!avail)
		return;
	uint16_t idx = rd16(avail + 2);
	uint8_t *slot = avail + 4 + 2u * (idx % q.size);
	slot[0] = (uint8_t)head;
	slot[1] = (uint8_t)(head >> 8);
	idx++;
	avail[2] = (uint8_t)idx;
	avail[3] = (uint8_t)(idx >> 8);
}

static const uint16_t vfuzz_regs[] = {
    VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_INTERRUPT_ACK,
    VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_QUEUE_DESC_LOW,
    VIRTIO_MMIO_QUEUE_DESC_HIGH,
    VIRTIO_MMIO_QUEUE_DRIVER_LOW,
    VIRTIO_MMIO_QUEUE_DRIVER_HIGH,
    VIRTIO_MMIO_QUEUE_DEVICE_LOW,
    VIRTIO_MMIO_QUEUE_DEVICE_HIGH,
    VIRTIO_MMIO_CONFIG_GENERATION,
    VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_QUEUE_NUM_MAX,
    VIRTIO_MMIO_MAGIC,
    VIRTIO_MMIO_SHM_SEL,
};
#define VFUZZ_NREGS (sizeof(vfuzz_regs) / sizeof(vfuzz_regs[0]))

/* u8 @sel: a register (sel < 0xc0), else a config access of 1, 2 or 4 bytes. */
static inline void vfuzz_reg_access(struct virtio_mmio *t, uint8_t sel, uint32_t v, bool write)
{
	if (sel < 0xc0) {
		if (write)
			vdrv_wr(t, vfuzz_regs[sel % VFUZZ_NREGS], v);
		else
			(void)vdrv_rd(t, vfuzz_regs[sel % VFUZZ_NREGS]);
		return;
	}
	uint8_t buf[4];
	unsigned int len = 1u << (v % 3);
	memcpy(buf, &v, 4);
	virtio_mmio_io(t, VIRTIO_MMIO_CONFIG + (sel & 0x3f), buf, len, write);
}

/* Op "driver write: u16 gpa, u8 value" at data[*pos] (its arguments, if all there). */
static inline void vfuzz_poke(struct gmem *ram, const uint8_t *data, size_t size, size_t *pos)
{
	if (*pos + 3 <= size) {
		ram->host[rd16(data + *pos)] = data[*pos + 2];
		*pos += 3;
	}
}

/* Op "driver write: u16 gpa, u8 n, n bytes" at data[*pos]. */
static inline void vfuzz_write(struct gmem *ram, const uint8_t *data, size_t size, size_t *pos)
{
	if (*pos + 3 <= size) {
		size_t at = rd16(data + *pos), n = data[*pos + 2];
		*pos += 3;
		if (n > size - *pos)
			n = size - *pos;
		if (n > ram->size - at)
			n = ram->size - at;
		memcpy(ram->host + at, data + *pos, n);
		*pos += n;
	}
}

/*
 * Save @from, reset it, load the state into @to (@what: the check's message) and run the loop
 * until idle.
 */
static inline void vfuzz_save_load(struct evloop *loop, struct virtio_mmio *from,
				   struct virtio_mmio *to, const char *what)
{
	struct enc e;
	struct dec dd;

	enc_init(&e);
	check(virtio_mmio_save(from, &e) == 0, "save");
	vdrv_wr(from, VIRTIO_MMIO_STATUS, 0);
	vfuzz_drain(loop);
	dec_init(&dd, e.buf, e.len);
	check(virtio_mmio_load(to, &dd, VIRTIO_MMIO_STATE_VERSION) == 0, what);
	enc_free(&e);
	vfuzz_drain(loop);
}

/* ---- seed generation ---- */

struct seed {
	uint8_t buf[VFUZZ_SEED_MEM + 1024];
	size_t len;
};

static uint8_t mem[VFUZZ_SEED_MEM]; /* the seed's RAM image */

static inline void put(struct seed *s, const void *p, size_t n)
{
	memcpy(s->buf + s->len, p, n);
	s->len += n;
}

static inline void put8(struct seed *s, uint8_t v)
{
	put(s, &v, 1);
}

static inline void put16(struct seed *s, uint16_t v)
{
	uint8_t b[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
	put(s, b, 2);
}

static inline void mem_le(uint32_t at, uint64_t v, unsigned int n)
{
	for (unsigned int i = 0; i < n; i++)
		mem[at + i] = (uint8_t)(v >> (8 * i));
}

/* Descriptor @i in the table at @table. */
static inline void set_desc(uint32_t table, unsigned int i, uint64_t addr, uint32_t len,
			    uint16_t flags, uint16_t next)
{
	uint32_t at = table + 16 * i;
	mem_le(at, addr, 8);
	mem_le(at + 8, len, 4);
	mem_le(at + 12, flags, 2);
	mem_le(at + 14, next, 2);
}

/*
 * The RAM image up to its last non-zero byte (the rest of RAM is zero anyway), its length into
 * the header at @len_at.
 */
static inline void seed_mem(struct seed *s, size_t len_at)
{
	uint16_t n = VFUZZ_SEED_MEM;
	while (n && !mem[n - 1])
		n--;
	s->buf[len_at] = (uint8_t)n;
	s->buf[len_at + 1] = (uint8_t)(n >> 8);
	put(s, mem, n);
}

static inline void write_seed(const char *dir, const char *name, const struct seed *s)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(s->buf, 1, s->len, f) != s->len || fclose(f)) {
		perror(path);
		exit(1);
	}
}

#endif
