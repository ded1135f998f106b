/* SPDX-License-Identifier: MIT */
/*
 * Kernel loader: Linux bzImage (64-bit boot protocol, Documentation/arch/x86/boot.rst) and
 * ELF kernels with a Xen PVH entry note (xen/include/public/arch-x86/hvm/start_info.h), plus
 * the memory map and an Intel MP table (MultiProcessor Specification 1.4). Everything the
 * guest sees is written byte by byte in little-endian order, never as a host struct.
 */
#include "vmm/boot.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "util/log.h"

/* ---- little-endian helpers ---------------------------------------------------------- */

static uint16_t get_le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_le64(const uint8_t *p)
{
	return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}

static void put_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v)
{
	put_le32(p, (uint32_t)v);
	put_le32(p + 4, (uint32_t)(v >> 32));
}

/* ---- placement ------------------------------------------------------------------------ */

#define PAGE_MASK (~(GMEM_PAGE_SIZE - 1))

struct range {
	uint64_t start, end; /* [start, end) */
};

static bool overlaps(uint64_t a0, uint64_t a1, uint64_t b0, uint64_t b1)
{
	return a0 < b1 && b0 < a1;
}

/*
 * Highest page-aligned address a with [a, a + size) inside [floor, limit) and clear of every
 * range in @avoid. Each step moves a strictly down, so the loop ends.
 */
static int place_high(uint64_t size, uint64_t floor, uint64_t limit, const struct range *avoid,
		      unsigned int navoid, uint64_t *out)
{
	if (size > limit || limit - size < floor)
		return -E2BIG;
	uint64_t a = (limit - size) & PAGE_MASK;
	for (;;) {
		if (a < floor)
			return -E2BIG;
		bool moved = false;
		for (unsigned int i = 0; i < navoid; i++) {
			if (!overlaps(a, a + size, avoid[i].start, avoid[i].end))
				continue;
			if (avoid[i].start < size)
				return -E2BIG;
			a = (avoid[i].start - size) & PAGE_MASK;
			moved = true;
			break;
		}
		if (!moved) {
			*out = a;
			return 0;
		}
	}
}

/* ---- memory map --------------------------------------------------------------------- */

int boot_memmap(const struct gmem *m, struct boot_e820_entry *out, unsigned int max)
{
	struct boot_e820_entry e[BOOT_E820_MAX];
	unsigned int n = 0;

	if (m->nregions < 1 || m->regions[0].gpa != 0 || m->regions[0].size < BOOT_MIN_RAM)
		return -E2BIG;
	e[n++] = (struct boot_e820_entry){ 0, BOOT_EBDA_START, BOOT_E820_RAM };
	e[n++] = (struct boot_e820_entry){ BOOT_EBDA_START, BOOT_HIGH_KERNEL - BOOT_EBDA_START,
					   BOOT_E820_RESERVED };
	e[n++] = (struct boot_e820_entry){ BOOT_HIGH_KERNEL,
					   m->regions[0].size - BOOT_HIGH_KERNEL, BOOT_E820_RAM };
	for (unsigned int i = 1; i < m->nregions && n < BOOT_E820_MAX; i++)
		e[n++] = (struct boot_e820_entry){ m->regions[i].gpa, m->regions[i].size,
						   BOOT_E820_RAM };
	if (n > max)
		return -ENOSPC;
	memcpy(out, e, n * sizeof(e[0]));
	return (int)n;
}

/* ---- GDT, segments, MP table, command line (both formats) ------------------------------ */

static void flat_segment(struct kvm_segment *s, uint16_t sel, uint8_t type, bool code64)
{
	*s = (struct kvm_segment){ .base = 0, .limit = 0xffffffff, .selector = sel, .type = type,
				   .present = 1, .dpl = 0, .db = !code64, .s = 1, .l = code64,
				   .g = 1 };
}

/* The GDT descriptor whose hidden part is @s (so the GDT and the registers agree). */
static uint64_t segment_desc(const struct kvm_segment *s)
{
	uint64_t limit = s->g ? s->limit >> 12 : s->limit;
	return (limit & 0xffff) | (s->base & 0xffffff) << 16 | (uint64_t)(s->type & 0xf) << 40 |
	       (uint64_t)s->s << 44 | (uint64_t)(s->dpl & 3) << 45 | (uint64_t)s->present << 47 |
	       ((limit >> 16) & 0xf) << 48 | (uint64_t)s->avl << 52 | (uint64_t)s->l << 53 |
	       (uint64_t)s->db << 54 | (uint64_t)s->g << 55 | ((s->base >> 24) & 0xff) << 56;
}

#define GDT_ENTRIES 6 /* null, null, code, data, TSS (16 bytes in long mode) */

