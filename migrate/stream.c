/* SPDX-License-Identifier: MIT */
/* Migration stream records: framing, bounds, CRCs, payload codecs (migrate/stream.h). */
#include "migrate/stream.h"

#include <errno.h>
#include <lz4.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/crc32c.h"

#define ERR(...) (snprintf(err, errlen, __VA_ARGS__))

const char *mig_record_name(uint32_t id, char *buf, size_t size)
{
	switch (IMG_SEC_TYPE(id)) {
	case MIG_REC_HELLO: snprintf(buf, size, "hello"); break;
	case MIG_REC_WELCOME: snprintf(buf, size, "welcome"); break;
	case MIG_REC_RUN: snprintf(buf, size, "run"); break;
	case MIG_REC_ROUND: snprintf(buf, size, "round-end"); break;
	case MIG_REC_END: snprintf(buf, size, "end"); break;
	case MIG_REC_CONFIRM: snprintf(buf, size, "confirm"); break;
	case MIG_REC_ERROR: snprintf(buf, size, "error"); break;
	case MIG_REC_ACK: snprintf(buf, size, "ack"); break;
	case MIG_REC_DRAIN: snprintf(buf, size, "drain"); break;
	case MIG_REC_DRAINED: snprintf(buf, size, "drained"); break;
	default: img_section_name(id, buf, size); break;
	}
	return buf;
}

/* Bound on the payload of a type, and the newest version of it this build reads (0: unknown). */
static void type_limits(uint32_t type, uint64_t *max, uint16_t *maxver)
{
	*maxver = 1;
	switch (type) {
	case MIG_REC_HELLO:
	case MIG_REC_WELCOME:
	case MIG_REC_ROUND:
	case MIG_REC_END:
	case MIG_REC_CONFIRM:
	case MIG_REC_ERROR:
	case MIG_REC_ACK:
	case MIG_REC_DRAIN:
	case MIG_REC_DRAINED: *max = MIG_MAX_CONTROL; break;
	case MIG_REC_RUN: *max = MIG_MAX_RUN; break;
	/* State payloads: their loaders (vmm/) check their own versions. */
	case IMG_SEC_VM:
	case IMG_SEC_VCPU:
	case IMG_SEC_DEVICE:
		*max = MIG_MAX_STATE;
		*maxver = UINT16_MAX;
		break;
	default:
		*max = MIG_MAX_STATE; /* an optional record we skip */
		*maxver = 0;
		break;
	}
}

void mig_reader_init(struct mig_reader *rd, mig_read_fn read, void *arg)
{
	memset(rd, 0, sizeof(*rd));
	rd->read = read;
	rd->arg = arg;
}

void mig_reader_set_ram(struct mig_reader *rd, uint8_t *ram, uint64_t ram_pages, int ram_fd)
{
	rd->ram = ram;
	rd->ram_pages = ram_pages;
	rd->ram_fd = ram_fd;
}

void mig_reader_free(struct mig_reader *rd)
{
	free(rd->buf);
	rd->buf = NULL;
	rd->cap = 0;
}

