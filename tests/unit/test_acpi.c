/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for vmm/acpi.c: tables are built into a gmem backed by an anonymous mapping and
 * checked field by field (checksums, lengths, pointers, MADT entries, the DSDT byte patterns
 * vmm/acpi.h promises, a structural walk of the AML), then handed to ACPICA's disassembler
 * (iasl -d), whose output must be free of complaints and must compile back with iasl.
 *
 * No fuzz target goes with this module: it produces tables and parses nothing.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "util/log.h"
#include "vmm/acpi.h"
#include "vmm/gmem.h"
#include "vmm/layout.h"

#define RAM_SIZE (2ull << 20)
#define FILL 0xa5
#define MAX_VIRTIO 4096

/* A byte string literal as (pointer, length) without its terminating NUL. */
#define BYTES(s) (const uint8_t *)(s), sizeof(s) - 1

/* ---- helpers --------------------------------------------------------------------------- */

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

static uint8_t sum8(const uint8_t *p, size_t len)
{
	uint8_t s = 0;
	for (size_t i = 0; i < len; i++)
		s = (uint8_t)(s + p[i]);
	return s;
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
	memset(m->host, FILL, size);
	return m;
}

static void free_ram(struct gmem *m)
{
	munmap(m->host, m->size);
	free(m);
}

static void assert_filled(const uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != FILL)
			fail_msg("byte %zu of a range that must be untouched is %#x", i, p[i]);
}

/* Nothing outside [LAYOUT_ACPI_START, LAYOUT_ACPI_END) changed. */
static void assert_outside_untouched(const struct gmem *m)
{
	assert_filled(m->host, LAYOUT_ACPI_START);
	assert_filled(m->host + LAYOUT_ACPI_END, m->size - LAYOUT_ACPI_END);
}

static void assert_ram_untouched(const struct gmem *m)
{
	assert_filled(m->host, m->size);
}

/* Virtio devices as the machine lays them out (vmm/layout.h). */
static struct acpi_virtio_dev *virtio_devs(unsigned int n)
{
	struct acpi_virtio_dev *v = calloc(n ? n : 1, sizeof(*v));
	assert_non_null(v);
	for (unsigned int i = 0; i < n; i++) {
		v[i].base = LAYOUT_VIRTIO_MMIO_BASE + i * LAYOUT_VIRTIO_MMIO_STRIDE;
		v[i].size = LAYOUT_VIRTIO_MMIO_SIZE;
		/* The machine has at most LAYOUT_VIRTIO_MAX (below the GED's GSI); the tests
		 * go further and step over the GED's. */
		v[i].gsi = LAYOUT_VIRTIO_GSI_BASE + i;
		if (v[i].gsi >= LAYOUT_GED_GSI)
			v[i].gsi++;
	}
	return v;
}

static struct acpi_config config(unsigned int ncpus, const struct acpi_virtio_dev *v,
				 unsigned int nvirtio, uint64_t vmgenid)
{
	return (struct acpi_config){ .ncpus = ncpus,
				     .virtio = v,
				     .nvirtio = nvirtio,
				     .vmgenid_addr = vmgenid,
				     .ged_gsi = LAYOUT_GED_GSI };
}

/* ---- table checks ---------------------------------------------------------------------- */

struct tables {
	const uint8_t *rsdp, *xsdt, *fadt, *madt, *dsdt;
	uint64_t rsdp_gpa, xsdt_gpa, fadt_gpa, madt_gpa, dsdt_gpa;
};

/* A system description table at @gpa: inside the ACPI area, signature, checksum, header. */
static const uint8_t *sdt_at(const struct gmem *m, uint64_t gpa, const char *sig,
			     uint8_t revision)
{
	assert_true(gpa >= LAYOUT_ACPI_START && gpa + 36 <= LAYOUT_ACPI_END);
	const uint8_t *t = gmem_ptr(m, gpa, 36);
	assert_non_null(t);
	uint32_t len = get32(t + 4);
	assert_true(len >= 36);
	assert_true(gpa + len <= LAYOUT_ACPI_END);
	if (memcmp(t, sig, 4) != 0)
		fail_msg("table at %#llx is \"%.4s\", expected \"%s\"", (unsigned long long)gpa,
			 (const char *)t, sig);
	assert_int_equal(t[8], revision);
	assert_int_equal(sum8(t, len), 0);
	assert_memory_equal(t + 10, "VMSNAP", 6);
	assert_memory_equal(t + 16, "VMSNAPVM", 8);
	assert_memory_equal(t + 28, "VMSN", 4);
	return t;
}

static void check_rsdp(const struct gmem *m, uint64_t gpa, struct tables *tb)
{
	assert_int_equal(gpa, LAYOUT_ACPI_START);
	assert_int_equal(gpa % 16, 0);
	const uint8_t *r = gmem_ptr(m, gpa, 36);
	assert_non_null(r);
	assert_memory_equal(r, "RSD PTR ", 8);
	assert_int_equal(sum8(r, 20), 0);
	assert_int_equal(sum8(r, 36), 0);
	assert_memory_equal(r + 9, "VMSNAP", 6);
	assert_int_equal(r[15], 2);
	assert_int_equal(get32(r + 16), 0); /* no RSDT */
	assert_int_equal(get32(r + 20), 36);
	assert_int_equal(r[33] | r[34] | r[35], 0);
	tb->rsdp = r;
	tb->rsdp_gpa = gpa;
	tb->xsdt_gpa = get64(r + 24);
}

static void check_gas_io8(const uint8_t *g, uint16_t port)
{
	assert_int_equal(g[0], 1); /* SystemIO */
	assert_int_equal(g[1], 8);
	assert_int_equal(g[2], 0);
	assert_int_equal(g[3], 1); /* byte access */
	assert_int_equal(get64(g + 4), port);
}

