/*
 * vmsnap test guest: a freestanding x86-64 PVH guest for tests and benchmarks.
 *
 * Ring 0 is emulated instruction by instruction on the development machines (KVM nested on
 * PVM, ~0.6 us per instruction), so the ring-0 part is only boot (long mode, per-CPU
 * GDT/TSS/IDT, LAPIC timer, INIT-SIPI-SIPI), a short timer ISR that drains a per-CPU console
 * ring to COM1, and the exception handlers. All the work (heartbeats, memory dirtier, verify,
 * status) runs in ring 3 at native speed. See README.md for the command line and output format.
 */
#include <stddef.h>
#include <stdint.h>

#include "devices.h"
#include "guest.h"

#define COM1 0x3f8
#define LAPIC_BASE 0xfee00000UL
#define LAPIC_ID 0x020
#define LAPIC_EOI 0x0b0
#define LAPIC_SVR 0x0f0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_CUR 0x390
#define LAPIC_TIMER_DIV 0x3e0
#define VEC_TIMER 0x20
#define VEC_SPURIOUS 0xff
#define HB_PER_LINE 64		/* a CPU breaks its own run of heartbeat tokens after this many */
#define MAX_RANGES 16
#define MAX_FAIL_LINES 8	/* VERIFY FAIL detail lines per CPU per pass */

typedef unsigned long uword_t;

struct intr_frame {
	uint64_t ip, cs, flags, sp, ss;
};

struct hvm_start_info {
	uint32_t magic, version, flags, nr_modules;
	uint64_t modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
	uint32_t memmap_entries, reserved;
};

struct hvm_memmap_entry {
	uint64_t addr, size;
	uint32_t type, reserved;
};

enum workload { WL_IDLE, WL_DIRTY };
enum fault { F_NONE, F_TRIPLE, F_UD, F_PF, F_GP };
static const char *const workload_names[] = { "idle", "dirty" };
static const char *const fault_names[] = { "none", "triple", "ud", "pf", "gp" };

/* Parameters from the command line (README.md). Durations in milliseconds. */
struct config {
	uint32_t cpus, hz, hb_every, workload, fault, pio_rep, piobench;
	uint64_t wss_mib, rate_mibps, passes, verify_ms, run_ms, status_ms, fault_ms;
};

struct percpu {
	struct percpu *self;	/* %gs:0 in both rings */
	uint32_t cpu;
	uint32_t in_user;
	volatile uint64_t ticks;	/* timer ISR */
	volatile uint32_t head;		/* console ring: ring 3 produces ... */
	volatile uint32_t tail;		/* ... the timer ISR consumes */
	char *ring;
	uint64_t gdt[8];
	uint32_t tss[26];
	/* ring 3 state */
	uint64_t last_hb_tick, hb_count, hb_dropped, out_dropped;
	uint32_t hb_col, after_hb;
	uint64_t pages_written;
	uint64_t lo, hi, cur;	/* dirtier: this CPU's page indices [lo, hi), next page */
	uint32_t gen;		/* current pass over [lo, hi) */
	uint32_t passes_done;	/* complete passes over [lo, hi) */
	uint64_t next_tsc;	/* rate control */
	/* verify results, published by writing v_seq last */
	volatile uint32_t v_seq;
	uint32_t v_mingen, v_maxgen;
	uint64_t v_pages, v_bad, v_skipped;
} __attribute__((aligned(64)));

/* ---- globals (bss is cleared by entry.S) ---- */
extern uint32_t start_info_pa;
extern uint64_t pdpt[512];
extern const char tramp_start[], tramp_end[];
extern char __image_end[];
extern void sys_halt(void);
extern const char user_halt_insn[];

uint8_t kstacks[MAX_CPUS][KSTACK_SIZE] __attribute__((section(".noinit"), aligned(16)));
static uint8_t ustacks[MAX_CPUS][USTACK_SIZE] __attribute__((section(".noinit"), aligned(16)));
static char rings[MAX_CPUS][RING_SIZE] __attribute__((section(".noinit"), aligned(64)));
static struct percpu percpu[MAX_CPUS];
static uint64_t idt[512] __attribute__((aligned(16)));
uint64_t ap_boot_rsp;
static volatile uint32_t ap_index, ap_started;

static struct config cfg;
static char cmdline[512];
uint64_t tsc_hz;
uint32_t timer_hz;
static uint64_t lapic_hz, tsc_boot;
static uint32_t lapic_src_cpuid;
static uint32_t ncpus = 1;	/* CPUs that reached ring 3 (or will) */
static uint64_t mem_total;

static struct {
	uint64_t pa, npages, first;
} ranges[MAX_RANGES];
static uint32_t nranges;
static uint64_t npages;		/* dirtier working set in pages */
static uint32_t *gens;		/* expected generation per page, 0 = never written */
static uint64_t alloc_pa;	/* bump allocator over RAM after the image */

static volatile uint32_t con_lock, con_midline;
static volatile uint32_t go, stopping, poweroff_req;
static uint32_t stop_wait;
static volatile uint32_t verify_seq;
static volatile uint32_t host_cmd_seq;
static volatile uint8_t host_cmd[16];

