/* SPDX-License-Identifier: MIT */
#include "vm.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "util/log.h"
#include "vmm/boot.h"
#include "vmm/cpuid.h"
#include "vmm/evloop.h"
#include "vmm/i8042.h"
#include "vmm/iobus.h"
#include "vmm/uart.h"
#include "vmm/vm_internal.h"

/* Signal used to kick a vCPU thread out of KVM_RUN. */
#define SIG_VCPU_KICK SIGUSR1

#define COM1_BASE 0x3f8
#define COM1_IRQ 4
#define I8042_DATA 0x60
#define I8042_CMD 0x64

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void kick_handler(int sig)
{
	(void)sig;
}

/* ---- devices: glue between device models and KVM ---- */

void vm_console_tx(void *opaque, const uint8_t *buf, size_t n)
{
	struct vm *vm = opaque;
	while (n > 0) {
		ssize_t w = write(vm->console_out, buf, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			/* A closed console must not stop the guest; drop the output. */
			log_ratelimited(LOG_WARN, "console write failed: %s", strerror(errno));
			return;
		}
		buf += w;
		n -= (size_t)w;
	}
}

void vm_uart_irq(void *opaque, int level)
{
	struct vm *vm = opaque;
	struct kvm_irq_level irq = { .irq = COM1_IRQ, .level = level ? 1 : 0 };
	if (ioctl(vm->vm_fd, KVM_IRQ_LINE, &irq) < 0)
		log_ratelimited(LOG_WARN, "KVM_IRQ_LINE %d: %s", COM1_IRQ, strerror(errno));
}

void vm_i8042_reset(void *opaque)
{
	vm_request_stop(opaque, VM_EXIT_POWEROFF, "guest reset through the i8042 controller");
}

/* ---- vCPU threads ---- */

static void vcpu_kick(struct vcpu *vc)
{
	vc->run->immediate_exit = 1;
	if (vc->thread_started)
		pthread_kill(vc->thread, SIG_VCPU_KICK);
}

static void vcpu_park(struct vcpu *vc)
{
	struct vm *vm = vc->vm;
	pthread_mutex_lock(&vm->lock);
	vm->nparked++;
	pthread_cond_broadcast(&vm->cond);
	while (vm->pause_req && !vm->stopping)
		pthread_cond_wait(&vm->cond, &vm->lock);
	vm->nparked--;
	pthread_mutex_unlock(&vm->lock);
}

static void vcpu_report_fault(struct vcpu *vc, const char *what)
{
	struct vm *vm = vc->vm;
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	char bytes[64] = "?";

	memset(&regs, 0, sizeof(regs));
	memset(&sregs, 0, sizeof(sregs));
	ioctl(vc->fd, KVM_GET_REGS, &regs);
	ioctl(vc->fd, KVM_GET_SREGS, &sregs);

	/* The instruction bytes at CS:RIP, through the guest's own page tables. */
	struct kvm_translation tr = { .linear_address = sregs.cs.base + regs.rip };
	if (ioctl(vc->fd, KVM_TRANSLATE, &tr) == 0 && tr.valid) {
		uint8_t insn[15];
		unsigned int n = 0;
		for (; n < sizeof(insn); n++) {
			const uint8_t *p = gmem_ptr(&vm->mem, tr.physical_address + n, 1);
			if (!p)
				break;
			insn[n] = *p;
		}
		size_t off = 0;
		for (unsigned int i = 0; i < n && off + 4 < sizeof(bytes); i++)
			off += (size_t)snprintf(bytes + off, sizeof(bytes) - off, "%s%02x",
						i ? " " : "", insn[i]);
		if (n == 0)
			snprintf(bytes, sizeof(bytes), "(rip not in RAM)");
	}
	snprintf(vm->fault_msg, sizeof(vm->fault_msg),
		 "%s on vCPU %u: rip=0x%llx cs=0x%x cpl=%u cr0=0x%llx cr3=0x%llx insn=[%s]", what,
		 vc->index, (unsigned long long)regs.rip, sregs.cs.selector, sregs.cs.dpl,
		 (unsigned long long)sregs.cr0, (unsigned long long)sregs.cr3, bytes);
	vm_request_stop(vm, VM_EXIT_GUEST_CRASH, vm->fault_msg);
}

