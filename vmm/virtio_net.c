/* SPDX-License-Identifier: MIT */
/*
 * virtio-net with a tap backend (see virtio_net.h for what the guest sees and why).
 */
#include "vmm/virtio_net.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/uio.h>
#include <unistd.h>

#include "util/log.h"

_Static_assert(VIRTIO_NET_IFNAMSIZ == IFNAMSIZ, "interface name size");
_Static_assert(VIRTQ_MAX_IOV <= IOV_MAX, "a chain fits one readv/writev");

#define ETH_HDR_LEN 14u

/* struct virtio_net_hdr (virtio 1.x, little-endian), by byte offset. */
#define HDR_FLAGS	 0
#define HDR_GSO_TYPE	 1
#define HDR_NUM_BUFFERS	 10
#define HDR_F_NEEDS_CSUM 1u

/* Packets taken from the tap per handler call, so queue notifications of other devices on the
 * same loop are not starved by a busy tap (the fd stays readable: the loop calls again). */
#define RX_BURST 64

struct virtio_net {
	struct virtio_mmio *t;
	struct gmem *m;
	struct evloop *loop;
	int tap_fd;
	char tap[VIRTIO_NET_IFNAMSIZ];
	/* Under the device lock: */
	uint8_t mac[6];
	bool rx_watched; /* tap_fd is on the evloop */
	bool closing;	 /* virtio_net_destroy() started: never watch again */
	struct virtio_net_stats st;
	/* Scratch for the request being handled (under the lock; too big for the stack). */
	struct virtq_elem elem;
	struct iovec tx_iov[VIRTQ_MAX_IOV + 1];
};

