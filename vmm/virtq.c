/* SPDX-License-Identifier: MIT */
#include "virtq.h"

#include <endian.h>
#include <errno.h>
#include <string.h>

#include "util/log.h"

/*
 * Split-ring layout (virtio 1.2, 2.7), all little-endian:
 *   descriptor table: size x { le64 addr; le32 len; le16 flags; le16 next; }, 16-aligned
 *   available ring:   le16 flags; le16 idx; le16 ring[size]; le16 used_event; 2-aligned
 *   used ring:        le16 flags; le16 idx; { le32 id; le32 len; } ring[size];
 *                     le16 avail_event; 4-aligned
 * The guest may change any of it at any time: each field is read once into a local and
 * the local is what gets checked and used.
 */
#define DESC_SIZE	     16u
#define DESC_F_NEXT	     1u
#define DESC_F_WRITE	     2u
#define DESC_F_INDIRECT	     4u
#define AVAIL_F_NO_INTERRUPT 1u

#define RING_IDX_OFF   2u /* idx in both rings */
#define RING_ENTRY_OFF 4u /* first ring entry in both rings */
#define USED_ELEM_SIZE 8u

struct desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};
_Static_assert(sizeof(struct desc) == DESC_SIZE, "descriptor layout");

/* Keeps the compiler from reloading a local copy's fields from guest memory. */
#define compiler_barrier() __asm__ __volatile__("" ::: "memory")

static bool size_ok(uint32_t size)
{
	return size >= 1 && size <= VIRTQ_MAX_SIZE && (size & (size - 1)) == 0;
}

static uint64_t desc_bytes(uint32_t size)
{
	return (uint64_t)size * DESC_SIZE;
}

static uint64_t avail_bytes(uint32_t size)
{
	return RING_ENTRY_OFF + 2ull * size + 2;
}

static uint64_t used_bytes(uint32_t size)
{
	return RING_ENTRY_OFF + (uint64_t)USED_ELEM_SIZE * size + 2;
}

/* Alignment the spec requires of each part; also what the atomic accesses below need. */
static bool align_ok(const struct virtq *q)
{
	return !(q->desc_gpa % 16) && !(q->avail_gpa % 2) && !(q->used_gpa % 4);
}

void virtq_reset(struct virtq *q)
{
	memset(q, 0, sizeof(*q));
}

int virtq_check(const struct virtq *q, const struct gmem *m)
{
	if (!size_ok(q->size) || !align_ok(q))
		return -EINVAL;
	if (!gmem_ptr(m, q->desc_gpa, desc_bytes(q->size)) ||
	    !gmem_ptr(m, q->avail_gpa, avail_bytes(q->size)) ||
	    !gmem_ptr(m, q->used_gpa, used_bytes(q->size)))
		return -EINVAL;
	return 0;
}

/* The avail ring, or NULL if the queue cannot be used (not ready, or not checked). */
static uint8_t *avail_ring(const struct virtq *q, const struct gmem *m)
{
	if (!q->ready || !size_ok(q->size) || !align_ok(q))
		return NULL;
	return gmem_ptr(m, q->avail_gpa, avail_bytes(q->size));
}

static uint16_t load_avail_idx(const uint8_t *avail)
{
	/* Acquire: the ring entries and descriptors the driver wrote before idx are visible. */
	return le16toh(__atomic_load_n((const uint16_t *)(avail + RING_IDX_OFF), __ATOMIC_ACQUIRE));
}

static int ring_broken(struct virtq *q, const char *why)
{
	q->broken = true;
	log_ratelimited(LOG_DEBUG, "virtq: ring unusable: %s", why);
	return -EIO;
}

static int chain_bad(uint16_t head, const char *why)
{
	/* The caller logs the -EINVAL (rate-limited); the detail is for debugging. */
	log_ratelimited(LOG_DEBUG, "virtq: bad descriptor chain at head %u: %s", head, why);
	return -EINVAL;
}

/* Walk the chain at @head into @e. 0 or -EINVAL. */
static int walk_chain(const struct virtq *q, struct gmem *m, const uint8_t *table, uint16_t head,
		      struct virtq_elem *e)
{
	uint32_t tsize = q->size; /* entries in the table being walked */
	uint32_t count = 0;	  /* descriptors taken from it: more than tsize is a loop */
	uint32_t i = head;
	bool indirect = false, seen_in = false;