int mig_read_record(struct mig_reader *rd, struct mig_record *rec, char *err, size_t errlen)
{
	uint8_t frame[IMG_FRAME_SIZE], crcb[IMG_CRC_SIZE];
	char name[40];
	int r = rd->read(rd->arg, frame, sizeof(frame));
	if (r) {
		ERR("%s after record %llu", r == -EPIPE ? "connection closed" : strerror(-r),
		    (unsigned long long)rd->records);
		return r;
	}
	img_frame_decode(frame, &rec->f);
	uint32_t type = IMG_SEC_TYPE(rec->f.id);
	uint64_t max;
	uint16_t maxver;
	type_limits(type, &max, &maxver);
	mig_record_name(rec->f.id, name, sizeof(name));
	if (rec->f.length > max) {
		ERR("record %llu (%s): length %llu exceeds the limit of %llu bytes",
		    (unsigned long long)rd->records, name, (unsigned long long)rec->f.length,
		    (unsigned long long)max);
		return -EBADMSG;
	}
	bool external = rec->f.flags & IMG_SEC_PAYLOAD_EXTERNAL;
	if (rec->f.flags & ~(IMG_SEC_REQUIRED | IMG_SEC_PAYLOAD_EXTERNAL) ||
	    external != (type == MIG_REC_RUN) || (external && rec->f.length < IMG_RUN_SIZE)) {
		ERR("record %llu (%s): bad flags 0x%x or length %llu",
		    (unsigned long long)rd->records, name, rec->f.flags,
		    (unsigned long long)rec->f.length);
		return -EBADMSG;
	}
	if (rec->f.length > rd->cap) {
		size_t cap = rd->cap ? rd->cap : 64 * 1024;
		while (cap < rec->f.length)
			cap *= 2;
		uint8_t *nb = realloc(rd->buf, cap);
		if (!nb) {
			ERR("no memory for a %llu-byte record", (unsigned long long)rec->f.length);
			return -ENOMEM;
		}
		rd->buf = nb;
		rd->cap = cap;
	}
	/*
	 * A DATA run, when the reader has RAM, is put in place by the reader once the run
	 * descriptor says it fits: with a RAM fd (a memfd) through pwrite() from the payload
	 * buffer, which fills new pages without the kernel zeroing them first (a page fault on
	 * the mapping would), otherwise received straight into RAM. Both CRCs are checked before
	 * the caller sees the record; bad bytes may be in RAM by then, but only in a VM that has
	 * not run and is thrown away with the error.
	 */
	bool direct = false;
	uint8_t *land = NULL;
	size_t head = external ? IMG_RUN_SIZE : (size_t)rec->f.length;
	rec->in_ram = false;
	if (head && (r = rd->read(rd->arg, rd->buf, head)))
		goto short_read;
	if (external && rd->ram) {
		struct dec d;
		struct img_run run;
		dec_init(&d, rd->buf, IMG_RUN_SIZE);
		img_run_decode(&d, &run);
		if (!dec_error(&d) && run.kind == IMG_RUN_DATA && run.offset == 0 &&
		    run.page < rd->ram_pages && run.npages <= rd->ram_pages - run.page &&
		    rec->f.length == IMG_RUN_SIZE + (uint64_t)run.stored_len) {
			direct = true;
			if (rd->ram_fd < 0)
				land = rd->ram + run.page * IMG_PAGE_SIZE;
			rec->run = run;
		}
	}
	if (rec->f.length > head &&
	    (r = rd->read(rd->arg, land ? land : rd->buf + head, (size_t)rec->f.length - head)))
		goto short_read;
	if ((r = rd->read(rd->arg, crcb, sizeof(crcb)))) {
	short_read:
		ERR("record %llu (%s): %s in its payload", (unsigned long long)rd->records, name,
		    r == -EPIPE ? "connection closed" : strerror(-r));
		return r;
	}
	uint32_t stored = (uint32_t)crcb[0] | (uint32_t)crcb[1] << 8 | (uint32_t)crcb[2] << 16 |
			  (uint32_t)crcb[3] << 24;
	uint32_t crc = img_frame_crc(frame, rd->buf, external ? IMG_RUN_SIZE : rec->f.length);
	if (stored != crc) {
		ERR("record %llu (%s, %llu bytes): CRC mismatch (stored 0x%08x, computed 0x%08x)",
		    (unsigned long long)rd->records, name, (unsigned long long)rec->f.length, stored,
		    crc);
		return -EBADMSG;
	}
	if (maxver == 0 && (rec->f.flags & IMG_SEC_REQUIRED)) {
		ERR("record %llu: required record type 0x%04x is unknown to this vmsnap (newer "
		    "source?)",
		    (unsigned long long)rd->records, type);
		return -ENOTSUP;
	}
	if (maxver && (rec->f.version < 1 || rec->f.version > maxver)) {
		ERR("record %llu (%s): version %u is not supported (this vmsnap reads 1..%u)",
		    (unsigned long long)rd->records, name, rec->f.version, maxver);
		return -ENOTSUP;
	}
	if (direct) {
		const uint8_t *data = land ? land : rd->buf + head;
		size_t len = rec->run.stored_len;
		uint32_t dcrc = crc32c(0, data, len);
		if (dcrc != rec->run.crc) {
			ERR("record %llu (run): pages %llu+%u: CRC mismatch (stored 0x%08x, computed "
			    "0x%08x)",
			    (unsigned long long)rd->records, (unsigned long long)rec->run.page,
			    rec->run.npages, rec->run.crc, dcrc);
			return -EBADMSG;
		}
		for (size_t done = 0; !land && done < len;) {
			ssize_t n = pwrite(rd->ram_fd, data + done, len - done,
					   (off_t)(rec->run.page * IMG_PAGE_SIZE + done));
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				int e = n < 0 ? errno : EIO;
				ERR("record %llu (run): writing pages %llu+%u to guest RAM: %s",
				    (unsigned long long)rd->records,
				    (unsigned long long)rec->run.page, rec->run.npages, strerror(e));
				return -e;
			}
			done += (size_t)n;
		}
		rec->in_ram = true;
	}
	rec->payload = rd->buf;
	rec->len = direct ? IMG_RUN_SIZE : (size_t)rec->f.length;
	rd->records++;
	rd->bytes += IMG_FRAME_SIZE + rec->f.length + IMG_CRC_SIZE;
	return 0;
}

