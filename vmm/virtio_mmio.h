/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_VMM_VIRTIO_MMIO_H
#define VMSNAP_VMM_VIRTIO_MMIO_H

/*
 * The virtio-mmio transport (virtio 1.x, register layout version 2; no legacy). One instance
 * per device: the register window is an iobus MMIO handler (virtio_mmio_io) run on vCPU
 * threads; queue notifications arrive as ioeventfds (KVM_IOEVENTFD on QueueNotify with the
 * queue index as datamatch) handled on the evloop thread; interrupts leave as an irqfd
 * (KVM_IRQFD on the device's GSI, edge). Without KVM (vm_fd < 0, unit tests and fuzzing) a
 * QueueNotify write signals the queue's eventfd itself and the interrupt eventfd is left for
 * the caller to read.
 *
 * Why virtio-mmio described in ACPI rather than virtio-pci: docs/DEVICES.md.
 *
 * Locking: one mutex per device, held by register accesses and around ops->queue_notify, so
 * a device's handler never races a reset or a save. Every ops callback runs with it held, so
 * none may evloop_del() an fd whose handler takes the device lock (it would wait forever):
 * a device's own fds (a tap) stay watched across a reset, or are deleted after unlocking.
 */

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "formats/codec.h"
#include "vmm/evloop.h"
#include "vmm/gmem.h"
#include "vmm/virtq.h"

#define VIRTIO_ID_NET 1u
#define VIRTIO_ID_BLOCK 2u

#define VIRTIO_F_VERSION_1 32
#define VIRTIO_F_ACCESS_PLATFORM 33
#define VIRTIO_RING_F_INDIRECT_DESC 28

#define VIRTIO_MMIO_MAX_QUEUES 4u

/* Registers of the window (virtio 1.2, 4.2.2), offsets from its base. */
#define VIRTIO_MMIO_MAGIC		0x000
#define VIRTIO_MMIO_VERSION		0x004
#define VIRTIO_MMIO_DEVICE_ID		0x008
#define VIRTIO_MMIO_VENDOR_ID		0x00c
#define VIRTIO_MMIO_DEVICE_FEATURES	0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES	0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL		0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX	0x034
#define VIRTIO_MMIO_QUEUE_NUM		0x038
#define VIRTIO_MMIO_QUEUE_READY		0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY	0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS	0x060
#define VIRTIO_MMIO_INTERRUPT_ACK	0x064
#define VIRTIO_MMIO_STATUS		0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW	0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH	0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW	0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH	0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW	0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH	0x0a4
#define VIRTIO_MMIO_SHM_SEL		0x0ac
#define VIRTIO_MMIO_SHM_LEN_LOW		0x0b0
#define VIRTIO_MMIO_SHM_LEN_HIGH	0x0b4
#define VIRTIO_MMIO_SHM_BASE_LOW	0x0b8
#define VIRTIO_MMIO_SHM_BASE_HIGH	0x0bc
#define VIRTIO_MMIO_CONFIG_GENERATION	0x0fc
#define VIRTIO_MMIO_CONFIG		0x100 /* device config space from here */

/* Device status bits (virtio 1.2, 2.1). */
#define VIRTIO_STATUS_ACKNOWLEDGE	 0x01u
#define VIRTIO_STATUS_DRIVER		 0x02u
#define VIRTIO_STATUS_DRIVER_OK		 0x04u
#define VIRTIO_STATUS_FEATURES_OK	 0x08u
#define VIRTIO_STATUS_DEVICE_NEEDS_RESET 0x40u
#define VIRTIO_STATUS_FAILED		 0x80u

/* InterruptStatus bits */
#define VIRTIO_MMIO_INT_VRING 1u
#define VIRTIO_MMIO_INT_CONFIG 2u

