/* SPDX-License-Identifier: MIT */
/*
 * KVM vCPU and VM state: get/set through ioctls, explicit encode/decode. See kvmstate.h for
 * the load order and the choice made for guest time.
 *
 * vCPU record, version 1 (all little-endian; "seg" and "dt" as below):
 *   regs      18 x u64: rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags
 *   sregs     u8 kind (1 = sregs2, 0 = sregs); seg cs ds es fs gs ss tr ldt; dt gdt idt;
 *             u64 cr0 cr2 cr3 cr4 cr8 efer apic_base;
 *             kind 1: u64 flags, 4 x u64 pdptrs;  kind 0: 4 x u64 interrupt_bitmap
 *             seg = u64 base, u32 limit, u16 selector, u8 type present dpl db s l g avl unusable
 *             dt  = u64 base, u16 limit
 *   xsave     u32 len (4096..65536, multiple of 4), len bytes (XSAVE layout)
 *   xcrs      u32 nr (0..16), u32 flags, nr x (u32 xcr, u64 value)
 *   lapic     u32 len (0 = no in-kernel LAPIC, or 1024), len bytes (APIC register page)
 *   msrs      u32 n (0..4096), n x (u32 index, u64 data)
 *   events    exception: u8 injected nr has_error_code pending, u32 error_code;
 *             interrupt: u8 injected nr soft shadow; nmi: u8 injected pending masked;
 *             u32 sipi_vector, u32 flags; smi: u8 smm pending smm_inside_nmi latched_init;
 *             u8 triple_fault.pending, u8 exception_has_payload, u64 exception_payload
 *   debugregs 4 x u64 db, u64 dr6, u64 dr7, u64 flags
 *   mp_state  u32
 *   cpuid     u32 n (0..256), n x (u32 function index flags eax ebx ecx edx)
 *   tsc_khz   u32 (0 = unknown)
 *
 * VM record, version 1:
 *   u8 has_irqchip (0/1); if 1: PIC master, PIC slave (16 x u8 each, struct kvm_pic_state
 *     order), IOAPIC (u64 base_address, u32 ioregsel, u32 id, u32 irr, 24 x u64 redirtbl)
 *   u8 has_pit (0/1); if 1: 3 channels (u32 count, u16 latched_count, u8 count_latched
 *     status_latched status read_state write_state write_latch rw_mode mode bcd gate,
 *     u64 count_load_time), u32 flags
 *   clock: u64 clock, u32 flags, u64 realtime, u64 host_tsc
 */
#include "vmm/kvmstate.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "util/log.h"

#define MSR_IA32_TSC	      0x10
#define MSR_IA32_TSC_DEADLINE 0x6e0
#define MSR_KVM_ASYNC_PF_INT  0x4b564d06

/*
 * MSRs read in addition to KVM_GET_MSR_INDEX_LIST: KVM does not list the MTRRs and the MCE
 * banks (they are always emulated), and the rest makes sure the state a guest depends on is
 * covered even if a KVM's list lacks it. Ranges are [first, last].
 */
static const uint32_t extra_msrs[][2] = {
	{ 0x10, 0x10 },		    /* IA32_TSC */
	{ 0x11, 0x12 },		    /* old kvmclock: wall clock, system time */
	{ 0x3b, 0x3b },		    /* IA32_TSC_ADJUST */
	{ 0x174, 0x176 },	    /* SYSENTER_CS/ESP/EIP */
	{ 0x17a, 0x17b },	    /* MCG_STATUS, MCG_CTL (MCG_CAP is KVM_X86_SETUP_MCE's) */
	{ 0x1a0, 0x1a0 },	    /* IA32_MISC_ENABLE */
	{ 0x200, 0x20f },	    /* variable MTRRs (8 pairs) */
	{ 0x250, 0x250 },	    /* MTRRfix64K_00000 */
	{ 0x258, 0x259 },	    /* MTRRfix16K */
	{ 0x268, 0x26f },	    /* MTRRfix4K */
	{ 0x277, 0x277 },	    /* PAT */
	{ 0x2ff, 0x2ff },	    /* MTRRdefType */
	{ 0x400, 0x47f },	    /* MCi_CTL/STATUS/ADDR/MISC, 32 banks */
	{ 0x6e0, 0x6e0 },	    /* TSC_DEADLINE */
	{ 0xc0000081, 0xc0000084 }, /* STAR, LSTAR, CSTAR, SFMASK */
	{ 0xc0000102, 0xc0000103 }, /* KERNEL_GS_BASE, TSC_AUX */
	{ 0x4b564d00, 0x4b564d07 }, /* kvmclock and paravirt MSRs */
};

/* --- vCPU: get --- */

void kvmstate_vcpu_free(struct kvmstate_vcpu *s)
{
	free(s->xsave);
	free(s->msrs);
	free(s->cpuid);
	memset(s, 0, sizeof(*s));
}

static int check_ext(int fd, long cap)
{
	int r = ioctl(fd, KVM_CHECK_EXTENSION, cap);
	return r < 0 ? 0 : r;
}

