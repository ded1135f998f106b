/* SPDX-License-Identifier: MIT */
/*
 * vmm/kvmstate against real KVM: set distinctive state in a VM (2 vCPUs, irqchip, PIT), run
 * a tiny ring-0 guest, save, load into a second VM, compare field by field and check the
 * guest goes on where it stopped. Then corrupt, truncated and unknown-version records.
 * /dev/kvm is required: without it the tests fail, they do not skip.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "formats/codec.h"
#include "vmm/kvmstate.h"

#define MEM_SIZE   (4u << 20)
#define NCPUS	   2
#define CODE_GPA   0x10000
#define DATA_GPA   0x20000
#define GUEST_PORT 0x10

#define MSR_IA32_TSC	   0x10
#define MSR_STAR	   0xc0000081
#define MSR_LSTAR	   0xc0000082
#define MSR_KERNEL_GS_BASE 0xc0000102
#define MSR_PAT		   0x277
#define MSR_MTRR_DEF_TYPE  0x2ff

#define APIC_TPR   0x80
#define APIC_SVR   0xf0
#define APIC_LVTT  0x320
#define APIC_TMICT 0x380
#define APIC_TMCCT 0x390
#define APIC_TDCR  0x3e0

static int kvm_fd = -1;

struct tvm {
	int vm;
	int vcpu[NCPUS];
	struct kvm_run *run[NCPUS];
	size_t run_size;
	uint8_t *mem;
};

static void tvm_create(struct tvm *t)
{
	memset(t, 0, sizeof(*t));
	t->vm = ioctl(kvm_fd, KVM_CREATE_VM, 0);
	assert_true(t->vm >= 0);
	assert_int_equal(ioctl(t->vm, KVM_CREATE_IRQCHIP, 0), 0);
	struct kvm_pit_config pc = { 0 };
	assert_int_equal(ioctl(t->vm, KVM_CREATE_PIT2, &pc), 0);
	t->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(t->mem != MAP_FAILED);
	struct kvm_userspace_memory_region r = { .slot = 0,
						 .memory_size = MEM_SIZE,
						 .userspace_addr = (uintptr_t)t->mem };
	assert_int_equal(ioctl(t->vm, KVM_SET_USER_MEMORY_REGION, &r), 0);

	struct kvm_cpuid2 *cp = calloc(1, sizeof(*cp) + 256 * sizeof(struct kvm_cpuid_entry2));
	assert_non_null(cp);
	cp->nent = 256;
	assert_int_equal(ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, cp), 0);
	t->run_size = (size_t)ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	for (int i = 0; i < NCPUS; i++) {
		t->vcpu[i] = ioctl(t->vm, KVM_CREATE_VCPU, i);
		assert_true(t->vcpu[i] >= 0);
		assert_int_equal(ioctl(t->vcpu[i], KVM_SET_CPUID2, cp), 0);
		t->run[i] =
			mmap(NULL, t->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, t->vcpu[i], 0);
		assert_true(t->run[i] != MAP_FAILED);
	}
	free(cp);
}

static void tvm_destroy(struct tvm *t)
{
	for (int i = 0; i < NCPUS; i++) {
		munmap(t->run[i], t->run_size);
		close(t->vcpu[i]);
	}
	munmap(t->mem, MEM_SIZE);
	close(t->vm);
}

/*
 * 64-bit ring-0 guest: identity-mapped 4 MiB (2 MiB pages), at CODE_GPA
 *   loop: inc %rax; mov %rax,(%rdi); out %al,$GUEST_PORT; jmp loop
 */
