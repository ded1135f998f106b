/* SPDX-License-Identifier: MIT */
/*
 * ACPI tables for a hardware-reduced x86 machine (ACPI 6.3 layouts), built in a host buffer
 * the size of [LAYOUT_ACPI_START, LAYOUT_ACPI_END) and copied into guest RAM in one write.
 *
 * Guest-physical layout, each table 16-byte aligned after the RSDP:
 *   RSDP (36 bytes, revision 2), DSDT, FADT, MADT, XSDT (FADT and MADT).
 * The DSDT's AML comes from the small encoder below: every object with a PkgLength is opened
 * with 4 bytes reserved for it and closed by aml_close(), which writes the shortest PkgLength
 * encoding (1 to 4 bytes) and slides the body down.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "vmm/acpi.h"
#include "vmm/boot.h"
#include "vmm/layout.h"
#include "vmm/uart.h"

#define ACPI_AREA_SIZE ((size_t)(LAYOUT_ACPI_END - LAYOUT_ACPI_START))

#define ACPI_OEM_ID "VMSNAP"	     /* 6 bytes */
#define ACPI_OEM_TABLE_ID "VMSNAPVM" /* 8 bytes */
#define ACPI_OEM_REVISION 1u
#define ACPI_CREATOR_ID "VMSN" /* 4 bytes */
#define ACPI_CREATOR_REVISION 1u
#define ACPI_HYPERVISOR_ID "VMSNAP  " /* 8 bytes, FADT Hypervisor Vendor Identity */

#define RSDP_SIZE 36
#define SDT_HEADER_SIZE 36

/* FADT (ACPI 6.3, table 5-34): field offsets used here. */
#define FADT_REVISION 6
#define FADT_MINOR_REVISION 3
#define FADT_SIZE 276
#define FADT_IAPC_BOOT_ARCH 109
#define FADT_FLAGS 112
#define FADT_RESET_REG 116
#define FADT_RESET_VALUE 128
#define FADT_MINOR_VERSION 131
#define FADT_X_DSDT 140
#define FADT_SLEEP_CONTROL_REG 244
#define FADT_SLEEP_STATUS_REG 256
#define FADT_HYPERVISOR_ID 268

#define FADT_F_RESET_REG_SUP (1u << 10)
#define FADT_F_HW_REDUCED_ACPI (1u << 20)

#define IAPC_LEGACY_DEVICES (1u << 0)
#define IAPC_8042 (1u << 1)
#define IAPC_VGA_NOT_PRESENT (1u << 2)
#define IAPC_CMOS_RTC_NOT_PRESENT (1u << 5)

/* Generic Address Structure (ACPI 6.3, 5.2.3.2). */
#define GAS_SYSTEM_IO 1
#define GAS_ACCESS_BYTE 1

/* MADT (ACPI 6.3, 5.2.12): revision 5, structures used here. */
#define MADT_REVISION 5
#define MADT_LAPIC_ADDR 0xfee00000u
#define MADT_F_PCAT_COMPAT 1u
#define MADT_TYPE_LAPIC 0
#define MADT_TYPE_IOAPIC 1
#define MADT_TYPE_ISO 2
#define MADT_TYPE_LAPIC_NMI 4
#define MADT_LAPIC_ENABLED 1u
#define MADT_IOAPIC_ADDR 0xfec00000u
#define MPS_INTI_ACTIVE_HIGH 0x1u
#define MPS_INTI_EDGE 0x4u

#define DSDT_REVISION 2 /* 64-bit integers */
#define XSDT_REVISION 1