/* ioctl returning 0 on success; logs and returns -errno otherwise. */
static int xioctl(int fd, unsigned long req, void *arg, const char *name)
{
	if (ioctl(fd, req, arg) < 0) {
		int err = -errno;
		log_errno("kvmstate: %s", name);
		return err;
	}
	return 0;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/*
 * Candidate MSR indices: the index list plus extra_msrs, sorted, without duplicates.
 * Returns the count (into *out, malloc'ed) or -errno.
 */
static int msr_candidates(int kvm_fd, uint32_t **out)
{
	struct kvm_msr_list probe = { .nmsrs = 0 };
	struct kvm_msr_list *list = NULL;
	uint32_t nlist = 0, nextra = 0, n = 0, *idx;

	/* With nmsrs = 0 KVM answers E2BIG and tells how many there are. */
	if (ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe) < 0 && errno != E2BIG) {
		int err = -errno;
		log_errno("kvmstate: KVM_GET_MSR_INDEX_LIST");
		return err;
	}
	nlist = probe.nmsrs;
	if (nlist > KVMSTATE_MAX_MSRS) {
		log_err("kvmstate: KVM lists %u MSRs, more than %u", nlist, KVMSTATE_MAX_MSRS);
		return -E2BIG;
	}
	for (size_t i = 0; i < sizeof(extra_msrs) / sizeof(extra_msrs[0]); i++)
		nextra += extra_msrs[i][1] - extra_msrs[i][0] + 1;
	list = calloc(1, sizeof(*list) + (size_t)nlist * sizeof(uint32_t));
	idx = malloc(((size_t)nlist + nextra) * sizeof(uint32_t));
	if (!list || !idx) {
		free(list);
		free(idx);
		return -ENOMEM;
	}
	list->nmsrs = nlist;
	if (nlist && ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, list) < 0) {
		int err = -errno;
		log_errno("kvmstate: KVM_GET_MSR_INDEX_LIST");
		free(list);
		free(idx);
		return err;
	}
	for (uint32_t i = 0; i < list->nmsrs && i < nlist; i++)
		idx[n++] = list->indices[i];
	free(list);
	for (size_t i = 0; i < sizeof(extra_msrs) / sizeof(extra_msrs[0]); i++)
		for (uint32_t m = extra_msrs[i][0]; m <= extra_msrs[i][1]; m++)
			idx[n++] = m;
	qsort(idx, n, sizeof(*idx), cmp_u32);
	uint32_t u = 0;
	for (uint32_t i = 0; i < n; i++)
		if (u == 0 || idx[u - 1] != idx[i])
			idx[u++] = idx[i];
	/* Cannot happen with today's lists; keeps every record decodable. */
	if (u > KVMSTATE_MAX_MSRS)
		u = KVMSTATE_MAX_MSRS;
	*out = idx;
	return (int)u;
}

/*
 * Read every candidate MSR KVM lets us read. KVM_GET_MSRS stops at the first MSR it refuses
 * and returns how many it read, so read, skip the refused one, and go on with the rest.
 */
static int get_msrs(int kvm_fd, int vcpu_fd, struct kvmstate_vcpu *s)
{
	uint32_t *idx = NULL;
	int n = msr_candidates(kvm_fd, &idx);
	if (n < 0)
		return n;

	struct kvm_msrs *m = calloc(1, sizeof(*m) + (size_t)n * sizeof(struct kvm_msr_entry));
	s->msrs = calloc((size_t)n ? (size_t)n : 1, sizeof(*s->msrs));
	if (!m || !s->msrs) {
		free(m);
		free(idx);
		return -ENOMEM;
	}
	uint32_t pos = 0, nskipped = 0;
	char skipped[256] = "";
	size_t slen = 0;
	while (pos < (uint32_t)n) {
		m->nmsrs = (uint32_t)n - pos;
		for (uint32_t i = 0; i < m->nmsrs; i++)
			m->entries[i] = (struct kvm_msr_entry){ .index = idx[pos + i] };
		int r = ioctl(vcpu_fd, KVM_GET_MSRS, m);
		if (r < 0) {
			int err = -errno;
			log_errno("kvmstate: KVM_GET_MSRS");
			free(m);
			free(idx);
			return err;
		}
		for (int i = 0; i < r; i++)
			s->msrs[s->nmsrs++] = m->entries[i];
		pos += (uint32_t)r;
		if (pos < (uint32_t)n) {
			nskipped++;
			if (slen < sizeof(skipped) - 16)
				slen += (size_t)snprintf(skipped + slen, sizeof(skipped) - slen,
							 " 0x%x", idx[pos]);
			pos++;
		}
	}
	if (nskipped)
		log_debug("kvmstate: %u MSRs KVM would not read:%s%s", nskipped, skipped,
			  slen >= sizeof(skipped) - 16 ? " ..." : "");
	free(m);
	free(idx);
	return 0;
}

static int get_cpuid(int vcpu_fd, struct kvmstate_vcpu *s)
{
	struct kvm_cpuid2 *c =
		calloc(1, sizeof(*c) + KVMSTATE_MAX_CPUID * sizeof(struct kvm_cpuid_entry2));
	if (!c)
		return -ENOMEM;
	c->nent = KVMSTATE_MAX_CPUID;
	int err = xioctl(vcpu_fd, KVM_GET_CPUID2, c, "KVM_GET_CPUID2");
	if (!err) {
		s->ncpuid = c->nent;
		s->cpuid = calloc(c->nent ? c->nent : 1, sizeof(*s->cpuid));
		if (s->cpuid)
			memcpy(s->cpuid, c->entries, c->nent * sizeof(*s->cpuid));
		else
			err = -ENOMEM;
	}
	free(c);
	return err;
}

/* Size of the XSAVE buffer KVM reads and writes for this VM (KVM_CAP_XSAVE2, >= 4 KiB). */
static size_t xsave_size(int vm_fd)
{
	int sz = check_ext(vm_fd, KVM_CAP_XSAVE2);
	return sz > KVMSTATE_XSAVE_MIN ? (size_t)sz : KVMSTATE_XSAVE_MIN;
}

