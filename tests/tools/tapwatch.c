/*
 * tapwatch: watch the frames of one ethertype (default 0x88B5, the test guest's heartbeats)
 * arriving on a host network interface (a VM's tap), one line per frame, and write a JSON
 * summary. Plain C, no project dependencies.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_MACS  256
#define FRAME_MAX 65536

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_TIMEOUT = 2, EXIT_USAGE = 64 };

struct mac_stats {
	uint8_t mac[6];
	uint64_t frames;
	int64_t first_ns, last_ns;
};

static struct {
	uint64_t frames;
	int64_t start_ns, first_ns, last_ns, max_gap_ns, max_gap_end_ns;
	unsigned int nmacs;
	bool macs_overflow;
	struct mac_stats macs[MAX_MACS];
} st;

static struct {
	const char *ifname, *summary, *ready;
	unsigned int ethertype;
	double timeout; /* seconds, 0: none */
	uint64_t count; /* frames, 0: no limit */
	double wait;	/* seconds to wait for the interface to appear */
	bool outgoing, quiet;
} opt = {.ethertype = 0x88B5, .wait = 0};

static volatile sig_atomic_t want_summary, want_stop;

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: tapwatch -i IFNAME [options]\n"
	    "\n"
	    "Watch frames of one ethertype arriving on the host interface IFNAME (a VM's tap:\n"
	    "what the guest transmits arrives there) through an AF_PACKET socket, and print one\n"
	    "line per frame to stdout (flushed per line):\n"
	    "    <CLOCK_MONOTONIC ns> <source MAC> <payload text>\n"
	    "The payload is what follows the 14-byte Ethernet header, trailing NULs removed,\n"
	    "bytes outside printable ASCII shown as '.'. Frames the host itself sends out of the\n"
	    "interface (towards the guest) are left out unless --outgoing.\n"
	    "\n"
	    "A JSON summary is written at exit and on SIGUSR1 (to --summary, else stderr):\n"
	    "    "
	    "{\"iface\":..,\"ethertype\":..,\"end\":..,\"frames\":N,\"first_ns\":..,\"last_ns\":..,"
	    "\n"
	    "     \"max_gap_ms\":..,\"max_gap_end_ns\":..,\"distinct_macs\":K,\n"
	    "     \"macs\":[{\"mac\":..,\"frames\":..,\"first_ns\":..,\"last_ns\":..},..]}\n"
	    "(max_gap_ms: the largest time between two consecutive frames, any source; 0 with\n"
	    "fewer than two frames.)\n"
	    "\n"
	    "  -i, --iface NAME      interface to watch (required)\n"
	    "  -e, --ethertype N     ethertype to watch (default 0x88B5; decimal or 0x hex)\n"
	    "  -s, --summary FILE    write the JSON summary to FILE (replaced atomically)\n"
	    "  -t, --timeout SEC     stop after SEC seconds (fractions allowed)\n"
	    "  -n, --frames N        stop after N frames\n"
	    "  -w, --wait SEC        wait up to SEC seconds for the interface to appear; also\n"
	    "                        how long to wait for it to come back when it is deleted and\n"
	    "                        recreated (a tap that vmsnap created dies with it)\n"
	    "  -r, --ready FILE      create FILE once the socket is listening\n"
	    "  -o, --outgoing        also show frames sent out of the interface by the host\n"
	    "  -q, --quiet           no per-frame lines (summary only)\n"
	    "  -h, --help            this text\n"
	    "\n"
	    "Exit status: 0 done (timeout without -n, -n frames seen, SIGINT/SIGTERM), 2 timeout\n"
	    "before -n frames, 1 socket error or the interface vanished, 64 usage.\n"
	    "Needs CAP_NET_RAW. The interface should be up (ip link set NAME up); to keep a tap\n"
	    "across vmsnap processes create it first: ip tuntap add dev NAME mode tap.\n"
	    "\n"
	    "Example: tapwatch -i vmtap0 -s hb.json -t 10 -r ready & ...; wait; cat hb.json\n");
}

static void on_signal(int sig)
{
	if (sig == SIGUSR1)
		want_summary = 1;
	else
		want_stop = 1;
}

