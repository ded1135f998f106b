/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "formats/codec.h"
#include "formats/crc32c.h"
#include "formats/image.h"

#define PG IMG_PAGE_SIZE

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void make_header(struct img_header *h, uint64_t ram)
{
	memset(h, 0, sizeof(*h));
	strcpy(h->creator, "vmsnap test");
	h->created_ns = 1700000000123456789ull;
	img_host_cpu_probe(&h->cpu);
	h->tsc_khz = 2596000;
	h->vm.ram_size = ram;
	h->vm.vcpus = 2;
	h->vm.nregions = 1;
	h->vm.regions[0] = (struct img_region){ .gpa = 0, .size = ram, .offset = 0 };
	strcpy(h->vm.cpu_template, "host");
	strcpy(h->vm.kernel, "/boot/vmlinux");
	strcpy(h->vm.cmdline, "console=ttyS0");
}

/* Page kinds by index: zero, random (incompressible), text (compressible), one byte at the end. */
static void fill_ram(uint8_t *ram, size_t pages)
{
	for (size_t i = 0; i < pages; i++) {
		uint8_t *p = ram + i * PG;
		memset(p, 0, PG);
		switch (i % 5) {
		case 2:
			for (size_t j = 0; j < PG; j++)
				p[j] = (uint8_t)rnd();
			break;
		case 3:
			for (size_t j = 0; j < PG; j++)
				p[j] = "vmsnap compressible page "[j % 25];
			break;
		case 4: p[PG - 1] = 1; break;
		}
	}
}

static const char vm_state[] = "vm-wide state";

/* The sections every test image carries, with what a reader should find. */
static void write_sections(struct img_writer *w)
{
	struct enc e;
	enc_init(&e);
	assert_int_equal(img_write_section(w, IMG_SEC_ID(IMG_SEC_VM, 0), 3, IMG_SEC_REQUIRED,
					   vm_state, sizeof(vm_state)),
			 0);
	for (uint32_t i = 0; i < 2; i++) {
		enc_reset(&e);
		enc_u32(&e, 0xc0de0000 + i);
		enc_u64(&e, i);
		assert_int_equal(img_write_section_enc(w, IMG_SEC_ID(IMG_SEC_VCPU, i), 1,
						       IMG_SEC_REQUIRED, &e),
				 0);
	}
	/* An empty optional section. */
	assert_int_equal(img_write_section(w, IMG_SEC_ID(IMG_SEC_DEVICE, 7), 2, 0, NULL, 0), 0);
	enc_free(&e);
}

static int build(int fd, const uint8_t *ram, uint64_t ram_size, const struct img_write_opts *o,
		 struct img_write_stats *st)
{
	struct img_header h;
	struct img_writer *w;
	make_header(&h, ram_size);
	int err = img_writer_open(&w, fd, &h);
	if (err)
		return err;
	write_sections(w);
	err = img_write_memory(w, ram, ram_size, NULL, o);
	/* A section after the memory: order in the file is free. */
	if (!err)
		err = img_write_section(w, IMG_SEC_ID(IMG_SEC_DEVICE, 3), 1, IMG_SEC_REQUIRED,
					"uart", 4);
	if (!err)
		err = img_writer_finish(w, st);
	img_writer_free(w);
	return err;
}

static int memfd(void)
{
	int fd = memfd_create("img", 0);
	assert_true(fd >= 0);
	return fd;
}

/* Read everything back and compare; returns 0 or the first error. */
static int read_all(int fd, const uint8_t *ram, uint64_t ram_size, bool expect_equal)
{
	struct img *img;
	int err = img_open(&img, fd);
	if (err)
		return err;
	void *buf;
	size_t len;
	uint16_t ver;
	for (size_t i = 0; i < img_section_count(img) && !err; i++) {
		const struct img_section_info *s = img_section_at(img, i);
		uint32_t t = IMG_SEC_TYPE(s->id);
		if (t == IMG_SEC_MEM_DATA || t == IMG_SEC_MEM_MAP)
			continue;
		err = img_read_section(img, s->id, &buf, &len, &ver);
		if (!err && expect_equal && s->id == IMG_SEC_ID(IMG_SEC_VM, 0)) {
			assert_int_equal(len, sizeof(vm_state));
			assert_memory_equal(buf, vm_state, len);
			assert_int_equal(ver, 3);
		}
		if (!err)
			free(buf);
	}
	uint8_t *dest = NULL;
	if (!err && ram) {
		dest = malloc(ram_size);
		memset(dest, 0xa5, ram_size);
		err = img_read_memory(img, dest, ram_size, 0);
		if (!err && expect_equal)
			assert_memory_equal(dest, ram, ram_size);
		/* Never silently wrong: what the reader accepts equals what was written. */
		if (!err && !expect_equal && memcmp(dest, ram, ram_size))
			fail_msg("reader returned wrong memory without an error");
	}
	free(dest);
	if (!err)
		err = img_verify(img, NULL);
	img_close(img);
	return err;
}