static void guest_setup(struct tvm *t)
{
	static const uint8_t code[] = { 0x48, 0xff, 0xc0,	0x48, 0x89,
					0x07, 0xe6, GUEST_PORT, 0xeb, 0xf6 };
	uint64_t *pml4 = (uint64_t *)(t->mem + 0x1000), *pdpt = (uint64_t *)(t->mem + 0x2000),
		 *pd = (uint64_t *)(t->mem + 0x3000);
	pml4[0] = 0x2000 | 3;
	pdpt[0] = 0x3000 | 3;
	pd[0] = 0x000000 | 0x83;
	pd[1] = 0x200000 | 0x83;
	memcpy(t->mem + CODE_GPA, code, sizeof(code));

	struct kvm_sregs s;
	assert_int_equal(ioctl(t->vcpu[0], KVM_GET_SREGS, &s), 0);
	struct kvm_segment seg = { .base = 0,
				   .limit = 0xffffffff,
				   .selector = 0x08,
				   .present = 1,
				   .type = 11,
				   .dpl = 0,
				   .db = 0,
				   .s = 1,
				   .l = 1,
				   .g = 1 };
	s.cs = seg;
	seg.type = 3;
	seg.selector = 0x10;
	seg.l = 0;
	seg.db = 1;
	s.ds = s.es = s.ss = s.fs = s.gs = seg;
	s.fs.base = 0x12345000; /* distinctive segment bases */
	s.gs.base = 0xffff888000abc000;
	s.gdt.base = 0x4000;
	s.gdt.limit = 0x37;
	s.idt.base = 0x5000;
	s.idt.limit = 0xfff;
	s.cr3 = 0x1000;
	s.cr4 = 0x20 | 0x200 | 0x400;
	s.cr0 = 0x80050033;
	s.efer = 0x500;
	assert_int_equal(ioctl(t->vcpu[0], KVM_SET_SREGS, &s), 0);
	struct kvm_regs g = { .rip = CODE_GPA,
			      .rflags = 2,
			      .rsp = 0x8000,
			      .rdi = DATA_GPA,
			      .rbx = 0x1111222233334444,
			      .rcx = 0xc0ffee,
			      .rdx = 0xd00d,
			      .rsi = 0x5151,
			      .rbp = 0xb0b0,
			      .r8 = 8,
			      .r9 = 9,
			      .r10 = 10,
			      .r11 = 11,
			      .r12 = 12,
			      .r13 = 13,
			      .r14 = 14,
			      .r15 = 0xf15f15f15 };
	assert_int_equal(ioctl(t->vcpu[0], KVM_SET_REGS, &g), 0);
}

/* Run vCPU 0 to its next OUT to GUEST_PORT; returns the byte written. */
static uint8_t guest_next_out(struct tvm *t)
{
	struct kvm_run *run = t->run[0];
	for (;;) {
		assert_int_equal(ioctl(t->vcpu[0], KVM_RUN, 0), 0);
		if (run->exit_reason == KVM_EXIT_IO && run->io.port == GUEST_PORT &&
		    run->io.direction == KVM_EXIT_IO_OUT)
			return *((uint8_t *)run + run->io.data_offset);
		if (run->exit_reason == KVM_EXIT_INTR)
			continue;
		fail_msg("unexpected exit %u (internal suberror %u)", run->exit_reason,
			 run->exit_reason == KVM_EXIT_INTERNAL_ERROR ? run->internal.suberror : 0);
	}
}

/* Complete the pending I/O without entering the guest, as a VMM pauses a vCPU. */
static void complete_io(struct tvm *t, int i)
{
	t->run[i]->immediate_exit = 1;
	int r = ioctl(t->vcpu[i], KVM_RUN, 0);
	assert_int_equal(r, -1);
	assert_int_equal(errno, EINTR);
	t->run[i]->immediate_exit = 0;
}

static void set_msr(int vcpu, uint32_t index, uint64_t value)
{
	struct {
		struct kvm_msrs m;
		struct kvm_msr_entry e;
	} b = { .m.nmsrs = 1, .e = { .index = index, .data = value } };
	assert_int_equal(ioctl(vcpu, KVM_SET_MSRS, &b), 1);
}

static uint64_t msr_of(const struct kvmstate_vcpu *s, uint32_t index, bool *found)
{
	for (uint32_t i = 0; i < s->nmsrs; i++)
		if (s->msrs[i].index == index) {
			*found = true;
			return s->msrs[i].data;
		}
	*found = false;
	return 0;
}

static uint32_t apic_reg(const struct kvm_lapic_state *l, unsigned int off)
{
	uint32_t v;
	memcpy(&v, l->regs + off, 4);
	return v;
}

static void set_apic_reg(struct kvm_lapic_state *l, unsigned int off, uint32_t v)
{
	memcpy(l->regs + off, &v, 4);
}

