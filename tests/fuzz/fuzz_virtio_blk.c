/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for virtio-blk's queue handler, driven as a guest would: through the virtio-mmio
 * registers (vm_fd -1: QueueNotify signals the queue's eventfd and the target runs the event
 * loop itself), with the rings, descriptor chains, request headers (random types, sectors,
 * lengths, flags) and data buffers all taken from the input and copied into guest RAM.
 *
 * Once per process: 64 KiB of RAM, one event loop, and two devices (an active one and a spare
 * for save/load) on each of four disks: a raw memfd, an overlay on another memfd, and a
 * read-only raw disk and overlay (files of their own). All disk files are memfds (opened
 * through /proc/self/fd), so flushes are cheap; the writable overlay is rebuilt from a
 * pristine copy when it grows past a limit.
 *
 * Per input: RAM cleared, the device reset through its Status register, features negotiated
 * as the header says, queue 0 set up with the header's size and ring addresses (aligned and
 * inside RAM unless the header asks for them raw), DRIVER_OK, then a script of driver actions.
 * After every action the loop runs until idle and these must hold:
 *   - the loop goes idle (no handler that keeps firing);
 *   - every request taken from the avail ring is completed exactly once (used index advances
 *     by what last_avail advanced) and counted exactly once in the device's statistics;
 *   - after a notify, a load or DRIVER_OK on a working queue, the device took every request
 *     the driver made available (last_avail reaches the avail index, so the used index
 *     advanced by at most the number of entries offered);
 *   - a broken ring sets DEVICE_NEEDS_RESET;
 *   - a state just saved loads into the spare device (same disk, nothing changed).
 * Accesses outside RAM are for ASan to find.
 *
 * Layout (little-endian):
 *   u8 mode: bits 0-1 disk (0 raw, 1 overlay, 2 raw read-only, 3 overlay read-only),
 *            bit 2 raw queue registers (QueueNum and addresses as given; u8 hi goes into
 *            the high word of desc, avail, used when its bit 0, 1, 2 is set),
 *            bit 3 dirty tracking on
 *   u8 qsize (QueueNum 1 << (qsize % 10), or qsize itself in raw mode)
 *   u8 features to refuse (bit 0 FLUSH, 1 DISCARD, 2 WRITE_ZEROES, 3 INDIRECT_DESC,
 *      4 VERSION_1, 5 RO, 6 SIZE_MAX/SEG_MAX/BLK_SIZE) and bit 7: also ask for MQ (not offered)
 *   u8 hi, u16 desc, u16 avail, u16 used, u16 mem_len,
 *   mem_len bytes copied to guest-physical 0,
 *   script: op bytes (op % 8), some followed by arguments:
 *     0 notify: u8 v (QueueNotify 0, or v itself when v >= 0x80)
 *     1 driver write: u16 gpa, u8 value       2 driver offers: u16 head (ring entry + idx)
 *     3 save, reset, load into the spare, go on with the spare
 *     4 register write: u8 reg, u32 value     5 register read: u8 reg (then ack interrupts)
 *     6 driver re-initialises (reset, features, queue, DRIVER_OK as in the header)
 *     7 driver write: u16 gpa, u8 n, n bytes
 *   and at the end one more notify of queue 0. Only the first MAX_OPS ops run, and of them
 *   only the first MAX_SAVES save/loads, so that every input runs in a few milliseconds.
 *
 * Seeds in tests/fuzz/corpus/fuzz_virtio_blk/: run this binary with
 * FUZZ_VIRTIO_BLK_GEN_SEEDS=DIR to regenerate them (see gen_seeds()). With
 * FUZZ_VIRTIO_BLK_VERBOSE set it logs what the device does and prints its counters per input.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/codec.h"
#include "util/log.h"
#include "vmm/evloop.h"
#include "vmm/gmem.h"
#include "vmm/virtio_blk.h"
#include "vmm/virtio_mmio.h"
#include "vmm/virtq.h"