/* Flat segments, a valid TR and a GDT describing them; IDT empty (any fault triple-faults). */
static int setup_segments(struct gmem *m, struct kvm_sregs *sregs, bool long_mode)
{
	struct kvm_segment code, data, tss;
	uint8_t gdt[GDT_ENTRIES * 8] = { 0 };

	flat_segment(&code, BOOT_CS, 0xb, long_mode); /* execute/read, accessed */
	flat_segment(&data, BOOT_DS, 0x3, false);     /* read/write, accessed */
	/* A busy TSS (type 11: 32-bit in legacy mode, 64-bit in long mode), base 0, limit 0x67. */
	tss = (struct kvm_segment){ .base = 0, .limit = 0x67, .selector = BOOT_TSS, .type = 0xb,
				    .present = 1 };
	put_le64(gdt + BOOT_CS, segment_desc(&code));
	put_le64(gdt + BOOT_DS, segment_desc(&data));
	put_le64(gdt + BOOT_TSS, segment_desc(&tss));
	if (gmem_write(m, BOOT_GDT_ADDR, gdt, sizeof(gdt)))
		return -E2BIG;

	sregs->cs = code;
	sregs->ds = sregs->es = sregs->fs = sregs->gs = sregs->ss = data;
	sregs->tr = tss;
	sregs->gdt.base = BOOT_GDT_ADDR;
	sregs->gdt.limit = sizeof(gdt) - 1;
	sregs->idt.base = 0;
	sregs->idt.limit = 0;
	return 0;
}

static int write_cmdline(struct gmem *m, const char *cmdline)
{
	return gmem_write(m, BOOT_CMDLINE_ADDR, cmdline, strlen(cmdline) + 1) ? -E2BIG : 0;
}

/* MP spec 1.4 entry sizes and layout. */
#define MPF_SIZE 16
#define MPC_HDR_SIZE 44
#define MPC_CPU_SIZE 20
#define MPC_SMALL_SIZE 8 /* bus, IOAPIC, I/O and local interrupt entries */
#define MP_ISA_IRQS 16
#define MP_IOINT_ENTRIES (MP_ISA_IRQS - 1) /* ISA IRQ 2 (the PIC cascade) has no entry */
#define MP_IOAPIC_ADDR 0xfec00000u
#define MP_LAPIC_ADDR 0xfee00000u
#define MP_TABLE_SIZE(n)                                                                           \
	(MPF_SIZE + MPC_HDR_SIZE + (n)*MPC_CPU_SIZE + (2 + MP_IOINT_ENTRIES + 2) * MPC_SMALL_SIZE)
#define MP_TABLE_MAX MP_TABLE_SIZE(BOOT_MAX_CPUS)
_Static_assert(BOOT_MPTABLE_ADDR + MP_TABLE_MAX <= BOOT_HIGH_KERNEL,
	       "MP table for BOOT_MAX_CPUS must fit below 1 MiB");

static uint8_t checksum8(const uint8_t *p, size_t len)
{
	uint8_t sum = 0;
	for (size_t i = 0; i < len; i++)
		sum = (uint8_t)(sum + p[i]);
	return (uint8_t)-sum;
}

/*
 * MP floating pointer at BOOT_MPTABLE_ADDR (Linux scans 0xf0000-0xfffff) followed by the
 * configuration table: the CPUs (APIC id = index, CPU 0 the BSP), one ISA bus, the IOAPIC
 * (APIC id ncpus), ISA IRQs 0-15 routed to IOAPIC pins as KVM's default GSI routing does
 * (IRQ 0 to pin 2, the others to their own pin), ExtINT on LINT0 and NMI on LINT1.
 */
static int write_mptable(struct gmem *m, unsigned int ncpus)
{
	uint8_t buf[MP_TABLE_MAX];
	size_t size = MP_TABLE_SIZE(ncpus);
	uint8_t *mpf = buf, *mpc = buf + MPF_SIZE, *e = mpc + MPC_HDR_SIZE;
	uint8_t ioapic_id = (uint8_t)ncpus;
	uint16_t count = 0;

	memset(buf, 0, size);
	for (unsigned int i = 0; i < ncpus; i++, e += MPC_CPU_SIZE, count++) {
		e[0] = 0;			  /* processor */
		e[1] = (uint8_t)i;		  /* local APIC id */
		e[2] = 0x14;			  /* local APIC version (KVM's) */
		e[3] = 0x01 | (i == 0 ? 0x02 : 0); /* enabled, BSP */
		put_le32(e + 4, 0x600);		  /* signature: family 6 */
		put_le32(e + 8, 0x201);		  /* features: FPU, APIC */
	}
	e[0] = 1; /* bus 0: ISA */
	memcpy(e + 2, "ISA   ", 6);
	e += MPC_SMALL_SIZE, count++;
	e[0] = 2; /* IOAPIC */
	e[1] = ioapic_id;
	e[2] = 0x11;
	e[3] = 0x01; /* enabled */
	put_le32(e + 4, MP_IOAPIC_ADDR);
	e += MPC_SMALL_SIZE, count++;
	for (unsigned int irq = 0; irq < MP_ISA_IRQS; irq++) {
		if (irq == 2)
			continue;
		e[0] = 3; /* I/O interrupt */
		e[1] = 0; /* INT */
		put_le16(e + 2, 0); /* polarity and trigger conform to the bus */
		e[4] = 0;	    /* source bus */
		e[5] = (uint8_t)irq;
		e[6] = ioapic_id;
		e[7] = (uint8_t)(irq == 0 ? 2 : irq);
		e += MPC_SMALL_SIZE, count++;
	}
	for (unsigned int lint = 0; lint < 2; lint++) {
		e[0] = 4;		   /* local interrupt */
		e[1] = lint == 0 ? 3 : 1;  /* ExtINT on LINT0, NMI on LINT1 */
		put_le16(e + 2, 0);
		e[4] = 0;
		e[5] = 0;
		e[6] = 0xff; /* every local APIC */
		e[7] = (uint8_t)lint;
		e += MPC_SMALL_SIZE, count++;
	}

	memcpy(mpc, "PCMP", 4);
	put_le16(mpc + 4, (uint16_t)(size - MPF_SIZE)); /* base table length */
	mpc[6] = 4;					 /* spec revision 1.4 */
	memcpy(mpc + 8, "VMSNAP  ", 8);			 /* OEM id */
	memcpy(mpc + 16, "VMSNAP      ", 12);		 /* product id */
	put_le16(mpc + 34, count);
	put_le32(mpc + 36, MP_LAPIC_ADDR);
	mpc[7] = checksum8(mpc, size - MPF_SIZE);

	memcpy(mpf, "_MP_", 4);
	put_le32(mpf + 4, (uint32_t)(BOOT_MPTABLE_ADDR + MPF_SIZE));
	mpf[8] = 1; /* length in 16-byte units */
	mpf[9] = 4; /* spec revision 1.4 */
	mpf[10] = checksum8(mpf, MPF_SIZE);

	return gmem_write(m, BOOT_MPTABLE_ADDR, buf, size) ? -E2BIG : 0;
}

