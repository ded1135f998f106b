/* SPDX-License-Identifier: MIT */
/*
 * Migration stream reader fuzz target: bytes -> magic check, then records through
 * mig_read_record() and the destination's payload decoders (hello, replies, end, page runs
 * applied to a small RAM). Must never crash, hang or allocate without bound (every record is
 * bounded by its type before its payload is read). Seeds in tests/fuzz/corpus/fuzz_migrate/
 * are small valid streams: run this binary with FUZZ_MIGRATE_GEN_SEEDS=DIR to regenerate them.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migrate/stream.h"

#define RAM_PAGES 64u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct src {
	const uint8_t *p;
	size_t len, pos;
};

static int buf_read(void *arg, void *buf, size_t len)
{
	struct src *s = arg;
	if (len > s->len - s->pos)
		return -EPIPE;
	memcpy(buf, s->p + s->pos, len);
	s->pos += len;
	return 0;
}

static uint8_t *ram;

static void gen_seeds(const char *dir)
{
	uint8_t *pages = calloc(8, IMG_PAGE_SIZE), *scratch = malloc(img_lz4_bound(8));
	for (unsigned int i = 0; i < 4 * IMG_PAGE_SIZE; i++)
		pages[i] = (uint8_t)(i % 7); /* compressible */
	for (unsigned int i = 4 * IMG_PAGE_SIZE; i < 6 * IMG_PAGE_SIZE; i++)
		pages[i] = (uint8_t)(i * 2654435761u >> 13); /* not */
	for (int variant = 0; variant < 2; variant++) {
		struct enc e, pe;
		enc_init(&e);
		enc_init(&pe);
		enc_bytes(&e, MIG_MAGIC, MIG_MAGIC_LEN);
		struct mig_hello *h = calloc(1, sizeof(*h));
		h->major = MIG_PROTO_MAJOR;
		h->caps = MIG_CAP_LZ4;
		snprintf(h->hdr.creator, sizeof(h->hdr.creator), "vmsnap seed");
		h->hdr.vm.ram_size = RAM_PAGES * IMG_PAGE_SIZE;
		h->hdr.vm.vcpus = 1;
		h->hdr.vm.nregions = 1;
		h->hdr.vm.regions[0].size = RAM_PAGES * IMG_PAGE_SIZE;
		h->ndevices = 1;
		h->devices[0] = (struct mig_device_desc){ 1, 1, "uart-com1" };
		mig_hello_encode(&pe, h);
		free(h);
		mig_put_record(&e, IMG_SEC_ID(MIG_REC_HELLO, 0), 1, IMG_SEC_REQUIRED, pe.buf, pe.len);
		struct img_run r = { .page = 0, .npages = 2, .kind = IMG_RUN_ZERO };
		mig_put_run(&e, 0, &r, NULL);
		const void *stored;
		img_pack_run(pages, 4, variant == 1, scratch, &r, &stored);
		r.page = 2;
		mig_put_run(&e, 0, &r, stored);
		img_pack_run(pages + 4 * IMG_PAGE_SIZE, 2, true, scratch, &r, &stored);
		r.page = 10;
		mig_put_run(&e, 1, &r, stored);
		enc_reset(&pe);
		enc_u32(&pe, 0);
		enc_u64(&pe, 8);
		mig_put_record(&e, IMG_SEC_ID(MIG_REC_ROUND, 0), 1, 0, pe.buf, pe.len);
		uint8_t state[40] = { 1, 2, 3 };
		mig_put_record(&e, IMG_SEC_ID(IMG_SEC_DEVICE, 1), 1, IMG_SEC_REQUIRED, state,
			       sizeof(state));
		struct mig_end end = { 1, 1, 2, 8 };
		enc_reset(&pe);
		mig_end_encode(&pe, &end);
		mig_put_record(&e, IMG_SEC_ID(MIG_REC_END, 0), 1, IMG_SEC_REQUIRED, pe.buf, pe.len);
		struct mig_reply rep = { .status = 0, .value = 42 };
		snprintf(rep.msg, sizeof(rep.msg), "running");
		enc_reset(&pe);
		mig_reply_encode(&pe, MIG_REC_CONFIRM, &rep);
		mig_put_record(&e, IMG_SEC_ID(MIG_REC_CONFIRM, 0), 1, IMG_SEC_REQUIRED, pe.buf,
			       pe.len);
		char path[4096];
		snprintf(path, sizeof(path), "%s/stream-%s", dir, variant ? "lz4" : "raw");
		FILE *f = fopen(path, "wb");
		if (f) {
			fwrite(e.buf, 1, e.len, f);
			fclose(f);
		}
		enc_free(&e);
		enc_free(&pe);
	}
	free(pages);
	free(scratch);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool init;
	if (!init) {
		init = true;
		img_set_quiet(true);
		const char *dir = getenv("FUZZ_MIGRATE_GEN_SEEDS");
		if (dir)
			gen_seeds(dir);
		ram = calloc(RAM_PAGES, IMG_PAGE_SIZE);
	}
	if (size < MIG_MAGIC_LEN || memcmp(data, MIG_MAGIC, MIG_MAGIC_LEN))
		return 0;
	struct src s = { data, size, MIG_MAGIC_LEN };
	struct mig_reader rd;
	mig_reader_init(&rd, buf_read, &s);
	/* As the destination reads: DATA runs straight into RAM (one input in two, by a byte
	 * the stream never depends on, so the buffered path is fuzzed too). */
	if (size > MIG_MAGIC_LEN && data[size - 1] & 1)
		mig_reader_set_ram(&rd, ram, RAM_PAGES, -1);
	char err[512];
	struct mig_hello *h = malloc(sizeof(*h));
	for (int n = 0; n < 10000; n++) {
		struct mig_record rec;
		if (mig_read_record(&rd, &rec, err, sizeof(err)))
			break;
		uint32_t type = IMG_SEC_TYPE(rec.f.id);
		struct mig_reply rep;
		struct mig_end end;
		struct img_run run;
		switch (type) {
		case MIG_REC_HELLO: mig_hello_decode(rec.payload, rec.len, h, err, sizeof(err)); break;
		case MIG_REC_WELCOME:
		case MIG_REC_CONFIRM:
		case MIG_REC_ERROR:
			mig_reply_decode(type, rec.payload, rec.len, &rep, err, sizeof(err));
			break;
		case MIG_REC_END: mig_end_decode(rec.payload, rec.len, &end, err, sizeof(err)); break;
		case MIG_REC_RUN:
			mig_run_apply(&rec, ram, RAM_PAGES, false, &run, err, sizeof(err));
			break;
		default: break;
		}
	}
	free(h);
	mig_reader_free(&rd);
	return 0;
}