static void check_fadt(const uint8_t *f, struct tables *tb)
{
	assert_int_equal(get32(f + 4), 276);
	assert_int_equal(get32(f + 36), 0); /* no FACS */
	assert_int_equal(get32(f + 40), 0); /* the DSDT only through X_DSDT */
	assert_int_equal(get16(f + 46), 0); /* no SCI */
	for (size_t off = 48; off < 109; off++) /* SMI_CMD .. CENTURY: nothing */
		assert_int_equal(f[off], 0);
	uint16_t boot = get16(f + 109);
	assert_true(boot & (1u << 2)); /* VGA not present */
	assert_true(boot & (1u << 1)); /* 8042 */
	assert_true(boot & (1u << 0)); /* legacy devices */
	assert_false(boot & (1u << 3)); /* MSI works */
	uint32_t flags = get32(f + 112);
	assert_int_equal(flags, (1u << 20) | (1u << 10)); /* HW_REDUCED_ACPI, RESET_REG_SUP */
	check_gas_io8(f + 116, LAYOUT_ACPI_PM_PORT);
	assert_int_equal(f[128], LAYOUT_ACPI_RESET_VALUE);
	assert_int_equal(get16(f + 129), 0); /* ARM boot flags */
	assert_int_equal(get64(f + 132), 0);  /* X_FIRMWARE_CTRL */
	for (size_t off = 148; off < 244; off++) /* X_PM1a_EVT_BLK .. X_GPE1_BLK: none */
		assert_int_equal(f[off], 0);
	check_gas_io8(f + 244, LAYOUT_ACPI_PM_PORT); /* SLEEP_CONTROL_REG */
	check_gas_io8(f + 256, LAYOUT_ACPI_PM_PORT); /* SLEEP_STATUS_REG */
	assert_memory_equal(f + 268, "VMSNAP  ", 8);
	tb->dsdt_gpa = get64(f + 140);
}

static void check_madt(const uint8_t *t, unsigned int ncpus)
{
	uint32_t len = get32(t + 4);
	unsigned int nlapic = 0, nioapic = 0, niso = 0, nnmi = 0;

	assert_int_equal(get32(t + 36), 0xfee00000u);
	assert_int_equal(get32(t + 40), 1); /* PCAT_COMPAT */
	for (uint32_t off = 44; off < len;) {
		const uint8_t *e = t + off;
		assert_true(off + 2 <= len);
		assert_true(e[1] >= 2 && off + e[1] <= len);
		switch (e[0]) {
		case 0: /* processor local APIC: in order, UID = APIC id = index */
			assert_int_equal(e[1], 8);
			assert_int_equal(e[2], nlapic);
			assert_int_equal(e[3], nlapic);
			assert_int_equal(get32(e + 4), 1);
			nlapic++;
			break;
		case 1: /* IOAPIC: id ncpus as in the MP table (vmm/boot.c) */
			assert_int_equal(e[1], 12);
			assert_int_equal(e[2], ncpus);
			assert_int_equal(get32(e + 4), 0xfec00000u);
			assert_int_equal(get32(e + 8), 0);
			nioapic++;
			break;
		case 2: /* ISA IRQ 0 -> GSI 2, edge, active high */
			assert_int_equal(e[1], 10);
			assert_int_equal(e[2], 0);
			assert_int_equal(e[3], 0);
			assert_int_equal(get32(e + 4), 2);
			assert_int_equal(get16(e + 8), 0x5);
			niso++;
			break;
		case 4: /* NMI on LINT1 of every processor */
			assert_int_equal(e[1], 6);
			assert_int_equal(e[2], 0xff);
			assert_int_equal(e[5], 1);
			nnmi++;
			break;
		default:
			fail_msg("unexpected MADT entry type %u at offset %u", e[0], off);
		}
		off += e[1];
	}
	assert_int_equal(nlapic, ncpus);
	assert_int_equal(nioapic, 1);
	assert_int_equal(niso, 1);
	assert_int_equal(nnmi, 1);
}

static size_t count_pattern(const uint8_t *hay, size_t len, const uint8_t *pat, size_t plen)
{
	size_t n = 0;
	for (size_t i = 0; i + plen <= len; i++)
		n += memcmp(hay + i, pat, plen) == 0;
	return n;
}

static size_t count_str(const uint8_t *hay, size_t len, const char *s)
{
	return count_pattern(hay, len, (const uint8_t *)s, strlen(s));
}

/* The byte patterns vmm/acpi.h promises to a guest that scans the DSDT. */
static void check_dsdt_patterns(const uint8_t *d, const struct acpi_config *cfg)
{
	size_t len = get32(d + 4);

	/* Every Memory32Fixed of the virtio window size, wherever it is, is one of ours. */
	size_t nwin = 0;
	for (size_t i = 0; i + 12 <= len; i++)
		if (!memcmp(d + i, "\x86\x09\x00\x01", 4) &&
		    get32(d + i + 8) == LAYOUT_VIRTIO_MMIO_SIZE)
			nwin++;
	assert_int_equal(nwin, cfg->nvirtio);

	for (unsigned int i = 0; i < cfg->nvirtio; i++) {
		const struct acpi_virtio_dev *v = &cfg->virtio[i];
		uint8_t pat[21] = { 0x86, 0x09, 0x00, 0x01 };
		memcpy(pat + 4, (uint32_t[]){ (uint32_t)v->base }, 4);
		memcpy(pat + 8, (uint32_t[]){ v->size }, 4);
		pat[12] = 0x89;
		pat[13] = 0x06;
		pat[14] = 0x00;
		pat[15] = 0x03; /* consumer, edge, active high, exclusive */
		pat[16] = 0x01;
		memcpy(pat + 17, (uint32_t[]){ v->gsi }, 4);
		if (count_pattern(d, len, pat, sizeof(pat)) != 1)
			fail_msg("virtio device %u: Memory32Fixed(%#llx, %#x) + Interrupt(%u) "
				 "not found exactly once",
				 i, (unsigned long long)v->base, v->size, v->gsi);
	}
	assert_int_equal(count_str(d, len, "LNRO0005"), cfg->nvirtio);

	if (cfg->vmgenid_addr) {
		/* 'A' 'D' 'D' 'R' 12 <pkglen> 02 0C <lo:le32> 0C <hi:le32> */
		uint8_t addr[17] = { 'A', 'D', 'D', 'R', 0x12, 0x0c, 0x02, 0x0c };
		memcpy(addr + 8, (uint32_t[]){ (uint32_t)cfg->vmgenid_addr }, 4);
		addr[12] = 0x0c;
		memcpy(addr + 13, (uint32_t[]){ (uint32_t)(cfg->vmgenid_addr >> 32) }, 4);
		assert_int_equal(count_pattern(d, len, addr, sizeof(addr)), 1);
		/* Name(ADDR, ...) is a Name, in Device(VGEN) */
		assert_int_equal(count_pattern(d, len, BYTES("\x08" "ADDR")), 1);
		assert_int_equal(count_str(d, len, "VGEN"), 2); /* Device(VGEN), Notify(\_SB.VGEN) */
		assert_int_equal(count_str(d, len, "VMGENCTR"), 1);
		assert_int_equal(count_str(d, len, "VM_GEN_COUNTER"), 1);
		assert_int_equal(count_str(d, len, "ACPI0013"), 1);
		assert_int_equal(count_str(d, len, "_EVT"), 1);
		/* GED interrupt */
		uint8_t irq[9] = { 0x89, 0x06, 0x00, 0x03, 0x01 };
		memcpy(irq + 5, (uint32_t[]){ cfg->ged_gsi }, 4);
		assert_true(count_pattern(d, len, irq, sizeof(irq)) >= 1);
	} else {
		assert_int_equal(count_str(d, len, "ADDR"), 0);
		assert_int_equal(count_str(d, len, "VGEN"), 0);
		assert_int_equal(count_str(d, len, "ACPI0013"), 0);
		assert_int_equal(count_str(d, len, "_EVT"), 0);
	}

	/* COM1: EisaId("PNP0501") and IO(Decode16, 0x3F8, 0x3F8, 0, 8) IRQNoFlags(){4} */
	assert_int_equal(count_pattern(d, len, BYTES("_HID\x0c\x41\xd0\x05\x01")), 1);
	assert_int_equal(count_pattern(d, len,
				       BYTES("\x47\x01\xf8\x03\xf8\x03\x00\x08"
							"\x22\x10\x00\x79")),
			 1);
	/* \_S5 at the root: Package(2){5, Zero} */
	assert_int_equal(count_pattern(d, len,
				       BYTES("\x08\x5c_S5_\x12\x05\x02\x0a\x05\x00")),
			 1);
}

