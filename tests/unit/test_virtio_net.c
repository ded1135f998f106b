/* SPDX-License-Identifier: MIT */
/*
 * virtio-net: option parsing, MACs, and the device on a real tap driven through its
 * virtio-mmio registers with rings built by hand in RAM (no KVM: QueueNotify signals the
 * queue's eventfd and the test runs the loop itself). The host side of the tap is an
 * AF_PACKET socket. Needs CAP_NET_ADMIN and /dev/net/tun: without them the tap tests fail.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "formats/codec.h"
#include "vmm/evloop.h"
#include "vmm/gmem.h"
#include "vmm/virtio_mmio.h"
#include "vmm/virtio_net.h"
#include "tests/common/virtio_driver.h"

/* ---- option parsing and MACs ---- */

static void test_parse_good(void **state)
{
	(void)state;
	struct virtio_net_params p;
	memset(&p, 0x5a, sizeof(p));
	assert_int_equal(virtio_net_parse("tap=tap0", &p), 0);
	assert_string_equal(p.tap, "tap0");
	assert_false(p.has_mac);

	assert_int_equal(virtio_net_parse("tap=vm-1.net_x,mac=06:AB:cd:00:11:fe", &p), 0);
	assert_string_equal(p.tap, "vm-1.net_x");
	assert_true(p.has_mac);
	const uint8_t want[6] = {0x06, 0xab, 0xcd, 0x00, 0x11, 0xfe};
	assert_memory_equal(p.mac, want, 6);

	/* Either order; 15 characters is the longest name. */
	assert_int_equal(virtio_net_parse("mac=52:54:00:12:34:56,tap=abcdefghijklmno", &p), 0);
	assert_string_equal(p.tap, "abcdefghijklmno");
	assert_int_equal(p.mac[0], 0x52);
}

static void test_parse_bad(void **state)
{
	(void)state;
	static const char *const bad[] = {
	    "",				       /* empty */
	    "tap",			       /* not KEY=VALUE */
	    "tap=",			       /* empty name */
	    "tap=abcdefghijklmnop",	       /* 16 characters */
	    "tap=a/b",			       /* invalid name */
	    "tap=a b",			       /* white space */
	    "tap=..",			       /* invalid name */
	    "tap=a:0",			       /* alias syntax */
	    "tap=t0,",			       /* trailing comma */
	    ",tap=t0",			       /* empty item */
	    "tap=t0,tap=t1",		       /* twice */
	    "tap=t0,queues=2",		       /* unknown key */
	    "TAP=t0",			       /* keys are lowercase */
	    "mac=06:00:00:00:00:01",	       /* no tap */
	    "tap=t0,mac=",		       /* empty MAC */
	    "tap=t0,mac=06:00:00:00:00",       /* short */
	    "tap=t0,mac=06:00:00:00:00:01:02", /* long */
	    "tap=t0,mac=06-00-00-00-00-01",    /* wrong separator */
	    "tap=t0,mac=0g:00:00:00:00:01",    /* not hex */
	    "tap=t0,mac=6:0:0:0:0:1",	       /* not two digits each */
	    "tap=t0,mac=01:00:5e:00:00:01",    /* multicast */
	    "tap=t0,mac=ff:ff:ff:ff:ff:ff",    /* broadcast */
	    "tap=t0,mac=00:00:00:00:00:00",    /* zero */
	    "tap=t0,mac=06:00:00:00:00:01,mac=06:00:00:00:00:02",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct virtio_net_params p;
		memset(&p, 0x5a, sizeof(p));
		if (virtio_net_parse(bad[i], &p) != -EINVAL)
			fail_msg("'%s' was accepted", bad[i]);
		assert_int_equal(((uint8_t *)&p)[0], 0x5a); /* untouched */
	}
	assert_int_equal(virtio_net_parse(NULL, &(struct virtio_net_params){0}), -EINVAL);
}

static void test_mac(void **state)
{
	(void)state;
	uint8_t a[6], b[6], c[6];
	char s[VIRTIO_NET_MAC_STRLEN];
	assert_int_equal(virtio_net_mac_generate(a), 0);
	assert_int_equal(virtio_net_mac_generate(b), 0);
	/* Locally administered unicast. */
	assert_int_equal(a[0], 0x06);
	assert_int_equal(a[0] & 1, 0);
	assert_int_equal(a[0] & 2, 2);
	assert_memory_not_equal(a, b, 6); /* 40 random bits each */
	assert_string_equal(virtio_net_mac_format((const uint8_t[6]){6, 0xab, 0, 1, 0x10, 0xff}, s),
			    "06:ab:00:01:10:ff");
	virtio_net_mac_format(a, s);
	assert_int_equal(virtio_net_mac_parse(s, c), 0);
	assert_memory_equal(a, c, 6);
	assert_int_equal(virtio_net_mac_parse("06:ab:00:01:10:f", c), -EINVAL);
	assert_int_equal(virtio_net_mac_parse("06:ab:00:01:10:fff", c), -EINVAL);
	assert_int_equal(virtio_net_mac_parse("06:ab:00:01:10;ff", c), -EINVAL);
}

/* ---- a driver, by hand ---- */

#define RAM_SIZE  (4ull << 20)
#define QSIZE	  256u
#define BUF_BASE  0x100000ull
#define ETHERTYPE 0x88B5

struct fx {
	struct gmem m;
	struct evloop *loop;
	struct virtio_net *n;
	struct virtio_mmio *t;
	struct vdrv_ring q[2];
	uint64_t buf_next;
	char tap[VIRTIO_NET_IFNAMSIZ];
	int pkt; /* AF_PACKET socket bound to the tap, ethertype ETHERTYPE */
	int ifindex;
	uint8_t mac[6];
	bool persistent; /* the test made a persistent tap: teardown removes it */
};

static unsigned int tap_serial;