static void round_trip(bool compress)
{
	const size_t pages = 700; /* > 2 default runs, odd tail */
	uint64_t size = pages * PG;
	uint8_t *ram = malloc(size);
	struct img_write_stats st;
	struct img_write_opts o = { .compress = compress };
	int fd = memfd();

	fill_ram(ram, pages);
	/* An incompressible stretch longer than a run. */
	for (size_t i = 400 * PG; i < 690 * PG; i++)
		ram[i] = (uint8_t)rnd();
	size_t nzero = 0;
	for (size_t i = 0; i < pages; i++)
		nzero += img_page_is_zero(ram + i * PG);
	assert_int_equal(nzero, 2 * 80 + 4);
	assert_int_equal(build(fd, ram, size, &o, &st), 0);
	assert_int_equal(st.pages_total, pages);
	assert_int_equal(st.pages_zero, nzero);
	assert_int_equal(st.pages_data + st.pages_lz4, pages - nzero);
	if (compress) {
		assert_true(st.pages_lz4 > 0);
		assert_true(st.pages_data > 0); /* the random pages are stored raw */
	} else {
		assert_int_equal(st.pages_lz4, 0);
	}
	assert_int_equal((uint64_t)lseek(fd, 0, SEEK_END), st.file_size);
	assert_int_equal(read_all(fd, ram, size, true), 0);

	struct img *img;
	assert_int_equal(img_open(&img, fd), 0);
	const struct img_header *h = img_get_header(img);
	assert_int_equal(h->major, IMG_FORMAT_MAJOR);
	assert_int_equal(h->minor, IMG_FORMAT_MINOR);
	assert_string_equal(h->creator, "vmsnap test");
	assert_string_equal(h->vm.cmdline, "console=ttyS0");
	assert_true(h->vm.ram_size == size);
	assert_int_equal(h->vm.vcpus, 2);
	assert_true(h->tsc_khz == 2596000);
	assert_memory_equal(img_get_sha256(img), st.sha256, 32);
	struct img_host_cpu me;
	img_host_cpu_probe(&me);
	assert_true(img_host_cpu_compatible(&h->cpu, &me, NULL, 0));

	struct img_mem_info mi;
	assert_int_equal(img_get_mem_info(img, &mi), 0);
	assert_int_equal(mi.linear, !compress);
	assert_true(mi.pages_zero == nzero);
	size_t nruns;
	const struct img_run *runs = img_get_runs(img, &nruns);
	assert_int_equal(nruns, mi.nruns);
	uint64_t covered = 0;
	for (size_t i = 0; i < nruns; i++) {
		assert_true(runs[i].page == covered);
		covered += runs[i].npages;
	}
	assert_true(covered == pages);

	if (!compress) {
		/* The mmap restore path: one private mapping of the file is the RAM. */
		assert_int_equal(mi.data_offset % PG, 0);
		void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd,
			       (off_t)mi.data_offset);
		assert_true(m != MAP_FAILED);
		assert_memory_equal(m, ram, size);
		memset(m, 0x5a, PG); /* copy-on-write: the image is untouched */
		munmap(m, size);
		assert_int_equal(img_verify(img, NULL), 0);
		/* Zero pages are holes: far fewer bytes written than the file's size. */
		assert_true(st.bytes_written < st.file_size - 150 * PG);
	}
	img_close(img);
	close(fd);
	free(ram);
}

