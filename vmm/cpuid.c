/* SPDX-License-Identifier: MIT */
#include "cpuid.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define LEAF_BASIC_MAX 0x0
#define LEAF_FEATURES 0x1
#define LEAF_CACHE 0x4
#define LEAF_THERMAL 0x6
#define LEAF_EXT_FEATURES 0x7
#define LEAF_PMU 0xa
#define LEAF_TOPOLOGY 0xb
#define LEAF_XSAVE 0xd
#define LEAF_SGX 0x12
#define LEAF_PT 0x14
#define LEAF_KEYLOCKER 0x19
#define LEAF_AMX_TILE 0x1d
#define LEAF_AMX_TMUL 0x1e
#define LEAF_TOPOLOGY_V2 0x1f
#define LEAF_AVX10 0x24
#define LEAF_KVM_SIGNATURE 0x40000000
#define LEAF_KVM_FEATURES 0x40000001
#define LEAF_EXT_FEATURES_AMD 0x80000001
#define LEAF_ADDR_SIZES 0x80000008
#define LEAF_AMD_CACHE 0x8000001d
#define LEAF_AMD_TOPOLOGY 0x8000001e
#define LEAF_AMD_PMU 0x80000022

/* Leaf 0 EBX of AMD ("Auth") and Hygon ("Hygo"), whose CPUs read the AMD topology leaves. */
#define VENDOR_AMD_EBX 0x68747541
#define VENDOR_HYGON_EBX 0x6f677948

#define TOPO_LEVEL_INVALID 0
#define TOPO_LEVEL_SMT 1
#define TOPO_LEVEL_CORE 2

/* Legacy FXSAVE area + XSAVE header: the XSAVE size of x87+SSE state. */
#define XSAVE_LEGACY_SIZE 576
#define XCR0_X87_SSE 0x3

/* Feature bit table: names for messages, and what the baseline template hides. */
#define HIDE true
#define KEEP false

struct feature_def {
	uint32_t function;
	uint32_t index;
	enum cpuid_reg reg;
	unsigned int bit;
	const char *name;
	bool baseline_hides;
};

/*
 * Why the baseline hides what it hides:
 *  - KVM's instruction emulator, which runs every CPL0 instruction on PVM hosts, lacks
 *    cmpxchg16b and xsave/xrstor(s): a guest kernel told about CX16 or XSAVE stops with an
 *    emulation failure. Everything whose state lives in XSAVE goes with XSAVE: a guest
 *    cannot enable AVX, AVX-512, AMX, PKU, CET, MPX without XCR0/XSS.
 *  - VEX/EVEX/XOP-encoded instructions need AVX state (FMA, F16C, VAES, VPCLMULQDQ, XOP,
 *    FMA4, TBM, LWP): they are the same problem and also what differs most between hosts.
 *  - 1 GiB pages triple-fault on PVM hosts (measured); Linux maps its direct map with them.
 *  - Nested virtualisation (VMX/SVM), the vPMU (PDCM, PerfCtrExtCore, leaf 0xA), SGX and
 *    Intel PT depend on host configuration and do not migrate.
 * MOVBE is kept: KVM's emulator implements it (it is in KVM_GET_EMULATED_CPUID). SSE up to
 * 4.2, AES-NI, PCLMULQDQ, SHA, GFNI (all legacy-SSE encodable) are kept: x86-64 guests
 * expect them and the kernel uses them only inside kernel_fpu_begin() sections.
 */
