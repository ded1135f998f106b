/* SPDX-License-Identifier: MIT */
/* Save a VM to an image file: pause, state, memory, durable rename; the "save" API command. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "formats/image.h"
#include "snapshot/snapshot.h"
#include "snapshot/snapshot_internal.h"
#include "util/json.h"
#include "util/log.h"
#include "vmm/api.h"
#include "vmm/kvmstate.h"
#include "vmm/vm.h"

uint64_t snap_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void snap_config_encode(struct enc *e, const struct vm_config *cfg)
{
	enc_u64(e, cfg->mem_size);
	enc_u32(e, cfg->ncpus);
	enc_str(e, cfg->cpu_template ? cfg->cpu_template : "host");
	enc_str(e, cfg->kernel);
	enc_str(e, cfg->initrd);
	enc_str(e, cfg->cmdline);
}

/* The VM's encoded state, captured while it is paused. */
struct saved_state {
	struct enc vm;
	struct enc config;
	struct enc *vcpus;
	unsigned int ncpus;
	struct enc *devs;
	unsigned int ndevs;
};

static void saved_state_free(struct saved_state *s)
{
	enc_free(&s->vm);
	enc_free(&s->config);
	for (unsigned int i = 0; s->vcpus && i < s->ncpus; i++)
		enc_free(&s->vcpus[i]);
	for (unsigned int i = 0; s->devs && i < s->ndevs; i++)
		enc_free(&s->devs[i]);
	free(s->vcpus);
	free(s->devs);
}

static int capture_state(struct vm *vm, struct saved_state *s, char *err, size_t errlen)
{
	const struct vm_config *cfg = vm_get_config(vm);
	int r;

	s->ncpus = cfg->ncpus;
	s->ndevs = vm_device_count(vm);
	enc_init(&s->vm);
	enc_init(&s->config);
	s->vcpus = calloc(s->ncpus, sizeof(*s->vcpus));
	s->devs = calloc(s->ndevs ? s->ndevs : 1, sizeof(*s->devs));
	if (!s->vcpus || !s->devs) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	for (unsigned int i = 0; i < s->ncpus; i++) {
		enc_init(&s->vcpus[i]);
		r = vm_vcpu_save(vm, i, &s->vcpus[i]);
		if (r) {
			snprintf(err, errlen, "cannot read vCPU %u's state: %s", i, strerror(-r));
			return r;
		}
	}
	for (unsigned int i = 0; i < s->ndevs; i++) {
		enc_init(&s->devs[i]);
		r = vm_device_save(vm, i, &s->devs[i]);
		if (r) {
			snprintf(err, errlen, "cannot save device %s: %s",
				 vm_device_get_info(vm, i)->name, strerror(-r));
			return r;
		}
	}
	/* The clock last, closest to the moment the vCPUs stopped. */
	r = vm_arch_save(vm, &s->vm);
	if (r) {
		snprintf(err, errlen,
			 "cannot read the VM's interrupt controller and clock state: %s",
			 strerror(-r));
		return r;
	}
	snap_config_encode(&s->config, cfg);
	if (enc_error(&s->config)) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	return 0;
}

static int copy_str(char *dst, size_t size, const char *src, const char *what, char *err,
		    size_t errlen)
{
	if (!src)
		src = "";
	if (strlen(src) >= size) {
		snprintf(err, errlen,
			 "the VM's %s is too long for the image header (%zu bytes max)", what,
			 size - 1);
		return -ENAMETOOLONG;
	}
	strcpy(dst, src);
	return 0;
}

