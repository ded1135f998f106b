/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_TESTS_VIRTIO_DRIVER_H
#define VMSNAP_TESTS_VIRTIO_DRIVER_H

/*
 * A virtio driver by hand, for the unit tests and fuzz targets that drive a device through its
 * virtio-mmio register window (vmm/virtio_mmio.h) without KVM: 32-bit register accesses,
 * feature negotiation, queue setup at given addresses, and split rings built in guest RAM.
 * Header-only (static inline) so that cmocka tests and fuzz targets include it alike; a guest
 * memory access the helper makes itself that fails aborts (the test chose the addresses).
 */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vmm/gmem.h"
#include "vmm/virtio_mmio.h"

#define VDRV_DESC_F_NEXT  1
#define VDRV_DESC_F_WRITE 2

static inline uint32_t vdrv_rd(struct virtio_mmio *t, uint64_t off)
{
	uint8_t d[4];
	uint32_t v;
	memset(d, 0x77, sizeof(d)); /* bytes the device leaves alone show */
	virtio_mmio_io(t, off, d, 4, false);
	memcpy(&v, d, 4);
	return v;
}

static inline void vdrv_wr(struct virtio_mmio *t, uint64_t off, uint32_t v)
{
	uint8_t d[4];
	memcpy(d, &v, 4);
	virtio_mmio_io(t, off, d, 4, true);
}

/* Status ACKNOWLEDGE then DRIVER (no reset before), and the features the device offers. */
static inline uint64_t vdrv_offered(struct virtio_mmio *t)
{
	vdrv_wr(t, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	vdrv_wr(t, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	vdrv_wr(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	uint64_t f = vdrv_rd(t, VIRTIO_MMIO_DEVICE_FEATURES);
	vdrv_wr(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	return f | (uint64_t)vdrv_rd(t, VIRTIO_MMIO_DEVICE_FEATURES) << 32;
}

/* Accept @want and set FEATURES_OK (the caller reads Status to see whether it stuck). */
static inline void vdrv_accept(struct virtio_mmio *t, uint64_t want)
{
	vdrv_wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	vdrv_wr(t, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)want);
	vdrv_wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
	vdrv_wr(t, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)(want >> 32));
	vdrv_wr(t, VIRTIO_MMIO_STATUS,
		VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
}

/* Select queue @q, give it @num entries and its rings at these addresses, and make it ready. */
static inline void vdrv_queue(struct virtio_mmio *t, unsigned int q, uint32_t num, uint64_t desc,
			      uint64_t avail, uint64_t used)
{
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_SEL, q);
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_NUM, num);
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)desc);
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, (uint32_t)(desc >> 32));
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)avail);
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (uint32_t)(avail >> 32));
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)used);
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (uint32_t)(used >> 32));
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
}

/* Read InterruptStatus and acknowledge all of it; returns what was pending. */
static inline uint32_t vdrv_ack(struct virtio_mmio *t)
{
	uint32_t st = vdrv_rd(t, VIRTIO_MMIO_INTERRUPT_STATUS);
	vdrv_wr(t, VIRTIO_MMIO_INTERRUPT_ACK, st);
	return st;
}

/* ---- split rings in guest RAM ---- */

struct vdrv_seg {
	uint64_t gpa;
	uint32_t len;
	bool write; /* device-writable */
};

/* The driver's view of one split ring. */
struct vdrv_ring {
	struct gmem *m;
	uint16_t size; /* entries, a power of two */
	uint64_t desc, avail, used;
	uint16_t avail_idx, used_seen, next_desc;
};

static inline void vdrv_mem_ok(int r, const char *what)
{
	if (r) {
		fprintf(stderr, "virtio_driver: %s outside guest RAM\n", what);
		abort();
	}
}

/* Rings of @size entries at these addresses, zeroed (@clear bytes from @desc), nothing used. */
static inline void vdrv_ring_init(struct vdrv_ring *r, struct gmem *m, uint16_t size, uint64_t desc,
				  uint64_t avail, uint64_t used, size_t clear)
{
	*r = (struct vdrv_ring){.m = m, .size = size, .desc = desc, .avail = avail, .used = used};
	static const uint8_t zero[0x1000];
	for (size_t off = 0; off < clear; off += sizeof(zero)) {
		size_t n = clear - off < sizeof(zero) ? clear - off : sizeof(zero);
		vdrv_mem_ok(gmem_write(m, desc + off, zero, n), "ring");
	}
}

/*
 * Put the chain @s[0..n) in the next free descriptors (in order, wrapping) and offer its head
 * on the avail ring, published as a driver does: descriptors and ring entry before the index
 * (release). Not notified. Returns the head.
 */
static inline uint16_t vdrv_add_chain(struct vdrv_ring *r, const struct vdrv_seg *s, unsigned int n)
{
	uint16_t head = r->next_desc;
	for (unsigned int i = 0; i < n; i++) {
		uint16_t idx = (uint16_t)((head + i) % r->size);
		struct {
			uint64_t addr;
			uint32_t len;
			uint16_t flags, next;
		} d = {s[i].gpa, s[i].len,
		       (uint16_t)((s[i].write ? VDRV_DESC_F_WRITE : 0) |
				  (i + 1 < n ? VDRV_DESC_F_NEXT : 0)),
		       (uint16_t)((idx + 1) % r->size)};
		vdrv_mem_ok(gmem_write(r->m, r->desc + 16ull * idx, &d, 16), "descriptor");
	}
	r->next_desc = (uint16_t)((head + n) % r->size);
	vdrv_mem_ok(gmem_write(r->m, r->avail + 4 + 2ull * (r->avail_idx % r->size), &head, 2),
		    "avail ring");
	r->avail_idx++;
	__atomic_store_n((uint16_t *)gmem_ptr(r->m, r->avail + 2, 2), r->avail_idx,
			 __ATOMIC_RELEASE);
	return head;
}

/* The next used element, if any: head and length written. */
static inline bool vdrv_next_used(struct vdrv_ring *r, uint32_t *id, uint32_t *len)
{
	uint16_t idx;
	vdrv_mem_ok(gmem_read(r->m, r->used + 2, &idx, 2), "used index");
	if (idx == r->used_seen)
		return false;
	uint32_t e[2];
	vdrv_mem_ok(gmem_read(r->m, r->used + 4 + 8ull * (r->used_seen % r->size), e, 8),
		    "used ring");
	r->used_seen++;
	*id = e[0];
	*len = e[1];
	return true;
}

#endif
