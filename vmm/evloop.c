/* SPDX-License-Identifier: MIT */
#include "evloop.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "util/log.h"

/*
 * Each watched fd is registered with epoll under a unique 64-bit id (never reused), and the
 * handler is looked up by that id under the lock when its event is dispatched: an event that
 * epoll_wait() returned for a watch deleted since (or for an fd number reused by a new watch)
 * finds nothing and is dropped, so a handler never runs after evloop_del() returned.
 * Level-triggered: whatever is not handled (the loop parked for a pause in the middle of a
 * batch) is reported again by the next epoll_wait().
 */

#define EVLOOP_BATCH 32
#define WAKE_ID	     0 /* epoll data of the internal eventfd; watch ids start at 1 */

struct watch {
	int fd;
	evloop_fn fn;
	void *opaque;
	uint64_t id;
};

struct evloop {
	int epfd;
	int wake_fd; /* eventfd: pause and destroy interrupt epoll_wait() */

	pthread_mutex_t lock;
	pthread_cond_t cond; /* parked, running_id and pause changes */
	struct watch *w;
	unsigned int n, cap;
	uint64_t next_id;

	/* The handler being run (0: none) and the thread running it. */
	uint64_t running_id;
	pthread_t runner;

	pthread_t thread;
	bool started;
	bool stop;   /* destroy asked the thread to end */
	bool paused; /* pause requested (until resume) */
	bool parked; /* the thread is waiting between handlers (or has ended) */
};

static void wake(struct evloop *l)
{
	uint64_t one = 1;
	/* EAGAIN means the counter is already non-zero: the thread will wake anyway. */
	if (write(l->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_errno("evloop: wake");
}

static struct watch *find_id(struct evloop *l, uint64_t id)
{
	for (unsigned int i = 0; i < l->n; i++)
		if (l->w[i].id == id)
			return &l->w[i];
	return NULL;
}

static int find_fd(const struct evloop *l, int fd)
{
	for (unsigned int i = 0; i < l->n; i++)
		if (l->w[i].fd == fd)
			return (int)i;
	return -1;
}

struct evloop *evloop_create(void)
{
	struct evloop *l = calloc(1, sizeof(*l));
	if (!l) {
		log_err("evloop: out of memory");
		return NULL;
	}
	l->epfd = -1;
	l->wake_fd = -1;
	l->next_id = WAKE_ID + 1;
	int r = pthread_mutex_init(&l->lock, NULL);
	if (r) {
		log_err("evloop: mutex: %s", strerror(r));
		free(l);
		return NULL;
	}
	r = pthread_cond_init(&l->cond, NULL);
	if (r) {
		log_err("evloop: cond: %s", strerror(r));
		pthread_mutex_destroy(&l->lock);
		free(l);
		return NULL;
	}
	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (l->epfd < 0) {
		log_errno("evloop: epoll_create1");
		goto fail;
	}
	l->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (l->wake_fd < 0) {
		log_errno("evloop: eventfd");
		goto fail;
	}
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = WAKE_ID};
	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wake_fd, &ev) < 0) {
		log_errno("evloop: epoll_ctl");
		goto fail;
	}
	return l;
fail:
	evloop_destroy(l);
	return NULL;
}

int evloop_add(struct evloop *l, int fd, evloop_fn fn, void *opaque)
{
	int r = 0;
	if (fd < 0 || !fn)
		return -EINVAL;
	pthread_mutex_lock(&l->lock);
	if (find_fd(l, fd) >= 0) {
		r = -EEXIST;
		goto out;
	}
	if (l->n == l->cap) {
		unsigned int cap = l->cap ? l->cap * 2 : 8;
		struct watch *w = realloc(l->w, cap * sizeof(*w));
		if (!w) {
			r = -ENOMEM;
			log_err("evloop: out of memory");
			goto out;
		}
		l->w = w;
		l->cap = cap;
	}
	uint64_t id = l->next_id++;
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = id};
	if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		r = -errno;
		log_errno("evloop: watch fd %d", fd);
		goto out;
	}
	l->w[l->n++] = (struct watch){.fd = fd, .fn = fn, .opaque = opaque, .id = id};
out:
	pthread_mutex_unlock(&l->lock);
	return r;
}

int evloop_del(struct evloop *l, int fd)
{
	pthread_mutex_lock(&l->lock);
	int i = find_fd(l, fd);
	if (i < 0) {
		pthread_mutex_unlock(&l->lock);
		return -ENOENT;
	}
	uint64_t id = l->w[i].id;
	l->w[i] = l->w[--l->n];
	/* EBADF: the caller closed the fd first, which took it out of the epoll set already. */
	if (epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL) < 0 && errno != EBADF)
		log_errno("evloop: unwatch fd %d", fd);
	/* A handler deleting its own fd returns at once (waiting would be waiting for itself). */
	while (l->running_id == id && !pthread_equal(l->runner, pthread_self()))
		pthread_cond_wait(&l->cond, &l->lock);
	pthread_mutex_unlock(&l->lock);
	return 0;
}