static int fill_header(struct vm *vm, const struct saved_state *s, struct img_header *h, char *err,
		       size_t errlen)
{
	const struct vm_config *cfg = vm_get_config(vm);
	const struct gmem *mem = vm_memory(vm);
	struct timespec ts;

	memset(h, 0, sizeof(*h));
	snprintf(h->creator, sizeof(h->creator), "vmsnap %s", VMSNAP_VERSION);
	clock_gettime(CLOCK_REALTIME, &ts);
	h->created_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
	img_host_cpu_probe(&h->cpu);

	/* The VM's TSC frequency is the one its vCPUs run at: take vCPU 0's. */
	struct kvmstate_vcpu v;
	struct dec d;
	memset(&v, 0, sizeof(v));
	dec_init(&d, s->vcpus[0].buf, s->vcpus[0].len);
	if (kvmstate_vcpu_decode(&d, KVMSTATE_VCPU_VERSION, &v) == 0)
		h->tsc_khz = v.tsc_khz;
	kvmstate_vcpu_free(&v);

	h->vm.ram_size = mem->size;
	h->vm.vcpus = cfg->ncpus;
	if (mem->nregions > IMG_MAX_REGIONS) {
		snprintf(err, errlen, "too many memory regions for the image format");
		return -EINVAL;
	}
	h->vm.nregions = mem->nregions;
	for (unsigned int i = 0; i < mem->nregions; i++) {
		h->vm.regions[i].gpa = mem->regions[i].gpa;
		h->vm.regions[i].size = mem->regions[i].size;
		h->vm.regions[i].offset = mem->regions[i].offset;
	}
	int r =
	    copy_str(h->vm.cpu_template, sizeof(h->vm.cpu_template),
		     cfg->cpu_template ? cfg->cpu_template : "host", "CPU template", err, errlen);
	if (!r)
		r = copy_str(h->vm.kernel, sizeof(h->vm.kernel), cfg->kernel, "kernel path", err,
			     errlen);
	if (!r)
		r = copy_str(h->vm.initrd, sizeof(h->vm.initrd), cfg->initrd, "initrd path", err,
			     errlen);
	if (!r)
		r = copy_str(h->vm.cmdline, sizeof(h->vm.cmdline), cfg->cmdline, "command line",
			     err, errlen);
	return r;
}

/* The error of the image writer, or of errno-style @r, as one line. */
static void write_error(char *err, size_t errlen, const char *tmp, int r)
{
	const char *msg = img_last_error();
	if (r == -ENOSPC)
		snprintf(err, errlen, "cannot write the image: no space left on the device of %s",
			 tmp);
	else if (msg && *msg)
		snprintf(err, errlen, "cannot write the image: %s", msg);
	else
		snprintf(err, errlen, "cannot write the image: %s", strerror(-r));
}

/*
 * Write everything that needs the VM paused: header, state sections, memory. On success
 * *@wp is the writer, for img_writer_finish() once the guest runs again (the image is
 * hashed from the file then, see img_writer_defer_hash).
 */
static int write_image(int fd, const char *tmp, struct vm *vm, const struct saved_state *s,
		       const struct snap_save_opts *o, struct img_writer **wp, char *err,
		       size_t errlen)
{
	struct img_header h;
	struct img_writer *w = NULL;
	const struct gmem *mem = vm_memory(vm);
	int r = fill_header(vm, s, &h, err, errlen);
	if (r)
		return r;
	r = img_writer_open(&w, fd, &h);
	if (r) {
		write_error(err, errlen, tmp, r);
		return r;
	}
	img_writer_defer_hash(w);
	r = img_write_section_enc(w, IMG_SEC_ID(IMG_SEC_CONFIG, 0), SNAP_CONFIG_VERSION, 0,
				  &s->config);
	if (!r)
		r = img_write_section_enc(w, IMG_SEC_ID(IMG_SEC_VM, 0), KVMSTATE_VM_VERSION,
					  IMG_SEC_REQUIRED, &s->vm);
	for (unsigned int i = 0; !r && i < s->ncpus; i++)
		r = img_write_section_enc(w, IMG_SEC_ID(IMG_SEC_VCPU, i), KVMSTATE_VCPU_VERSION,
					  IMG_SEC_REQUIRED, &s->vcpus[i]);
	for (unsigned int i = 0; !r && i < s->ndevs; i++) {
		const struct vm_device_info *di = vm_device_get_info(vm, i);
		r = img_write_section_enc(w, IMG_SEC_ID(IMG_SEC_DEVICE, di->id), di->version,
					  IMG_SEC_REQUIRED, &s->devs[i]);
	}
	if (!r) {
		struct img_write_opts wo = {
		    .compress = o->compress,
		    .progress = o->progress,
		    .progress_arg = o->progress_arg,
		};
		r = img_write_memory(w, mem->host, mem->size, NULL, &wo);
	}
	if (r) {
		write_error(err, errlen, tmp, r);
		img_writer_free(w);
		return r;
	}
	*wp = w;
	return 0;
}

