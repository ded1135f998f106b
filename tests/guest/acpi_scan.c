/* ACPI discovery for the test guest (see acpi_scan.h). Freestanding; also built on the host. */
#include "acpi_scan.h"

#define ACPI_MAX_TABLE (1u << 20)	/* no table of ours or QEMU's comes near this */

#ifdef ACPI_SCAN_HOST
#define map acpi_scan_host_map
#else
/* The guest identity-maps the first 4 GiB: tables must lie there. */
static const uint8_t *map(uint64_t pa, uint64_t len)
{
	if (!pa || pa >= 0x100000000ULL || len > 0x100000000ULL - pa)
		return NULL;
	return (const uint8_t *)(uintptr_t)pa;
}
#endif

static inline uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t le64(const uint8_t *p)
{
	return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static int sig_is(const uint8_t *p, const char *sig, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (p[i] != (uint8_t)sig[i])
			return 0;
	return 1;
}

static void warn_once(struct acpi_found *f, const char *w)
{
	if (!f->warn)
		f->warn = w;
}

uint8_t acpi_sum(const uint8_t *p, size_t n)
{
	uint8_t s = 0;
	for (size_t i = 0; i < n; i++)
		s = (uint8_t)(s + p[i]);
	return s;
}

int acpi_rsdp_valid(const uint8_t *p, size_t avail)
{
	if (avail < 20 || !sig_is(p, "RSD PTR ", 8) || acpi_sum(p, 20))
		return 0;
	if (p[15] >= 2) {
		uint32_t len = avail >= 36 ? le32(p + 20) : 0;
		if (len < 36 || len > avail || acpi_sum(p, len))
			return 0;
	}
	return 1;
}

uint64_t acpi_find_rsdp(uint64_t hint, uint64_t area_pa, size_t area_len, int *from_hint,
			const char **warn)
{
	*from_hint = 0;
	if (hint) {
		const uint8_t *r = map(hint, 36);
		uint32_t len = r && r[15] >= 2 ? le32(r + 20) : 36;
		if (len > 36 && len <= 4096 && !map(hint, len))
			r = NULL;
		if (r && acpi_rsdp_valid(r, len > 36 && len <= 4096 ? len : 36)) {
			*from_hint = 1;
			return hint;
		}
		if (warn && !*warn)
			*warn = "start_info rsdp_paddr invalid";
	}
	const uint8_t *area = area_len ? map(area_pa, area_len) : NULL;
	if (!area)
		return 0;
	for (size_t off = 0; off + 36 <= area_len; off += 16)
		if (area[off] == 'R' && acpi_rsdp_valid(area + off, area_len - off))
			return area_pa + off;
	return 0;
}

/* A table header at @pa with signature @sig (NULL: any) and a valid checksum: its length. */
static uint32_t table_ok(uint64_t pa, const char *sig, struct acpi_found *f, const char *what)
{
	const uint8_t *t = map(pa, 36);
	if (!t) {
		warn_once(f, what);
		return 0;
	}
	uint32_t len = le32(t + 4);
	if ((sig && !sig_is(t, sig, 4)) || len < 36 || len > ACPI_MAX_TABLE || !map(pa, len) ||
	    acpi_sum(t, len)) {
		warn_once(f, what);
		return 0;
	}
	return len;
}

/* An AML integer (ZeroOp, OneOp, OnesOp, Byte/Word/DWord/QWord prefix): bytes used, 0 if not. */
static size_t aml_int(const uint8_t *p, size_t avail, uint64_t *v)
{
	if (!avail)
		return 0;
	switch (p[0]) {
	case 0x00:
		*v = 0;
		return 1;
	case 0x01:
		*v = 1;
		return 1;
	case 0xff:
		*v = ~0ULL;
		return 1;
	case 0x0a:
		if (avail < 2)
			return 0;
		*v = p[1];
		return 2;
	case 0x0b:
		if (avail < 3)
			return 0;
		*v = (uint64_t)p[1] | (uint64_t)p[2] << 8;
		return 3;
	case 0x0c:
		if (avail < 5)
			return 0;
		*v = le32(p + 1);
		return 5;
	case 0x0e:
		if (avail < 9)
			return 0;
		*v = le64(p + 1);
		return 9;
	}
	return 0;
}

static void add_virtio(struct acpi_found *f, uint64_t base)
{
	for (uint32_t i = 0; i < f->nvirtio; i++)
		if (f->virtio[i] == base)
			return;
	if (f->nvirtio < ACPI_MAX_VIRTIO)
		f->virtio[f->nvirtio++] = base;
	else
		warn_once(f, "more virtio-mmio devices than the guest keeps");
}

void acpi_scan_aml(const uint8_t *aml, size_t len, struct acpi_found *f)
{
	for (size_t i = 0; i < len; i++) {
		const uint8_t *p = aml + i;
		size_t left = len - i;
		/* Memory32Fixed: 86 09 00 <rw> <base:le32> <len:le32> */
		if (p[0] == 0x86 && left >= 12 && p[1] == 0x09 && p[2] == 0x00 && p[3] <= 1 &&
		    le32(p + 8) == ACPI_VIRTIO_MMIO_LEN) {
			add_virtio(f, le32(p + 4));
			continue;
		}
		/* Name(ADDR, Package(2){lo, hi}): 'ADDR' 12 <pkglen> 02 <int> <int> */
		if (p[0] == 'A' && left >= 8 && sig_is(p, "ADDR", 4) && p[4] == 0x12) {
			size_t pl = 1 + (p[5] >> 6);	/* PkgLength: lead byte + 0..3 more */
			size_t k = 5 + pl;
			if (k >= left || p[k] != 2)
				continue;
			k++;
			uint64_t lo, hi;
			size_t n1 = aml_int(p + k, left - k, &lo);
			if (!n1)
				continue;
			size_t n2 = aml_int(p + k + n1, left - k - n1, &hi);
			if (!n2)
				continue;
			uint64_t a = (lo & 0xffffffffULL) | hi << 32;
			if (a && !f->genid_addr)
				f->genid_addr = a;
		}
	}
}

void acpi_discover(uint64_t hint, uint64_t area_pa, size_t area_len, struct acpi_found *f)
{
	*f = (struct acpi_found){ 0 };
	int from_hint;
	f->rsdp = acpi_find_rsdp(hint, area_pa, area_len, &from_hint, &f->warn);
	f->rsdp_from_hint = (uint32_t)from_hint;
	if (!f->rsdp)
		return;
	const uint8_t *r = map(f->rsdp, 1);
	uint64_t xsdt = r[15] >= 2 ? le64(r + 24) : 0, rsdt = le32(r + 16);
	uint32_t rlen = 0, esize = 8;
	if (xsdt) {
		rlen = table_ok(xsdt, "XSDT", f, "bad XSDT");
		if (rlen)
			f->root = xsdt;
	}
	if (!f->root && rsdt) {
		rlen = table_ok(rsdt, "RSDT", f, "bad RSDT");
		if (rlen) {
			f->root = rsdt;
			esize = 4;
		}
	}
	if (!f->root) {
		warn_once(f, "no XSDT or RSDT");
		return;
	}
	const uint8_t *root = map(f->root, 1);
	uint32_t n = (rlen - 36) / esize;
	/* the FADT (-> DSDT) first, then the SSDTs: devices keep the DSDT's order */
	for (int ssdts = 0; ssdts < 2; ssdts++) {
		for (uint32_t i = 0; i < n; i++) {
			const uint8_t *e = root + 36 + i * esize;
			uint64_t pa = esize == 8 ? le64(e) : le32(e);
			uint32_t len = table_ok(pa, NULL, f, "bad table checksum");
			if (!len)
				continue;
			const uint8_t *t = map(pa, 1);
			if (!ssdts && sig_is(t, "FACP", 4) && !f->fadt) {
				f->fadt = pa;
			} else if (ssdts && sig_is(t, "SSDT", 4)) {
				f->nssdt++;
				acpi_scan_aml(t + 36, len - 36, f);
			}
		}
		if (ssdts)
			break;
		if (!f->fadt) {
			warn_once(f, "no FADT");
			continue;
		}
		const uint8_t *fadt = map(f->fadt, 1);
		uint32_t flen = le32(fadt + 4);
		uint64_t dsdt = flen >= 148 ? le64(fadt + 140) : 0;
		if (!dsdt && flen >= 44)
			dsdt = le32(fadt + 40);
		uint32_t dlen = table_ok(dsdt, "DSDT", f, "bad DSDT");
		if (dlen) {
			f->dsdt = dsdt;
			acpi_scan_aml(map(dsdt, 1) + 36, dlen - 36, f);
		}
	}
}
