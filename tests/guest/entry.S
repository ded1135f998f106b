/*
 * Test guest entry: the PVH note, 32-bit PVH entry -> long mode, the AP real-mode trampoline
 * (copied to TRAMPOLINE_PA by the BSP) and the static page tables that identity-map the first
 * 4 GiB with 2 MiB pages, user-accessible (the guest's ring 3 touches everything).
 */
#include "guest.h"

	/* PVH entry note: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18), 32-bit entry address. */
	.section .note.pvh, "a", @note
	.balign 4
	.long 4
	.long 4
	.long 18
	.asciz "Xen"
	.balign 4
	.long pvh_start32
	.balign 4

	.section .text.entry, "ax"
	.code32
	.globl pvh_start32
pvh_start32:
	cli
	cld
	movl %ebx, start_info_pa
	lgdt boot_gdtr
	movl $0, ap_mode
	movw $SEL_KDATA, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	jmp 1f

	/*
	 * APs arrive here from the trampoline, in protected mode with the boot GDT loaded but the
	 * real-mode data segments (base 0x8000, limit 64 KiB) still cached: reload them first.
	 */
	.globl ap_start32
ap_start32:
	movw $SEL_KDATA, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movl $1, ap_mode
1:	movl %cr4, %eax
	orl $0x20, %eax			/* PAE */
	movl %eax, %cr4
	movl $pml4, %eax
	movl %eax, %cr3
	movl $0xc0000080, %ecx		/* EFER.LME */
	rdmsr
	orl $0x100, %eax
	wrmsr
	movl %cr0, %eax
	orl $0x80010021, %eax		/* PG | WP | NE | PE */
	movl %eax, %cr0
	ljmp $SEL_KCODE, $start64

	.code64
start64:
	movw $SEL_KDATA, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	xorl %eax, %eax
	movw %ax, %fs
	movw %ax, %gs
	cmpl $0, ap_mode(%rip)
	jne 2f
	leaq kstacks + KSTACK_SIZE(%rip), %rsp
	/* The loader zeroes p_memsz past p_filesz, but a reset must not depend on it. */
	leaq __bss_start(%rip), %rdi
	leaq __bss_end(%rip), %rcx
	subq %rdi, %rcx
	shrq $3, %rcx
	xorl %eax, %eax
	rep stosq
	call bsp_main
	jmp 3f
2:	movq ap_boot_rsp(%rip), %rsp
	call ap_main
3:	cli
	hlt
	jmp 3b

	/* Ring 3 "system call": a ud2 at this address means "halt until the next interrupt". */
	.text
	.globl sys_halt, user_halt_insn
sys_halt:
user_halt_insn:
	ud2
	ret

	/* AP trampoline, position-independent in real mode: runs at TRAMPOLINE_PA, CS = PA >> 4. */
	.section .rodata
	.code16
	.globl tramp_start, tramp_end
tramp_start:
	cli
	movw %cs, %ax
	movw %ax, %ds
	lgdtl tramp_gdtr - tramp_start
	movl %cr0, %eax
	orl $1, %eax
	movl %eax, %cr0
	ljmpl $SEL_CODE32, $ap_start32
	.balign 8
tramp_gdtr:
	.word boot_gdt_end - boot_gdt - 1
	.long boot_gdt
tramp_end:
	.code64

	.data
	.balign 4
	.globl start_info_pa
start_info_pa:
	.long 0
ap_mode:
	.long 0

	.balign 16
boot_gdt:
	.quad 0
	.quad 0x00af9a000000ffff	/* 0x08 64-bit code */
	.quad 0x00cf92000000ffff	/* 0x10 data */
	.quad 0x00cf9a000000ffff	/* 0x18 32-bit code */
boot_gdt_end:
boot_gdtr:
	.word boot_gdt_end - boot_gdt - 1
	.long boot_gdt

	/* P | RW | US (| PS); the top 32 MiB (LAPIC, IOAPIC) uncached. */
	.balign 4096
	.globl pml4, pdpt
pml4:
	.quad pdpt + 0x7
	.fill 511, 8, 0
pdpt:
	.quad pd0 + 0x7, pd0 + 0x1007, pd0 + 0x2007, pd0 + 0x3007
	.fill 508, 8, 0
pd0:
	.set i, 0
	.rept 2048
	.if i >= 0x7f0
	.quad (i << 21) | 0x9f
	.else
	.quad (i << 21) | 0x87
	.endif
	.set i, i + 1
	.endr
	.section .note.GNU-stack, "", @progbits
