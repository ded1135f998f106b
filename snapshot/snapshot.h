/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_SNAPSHOT_SNAPSHOT_H
#define VMSNAP_SNAPSHOT_SNAPSHOT_H

/*
 * Save a running VM to an image file and restore a VM from one (docs/SNAPSHOT.md). This is
 * policy: when to pause, what goes in which section, how the file is made durable. The bytes
 * are formats/image.h's; the machine's state comes from vmm/vm.h.
 *
 * Sections written (formats/SPEC.md §3): config (optional, SNAP_CONFIG_VERSION), vm
 * (required, KVMSTATE_VM_VERSION), one vcpu.N per vCPU (required, KVMSTATE_VCPU_VERSION),
 * one device.ID per entry of the device table (required, the device's own version), then
 * memory (linear, or LZ4 chunks with compress).
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vm;

#define SNAP_CONFIG_VERSION 2

/* ---- the config section ------------------------------------------------------------------ */

#include "vmm/vm.h"

/** The devices an image's config section lists (strings malloc'ed; snap_config_free). */
struct snap_config {
	struct vm_disk_config disks[VM_MAX_DISKS]; /* frozen layers, with their identity */
	unsigned int ndisks;
	struct vm_net_config nets[VM_MAX_NETS];
	unsigned int nnets;
};
struct img;
/**
 * Read @img's config section into @c (none, or version 1: no devices). 0, or -errno after
 * logging one line naming @path.
 */
int snap_config_read(struct img *img, const char *path, struct snap_config *c);
void snap_config_free(struct snap_config *c);

/* ---- save ------------------------------------------------------------------------------ */

/**
 * What a VM has written since its last tracked image (docs/SNAPSHOT.md, "Incremental"):
 * KVM's dirty log kept on after a `save --track` (or an incremental save) plus the pages
 * written since, and that image's SHA-256 and path. One per VM; snap_api_register() makes
 * the control socket's. Used from one thread (the control socket's).
 */
struct snap_track;

/** A tracker for @vm, not tracking yet. NULL when out of memory. */
struct snap_track *snap_track_new(struct vm *vm);
/** Stop tracking (dirty logging off) and forget the base image. */
void snap_track_stop(struct snap_track *t);
/** True while the VM's changes are tracked against an image (*@path, if non-NULL). */
bool snap_track_base(const struct snap_track *t, const char **path);

#define SNAP_LIVE_DEFAULT_ROUNDS    30	  /* default bound on pre-copy rounds after the full pass */
#define SNAP_LIVE_DEFAULT_TIME_MS   60000 /* default bound on the pre-copy time */
#define SNAP_LIVE_DEFAULT_TARGET_MS 10	  /* default expected final-round time to aim for */
#define SNAP_LIVE_ROUND_LOG	    32	  /* rounds whose page counts a result keeps */

struct snap_save_opts {
	const char *path; /* the image to create or replace (absolute or relative to cwd) */
	bool compress;	  /* LZ4 chunks: smaller, restore is eager only */
	bool stop;	  /* on success leave the VM paused and ask it to power off */
	/* Optional progress report while memory is written (RAM pages scanned of total). */
	void (*progress)(void *arg, uint64_t pages_done, uint64_t pages_total);
	void *progress_arg;
	/*
	 * Live save: pre-copy rounds into the image while the guest runs, the guest paused only
	 * for the last round and the state capture. Uncompressed only. Bounds (0 = default):
	 * max_rounds after the full pass, max_time_ms of pre-copy, pause_target_ms the expected
	 * final round to aim for; past a bound the guest is paused anyway and a note says so.
	 */
	bool live;
	uint32_t max_rounds;
	uint64_t max_time_ms;
	uint64_t pause_target_ms;
	/* Optional, live: after each dirty-log sync (round, pages written by it, pages dirty). */
	void (*round)(void *arg, uint32_t round, uint64_t pages, uint64_t dirty);
	/*
	 * Incremental: store only the pages written since @tracker's base image, which must be
	 * @parent (checked by SHA-256; NULL = the base image's path). The image records the
	 * parent's SHA-256 and path (a bare name when both are in one directory).
	 */
	bool incremental;
	const char *parent;
	/* Keep tracking after this save, with this image as the base (implied by incremental). */
	bool track;
	struct snap_track *tracker; /* needed for incremental and track; NULL otherwise ok */
};