static uint32_t rd(struct fx *f, uint64_t off)
{
	return vdrv_rd(f->t, off);
}

static void wr(struct fx *f, uint64_t off, uint32_t v)
{
	vdrv_wr(f->t, off, v);
}

/* Run every ready handler (without waiting). */
static int drain(struct fx *f)
{
	int total = 0, r;
	while ((r = evloop_run_once(f->loop, 0)) > 0)
		total += r;
	assert_true(r >= 0);
	return total;
}

static uint64_t alloc_buf(struct fx *f, uint32_t len)
{
	uint64_t a = f->buf_next;
	f->buf_next += (len + 63) & ~63u;
	assert_true(f->buf_next < RAM_SIZE);
	return a;
}

static void put16(struct fx *f, uint64_t gpa, uint16_t v)
{
	assert_int_equal(gmem_write(&f->m, gpa, &v, 2), 0);
}

static uint16_t get16(struct fx *f, uint64_t gpa)
{
	uint16_t v;
	assert_int_equal(gmem_read(&f->m, gpa, &v, 2), 0);
	return v;
}

/* Queue a chain on queue @qi (not notified). Returns its head. */
static uint16_t add_chain(struct fx *f, unsigned int qi, const struct vdrv_seg *s, unsigned int n)
{
	return vdrv_add_chain(&f->q[qi], s, n);
}

static void notify(struct fx *f, unsigned int qi)
{
	wr(f, VIRTIO_MMIO_QUEUE_NOTIFY, qi);
	assert_true(evloop_run_once(f->loop, 1000) >= 1);
	drain(f);
}

/* Next used element of queue @qi, if any: head and length. */
static bool next_used(struct fx *f, unsigned int qi, uint32_t *id, uint32_t *len)
{
	return vdrv_next_used(&f->q[qi], id, len);
}

/* Whether the device signalled an interrupt since the last call (and ack it). */
static bool took_irq(struct fx *f)
{
	uint64_t v;
	if (read(virtio_mmio_irq_fd(f->t), &v, sizeof(v)) != sizeof(v))
		return false;
	return vdrv_ack(f->t) & VIRTIO_MMIO_INT_VRING;
}

static int ifflags(const char *name, bool up)
{
	struct ifreq ifr;
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), r = 0;
	if (s < 0)
		return -errno;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
		r = -errno;
	if (!r) {
		ifr.ifr_flags = (short)(up ? ifr.ifr_flags | IFF_UP : ifr.ifr_flags & ~IFF_UP);
		if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
			r = -errno;
	}
	close(s);
	return r;
}

/* Bring the tap up (no IPv6 chatter on it) and bind the host-side packet socket. */
static void host_attach(struct fx *f)
{
	char path[128];
	snprintf(path, sizeof(path), "/proc/sys/net/ipv6/conf/%s/disable_ipv6", f->tap);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (write(fd, "1", 1) != 1)
			print_message("note: cannot disable IPv6 on %s\n", f->tap);
		close(fd);
	}
	int r = ifflags(f->tap, true);
	if (r)
		fail_msg("cannot bring %s up: %s", f->tap, strerror(-r));
	f->ifindex = (int)if_nametoindex(f->tap);
	assert_true(f->ifindex > 0);
	f->pkt = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETHERTYPE));
	if (f->pkt < 0)
		fail_msg("AF_PACKET socket: %s (needs CAP_NET_RAW)", strerror(errno));
	struct sockaddr_ll sll = {
	    .sll_family = AF_PACKET, .sll_protocol = htons(ETHERTYPE), .sll_ifindex = f->ifindex};
	assert_int_equal(bind(f->pkt, (struct sockaddr *)&sll, sizeof(sll)), 0);
}

static void host_detach(struct fx *f)
{
	if (f->pkt >= 0)
		close(f->pkt);
	f->pkt = -1;
}

/* A frame the host received on the tap (what the guest sent), or -1 after @ms. */
static ssize_t host_recv(struct fx *f, uint8_t *buf, size_t size, int ms)
{
	for (;;) {
		struct pollfd p = {.fd = f->pkt, .events = POLLIN};
		if (poll(&p, 1, ms) <= 0)
			return -1;
		struct sockaddr_ll from;
		socklen_t fl = sizeof(from);
		ssize_t n = recvfrom(f->pkt, buf, size, 0, (struct sockaddr *)&from, &fl);
		if (n < 0)
			return -1;
		if (from.sll_pkttype != PACKET_OUTGOING) /* not our own host_send() */
			return n;
	}
}

/* Send a frame out of the tap towards the guest: it lands on the tap fd's read side. */
static void host_send(struct fx *f, const uint8_t *frame, size_t len)
{
	struct sockaddr_ll sll = {.sll_family = AF_PACKET,
				  .sll_protocol = htons(ETHERTYPE),
				  .sll_ifindex = f->ifindex,
				  .sll_halen = 6};
	memcpy(sll.sll_addr, frame, 6);
	ssize_t n = sendto(f->pkt, frame, len, 0, (struct sockaddr *)&sll, sizeof(sll));
	if (n != (ssize_t)len)
		fail_msg("sendto on %s: %s", f->tap, n < 0 ? strerror(errno) : "short");
}

/* An Ethernet frame of ETHERTYPE: @dst, @src, then @payload padded with zeros to @len. */
static size_t make_frame(uint8_t *buf, const uint8_t *dst, const uint8_t *src, const char *payload,
			 size_t len)
{
	memset(buf, 0, len);
	memcpy(buf, dst, 6);
	memcpy(buf + 6, src, 6);
	buf[12] = ETHERTYPE >> 8;
	buf[13] = ETHERTYPE & 0xff;
	memcpy(buf + 14, payload, strlen(payload));
	return len;
}

static const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
static const uint8_t host_mac[6] = {0x06, 0x11, 0x22, 0x33, 0x44, 0x55};

static void driver_init(struct fx *f, bool ok);

