/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for util/json.c and the control socket's line dispatch (vmm/api.c):
 *  - arbitrary bytes to json_parse(); a document that parses is written back with jw_value(),
 *    which must parse again and serialise to the same text (the writer's output is always
 *    valid JSON, and parse/write reach a fixed point);
 *  - the same bytes as one request line to api_handle_line(), whose reply must be one line of
 *    valid JSON with "v":1 and a boolean "ok".
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/json.h"
#include "util/log.h"
#include "vmm/api.h"

static int fz_status(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		     size_t errlen)
{
	(void)opaque, (void)req, (void)err, (void)errlen;
	jw_kv_str(reply, "state", "running");
	jw_kv_u64(reply, "vcpus", 1);
	return 0;
}

static int fz_echo(void *opaque, const struct json_value *req, struct jw *reply, char *err,
		   size_t errlen)
{
	(void)opaque, (void)err, (void)errlen;
	const struct json_value *v = json_get(req, "value");
	if (!v)
		return -EINVAL;
	jw_key(reply, "value");
	jw_value(reply, v);
	return 0;
}

static const char *const echo_args[] = { "value", NULL };
static const struct api_command fz_cmds[] = {
	{ "status", fz_status, "", NULL },
	{ "echo", fz_echo, "", echo_args },
	{ NULL, NULL, NULL, NULL },
};

static void check(int cond)
{
	if (!cond)
		abort();
}

static void fuzz_parser(const uint8_t *data, size_t size)
{
	struct json_doc doc, doc2;
	struct json_error err;
	struct jw w1, w2;

	if (json_parse(&doc, data, size, NULL, &err)) {
		check(err.code < 0 && err.offset <= size && err.msg[0]);
		return;
	}
	jw_init(&w1, 0);
	jw_value(&w1, doc.root);
	if (!jw_error(&w1)) {
		check(!memchr(jw_cstr(&w1), '\n', jw_len(&w1)));
		check(json_parse(&doc2, jw_cstr(&w1), jw_len(&w1), NULL, &err) == 0);
		jw_init(&w2, 0);
		jw_value(&w2, doc2.root);
		check(jw_error(&w2) == 0 && jw_len(&w2) == jw_len(&w1) &&
		      !memcmp(jw_cstr(&w1), jw_cstr(&w2), jw_len(&w1)));
		jw_free(&w2);
		json_doc_free(&doc2);
	}
	jw_free(&w1);
	json_doc_free(&doc);
}

static void fuzz_dispatch(const uint8_t *data, size_t size)
{
	static struct api_server *srv;
	static struct jw reply;
	struct json_doc doc;
	bool ok;
	uint64_t v;

	if (!srv) {
		log_set_level(LOG_ERR);
		if (api_create(fz_cmds, NULL, &srv))
			abort();
		jw_init(&reply, API_MAX_REPLY);
	}
	if (size > API_MAX_LINE + 16)
		size = API_MAX_LINE + 16;
	check(api_handle_line(srv, (const char *)data, size, &reply) == 0);
	check(!memchr(jw_cstr(&reply), '\n', jw_len(&reply)));
	check(json_parse(&doc, jw_cstr(&reply), jw_len(&reply), NULL, NULL) == 0);
	check(json_get_u64(doc.root, "v", &v) == 0 && v == API_PROTO_VERSION);
	check(json_get_bool(doc.root, "ok", &ok) == 0);
	json_doc_free(&doc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_parser(data, size);
	fuzz_dispatch(data, size);
	return 0;
}
