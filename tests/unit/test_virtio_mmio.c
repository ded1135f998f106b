/* SPDX-License-Identifier: MIT */
/*
 * virtio-mmio transport driven through its register window with a fake device, plus the
 * device I/O loop it hands notifications to (vmm/evloop.h). No KVM: vm_fd < 0, except in
 * test_kvm_registration, where ioctl() below stands in for KVM on one fake descriptor.
 */
#include <errno.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "formats/codec.h"
#include "util/log.h"
#include "vmm/evloop.h"
#include "vmm/gmem.h"
#include "vmm/virtio_mmio.h"
#include "vmm/virtq.h"
#include "tests/common/virtio_driver.h"

#define BIT(n) (1ull << (n))

#define RAM_SIZE (1ull << 20)
#define BASE	 0xd0000000ull
#define GSI	 5

/* Ring layout per queue q: desc, avail, used at 0x1000 * (1 + 3q) and following pages. */
#define DESC(q)	 (0x1000ull * (1 + 3 * (q)))
#define AVAIL(q) (DESC(q) + 0x1000)
#define USED(q)	 (DESC(q) + 0x2000)
#define BUF	 0x40000ull

struct fake {
	struct virtio_mmio *t;
	struct gmem *m;
	unsigned int notified[VIRTIO_MMIO_MAX_QUEUES];
	unsigned int resets, driver_oks, served;
	bool serve;
	uint8_t config[12];
	uint32_t wr_off, wr_len, wr_val;
	uint8_t state[4];
};

static struct virtq_elem elem;

static void fake_config_read(void *dev, uint32_t off, void *buf, uint32_t len)
{
	struct fake *f = dev;
	assert_true(off + len <= sizeof(f->config));
	memcpy(buf, f->config + off, len);
}

static void fake_config_write(void *dev, uint32_t off, const void *buf, uint32_t len)
{
	struct fake *f = dev;
	f->wr_off = off;
	f->wr_len = len;
	f->wr_val = 0;
	memcpy(&f->wr_val, buf, len);
}

/* Serve every request: fill the in[] bytes with 0xab, give them back, interrupt. */
static void fake_queue_notify(void *dev, unsigned int qi)
{
	struct fake *f = dev;
	struct virtq *q = virtio_mmio_queue(f->t, qi);
	assert_non_null(q);
	assert_true(virtio_mmio_running(f->t));
	f->notified[qi]++;
	if (!f->serve)
		return;
	bool any = false;
	int r;
	while ((r = virtq_pop(q, f->m, &elem)) != 0) {
		assert_int_equal(r, 1);
		for (unsigned int i = 0; i < elem.n_in; i++)
			memset(elem.in[i].iov_base, 0xab, elem.in[i].iov_len);
		virtq_push(q, f->m, &elem, (uint32_t)elem.in_len);
		f->served++;
		any = true;
	}
	if (any && virtq_should_notify(q, f->m))
		virtio_mmio_interrupt(f->t, VIRTIO_MMIO_INT_VRING);
}

static void fake_reset(void *dev)
{
	((struct fake *)dev)->resets++;
}

static void fake_driver_ok(void *dev)
{
	((struct fake *)dev)->driver_oks++;
}

static int fake_save(void *dev, struct enc *e)
{
	enc_bytes(e, ((struct fake *)dev)->state, 4);
	return enc_error(e);
}

static int fake_load(void *dev, struct dec *d, unsigned int version)
{
	if (version != 3)
		return -ENOTSUP;
	dec_bytes(d, ((struct fake *)dev)->state, 4);
	return dec_error(d);
}

static const struct virtio_device_ops fake_ops = {
    .name = "fake",
    .device_id = 42,
    .features = BIT(0) | BIT(50),
    .nqueues = 2,
    .queue_max = 16,
    .config_size = 12,
    .config_read = fake_config_read,
    .config_write = fake_config_write,
    .queue_notify = fake_queue_notify,
    .reset = fake_reset,
    .driver_ok = fake_driver_ok,
    .state_version = 3,
    .save = fake_save,
    .load = fake_load,
};

struct fx {
	struct gmem m;
	struct evloop *loop;
	struct fake dev;
	struct virtio_mmio *t;
};

static int setup(void **state)
{
	struct fx *x = calloc(1, sizeof(*x));
	if (!x || gmem_create(&x->m, RAM_SIZE, GMEM_MEMFD))
		return -1;
	x->loop = evloop_create();
	if (!x->loop)
		return -1;
	x->dev.m = &x->m;
	x->dev.serve = true;
	for (unsigned int i = 0; i < sizeof(x->dev.config); i++)
		x->dev.config[i] = (uint8_t)(0x10 + i);
	x->t = virtio_mmio_create(&fake_ops, &x->dev, &x->m, -1, x->loop, BASE, GSI);
	if (!x->t)
		return -1;
	x->dev.t = x->t;
	*state = x;
	return 0;
}

static int teardown(void **state)
{
	struct fx *x = *state;
	virtio_mmio_destroy(x->t);
	evloop_destroy(x->loop);
	gmem_free(&x->m);
	free(x);
	return 0;
}