/* ---- options and MACs ---- */

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int virtio_net_mac_parse(const char *s, uint8_t mac[6])
{
	uint8_t out[6];
	if (!s || strlen(s) != 17)
		return -EINVAL;
	for (int i = 0; i < 6; i++) {
		int hi = hexval(s[3 * i]), lo = hexval(s[3 * i + 1]);
		if (hi < 0 || lo < 0 || (i < 5 && s[3 * i + 2] != ':'))
			return -EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	memcpy(mac, out, 6);
	return 0;
}

char *virtio_net_mac_format(const uint8_t mac[6], char buf[VIRTIO_NET_MAC_STRLEN])
{
	snprintf(buf, VIRTIO_NET_MAC_STRLEN, "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1],
		 mac[2], mac[3], mac[4], mac[5]);
	return buf;
}

int virtio_net_mac_generate(uint8_t mac[6])
{
	uint8_t r[5];
	size_t got = 0;
	while (got < sizeof(r)) {
		ssize_t n = getrandom(r + got, sizeof(r) - got, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			int err = -errno;
			log_errno("virtio-net: getrandom for a MAC address");
			return err;
		}
		got += (size_t)n;
	}
	mac[0] = 0x06; /* locally administered (bit 1), unicast (bit 0 clear) */
	memcpy(mac + 1, r, sizeof(r));
	return 0;
}

static bool mac_usable(const uint8_t mac[6])
{
	static const uint8_t zero[6];
	return !(mac[0] & 1) && memcmp(mac, zero, 6) != 0;
}

/* The kernel's dev_valid_name(): no '/', ':' or white space, not "." or "..". */
static bool ifname_valid(const char *s, size_t len)
{
	if (!len || len >= IFNAMSIZ)
		return false;
	if ((len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.'))
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '/' || c == ':' || c <= ' ' || c == 0x7f)
			return false;
	}
	return true;
}

int virtio_net_parse(const char *spec, struct virtio_net_params *p)
{
	struct virtio_net_params out;
	bool have_tap = false;
	memset(&out, 0, sizeof(out));
	if (!spec || !*spec) {
		log_err("--net: empty value (expected tap=NAME[,mac=MAC])");
		return -EINVAL;
	}
	const char *s = spec;
	for (;;) {
		const char *end = strchr(s, ',');
		size_t len = end ? (size_t)(end - s) : strlen(s);
		const char *eq = memchr(s, '=', len);
		if (!eq) {
			log_err("--net '%s': '%.*s' is not KEY=VALUE (expected tap=NAME[,mac=MAC])",
				spec, (int)len, s);
			return -EINVAL;
		}
		size_t klen = (size_t)(eq - s), vlen = len - klen - 1;
		const char *v = eq + 1;
		if (klen == 3 && !memcmp(s, "tap", 3)) {
			if (have_tap) {
				log_err("--net '%s': tap given twice", spec);
				return -EINVAL;
			}
			if (!vlen) {
				log_err("--net '%s': empty tap name", spec);
				return -EINVAL;
			}
			if (vlen >= IFNAMSIZ) {
				log_err("--net '%s': tap name longer than %d characters", spec,
					IFNAMSIZ - 1);
				return -EINVAL;
			}
			if (!ifname_valid(v, vlen)) {
				log_err("--net '%s': '%.*s' is not a valid interface name", spec,
					(int)vlen, v);
				return -EINVAL;
			}
			memcpy(out.tap, v, vlen);
			out.tap[vlen] = 0;
			have_tap = true;
		} else if (klen == 3 && !memcmp(s, "mac", 3)) {
			char buf[VIRTIO_NET_MAC_STRLEN];
			if (out.has_mac) {
				log_err("--net '%s': mac given twice", spec);
				return -EINVAL;
			}
			bool ok = vlen < sizeof(buf);
			if (ok) {
				memcpy(buf, v, vlen);
				buf[vlen] = 0;
				ok = !virtio_net_mac_parse(buf, out.mac);
			}
			if (!ok) {
				log_err("--net '%s': bad MAC '%.*s' (expected xx:xx:xx:xx:xx:xx)",
					spec, (int)vlen, v);
				return -EINVAL;
			}
			if (out.mac[0] & 1) {
				log_err("--net '%s': MAC %s is a multicast address", spec, buf);
				return -EINVAL;
			}
			if (!mac_usable(out.mac)) {
				log_err("--net '%s': MAC %s is all zeros", spec, buf);
				return -EINVAL;
			}
			out.has_mac = true;
		} else {
			log_err("--net '%s': unknown key '%.*s' (known: tap, mac)", spec, (int)klen,
				s);
			return -EINVAL;
		}
		if (!end)
			break;
		s = end + 1;
	}
	if (!have_tap) {
		log_err("--net '%s': tap=NAME is required", spec);
		return -EINVAL;
	}
	*p = out;
	return 0;
}

/* ---- the tap ---- */

static int tap_open(const char *name, bool *created)
{
	struct ifreq ifr;
	int fd, err;

	*created = if_nametoindex(name) == 0;
	fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		err = -errno;
		log_errno("virtio-net: tap %s: open /dev/net/tun", name);
		return err;
	}
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
	if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
		err = -errno;
		if (err == -EBUSY)
			log_err("virtio-net: tap %s is in use by another process", name);
		else if (err == -EPERM)
			log_err(
			    "virtio-net: tap %s: not permitted (creating a tap needs "
			    "CAP_NET_ADMIN; an existing one must be owned by this user or group)",
			    name);
		else if (err == -EINVAL)
			log_err("virtio-net: %s exists and is not a single-queue tap interface",
				name);
		else
			log_errno("virtio-net: tap %s: TUNSETIFF", name);
		goto fail;
	}
	/* virtio 1.x header (with num_buffers); native order is the guest's little endian. */
	int hdr_len = VIRTIO_NET_HDR_LEN;
	if (ioctl(fd, TUNSETVNETHDRSZ, &hdr_len) < 0) {
		err = -errno;
		log_errno("virtio-net: tap %s: TUNSETVNETHDRSZ", name);
		goto fail;
	}
	/* No checksum or segmentation offload towards the guest: none is negotiated, so every
	 * packet must arrive complete. An existing tap may carry a previous user's setting. */
	if (ioctl(fd, TUNSETOFFLOAD, 0ul) < 0) {
		err = -errno;
		log_errno("virtio-net: tap %s: TUNSETOFFLOAD", name);
		goto fail;
	}
	return fd;