/*
 * Run the handlers of @n events. With @threaded, stop at a pause or stop request: the rest
 * stay pending in epoll. Returns the number of handlers run.
 */
static int dispatch(struct evloop *l, const struct epoll_event *ev, int n, bool threaded)
{
	int ran = 0;
	for (int i = 0; i < n; i++) {
		uint64_t id = ev[i].data.u64;
		if (id == WAKE_ID) {
			uint64_t v;
			if (read(l->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
				log_errno("evloop: read wake eventfd");
			continue;
		}
		pthread_mutex_lock(&l->lock);
		if (threaded && (l->paused || l->stop)) {
			pthread_mutex_unlock(&l->lock);
			break;
		}
		struct watch *w = find_id(l, id);
		if (!w) {
			pthread_mutex_unlock(&l->lock);
			continue;
		}
		evloop_fn fn = w->fn;
		void *opaque = w->opaque;
		int fd = w->fd;
		l->running_id = id;
		l->runner = pthread_self();
		pthread_mutex_unlock(&l->lock);

		/* Without the lock: the handler may add and delete watches. */
		fn(opaque, fd);
		ran++;

		pthread_mutex_lock(&l->lock);
		l->running_id = 0;
		pthread_cond_broadcast(&l->cond);
		pthread_mutex_unlock(&l->lock);
	}
	return ran;
}

static void *loop_thread(void *arg)
{
	struct evloop *l = arg;
	struct epoll_event ev[EVLOOP_BATCH];

	for (;;) {
		pthread_mutex_lock(&l->lock);
		while (l->paused && !l->stop) {
			if (!l->parked) {
				l->parked = true;
				pthread_cond_broadcast(&l->cond);
			}
			pthread_cond_wait(&l->cond, &l->lock);
		}
		l->parked = false;
		bool stop = l->stop;
		pthread_mutex_unlock(&l->lock);
		if (stop)
			break;

		int n = epoll_wait(l->epfd, ev, EVLOOP_BATCH, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			log_errno("evloop: epoll_wait; device I/O thread ends");
			break;
		}
		dispatch(l, ev, n, true);
	}

	/* Ended for good: counts as parked, so a pause never waits for it. */
	pthread_mutex_lock(&l->lock);
	l->parked = true;
	pthread_cond_broadcast(&l->cond);
	pthread_mutex_unlock(&l->lock);
	return NULL;
}

int evloop_start(struct evloop *l)
{
	sigset_t all, old;
	if (l->started)
		return -EBUSY;
	/* The VM's signals (vCPU kicks, SIGINT) belong to other threads. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int r = pthread_create(&l->thread, NULL, loop_thread, l);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r) {
		log_err("evloop: cannot start thread: %s", strerror(r));
		return -r;
	}
	pthread_mutex_lock(&l->lock);
	l->started = true;
	pthread_mutex_unlock(&l->lock);
	return 0;
}

int evloop_run_once(struct evloop *l, int timeout_ms)
{
	struct epoll_event ev[EVLOOP_BATCH];

	pthread_mutex_lock(&l->lock);
	bool busy = l->started, paused = l->paused;
	pthread_mutex_unlock(&l->lock);
	if (busy)
		return -EBUSY;
	if (paused)
		return 0;
	int n = epoll_wait(l->epfd, ev, EVLOOP_BATCH, timeout_ms);
	if (n < 0) {
		if (errno == EINTR)
			return 0;
		int r = -errno;
		log_errno("evloop: epoll_wait");
		return r;
	}
	return dispatch(l, ev, n, false);
}

void evloop_pause(struct evloop *l)
{
	pthread_mutex_lock(&l->lock);
	l->paused = true;
	/* From a handler on the loop thread: it parks when the handler returns. */
	if (l->started && !pthread_equal(l->thread, pthread_self())) {
		wake(l);
		while (!l->parked)
			pthread_cond_wait(&l->cond, &l->lock);
	}
	pthread_mutex_unlock(&l->lock);
}

void evloop_resume(struct evloop *l)
{
	pthread_mutex_lock(&l->lock);
	l->paused = false;
	pthread_cond_broadcast(&l->cond);
	pthread_mutex_unlock(&l->lock);
}

void evloop_destroy(struct evloop *l)
{
	if (!l)
		return;
	if (l->started) {
		pthread_mutex_lock(&l->lock);
		l->stop = true;
		pthread_cond_broadcast(&l->cond);
		pthread_mutex_unlock(&l->lock);
		wake(l);
		pthread_join(l->thread, NULL);
	}
	if (l->epfd >= 0)
		close(l->epfd);
	if (l->wake_fd >= 0)
		close(l->wake_fd);
	pthread_cond_destroy(&l->cond);
	pthread_mutex_destroy(&l->lock);
	free(l->w);
	free(l);
}