static const struct feature_def features[] = {
	/* leaf 1 EDX */
	{ 0x1, 0, CPUID_EDX, 0, "FPU", KEEP },
	{ 0x1, 0, CPUID_EDX, 4, "TSC", KEEP },
	{ 0x1, 0, CPUID_EDX, 5, "MSR", KEEP },
	{ 0x1, 0, CPUID_EDX, 6, "PAE", KEEP },
	{ 0x1, 0, CPUID_EDX, 8, "CX8", KEEP },
	{ 0x1, 0, CPUID_EDX, 9, "APIC", KEEP },
	{ 0x1, 0, CPUID_EDX, 11, "SEP", KEEP },
	{ 0x1, 0, CPUID_EDX, 12, "MTRR", KEEP },
	{ 0x1, 0, CPUID_EDX, 13, "PGE", KEEP },
	{ 0x1, 0, CPUID_EDX, 15, "CMOV", KEEP },
	{ 0x1, 0, CPUID_EDX, 16, "PAT", KEEP },
	{ 0x1, 0, CPUID_EDX, 19, "CLFLUSH", KEEP },
	{ 0x1, 0, CPUID_EDX, 23, "MMX", KEEP },
	{ 0x1, 0, CPUID_EDX, 24, "FXSR", KEEP },
	{ 0x1, 0, CPUID_EDX, 25, "SSE", KEEP },
	{ 0x1, 0, CPUID_EDX, 26, "SSE2", KEEP },
	/* leaf 1 ECX */
	{ 0x1, 0, CPUID_ECX, 0, "SSE3", KEEP },
	{ 0x1, 0, CPUID_ECX, 1, "PCLMULQDQ", KEEP },
	{ 0x1, 0, CPUID_ECX, 5, "VMX", HIDE },	/* nested virtualisation */
	{ 0x1, 0, CPUID_ECX, 9, "SSSE3", KEEP },
	{ 0x1, 0, CPUID_ECX, 12, "FMA", HIDE },	/* VEX-encoded, needs AVX state */
	{ 0x1, 0, CPUID_ECX, 13, "CX16", HIDE },	/* cmpxchg16b: not in KVM's emulator */
	{ 0x1, 0, CPUID_ECX, 15, "PDCM", HIDE },	/* perf capabilities MSR: vPMU */
	{ 0x1, 0, CPUID_ECX, 17, "PCID", KEEP },
	{ 0x1, 0, CPUID_ECX, 19, "SSE4.1", KEEP },
	{ 0x1, 0, CPUID_ECX, 20, "SSE4.2", KEEP },
	{ 0x1, 0, CPUID_ECX, 21, "X2APIC", KEEP },
	{ 0x1, 0, CPUID_ECX, 22, "MOVBE", KEEP },	/* emulated by KVM */
	{ 0x1, 0, CPUID_ECX, 23, "POPCNT", KEEP },
	{ 0x1, 0, CPUID_ECX, 24, "TSC-DEADLINE", KEEP },
	{ 0x1, 0, CPUID_ECX, 25, "AES", KEEP },
	{ 0x1, 0, CPUID_ECX, 26, "XSAVE", HIDE },	/* xsave/xrstor: not in KVM's emulator */
	{ 0x1, 0, CPUID_ECX, 27, "OSXSAVE", HIDE }, /* follows CR4.OSXSAVE: needs XSAVE */
	{ 0x1, 0, CPUID_ECX, 28, "AVX", HIDE },	/* state in XSAVE */
	{ 0x1, 0, CPUID_ECX, 29, "F16C", HIDE },	/* VEX-encoded */
	{ 0x1, 0, CPUID_ECX, 30, "RDRAND", KEEP },
	/* leaf 7.0 EBX */
	{ 0x7, 0, CPUID_EBX, 0, "FSGSBASE", KEEP },
	{ 0x7, 0, CPUID_EBX, 2, "SGX", HIDE },	/* host configuration, not migratable */
	{ 0x7, 0, CPUID_EBX, 3, "BMI1", KEEP },
	{ 0x7, 0, CPUID_EBX, 5, "AVX2", HIDE },	/* needs AVX */
	{ 0x7, 0, CPUID_EBX, 7, "SMEP", KEEP },
	{ 0x7, 0, CPUID_EBX, 8, "BMI2", KEEP },
	{ 0x7, 0, CPUID_EBX, 9, "ERMS", KEEP },
	{ 0x7, 0, CPUID_EBX, 10, "INVPCID", KEEP },
	{ 0x7, 0, CPUID_EBX, 14, "MPX", HIDE },	/* state in XSAVE (BNDREGS/BNDCSR) */
	{ 0x7, 0, CPUID_EBX, 16, "AVX512F", HIDE },
	{ 0x7, 0, CPUID_EBX, 17, "AVX512DQ", HIDE },
	{ 0x7, 0, CPUID_EBX, 18, "RDSEED", KEEP },
	{ 0x7, 0, CPUID_EBX, 19, "ADX", KEEP },
	{ 0x7, 0, CPUID_EBX, 20, "SMAP", KEEP },
	{ 0x7, 0, CPUID_EBX, 21, "AVX512IFMA", HIDE },
	{ 0x7, 0, CPUID_EBX, 23, "CLFLUSHOPT", KEEP },
	{ 0x7, 0, CPUID_EBX, 24, "CLWB", KEEP },
	{ 0x7, 0, CPUID_EBX, 25, "INTEL_PT", HIDE }, /* state in XSAVES, host configuration */
	{ 0x7, 0, CPUID_EBX, 26, "AVX512PF", HIDE },
	{ 0x7, 0, CPUID_EBX, 27, "AVX512ER", HIDE },
	{ 0x7, 0, CPUID_EBX, 28, "AVX512CD", HIDE },
	{ 0x7, 0, CPUID_EBX, 29, "SHA", KEEP },
	{ 0x7, 0, CPUID_EBX, 30, "AVX512BW", HIDE },
	{ 0x7, 0, CPUID_EBX, 31, "AVX512VL", HIDE },
	/* leaf 7.0 ECX */
	{ 0x7, 0, CPUID_ECX, 1, "AVX512VBMI", HIDE },
	{ 0x7, 0, CPUID_ECX, 2, "UMIP", KEEP },
	{ 0x7, 0, CPUID_ECX, 3, "PKU", HIDE },	/* PKRU lives in XSAVE */
	{ 0x7, 0, CPUID_ECX, 4, "OSPKE", HIDE },	/* follows CR4.PKE: needs PKU */
	{ 0x7, 0, CPUID_ECX, 6, "AVX512_VBMI2", HIDE },
	{ 0x7, 0, CPUID_ECX, 7, "CET_SS", HIDE },	/* CET state lives in XSAVES */
	{ 0x7, 0, CPUID_ECX, 8, "GFNI", KEEP },
	{ 0x7, 0, CPUID_ECX, 9, "VAES", HIDE },	/* VEX/EVEX only */
	{ 0x7, 0, CPUID_ECX, 10, "VPCLMULQDQ", HIDE }, /* VEX/EVEX only */
	{ 0x7, 0, CPUID_ECX, 11, "AVX512_VNNI", HIDE },
	{ 0x7, 0, CPUID_ECX, 12, "AVX512_BITALG", HIDE },
	{ 0x7, 0, CPUID_ECX, 14, "AVX512_VPOPCNTDQ", HIDE },
	{ 0x7, 0, CPUID_ECX, 22, "RDPID", KEEP },
	/* leaf 7.0 EDX */
	{ 0x7, 0, CPUID_EDX, 2, "AVX512_4VNNIW", HIDE },
	{ 0x7, 0, CPUID_EDX, 3, "AVX512_4FMAPS", HIDE },
	{ 0x7, 0, CPUID_EDX, 4, "FSRM", KEEP },
	{ 0x7, 0, CPUID_EDX, 8, "AVX512_VP2INTERSECT", HIDE },
	{ 0x7, 0, CPUID_EDX, 10, "MD_CLEAR", KEEP },
	{ 0x7, 0, CPUID_EDX, 14, "SERIALIZE", KEEP },
	{ 0x7, 0, CPUID_EDX, 20, "CET_IBT", HIDE },	/* CET state lives in XSAVES */
	{ 0x7, 0, CPUID_EDX, 22, "AMX_BF16", HIDE },	/* AMX tile state in XSAVE */
	{ 0x7, 0, CPUID_EDX, 23, "AVX512_FP16", HIDE },
	{ 0x7, 0, CPUID_EDX, 24, "AMX_TILE", HIDE },
	{ 0x7, 0, CPUID_EDX, 25, "AMX_INT8", HIDE },
	{ 0x7, 0, CPUID_EDX, 26, "IBRS_IBPB", KEEP },
	{ 0x7, 0, CPUID_EDX, 27, "STIBP", KEEP },
	{ 0x7, 0, CPUID_EDX, 29, "ARCH_CAPABILITIES", KEEP },
	{ 0x7, 0, CPUID_EDX, 31, "SSBD", KEEP },
	/* leaf 7.1 */
	{ 0x7, 1, CPUID_EAX, 4, "AVX_VNNI", HIDE },
	{ 0x7, 1, CPUID_EAX, 5, "AVX512_BF16", HIDE },
	{ 0x7, 1, CPUID_EAX, 21, "AMX_FP16", HIDE },
	{ 0x7, 1, CPUID_EAX, 23, "AVX_IFMA", HIDE },
	{ 0x7, 1, CPUID_EDX, 4, "AVX_VNNI_INT8", HIDE },
	{ 0x7, 1, CPUID_EDX, 5, "AVX_NE_CONVERT", HIDE },
	{ 0x7, 1, CPUID_EDX, 8, "AMX_COMPLEX", HIDE },
	{ 0x7, 1, CPUID_EDX, 10, "AVX_VNNI_INT16", HIDE },
	{ 0x7, 1, CPUID_EDX, 19, "AVX10", HIDE },
	/* leaf 0xD.0 EAX: XCR0 state components (the baseline rewrites the leaf) */
	{ 0xd, 0, CPUID_EAX, 0, "x87 state", KEEP },
	{ 0xd, 0, CPUID_EAX, 1, "SSE state", KEEP },
	{ 0xd, 0, CPUID_EAX, 2, "AVX state", HIDE },
	{ 0xd, 0, CPUID_EAX, 3, "MPX BNDREGS state", HIDE },
	{ 0xd, 0, CPUID_EAX, 4, "MPX BNDCSR state", HIDE },
	{ 0xd, 0, CPUID_EAX, 5, "AVX-512 opmask state", HIDE },
	{ 0xd, 0, CPUID_EAX, 6, "AVX-512 ZMM_Hi256 state", HIDE },
	{ 0xd, 0, CPUID_EAX, 7, "AVX-512 Hi16_ZMM state", HIDE },
	{ 0xd, 0, CPUID_EAX, 9, "PKRU state", HIDE },
	{ 0xd, 0, CPUID_EAX, 17, "AMX XTILECFG state", HIDE },
	{ 0xd, 0, CPUID_EAX, 18, "AMX XTILEDATA state", HIDE },
	/* leaf 0xD.1 EAX: XSAVE variants */
	{ 0xd, 1, CPUID_EAX, 0, "XSAVEOPT", HIDE },
	{ 0xd, 1, CPUID_EAX, 1, "XSAVEC", HIDE },
	{ 0xd, 1, CPUID_EAX, 2, "XGETBV1", HIDE },
	{ 0xd, 1, CPUID_EAX, 3, "XSAVES", HIDE },
	/* leaf 0x80000001 */
	{ 0x80000001, 0, CPUID_ECX, 0, "LAHF_LM", KEEP },
	{ 0x80000001, 0, CPUID_ECX, 2, "SVM", HIDE },	  /* nested virtualisation */
	{ 0x80000001, 0, CPUID_ECX, 5, "ABM", KEEP },
	{ 0x80000001, 0, CPUID_ECX, 6, "SSE4A", KEEP },
	{ 0x80000001, 0, CPUID_ECX, 8, "PREFETCHW", KEEP },
	{ 0x80000001, 0, CPUID_ECX, 11, "XOP", HIDE },	  /* XOP-encoded, AVX state */
	{ 0x80000001, 0, CPUID_ECX, 15, "LWP", HIDE },	  /* state in XSAVE */
	{ 0x80000001, 0, CPUID_ECX, 16, "FMA4", HIDE },	  /* VEX-encoded, AVX state */
	{ 0x80000001, 0, CPUID_ECX, 21, "TBM", HIDE },	  /* XOP-encoded */
	{ 0x80000001, 0, CPUID_ECX, 23, "PERFCTR_CORE", HIDE }, /* vPMU */
	{ 0x80000001, 0, CPUID_EDX, 11, "SYSCALL", KEEP },
	{ 0x80000001, 0, CPUID_EDX, 20, "NX", KEEP },
	{ 0x80000001, 0, CPUID_EDX, 26, "PDPE1GB", HIDE }, /* 1 GiB pages fault on PVM */
	{ 0x80000001, 0, CPUID_EDX, 27, "RDTSCP", KEEP },
	{ 0x80000001, 0, CPUID_EDX, 29, "LM", KEEP },
	/* leaf 0x40000001 EAX: KVM paravirt features */
	{ 0x40000001, 0, CPUID_EAX, 0, "KVM_CLOCKSOURCE", KEEP },
	{ 0x40000001, 0, CPUID_EAX, 3, "KVM_CLOCKSOURCE2", KEEP },
	{ 0x40000001, 0, CPUID_EAX, 24, "KVM_CLOCKSOURCE_STABLE", KEEP },
};

