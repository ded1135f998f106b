/* SPDX-License-Identifier: MIT */
/*
 * virtio-blk on a vmm/blkdev.h disk (see virtio_blk.h for what the guest sees and why).
 */
#include "vmm/virtio_blk.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"

_Static_assert(VIRTQ_MAX_IOV <= OVL_IOV_MAX, "a request's data fits one blkdev call");

#define BLK_HDR_LEN 16u /* le32 type, le32 reserved, le64 sector */
#define BLK_SEG_LEN 16u /* discard / write-zeroes: le64 sector, le32 num_sectors, le32 flags */

struct virtio_blk {
	struct virtio_mmio *t;
	struct gmem *m;
	struct blkdev *disk;
	struct virtio_device_ops ops; /* features depend on the disk: one table per device */
	char name[32];		      /* "virtio-blk<index>", for messages */
	char serial[VIRTIO_BLK_ID_BYTES];
	uint8_t config[VIRTIO_BLK_CONFIG_SIZE];
	uint64_t sectors;
	bool readonly;
	char path[4096], overlay[4096]; /* as opened ("" overlay: none), to open again at load */
	/* Under the device lock: */
	struct virtio_blk_stats st;
	struct virtq_elem elem;		  /* the request being served (too big for the stack) */
	struct iovec data[VIRTQ_MAX_IOV]; /* its data buffers */
};

