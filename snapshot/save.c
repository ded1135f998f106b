/* SPDX-License-Identifier: MIT */
/* Save a VM to an image file: pause, state, memory, durable rename; the "save" API command. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdatomic.h>
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
#include "vmm/dirty.h"
#include "vmm/kvmstate.h"
#include "vmm/vm.h"

#define PROGRESS_STEP 4096u /* pages between progress reports of a live full pass */

uint64_t snap_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
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

static int capture_state(struct vm *vm, struct saved_state *s, const struct snap_save_opts *o,
			 char *err, size_t errlen)
{
	const struct vm_config *cfg = vm_get_config(vm);
	struct vm_disk_config frozen[VM_MAX_DISKS];
	int r;

	/* Disks first: the device state names the frozen layers (docs/SNAPSHOT.md, "Disks"). */
	r = vm_disks_freeze(vm, o->path, o->stop, frozen, err, errlen);
	if (r)
		return r;

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
	struct vm_config saved = *cfg;
	saved.disks = frozen;
	snap_config_encode(&s->config, &saved);
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
		       size_t errlen, bool incremental)
{
	const struct vm_config *cfg = vm_get_config(vm);
	const struct gmem *mem = vm_memory(vm);
	struct timespec ts;

	memset(h, 0, sizeof(*h));
	snprintf(h->creator, sizeof(h->creator), "vmsnap %s", VMSNAP_VERSION);
	clock_gettime(CLOCK_REALTIME, &ts);
	h->created_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
	img_host_cpu_probe(&h->cpu);

	if (incremental)
		h->flags |= IMG_HDR_INCREMENTAL;
	/*
	 * The VM's TSC frequency is the one its vCPUs run at: take vCPU 0's (from its saved
	 * state; a live save writes the header before the state exists and asks KVM).
	 */
	if (s) {
		struct kvmstate_vcpu v;
		struct dec d;
		memset(&v, 0, sizeof(v));
		dec_init(&d, s->vcpus[0].buf, s->vcpus[0].len);
		if (kvmstate_vcpu_decode(&d, KVMSTATE_VCPU_VERSION, &v) == 0)
			h->tsc_khz = v.tsc_khz;
		kvmstate_vcpu_free(&v);
	} else {
		h->tsc_khz = vm_tsc_khz(vm);
	}

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

/* The state sections: vm, one vcpu.N per vCPU, one device.ID per device. */
static int write_state(struct img_writer *w, struct vm *vm, const struct saved_state *s)
{
	/* The config with the state, not the header: it names the disks frozen at the pause. */
	int r = img_write_section_enc(w, IMG_SEC_ID(IMG_SEC_CONFIG, 0), SNAP_CONFIG_VERSION, 0,
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
	return r;
}

/* The parent of an incremental image: its SHA-256 and how the child names it. */
struct parent_ref {
	bool set;
	uint8_t sha256[32];
	char ref[IMG_STR_MAX];
};

/*
 * Header and (incremental) parent sections: what precedes the memory. @s may be
 * NULL (a live save: the state is captured at the end). Returns the writer in *@wp.
 */
static int write_head(int fd, const char *tmp, struct vm *vm, const struct saved_state *s,
		      const struct parent_ref *pr, bool behind, struct img_writer **wp, char *err,
		      size_t errlen)
{
	struct img_header h;
	struct img_writer *w = NULL;
	int r = fill_header(vm, s, &h, err, errlen, pr->set);
	if (r)
		return r;
	r = img_writer_open(&w, fd, &h);
	if (r) {
		write_error(err, errlen, tmp, r);
		return r;
	}
	if (behind)
		img_writer_hash_behind(w);
	else
		img_writer_defer_hash(w);
	if (pr->set)
		r = img_write_parent(w, pr->sha256, pr->ref);
	if (r) {
		write_error(err, errlen, tmp, r);
		img_writer_free(w);
		return r;
	}
	*wp = w;
	return 0;
}

/*
 * Write everything that needs the VM paused: header, state sections, memory (only the
 * pages set in @dirty for an incremental image). On success *@wp is the writer, for
 * img_writer_finish() once the guest runs again: the caller calls img_writer_release_memory()
 * before it resumes the guest (the SHA-256 is taken behind the writes, mostly from the paused
 * guest's memory, the rest from the file; compressed images are hashed from the file at
 * finish, see img_writer_defer_hash).
 */
static int write_image(int fd, const char *tmp, struct vm *vm, const struct saved_state *s,
		       const struct snap_save_opts *o, const struct parent_ref *pr,
		       const uint64_t *dirty, struct img_writer **wp, char *err, size_t errlen)
{
	struct img_writer *w = NULL;
	const struct gmem *mem = vm_memory(vm);
	/* Uncompressed: hashed behind the writes, mostly while the guest is still paused. */
	int r = write_head(fd, tmp, vm, s, pr, !o->compress, &w, err, errlen);
	if (r)
		return r;
	r = write_state(w, vm, s);
	if (!r) {
		struct img_write_opts wo = {
		    .compress = o->compress,
		    .progress = o->progress,
		    .progress_arg = o->progress_arg,
		};
		/* Never-touched RAM is zero: don't read it (that would allocate it). */
		uint64_t *hint = calloc((mem->size / IMG_PAGE_SIZE + 63) / 64, sizeof(uint64_t));
		if (hint && gmem_nonzero_bitmap(mem, hint) == 0)
			wo.nonzero_hint = hint; /* else every page is read: slower, same image */
		r = img_write_memory(w, mem->host, mem->size, dirty, &wo);
		free(hint);
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

/* ---- change tracking -------------------------------------------------------------------- */

struct snap_track {
	struct vm *vm;
	struct vm_dirty *dirty; /* KVM dirty log + VMM bitmap: tracking, or a live save */
	uint64_t words;
	uint64_t *since; /* pages written since the base image (with have_base) */
	bool have_base;
	uint8_t base_sha[32];
	char base_path[IMG_STR_MAX];
};

struct snap_track *snap_track_new(struct vm *vm)
{
	struct snap_track *t = calloc(1, sizeof(*t));
	if (t)
		t->vm = vm;
	return t;
}

void snap_track_stop(struct snap_track *t)
{
	if (!t)
		return;
	vm_dirty_stop(t->dirty);
	t->dirty = NULL;
	free(t->since);
	t->since = NULL;
	t->have_base = false;
}

bool snap_track_base(const struct snap_track *t, const char **path)
{
	if (t && t->have_base && path)
		*path = t->base_path;
	return t && t->have_base;
}

/*
 * Turn dirty logging on. The tracker's first sync reports every page and write-protects
 * them all; that report is dropped, so from here on only real writes count. Done while the
 * guest runs: writes between here and the pause are counted too, which only errs on the
 * safe side (a superset of what changed since the image).
 */
static int track_start(struct snap_track *t, char *err, size_t errlen)
{
	if (t->dirty)
		return 0;
	int r = vm_dirty_start(t->vm, VM_DIRTY_MANUAL, &t->dirty);
	if (r) {
		snprintf(err, errlen, "cannot track the VM's memory writes: %s",
			 r == -EBUSY ? "a migration is tracking them" : strerror(-r));
		t->dirty = NULL;
		return r;
	}
	t->words = vm_dirty_words(t->dirty);
	uint64_t *scratch = calloc(t->words, sizeof(uint64_t));
	t->since = calloc(t->words, sizeof(uint64_t));
	int64_t n = scratch && t->since ? vm_dirty_sync(t->dirty, scratch) : -ENOMEM;
	free(scratch);
	if (n < 0) {
		snprintf(err, errlen, "cannot track the VM's memory writes: %s", strerror((int)-n));
		snap_track_stop(t);
		return (int)n;
	}
	return 0;
}

/* OR the pages written since the previous sync into @round and into the base's set. */
static int64_t track_sync(struct snap_track *t, uint64_t *round)
{
	int64_t n = vm_dirty_sync(t->dirty, round);
	if (n >= 0 && t->have_base)
		for (uint64_t w = 0; w < t->words; w++)
			t->since[w] |= round[w];
	return n;
}

static uint64_t popcount_bitmap(const uint64_t *b, uint64_t words)
{
	uint64_t n = 0;
	for (uint64_t i = 0; i < words; i++)
		n += (uint64_t)__builtin_popcountll(b[i]);
	return n;
}

static void sha_hex(char *out, const uint8_t *b)
{
	for (size_t i = 0; i < 32; i++)
		sprintf(out + 2 * i, "%02x", b[i]);
}

/*
 * An incremental save's parent: the tracker's base image, found at @o->parent (or where it
 * was saved) with the same SHA-256; fills @pr with the reference the child records.
 */
static int check_parent(const struct snap_track *t, const struct snap_save_opts *o,
			struct parent_ref *pr, char *err, size_t errlen)
{
	if (!t || !t->dirty || !t->have_base) {
		snprintf(err, errlen,
			 "this VM has no record of what changed since an image: save it with "
			 "--track first; --incremental then saves the pages written since");
		return -ENOENT;
	}
	const char *path = o->parent && *o->parent ? o->parent : t->base_path;
	struct img *img = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC), r;
	if (fd < 0) {
		r = -errno;
		snprintf(err, errlen, "cannot open the parent image %s: %s", path, strerror(errno));
		return r;
	}
	img_set_quiet(true);
	r = img_open(&img, fd);
	img_set_quiet(false);
	if (r) {
		snprintf(err, errlen, "the parent image %s is not usable: %s", path,
			 img_last_error());
	} else if (memcmp(img_get_sha256(img), t->base_sha, 32)) {
		char hex[65];
		sha_hex(hex, t->base_sha);
		snprintf(err, errlen,
			 "%s is not the image this VM's changes are tracked against (that is %s, "
			 "SHA-256 %.16s...)",
			 path, t->base_path, hex);
		r = -EINVAL;
	} else {
		memcpy(pr->sha256, t->base_sha, 32);
		r = snap_parent_ref(o->path, path, pr->ref, sizeof(pr->ref));
		if (r)
			snprintf(err, errlen, "parent path too long");
		pr->set = !r;
	}
	img_close(img);
	close(fd);
	return r;
}

/* ---- live saves ------------------------------------------------------------------------- */

/* Write the pages set in @bm (at their fixed offsets); returns the pages written or -errno. */
static int64_t write_bitmap(struct img_writer *w, const uint8_t *ram, const uint64_t *bm,
			    uint64_t words, uint64_t pages)
{
	int64_t n = 0;
	for (uint64_t p = 0; p < pages;) {
		uint64_t wd = p / 64, v = bm[wd] & (~0ull << (p % 64));
		while (!v && ++wd < words)
			v = bm[wd];
		if (!v)
			break;
		p = wd * 64 + (uint64_t)__builtin_ctzll(v);
		if (p >= pages)
			break;
		uint64_t q = p + 1;
		while (q < pages) {
			if (q % 64 == 0 && q + 64 <= pages && bm[q / 64] == ~0ull) {
				q += 64;
				continue;
			}
			if (!(bm[q / 64] >> (q % 64) & 1))
				break;
			q++;
		}
		int r = img_write_pages(w, ram + p * IMG_PAGE_SIZE, p, q - p);
		if (r)
			return r;
		n += (int64_t)(q - p);
		p = q;
	}
	return n;
}

struct live_ctx {
	struct vm *vm;
	struct snap_track *t;
	const struct snap_save_opts *o;
	struct snap_save_result *res;
	struct img_writer *w;
	uint64_t *round; /* pages dirtied since the last sync */
	const char *tmp;
	char *err;
	size_t errlen;
};

static void live_round_log(struct snap_save_result *res, uint64_t pages)
{
	if (res->nround_pages < SNAP_LIVE_ROUND_LOG)
		res->round_pages[res->nround_pages++] = pages;
}

/*
 * Pre-copy while the guest runs: the full pass (every page, or an incremental image's
 * changed pages) then rounds of what was dirtied meanwhile, until the rest is expected to
 * fit the pause target or a bound is reached.
 */
static int live_precopy(struct live_ctx *x, uint64_t t0)
{
	const struct snap_save_opts *o = x->o;
	const struct gmem *mem = vm_memory(x->vm);
	uint64_t pages = mem->size / IMG_PAGE_SIZE, words = x->t->words;
	struct snap_live_policy pol = {
	    .target_us =
		(o->pause_target_ms ? o->pause_target_ms : SNAP_LIVE_DEFAULT_TARGET_MS) * 1000,
	    .max_rounds = o->max_rounds ? o->max_rounds : SNAP_LIVE_DEFAULT_ROUNDS,
	    .max_time_us = (o->max_time_ms ? o->max_time_ms : SNAP_LIVE_DEFAULT_TIME_MS) * 1000,
	};
	double bps = 0;
	int64_t n;

	/* Round 0. Bring the base's set up to date first: it is what an incremental stores. */
	memset(x->round, 0, words * sizeof(uint64_t));
	if ((n = track_sync(x->t, x->round)) < 0)
		goto sync_failed;
	uint64_t t_round = snap_now_us();
	if (o->incremental) {
		n = write_bitmap(x->w, mem->host, x->t->since, words, pages);
	} else {
		n = 0;
		for (uint64_t p = 0; p < pages && n >= 0; p += PROGRESS_STEP) {
			uint64_t k = pages - p < PROGRESS_STEP ? pages - p : PROGRESS_STEP;
			int r = img_write_pages(x->w, mem->host + p * IMG_PAGE_SIZE, p, k);
			n = r ? r : n + (int64_t)k;
			if (o->progress)
				o->progress(o->progress_arg, p + k, pages);
		}
	}
	if (n < 0)
		goto write_failed;
	uint64_t dt = snap_now_us() - t_round;
	if (n >= 256 && dt)
		bps = (double)n * IMG_PAGE_SIZE * 1e6 / (double)dt;
	x->res->precopy_pages += (uint64_t)n;
	live_round_log(x->res, (uint64_t)n);
	if (o->round)
		o->round(o->progress_arg, 0, (uint64_t)n, 0);

	uint64_t prev = UINT64_MAX, expected = 0;
	unsigned int stuck = 0;
	for (uint32_t round = 1;; round++) {
		memset(x->round, 0, words * sizeof(uint64_t));
		if ((n = track_sync(x->t, x->round)) < 0)
			goto sync_failed;
		uint64_t dirty = popcount_bitmap(x->round, words);
		enum snap_live_step step = snap_live_decide(&pol, round, dirty, prev, &stuck, bps,
							    snap_now_us() - t0, &expected);
		prev = dirty;
		x->res->rounds = round;
		if (step != SNAP_LIVE_AGAIN) {
			const char *why = step == SNAP_LIVE_MAX_ROUNDS ? "max-rounds reached"
					  : step == SNAP_LIVE_MAX_TIME ? "max-time reached"
					  : step == SNAP_LIVE_STUCK
					      ? "the dirty set stopped shrinking (the guest writes "
						"as fast as the image is written)"
					      : NULL;
			x->res->converged = step == SNAP_LIVE_FINAL;
			if (why)
				snprintf(
				    x->res->note, sizeof(x->res->note),
				    "paused after %u rounds with %llu dirty pages (expected final "
				    "round %.1f ms, target %.1f ms): %s",
				    round, (unsigned long long)dirty, expected / 1000.0,
				    pol.target_us / 1000.0, why);
			return 0;
		}
		t_round = snap_now_us();
		n = write_bitmap(x->w, mem->host, x->round, words, pages);
		if (n < 0)
			goto write_failed;
		dt = snap_now_us() - t_round;
		if (n >= 256 && dt) {
			double meas = (double)n * IMG_PAGE_SIZE * 1e6 / (double)dt;
			bps = bps > 0 ? 0.5 * bps + 0.5 * meas : meas;
		}
		x->res->precopy_pages += (uint64_t)n;
		live_round_log(x->res, (uint64_t)n);
		if (o->round)
			o->round(o->progress_arg, round, (uint64_t)n, dirty);
	}
sync_failed:
	snprintf(x->err, x->errlen, "reading the dirty log failed: %s", strerror((int)-n));
	return (int)n;
write_failed:
	write_error(x->err, x->errlen, x->tmp, (int)n);
	return (int)n;
}

/*
 * A live save up to a complete memory payload and state: header, pre-copy, pause, last
 * round, state capture, resume (unless stop), page map and state sections. *@t_paused and
 * *@t_resumed are set when the guest paused and ran again (0 if it did not).
 */
static int save_live(struct vm *vm, int fd, const char *tmp, const struct snap_save_opts *o,
		     struct snap_track *t, const struct parent_ref *pr,
		     struct snap_save_result *res, struct img_writer **wp, uint64_t *t_paused,
		     uint64_t *t_resumed, char *err, size_t errlen)
{
	const struct gmem *mem = vm_memory(vm);
	struct saved_state s;
	struct live_ctx x = {vm, t, o, res, NULL, NULL, tmp, err, errlen};
	uint64_t t0 = snap_now_us();
	bool paused = false;
	int r;

	memset(&s, 0, sizeof(s));
	x.round = calloc(t->words, sizeof(uint64_t));
	if (!x.round) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	r = write_head(fd, tmp, vm, NULL, pr, false, &x.w, err, errlen);
	if (!r && (r = img_write_memory_begin(x.w)))
		write_error(err, errlen, tmp, r);
	if (!r)
		r = live_precopy(&x, t0);
	if (r)
		goto out;

	res->precopy_us = snap_now_us() - t0;
	r = vm_pause(vm);
	if (r) {
		snprintf(err, errlen, "cannot pause the VM: it is shutting down");
		goto out;
	}
	paused = true;
	*t_paused = snap_now_us();
	/* x.round still holds the pages of the last sync, not yet written: add the rest. */
	int64_t n = track_sync(t, x.round);
	if (n < 0) {
		r = (int)n;
		snprintf(err, errlen, "reading the dirty log failed: %s", strerror(-r));
		goto out;
	}
	n = write_bitmap(x.w, mem->host, x.round, t->words, mem->size / IMG_PAGE_SIZE);
	if (n < 0) {
		r = (int)n;
		write_error(err, errlen, tmp, r);
		goto out;
	}
	res->final_pages = (uint64_t)n;
	live_round_log(res, (uint64_t)n);
	r = capture_state(vm, &s, o, err, errlen);
	if (r)
		goto out;
	/* Memory and state are complete in the page cache: the guest runs on. */
	if (!o->stop && !res->was_paused) {
		vm_resume(vm);
		*t_resumed = snap_now_us();
	}
	paused = false;
	struct img_write_opts wo = {.progress = NULL};
	r = img_write_memory_end(x.w, o->incremental ? t->since : NULL, &wo);
	if (!r)
		r = write_state(x.w, vm, &s);
	if (r)
		write_error(err, errlen, tmp, r);
out:
	if (paused && !res->was_paused) {
		vm_resume(vm);
		*t_resumed = snap_now_us();
	}
	saved_state_free(&s);
	free(x.round);
	if (r) {
		img_writer_free(x.w);
		return r;
	}
	*wp = x.w;
	return 0;
}

/* ---- save ------------------------------------------------------------------------------- */

int snap_save(struct vm *vm, const struct snap_save_opts *o, struct snap_save_result *res,
	      char *err, size_t errlen)
{
	struct saved_state s;
	struct img_write_stats ws;
	struct img_writer *w = NULL;
	struct vm_status vs;
	struct parent_ref pr = {0};
	struct snap_track *t = o->tracker, *local = NULL;
	char tmp[4096 + 64];
	uint64_t t0 = snap_now_us(), t_paused = 0, t_resumed = 0;
	bool started = false;
	int fd = -1, r;

	memset(res, 0, sizeof(*res));
	memset(&s, 0, sizeof(s));
	r = check_target(o->path, err, errlen);
	if (r)
		return r;
	if ((o->incremental || o->track) && !t) {
		snprintf(err, errlen, "change tracking needs the VM's control socket");
		return -EINVAL;
	}
	if (o->live && o->compress) {
		snprintf(err, errlen,
			 "a live save rewrites pages in place and cannot be compressed (compress "
			 "the image afterwards with 'vmsnap merge --compress')");
		return -EINVAL;
	}
	if (o->incremental && (r = check_parent(t, o, &pr, err, errlen)))
		goto fail_early;
	if (o->live && !t) {
		t = local = snap_track_new(vm);
		if (!t) {
			snprintf(err, errlen, "out of memory");
			return -ENOMEM;
		}
	}
	/* Dirty logging starts before the pause, so that its setup is not paid paused. */
	if ((o->live || o->track) && !t->dirty) {
		r = track_start(t, err, errlen);
		if (r)
			goto fail_early;
		started = true;
	}
	fd = open_temp(o->path, tmp, sizeof(tmp), err, errlen);
	if (fd < 0) {
		r = fd;
		goto fail_early;
	}

	vm_get_status(vm, &vs);
	res->was_paused = vs.paused;
	if (o->live) {
		r = save_live(vm, fd, tmp, o, t, &pr, res, &w, &t_paused, &t_resumed, err, errlen);
		if (r)
			goto fail;
	} else {
		r = vm_pause(vm);
		if (r) {
			snprintf(err, errlen, "cannot pause the VM: it is shutting down");
			goto fail;
		}
		t_paused = snap_now_us();
		if (o->incremental) {
			/* The base's set up to this instant: the pages this image stores. */
			uint64_t *scratch = calloc(t->words, sizeof(uint64_t));
			int64_t n = scratch ? track_sync(t, scratch) : -ENOMEM;
			free(scratch);
			if (n < 0) {
				r = (int)n;
				snprintf(err, errlen, "reading the dirty log failed: %s",
					 strerror(-r));
			}
		}
		if (!r)
			r = capture_state(vm, &s, o, err, errlen);
		if (!r)
			r = write_image(fd, tmp, vm, &s, o, &pr, o->incremental ? t->since : NULL,
					&w, err, errlen);
		saved_state_free(&s);
		/*
		 * The file's bytes are complete in the page cache: the guest may run on while
		 * they reach the disk. With --stop it stays paused until the image is durable.
		 */
		if (!o->stop || r) {
			if (!r)
				img_writer_release_memory(w); /* the rest is hashed from the file */
			if (!res->was_paused)
				vm_resume(vm);
			t_resumed = snap_now_us();
		}
		if (r)
			goto fail;
	}
	uint64_t t_finish = snap_now_us();
	r = img_writer_finish(w, &ws);
	img_writer_free(w);
	uint64_t t_fsync = snap_now_us();
	res->finish_us = t_fsync - t_finish;
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
	res->fsync_us = snap_now_us() - t_fsync;
	if (o->stop) {
		t_resumed = snap_now_us();
		vm_request_stop(vm, VM_EXIT_POWEROFF,
				"saved with --stop: the VM is suspended to its image");
	}
	/*
	 * The new base: nothing was synced since the pause, so what the guest wrote after it
	 * is still in the dirty log and the set restarts empty.
	 */
	if (t && (o->track || o->incremental)) {
		t->have_base = true;
		memcpy(t->base_sha, ws.sha256, 32);
		snprintf(t->base_path, sizeof(t->base_path), "%s", o->path);
		memset(t->since, 0, t->words * sizeof(uint64_t));
		res->tracking = true;
	} else if (t && started && !t->have_base) {
		snap_track_stop(t); /* dirty logging was on for this live save only */
	}
	free(local);
	res->total_us = snap_now_us() - t0;
	res->pause_us = res->was_paused ? 0 : t_resumed - t_paused;
	res->file_size = ws.file_size;
	res->bytes_written = ws.bytes_written;
	res->pages_total = ws.pages_total;
	res->pages_data = ws.pages_data;
	res->pages_zero = ws.pages_zero;
	res->pages_lz4 = ws.pages_lz4;
	res->pages_parent = ws.pages_parent;
	res->lz4_bytes = ws.lz4_bytes;
	if (pr.set)
		snprintf(res->parent, sizeof(res->parent), "%s", pr.ref);
	memcpy(res->sha256, ws.sha256, sizeof(res->sha256));
	log_info("saved %s: %llu bytes written, pause %.1f ms, total %.1f ms%s%s", o->path,
		 (unsigned long long)ws.bytes_written, res->pause_us / 1000.0,
		 res->total_us / 1000.0, res->note[0] ? "; " : "", res->note);
	return 0;

fail_unlink:
	/* With --stop the VM is still paused: it runs on when the image could not be made. */
	if (o->stop && !res->was_paused)
		vm_resume(vm);
fail:
	if (fd >= 0)
		close(fd);
	unlink(tmp);
fail_early:
	/* The base (if any) stays: its set kept every page synced into it. */
	if (t && started && !t->have_base)
		snap_track_stop(t);
	free(local);
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

/* The process's VM and its change tracker (one VM per process, as for migrate/). */
static struct snap_ctx {
	struct vm *vm;
	struct snap_track *track;
} api_ctx;

static void save_round(void *arg, uint32_t round, uint64_t pages, uint64_t dirty)
{
	struct progress_ctx *p = arg;
	struct api_server *srv = vm_api_server(p->vm);
	if (!srv)
		return;
	struct jw w;
	jw_init(&w, 4096);
	jw_obj_begin(&w);
	jw_kv_str(&w, "path", p->path);
	jw_kv_u64(&w, "round", round);
	jw_kv_u64(&w, "pages", pages);
	jw_kv_u64(&w, "dirty", dirty);
	jw_obj_end(&w);
	if (!jw_error(&w) && api_event(srv, "save-round", &w) == 0)
		api_flush_events(srv);
	jw_free(&w);
}

static int arg_bool(const struct json_value *req, const char *key, bool *out, char *err,
		    size_t errlen)
{
	const struct json_value *v = json_get(req, key);
	if (v && json_as_bool(v, out)) {
		snprintf(err, errlen, "\"%s\" must be true or false", key);
		return -EINVAL;
	}
	return 0;
}

static int arg_u64(const struct json_value *req, const char *key, uint64_t max, uint64_t *out,
		   char *err, size_t errlen)
{
	const struct json_value *v = json_get(req, key);
	if (v && (json_as_u64(v, out) || *out > max)) {
		snprintf(err, errlen, "\"%s\" must be a number from 0 to %llu", key,
			 (unsigned long long)max);
		return -EINVAL;
	}
	return 0;
}

static int cmd_save(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		    size_t errlen)
{
	struct snap_ctx *c = opaque;
	struct vm *vm = c->vm;
	struct snap_save_opts o = {0};
	struct snap_save_result res;
	uint64_t rounds = 0;

	if (json_get_string(req, "path", &o.path)) {
		snprintf(err, errlen, "save needs \"path\": a string");
		return -EINVAL;
	}
	if (json_get(req, "parent") && json_get_string(req, "parent", &o.parent)) {
		snprintf(err, errlen, "\"parent\" must be a string");
		return -EINVAL;
	}
	int r = arg_bool(req, "stop", &o.stop, err, errlen);
	if (!r)
		r = arg_bool(req, "compress", &o.compress, err, errlen);
	if (!r)
		r = arg_bool(req, "live", &o.live, err, errlen);
	if (!r)
		r = arg_bool(req, "incremental", &o.incremental, err, errlen);
	if (!r)
		r = arg_bool(req, "track", &o.track, err, errlen);
	if (!r)
		r = arg_u64(req, "max_rounds", 1000, &rounds, err, errlen);
	if (!r)
		r = arg_u64(req, "max_time_ms", 3600000, &o.max_time_ms, err, errlen);
	if (!r)
		r = arg_u64(req, "pause_target_ms", 60000, &o.pause_target_ms, err, errlen);
	if (r)
		return r;
	if (o.parent && !o.incremental) {
		snprintf(err, errlen, "\"parent\" is for incremental saves");
		return -EINVAL;
	}
	o.max_rounds = (uint32_t)rounds;
	o.tracker = c->track;
	struct progress_ctx pc = {vm, o.path, 0};
	o.progress = save_progress;
	o.round = save_round;
	o.progress_arg = &pc;
	r = snap_save(vm, &o, &res, err, errlen);
	if (r)
		return r;
	char sha[65];
	hex(sha, res.sha256, 32);
	jw_kv_str(reply, "path", o.path);
	jw_kv_str(reply, "state", o.stop ? "stopping" : res.was_paused ? "paused" : "running");
	jw_kv_double(reply, "pause_ms", res.pause_us / 1000.0);
	jw_kv_double(reply, "total_ms", res.total_us / 1000.0);
	jw_kv_double(reply, "finish_ms", res.finish_us / 1000.0);
	jw_kv_double(reply, "fsync_ms", res.fsync_us / 1000.0);
	jw_kv_u64(reply, "file_size", res.file_size);
	jw_kv_u64(reply, "bytes_written", res.bytes_written);
	jw_kv_u64(reply, "pages_total", res.pages_total);
	jw_kv_u64(reply, "pages_data", res.pages_data);
	jw_kv_u64(reply, "pages_zero", res.pages_zero);
	jw_kv_u64(reply, "pages_lz4", res.pages_lz4);
	jw_kv_u64(reply, "lz4_bytes", res.lz4_bytes);
	jw_kv_bool(reply, "compressed", o.compress);
	jw_kv_str(reply, "sha256", sha);
	if (o.incremental) {
		jw_kv_str(reply, "parent", res.parent);
		jw_kv_u64(reply, "pages_parent", res.pages_parent);
	}
	jw_kv_bool(reply, "tracking", res.tracking);
	if (o.live) {
		jw_kv_bool(reply, "live", true);
		jw_kv_u64(reply, "rounds", res.rounds);
		jw_kv_double(reply, "precopy_ms", res.precopy_us / 1000.0);
		jw_kv_u64(reply, "precopy_pages", res.precopy_pages);
		jw_kv_u64(reply, "final_pages", res.final_pages);
		jw_key(reply, "pages_per_round");
		jw_arr_begin(reply);
		for (uint32_t i = 0; i < res.nround_pages; i++)
			jw_u64(reply, res.round_pages[i]);
		jw_arr_end(reply);
		jw_kv_bool(reply, "converged", res.converged);
		if (res.note[0])
			jw_kv_str(reply, "note", res.note);
	}
	return o.stop ? API_STOP : 0;
}

static int cmd_untrack(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		       size_t errlen)
{
	struct snap_ctx *c = opaque;
	const char *base = NULL;
	bool was = snap_track_base(c->track, &base);
	(void)req;
	(void)err;
	(void)errlen;
	jw_kv_bool(reply, "was_tracking", was);
	if (was)
		jw_kv_str(reply, "base", base);
	snap_track_stop(c->track);
	return 0;
}

static const char *const save_args[] = {
    "path",	   "stop",   "compress", "live", "max_rounds", "max_time_ms", "pause_target_ms",
    "incremental", "parent", "track",	 NULL};
static const char *const untrack_args[] = {NULL};

static const struct api_command snap_commands[] = {
    {"save", cmd_save,
     "save the VM to the image at path (then resume it, or end it with stop:true; "
     "compress:true for LZ4; live:true to pre-copy while it runs; incremental:true for the "
     "pages written since its tracked base image [parent]; track:true to track changes "
     "after it); emits save-progress and save-round events",
     save_args},
    {"save-untrack", cmd_untrack,
     "stop tracking the pages written since the last tracked image (frees dirty logging "
     "for a migration)",
     untrack_args},
    {NULL, NULL, NULL, NULL},
};

int snap_api_register(struct vm *vm)
{
	/* Static: the tracker lives as long as the process's VM (one per process). */
	if (!api_ctx.track || api_ctx.vm != vm) {
		api_ctx.vm = vm;
		api_ctx.track = snap_track_new(vm);
		if (!api_ctx.track)
			return -ENOMEM;
	}
	return vm_api_add_commands(vm, snap_commands, &api_ctx);
}