/* fsync the directory holding @path, so that a rename into it is durable. */
static int fsync_dir_of(const char *path)
{
	char *copy = strdup(path);
	if (!copy)
		return -ENOMEM;
	int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(copy);
	if (fd < 0)
		return -errno;
	int r = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return r;
}

/* A temporary file next to @path (same filesystem, so the rename is atomic). */
static int open_temp(const char *path, char *tmp, size_t tmplen, char *err, size_t errlen)
{
	static unsigned int seq;
	char *copy = strdup(path), *copy2 = strdup(path);
	int fd = -ENOMEM;
	if (copy && copy2) {
		int n = snprintf(tmp, tmplen, "%s/.%s.tmp-%d-%u", dirname(copy), basename(copy2),
				 (int)getpid(), seq++);
		if (n < 0 || (size_t)n >= tmplen) {
			snprintf(err, errlen, "image path '%s' is too long", path);
			fd = -ENAMETOOLONG;
		} else {
			/* 0600: the image holds the guest's memory. */
			fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
			if (fd < 0) {
				fd = -errno;
				snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
			}
		}
	}
	free(copy);
	free(copy2);
	return fd;
}

static int check_target(const char *path, char *err, size_t errlen)
{
	struct stat st;
	if (!path || !*path) {
		snprintf(err, errlen, "no image path given");
		return -EINVAL;
	}
	if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s exists and is not a regular file", path);
		return -EEXIST;
	}
	return 0;
}

int snap_save(struct vm *vm, const struct snap_save_opts *o, struct snap_save_result *res,
	      char *err, size_t errlen)
{
	struct saved_state s;
	struct img_write_stats ws;
	struct img_writer *w = NULL;
	struct vm_status vs;
	char tmp[4096 + 64];
	uint64_t t0 = snap_now_us(), t_paused = 0, t_resumed = 0;
	int fd, r;

	memset(res, 0, sizeof(*res));
	memset(&s, 0, sizeof(s));
	r = check_target(o->path, err, errlen);
	if (r)
		return r;
	fd = open_temp(o->path, tmp, sizeof(tmp), err, errlen);
	if (fd < 0)
		return fd;

	vm_get_status(vm, &vs);
	res->was_paused = vs.paused;
	r = vm_pause(vm);
	if (r) {
		snprintf(err, errlen, "cannot pause the VM: it is shutting down");
		goto fail;
	}
	t_paused = snap_now_us();
	r = capture_state(vm, &s, err, errlen);
	if (!r)
		r = write_image(fd, tmp, vm, &s, o, &w, err, errlen);
	saved_state_free(&s);
	/*
	 * The file's bytes are complete in the page cache: the guest may run on while they
	 * reach the disk. With --stop it stays paused until the image is durable.
	 */
	if (!o->stop || r) {
		if (!res->was_paused)
			vm_resume(vm);
		t_resumed = snap_now_us();
	}
	if (r)
		goto fail;
	r = img_writer_finish(w, &ws);
	img_writer_free(w);
	if (r) {
		write_error(err, errlen, tmp, r);
		goto fail_unlink;
	}

	if (fsync(fd) < 0) {
		r = -errno;
		snprintf(err, errlen, "cannot write the image: fsync of %s: %s", tmp,
			 strerror(errno));
		goto fail_unlink;
	}
	if (close(fd) < 0) {
		fd = -1;
		r = -errno;
		snprintf(err, errlen, "cannot write the image: close of %s: %s", tmp,
			 strerror(errno));
		goto fail_unlink;
	}
	fd = -1;
	if (rename(tmp, o->path) < 0) {
		r = -errno;
		snprintf(err, errlen, "cannot rename %s to %s: %s", tmp, o->path, strerror(errno));
		goto fail_unlink;
	}
	r = fsync_dir_of(o->path);
	if (r) {
		/* The image is in place; only its durability against a power loss is unsure. */
		log_warn("save: fsync of the directory of %s: %s", o->path, strerror(-r));
		r = 0;
	}
	if (o->stop) {
		t_resumed = snap_now_us();
		vm_request_stop(vm, VM_EXIT_POWEROFF,
				"saved with --stop: the VM is suspended to its image");
	}
	res->total_us = snap_now_us() - t0;
	res->pause_us = res->was_paused ? 0 : t_resumed - t_paused;
	res->file_size = ws.file_size;
	res->bytes_written = ws.bytes_written;
	res->pages_total = ws.pages_total;
	res->pages_data = ws.pages_data;
	res->pages_zero = ws.pages_zero;
	res->pages_lz4 = ws.pages_lz4;
	res->lz4_bytes = ws.lz4_bytes;
	memcpy(res->sha256, ws.sha256, sizeof(res->sha256));
	log_info("saved %s: %llu bytes written, pause %.1f ms, total %.1f ms", o->path,
		 (unsigned long long)ws.bytes_written, res->pause_us / 1000.0,
		 res->total_us / 1000.0);
	return 0;

fail_unlink:
	/* With --stop the VM is still paused: it runs on when the image could not be made. */
	if (o->stop && !res->was_paused)
		vm_resume(vm);
fail:
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	log_err("save to %s failed: %s", o->path, err);
	return r;
}

