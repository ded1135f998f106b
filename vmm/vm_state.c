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
#include "vmm/vm_internal.h"

static int uart_dev_save(struct vm *vm, struct enc *e)
{
	return uart_save(vm->uart, e);
}

static int uart_dev_load(struct vm *vm, struct dec *d, unsigned int version)
{
	return uart_load(vm->uart, d, version);
}

static int i8042_dev_save(struct vm *vm, struct enc *e)
{
	return i8042_save(vm->kbd, e);
}

static int i8042_dev_load(struct vm *vm, struct dec *d, unsigned int version)
{
	return i8042_load(vm->kbd, d, version);
}

/*
 * The device table: every device with state, in the order it is saved and loaded. Stable
 * ids are forever: a removed device's id is never reused.
 */
static const struct vm_device_desc {
	struct vm_device_info info;
	int (*save)(struct vm *vm, struct enc *e);
	int (*load)(struct vm *vm, struct dec *d, unsigned int version);
} devices[] = {
	{ { "uart-com1", 1, UART_STATE_VERSION }, uart_dev_save, uart_dev_load },
	{ { "i8042", 2, I8042_STATE_VERSION }, i8042_dev_save, i8042_dev_load },
};

#define NDEVICES (sizeof(devices) / sizeof(devices[0]))

unsigned int vm_device_count(const struct vm *vm)
{
	(void)vm;
	return NDEVICES;
}

const struct vm_device_info *vm_device_get_info(const struct vm *vm, unsigned int index)
{
	(void)vm;
	return index < NDEVICES ? &devices[index].info : NULL;
}

int vm_device_save(struct vm *vm, unsigned int index, struct enc *e)
{
	if (index >= NDEVICES)
		return -EINVAL;
	int r = devices[index].save(vm, e);
	if (r)
		log_err("cannot save device %s: %s", devices[index].info.name, strerror(-r));
	return r;
}

static const struct vm_device_desc *device_by_id(uint16_t id)
{
	for (size_t i = 0; i < NDEVICES; i++)
		if (devices[i].info.id == id)
			return &devices[i];
	return NULL;
}

bool vm_device_known(const struct vm *vm, uint16_t id, unsigned int version)
{
	(void)vm;
	const struct vm_device_desc *dd = device_by_id(id);
	return dd && version >= 1 && version <= dd->info.version;
}

int vm_device_load(struct vm *vm, uint16_t id, struct dec *d, unsigned int version)
{
	const struct vm_device_desc *dd = device_by_id(id);
	if (!dd) {
		log_err("image has state for device id %u, which this machine does not have", id);
		return -ENOENT;
	}
	int r = dd->load(vm, d, version);
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