/* ---- a walk over the AML subset acpi.c emits ------------------------------------------- */

struct aml_rd {
	const uint8_t *p;
	size_t pos;
	unsigned int pkglen_forms[5]; /* PkgLength encodings seen, by byte count */
	unsigned int devices, methods, names;
	char last_name[64];
};

static uint8_t rd_u8(struct aml_rd *r, size_t end)
{
	if (r->pos >= end)
		fail_msg("AML object runs past its end at %zu", r->pos);
	return r->p[r->pos++];
}

/* A PkgLength; returns the absolute end of the object. Checks it is the shortest form. */
static size_t rd_pkglen(struct aml_rd *r, size_t end)
{
	static const size_t max_total[] = { 0, 0x3f, 0xfff, 0xfffff, 0xfffffff };
	size_t start = r->pos;
	uint8_t lead = rd_u8(r, end);
	unsigned int n = (lead >> 6) + 1;
	size_t total;
	if (n == 1) {
		total = lead & 0x3f;
	} else {
		assert_int_equal(lead & 0x30, 0);
		total = lead & 0xf;
		for (unsigned int i = 1; i < n; i++)
			total |= (size_t)rd_u8(r, end) << (4 + 8 * (i - 1));
		/* the same body would not have fitted a shorter encoding */
		assert_true(total - n + (n - 1) > max_total[n - 1]);
	}
	r->pkglen_forms[n]++;
	if (total < n || start + total > end)
		fail_msg("PkgLength %zu at %zu overruns its parent (ends at %zu)", total, start, end);
	return start + total;
}

static bool lead_char(uint8_t c)
{
	return (c >= 'A' && c <= 'Z') || c == '_';
}

static void rd_nameseg(struct aml_rd *r, size_t end, char *out)
{
	for (int i = 0; i < 4; i++) {
		uint8_t c = rd_u8(r, end);
		if (!(lead_char(c) || (i > 0 && c >= '0' && c <= '9')))
			fail_msg("bad NameSeg character %#x at %zu", c, r->pos - 1);
		out[i] = (char)c;
	}
	out[4] = 0;
}

static void rd_namestring(struct aml_rd *r, size_t end)
{
	char *o = r->last_name;
	unsigned int nseg = 1;
	if (r->p[r->pos] == '\\') {
		*o++ = '\\';
		r->pos++;
	}
	uint8_t c = r->p[r->pos];
	if (c == 0x2e) {
		nseg = 2;
		r->pos++;
	} else if (c == 0x2f) {
		r->pos++;
		nseg = rd_u8(r, end);
		assert_true(nseg >= 3 && nseg <= 10);
	}
	for (unsigned int i = 0; i < nseg; i++) {
		if (i)
			*o++ = '.';
		rd_nameseg(r, end, o);
		o += 4;
	}
	*o = 0;
}

/* An integer constant (shortest encoding except DWordConst, which acpi.h uses on purpose). */
static bool rd_integer(struct aml_rd *r, size_t end, uint64_t *v)
{
	uint8_t op = r->p[r->pos];
	uint64_t x = 0;
	unsigned int n = 0;
	switch (op) {
	case 0x00:
	case 0x01:
		r->pos++;
		*v = op;
		return true;
	case 0x0a:
		n = 1;
		break;
	case 0x0b:
		n = 2;
		break;
	case 0x0c:
		n = 4;
		break;
	case 0x0e:
		n = 8;
		break;
	default:
		return false;
	}
	r->pos++;
	for (unsigned int i = 0; i < n; i++)
		x |= (uint64_t)rd_u8(r, end) << (8 * i);
	if ((n == 1 && x < 2) || (n == 2 && x <= 0xff) || (n == 8 && x <= 0xffffffffull))
		fail_msg("integer %#llx at %zu is not in its shortest encoding",
			 (unsigned long long)x, r->pos);
	*v = x;
	return true;
}

/* Resource template: descriptors up to the EndTag, which ends the buffer, sum zero. */
static void check_restemplate(const uint8_t *b, size_t len)
{
	size_t off = 0;
	while (off < len) {
		uint8_t tag = b[off];
		if (tag == 0x79) {
			assert_int_equal(off + 2, len);
			assert_int_equal(sum8(b, len), 0);
			return;
		}
		if (tag & 0x80) {
			assert_true(off + 3 <= len);
			off += 3 + get16(b + off + 1);
		} else {
			off += 1 + (tag & 7);
		}
	}
	fail_msg("resource template without an EndTag");
}