fail:
	close(fd);
	return err;
}

/* ---- receive: tap -> queue 0 ---- */

static void tap_readable(void *opaque, int fd);

/* Device lock held. */
static void rx_watch(struct virtio_net *n)
{
	if (n->rx_watched || n->closing)
		return;
	int r = evloop_add(n->loop, n->tap_fd, tap_readable, n);
	if (r < 0) {
		log_ratelimited(LOG_ERR, "virtio-net: tap %s: cannot watch for packets: %s", n->tap,
				strerror(-r));
		return;
	}
	n->rx_watched = true;
}

/* Device lock held, on the loop thread (inside the tap handler): evloop_del() does not wait
 * for the handler that calls it. */
static void rx_unwatch(struct virtio_net *n)
{
	if (!n->rx_watched)
		return;
	evloop_del(n->loop, n->tap_fd);
	n->rx_watched = false;
}

/*
 * Give the request just taken back to the avail ring, as if never popped (QEMU's
 * virtqueue_unpop): virtq_pop's only progress is last_avail, and the driver cannot tell.
 * Used when the tap had nothing after all, or its packet was dropped: the buffer takes the
 * next one.
 */
static void rx_unpop(struct virtq *q)
{
	q->last_avail--;
}

/* Bytes a dropped packet scribbled into a buffer the guest may see again: account them as
 * device writes (virtq_push() does this for delivered ones). */
static void rx_mark_dirty(struct virtio_net *n, const struct virtq_elem *e, uint64_t len)
{
	for (unsigned int i = 0; i < e->n_in && len; i++) {
		uint64_t l = e->in[i].iov_len < len ? e->in[i].iov_len : len;
		uint64_t off = gmem_offset(n->m, e->in_gpa[i]);
		if (off != UINT64_MAX)
			gmem_mark_dirty(n->m, off, l);
		len -= l;
	}
}

/* Copy the first @len bytes of an iovec array (the header the tap just wrote). */
static void iov_read(const struct iovec *iov, unsigned int n, void *dst, size_t len)
{
	uint8_t *d = dst;
	for (unsigned int i = 0; i < n && len; i++) {
		size_t l = iov[i].iov_len < len ? iov[i].iov_len : len;
		memcpy(d, iov[i].iov_base, l);
		d += l;
		len -= l;
	}
}

/*
 * The tap wrote its vnet header first. With offloads off it never asks for checksumming or
 * segmentation; if it did, the packet cannot be delivered to a driver without GUEST_CSUM /
 * GUEST_TSO (false: drop). Otherwise write the header the spec wants without those features:
 * flags 0 (not even DATA_VALID, which needs GUEST_CSUM), GSO_NONE, num_buffers 1.
 */
static bool rx_fix_header(const struct virtq_elem *e)
{
	uint8_t hdr[VIRTIO_NET_HDR_LEN];
	iov_read(e->in, e->n_in, hdr, sizeof(hdr));
	if ((hdr[HDR_FLAGS] & HDR_F_NEEDS_CSUM) || hdr[HDR_GSO_TYPE] != 0)
		return false;
	memset(hdr, 0, sizeof(hdr));
	hdr[HDR_NUM_BUFFERS] = 1;
	virtq_copy_to_in(e, 0, hdr, sizeof(hdr));
	return true;
}

