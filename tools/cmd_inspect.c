/* SPDX-License-Identifier: MIT */
/* vmsnap inspect: describe an image (header, configuration, sections, state summaries). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "formats/image.h"
#include "snapshot/snapshot.h"
#include "tools/cli.h"
#include "util/json.h"
#include "vmm/kvmstate.h"
#include "vmm/vm.h"

static void inspect_usage(FILE *f)
{
	fprintf(
	    f, "usage: vmsnap inspect IMAGE [--json]\n\n"
	       "Describe an image: format version, creator, the CPU of the host that wrote it,\n"
	       "the VM's configuration, every section (id, version, flags, offset, size), the\n"
	       "devices, a summary of every vCPU and of the VM state, and the memory. Checks\n"
	       "the structure and the CRC of the state sections it reads; 'vmsnap verify'\n"
	       "checks everything.\n\n"
	       "  --json       one JSON object on stdout\n"
	       "  -h, --help   this text\n\n"
	       "Exit status: 0 described, 1 not an image or damaged, 2 on a command-line error.\n");
}

static const char *device_name(uint16_t id)
{
	const char *n = vm_device_type_name(id);
	return n ? n : "unknown device";
}

/* One-line summary of a state section into @buf; returns 0 or the error. */
static int describe(struct img *img, const struct img_section_info *s, char *buf, size_t len)
{
	void *p = NULL;
	size_t n;
	uint16_t ver;
	struct dec d;
	int r;

	buf[0] = 0;
	switch (IMG_SEC_TYPE(s->id)) {
	case IMG_SEC_VCPU:
	case IMG_SEC_VM: break;
	case IMG_SEC_DEVICE:
		snprintf(buf, len, "%s", device_name((uint16_t)IMG_SEC_INST(s->id)));
		return 0;
	default: return 0;
	}
	r = img_read_section(img, s->id, &p, &n, &ver);
	if (r)
		return r;
	dec_init(&d, p, n);
	if (IMG_SEC_TYPE(s->id) == IMG_SEC_VCPU)
		r = kvmstate_vcpu_describe(&d, ver, buf, len);
	else
		r = kvmstate_vm_describe(&d, ver, buf, len);
	free(p);
	if (r)
		snprintf(buf, len, "(does not decode: %s)", strerror(-r));
	return 0;
}

static void flags_str(uint16_t f, char *buf, size_t len)
{
	snprintf(buf, len, "%s%s%s", f & IMG_SEC_REQUIRED ? "required" : "optional",
		 f & IMG_SEC_PAYLOAD_EXTERNAL ? ",external" : "",
		 f & ~(IMG_SEC_REQUIRED | IMG_SEC_PAYLOAD_EXTERNAL) ? ",other" : "");
}

static void sha_hex(char out[65], const uint8_t *b)
{
	for (int i = 0; i < 32; i++)
		sprintf(out + 2 * i, "%02x", b[i]);
}

