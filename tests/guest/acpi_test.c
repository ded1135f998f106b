/*
 * Host unit test of the test guest's ACPI scanner (acpi_scan.c, the same source the guest
 * runs, built with ACPI_SCAN_HOST): the tables vmsnap's acpi_build() writes into guest RAM,
 * hand-made tables (the RSDT path, SSDTs, start_info hints, bad checksums), QEMU microvm's
 * DSDT as QEMU 7.2 builds it, and the AML integer encodings of the generation ID address.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <cmocka.h>

#include "acpi_scan.h"
#include "vmm/acpi.h"
#include "vmm/gmem.h"
#include "vmm/layout.h"

/* Physical memory the scanner may read: one window at a time. */
static uint64_t win_pa, win_len;
static const uint8_t *win_host;

const uint8_t *acpi_scan_host_map(uint64_t pa, uint64_t len)
{
	if (pa < win_pa || pa - win_pa > win_len || len > win_len - (pa - win_pa))
		return NULL;
	return win_host + (pa - win_pa);
}

static void window(uint64_t pa, const void *host, uint64_t len)
{
	win_pa = pa;
	win_host = host;
	win_len = len;
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

static void header(uint8_t *t, const char *sig, uint32_t len, uint8_t rev)
{
	memcpy(t, sig, 4);
	put32(t + 4, len);
	t[8] = rev;
	t[9] = 0;
	memcpy(t + 10, "VMSNAP", 6);
	memcpy(t + 16, "VMSNAPTB", 8);
	t[9] = (uint8_t)(0x100 - acpi_sum(t, len));
}

/* The RSDP at @p: revision 2 with @xsdt (and @rsdt), or revision 0 with @rsdt only. */
static void rsdp(uint8_t *p, uint8_t rev, uint32_t rsdt, uint64_t xsdt)
{
	memset(p, 0, 36);
	memcpy(p, "RSD PTR ", 8);
	memcpy(p + 9, "VMSNAP", 6);
	p[15] = rev;
	put32(p + 16, rsdt);
	p[8] = (uint8_t)(0x100 - acpi_sum(p, 20));
	if (rev >= 2) {
		put32(p + 20, 36);
		put64(p + 24, xsdt);
		p[32] = (uint8_t)(0x100 - acpi_sum(p, 36));
	}
}

/* AML of one virtio-mmio device as vmm/acpi.h promises: Memory32Fixed + Extended Interrupt. */
static size_t aml_virtio(uint8_t *p, uint32_t base, uint32_t gsi)
{
	static const uint8_t pre[] = { 0x5b, 0x82, 0x30, 'V', 'R', '0', '0', 0x08, '_', 'C', 'R',
				       'S', 0x11, 0x1a, 0x0a, 0x17 };
	size_t n = 0;
	memcpy(p, pre, sizeof(pre));
	n += sizeof(pre);
	p[n++] = 0x86;
	p[n++] = 0x09;
	p[n++] = 0x00;
	p[n++] = 0x01;
	put32(p + n, base);
	n += 4;
	put32(p + n, ACPI_VIRTIO_MMIO_LEN);
	n += 4;
	static const uint8_t irq[] = { 0x89, 0x06, 0x00, 0x09, 0x01 };
	memcpy(p + n, irq, sizeof(irq));
	n += sizeof(irq);
	put32(p + n, gsi);
	n += 4;
	p[n++] = 0x79;
	p[n++] = 0x00;
	return n;
}

/* Name(ADDR, Package(2){lo, hi}) with DWordConst for both. */
static size_t aml_genid(uint8_t *p, uint64_t addr)
{
	size_t n = 0;
	p[n++] = 0x08;
	memcpy(p + n, "ADDR", 4);
	n += 4;
	p[n++] = 0x12;
	p[n++] = 0x0c;
	p[n++] = 0x02;
	p[n++] = 0x0c;
	put32(p + n, (uint32_t)addr);
	n += 4;
	p[n++] = 0x0c;
	put32(p + n, (uint32_t)(addr >> 32));
	n += 4;
	return n;
}

/* A machine: BIOS area with the RSDP, XSDT/RSDT, FADT, DSDT, optional SSDT, in @mem. */
struct machine {
	uint8_t *mem;		/* 64 KiB */
	uint8_t *area;		/* "BIOS area" to scan, 8 KiB at mem */
	size_t area_len;
	uint8_t *rsdp, *xsdt, *rsdt, *fadt, *dsdt, *ssdt;
};

static uint64_t pa(const void *p)
{
	return (uint64_t)(uintptr_t)p;
}

static uint8_t *addr32(uint8_t *p)
{
	assert_true((uintptr_t)p < 0x100000000ULL);
	return p;
}

static void build(struct machine *m, uint8_t *mem, int rev, int with_ssdt, int genid)
{
	memset(mem, 0, 65536);
	m->mem = mem;
	m->area = mem;
	m->area_len = 8192;
	memcpy(mem + 0x100, "RSD PTR ", 8);	/* a string that is not an RSDP (bad checksum) */
	memcpy(mem + 0x207, "RSD PTR ", 8);	/* not on a 16-byte boundary */
	m->rsdp = mem + 0x1230;
	m->xsdt = mem + 0x3000;
	m->rsdt = mem + 0x3100;
	m->fadt = mem + 0x3200;
	m->dsdt = mem + 0x4000;
	m->ssdt = mem + 0x6000;

	uint8_t *d = m->dsdt + 36;
	size_t n = 0;
	/* a Memory32Fixed of another length (not virtio), then two devices, then the genid */
	static const uint8_t other[] = { 0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0xc0, 0xfe,
					 0x00, 0x10, 0x00, 0x00 };
	memcpy(d, other, sizeof(other));
	n += sizeof(other);
	n += aml_virtio(d + n, 0xd0000000, 16);
	n += aml_virtio(d + n, 0xd0001000, 17);
	if (genid)
		n += aml_genid(d + n, 0xef000);
	header(m->dsdt, "DSDT", (uint32_t)(36 + n), 2);

	uint32_t flen = rev >= 2 ? 276 : 116;
	memset(m->fadt, 0, flen);
	if (rev >= 2)
		put64(m->fadt + 140, (uint64_t)(uintptr_t)m->dsdt);
	else
		put32(m->fadt + 40, (uint32_t)(uintptr_t)addr32(m->dsdt));
	header(m->fadt, "FACP", flen, rev >= 2 ? 6 : 1);

	if (with_ssdt) {
		size_t k = aml_virtio(m->ssdt + 36, 0xd0001000, 17);	/* a duplicate */
		k += aml_virtio(m->ssdt + 36 + k, 0xd0005000, 21);
		header(m->ssdt, "SSDT", (uint32_t)(36 + k), 2);
	}
	uint32_t nent = with_ssdt ? 2 : 1;
	if (rev >= 2) {
		put64(m->xsdt + 36, (uint64_t)(uintptr_t)m->fadt);
		if (with_ssdt)
			put64(m->xsdt + 44, (uint64_t)(uintptr_t)m->ssdt);
		header(m->xsdt, "XSDT", 36 + 8 * nent, 1);
		rsdp(m->rsdp, 2, 0, (uint64_t)(uintptr_t)m->xsdt);
	} else {
		put32(m->rsdt + 36, (uint32_t)(uintptr_t)addr32(m->fadt));
		if (with_ssdt)
			put32(m->rsdt + 40, (uint32_t)(uintptr_t)addr32(m->ssdt));
		header(m->rsdt, "RSDT", 36 + 4 * nent, 1);
		rsdp(m->rsdp, 0, (uint32_t)(uintptr_t)addr32(m->rsdt), 0);
	}
}


/* 64 KiB below 4 GiB (RSDT entries are 32-bit); "physical" addresses are its host addresses. */
static uint8_t *mem32(void)
{
	void *p = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT,
		       -1, 0);
	assert_true(p != MAP_FAILED);
	window(pa(p), p, 65536);
	return p;
}