/* ---- bzImage --------------------------------------------------------------------------- */

/* struct boot_params (the zero page) offsets */
#define BP_ACPI_RSDP_ADDR 0x070
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_E820_ENTRIES 0x1e8
#define BP_HDR 0x1f1
#define BP_HDR_END_MAX 0x290 /* the setup header area of boot_params ends here */
#define BP_E820_TABLE 0x2d0
#define BP_E820_ENTRY_SIZE 20
#define BP_SIZE 4096

/* struct setup_header offsets (within the image and the zero page alike) */
#define HDR_SETUP_SECTS 0x1f1
#define HDR_VID_MODE 0x1fa
#define HDR_JUMP 0x200
#define HDR_MAGIC 0x202
#define HDR_VERSION 0x206
#define HDR_TYPE_OF_LOADER 0x210
#define HDR_LOADFLAGS 0x211
#define HDR_CODE32_START 0x214
#define HDR_RAMDISK_IMAGE 0x218
#define HDR_RAMDISK_SIZE 0x21c
#define HDR_HEAP_END_PTR 0x224
#define HDR_CMD_LINE_PTR 0x228
#define HDR_INITRD_ADDR_MAX 0x22c
#define HDR_KERNEL_ALIGNMENT 0x230
#define HDR_RELOCATABLE 0x234
#define HDR_XLOADFLAGS 0x236
#define HDR_CMDLINE_SIZE 0x238
#define HDR_HW_SUBARCH 0x23c
#define HDR_SETUP_DATA 0x250
#define HDR_PREF_ADDRESS 0x258
#define HDR_INIT_SIZE 0x260
#define HDR_END_2_12 0x264 /* protocol 2.12 guarantees the header up to init_size */

#define BOOT_PROTO_MIN 0x020c
#define LOADED_HIGH 0x01
#define CAN_USE_HEAP 0x80
#define XLF_KERNEL_64 0x01
#define LOADER_TYPE_UNDEFINED 0xff
#define ENTRY64_OFFSET 0x200

#define X86_CR0_PE 0x1ull
#define X86_CR0_ET 0x10ull
#define X86_CR0_PG 0x80000000ull
#define X86_CR4_PAE 0x20ull
#define EFER_LME 0x100ull
#define EFER_LMA 0x400ull

/* Identity map of [0, 4 GiB) with 2 MiB pages (1 GiB pages fault on PVM hosts). */
static int write_page_tables(struct gmem *m)
{
	uint8_t *pt = gmem_ptr(m, BOOT_PML4_ADDR, BOOT_PGTABLE_END - BOOT_PML4_ADDR);
	const uint64_t pdpt = BOOT_PML4_ADDR + 0x1000, pd = BOOT_PML4_ADDR + 0x2000;

	if (!pt)
		return -E2BIG;
	memset(pt, 0, BOOT_PGTABLE_END - BOOT_PML4_ADDR);
	put_le64(pt, pdpt | 0x3); /* present, writable */
	for (uint64_t i = 0; i < 4; i++)
		put_le64(pt + 0x1000 + i * 8, (pd + i * 0x1000) | 0x3);
	for (uint64_t i = 0; i < 4 * 512; i++)
		put_le64(pt + 0x2000 + i * 8, (i << 21) | 0x83); /* present, writable, 2 MiB */
	return 0;
}

static int load_bzimage(struct gmem *m, const struct boot_config *cfg, const char *cmdline,
			struct kvm_regs *regs, struct kvm_sregs *sregs, struct boot_info *info)
{
	const uint8_t *k = cfg->kernel;
	size_t len = cfg->kernel_len;
	uint64_t low_end = m->regions[0].size;
	uint8_t zp[BP_SIZE];
	int r;