static void fmt_mac(const uint8_t *m, char buf[18])
{
	snprintf(buf, 18, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
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

static void write_summary(const char *end)
{
	FILE *f = stderr;
	char tmp[4096], mac[18];
	if (opt.summary) {
		snprintf(tmp, sizeof(tmp), "%s.tmp", opt.summary);
		f = fopen(tmp, "w");
		if (!f) {
			fprintf(stderr, "tapwatch: %s: %s\n", tmp, strerror(errno));
			return;
		}
	}
	fprintf(f, "{\"iface\":");
	json_str(f, opt.ifname);
	fprintf(f,
		",\"ethertype\":\"0x%04x\",\"end\":\"%s\",\"start_ns\":%lld,\"frames\":%llu,"
		"\"first_ns\":%lld,\"last_ns\":%lld,\"max_gap_ms\":%.3f,\"max_gap_end_ns\":%lld,"
		"\"distinct_macs\":%u,\"macs_truncated\":%s,\"macs\":[",
		opt.ethertype, end, (long long)st.start_ns, (unsigned long long)st.frames,
		(long long)st.first_ns, (long long)st.last_ns, (double)st.max_gap_ns / 1e6,
		(long long)st.max_gap_end_ns, st.nmacs, st.macs_overflow ? "true" : "false");
	for (unsigned int i = 0; i < st.nmacs; i++) {
		fmt_mac(st.macs[i].mac, mac);
		fprintf(f, "%s{\"mac\":\"%s\",\"frames\":%llu,\"first_ns\":%lld,\"last_ns\":%lld}",
			i ? "," : "", mac, (unsigned long long)st.macs[i].frames,
			(long long)st.macs[i].first_ns, (long long)st.macs[i].last_ns);
	}
	fprintf(f, "]}\n");
	if (opt.summary) {
		if (fclose(f))
			fprintf(stderr, "tapwatch: %s: %s\n", tmp, strerror(errno));
		else if (rename(tmp, opt.summary))
			fprintf(stderr, "tapwatch: %s: %s\n", opt.summary, strerror(errno));
	} else {
		fflush(f);
	}
}

static void record(const uint8_t *frame, size_t len, int64_t t)
{
	static char text[FRAME_MAX];
	char mac[18];
	const uint8_t *src = frame + 6;
	struct mac_stats *ms = NULL;

	if (st.frames) {
		int64_t gap = t - st.last_ns;
		if (gap > st.max_gap_ns) {
			st.max_gap_ns = gap;
			st.max_gap_end_ns = t;
		}
	} else {
		st.first_ns = t;
	}
	st.frames++;
	st.last_ns = t;
	for (unsigned int i = 0; i < st.nmacs; i++)
		if (!memcmp(st.macs[i].mac, src, 6))
			ms = &st.macs[i];
	if (!ms && st.nmacs < MAX_MACS) {
		ms = &st.macs[st.nmacs++];
		memcpy(ms->mac, src, 6);
		ms->first_ns = t;
	} else if (!ms) {
		st.macs_overflow = true;
	}
	if (ms) {
		ms->frames++;
		ms->last_ns = t;
	}
	if (opt.quiet)
		return;
	size_t plen = len - ETH_HLEN;
	const uint8_t *p = frame + ETH_HLEN;
	while (plen && !p[plen - 1])
		plen--;
	for (size_t i = 0; i < plen; i++)
		text[i] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '.';
	text[plen] = 0;
	fmt_mac(src, mac);
	printf("%lld %s %s\n", (long long)t, mac, text);
	fflush(stdout);
}

/* Wait until @deadline_ns (0: no wait) for the interface; its index or 0. */
static unsigned int wait_iface(int64_t deadline_ns)
{
	for (;;) {
		unsigned int idx = if_nametoindex(opt.ifname);
		if (idx || !deadline_ns || now_ns() >= deadline_ns || want_stop)
			return idx;
		struct timespec ts = {0, 10 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
}

static int open_socket(unsigned int ifindex)
{
	int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons((uint16_t)opt.ethertype));
	if (fd < 0) {
		fprintf(stderr, "tapwatch: AF_PACKET socket: %s\n", strerror(errno));
		return -1;
	}
	struct sockaddr_ll sll;
	memset(&sll, 0, sizeof(sll));
	sll.sll_family = AF_PACKET;
	sll.sll_protocol = htons((uint16_t)opt.ethertype);
	sll.sll_ifindex = (int)ifindex;
	if (bind(fd, (struct sockaddr *)&sll, sizeof(sll))) {
		fprintf(stderr, "tapwatch: bind to %s: %s\n", opt.ifname, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

static bool parse_double(const char *s, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || v < 0)
		return false;
	*out = v;
	return true;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"iface", required_argument, NULL, 'i'},
	    {"ethertype", required_argument, NULL, 'e'},
	    {"summary", required_argument, NULL, 's'},
	    {"timeout", required_argument, NULL, 't'},
	    {"frames", required_argument, NULL, 'n'},
	    {"wait", required_argument, NULL, 'w'},
	    {"ready", required_argument, NULL, 'r'},
	    {"outgoing", no_argument, NULL, 'o'},
	    {"quiet", no_argument, NULL, 'q'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	int c;
	char *end;
	while ((c = getopt_long(argc, argv, "i:e:s:t:n:w:r:oqh", longopts, NULL)) != -1) {
		switch (c) {
		case 'i': opt.ifname = optarg; break;
		case 'e': {
			errno = 0;
			unsigned long v = strtoul(optarg, &end, 0);
			if (errno || end == optarg || *end || v > 0xffff) {
				fprintf(stderr, "tapwatch: bad ethertype '%s'\n", optarg);
				return EXIT_USAGE;
			}
			opt.ethertype = (unsigned int)v;
			break;
		}
		case 's': opt.summary = optarg; break;
		case 't':
			if (!parse_double(optarg, &opt.timeout)) {
				fprintf(stderr, "tapwatch: bad timeout '%s'\n", optarg);
				return EXIT_USAGE;
			}
			break;
		case 'n':
			errno = 0;
			opt.count = strtoull(optarg, &end, 10);
			if (errno || end == optarg || *end || !opt.count || optarg[0] == '-') {
				fprintf(stderr, "tapwatch: bad frame count '%s'\n", optarg);
				return EXIT_USAGE;
			}
			break;
		case 'w':
			if (!parse_double(optarg, &opt.wait)) {
				fprintf(stderr, "tapwatch: bad wait '%s'\n", optarg);
				return EXIT_USAGE;
			}
			break;
		case 'r': opt.ready = optarg; break;
		case 'o': opt.outgoing = true; break;
		case 'q': opt.quiet = true; break;
		case 'h': usage(stdout); return EXIT_OK;
		default: usage(stderr); return EXIT_USAGE;
		}
	}
	if (optind < argc || !opt.ifname || !*opt.ifname || strlen(opt.ifname) >= IFNAMSIZ) {
		if (optind < argc)
			fprintf(stderr, "tapwatch: unexpected argument '%s'\n", argv[optind]);
		else
			fprintf(stderr, "tapwatch: -i IFNAME (1..%d characters) is required\n",
				IFNAMSIZ - 1);
		usage(stderr);
		return EXIT_USAGE;
	}

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	st.start_ns = now_ns();
	int64_t deadline = opt.timeout > 0 ? st.start_ns + (int64_t)(opt.timeout * 1e9) : 0;
	int64_t wait_ns = (int64_t)(opt.wait * 1e9);
	unsigned int ifindex = wait_iface(wait_ns ? st.start_ns + wait_ns : 0);
	if (!ifindex) {
		fprintf(stderr, "tapwatch: no interface %s\n", opt.ifname);
		write_summary("no-interface");
		return EXIT_FAIL;
	}
	int fd = open_socket(ifindex);
	if (fd < 0) {
		write_summary("error");
		return EXIT_FAIL;
	}
	if (opt.ready) {
		FILE *r = fopen(opt.ready, "w");
		if (!r || fclose(r)) {
			fprintf(stderr, "tapwatch: %s: %s\n", opt.ready, strerror(errno));
			close(fd);
			return EXIT_FAIL;
		}
	}

	static uint8_t frame[FRAME_MAX];
	const char *why = "signal";
	int status = EXIT_OK;
	for (;;) {
		if (want_summary) {
			want_summary = 0;
			write_summary("running");
		}
		if (want_stop)
			break;
		if (opt.count && st.frames >= opt.count) {
			why = "frames";
			break;
		}
		int64_t now = now_ns();
		if (deadline && now >= deadline) {
			why = "timeout";
			status = opt.count ? EXIT_TIMEOUT : EXIT_OK;
			break;
		}
		/* Wake at least every 100 ms to notice signals that raced with poll(). */
		int64_t left = deadline ? deadline - now : INT64_MAX;
		int ms = left > 100000000 ? 100 : (int)((left + 999999) / 1000000);
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		int pr = poll(&pfd, 1, ms);
		if (pr < 0 && errno != EINTR) {
			fprintf(stderr, "tapwatch: poll: %s\n", strerror(errno));
			why = "error";
			status = EXIT_FAIL;
			break;
		}
		if (pr <= 0)
			continue;
		struct sockaddr_ll from;
		socklen_t fromlen = sizeof(from);
		ssize_t n = recvfrom(fd, frame, sizeof(frame), MSG_DONTWAIT | MSG_TRUNC,
				     (struct sockaddr *)&from, &fromlen);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			if (errno == ENETDOWN || errno == ENXIO || errno == ENODEV) {
				/* The interface was deleted (the tap's owner exited); a new one
				 * under the same name gets a new index: bind again. */
				fprintf(stderr, "tapwatch: %s went away (%s)\n", opt.ifname,
					strerror(errno));
				close(fd);
				fd = -1;
				int64_t until = now_ns() + wait_ns;
				if (deadline && deadline < until)
					until = deadline;
				unsigned int idx = wait_ns ? wait_iface(until) : 0;
				if (idx)
					fd = open_socket(idx);
				if (fd < 0) {
					why = "interface-gone";
					status = EXIT_FAIL;
					break;
				}
				fprintf(stderr, "tapwatch: %s is back (index %u)\n", opt.ifname,
					idx);
				continue;
			}
			fprintf(stderr, "tapwatch: recv: %s\n", strerror(errno));
			why = "error";
			status = EXIT_FAIL;
			break;
		}
		if ((size_t)n < ETH_HLEN || (size_t)n > sizeof(frame))
			continue; /* runt, or truncated: not one of ours */
		if (from.sll_pkttype == PACKET_OUTGOING && !opt.outgoing)
			continue;
		record(frame, (size_t)n, now_ns());
	}
	if (fd >= 0)
		close(fd);
	write_summary(why);
	return status;
}
