/* SPDX-License-Identifier: MIT */
#include "blkdev.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/log.h"

/* One file of the stack: the raw bottom, or an overlay reading through to the layer below. */
struct layer {
	int fd;		 /* raw: the file; overlay: -1 (struct ovl owns its fd) */
	struct ovl *ovl; /* NULL for the raw bottom */
	char path[OVL_PATH_MAX];
	uint64_t size; /* virtual size */
	bool writable; /* the top of a writable disk; never again once frozen */
	bool hashed;   /* sha256 is valid (read-only layers only: they cannot change) */
	uint8_t sha256[32];
	uint32_t granularity;
};

struct blkdev {
	pthread_mutex_t lock;
	bool readonly;
	unsigned int n; /* layers[0] raw, layers[n-1] the top */
	struct layer layers[OVL_MAX_DEPTH + 1];
};

static const uint8_t zero_chunk[64 << 10];

static struct layer *top(struct blkdev *d)
{
	return &d->layers[d->n - 1];
}

static int layer_fd(const struct layer *l)
{
	return l->ovl ? ovl_get_fd(l->ovl) : l->fd;
}

static int raw_read(struct layer *l, const struct iovec *iov, int iovcnt, uint64_t offset)
{
	struct iovec v[OVL_IOV_MAX];
	if (iovcnt < 0 || iovcnt > OVL_IOV_MAX)
		return -EINVAL;
	memcpy(v, iov, sizeof(*iov) * (size_t)iovcnt);
	int err = ovl_fd_rw(l->fd, false, v, iovcnt, offset);
	if (err)
		log_ratelimited(LOG_ERR, "disk %s: read at %llu: %s", l->path,
				(unsigned long long)offset, strerror(-err));
	return err;
}

/* The base reader handed to the overlay above @opaque (a struct layer). */
static int layer_read(void *opaque, const struct iovec *iov, int iovcnt, uint64_t offset)
{
	struct layer *l = opaque;
	return l->ovl ? ovl_preadv(l->ovl, iov, iovcnt, offset) : raw_read(l, iov, iovcnt, offset);
}

/* Content hash of a layer, cached once it can no longer change. */
static int layer_hash(struct layer *l, uint8_t sha256[32])
{
	if (l->hashed) {
		memcpy(sha256, l->sha256, 32);
		return 0;
	}
	int err = ovl_content_hash(layer_fd(l), sha256);
	if (err) {
		errno = -err;
		log_errno("disk %s: cannot read it to compute its content hash", l->path);
		return err;
	}
	if (!l->writable) {
		memcpy(l->sha256, sha256, 32);
		l->hashed = true;
	}
	return 0;
}

static int layer_flush(struct layer *l)
{
	if (!l->writable)
		return 0;
	if (l->ovl)
		return ovl_flush(l->ovl);
	if (fdatasync(l->fd)) {
		int err = -errno;
		log_ratelimited(LOG_ERR, "disk %s: fdatasync: %s", l->path, strerror(-err));
		return err;
	}
	return 0;
}

/* Check that @below is the base the overlay @name (header @h) was made on. */
static int check_base(const char *name, const struct ovl_header *h, struct layer *below)
{
	uint8_t sha[32];
	if (below->size != h->base_size) {
		log_err("overlay %s was made on base %s of %llu bytes, but %s has %llu bytes", name,
			h->base_path, (unsigned long long)h->base_size, below->path,
			(unsigned long long)below->size);
		return -ESTALE;
	}
	int err = layer_hash(below, sha);
	if (err)
		return err;
	if (memcmp(sha, h->base_sha256, 32) != 0) {
		log_err(
		    "overlay %s was made on base %s of %llu bytes with a different content hash "
		    "(%s changed since, or is another disk)",
		    name, h->base_path, (unsigned long long)h->base_size, below->path);
		return -ESTALE;
	}
	return 0;
}

static void push_layer(struct blkdev *d, const struct layer *l)
{
	struct layer *dst = &d->layers[d->n++];
	*dst = *l;
	if (dst->ovl && d->n > 1)
		ovl_set_base(dst->ovl, layer_read, &d->layers[d->n - 2]);
}

static void close_layer(struct layer *l)
{
	if (l->ovl)
		ovl_close(l->ovl);
	else if (l->fd >= 0)
		close(l->fd);
	l->ovl = NULL;
	l->fd = -1;
}

