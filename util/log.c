/* SPDX-License-Identifier: MIT */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int cur_level = LOG_WARN;
static const char *prog = "vmsnap";

void log_set_level(enum log_level level)
{
	atomic_store(&cur_level, (int)level);
}

enum log_level log_get_level(void)
{
	return (enum log_level)atomic_load(&cur_level);
}

void log_set_prog(const char *name)
{
	prog = name;
}

static void log_vwrite(const char *fmt, va_list ap, const char *suffix)
{
	char buf[1024];
	int n = snprintf(buf, sizeof(buf), "%s: ", prog);
	if (n < 0)
		return;
	int m = vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
	if (m < 0)
		return;
	size_t len = strlen(buf);
	if (suffix) {
		snprintf(buf + len, sizeof(buf) - len, ": %s", suffix);
		len = strlen(buf);
	}
	if (len >= sizeof(buf) - 1)
		len = sizeof(buf) - 2;
	buf[len++] = '\n';
	/* One write per line so lines from different threads never interleave. */
	ssize_t w = write(STDERR_FILENO, buf, len);
	(void)w;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	if ((int)level > atomic_load(&cur_level))
		return;
	va_list ap;
	va_start(ap, fmt);
	log_vwrite(fmt, ap, NULL);
	va_end(ap);
}

void log_errno(const char *fmt, ...)
{
	int saved = errno;
	char ebuf[128];
	const char *msg = strerror_r(saved, ebuf, sizeof(ebuf));
	va_list ap;
	va_start(ap, fmt);
	log_vwrite(fmt, ap, msg);
	va_end(ap);
	errno = saved;
}

bool log_ratelimit_ok(struct log_ratelimit *rl, unsigned int burst)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	if (ts.tv_sec != rl->window) {
		if (rl->suppressed)
			log_msg(LOG_WARN, "(%lu similar messages suppressed)", rl->suppressed);
		rl->window = ts.tv_sec;
		rl->count = 0;
		rl->suppressed = 0;
	}
	if (rl->count < burst) {
		rl->count++;
		return true;
	}
	rl->suppressed++;
	return false;
}
