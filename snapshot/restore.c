/* SPDX-License-Identifier: MIT */
/* Restore a VM from an image: validate, check compatibility, create, fill memory, load state. */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "formats/image.h"
#include "snapshot/snapshot.h"
#include "snapshot/snapshot_internal.h"
#include "util/log.h"
#include "vmm/cpuid.h"
#include "vmm/gmem.h"
#include "vmm/kvmstate.h"
#include "vmm/vm.h"

struct snap_restore {
	struct vm *vm;
	char *kernel, *initrd, *cmdline, *cpu_template; /* the VM config's strings */
	struct snap_config devcfg;			 /* its disks and networks */
	struct vm_disk_config disks[VM_MAX_DISKS];	 /* as opened: with new overlays */
	char ovl[VM_MAX_DISKS][4096];
};

int snap_mem_mode_parse(const char *s, enum snap_mem_mode *out)
{
	if (!s)
		return -EINVAL;
	if (!strcmp(s, "auto"))
		*out = SNAP_MEM_AUTO;
	else if (!strcmp(s, "eager"))
		*out = SNAP_MEM_EAGER;
	else if (!strcmp(s, "mmap"))
		*out = SNAP_MEM_MMAP;
	else
		return -EINVAL;
	return 0;
}

/* Which required sections this build can load (img_check_required's callback). */
static bool section_known(uint32_t id, uint16_t version, void *arg)
{
	const struct img_header *h = arg;
	switch (IMG_SEC_TYPE(id)) {
	case IMG_SEC_CONFIG: return version >= 1 && version <= SNAP_CONFIG_VERSION;
	case IMG_SEC_VM:
		return IMG_SEC_INST(id) == 0 && version >= 1 && version <= KVMSTATE_VM_VERSION;
	case IMG_SEC_VCPU:
		return IMG_SEC_INST(id) < h->vm.vcpus && version >= 1 &&
		       version <= KVMSTATE_VCPU_VERSION;
	case IMG_SEC_DEVICE:
		/* The device table is static: it does not need a VM to answer. */
		return vm_device_known(NULL, (uint16_t)IMG_SEC_INST(id), version);
	case IMG_SEC_PARENT:
	case IMG_SEC_MEM_MAP:
	case IMG_SEC_MEM_DATA:
	case IMG_SEC_INDEX: return version == 1;
	default: return false; /* unknown */
	}
}

/*
 * What this host can run: KVM_GET_SUPPORTED_CPUID, plus the feature bits of the host CPU's
 * own CPUID. Some KVMs (PVM, on the project's machines) report far fewer features as
 * supported than they give a vCPU (KVM_GET_CPUID2 after KVM_SET_CPUID2 shows the host's
 * SSE3..AVX2 bits added), so the supported list alone would refuse images this host runs.
 * Returns the merged count (host reallocated) or -errno.
 */
static int host_cpu_features(struct kvm_cpuid_entry2 **host)
{
	struct img_host_cpu native;
	int n = vm_host_cpuid(host);
	if (n < 0)
		return n;
	img_host_cpu_probe(&native);
	struct kvm_cpuid_entry2 *m = realloc(*host, ((size_t)n + native.ncpuid) * sizeof(*m));
	if (!m)
		return -ENOMEM;
	*host = m;
	for (uint32_t i = 0; i < native.ncpuid; i++) {
		const struct img_cpuid_entry *c = &native.cpuid[i];
		struct kvm_cpuid_entry2 *e =
		    (struct kvm_cpuid_entry2 *)cpuid_find(m, (unsigned int)n, c->leaf, c->subleaf);
		if (!e) {
			e = &m[n++];
			memset(e, 0, sizeof(*e));
			e->function = c->leaf;
			e->index = c->subleaf;
			e->flags = c->subleaf ? KVM_CPUID_FLAG_SIGNIFCANT_INDEX : 0;
		}
		e->eax |= c->eax;
		e->ebx |= c->ebx;
		e->ecx |= c->ecx;
		e->edx |= c->edx;
	}
	return n;
}

