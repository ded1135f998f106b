/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "vmm/cpuid.h"

#define SIG KVM_CPUID_FLAG_SIGNIFCANT_INDEX
#define ALL 0xffffffffu

/* A KVM_GET_SUPPORTED_CPUID as an Intel host with everything might report it. */
static const struct kvm_cpuid_entry2 fake[] = {
	{ .function = 0x0, .eax = 0x1f, .ebx = 0x756e6547, .ecx = 0x6c65746e, .edx = 0x49656e69 },
	{ .function = 0x1, .eax = 0x000806f8, .ebx = 0x12340800, .ecx = 0x7ffefbff,
	  .edx = 0xbfebfbff },
	/* leaf 4: L1d, L1i, L2, L3 as a 56-core host reports them, then the null entry */
	{ .function = 0x4, .index = 0, .flags = SIG, .eax = 0xfc004121, .ebx = 0x02c0003f,
	  .ecx = 0x3f },
	{ .function = 0x4, .index = 1, .flags = SIG, .eax = 0xfc004122, .ebx = 0x01c0003f,
	  .ecx = 0x3f },
	{ .function = 0x4, .index = 2, .flags = SIG, .eax = 0xfc004143, .ebx = 0x03c0003f,
	  .ecx = 0x7ff },
	{ .function = 0x4, .index = 3, .flags = SIG, .eax = 0xfc0fc163, .ebx = 0x03c0003f,
	  .ecx = 0x1ffff },
	{ .function = 0x4, .index = 4, .flags = SIG },
	{ .function = 0x6, .eax = 0x77, .ebx = 0x2, .ecx = 0x9 },
	{ .function = 0x7, .index = 0, .flags = SIG, .eax = 1, .ebx = ALL, .ecx = ALL, .edx = ALL },
	{ .function = 0x7, .index = 1, .flags = SIG, .eax = ALL, .edx = ALL },
	{ .function = 0xa, .eax = 0x08300805, .edx = 0x603 },
	{ .function = 0xb, .index = 0, .flags = SIG, .eax = 1, .ebx = 2, .ecx = 0x100, .edx = 7 },
	{ .function = 0xb, .index = 1, .flags = SIG, .eax = 7, .ebx = 112, .ecx = 0x201, .edx = 7 },
	{ .function = 0xd, .index = 0, .flags = SIG, .eax = 0x602e7, .ebx = 0xa88, .ecx = 0x2b00 },
	{ .function = 0xd, .index = 1, .flags = SIG, .eax = 0x1f },
	{ .function = 0xd, .index = 2, .flags = SIG, .eax = 0x100, .ebx = 0x240 },
	{ .function = 0x14, .index = 0, .flags = SIG, .eax = 1, .ebx = 0xf },
	{ .function = 0x1f, .index = 0, .flags = SIG, .eax = 1, .ebx = 2, .ecx = 0x100 },
	{ .function = 0x40000000, .eax = 0x40000001, .ebx = 0x4b4d564b, .ecx = 0x564b4d56,
	  .edx = 0x4d },
	{ .function = 0x40000001, .eax = 0x01007afb },
	{ .function = 0x80000000, .eax = 0x80000008 },
	{ .function = 0x80000001, .ecx = ALL, .edx = 0x2c100800 },
	{ .function = 0x80000008, .eax = 0x3030, .ebx = 0x200, .ecx = 0x3f037 },
};
#define NFAKE (sizeof(fake) / sizeof(fake[0]))

static struct kvm_cpuid_entry2 out[CPUID_MAX_ENTRIES];

static const struct kvm_cpuid_entry2 *get(unsigned int n, uint32_t fn, uint32_t idx)
{
	const struct kvm_cpuid_entry2 *e = cpuid_find(out, n, fn, idx);
	assert_non_null(e);
	return e;
}

static unsigned int build(unsigned int cpu, unsigned int ncpus, enum cpu_template t)
{
	unsigned int n = 0;
	assert_int_equal(cpuid_build(fake, NFAKE, cpu, ncpus, t, out, CPUID_MAX_ENTRIES, &n), 0);
	return n;
}

