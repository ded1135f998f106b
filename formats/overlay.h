/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_FORMATS_OVERLAY_H
#define VMSNAP_FORMATS_OVERLAY_H

/*
 * The vmsnap disk overlay (byte layout in formats/OVERLAY.md): a copy-on-write file holding
 * the blocks of a virtual disk written since its base. Reads of blocks the overlay does not
 * hold fall through to the base (a caller-supplied reader: a raw file or another overlay);
 * the base is never written. This is the only code that reads or writes overlay bytes.
 *
 * Crash consistency: a new block's data is written (appended) before the map entry that
 * points to it, and map entries reach the file only in ovl_flush(), after an fdatasync of the
 * data, as 8-byte-aligned writes followed by another fdatasync. Hence after a process kill or
 * a power loss the file reads as of the last completed flush plus, possibly, newer contents
 * of blocks that were already mapped (a volatile write cache's semantics); appended data no
 * entry points to is unused space.
 *
 * Every value read from a header or map is checked at open (offsets inside the file,
 * aligned, past the map, no two entries sharing a block) before it is used.
 *
 * Not thread-safe: one caller at a time per struct ovl (vmm/blkdev.c holds a lock).
 * Errors: 0 or -errno; -EBADMSG corrupt overlay, -ENOTSUP newer format or unknown required
 * flag, -EROFS write to a read-only overlay, -EIO/-ENOSPC/... from the file. Open errors are
 * logged once with log_err; I/O errors during reads and writes (guest-triggered) rate-limited.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define OVL_MAGIC	 "VMSNAPOV" /* 8 bytes at offset 0 */
#define OVL_FORMAT_MAJOR 1
#define OVL_FORMAT_MINOR 0

#define OVL_SECTOR_SIZE	       512u
#define OVL_BLOCK_SIZE_DEFAULT 65536u /* what vmsnap writes; see OVERLAY.md for why */
#define OVL_BLOCK_SIZE_MIN     4096u
#define OVL_BLOCK_SIZE_MAX     (2u << 20)
#define OVL_HEADER_MIN	       104u /* v1.0 header with an empty path, CRC included */
#define OVL_HEADER_MAX	       65536u
#define OVL_MAP_ALIGN	       4096u
#define OVL_MAP_MAX_BYTES      (1ull << 30) /* 2^27 entries: 8 TiB at 64 KiB blocks */
#define OVL_PATH_MAX	       4096u	    /* base path bytes, NUL included */
#define OVL_MAX_DEPTH	       16u	    /* overlays in one chain above the raw base */
#define OVL_IOV_MAX	       1024	    /* segments per ovl_preadv/ovl_pwritev call */

/* Map entry values other than a data offset. */
#define OVL_ENTRY_ABSENT 0ull /* not in this overlay: read the base */
#define OVL_ENTRY_ZERO	 1ull /* reads as zeros (discarded / zeroed), no data stored */

#define OVL_FLAGS_INCOMPAT_MASK 0xffff0000u /* header flag bits a reader must know */

/* Identity hash sampling (formats/OVERLAY.md section 4). */
#define OVL_ID_WHOLE_MAX   (2ull << 20) /* files up to this size are hashed whole */
#define OVL_ID_EDGE	   (1ull << 20) /* else: the first and last MiB ... */
#define OVL_ID_SAMPLES	   64u		/* ... plus 64 evenly spaced blocks ... */
#define OVL_ID_SAMPLE_SIZE 4096u	/* ... of 4 KiB each */

/** The decoded header. */
struct ovl_header {
	uint16_t major, minor;
	uint32_t header_len; /* bytes from offset 0 through the header CRC */
	uint32_t flags;
	uint32_t block_size;   /* power of two, OVL_BLOCK_SIZE_MIN..OVL_BLOCK_SIZE_MAX */
	uint64_t virtual_size; /* bytes the disk presents; a multiple of 512, >= 512 */
	uint64_t nblocks;      /* ceil(virtual_size / block_size) */
	uint64_t map_offset;   /* the map: nblocks u64 entries */
	uint64_t data_offset;  /* first possible data block */
	uint64_t base_size;    /* the base's virtual size (== virtual_size in 1.x) */
	uint8_t base_sha256[32];
	char base_path[OVL_PATH_MAX];
};

/**
 * SHA-256 identifying a file's contents without reading all of it (the "content hash" of a
 * base): the whole file up to OVL_ID_WHOLE_MAX bytes, else its first and last MiB, 64 evenly
 * spaced 4 KiB blocks and its length (exact definition: OVERLAY.md). Used for the base
 * identity in a header and by vmm/blkdev.h's blkdev_identity(). Returns 0 or -errno.
 */
int ovl_content_hash(int fd, uint8_t sha256[32]);

/** Encode @h (header_len is computed and stored back) into @buf. 0, -EINVAL, -ENOSPC. */
int ovl_header_encode(struct ovl_header *h, uint8_t *buf, size_t size);

