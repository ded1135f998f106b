/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_VMM_EVLOOP_H
#define VMSNAP_VMM_EVLOOP_H

/*
 * The device I/O thread: an epoll loop calling a handler when a file descriptor is readable
 * (queue-notify eventfds, tap devices). Device work (disk reads and writes, packets) happens
 * here, off the vCPU threads, so a slow disk never stalls a vCPU.
 *
 * Pausing: evloop_pause() returns once the thread is parked between handlers, so no request is
 * half done while a snapshot reads device state; evloop_resume() lets it go on. Events that
 * arrive while paused stay pending (eventfd counters, readable taps).
 */

#include <stdbool.h>

typedef void (*evloop_fn)(void *opaque, int fd);

struct evloop;

/** Create a loop (no thread yet). NULL on failure after logging. */
struct evloop *evloop_create(void);

/**
 * Watch @fd for readability (level-triggered: a handler must consume what it was called for,
 * e.g. read the eventfd, or it is called again); @fn(opaque, fd) runs on the loop thread
 * without any loop lock held, so it may call evloop_add/evloop_del. 0, -EEXIST if @fd is
 * already watched, or -errno. Any thread.
 */
int evloop_add(struct evloop *l, int fd, evloop_fn fn, void *opaque);

/**
 * Stop watching @fd; once this returns, its handler is not running and will not run (called
 * from that handler itself, it returns at once and the handler is not called again). It waits
 * for a running handler, so never call it holding a lock that handler takes: drop the lock
 * first, then close @fd after this returns. 0 or -ENOENT. Any thread.
 */
int evloop_del(struct evloop *l, int fd);

/** Start the thread (signals blocked in it). 0, -EBUSY if started, or -errno. */
int evloop_start(struct evloop *l);

/**
 * Run ready handlers once without a thread, waiting at most @timeout_ms for one (tests).
 * Returns the number of handlers run (0 while paused), -EBUSY if the thread runs, or -errno.
 */
int evloop_run_once(struct evloop *l, int timeout_ms);

/**
 * Park the thread between handlers and wait until it is parked (idempotent; from a handler
 * on the loop thread it does not wait, the thread parks when the handler returns).
 */
void evloop_pause(struct evloop *l);
void evloop_resume(struct evloop *l);

/** Stop and join the thread, free the loop. Safe on NULL. */
void evloop_destroy(struct evloop *l);

#endif