static void put_crc(struct enc *e, uint32_t crc)
{
	uint8_t b[4] = { (uint8_t)crc, (uint8_t)(crc >> 8), (uint8_t)(crc >> 16),
			 (uint8_t)(crc >> 24) };
	enc_bytes(e, b, 4);
}

void mig_put_record(struct enc *e, uint32_t id, uint16_t version, uint16_t flags,
		    const void *payload, size_t len)
{
	uint8_t frame[IMG_FRAME_SIZE];
	struct img_frame f = { .id = id, .version = version, .flags = flags, .length = len };
	img_frame_encode(frame, &f);
	enc_bytes(e, frame, sizeof(frame));
	if (len)
		enc_bytes(e, payload, len);
	put_crc(e, img_frame_crc(frame, payload, len));
}

/* The frame and the run descriptor of a run record whose stored bytes follow them. */
static void run_head(uint8_t frame[IMG_FRAME_SIZE], uint8_t rb[IMG_RUN_SIZE], uint32_t round,
		     const struct img_run *r)
{
	uint32_t slen = r->kind == IMG_RUN_DATA || r->kind == IMG_RUN_LZ4 ? r->stored_len : 0;
	struct img_frame f = {
		.id = IMG_SEC_ID(MIG_REC_RUN, round & 0xffff),
		.version = 1,
		.flags = IMG_SEC_REQUIRED | IMG_SEC_PAYLOAD_EXTERNAL,
		.length = IMG_RUN_SIZE + slen,
	};
	img_frame_encode(frame, &f);
	struct enc re;
	struct img_run sr = *r;
	sr.offset = 0; /* a stream has no file offsets; the bytes follow the run */
	enc_init(&re);
	img_run_encode(&re, &sr);
	memcpy(rb, re.buf, IMG_RUN_SIZE);
	enc_free(&re);
}

void mig_put_run(struct enc *e, uint32_t round, const struct img_run *r, const void *stored)
{
	uint8_t frame[IMG_FRAME_SIZE], rb[IMG_RUN_SIZE];
	run_head(frame, rb, round, r);
	enc_bytes(e, frame, sizeof(frame));
	enc_bytes(e, rb, sizeof(rb));
	if (r->kind == IMG_RUN_DATA || r->kind == IMG_RUN_LZ4)
		enc_bytes(e, stored, r->stored_len);
	put_crc(e, img_frame_crc(frame, rb, sizeof(rb)));
}

