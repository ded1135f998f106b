/*
 * hbwatch: read the test guest's console (tests/guest/README.md) from stdin, timestamp every
 * heartbeat as it arrives, and report the largest gap between heartbeats; or (--wait) wait for
 * a line in a console log another hbwatch is writing. Plain C, no project dependencies.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_CPUS 26	/* heartbeat tokens 'a'..'z' */
#define MAX_PATTERNS 16
#define LINE_MAX_LEN 4096

enum { EXIT_MATCH = 0, EXIT_FAIL = 1, EXIT_TIMEOUT = 2, EXIT_GAP = 3, EXIT_USAGE = 64 };

struct cpu_stats {
	uint64_t count;
	double last, max_gap, max_gap_start;
};

struct stats {
	double window_start;	/* CLOCK_MONOTONIC seconds */
	uint64_t heartbeats, lines, verify_ok, verify_fail, panics, gaps_10ms, gaps_100ms;
	double first, last, max_gap, max_gap_start;
	int max_gap_cpu;	/* cpu whose heartbeat ended the largest gap */
	int ncpus;		/* highest cpu seen + 1 */
	struct cpu_stats cpu[MAX_CPUS];
	char last_status[512];
};

static struct {
	const char *log, *summary, *wait_file, *wait_for;
	const char *until[MAX_PATTERNS], *fail[MAX_PATTERNS];
	int nuntil, nfail, json, echo, count;
	double timeout, max_gap_ms;
	long long from;
} opt = { .count = 1, .max_gap_ms = -1 };

static volatile sig_atomic_t want_summary, want_reset;
static double mono_to_unix;	/* CLOCK_REALTIME - CLOCK_MONOTONIC at start */

static double now_mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: hbwatch [options] < console          watch a guest console\n"
		"       hbwatch --wait LOG --for STR [options]  wait for a line in a console log\n"
		"\n"
		"Watch mode reads the test guest's console (tests/guest/README.md) from stdin, takes\n"
		"CLOCK_MONOTONIC when each heartbeat token ('a'+cpu) arrives and reports the largest\n"
		"gap between heartbeats (any CPU, and per CPU). A summary goes to stdout (or --summary)\n"
		"at EOF, on SIGUSR1, and when --until/--fail/--timeout ends the watch. SIGUSR2 resets\n"
		"the statistics (start a new measurement window, e.g. just before a migration).\n"
		"\n"
		"  -l, --log FILE        copy the console, unchanged, to FILE (flushed per read)\n"
		"  -s, --summary FILE    write summaries to FILE (rewritten each time) instead of stdout\n"
		"  -j, --json            summaries as one JSON line instead of human-readable text\n"
		"  -e, --echo            copy the console's text lines (no heartbeats) to stderr\n"
		"  -u, --until STR       stop (exit 0) when a line containing STR arrives (repeatable)\n"
		"  -f, --fail STR        stop (exit 1) when a line containing STR arrives (repeatable),\n"
		"                        e.g. -f PANIC -f 'VERIFY FAIL'\n"
		"  -t, --timeout SEC     stop (exit 2) after SEC seconds (fractions allowed)\n"
		"  -g, --max-gap MS      at the end, exit 3 if the largest gap exceeded MS\n"
		"\n"
		"Wait mode polls LOG (the --log of a running watcher) and prints the matching lines:\n"
		"  -w, --wait LOG        the console log to read\n"
		"  -F, --for STR         the text to wait for (a substring of a line)\n"
		"  -n, --count N         wait for N matching lines (default 1)\n"
		"  -o, --from OFFSET     only look at bytes from OFFSET on (e.g. $(stat -c %%s LOG)\n"
		"                        taken before the action whose result you wait for)\n"
		"  -f, --fail STR, -t, --timeout SEC  as above\n"
		"\n"
		"Exit status: 0 seen (or EOF without --until), 1 a --fail line, 2 timeout or EOF\n"
		"before an --until line, 3 gap over --max-gap, 64 usage or I/O error.\n"
		"\n"
		"Example: vmsnap run guest.elf ... | hbwatch -l con.log -j -s sum.json -f PANIC &\n"
		"         hbwatch -w con.log -F READY -t 30 && kill -USR2 $watcher   # new window\n"
		"         ...pause/save/restore...; kill -USR1 $watcher; cat sum.json\n");
}

static void on_signal(int sig)
{
	if (sig == SIGUSR1)
		want_summary = 1;
	else
		want_reset = 1;
}

