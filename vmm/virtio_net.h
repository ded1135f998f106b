/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_VMM_VIRTIO_NET_H
#define VMSNAP_VMM_VIRTIO_NET_H

/*
 * virtio-net (device id 1) on the virtio-mmio transport, backed by a Linux tap interface.
 *
 * Backend: /dev/net/tun opened non-blocking, attached with TUNSETIFF (IFF_TAP | IFF_NO_PI |
 * IFF_VNET_HDR) to the named interface; the kernel creates the interface when it does not
 * exist. An interface created that way is not persistent (no TUNSETPERSIST): it disappears
 * when vmsnap closes it, and it starts down: vmsnap leaves link state and addressing to the
 * operator (`ip link set NAME up`, a bridge, ...). Until the interface is up the kernel
 * refuses every frame the guest sends (counted in tx_dropped). To keep an interface across
 * vmsnap processes (restore, migration), create it beforehand: `ip tuntap add dev NAME mode
 * tap` (plus `user`/`group` to let an unprivileged vmsnap attach).
 *
 * Guest-visible device: features VIRTIO_NET_F_MAC and VIRTIO_NET_F_STATUS (the link is always
 * reported up), plus VERSION_1 and INDIRECT_DESC from the transport. No offloads (no CSUM,
 * GUEST_CSUM, GSO/TSO, MRG_RXBUF, MQ, CTRL_VQ): the tap is set up with TUNSETOFFLOAD 0, so
 * every frame crosses fully checksummed and unsegmented, and the 12-byte virtio-net header
 * (TUNSETVNETHDRSZ 12, the virtio 1.x layout) is all zeros in both directions but
 * num_buffers = 1 on receive. Config space: mac[6], status (le16).
 *
 * Queue 0 receives, queue 1 transmits. Transmit: each chain is one frame, header first, and
 * is written to the tap at once (writev, zero-copy; the device supplies its own header after
 * checking the guest's). A frame the tap refuses (interface down, EAGAIN, too short or long)
 * is dropped and counted, never retried: the guest is not stalled by the host. Receive: while
 * the driver has receive buffers the tap fd is watched on the evloop and each packet is read
 * (readv) straight into one buffer chain (one packet per chain); a packet larger than the
 * chain is dropped and counted. With no buffers the tap is no longer watched (the kernel queues
 * and then drops packets, as a full NIC ring would) until the driver notifies the receive
 * queue.
 *
 * Locking: everything runs under the transport's device lock (virtio_mmio_lock); the tap
 * handler takes it itself. Counters and the MAC are read under it.
 */

#include <stdbool.h>
#include <stdint.h>

#include "formats/codec.h"
#include "vmm/evloop.h"
#include "vmm/gmem.h"
#include "vmm/virtio_mmio.h"

/* Feature bits and config values this device uses (same values as <linux/virtio_net.h>). */
#define VIRTIO_NET_F_MAC     5
#define VIRTIO_NET_F_STATUS  16
#define VIRTIO_NET_S_LINK_UP 1

#define VIRTIO_NET_HDR_LEN     12u  /* struct virtio_net_hdr with num_buffers (virtio 1.x) */
#define VIRTIO_NET_CONFIG_SIZE 8u   /* mac[6], status */
#define VIRTIO_NET_QUEUE_SIZE  256u /* QueueNumMax of both queues */
#define VIRTIO_NET_RXQ	       0u
#define VIRTIO_NET_TXQ	       1u
#define VIRTIO_NET_IFNAMSIZ    16 /* IFNAMSIZ: names are at most 15 characters */
#define VIRTIO_NET_MAC_STRLEN  18 /* "xx:xx:xx:xx:xx:xx" and NUL */

/*
 * Device state (ops->save, after the transport's), little-endian:
 * v1: mac[6], then u64 rx_packets, rx_bytes, rx_dropped, rx_errors, tx_packets, tx_bytes,
 *     tx_dropped, tx_errors.
 */
#define VIRTIO_NET_STATE_VERSION 1