	if (len < HDR_END_2_12) {
		log_err("bzImage truncated: %zu bytes, the setup header alone needs %u", len,
			HDR_END_2_12);
		return -ENOEXEC;
	}
	uint16_t version = get_le16(k + HDR_VERSION);
	if (version < BOOT_PROTO_MIN) {
		log_err("bzImage boot protocol %u.%02u is too old: vmsnap needs 2.12 (64-bit entry)",
			version >> 8, version & 0xff);
		return -ENOEXEC;
	}
	if (!(get_le16(k + HDR_XLOADFLAGS) & XLF_KERNEL_64)) {
		log_err("bzImage has no 64-bit entry point (XLF_KERNEL_64 clear): a 32-bit kernel");
		return -ENOEXEC;
	}
	if (!(k[HDR_LOADFLAGS] & LOADED_HIGH)) {
		log_err("zImage (kernel loaded at 0x10000) is not supported, only bzImage");
		return -ENOEXEC;
	}
	unsigned int setup_sects = k[HDR_SETUP_SECTS] ? k[HDR_SETUP_SECTS] : 4;
	size_t setup_size = (setup_sects + 1) * 512;
	size_t hdr_end = HDR_MAGIC + (size_t)k[HDR_JUMP + 1];
	if (hdr_end < HDR_END_2_12 || hdr_end > setup_size) {
		log_err("bzImage setup header ends at %#zx, outside [%#x, setup size %#zx]",
			hdr_end, HDR_END_2_12, setup_size);
		return -ENOEXEC;
	}
	if (len <= setup_size + ENTRY64_OFFSET) {
		log_err("bzImage truncated: %zu bytes, no protected-mode kernel after %zu bytes of "
			"setup code",
			len, setup_size);
		return -ENOEXEC;
	}
	uint64_t ksize = len - setup_size;

	/*
	 * Where the kernel runs (boot.rst, init_size): a relocatable kernel is loaded at its
	 * runtime address, pref_address rounded up to kernel_alignment, so it decompresses in
	 * place; a fixed one is loaded at 1 MiB and decompresses to pref_address. Either way
	 * [kernel_start, kernel_end) must stay free for it.
	 */
	uint64_t pref = get_le64(k + HDR_PREF_ADDRESS);
	uint64_t init_size = get_le32(k + HDR_INIT_SIZE);
	uint64_t load, runtime;
	if (pref < BOOT_HIGH_KERNEL)
		pref = BOOT_HIGH_KERNEL;
	if (pref >= low_end) {
		log_err("bzImage wants to run at %#llx, beyond the %llu MiB of low RAM",
			(unsigned long long)pref, (unsigned long long)(low_end >> 20));
		return -E2BIG;
	}
	if (k[HDR_RELOCATABLE]) {
		uint64_t align = get_le32(k + HDR_KERNEL_ALIGNMENT);
		if (align == 0 || (align & (align - 1)) || align > (1ull << 30)) {
			log_err("bzImage kernel_alignment %#llx is not a power of two <= 1 GiB",
				(unsigned long long)align);
			return -ENOEXEC;
		}
		load = runtime = (pref + align - 1) & ~(align - 1);
	} else {
		load = BOOT_HIGH_KERNEL;
		runtime = pref;
	}
	uint64_t kstart = load < runtime ? load : runtime;
	uint64_t kend = load + ksize;
	if (runtime + init_size > kend)
		kend = runtime + init_size;
	if (kend > low_end) {
		log_err("kernel needs RAM up to %#llx (init_size %#llx) but low RAM ends at %#llx",
			(unsigned long long)kend, (unsigned long long)init_size,
			(unsigned long long)low_end);
		return -E2BIG;
	}

	size_t cmdline_max = get_le32(k + HDR_CMDLINE_SIZE);
	if (strlen(cmdline) > cmdline_max) {
		log_err("command line is %zu bytes, this kernel accepts at most %zu",
			strlen(cmdline), cmdline_max);
		return -EINVAL;
	}

	uint64_t initrd = 0, initrd_size = cfg->initrd ? cfg->initrd_len : 0;
	if (initrd_size) {
		uint64_t limit = (uint64_t)get_le32(k + HDR_INITRD_ADDR_MAX) + 1;
		const struct range avoid = { kstart, kend };
		if (limit > low_end)
			limit = low_end;
		if (place_high(initrd_size, BOOT_HIGH_KERNEL, limit, &avoid, 1, &initrd)) {
			log_err("initrd of %llu bytes does not fit below %#llx beside the kernel at "
				"[%#llx, %#llx)",
				(unsigned long long)initrd_size, (unsigned long long)limit,
				(unsigned long long)kstart, (unsigned long long)kend);
			return -E2BIG;
		}
	}

