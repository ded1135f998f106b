/* SPDX-License-Identifier: MIT */
/*
 * virtio-blk driven through its virtio-mmio registers with rings built by hand in RAM (no
 * KVM: QueueNotify signals the queue's eventfd and the test runs the loop itself), on
 * temporary disk files: config space and features, reads and writes with any descriptor
 * layout, flush, get-id, discard and write-zeroes, every error a guest can provoke, a full
 * host disk, overlays, save/load with the disk identity check.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "formats/codec.h"
#include "util/log.h"
#include "vmm/evloop.h"
#include "vmm/gmem.h"
#include "vmm/virtio_blk.h"
#include "vmm/virtio_mmio.h"
#include "tests/common/virtio_driver.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)

#define RAM_SIZE  (8ull << 20)
#define QSIZE	  128u
#define RING_BASE 0x10000ull
#define BUF_BASE  0x100000ull
#define DISK_SIZE (1 * MiB)

struct fx {
	struct gmem m;
	struct evloop *loop;
	struct virtio_blk *b;
	struct virtio_mmio *t;
	struct vdrv_ring q; /* queue 0 */
	uint64_t buf_next;
	uint64_t features; /* offered */
	char dir[64], disk[128], ov[128], ov2[128], ov3[128], mnt[128];
	bool mounted;
	uint8_t *model; /* the disk's expected contents */
};

/* ---- a driver, by hand ---- */

static uint32_t rd(struct fx *f, uint64_t off)
{
	return vdrv_rd(f->t, off);
}

static void wr(struct fx *f, uint64_t off, uint32_t v)
{
	vdrv_wr(f->t, off, v);
}

static uint64_t cfg(struct fx *f, uint32_t off, unsigned int len)
{
	uint64_t v = 0;
	for (unsigned int i = 0; i < len; i++) {
		uint8_t b;
		virtio_mmio_io(f->t, VIRTIO_MMIO_CONFIG + off + i, &b, 1, false);
		v |= (uint64_t)b << (8 * i);
	}
	return v;
}

static int drain(struct fx *f)
{
	int total = 0, r;
	while ((r = evloop_run_once(f->loop, 0)) > 0)
		total += r;
	assert_true(r >= 0);
	return total;
}

static uint64_t alloc_buf(struct fx *f, uint64_t len)
{
	uint64_t a = f->buf_next;
	f->buf_next += (len + 63) & ~63ull;
	assert_true(f->buf_next <= RAM_SIZE);
	return a;
}

static void put16(struct fx *f, uint64_t gpa, uint16_t v)
{
	assert_int_equal(gmem_write(&f->m, gpa, &v, 2), 0);
}

static uint16_t add_chain(struct fx *f, const struct vdrv_seg *s, unsigned int n)
{
	return vdrv_add_chain(&f->q, s, n);
}