static void test_vmsnap_layout_scan(void **state)
{
	(void)state;
	uint8_t *mem = mem32();
	struct machine m;
	struct acpi_found f;
	build(&m, mem, 2, 0, 1);
	acpi_discover(0, pa(m.area), m.area_len, &f);
	assert_int_equal(f.rsdp, pa(m.rsdp));
	assert_int_equal(f.rsdp_from_hint, 0);
	assert_int_equal(f.root, pa(m.xsdt));
	assert_int_equal(f.fadt, pa(m.fadt));
	assert_int_equal(f.dsdt, pa(m.dsdt));
	assert_int_equal(f.nvirtio, 2);
	assert_int_equal(f.virtio[0], 0xd0000000);
	assert_int_equal(f.virtio[1], 0xd0001000);
	assert_int_equal(f.genid_addr, 0xef000);
	assert_null(f.warn);
	munmap(mem, 65536);
}

static void test_hint(void **state)
{
	(void)state;
	uint8_t *mem = mem32();
	struct machine m;
	struct acpi_found f;
	build(&m, mem, 2, 0, 1);
	/* valid hint: used, no scan needed (no area) */
	acpi_discover(pa(m.rsdp), 0, 0, &f);
	assert_int_equal(f.rsdp, pa(m.rsdp));
	assert_int_equal(f.rsdp_from_hint, 1);
	assert_int_equal(f.nvirtio, 2);
	/* a hint at something else: warned, then found by the scan */
	acpi_discover(pa(m.mem + 0x100), pa(m.area), m.area_len, &f);
	assert_int_equal(f.rsdp, pa(m.rsdp));
	assert_int_equal(f.rsdp_from_hint, 0);
	assert_non_null(f.warn);
	assert_int_equal(f.nvirtio, 2);
	munmap(mem, 65536);
}

