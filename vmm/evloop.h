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

/** Watch @fd for readability; @fn(opaque, fd) runs on the loop thread. 0 or -errno. Any thread. */
int evloop_add(struct evloop *l, int fd, evloop_fn fn, void *opaque);

/** Stop watching @fd; once this returns, its handler is not running and will not run. */
int evloop_del(struct evloop *l, int fd);

/** Start the thread. 0 or -errno. */
int evloop_start(struct evloop *l);

/** Run ready handlers once without a thread, waiting at most @timeout_ms (tests). */
int evloop_run_once(struct evloop *l, int timeout_ms);

/** Park the thread between handlers and wait until it is parked (idempotent). */
void evloop_pause(struct evloop *l);
void evloop_resume(struct evloop *l);

/** Stop and join the thread, free the loop. Safe on NULL. */
void evloop_destroy(struct evloop *l);

#endif
