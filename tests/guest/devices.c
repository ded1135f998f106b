/*
 * The test guest's devices: ACPI discovery (acpi_scan.c), the VM generation ID, and two
 * polling virtio-mmio drivers (virtio 1.x, register layout version 2) that run in CPU 0's
 * ring 3: virtio-blk (disk=verify|bench) and virtio-net (net=hb). See README.md.
 *
 * Every register access from ring 3 is an MMIO exit to the VMM, so registers are touched only
 * to set a device up and to notify a queue (once per batch of requests); completions are
 * found by polling the used rings in guest RAM. Interrupts are not used (the guest never
 * programs the IOAPIC, and the avail rings ask the device not to interrupt).
 */
#include <stddef.h>
#include <stdint.h>

#include "acpi_scan.h"
#include "devices.h"

struct dev_config dcfg;

static uint64_t rsdp_hint;
static uint64_t arena_pa, arena_pages, arena_cur;

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

static inline void barrier(void)
{
	__asm__ volatile("" ::: "memory");
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

static inline uint64_t tsc_ms(uint64_t dt)
{
	return dt / (tsc_hz / 1000);
}

/* ---- configuration (ring 0) ---- */

#define VQ_SIZE 128		/* queue size asked for (less if the device offers less) */
#define VQ_PAGES 3		/* descriptors, avail ring, used ring: one page each */
#define BLK_BLOCK 4096u		/* disk=verify block */
#define BLK_MAX_SLOTS 32	/* 3-descriptor chains in flight at most */
#define VERIFY_MIB_DEFAULT 16
#define VERIFY_MIB_MAX 65536	/* 64 GiB: a 64 MiB generation map */
#define NET_RX_BUFS 64
#define NET_TX_BUFS 16
#define NET_BUF 2048u
#define NET_HDR 12u		/* struct virtio_net_hdr with VERSION_1 */
#define MAX_LINES 8		/* DISK FAIL / DISK ERR lines per pass */

void dev_defaults(void)
{
	dcfg.disk_qd = 16;
	dcfg.disk_req_kib = 256;
	dcfg.disk_rand_ms = 2000;
	dcfg.net_ms = 100;
}

void dev_fix_config(void)
{
	if (dcfg.disk_qd < 1)
		dcfg.disk_qd = 1;
	if (dcfg.disk_qd > BLK_MAX_SLOTS)
		dcfg.disk_qd = BLK_MAX_SLOTS;
	dcfg.disk_req_kib &= ~3u;
	if (dcfg.disk_req_kib < 4)
		dcfg.disk_req_kib = 4;
	if (dcfg.disk_req_kib > 1024)
		dcfg.disk_req_kib = 1024;
	if (dcfg.disk == DISK_VERIFY && dcfg.disk_mib > VERIFY_MIB_MAX)
		dcfg.disk_mib = VERIFY_MIB_MAX;
	if (dcfg.net_ms < 1)
		dcfg.net_ms = 1;
}

static uint64_t verify_blocks_max(void)
{
	return (dcfg.disk_mib ? dcfg.disk_mib : VERIFY_MIB_DEFAULT) * (1048576 / BLK_BLOCK);
}

/* What the drivers take from the arena: dev_init allocates exactly this, in this order. */
uint64_t dev_arena_pages(void)
{
	uint64_t p = 0;
	if (dcfg.disk == DISK_VERIFY)
		p += VQ_PAGES + 1 + 2 * (uint64_t)dcfg.disk_qd + (verify_blocks_max() * 4 + 4095) / 4096;
	else if (dcfg.disk == DISK_BENCH)
		p += VQ_PAGES + 1 + (uint64_t)dcfg.disk_qd * dcfg.disk_req_kib / 4;
	if (dcfg.net == NET_HB)
		p += 2 * VQ_PAGES + (NET_RX_BUFS + NET_TX_BUFS) * NET_BUF / 4096;
	return p;
}

void dev_set_arena(uint64_t pa, uint64_t pages)
{
	arena_pa = arena_cur = pa;
	arena_pages = pages;
}

void dev_set_rsdp_hint(uint64_t pa)
{
	rsdp_hint = pa;
}

/* Zeroed, page-aligned memory from the arena (ring 3), or NULL. */
static void *arena_alloc(uint64_t bytes)
{
	uint64_t pages = (bytes + 4095) / 4096;
	if (!arena_pa || arena_cur + pages * 4096 > arena_pa + arena_pages * 4096)
		return NULL;
	void *p = (void *)arena_cur;
	arena_cur += pages * 4096;
	memset(p, 0, pages * 4096);
	return p;
}

/* ---- VM generation ID ---- */

static uint64_t genid_addr, genid_tick;
static uint64_t genid_val[2];
static char genid_hex[33] = "none";

static void genid_read(uint64_t v[2])
{
	const volatile uint64_t *p = (const volatile uint64_t *)genid_addr;
	v[0] = p[0];
	v[1] = p[1];
}

/* The 16 bytes in memory order, two hex digits each. */
static void genid_format(void)
{
	const uint8_t *b = (const uint8_t *)genid_val;
	for (int i = 0; i < 16; i++) {
		genid_hex[2 * i] = "0123456789abcdef"[b[i] >> 4];
		genid_hex[2 * i + 1] = "0123456789abcdef"[b[i] & 15];
	}
	genid_hex[32] = 0;
}

static void new_identity(void); /* below: the drivers' part of a new generation ID */

static void genid_poll(void)
{
	uint64_t v[2];
	genid_read(v);
	if (v[0] == genid_val[0] && v[1] == genid_val[1])
		return;
	genid_val[0] = v[0];
	genid_val[1] = v[1];
	genid_format();
	cpu0_printf("GENID %s changed", genid_hex);
	new_identity();
}

/* ---- virtio-mmio transport ---- */

#define VIRTIO_MAGIC 0x74726976u
#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_VENDOR_ID 0x00c
#define R_DEV_FEATURES 0x010
#define R_DEV_FEATURES_SEL 0x014
#define R_DRV_FEATURES 0x020
#define R_DRV_FEATURES_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_STATUS 0x070
#define R_QUEUE_DESC 0x080
#define R_QUEUE_DRIVER 0x090
#define R_QUEUE_DEVICE 0x0a0
#define R_CONFIG_GEN 0x0fc
#define R_CONFIG 0x100

#define ST_ACK 1u
#define ST_DRIVER 2u
#define ST_DRIVER_OK 4u
#define ST_FEATURES_OK 8u
#define ST_NEEDS_RESET 0x40u
#define ST_FAILED 0x80u

#define F_VERSION_1 (1ULL << 32)
#define F_BLK_SIZE_MAX (1ULL << 1)
#define F_BLK_FLUSH (1ULL << 9)
#define F_NET_MAC (1ULL << 5)

#define ID_NET 1u
#define ID_BLOCK 2u

/* Plain movs: KVM decodes the instruction of every MMIO exit. */
static inline uint32_t mmio_r32(uint64_t base, uint32_t off)
{
	uint32_t v;
	__asm__ volatile("movl (%1), %0" : "=r"(v) : "r"(base + off) : "memory");
	return v;
}

static inline uint8_t mmio_r8(uint64_t base, uint32_t off)
{
	uint8_t v;
	__asm__ volatile("movb (%1), %0" : "=q"(v) : "r"(base + off) : "memory");
	return v;
}

static inline void mmio_w32(uint64_t base, uint32_t off, uint32_t v)
{
	__asm__ volatile("movl %0, (%1)" : : "r"(v), "r"(base + off) : "memory");
}

struct vdev {
	uint64_t base;
	uint32_t id, version;
	uint64_t offered, features;
};

struct vq_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags, next;
};
#define VQ_DESC_F_NEXT 1
#define VQ_DESC_F_WRITE 2
#define VQ_AVAIL_F_NO_INTERRUPT 1
#define VQ_USED_F_NO_NOTIFY 1