	/* Zero page: the image's setup header, then what a boot loader fills in. */
	memset(zp, 0, sizeof(zp));
	if (hdr_end > BP_HDR_END_MAX)
		hdr_end = BP_HDR_END_MAX; /* a newer header than we know: its tail stays zero */
	memcpy(zp + BP_HDR, k + BP_HDR, hdr_end - BP_HDR);
	put_le16(zp + HDR_VID_MODE, 0xffff); /* "normal" */
	zp[HDR_TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED;
	zp[HDR_LOADFLAGS] |= CAN_USE_HEAP;
	put_le32(zp + HDR_CODE32_START, (uint32_t)load);
	put_le32(zp + HDR_RAMDISK_IMAGE, (uint32_t)initrd);
	put_le32(zp + HDR_RAMDISK_SIZE, (uint32_t)initrd_size);
	put_le32(zp + BP_EXT_RAMDISK_IMAGE, (uint32_t)(initrd >> 32));
	put_le32(zp + BP_EXT_RAMDISK_SIZE, (uint32_t)(initrd_size >> 32));
	put_le16(zp + HDR_HEAP_END_PTR, 0xfe00); /* only the real-mode setup (skipped) uses it */
	put_le32(zp + HDR_CMD_LINE_PTR, (uint32_t)BOOT_CMDLINE_ADDR);
	put_le32(zp + BP_EXT_CMD_LINE_PTR, 0);
	put_le32(zp + HDR_HW_SUBARCH, 0);  /* a PC */
	put_le64(zp + HDR_SETUP_DATA, 0);  /* no setup_data chain */
	put_le64(zp + BP_ACPI_RSDP_ADDR, cfg->acpi_rsdp); /* read by protocol >= 2.14 kernels;
							     * older ones scan 0xE0000-0xFFFFF */

	struct boot_e820_entry map[BOOT_E820_MAX];
	int n = boot_memmap(m, map, BOOT_E820_MAX);
	if (n < 0)
		return n;
	zp[BP_E820_ENTRIES] = (uint8_t)n;
	for (int i = 0; i < n; i++) {
		uint8_t *e = zp + BP_E820_TABLE + i * BP_E820_ENTRY_SIZE;
		put_le64(e, map[i].addr);
		put_le64(e + 8, map[i].size);
		put_le32(e + 16, map[i].type);
	}

	if (gmem_write(m, load, k + setup_size, ksize) ||
	    (initrd_size && gmem_write(m, initrd, cfg->initrd, initrd_size)) ||
	    gmem_write(m, BOOT_PARAMS_ADDR, zp, sizeof(zp)))
		return -E2BIG; /* cannot happen: every range was checked above */
	if ((r = write_cmdline(m, cmdline)) || (r = write_page_tables(m)) ||
	    (r = write_mptable(m, cfg->ncpus)) || (r = setup_segments(m, sregs, true)))
		return r;

	memset(regs, 0, sizeof(*regs));
	regs->rip = load + ENTRY64_OFFSET;
	regs->rsi = BOOT_PARAMS_ADDR;
	regs->rsp = regs->rbp = BOOT_STACK_TOP;
	regs->rflags = 2; /* reserved bit; IF clear */
	sregs->cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
	sregs->cr3 = BOOT_PML4_ADDR;
	sregs->cr4 = X86_CR4_PAE;
	sregs->efer = EFER_LME | EFER_LMA;

	if (info)
		*info = (struct boot_info){ .format = BOOT_FORMAT_BZIMAGE, .entry = regs->rip,
					    .kernel_start = kstart, .kernel_end = kend,
					    .initrd_addr = initrd, .initrd_size = initrd_size,
					    .params_addr = BOOT_PARAMS_ADDR };
	log_info("bzImage protocol %u.%02u loaded at %#llx (runs in [%#llx, %#llx)), entry %#llx",
		 version >> 8, version & 0xff, (unsigned long long)load,
		 (unsigned long long)kstart, (unsigned long long)kend,
		 (unsigned long long)regs->rip);
	return 0;
}

/* ---- ELF with a PVH note --------------------------------------------------------------- */

#define ELF_MAX_PHDRS 128
#define PT_LOAD 1
#define PT_NOTE 4
#define SHT_NOTE 7
#define ET_EXEC 2
#define ET_DYN 3
#define EM_386 3
#define EM_X86_64 62
#define XEN_ELFNOTE_PHYS32_ENTRY 18

#define HVM_START_MAGIC 0x336ec578u
#define HVM_START_INFO_SIZE 56
#define HVM_MODLIST_ENTRY_SIZE 32
#define HVM_MEMMAP_ENTRY_SIZE 24

struct elf_seg {
	uint32_t type;
	uint64_t offset, paddr, filesz, memsz;
};

/* The ELF header fields vmsnap uses, for either class. */
struct elf_file {
	const uint8_t *data;
	size_t len;
	bool is64;
	uint64_t phoff, shoff;
	unsigned int phentsize, phnum, shentsize, shnum;
	unsigned int nsegs;
	struct elf_seg segs[ELF_MAX_PHDRS];
};

static int elf_parse_header(struct elf_file *f)
{
	const uint8_t *d = f->data;
	size_t ehsize;

	if (f->len < 52) {
		log_err("ELF kernel truncated: %zu bytes, shorter than an ELF header", f->len);
		return -ENOEXEC;
	}
	if (d[4] != 1 && d[4] != 2) {
		log_err("ELF kernel has unknown class %u", d[4]);
		return -ENOEXEC;
	}
	f->is64 = d[4] == 2;
	ehsize = f->is64 ? 64 : 52;
	if (d[5] != 1 || d[6] != 1 || f->len < ehsize) {
		log_err("ELF kernel is not a little-endian version-1 ELF%s file",
			f->is64 ? "64" : "32");
		return -ENOEXEC;
	}
	uint16_t type = get_le16(d + 16), machine = get_le16(d + 18);
	if (type != ET_EXEC && type != ET_DYN) {
		log_err("ELF kernel is of type %u, not an executable", type);
		return -ENOEXEC;
	}
	if (machine != (f->is64 ? EM_X86_64 : EM_386)) {
		log_err("ELF%s kernel is for machine %u, not x86", f->is64 ? "64" : "32", machine);
		return -ENOEXEC;
	}
	if (f->is64) {
		f->phoff = get_le64(d + 32);
		f->shoff = get_le64(d + 40);
		f->phentsize = get_le16(d + 54);
		f->phnum = get_le16(d + 56);
		f->shentsize = get_le16(d + 58);
		f->shnum = get_le16(d + 60);
	} else {
		f->phoff = get_le32(d + 28);
		f->shoff = get_le32(d + 32);
		f->phentsize = get_le16(d + 42);
		f->phnum = get_le16(d + 44);
		f->shentsize = get_le16(d + 46);
		f->shnum = get_le16(d + 48);
	}
	if (f->phentsize != (f->is64 ? 56u : 32u) || f->phnum == 0 || f->phnum > ELF_MAX_PHDRS) {
		log_err("ELF kernel has %u program headers of %u bytes (need 1..%u of %u)",
			f->phnum, f->phentsize, ELF_MAX_PHDRS, f->is64 ? 56 : 32);
		return -ENOEXEC;
	}
	if (f->phoff > f->len || (uint64_t)f->phnum * f->phentsize > f->len - f->phoff) {
		log_err("ELF kernel truncated: program headers at %#llx run past its %zu bytes",
			(unsigned long long)f->phoff, f->len);
		return -ENOEXEC;
	}
	return 0;
}

static int elf_parse_segments(struct elf_file *f)
{
	f->nsegs = 0;
	for (unsigned int i = 0; i < f->phnum; i++) {
		const uint8_t *p = f->data + f->phoff + (uint64_t)i * f->phentsize;
		struct elf_seg s;
		if (f->is64) {
			s = (struct elf_seg){ get_le32(p), get_le64(p + 8), get_le64(p + 24),
					      get_le64(p + 32), get_le64(p + 40) };
		} else {
			s = (struct elf_seg){ get_le32(p), get_le32(p + 4), get_le32(p + 12),
					      get_le32(p + 16), get_le32(p + 20) };
		}
		if (s.type != PT_LOAD && s.type != PT_NOTE)
			continue;
		if (s.offset > f->len || s.filesz > f->len - s.offset) {
			log_err("ELF kernel truncated: segment %u's %llu bytes at offset %#llx run "
				"past its %zu bytes",
				i, (unsigned long long)s.filesz, (unsigned long long)s.offset, f->len);
			return -ENOEXEC;
		}
		if (s.type == PT_LOAD) {
			if (s.filesz > s.memsz) {
				log_err("ELF segment %u has more file bytes (%llu) than memory (%llu)",
					i, (unsigned long long)s.filesz,
					(unsigned long long)s.memsz);
				return -ENOEXEC;
			}
			if (s.memsz == 0)
				continue;
			if (s.paddr + s.memsz < s.paddr) {
				log_err("ELF segment %u at %#llx wraps around the address space", i,
					(unsigned long long)s.paddr);
				return -ENOEXEC;
			}
		}
		f->segs[f->nsegs++] = s;
	}
	return 0;
}

/* Look for the Xen PHYS32_ENTRY note in [off, off + size) of the file. */
static int elf_find_note(const struct elf_file *f, uint64_t off, uint64_t size, uint64_t *entry)
{
	const uint8_t *p = f->data + off;
	uint64_t pos = 0;

	while (size - pos >= 12) {
		uint64_t namesz = get_le32(p + pos), descsz = get_le32(p + pos + 4);
		uint32_t type = get_le32(p + pos + 8);
		uint64_t name = pos + 12, desc = name + ((namesz + 3) & ~3ull);
		uint64_t next = desc + ((descsz + 3) & ~3ull);
		if (desc > size || descsz > size - desc)
			return 0; /* malformed tail: stop looking here */
		if (namesz == 4 && memcmp(p + name, "Xen", 4) == 0 &&
		    type == XEN_ELFNOTE_PHYS32_ENTRY) {
			if (descsz == 4) {
				*entry = get_le32(p + desc);
			} else if (descsz == 8) {
				*entry = get_le64(p + desc);
			} else {
				log_err("ELF PVH entry note has a %llu-byte value (need 4 or 8)",
					(unsigned long long)descsz);
				return -ENOEXEC;
			}
			return 1;
		}
		if (next > size)
			return 0;
		pos = next;
	}
	return 0;
}

/* 1 and *entry when the PVH note is in a PT_NOTE segment or SHT_NOTE section, 0 if not. */
static int elf_pvh_entry(const struct elf_file *f, uint64_t *entry)
{
	int r;
	for (unsigned int i = 0; i < f->nsegs; i++)
		if (f->segs[i].type == PT_NOTE &&
		    (r = elf_find_note(f, f->segs[i].offset, f->segs[i].filesz, entry)))
			return r;

	unsigned int shsize = f->is64 ? 64 : 40;
	if (f->shnum == 0 || f->shentsize != shsize || f->shoff > f->len ||
	    (uint64_t)f->shnum * shsize > f->len - f->shoff)
		return 0;
	for (unsigned int i = 0; i < f->shnum; i++) {
		const uint8_t *s = f->data + f->shoff + (uint64_t)i * shsize;
		uint64_t off = f->is64 ? get_le64(s + 24) : get_le32(s + 16);
		uint64_t size = f->is64 ? get_le64(s + 32) : get_le32(s + 20);
		if (get_le32(s + 4) != SHT_NOTE || off > f->len || size > f->len - off)
			continue;
		if ((r = elf_find_note(f, off, size, entry)))
			return r;
	}
	return 0;
}

/* Guest-physical ranges an ELF segment may not touch (the MMIO hole is checked apart). */
static const struct range elf_forbidden[] = {
	{ 0, BOOT_LOW_DATA_END },		/* GDT, start_info, memmap, command line */
	{ BOOT_EBDA_START, BOOT_HIGH_KERNEL },	/* EBDA, MP table, BIOS area */
};

static int elf_check_segments(const struct gmem *m, const struct elf_file *f)
{
	for (unsigned int i = 0; i < f->nsegs; i++) {
		const struct elf_seg *s = &f->segs[i];
		uint64_t end = s->paddr + s->memsz;
		if (s->type != PT_LOAD)
			continue;
		if (overlaps(s->paddr, end, GMEM_LOW_END, GMEM_HIGH_START)) {
			log_err("ELF segment [%#llx, %#llx) lies in the MMIO hole [3 GiB, 4 GiB)",
				(unsigned long long)s->paddr, (unsigned long long)end);
			return -ENOEXEC;
		}
		for (size_t j = 0; j < sizeof(elf_forbidden) / sizeof(elf_forbidden[0]); j++) {
			if (overlaps(s->paddr, end, elf_forbidden[j].start, elf_forbidden[j].end)) {
				log_err("ELF segment [%#llx, %#llx) overlaps [%#llx, %#llx), where "
					"vmsnap puts boot data (see docs/BOOT.md)",
					(unsigned long long)s->paddr, (unsigned long long)end,
					(unsigned long long)elf_forbidden[j].start,
					(unsigned long long)elf_forbidden[j].end);
				return -ENOEXEC;
			}
		}
		if (!gmem_ptr(m, s->paddr, s->memsz)) {
			log_err("ELF segment [%#llx, %#llx) is beyond guest RAM (%llu MiB)",
				(unsigned long long)s->paddr, (unsigned long long)end,
				(unsigned long long)(m->size >> 20));
			return -E2BIG;
		}
		for (unsigned int j = 0; j < i; j++) {
			const struct elf_seg *t = &f->segs[j];
			if (t->type == PT_LOAD && overlaps(s->paddr, end, t->paddr, t->paddr + t->memsz)) {
				log_err("ELF segments [%#llx, %#llx) and [%#llx, %#llx) overlap",
					(unsigned long long)t->paddr,
					(unsigned long long)(t->paddr + t->memsz),
					(unsigned long long)s->paddr, (unsigned long long)end);
				return -ENOEXEC;
			}
		}
	}
	return 0;
}

static int load_pvh(struct gmem *m, const struct boot_config *cfg, const char *cmdline,
		    struct kvm_regs *regs, struct kvm_sregs *sregs, struct boot_info *info)
{
	struct elf_file f;
	struct range avoid[ELF_MAX_PHDRS + 1];
	unsigned int navoid = 0;
	uint64_t entry = 0, kstart = UINT64_MAX, kend = 0;
	int r;