static void notify(struct fx *f)
{
	wr(f, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	assert_true(evloop_run_once(f->loop, 1000) >= 1);
	drain(f);
}

static bool next_used(struct fx *f, uint32_t *id, uint32_t *len)
{
	return vdrv_next_used(&f->q, id, len);
}

static bool took_irq(struct fx *f)
{
	uint64_t v;
	if (read(virtio_mmio_irq_fd(f->t), &v, sizeof(v)) != sizeof(v))
		return false;
	return vdrv_ack(f->t) & VIRTIO_MMIO_INT_VRING;
}

/* Reset, negotiate @accept (of what is offered), set up queue 0, DRIVER_OK. */
static void driver_init(struct fx *f, uint64_t accept)
{
	assert_int_equal(rd(f, VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_BLOCK);
	wr(f, VIRTIO_MMIO_STATUS, 0);
	f->features = vdrv_offered(f->t);
	vdrv_accept(f->t, f->features & accept);
	assert_int_equal(rd(f, VIRTIO_MMIO_STATUS) & 8, 8);
	vdrv_ring_init(&f->q, &f->m, QSIZE, RING_BASE, RING_BASE + 16 * QSIZE,
		       RING_BASE + 16 * QSIZE + 0x1000, 0x3000);
	wr(f, VIRTIO_MMIO_QUEUE_SEL, 0);
	assert_int_equal(rd(f, VIRTIO_MMIO_QUEUE_NUM_MAX), VIRTIO_BLK_QUEUE_SIZE);
	vdrv_queue(f->t, 0, QSIZE, f->q.desc, f->q.avail, f->q.used);
	assert_int_equal(rd(f, VIRTIO_MMIO_QUEUE_READY), 1);
	wr(f, VIRTIO_MMIO_STATUS, 1 | 2 | 8 | 4);
	assert_int_equal(rd(f, VIRTIO_MMIO_STATUS), 1 | 2 | 8 | 4);
	drain(f);
	took_irq(f);
}

static void device_create(struct fx *f, const struct virtio_blk_params *p)
{
	f->b = virtio_blk_create(p, &f->m, -1, f->loop, 0xd0000000ull, 5);
	assert_non_null(f->b);
	f->t = virtio_blk_transport(f->b);
}

static void device_up(struct fx *f, const struct virtio_blk_params *p)
{
	device_create(f, p);
	driver_init(f, ~0ull);
}

static void device_down(struct fx *f)
{
	virtio_blk_destroy(f->b);
	f->b = NULL;
	f->t = NULL;
}

static struct virtio_blk_params params(struct fx *f)
{
	return (struct virtio_blk_params){.path = f->disk};
}

/*
 * One request: a 16-byte header descriptor (type, sector), @data split into @nsplit
 * descriptors (device-writable for IN and GET_ID), a status descriptor. Returns the status;
 * *used gets the used length. @data_gpa receives where the data buffer is.
 */
static uint8_t request(struct fx *f, uint32_t type, uint64_t sector, uint64_t data_len,
		       unsigned int nsplit, bool dev_writes, uint64_t *data_gpa, uint32_t *used)
{
	struct vdrv_seg s[16];
	unsigned int n = 0;
	uint8_t hdr[16];
	uint32_t id = 0, len = 0;

	f->buf_next = BUF_BASE;
	memset(hdr, 0, sizeof(hdr));
	memcpy(hdr, &type, 4);
	memcpy(hdr + 8, &sector, 8);
	uint64_t h = alloc_buf(f, 16);
	assert_int_equal(gmem_write(&f->m, h, hdr, 16), 0);
	s[n++] = (struct vdrv_seg){h, 16, false};
	uint64_t d = data_gpa && *data_gpa ? *data_gpa : alloc_buf(f, data_len);
	if (data_gpa)
		*data_gpa = d;
	uint64_t off = 0;
	for (unsigned int i = 0; i < nsplit && data_len; i++) {
		uint64_t l = i + 1 == nsplit ? data_len - off : data_len / nsplit;
		s[n++] = (struct vdrv_seg){d + off, (uint32_t)l, dev_writes};
		off += l;
	}
	uint64_t st = alloc_buf(f, 1);
	uint8_t ff = 0xee;
	assert_int_equal(gmem_write(&f->m, st, &ff, 1), 0);
	s[n++] = (struct vdrv_seg){st, 1, true};
	uint16_t head = add_chain(f, s, n);
	notify(f);
	assert_true(next_used(f, &id, &len));
	assert_int_equal(id, head);
	assert_false(next_used(f, &id, &len));
	if (used)
		*used = len;
	uint8_t status;
	assert_int_equal(gmem_read(&f->m, st, &status, 1), 0);
	return status;
}

/* Write @len bytes of pattern @seed at @sector through the device (and into the model). */
static void dev_write(struct fx *f, uint64_t sector, uint64_t len, unsigned int seed,
		      unsigned int nsplit)
{
	uint64_t d = BUF_BASE + 0x1000;
	uint8_t *p = gmem_ptr(&f->m, d, len);
	assert_non_null(p);
	for (uint64_t i = 0; i < len; i++)
		p[i] = (uint8_t)(i * 13 + seed + i / 509);
	memcpy(f->model + sector * 512, p, len);
	uint32_t used;
	assert_int_equal(request(f, VIRTIO_BLK_T_OUT, sector, len, nsplit, false, &d, &used),
			 VIRTIO_BLK_S_OK);
	assert_int_equal(used, 1);
	assert_true(took_irq(f));
}

/* Read the whole disk through the device and compare with the model. */
static void dev_check(struct fx *f)
{
	uint64_t d = 0;
	uint32_t used;
	memset(gmem_ptr(&f->m, BUF_BASE + 0x1000, DISK_SIZE), 0x99, DISK_SIZE);
	d = BUF_BASE + 0x1000;
	assert_int_equal(request(f, VIRTIO_BLK_T_IN, 0, DISK_SIZE, 7, true, &d, &used),
			 VIRTIO_BLK_S_OK);
	assert_int_equal(used, DISK_SIZE + 1);
	const uint8_t *p = gmem_ptr(&f->m, d, DISK_SIZE);
	for (uint64_t i = 0; i < DISK_SIZE; i++)
		if (p[i] != f->model[i])
			fail_msg("disk byte %llu reads 0x%02x, expected 0x%02x",
				 (unsigned long long)i, p[i], f->model[i]);
}

static void file_read(const char *path, void *buf, size_t len, uint64_t off)
{
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, buf, len, (off_t)off), (ssize_t)len);
	close(fd);
}

static uint8_t *make_disk(const char *path, uint64_t size, unsigned int seed)
{
	uint8_t *p = malloc(size);
	for (uint64_t i = 0; i < size; i++)
		p[i] = (uint8_t)(i * 31 + seed + i / 4093);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, p, size, 0), (ssize_t)size);
	close(fd);
	return p;
}

static int fx_setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	strcpy(f->dir, "/tmp/test_virtio_blk.XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	snprintf(f->disk, sizeof(f->disk), "%s/disk.raw", f->dir);
	snprintf(f->ov, sizeof(f->ov), "%s/a.ovl", f->dir);
	snprintf(f->ov2, sizeof(f->ov2), "%s/b.ovl", f->dir);
	snprintf(f->ov3, sizeof(f->ov3), "%s/c.ovl", f->dir);
	snprintf(f->mnt, sizeof(f->mnt), "%s/mnt", f->dir);
	f->model = make_disk(f->disk, DISK_SIZE, 1);
	if (gmem_create(&f->m, RAM_SIZE, GMEM_MEMFD))
		return -1;
	f->loop = evloop_create();
	if (!f->loop)
		return -1;
	*state = f;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *f = *state;
	char cmd[160];
	device_down(f);
	evloop_destroy(f->loop);
	gmem_free(&f->m);
	if (f->mounted)
		umount2(f->mnt, MNT_DETACH);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
	int r = system(cmd);
	free(f->model);
	free(f);
	return r ? -1 : 0;
}

