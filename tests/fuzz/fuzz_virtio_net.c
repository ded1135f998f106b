/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for virtio-net's queue handlers, driven as a guest would: through the
 * virtio-mmio registers (vm_fd -1: QueueNotify signals the queue's eventfd and the target runs
 * the event loop itself), with both rings, the transmit chains (virtio-net headers and frames)
 * and the receive buffer chains all taken from the input and copied into guest RAM.
 *
 * The backend is a real tap, so this needs root (CAP_NET_ADMIN) and /dev/net/tun, as
 * test_virtio_net does: when a tap cannot be created the target says why and aborts, it never
 * passes without having run. Once per process it moves into a network namespace of its own
 * (unshare(CLONE_NEWNET), needs CAP_SYS_ADMIN), creates two taps there (an active device and a
 * spare for save/load) and brings them up: guest frames then go into an empty namespace
 * (no addresses, no forwarding, IPv6 off) and the host side sends frames to the guest with an
 * AF_PACKET socket, so receive chains are exercised with real packets. Without a namespace the
 * taps stay down (never exposing the host's own network to random frames): transmitted
 * frames are refused by the tap and counted dropped, and receive buffers are only posted,
 * never filled; the target says so once on stderr.
 *
 * Per input: RAM cleared, the device reset through its Status register, features negotiated
 * as the header says, both queues set up with the header's sizes and ring addresses (aligned
 * and inside RAM unless the header asks for them raw), DRIVER_OK, then a script of driver
 * and host actions. After every action the loop runs until idle and these must hold:
 *   - the loop goes idle (a readable tap with no buffers is not watched);
 *   - on each queue every chain taken is completed exactly once (receive chains given back
 *     unused do not count) and counted exactly once in the statistics;
 *   - after a transmit notify, a load or DRIVER_OK on a working queue, every chain offered was
 *     taken (used index advanced by at most the number of entries offered), unless packets
 *     were received meanwhile (their buffers may overlap the transmit ring);
 *   - the guest never receives more packets (delivered or dropped) than the host sent;
 *   - a broken ring sets DEVICE_NEEDS_RESET;
 *   - a state just saved loads into the spare device.
 * At the end the taps are emptied through a clean receive queue, and every frame the host sent
 * must have been delivered or counted as dropped. Accesses outside RAM are for ASan to find.
 *
 * Layout (little-endian):
 *   u8 mode: bit 0 raw queue registers (sizes and addresses as given), bit 1 dirty tracking,
 *            bit 2 the taps are down for this input (they refuse transmitted frames; the
 *            host sends nothing)
 *   u8 rx qsize, u8 tx qsize (QueueNum 1 << (qsize % 10), or qsize itself in raw mode)
 *   u8 features to refuse (bit 0 MAC, 1 STATUS, 2 INDIRECT_DESC, 3 VERSION_1), bit 4: also
 *      ask for CSUM (not offered), bit 5: leave the receive queue unset, bit 6: the transmit one
 *   u16 rx desc, u16 rx avail, u16 rx used, u16 tx desc, u16 tx avail, u16 tx used,
 *   u16 mem_len, mem_len bytes copied to guest-physical 0,
 *   script: op bytes (op % 9), some followed by arguments:
 *     0 notify: u8 v (QueueNotify v & 1, or v itself when v >= 0x80)
 *     1 driver write: u16 gpa, u8 value       2 driver offers: u8 queue, u16 head
 *     3 save, reset, load into the spare, go on with the spare
 *     4 register write: u8 reg, u32 value     5 register read: u8 reg (then ack interrupts)
 *     6 host sends a frame of u16 len (% 1600) bytes, u8 pattern (bit 0: broadcast)
 *     7 driver write: u16 gpa, u8 n, n bytes  8 driver re-initialises as in the header
 *   and at the end one more notify of both queues. Only the first MAX_OPS ops run, and only
 *   the first MAX_FRAMES frames are sent, so that every input runs in a few milliseconds.
 *
 * Seeds in tests/fuzz/corpus/fuzz_virtio_net/: run this binary with
 * FUZZ_VIRTIO_NET_GEN_SEEDS=DIR to regenerate them (see gen_seeds()). With
 * FUZZ_VIRTIO_NET_VERBOSE set it logs what the device does and prints its counters per input.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "formats/codec.h"
