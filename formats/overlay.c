/* SPDX-License-Identifier: MIT */
#include "overlay.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "formats/codec.h"
#include "formats/crc32c.h"
#include "util/log.h"

#define ENTRIES_PER_MAP_PAGE (OVL_MAP_ALIGN / 8u)

struct ovl {
	int fd;
	bool writable;
	char name[OVL_PATH_MAX];
	struct ovl_header h;
	uint64_t *map;	     /* nblocks entries, host byte order */
	uint64_t *dirty;     /* bit p: map page p (512 entries) changed since the last flush */
	uint64_t ndirty;     /* bits set in dirty */
	uint64_t used;	     /* entries other than OVL_ENTRY_ABSENT */
	uint64_t next_alloc; /* file offset of the next new block */
	uint8_t *scratch;    /* one block, for partial writes; allocated on first use */
	uint8_t *zeros;	     /* one zeroed block, for write-zeroes; allocated on first use */
	ovl_base_read_fn base_read;
	void *base_opaque;
	struct iovec tmp[OVL_IOV_MAX];
};

/* ---- Small helpers ----------------------------------------------------------------------- */

static uint64_t round_up(uint64_t v, uint64_t align)
{
	return (v + align - 1) / align * align;
}

static bool is_pow2(uint64_t v)
{
	return v && !(v & (v - 1));
}

static int file_size(int fd, uint64_t *size)
{
	off_t end = lseek(fd, 0, SEEK_END);
	if (end < 0)
		return -errno;
	*size = (uint64_t)end;
	return 0;
}

int ovl_fd_rw(int fd, bool write, struct iovec *iov, int iovcnt, uint64_t offset)
{
	while (iovcnt > 0) {
		if (iov->iov_len == 0) {
			iov++;
			iovcnt--;
			continue;
		}
		if (offset > (uint64_t)INT64_MAX)
			return -EINVAL;
		int cnt = iovcnt > IOV_MAX ? IOV_MAX : iovcnt;
		ssize_t r = write ? pwritev(fd, iov, cnt, (off_t)offset)
				  : preadv(fd, iov, cnt, (off_t)offset);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -EIO; /* end of file on a read; a write that makes no progress */
		offset += (uint64_t)r;
		size_t left = (size_t)r;
		while (left) {
			if (left >= iov->iov_len) {
				left -= iov->iov_len;
				iov++;
				iovcnt--;
			} else {
				iov->iov_base = (uint8_t *)iov->iov_base + left;
				iov->iov_len -= left;
				left = 0;
			}
		}
	}
	return 0;
}

static int pread_full(int fd, void *buf, size_t len, uint64_t offset)
{
	struct iovec v = {buf, len};
	return ovl_fd_rw(fd, false, &v, 1, offset);
}

static int pwrite_full(int fd, const void *buf, size_t len, uint64_t offset)
{
	struct iovec v = {(void *)buf, len};
	return ovl_fd_rw(fd, true, &v, 1, offset);
}

/* Sum of @iovcnt lengths into @total; false when it overflows. */
static bool iov_total(const struct iovec *iov, int iovcnt, uint64_t *total)
{
	uint64_t t = 0;
	for (int i = 0; i < iovcnt; i++) {
		if (iov[i].iov_len > UINT64_MAX - t)
			return false;
		t += iov[i].iov_len;
	}
	*total = t;
	return true;
}

/* A position in an iovec array, handing out consecutive byte ranges as sub-arrays. */
struct iovcur {
	const struct iovec *iov;
	int n, i;
	size_t off;
};

/*
 * The next @len bytes as iovecs in @out (at most the number of source segments, which the
 * caller sized @out for). Returns the count.
 */
static int cur_take(struct iovcur *c, uint64_t len, struct iovec *out)
{
	int k = 0;
	while (len && c->i < c->n) {
		size_t avail = c->iov[c->i].iov_len - c->off;
		if (!avail) {
			c->i++;
			c->off = 0;
			continue;
		}
		size_t take = avail < len ? avail : (size_t)len;
		out[k].iov_base = (uint8_t *)c->iov[c->i].iov_base + c->off;
		out[k].iov_len = take;
		k++;
		c->off += take;
		len -= take;
	}
	return k;
}

