/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_VMM_BOOT_H
#define VMSNAP_VMM_BOOT_H

#include <linux/kvm.h>
#include <stddef.h>
#include <stdint.h>

#include "vmm/gmem.h"

/*
 * Kernel loading: puts a kernel (bzImage through the Linux 64-bit boot protocol, or an ELF
 * with a Xen PVH entry note) and its initrd, command line, memory map and MP table into guest
 * RAM and computes the boot CPU's first register state. Pure code: no ioctls, no files.
 * The guest-physical layout is fixed and described in docs/BOOT.md.
 */

#define BOOT_MAX_CPUS 254     /* the IOAPIC takes APIC id ncpus; 255 is broadcast */
#define BOOT_CMDLINE_MAX 4096 /* bytes including the NUL (bzImages may allow fewer) */
#define BOOT_MIN_RAM (2ull << 20)

/* Guest-physical addresses of what boot_load() writes (docs/BOOT.md). */
#define BOOT_GDT_ADDR 0x1000ull	      /* GDT: null, null, code 0x10, data 0x18, TSS 0x20 */
#define BOOT_STACK_TOP 0x2000ull      /* initial RSP; the stack grows down toward the GDT */
#define BOOT_PARAMS_ADDR 0x2000ull    /* bzImage zero page, or PVH hvm_start_info */
#define BOOT_MODLIST_ADDR 0x2040ull   /* PVH: hvm_modlist_entry for the initrd */
#define BOOT_MEMMAP_ADDR 0x3000ull    /* PVH: hvm_memmap_table_entry[] */
#define BOOT_CMDLINE_ADDR 0x4000ull   /* NUL-terminated command line, one page */
#define BOOT_PML4_ADDR 0x5000ull      /* bzImage: PML4, PDPT, then 4 PDs up to 0xb000 */
#define BOOT_PGTABLE_END 0xb000ull
#define BOOT_LOW_DATA_END 0x5000ull   /* an ELF kernel may not load below this */
#define BOOT_EBDA_START 0x9fc00ull    /* [EBDA_START, 1 MiB) is reserved in the memory map */
#define BOOT_HIGH_KERNEL 0x100000ull  /* 1 MiB */
#define BOOT_MPTABLE_ADDR 0xf0000ull  /* MP floating pointer, config table right after */

/* Selectors of the boot GDT (the boot protocol's __BOOT_CS/__BOOT_DS). */
#define BOOT_CS 0x10
#define BOOT_DS 0x18
#define BOOT_TSS 0x20

/* Memory map entry types (E820 and PVH memmap share them). */
#define BOOT_E820_RAM 1u
#define BOOT_E820_RESERVED 2u
#define BOOT_E820_MAX 8

/** What to boot. The buffers are only read, and only during boot_load(). */
struct boot_config {
	const uint8_t *kernel; /* bzImage or ELF file contents */
	size_t kernel_len;
	const uint8_t *initrd; /* NULL or initrd_len == 0: no initrd */
	size_t initrd_len;
	const char *cmdline;	/* NULL means "" */
	unsigned int ncpus;	/* 1..BOOT_MAX_CPUS, listed in the MP table */
	uint64_t acpi_rsdp;	/* guest-physical RSDP (vmm/acpi.h) or 0 for none: handed to
				 * the kernel in boot_params.acpi_rsdp_addr / start_info */
};

enum boot_format {
	BOOT_FORMAT_BZIMAGE = 1, /* Linux bzImage, 64-bit boot protocol */
	BOOT_FORMAT_PVH = 2,	 /* ELF with XEN_ELFNOTE_PHYS32_ENTRY */
};

/** Where boot_load() put things (for logging and tests). */
struct boot_info {
	enum boot_format format;
	uint64_t entry;			  /* first RIP */
	uint64_t kernel_start, kernel_end; /* guest-physical range reserved for the kernel */
	uint64_t initrd_addr, initrd_size; /* 0, 0 without an initrd */
	uint64_t params_addr;		  /* zero page or hvm_start_info */
};

/** One memory map entry, as in E820 and the PVH memmap. */
struct boot_e820_entry {
	uint64_t addr;
	uint64_t size;
	uint32_t type; /* BOOT_E820_RAM or BOOT_E820_RESERVED */
};

/**
 * Compute the guest's memory map from @m's regions: [0, EBDA) RAM, [EBDA, 1 MiB) reserved,
 * [1 MiB, end of the low region) RAM and the high region (if any) RAM. Writes at most @max
 * entries to @out and returns how many, or -E2BIG if RAM is smaller than BOOT_MIN_RAM or
 * -ENOSPC if @max is too small.
 */
int boot_memmap(const struct gmem *m, struct boot_e820_entry *out, unsigned int max);

/**
 * Load @cfg's kernel into @m and set up the boot CPU.
 *
 * Detects the format: a bzImage ("HdrS" at 0x202, protocol >= 2.12 with XLF_KERNEL_64) is
 * entered at its 64-bit entry in long mode with a zero page; an ELF (32 or 64-bit, x86) with
 * a PVH note is loaded at its segments' physical addresses and entered in 32-bit protected
 * mode with an hvm_start_info. Writes the kernel, initrd, command line, memory map, GDT, page
 * tables (bzImage) and MP table into RAM, which should be zero-filled except for what the
 * caller wants kept (boot_load only writes, it never clears RAM it does not use).
 *
 * @regs is overwritten entirely. @sregs must come in as KVM_GET_SREGS returned it; only the
 * boot-relevant fields (segments, GDT/IDT, control registers, EFER) are changed. @info may
 * be NULL. Nothing is retained: the call is thread-safe for distinct @m.
 *
 * Returns 0, -EINVAL for a bad config (no kernel, ncpus out of range, command line too
 * long), -ENOEXEC for a file vmsnap cannot boot, -E2BIG when the kernel, initrd or boot data
 * do not fit in RAM. Every error is logged once with the reason. On error RAM may have been
 * partly written.
 */
int boot_load(struct gmem *m, const struct boot_config *cfg, struct kvm_regs *regs,
	      struct kvm_sregs *sregs, struct boot_info *info);

#endif