int kvmstate_vcpu_get(int kvm_fd, int vm_fd, int vcpu_fd, struct kvmstate_vcpu *s)
{
	int err;

	memset(s, 0, sizeof(*s));
	if ((err = xioctl(vcpu_fd, KVM_GET_REGS, &s->regs, "KVM_GET_REGS")))
		return err;
	s->has_sregs2 = check_ext(vm_fd, KVM_CAP_SREGS2) > 0;
	if (s->has_sregs2)
		err = xioctl(vcpu_fd, KVM_GET_SREGS2, &s->sregs2, "KVM_GET_SREGS2");
	else
		err = xioctl(vcpu_fd, KVM_GET_SREGS, &s->sregs, "KVM_GET_SREGS");
	if (err)
		return err;

	if (!check_ext(vm_fd, KVM_CAP_XSAVE)) {
		log_err("kvmstate: KVM lacks KVM_CAP_XSAVE");
		return -ENOTSUP;
	}
	size_t xsz = xsave_size(vm_fd);
	if (xsz > KVMSTATE_XSAVE_MAX) {
		log_err("kvmstate: XSAVE area of %zu bytes exceeds %u", xsz, KVMSTATE_XSAVE_MAX);
		return -ENOTSUP;
	}
	s->xsave = calloc(1, xsz);
	if (!s->xsave)
		return -ENOMEM;
	s->xsave_len = (uint32_t)xsz;
	if (check_ext(vm_fd, KVM_CAP_XSAVE2) > 0)
		err = xioctl(vcpu_fd, KVM_GET_XSAVE2, s->xsave, "KVM_GET_XSAVE2");
	else
		err = xioctl(vcpu_fd, KVM_GET_XSAVE, s->xsave, "KVM_GET_XSAVE");
	if (err)
		return err;

	if (check_ext(vm_fd, KVM_CAP_XCRS) &&
	    (err = xioctl(vcpu_fd, KVM_GET_XCRS, &s->xcrs, "KVM_GET_XCRS")))
		return err;
	if (s->xcrs.nr_xcrs > KVM_MAX_XCRS)
		return -EIO;

	if (ioctl(vcpu_fd, KVM_GET_LAPIC, &s->lapic) == 0) {
		s->has_lapic = true;
	} else if (errno != ENXIO) {
		err = -errno;
		log_errno("kvmstate: KVM_GET_LAPIC");
		return err;
	}

	if ((err = get_msrs(kvm_fd, vcpu_fd, s)))
		return err;
	if ((err = xioctl(vcpu_fd, KVM_GET_VCPU_EVENTS, &s->events, "KVM_GET_VCPU_EVENTS")) ||
	    (err = xioctl(vcpu_fd, KVM_GET_DEBUGREGS, &s->debugregs, "KVM_GET_DEBUGREGS")) ||
	    (err = xioctl(vcpu_fd, KVM_GET_MP_STATE, &s->mp_state, "KVM_GET_MP_STATE")) ||
	    (err = get_cpuid(vcpu_fd, s)))
		return err;
	int khz = ioctl(vcpu_fd, KVM_GET_TSC_KHZ, 0);
	s->tsc_khz = khz > 0 ? (uint32_t)khz : 0;
	return 0;
}

/* --- vCPU: set --- */

/* Order of MSRs inside KVM_SET_MSRS: what others depend on first (see kvmstate.h). */
static int msr_rank(uint32_t index)
{
	switch (index) {
	case MSR_IA32_TSC:
		return 0;
	case MSR_KVM_ASYNC_PF_INT: /* must precede MSR_KVM_ASYNC_PF_EN */
		return 1;
	default:
		return 2;
	}
}

static int set_msrs(int vcpu_fd, const struct kvmstate_vcpu *s, bool deadline)
{
	struct kvm_msrs *m =
		calloc(1, sizeof(*m) + ((size_t)s->nmsrs + 1) * sizeof(struct kvm_msr_entry));
	if (!m)
		return -ENOMEM;
	if (deadline) {
		for (uint32_t i = 0; i < s->nmsrs; i++)
			if (s->msrs[i].index == MSR_IA32_TSC_DEADLINE)
				m->entries[m->nmsrs++] = s->msrs[i];
	} else {
		for (int rank = 0; rank <= 2; rank++)
			for (uint32_t i = 0; i < s->nmsrs; i++)
				if (s->msrs[i].index != MSR_IA32_TSC_DEADLINE &&
				    msr_rank(s->msrs[i].index) == rank)
					m->entries[m->nmsrs++] = s->msrs[i];
	}
	for (uint32_t i = 0; i < m->nmsrs; i++)
		m->entries[i].reserved = 0;

	int err = 0;
	if (m->nmsrs) {
		int r = ioctl(vcpu_fd, KVM_SET_MSRS, m);
		if (r < 0) {
			err = -errno;
			log_errno("kvmstate: KVM_SET_MSRS");
		} else if ((uint32_t)r < m->nmsrs) {
			log_err("kvmstate: KVM_SET_MSRS refused MSR 0x%x (value 0x%llx) after %d "
				"of "
				"%u",
				m->entries[r].index, (unsigned long long)m->entries[r].data, r,
				m->nmsrs);
			err = -EINVAL;
		}
	}
	free(m);
	return err;
}

static int set_cpuid(int vcpu_fd, const struct kvmstate_vcpu *s)
{
	struct kvm_cpuid2 *c =
		calloc(1, sizeof(*c) + (size_t)s->ncpuid * sizeof(struct kvm_cpuid_entry2));
	if (!c)
		return -ENOMEM;
	c->nent = s->ncpuid;
	if (s->ncpuid)
		memcpy(c->entries, s->cpuid, (size_t)s->ncpuid * sizeof(*s->cpuid));
	int err = xioctl(vcpu_fd, KVM_SET_CPUID2, c, "KVM_SET_CPUID2");
	free(c);
	return err;
}

static void set_tsc_khz(int kvm_fd, int vcpu_fd, uint32_t khz)
{
	int cur = ioctl(vcpu_fd, KVM_GET_TSC_KHZ, 0);
	if (!khz || cur <= 0)
		return;
	uint64_t diff = (uint32_t)cur > khz ? (uint32_t)cur - khz : khz - (uint32_t)cur;
	if (diff * 4000 <= khz) /* KVM itself treats rates within 250 ppm as equal */
		return;
	if (check_ext(kvm_fd, KVM_CAP_TSC_CONTROL) > 0 &&
	    ioctl(vcpu_fd, KVM_SET_TSC_KHZ, (unsigned long)khz) == 0)
		return;
	log_warn("kvmstate: guest TSC ran at %u kHz, this host's runs at %d kHz and "
		 "cannot be "
		 "scaled: guest time will run at the wrong rate",
		 khz, cur);
}

