/* SPDX-License-Identifier: MIT */
/* vmsnap migrate: ask a running VM (through its control socket) to live-migrate, and watch. */
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
#include "util/parse.h"
#include "vmm/api.h"

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
	(void)sig;
	interrupted = 1;
}

static void migrate_usage(FILE *f)
{
	fprintf(f,
		"usage: vmsnap migrate --api SOCKET --to HOST:PORT [OPTIONS]\n\n"
		"Live-migrate the VM serving the control socket SOCKET to a 'vmsnap receive' at\n"
		"HOST:PORT: copy its memory while it runs, then pause it, send the rest and its\n"
		"state, and end it once the destination confirms that the guest runs there. On any\n"
		"failure before that confirmation the guest keeps running here.\n\n"
		"  --api SOCKET          control socket of the source VM\n"
		"  --to HOST:PORT        the destination\n"
		"  --downtime-ms N       target for the pause (default 100)\n"
		"  --bandwidth MBPS      cap the pre-copy at MBPS megabytes/s (default: no cap)\n"
		"  --max-time S          stop iterating after S seconds and copy the rest paused,\n"
		"                        reporting the overshoot (default 600)\n"
		"  --compress on|off|auto  LZ4 per 1 MiB run (auto: back off when it does not pay)\n"
		"  --dirty-log manual|legacy  KVM dirty-log mechanism (default manual)\n"
		"  --tls-cert FILE --tls-key FILE --tls-ca FILE  TLS 1.3 with mutual verification\n"
		"  --json                print the final figures as one JSON object\n"
		"  -q, --quiet           no progress lines\n"
		"  -h, --help            this text\n\n"
		"Ctrl-C cancels the migration (the guest stays here). Exit status: 0 when the guest\n"
		"runs on the destination, 1 when the migration failed or was cancelled, 2 on a\n"
		"command-line error.\n");
}

static int request(const char *api, const char *line, char *reply, size_t size,
		   struct json_doc *doc)
{
	int r = api_request(api, line, reply, size, 30000);
	if (r)
		return r;
	struct json_error jerr;
	if (json_parse(doc, reply, strlen(reply), NULL, &jerr))
		return -EPROTO;
	return 0;
}

static double num(const struct json_value *o, const char *k)
{
	double d = 0;
	json_get_double(o, k, &d);
	return d;
}

static void print_final(const struct json_value *o)
{
	const char *state = "?", *s;
	json_get_string(o, "state", &state);
	printf("migration %s", state);
	if (!json_get_string(o, "to", &s))
		printf(" to %s", s);
	if (!json_get_string(o, "transport", &s))
		printf(" over %s", s);
	printf("\n");
	printf("  total time     %.1f ms (setup %.1f ms)\n", num(o, "total_ms") ?: num(o, "elapsed_ms"),
	       num(o, "setup_ms"));
	printf("  downtime       %.2f ms (target %.0f ms; pause to state sent %.2f ms, destination "
	       "load %.2f ms)\n",
	       num(o, "downtime_ms"), num(o, "downtime_target_ms"), num(o, "pause_to_state_sent_ms"),
	       num(o, "dest_load_ms"));
	printf("  rounds         %.0f (pages per round:", num(o, "round") + 1);
	const struct json_value *a = json_get(o, "pages_per_round");
	for (size_t i = 0; a && json_array_at(a, i); i++) {
		uint64_t v = 0;
		json_as_u64(json_array_at(a, i), &v);
		printf(" %llu", (unsigned long long)v);
	}
	printf("; final %.0f)\n", num(o, "final_pages"));
	printf("  bytes sent     %.0f (%.1f MiB); pages %.0f: %.0f zero, %.0f lz4, %.0f raw\n",
	       num(o, "bytes_sent"), num(o, "bytes_sent") / (1 << 20), num(o, "pages_sent"),
	       num(o, "pages_zero"), num(o, "pages_lz4"), num(o, "pages_data"));
	printf("  first pass     %.1f ms, %.0f MB/s of guest RAM; link %.0f MB/s\n",
	       num(o, "first_pass_ms"), num(o, "first_pass_mbps"), num(o, "bandwidth_mbps"));
	if (num(o, "throttle_pct") > 0)
		printf("  auto-converge  vCPUs throttled %.0f%%\n", num(o, "throttle_pct"));
	if (!json_get_string(o, "downtime_note", &s))
		printf("  note           %s\n", s);
	if (!json_get_string(o, "error", &s))
		printf("  error          %s\n", s);
}

