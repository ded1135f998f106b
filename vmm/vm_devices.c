/* SPDX-License-Identifier: MIT */
/*
 * The machine's devices beyond COM1 and the i8042: the device I/O thread, virtio-blk and
 * virtio-net on virtio-mmio slots, the ACPI tables that describe them, the ACPI PM port and the
 * VM generation ID (docs/DEVICES.md).
 */
#include <errno.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <stdlib.h>
#include <time.h>

#include "util/log.h"
#include "vmm/acpi.h"
#include "vmm/blkdev.h"
#include "vmm/evloop.h"
#include "vmm/layout.h"
#include "vmm/virtio_blk.h"
#include "vmm/virtio_mmio.h"
#include "vmm/virtio_net.h"
#include "vmm/vm_internal.h"

static void pm_poweroff(void *opaque)
{
	vm_request_stop(opaque, VM_EXIT_POWEROFF, "guest powered off through ACPI (S5)");
}

static void pm_reset(void *opaque)
{
	vm_request_stop(opaque, VM_EXIT_POWEROFF, "guest reset through the ACPI reset register");
}

static int add_virtio(struct vm *vm, uint32_t type, unsigned int index)
{
	unsigned int slot = vm->nvirtio;
	struct vm_virtio *v = &vm->virtio[slot];
	v->type = type;
	v->index = index;
	v->base = LAYOUT_VIRTIO_MMIO_BASE + slot * LAYOUT_VIRTIO_MMIO_STRIDE;
	v->gsi = LAYOUT_VIRTIO_GSI_BASE + slot;
	if (type == VIRTIO_ID_BLOCK) {
		const struct vm_disk_config *d = &vm->cfg.disks[index];
		int r = vm_disk_check(d, index);
		if (r)
			return r;
		snprintf(v->name, sizeof(v->name), "virtio-blk%u", index);
		struct virtio_blk_params bc = {
			.path = d->path,
			.overlay = d->overlay,
			.readonly = d->readonly,
			.index = index,
		};
		struct virtio_blk *b =
		    virtio_blk_create(&bc, &vm->mem, vm->vm_fd, vm->loop, v->base, v->gsi);
		if (!b)
			return -EIO; /* logged, naming the file */
		v->dev = b;
		v->t = virtio_blk_transport(b);
	} else {
		const struct vm_net_config *n = &vm->cfg.nets[index];
		snprintf(v->name, sizeof(v->name), "virtio-net%u", index);
		struct virtio_net_params nc;
		int r = vm_net_params(n, &nc);
		if (r)
			return r; /* logged */
		struct virtio_net *nd =
		    virtio_net_create(&nc, &vm->mem, vm->vm_fd, vm->loop, v->base, v->gsi);
		if (!nd)
			return -EIO;
		v->dev = nd;
		v->t = virtio_net_transport(nd);
	}
	vm->nvirtio++;
	int r = iobus_register(&vm->bus, IO_SPACE_MMIO, v->base, LAYOUT_VIRTIO_MMIO_SIZE,
			       virtio_mmio_io, v->t, v->name);
	if (r)
		log_err("cannot register %s: %s", v->name, strerror(-r));
	return r;
}

int vm_devices_create(struct vm *vm)
{
	const struct vm_config *cfg = &vm->cfg;
	int r;
	if (cfg->ndisks > VM_MAX_DISKS || cfg->nnets > VM_MAX_NETS ||
	    cfg->ndisks + cfg->nnets > LAYOUT_VIRTIO_MAX) {
		log_err("too many devices: at most %d disks and %d networks", VM_MAX_DISKS,
			VM_MAX_NETS);
		return -EINVAL;
	}
	vm->loop = evloop_create();
	if (!vm->loop)
		return -ENOMEM;
	vm->pm = (struct acpi_pm){ .poweroff = pm_poweroff, .reset = pm_reset, .opaque = vm };
	r = iobus_register(&vm->bus, IO_SPACE_PIO, LAYOUT_ACPI_PM_PORT, 1, acpi_pm_io, &vm->pm,
			   "acpi-pm");
	if (r) {
		log_err("cannot register the ACPI PM port: %s", strerror(-r));
		return r;
	}
	/* Our own copy of the disk list: a snapshot's freeze changes it. */
	for (unsigned int i = 0; i < cfg->ndisks; i++) {
		const struct vm_disk_config *d = &cfg->disks[i];
		vm->disk_strs[i][0] = strdup(d->path ? d->path : "");
		vm->disk_strs[i][1] = d->overlay ? strdup(d->overlay) : NULL;
		if (!vm->disk_strs[i][0] || (d->overlay && !vm->disk_strs[i][1]))
			return -ENOMEM;
		vm->disks[i] = *d;
		vm->disks[i].path = vm->disk_strs[i][0];
		vm->disks[i].overlay = vm->disk_strs[i][1];
	}
	vm->cfg.disks = vm->disks;
	for (unsigned int i = 0; i < cfg->ndisks; i++)
		if ((r = add_virtio(vm, VIRTIO_ID_BLOCK, i)))
			return r;
	for (unsigned int i = 0; i < cfg->nnets; i++)
		if ((r = add_virtio(vm, VIRTIO_ID_NET, i)))
			return r;
	vm_devtable_build(vm);
	return 0;
}

