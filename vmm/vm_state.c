/* SPDX-License-Identifier: MIT */
/* The machine's state for snapshot and migration: vCPUs, VM-wide KVM state, the device table. */
#include <errno.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "util/log.h"
#include "vmm/api.h"
#include "vmm/i8042.h"
#include "vmm/kvmstate.h"
#include "vmm/uart.h"
#include "vmm/virtio_mmio.h"
#include "vmm/vm_internal.h"

static int uart_dev_save(void *opaque, struct enc *e)
{
	return uart_save(opaque, e);
}

static int uart_dev_load(void *opaque, struct dec *d, unsigned int version)
{
	return uart_load(opaque, d, version);
}

static int i8042_dev_save(void *opaque, struct enc *e)
{
	return i8042_save(opaque, e);
}

static int i8042_dev_load(void *opaque, struct dec *d, unsigned int version)
{
	return i8042_load(opaque, d, version);
}

static int virtio_dev_save(void *opaque, struct enc *e)
{
	return virtio_mmio_save(opaque, e);
}

static int virtio_dev_load(void *opaque, struct dec *d, unsigned int version)
{
	return virtio_mmio_load(opaque, d, version);
}

/*
 * Stable device ids, forever (a removed device's id is never reused): the legacy devices
 * have one each; virtio slots have a range per type, the n-th device of a type taking
 * base + n. An image or a migration stream names devices by these ids.
 */
#define DEV_ID_UART 1u
#define DEV_ID_I8042 2u
#define DEV_ID_VIRTIO_BLK 0x100u
#define DEV_ID_VIRTIO_NET 0x200u

static const struct dev_type {
	const char *name;
	uint16_t first, count, version;
} dev_types[] = {
	{ "uart-com1", DEV_ID_UART, 1, UART_STATE_VERSION },
	{ "i8042", DEV_ID_I8042, 1, I8042_STATE_VERSION },
	{ "virtio-blk", DEV_ID_VIRTIO_BLK, VM_MAX_DISKS, VIRTIO_MMIO_STATE_VERSION },
	{ "virtio-net", DEV_ID_VIRTIO_NET, VM_MAX_NETS, VIRTIO_MMIO_STATE_VERSION },
};

void vm_devtable_build(struct vm *vm)
{
	unsigned int n = 0;
	vm->devs[n++] = (struct vm_dev){ { "uart-com1", DEV_ID_UART, UART_STATE_VERSION },
					 uart_dev_save, uart_dev_load, vm->uart };
	vm->devs[n++] = (struct vm_dev){ { "i8042", DEV_ID_I8042, I8042_STATE_VERSION },
					 i8042_dev_save, i8042_dev_load, vm->kbd };
	for (unsigned int i = 0; i < vm->nvirtio && n < VM_MAX_DEVS; i++) {
		const struct vm_virtio *v = &vm->virtio[i];
		uint16_t base = v->type == VIRTIO_ID_BLOCK ? DEV_ID_VIRTIO_BLK : DEV_ID_VIRTIO_NET;
		vm->devs[n++] = (struct vm_dev){
			{ v->name, (uint16_t)(base + v->index), VIRTIO_MMIO_STATE_VERSION },
			virtio_dev_save, virtio_dev_load, v->t
		};
	}
	vm->ndevs = n;
}

unsigned int vm_device_count(const struct vm *vm)
{
	return vm->ndevs;
}

const struct vm_device_info *vm_device_get_info(const struct vm *vm, unsigned int index)
{
	return index < vm->ndevs ? &vm->devs[index].info : NULL;
}

int vm_device_save(struct vm *vm, unsigned int index, struct enc *e)
{
	if (index >= vm->ndevs)
		return -EINVAL;
	int r = vm->devs[index].save(vm->devs[index].opaque, e);
	if (r)
		log_err("cannot save device %s: %s", vm->devs[index].info.name, strerror(-r));
	return r;
}