static void rd_termlist(struct aml_rd *r, size_t end);

static void rd_term(struct aml_rd *r, size_t end)
{
	uint64_t v;
	if (rd_integer(r, end, &v))
		return;
	size_t at = r->pos;
	uint8_t op = rd_u8(r, end);
	size_t obj_end;
	switch (op) {
	case 0x08: /* Name */
		rd_namestring(r, end);
		r->names++;
		rd_term(r, end);
		return;
	case 0x0d: /* String: printable ASCII, NUL-terminated */
		for (uint8_t c; (c = rd_u8(r, end)) != 0;)
			assert_true(c >= 0x20 && c < 0x7f);
		return;
	case 0x10: /* Scope */
		obj_end = rd_pkglen(r, end);
		rd_namestring(r, obj_end);
		rd_termlist(r, obj_end);
		return;
	case 0x11: /* Buffer */
		obj_end = rd_pkglen(r, end);
		assert_true(rd_integer(r, obj_end, &v));
		assert_int_equal(v, obj_end - r->pos);
		check_restemplate(r->p + r->pos, (size_t)v);
		r->pos = obj_end;
		return;
	case 0x12: { /* Package */
		obj_end = rd_pkglen(r, end);
		unsigned int n = rd_u8(r, obj_end), seen = 0;
		for (; r->pos < obj_end; seen++)
			rd_term(r, obj_end);
		assert_int_equal(seen, n);
		return;
	}
	case 0x14: /* Method */
		obj_end = rd_pkglen(r, end);
		rd_namestring(r, obj_end);
		rd_u8(r, obj_end); /* flags */
		r->methods++;
		rd_termlist(r, obj_end);
		return;
	case 0x5b: /* Device */
		assert_int_equal(rd_u8(r, end), 0x82);
		obj_end = rd_pkglen(r, end);
		rd_namestring(r, obj_end);
		r->devices++;
		rd_termlist(r, obj_end);
		return;
	case 0x68: /* Arg0 */
		return;
	case 0x86: /* Notify(SuperName, value) */
		rd_namestring(r, end);
		assert_string_equal(r->last_name, "\\_SB_.VGEN");
		rd_term(r, end);
		return;
	case 0x93: /* LEqual */
		rd_term(r, end);
		rd_term(r, end);
		return;
	case 0xa0: /* If */
		obj_end = rd_pkglen(r, end);
		rd_term(r, obj_end);
		rd_termlist(r, obj_end);
		return;
	default:
		fail_msg("unexpected AML opcode %#x at %zu", op, at);
	}
}

static void rd_termlist(struct aml_rd *r, size_t end)
{
	while (r->pos < end)
		rd_term(r, end);
	assert_int_equal(r->pos, end);
}

static void walk_dsdt(const uint8_t *d, struct aml_rd *r)
{
	memset(r, 0, sizeof(*r));
	r->p = d;
	r->pos = 36;
	rd_termlist(r, get32(d + 4));
}

/* ---- build and check everything -------------------------------------------------------- */

static void check_tables(const struct gmem *m, uint64_t rsdp_gpa, const struct acpi_config *cfg,
			 struct tables *tb)
{
	check_rsdp(m, rsdp_gpa, tb);

	tb->xsdt = sdt_at(m, tb->xsdt_gpa, "XSDT", 1);
	assert_int_equal(get32(tb->xsdt + 4), 36 + 2 * 8);
	tb->fadt_gpa = get64(tb->xsdt + 36);
	tb->madt_gpa = get64(tb->xsdt + 44);

	tb->fadt = sdt_at(m, tb->fadt_gpa, "FACP", 6);
	check_fadt(tb->fadt, tb);
	tb->madt = sdt_at(m, tb->madt_gpa, "APIC", 5);
	check_madt(tb->madt, cfg->ncpus);
	tb->dsdt = sdt_at(m, tb->dsdt_gpa, "DSDT", 2);
	check_dsdt_patterns(tb->dsdt, cfg);

	struct aml_rd r;
	walk_dsdt(tb->dsdt, &r);
	assert_int_equal(r.devices, 1 + cfg->nvirtio + (cfg->vmgenid_addr ? 2 : 0));
	assert_int_equal(r.methods, cfg->vmgenid_addr ? 1 : 0);

	/* No two tables overlap. */
	uint64_t s[5] = { tb->rsdp_gpa, tb->xsdt_gpa, tb->fadt_gpa, tb->madt_gpa, tb->dsdt_gpa };
	uint64_t e[5] = { tb->rsdp_gpa + 36, tb->xsdt_gpa + get32(tb->xsdt + 4),
			  tb->fadt_gpa + get32(tb->fadt + 4), tb->madt_gpa + get32(tb->madt + 4),
			  tb->dsdt_gpa + get32(tb->dsdt + 4) };
	for (int i = 0; i < 5; i++)
		for (int j = i + 1; j < 5; j++)
			assert_true(e[i] <= s[j] || e[j] <= s[i]);
}

static void build_and_check(unsigned int ncpus, unsigned int nvirtio, uint64_t vmgenid)
{
	struct gmem *m = new_ram(RAM_SIZE);
	struct acpi_virtio_dev *v = virtio_devs(nvirtio);
	struct acpi_config cfg = config(ncpus, nvirtio ? v : NULL, nvirtio, vmgenid);
	struct tables tb;
	uint64_t rsdp = 0;

	assert_int_equal(acpi_build(m, &cfg, &rsdp), 0);
	assert_outside_untouched(m);
	check_tables(m, rsdp, &cfg, &tb);
	free(v);
	free_ram(m);
}

/* ---- tests: layout --------------------------------------------------------------------- */

static void test_matrix(void **state)
{
	static const unsigned int cpus[] = { 1, 4, 64, 254 };
	static const unsigned int nvirtio[] = { 0, 2, 8 };
	static const uint64_t genid[] = { 0, LAYOUT_VMGENID_ADDR, 0x123456789000ull };
	for (size_t c = 0; c < sizeof(cpus) / sizeof(cpus[0]); c++)
		for (size_t n = 0; n < sizeof(nvirtio) / sizeof(nvirtio[0]); n++)
			for (size_t g = 0; g < sizeof(genid) / sizeof(genid[0]); g++)
				build_and_check(cpus[c], nvirtio[n], genid[g]);
}