static void test_round_trip_plain(void **state)
{
	round_trip(false);
}

static void test_round_trip_compressed(void **state)
{
	round_trip(true);
}

static void test_inspect_listing(void **state)
{
	const size_t pages = 16;
	uint8_t *ram = malloc(pages * PG);
	int fd = memfd();
	struct img *img;
	static const struct {
		uint32_t id;
		uint16_t version, flags;
	} want[] = {
		{ IMG_SEC_ID(IMG_SEC_VM, 0), 3, IMG_SEC_REQUIRED },
		{ IMG_SEC_ID(IMG_SEC_VCPU, 0), 1, IMG_SEC_REQUIRED },
		{ IMG_SEC_ID(IMG_SEC_VCPU, 1), 1, IMG_SEC_REQUIRED },
		{ IMG_SEC_ID(IMG_SEC_DEVICE, 7), 2, 0 },
		{ IMG_SEC_ID(IMG_SEC_MEM_DATA, 0), 1, IMG_SEC_REQUIRED | IMG_SEC_PAYLOAD_EXTERNAL },
		{ IMG_SEC_ID(IMG_SEC_MEM_MAP, 0), 1, IMG_SEC_REQUIRED },
		{ IMG_SEC_ID(IMG_SEC_DEVICE, 3), 1, IMG_SEC_REQUIRED },
	};
	char name[32];

	fill_ram(ram, pages);
	assert_int_equal(build(fd, ram, pages * PG, NULL, NULL), 0);
	assert_int_equal(img_open(&img, fd), 0);
	assert_int_equal(img_section_count(img), sizeof(want) / sizeof(want[0]));
	for (size_t i = 0; i < img_section_count(img); i++) {
		const struct img_section_info *s = img_section_at(img, i);
		assert_int_equal(s->id, want[i].id);
		assert_int_equal(s->version, want[i].version);
		assert_int_equal(s->flags, want[i].flags);
		if (i)
			assert_true(s->offset > img_section_at(img, i - 1)->offset);
	}
	assert_string_equal(img_section_name(IMG_SEC_ID(IMG_SEC_VCPU, 2), name, sizeof(name)),
			    "vcpu.2");
	assert_null(img_find_section(img, IMG_SEC_ID(IMG_SEC_VCPU, 5)));
	void *buf;
	size_t len;
	assert_int_equal(img_read_section(img, IMG_SEC_ID(IMG_SEC_VCPU, 5), &buf, &len, NULL),
			 -ENOENT);
	assert_int_equal(img_read_section(img, IMG_SEC_ID(IMG_SEC_DEVICE, 7), &buf, &len, NULL),
			 0);
	assert_int_equal(len, 0);
	free(buf);
	assert_int_equal(img_read_section(img, IMG_SEC_ID(IMG_SEC_VCPU, 1), &buf, &len, NULL), 0);
	struct dec d;
	dec_init(&d, buf, len);
	assert_int_equal(dec_u32_val(&d), 0xc0de0001);
	assert_true(dec_u64_val(&d) == 1);
	assert_int_equal(dec_error(&d), 0);
	free(buf);
	struct img_verify_stats vs;
	assert_int_equal(img_verify(img, &vs), 0);
	assert_true(vs.sections >= 8);
	img_close(img);
	close(fd);
	free(ram);
}

static uint8_t *file_bytes(int fd, size_t *len)
{
	*len = (size_t)lseek(fd, 0, SEEK_END);
	uint8_t *b = malloc(*len);
	assert_int_equal(pread(fd, b, *len, 0), (ssize_t)*len);
	return b;
}

static void put_file(int fd, const uint8_t *b, size_t len)
{
	assert_int_equal(ftruncate(fd, 0), 0);
	assert_int_equal(pwrite(fd, b, len, 0), (ssize_t)len);
}

/*
 * A small image for the exhaustive walks: one run per page, pages cycling through a single
 * non-zero byte at the end, zero, text (lz4 when compressed), random (stored raw).
 */