/* Device lock held. */
static void net_rx(struct virtio_net *n)
{
	struct virtq *q = virtio_mmio_queue(n->t, VIRTIO_NET_RXQ);
	struct virtq_elem *e = &n->elem;
	bool pushed = false;

	if (n->closing)
		return;
	for (int i = 0; i < RX_BURST; i++) {
		if (!virtio_mmio_running(n->t) || !q->ready || q->broken ||
		    !virtq_has_work(q, n->m)) {
			/* Nowhere to put packets: stop watching until the driver adds buffers
			 * (rx queue notify) so a readable tap does not spin the loop. */
			rx_unwatch(n);
			break;
		}
		int r = virtq_pop(q, n->m, e);
		if (r == 0) {
			rx_unwatch(n);
			break;
		}
		if (r == -EINVAL) {
			/* Completed with length 0 by virtq_pop. */
			n->st.rx_errors++;
			pushed = true;
			log_ratelimited(LOG_WARN, "virtio-net %s: bad receive chain", n->tap);
			continue;
		}
		if (r < 0) {
			log_ratelimited(LOG_ERR, "virtio-net %s: receive ring broken", n->tap);
			virtio_mmio_set_needs_reset(n->t);
			rx_unwatch(n);
			break;
		}
		if (e->in_len < VIRTIO_NET_HDR_LEN + ETH_HDR_LEN || e->n_in >= VIRTQ_MAX_IOV) {
			/* Too small for any frame (the tap would consume the packet and fail), or
			 * no room for the spill byte below. */
			n->st.rx_errors++;
			log_ratelimited(
			    LOG_WARN,
			    "virtio-net %s: unusable receive buffer (%llu bytes in %u pieces)",
			    n->tap, (unsigned long long)e->in_len, e->n_in);
			virtq_push(q, n->m, e, 0);
			pushed = true;
			continue;
		}
		/*
		 * The tap truncates a packet to the buffer and returns the buffer's length, so
		 * one byte of ours follows the guest's buffers: a read that reaches it did not fit.
		 * (in[] has room: n_in < VIRTQ_MAX_IOV, and the extra entry is not counted.)
		 */
		uint8_t spill;
		e->in[e->n_in] = (struct iovec){&spill, 1};
		ssize_t len = readv(n->tap_fd, e->in, (int)e->n_in + 1);
		if (len < 0) {
			int err = errno;
			rx_unpop(q);
			if (err == EINTR) {
				i--;
				continue;
			}
			if (err != EAGAIN) {
				/* e.g. EBADFD: the interface was deleted under us. */
				log_ratelimited(LOG_ERR, "virtio-net: tap %s: read: %s", n->tap,
						strerror(err));
				rx_unwatch(n);
			}
			break;
		}
		const char *drop = NULL;
		if ((uint64_t)len > e->in_len)
			drop = "larger than the receive buffer";
		else if ((size_t)len < VIRTIO_NET_HDR_LEN + ETH_HDR_LEN)
			drop = "shorter than an Ethernet header";
		else if (!rx_fix_header(e))
			drop = "with checksum or segmentation offload";
		if (drop) {
			n->st.rx_dropped++;
			log_ratelimited(
			    LOG_WARN,
			    "virtio-net %s: dropped a packet %s (buffer %llu bytes), %llu so far",
			    n->tap, drop, (unsigned long long)e->in_len,
			    (unsigned long long)n->st.rx_dropped);
			rx_mark_dirty(n, e, e->in_len < (uint64_t)len ? e->in_len : (uint64_t)len);
			rx_unpop(q);
			continue;
		}
		n->st.rx_packets++;
		n->st.rx_bytes += (uint64_t)len - VIRTIO_NET_HDR_LEN;
		pushed = true;
		virtq_push(q, n->m, e, (uint32_t)len);
	}
	if (pushed && virtq_should_notify(q, n->m))
		virtio_mmio_interrupt(n->t, VIRTIO_MMIO_INT_VRING);
}

static void tap_readable(void *opaque, int fd)
{
	struct virtio_net *n = opaque;
	(void)fd;
	virtio_mmio_lock(n->t);
	net_rx(n);
	virtio_mmio_unlock(n->t);
}

/* ---- transmit: queue 1 -> tap ---- */

/* Largest frame the guest may hand over: an IP datagram's maximum plus an 802.1Q header. */
#define TX_MAX_FRAME (65535u + ETH_HDR_LEN + 4u)

