/* SPDX-License-Identifier: MIT */
/* Dirty-page tracking over KVM's dirty log and the VMM's gmem write bitmap (vmm/dirty.h). */
#include "vmm/dirty.h"

#include <errno.h>
#include <linux/kvm.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

#include "util/log.h"
#include "vmm/vm_internal.h"

struct vm_dirty {
	struct vm *vm;
	enum vm_dirty_mode mode;
	uint64_t words;			    /* of a RAM-page bitmap */
	uint64_t *vmm_bitmap;		    /* installed in vm->mem.dirty */
	uint64_t *slot_bitmap[GMEM_MAX_REGIONS]; /* KVM_GET_DIRTY_LOG buffers, per slot */
	bool first;			    /* the next sync reports all of RAM */
	uint64_t last_sync_us;
};

#define CLEAR_CHUNK_PAGES 4096u /* 16 MiB per KVM_CLEAR_DIRTY_LOG (a multiple of 64) */

static uint64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000ull + (uint64_t)ts.tv_nsec / 1000;
}

static int set_slot_logging(struct vm *vm, unsigned int i, bool on)
{
	struct gmem_region *rg = &vm->mem.regions[i];
	struct kvm_userspace_memory_region slot = {
		.slot = i,
		.flags = on ? KVM_MEM_LOG_DIRTY_PAGES : 0,
		.guest_phys_addr = rg->gpa,
		.memory_size = rg->size,
		.userspace_addr = (uint64_t)(uintptr_t)(vm->mem.host + rg->offset),
	};
	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &slot) < 0) {
		int r = -errno;
		log_errno("dirty log %s on memory slot %u", on ? "on" : "off", i);
		return r;
	}
	return 0;
}

int vm_dirty_mode_parse(const char *s, enum vm_dirty_mode *out)
{
	if (s && !strcmp(s, "manual"))
		*out = VM_DIRTY_MANUAL;
	else if (s && !strcmp(s, "legacy"))
		*out = VM_DIRTY_LEGACY;
	else
		return -EINVAL;
	return 0;
}

int vm_dirty_start(struct vm *vm, enum vm_dirty_mode mode, struct vm_dirty **out)
{
	struct gmem *m = &vm->mem;
	if (atomic_load(&m->dirty)) {
		log_err("dirty tracking is already active on this VM");
		return -EBUSY;
	}
	struct vm_dirty *d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->vm = vm;
	d->mode = mode;
	d->first = true;
	d->words = (m->size / GMEM_PAGE_SIZE + 63) / 64;
	d->vmm_bitmap = calloc(d->words, sizeof(uint64_t));
	if (!d->vmm_bitmap)
		goto nomem;
	for (unsigned int i = 0; i < m->nregions; i++) {
		/* KVM copies longs: round each slot's bitmap up to 64 bits. */
		uint64_t pages = m->regions[i].size / GMEM_PAGE_SIZE;
		d->slot_bitmap[i] = calloc((pages + 63) / 64, sizeof(uint64_t));
		if (!d->slot_bitmap[i])
			goto nomem;
	}

	int r = 0;
	if (mode == VM_DIRTY_MANUAL) {
		struct kvm_enable_cap cap = {
			.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
			.args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE |
				   KVM_DIRTY_LOG_INITIALLY_SET,
		};
		int have = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
		if (have <= 0 || (have & 3) != 3 || ioctl(vm->vm_fd, KVM_ENABLE_CAP, &cap) < 0) {
			log_info("KVM manual dirty-log protection unavailable, using KVM_GET_DIRTY_LOG alone");
			d->mode = VM_DIRTY_LEGACY;
		}
	}
	atomic_store(&m->dirty, d->vmm_bitmap);
	for (unsigned int i = 0; i < m->nregions && !r; i++)
		r = set_slot_logging(vm, i, true);
	if (r) {
		for (unsigned int i = 0; i < m->nregions; i++)
			set_slot_logging(vm, i, false);
		atomic_store(&m->dirty, NULL);
		goto fail;
	}
	*out = d;
	return 0;
nomem:
	r = -ENOMEM;
	log_err("no memory for the dirty-page bitmaps");
fail:
	for (unsigned int i = 0; i < GMEM_MAX_REGIONS; i++)
		free(d->slot_bitmap[i]);
	free(d->vmm_bitmap);
	free(d);
	return r;
}

uint64_t vm_dirty_words(const struct vm_dirty *d)
{
	return d->words;
}

uint64_t vm_dirty_last_sync_us(const struct vm_dirty *d)
{
	return d->last_sync_us;
}

