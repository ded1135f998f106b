/* SPDX-License-Identifier: MIT */
/* vmsnap save: ask a running VM to save itself to an image, showing progress. */
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "tools/cli.h"
#include "util/json.h"
#include "vmm/api.h"

static void save_usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: vmsnap save --api SOCKET IMAGE [--stop] [--compress] [--live [--max-rounds N]\n"
	    "                  [--max-time S] [--pause-target-ms N]] [--track]\n"
	    "                  [--incremental [--parent PARENT]] [--json]\n\n"
	    "Save the VM serving the control socket SOCKET to the file IMAGE: the VM pauses,\n"
	    "its complete state and memory are written to a temporary file next to IMAGE, the\n"
	    "guest resumes, and the file is made durable (fsync) and renamed over IMAGE. If\n"
	    "anything fails, an existing IMAGE is left as it was and the VM keeps running.\n\n"
	    "  --api SOCKET        the VM's control socket (required)\n"
	    "  --stop              suspend to disk: end the VM once IMAGE is durable\n"
	    "  --compress          LZ4-compress memory (smaller; restores read it eagerly)\n"
	    "  --live              write memory while the guest runs (rounds of the pages it\n"
	    "                      dirtied), pause it only for the last round and its state\n"
	    "  --max-rounds N      live: at most N rounds after the full pass (default 30)\n"
	    "  --max-time S        live: at most S seconds of pre-copy (default 60); past a\n"
	    "                      bound the guest is paused anyway and the result says so\n"
	    "  --pause-target-ms N live: stop iterating when the last round is expected to\n"
	    "                      take under N ms (default 10)\n"
	    "  --track             keep tracking the pages the guest writes after this image,\n"
	    "                      for later --incremental saves (dirty logging stays on)\n"
	    "  --incremental       store only the pages written since the tracked image (the\n"
	    "                      last --track or --incremental save); restores as a chain\n"
	    "  --parent PARENT     that image, checked by SHA-256 (default: where it was saved)\n"
	    "  --json              print the result as one JSON object\n"
	    "  -h, --help          this text\n\n"
	    "Progress is shown on stderr when it is a terminal. Exit status: 0 saved, 1 not\n"
	    "saved (the reason is printed), 2 on a command-line error.\n");
}

/* A connection to the control socket reading one line at a time. */
struct conn {
	int fd;
	char buf[API_MAX_REPLY + 2];
	size_t len;
};

static int conn_open(struct conn *c, const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	c->len = 0;
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return -errno;
	if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = -errno;
		close(c->fd);
		c->fd = -1;
		return e;
	}
	return 0;
}