/* Create a device on tap @name with @p and drive it to DRIVER_OK. */
static void device_up(struct fx *f, const struct virtio_net_params *p)
{
	f->n = virtio_net_create(p, &f->m, -1, f->loop, 0xd0000000ull, 5);
	if (!f->n)
		fail_msg(
		    "cannot create virtio-net on tap %s (see the log above; the tap tests need "
		    "root or CAP_NET_ADMIN and /dev/net/tun)",
		    p->tap);
	f->t = virtio_net_transport(f->n);
	driver_init(f, true);
}

/* What a driver does from reset: features, both queues on zeroed rings, DRIVER_OK if @ok. */
static void driver_init(struct fx *f, bool ok)
{
	assert_int_equal(rd(f, VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_NET);
	uint64_t feat = vdrv_offered(f->t);
	assert_true(feat & (1ull << VIRTIO_NET_F_MAC));
	assert_true(feat & (1ull << VIRTIO_NET_F_STATUS));
	assert_true(feat & (1ull << VIRTIO_F_VERSION_1));
	/* No offloads: CSUM, GUEST_CSUM, GUEST/HOST TSO/UFO/ECN (0..14), MRG_RXBUF (15),
	 * CTRL_VQ (17), MQ (22), MTU (3). */
	assert_int_equal(
	    feat & 0x47ffffull & ~(1ull << VIRTIO_NET_F_MAC | 1ull << VIRTIO_NET_F_STATUS), 0);
	uint64_t want =
	    1ull << VIRTIO_NET_F_MAC | 1ull << VIRTIO_NET_F_STATUS | 1ull << VIRTIO_F_VERSION_1;
	vdrv_accept(f->t, want);
	assert_int_equal(rd(f, VIRTIO_MMIO_STATUS) & 8, 8);
	for (unsigned int i = 0; i < 2; i++) {
		struct vdrv_ring *r = &f->q[i];
		uint64_t desc = 0x10000ull * (i + 1);
		vdrv_ring_init(r, &f->m, QSIZE, desc, desc + 0x1000, desc + 0x2000, 0x3000);
		wr(f, VIRTIO_MMIO_QUEUE_SEL, i);
		assert_int_equal(rd(f, VIRTIO_MMIO_QUEUE_NUM_MAX), VIRTIO_NET_QUEUE_SIZE);
		vdrv_queue(f->t, i, QSIZE, r->desc, r->avail, r->used);
		assert_int_equal(rd(f, VIRTIO_MMIO_QUEUE_READY), 1);
	}
	if (!ok)
		return;
	wr(f, VIRTIO_MMIO_STATUS, 1 | 2 | 8 | 4);
	assert_int_equal(rd(f, VIRTIO_MMIO_STATUS), 1 | 2 | 8 | 4);
	drain(f);
	took_irq(f);
	/* The MAC through config space. */
	for (unsigned int i = 0; i < 6; i++) {
		uint8_t b;
		virtio_mmio_io(f->t, VIRTIO_MMIO_CONFIG + i, &b, 1, false);
		f->mac[i] = b;
	}
}

/* Make (@persist) or remove a persistent tap as `ip tuntap add/del` does: no vnet header. */
static int persistent_tap(const char *name, bool persist)
{
	struct ifreq ifr;
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC), r = 0;
	if (fd < 0)
		return -errno;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
	if (ioctl(fd, TUNSETIFF, &ifr) < 0 || ioctl(fd, TUNSETPERSIST, (unsigned long)persist) < 0)
		r = -errno;
	close(fd);
	return r;
}

static int fx_setup(void **state)
{
	static struct fx fx;
	struct fx *f = &fx;
	memset(f, 0, sizeof(*f));
	f->pkt = -1;
	snprintf(f->tap, sizeof(f->tap), "vmsnap%u_%u", (unsigned int)getpid() % 100000u,
		 tap_serial++ % 100u);
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		print_error("cannot open /dev/net/tun: %s: the virtio-net tests need a tap device "
			    "(run as root, with the tun module)\n",
			    strerror(errno));
		return -1; /* cmocka reports the test as failed */
	}
	close(fd);
	assert_int_equal(gmem_create(&f->m, RAM_SIZE, GMEM_MEMFD), 0);
	f->loop = evloop_create();
	assert_non_null(f->loop);
	f->buf_next = BUF_BASE;
	*state = f;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *f = *state;
	host_detach(f);
	virtio_net_destroy(f->n);
	if (f->persistent && persistent_tap(f->tap, false))
		print_error("cannot remove the test's tap %s\n", f->tap);
	evloop_destroy(f->loop);
	gmem_free(&f->m);
	return 0;
}

static struct virtio_net_params params(struct fx *f)
{
	struct virtio_net_params p;
	memset(&p, 0, sizeof(p));
	snprintf(p.tap, sizeof(p.tap), "%s", f->tap);
	return p;
}

/* ---- the device ---- */