/* Copy the next @len bytes out of the cursor into @dst. */
static void cur_copy(struct iovcur *c, struct iovec *tmp, uint8_t *dst, uint64_t len)
{
	int k = cur_take(c, len, tmp);
	for (int i = 0; i < k; i++) {
		memcpy(dst, tmp[i].iov_base, tmp[i].iov_len);
		dst += tmp[i].iov_len;
	}
}

/* ---- Content hash ------------------------------------------------------------------------ */

static int hash_range(EVP_MD_CTX *ctx, int fd, uint8_t *buf, size_t bufsize, uint64_t off,
		      uint64_t len)
{
	while (len) {
		size_t n = len < bufsize ? (size_t)len : bufsize;
		int err = pread_full(fd, buf, n, off);
		if (err)
			return err;
		if (EVP_DigestUpdate(ctx, buf, n) != 1)
			return -EIO;
		off += n;
		len -= n;
	}
	return 0;
}

int ovl_content_hash(int fd, uint8_t sha256[32])
{
	uint64_t size = 0;
	uint8_t lenbuf[8];
	unsigned int mdlen = 0;
	int err = file_size(fd, &size);
	if (err)
		return err;
	size_t bufsize = OVL_ID_EDGE;
	uint8_t *buf = malloc(bufsize);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	if (!buf || !ctx) {
		err = -ENOMEM;
		goto out;
	}
	for (int i = 0; i < 8; i++)
		lenbuf[i] = (uint8_t)(size >> (8 * i));
	if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(ctx, lenbuf, 8) != 1) {
		err = -EIO;
		goto out;
	}
	if (size <= OVL_ID_WHOLE_MAX) {
		err = hash_range(ctx, fd, buf, bufsize, 0, size);
	} else {
		err = hash_range(ctx, fd, buf, bufsize, 0, OVL_ID_EDGE);
		if (!err)
			err = hash_range(ctx, fd, buf, bufsize, size - OVL_ID_EDGE, OVL_ID_EDGE);
		for (unsigned int i = 0; i < OVL_ID_SAMPLES && !err; i++) {
			/* Exact: (size - 4096) * i / 63 in 128 bits, then down to a 4 KiB multiple.
			 */
			unsigned __int128 span = (unsigned __int128)(size - OVL_ID_SAMPLE_SIZE) * i;
			uint64_t off = (uint64_t)(span / (OVL_ID_SAMPLES - 1));
			off &= ~(uint64_t)(OVL_ID_SAMPLE_SIZE - 1);
			err = hash_range(ctx, fd, buf, bufsize, off, OVL_ID_SAMPLE_SIZE);
		}
	}
	if (!err && (EVP_DigestFinal_ex(ctx, sha256, &mdlen) != 1 || mdlen != 32))
		err = -EIO;
out:
	EVP_MD_CTX_free(ctx);
	free(buf);
	return err;
}

/* ---- Header ------------------------------------------------------------------------------ */

int ovl_header_encode(struct ovl_header *h, uint8_t *buf, size_t size)
{
	struct enc e;
	size_t plen = strnlen(h->base_path, OVL_PATH_MAX);
	if (plen == 0 || plen >= OVL_PATH_MAX)
		return -EINVAL;
	h->header_len = OVL_HEADER_MIN + (uint32_t)plen;
	if (size < h->header_len)
		return -ENOSPC;
	enc_init(&e);
	enc_bytes(&e, OVL_MAGIC, 8);
	enc_u16(&e, h->major);
	enc_u16(&e, h->minor);
	enc_u32(&e, h->header_len);
	enc_u32(&e, h->flags);
	enc_u32(&e, h->block_size);
	enc_u64(&e, h->virtual_size);
	enc_u64(&e, h->nblocks);
	enc_u64(&e, h->map_offset);
	enc_u64(&e, h->data_offset);
	enc_u64(&e, h->base_size);
	enc_bytes(&e, h->base_sha256, 32);
	enc_str(&e, h->base_path);
	int err = enc_error(&e);
	if (!err && e.len + 4 != h->header_len)
		err = -EINVAL;
	if (!err) {
		uint32_t crc = crc32c(0, e.buf, e.len);
		memcpy(buf, e.buf, e.len);
		for (int i = 0; i < 4; i++)
			buf[e.len + (size_t)i] = (uint8_t)(crc >> (8 * i));
	}
	enc_free(&e);
	return err;
}