/* Send one request's frame. Device lock held. */
static void tx_one(struct virtio_net *n, const struct virtq_elem *e)
{
	static uint8_t zero_hdr[VIRTIO_NET_HDR_LEN]; /* never written: writev needs non-const */
	uint8_t hdr[VIRTIO_NET_HDR_LEN];
	uint64_t frame = e->out_len - VIRTIO_NET_HDR_LEN;

	if (e->out_len < VIRTIO_NET_HDR_LEN + ETH_HDR_LEN || frame > TX_MAX_FRAME) {
		n->st.tx_errors++;
		log_ratelimited(LOG_WARN, "virtio-net %s: transmit request of %llu bytes ignored",
				n->tap, (unsigned long long)e->out_len);
		return;
	}
	virtq_copy_from_out(e, 0, hdr, sizeof(hdr));
	if (hdr[HDR_FLAGS] || hdr[HDR_GSO_TYPE]) {
		/* Checksum or segmentation requests without CSUM/HOST_TSO* negotiated. */
		n->st.tx_errors++;
		log_ratelimited(
		    LOG_WARN,
		    "virtio-net %s: transmit header asks for offloads (flags %#x, gso %#x) "
		    "that were not negotiated: frame dropped",
		    n->tap, hdr[HDR_FLAGS], hdr[HDR_GSO_TYPE]);
		return;
	}
	/*
	 * The tap gets a header of ours (all zeros: nothing to offload), not the guest's: another
	 * vCPU could rewrite that one after the check above. The frame itself goes from guest
	 * memory, skipping the guest's header wherever it ends.
	 */
	unsigned int niov = 0;
	size_t skip = VIRTIO_NET_HDR_LEN;
	n->tx_iov[niov++] = (struct iovec){zero_hdr, sizeof(zero_hdr)};
	for (unsigned int i = 0; i < e->n_out; i++) {
		size_t l = e->out[i].iov_len;
		if (skip >= l) {
			skip -= l;
			continue;
		}
		n->tx_iov[niov++] = (struct iovec){(uint8_t *)e->out[i].iov_base + skip, l - skip};
		skip = 0;
	}
	if (niov > IOV_MAX) {
		n->st.tx_errors++;
		log_ratelimited(LOG_WARN, "virtio-net %s: transmit frame in too many pieces (%u)",
				n->tap, niov);
		return;
	}
	ssize_t w;
	do
		w = writev(n->tap_fd, n->tx_iov, (int)niov);
	while (w < 0 && errno == EINTR);
	if (w < 0) {
		/* EIO: the interface is down; EAGAIN: the kernel has no room. Never wait: a host
		 * that does not take frames must not stall the guest, as a NIC with no link. */
		int err = errno;
		n->st.tx_dropped++;
		log_ratelimited(LOG_WARN,
				"virtio-net: tap %s refused a frame (%s%s): dropped, %llu so far",
				n->tap, strerror(err), err == EIO ? ": interface down?" : "",
				(unsigned long long)n->st.tx_dropped);
		return;
	}
	n->st.tx_packets++;
	n->st.tx_bytes += frame;
}

/* Device lock held. */
static void net_tx(struct virtio_net *n)
{
	struct virtq *q = virtio_mmio_queue(n->t, VIRTIO_NET_TXQ);
	struct virtq_elem *e = &n->elem;
	bool pushed = false;

	if (!virtio_mmio_running(n->t) || !q->ready || q->broken)
		return;
	/* Until the ring is empty: the driver notified once for everything it queued. */
	for (;;) {
		int r = virtq_pop(q, n->m, e);
		if (r == 0)
			break;
		if (r == -EINVAL) {
			n->st.tx_errors++;
			pushed = true;
			log_ratelimited(LOG_WARN, "virtio-net %s: bad transmit chain", n->tap);
			continue;
		}
		if (r < 0) {
			log_ratelimited(LOG_ERR, "virtio-net %s: transmit ring broken", n->tap);
			virtio_mmio_set_needs_reset(n->t);
			break;
		}
		tx_one(n, e);
		virtq_push(q, n->m, e, 0);
		pushed = true;
	}
	if (pushed && virtq_should_notify(q, n->m))
		virtio_mmio_interrupt(n->t, VIRTIO_MMIO_INT_VRING);
}