static int conn_send(struct conn *c, const char *line)
{
	size_t n = strlen(line), off = 0;
	while (off < n) {
		ssize_t w = send(c->fd, line + off, n - off, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		off += (size_t)w;
	}
	return 0;
}

/* Next line (NUL-terminated, without newline) into *@line; -EPROTO when the peer closed. */
static int conn_line(struct conn *c, char **line)
{
	static size_t consumed;
	if (consumed) {
		memmove(c->buf, c->buf + consumed, c->len - consumed);
		c->len -= consumed;
		consumed = 0;
	}
	for (;;) {
		char *nl = memchr(c->buf, '\n', c->len);
		if (nl) {
			*nl = 0;
			*line = c->buf;
			consumed = (size_t)(nl - c->buf) + 1;
			return 0;
		}
		if (c->len >= sizeof(c->buf) - 1)
			return -EMSGSIZE;
		ssize_t n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -EPROTO;
		c->len += (size_t)n;
	}
}

static const char *conn_error(int r)
{
	switch (r) {
	case -ENOENT: return "no control socket there";
	case -ECONNREFUSED: return "nothing is serving it (stale socket)";
	case -EPROTO: return "the VM closed the connection before answering (did it die?)";
	case -ENAMETOOLONG: return "socket path too long";
	default: return strerror(-r);
	}
}

/* An absolute path for IMAGE: the VM resolves paths against its own working directory. */
static char *absolute_image_path(const char *image)
{
	char *d = strdup(image), *b = strdup(image), *out = NULL;
	char dir[PATH_MAX];
	if (d && b && realpath(dirname(d), dir)) {
		const char *base = basename(b);
		size_t n = strlen(dir) + strlen(base) + 2;
		out = malloc(n);
		if (out)
			snprintf(out, n, "%s/%s", strcmp(dir, "/") ? dir : "", base);
	}
	free(d);
	free(b);
	return out;
}

static void print_result(const struct json_value *root)
{
	uint64_t fsz = 0, wr = 0, pt = 0, pd = 0, pz = 0, pl = 0, lb = 0;
	double pause = 0, total = 0;
	const char *sha = "", *path = "", *state = "";
	json_get_u64(root, "file_size", &fsz);
	json_get_u64(root, "bytes_written", &wr);
	json_get_u64(root, "pages_total", &pt);
	json_get_u64(root, "pages_data", &pd);
	json_get_u64(root, "pages_zero", &pz);
	json_get_u64(root, "pages_lz4", &pl);
	json_get_u64(root, "lz4_bytes", &lb);
	json_get_double(root, "pause_ms", &pause);
	json_get_double(root, "total_ms", &total);
	json_get_string(root, "sha256", &sha);
	json_get_string(root, "path", &path);
	json_get_string(root, "state", &state);
	printf("saved %s (VM %s)\n", path, state);
	printf("  pause %.1f ms, durable after %.1f ms\n", pause, total);
	bool live = false, conv = false, tracking = false;
	json_get_bool(root, "live", &live);
	if (live) {
		uint64_t rounds = 0, pre = 0, fin = 0;
		double pre_ms = 0;
		const char *note = NULL;
		json_get_u64(root, "rounds", &rounds);
		json_get_u64(root, "precopy_pages", &pre);
		json_get_u64(root, "final_pages", &fin);
		json_get_double(root, "precopy_ms", &pre_ms);
		json_get_bool(root, "converged", &conv);
		printf(
		    "  live: %llu rounds in %.1f ms (%llu pages while running), %llu pages in the "
		    "pause%s\n",
		    (unsigned long long)rounds, pre_ms, (unsigned long long)pre,
		    (unsigned long long)fin, conv ? "" : "; did not converge");
		if (!json_get_string(root, "note", &note))
			printf("  note: %s\n", note);
	}
	const char *parent = NULL;
	if (!json_get_string(root, "parent", &parent)) {
		uint64_t pp = 0;
		json_get_u64(root, "pages_parent", &pp);
		printf("  incremental: parent %s, %llu pages left to it\n", parent,
		       (unsigned long long)pp);
	}
	json_get_bool(root, "tracking", &tracking);
	if (tracking)
		printf("  tracking the pages written since this image\n");
	printf("  %.1f MiB written, image %.1f MiB apparent\n", wr / 1048576.0, fsz / 1048576.0);
	printf("  pages: %llu total, %llu stored raw, %llu lz4 (%.1f MiB), %llu zero (holes)\n",
	       (unsigned long long)pt, (unsigned long long)pd, (unsigned long long)pl,
	       lb / 1048576.0, (unsigned long long)pz);
	printf("  sha256 %s\n", sha);
}

int cmd_save(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"api", required_argument, NULL, 'a'},
	    {"stop", no_argument, NULL, 's'},
	    {"compress", no_argument, NULL, 'c'},
	    {"json", no_argument, NULL, 'j'},
	    {"live", no_argument, NULL, 'L'},
	    {"max-rounds", required_argument, NULL, 'R'},
	    {"max-time", required_argument, NULL, 'T'},
	    {"pause-target-ms", required_argument, NULL, 'P'},
	    {"track", no_argument, NULL, 't'},
	    {"incremental", no_argument, NULL, 'i'},
	    {"parent", required_argument, NULL, 'p'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *api = NULL, *parent_arg = NULL;
	bool stop = false, compress = false, json = false, live = false, track = false,
	     incremental = false;
	long max_rounds = -1, max_time = -1, pause_target = -1;
	int c;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 'a': api = optarg; break;
		case 's': stop = true; break;
		case 'c': compress = true; break;
		case 'j': json = true; break;
		case 'L': live = true; break;
		case 't': track = true; break;
		case 'i': incremental = true; break;
		case 'p': parent_arg = optarg; break;
		case 'R':
		case 'T':
		case 'P': {
			char *end;
			long v = strtol(optarg, &end, 10);
			if (*end || v < 1 || v > (c == 'R' ? 1000 : c == 'T' ? 3600 : 60000))
				return cli_usage_error("save", "%s '%s' is not a valid number",
						       c == 'R'	  ? "--max-rounds"
						       : c == 'T' ? "--max-time"
								  : "--pause-target-ms",
						       optarg);
			*(c == 'R' ? &max_rounds : c == 'T' ? &max_time : &pause_target) = v;
			break;
		}
		case 'h': save_usage(stdout); return EXIT_OK;
		case ':':
			return cli_usage_error("save", "option '%s' needs a value",
					       argv[optind - 1]);
		default: return cli_usage_error("save", "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (!api)
		return cli_usage_error("save", "--api SOCKET is required");
	if (optind >= argc)
		return cli_usage_error("save", "IMAGE is required");
	if (argc - optind > 1)
		return cli_usage_error("save", "unexpected argument '%s'", argv[optind + 1]);
	if (!live && (max_rounds > 0 || max_time > 0 || pause_target > 0))
		return cli_usage_error("save", "--max-rounds, --max-time and --pause-target-ms are "
					       "for --live");
	if (parent_arg && !incremental)
		return cli_usage_error("save", "--parent is for --incremental");
	if (live && compress)
		return cli_usage_error("save", "--live cannot be combined with --compress");
	char *parent = NULL;
	if (parent_arg && !(parent = absolute_image_path(parent_arg))) {
		fprintf(stderr, "vmsnap save: %s: directory does not exist or is not accessible\n",
			parent_arg);
		return EXIT_FAIL;
	}
	char *path = absolute_image_path(argv[optind]);
	if (!path) {
		fprintf(stderr, "vmsnap save: %s: directory does not exist or is not accessible\n",
			argv[optind]);
		free(parent);
		return EXIT_FAIL;
	}

	struct conn *cn = malloc(sizeof(*cn));
	struct jw req;
	int status = EXIT_FAIL, r;
	bool progress = isatty(STDERR_FILENO) && !json, progress_shown = false;
	char *line;

	jw_init(&req, API_MAX_LINE);
	if (!cn) {
		free(path);
		free(parent);
		return EXIT_FAIL;
	}
	cn->fd = -1;
	r = conn_open(cn, api);
	if (r) {
		fprintf(stderr, "vmsnap save: %s: %s\n", api, conn_error(r));
		goto out;
	}
	if (progress) {
		r = conn_send(cn, "{\"v\":1,\"cmd\":\"subscribe\"}\n");
		if (!r)
			r = conn_line(cn, &line);
		if (r) {
			fprintf(stderr, "vmsnap save: %s: %s\n", api, conn_error(r));
			goto out;
		}
	}
	jw_obj_begin(&req);
	jw_kv_u64(&req, "v", API_PROTO_VERSION);
	jw_kv_str(&req, "cmd", "save");
	jw_kv_str(&req, "path", path);
	if (stop)
		jw_kv_bool(&req, "stop", true);
	if (compress)
		jw_kv_bool(&req, "compress", true);
	if (live)
		jw_kv_bool(&req, "live", true);
	if (max_rounds > 0)
		jw_kv_u64(&req, "max_rounds", (uint64_t)max_rounds);
	if (max_time > 0)
		jw_kv_u64(&req, "max_time_ms", (uint64_t)max_time * 1000);
	if (pause_target > 0)
		jw_kv_u64(&req, "pause_target_ms", (uint64_t)pause_target);
	if (track)
		jw_kv_bool(&req, "track", true);
	if (incremental)
		jw_kv_bool(&req, "incremental", true);
	if (parent)
		jw_kv_str(&req, "parent", parent);
	jw_obj_end(&req);
	if (jw_error(&req)) {
		fprintf(stderr, "vmsnap save: image path too long\n");
		goto out;
	}
	char reqline[API_MAX_LINE + 2];
	snprintf(reqline, sizeof(reqline), "%s\n", jw_cstr(&req));
	r = conn_send(cn, reqline);
	if (r) {
		fprintf(stderr, "vmsnap save: %s: %s\n", api, conn_error(r));
		goto out;
	}
	for (;;) {
		r = conn_line(cn, &line);
		if (r) {
			if (progress_shown)
				fputc('\n', stderr);
			fprintf(stderr, "vmsnap save: %s: %s\n", api, conn_error(r));
			goto out;
		}
		struct json_doc doc;
		struct json_error jerr;
		if (json_parse(&doc, line, strlen(line), NULL, &jerr)) {
			fprintf(stderr, "vmsnap save: malformed reply from the VM: %s\n", jerr.msg);
			goto out;
		}
		const char *ev;
		if (json_get_string(doc.root, "event", &ev) == 0) {
			uint64_t done = 0, total = 0;
			if (progress && !strcmp(ev, "save-progress") &&
			    !json_get_u64(doc.root, "pages_done", &done) &&
			    !json_get_u64(doc.root, "pages_total", &total) && total) {
				fprintf(stderr, "\rsaving %s: %3u%% (%llu/%llu MiB)", argv[optind],
					(unsigned int)(done * 100 / total),
					(unsigned long long)(done >> 8),
					(unsigned long long)(total >> 8));
				progress_shown = true;
			}
			uint64_t round = 0, pages = 0, dirty = 0;
			if (progress && !strcmp(ev, "save-round") &&
			    !json_get_u64(doc.root, "round", &round) &&
			    !json_get_u64(doc.root, "pages", &pages) &&
			    !json_get_u64(doc.root, "dirty", &dirty)) {
				fprintf(stderr,
					"\rsaving %s: round %llu wrote %llu pages, %llu dirty   ",
					argv[optind], (unsigned long long)round,
					(unsigned long long)pages, (unsigned long long)dirty);
				progress_shown = true;
			}
			json_doc_free(&doc);
			continue;
		}
		if (progress_shown)
			fputc('\n', stderr);
		bool ok = false;
		json_get_bool(doc.root, "ok", &ok);
		if (!ok) {
			const char *msg = "unknown error";
			json_get_string(doc.root, "error", &msg);
			fprintf(stderr, "vmsnap save: %s\n", msg);
		} else if (json) {
			struct jw out;
			jw_init(&out, 0);
			jw_obj_begin(&out);
			for (const struct json_value *m = doc.root->u.list.first; m; m = m->next) {
				if (!strcmp(m->key, "v") || !strcmp(m->key, "ok"))
					continue;
				jw_key(&out, m->key);
				jw_value(&out, m);
			}
			jw_obj_end(&out);
			printf("%s\n", jw_error(&out) ? "{}" : jw_cstr(&out));
			jw_free(&out);
			status = EXIT_OK;
		} else {
			print_result(doc.root);
			status = EXIT_OK;
		}
		json_doc_free(&doc);
		break;
	}
out:
	if (cn->fd >= 0)
		close(cn->fd);
	jw_free(&req);
	free(cn);
	free(path);
	free(parent);
	return status;
}