/* ---- tests ---- */

static void test_config_and_features(void **state)
{
	struct fx *f = *state;
	struct virtio_blk_params p = params(f);
	device_up(f, &p);
	uint64_t want = 1ull << VIRTIO_BLK_F_SIZE_MAX | 1ull << VIRTIO_BLK_F_SEG_MAX |
			1ull << VIRTIO_BLK_F_BLK_SIZE | 1ull << VIRTIO_BLK_F_FLUSH |
			1ull << VIRTIO_BLK_F_DISCARD | 1ull << VIRTIO_BLK_F_WRITE_ZEROES;
	assert_int_equal(f->features & 0xffffffull, want);
	assert_true(f->features & (1ull << VIRTIO_F_VERSION_1));
	assert_false(f->features & (1ull << VIRTIO_BLK_F_MQ));
	assert_false(f->features & (1ull << VIRTIO_BLK_F_RO));
	assert_int_equal(cfg(f, 0, 8), DISK_SIZE / 512);
	assert_int_equal(cfg(f, 8, 4), VIRTIO_BLK_SIZE_MAX);
	assert_int_equal(cfg(f, 12, 4), VIRTIO_BLK_SEG_MAX);
	assert_int_equal(cfg(f, 20, 4), 512);
	assert_int_equal(cfg(f, 34, 2), 1);
	assert_int_equal(cfg(f, 36, 4), VIRTIO_BLK_MAX_DISCARD_SECT);
	assert_int_equal(cfg(f, 40, 4), VIRTIO_BLK_MAX_DISCARD_SEG);
	uint64_t align = cfg(f, 44, 4);
	assert_true(align >= 1 && !(align & (align - 1)));
	assert_int_equal(cfg(f, 48, 4), VIRTIO_BLK_MAX_WZEROES_SECT);
	assert_int_equal(cfg(f, 52, 4), VIRTIO_BLK_MAX_WZEROES_SEG);
	assert_int_equal(cfg(f, 56, 1), 1);
	/* A 4-byte read of capacity's low half through the transport. */
	uint32_t v;
	virtio_mmio_io(f->t, VIRTIO_MMIO_CONFIG, (uint8_t *)&v, 4, false);
	assert_int_equal(v, DISK_SIZE / 512);
	/* Writes to config are ignored. */
	v = 7;
	virtio_mmio_io(f->t, VIRTIO_MMIO_CONFIG, (uint8_t *)&v, 4, true);
	assert_int_equal(cfg(f, 0, 8), DISK_SIZE / 512);
	device_down(f);

	/* Read-only: RO, and no discard or write-zeroes. */
	p.readonly = true;
	device_up(f, &p);
	assert_true(f->features & (1ull << VIRTIO_BLK_F_RO));
	assert_false(f->features & (1ull << VIRTIO_BLK_F_DISCARD));
	assert_false(f->features & (1ull << VIRTIO_BLK_F_WRITE_ZEROES));
	device_down(f);

	/* Overlay disks align discards to their blocks. */
	p.readonly = false;
	p.overlay = f->ov;
	device_up(f, &p);
	assert_int_equal(cfg(f, 44, 4), 65536 / 512);
	device_down(f);

	/* Bad configurations are refused. */
	p.serial = "a serial of more than 20 bytes";
	assert_null(virtio_blk_create(&p, &f->m, -1, f->loop, 0xd0000000ull, 5));
	p.serial = NULL;
	p.path = f->dir; /* a directory */
	assert_null(virtio_blk_create(&p, &f->m, -1, f->loop, 0xd0000000ull, 5));
}

static void test_read_write(void **state)
{
	struct fx *f = *state;
	struct virtio_blk_params p = params(f);
	uint32_t used;
	device_up(f, &p);

	dev_check(f);
	assert_true(took_irq(f));
	dev_write(f, 3, 512, 1, 1);
	dev_write(f, 100, 64 * KiB, 2, 5);
	dev_write(f, DISK_SIZE / 512 - 8, 4096, 3, 3); /* the last sectors */
	dev_check(f);

	/* Any layout: header and data in one readable descriptor. */
	uint64_t h = BUF_BASE;
	uint8_t buf[16 + 1024];
	uint32_t type = VIRTIO_BLK_T_OUT;
	uint64_t sector = 40;
	memcpy(buf, &type, 4);
	memset(buf + 4, 0, 4);
	memcpy(buf + 8, &sector, 8);
	memset(buf + 16, 0x3c, 1024);
	assert_int_equal(gmem_write(&f->m, h, buf, sizeof(buf)), 0);
	uint64_t st = h + 0x2000;
	add_chain(
	    f,
	    (struct vdrv_seg[]){{h, 10, false}, {h + 10, sizeof(buf) - 10, false}, {st, 1, true}},
	    3);
	notify(f);
	uint32_t id;
	assert_true(next_used(f, &id, &used));
	assert_int_equal(used, 1);
	assert_int_equal(*(uint8_t *)gmem_ptr(&f->m, st, 1), VIRTIO_BLK_S_OK);
	memset(f->model + 40 * 512, 0x3c, 1024);
	/* And a read whose data and status share one writable descriptor. */
	type = VIRTIO_BLK_T_IN;
	memcpy(buf, &type, 4);
	assert_int_equal(gmem_write(&f->m, h, buf, 16), 0);
	add_chain(f, (struct vdrv_seg[]){{h, 16, false}, {h + 0x1000, 1025, true}}, 2);
	notify(f);
	assert_true(next_used(f, &id, &used));
	assert_int_equal(used, 1025);
	const uint8_t *r = gmem_ptr(&f->m, h + 0x1000, 1025);
	assert_memory_equal(r, f->model + 40 * 512, 1024);
	assert_int_equal(r[1024], VIRTIO_BLK_S_OK);
	dev_check(f);

	struct virtio_blk_stats s;
	virtio_blk_get_stats(f->b, &s);
	assert_int_equal(s.wr_ops, 4);
	assert_int_equal(s.wr_bytes, 512 + 64 * KiB + 4096 + 1024);
	assert_int_equal(s.ioerr + s.unsupp + s.bad_chains, 0);
	device_down(f);

	/* It is all in the file. */
	uint8_t *file = malloc(DISK_SIZE);
	file_read(f->disk, file, DISK_SIZE, 0);
	assert_memory_equal(file, f->model, DISK_SIZE);
	free(file);
}