/* Handle one exit; returns false when the vCPU must stop. */
static bool vcpu_handle_exit(struct vcpu *vc)
{
	struct vm *vm = vc->vm;
	struct kvm_run *run = vc->run;

	switch (run->exit_reason) {
	case KVM_EXIT_IO: {
		uint8_t *data = (uint8_t *)run + run->io.data_offset;
		bool is_write = run->io.direction == KVM_EXIT_IO_OUT;
		/* Bounds of the data area were fixed by KVM; count*size fits in the run page. */
		for (uint32_t i = 0; i < run->io.count; i++)
			iobus_dispatch(&vm->bus, IO_SPACE_PIO, run->io.port,
				       data + (size_t)i * run->io.size, run->io.size, is_write);
		return true;
	}
	case KVM_EXIT_MMIO:
		if (run->mmio.len > 8) {
			log_ratelimited(LOG_WARN, "MMIO access of %u bytes ignored", run->mmio.len);
			return true;
		}
		iobus_dispatch(&vm->bus, IO_SPACE_MMIO, run->mmio.phys_addr, run->mmio.data,
			       run->mmio.len, run->mmio.is_write);
		return true;
	case KVM_EXIT_HLT:
		/* Only without an in-kernel LAPIC; with it HLT never exits. */
		return true;
	case KVM_EXIT_SHUTDOWN:
		vcpu_report_fault(vc, "guest triple fault (shutdown)");
		return false;
	case KVM_EXIT_SYSTEM_EVENT:
		if (run->system_event.type == KVM_SYSTEM_EVENT_SHUTDOWN ||
		    run->system_event.type == KVM_SYSTEM_EVENT_RESET) {
			vm_request_stop(vm, VM_EXIT_POWEROFF, "guest system event: power off");
			return false;
		}
		if (run->system_event.type == KVM_SYSTEM_EVENT_CRASH) {
			vcpu_report_fault(vc, "guest reported a crash");
			return false;
		}
		return true;
	case KVM_EXIT_INTERNAL_ERROR: {
		char what[96];
		snprintf(what, sizeof(what), "KVM internal error (suberror %u%s)",
			 run->internal.suberror,
			 run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION ?
				 ": instruction emulation failed" :
				 "");
		vcpu_report_fault(vc, what);
		return false;
	}
	case KVM_EXIT_FAIL_ENTRY: {
		char what[96];
		snprintf(what, sizeof(what), "VM entry failed (hardware reason 0x%llx)",
			 (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		vcpu_report_fault(vc, what);
		return false;
	}
	default: {
		char what[64];
		snprintf(what, sizeof(what), "unexpected KVM exit %u", run->exit_reason);
		vcpu_report_fault(vc, what);
		return false;
	}
	}
}

static void *vcpu_thread(void *arg)
{
	struct vcpu *vc = arg;
	struct vm *vm = vc->vm;
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIG_VCPU_KICK);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);

	/*
	 * Wait for vm_run() to open the gate once every vCPU thread exists: a vCPU that ran
	 * at once would take the core the main thread needs to create the others (with 4 busy
	 * vCPUs on 2 cores that cost a migration's cutover 10 ms here).
	 */
	pthread_mutex_lock(&vm->lock);
	while (!vm->gate_open)
		pthread_cond_wait(&vm->cond, &vm->lock);
	pthread_mutex_unlock(&vm->lock);

	while (!atomic_load(&vm->stopping)) { /* a stop before the gate opened: never run */
		int r = ioctl(vc->fd, KVM_RUN, 0);
		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN) {
				/*
				 * Kicked. KVM has completed any pending I/O before returning, so
				 * the state is consistent here: park if a pause is requested.
				 */
				if (atomic_load(&vm->stopping))
					break;
				if (atomic_load(&vm->pause_req))
					vcpu_park(vc);
				if (atomic_load(&vm->stopping))
					break;
				continue;
			}
			char what[96];
			snprintf(what, sizeof(what), "KVM_RUN failed: %s", strerror(errno));
			vcpu_report_fault(vc, what);
			break;
		}
		if (!vcpu_handle_exit(vc))
			break;
		if (atomic_load(&vm->stopping))
			break;
	}
	pthread_mutex_lock(&vm->lock);
	vc->exited = true;
	vm->nexited++;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	return NULL;
}

/* ---- pause / resume / stop ---- */