#define VFUZZ_NAME     "fuzz_virtio_blk"
#define VFUZZ_SEED_MEM 0x6000u /* the seeds' RAM image */
#include "tests/common/virtio_fuzz.h"

#define RAM_SIZE     (64u << 10) /* = the reach of a u16 address */
#define DISK_SIZE    (128u << 10)
#define OVL_SIZE_MAX (1u << 20) /* rebuild the writable overlay past this */
#define MAX_OPS	     128	/* script ops run per input, so an input stays fast */
#define MAX_SAVES    2		/* save/load per input (each hashes the disk three times) */
#define HDR_SIZE     12
#define MMIO_BASE    0xd0000000ull

#define M_RAW_REGS 4u
#define M_DIRTY	   8u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { DISK_RAW, DISK_OVL, DISK_RO, DISK_RO_OVL, NDISKS };

struct dev {
	struct virtio_blk *b;
	struct virtio_mmio *t;
};

static struct gmem ram;
static uint64_t dirty[RAM_SIZE / 4096 / 64 + 1];
static struct evloop *loop;
static struct dev devs[NDISKS][2];
static unsigned int active[NDISKS];
/* Only raw_fd and ovl_fd are ever written: a read-only layer's hash is cached at its first use
 * (blkdev assumes nobody writes it), so the read-only disks must not share a file with them. */
static int raw_fd = -1, raw_ro_fd = -1, base_fd = -1, ovl_fd = -1, ovl_ro_fd = -1;
static char raw_path[64], raw_ro_path[64], base_path[64], ovl_path[64], ovl_ro_path[64];
static bool verbose; /* FUZZ_VIRTIO_BLK_VERBOSE: log, and print the counters per input */
static uint8_t *ovl_pristine;
static size_t ovl_pristine_len;

/* The input's header, for re-initialisation. */
struct hdr {
	uint8_t mode, qsize, refuse, hi;
	uint16_t desc, avail, used;
};

/* ---- the driver's side ---- */

/* Reset, negotiate, set up queue 0 and set DRIVER_OK as @h says. */
static void driver_init(struct dev *d, const struct hdr *h)
{
	vdrv_wr(d->t, VIRTIO_MMIO_STATUS, 0);
	uint64_t offered = vdrv_offered(d->t);
	static const uint64_t refusable[7] = {
	    1ull << VIRTIO_BLK_F_FLUSH,
	    1ull << VIRTIO_BLK_F_DISCARD,
	    1ull << VIRTIO_BLK_F_WRITE_ZEROES,
	    1ull << VIRTIO_RING_F_INDIRECT_DESC,
	    1ull << VIRTIO_F_VERSION_1,
	    1ull << VIRTIO_BLK_F_RO,
	    1ull << VIRTIO_BLK_F_SIZE_MAX | 1ull << VIRTIO_BLK_F_SEG_MAX |
		1ull << VIRTIO_BLK_F_BLK_SIZE,
	};
	uint64_t want = offered;
	for (unsigned int i = 0; i < 7; i++)
		if (h->refuse & (1u << i))
			want &= ~refusable[i];
	if (h->refuse & 0x80)
		want |= 1ull << VIRTIO_BLK_F_MQ;
	vdrv_accept(d->t, want);

	uint32_t num, desc = h->desc, avail = h->avail, used = h->used, hi = 0;
	if (h->mode & M_RAW_REGS) {
		num = h->qsize;
		hi = h->hi;
	} else {
		num = 1u << (h->qsize % 10);
		desc &= ~15u;
		avail &= ~1u;
		used &= ~3u;
	}
	vdrv_queue(d->t, 0, num, (uint64_t)(hi & 1 ? hi : 0) << 32 | desc,
		   (uint64_t)(hi & 2 ? hi : 0) << 32 | avail,
		   (uint64_t)(hi & 4 ? hi : 0) << 32 | used);
	vdrv_wr(d->t, VIRTIO_MMIO_STATUS,
		VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |
		    VIRTIO_STATUS_DRIVER_OK);
}

