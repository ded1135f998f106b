/*
 * clonebench_hb: when does each of N console files get its first heartbeat? For bench/clone.sh.
 *
 *   clonebench_hb DIR PREFIX SUFFIX N TIMEOUT_S
 *
 * Watches DIR/PREFIX<i>SUFFIX for i = 0..N-1 (files that need not exist yet) with inotify:
 * IN_CREATE on DIR, then IN_MODIFY on each console file until its first heartbeat token, read
 * with the test guest's console grammar (tests/guest/README.md: at a line start, 'A'-'Z' opens
 * a text line up to '\n'; outside text lines 'a'-'p' is a heartbeat). Prints "ready" once
 * the watch is set up (start the VMs after that), then one line "hb I NS" per console as its
 * first heartbeat arrives (NS: CLOCK_MONOTONIC in ns, the clock of Python's
 * time.monotonic_ns()), and "done" when all N have one, or "timeout SEEN" after TIMEOUT_S.
 * Exit status 0 (all seen), 2 (timeout), 1 (error). No polling: the watcher sleeps in read()
 * between events, so it takes no CPU from the VMs it times.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

struct con {
	char path[PATH_MAX];
	int wd;	   /* IN_MODIFY watch, -1 if none */
	off_t off; /* bytes parsed */
	bool at_line_start, in_text, seen;
};

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Parse what is new in @c; true once it has held a heartbeat. */
static bool scan(struct con *c)
{
	int fd = open(c->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	char buf[65536];
	ssize_t n;
	while (!c->seen && (n = pread(fd, buf, sizeof(buf), c->off)) > 0) {
		for (ssize_t i = 0; i < n && !c->seen; i++) {
			char ch = buf[i];
			if (c->in_text) {
				if (ch == '\n')
					c->in_text = false;
			} else if (c->at_line_start && ch >= 'A' && ch <= 'Z') {
				c->in_text = true;
			} else if (ch >= 'a' && ch <= 'p') {
				c->seen = true;
			}
			c->at_line_start = ch == '\n';
		}
		c->off += n;
	}
	close(fd);
	return c->seen;
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: clonebench_hb DIR PREFIX SUFFIX N TIMEOUT_S\n");
		return 64;
	}
	const char *dir = argv[1], *prefix = argv[2], *suffix = argv[3];
	long n = strtol(argv[4], NULL, 10);
	double timeout = atof(argv[5]);
	if (n < 1 || n > 100000 || timeout <= 0) {
		fprintf(stderr, "clonebench_hb: bad N or TIMEOUT_S\n");
		return 64;
	}
	struct con *cs = calloc((size_t)n, sizeof(*cs));
	int ifd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
	if (!cs || ifd < 0) {
		perror("clonebench_hb: inotify_init1");
		return 1;
	}
	size_t plen = strlen(prefix), slen = strlen(suffix);
	for (long i = 0; i < n; i++) {
		snprintf(cs[i].path, sizeof(cs[i].path), "%s/%s%ld%s", dir, prefix, i, suffix);
		cs[i].wd = -1;
		cs[i].at_line_start = true;
	}
	if (inotify_add_watch(ifd, dir, IN_CREATE) < 0) {
		perror(dir);
		return 1;
	}
	long seen = 0;
	/* Files that exist already (they should not: a fresh DIR is expected) get a watch now. */
	for (long i = 0; i < n; i++) {
		cs[i].wd = inotify_add_watch(ifd, cs[i].path, IN_MODIFY);
		if (cs[i].wd >= 0 && scan(&cs[i])) {
			printf("hb %ld %lld\n", i, (long long)now_ns());
			inotify_rm_watch(ifd, cs[i].wd);
			cs[i].wd = -1;
			seen++;
		}
	}
	printf("ready\n");
	fflush(stdout);
	int64_t deadline = now_ns() + (int64_t)(timeout * 1e9);
	char ev[65536] __attribute__((aligned(__alignof__(struct inotify_event))));
	while (seen < n) {
		int64_t left = deadline - now_ns();
		if (left <= 0)
			break;
		struct pollfd pfd = { .fd = ifd, .events = POLLIN };
		int r = poll(&pfd, 1, (int)(left / 1000000 + 1));
		if (r < 0 && errno != EINTR) {
			perror("poll");
			return 1;
		}
		ssize_t len = read(ifd, ev, sizeof(ev));
		if (len < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			perror("read");
			return 1;
		}
		int64_t t = now_ns();
		for (char *p = ev; p < ev + len;) {
			struct inotify_event *e = (struct inotify_event *)p;
			p += sizeof(*e) + e->len;
			long i = -1;
			if ((e->mask & IN_CREATE) && e->len) {
				/* PREFIX<i>SUFFIX: add its watch, then read what is there already */
				size_t nl = strlen(e->name);
				if (nl > plen + slen && !strncmp(e->name, prefix, plen) &&
				    !strcmp(e->name + nl - slen, suffix)) {
					char *end;
					i = strtol(e->name + plen, &end, 10);
					if (end != e->name + nl - slen || i < 0 || i >= n || cs[i].seen)
						continue;
					if (cs[i].wd < 0)
						cs[i].wd = inotify_add_watch(ifd, cs[i].path, IN_MODIFY);
				}
			} else if (e->mask & IN_MODIFY) {
				for (long j = 0; j < n; j++)
					if (cs[j].wd == e->wd && !cs[j].seen) {
						i = j;
						break;
					}
			}
			if (i < 0 || cs[i].seen || !scan(&cs[i]))
				continue;
			printf("hb %ld %lld\n", i, (long long)t);
			if (cs[i].wd >= 0)
				inotify_rm_watch(ifd, cs[i].wd);
			cs[i].wd = -1;
			seen++;
		}
		fflush(stdout);
	}
	if (seen < n) {
		printf("timeout %ld\n", seen);
		return 2;
	}
	printf("done\n");
	return 0;
}
