/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_VMM_VIRTIO_BLK_H
#define VMSNAP_VMM_VIRTIO_BLK_H

/*
 * virtio-blk (device id 2) on the virtio-mmio transport, backed by a vmm/blkdev.h disk (a raw
 * file or a chain of overlays).
 *
 * Guest-visible device: one request queue of VIRTIO_BLK_QUEUE_SIZE; features SIZE_MAX,
 * SEG_MAX, BLK_SIZE (512), FLUSH (a volatile write cache: writes are durable after a FLUSH),
 * and either RO (a read-only disk) or DISCARD and WRITE_ZEROES; no MQ, GEOMETRY, TOPOLOGY,
 * CONFIG_WCE, LIFETIME or SECURE_ERASE. A driver that does not accept FLUSH gets a
 * write-through disk (every write is followed by a flush), as the spec asks.
 *
 * Requests: IN, OUT, FLUSH, GET_ID (the serial, VIRTIO_BLK_ID_BYTES, NUL-padded), DISCARD and
 * WRITE_ZEROES (up to VIRTIO_BLK_MAX_DISCARD_SEG segments). The header is the first 16
 * readable bytes and the status the last writable byte, wherever the descriptors split them.
 * Data moves with preadv/pwritev straight between the disk and guest RAM. A request the disk
 * cannot serve (sector range outside the disk, a length not a multiple of 512, a write to a
 * read-only disk, a short buffer, a host I/O error such as ENOSPC) completes with
 * VIRTIO_BLK_S_IOERR, an unknown or not negotiated type or flag with VIRTIO_BLK_S_UNSUPP;
 * each is logged rate-limited and counted. A chain with no writable byte cannot carry a status
 * and is completed with length 0. Requests are served on the evloop thread, one at a time, in
 * ring order.
 *
 * Locking: everything runs under the transport's device lock (virtio_mmio_lock); the disk has
 * its own lock below it.
 */

#include <stdbool.h>
#include <stdint.h>

#include "vmm/blkdev.h"
#include "vmm/evloop.h"
#include "vmm/gmem.h"
#include "vmm/virtio_mmio.h"

/* Feature bits (same values as <linux/virtio_blk.h>). */
#define VIRTIO_BLK_F_SIZE_MAX	  1
#define VIRTIO_BLK_F_SEG_MAX	  2
#define VIRTIO_BLK_F_RO		  5
#define VIRTIO_BLK_F_BLK_SIZE	  6
#define VIRTIO_BLK_F_FLUSH	  9
#define VIRTIO_BLK_F_MQ		  12 /* never offered */
#define VIRTIO_BLK_F_DISCARD	  13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

/* Request types and status values. */
#define VIRTIO_BLK_T_IN		  0
#define VIRTIO_BLK_T_OUT	  1
#define VIRTIO_BLK_T_FLUSH	  4
#define VIRTIO_BLK_T_GET_ID	  8
#define VIRTIO_BLK_T_DISCARD	  11
#define VIRTIO_BLK_T_WRITE_ZEROES 13
#define VIRTIO_BLK_S_OK		  0
#define VIRTIO_BLK_S_IOERR	  1
#define VIRTIO_BLK_S_UNSUPP	  2
#define VIRTIO_BLK_WZ_F_UNMAP	  1u /* discard / write-zeroes segment flag */

#define VIRTIO_BLK_SECTOR	    512u
#define VIRTIO_BLK_ID_BYTES	    20u
#define VIRTIO_BLK_CONFIG_SIZE	    60u /* through write_zeroes_may_unmap and its padding */
#define VIRTIO_BLK_QUEUE_SIZE	    256u
#define VIRTIO_BLK_SEG_MAX	    (VIRTIO_BLK_QUEUE_SIZE - 2) /* data segments per request */
#define VIRTIO_BLK_SIZE_MAX	    (1u << 20)			/* bytes per data segment */
#define VIRTIO_BLK_MAX_DISCARD_SECT (1u << 21)			/* 1 GiB per segment */
#define VIRTIO_BLK_MAX_DISCARD_SEG  32u
#define VIRTIO_BLK_MAX_WZEROES_SECT (1u << 21)
#define VIRTIO_BLK_MAX_WZEROES_SEG  32u