/* Status up to FEATURES_OK with @features accepted; returns the status read back. */
static uint32_t negotiate(struct virtio_mmio *t, uint64_t features)
{
	vdrv_wr(t, VIRTIO_MMIO_STATUS, 0);
	vdrv_wr(t, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	vdrv_wr(t, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
	vdrv_accept(t, features);
	return vdrv_rd(t, VIRTIO_MMIO_STATUS);
}

#define GOOD_FEATURES (BIT(0) | BIT(VIRTIO_F_VERSION_1) | BIT(VIRTIO_RING_F_INDIRECT_DESC))

/* Driver initialisation with fresh rings on @nq queues, up to DRIVER_OK. */
static void bring_up(struct fx *x, unsigned int nq)
{
	memset(x->m.host + DESC(0), 0, USED(VIRTIO_MMIO_MAX_QUEUES - 1) + 0x1000 - DESC(0));
	assert_int_equal(negotiate(x->t, GOOD_FEATURES), VIRTIO_STATUS_ACKNOWLEDGE |
							     VIRTIO_STATUS_DRIVER |
							     VIRTIO_STATUS_FEATURES_OK);
	for (unsigned int q = 0; q < nq; q++) {
		vdrv_queue(x->t, q, 8, DESC(q), AVAIL(q), USED(q));
		assert_int_equal(vdrv_rd(x->t, VIRTIO_MMIO_QUEUE_READY), 1);
	}
	vdrv_wr(x->t, VIRTIO_MMIO_STATUS,
		VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |
		    VIRTIO_STATUS_DRIVER_OK);
	assert_int_equal(vdrv_rd(x->t, VIRTIO_MMIO_STATUS),
			 VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
			     VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
	/* DRIVER_OK kicked the ready queues; without a loop thread, run that now (-EBUSY with). */
	(void)evloop_run_once(x->loop, 0);
}

/* Driver side: one writable descriptor of @len bytes at BUF, offered on queue @q. */
static void offer_in(struct fx *x, unsigned int q, uint16_t head, uint32_t len)
{
	uint8_t d[16];
	uint64_t addr = BUF + 0x1000ull * head;
	uint16_t flags = 2, next = 0, idx;
	memcpy(d, &addr, 8);
	memcpy(d + 8, &len, 4);
	memcpy(d + 12, &flags, 2);
	memcpy(d + 14, &next, 2);
	assert_int_equal(gmem_write(&x->m, DESC(q) + 16ull * head, d, 16), 0);
	assert_int_equal(gmem_read(&x->m, AVAIL(q) + 2, &idx, 2), 0);
	assert_int_equal(gmem_write(&x->m, AVAIL(q) + 4 + 2ull * (idx % 8), &head, 2), 0);
	idx++;
	assert_int_equal(gmem_write(&x->m, AVAIL(q) + 2, &idx, 2), 0);
}

static uint16_t used_idx(struct fx *x, unsigned int q)
{
	uint16_t v;
	assert_int_equal(gmem_read(&x->m, USED(q) + 2, &v, 2), 0);
	return v;
}

/* Whether the interrupt eventfd was signalled (and clear it). */
static bool irq_pending(struct virtio_mmio *t)
{
	uint64_t v;
	ssize_t n = read(virtio_mmio_irq_fd(t), &v, sizeof(v));
	if (n < 0) {
		assert_int_equal(errno, EAGAIN);
		return false;
	}
	assert_int_equal(n, 8);
	return v > 0;
}

static void test_ids(void **state)
{
	struct fx *x = *state;
	struct virtio_mmio *t = x->t;
	uint8_t d[8];

	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_MAGIC), 0x74726976);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_VERSION), 2);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_DEVICE_ID), 42);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_VENDOR_ID), 0x4D534E56);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_STATUS), 0);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_SEL, 1);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_SEL, 2);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_READY), 0);

	/* Offered: the device's bits plus VERSION_1 and INDIRECT_DESC. */
	vdrv_wr(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_DEVICE_FEATURES),
			 BIT(0) | BIT(VIRTIO_RING_F_INDIRECT_DESC));
	vdrv_wr(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_DEVICE_FEATURES),
			 BIT(VIRTIO_F_VERSION_1 - 32) | BIT(50 - 32));
	vdrv_wr(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_DEVICE_FEATURES), 0);

	/* Registers are 32-bit only: other widths and misaligned accesses read all-ones. */
	memset(d, 0, sizeof(d));
	virtio_mmio_io(t, VIRTIO_MMIO_MAGIC, d, 2, false);
	assert_int_equal(d[0], 0xff);
	assert_int_equal(d[1], 0xff);
	memset(d, 0, sizeof(d));
	virtio_mmio_io(t, VIRTIO_MMIO_MAGIC, d, 8, false);
	assert_int_equal(d[7], 0xff);
	memset(d, 0, sizeof(d));
	virtio_mmio_io(t, VIRTIO_MMIO_MAGIC + 2, d, 4, false);
	assert_int_equal(d[0], 0xff);
	d[0] = 0;
	virtio_mmio_io(t, VIRTIO_MMIO_STATUS, d, 1, true); /* ignored, not a reset */
	vdrv_wr(t, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	d[0] = 0;
	virtio_mmio_io(t, VIRTIO_MMIO_STATUS, d, 1, true);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_STATUS), VIRTIO_STATUS_ACKNOWLEDGE);
	assert_int_equal(x->dev.resets, 0);
	/* No shared memory regions; unknown registers read 0. */
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_SHM_LEN_LOW), 0xffffffff);
	assert_int_equal(vdrv_rd(t, 0x0f0), 0);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_CONFIG_GENERATION), 0);
}