static void test_flush_and_get_id(void **state)
{
	struct fx *f = *state;
	struct virtio_blk_params p = params(f);
	uint64_t d = 0;
	uint32_t used;
	p.index = 3;
	device_up(f, &p);
	assert_int_equal(request(f, VIRTIO_BLK_T_FLUSH, 0, 0, 0, false, NULL, &used),
			 VIRTIO_BLK_S_OK);
	assert_int_equal(used, 1);
	assert_int_equal(request(f, VIRTIO_BLK_T_GET_ID, 0, 20, 2, true, &d, &used),
			 VIRTIO_BLK_S_OK);
	assert_int_equal(used, 21);
	char id[20] = "vmsnap-3";
	assert_memory_equal(gmem_ptr(&f->m, d, 20), id, 20);
	/* Too small a buffer for the id. */
	d = 0;
	assert_int_equal(request(f, VIRTIO_BLK_T_GET_ID, 0, 19, 1, true, &d, &used),
			 VIRTIO_BLK_S_IOERR);
	device_down(f);

	p.serial = "01234567890123456789"; /* exactly 20: no terminator */
	device_up(f, &p);
	d = 0;
	assert_int_equal(request(f, VIRTIO_BLK_T_GET_ID, 0, 24, 1, true, &d, &used),
			 VIRTIO_BLK_S_OK);
	assert_memory_equal(gmem_ptr(&f->m, d, 20), p.serial, 20);
	struct virtio_blk_stats s;
	virtio_blk_get_stats(f->b, &s);
	assert_int_equal(s.get_ids, 1);
	device_down(f);

	/* A driver without FLUSH gets write-through, and flush requests are unsupported. */
	device_create(f, &p);
	driver_init(f, ~(1ull << VIRTIO_BLK_F_FLUSH));
	assert_int_equal(request(f, VIRTIO_BLK_T_FLUSH, 0, 0, 0, false, NULL, &used),
			 VIRTIO_BLK_S_UNSUPP);
	dev_write(f, 8, 4096, 9, 2);
	dev_check(f);
	device_down(f);

	/* Write-through is visible on an overlay: its map entry is in the file at once (with a
	 * write-back cache it waits for the flush). */
	p.overlay = f->ov;
	for (int wt = 0; wt < 2; wt++) {
		uint8_t hdr[64], ent[8];
		uint64_t map = 0, e = 0;
		device_create(f, &p);
		driver_init(f, wt ? ~(1ull << VIRTIO_BLK_F_FLUSH) : ~0ull);
		dev_write(f, 128 * (3 + wt), 512, 10, 1); /* block 3 or 4 of 64 KiB */
		file_read(f->ov, hdr, sizeof(hdr), 0);
		memcpy(&map, hdr + 40, 8);
		file_read(f->ov, ent, 8, map + 8 * (3 + (uint64_t)wt));
		memcpy(&e, ent, 8);
		if (wt)
			assert_true(e != 0);
		else
			assert_int_equal(e, 0);
		device_down(f);
	}
}

/* A discard / write-zeroes request with @n segments {sector, num, flags}. */
static uint8_t zero_req(struct fx *f, uint32_t type, const uint64_t (*segs)[3], unsigned int n)
{
	uint8_t buf[64 * 16];
	for (unsigned int i = 0; i < n; i++) {
		uint32_t num = (uint32_t)segs[i][1], flags = (uint32_t)segs[i][2];
		memcpy(buf + 16 * i, &segs[i][0], 8);
		memcpy(buf + 16 * i + 8, &num, 4);
		memcpy(buf + 16 * i + 12, &flags, 4);
	}
	uint64_t d = BUF_BASE + 0x10000;
	assert_int_equal(gmem_write(&f->m, d, buf, 16 * n), 0);
	return request(f, type, 0, 16 * n, n > 1 ? 2 : 1, false, &d, NULL);
}

