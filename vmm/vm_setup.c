/* SPDX-License-Identifier: MIT */
/* Creating a VM: KVM objects, RAM, vCPUs with CPUID/MSRs/LAPIC, devices, the kernel. */
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/log.h"
#include "vmm/boot.h"
#include "vmm/cpuid.h"
#include "vmm/i8042.h"
#include "vmm/uart.h"
#include "vmm/vm_internal.h"


#define KVM_TSS_ADDR 0xfffbd000ul
#define KVM_IDENTITY_MAP_ADDR 0xfffbc000ull
#define MAX_KERNEL_SIZE (512ull << 20)
#define MAX_INITRD_SIZE (2ull << 30)

/* Read a whole file into a private read-only mapping. */
static int map_file(const char *what, const char *path, uint8_t **data, size_t *len,
		    uint64_t max)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int r = -errno;
		log_err("cannot open %s '%s': %s", what, path, strerror(errno));
		return r;
	}
	struct stat st;
	int r = 0;
	if (fstat(fd, &st) < 0) {
		r = -errno;
		log_errno("cannot stat %s '%s'", what, path);
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		log_err("%s '%s' is not a regular file", what, path);
		r = -EINVAL;
		goto out;
	}
	if (st.st_size == 0) {
		log_err("%s '%s' is empty", what, path);
		r = -ENOEXEC;
		goto out;
	}
	if ((uint64_t)st.st_size > max) {
		log_err("%s '%s' is too large (%lld bytes, limit %llu)", what, path,
			(long long)st.st_size, (unsigned long long)max);
		r = -EFBIG;
		goto out;
	}
	void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	if (p == MAP_FAILED) {
		r = -errno;
		log_errno("cannot map %s '%s'", what, path);
		goto out;
	}
	*data = p;
	*len = (size_t)st.st_size;
out:
	close(fd);
	return r;
}