static uint8_t *small_image(bool compress, uint8_t *ram, size_t pages, size_t *len)
{
	struct img_write_opts o = { .compress = compress, .run_pages = 1 };
	int fd = memfd();
	static uint8_t kinds[5 * PG];
	fill_ram(kinds, 5);
	for (size_t i = 0; i < pages; i++) /* fill_ram's kinds 4, 0, 3, 2 */
		memcpy(ram + i * PG, kinds + (size_t)(i % 4 == 0 ? 4 : i % 4 == 1 ? 0 : i % 4 == 2 ? 3 : 2) * PG, PG);
	assert_int_equal(build(fd, ram, pages * PG, &o, NULL), 0);
	uint8_t *b = file_bytes(fd, len);
	close(fd);
	return b;
}

static void truncation_walk(bool compress)
{
	const size_t pages = compress ? 4 : 3;
	uint8_t ram[5 * PG];
	size_t len;
	uint8_t *img = small_image(compress, ram, pages, &len);
	int fd = memfd();

	img_set_quiet(true);
	for (size_t n = 0; n < len; n++) {
		put_file(fd, img, n);
		int err = read_all(fd, ram, pages * PG, false);
		if (err == 0)
			fail_msg("truncation to %zu of %zu bytes accepted", n, len);
		assert_true(err == -EBADMSG);
		assert_true(img_last_error()[0]);
	}
	put_file(fd, img, len);
	assert_int_equal(read_all(fd, ram, pages * PG, true), 0);
	/* The message says what happened. */
	put_file(fd, img, len / 2);
	assert_int_not_equal(read_all(fd, ram, pages * PG, false), 0);
	assert_non_null(strstr(img_last_error(), "truncated"));
	img_set_quiet(false);
	close(fd);
	free(img);
}

static void test_truncation_walk_plain(void **state)
{
	truncation_walk(false);
}

static void test_truncation_walk_compressed(void **state)
{
	truncation_walk(true);
}

static void bitflip_walk(bool compress)
{
	const size_t pages = compress ? 4 : 3;
	uint8_t ram[5 * PG];
	size_t len;
	uint8_t *img = small_image(compress, ram, pages, &len);
	int fd = memfd();

	put_file(fd, img, len);
	img_set_quiet(true);
	for (size_t i = 0; i < len; i++) {
		for (int bit = 0; bit < 8; bit++) {
			uint8_t b = img[i] ^ (uint8_t)(1u << bit);
			assert_int_equal(pwrite(fd, &b, 1, (off_t)i), 1);
			/* read_all fails the test on wrong data returned without error. */
			int err = read_all(fd, ram, pages * PG, false);
			if (err == 0)
				fail_msg("bit %d of byte %zu (of %zu) flipped: image accepted", bit,
					 i, len);
			assert_true(err == -EBADMSG || err == -ENOTSUP);
		}
		assert_int_equal(pwrite(fd, &img[i], 1, (off_t)i), 1);
	}
	img_set_quiet(false);
	assert_int_equal(read_all(fd, ram, pages * PG, true), 0);
	close(fd);
	free(img);
}

static void test_bitflip_walk_plain(void **state)
{
	bitflip_walk(false);
}

static void test_bitflip_walk_compressed(void **state)
{
	bitflip_walk(true);
}

