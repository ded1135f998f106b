/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_MIGRATE_MIGRATE_H
#define VMSNAP_MIGRATE_MIGRATE_H

/*
 * Live migration over TCP (docs/MIGRATION.md). The source side runs inside the VMM that owns
 * the guest: the control-socket command "migrate" starts a migration thread (handshake, full
 * pass, dirty rounds with auto-converge, pause + final round + state, confirmation) and
 * "migrate-status"/"migrate-cancel" watch and stop it; "migrate-progress" events go to
 * subscribers. Until the destination confirms that the guest runs there, any failure resumes
 * the source guest; after it, the source VM ends (vm_run returns VM_EXIT_QUIT).
 * The destination side (`vmsnap receive`) builds the VM from the stream.
 */

#include <stdbool.h>
#include <stdint.h>

#include "migrate/conn.h"
#include "vmm/vm.h"

struct vm;

/**
 * Register "migrate", "migrate-status", "migrate-cancel" on @vm's control socket (before
 * vm_run). One VM per process. Returns 0, -ENOTCONN without a control socket, or -errno.
 */
int mig_api_register(struct vm *vm);

/**
 * After vm_run() returned and before vm_destroy(): cancel a migration still running and join
 * its thread. Safe to call when none was started.
 */
void mig_api_shutdown(struct vm *vm);

struct mig_receive_opts {
	const char *listen;   /* "ADDR:PORT" */
	const char *api_path; /* control socket of the new VM, or NULL */
	const char *console;  /* as vm_config.console */
	const char *mem_backend; /* as vm_config.mem_backend */
	const struct vm_disk_config *disks; /* as vm_config: the source's devices, in order */
	unsigned int ndisks;
	const struct vm_net_config *nets;
	unsigned int nnets;
	struct mig_tls_opts tls;
	int accept_timeout_s; /* 0: wait forever for the source */
	int stall_timeout_s;  /* a silent source fails the receive after this (default 30) */
	/* Called once listening (e.g. to print the port); may be NULL. */
	void (*listening)(void *arg, int port);
	void *listening_arg;
};

struct mig_receive_stats {
	uint64_t total_us;   /* accept to state loaded */
	uint64_t bytes;	     /* stream bytes received */
	uint64_t pages;	     /* page-run pages received (zero pages included) */
	uint32_t rounds;
	uint64_t populate_us; /* backing RAM in bulk (in parallel with receiving) */
	char transport[96];
};

struct mig_receive;

/**
 * Listen, accept one source, run the handshake (refusing an incompatible source before any
 * page: protocol, CPU features, TSC frequency, RAM layout, devices), create the VM, receive
 * memory and state to the END record. On success the VM is ready for vm_run() and
 * mig_receive_confirm() must be called just before it. On failure the partial VM is
 * discarded, one clear error is logged, the source is told why (when the link still works).
 */
int mig_receive(const struct mig_receive_opts *o, struct mig_receive **out,
		struct mig_receive_stats *st);

struct vm *mig_receive_vm(struct mig_receive *rx);

/**
 * Arrange the confirmation: vm_run() tells the source the guest runs here from its own
 * thread the moment every vCPU thread exists (the source then ends); a thread of ours tells
 * the source to resume if the VM does not start, then waits for the source's ACK. Returns 0
 * or -errno.
 */
int mig_receive_confirm(struct mig_receive *rx);

/**
 * After vm_run() returned: join the confirmation thread; true when the source acknowledged.
 */
bool mig_receive_finish(struct mig_receive *rx);

/** Destroy the VM and free everything. NULL is fine. */
void mig_receive_free(struct mig_receive *rx);

#endif
