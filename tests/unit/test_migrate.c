/* SPDX-License-Identifier: MIT */
/* Migration stream records (migrate/stream.h): round trips, bounds, CRCs, page runs. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include <cmocka.h>

#include "formats/crc32c.h"
#include "migrate/stream.h"

#define PAGES 32u

struct src {
	const uint8_t *p;
	size_t len, pos;
	size_t max_read; /* largest single read asked for */
};

static int buf_read(void *arg, void *buf, size_t len)
{
	struct src *s = arg;
	if (len > s->max_read)
		s->max_read = len;
	if (len > s->len - s->pos)
		return -EPIPE;
	memcpy(buf, s->p + s->pos, len);
	s->pos += len;
	return 0;
}

static int read_one(const struct enc *e, struct mig_record *rec, struct mig_reader *rd,
		    struct src *s)
{
	char err[512];
	*s = (struct src){ e->buf, e->len, 0, 0 };
	mig_reader_init(rd, buf_read, s);
	return mig_read_record(rd, rec, err, sizeof(err));
}

static void test_hello_roundtrip(void **state)
{
	(void)state;
	struct mig_hello *h = calloc(1, sizeof(*h)), *g = calloc(1, sizeof(*g));
	h->major = MIG_PROTO_MAJOR;
	h->minor = 0;
	h->caps = MIG_CAP_LZ4;
	img_host_cpu_probe(&h->hdr.cpu);
	h->hdr.tsc_khz = 2596000;
	h->hdr.vm.ram_size = 256ull << 20;
	h->hdr.vm.vcpus = 4;
	h->hdr.vm.nregions = 1;
	h->hdr.vm.regions[0].size = 256ull << 20;
	snprintf(h->hdr.vm.cpu_template, sizeof(h->hdr.vm.cpu_template), "host");
	h->ndevices = 2;
	h->devices[0] = (struct mig_device_desc){ 1, 2, "uart-com1" };
	h->devices[1] = (struct mig_device_desc){ 2, 1, "i8042" };
	struct enc e, pe;
	enc_init(&e);
	enc_init(&pe);
	assert_int_equal(mig_hello_encode(&pe, h), 0);
	mig_put_record(&e, IMG_SEC_ID(MIG_REC_HELLO, 0), 1, IMG_SEC_REQUIRED, pe.buf, pe.len);
	struct mig_record rec;
	struct mig_reader rd;
	struct src s;
	assert_int_equal(read_one(&e, &rec, &rd, &s), 0);
	char err[512];
	assert_int_equal(mig_hello_decode(rec.payload, rec.len, g, err, sizeof(err)), 0);
	assert_int_equal(g->caps, MIG_CAP_LZ4);
	assert_int_equal(g->hdr.vm.vcpus, 4);
	assert_int_equal(g->hdr.vm.ram_size, 256ull << 20);
	assert_int_equal(g->hdr.tsc_khz, 2596000);
	assert_int_equal(g->ndevices, 2);
	assert_string_equal(g->devices[1].name, "i8042");
	assert_true(img_host_cpu_compatible(&g->hdr.cpu, &h->hdr.cpu, NULL, 0));

	/* A newer major is refused with a message naming both versions. */
	pe.buf[0] = 2;
	assert_int_equal(mig_hello_decode(pe.buf, pe.len, g, err, sizeof(err)), -ENOTSUP);
	assert_non_null(strstr(err, "protocol 2.0"));
	/* Truncations never pass. */
	pe.buf[0] = 1;
	for (size_t n = 0; n < pe.len; n += 7)
		assert_int_not_equal(mig_hello_decode(pe.buf, n, g, err, sizeof(err)), 0);
	mig_reader_free(&rd);
	enc_free(&e);
	enc_free(&pe);
	free(h);
	free(g);
}

