/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_VMM_VIRTQ_H
#define VMSNAP_VMM_VIRTQ_H

/*
 * A virtio 1.x split virtqueue, the device side. The rings live in guest memory and are read
 * through gmem_ptr() with every address and length checked: a bad chain (address outside RAM,
 * a loop, more than the queue size of descriptors, a write-only descriptor before a read-only
 * one, a nested or misaligned indirect table, a length sum over 4 GiB) is an error for that
 * request, never a crash. No VIRTIO_RING_F_EVENT_IDX; VIRTIO_RING_F_INDIRECT_DESC is supported.
 *
 * Every byte the device writes into a request's buffers is accounted in virtq_push(), which
 * marks those pages and the used-ring entry dirty (gmem_mark_dirty): the one path for device
 * writes into guest memory.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "formats/codec.h"
#include "vmm/gmem.h"

#define VIRTQ_MAX_SIZE 1024u  /* largest queue a device offers */
#define VIRTQ_MAX_IOV 1024u   /* segments of one request (direct + indirect) */

struct virtq {
	/* Set by the driver through the transport. */
	uint16_t size;	      /* power of two, 1..VIRTQ_MAX_SIZE */
	bool ready;
	uint64_t desc_gpa, avail_gpa, used_gpa;
	/* Device-side progress: saved and restored. */
	uint16_t last_avail;  /* next avail index to take */
	uint16_t used_idx;    /* next used index to write */
	bool broken;	      /* a bad ring (not a bad chain): the queue stops until reset */
};

/** One request: the chain's buffers as host iovecs into guest RAM. */
struct virtq_elem {
	uint16_t head;			/* descriptor index to give back in virtq_push() */
	unsigned int n_out, n_in;	/* driver->device (readable) then device->driver */
	struct iovec out[VIRTQ_MAX_IOV];
	struct iovec in[VIRTQ_MAX_IOV];
	uint64_t in_gpa[VIRTQ_MAX_IOV]; /* guest-physical start of each in[] segment */
	uint64_t out_len, in_len;	/* byte totals */
};

/** Forget all state (device reset). */
void virtq_reset(struct virtq *q);

/**
 * Check the driver's ring addresses and size (alignment, inside RAM) when it sets the queue
 * ready. Returns 0 or -EINVAL (the transport then refuses QueueReady).
 */
int virtq_check(const struct virtq *q, const struct gmem *m);

/**
 * Take the next available request into @e. Returns 1 when one was taken, 0 when the ring is
 * empty (or the queue is not ready), -EINVAL when the chain is bad: then the head has been
 * consumed and given back with length 0 (the driver sees it completed with nothing written)
 * and the caller logs (rate-limited) and goes on. -EIO when the ring itself is unusable
 * (avail index more than size ahead, or rings not in RAM): q->broken is set, every later pop
 * returns -EIO too, and the device should set DEVICE_NEEDS_RESET. Zero-length descriptors
 * count toward the chain length but add no segment; n_out + n_in <= VIRTQ_MAX_IOV.
 */
int virtq_pop(struct virtq *q, struct gmem *m, struct virtq_elem *e);

/**
 * Give request @e back with @written bytes written into its in[] buffers (from the start;
 * clamped to in_len): marks those bytes and the used entry dirty, then publishes the used
 * index (release order). Does nothing on a queue that is not ready (reset since the pop).
 */
void virtq_push(struct virtq *q, struct gmem *m, const struct virtq_elem *e, uint32_t written);

/** True unless the driver set VIRTQ_AVAIL_F_NO_INTERRUPT. */
bool virtq_should_notify(const struct virtq *q, const struct gmem *m);

/** True when the avail ring holds requests not yet taken. */
bool virtq_has_work(const struct virtq *q, const struct gmem *m);

/**
 * Copy @len bytes from @src into the in[] buffers of @e at byte @offset (a helper for
 * devices; does not mark dirty: virtq_push() does). Returns bytes copied.
 */
size_t virtq_copy_to_in(const struct virtq_elem *e, size_t offset, const void *src, size_t len);
/** Copy out of the out[] buffers from byte @offset. Returns bytes copied. */
size_t virtq_copy_from_out(const struct virtq_elem *e, size_t offset, void *dst, size_t len);

#define VIRTQ_STATE_VERSION 1
/** Queue state (size, ready, ring addresses, indices). */
int virtq_save(const struct virtq *q, struct enc *e);
int virtq_load(struct virtq *q, struct dec *d, unsigned int version);

#endif