static int print_text(struct img *img, const char *path)
{
	const struct img_header *h = img_get_header(img);
	struct img_mem_info mi = {0};
	char sha[65], when[64] = "?", desc[512], fl[32], name[32];
	time_t t = (time_t)(h->created_ns / 1000000000u);
	struct tm tm;

	if (gmtime_r(&t, &tm))
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
	sha_hex(sha, img_get_sha256(img));
	printf("image:      %s\n", path);
	printf("format:     %u.%u%s\n", h->major, h->minor,
	       h->flags & IMG_HDR_INCREMENTAL ? " (incremental)" : "");
	printf("creator:    %s, %s\n", h->creator, when);
	printf("host CPU:   %s family %u model %u stepping %u, TSC %llu kHz\n", h->cpu.vendor,
	       h->cpu.family, h->cpu.model, h->cpu.stepping, (unsigned long long)h->tsc_khz);
	printf("size:       %llu bytes, sha256 %s\n", (unsigned long long)img_file_size(img), sha);
	printf("VM:         %u vCPU%s, %llu MiB RAM, CPU template %s\n", h->vm.vcpus,
	       h->vm.vcpus == 1 ? "" : "s", (unsigned long long)(h->vm.ram_size >> 20),
	       h->vm.cpu_template[0] ? h->vm.cpu_template : "host");
	for (uint32_t i = 0; i < h->vm.nregions; i++)
		printf("  region %u: gpa 0x%llx, %llu MiB, RAM offset 0x%llx\n", i,
		       (unsigned long long)h->vm.regions[i].gpa,
		       (unsigned long long)(h->vm.regions[i].size >> 20),
		       (unsigned long long)h->vm.regions[i].offset);
	printf("  kernel:   %s\n", h->vm.kernel);
	if (h->vm.initrd[0])
		printf("  initrd:   %s\n", h->vm.initrd);
	printf("  cmdline:  %s\n", h->vm.cmdline);
	struct snap_config c;
	if (snap_config_read(img, path, &c) == 0) {
		for (unsigned int i = 0; i < c.ndisks; i++) {
			char id[17] = "";
			for (unsigned int k = 0; k < 8 && c.disks[i].has_identity; k++)
				snprintf(id + 2 * k, 3, "%02x", c.disks[i].id_sha256[k]);
			printf("  disk %u:   %s%s, %llu bytes, content %s...\n", i, c.disks[i].path,
			       c.disks[i].readonly ? " (read-only)" : " (frozen layer)",
			       (unsigned long long)c.disks[i].id_size, id);
		}
		for (unsigned int i = 0; i < c.nnets; i++)
			printf("  net %u:    tap %s%s%s\n", i, c.nets[i].tap,
			       c.nets[i].mac ? ", mac " : "", c.nets[i].mac ? c.nets[i].mac : "");
		snap_config_free(&c);
	}
	const char *ppath;
	uint8_t psha[32];
	if (img_get_parent(img, psha, &ppath) == 0) {
		char ps[65];
		sha_hex(ps, psha);
		printf("parent:     %s, sha256 %s\n", ppath, ps);
	}
	printf("sections:\n  %-14s %-10s %3s %-17s %12s %12s  %s\n", "name", "id", "ver", "flags",
	       "offset", "length", "summary");
	for (size_t i = 0; i < img_section_count(img); i++) {
		const struct img_section_info *s = img_section_at(img, i);
		int r = describe(img, s, desc, sizeof(desc));
		if (r)
			return r;
		flags_str(s->flags, fl, sizeof(fl));
		printf("  %-14s 0x%08x %3u %-17s %12llu %12llu  %s\n",
		       img_section_name(s->id, name, sizeof(name)), s->id, s->version, fl,
		       (unsigned long long)s->offset, (unsigned long long)s->length, desc);
	}
	if (img_get_mem_info(img, &mi) == 0)
		printf("memory:     %s, %llu pages: %llu stored raw, %llu lz4, %llu zero (holes), "
		       "%llu from parent; %zu runs%s\n",
		       mi.linear ? "linear (mmap-able)" : "packed (compressed, eager restore)",
		       (unsigned long long)mi.ram_pages, (unsigned long long)mi.pages_data,
		       (unsigned long long)mi.pages_lz4, (unsigned long long)mi.pages_zero,
		       (unsigned long long)mi.pages_parent, mi.nruns, mi.linear ? "" : "");
	if (mi.linear)
		printf("            RAM page 0 at file offset %llu\n",
		       (unsigned long long)mi.data_offset);
	return 0;
}