/* AML opcodes and prefixes (ACPI 6.3, 20.2). */
#define AML_ZERO_OP 0x00
#define AML_ONE_OP 0x01
#define AML_NAME_OP 0x08
#define AML_BYTE_PREFIX 0x0a
#define AML_WORD_PREFIX 0x0b
#define AML_DWORD_PREFIX 0x0c
#define AML_STRING_PREFIX 0x0d
#define AML_QWORD_PREFIX 0x0e
#define AML_SCOPE_OP 0x10
#define AML_BUFFER_OP 0x11
#define AML_PACKAGE_OP 0x12
#define AML_METHOD_OP 0x14
#define AML_DUAL_NAME_PREFIX 0x2e
#define AML_MULTI_NAME_PREFIX 0x2f
#define AML_EXT_OP_PREFIX 0x5b
#define AML_DEVICE_OP 0x82 /* after AML_EXT_OP_PREFIX */
#define AML_ROOT_CHAR 0x5c
#define AML_ARG0_OP 0x68
#define AML_NOTIFY_OP 0x86
#define AML_LEQUAL_OP 0x93
#define AML_IF_OP 0xa0

#define AML_METHOD_SERIALIZED 0x08

/* Resource descriptors (ACPI 6.3, 6.4). */
#define RES_IRQ_NOFLAGS 0x22	/* small IRQ, 2 data bytes */
#define RES_IO 0x47		/* small I/O port, 7 data bytes */
#define RES_END_TAG 0x79	/* small end tag, 1 data byte (checksum) */
#define RES_MEMORY32_FIXED 0x86 /* large, 9 data bytes */
#define RES_EXT_IRQ 0x89	/* large extended interrupt */
#define RES_IO_DECODE16 0x01
#define RES_MEM_READ_WRITE 0x01
#define RES_EXT_IRQ_CONSUMER 0x01
#define RES_EXT_IRQ_EDGE 0x02 /* polarity bit 2 clear: active high; bit 3 clear: exclusive */

/* COM1 as the UART model places it (8 registers). */
#define COM1_PORT UART_COM1_BASE
#define COM1_PORT_LEN 8u
#define COM1_IRQ UART_COM1_IRQ

/* Hardware-reduced sleep control register (ACPI 6.3, 4.8.3.7). */
#define SLP_TYP_SHIFT 2
#define SLP_TYP_MASK 0x1cu
#define SLP_EN 0x20u

/* Device names V000..VFFF: three hex digits. */
#define ACPI_VIRTIO_NAMES 0x1000u

/* ---- byte buffer ----------------------------------------------------------------------- */

struct abuf {
	uint8_t *p;
	size_t len;
	size_t cap;
	bool full; /* something did not fit: later writes are dropped, the build fails */
};

static void put(struct abuf *b, const void *src, size_t n)
{
	if (b->full || n > b->cap - b->len) {
		b->full = true;
		return;
	}
	memcpy(b->p + b->len, src, n);
	b->len += n;
}

static void put_u8(struct abuf *b, uint8_t v)
{
	put(b, &v, 1);
}

static void wr_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void wr_le32(uint8_t *p, uint32_t v)
{
	wr_le16(p, (uint16_t)v);
	wr_le16(p + 2, (uint16_t)(v >> 16));
}

static void wr_le64(uint8_t *p, uint64_t v)
{
	wr_le32(p, (uint32_t)v);
	wr_le32(p + 4, (uint32_t)(v >> 32));
}

static void put_le16(struct abuf *b, uint16_t v)
{
	uint8_t t[2];
	wr_le16(t, v);
	put(b, t, sizeof(t));
}

static void put_le32(struct abuf *b, uint32_t v)
{
	uint8_t t[4];
	wr_le32(t, v);
	put(b, t, sizeof(t));
}

static void put_le64(struct abuf *b, uint64_t v)
{
	uint8_t t[8];
	wr_le64(t, v);
	put(b, t, sizeof(t));
}

static void put_zeros(struct abuf *b, size_t n)
{
	static const uint8_t zeros[64];
	while (n > 0 && !b->full) {
		size_t k = n < sizeof(zeros) ? n : sizeof(zeros);
		put(b, zeros, k);
		n -= k;
	}
}

static void align16(struct abuf *b)
{
	put_zeros(b, (16 - b->len % 16) % 16);
}

/* Host pointer to buffer bytes [off, off+n) already written, or NULL once the buffer is full. */
static uint8_t *at(struct abuf *b, size_t off, size_t n)
{
	return !b->full && off <= b->len && n <= b->len - off ? b->p + off : NULL;
}