struct snap_save_result {
	uint64_t pause_us;	/* how long the guest did not run because of this save */
	uint64_t total_us;	/* from the request to a durable, renamed image */
	uint64_t finish_us;	/* of that: index, end record and SHA-256 (after the resume) */
	uint64_t fsync_us;	/* of that: fsync of the file, rename, fsync of the directory */
	bool was_paused;	/* the VM was paused before the save (and stays paused) */
	uint64_t file_size;	/* apparent size */
	uint64_t bytes_written; /* bytes written (holes excluded) */
	uint64_t pages_total, pages_data, pages_zero, pages_lz4, lz4_bytes, pages_parent;
	uint8_t sha256[32];
	/* live */
	uint32_t rounds;	/* pre-copy rounds, the full pass included */
	uint64_t precopy_pages; /* pages written while the guest ran */
	uint64_t final_pages;	/* pages written while it was paused */
	uint64_t precopy_us;	/* start to pause */
	bool converged;		/* the final round fitted the pause target */
	char note[256];		/* why not, if so */
	uint32_t nround_pages;
	uint64_t round_pages[SNAP_LIVE_ROUND_LOG];
	/* incremental / tracking */
	char parent[4096]; /* the parent reference recorded ("" for a full image) */
	bool tracking;	   /* changes are tracked against this image now */
};

/**
 * Save @vm (running or paused; not yet running is fine too) to @o->path: pause it, encode
 * the VM, vCPU and device state, write header + sections + memory to a temporary file in
 * the target's directory, resume the guest (unless it was paused before, or @o->stop), then
 * fsync the file, rename it over @o->path and fsync the directory. On any failure the
 * temporary file is removed, an existing image at @o->path is left untouched, the VM runs
 * (as before the call) and a one-line reason is in @err. With @o->stop, on success the VM
 * stays paused and vm_request_stop(VM_EXIT_POWEROFF) is called.
 * Live, incremental and tracked saves as documented in struct snap_save_opts; their failures
 * leave the tracker's base as it was (a tracker started for this save only is stopped).
 * Must not run concurrently with vm_resume() by anyone else (control-socket handlers are
 * serialised; that is how the "save" command guarantees it).
 * Returns 0 or -errno.
 */
int snap_save(struct vm *vm, const struct snap_save_opts *o, struct snap_save_result *res,
	      char *err, size_t errlen);

/**
 * Register the control-socket commands "save" (args: path, stop, compress, live,
 * max_rounds, max_time_ms, pause_target_ms, incremental, parent, track) and "save-untrack"
 * on @vm before vm_run(). One VM per process (the tracker is the process's). "save" runs on
 * the server thread for the whole save (so nothing can resume the VM meanwhile) and sends
 * "save-progress" (and, live, "save-round") events to subscribers.
 * Returns 0, -ENOTCONN without a control socket, or -errno.
 */
int snap_api_register(struct vm *vm);

/* ---- restore --------------------------------------------------------------------------- */

enum snap_mem_mode {
	SNAP_MEM_AUTO = 0, /* mmap for linear images, eager for compressed ones */
	SNAP_MEM_EAGER,	   /* read (and check) all memory into fresh RAM before running */
	SNAP_MEM_MMAP,	   /* map the image copy-on-write: instant, pages load on first touch */
};

/** "auto", "eager" or "mmap" into @out: 0 or -EINVAL. */
int snap_mem_mode_parse(const char *s, enum snap_mem_mode *out);