/* Refuse an image whose vCPUs use CPU features this host does not offer. */
static int check_cpu(struct img *img, const char *path)
{
	const struct img_header *h = img_get_header(img);
	struct kvm_cpuid_entry2 *host = NULL;
	int nhost = host_cpu_features(&host);
	int r = 0;

	if (nhost < 0) {
		free(host);
		return nhost;
	}
	for (uint32_t i = 0; i < h->vm.vcpus && !r; i++) {
		void *buf = NULL;
		size_t len;
		uint16_t ver;
		struct kvmstate_vcpu v;
		struct dec d;

		r = img_read_section(img, IMG_SEC_ID(IMG_SEC_VCPU, i), &buf, &len, &ver);
		if (r == -ENOENT) {
			log_err("%s: the image has no state for vCPU %u of %u", path, i,
				h->vm.vcpus);
			r = -EBADMSG;
			break;
		}
		if (r)
			break; /* logged by the reader */
		memset(&v, 0, sizeof(v));
		dec_init(&d, buf, len);
		r = kvmstate_vcpu_decode(&d, ver, &v);
		if (!r && dec_remaining(&d))
			r = -EBADMSG;
		if (r) {
			log_err("%s: vcpu.%u: corrupt vCPU state (%s)", path, i, strerror(-r));
			r = r == -ENOTSUP ? r : -EBADMSG;
		} else {
			struct cpuid_feature miss[8];
			unsigned int n = cpuid_missing_features(v.cpuid, v.ncpuid, host,
								(unsigned int)nhost, miss, 8);
			if (n) {
				char list[1024] = "", one[128];
				for (unsigned int k = 0; k < n && k < 8; k++) {
					cpuid_feature_describe(&miss[k], one, sizeof(one));
					snprintf(list + strlen(list), sizeof(list) - strlen(list),
						 "%s%s", k ? ", " : "", one);
				}
				log_err(
				    "%s: this host's CPU lacks %u feature%s the saved guest uses: "
				    "%s%s (image made on a %s family %u model %u)",
				    path, n, n == 1 ? "" : "s", list, n > 8 ? ", ..." : "",
				    h->cpu.vendor, h->cpu.family, h->cpu.model);
				r = -ENOTSUP;
			}
		}
		kvmstate_vcpu_free(&v);
		free(buf);
	}
	free(host);
	return r;
}

/* The image's memory layout must be the one this VMM gives a VM of that size. */
static int check_layout(const struct img_header *h, const char *path)
{
	struct gmem m;
	memset(&m, 0, sizeof(m));
	if (gmem_layout(&m, h->vm.ram_size) || m.nregions != h->vm.nregions)
		goto bad;
	for (unsigned int i = 0; i < m.nregions; i++)
		if (m.regions[i].gpa != h->vm.regions[i].gpa ||
		    m.regions[i].size != h->vm.regions[i].size ||
		    m.regions[i].offset != h->vm.regions[i].offset)
			goto bad;
	if (h->vm.vcpus < 1 || h->vm.vcpus > VM_MAX_CPUS) {
		log_err("%s: the image has %u vCPUs; this vmsnap runs 1 to %d", path, h->vm.vcpus,
			VM_MAX_CPUS);
		return -ENOTSUP;
	}
	return 0;
bad:
	log_err("%s: the image's guest memory layout is not one this vmsnap can create", path);
	return -ENOTSUP;
}

static int load_section(struct img *img, uint32_t id, struct vm *vm, unsigned int index,
			int (*load)(struct vm *, unsigned int, uint32_t, struct dec *,
				    unsigned int))
{
	void *buf = NULL;
	size_t len;
	uint16_t ver;
	char name[32];
	int r = img_read_section(img, id, &buf, &len, &ver);
	if (r == -ENOENT) {
		log_err("image has no %s section", img_section_name(id, name, sizeof(name)));
		return -EBADMSG;
	}
	if (r)
		return r;
	struct dec d;
	dec_init(&d, buf, len);
	r = load(vm, index, id, &d, ver);
	if (!r && dec_remaining(&d)) {
		log_err("image section %s has %zu bytes of trailing garbage",
			img_section_name(id, name, sizeof(name)), dec_remaining(&d));
		r = -EBADMSG;
	}
	free(buf);
	return r;
}

static int load_vcpu(struct vm *vm, unsigned int index, uint32_t id, struct dec *d,
		     unsigned int ver)
{
	return vm_vcpu_load(vm, index, d, ver);
}

static int load_arch(struct vm *vm, unsigned int index, uint32_t id, struct dec *d,
		     unsigned int ver)
{
	return vm_arch_load(vm, d, ver);
}

