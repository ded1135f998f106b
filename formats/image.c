/* SPDX-License-Identifier: MIT */
/*
 * The vmsnap image format: record codecs, streaming writer, validating reader, verifier.
 * The byte layout is specified in formats/SPEC.md; keep the two in step.
 */
#include "formats/image.h"

#include <cpuid.h>
#include <errno.h>
#include <fcntl.h>
#include <lz4.h>
#include <openssl/evp.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/crc32c.h"
#include "util/log.h"

#define HDR_FIXED 24u		  /* magic, major, minor, header_len, flags, reserved */
#define HDR_MIN (HDR_FIXED + 4u) /* ... plus the crc */
#define HDR_MAX (64u << 10)
#define END_SIZE 64u
#define INDEX_ENTRY 24u
#define INDEX_MAX 65536u
#define MAP_HEAD 24u
#define SECTION_MAX (1ull << 30) /* largest in-memory section payload a reader accepts */
#define RAM_MAX (1ull << 46)
#define VCPU_MAX 4096u
#define WBUF_SIZE (1u << 20)
#define WRITE_COALESCE (16u << 20)
#define READ_COALESCE (64u << 20)
#define BATCH_SIZE (16u << 20) /* compressed memory: MEM_DATA section payload size */
#define MAP_LINEAR 0x1u

/* Header record tags. */
enum {
	TAG_CREATOR = 1,
	TAG_CREATED = 2,
	TAG_HOST_CPU = 3,
	TAG_TSC_KHZ = 4,
	TAG_VM_CONFIG = 5,
};
#define TAG_REQUIRED 0x1u

_Static_assert(sizeof(IMG_MAGIC) - 1 == 8 && sizeof(IMG_END_MAGIC) - 1 == 8, "magic size");
_Static_assert(IMG_PAGE_SIZE % sizeof(uint64_t) == 0, "page size");

/* ---- Errors ----------------------------------------------------------------------------- */

static __thread char last_err[512];
static bool quiet_errors;

const char *img_last_error(void)
{
	return last_err;
}

void img_set_quiet(bool quiet)
{
	quiet_errors = quiet;
}

/* Record and log one error; returns @err so callers can `return img_fail(...)`. */
__attribute__((format(printf, 2, 3))) static int img_fail(int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(last_err, sizeof(last_err), fmt, ap);
	va_end(ap);
	if (!quiet_errors)
		log_err("%s", last_err);
	return err;
}

typedef unsigned long long ull;

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)v);
	put32(p + 4, (uint32_t)(v >> 32));
}

/* ---- Host CPU --------------------------------------------------------------------------- */

void img_host_cpu_probe(struct img_host_cpu *cpu)
{
	static const uint32_t leaves[][2] = { { 1, 0 },	  { 7, 0 },	     { 7, 1 },
					      { 0xd, 0 }, { 0xd, 1 },	     { 0x80000001, 0 },
					      { 0x80000007, 0 }, { 0x80000008, 0 } };
	unsigned int a, b, c, d;

	memset(cpu, 0, sizeof(*cpu));
	if (!__get_cpuid(0, &a, &b, &c, &d))
		return;
	unsigned int max_basic = a;
	memcpy(cpu->vendor, &b, 4);
	memcpy(cpu->vendor + 4, &d, 4);
	memcpy(cpu->vendor + 8, &c, 4);
	unsigned int max_ext = __get_cpuid_max(0x80000000, NULL);
	for (size_t i = 0; i < sizeof(leaves) / sizeof(leaves[0]); i++) {
		uint32_t leaf = leaves[i][0], sub = leaves[i][1];
		if (leaf < 0x80000000 ? leaf > max_basic : leaf > max_ext)
			continue;
		__cpuid_count(leaf, sub, a, b, c, d);
		cpu->cpuid[cpu->ncpuid++] = (struct img_cpuid_entry){ leaf, sub, a, b, c, d };
		if (leaf == 1) {
			uint32_t fam = (a >> 8) & 0xf;
			cpu->family = fam + (fam == 0xf ? (a >> 20) & 0xff : 0);
			cpu->model = ((a >> 4) & 0xf) |
				     (fam == 6 || fam == 0xf ? ((a >> 16) & 0xf) << 4 : 0);
			cpu->stepping = a & 0xf;
		}
	}
}

static const struct img_cpuid_entry *cpuid_find(const struct img_host_cpu *cpu, uint32_t leaf,
						uint32_t sub)
{
	for (uint32_t i = 0; i < cpu->ncpuid && i < IMG_MAX_CPUID; i++)
		if (cpu->cpuid[i].leaf == leaf && cpu->cpuid[i].subleaf == sub)
			return &cpu->cpuid[i];
	return NULL;
}

bool img_host_cpu_compatible(const struct img_host_cpu *need, const struct img_host_cpu *have,
			     char *msg, size_t msglen)
{
	/* Feature words, with OS-state bits (OSXSAVE, hypervisor, OSPKE) masked out. */
	static const struct {
		uint32_t leaf, sub;
		int reg; /* 0 eax, 1 ebx, 2 ecx, 3 edx */
		uint32_t mask;
		const char *name;
	} words[] = {
		{ 1, 0, 2, ~((1u << 27) | (1u << 31)), "CPUID.1:ECX" },
		{ 1, 0, 3, ~0u, "CPUID.1:EDX" },
		{ 7, 0, 1, ~0u, "CPUID.7.0:EBX" },
		{ 7, 0, 2, ~(1u << 4), "CPUID.7.0:ECX" },
		{ 7, 0, 3, ~0u, "CPUID.7.0:EDX" },
		{ 7, 1, 0, ~0u, "CPUID.7.1:EAX" },
		{ 0xd, 1, 0, ~0u, "CPUID.0xd.1:EAX" },
		{ 0x80000001, 0, 2, ~0u, "CPUID.0x80000001:ECX" },
		{ 0x80000001, 0, 3, ~0u, "CPUID.0x80000001:EDX" },
	};
	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
		const struct img_cpuid_entry *n = cpuid_find(need, words[i].leaf, words[i].sub);
		const struct img_cpuid_entry *h = cpuid_find(have, words[i].leaf, words[i].sub);
		if (!n)
			continue;
		uint32_t nv[4] = { n->eax, n->ebx, n->ecx, n->edx };
		uint32_t hv[4] = { 0 };
		if (h) {
			hv[0] = h->eax, hv[1] = h->ebx, hv[2] = h->ecx, hv[3] = h->edx;
		}
		uint32_t missing = nv[words[i].reg] & ~hv[words[i].reg] & words[i].mask;
		if (missing) {
			if (msg && msglen)
				snprintf(msg, msglen, "host CPU lacks features %s bits 0x%08x",
					 words[i].name, missing);
			return false;
		}
	}
	if (msg && msglen)
		msg[0] = 0;
	return true;
}

/* ---- Header ----------------------------------------------------------------------------- */

static size_t rec_begin(struct enc *e, uint16_t tag, uint16_t flags)
{
	enc_u16(e, tag);
	enc_u16(e, flags);
	enc_u32(e, 0); /* length, patched by rec_end */
	return e->len;
}

static void rec_end(struct enc *e, size_t start)
{
	if (!e->err)
		put32(e->buf + start - 4, (uint32_t)(e->len - start));
}

static bool str_ok(const char *s, size_t size)
{
	return memchr(s, 0, size) != NULL;
}

static int config_check(const struct img_vm_config *vm)
{
	uint64_t sum = 0;

	if (!vm->ram_size || vm->ram_size % IMG_PAGE_SIZE || vm->ram_size > RAM_MAX)
		return -EINVAL;
	if (!vm->vcpus || vm->vcpus > VCPU_MAX)
		return -EINVAL;
	if (!vm->nregions || vm->nregions > IMG_MAX_REGIONS)
		return -EINVAL;
	for (uint32_t i = 0; i < vm->nregions; i++) {
		const struct img_region *r = &vm->regions[i];
		if (!r->size || r->size % IMG_PAGE_SIZE || r->offset % IMG_PAGE_SIZE ||
		    r->gpa % IMG_PAGE_SIZE || r->size > vm->ram_size ||
		    r->offset > vm->ram_size - r->size || r->gpa > UINT64_MAX - r->size)
			return -EINVAL;
		sum += r->size;
	}
	return sum == vm->ram_size ? 0 : -EINVAL;
}

int img_header_encode(struct enc *e, const struct img_header *h)
{
	const struct img_vm_config *vm = &h->vm;
	size_t start = e->len, r;

	if (config_check(vm) || !str_ok(h->creator, sizeof(h->creator)) ||
	    !str_ok(vm->cpu_template, sizeof(vm->cpu_template)) ||
	    !str_ok(vm->kernel, sizeof(vm->kernel)) || !str_ok(vm->initrd, sizeof(vm->initrd)) ||
	    !str_ok(vm->cmdline, sizeof(vm->cmdline)) ||
	    !str_ok(h->cpu.vendor, sizeof(h->cpu.vendor)) || h->cpu.ncpuid > IMG_MAX_CPUID ||
	    (h->flags & IMG_HDR_INCOMPAT_MASK))
		return img_fail(-EINVAL, "image header: invalid VM configuration or header fields");

	enc_bytes(e, IMG_MAGIC, 8);
	enc_u16(e, IMG_FORMAT_MAJOR);
	enc_u16(e, IMG_FORMAT_MINOR);
	enc_u32(e, 0); /* header_len, patched below */
	enc_u32(e, h->flags);
	enc_u32(e, 0);

	r = rec_begin(e, TAG_CREATOR, 0);
	enc_str(e, h->creator);
	rec_end(e, r);

	r = rec_begin(e, TAG_CREATED, 0);
	enc_u64(e, h->created_ns);
	rec_end(e, r);

	r = rec_begin(e, TAG_HOST_CPU, 0);
	enc_str(e, h->cpu.vendor);
	enc_u32(e, h->cpu.family);
	enc_u32(e, h->cpu.model);
	enc_u32(e, h->cpu.stepping);
	enc_u32(e, h->cpu.ncpuid);
	for (uint32_t i = 0; i < h->cpu.ncpuid; i++) {
		const struct img_cpuid_entry *c = &h->cpu.cpuid[i];
		enc_u32(e, c->leaf);
		enc_u32(e, c->subleaf);
		enc_u32(e, c->eax);
		enc_u32(e, c->ebx);
		enc_u32(e, c->ecx);
		enc_u32(e, c->edx);
	}
	rec_end(e, r);

	r = rec_begin(e, TAG_TSC_KHZ, 0);
	enc_u64(e, h->tsc_khz);
	rec_end(e, r);

	r = rec_begin(e, TAG_VM_CONFIG, TAG_REQUIRED);
	enc_u64(e, vm->ram_size);
	enc_u32(e, vm->vcpus);
	enc_u32(e, vm->nregions);
	for (uint32_t i = 0; i < vm->nregions; i++) {
		enc_u64(e, vm->regions[i].gpa);
		enc_u64(e, vm->regions[i].size);
		enc_u64(e, vm->regions[i].offset);
	}
	enc_str(e, vm->cpu_template);
	enc_str(e, vm->kernel);
	enc_str(e, vm->initrd);
	enc_str(e, vm->cmdline);
	rec_end(e, r);

	if (e->err)
		return e->err;
	size_t hlen = e->len - start + 4;
	if (hlen > HDR_MAX)
		return img_fail(-EINVAL, "image header: %zu bytes, more than %u", hlen, HDR_MAX);
	put32(e->buf + start + 12, (uint32_t)hlen);
	enc_u32(e, crc32c(0, e->buf + start, hlen - 4));
	return e->err;
}

static void dec_cstr(struct dec *d, char *buf, size_t size)
{
	dec_str(d, buf, size);
}

static int decode_host_cpu(struct dec *d, struct img_host_cpu *cpu)
{
	dec_cstr(d, cpu->vendor, sizeof(cpu->vendor));
	dec_u32(d, &cpu->family);
	dec_u32(d, &cpu->model);
	dec_u32(d, &cpu->stepping);
	dec_u32(d, &cpu->ncpuid);
	if (cpu->ncpuid > IMG_MAX_CPUID)
		dec_fail(d, -EBADMSG);
	for (uint32_t i = 0; i < cpu->ncpuid && !dec_error(d); i++) {
		struct img_cpuid_entry *c = &cpu->cpuid[i];
		dec_u32(d, &c->leaf);
		dec_u32(d, &c->subleaf);
		dec_u32(d, &c->eax);
		dec_u32(d, &c->ebx);
		dec_u32(d, &c->ecx);
		dec_u32(d, &c->edx);
	}
	return dec_error(d);
}