static void test_discard_and_write_zeroes(void **state)
{
	struct fx *f = *state;
	struct virtio_blk_params p = params(f);
	device_up(f, &p);

	uint64_t wz[2][3] = {{10, 3, 0}, {1000, 24, VIRTIO_BLK_WZ_F_UNMAP}};
	assert_int_equal(zero_req(f, VIRTIO_BLK_T_WRITE_ZEROES, wz, 2), VIRTIO_BLK_S_OK);
	memset(f->model + 10 * 512, 0, 3 * 512);
	memset(f->model + 1000 * 512, 0, 24 * 512);
	dev_check(f);
	/* Discard: the raw file punches a hole, which reads as zeros. */
	uint64_t dc[1][3] = {{256, 128, 0}};
	assert_int_equal(zero_req(f, VIRTIO_BLK_T_DISCARD, dc, 1), VIRTIO_BLK_S_OK);
	uint8_t sec[512];
	file_read(f->disk, sec, 512, 256 * 512);
	if (sec[0] == 0)
		memset(f->model + 256 * 512, 0, 128 * 512);
	dev_check(f);

	/* Refusals: each changes nothing. */
	uint64_t unmap[1][3] = {{500, 8, VIRTIO_BLK_WZ_F_UNMAP}};
	assert_int_equal(zero_req(f, VIRTIO_BLK_T_DISCARD, unmap, 1), VIRTIO_BLK_S_UNSUPP);
	uint64_t flag[1][3] = {{500, 8, 2}};
	assert_int_equal(zero_req(f, VIRTIO_BLK_T_WRITE_ZEROES, flag, 1), VIRTIO_BLK_S_UNSUPP);
	uint64_t past[2][3] = {{500, 8, 0}, {DISK_SIZE / 512 - 4, 8, 0}};
	assert_int_equal(zero_req(f, VIRTIO_BLK_T_WRITE_ZEROES, past, 2), VIRTIO_BLK_S_IOERR);
	uint64_t wrap[1][3] = {{UINT64_MAX - 2, 8, 0}};
	assert_int_equal(zero_req(f, VIRTIO_BLK_T_DISCARD, wrap, 1), VIRTIO_BLK_S_IOERR);
	uint64_t big[1][3] = {{0, VIRTIO_BLK_MAX_WZEROES_SECT + 1ull, 0}};
	assert_int_equal(zero_req(f, VIRTIO_BLK_T_WRITE_ZEROES, big, 1), VIRTIO_BLK_S_IOERR);
	uint64_t many[VIRTIO_BLK_MAX_DISCARD_SEG + 1][3];
	for (unsigned int i = 0; i <= VIRTIO_BLK_MAX_DISCARD_SEG; i++) {
		many[i][0] = 600 + i;
		many[i][1] = 1;
		many[i][2] = 0;
	}
	assert_int_equal(zero_req(f, VIRTIO_BLK_T_DISCARD, many, VIRTIO_BLK_MAX_DISCARD_SEG + 1),
			 VIRTIO_BLK_S_IOERR);
	assert_int_equal(zero_req(f, VIRTIO_BLK_T_WRITE_ZEROES, many, VIRTIO_BLK_MAX_WZEROES_SEG),
			 VIRTIO_BLK_S_OK);
	memset(f->model + 600 * 512, 0, VIRTIO_BLK_MAX_WZEROES_SEG * 512);
	/* Segments not a multiple of 16 bytes. */
	uint64_t d = BUF_BASE + 0x10000;
	assert_int_equal(request(f, VIRTIO_BLK_T_WRITE_ZEROES, 0, 20, 1, false, &d, NULL),
			 VIRTIO_BLK_S_IOERR);
	dev_check(f);
	device_down(f);

	/* The per-segment limit, on a disk large enough to hold more than it. */
	char big_disk[160];
	snprintf(big_disk, sizeof(big_disk), "%s/big.raw", f->dir);
	int fd = open(big_disk, O_RDWR | O_CREAT, 0644);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)(VIRTIO_BLK_MAX_WZEROES_SECT + 8ull) * 512), 0);
	close(fd);
	struct virtio_blk_params pb = {.path = big_disk};
	device_up(f, &pb);
	assert_int_equal(zero_req(f, VIRTIO_BLK_T_WRITE_ZEROES, big, 1), VIRTIO_BLK_S_IOERR);
	uint64_t bigd[1][3] = {{0, VIRTIO_BLK_MAX_DISCARD_SECT + 1ull, 0}};
	assert_int_equal(zero_req(f, VIRTIO_BLK_T_DISCARD, bigd, 1), VIRTIO_BLK_S_IOERR);
	bigd[0][1] = VIRTIO_BLK_MAX_DISCARD_SECT;
	assert_int_equal(zero_req(f, VIRTIO_BLK_T_DISCARD, bigd, 1), VIRTIO_BLK_S_OK);
	device_down(f);

	/* Not negotiated: unsupported. */
	device_create(f, &p);
	driver_init(f, ~(1ull << VIRTIO_BLK_F_DISCARD | 1ull << VIRTIO_BLK_F_WRITE_ZEROES));
	assert_int_equal(zero_req(f, VIRTIO_BLK_T_WRITE_ZEROES, wz, 1), VIRTIO_BLK_S_UNSUPP);
	assert_int_equal(zero_req(f, VIRTIO_BLK_T_DISCARD, dc, 1), VIRTIO_BLK_S_UNSUPP);
	dev_check(f);
}