static void test_features(void **state)
{
	struct fx *x = *state;
	struct virtio_mmio *t = x->t;
	const uint32_t pre = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER;

	/* No VERSION_1 (a legacy driver): refused. */
	assert_int_equal(negotiate(t, BIT(0)), pre);
	/* Something not offered: refused. */
	assert_int_equal(negotiate(t, GOOD_FEATURES | BIT(1)), pre);
	assert_int_equal(negotiate(t, GOOD_FEATURES | BIT(51)), pre);
	/* DRIVER_OK without FEATURES_OK is ignored. */
	vdrv_wr(t, VIRTIO_MMIO_STATUS, pre | VIRTIO_STATUS_DRIVER_OK);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_STATUS), pre);
	assert_int_equal(x->dev.driver_oks, 0);

	assert_int_equal(negotiate(t, GOOD_FEATURES | BIT(50)), pre | VIRTIO_STATUS_FEATURES_OK);
	assert_int_equal(virtio_mmio_driver_features(t), GOOD_FEATURES | BIT(50));
	/* Features are fixed once FEATURES_OK is set. */
	vdrv_wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
	vdrv_wr(t, VIRTIO_MMIO_DRIVER_FEATURES, 0);
	assert_int_equal(virtio_mmio_driver_features(t), GOOD_FEATURES | BIT(50));
	/* Clearing a bit without reset is ignored. */
	vdrv_wr(t, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_STATUS), pre | VIRTIO_STATUS_FEATURES_OK);
	assert_false(virtio_mmio_running(t));
	vdrv_wr(t, VIRTIO_MMIO_STATUS, pre | VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_STATUS),
			 pre | VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
	assert_true(virtio_mmio_running(t));
	assert_int_equal(x->dev.driver_oks, 1);

	/* Out of order from reset: DRIVER without ACKNOWLEDGE. */
	unsigned int resets = x->dev.resets;
	vdrv_wr(t, VIRTIO_MMIO_STATUS, 0);
	assert_int_equal(x->dev.resets, resets + 1);
	vdrv_wr(t, VIRTIO_MMIO_STATUS, VIRTIO_STATUS_DRIVER);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_STATUS), 0);
	assert_int_equal(virtio_mmio_driver_features(t), 0);

	/* Devices offering ring features this transport does not implement are refused. */
	struct virtio_device_ops bad = fake_ops;
	bad.features |= BIT(29); /* EVENT_IDX */
	log_set_level((enum log_level) - 1);
	assert_null(virtio_mmio_create(&bad, &x->dev, &x->m, -1, x->loop, BASE, GSI));
	bad = fake_ops;
	bad.queue_max = 24;
	assert_null(virtio_mmio_create(&bad, &x->dev, &x->m, -1, x->loop, BASE, GSI));
	bad = fake_ops;
	bad.nqueues = VIRTIO_MMIO_MAX_QUEUES + 1;
	assert_null(virtio_mmio_create(&bad, &x->dev, &x->m, -1, x->loop, BASE, GSI));
	log_set_level(LOG_ERR);
}

static void test_queue_setup_and_notify(void **state)
{
	struct fx *x = *state;
	struct virtio_mmio *t = x->t;
	uint8_t b;

	assert_int_equal(negotiate(t, GOOD_FEATURES), VIRTIO_STATUS_ACKNOWLEDGE |
							  VIRTIO_STATUS_DRIVER |
							  VIRTIO_STATUS_FEATURES_OK);
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_SEL, 0);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_NUM), 16);
	/* Not a power of two, or over the maximum: ignored. */
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_NUM, 3);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_NUM), 16);
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_NUM, 32);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_NUM), 16);
	/* Rings outside RAM or misaligned: QueueReady stays 0. */
	vdrv_queue(t, 0, 8, RAM_SIZE - 64, AVAIL(0), USED(0));
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_READY), 0);
	vdrv_queue(t, 0, 8, DESC(0) + 8, AVAIL(0), USED(0));
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_READY), 0);
	vdrv_queue(t, 0, 8, DESC(0), AVAIL(0), USED(0) + 2);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_READY), 0);
	vdrv_queue(t, 0, 8, DESC(0), AVAIL(0), USED(0) | (1ull << 40));
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_READY), 0);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_DEVICE_HIGH), 1u << 8);
	vdrv_queue(t, 0, 8, DESC(0), AVAIL(0), USED(0));
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_READY), 1);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_NUM), 8);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_DESC_LOW), DESC(0));
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_DRIVER_LOW), AVAIL(0));
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_DEVICE_LOW), USED(0));
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_DEVICE_HIGH), 0);
	/* While ready, size and addresses stay. */
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_NUM, 4);
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x9000);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_NUM), 8);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_DESC_LOW), DESC(0));

	/* Before DRIVER_OK the notification is consumed but the device is not called. */
	offer_in(x, 0, 2, 16);
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	assert_int_equal(evloop_run_once(x->loop, 1000), 1);
	assert_int_equal(x->dev.notified[0], 0);
	assert_false(irq_pending(t));
	/* DRIVER_OK looks at the ready queues: the early request is served. */
	vdrv_wr(t, VIRTIO_MMIO_STATUS,
		VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |
		    VIRTIO_STATUS_DRIVER_OK);
	assert_int_equal(evloop_run_once(x->loop, 1000), 1);
	assert_int_equal(x->dev.notified[0], 1);
	assert_int_equal(x->dev.served, 1);
	assert_int_equal(used_idx(x, 0), 1);
	assert_int_equal(gmem_read(&x->m, BUF + 0x2000 + 15, &b, 1), 0);
	assert_int_equal(b, 0xab);
	assert_true(irq_pending(t));
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
	vdrv_wr(t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
	assert_false(irq_pending(t));

	/* A plain notify. */
	offer_in(x, 0, 5, 4);
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	assert_int_equal(evloop_run_once(x->loop, 1000), 1);
	assert_int_equal(x->dev.notified[0], 2);
	assert_int_equal(used_idx(x, 0), 2);
	assert_true(irq_pending(t));
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);

	/* Queues not ready, or that do not exist: nothing happens. */
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_NOTIFY, 7);
	assert_int_equal(evloop_run_once(x->loop, 0), 0);
	assert_int_equal(x->dev.notified[1], 0);

	/* The driver takes the queue down: notifications stop reaching the device. */
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_SEL, 0);
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_READY, 0);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_READY), 0);
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	assert_int_equal(evloop_run_once(x->loop, 0), 0);
	assert_int_equal(x->dev.notified[0], 2);
	/* And brings it back. */
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_READY), 1);
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	assert_int_equal(evloop_run_once(x->loop, 1000), 1);
	assert_int_equal(x->dev.notified[0], 3);
}

