/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_UTIL_LOG_H
#define VMSNAP_UTIL_LOG_H

#include <stdbool.h>

/** Log levels, most severe first. */
enum log_level { LOG_ERR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

/** Set the most verbose level that is printed (default LOG_WARN). Thread-safe. */
void log_set_level(enum log_level level);

/** Current level. */
enum log_level log_get_level(void);

/** Prefix every message with this program name (default "vmsnap"); the string is not copied. */
void log_set_prog(const char *name);

/**
 * Print one line "prog: message" to stderr if @level is enabled. A trailing newline is added.
 * Safe to call from any thread; each line is written with a single write().
 */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** Like log_msg(LOG_ERR, ...) with ": strerror(errno)" appended (errno is preserved). */
void log_errno(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/**
 * Rate limiter for messages a guest can trigger: returns true at most @burst times per
 * second for the given state. Use through log_ratelimited().
 */
struct log_ratelimit {
	long window;		/* second of the current window */
	unsigned int count;	/* messages in this window */
	unsigned long suppressed;
};
bool log_ratelimit_ok(struct log_ratelimit *rl, unsigned int burst);

#define log_err(...) log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

/** Log at @level at most 10 times a second from this call site (for guest-triggered events). */
#define log_ratelimited(level, ...)                                                                \
	do {                                                                                       \
		static struct log_ratelimit rl_;                                                   \
		if (log_ratelimit_ok(&rl_, 10))                                                    \
			log_msg(level, __VA_ARGS__);                                               \
	} while (0)

#endif