/* Distinctive state beyond what the guest itself set. */
static void set_distinctive_state(struct tvm *t)
{
	set_msr(t->vcpu[0], MSR_KERNEL_GS_BASE, 0xffff888012340000);
	set_msr(t->vcpu[0], MSR_LSTAR, 0xffffffff81a00000);
	set_msr(t->vcpu[0], MSR_STAR, 0x0023001000000000);
	set_msr(t->vcpu[0], MSR_PAT, 0x0007040600070406);
	set_msr(t->vcpu[0], MSR_MTRR_DEF_TYPE, 0xc06);
	set_msr(t->vcpu[0], MSR_IA32_TSC, 1000000000000ull);
	set_msr(t->vcpu[1], MSR_LSTAR, 0xffffffff81b00000);

	struct kvm_regs r;
	assert_int_equal(ioctl(t->vcpu[1], KVM_GET_REGS, &r), 0);
	r.rax = 0xa1a1a1a1;
	r.r15 = 0xf00d;
	assert_int_equal(ioctl(t->vcpu[1], KVM_SET_REGS, &r), 0);

	for (int i = 0; i < NCPUS; i++) {
		struct kvm_lapic_state l;
		assert_int_equal(ioctl(t->vcpu[i], KVM_GET_LAPIC, &l), 0);
		set_apic_reg(&l, APIC_SVR, 0x1ff);
		set_apic_reg(&l, APIC_TPR, 0x20 + 0x10 * (uint32_t)i);
		set_apic_reg(&l, APIC_TDCR, 0xb);
		set_apic_reg(&l, APIC_LVTT, (1u << 16) | (1u << 17) | 0x40); /* masked periodic */
		set_apic_reg(&l, APIC_TMICT, 0x10000000);
		assert_int_equal(ioctl(t->vcpu[i], KVM_SET_LAPIC, &l), 0);
	}

	/* A pending NMI on the AP, which never runs here. */
	struct kvm_vcpu_events ev;
	assert_int_equal(ioctl(t->vcpu[1], KVM_GET_VCPU_EVENTS, &ev), 0);
	ev.nmi.pending = 1;
	ev.nmi.masked = 1;
	ev.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING;
	assert_int_equal(ioctl(t->vcpu[1], KVM_SET_VCPU_EVENTS, &ev), 0);

	/* Debug address registers (no breakpoint enabled in DR7). */
	struct kvm_debugregs dr;
	assert_int_equal(ioctl(t->vcpu[0], KVM_GET_DEBUGREGS, &dr), 0);
	dr.db[0] = 0xdb0000;
	dr.db[3] = 0xdb3333;
	assert_int_equal(ioctl(t->vcpu[0], KVM_SET_DEBUGREGS, &dr), 0);

	/* SSE state: MXCSR and XMM0 in the XSAVE area (XSTATE_BV gets x87|SSE). */
	struct kvm_xsave xs;
	assert_int_equal(ioctl(t->vcpu[0], KVM_GET_XSAVE, &xs), 0);
	uint8_t *x = (uint8_t *)xs.region;
	uint32_t mxcsr = 0x1fc0;
	memcpy(x + 24, &mxcsr, 4);
	for (int i = 0; i < 16; i++)
		x[160 + i] = (uint8_t)(0xa0 + i);
	x[512] |= 3;
	assert_int_equal(ioctl(t->vcpu[0], KVM_SET_XSAVE, &xs), 0);

	struct kvm_irqchip c = { .chip_id = KVM_IRQCHIP_IOAPIC };
	assert_int_equal(ioctl(t->vm, KVM_GET_IRQCHIP, &c), 0);
	c.chip.ioapic.redirtbl[5].bits = (1ull << 56) | (1ull << 16) | 0x35;
	c.chip.ioapic.redirtbl[9].bits = (3ull << 56) | (1ull << 15) | 0x49;
	assert_int_equal(ioctl(t->vm, KVM_SET_IRQCHIP, &c), 0);
	c = (struct kvm_irqchip){ .chip_id = KVM_IRQCHIP_PIC_MASTER };
	assert_int_equal(ioctl(t->vm, KVM_GET_IRQCHIP, &c), 0);
	c.chip.pic.imr = 0xfa;
	c.chip.pic.irq_base = 0x20;
	assert_int_equal(ioctl(t->vm, KVM_SET_IRQCHIP, &c), 0);

	struct kvm_pit_state2 p;
	assert_int_equal(ioctl(t->vm, KVM_GET_PIT2, &p), 0);
	p.channels[0].count = 0x1234;
	p.channels[0].mode = 2;
	p.channels[0].rw_mode = 3;
	assert_int_equal(ioctl(t->vm, KVM_SET_PIT2, &p), 0);
}