static void sregs2_to_sregs(const struct kvm_sregs2 *s2, struct kvm_sregs *s)
{
	*s = (struct kvm_sregs){
		.cs = s2->cs,
		.ds = s2->ds,
		.es = s2->es,
		.fs = s2->fs,
		.gs = s2->gs,
		.ss = s2->ss,
		.tr = s2->tr,
		.ldt = s2->ldt,
		.gdt = s2->gdt,
		.idt = s2->idt,
		.cr0 = s2->cr0,
		.cr2 = s2->cr2,
		.cr3 = s2->cr3,
		.cr4 = s2->cr4,
		.cr8 = s2->cr8,
		.efer = s2->efer,
		.apic_base = s2->apic_base,
	};
}

static int set_xsave(int vm_fd, int vcpu_fd, const struct kvmstate_vcpu *s)
{
	size_t sz = xsave_size(vm_fd);
	if (s->xsave_len > sz) {
		log_err("kvmstate: saved XSAVE area has %u bytes, this KVM takes %zu", s->xsave_len,
			sz);
		return -ENOTSUP;
	}
	/* KVM_SET_XSAVE reads @sz bytes; what the source did not have stays zero. */
	uint8_t *buf = calloc(1, sz);
	if (!buf)
		return -ENOMEM;
	memcpy(buf, s->xsave, s->xsave_len);
	int err = xioctl(vcpu_fd, KVM_SET_XSAVE, buf, "KVM_SET_XSAVE");
	free(buf);
	return err;
}

int kvmstate_vcpu_set(int kvm_fd, int vm_fd, int vcpu_fd, const struct kvmstate_vcpu *s)
{
	int err;

	if (s->ncpuid && (err = set_cpuid(vcpu_fd, s)))
		return err;
	set_tsc_khz(kvm_fd, vcpu_fd, s->tsc_khz);

	if (s->has_sregs2 && check_ext(vm_fd, KVM_CAP_SREGS2) > 0) {
		err = xioctl(vcpu_fd, KVM_SET_SREGS2, (void *)&s->sregs2, "KVM_SET_SREGS2");
	} else if (s->has_sregs2) {
		/* PDPTRs are reloaded from guest memory at the next CR3 use. */
		struct kvm_sregs sr;
		sregs2_to_sregs(&s->sregs2, &sr);
		err = xioctl(vcpu_fd, KVM_SET_SREGS, &sr, "KVM_SET_SREGS");
	} else {
		err = xioctl(vcpu_fd, KVM_SET_SREGS, (void *)&s->sregs, "KVM_SET_SREGS");
	}
	if (err || (err = xioctl(vcpu_fd, KVM_SET_REGS, (void *)&s->regs, "KVM_SET_REGS")))
		return err;

	if (s->xcrs.nr_xcrs &&
	    (err = xioctl(vcpu_fd, KVM_SET_XCRS, (void *)&s->xcrs, "KVM_SET_XCRS")))
		return err;
	if ((err = set_xsave(vm_fd, vcpu_fd, s)))
		return err;
	if ((err = set_msrs(vcpu_fd, s, false)))
		return err;
	if (s->has_lapic &&
	    (err = xioctl(vcpu_fd, KVM_SET_LAPIC, (void *)&s->lapic, "KVM_SET_LAPIC")))
		return err;

	/*
	 * The flags are the ones KVM_GET_VCPU_EVENTS reported. KVM never reports the
	 * SIPI vector (always 0, flag clear), so it is not set back either.
	 */
	struct kvm_vcpu_events ev = s->events;
	if ((err = xioctl(vcpu_fd, KVM_SET_VCPU_EVENTS, &ev, "KVM_SET_VCPU_EVENTS")) ||
	    (err = xioctl(vcpu_fd, KVM_SET_MP_STATE, (void *)&s->mp_state, "KVM_SET_MP_STATE")) ||
	    (err = set_msrs(vcpu_fd, s, true)) ||
	    (err = xioctl(vcpu_fd, KVM_SET_DEBUGREGS, (void *)&s->debugregs, "KVM_SET_DEBUGREGS")))
		return err;
	return 0;
}

/* --- vCPU: encode / decode --- */

static void enc_seg(struct enc *e, const struct kvm_segment *g)
{
	enc_u64(e, g->base);
	enc_u32(e, g->limit);
	enc_u16(e, g->selector);
	enc_u8(e, g->type);
	enc_u8(e, g->present);
	enc_u8(e, g->dpl);
	enc_u8(e, g->db);
	enc_u8(e, g->s);
	enc_u8(e, g->l);
	enc_u8(e, g->g);
	enc_u8(e, g->avl);
	enc_u8(e, g->unusable);
}

static void dec_seg(struct dec *d, struct kvm_segment *g)
{
	*g = (struct kvm_segment){ 0 };
	g->base = dec_u64_val(d);
	dec_u32(d, &g->limit);
	dec_u16(d, &g->selector);
	dec_u8(d, &g->type);
	dec_u8(d, &g->present);
	dec_u8(d, &g->dpl);
	dec_u8(d, &g->db);
	dec_u8(d, &g->s);
	dec_u8(d, &g->l);
	dec_u8(d, &g->g);
	dec_u8(d, &g->avl);
	dec_u8(d, &g->unusable);
}

static void enc_dt(struct enc *e, const struct kvm_dtable *t)
{
	enc_u64(e, t->base);
	enc_u16(e, t->limit);
}

static void dec_dt(struct dec *d, struct kvm_dtable *t)
{
	*t = (struct kvm_dtable){ 0 };
	t->base = dec_u64_val(d);
	dec_u16(d, &t->limit);
}

/* The fields sregs and sregs2 share, in record order (X-macros serve both structs). */
#define SREGS_SEGS(X) X(cs) X(ds) X(es) X(fs) X(gs) X(ss) X(tr) X(ldt)
#define SREGS_CRS(X)  X(cr0) X(cr2) X(cr3) X(cr4) X(cr8) X(efer) X(apic_base)

