/* SPDX-License-Identifier: MIT */
#include "virtio_mmio.h"

#include <endian.h>
#include <errno.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "util/log.h"

/* Register offsets and status bits: vmm/virtio_mmio.h. */
#define MMIO_MAGIC	0x74726976u /* "virt" */
#define MMIO_VERSION	2u
#define MMIO_VENDOR	0x4D534E56u
#define MMIO_CONFIG_MAX (0x1000u - VIRTIO_MMIO_CONFIG) /* config space of a 4 KiB window */

/* The status bits a driver sets (NEEDS_RESET is the device's). */
#define ST_DRIVER_BITS                                                                             \
	(VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_DRIVER_OK |              \
	 VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_FAILED)

#define BIT(n) (1ull << (n))
/* Feature bits 24..40 belong to the rings and the transport (virtio 1.2, 6). */
#define TRANSPORT_FEATURES (((1ull << 41) - 1) & ~((1ull << 24) - 1))
#define TRANSPORT_SUPPORTED                                                                        \
	(BIT(VIRTIO_RING_F_INDIRECT_DESC) | BIT(VIRTIO_F_VERSION_1) | BIT(VIRTIO_F_ACCESS_PLATFORM))

struct mmio_queue {
	struct virtq q;
	int efd;	/* notify eventfd while the queue is ready, else -1 */
	bool ioeventfd; /* efd is registered with KVM on QueueNotify */
	struct virtio_mmio *t;
	unsigned int index;
};

struct virtio_mmio {
	pthread_mutex_t lock;
	const struct virtio_device_ops *ops;
	void *dev;
	struct gmem *m;
	int vm_fd;
	struct evloop *loop;
	uint64_t base;
	uint32_t gsi;
	uint64_t offered;
	int irq_fd;
	bool irqfd;

	/* Registers. */
	uint32_t status;
	uint64_t driver_features;
	uint32_t device_features_sel, driver_features_sel;
	uint32_t queue_sel;
	uint32_t int_status;
	uint32_t config_gen;
	struct mmio_queue queues[VIRTIO_MMIO_MAX_QUEUES];
};

/*
 * Notify eventfds taken off a queue under the device lock, to be deleted from the loop and
 * closed after it is dropped: evloop_del() waits for a running handler, and the handler
 * takes the device lock.
 */
struct retired {
	unsigned int n;
	int fd[VIRTIO_MMIO_MAX_QUEUES];
};

static void finish_retired(struct virtio_mmio *t, struct retired *r)
{
	for (unsigned int i = 0; i < r->n; i++) {
		evloop_del(t->loop, r->fd[i]);
		close(r->fd[i]);
	}
	r->n = 0;
}

static int kvm_ioeventfd(struct virtio_mmio *t, struct mmio_queue *s, bool assign)
{
	struct kvm_ioeventfd io = {
	    .datamatch = s->index,
	    .addr = t->base + VIRTIO_MMIO_QUEUE_NOTIFY,
	    .len = 4,
	    .fd = s->efd,
	    .flags = KVM_IOEVENTFD_FLAG_DATAMATCH | (assign ? 0 : KVM_IOEVENTFD_FLAG_DEASSIGN),
	};
	if (ioctl(t->vm_fd, KVM_IOEVENTFD, &io) < 0) {
		int r = -errno;
		log_errno("%s: KVM_IOEVENTFD (%s queue %u)", t->ops->name,
			  assign ? "assign" : "deassign", s->index);
		return r;
	}
	return 0;
}