static void test_config_and_tap(void **state)
{
	struct fx *f = *state;
	struct virtio_net_params p = params(f);
	assert_int_equal(if_nametoindex(f->tap), 0); /* created by the device */
	p.has_mac = true;
	assert_int_equal(virtio_net_mac_parse("06:de:ad:be:ef:01", p.mac), 0);
	device_up(f, &p);
	assert_memory_equal(f->mac, p.mac, 6);
	uint8_t mac[6];
	virtio_net_mac(f->n, mac);
	assert_memory_equal(mac, p.mac, 6);
	assert_string_equal(virtio_net_tap_name(f->n), f->tap);
	uint16_t status;
	virtio_mmio_io(f->t, VIRTIO_MMIO_CONFIG + 6, (uint8_t *)&status, 2, false);
	assert_int_equal(status, VIRTIO_NET_S_LINK_UP);
	uint32_t w;
	virtio_mmio_io(f->t, VIRTIO_MMIO_CONFIG + 4, (uint8_t *)&w, 4, false);
	assert_int_equal(w, 0x000101efu); /* mac[4], mac[5], status le16 */
	/* Writes are ignored. */
	uint8_t b = 0x99;
	virtio_mmio_io(f->t, VIRTIO_MMIO_CONFIG, &b, 1, true);
	virtio_mmio_io(f->t, VIRTIO_MMIO_CONFIG, &b, 1, false);
	assert_int_equal(b, 0x06);
	assert_true(if_nametoindex(f->tap) > 0);

	/* A second user of the same tap is refused; so is an interface that is not a tap. */
	assert_null(virtio_net_create(&p, &f->m, -1, f->loop, 0xd0001000ull, 6));
	struct virtio_net_params lo = {.tap = "lo"};
	assert_null(virtio_net_create(&lo, &f->m, -1, f->loop, 0xd0001000ull, 6));

	/* A tap vmsnap created goes away with the device. */
	virtio_net_destroy(f->n);
	f->n = NULL;
	assert_int_equal(if_nametoindex(f->tap), 0);
}

static void test_generated_mac(void **state)
{
	struct fx *f = *state;
	struct virtio_net_params p = params(f);
	device_up(f, &p);
	assert_int_equal(f->mac[0], 0x06);
	uint8_t mac[6];
	virtio_net_mac(f->n, mac);
	assert_memory_equal(mac, f->mac, 6);
}

static void test_tx(void **state)
{
	struct fx *f = *state;
	struct virtio_net_params p = params(f);
	uint8_t frame[128], got[2048];
	uint32_t id, len;
	device_up(f, &p);
	host_attach(f);

	/* Header and frame in one descriptor. */
	size_t fl = make_frame(frame, bcast, f->mac, "VMSNAP-HB seq=1", 60);
	uint64_t a = alloc_buf(f, VIRTIO_NET_HDR_LEN + (uint32_t)fl);
	uint8_t zero[VIRTIO_NET_HDR_LEN] = {0};
	assert_int_equal(gmem_write(&f->m, a, zero, sizeof(zero)), 0);
	assert_int_equal(gmem_write(&f->m, a + VIRTIO_NET_HDR_LEN, frame, fl), 0);
	uint16_t h1 =
	    add_chain(f, 1, &(struct vdrv_seg){a, VIRTIO_NET_HDR_LEN + (uint32_t)fl, false}, 1);

	/* Header, then the frame split over two more descriptors. */
	size_t fl2 = make_frame(frame, bcast, f->mac, "VMSNAP-HB seq=2 three pieces", 100);
	uint64_t hb = alloc_buf(f, VIRTIO_NET_HDR_LEN), b1 = alloc_buf(f, 20),
		 b2 = alloc_buf(f, 80);
	assert_int_equal(gmem_write(&f->m, hb, zero, sizeof(zero)), 0);
	assert_int_equal(gmem_write(&f->m, b1, frame, 20), 0);
	assert_int_equal(gmem_write(&f->m, b2, frame + 20, fl2 - 20), 0);
	struct vdrv_seg s2[] = {
	    {hb, VIRTIO_NET_HDR_LEN, false}, {b1, 20, false}, {b2, (uint32_t)fl2 - 20, false}};
	uint16_t h2 = add_chain(f, 1, s2, 3);
	notify(f, 1);

	assert_true(took_irq(f));
	assert_true(next_used(f, 1, &id, &len));
	assert_int_equal(id, h1);
	assert_int_equal(len, 0);
	assert_true(next_used(f, 1, &id, &len));
	assert_int_equal(id, h2);
	assert_int_equal(len, 0);
	assert_false(next_used(f, 1, &id, &len));

	ssize_t n = host_recv(f, got, sizeof(got), 2000);
	assert_int_equal(n, 60);
	make_frame(frame, bcast, f->mac, "VMSNAP-HB seq=1", 60);
	assert_memory_equal(got, frame, 60);
	n = host_recv(f, got, sizeof(got), 2000);
	assert_int_equal(n, 100);
	make_frame(frame, bcast, f->mac, "VMSNAP-HB seq=2 three pieces", 100);
	assert_memory_equal(got, frame, 100);

	struct virtio_net_stats st;
	virtio_net_get_stats(f->n, &st);
	assert_int_equal(st.tx_packets, 2);
	assert_int_equal(st.tx_bytes, 160);
	assert_int_equal(st.tx_dropped + st.tx_errors, 0);
}

static void test_tx_link_down(void **state)
{
	struct fx *f = *state;
	struct virtio_net_params p = params(f);
	uint8_t frame[64];
	uint32_t id, len;
	device_up(f, &p); /* the tap the device created is down */

	make_frame(frame, bcast, f->mac, "down", 60);
	uint64_t a = alloc_buf(f, VIRTIO_NET_HDR_LEN + 60);
	assert_int_equal(gmem_write(&f->m, a + VIRTIO_NET_HDR_LEN, frame, 60), 0);
	for (int i = 0; i < 3; i++)
		add_chain(f, 1, &(struct vdrv_seg){a, VIRTIO_NET_HDR_LEN + 60, false}, 1);
	notify(f, 1);
	/* Completed (the guest is not stalled), counted as dropped. */
	for (int i = 0; i < 3; i++)
		assert_true(next_used(f, 1, &id, &len));
	struct virtio_net_stats st;
	virtio_net_get_stats(f->n, &st);
	assert_int_equal(st.tx_dropped, 3);
	assert_int_equal(st.tx_packets, 0);
}