static void test_record_crc_and_bounds(void **state)
{
	(void)state;
	struct enc e;
	struct mig_record rec;
	struct mig_reader rd;
	struct src s;
	uint8_t payload[100];
	memset(payload, 0xab, sizeof(payload));
	enc_init(&e);
	mig_put_record(&e, IMG_SEC_ID(IMG_SEC_VCPU, 3), 1, IMG_SEC_REQUIRED, payload,
		       sizeof(payload));
	assert_int_equal(read_one(&e, &rec, &rd, &s), 0);
	assert_int_equal(rec.len, sizeof(payload));
	assert_int_equal(IMG_SEC_INST(rec.f.id), 3);
	mig_reader_free(&rd);
	/* Any flipped payload byte fails the CRC. */
	e.buf[IMG_FRAME_SIZE + 50] ^= 1;
	assert_int_equal(read_one(&e, &rec, &rd, &s), -EBADMSG);
	mig_reader_free(&rd);
	e.buf[IMG_FRAME_SIZE + 50] ^= 1;
	/* A control record claiming 1 GiB is refused before its payload is read. */
	enc_reset(&e);
	mig_put_record(&e, IMG_SEC_ID(MIG_REC_END, 0), 1, IMG_SEC_REQUIRED, payload, 16);
	e.buf[8] = 0;
	e.buf[11] = 0x40; /* length = 1 GiB */
	assert_int_equal(read_one(&e, &rec, &rd, &s), -EBADMSG);
	assert_true(s.max_read <= IMG_FRAME_SIZE);
	mig_reader_free(&rd);
	/* Unknown required type: -ENOTSUP; unknown optional: returned for skipping. */
	enc_reset(&e);
	mig_put_record(&e, IMG_SEC_ID(0x7777, 0), 1, IMG_SEC_REQUIRED, payload, 8);
	assert_int_equal(read_one(&e, &rec, &rd, &s), -ENOTSUP);
	mig_reader_free(&rd);
	enc_reset(&e);
	mig_put_record(&e, IMG_SEC_ID(0x7777, 0), 1, 0, payload, 8);
	assert_int_equal(read_one(&e, &rec, &rd, &s), 0);
	mig_reader_free(&rd);
	/* A newer version of a stream record: -ENOTSUP. */
	enc_reset(&e);
	mig_put_record(&e, IMG_SEC_ID(MIG_REC_END, 0), 2, IMG_SEC_REQUIRED, payload, 20);
	assert_int_equal(read_one(&e, &rec, &rd, &s), -ENOTSUP);
	mig_reader_free(&rd);
	/* Truncated stream: -EPIPE. */
	enc_reset(&e);
	mig_put_record(&e, IMG_SEC_ID(MIG_REC_END, 0), 1, IMG_SEC_REQUIRED, payload, 20);
	e.len -= 3;
	assert_int_equal(read_one(&e, &rec, &rd, &s), -EPIPE);
	mig_reader_free(&rd);
	enc_free(&e);
}

static void test_runs(void **state)
{
	(void)state;
	uint8_t *src = calloc(PAGES, IMG_PAGE_SIZE), *ram = calloc(PAGES, IMG_PAGE_SIZE);
	uint8_t *scratch = malloc(img_lz4_bound(8));
	struct img_run r = { 0 };
	for (size_t i = 0; i < 4 * IMG_PAGE_SIZE; i++)
		src[i] = (uint8_t)(i % 13);
	for (size_t i = 4 * IMG_PAGE_SIZE; i < 8 * IMG_PAGE_SIZE; i++)
		src[i] = (uint8_t)((i * 2654435761u) >> 11);
	memset(ram + 20 * IMG_PAGE_SIZE, 0x55, IMG_PAGE_SIZE); /* stale page to be zeroed */
	struct enc e;
	enc_init(&e);
	const void *stored;
	img_pack_run(src, 4, true, scratch, &r, &stored);
	assert_int_equal(r.kind, IMG_RUN_LZ4);
	r.page = 0;
	mig_put_run(&e, 1, &r, stored);
	img_pack_run(src + 4 * IMG_PAGE_SIZE, 4, false, scratch, &r, &stored);
	assert_int_equal(r.kind, IMG_RUN_DATA);
	r.page = 4;
	mig_put_run(&e, 1, &r, stored);
	r = (struct img_run){ .page = 20, .npages = 1, .kind = IMG_RUN_ZERO };
	mig_put_run(&e, 1, &r, NULL);

	struct src s = { e.buf, e.len, 0, 0 };
	struct mig_reader rd;
	struct mig_record rec;
	char err[512];
	mig_reader_init(&rd, buf_read, &s);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(mig_read_record(&rd, &rec, err, sizeof(err)), 0);
		assert_int_equal(IMG_SEC_TYPE(rec.f.id), MIG_REC_RUN);
		assert_int_equal(mig_run_apply(&rec, ram, PAGES, false, &r, err, sizeof(err)), 0);
	}
	assert_memory_equal(ram, src, 8 * IMG_PAGE_SIZE);
	assert_int_equal(ram[20 * IMG_PAGE_SIZE], 0);
	mig_reader_free(&rd);

	/* Corrupt stored bytes: caught by the run's CRC (the record CRC covers frame + run). */
	e.buf[IMG_FRAME_SIZE + IMG_RUN_SIZE + 10] ^= 0x80;
	s = (struct src){ e.buf, e.len, 0, 0 };
	mig_reader_init(&rd, buf_read, &s);
	assert_int_equal(mig_read_record(&rd, &rec, err, sizeof(err)), 0);
	assert_int_equal(mig_run_apply(&rec, ram, PAGES, false, &r, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "CRC"));
	/* A run outside RAM is refused. */
	assert_int_equal(mig_run_apply(&rec, ram, 2, false, &r, err, sizeof(err)), -EBADMSG);
	mig_reader_free(&rd);
	enc_free(&e);
	free(src);
	free(ram);
	free(scratch);
}

/* DATA runs as the source sends them (copied once into the stream) and as the destination
 * reads them (straight into RAM): the bytes land, a flipped byte is caught by the run's CRC
 * in mig_read_record(), and a run outside RAM takes the buffered path and is refused. */