static void enc_sregs(struct enc *e, const struct kvmstate_vcpu *s)
{
	enc_u8(e, s->has_sregs2 ? 1 : 0);
	if (s->has_sregs2) {
		const struct kvm_sregs2 *r = &s->sregs2;
#define ENC_SEG(f) enc_seg(e, &r->f);
#define ENC_CR(f)  enc_u64(e, r->f);
		SREGS_SEGS(ENC_SEG)
		enc_dt(e, &r->gdt);
		enc_dt(e, &r->idt);
		SREGS_CRS(ENC_CR)
		enc_u64(e, r->flags);
		for (int i = 0; i < 4; i++)
			enc_u64(e, r->pdptrs[i]);
	} else {
		const struct kvm_sregs *r = &s->sregs;
		SREGS_SEGS(ENC_SEG)
		enc_dt(e, &r->gdt);
		enc_dt(e, &r->idt);
		SREGS_CRS(ENC_CR)
		for (int i = 0; i < 4; i++)
			enc_u64(e, r->interrupt_bitmap[i]);
#undef ENC_SEG
#undef ENC_CR
	}
}

static void dec_sregs(struct dec *d, struct kvmstate_vcpu *s)
{
	uint8_t kind = dec_u8_val(d);
	if (kind > 1) {
		log_err("kvmstate: vCPU record: sregs kind %u at offset %zu", kind, d->pos - 1);
		dec_fail(d, -EBADMSG);
		return;
	}
	s->has_sregs2 = kind == 1;
	if (s->has_sregs2) {
		struct kvm_sregs2 *r = &s->sregs2;
#define DEC_SEG(f) dec_seg(d, &r->f);
#define DEC_CR(f)  r->f = dec_u64_val(d);
		SREGS_SEGS(DEC_SEG)
		dec_dt(d, &r->gdt);
		dec_dt(d, &r->idt);
		SREGS_CRS(DEC_CR)
		r->flags = dec_u64_val(d);
		for (int i = 0; i < 4; i++)
			r->pdptrs[i] = dec_u64_val(d);
	} else {
		struct kvm_sregs *r = &s->sregs;
		SREGS_SEGS(DEC_SEG)
		dec_dt(d, &r->gdt);
		dec_dt(d, &r->idt);
		SREGS_CRS(DEC_CR)
		for (int i = 0; i < 4; i++)
			r->interrupt_bitmap[i] = dec_u64_val(d);
#undef DEC_SEG
#undef DEC_CR
	}
}

/* clang-format off */
#define REGS_FIELDS(X)									\
	X(rax) X(rbx) X(rcx) X(rdx) X(rsi) X(rdi) X(rsp) X(rbp)				\
	X(r8) X(r9) X(r10) X(r11) X(r12) X(r13) X(r14) X(r15) X(rip) X(rflags)
/* clang-format on */

static void enc_events(struct enc *e, const struct kvm_vcpu_events *v)
{
	enc_u8(e, v->exception.injected);
	enc_u8(e, v->exception.nr);
	enc_u8(e, v->exception.has_error_code);
	enc_u8(e, v->exception.pending);
	enc_u32(e, v->exception.error_code);
	enc_u8(e, v->interrupt.injected);
	enc_u8(e, v->interrupt.nr);
	enc_u8(e, v->interrupt.soft);
	enc_u8(e, v->interrupt.shadow);
	enc_u8(e, v->nmi.injected);
	enc_u8(e, v->nmi.pending);
	enc_u8(e, v->nmi.masked);
	enc_u32(e, v->sipi_vector);
	enc_u32(e, v->flags);
	enc_u8(e, v->smi.smm);
	enc_u8(e, v->smi.pending);
	enc_u8(e, v->smi.smm_inside_nmi);
	enc_u8(e, v->smi.latched_init);
	enc_u8(e, v->triple_fault.pending);
	enc_u8(e, v->exception_has_payload);
	enc_u64(e, v->exception_payload);
}

static void dec_events(struct dec *d, struct kvm_vcpu_events *v)
{
	memset(v, 0, sizeof(*v));
	dec_u8(d, &v->exception.injected);
	dec_u8(d, &v->exception.nr);
	dec_u8(d, &v->exception.has_error_code);
	dec_u8(d, &v->exception.pending);
	dec_u32(d, &v->exception.error_code);
	dec_u8(d, &v->interrupt.injected);
	dec_u8(d, &v->interrupt.nr);
	dec_u8(d, &v->interrupt.soft);
	dec_u8(d, &v->interrupt.shadow);
	dec_u8(d, &v->nmi.injected);
	dec_u8(d, &v->nmi.pending);
	dec_u8(d, &v->nmi.masked);
	dec_u32(d, &v->sipi_vector);
	dec_u32(d, &v->flags);
	dec_u8(d, &v->smi.smm);
	dec_u8(d, &v->smi.pending);
	dec_u8(d, &v->smi.smm_inside_nmi);
	dec_u8(d, &v->smi.latched_init);
	dec_u8(d, &v->triple_fault.pending);
	dec_u8(d, &v->exception_has_payload);
	v->exception_payload = dec_u64_val(d);
}