int cmd_migrate(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "api", required_argument, NULL, 'a' },
		{ "to", required_argument, NULL, 'T' },
		{ "downtime-ms", required_argument, NULL, 'd' },
		{ "bandwidth", required_argument, NULL, 'b' },
		{ "max-time", required_argument, NULL, 'm' },
		{ "compress", required_argument, NULL, 'z' },
		{ "dirty-log", required_argument, NULL, 'D' },
		{ "tls-cert", required_argument, NULL, 'C' },
		{ "tls-key", required_argument, NULL, 'K' },
		{ "tls-ca", required_argument, NULL, 'A' },
		{ "json", no_argument, NULL, 'j' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *api = NULL, *to = NULL, *compress = NULL, *dirty_log = NULL;
	const char *tls[3] = { NULL, NULL, NULL };
	uint64_t downtime = 0, bandwidth = 0, max_time = 0;
	bool have_max = false, json = false, quiet = false;
	int c;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "+:qh", opts, NULL)) != -1) {
		switch (c) {
		case 'a': api = optarg; break;
		case 'T': to = optarg; break;
		case 'z': compress = optarg; break;
		case 'D': dirty_log = optarg; break;
		case 'C': tls[0] = optarg; break;
		case 'K': tls[1] = optarg; break;
		case 'A': tls[2] = optarg; break;
		case 'j': json = true; break;
		case 'q': quiet = true; break;
		case 'h': migrate_usage(stdout); return EXIT_OK;
		case 'd':
			if (parse_uint(optarg, 1, 600000, &downtime))
				return cli_usage_error("migrate", "--downtime-ms '%s' is not 1..600000",
						       optarg);
			break;
		case 'b':
			if (parse_uint(optarg, 1, 1000000, &bandwidth))
				return cli_usage_error("migrate", "--bandwidth '%s' is not 1..1000000 MB/s",
						       optarg);
			break;
		case 'm':
			if (parse_uint(optarg, 1, 86400, &max_time))
				return cli_usage_error("migrate", "--max-time '%s' is not 1..86400 s",
						       optarg);
			have_max = true;
			break;
		case ':':
			return cli_usage_error("migrate", "option '%s' needs a value",
					       argv[optind - 1]);
		default:
			return cli_usage_error("migrate", "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return cli_usage_error("migrate", "unexpected argument '%s'", argv[optind]);
	if (!api || !to)
		return cli_usage_error("migrate", "--api SOCKET and --to HOST:PORT are required");
	if ((tls[0] || tls[1] || tls[2]) && !(tls[0] && tls[1] && tls[2]))
		return cli_usage_error("migrate", "TLS needs --tls-cert, --tls-key and --tls-ca");

	struct jw req;
	jw_init(&req, API_MAX_LINE);
	jw_obj_begin(&req);
	jw_kv_u64(&req, "v", API_PROTO_VERSION);
	jw_kv_str(&req, "cmd", "migrate");
	jw_kv_str(&req, "to", to);
	if (downtime)
		jw_kv_u64(&req, "downtime_ms", downtime);
	if (bandwidth)
		jw_kv_u64(&req, "bandwidth_mbps", bandwidth);
	if (have_max)
		jw_kv_u64(&req, "max_time_s", max_time);
	if (compress)
		jw_kv_str(&req, "compress", compress);
	if (dirty_log)
		jw_kv_str(&req, "dirty_log", dirty_log);
	static const char *const tls_keys[3] = { "tls_cert", "tls_key", "tls_ca" };
	for (int i = 0; i < 3; i++) {
		if (!tls[i])
			continue;
		/* The VMM may run in another directory: send absolute paths. */
		char abs[PATH_MAX];
		if (!realpath(tls[i], abs)) {
			jw_free(&req);
			fprintf(stderr, "vmsnap migrate: %s: %s\n", tls[i], strerror(errno));
			return EXIT_FAIL;
		}
		jw_kv_str(&req, tls_keys[i], abs);
	}
	jw_obj_end(&req);
	if (jw_error(&req)) {
		jw_free(&req);
		fprintf(stderr, "vmsnap migrate: request too long\n");
		return EXIT_FAIL;
	}

	char *reply = malloc(API_MAX_REPLY + 1);
	if (!reply) {
		jw_free(&req);
		return EXIT_FAIL;
	}
	struct json_doc doc;
	int r = request(api, jw_cstr(&req), reply, API_MAX_REPLY + 1, &doc);
	jw_free(&req);
	if (r) {
		fprintf(stderr, "vmsnap migrate: %s: %s\n", api,
			r == -ENOENT ? "no control socket there" : strerror(-r));
		free(reply);
		return EXIT_FAIL;
	}
	bool ok = false;
	json_get_bool(doc.root, "ok", &ok);
	if (!ok) {
		const char *msg = "unknown error";
		json_get_string(doc.root, "error", &msg);
		fprintf(stderr, "vmsnap migrate: %s\n", msg);
		json_doc_free(&doc);
		free(reply);
		return EXIT_FAIL;
	}
	json_doc_free(&doc);

	struct sigaction sa = { .sa_handler = on_sigint };
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	bool cancel_sent = false, tty = isatty(STDERR_FILENO);
	int status = EXIT_FAIL;
	char last_state[32] = "setup";
	uint64_t last_round = UINT64_MAX;
	for (;;) {
		if (interrupted && !cancel_sent) {
			char cr[1024];
			api_request(api, "{\"v\":1,\"cmd\":\"migrate-cancel\"}", cr, sizeof(cr), 5000);
			cancel_sent = true;
			fprintf(stderr, "vmsnap migrate: cancelling: %s\n", cr);
		}
		r = request(api, "{\"v\":1,\"cmd\":\"migrate-status\"}", reply, API_MAX_REPLY + 1,
			    &doc);
		if (r) {
			fprintf(stderr,
				"vmsnap migrate: the source VM's control socket went away (last state "
				"%s): %s\n",
				last_state, strerror(-r));
			break;
		}
		const char *state = "?";
		json_get_string(doc.root, "state", &state);
		snprintf(last_state, sizeof(last_state), "%s", state);
		bool done = !strcmp(state, "completed") || !strcmp(state, "failed") ||
			    !strcmp(state, "cancelled") || !strcmp(state, "none");
		uint64_t round = 0;
		json_get_u64(doc.root, "round", &round);
		if (!quiet && !done && (tty || round != last_round)) {
			fprintf(stderr,
				"%s%s round %llu: %.1f MiB sent, %.0f pages dirty, dirty %.0f MB/s, "
				"link %.0f MB/s, throttle %.0f%%, expected downtime %.1f ms%s",
				tty ? "\r" : "", state, (unsigned long long)round,
				num(doc.root, "bytes_sent") / (1 << 20),
				num(doc.root, "remaining_pages"), num(doc.root, "dirty_rate_mbps"),
				num(doc.root, "bandwidth_mbps"), num(doc.root, "throttle_pct"),
				num(doc.root, "expected_downtime_ms"), tty ? "   " : "\n");
			last_round = round;
		}
		if (done) {
			if (tty && !quiet)
				fprintf(stderr, "\n");
			if (json) {
				printf("%s\n", reply);
			} else {
				print_final(doc.root);
			}
			status = !strcmp(state, "completed") ? EXIT_OK : EXIT_FAIL;
			if (status != EXIT_OK) {
				const char *msg = "";
				json_get_string(doc.root, "error", &msg);
				fprintf(stderr, "vmsnap migrate: migration %s: %s\n", state, msg);
			}
			json_doc_free(&doc);
			break;
		}
		json_doc_free(&doc);
		struct timespec ts = { 0, 50 * 1000000 };
		nanosleep(&ts, NULL);
	}
	free(reply);
	return status;
}