#define BAD(...)                                                                                   \
	do {                                                                                       \
		log_err(__VA_ARGS__);                                                              \
		return -EBADMSG;                                                                   \
	} while (0)

int ovl_header_decode(struct ovl_header *h, const void *buf, size_t len, uint64_t file_size,
		      const char *name)
{
	struct dec d;
	const uint8_t *p = buf;
	char magic[8];

	memset(h, 0, sizeof(*h));
	dec_init(&d, buf, len);
	dec_bytes(&d, magic, 8);
	dec_u16(&d, &h->major);
	dec_u16(&d, &h->minor);
	dec_u32(&d, &h->header_len);
	if (dec_error(&d) || memcmp(magic, OVL_MAGIC, 8) != 0)
		BAD("%s: not a vmsnap overlay (no %s magic)", name, OVL_MAGIC);
	if (h->header_len < OVL_HEADER_MIN || h->header_len > OVL_HEADER_MAX ||
	    h->header_len > len || h->header_len > file_size)
		BAD("%s: overlay header length %u is impossible (file of %llu bytes)", name,
		    h->header_len, (unsigned long long)file_size);
	uint32_t want = (uint32_t)p[h->header_len - 4] | (uint32_t)p[h->header_len - 3] << 8 |
			(uint32_t)p[h->header_len - 2] << 16 | (uint32_t)p[h->header_len - 1] << 24;
	if (crc32c(0, p, h->header_len - 4) != want)
		BAD("%s: overlay header checksum mismatch", name);
	if (h->major == 0)
		BAD("%s: overlay format version 0.%u is invalid", name, h->minor);
	if (h->major > OVL_FORMAT_MAJOR) {
		log_err("%s: overlay format %u.%u is not supported: this vmsnap reads format %u.x "
			"(up to %u.%u); use a newer vmsnap",
			name, h->major, h->minor, OVL_FORMAT_MAJOR, OVL_FORMAT_MAJOR,
			OVL_FORMAT_MINOR);
		return -ENOTSUP;
	}
	/* Only the header proper from here: later minors append fields before the CRC. */
	dec_init(&d, buf, h->header_len - 4);
	dec_ptr(&d, 16); /* magic, version and length: read above */
	dec_u32(&d, &h->flags);
	dec_u32(&d, &h->block_size);
	dec_u64(&d, &h->virtual_size);
	dec_u64(&d, &h->nblocks);
	dec_u64(&d, &h->map_offset);
	dec_u64(&d, &h->data_offset);
	dec_u64(&d, &h->base_size);
	dec_bytes(&d, h->base_sha256, 32);
	dec_str(&d, h->base_path, sizeof(h->base_path));
	if (dec_error(&d))
		BAD("%s: overlay header fields overrun its length %u", name, h->header_len);
	if (h->flags & OVL_FLAGS_INCOMPAT_MASK) {
		log_err("%s: overlay uses incompatible features 0x%08x this vmsnap does not know",
			name, h->flags & OVL_FLAGS_INCOMPAT_MASK);
		return -ENOTSUP;
	}
	if (!is_pow2(h->block_size) || h->block_size < OVL_BLOCK_SIZE_MIN ||
	    h->block_size > OVL_BLOCK_SIZE_MAX)
		BAD("%s: overlay block size %u is not a power of two in [%u, %u]", name,
		    h->block_size, OVL_BLOCK_SIZE_MIN, OVL_BLOCK_SIZE_MAX);
	if (h->virtual_size < OVL_SECTOR_SIZE || h->virtual_size % OVL_SECTOR_SIZE)
		BAD("%s: overlay virtual size %llu is not a non-zero multiple of 512", name,
		    (unsigned long long)h->virtual_size);
	if (h->virtual_size > UINT64_MAX - h->block_size ||
	    h->nblocks != round_up(h->virtual_size, h->block_size) / h->block_size)
		BAD("%s: overlay block count %llu does not match its size %llu", name,
		    (unsigned long long)h->nblocks, (unsigned long long)h->virtual_size);
	if (h->nblocks > OVL_MAP_MAX_BYTES / 8)
		BAD("%s: overlay map of %llu entries is over the limit", name,
		    (unsigned long long)h->nblocks);
	uint64_t map_end = h->map_offset + h->nblocks * 8;
	if (h->map_offset % OVL_MAP_ALIGN || h->map_offset < h->header_len ||
	    h->map_offset > file_size || map_end > file_size)
		BAD("%s: overlay map at %llu (%llu entries) is misplaced (header %u bytes, file "
		    "%llu bytes)",
		    name, (unsigned long long)h->map_offset, (unsigned long long)h->nblocks,
		    h->header_len, (unsigned long long)file_size);
	if (h->data_offset % h->block_size || h->data_offset < map_end ||
	    h->data_offset > file_size)
		BAD("%s: overlay data offset %llu is misplaced (map ends at %llu, file %llu bytes)",
		    name, (unsigned long long)h->data_offset, (unsigned long long)map_end,
		    (unsigned long long)file_size);
	if (h->base_size != h->virtual_size)
		BAD("%s: overlay base size %llu differs from its virtual size %llu", name,
		    (unsigned long long)h->base_size, (unsigned long long)h->virtual_size);
	if (!h->base_path[0])
		BAD("%s: overlay names no base", name);
	return 0;
}