static int print_json(struct img *img, const char *path)
{
	const struct img_header *h = img_get_header(img);
	struct img_mem_info mi = {0};
	char sha[65], desc[512], name[32], fl[32];
	struct jw w;
	int r = 0;

	jw_init(&w, 0);
	sha_hex(sha, img_get_sha256(img));
	jw_obj_begin(&w);
	jw_kv_str(&w, "path", path);
	jw_kv_u64(&w, "format_major", h->major);
	jw_kv_u64(&w, "format_minor", h->minor);
	jw_kv_u64(&w, "flags", h->flags);
	jw_kv_str(&w, "creator", h->creator);
	jw_kv_u64(&w, "created_ns", h->created_ns);
	jw_kv_u64(&w, "file_size", img_file_size(img));
	jw_kv_str(&w, "sha256", sha);
	jw_key(&w, "host_cpu");
	jw_obj_begin(&w);
	jw_kv_str(&w, "vendor", h->cpu.vendor);
	jw_kv_u64(&w, "family", h->cpu.family);
	jw_kv_u64(&w, "model", h->cpu.model);
	jw_kv_u64(&w, "stepping", h->cpu.stepping);
	jw_obj_end(&w);
	jw_kv_u64(&w, "tsc_khz", h->tsc_khz);
	jw_key(&w, "vm");
	jw_obj_begin(&w);
	jw_kv_u64(&w, "ram_size", h->vm.ram_size);
	jw_kv_u64(&w, "vcpus", h->vm.vcpus);
	jw_kv_str(&w, "cpu_template", h->vm.cpu_template);
	jw_kv_str(&w, "kernel", h->vm.kernel);
	jw_kv_str(&w, "initrd", h->vm.initrd);
	jw_kv_str(&w, "cmdline", h->vm.cmdline);
	struct snap_config c;
	if (snap_config_read(img, path, &c) == 0) {
		jw_key(&w, "disks");
		jw_arr_begin(&w);
		for (unsigned int i = 0; i < c.ndisks; i++) {
			char id[65] = "";
			for (unsigned int k = 0; k < 32 && c.disks[i].has_identity; k++)
				snprintf(id + 2 * k, 3, "%02x", c.disks[i].id_sha256[k]);
			jw_obj_begin(&w);
			jw_kv_str(&w, "path", c.disks[i].path);
			jw_kv_bool(&w, "readonly", c.disks[i].readonly);
			jw_kv_u64(&w, "size", c.disks[i].id_size);
			jw_kv_str(&w, "content_sha256", id);
			jw_obj_end(&w);
		}
		jw_arr_end(&w);
		jw_key(&w, "nets");
		jw_arr_begin(&w);
		for (unsigned int i = 0; i < c.nnets; i++) {
			jw_obj_begin(&w);
			jw_kv_str(&w, "tap", c.nets[i].tap);
			jw_kv_str(&w, "mac", c.nets[i].mac ? c.nets[i].mac : "");
			jw_obj_end(&w);
		}
		jw_arr_end(&w);
		snap_config_free(&c);
	}
	jw_key(&w, "regions");
	jw_arr_begin(&w);
	for (uint32_t i = 0; i < h->vm.nregions; i++) {
		jw_obj_begin(&w);
		jw_kv_u64(&w, "gpa", h->vm.regions[i].gpa);
		jw_kv_u64(&w, "size", h->vm.regions[i].size);
		jw_kv_u64(&w, "offset", h->vm.regions[i].offset);
		jw_obj_end(&w);
	}
	jw_arr_end(&w);
	jw_obj_end(&w);
	const char *ppath;
	uint8_t psha[32];
	if (img_get_parent(img, psha, &ppath) == 0) {
		char ps[65];
		sha_hex(ps, psha);
		jw_key(&w, "parent");
		jw_obj_begin(&w);
		jw_kv_str(&w, "path", ppath);
		jw_kv_str(&w, "sha256", ps);
		jw_obj_end(&w);
	}
	jw_key(&w, "sections");
	jw_arr_begin(&w);
	for (size_t i = 0; i < img_section_count(img) && !r; i++) {
		const struct img_section_info *s = img_section_at(img, i);
		r = describe(img, s, desc, sizeof(desc));
		flags_str(s->flags, fl, sizeof(fl));
		jw_obj_begin(&w);
		jw_kv_str(&w, "name", img_section_name(s->id, name, sizeof(name)));
		jw_kv_u64(&w, "id", s->id);
		jw_kv_u64(&w, "version", s->version);
		jw_kv_u64(&w, "flags", s->flags);
		jw_kv_bool(&w, "required", s->flags & IMG_SEC_REQUIRED);
		jw_kv_u64(&w, "offset", s->offset);
		jw_kv_u64(&w, "length", s->length);
		if (desc[0])
			jw_kv_str(&w, "summary", desc);
		jw_obj_end(&w);
	}
	jw_arr_end(&w);
	if (img_get_mem_info(img, &mi) == 0) {
		jw_key(&w, "memory");
		jw_obj_begin(&w);
		jw_kv_bool(&w, "linear", mi.linear);
		jw_kv_u64(&w, "data_offset", mi.data_offset);
		jw_kv_u64(&w, "ram_pages", mi.ram_pages);
		jw_kv_u64(&w, "pages_data", mi.pages_data);
		jw_kv_u64(&w, "pages_lz4", mi.pages_lz4);
		jw_kv_u64(&w, "pages_zero", mi.pages_zero);
		jw_kv_u64(&w, "pages_parent", mi.pages_parent);
		jw_kv_u64(&w, "runs", mi.nruns);
		jw_obj_end(&w);
	}
	jw_obj_end(&w);
	if (!r) {
		if (jw_error(&w))
			r = jw_error(&w);
		else
			printf("%s\n", jw_cstr(&w));
	}
	jw_free(&w);
	return r;
}

int cmd_inspect(int argc, char **argv)
{
	bool json = false;
	const char *path;
	int st = cli_image_args("inspect", argc, argv, inspect_usage, &json, &path);
	if (st >= 0)
		return st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "vmsnap inspect: %s: cannot open: %s\n", path, strerror(errno));
		return EXIT_FAIL;
	}
	struct img *img;
	img_set_quiet(true);
	int r = img_open(&img, fd);
	if (!r) {
		r = json ? print_json(img, path) : print_text(img, path);
		img_close(img);
	}
	close(fd);
	if (r) {
		fflush(stdout);
		fprintf(stderr, "vmsnap inspect: %s: %s\n", path,
			img_last_error()[0] ? img_last_error() : strerror(-r));
		return EXIT_FAIL;
	}
	return EXIT_OK;
}
