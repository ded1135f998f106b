/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_SNAPSHOT_SNAPSHOT_INTERNAL_H
#define VMSNAP_SNAPSHOT_SNAPSHOT_INTERNAL_H

/* Shared by the files of snapshot/ only. */

#include <stdint.h>

#include "formats/codec.h"
#include "snapshot/snapshot.h"
#include "vmm/vm.h"

/** CLOCK_MONOTONIC in microseconds. */
uint64_t snap_now_us(void);

/*
 * The config section (config.c). Version 1: u64 mem_size, u32 ncpus, string cpu_template,
 * string kernel, string initrd, string cmdline (the header's vm-config record carries the
 * same). Version 2 adds the devices: u32 ndisks, per disk {string path, string overlay
 * ("" = none), u8 readonly, u8 has_identity, u64 size, u8 sha256[32]: the content identity of
 * the file the image expects (blkdev_identity)}; u32 nnets, per net {string tap, string mac
 * ("" = generated)}.
 */
void snap_config_encode(struct enc *e, const struct vm_config *cfg);

/** Decode a config record of @version; 0, -ENOTSUP or -EBADMSG (nothing kept on error). */
int snap_config_decode(struct dec *d, unsigned int version, struct snap_config *c);

/* ---- incremental chains (chain.c) ---- */

#include <stdbool.h>
#include <stddef.h>

struct img;

#define SNAP_CHAIN_MAX	      64   /* images in a chain, base included */
#define SNAP_OVERLAY_MAX_MAPS 8192 /* mappings one child may add in an mmap restore */

struct snap_link {
	int fd;
	struct img *img;
	char *path;		/* as opened (a parent: resolved against its child's directory) */
	uint8_t parent_sha[32]; /* the SHA-256 this image records for its parent, if any */
};

/** An image and its ancestors: link[0] the image asked for, link[n - 1] the full base. */
struct snap_chain {
	size_t n;
	struct snap_link link[SNAP_CHAIN_MAX];
};

/**
 * Open @path and, while an image has a parent section, its parent (a relative parent path
 * is taken from the child's directory), checking that each parent's end-record SHA-256 is
 * the one its child recorded and that the memory layouts agree. Errors are logged once,
 * naming the file (missing parent, replaced parent, corrupt image). Returns 0 or -errno.
 */
int snap_chain_open(struct snap_chain *c, const char *path);
void snap_chain_close(struct snap_chain *c);
/** Every image of the chain is linear (uncompressed): an mmap restore is possible. */
bool snap_chain_linear(const struct snap_chain *c);
/**
 * Eagerly fill @ram (@size bytes) from the chain, base first, then each child's stored and
 * zero runs (all CRC-checked). @zeroed: @ram is zero already (the base's holes are skipped).
 */
int snap_chain_read_memory(struct snap_chain *c, void *ram, uint64_t size, bool zeroed);
/**
 * With the base already mapped copy-on-write at @ram: map each child's DATA runs over it
 * (MAP_PRIVATE | MAP_FIXED from the child's file) and anonymous zero memory over its ZERO
 * runs, oldest child first. A child that would need more than SNAP_OVERLAY_MAX_MAPS
 * mappings is read instead (checked). *@mapped / *@read count the children each way.
 */
int snap_chain_map_overlays(struct snap_chain *c, void *ram, uint64_t size, size_t *mapped,
			    size_t *read);

/** The parent path a child at @child records for @parent: a bare name in the same directory. */
int snap_parent_ref(const char *child, const char *parent, char *out, size_t outlen);
/** The file a parent reference @ref of the image at @child names. */
int snap_parent_resolve(const char *child, const char *ref, char *out, size_t outlen);

/* ---- live saves (live.c) ---- */

/** What the pre-copy loop does next. */
enum snap_live_step {
	SNAP_LIVE_AGAIN,      /* another round while the guest runs */
	SNAP_LIVE_FINAL,      /* the rest fits the pause target: pause and write it */
	SNAP_LIVE_MAX_ROUNDS, /* bound reached: pause anyway */
	SNAP_LIVE_MAX_TIME,   /* bound reached: pause anyway */
	SNAP_LIVE_STUCK,      /* the dirty set stopped shrinking: more rounds would not help */
};

struct snap_live_policy {
	uint64_t target_us;   /* expected final-round time to aim for */
	uint32_t max_rounds;  /* rounds after the full pass */
	uint64_t max_time_us; /* pre-copy time */
};

/**
 * Decide after a dirty-log sync: @round rounds done (the full pass is round 0),
 * @remaining dirty pages now, @prev the dirty pages at the previous decision (UINT64_MAX at
 * the first), *@stuck rounds in a row that did not shrink the set by 10 % (updated),
 * @write_Bps the write rate measured so far (0: unknown), @elapsed_us since the start.
 * *@expected_us gets the estimated final-round time. Pure.
 */
enum snap_live_step snap_live_decide(const struct snap_live_policy *p, uint32_t round,
				     uint64_t remaining, uint64_t prev, unsigned int *stuck,
				     double write_Bps, uint64_t elapsed_us, uint64_t *expected_us);

#endif