/* Leaves the baseline drops entirely (state or facilities it hides). */
static const uint32_t baseline_dropped_leaves[] = {
	LEAF_SGX, LEAF_PT, LEAF_KEYLOCKER, LEAF_AMX_TILE, LEAF_AMX_TMUL, LEAF_AVX10, LEAF_AMD_PMU,
};

/* Feature words compared by cpuid_missing_features(), with bits to skip. */
static const struct {
	uint32_t function;
	uint32_t index;
	enum cpuid_reg reg;
	uint32_t skip;
} feature_words[] = {
	{ 0x1, 0, CPUID_ECX, (1u << 27) | (1u << 31) }, /* OSXSAVE, hypervisor */
	{ 0x1, 0, CPUID_EDX, 1u << 28 },		/* HTT */
	{ 0x7, 0, CPUID_EBX, 0 },
	{ 0x7, 0, CPUID_ECX, 1u << 4 },			/* OSPKE */
	{ 0x7, 0, CPUID_EDX, 0 },
	{ 0x7, 1, CPUID_EAX, 0 },
	{ 0x7, 1, CPUID_EDX, 0 },
	{ 0xd, 0, CPUID_EAX, 0 },
	{ 0xd, 1, CPUID_EAX, 0 },
	{ 0x80000001, 0, CPUID_ECX, 1u << 1 },		/* CmpLegacy */
	{ 0x80000001, 0, CPUID_EDX, 0 },
	{ 0x80000008, 0, CPUID_EBX, 0 },
	{ 0x40000001, 0, CPUID_EAX, 0 },
};