static void assert_seg_equal(const struct kvm_segment *a, const struct kvm_segment *b)
{
	assert_int_equal(a->base, b->base);
	assert_int_equal(a->limit, b->limit);
	assert_int_equal(a->selector, b->selector);
	assert_int_equal(a->type, b->type);
	assert_int_equal(a->present, b->present);
	assert_int_equal(a->dpl, b->dpl);
	assert_int_equal(a->db, b->db);
	assert_int_equal(a->s, b->s);
	assert_int_equal(a->l, b->l);
	assert_int_equal(a->g, b->g);
	assert_int_equal(a->avl, b->avl);
	assert_int_equal(a->unusable, b->unusable);
}

/* @a: as saved; @b: read back from the restored vCPU. */
static void assert_vcpu_equal(const struct kvmstate_vcpu *a, const struct kvmstate_vcpu *b)
{
	assert_memory_equal(&a->regs, &b->regs, sizeof(a->regs)); /* all u64, no padding */
	assert_int_equal(a->has_sregs2, b->has_sregs2);
	if (a->has_sregs2) {
		const struct kvm_sregs2 *x = &a->sregs2, *y = &b->sregs2;
		assert_seg_equal(&x->cs, &y->cs);
		assert_seg_equal(&x->ds, &y->ds);
		assert_seg_equal(&x->es, &y->es);
		assert_seg_equal(&x->fs, &y->fs);
		assert_seg_equal(&x->gs, &y->gs);
		assert_seg_equal(&x->ss, &y->ss);
		assert_seg_equal(&x->tr, &y->tr);
		assert_seg_equal(&x->ldt, &y->ldt);
		assert_int_equal(x->gdt.base, y->gdt.base);
		assert_int_equal(x->gdt.limit, y->gdt.limit);
		assert_int_equal(x->idt.base, y->idt.base);
		assert_int_equal(x->idt.limit, y->idt.limit);
		assert_int_equal(x->cr0, y->cr0);
		assert_int_equal(x->cr2, y->cr2);
		assert_int_equal(x->cr3, y->cr3);
		assert_int_equal(x->cr4, y->cr4);
		assert_int_equal(x->cr8, y->cr8);
		assert_int_equal(x->efer, y->efer);
		assert_int_equal(x->apic_base, y->apic_base);
		assert_int_equal(x->flags, y->flags);
		assert_memory_equal(x->pdptrs, y->pdptrs, sizeof(x->pdptrs));
	}
	assert_int_equal(a->xsave_len, b->xsave_len);
	assert_memory_equal(a->xsave, b->xsave, a->xsave_len);
	assert_int_equal(a->xcrs.nr_xcrs, b->xcrs.nr_xcrs);
	for (uint32_t i = 0; i < a->xcrs.nr_xcrs; i++) {
		assert_int_equal(a->xcrs.xcrs[i].xcr, b->xcrs.xcrs[i].xcr);
		assert_int_equal(a->xcrs.xcrs[i].value, b->xcrs.xcrs[i].value);
	}
	assert_int_equal(a->has_lapic, b->has_lapic);
	/* The whole APIC page but the current count, which runs down. */
	assert_memory_equal(a->lapic.regs, b->lapic.regs, APIC_TMCCT);
	assert_memory_equal(a->lapic.regs + APIC_TMCCT + 16, b->lapic.regs + APIC_TMCCT + 16,
			    KVM_APIC_REG_SIZE - APIC_TMCCT - 16);
	assert_true(apic_reg(&b->lapic, APIC_TMCCT) <= apic_reg(&a->lapic, APIC_TMICT));

	assert_int_equal(a->nmsrs, b->nmsrs);
	for (uint32_t i = 0; i < a->nmsrs; i++) {
		bool found;
		uint64_t v = msr_of(b, a->msrs[i].index, &found);
		assert_true(found);
		if (a->msrs[i].index == MSR_IA32_TSC) {
			/* Restored to the saved value, then runs on: < 5 s at any rate. */
			assert_true(v >= a->msrs[i].data);
			assert_true(v - a->msrs[i].data < 5ull * 1000 * b->tsc_khz * 1000);
			continue;
		}
		if (v != a->msrs[i].data)
			fail_msg("MSR 0x%x: saved 0x%llx, restored 0x%llx", a->msrs[i].index,
				 (unsigned long long)a->msrs[i].data, (unsigned long long)v);
	}

	const struct kvm_vcpu_events *e = &a->events, *f = &b->events;
	assert_int_equal(e->exception.injected, f->exception.injected);
	assert_int_equal(e->exception.nr, f->exception.nr);
	assert_int_equal(e->exception.has_error_code, f->exception.has_error_code);
	assert_int_equal(e->exception.pending, f->exception.pending);
	assert_int_equal(e->exception.error_code, f->exception.error_code);
	assert_int_equal(e->interrupt.injected, f->interrupt.injected);
	assert_int_equal(e->interrupt.nr, f->interrupt.nr);
	assert_int_equal(e->interrupt.soft, f->interrupt.soft);
	assert_int_equal(e->interrupt.shadow, f->interrupt.shadow);
	assert_int_equal(e->nmi.injected, f->nmi.injected);
	assert_int_equal(e->nmi.pending, f->nmi.pending);
	assert_int_equal(e->nmi.masked, f->nmi.masked);
	assert_int_equal(e->sipi_vector, f->sipi_vector);
	assert_int_equal(e->flags, f->flags);
	assert_int_equal(e->smi.smm, f->smi.smm);
	assert_int_equal(e->smi.pending, f->smi.pending);
	assert_int_equal(e->smi.smm_inside_nmi, f->smi.smm_inside_nmi);
	assert_int_equal(e->smi.latched_init, f->smi.latched_init);
	assert_int_equal(e->triple_fault.pending, f->triple_fault.pending);
	assert_int_equal(e->exception_has_payload, f->exception_has_payload);
	assert_int_equal(e->exception_payload, f->exception_payload);

	assert_memory_equal(a->debugregs.db, b->debugregs.db, sizeof(a->debugregs.db));
	assert_int_equal(a->debugregs.dr6, b->debugregs.dr6);
	assert_int_equal(a->debugregs.dr7, b->debugregs.dr7);
	assert_int_equal(a->mp_state.mp_state, b->mp_state.mp_state);
	assert_int_equal(a->ncpuid, b->ncpuid);
	for (uint32_t i = 0; i < a->ncpuid; i++) {
		const struct kvm_cpuid_entry2 *x = &a->cpuid[i], *y = &b->cpuid[i];
		assert_int_equal(x->function, y->function);
		assert_int_equal(x->index, y->index);
		assert_int_equal(x->flags, y->flags);
		assert_int_equal(x->eax, y->eax);
		assert_int_equal(x->ebx, y->ebx);
		assert_int_equal(x->ecx, y->ecx);
		assert_int_equal(x->edx, y->edx);
	}
	assert_int_equal(a->tsc_khz, b->tsc_khz);
}