static int kvm_check_caps(int kvm_fd)
{
	static const struct {
		long cap;
		const char *name;
	} need[] = {
		{ KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP" },
		{ KVM_CAP_PIT2, "KVM_CAP_PIT2" },
		{ KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY" },
		{ KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT" },
		{ KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID" },
	};
	int version = ioctl(kvm_fd, KVM_GET_API_VERSION, 0);
	if (version != KVM_API_VERSION) {
		log_err("/dev/kvm speaks API version %d, vmsnap needs %d", version,
			KVM_API_VERSION);
		return -ENOTSUP;
	}
	for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
		if (ioctl(kvm_fd, KVM_CHECK_EXTENSION, need[i].cap) <= 0) {
			log_err("KVM lacks %s, which vmsnap needs", need[i].name);
			return -ENOTSUP;
		}
	}
	return 0;
}

/*
 * KVM_GET_SUPPORTED_CPUID, asked once per process: it does not change while we run, and a
 * restore would otherwise ask twice (the image's CPU check, then the vCPUs). A copy each call.
 */
struct kvm_cpuid2 *vm_supported_cpuid(int kvm_fd)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	static struct kvm_cpuid2 *cached;
	static size_t cached_size;

	pthread_mutex_lock(&lock);
	for (unsigned int n = 128; !cached && n <= 4096; n *= 2) {
		size_t size = sizeof(*cached) + n * sizeof(cached->entries[0]);
		struct kvm_cpuid2 *c = calloc(1, size);
		if (!c)
			break;
		c->nent = n;
		if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
			cached = c;
			cached_size = size;
			break;
		}
		int e = errno;
		free(c);
		if (e != E2BIG) {
			errno = e;
			log_errno("KVM_GET_SUPPORTED_CPUID");
			break;
		}
	}
	struct kvm_cpuid2 *copy = cached ? malloc(cached_size) : NULL;
	if (copy)
		memcpy(copy, cached, cached_size);
	pthread_mutex_unlock(&lock);
	return copy;
}

/* LINT0 as ExtINT and LINT1 as NMI, as firmware leaves them for an OS that reads MP tables. */
static int vcpu_setup_lapic(struct vcpu *vc)
{
	struct kvm_lapic_state la;
	if (ioctl(vc->fd, KVM_GET_LAPIC, &la) < 0) {
		log_errno("KVM_GET_LAPIC on vCPU %u", vc->index);
		return -errno;
	}
	uint32_t lvt0, lvt1;
	memcpy(&lvt0, la.regs + 0x350, 4);
	memcpy(&lvt1, la.regs + 0x360, 4);
	lvt0 = (lvt0 & ~0x700u) | (7u << 8); /* delivery mode ExtINT */
	lvt1 = (lvt1 & ~0x700u) | (4u << 8); /* delivery mode NMI */
	memcpy(la.regs + 0x350, &lvt0, 4);
	memcpy(la.regs + 0x360, &lvt1, 4);
	if (ioctl(vc->fd, KVM_SET_LAPIC, &la) < 0) {
		log_errno("KVM_SET_LAPIC on vCPU %u", vc->index);
		return -errno;
	}
	return 0;
}

static int vcpu_setup(struct vm *vm, struct vcpu *vc, const struct kvm_cpuid2 *supported,
		      enum cpu_template tmpl)
{
	int r;
	vc->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)vc->index);
	if (vc->fd < 0) {
		r = -errno;
		log_errno("KVM_CREATE_VCPU %u", vc->index);
		return r;
	}
	vc->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vc->fd, 0);
	if (vc->run == MAP_FAILED) {
		vc->run = NULL;
		r = -errno;
		log_errno("mmap of vCPU %u's run area", vc->index);
		return r;
	}

	struct kvm_cpuid2 *cpuid =
		calloc(1, sizeof(*cpuid) + CPUID_MAX_ENTRIES * sizeof(cpuid->entries[0]));
	if (!cpuid)
		return -ENOMEM;
	unsigned int n = 0;
	r = cpuid_build(supported->entries, supported->nent, vc->index, vm->ncpus, tmpl,
			cpuid->entries, CPUID_MAX_ENTRIES, &n);
	if (r) {
		log_err("cannot build CPUID for vCPU %u: %s", vc->index, strerror(-r));
		free(cpuid);
		return r;
	}
	cpuid->nent = n;
	if (ioctl(vc->fd, KVM_SET_CPUID2, cpuid) < 0) {
		r = -errno;
		log_errno("KVM_SET_CPUID2 on vCPU %u", vc->index);
		free(cpuid);
		return r;
	}
	free(cpuid);

	struct msr_entry defaults[MSR_BOOT_MAX];
	unsigned int nmsr = msr_boot_defaults(defaults, MSR_BOOT_MAX);
	struct kvm_msrs *msrs = calloc(1, sizeof(*msrs) + MSR_BOOT_MAX * sizeof(msrs->entries[0]));
	if (!msrs)
		return -ENOMEM;
	for (unsigned int i = 0; i < nmsr; i++) {
		msrs->entries[i].index = defaults[i].index;
		msrs->entries[i].data = defaults[i].value;
	}
	msrs->nmsrs = nmsr;
	int set = ioctl(vc->fd, KVM_SET_MSRS, msrs);
	uint32_t refused = set >= 0 && (unsigned int)set < nmsr ? msrs->entries[set].index : 0;
	free(msrs);
	if (set < 0 || (unsigned int)set != nmsr) {
		log_err("KVM_SET_MSRS on vCPU %u: set %d of %u boot MSRs (first refused: 0x%x)",
			vc->index, set, nmsr, refused);
		return -EIO;
	}

	struct kvm_fpu fpu;
	memset(&fpu, 0, sizeof(fpu));
	fpu.fcw = 0x37f;
	fpu.mxcsr = 0x1f80;
	if (ioctl(vc->fd, KVM_SET_FPU, &fpu) < 0) {
		r = -errno;
		log_errno("KVM_SET_FPU on vCPU %u", vc->index);
		return r;
	}
	return vcpu_setup_lapic(vc);
}