static void test_reset_and_needs_reset(void **state)
{
	struct fx *x = *state;
	struct virtio_mmio *t = x->t;

	bring_up(x, 2);
	virtio_mmio_lock(t);
	virtio_mmio_interrupt(t, VIRTIO_MMIO_INT_VRING);
	virtio_mmio_unlock(t);
	assert_true(irq_pending(t));

	unsigned int resets = x->dev.resets;
	vdrv_wr(t, VIRTIO_MMIO_STATUS, 0);
	assert_int_equal(x->dev.resets, resets + 1);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_STATUS), 0);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
	assert_false(virtio_mmio_running(t));
	assert_int_equal(virtio_mmio_driver_features(t), 0);
	for (unsigned int q = 0; q < 2; q++) {
		vdrv_wr(t, VIRTIO_MMIO_QUEUE_SEL, q);
		assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_READY), 0);
		assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_NUM), 16);
		assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_DESC_LOW), 0);
		assert_int_equal(virtio_mmio_queue(t, q)->last_avail, 0);
	}
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_SEL), 1);
	/* The notify eventfds left the loop. */
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	assert_int_equal(evloop_run_once(x->loop, 0), 0);
	assert_null(virtio_mmio_queue(t, 2));

	/* Again, and a device failure. */
	bring_up(x, 1);
	virtio_mmio_lock(t);
	virtio_mmio_set_needs_reset(t);
	virtio_mmio_unlock(t);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_STATUS) & VIRTIO_STATUS_DEVICE_NEEDS_RESET,
			 VIRTIO_STATUS_DEVICE_NEEDS_RESET);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_CONFIG_GENERATION), 1);
	assert_true(irq_pending(t));
	/* The driver writing back what it read (NEEDS_RESET included) changes nothing. */
	vdrv_wr(t, VIRTIO_MMIO_STATUS, vdrv_rd(t, VIRTIO_MMIO_STATUS) | 0x80);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_STATUS),
			 VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
			     VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK |
			     VIRTIO_STATUS_DEVICE_NEEDS_RESET | 0x80);
	resets = x->dev.resets;
	vdrv_wr(t, VIRTIO_MMIO_STATUS, 0);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_STATUS), 0);
	assert_int_equal(x->dev.resets, resets + 1);
}