static void test_request_errors(void **state)
{
	struct fx *f = *state;
	struct virtio_blk_params p = params(f);
	uint64_t d;
	uint32_t used, id;
	device_up(f, &p);
	const uint64_t last = DISK_SIZE / 512;

	/* Out of range: past the end, straddling it, wrapping around. */
	d = 0;
	assert_int_equal(request(f, VIRTIO_BLK_T_IN, last, 512, 1, true, &d, &used),
			 VIRTIO_BLK_S_IOERR);
	assert_int_equal(used, 513);
	d = 0;
	assert_int_equal(request(f, VIRTIO_BLK_T_OUT, last - 1, 1024, 1, false, &d, &used),
			 VIRTIO_BLK_S_IOERR);
	d = 0;
	assert_int_equal(request(f, VIRTIO_BLK_T_IN, UINT64_MAX / 256, 1024, 1, true, &d, NULL),
			 VIRTIO_BLK_S_IOERR);
	/* Not whole sectors. */
	d = 0;
	assert_int_equal(request(f, VIRTIO_BLK_T_OUT, 0, 100, 1, false, &d, NULL),
			 VIRTIO_BLK_S_IOERR);
	d = 0;
	assert_int_equal(request(f, VIRTIO_BLK_T_IN, 0, 513, 2, true, &d, NULL),
			 VIRTIO_BLK_S_IOERR);
	/* Unknown types, and GET_LIFETIME (10), not offered. */
	assert_int_equal(request(f, 99, 0, 0, 0, false, NULL, NULL), VIRTIO_BLK_S_UNSUPP);
	d = 0;
	assert_int_equal(request(f, 10, 0, 16, 1, true, &d, NULL), VIRTIO_BLK_S_UNSUPP);

	/* A header shorter than 16 bytes. */
	uint64_t h = BUF_BASE, st = BUF_BASE + 0x100;
	*(uint8_t *)gmem_ptr(&f->m, st, 1) = 0xee;
	add_chain(f, (struct vdrv_seg[]){{h, 8, false}, {st, 1, true}}, 2);
	notify(f);
	assert_true(next_used(f, &id, &used));
	assert_int_equal(*(uint8_t *)gmem_ptr(&f->m, st, 1), VIRTIO_BLK_S_IOERR);
	/* No writable byte at all: completed with nothing written. */
	uint32_t hdr[4] = {VIRTIO_BLK_T_FLUSH, 0, 0, 0};
	assert_int_equal(gmem_write(&f->m, h, hdr, 16), 0);
	add_chain(f, (struct vdrv_seg[]){{h, 16, false}}, 1);
	notify(f);
	assert_true(next_used(f, &id, &used));
	assert_int_equal(used, 0);
	/* A bad chain: a buffer outside RAM. The head comes back with length 0. */
	uint16_t head =
	    add_chain(f, (struct vdrv_seg[]){{h, 16, false}, {RAM_SIZE + 4096, 512, true}}, 2);
	notify(f);
	assert_true(next_used(f, &id, &used));
	assert_int_equal(id, head);
	assert_int_equal(used, 0);
	assert_true(took_irq(f));

	/* The device goes on. */
	dev_write(f, 5, 1024, 4, 2);
	dev_check(f);
	struct virtio_blk_stats s;
	virtio_blk_get_stats(f->b, &s);
	assert_int_equal(s.ioerr, 6);
	assert_int_equal(s.unsupp, 2);
	assert_int_equal(s.bad_chains, 2);
	device_down(f);

	/* Read-only: writes and zeroing fail, reads and flushes work, the file is untouched. */
	p.readonly = true;
	device_up(f, &p);
	d = BUF_BASE + 0x1000;
	memset(gmem_ptr(&f->m, d, 4096), 0x42, 4096);
	assert_int_equal(request(f, VIRTIO_BLK_T_OUT, 0, 4096, 1, false, &d, NULL),
			 VIRTIO_BLK_S_IOERR);
	uint64_t wz[1][3] = {{0, 8, 0}};
	assert_int_equal(zero_req(f, VIRTIO_BLK_T_WRITE_ZEROES, wz, 1), VIRTIO_BLK_S_IOERR);
	assert_int_equal(request(f, VIRTIO_BLK_T_FLUSH, 0, 0, 0, false, NULL, NULL),
			 VIRTIO_BLK_S_OK);
	dev_check(f);
	device_down(f);
	uint8_t *file = malloc(DISK_SIZE);
	file_read(f->disk, file, DISK_SIZE, 0);
	assert_memory_equal(file, f->model, DISK_SIZE);
	free(file);
}

/* A host disk that fills up: requests fail with IOERR, the device and the guest go on. */
static void fill_until_error(struct fx *f, unsigned int *ok, unsigned int *err)
{
	uint64_t d = BUF_BASE + 0x1000;
	memset(gmem_ptr(&f->m, d, 128 * KiB), 0x5a, 128 * KiB);
	*ok = *err = 0;
	for (uint64_t sector = 0; sector + 256 <= DISK_SIZE / 512; sector += 256) {
		uint8_t s = request(f, VIRTIO_BLK_T_OUT, sector, 128 * KiB, 4, false, &d, NULL);
		if (s == VIRTIO_BLK_S_OK)
			(*ok)++;
		else if (s == VIRTIO_BLK_S_IOERR)
			(*err)++;
		else
			fail_msg("write status %u", s);
	}
	uint64_t r = BUF_BASE + 0x40000;
	assert_int_equal(request(f, VIRTIO_BLK_T_IN, 0, 4096, 1, true, &r, NULL), VIRTIO_BLK_S_OK);
}