static int load_device(struct vm *vm, unsigned int index, uint32_t id, struct dec *d,
		       unsigned int ver)
{
	return vm_device_load(vm, (uint16_t)IMG_SEC_INST(id), d, ver);
}

static int load_state(struct img *img, struct vm *vm, uint32_t ncpus)
{
	int r = 0;
	/* vCPUs first, then devices, then irqchips/PIT/clock last (vmm/kvmstate.h). */
	for (uint32_t i = 0; i < ncpus && !r; i++)
		r = load_section(img, IMG_SEC_ID(IMG_SEC_VCPU, i), vm, i, load_vcpu);
	for (size_t i = 0; i < img_section_count(img) && !r; i++) {
		const struct img_section_info *s = img_section_at(img, i);
		if (IMG_SEC_TYPE(s->id) == IMG_SEC_DEVICE)
			r = load_section(img, s->id, vm, 0, load_device);
	}
	/* Every device of this machine must have come from the image: no silent reset. */
	for (unsigned int i = 0; i < vm_device_count(vm) && !r; i++) {
		const struct vm_device_info *di = vm_device_get_info(vm, i);
		if (!img_find_section(img, IMG_SEC_ID(IMG_SEC_DEVICE, di->id))) {
			log_err("image has no state for device %s (id %u)", di->name, di->id);
			r = -EBADMSG;
		}
	}
	if (!r)
		r = load_section(img, IMG_SEC_ID(IMG_SEC_VM, 0), vm, 0, load_arch);
	return r;
}

static char *dup_or_null(const char *s)
{
	return s && *s ? strdup(s) : NULL;
}

void snap_restore_free(struct snap_restore *r)
{
	if (!r)
		return;
	vm_destroy(r->vm);
	free(r->kernel);
	free(r->initrd);
	free(r->cmdline);
	free(r->cpu_template);
	snap_config_free(&r->devcfg);
	free(r);
}

struct vm *snap_restore_vm(struct snap_restore *r)
{
	return r->vm;
}

int snap_restore(const struct snap_restore_opts *o, struct snap_restore **out,
		 struct snap_restore_stats *st)
{
	struct snap_restore *sr = NULL;
	struct snap_chain chain;
	struct img *img;
	struct img_mem_info mi, bmi;
	uint64_t t0 = snap_now_us(), t1, t2, t3;
	int r;

	memset(st, 0, sizeof(*st));
	*out = NULL;
	/* The image and, for an incremental one, its parents back to a full image. */
	r = snap_chain_open(&chain, o->path);
	if (r)
		return r; /* logged, naming the file */
	img = chain.link[0].img;
	const struct img_header *h = img_get_header(img);
	for (size_t i = 0; i < chain.n && !r; i++)
		r = img_check_required(chain.link[i].img, section_known,
				       (void *)img_get_header(chain.link[i].img));
	if (r)
		goto out;
	r = img_get_mem_info(img, &mi);
	if (!r)
		r = img_get_mem_info(chain.link[chain.n - 1].img, &bmi);
	if (r) {
		log_err("%s: the image has no memory", o->path);
		r = -EBADMSG;
		goto out;
	}
	bool linear = snap_chain_linear(&chain);
	bool use_mmap = o->mem_mode == SNAP_MEM_MMAP || (o->mem_mode == SNAP_MEM_AUTO && linear);
	if (use_mmap && !linear) {
		const char *which = o->path;
		for (size_t i = 0; i < chain.n; i++) {
			struct img_mem_info li;
			if (!img_get_mem_info(chain.link[i].img, &li) && !li.linear) {
				which = chain.link[i].path;
				break;
			}
		}
		log_err("%s is compressed: --memory-mode mmap needs an uncompressed image (use "
			"--memory-mode eager, or leave the option out)",
			which);
		r = -ENOTSUP;
		goto out;
	}
	r = check_layout(h, o->path);
	if (!r)
		r = check_cpu(img, o->path);
	if (r)
		goto out;
	t1 = snap_now_us();