static void check_topology(unsigned int ncpus, unsigned int shift)
{
	unsigned int pow2 = 1u << shift;
	for (unsigned int cpu = 0; cpu < ncpus; cpu++) {
		unsigned int n = build(cpu, ncpus, CPU_TEMPLATE_HOST);
		const struct kvm_cpuid_entry2 *e = get(n, 1, 0);
		assert_int_equal(e->ebx >> 24, cpu);
		assert_int_equal((e->ebx >> 16) & 0xff, ncpus > 1 ? (pow2 > 255 ? 255 : pow2) : 1);
		assert_int_equal(e->ebx & 0xffff, 0x0800); /* CLFLUSH size kept */
		assert_int_equal(!!(e->edx & (1u << 28)), ncpus > 1);
		assert_true(e->ecx & (1u << 31));

		for (unsigned int sub = 0; sub < 4; sub++) {
			e = get(n, 4, sub);
			assert_int_equal(e->eax >> 26, (pow2 > 64 ? 64 : pow2) - 1);
			unsigned int level = (e->eax >> 5) & 7;
			assert_int_equal((e->eax >> 14) & 0xfff, level >= 3 ? pow2 - 1 : 0);
			assert_int_equal(e->eax & 0x3ff, fake[2 + sub].eax & 0x3ff);
		}
		assert_int_equal(get(n, 4, 4)->eax, 0);

		for (uint32_t leaf = 0xb; leaf <= 0x1f; leaf += 0x14) {
			e = get(n, leaf, 0);
			assert_int_equal(e->edx, cpu);
			assert_int_equal(e->eax, 0);
			assert_int_equal(e->ebx, 1);
			assert_int_equal(e->ecx, 0x100);
			e = get(n, leaf, 1);
			assert_int_equal(e->edx, cpu);
			assert_int_equal(e->eax, shift);
			assert_int_equal(e->ebx, ncpus);
			assert_int_equal(e->ecx, 0x201);
			e = get(n, leaf, 2);
			assert_int_equal(e->ecx, 2);
			assert_int_equal(e->ebx, 0);
		}
		e = get(n, 0x80000008, 0);
		assert_int_equal(e->ecx & 0xff, ncpus - 1);
		assert_int_equal((e->ecx >> 12) & 0xf, shift);
		assert_int_equal(e->eax, 0x3030);
		/* KVM's paravirt leaves exactly as reported. */
		assert_memory_equal(get(n, 0x40000000, 0), &fake[18], sizeof(fake[18]));
		assert_memory_equal(get(n, 0x40000001, 0), &fake[19], sizeof(fake[19]));
		/* Leaf 6: ARAT only. */
		e = get(n, 6, 0);
		assert_int_equal(e->eax, 4);
		assert_int_equal(e->ebx | e->ecx | e->edx, 0);
		/* One entry per (leaf, subleaf). */
		for (unsigned int i = 0; i < n; i++)
			for (unsigned int j = i + 1; j < n; j++)
				assert_false(out[i].function == out[j].function &&
					     out[i].index == out[j].index);
	}
}

static void test_topology_1(void **state)
{
	check_topology(1, 0);
}

static void test_topology_2(void **state)
{
	check_topology(2, 1);
}

static void test_topology_3(void **state)
{
	check_topology(3, 2);
}

static void test_topology_4(void **state)
{
	check_topology(4, 2);
}

static void test_topology_64(void **state)
{
	check_topology(64, 6);
}

static void test_topology_max(void **state)
{
	unsigned int n = build(254, CPUID_MAX_CPUS, CPU_TEMPLATE_HOST);
	assert_int_equal(get(n, 1, 0)->ebx >> 24, 254);
	assert_int_equal((get(n, 1, 0)->ebx >> 16) & 0xff, 255);
	assert_int_equal(get(n, 4, 0)->eax >> 26, 63);
	assert_int_equal(get(n, 0xb, 1)->eax, 8);
}

