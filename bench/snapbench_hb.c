/*
 * snapbench_hb: host-side timer for bench/snapshot.sh. Plain C, no project dependencies.
 *
 *   snapbench_hb [-t SEC] [-l LOG] [-u STR] [-f STR] [-a MS] -- VMM ARGS...
 *
 * Launches a VMM that continues (restores) the test guest with its console on stdout and
 * measures, on CLOCK_MONOTONIC from just before fork(), the first console byte and the first
 * heartbeat token ('a'..'p' outside a text line, tests/guest/README.md). Unlike
 * bench/boottime it does not wait for READY (a restored guest never prints it again): after
 * the first heartbeat it keeps reading until a line containing an --until STR arrives (e.g.
 * "VERIFY OK": the restored guest's memory checks out), a --fail STR line arrives, or --after
 * MS have passed since the first heartbeat; then it kills the VMM's process group.
 *
 * Prints one line of key=value words (times in ms, -1 = not seen):
 *   first_byte_ms= first_hb_ms= end_ms= hb_after= max_gap_after_ms= until_seen= fail_seen=
 *   exited=  (exit status of the VMM if it ended on its own, else -1)
 * Exit status: 0 heartbeat seen (and the --until line if one was asked for), 1 a --fail line,
 * 2 timeout or EOF, 64 usage.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: snapbench_hb [-t SEC] [-l LOG] [-u STR] [-f STR] [-a MS] -- VMM ARGS...\n"
		   "Time from launching VMM to its console's first heartbeat; then read on until\n"
		   "a line with STR (-u), a line with a --fail STR (-f, up to 8), or MS ms after the first\n"
		   "heartbeat (-a, default 200); kill the VMM. See the comment in the source.\n");
}

int main(int argc, char **argv)
{
	const char *logpath = NULL, *until = NULL, *fail[8];
	int nfail = 0;
	double timeout_s = 60, after_ms = 200;
	int opt;
	while ((opt = getopt(argc, argv, "+t:l:u:f:a:h")) != -1) {
		switch (opt) {
		case 't': timeout_s = atof(optarg); break;
		case 'l': logpath = optarg; break;
		case 'u': until = optarg; break;
		case 'f':
			if (nfail == 8) {
				usage(stderr);
				return 64;
			}
			fail[nfail++] = optarg;
			break;
		case 'a': after_ms = atof(optarg); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 64;
		}
	}
	if (optind >= argc || timeout_s <= 0) {
		usage(stderr);
		return 64;
	}
	FILE *log = NULL;
	if (logpath && !(log = fopen(logpath, "w"))) {
		perror(logpath);
		return 64;
	}

	int p[2];
	if (pipe2(p, O_CLOEXEC)) {
		perror("pipe");
		return 64;
	}
	double t0 = now_ms();
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		return 64;
	}
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);
		setpgid(0, 0);
		dup2(null, 0);
		dup2(p[1], 1);
		execvp(argv[optind], argv + optind);
		_exit(127);
	}
	close(p[1]);
	int fd = p[0];

	double first_byte = -1, first_hb = -1, end = -1, last_hb = -1, max_gap = 0;
	long hb_after = 0;
	int at_start = 1, in_text = 0, until_seen = 0, fail_seen = 0, eof = 0, exited = -1;
	char line[512];
	size_t len = 0;
	double deadline = t0 + timeout_s * 1e3;
	for (;;) {
		double now = now_ms();
		if (first_hb >= 0 && !until && now - t0 - first_hb >= after_ms)
			break;
		if (until_seen || fail_seen || now >= deadline)
			break;
		double stop_at = deadline;
		if (first_hb >= 0 && !until && t0 + first_hb + after_ms < stop_at)
			stop_at = t0 + first_hb + after_ms;
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		int r = poll(&pfd, 1, (int)(stop_at - now) + 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			continue;
		char buf[4096];
		ssize_t n = read(fd, buf, sizeof(buf));
		double t = now_ms() - t0;
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			eof = 1;
			break;
		}
		if (log)
			fwrite(buf, 1, (size_t)n, log);
		if (first_byte < 0)
			first_byte = t;
		for (ssize_t i = 0; i < n; i++) {
			char c = buf[i];
			if (in_text) {
				if (c == '\n') {
					line[len] = 0;
					in_text = 0;
					at_start = 1;
					if (until && strstr(line, until))
						until_seen = 1;
					for (int k = 0; k < nfail; k++)
						if (strstr(line, fail[k]))
							fail_seen = 1;
				} else if (len < sizeof(line) - 1) {
					line[len++] = c;
				}
				continue;
			}
			if (at_start && c >= 'A' && c <= 'Z') {
				in_text = 1;
				len = 0;
				line[len++] = c;
			} else if (c >= 'a' && c <= 'p') {
				if (first_hb < 0) {
					first_hb = t;
				} else {
					hb_after++;
					if (t - last_hb > max_gap)
						max_gap = t - last_hb;
				}
				last_hb = t;
				at_start = 0;
			} else if (c == '\n') {
				at_start = 1;
			}
		}
	}
	end = now_ms() - t0;
	int status;
	if (waitpid(pid, &status, WNOHANG) == pid) {
		exited = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	} else {
		kill(-pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	(void)eof;
	close(fd);
	if (log)
		fclose(log);
	printf("first_byte_ms=%.3f first_hb_ms=%.3f end_ms=%.3f hb_after=%ld max_gap_after_ms=%.3f "
	       "until_seen=%d fail_seen=%d exited=%d\n",
	       first_byte, first_hb, end, hb_after, max_gap, until_seen, fail_seen, exited);
	if (fail_seen)
		return 1;
	if (first_hb < 0 || (until && !until_seen))
		return 2;
	return 0;
}