int ovl_probe(int fd)
{
	char magic[8];
	ssize_t r;
	do
		r = pread(fd, magic, sizeof(magic), 0);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	return r == (ssize_t)sizeof(magic) && memcmp(magic, OVL_MAGIC, 8) == 0;
}

/* ---- Paths ------------------------------------------------------------------------------- */

static int copy_path(char *out, size_t size, const char *s)
{
	if (strlen(s) >= size)
		return -ENAMETOOLONG;
	strcpy(out, s);
	return 0;
}

int ovl_base_path_for(const char *overlay_path, const char *base_path, char *out, size_t size)
{
	if (base_path[0] == '/' || !strchr(overlay_path, '/'))
		return copy_path(out, size, base_path);
	char *abs = realpath(base_path, NULL);
	if (!abs)
		return -errno;
	int err = copy_path(out, size, abs);
	free(abs);
	return err;
}

int ovl_resolve_base(const char *overlay_path, const char *stored, char *out, size_t size)
{
	const char *slash = strrchr(overlay_path, '/');
	if (stored[0] == '/' || !slash)
		return copy_path(out, size, stored);
	int n = snprintf(out, size, "%.*s/%s", (int)(slash - overlay_path), overlay_path, stored);
	return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

/* ---- Create ------------------------------------------------------------------------------ */

static int fsync_parent_dir(const char *path)
{
	char dir[OVL_PATH_MAX];
	const char *slash = strrchr(path, '/');
	if (!slash)
		strcpy(dir, ".");
	else if (slash == path)
		strcpy(dir, "/");
	else
		snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int err = fsync(fd) ? -errno : 0;
	close(fd);
	return err;
}

int ovl_create(const char *path, uint64_t virtual_size, uint32_t block_size, const char *base_path,
	       const uint8_t base_sha256[32])
{
	struct ovl_header h;
	uint8_t buf[OVL_HEADER_MIN + OVL_PATH_MAX];
	char tmp[OVL_PATH_MAX + 16];
	int err, fd;

	if (virtual_size < OVL_SECTOR_SIZE || virtual_size % OVL_SECTOR_SIZE ||
	    !is_pow2(block_size) || block_size < OVL_BLOCK_SIZE_MIN ||
	    block_size > OVL_BLOCK_SIZE_MAX || virtual_size > (1ull << 62)) {
		log_err("%s: cannot create an overlay of %llu bytes in %u-byte blocks", path,
			(unsigned long long)virtual_size, block_size);
		return -EINVAL;
	}
	memset(&h, 0, sizeof(h));
	h.major = OVL_FORMAT_MAJOR;
	h.minor = OVL_FORMAT_MINOR;
	h.block_size = block_size;
	h.virtual_size = virtual_size;
	h.nblocks = round_up(virtual_size, block_size) / block_size;
	h.base_size = virtual_size;
	memcpy(h.base_sha256, base_sha256, 32);
	if (h.nblocks > OVL_MAP_MAX_BYTES / 8) {
		log_err("%s: a disk of %llu bytes needs a map over %llu bytes at %u-byte blocks",
			path, (unsigned long long)virtual_size, OVL_MAP_MAX_BYTES, block_size);
		return -EFBIG;
	}
	if (copy_path(h.base_path, sizeof(h.base_path), base_path) || !base_path[0]) {
		log_err("%s: base path '%s' is empty or too long", path, base_path);
		return -ENAMETOOLONG;
	}
	err = ovl_header_encode(&h, buf, sizeof(buf));
	if (err) {
		log_err("%s: cannot encode the overlay header", path);
		return err;
	}
	h.map_offset = round_up(h.header_len, OVL_MAP_ALIGN);
	h.data_offset = round_up(h.map_offset + h.nblocks * 8, block_size);
	err = ovl_header_encode(&h, buf, sizeof(buf));
	if (err)
		return err;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp.XXXXXX", path) >= (int)sizeof(tmp)) {
		log_err("%s: path too long", path);
		return -ENAMETOOLONG;
	}
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		err = -errno;
		log_errno("%s: cannot create a temporary file for the overlay", path);
		return err;
	}
	err = pwrite_full(fd, buf, h.header_len, 0);
	if (!err && ftruncate(fd, (off_t)h.data_offset))
		err = -errno;
	if (!err && fsync(fd))
		err = -errno;
	if (close(fd) && !err)
		err = -errno;
	if (err) {
		errno = -err;
		log_errno("%s: cannot write the overlay", tmp);
		goto fail;
	}
	if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE)) {
		err = -errno;
		if (err == -EINVAL || err == -ENOSYS) {
			/* The filesystem cannot rename without replacing: link refuses too. */
			err = link(tmp, path) ? -errno : 0;
			unlink(tmp);
		}
		if (err) {
			errno = -err;
			log_errno("%s: cannot create the overlay", path);
			goto fail;
		}
	}
	err = fsync_parent_dir(path);
	if (err) {
		errno = -err;
		log_errno("%s: cannot sync the overlay's directory", path);
	}
	return err;
