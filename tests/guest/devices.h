/*
 * The test guest's devices (devices.c): ACPI discovery, the VM generation ID, and polling
 * virtio-mmio drivers for virtio-blk and virtio-net that run in CPU 0's ring 3. C only (not
 * included by entry.S).
 */
#ifndef GUEST_DEVICES_H
#define GUEST_DEVICES_H

#include <stddef.h>
#include <stdint.h>

enum disk_mode { DISK_OFF, DISK_VERIFY, DISK_BENCH };
enum net_mode { NET_OFF, NET_HB };

/* Parameters (README.md), filled by guest.c's command-line parser in ring 0. */
struct dev_config {
	uint32_t disk, net;
	uint64_t disk_mib;	/* 0: the mode's default (verify 16 MiB, bench the whole disk) */
	uint32_t disk_qd;	/* requests in flight */
	uint32_t disk_req_kib;	/* bench: sequential request size */
	uint64_t disk_rand_ms;	/* bench: random-read phase */
	uint64_t disk_rate;	/* verify: MiB/s written at most, 0 = as fast as possible */
	uint64_t net_ms;	/* net=hb: frame period */
};
extern struct dev_config dcfg;

/* ---- called by guest.c ---- */
void dev_defaults(void);		/* ring 0, before parsing */
void dev_fix_config(void);		/* ring 0, after parsing: clamp values */
uint64_t dev_arena_pages(void);		/* ring 0: RAM the drivers need, in pages */
void dev_set_arena(uint64_t pa, uint64_t pages);	/* ring 0: where it is (0: none) */
void dev_set_rsdp_hint(uint64_t pa);	/* ring 0: start_info.rsdp_paddr */
void dev_init(void);			/* CPU 0 ring 3, before READY: discovery and setup */
int dev_step(void);			/* CPU 0 ring 3, every loop: 1 = busy, don't halt */
void dev_status(void);			/* CPU 0 ring 3, after each STATUS line */

/* ---- provided by guest.c ---- */
void cpu0_printf(const char *f, ...) __attribute__((format(printf, 1, 2)));
size_t gfmt(char *buf, size_t size, const char *f, ...) __attribute__((format(printf, 3, 4)));
uint64_t cpu0_ticks(void);		/* CPU 0's timer ticks */
extern uint64_t tsc_hz;
extern uint32_t timer_hz;
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);

#endif