	sr = calloc(1, sizeof(*sr));
	if (!sr) {
		r = -ENOMEM;
		goto out;
	}
	sr->kernel = dup_or_null(h->vm.kernel);
	sr->initrd = dup_or_null(h->vm.initrd);
	sr->cmdline = dup_or_null(h->vm.cmdline);
	sr->cpu_template = dup_or_null(h->vm.cpu_template);
	r = snap_config_read(img, o->path, &sr->devcfg);
	if (r)
		goto out;
	st->ram_size = h->vm.ram_size;
	st->ncpus = h->vm.vcpus;
	st->ndisks = sr->devcfg.ndisks;
	st->nnets = sr->devcfg.nnets;
	const struct vm_net_config *nets = sr->devcfg.nets;
	if (o->nets_override) {
		if (o->nnets != sr->devcfg.nnets) {
			log_err("%s: the saved VM has %u network interface%s, %u given", o->path,
				sr->devcfg.nnets, sr->devcfg.nnets == 1 ? "" : "s", o->nnets);
			r = -EINVAL;
			goto out;
		}
		nets = o->nets;
	}
	/* A saved disk is a frozen layer: the restored VM writes to a new overlay on it. */
	for (unsigned int k = 0; k < sr->devcfg.ndisks; k++) {
		sr->disks[k] = sr->devcfg.disks[k];
		if (sr->disks[k].readonly)
			continue;
		int n;
		if (k < o->ndisk_overlays && o->disk_overlays[k])
			n = snprintf(sr->ovl[k], sizeof(sr->ovl[k]), "%s", o->disk_overlays[k]);
		else
			n = snprintf(sr->ovl[k], sizeof(sr->ovl[k]), "%s.%d.disk%u.ovl", o->path,
				     (int)getpid(), k);
		if (n < 0 || (size_t)n >= sizeof(sr->ovl[k])) {
			log_err("%s: path too long for disk %u's overlay", o->path, k);
			r = -ENAMETOOLONG;
			goto out;
		}
		sr->disks[k].overlay = sr->ovl[k];
	}
	if (o->dry_run) {
		/* What vm_create() would refuse, said once before any clone starts. */
		for (unsigned int k = 0; k < sr->devcfg.ndisks && !r; k++)
			r = vm_disk_check(&sr->devcfg.disks[k], k);
		goto out;
	}
	struct vm_config cfg = {
	    .mem_size = h->vm.ram_size,
	    .ncpus = h->vm.vcpus,
	    .kernel = sr->kernel,
	    .initrd = sr->initrd,
	    .cmdline = sr->cmdline,
	    .cpu_template = sr->cpu_template,
	    .console = o->console,
	    .api_path = o->api_path,
	    .mem_backend = o->mem_backend,
	    .disks = sr->disks,
	    .ndisks = sr->devcfg.ndisks,
	    .nets = nets,
	    .nnets = sr->devcfg.nnets,
	    .restore = true,
	    .mem_from_file = use_mmap,
	    /* mmap: RAM is the base image's mapping; the children go over it. */
	    .mem_file_fd = chain.link[chain.n - 1].fd,
	    .mem_file_offset = bmi.data_offset,
	};
	r = vm_create(&cfg, &sr->vm);
	if (r)
		goto out;
	t2 = snap_now_us();
	struct gmem *mem = vm_memory(sr->vm);
	if (use_mmap) {
		size_t mapped, read;
		r = snap_chain_map_overlays(&chain, mem->host, mem->size, &mapped, &read);
		st->overlays_read = read;
	} else {
		r = snap_chain_read_memory(&chain, mem->host, mem->size, true);
	}
	if (r)
		goto out; /* logged with the file, page and section */
	t3 = snap_now_us();
	r = load_state(img, sr->vm, h->vm.vcpus);
	/* A restored VM is a new VM: its generation ID changes before its vCPUs run, so two
	 * restores of one image never share random-number state (vmm/acpi.h, VGEN). */
	if (!r)
		r = vm_new_generation(sr->vm, true);
	if (!r && o->new_macs)
		r = vm_new_macs(sr->vm);
	if (!r && o->clock_to_now) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		uint64_t now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
		if (now > h->created_ns)
			r = vm_clock_forward(sr->vm, now - h->created_ns);
	}
	if (r)
		goto out;
	st->open_us = t1 - t0;
	st->create_us = t2 - t1;
	st->memory_us = t3 - t2;
	st->state_us = snap_now_us() - t3;
	st->total_us = snap_now_us() - t0;
	st->mmap = use_mmap;
	st->chain = (unsigned int)chain.n;
	*out = sr;
	sr = NULL;
out:
	snap_restore_free(sr);
	snap_chain_close(&chain); /* an mmap restore's mappings keep their files */
	return r;
}