static void test_errors(void **state)
{
	unsigned int n = 99;
	assert_int_equal(cpuid_build(fake, NFAKE, 2, 2, CPU_TEMPLATE_HOST, out, 256, &n), -EINVAL);
	assert_int_equal(n, 0);
	assert_int_equal(cpuid_build(fake, NFAKE, 0, 0, CPU_TEMPLATE_HOST, out, 256, &n), -EINVAL);
	assert_int_equal(cpuid_build(fake, NFAKE, 0, CPUID_MAX_CPUS + 1, CPU_TEMPLATE_HOST, out,
				     256, &n),
			 -EINVAL);
	assert_int_equal(cpuid_build(fake, NFAKE, 0, 1, (enum cpu_template)7, out, 256, &n),
			 -EINVAL);
	assert_int_equal(cpuid_build(fake, NFAKE, 0, 1, CPU_TEMPLATE_HOST, out, 5, &n), -ENOSPC);
	/* Leaf 0xB is answered even when KVM did not list it. */
	unsigned int k = 0;
	assert_int_equal(cpuid_build(fake, 2, 0, 2, CPU_TEMPLATE_HOST, out, 256, &k), 0);
	assert_int_equal(k, 5);
	assert_int_equal(get(k, 0xb, 1)->ebx, 2);
}

/* The bits the baseline must hide (the brief's list, written out independently). */
static const struct {
	uint32_t fn, idx;
	enum cpuid_reg reg;
	unsigned int bit;
} hidden[] = {
	{ 1, 0, CPUID_ECX, 5 },	  /* VMX */
	{ 1, 0, CPUID_ECX, 12 },  /* FMA */
	{ 1, 0, CPUID_ECX, 13 },  /* CX16 */
	{ 1, 0, CPUID_ECX, 15 },  /* PDCM */
	{ 1, 0, CPUID_ECX, 26 },  /* XSAVE */
	{ 1, 0, CPUID_ECX, 27 },  /* OSXSAVE */
	{ 1, 0, CPUID_ECX, 28 },  /* AVX */
	{ 1, 0, CPUID_ECX, 29 },  /* F16C */
	{ 7, 0, CPUID_EBX, 5 },	  /* AVX2 */
	{ 7, 0, CPUID_EBX, 14 },  /* MPX */
	{ 7, 0, CPUID_EBX, 16 },  /* AVX512F */
	{ 7, 0, CPUID_EBX, 17 },  /* AVX512DQ */
	{ 7, 0, CPUID_EBX, 21 },  /* AVX512IFMA */
	{ 7, 0, CPUID_EBX, 26 },  /* AVX512PF */
	{ 7, 0, CPUID_EBX, 27 },  /* AVX512ER */
	{ 7, 0, CPUID_EBX, 28 },  /* AVX512CD */
	{ 7, 0, CPUID_EBX, 30 },  /* AVX512BW */
	{ 7, 0, CPUID_EBX, 31 },  /* AVX512VL */
	{ 7, 0, CPUID_ECX, 1 },	  /* AVX512VBMI */
	{ 7, 0, CPUID_ECX, 3 },	  /* PKU */
	{ 7, 0, CPUID_ECX, 9 },	  /* VAES */
	{ 7, 0, CPUID_ECX, 10 },  /* VPCLMULQDQ */
	{ 7, 0, CPUID_ECX, 11 },  /* AVX512_VNNI */
	{ 7, 0, CPUID_EDX, 22 },  /* AMX_BF16 */
	{ 7, 0, CPUID_EDX, 24 },  /* AMX_TILE */
	{ 7, 0, CPUID_EDX, 25 },  /* AMX_INT8 */
	{ 7, 1, CPUID_EAX, 4 },	  /* AVX_VNNI */
	{ 7, 1, CPUID_EAX, 5 },	  /* AVX512_BF16 */
	{ 0x80000001, 0, CPUID_ECX, 2 },  /* SVM */
	{ 0x80000001, 0, CPUID_ECX, 11 }, /* XOP */
	{ 0x80000001, 0, CPUID_ECX, 16 }, /* FMA4 */
	{ 0x80000001, 0, CPUID_EDX, 26 }, /* 1 GiB pages */
};

static uint32_t regval(const struct kvm_cpuid_entry2 *e, enum cpuid_reg r)
{
	return r == CPUID_EAX ? e->eax : r == CPUID_EBX ? e->ebx : r == CPUID_ECX ? e->ecx : e->edx;
}