struct virtio_device_ops {
	const char *name;	 /* "virtio-blk" */
	uint32_t device_id;	 /* VIRTIO_ID_* */
	uint64_t features;	 /* offered; the transport adds VERSION_1 and INDIRECT_DESC */
	unsigned int nqueues;	 /* 1..VIRTIO_MMIO_MAX_QUEUES */
	uint16_t queue_max;	 /* QueueNumMax, power of two <= VIRTQ_MAX_SIZE */
	uint32_t config_size;	 /* bytes of device config space */
	/* Device config space at @off (checked: off + len <= config_size). */
	void (*config_read)(void *dev, uint32_t off, void *buf, uint32_t len);
	void (*config_write)(void *dev, uint32_t off, const void *buf, uint32_t len);
	/* Queue @q was notified (or must be looked at after a restore): take requests with
	 * virtio_mmio_queue()/virtq_pop, complete them with virtq_push and call
	 * virtio_mmio_interrupt(). Runs on the evloop thread with the device lock held (from
	 * virtio_mmio_load() on the caller's thread), only while the queue is ready and
	 * DRIVER_OK is set; setting DRIVER_OK looks at every ready queue once. */
	void (*queue_notify)(void *dev, unsigned int q);
	/* The driver reset the device (status 0), or DRIVER_OK was set (@ok) with the
	 * negotiated features in virtio_mmio_driver_features(). Device lock held. Optional. */
	void (*reset)(void *dev);
	void (*driver_ok)(void *dev);
	/* Device-specific state beyond the transport's. Optional (NULL: none). */
	uint16_t state_version;
	int (*save)(void *dev, struct enc *e);
	int (*load)(void *dev, struct dec *d, unsigned int version);
};

struct virtio_mmio;

/**
 * Create the transport for a device at @base with interrupt @gsi. @vm_fd < 0: no KVM (see
 * above). Queue eventfds go on @loop. Returns NULL after logging.
 */
struct virtio_mmio *virtio_mmio_create(const struct virtio_device_ops *ops, void *dev,
				       struct gmem *m, int vm_fd, struct evloop *loop,
				       uint64_t base, uint32_t gsi);
void virtio_mmio_destroy(struct virtio_mmio *t);

/** The register window, an iobus handler (@opaque is the struct virtio_mmio). */
void virtio_mmio_io(void *opaque, uint64_t offset, uint8_t *data, unsigned int len,
		    bool is_write);

/** Queue @q (NULL if out of range). Only under the device lock (inside ops callbacks). */
struct virtq *virtio_mmio_queue(struct virtio_mmio *t, unsigned int q);
/** Features the driver accepted. */
uint64_t virtio_mmio_driver_features(const struct virtio_mmio *t);
/** True when the driver has set DRIVER_OK and not reset since. */
bool virtio_mmio_running(const struct virtio_mmio *t);

/**
 * Raise InterruptStatus @bits and signal the guest (irqfd). VIRTIO_MMIO_INT_CONFIG also
 * advances ConfigGeneration: change the config space and call this under one lock hold.
 * Device lock held.
 */
void virtio_mmio_interrupt(struct virtio_mmio *t, uint32_t bits);
/** The device failed: set DEVICE_NEEDS_RESET and raise a config interrupt. Lock held. */
void virtio_mmio_set_needs_reset(struct virtio_mmio *t);
/** The interrupt eventfd (tests without KVM read it). */
int virtio_mmio_irq_fd(const struct virtio_mmio *t);

/** Take/release the device lock from outside the callbacks (e.g. a tap readable handler). */
void virtio_mmio_lock(struct virtio_mmio *t);
void virtio_mmio_unlock(struct virtio_mmio *t);

#define VIRTIO_MMIO_STATE_VERSION 1
/**
 * Transport state (status, features, selectors, interrupt status, config generation, each
 * queue's virtq state) followed by the device's own (ops->save). The VM is paused and the
 * evloop paused.
 */
int virtio_mmio_save(struct virtio_mmio *t, struct enc *e);
/**
 * Load it into a device just created with the same configuration, then re-arm: register the
 * ioeventfds of ready queues and look at every ready queue once (requests the driver queued
 * before the save are served). -ENOTSUP for a newer version, -EINVAL for inconsistent state.
 */
int virtio_mmio_load(struct virtio_mmio *t, struct dec *d, unsigned int version);

#endif
