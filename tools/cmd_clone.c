/* SPDX-License-Identifier: MIT */
/*
 * vmsnap clone: N VMs from one image, each in a process of its own. Every clone maps the
 * image's memory copy-on-write (pages shared through the page cache until a clone writes
 * them), writes its disks to overlays of its own, gets its own taps, MACs and VM generation
 * ID before its vCPUs run, and has its guest clock brought forward to now.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "migrate/migrate.h"
#include "snapshot/snapshot.h"
#include "tools/cli.h"
#include "util/json.h"
#include "util/log.h"
#include "util/parse.h"
#include "vmm/vm.h"

#define CLONE_MAX 1000
#define CLONE_TAP_MAX 15 /* IFNAMSIZ - 1 */

static void clone_usage(FILE *f)
{
	fprintf(f,
		"usage: vmsnap clone IMAGE --count N [OPTIONS]\n\n"
		"Start N VMs from one saved image, each in its own process, and return once every\n"
		"one runs. Memory is the image mapped copy-on-write (a clone's private memory is\n"
		"only what it writes); each clone's disks are new overlays on the image's frozen\n"
		"disks; each gets its own taps and MACs, a new VM generation ID before its vCPUs\n"
		"run, and its guest clock brought forward to now. The image is never changed.\n\n"
		"  --count N             number of clones, 1..%d\n"
		"  --dir DIR             where each clone's control socket (NAME.sock), console\n"
		"                        (NAME.console), log (NAME.log) and disk overlays go\n"
		"                        (default: IMAGE.clones)\n"
		"  --name PREFIX         clone names PREFIX0, PREFIX1, ... (default: clone)\n"
		"  --net-prefix PREFIX   taps PREFIX0, PREFIX1, ... (a second interface of clone i\n"
		"                        is PREFIXin1); required when the image has networks\n"
		"  --expect-write PCT    share of its RAM each clone is expected to write, for the\n"
		"                        up-front memory check (default 10)\n"
		"  --timeout SEC         give up on a clone not running after this (default 30)\n"
		"  --json                one JSON object on stdout\n"
		"  -q, --quiet           no table, only errors\n"
		"  -h, --help            this text\n\n"
		"Each clone runs until its guest powers off or it is told to quit through its\n"
		"control socket; 'vmsnap ps' lists them.\n"
		"Exit status: 0 all clones run, 1 an error (nothing started, or the clones that\n"
		"did start are stopped again), 2 on a command-line error.\n",
		CLONE_MAX);
}

struct clone {
	char name[64];
	char api[PATH_MAX], console[PATH_MAX], log[PATH_MAX];
	char ovl[VM_MAX_DISKS][PATH_MAX];
	const char *ovl_ptr[VM_MAX_DISKS];
	char tap[VM_MAX_NETS][CLONE_TAP_MAX + 1];
	struct vm_net_config nets[VM_MAX_NETS];
	pid_t pid;
	int fd;		 /* read end of the readiness pipe */
	bool ready;
	uint64_t ready_us;
	char info[256];	 /* what the child reported: "genid=... mac=..." */
};

/* snprintf that says whether it all fit. */
__attribute__((format(printf, 3, 4))) static bool fmt(char *buf, size_t len, const char *f, ...)
{
	va_list ap;
	va_start(ap, f);
	int n = vsnprintf(buf, len, f, ap);
	va_end(ap);
	return n >= 0 && (size_t)n < len;
}

static uint64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* /proc/meminfo's MemAvailable in bytes, or 0 if unknown. */
static uint64_t mem_available(void)
{
	FILE *f = fopen("/proc/meminfo", "re");
	char line[128];
	unsigned long long kb = 0;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return (uint64_t)kb * 1024u;
}

struct ready_arg {
	struct vm *vm;
	int fd;
};

/* In the child, from vm_run() once every vCPU thread exists: tell the parent it runs. */
static void tell_ready(void *p)
{
	struct ready_arg *a = p;
	char msg[256], gen[33];
	vm_generation_hex(a->vm, gen);
	int n = snprintf(msg, sizeof(msg), "R genid=%s", gen);
	ssize_t w = write(a->fd, msg, (size_t)n);
	(void)w;
	close(a->fd);
	a->fd = -1;
}