static const struct vm_dev *device_by_id(const struct vm *vm, uint16_t id)
{
	for (unsigned int i = 0; i < vm->ndevs; i++)
		if (vm->devs[i].info.id == id)
			return &vm->devs[i];
	return NULL;
}

static const struct dev_type *type_by_id(uint16_t id)
{
	for (size_t i = 0; i < sizeof(dev_types) / sizeof(dev_types[0]); i++)
		if (id >= dev_types[i].first && id < dev_types[i].first + dev_types[i].count)
			return &dev_types[i];
	return NULL;
}

const char *vm_device_type_name(uint16_t id)
{
	const struct dev_type *t = type_by_id(id);
	return t ? t->name : NULL;
}

bool vm_device_known(const struct vm *vm, uint16_t id, unsigned int version)
{
	if (!vm) { /* a device type this build knows, whatever the machine has */
		const struct dev_type *t = type_by_id(id);
		return t && version >= 1 && version <= t->version;
	}
	const struct vm_dev *dd = device_by_id(vm, id);
	return dd && version >= 1 && version <= dd->info.version;
}

int vm_device_load(struct vm *vm, uint16_t id, struct dec *d, unsigned int version)
{
	const struct vm_dev *dd = device_by_id(vm, id);
	if (!dd) {
		const struct dev_type *t = type_by_id(id);
		if (t)
			log_err("the saved VM has a %s device (id 0x%x) that this machine was not "
				"given (its disks and networks must be configured the same way)",
				t->name, id);
		else
			log_err("image has state for device id %u, which this machine does not have",
				id);
		return -ENOENT;
	}
	int r = dd->load(dd->opaque, d, version);
	if (r == -ENOTSUP)
		log_err("device %s: state version %u is newer than this vmsnap reads (%u)",
			dd->info.name, version, dd->info.version);
	else if (r)
		log_err("device %s: corrupt state (%s)", dd->info.name, strerror(-r));
	return r;
}

int vm_vcpu_save(struct vm *vm, unsigned int index, struct enc *e)
{
	if (index >= vm->ncpus)
		return -EINVAL;
	return kvmstate_vcpu_save(vm->kvm_fd, vm->vm_fd, vm->vcpus[index].fd, e);
}

int vm_vcpu_load(struct vm *vm, unsigned int index, struct dec *d, unsigned int version)
{
	if (index >= vm->ncpus)
		return -EINVAL;
	int r = kvmstate_vcpu_load(vm->kvm_fd, vm->vm_fd, vm->vcpus[index].fd, d, version);
	if (r)
		log_err("cannot load vCPU %u's state: %s", index, strerror(-r));
	return r;
}

int vm_arch_save(struct vm *vm, struct enc *e)
{
	return kvmstate_vm_save(vm->vm_fd, e);
}

int vm_arch_load(struct vm *vm, struct dec *d, unsigned int version)
{
	int r = kvmstate_vm_load(vm->vm_fd, d, version);
	if (r)
		log_err("cannot load the VM's interrupt controller and timer state: %s",
			strerror(-r));
	return r;
}

int vm_host_cpuid(struct kvm_cpuid_entry2 **out)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		log_errno("cannot open /dev/kvm");
		return -ENODEV;
	}
	struct kvm_cpuid2 *c = vm_supported_cpuid(fd);
	close(fd);
	if (!c)
		return -EIO;
	int n = (int)c->nent;
	*out = malloc((size_t)n * sizeof(**out) + 1);
	if (!*out) {
		free(c);
		return -ENOMEM;
	}
	memcpy(*out, c->entries, (size_t)n * sizeof(**out));
	free(c);
	return n;
}

const struct vm_config *vm_get_config(struct vm *vm)
{
	return &vm->cfg;
}

int vm_api_add_commands(struct vm *vm, const struct api_command *table, void *opaque)
{
	if (!vm->api)
		return -ENOTCONN;
	return api_add_commands(vm->api, table, opaque);
}

struct api_server *vm_api_server(struct vm *vm)
{
	return vm->api;
}