struct snap_restore_opts {
	const char *path;
	enum snap_mem_mode mem_mode;
	const char *console;  /* as vm_config.console */
	const char *api_path; /* control socket of the new VM, or NULL */
	const char *mem_backend; /* as vm_config.mem_backend (eager restores) */
	/*
	 * Devices. A saved disk is read-only from then on (the image's frozen disk state), so a
	 * restored VM writes to a new overlay on it: disk_overlays[k] names disk k's (NULL, or
	 * fewer than the image's disks: "<image>.<pid>.disk<k>.ovl" next to the image).
	 * nets (when nets_override): the networks to use instead of the image's (clones: their
	 * own taps). new_macs: give every network a new random MAC (clones).
	 */
	const char *const *disk_overlays;
	unsigned int ndisk_overlays;
	const struct vm_net_config *nets;
	unsigned int nnets;
	bool nets_override;
	bool new_macs;
	/* Move the guest's clock forward by the time since the save (clones: wall clock now). */
	bool clock_to_now;
	/* Validate only (image, chain, CPU, disks) and return before creating the VM: *out
	 * stays NULL; the stats' ram_size/ndisks/nnets say what a restore would make. */
	bool dry_run;
};

struct snap_restore_stats {
	uint64_t open_us;   /* open + validate + compatibility checks */
	uint64_t create_us; /* vm_create() (RAM mapping included) */
	uint64_t memory_us; /* eager read (0 for mmap) */
	uint64_t state_us;  /* vCPU, VM and device state */
	uint64_t total_us;
	bool mmap;	      /* memory is the image mapped copy-on-write */
	unsigned int chain;   /* images loaded: 1 for a full image, more for a chain */
	size_t overlays_read; /* mmap chains: children read instead of mapped (too scattered) */
	uint64_t ram_size;    /* the VM's RAM */
	unsigned int ncpus, ndisks, nnets;
};

struct snap_restore;

/**
 * Make a VM from the image @o->path, ready for vm_run(): open and validate it; refuse a
 * newer format, an unknown required section, a section version this build cannot read, an
 * incremental image whose chain is incomplete or does not match, or a host CPU lacking features a
 * saved vCPU uses (one line naming them) before creating anything; create the VM from the image's
 * configuration; fill memory per
 * @o->mem_mode (an explicit mmap on a compressed image is refused with -ENOTSUP); load vCPU,
 * VM and device state. Errors are logged once (one line). Returns 0 and *@out, or -errno
 * (-EBADMSG corrupt image, -ENOTSUP incompatible image).
 */
int snap_restore(const struct snap_restore_opts *o, struct snap_restore **out,
		 struct snap_restore_stats *st);

/** The restored VM (owned by @r). */
struct vm *snap_restore_vm(struct snap_restore *r);

/** vm_destroy() the VM and free what the restore kept (the configuration strings). */
void snap_restore_free(struct snap_restore *r);

/* ---- merge ----------------------------------------------------------------------------- */

struct snap_merge_result {
	unsigned int chain; /* images merged */
	uint64_t file_size, bytes_written, pages_data, pages_zero, pages_lz4;
	uint64_t total_us;
	uint8_t sha256[32];
};

/**
 * Flatten the chain ending at @child into one full image at @out (temporary file, fsync,
 * rename; @out is never left half-written): memory read from every image of the chain
 * (CRC-checked), every other section copied from @child (its state is the newest), no
 * parent. @compress: LZ4 memory. Errors of the chain and the image writer are logged where
 * found; other failures (creating, syncing, renaming the file) are described in @err
 * ("" otherwise). Returns 0 or -errno.
 */
int snap_merge(const char *child, const char *out, bool compress, struct snap_merge_result *res,
	       char *err, size_t errlen);

/* ---- verify ---------------------------------------------------------------------------- */

struct snap_verify_result {
	uint64_t sections, runs, bytes_hashed;
	uint8_t sha256[32];
};

/**
 * Check the image on @fd completely: structure (img_open), every section CRC, every memory
 * run's CRC and LZ4 block, holes, the SHA-256 (img_verify), and that every state section this
 * build knows decodes (config, vm, vcpu.N records; each device section belongs to a known
 * device at a readable version). On failure a one-line message naming the section (and
 * offset or page) is in @err; the reader also logs it unless img_set_quiet(). Returns 0, -EBADMSG,
 * -ENOTSUP or an I/O error.
 */
int snap_verify_fd(int fd, struct snap_verify_result *res, char *err, size_t errlen);

#endif