static uint64_t gpa_of(size_t off)
{
	return LAYOUT_ACPI_START + off;
}

/* The byte that makes @p[0..len) sum to zero (modulo 256). */
static uint8_t checksum(const uint8_t *p, size_t len)
{
	uint8_t sum = 0;
	for (size_t i = 0; i < len; i++)
		sum = (uint8_t)(sum + p[i]);
	return (uint8_t)-sum;
}

/* ---- system description tables --------------------------------------------------------- */

/* Start a table with the common header (ACPI 6.3, 5.2.6); returns its buffer offset. */
static size_t sdt_begin(struct abuf *b, const char *sig, uint8_t revision)
{
	align16(b);
	size_t off = b->len;
	put(b, sig, 4);
	put_le32(b, 0); /* length: sdt_end() */
	put_u8(b, revision);
	put_u8(b, 0); /* checksum: sdt_end() */
	put(b, ACPI_OEM_ID, 6);
	put(b, ACPI_OEM_TABLE_ID, 8);
	put_le32(b, ACPI_OEM_REVISION);
	put(b, ACPI_CREATOR_ID, 4);
	put_le32(b, ACPI_CREATOR_REVISION);
	return off;
}

/* Fill in the length and checksum of the table started at @off (it ends at b->len). */
static void sdt_end(struct abuf *b, size_t off)
{
	uint8_t *t = at(b, off, b->len - off);
	if (!t)
		return;
	wr_le32(t + 4, (uint32_t)(b->len - off));
	t[9] = checksum(t, b->len - off);
}

/* ---- AML encoder ----------------------------------------------------------------------- */

/* Reserve room for a PkgLength; aml_close() encodes it. Returns the reserved offset. */
static size_t aml_open(struct abuf *b)
{
	size_t off = b->len;
	put_zeros(b, 4);
	return off;
}

/*
 * Close the object whose PkgLength was reserved at @off: the PkgLength counts its own bytes
 * and the body after it. One byte holds up to 63 (bits 0-5); otherwise the lead byte's bits
 * 6-7 say how many bytes follow, its bits 0-3 hold the low nibble and each following byte the
 * next 8 bits, so 2, 3 and 4 bytes hold up to 2^12-1, 2^20-1 and 2^28-1 (ACPI 6.3, 20.2.4).
 */
static void aml_close(struct abuf *b, size_t off)
{
	uint8_t *p = at(b, off, 4);
	if (!p)
		return;
	size_t body = b->len - off - 4;
	size_t n, total;
	if (body + 1 <= 0x3f)
		n = 1;
	else if (body + 2 <= 0xfff)
		n = 2;
	else if (body + 3 <= 0xfffff)
		n = 3;
	else if (body + 4 <= 0xfffffff)
		n = 4;
	else {
		b->full = true;
		return;
	}
	total = body + n;
	if (n == 1) {
		p[0] = (uint8_t)total;
	} else {
		p[0] = (uint8_t)((n - 1) << 6 | (total & 0xf));
		for (size_t i = 1; i < n; i++)
			p[i] = (uint8_t)(total >> (4 + 8 * (i - 1)));
	}
	memmove(p + n, p + 4, body);
	b->len -= 4 - n;
}

/*
 * A NameString from "\_SB_.VGEN"-style text: an optional root prefix, then 4-character
 * segments separated by dots (shorter segments are padded with '_').
 */
static void aml_namestring(struct abuf *b, const char *path)
{
	unsigned int nseg = 1;
	if (*path == '\\') {
		put_u8(b, AML_ROOT_CHAR);
		path++;
	}
	for (const char *s = path; *s; s++)
		nseg += *s == '.';
	if (nseg == 2) {
		put_u8(b, AML_DUAL_NAME_PREFIX);
	} else if (nseg > 2) {
		put_u8(b, AML_MULTI_NAME_PREFIX);
		put_u8(b, (uint8_t)nseg);
	}
	for (unsigned int i = 0; i < nseg; i++) {
		char seg[4] = { '_', '_', '_', '_' };
		for (unsigned int k = 0; *path && *path != '.'; path++, k++)
			if (k < 4)
				seg[k] = *path;
		put(b, seg, 4);
		if (*path == '.')
			path++;
	}
}

