/* SPDX-License-Identifier: MIT */
/* vmsnap ps: list the running VMs of this host (tools/registry.c). */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tools/cli.h"
#include "util/json.h"
#include "vmm/api.h"

static void ps_usage(FILE *f)
{
	fprintf(f,
		"usage: vmsnap ps [--json]\n\n"
		"List the VMs running on this host (started by run, restore, receive or clone):\n"
		"pid, name, how it was started, state and uptime (from its control socket, if it\n"
		"has one), guest RAM, the host memory only it uses (private: pages it wrote,\n"
		"not shared with its image or other clones) and its proportional share (PSS),\n"
		"the control socket and the image it came from.\n\n"
		"  --json       one JSON object on stdout: {\"vms\":[...]}\n"
		"  -h, --help   this text\n\n"
		"Registry: $VMSNAP_RUN_DIR, else /run/vmsnap (root), else $XDG_RUNTIME_DIR/vmsnap.\n"
		"Exit status: 0 listed (also when none run), 2 on a command-line error.\n");
}

struct ps_row {
	uint64_t pid, started_ms, uptime_ms, mem_bytes, private_kb, pss_kb;
	char kind[16], name[64], state[16], api[PATH_MAX], image[PATH_MAX];
};

/* Private_Clean + Private_Dirty and Pss of @pid, in KiB (smaps_rollup). */
static void mem_of(uint64_t pid, struct ps_row *r)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%llu/smaps_rollup", (unsigned long long)pid);
	FILE *f = fopen(path, "re");
	if (!f)
		return;
	unsigned long long v;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "Private_Clean: %llu", &v) == 1 ||
		    sscanf(line, "Private_Dirty: %llu", &v) == 1)
			r->private_kb += v;
		else if (sscanf(line, "Pss: %llu", &v) == 1)
			r->pss_kb = v;
	}
	fclose(f);
}

static bool is_vmsnap(uint64_t pid)
{
	char path[64], exe[PATH_MAX];
	snprintf(path, sizeof(path), "/proc/%llu/exe", (unsigned long long)pid);
	ssize_t n = readlink(path, exe, sizeof(exe) - 1);
	if (n <= 0)
		return false;
	exe[n] = 0;
	const char *b = strrchr(exe, '/');
	return b && !strncmp(b + 1, "vmsnap", 6);
}

static void status_of(struct ps_row *r)
{
	char reply[4096];
	snprintf(r->state, sizeof(r->state), "%s", "-");
	if (!r->api[0] ||
	    api_request(r->api, "{\"v\":1,\"cmd\":\"status\"}", reply, sizeof(reply), 1000))
		return;
	struct json_doc doc;
	struct json_error e;
	if (json_parse(&doc, reply, strlen(reply), NULL, &e))
		return;
	const char *st = NULL;
	if (!json_get_string(doc.root, "state", &st))
		snprintf(r->state, sizeof(r->state), "%s", st);
	json_get_u64(doc.root, "uptime_ms", &r->uptime_ms);
	json_get_u64(doc.root, "mem_bytes", &r->mem_bytes);
	json_doc_free(&doc);
}

static bool read_entry(const char *dir, const char *fname, struct ps_row *r)
{
	char path[PATH_MAX], buf[8192];
	snprintf(path, sizeof(path), "%s/%s", dir, fname);
	FILE *f = fopen(path, "re");
	if (!f)
		return false;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	struct json_doc doc;
	struct json_error e;
	if (json_parse(&doc, buf, n, NULL, &e))
		return false;
	const char *s;
	memset(r, 0, sizeof(*r));
	bool ok = !json_get_u64(doc.root, "pid", &r->pid);
	json_get_u64(doc.root, "started_ms", &r->started_ms);
	if (!json_get_string(doc.root, "kind", &s))
		snprintf(r->kind, sizeof(r->kind), "%s", s);
	if (!json_get_string(doc.root, "name", &s))
		snprintf(r->name, sizeof(r->name), "%s", s);
	if (!json_get_string(doc.root, "api", &s))
		snprintf(r->api, sizeof(r->api), "%s", s);
	if (!json_get_string(doc.root, "image", &s))
		snprintf(r->image, sizeof(r->image), "%s", s);
	json_doc_free(&doc);
	if (!ok || r->pid == 0 || kill((pid_t)r->pid, 0) < 0 || !is_vmsnap(r->pid)) {
		unlink(path); /* stale: its process is gone */
		return false;
	}
	return true;
}