fail:
	unlink(tmp);
	return err;
}

/* ---- Open and close ---------------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Read the map and check every entry against the file. */
static int load_map(struct ovl *o, uint64_t fsize)
{
	const struct ovl_header *h = &o->h;
	uint64_t *present = NULL;
	uint64_t npresent = 0;
	int err;

	o->map = malloc(h->nblocks * 8);
	o->dirty =
	    calloc((h->nblocks + ENTRIES_PER_MAP_PAGE * 64 - 1) / (ENTRIES_PER_MAP_PAGE * 64), 8);
	if (!o->map || !o->dirty)
		return -ENOMEM;
	err = pread_full(o->fd, o->map, h->nblocks * 8, h->map_offset);
	if (err) {
		errno = -err;
		log_errno("%s: cannot read the overlay map", o->name);
		return err;
	}
	for (uint64_t b = 0; b < h->nblocks; b++) {
		const uint8_t *p = (const uint8_t *)&o->map[b];
		uint64_t e = 0;
		for (int i = 7; i >= 0; i--)
			e = e << 8 | p[i];
		o->map[b] = e;
		if (e == OVL_ENTRY_ABSENT)
			continue;
		o->used++;
		if (e == OVL_ENTRY_ZERO)
			continue;
		if (e % h->block_size || e < h->data_offset || e > fsize ||
		    fsize - e < h->block_size) {
			log_err("%s: overlay map entry %llu (offset %llu) points outside the data "
				"area [%llu, %llu) or is misaligned",
				o->name, (unsigned long long)b, (unsigned long long)e,
				(unsigned long long)h->data_offset, (unsigned long long)fsize);
			return -EBADMSG;
		}
	}
	/* No two blocks may share data (a write to one would change the other). */
	present = malloc((o->used ? o->used : 1) * 8);
	if (!present)
		return -ENOMEM;
	for (uint64_t b = 0; b < h->nblocks; b++)
		if (o->map[b] > OVL_ENTRY_ZERO)
			present[npresent++] = o->map[b];
	qsort(present, npresent, 8, cmp_u64);
	for (uint64_t i = 1; i < npresent; i++) {
		if (present[i] == present[i - 1]) {
			log_err("%s: overlay map has two blocks at file offset %llu", o->name,
				(unsigned long long)present[i]);
			free(present);
			return -EBADMSG;
		}
	}
	free(present);
	return 0;
}