/** How to build a device: what `--net tap=NAME[,mac=MAC]` says. */
struct virtio_net_params {
	char tap[VIRTIO_NET_IFNAMSIZ]; /* interface name, 1..15 characters */
	bool has_mac;		       /* false: virtio_net_create() generates one */
	uint8_t mac[6];		       /* unicast, not all zeros */
};

/** Counters since the device was created (carried across save/restore). */
struct virtio_net_stats {
	uint64_t rx_packets, rx_bytes; /* delivered to the guest (bytes: frames, no header) */
	uint64_t rx_dropped;	       /* read from the tap, not deliverable (too big, offload) */
	uint64_t rx_errors;	       /* bad receive chains from the driver */
	uint64_t tx_packets, tx_bytes; /* accepted by the tap */
	uint64_t tx_dropped;	       /* refused by the tap (down, EAGAIN, size) */
	uint64_t tx_errors;	       /* bad transmit chains or headers from the driver */
};

/**
 * Parse the value of `--net`: "tap=NAME[,mac=MAC]", keys in any order, each at most once.
 * MAC is six colon-separated hex byte pairs and must be a unicast address other than all
 * zeros. On bad input logs one line saying what is wrong and returns -EINVAL (unknown key,
 * missing or empty or over-long or invalid tap name, bad or multicast MAC). @p is filled on
 * success only.
 */
int virtio_net_parse(const char *spec, struct virtio_net_params *p);

/** Parse "xx:xx:xx:xx:xx:xx" (hex, either case) into @mac. 0 or -EINVAL (no logging). */
int virtio_net_mac_parse(const char *s, uint8_t mac[6]);

/** Format @mac as lowercase "xx:xx:xx:xx:xx:xx" into @buf. Returns @buf. */
char *virtio_net_mac_format(const uint8_t mac[6], char buf[VIRTIO_NET_MAC_STRLEN]);

/**
 * A random locally administered unicast MAC: 06:xx:xx:xx:xx:xx (first octet 0x06: the
 * locally-administered bit set, the multicast bit clear; not QEMU's 52:54:00 OUI), the other
 * five octets from getrandom(). 0 or -errno.
 */
int virtio_net_mac_generate(uint8_t mac[6]);

struct virtio_net;

/**
 * Open the tap named in @p (creating the interface if absent, see above) and create the
 * device with its virtio-mmio transport at @base, interrupt @gsi (arguments as for
 * virtio_mmio_create(); @vm_fd < 0 for tests without KVM). The MAC is @p->mac, or a
 * generated one. For a restore, create from the saved configuration, then call
 * virtio_mmio_load() on the transport: the saved MAC and counters replace the new ones, and
 * the tap is the one opened here by name. Returns NULL after logging (e.g. the tap is in use
 * by another process, the name belongs to an interface that is not a tap, no permission).
 */
struct virtio_net *virtio_net_create(const struct virtio_net_params *p, struct gmem *m, int vm_fd,
				     struct evloop *loop, uint64_t base, uint32_t gsi);

/**
 * Stop watching the tap, destroy the transport, close the tap (an interface vmsnap created
 * disappears). Safe on NULL. The caller must not hold the device lock; vCPUs must no longer
 * touch the register window.
 */
void virtio_net_destroy(struct virtio_net *n);

/** The transport: its register window (virtio_mmio_io), save/load, interrupt fd. */
struct virtio_mmio *virtio_net_transport(struct virtio_net *n);

/** The guest's MAC (changes only with a load). Takes the device lock. */
void virtio_net_mac(struct virtio_net *n, uint8_t mac[6]);

/**
 * Replace the guest's MAC (a clone's new identity) and raise a config-change interrupt if the
 * driver runs. -EINVAL for a multicast or all-zero MAC. Takes the device lock.
 */
int virtio_net_set_mac(struct virtio_net *n, const uint8_t mac[6]);

/** The tap interface name. */
const char *virtio_net_tap_name(const struct virtio_net *n);

/** Copy the counters into @s. Takes the device lock. */
void virtio_net_get_stats(struct virtio_net *n, struct virtio_net_stats *s);

#endif