/* ---- invariants ---- */

struct snap {
	struct virtq q;
	uint64_t requests; /* requests the device completed, by its statistics */
};

static uint64_t requests(struct dev *d)
{
	struct virtio_blk_stats s;
	virtio_blk_get_stats(d->b, &s);
	return s.rd_ops + s.wr_ops + s.flushes + s.discards + s.write_zeroes + s.get_ids + s.ioerr +
	       s.unsupp + s.bad_chains;
}

static struct virtq queue_state(struct dev *d)
{
	virtio_mmio_lock(d->t);
	struct virtq q = *virtio_mmio_queue(d->t, 0);
	virtio_mmio_unlock(d->t);
	return q;
}

static struct snap take_snap(struct dev *d)
{
	return (struct snap){.q = queue_state(d), .requests = requests(d)};
}

/*
 * After a drain: compare with @before (taken before the actions since). @served: the device
 * was asked to look at the queue (notify, DRIVER_OK, load).
 */
static void check_after(struct dev *d, const struct snap *before, bool served)
{
	struct snap now = take_snap(d);
	uint16_t taken = (uint16_t)(now.q.last_avail - before->q.last_avail);
	uint16_t done = (uint16_t)(now.q.used_idx - before->q.used_idx);
	check(taken == done, "every request taken is completed once");
	check((uint16_t)(now.requests - before->requests) == done &&
		  now.requests - before->requests <= 0xffff,
	      "every request completed is counted once");
	uint32_t status = vdrv_rd(d->t, VIRTIO_MMIO_STATUS);
	if (now.q.broken)
		check(status & VIRTIO_STATUS_DEVICE_NEEDS_RESET,
		      "a broken ring sets DEVICE_NEEDS_RESET");
	if (served && (status & VIRTIO_STATUS_DRIVER_OK) && now.q.ready && !now.q.broken) {
		const uint8_t *avail = gmem_ptr(&ram, now.q.avail_gpa, 4);
		check(avail != NULL, "a ready queue's avail ring is in RAM");
		check(rd16(avail + 2) == now.q.last_avail,
		      "the device takes every request offered");
	}
}

/* ---- script actions ---- */

static struct dev *save_load(unsigned int disk)
{
	struct dev *from = &devs[disk][active[disk]], *to = &devs[disk][!active[disk]];
	struct snap before = take_snap(from);

	before.requests = requests(to); /* blk statistics are per device, not saved */
	vfuzz_save_load(loop, from->t, to->t, "a state just saved loads on the same disk");
	active[disk] = !active[disk];
	check_after(to, &before, true);
	return to;
}

/* ---- set-up ---- */

static int make_memfd(const char *name, char path[64])
{
	int fd = memfd_create(name, MFD_CLOEXEC);
	if (fd < 0)
		die("memfd_create");
	snprintf(path, 64, "/proc/self/fd/%d", fd);
	return fd;
}

static void fill_disk(int fd)
{
	static uint8_t buf[DISK_SIZE];
	for (uint32_t i = 0; i < DISK_SIZE; i++)
		buf[i] = (uint8_t)(i * 7 + i / 509 + 1);
	if (ftruncate(fd, 0) || pwrite(fd, buf, DISK_SIZE, 0) != DISK_SIZE)
		die("writing a disk");
}

static void put_file(int fd, const uint8_t *buf, size_t len)
{
	if (ftruncate(fd, 0) || pwrite(fd, buf, len, 0) != (ssize_t)len)
		die("writing the overlay");
}

/* An empty overlay on the base, made by blkdev_open() in a temporary directory. */
static void make_overlay(void)
{
	char dir[] = "/tmp/fuzz_virtio_blk.XXXXXX", path[96];
	struct blkdev *d;
	struct stat st;
	if (!mkdtemp(dir))
		die("mkdtemp");
	snprintf(path, sizeof(path), "%s/disk.ovl", dir);
	if (blkdev_open(&d, base_path, false, path) || blkdev_close(d))
		die("creating the overlay");
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st))
		die("opening the overlay");
	ovl_pristine_len = (size_t)st.st_size;
	ovl_pristine = malloc(ovl_pristine_len);
	if (!ovl_pristine ||
	    pread(fd, ovl_pristine, ovl_pristine_len, 0) != (ssize_t)ovl_pristine_len)
		die("reading the overlay");
	close(fd);
	unlink(path);
	rmdir(dir);
}