static void test_tx_bad_chains(void **state)
{
	struct fx *f = *state;
	struct virtio_net_params p = params(f);
	uint8_t frame[128], got[2048], hdr[VIRTIO_NET_HDR_LEN];
	uint32_t id, len;
	device_up(f, &p);
	host_attach(f);

	/* 1: a buffer outside RAM. */
	add_chain(f, 1, &(struct vdrv_seg){0x7fff0000ull, 100, false}, 1);
	/* 2: a header and nothing else. */
	uint64_t h = alloc_buf(f, VIRTIO_NET_HDR_LEN);
	memset(hdr, 0, sizeof(hdr));
	assert_int_equal(gmem_write(&f->m, h, hdr, sizeof(hdr)), 0);
	add_chain(f, 1, &(struct vdrv_seg){h, VIRTIO_NET_HDR_LEN, false}, 1);
	/* 3: a header asking for checksum offload and TSO, never negotiated. */
	make_frame(frame, bcast, f->mac, "offload", 60);
	uint64_t a = alloc_buf(f, VIRTIO_NET_HDR_LEN + 60);
	hdr[0] = 1;
	hdr[1] = 1;
	assert_int_equal(gmem_write(&f->m, a, hdr, sizeof(hdr)), 0);
	assert_int_equal(gmem_write(&f->m, a + VIRTIO_NET_HDR_LEN, frame, 60), 0);
	add_chain(f, 1, &(struct vdrv_seg){a, VIRTIO_NET_HDR_LEN + 60, false}, 1);
	/* 4: a descriptor loop. */
	struct vdrv_ring *r = &f->q[1];
	uint16_t head = r->next_desc;
	struct {
		uint64_t addr;
		uint32_t len;
		uint16_t flags, next;
	} d = {a, 16, VDRV_DESC_F_NEXT, head};
	assert_int_equal(gmem_write(&f->m, r->desc + 16ull * head, &d, 16), 0);
	r->next_desc++;
	put16(f, r->avail + 4 + 2ull * (r->avail_idx % QSIZE), head);
	r->avail_idx++;
	put16(f, r->avail + 2, r->avail_idx);
	/* 5: a good frame after all that. */
	make_frame(frame, bcast, f->mac, "still alive", 64);
	uint64_t g = alloc_buf(f, VIRTIO_NET_HDR_LEN + 64);
	memset(hdr, 0, sizeof(hdr));
	assert_int_equal(gmem_write(&f->m, g, hdr, sizeof(hdr)), 0);
	assert_int_equal(gmem_write(&f->m, g + VIRTIO_NET_HDR_LEN, frame, 64), 0);
	add_chain(f, 1, &(struct vdrv_seg){g, VIRTIO_NET_HDR_LEN + 64, false}, 1);
	notify(f, 1);

	for (int i = 0; i < 5; i++) {
		assert_true(next_used(f, 1, &id, &len));
		assert_int_equal(len, 0);
	}
	assert_false(next_used(f, 1, &id, &len));
	assert_true(took_irq(f));
	/* Only the good frame reached the host. */
	ssize_t n = host_recv(f, got, sizeof(got), 2000);
	assert_int_equal(n, 64);
	assert_memory_equal(got, frame, 64);
	assert_int_equal(host_recv(f, got, sizeof(got), 100), -1);
	struct virtio_net_stats st;
	virtio_net_get_stats(f->n, &st);
	assert_int_equal(st.tx_errors, 4);
	assert_int_equal(st.tx_packets, 1);
	assert_int_equal(rd(f, VIRTIO_MMIO_STATUS) & 0x40, 0); /* no DEVICE_NEEDS_RESET */
}

/* Queue a receive buffer of @len bytes (one descriptor, or header + rest when @split),
 * filled with 0xaa so the header the device writes shows. */
static uint16_t add_rx(struct fx *f, uint32_t len, bool split, uint64_t *gpa)
{
	uint8_t fill[4096];
	assert_true(len <= sizeof(fill));
	memset(fill, 0xaa, len);
	uint64_t a = alloc_buf(f, len);
	assert_int_equal(gmem_write(&f->m, a, fill, len), 0);
	*gpa = a;
	if (split) {
		struct vdrv_seg s[] = {{a, VIRTIO_NET_HDR_LEN, true},
				       {a + VIRTIO_NET_HDR_LEN, len - VIRTIO_NET_HDR_LEN, true}};
		return add_chain(f, 0, s, 2);
	}
	return add_chain(f, 0, &(struct vdrv_seg){a, len, true}, 1);
}

static void check_rx(struct fx *f, uint64_t gpa, const uint8_t *frame, size_t fl)
{
	uint8_t got[4096];
	const uint8_t want_hdr[VIRTIO_NET_HDR_LEN] = {[10] = 1}; /* num_buffers 1 */
	assert_int_equal(gmem_read(&f->m, gpa, got, VIRTIO_NET_HDR_LEN + fl), 0);
	assert_memory_equal(got, want_hdr, VIRTIO_NET_HDR_LEN);
	assert_memory_equal(got + VIRTIO_NET_HDR_LEN, frame, fl);
}

/*
 * Wait until the kernel has activated @name's transmit queue. Attaching to a tap that is
 * already up turns its carrier on, but the queue is activated later by the kernel's link
 * watch (asynchronous, rate-limited to about once a second): until then the host's frames
 * towards the guest are dropped. IFF_RUNNING is set before that; operstate "up" is set by
 * the link watch together with the activation, under the RTNL, which SIOCSIFFLAGS also takes:
 * once it returns, the activation is complete.
 */
static void wait_running(const char *name)
{
	char path[128], buf[16] = "";
	snprintf(path, sizeof(path), "/sys/class/net/%s/operstate", name);
	for (int i = 0; i < 500; i++) {
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		assert_true(fd >= 0);
		ssize_t n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		buf[n > 0 ? n : 0] = 0;
		if (!strcmp(buf, "up\n"))
			break;
		usleep(10000);
	}
	if (strcmp(buf, "up\n"))
		fail_msg("%s: operstate still '%s' 5 s after the device attached", name, buf);
	assert_int_equal(ifflags(name, true), 0);
}