	memset(&f, 0, sizeof(f));
	f.data = cfg->kernel;
	f.len = cfg->kernel_len;
	if ((r = elf_parse_header(&f)) || (r = elf_parse_segments(&f)))
		return r;
	r = elf_pvh_entry(&f, &entry);
	if (r < 0)
		return r;
	if (r == 0) {
		log_err("ELF kernel has no PVH entry note (Xen note type %u): vmsnap boots ELF "
			"kernels only through PVH",
			XEN_ELFNOTE_PHYS32_ENTRY);
		return -ENOEXEC;
	}
	if ((r = elf_check_segments(m, &f)))
		return r;

	avoid[navoid++] = (struct range){ 0, BOOT_HIGH_KERNEL };
	bool entry_loaded = false;
	for (unsigned int i = 0; i < f.nsegs; i++) {
		const struct elf_seg *s = &f.segs[i];
		if (s->type != PT_LOAD)
			continue;
		avoid[navoid++] = (struct range){ s->paddr, s->paddr + s->memsz };
		if (s->paddr < kstart)
			kstart = s->paddr;
		if (s->paddr + s->memsz > kend)
			kend = s->paddr + s->memsz;
		if (entry >= s->paddr && entry - s->paddr < s->memsz)
			entry_loaded = true;
	}
	if (!entry_loaded || entry >= (1ull << 32)) {
		log_err("ELF PVH entry %#llx is not inside a loadable segment below 4 GiB",
			(unsigned long long)entry);
		return -ENOEXEC;
	}