static void test_rsdt_and_ssdt(void **state)
{
	(void)state;
	uint8_t *mem = mem32();
	struct machine m;
	struct acpi_found f;
	build(&m, mem, 0, 1, 0);
	acpi_discover(0, pa(m.area), m.area_len, &f);
	assert_int_equal(f.rsdp, pa(m.rsdp));
	assert_int_equal(f.root, pa(m.rsdt));
	assert_int_equal(f.dsdt, pa(m.dsdt));
	assert_int_equal(f.nssdt, 1);
	/* DSDT order first, the SSDT's duplicate dropped, its new device last */
	assert_int_equal(f.nvirtio, 3);
	assert_int_equal(f.virtio[0], 0xd0000000);
	assert_int_equal(f.virtio[1], 0xd0001000);
	assert_int_equal(f.virtio[2], 0xd0005000);
	assert_int_equal(f.genid_addr, 0);
	assert_null(f.warn);
	munmap(mem, 65536);
}

static void test_bad_checksums(void **state)
{
	(void)state;
	uint8_t *mem = mem32();
	struct machine m;
	struct acpi_found f;

	build(&m, mem, 2, 0, 1);
	m.dsdt[50] ^= 0x55;	/* DSDT checksum broken: no devices from it */
	acpi_discover(0, pa(m.area), m.area_len, &f);
	assert_int_equal(f.rsdp, pa(m.rsdp));
	assert_int_equal(f.dsdt, 0);
	assert_int_equal(f.nvirtio, 0);
	assert_int_equal(f.genid_addr, 0);
	assert_string_equal(f.warn, "bad DSDT");

	build(&m, mem, 2, 0, 1);
	m.rsdp[30] ^= 1;	/* extended checksum broken: no RSDP at all */
	acpi_discover(0, pa(m.area), m.area_len, &f);
	assert_int_equal(f.rsdp, 0);
	assert_int_equal(f.nvirtio, 0);

	build(&m, mem, 2, 0, 1);
	m.xsdt[40] ^= 1;	/* XSDT broken, no RSDT: nothing */
	acpi_discover(0, pa(m.area), m.area_len, &f);
	assert_int_equal(f.rsdp, pa(m.rsdp));
	assert_int_equal(f.root, 0);
	assert_int_equal(f.nvirtio, 0);
	assert_non_null(f.warn);

	build(&m, mem, 2, 0, 1);
	m.fadt[100] ^= 1;	/* FADT broken */
	acpi_discover(0, pa(m.area), m.area_len, &f);
	assert_int_equal(f.fadt, 0);
	assert_int_equal(f.nvirtio, 0);
	munmap(mem, 65536);
}

