/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for vmm/boot.c: synthesized bzImages and PVH ELF files are loaded into a gmem
 * backed by an anonymous mapping, and what lands in guest RAM and the registers is checked.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <cmocka.h>

#include "util/log.h"
#include "vmm/boot.h"
#include "vmm/gmem.h"

#define RAM_SIZE (64ull << 20)

/* ---- helpers --------------------------------------------------------------------------- */

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
	put16(p, (uint16_t)v);
	put16(p + 2, (uint16_t)(v >> 16));
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)get16(p) | (uint32_t)get16(p + 2) << 16;
}

static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static struct gmem *new_ram(uint64_t size)
{
	struct gmem *m = calloc(1, sizeof(*m));
	assert_non_null(m);
	assert_int_equal(gmem_layout(m, size), 0);
	m->fd = -1;
	m->host = mmap(NULL, size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	assert_true(m->host != MAP_FAILED);
	return m;
}

static void free_ram(struct gmem *m)
{
	munmap(m->host, m->size);
	free(m);
}

static int setup_ram(void **state)
{
	*state = new_ram(RAM_SIZE);
	return 0;
}

static int teardown_ram(void **state)
{
	free_ram(*state);
	return 0;
}

static uint8_t *at(struct gmem *m, uint64_t gpa, uint64_t len)
{
	uint8_t *p = gmem_ptr(m, gpa, len);
	assert_non_null(p);
	return p;
}

/* ---- synthesized images ---------------------------------------------------------------- */

#define BZ_SETUP_SIZE 1024 /* setup_sects = 1 */
#define BZ_PAYLOAD 8192
#define BZ_LEN (BZ_SETUP_SIZE + BZ_PAYLOAD)
#define BZ_PREF 0x1000000u
#define BZ_INIT_SIZE 0x400000u

/* A bzImage header (protocol @version) with a protected-mode payload of a byte pattern. */
static uint8_t *make_bzimage(uint16_t version, uint16_t xloadflags, int relocatable)
{
	uint8_t *k = calloc(1, BZ_LEN);
	assert_non_null(k);
	k[0x1f1] = 1;
	put16(k + 0x1fe, 0xaa55);
	k[0x200] = 0xeb;
	k[0x201] = 0x6a; /* header ends at 0x26c */
	memcpy(k + 0x202, "HdrS", 4);
	put16(k + 0x206, version);
	k[0x211] = 0x01; /* LOADED_HIGH */
	put32(k + 0x22c, 0x7fffffff);
	put32(k + 0x230, 0x200000);
	k[0x234] = (uint8_t)relocatable;
	put16(k + 0x236, xloadflags);
	put32(k + 0x238, 2047);
	put64(k + 0x258, BZ_PREF);
	put32(k + 0x260, BZ_INIT_SIZE);
	for (size_t i = BZ_SETUP_SIZE; i < BZ_LEN; i++)
		k[i] = (uint8_t)(i * 7);
	return k;
}

struct seg_spec {
	uint32_t type;
	uint64_t paddr;
	uint64_t filesz, memsz;
};

enum { NOTE_NONE, NOTE_PHDR, NOTE_SECTION };

#define ELF_NOTE_OFF 0x400
#define ELF_DATA_OFF 0x1000
#define ELF_MAX_LEN 0x10000

/*
 * An ELF file (class 64 or 32) with @n PT_LOAD segments, each's file data at
 * ELF_DATA_OFF + i * 0x1000 filled with 0x11 * (i + 1), and a Xen PHYS32_ENTRY note with a
 * @descsz-byte value in a PT_NOTE segment or only in an SHT_NOTE section.
 */
static uint8_t *make_elf(int is64, const struct seg_spec *segs, int n, uint64_t entry,
			 int note, uint32_t descsz, size_t *len)
{
	uint8_t *f = calloc(1, ELF_MAX_LEN);
	size_t phsz = is64 ? 56 : 32, phoff = is64 ? 64 : 52;
	int nph = n + (note == NOTE_PHDR);
	assert_non_null(f);
	memcpy(f, "\x7f" "ELF", 4);
	f[4] = is64 ? 2 : 1;
	f[5] = 1;
	f[6] = 1;
	put16(f + 16, 2); /* ET_EXEC */
	put16(f + 18, is64 ? 62 : 3);
	put32(f + 20, 1);
	uint32_t notesz = 12 + 4 + ((descsz + 3) & ~3u);
	/* the note itself, preceded by an unrelated note to be skipped */
	uint8_t *nt = f + ELF_NOTE_OFF;
	put32(nt, 4);
	put32(nt + 4, 3);
	put32(nt + 8, 6);
	memcpy(nt + 12, "Xen", 4);
	memcpy(nt + 16, "abc", 3);
	nt += 20;
	put32(nt, 4);
	put32(nt + 4, descsz);
	put32(nt + 8, 18);
	memcpy(nt + 12, "Xen", 4);
	if (descsz == 8)
		put64(nt + 16, entry);
	else
		put32(nt + 16, (uint32_t)entry);
	notesz += 20;
	if (is64) {
		put64(f + 24, entry);
		put64(f + 32, phoff);
		put16(f + 52, 64);
		put16(f + 54, (uint16_t)phsz);
		put16(f + 56, (uint16_t)nph);
	} else {
		put32(f + 24, (uint32_t)entry);
		put32(f + 28, (uint32_t)phoff);
		put16(f + 40, 52);
		put16(f + 42, (uint16_t)phsz);
		put16(f + 44, (uint16_t)nph);
	}
	for (int i = 0; i < nph; i++) {
		uint8_t *p = f + phoff + i * phsz;
		struct seg_spec s = i < n ? segs[i]
					  : (struct seg_spec){ 4, 0, notesz, notesz };
		uint64_t off = i < n ? ELF_DATA_OFF + (uint64_t)i * 0x1000 : ELF_NOTE_OFF;
		if (i < n) {
			assert_true(s.filesz <= 0x1000);
			memset(f + off, 0x11 * (i + 1), s.filesz);
		}
		if (is64) {
			put32(p, s.type);
			put64(p + 8, off);
			put64(p + 16, s.paddr);
			put64(p + 24, s.paddr);
			put64(p + 32, s.filesz);
			put64(p + 40, s.memsz);
		} else {
			put32(p, s.type);
			put32(p + 4, (uint32_t)off);
			put32(p + 8, (uint32_t)s.paddr);
			put32(p + 12, (uint32_t)s.paddr);
			put32(p + 16, (uint32_t)s.filesz);
			put32(p + 20, (uint32_t)s.memsz);
		}
	}
	*len = ELF_DATA_OFF + (size_t)n * 0x1000;
	if (note == NOTE_SECTION) {
		/* section table at 0x800: a null section and the note section */
		size_t shsz = is64 ? 64 : 40, shoff = 0x800;
		uint8_t *s = f + shoff + shsz;
		put32(s + 4, 7); /* SHT_NOTE */
		if (is64) {
			put64(s + 24, ELF_NOTE_OFF);
			put64(s + 32, notesz);
			put64(f + 40, shoff);
			put16(f + 58, (uint16_t)shsz);
			put16(f + 60, 2);
		} else {
			put32(s + 16, ELF_NOTE_OFF);
			put32(s + 20, notesz);
			put32(f + 32, (uint32_t)shoff);
			put16(f + 46, (uint16_t)shsz);
			put16(f + 48, 2);
		}
	}
	if (note == NOTE_NONE)
		memset(f + ELF_NOTE_OFF, 0, 64);
	return f;
}

static int load(struct gmem *m, const uint8_t *k, size_t len, const uint8_t *initrd,
		size_t initrd_len, const char *cmdline, unsigned int ncpus, struct kvm_regs *regs,
		struct kvm_sregs *sregs, struct boot_info *info)
{
	struct boot_config c = { .kernel = k, .kernel_len = len, .initrd = initrd,
				 .initrd_len = initrd_len, .cmdline = cmdline, .ncpus = ncpus };
	struct kvm_regs r;
	struct kvm_sregs s;
	if (!sregs)
		sregs = &s;
	memset(sregs, 0, sizeof(*sregs));
	sregs->cr0 = 0x60000010; /* what KVM_GET_SREGS gives at reset */
	sregs->apic_base = 0xfee00900;
	return boot_load(m, &c, regs ? regs : &r, sregs, info);
}

/* ---- MP table checks ------------------------------------------------------------------- */

static uint8_t sum8(const uint8_t *p, size_t n)
{
	uint8_t s = 0;
	while (n--)
		s = (uint8_t)(s + *p++);
	return s;
}

static void check_mptable(struct gmem *m, unsigned int ncpus)
{
	uint8_t *mpf = at(m, BOOT_MPTABLE_ADDR, 16);
	assert_memory_equal(mpf, "_MP_", 4);
	assert_int_equal(sum8(mpf, 16), 0);
	assert_int_equal(mpf[8], 1);
	assert_int_equal(mpf[9], 4);
	assert_int_equal(mpf[11], 0); /* config table present, not a default configuration */
	uint32_t phys = get32(mpf + 4);
	assert_true(phys >= 0xf0000 && phys < 0x100000);
	uint8_t *mpc = at(m, phys, 44);
	assert_memory_equal(mpc, "PCMP", 4);
	uint16_t len = get16(mpc + 4);
	mpc = at(m, phys, len);
	assert_int_equal(sum8(mpc, len), 0);
	assert_int_equal(get32(mpc + 36), 0xfee00000);
	unsigned int count = get16(mpc + 34), cpus = 0, bsps = 0, buses = 0, ioapics = 0;
	unsigned int ioints = 0, lints = 0, irq0_pin = 0xff;
	uint8_t *e = mpc + 44, *end = mpc + len;
	for (unsigned int i = 0; i < count; i++) {
		assert_true(e < end);
		switch (e[0]) {
		case 0:
			assert_int_equal(e[1], cpus); /* APIC id = index */
			assert_true(e[3] & 1);
			bsps += (e[3] & 2) != 0;
			if (e[3] & 2)
				assert_int_equal(e[1], 0);
			cpus++;
			e += 20;
			break;
		case 1:
			assert_memory_equal(e + 2, "ISA   ", 6);
			buses++;
			e += 8;
			break;
		case 2:
			assert_int_equal(e[1], ncpus);
			assert_int_equal(e[2], 0x11);
			assert_int_equal(get32(e + 4), 0xfec00000);
			ioapics++;
			e += 8;
			break;
		case 3:
			assert_int_equal(e[6], ncpus);
			if (e[5] == 0)
				irq0_pin = e[7];
			ioints++;
			e += 8;
			break;
		case 4:
			assert_int_equal(e[7], lints);
			assert_int_equal(e[1], lints == 0 ? 3 : 1); /* ExtINT, NMI */
			lints++;
			e += 8;
			break;
		default:
			fail_msg("unknown MP entry type %u", e[0]);
		}
	}
	assert_ptr_equal(e, end);
	assert_int_equal(cpus, ncpus);
	assert_int_equal(bsps, 1);
	assert_int_equal(buses, 1);
	assert_int_equal(ioapics, 1);
	assert_int_equal(ioints, 15);
	assert_int_equal(irq0_pin, 2);
	assert_int_equal(lints, 2);
}

/* e820-style entries at @p (stride 20 for the zero page, 24 for the PVH memmap) */
static void check_memmap(const uint8_t *p, unsigned int n, size_t stride, uint64_t low_end)
{
	assert_int_equal(n, 3);
	assert_int_equal(get64(p), 0);
	assert_int_equal(get64(p + 8), 0x9fc00);
	assert_int_equal(get32(p + 16), 1);
	p += stride;
	assert_int_equal(get64(p), 0x9fc00);
	assert_int_equal(get64(p + 8), 0x100000 - 0x9fc00);
	assert_int_equal(get32(p + 16), 2);
	p += stride;
	assert_int_equal(get64(p), 0x100000);
	assert_int_equal(get64(p + 8), low_end - 0x100000);
	assert_int_equal(get32(p + 16), 1);
}

static void check_segment(const struct kvm_segment *s, uint16_t sel, uint8_t type, int l, int db)
{
	assert_int_equal(s->selector, sel);
	assert_int_equal(s->base, 0);
	assert_int_equal(s->limit, 0xffffffff);
	assert_int_equal(s->type, type);
	assert_int_equal(s->present, 1);
	assert_int_equal(s->s, 1);
	assert_int_equal(s->dpl, 0);
	assert_int_equal(s->l, l);
	assert_int_equal(s->db, db);
	assert_int_equal(s->g, 1);
}

static void check_tr_and_gdt(struct gmem *m, const struct kvm_sregs *s, int long_mode)
{
	assert_int_equal(s->tr.selector, BOOT_TSS);
	assert_int_equal(s->tr.base, 0);
	assert_int_equal(s->tr.limit, 0x67);
	assert_int_equal(s->tr.type, 11);
	assert_int_equal(s->tr.present, 1);
	assert_int_equal(s->tr.s, 0);
	assert_int_equal(s->gdt.base, BOOT_GDT_ADDR);
	assert_true(s->gdt.limit >= BOOT_TSS + 7);
	uint8_t *gdt = at(m, BOOT_GDT_ADDR, s->gdt.limit + 1u);
	assert_int_equal(get64(gdt + BOOT_CS),
			 long_mode ? 0x00af9b000000ffffull : 0x00cf9b000000ffffull);
	assert_int_equal(get64(gdt + BOOT_DS), 0x00cf93000000ffffull);
	assert_int_equal(get64(gdt + BOOT_TSS), 0x00008b0000000067ull);
}

/* ---- bzImage ------------------------------------------------------------------------------ */

static void test_bz_entry_state(void **state)
{
	struct gmem *m = *state;
	uint8_t *k = make_bzimage(0x020f, 0x3, 1);
	struct kvm_regs r;
	struct kvm_sregs s;
	struct boot_info bi;

	assert_int_equal(load(m, k, BZ_LEN, NULL, 0, "console=ttyS0", 1, &r, &s, &bi), 0);
	assert_int_equal(bi.format, BOOT_FORMAT_BZIMAGE);
	assert_int_equal(r.rip, BZ_PREF + 0x200);
	assert_int_equal(r.rsi, BOOT_PARAMS_ADDR);
	assert_int_equal(r.rflags, 2);
	assert_int_equal(r.rax, 0);
	assert_int_equal(s.cr0 & 0x80000001, 0x80000001);
	assert_int_equal(s.cr0 & 0x60000000, 0); /* caches on */
	assert_int_equal(s.cr4, 0x20);
	assert_int_equal(s.efer, 0x500);
	assert_int_equal(s.cr3, BOOT_PML4_ADDR);
	assert_int_equal(s.apic_base, 0xfee00900); /* untouched */
	check_segment(&s.cs, 0x10, 0xb, 1, 0);
	check_segment(&s.ds, 0x18, 0x3, 0, 1);
	check_segment(&s.ss, 0x18, 0x3, 0, 1);
	check_tr_and_gdt(m, &s, 1);

	/* identity map of 4 GiB with 2 MiB pages, no 1 GiB pages */
	uint8_t *pml4 = at(m, s.cr3, 4096);
	uint64_t pdpt = get64(pml4) & ~0xfffull;
	assert_int_equal(get64(pml4) & 0x83, 0x3);
	for (uint64_t gib = 0; gib < 4; gib++) {
		uint64_t pde = get64(at(m, pdpt + gib * 8, 8));
		assert_int_equal(pde & 0x83, 0x3);
		uint8_t *pd = at(m, pde & ~0xfffull, 4096);
		for (uint64_t i = 0; i < 512; i += 97)
			assert_int_equal(get64(pd + i * 8),
					 ((gib << 30) | (i << 21)) | 0x83);
	}
	/* the protected-mode kernel is at the load address */
	assert_memory_equal(at(m, BZ_PREF, BZ_PAYLOAD), k + BZ_SETUP_SIZE, BZ_PAYLOAD);
	check_mptable(m, 1);
	free(k);
}

static void test_bz_zero_page(void **state)
{
	struct gmem *m = *state;
	uint8_t *k = make_bzimage(0x020c, 0x1, 1);
	const char *cmd = "console=ttyS0 root=/dev/vda";

	assert_int_equal(load(m, k, BZ_LEN, NULL, 0, cmd, 4, NULL, NULL, NULL), 0);
	uint8_t *zp = at(m, BOOT_PARAMS_ADDR, 4096);
	assert_memory_equal(zp + 0x202, "HdrS", 4);
	assert_int_equal(get16(zp + 0x206), 0x020c);
	assert_int_equal(zp[0x1ef], 0); /* sentinel */
	assert_int_equal(zp[0x210], 0xff);
	assert_int_equal(zp[0x211], 0x81); /* LOADED_HIGH | CAN_USE_HEAP */
	assert_int_equal(get16(zp + 0x224), 0xfe00);
	assert_int_equal(get16(zp + 0x1fa), 0xffff);
	assert_int_equal(get32(zp + 0x228), BOOT_CMDLINE_ADDR);
	assert_int_equal(get32(zp + 0xc8), 0);
	assert_int_equal(get32(zp + 0x218), 0);
	assert_int_equal(get32(zp + 0x21c), 0);
	assert_int_equal(get64(zp + 0x258), BZ_PREF);
	assert_int_equal(get32(zp + 0x260), BZ_INIT_SIZE);
	assert_string_equal((char *)at(m, BOOT_CMDLINE_ADDR, strlen(cmd) + 1), cmd);
	assert_int_equal(zp[0x1e8], 3);
	check_memmap(zp + 0x2d0, zp[0x1e8], 20, RAM_SIZE);
	check_mptable(m, 4);
	free(k);
}

static void test_bz_initrd(void **state)
{
	struct gmem *m = *state;
	uint8_t *k = make_bzimage(0x020f, 0x3, 1);
	size_t ilen = 100000;
	uint8_t *initrd = malloc(ilen);
	struct boot_info bi;
	for (size_t i = 0; i < ilen; i++)
		initrd[i] = (uint8_t)(i * 13 + 1);

	/* highest below RAM end, page aligned */
	assert_int_equal(load(m, k, BZ_LEN, initrd, ilen, "", 1, NULL, NULL, &bi), 0);
	uint8_t *zp = at(m, BOOT_PARAMS_ADDR, 4096);
	uint32_t addr = get32(zp + 0x218);
	assert_int_equal(addr % 4096, 0);
	assert_true(addr + ilen <= RAM_SIZE);
	assert_true(addr + ilen + 4096 > RAM_SIZE);
	assert_int_equal(get32(zp + 0x21c), ilen);
	assert_int_equal(get32(zp + 0xc0), 0);
	assert_int_equal(get32(zp + 0xc4), 0);
	assert_int_equal(bi.initrd_addr, addr);
	assert_memory_equal(at(m, addr, ilen), initrd, ilen);

	/* below initrd_addr_max */
	put32(k + 0x22c, 0x1ffffff);
	assert_int_equal(load(m, k, BZ_LEN, initrd, ilen, "", 1, NULL, NULL, NULL), 0);
	addr = get32(zp + 0x218);
	assert_true(addr + ilen <= 0x2000000);
	assert_true(addr >= BZ_PREF + BZ_INIT_SIZE);

	/* initrd_addr_max inside the kernel's area: the initrd goes below the kernel */
	put32(k + 0x22c, BZ_PREF + 0x1fffff);
	assert_int_equal(load(m, k, BZ_LEN, initrd, ilen, "", 1, NULL, NULL, NULL), 0);
	addr = get32(zp + 0x218);
	assert_int_equal(addr % 4096, 0);
	assert_true(addr + ilen <= BZ_PREF);
	assert_true(addr >= 0x100000);
	assert_memory_equal(at(m, addr, ilen), initrd, ilen);
	free(initrd);
	free(k);
}

static void test_bz_not_relocatable(void **state)
{
	struct gmem *m = *state;
	uint8_t *k = make_bzimage(0x020f, 0x1, 0);
	struct kvm_regs r;
	struct boot_info bi;

	assert_int_equal(load(m, k, BZ_LEN, NULL, 0, NULL, 1, &r, NULL, &bi), 0);
	assert_int_equal(r.rip, 0x100200);
	assert_memory_equal(at(m, 0x100000, BZ_PAYLOAD), k + BZ_SETUP_SIZE, BZ_PAYLOAD);
	assert_int_equal(bi.kernel_start, 0x100000);
	assert_int_equal(bi.kernel_end, BZ_PREF + BZ_INIT_SIZE);
	assert_int_equal(*at(m, BOOT_CMDLINE_ADDR, 1), 0);
	free(k);
}

static void test_bz_bad(void **state)
{
	struct gmem *m = *state;
	uint8_t *k = make_bzimage(0x020b, 0x1, 1);

	assert_int_equal(load(m, k, BZ_LEN, NULL, 0, "", 1, NULL, NULL, NULL), -ENOEXEC);
	put16(k + 0x206, 0x020f);
	put16(k + 0x236, 0); /* 32-bit only */
	assert_int_equal(load(m, k, BZ_LEN, NULL, 0, "", 1, NULL, NULL, NULL), -ENOEXEC);
	put16(k + 0x236, 1);
	k[0x211] = 0; /* zImage */
	assert_int_equal(load(m, k, BZ_LEN, NULL, 0, "", 1, NULL, NULL, NULL), -ENOEXEC);
	k[0x211] = 1;
	/* truncated: header only, setup only, within the header */
	assert_int_equal(load(m, k, 0x300, NULL, 0, "", 1, NULL, NULL, NULL), -ENOEXEC);
	assert_int_equal(load(m, k, BZ_SETUP_SIZE + 0x100, NULL, 0, "", 1, NULL, NULL, NULL),
			 -ENOEXEC);
	assert_int_equal(load(m, k, 0x240, NULL, 0, "", 1, NULL, NULL, NULL), -ENOEXEC);
	/* a header longer than we know is cut at boot_params' header area; 0 setup sects is 4 */
	k[0x1f1] = 0;
	k[0x201] = 0xff;
	assert_int_equal(load(m, k, BZ_LEN, NULL, 0, "", 1, NULL, NULL, NULL), 0);
	k[0x1f1] = 1;
	k[0x201] = 0x10; /* header shorter than protocol 2.12's */
	assert_int_equal(load(m, k, BZ_LEN, NULL, 0, "", 1, NULL, NULL, NULL), -ENOEXEC);
	k[0x201] = 0x6a;
	put32(k + 0x230, 0x3000); /* alignment not a power of two */
	assert_int_equal(load(m, k, BZ_LEN, NULL, 0, "", 1, NULL, NULL, NULL), -ENOEXEC);
	put32(k + 0x230, 0x200000);

	/* command line longer than cmdline_size */
	char cmd[3000];
	memset(cmd, 'a', sizeof(cmd));
	cmd[2047] = 0;
	assert_int_equal(load(m, k, BZ_LEN, NULL, 0, cmd, 1, NULL, NULL, NULL), 0);
	cmd[2047] = 'a';
	cmd[2048] = 0;
	assert_int_equal(load(m, k, BZ_LEN, NULL, 0, cmd, 1, NULL, NULL, NULL), -EINVAL);

	/* kernel does not fit: init_size beyond RAM, or pref_address beyond RAM */
	put32(k + 0x260, RAM_SIZE);
	assert_int_equal(load(m, k, BZ_LEN, NULL, 0, "", 1, NULL, NULL, NULL), -E2BIG);
	put32(k + 0x260, BZ_INIT_SIZE);
	put64(k + 0x258, 1ull << 40);
	assert_int_equal(load(m, k, BZ_LEN, NULL, 0, "", 1, NULL, NULL, NULL), -E2BIG);
	put64(k + 0x258, BZ_PREF);

	/* initrd too big for RAM (never read: the size check comes first) */
	size_t big = RAM_SIZE - (BZ_PREF + BZ_INIT_SIZE) + 4096;
	uint8_t *initrd = mmap(NULL, big, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			       -1, 0);
	assert_true(initrd != MAP_FAILED);
	/* fits below the kernel? no: [1 MiB, 16 MiB) is 15 MiB */
	assert_int_equal(load(m, k, BZ_LEN, initrd, big, "", 1, NULL, NULL, NULL), -E2BIG);
	assert_int_equal(load(m, k, BZ_LEN, initrd, 15 << 20, "", 1, NULL, NULL, NULL), 0);
	munmap(initrd, big);
	free(k);
}

/* ---- PVH ELF ----------------------------------------------------------------------------- */

static void check_pvh_state(struct gmem *m, const struct kvm_regs *r, const struct kvm_sregs *s,
			    uint64_t entry)
{
	assert_int_equal(r->rip, entry);
	assert_int_equal(r->rbx, BOOT_PARAMS_ADDR);
	assert_int_equal(r->rflags, 2);
	assert_int_equal(s->cr0 & 0x80000001, 1);
	assert_int_equal(s->cr0 & 0x60000000, 0);
	assert_int_equal(s->cr4, 0);
	assert_int_equal(s->efer, 0);
	check_segment(&s->cs, 0x10, 0xb, 0, 1);
	check_segment(&s->ds, 0x18, 0x3, 0, 1);
	check_segment(&s->es, 0x18, 0x3, 0, 1);
	check_segment(&s->ss, 0x18, 0x3, 0, 1);
	check_tr_and_gdt(m, s, 0);
}

static void test_pvh_elf64(void **state)
{
	struct gmem *m = *state;
	const struct seg_spec segs[] = {
		{ 1, 0x8000, 0x100, 0x1000 },	   /* AP trampoline below 1 MiB */
		{ 1, 0x100000, 0x800, 0x3000 },	   /* kernel with bss */
		{ 1, 0x200000, 0x1000, 0x1000 },
	};
	size_t len;
	uint8_t *f = make_elf(1, segs, 3, 0x100010, NOTE_PHDR, 8, &len);
	uint8_t initrd[5000];
	struct kvm_regs r;
	struct kvm_sregs s;
	struct boot_info bi;
	memset(initrd, 0x5a, sizeof(initrd));
	memset(at(m, 0x8000, 0x1000), 0xaa, 0x1000);
	memset(at(m, 0x100000, 0x3000), 0xaa, 0x3000);

	assert_int_equal(load(m, f, len, initrd, sizeof(initrd), "console=ttyS0 quiet", 64, &r,
			      &s, &bi),
			 0);
	assert_int_equal(bi.format, BOOT_FORMAT_PVH);
	assert_int_equal(bi.kernel_start, 0x8000);
	assert_int_equal(bi.kernel_end, 0x201000);
	check_pvh_state(m, &r, &s, 0x100010);

	/* segments: file bytes then zeroed bss */
	uint8_t *p = at(m, 0x8000, 0x1000);
	for (int i = 0; i < 0x1000; i++)
		assert_int_equal(p[i], i < 0x100 ? 0x11 : 0);
	p = at(m, 0x100000, 0x3000);
	for (int i = 0; i < 0x3000; i++)
		assert_int_equal(p[i], i < 0x800 ? 0x22 : 0);
	assert_int_equal(*at(m, 0x200fff, 1), 0x33);

	/* hvm_start_info */
	uint8_t *si = at(m, BOOT_PARAMS_ADDR, 56);
	assert_int_equal(get32(si), 0x336ec578);
	assert_int_equal(get32(si + 4), 1);
	assert_int_equal(get32(si + 8), 0);
	assert_int_equal(get32(si + 12), 1);
	uint64_t modlist = get64(si + 16);
	assert_int_equal(get64(si + 24), BOOT_CMDLINE_ADDR);
	assert_int_equal(get64(si + 32), 0);
	uint64_t memmap = get64(si + 40);
	assert_int_equal(get32(si + 48), 3);
	assert_string_equal((char *)at(m, BOOT_CMDLINE_ADDR, 20), "console=ttyS0 quiet");

	uint8_t *mod = at(m, modlist, 32);
	uint64_t iaddr = get64(mod);
	assert_int_equal(get64(mod + 8), sizeof(initrd));
	assert_int_equal(get64(mod + 16), 0);
	assert_int_equal(iaddr % 4096, 0);
	assert_true(iaddr + sizeof(initrd) <= RAM_SIZE);
	assert_true(iaddr >= 0x201000);
	assert_int_equal(bi.initrd_addr, iaddr);
	assert_memory_equal(at(m, iaddr, sizeof(initrd)), initrd, sizeof(initrd));

	check_memmap(at(m, memmap, 3 * 24), 3, 24, RAM_SIZE);
	check_mptable(m, 64);
	free(f);
}

static void test_pvh_elf32_and_section_note(void **state)
{
	struct gmem *m = *state;
	const struct seg_spec segs[] = { { 1, 0x100000, 0x200, 0x200 } };
	struct kvm_regs r;
	struct kvm_sregs s;
	size_t len;

	uint8_t *f = make_elf(0, segs, 1, 0x100004, NOTE_PHDR, 4, &len);
	assert_int_equal(load(m, f, len, NULL, 0, "x", 2, &r, &s, NULL), 0);
	check_pvh_state(m, &r, &s, 0x100004);
	assert_int_equal(get32(at(m, BOOT_PARAMS_ADDR + 12, 4)), 0); /* no modules */
	assert_int_equal(get64(at(m, BOOT_PARAMS_ADDR + 16, 8)), 0);
	check_mptable(m, 2);
	free(f);

	f = make_elf(1, segs, 1, 0x100008, NOTE_SECTION, 4, &len);
	assert_int_equal(load(m, f, len, NULL, 0, "x", 1, &r, &s, NULL), 0);
	assert_int_equal(r.rip, 0x100008);
	free(f);

	f = make_elf(0, segs, 1, 0x100008, NOTE_SECTION, 8, &len);
	assert_int_equal(load(m, f, len, NULL, 0, "x", 1, &r, &s, NULL), 0);
	assert_int_equal(r.rip, 0x100008);
	free(f);
}

static int load_segs(struct gmem *m, const struct seg_spec *segs, int n, uint64_t entry)
{
	size_t len;
	uint8_t *f = make_elf(1, segs, n, entry, NOTE_PHDR, 8, &len);
	int r = load(m, f, len, NULL, 0, "", 1, NULL, NULL, NULL);
	free(f);
	return r;
}

static void test_pvh_bad(void **state)
{
	struct gmem *m = *state;
	size_t len;

	/* no PVH note */
	const struct seg_spec one[] = { { 1, 0x100000, 0x100, 0x100 } };
	uint8_t *f = make_elf(1, one, 1, 0x100000, NOTE_NONE, 8, &len);
	assert_int_equal(load(m, f, len, NULL, 0, "", 1, NULL, NULL, NULL), -ENOEXEC);
	free(f);
	/* note value of a bad size */
	f = make_elf(1, one, 1, 0x100000, NOTE_PHDR, 2, &len);
	assert_int_equal(load(m, f, len, NULL, 0, "", 1, NULL, NULL, NULL), -ENOEXEC);
	free(f);

	/* segment beyond RAM; in the MMIO hole; above 4 GiB with no high RAM */
	assert_int_equal(load_segs(m, (struct seg_spec[]){ { 1, RAM_SIZE - 0x100, 0x100, 0x200 } }, 1,
				   RAM_SIZE - 0x100),
			 -E2BIG);
	assert_int_equal(load_segs(m, (struct seg_spec[]){ { 1, 0xc0001000, 0x100, 0x100 } }, 1,
				   0xc0001000),
			 -ENOEXEC);
	assert_int_equal(
		load_segs(m,
			  (struct seg_spec[]){ { 1, 0x100000, 0x100, 0x100 },
					       { 1, 0x100000000ull, 0x100, 0x100 } },
			  2, 0x100000),
		-E2BIG);
	/* segments overlapping each other */
	assert_int_equal(
		load_segs(m,
			  (struct seg_spec[]){ { 1, 0x100000, 0x100, 0x2000 },
					       { 1, 0x101000, 0x100, 0x100 } },
			  2, 0x100000),
		-ENOEXEC);
	/* segments over the boot data, the EBDA/MP table area */
	assert_int_equal(load_segs(m, (struct seg_spec[]){ { 1, 0x2000, 0x100, 0x100 } }, 1, 0x2000),
			 -ENOEXEC);
	assert_int_equal(load_segs(m, (struct seg_spec[]){ { 1, 0xf0000, 0x100, 0x100 } }, 1, 0xf0000),
			 -ENOEXEC);
	/* file size larger than memory size; wrap-around */
	assert_int_equal(load_segs(m, (struct seg_spec[]){ { 1, 0x100000, 0x200, 0x100 } }, 1,
				   0x100000),
			 -ENOEXEC);
	assert_int_equal(load_segs(m, (struct seg_spec[]){ { 1, ~0xfffull, 0x100, 0x2000 } }, 1,
				   0x100000),
			 -ENOEXEC);
	/* entry outside every segment */
	assert_int_equal(load_segs(m, one, 1, 0x400000), -ENOEXEC);
	/* a segment at 0x8000 and one below 1 MiB are fine */
	assert_int_equal(load_segs(m, (struct seg_spec[]){ { 1, 0x8000, 0x100, 0x100 } }, 1, 0x8000),
			 0);

	/* truncated: segment data missing, program headers missing, header only */
	f = make_elf(1, one, 1, 0x100000, NOTE_PHDR, 8, &len);
	assert_int_equal(load(m, f, len - 0x1000 + 0x80, NULL, 0, "", 1, NULL, NULL, NULL),
			 -ENOEXEC);
	assert_int_equal(load(m, f, 100, NULL, 0, "", 1, NULL, NULL, NULL), -ENOEXEC);
	assert_int_equal(load(m, f, 40, NULL, 0, "", 1, NULL, NULL, NULL), -ENOEXEC);
	assert_int_equal(load(m, f, 4, NULL, 0, "", 1, NULL, NULL, NULL), -ENOEXEC);
	/* program header table pointing outside the file; too many; bad entry size */
	put64(f + 32, 1ull << 62);
	assert_int_equal(load(m, f, len, NULL, 0, "", 1, NULL, NULL, NULL), -ENOEXEC);
	put64(f + 32, 64);
	put16(f + 56, 5000);
	assert_int_equal(load(m, f, len, NULL, 0, "", 1, NULL, NULL, NULL), -ENOEXEC);
	put16(f + 56, 2);
	put16(f + 54, 40);
	assert_int_equal(load(m, f, len, NULL, 0, "", 1, NULL, NULL, NULL), -ENOEXEC);
	put16(f + 54, 56);
	assert_int_equal(load(m, f, len, NULL, 0, "", 1, NULL, NULL, NULL), 0);
	/* not x86, not executable, big-endian */
	put16(f + 18, 183);
	assert_int_equal(load(m, f, len, NULL, 0, "", 1, NULL, NULL, NULL), -ENOEXEC);
	put16(f + 18, 62);
	put16(f + 16, 1);
	assert_int_equal(load(m, f, len, NULL, 0, "", 1, NULL, NULL, NULL), -ENOEXEC);
	put16(f + 16, 2);
	f[5] = 2;
	assert_int_equal(load(m, f, len, NULL, 0, "", 1, NULL, NULL, NULL), -ENOEXEC);
	f[5] = 1;
	/* initrd too big */
	uint8_t *initrd = mmap(NULL, RAM_SIZE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
			       -1, 0);
	assert_true(initrd != MAP_FAILED);
	assert_int_equal(load(m, f, len, initrd, RAM_SIZE - 0x100000, "", 1, NULL, NULL, NULL),
			 -E2BIG);
	munmap(initrd, RAM_SIZE);
	free(f);
}

/* ---- config and garbage ------------------------------------------------------------------ */

static void test_bad_config_and_garbage(void **state)
{
	struct gmem *m = *state;
	const struct seg_spec one[] = { { 1, 0x100000, 0x100, 0x100 } };
	size_t len;
	uint8_t *f = make_elf(1, one, 1, 0x100000, NOTE_PHDR, 8, &len);

	/* ncpus */
	assert_int_equal(load(m, f, len, NULL, 0, "", 0, NULL, NULL, NULL), -EINVAL);
	assert_int_equal(load(m, f, len, NULL, 0, "", BOOT_MAX_CPUS + 1, NULL, NULL, NULL),
			 -EINVAL);
	assert_int_equal(load(m, f, len, NULL, 0, "", BOOT_MAX_CPUS, NULL, NULL, NULL), 0);
	check_mptable(m, BOOT_MAX_CPUS);
	/* command line over the page */
	char *cmd = malloc(BOOT_CMDLINE_MAX + 1);
	memset(cmd, 'x', BOOT_CMDLINE_MAX);
	cmd[BOOT_CMDLINE_MAX] = 0;
	assert_int_equal(load(m, f, len, NULL, 0, cmd, 1, NULL, NULL, NULL), -EINVAL);
	cmd[BOOT_CMDLINE_MAX - 1] = 0;
	assert_int_equal(load(m, f, len, NULL, 0, cmd, 1, NULL, NULL, NULL), 0);
	free(cmd);
	/* missing kernel, initrd length without data */
	assert_int_equal(load(m, NULL, 0, NULL, 0, "", 1, NULL, NULL, NULL), -EINVAL);
	assert_int_equal(load(m, f, len, NULL, 10, "", 1, NULL, NULL, NULL), -EINVAL);
	free(f);

	/* empty, tiny, a shell script, random bytes */
	static const char script[] = "#!/bin/sh\necho hello\nexit 0\n";
	assert_int_equal(load(m, (const uint8_t *)"", 0, NULL, 0, "", 1, NULL, NULL, NULL),
			 -ENOEXEC);
	assert_int_equal(load(m, (const uint8_t *)"\x7f" "EL", 3, NULL, 0, "", 1, NULL, NULL, NULL),
			 -ENOEXEC);
	assert_int_equal(load(m, (const uint8_t *)script, sizeof(script), NULL, 0, "", 1, NULL,
			      NULL, NULL),
			 -ENOEXEC);
	uint8_t *rnd = malloc(65536);
	srand(42);
	for (int i = 0; i < 65536; i++)
		rnd[i] = (uint8_t)rand();
	assert_int_equal(load(m, rnd, 65536, NULL, 0, "", 1, NULL, NULL, NULL), -ENOEXEC);
	free(rnd);
}

static void test_memmap_high_ram(void **state)
{
	(void)state;
	uint64_t size = GMEM_LOW_END + (64ull << 20);
	struct gmem *m = new_ram(size);
	struct boot_e820_entry e[BOOT_E820_MAX];

	assert_int_equal(boot_memmap(m, e, BOOT_E820_MAX), 4);
	assert_int_equal(e[2].addr, 0x100000);
	assert_int_equal(e[2].size, GMEM_LOW_END - 0x100000);
	assert_int_equal(e[3].addr, GMEM_HIGH_START);
	assert_int_equal(e[3].size, 64ull << 20);
	assert_int_equal(e[3].type, BOOT_E820_RAM);
	assert_int_equal(boot_memmap(m, e, 3), -ENOSPC);

	/* a PVH segment in high RAM is fine and the memmap has 4 entries */
	const struct seg_spec segs[] = { { 1, 0x100000, 0x100, 0x100 },
					 { 1, GMEM_HIGH_START + 0x1000, 0x100, 0x100 } };
	size_t len;
	uint8_t *f = make_elf(1, segs, 2, 0x100000, NOTE_PHDR, 8, &len);
	assert_int_equal(load(m, f, len, NULL, 0, "", 1, NULL, NULL, NULL), 0);
	assert_int_equal(get32(at(m, BOOT_PARAMS_ADDR + 48, 4)), 4);
	uint8_t *mm = at(m, BOOT_MEMMAP_ADDR, 4 * 24);
	assert_int_equal(get64(mm + 3 * 24), GMEM_HIGH_START);
	assert_int_equal(*at(m, GMEM_HIGH_START + 0x1000, 1), 0x22);
	free(f);
	free_ram(m);

	/* too little RAM */
	m = new_ram(1 << 20);
	assert_int_equal(boot_memmap(m, e, BOOT_E820_MAX), -E2BIG);
	f = make_bzimage(0x020f, 1, 1);
	assert_int_equal(load(m, f, BZ_LEN, NULL, 0, "", 1, NULL, NULL, NULL), -E2BIG);
	free(f);
	free_ram(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_bz_entry_state, setup_ram, teardown_ram),
		cmocka_unit_test_setup_teardown(test_bz_zero_page, setup_ram, teardown_ram),
		cmocka_unit_test_setup_teardown(test_bz_initrd, setup_ram, teardown_ram),
		cmocka_unit_test_setup_teardown(test_bz_not_relocatable, setup_ram, teardown_ram),
		cmocka_unit_test_setup_teardown(test_bz_bad, setup_ram, teardown_ram),
		cmocka_unit_test_setup_teardown(test_pvh_elf64, setup_ram, teardown_ram),
		cmocka_unit_test_setup_teardown(test_pvh_elf32_and_section_note, setup_ram,
						teardown_ram),
		cmocka_unit_test_setup_teardown(test_pvh_bad, setup_ram, teardown_ram),
		cmocka_unit_test_setup_teardown(test_bad_config_and_garbage, setup_ram,
						teardown_ram),
		cmocka_unit_test(test_memmap_high_ram),
	};
	if (!getenv("VMSNAP_TEST_VERBOSE"))
		log_set_level((enum log_level)-1); /* the errors are expected */
	return cmocka_run_group_tests(tests, NULL, NULL);
}
