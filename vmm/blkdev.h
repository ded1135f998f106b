/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_VMM_BLKDEV_H
#define VMSNAP_VMM_BLKDEV_H

/*
 * Disk backends for virtio-blk: a raw file (or block device), or a chain of copy-on-write
 * overlays (formats/OVERLAY.md) over one. A disk is a stack of layers: the bottom is raw, each
 * overlay above reads through to the one below, and only the top is ever written. Opening an
 * overlay follows its chain (at most OVL_MAX_DEPTH overlays), checking at each level that the
 * base is the one the overlay was made on (size and content hash).
 *
 * A file is an overlay when it starts with the overlay magic; otherwise it is raw. So that a
 * guest cannot turn its raw disk into an "overlay" naming a host file as its base, writes that
 * would put the magic at the start of a raw disk are refused (-EPERM).
 *
 * Sizes: a raw disk must be at least 512 bytes and a multiple of 512 (refused otherwise, not
 * rounded: the last partial sector would be invisible to the guest and silently ignored).
 *
 * Thread-safe: one lock per disk around every operation. Functions return 0 or -errno and
 * log once: open errors with log_err, I/O errors (guest-triggered) rate-limited.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "formats/overlay.h"

/** What a disk's contents are: for checking that a disk still matches a saved VM. */
struct blkdev_identity {
	char path[OVL_PATH_MAX]; /* the layer's file (informational: files may move) */
	uint64_t size;		 /* virtual size in bytes */
	uint8_t sha256[32];	 /* ovl_content_hash() of the layer's file */
};

struct blkdev;

/**
 * Open the disk @path (raw, or an overlay followed down its chain). @overlay_path NULL: the
 * disk itself is written (unless @readonly). Otherwise the writes go to the overlay
 * @overlay_path on top of @path, which is opened read-only: created when it does not exist
 * (unless @readonly: -ENOENT), checked when it does: it must have been made on @path (same
 * size and content hash, else -ESTALE with one line saying which). Sets *out on
 * success, 0 or -errno (-ENOENT, -EACCES, -EINVAL for a bad size, -EBADMSG corrupt overlay,
 * -ENOTSUP newer overlay format, -ESTALE base mismatch, -ELOOP chain too deep).
 */
int blkdev_open(struct blkdev **out, const char *path, bool readonly, const char *overlay_path);

/** Flush (unless read-only) and close. NULL-safe. Returns the flush result. */
int blkdev_close(struct blkdev *d);

/** Virtual size in bytes (a multiple of 512). */
uint64_t blkdev_size(const struct blkdev *d);

/** True when the disk refuses writes. */
bool blkdev_readonly(const struct blkdev *d);

/**
 * Preferred discard granularity in bytes: the top overlay's block size, or the raw file's
 * filesystem block size. A power of two >= 512.
 */
uint32_t blkdev_discard_granularity(const struct blkdev *d);

/** Read @len bytes at @offset into @buf. The range must lie inside the disk (-EINVAL). */
int blkdev_pread(struct blkdev *d, void *buf, uint64_t len, uint64_t offset);

/** Write @len bytes at @offset. -EROFS on a read-only disk. */
int blkdev_pwrite(struct blkdev *d, const void *buf, uint64_t len, uint64_t offset);

/**
 * Vector read/write of @iovcnt (<= OVL_IOV_MAX) buffers at byte @offset, straight into or out
 * of the caller's memory (guest RAM for virtio-blk). Complete or an error (a failed read may
 * have filled part of the buffers).
 */
int blkdev_preadv(struct blkdev *d, const struct iovec *iov, int iovcnt, uint64_t offset);
int blkdev_pwritev(struct blkdev *d, const struct iovec *iov, int iovcnt, uint64_t offset);

/** Make all completed writes durable (fdatasync; overlays: data, then map, then sync). */
int blkdev_flush(struct blkdev *d);

/**
 * Discard (a hint): raw disks punch a hole (the range reads as zeros afterwards; a filesystem
 * that cannot punch makes this a no-op); overlays zero the whole blocks in the range and leave
 * partial ones. 0 or -errno.
 */
int blkdev_discard(struct blkdev *d, uint64_t offset, uint64_t len);

/**
 * Make the range read as zeros. @may_unmap: space may be freed (raw: punch a hole rather than
 * allocate zeros). Raw disks use fallocate (ZERO_RANGE, PUNCH_HOLE) and fall back to writing
 * zeros; overlays as ovl_write_zeroes(). 0 or -errno.
 */
int blkdev_write_zeroes(struct blkdev *d, uint64_t offset, uint64_t len, bool may_unmap);

/**
 * The identity of the disk's contents: the topmost layer that holds data (empty overlays on
 * top change nothing, so a fresh overlay over a frozen layer has that layer's identity). A
 * writable layer is flushed first, so the hash is that of what a reopen would read. For
 * checking that a disk matches a saved memory image: stable only while nothing writes (after
 * blkdev_freeze_new_overlay(), the frozen layer's identity is stable for good). 0 or -errno.
 */
int blkdev_identity(struct blkdev *d, struct blkdev_identity *out);

/**
 * Consistent-snapshot support: flush, then stack a new overlay created at @new_overlay_path
 * (must not exist) on the current top, which becomes read-only for good; writes go to the new
 * overlay from now on. @frozen (may be NULL) receives the frozen layer's identity. The disk
 * is unchanged on failure. 0 or -errno (-EEXIST, -ELOOP past OVL_MAX_DEPTH overlays,
 * -EROFS for a read-only disk).
 *
 * With @rename_frozen_to, the frozen top is first renamed to that path (and known by it from
 * then on), so @new_overlay_path may be the top's old path: the disk keeps its file name for
 * the running VM while the frozen state gets a name of its own (a snapshot's). Only an overlay
 * top is renamed (-EINVAL for a raw file: the user's disk keeps its name).
 */
int blkdev_freeze_new_overlay(struct blkdev *d, const char *new_overlay_path,
			      struct blkdev_identity *frozen, const char *rename_frozen_to);

#endif