static void create_dev(unsigned int disk, unsigned int slot)
{
	struct virtio_blk_params p = {.index = disk * 2 + slot};
	switch (disk) {
	case DISK_RAW: p.path = raw_path; break;
	case DISK_OVL:
		p.path = base_path;
		p.overlay = ovl_path;
		break;
	case DISK_RO:
		p.path = raw_ro_path;
		p.readonly = true;
		break;
	case DISK_RO_OVL:
		p.path = base_path;
		p.overlay = ovl_ro_path;
		p.readonly = true;
		break;
	}
	struct dev *d = &devs[disk][slot];
	d->b = virtio_blk_create(&p, &ram, -1, loop, MMIO_BASE + 0x1000ull * p.index, 5 + p.index);
	if (!d->b)
		die("virtio_blk_create");
	d->t = virtio_blk_transport(d->b);
}

static void setup(void)
{
	verbose = getenv("FUZZ_VIRTIO_BLK_VERBOSE") != NULL;
	/* Guest errors are logged (rate-limited): quiet unless asked. */
	log_set_level(verbose ? LOG_DEBUG : (enum log_level) - 1);
	if (gmem_create(&ram, RAM_SIZE, GMEM_ANON))
		die("gmem_create");
	loop = evloop_create();
	if (!loop)
		die("evloop_create");
	raw_fd = make_memfd("fuzz_virtio_blk_raw", raw_path);
	raw_ro_fd = make_memfd("fuzz_virtio_blk_raw_ro", raw_ro_path);
	base_fd = make_memfd("fuzz_virtio_blk_base", base_path);
	ovl_fd = make_memfd("fuzz_virtio_blk_ovl", ovl_path);
	ovl_ro_fd = make_memfd("fuzz_virtio_blk_ovl_ro", ovl_ro_path);
	fill_disk(raw_fd);
	fill_disk(raw_ro_fd);
	fill_disk(base_fd);
	make_overlay();
	put_file(ovl_fd, ovl_pristine, ovl_pristine_len);
	put_file(ovl_ro_fd, ovl_pristine, ovl_pristine_len);
	for (unsigned int disk = 0; disk < NDISKS; disk++)
		for (unsigned int slot = 0; slot < 2; slot++)
			create_dev(disk, slot);
}