int kvmstate_vcpu_encode(const struct kvmstate_vcpu *s, struct enc *e)
{
#define ENC_REG(f) enc_u64(e, s->regs.f);
	REGS_FIELDS(ENC_REG)
#undef ENC_REG
	enc_sregs(e, s);

	enc_u32(e, s->xsave_len);
	enc_bytes(e, s->xsave, s->xsave_len);

	uint32_t nxcrs = s->xcrs.nr_xcrs <= KVM_MAX_XCRS ? s->xcrs.nr_xcrs : KVM_MAX_XCRS;
	enc_u32(e, nxcrs);
	enc_u32(e, s->xcrs.flags);
	for (uint32_t i = 0; i < nxcrs; i++) {
		enc_u32(e, s->xcrs.xcrs[i].xcr);
		enc_u64(e, s->xcrs.xcrs[i].value);
	}

	enc_u32(e, s->has_lapic ? KVM_APIC_REG_SIZE : 0);
	if (s->has_lapic)
		enc_bytes(e, s->lapic.regs, KVM_APIC_REG_SIZE);

	enc_u32(e, s->nmsrs);
	for (uint32_t i = 0; i < s->nmsrs; i++) {
		enc_u32(e, s->msrs[i].index);
		enc_u64(e, s->msrs[i].data);
	}

	enc_events(e, &s->events);

	for (int i = 0; i < 4; i++)
		enc_u64(e, s->debugregs.db[i]);
	enc_u64(e, s->debugregs.dr6);
	enc_u64(e, s->debugregs.dr7);
	enc_u64(e, s->debugregs.flags);

	enc_u32(e, s->mp_state.mp_state);

	enc_u32(e, s->ncpuid);
	for (uint32_t i = 0; i < s->ncpuid; i++) {
		const struct kvm_cpuid_entry2 *c = &s->cpuid[i];
		enc_u32(e, c->function);
		enc_u32(e, c->index);
		enc_u32(e, c->flags);
		enc_u32(e, c->eax);
		enc_u32(e, c->ebx);
		enc_u32(e, c->ecx);
		enc_u32(e, c->edx);
	}
	enc_u32(e, s->tsc_khz);
	return enc_error(e);
}

/*
 * Read a u32 count and check it against @max and against the bytes left (@unit each). An
 * impossible count is logged; a short record just latches -EBADMSG, like any short read,
 * and the container reports the truncation.
 */
static uint32_t dec_count(struct dec *d, uint32_t max, size_t unit, const char *what)
{
	size_t at = d->pos;
	uint32_t n = dec_u32_val(d);
	if (dec_error(d))
		return 0;
	if (n > max)
		log_err("kvmstate: record: %s count %u at offset %zu (max %u)", what, n, at, max);
	if (n > max || (size_t)n * unit > dec_remaining(d)) {
		dec_fail(d, -EBADMSG);
		return 0;
	}
	return n;
}

int kvmstate_vcpu_decode(struct dec *d, unsigned int version, struct kvmstate_vcpu *s)
{
	memset(s, 0, sizeof(*s));
	if (version < 1 || version > KVMSTATE_VCPU_VERSION) {
		log_err("kvmstate: vCPU state version %u not supported (1..%u)", version,
			KVMSTATE_VCPU_VERSION);
		return -ENOTSUP;
	}
#define DEC_REG(f) s->regs.f = dec_u64_val(d);
	REGS_FIELDS(DEC_REG)
#undef DEC_REG
	dec_sregs(d, s);

	size_t at = d->pos;
	uint32_t xlen = dec_u32_val(d);
	if (!dec_error(d) && (xlen < KVMSTATE_XSAVE_MIN || xlen > KVMSTATE_XSAVE_MAX || xlen % 4)) {
		log_err("kvmstate: vCPU record: XSAVE length %u at offset %zu", xlen, at);
		dec_fail(d, -EBADMSG);
	}
	const void *xs = dec_ptr(d, xlen);
	if (dec_error(d))
		goto out;
	if (!(s->xsave = malloc(xlen)))
		return -ENOMEM;
	memcpy(s->xsave, xs, xlen);
	s->xsave_len = xlen;

	s->xcrs.nr_xcrs = dec_count(d, KVM_MAX_XCRS, 12, "XCR");
	dec_u32(d, &s->xcrs.flags);
	for (uint32_t i = 0; i < s->xcrs.nr_xcrs; i++) {
		dec_u32(d, &s->xcrs.xcrs[i].xcr);
		s->xcrs.xcrs[i].value = dec_u64_val(d);
	}

	at = d->pos;
	uint32_t llen = dec_u32_val(d);
	if (!dec_error(d) && llen != 0 && llen != KVM_APIC_REG_SIZE) {
		log_err("kvmstate: vCPU record: LAPIC length %u at offset %zu", llen, at);
		dec_fail(d, -EBADMSG);
	}
	s->has_lapic = llen == KVM_APIC_REG_SIZE && !dec_error(d);
	if (s->has_lapic)
		dec_bytes(d, s->lapic.regs, KVM_APIC_REG_SIZE);

	uint32_t nmsrs = dec_count(d, KVMSTATE_MAX_MSRS, 12, "MSR");
	if (dec_error(d))
		goto out;
	if (!(s->msrs = calloc(nmsrs ? nmsrs : 1, sizeof(*s->msrs))))
		return -ENOMEM;
	s->nmsrs = nmsrs;
	for (uint32_t i = 0; i < nmsrs; i++) {
		dec_u32(d, &s->msrs[i].index);
		s->msrs[i].data = dec_u64_val(d);
	}

	dec_events(d, &s->events);

	for (int i = 0; i < 4; i++)
		s->debugregs.db[i] = dec_u64_val(d);
	s->debugregs.dr6 = dec_u64_val(d);
	s->debugregs.dr7 = dec_u64_val(d);
	s->debugregs.flags = dec_u64_val(d);

	dec_u32(d, &s->mp_state.mp_state);

	uint32_t ncpuid = dec_count(d, KVMSTATE_MAX_CPUID, 28, "CPUID entry");
	if (dec_error(d))
		goto out;
	if (!(s->cpuid = calloc(ncpuid ? ncpuid : 1, sizeof(*s->cpuid))))
		return -ENOMEM;
	s->ncpuid = ncpuid;
	for (uint32_t i = 0; i < ncpuid; i++) {
		struct kvm_cpuid_entry2 *c = &s->cpuid[i];
		dec_u32(d, &c->function);
		dec_u32(d, &c->index);
		dec_u32(d, &c->flags);
		dec_u32(d, &c->eax);
		dec_u32(d, &c->ebx);
		dec_u32(d, &c->ecx);
		dec_u32(d, &c->edx);
	}
	dec_u32(d, &s->tsc_khz);
out:
	return dec_error(d);
}