/* QEMU 7.2 microvm's DSDT (acpi=on, a virtio-blk-device and a virtio-net-device), as dumped
 * from guest memory: its two populated virtio-mmio transports, no generation ID. */
static const char qemu_microvm_dsdt_hex[] =
	"44534454b10100000230424f434853204258504320202020010000004258504301000000104b175f53425f"
	"5b822e46574346085f4849440d51454d553030303200085f5354410a0b085f435253110d0a0a47011005"
	"1005010c79005b8232434f4d31085f4849440c41d00501085f55494401085f5354410a0f085f43525311"
	"100a0d4701f803f803000822100079005b824c064745445f085f4849440d414350493030313300085f55"
	"49440d47454400085f435253110e0a0b89060003010900000079005b8045524547000c0000a0fe0a045b"
	"810b45524547434553454c20141d5f45565409704553454c60a010937b600a02000a0286505752420a80"
	"5b821950575242085f4849440d504e503043304300085f554944005b82420456523233085f4849440d4c"
	"4e524f3030303500085f5549440a17085f43434101085f435253111a0a1786090001002eb0fe00020000"
	"89060001012f00000079005b82420456523232085f4849440d4c4e524f3030303500085f5549440a1608"
	"5f43434101085f435253111a0a1786090001002cb0fe0002000089060001012e00000079001010 5c0008"
	"5f53355f1207040a05000000";

static size_t unhex(const char *s, uint8_t *out)
{
	size_t n = 0;
	int hi = -1;
	for (; *s; s++) {
		int v = *s >= '0' && *s <= '9' ? *s - '0' : *s >= 'a' && *s <= 'f' ? *s - 'a' + 10 : -1;
		if (v < 0)
			continue;
		if (hi < 0) {
			hi = v;
		} else {
			out[n++] = (uint8_t)(hi << 4 | v);
			hi = -1;
		}
	}
	return n;
}

static void test_qemu_microvm_dsdt(void **state)
{
	(void)state;
	uint8_t dsdt[512];
	size_t n = unhex(qemu_microvm_dsdt_hex, dsdt);
	assert_int_equal(n, 433);
	assert_int_equal(acpi_sum(dsdt, n), 0);
	struct acpi_found f = { 0 };
	acpi_scan_aml(dsdt + 36, n - 36, &f);
	assert_int_equal(f.nvirtio, 2);
	assert_int_equal(f.virtio[0], 0xfeb02e00);
	assert_int_equal(f.virtio[1], 0xfeb02c00);
	assert_int_equal(f.genid_addr, 0);
}