/* The writable overlay only grows: start it again from empty now and then. */
static void maybe_rebuild_overlay(void)
{
	struct stat st;
	if (fstat(ovl_fd, &st))
		die("fstat of the overlay");
	if ((uint64_t)st.st_size <= OVL_SIZE_MAX)
		return;
	for (unsigned int slot = 0; slot < 2; slot++)
		virtio_blk_destroy(devs[DISK_OVL][slot].b);
	put_file(ovl_fd, ovl_pristine, ovl_pristine_len);
	for (unsigned int slot = 0; slot < 2; slot++)
		create_dev(DISK_OVL, slot);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!loop)
		setup();
	if (size < HDR_SIZE)
		return 0;

	struct hdr h = {.mode = data[0],
			.qsize = data[1],
			.refuse = data[2],
			.hi = data[3],
			.desc = rd16(data + 4),
			.avail = rd16(data + 6),
			.used = rd16(data + 8)};
	unsigned int disk = h.mode & 3;
	if (disk == DISK_OVL)
		maybe_rebuild_overlay();
	struct dev *d = &devs[disk][active[disk]];

	/* A fresh machine: device reset, RAM cleared, then the input's RAM image. */
	size_t pos = vfuzz_fresh(loop, &ram, d->t, dirty, sizeof(dirty), h.mode & M_DIRTY, data,
				 size, HDR_SIZE, 10);

	struct snap before = take_snap(d);
	driver_init(d, &h);
	vfuzz_drain(loop);
	check_after(d, &before, true);

	unsigned int ops = 0, saves = 0;
	while (pos < size && ops++ < MAX_OPS) {
		uint8_t op = data[pos++] % 8;
		switch (op) {
		case 0:
			if (pos < size) {
				uint8_t v = data[pos++];
				before = take_snap(d);
				vdrv_wr(d->t, VIRTIO_MMIO_QUEUE_NOTIFY, v >= 0x80 ? v : 0);
				vfuzz_drain(loop);
				check_after(d, &before, v < 0x80);
			}
			break;
		case 1: vfuzz_poke(&ram, data, size, &pos); break;
		case 2:
			if (pos + 2 <= size) {
				vfuzz_offer(&ram, d->t, 0, rd16(data + pos));
				pos += 2;
			}
			break;
		case 3:
			if (saves++ < MAX_SAVES)
				d = save_load(disk);
			break;
		case 4:
			if (pos + 5 <= size) {
				before = take_snap(d);
				vfuzz_reg_access(d->t, data[pos], rd32(data + pos + 1), true);
				pos += 5;
				vfuzz_drain(loop);
				/* Unless the write reset the device (indices back to 0). */
				if (vdrv_rd(d->t, VIRTIO_MMIO_STATUS) != 0)
					check_after(d, &before, false);
			}
			break;
		case 5:
			if (pos < size) {
				vfuzz_reg_access(d->t, data[pos++], 0, false);
				vfuzz_ack_irq(d->t);
			}
			break;
		case 6:
			before = take_snap(d);
			driver_init(d, &h);
			/* The reset zeroes the indices: compare from there. */
			before.q = queue_state(d);
			before.q.last_avail = before.q.used_idx = 0;
			vfuzz_drain(loop);
			check_after(d, &before, true);
			break;
		case 7: vfuzz_write(&ram, data, size, &pos); break;
		}
	}
	before = take_snap(d);
	vdrv_wr(d->t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	vfuzz_drain(loop);
	check_after(d, &before, true);
	ram.dirty = NULL;
	if (verbose) {
		struct virtio_blk_stats st;
		struct virtq q = queue_state(d);
		virtio_blk_get_stats(d->b, &st);
		fprintf(stderr,
			"disk %u: status 0x%x, queue ready %d broken %d last_avail %u used %u; "
			"totals: rd %llu wr %llu flush %llu discard %llu wzeroes %llu get-id %llu "
			"ioerr %llu unsupp %llu bad %llu\n",
			disk, vdrv_rd(d->t, VIRTIO_MMIO_STATUS), q.ready, q.broken, q.last_avail,
			q.used_idx, (unsigned long long)st.rd_ops, (unsigned long long)st.wr_ops,
			(unsigned long long)st.flushes, (unsigned long long)st.discards,
			(unsigned long long)st.write_zeroes, (unsigned long long)st.get_ids,
			(unsigned long long)st.ioerr, (unsigned long long)st.unsupp,
			(unsigned long long)st.bad_chains);
	}
	return 0;
}

/* ---- seed generation ---- */

#define SEED_DESC  0x100u /* 32 entries: to 0x300 */
#define SEED_AVAIL 0x400u
#define SEED_USED  0x600u

static unsigned int ndesc, navail;

struct seg {
	uint32_t addr, len;
	bool write;
};

/* A chain of @n segments in the ring's table, made available. Returns the head. */
static uint16_t chain(const struct seg *sg, unsigned int n)
{
	uint16_t head = (uint16_t)ndesc;
	for (unsigned int i = 0; i < n; i++, ndesc++)
		set_desc(SEED_DESC, ndesc, sg[i].addr, sg[i].len,
			 (uint16_t)((sg[i].write ? 2 : 0) | (i + 1 < n ? 1 : 0)),
			 (uint16_t)(ndesc + 1));
	mem_le(SEED_AVAIL + 4 + 2 * navail, head, 2);
	navail++;
	mem_le(SEED_AVAIL + 2, navail, 2);
	return head;
}