int vm_devices_build_acpi(struct vm *vm, uint64_t *rsdp)
{
	struct acpi_virtio_dev devs[LAYOUT_VIRTIO_MAX];
	for (unsigned int i = 0; i < vm->nvirtio; i++)
		devs[i] = (struct acpi_virtio_dev){ vm->virtio[i].base, LAYOUT_VIRTIO_MMIO_SIZE,
						    vm->virtio[i].gsi };
	struct acpi_config ac = {
		.ncpus = vm->ncpus,
		.virtio = devs,
		.nvirtio = vm->nvirtio,
		.vmgenid_addr = LAYOUT_VMGENID_ADDR,
		.ged_gsi = LAYOUT_GED_GSI,
	};
	int r = acpi_build(&vm->mem, &ac, rsdp);
	if (r)
		log_err("cannot build the ACPI tables: %s", strerror(-r));
	return r;
}

void vm_devices_destroy(struct vm *vm)
{
	/* Devices first: each takes its fds off the loop (evloop_del waits for a handler
	 * running on it), then the loop and its thread go. */
	for (unsigned int i = 0; i < vm->nvirtio; i++) {
		struct vm_virtio *v = &vm->virtio[i];
		if (v->type == VIRTIO_ID_BLOCK)
			virtio_blk_destroy(v->dev);
		else
			virtio_net_destroy(v->dev);
	}
	vm->nvirtio = 0;
	evloop_destroy(vm->loop);
	vm->loop = NULL;
	for (unsigned int i = 0; i < VM_MAX_DISKS; i++) {
		free(vm->disk_strs[i][0]);
		free(vm->disk_strs[i][1]);
		vm->disk_strs[i][0] = vm->disk_strs[i][1] = NULL;
	}
}

int vm_disks_freeze(struct vm *vm, const char *image_path, bool stopping,
		    struct vm_disk_config *out, char *err, size_t errlen)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	for (unsigned int i = 0; i < vm->nvirtio; i++) {
		struct vm_virtio *v = &vm->virtio[i];
		if (v->type != VIRTIO_ID_BLOCK)
			continue;
		unsigned int k = v->index;
		struct vm_disk_config *d = &vm->disks[k];
		if (d->readonly || (!d->overlay && stopping)) {
			out[k] = (struct vm_disk_config){ .path = d->path, .readonly = d->readonly };
			continue;
		}
		if (!d->overlay) {
			snprintf(err, errlen,
				 "disk %s is a raw file the VM writes to, which a snapshot cannot "
				 "freeze: give it an overlay (--disk %s,overlay=FILE), make it "
				 "readonly, or save with --stop",
				 d->path, d->path);
			return -EBUSY;
		}
		char frozen[4096];
		int n = snprintf(frozen, sizeof(frozen), "%s.disk%u-%llx%05llx", image_path, k,
				 (unsigned long long)ts.tv_sec,
				 (unsigned long long)(ts.tv_nsec / 10000));
		if (n < 0 || (size_t)n >= sizeof(frozen)) {
			snprintf(err, errlen, "image path too long for its disk files");
			return -ENAMETOOLONG;
		}
		char *fz = strdup(frozen);
		if (!fz)
			return -ENOMEM;
		int r = virtio_blk_freeze_new_overlay(v->dev, d->overlay, NULL, fz);
		if (r) {
			free(fz);
			snprintf(err, errlen, "cannot freeze disk %s (overlay %s): %s", d->path,
				 d->overlay, strerror(-r));
			return r;
		}
		/* The VM now runs on: base chain -> frozen layer -> the new overlay at the old
		 * name; reopening it means naming the frozen layer as its base. */
		free(vm->disk_strs[k][0]);
		vm->disk_strs[k][0] = fz;
		d->path = fz;
		out[k] = (struct vm_disk_config){ .path = fz };
	}
	/* What a restore will check the files against (empty overlays on top do not count). */
	for (unsigned int i = 0; i < vm->nvirtio; i++) {
		struct vm_virtio *v = &vm->virtio[i];
		if (v->type != VIRTIO_ID_BLOCK)
			continue;
		struct blkdev_identity id;
		int r = blkdev_identity(virtio_blk_disk(v->dev), &id);
		if (r) {
			snprintf(err, errlen, "cannot identify disk %s: %s", out[v->index].path,
				 strerror(-r));
			return r;
		}
		out[v->index].has_identity = true;
		out[v->index].id_size = id.size;
		memcpy(out[v->index].id_sha256, id.sha256, 32);
	}
	return 0;
}

