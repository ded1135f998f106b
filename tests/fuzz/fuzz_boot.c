/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for vmm/boot.c: the input is the kernel image, loaded with a small initrd and
 * command line into 64 MiB of guest RAM (mapped once, reused). boot_load() must return 0 or
 * a negative errno and never touch memory outside the mapping.
 */
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>

#include "util/log.h"
#include "vmm/boot.h"
#include "vmm/gmem.h"

#define FUZZ_RAM (64ull << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct gmem m;
	static const uint8_t initrd[3000] = { 0x07, 0x07, 0x01 };
	struct kvm_regs regs;
	struct kvm_sregs sregs = { 0 };
	struct boot_info info;

	if (!m.host) {
		log_set_level((enum log_level)-1); /* rejected inputs log an error each */
		if (gmem_layout(&m, FUZZ_RAM))
			return 0;
		m.fd = -1;
		void *p = mmap(NULL, FUZZ_RAM, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (p == MAP_FAILED)
			return 0;
		m.host = p;
	}
	struct boot_config cfg = { .kernel = data, .kernel_len = size,
				   .initrd = size & 1 ? initrd : NULL,
				   .initrd_len = size & 1 ? sizeof(initrd) : 0,
				   .cmdline = "console=ttyS0", .ncpus = 1 + (unsigned int)(size % 8) };
	int r = boot_load(&m, &cfg, &regs, &sregs, &info);
	if (r > 0)
		__builtin_trap();
	return 0;
}
