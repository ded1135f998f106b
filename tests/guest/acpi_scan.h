/*
 * ACPI discovery for the test guest: RSDP -> XSDT/RSDT -> FADT -> DSDT (and SSDTs), then a
 * byte scan of the AML for the patterns vmm/acpi.h promises:
 *  - Memory32Fixed 86 09 00 <rw> <base:le32> <len:le32> with len 0x200: a virtio-mmio device
 *    (QEMU microvm describes its virtio-mmio transports the same way);
 *  - 'A' 'D' 'D' 'R' 12 <pkglen> 02 <int> <int>: the VM generation ID address (lo, hi).
 *
 * Pure code on memory: the guest identity-maps the first 4 GiB, so a table's physical address is
 * its pointer. Built with ACPI_SCAN_HOST (the host unit test, acpi_test.c), physical addresses
 * go through acpi_scan_host_map() instead, which the test provides.
 */
#ifndef GUEST_ACPI_SCAN_H
#define GUEST_ACPI_SCAN_H

#include <stddef.h>
#include <stdint.h>

#define ACPI_MAX_VIRTIO 16
#define ACPI_VIRTIO_MMIO_LEN 0x200u

struct acpi_found {
	uint64_t rsdp;		/* 0: no valid RSDP */
	uint32_t rsdp_from_hint;	/* 1: the hint (start_info) was valid; 0: found by scanning */
	uint64_t root;		/* XSDT or RSDT used */
	uint64_t fadt, dsdt;	/* 0: not found or invalid */
	uint32_t nssdt;		/* SSDTs scanned */
	uint32_t nvirtio;
	uint64_t virtio[ACPI_MAX_VIRTIO];	/* MMIO bases, in AML order, no duplicates */
	uint64_t genid_addr;	/* 0: none */
	const char *warn;	/* first problem met (bad checksum, ...), or NULL */
};

/* Sum of @n bytes mod 256 (0 for a valid table or RSDP). */
uint8_t acpi_sum(const uint8_t *p, size_t n);

/* 1 if @p (@avail readable bytes) is a valid RSDP: signature, the 20-byte checksum and, for
 * revision >= 2, the extended checksum over its length (36..@avail). */
int acpi_rsdp_valid(const uint8_t *p, size_t avail);

/*
 * Find the RSDP: @hint (start_info.rsdp_paddr) if nonzero and valid, else the first valid
 * "RSD PTR " on a 16-byte boundary in the @area_len bytes at physical address @area_pa (the
 * BIOS area 0xE0000-0xFFFFF in the guest). Returns its address or 0; *@from_hint = 1 when
 * the hint was used. An invalid hint sets *@warn (if it is still NULL).
 */
uint64_t acpi_find_rsdp(uint64_t hint, uint64_t area_pa, size_t area_len, int *from_hint,
			const char **warn);

/* Scan AML bytes for virtio-mmio windows and the generation ID address; adds to @f. */
void acpi_scan_aml(const uint8_t *aml, size_t len, struct acpi_found *f);

/* The whole walk (acpi_find_rsdp, then the tables). @f is cleared first. */
void acpi_discover(uint64_t hint, uint64_t area_pa, size_t area_len, struct acpi_found *f);

#ifdef ACPI_SCAN_HOST
/* Host builds: the bytes at physical [pa, pa + len), or NULL if that is not all mapped. */
const uint8_t *acpi_scan_host_map(uint64_t pa, uint64_t len);
#endif

#endif
