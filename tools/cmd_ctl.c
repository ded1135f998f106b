/* SPDX-License-Identifier: MIT */
/* vmsnap ctl: one request to a VM's control socket. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools/cli.h"
#include "util/json.h"
#include "util/parse.h"
#include "vmm/api.h"

static void ctl_usage(FILE *f)
{
	fprintf(f, "usage: vmsnap ctl [--json] [--timeout MS] SOCKET COMMAND [KEY=VALUE ...]\n\n"
		   "Send COMMAND to the VM serving the control socket SOCKET and print the reply.\n"
		   "Commands: status, pause, resume, quit, help (the VM lists all it knows).\n"
		   "KEY=VALUE pairs become request arguments (numbers and true/false are typed).\n\n"
		   "  --json         print the reply line as it came (one JSON object)\n"
		   "  --timeout MS   give up after MS milliseconds (default 30000)\n"
		   "  -h, --help     this text\n\n"
		   "Exit status: 0 when the VM answered ok, 1 otherwise. The protocol is in\n"
		   "docs/CONTROL.md.\n");
}

static bool is_number(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return false;
	return true;
}

static void print_value(const struct json_value *v, int indent);

static void print_members(const struct json_value *obj, int indent)
{
	for (const struct json_value *m = obj->u.list.first; m; m = m->next) {
		if (!strcmp(m->key, "v") || !strcmp(m->key, "ok") || !strcmp(m->key, "id"))
			continue;
		printf("%*s%s:", indent, "", m->key);
		if (m->type == JSON_OBJECT) {
			printf("\n");
			print_members(m, indent + 2);
		} else {
			printf(" ");
			print_value(m, indent);
			printf("\n");
		}
	}
}

static void print_value(const struct json_value *v, int indent)
{
	struct jw w;
	switch (v->type) {
	case JSON_STRING:
		printf("%s", v->u.str.s);
		break;
	default:
		jw_init(&w, 1 << 16);
		jw_value(&w, v);
		printf("%s", jw_error(&w) ? "?" : jw_cstr(&w));
		jw_free(&w);
		break;
	}
	(void)indent;
}

int cmd_ctl(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "timeout", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	bool json = false;
	uint64_t timeout = 30000;
	int c;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "+:h", opts, NULL)) != -1) {
		switch (c) {
		case 'j': json = true; break;
		case 't':
			if (parse_uint(optarg, 1, 3600000, &timeout))
				return cli_usage_error("ctl", "--timeout '%s' is not 1..3600000 ms",
						       optarg);
			break;
		case 'h': ctl_usage(stdout); return EXIT_OK;
		case ':': return cli_usage_error("ctl", "option '%s' needs a value", argv[optind - 1]);
		default: return cli_usage_error("ctl", "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (argc - optind < 2)
		return cli_usage_error("ctl", "SOCKET and COMMAND are required");
	const char *path = argv[optind];
	const char *cmd = argv[optind + 1];

	struct jw req;
	jw_init(&req, API_MAX_LINE);
	jw_obj_begin(&req);
	jw_kv_u64(&req, "v", API_PROTO_VERSION);
	jw_kv_str(&req, "cmd", cmd);
	for (int i = optind + 2; i < argc; i++) {
		char *eq = strchr(argv[i], '=');
		if (!eq || eq == argv[i]) {
			jw_free(&req);
			return cli_usage_error("ctl", "argument '%s' is not KEY=VALUE", argv[i]);
		}
		char key[256];
		size_t klen = (size_t)(eq - argv[i]);
		if (klen >= sizeof(key)) {
			jw_free(&req);
			return cli_usage_error("ctl", "argument name too long");
		}
		memcpy(key, argv[i], klen);
		key[klen] = 0;
		const char *val = eq + 1;
		uint64_t n;
		jw_key(&req, key);
		if (is_number(val) && parse_uint(val, 0, UINT64_MAX, &n) == 0)
			jw_u64(&req, n);
		else if (!strcmp(val, "true") || !strcmp(val, "false"))
			jw_bool(&req, val[0] == 't');
		else
			jw_str(&req, val);
	}
	jw_obj_end(&req);
	if (jw_error(&req)) {
		jw_free(&req);
		fprintf(stderr, "vmsnap ctl: request too long (limit %d bytes)\n", API_MAX_LINE);
		return EXIT_FAIL;
	}

	char *reply = malloc(API_MAX_REPLY + 1);
	if (!reply) {
		jw_free(&req);
		return EXIT_FAIL;
	}
	int r = api_request(path, jw_cstr(&req), reply, API_MAX_REPLY + 1, (int)timeout);
	jw_free(&req);
	if (r) {
		const char *why = strerror(-r);
		if (r == -ENOENT)
			why = "no control socket there";
		else if (r == -ECONNREFUSED)
			why = "nothing is serving it (stale socket)";
		else if (r == -ETIMEDOUT)
			why = "no reply in time";
		fprintf(stderr, "vmsnap ctl: %s: %s\n", path, why);
		free(reply);
		return EXIT_FAIL;
	}

	struct json_doc doc;
	struct json_error jerr;
	int status = EXIT_FAIL;
	if (json_parse(&doc, reply, strlen(reply), NULL, &jerr)) {
		fprintf(stderr, "vmsnap ctl: malformed reply from the VM: %s\n", jerr.msg);
		free(reply);
		return EXIT_FAIL;
	}
	const struct json_value *root = doc.root;
	bool ok = false;
	json_get_bool(root, "ok", &ok);
	if (json)
		printf("%s\n", reply);
	if (ok) {
		if (!json)
			print_members(root, 0);
		status = EXIT_OK;
	} else {
		const char *msg = "unknown error";
		json_get_string(root, "error", &msg);
		fprintf(stderr, "vmsnap ctl: %s: %s\n", cmd, msg);
	}
	json_doc_free(&doc);
	free(reply);
	return status;
}
