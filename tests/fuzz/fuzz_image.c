/* SPDX-License-Identifier: MIT */
/*
 * Image reader fuzz target: bytes -> img_open, list, fetch every section, read memory into a
 * bounded buffer, verify. Must never crash, hang or allocate without bound. Seeds in
 * tests/fuzz/corpus/fuzz_image/ are small valid images (see gen_seeds() below: run this
 * binary with FUZZ_IMAGE_GEN_SEEDS=DIR to regenerate them).
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "formats/image.h"

#define RAM_LIMIT (64u << 20)

static int fd = -1;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void gen_seed(const char *dir, const char *name, uint64_t pages, bool compress,
		     bool incremental)
{
	struct img_header h;
	struct img_writer *w;
	uint8_t *ram = calloc(pages, IMG_PAGE_SIZE);
	uint64_t dirty[4] = { 0x5555555555555555ull, 0x5555555555555555ull, ~0ull, ~0ull };
	char path[4096];

	for (uint64_t i = 0; i < pages; i++) {
		uint8_t *p = ram + i * IMG_PAGE_SIZE;
		if (i % 3 == 1)
			for (size_t j = 0; j < IMG_PAGE_SIZE; j++)
				p[j] = (uint8_t)(j * 7 + i);
		else if (i % 3 == 2)
			p[i % IMG_PAGE_SIZE] = 1;
	}
	memset(&h, 0, sizeof(h));
	strcpy(h.creator, "vmsnap 0.1.0");
	h.vm.ram_size = pages * IMG_PAGE_SIZE;
	h.vm.vcpus = 2;
	h.vm.nregions = 1;
	h.vm.regions[0].size = h.vm.ram_size;
	h.cpu.ncpuid = 1;
	h.cpu.cpuid[0] = (struct img_cpuid_entry){ 1, 0, 0x806f8, 0, 0x7ffefbff, 0xbfebfbff };
	strcpy(h.cpu.vendor, "GenuineIntel");
	strcpy(h.vm.cmdline, "console=ttyS0");
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int out = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (out < 0 || img_writer_open(&w, out, &h)) {
		perror(path);
		exit(1);
	}
	img_write_section(w, IMG_SEC_ID(IMG_SEC_VM, 0), 1, IMG_SEC_REQUIRED, "vm", 2);
	img_write_section(w, IMG_SEC_ID(IMG_SEC_VCPU, 0), 1, IMG_SEC_REQUIRED, "cpu0", 4);
	img_write_section(w, IMG_SEC_ID(IMG_SEC_VCPU, 1), 1, IMG_SEC_REQUIRED, "cpu1", 4);
	img_write_section(w, IMG_SEC_ID(IMG_SEC_DEVICE, 1), 2, 0, "uart", 4);
	if (incremental)
		img_write_parent(w, (const uint8_t *)"0123456789abcdef0123456789abcdef",
				 "base.img");
	struct img_write_opts o = { .compress = compress, .run_pages = 2 };
	int err = img_write_memory(w, ram, h.vm.ram_size, incremental ? dirty : NULL, &o);
	if (!err)
		err = img_writer_finish(w, NULL);
	img_writer_free(w);
	close(out);
	free(ram);
	if (err)
		exit(1);
}

__attribute__((constructor)) static void maybe_gen_seeds(void)
{
	const char *dir = getenv("FUZZ_IMAGE_GEN_SEEDS");
	if (!dir)
		return;
	gen_seed(dir, "plain-8p.img", 8, false, false);
	gen_seed(dir, "lz4-12p.img", 12, true, false);
	gen_seed(dir, "incr-plain-6p.img", 6, false, true);
	gen_seed(dir, "incr-lz4-10p.img", 10, true, true);
	exit(0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct img *img;

	if (fd < 0) {
		fd = memfd_create("fuzz_image", 0);
		if (fd < 0)
			abort();
		img_set_quiet(true);
	}
	if (ftruncate(fd, 0) || (size && pwrite(fd, data, size, 0) != (ssize_t)size))
		abort();
	if (img_open(&img, fd))
		return 0;
	for (size_t i = 0; i < img_section_count(img); i++) {
		const struct img_section_info *s = img_section_at(img, i);
		void *buf;
		size_t len;
		if (s->flags & IMG_SEC_PAYLOAD_EXTERNAL)
			continue;
		if (!img_read_section(img, s->id, &buf, &len, NULL))
			free(buf);
	}
	uint64_t ram = img_get_header(img)->vm.ram_size;
	struct img_mem_info mi;
	if (!img_get_mem_info(img, &mi) && ram <= RAM_LIMIT) {
		/* A fresh anonymous mapping: zero pages cost nothing until touched. */
		void *dest = mmap(NULL, ram, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				  -1, 0);
		if (dest != MAP_FAILED) {
			img_read_memory(img, dest, ram, IMG_READ_DEST_ZEROED);
			munmap(dest, ram);
		}
	}
	img_verify(img, NULL);
	img_close(img);
	return 0;
}