	uint64_t initrd = 0, initrd_size = cfg->initrd ? cfg->initrd_len : 0;
	if (initrd_size &&
	    place_high(initrd_size, BOOT_HIGH_KERNEL, m->regions[0].size, avoid, navoid, &initrd)) {
		log_err("initrd of %llu bytes does not fit in low RAM (%llu MiB) beside the kernel",
			(unsigned long long)initrd_size,
			(unsigned long long)(m->regions[0].size >> 20));
		return -E2BIG;
	}

	struct boot_e820_entry map[BOOT_E820_MAX];
	int n = boot_memmap(m, map, BOOT_E820_MAX);
	if (n < 0)
		return n;

	/* Everything is checked: now write. */
	for (unsigned int i = 0; i < f.nsegs; i++) {
		const struct elf_seg *s = &f.segs[i];
		if (s->type != PT_LOAD)
			continue;
		uint8_t *p = gmem_ptr(m, s->paddr, s->memsz);
		memcpy(p, f.data + s->offset, s->filesz);
		memset(p + s->filesz, 0, s->memsz - s->filesz);
	}
	if (initrd_size && gmem_write(m, initrd, cfg->initrd, initrd_size))
		return -E2BIG;

	uint8_t si[HVM_START_INFO_SIZE + HVM_MODLIST_ENTRY_SIZE] = { 0 };
	uint8_t mm[BOOT_E820_MAX * HVM_MEMMAP_ENTRY_SIZE] = { 0 };
	_Static_assert(BOOT_MODLIST_ADDR - BOOT_PARAMS_ADDR >= HVM_START_INFO_SIZE,
		       "modlist must follow start_info");
	put_le32(si + 0, HVM_START_MAGIC);
	put_le32(si + 4, 1); /* version 1: has the memmap fields */
	put_le32(si + 8, 0); /* flags */
	put_le32(si + 12, initrd_size ? 1 : 0);
	put_le64(si + 16, initrd_size ? BOOT_MODLIST_ADDR : 0);
	put_le64(si + 24, BOOT_CMDLINE_ADDR);
	put_le64(si + 32, cfg->acpi_rsdp); /* rsdp_paddr (0: none; the MP table is always there) */
	put_le64(si + 40, BOOT_MEMMAP_ADDR);
	put_le32(si + 48, (uint32_t)n);
	uint8_t *mod = si + (BOOT_MODLIST_ADDR - BOOT_PARAMS_ADDR);
	put_le64(mod + 0, initrd);
	put_le64(mod + 8, initrd_size);
	for (int i = 0; i < n; i++) {
		uint8_t *e = mm + i * HVM_MEMMAP_ENTRY_SIZE;
		put_le64(e, map[i].addr);
		put_le64(e + 8, map[i].size);
		put_le32(e + 16, map[i].type);
	}
	if (gmem_write(m, BOOT_PARAMS_ADDR, si, sizeof(si)) ||
	    gmem_write(m, BOOT_MEMMAP_ADDR, mm, (size_t)n * HVM_MEMMAP_ENTRY_SIZE))
		return -E2BIG;
	if ((r = write_cmdline(m, cmdline)) || (r = write_mptable(m, cfg->ncpus)) ||
	    (r = setup_segments(m, sregs, false)))
		return r;