static void stats_reset(struct stats *s)
{
	memset(s, 0, sizeof(*s));
	s->window_start = now_mono();
	s->max_gap_cpu = -1;
}

static void json_str(FILE *f, const char *p)
{
	fputc('"', f);
	for (; *p; p++) {
		unsigned char c = (unsigned char)*p;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void write_summary(const struct stats *s, const char *end)
{
	FILE *f = stdout;
	char tmp[4096];
	if (opt.summary) {
		snprintf(tmp, sizeof(tmp), "%s.tmp", opt.summary);
		f = fopen(tmp, "w");
		if (!f) {
			fprintf(stderr, "hbwatch: %s: %s\n", tmp, strerror(errno));
			return;
		}
	}
	double t = now_mono(), win = t - s->window_start;
	double rel = s->max_gap_cpu >= 0 ? s->max_gap_start - s->window_start : 0;
	if (opt.json) {
		fprintf(f,
			"{\"end\":\"%s\",\"window_s\":%.3f,\"heartbeats\":%llu,\"max_gap_ms\":%.3f,"
			"\"max_gap_start_s\":%.3f,\"max_gap_start_unix\":%.6f,\"max_gap_cpu\":%d,"
			"\"gaps_over_10ms\":%llu,\"gaps_over_100ms\":%llu,\"since_last_hb_ms\":%.3f,"
			"\"lines\":%llu,\"verify_ok\":%llu,\"verify_fail\":%llu,\"panic\":%llu,\"cpus\":[",
			end, win, (unsigned long long)s->heartbeats, s->max_gap * 1e3, rel,
			s->max_gap_cpu >= 0 ? s->max_gap_start + mono_to_unix : 0, s->max_gap_cpu,
			(unsigned long long)s->gaps_10ms, (unsigned long long)s->gaps_100ms,
			s->heartbeats ? (t - s->last) * 1e3 : 0, (unsigned long long)s->lines,
			(unsigned long long)s->verify_ok, (unsigned long long)s->verify_fail,
			(unsigned long long)s->panics);
		for (int i = 0; i < s->ncpus; i++)
			fprintf(f, "%s{\"cpu\":%d,\"heartbeats\":%llu,\"max_gap_ms\":%.3f,\"max_gap_start_s\":%.3f}",
				i ? "," : "", i, (unsigned long long)s->cpu[i].count,
				s->cpu[i].max_gap * 1e3,
				s->cpu[i].count ? s->cpu[i].max_gap_start - s->window_start : 0);
		fprintf(f, "],\"last_status\":");
		json_str(f, s->last_status);
		fprintf(f, "}\n");
	} else {
		fprintf(f, "hbwatch (%s): window %.3f s, %llu heartbeats from %d cpus, max gap %.3f ms",
			end, win, (unsigned long long)s->heartbeats, s->ncpus, s->max_gap * 1e3);
		if (s->max_gap_cpu >= 0)
			fprintf(f, " at +%.3f s (ended by cpu %d)", rel, s->max_gap_cpu);
		fprintf(f, "; gaps >10 ms: %llu, >100 ms: %llu\n", (unsigned long long)s->gaps_10ms,
			(unsigned long long)s->gaps_100ms);
		for (int i = 0; i < s->ncpus; i++)
			fprintf(f, "  cpu %d: %llu heartbeats, max gap %.3f ms at +%.3f s\n", i,
				(unsigned long long)s->cpu[i].count, s->cpu[i].max_gap * 1e3,
				s->cpu[i].count ? s->cpu[i].max_gap_start - s->window_start : 0);
		fprintf(f, "  lines %llu, VERIFY OK %llu, VERIFY FAIL %llu, PANIC %llu\n",
			(unsigned long long)s->lines, (unsigned long long)s->verify_ok,
			(unsigned long long)s->verify_fail, (unsigned long long)s->panics);
		if (s->last_status[0])
			fprintf(f, "  last: %s\n", s->last_status);
	}
	if (opt.summary) {
		fclose(f);
		if (rename(tmp, opt.summary))
			fprintf(stderr, "hbwatch: %s: %s\n", opt.summary, strerror(errno));
	} else {
		fflush(f);
	}
}

static void heartbeat(struct stats *s, int cpu, double t)
{
	struct cpu_stats *c = &s->cpu[cpu];
	if (cpu >= s->ncpus)
		s->ncpus = cpu + 1;
	if (s->heartbeats) {
		double gap = t - s->last;
		if (gap > s->max_gap) {
			s->max_gap = gap;
			s->max_gap_start = s->last;
			s->max_gap_cpu = cpu;
		}
		s->gaps_10ms += gap > 0.010;
		s->gaps_100ms += gap > 0.100;
	} else {
		s->first = t;
	}
	if (c->count && t - c->last > c->max_gap) {
		c->max_gap = t - c->last;
		c->max_gap_start = c->last;
	}
	c->last = t;
	c->count++;
	s->last = t;
	s->heartbeats++;
}

static int match_any(const char *line, const char *const *pats, int n)
{
	for (int i = 0; i < n; i++)
		if (strstr(line, pats[i]))
			return 1;
	return 0;
}

/* Returns -1 to go on, else the exit status the line asks for. */
static int text_line(struct stats *s, const char *line)
{
	s->lines++;
	if (!strncmp(line, "VERIFY OK", 9))
		s->verify_ok++;
	else if (!strncmp(line, "VERIFY FAIL", 11))
		s->verify_fail++;
	else if (!strncmp(line, "PANIC", 5))
		s->panics++;
	else if (!strncmp(line, "STATUS", 6))
		snprintf(s->last_status, sizeof(s->last_status), "%.*s",
			 (int)sizeof(s->last_status) - 1, line);
	if (opt.echo)
		fprintf(stderr, "%s\n", line);
	if (match_any(line, opt.fail, opt.nfail))
		return EXIT_FAIL;
	if (match_any(line, opt.until, opt.nuntil))
		return EXIT_MATCH;
	return -1;
}

static int finish(struct stats *s, const char *end, int rc)
{
	write_summary(s, end);
	if (rc == EXIT_MATCH && opt.max_gap_ms >= 0 && s->max_gap * 1e3 > opt.max_gap_ms)
		rc = EXIT_GAP;
	return rc;
}

static int watch(void)
{
	static struct stats s;
	static char line[LINE_MAX_LEN];
	size_t len = 0;
	int in_text = 0, at_start = 1;
	FILE *log = NULL;
	if (opt.log && !(log = fopen(opt.log, "w"))) {
		fprintf(stderr, "hbwatch: %s: %s\n", opt.log, strerror(errno));
		return EXIT_USAGE;
	}
	stats_reset(&s);
	double deadline = opt.timeout > 0 ? now_mono() + opt.timeout : 0;
	char buf[65536];
	for (;;) {
		if (want_reset) {
			want_reset = 0;
			stats_reset(&s);
		}
		if (want_summary) {
			want_summary = 0;
			write_summary(&s, "signal");
		}
		int wait_ms = -1;
		if (deadline) {
			double left = deadline - now_mono();
			if (left <= 0)
				return finish(&s, "timeout", EXIT_TIMEOUT);
			wait_ms = (int)(left * 1000) + 1;
		}
		struct pollfd p = { .fd = 0, .events = POLLIN };
		int r = poll(&p, 1, wait_ms);
		if (r < 0 && errno == EINTR)
			continue;
		if (r == 0)
			continue;
		ssize_t n = read(0, buf, sizeof(buf));
		double t = now_mono();
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fprintf(stderr, "hbwatch: read: %s\n", strerror(errno));
			return finish(&s, "error", EXIT_USAGE);
		}
		if (n == 0)
			break;
		if (log) {
			fwrite(buf, 1, (size_t)n, log);
			fflush(log);
		}
		for (ssize_t i = 0; i < n; i++) {
			char c = buf[i];
			if (in_text) {
				if (c == '\n') {
					line[len] = 0;
					in_text = 0;
					at_start = 1;
					int rc = text_line(&s, line);
					if (rc >= 0)
						return finish(&s, rc == EXIT_MATCH ? "until" : "fail", rc);
				} else if (c != '\r' && len < sizeof(line) - 1) {
					line[len++] = c;
				}
				continue;
			}
			if (c >= 'a' && c < 'a' + MAX_CPUS) {
				heartbeat(&s, c - 'a', t);
				at_start = 0;
			} else if (c == '\n') {
				at_start = 1;
			} else if (at_start && c >= 'A' && c <= 'Z') {
				in_text = 1;
				len = 0;
				line[len++] = c;
			}
		}
	}
	if (in_text) {
		line[len] = 0;
		int rc = text_line(&s, line);
		if (rc >= 0)
			return finish(&s, rc == EXIT_MATCH ? "until" : "fail", rc);
	}
	if (log)
		fclose(log);
	return finish(&s, "eof", opt.nuntil ? EXIT_TIMEOUT : EXIT_MATCH);
}

static int wait_log(void)
{
	int fd = open(opt.wait_file, O_RDONLY);
	double deadline = opt.timeout > 0 ? now_mono() + opt.timeout : 0;
	while (fd < 0 && errno == ENOENT && (!deadline || now_mono() < deadline)) {
		usleep(20000);
		fd = open(opt.wait_file, O_RDONLY);
	}
	if (fd < 0) {
		fprintf(stderr, "hbwatch: %s: %s\n", opt.wait_file, strerror(errno));
		return deadline ? EXIT_TIMEOUT : EXIT_USAGE;
	}
	if (opt.from > 0 && lseek(fd, opt.from, SEEK_SET) < 0) {
		fprintf(stderr, "hbwatch: seek: %s\n", strerror(errno));
		return EXIT_USAGE;
	}
	static char line[LINE_MAX_LEN];
	size_t len = 0;
	int found = 0;
	char buf[65536];
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fprintf(stderr, "hbwatch: read: %s\n", strerror(errno));
			return EXIT_USAGE;
		}
		if (n == 0) {
			if (deadline && now_mono() >= deadline) {
				fprintf(stderr, "hbwatch: timeout: %d of %d lines with \"%s\"\n", found,
					opt.count, opt.wait_for);
				return EXIT_TIMEOUT;
			}
			usleep(10000);
			continue;
		}
		for (ssize_t i = 0; i < n; i++) {
			if (buf[i] != '\n') {
				if (len < sizeof(line) - 1 && buf[i] != '\r')
					line[len++] = buf[i];
				continue;
			}
			line[len] = 0;
			len = 0;
			if (match_any(line, opt.fail, opt.nfail)) {
				printf("%s\n", line);
				return EXIT_FAIL;
			}
			if (strstr(line, opt.wait_for)) {
				printf("%s\n", line);
				if (++found >= opt.count)
					return EXIT_MATCH;
			}
		}
	}
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "log", required_argument, 0, 'l' },	  { "summary", required_argument, 0, 's' },
		{ "json", no_argument, 0, 'j' },	  { "echo", no_argument, 0, 'e' },
		{ "until", required_argument, 0, 'u' },	  { "fail", required_argument, 0, 'f' },
		{ "timeout", required_argument, 0, 't' }, { "max-gap", required_argument, 0, 'g' },
		{ "wait", required_argument, 0, 'w' },	  { "for", required_argument, 0, 'F' },
		{ "count", required_argument, 0, 'n' },	  { "from", required_argument, 0, 'o' },
		{ "help", no_argument, 0, 'h' },	  { 0, 0, 0, 0 },
	};
	int c;
	while ((c = getopt_long(argc, argv, "l:s:jeu:f:t:g:w:F:n:o:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'l': opt.log = optarg; break;
		case 's': opt.summary = optarg; break;
		case 'j': opt.json = 1; break;
		case 'e': opt.echo = 1; break;
		case 'u':
		case 'f':
			if ((c == 'u' ? opt.nuntil : opt.nfail) >= MAX_PATTERNS) {
				fprintf(stderr, "hbwatch: at most %d patterns\n", MAX_PATTERNS);
				return EXIT_USAGE;
			}
			if (c == 'u')
				opt.until[opt.nuntil++] = optarg;
			else
				opt.fail[opt.nfail++] = optarg;
			break;
		case 't': opt.timeout = atof(optarg); break;
		case 'g': opt.max_gap_ms = atof(optarg); break;
		case 'w': opt.wait_file = optarg; break;
		case 'F': opt.wait_for = optarg; break;
		case 'n': opt.count = atoi(optarg); break;
		case 'o': opt.from = atoll(optarg); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (optind != argc || (opt.wait_file && !opt.wait_for) || (!opt.wait_file && opt.wait_for)) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (opt.wait_file)
		return wait_log();

	struct timespec rt;
	clock_gettime(CLOCK_REALTIME, &rt);
	mono_to_unix = (double)rt.tv_sec + (double)rt.tv_nsec / 1e9 - now_mono();
	struct sigaction sa = { .sa_handler = on_signal };	/* no SA_RESTART: wake poll() */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	return watch();
}