static int open_raw(struct layer *l, int fd, const struct stat *st)
{
	off_t end = lseek(fd, 0, SEEK_END);
	if (end < 0) {
		int err = -errno;
		log_errno("disk %s: cannot find its size", l->path);
		return err;
	}
	l->fd = fd;
	l->size = (uint64_t)end;
	if (l->size < OVL_SECTOR_SIZE) {
		log_err("disk %s is %llu bytes: smaller than one 512-byte sector", l->path,
			(unsigned long long)l->size);
		return -EINVAL;
	}
	if (l->size % OVL_SECTOR_SIZE) {
		log_err("disk %s is %llu bytes, not a multiple of 512: extend it to whole sectors "
			"(truncate -s %%512 %s)",
			l->path, (unsigned long long)l->size, l->path);
		return -EINVAL;
	}
	uint32_t g = (uint32_t)st->st_blksize;
	l->granularity = g >= OVL_SECTOR_SIZE && g <= (1u << 20) && !(g & (g - 1)) ? g : 4096;
	return 0;
}

/*
 * Open @path and, when it is an overlay, its chain below it first, pushing layers bottom-up.
 * @depth: overlays above this one.
 */
static int open_chain(struct blkdev *d, const char *path, bool writable, unsigned int depth)
{
	struct layer l = {.fd = -1, .writable = writable};
	struct stat st;
	int err;

	if (strlen(path) >= sizeof(l.path)) {
		log_err("disk path too long: %.64s...", path);
		return -ENAMETOOLONG;
	}
	strcpy(l.path, path);
	int fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (fd < 0) {
		err = -errno;
		log_errno("disk %s: cannot open%s", path, writable ? " for writing" : "");
		return err;
	}
	if (fstat(fd, &st)) {
		err = -errno;
		log_errno("disk %s: cannot stat", path);
		close(fd);
		return err;
	}
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		log_err("disk %s is not a regular file or a block device", path);
		close(fd);
		return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
	}
	err = ovl_probe(fd);
	if (err < 0) {
		errno = -err;
		log_errno("disk %s: cannot read", path);
		close(fd);
		return err;
	}
	if (err == 0) {
		err = open_raw(&l, fd, &st);
		if (err) {
			close(fd);
			return err;
		}
		push_layer(d, &l);
		return 0;
	}

	if (depth >= OVL_MAX_DEPTH) {
		log_err("disk %s: overlay chain deeper than %u levels (or a loop)", path,
			OVL_MAX_DEPTH);
		close(fd);
		return -ELOOP;
	}
	err = ovl_open(&l.ovl, fd, path, writable);
	if (err)
		return err;
	const struct ovl_header *h = ovl_get_header(l.ovl);
	char base[OVL_PATH_MAX];
	err = ovl_resolve_base(path, h->base_path, base, sizeof(base));
	if (err) {
		log_err("overlay %s: base path too long", path);
		goto fail;
	}
	err = open_chain(d, base, false, depth + 1);
	if (err) {
		log_err("overlay %s: cannot open its base %s", path, base);
		goto fail;
	}
	err = check_base(path, h, top(d));
	if (err)
		goto fail;
	l.size = h->virtual_size;
	l.granularity = h->block_size;
	push_layer(d, &l);
	return 0;
fail:
	ovl_close(l.ovl);
	return err;
}