	memset(regs, 0, sizeof(*regs));
	regs->rip = entry;
	regs->rbx = BOOT_PARAMS_ADDR;
	regs->rsp = BOOT_STACK_TOP;
	regs->rflags = 2;
	sregs->cr0 = X86_CR0_PE | X86_CR0_ET;
	sregs->cr3 = 0;
	sregs->cr4 = 0;
	sregs->efer = 0;

	if (info)
		*info = (struct boot_info){ .format = BOOT_FORMAT_PVH, .entry = entry,
					    .kernel_start = kstart, .kernel_end = kend,
					    .initrd_addr = initrd, .initrd_size = initrd_size,
					    .params_addr = BOOT_PARAMS_ADDR };
	log_info("ELF%s kernel loaded at [%#llx, %#llx), PVH entry %#llx",
		 f.is64 ? "64" : "32", (unsigned long long)kstart, (unsigned long long)kend,
		 (unsigned long long)entry);
	return 0;
}

/* ---- entry point ----------------------------------------------------------------------- */

int boot_load(struct gmem *m, const struct boot_config *cfg, struct kvm_regs *regs,
	      struct kvm_sregs *sregs, struct boot_info *info)
{
	const char *cmdline = cfg && cfg->cmdline ? cfg->cmdline : "";

	if (!cfg || !cfg->kernel) {
		log_err("no kernel given");
		return -EINVAL;
	}
	if (cfg->ncpus < 1 || cfg->ncpus > BOOT_MAX_CPUS) {
		log_err("cannot boot %u CPUs: vmsnap supports 1 to %u", cfg->ncpus, BOOT_MAX_CPUS);
		return -EINVAL;
	}
	if (!cfg->initrd && cfg->initrd_len) {
		log_err("initrd length given without initrd data");
		return -EINVAL;
	}
	if (strlen(cmdline) >= BOOT_CMDLINE_MAX) {
		log_err("command line is %zu bytes, vmsnap passes at most %u", strlen(cmdline),
			BOOT_CMDLINE_MAX - 1);
		return -EINVAL;
	}
	if (!m->host || m->nregions < 1 || m->regions[0].gpa != 0 ||
	    m->regions[0].size < BOOT_MIN_RAM) {
		log_err("guest RAM of %llu bytes is too small to boot (need %llu MiB)",
			(unsigned long long)m->size, BOOT_MIN_RAM >> 20);
		return -E2BIG;
	}
	if (cfg->kernel_len == 0) {
		log_err("kernel image is empty");
		return -ENOEXEC;
	}

	const uint8_t *k = cfg->kernel;
	size_t len = cfg->kernel_len;
	if (len >= 4 && memcmp(k, "\x7f" "ELF", 4) == 0)
		return load_pvh(m, cfg, cmdline, regs, sregs, info);
	if (len >= HDR_MAGIC + 4 && memcmp(k + HDR_MAGIC, "HdrS", 4) == 0)
		return load_bzimage(m, cfg, cmdline, regs, sregs, info);
	log_err("kernel image (%zu bytes) is neither a bzImage (no \"HdrS\" at 0x202) nor an "
		"ELF file",
		len);
	return -ENOEXEC;
}
