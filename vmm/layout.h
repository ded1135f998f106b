/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_VMM_LAYOUT_H
#define VMSNAP_VMM_LAYOUT_H

/*
 * Where the machine puts things the guest finds through ACPI: the tables themselves, the VM
 * generation ID, the virtio-mmio devices and their interrupts. Boot data below 1 MiB is in
 * vmm/boot.h; these addresses stay clear of it. Changing any of them changes the machine a
 * saved image describes, so they are part of the machine's definition (docs/DEVICES.md).
 */

/* ACPI tables: RSDP at the start (inside the BIOS area 0xE0000-0xFFFFF that Linux scans),
 * the other tables right after it. [EBDA, 1 MiB) is reserved in the memory map. */
#define LAYOUT_ACPI_START 0xE0000ull
#define LAYOUT_ACPI_END 0xEF000ull

/* The 16-byte VM generation ID, at the start of a reserved page of its own. */
#define LAYOUT_VMGENID_ADDR 0xEF000ull

/* virtio-mmio devices: device i at BASE + i * STRIDE, SIZE bytes of registers, GSI
 * VIRTIO_GSI_BASE + i on the IOAPIC (edge-triggered, active high). GSIs 16 and up reach only
 * the IOAPIC (KVM routes 0-15 to the 8259 PICs too, where a guest that never programmed them
 * would take the edge on a garbage vector). */
#define LAYOUT_VIRTIO_MMIO_BASE 0xD0000000ull
#define LAYOUT_VIRTIO_MMIO_STRIDE 0x1000ull
#define LAYOUT_VIRTIO_MMIO_SIZE 0x200ull
#define LAYOUT_VIRTIO_GSI_BASE 16u
#define LAYOUT_VIRTIO_MAX 7u

/* Generic Event Device (ACPI0013) interrupt: raised to tell the guest the generation ID
 * changed (its _EVT method notifies the VGEN device with 0x80). The IOAPIC's last input,
 * after the virtio devices': IOAPIC-only, like theirs. */
#define LAYOUT_GED_GSI 23u

/* Hardware-reduced ACPI sleep control/status and reset register (one I/O port): writing
 * SLP_EN | SLP_TYP(5) powers the VM off, writing LAYOUT_ACPI_RESET_VALUE resets it. */
#define LAYOUT_ACPI_PM_PORT 0x3c0u
#define LAYOUT_ACPI_S5_TYPE 5u
#define LAYOUT_ACPI_RESET_VALUE 0x01u

#endif