static int decode_vm_config(struct dec *d, struct img_vm_config *vm)
{
	dec_u64(d, &vm->ram_size);
	dec_u32(d, &vm->vcpus);
	dec_u32(d, &vm->nregions);
	if (vm->nregions > IMG_MAX_REGIONS)
		dec_fail(d, -EBADMSG);
	for (uint32_t i = 0; i < vm->nregions && !dec_error(d); i++) {
		dec_u64(d, &vm->regions[i].gpa);
		dec_u64(d, &vm->regions[i].size);
		dec_u64(d, &vm->regions[i].offset);
	}
	dec_cstr(d, vm->cpu_template, sizeof(vm->cpu_template));
	dec_cstr(d, vm->kernel, sizeof(vm->kernel));
	dec_cstr(d, vm->initrd, sizeof(vm->initrd));
	dec_cstr(d, vm->cmdline, sizeof(vm->cmdline));
	if (!dec_error(d) && config_check(vm))
		dec_fail(d, -EBADMSG);
	return dec_error(d);
}

static const char *tag_name(uint16_t tag)
{
	switch (tag) {
	case TAG_CREATOR: return "creator";
	case TAG_CREATED: return "created";
	case TAG_HOST_CPU: return "host-cpu";
	case TAG_TSC_KHZ: return "tsc-khz";
	case TAG_VM_CONFIG: return "vm-config";
	default: return "unknown";
	}
}

int img_header_decode(const void *buf, size_t len, struct img_header *h, uint32_t *header_len)
{
	const uint8_t *p = buf;
	uint32_t seen = 0;

	memset(h, 0, sizeof(*h));
	if (len < 8 || memcmp(p, IMG_MAGIC, 8))
		return img_fail(-EBADMSG, "not a vmsnap image: no magic \"%s\" at file offset 0",
				IMG_MAGIC);
	if (len < HDR_MIN)
		return img_fail(-EBADMSG, "truncated: file has %zu bytes, less than a header",
				len);
	/* Frozen in every major: magic, major, minor, header_len, and the crc at its end. */
	uint32_t hlen = get32(p + 12);
	if (hlen < HDR_MIN || hlen > HDR_MAX)
		return img_fail(-EBADMSG, "header: impossible header length %u at file offset 12",
				hlen);
	if (hlen > len)
		return img_fail(-EBADMSG, "truncated: header says %u bytes, file has %zu", hlen,
				len);
	uint32_t stored = get32(p + hlen - 4), crc = crc32c(0, p, hlen - 4);
	if (stored != crc)
		return img_fail(-EBADMSG,
				"header: crc mismatch at file offset %u (stored 0x%08x, computed "
				"0x%08x)",
				hlen - 4, stored, crc);
	h->major = get16(p + 8);
	h->minor = get16(p + 10);
	if (h->major > IMG_FORMAT_MAJOR || h->major == 0)
		return img_fail(-ENOTSUP,
				"image format %u.%u is not supported: this vmsnap reads format "
				"%u.x (up to %u.%u)%s",
				h->major, h->minor, IMG_FORMAT_MAJOR, IMG_FORMAT_MAJOR,
				IMG_FORMAT_MINOR,
				h->major > IMG_FORMAT_MAJOR ? "; use a newer vmsnap" : "");
	h->flags = get32(p + 16);
	if (h->flags & IMG_HDR_INCOMPAT_MASK)
		return img_fail(-ENOTSUP, "header: unknown required feature flags 0x%08x",
				h->flags & IMG_HDR_INCOMPAT_MASK);

	struct dec d;
	dec_init(&d, p + HDR_FIXED, hlen - HDR_MIN);
	while (dec_remaining(&d) && !dec_error(&d)) {
		size_t at = HDR_FIXED + d.pos;
		uint16_t tag = dec_u16_val(&d), rflags = dec_u16_val(&d);
		uint32_t rlen = dec_u32_val(&d);
		const void *val = dec_ptr(&d, rlen);
		if (!val)
			return img_fail(-EBADMSG,
					"header: record at file offset %zu overruns the header", at);
		struct dec v;
		dec_init(&v, val, rlen);
		int err = 0;
		if (tag >= 1 && tag <= 31) {
			if (seen & (1u << tag))
				return img_fail(-EBADMSG,
						"header: duplicate record '%s' at file offset %zu",
						tag_name(tag), at);
			seen |= 1u << tag;
		}
		/* Records only grow at their end (newer minors): trailing bytes are ignored. */
		switch (tag) {
		case TAG_CREATOR:
			dec_cstr(&v, h->creator, sizeof(h->creator));
			err = dec_error(&v);
			break;
		case TAG_CREATED:
			dec_u64(&v, &h->created_ns);
			err = dec_error(&v);
			break;
		case TAG_HOST_CPU:
			err = decode_host_cpu(&v, &h->cpu);
			break;
		case TAG_TSC_KHZ:
			dec_u64(&v, &h->tsc_khz);
			err = dec_error(&v);
			break;
		case TAG_VM_CONFIG:
			err = decode_vm_config(&v, &h->vm);
			break;
		default:
			if (rflags & TAG_REQUIRED)
				return img_fail(-ENOTSUP,
						"header: record 0x%04x at file offset %zu is required "
						"but unknown to this vmsnap",
						tag, at);
			break;
		}
		if (err)
			return img_fail(-EBADMSG, "header: malformed record '%s' at file offset %zu",
					tag_name(tag), at);
	}
	if (dec_error(&d))
		return img_fail(-EBADMSG, "header: malformed record list");
	if (!(seen & (1u << TAG_VM_CONFIG)))
		return img_fail(-EBADMSG, "header: no vm-config record");
	*header_len = hlen;
	return 0;
}

/* ---- Frames and runs -------------------------------------------------------------------- */

void img_frame_encode(uint8_t out[IMG_FRAME_SIZE], const struct img_frame *f)
{
	put32(out, f->id);
	put16(out + 4, f->version);
	put16(out + 6, f->flags);
	put64(out + 8, f->length);
}

void img_frame_decode(const uint8_t in[IMG_FRAME_SIZE], struct img_frame *f)
{
	f->id = get32(in);
	f->version = get16(in + 4);
	f->flags = get16(in + 6);
	f->length = get64(in + 8);
}

uint32_t img_frame_crc(const uint8_t frame[IMG_FRAME_SIZE], const void *payload, size_t len)
{
	return crc32c(crc32c(0, frame, IMG_FRAME_SIZE), payload, len);
}

const char *img_section_name(uint32_t id, char *buf, size_t size)
{
	uint32_t inst = IMG_SEC_INST(id);
	switch (IMG_SEC_TYPE(id)) {
	case IMG_SEC_PAD: snprintf(buf, size, "pad"); break;
	case IMG_SEC_CONFIG: snprintf(buf, size, "config"); break;
	case IMG_SEC_PARENT: snprintf(buf, size, "parent"); break;
	case IMG_SEC_VM: snprintf(buf, size, "vm"); break;
	case IMG_SEC_VCPU: snprintf(buf, size, "vcpu.%u", inst); break;
	case IMG_SEC_DEVICE: snprintf(buf, size, "device.%u", inst); break;
	case IMG_SEC_MEM_MAP: snprintf(buf, size, "memory.map"); break;
	case IMG_SEC_MEM_DATA: snprintf(buf, size, "memory.data.%u", inst); break;
	case IMG_SEC_INDEX: snprintf(buf, size, "index"); break;
	default: snprintf(buf, size, "unknown.0x%08x", id); break;
	}
	return buf;
}

/* Readable section name for messages (a static buffer per thread, two in rotation). */
static const char *sname(uint32_t id)
{
	static __thread char bufs[2][32];
	static __thread int which;
	which ^= 1;
	return img_section_name(id, bufs[which], sizeof(bufs[which]));
}

/* Types this version knows and the newest version of those whose payload formats/ parses. */
static bool type_known(uint32_t type)
{
	return type <= IMG_SEC_DEVICE || (type >= IMG_SEC_MEM_MAP && type <= IMG_SEC_INDEX);
}

static uint16_t own_version(uint32_t type)
{
	switch (type) {
	case IMG_SEC_PAD:
	case IMG_SEC_PARENT:
	case IMG_SEC_MEM_MAP:
	case IMG_SEC_MEM_DATA:
	case IMG_SEC_INDEX: return 1;
	default: return 0; /* payload owned by the caller */
	}
}

void img_run_encode(struct enc *e, const struct img_run *r)
{
	enc_u64(e, r->page);
	enc_u32(e, r->npages);
	enc_u8(e, r->kind);
	enc_u8(e, 0);
	enc_u16(e, 0);
	enc_u64(e, r->offset);
	enc_u32(e, r->stored_len);
	enc_u32(e, r->crc);
}

size_t img_lz4_bound(uint32_t npages)
{
	return (size_t)LZ4_compressBound((int)(npages * IMG_PAGE_SIZE));
}

void img_run_decode(struct dec *d, struct img_run *r)
{
	dec_u64(d, &r->page);
	dec_u32(d, &r->npages);
	dec_u8(d, &r->kind);
	uint8_t r8 = dec_u8_val(d);
	uint16_t r16 = dec_u16_val(d);
	dec_u64(d, &r->offset);
	dec_u32(d, &r->stored_len);
	dec_u32(d, &r->crc);
	if (dec_error(d))
		return;
	uint64_t raw = (uint64_t)r->npages * IMG_PAGE_SIZE;
	bool ok = r->npages && !r8 && !r16 && r->page <= UINT64_MAX - r->npages;
	switch (r->kind) {
	case IMG_RUN_ZERO:
	case IMG_RUN_PARENT: ok = ok && !r->offset && !r->stored_len && !r->crc; break;
	case IMG_RUN_DATA: ok = ok && raw <= IMG_RUN_MAX_BYTES && r->stored_len == raw; break;
	case IMG_RUN_LZ4:
		ok = ok && raw <= IMG_RUN_MAX_BYTES && r->stored_len &&
		     r->stored_len <= img_lz4_bound(r->npages);
		break;
	default: ok = false;
	}
	if (ok && r->stored_len && r->offset > UINT64_MAX - r->stored_len)
		ok = false;
	if (!ok)
		dec_fail(d, -EBADMSG);
}

typedef uint64_t __attribute__((may_alias, aligned(1))) u64_alias;

bool img_page_is_zero(const void *page)
{
	const u64_alias *w = page;
	for (size_t i = 0; i < IMG_PAGE_SIZE / 8; i += 8)
		if (w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] |
		    w[i + 7])
			return false;
	return true;
}

size_t img_scan_pages(const uint8_t *src, size_t max, bool *zero)
{
	bool z = img_page_is_zero(src);
	size_t n = 1;
	while (n < max && img_page_is_zero(src + n * IMG_PAGE_SIZE) == z)
		n++;
	*zero = z;
	return n;
}

uint32_t img_lz4_try(const void *src, uint32_t npages, void *scratch)
{
	uint32_t raw = npages * IMG_PAGE_SIZE;
	int n = LZ4_compress_default(src, scratch, (int)raw, (int)img_lz4_bound(npages));
	return n > 0 && (uint32_t)n <= raw - raw / 16 ? (uint32_t)n : 0;
}

void img_pack_run(const void *src, uint32_t npages, bool compress, void *scratch,
		  struct img_run *r, const void **stored)
{
	uint32_t raw = npages * IMG_PAGE_SIZE;
	r->npages = npages;
	r->kind = IMG_RUN_DATA;
	r->stored_len = raw;
	*stored = src;
	uint32_t n = compress ? img_lz4_try(src, npages, scratch) : 0;
	if (n) {
		r->kind = IMG_RUN_LZ4;
		r->stored_len = n;
		*stored = scratch;
	}
	r->crc = crc32c(0, *stored, r->stored_len);
}

/* ---- I/O helpers ------------------------------------------------------------------------ */

static int pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int err = n < 0 ? errno : ENOSPC;
			return img_fail(-err, "writing image at file offset %llu: %s", (ull)off,
					strerror(err));
		}
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