/* An Integer in its shortest encoding (ZeroOp, OneOp, Byte/Word/DWord/QWordConst). */
static void aml_int(struct abuf *b, uint64_t v)
{
	if (v == 0) {
		put_u8(b, AML_ZERO_OP);
	} else if (v == 1) {
		put_u8(b, AML_ONE_OP);
	} else if (v <= 0xff) {
		put_u8(b, AML_BYTE_PREFIX);
		put_u8(b, (uint8_t)v);
	} else if (v <= 0xffff) {
		put_u8(b, AML_WORD_PREFIX);
		put_le16(b, (uint16_t)v);
	} else if (v <= 0xffffffff) {
		put_u8(b, AML_DWORD_PREFIX);
		put_le32(b, (uint32_t)v);
	} else {
		put_u8(b, AML_QWORD_PREFIX);
		put_le64(b, v);
	}
}

/* A DWordConst whatever the value (where a fixed encoding is promised). */
static void aml_dword(struct abuf *b, uint32_t v)
{
	put_u8(b, AML_DWORD_PREFIX);
	put_le32(b, v);
}

static void aml_string(struct abuf *b, const char *s)
{
	put_u8(b, AML_STRING_PREFIX);
	put(b, s, strlen(s) + 1);
}

/*
 * EisaId("PNP0501"): three letters of 5 bits each ('A' = 1) and four hex digits, stored
 * big-endian in a DWordConst, as ASL compilers emit it.
 */
static void aml_eisaid(struct abuf *b, const char *id)
{
	uint32_t v = 0;
	for (int i = 0; i < 3; i++)
		v = v << 5 | ((uint32_t)(id[i] - '@') & 0x1f);
	for (int i = 3; i < 7; i++) {
		char c = id[i];
		v = v << 4 | (uint32_t)(c <= '9' ? c - '0' : c - 'A' + 10);
	}
	aml_dword(b, __builtin_bswap32(v));
}

/* Name(path, ...): the caller writes the object. */
static void aml_name(struct abuf *b, const char *path)
{
	put_u8(b, AML_NAME_OP);
	aml_namestring(b, path);
}

static size_t aml_scope(struct abuf *b, const char *path)
{
	put_u8(b, AML_SCOPE_OP);
	size_t off = aml_open(b);
	aml_namestring(b, path);
	return off;
}

static size_t aml_device(struct abuf *b, const char *path)
{
	put_u8(b, AML_EXT_OP_PREFIX);
	put_u8(b, AML_DEVICE_OP);
	size_t off = aml_open(b);
	aml_namestring(b, path);
	return off;
}

static size_t aml_method(struct abuf *b, const char *path, unsigned int nargs, bool serialized)
{
	put_u8(b, AML_METHOD_OP);
	size_t off = aml_open(b);
	aml_namestring(b, path);
	put_u8(b, (uint8_t)((nargs & 7) | (serialized ? AML_METHOD_SERIALIZED : 0)));
	return off;
}

/* Package(n){...}: the caller writes @nelems elements and closes it. */
static size_t aml_package(struct abuf *b, uint8_t nelems)
{
	put_u8(b, AML_PACKAGE_OP);
	size_t off = aml_open(b);
	put_u8(b, nelems);
	return off;
}

/* If (...) {...}: the caller writes the predicate and the body and closes it. */
static size_t aml_if(struct abuf *b)
{
	put_u8(b, AML_IF_OP);
	return aml_open(b);
}

/* ---- resource templates ---------------------------------------------------------------- */

struct restemplate {
	uint8_t d[32]; /* the largest here: Memory32Fixed, Interrupt and EndTag, 23 bytes */
	size_t len;
	bool full;
};

static void res_put(struct restemplate *r, const uint8_t *d, size_t n)
{
	if (r->full || n > sizeof(r->d) - 2 - r->len) { /* 2: room for the EndTag */
		r->full = true;
		return;
	}
	memcpy(r->d + r->len, d, n);
	r->len += n;
}

