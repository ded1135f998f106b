/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_VMM_DIRTY_H
#define VMSNAP_VMM_DIRTY_H

/*
 * Dirty-page tracking for live migration: KVM's dirty log on every memory slot (what the
 * vCPUs write) merged with a VMM-side bitmap that gmem_write() marks (what device emulation
 * writes), both indexed by RAM page (host-mapping offset / 4 KiB, the image format's "RAM
 * page"). One tracker per VM at a time; its functions are called from one thread (the
 * migration's), while the VM runs or is paused.
 *
 * Two KVM mechanisms, chosen at start (docs/MIGRATION.md has the measurements):
 *  - VM_DIRTY_MANUAL (default): KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with INITIALLY_SET:
 *    enabling costs nothing (no write-protection pass; the first sync reports every page),
 *    KVM_GET_DIRTY_LOG only reads, and KVM_CLEAR_DIRTY_LOG re-protects exactly the pages
 *    reported, before the caller reads them.
 *  - VM_DIRTY_LEGACY: KVM_GET_DIRTY_LOG reads, clears and re-protects the whole slot at once.
 */

#include <stdbool.h>
#include <stdint.h>

struct vm;
struct vm_dirty;

enum vm_dirty_mode {
	VM_DIRTY_MANUAL = 0,
	VM_DIRTY_LEGACY,
};

/**
 * Start tracking: enable KVM's dirty log on every slot and install the VMM bitmap. Every
 * page counts as dirty at the start (the first vm_dirty_sync() reports all of RAM).
 * Returns 0 and *@out, or -errno after logging (-EBUSY if a tracker is already active).
 */
int vm_dirty_start(struct vm *vm, enum vm_dirty_mode mode, struct vm_dirty **out);

/**
 * OR every page written since the previous sync (or the start) into @bitmap (bit i = RAM
 * page i, LSB first in each u64, vm_dirty_words() words) and re-arm tracking for those pages
 * before returning, so that a write after this call is reported by the next sync. Returns the
 * number of pages newly reported (pages already set in @bitmap count once), or -errno.
 */
int64_t vm_dirty_sync(struct vm_dirty *d, uint64_t *bitmap);

/** Words of a RAM-page bitmap for this VM. */
uint64_t vm_dirty_words(const struct vm_dirty *d);

/** Microseconds the last vm_dirty_sync() spent in KVM (get + clear), for reports. */
uint64_t vm_dirty_last_sync_us(const struct vm_dirty *d);

/** Stop tracking: dirty logging off on every slot, VMM bitmap removed, @d freed. NULL ok. */
void vm_dirty_stop(struct vm_dirty *d);

/** "manual" / "legacy" into @out: 0 or -EINVAL. */
int vm_dirty_mode_parse(const char *s, enum vm_dirty_mode *out);

#endif