#include "util/log.h"
#include "vmm/evloop.h"
#include "vmm/gmem.h"
#include "vmm/virtio_mmio.h"
#include "vmm/virtio_net.h"
#include "vmm/virtq.h"

#define VFUZZ_NAME     "fuzz_virtio_net"
#define VFUZZ_SEED_MEM 0xb000u /* the seeds' RAM image */
#include "tests/common/virtio_fuzz.h"

#define RAM_SIZE   (64u << 10) /* = the reach of a u16 address */
#define HDR_SIZE   18
#define MAX_FRAMES 64  /* frames the host sends per input (the tap queues 500) */
#define MAX_OPS	   256 /* script ops run per input, so an input stays fast */
#define ETHERTYPE  0x88B5
#define MMIO_BASE  0xd0000000ull
#define NQ	   2

#define M_RAW_REGS 1u
#define M_DIRTY	   2u
#define M_DOWN	   4u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct dev {
	struct virtio_net *n;
	struct virtio_mmio *t;
	char tap[VIRTIO_NET_IFNAMSIZ];
	int ifindex;
	uint64_t in_tap; /* frames the host sent that the device has not consumed yet */
};

static struct gmem ram;
static uint64_t dirty[RAM_SIZE / 4096 / 64 + 1];
static struct evloop *loop;
static struct dev devs[2];
static unsigned int active;
static bool isolated;	  /* in a network namespace of our own, taps up */
static bool link_down;	  /* this input's taps are down (M_DOWN) */
static int pkt = -1;	  /* AF_PACKET socket: the host side of the taps */
static unsigned int sent; /* frames sent during this input */
static bool verbose;	  /* FUZZ_VIRTIO_NET_VERBOSE: log, and print the counters per input */

/* The input's header, for re-initialisation. */
struct hdr {
	uint8_t mode, qsize[NQ], refuse;
	uint16_t desc[NQ], avail[NQ], used[NQ];
};

/* ---- the driver's side ---- */

/* Reset, negotiate what is offered but @refuse (bits as in the header), up to FEATURES_OK. */
static void driver_features(struct dev *d, uint8_t refuse)
{
	vdrv_wr(d->t, VIRTIO_MMIO_STATUS, 0);
	uint64_t offered = vdrv_offered(d->t);
	static const uint64_t refusable[4] = {
	    1ull << VIRTIO_NET_F_MAC,
	    1ull << VIRTIO_NET_F_STATUS,
	    1ull << VIRTIO_RING_F_INDIRECT_DESC,
	    1ull << VIRTIO_F_VERSION_1,
	};
	uint64_t want = offered;
	for (unsigned int i = 0; i < 4; i++)
		if (refuse & (1u << i))
			want &= ~refusable[i];
	if (refuse & 0x10)
		want |= 1ull << 0; /* VIRTIO_NET_F_CSUM */
	vdrv_accept(d->t, want);
}

/* Reset, negotiate, set up the queues and set DRIVER_OK as @h says. */
static void driver_init(struct dev *d, const struct hdr *h)
{
	driver_features(d, h->refuse);
	for (unsigned int qi = 0; qi < NQ; qi++) {
		if (h->refuse & (0x20u << qi))
			continue;
		if (h->mode & M_RAW_REGS)
			vdrv_queue(d->t, qi, h->qsize[qi], h->desc[qi], h->avail[qi], h->used[qi]);
		else
			vdrv_queue(d->t, qi, 1u << (h->qsize[qi] % 10), h->desc[qi] & ~15u,
				   h->avail[qi] & ~1u, h->used[qi] & ~3u);
	}
	vdrv_wr(d->t, VIRTIO_MMIO_STATUS,
		VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |
		    VIRTIO_STATUS_DRIVER_OK);
}

/* ---- invariants ---- */

struct snap {
	struct virtq q[NQ];
	struct virtio_net_stats st;
};

static struct snap take_snap(struct dev *d)
{
	struct snap s;
	virtio_mmio_lock(d->t);
	for (unsigned int i = 0; i < NQ; i++)
		s.q[i] = *virtio_mmio_queue(d->t, i);
	virtio_mmio_unlock(d->t);
	virtio_net_get_stats(d->n, &s.st);
	return s;
}

/*
 * After a drain: compare with @before (taken before the actions since). @served: bit i, the
 * device was asked to look at queue i (notify, DRIVER_OK, load).
 */