static int open_console(struct vm *vm, const struct vm_config *cfg)
{
	vm->console_in = -1;
	if (!cfg->console || !strcmp(cfg->console, "stdio")) {
		vm->console_out = STDOUT_FILENO;
		vm->console_in = STDIN_FILENO;
		vm->console_is_tty = isatty(STDIN_FILENO);
		return 0;
	}
	vm->console_out = open(cfg->console, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_APPEND,
			       0644);
	if (vm->console_out < 0) {
		int r = -errno;
		log_err("cannot open console file '%s': %s", cfg->console, strerror(errno));
		return r;
	}
	return 0;
}

static int setup_devices(struct vm *vm)
{
	int r;
	vm->uart = uart_create(&(struct uart_ops){ .tx = vm_console_tx, .set_irq = vm_uart_irq },
			       vm);
	vm->kbd = i8042_create(vm_i8042_reset, vm);
	if (!vm->uart || !vm->kbd)
		return -ENOMEM;
	r = iobus_register(&vm->bus, IO_SPACE_PIO, 0x3f8, 8, uart_io, vm->uart, "uart-com1");
	if (!r)
		r = iobus_register(&vm->bus, IO_SPACE_PIO, 0x60, 1, i8042_io_data, vm->kbd,
				   "i8042-data");
	if (!r)
		r = iobus_register(&vm->bus, IO_SPACE_PIO, 0x64, 1, i8042_io_cmd, vm->kbd,
				   "i8042-cmd");
	if (r)
		log_err("cannot register devices: %s", strerror(-r));
	return r;
}

static int check_config(const struct vm_config *cfg, enum cpu_template *tmpl)
{
	if (!cfg->kernel && !cfg->restore) {
		log_err("no kernel given (--kernel FILE)");
		return -EINVAL;
	}
	if (cfg->mem_size == 0 || cfg->mem_size % GMEM_PAGE_SIZE) {
		log_err("memory size must be a non-zero multiple of 4 KiB");
		return -EINVAL;
	}
	if (cfg->mem_size < (16ull << 20)) {
		log_err("memory size %llu bytes is below the minimum of 16 MiB",
			(unsigned long long)cfg->mem_size);
		return -EINVAL;
	}
	if (cfg->mem_size > VM_MAX_MEM) {
		log_err("memory size %llu bytes is above the maximum of %llu",
			(unsigned long long)cfg->mem_size, (unsigned long long)VM_MAX_MEM);
		return -EINVAL;
	}
	if (cfg->ncpus < 1 || cfg->ncpus > VM_MAX_CPUS) {
		log_err("vCPU count %u is out of range 1..%d", cfg->ncpus, VM_MAX_CPUS);
		return -EINVAL;
	}
	*tmpl = CPU_TEMPLATE_HOST;
	enum gmem_backend b;
	if (gmem_backend_parse(cfg->mem_backend, &b)) {
		log_err("unknown memory backend '%s' (known: memfd, anon)", cfg->mem_backend);
		return -EINVAL;
	}
	if (cfg->cpu_template && cpu_template_parse(cfg->cpu_template, tmpl)) {
		log_err("unknown CPU template '%s' (known: host, baseline)", cfg->cpu_template);
		return -EINVAL;
	}
	return 0;
}

/* Refuse RAM the host cannot give: more than its memory plus swap would fail later at
 * first touch with the OOM killer, far from the cause. */
static int check_host_memory(uint64_t size)
{
	long pages = sysconf(_SC_PHYS_PAGES);
	long psize = sysconf(_SC_PAGESIZE);
	if (pages > 0 && psize > 0 && size > (uint64_t)pages * (uint64_t)psize) {
		log_err("memory size %llu MiB exceeds the host's %llu MiB of RAM",
			(unsigned long long)(size >> 20),
			(unsigned long long)(((uint64_t)pages * (uint64_t)psize) >> 20));
		return -ENOMEM;
	}
	return 0;
}