/* --- vCPU: wrappers --- */

int kvmstate_vcpu_save(int kvm_fd, int vm_fd, int vcpu_fd, struct enc *e)
{
	struct kvmstate_vcpu s;
	int err = kvmstate_vcpu_get(kvm_fd, vm_fd, vcpu_fd, &s);
	if (!err)
		err = kvmstate_vcpu_encode(&s, e);
	kvmstate_vcpu_free(&s);
	return err;
}

int kvmstate_vcpu_load(int kvm_fd, int vm_fd, int vcpu_fd, struct dec *d, unsigned int version)
{
	struct kvmstate_vcpu s;
	int err = kvmstate_vcpu_decode(d, version, &s);
	if (!err)
		err = kvmstate_vcpu_set(kvm_fd, vm_fd, vcpu_fd, &s);
	kvmstate_vcpu_free(&s);
	return err;
}

int kvmstate_vcpu_check(struct dec *d, unsigned int version)
{
	struct kvmstate_vcpu s;
	int err = kvmstate_vcpu_decode(d, version, &s);
	kvmstate_vcpu_free(&s);
	return err;
}

int kvmstate_vcpu_describe(struct dec *d, unsigned int version, char *buf, size_t len)
{
	struct kvmstate_vcpu s;
	int err = kvmstate_vcpu_decode(d, version, &s);
	if (!err && len) {
		uint64_t cr0 = s.has_sregs2 ? s.sregs2.cr0 : s.sregs.cr0;
		uint64_t cr3 = s.has_sregs2 ? s.sregs2.cr3 : s.sregs.cr3;
		uint64_t efer = s.has_sregs2 ? s.sregs2.efer : s.sregs.efer;
		snprintf(buf, len,
			 "rip=0x%llx rsp=0x%llx cr0=0x%llx cr3=0x%llx efer=0x%llx msrs=%u "
			 "xsave=%uB xcrs=%u lapic=%s cpuid=%u mp_state=%u tsc_khz=%u",
			 (unsigned long long)s.regs.rip, (unsigned long long)s.regs.rsp,
			 (unsigned long long)cr0, (unsigned long long)cr3, (unsigned long long)efer,
			 s.nmsrs, s.xsave_len, s.xcrs.nr_xcrs, s.has_lapic ? "yes" : "no", s.ncpuid,
			 s.mp_state.mp_state, s.tsc_khz);
	} else if (len) {
		buf[0] = '\0';
	}
	kvmstate_vcpu_free(&s);
	return err;
}

/* --- VM --- */

int kvmstate_vm_get(int vm_fd, struct kvmstate_vm *s)
{
	int err;

	memset(s, 0, sizeof(*s));
	s->has_irqchip = true;
	for (uint32_t i = 0; i < KVM_NR_IRQCHIPS; i++) {
		s->chips[i].chip_id = i;
		if (ioctl(vm_fd, KVM_GET_IRQCHIP, &s->chips[i]) == 0)
			continue;
		if (errno == ENXIO && i == 0) {
			s->has_irqchip = false;
			break;
		}
		err = -errno;
		log_errno("kvmstate: KVM_GET_IRQCHIP %u", i);
		return err;
	}
	if (!s->has_irqchip)
		memset(s->chips, 0, sizeof(s->chips));

	if (ioctl(vm_fd, KVM_GET_PIT2, &s->pit) == 0) {
		s->has_pit = true;
	} else if (errno != ENXIO) {
		err = -errno;
		log_errno("kvmstate: KVM_GET_PIT2");
		return err;
	}
	return xioctl(vm_fd, KVM_GET_CLOCK, &s->clock, "KVM_GET_CLOCK");
}

int kvmstate_vm_set(int vm_fd, const struct kvmstate_vm *s)
{
	int err;

	if (s->has_irqchip) {
		for (uint32_t i = 0; i < KVM_NR_IRQCHIPS; i++) {
			struct kvm_irqchip c = s->chips[i];
			c.chip_id = i;
			if (ioctl(vm_fd, KVM_SET_IRQCHIP, &c) < 0) {
				err = -errno;
				log_errno("kvmstate: KVM_SET_IRQCHIP %u", i);
				return err == -ENXIO ? -ENODEV : err;
			}
		}
	}
	if (s->has_pit) {
		struct kvm_pit_state2 p = s->pit;
		if (ioctl(vm_fd, KVM_SET_PIT2, &p) < 0) {
			err = -errno;
			log_errno("kvmstate: KVM_SET_PIT2");
			return err == -ENXIO ? -ENODEV : err;
		}
	}
	/*
	 * KVM_SET_CLOCK accepts only KVM_CLOCK_REALTIME, and that one would add the
	 * wall time elapsed since the save: leave it out, so guest time stays frozen
	 * like its TSC.
	 */
	struct kvm_clock_data c = { .clock = s->clock.clock, .flags = 0 };
	return xioctl(vm_fd, KVM_SET_CLOCK, &c, "KVM_SET_CLOCK");
}

#define PIC_FIELDS(X)                                                                              \
	X(last_irr)                                                                                \
	X(irr)                                                                                     \
	X(imr) X(isr) X(priority_add) X(irq_base) X(read_reg_select) X(poll) X(special_mask)       \
		X(init_state) X(auto_eoi) X(rotate_on_auto_eoi) X(special_fully_nested_mode)       \
			X(init4) X(elcr) X(elcr_mask)

