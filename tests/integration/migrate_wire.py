#!/usr/bin/env python3
"""A user-space netem: bridge two interfaces frame by frame with added latency, random loss
and a rate limit, for kernels without sch_netem (CONFIG_NET_SCH_NETEM unset and no modules,
as on the development machines). Run it in a network namespace that holds both interfaces
(no addresses on them): every Ethernet frame received on one is sent out of the other after
DELAY ms, unless dropped (LOSS %), serialized at RATE Mbit/s with a tail-drop queue of QUEUE
ms (like netem's rate + limit). GSO frames travel whole through PACKET_VNET_HDR, so the
stream is not cut into MTU-sized frames here; the rate counts their full length.

usage: migrate_wire.py IF_A IF_B [--delay MS] [--loss PCT] [--rate MBIT] [--queue MS]
Prints 'wire ready' once both sockets are bound; SIGTERM ends it with a one-line summary.
"""
import argparse
import collections
import random
import select
import signal
import socket
import sys
import time

ETH_P_ALL = 3
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23


def open_if(name):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    s.bind((name, 0))
    s.setblocking(False)
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--delay", type=float, default=0.0, help="one-way latency, ms")
    ap.add_argument("--loss", type=float, default=0.0, help="random loss, percent")
    ap.add_argument("--rate", type=float, default=0.0, help="Mbit/s per direction, 0 = none")
    ap.add_argument("--queue", type=float, default=100.0, help="queue limit at the rate, ms")
    o = ap.parse_args()
    socks = [open_if(o.a), open_if(o.b)]
    # per direction: deque of (due time, frame), time the "wire" is free again
    queues = [collections.deque(), collections.deque()]
    free_at = [0.0, 0.0]
    stats = {"frames": 0, "bytes": 0, "lost": 0, "queue_drops": 0}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    delay = o.delay / 1000.0
    bps = o.rate * 1e6 / 8 if o.rate > 0 else 0.0
    print("wire ready %s <-> %s delay=%gms loss=%g%% rate=%gMbit" % (o.a, o.b, o.delay, o.loss,
          o.rate), flush=True)
    while not stop:
        now = time.monotonic()
        timeout = 0.2
        for d in (0, 1):
            q = queues[d]
            while q and q[0][0] <= now:
                _, frame = q.popleft()
                try:
                    socks[1 - d].send(frame)
                except BlockingIOError:
                    stats["queue_drops"] += 1
                except OSError:
                    pass  # the interface went away (link cut): drop
            if q:
                timeout = min(timeout, max(0.0, q[0][0] - now))
        try:
            ready, _, _ = select.select(socks, [], [], timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        for d, s in enumerate(socks):
            if s not in ready:
                continue
            for _ in range(64):
                try:
                    frame = s.recv(65536 + 64)
                except BlockingIOError:
                    break
                except OSError:
                    stop.append(1)
                    break
                if o.loss > 0 and random.random() * 100.0 < o.loss:
                    stats["lost"] += 1
                    continue
                due = now + delay
                if bps:
                    start = max(now, free_at[d])
                    if start - now > o.queue / 1000.0:
                        stats["queue_drops"] += 1
                        continue
                    free_at[d] = start + (len(frame) - 10) / bps
                    due = free_at[d] + delay
                stats["frames"] += 1
                stats["bytes"] += len(frame) - 10
                queues[d].append((due, frame))
    print("wire stats frames=%(frames)d bytes=%(bytes)d lost=%(lost)d queue_drops=%(queue_drops)d"
          % stats, flush=True)


if __name__ == "__main__":
    sys.exit(main())