static void test_error_messages(void **state)
{
	const size_t pages = 5;
	uint8_t ram[5 * PG];
	size_t len;
	uint8_t *img = small_image(false, ram, pages, &len);
	int fd = memfd();
	struct img *im;

	img_set_quiet(true);
	/* A flipped byte inside a data page: verify names the run. */
	put_file(fd, img, len);
	assert_int_equal(img_open(&im, fd), 0);
	struct img_mem_info mi;
	assert_int_equal(img_get_mem_info(im, &mi), 0);
	uint64_t at = mi.data_offset + 3 * PG + 100; /* page 3 is random data */
	img_close(im);
	img[at] ^= 1;
	put_file(fd, img, len);
	assert_int_equal(img_open(&im, fd), 0);
	assert_int_equal(img_verify(im, NULL), -EBADMSG);
	assert_non_null(strstr(img_last_error(), "memory run at ram page 0x3"));
	assert_non_null(strstr(img_last_error(), "crc mismatch"));
	uint8_t *dest = malloc(pages * PG);
	assert_int_equal(img_read_memory(im, dest, pages * PG, 0), -EBADMSG);
	img_close(im);
	img[at] ^= 1;

	/* A non-zero byte in a hole (page 1 is zero). */
	img[mi.data_offset + PG + 10] = 1;
	put_file(fd, img, len);
	assert_int_equal(img_open(&im, fd), 0);
	assert_int_equal(img_read_memory(im, dest, pages * PG, 0), 0); /* never read */
	assert_int_equal(img_verify(im, NULL), -EBADMSG);
	assert_non_null(strstr(img_last_error(), "zero run at ram page 0x1"));
	img_close(im);
	img[mi.data_offset + PG + 10] = 0;

	/* A corrupt section payload names the section. */
	put_file(fd, img, len);
	assert_int_equal(img_open(&im, fd), 0);
	uint64_t vo = img_find_section(im, IMG_SEC_ID(IMG_SEC_VCPU, 1))->offset;
	img_close(im);
	img[vo + IMG_FRAME_SIZE] ^= 0x80;
	put_file(fd, img, len);
	assert_int_equal(img_open(&im, fd), 0);
	void *buf;
	size_t blen;
	assert_int_equal(img_read_section(im, IMG_SEC_ID(IMG_SEC_VCPU, 1), &buf, &blen, NULL),
			 -EBADMSG);
	assert_non_null(strstr(img_last_error(), "section 'vcpu.1' (id 0x00040001): crc mismatch"));
	img_close(im);
	img[vo + IMG_FRAME_SIZE] ^= 0x80;

	/* Not an image at all. */
	put_file(fd, (const uint8_t *)"hello, world", 12);
	assert_int_equal(img_open(&im, fd), -EBADMSG);
	assert_non_null(strstr(img_last_error(), "not a vmsnap image"));
	img_set_quiet(false);
	free(dest);
	close(fd);
	free(img);
}

/* Rewrite the header of @img with @mutate applied to its bytes, and fix its crc. */
static void patch_header(uint8_t *img, void (*mutate)(uint8_t *hdr))
{
	uint32_t hlen = (uint32_t)img[12] | (uint32_t)img[13] << 8;
	mutate(img);
	uint32_t crc = crc32c(0, img, hlen - 4);
	for (int i = 0; i < 4; i++)
		img[hlen - 4 + i] = (uint8_t)(crc >> (8 * i));
}

static void set_major2(uint8_t *h)
{
	h[8] = 2;
}

static void set_minor7(uint8_t *h)
{
	h[10] = 7;
}

static void set_incompat_flag(uint8_t *h)
{
	h[18] |= 1;
}

static void test_versions(void **state)
{
	const size_t pages = 4;
	uint8_t ram[4 * PG];
	size_t len;
	uint8_t *orig = small_image(false, ram, pages, &len);
	uint8_t *img = malloc(len);
	int fd = memfd();
	struct img *im;

	img_set_quiet(true);
	memcpy(img, orig, len);
	patch_header(img, set_major2);
	put_file(fd, img, len);
	assert_int_equal(img_open(&im, fd), -ENOTSUP);
	assert_non_null(strstr(img_last_error(), "image format 2.0 is not supported"));
	assert_non_null(strstr(img_last_error(), "newer vmsnap"));

	/* A newer minor of our major loads (its additions are optional by definition). */
	memcpy(img, orig, len);
	patch_header(img, set_minor7);
	put_file(fd, img, len);
	assert_int_equal(img_open(&im, fd), 0);
	assert_int_equal(img_get_header(im)->minor, 7);
	img_close(im);

	memcpy(img, orig, len);
	patch_header(img, set_incompat_flag);
	put_file(fd, img, len);
	assert_int_equal(img_open(&im, fd), -ENOTSUP);
	img_set_quiet(false);
	close(fd);
	free(img);
	free(orig);
}

/* Header records: an unknown optional one (and fields appended to a known record by a later
 * minor) are ignored; an unknown required one is refused. */