/*
 * Device state (ops->save, after the transport's), little-endian:
 * v1: string disk path (< 4096), u64 disk size, u8[32] disk content hash, u8 read-only: the
 *     disk's blkdev_identity() at save time. A load checks that the disk it was created on has
 *     the same size, hash and read-only flag, else refuses (-ESTALE).
 */
#define VIRTIO_BLK_STATE_VERSION 1

/** How to build a device. */
struct virtio_blk_params {
	const char *path;    /* the disk (raw file, block device, or overlay) */
	bool readonly;	     /* the guest may not write (VIRTIO_BLK_F_RO) */
	const char *overlay; /* NULL: write the disk itself; else this overlay on it (created
			      * when missing), see blkdev_open() */
	const char *serial;  /* GET_ID answer, at most 20 bytes; NULL: "vmsnap-<index>" */
	unsigned int index;  /* for the default serial and messages */
};

/** Counters since the device was created (not saved). */
struct virtio_blk_stats {
	uint64_t rd_ops, rd_bytes; /* IN requests completed OK */
	uint64_t wr_ops, wr_bytes; /* OUT requests completed OK */
	uint64_t flushes, discards, write_zeroes, get_ids;
	uint64_t ioerr;	     /* completed with VIRTIO_BLK_S_IOERR */
	uint64_t unsupp;     /* completed with VIRTIO_BLK_S_UNSUPP */
	uint64_t bad_chains; /* refused by virtq_pop, or without a status byte */
};

struct virtio_blk;

/**
 * Open the disk of @p (blkdev_open()) and create the device with its virtio-mmio transport at
 * @base, interrupt @gsi (as virtio_mmio_create(); @vm_fd < 0 for tests without KVM). For a
 * restore, create it from the saved configuration on the disk the snapshot was taken of (or
 * a new overlay on it), then call virtio_mmio_load() on the transport: the load refuses a disk
 * whose identity differs from the saved one. Returns NULL after logging.
 */
struct virtio_blk *virtio_blk_create(const struct virtio_blk_params *p, struct gmem *m, int vm_fd,
				     struct evloop *loop, uint64_t base, uint32_t gsi);

/**
 * Destroy the transport, then flush and close the disk. Safe on NULL. The caller must not
 * hold the device lock; vCPUs must no longer touch the register window.
 */
void virtio_blk_destroy(struct virtio_blk *b);

/** The transport: its register window (virtio_mmio_io on the iobus), save/load, irq fd. */
struct virtio_mmio *virtio_blk_transport(struct virtio_blk *b);

/**
 * The disk. Calls on it from outside the device (identity, flush) are safe at any time (it
 * has its own lock); for a snapshot's consistency pause the evloop first (no request in
 * flight).
 */
struct blkdev *virtio_blk_disk(struct virtio_blk *b);

/**
 * Freeze the disk for a consistent snapshot: under the device lock (between requests),
 * blkdev_freeze_new_overlay(@new_overlay_path). @frozen (may be NULL) receives the identity of
 * the layer that stays as it is from now on: a restore opens that file (with a new overlay of
 * its own), and the device state saved after this names it. @rename_frozen_to as for
 * blkdev_freeze_new_overlay(). 0 or -errno.
 */
int virtio_blk_freeze_new_overlay(struct virtio_blk *b, const char *new_overlay_path,
				  struct blkdev_identity *frozen, const char *rename_frozen_to);

/** Copy the counters into @s. Takes the device lock. */
void virtio_blk_get_stats(struct virtio_blk *b, struct virtio_blk_stats *s);

#endif