/* Open (creating if needed) the overlay @path on the current top of @d and push it. */
static int open_top_overlay(struct blkdev *d, const char *path, bool readonly)
{
	struct layer l = {.fd = -1, .writable = !readonly};
	struct layer *below = top(d);
	bool created = false;
	int err;

	if (d->n - 1 >= OVL_MAX_DEPTH) {
		log_err("overlay %s: the chain below it already has %u overlays (the limit)", path,
			OVL_MAX_DEPTH);
		return -ELOOP;
	}
	if (strlen(path) >= sizeof(l.path)) {
		log_err("overlay path too long: %.64s...", path);
		return -ENAMETOOLONG;
	}
	strcpy(l.path, path);
	int fd = open(path, (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT && !readonly) {
		uint8_t sha[32];
		char stored[OVL_PATH_MAX];
		err = layer_hash(below, sha);
		if (err)
			return err;
		err = ovl_base_path_for(path, below->path, stored, sizeof(stored));
		if (err) {
			errno = -err;
			log_errno("overlay %s: cannot name its base %s", path, below->path);
			return err;
		}
		err = ovl_create(path, below->size, OVL_BLOCK_SIZE_DEFAULT, stored, sha);
		if (err && err != -EEXIST) /* -EEXIST: made meanwhile; check it below */
			return err;
		created = !err;
		fd = open(path, O_RDWR | O_CLOEXEC);
	}
	if (fd < 0) {
		err = -errno;
		if (err == -ENOENT && readonly)
			log_err("overlay %s does not exist (a read-only disk does not create one)",
				path);
		else
			log_errno("overlay %s: cannot open", path);
		return err;
	}
	err = ovl_open(&l.ovl, fd, path, !readonly);
	if (err)
		goto fail;
	const struct ovl_header *h = ovl_get_header(l.ovl);
	err = check_base(path, h, below);
	if (err)
		goto fail;
	l.size = h->virtual_size;
	l.granularity = h->block_size;
	push_layer(d, &l);
	return 0;
fail:
	ovl_close(l.ovl);
	if (created)
		unlink(path);
	return err;
}

int blkdev_open(struct blkdev **out, const char *path, bool readonly, const char *overlay_path)
{
	int err;
	*out = NULL;
	struct blkdev *d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	pthread_mutex_init(&d->lock, NULL);
	d->readonly = readonly;
	err = open_chain(d, path, !readonly && !overlay_path, 0);
	if (!err && overlay_path)
		err = open_top_overlay(d, overlay_path, readonly);
	if (err) {
		d->readonly = true; /* nothing to flush */
		blkdev_close(d);
		return err;
	}
	*out = d;
	return 0;
}

int blkdev_close(struct blkdev *d)
{
	int err = 0;
	if (!d)
		return 0;
	if (d->n && !d->readonly)
		err = layer_flush(top(d));
	for (unsigned int i = d->n; i-- > 0;)
		close_layer(&d->layers[i]);
	pthread_mutex_destroy(&d->lock);
	free(d);
	return err;
}

uint64_t blkdev_size(const struct blkdev *d)
{
	return d->layers[d->n - 1].size;
}

bool blkdev_readonly(const struct blkdev *d)
{
	return d->readonly;
}

uint32_t blkdev_discard_granularity(const struct blkdev *d)
{
	return d->layers[d->n - 1].granularity;
}

/* ---- I/O --------------------------------------------------------------------------------- */

static int check_io(const struct blkdev *d, const struct iovec *iov, int iovcnt, uint64_t offset,
		    uint64_t *total)
{
	uint64_t t = 0, size = blkdev_size(d);
	if (iovcnt < 0 || iovcnt > OVL_IOV_MAX)
		return -EINVAL;
	for (int i = 0; i < iovcnt; i++) {
		if (iov[i].iov_len > UINT64_MAX - t)
			return -EINVAL;
		t += iov[i].iov_len;
	}
	if (offset > size || t > size - offset)
		return -EINVAL;
	*total = t;
	return 0;
}

/*
 * Write to a raw disk. It must never start with the overlay magic, or the next open would take
 * it for an overlay naming any host file as its base: the bytes bound for [0, 8) are copied
 * first (a guest vCPU could change its buffer between a check and the write) and checked,
 * together with the bytes already there, then written from that copy.
 */
static int raw_write(struct layer *l, const struct iovec *iov, int iovcnt, uint64_t offset)
{
	struct iovec v[OVL_IOV_MAX];
	uint8_t head[8];
	size_t nhead = 0;
	int err = 0, first = 0;

	memcpy(v, iov, sizeof(*iov) * (size_t)iovcnt);
	if (offset < sizeof(head)) {
		struct iovec hv = {head, sizeof(head)};
		err = ovl_fd_rw(l->fd, false, &hv, 1, 0);
		/* Take the guest's bytes for [offset, 8) out of the iovecs into head[]. */
		while (!err && offset + nhead < sizeof(head) && first < iovcnt) {
			size_t n = v[first].iov_len;
			if (n > sizeof(head) - offset - nhead)
				n = sizeof(head) - offset - nhead;
			memcpy(head + offset + nhead, v[first].iov_base, n);
			nhead += n;
			v[first].iov_base = (uint8_t *)v[first].iov_base + n;
			v[first].iov_len -= n;
			if (!v[first].iov_len)
				first++;
		}
		if (!err && memcmp(head, OVL_MAGIC, sizeof(head)) == 0) {
			log_ratelimited(LOG_WARN,
					"disk %s: refused a write that would make the raw disk "
					"start with the overlay magic",
					l->path);
			return -EPERM;
		}
		if (!err && nhead) {
			struct iovec w = {head + offset, nhead};
			err = ovl_fd_rw(l->fd, true, &w, 1, offset);
		}
	}
	if (!err)
		err = ovl_fd_rw(l->fd, true, v + first, iovcnt - first, offset + nhead);
	if (err)
		log_ratelimited(LOG_ERR, "disk %s: write at %llu: %s", l->path,
				(unsigned long long)offset, strerror(-err));
	return err;
}

int blkdev_preadv(struct blkdev *d, const struct iovec *iov, int iovcnt, uint64_t offset)
{
	uint64_t total;
	int err = check_io(d, iov, iovcnt, offset, &total);
	if (err)
		return err;
	pthread_mutex_lock(&d->lock);
	err = layer_read(top(d), iov, iovcnt, offset);
	pthread_mutex_unlock(&d->lock);
	return err;
}

int blkdev_pwritev(struct blkdev *d, const struct iovec *iov, int iovcnt, uint64_t offset)
{
	uint64_t total;
	int err = check_io(d, iov, iovcnt, offset, &total);
	if (err)
		return err;
	if (d->readonly)
		return -EROFS;
	pthread_mutex_lock(&d->lock);
	struct layer *l = top(d);
	err = l->ovl ? ovl_pwritev(l->ovl, iov, iovcnt, offset) : raw_write(l, iov, iovcnt, offset);
	pthread_mutex_unlock(&d->lock);
	return err;
}

int blkdev_pread(struct blkdev *d, void *buf, uint64_t len, uint64_t offset)
{
	struct iovec v = {buf, (size_t)len};
	return blkdev_preadv(d, &v, 1, offset);
}

int blkdev_pwrite(struct blkdev *d, const void *buf, uint64_t len, uint64_t offset)
{
	struct iovec v = {(void *)buf, (size_t)len};
	return blkdev_pwritev(d, &v, 1, offset);
}

int blkdev_flush(struct blkdev *d)
{
	if (d->readonly)
		return 0;
	pthread_mutex_lock(&d->lock);
	int err = layer_flush(top(d));
	pthread_mutex_unlock(&d->lock);
	return err;
}

static int check_zero_range(struct blkdev *d, uint64_t offset, uint64_t len)
{
	uint64_t size = blkdev_size(d);
	if (offset > size || len > size - offset)
		return -EINVAL;
	return d->readonly ? -EROFS : 0;
}

static bool falloc_unsupported(int err)
{
	return err == -EOPNOTSUPP || err == -ENOSYS || err == -EINVAL || err == -ENODEV;
}

static int raw_falloc(struct layer *l, int mode, uint64_t offset, uint64_t len)
{
	if (fallocate(l->fd, mode | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)len) == 0)
		return 0;
	return -errno;
}