int vm_pause(struct vm *vm)
{
	uint64_t t0 = now_ns();
	pthread_mutex_lock(&vm->pause_lock);
	pthread_mutex_lock(&vm->lock);
	if (vm->stopping) {
		pthread_mutex_unlock(&vm->lock);
		pthread_mutex_unlock(&vm->pause_lock);
		return -ESHUTDOWN;
	}
	if (vm->paused) {
		pthread_mutex_unlock(&vm->lock);
		pthread_mutex_unlock(&vm->pause_lock);
		return 0;
	}
	atomic_store(&vm->pause_req, 1);
	for (unsigned int i = 0; i < vm->ncpus; i++)
		vcpu_kick(&vm->vcpus[i]);
	while (vm->nparked + vm->nexited < vm->ncpus && !vm->stopping)
		pthread_cond_wait(&vm->cond, &vm->lock);
	int r = vm->stopping ? -ESHUTDOWN : 0;
	if (!r) {
		/* Devices too: no request half done while the state is read. */
		evloop_pause(vm->loop);
		vm->paused = true;
		vm->paused_at_ns = now_ns();
		vm->last_pause_us = (vm->paused_at_ns - t0) / 1000;
	}
	pthread_mutex_unlock(&vm->lock);
	pthread_mutex_unlock(&vm->pause_lock);
	return r;
}

int vm_resume(struct vm *vm)
{
	pthread_mutex_lock(&vm->pause_lock);
	pthread_mutex_lock(&vm->lock);
	int r = vm->stopping ? -ESHUTDOWN : 0;
	if (vm->paused) {
		for (unsigned int i = 0; i < vm->ncpus; i++)
			vm->vcpus[i].run->immediate_exit = 0;
		atomic_store(&vm->pause_req, 0);
		evloop_resume(vm->loop);
		vm->paused = false;
		vm->paused_total_ns += now_ns() - vm->paused_at_ns;
		pthread_cond_broadcast(&vm->cond);
	}
	pthread_mutex_unlock(&vm->lock);
	pthread_mutex_unlock(&vm->pause_lock);
	return r;
}

void vm_request_stop(struct vm *vm, enum vm_exit_kind kind, const char *reason)
{
	pthread_mutex_lock(&vm->lock);
	if (!vm->stopping) {
		vm->exit_kind = kind;
		vm->exit_reason = reason;
		atomic_store(&vm->stopping, 1);
		for (unsigned int i = 0; i < vm->ncpus; i++)
			vcpu_kick(&vm->vcpus[i]);
		pthread_cond_broadcast(&vm->cond);
		uint64_t one = 1;
		ssize_t w = write(vm->stop_efd, &one, sizeof(one));
		(void)w;
	}
	pthread_mutex_unlock(&vm->lock);
}

void vm_get_status(struct vm *vm, struct vm_status *st)
{
	pthread_mutex_lock(&vm->lock);
	uint64_t now = now_ns();
	st->paused = vm->paused;
	st->ncpus = vm->ncpus;
	st->mem_size = vm->mem.size;
	st->uptime_ms = vm->start_ns ? (now - vm->start_ns) / 1000000 : 0;
	st->paused_total_ms =
		(vm->paused_total_ns + (vm->paused ? now - vm->paused_at_ns : 0)) / 1000000;
	st->last_pause_us = vm->last_pause_us;
	pthread_mutex_unlock(&vm->lock);
}

int vm_stop_signal(struct vm *vm)
{
	return vm->stop_signal;
}

struct gmem *vm_memory(struct vm *vm)
{
	return &vm->mem;
}

/* ---- running ---- */

static struct termios saved_tio;
static bool tio_saved;

static void console_raw(struct vm *vm)
{
	if (!vm->console_is_tty || tcgetattr(vm->console_in, &saved_tio) < 0)
		return;
	struct termios t = saved_tio;
	/* Keys go to the guest; ISIG stays so Ctrl-C still reaches vmsnap. */
	t.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
	t.c_iflag &= ~(tcflag_t)(ICRNL);
	t.c_cc[VMIN] = 1;
	t.c_cc[VTIME] = 0;
	if (tcsetattr(vm->console_in, TCSANOW, &t) == 0)
		tio_saved = true;
}

static void console_restore(struct vm *vm)
{
	if (tio_saved)
		tcsetattr(vm->console_in, TCSANOW, &saved_tio);
	tio_saved = false;
}

/* Feed console input to the UART, waiting while its receive FIFO is full. */
static void console_input(struct vm *vm, const uint8_t *buf, size_t n)
{
	while (n > 0 && !atomic_load(&vm->stopping)) {
		size_t took = uart_receive(vm->uart, buf, n);
		buf += took;
		n -= took;
		if (n > 0) {
			struct timespec ts = { 0, 200000 };
			nanosleep(&ts, NULL);
		}
	}
}