int ovl_open(struct ovl **out, int fd, const char *name, bool writable)
{
	uint8_t hbuf[OVL_HEADER_MAX];
	uint64_t fsize = 0;
	struct stat st;
	ssize_t r;
	int err;

	*out = NULL;
	struct ovl *o = calloc(1, sizeof(*o));
	if (!o) {
		close(fd);
		return -ENOMEM;
	}
	o->fd = fd;
	o->writable = writable;
	snprintf(o->name, sizeof(o->name), "%s", name);
	if (fstat(fd, &st) || file_size(fd, &fsize)) {
		err = -errno;
		log_errno("%s: cannot stat the overlay", name);
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		log_err("%s: an overlay must be a regular file", name);
		err = -EINVAL;
		goto fail;
	}
	do
		r = pread(fd, hbuf, sizeof(hbuf), 0);
	while (r < 0 && errno == EINTR);
	if (r < 0) {
		err = -errno;
		log_errno("%s: cannot read the overlay header", name);
		goto fail;
	}
	err = ovl_header_decode(&o->h, hbuf, (size_t)r, fsize, name);
	if (err)
		goto fail;
	err = load_map(o, fsize);
	if (err)
		goto fail;
	o->next_alloc = round_up(fsize, o->h.block_size);
	if (o->next_alloc < o->h.data_offset)
		o->next_alloc = o->h.data_offset;
	*out = o;
	return 0;
fail:
	o->writable = false; /* nothing to flush */
	ovl_close(o);
	return err;
}

const struct ovl_header *ovl_get_header(const struct ovl *o)
{
	return &o->h;
}

int ovl_get_fd(const struct ovl *o)
{
	return o->fd;
}

void ovl_set_base(struct ovl *o, ovl_base_read_fn fn, void *opaque)
{
	o->base_read = fn;
	o->base_opaque = opaque;
}

uint64_t ovl_blocks_used(const struct ovl *o)
{
	return o->used;
}

uint64_t ovl_map_entry(const struct ovl *o, uint64_t b)
{
	return b < o->h.nblocks ? o->map[b] : OVL_ENTRY_ABSENT;
}

int ovl_close(struct ovl *o)
{
	int err = 0;
	if (!o)
		return 0;
	if (o->writable && o->map)
		err = ovl_flush(o);
	if (o->fd >= 0)
		close(o->fd);
	free(o->map);
	free(o->dirty);
	free(o->scratch);
	free(o->zeros);
	free(o);
	return err;
}

/* ---- Reads ------------------------------------------------------------------------------- */

enum kind { K_ABSENT, K_ZERO, K_DATA };

static enum kind kind_of(uint64_t e)
{
	return e == OVL_ENTRY_ABSENT ? K_ABSENT : e == OVL_ENTRY_ZERO ? K_ZERO : K_DATA;
}

static int io_error(const struct ovl *o, const char *what, uint64_t off, int err)
{
	log_ratelimited(LOG_ERR, "overlay %s: %s at offset %llu: %s", o->name, what,
			(unsigned long long)off, strerror(-err));
	return err;
}

static int read_base(struct ovl *o, const struct iovec *iov, int cnt, uint64_t off)
{
	if (!o->base_read)
		return io_error(o, "read of a block from an unset base", off, -EIO);
	return o->base_read(o->base_opaque, iov, cnt, off);
}

static int check_range(const struct ovl *o, const struct iovec *iov, int iovcnt, uint64_t offset,
		       uint64_t *total)
{
	if (iovcnt < 0 || iovcnt > OVL_IOV_MAX || !iov_total(iov, iovcnt, total) ||
	    offset > o->h.virtual_size || *total > o->h.virtual_size - offset)
		return -EINVAL;
	return 0;
}

/*
 * Length of the run starting at virtual @pos (< @end) whose blocks have the kind of the first
 * and, for data, lie back to back in the file.
 */
static uint64_t run_length(const struct ovl *o, uint64_t pos, uint64_t end)
{
	uint64_t bs = o->h.block_size, b = pos / bs;
	uint64_t first = o->map[b];
	uint64_t len = (b + 1) * bs - pos;
	for (uint64_t nb = b + 1; len < end - pos; nb++) {
		uint64_t e = o->map[nb];
		if (kind_of(e) != kind_of(first) ||
		    (kind_of(e) == K_DATA && e != first + (nb - b) * bs))
			break;
		len += bs;
	}
	return len < end - pos ? len : end - pos;
}