static void notify_handler(void *opaque, int fd)
{
	struct mmio_queue *s = opaque;
	struct virtio_mmio *t = s->t;
	uint64_t v;

	if (read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		log_errno("%s: read notify eventfd", t->ops->name);
	pthread_mutex_lock(&t->lock);
	/* The queue may have been reset since the event; and no work before DRIVER_OK. */
	if (s->efd == fd && s->q.ready && (t->status & VIRTIO_STATUS_DRIVER_OK))
		t->ops->queue_notify(t->dev, s->index);
	pthread_mutex_unlock(&t->lock);
}

/* Give a ready queue its notify eventfd (and ioeventfd, and loop watch). Lock held. */
static int arm_queue(struct virtio_mmio *t, struct mmio_queue *s)
{
	int r;
	s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (s->efd < 0) {
		r = -errno;
		log_errno("%s: eventfd for queue %u", t->ops->name, s->index);
		return r;
	}
	if (t->vm_fd >= 0) {
		r = kvm_ioeventfd(t, s, true);
		if (r)
			goto fail;
		s->ioeventfd = true;
	}
	r = evloop_add(t->loop, s->efd, notify_handler, s);
	if (r) {
		log_err("%s: cannot watch queue %u: %s", t->ops->name, s->index, strerror(-r));
		goto fail;
	}
	return 0;
fail:
	if (s->ioeventfd)
		kvm_ioeventfd(t, s, false);
	s->ioeventfd = false;
	close(s->efd);
	s->efd = -1;
	return r;
}

/* Take a queue's eventfd away (KVM deassigned now, loop and close after unlock). Lock held. */
static void disarm_queue(struct virtio_mmio *t, struct mmio_queue *s, struct retired *r)
{
	if (s->efd < 0)
		return;
	if (s->ioeventfd)
		kvm_ioeventfd(t, s, false);
	s->ioeventfd = false;
	r->fd[r->n++] = s->efd;
	s->efd = -1;
}

static void signal_irq(struct virtio_mmio *t)
{
	uint64_t one = 1;
	if (write(t->irq_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_errno("%s: signal interrupt", t->ops->name);
}

/* Wake the loop for a queue as if the driver had notified it. */
static void kick_queue(struct virtio_mmio *t, struct mmio_queue *s)
{
	uint64_t one = 1;
	if (s->efd >= 0 && write(s->efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_errno("%s: signal queue %u", t->ops->name, s->index);
}

/* Registers and queues to their reset values (the device's own reset is the caller's). */
static void reset_transport(struct virtio_mmio *t, struct retired *r)
{
	for (unsigned int i = 0; i < t->ops->nqueues; i++) {
		struct mmio_queue *s = &t->queues[i];
		disarm_queue(t, s, r);
		virtq_reset(&s->q);
		s->q.size = t->ops->queue_max; /* QueueNum until the driver writes it */
	}
	t->status = 0;
	t->driver_features = 0;
	t->device_features_sel = t->driver_features_sel = 0;
	t->queue_sel = 0;
	t->int_status = 0;
}

static bool features_ok(const struct virtio_mmio *t, uint64_t f)
{
	return (f & BIT(VIRTIO_F_VERSION_1)) && !(f & ~t->offered);
}

static void write_status(struct virtio_mmio *t, uint32_t v, struct retired *r)
{
	if (v == 0) {
		if (t->ops->reset)
			t->ops->reset(t->dev);
		reset_transport(t, r);
		return;
	}
	uint32_t cur = t->status & ST_DRIVER_BITS;
	uint32_t nv = v & ST_DRIVER_BITS; /* NEEDS_RESET is the device's */
	if ((cur & ~nv) || (v & ~(ST_DRIVER_BITS | VIRTIO_STATUS_DEVICE_NEEDS_RESET))) {
		log_ratelimited(LOG_WARN,
				"%s: driver wrote status 0x%x over 0x%x without reset; ignored",
				t->ops->name, v, t->status);
		return;
	}
	if (((nv & VIRTIO_STATUS_DRIVER) && !(nv & VIRTIO_STATUS_ACKNOWLEDGE)) ||
	    ((nv & VIRTIO_STATUS_FEATURES_OK) && !(nv & VIRTIO_STATUS_DRIVER)) ||
	    ((nv & VIRTIO_STATUS_DRIVER_OK) && !(nv & VIRTIO_STATUS_FEATURES_OK))) {
		log_ratelimited(LOG_WARN, "%s: status 0x%x out of order; ignored", t->ops->name, v);
		return;
	}
	uint32_t added = nv & ~cur;
	if ((added & VIRTIO_STATUS_FEATURES_OK) && !features_ok(t, t->driver_features)) {
		/* The driver reads FEATURES_OK back and gives up when it is not there. */
		log_ratelimited(LOG_WARN, "%s: refusing features 0x%llx (offered 0x%llx)",
				t->ops->name, (unsigned long long)t->driver_features,
				(unsigned long long)t->offered);
		nv &= ~(VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
		added &= ~(VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
	}
	t->status = nv | (t->status & VIRTIO_STATUS_DEVICE_NEEDS_RESET);
	if (added & VIRTIO_STATUS_DRIVER_OK) {
		if (t->ops->driver_ok)
			t->ops->driver_ok(t->dev);
		/* Requests queued before DRIVER_OK were not served: look at them now. */
		for (unsigned int i = 0; i < t->ops->nqueues; i++)
			if (t->queues[i].q.ready)
				kick_queue(t, &t->queues[i]);
	}
}

static struct mmio_queue *cur_queue(struct virtio_mmio *t)
{
	return t->queue_sel < t->ops->nqueues ? &t->queues[t->queue_sel] : NULL;
}

static void set_half(uint64_t *v, bool high, uint32_t val)
{
	if (high)
		*v = (*v & 0xffffffffull) | ((uint64_t)val << 32);
	else
		*v = (*v & ~0xffffffffull) | val;
}

static void queue_set_ready(struct virtio_mmio *t, struct mmio_queue *s, uint32_t v,
			    struct retired *r)
{
	if (v == 0) {
		disarm_queue(t, s, r);
		s->q.ready = false;
		return;
	}
	if (v != 1 || s->q.ready)
		return;
	if (virtq_check(&s->q, t->m)) {
		log_ratelimited(
		    LOG_WARN,
		    "%s: queue %u: size %u or rings (0x%llx 0x%llx 0x%llx) unusable; "
		    "not ready",
		    t->ops->name, s->index, s->q.size, (unsigned long long)s->q.desc_gpa,
		    (unsigned long long)s->q.avail_gpa, (unsigned long long)s->q.used_gpa);
		return;
	}
	if (arm_queue(t, s))
		return; /* logged; the driver reads QueueReady 0 */
	s->q.ready = true;
}

static uint32_t reg_read(struct virtio_mmio *t, uint64_t off)
{
	struct mmio_queue *s = cur_queue(t);
	switch (off) {
	case VIRTIO_MMIO_MAGIC: return MMIO_MAGIC;
	case VIRTIO_MMIO_VERSION: return MMIO_VERSION;
	case VIRTIO_MMIO_DEVICE_ID: return t->ops->device_id;
	case VIRTIO_MMIO_VENDOR_ID: return MMIO_VENDOR;
	case VIRTIO_MMIO_DEVICE_FEATURES:
		if (t->device_features_sel > 1)
			return 0;
		return (uint32_t)(t->offered >> (32 * t->device_features_sel));
	case VIRTIO_MMIO_DEVICE_FEATURES_SEL: return t->device_features_sel;
	case VIRTIO_MMIO_DRIVER_FEATURES:
		if (t->driver_features_sel > 1)
			return 0;
		return (uint32_t)(t->driver_features >> (32 * t->driver_features_sel));
	case VIRTIO_MMIO_DRIVER_FEATURES_SEL: return t->driver_features_sel;
	case VIRTIO_MMIO_QUEUE_SEL: return t->queue_sel;
	case VIRTIO_MMIO_QUEUE_NUM_MAX: return s ? t->ops->queue_max : 0;
	case VIRTIO_MMIO_QUEUE_NUM: return s ? s->q.size : 0;
	case VIRTIO_MMIO_QUEUE_READY: return s ? s->q.ready : 0;
	case VIRTIO_MMIO_INTERRUPT_STATUS: return t->int_status;
	case VIRTIO_MMIO_STATUS: return t->status;
	case VIRTIO_MMIO_QUEUE_DESC_LOW: return s ? (uint32_t)s->q.desc_gpa : 0;
	case VIRTIO_MMIO_QUEUE_DESC_HIGH: return s ? (uint32_t)(s->q.desc_gpa >> 32) : 0;
	case VIRTIO_MMIO_QUEUE_DRIVER_LOW: return s ? (uint32_t)s->q.avail_gpa : 0;
	case VIRTIO_MMIO_QUEUE_DRIVER_HIGH: return s ? (uint32_t)(s->q.avail_gpa >> 32) : 0;
	case VIRTIO_MMIO_QUEUE_DEVICE_LOW: return s ? (uint32_t)s->q.used_gpa : 0;
	case VIRTIO_MMIO_QUEUE_DEVICE_HIGH: return s ? (uint32_t)(s->q.used_gpa >> 32) : 0;
	/* No shared memory regions: a length (and base) of -1 says so. */
	case VIRTIO_MMIO_SHM_LEN_LOW:
	case VIRTIO_MMIO_SHM_LEN_HIGH:
	case VIRTIO_MMIO_SHM_BASE_LOW:
	case VIRTIO_MMIO_SHM_BASE_HIGH: return 0xffffffffu;
	case VIRTIO_MMIO_CONFIG_GENERATION: return t->config_gen;
	default:
		log_ratelimited(LOG_WARN, "%s: read of unknown register 0x%llx", t->ops->name,
				(unsigned long long)off);
		return 0;
	}
}

static void reg_write(struct virtio_mmio *t, uint64_t off, uint32_t v, struct retired *r)
{
	struct mmio_queue *s = cur_queue(t);
	uint64_t *addr = NULL;

	switch (off) {
	case VIRTIO_MMIO_DEVICE_FEATURES_SEL: t->device_features_sel = v; return;
	case VIRTIO_MMIO_DRIVER_FEATURES_SEL: t->driver_features_sel = v; return;
	case VIRTIO_MMIO_DRIVER_FEATURES:
		if (t->status & VIRTIO_STATUS_FEATURES_OK) {
			log_ratelimited(LOG_WARN, "%s: features written after FEATURES_OK; ignored",
					t->ops->name);
			return;
		}
		if (t->driver_features_sel <= 1)
			set_half(&t->driver_features, t->driver_features_sel == 1, v);
		else if (v)
			log_ratelimited(LOG_WARN, "%s: driver features word %u = 0x%x ignored",
					t->ops->name, t->driver_features_sel, v);
		return;
	case VIRTIO_MMIO_QUEUE_SEL: t->queue_sel = v; return;
	case VIRTIO_MMIO_QUEUE_NUM:
		if (!s || s->q.ready || v == 0 || v > t->ops->queue_max || (v & (v - 1))) {
			log_ratelimited(LOG_WARN, "%s: QueueNum %u for queue %u ignored",
					t->ops->name, v, t->queue_sel);
			return;
		}
		s->q.size = (uint16_t)v;
		return;
	case VIRTIO_MMIO_QUEUE_READY:
		if (s)
			queue_set_ready(t, s, v, r);
		return;
	case VIRTIO_MMIO_QUEUE_NOTIFY:
		/* With KVM the ioeventfd takes these; here when there is none. */
		if (v < t->ops->nqueues && t->queues[v].q.ready)
			kick_queue(t, &t->queues[v]);
		else
			log_ratelimited(LOG_WARN, "%s: notify of queue %u that is not ready",
					t->ops->name, v);
		return;
	case VIRTIO_MMIO_INTERRUPT_ACK: t->int_status &= ~v; return;
	case VIRTIO_MMIO_STATUS: write_status(t, v, r); return;
	case VIRTIO_MMIO_QUEUE_DESC_LOW:
	case VIRTIO_MMIO_QUEUE_DESC_HIGH: addr = s ? &s->q.desc_gpa : NULL; break;
	case VIRTIO_MMIO_QUEUE_DRIVER_LOW:
	case VIRTIO_MMIO_QUEUE_DRIVER_HIGH: addr = s ? &s->q.avail_gpa : NULL; break;
	case VIRTIO_MMIO_QUEUE_DEVICE_LOW:
	case VIRTIO_MMIO_QUEUE_DEVICE_HIGH: addr = s ? &s->q.used_gpa : NULL; break;
	case VIRTIO_MMIO_SHM_SEL: return;
	default:
		log_ratelimited(LOG_WARN, "%s: write of 0x%x to register 0x%llx ignored",
				t->ops->name, v, (unsigned long long)off);
		return;
	}
	/* A ring address: only while its queue is not ready. */
	if (!addr || s->q.ready) {
		log_ratelimited(LOG_WARN, "%s: ring address for queue %u ignored", t->ops->name,
				t->queue_sel);
		return;
	}
	set_half(addr, off & 4, v);
}

static void config_access(struct virtio_mmio *t, uint32_t off, uint8_t *data, unsigned int len,
			  bool is_write)
{
	if ((len != 1 && len != 2 && len != 4) || off >= t->ops->config_size ||
	    len > t->ops->config_size - off) {
		log_ratelimited(LOG_WARN, "%s: config %s of %u bytes at 0x%x out of bounds",
				t->ops->name, is_write ? "write" : "read", len, off);
		if (!is_write)
			memset(data, 0xff, len);
		return;
	}
	if (!is_write)
		t->ops->config_read(t->dev, off, data, len);
	else if (t->ops->config_write)
		t->ops->config_write(t->dev, off, data, len);
}

void virtio_mmio_io(void *opaque, uint64_t offset, uint8_t *data, unsigned int len, bool is_write)
{
	struct virtio_mmio *t = opaque;
	struct retired r = {0};

	pthread_mutex_lock(&t->lock);
	if (offset >= VIRTIO_MMIO_CONFIG) {
		uint64_t off = offset - VIRTIO_MMIO_CONFIG;
		config_access(t, off > UINT32_MAX ? UINT32_MAX : (uint32_t)off, data, len,
			      is_write);
	} else if (len != 4 || offset % 4) {
		log_ratelimited(LOG_WARN, "%s: %u-byte access at register 0x%llx ignored",
				t->ops->name, len, (unsigned long long)offset);
		if (!is_write)
			memset(data, 0xff, len);
	} else if (is_write) {
		uint32_t v;
		memcpy(&v, data, 4);
		reg_write(t, offset, le32toh(v), &r);
	} else {
		uint32_t v = htole32(reg_read(t, offset));
		memcpy(data, &v, 4);
	}
	pthread_mutex_unlock(&t->lock);
	finish_retired(t, &r);
}

static bool ops_ok(const struct virtio_device_ops *ops)
{
	uint16_t qm = ops->queue_max;
	if (!ops->name || !ops->queue_notify)
		return false;
	if (ops->nqueues < 1 || ops->nqueues > VIRTIO_MMIO_MAX_QUEUES)
		return false;
	if (qm == 0 || qm > VIRTQ_MAX_SIZE || (qm & (qm - 1)))
		return false;
	if (ops->config_size > MMIO_CONFIG_MAX || (ops->config_size && !ops->config_read))
		return false;
	/* Ring and transport features other than these (EVENT_IDX, packed...) are not here. */
	if (ops->features & TRANSPORT_FEATURES & ~TRANSPORT_SUPPORTED)
		return false;
	return true;
}

struct virtio_mmio *virtio_mmio_create(const struct virtio_device_ops *ops, void *dev,
				       struct gmem *m, int vm_fd, struct evloop *loop,
				       uint64_t base, uint32_t gsi)
{
	if (!ops || !ops_ok(ops) || !m || !loop) {
		log_err("virtio-mmio: invalid device description for %s",
			ops && ops->name ? ops->name : "(unnamed)");
		return NULL;
	}
	struct virtio_mmio *t = calloc(1, sizeof(*t));
	if (!t) {
		log_err("%s: out of memory", ops->name);
		return NULL;
	}
	int r = pthread_mutex_init(&t->lock, NULL);
	if (r) {
		log_err("%s: mutex: %s", ops->name, strerror(r));
		free(t);
		return NULL;
	}
	t->ops = ops;
	t->dev = dev;
	t->m = m;
	t->vm_fd = vm_fd;
	t->loop = loop;
	t->base = base;
	t->gsi = gsi;
	t->offered = ops->features | BIT(VIRTIO_F_VERSION_1) | BIT(VIRTIO_RING_F_INDIRECT_DESC);
	for (unsigned int i = 0; i < VIRTIO_MMIO_MAX_QUEUES; i++) {
		t->queues[i].efd = -1;
		t->queues[i].t = t;
		t->queues[i].index = i;
	}
	struct retired none = {0};
	reset_transport(t, &none);

	t->irq_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (t->irq_fd < 0) {
		log_errno("%s: interrupt eventfd", ops->name);
		goto fail;
	}
	if (vm_fd >= 0) {
		struct kvm_irqfd irq = {.fd = (uint32_t)t->irq_fd, .gsi = gsi};
		if (ioctl(vm_fd, KVM_IRQFD, &irq) < 0) {
			log_errno("%s: KVM_IRQFD on GSI %u", ops->name, gsi);
			goto fail;
		}
		t->irqfd = true;
	}
	return t;
fail:
	virtio_mmio_destroy(t);
	return NULL;
}

void virtio_mmio_destroy(struct virtio_mmio *t)
{
	struct retired r = {0};
	if (!t)
		return;
	pthread_mutex_lock(&t->lock);
	for (unsigned int i = 0; i < t->ops->nqueues; i++)
		disarm_queue(t, &t->queues[i], &r);
	pthread_mutex_unlock(&t->lock);
	finish_retired(t, &r);
	if (t->irqfd) {
		struct kvm_irqfd irq = {
		    .fd = (uint32_t)t->irq_fd, .gsi = t->gsi, .flags = KVM_IRQFD_FLAG_DEASSIGN};
		if (ioctl(t->vm_fd, KVM_IRQFD, &irq) < 0)
			log_errno("%s: KVM_IRQFD deassign", t->ops->name);
	}
	if (t->irq_fd >= 0)
		close(t->irq_fd);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

struct virtq *virtio_mmio_queue(struct virtio_mmio *t, unsigned int q)
{
	return q < t->ops->nqueues ? &t->queues[q].q : NULL;
}

uint64_t virtio_mmio_driver_features(const struct virtio_mmio *t)
{
	return t->driver_features;
}

bool virtio_mmio_running(const struct virtio_mmio *t)
{
	return t->status & VIRTIO_STATUS_DRIVER_OK;
}

void virtio_mmio_interrupt(struct virtio_mmio *t, uint32_t bits)
{
	bits &= VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG;
	if (!bits)
		return;
	/* A config change is announced with this interrupt: the driver rereads the generation. */
	if (bits & VIRTIO_MMIO_INT_CONFIG)
		t->config_gen++;
	t->int_status |= bits;
	signal_irq(t);
}

void virtio_mmio_set_needs_reset(struct virtio_mmio *t)
{
	if (t->status & VIRTIO_STATUS_DEVICE_NEEDS_RESET)
		return;
	t->status |= VIRTIO_STATUS_DEVICE_NEEDS_RESET;
	log_warn("%s: device needs reset", t->ops->name);
	if (t->status & VIRTIO_STATUS_DRIVER_OK)
		virtio_mmio_interrupt(t, VIRTIO_MMIO_INT_CONFIG);
}

int virtio_mmio_irq_fd(const struct virtio_mmio *t)
{
	return t->irq_fd;
}

void virtio_mmio_lock(struct virtio_mmio *t)
{
	pthread_mutex_lock(&t->lock);
}

void virtio_mmio_unlock(struct virtio_mmio *t)
{
	pthread_mutex_unlock(&t->lock);
}

/*
 * Version 1: u32 device id, u8 queue count, u32 status, u64 driver features, u32 device
 * features select, u32 driver features select, u32 queue select, u32 interrupt status,
 * u32 config generation, each queue's virtq state (VIRTQ_STATE_VERSION 1), then the device's
 * own: u16 version (0: none), u32 length, that many bytes from ops->save.
 */
int virtio_mmio_save(struct virtio_mmio *t, struct enc *e)
{
	int r = 0;
	struct enc dev;

	enc_init(&dev);
	pthread_mutex_lock(&t->lock);
	enc_u32(e, t->ops->device_id);
	enc_u8(e, (uint8_t)t->ops->nqueues);
	enc_u32(e, t->status);
	enc_u64(e, t->driver_features);
	enc_u32(e, t->device_features_sel);
	enc_u32(e, t->driver_features_sel);
	enc_u32(e, t->queue_sel);
	enc_u32(e, t->int_status);
	enc_u32(e, t->config_gen);
	for (unsigned int i = 0; i < t->ops->nqueues; i++)
		virtq_save(&t->queues[i].q, e);
	if (t->ops->save) {
		r = t->ops->save(t->dev, &dev);
		if (r)
			log_err("%s: cannot save device state: %s", t->ops->name, strerror(-r));
	}
	pthread_mutex_unlock(&t->lock);
	if (!r && dev.len > UINT32_MAX)
		r = -EOVERFLOW;
	if (!r) {
		enc_u16(e, t->ops->save ? t->ops->state_version : 0);
		enc_u32(e, (uint32_t)dev.len);
		enc_bytes(e, dev.buf, dev.len);
		r = enc_error(e);
	}
	enc_free(&dev);
	return r;
}

/* Transport state decoded from an image, checked before anything live changes. */
struct mmio_state {
	uint32_t status;
	uint64_t driver_features;
	uint32_t device_features_sel, driver_features_sel, queue_sel;
	uint32_t int_status, config_gen;
	struct virtq q[VIRTIO_MMIO_MAX_QUEUES];
	uint16_t dev_version;
	const void *dev_state;
	uint32_t dev_len;
};

static int decode_state(struct virtio_mmio *t, struct dec *d, struct mmio_state *st)
{
	const char *why;
	uint32_t id = dec_u32_val(d);
	uint8_t nq = dec_u8_val(d);
	if (dec_error(d))
		return dec_error(d);
	if (id != t->ops->device_id || nq != t->ops->nqueues) {
		log_err("%s: saved state is of device %u with %u queues, not %u with %u",
			t->ops->name, id, nq, t->ops->device_id, t->ops->nqueues);
		return -EINVAL;
	}
	dec_u32(d, &st->status);
	dec_u64(d, &st->driver_features);
	dec_u32(d, &st->device_features_sel);
	dec_u32(d, &st->driver_features_sel);
	dec_u32(d, &st->queue_sel);
	dec_u32(d, &st->int_status);
	dec_u32(d, &st->config_gen);
	if (dec_error(d))
		return dec_error(d);
	for (unsigned int i = 0; i < nq; i++) {
		int r = virtq_load(&st->q[i], d, VIRTQ_STATE_VERSION);
		if (r)
			return r;
	}
	dec_u16(d, &st->dev_version);
	dec_u32(d, &st->dev_len);
	st->dev_state = dec_ptr(d, st->dev_len);
	if (dec_error(d))
		return dec_error(d);

	if (st->status & ~(ST_DRIVER_BITS | VIRTIO_STATUS_DEVICE_NEEDS_RESET)) {
		why = "unknown status bits";
		goto bad;
	}
	if ((st->status & VIRTIO_STATUS_FEATURES_OK) && !features_ok(t, st->driver_features)) {
		why = "accepted features not offered";
		goto bad;
	}
	if ((st->status & VIRTIO_STATUS_DRIVER_OK) && !(st->status & VIRTIO_STATUS_FEATURES_OK)) {
		why = "DRIVER_OK without FEATURES_OK";
		goto bad;
	}
	if (st->int_status & ~(VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG)) {
		why = "unknown interrupt status bits";
		goto bad;
	}
	for (unsigned int i = 0; i < nq; i++) {
		if (st->q[i].size > t->ops->queue_max) {
			why = "queue larger than QueueNumMax";
			goto bad;
		}
		if (st->q[i].ready && virtq_check(&st->q[i], t->m)) {
			why = "ready queue with rings outside RAM";
			goto bad;
		}
	}
	if (!t->ops->load && st->dev_len) {
		why = "device state for a device without any";
		goto bad;
	}
	return 0;
bad:
	log_err("%s: inconsistent saved state: %s", t->ops->name, why);
	return -EINVAL;
}

int virtio_mmio_load(struct virtio_mmio *t, struct dec *d, unsigned int version)
{
	struct mmio_state st;
	struct retired r = {0};
	int err;

	if (version < 1 || version > VIRTIO_MMIO_STATE_VERSION) {
		log_err("%s: state version %u not supported", t->ops->name, version);
		return -ENOTSUP;
	}
	memset(&st, 0, sizeof(st));
	err = decode_state(t, d, &st);
	if (err)
		return err;

	pthread_mutex_lock(&t->lock);
	if (t->ops->load) {
		struct dec dd;
		dec_init(&dd, st.dev_state, st.dev_len);
		err = t->ops->load(t->dev, &dd, st.dev_version);
		if (err) {
			log_err("%s: cannot load device state: %s", t->ops->name, strerror(-err));
			goto out;
		}
	}
	for (unsigned int i = 0; i < t->ops->nqueues; i++)
		disarm_queue(t, &t->queues[i], &r);
	t->status = st.status;
	t->driver_features = st.driver_features;
	t->device_features_sel = st.device_features_sel;
	t->driver_features_sel = st.driver_features_sel;
	t->queue_sel = st.queue_sel;
	t->int_status = st.int_status;
	t->config_gen = st.config_gen;
	for (unsigned int i = 0; i < t->ops->nqueues; i++) {
		struct mmio_queue *s = &t->queues[i];
		s->q = st.q[i];
		if (!s->q.ready)
			continue;
		err = arm_queue(t, s);
		if (err) {
			s->q.ready = false;
			goto out;
		}
	}
	/* Serve what the driver queued before the save; its notification may be gone. */
	if (t->status & VIRTIO_STATUS_DRIVER_OK)
		for (unsigned int i = 0; i < t->ops->nqueues; i++)
			if (t->queues[i].q.ready)
				t->ops->queue_notify(t->dev, i);
	/* An interrupt pending at save time may not have reached the guest: an extra one is
	 * harmless (the driver finds InterruptStatus), a lost one stalls it. */
	if (t->int_status)
		signal_irq(t);
out:
	pthread_mutex_unlock(&t->lock);
	finish_retired(t, &r);
	return err;
}