/* The ADDR package encoding is fixed: DWordConst even for zero, the length byte 0x0c. */
static void test_vmgenid_addr_encoding(void **state)
{
	struct gmem *m = new_ram(RAM_SIZE);
	struct acpi_config cfg = config(2, NULL, 0, 0x0000000100000000ull);
	struct tables tb;
	uint64_t rsdp;

	assert_int_equal(acpi_build(m, &cfg, &rsdp), 0);
	check_tables(m, rsdp, &cfg, &tb);
	static const uint8_t want[] = { 'A', 'D', 'D', 'R', 0x12, 0x0c, 0x02, 0x0c, 0, 0, 0, 0,
					0x0c, 1,   0,	0,   0 };
	assert_int_equal(count_pattern(tb.dsdt, get32(tb.dsdt + 4), want, sizeof(want)), 1);
	free_ram(m);
}

/* Small integers use ZeroOp/OneOp/BytePrefix: _UID of V000, V001, V002. */
static void test_integer_encoding(void **state)
{
	struct gmem *m = new_ram(RAM_SIZE);
	struct acpi_virtio_dev *v = virtio_devs(300);
	struct acpi_config cfg = config(1, v, 300, 0);
	struct tables tb;
	uint64_t rsdp;

	assert_int_equal(acpi_build(m, &cfg, &rsdp), 0);
	check_tables(m, rsdp, &cfg, &tb);
	size_t len = get32(tb.dsdt + 4);
	assert_int_equal(count_pattern(tb.dsdt, len, BYTES("V000\x08_HID")), 1);
	assert_int_equal(count_pattern(tb.dsdt, len,
				       BYTES("\x08_HID\x0dLNRO0005\x00\x08_UID\x00")),
			 1);
	assert_int_equal(count_pattern(tb.dsdt, len,
				       BYTES("\x08_HID\x0dLNRO0005\x00\x08_UID\x01")),
			 1);
	assert_int_equal(count_pattern(tb.dsdt, len,
				       BYTES("\x08_UID\x0a\x02\x08_CCA\x01")),
			 1);
	/* device 0x12b: "V12B", _UID WordConst 0x012b */
	assert_int_equal(count_pattern(tb.dsdt, len,
				       BYTES("V12B\x08_HID\x0dLNRO0005\x00\x08_UID\x0b\x2b\x01")),
			 1);
	free(v);
	free_ram(m);
}

/* PkgLength: 1-, 2- and 3-byte forms all appear once the scope grows past 4 KiB. */
static void test_pkglength_forms(void **state)
{
	struct gmem *m = new_ram(RAM_SIZE);
	struct acpi_virtio_dev *v = virtio_devs(300);
	struct acpi_config cfg = config(4, v, 300, LAYOUT_VMGENID_ADDR);
	struct tables tb;
	struct aml_rd r;
	uint64_t rsdp;

	assert_int_equal(acpi_build(m, &cfg, &rsdp), 0);
	check_tables(m, rsdp, &cfg, &tb);
	walk_dsdt(tb.dsdt, &r);
	assert_true(r.pkglen_forms[1] > 0);
	assert_true(r.pkglen_forms[2] > 0); /* each virtio Device is 64..4095 bytes */
	assert_int_equal(r.pkglen_forms[3], 1); /* Scope(\_SB) */
	/* The scope's PkgLength: lead byte 0x80 | low nibble, then two more bytes. */
	const uint8_t *scope = tb.dsdt + 36;
	assert_int_equal(scope[0], 0x10);
	assert_int_equal(scope[1] & 0xc0, 0x80);
	size_t total = (scope[1] & 0xfu) | (size_t)scope[2] << 4 | (size_t)scope[3] << 12;
	assert_memory_equal(scope + 4, "\\_SB_", 5);
	/* \_S5 follows the scope */
	assert_memory_equal(scope + 1 + total, "\x08\x5c_S5_", 6);
	free(v);
	free_ram(m);
}

/* The optional rsdp pointer, and VMM writes marked in the dirty bitmap. */
static void test_rsdp_optional_and_dirty(void **state)
{
	struct gmem *m = new_ram(RAM_SIZE);
	size_t words = (size_t)(RAM_SIZE / GMEM_PAGE_SIZE + 63) / 64;
	uint64_t *bm = calloc(words, sizeof(*bm));
	struct acpi_config cfg = config(4, NULL, 0, LAYOUT_VMGENID_ADDR);
	struct tables tb;

	assert_non_null(bm);
	m->dirty = bm;
	assert_int_equal(acpi_build(m, &cfg, NULL), 0);
	check_tables(m, LAYOUT_ACPI_START, &cfg, &tb);
	uint64_t end = tb.xsdt_gpa + get32(tb.xsdt + 4); /* the XSDT is written last */
	for (uint64_t pg = 0; pg < RAM_SIZE / GMEM_PAGE_SIZE; pg++) {
		bool dirty = bm[pg / 64] >> (pg % 64) & 1;
		bool want = pg >= LAYOUT_ACPI_START / GMEM_PAGE_SIZE &&
			    pg <= (end - 1) / GMEM_PAGE_SIZE;
		if (dirty != want)
			fail_msg("page %#llx dirty=%d, expected %d", (unsigned long long)pg, dirty,
				 want);
	}
	m->dirty = NULL;
	free(bm);
	free_ram(m);
}

/* ---- tests: errors --------------------------------------------------------------------- */

static void expect_build(const struct acpi_config *cfg, int want)
{
	struct gmem *m = new_ram(RAM_SIZE);
	uint64_t rsdp = 0x1234;
	struct tables tb;
	assert_int_equal(acpi_build(m, cfg, &rsdp), want);
	if (want == 0) {
		assert_outside_untouched(m);
		check_tables(m, rsdp, cfg, &tb);
	} else {
		assert_int_equal(rsdp, 0x1234);
		assert_ram_untouched(m);
	}
	free_ram(m);
}