static void res_io16(struct restemplate *r, uint16_t min, uint16_t max, uint8_t align,
		     uint8_t len)
{
	uint8_t d[8] = { RES_IO, RES_IO_DECODE16 };
	wr_le16(d + 2, min);
	wr_le16(d + 4, max);
	d[6] = align;
	d[7] = len;
	res_put(r, d, sizeof(d));
}

static void res_irq_noflags(struct restemplate *r, unsigned int irq)
{
	uint8_t d[3] = { RES_IRQ_NOFLAGS };
	wr_le16(d + 1, (uint16_t)(1u << irq));
	res_put(r, d, sizeof(d));
}

/* Memory32Fixed(ReadWrite, base, len): 86 09 00 01 <base:le32> <len:le32>. */
static void res_mem32_fixed(struct restemplate *r, uint32_t base, uint32_t len)
{
	uint8_t d[12] = { RES_MEMORY32_FIXED, 9, 0, RES_MEM_READ_WRITE };
	wr_le32(d + 4, base);
	wr_le32(d + 8, len);
	res_put(r, d, sizeof(d));
}

/*
 * Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive){gsi}:
 * 89 06 00 <flags> 01 <gsi:le32>.
 */
static void res_ext_irq(struct restemplate *r, uint32_t gsi)
{
	uint8_t d[9] = { RES_EXT_IRQ, 6, 0, RES_EXT_IRQ_CONSUMER | RES_EXT_IRQ_EDGE, 1 };
	wr_le32(d + 5, gsi);
	res_put(r, d, sizeof(d));
}

/*
 * Buffer holding the template and its EndTag, whose checksum byte makes the whole template
 * sum to zero (ACPI 6.3, 6.4.2.9; zero would also be accepted as "no checksum").
 */
static void aml_restemplate(struct abuf *b, struct restemplate *r)
{
	if (r->full) {
		b->full = true;
		return;
	}
	r->d[r->len++] = RES_END_TAG;
	r->d[r->len] = checksum(r->d, r->len);
	r->len++;
	put_u8(b, AML_BUFFER_OP);
	size_t off = aml_open(b);
	aml_int(b, r->len);
	put(b, r->d, r->len);
	aml_close(b, off);
}

/* ---- the tables ------------------------------------------------------------------------ */

static void dsdt_com1(struct abuf *b)
{
	struct restemplate crs = { .len = 0 };
	size_t dev = aml_device(b, "COM1");
	aml_name(b, "_HID");
	aml_eisaid(b, "PNP0501");
	aml_name(b, "_UID");
	aml_int(b, 0);
	aml_name(b, "_CRS");
	res_io16(&crs, COM1_PORT, COM1_PORT, 0, COM1_PORT_LEN);
	res_irq_noflags(&crs, COM1_IRQ);
	aml_restemplate(b, &crs);
	aml_close(b, dev);
}

/* Device(Vxxx): a virtio-mmio transport as Linux's virtio_mmio ACPI binding expects it. */
static void dsdt_virtio(struct abuf *b, unsigned int i, const struct acpi_virtio_dev *v)
{
	static const char hex[] = "0123456789ABCDEF";
	char name[5] = { 'V', hex[(i >> 8) & 0xf], hex[(i >> 4) & 0xf], hex[i & 0xf], 0 };
	struct restemplate crs = { .len = 0 };
	size_t dev = aml_device(b, name);
	aml_name(b, "_HID");
	aml_string(b, "LNRO0005");
	aml_name(b, "_UID");
	aml_int(b, i);
	aml_name(b, "_CCA"); /* DMA is cache-coherent */
	aml_int(b, 1);
	aml_name(b, "_CRS");
	res_mem32_fixed(&crs, (uint32_t)v->base, v->size);
	res_ext_irq(&crs, v->gsi);
	aml_restemplate(b, &crs);
	aml_close(b, dev);
}