static void check_after(struct dev *d, const struct snap *before, unsigned int served)
{
	struct snap now = take_snap(d);
	const struct virtio_net_stats *a = &before->st, *b = &now.st;
	uint64_t counted[NQ] = {
	    b->rx_packets + b->rx_errors - a->rx_packets - a->rx_errors,
	    b->tx_packets + b->tx_dropped + b->tx_errors - a->tx_packets - a->tx_dropped -
		a->tx_errors,
	};
	uint32_t status = vdrv_rd(d->t, VIRTIO_MMIO_STATUS);
	/* Receiving writes guest RAM, maybe over the transmit ring's index after the transmit
	 * queue was served: then "all taken" does not apply. */
	bool rx_wrote = counted[0] || b->rx_dropped != a->rx_dropped;
	for (unsigned int i = 0; i < NQ; i++) {
		const struct virtq *q = &now.q[i], *q0 = &before->q[i];
		uint16_t taken = (uint16_t)(q->last_avail - q0->last_avail);
		uint16_t done = (uint16_t)(q->used_idx - q0->used_idx);
		check(taken == done, "every chain taken is completed once");
		check(counted[i] <= 0xffff && (uint16_t)counted[i] == done,
		      "every chain completed is counted once");
		if (q->broken)
			check(status & VIRTIO_STATUS_DEVICE_NEEDS_RESET,
			      "a broken ring sets DEVICE_NEEDS_RESET");
		/* Receive buffers wait for packets; transmit chains are all taken at once. */
		if (i == VIRTIO_NET_TXQ && (served & (1u << i)) && !rx_wrote &&
		    (status & VIRTIO_STATUS_DRIVER_OK) && q->ready && !q->broken) {
			const uint8_t *avail = gmem_ptr(&ram, q->avail_gpa, 4);
			check(avail != NULL, "a ready queue's avail ring is in RAM");
			check(rd16(avail + 2) == q->last_avail,
			      "the device takes every frame offered");
		}
	}
	uint64_t got = b->rx_packets + b->rx_dropped - a->rx_packets - a->rx_dropped;
	check(got <= d->in_tap, "the guest receives no more packets than the host sent");
	d->in_tap -= got;
}

/* ---- script actions ---- */

static struct dev *save_load(void)
{
	struct dev *from = &devs[active], *to = &devs[!active];
	struct snap before = take_snap(from); /* the counters travel with the state */

	vfuzz_save_load(loop, from->t, to->t, "a state just saved loads");
	active = !active;
	check_after(to, &before, 3);
	return to;
}

/* The host sends a frame out of the tap, towards the guest. */
static void host_send(struct dev *d, uint16_t len, uint8_t pattern)
{
	static const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
	static const uint8_t host_mac[6] = {0x06, 0x11, 0x22, 0x33, 0x44, 0x55};
	uint8_t frame[1600];
	if (!isolated || link_down || sent >= MAX_FRAMES)
		return;
	len %= sizeof(frame);
	for (unsigned int i = 0; i < len; i++)
		frame[i] = (uint8_t)(pattern + i);
	uint8_t hdr[14];
	memcpy(hdr, pattern & 1 ? bcast : (const uint8_t[6]){6, 0, 0, 0, 0, 1}, 6);
	memcpy(hdr + 6, host_mac, 6);
	hdr[12] = ETHERTYPE >> 8;
	hdr[13] = ETHERTYPE & 0xff;
	memcpy(frame, hdr, len < 14 ? len : 14);
	struct sockaddr_ll sll = {.sll_family = AF_PACKET,
				  .sll_protocol = htons(ETHERTYPE),
				  .sll_ifindex = d->ifindex,
				  .sll_halen = 6};
	memcpy(sll.sll_addr, hdr, 6);
	ssize_t n = sendto(pkt, frame, len, 0, (struct sockaddr *)&sll, sizeof(sll));
	if (n == (ssize_t)len) {
		d->in_tap++;
		sent++;
	} else if (n >= 0 || (errno != EMSGSIZE && errno != EINVAL)) {
		fprintf(stderr, "fuzz_virtio_net: sendto of %u bytes on %s: %s\n", len, d->tap,
			n < 0 ? strerror(errno) : "short");
		abort();
	}
}

/*
 * Empty the tap of @d through a clean receive queue of 32 buffers of 1600 bytes (RAM is the
 * input's no longer): every frame sent must come out, delivered or counted dropped.
 */