	for (;;) {
		struct desc d;
		if (i >= tsize)
			return chain_bad(head, "descriptor index out of range");
		if (++count > tsize)
			return chain_bad(head, "loop or chain longer than its table");
		memcpy(&d, table + (uint64_t)i * DESC_SIZE, sizeof(d));
		compiler_barrier();
		uint64_t addr = le64toh(d.addr);
		uint32_t len = le32toh(d.len);
		uint16_t flags = le16toh(d.flags);

		if (flags & DESC_F_INDIRECT) {
			if (indirect)
				return chain_bad(head, "nested indirect table");
			if (flags & DESC_F_NEXT)
				return chain_bad(head, "indirect descriptor with NEXT");
			if (len == 0 || len % DESC_SIZE)
				return chain_bad(head,
						 "indirect table length not a multiple of 16");
			if (len / DESC_SIZE > VIRTQ_MAX_IOV)
				return chain_bad(head, "indirect table too long");
			table = gmem_ptr(m, addr, len);
			if (!table)
				return chain_bad(head, "indirect table outside RAM");
			/* The table's last descriptor ends the chain (no NEXT above). */
			tsize = len / DESC_SIZE;
			count = 0;
			i = 0;
			indirect = true;
			continue;
		}

		bool in = flags & DESC_F_WRITE;
		if (in)
			seen_in = true;
		else if (seen_in)
			return chain_bad(head, "readable descriptor after a writable one");
		if (len) {
			void *p = gmem_ptr(m, addr, len);
			if (!p)
				return chain_bad(head, "buffer outside RAM");
			if (e->out_len + e->in_len + len > UINT32_MAX)
				return chain_bad(head, "chain of 4 GiB or more");
			if (e->n_out + e->n_in >= VIRTQ_MAX_IOV)
				return chain_bad(head, "too many segments");
			if (in) {
				e->in[e->n_in] = (struct iovec){.iov_base = p, .iov_len = len};
				e->in_gpa[e->n_in++] = addr;
				e->in_len += len;
			} else {
				e->out[e->n_out++] = (struct iovec){.iov_base = p, .iov_len = len};
				e->out_len += len;
			}
		}
		if (!(flags & DESC_F_NEXT))
			return 0;
		i = le16toh(d.next);
	}
}

int virtq_pop(struct virtq *q, struct gmem *m, struct virtq_elem *e)
{
	if (!q->ready)
		return 0;
	if (q->broken)
		return -EIO;
	uint8_t *avail = avail_ring(q, m);
	if (!avail)
		return ring_broken(q, "available ring not in RAM");
	const uint8_t *desc = gmem_ptr(m, q->desc_gpa, desc_bytes(q->size));
	if (!desc)
		return ring_broken(q, "descriptor table not in RAM");

	uint16_t idx = load_avail_idx(avail);
	uint16_t pending = (uint16_t)(idx - q->last_avail);
	if (pending == 0)
		return 0;
	if (pending > q->size)
		return ring_broken(q, "available index more than the queue size ahead");

	uint32_t slot = q->last_avail & (q->size - 1u);
	uint16_t head = le16toh(__atomic_load_n(
	    (const uint16_t *)(avail + RING_ENTRY_OFF + 2u * slot), __ATOMIC_RELAXED));
	q->last_avail++;

	e->head = head;
	e->n_out = e->n_in = 0;
	e->out_len = e->in_len = 0;
	if (walk_chain(q, m, desc, head, e)) {
		/* Give the head back empty: the driver sees it complete with nothing written. */
		e->n_out = e->n_in = 0;
		e->out_len = e->in_len = 0;
		virtq_push(q, m, e, 0);
		return -EINVAL;
	}
	return 1;
}

static void mark_dirty_gpa(struct gmem *m, uint64_t gpa, uint64_t len)
{
	uint64_t off = gmem_offset(m, gpa);
	if (off != UINT64_MAX)
		gmem_mark_dirty(m, off, len);
}

void virtq_push(struct virtq *q, struct gmem *m, const struct virtq_elem *e, uint32_t written)
{
	/* A queue reset since the pop: the request is dropped with the rest of the ring. */
	if (!q->ready || !size_ok(q->size) || !align_ok(q))
		return;
	uint8_t *used = gmem_ptr(m, q->used_gpa, used_bytes(q->size));
	if (!used) {
		ring_broken(q, "used ring not in RAM");
		return;
	}
	if (written > e->in_len)
		written = (uint32_t)e->in_len;

	/* Each in[] segment was one RAM range at pop time, so its host offsets are contiguous. */
	uint64_t left = written;
	for (unsigned int i = 0; i < e->n_in && left; i++) {
		uint64_t n = e->in[i].iov_len < left ? e->in[i].iov_len : left;
		mark_dirty_gpa(m, e->in_gpa[i], n);
		left -= n;
	}

	uint32_t slot = q->used_idx & (q->size - 1u);
	uint64_t elem_off = RING_ENTRY_OFF + (uint64_t)USED_ELEM_SIZE * slot;
	uint32_t *elem = (uint32_t *)(used + elem_off);
	__atomic_store_n(&elem[0], htole32((uint32_t)e->head), __ATOMIC_RELAXED);
	__atomic_store_n(&elem[1], htole32(written), __ATOMIC_RELAXED);
	mark_dirty_gpa(m, q->used_gpa + elem_off, USED_ELEM_SIZE);

	q->used_idx++;
	/* Release: the buffers' contents and the used element are visible before idx. */
	__atomic_store_n((uint16_t *)(used + RING_IDX_OFF), htole16(q->used_idx), __ATOMIC_RELEASE);
	mark_dirty_gpa(m, q->used_gpa + RING_IDX_OFF, 2);
}

