/* Constants shared by the test guest's assembly entry (entry.S) and its C code (guest.c). */
#ifndef GUEST_H
#define GUEST_H

#define MAX_CPUS 16
#define KSTACK_SIZE 8192	/* ring-0 stack per CPU (interrupts, boot) */
#define USTACK_SIZE 16384	/* ring-3 stack per CPU */
#define RING_SIZE 8192		/* console ring per CPU, power of two */
#define TRAMPOLINE_PA 0x8000	/* AP real-mode entry (SIPI vector 0x08) */

#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_CODE32 0x18		/* boot GDT only: 32-bit code for the AP trampoline */
#define SEL_UDATA 0x1b
#define SEL_UCODE 0x23
#define SEL_TSS 0x28

#endif