static void test_header_records(void **state)
{
	struct img_header h, out;
	struct enc e;
	uint32_t hlen;

	make_header(&h, 8 * PG);
	enc_init(&e);
	assert_int_equal(img_header_encode(&e, &h), 0);
	assert_int_equal(img_header_decode(e.buf, e.len, &out, &hlen), 0);
	assert_int_equal(hlen, e.len);
	assert_memory_equal(&out.vm, &h.vm, sizeof(h.vm));
	assert_memory_equal(&out.cpu, &h.cpu, sizeof(h.cpu));
	assert_string_equal(out.creator, h.creator);
	assert_true(out.created_ns == h.created_ns);

	for (int required = 0; required < 2; required++) {
		struct enc x;
		enc_init(&x);
		enc_bytes(&x, e.buf, e.len - 4);
		enc_u16(&x, 0x99);
		enc_u16(&x, (uint16_t)required);
		enc_u32(&x, 3);
		enc_bytes(&x, "new", 3);
		enc_u32(&x, 0);
		uint32_t n = (uint32_t)x.len;
		for (int i = 0; i < 4; i++)
			x.buf[12 + i] = (uint8_t)(n >> (8 * i));
		uint32_t crc = crc32c(0, x.buf, n - 4);
		for (int i = 0; i < 4; i++)
			x.buf[n - 4 + i] = (uint8_t)(crc >> (8 * i));
		img_set_quiet(true);
		assert_int_equal(img_header_decode(x.buf, x.len, &out, &hlen),
				 required ? -ENOTSUP : 0);
		img_set_quiet(false);
		enc_free(&x);
	}

	/* Too long for the header as written: truncation message. */
	img_set_quiet(true);
	assert_int_equal(img_header_decode(e.buf, 100, &out, &hlen), -EBADMSG);
	assert_non_null(strstr(img_last_error(), "truncated: header says"));
	img_set_quiet(false);
	enc_free(&e);

	/* The CPU check. */
	struct img_host_cpu need, have;
	img_host_cpu_probe(&have);
	need = have;
	char msg[128];
	assert_true(img_host_cpu_compatible(&need, &have, msg, sizeof(msg)));
	for (uint32_t i = 0; i < need.ncpuid; i++)
		if (need.cpuid[i].leaf == 7 && need.cpuid[i].subleaf == 0)
			need.cpuid[i].ebx |= 1u << 30, have.cpuid[i].ebx &= ~(1u << 30);
	assert_false(img_host_cpu_compatible(&need, &have, msg, sizeof(msg)));
	assert_non_null(strstr(msg, "CPUID.7.0:EBX"));
}

static bool known_but_device9(uint32_t id, uint16_t version, void *arg)
{
	return id != IMG_SEC_ID(IMG_SEC_DEVICE, 9);
}

static void unknown_section(uint32_t id, uint16_t flags, int want_open, int want_check)
{
	uint8_t ram[4 * PG];
	struct img_header h;
	struct img_writer *w;
	struct img *im;
	int fd = memfd();

	fill_ram(ram, 4);
	make_header(&h, sizeof(ram));
	assert_int_equal(img_writer_open(&w, fd, &h), 0);
	write_sections(w);
	assert_int_equal(img_write_section(w, id, 1, flags, "future", 6), 0);
	assert_int_equal(img_write_memory(w, ram, sizeof(ram), NULL, NULL), 0);
	assert_int_equal(img_writer_finish(w, NULL), 0);
	img_writer_free(w);
	img_set_quiet(true);
	assert_int_equal(img_open(&im, fd), want_open);
	if (!want_open) {
		assert_int_equal(img_check_required(im, known_but_device9, NULL), want_check);
		assert_int_equal(img_verify(im, NULL), 0);
		uint8_t dest[4 * PG];
		assert_int_equal(img_read_memory(im, dest, sizeof(dest), 0), 0);
		assert_memory_equal(dest, ram, sizeof(ram));
		img_close(im);
	} else {
		assert_non_null(strstr(img_last_error(), "does not know"));
	}
	img_set_quiet(false);
	close(fd);
}

static void test_unknown_sections(void **state)
{
	unknown_section(IMG_SEC_ID(0x7777, 0), 0, 0, 0);		  /* optional: skipped */
	unknown_section(IMG_SEC_ID(0x7777, 0), IMG_SEC_REQUIRED, -ENOTSUP, 0); /* refused */
	unknown_section(IMG_SEC_ID(IMG_SEC_DEVICE, 9), 0, 0, 0);
	unknown_section(IMG_SEC_ID(IMG_SEC_DEVICE, 9), IMG_SEC_REQUIRED, 0, -ENOTSUP);
}

