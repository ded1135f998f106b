/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_VMM_VM_H
#define VMSNAP_VMM_VM_H

/*
 * The machine: one KVM VM with RAM on a memfd, an in-kernel irqchip and PIT, N vCPU threads,
 * the legacy devices (COM1 UART, i8042) and a control socket. The machine exposes its state
 * (pause/resume, get/set) and knows nothing of images or networks.
 *
 * Threads: the caller's thread runs vm_run() (console input, signals, the end of the VM);
 * one thread per vCPU; the control socket has its own thread. vm_pause()/vm_resume()/
 * vm_request_stop() may be called from any thread.
 */

#include <stdbool.h>
#include <stdint.h>

#include "formats/codec.h"
#include "vmm/gmem.h"

/** How the VM ended (vm_run's result). */
enum vm_exit_kind {
	VM_EXIT_NONE = 0,
	VM_EXIT_POWEROFF,	/* the guest powered off or reset: a clean end */
	VM_EXIT_QUIT,		/* asked to quit through the control socket */
	VM_EXIT_SIGNAL,		/* SIGINT/SIGTERM on the host */
	VM_EXIT_GUEST_CRASH,	/* triple fault, emulation failure, bad guest state */
	VM_EXIT_ERROR,		/* a VMM or host error */
};

/** A disk: `--disk PATH[,readonly][,overlay=PATH]` (vm_disk_parse). */
struct vm_disk_config {
	const char *path;	/* raw file, or the base of @overlay */
	const char *overlay;	/* NULL, or a copy-on-write overlay on @path (formats/OVERLAY.md) */
	bool readonly;
	/* A restore's expectation: @path's content identity when the image was saved
	 * (blkdev_identity: size and sampled SHA-256). vm_create() refuses a disk that differs. */
	bool has_identity;
	uint64_t id_size;
	uint8_t id_sha256[32];
};

/**
 * Check that disk @d's file (and what lies below it) still has the identity the image
 * recorded: one clear line and -ESTALE if not, -ENOENT etc. if it cannot be opened. 0 when it
 * matches or @d has no identity.
 */
int vm_disk_check(const struct vm_disk_config *d, unsigned int index);

/** A network interface: `--net tap=NAME[,mac=MAC]` on a host tap device. */
struct vm_net_config {
	const char *tap;	/* tap interface name */
	const char *mac;	/* "02:xx:..", or NULL for a generated one */
};

/**
 * Parse a `--disk` value in place (@s is modified; @d points into it): PATH, then
 * "readonly" (or "ro") and "overlay=PATH" in any order. 0, or -EINVAL with one line in @err.
 */
int vm_disk_parse(char *s, struct vm_disk_config *d, char *err, size_t errlen);
/** Parse a `--net` value in place: "tap=NAME" then "mac=MAC". 0 or -EINVAL with @err. */
int vm_net_parse(char *s, struct vm_net_config *n, char *err, size_t errlen);

#define VM_MAX_DISKS 4
#define VM_MAX_NETS 4

struct vm_config {
	uint64_t mem_size;	  /* bytes, multiple of 4 KiB */
	unsigned int ncpus;	  /* 1..VM_MAX_CPUS */
	const char *kernel;	  /* path of a bzImage or PVH ELF */
	const char *initrd;	  /* path or NULL */
	const char *cmdline;	  /* kernel command line or NULL */
	const char *console;	  /* NULL or "stdio": stdin/stdout; otherwise a file to write */
	const char *api_path;	  /* control socket path or NULL */
	const char *cpu_template; /* "host" (default) or "baseline" */
	const char *mem_backend;  /* "memfd" (default) or "anon" (see gmem_backend) */
	const struct vm_disk_config *disks; /* virtio-blk devices, in slot order */
	unsigned int ndisks;		    /* 0..VM_MAX_DISKS */
	const struct vm_net_config *nets;   /* virtio-net devices, after the disks */
	unsigned int nnets;		    /* 0..VM_MAX_NETS */

	/*
	 * Restore: no kernel is loaded; the caller sets memory, vCPU, VM and device state
	 * through the functions below before vm_run(). With mem_from_file, guest RAM is the
	 * file mem_file_fd mapped copy-on-write from mem_file_offset (see gmem_map_file);
	 * otherwise RAM is a zeroed memfd the caller fills.
	 */
	bool restore;
	bool mem_from_file;
	int mem_file_fd;
	uint64_t mem_file_offset;
};