static void assert_vm_equal(const struct kvmstate_vm *a, const struct kvmstate_vm *b)
{
	assert_int_equal(a->has_irqchip, b->has_irqchip);
	for (int i = 0; i < 2; i++) /* struct kvm_pic_state: 16 u8, no padding */
		assert_memory_equal(&a->chips[i].chip.pic, &b->chips[i].chip.pic,
				    sizeof(struct kvm_pic_state));
	const struct kvm_ioapic_state *x = &a->chips[2].chip.ioapic, *y = &b->chips[2].chip.ioapic;
	assert_int_equal(x->base_address, y->base_address);
	assert_int_equal(x->ioregsel, y->ioregsel);
	assert_int_equal(x->id, y->id);
	assert_int_equal(x->irr, y->irr);
	for (int i = 0; i < KVM_IOAPIC_NUM_PINS; i++)
		assert_int_equal(x->redirtbl[i].bits, y->redirtbl[i].bits);
	assert_int_equal(a->has_pit, b->has_pit);
	for (int i = 0; i < 3; i++) {
		const struct kvm_pit_channel_state *c = &a->pit.channels[i],
						   *d = &b->pit.channels[i];
		assert_int_equal(c->count, d->count);
		assert_int_equal(c->latched_count, d->latched_count);
		assert_int_equal(c->count_latched, d->count_latched);
		assert_int_equal(c->status_latched, d->status_latched);
		assert_int_equal(c->status, d->status);
		assert_int_equal(c->read_state, d->read_state);
		assert_int_equal(c->write_state, d->write_state);
		assert_int_equal(c->write_latch, d->write_latch);
		assert_int_equal(c->rw_mode, d->rw_mode);
		assert_int_equal(c->mode, d->mode);
		assert_int_equal(c->bcd, d->bcd);
		assert_int_equal(c->gate, d->gate);
	}
	assert_int_equal(a->pit.flags, b->pit.flags);
	/* Restored to the saved value, then runs on. */
	assert_true(b->clock.clock >= a->clock.clock);
	assert_true(b->clock.clock - a->clock.clock < 5000000000ull);
}

