/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_FORMATS_IMAGE_H
#define VMSNAP_FORMATS_IMAGE_H

/*
 * The vmsnap image format (byte layout in formats/SPEC.md): the only code that writes and
 * reads image bytes. Three layers:
 *  - records (header, section frame, page run): pure encoders/decoders, no I/O, shared with
 *    the migration stream;
 *  - the writer: streams an image to a regular file's fd (header, sections, memory, trailer),
 *    computing CRC32Cs and the SHA-256 as it goes;
 *  - the reader: validates an image at open, lists and fetches sections, reads memory eagerly
 *    or hands out file offsets for mmap, and verifies every checksum.
 * Errors are logged once (util/log.h) with what and where, and the message is kept for
 * img_last_error(). Functions return 0 or -errno: -EBADMSG corrupt or truncated image,
 * -ENOTSUP newer/unknown format element that is required, -EIO/-ENOSPC/... from the file.
 * Nothing here knows about KVM: payloads come from callers through formats/codec.h.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "formats/codec.h"

#define IMG_FORMAT_MAJOR 1
#define IMG_FORMAT_MINOR 0
#define IMG_PAGE_SIZE 4096u
#define IMG_MAGIC "VMSNAPIM"	  /* 8 bytes at offset 0 */
#define IMG_END_MAGIC "VMSNAPND" /* last 8 bytes of the file */

/* ---- Section ids: (type << 16) | instance ---------------------------------------------- */
#define IMG_SEC_ID(type, inst) (((uint32_t)(type) << 16) | ((uint32_t)(inst) & 0xffff))
#define IMG_SEC_TYPE(id) ((uint32_t)(id) >> 16)
#define IMG_SEC_INST(id) ((uint32_t)(id) & 0xffff)

enum img_sec_type {
	IMG_SEC_PAD = 0x0000,	   /* zero filler (aligns memory data); not in the index */
	IMG_SEC_CONFIG = 0x0001,   /* full VM configuration record (snapshot/'s codec) */
	IMG_SEC_PARENT = 0x0002,   /* incremental image: parent's SHA-256 + path */
	IMG_SEC_VM = 0x0003,	   /* VM-wide hypervisor state (irqchips, PIT, clock) */
	IMG_SEC_VCPU = 0x0004,	   /* one per vCPU, instance = vCPU index */
	IMG_SEC_DEVICE = 0x0005,   /* one per device, instance = the device table's stable id */
	IMG_SEC_MEM_MAP = 0x0010,  /* page map (runs) */
	IMG_SEC_MEM_DATA = 0x0011, /* memory bytes; instance = batch number */
	IMG_SEC_INDEX = 0x0012,	   /* section index, last section before the end record */
};

#define IMG_SEC_REQUIRED 0x0001u	 /* a reader that does not know the id must refuse */
#define IMG_SEC_PAYLOAD_EXTERNAL 0x0002u /* crc covers the frame only (memory data) */

/* ---- Header ---------------------------------------------------------------------------- */
#define IMG_HDR_INCREMENTAL 0x00000001u	  /* informational: the image has a parent */
#define IMG_HDR_INCOMPAT_MASK 0xffff0000u /* bits a reader must know or refuse */

#define IMG_MAX_REGIONS 8
#define IMG_MAX_CPUID 32
#define IMG_STR_MAX 4096 /* paths and command line, including the NUL */

struct img_region {
	uint64_t gpa;	 /* guest-physical start */
	uint64_t size;	 /* bytes, multiple of IMG_PAGE_SIZE */
	uint64_t offset; /* byte offset in the linear RAM (= ram page index * IMG_PAGE_SIZE) */
};

/** The VM configuration in the header: enough for `inspect` and to size RAM on restore. */
struct img_vm_config {
	uint64_t ram_size; /* bytes, multiple of IMG_PAGE_SIZE; the page map covers it all */
	uint32_t vcpus;
	uint32_t nregions;
	struct img_region regions[IMG_MAX_REGIONS];
	char cpu_template[64];
	char kernel[IMG_STR_MAX];  /* informational */
	char initrd[IMG_STR_MAX];  /* informational */
	char cmdline[IMG_STR_MAX]; /* informational */
};

struct img_cpuid_entry {
	uint32_t leaf, subleaf, eax, ebx, ecx, edx;
};

/** Summary of the CPU of the host that wrote the image. */
struct img_host_cpu {
	char vendor[16]; /* "GenuineIntel" */
	uint32_t family, model, stepping;
	uint32_t ncpuid;
	struct img_cpuid_entry cpuid[IMG_MAX_CPUID]; /* feature leaves, see img_host_cpu_probe */
};