int ovl_preadv(struct ovl *o, const struct iovec *iov, int iovcnt, uint64_t offset)
{
	uint64_t total, bs = o->h.block_size;
	int err = check_range(o, iov, iovcnt, offset, &total);
	if (err)
		return err;
	struct iovcur cur = {iov, iovcnt, 0, 0};
	for (uint64_t pos = offset, end = offset + total; pos < end;) {
		uint64_t e = o->map[pos / bs];
		uint64_t len = run_length(o, pos, end);
		int cnt = cur_take(&cur, len, o->tmp);
		switch (kind_of(e)) {
		case K_ABSENT: err = read_base(o, o->tmp, cnt, pos); break;
		case K_ZERO:
			for (int i = 0; i < cnt; i++)
				memset(o->tmp[i].iov_base, 0, o->tmp[i].iov_len);
			break;
		case K_DATA:
			err = ovl_fd_rw(o->fd, false, o->tmp, cnt, e + pos % bs);
			if (err)
				io_error(o, "read", e + pos % bs, err);
			break;
		}
		if (err)
			return err;
		pos += len;
	}
	return 0;
}

/* ---- Writes ------------------------------------------------------------------------------ */

static void set_entry(struct ovl *o, uint64_t b, uint64_t v)
{
	uint64_t page = b / ENTRIES_PER_MAP_PAGE;
	if (o->map[b] == OVL_ENTRY_ABSENT && v != OVL_ENTRY_ABSENT)
		o->used++;
	o->map[b] = v;
	if (!(o->dirty[page / 64] & (1ull << (page % 64)))) {
		o->dirty[page / 64] |= 1ull << (page % 64);
		o->ndirty++;
	}
}

/* Bytes of block @b inside the virtual disk (the last block may be short). */
static uint64_t block_len(const struct ovl *o, uint64_t b)
{
	uint64_t start = b * o->h.block_size;
	uint64_t left = o->h.virtual_size - start;
	return left < o->h.block_size ? left : o->h.block_size;
}

/*
 * Write @len bytes from the cursor into block @b (not held by the overlay) at @inb: build the
 * whole block in the scratch buffer (the rest from the base, or zeros), append it, map it.
 */
static int write_new_partial(struct ovl *o, uint64_t b, uint64_t inb, uint64_t len,
			     struct iovcur *cur)
{
	uint64_t bs = o->h.block_size, blen = block_len(o, b);
	int err = 0;
	if (!o->scratch && !(o->scratch = malloc(bs)))
		return -ENOMEM;
	memset(o->scratch + blen, 0, bs - blen);
	if (o->map[b] == OVL_ENTRY_ZERO) {
		memset(o->scratch, 0, blen);
	} else {
		/* Read-through: the unwritten part of the block keeps the base's bytes. */
		struct iovec v = {o->scratch, blen};
		err = read_base(o, &v, 1, b * bs);
		if (err)
			return err;
	}
	cur_copy(cur, o->tmp, o->scratch + inb, len);
	uint64_t at = o->next_alloc;
	err = pwrite_full(o->fd, o->scratch, bs, at);
	if (err)
		return io_error(o, "write of a new block", at, err);
	o->next_alloc += bs;
	set_entry(o, b, at);
	return 0;
}

int ovl_pwritev(struct ovl *o, const struct iovec *iov, int iovcnt, uint64_t offset)
{
	uint64_t total, bs = o->h.block_size;
	int err;
	if (!o->writable)
		return -EROFS;
	err = check_range(o, iov, iovcnt, offset, &total);
	if (err)
		return err;
	struct iovcur cur = {iov, iovcnt, 0, 0};
	for (uint64_t pos = offset, end = offset + total; pos < end;) {
		uint64_t b = pos / bs, inb = pos % bs;
		uint64_t e = o->map[b];
		if (kind_of(e) == K_DATA) {
			uint64_t len = run_length(o, pos, end);
			int cnt = cur_take(&cur, len, o->tmp);
			err = ovl_fd_rw(o->fd, true, o->tmp, cnt, e + inb);
			if (err)
				return io_error(o, "write", e + inb, err);
			pos += len;
			continue;
		}
		uint64_t len = block_len(o, b) - inb;
		if (len > end - pos)
			len = end - pos;
		if (inb != 0 || len < bs) {
			/* Part of a block (or the short last block): built whole in scratch. */
			err = write_new_partial(o, b, inb, len, &cur);
			if (err)
				return err;
			pos += len;
			continue;
		}
		/*
		 * Whole blocks not held: one write of the caller's buffers to consecutive new
		 * blocks at the end of the file, then their entries.
		 */
		uint64_t nb = 1;
		while (end - pos >= (nb + 1) * bs && kind_of(o->map[b + nb]) != K_DATA)
			nb++;
		int cnt = cur_take(&cur, nb * bs, o->tmp);
		uint64_t at = o->next_alloc;
		err = ovl_fd_rw(o->fd, true, o->tmp, cnt, at);
		if (err)
			return io_error(o, "write of new blocks", at, err);
		o->next_alloc += nb * bs;
		for (uint64_t i = 0; i < nb; i++)
			set_entry(o, b + i, at + i * bs);
		pos += nb * bs;
	}
	return 0;
}