static void test_baseline_hides(void **state)
{
	unsigned int n = build(0, 2, CPU_TEMPLATE_BASELINE);
	for (size_t i = 0; i < sizeof(hidden) / sizeof(hidden[0]); i++) {
		const struct kvm_cpuid_entry2 *e = get(n, hidden[i].fn, hidden[i].idx);
		if (regval(e, hidden[i].reg) & (1u << hidden[i].bit))
			fail_msg("baseline leaks leaf 0x%x.%u reg %d bit %u", hidden[i].fn,
				 hidden[i].idx, hidden[i].reg, hidden[i].bit);
	}
	/* Kept: MOVBE, SSE4.2, AES, POPCNT, x2APIC, the hypervisor bit; LM, NX. */
	const struct kvm_cpuid_entry2 *e = get(n, 1, 0);
	assert_int_equal(e->ecx & ((1u << 22) | (1u << 20) | (1u << 25) | (1u << 23) | (1u << 21)),
			 (1u << 22) | (1u << 20) | (1u << 25) | (1u << 23) | (1u << 21));
	assert_true(e->ecx & (1u << 31));
	assert_true(get(n, 0x80000001, 0)->edx & (1u << 29));
	assert_true(get(n, 0x80000001, 0)->edx & (1u << 20));
	/* Leaf 0xD: x87+SSE only, no XSAVE variants, no component subleaves. */
	e = get(n, 0xd, 0);
	assert_int_equal(e->eax, 3);
	assert_int_equal(e->edx, 0);
	assert_int_equal(e->ebx, 576);
	assert_int_equal(e->ecx, 576);
	assert_int_equal(get(n, 0xd, 1)->eax, 0);
	assert_null(cpuid_find(out, n, 0xd, 2));
	assert_null(cpuid_find(out, n, 0x14, 0));
	e = get(n, 0xa, 0);
	assert_int_equal(e->eax | e->ebx | e->ecx | e->edx, 0);
	/* Topology is the same as with the host template. */
	assert_int_equal(get(n, 0xb, 1)->ebx, 2);
}

static void test_host_keeps(void **state)
{
	unsigned int n = build(0, 2, CPU_TEMPLATE_HOST);
	for (size_t i = 0; i < sizeof(hidden) / sizeof(hidden[0]); i++) {
		const struct kvm_cpuid_entry2 *e = get(n, hidden[i].fn, hidden[i].idx);
		const struct kvm_cpuid_entry2 *s = cpuid_find(fake, NFAKE, hidden[i].fn,
							      hidden[i].idx);
		assert_int_equal(regval(e, hidden[i].reg) & (1u << hidden[i].bit),
				 regval(s, hidden[i].reg) & (1u << hidden[i].bit));
	}
	assert_memory_equal(get(n, 0xd, 2), &fake[15], sizeof(fake[15]));
	assert_memory_equal(get(n, 0xa, 0), &fake[10], sizeof(fake[10]));
	assert_non_null(cpuid_find(out, n, 0x14, 0));
}

static void test_template_parse(void **state)
{
	enum cpu_template t = CPU_TEMPLATE_BASELINE;
	assert_int_equal(cpu_template_parse("host", &t), 0);
	assert_int_equal(t, CPU_TEMPLATE_HOST);
	assert_int_equal(cpu_template_parse("baseline", &t), 0);
	assert_int_equal(t, CPU_TEMPLATE_BASELINE);
	assert_int_equal(cpu_template_parse("Host", &t), -EINVAL);
	assert_int_equal(cpu_template_parse("", &t), -EINVAL);
	assert_int_equal(cpu_template_parse("hostx", &t), -EINVAL);
	assert_int_equal(cpu_template_parse(NULL, &t), -EINVAL);
	assert_string_equal(cpu_template_name(CPU_TEMPLATE_HOST), "host");
	assert_string_equal(cpu_template_name(CPU_TEMPLATE_BASELINE), "baseline");
}