static void test_config(void **state)
{
	struct fx *x = *state;
	struct virtio_mmio *t = x->t;
	uint8_t d[8];

	memset(d, 0, sizeof(d));
	virtio_mmio_io(t, VIRTIO_MMIO_CONFIG + 3, d, 1, false);
	assert_int_equal(d[0], 0x13);
	virtio_mmio_io(t, VIRTIO_MMIO_CONFIG + 10, d, 2, false);
	assert_int_equal(d[0], 0x1a);
	assert_int_equal(d[1], 0x1b);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_CONFIG + 8), 0x1b1a1918);
	/* Past the end, or 8 bytes: all-ones, and the device is not asked. */
	memset(d, 0, sizeof(d));
	virtio_mmio_io(t, VIRTIO_MMIO_CONFIG + 10, d, 4, false);
	assert_memory_equal(d, "\xff\xff\xff\xff", 4);
	memset(d, 0, sizeof(d));
	virtio_mmio_io(t, VIRTIO_MMIO_CONFIG + 12, d, 1, false);
	assert_int_equal(d[0], 0xff);
	memset(d, 0, sizeof(d));
	virtio_mmio_io(t, VIRTIO_MMIO_CONFIG, d, 8, false);
	assert_memory_equal(d, "\xff\xff\xff\xff\xff\xff\xff\xff", 8);
	memset(d, 0, sizeof(d));
	virtio_mmio_io(t, VIRTIO_MMIO_CONFIG + 0xeff, d, 1, false);
	assert_int_equal(d[0], 0xff);
	virtio_mmio_io(t, UINT64_MAX, d, 4, false);
	assert_int_equal(d[0], 0xff);

	vdrv_wr(t, VIRTIO_MMIO_CONFIG + 4, 0xdeadbeef);
	assert_int_equal(x->dev.wr_off, 4);
	assert_int_equal(x->dev.wr_len, 4);
	assert_int_equal(x->dev.wr_val, 0xdeadbeef);
	d[0] = 0x5a;
	virtio_mmio_io(t, VIRTIO_MMIO_CONFIG + 11, d, 1, true);
	assert_int_equal(x->dev.wr_off, 11);
	assert_int_equal(x->dev.wr_val, 0x5a);
	virtio_mmio_io(t, VIRTIO_MMIO_CONFIG + 11, d, 2, true); /* past the end: dropped */
	assert_int_equal(x->dev.wr_len, 1);

	/* A config change bumps the generation. */
	virtio_mmio_lock(t);
	virtio_mmio_interrupt(t, VIRTIO_MMIO_INT_CONFIG);
	virtio_mmio_unlock(t);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_CONFIG_GENERATION), 1);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
	assert_true(irq_pending(t));
}

static void save(struct virtio_mmio *t, struct enc *e)
{
	enc_init(e);
	assert_int_equal(virtio_mmio_save(t, e), 0);
}

static int load(struct virtio_mmio *t, const uint8_t *buf, size_t len, unsigned int version)
{
	struct dec d;
	dec_init(&d, buf, len);
	return virtio_mmio_load(t, &d, version);
}

/* Offsets in version 1 of the saved state. */
#define OFF_DRV_FEATURES 9
#define OFF_QUEUE0	 37 /* u16 size, u8 ready, u64 desc... */