/* Make the data of a held block read as zeros, freeing its space where the filesystem can. */
static int zero_data(struct ovl *o, uint64_t at, uint64_t len)
{
	if (!fallocate(o->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)at, (off_t)len))
		return 0;
	if (errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL)
		return io_error(o, "punch", at, -errno);
	int err = pwrite_full(o->fd, o->zeros, len, at);
	return err ? io_error(o, "write of zeros", at, err) : 0;
}

static int zero_range(struct ovl *o, uint64_t offset, uint64_t len, bool partial)
{
	uint64_t bs = o->h.block_size;
	int err;
	if (!o->writable)
		return -EROFS;
	if (offset > o->h.virtual_size || len > o->h.virtual_size - offset)
		return -EINVAL;
	if (!o->zeros && !(o->zeros = calloc(1, bs)))
		return -ENOMEM;
	for (uint64_t pos = offset, end = offset + len; pos < end;) {
		uint64_t b = pos / bs, inb = pos % bs;
		uint64_t seg = bs - inb < end - pos ? bs - inb : end - pos;
		uint64_t e = o->map[b];
		if (inb == 0 && seg == block_len(o, b)) {
			err = 0;
			if (kind_of(e) == K_DATA)
				err = zero_data(o, e, bs);
			else if (e == OVL_ENTRY_ABSENT)
				set_entry(o, b, OVL_ENTRY_ZERO);
		} else if (partial && e != OVL_ENTRY_ZERO) {
			struct iovec v = {o->zeros, seg};
			err = ovl_pwritev(o, &v, 1, pos);
		} else {
			err = 0;
		}
		if (err)
			return err;
		pos += seg;
	}
	return 0;
}

int ovl_write_zeroes(struct ovl *o, uint64_t offset, uint64_t len)
{
	return zero_range(o, offset, len, true);
}

int ovl_discard(struct ovl *o, uint64_t offset, uint64_t len)
{
	return zero_range(o, offset, len, false);
}

/* ---- Flush ------------------------------------------------------------------------------- */

int ovl_flush(struct ovl *o)
{
	uint8_t page[OVL_MAP_ALIGN];
	if (!o->writable)
		return 0;
	if (o->ndirty) {
		/* Data first: an entry must never reach the disk before the block it names. */
		if (fdatasync(o->fd))
			return io_error(o, "fdatasync", 0, -errno);
		uint64_t npages = (o->h.nblocks + ENTRIES_PER_MAP_PAGE - 1) / ENTRIES_PER_MAP_PAGE;
		for (uint64_t p = 0; p < npages; p++) {
			if (!(o->dirty[p / 64] & (1ull << (p % 64))))
				continue;
			uint64_t first = p * ENTRIES_PER_MAP_PAGE;
			uint64_t n = o->h.nblocks - first;
			if (n > ENTRIES_PER_MAP_PAGE)
				n = ENTRIES_PER_MAP_PAGE;
			for (uint64_t i = 0; i < n; i++)
				for (int k = 0; k < 8; k++)
					page[i * 8 + (uint64_t)k] =
					    (uint8_t)(o->map[first + i] >> (8 * k));
			uint64_t at = o->h.map_offset + first * 8;
			int err = pwrite_full(o->fd, page, n * 8, at);
			if (err)
				return io_error(o, "write of the map", at, err);
			o->dirty[p / 64] &= ~(1ull << (p % 64));
			o->ndirty--;
		}
	}
	if (fdatasync(o->fd))
		return io_error(o, "fdatasync", 0, -errno);
	return 0;
}

int ovl_seal(struct ovl *o)
{
	int err = ovl_flush(o);
	if (!err)
		o->writable = false;
	return err;
}