struct vq_used_elem {
	uint32_t id, len;
};

struct vq {
	uint64_t regs;
	uint32_t index;
	uint16_t size, avail_idx, used_seen, pending;
	struct vq_desc *desc;
	volatile uint16_t *avail;		/* flags, idx, ring[size] */
	volatile uint16_t *used_hdr;		/* flags, idx */
	volatile struct vq_used_elem *used;	/* ring[size] */
	uint64_t kicks;
};

static void vdev_fail(struct vdev *d)
{
	mmio_w32(d->base, R_STATUS, mmio_r32(d->base, R_STATUS) | ST_FAILED);
}

/* Reset, ACKNOWLEDGE, DRIVER, negotiate @want (VERSION_1 required), FEATURES_OK. */
static const char *vdev_begin(struct vdev *d, uint64_t want)
{
	uint64_t b = d->base;
	mmio_w32(b, R_STATUS, 0);
	for (int i = 0; mmio_r32(b, R_STATUS) != 0; i++)
		if (i == 100)
			return "reset did not complete";
	mmio_w32(b, R_STATUS, ST_ACK);
	mmio_w32(b, R_STATUS, ST_ACK | ST_DRIVER);
	mmio_w32(b, R_DEV_FEATURES_SEL, 0);
	uint64_t lo = mmio_r32(b, R_DEV_FEATURES);
	mmio_w32(b, R_DEV_FEATURES_SEL, 1);
	uint64_t hi = mmio_r32(b, R_DEV_FEATURES);
	d->offered = hi << 32 | lo;
	if (!(d->offered & F_VERSION_1))
		return "device does not offer VIRTIO_F_VERSION_1";
	d->features = d->offered & (want | F_VERSION_1);
	mmio_w32(b, R_DRV_FEATURES_SEL, 0);
	mmio_w32(b, R_DRV_FEATURES, (uint32_t)d->features);
	mmio_w32(b, R_DRV_FEATURES_SEL, 1);
	mmio_w32(b, R_DRV_FEATURES, (uint32_t)(d->features >> 32));
	mmio_w32(b, R_STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK);
	if (!(mmio_r32(b, R_STATUS) & ST_FEATURES_OK))
		return "FEATURES_OK did not stick";
	return NULL;
}