int cpu_template_parse(const char *name, enum cpu_template *out)
{
	if (name && !strcmp(name, "host")) {
		*out = CPU_TEMPLATE_HOST;
		return 0;
	}
	if (name && !strcmp(name, "baseline")) {
		*out = CPU_TEMPLATE_BASELINE;
		return 0;
	}
	return -EINVAL;
}

const char *cpu_template_name(enum cpu_template t)
{
	switch (t) {
	case CPU_TEMPLATE_HOST:
		return "host";
	case CPU_TEMPLATE_BASELINE:
		return "baseline";
	}
	return "?";
}

static uint32_t *reg_ptr(struct kvm_cpuid_entry2 *e, enum cpuid_reg r)
{
	switch (r) {
	case CPUID_EAX:
		return &e->eax;
	case CPUID_EBX:
		return &e->ebx;
	case CPUID_ECX:
		return &e->ecx;
	case CPUID_EDX:
		break;
	}
	return &e->edx;
}

static uint32_t reg_val(const struct kvm_cpuid_entry2 *e, enum cpuid_reg r)
{
	return *reg_ptr((struct kvm_cpuid_entry2 *)e, r);
}

const struct kvm_cpuid_entry2 *cpuid_find(const struct kvm_cpuid_entry2 *e, unsigned int n,
					  uint32_t function, uint32_t index)
{
	for (unsigned int i = 0; i < n; i++) {
		if (e[i].function != function)
			continue;
		if (!(e[i].flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) || e[i].index == index)
			return &e[i];
	}
	return NULL;
}