static void decode_vcpu(const struct enc *e, struct kvmstate_vcpu *s)
{
	struct dec d;
	dec_init(&d, e->buf, e->len);
	assert_int_equal(kvmstate_vcpu_decode(&d, KVMSTATE_VCPU_VERSION, s), 0);
	assert_int_equal(dec_remaining(&d), 0);
}

static void test_save_load_running_guest(void **st)
{
	(void)st;
	struct tvm a, b;
	tvm_create(&a);
	guest_setup(&a);
	for (uint8_t i = 1; i <= 3; i++)
		assert_int_equal(guest_next_out(&a), i);
	complete_io(&a, 0);
	assert_int_equal(*(uint64_t *)(a.mem + DATA_GPA), 3);
	set_distinctive_state(&a);

	struct enc ev[NCPUS], em;
	for (int i = 0; i < NCPUS; i++) {
		enc_init(&ev[i]);
		assert_int_equal(kvmstate_vcpu_save(kvm_fd, a.vm, a.vcpu[i], &ev[i]), 0);
	}
	enc_init(&em);
	assert_int_equal(kvmstate_vm_save(a.vm, &em), 0);
	print_message("vCPU record %zu bytes, VM record %zu bytes\n", ev[0].len, em.len);

	struct kvmstate_vcpu saved[NCPUS];
	for (int i = 0; i < NCPUS; i++)
		decode_vcpu(&ev[i], &saved[i]);
	struct kvmstate_vm saved_vm;
	struct dec d;
	dec_init(&d, em.buf, em.len);
	assert_int_equal(kvmstate_vm_decode(&d, KVMSTATE_VM_VERSION, &saved_vm), 0);
	assert_int_equal(dec_remaining(&d), 0);

	/* What the test set is in the record. */
	bool found;
	assert_int_equal(saved[0].regs.rax, 3);
	assert_int_equal(saved[0].regs.rip, CODE_GPA + 8); /* after the OUT */
	assert_int_equal(saved[0].regs.r15, 0xf15f15f15);
	assert_int_equal(saved[1].regs.rax, 0xa1a1a1a1);
	assert_true(saved[0].has_sregs2);
	assert_int_equal(saved[0].sregs2.fs.base, 0x12345000);
	assert_int_equal(saved[0].sregs2.gs.base, 0xffff888000abc000);
	assert_int_equal(msr_of(&saved[0], MSR_KERNEL_GS_BASE, &found), 0xffff888012340000);
	assert_true(found);
	assert_int_equal(msr_of(&saved[0], MSR_LSTAR, &found), 0xffffffff81a00000);
	assert_int_equal(msr_of(&saved[1], MSR_LSTAR, &found), 0xffffffff81b00000);
	assert_int_equal(msr_of(&saved[0], MSR_MTRR_DEF_TYPE, &found), 0xc06);
	assert_true(found);
	assert_true(msr_of(&saved[0], MSR_IA32_TSC, &found) >= 1000000000000ull);
	assert_int_equal(apic_reg(&saved[1].lapic, APIC_TPR), 0x30);
	assert_int_equal(saved[1].events.nmi.pending, 1);
	assert_int_equal(saved[1].events.nmi.masked, 1);
	assert_int_equal(saved[0].debugregs.db[3], 0xdb3333);
	assert_int_equal(saved[0].xsave[24], 0xc0);
	assert_int_equal(saved[0].xsave[160 + 15], 0xaf);
	assert_int_equal(apic_reg(&saved[0].lapic, APIC_TMICT), 0x10000000);
	assert_int_equal(saved_vm.chips[2].chip.ioapic.redirtbl[5].bits,
			 (1ull << 56) | (1ull << 16) | 0x35);
	assert_int_equal(saved_vm.chips[0].chip.pic.imr, 0xfa);
	assert_int_equal(saved_vm.pit.channels[0].count, 0x1234);
	print_message("vCPU0: %u MSRs, %u CPUID entries, XSAVE %u B, mp_state %u/%u\n",
		      saved[0].nmsrs, saved[0].ncpuid, saved[0].xsave_len,
		      saved[0].mp_state.mp_state, saved[1].mp_state.mp_state);

	/* Restore into a second VM with a copy of the memory, as restore does. */
	tvm_create(&b);
	memcpy(b.mem, a.mem, MEM_SIZE);
	for (int i = 0; i < NCPUS; i++) {
		dec_init(&d, ev[i].buf, ev[i].len);
		assert_int_equal(
			kvmstate_vcpu_load(kvm_fd, b.vm, b.vcpu[i], &d, KVMSTATE_VCPU_VERSION), 0);
	}
	dec_init(&d, em.buf, em.len);
	assert_int_equal(kvmstate_vm_load(b.vm, &d, KVMSTATE_VM_VERSION), 0);

	for (int i = 0; i < NCPUS; i++) {
		struct kvmstate_vcpu now;
		assert_int_equal(kvmstate_vcpu_get(kvm_fd, b.vm, b.vcpu[i], &now), 0);
		assert_vcpu_equal(&saved[i], &now);
		kvmstate_vcpu_free(&now);
	}
	struct kvmstate_vm now_vm;
	assert_int_equal(kvmstate_vm_get(b.vm, &now_vm), 0);
	assert_vm_equal(&saved_vm, &now_vm);

	/* The original and the copy are independent; the copy goes on where it stopped. */
	tvm_destroy(&a);
	for (uint8_t i = 4; i <= 6; i++) {
		assert_int_equal(guest_next_out(&b), i);
		assert_int_equal(*(uint64_t *)(b.mem + DATA_GPA), i);
	}
	complete_io(&b, 0);
	struct kvm_regs r;
	assert_int_equal(ioctl(b.vcpu[0], KVM_GET_REGS, &r), 0);
	assert_int_equal(r.rbx, 0x1111222233334444);
	assert_int_equal(r.rax, 6);
	tvm_destroy(&b);

	for (int i = 0; i < NCPUS; i++) {
		kvmstate_vcpu_free(&saved[i]);
		enc_free(&ev[i]);
	}
	enc_free(&em);
}