static void empty_tap(struct dev *d)
{
	enum { N = 32, BUF = 1600, DESC = 0x0, AVAIL = 0x200, USED = 0x400, BUFS = 0x1000 };
	struct snap before = take_snap(d);
	memset(ram.host, 0, RAM_SIZE);
	driver_features(d, 0);
	vdrv_queue(d->t, VIRTIO_NET_RXQ, N, DESC, AVAIL, USED);
	vdrv_wr(d->t, VIRTIO_MMIO_STATUS,
		VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK |
		    VIRTIO_STATUS_DRIVER_OK);
	for (unsigned int i = 0; i < N; i++) {
		uint8_t *desc = ram.host + DESC + 16 * i;
		uint64_t addr = BUFS + (uint64_t)BUF * i;
		memcpy(desc, &addr, 8);
		memcpy(desc + 8, &(uint32_t){BUF}, 4);
		memcpy(desc + 12, &(uint16_t){2}, 2); /* WRITE */
	}
	before.q[0].last_avail = before.q[0].used_idx = 0; /* the reset */
	before.q[1] = before.q[0];
	vfuzz_drain(loop);
	for (unsigned int round = 0; d->in_tap && round < MAX_FRAMES; round++) {
		uint64_t left = d->in_tap;
		for (unsigned int i = 0; i < N; i++)
			vfuzz_offer(&ram, d->t, VIRTIO_NET_RXQ, (uint16_t)i);
		vdrv_wr(d->t, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_NET_RXQ);
		vfuzz_drain(loop);
		check_after(d, &before, 1);
		before = take_snap(d);
		if (d->in_tap == left)
			break;
	}
	check(d->in_tap == 0, "every frame the host sent is delivered or counted as dropped");
	vdrv_wr(d->t, VIRTIO_MMIO_STATUS, 0);
	vfuzz_drain(loop);
}

/* ---- set-up ---- */

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

static void write_sysctl(const char *path, const char *v)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (write(fd, v, strlen(v)) < 0) {
			/* IPv6 chatter would only add packets: the checks allow for none */
		}
		close(fd);
	}
}