static void test_genid_encodings(void **state)
{
	(void)state;
	struct acpi_found f = { 0 };
	/* QWordConst lo, DWordConst hi: 64-bit address */
	static const uint8_t q[] = { 0x08, 'A', 'D', 'D', 'R', 0x12, 0x10, 0x02, 0x0e, 0x00,
				     0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x01,
				     0x00, 0x00, 0x00 };
	acpi_scan_aml(q, sizeof(q), &f);
	assert_int_equal(f.genid_addr, 0x100001000ULL);
	/* both zero (the VMM has no ID yet): not an address */
	static const uint8_t z[] = { 'A', 'D', 'D', 'R', 0x12, 0x04, 0x02, 0x00, 0x00 };
	f = (struct acpi_found){ 0 };
	acpi_scan_aml(z, sizeof(z), &f);
	assert_int_equal(f.genid_addr, 0);
	/* truncated at the end of the table: ignored, no read past it */
	static const uint8_t t[] = { 'A', 'D', 'D', 'R', 0x12, 0x0c, 0x02, 0x0c, 0x00, 0xf0 };
	f = (struct acpi_found){ 0 };
	acpi_scan_aml(t, sizeof(t), &f);
	assert_int_equal(f.genid_addr, 0);
	/* a Memory32Fixed cut short by the end of the table is not a device */
	static const uint8_t m32[] = { 0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x02 };
	acpi_scan_aml(m32, sizeof(m32), &f);
	assert_int_equal(f.nvirtio, 0);
}

/* vmsnap's own tables in guest RAM: what the guest finds is what the VMM configured. */
static void check_vmsnap(unsigned int nvirtio, uint64_t genid)
{
	struct gmem m = { 0 };
	uint64_t size = 64ull << 20;
	assert_int_equal(gmem_layout(&m, size), 0);
	m.fd = -1;
	m.host = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(m.host != MAP_FAILED);
	window(0, m.host, size);

	struct acpi_virtio_dev devs[LAYOUT_VIRTIO_MAX];
	for (unsigned int i = 0; i < nvirtio; i++) {
		devs[i].base = LAYOUT_VIRTIO_MMIO_BASE + i * LAYOUT_VIRTIO_MMIO_STRIDE;
		devs[i].size = LAYOUT_VIRTIO_MMIO_SIZE;
		devs[i].gsi = LAYOUT_VIRTIO_GSI_BASE + i;
	}
	struct acpi_config cfg = { .ncpus = 4, .virtio = nvirtio ? devs : NULL, .nvirtio = nvirtio,
				   .vmgenid_addr = genid, .ged_gsi = LAYOUT_GED_GSI };
	uint64_t rsdp = 0;
	assert_int_equal(acpi_build(&m, &cfg, &rsdp), 0);

	struct acpi_found f;
	for (int hinted = 0; hinted < 2; hinted++) {
		/* as from QEMU-style firmware (scan of 0xE0000-0xFFFFF) and from start_info */
		acpi_discover(hinted ? rsdp : 0, 0xe0000, 0x20000, &f);
		assert_null(f.warn);
		assert_int_equal(f.rsdp, rsdp);
		assert_int_equal(f.rsdp_from_hint, hinted);
		assert_true(f.dsdt >= LAYOUT_ACPI_START && f.dsdt < LAYOUT_ACPI_END);
		assert_int_equal(f.nvirtio, nvirtio);
		for (unsigned int i = 0; i < nvirtio; i++)
			assert_int_equal(f.virtio[i], devs[i].base);
		assert_int_equal(f.genid_addr, genid);
	}
	munmap(m.host, size);
}

static void test_vmsnap_acpi_build(void **state)
{
	(void)state;
	check_vmsnap(0, 0);
	check_vmsnap(1, LAYOUT_VMGENID_ADDR);
	check_vmsnap(2, LAYOUT_VMGENID_ADDR);
	check_vmsnap(LAYOUT_VIRTIO_MAX, LAYOUT_VMGENID_ADDR);
	check_vmsnap(3, 0x123456789000ull);	/* above 4 GiB: both halves of the package */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_vmsnap_acpi_build),
		cmocka_unit_test(test_vmsnap_layout_scan),
		cmocka_unit_test(test_hint),
		cmocka_unit_test(test_rsdt_and_ssdt),
		cmocka_unit_test(test_bad_checksums),
		cmocka_unit_test(test_qemu_microvm_dsdt),
		cmocka_unit_test(test_genid_encodings),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