/* Smallest power of two >= n, and its log2. */
static unsigned int pow2_shift(unsigned int n)
{
	unsigned int s = 0;
	while ((1u << s) < n)
		s++;
	return s;
}

static unsigned int min_u(unsigned int a, unsigned int b)
{
	return a < b ? a : b;
}

struct topo {
	unsigned int cpu;   /* APIC id */
	unsigned int ncpus;
	unsigned int shift; /* bits of the core field in the APIC id */
	bool amd;
};

static bool baseline_drops_leaf(uint32_t function)
{
	for (size_t i = 0; i < sizeof(baseline_dropped_leaves) / sizeof(baseline_dropped_leaves[0]);
	     i++)
		if (baseline_dropped_leaves[i] == function)
			return true;
	return false;
}

static void apply_baseline_masks(struct kvm_cpuid_entry2 *e)
{
	for (size_t i = 0; i < sizeof(features) / sizeof(features[0]); i++) {
		const struct feature_def *f = &features[i];
		if (f->baseline_hides && f->function == e->function && f->index == e->index)
			*reg_ptr(e, f->reg) &= ~(1u << f->bit);
	}
}

/* Cache leaf sharing: L1/L2 belong to one core (one thread), L3 and beyond to the package. */
static uint32_t cache_sharing_field(uint32_t eax, const struct topo *t)
{
	unsigned int level = (eax >> 5) & 7;
	unsigned int sharing = level >= 3 ? (1u << t->shift) : 1;
	return (uint32_t)(min_u(sharing, 4096) - 1) << 14;
}