struct img_header {
	uint16_t major, minor; /* filled by the writer / reader */
	uint32_t flags;	       /* IMG_HDR_* */
	char creator[64];      /* "vmsnap 0.1.0" */
	uint64_t created_ns;   /* CLOCK_REALTIME, ns since the epoch */
	struct img_host_cpu cpu;
	uint64_t tsc_khz;
	struct img_vm_config vm;
};

/** Fill @cpu from this host's CPUID (vendor, family/model/stepping, feature leaves). */
void img_host_cpu_probe(struct img_host_cpu *cpu);

/**
 * Feature words of @need (leaves 1, 7.0, 7.1, 0xd.1, 0x80000001: ecx/edx/ebx...) that @have
 * lacks. Writes a description of the first missing bits into @msg (may be NULL). Returns
 * true when every feature bit of @need is present in @have.
 */
bool img_host_cpu_compatible(const struct img_host_cpu *need, const struct img_host_cpu *have,
			     char *msg, size_t msglen);

/** Append the complete header (magic ... crc) to @e. Returns enc_error(e) or -EINVAL. */
int img_header_encode(struct enc *e, const struct img_header *h);

/**
 * Decode and validate a header from the first @len bytes of an image (or stream). On success
 * *@header_len is its size in bytes. -EBADMSG corrupt/truncated, -ENOTSUP newer major or
 * unknown required element.
 */
int img_header_decode(const void *buf, size_t len, struct img_header *h, uint32_t *header_len);

/* ---- Section frame: {u32 id, u16 version, u16 flags, u64 length}, payload, u32 crc32c ---- */
#define IMG_FRAME_SIZE 16u
#define IMG_CRC_SIZE 4u

struct img_frame {
	uint32_t id;
	uint16_t version;
	uint16_t flags;
	uint64_t length; /* payload bytes */
};

void img_frame_encode(uint8_t out[IMG_FRAME_SIZE], const struct img_frame *f);
void img_frame_decode(const uint8_t in[IMG_FRAME_SIZE], struct img_frame *f);
/** The crc field of a section: CRC32C over the 16 frame bytes then the payload. */
uint32_t img_frame_crc(const uint8_t frame[IMG_FRAME_SIZE], const void *payload, size_t len);
/** "vcpu.2", "device.7", "memory.map", ... for messages. Returns @buf. */
const char *img_section_name(uint32_t id, char *buf, size_t size);

/* ---- Page runs ------------------------------------------------------------------------- */
enum img_run_kind {
	IMG_RUN_ZERO = 0,   /* all-zero pages: no bytes stored (a hole in linear images) */
	IMG_RUN_DATA = 1,   /* npages * IMG_PAGE_SIZE raw bytes at offset */
	IMG_RUN_LZ4 = 2,    /* one LZ4 block of stored_len bytes at offset */
	IMG_RUN_PARENT = 3, /* incremental image: take the pages from the parent image */
};
#define IMG_RUN_SIZE 32u		/* encoded bytes of a run */
#define IMG_RUN_MAX_BYTES (16u << 20) /* readers refuse longer DATA/LZ4 runs */
#define IMG_RUN_DEFAULT_PAGES 256u	/* writer: 1 MiB per checksummed run */

struct img_run {
	uint64_t page;	     /* first page (index into the linear RAM) */
	uint32_t npages;
	uint8_t kind;	     /* enum img_run_kind */
	uint64_t offset;     /* file offset of the stored bytes (DATA/LZ4), else 0 */
	uint32_t stored_len; /* DATA: npages * IMG_PAGE_SIZE; LZ4: compressed bytes; else 0 */
	uint32_t crc;	     /* CRC32C of the stored bytes, else 0 */
};

void img_run_encode(struct enc *e, const struct img_run *r);
/** Decode one run; structural checks only (kind known, lengths coherent). */
void img_run_decode(struct dec *d, struct img_run *r);

/** True when the IMG_PAGE_SIZE bytes at @page are all zero (64-bit word compare). */
bool img_page_is_zero(const void *page);

/**
 * Number of leading pages of @src (at most @max) that share the zero-ness of the first page;
 * *@zero tells which. @max >= 1.
 */
size_t img_scan_pages(const uint8_t *src, size_t max, bool *zero);

/**
 * LZ4-compress @npages pages at @src into @scratch (img_lz4_bound(npages) bytes): the
 * compressed length when it saves at least 1/16, else 0 (store them raw).
 */
uint32_t img_lz4_try(const void *src, uint32_t npages, void *scratch);
/**
 * Encode @npages non-zero pages at @src as one stored run: LZ4 into @scratch (at least
 * img_lz4_bound(npages) bytes) when @compress and it saves at least 1/16, else raw. Fills
 * @r's kind, npages, stored_len and crc (page and offset are the caller's) and *@stored with
 * the bytes to store (@src or @scratch).
 */