/* ---- small helpers usable in both rings ---- */
static inline void outb(uint16_t port, uint8_t v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

static inline void wrmsr(uint32_t msr, uint64_t v)
{
	__asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}

static inline void cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
	__asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

static inline void cpu_relax(void)
{
	__asm__ volatile("pause" ::: "memory");
}

static inline void barrier(void)
{
	__asm__ volatile("" ::: "memory");
}

static inline struct percpu *this_cpu(void)
{
	struct percpu *pc;
	__asm__ volatile("movq %%gs:0, %0" : "=r"(pc));
	return pc;
}

static inline volatile uint32_t *lapic(uint32_t reg)
{
	return (volatile uint32_t *)(LAPIC_BASE + reg);
}

static inline void outsb(uint16_t port, const char *p, uint64_t n)
{
	__asm__ volatile("rep outsb" : "+S"(p), "+c"(n) : "d"(port) : "memory");
}

void *memset(void *d, int c, size_t n)
{
	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	void *r = d;
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	return r;
}

static size_t str_len(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	return n;
}

/* Minimal formatter: %s %c %u %d %x with optional l/ll, '0' and width. */
static size_t vfmt(char *buf, size_t size, const char *f, __builtin_va_list ap)
{
	size_t n = 0;
#define PUT(ch)                                                                                    \
	do {                                                                                       \
		if (n + 1 < size)                                                                  \
			buf[n++] = (ch);                                                           \
	} while (0)
	for (; *f; f++) {
		if (*f != '%') {
			PUT(*f);
			continue;
		}
		f++;
		char pad = ' ';
		int width = 0, lng = 0;
		if (*f == '0') {
			pad = '0';
			f++;
		}
		while (*f >= '0' && *f <= '9')
			width = width * 10 + (*f++ - '0');
		while (*f == 'l') {
			lng++;
			f++;
		}
		if (*f == 's') {
			const char *s = __builtin_va_arg(ap, const char *);
			while (*s)
				PUT(*s++);
			continue;
		}
		if (*f == 'c') {
			PUT((char)__builtin_va_arg(ap, int));
			continue;
		}
		if (*f == '%') {
			PUT('%');
			continue;
		}
		uint64_t v;
		int neg = 0;
		if (*f == 'd') {
			int64_t sv = lng ? __builtin_va_arg(ap, int64_t) : __builtin_va_arg(ap, int);
			neg = sv < 0;
			v = neg ? -(uint64_t)sv : (uint64_t)sv;
		} else {
			v = lng ? __builtin_va_arg(ap, uint64_t) : __builtin_va_arg(ap, unsigned int);
		}
		unsigned base = *f == 'x' ? 16 : 10;
		char tmp[24];
		int i = 0;
		do {
			tmp[i++] = "0123456789abcdef"[v % base];
			v /= base;
		} while (v);
		if (neg)
			tmp[i++] = '-';
		while (i < width)
			tmp[i++] = pad;
		while (i)
			PUT(tmp[--i]);
	}
	buf[n] = 0;
	return n;
#undef PUT
}

/* ================================ ring 0 ================================ */

/* Direct console output from ring 0: boot errors and panics only (each byte is an exit). */
static void kputs(const char *s)
{
	outsb(COM1, s, str_len(s));
}

static void kprintf(const char *f, ...)
{
	char buf[256];
	__builtin_va_list ap;
	__builtin_va_start(ap, f);
	vfmt(buf, sizeof(buf), f, ap);
	__builtin_va_end(ap);
	kputs(buf);
}

static void __attribute__((noreturn)) triple_fault(void)
{
	struct __attribute__((packed)) {
		uint16_t limit;
		uint64_t base;
	} none = { 0, 0 };
	/* KVM's emulator (all of ring 0 here) can't do "int n" in long mode; a fault it can */
	__asm__ volatile("lidt %0; ud2" : : "m"(none));
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* Print one PANIC line and stop the machine with a triple fault (a VMM reports it as an error). */
static void __attribute__((noreturn, noinline)) panic(unsigned vec, struct intr_frame *f, uint64_t err)
{
	uint64_t cr2;
	__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
	struct percpu *pc = this_cpu();
	stopping = 1;
	/* Take the console lock, but don't wait forever for a CPU that died holding it. */
	for (int i = 0; i < 1000 && __atomic_exchange_n(&con_lock, 1, __ATOMIC_ACQUIRE); i++)
		cpu_relax();
	kprintf("\nPANIC cpu=%u vec=%u rip=0x%lx err=0x%lx cr2=0x%lx cs=0x%lx rsp=0x%lx\n",
		pc ? pc->cpu : 0, vec, f->ip, err, cr2, f->cs, f->sp);
	triple_fault();
}

#define EXC(n)                                                                                     \
	__attribute__((interrupt)) static void exc##n(struct intr_frame *f)                        \
	{                                                                                          \
		panic(n, f, 0);                                                                    \
	}
#define EXC_ERR(n)                                                                                 \
	__attribute__((interrupt)) static void exc##n(struct intr_frame *f, uword_t err)           \
	{                                                                                          \
		panic(n, f, err);                                                                  \
	}
EXC(0) EXC(1) EXC(2) EXC(3) EXC(4) EXC(5) EXC(7) EXC(9) EXC(15) EXC(16) EXC(18) EXC(19)
EXC(20) EXC(22) EXC(23) EXC(24) EXC(25) EXC(26) EXC(27) EXC(28) EXC(31)
EXC_ERR(8) EXC_ERR(10) EXC_ERR(11) EXC_ERR(12) EXC_ERR(13) EXC_ERR(14) EXC_ERR(17) EXC_ERR(21)
EXC_ERR(29) EXC_ERR(30)

/* #UD: the ud2 at user_halt_insn is ring 3's only system call, "halt until the next interrupt". */
__attribute__((interrupt)) static void exc6(struct intr_frame *f)
{
	if (f->ip != (uint64_t)user_halt_insn)
		panic(6, f, 0);
	f->ip += 2;
	__asm__ volatile("sti; hlt; cli" ::: "memory");
}

__attribute__((interrupt)) static void spurious_isr(struct intr_frame *f)
{
	(void)f;
}

/*
 * Drain this CPU's console ring to COM1. Ring 3 publishes only whole units (a heartbeat token
 * or a full line), so holding the console lock for one drain keeps lines whole across CPUs.
 */
#define ISR_SLOWPATH __attribute__((no_caller_saved_registers, noinline))
static ISR_SLOWPATH void drain(struct percpu *pc, uint32_t h, uint32_t t)
{
	if (__atomic_exchange_n(&con_lock, 1, __ATOMIC_ACQUIRE))
		return;		/* another CPU is printing: try again next tick */
	const char *r = pc->ring;
	uint32_t ti = t & (RING_SIZE - 1), hi = h & (RING_SIZE - 1);
	/* a line must start a console line even if another CPU left a heartbeat run open */
	if (con_midline && r[ti] >= 'A' && r[ti] <= 'Z')
		outb(COM1, '\n');
	if (cfg.pio_rep) {
		if (hi > ti) {
			outsb(COM1, r + ti, hi - ti);
		} else {
			outsb(COM1, r + ti, RING_SIZE - ti);
			if (hi)
				outsb(COM1, r, hi);
		}
	} else {
		for (uint32_t i = t; i != h; i++)
			outb(COM1, r[i & (RING_SIZE - 1)]);
	}
	con_midline = r[(h - 1) & (RING_SIZE - 1)] != '\n';
	pc->tail = h;
	__atomic_store_n(&con_lock, 0, __ATOMIC_RELEASE);
}

static inline int rings_empty(void)
{
	for (uint32_t i = 0; i < ncpus; i++)
		if (percpu[i].head != percpu[i].tail)
			return 0;
	return 1;
}

/* BSP, every 16 ticks: host input (one LSR read) and the power-off request. */
static ISR_SLOWPATH void bsp_tick(void)
{
	if (inb(COM1 + 5) & 1) {
		uint32_t s = host_cmd_seq;
		host_cmd[s & 15] = inb(COM1);
		host_cmd_seq = s + 1;
	}
	if (!poweroff_req)
		return;
	if (poweroff_req == 2) {
		/* no i8042 (QEMU microvm): a triple fault stops the machine (-no-reboot) */
		kputs("NOTE i8042 reset ignored: triple fault\n");
		triple_fault();
	}
	if (rings_empty() || ++stop_wait > 64) {
		outb(0x64, 0xfe);	/* i8042 reset: the VMM's "power off" */
		poweroff_req = 2;
	}
}

/* ~15 emulated instructions when there is nothing to print: keep it that way. */
__attribute__((interrupt)) static void timer_isr(struct intr_frame *f)
{
	(void)f;
	struct percpu *pc = this_cpu();
	uint64_t ticks = pc->ticks + 1;
	pc->ticks = ticks;
	uint32_t h = pc->head, t = pc->tail;
	if (h != t)
		drain(pc, h, t);
	if (pc->cpu == 0 && (ticks & 15) == 0)
		bsp_tick();
	*lapic(LAPIC_EOI) = 0;
}

static void set_gate(unsigned vec, void *handler)
{
	uint64_t a = (uint64_t)handler;
	idt[vec * 2] = (a & 0xffff) | ((uint64_t)SEL_KCODE << 16) | (0x8eULL << 40) |
		       ((a >> 16 & 0xffff) << 48);
	idt[vec * 2 + 1] = a >> 32;
}

static void build_idt(void)
{
	static void *const exc[32] = {
		exc0, exc1, exc2, exc3, exc4, exc5, exc6, exc7, exc8, exc9, exc10,
		exc11, exc12, exc13, exc14, exc15, exc16, exc17, exc18, exc19, exc20, exc21,
		exc22, exc23, exc24, exc25, exc26, exc27, exc28, exc29, exc30, exc31,
	};
	for (unsigned i = 0; i < 32; i++)
		set_gate(i, exc[i]);
	set_gate(VEC_TIMER, timer_isr);
	set_gate(VEC_SPURIOUS, spurious_isr);
}

static void user_main(struct percpu *pc);

/* Per-CPU ring-0 setup, then iretq to ring 3. Never returns. */
static void __attribute__((noreturn)) cpu_start(uint32_t cpu)
{
	struct percpu *pc = &percpu[cpu];
	pc->self = pc;
	pc->cpu = cpu;
	pc->ring = rings[cpu];
	pc->gdt[1] = 0x00af9a000000ffffULL;
	pc->gdt[2] = 0x00cf92000000ffffULL;
	pc->gdt[3] = 0x00cff2000000ffffULL;
	pc->gdt[4] = 0x00affa000000ffffULL;
	uint64_t tb = (uint64_t)pc->tss;
	pc->gdt[5] = (sizeof(pc->tss) - 1) | (tb & 0xffffff) << 16 | 0x89ULL << 40 |
		     (tb >> 24 & 0xff) << 56;
	pc->gdt[6] = tb >> 32;
	uint64_t ksp = (uint64_t)(kstacks[cpu] + KSTACK_SIZE);
	pc->tss[1] = (uint32_t)ksp;
	pc->tss[2] = ksp >> 32;
	pc->tss[25] = sizeof(pc->tss) << 16;	/* I/O bitmap offset past the end: none */

	struct __attribute__((packed)) {
		uint16_t limit;
		uint64_t base;
	} gdtr = { sizeof(pc->gdt) - 1, (uint64_t)pc->gdt }, idtr = { sizeof(idt) - 1, (uint64_t)idt };
	__asm__ volatile("lgdt %0\n"
			 "pushq %1\n"
			 "leaq 1f(%%rip), %%rax\n"
			 "pushq %%rax\n"
			 "lretq\n"
			 "1: movw %w2, %%ax\n"
			 "movw %%ax, %%ss\n"
			 "movw %w3, %%ax\n"
			 "ltr %%ax\n"
			 "lidt %4\n"
			 : : "m"(gdtr), "i"(SEL_KCODE), "i"(SEL_KDATA), "i"(SEL_TSS), "m"(idtr)
			 : "rax", "memory");
	wrmsr(0xc0000101, (uint64_t)pc);	/* GS base: per-CPU data in both rings */

	*lapic(LAPIC_SVR) = 0x100 | VEC_SPURIOUS;
	*lapic(LAPIC_TIMER_DIV) = 0xb;		/* divide by 1 */
	*lapic(LAPIC_LVT_TIMER) = VEC_TIMER | (1 << 17);	/* periodic */
	*lapic(LAPIC_TIMER_INIT) = (uint32_t)(lapic_hz / cfg.hz);

	uint64_t usp = (uint64_t)(ustacks[cpu] + USTACK_SIZE) - 8;
	__asm__ volatile("pushq %0\n"
			 "pushq %1\n"
			 "pushq $0x202\n"
			 "pushq %2\n"
			 "pushq %3\n"
			 "iretq\n"
			 : : "i"(SEL_UDATA), "r"(usp), "i"(SEL_UCODE), "r"((uint64_t)user_main), "D"(pc)
			 : "memory");
	__builtin_unreachable();
}

void ap_main(void)
{
	uint32_t cpu = ap_index;
	ap_started = 1;
	cpu_start(cpu);
}

static int str_eq(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (a[i] != b[i])
			return 0;
	return b[n] == 0;
}

/* Number with an optional unit: a duration ("ms", "s", none = s) in ms, or a plain count. */
static uint64_t parse_num(const char *v, size_t n, int duration)
{
	uint64_t x = 0;
	size_t i = 0;
	for (; i < n && v[i] >= '0' && v[i] <= '9'; i++)
		x = x * 10 + (uint64_t)(v[i] - '0');
	if (!duration)
		return x;
	if (i + 2 == n && v[i] == 'm' && v[i + 1] == 's')
		return x;
	return x * 1000;
}

static uint32_t parse_name(const char *v, size_t n, const char *const *names, uint32_t count,
			   const char *key)
{
	for (uint32_t i = 0; i < count; i++)
		if (str_eq(v, names[i], n))
			return i;
	kprintf("WARN bad value for %s\n", key);
	return 0;
}

static void parse_cmdline(void)
{
	cfg.cpus = 1;
	cfg.hz = 1000;
	cfg.hb_every = 1;
	cfg.wss_mib = 64;
	cfg.verify_ms = 1000;
	cfg.status_ms = 1000;
	cfg.fault_ms = 100;
	cfg.pio_rep = 1;
	dev_defaults();
	static const char *const pio_names[] = { "byte", "rep" };
	static const char *const disk_names[] = { "off", "verify", "bench" };
	static const char *const net_names[] = { "off", "hb" };
	const char *p = cmdline;
	while (*p) {
		while (*p == ' ')
			p++;
		const char *k = p, *eq = NULL;
		while (*p && *p != ' ') {
			if (*p == '=' && !eq)
				eq = p;
			p++;
		}
		if (!eq)
			continue;
		size_t kn = (size_t)(eq - k), vn = (size_t)(p - eq - 1);
		const char *v = eq + 1;
		if (str_eq(k, "cpus", kn))
			cfg.cpus = (uint32_t)parse_num(v, vn, 0);
		else if (str_eq(k, "hz", kn))
			cfg.hz = (uint32_t)parse_num(v, vn, 0);
		else if (str_eq(k, "hb", kn))
			cfg.hb_every = (uint32_t)parse_num(v, vn, 0);
		else if (str_eq(k, "workload", kn))
			cfg.workload = parse_name(v, vn, workload_names, 2, "workload");
		else if (str_eq(k, "wss", kn))
			cfg.wss_mib = parse_num(v, vn, 0);
		else if (str_eq(k, "rate", kn))
			cfg.rate_mibps = parse_num(v, vn, 0);
		else if (str_eq(k, "passes", kn))
			cfg.passes = parse_num(v, vn, 0);
		else if (str_eq(k, "verify", kn))
			cfg.verify_ms = parse_num(v, vn, 1);
		else if (str_eq(k, "run", kn))
			cfg.run_ms = parse_num(v, vn, 1);
		else if (str_eq(k, "status", kn))
			cfg.status_ms = parse_num(v, vn, 1);
		else if (str_eq(k, "fault", kn))
			cfg.fault = parse_name(v, vn, fault_names, 5, "fault");
		else if (str_eq(k, "fault_at", kn))
			cfg.fault_ms = parse_num(v, vn, 1);
		else if (str_eq(k, "pio", kn))
			cfg.pio_rep = parse_name(v, vn, pio_names, 2, "pio");
		else if (str_eq(k, "piobench", kn))
			cfg.piobench = (uint32_t)parse_num(v, vn, 0);
		else if (str_eq(k, "disk", kn))
			dcfg.disk = parse_name(v, vn, disk_names, 3, "disk");
		else if (str_eq(k, "disk_mib", kn))
			dcfg.disk_mib = parse_num(v, vn, 0);
		else if (str_eq(k, "disk_qd", kn))
			dcfg.disk_qd = (uint32_t)parse_num(v, vn, 0);
		else if (str_eq(k, "disk_req", kn))
			dcfg.disk_req_kib = (uint32_t)parse_num(v, vn, 0);
		else if (str_eq(k, "disk_rand", kn))
			dcfg.disk_rand_ms = parse_num(v, vn, 1);
		else if (str_eq(k, "disk_rate", kn))
			dcfg.disk_rate = parse_num(v, vn, 0);
		else if (str_eq(k, "net", kn))
			dcfg.net = parse_name(v, vn, net_names, 2, "net");
		else if (str_eq(k, "net_ms", kn))
			dcfg.net_ms = parse_num(v, vn, 0);
	}
	if (cfg.cpus < 1)
		cfg.cpus = 1;
	if (cfg.cpus > MAX_CPUS)
		cfg.cpus = MAX_CPUS;
	if (cfg.hz < 10 || cfg.hz > 10000)
		cfg.hz = 1000;
	if (cfg.hb_every < 1)
		cfg.hb_every = 1;
	if (cfg.status_ms == 0)
		cfg.status_ms = 1000;
	timer_hz = cfg.hz;
	dev_fix_config();
}

/* TSC rate: CPUID 0x40000010 (VMware/KVM timing leaf) if present, else against the LAPIC timer. */
static void calibrate(void)
{
	uint32_t a, b, c, d;
	lapic_hz = 1000000000;	/* KVM's in-kernel LAPIC timer runs at 1 GHz */
	cpuid(0x40000000, &a, &b, &c, &d);
	if (a >= 0x40000010 && a < 0x40010000) {
		cpuid(0x40000010, &a, &b, &c, &d);
		if (a && b) {
			tsc_hz = (uint64_t)a * 1000;
			lapic_hz = (uint64_t)b * 1000;
			lapic_src_cpuid = 1;
			return;
		}
	}
	*lapic(LAPIC_TIMER_DIV) = 0xb;
	*lapic(LAPIC_LVT_TIMER) = 1 << 16;	/* masked, one-shot */
	*lapic(LAPIC_TIMER_INIT) = 0xffffffff;
	uint64_t t0 = rdtsc();
	uint32_t c0 = *lapic(LAPIC_TIMER_CUR), c1;
	uint64_t t1;
	do {
		t1 = rdtsc();
		c1 = *lapic(LAPIC_TIMER_CUR);
	} while (c0 - c1 < lapic_hz / 100);	/* 10 ms */
	tsc_hz = (t1 - t0) * lapic_hz / (c0 - c1);
	*lapic(LAPIC_TIMER_INIT) = 0;
}

static int tsc_wait(volatile uint32_t *flag, uint64_t ms)
{
	uint64_t end = rdtsc() + tsc_hz / 1000 * ms;
	while (!*flag)
		if (rdtsc() > end)
			return 0;
	return 1;
}

static void send_ipi(uint32_t apic_id, uint32_t lo)
{
	*lapic(LAPIC_ICR_HI) = apic_id << 24;
	*lapic(LAPIC_ICR_LO) = lo;
}

/* INIT-SIPI-SIPI each AP in turn (APIC IDs 1..cpus-1); returns how many CPUs run. */
static uint32_t start_aps(void)
{
	memcpy((void *)TRAMPOLINE_PA, tramp_start, (size_t)(tramp_end - tramp_start));
	uint32_t bsp_id = *lapic(LAPIC_ID) >> 24;
	uint32_t n = 1;
	for (uint32_t id = 0; n < cfg.cpus && id < 256; id++) {
		if (id == bsp_id)
			continue;
		ap_index = n;
		ap_started = 0;
		ap_boot_rsp = (uint64_t)(kstacks[n] + KSTACK_SIZE);
		send_ipi(id, 0x4500);			/* INIT */
		send_ipi(id, 0x4600 | TRAMPOLINE_PA >> 12);	/* SIPI */
		if (!tsc_wait(&ap_started, 10)) {
			send_ipi(id, 0x4600 | TRAMPOLINE_PA >> 12);
			if (!tsc_wait(&ap_started, 200)) {
				kprintf("ERROR ap-timeout apic_id=%u started=%u expected=%u\n", id, n,
					cfg.cpus);
				break;
			}
		}
		n++;
	}
	return n;
}

static uint64_t alloc_pages(uint64_t n)
{
	uint64_t pa = alloc_pa;
	alloc_pa += n * 4096;
	return pa;
}

/* RAM regions from the memmap; map RAM above 4 GiB; carve the dirtier's pages and gens[]. */
static void setup_memory(const struct hvm_start_info *si)
{
	struct {
		uint64_t a, e;
	} ram[MAX_RANGES];
	uint32_t nram = 0;
	uint64_t top = 0;
	if (si->version >= 1 && si->memmap_paddr) {
		const struct hvm_memmap_entry *m = (const void *)si->memmap_paddr;
		for (uint32_t i = 0; i < si->memmap_entries && nram < MAX_RANGES; i++) {
			if (m[i].type != 1)
				continue;
			mem_total += m[i].size;
			ram[nram].a = m[i].addr;
			ram[nram].e = m[i].addr + m[i].size;
			if (ram[nram].e > top)
				top = ram[nram].e;
			nram++;
		}
	}
	if (!nram) {	/* no memmap: assume 64 MiB */
		ram[0].a = 0;
		ram[0].e = top = 64ULL << 20;
		mem_total = top;
		nram = 1;
	}
	uint64_t img_end = (uint64_t)__image_end;
	/* the first RAM after the image holds page directories and gens[] */
	for (uint32_t i = 0; i < nram; i++)
		if (ram[i].a <= img_end && ram[i].e > img_end)
			alloc_pa = img_end;
	uint32_t gib = (uint32_t)((top + (1ULL << 30) - 1) >> 30);
	if (gib > 512)
		gib = 512;
	for (uint32_t g = 4; g < gib; g++) {
		uint64_t *pd = (uint64_t *)alloc_pages(1);
		for (uint64_t i = 0; i < 512; i++)
			pd[i] = ((uint64_t)g << 30) + (i << 21) + 0x87;
		pdpt[g] = (uint64_t)pd | 7;
	}
	/* queues and buffers of the device drivers (devices.c), if they are asked for */
	uint64_t dev_pages = dev_arena_pages();
	for (uint32_t i = 0; i < nram && dev_pages; i++)
		if (ram[i].a <= alloc_pa && ram[i].e > alloc_pa &&
		    ram[i].e - alloc_pa >= (dev_pages + 16) * 4096) {
			dev_set_arena(alloc_pages(dev_pages), dev_pages);
			break;
		}
	uint64_t want = cfg.workload == WL_DIRTY ? cfg.wss_mib * 256 : 0;
	uint64_t gens_pages = (want * 4 + 4095) / 4096;
	gens = (uint32_t *)alloc_pages(gens_pages);
	for (uint32_t i = 0; i < nram && npages < want && nranges < MAX_RANGES; i++) {
		uint64_t a = ram[i].a < alloc_pa ? alloc_pa : ram[i].a;
		a = (a + 4095) & ~4095ULL;
		uint64_t e = ram[i].e & ~4095ULL;
		if (a < (1ULL << 20) || a >= e)
			continue;
		uint64_t n = (e - a) / 4096;
		if (n > want - npages)
			n = want - npages;
		ranges[nranges].pa = a;
		ranges[nranges].npages = n;
		ranges[nranges].first = npages;
		nranges++;
		npages += n;
	}
}

static void piobench(void)
{
	static const char spaces[64] = "                                                               \n";
	uint32_t n = cfg.piobench;
	uint64_t t0 = rdtsc();
	for (uint32_t i = 0; i < n; i++)
		outb(COM1, ' ');
	uint64_t t1 = rdtsc();
	for (uint32_t i = 0; i < n; i += 64)
		outsb(COM1, spaces, n - i < 64 ? n - i : 64);
	uint64_t t2 = rdtsc();
	for (uint32_t i = 0; i < n; i++)
		(void)inb(COM1 + 5);
	uint64_t t3 = rdtsc();
	kprintf("\nPIOBENCH n=%u outb_ns=%lu rep_outsb_ns=%lu inb_ns=%lu\n", n,
		(t1 - t0) * 1000000000 / tsc_hz / n, (t2 - t1) * 1000000000 / tsc_hz / n,
		(t3 - t2) * 1000000000 / tsc_hz / n);
}

void bsp_main(void)
{
	tsc_boot = rdtsc();
	const struct hvm_start_info *si = (const void *)(uint64_t)start_info_pa;
	if (start_info_pa && si->magic == 0x336ec578 && si->cmdline_paddr) {
		const char *c = (const char *)si->cmdline_paddr;
		size_t i = 0;
		for (; c[i] && i < sizeof(cmdline) - 1; i++)
			cmdline[i] = c[i];
		cmdline[i] = 0;
	} else if (!start_info_pa || si->magic != 0x336ec578) {
		kputs("\nWARN no PVH start_info: defaults\n");
	}
	parse_cmdline();
	if (start_info_pa && si->magic == 0x336ec578)
		dev_set_rsdp_hint(si->rsdp_paddr);
	build_idt();
	calibrate();
	if (start_info_pa && si->magic == 0x336ec578)
		setup_memory(si);
	else
		setup_memory(&(struct hvm_start_info){ 0 });
	if (cfg.piobench)
		piobench();
	ncpus = start_aps();
	cpu_start(0);
}

/* ================================ ring 3 ================================ */

/* Append one unit (a line or a heartbeat token) to this CPU's console ring, or drop it. */
static int con_put(struct percpu *pc, const char *s, uint32_t n)
{
	uint32_t h = pc->head;
	if (RING_SIZE - (h - pc->tail) < n)
		return -1;
	for (uint32_t i = 0; i < n; i++)
		pc->ring[(h + i) & (RING_SIZE - 1)] = s[i];
	barrier();
	pc->head = h + n;
	return 0;
}

static void vuprintf(struct percpu *pc, const char *f, __builtin_va_list ap)
{
	char buf[320];
	size_t n = 0;
	if (pc->after_hb)
		buf[n++] = '\n';
	n += vfmt(buf + n, sizeof(buf) - n - 1, f, ap);
	buf[n++] = '\n';
	if (con_put(pc, buf, (uint32_t)n) == 0) {
		pc->after_hb = 0;
		pc->hb_col = 0;
	} else {
		pc->out_dropped++;
	}
}

static void uprintf(struct percpu *pc, const char *f, ...)
{
	__builtin_va_list ap;
	__builtin_va_start(ap, f);
	vuprintf(pc, f, ap);
	__builtin_va_end(ap);
}

/* For devices.c (ring 3, CPU 0 only). */
void cpu0_printf(const char *f, ...)
{
	__builtin_va_list ap;
	__builtin_va_start(ap, f);
	vuprintf(&percpu[0], f, ap);
	__builtin_va_end(ap);
}

size_t gfmt(char *buf, size_t size, const char *f, ...)
{
	__builtin_va_list ap;
	__builtin_va_start(ap, f);
	size_t n = vfmt(buf, size, f, ap);
	__builtin_va_end(ap);
	return n;
}

uint64_t cpu0_ticks(void)
{
	return percpu[0].ticks;
}

/* A heartbeat: ring 3 saw the tick count move. One token per CPU: 'a' + cpu. */
static inline void heartbeat(struct percpu *pc)
{
	uint64_t t = pc->ticks;
	if (t - pc->last_hb_tick < cfg.hb_every)
		return;
	pc->last_hb_tick = t;
	char tok[2] = { (char)('a' + pc->cpu), '\n' };
	int eol = pc->hb_col + 1 >= HB_PER_LINE;
	if (con_put(pc, tok, eol ? 2 : 1)) {
		pc->hb_dropped++;
		return;
	}
	pc->hb_count++;
	pc->hb_col = eol ? 0 : pc->hb_col + 1;
	pc->after_hb = !eol;
}

static inline uint64_t now_ms(void)
{
	return (rdtsc() - tsc_boot) / (tsc_hz / 1000);
}

/* halt in ring 0 until the next interrupt */
static void idle_wait(struct percpu *pc)
{
	(void)pc;
	sys_halt();
}

static uint64_t page_pa(uint64_t idx)
{
	for (uint32_t i = nranges; i-- > 0;)
		if (idx >= ranges[i].first)
			return ranges[i].pa + (idx - ranges[i].first) * 4096;
	return 0;
}

static inline uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

/*
 * Page layout: q[0] = page index, q[1] = generation, q[2..510] = a pattern seeded from
 * (page, gen), q[511] = checksum over q[0..510].
 */
static void page_write(uint64_t idx, uint32_t gen)
{
	uint64_t *q = (uint64_t *)page_pa(idx);
	uint64_t v = mix64(idx * 0x9e3779b97f4a7c15ULL ^ gen), sum;
	q[0] = idx;
	q[1] = gen;
	sum = idx * 3 + gen;
	for (int i = 2; i < 511; i++) {
		q[i] = v;
		sum += v ^ (uint64_t)i;
		v += 0x9e3779b97f4a7c15ULL;
	}
	q[511] = sum;
}

static const char *page_check(uint64_t idx, uint32_t gen, uint64_t *found_gen)
{
	const uint64_t *q = (const uint64_t *)page_pa(idx);
	*found_gen = q[1];
	uint64_t sum = q[0] * 3 + q[1];
	for (int i = 2; i < 511; i++)
		sum += q[i] ^ (uint64_t)i;
	int sum_ok = sum == q[511];
	if (q[0] == idx && q[1] == gen && sum_ok) {
		uint64_t v = mix64(idx * 0x9e3779b97f4a7c15ULL ^ gen);
		for (int i = 2; i < 511; i++, v += 0x9e3779b97f4a7c15ULL)
			if (q[i] != v)
				return "corrupt";
		return NULL;
	}
	if (!sum_ok) {
		for (int i = 0; i < 512; i++)
			if (q[i])
				return "corrupt";
		return "zero";
	}
	if (q[0] != idx)
		return "wrong-page";
	return q[1] < gen ? "stale" : "ahead";
}

/* Check this CPU's pages against gens[]; publish the result for CPU 0's summary line. */
static void verify_mine(struct percpu *pc, uint32_t seq)
{
	uint32_t mingen = 0xffffffff, maxgen = 0, fails = 0;
	uint64_t checked = 0, bad = 0, skipped = 0;
	for (uint64_t p = pc->lo; p < pc->hi; p++) {
		heartbeat(pc);
		uint32_t g = gens[p];
		if (!g) {
			skipped++;
			continue;
		}
		uint64_t found;
		const char *why = page_check(p, g, &found);
		checked++;
		if (g < mingen)
			mingen = g;
		if (g > maxgen)
			maxgen = g;
		if (why) {
			bad++;
			if (fails++ < MAX_FAIL_LINES)
				uprintf(pc,
					"VERIFY FAIL page=0x%lx pa=0x%lx expected_gen=%u found_gen=%lu "
					"reason=%s cpu=%u seq=%u",
					p, page_pa(p), g, found, why, pc->cpu, seq);
		}
	}
	pc->v_pages = checked;
	pc->v_bad = bad;
	pc->v_skipped = skipped;
	pc->v_mingen = checked ? mingen : 0;
	pc->v_maxgen = maxgen;
	barrier();
	pc->v_seq = seq;
}

/* Write this CPU's next page if the rate allows; returns 0 when it had to wait instead. */
static int dirty_step(struct percpu *pc, uint64_t tsc_per_page)
{
	if (pc->lo == pc->hi || (cfg.passes && pc->passes_done >= cfg.passes))
		return 0;
	if (tsc_per_page) {
		uint64_t now = rdtsc(), burst = tsc_hz / 100;
		if (now < pc->next_tsc)
			return 0;
		if (now - pc->next_tsc > burst)
			pc->next_tsc = now - burst;	/* after a pause: catch up at most 10 ms */
		pc->next_tsc += tsc_per_page;
	}
	uint64_t p = pc->cur;
	uint32_t g = gens[p] + 1;
	page_write(p, g);
	gens[p] = g;
	pc->pages_written++;
	if (++pc->cur == pc->hi) {
		pc->cur = pc->lo;
		pc->gen++;
		pc->passes_done++;
	}
	return 1;
}

/* CPU 0's bookkeeping: status lines, verify rounds, host commands, run time, faults. */
struct control {
	uint64_t next_status, next_verify, fault_at, end_at;
	uint64_t last_status_ms, last_pages;
	uint32_t host_seen, verify_busy, verify_final, fault_done;
	uint64_t verify_start;
	const char *verify_why;
};

static uint64_t sum_pages(void)
{
	uint64_t s = 0;
	for (uint32_t i = 0; i < ncpus; i++)
		s += percpu[i].pages_written;
	return s;
}

static void print_status(struct percpu *pc, struct control *c)
{
	uint64_t ms = now_ms(), pages = sum_pages(), dt = ms - c->last_status_ms;
	uint64_t tmin = ~0ULL, drops = 0;
	for (uint32_t i = 0; i < ncpus; i++) {
		if (percpu[i].ticks < tmin)
			tmin = percpu[i].ticks;
		drops += percpu[i].hb_dropped + percpu[i].out_dropped;
	}
	uprintf(pc,
		"STATUS up_ms=%lu ticks=%lu ticks_min=%lu hb=%lu dirtied_mib=%lu rate_mibps=%lu "
		"gen=%u drops=%lu tsc=%lu",
		ms, pc->ticks, tmin, pc->hb_count, pages / 256,
		dt ? (pages - c->last_pages) * 1000 / 256 / dt : 0, pc->gen, drops, rdtsc());
	dev_status();
	c->last_status_ms = ms;
	c->last_pages = pages;
}

static void verify_start(struct control *c, const char *why)
{
	c->verify_busy = 1;
	c->verify_why = why;
	c->verify_start = rdtsc();
	__atomic_add_fetch(&verify_seq, 1, __ATOMIC_RELEASE);
}

static void verify_collect(struct percpu *pc, struct control *c)
{
	uint32_t seq = verify_seq;
	for (uint32_t i = 0; i < ncpus; i++)
		if (percpu[i].v_seq != seq)
			return;
	uint64_t pages = 0, bad = 0, skipped = 0;
	uint32_t mingen = 0xffffffff, maxgen = 0;
	for (uint32_t i = 0; i < ncpus; i++) {
		struct percpu *o = &percpu[i];
		pages += o->v_pages;
		bad += o->v_bad;
		skipped += o->v_skipped;
		if (o->v_pages && o->v_mingen < mingen)
			mingen = o->v_mingen;
		if (o->v_maxgen > maxgen)
			maxgen = o->v_maxgen;
	}
	uint64_t ms = (rdtsc() - c->verify_start) / (tsc_hz / 1000);
	uprintf(pc, "VERIFY %s seq=%u why=%s pages=%lu bad=%lu unwritten=%lu gen=%u mingen=%u ms=%lu",
		bad ? "FAIL" : "OK", seq, c->verify_why, pages, bad, skipped, maxgen,
		pages ? mingen : 0, ms);
	c->verify_busy = 0;
}

static void __attribute__((noreturn)) do_fault(struct percpu *pc)
{
	uprintf(pc, "FAULT mode=%s cpu=%u up_ms=%lu", fault_names[cfg.fault], pc->cpu, now_ms());
	stopping = 1;
	while (!rings_empty())
		idle_wait(pc);
	idle_wait(pc);	/* one more tick: the last drain has reached the UART */
	switch (cfg.fault) {
	case F_UD:
		__asm__ volatile("ud2");
		break;
	case F_PF:
		(void)*(volatile uint64_t *)0x0000008000000000ULL;	/* PML4[1]: not present */
		break;
	case F_GP:
		outb(0x80, 0);	/* port I/O at CPL3 */
		break;
	default:
		/* ring 3 can write the IDT (every page is user-accessible): wipe it and fault */
		memset(idt, 0, sizeof(idt));
		__asm__ volatile("ud2");
		break;
	}
	for (;;)
		idle_wait(pc);
}

static void control(struct percpu *pc, struct control *c)
{
	uint64_t now = rdtsc();
	if (now >= c->next_status) {
		uint64_t period = cfg.status_ms * (tsc_hz / 1000);
		print_status(pc, c);
		c->next_status += period;
		if (c->next_status <= now)	/* after a pause: no burst of catch-up lines */
			c->next_status = now + period;
	}
	if (c->verify_busy)
		verify_collect(pc, c);
	while (c->host_seen != host_cmd_seq) {
		uint8_t ch = host_cmd[c->host_seen++ & 15];
		if (ch == 'v' || ch == 'V') {
			if (!c->verify_busy)
				verify_start(c, "host");
		} else if (ch == 's' || ch == 'S') {
			print_status(pc, c);
		} else if (ch == 'q' || ch == 'Q') {
			c->end_at = now;
		}
	}
	if (cfg.verify_ms && now >= c->next_verify && !(c->end_at && now >= c->end_at)) {
		c->next_verify = now + cfg.verify_ms * (tsc_hz / 1000);
		if (!c->verify_busy && cfg.workload == WL_DIRTY)
			verify_start(c, "periodic");
	}
	if (cfg.fault != F_NONE && !c->fault_done && now >= c->fault_at)
		do_fault(pc);
	if (c->end_at && now >= c->end_at) {
		if (cfg.workload == WL_DIRTY && !c->verify_final) {
			if (c->verify_busy)
				return;
			c->verify_final = 1;
			verify_start(c, "final");
			return;
		}
		if (c->verify_busy)
			return;
		print_status(pc, c);
		uprintf(pc, "POWEROFF up_ms=%lu", now_ms());
		stopping = 1;
		poweroff_req = 1;
		for (;;)
			idle_wait(pc);
	}
}

static void user_main(struct percpu *pc)
{
	struct control ctl = { 0 };
	pc->last_hb_tick = pc->ticks;
	__atomic_store_n(&pc->in_user, 1, __ATOMIC_RELEASE);
	if (pc->cpu == 0) {
		uprintf(pc,
			"BOOT vmsnap-test-guest v1 cpus=%u/%u workload=%s wss_mib=%lu rate_mibps=%lu "
			"verify_ms=%lu run_ms=%lu status_ms=%lu hz=%u hb=%u fault=%s fault_at_ms=%lu "
			"pio=%s tsc_khz=%lu lapic_khz=%lu clock=%s mem_mib=%lu pages=%lu boot_ms=%lu",
			ncpus, cfg.cpus, workload_names[cfg.workload], cfg.wss_mib, cfg.rate_mibps,
			cfg.verify_ms, cfg.run_ms, cfg.status_ms, cfg.hz, cfg.hb_every,
			fault_names[cfg.fault], cfg.fault_ms, cfg.pio_rep ? "rep" : "byte",
			tsc_hz / 1000, lapic_hz / 1000, lapic_src_cpuid ? "cpuid" : "calibrated",
			mem_total >> 20, npages, now_ms());
		uprintf(pc, "CMDLINE %s", cmdline);
		if (npages < cfg.wss_mib * 256 && cfg.workload == WL_DIRTY)
			uprintf(pc, "WARN wss clamped to %lu MiB (RAM)", npages / 256);
		dev_init();
		for (uint32_t i = 0; i < ncpus; i++)
			while (!__atomic_load_n(&percpu[i].in_user, __ATOMIC_ACQUIRE))
				cpu_relax();
		/* split the working set over the CPUs */
		for (uint32_t i = 0; i < ncpus; i++) {
			struct percpu *o = &percpu[i];
			o->lo = npages * i / ncpus;
			o->hi = npages * (i + 1) / ncpus;
			o->cur = o->lo;
			o->gen = 1;
		}
		memset(gens, 0, npages * 4);
		uint64_t now = rdtsc(), ms = tsc_hz / 1000;
		ctl.next_status = now + cfg.status_ms * ms;
		ctl.next_verify = now + cfg.verify_ms * ms;
		ctl.fault_at = now + cfg.fault_ms * ms;
		ctl.end_at = cfg.run_ms ? now + cfg.run_ms * ms : 0;
		ctl.last_status_ms = now_ms();
		uprintf(pc, "READY cpus=%u up_ms=%lu", ncpus, now_ms());
		__atomic_store_n(&go, 1, __ATOMIC_RELEASE);
	}
	while (!__atomic_load_n(&go, __ATOMIC_ACQUIRE))
		idle_wait(pc);
	uint64_t tsc_per_page = 0;
	if (cfg.rate_mibps)
		tsc_per_page = tsc_hz * ncpus / (cfg.rate_mibps * 256);
	pc->next_tsc = rdtsc();
	for (;;) {
		if (stopping) {
			idle_wait(pc);
			continue;
		}
		heartbeat(pc);
		uint32_t seq = verify_seq;
		if (pc->v_seq != seq)
			verify_mine(pc, seq);
		int dev_busy = 0;
		if (pc->cpu == 0) {
			control(pc, &ctl);
			dev_busy = dev_step();
		}
		if (cfg.workload == WL_DIRTY) {
			if (dirty_step(pc, tsc_per_page))
				continue;
			/* ahead of the rate: halt if the next page is due after the next tick */
			if (pc->next_tsc - rdtsc() < tsc_hz / cfg.hz)
				continue;
		}
		/* CPU 0 busy-waits for a verify round so the summary is prompt */
		if (pc->cpu == 0 && ctl.verify_busy)
			continue;
		/* the disk drivers poll their queues: no halting while they have work */
		if (dev_busy)
			continue;
		idle_wait(pc);
	}
}