/* A valid pair of records from a fresh VM, for the corruption tests. */
static void fresh_records(struct enc *ev, struct enc *em)
{
	struct tvm t;
	tvm_create(&t);
	enc_init(ev);
	enc_init(em);
	assert_int_equal(kvmstate_vcpu_save(kvm_fd, t.vm, t.vcpu[0], ev), 0);
	assert_int_equal(kvmstate_vm_save(t.vm, em), 0);
	tvm_destroy(&t);
}

static void put_u32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static int check_vcpu(const void *p, size_t len, unsigned int version)
{
	struct dec d;
	dec_init(&d, p, len);
	return kvmstate_vcpu_check(&d, version);
}

static int check_vm(const void *p, size_t len, unsigned int version)
{
	struct dec d;
	dec_init(&d, p, len);
	return kvmstate_vm_check(&d, version);
}

static void test_bad_records(void **st)
{
	(void)st;
	struct enc ev, em;
	fresh_records(&ev, &em);
	assert_int_equal(check_vcpu(ev.buf, ev.len, KVMSTATE_VCPU_VERSION), 0);
	assert_int_equal(check_vm(em.buf, em.len, KVMSTATE_VM_VERSION), 0);

	/* Every truncation. */
	for (size_t n = 0; n < ev.len; n++)
		assert_int_equal(check_vcpu(ev.buf, n, KVMSTATE_VCPU_VERSION), -EBADMSG);
	for (size_t n = 0; n < em.len; n++)
		assert_int_equal(check_vm(em.buf, n, KVMSTATE_VM_VERSION), -EBADMSG);

	/* Unknown versions. */
	assert_int_equal(check_vcpu(ev.buf, ev.len, 99), -ENOTSUP);
	assert_int_equal(check_vcpu(ev.buf, ev.len, 0), -ENOTSUP);
	assert_int_equal(check_vm(em.buf, em.len, 99), -ENOTSUP);
	struct dec d;
	dec_init(&d, ev.buf, ev.len);
	assert_int_equal(kvmstate_vcpu_load(kvm_fd, -1, -1, &d, 99), -ENOTSUP);

	/* Impossible counts and lengths, at their offsets in the record. */
	struct kvmstate_vcpu s;
	decode_vcpu(&ev, &s);
	uint8_t *c = malloc(ev.len);
	assert_non_null(c);
	const size_t sregs_kind = 18 * 8;
	const size_t xsave_len = sregs_kind + 1 + 8 * 23 + 2 * 10 + 7 * 8 + 5 * 8;
	const size_t nxcrs = xsave_len + 4 + s.xsave_len;
	const size_t lapic_len = nxcrs + 8 + 12 * s.xcrs.nr_xcrs;
	const size_t nmsrs = lapic_len + 4 + KVM_APIC_REG_SIZE;
	const size_t ncpuid = nmsrs + 4 + 12 * s.nmsrs + 37 + 7 * 8 + 4;
	const struct {
		size_t off;
		uint32_t val;
	} bad[] = {
		{ sregs_kind, 2 },  { xsave_len, 0xffffffff },
		{ xsave_len, 100 }, { xsave_len, 4098 },
		{ nxcrs, 17 },	    { lapic_len, 1023 },
		{ nmsrs, 4097 },    { nmsrs, 0x7fffffff },
		{ ncpuid, 257 },    { ncpuid, 0xffffffff },
	};
	/* The offsets are right: the unmodified values are there. */
	uint32_t v;
	memcpy(&v, ev.buf + nmsrs, 4);
	assert_int_equal(v, s.nmsrs);
	memcpy(&v, ev.buf + ncpuid, 4);
	assert_int_equal(v, s.ncpuid);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memcpy(c, ev.buf, ev.len);
		if (bad[i].off == sregs_kind)
			c[bad[i].off] = (uint8_t)bad[i].val;
		else
			put_u32(c + bad[i].off, bad[i].val);
		assert_int_equal(check_vcpu(c, ev.len, KVMSTATE_VCPU_VERSION), -EBADMSG);
	}
	kvmstate_vcpu_free(&s);

	memcpy(c, em.buf, em.len);
	c[0] = 2; /* has_irqchip */
	assert_int_equal(check_vm(c, em.len, KVMSTATE_VM_VERSION), -EBADMSG);

	/* Random garbage never crashes and is never read past its end. */
	srand(42);
	for (int i = 0; i < 2000; i++) {
		size_t n = (size_t)rand() % ev.len;
		memcpy(c, ev.buf, ev.len);
		for (int k = 0; k < 4; k++)
			c[(size_t)rand() % ev.len] = (uint8_t)rand();
		int r = check_vcpu(c, n, KVMSTATE_VCPU_VERSION);
		assert_true(r == 0 || r == -EBADMSG);
	}
	free(c);
	enc_free(&ev);
	enc_free(&em);
}