int vm_on_running(struct vm *vm, void (*fn)(void *), void *arg, bool first)
{
	if (vm->non_running >= VM_ON_RUNNING_MAX)
		return -ENOSPC;
	vm->on_running[vm->non_running].fn = fn;
	vm->on_running[vm->non_running].arg = arg;
	vm->on_running[vm->non_running].first = first;
	vm->non_running++;
	return 0;
}

static void run_hooks(struct vm *vm, bool first)
{
	for (unsigned int i = 0; i < vm->non_running && !atomic_load(&vm->stopping); i++)
		if (vm->on_running[i].first == first)
			vm->on_running[i].fn(vm->on_running[i].arg);
}

enum vm_exit_kind vm_run(struct vm *vm, const char **reason)
{
	sigset_t block, old;
	struct sigaction sa;
	int sfd = -1;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = kick_handler;
	sigaction(SIG_VCPU_KICK, &sa, NULL);

	/* Signals are taken by the main loop through a signalfd; vCPU threads only see kicks. */
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGHUP);
	sigaddset(&block, SIG_VCPU_KICK);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	sigdelset(&block, SIG_VCPU_KICK);
	sfd = signalfd(-1, &block, SFD_CLOEXEC);
	if (sfd < 0) {
		log_errno("signalfd");
		vm_request_stop(vm, VM_EXIT_ERROR, "cannot set up signal handling");
	}

	vm->start_ns = now_ns();
	if (!atomic_load(&vm->stopping) && vm_api_start(vm) < 0)
		vm_request_stop(vm, VM_EXIT_ERROR, ""); /* already logged */
	/* The device I/O thread, after the signal mask so it never takes SIGINT. */
	if (!atomic_load(&vm->stopping) && evloop_start(vm->loop) < 0)
		vm_request_stop(vm, VM_EXIT_ERROR, "cannot start the device I/O thread");

	for (unsigned int i = 0; i < vm->ncpus && !atomic_load(&vm->stopping); i++) {
		struct vcpu *vc = &vm->vcpus[i];
		int e = pthread_create(&vc->thread, NULL, vcpu_thread, vc);
		if (e) {
			log_err("cannot start vCPU %u's thread: %s", i, strerror(e));
			vm_request_stop(vm, VM_EXIT_ERROR, "cannot start vCPU threads");
			break;
		}
		pthread_mutex_lock(&vm->lock);
		vc->thread_started = true;
		/* A stop requested before this thread existed could not kick it. */
		if (atomic_load(&vm->stopping))
			vc->run->immediate_exit = 1;
		pthread_mutex_unlock(&vm->lock);
	}

	run_hooks(vm, true);
	pthread_mutex_lock(&vm->lock);
	vm->gate_open = true;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	run_hooks(vm, false);

	bool input_open = vm->console_in >= 0;
	if (input_open)
		console_raw(vm);
	while (!atomic_load(&vm->stopping)) {
		struct pollfd pfd[3] = {
			{ .fd = vm->stop_efd, .events = POLLIN },
			{ .fd = sfd, .events = POLLIN },
			{ .fd = input_open ? vm->console_in : -1, .events = POLLIN },
		};
		if (poll(pfd, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			log_errno("poll");
			vm_request_stop(vm, VM_EXIT_ERROR, "main loop failed");
			break;
		}
		if (pfd[1].revents & POLLIN) {
			struct signalfd_siginfo si;
			if (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
				static char msg[64];
				snprintf(msg, sizeof(msg), "stopped by signal %s",
					 strsignal((int)si.ssi_signo));
				pthread_mutex_lock(&vm->lock);
				if (!vm->stopping)
					vm->stop_signal = (int)si.ssi_signo;
				pthread_mutex_unlock(&vm->lock);
				vm_request_stop(vm, VM_EXIT_SIGNAL, msg);
			}
		}
		if (pfd[2].revents & (POLLIN | POLLHUP | POLLERR)) {
			uint8_t buf[256];
			ssize_t n = read(vm->console_in, buf, sizeof(buf));
			if (n > 0)
				console_input(vm, buf, (size_t)n);
			else if (n == 0 || (errno != EINTR && errno != EAGAIN))
				input_open = false; /* EOF on stdin: the guest keeps running */
		}
	}
	console_restore(vm);

	for (unsigned int i = 0; i < vm->ncpus; i++)
		if (vm->vcpus[i].thread_started)
			pthread_join(vm->vcpus[i].thread, NULL);
	vm_api_stop(vm);
	if (sfd >= 0)
		close(sfd);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (reason)
		*reason = vm->exit_reason ? vm->exit_reason : "";
	return vm->exit_kind;
}