#define VM_MAX_CPUS 64
#define VM_MAX_MEM (1ull << 40)

struct vm;

/** Current state, for `status`. */
struct vm_status {
	bool paused;
	unsigned int ncpus;
	uint64_t mem_size;
	uint64_t uptime_ms;	  /* since vm_run() started */
	uint64_t paused_total_ms; /* time spent paused so far */
	uint64_t last_pause_us;	  /* how long the last vm_pause() took to stop every vCPU */
};

/**
 * Create a VM from @cfg: checks the configuration, opens /dev/kvm, creates RAM, vCPUs and
 * devices, loads the kernel. Nothing runs yet. Returns 0 and *out, or -errno after logging
 * one clear line (e.g. -ENOENT for a missing kernel, -ENOEXEC for a non-kernel,
 * -ENOMEM when the host cannot give the RAM, -ENODEV when KVM is missing).
 */
int vm_create(const struct vm_config *cfg, struct vm **out);

/**
 * Start the vCPUs and the control socket and serve until the VM ends. Returns how it ended;
 * *reason (optional) points at a static description that stays valid until vm_destroy().
 */
enum vm_exit_kind vm_run(struct vm *vm, const char **reason);

/**
 * Have vm_run() call @fn(@arg) once, on its own thread, when the vCPU threads all exist
 * (in the order added, at most VM_ON_RUNNING_MAX; returns -ENOSPC beyond). With @first, just
 * before they are let run (nothing can stop them any more, and no vCPU competes for a core
 * yet: a migration's confirmation); otherwise just after (bookkeeping that need not delay the
 * guest: the `vmsnap ps` registry). Not called when the VM ends before it runs.
 */
#define VM_ON_RUNNING_MAX 4
int vm_on_running(struct vm *vm, void (*fn)(void *), void *arg, bool first);

/**
 * Stop every vCPU outside KVM_RUN with its state consistent (pending I/O completed) and keep
 * them there. Returns 0 (also when already paused), or -ESHUTDOWN if the VM is ending.
 */
int vm_pause(struct vm *vm);

/** Let paused vCPUs run again where they stopped. Returns 0, or -ESHUTDOWN. */
int vm_resume(struct vm *vm);

/** Ask vm_run() to end with @kind; @reason is a static string. Safe from any thread. */
void vm_request_stop(struct vm *vm, enum vm_exit_kind kind, const char *reason);

/** Fill @st. Safe from any thread. */
void vm_get_status(struct vm *vm, struct vm_status *st);

/** The signal that stopped the VM (VM_EXIT_SIGNAL), else 0. */
int vm_stop_signal(struct vm *vm);

/** The guest's RAM. */
struct gmem *vm_memory(struct vm *vm);

/** The configuration the VM was created with (strings owned by the caller of vm_create). */
const struct vm_config *vm_get_config(struct vm *vm);

/**
 * Add control-socket commands (e.g. snapshot/'s "save") before vm_run(); @table and its
 * strings must outlive the VM. Returns 0, -ENOTCONN without --api, or api_add_commands()'s
 * error.
 */
struct api_command;
int vm_api_add_commands(struct vm *vm, const struct api_command *table, void *opaque);

/**
 * The control socket server (for api_event()/api_flush_events() from snapshot/ and migrate/
 * handlers), or NULL without --api. Valid until vm_run() returns.
 */
struct api_server;
struct api_server *vm_api_server(struct vm *vm);

/*
 * State access for snapshot and migration. All of these need the VM paused (vm_pause()) or
 * not yet running (restore), and return 0 or -errno after logging.
 */

/** Encode vCPU @index's complete KVM state (kvmstate record, KVMSTATE_VCPU_VERSION). */
int vm_vcpu_save(struct vm *vm, unsigned int index, struct enc *e);
/** Set vCPU @index's state from a record of @version. */
int vm_vcpu_load(struct vm *vm, unsigned int index, struct dec *d, unsigned int version);
/** VM-wide KVM state: PICs, IOAPIC, PIT, clock (KVMSTATE_VM_VERSION). */
int vm_arch_save(struct vm *vm, struct enc *e);
int vm_arch_load(struct vm *vm, struct dec *d, unsigned int version);