/* The child: become clone @c and run it; never returns. */
static void run_child(const char *image, struct clone *c, unsigned int ndisks,
		      unsigned int nnets, int wfd)
{
	setsid();
	signal(SIGINT, SIG_DFL);
	int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	int log = open(c->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (null >= 0)
		dup2(null, STDIN_FILENO);
	if (log >= 0) {
		dup2(log, STDOUT_FILENO);
		dup2(log, STDERR_FILENO);
	}
	struct snap_restore_opts ro = {
		.path = image,
		.mem_mode = SNAP_MEM_AUTO,
		.console = c->console,
		.api_path = c->api,
		.disk_overlays = c->ovl_ptr,
		.ndisk_overlays = ndisks,
		.nets = c->nets,
		.nnets = nnets,
		.nets_override = true,
		.new_macs = true,
		.clock_to_now = true,
	};
	struct snap_restore *sr;
	struct snap_restore_stats st;
	if (snap_restore(&ro, &sr, &st))
		_exit(EXIT_FAIL); /* logged to the clone's log; the parent sees the pipe close */
	struct vm *vm = snap_restore_vm(sr);
	if (cli_vm_commands(vm)) {
		snap_restore_free(sr);
		_exit(EXIT_FAIL);
	}
	log_info("%s: restored from %s in %.2f ms", c->name, image, st.total_us / 1000.0);
	/* A VM that ends before it runs never writes: the parent sees the pipe close. */
	struct ready_arg ra = { vm, wfd };
	if (vm_on_running(vm, tell_ready, &ra, false)) {
		snap_restore_free(sr);
		_exit(EXIT_FAIL);
	}
	cli_registry_add(vm, "clone", c->name, c->api, image);
	int status = cli_run_vm(vm);
	cli_registry_remove();
	if (ra.fd >= 0)
		close(ra.fd);
	mig_api_shutdown(vm);
	snap_restore_free(sr);
	_exit(status);
}

/* The last line of a clone's log: why it failed. */
static void last_line(const char *path, char *out, size_t len)
{
	FILE *f = fopen(path, "re");
	char line[512];
	out[0] = 0;
	while (f && fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = 0;
		if (line[0])
			snprintf(out, len, "%s", line);
	}
	if (f)
		fclose(f);
}

int cmd_clone(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "count", required_argument, NULL, 'n' },
		{ "dir", required_argument, NULL, 'd' },
		{ "api-dir", required_argument, NULL, 'd' },
		{ "name", required_argument, NULL, 'N' },
		{ "net-prefix", required_argument, NULL, 'p' },
		{ "expect-write", required_argument, NULL, 'w' },
		{ "timeout", required_argument, NULL, 't' },
		{ "json", no_argument, NULL, 'j' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	uint64_t count = 0, expect = 10, timeout_s = 30;
	const char *dir = NULL, *name = "clone", *net_prefix = NULL;
	bool json = false, quiet = false;
	int verbose = 0, c;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":qvh", opts, NULL)) != -1) {
		switch (c) {
		case 'd': dir = optarg; break;
		case 'N': name = optarg; break;
		case 'p': net_prefix = optarg; break;
		case 'j': json = true; break;
		case 'q': quiet = true; break;
		case 'v': verbose++; break;
		case 'h': clone_usage(stdout); return EXIT_OK;
		case 'n':
			if (parse_uint(optarg, 1, CLONE_MAX, &count))
				return cli_usage_error("clone", "--count '%s' must be 1..%d", optarg,
						       CLONE_MAX);
			break;
		case 'w':
			if (parse_uint(optarg, 0, 100, &expect))
				return cli_usage_error("clone", "--expect-write '%s' must be 0..100",
						       optarg);
			break;
		case 't':
			if (parse_uint(optarg, 1, 3600, &timeout_s))
				return cli_usage_error("clone", "--timeout '%s' must be 1..3600 s",
						       optarg);
			break;
		case ':':
			return cli_usage_error("clone", "option '%s' needs a value", argv[optind - 1]);
		default: return cli_usage_error("clone", "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return cli_usage_error("clone", "IMAGE is required");
	if (argc - optind > 1)
		return cli_usage_error("clone", "unexpected argument '%s'", argv[optind + 1]);
	if (!count)
		return cli_usage_error("clone", "--count N is required");
	if (!*name || strchr(name, '/'))
		return cli_usage_error("clone", "--name must be a plain name");
	const char *image = argv[optind];
	log_set_level(verbose >= 2 ? LOG_DEBUG : verbose ? LOG_INFO : LOG_WARN);

	/* Everything that can be checked once is checked before any clone starts. */
	struct snap_restore *none;
	struct snap_restore_stats st;
	struct snap_restore_opts pre = { .path = image, .dry_run = true };
	if (snap_restore(&pre, &none, &st))
		return EXIT_FAIL; /* logged */
	if (st.nnets && !net_prefix) {
		log_err("%s has %u network interface%s: give --net-prefix so every clone gets taps "
			"of its own",
			image, st.nnets, st.nnets == 1 ? "" : "s");
		return EXIT_FAIL;
	}
	if (net_prefix) {
		char longest[64];
		snprintf(longest, sizeof(longest), "%s%llun%u", net_prefix,
			 (unsigned long long)(count - 1), st.nnets > 1 ? st.nnets - 1 : 0);
		size_t need = strlen(longest) - (st.nnets > 1 ? 0 : 2);
		if (need > CLONE_TAP_MAX) {
			log_err("--net-prefix '%s': tap names would be up to %zu characters, "
				"Linux allows %d",
				net_prefix, need, CLONE_TAP_MAX);
			return EXIT_FAIL;
		}
	}
	uint64_t per = st.ram_size / 100 * expect + (8ull << 20); /* + the VMM's own */
	uint64_t avail = mem_available();
	if (avail && per * count > avail) {
		log_err("%llu clones of a %llu MiB VM, each expected to write %llu%% of its RAM, "
			"need about %llu MiB; this host has %llu MiB available (at most %llu clones; "
			"or lower --expect-write)",
			(unsigned long long)count, (unsigned long long)(st.ram_size >> 20),
			(unsigned long long)expect, (unsigned long long)((per * count) >> 20),
			(unsigned long long)(avail >> 20), (unsigned long long)(avail / per));
		return EXIT_FAIL;
	}

	char defdir[PATH_MAX];
	if (!dir) {
		snprintf(defdir, sizeof(defdir), "%s.clones", image);
		dir = defdir;
	}
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		log_err("cannot create %s: %s", dir, strerror(errno));
		return EXIT_FAIL;
	}
	struct clone *cl = calloc(count, sizeof(*cl));
	if (!cl)
		return EXIT_FAIL;
	fflush(NULL);
	uint64_t t0 = now_us();
	unsigned int started = 0;
	int status = EXIT_OK;
	for (uint64_t i = 0; i < count; i++) {
		struct clone *k = &cl[i];
		bool fits = fmt(k->name, sizeof(k->name), "%s%llu", name, (unsigned long long)i) &&
			    fmt(k->api, sizeof(k->api), "%s/%s.sock", dir, k->name) &&
			    fmt(k->console, sizeof(k->console), "%s/%s.console", dir, k->name) &&
			    fmt(k->log, sizeof(k->log), "%s/%s.log", dir, k->name);
		for (unsigned int d = 0; d < st.ndisks && fits; d++) {
			fits = fmt(k->ovl[d], sizeof(k->ovl[d]), "%s/%s.disk%u.ovl", dir, k->name, d);
			unlink(k->ovl[d]); /* a clone of that name before: start from the image */
			k->ovl_ptr[d] = k->ovl[d];
		}
		for (unsigned int n = 0; n < st.nnets && fits; n++) {
			if (n)
				fits = fmt(k->tap[n], sizeof(k->tap[n]), "%s%llun%u", net_prefix,
					   (unsigned long long)i, n);
			else
				fits = fmt(k->tap[n], sizeof(k->tap[n]), "%s%llu", net_prefix,
					   (unsigned long long)i);
			k->nets[n].tap = k->tap[n];
		}
		if (!fits) {
			log_err("--dir, --name or --net-prefix too long for clone %llu's file or tap "
				"names",
				(unsigned long long)i);
			status = EXIT_FAIL;
			break;
		}
		int p[2];
		if (pipe2(p, O_CLOEXEC) < 0) {
			log_errno("pipe");
			status = EXIT_FAIL;
			break;
		}
		k->pid = fork();
		if (k->pid < 0) {
			log_errno("fork");
			close(p[0]);
			close(p[1]);
			status = EXIT_FAIL;
			break;
		}
		if (k->pid == 0) {
			close(p[0]);
			for (uint64_t j = 0; j < i; j++)
				close(cl[j].fd);
			run_child(image, k, st.ndisks, st.nnets, p[1]);
		}
		close(p[1]);
		k->fd = p[0];
		started++;
	}

	/* Wait for every clone to say it runs; a closed pipe without a word is a failure. */
	unsigned int waiting = started, ok = 0;
	uint64_t deadline = t0 + timeout_s * 1000000u;
	struct pollfd *pf = calloc(started ? started : 1, sizeof(*pf));
	while (pf && waiting && now_us() < deadline) {
		for (unsigned int i = 0; i < started; i++)
			pf[i] = (struct pollfd){ .fd = cl[i].fd, .events = POLLIN };
		int n = poll(pf, started, (int)((deadline - now_us()) / 1000 + 1));
		if (n < 0 && errno != EINTR)
			break;
		for (unsigned int i = 0; i < started && n > 0; i++) {
			if (!pf[i].revents || cl[i].fd < 0)
				continue;
			ssize_t r = read(cl[i].fd, cl[i].info, sizeof(cl[i].info) - 1);
			if (r > 0 && cl[i].info[0] == 'R') {
				cl[i].info[r] = 0;
				cl[i].ready = true;
				cl[i].ready_us = now_us() - t0;
				ok++;
			}
			close(cl[i].fd);
			cl[i].fd = -1;
			waiting--;
		}
	}
	free(pf);
	uint64_t total_us = now_us() - t0;
	for (unsigned int i = 0; i < started; i++) {
		if (cl[i].fd >= 0)
			close(cl[i].fd);
		if (!cl[i].ready) {
			char why[512];
			last_line(cl[i].log, why, sizeof(why));
			log_err("%s (pid %d) did not start: %s", cl[i].name, (int)cl[i].pid,
				why[0] ? why : "no reason logged (timeout)");
			status = EXIT_FAIL;
		}
	}
	if (status != EXIT_OK) {
		/* All or nothing: stop the clones that did start. */
		for (unsigned int i = 0; i < started; i++)
			kill(cl[i].pid, SIGTERM);
		for (unsigned int i = 0; i < started; i++)
			waitpid(cl[i].pid, NULL, 0);
		free(cl);
		return EXIT_FAIL;
	}
	if (json) {
		struct jw w;
		jw_init(&w, 1u << 24);
		jw_obj_begin(&w);
		jw_kv_str(&w, "image", image);
		jw_kv_u64(&w, "count", ok);
		jw_kv_u64(&w, "total_us", total_us);
		jw_key(&w, "clones");
		jw_arr_begin(&w);
		for (unsigned int i = 0; i < started; i++) {
			jw_obj_begin(&w);
			jw_kv_str(&w, "name", cl[i].name);
			jw_kv_u64(&w, "pid", (uint64_t)cl[i].pid);
			jw_kv_str(&w, "api", cl[i].api);
			jw_kv_str(&w, "console", cl[i].console);
			jw_kv_u64(&w, "ready_us", cl[i].ready_us);
			const char *g = strstr(cl[i].info, "genid=");
			jw_kv_str(&w, "genid", g ? g + 6 : "");
			jw_key(&w, "taps");
			jw_arr_begin(&w);
			for (unsigned int n = 0; n < st.nnets; n++)
				jw_str(&w, cl[i].tap[n]);
			jw_arr_end(&w);
			jw_obj_end(&w);
		}
		jw_arr_end(&w);
		jw_obj_end(&w);
		printf("%s\n", jw_cstr(&w));
		jw_free(&w);
	} else if (!quiet) {
		for (unsigned int i = 0; i < started; i++)
			printf("%-12s pid %-8d running after %7.2f ms  %s  %s\n", cl[i].name,
			       (int)cl[i].pid, cl[i].ready_us / 1000.0, cl[i].api, cl[i].info + 2);
		printf("%u clones of %s running in %.1f ms\n", ok, image, total_us / 1000.0);
	}
	free(cl);
	return EXIT_OK;
}