/*
 * Device(VGEN): the VM generation ID (Microsoft's "Virtual Machine Generation ID" device;
 * Linux's vmgenid driver matches VMGENCTR or VM_GEN_COUNTER and reads ADDR), and the Generic
 * Event Device whose interrupt runs _EVT, which notifies VGEN with 0x80.
 */
static void dsdt_vmgenid(struct abuf *b, uint64_t addr, uint32_t ged_gsi)
{
	struct restemplate crs = { .len = 0 };
	size_t dev = aml_device(b, "VGEN");
	aml_name(b, "_HID");
	aml_string(b, "VMGENCTR");
	aml_name(b, "_CID");
	aml_string(b, "VM_GEN_COUNTER");
	aml_name(b, "_DDN");
	aml_string(b, "VM_Gen_Counter");
	aml_name(b, "ADDR");
	size_t pkg = aml_package(b, 2);
	aml_dword(b, (uint32_t)addr);
	aml_dword(b, (uint32_t)(addr >> 32));
	aml_close(b, pkg);
	aml_close(b, dev);

	dev = aml_device(b, "GED0");
	aml_name(b, "_HID");
	aml_string(b, "ACPI0013");
	aml_name(b, "_UID");
	aml_int(b, 0);
	aml_name(b, "_CRS");
	res_ext_irq(&crs, ged_gsi);
	aml_restemplate(b, &crs);
	size_t evt = aml_method(b, "_EVT", 1, true);
	size_t cond = aml_if(b);
	put_u8(b, AML_LEQUAL_OP);
	put_u8(b, AML_ARG0_OP);
	aml_int(b, ged_gsi);
	put_u8(b, AML_NOTIFY_OP);
	aml_namestring(b, "\\_SB_.VGEN");
	aml_int(b, 0x80);
	aml_close(b, cond);
	aml_close(b, evt);
	aml_close(b, dev);
}

static size_t build_dsdt(struct abuf *b, const struct acpi_config *cfg)
{
	size_t off = sdt_begin(b, "DSDT", DSDT_REVISION);
	size_t sb = aml_scope(b, "\\_SB_");
	dsdt_com1(b);
	for (unsigned int i = 0; i < cfg->nvirtio; i++)
		dsdt_virtio(b, i, &cfg->virtio[i]);
	if (cfg->vmgenid_addr)
		dsdt_vmgenid(b, cfg->vmgenid_addr, cfg->ged_gsi);
	aml_close(b, sb);

	/* Sleep type for S5: ACPICA wants a package of at least one integer (the SLP_TYP value);
	 * the second is the PM1b value, unused on hardware-reduced machines. */
	aml_name(b, "\\_S5_");
	size_t pkg = aml_package(b, 2);
	aml_int(b, LAYOUT_ACPI_S5_TYPE);
	aml_int(b, 0);
	aml_close(b, pkg);
	sdt_end(b, off);
	return off;
}

static void wr_gas_io8(uint8_t *p, uint16_t port)
{
	p[0] = GAS_SYSTEM_IO;
	p[1] = 8; /* register bit width */
	p[2] = 0; /* bit offset */
	p[3] = GAS_ACCESS_BYTE;
	wr_le64(p + 4, port);
}

/*
 * FADT revision 6: hardware-reduced ACPI (no PM1 blocks, no SCI, no FACS), the sleep
 * control/status and reset registers on one I/O port, the DSDT through X_DSDT only.
 */
static size_t build_fadt(struct abuf *b, size_t dsdt)
{
	size_t off = sdt_begin(b, "FACP", FADT_REVISION);
	put_zeros(b, FADT_SIZE - SDT_HEADER_SIZE);
	uint8_t *t = at(b, off, FADT_SIZE);
	if (t) {
		wr_le16(t + FADT_IAPC_BOOT_ARCH, IAPC_LEGACY_DEVICES | IAPC_8042 |
							 IAPC_VGA_NOT_PRESENT |
							 IAPC_CMOS_RTC_NOT_PRESENT);
		wr_le32(t + FADT_FLAGS, FADT_F_HW_REDUCED_ACPI | FADT_F_RESET_REG_SUP);
		wr_gas_io8(t + FADT_RESET_REG, LAYOUT_ACPI_PM_PORT);
		t[FADT_RESET_VALUE] = LAYOUT_ACPI_RESET_VALUE;
		t[FADT_MINOR_VERSION] = FADT_MINOR_REVISION;
		wr_le64(t + FADT_X_DSDT, gpa_of(dsdt));
		wr_gas_io8(t + FADT_SLEEP_CONTROL_REG, LAYOUT_ACPI_PM_PORT);
		wr_gas_io8(t + FADT_SLEEP_STATUS_REG, LAYOUT_ACPI_PM_PORT);
		memcpy(t + FADT_HYPERVISOR_ID, ACPI_HYPERVISOR_ID, 8);
	}
	sdt_end(b, off);
	return off;
}