static void test_existing_tap(void **state)
{
	struct fx *f = *state;
	struct virtio_net_params p = params(f);
	uint8_t frame[64], got[128];
	uint64_t g;
	uint32_t id, len;

	/* An operator's tap (made by another process, up before the VM starts). */
	assert_int_equal(persistent_tap(f->tap, true), 0);
	f->persistent = true;
	host_attach(f);
	device_up(f, &p);
	wait_running(f->tap);

	make_frame(frame, bcast, f->mac, "existing", 60);
	uint64_t a = alloc_buf(f, VIRTIO_NET_HDR_LEN + 60);
	assert_int_equal(gmem_write(&f->m, a + VIRTIO_NET_HDR_LEN, frame, 60), 0);
	add_chain(f, 1, &(struct vdrv_seg){a, VIRTIO_NET_HDR_LEN + 60, false}, 1);
	notify(f, 1);
	assert_int_equal(host_recv(f, got, sizeof(got), 2000), 60);
	assert_memory_equal(got, frame, 60);
	add_rx(f, 1526, false, &g);
	notify(f, 0);
	make_frame(frame, f->mac, host_mac, "existing rx", 60);
	host_send(f, frame, 60);
	assert_true(evloop_run_once(f->loop, 1000) >= 1);
	assert_true(next_used(f, 0, &id, &len));
	assert_int_equal(len, VIRTIO_NET_HDR_LEN + 60);
	check_rx(f, g, frame, 60);

	/* It outlives the device and can be attached again; then remove it. */
	virtio_net_destroy(f->n);
	f->n = NULL;
	assert_true(if_nametoindex(f->tap) > 0);
	f->n = virtio_net_create(&p, &f->m, -1, f->loop, 0xd0000000ull, 5);
	assert_non_null(f->n);
	virtio_net_destroy(f->n);
	f->n = NULL;
	host_detach(f);
	assert_int_equal(persistent_tap(f->tap, false), 0);
	f->persistent = false;
	assert_int_equal(if_nametoindex(f->tap), 0);
}

