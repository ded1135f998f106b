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

#include "vmm/gmem.h"
#include "vmm/iobus.h"
#include "vmm/vm.h"

struct uart;
struct i8042;
struct api_server;

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
	uint64_t paused_at_ns;
	uint64_t paused_total_ns;
	uint64_t last_pause_us;
};

/* Device glue (vm.c), used by vm_setup.c when wiring devices. */
void vm_console_tx(void *opaque, const uint8_t *buf, size_t n);
void vm_uart_irq(void *opaque, int level);
void vm_i8042_reset(void *opaque);

/** KVM_GET_SUPPORTED_CPUID into a malloc'ed list, or NULL after logging. */
struct kvm_cpuid2 *vm_supported_cpuid(int kvm_fd);

/** Register the control socket commands (vm_api.c) and start the server if configured. */
int vm_api_create(struct vm *vm);
int vm_api_start(struct vm *vm);
void vm_api_stop(struct vm *vm);

#endif