/* ---- the device's side of the transport ---- */

static void net_config_read(void *dev, uint32_t off, void *buf, uint32_t len)
{
	struct virtio_net *n = dev;
	uint8_t cfg[VIRTIO_NET_CONFIG_SIZE];
	memcpy(cfg, n->mac, 6);
	cfg[6] = VIRTIO_NET_S_LINK_UP; /* status, le16 */
	cfg[7] = 0;
	if (off > sizeof(cfg) || len > sizeof(cfg) - off) {
		memset(buf, 0xff, len);
		return;
	}
	memcpy(buf, cfg + off, len);
}

static void net_config_write(void *dev, uint32_t off, const void *buf, uint32_t len)
{
	struct virtio_net *n = dev;
	(void)buf;
	/* Read-only for a virtio 1.x driver (no CTRL_MAC_ADDR): ignored. */
	log_ratelimited(LOG_WARN, "virtio-net %s: driver wrote %u bytes of config at %u (ignored)",
			n->tap, len, off);
}

static void net_queue_notify(void *dev, unsigned int q)
{
	struct virtio_net *n = dev;
	if (q == VIRTIO_NET_RXQ) {
		/* New receive buffers: take packets again when the tap has some. */
		if (virtio_mmio_running(n->t))
			rx_watch(n);
	} else if (q == VIRTIO_NET_TXQ) {
		net_tx(n);
	}
}

static void net_driver_ok(void *dev)
{
	rx_watch(dev);
}

static int net_save(void *dev, struct enc *e)
{
	struct virtio_net *n = dev;
	enc_bytes(e, n->mac, 6);
	enc_u64(e, n->st.rx_packets);
	enc_u64(e, n->st.rx_bytes);
	enc_u64(e, n->st.rx_dropped);
	enc_u64(e, n->st.rx_errors);
	enc_u64(e, n->st.tx_packets);
	enc_u64(e, n->st.tx_bytes);
	enc_u64(e, n->st.tx_dropped);
	enc_u64(e, n->st.tx_errors);
	return enc_error(e);
}

static int net_load(void *dev, struct dec *d, unsigned int version)
{
	struct virtio_net *n = dev;
	struct virtio_net_stats st;
	uint8_t mac[6];
	char a[VIRTIO_NET_MAC_STRLEN], b[VIRTIO_NET_MAC_STRLEN];

	if (version < 1 || version > VIRTIO_NET_STATE_VERSION) {
		log_err("virtio-net %s: state version %u not supported (newest %u)", n->tap,
			version, VIRTIO_NET_STATE_VERSION);
		return -ENOTSUP;
	}
	dec_bytes(d, mac, 6);
	dec_u64(d, &st.rx_packets);
	dec_u64(d, &st.rx_bytes);
	dec_u64(d, &st.rx_dropped);
	dec_u64(d, &st.rx_errors);
	dec_u64(d, &st.tx_packets);
	dec_u64(d, &st.tx_bytes);
	dec_u64(d, &st.tx_dropped);
	dec_u64(d, &st.tx_errors);
	if (dec_error(d)) {
		log_err("virtio-net %s: device state truncated", n->tap);
		return dec_error(d);
	}
	if (!mac_usable(mac)) {
		log_err("virtio-net %s: saved MAC %s is not a unicast address", n->tap,
			virtio_net_mac_format(mac, a));
		return -EBADMSG;
	}
	/* The guest's driver knows the saved MAC: it wins over the one this device was created
	 * with (generated, or from the command line). */
	if (memcmp(mac, n->mac, 6))
		log_info("virtio-net %s: MAC %s from the saved state (not %s)", n->tap,
			 virtio_net_mac_format(mac, a), virtio_net_mac_format(n->mac, b));
	memcpy(n->mac, mac, 6);
	n->st = st;
	return 0;
}