int vm_create(const struct vm_config *cfg, struct vm **out)
{
	enum cpu_template tmpl;
	uint8_t *kernel = NULL, *initrd = NULL;
	size_t kernel_len = 0, initrd_len = 0;
	struct kvm_cpuid2 *supported = NULL;
	enum gmem_backend backend = GMEM_MEMFD;
	int r = check_config(cfg, &tmpl);
	if (r)
		return r;
	gmem_backend_parse(cfg->mem_backend, &backend); /* checked above */
	r = check_host_memory(cfg->mem_size);
	if (r)
		return r;

	/* Read the inputs before touching KVM, so bad files fail fast and clearly. */
	if (!cfg->restore) {
		r = map_file("kernel", cfg->kernel, &kernel, &kernel_len, MAX_KERNEL_SIZE);
		if (r)
			return r;
	}
	if (cfg->initrd && !cfg->restore) {
		r = map_file("initrd", cfg->initrd, &initrd, &initrd_len, MAX_INITRD_SIZE);
		if (r)
			goto out_files;
	}

	struct vm *vm = calloc(1, sizeof(*vm));
	if (!vm) {
		r = -ENOMEM;
		goto out_files;
	}
	vm->cfg = *cfg;
	vm->kvm_fd = vm->vm_fd = vm->stop_efd = vm->console_out = vm->console_in = -1;
	vm->mem.fd = -1;
	vm->ncpus = cfg->ncpus;
	pthread_mutex_init(&vm->lock, NULL);
	pthread_mutex_init(&vm->pause_lock, NULL);
	pthread_cond_init(&vm->cond, NULL);

	vm->stop_efd = eventfd(0, EFD_CLOEXEC);
	if (vm->stop_efd < 0) {
		r = -errno;
		log_errno("eventfd");
		goto fail;
	}
	vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0) {
		r = errno == ENOENT ? -ENODEV : -errno;
		log_err("cannot open /dev/kvm: %s (is KVM enabled and are you allowed to use it?)",
			strerror(errno));
		goto fail;
	}
	r = kvm_check_caps(vm->kvm_fd);
	if (r)
		goto fail;
	vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0) {
		r = -errno;
		log_errno("KVM_CREATE_VM");
		goto fail;
	}
	int rs = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (rs <= 0) {
		r = -EIO;
		log_errno("KVM_GET_VCPU_MMAP_SIZE");
		goto fail;
	}
	vm->run_size = (size_t)rs;
	if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, KVM_TSS_ADDR) < 0)
		log_warn("KVM_SET_TSS_ADDR: %s", strerror(errno));
	uint64_t idmap = KVM_IDENTITY_MAP_ADDR;
	if (ioctl(vm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0)
		log_debug("KVM_SET_IDENTITY_MAP_ADDR: %s", strerror(errno));
	/* RAM before the irqchip: with an in-kernel irqchip, every memslot change waits for a
	 * grace period (4-9 ms here, more than all the rest of creating the VM). */
	if (cfg->restore && cfg->mem_from_file)
		r = gmem_map_file(&vm->mem, cfg->mem_size, cfg->mem_file_fd, cfg->mem_file_offset);
	else
		r = gmem_create(&vm->mem, cfg->mem_size, backend);
	if (r)
		goto fail;
	for (unsigned int i = 0; i < vm->mem.nregions; i++) {
		struct gmem_region *rg = &vm->mem.regions[i];
		struct kvm_userspace_memory_region slot = {
			.slot = i,
			.guest_phys_addr = rg->gpa,
			.memory_size = rg->size,
			.userspace_addr = (uint64_t)(uintptr_t)(vm->mem.host + rg->offset),
		};
		if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &slot) < 0) {
			r = -errno;
			log_errno("KVM_SET_USER_MEMORY_REGION slot %u", i);
			goto fail;
		}
	}

	if (ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0) {
		r = -errno;
		log_errno("KVM_CREATE_IRQCHIP");
		goto fail;
	}
	struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
	if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) < 0) {
		r = -errno;
		log_errno("KVM_CREATE_PIT2");
		goto fail;
	}

	supported = vm_supported_cpuid(vm->kvm_fd);
	if (!supported) {
		r = -EIO;
		goto fail;
	}
	vm->vcpus = calloc(vm->ncpus, sizeof(*vm->vcpus));
	if (!vm->vcpus) {
		r = -ENOMEM;
		goto fail;
	}
	for (unsigned int i = 0; i < vm->ncpus; i++) {
		vm->vcpus[i].vm = vm;
		vm->vcpus[i].index = i;
		vm->vcpus[i].fd = -1;
	}
	for (unsigned int i = 0; i < vm->ncpus; i++) {
		r = vcpu_setup(vm, &vm->vcpus[i], supported, tmpl);
		if (r)
			goto fail;
	}

	r = open_console(vm, cfg);
	if (r)
		goto fail;
	r = setup_devices(vm);
	if (r)
		goto fail;
	r = vm_devices_create(vm);
	if (r)
		goto fail;

	r = vm_api_create(vm);
	if (r)
		goto fail;
	if (cfg->restore)
		goto done;

	/* The kernel last: it needs RAM, and the BSP's registers come from it. */
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	memset(&regs, 0, sizeof(regs));
	if (ioctl(vm->vcpus[0].fd, KVM_GET_SREGS, &sregs) < 0) {
		r = -errno;
		log_errno("KVM_GET_SREGS");
		goto fail;
	}
	struct boot_config bc = {
		.kernel = kernel,
		.kernel_len = kernel_len,
		.initrd = initrd,
		.initrd_len = initrd_len,
		.cmdline = cfg->cmdline ? cfg->cmdline : "",
		.ncpus = vm->ncpus,
	};
	r = vm_devices_build_acpi(vm, &bc.acpi_rsdp);
	if (!r)
		r = boot_load(&vm->mem, &bc, &regs, &sregs, NULL);
	if (!r)
		r = vm_new_generation(vm, false);
	if (r)
		goto fail;
	if (ioctl(vm->vcpus[0].fd, KVM_SET_SREGS, &sregs) < 0 ||
	    ioctl(vm->vcpus[0].fd, KVM_SET_REGS, &regs) < 0) {
		r = -errno;
		log_errno("setting the boot vCPU's registers");
		goto fail;
	}