static void setup(void)
{
	verbose = getenv("FUZZ_VIRTIO_NET_VERBOSE") != NULL;
	/* Guest errors are logged (rate-limited): quiet unless asked, but not setup errors. */
	log_set_level(verbose ? LOG_DEBUG : LOG_ERR);
	if (access("/dev/net/tun", R_OK | W_OK)) {
		fprintf(stderr,
			"fuzz_virtio_net: /dev/net/tun: %s: this target needs a tap device (run as "
			"root, with the tun module)\n",
			strerror(errno));
		abort();
	}
	if (unshare(CLONE_NEWNET) == 0) {
		isolated = true;
		/* No IPv6 autoconfiguration traffic on the new taps. */
		write_sysctl("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
		write_sysctl("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
	} else {
		fprintf(
		    stderr,
		    "fuzz_virtio_net: note: no network namespace of our own (%s): the taps stay "
		    "down, transmitted frames are dropped and no packet is received\n",
		    strerror(errno));
	}
	if (gmem_create(&ram, RAM_SIZE, GMEM_ANON))
		die("gmem_create");
	loop = evloop_create();
	if (!loop)
		die("evloop_create");
	for (unsigned int i = 0; i < 2; i++) {
		struct dev *d = &devs[i];
		struct virtio_net_params p = {.has_mac = true,
					      .mac = {6, 0, 0, 0, 0, (uint8_t)(i + 1)}};
		if (isolated)
			snprintf(d->tap, sizeof(d->tap), "fz%u", i);
		else
			snprintf(d->tap, sizeof(d->tap), "vfz%u_%u",
				 (unsigned int)getpid() % 100000u, i);
		memcpy(p.tap, d->tap, sizeof(p.tap));
		d->n = virtio_net_create(&p, &ram, -1, loop, MMIO_BASE + 0x1000ull * i, 5 + i);
		if (!d->n) {
			fprintf(
			    stderr,
			    "fuzz_virtio_net: cannot create virtio-net on tap %s (see the log "
			    "above): this target needs root or CAP_NET_ADMIN and /dev/net/tun\n",
			    d->tap);
			abort();
		}
		d->t = virtio_net_transport(d->n);
		if (isolated) {
			int r = ifflags(d->tap, true);
			if (r) {
				fprintf(stderr, "fuzz_virtio_net: cannot bring %s up: %s\n", d->tap,
					strerror(-r));
				abort();
			}
			d->ifindex = (int)if_nametoindex(d->tap);
			if (d->ifindex <= 0)
				die("if_nametoindex");
		}
	}
	if (isolated) {
		/* Protocol 0: sends only, receives nothing (the guest's frames are not ours). */
		pkt = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
		if (pkt < 0) {
			fprintf(stderr,
				"fuzz_virtio_net: AF_PACKET socket: %s (needs CAP_NET_RAW)\n",
				strerror(errno));
			abort();
		}
		/* Straight to the tap, not through a qdisc: queued by the time sendto returns. */
		int one = 1;
		if (setsockopt(pkt, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)))
			die("PACKET_QDISC_BYPASS");
	}
	if (!verbose)
		log_set_level((enum log_level) - 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!loop)
		setup();
	if (size < HDR_SIZE)
		return 0;

	struct hdr h = {.mode = data[0], .qsize = {data[1], data[2]}, .refuse = data[3]};
	for (unsigned int i = 0; i < NQ; i++) {
		h.desc[i] = rd16(data + 4 + 6 * i);
		h.avail[i] = rd16(data + 6 + 6 * i);
		h.used[i] = rd16(data + 8 + 6 * i);
	}
	struct dev *d = &devs[active];
	sent = 0;
	link_down = isolated && (h.mode & M_DOWN);
	for (unsigned int i = 0; link_down && i < 2; i++)
		if (ifflags(devs[i].tap, false))
			die("bringing a tap down");

	/* A fresh machine: device reset, RAM cleared, then the input's RAM image. */
	size_t pos = vfuzz_fresh(loop, &ram, d->t, dirty, sizeof(dirty), h.mode & M_DIRTY, data,
				 size, HDR_SIZE, 16);

	struct snap before = take_snap(d);
	driver_init(d, &h);
	vfuzz_drain(loop);
	check_after(d, &before, 3);

	unsigned int ops = 0;
	while (pos < size && ops++ < MAX_OPS) {
		uint8_t op = data[pos++] % 9;
		switch (op) {
		case 0:
			if (pos < size) {
				uint8_t v = data[pos++];
				uint32_t qi = v >= 0x80 ? v : v & 1u;
				before = take_snap(d);
				vdrv_wr(d->t, VIRTIO_MMIO_QUEUE_NOTIFY, qi);
				vfuzz_drain(loop);
				check_after(d, &before, qi < NQ ? 1u << qi : 0);
			}
			break;
		case 1: vfuzz_poke(&ram, data, size, &pos); break;
		case 2:
			if (pos + 3 <= size) {
				vfuzz_offer(&ram, d->t, data[pos] & 1u, rd16(data + pos + 1));
				pos += 3;
			}
			break;
		case 3: d = save_load(); break;
		case 4:
			if (pos + 5 <= size) {
				before = take_snap(d);
				vfuzz_reg_access(d->t, data[pos], rd32(data + pos + 1), true);
				pos += 5;
				vfuzz_drain(loop);
				/* Unless the write reset the device (indices back to 0). */
				if (vdrv_rd(d->t, VIRTIO_MMIO_STATUS) != 0)
					check_after(d, &before, 0);
			}
			break;
		case 5:
			if (pos < size) {
				vfuzz_reg_access(d->t, data[pos++], 0, false);
				vfuzz_ack_irq(d->t);
			}
			break;
		case 6:
			if (pos + 3 <= size) {
				before = take_snap(d);
				host_send(d, rd16(data + pos), data[pos + 2]);
				pos += 3;
				vfuzz_drain(loop);
				check_after(d, &before, 0);
			}
			break;
		case 7: vfuzz_write(&ram, data, size, &pos); break;
		case 8:
			before = take_snap(d);
			driver_init(d, &h);
			/* The reset zeroes the indices: compare from there. */
			for (unsigned int i = 0; i < NQ; i++)
				before.q[i].last_avail = before.q[i].used_idx = 0;
			vfuzz_drain(loop);
			check_after(d, &before, 3);
			break;
		}
	}
	for (unsigned int qi = 0; qi < NQ; qi++) {
		before = take_snap(d);
		vdrv_wr(d->t, VIRTIO_MMIO_QUEUE_NOTIFY, qi);
		vfuzz_drain(loop);
		check_after(d, &before, 1u << qi);
	}
	if (verbose) {
		struct virtio_net_stats st;
		struct snap s = take_snap(d);
		virtio_net_get_stats(d->n, &st);
		fprintf(
		    stderr,
		    "tap %s: status 0x%x; rx ready %d broken %d last_avail %u used %u; tx ready "
		    "%d broken %d last_avail %u used %u; %u frames sent, %llu not received; "
		    "totals: "
		    "rx %llu dropped %llu errors %llu, tx %llu dropped %llu errors %llu\n",
		    d->tap, vdrv_rd(d->t, VIRTIO_MMIO_STATUS), s.q[0].ready, s.q[0].broken,
		    s.q[0].last_avail, s.q[0].used_idx, s.q[1].ready, s.q[1].broken,
		    s.q[1].last_avail, s.q[1].used_idx, sent, (unsigned long long)d->in_tap,
		    (unsigned long long)st.rx_packets, (unsigned long long)st.rx_dropped,
		    (unsigned long long)st.rx_errors, (unsigned long long)st.tx_packets,
		    (unsigned long long)st.tx_dropped, (unsigned long long)st.tx_errors);
	}
	ram.dirty = NULL;
	for (unsigned int i = 0; link_down && i < 2; i++)
		if (ifflags(devs[i].tap, true))
			die("bringing a tap up");
	link_down = false;
	for (unsigned int i = 0; i < 2; i++)
		if (devs[i].in_tap)
			empty_tap(&devs[i]);
	return 0;
}

/* ---- seed generation ---- */

/* 32-entry rings: receive at 0x100 (table to 0x300), 0x400, 0x600; transmit from 0x800. */
static const uint16_t seed_desc[NQ] = {0x100, 0x800}, seed_avail[NQ] = {0x400, 0xb00},
		      seed_used[NQ] = {0x600, 0xd00};

static unsigned int ndesc[NQ], navail[NQ];

struct seg {
	uint32_t addr, len;
	bool write;
};

/* A chain of @n segments on queue @qi, made available. Returns the head. */
static uint16_t chain(unsigned int qi, const struct seg *sg, unsigned int n)
{
	uint16_t head = (uint16_t)ndesc[qi];
	for (unsigned int i = 0; i < n; i++, ndesc[qi]++)
		set_desc(seed_desc[qi], ndesc[qi], sg[i].addr, sg[i].len,
			 (uint16_t)((sg[i].write ? 2 : 0) | (i + 1 < n ? 1 : 0)),
			 (uint16_t)(ndesc[qi] + 1));
	mem_le(seed_avail[qi] + 4 + 2 * navail[qi], head, 2);
	navail[qi]++;
	mem_le(seed_avail[qi] + 2, navail[qi], 2);
	return head;
}

/* A frame at @at: virtio-net header (zero) then @len bytes of Ethernet. */
static void tx_frame(uint32_t at, uint32_t len)
{
	memset(mem + at, 0, VIRTIO_NET_HDR_LEN);
	memset(mem + at + VIRTIO_NET_HDR_LEN, 0xff, 6);
	const uint8_t src[6] = {6, 0, 0, 0, 0, 1};
	memcpy(mem + at + VIRTIO_NET_HDR_LEN + 6, src, 6);
	mem[at + VIRTIO_NET_HDR_LEN + 12] = ETHERTYPE >> 8;
	mem[at + VIRTIO_NET_HDR_LEN + 13] = ETHERTYPE & 0xff;
	for (uint32_t i = 14; i < len; i++)
		mem[at + VIRTIO_NET_HDR_LEN + i] = (uint8_t)i;
}

static void seed_begin(struct seed *s, uint8_t mode, uint8_t refuse)
{
	s->len = 0;
	memset(mem, 0, sizeof(mem));
	memset(ndesc, 0, sizeof(ndesc));
	memset(navail, 0, sizeof(navail));
	put8(s, mode);
	put8(s, 5); /* 32 entries each */
	put8(s, 5);
	put8(s, refuse);
	for (unsigned int i = 0; i < NQ; i++) {
		put16(s, seed_desc[i]);
		put16(s, seed_avail[i]);
		put16(s, seed_used[i]);
	}
	put16(s, VFUZZ_SEED_MEM);
}

static void op_notify(struct seed *s, uint8_t qi)
{
	put8(s, 0);
	put8(s, qi);
}

static void op_send(struct seed *s, uint16_t len, uint8_t pattern)
{
	put8(s, 6);
	put16(s, len);
	put8(s, pattern);
}

/* Transmit chains: whole, split, in pieces, indirect; and some the device refuses. */
static void tx_chains(void)
{
	tx_frame(0x1000, 60);
	chain(1, (struct seg[]){{0x1000, VIRTIO_NET_HDR_LEN + 60, 0}}, 1);
	tx_frame(0x1100, 100);
	chain(1,
	      (struct seg[]){{0x1100, VIRTIO_NET_HDR_LEN, 0},
			     {0x1100 + VIRTIO_NET_HDR_LEN, 30, 0},
			     {0x1100 + VIRTIO_NET_HDR_LEN + 30, 70, 0}},
	      3);
	tx_frame(0x1200, 60); /* the header split inside, the frame after it */
	chain(1, (struct seg[]){{0x1200, 5, 0}, {0x1205, VIRTIO_NET_HDR_LEN - 5 + 60, 0}}, 2);
	tx_frame(0x1300, 1514);
	set_desc(0xf00, 0, 0x1300, VIRTIO_NET_HDR_LEN, 1, 1); /* indirect: header, frame */
	set_desc(0xf00, 1, 0x1300 + VIRTIO_NET_HDR_LEN, 1514, 0, 0);
	chain(1, (struct seg[]){{0xf00, 32, 0}}, 1);
	set_desc(seed_desc[1], ndesc[1] - 1, 0xf00, 32, 4, 0);
	tx_frame(0x1900, 60); /* asks for a checksum offload: refused */
	mem[0x1900] = 1;
	chain(1, (struct seg[]){{0x1900, VIRTIO_NET_HDR_LEN + 60, 0}}, 1);
	tx_frame(0x1a00, 10); /* shorter than an Ethernet header */
	chain(1, (struct seg[]){{0x1a00, VIRTIO_NET_HDR_LEN + 10, 0}}, 1);
	chain(1, (struct seg[]){{0x1000, VIRTIO_NET_HDR_LEN + 60, 0}, {0x1b00, 64, 1}}, 2);
}

/* Receive buffers: whole, header apart, too small for anything, small, indirect. */
static void rx_chains(void)
{
	chain(0, (struct seg[]){{0x2000, 1526, 1}}, 1);
	chain(0, (struct seg[]){{0x2600, VIRTIO_NET_HDR_LEN, 1}, {0x2610, 1514, 1}}, 2);
	chain(0, (struct seg[]){{0x2c00, 20, 1}}, 1);
	chain(0, (struct seg[]){{0x2c40, 100, 1}}, 1);
	set_desc(0xe00, 0, 0x4000, 100, 3, 1); /* indirect */
	set_desc(0xe00, 1, 0x4080, 1500, 2, 0);
	chain(0, (struct seg[]){{0xe00, 32, 0}}, 1);
	set_desc(seed_desc[0], ndesc[0] - 1, 0xe00, 32, 4, 0);
}

__attribute__((constructor)) static void gen_seeds(void)
{
	const char *dir = getenv("FUZZ_VIRTIO_NET_GEN_SEEDS");
	static struct seed s;
	if (!dir)
		return;

	seed_begin(&s, 0, 0);
	tx_chains();
	seed_mem(&s, 16);
	op_notify(&s, 1);
	put8(&s, 2); /* offer the first frame again */
	put8(&s, 1);
	put16(&s, 0);
	op_notify(&s, 1);
	write_seed(dir, "tx", &s);

	seed_begin(&s, M_DIRTY, 0);
	rx_chains();
	seed_mem(&s, 16);
	op_notify(&s, 0);
	op_send(&s, 60, 0);
	op_send(&s, 1514, 1);
	op_send(&s, 200, 2); /* dropped: too big for the 100-byte buffer */
	op_send(&s, 300, 3); /* into the indirect buffer */
	op_send(&s, 10, 4);  /* shorter than an Ethernet header: refused by the kernel */
	op_send(&s, 60, 5);  /* no buffer left: emptied at the end */
	write_seed(dir, "rx", &s);

	/* Both ways, a save and load in the middle, a reset, again. */
	seed_begin(&s, 0, 0);
	tx_chains();
	rx_chains();
	seed_mem(&s, 16);
	op_notify(&s, 0);
	op_send(&s, 60, 0);
	op_notify(&s, 1);
	put8(&s, 3);
	op_send(&s, 1000, 1);
	put8(&s, 5); /* read InterruptStatus */
	put8(&s, 16);
	put8(&s, 8); /* re-initialise: the chains again */
	op_send(&s, 100, 1);
	write_seed(dir, "saveload", &s);

	/* What a driver gets wrong: loops, buffers outside RAM, a readable receive buffer, a
	 * write-only transmit chain, an index out of range; then a ring the device cannot use. */
	seed_begin(&s, 0, 0);
	uint16_t h = chain(0, (struct seg[]){{0x2000, 1526, 1}, {0x2000, 1526, 1}}, 2);
	set_desc(seed_desc[0], h + 1u, 0x2000, 1526, 3, h); /* loop */
	chain(0, (struct seg[]){{0x20000, 1526, 1}}, 1);
	chain(0, (struct seg[]){{0x2000, 1526, 0}}, 1);
	chain(0, (struct seg[]){{0x2000, 100, 1}, {0x2100, 1400, 0}}, 2);
	tx_frame(0x1000, 60);
	h = chain(1, (struct seg[]){{0x1000, 36, 0}, {0x1024, 36, 0}}, 2);
	set_desc(seed_desc[1], h + 1u, 0x1024, 36, 1, h);
	chain(1, (struct seg[]){{0x1000, VIRTIO_NET_HDR_LEN, 0}, {0x10000, 60, 0}}, 2);
	chain(1, (struct seg[]){{0x1000, 72, 1}}, 1);
	mem_le(seed_avail[1] + 4 + 2 * navail[1], 999, 2);
	navail[1]++;
	mem_le(seed_avail[1] + 2, navail[1], 2);
	seed_mem(&s, 16);
	op_notify(&s, 0);
	op_send(&s, 60, 0);
	op_send(&s, 60, 0);
	op_notify(&s, 1);
	put8(&s, 1); /* the transmit avail index jumps ahead: the ring is broken */
	put16(&s, (uint16_t)(seed_avail[1] + 3));
	put8(&s, 0x40);
	op_notify(&s, 1);
	put8(&s, 1); /* the same on the receive ring, with a packet waiting */
	put16(&s, (uint16_t)(seed_avail[0] + 3));
	put8(&s, 0x40);
	op_notify(&s, 0);
	write_seed(dir, "errors", &s);

	/* The most segments a chain may have (VIRTQ_MAX_IOV, from indirect tables): a frame in
	 * 1024 pieces, header and first byte together (one more iovec than writev takes), and a
	 * receive buffer in 1024 pieces (no room for the device's spill byte). */
	seed_begin(&s, 0, 0);
	tx_frame(0x1000, 1100);
	set_desc(0x2000, 0, 0x1000, VIRTIO_NET_HDR_LEN + 14, 1, 1);
	for (unsigned int i = 1; i < VIRTQ_MAX_IOV; i++)
		set_desc(0x2000, i, 0x1000 + VIRTIO_NET_HDR_LEN + 13 + i, 1,
			 i + 1 < VIRTQ_MAX_IOV ? 1 : 0, (uint16_t)(i + 1));
	chain(1, (struct seg[]){{0x2000, 16 * VIRTQ_MAX_IOV, 0}}, 1);
	set_desc(seed_desc[1], ndesc[1] - 1, 0x2000, 16 * VIRTQ_MAX_IOV, 4, 0);
	for (unsigned int i = 0; i < VIRTQ_MAX_IOV; i++)
		set_desc(0x6000, i, 0xa000, 2, i + 1 < VIRTQ_MAX_IOV ? 3 : 2, (uint16_t)(i + 1));
	chain(0, (struct seg[]){{0x6000, 16 * VIRTQ_MAX_IOV, 0}}, 1);
	set_desc(seed_desc[0], ndesc[0] - 1, 0x6000, 16 * VIRTQ_MAX_IOV, 4, 0);
	chain(0, (struct seg[]){{0x1000, 1526, 1}}, 1);
	seed_mem(&s, 16);
	op_notify(&s, 1);
	op_notify(&s, 0);
	op_send(&s, 60, 0);
	write_seed(dir, "many-segments", &s);

	/* Transmit with the tap down: every frame refused by the tap, counted dropped. */
	seed_begin(&s, M_DOWN, 0);
	tx_chains();
	seed_mem(&s, 16);
	op_notify(&s, 1);
	op_send(&s, 60, 0); /* not sent: the link is down */
	write_seed(dir, "tx-down", &s);
	exit(0);
}