static void test_incremental(void **state)
{
	const size_t pages = 300;
	uint8_t *ram = malloc(pages * PG), *dest = malloc(pages * PG);
	uint64_t dirty[(300 + 63) / 64] = { 0 };
	uint8_t parent_sha[32];
	struct img_header h;
	struct img_writer *w;
	struct img_write_stats st;
	struct img *im;
	int fd = memfd();

	fill_ram(ram, pages);
	for (size_t i = 0; i < pages; i++)
		if (i % 7 == 0 || (i >= 128 && i < 256))
			dirty[i / 64] |= 1ull << (i % 64);
	memset(parent_sha, 0x42, sizeof(parent_sha));
	make_header(&h, pages * PG);
	h.flags = IMG_HDR_INCREMENTAL;
	assert_int_equal(img_writer_open(&w, fd, &h), 0);
	img_set_quiet(true);
	assert_int_equal(img_write_memory(w, ram, pages * PG, dirty, NULL), -EINVAL);
	img_set_quiet(false);
	assert_int_equal(img_write_parent(w, parent_sha, "/images/base.vmsnap"), 0);
	assert_int_equal(img_write_memory(w, ram, pages * PG, dirty, NULL), 0);
	assert_int_equal(img_writer_finish(w, &st), 0);
	img_writer_free(w);
	size_t ndirty = 0;
	for (size_t i = 0; i < pages; i++)
		ndirty += dirty[i / 64] >> (i % 64) & 1;
	assert_int_equal(st.pages_parent, pages - ndirty);

	assert_int_equal(img_open(&im, fd), 0);
	uint8_t sha[32];
	const char *path;
	assert_int_equal(img_get_parent(im, sha, &path), 0);
	assert_memory_equal(sha, parent_sha, 32);
	assert_string_equal(path, "/images/base.vmsnap");
	/* Parent pages are left as the parent's restore put them. */
	memset(dest, 0xee, pages * PG);
	assert_int_equal(img_read_memory(im, dest, pages * PG, 0), 0);
	for (size_t i = 0; i < pages; i++) {
		bool d = dirty[i / 64] >> (i % 64) & 1;
		if (d)
			assert_memory_equal(dest + i * PG, ram + i * PG, PG);
		else
			assert_true(dest[i * PG] == 0xee && dest[i * PG + PG - 1] == 0xee);
	}
	assert_int_equal(img_verify(im, NULL), 0);
	img_close(im);
	close(fd);
	free(ram);
	free(dest);
}

/*
 * One image three ways: hashed as written, hashed from the file at finish (defer), and hashed
 * behind the writes with the memory released right after img_write_memory() and scribbled
 * over before finish (what a save does when the guest resumes): the same bytes, the same
 * SHA-256, and verify finds the last one sound.
 */
static void test_hash_modes(void **state)
{
	(void)state;
	const size_t pages = 8192; /* 32 MiB: long enough that the hasher is still busy */
	uint8_t *ram = malloc(pages * PG);
	assert_non_null(ram);
	fill_ram(ram, pages);
	uint8_t sha[3][32];
	struct img_header h;
	make_header(&h, pages * PG);
	for (int mode = 0; mode < 3; mode++) {
		struct img_writer *w;
		struct img_write_stats st;
		int fd = memfd();
		assert_int_equal(img_writer_open(&w, fd, &h), 0);
		if (mode == 1)
			img_writer_defer_hash(w);
		if (mode == 2)
			img_writer_hash_behind(w);
		assert_int_equal(img_write_section(w, IMG_SEC_ID(IMG_SEC_VM, 0), 1,
						   IMG_SEC_REQUIRED, "state", 5), 0);
		assert_int_equal(img_write_memory(w, ram, pages * PG, NULL, NULL), 0);
		uint8_t *saved = NULL;
		if (mode == 2) {
			img_writer_release_memory(w);
			saved = malloc(pages * PG);
			memcpy(saved, ram, pages * PG);
			memset(ram, 0x5a, pages * PG); /* the "guest" writes everywhere */
		}
		assert_int_equal(img_write_section(w, IMG_SEC_ID(IMG_SEC_DEVICE, 3), 1,
						   IMG_SEC_REQUIRED, "dev", 3), 0);
		assert_int_equal(img_writer_finish(w, &st), 0);
		img_writer_free(w);
		memcpy(sha[mode], st.sha256, 32);
		if (saved) {
			memcpy(ram, saved, pages * PG);
			free(saved);
		}
		struct img *im;
		assert_int_equal(img_open(&im, fd), 0);
		assert_int_equal(img_verify(im, NULL), 0);
		img_close(im);
		close(fd);
	}
	assert_memory_equal(sha[0], sha[1], 32);
	assert_memory_equal(sha[0], sha[2], 32);
	free(ram);
}