static const char *vdev_driver_ok(struct vdev *d)
{
	mmio_w32(d->base, R_STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
	uint32_t st = mmio_r32(d->base, R_STATUS);
	if ((st & (ST_NEEDS_RESET | ST_FAILED)) || !(st & ST_DRIVER_OK))
		return "device refused DRIVER_OK";
	return NULL;
}

static void mmio_w64(uint64_t base, uint32_t off, uint64_t v)
{
	mmio_w32(base, off, (uint32_t)v);
	mmio_w32(base, off + 4, (uint32_t)(v >> 32));
}

/* Queue @index with up to VQ_SIZE entries (a power of two no larger than QueueNumMax). */
static const char *vq_setup(struct vq *q, struct vdev *d, uint32_t index)
{
	uint64_t b = d->base;
	mmio_w32(b, R_QUEUE_SEL, index);
	if (mmio_r32(b, R_QUEUE_READY))
		return "queue already ready after reset";
	uint32_t max = mmio_r32(b, R_QUEUE_NUM_MAX);
	if (!max)
		return "queue not available";
	uint32_t size = VQ_SIZE;
	while (size > max)
		size >>= 1;
	uint8_t *mem = arena_alloc(VQ_PAGES * 4096);
	if (!mem)
		return "no memory for the queue";
	q->regs = b;
	q->index = index;
	q->size = (uint16_t)size;
	q->desc = (struct vq_desc *)mem;
	q->avail = (volatile uint16_t *)(mem + 4096);
	q->used_hdr = (volatile uint16_t *)(mem + 8192);
	q->used = (volatile struct vq_used_elem *)(mem + 8192 + 4);
	q->avail[0] = VQ_AVAIL_F_NO_INTERRUPT;
	mmio_w32(b, R_QUEUE_NUM, size);
	mmio_w64(b, R_QUEUE_DESC, (uint64_t)q->desc);
	mmio_w64(b, R_QUEUE_DRIVER, (uint64_t)mem + 4096);
	mmio_w64(b, R_QUEUE_DEVICE, (uint64_t)mem + 8192);
	mmio_w32(b, R_QUEUE_READY, 1);
	return NULL;
}

static inline void vq_add(struct vq *q, uint16_t head)
{
	q->avail[2 + (q->avail_idx & (q->size - 1))] = head;
	q->avail_idx++;
	q->pending++;
}

/* Publish what vq_add queued; notify unless the device asked not to (@force: always). */
static void vq_kick(struct vq *q, int force)
{
	if (!q->pending && !force)
		return;
	barrier();
	q->avail[1] = q->avail_idx;
	q->pending = 0;
	__asm__ volatile("mfence" ::: "memory");
	if (force || !(q->used_hdr[0] & VQ_USED_F_NO_NOTIFY)) {
		mmio_w32(q->regs, R_QUEUE_NOTIFY, q->index);
		q->kicks++;
	}
}

/* The next used element's id (and *len), or -1 if the device has returned nothing new. */
static int vq_next_used(struct vq *q, uint32_t *len)
{
	if (q->used_seen == q->used_hdr[1])
		return -1;
	barrier();
	volatile struct vq_used_elem *e = &q->used[q->used_seen & (q->size - 1)];
	uint32_t id = e->id;
	if (len)
		*len = e->len;
	q->used_seen++;
	return (int)id;
}

/* ---- virtio-blk ---- */

#define BLK_T_IN 0u
#define BLK_T_OUT 1u
#define BLK_T_FLUSH 4u

struct blk_req {
	uint32_t type, reserved;
	uint64_t sector;
	volatile uint8_t status;
	uint8_t pad[15];
};

static struct {
	int on;
	struct vdev dev;
	struct vq q;
	uint64_t sectors;
	struct blk_req *req;	/* one per slot; slot s uses descriptors 3s..3s+2 */
	uint32_t nslots, qd, inflight;
	uint64_t free;		/* bitmask of free slots */
	uint64_t last_progress, kicked_at, last_warn;	/* CPU 0 ticks */
	uint64_t bad_used;
} blk;

static const char *const op_names[] = { "read", "write", "?", "?", "flush" };

static void blk_submit(uint32_t slot, uint32_t type, uint64_t sector, void *buf, uint32_t len)
{
	struct blk_req *r = &blk.req[slot];
	r->type = type;
	r->reserved = 0;
	r->sector = sector;
	r->status = 0xff;	/* a completion that never wrote the status shows as 255 */
	struct vq_desc *d = &blk.q.desc[slot * 3];
	uint16_t h = (uint16_t)(slot * 3);
	d[0].addr = (uint64_t)r;
	d[0].len = 16;
	d[0].flags = VQ_DESC_F_NEXT;
	d[0].next = h + 1;
	struct vq_desc *st = &d[1];
	if (len) {
		d[1].addr = (uint64_t)buf;
		d[1].len = len;
		d[1].flags = VQ_DESC_F_NEXT | (type == BLK_T_IN ? VQ_DESC_F_WRITE : 0);
		d[1].next = h + 2;
		st = &d[2];
	}
	st->addr = (uint64_t)&r->status;
	st->len = 1;
	st->flags = VQ_DESC_F_WRITE;
	st->next = 0;
	if (!blk.inflight)
		blk.last_progress = cpu0_ticks();
	vq_add(&blk.q, h);
	blk.inflight++;
	blk.free &= ~(1ULL << slot);
}

/* One completed request: its slot and status byte. 0 when nothing completed. */
static int blk_complete(uint32_t *slot, uint8_t *status)
{
	for (;;) {
		int id = vq_next_used(&blk.q, NULL);
		if (id < 0)
			return 0;
		uint32_t s = (uint32_t)id / 3;
		if (id % 3 || s >= blk.nslots || (blk.free & (1ULL << s))) {
			if (!blk.bad_used++)
				cpu0_printf("WARN disk: device returned bad used id %d", id);
			continue;
		}
		barrier();
		*slot = s;
		*status = blk.req[s].status;
		blk.free |= 1ULL << s;
		blk.inflight--;
		blk.last_progress = cpu0_ticks();
		return 1;
	}
}

/*
 * Requests outstanding and no completion for a while: notify again after 1 s (harmless if
 * spurious), warn every 10 s. Measured in CPU 0's ticks, which do not advance while the VMM
 * has the VM paused, so a save or migration does not look like a stall.
 */
static void blk_stall_check(void)
{
	if (!blk.inflight)
		return;
	uint64_t t = cpu0_ticks(), idle = t - blk.last_progress;
	if (idle >= timer_hz && blk.kicked_at != blk.last_progress) {
		vq_kick(&blk.q, 1);
		blk.kicked_at = blk.last_progress;
	}
	if (idle >= 10ULL * timer_hz && t - blk.last_warn >= 10ULL * timer_hz) {
		cpu0_printf("WARN disk stalled ms=%lu inflight=%u", idle * 1000 / timer_hz,
			    blk.inflight);
		blk.last_warn = t;
	}
}

/* ---- disk=verify ---- */

enum { V_START, V_PRE, V_WRITE, V_READ };

/* Nonces a VM remembers: a new one per generation ID (clones write different data). */
#define NONCE_HISTORY 64

static struct {
	uint64_t nblk;
	uint32_t *gen;		/* expected generation per block, 0 = unknown */
	uint8_t *wbuf, *rbuf;	/* qd blocks each */
	uint64_t nonce;			/* what this VM writes now */
	uint64_t nonces[NONCE_HISTORY];	/* every nonce this VM has written with, oldest first */
	uint32_t nnonces;
	uint64_t cursor, b0;
	uint32_t nb, phase, outstanding;
	uint32_t pass;
	uint64_t pass_tsc;
	uint64_t next_tsc, tsc_per_block;	/* disk_rate */
	uint64_t writes, reads, errors;
	uint64_t p_bad, p_err;
	uint32_t p_lines;
	uint8_t st[BLK_MAX_SLOTS];
	uint32_t newgen[BLK_MAX_SLOTS];
} dv;

/*
 * Block layout (512 x u64): q[0] sector, q[1] generation, q[2] the writer's nonce, q[3..510] a
 * pattern seeded from (sector, generation, nonce), q[511] a checksum of q[0..510]. The nonce
 * is this boot's, renewed at every new generation ID: a restored or cloned VM writes with a
 * nonce of its own, so two clones of one image write different bytes, and a block written
 * with a nonce this VM never used ("foreign") is another VM's write showing through.
 */
static void block_fill(uint64_t *q, uint64_t sector, uint32_t gen)
{
	uint64_t v = mix64(sector * 0x9e3779b97f4a7c15ULL ^ (uint64_t)gen << 40 ^ dv.nonce);
	uint64_t sum = sector * 3 + gen + dv.nonce * 5;
	q[0] = sector;
	q[1] = gen;
	q[2] = dv.nonce;
	for (int i = 3; i < 511; i++) {
		q[i] = v;
		sum += v ^ (uint64_t)i;
		v += 0x9e3779b97f4a7c15ULL;
	}
	q[511] = sum;
}

static const char *block_check(const uint64_t *q, uint64_t sector, uint32_t gen, uint64_t *found)
{
	*found = q[1];
	uint64_t sum = q[0] * 3 + q[1] + q[2] * 5;
	for (int i = 3; i < 511; i++)
		sum += q[i] ^ (uint64_t)i;
	if (sum != q[511]) {
		for (int i = 0; i < 512; i++)
			if (q[i])
				return "corrupt";
		return "zero";
	}
	int mine = 0;
	for (uint32_t k = 0; k < dv.nnonces && !mine; k++)
		mine = q[2] == dv.nonces[k];
	if (!mine)
		return "foreign";	/* written by another boot of this disk, or another clone */
	if (q[0] != sector)
		return "wrong-sector";
	if (q[1] != gen)
		return q[1] < gen ? "stale" : "ahead";
	uint64_t v = mix64(sector * 0x9e3779b97f4a7c15ULL ^ (uint64_t)gen << 40 ^ q[2]);
	for (int i = 3; i < 511; i++, v += 0x9e3779b97f4a7c15ULL)
		if (q[i] != v)
			return "corrupt";
	return NULL;
}

static void dv_err(uint8_t st, uint32_t type, uint64_t sector)
{
	dv.errors++;
	dv.p_err++;
	if (dv.p_lines++ < MAX_LINES)
		cpu0_printf("DISK ERR status=%u op=%s sector=%lu pass=%u", st, op_names[type], sector,
			    dv.pass);
}

static void dv_check(uint32_t i, uint64_t b)
{
	uint64_t sector = b * (BLK_BLOCK / 512), found;
	const char *why = block_check((const uint64_t *)(dv.rbuf + i * BLK_BLOCK), sector, dv.gen[b],
				      &found);
	if (!why)
		return;
	dv.p_bad++;
	if (dv.p_lines++ < MAX_LINES)
		cpu0_printf("DISK FAIL sector=%lu want=%u got=%lu reason=%s pass=%u", sector,
			    dv.gen[b], found, why, dv.pass);
}

static void dv_submit(uint32_t i, uint32_t type)
{
	uint64_t b = dv.b0 + i;
	uint8_t *buf = (type == BLK_T_OUT ? dv.wbuf : dv.rbuf) + i * BLK_BLOCK;
	blk_submit(i, type, b * (BLK_BLOCK / 512), buf, BLK_BLOCK);
	dv.outstanding++;
	if (type == BLK_T_OUT)
		dv.writes++;
	else
		dv.reads++;
}

/*
 * Batches of qd blocks: read the ones written before and check them (data written before a
 * save/restore or migration must still be there), write a new generation, read it back and
 * check. gen[] (guest RAM) moves with the VM, so the expectations follow it.
 */
static int dv_step(void)
{
	uint32_t slot;
	uint8_t st;
	if (!dv.pass_tsc)
		dv.pass_tsc = rdtsc();
	while (blk_complete(&slot, &st)) {
		dv.st[slot] = st;
		dv.outstanding--;
	}
	if (dv.outstanding) {
		blk_stall_check();
		return 1;
	}
	switch (dv.phase) {
	case V_START:
		if (dv.tsc_per_block) {
			uint64_t now = rdtsc(), burst = tsc_hz / 100;
			if (now < dv.next_tsc)
				return 0;	/* ahead of disk_rate: CPU 0 may halt */
			if (now - dv.next_tsc > burst)
				dv.next_tsc = now - burst;	/* after a pause: at most 10 ms of catch-up */
		}
		dv.b0 = dv.cursor;
		dv.nb = dv.nblk - dv.cursor < blk.qd ? (uint32_t)(dv.nblk - dv.cursor) : blk.qd;
		dv.next_tsc += dv.nb * dv.tsc_per_block;
		for (uint32_t i = 0; i < dv.nb; i++)
			if (dv.gen[dv.b0 + i])
				dv_submit(i, BLK_T_IN);
		dv.phase = V_PRE;
		if (dv.outstanding)
			break;
		__attribute__((fallthrough));	/* nothing written here yet */
	case V_PRE:
		for (uint32_t i = 0; i < dv.nb; i++) {
			uint64_t b = dv.b0 + i;
			if (dv.gen[b]) {
				if (dv.st[i])
					dv_err(dv.st[i], BLK_T_IN, b * (BLK_BLOCK / 512));
				else
					dv_check(i, b);
			}
			dv.newgen[i] = dv.gen[b] + 1 ? dv.gen[b] + 1 : 1;
			block_fill((uint64_t *)(dv.wbuf + i * BLK_BLOCK), b * (BLK_BLOCK / 512),
				   dv.newgen[i]);
			dv_submit(i, BLK_T_OUT);
		}
		dv.phase = V_WRITE;
		break;
	case V_WRITE:
		for (uint32_t i = 0; i < dv.nb; i++) {
			uint64_t b = dv.b0 + i;
			if (dv.st[i]) {
				dv_err(dv.st[i], BLK_T_OUT, b * (BLK_BLOCK / 512));
				dv.gen[b] = 0;	/* contents unknown now: not checked until rewritten */
			} else {
				dv.gen[b] = dv.newgen[i];
			}
			dv_submit(i, BLK_T_IN);
		}
		dv.phase = V_READ;
		break;
	case V_READ:
		for (uint32_t i = 0; i < dv.nb; i++) {
			uint64_t b = dv.b0 + i;
			if (!dv.gen[b])
				continue;
			if (dv.st[i])
				dv_err(dv.st[i], BLK_T_IN, b * (BLK_BLOCK / 512));
			else
				dv_check(i, b);
		}
		dv.cursor += dv.nb;
		dv.phase = V_START;
		if (dv.cursor >= dv.nblk) {
			uint64_t now = rdtsc();
			cpu0_printf("DISK %s pass=%u writes=%lu reads=%lu blocks=%lu bad=%lu errors=%lu ms=%lu",
				    dv.p_bad || dv.p_err ? "FAIL" : "OK", dv.pass, dv.writes, dv.reads,
				    dv.nblk, dv.p_bad, dv.p_err, tsc_ms(now - dv.pass_tsc));
			dv.pass++;
			dv.pass_tsc = now;
			dv.cursor = 0;
			dv.p_bad = dv.p_err = 0;
			dv.p_lines = 0;
		}
		return 1;
	}
	vq_kick(&blk.q, 0);
	return 1;
}

/* ---- disk=bench ---- */

enum { B_SEQW, B_FLUSH, B_SEQR, B_RAND, B_DONE };

static struct {
	uint8_t *buf;		/* qd x req bytes */
	uint64_t bytes, off;
	uint32_t req, phase;
	uint64_t t0, t_write, t_flush, t_read, t_rand;
	uint64_t rand_end, rand_ops, rng;
	uint64_t errors;
	uint32_t err_lines;
} bb;

static uint32_t free_slot(void)
{
	return (uint32_t)__builtin_ctzll(blk.free);
}

static void bench_start_phase(uint32_t phase)
{
	bb.phase = phase;
	bb.off = 0;
	bb.t0 = rdtsc();
	if (phase == B_RAND)
		bb.rand_end = bb.t0 + dcfg.disk_rand_ms * (tsc_hz / 1000);
}

static uint64_t mibps(uint64_t bytes, uint64_t tsc)
{
	uint64_t us = tsc * 1000 / (tsc_hz / 1000);
	return us ? bytes * 1000000 / us / 1048576 : 0;
}

static int bench_step(void)
{
	uint32_t slot;
	uint8_t st;
	if (!bb.t0)
		bench_start_phase(B_SEQW);
	while (blk_complete(&slot, &st)) {
		if (st) {
			bb.errors++;
			if (bb.err_lines++ < MAX_LINES)
				cpu0_printf("DISK ERR status=%u op=%s sector=%lu", st,
					    op_names[blk.req[slot].type], blk.req[slot].sector);
		}
		if (bb.phase == B_RAND)
			bb.rand_ops++;
	}
	uint64_t now;
	switch (bb.phase) {
	case B_SEQW:
	case B_SEQR:
		while (blk.inflight < blk.qd && bb.off < bb.bytes) {
			uint64_t len = bb.bytes - bb.off < bb.req ? bb.bytes - bb.off : bb.req;
			slot = free_slot();
			blk_submit(slot, bb.phase == B_SEQW ? BLK_T_OUT : BLK_T_IN, bb.off / 512,
				   bb.buf + (uint64_t)slot * bb.req, (uint32_t)len);
			bb.off += len;
		}
		if (bb.off < bb.bytes || blk.inflight)
			break;
		now = rdtsc();
		if (bb.phase == B_SEQR) {
			bb.t_read = now - bb.t0;
			bench_start_phase(B_RAND);
			return 1;
		}
		bb.t_write = now - bb.t0;
		bb.t0 = now;
		bb.phase = B_FLUSH;
		if (blk.dev.features & F_BLK_FLUSH) {
			blk_submit(free_slot(), BLK_T_FLUSH, 0, NULL, 0);
			break;
		}
		__attribute__((fallthrough));	/* no flush */
	case B_FLUSH:
		if (blk.inflight)
			break;
		bb.t_flush = rdtsc() - bb.t0;
		bench_start_phase(B_SEQR);
		return 1;
	case B_RAND:
		now = rdtsc();
		if (now < bb.rand_end) {
			uint64_t nblk = bb.bytes / 4096;
			while (blk.inflight < blk.qd && nblk) {
				bb.rng ^= bb.rng << 13;
				bb.rng ^= bb.rng >> 7;
				bb.rng ^= bb.rng << 17;
				slot = free_slot();
				blk_submit(slot, BLK_T_IN, bb.rng % nblk * 8,
					   bb.buf + (uint64_t)slot * bb.req, 4096);
			}
			break;
		}
		if (blk.inflight)
			break;
		bb.t_rand = now - bb.t0;
		{
			uint64_t wt = bb.t_write + bb.t_flush, rms = tsc_ms(bb.t_rand);
			uint64_t rus = bb.t_rand * 1000 / (tsc_hz / 1000);
			cpu0_printf("DISKBENCH seq_write_mibps=%lu seq_read_mibps=%lu rand4k_read_iops=%lu "
				    "bytes=%lu req_kib=%u qd=%u write_ms=%lu flush_ms=%lu read_ms=%lu "
				    "rand_ms=%lu rand_ops=%lu errors=%lu notifies=%lu",
				    mibps(bb.bytes, wt), mibps(bb.bytes, bb.t_read),
				    rus ? bb.rand_ops * 1000000 / rus : 0, bb.bytes, bb.req / 1024, blk.qd,
				    tsc_ms(bb.t_write), tsc_ms(bb.t_flush), tsc_ms(bb.t_read), rms,
				    bb.rand_ops, bb.errors, blk.q.kicks);
		}
		bb.phase = B_DONE;
		return 0;
	case B_DONE:
		return 0;
	}
	vq_kick(&blk.q, 0);
	blk_stall_check();
	return 1;
}

/* ---- virtio-net ---- */

static struct {
	int on;
	struct vdev dev;
	struct vq rx, tx;
	uint8_t mac[6];
	char macs[18];
	uint8_t *rxbuf, *txbuf;
	uint32_t nrx;
	uint64_t tx_free;
	uint64_t sent, rx_frames, rx_hb, tx_busy, seq;
	uint64_t next_tsc, period;
} net;

/*
 * A new generation ID: this is a new VM (restored or cloned). Disk writes from now on carry
 * a nonce of its own (older ones stay readable: they are in its history), and the NIC's MAC is
 * read again (a clone gets a new one).
 */
static void new_identity(void)
{
	if (dv.nnonces) {
		dv.nonce = mix64(genid_val[0] ^ mix64(genid_val[1] ^ rdtsc())) | 1;
		if (dv.nnonces == NONCE_HISTORY) { /* the oldest goes: rewritten long ago */
			for (uint32_t k = 1; k < NONCE_HISTORY; k++)
				dv.nonces[k - 1] = dv.nonces[k];
			dv.nnonces--;
		}
		dv.nonces[dv.nnonces++] = dv.nonce;
	}
	if (net.dev.base && (net.dev.features & F_NET_MAC)) {
		for (int i = 0; i < 6; i++)
			net.mac[i] = mmio_r8(net.dev.base, R_CONFIG + (uint32_t)i);
		gfmt(net.macs, sizeof(net.macs), "%02x:%02x:%02x:%02x:%02x:%02x", net.mac[0],
		     net.mac[1], net.mac[2], net.mac[3], net.mac[4], net.mac[5]);
		cpu0_printf("NET mac=%s changed", net.macs);
	}
}

static void net_send_hb(void)
{
	if (!net.tx_free) {
		net.tx_busy++;
		return;
	}
	uint32_t s = (uint32_t)__builtin_ctzll(net.tx_free);
	uint8_t *p = net.txbuf + s * NET_BUF;
	memset(p, 0, NET_HDR);	/* virtio_net_hdr: no offloads */
	uint8_t *f = p + NET_HDR;
	memset(f, 0xff, 6);
	memcpy(f + 6, net.mac, 6);
	f[12] = 0x88;
	f[13] = 0xb5;
	uint32_t n = 14 + (uint32_t)gfmt((char *)f + 14, NET_BUF - NET_HDR - 14,
					 "VMSNAP-HB seq=%lu mac=%s genid=%s", net.seq, net.macs,
					 genid_hex);
	if (n < 60) {
		memset(f + n, 0, 60 - n);
		n = 60;
	}
	struct vq_desc *d = &net.tx.desc[s];
	d->addr = (uint64_t)p;
	d->len = NET_HDR + n;
	d->flags = 0;
	d->next = 0;
	net.tx_free &= ~(1ULL << s);
	vq_add(&net.tx, (uint16_t)s);
	vq_kick(&net.tx, 0);
	net.seq++;
	net.sent++;
}

static void net_step(void)
{
	int id;
	uint32_t len;
	while ((id = vq_next_used(&net.tx, NULL)) >= 0)
		if ((uint32_t)id < NET_TX_BUFS)
			net.tx_free |= 1ULL << id;
	uint32_t n = 0;
	while ((id = vq_next_used(&net.rx, &len)) >= 0) {
		if ((uint32_t)id >= net.nrx)
			continue;
		const uint8_t *f = net.rxbuf + (uint32_t)id * NET_BUF + NET_HDR;
		net.rx_frames++;
		if (len >= NET_HDR + 14 + 9 && f[12] == 0x88 && f[13] == 0xb5 && f[14] == 'V' &&
		    f[20] == '-' && f[21] == 'H' && f[22] == 'B')
			net.rx_hb++;
		vq_add(&net.rx, (uint16_t)id);
		n++;
	}
	if (n)
		vq_kick(&net.rx, 0);
	uint64_t now = rdtsc();
	if (now >= net.next_tsc) {
		net_send_hb();
		net.next_tsc += net.period;
		if (net.next_tsc <= now)	/* after a pause: no burst */
			net.next_tsc = now + net.period;
	}
}

/* ---- setup ---- */

static const char *blk_setup(uint64_t base)
{
	blk.dev.base = base;
	const char *why = vdev_begin(&blk.dev, F_BLK_FLUSH | F_BLK_SIZE_MAX);
	if (why)
		return why;
	if ((why = vq_setup(&blk.q, &blk.dev, 0)))
		return why;
	blk.nslots = blk.q.size / 3 < BLK_MAX_SLOTS ? blk.q.size / 3 : BLK_MAX_SLOTS;
	blk.qd = dcfg.disk_qd < blk.nslots ? dcfg.disk_qd : blk.nslots;
	if (!blk.qd)
		return "queue too small";
	blk.free = blk.nslots == 64 ? ~0ULL : (1ULL << blk.nslots) - 1;
	if (!(blk.req = arena_alloc(4096)))
		return "no memory";
	uint32_t g0, g1;
	uint64_t lo, hi;
	do {
		g0 = mmio_r32(base, R_CONFIG_GEN);
		lo = mmio_r32(base, R_CONFIG);
		hi = mmio_r32(base, R_CONFIG + 4);
		g1 = mmio_r32(base, R_CONFIG_GEN);
	} while (g0 != g1);
	blk.sectors = hi << 32 | lo;
	uint32_t size_max = blk.dev.features & F_BLK_SIZE_MAX ? mmio_r32(base, R_CONFIG + 8) : 0;
	if (blk.sectors < BLK_BLOCK / 512)
		return "disk smaller than 4 KiB";
	uint64_t region = blk.sectors * 512;
	if (dcfg.disk == DISK_VERIFY) {
		uint64_t max = verify_blocks_max();
		dv.nblk = region / BLK_BLOCK < max ? region / BLK_BLOCK : max;
		dv.gen = arena_alloc(dv.nblk * 4 > 4096 ? dv.nblk * 4 : 4096);
		dv.wbuf = arena_alloc((uint64_t)blk.qd * BLK_BLOCK);
		dv.rbuf = arena_alloc((uint64_t)blk.qd * BLK_BLOCK);
		if (!dv.gen || !dv.wbuf || !dv.rbuf)
			return "no memory";
		dv.nonce = mix64(rdtsc()) | 1;
		dv.nonces[0] = dv.nonce;
		dv.nnonces = 1;
		if (dcfg.disk_rate)
			dv.tsc_per_block = tsc_hz / (dcfg.disk_rate * (1048576 / BLK_BLOCK));
		dv.next_tsc = rdtsc();
		dv.pass = 1;
		region = dv.nblk * BLK_BLOCK;
	} else {
		if (dcfg.disk_mib && dcfg.disk_mib * 1048576 < region)
			region = dcfg.disk_mib * 1048576;
		bb.bytes = region;
		bb.req = dcfg.disk_req_kib * 1024;
		if (size_max >= 4096 && bb.req > size_max)	/* one data descriptor per request */
			bb.req = size_max & ~4095u;
		if (!(bb.buf = arena_alloc((uint64_t)blk.qd * bb.req)))
			return "no memory";
		for (uint64_t *q = (uint64_t *)bb.buf, i = 0; i < (uint64_t)blk.qd * bb.req / 8; i++)
			q[i] = mix64(i + 1);
		bb.rng = mix64(rdtsc()) | 1;
	}
	if ((why = vdev_driver_ok(&blk.dev)))
		return why;
	cpu0_printf("DISK setup base=0x%lx sectors=%lu features=0x%lx queue=%u mode=%s region_mib=%lu "
		    "qd=%u rate_mibps=%lu",
		    base, blk.sectors, blk.dev.features, blk.q.size,
		    dcfg.disk == DISK_VERIFY ? "verify" : "bench", region >> 20, blk.qd,
		    dcfg.disk == DISK_VERIFY ? dcfg.disk_rate : 0);
	return NULL;
}

static const char *net_setup(uint64_t base)
{
	net.dev.base = base;
	const char *why = vdev_begin(&net.dev, F_NET_MAC);
	if (why)
		return why;
	if ((why = vq_setup(&net.rx, &net.dev, 0)) || (why = vq_setup(&net.tx, &net.dev, 1)))
		return why;
	net.rxbuf = arena_alloc(NET_RX_BUFS * NET_BUF);
	net.txbuf = arena_alloc(NET_TX_BUFS * NET_BUF);
	if (!net.rxbuf || !net.txbuf)
		return "no memory";
	if (net.dev.features & F_NET_MAC) {
		for (int i = 0; i < 6; i++)
			net.mac[i] = mmio_r8(base, R_CONFIG + (uint32_t)i);
	} else {	/* a locally administered unicast address of our own */
		uint64_t r = mix64(rdtsc());
		for (int i = 0; i < 6; i++)
			net.mac[i] = (uint8_t)(r >> (8 * i));
		net.mac[0] = (uint8_t)((net.mac[0] & 0xfe) | 0x02);
	}
	gfmt(net.macs, sizeof(net.macs), "%02x:%02x:%02x:%02x:%02x:%02x", net.mac[0], net.mac[1],
	     net.mac[2], net.mac[3], net.mac[4], net.mac[5]);
	net.nrx = net.rx.size < NET_RX_BUFS ? net.rx.size : NET_RX_BUFS;
	for (uint32_t i = 0; i < net.nrx; i++) {
		struct vq_desc *d = &net.rx.desc[i];
		d->addr = (uint64_t)(net.rxbuf + i * NET_BUF);
		d->len = NET_BUF;
		d->flags = VQ_DESC_F_WRITE;
		d->next = 0;
		vq_add(&net.rx, (uint16_t)i);
	}
	uint32_t ntx = net.tx.size < NET_TX_BUFS ? net.tx.size : NET_TX_BUFS;
	net.tx_free = (1ULL << ntx) - 1;
	if ((why = vdev_driver_ok(&net.dev)))
		return why;
	vq_kick(&net.rx, 0);
	net.period = dcfg.net_ms * (tsc_hz / 1000);
	net.next_tsc = rdtsc();
	cpu0_printf("NET mac=%s base=0x%lx features=0x%lx rxq=%u txq=%u rx_bufs=%u period_ms=%lu",
		    net.macs, base, net.dev.features, net.rx.size, net.tx.size, net.nrx, dcfg.net_ms);
	return NULL;
}

static const char *const disk_names[] = { "off", "verify", "bench" };

void dev_init(void)
{
	struct acpi_found f;
	acpi_discover(rsdp_hint, 0xe0000, 0x20000, &f);
	if (f.warn)
		cpu0_printf("WARN acpi: %s", f.warn);
	if (!f.rsdp)
		cpu0_printf("ACPI none");
	else
		cpu0_printf("ACPI rsdp=0x%lx virtio=%u genid_addr=0x%lx rsdp_from=%s dsdt=0x%lx ssdts=%u",
			    f.rsdp, f.nvirtio, f.genid_addr, f.rsdp_from_hint ? "start_info" : "scan",
			    f.dsdt, f.nssdt);
	if (f.genid_addr && f.genid_addr + 16 <= 0x100000000ULL) {
		genid_addr = f.genid_addr;
		genid_read(genid_val);
		genid_format();
		genid_tick = cpu0_ticks();
		cpu0_printf("GENID %s", genid_hex);
	} else if (f.genid_addr) {
		cpu0_printf("WARN genid_addr 0x%lx above 4 GiB: not mapped", f.genid_addr);
	}

	struct vdev found[ACPI_MAX_VIRTIO], *blk_dev = NULL, *net_dev = NULL;
	for (uint32_t i = 0; i < f.nvirtio; i++) {
		struct vdev *d = &found[i];
		d->base = f.virtio[i];
		uint32_t magic = mmio_r32(d->base, R_MAGIC);
		d->version = magic == VIRTIO_MAGIC ? mmio_r32(d->base, R_VERSION) : 0;
		d->id = magic == VIRTIO_MAGIC ? mmio_r32(d->base, R_DEVICE_ID) : 0;
		cpu0_printf("VIRTIO dev=%u base=0x%lx magic=0x%x version=%u id=%u", i, d->base, magic,
			    d->version, d->id);
		if (d->id == ID_BLOCK && !blk_dev)
			blk_dev = d;
		if (d->id == ID_NET && !net_dev)
			net_dev = d;
	}
	uint64_t need = dev_arena_pages();
	if (need && !arena_pa) {
		cpu0_printf("WARN devices: no RAM for %lu KiB of queues and buffers", need * 4);
		return;
	}
	static const char legacy[] = "virtio-mmio version 1 (legacy) not supported "
				     "(QEMU: -global virtio-mmio.force-legacy=false)";
	if (dcfg.disk != DISK_OFF) {
		const char *why = !blk_dev		 ? "no virtio-blk device"
				  : blk_dev->version != 2 ? legacy
							  : blk_setup(blk_dev->base);
		if (why && blk.dev.base)
			vdev_fail(&blk.dev);
		if (why)
			cpu0_printf("WARN disk=%s off: %s", disk_names[dcfg.disk], why);
		else
			blk.on = 1;
	}
	if (dcfg.net != NET_OFF) {
		const char *why = !net_dev		 ? "no virtio-net device"
				  : net_dev->version != 2 ? legacy
							  : net_setup(net_dev->base);
		if (why && net.dev.base)
			vdev_fail(&net.dev);
		if (why)
			cpu0_printf("WARN net=hb off: %s", why);
		else
			net.on = 1;
	}
}

int dev_step(void)
{
	if (genid_addr) {
		uint64_t t = cpu0_ticks();
		if (t != genid_tick) {
			genid_tick = t;
			genid_poll();
		}
	}
	int busy = 0;
	if (blk.on) {
		if (dcfg.disk == DISK_VERIFY)
			busy = dv_step();
		else if (!(busy = bench_step()))
			blk.on = 0;
	}
	if (net.on)
		net_step();
	return busy;
}

void dev_status(void)
{
	if (net.on)
		cpu0_printf("NET sent=%lu rx=%lu rx_hb=%lu tx_busy=%lu", net.sent, net.rx_frames,
			    net.rx_hb, net.tx_busy);
}