/* ---- the "save" control-socket command ---- */

struct progress_ctx {
	struct vm *vm;
	const char *path;
	uint64_t last_us;
};

static void save_progress(void *arg, uint64_t done, uint64_t total)
{
	struct progress_ctx *p = arg;
	struct api_server *srv = vm_api_server(p->vm);
	uint64_t now = snap_now_us();
	if (!srv || (done < total && now - p->last_us < 50000))
		return;
	p->last_us = now;
	struct jw w;
	jw_init(&w, 4096);
	jw_obj_begin(&w);
	jw_kv_str(&w, "path", p->path);
	jw_kv_u64(&w, "pages_done", done);
	jw_kv_u64(&w, "pages_total", total);
	jw_obj_end(&w);
	if (!jw_error(&w) && api_event(srv, "save-progress", &w) == 0)
		api_flush_events(srv);
	jw_free(&w);
}

static void hex(char *out, const uint8_t *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		sprintf(out + 2 * i, "%02x", b[i]);
}

static int cmd_save(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		    size_t errlen)
{
	struct vm *vm = opaque;
	struct snap_save_opts o = {0};
	struct snap_save_result res;
	const struct json_value *v;

	if (json_get_string(req, "path", &o.path)) {
		snprintf(err, errlen, "save needs \"path\": a string");
		return -EINVAL;
	}
	if ((v = json_get(req, "stop")) && json_as_bool(v, &o.stop)) {
		snprintf(err, errlen, "\"stop\" must be true or false");
		return -EINVAL;
	}
	if ((v = json_get(req, "compress")) && json_as_bool(v, &o.compress)) {
		snprintf(err, errlen, "\"compress\" must be true or false");
		return -EINVAL;
	}
	struct progress_ctx pc = {vm, o.path, 0};
	o.progress = save_progress;
	o.progress_arg = &pc;
	int r = snap_save(vm, &o, &res, err, errlen);
	if (r)
		return r;
	char sha[65];
	hex(sha, res.sha256, 32);
	jw_kv_str(reply, "path", o.path);
	jw_kv_str(reply, "state", o.stop ? "stopping" : res.was_paused ? "paused" : "running");
	jw_kv_double(reply, "pause_ms", res.pause_us / 1000.0);
	jw_kv_double(reply, "total_ms", res.total_us / 1000.0);
	jw_kv_u64(reply, "file_size", res.file_size);
	jw_kv_u64(reply, "bytes_written", res.bytes_written);
	jw_kv_u64(reply, "pages_total", res.pages_total);
	jw_kv_u64(reply, "pages_data", res.pages_data);
	jw_kv_u64(reply, "pages_zero", res.pages_zero);
	jw_kv_u64(reply, "pages_lz4", res.pages_lz4);
	jw_kv_u64(reply, "lz4_bytes", res.lz4_bytes);
	jw_kv_bool(reply, "compressed", o.compress);
	jw_kv_str(reply, "sha256", sha);
	return o.stop ? API_STOP : 0;
}

static const char *const save_args[] = {"path", "stop", "compress", NULL};

static const struct api_command snap_commands[] = {
    {"save", cmd_save,
     "save the VM to the image at path (then resume it, or end it with stop:true; "
     "compress:true for LZ4); emits save-progress events",
     save_args},
    {NULL, NULL, NULL, NULL},
};

int snap_api_register(struct vm *vm)
{
	return vm_api_add_commands(vm, snap_commands, vm);
}
