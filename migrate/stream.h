/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_MIGRATE_STREAM_H
#define VMSNAP_MIGRATE_STREAM_H

/*
 * The migration stream's records (docs/MIGRATION.md): the image format's vocabulary over a
 * socket. After an 8-byte magic from the source, both directions carry image section frames
 * (formats/image.h: u32 id, u16 version, u16 flags, u64 length, payload, u32 CRC32C). The
 * VM/vCPU/device state records are the image's own sections (IMG_SEC_VM, IMG_SEC_VCPU,
 * IMG_SEC_DEVICE) with the same payloads and versions; pages travel as the image's page runs
 * (img_run) with the stored bytes following the run. The stream-only record types below live
 * in the range the image format leaves unassigned.
 *
 * This file is pure (no I/O, no logging): it encodes and checks records; the reader takes a
 * read callback so that the socket and the fuzzer share it. Errors come back as -errno with a
 * one-line message in the caller's buffer.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "formats/codec.h"
#include "formats/image.h"

#define MIG_MAGIC "VMSNAPMG" /* 8 bytes, the first the source sends */
#define MIG_MAGIC_LEN 8
#define MIG_PROTO_MAJOR 1
#define MIG_PROTO_MINOR 0

/* Stream-only record types (section type, the high 16 bits of the frame id). */
enum mig_rec_type {
	MIG_REC_HELLO = 0x0100,	  /* src->dst: versions, capabilities, header, device list */
	MIG_REC_WELCOME = 0x0101, /* dst->src: accept (status 0) or refuse, before any page */
	MIG_REC_RUN = 0x0102,	  /* src->dst: one page run + its stored bytes; inst = round */
	MIG_REC_ROUND = 0x0103,	  /* src->dst: end of a pre-copy round (informational) */
	MIG_REC_END = 0x0104,	  /* src->dst: all memory and state sent; counts to check */
	MIG_REC_CONFIRM = 0x0105, /* dst->src: the guest runs here now */
	MIG_REC_ERROR = 0x0106,	  /* either way: the sender gives up, with the reason */
	MIG_REC_ACK = 0x0107,	  /* src->dst: confirmation received, the source ends */
	MIG_REC_DRAIN = 0x0108,	  /* src->dst: u64 token; answer DRAINED once all before is in */
	MIG_REC_DRAINED = 0x0109, /* dst->src: u64 token of the DRAIN answered */
};

#define MIG_CAP_LZ4 0x1ull   /* LZ4 page runs */
#define MIG_CAP_DRAIN 0x2ull /* the destination answers DRAIN (the source waits before pausing) */
#define MIG_CAPS_KNOWN (MIG_CAP_LZ4 | MIG_CAP_DRAIN)

/* Bounds a reader enforces before allocating or reading a payload. */
#define MIG_MAX_CONTROL (128u * 1024)	     /* hello, welcome, end, confirm, error, ... */
#define MIG_MAX_STATE (4u << 20)	     /* one vCPU/VM/device state record */
#define MIG_MAX_RUN (IMG_RUN_SIZE + IMG_RUN_MAX_BYTES) /* a run record's payload */
#define MIG_MAX_PAYLOAD MIG_MAX_RUN
#define MIG_MAX_DEVICES 64
#define MIG_MSG_MAX 512

struct mig_device_desc {
	uint16_t id, version;
	char name[32];
};

/** HELLO: what the source is and runs. */
struct mig_hello {
	uint32_t major, minor;
	uint64_t caps;
	struct img_header hdr; /* host CPU, TSC kHz, VM config (RAM layout, vCPUs, template) */
	uint32_t ndevices;
	struct mig_device_desc devices[MIG_MAX_DEVICES];
};

/** WELCOME / ERROR / CONFIRM share this shape: a status (0 or an errno) and a message. */
struct mig_reply {
	uint32_t major, minor; /* WELCOME only */
	uint64_t caps;	       /* WELCOME only: the capabilities both sides use */
	uint32_t status;       /* 0 = accepted / running; else a positive errno */
	uint64_t value;	       /* CONFIRM: destination µs from END to running */
	char msg[MIG_MSG_MAX];
};

/** END: what the destination must have received. */
struct mig_end {
	uint32_t nvcpus, ndevices, rounds;
	uint64_t pages; /* run pages sent in all (zero pages included) */
};