static void fix_leaf(struct kvm_cpuid_entry2 *e, const struct topo *t, enum cpu_template tmpl)
{
	unsigned int addressable = t->ncpus > 1 ? min_u(1u << t->shift, 255) : 1;

	switch (e->function) {
	case LEAF_FEATURES:
		e->ebx = (e->ebx & 0xffff) | (uint32_t)addressable << 16 | (uint32_t)t->cpu << 24;
		if (t->ncpus > 1)
			e->edx |= 1u << 28; /* HTT: EBX[23:16] is valid */
		else
			e->edx &= ~(1u << 28);
		e->ecx |= 1u << 31; /* running under a hypervisor */
		break;
	case LEAF_CACHE:
		if ((e->eax & 0x1f) == 0)
			break; /* the null descriptor ends the list and stays all-zero */
		e->eax = (e->eax & 0x3ff) | cache_sharing_field(e->eax, t) |
			 (uint32_t)(min_u(1u << t->shift, 64) - 1) << 26;
		break;
	case LEAF_THERMAL:
		/* No thermal or power management is emulated; APIC timer always runs (ARAT). */
		e->eax &= 1u << 2;
		e->ebx = e->ecx = e->edx = 0;
		break;
	case LEAF_PMU:
		if (tmpl == CPU_TEMPLATE_BASELINE)
			e->eax = e->ebx = e->ecx = e->edx = 0;
		break;
	case LEAF_XSAVE:
		if (tmpl != CPU_TEMPLATE_BASELINE)
			break;
		if (e->index == 0) {
			e->eax = XCR0_X87_SSE;
			e->edx = 0;
			e->ebx = e->ecx = XSAVE_LEGACY_SIZE;
		} else {
			e->eax = e->ebx = e->ecx = e->edx = 0;
		}
		break;
	case LEAF_ADDR_SIZES:
		/* NC = cores - 1; ApicIdCoreIdSize = width of the core field. */
		e->ecx = (uint32_t)(t->ncpus - 1) | (uint32_t)t->shift << 12;
		break;
	case LEAF_EXT_FEATURES_AMD:
		if (t->amd && t->ncpus > 1)
			e->ecx |= 1u << 1; /* CmpLegacy: cores are not hyperthreads */
		else
			e->ecx &= ~(1u << 1);
		break;
	case LEAF_AMD_CACHE:
		if ((e->eax & 0x1f) == 0)
			break;
		e->eax = (e->eax & ~(0xfffu << 14)) | cache_sharing_field(e->eax, t);
		break;
	case LEAF_AMD_TOPOLOGY:
		e->eax = t->cpu;	 /* extended APIC id */
		e->ebx = t->cpu & 0xff; /* compute unit id; 1 thread per unit */
		e->ecx = 0;		 /* node 0, one node per package */
		e->edx = 0;
		break;
	}
	if (tmpl == CPU_TEMPLATE_BASELINE)
		apply_baseline_masks(e);
}