/* Read exactly @len bytes; a short read means the file shrank under us. */
static int pread_all(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;
	while (len) {
		ssize_t n = pread(fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return img_fail(-errno, "reading image at file offset %llu: %s", (ull)off,
					strerror(errno));
		if (n == 0)
			return img_fail(-EBADMSG, "truncated: unexpected end of file at offset %llu",
					(ull)off);
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

/* ---- Writer ----------------------------------------------------------------------------- */

struct img_writer {
	int fd;
	int err;	/* sticky */
	uint64_t off;	/* next file offset (end of the image so far) */
	uint8_t *buf;	/* buffered bytes for file offsets [boff, boff + blen) */
	size_t blen;
	uint64_t boff;
	EVP_MD_CTX *sha;
	struct img_section_info *idx;
	size_t nidx, idx_cap;
	uint64_t ram_size;
	bool mem_done, has_parent, finished;
	struct img_write_stats st;
	void (*progress)(void *arg, uint64_t pages_done, uint64_t pages_total);
	void *progress_arg;
	uint64_t progress_next; /* page at which to report next */
	struct w_io *io;	/* writes of guest memory, off the hashing thread */
	bool defer_hash;	/* hash from the file at finish (img_writer_defer_hash) */
	struct w_hasher *hb;	/* hash behind the writes (img_writer_hash_behind) */
	const uint64_t *nonzero_hint; /* img_write_opts.nonzero_hint during img_write_memory */
	struct w_range { uint64_t off, len; } *hr; /* deferred: byte ranges to hash, in order */
	size_t nhr, hr_cap;
	/* In-place memory (img_write_memory_begin): the payload's file offset, pages written. */
	bool live_open;
	uint64_t live_base;
	uint64_t *live_written;
};

/*
 * Guest memory is written by a second thread while the caller's thread scans, checksums and
 * hashes the next stretch: on a 2-core host the pwrite (page-cache fill) and the SHA-256 then
 * overlap instead of adding up, which is most of a save's pause. Jobs point into the caller's
 * RAM, which must not change until img_write_memory() returns (the VM is paused).
 */
#define W_IO_SLOTS 4

struct w_io_job {
	const uint8_t *src;
	size_t len;
	uint64_t off;
};

struct w_io {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct w_io_job q[W_IO_SLOTS];
	unsigned int head, count;
	bool busy, stop;
	int fd;
	int err;
	char msg[sizeof(last_err)]; /* the worker's error message (logged there) */
};

static void *w_io_thread(void *arg)
{
	struct w_io *io = arg;
	pthread_mutex_lock(&io->lock);
	for (;;) {
		while (!io->count && !io->stop)
			pthread_cond_wait(&io->cond, &io->lock);
		if (!io->count)
			break;
		struct w_io_job j = io->q[io->head];
		io->busy = true;
		pthread_mutex_unlock(&io->lock);
		int err = pwrite_all(io->fd, j.src, j.len, j.off);
		/* Start writeback now: the disk works while the rest is written and hashed, and
		 * the caller's fsync finds less to do. Advisory: its failure is the fsync's. */
		if (!err)
			sync_file_range(io->fd, (off_t)j.off, (off_t)j.len, SYNC_FILE_RANGE_WRITE);
		pthread_mutex_lock(&io->lock);
		io->busy = false;
		if (err && !io->err) {
			io->err = err;
			memcpy(io->msg, last_err, sizeof(io->msg));
		}
		io->head = (io->head + 1) % W_IO_SLOTS;
		io->count--;
		pthread_cond_broadcast(&io->cond);
	}
	pthread_mutex_unlock(&io->lock);
	return NULL;
}

/* Start the writer thread; on failure writes stay synchronous (io == NULL). */
static void w_io_start(struct img_writer *w)
{
	struct w_io *io = calloc(1, sizeof(*io));
	if (!io)
		return;
	io->fd = w->fd;
	pthread_mutex_init(&io->lock, NULL);
	pthread_cond_init(&io->cond, NULL);
	if (pthread_create(&io->thread, NULL, w_io_thread, io)) {
		pthread_mutex_destroy(&io->lock);
		pthread_cond_destroy(&io->cond);
		free(io);
		return;
	}
	w->io = io;
}

/* Queue a write (or do it here without a thread); waits while the queue is full. */
static int w_io_submit(struct img_writer *w, const uint8_t *src, size_t len, uint64_t off)
{
	struct w_io *io = w->io;
	if (!io)
		return pwrite_all(w->fd, src, len, off);
	pthread_mutex_lock(&io->lock);
	while (io->count == W_IO_SLOTS && !io->err)
		pthread_cond_wait(&io->cond, &io->lock);
	int err = io->err;
	if (!err) {
		io->q[(io->head + io->count) % W_IO_SLOTS] = (struct w_io_job){ src, len, off };
		io->count++;
		pthread_cond_broadcast(&io->cond);
	}
	pthread_mutex_unlock(&io->lock);
	return err;
}

/* Wait for every queued write, stop the thread, and return the first write error. */
static int w_io_finish(struct img_writer *w)
{
	struct w_io *io = w->io;
	if (!io)
		return 0;
	pthread_mutex_lock(&io->lock);
	io->stop = true;
	pthread_cond_broadcast(&io->cond);
	pthread_mutex_unlock(&io->lock);
	pthread_join(io->thread, NULL);
	int err = io->err;
	if (err) /* already logged by the worker; keep it for this thread's img_last_error() */
		memcpy(last_err, io->msg, sizeof(last_err));
	pthread_mutex_destroy(&io->lock);
	pthread_cond_destroy(&io->cond);
	free(io);
	w->io = NULL;
	return err;
}

#define PROGRESS_PAGES 4096u /* 16 MiB */

static void w_progress(struct img_writer *w, uint64_t done)
{
	if (w->progress && done >= w->progress_next) {
		w->progress(w->progress_arg, done, w->ram_size / IMG_PAGE_SIZE);
		w->progress_next = done + PROGRESS_PAGES;
	}
}

static int w_flush(struct img_writer *w)
{
	if (w->blen && !w->err) {
		w->err = pwrite_all(w->fd, w->buf, w->blen, w->boff);
		w->st.bytes_written += w->blen;
	}
	w->boff += w->blen;
	w->blen = 0;
	return w->err;
}

/*
 * Hashing behind the writes (img_writer_hash_behind): a thread of its own takes the bytes in
 * file order as they are noted. Guest memory it reads in place while the caller keeps it
 * still (the VM is paused), and from the file once img_writer_release_memory() says it may
 * change (every byte of it is written by then); anything else is copied when noted. So most
 * of the SHA-256 is done during the pause on the core the writes leave free, and the rest
 * after the guest resumes, instead of all of it after.
 */
#define HB_STEP (1u << 20) /* bytes hashed between looks at the memory flag */

struct w_hrange {
	uint64_t off, len;
	const uint8_t *src; /* guest memory, valid while the caller holds it still */
	uint8_t *copy;	    /* or the bytes, copied */
};

struct w_hasher {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct w_hrange *r;
	size_t n, cap, next;
	bool stable;  /* src pointers may be read (until img_writer_release_memory) */
	bool in_src;  /* the thread is reading a src pointer now */
	bool done;    /* no more ranges: finish and exit */
	int fd, err;
	EVP_MD_CTX *sha;
	uint8_t *buf; /* read-back buffer */
};

static void *hb_thread(void *arg)
{
	struct w_hasher *hb = arg;
	pthread_mutex_lock(&hb->lock);
	for (;;) {
		while (hb->next == hb->n && !hb->done)
			pthread_cond_wait(&hb->cond, &hb->lock);
		if (hb->next == hb->n || hb->err)
			break;
		struct w_hrange rg = hb->r[hb->next];
		for (uint64_t pos = 0; pos < rg.len && !hb->err;) {
			size_t k = rg.len - pos < HB_STEP ? (size_t)(rg.len - pos) : HB_STEP;
			const uint8_t *p = NULL;
			if (rg.copy)
				p = rg.copy + pos;
			else if (hb->stable)
				p = rg.src + pos;
			hb->in_src = p && !rg.copy;
			pthread_mutex_unlock(&hb->lock);
			int err = 0;
			if (!p) {
				ssize_t got = pread(hb->fd, hb->buf, k, (off_t)(rg.off + pos));
				if (got != (ssize_t)k)
					err = img_fail(got < 0 ? -errno : -EIO,
						       "image: reading back file offset %llu to hash it: "
						       "%s",
						       (ull)(rg.off + pos),
						       got < 0 ? strerror(errno) : "short read");
				p = hb->buf;
			}
			if (!err && EVP_DigestUpdate(hb->sha, p, k) != 1)
				err = img_fail(-EIO, "sha-256 update failed");
			pthread_mutex_lock(&hb->lock);
			hb->in_src = false;
			if (err && !hb->err)
				hb->err = err;
			pthread_cond_broadcast(&hb->cond);
			pos += k;
		}
		free(hb->r[hb->next].copy);
		hb->r[hb->next].copy = NULL;
		hb->next++;
	}
	pthread_mutex_unlock(&hb->lock);
	return NULL;
}

void img_writer_hash_behind(struct img_writer *w)
{
	struct w_hasher *hb = calloc(1, sizeof(*hb));
	if (hb)
		hb->buf = malloc(HB_STEP);
	if (!hb || !hb->buf) {
		if (hb)
			free(hb);
		img_writer_defer_hash(w); /* the same image, hashed at finish */
		return;
	}
	hb->fd = w->fd;
	hb->sha = w->sha;
	hb->stable = true;
	pthread_mutex_init(&hb->lock, NULL);
	pthread_cond_init(&hb->cond, NULL);
	if (pthread_create(&hb->thread, NULL, hb_thread, hb)) {
		pthread_mutex_destroy(&hb->lock);
		pthread_cond_destroy(&hb->cond);
		free(hb->buf);
		free(hb);
		img_writer_defer_hash(w);
		return;
	}
	w->hb = hb;
}

void img_writer_release_memory(struct img_writer *w)
{
	struct w_hasher *hb = w->hb;
	if (!hb)
		return;
	pthread_mutex_lock(&hb->lock);
	hb->stable = false;
	while (hb->in_src) /* at most one HB_STEP (about 1 ms) */
		pthread_cond_wait(&hb->cond, &hb->lock);
	pthread_mutex_unlock(&hb->lock);
}

/* Note a range for the hasher: guest memory (@stable) by pointer, anything else copied. */
static void hb_note(struct img_writer *w, uint64_t off, const void *p, size_t n, bool stable)
{
	struct w_hasher *hb = w->hb;
	uint8_t *copy = NULL;
	if (!stable) {
		copy = malloc(n);
		if (!copy) {
			w->err = -ENOMEM;
			return;
		}
		memcpy(copy, p, n);
	}
	pthread_mutex_lock(&hb->lock);
	if (hb->n == hb->cap) {
		size_t cap = hb->cap ? hb->cap * 2 : 256;
		void *nr = realloc(hb->r, cap * sizeof(*hb->r));
		if (!nr) {
			pthread_mutex_unlock(&hb->lock);
			free(copy);
			w->err = -ENOMEM;
			return;
		}
		hb->r = nr;
		hb->cap = cap;
	}
	hb->r[hb->n++] = (struct w_hrange){ off, n, stable ? p : NULL, copy };
	pthread_cond_broadcast(&hb->cond);
	pthread_mutex_unlock(&hb->lock);
}

/* Wait for the hasher to take everything noted, stop it; its error or 0. */
static int hb_stop(struct img_writer *w)
{
	struct w_hasher *hb = w->hb;
	if (!hb)
		return 0;
	pthread_mutex_lock(&hb->lock);
	hb->done = true;
	pthread_cond_broadcast(&hb->cond);
	pthread_mutex_unlock(&hb->lock);
	pthread_join(hb->thread, NULL);
	int err = hb->err;
	for (size_t i = hb->next; i < hb->n; i++)
		free(hb->r[i].copy);
	free(hb->r);
	free(hb->buf);
	pthread_mutex_destroy(&hb->lock);
	pthread_cond_destroy(&hb->cond);
	free(hb);
	w->hb = NULL;
	return err;
}

/*
 * Hash @n bytes that land at file offset @off (or note the range, when deferred or hashed
 * behind). @stable: @p is the caller's memory that stays as it is until
 * img_writer_release_memory() (guest RAM of a paused VM); else it may change on return.
 */
static void w_hash_src(struct img_writer *w, uint64_t off, const void *p, size_t n, bool stable)
{
	if (w->err || !n)
		return;
	if (w->hb) {
		hb_note(w, off, p, n, stable);
		return;
	}
	if (!w->defer_hash) {
		if (EVP_DigestUpdate(w->sha, p, n) != 1)
			w->err = img_fail(-EIO, "sha-256 update failed");
		return;
	}
	if (w->nhr && w->hr[w->nhr - 1].off + w->hr[w->nhr - 1].len == off) {
		w->hr[w->nhr - 1].len += n;
		return;
	}
	if (w->nhr == w->hr_cap) {
		size_t cap = w->hr_cap ? w->hr_cap * 2 : 64;
		void *nr = realloc(w->hr, cap * sizeof(*w->hr));
		if (!nr) {
			w->err = -ENOMEM;
			return;
		}
		w->hr = nr;
		w->hr_cap = cap;
	}
	w->hr[w->nhr++] = (struct w_range){ off, n };
}

static void w_hash(struct img_writer *w, uint64_t off, const void *p, size_t n)
{
	w_hash_src(w, off, p, n, false);
}

/* Deferred hashing: read the noted ranges back (from the page cache) and hash them. */
static int w_hash_deferred(struct img_writer *w)
{
	enum { CHUNK = 4u << 20 };
	uint8_t *buf = malloc(CHUNK);
	if (!buf)
		return w->err = -ENOMEM;
	for (size_t i = 0; i < w->nhr && !w->err; i++) {
		for (uint64_t o = w->hr[i].off, end = o + w->hr[i].len; o < end && !w->err;) {
			size_t n = end - o < CHUNK ? (size_t)(end - o) : CHUNK;
			ssize_t got = pread(w->fd, buf, n, (off_t)o);
			if (got != (ssize_t)n) {
				w->err = img_fail(got < 0 ? -errno : -EIO,
						  "image: reading back file offset %llu to hash it: %s",
						  (ull)o, got < 0 ? strerror(errno) : "short read");
				break;
			}
			if (EVP_DigestUpdate(w->sha, buf, n) != 1)
				w->err = img_fail(-EIO, "sha-256 update failed");
			o += n;
		}
	}
	free(buf);
	return w->err;
}

void img_writer_defer_hash(struct img_writer *w)
{
	w->defer_hash = true;
}

/* Append @n bytes at the end of the image, hashed. */
static int w_append(struct img_writer *w, const void *p, size_t n)
{
	if (w->err)
		return w->err;
	w_hash(w, w->off, p, n);
	if (w->blen + n > WBUF_SIZE && w_flush(w))
		return w->err;
	if (n >= WBUF_SIZE) {
		if (!w->err)
			w->err = pwrite_all(w->fd, p, n, w->off);
		w->st.bytes_written += n;
		w->boff += n;
	} else if (n) {
		memcpy(w->buf + w->blen, p, n);
		w->blen += n;
	}
	w->off += n;
	return w->err;
}

static int w_index_add(struct img_writer *w, const struct img_frame *f, uint64_t off)
{
	if (w->nidx == w->idx_cap) {
		size_t cap = w->idx_cap ? w->idx_cap * 2 : 64;
		void *n = realloc(w->idx, cap * sizeof(*w->idx));
		if (!n)
			return w->err = -ENOMEM;
		w->idx = n;
		w->idx_cap = cap;
	}
	w->idx[w->nidx++] = (struct img_section_info){ .id = f->id, .version = f->version,
						       .flags = f->flags, .offset = off,
						       .length = f->length };
	return 0;
}

/* Frame + payload + crc. PAD and INDEX are not indexed. */
static int w_section(struct img_writer *w, uint32_t id, uint16_t version, uint16_t flags,
		     const void *payload, size_t len)
{
	struct img_frame f = { id, version, flags, len };
	uint8_t fb[IMG_FRAME_SIZE], cb[IMG_CRC_SIZE];
	uint64_t at = w->off;

	if (w->err)
		return w->err;
	img_frame_encode(fb, &f);
	put32(cb, flags & IMG_SEC_PAYLOAD_EXTERNAL ? crc32c(0, fb, sizeof(fb))
						   : img_frame_crc(fb, payload, len));
	w_append(w, fb, sizeof(fb));
	w_append(w, payload, len);
	w_append(w, cb, sizeof(cb));
	if (!w->err && IMG_SEC_TYPE(id) != IMG_SEC_PAD && IMG_SEC_TYPE(id) != IMG_SEC_INDEX)
		w_index_add(w, &f, at);
	return w->err;
}

int img_writer_open(struct img_writer **wp, int fd, const struct img_header *h)
{
	struct img_writer *w = calloc(1, sizeof(*w));
	struct enc e;
	int err;

	*wp = NULL;
	if (!w)
		return -ENOMEM;
	w->fd = fd;
	w->ram_size = h->vm.ram_size;
	w->buf = malloc(WBUF_SIZE);
	w->sha = EVP_MD_CTX_new();
	if (!w->buf || !w->sha) {
		err = -ENOMEM;
		goto fail;
	}
	if (EVP_DigestInit_ex(w->sha, EVP_sha256(), NULL) != 1) {
		err = img_fail(-EIO, "sha-256 init failed");
		goto fail;
	}
	if (ftruncate(fd, 0) < 0) {
		err = img_fail(-errno, "image: cannot truncate the output file: %s",
			       strerror(errno));
		goto fail;
	}
	enc_init(&e);
	err = img_header_encode(&e, h);
	if (!err)
		err = w_append(w, e.buf, e.len);
	enc_free(&e);
	if (err)
		goto fail;
	*wp = w;
	return 0;
fail:
	img_writer_free(w);
	return err;
}

void img_writer_free(struct img_writer *w)
{
	if (!w)
		return;
	hb_stop(w); /* before the digest it updates is freed */
	EVP_MD_CTX_free(w->sha);
	free(w->buf);
	free(w->idx);
	free(w->hr);
	free(w->live_written);
	free(w);
}

int img_write_section(struct img_writer *w, uint32_t id, uint16_t version, uint16_t flags,
		      const void *payload, size_t len)
{
	uint32_t type = IMG_SEC_TYPE(id);

	if (w->err)
		return w->err;
	if (w->finished || w->live_open || type == IMG_SEC_PAD || type == IMG_SEC_MEM_MAP ||
	    type == IMG_SEC_MEM_DATA || type == IMG_SEC_INDEX || (flags & ~IMG_SEC_REQUIRED) ||
	    (len && !payload))
		return img_fail(-EINVAL, "image: cannot write section '%s' (id 0x%08x) here",
				sname(id), id);
	for (size_t i = 0; i < w->nidx; i++)
		if (w->idx[i].id == id)
			return img_fail(-EEXIST, "image: section '%s' (id 0x%08x) written twice",
					sname(id), id);
	return w_section(w, id, version, flags, payload, len);
}

int img_write_section_enc(struct img_writer *w, uint32_t id, uint16_t version, uint16_t flags,
			  const struct enc *e)
{
	if (enc_error(e))
		return img_fail(enc_error(e), "image: encoding section '%s' failed", sname(id));
	return img_write_section(w, id, version, flags, e->buf, e->len);
}

int img_write_parent(struct img_writer *w, const uint8_t sha256[32], const char *path)
{
	struct enc e;
	int err;

	if (!path || strlen(path) >= IMG_STR_MAX)
		return img_fail(-ENAMETOOLONG, "image: parent path too long");
	enc_init(&e);
	enc_bytes(&e, sha256, 32);
	enc_str(&e, path);
	err = img_write_section_enc(w, IMG_SEC_ID(IMG_SEC_PARENT, 0), 1, IMG_SEC_REQUIRED, &e);
	enc_free(&e);
	if (!err)
		w->has_parent = true;
	return err;
}

static bool bit_set(const uint64_t *bm, uint64_t i)
{
	return bm[i / 64] >> (i % 64) & 1;
}

/* Pages from @p (< @end) with the same dirty state as page @p, at most @max. */
static uint64_t dirty_span(const uint64_t *dirty, uint64_t p, uint64_t end, uint64_t max,
			   bool *set)
{
	uint64_t n = 1;
	*set = !dirty || bit_set(dirty, p);
	if (!dirty)
		return end - p < max ? end - p : max;
	while (p + n < end && n < max) {
		/* Whole words at a time when aligned and uniform. */
		if ((p + n) % 64 == 0 && p + n + 64 <= end && n + 64 <= max &&
		    dirty[(p + n) / 64] == (*set ? ~0ull : 0)) {
			n += 64;
			continue;
		}
		if (bit_set(dirty, p + n) != *set)
			break;
		n++;
	}
	return n;
}

/* Page-map builder shared by both memory layouts: merges adjacent ZERO/PARENT runs. */
struct map_builder {
	struct enc enc;
	struct img_run cur;
	bool have;
	uint64_t nruns;
};

static void map_emit(struct map_builder *m, const struct img_run *r)
{
	if (m->have && m->cur.kind == r->kind &&
	    (r->kind == IMG_RUN_ZERO || r->kind == IMG_RUN_PARENT) &&
	    m->cur.page + m->cur.npages == r->page && m->cur.npages <= UINT32_MAX - r->npages) {
		m->cur.npages += r->npages;
		return;
	}
	if (m->have) {
		img_run_encode(&m->enc, &m->cur);
		m->nruns++;
	}
	m->cur = *r;
	m->have = true;
}

static void map_finish(struct map_builder *m)
{
	if (m->have) {
		img_run_encode(&m->enc, &m->cur);
		m->nruns++;
	}
	m->have = false;
}

/* A write of guest memory not yet issued: [off, off + len) from src. */
struct pending {
	const uint8_t *src;
	uint64_t off;
	size_t len;
};

static int pending_flush(struct img_writer *w, struct pending *pw)
{
	if (pw->len && !w->err) {
		w_hash_src(w, pw->off, pw->src, pw->len, true);
		if (!w->err)
			w->err = w_io_submit(w, pw->src, pw->len, pw->off);
		w->st.bytes_written += pw->len;
	}
	pw->len = 0;
	return w->err;
}

/* How far a hint span may run from @q: unbounded (32-bit) for clear bits, @max for set. */
static uint64_t set_limit(const uint64_t *hint, uint64_t q, uint64_t max)
{
	return bit_set(hint, q) ? max : UINT32_MAX;
}

/*
 * Pages from @q (< @end) that are all zero or all not, at most @run_pages of data; *@zero
 * tells which. Pages whose @hint bit is clear are zero without being read (RAM the guest never
 * touched: reading it would make the host allocate it).
 */
static uint32_t scan_hinted(const uint64_t *hint, const uint8_t *src, uint64_t q, uint64_t end,
			    uint32_t run_pages, bool *zero)
{
	uint64_t max = end - q < run_pages ? end - q : run_pages;
	if (hint) {
		bool set;
		uint64_t n = dirty_span(hint, q, end, set_limit(hint, q, max), &set);
		if (!set) {
			*zero = true;
			return (uint32_t)n;
		}
		max = n;
	}
	return (uint32_t)img_scan_pages(src, max, zero);
}

/*
 * Walk RAM in page order and emit its page map: PARENT runs for pages the @dirty bitmap
 * leaves out (incremental images), ZERO runs for zero pages, and for each run of up to
 * @run_pages non-zero pages a call to @store, which stores the bytes and completes the run
 * (kind, offset, stored_len, crc, statistics). Stops at the writer's first error.
 */
typedef void (*store_run_fn)(struct img_writer *w, const uint8_t *src, struct img_run *r,
			     void *arg);

static void walk_memory(struct img_writer *w, const uint8_t *ram, uint64_t pages,
			const uint64_t *dirty, uint32_t run_pages, struct map_builder *m,
			store_run_fn store, void *arg)
{
	for (uint64_t p = 0; p < pages && !w->err;) {
		bool set, zero;
		uint64_t n = dirty_span(dirty, p, pages, UINT32_MAX, &set);
		if (!set) {
			map_emit(m, &(struct img_run){ .page = p, .npages = (uint32_t)n,
						      .kind = IMG_RUN_PARENT });
			w->st.pages_parent += n;
			p += n;
			continue;
		}
		for (uint64_t q = p, end = p + n; q < end && !w->err;) {
			const uint8_t *src = ram + q * IMG_PAGE_SIZE;
			uint32_t k = scan_hinted(w->nonzero_hint, src, q, end, run_pages, &zero);
			struct img_run r = { .page = q, .npages = k, .kind = IMG_RUN_ZERO };
			if (zero)
				w->st.pages_zero += k;
			else
				store(w, src, &r, arg);
			map_emit(m, &r);
			q += k;
			w_progress(w, q);
		}
		p += n;
	}
}

/* Linear layout: page i at base + i * page size, written through the I/O thread. */
struct linear_ctx {
	uint64_t base;
	struct pending pw;
};

static void store_linear(struct img_writer *w, const uint8_t *src, struct img_run *r, void *arg)
{
	struct linear_ctx *c = arg;
	r->kind = IMG_RUN_DATA;
	r->offset = c->base + r->page * IMG_PAGE_SIZE;
	r->stored_len = r->npages * IMG_PAGE_SIZE;
	r->crc = crc32c(0, src, r->stored_len);
	w->st.pages_data += r->npages;
	if (c->pw.len &&
	    (c->pw.off + c->pw.len != r->offset || c->pw.len + r->stored_len > WRITE_COALESCE))
		pending_flush(w, &c->pw);
	if (!c->pw.len)
		c->pw = (struct pending){ src, r->offset, 0 };
	c->pw.len += r->stored_len;
}

static int write_memory_linear(struct img_writer *w, const uint8_t *ram, uint64_t pages,
			       const uint64_t *dirty, uint32_t run_pages, struct map_builder *m)
{
	uint64_t size = pages * IMG_PAGE_SIZE;
	uint8_t fb[IMG_FRAME_SIZE], cb[4];

	/* A PAD section so that the memory payload starts page-aligned (mmap-able). */
	if ((w->off + IMG_FRAME_SIZE) % IMG_PAGE_SIZE) {
		uint64_t pad = (IMG_PAGE_SIZE - (w->off + 2 * IMG_FRAME_SIZE + IMG_CRC_SIZE) %
							IMG_PAGE_SIZE) %
			       IMG_PAGE_SIZE;
		static const uint8_t zeros[IMG_PAGE_SIZE];
		w_section(w, IMG_SEC_ID(IMG_SEC_PAD, 0), 1, 0, zeros, pad);
	}
	struct img_frame f = { IMG_SEC_ID(IMG_SEC_MEM_DATA, 0), 1,
			       IMG_SEC_REQUIRED | IMG_SEC_PAYLOAD_EXTERNAL, size };
	uint64_t frame_off = w->off, base = frame_off + IMG_FRAME_SIZE;
	img_frame_encode(fb, &f);
	put32(cb, crc32c(0, fb, sizeof(fb)));
	w_append(w, fb, sizeof(fb));
	w_index_add(w, &f, frame_off);
	if (w_flush(w))
		return w->err;

	struct linear_ctx c = { .base = base };
	walk_memory(w, ram, pages, dirty, run_pages, m, store_linear, &c);
	pending_flush(w, &c.pw);
	/* The payload's zero runs stay holes: the next bytes land after the payload. */
	w->off = w->boff = base + size;
	return w_append(w, cb, sizeof(cb));
}

/* Packed layout: runs (LZ4 or raw) appended to a batch that becomes a MEM_DATA section. */
struct packed_ctx {
	bool compress;
	size_t bound;
	uint8_t *batch;
	size_t blen;
	uint32_t inst;
};

static void flush_batch(struct img_writer *w, struct packed_ctx *c)
{
	if (!c->blen || w->err)
		return;
	if (c->inst > 0xffff) {
		w->err = img_fail(-EFBIG, "image: too much memory data");
		return;
	}
	w_section(w, IMG_SEC_ID(IMG_SEC_MEM_DATA, c->inst++), 1,
		  IMG_SEC_REQUIRED | IMG_SEC_PAYLOAD_EXTERNAL, c->batch, c->blen);
	c->blen = 0;
}

static void store_packed(struct img_writer *w, const uint8_t *src, struct img_run *r, void *arg)
{
	struct packed_ctx *c = arg;
	const void *stored;
	uint64_t page = r->page;
	img_pack_run(src, r->npages, c->compress, c->batch + c->blen, r, &stored);
	if (stored != c->batch + c->blen)
		memcpy(c->batch + c->blen, stored, r->stored_len);
	r->page = page;
	/* The batch becomes a MEM_DATA section: its frame comes first. */
	r->offset = w->off + IMG_FRAME_SIZE + c->blen;
	c->blen += r->stored_len;
	if (r->kind == IMG_RUN_LZ4) {
		w->st.pages_lz4 += r->npages;
		w->st.lz4_bytes += r->stored_len;
	} else {
		w->st.pages_data += r->npages;
	}
	if (c->blen > BATCH_SIZE - c->bound)
		flush_batch(w, c);
}

static int write_memory_packed(struct img_writer *w, const uint8_t *ram, uint64_t pages,
			       const uint64_t *dirty, uint32_t run_pages, bool compress,
			       struct map_builder *m)
{
	struct packed_ctx c = { .compress = compress, .bound = img_lz4_bound(run_pages) };
	c.batch = malloc(BATCH_SIZE + c.bound);
	if (!c.batch)
		return w->err = -ENOMEM;
	walk_memory(w, ram, pages, dirty, run_pages, m, store_packed, &c);
	flush_batch(w, &c);
	free(c.batch);
	return w->err;
}

/* The memory.map section from a finished map builder: head then runs, without another copy. */
static int w_map_section(struct img_writer *w, struct map_builder *m, uint64_t pages, bool linear)
{
	uint8_t head[MAP_HEAD];
	if (!w->err && m->enc.err)
		w->err = m->enc.err;
	if (w->err)
		return w->err;
	struct img_frame f = { IMG_SEC_ID(IMG_SEC_MEM_MAP, 0), 1, IMG_SEC_REQUIRED,
			       MAP_HEAD + m->enc.len };
	uint8_t fb[IMG_FRAME_SIZE], cb[4];
	uint64_t at = w->off;
	put32(head, IMG_PAGE_SIZE);
	put32(head + 4, linear ? MAP_LINEAR : 0);
	put64(head + 8, pages);
	put64(head + 16, m->nruns);
	img_frame_encode(fb, &f);
	put32(cb, crc32c(img_frame_crc(fb, head, MAP_HEAD), m->enc.buf, m->enc.len));
	w_append(w, fb, sizeof(fb));
	w_append(w, head, sizeof(head));
	w_append(w, m->enc.buf, m->enc.len);
	w_append(w, cb, sizeof(cb));
	if (!w->err)
		w_index_add(w, &f, at);
	return w->err;
}

int img_write_memory(struct img_writer *w, const void *ram, uint64_t size,
		     const uint64_t *dirty, const struct img_write_opts *opts)
{
	struct img_write_opts o = opts ? *opts : (struct img_write_opts){ 0 };
	struct map_builder m = { 0 };
	uint64_t pages = size / IMG_PAGE_SIZE;

	if (w->err)
		return w->err;
	if (w->mem_done || w->finished || size != w->ram_size || !ram)
		return img_fail(-EINVAL, "image: memory must be written once, %llu bytes",
				(ull)w->ram_size);
	if (dirty && !w->has_parent)
		return img_fail(-EINVAL, "image: incremental memory needs a parent section");
	if (!o.run_pages)
		o.run_pages = IMG_RUN_DEFAULT_PAGES;
	if ((uint64_t)o.run_pages * IMG_PAGE_SIZE > IMG_RUN_MAX_BYTES)
		return img_fail(-EINVAL, "image: runs of %u pages are too long", o.run_pages);
	w->mem_done = true;
	w->st.pages_total = pages;
	w->progress = o.progress;
	w->progress_arg = o.progress_arg;
	w->nonzero_hint = o.nonzero_hint;
	w->progress_next = PROGRESS_PAGES;
	enc_init(&m.enc);
	if (o.compress)
		write_memory_packed(w, ram, pages, dirty, o.run_pages, true, &m);
	else {
		w_io_start(w);
		write_memory_linear(w, ram, pages, dirty, o.run_pages, &m);
		int ioerr = w_io_finish(w);
		if (ioerr && !w->err)
			w->err = ioerr;
	}
	map_finish(&m);
	if (!w->err && w->progress)
		w->progress(w->progress_arg, pages, pages);
	if (!w->err && m.enc.err)
		w->err = m.enc.err;
	w_map_section(w, &m, pages, !o.compress);
	enc_free(&m.enc);
	return w->err;
}

/* ---- In-place linear memory (live saves) ------------------------------------------------ */

int img_write_memory_begin(struct img_writer *w)
{
	uint64_t pages = w->ram_size / IMG_PAGE_SIZE;

	if (w->err)
		return w->err;
	if (w->mem_done || w->finished)
		return img_fail(-EINVAL, "image: memory must be written once");
	w->live_written = calloc((pages + 63) / 64, sizeof(uint64_t));
	if (!w->live_written)
		return w->err = -ENOMEM;
	w->mem_done = true;
	/* The same pad + frame as write_memory_linear: the payload starts page-aligned. */
	if ((w->off + IMG_FRAME_SIZE) % IMG_PAGE_SIZE) {
		uint64_t pad = (IMG_PAGE_SIZE - (w->off + 2 * IMG_FRAME_SIZE + IMG_CRC_SIZE) %
							IMG_PAGE_SIZE) %
			       IMG_PAGE_SIZE;
		static const uint8_t zeros[IMG_PAGE_SIZE];
		w_section(w, IMG_SEC_ID(IMG_SEC_PAD, 0), 1, 0, zeros, pad);
	}
	struct img_frame f = { IMG_SEC_ID(IMG_SEC_MEM_DATA, 0), 1,
			       IMG_SEC_REQUIRED | IMG_SEC_PAYLOAD_EXTERNAL, w->ram_size };
	uint8_t fb[IMG_FRAME_SIZE];
	uint64_t frame_off = w->off;
	img_frame_encode(fb, &f);
	w_append(w, fb, sizeof(fb));
	w_index_add(w, &f, frame_off);
	if (w_flush(w))
		return w->err;
	w->live_base = frame_off + IMG_FRAME_SIZE;
	/* Size the file now: the payload is a hole until pages land in it. */
	if (ftruncate(w->fd, (off_t)(w->live_base + w->ram_size)) < 0)
		return w->err = img_fail(-errno, "image: cannot size the output file: %s",
					 strerror(errno));
	w->live_open = true;
	return 0;
}

/* Make file pages [page, page + n) of the payload a hole again (they hold zeros now). */
static int w_live_zero(struct img_writer *w, uint64_t page, uint64_t n)
{
	static const uint8_t zeros[IMG_PAGE_SIZE];
	uint64_t off = w->live_base + page * IMG_PAGE_SIZE;
	if (fallocate(w->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
		      (off_t)(n * IMG_PAGE_SIZE)) == 0)
		return 0;
	/* No hole punching here: zeros are a valid content for a hole (SPEC §4). */
	for (uint64_t i = 0; i < n; i++) {
		int err = pwrite_all(w->fd, zeros, IMG_PAGE_SIZE, off + i * IMG_PAGE_SIZE);
		if (err)
			return err;
	}
	return 0;
}

int img_write_pages(struct img_writer *w, const void *src, uint64_t page, uint64_t npages)
{
	const uint8_t *p = src;
	uint64_t pages = w->ram_size / IMG_PAGE_SIZE;

	if (w->err)
		return w->err;
	if (!w->live_open || page > pages || npages > pages - page)
		return img_fail(-EINVAL, "image: pages %llu+%llu cannot be written here",
				(ull)page, (ull)npages);
	for (uint64_t q = page, end = page + npages; q < end && !w->err;) {
		bool zero;
		uint64_t k = img_scan_pages(p + (q - page) * IMG_PAGE_SIZE,
					    end - q < WRITE_COALESCE / IMG_PAGE_SIZE
						? end - q
						: WRITE_COALESCE / IMG_PAGE_SIZE,
					    &zero);
		if (zero) {
			/* Only pages written before need their file bytes cleared. */
			for (uint64_t i = q; i < q + k && !w->err; i++) {
				if (!bit_set(w->live_written, i))
					continue;
				uint64_t j = i;
				while (j < q + k && bit_set(w->live_written, j)) {
					w->live_written[j / 64] &= ~(1ull << (j % 64));
					j++;
				}
				w->err = w_live_zero(w, i, j - i);
				i = j;
			}
		} else {
			w->err = pwrite_all(w->fd, p + (q - page) * IMG_PAGE_SIZE, k * IMG_PAGE_SIZE,
					    w->live_base + q * IMG_PAGE_SIZE);
			w->st.bytes_written += k * IMG_PAGE_SIZE;
			for (uint64_t i = q; i < q + k; i++)
				w->live_written[i / 64] |= 1ull << (i % 64);
		}
		q += k;
	}
	return w->err;
}

int img_write_memory_end(struct img_writer *w, const uint64_t *present,
			 const struct img_write_opts *opts)
{
	struct img_write_opts o = opts ? *opts : (struct img_write_opts){ 0 };
	struct map_builder m = { 0 };
	uint64_t pages = w->ram_size / IMG_PAGE_SIZE, base = w->live_base;
	uint8_t cb[4], fb[IMG_FRAME_SIZE];
	uint8_t *buf = NULL;

	if (w->err)
		return w->err;
	if (!w->live_open)
		return img_fail(-EINVAL, "image: img_write_memory_end without begin");
	if (present && !w->has_parent)
		return w->err = img_fail(-EINVAL,
					 "image: incremental memory needs a parent section");
	if (!o.run_pages)
		o.run_pages = IMG_RUN_DEFAULT_PAGES;
	if ((uint64_t)o.run_pages * IMG_PAGE_SIZE > IMG_RUN_MAX_BYTES)
		return w->err = img_fail(-EINVAL, "image: runs of %u pages are too long",
					 o.run_pages);
	buf = malloc((size_t)o.run_pages * IMG_PAGE_SIZE);
	if (!buf)
		return w->err = -ENOMEM;
	w->st.pages_total = pages;
	w->progress = o.progress;
	w->progress_arg = o.progress_arg;
	w->progress_next = PROGRESS_PAGES;
	enc_init(&m.enc);
	/*
	 * The payload is final: read back what was written (page cache) and describe it. Runs
	 * split where the present/written state changes, so that only written pages are read.
	 */
	for (uint64_t p = 0; p < pages && !w->err;) {
		bool in, wr;
		uint64_t n = dirty_span(present, p, pages, o.run_pages, &in);
		if (!in) {
			map_emit(&m, &(struct img_run){ .page = p, .npages = (uint32_t)n,
						       .kind = IMG_RUN_PARENT });
			w->st.pages_parent += n;
			p += n;
			continue;
		}
		n = dirty_span(w->live_written, p, p + n, n, &wr);
		if (!wr) {
			map_emit(&m, &(struct img_run){ .page = p, .npages = (uint32_t)n,
						       .kind = IMG_RUN_ZERO });
			w->st.pages_zero += n;
			p += n;
			continue;
		}
		w->err = pread_all(w->fd, buf, n * IMG_PAGE_SIZE, base + p * IMG_PAGE_SIZE);
		for (uint64_t q = p; q < p + n && !w->err;) {
			bool zero;
			const uint8_t *src = buf + (q - p) * IMG_PAGE_SIZE;
			uint32_t k = (uint32_t)img_scan_pages(src, p + n - q, &zero);
			struct img_run r = { .page = q, .npages = k, .kind = IMG_RUN_ZERO };
			if (zero) {
				w->st.pages_zero += k;
			} else {
				r.kind = IMG_RUN_DATA;
				r.offset = base + q * IMG_PAGE_SIZE;
				r.stored_len = k * IMG_PAGE_SIZE;
				r.crc = crc32c(0, src, r.stored_len);
				w->st.pages_data += k;
				w_hash(w, r.offset, src, r.stored_len);
			}
			map_emit(&m, &r);
			q += k;
		}
		p += n;
		w_progress(w, p);
	}
	free(buf);
	w->live_open = false;
	/* The frame's crc follows the payload; then the map. */
	img_frame_encode(fb, &(struct img_frame){ IMG_SEC_ID(IMG_SEC_MEM_DATA, 0), 1,
						 IMG_SEC_REQUIRED | IMG_SEC_PAYLOAD_EXTERNAL,
						 w->ram_size });
	put32(cb, crc32c(0, fb, sizeof(fb)));
	w->off = w->boff = base + w->ram_size;
	w_append(w, cb, sizeof(cb));
	map_finish(&m);
	if (!w->err && w->progress)
		w->progress(w->progress_arg, pages, pages);
	w_map_section(w, &m, pages, true);
	enc_free(&m.enc);
	return w->err;
}

int img_writer_finish(struct img_writer *w, struct img_write_stats *st)
{
	struct enc e;
	uint8_t end[END_SIZE] = { 0 };
	unsigned int mdlen = 0;

	if (w->err)
		return w->err;
	if (w->finished)
		return img_fail(-EINVAL, "image: finished twice");
	enc_init(&e);
	for (size_t i = 0; i < w->nidx; i++) {
		enc_u32(&e, w->idx[i].id);
		enc_u16(&e, w->idx[i].version);
		enc_u16(&e, w->idx[i].flags);
		enc_u64(&e, w->idx[i].offset);
		enc_u64(&e, w->idx[i].length);
	}
	uint64_t index_off = w->off;
	if (e.err)
		w->err = e.err;
	else
		w_section(w, IMG_SEC_ID(IMG_SEC_INDEX, 0), 1, IMG_SEC_REQUIRED, e.buf, e.len);
	enc_free(&e);
	if (w->err)
		return w->err;
	if (w->defer_hash && (w_flush(w) || w_hash_deferred(w)))
		return w->err;
	if (w->hb) {
		img_writer_release_memory(w); /* in case the caller did not */
		int herr = hb_stop(w);
		if (herr)
			return w->err = herr;
	}
	if (EVP_DigestFinal_ex(w->sha, w->st.sha256, &mdlen) != 1 || mdlen != 32)
		return w->err = img_fail(-EIO, "sha-256 final failed");
	put64(end, index_off);
	put64(end + 8, w->off + END_SIZE);
	memcpy(end + 16, w->st.sha256, 32);
	put32(end + 52, crc32c(0, end, 52));
	memcpy(end + 56, IMG_END_MAGIC, 8);
	/* Not hashed: the end record carries the hash. */
	if (w->blen + END_SIZE > WBUF_SIZE && w_flush(w))
		return w->err;
	memcpy(w->buf + w->blen, end, END_SIZE);
	w->blen += END_SIZE;
	w->off += END_SIZE;
	if (w_flush(w))
		return w->err;
	w->finished = true;
	w->st.file_size = w->off;
	if (st)
		*st = w->st;
	return 0;
}

/* ---- Reader ----------------------------------------------------------------------------- */

struct img {
	int fd;
	uint64_t file_size;
	uint32_t header_len;
	struct img_header hdr;
	uint64_t index_off, end_off;
	uint8_t sha256[32];
	struct img_section_info *secs; /* file order */
	size_t nsecs;
	bool has_parent;
	uint8_t parent_sha[32];
	char parent_path[IMG_STR_MAX];
	bool has_mem;
	struct img_mem_info mem;
	struct img_run *runs;
	uint64_t *stored; /* indices of DATA/LZ4 runs, in file order */
	size_t nstored;
	uint32_t max_stored;  /* largest stored_len of a run */
	uint32_t max_lz4_raw; /* largest decompressed size of an LZ4 run */
};

const struct img_header *img_get_header(const struct img *img)
{
	return &img->hdr;
}

const uint8_t *img_get_sha256(const struct img *img)
{
	return img->sha256;
}

uint64_t img_file_size(const struct img *img)
{
	return img->file_size;
}

size_t img_section_count(const struct img *img)
{
	return img->nsecs;
}

const struct img_section_info *img_section_at(const struct img *img, size_t i)
{
	return i < img->nsecs ? &img->secs[i] : NULL;
}

const struct img_section_info *img_find_section(const struct img *img, uint32_t id)
{
	for (size_t i = 0; i < img->nsecs; i++)
		if (img->secs[i].id == id)
			return &img->secs[i];
	return NULL;
}

int img_get_parent(const struct img *img, uint8_t sha256[32], const char **path)
{
	if (!img->has_parent)
		return -ENOENT;
	if (sha256)
		memcpy(sha256, img->parent_sha, 32);
	if (path)
		*path = img->parent_path;
	return 0;
}

int img_get_mem_info(const struct img *img, struct img_mem_info *mi)
{
	if (!img->has_mem)
		return -ENOENT;
	*mi = img->mem;
	return 0;
}

const struct img_run *img_get_runs(const struct img *img, size_t *nruns)
{
	*nruns = img->has_mem ? img->mem.nruns : 0;
	return img->has_mem ? img->runs : NULL;
}

int img_check_required(const struct img *img,
		       bool (*known)(uint32_t id, uint16_t version, void *arg), void *arg)
{
	for (size_t i = 0; i < img->nsecs; i++) {
		const struct img_section_info *s = &img->secs[i];
		if ((s->flags & IMG_SEC_REQUIRED) && !known(s->id, s->version, arg))
			return img_fail(-ENOTSUP,
					"image needs section '%s' (id 0x%08x) version %u, which "
					"this vmsnap does not support",
					sname(s->id), s->id, s->version);
	}
	return 0;
}

/*
 * The end record is missing: walk the frames from the header to say where the file ends
 * (a cut-off image is the common case).
 */
static int report_truncation(struct img *img)
{
	uint64_t pos = img->header_len;
	uint8_t fb[IMG_FRAME_SIZE];
	struct img_frame f;

	for (unsigned int steps = 0; steps < (1u << 20) && pos + IMG_FRAME_SIZE <= img->file_size;
	     steps++) {
		if (pread_all(img->fd, fb, sizeof(fb), pos))
			return -EBADMSG;
		img_frame_decode(fb, &f);
		if (f.length > img->file_size ||
		    pos + IMG_FRAME_SIZE + f.length + IMG_CRC_SIZE > img->file_size)
			return img_fail(-EBADMSG,
					"truncated: section '%s' (id 0x%08x) at file offset %llu "
					"says %llu bytes, file has %llu",
					sname(f.id), f.id, (ull)pos,
					(ull)(f.length + IMG_FRAME_SIZE + IMG_CRC_SIZE),
					(ull)img->file_size);
		pos += IMG_FRAME_SIZE + f.length + IMG_CRC_SIZE;
	}
	return img_fail(-EBADMSG,
			"truncated: file has %llu bytes and no end record (last complete section "
			"ends at file offset %llu)",
			(ull)img->file_size, (ull)pos);
}

static int read_frame(struct img *img, const struct img_section_info *s, struct img_frame *f)
{
	uint8_t fb[IMG_FRAME_SIZE];
	int err = pread_all(img->fd, fb, sizeof(fb), s->offset);
	if (err)
		return err;
	img_frame_decode(fb, f);
	if (f->id != s->id || f->version != s->version || f->flags != s->flags ||
	    f->length != s->length)
		return img_fail(-EBADMSG,
				"section '%s' (id 0x%08x) at file offset %llu: frame does not "
				"match the index",
				sname(s->id), s->id, (ull)s->offset);
	return 0;
}

/* Frame + payload + crc of an indexed section, checked; payload moved to the start. */
static int load_section(struct img *img, const struct img_section_info *s, uint8_t **out)
{
	size_t total;
	uint8_t *buf;
	struct img_frame f;
	int err;

	*out = NULL;
	if (s->flags & IMG_SEC_PAYLOAD_EXTERNAL || s->length > SECTION_MAX)
		return img_fail(-EINVAL, "section '%s' (id 0x%08x): cannot be read as a whole",
				sname(s->id), s->id);
	total = IMG_FRAME_SIZE + (size_t)s->length + IMG_CRC_SIZE;
	buf = malloc(total);
	if (!buf)
		return -ENOMEM;
	err = pread_all(img->fd, buf, total, s->offset);
	if (err)
		goto fail;
	img_frame_decode(buf, &f);
	if (f.id != s->id || f.version != s->version || f.flags != s->flags ||
	    f.length != s->length) {
		err = img_fail(-EBADMSG,
			       "section '%s' (id 0x%08x) at file offset %llu: frame does not match "
			       "the index",
			       sname(s->id), s->id, (ull)s->offset);
		goto fail;
	}
	uint32_t stored = get32(buf + total - 4);
	uint32_t crc = crc32c(0, buf, total - 4);
	if (stored != crc) {
		err = img_fail(-EBADMSG,
			       "section '%s' (id 0x%08x): crc mismatch at file offset %llu "
			       "(stored 0x%08x, computed 0x%08x)",
			       sname(s->id), s->id, (ull)(s->offset + total - 4), stored, crc);
		goto fail;
	}
	memmove(buf, buf + IMG_FRAME_SIZE, (size_t)s->length);
	*out = buf;
	return 0;
fail:
	free(buf);
	return err;
}

int img_read_section(struct img *img, uint32_t id, void **buf, size_t *len, uint16_t *version)
{
	const struct img_section_info *s = img_find_section(img, id);
	uint8_t *p;
	int err;

	*buf = NULL;
	*len = 0;
	if (!s)
		return -ENOENT;
	err = load_section(img, s, &p);
	if (err)
		return err;
	*buf = p;
	*len = (size_t)s->length;
	if (version)
		*version = s->version;
	return 0;
}

static int parse_index(struct img *img, const uint8_t *p, size_t len)
{
	size_t n = len / INDEX_ENTRY;
	uint64_t prev_end = img->header_len;

	img->secs = calloc(n ? n : 1, sizeof(*img->secs));
	if (!img->secs)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++, p += INDEX_ENTRY) {
		struct img_section_info *s = &img->secs[i];
		s->id = get32(p);
		s->version = get16(p + 4);
		s->flags = get16(p + 6);
		s->offset = get64(p + 8);
		s->length = get64(p + 16);
		uint32_t type = IMG_SEC_TYPE(s->id);
		uint64_t room = img->index_off - IMG_FRAME_SIZE - IMG_CRC_SIZE;
		if (s->offset < prev_end || s->offset > room || s->length > room - s->offset)
			return img_fail(-EBADMSG,
					"index entry %zu: section '%s' (id 0x%08x) at file offset "
					"%llu, %llu bytes, overlaps or is outside the image",
					i, sname(s->id), s->id, (ull)s->offset, (ull)s->length);
		prev_end = s->offset + IMG_FRAME_SIZE + s->length + IMG_CRC_SIZE;
		if (type == IMG_SEC_PAD || type == IMG_SEC_INDEX ||
		    !(s->flags & IMG_SEC_PAYLOAD_EXTERNAL) != (type != IMG_SEC_MEM_DATA))
			return img_fail(-EBADMSG,
					"index entry %zu: section '%s' (id 0x%08x) with flags "
					"0x%04x is impossible",
					i, sname(s->id), s->id, s->flags);
		for (size_t j = 0; j < i; j++)
			if (img->secs[j].id == s->id)
				return img_fail(-EBADMSG,
						"index: section '%s' (id 0x%08x) appears twice",
						sname(s->id), s->id);
		if (!type_known(type) && (s->flags & IMG_SEC_REQUIRED))
			return img_fail(-ENOTSUP,
					"image needs section '%s' (id 0x%08x) version %u, which "
					"this vmsnap does not know",
					sname(s->id), s->id, s->version);
		if (own_version(type) && s->version > own_version(type))
			return img_fail(-ENOTSUP,
					"section '%s' (id 0x%08x) has version %u; this vmsnap reads "
					"up to version %u",
					sname(s->id), s->id, s->version, own_version(type));
		img->nsecs++;
	}
	return 0;
}

static int parse_parent(struct img *img, const struct img_section_info *s)
{
	uint8_t *p;
	struct dec d;
	int err = load_section(img, s, &p);
	if (err)
		return err;
	dec_init(&d, p, (size_t)s->length);
	dec_bytes(&d, img->parent_sha, 32);
	dec_str(&d, img->parent_path, sizeof(img->parent_path));
	err = dec_error(&d);
	free(p);
	if (err)
		return img_fail(-EBADMSG, "section 'parent' at file offset %llu: malformed",
				(ull)s->offset);
	img->has_parent = true;
	return 0;
}

static int parse_map(struct img *img, const struct img_section_info *ms)
{
	const uint64_t ram_pages = img->hdr.vm.ram_size / IMG_PAGE_SIZE;
	const struct img_section_info *data;
	size_t di = 0; /* cursor over MEM_DATA sections (file order) */
	uint64_t next_page = 0, stored_end = 0;
	uint8_t *p;
	struct dec d;
	int err = load_section(img, ms, &p);

	if (err)
		return err;
	dec_init(&d, p, (size_t)ms->length);
	uint32_t page_size = dec_u32_val(&d), flags = dec_u32_val(&d);
	uint64_t pages = dec_u64_val(&d), nruns = dec_u64_val(&d);
	struct img_mem_info *mi = &img->mem;
	if (page_size != IMG_PAGE_SIZE || pages != ram_pages || nruns > ram_pages ||
	    nruns != (ms->length - MAP_HEAD) / IMG_RUN_SIZE ||
	    ms->length != MAP_HEAD + nruns * IMG_RUN_SIZE) {
		err = img_fail(-EBADMSG,
			       "section 'memory.map' at file offset %llu: header does not match "
			       "the VM's %llu pages",
			       (ull)ms->offset, (ull)ram_pages);
		goto out;
	}
	mi->ram_pages = ram_pages;
	mi->nruns = (size_t)nruns;
	mi->linear = flags & MAP_LINEAR;
	img->runs = calloc(nruns ? nruns : 1, sizeof(*img->runs));
	img->stored = calloc(nruns ? nruns : 1, sizeof(*img->stored));
	if (!img->runs || !img->stored) {
		err = -ENOMEM;
		goto out;
	}
	if (mi->linear) {
		data = img_find_section(img, IMG_SEC_ID(IMG_SEC_MEM_DATA, 0));
		if (!data || (data->offset + IMG_FRAME_SIZE) % IMG_PAGE_SIZE ||
		    data->length != img->hdr.vm.ram_size) {
			err = img_fail(-EBADMSG,
				       "section 'memory.map': linear memory without a page-aligned "
				       "'memory.data.0' of %llu bytes",
				       (ull)img->hdr.vm.ram_size);
			goto out;
		}
		mi->data_offset = data->offset + IMG_FRAME_SIZE;
	}
	for (size_t i = 0; i < nruns; i++) {
		struct img_run *r = &img->runs[i];
		uint64_t at = ms->offset + IMG_FRAME_SIZE + MAP_HEAD + i * IMG_RUN_SIZE;
		img_run_decode(&d, r);
		const char *why = NULL;
		if (dec_error(&d))
			why = "malformed run";
		else if (r->page != next_page || r->npages > ram_pages - r->page)
			why = "runs do not cover RAM in order";
		else if (r->kind == IMG_RUN_PARENT && !img->has_parent)
			why = "PARENT run in an image without a parent";
		else if (mi->linear && r->kind == IMG_RUN_LZ4)
			why = "LZ4 run in a linear memory image";
		else if (mi->linear && r->kind == IMG_RUN_DATA &&
			 r->offset != mi->data_offset + r->page * IMG_PAGE_SIZE)
			why = "data run not at its linear offset";
		if (!why && r->stored_len) {
			/* Stored runs: increasing offsets, each inside a MEM_DATA payload. */
			const struct img_section_info *s = NULL;
			while (di < img->nsecs) {
				s = &img->secs[di];
				if (IMG_SEC_TYPE(s->id) == IMG_SEC_MEM_DATA &&
				    s->offset + IMG_FRAME_SIZE + s->length > r->offset)
					break;
				di++;
				s = NULL;
			}
			if (r->offset < stored_end || !s || r->offset < s->offset + IMG_FRAME_SIZE ||
			    r->offset + r->stored_len > s->offset + IMG_FRAME_SIZE + s->length)
				why = "stored bytes overlap or lie outside the memory data";
			stored_end = r->offset + r->stored_len;
			img->stored[img->nstored++] = i;
			if (r->stored_len > img->max_stored)
				img->max_stored = r->stored_len;
			if (r->kind == IMG_RUN_LZ4 && r->npages * IMG_PAGE_SIZE > img->max_lz4_raw)
				img->max_lz4_raw = r->npages * IMG_PAGE_SIZE;
		}
		if (why) {
			err = img_fail(-EBADMSG,
				       "memory run at ram page 0x%llx (map entry %zu, file offset "
				       "%llu): %s",
				       (ull)r->page, i, (ull)at, why);
			goto out;
		}
		next_page += r->npages;
		uint64_t *cnt = r->kind == IMG_RUN_ZERO	  ? &mi->pages_zero
				: r->kind == IMG_RUN_DATA ? &mi->pages_data
				: r->kind == IMG_RUN_LZ4  ? &mi->pages_lz4
							  : &mi->pages_parent;
		*cnt += r->npages;
	}
	if (next_page != ram_pages) {
		err = img_fail(-EBADMSG,
			       "section 'memory.map': runs cover %llu of %llu ram pages",
			       (ull)next_page, (ull)ram_pages);
		goto out;
	}
	img->has_mem = true;
out:
	free(p);
	return err;
}

int img_open(struct img **ip, int fd)
{
	struct img *img = calloc(1, sizeof(*img));
	struct stat stt;
	uint8_t *hb = NULL, end[END_SIZE];
	int err;

	*ip = NULL;
	if (!img)
		return -ENOMEM;
	img->fd = fd;
	if (fstat(fd, &stt) < 0) {
		err = img_fail(-errno, "image: fstat: %s", strerror(errno));
		goto fail;
	}
	img->file_size = (uint64_t)stt.st_size;
	/* Most headers fit in a page; read more only when header_len says so. */
	size_t hn = img->file_size < HDR_MAX ? (size_t)img->file_size : HDR_MAX;
	size_t first = hn < IMG_PAGE_SIZE ? hn : IMG_PAGE_SIZE;
	hb = malloc(hn ? hn : 1);
	if (!hb) {
		err = -ENOMEM;
		goto fail;
	}
	err = pread_all(fd, hb, first, 0);
	size_t avail = first;
	if (!err && first >= HDR_MIN && get32(hb + 12) > first) {
		uint32_t want = get32(hb + 12);
		if (want <= hn)
			err = pread_all(fd, hb + first, want - first, first);
		/* Longer than the file: decode reports the truncation before reading. */
		avail = want <= hn ? want : hn;
	}
	if (!err)
		err = img_header_decode(hb, avail, &img->hdr, &img->header_len);
	free(hb);
	if (err)
		goto fail;

	if (img->file_size < (uint64_t)img->header_len + IMG_FRAME_SIZE + IMG_CRC_SIZE + END_SIZE) {
		err = report_truncation(img);
		goto fail;
	}
	img->end_off = img->file_size - END_SIZE;
	err = pread_all(fd, end, END_SIZE, img->end_off);
	if (err)
		goto fail;
	if (memcmp(end + 56, IMG_END_MAGIC, 8)) {
		err = report_truncation(img);
		goto fail;
	}
	uint32_t stored = get32(end + 52), crc = crc32c(0, end, 52);
	if (stored != crc) {
		err = img_fail(-EBADMSG,
			       "end record: crc mismatch at file offset %llu (stored 0x%08x, "
			       "computed 0x%08x)",
			       (ull)(img->end_off + 52), stored, crc);
		goto fail;
	}
	if (get64(end + 8) != img->file_size) {
		err = img_fail(-EBADMSG, "%s: end record says %llu bytes, file has %llu",
			       get64(end + 8) > img->file_size ? "truncated" : "trailing data",
			       (ull)get64(end + 8), (ull)img->file_size);
		goto fail;
	}
	img->index_off = get64(end);
	memcpy(img->sha256, end + 16, 32);
	if (img->index_off < img->header_len ||
	    img->index_off > img->end_off - IMG_FRAME_SIZE - IMG_CRC_SIZE) {
		err = img_fail(-EBADMSG, "end record: index offset %llu is outside the image",
			       (ull)img->index_off);
		goto fail;
	}

	/* The index: the last section, filling the space up to the end record exactly. */
	struct img_section_info is = {
		.id = IMG_SEC_ID(IMG_SEC_INDEX, 0), .version = 1, .flags = IMG_SEC_REQUIRED,
		.offset = img->index_off,
		.length = img->end_off - img->index_off - IMG_FRAME_SIZE - IMG_CRC_SIZE
	};
	uint8_t *ib;
	if (is.length % INDEX_ENTRY || is.length / INDEX_ENTRY > INDEX_MAX) {
		err = img_fail(-EBADMSG, "section 'index' at file offset %llu: bad length %llu",
			       (ull)is.offset, (ull)is.length);
		goto fail;
	}
	err = load_section(img, &is, &ib);
	if (err)
		goto fail;
	err = parse_index(img, ib, (size_t)is.length);
	free(ib);
	if (err)
		goto fail;

	const struct img_section_info *map = NULL;
	bool have_data = false;
	for (size_t i = 0; i < img->nsecs && !err; i++) {
		const struct img_section_info *s = &img->secs[i];
		struct img_frame f;
		err = read_frame(img, s, &f);
		if (err)
			break;
		switch (IMG_SEC_TYPE(s->id)) {
		case IMG_SEC_PARENT: err = parse_parent(img, s); break;
		case IMG_SEC_MEM_MAP: map = s; break;
		case IMG_SEC_MEM_DATA: {
			uint8_t fb[IMG_FRAME_SIZE], cb[4];
			img_frame_encode(fb, &f);
			err = pread_all(fd, cb, 4, s->offset + IMG_FRAME_SIZE + s->length);
			if (!err && get32(cb) != crc32c(0, fb, sizeof(fb)))
				err = img_fail(-EBADMSG,
					       "section '%s' (id 0x%08x): crc mismatch at file "
					       "offset %llu",
					       sname(s->id), s->id,
					       (ull)(s->offset + IMG_FRAME_SIZE + s->length));
			have_data = true;
			break;
		}
		}
	}
	if (err)
		goto fail;
	if (map)
		err = parse_map(img, map);
	else if (have_data)
		err = img_fail(-EBADMSG, "image has memory data but no 'memory.map' section");
	if (err)
		goto fail;
	*ip = img;
	return 0;
fail:
	img_close(img);
	return err;
}

void img_close(struct img *img)
{
	if (!img)
		return;
	free(img->secs);
	free(img->runs);
	free(img->stored);
	free(img);
}

static int run_fail(const struct img_run *r, const char *what, uint32_t stored, uint32_t crc)
{
	return img_fail(-EBADMSG,
			"memory run at ram page 0x%llx (%u pages, %s at file offset %llu): %s "
			"(stored 0x%08x, computed 0x%08x)",
			(ull)r->page, r->npages, r->kind == IMG_RUN_LZ4 ? "lz4" : "data",
			(ull)r->offset, what, stored, crc);
}

/* Check a stored LZ4 run by decompressing into @dst (npages pages). */
static int run_unpack(const struct img_run *r, const void *src, void *dst)
{
	int raw = (int)(r->npages * IMG_PAGE_SIZE);
	int n = LZ4_decompress_safe(src, dst, (int)r->stored_len, raw);
	if (n != raw)
		return img_fail(-EBADMSG,
				"memory run at ram page 0x%llx (%u pages, lz4 at file offset "
				"%llu): corrupt lz4 block",
				(ull)r->page, r->npages, (ull)r->offset);
	return 0;
}

int img_read_memory(struct img *img, void *dest, uint64_t size, unsigned int flags)
{
	uint8_t *d = dest, *scratch = NULL;
	int err = 0;

	if (!img->has_mem)
		return img_fail(-ENOENT, "image has no memory");
	if (size != img->hdr.vm.ram_size)
		return img_fail(-EINVAL, "image memory is %llu bytes, destination %llu",
				(ull)img->hdr.vm.ram_size, (ull)size);
	for (size_t i = 0; i < img->mem.nruns && !err;) {
		const struct img_run *r = &img->runs[i];
		uint8_t *at = d + r->page * IMG_PAGE_SIZE;
		if (r->kind == IMG_RUN_ZERO) {
			if (!(flags & IMG_READ_DEST_ZEROED))
				memset(at, 0, (size_t)r->npages * IMG_PAGE_SIZE);
			i++;
		} else if (r->kind == IMG_RUN_PARENT) {
			i++;
		} else if (r->kind == IMG_RUN_DATA) {
			/* Coalesce runs adjacent in the file and in RAM into one large read. */
			size_t j = i + 1;
			uint64_t len = r->stored_len;
			while (j < img->mem.nruns && img->runs[j].kind == IMG_RUN_DATA &&
			       img->runs[j].offset == r->offset + len &&
			       img->runs[j].page * IMG_PAGE_SIZE == r->page * IMG_PAGE_SIZE + len &&
			       len + img->runs[j].stored_len <= READ_COALESCE)
				len += img->runs[j++].stored_len;
			err = pread_all(img->fd, at, (size_t)len, r->offset);
			for (; i < j && !err; i++) {
				const struct img_run *q = &img->runs[i];
				uint32_t crc = crc32c(0, d + q->page * IMG_PAGE_SIZE, q->stored_len);
				if (crc != q->crc)
					err = run_fail(q, "crc mismatch", q->crc, crc);
			}
		} else {
			if (!scratch && !(scratch = malloc(img->max_stored))) {
				err = -ENOMEM;
				break;
			}
			err = pread_all(img->fd, scratch, r->stored_len, r->offset);
			uint32_t crc = err ? 0 : crc32c(0, scratch, r->stored_len);
			if (!err && crc != r->crc)
				err = run_fail(r, "crc mismatch", r->crc, crc);
			if (!err)
				err = run_unpack(r, scratch, at);
			i++;
		}
	}
	free(scratch);
	return err;
}

/* ---- Verify ----------------------------------------------------------------------------- */

struct verifier {
	struct img *img;
	EVP_MD_CTX *sha;
	uint8_t *buf;  /* bufsize bytes: a stored run, or a piece of a section */
	size_t bufsize;
	uint8_t *buf2; /* lz4 output */
	struct img_verify_stats st;
};

static int v_hash(struct verifier *v, const void *p, size_t n)
{
	v->st.bytes_hashed += n;
	return EVP_DigestUpdate(v->sha, p, n) == 1 ? 0 : img_fail(-EIO, "sha-256 update failed");
}

/* Read [off, off + len) through the hash (and @crc, and a zero check when @zero). */
static int v_stream(struct verifier *v, uint64_t off, uint64_t len, uint32_t *crc, bool hash,
		    const char *what)
{
	while (len) {
		size_t n = len < v->bufsize ? (size_t)len : v->bufsize;
		int err = pread_all(v->img->fd, v->buf, n, off);
		if (err)
			return err;
		if (crc)
			*crc = crc32c(*crc, v->buf, n);
		if (hash && (err = v_hash(v, v->buf, n)))
			return err;
		if (what && (v->buf[0] || memcmp(v->buf, v->buf + 1, n - 1))) {
			size_t i = 0;
			while (!v->buf[i])
				i++;
			return img_fail(-EBADMSG, "%s: non-zero byte at file offset %llu", what,
					(ull)(off + i));
		}
		off += n;
		len -= n;
	}
	return 0;
}

/* Bytes of a memory payload outside any stored run must read as zero (holes normally). */
static int v_gap(struct verifier *v, uint64_t a, uint64_t b, const struct img_section_info *s)
{
	char what[160];
	while (a < b) {
		off_t dpos = lseek(v->img->fd, (off_t)a, SEEK_DATA);
		if (dpos < 0 && errno == ENXIO)
			return 0; /* a hole up to the end of the file */
		if (dpos < 0)
			dpos = (off_t)a; /* no SEEK_DATA here: read it all */
		if ((uint64_t)dpos >= b)
			return 0;
		off_t hpos = lseek(v->img->fd, dpos, SEEK_HOLE);
		uint64_t h = hpos < 0 || (uint64_t)hpos > b ? b : (uint64_t)hpos;
		if (h <= (uint64_t)dpos)
			h = b;
		snprintf(what, sizeof(what), "section '%s': unused space", sname(s->id));
		/* Report the exact page of a corrupt byte: check a page at a time. */
		for (uint64_t o = (uint64_t)dpos; o < h;) {
			uint64_t n = h - o < IMG_PAGE_SIZE ? h - o : IMG_PAGE_SIZE;
			if (v->img->mem.linear)
				snprintf(what, sizeof(what),
					 "section '%s': zero run at ram page 0x%llx", sname(s->id),
					 (ull)((o - v->img->mem.data_offset) / IMG_PAGE_SIZE));
			int err = v_stream(v, o, n, NULL, false, what);
			if (err)
				return err;
			o += n;
		}
		a = h;
	}
	return 0;
}

static int v_memory(struct verifier *v, const struct img_section_info *s, size_t *ri)
{
	struct img *img = v->img;
	uint64_t p = s->offset + IMG_FRAME_SIZE, end = p + s->length;
	int err = 0;

	while (*ri < img->nstored && !err) {
		const struct img_run *r = &img->runs[img->stored[*ri]];
		if (r->offset >= end)
			break;
		if ((err = v_gap(v, p, r->offset, s)))
			break;
		err = pread_all(img->fd, v->buf, r->stored_len, r->offset);
		uint32_t crc = err ? 0 : crc32c(0, v->buf, r->stored_len);
		if (!err && crc != r->crc)
			err = run_fail(r, "crc mismatch", r->crc, crc);
		if (!err && r->kind == IMG_RUN_LZ4)
			err = run_unpack(r, v->buf, v->buf2);
		if (!err)
			err = v_hash(v, v->buf, r->stored_len);
		p = r->offset + r->stored_len;
		v->st.runs++;
		(*ri)++;
	}
	return err ? err : v_gap(v, p, end, s);
}

int img_verify(struct img *img, struct img_verify_stats *st)
{
	struct verifier v = { .img = img };
	uint64_t pos = img->header_len;
	size_t next = 0, ri = 0;
	uint8_t md[32];
	unsigned int mdlen = 0;
	int err;

	/* Buffers sized by what this image needs (small images verify fast). */
	v.bufsize = img->max_stored > (1u << 20) ? img->max_stored : 1u << 20;
	if (v.bufsize > img->file_size)
		v.bufsize = img->max_stored > img->file_size ? img->max_stored
							     : (size_t)img->file_size;
	v.sha = EVP_MD_CTX_new();
	v.buf = malloc(v.bufsize ? v.bufsize : 1);
	v.buf2 = malloc(img->max_lz4_raw ? img->max_lz4_raw : 1);
	if (!v.sha || !v.buf || !v.buf2) {
		err = -ENOMEM;
		goto out;
	}
	if (EVP_DigestInit_ex(v.sha, EVP_sha256(), NULL) != 1) {
		err = img_fail(-EIO, "sha-256 init failed");
		goto out;
	}
	err = v_stream(&v, 0, img->header_len, NULL, true, NULL);
	while (!err && pos < img->end_off) {
		uint8_t fb[IMG_FRAME_SIZE], cb[4];
		struct img_frame f;
		if (img->end_off - pos < IMG_FRAME_SIZE + IMG_CRC_SIZE) {
			err = img_fail(-EBADMSG, "section frame at file offset %llu runs into the "
						 "end record",
				       (ull)pos);
			break;
		}
		if ((err = pread_all(img->fd, fb, sizeof(fb), pos)))
			break;
		img_frame_decode(fb, &f);
		uint32_t type = IMG_SEC_TYPE(f.id);
		if (f.length > img->end_off - pos - IMG_FRAME_SIZE - IMG_CRC_SIZE) {
			err = img_fail(-EBADMSG,
				       "section '%s' (id 0x%08x) at file offset %llu: length %llu "
				       "runs past the end record",
				       sname(f.id), f.id, (ull)pos, (ull)f.length);
			break;
		}
		const struct img_section_info *s = next < img->nsecs ? &img->secs[next] : NULL;
		bool ok;
		if (type == IMG_SEC_PAD)
			ok = f.id == IMG_SEC_ID(IMG_SEC_PAD, 0) && f.version == 1 && !f.flags;
		else if (pos == img->index_off)
			ok = type == IMG_SEC_INDEX && !s;
		else
			ok = s && s->offset == pos && s->id == f.id && s->version == f.version &&
			     s->flags == f.flags && s->length == f.length;
		if (!ok) {
			err = img_fail(-EBADMSG,
				       "section '%s' (id 0x%08x) at file offset %llu is not the "
				       "one the index lists there",
				       sname(f.id), f.id, (ull)pos);
			break;
		}
		if (type != IMG_SEC_PAD && pos != img->index_off)
			next++;
		v.st.sections++;
		uint64_t crc_at = pos + IMG_FRAME_SIZE + f.length;
		uint32_t crc = crc32c(0, fb, sizeof(fb));
		if ((err = v_hash(&v, fb, sizeof(fb))))
			break;
		if (type == IMG_SEC_MEM_DATA) {
			err = v_memory(&v, s, &ri);
		} else {
			char what[64];
			snprintf(what, sizeof(what), "section 'pad'");
			err = v_stream(&v, pos + IMG_FRAME_SIZE, f.length, &crc, true,
				       type == IMG_SEC_PAD ? what : NULL);
		}
		if (!err)
			err = pread_all(img->fd, cb, sizeof(cb), crc_at);
		if (!err && get32(cb) != crc)
			err = img_fail(-EBADMSG,
				       "section '%s' (id 0x%08x): crc mismatch at file offset %llu "
				       "(stored 0x%08x, computed 0x%08x)",
				       sname(f.id), f.id, (ull)crc_at, get32(cb), crc);
		if (!err)
			err = v_hash(&v, cb, sizeof(cb));
		pos = crc_at + IMG_CRC_SIZE;
	}
	if (!err && (next != img->nsecs || ri != img->nstored))
		err = img_fail(-EBADMSG, "index lists sections the file does not contain");
	if (!err && (EVP_DigestFinal_ex(v.sha, md, &mdlen) != 1 || mdlen != 32))
		err = img_fail(-EIO, "sha-256 final failed");
	if (!err && memcmp(md, img->sha256, 32))
		err = img_fail(-EBADMSG,
			       "sha-256 mismatch: the image differs from what was written (end "
			       "record at file offset %llu)",
			       (ull)img->end_off);
out:
	if (st)
		*st = v.st;
	EVP_MD_CTX_free(v.sha);
	free(v.buf);
	free(v.buf2);
	return err;
}