static void test_einval(void **state)
{
	struct acpi_virtio_dev *v = virtio_devs(8);
	struct acpi_config cfg;

	cfg = config(0, NULL, 0, 0);
	expect_build(&cfg, -EINVAL);
	cfg = config(255, NULL, 0, 0);
	expect_build(&cfg, -EINVAL);
	cfg = config(1, NULL, 2, 0); /* devices but no list */
	expect_build(&cfg, -EINVAL);
	cfg = config(1, v, MAX_VIRTIO + 1, 0); /* no names left (checked before the list) */
	expect_build(&cfg, -EINVAL);

	v[3].size = 0x1000; /* not the virtio window size */
	cfg = config(1, v, 8, 0);
	expect_build(&cfg, -EINVAL);
	v[3].size = LAYOUT_VIRTIO_MMIO_SIZE;
	v[5].base = 0xfffffe00ull + 0x100; /* window crosses 4 GiB */
	expect_build(&cfg, -EINVAL);
	v[5].base = 0x100000000ull;
	expect_build(&cfg, -EINVAL);
	v[5].base = 0xfffffe00ull; /* ends exactly at 4 GiB: fine */
	expect_build(&cfg, 0);
	v[5].base = LAYOUT_VIRTIO_MMIO_BASE + 5 * LAYOUT_VIRTIO_MMIO_STRIDE;

	v[6].gsi = v[2].gsi; /* two devices on one exclusive interrupt */
	expect_build(&cfg, -EINVAL);
	v[6].gsi = 4; /* COM1's */
	expect_build(&cfg, -EINVAL);
	v[6].gsi = LAYOUT_GED_GSI; /* the GED's, only when there is a GED */
	expect_build(&cfg, 0);
	cfg.vmgenid_addr = LAYOUT_VMGENID_ADDR;
	expect_build(&cfg, -EINVAL);
	v[6].gsi = LAYOUT_VIRTIO_GSI_BASE + 6;
	expect_build(&cfg, 0);
	cfg.ged_gsi = 4;
	expect_build(&cfg, -EINVAL);
	free(v);
}

static void test_efault(void **state)
{
	struct acpi_config cfg = config(1, NULL, 0, 0);
	/* RAM ending inside the ACPI area, and RAM ending before it */
	static const uint64_t sizes[] = { 0xe8000, 0x80000 };
	for (size_t i = 0; i < 2; i++) {
		struct gmem *m = new_ram(sizes[i]);
		assert_int_equal(acpi_build(m, &cfg, NULL), -EFAULT);
		assert_ram_untouched(m);
		free_ram(m);
	}
}

/* The most virtio devices that fit: one more gives -E2BIG and leaves RAM alone. */
static void test_e2big(void **state)
{
	struct acpi_virtio_dev *v = virtio_devs(MAX_VIRTIO);
	struct gmem *m = new_ram(RAM_SIZE);
	struct acpi_config cfg = config(254, v, MAX_VIRTIO, LAYOUT_VMGENID_ADDR);
	struct tables tb;
	unsigned int lo = 8, hi = MAX_VIRTIO; /* lo fits, hi does not */
	uint64_t rsdp;

	expect_build(&cfg, -E2BIG);
	while (hi - lo > 1) {
		cfg.nvirtio = (lo + hi) / 2;
		memset(m->host, FILL, m->size);
		int r = acpi_build(m, &cfg, &rsdp);
		assert_true(r == 0 || r == -E2BIG);
		if (r == 0)
			lo = cfg.nvirtio;
		else
			hi = cfg.nvirtio;
	}
	cfg.nvirtio = lo;
	memset(m->host, FILL, m->size);
	assert_int_equal(acpi_build(m, &cfg, &rsdp), 0);
	assert_outside_untouched(m);
	check_tables(m, rsdp, &cfg, &tb);
	/* a full area: the last table ends within one virtio device's size of the end */
	uint64_t end = tb.xsdt_gpa + get32(tb.xsdt + 4);
	assert_true(end <= LAYOUT_ACPI_END && LAYOUT_ACPI_END - end < 200);
	cfg.nvirtio = lo + 1;
	expect_build(&cfg, -E2BIG);
	free_ram(m);
	free(v);
}

/* ---- tests: the PM register ------------------------------------------------------------ */

struct pm_calls {
	int poweroff, reset;
};

static void on_poweroff(void *opaque)
{
	((struct pm_calls *)opaque)->poweroff++;
}

static void on_reset(void *opaque)
{
	((struct pm_calls *)opaque)->reset++;
}

static void pm_write(struct acpi_pm *pm, uint64_t offset, uint32_t value, unsigned int len)
{
	uint8_t d[4];
	memcpy(d, &value, sizeof(d));
	acpi_pm_io(pm, offset, d, len, true);
}

static void test_pm_io(void **state)
{
	struct pm_calls c = { 0, 0 };
	struct acpi_pm pm = { .poweroff = on_poweroff, .reset = on_reset, .opaque = &c };
	const uint8_t s5 = (uint8_t)(0x20 | LAYOUT_ACPI_S5_TYPE << 2);

	pm_write(&pm, 0, s5, 1); /* what Linux writes for S5 */
	assert_int_equal(c.poweroff, 1);
	assert_int_equal(c.reset, 0);
	pm_write(&pm, 0, s5 | 0x80, 1); /* with WAK_STS: still SLP_EN + S5 */
	assert_int_equal(c.poweroff, 2);
	pm_write(&pm, 0, s5, 2); /* a wider write: the register's byte counts */
	assert_int_equal(c.poweroff, 3);

	pm_write(&pm, 0, LAYOUT_ACPI_RESET_VALUE, 1);
	assert_int_equal(c.reset, 1);
	assert_int_equal(c.poweroff, 3);

	/* ignored: WAK_STS clear, SLP_TYP 5 without SLP_EN, SLP_EN with S3, zero, other bytes,
	 * and anything at another offset */
	pm_write(&pm, 0, 0x80, 1);
	pm_write(&pm, 0, LAYOUT_ACPI_S5_TYPE << 2, 1);
	pm_write(&pm, 0, 0x20 | 3 << 2, 1);
	pm_write(&pm, 0, 0x20, 1);
	pm_write(&pm, 0, 0x00, 1);
	pm_write(&pm, 0, 0x02, 1);
	pm_write(&pm, 0, 0x03, 1);
	pm_write(&pm, 1, s5, 1);
	pm_write(&pm, 1, LAYOUT_ACPI_RESET_VALUE, 1);
	acpi_pm_io(&pm, 0, (uint8_t[1]){ s5 }, 0, true);
	assert_int_equal(c.poweroff, 3);
	assert_int_equal(c.reset, 1);

	/* reads return 0 and do nothing */
	for (unsigned int len = 1; len <= 4; len *= 2) {
		uint8_t d[4] = { 0xff, 0xff, 0xff, 0xff };
		acpi_pm_io(&pm, 0, d, len, false);
		for (unsigned int i = 0; i < len; i++)
			assert_int_equal(d[i], 0);
		for (unsigned int i = len; i < 4; i++)
			assert_int_equal(d[i], 0xff);
	}
	assert_int_equal(c.poweroff, 3);
	assert_int_equal(c.reset, 1);

	/* no callbacks: nothing happens, nothing crashes */
	struct acpi_pm none = { 0 };
	pm_write(&none, 0, s5, 1);
	pm_write(&none, 0, LAYOUT_ACPI_RESET_VALUE, 1);
}