static int emit(struct kvm_cpuid_entry2 *out, unsigned int max_out, unsigned int *n,
		const struct kvm_cpuid_entry2 *e)
{
	if (*n >= max_out)
		return -ENOSPC;
	out[(*n)++] = *e;
	return 0;
}

/* Leaf 0xB / 0x1F: SMT level (1 thread), core level (ncpus), then the invalid level. */
static int emit_topology(struct kvm_cpuid_entry2 *out, unsigned int max_out, unsigned int *n,
			 uint32_t function, const struct topo *t)
{
	struct kvm_cpuid_entry2 e[3];

	memset(e, 0, sizeof(e));
	for (unsigned int i = 0; i < 3; i++) {
		e[i].function = function;
		e[i].index = i;
		e[i].flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
		e[i].ecx = i;
		e[i].edx = t->cpu;
	}
	e[0].eax = 0;
	e[0].ebx = 1;
	e[0].ecx |= TOPO_LEVEL_SMT << 8;
	e[1].eax = t->shift;
	e[1].ebx = t->ncpus;
	e[1].ecx |= TOPO_LEVEL_CORE << 8;
	e[2].ecx |= TOPO_LEVEL_INVALID << 8;
	for (unsigned int i = 0; i < 3; i++) {
		int r = emit(out, max_out, n, &e[i]);
		if (r)
			return r;
	}
	return 0;
}

int cpuid_build(const struct kvm_cpuid_entry2 *supported, unsigned int n, unsigned int cpu_index,
		unsigned int ncpus, enum cpu_template tmpl, struct kvm_cpuid_entry2 *out,
		unsigned int max_out, unsigned int *n_out)
{
	unsigned int count = 0;
	bool done_0b = false, done_1f = false;
	int r;

	*n_out = 0;
	if (ncpus == 0 || ncpus > CPUID_MAX_CPUS || cpu_index >= ncpus || (n && !supported) ||
	    (tmpl != CPU_TEMPLATE_HOST && tmpl != CPU_TEMPLATE_BASELINE))
		return -EINVAL;

	const struct kvm_cpuid_entry2 *leaf0 = cpuid_find(supported, n, LEAF_BASIC_MAX, 0);
	struct topo t = {
		.cpu = cpu_index,
		.ncpus = ncpus,
		.shift = pow2_shift(ncpus),
		.amd = leaf0 && (leaf0->ebx == VENDOR_AMD_EBX || leaf0->ebx == VENDOR_HYGON_EBX),
	};

	for (unsigned int i = 0; i < n; i++) {
		const struct kvm_cpuid_entry2 *s = &supported[i];
		struct kvm_cpuid_entry2 e = *s;

		if (s->function == LEAF_TOPOLOGY || s->function == LEAF_TOPOLOGY_V2) {
			bool *done = s->function == LEAF_TOPOLOGY ? &done_0b : &done_1f;
			if (!*done) {
				*done = true;
				r = emit_topology(out, max_out, &count, s->function, &t);
				if (r)
					return r;
			}
			continue;
		}
		if (tmpl == CPU_TEMPLATE_BASELINE) {
			if (baseline_drops_leaf(s->function))
				continue;
			/* x87+SSE need only subleaves 0 and 1 of leaf 0xD. */
			if (s->function == LEAF_XSAVE && s->index > 1)
				continue;
		}
		fix_leaf(&e, &t, tmpl);
		r = emit(out, max_out, &count, &e);
		if (r)
			return r;
	}
	/* A guest may read leaf 0xB whenever the basic range reaches it: always answer it. */
	if (!done_0b && leaf0 && leaf0->eax >= LEAF_TOPOLOGY) {
		r = emit_topology(out, max_out, &count, LEAF_TOPOLOGY, &t);
		if (r)
			return r;
	}
	*n_out = count;
	return 0;
}

static const char *feature_name(uint32_t function, uint32_t index, enum cpuid_reg reg,
				unsigned int bit)
{
	for (size_t i = 0; i < sizeof(features) / sizeof(features[0]); i++) {
		const struct feature_def *f = &features[i];
		if (f->function == function && f->index == index && f->reg == reg && f->bit == bit)
			return f->name;
	}
	return NULL;
}