int kvmstate_vm_encode(const struct kvmstate_vm *s, struct enc *e)
{
	enc_u8(e, s->has_irqchip ? 1 : 0);
	if (s->has_irqchip) {
		for (int i = 0; i < 2; i++) {
			const struct kvm_pic_state *p = &s->chips[i].chip.pic;
#define ENC_PIC(f) enc_u8(e, p->f);
			PIC_FIELDS(ENC_PIC)
#undef ENC_PIC
		}
		const struct kvm_ioapic_state *io = &s->chips[KVM_IRQCHIP_IOAPIC].chip.ioapic;
		enc_u64(e, io->base_address);
		enc_u32(e, io->ioregsel);
		enc_u32(e, io->id);
		enc_u32(e, io->irr);
		for (int i = 0; i < KVM_IOAPIC_NUM_PINS; i++)
			enc_u64(e, io->redirtbl[i].bits);
	}
	enc_u8(e, s->has_pit ? 1 : 0);
	if (s->has_pit) {
		for (int i = 0; i < 3; i++) {
			const struct kvm_pit_channel_state *c = &s->pit.channels[i];
			enc_u32(e, c->count);
			enc_u16(e, c->latched_count);
			enc_u8(e, c->count_latched);
			enc_u8(e, c->status_latched);
			enc_u8(e, c->status);
			enc_u8(e, c->read_state);
			enc_u8(e, c->write_state);
			enc_u8(e, c->write_latch);
			enc_u8(e, c->rw_mode);
			enc_u8(e, c->mode);
			enc_u8(e, c->bcd);
			enc_u8(e, c->gate);
			enc_u64(e, (uint64_t)c->count_load_time);
		}
		enc_u32(e, s->pit.flags);
	}
	enc_u64(e, s->clock.clock);
	enc_u32(e, s->clock.flags);
	enc_u64(e, s->clock.realtime);
	enc_u64(e, s->clock.host_tsc);
	return enc_error(e);
}

static bool dec_bool(struct dec *d, const char *what)
{
	size_t at = d->pos;
	uint8_t v = dec_u8_val(d);
	if (v > 1 && !dec_error(d)) {
		log_err("kvmstate: VM record: %s flag %u at offset %zu", what, v, at);
		dec_fail(d, -EBADMSG);
	}
	return v == 1 && !dec_error(d);
}

int kvmstate_vm_decode(struct dec *d, unsigned int version, struct kvmstate_vm *s)
{
	memset(s, 0, sizeof(*s));
	if (version < 1 || version > KVMSTATE_VM_VERSION) {
		log_err("kvmstate: VM state version %u not supported (1..%u)", version,
			KVMSTATE_VM_VERSION);
		return -ENOTSUP;
	}
	s->has_irqchip = dec_bool(d, "irqchip");
	if (s->has_irqchip) {
		for (uint32_t i = 0; i < 2; i++) {
			struct kvm_pic_state *p = &s->chips[i].chip.pic;
			s->chips[i].chip_id = i;
#define DEC_PIC(f) dec_u8(d, &p->f);
			PIC_FIELDS(DEC_PIC)
#undef DEC_PIC
		}
		struct kvm_ioapic_state *io = &s->chips[KVM_IRQCHIP_IOAPIC].chip.ioapic;
		s->chips[KVM_IRQCHIP_IOAPIC].chip_id = KVM_IRQCHIP_IOAPIC;
		io->base_address = dec_u64_val(d);
		dec_u32(d, &io->ioregsel);
		dec_u32(d, &io->id);
		dec_u32(d, &io->irr);
		for (int i = 0; i < KVM_IOAPIC_NUM_PINS; i++)
			io->redirtbl[i].bits = dec_u64_val(d);
	}
	s->has_pit = dec_bool(d, "PIT");
	if (s->has_pit) {
		for (int i = 0; i < 3; i++) {
			struct kvm_pit_channel_state *c = &s->pit.channels[i];
			dec_u32(d, &c->count);
			dec_u16(d, &c->latched_count);
			dec_u8(d, &c->count_latched);
			dec_u8(d, &c->status_latched);
			dec_u8(d, &c->status);
			dec_u8(d, &c->read_state);
			dec_u8(d, &c->write_state);
			dec_u8(d, &c->write_latch);
			dec_u8(d, &c->rw_mode);
			dec_u8(d, &c->mode);
			dec_u8(d, &c->bcd);
			dec_u8(d, &c->gate);
			c->count_load_time = (int64_t)dec_u64_val(d);
		}
		dec_u32(d, &s->pit.flags);
	}
	s->clock.clock = dec_u64_val(d);
	dec_u32(d, &s->clock.flags);
	s->clock.realtime = dec_u64_val(d);
	s->clock.host_tsc = dec_u64_val(d);
	return dec_error(d);
}

int kvmstate_vm_save(int vm_fd, struct enc *e)
{
	struct kvmstate_vm s;
	int err = kvmstate_vm_get(vm_fd, &s);
	return err ? err : kvmstate_vm_encode(&s, e);
}

int kvmstate_vm_load(int vm_fd, struct dec *d, unsigned int version)
{
	struct kvmstate_vm s;
	int err = kvmstate_vm_decode(d, version, &s);
	return err ? err : kvmstate_vm_set(vm_fd, &s);
}

int kvmstate_vm_check(struct dec *d, unsigned int version)
{
	struct kvmstate_vm s;
	return kvmstate_vm_decode(d, version, &s);
}

int kvmstate_vm_describe(struct dec *d, unsigned int version, char *buf, size_t len)
{
	struct kvmstate_vm s;
	int err = kvmstate_vm_decode(d, version, &s);
	if (!len)
		return err;
	buf[0] = '\0';
	if (err)
		return err;
	size_t n = 0;
	if (s.has_irqchip)
		n += (size_t)snprintf(buf, len, "pic0.imr=0x%02x pic1.imr=0x%02x ioapic.id=%u ",
				      s.chips[0].chip.pic.imr, s.chips[1].chip.pic.imr,
				      s.chips[2].chip.ioapic.id);
	else
		n += (size_t)snprintf(buf, len, "irqchip=no ");
	if (n < len) {
		if (s.has_pit)
			n += (size_t)snprintf(buf + n, len - n, "pit.ch0.count=%u mode=%u ",
					      s.pit.channels[0].count, s.pit.channels[0].mode);
		else
			n += (size_t)snprintf(buf + n, len - n, "pit=no ");
	}
	if (n < len)
		snprintf(buf + n, len - n, "clock=%lluns", (unsigned long long)s.clock.clock);
	return 0;
}