static void test_rx(void **state)
{
	struct fx *f = *state;
	struct virtio_net_params p = params(f);
	uint8_t frame[1514];
	uint64_t g1, g2;
	uint32_t id, len;
	device_up(f, &p);
	host_attach(f);

	uint16_t h1 = add_rx(f, 1526, false, &g1);
	uint16_t h2 = add_rx(f, 1526, true, &g2);
	notify(f, 0);

	size_t fl = make_frame(frame, f->mac, host_mac, "to the guest", 60);
	host_send(f, frame, fl);
	assert_true(evloop_run_once(f->loop, 1000) >= 1);
	assert_true(took_irq(f));
	assert_true(next_used(f, 0, &id, &len));
	assert_int_equal(id, h1);
	assert_int_equal(len, VIRTIO_NET_HDR_LEN + 60);
	check_rx(f, g1, frame, 60);

	/* A full-size frame into the split buffer. */
	fl = make_frame(frame, f->mac, host_mac, "big", 1514);
	for (size_t i = 20; i < fl; i++)
		frame[i] = (uint8_t)i;
	host_send(f, frame, fl);
	assert_true(evloop_run_once(f->loop, 1000) >= 1);
	assert_true(took_irq(f));
	assert_true(next_used(f, 0, &id, &len));
	assert_int_equal(id, h2);
	assert_int_equal(len, VIRTIO_NET_HDR_LEN + 1514);
	check_rx(f, g2, frame, 1514);

	struct virtio_net_stats st;
	virtio_net_get_stats(f->n, &st);
	assert_int_equal(st.rx_packets, 2);
	assert_int_equal(st.rx_bytes, 60 + 1514);
	assert_int_equal(st.rx_dropped + st.rx_errors, 0);
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void test_rx_no_buffers_no_spin(void **state)
{
	struct fx *f = *state;
	struct virtio_net_params p = params(f);
	uint8_t frame[64];
	uint64_t g;
	uint32_t id, len;
	device_up(f, &p);
	host_attach(f);

	/* No receive buffers: the packet waits in the tap, and the device stops watching it
	 * after one look (the tap stays readable: a watch would make the loop spin). */
	size_t fl = make_frame(frame, f->mac, host_mac, "waits in the tap", 60);
	host_send(f, frame, fl);
	assert_int_equal(evloop_run_once(f->loop, 1000), 1);
	int64_t t0 = now_ms();
	assert_int_equal(evloop_run_once(f->loop, 300), 0);
	assert_true(now_ms() - t0 >= 250);

	/* A buffer and a notify: the device watches again and the waiting packet lands. */
	uint16_t h = add_rx(f, 1526, false, &g);
	notify(f, 0);
	drain(f);
	assert_true(next_used(f, 0, &id, &len));
	assert_int_equal(id, h);
	assert_int_equal(len, VIRTIO_NET_HDR_LEN + 60);
	check_rx(f, g, frame, 60);
	assert_true(took_irq(f));

	/* The last buffer is used: the device stopped watching right then, so a new packet
	 * does not wake the loop at all. */
	host_send(f, frame, fl);
	t0 = now_ms();
	assert_int_equal(evloop_run_once(f->loop, 300), 0);
	assert_true(now_ms() - t0 >= 250);
}

static void test_rx_small_buffers(void **state)
{
	struct fx *f = *state;
	struct virtio_net_params p = params(f);
	uint8_t frame[300];
	uint64_t g0, g;
	uint32_t id, len;
	device_up(f, &p);
	host_attach(f);

	/* A buffer too small for any frame: given back empty, counted. */
	uint16_t h0 = add_rx(f, 20, false, &g0);
	/* A 100-byte buffer: a 200-byte frame is dropped, the next 60-byte one fits. */
	uint16_t h = add_rx(f, 100, true, &g);
	notify(f, 0);
	size_t big = make_frame(frame, f->mac, host_mac, "too big", 200);
	host_send(f, frame, big);
	size_t fl = make_frame(frame, f->mac, host_mac, "fits", 60);
	host_send(f, frame, fl);
	assert_true(evloop_run_once(f->loop, 1000) >= 1);
	drain(f);
	assert_true(next_used(f, 0, &id, &len));
	assert_int_equal(id, h0);
	assert_int_equal(len, 0);
	assert_true(next_used(f, 0, &id, &len));
	assert_int_equal(id, h);
	assert_int_equal(len, VIRTIO_NET_HDR_LEN + 60);
	check_rx(f, g, frame, 60);
	assert_false(next_used(f, 0, &id, &len));
	struct virtio_net_stats st;
	virtio_net_get_stats(f->n, &st);
	assert_int_equal(st.rx_errors, 1);
	assert_int_equal(st.rx_dropped, 1);
	assert_int_equal(st.rx_packets, 1);
}

static void test_save_load(void **state)
{
	struct fx *f = *state;
	struct virtio_net_params p = params(f);
	uint8_t frame[128], got[256];
	uint64_t g;
	uint32_t id, len;
	struct enc e;
	device_up(f, &p); /* generated MAC */
	host_attach(f);
	uint8_t mac[6];
	memcpy(mac, f->mac, 6);

	/* Some traffic, then a receive buffer left posted at save time. */
	size_t fl = make_frame(frame, bcast, f->mac, "before", 60);
	uint64_t a = alloc_buf(f, VIRTIO_NET_HDR_LEN + 60);
	assert_int_equal(gmem_write(&f->m, a + VIRTIO_NET_HDR_LEN, frame, fl), 0);
	add_chain(f, 1, &(struct vdrv_seg){a, VIRTIO_NET_HDR_LEN + 60, false}, 1);
	notify(f, 1);
	assert_int_equal(host_recv(f, got, sizeof(got), 2000), 60);
	uint16_t h = add_rx(f, 1526, false, &g);
	notify(f, 0);
	struct virtio_net_stats before;
	virtio_net_get_stats(f->n, &before);
	assert_int_equal(before.tx_packets, 1);

	enc_init(&e);
	assert_int_equal(virtio_mmio_save(f->t, &e), 0);
	host_detach(f);
	virtio_net_destroy(f->n);
	f->n = NULL;
	assert_int_equal(if_nametoindex(f->tap), 0);

	/* The device state is last: u16 version, u32 length, mac[6] and eight u64. */
	const size_t dev_len = 6 + 8 * 8;
	assert_true(e.len > dev_len + 6);
	uint8_t *ver = e.buf + e.len - dev_len - 6;
	assert_int_equal(ver[0] | ver[1] << 8, VIRTIO_NET_STATE_VERSION);

	/* Restore into a device created from the same tap name with another MAC. */
	p.has_mac = true;
	assert_int_equal(virtio_net_mac_parse("06:00:00:00:00:01", p.mac), 0);
	f->n = virtio_net_create(&p, &f->m, -1, f->loop, 0xd0000000ull, 5);
	assert_non_null(f->n);
	f->t = virtio_net_transport(f->n);

	/* Bad device state is refused: a newer version, a multicast MAC, a truncation. */
	struct dec d;
	ver[0] = VIRTIO_NET_STATE_VERSION + 1;
	dec_init(&d, e.buf, e.len);
	assert_int_equal(virtio_mmio_load(f->t, &d, VIRTIO_MMIO_STATE_VERSION), -ENOTSUP);
	ver[0] = VIRTIO_NET_STATE_VERSION;
	e.buf[e.len - dev_len] |= 1;
	dec_init(&d, e.buf, e.len);
	assert_int_equal(virtio_mmio_load(f->t, &d, VIRTIO_MMIO_STATE_VERSION), -EBADMSG);
	e.buf[e.len - dev_len] &= (uint8_t)~1;
	ver[2] = (uint8_t)(dev_len - 1); /* length field, low byte */
	dec_init(&d, e.buf, e.len - 1);
	assert_int_equal(virtio_mmio_load(f->t, &d, VIRTIO_MMIO_STATE_VERSION), -EBADMSG);
	ver[2] = (uint8_t)dev_len;
	uint8_t now[6];
	virtio_net_mac(f->n, now);
	assert_int_equal(now[5], 1); /* nothing applied */

	dec_init(&d, e.buf, e.len);
	assert_int_equal(virtio_mmio_load(f->t, &d, VIRTIO_MMIO_STATE_VERSION), 0);
	enc_free(&e);
	virtio_net_mac(f->n, now);
	assert_memory_equal(now, mac, 6);
	uint8_t cfg0;
	virtio_mmio_io(f->t, VIRTIO_MMIO_CONFIG + 5, &cfg0, 1, false);
	assert_int_equal(cfg0, mac[5]);
	struct virtio_net_stats after;
	virtio_net_get_stats(f->n, &after);
	assert_memory_equal(&after, &before, sizeof(before));
	drain(f);

	/* The re-opened tap works both ways, and the buffer posted before the save is used. */
	host_attach(f);
	fl = make_frame(frame, now, host_mac, "after restore", 60);
	host_send(f, frame, fl);
	assert_true(evloop_run_once(f->loop, 1000) >= 1);
	assert_true(next_used(f, 0, &id, &len));
	assert_int_equal(id, h);
	assert_int_equal(len, VIRTIO_NET_HDR_LEN + 60);
	check_rx(f, g, frame, 60);

	fl = make_frame(frame, bcast, now, "after", 60);
	assert_int_equal(gmem_write(&f->m, a + VIRTIO_NET_HDR_LEN, frame, fl), 0);
	add_chain(f, 1, &(struct vdrv_seg){a, VIRTIO_NET_HDR_LEN + 60, false}, 1);
	notify(f, 1);
	assert_int_equal(host_recv(f, got, sizeof(got), 2000), 60);
	assert_memory_equal(got, frame, 60);
	virtio_net_get_stats(f->n, &after);
	assert_int_equal(after.tx_packets, 2);
	assert_int_equal(after.rx_packets, 1);
}

static void test_reset_stops_rx(void **state)
{
	struct fx *f = *state;
	struct virtio_net_params p = params(f);
	uint8_t frame[64];
	uint64_t g, g2;
	uint32_t id, len;
	device_up(f, &p);
	host_attach(f);
	add_rx(f, 1526, false, &g);
	notify(f, 0);
	size_t fl = make_frame(frame, f->mac, host_mac, "after reset", 60);

	/* The driver resets while the tap is watched (a buffer was posted), then starts again:
	 * queues ready with a buffer, DRIVER_OK not yet set. A packet arriving now must wait. */
	wr(f, VIRTIO_MMIO_STATUS, 0);
	drain(f);
	driver_init(f, false);
	uint16_t h = add_rx(f, 1526, false, &g);
	add_rx(f, 1526, false, &g2);
	host_send(f, frame, fl);
	assert_int_equal(evloop_run_once(f->loop, 1000), 1); /* the tap handler, once */
	int64_t t0 = now_ms();
	assert_int_equal(evloop_run_once(f->loop, 300), 0);
	assert_true(now_ms() - t0 >= 250);
	assert_int_equal(get16(f, f->q[0].used + 2), 0);

	/* DRIVER_OK: the packet arrives, in the first buffer. */
	wr(f, VIRTIO_MMIO_STATUS, 1 | 2 | 8 | 4);
	assert_true(evloop_run_once(f->loop, 1000) >= 1);
	drain(f);
	assert_true(next_used(f, 0, &id, &len));
	assert_int_equal(id, h);
	assert_int_equal(len, VIRTIO_NET_HDR_LEN + 60);
	check_rx(f, g, frame, 60);

	/* Reset with the second buffer still posted (tap watched): after it no buffer may be
	 * used; the packet stays in the tap, and after one look the loop is quiet. */
	wr(f, VIRTIO_MMIO_STATUS, 0);
	drain(f);
	host_send(f, frame, fl);
	assert_int_equal(evloop_run_once(f->loop, 1000), 1);
	t0 = now_ms();
	assert_int_equal(evloop_run_once(f->loop, 300), 0);
	assert_true(now_ms() - t0 >= 250);
	assert_int_equal(get16(f, f->q[0].used + 2), 1);
	struct virtio_net_stats st;
	virtio_net_get_stats(f->n, &st);
	assert_int_equal(st.rx_packets, 1);
}

/* Wait (up to 5 s) until queue @qi's used index reaches @want. */
static bool wait_used(struct fx *f, unsigned int qi, uint16_t want)
{
	int64_t end = now_ms() + 5000;
	while (now_ms() < end) {
		uint16_t idx = __atomic_load_n((uint16_t *)gmem_ptr(&f->m, f->q[qi].used + 2, 2),
					       __ATOMIC_ACQUIRE);
		if (idx == want)
			return true;
		usleep(1000);
	}
	return false;
}

static void test_threaded(void **state)
{
	struct fx *f = *state;
	struct virtio_net_params p = params(f);
	uint8_t frame[128], got[256];
	uint64_t g;
	enum { NRX = 200, NTX = 100 };
	device_up(f, &p);
	host_attach(f);
	/* Buffers first, then the loop thread: from here on the test thread is the "vCPU". */
	for (int i = 0; i < NRX; i++)
		add_rx(f, 1526, false, &g);
	assert_int_equal(evloop_start(f->loop), 0);
	wr(f, VIRTIO_MMIO_QUEUE_NOTIFY, 0);

	/* Both directions at once. */
	uint64_t a = alloc_buf(f, NTX * 128);
	for (int i = 0; i < NTX; i++) {
		char text[32];
		snprintf(text, sizeof(text), "tx %d", i);
		make_frame(frame, bcast, f->mac, text, 60);
		uint64_t b = a + 128ull * i;
		assert_int_equal(gmem_write(&f->m, b + VIRTIO_NET_HDR_LEN, frame, 60), 0);
		add_chain(f, 1, &(struct vdrv_seg){b, VIRTIO_NET_HDR_LEN + 60, false}, 1);
		if (i % 10 == 9)
			wr(f, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
	}
	for (int i = 0; i < NRX; i++) {
		char text[32];
		snprintf(text, sizeof(text), "rx %d", i);
		host_send(f, frame, make_frame(frame, f->mac, host_mac, text, 60));
		if (i % 50 == 49)
			usleep(2000); /* the tap queues 500 packets; stay well below */
	}
	assert_true(wait_used(f, 1, NTX));
	assert_true(wait_used(f, 0, NRX));
	for (int i = 0; i < NTX; i++) {
		char text[32];
		snprintf(text, sizeof(text), "tx %d", i);
		assert_int_equal(host_recv(f, got, sizeof(got), 2000), 60);
		assert_memory_equal(got + 14, text, strlen(text) + 1); /* in order, none lost */
	}
	struct virtio_net_stats st;
	virtio_net_get_stats(f->n, &st);
	assert_int_equal(st.rx_packets, NRX);
	assert_int_equal(st.tx_packets, NTX);

	/* Destroy while packets keep arriving (no buffers left: the tap handler looks once). */
	for (int i = 0; i < 20; i++)
		host_send(f, frame, 60);
	virtio_net_destroy(f->n);
	f->n = NULL;
	evloop_destroy(f->loop);
	f->loop = NULL;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_good),
	    cmocka_unit_test(test_parse_bad),
	    cmocka_unit_test(test_mac),
	    cmocka_unit_test_setup_teardown(test_config_and_tap, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_generated_mac, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_existing_tap, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_tx, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_tx_link_down, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_tx_bad_chains, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_rx, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_rx_no_buffers_no_spin, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_rx_small_buffers, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_save_load, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_reset_stops_rx, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_threaded, fx_setup, fx_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
