/* SPDX-License-Identifier: MIT */
/* The VM's own control-socket commands: status, pause, resume, quit. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "util/json.h"
#include "util/log.h"
#include "vmm/api.h"
#include "vmm/vm_internal.h"

static int cmd_status(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		      size_t errlen)
{
	struct vm *vm = opaque;
	struct vm_status st;
	vm_get_status(vm, &st);
	jw_kv_str(reply, "state", st.paused ? "paused" : "running");
	jw_kv_u64(reply, "vcpus", st.ncpus);
	jw_kv_u64(reply, "mem_bytes", st.mem_size);
	jw_kv_u64(reply, "uptime_ms", st.uptime_ms);
	jw_kv_u64(reply, "paused_total_ms", st.paused_total_ms);
	jw_kv_u64(reply, "last_pause_us", st.last_pause_us);
	jw_kv_str(reply, "kernel", vm->cfg.kernel ? vm->cfg.kernel : "");
	jw_kv_str(reply, "api", vm->cfg.api_path ? vm->cfg.api_path : "");
	jw_kv_u64(reply, "pid", (uint64_t)getpid());
	return 0;
}

static int cmd_pause(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		     size_t errlen)
{
	struct vm *vm = opaque;
	int r = vm_pause(vm);
	if (r) {
		snprintf(err, errlen, "cannot pause: the VM is shutting down");
		return r;
	}
	struct vm_status st;
	vm_get_status(vm, &st);
	jw_kv_str(reply, "state", "paused");
	jw_kv_u64(reply, "pause_us", st.last_pause_us);
	return 0;
}

static int cmd_resume(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		      size_t errlen)
{
	struct vm *vm = opaque;
	int r = vm_resume(vm);
	if (r) {
		snprintf(err, errlen, "cannot resume: the VM is shutting down");
		return r;
	}
	jw_kv_str(reply, "state", "running");
	return 0;
}

static int cmd_quit(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		    size_t errlen)
{
	struct vm *vm = opaque;
	vm_request_stop(vm, VM_EXIT_QUIT, "quit requested through the control socket");
	jw_kv_str(reply, "state", "stopping");
	return API_STOP;
}

static const struct api_command vm_commands[] = {
	{ "status", cmd_status, "state (running/paused), vCPUs, memory, uptime", NULL },
	{ "pause", cmd_pause, "stop every vCPU with its state consistent", NULL },
	{ "resume", cmd_resume, "let a paused VM run on", NULL },
	{ "quit", cmd_quit, "end the VM (vmsnap run exits 0)", NULL },
	{ NULL, NULL, NULL, NULL },
};

int vm_api_create(struct vm *vm)
{
	if (!vm->cfg.api_path)
		return 0;
	return api_create(vm_commands, vm, &vm->api);
}

int vm_api_start(struct vm *vm)
{
	if (!vm->api)
		return 0;
	return api_listen(vm->api, vm->cfg.api_path); /* it has logged why it failed */
}

void vm_api_stop(struct vm *vm)
{
	api_stop(vm->api);
	vm->api = NULL;
}
