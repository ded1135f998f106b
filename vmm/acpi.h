/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_VMM_ACPI_H
#define VMSNAP_VMM_ACPI_H

/*
 * ACPI tables built by the VMM: RSDP (revision 2), XSDT, FADT (hardware-reduced ACPI, 6.x),
 * MADT (one local APIC per vCPU, the IOAPIC, ISA interrupt overrides), DSDT (AML: COM1, the
 * virtio-mmio devices, the VM generation ID device, a Generic Event Device and \_S5).
 *
 * The AML is written so that a tiny guest can find things by scanning bytes (tests/guest
 * does), and the byte patterns below are a promise:
 *  - every virtio-mmio device's _CRS holds a Memory32Fixed descriptor
 *    (86 09 00 01 <base:le32> <len:le32>, len == LAYOUT_VIRTIO_MMIO_SIZE) followed by an
 *    Extended Interrupt descriptor (89 06 00 <flags> 01 <gsi:le32>); no other Memory32Fixed
 *    of that length appears in the DSDT;
 *  - the generation ID device is Device(VGEN) with _HID "VMGENCTR", _CID "VM_GEN_COUNTER",
 *    and Name(ADDR, Package(2){lo, hi}) encoded exactly as
 *    'A' 'D' 'D' 'R' 12 <pkglen:1 byte> 02 0C <lo:le32> 0C <hi:le32>
 *    (DWordConst for both, even when zero): the guest-physical address of the 16-byte ID.
 */

#include <stdbool.h>
#include <stdint.h>

#include "vmm/gmem.h"

struct acpi_virtio_dev {
	uint64_t base; /* MMIO base (guest-physical) */
	uint32_t size; /* register window, LAYOUT_VIRTIO_MMIO_SIZE */
	uint32_t gsi;  /* IOAPIC input */
};

struct acpi_config {
	unsigned int ncpus;			/* 1..254 local APICs, ids 0..ncpus-1 */
	const struct acpi_virtio_dev *virtio;	/* may be NULL when nvirtio == 0 */
	unsigned int nvirtio;
	uint64_t vmgenid_addr;			/* 0: no VGEN device and no GED */
	uint32_t ged_gsi;			/* GED interrupt (used when vmgenid_addr != 0) */
};

/**
 * Write every table into guest RAM at [LAYOUT_ACPI_START, LAYOUT_ACPI_END), checksums
 * filled: the RSDP at LAYOUT_ACPI_START, then (16-byte aligned) DSDT, FADT, MADT, XSDT. Only
 * the tables' bytes are written (through gmem_write(), so a dirty bitmap sees them); nothing
 * outside the range. *@rsdp_gpa (optional) receives the RSDP's guest-physical address
 * (always LAYOUT_ACPI_START) on success and is left alone on failure.
 *
 * The tables are part of guest RAM: build them once when a VM boots; a restored VM already
 * has them. Returns 0, or (with guest RAM untouched):
 *   -EINVAL  ncpus not 1..254; nvirtio > 0 with no list, or more than 4096 devices (names
 *            V000..VFFF); a device whose size is not LAYOUT_VIRTIO_MMIO_SIZE or whose window
 *            does not end at or below 4 GiB; two devices on one GSI, or a device on COM1's IRQ
 *            4 or (with a vmgenid_addr) on ged_gsi, or ged_gsi 4: every interrupt is
 *            declared Exclusive. GSIs are not checked against the IOAPIC's 24 inputs.
 *   -EFAULT  [LAYOUT_ACPI_START, LAYOUT_ACPI_END) is not all RAM;
 *   -E2BIG   the tables do not fit (about 850 virtio devices do, far above LAYOUT_VIRTIO_MAX);
 *   -ENOMEM  no memory for the host-side staging buffer.
 */
int acpi_build(struct gmem *m, const struct acpi_config *cfg, uint64_t *rsdp_gpa);

/**
 * The ACPI PM register (LAYOUT_ACPI_PM_PORT), an iobus handler (register it for one port,
 * with a struct acpi_pm as opaque): the FADT names this 8-bit port as the hardware-reduced
 * sleep control, sleep status and reset register. A write of SLP_EN (bit 5) with SLP_TYP
 * (bits 2-4) == LAYOUT_ACPI_S5_TYPE calls @poweroff (other bits, such as WAK_STS, do not
 * matter), a write of exactly LAYOUT_ACPI_RESET_VALUE calls @reset; everything else is ignored
 * (Linux also writes WAK_STS, 0x80, before sleeping), reads return 0. Only the byte at offset
 * 0 counts; a NULL callback is skipped. Stateless, so any vCPU thread may call it at any time;
 * the callbacks run on that vCPU thread.
 */
struct acpi_pm {
	void (*poweroff)(void *opaque);
	void (*reset)(void *opaque);
	void *opaque;
};
void acpi_pm_io(void *opaque, uint64_t offset, uint8_t *data, unsigned int len, bool is_write);

#endif