done:
	free(supported);
	if (kernel)
		munmap(kernel, kernel_len);
	if (initrd)
		munmap(initrd, initrd_len);
	*out = vm;
	return 0;
fail:
	free(supported);
	vm_destroy(vm);
out_files:
	if (kernel)
		munmap(kernel, kernel_len);
	if (initrd)
		munmap(initrd, initrd_len);
	return r;
}

void vm_destroy(struct vm *vm)
{
	if (!vm)
		return;
	if (vm->vcpus) {
		for (unsigned int i = 0; i < vm->ncpus; i++) {
			struct vcpu *vc = &vm->vcpus[i];
			if (vc->run)
				munmap(vc->run, vm->run_size);
			if (vc->fd >= 0)
				close(vc->fd);
		}
		free(vm->vcpus);
	}
	vm_api_stop(vm);
	vm_devices_destroy(vm);
	if (vm->uart)
		uart_destroy(vm->uart);
	if (vm->kbd)
		i8042_destroy(vm->kbd);
	gmem_free(&vm->mem);
	if (vm->console_out >= 0 && vm->console_out != STDOUT_FILENO)
		close(vm->console_out);
	if (vm->vm_fd >= 0)
		close(vm->vm_fd);
	if (vm->kvm_fd >= 0)
		close(vm->kvm_fd);
	if (vm->stop_efd >= 0)
		close(vm->stop_efd);
	pthread_mutex_destroy(&vm->lock);
	pthread_mutex_destroy(&vm->pause_lock);
	pthread_cond_destroy(&vm->cond);
	free(vm);
}