unsigned int cpuid_missing_features(const struct kvm_cpuid_entry2 *image, unsigned int n_image,
				    const struct kvm_cpuid_entry2 *host, unsigned int n_host,
				    struct cpuid_feature *out, unsigned int max_out)
{
	unsigned int missing = 0;

	for (size_t w = 0; w < sizeof(feature_words) / sizeof(feature_words[0]); w++) {
		uint32_t fn = feature_words[w].function, idx = feature_words[w].index;
		enum cpuid_reg reg = feature_words[w].reg;
		const struct kvm_cpuid_entry2 *ie = cpuid_find(image, n_image, fn, idx);
		const struct kvm_cpuid_entry2 *he = cpuid_find(host, n_host, fn, idx);
		if (!ie)
			continue;
		uint32_t need = reg_val(ie, reg) & ~feature_words[w].skip;
		uint32_t have = he ? reg_val(he, reg) : 0;
		uint32_t lack = need & ~have;
		for (unsigned int bit = 0; bit < 32; bit++) {
			if (!(lack & (1u << bit)))
				continue;
			if (missing < max_out)
				out[missing] = (struct cpuid_feature){
					.function = fn,
					.index = idx,
					.reg = reg,
					.bit = bit,
					.name = feature_name(fn, idx, reg, bit),
				};
			missing++;
		}
	}
	return missing;
}

int cpuid_feature_describe(const struct cpuid_feature *f, char *buf, size_t size)
{
	static const char *const regs[] = { "EAX", "EBX", "ECX", "EDX" };
	const char *reg = (unsigned int)f->reg < 4 ? regs[f->reg] : "?";
	char leaf[32];

	if (f->index)
		snprintf(leaf, sizeof(leaf), "0x%x.%u", f->function, f->index);
	else
		snprintf(leaf, sizeof(leaf), "0x%x", f->function);
	if (f->name)
		return snprintf(buf, size, "%s (leaf %s %s bit %u)", f->name, leaf, reg, f->bit);
	return snprintf(buf, size, "leaf %s %s bit %u", leaf, reg, f->bit);
}

#define MSR_IA32_TSC 0x10
#define MSR_IA32_SYSENTER_CS 0x174
#define MSR_IA32_SYSENTER_ESP 0x175
#define MSR_IA32_SYSENTER_EIP 0x176
#define MSR_IA32_MISC_ENABLE 0x1a0
#define MSR_IA32_PAT 0x277
#define MSR_IA32_MTRR_DEF_TYPE 0x2ff
#define MSR_STAR 0xc0000081
#define MSR_LSTAR 0xc0000082
#define MSR_CSTAR 0xc0000083
#define MSR_SFMASK 0xc0000084
#define MSR_KERNEL_GS_BASE 0xc0000102

#define MISC_ENABLE_FAST_STRING 0x1
#define MTRR_DEF_TYPE_ENABLE (1u << 11)
#define MTRR_TYPE_WB 6
#define PAT_POWER_ON 0x0007040600070406ull

static const struct msr_entry boot_msrs[] = {
	{ MSR_IA32_SYSENTER_CS, 0 },
	{ MSR_IA32_SYSENTER_ESP, 0 },
	{ MSR_IA32_SYSENTER_EIP, 0 },
	{ MSR_STAR, 0 },
	{ MSR_CSTAR, 0 },
	{ MSR_KERNEL_GS_BASE, 0 },
	{ MSR_SFMASK, 0 },
	{ MSR_LSTAR, 0 },
	{ MSR_IA32_TSC, 0 },
	{ MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING },
	{ MSR_IA32_MTRR_DEF_TYPE, MTRR_DEF_TYPE_ENABLE | MTRR_TYPE_WB },
	{ MSR_IA32_PAT, PAT_POWER_ON },
};
_Static_assert(sizeof(boot_msrs) / sizeof(boot_msrs[0]) <= MSR_BOOT_MAX, "MSR_BOOT_MAX");

unsigned int msr_boot_defaults(struct msr_entry *out, unsigned int max_out)
{
	unsigned int n = min_u(sizeof(boot_msrs) / sizeof(boot_msrs[0]), max_out);
	if (n)
		memcpy(out, boot_msrs, n * sizeof(out[0]));
	return n;
}
