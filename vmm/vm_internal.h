/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_VMM_VM_INTERNAL_H
#define VMSNAP_VMM_VM_INTERNAL_H

/* The VM's insides, shared by the files of vmm/ only. */

#include <linux/kvm.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "formats/codec.h"
#include "vmm/acpi.h"
#include "vmm/gmem.h"
#include "vmm/iobus.h"
#include "vmm/layout.h"
#include "vmm/vm.h"

struct uart;
struct i8042;
struct api_server;
struct evloop;
struct virtio_mmio;

/* One virtio-mmio slot (vm_devices.c): slot i at LAYOUT_VIRTIO_MMIO_BASE + i * STRIDE. */
struct vm_virtio {
	uint32_t type;		/* VIRTIO_ID_BLOCK or VIRTIO_ID_NET */
	unsigned int index;	/* n-th device of its type */
	void *dev;		/* struct virtio_blk / struct virtio_net */
	struct virtio_mmio *t;
	uint64_t base;
	uint32_t gsi;
	char name[24];		/* "virtio-blk0" */
};

/* One entry of the machine's device table (vm_state.c): what snapshot and migration walk. */
struct vm_dev {
	struct vm_device_info info;
	int (*save)(void *opaque, struct enc *e);
	int (*load)(void *opaque, struct dec *d, unsigned int version);
	void *opaque;
};
#define VM_MAX_DEVS (2 + LAYOUT_VIRTIO_MAX)

struct vcpu {
	struct vm *vm;
	unsigned int index;
	int fd;
	struct kvm_run *run;
	pthread_t thread;
	bool thread_started;
	bool exited;
};

struct vm {
	struct vm_config cfg;
	int kvm_fd;
	int vm_fd;
	size_t run_size;
	struct gmem mem;
	unsigned int ncpus;
	struct vcpu *vcpus;
	struct iobus bus;

	struct uart *uart;
	struct i8042 *kbd;
	int console_out;	/* fd guest console output goes to */
	int console_in;		/* fd console input comes from, or -1 */
	bool console_is_tty;
	struct api_server *api;

	struct evloop *loop;	/* device I/O thread */
	struct vm_virtio virtio[LAYOUT_VIRTIO_MAX];
	unsigned int nvirtio;
	struct acpi_pm pm;
	struct vm_dev devs[VM_MAX_DEVS];
	unsigned int ndevs;
	/* The disks as the VM runs them now (cfg.disks points here): a snapshot's freeze
	 * moves a disk onto a new layer, and a later save or restore must name that one. */
	struct vm_disk_config disks[VM_MAX_DISKS];
	char *disk_strs[VM_MAX_DISKS][2];

	/* lock guards everything below; pause_lock serialises pause/resume callers. */
	pthread_mutex_t lock;
	pthread_mutex_t pause_lock;
	pthread_cond_t cond;
	_Atomic int pause_req;
	_Atomic int stopping;
	bool paused;
	unsigned int nparked;
	unsigned int nexited;
	enum vm_exit_kind exit_kind;
	const char *exit_reason;
	char fault_msg[256];
	int stop_signal;
	int stop_efd;		/* eventfd: written once when the VM must end */
	uint64_t start_ns;
	bool gate_open;		    /* vm_run(): every vCPU thread exists, they may run (lock) */
	struct {
		void (*fn)(void *);
		void *arg;
		bool first;
	} on_running[VM_ON_RUNNING_MAX]; /* vm_on_running() */
	unsigned int non_running;
	uint64_t paused_at_ns;
	uint64_t paused_total_ns;
	uint64_t last_pause_us;
};

/* Device glue (vm.c), used by vm_setup.c when wiring devices. */
void vm_console_tx(void *opaque, const uint8_t *buf, size_t n);
void vm_uart_irq(void *opaque, int level);
void vm_i8042_reset(void *opaque);

/*
 * Devices beyond the legacy ones (vm_devices.c): the I/O thread, the virtio devices from the
 * config, ACPI tables (new VMs only) and the ACPI PM port. vm_devices_create() needs vm_fd and
 * RAM; it fills the device table. Returns 0 or -errno after logging.
 */
int vm_devices_create(struct vm *vm);
/** Build the ACPI tables (not on restore: they are in the saved RAM); *rsdp for the boot. */
int vm_devices_build_acpi(struct vm *vm, uint64_t *rsdp);
void vm_devices_destroy(struct vm *vm);
/** Device table entries for the legacy devices and the virtio ones (vm_state.c). */
void vm_devtable_build(struct vm *vm);

/** A --net config as virtio-net parameters (vm_options.c). 0 or -EINVAL after logging. */
struct virtio_net_params;
int vm_net_params(const struct vm_net_config *n, struct virtio_net_params *p);

/** KVM_GET_SUPPORTED_CPUID into a malloc'ed list, or NULL after logging. */
struct kvm_cpuid2 *vm_supported_cpuid(int kvm_fd);

/** Register the control socket commands (vm_api.c) and start the server if configured. */
int vm_api_create(struct vm *vm);
int vm_api_start(struct vm *vm);
void vm_api_stop(struct vm *vm);

#endif