/* A request header at @at. */
static void req_hdr(uint32_t at, uint32_t type, uint64_t sector)
{
	mem_le(at, type, 4);
	mem_le(at + 4, 0, 4);
	mem_le(at + 8, sector, 8);
}

static void seed_begin(struct seed *s, uint8_t mode, uint8_t refuse)
{
	s->len = 0;
	memset(mem, 0, sizeof(mem));
	ndesc = navail = 0;
	put8(s, mode);
	put8(s, 5); /* 32 entries */
	put8(s, refuse);
	put8(s, 0);
	put16(s, SEED_DESC);
	put16(s, SEED_AVAIL);
	put16(s, SEED_USED);
	put16(s, VFUZZ_SEED_MEM);
}

/* Write, read back, flush, get-id: every kind of layout for data and status. */
static void rw_requests(void)
{
	req_hdr(0x1000, VIRTIO_BLK_T_OUT, 3);
	chain((struct seg[]){{0x1000, 16, 0}, {0x2000, 512, 0}, {0x2200, 512, 0}, {0x1010, 1, 1}},
	      4);
	req_hdr(0x1020, VIRTIO_BLK_T_IN, 3);
	chain((struct seg[]){{0x1020, 16, 0}, {0x2400, 1024, 1}, {0x1030, 1, 1}}, 3);
	req_hdr(0x1040, VIRTIO_BLK_T_IN, 500); /* data and status in one descriptor */
	chain((struct seg[]){{0x1040, 16, 0}, {0x2800, 513, 1}}, 2);
	req_hdr(0x1060, VIRTIO_BLK_T_FLUSH, 0);
	chain((struct seg[]){{0x1060, 16, 0}, {0x1070, 1, 1}}, 2);
	req_hdr(0x1080, VIRTIO_BLK_T_GET_ID, 0);
	chain((struct seg[]){{0x1080, 16, 0}, {0x2c00, 20, 1}, {0x1090, 1, 1}}, 3);
}