/* OR @n bits of @src into @dst starting at bit @at (a slot's first RAM page). */
static int64_t or_bits(uint64_t *dst, uint64_t at, const uint64_t *src, uint64_t n)
{
	int64_t added = 0;
	for (uint64_t w = 0; w < (n + 63) / 64; w++) {
		uint64_t v = src[w];
		if (w == n / 64 && n % 64)
			v &= (1ull << (n % 64)) - 1;
		while (v) {
			unsigned int b = (unsigned int)__builtin_ctzll(v);
			v &= v - 1;
			uint64_t pg = at + w * 64 + b;
			uint64_t bit = 1ull << (pg % 64);
			if (!(dst[pg / 64] & bit)) {
				dst[pg / 64] |= bit;
				added++;
			}
		}
	}
	return added;
}

int64_t vm_dirty_sync(struct vm_dirty *d, uint64_t *bitmap)
{
	struct vm *vm = d->vm;
	struct gmem *m = &vm->mem;
	uint64_t t0 = mono_us();
	int64_t added = 0;

	for (unsigned int i = 0; i < m->nregions; i++) {
		struct gmem_region *rg = &m->regions[i];
		uint64_t pages = rg->size / GMEM_PAGE_SIZE;
		uint64_t first = rg->offset / GMEM_PAGE_SIZE;
		uint64_t *bm = d->slot_bitmap[i];
		struct kvm_dirty_log log = { .slot = i, .dirty_bitmap = bm };
		if (ioctl(vm->vm_fd, KVM_GET_DIRTY_LOG, &log) < 0) {
			int r = -errno;
			log_errno("KVM_GET_DIRTY_LOG slot %u", i);
			return r;
		}
		/*
		 * Re-protect what we are about to copy, before the caller reads it, a chunk at a
		 * time: KVM holds its MMU lock for a whole KVM_CLEAR_DIRTY_LOG, and every vCPU
		 * that faults meanwhile waits (one call over 1 GiB stalled a busy guest for
		 * 10-20 ms here).
		 */
		for (uint64_t at = 0; d->mode == VM_DIRTY_MANUAL && at < pages;
		     at += CLEAR_CHUNK_PAGES) {
			uint64_t n = pages - at < CLEAR_CHUNK_PAGES ? pages - at : CLEAR_CHUNK_PAGES;
			bool any = false;
			for (uint64_t w = at / 64; w < (at + n + 63) / 64 && !any; w++)
				any = bm[w] != 0;
			if (!any)
				continue;
			struct kvm_clear_dirty_log cl = {
				.slot = i,
				.num_pages = (uint32_t)n,
				.first_page = at,
				.dirty_bitmap = bm + at / 64,
			};
			if (ioctl(vm->vm_fd, KVM_CLEAR_DIRTY_LOG, &cl) < 0) {
				int r = -errno;
				log_errno("KVM_CLEAR_DIRTY_LOG slot %u", i);
				return r;
			}
		}
		if (d->first)
			memset(bm, 0xff, (pages + 63) / 64 * sizeof(uint64_t));
		added += or_bits(bitmap, first, bm, pages);
	}
	d->first = false;

	/* Pages the VMM wrote: take and clear its bitmap word by word. */
	for (uint64_t w = 0; w < d->words; w++) {
		if (!__atomic_load_n(&d->vmm_bitmap[w], __ATOMIC_RELAXED))
			continue;
		uint64_t v = __atomic_exchange_n(&d->vmm_bitmap[w], 0, __ATOMIC_ACQ_REL);
		added += __builtin_popcountll(v & ~bitmap[w]);
		bitmap[w] |= v;
	}
	d->last_sync_us = mono_us() - t0;
	return added;
}

void vm_dirty_stop(struct vm_dirty *d)
{
	if (!d)
		return;
	struct gmem *m = &d->vm->mem;
	for (unsigned int i = 0; i < m->nregions; i++)
		set_slot_logging(d->vm, i, false);
	atomic_store(&m->dirty, NULL);
	for (unsigned int i = 0; i < GMEM_MAX_REGIONS; i++)
		free(d->slot_bitmap[i]);
	free(d->vmm_bitmap);
	free(d);
}

/* ---- Machine facts the migration handshake and cutover need ---------------------------- */

uint64_t vm_tsc_khz(struct vm *vm)
{
	int r = vm->ncpus ? ioctl(vm->vcpus[0].fd, KVM_GET_TSC_KHZ, 0) : -1;
	return r > 0 ? (uint64_t)r : 0;
}

bool vm_vcpus_started(struct vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	bool started = vm->start_ns != 0;
	for (unsigned int i = 0; i < vm->ncpus && started; i++)
		started = vm->vcpus[i].thread_started;
	pthread_mutex_unlock(&vm->lock);
	return started;
}