/* ---- tests: ACPICA's disassembler and compiler ----------------------------------------- */

/* Run @cmd through the shell, output (stdout and stderr) into a malloc'd string. */
static int run(const char *cmd, char **out)
{
	char *full;
	assert_true(asprintf(&full, "%s 2>&1", cmd) > 0);
	FILE *p = popen(full, "r");
	assert_non_null(p);
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	assert_non_null(buf);
	for (size_t n; (n = fread(buf + len, 1, cap - len - 1, p)) > 0;) {
		len += n;
		if (cap - len < 1024) {
			cap *= 2;
			buf = realloc(buf, cap);
			assert_non_null(buf);
		}
	}
	buf[len] = 0;
	int st = pclose(p);
	free(full);
	*out = buf;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *read_text(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		fail_msg("cannot open %s", path);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	long len = ftell(f);
	assert_true(len >= 0);
	rewind(f);
	char *s = malloc((size_t)len + 1);
	assert_non_null(s);
	assert_int_equal(fread(s, 1, (size_t)len, f), (size_t)len);
	s[len] = 0;
	fclose(f);
	return s;
}

static unsigned int count_text(const char *hay, const char *needle)
{
	unsigned int n = 0;
	for (const char *p = hay; (p = strstr(p, needle)); p++)
		n++;
	return n;
}

/* Lines in which iasl complains: its messages and its annotations in the .dsl. */
static void assert_no_complaints(const char *what, const char *text)
{
	static const char *words[] = { "error", "warning", "exception", "invalid", "incorrect",
				       "****", "unknown", "terminates" };
	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
		const char *hit = strcasestr(text, words[i]);
		if (hit) {
			const char *ls = hit, *le = strchr(hit, '\n');
			while (ls > text && ls[-1] != '\n')
				ls--;
			fail_msg("iasl complains about %s: %.*s", what,
				 (int)(le ? le - ls : (long)strlen(ls)), ls);
		}
	}
}

static void require_iasl(void)
{
	char *out;
	if (run("command -v iasl", &out) != 0)
		fail_msg("iasl not found: install acpica-tools (scripts/deps.sh); the ACPI tables "
			 "cannot be checked without ACPICA's disassembler");
	free(out);
}

struct iasl_dir {
	char path[64];
};

static void dump_table(const struct iasl_dir *dir, const char *name, const uint8_t *t)
{
	char file[128];
	snprintf(file, sizeof(file), "%s/%s.dat", dir->path, name);
	FILE *f = fopen(file, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(t, 1, get32(t + 4), f), get32(t + 4));
	assert_int_equal(fclose(f), 0);
}

/* iasl -d on one table: silent apart from its banner, and the .dsl free of annotations. */
static char *disassemble(const struct iasl_dir *dir, const char *name)
{
	char cmd[256], dsl[128], *out;
	snprintf(cmd, sizeof(cmd), "cd %s && iasl -d %s.dat", dir->path, name);
	int rc = run(cmd, &out);
	if (rc != 0)
		fail_msg("iasl -d %s.dat exited with %d:\n%s", name, rc, out);
	assert_no_complaints(name, out);
	if (!strstr(out, "decoded") && !strstr(out, "Disassembly completed"))
		fail_msg("iasl -d %s.dat did not finish:\n%s", name, out);
	free(out);
	snprintf(dsl, sizeof(dsl), "%s/%s.dsl", dir->path, name);
	char *text = read_text(dsl);
	assert_no_complaints(name, text);
	return text;
}

static void assert_has(const char *what, const char *text, const char *needle)
{
	if (!strstr(text, needle))
		fail_msg("%s: disassembly lacks \"%s\"", what, needle);
}