/** One record as read: frame and payload (owned by the reader, valid until the next read). */
struct mig_record {
	struct img_frame f;
	const uint8_t *payload;
	size_t len;
	bool in_ram;	    /* a DATA run already written to the reader's RAM and checked */
	struct img_run run; /* that run (when in_ram) */
};

/** Read exactly @len bytes into @buf: 0, or -errno (-EPIPE when the peer closed). */
typedef int (*mig_read_fn)(void *arg, void *buf, size_t len);

struct mig_reader {
	mig_read_fn read;
	void *arg;
	uint8_t *buf; /* payload buffer, grown up to MIG_MAX_PAYLOAD */
	size_t cap;
	uint64_t records, bytes;
	uint8_t *ram; /* mig_reader_set_ram() */
	uint64_t ram_pages;
	int ram_fd;
};

void mig_reader_init(struct mig_reader *rd, mig_read_fn read, void *arg);
/**
 * Have the reader put DATA runs in place in @ram (@ram_pages pages) itself, checked: written
 * with pwrite() at page * 4 KiB to @ram_fd when it is >= 0 (the memfd @ram maps shared: no
 * page is zeroed before it is filled), else received straight into @ram. The record then has
 * in_ram set, its payload is the run descriptor alone, and mig_run_apply() has nothing left
 * to do. Other runs come back as before.
 */
void mig_reader_set_ram(struct mig_reader *rd, uint8_t *ram, uint64_t ram_pages, int ram_fd);
void mig_reader_free(struct mig_reader *rd);

/**
 * Read one record: frame, bounded payload, CRC. Checks the length against the type's bound
 * before reading the payload, the version (1..what this build reads), refuses unknown
 * REQUIRED types (-ENOTSUP) and checks the CRC (-EBADMSG); an unknown optional type is
 * returned for the caller to skip. For RUN records (PAYLOAD_EXTERNAL) the CRC covers the frame
 * and the 32-byte run; the stored bytes are checked by mig_run_apply() against the run's CRC.
 * Returns 0 or -errno with a message in @err.
 */
int mig_read_record(struct mig_reader *rd, struct mig_record *rec, char *err, size_t errlen);

/** Append one framed record (frame, payload, CRC32C over both) to @e. */
void mig_put_record(struct enc *e, uint32_t id, uint16_t version, uint16_t flags,
		    const void *payload, size_t len);

/**
 * Append a RUN record for round @round: @r (page, npages, kind, stored_len, crc filled by
 * img_pack_run() or a ZERO run) and its @stored bytes (DATA/LZ4).
 */
void mig_put_run(struct enc *e, uint32_t round, const struct img_run *r, const void *stored);
/**
 * Append a DATA run of @npages pages copied from @src (guest RAM, which may change under us):
 * the bytes are copied once, straight into @e, and the run's CRC is taken of that copy.
 */
void mig_put_data_run(struct enc *e, uint32_t round, uint64_t page, uint32_t npages,
		      const void *src);

/** Payload encoders / decoders. Decoders return 0, -EBADMSG or -ENOTSUP with @err set. */
int mig_hello_encode(struct enc *e, const struct mig_hello *h);
int mig_hello_decode(const void *p, size_t len, struct mig_hello *h, char *err, size_t errlen);
void mig_reply_encode(struct enc *e, uint32_t type, const struct mig_reply *r);
int mig_reply_decode(uint32_t type, const void *p, size_t len, struct mig_reply *r, char *err,
		     size_t errlen);
void mig_end_encode(struct enc *e, const struct mig_end *m);
int mig_end_decode(const void *p, size_t len, struct mig_end *m, char *err, size_t errlen);

/**
 * Check a RUN record's payload and write its pages into @ram (@ram_pages pages): the run is
 * in range, its stored bytes match stored_len and the run's CRC, an LZ4 block decompresses to
 * exactly npages pages. ZERO runs clear the pages unless @ram_zeroed (a fresh RAM in round 0).
 * *@pages gets npages. Returns 0, -EBADMSG or -ENOTSUP with @err set.
 */
int mig_run_apply(const struct mig_record *rec, uint8_t *ram, uint64_t ram_pages,
		  bool ram_zeroed, struct img_run *run, char *err, size_t errlen);

/** "hello", "run.3", "vcpu.1", ... for messages. */
const char *mig_record_name(uint32_t id, char *buf, size_t size);

#endif
