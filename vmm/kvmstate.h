/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_VMM_KVMSTATE_H
#define VMSNAP_VMM_KVMSTATE_H

/*
 * The complete state KVM holds for one vCPU and for the VM (irqchips, PIT, clock), read and
 * written through raw fds (no dependency on struct vm), and its versioned byte encoding.
 *
 * Three layers, each usable alone:
 *   - a plain state struct (struct kvmstate_vcpu / struct kvmstate_vm) holding the kernel's
 *     structs, separate from any live object;
 *   - get/set: KVM ioctls <-> state struct (set applies the load order below);
 *   - encode/decode: state struct <-> bytes. Every field is written explicitly, little-endian,
 *     fixed width (formats/codec.h); no host struct layout or sizeof reaches the bytes. The
 *     XSAVE area and the LAPIC register page are hardware-defined layouts and travel as
 *     length-prefixed blobs. Decode validates every count and length before allocating and
 *     fails with -EBADMSG (corrupt or truncated) or -ENOTSUP (unknown version); it never
 *     touches KVM, so a bad record is refused before any vCPU is modified.
 * Convenience wrappers (save = get + encode, load = decode + set, check, describe) on top.
 * The byte layout of both records is spelled out at the top of kvmstate.c.
 *
 * A record's version is not stored in it: the container (image section header, migration
 * record) carries it, and the caller passes it to the decoder.
 *
 * vCPU load order (kvmstate_vcpu_set), and why:
 *   1. CPUID (KVM_SET_CPUID2): defines which MSRs, XSAVE features and CR4 bits are valid.
 *   2. TSC frequency (KVM_SET_TSC_KHZ if it differs; without TSC scaling a mismatch is only
 *      warned about, as QEMU does).
 *   3. sregs (SREGS2 with PDPTRs when both sides have it): CR0/CR4/EFER and the APIC base
 *      (xAPIC/x2APIC mode) must be in place before regs, MSRs and the LAPIC page.
 *   4. regs.
 *   5. XCRs, then XSAVE (XCR0 first, so the XSAVE components are enabled).
 *   6. MSRs other than TSC_DEADLINE, in one KVM_SET_MSRS: IA32_TSC first, then
 *      MSR_KVM_ASYNC_PF_INT (must precede MSR_KVM_ASYNC_PF_EN), then the rest. A short
 *      count is an error naming the first refused MSR.
 *   7. LAPIC (after the APIC base; its timer restarts with the saved current count).
 *   8. vcpu events (after the LAPIC: injected/pending exception, interrupt, NMI, SMI),
 *      then MP state.
 *   9. TSC_DEADLINE (needs IA32_TSC restored and the LAPIC timer in TSC-deadline mode).
 *  10. debug registers.
 *
 * Guest time: IA32_TSC is restored to the saved value, so the guest's TSC (and kvmclock,
 * restored by kvmstate_vm_set() without KVM_CLOCK_REALTIME) does not advance while the VM is
 * saved: guest time is frozen across a snapshot, and guest timers continue with the time they
 * had left. KVM matches vCPUs whose restored TSCs lie within a second of each other to one
 * offset, so their TSCs stay synchronized. A migration may later add the elapsed time.
 *
 * Recommended VM order: create vCPUs, kvmstate_vcpu_set() each, then kvmstate_vm_set()
 * (irqchips, PIT, and the clock last, just before the vCPUs resume).
 *
 * Thread safety: no global state; functions on different vCPUs may run concurrently.
 */

#include <linux/kvm.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "formats/codec.h"

#define KVMSTATE_VCPU_VERSION 1
#define KVMSTATE_VM_VERSION   1

/* Decoder bounds: larger counts are corrupt records (-EBADMSG). */
#define KVMSTATE_MAX_MSRS  4096
#define KVMSTATE_MAX_CPUID 256
#define KVMSTATE_XSAVE_MIN 4096	       /* legacy KVM_GET_XSAVE size */
#define KVMSTATE_XSAVE_MAX (64 * 1024) /* AMX tile data is ~11 KiB */

/** The state of one vCPU, as KVM reports it. Owns @xsave, @msrs and @cpuid. */
struct kvmstate_vcpu {
	struct kvm_regs regs;
	bool has_sregs2; /* sregs2 valid (with PDPTRs), else sregs */
	struct kvm_sregs sregs;
	struct kvm_sregs2 sregs2;
	uint32_t xsave_len;	      /* bytes in @xsave, KVMSTATE_XSAVE_MIN..MAX */
	uint8_t *xsave;		      /* XSAVE area (hardware layout, first 512 B = FXSAVE) */
	struct kvm_xcrs xcrs;	      /* nr_xcrs == 0: not available */
	bool has_lapic;		      /* in-kernel LAPIC (VM has KVM_CREATE_IRQCHIP) */
	struct kvm_lapic_state lapic; /* the 1 KiB APIC register page */
	uint32_t nmsrs;
	struct kvm_msr_entry *msrs; /* only MSRs KVM let us read */
	struct kvm_vcpu_events events;
	struct kvm_debugregs debugregs;
	struct kvm_mp_state mp_state;
	uint32_t ncpuid;
	struct kvm_cpuid_entry2 *cpuid; /* as set on the vCPU (KVM_GET_CPUID2) */
	uint32_t tsc_khz;		/* 0: unknown */
};