void mig_put_data_run(struct enc *e, uint32_t round, uint64_t page, uint32_t npages,
		      const void *src)
{
	size_t raw = (size_t)npages * IMG_PAGE_SIZE;
	uint8_t *p = enc_append(e, IMG_FRAME_SIZE + IMG_RUN_SIZE + raw + IMG_CRC_SIZE);
	if (!p)
		return; /* -ENOMEM latched */
	uint8_t *data = p + IMG_FRAME_SIZE + IMG_RUN_SIZE;
	memcpy(data, src, raw);
	struct img_run r = {
		.page = page,
		.npages = npages,
		.kind = IMG_RUN_DATA,
		.stored_len = (uint32_t)raw,
		.crc = crc32c(0, data, raw), /* of the copy, which the guest cannot change */
	};
	run_head(p, p + IMG_FRAME_SIZE, round, &r);
	uint32_t crc = img_frame_crc(p, p + IMG_FRAME_SIZE, IMG_RUN_SIZE);
	uint8_t *c = data + raw;
	c[0] = (uint8_t)crc;
	c[1] = (uint8_t)(crc >> 8);
	c[2] = (uint8_t)(crc >> 16);
	c[3] = (uint8_t)(crc >> 24);
}

int mig_hello_encode(struct enc *e, const struct mig_hello *h)
{
	struct enc he;
	enc_init(&he);
	int r = img_header_encode(&he, &h->hdr);
	enc_u32(e, h->major);
	enc_u32(e, h->minor);
	enc_u64(e, h->caps);
	enc_u32(e, (uint32_t)he.len);
	enc_bytes(e, he.buf, he.len);
	enc_u32(e, h->ndevices);
	for (uint32_t i = 0; i < h->ndevices && i < MIG_MAX_DEVICES; i++) {
		enc_u16(e, h->devices[i].id);
		enc_u16(e, h->devices[i].version);
		enc_str(e, h->devices[i].name);
	}
	enc_free(&he);
	return r ? r : enc_error(e);
}

int mig_hello_decode(const void *p, size_t len, struct mig_hello *h, char *err, size_t errlen)
{
	struct dec d;
	memset(h, 0, sizeof(*h));
	dec_init(&d, p, len);
	dec_u32(&d, &h->major);
	dec_u32(&d, &h->minor);
	if (dec_error(&d)) {
		ERR("hello: truncated");
		return -EBADMSG;
	}
	if (h->major != MIG_PROTO_MAJOR) {
		ERR("source speaks migration protocol %u.%u; this vmsnap speaks %u.x", h->major,
		    h->minor, MIG_PROTO_MAJOR);
		return -ENOTSUP;
	}
	dec_u64(&d, &h->caps);
	uint32_t hlen = dec_u32_val(&d);
	const void *hp = dec_ptr(&d, hlen);
	if (dec_error(&d)) {
		ERR("hello: truncated header");
		return -EBADMSG;
	}
	uint32_t used;
	int r = img_header_decode(hp, hlen, &h->hdr, &used);
	if (r) {
		ERR("hello: %s", img_last_error());
		return r;
	}
	dec_u32(&d, &h->ndevices);
	if (h->ndevices > MIG_MAX_DEVICES) {
		ERR("hello: %u devices (limit %u)", h->ndevices, MIG_MAX_DEVICES);
		return -EBADMSG;
	}
	for (uint32_t i = 0; i < h->ndevices; i++) {
		dec_u16(&d, &h->devices[i].id);
		dec_u16(&d, &h->devices[i].version);
		dec_str(&d, h->devices[i].name, sizeof(h->devices[i].name));
	}
	if (dec_error(&d)) {
		ERR("hello: truncated or bad device list");
		return -EBADMSG;
	}
	/* Newer minors may append fields: the rest is ignored. */
	return 0;
}

void mig_reply_encode(struct enc *e, uint32_t type, const struct mig_reply *r)
{
	if (type == MIG_REC_WELCOME) {
		enc_u32(e, r->major);
		enc_u32(e, r->minor);
		enc_u64(e, r->caps);
	}
	enc_u32(e, r->status);
	if (type == MIG_REC_CONFIRM)
		enc_u64(e, r->value);
	enc_str(e, r->msg);
}