static int raw_write_zeroes(struct layer *l, uint64_t offset, uint64_t len, bool may_unmap)
{
	int err = -EOPNOTSUPP;
	if (may_unmap)
		err = raw_falloc(l, FALLOC_FL_PUNCH_HOLE, offset, len);
	if (err && falloc_unsupported(err))
		err = raw_falloc(l, FALLOC_FL_ZERO_RANGE, offset, len);
	if (err && falloc_unsupported(err)) {
		/* The filesystem (or device) has neither: write zeros, 1 MiB per call. */
		struct iovec v[16];
		err = 0;
		while (len && !err) {
			int cnt = 0;
			uint64_t n = 0;
			while (cnt < 16 && n < len) {
				uint64_t c =
				    len - n < sizeof(zero_chunk) ? len - n : sizeof(zero_chunk);
				v[cnt].iov_base = (void *)zero_chunk;
				v[cnt++].iov_len = (size_t)c;
				n += c;
			}
			err = ovl_fd_rw(l->fd, true, v, cnt, offset);
			offset += n;
			len -= n;
		}
	}
	if (err)
		log_ratelimited(LOG_ERR, "disk %s: zeroing at %llu: %s", l->path,
				(unsigned long long)offset, strerror(-err));
	return err;
}

int blkdev_write_zeroes(struct blkdev *d, uint64_t offset, uint64_t len, bool may_unmap)
{
	int err = check_zero_range(d, offset, len);
	if (err || !len)
		return err;
	pthread_mutex_lock(&d->lock);
	struct layer *l = top(d);
	err = l->ovl ? ovl_write_zeroes(l->ovl, offset, len)
		     : raw_write_zeroes(l, offset, len, may_unmap);
	pthread_mutex_unlock(&d->lock);
	return err;
}