static void test_save_load(void **state)
{
	struct fx *x = *state;
	struct virtio_mmio *t = x->t;
	struct enc e1, e2;

	bring_up(x, 2);
	offer_in(x, 0, 1, 8);
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	assert_int_equal(evloop_run_once(x->loop, 1000), 1);
	assert_int_equal(used_idx(x, 0), 1);
	/* Queued but never notified before the save: the restored device must serve it. */
	offer_in(x, 0, 3, 8);
	vdrv_wr(t, VIRTIO_MMIO_QUEUE_SEL, 1);
	memcpy(x->dev.state, "abcd", 4);
	assert_true(irq_pending(t));
	save(t, &e1);

	/* A new instance, as a restore creates it. */
	struct evloop *loop2 = evloop_create();
	struct fake dev2;
	assert_non_null(loop2);
	memset(&dev2, 0, sizeof(dev2));
	dev2.m = &x->m;
	struct virtio_mmio *t2 = virtio_mmio_create(&fake_ops, &dev2, &x->m, -1, loop2, BASE, GSI);
	assert_non_null(t2);
	dev2.t = t2;

	/* Rejected states change nothing. */
	assert_int_equal(load(t2, e1.buf, e1.len, 0), -ENOTSUP);
	assert_int_equal(load(t2, e1.buf, e1.len, VIRTIO_MMIO_STATE_VERSION + 1), -ENOTSUP);
	assert_int_equal(load(t2, e1.buf, e1.len - 1, 1), -EBADMSG);
	uint8_t *b = malloc(e1.len);
	memcpy(b, e1.buf, e1.len);
	b[0] = 43; /* another device */
	assert_int_equal(load(t2, b, e1.len, 1), -EINVAL);
	memcpy(b, e1.buf, e1.len);
	b[OFF_DRV_FEATURES] |= 2; /* feature 1 not offered */
	assert_int_equal(load(t2, b, e1.len, 1), -EINVAL);
	memcpy(b, e1.buf, e1.len);
	b[OFF_DRV_FEATURES + 4] = 0; /* no VERSION_1 */
	assert_int_equal(load(t2, b, e1.len, 1), -EINVAL);
	memcpy(b, e1.buf, e1.len);
	b[OFF_QUEUE0 + 3 + 2] = 0x10; /* desc at 1 MiB + 4 KiB: outside RAM */
	assert_int_equal(load(t2, b, e1.len, 1), -EINVAL);
	memcpy(b, e1.buf, e1.len);
	b[OFF_QUEUE0] = 32; /* larger than QueueNumMax */
	assert_int_equal(load(t2, b, e1.len, 1), -EINVAL);
	memcpy(b, e1.buf, e1.len);
	b[e1.len - 4 - 4 - 2] = 2; /* device state version 2: the device refuses it */
	assert_int_equal(load(t2, b, e1.len, 1), -ENOTSUP);
	free(b);
	assert_int_equal(vdrv_rd(t2, VIRTIO_MMIO_STATUS), 0);
	assert_int_equal(dev2.notified[0] + dev2.notified[1], 0);

	/* Served on load, without a notification, under the device lock. */
	dev2.serve = true;
	assert_int_equal(load(t2, e1.buf, e1.len, 1), 0);
	assert_int_equal(dev2.notified[0], 1);
	assert_int_equal(dev2.notified[1], 1);
	assert_int_equal(dev2.served, 1);
	assert_int_equal(used_idx(x, 0), 2);
	assert_memory_equal(dev2.state, "abcd", 4);
	assert_true(irq_pending(t2));
	assert_int_equal(vdrv_rd(t2, VIRTIO_MMIO_STATUS),
			 VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER |
			     VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
	assert_int_equal(virtio_mmio_driver_features(t2), GOOD_FEATURES);
	assert_int_equal(vdrv_rd(t2, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
	assert_int_equal(vdrv_rd(t2, VIRTIO_MMIO_QUEUE_SEL), 1);
	for (unsigned int q = 0; q < 2; q++) {
		vdrv_wr(t2, VIRTIO_MMIO_QUEUE_SEL, q);
		assert_int_equal(vdrv_rd(t2, VIRTIO_MMIO_QUEUE_READY), 1);
		assert_int_equal(vdrv_rd(t2, VIRTIO_MMIO_QUEUE_NUM), 8);
		assert_int_equal(vdrv_rd(t2, VIRTIO_MMIO_QUEUE_DESC_LOW), DESC(q));
		assert_int_equal(vdrv_rd(t2, VIRTIO_MMIO_QUEUE_DRIVER_LOW), AVAIL(q));
		assert_int_equal(vdrv_rd(t2, VIRTIO_MMIO_QUEUE_DEVICE_LOW), USED(q));
	}
	assert_int_equal(virtio_mmio_queue(t2, 0)->last_avail, 2);

	/* Its notify eventfds are on its own loop. */
	offer_in(x, 1, 0, 8);
	vdrv_wr(t2, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
	assert_int_equal(evloop_run_once(x->loop, 0), 0);
	assert_int_equal(evloop_run_once(loop2, 1000), 1);
	assert_int_equal(dev2.notified[1], 2);
	assert_int_equal(used_idx(x, 1), 1);

	/* Saving the restored device gives what was loaded, with its progress. */
	vdrv_wr(t2, VIRTIO_MMIO_QUEUE_SEL, 1);
	save(t2, &e2);
	assert_int_equal(e1.len, e2.len);
	struct dec d;
	struct virtq q0;
	dec_init(&d, e2.buf + OFF_QUEUE0, e2.len - OFF_QUEUE0);
	assert_int_equal(virtq_load(&q0, &d, VIRTQ_STATE_VERSION), 0);
	assert_int_equal(q0.last_avail, 2);
	assert_int_equal(q0.used_idx, 2);
	assert_memory_equal(e1.buf, e2.buf, OFF_QUEUE0);

	/* Loading over a live device replaces its queues (old eventfds leave the loop). */
	assert_int_equal(load(t2, e1.buf, e1.len, 1), 0);
	vdrv_wr(t2, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
	assert_int_equal(evloop_run_once(loop2, 1000), 1);

	enc_free(&e1);
	enc_free(&e2);
	virtio_mmio_destroy(t2);
	evloop_destroy(loop2);
}

/* ioctl() for the fake VM descriptor records KVM calls; any other goes to the kernel. */
#define FAKE_VM_FD 1000000
static struct {
	unsigned int n_ioeventfd, n_irqfd;
	struct kvm_ioeventfd ioeventfd[16];
	struct kvm_irqfd irqfd[4];
	int fail_errno; /* the next call fails with this */
} kvm;

int ioctl(int fd, unsigned long req, ...)
{
	va_list ap;
	va_start(ap, req);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	if (fd != FAKE_VM_FD)
		return (int)syscall(SYS_ioctl, fd, req, arg);
	if (kvm.fail_errno) {
		errno = kvm.fail_errno;
		kvm.fail_errno = 0;
		return -1;
	}
	if (req == KVM_IOEVENTFD && kvm.n_ioeventfd < 16)
		memcpy(&kvm.ioeventfd[kvm.n_ioeventfd++], arg, sizeof(struct kvm_ioeventfd));
	else if (req == KVM_IRQFD && kvm.n_irqfd < 4)
		memcpy(&kvm.irqfd[kvm.n_irqfd++], arg, sizeof(struct kvm_irqfd));
	else
		fail_msg("unexpected ioctl 0x%lx", req);
	return 0;
}

static void test_kvm_registration(void **state)
{
	struct fx *x = *state;
	struct fake dev;

	memset(&kvm, 0, sizeof(kvm));
	memset(&dev, 0, sizeof(dev));
	dev.m = &x->m;
	kvm.fail_errno = EINVAL;
	log_set_level((enum log_level) - 1);
	assert_null(virtio_mmio_create(&fake_ops, &dev, &x->m, FAKE_VM_FD, x->loop, BASE, GSI));
	log_set_level(LOG_ERR);

	struct virtio_mmio *t =
	    virtio_mmio_create(&fake_ops, &dev, &x->m, FAKE_VM_FD, x->loop, BASE, GSI);
	assert_non_null(t);
	dev.t = t;
	assert_int_equal(kvm.n_irqfd, 1);
	assert_int_equal(kvm.irqfd[0].fd, virtio_mmio_irq_fd(t));
	assert_int_equal(kvm.irqfd[0].gsi, GSI);
	assert_int_equal(kvm.irqfd[0].flags, 0);

	assert_int_equal(negotiate(t, GOOD_FEATURES), VIRTIO_STATUS_ACKNOWLEDGE |
							  VIRTIO_STATUS_DRIVER |
							  VIRTIO_STATUS_FEATURES_OK);
	vdrv_queue(t, 1, 8, DESC(1), AVAIL(1), USED(1));
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_READY), 1);
	assert_int_equal(kvm.n_ioeventfd, 1);
	struct kvm_ioeventfd io = kvm.ioeventfd[0];
	assert_int_equal(io.addr, BASE + VIRTIO_MMIO_QUEUE_NOTIFY);
	assert_int_equal(io.len, 4);
	assert_int_equal(io.datamatch, 1);
	assert_int_equal(io.flags, KVM_IOEVENTFD_FLAG_DATAMATCH);

	/* KVM refusing the ioeventfd: the queue stays not ready. */
	kvm.fail_errno = EEXIST;
	log_set_level((enum log_level) - 1);
	vdrv_queue(t, 0, 8, DESC(0), AVAIL(0), USED(0));
	log_set_level(LOG_ERR);
	assert_int_equal(vdrv_rd(t, VIRTIO_MMIO_QUEUE_READY), 0);

	/* The ioeventfd is the queue's eventfd: signalling it (as KVM would) reaches the device. */
	vdrv_wr(t, VIRTIO_MMIO_STATUS,
		VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |
		    VIRTIO_STATUS_DRIVER_OK);
	assert_int_equal(evloop_run_once(x->loop, 1000), 1); /* the DRIVER_OK look */
	assert_int_equal(dev.notified[1], 1);
	uint64_t one = 1;
	assert_int_equal(write((int)io.fd, &one, 8), 8);
	assert_int_equal(evloop_run_once(x->loop, 1000), 1);
	assert_int_equal(dev.notified[1], 2);

	/* Reset deassigns exactly what was assigned. */
	vdrv_wr(t, VIRTIO_MMIO_STATUS, 0);
	assert_int_equal(kvm.n_ioeventfd, 2);
	assert_int_equal(kvm.ioeventfd[1].fd, io.fd);
	assert_int_equal(kvm.ioeventfd[1].addr, io.addr);
	assert_int_equal(kvm.ioeventfd[1].datamatch, 1);
	assert_int_equal(kvm.ioeventfd[1].flags,
			 KVM_IOEVENTFD_FLAG_DATAMATCH | KVM_IOEVENTFD_FLAG_DEASSIGN);

	/* So does destroy, for queues and the irqfd. */
	assert_int_equal(negotiate(t, GOOD_FEATURES), VIRTIO_STATUS_ACKNOWLEDGE |
							  VIRTIO_STATUS_DRIVER |
							  VIRTIO_STATUS_FEATURES_OK);
	vdrv_queue(t, 0, 8, DESC(0), AVAIL(0), USED(0));
	assert_int_equal(kvm.n_ioeventfd, 3);
	assert_int_equal(kvm.ioeventfd[2].datamatch, 0);
	int irq = virtio_mmio_irq_fd(t);
	virtio_mmio_destroy(t);
	assert_int_equal(kvm.n_ioeventfd, 4);
	assert_int_equal(kvm.ioeventfd[3].fd, kvm.ioeventfd[2].fd);
	assert_true(kvm.ioeventfd[3].flags & KVM_IOEVENTFD_FLAG_DEASSIGN);
	assert_int_equal(kvm.n_irqfd, 2);
	assert_int_equal(kvm.irqfd[1].fd, irq);
	assert_int_equal(kvm.irqfd[1].gsi, GSI);
	assert_int_equal(kvm.irqfd[1].flags, KVM_IRQFD_FLAG_DEASSIGN);
}

/* --- The device I/O loop itself --- */

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct counter {
	struct evloop *loop;
	int fd;
	unsigned int _Atomic calls;
	int _Atomic in_handler;
	int _Atomic done;
	unsigned int sleep_ms;
	bool del_self;
	int add_fd; /* added from the handler when >= 0 */
	struct counter *add_c;
};

static void count_handler(void *opaque, int fd)
{
	struct counter *c = opaque;
	uint64_t v;
	assert_int_equal(fd, c->fd);
	if (read(fd, &v, 8) != 8)
		fail_msg("handler called without an event");
	c->in_handler = 1;
	if (c->sleep_ms)
		usleep(c->sleep_ms * 1000);
	if (c->del_self)
		assert_int_equal(evloop_del(c->loop, fd), 0);
	if (c->add_fd >= 0) {
		assert_int_equal(evloop_add(c->loop, c->add_fd, count_handler, c->add_c), 0);
		c->add_fd = -1;
	}
	c->calls++;
	c->in_handler = 0;
	c->done = 1;
}

static void kick(int fd)
{
	uint64_t one = 1;
	assert_int_equal(write(fd, &one, 8), 8);
}

static bool wait_calls(struct counter *c, unsigned int n, unsigned int ms)
{
	uint64_t end = now_ms() + ms;
	while (c->calls < n && now_ms() < end)
		usleep(1000);
	return c->calls >= n;
}

static void counter_init(struct counter *c, struct evloop *l)
{
	memset(c, 0, sizeof(*c));
	c->loop = l;
	c->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	c->add_fd = -1;
	assert_true(c->fd >= 0);
}

static void test_evloop_thread(void **state)
{
	(void)state;
	struct evloop *l = evloop_create();
	struct counter a, b;
	assert_non_null(l);
	counter_init(&a, l);
	counter_init(&b, l);

	assert_int_equal(evloop_add(l, a.fd, count_handler, &a), 0);
	assert_int_equal(evloop_add(l, a.fd, count_handler, &a), -EEXIST);
	assert_int_equal(evloop_add(l, -1, count_handler, &a), -EINVAL);
	assert_int_equal(evloop_del(l, b.fd), -ENOENT);
	assert_int_equal(evloop_start(l), 0);
	assert_int_equal(evloop_start(l), -EBUSY);
	assert_int_equal(evloop_run_once(l, 0), -EBUSY);

	kick(a.fd);
	assert_true(wait_calls(&a, 1, 5000));

	/* Paused: events wait; resumed: they are handled. */
	evloop_pause(l);
	evloop_pause(l);
	kick(a.fd);
	usleep(100 * 1000);
	assert_int_equal(a.calls, 1);
	evloop_resume(l);
	assert_true(wait_calls(&a, 2, 5000));

	/* Pause waits for a running handler to finish. */
	a.sleep_ms = 200;
	a.done = 0;
	kick(a.fd);
	while (!a.in_handler)
		usleep(1000);
	evloop_pause(l);
	assert_int_equal(a.done, 1);
	assert_int_equal(a.in_handler, 0);
	evloop_resume(l);

	/* Delete waits for a running handler too, and then it never runs again. */
	a.done = 0;
	kick(a.fd);
	while (!a.in_handler)
		usleep(1000);
	assert_int_equal(evloop_del(l, a.fd), 0);
	assert_int_equal(a.done, 1);
	unsigned int calls = a.calls;
	kick(a.fd);
	usleep(50 * 1000);
	assert_int_equal(a.calls, calls);
	a.sleep_ms = 0;

	/* A handler deleting itself and adding another. */
	a.del_self = true;
	a.add_fd = b.fd;
	a.add_c = &b;
	uint64_t v;
	assert_int_equal(read(a.fd, &v, 8), 8);
	assert_int_equal(evloop_add(l, a.fd, count_handler, &a), 0);
	kick(a.fd);
	assert_true(wait_calls(&a, calls + 1, 5000));
	kick(b.fd);
	assert_true(wait_calls(&b, 1, 5000));
	kick(a.fd);
	usleep(50 * 1000);
	assert_int_equal(a.calls, calls + 1);
	assert_int_equal(evloop_del(l, a.fd), -ENOENT);

	/* Destroy while paused ends the thread. */
	evloop_pause(l);
	evloop_destroy(l);
	close(a.fd);
	close(b.fd);
}

static void test_evloop_run_once(void **state)
{
	(void)state;
	struct evloop *l = evloop_create();
	struct counter a;
	assert_non_null(l);
	counter_init(&a, l);
	assert_int_equal(evloop_add(l, a.fd, count_handler, &a), 0);
	assert_int_equal(evloop_run_once(l, 0), 0);
	kick(a.fd);
	evloop_pause(l);
	assert_int_equal(evloop_run_once(l, 0), 0);
	evloop_resume(l);
	assert_int_equal(evloop_run_once(l, 0), 1);
	assert_int_equal(a.calls, 1);
	/* Closed before being deleted: still forgotten, never called. */
	kick(a.fd);
	close(a.fd);
	assert_int_equal(evloop_del(l, a.fd), 0);
	assert_int_equal(evloop_run_once(l, 0), 0);
	evloop_destroy(l);
	evloop_destroy(NULL);
}

/* Resets from a "vCPU" while the loop thread serves notifications: no deadlock, no stray call. */
static void test_reset_race(void **state)
{
	struct fx *x = *state;
	struct virtio_mmio *t = x->t;

	assert_int_equal(evloop_start(x->loop), 0);
	for (unsigned int i = 0; i < 200; i++) {
		bring_up(x, 2);
		offer_in(x, 0, (uint16_t)(i % 8), 4);
		vdrv_wr(t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
		vdrv_wr(t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
		if (i % 2)
			usleep(100);
		vdrv_wr(t, VIRTIO_MMIO_STATUS, 0);
	}
	evloop_pause(x->loop);
	assert_int_equal(x->dev.resets, 400); /* negotiate()'s and the loop's */
	/* Every call happened with the device running (fake_queue_notify asserts it). */
	assert_true(x->dev.notified[0] >= x->dev.served);
	evloop_resume(x->loop);
}

int main(void)
{
	log_set_level(LOG_ERR);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_ids, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_features, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_queue_setup_and_notify, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_reset_and_needs_reset, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_config, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_save_load, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_kvm_registration, setup, teardown),
	    cmocka_unit_test(test_evloop_thread),
	    cmocka_unit_test(test_evloop_run_once),
	    cmocka_unit_test_setup_teardown(test_reset_race, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