static void iasl_check(const struct iasl_dir *dir, unsigned int ncpus, unsigned int nvirtio,
		       uint64_t vmgenid)
{
	struct gmem *m = new_ram(RAM_SIZE);
	struct acpi_virtio_dev *v = virtio_devs(nvirtio);
	struct acpi_config cfg = config(ncpus, nvirtio ? v : NULL, nvirtio, vmgenid);
	struct tables tb;
	uint64_t rsdp;
	char buf[128], *text, *out;

	assert_int_equal(acpi_build(m, &cfg, &rsdp), 0);
	check_tables(m, rsdp, &cfg, &tb);
	dump_table(dir, "xsdt", tb.xsdt);
	dump_table(dir, "facp", tb.fadt);
	dump_table(dir, "apic", tb.madt);
	dump_table(dir, "dsdt", tb.dsdt);

	text = disassemble(dir, "xsdt");
	snprintf(buf, sizeof(buf), "ACPI Table Address   0 : %016llX",
		 (unsigned long long)tb.fadt_gpa);
	assert_has("XSDT", text, buf);
	snprintf(buf, sizeof(buf), "ACPI Table Address   1 : %016llX",
		 (unsigned long long)tb.madt_gpa);
	assert_has("XSDT", text, buf);
	free(text);

	text = disassemble(dir, "facp");
	assert_has("FADT", text, "Hardware Reduced (V5) : 1");
	assert_has("FADT", text, "Reset Register Supported (V2) : 1");
	assert_has("FADT", text, "VGA Not Present (V4) : 1");
	assert_has("FADT", text, "Value to cause reset : 01");
	assert_has("FADT", text, "Hypervisor ID : ");
	assert_int_equal(count_text(text, "Address : 00000000000003C0"), 3);
	assert_int_equal(count_text(text, "[SystemIO]"), 3);
	snprintf(buf, sizeof(buf), "DSDT Address : %016llX", (unsigned long long)tb.dsdt_gpa);
	assert_has("FADT", text, buf);
	free(text);

	text = disassemble(dir, "apic");
	assert_int_equal(count_text(text, "[Processor Local APIC]"), ncpus);
	assert_int_equal(count_text(text, "Processor Enabled : 1"), ncpus);
	assert_int_equal(count_text(text, "[I/O APIC]"), 1);
	snprintf(buf, sizeof(buf), "I/O Apic ID : %02X", ncpus);
	assert_has("MADT", text, buf);
	assert_has("MADT", text, "Address : FEC00000");
	assert_has("MADT", text, "Local Apic Address : FEE00000");
	assert_has("MADT", text, "[Interrupt Source Override]");
	assert_has("MADT", text, "Interrupt : 00000002");
	assert_has("MADT", text, "[Local APIC NMI]");
	free(text);

	text = disassemble(dir, "dsdt");
	assert_has("DSDT", text, "Device (COM1)");
	assert_has("DSDT", text, "EisaId (\"PNP0501\")");
	assert_has("DSDT", text, "IRQNoFlags ()");
	assert_has("DSDT", text, "Name (\\_S5, Package (0x02)");
	assert_int_equal(count_text(text, "\"LNRO0005\""), nvirtio);
	assert_int_equal(count_text(text, "Memory32Fixed (ReadWrite,"), nvirtio);
	assert_int_equal(count_text(text, "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive"),
			 nvirtio + (vmgenid ? 1 : 0));
	for (unsigned int i = 0; i < nvirtio; i++) {
		snprintf(buf, sizeof(buf), "0x%08llX,         // Address Base",
			 (unsigned long long)v[i].base);
		assert_has("DSDT", text, buf);
	}
	if (vmgenid) {
		assert_has("DSDT", text, "\"VMGENCTR\"");
		assert_has("DSDT", text, "\"VM_GEN_COUNTER\"");
		assert_has("DSDT", text, "\"ACPI0013\"");
		assert_has("DSDT", text, "Method (_EVT, 1, Serialized)");
		assert_has("DSDT", text, "Notify (\\_SB.VGEN, 0x80)");
		snprintf(buf, sizeof(buf), "If ((Arg0 == 0x%02X))", LAYOUT_GED_GSI);
		assert_has("DSDT", text, buf);
		snprintf(buf, sizeof(buf), "0x%08X, \n                0x%08X",
			 (uint32_t)vmgenid, (uint32_t)(vmgenid >> 32));
		assert_has("DSDT", text, buf);
	} else {
		assert_true(strstr(text, "VGEN") == NULL);
		assert_true(strstr(text, "_EVT") == NULL);
	}
	free(text);

	/*
	 * Compile the disassembly back. The one complaint allowed is the one acpi.h asks for:
	 * _HID "VMGENCTR" (what Linux's vmgenid driver matches) is not a well-formed ACPI ID,
	 * error 6035 "_HID suffix must be all hex digits"; -vx makes it required, not ignored.
	 */
	snprintf(buf, sizeof(buf), "cd %s && iasl %s dsdt.dsl", dir->path,
		 vmgenid ? "-vx 6035" : "");
	int rc = run(buf, &out);
	if (rc != 0 || !strstr(out, "Compilation successful. 0 Errors, 0 Warnings, 0 Remarks"))
		fail_msg("iasl could not compile the disassembled DSDT back (exit %d):\n%s", rc,
			 out);
	free(out);

	free(v);
	free_ram(m);
}

static int setup_iasl(void **state)
{
	struct iasl_dir *d = calloc(1, sizeof(*d));
	const char *tmp = getenv("TMPDIR");
	if (!d)
		return -1;
	snprintf(d->path, sizeof(d->path), "%s/test_acpi.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (strlen(d->path) >= sizeof(d->path) - 1 || !mkdtemp(d->path)) {
		free(d);
		return -1;
	}
	*state = d;
	return 0;
}

static int teardown_iasl(void **state)
{
	struct iasl_dir *d = *state;
	static const char *names[] = { "xsdt", "facp", "apic", "dsdt" };
	static const char *exts[] = { "dat", "dsl", "aml" };
	char file[128];
	for (size_t i = 0; i < 4; i++)
		for (size_t k = 0; k < 3; k++) {
			snprintf(file, sizeof(file), "%s/%s.%s", d->path, names[i], exts[k]);
			unlink(file);
		}
	rmdir(d->path);
	free(d);
	return 0;
}

static void test_iasl(void **state)
{
	const struct iasl_dir *dir = *state;
	require_iasl();
	iasl_check(dir, 1, 0, 0);
	iasl_check(dir, 4, 2, LAYOUT_VMGENID_ADDR);
	iasl_check(dir, 64, 8, LAYOUT_VMGENID_ADDR);
	iasl_check(dir, 254, 8, 0x123456789000ull);
	iasl_check(dir, 8, 300, LAYOUT_VMGENID_ADDR); /* 3-byte PkgLength for the scope */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_matrix),
		cmocka_unit_test(test_vmgenid_addr_encoding),
		cmocka_unit_test(test_integer_encoding),
		cmocka_unit_test(test_pkglength_forms),
		cmocka_unit_test(test_rsdp_optional_and_dirty),
		cmocka_unit_test(test_einval),
		cmocka_unit_test(test_efault),
		cmocka_unit_test(test_e2big),
		cmocka_unit_test(test_pm_io),
		cmocka_unit_test_setup_teardown(test_iasl, setup_iasl, teardown_iasl),
	};
	if (!getenv("VMSNAP_TEST_VERBOSE"))
		log_set_level((enum log_level)-1); /* the errors are expected */
	return cmocka_run_group_tests(tests, NULL, NULL);
}