void img_pack_run(const void *src, uint32_t npages, bool compress, void *scratch,
		  struct img_run *r, const void **stored);
size_t img_lz4_bound(uint32_t npages);

/* ---- Writer ---------------------------------------------------------------------------- */
struct img_writer;

struct img_write_opts {
	bool compress;	     /* LZ4 chunks, packed; restore is eager only */
	uint32_t run_pages;  /* pages per checksummed run / LZ4 chunk; 0 = default (256) */
	/*
	 * Optional: called from img_write_memory() about every 16 MiB of RAM scanned, and once
	 * at the end, with the pages scanned so far and the total (for progress reports).
	 */
	void (*progress)(void *arg, uint64_t pages_done, uint64_t pages_total);
	void *progress_arg;
	/*
	 * Optional bitmap (bit i = RAM page i, LSB first in each u64): pages whose bit is clear
	 * are known to be zero and are stored as ZERO runs without being read.
	 */
	const uint64_t *nonzero_hint;
};

struct img_write_stats {
	uint64_t file_size;	/* apparent size of the image */
	uint64_t bytes_written; /* bytes actually written (holes excluded) */
	uint64_t pages_total, pages_data, pages_zero, pages_lz4, pages_parent;
	uint64_t lz4_bytes; /* stored bytes of the LZ4 runs */
	uint8_t sha256[32];
};

/**
 * Start an image on @fd (a regular file opened for writing; its previous contents are
 * discarded, the writer uses pwrite from offset 0 and leaves zero pages as holes). Writes
 * the header (major/minor are filled in). The fd stays the caller's: fsync/rename/close are
 * the caller's policy. Returns 0 and *@wp, or -errno.
 */
int img_writer_open(struct img_writer **wp, int fd, const struct img_header *h);

/**
 * Append a section. @flags: IMG_SEC_REQUIRED or 0. Ids must be unique in an image and not
 * of the types PAD/MEM_MAP/MEM_DATA/INDEX (the writer makes those). Errors are sticky: after
 * a failure every later call returns the same error.
 */
int img_write_section(struct img_writer *w, uint32_t id, uint16_t version, uint16_t flags,
		      const void *payload, size_t len);
/** Same with the payload of an encoder; returns enc_error(e) if the encoder failed. */
int img_write_section_enc(struct img_writer *w, uint32_t id, uint16_t version, uint16_t flags,
			  const struct enc *e);
/** Write the PARENT section of an incremental image (required). */
int img_write_parent(struct img_writer *w, const uint8_t sha256[32], const char *path);

/**
 * Write guest RAM: @ram is the host mapping of all @size bytes (== header vm.ram_size),
 * page i at @ram + i * IMG_PAGE_SIZE. All-zero pages become ZERO runs (holes). With
 * @dirty (a bitmap, bit i = page i, LSB first in each u64) only pages whose bit is set are
 * stored; the others become PARENT runs (requires img_write_parent first). Uncompressed
 * images place page i at a fixed page-aligned offset (mmap-able); compressed ones pack LZ4
 * chunks. Called at most once per image; the memory must not change during the call.
 */
int img_write_memory(struct img_writer *w, const void *ram, uint64_t size,
		     const uint64_t *dirty, const struct img_write_opts *opts);

/*
 * In-place memory, for live saves: the linear layout written while the memory still changes.
 * img_write_memory_begin() places the memory.data section (after the sections written so
 * far; the page-aligned payload is a hole until pages land in it). img_write_pages() then
 * writes any pages, any number of times, at their fixed offsets (a page rewritten later
 * replaces its earlier bytes; an all-zero page becomes a hole again). No section may be
 * written in between. img_write_memory_end() reads the payload back (page cache), computes
 * the runs and their CRC32Cs for the final content, hashes it, and writes the page map;
 * with @present (bitmap as in img_write_memory) pages not in it become PARENT runs
 * (requires img_write_parent first). Sections may follow; then img_writer_finish().
 * The image is an ordinary linear image: nothing in the file says how it was written.
 */
int img_write_memory_begin(struct img_writer *w);
int img_write_pages(struct img_writer *w, const void *src, uint64_t page, uint64_t npages);
int img_write_memory_end(struct img_writer *w, const uint64_t *present,
			 const struct img_write_opts *opts);

/**
 * Hash the image at img_writer_finish() by reading the file back, instead of while writing.
 * Call right after img_writer_open(). Then nothing of the caller's memory is used after
 * img_write_memory() returns, and the SHA-256's cost falls in img_writer_finish(): a save
 * can let the guest run on while the image is hashed (from the page cache) and completed.
 */
void img_writer_defer_hash(struct img_writer *w);