int blkdev_discard(struct blkdev *d, uint64_t offset, uint64_t len)
{
	int err = check_zero_range(d, offset, len);
	if (err || !len)
		return err;
	pthread_mutex_lock(&d->lock);
	struct layer *l = top(d);
	if (l->ovl) {
		err = ovl_discard(l->ovl, offset, len);
	} else {
		err = raw_falloc(l, FALLOC_FL_PUNCH_HOLE, offset, len);
		if (falloc_unsupported(err))
			err = 0; /* a hint the filesystem cannot take */
		if (err)
			log_ratelimited(LOG_ERR, "disk %s: discard at %llu: %s", l->path,
					(unsigned long long)offset, strerror(-err));
	}
	pthread_mutex_unlock(&d->lock);
	return err;
}

/* ---- Identity and freezing --------------------------------------------------------------- */

static int layer_identity(struct layer *l, struct blkdev_identity *out)
{
	int err = layer_flush(l);
	if (!err)
		err = layer_hash(l, out->sha256);
	if (err)
		return err;
	strcpy(out->path, l->path);
	out->size = l->size;
	return 0;
}

int blkdev_identity(struct blkdev *d, struct blkdev_identity *out)
{
	pthread_mutex_lock(&d->lock);
	unsigned int i = d->n - 1;
	while (i > 0 && d->layers[i].ovl && ovl_blocks_used(d->layers[i].ovl) == 0)
		i--;
	int err = layer_identity(&d->layers[i], out);
	pthread_mutex_unlock(&d->lock);
	return err;
}

int blkdev_freeze_new_overlay(struct blkdev *d, const char *new_overlay_path,
			      struct blkdev_identity *frozen, const char *rename_frozen_to)
{
	struct blkdev_identity id;
	char stored[OVL_PATH_MAX], old_path[OVL_PATH_MAX];
	bool renamed = false;
	int err;

	if (d->readonly) {
		log_err("disk %s is read-only: nothing to freeze", top(d)->path);
		return -EROFS;
	}
	pthread_mutex_lock(&d->lock);
	struct layer *old = top(d);
	if (d->n - 1 >= OVL_MAX_DEPTH) {
		log_err("disk %s: cannot freeze: the chain has %u overlays already (the limit)",
			old->path, OVL_MAX_DEPTH);
		err = -ELOOP;
		goto out;
	}
	/* Flushed and hashed once, here: the layer does not change from now on. */
	err = layer_identity(old, &id);
	if (err)
		goto out;
	if (rename_frozen_to) {
		if (!old->ovl || strlen(rename_frozen_to) >= sizeof(old->path)) {
			log_err("disk %s: only an overlay can be frozen under a new name",
				old->path);
			err = -EINVAL;
			goto out;
		}
		if (rename(old->path, rename_frozen_to) < 0) {
			err = -errno;
			log_errno("disk %s: cannot rename the frozen layer to %s", old->path,
				  rename_frozen_to);
			goto out;
		}
		renamed = true;
		snprintf(old_path, sizeof(old_path), "%s", old->path);
		snprintf(old->path, sizeof(old->path), "%s", rename_frozen_to);
		snprintf(id.path, sizeof(id.path), "%s", rename_frozen_to);
	}
	err = ovl_base_path_for(new_overlay_path, old->path, stored, sizeof(stored));
	if (err) {
		errno = -err;
		log_errno("overlay %s: cannot name its base %s", new_overlay_path, old->path);
		goto out;
	}
	err = ovl_create(new_overlay_path, old->size, OVL_BLOCK_SIZE_DEFAULT, stored, id.sha256);
	if (err)
		goto out;
	old->writable = false;
	memcpy(old->sha256, id.sha256, 32);
	old->hashed = true;
	err = open_top_overlay(d, new_overlay_path, false);
	if (err) {
		old->writable = true;
		old->hashed = false;
		unlink(new_overlay_path);
		goto out;
	}
	/* From here on nothing writes the old top again (an overlay also refuses it). */
	if (old->ovl)
		err = ovl_seal(old->ovl);
	if (frozen)
		*frozen = id;
out:
	if (err && renamed && rename(old->path, old_path) == 0)
		snprintf(old->path, sizeof(old->path), "%s", old_path);
	pthread_mutex_unlock(&d->lock);
	return err;
}