/*
 * MADT: the local APICs (processor UID = APIC id = vCPU index), the IOAPIC with APIC id
 * ncpus as in the MP table (vmm/boot.c), ISA IRQ 0 on GSI 2 as KVM routes it, and NMI on
 * LINT1 of every local APIC. Other ISA IRQs keep their identity mapping, edge/active high.
 */
static size_t build_madt(struct abuf *b, unsigned int ncpus)
{
	size_t off = sdt_begin(b, "APIC", MADT_REVISION);
	put_le32(b, MADT_LAPIC_ADDR);
	put_le32(b, MADT_F_PCAT_COMPAT);
	for (unsigned int i = 0; i < ncpus; i++) {
		put_u8(b, MADT_TYPE_LAPIC);
		put_u8(b, 8);
		put_u8(b, (uint8_t)i); /* ACPI processor UID */
		put_u8(b, (uint8_t)i); /* APIC id */
		put_le32(b, MADT_LAPIC_ENABLED);
	}
	put_u8(b, MADT_TYPE_IOAPIC);
	put_u8(b, 12);
	put_u8(b, (uint8_t)ncpus);
	put_u8(b, 0);
	put_le32(b, MADT_IOAPIC_ADDR);
	put_le32(b, 0); /* GSI base */

	put_u8(b, MADT_TYPE_ISO);
	put_u8(b, 10);
	put_u8(b, 0); /* bus: ISA */
	put_u8(b, 0); /* IRQ 0 */
	put_le32(b, 2);
	put_le16(b, MPS_INTI_ACTIVE_HIGH | MPS_INTI_EDGE);

	put_u8(b, MADT_TYPE_LAPIC_NMI);
	put_u8(b, 6);
	put_u8(b, 0xff);  /* all processors */
	put_le16(b, 0);	  /* flags: as the bus says */
	put_u8(b, 1);	  /* LINT1 */
	sdt_end(b, off);
	return off;
}

static size_t build_xsdt(struct abuf *b, size_t fadt, size_t madt)
{
	size_t off = sdt_begin(b, "XSDT", XSDT_REVISION);
	put_le64(b, gpa_of(fadt));
	put_le64(b, gpa_of(madt));
	sdt_end(b, off);
	return off;
}

/* RSDP revision 2 (ACPI 6.3, 5.2.5.3), no RSDT: the first 20 bytes and all 36 checksummed. */
static void build_rsdp(struct abuf *b, size_t xsdt)
{
	uint8_t *t = at(b, 0, RSDP_SIZE);
	if (!t)
		return;
	memcpy(t, "RSD PTR ", 8);
	memcpy(t + 9, ACPI_OEM_ID, 6);
	t[15] = 2;
	wr_le32(t + 16, 0);
	wr_le32(t + 20, RSDP_SIZE);
	wr_le64(t + 24, gpa_of(xsdt));
	t[8] = 0;
	t[8] = checksum(t, 20);
	t[32] = 0;
	t[32] = checksum(t, RSDP_SIZE);
}