int mig_reply_decode(uint32_t type, const void *p, size_t len, struct mig_reply *r, char *err,
		     size_t errlen)
{
	struct dec d;
	memset(r, 0, sizeof(*r));
	dec_init(&d, p, len);
	if (type == MIG_REC_WELCOME) {
		dec_u32(&d, &r->major);
		dec_u32(&d, &r->minor);
		dec_u64(&d, &r->caps);
	}
	dec_u32(&d, &r->status);
	if (type == MIG_REC_CONFIRM)
		dec_u64(&d, &r->value);
	dec_str(&d, r->msg, sizeof(r->msg));
	if (dec_error(&d)) {
		ERR("%s record: truncated or bad message",
		    type == MIG_REC_WELCOME ? "welcome" : type == MIG_REC_CONFIRM ? "confirm" :
										    "error");
		return -EBADMSG;
	}
	/* The message goes into logs: keep it printable. */
	for (char *c = r->msg; *c; c++)
		if ((unsigned char)*c < 0x20 || *c == 0x7f)
			*c = '?';
	if (r->status > 4095) {
		ERR("reply status %u out of range", r->status);
		return -EBADMSG;
	}
	return 0;
}

void mig_end_encode(struct enc *e, const struct mig_end *m)
{
	enc_u32(e, m->nvcpus);
	enc_u32(e, m->ndevices);
	enc_u32(e, m->rounds);
	enc_u64(e, m->pages);
}

int mig_end_decode(const void *p, size_t len, struct mig_end *m, char *err, size_t errlen)
{
	struct dec d;
	dec_init(&d, p, len);
	dec_u32(&d, &m->nvcpus);
	dec_u32(&d, &m->ndevices);
	dec_u32(&d, &m->rounds);
	dec_u64(&d, &m->pages);
	if (dec_error(&d)) {
		ERR("end record: truncated");
		return -EBADMSG;
	}
	return 0;
}

int mig_run_apply(const struct mig_record *rec, uint8_t *ram, uint64_t ram_pages,
		  bool ram_zeroed, struct img_run *run, char *err, size_t errlen)
{
	if (rec->in_ram) { /* already in place and checked by mig_read_record() */
		*run = rec->run;
		return 0;
	}
	struct dec d;
	dec_init(&d, rec->payload, rec->len);
	img_run_decode(&d, run);
	if (dec_error(&d) || run->offset != 0 || run->kind == IMG_RUN_PARENT) {
		ERR("run record: malformed run");
		return -EBADMSG;
	}
	if (run->page >= ram_pages || run->npages > ram_pages - run->page) {
		ERR("run record: pages %llu+%u are outside RAM (%llu pages)",
		    (unsigned long long)run->page, run->npages, (unsigned long long)ram_pages);
		return -EBADMSG;
	}
	size_t slen = dec_remaining(&d);
	const uint8_t *stored = dec_ptr(&d, slen);
	uint8_t *dst = ram + run->page * IMG_PAGE_SIZE;
	size_t raw = (size_t)run->npages * IMG_PAGE_SIZE;
	if (run->kind == IMG_RUN_ZERO) {
		if (slen) {
			ERR("run record: zero run at page %llu carries %zu bytes",
			    (unsigned long long)run->page, slen);
			return -EBADMSG;
		}
		if (!ram_zeroed)
			memset(dst, 0, raw);
		return 0;
	}
	if (slen != run->stored_len) {
		ERR("run record: page %llu: %zu stored bytes, the run says %u",
		    (unsigned long long)run->page, slen, run->stored_len);
		return -EBADMSG;
	}
	uint32_t crc = crc32c(0, stored, slen);
	if (crc != run->crc) {
		ERR("run record: pages %llu+%u: CRC mismatch (stored 0x%08x, computed 0x%08x)",
		    (unsigned long long)run->page, run->npages, run->crc, crc);
		return -EBADMSG;
	}
	if (run->kind == IMG_RUN_DATA) {
		memcpy(dst, stored, raw);
		return 0;
	}
	int n = LZ4_decompress_safe((const char *)stored, (char *)dst, (int)slen, (int)raw);
	if (n != (int)raw) {
		ERR("run record: pages %llu+%u: bad LZ4 block", (unsigned long long)run->page,
		    run->npages);
		return -EBADMSG;
	}
	return 0;
}