static void test_missing_features(void **state)
{
	struct kvm_cpuid_entry2 image[CPUID_MAX_ENTRIES], host[NFAKE];
	struct cpuid_feature miss[8];
	char msg[80];

	unsigned int n = build(1, 4, CPU_TEMPLATE_HOST);
	memcpy(image, out, n * sizeof(out[0]));
	memcpy(host, fake, sizeof(fake));

	/* Same host: nothing missing, though the image has topology/hypervisor bits set. */
	assert_int_equal(cpuid_missing_features(image, n, host, NFAKE, NULL, 0), 0);

	/* A host without AVX2 and without AVX-512 state. */
	host[8].ebx &= ~(1u << 5);
	host[13].eax &= ~0xe0u;
	unsigned int m = cpuid_missing_features(image, n, host, NFAKE, miss, 8);
	assert_int_equal(m, 4);
	assert_int_equal(miss[0].function, 7);
	assert_int_equal(miss[0].reg, CPUID_EBX);
	assert_int_equal(miss[0].bit, 5);
	cpuid_feature_describe(&miss[0], msg, sizeof(msg));
	assert_string_equal(msg, "AVX2 (leaf 0x7 EBX bit 5)");
	cpuid_feature_describe(&miss[1], msg, sizeof(msg));
	assert_string_equal(msg, "AVX-512 opmask state (leaf 0xd EAX bit 5)");
	/* Only the first max_out are stored; the count is complete. */
	assert_int_equal(cpuid_missing_features(image, n, host, NFAKE, miss, 1), 4);

	/* A baseline image runs on that host. */
	n = build(0, 4, CPU_TEMPLATE_BASELINE);
	memcpy(image, out, n * sizeof(out[0]));
	assert_int_equal(cpuid_missing_features(image, n, host, NFAKE, NULL, 0), 0);

	/* A leaf the host does not list at all: every bit is missing; unnamed bits still show. */
	host[9].function = 0x99;
	m = cpuid_missing_features(image, n, host, NFAKE, miss, 8);
	assert_true(m > 0);
	assert_int_equal(miss[0].function, 7);
	assert_int_equal(miss[0].index, 1);
	struct cpuid_feature f = { .function = 7, .index = 1, .reg = CPUID_EDX, .bit = 9 };
	cpuid_feature_describe(&f, msg, sizeof(msg));
	assert_string_equal(msg, "leaf 0x7.1 EDX bit 9");
}

static void test_msr_defaults(void **state)
{
	struct msr_entry m[MSR_BOOT_MAX];
	unsigned int n = msr_boot_defaults(m, MSR_BOOT_MAX);
	assert_true(n >= 12 && n <= MSR_BOOT_MAX);
	static const struct msr_entry want[] = {
		{ 0x10, 0 },	       /* TSC */
		{ 0x174, 0 },	       /* SYSENTER_CS */
		{ 0x175, 0 },	       { 0x176, 0 },	    { 0xc0000081, 0 }, /* STAR */
		{ 0xc0000082, 0 },     { 0xc0000083, 0 },   { 0xc0000084, 0 },
		{ 0xc0000102, 0 },     { 0x1a0, 1 },	    /* MISC_ENABLE fast strings */
		{ 0x2ff, 0x806 },      /* MTRR default WB, enabled */
		{ 0x277, 0x0007040600070406ull },
	};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		bool found = false;
		for (unsigned int j = 0; j < n; j++)
			if (m[j].index == want[i].index) {
				assert_int_equal(m[j].value, want[i].value);
				found = true;
			}
		assert_true(found);
	}
	assert_int_equal(msr_boot_defaults(m, 3), 3);
	assert_int_equal(msr_boot_defaults(NULL, 0), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_topology_1),	 cmocka_unit_test(test_topology_2),
		cmocka_unit_test(test_topology_3),	 cmocka_unit_test(test_topology_4),
		cmocka_unit_test(test_topology_64),	 cmocka_unit_test(test_topology_max),
		cmocka_unit_test(test_errors),		 cmocka_unit_test(test_baseline_hides),
		cmocka_unit_test(test_host_keeps),	 cmocka_unit_test(test_template_parse),
		cmocka_unit_test(test_missing_features), cmocka_unit_test(test_msr_defaults),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