/**
 * Hash behind the writes, on a thread of the writer's own (instead of either way above): it
 * takes the image's bytes in file order as they are written, reading the guest memory given
 * to img_write_memory() in place, so most of the SHA-256 is done while the caller keeps that
 * memory still. The caller must call img_writer_release_memory() before the memory changes
 * (before the guest resumes); the rest is then read back from the file, and
 * img_writer_finish() waits for it. Only for uncompressed, non-live writes (the compressed
 * path would copy every run); call right after img_writer_open(). Falls back to
 * img_writer_defer_hash() when no thread can be started.
 */
void img_writer_hash_behind(struct img_writer *w);

/** The memory given to img_write_memory() may change from now on (blocks about 1 ms). */
void img_writer_release_memory(struct img_writer *w);

/** Write the index and end record. Does not fsync. Fills @st if non-NULL. */
int img_writer_finish(struct img_writer *w, struct img_write_stats *st);
/** Free the writer (finished or not). NULL is fine. */
void img_writer_free(struct img_writer *w);

/* ---- Reader ---------------------------------------------------------------------------- */
struct img;

struct img_section_info {
	uint32_t id;
	uint16_t version;
	uint16_t flags;
	uint64_t offset; /* file offset of the frame */
	uint64_t length; /* payload bytes */
};

struct img_mem_info {
	uint64_t ram_pages;
	bool linear;	      /* every DATA run at data_offset + page * IMG_PAGE_SIZE, no LZ4 */
	uint64_t data_offset; /* linear: page-aligned file offset of RAM page 0 */
	uint64_t pages_data, pages_zero, pages_lz4, pages_parent;
	size_t nruns;
};

/**
 * Open and validate an image on @fd (kept by the caller, must stay open until img_close):
 * header, end record, index, every indexed frame, parent reference and page map. Refuses a
 * newer major, unknown header flags/records or sections that are required. Does not read
 * section payloads or memory (see img_verify). Returns 0 and *@ip, or -errno.
 */
int img_open(struct img **ip, int fd);
void img_close(struct img *img);

const struct img_header *img_get_header(const struct img *img);
/** The SHA-256 recorded in the end record (an incremental child's parent reference). */
const uint8_t *img_get_sha256(const struct img *img);
uint64_t img_file_size(const struct img *img);
/** Sections in file order (excluding PAD and INDEX). */
size_t img_section_count(const struct img *img);
const struct img_section_info *img_section_at(const struct img *img, size_t i);
/** The section with @id, or NULL. */
const struct img_section_info *img_find_section(const struct img *img, uint32_t id);

/**
 * Read section @id's payload into a new buffer (*@buf, free() it), checking its CRC; returns
 * its version in *@version. -ENOENT when absent.
 */
int img_read_section(struct img *img, uint32_t id, void **buf, size_t *len, uint16_t *version);

/**
 * Refuse the first REQUIRED section for which @known(id, version, arg) is false (unknown
 * device, newer version...), with a message naming it; -ENOTSUP. Optional unknown sections
 * are for the caller to skip.
 */
int img_check_required(const struct img *img,
		       bool (*known)(uint32_t id, uint16_t version, void *arg), void *arg);

/** Parent reference of an incremental image; -ENOENT when the image has none. */
int img_get_parent(const struct img *img, uint8_t sha256[32], const char **path);

/** Memory summary; -ENOENT when the image has no memory. */
int img_get_mem_info(const struct img *img, struct img_mem_info *mi);
/** The page map, in page order, covering every RAM page once. NULL/0 without memory. */
const struct img_run *img_get_runs(const struct img *img, size_t *nruns);

#define IMG_READ_DEST_ZEROED 0x1u /* @dest is already zero: skip ZERO runs */

/**
 * Eagerly read all RAM into @dest (@size == vm.ram_size bytes): DATA pread, LZ4
 * decompressed, every run's CRC checked; ZERO runs zeroed (unless IMG_READ_DEST_ZEROED);
 * PARENT runs left untouched (load the parent first). For an mmap restore instead, map the
 * file MAP_PRIVATE at img_mem_info.data_offset when linear (zero runs are holes).
 */
int img_read_memory(struct img *img, void *dest, uint64_t size, unsigned int flags);

struct img_verify_stats {
	uint64_t sections, runs, bytes_hashed;
};

/**
 * Check everything: every section's CRC (walking all frames in file order), padding and
 * holes are zero, every memory run's CRC and LZ4 block, the index against the frames, and
 * the SHA-256. Stops at the first failure, logs it precisely and returns -EBADMSG (or an I/O
 * error).
 */
int img_verify(struct img *img, struct img_verify_stats *st);

/** The message of the last error this module reported in this thread ("" if none). */
const char *img_last_error(void);

/** Stop logging errors (they are still kept for img_last_error); for fuzzers and tests. */
void img_set_quiet(bool quiet);

#endif