/**
 * Decode and check a header from the first @len bytes of a file of @file_size bytes; @name
 * names the file in the log line on failure. 0, -EBADMSG or -ENOTSUP.
 */
int ovl_header_decode(struct ovl_header *h, const void *buf, size_t len, uint64_t file_size,
		      const char *name);

/** 1 when the file @fd starts with OVL_MAGIC, 0 when not, -errno on a read error. */
int ovl_probe(int fd);

/**
 * The base path to store in an overlay created at @overlay_path for a base the caller opened
 * as @base_path (relative to the current directory): as given when absolute or when the
 * overlay lies in the current directory, else made absolute, so that ovl_resolve_base()
 * finds it from the overlay's directory. 0 or -errno (-ENAMETOOLONG).
 */
int ovl_base_path_for(const char *overlay_path, const char *base_path, char *out, size_t size);

/**
 * Where the base named in an overlay header lies: @stored as is when absolute, else relative
 * to the directory of @overlay_path. 0 or -ENAMETOOLONG.
 */
int ovl_resolve_base(const char *overlay_path, const char *stored, char *out, size_t size);

/**
 * Create an empty overlay at @path (which must not exist: -EEXIST) of @virtual_size bytes and
 * @block_size blocks over a base stored as @base_path (see ovl_base_path_for()) whose content
 * hash is @base_sha256. The file appears complete or not at all (written under a temporary
 * name, synced, renamed without replacing). 0 or -errno, logged.
 */
int ovl_create(const char *path, uint64_t virtual_size, uint32_t block_size, const char *base_path,
	       const uint8_t base_sha256[32]);

typedef int (*ovl_base_read_fn)(void *opaque, const struct iovec *iov, int iovcnt, uint64_t offset);

struct ovl;

/**
 * Open the overlay in @fd (the struct takes the fd and closes it in ovl_close()); @name is its
 * path, for messages. @writable: the fd is open read-write and the overlay may be written.
 * Reads the header and the whole map into memory and checks them. The base must be set with
 * ovl_set_base() before anything falls through to it. 0 or -errno (fd closed on failure).
 */
int ovl_open(struct ovl **out, int fd, const char *name, bool writable);

/** The header read at open. */
const struct ovl_header *ovl_get_header(const struct ovl *o);

/** The overlay's file descriptor (owned by the struct; for hashing and fdatasync). */
int ovl_get_fd(const struct ovl *o);

/** Set the reader of the base (its virtual disk, @virtual_size bytes). */
void ovl_set_base(struct ovl *o, ovl_base_read_fn fn, void *opaque);

/** Map entries that are not OVL_ENTRY_ABSENT (0: the overlay changes nothing). */
uint64_t ovl_blocks_used(const struct ovl *o);

/** The map entry of block @b (tests, tools). */
uint64_t ovl_map_entry(const struct ovl *o, uint64_t b);

/**
 * Read @iovcnt (<= OVL_IOV_MAX) buffers from virtual offset @offset. The range must lie inside
 * the virtual size (-EINVAL). 0 or -errno.
 */
int ovl_preadv(struct ovl *o, const struct iovec *iov, int iovcnt, uint64_t offset);

/**
 * Write the buffers at @offset. A block not yet in the overlay is allocated at the end of the
 * file; a write covering only part of it first fills the rest from the base (or zeros). The
 * new map entries become durable at the next ovl_flush(). 0 or -errno (-EROFS read-only).
 */
int ovl_pwritev(struct ovl *o, const struct iovec *iov, int iovcnt, uint64_t offset);

/**
 * Make [offset, offset+len) read as zeros: whole blocks held by the overlay have their data
 * deallocated (punched), whole blocks not held become OVL_ENTRY_ZERO, partial blocks are
 * written with zeros. 0 or -errno.
 */
int ovl_write_zeroes(struct ovl *o, uint64_t offset, uint64_t len);

/**
 * Discard: like ovl_write_zeroes() for the whole blocks inside the range; partial blocks at
 * either end are left as they are (a discard is a hint). 0 or -errno.
 */
int ovl_discard(struct ovl *o, uint64_t offset, uint64_t len);

/**
 * Make everything written so far durable: fdatasync (data), write the changed map entries,
 * fdatasync (map). 0 or -errno (entries not written stay pending for the next flush).
 */
int ovl_flush(struct ovl *o);

/** Flush, then refuse writes from now on (-EROFS): the overlay became a base. 0 or -errno. */
int ovl_seal(struct ovl *o);

/** Flush (when writable) and free; the fd is closed. Returns the flush result. NULL-safe. */
int ovl_close(struct ovl *o);

/**
 * Complete positioned vector I/O on a file (a helper shared with vmm/blkdev.c): loops over
 * short transfers and EINTR, consuming @iov (it is modified). A read that meets the end of
 * the file is -EIO. 0 or -errno.
 */
int ovl_fd_rw(int fd, bool write, struct iovec *iov, int iovcnt, uint64_t offset);

#endif