/** One device of the machine's device table. */
struct vm_device_info {
	const char *name;	/* "uart-com1" */
	uint16_t id;		/* stable id, the image's device section instance */
	uint16_t version;	/* state version this build writes */
};

/** Number of devices; vm_device_info() for index 0..n-1. */
unsigned int vm_device_count(const struct vm *vm);
const struct vm_device_info *vm_device_get_info(const struct vm *vm, unsigned int index);
/** Encode device @index's state (its current version). */
int vm_device_save(struct vm *vm, unsigned int index, struct enc *e);
/**
 * Load the state of the device with stable @id from a record of @version. -ENOENT when
 * this machine has no such device, -ENOTSUP for a version it cannot read.
 */
int vm_device_load(struct vm *vm, uint16_t id, struct dec *d, unsigned int version);
/** The name of the device type owning stable @id ("virtio-blk"), or NULL if unknown. */
const char *vm_device_type_name(uint16_t id);
/**
 * True when a device with @id exists and reads @version (for img_check_required). With @vm
 * NULL: when this build knows a device type with that id and version.
 */
bool vm_device_known(const struct vm *vm, uint16_t id, unsigned int version);

/** /dev/kvm's supported CPUID (malloc'ed entries into *@out, count returned) or -errno. */
struct kvm_cpuid_entry2;
int vm_host_cpuid(struct kvm_cpuid_entry2 **out);

/** The vCPUs' TSC frequency in kHz (KVM_GET_TSC_KHZ), or 0 if KVM does not say. */
uint64_t vm_tsc_khz(struct vm *vm);

/**
 * True once vm_run() has started every vCPU thread (a migration destination confirms on
 * this; a VM that fails to start never gets there). Safe from any thread.
 */
bool vm_vcpus_started(struct vm *vm);

/*
 * The VM generation ID (vmm/acpi.h's VGEN device): 16 random bytes in guest memory at
 * LAYOUT_VMGENID_ADDR. A new VM gets a fresh one at creation.
 */

/**
 * Write a new random generation ID into guest memory (marking it dirty) and, with @notify,
 * raise the GED interrupt so the guest's vmgenid driver re-reads it (a new VM has no driver
 * yet: it reads the ID when it looks). Restore, clone and a migration destination call this before the vCPUs run, so
 * no two VMs from one image share an ID. Returns 0 or -errno.
 */
int vm_new_generation(struct vm *vm, bool notify);

/**
 * Give every network interface a new random MAC (a clone must not share its image's) and
 * tell the guest (a config-change interrupt). Call before the vCPUs run. 0 or -errno.
 */
int vm_new_macs(struct vm *vm);

/**
 * Move the guest's clock (kvmclock, hence its monotonic and wall time) forward by @ns, e.g.
 * the time since an image was saved, so a clone's wall clock reads now. The TSC is left as it
 * is. Call with the VM paused or not yet running. 0 or -errno.
 */
int vm_clock_forward(struct vm *vm, uint64_t ns);

/**
 * For a snapshot of the paused VM: make each disk's content a layer that never changes again
 * and that the image can name, the VM going on writing elsewhere. A disk with an overlay: its
 * overlay is flushed and renamed "<@image_path>.disk<k>-<stamp>", and a new empty overlay on it
 * takes the old name (the running VM keeps its file). A read-only disk is its own frozen state.
 * A raw writable disk cannot be frozen: -EBUSY with one line in @err, unless @stopping (the VM
 * ends with the save, so the file stays as saved). @out[k] receives what a restore must open
 * (path; overlay NULL). On error the disks already frozen stay so (harmless: the VM runs on).
 */
int vm_disks_freeze(struct vm *vm, const char *image_path, bool stopping,
		    struct vm_disk_config *out, char *err, size_t errlen);

/** The current generation ID as 32 lowercase hex digits + NUL. */
void vm_generation_hex(struct vm *vm, char out[33]);

/** Release everything vm_create() made. */
void vm_destroy(struct vm *vm);

#endif