bool virtq_should_notify(const struct virtq *q, const struct gmem *m)
{
	if (!q->ready)
		return false;
	const uint8_t *avail = avail_ring(q, m);
	if (!avail)
		return true; /* cannot tell: an extra interrupt is harmless, a lost one is not */
	/* Order the used idx store before the flags load (store-load needs a full fence). */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	uint16_t flags = le16toh(__atomic_load_n((const uint16_t *)avail, __ATOMIC_RELAXED));
	return !(flags & AVAIL_F_NO_INTERRUPT);
}

bool virtq_has_work(const struct virtq *q, const struct gmem *m)
{
	if (q->broken)
		return false;
	const uint8_t *avail = avail_ring(q, m);
	return avail && load_avail_idx(avail) != q->last_avail;
}

size_t virtq_copy_to_in(const struct virtq_elem *e, size_t offset, const void *src, size_t len)
{
	const uint8_t *s = src;
	size_t done = 0;
	for (unsigned int i = 0; i < e->n_in && done < len; i++) {
		size_t seg = e->in[i].iov_len;
		if (offset >= seg) {
			offset -= seg;
			continue;
		}
		size_t n = seg - offset < len - done ? seg - offset : len - done;
		memcpy((uint8_t *)e->in[i].iov_base + offset, s + done, n);
		done += n;
		offset = 0;
	}
	return done;
}

size_t virtq_copy_from_out(const struct virtq_elem *e, size_t offset, void *dst, size_t len)
{
	uint8_t *d = dst;
	size_t done = 0;
	for (unsigned int i = 0; i < e->n_out && done < len; i++) {
		size_t seg = e->out[i].iov_len;
		if (offset >= seg) {
			offset -= seg;
			continue;
		}
		size_t n = seg - offset < len - done ? seg - offset : len - done;
		memcpy(d + done, (const uint8_t *)e->out[i].iov_base + offset, n);
		done += n;
		offset = 0;
	}
	return done;
}

/*
 * Version 1: u16 size, u8 ready, u64 desc, u64 avail, u64 used, u16 last_avail,
 * u16 used_idx, u8 broken.
 */
int virtq_save(const struct virtq *q, struct enc *e)
{
	enc_u16(e, q->size);
	enc_u8(e, q->ready);
	enc_u64(e, q->desc_gpa);
	enc_u64(e, q->avail_gpa);
	enc_u64(e, q->used_gpa);
	enc_u16(e, q->last_avail);
	enc_u16(e, q->used_idx);
	enc_u8(e, q->broken);
	return enc_error(e);
}

int virtq_load(struct virtq *q, struct dec *d, unsigned int version)
{
	struct virtq n;
	if (version < 1 || version > VIRTQ_STATE_VERSION)
		return -ENOTSUP;
	memset(&n, 0, sizeof(n));
	dec_u16(d, &n.size);
	uint8_t ready = dec_u8_val(d);
	dec_u64(d, &n.desc_gpa);
	dec_u64(d, &n.avail_gpa);
	dec_u64(d, &n.used_gpa);
	dec_u16(d, &n.last_avail);
	dec_u16(d, &n.used_idx);
	uint8_t broken = dec_u8_val(d);
	if (dec_error(d))
		return dec_error(d);
	if (ready > 1 || broken > 1)
		goto bad;
	n.ready = ready;
	n.broken = broken;
	/* Unconfigured queues have size 0; any other size is what QueueNum accepted. */
	if (n.size != 0 && !size_ok(n.size))
		goto bad;
	/*
	 * A broken queue stays broken until a device reset, also after the driver set it not
	 * ready (Linux does when it removes a queue): that state is saved and loads as it is.
	 */
	if (n.ready) {
		/* RAM bounds need the VM's memory: the transport runs virtq_check() after this. */
		if (n.size == 0 || !align_ok(&n))
			goto bad;
	}
	*q = n;
	return 0;
bad:
	log_err("virtq: inconsistent queue state (size %u, ready %u, broken %u, avail %u, used %u)",
		n.size, ready, broken, n.last_avail, n.used_idx);
	return -EINVAL;
}