static void test_describe(void **st)
{
	(void)st;
	struct enc ev, em;
	char buf[512];
	struct dec d;
	fresh_records(&ev, &em);
	dec_init(&d, ev.buf, ev.len);
	assert_int_equal(kvmstate_vcpu_describe(&d, KVMSTATE_VCPU_VERSION, buf, sizeof(buf)), 0);
	print_message("vCPU: %s\n", buf);
	assert_non_null(strstr(buf, "rip=0xfff0"));
	assert_non_null(strstr(buf, "xsave="));
	dec_init(&d, em.buf, em.len);
	assert_int_equal(kvmstate_vm_describe(&d, KVMSTATE_VM_VERSION, buf, sizeof(buf)), 0);
	print_message("VM: %s\n", buf);
	assert_non_null(strstr(buf, "pit.ch0.count="));
	dec_init(&d, em.buf, em.len);
	assert_int_equal(kvmstate_vm_describe(&d, 99, buf, sizeof(buf)), -ENOTSUP);
	assert_string_equal(buf, "");
	dec_init(&d, ev.buf, 10);
	assert_int_equal(kvmstate_vcpu_describe(&d, KVMSTATE_VCPU_VERSION, buf, 8), -EBADMSG);
	enc_free(&ev);
	enc_free(&em);
}

static int setup(void **st)
{
	(void)st;
	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm_fd < 0) {
		fprintf(stderr, "test_kvmstate: /dev/kvm: %s (these tests need KVM)\n",
			strerror(errno));
		return -1; /* cmocka fails every test of the group */
	}
	return 0;
}

static int teardown(void **st)
{
	(void)st;
	close(kvm_fd);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_save_load_running_guest),
		cmocka_unit_test(test_bad_records),
		cmocka_unit_test(test_describe),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