static int by_pid(const void *a, const void *b)
{
	const struct ps_row *x = a, *y = b;
	return x->pid < y->pid ? -1 : x->pid > y->pid;
}

int cmd_ps(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	bool json = false;
	int c;
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 'j': json = true; break;
		case 'h': ps_usage(stdout); return EXIT_OK;
		default: return cli_usage_error("ps", "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return cli_usage_error("ps", "unexpected argument '%s'", argv[optind]);

	const char *dir = cli_registry_dir();
	struct ps_row *rows = NULL;
	size_t n = 0, cap = 0;
	DIR *d = opendir(dir);
	struct dirent *de;
	while (d && (de = readdir(d))) {
		size_t l = strlen(de->d_name);
		if (l < 6 || strcmp(de->d_name + l - 5, ".json"))
			continue;
		if (n == cap) {
			cap = cap ? 2 * cap : 64;
			struct ps_row *nr = realloc(rows, cap * sizeof(*rows));
			if (!nr)
				break;
			rows = nr;
		}
		if (read_entry(dir, de->d_name, &rows[n]))
			n++;
	}
	if (d)
		closedir(d);
	qsort(rows, n, sizeof(*rows), by_pid);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	uint64_t now_ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
	for (size_t i = 0; i < n; i++) {
		status_of(&rows[i]);
		mem_of(rows[i].pid, &rows[i]);
		if (!rows[i].uptime_ms && now_ms > rows[i].started_ms)
			rows[i].uptime_ms = now_ms - rows[i].started_ms;
	}
	if (json) {
		struct jw w;
		jw_init(&w, 1u << 24);
		jw_obj_begin(&w);
		jw_key(&w, "vms");
		jw_arr_begin(&w);
		for (size_t i = 0; i < n; i++) {
			const struct ps_row *r = &rows[i];
			jw_obj_begin(&w);
			jw_kv_u64(&w, "pid", r->pid);
			jw_kv_str(&w, "name", r->name);
			jw_kv_str(&w, "kind", r->kind);
			jw_kv_str(&w, "state", r->state);
			jw_kv_u64(&w, "uptime_ms", r->uptime_ms);
			jw_kv_u64(&w, "mem_bytes", r->mem_bytes);
			jw_kv_u64(&w, "private_bytes", r->private_kb * 1024);
			jw_kv_u64(&w, "pss_bytes", r->pss_kb * 1024);
			jw_kv_str(&w, "api", r->api);
			jw_kv_str(&w, "image", r->image);
			jw_obj_end(&w);
		}
		jw_arr_end(&w);
		jw_obj_end(&w);
		printf("%s\n", jw_cstr(&w));
		jw_free(&w);
	} else {
		printf("%-8s %-14s %-8s %-8s %10s %8s %10s %10s  %s\n", "PID", "NAME", "KIND", "STATE",
		       "UPTIME", "RAM", "PRIVATE", "PSS", "API / IMAGE");
		for (size_t i = 0; i < n; i++) {
			const struct ps_row *r = &rows[i];
			char up[32];
			snprintf(up, sizeof(up), "%.1fs", r->uptime_ms / 1000.0);
			printf("%-8llu %-14s %-8s %-8s %10s %7lluM %9.1fM %9.1fM  %s%s%s\n",
			       (unsigned long long)r->pid, r->name[0] ? r->name : "-", r->kind, r->state,
			       up, (unsigned long long)(r->mem_bytes >> 20), r->private_kb / 1024.0,
			       r->pss_kb / 1024.0, r->api[0] ? r->api : "-", r->image[0] ? " " : "",
			       r->image);
		}
	}
	free(rows);
	return EXIT_OK;
}