static void test_writer_misuse(void **state)
{
	uint8_t ram[2 * PG] = { 0 };
	struct img_header h;
	struct img_writer *w;
	int fd = memfd();

	make_header(&h, sizeof(ram));
	assert_int_equal(img_writer_open(&w, fd, &h), 0);
	img_set_quiet(true);
	assert_int_equal(img_write_section(w, IMG_SEC_ID(IMG_SEC_MEM_MAP, 0), 1, 0, "x", 1),
			 -EINVAL);
	assert_int_equal(img_write_section(w, IMG_SEC_ID(IMG_SEC_VM, 0), 1, 0, "x", 1), 0);
	assert_int_equal(img_write_section(w, IMG_SEC_ID(IMG_SEC_VM, 0), 1, 0, "x", 1), -EEXIST);
	assert_int_equal(img_write_memory(w, ram, PG, NULL, NULL), -EINVAL);
	assert_int_equal(img_write_memory(w, ram, sizeof(ram), NULL, NULL), 0);
	assert_int_equal(img_write_memory(w, ram, sizeof(ram), NULL, NULL), -EINVAL);
	struct enc e;
	enc_init(&e);
	e.err = -ENOMEM;
	assert_int_equal(img_write_section_enc(w, IMG_SEC_ID(IMG_SEC_VCPU, 0), 1, 0, &e), -ENOMEM);
	img_set_quiet(false);
	assert_int_equal(img_writer_finish(w, NULL), 0);
	img_writer_free(w);

	/* An all-zero RAM is all holes and still verifies. */
	struct img *im;
	assert_int_equal(img_open(&im, fd), 0);
	struct img_mem_info mi;
	assert_int_equal(img_get_mem_info(im, &mi), 0);
	assert_true(mi.pages_zero == 2 && mi.nruns == 1);
	assert_int_equal(img_verify(im, NULL), 0);
	img_close(im);

	/* Bad config is refused by the writer. */
	h.vm.ram_size = PG + 1;
	img_set_quiet(true);
	assert_int_equal(img_writer_open(&w, fd, &h), -EINVAL);
	img_set_quiet(false);
	close(fd);

	/* A full disk is a clear error. */
	int full = open("/dev/full", O_WRONLY);
	if (full >= 0) {
		make_header(&h, sizeof(ram));
		img_set_quiet(true);
		int err = img_writer_open(&w, full, &h);
		if (!err) {
			err = img_write_memory(w, ram, sizeof(ram), NULL, NULL);
			if (!err)
				err = img_writer_finish(w, NULL);
			img_writer_free(w);
		}
		img_set_quiet(false);
		assert_true(err < 0);
		close(full);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip_plain),
		cmocka_unit_test(test_round_trip_compressed),
		cmocka_unit_test(test_inspect_listing),
		cmocka_unit_test(test_header_records),
		cmocka_unit_test(test_versions),
		cmocka_unit_test(test_unknown_sections),
		cmocka_unit_test(test_incremental),
		cmocka_unit_test(test_writer_misuse),
		cmocka_unit_test(test_error_messages),
		cmocka_unit_test(test_hash_modes),
		cmocka_unit_test(test_truncation_walk_plain),
		cmocka_unit_test(test_truncation_walk_compressed),
		cmocka_unit_test(test_bitflip_walk_compressed),
		cmocka_unit_test(test_bitflip_walk_plain),
	};
	if (getenv("TEST_FILTER")) /* e.g. TEST_FILTER='*bitflip*' */
		cmocka_set_test_filter(getenv("TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