static void test_runs_in_ram(void **state)
{
	(void)state;
	uint8_t *src = calloc(PAGES, IMG_PAGE_SIZE), *ram = calloc(PAGES, IMG_PAGE_SIZE);
	for (size_t i = 0; i < 6 * IMG_PAGE_SIZE; i++)
		src[i] = (uint8_t)((i * 2654435761u) >> 9);
	struct enc e;
	enc_init(&e);
	mig_put_data_run(&e, 2, 10, 6, src);
	mig_put_data_run(&e, 2, PAGES - 1, 2, src); /* one page past the end of RAM */
	assert_int_equal(enc_error(&e), 0);

	struct src s = { e.buf, e.len, 0, 0 };
	struct mig_reader rd;
	struct mig_record rec;
	struct img_run r;
	char err[512];
	mig_reader_init(&rd, buf_read, &s);
	mig_reader_set_ram(&rd, ram, PAGES, -1);
	assert_int_equal(mig_read_record(&rd, &rec, err, sizeof(err)), 0);
	assert_true(rec.in_ram);
	assert_int_equal(IMG_SEC_INST(rec.f.id), 2);
	assert_int_equal(mig_run_apply(&rec, ram, PAGES, false, &r, err, sizeof(err)), 0);
	assert_int_equal(r.page, 10);
	assert_int_equal(r.npages, 6);
	assert_memory_equal(ram + 10 * IMG_PAGE_SIZE, src, 6 * IMG_PAGE_SIZE);
	assert_int_equal(mig_read_record(&rd, &rec, err, sizeof(err)), 0);
	assert_false(rec.in_ram);
	assert_int_equal(mig_run_apply(&rec, ram, PAGES, false, &r, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "outside RAM"));
	mig_reader_free(&rd);

	/* The same into a memfd, as a destination with memfd RAM reads: through pwrite(). */
	int fd = memfd_create("test_migrate", MFD_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)PAGES * IMG_PAGE_SIZE), 0);
	uint8_t *shared = mmap(NULL, (size_t)PAGES * IMG_PAGE_SIZE, PROT_READ | PROT_WRITE,
			       MAP_SHARED, fd, 0);
	assert_true(shared != MAP_FAILED);
	s = (struct src){ e.buf, e.len, 0, 0 };
	mig_reader_init(&rd, buf_read, &s);
	mig_reader_set_ram(&rd, shared, PAGES, fd);
	assert_int_equal(mig_read_record(&rd, &rec, err, sizeof(err)), 0);
	assert_true(rec.in_ram);
	assert_memory_equal(shared + 10 * IMG_PAGE_SIZE, src, 6 * IMG_PAGE_SIZE);
	assert_int_equal(shared[9 * IMG_PAGE_SIZE], 0);
	assert_int_equal(shared[16 * IMG_PAGE_SIZE], 0);
	mig_reader_free(&rd);
	munmap(shared, (size_t)PAGES * IMG_PAGE_SIZE);
	close(fd);

	/* A flipped stored byte: refused by the read itself, naming the pages. */
	memset(ram, 0, (size_t)PAGES * IMG_PAGE_SIZE);
	e.buf[IMG_FRAME_SIZE + IMG_RUN_SIZE + 4096 + 7] ^= 0x01;
	s = (struct src){ e.buf, e.len, 0, 0 };
	mig_reader_init(&rd, buf_read, &s);
	mig_reader_set_ram(&rd, ram, PAGES, -1);
	assert_int_equal(mig_read_record(&rd, &rec, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "pages 10+6: CRC mismatch"));
	mig_reader_free(&rd);
	enc_free(&e);
	free(src);
	free(ram);
}

static void test_replies(void **state)
{
	(void)state;
	struct enc e;
	struct mig_reply r = { .major = 1, .caps = 1, .status = 0 }, g;
	char err[256];
	snprintf(r.msg, sizeof(r.msg), "ok\nwith a newline");
	enc_init(&e);
	mig_reply_encode(&e, MIG_REC_WELCOME, &r);
	assert_int_equal(mig_reply_decode(MIG_REC_WELCOME, e.buf, e.len, &g, err, sizeof(err)), 0);
	assert_int_equal(g.caps, 1);
	assert_null(strchr(g.msg, '\n')); /* sanitised for logs */
	enc_reset(&e);
	r.status = 95;
	r.value = 1234;
	mig_reply_encode(&e, MIG_REC_CONFIRM, &r);
	assert_int_equal(mig_reply_decode(MIG_REC_CONFIRM, e.buf, e.len, &g, err, sizeof(err)), 0);
	assert_int_equal(g.value, 1234);
	assert_int_equal(g.status, 95);
	assert_int_equal(mig_reply_decode(MIG_REC_CONFIRM, e.buf, 5, &g, err, sizeof(err)),
			 -EBADMSG);
	enc_free(&e);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hello_roundtrip),
		cmocka_unit_test(test_record_crc_and_bounds),
		cmocka_unit_test(test_runs),
		cmocka_unit_test(test_runs_in_ram),
		cmocka_unit_test(test_replies),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