static const struct virtio_device_ops net_ops = {
    .name = "virtio-net",
    .device_id = VIRTIO_ID_NET,
    .features = 1ull << VIRTIO_NET_F_MAC | 1ull << VIRTIO_NET_F_STATUS,
    .nqueues = 2,
    .queue_max = VIRTIO_NET_QUEUE_SIZE,
    .config_size = VIRTIO_NET_CONFIG_SIZE,
    .config_read = net_config_read,
    .config_write = net_config_write,
    .queue_notify = net_queue_notify,
    .driver_ok = net_driver_ok,
    .state_version = VIRTIO_NET_STATE_VERSION,
    .save = net_save,
    .load = net_load,
};

/* ---- life cycle ---- */

struct virtio_net *virtio_net_create(const struct virtio_net_params *p, struct gmem *m, int vm_fd,
				     struct evloop *loop, uint64_t base, uint32_t gsi)
{
	struct virtio_net *n;
	char macs[VIRTIO_NET_MAC_STRLEN];
	bool created;
	size_t len = strnlen(p->tap, sizeof(p->tap));

	if (!ifname_valid(p->tap, len)) {
		log_err("virtio-net: '%.*s' is not a valid interface name", (int)len, p->tap);
		return NULL;
	}
	if (p->has_mac && !mac_usable(p->mac)) {
		log_err("virtio-net: tap %s: MAC %s is not a unicast address", p->tap,
			virtio_net_mac_format(p->mac, macs));
		return NULL;
	}
	n = calloc(1, sizeof(*n));
	if (!n) {
		log_err("virtio-net: out of memory");
		return NULL;
	}
	n->m = m;
	n->loop = loop;
	n->tap_fd = -1;
	memcpy(n->tap, p->tap, len);
	if (p->has_mac)
		memcpy(n->mac, p->mac, 6);
	else if (virtio_net_mac_generate(n->mac))
		goto fail;
	n->tap_fd = tap_open(n->tap, &created);
	if (n->tap_fd < 0)
		goto fail;
	n->t = virtio_mmio_create(&net_ops, n, m, vm_fd, loop, base, gsi);
	if (!n->t)
		goto fail;
	log_info("virtio-net: tap %s%s, guest MAC %s", n->tap,
		 created ? " (created: goes away when vmsnap exits; down until brought up)" : "",
		 virtio_net_mac_format(n->mac, macs));
	return n;
fail:
	if (n->tap_fd >= 0)
		close(n->tap_fd);
	free(n);
	return NULL;
}

void virtio_net_destroy(struct virtio_net *n)
{
	bool watched;
	if (!n)
		return;
	virtio_mmio_lock(n->t);
	watched = n->rx_watched;
	n->rx_watched = false;
	n->closing = true;
	virtio_mmio_unlock(n->t);
	/* Without the lock: evloop_del() waits for a running tap handler, which takes it. */
	if (watched)
		evloop_del(n->loop, n->tap_fd);
	virtio_mmio_destroy(n->t);
	close(n->tap_fd);
	free(n);
}

struct virtio_mmio *virtio_net_transport(struct virtio_net *n)
{
	return n->t;
}

void virtio_net_mac(struct virtio_net *n, uint8_t mac[6])
{
	virtio_mmio_lock(n->t);
	memcpy(mac, n->mac, 6);
	virtio_mmio_unlock(n->t);
}

int virtio_net_set_mac(struct virtio_net *n, const uint8_t mac[6])
{
	if ((mac[0] & 1) || !(mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]))
		return -EINVAL;
	virtio_mmio_lock(n->t);
	memcpy(n->mac, mac, 6);
	/* A running driver learns of it through a config-change interrupt (and generation). */
	if (virtio_mmio_running(n->t))
		virtio_mmio_interrupt(n->t, VIRTIO_MMIO_INT_CONFIG);
	virtio_mmio_unlock(n->t);
	return 0;
}

const char *virtio_net_tap_name(const struct virtio_net *n)
{
	return n->tap;
}

void virtio_net_get_stats(struct virtio_net *n, struct virtio_net_stats *s)
{
	virtio_mmio_lock(n->t);
	*s = n->st;
	virtio_mmio_unlock(n->t);
}