static void put_le(uint8_t *p, uint64_t v, unsigned int n)
{
	for (unsigned int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, unsigned int n)
{
	uint64_t v = 0;
	for (unsigned int i = n; i-- > 0;)
		v = v << 8 | p[i];
	return v;
}

/*
 * The iovecs covering bytes [off, off + len) of @src into b->data. Returns their count (at
 * most @n: a range cuts no more pieces than there are segments).
 */
static int data_iov(struct virtio_blk *b, const struct iovec *src, unsigned int n, uint64_t off,
		    uint64_t len)
{
	int k = 0;
	for (unsigned int i = 0; i < n && len; i++) {
		uint64_t l = src[i].iov_len;
		if (off >= l) {
			off -= l;
			continue;
		}
		uint64_t take = l - off < len ? l - off : len;
		b->data[k].iov_base = (uint8_t *)src[i].iov_base + off;
		b->data[k].iov_len = (size_t)take;
		k++;
		len -= take;
		off = 0;
	}
	return k;
}

static bool negotiated(const struct virtio_blk *b, unsigned int bit)
{
	return virtio_mmio_driver_features(b->t) & (1ull << bit);
}

/* Sectors [sector, sector + n) inside the disk (without overflow). */
static bool in_range(const struct virtio_blk *b, uint64_t sector, uint64_t n)
{
	return sector <= b->sectors && n <= b->sectors - sector;
}

static const char *type_name(uint32_t type)
{
	switch (type) {
	case VIRTIO_BLK_T_IN: return "read";
	case VIRTIO_BLK_T_OUT: return "write";
	case VIRTIO_BLK_T_FLUSH: return "flush";
	case VIRTIO_BLK_T_GET_ID: return "get-id";
	case VIRTIO_BLK_T_DISCARD: return "discard";
	case VIRTIO_BLK_T_WRITE_ZEROES: return "write-zeroes";
	default: return "unknown";
	}
}

/* A request the guest got wrong (or the host failed): log (rate-limited), return @status. */
#define REFUSE(status, ...)                                                                        \
	({                                                                                         \
		log_ratelimited(LOG_WARN, __VA_ARGS__);                                            \
		(uint8_t)(status);                                                                 \
	})

/* Writes are durable at once unless the driver accepted FLUSH (a write-back cache). */
static int after_write(struct virtio_blk *b)
{
	return negotiated(b, VIRTIO_BLK_F_FLUSH) ? 0 : blkdev_flush(b->disk);
}

static uint8_t blk_rw(struct virtio_blk *b, const struct virtq_elem *e, uint32_t type,
		      uint64_t sector)
{
	bool write = type == VIRTIO_BLK_T_OUT;
	uint64_t len = write ? e->out_len - BLK_HDR_LEN : e->in_len - 1;
	int err;

	if (write && b->readonly)
		return REFUSE(VIRTIO_BLK_S_IOERR, "%s: write to a read-only disk (sector %llu)",
			      b->name, (unsigned long long)sector);
	if (len % VIRTIO_BLK_SECTOR)
		return REFUSE(VIRTIO_BLK_S_IOERR, "%s: %s of %llu bytes: not a multiple of 512",
			      b->name, type_name(type), (unsigned long long)len);
	if (!in_range(b, sector, len / VIRTIO_BLK_SECTOR))
		return REFUSE(VIRTIO_BLK_S_IOERR,
			      "%s: %s of %llu sectors at sector %llu: past the end (%llu sectors)",
			      b->name, type_name(type), (unsigned long long)(len / 512),
			      (unsigned long long)sector, (unsigned long long)b->sectors);
	if (write) {
		int n = data_iov(b, e->out, e->n_out, BLK_HDR_LEN, len);
		err = blkdev_pwritev(b->disk, b->data, n, sector * VIRTIO_BLK_SECTOR);
		if (!err)
			err = after_write(b);
	} else {
		int n = data_iov(b, e->in, e->n_in, 0, len);
		err = blkdev_preadv(b->disk, b->data, n, sector * VIRTIO_BLK_SECTOR);
	}
	if (err)
		return REFUSE(VIRTIO_BLK_S_IOERR, "%s: %s of %llu bytes at sector %llu: %s",
			      b->name, type_name(type), (unsigned long long)len,
			      (unsigned long long)sector, strerror(-err));
	if (write) {
		b->st.wr_ops++;
		b->st.wr_bytes += len;
	} else {
		b->st.rd_ops++;
		b->st.rd_bytes += len;
	}
	return VIRTIO_BLK_S_OK;
}

/* DISCARD and WRITE_ZEROES: every segment checked before any is applied. */
static uint8_t blk_zero(struct virtio_blk *b, const struct virtq_elem *e, uint32_t type)
{
	bool discard = type == VIRTIO_BLK_T_DISCARD;
	unsigned int feature = discard ? VIRTIO_BLK_F_DISCARD : VIRTIO_BLK_F_WRITE_ZEROES;
	uint32_t max_sect = discard ? VIRTIO_BLK_MAX_DISCARD_SECT : VIRTIO_BLK_MAX_WZEROES_SECT;
	uint32_t max_seg = discard ? VIRTIO_BLK_MAX_DISCARD_SEG : VIRTIO_BLK_MAX_WZEROES_SEG;
	uint8_t segs[VIRTIO_BLK_MAX_DISCARD_SEG * BLK_SEG_LEN];
	uint64_t len = e->out_len - BLK_HDR_LEN;
	_Static_assert(VIRTIO_BLK_MAX_WZEROES_SEG <= VIRTIO_BLK_MAX_DISCARD_SEG, "segs[] size");

	if (!negotiated(b, feature) || b->readonly)
		return REFUSE(b->readonly ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_UNSUPP,
			      "%s: %s request %s", b->name, type_name(type),
			      b->readonly ? "on a read-only disk" : "without the feature");
	if (len == 0 || len % BLK_SEG_LEN || len / BLK_SEG_LEN > max_seg)
		return REFUSE(VIRTIO_BLK_S_IOERR, "%s: %s with %llu bytes of segments", b->name,
			      type_name(type), (unsigned long long)len);
	unsigned int n = (unsigned int)(len / BLK_SEG_LEN);
	virtq_copy_from_out(e, BLK_HDR_LEN, segs, len);
	for (unsigned int i = 0; i < n; i++) {
		const uint8_t *s = segs + i * BLK_SEG_LEN;
		uint64_t sector = get_le(s, 8);
		uint32_t num = (uint32_t)get_le(s + 8, 4), flags = (uint32_t)get_le(s + 12, 4);
		/* The spec: UNMAP is for write-zeroes only; unknown flags are unsupported. */
		if (flags & ~VIRTIO_BLK_WZ_F_UNMAP || (discard && flags))
			return REFUSE(VIRTIO_BLK_S_UNSUPP, "%s: %s with flags 0x%x", b->name,
				      type_name(type), flags);
		if (num > max_sect || !in_range(b, sector, num))
			return REFUSE(VIRTIO_BLK_S_IOERR,
				      "%s: %s of %u sectors at sector %llu: too many or past the "
				      "end (%llu sectors)",
				      b->name, type_name(type), num, (unsigned long long)sector,
				      (unsigned long long)b->sectors);
	}
	for (unsigned int i = 0; i < n; i++) {
		const uint8_t *s = segs + i * BLK_SEG_LEN;
		uint64_t off = get_le(s, 8) * VIRTIO_BLK_SECTOR;
		uint64_t bytes = get_le(s + 8, 4) * VIRTIO_BLK_SECTOR;
		bool unmap = get_le(s + 12, 4) & VIRTIO_BLK_WZ_F_UNMAP;
		int err = discard ? blkdev_discard(b->disk, off, bytes)
				  : blkdev_write_zeroes(b->disk, off, bytes, unmap);
		if (!err && !discard)
			err = after_write(b);
		if (err)
			return REFUSE(VIRTIO_BLK_S_IOERR, "%s: %s at sector %llu: %s", b->name,
				      type_name(type), (unsigned long long)(off / 512),
				      strerror(-err));
	}
	if (discard)
		b->st.discards++;
	else
		b->st.write_zeroes++;
	return VIRTIO_BLK_S_OK;
}

static uint8_t blk_request(struct virtio_blk *b, const struct virtq_elem *e)
{
	uint8_t hdr[BLK_HDR_LEN];
	int err;

	if (e->out_len < BLK_HDR_LEN)
		return REFUSE(VIRTIO_BLK_S_IOERR, "%s: request with a %llu-byte header", b->name,
			      (unsigned long long)e->out_len);
	virtq_copy_from_out(e, 0, hdr, sizeof(hdr));
	uint32_t type = (uint32_t)get_le(hdr, 4);
	uint64_t sector = get_le(hdr + 8, 8);
	switch (type) {
	case VIRTIO_BLK_T_IN:
	case VIRTIO_BLK_T_OUT: return blk_rw(b, e, type, sector);
	case VIRTIO_BLK_T_FLUSH:
		if (!negotiated(b, VIRTIO_BLK_F_FLUSH))
			return REFUSE(VIRTIO_BLK_S_UNSUPP, "%s: flush not negotiated", b->name);
		err = blkdev_flush(b->disk);
		if (err)
			return REFUSE(VIRTIO_BLK_S_IOERR, "%s: flush: %s", b->name, strerror(-err));
		b->st.flushes++;
		return VIRTIO_BLK_S_OK;
	case VIRTIO_BLK_T_GET_ID:
		if (e->in_len - 1 < VIRTIO_BLK_ID_BYTES)
			return REFUSE(VIRTIO_BLK_S_IOERR, "%s: get-id into %llu bytes", b->name,
				      (unsigned long long)(e->in_len - 1));
		virtq_copy_to_in(e, 0, b->serial, VIRTIO_BLK_ID_BYTES);
		b->st.get_ids++;
		return VIRTIO_BLK_S_OK;
	case VIRTIO_BLK_T_DISCARD:
	case VIRTIO_BLK_T_WRITE_ZEROES: return blk_zero(b, e, type);
	default:
		return REFUSE(VIRTIO_BLK_S_UNSUPP, "%s: request type %u not supported", b->name,
			      type);
	}
}

static void blk_queue_notify(void *dev, unsigned int qi)
{
	struct virtio_blk *b = dev;
	struct virtq *q = virtio_mmio_queue(b->t, qi);
	struct virtq_elem *e = &b->elem;
	bool pushed = false;

	if (!q || !virtio_mmio_running(b->t) || !q->ready || q->broken)
		return;
	/* Until the ring is empty: the driver notified once for everything it queued. */
	for (;;) {
		int r = virtq_pop(q, b->m, e);
		if (r == 0)
			break;
		if (r == -EINVAL) {
			/* Completed with length 0 by virtq_pop. */
			b->st.bad_chains++;
			pushed = true;
			log_ratelimited(LOG_WARN, "%s: bad request chain", b->name);
			continue;
		}
		if (r < 0) {
			log_ratelimited(LOG_ERR, "%s: request ring broken", b->name);
			virtio_mmio_set_needs_reset(b->t);
			break;
		}
		pushed = true;
		if (e->in_len == 0) {
			/* Nowhere to put a status: give it back with nothing written. */
			b->st.bad_chains++;
			log_ratelimited(LOG_WARN, "%s: request without a status byte", b->name);
			virtq_push(q, b->m, e, 0);
			continue;
		}
		uint8_t status = blk_request(b, e);
		if (status == VIRTIO_BLK_S_IOERR)
			b->st.ioerr++;
		else if (status == VIRTIO_BLK_S_UNSUPP)
			b->st.unsupp++;
		virtq_copy_to_in(e, e->in_len - 1, &status, 1);
		/*
		 * Everything writable counts as written: the status is the last byte, and a failed
		 * read may have filled part of the data (virtq_push marks the bytes dirty).
		 */
		virtq_push(q, b->m, e, e->in_len > UINT32_MAX ? UINT32_MAX : (uint32_t)e->in_len);
	}
	if (pushed && virtq_should_notify(q, b->m))
		virtio_mmio_interrupt(b->t, VIRTIO_MMIO_INT_VRING);
}

/* ---- the device's side of the transport ---- */

static void blk_config_read(void *dev, uint32_t off, void *buf, uint32_t len)
{
	struct virtio_blk *b = dev;
	if (off > sizeof(b->config) || len > sizeof(b->config) - off) {
		memset(buf, 0xff, len);
		return;
	}
	memcpy(buf, b->config + off, len);
}

static void blk_config_write(void *dev, uint32_t off, const void *buf, uint32_t len)
{
	struct virtio_blk *b = dev;
	(void)buf;
	/* Only writeback is writable, and only with CONFIG_WCE (not offered): ignored. */
	log_ratelimited(LOG_WARN, "%s: driver wrote %u bytes of config at %u (ignored)", b->name,
			len, off);
}

static int blk_save(void *dev, struct enc *e)
{
	struct virtio_blk *b = dev;
	struct blkdev_identity id;
	int err = blkdev_identity(b->disk, &id);
	if (err) {
		log_err("%s: cannot identify the disk for the saved state: %s", b->name,
			strerror(-err));
		return err;
	}
	enc_str(e, id.path);
	enc_u64(e, id.size);
	enc_bytes(e, id.sha256, 32);
	enc_u8(e, b->readonly);
	return enc_error(e);
}

static int blk_load(void *dev, struct dec *d, unsigned int version)
{
	struct virtio_blk *b = dev;
	struct blkdev_identity saved, now;
	uint8_t ro;

	if (version < 1 || version > VIRTIO_BLK_STATE_VERSION) {
		log_err("%s: state version %u not supported (newest %u)", b->name, version,
			VIRTIO_BLK_STATE_VERSION);
		return -ENOTSUP;
	}
	dec_str(d, saved.path, sizeof(saved.path));
	dec_u64(d, &saved.size);
	dec_bytes(d, saved.sha256, 32);
	dec_u8(d, &ro);
	if (dec_error(d)) {
		log_err("%s: device state truncated or corrupt", b->name);
		return dec_error(d);
	}
	/*
	 * Open the disk again: a migration source may have written it (and flushed at its
	 * final pause) since this process opened it, and an overlay's map is read at open.
	 */
	struct blkdev *fresh;
	int err = blkdev_open(&fresh, b->path, b->readonly, b->overlay[0] ? b->overlay : NULL);
	if (err)
		return err;
	if (blkdev_size(fresh) != b->sectors * VIRTIO_BLK_SECTOR) {
		log_err("%s: %s changed size since it was opened", b->name, b->path);
		blkdev_close(fresh);
		return -ESTALE;
	}
	blkdev_close(b->disk);
	b->disk = fresh;
	err = blkdev_identity(b->disk, &now);
	if (err) {
		log_err("%s: cannot identify the disk to check it against the saved state",
			b->name);
		return err;
	}
	if (now.size != saved.size || memcmp(now.sha256, saved.sha256, 32) != 0) {
		log_err(
		    "%s: the disk does not match the saved VM: it was saved with %s (%llu bytes, "
		    "content hash %02x%02x%02x%02x...), this is %s (%llu bytes, "
		    "%02x%02x%02x%02x...)",
		    b->name, saved.path, (unsigned long long)saved.size, saved.sha256[0],
		    saved.sha256[1], saved.sha256[2], saved.sha256[3], now.path,
		    (unsigned long long)now.size, now.sha256[0], now.sha256[1], now.sha256[2],
		    now.sha256[3]);
		return -ESTALE;
	}
	if ((bool)ro != b->readonly) {
		log_err("%s: the disk was %s when saved, now %s", b->name,
			ro ? "read-only" : "writable", b->readonly ? "read-only" : "writable");
		return -ESTALE;
	}
	return 0;
}

static const struct virtio_device_ops blk_ops_template = {
    .name = "virtio-blk",
    .device_id = VIRTIO_ID_BLOCK,
    .nqueues = 1,
    .queue_max = VIRTIO_BLK_QUEUE_SIZE,
    .config_size = VIRTIO_BLK_CONFIG_SIZE,
    .config_read = blk_config_read,
    .config_write = blk_config_write,
    .queue_notify = blk_queue_notify,
    .state_version = VIRTIO_BLK_STATE_VERSION,
    .save = blk_save,
    .load = blk_load,
};

/* struct virtio_blk_config, virtio 1.2 section 5.2.4, through write_zeroes_may_unmap. */
static void build_config(struct virtio_blk *b)
{
	uint8_t *c = b->config;
	uint32_t align = blkdev_discard_granularity(b->disk) / VIRTIO_BLK_SECTOR;
	memset(c, 0, sizeof(b->config));
	put_le(c + 0, b->sectors, 8);			/* capacity */
	put_le(c + 8, VIRTIO_BLK_SIZE_MAX, 4);		/* size_max */
	put_le(c + 12, VIRTIO_BLK_SEG_MAX, 4);		/* seg_max */
	put_le(c + 20, VIRTIO_BLK_SECTOR, 4);		/* blk_size */
	put_le(c + 34, 1, 2);				/* num_queues (no MQ) */
	put_le(c + 36, VIRTIO_BLK_MAX_DISCARD_SECT, 4); /* max_discard_sectors */
	put_le(c + 40, VIRTIO_BLK_MAX_DISCARD_SEG, 4);	/* max_discard_seg */
	put_le(c + 44, align ? align : 1, 4);		/* discard_sector_alignment */
	put_le(c + 48, VIRTIO_BLK_MAX_WZEROES_SECT, 4); /* max_write_zeroes_sectors */
	put_le(c + 52, VIRTIO_BLK_MAX_WZEROES_SEG, 4);	/* max_write_zeroes_seg */
	c[56] = 1;					/* write_zeroes_may_unmap */
}

struct virtio_blk *virtio_blk_create(const struct virtio_blk_params *p, struct gmem *m, int vm_fd,
				     struct evloop *loop, uint64_t base, uint32_t gsi)
{
	struct virtio_blk *b;
	int err;

	if (!p || !p->path) {
		log_err("virtio-blk: no disk given");
		return NULL;
	}
	if (p->serial && strlen(p->serial) > VIRTIO_BLK_ID_BYTES) {
		log_err("virtio-blk: serial '%s' is longer than %u bytes", p->serial,
			VIRTIO_BLK_ID_BYTES);
		return NULL;
	}
	b = calloc(1, sizeof(*b));
	if (!b) {
		log_err("virtio-blk: out of memory");
		return NULL;
	}
	b->m = m;
	b->readonly = p->readonly;
	snprintf(b->name, sizeof(b->name), "virtio-blk%u", p->index);
	if (p->serial)
		memcpy(b->serial, p->serial, strlen(p->serial)); /* NUL-padded, not terminated */
	else
		snprintf(b->serial, sizeof(b->serial), "vmsnap-%u", p->index);
	if (strlen(p->path) >= sizeof(b->path) ||
	    (p->overlay && strlen(p->overlay) >= sizeof(b->overlay))) {
		log_err("%s: disk path too long", b->name);
		err = -ENAMETOOLONG;
		goto fail;
	}
	snprintf(b->path, sizeof(b->path), "%s", p->path);
	snprintf(b->overlay, sizeof(b->overlay), "%s", p->overlay ? p->overlay : "");
	err = blkdev_open(&b->disk, p->path, p->readonly, p->overlay);
	if (err)
		goto fail; /* blkdev_open said why, naming the file: one line is enough */
	b->sectors = blkdev_size(b->disk) / VIRTIO_BLK_SECTOR;
	build_config(b);
	b->ops = blk_ops_template;
	b->ops.features = 1ull << VIRTIO_BLK_F_SIZE_MAX | 1ull << VIRTIO_BLK_F_SEG_MAX |
			  1ull << VIRTIO_BLK_F_BLK_SIZE | 1ull << VIRTIO_BLK_F_FLUSH;
	if (p->readonly)
		b->ops.features |= 1ull << VIRTIO_BLK_F_RO;
	else
		b->ops.features |= 1ull << VIRTIO_BLK_F_DISCARD | 1ull << VIRTIO_BLK_F_WRITE_ZEROES;
	b->t = virtio_mmio_create(&b->ops, b, m, vm_fd, loop, base, gsi);
	if (!b->t)
		goto fail;
	log_info("%s: %s%s%s, %llu sectors%s", b->name, p->path, p->overlay ? " + overlay " : "",
		 p->overlay ? p->overlay : "", (unsigned long long)b->sectors,
		 p->readonly ? ", read-only" : "");
	return b;
fail:
	blkdev_close(b->disk);
	free(b);
	return NULL;
}

void virtio_blk_destroy(struct virtio_blk *b)
{
	if (!b)
		return;
	virtio_mmio_destroy(b->t);
	int err = blkdev_close(b->disk);
	if (err)
		log_err("%s: the disk's last flush failed: %s", b->name, strerror(-err));
	free(b);
}

struct virtio_mmio *virtio_blk_transport(struct virtio_blk *b)
{
	return b->t;
}

struct blkdev *virtio_blk_disk(struct virtio_blk *b)
{
	return b->disk;
}

int virtio_blk_freeze_new_overlay(struct virtio_blk *b, const char *new_overlay_path,
				  struct blkdev_identity *frozen, const char *rename_frozen_to)
{
	virtio_mmio_lock(b->t);
	int err = blkdev_freeze_new_overlay(b->disk, new_overlay_path, frozen, rename_frozen_to);
	virtio_mmio_unlock(b->t);
	return err;
}

void virtio_blk_get_stats(struct virtio_blk *b, struct virtio_blk_stats *s)
{
	virtio_mmio_lock(b->t);
	*s = b->st;
	virtio_mmio_unlock(b->t);
}