int vm_disk_check(const struct vm_disk_config *d, unsigned int index)
{
	if (!d->has_identity)
		return 0;
	struct blkdev *b;
	int r = blkdev_open(&b, d->path, true, NULL);
	if (r)
		return r; /* logged, naming the file */
	struct blkdev_identity id;
	r = blkdev_identity(b, &id);
	blkdev_close(b);
	if (r)
		return r;
	if (id.size != d->id_size || memcmp(id.sha256, d->id_sha256, 32)) {
		if (id.size != d->id_size)
			log_err("disk %u: %s is %llu bytes, but was %llu bytes when the image was "
				"saved: it changed, and the saved VM would see a different disk",
				index, d->path, (unsigned long long)id.size,
				(unsigned long long)d->id_size);
		else
			log_err("disk %u: %s has changed since the image was saved (content hash "
				"differs): the saved VM would see a different disk",
				index, d->path);
		return -ESTALE;
	}
	return 0;
}

/* ---- VM generation ID ---- */

int vm_new_generation(struct vm *vm, bool notify)
{
	uint8_t id[16];
	size_t got = 0;
	while (got < sizeof(id)) {
		ssize_t n = getrandom(id + got, sizeof(id) - got, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			int r = -errno;
			log_errno("getrandom");
			return r;
		}
		got += (size_t)n;
	}
	int r = gmem_write(&vm->mem, LAYOUT_VMGENID_ADDR, id, sizeof(id));
	if (r) {
		log_err("cannot write the VM generation ID: guest RAM too small");
		return r;
	}
	if (!notify)
		return 0;
	/* An edge on the GED's line: its _EVT notifies VGEN, Linux's vmgenid re-reads. */
	struct kvm_irq_level irq = { .irq = LAYOUT_GED_GSI, .level = 1 };
	if (ioctl(vm->vm_fd, KVM_IRQ_LINE, &irq) == 0) {
		irq.level = 0;
		ioctl(vm->vm_fd, KVM_IRQ_LINE, &irq);
	} else {
		log_warn("cannot raise the generation-ID interrupt: %s", strerror(errno));
	}
	return 0;
}

void vm_generation_hex(struct vm *vm, char out[33])
{
	uint8_t id[16] = { 0 };
	gmem_read(&vm->mem, LAYOUT_VMGENID_ADDR, id, sizeof(id));
	for (unsigned int i = 0; i < 16; i++)
		snprintf(out + 2 * i, 3, "%02x", id[i]);
}

int vm_new_macs(struct vm *vm)
{
	for (unsigned int i = 0; i < vm->nvirtio; i++) {
		struct vm_virtio *v = &vm->virtio[i];
		if (v->type != VIRTIO_ID_NET)
			continue;
		uint8_t mac[6];
		int r = virtio_net_mac_generate(mac);
		if (!r)
			r = virtio_net_set_mac(v->dev, mac);
		if (r) {
			log_err("%s: cannot set a new MAC: %s", v->name, strerror(-r));
			return r;
		}
	}
	return 0;
}

int vm_clock_forward(struct vm *vm, uint64_t ns)
{
	struct kvm_clock_data c;
	memset(&c, 0, sizeof(c));
	if (ioctl(vm->vm_fd, KVM_GET_CLOCK, &c) < 0) {
		int r = -errno;
		log_errno("KVM_GET_CLOCK");
		return r;
	}
	struct kvm_clock_data n = { .clock = c.clock + ns, .flags = 0 };
	if (ioctl(vm->vm_fd, KVM_SET_CLOCK, &n) < 0) {
		int r = -errno;
		log_errno("KVM_SET_CLOCK");
		return r;
	}
	return 0;
}