static int check_config(const struct acpi_config *cfg)
{
	if (cfg->ncpus < 1 || cfg->ncpus > BOOT_MAX_CPUS) {
		log_err("ACPI: %u CPUs: the MADT describes 1 to %u", cfg->ncpus, BOOT_MAX_CPUS);
		return -EINVAL;
	}
	if (cfg->nvirtio > 0 && !cfg->virtio) {
		log_err("ACPI: %u virtio devices but no list", cfg->nvirtio);
		return -EINVAL;
	}
	if (cfg->nvirtio > ACPI_VIRTIO_NAMES) {
		log_err("ACPI: %u virtio devices: at most %u have names", cfg->nvirtio,
			ACPI_VIRTIO_NAMES);
		return -EINVAL;
	}
	for (unsigned int i = 0; i < cfg->nvirtio; i++) {
		const struct acpi_virtio_dev *v = &cfg->virtio[i];
		/* A guest finds the devices by this window size (acpi.h). */
		if (v->size != LAYOUT_VIRTIO_MMIO_SIZE || v->base > 0x100000000ull - v->size) {
			log_err("ACPI: virtio device %u at [%#llx, +%#x) is not a %#llx-byte "
				"window below 4 GiB",
				i, (unsigned long long)v->base, v->size,
				(unsigned long long)LAYOUT_VIRTIO_MMIO_SIZE);
			return -EINVAL;
		}
		/* Every interrupt is declared Exclusive: no two devices may share one. */
		bool clash = v->gsi == COM1_IRQ || (cfg->vmgenid_addr && v->gsi == cfg->ged_gsi);
		for (unsigned int k = 0; k < i && !clash; k++)
			clash = cfg->virtio[k].gsi == v->gsi;
		if (clash) {
			log_err("ACPI: virtio device %u: GSI %u is already taken", i, v->gsi);
			return -EINVAL;
		}
	}
	if (cfg->vmgenid_addr && cfg->ged_gsi == COM1_IRQ) {
		log_err("ACPI: GED GSI %u is COM1's", cfg->ged_gsi);
		return -EINVAL;
	}
	return 0;
}

int acpi_build(struct gmem *m, const struct acpi_config *cfg, uint64_t *rsdp_gpa)
{
	struct abuf b = { .cap = ACPI_AREA_SIZE };
	int r;

	if ((r = check_config(cfg)))
		return r;
	if (!gmem_ptr(m, LAYOUT_ACPI_START, ACPI_AREA_SIZE)) {
		log_err("ACPI: [%#llx, %#llx) is not RAM", (unsigned long long)LAYOUT_ACPI_START,
			(unsigned long long)LAYOUT_ACPI_END);
		return -EFAULT;
	}
	b.p = calloc(1, b.cap);
	if (!b.p)
		return -ENOMEM;

	put_zeros(&b, RSDP_SIZE);
	size_t dsdt = build_dsdt(&b, cfg);
	size_t fadt = build_fadt(&b, dsdt);
	size_t madt = build_madt(&b, cfg->ncpus);
	size_t xsdt = build_xsdt(&b, fadt, madt);
	build_rsdp(&b, xsdt);
	if (b.full) {
		log_err("ACPI: tables for %u CPUs and %u virtio devices do not fit in %zu bytes",
			cfg->ncpus, cfg->nvirtio, ACPI_AREA_SIZE);
		r = -E2BIG;
	} else {
		r = gmem_write(m, LAYOUT_ACPI_START, b.p, b.len);
	}
	free(b.p);
	if (!r && rsdp_gpa)
		*rsdp_gpa = LAYOUT_ACPI_START;
	return r;
}

void acpi_pm_io(void *opaque, uint64_t offset, uint8_t *data, unsigned int len, bool is_write)
{
	const struct acpi_pm *pm = opaque;

	if (!is_write) {
		memset(data, 0, len);
		return;
	}
	/* An 8-bit register: only its own byte counts, wider writes spill onto other ports. */
	if (offset != 0 || len == 0)
		return;
	uint8_t v = data[0];
	if ((v & SLP_EN) && ((v & SLP_TYP_MASK) >> SLP_TYP_SHIFT) == LAYOUT_ACPI_S5_TYPE) {
		if (pm->poweroff)
			pm->poweroff(pm->opaque);
	} else if (v == LAYOUT_ACPI_RESET_VALUE) {
		if (pm->reset)
			pm->reset(pm->opaque);
	}
}