static void test_full_host_disk(void **state)
{
	struct fx *f = *state;
	struct virtio_blk_params p = params(f);
	unsigned int ok, err;

	/* 1: the file size limit (works unprivileged): EFBIG past it. */
	struct rlimit old, lim;
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, SIG_IGN);
	p.overlay = f->ov;
	device_up(f, &p);
	struct stat sb;
	assert_int_equal(stat(f->ov, &sb), 0);
	lim = old;
	lim.rlim_cur = (rlim_t)sb.st_size + 256 * KiB; /* room for four new blocks */
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	fill_until_error(f, &ok, &err);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	assert_int_equal(ok, 2);
	assert_int_equal(err, 6);
	/* With room again, writes work and what was written reads back. */
	dev_write(f, 1500, 8192, 7, 2);
	memset(f->model, 0x5a, 256 * KiB);
	dev_check(f);
	device_down(f);

	/* 2: a really full file system (a 1 MiB tmpfs in a private mount namespace). */
	if (unshare(CLONE_NEWNS) || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) ||
	    mkdir(f->mnt, 0700) || mount("none", f->mnt, "tmpfs", 0, "size=1m")) {
		print_message("note: cannot mount a tmpfs (%s): the ENOSPC case is not run\n",
			      strerror(errno));
		return;
	}
	f->mounted = true;
	char sparse[160];
	snprintf(sparse, sizeof(sparse), "%s/sparse.raw", f->mnt);
	int fd = open(sparse, O_RDWR | O_CREAT, 0644);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)DISK_SIZE), 0);
	/* Leave ~half of the tmpfs for the sparse disk. */
	char filler[160];
	snprintf(filler, sizeof(filler), "%s/filler", f->mnt);
	int ff = open(filler, O_RDWR | O_CREAT, 0644);
	assert_true(ff >= 0);
	assert_int_equal(fallocate(ff, 0, 0, (off_t)(512 * KiB)), 0);
	close(ff);
	close(fd);
	p.path = sparse;
	p.overlay = NULL;
	device_up(f, &p);
	fill_until_error(f, &ok, &err);
	assert_true(ok >= 1);
	assert_true(err >= 1);
	struct virtio_blk_stats s;
	virtio_blk_get_stats(f->b, &s);
	assert_int_equal(s.ioerr, err);
	device_down(f);
}

static void test_overlay_disk(void **state)
{
	struct fx *f = *state;
	struct virtio_blk_params p = params(f);
	uint8_t *base = malloc(DISK_SIZE);
	memcpy(base, f->model, DISK_SIZE);
	p.overlay = f->ov;
	device_up(f, &p);
	dev_write(f, 1, 512, 11, 1);
	dev_write(f, 300, 96 * KiB, 12, 4);
	uint64_t wz[1][3] = {{1024, 512, VIRTIO_BLK_WZ_F_UNMAP}};
	assert_int_equal(zero_req(f, VIRTIO_BLK_T_WRITE_ZEROES, wz, 1), VIRTIO_BLK_S_OK);
	memset(f->model + 1024 * 512, 0, 512 * 512);
	dev_check(f);
	device_down(f);
	/* The base is untouched; reopening the overlay shows the writes. */
	uint8_t *file = malloc(DISK_SIZE);
	file_read(f->disk, file, DISK_SIZE, 0);
	assert_memory_equal(file, base, DISK_SIZE);
	device_up(f, &p);
	dev_check(f);
	free(file);
	free(base);
}

static void save(struct fx *f, struct enc *e)
{
	enc_init(e);
	assert_int_equal(virtio_mmio_save(f->t, e), 0);
}

static int load(struct fx *f, const struct enc *e)
{
	struct dec d;
	dec_init(&d, e->buf, e->len);
	return virtio_mmio_load(f->t, &d, VIRTIO_MMIO_STATE_VERSION);
}