/** The VM-wide in-kernel state. No allocations. */
struct kvmstate_vm {
	bool has_irqchip;			   /* in-kernel PIC/IOAPIC present */
	struct kvm_irqchip chips[KVM_NR_IRQCHIPS]; /* PIC master, PIC slave, IOAPIC */
	bool has_pit;				   /* in-kernel PIT (KVM_CREATE_PIT2) present */
	struct kvm_pit_state2 pit;
	struct kvm_clock_data clock;
};

/** Free what a kvmstate_vcpu owns and zero it. Safe on a zeroed struct. */
void kvmstate_vcpu_free(struct kvmstate_vcpu *s);

/**
 * Read everything KVM holds for one vCPU into @s (allocated here; free with
 * kvmstate_vcpu_free(), also on error). @kvm_fd is /dev/kvm (MSR index list), @vm_fd the VM
 * (capabilities, XSAVE2 size). The vCPU must be out of KVM_RUN with pending I/O completed
 * (KVM_RUN with immediate_exit = 1 after an I/O or MMIO exit). MSRs: every index of
 * KVM_GET_MSR_INDEX_LIST plus the MTRRs, MCE banks, TSC_AUX and the other architectural MSRs
 * a guest's state needs; the ones KVM refuses to read are skipped (logged at debug level).
 * Returns 0 or -errno (logged).
 */
int kvmstate_vcpu_get(int kvm_fd, int vm_fd, int vcpu_fd, struct kvmstate_vcpu *s);

/**
 * Write @s into a vCPU in the load order above (@kvm_fd is /dev/kvm, for capabilities). The
 * vCPU should be freshly created (KVM takes a different CPUID only before the first
 * KVM_RUN). Returns 0, -ENOTSUP when this KVM cannot hold the state (XSAVE area larger than
 * this host's), or -errno of the refusing ioctl (logged; -EINVAL naming the first refused
 * MSR for KVM_SET_MSRS).
 */
int kvmstate_vcpu_set(int kvm_fd, int vm_fd, int vcpu_fd, const struct kvmstate_vcpu *s);

/** Append @s as a version-KVMSTATE_VCPU_VERSION record. Returns enc_error(). */
int kvmstate_vcpu_encode(const struct kvmstate_vcpu *s, struct enc *e);

/**
 * Decode a record of @version into @s (allocated; free with kvmstate_vcpu_free(), also on
 * error). Consumes exactly the record; the caller checks for trailing bytes if it wants.
 * Returns 0, -ENOTSUP (unknown version), -EBADMSG (corrupt, truncated, out-of-bound count)
 * or -ENOMEM.
 */
int kvmstate_vcpu_decode(struct dec *d, unsigned int version, struct kvmstate_vcpu *s);

/** kvmstate_vcpu_get() + kvmstate_vcpu_encode(). */
int kvmstate_vcpu_save(int kvm_fd, int vm_fd, int vcpu_fd, struct enc *e);

/** kvmstate_vcpu_decode() + kvmstate_vcpu_set(): nothing is set if the record is bad. */
int kvmstate_vcpu_load(int kvm_fd, int vm_fd, int vcpu_fd, struct dec *d, unsigned int version);

/** Validate a record without touching KVM (for `vmsnap verify` and fuzzing). */
int kvmstate_vcpu_check(struct dec *d, unsigned int version);

/**
 * Decode a record and write a one-line summary into @buf (empty on error; always
 * NUL-terminated when @len > 0), e.g. "rip=0x10008 rsp=0x8000 cr0=0x80050033 cr3=0x1000
 * efer=0x500 msrs=200 xsave=4096B xcrs=1 lapic=yes cpuid=54 mp_state=0 tsc_khz=2100000".
 * Returns the decode result.
 */
int kvmstate_vcpu_describe(struct dec *d, unsigned int version, char *buf, size_t len);

/**
 * Read the VM's irqchips (if KVM_CREATE_IRQCHIP was done), PIT2 (if created) and KVM clock.
 * Returns 0 or -errno (logged).
 */
int kvmstate_vm_get(int vm_fd, struct kvmstate_vm *s);

/**
 * Write @s into a VM that has the same in-kernel devices. The clock is set with no flags
 * (KVM_CLOCK_REALTIME would advance it by the wall time elapsed since the save).
 * Returns 0, -ENODEV if @s has an irqchip or PIT this VM lacks, or -errno.
 */
int kvmstate_vm_set(int vm_fd, const struct kvmstate_vm *s);

/** Append @s as a version-KVMSTATE_VM_VERSION record. Returns enc_error(). */
int kvmstate_vm_encode(const struct kvmstate_vm *s, struct enc *e);

/** Decode a record of @version into @s. Returns 0, -ENOTSUP or -EBADMSG. */
int kvmstate_vm_decode(struct dec *d, unsigned int version, struct kvmstate_vm *s);

/** kvmstate_vm_get() + kvmstate_vm_encode(). */
int kvmstate_vm_save(int vm_fd, struct enc *e);

/** kvmstate_vm_decode() + kvmstate_vm_set(). */
int kvmstate_vm_load(int vm_fd, struct dec *d, unsigned int version);

/** Validate a VM record without touching KVM. */
int kvmstate_vm_check(struct dec *d, unsigned int version);

/**
 * One-line summary of a VM record, e.g. "pic0.imr=0xfa pic1.imr=0x00 ioapic.id=0
 * pit.ch0.count=4660 mode=2 clock=17160760ns". Returns the decode result.
 */
int kvmstate_vm_describe(struct dec *d, unsigned int version, char *buf, size_t len);

#endif