__attribute__((constructor)) static void gen_seeds(void)
{
	const char *dir = getenv("FUZZ_VIRTIO_BLK_GEN_SEEDS");
	static struct seed s;
	if (!dir)
		return;

	/* Reads, writes, flush, get-id on the raw disk; then a second round offered again. */
	seed_begin(&s, DISK_RAW, 0);
	rw_requests();
	seed_mem(&s, 10);
	put8(&s, 0); /* notify */
	put8(&s, 0);
	put8(&s, 2); /* offer head 0 (the write) again, then notify */
	put16(&s, 0);
	put8(&s, 0);
	put8(&s, 0);
	write_seed(dir, "rw-raw", &s);

	/* The same on the overlay, write-through (FLUSH refused), dirty tracking. */
	seed_begin(&s, DISK_OVL | M_DIRTY, 1);
	rw_requests();
	seed_mem(&s, 10);
	write_seed(dir, "rw-overlay", &s);

	/* Read-only disks: the write fails, the rest works. */
	seed_begin(&s, DISK_RO, 0);
	rw_requests();
	seed_mem(&s, 10);
	write_seed(dir, "rw-ro", &s);
	seed_begin(&s, DISK_RO_OVL, 0);
	rw_requests();
	seed_mem(&s, 10);
	write_seed(dir, "rw-ro-overlay", &s);

	/* Discard and write-zeroes (two segments, UNMAP), an indirect read. */
	seed_begin(&s, DISK_RAW, 0);
	req_hdr(0x1000, VIRTIO_BLK_T_WRITE_ZEROES, 0);
	mem_le(0x1010, 8, 8); /* sector 8, 4 sectors, UNMAP */
	mem_le(0x1018, 4, 4);
	mem_le(0x101c, VIRTIO_BLK_WZ_F_UNMAP, 4);
	mem_le(0x1020, 100, 8); /* sector 100, 16 sectors */
	mem_le(0x1028, 16, 4);
	chain((struct seg[]){{0x1000, 48, 0}, {0x1030, 1, 1}}, 2);
	req_hdr(0x1040, VIRTIO_BLK_T_DISCARD, 0);
	mem_le(0x1050, 64, 8);
	mem_le(0x1058, 128, 4);
	chain((struct seg[]){{0x1040, 32, 0}, {0x1060, 1, 1}}, 2);
	req_hdr(0x1080, VIRTIO_BLK_T_IN, 8);
	set_desc(0xc00, 0, 0x1080, 16, 1, 1); /* indirect table: header, data, status */
	set_desc(0xc00, 1, 0x2000, 2048, 3, 2);
	set_desc(0xc00, 2, 0x1090, 1, 2, 0);
	chain((struct seg[]){{0xc00, 48, 0}}, 1);
	set_desc(SEED_DESC, ndesc - 1, 0xc00, 48, 4, 0);
	seed_mem(&s, 10);
	write_seed(dir, "zeroes-indirect", &s);

	/* Discard and write-zeroes a driver gets wrong (WRITE_ZEROES not negotiated), and a write
	 * of the overlay magic to the start of a raw disk (refused by blkdev). */
	seed_begin(&s, DISK_RAW, 4);
	req_hdr(0x1000, VIRTIO_BLK_T_WRITE_ZEROES, 0); /* not negotiated */
	mem_le(0x1010, 8, 8);
	mem_le(0x1018, 4, 4);
	chain((struct seg[]){{0x1000, 32, 0}, {0x1020, 1, 1}}, 2);
	req_hdr(0x1040, VIRTIO_BLK_T_DISCARD, 0); /* a flag */
	mem_le(0x1050, 8, 8);
	mem_le(0x1058, 4, 4);
	mem_le(0x105c, VIRTIO_BLK_WZ_F_UNMAP, 4);
	chain((struct seg[]){{0x1040, 32, 0}, {0x1060, 1, 1}}, 2);
	req_hdr(0x1080, VIRTIO_BLK_T_DISCARD, 0); /* 20 bytes of segments */
	mem_le(0x1090, 8, 8);
	mem_le(0x1098, 4, 4);
	chain((struct seg[]){{0x1080, 36, 0}, {0x10a8, 1, 1}}, 2);
	req_hdr(0x10c0, VIRTIO_BLK_T_DISCARD, 0); /* 33 segments */
	chain((struct seg[]){{0x10c0, 16, 0}, {0x1400, 33 * 16, 0}, {0x10d0, 1, 1}}, 3);
	req_hdr(0x10e0, VIRTIO_BLK_T_DISCARD, 0); /* past the end */
	mem_le(0x1100, DISK_SIZE / 512 - 2, 8);
	mem_le(0x1108, 4, 4);
	chain((struct seg[]){{0x10e0, 16, 0}, {0x1100, 16, 0}, {0x10f0, 1, 1}}, 3);
	req_hdr(0x1120, VIRTIO_BLK_T_OUT, 0); /* the overlay magic at sector 0 */
	memcpy(mem + 0x1800, "VMSNAPOV", 8);
	chain((struct seg[]){{0x1120, 16, 0}, {0x1800, 512, 0}, {0x1130, 1, 1}}, 3);
	seed_mem(&s, 10);
	write_seed(dir, "zeroes-errors", &s);

	/* A ring the device cannot use: the avail index more than the queue size ahead. Then the
	 * driver starts again. */
	seed_begin(&s, DISK_RAW, 0);
	rw_requests();
	mem_le(SEED_AVAIL + 2, 0x100, 2);
	seed_mem(&s, 10);
	put8(&s, 6);
	write_seed(dir, "broken", &s);

	/* The most segments a request may have (VIRTQ_MAX_IOV, all from an indirect table): a
	 * read into 1022 data buffers (overlapping: RAM is small); then one more. */
	seed_begin(&s, DISK_RAW, 0);
	req_hdr(0x1000, VIRTIO_BLK_T_IN, 0);
	set_desc(0x2000, 0, 0x1000, 16, 1, 1);
	for (unsigned int i = 1; i < VIRTQ_MAX_IOV - 1; i++)
		set_desc(0x2000, i, 0x8000, i == VIRTQ_MAX_IOV - 2 ? 48 : 16, 3, (uint16_t)(i + 1));
	set_desc(0x2000, VIRTQ_MAX_IOV - 1, 0x1010, 1, 2, 0);
	chain((struct seg[]){{0x2000, 16 * VIRTQ_MAX_IOV, 0}}, 1);
	set_desc(SEED_DESC, ndesc - 1, 0x2000, 16 * VIRTQ_MAX_IOV, 4, 0);
	chain((struct seg[]){{0x1000, 16, 0}, {0x2000, 16 * VIRTQ_MAX_IOV, 0}}, 2);
	set_desc(SEED_DESC, ndesc - 1, 0x2000, 16 * VIRTQ_MAX_IOV, 4, 0);
	seed_mem(&s, 10);
	write_seed(dir, "many-segments", &s);

	/* What a guest gets wrong: a short header, no status byte, past the end, not whole
	 * sectors, an unknown type, a buffer outside RAM, a loop, a readable after a writable. */
	seed_begin(&s, DISK_OVL, 0);
	req_hdr(0x1000, VIRTIO_BLK_T_IN, 0);
	chain((struct seg[]){{0x1000, 8, 0}, {0x1010, 1, 1}}, 2);
	req_hdr(0x1020, VIRTIO_BLK_T_FLUSH, 0);
	chain((struct seg[]){{0x1020, 16, 0}}, 1);
	req_hdr(0x1040, VIRTIO_BLK_T_IN, DISK_SIZE / 512 - 1);
	chain((struct seg[]){{0x1040, 16, 0}, {0x2000, 1024, 1}, {0x1050, 1, 1}}, 3);
	req_hdr(0x1060, VIRTIO_BLK_T_OUT, 0);
	chain((struct seg[]){{0x1060, 16, 0}, {0x2000, 100, 0}, {0x1070, 1, 1}}, 3);
	req_hdr(0x1080, 99, 0);
	chain((struct seg[]){{0x1080, 16, 0}, {0x1090, 1, 1}}, 2);
	req_hdr(0x10a0, VIRTIO_BLK_T_IN, 0);
	chain((struct seg[]){{0x10a0, 16, 0}, {0x20000, 512, 1}, {0x10b0, 1, 1}}, 3);
	uint16_t loop_head = chain((struct seg[]){{0x10a0, 16, 0}, {0x10b0, 1, 1}}, 2);
	set_desc(SEED_DESC, loop_head + 1u, 0x10b0, 1, 3, (uint16_t)(loop_head + 1u));
	chain((struct seg[]){{0x10a0, 16, 0}, {0x10b0, 1, 1}, {0x2000, 512, 0}}, 3);
	seed_mem(&s, 10);
	write_seed(dir, "errors", &s);

	/* Save and load in the middle of a sequence; register pokes; re-initialisation. */
	seed_begin(&s, DISK_RAW, 0);
	rw_requests();
	seed_mem(&s, 10);
	put8(&s, 2); /* offer the write again, save/load, notify */
	put16(&s, 0);
	put8(&s, 3);
	put8(&s, 0);
	put8(&s, 0);
	put8(&s, 5); /* read InterruptStatus */
	put8(&s, 16);
	put8(&s, 4); /* QueueReady 0: the queue stops */
	put8(&s, 5);
	put(&s, (const uint8_t[]){0, 0, 0, 0}, 4);
	put8(&s, 2);
	put16(&s, 1);
	put8(&s, 0);
	put8(&s, 0);
	put8(&s, 6); /* re-initialise: the requests again */
	put8(&s, 3);
	write_seed(dir, "saveload", &s);
	exit(0);
}
