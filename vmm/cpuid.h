/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_VMM_CPUID_H
#define VMSNAP_VMM_CPUID_H

/*
 * Per-vCPU CPUID and boot MSRs: pure functions over struct kvm_cpuid_entry2 lists (no ioctls).
 *
 * Topology presented to the guest: one package, one die, @ncpus cores of one thread each;
 * APIC id = x2APIC id = vCPU index. Fields counting "addressable ids" use ncpus rounded up to
 * a power of two, the width of the core field in the APIC id.
 */

#include <stddef.h>
#include <stdint.h>

#include <linux/kvm.h>

/** Most vCPUs: APIC ids must fit leaf 1's 8-bit field and stay below 0xff (broadcast). */
#define CPUID_MAX_CPUS 255
/** Enough output entries for any cpuid_build() result from a real KVM_GET_SUPPORTED_CPUID. */
#define CPUID_MAX_ENTRIES 256

/**
 * CPU templates.
 *   host:     everything KVM supports on this host (topology and leaf 6 still normalised).
 *   baseline: hides what a destination host may lack or what KVM's instruction emulator
 *             cannot run (it runs all CPL0 code on PVM hosts): CX16, XSAVE and everything
 *             that needs it (AVX*, AVX-512*, AMX, FMA, F16C, PKU, CET, MPX, XOP/FMA4/TBM/LWP,
 *             leaf 0xD reduced to x87+SSE), 1 GiB pages, nested virtualisation, the vPMU,
 *             SGX, PT. The table in cpuid.c gives each bit and why.
 */
enum cpu_template { CPU_TEMPLATE_HOST = 0, CPU_TEMPLATE_BASELINE = 1 };

/** "host" or "baseline" into @out. Returns 0 or -EINVAL for anything else (or NULL). */
int cpu_template_parse(const char *name, enum cpu_template *out);

/** The name cpu_template_parse() accepts for @t ("?" if out of range). */
const char *cpu_template_name(enum cpu_template t);

/**
 * Build vCPU @cpu_index's CPUID (of @ncpus) from KVM_GET_SUPPORTED_CPUID's @n entries in
 * @supported, for template @t, into @out (room for @max_out entries); *@n_out gets the count.
 * Sets the topology (leaves 1, 4, 0xB, 0x1F if KVM lists it, 0x80000008, 0x8000001D/1E),
 * the hypervisor bit, leaf 6 = ARAT only; keeps KVM's paravirt leaves 0x40000000/1 as
 * reported. Returns 0, -EINVAL (bad index/count, ncpus > CPUID_MAX_CPUS) or -ENOSPC.
 */
int cpuid_build(const struct kvm_cpuid_entry2 *supported, unsigned int n, unsigned int cpu_index,
		unsigned int ncpus, enum cpu_template t, struct kvm_cpuid_entry2 *out,
		unsigned int max_out, unsigned int *n_out);

/** The entry for (@function, @index) in @e[0..@n), or NULL. @index is ignored for leaves
 * without the KVM_CPUID_FLAG_SIGNIFCANT_INDEX flag. */
const struct kvm_cpuid_entry2 *cpuid_find(const struct kvm_cpuid_entry2 *e, unsigned int n,
					  uint32_t function, uint32_t index);

enum cpuid_reg { CPUID_EAX = 0, CPUID_EBX, CPUID_ECX, CPUID_EDX };

/** One feature bit. */
struct cpuid_feature {
	uint32_t function;
	uint32_t index;
	enum cpuid_reg reg;
	unsigned int bit;
	const char *name; /* e.g. "AVX2"; NULL for a bit this table has no name for */
};

/**
 * The features a saved guest may be using that a host lacks: every feature bit set in
 * @image (the CPUID the image's vCPU ran with) but clear in @host (that host's
 * KVM_GET_SUPPORTED_CPUID), over the feature words of leaves 1, 7.0, 7.1, 0xD.0 EAX (XCR0
 * state components), 0xD.1 EAX, 0x80000001, 0x80000008 EBX and 0x40000001 EAX. Bits that
 * describe topology or runtime state (HTT, OSXSAVE, OSPKE, hypervisor, CmpLegacy) are skipped.
 * Stores the first @max_out in @out (may be NULL if @max_out is 0) and returns how many there
 * are in all: 0 means the host can run the image.
 */
unsigned int cpuid_missing_features(const struct kvm_cpuid_entry2 *image, unsigned int n_image,
				    const struct kvm_cpuid_entry2 *host, unsigned int n_host,
				    struct cpuid_feature *out, unsigned int max_out);

/**
 * "AVX2 (leaf 0x7 EBX bit 5)" or, for a bit without a name, "leaf 0x7.1 EDX bit 9", into
 * @buf (always NUL-terminated if @size > 0). Returns what snprintf() returns.
 */
int cpuid_feature_describe(const struct cpuid_feature *f, char *buf, size_t size);

/** One MSR and its value. */
struct msr_entry {
	uint32_t index;
	uint64_t value;
};

/** Room msr_boot_defaults() needs. */
#define MSR_BOOT_MAX 16

/**
 * The MSRs a VMM sets on every vCPU before a fresh boot (never on restore, which sets the
 * saved values), into @out (room for @max_out). Returns the count written, at most
 * MSR_BOOT_MAX (fewer if @max_out is smaller).
 *   IA32_TSC = 0: KVM already writes 0 at vCPU creation and treats a host write of 0 as
 *     "synchronise with the other vCPUs", so all vCPUs start with one TSC.
 *   IA32_SYSENTER_CS/ESP/EIP, STAR, LSTAR, CSTAR, SFMASK, KERNEL_GS_BASE = 0.
 *   IA32_MISC_ENABLE = 1 (fast strings), what firmware leaves and Linux expects.
 *   IA32_MTRR_DEF_TYPE = 0x806: MTRRs enabled, default type write-back (no firmware runs
 *     to program MTRRs; with them disabled all memory would be uncached).
 *   IA32_PAT = 0x0007040600070406, the power-on value (KVM's default too; set explicitly so
 *     a reused vCPU starts the same).
 */
unsigned int msr_boot_defaults(struct msr_entry *out, unsigned int max_out);

#endif