static void test_save_load(void **state)
{
	struct fx *f = *state;
	struct virtio_blk_params p = params(f);
	struct blkdev_identity frozen;
	struct enc e;

	/* A disk on an overlay; a snapshot freezes it and saves. */
	p.overlay = f->ov;
	device_up(f, &p);
	dev_write(f, 7, 4096, 21, 2);
	assert_int_equal(virtio_blk_freeze_new_overlay(f->b, f->ov2, &frozen, NULL), 0);
	assert_string_equal(frozen.path, f->ov);
	save(f, &e);
	uint8_t *at_save = malloc(DISK_SIZE);
	memcpy(at_save, f->model, DISK_SIZE);
	/* What a snapshot also has: guest RAM (the rings) and the driver's ring positions. */
	uint8_t *ram = malloc(RAM_SIZE);
	memcpy(ram, f->m.host, RAM_SIZE);
	uint16_t ring[3] = {f->q.avail_idx, f->q.used_seen, f->q.next_desc};
	/* The VM goes on writing (into the new overlay). */
	dev_write(f, 7, 512, 22, 1);
	dev_write(f, 900, 2048, 23, 1);
	dev_check(f);
	device_down(f);

	/* The device state is last: u16 version, u32 length, then the identity. */
	const size_t dev_len = 4 + strlen(f->ov) + 8 + 32 + 1;
	assert_true(e.len > dev_len + 6);
	uint8_t *ver = e.buf + e.len - dev_len - 6;
	assert_int_equal(ver[0] | ver[1] << 8, VIRTIO_BLK_STATE_VERSION);
	assert_int_equal(ver[2] | ver[3] << 8, dev_len);

	/* Restore on the frozen layer with a fresh overlay: it matches, and reads as saved. */
	p.path = f->ov;
	p.overlay = f->ov3;
	device_create(f, &p);
	memcpy(f->m.host, ram, RAM_SIZE);
	assert_int_equal(load(f, &e), 0);
	memcpy(f->model, at_save, DISK_SIZE);
	/* The restored driver goes on from its saved ring positions. */
	f->q.avail_idx = ring[0];
	f->q.used_seen = ring[1];
	f->q.next_desc = ring[2];
	drain(f);
	assert_false(next_used(f, &(uint32_t){0}, &(uint32_t){0}));
	dev_check(f);
	dev_write(f, 2000, 1024, 24, 3);
	dev_check(f);
	device_down(f);

	/* Other disks are refused: the live top (changed since), the base below. */
	p.path = f->ov2;
	p.overlay = NULL;
	device_create(f, &p);
	memcpy(f->m.host, ram, RAM_SIZE);
	assert_int_equal(load(f, &e), -ESTALE);
	device_down(f);
	p.path = f->disk;
	device_create(f, &p);
	memcpy(f->m.host, ram, RAM_SIZE);
	assert_int_equal(load(f, &e), -ESTALE);
	device_down(f);
	/* The frozen layer itself, read-only: the read-only flag differs. */
	p.path = f->ov;
	p.readonly = true;
	device_create(f, &p);
	memcpy(f->m.host, ram, RAM_SIZE);
	assert_int_not_equal(load(f, &e), 0);
	device_down(f);
	p.readonly = false;

	/* A read-only device whose driver did not take RO, restored writable: same features,
	 * but the device refuses. */
	struct enc e2;
	p.path = f->disk;
	p.overlay = NULL;
	p.readonly = true;
	device_create(f, &p);
	driver_init(f, ~(1ull << VIRTIO_BLK_F_RO));
	save(f, &e2);
	device_down(f);
	p.readonly = false;
	device_create(f, &p);
	assert_int_equal(load(f, &e2), -ESTALE);
	device_down(f);
	p.readonly = true;
	device_create(f, &p);
	assert_int_equal(load(f, &e2), 0);
	device_down(f);
	p.readonly = false;
	enc_free(&e2);

	/* The clone overlay restored above has data of its own now: it no longer matches. */
	p.path = f->ov;
	p.overlay = f->ov3;
	device_create(f, &p);
	memcpy(f->m.host, ram, RAM_SIZE);
	assert_int_equal(load(f, &e), -ESTALE);
	device_down(f);

	/* Corrupt device state (a newer version, a truncation), then a good load: a second
	 * clone, on an overlay of its own. */
	char ov4[160];
	snprintf(ov4, sizeof(ov4), "%s/d.ovl", f->dir);
	p.overlay = ov4;
	device_create(f, &p);
	memcpy(f->m.host, ram, RAM_SIZE);
	ver[0] = VIRTIO_BLK_STATE_VERSION + 1;
	assert_int_equal(load(f, &e), -ENOTSUP);
	ver[0] = VIRTIO_BLK_STATE_VERSION;
	ver[2] = (uint8_t)(dev_len - 1);
	struct dec d;
	dec_init(&d, e.buf, e.len - 1);
	assert_int_equal(virtio_mmio_load(f->t, &d, VIRTIO_MMIO_STATE_VERSION), -EBADMSG);
	ver[2] = (uint8_t)dev_len;
	assert_int_equal(load(f, &e), 0);
	enc_free(&e);
	free(at_save);
	free(ram);
}

static void test_no_interrupt_flag(void **state)
{
	struct fx *f = *state;
	struct virtio_blk_params p = params(f);
	device_up(f, &p);
	put16(f, f->q.avail, 1); /* VIRTQ_AVAIL_F_NO_INTERRUPT */
	uint64_t d = 0;
	assert_int_equal(request(f, VIRTIO_BLK_T_FLUSH, 0, 0, 0, false, &d, NULL), VIRTIO_BLK_S_OK);
	assert_false(took_irq(f));
	put16(f, f->q.avail, 0);
	assert_int_equal(request(f, VIRTIO_BLK_T_FLUSH, 0, 0, 0, false, &d, NULL), VIRTIO_BLK_S_OK);
	assert_true(took_irq(f));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_config_and_features, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_read_write, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_flush_and_get_id, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_discard_and_write_zeroes, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_request_errors, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_full_host_disk, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_overlay_disk, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_save_load, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_no_interrupt_flag, fx_setup, fx_teardown),
	};
	log_set_level(getenv("TEST_VERBOSE") ? LOG_DEBUG : LOG_ERR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
