/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <locale.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/json.h"

/* Parse a NUL-terminated text (the terminator is not passed to the parser). */
static int parse(struct json_doc *doc, const char *text, struct json_error *err)
{
	return json_parse(doc, text, strlen(text), NULL, err);
}

static void expect_error(const char *text, int code, const char *msg)
{
	struct json_doc doc;
	struct json_error err;
	int r = parse(&doc, text, &err);

	if (r != code || (msg && strcmp(err.msg, msg)))
		fail_msg("'%s': got %d '%s', want %d '%s'", text, r, err.msg, code, msg ? msg : "*");
	assert_null(doc.root);
	json_doc_free(&doc);
}

static void test_valid_documents(void **state)
{
	static const char *ok[] = {
		"0", "-1", "1.5", "1e3", "1E-3", "-0.0e+0", "true", "false", "null", "\"\"",
		"\"x\"", "[]", "{}", " \t\r\n[ 1 , 2 ]\n", "{\"a\":{\"b\":[1,{\"c\":null}]}}",
		"[[],[[]],{}]", "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"",
	};
	(void)state;
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		struct json_doc doc;
		struct json_error err;
		if (parse(&doc, ok[i], &err))
			fail_msg("'%s' rejected: %s", ok[i], err.msg);
		assert_non_null(doc.root);
		json_doc_free(&doc);
	}
}

static void test_tree_and_lookup(void **state)
{
	struct json_doc doc;
	const char *text = "{\"s\":\"str\",\"u\":18446744073709551615,\"i\":-5,\"d\":2.5,"
			   "\"b\":true,\"n\":null,\"a\":[10,20,30],\"o\":{}}";
	const char *s;
	uint64_t u;
	int64_t i;
	double d;
	bool b;

	(void)state;
	assert_int_equal(parse(&doc, text, NULL), 0);
	const struct json_value *r = doc.root;
	assert_int_equal(r->type, JSON_OBJECT);
	assert_int_equal(r->u.list.count, 8);

	assert_int_equal(json_get_string(r, "s", &s), 0);
	assert_string_equal(s, "str");
	assert_int_equal(json_get_u64(r, "u", &u), 0);
	assert_true(u == UINT64_MAX);
	assert_int_equal(json_get_i64(r, "u", &i), -ERANGE);
	assert_int_equal(json_get_i64(r, "i", &i), 0);
	assert_int_equal(i, -5);
	assert_int_equal(json_get_u64(r, "i", &u), -ERANGE);
	assert_int_equal(json_get_double(r, "d", &d), 0);
	assert_true(d == 2.5);
	assert_int_equal(json_get_u64(r, "d", &u), -EINVAL);
	assert_int_equal(json_get_double(r, "i", &d), 0);
	assert_true(d == -5.0);
	assert_int_equal(json_get_bool(r, "b", &b), 0);
	assert_true(b);

	/* type checks and missing members */
	assert_int_equal(json_get_string(r, "u", &s), -EINVAL);
	assert_int_equal(json_get_bool(r, "n", &b), -EINVAL);
	assert_int_equal(json_get_u64(r, "s", &u), -EINVAL);
	assert_int_equal(json_get_string(r, "missing", &s), -ENOENT);
	assert_int_equal(json_get_u64(r, "missing", &u), -ENOENT);
	assert_null(json_get(r, "S"));
	assert_null(json_get(json_get(r, "a"), "s")); /* not an object */
	assert_null(json_get(NULL, "s"));
	assert_int_equal(json_get(r, "n")->type, JSON_NULL);

	const struct json_value *a = json_get(r, "a");
	assert_int_equal(a->u.list.count, 3);
	assert_int_equal(json_as_u64(json_array_at(a, 2), &u), 0);
	assert_int_equal(u, 30);
	assert_null(json_array_at(a, 3));
	assert_null(json_array_at(r, 0));

	static const char *const allowed[] = { "s", "u", "i", "d", "b", "n", "a", "o", NULL };
	static const char *const fewer[] = { "s", "u", "i", "d", "b", "n", "a", NULL };
	assert_null(json_unknown_key(r, allowed));
	assert_string_equal(json_unknown_key(r, fewer), "o");
	assert_string_equal(json_unknown_key(r, NULL), "s");
	assert_string_equal(json_type_name(JSON_OBJECT), "object");
	json_doc_free(&doc);
	json_doc_free(&doc); /* harmless twice */
}

static void test_error_messages(void **state)
{
	(void)state;
	expect_error("{\"a\":1}}", -EBADMSG, "json: unexpected '}' at offset 7");
	expect_error("", -EBADMSG, "json: unexpected end of input at offset 0");
	expect_error("   ", -EBADMSG, "json: unexpected end of input at offset 3");
	expect_error("[1,]", -EBADMSG, "json: unexpected ']' at offset 3");
	expect_error("{\"a\" 1}", -EBADMSG, "json: unexpected '1' at offset 5");
	expect_error("{\"a\":1,}", -EBADMSG, "json: unexpected '}' at offset 7");
	expect_error("{a:1}", -EBADMSG, "json: unexpected 'a' at offset 1");
	expect_error("[1 2]", -EBADMSG, "json: unexpected '2' at offset 3");
	expect_error("[1", -EBADMSG, "json: unexpected end of input at offset 2");
	expect_error("1 2", -EBADMSG, "json: unexpected '2' at offset 2");
	expect_error("tru", -EBADMSG, "json: unexpected end of input at offset 3");
	expect_error("trUe", -EBADMSG, "json: unexpected 'U' at offset 2");
	expect_error("nul", -EBADMSG, NULL);
	expect_error("NaN", -EBADMSG, "json: unexpected 'N' at offset 0");
	expect_error("Infinity", -EBADMSG, NULL);
	expect_error("-Infinity", -EBADMSG, "json: unexpected 'I' at offset 1");
	expect_error("/* c */ 1", -EBADMSG, "json: unexpected '/' at offset 0");
	expect_error("[1] // c", -EBADMSG, "json: unexpected '/' at offset 4");
	expect_error("'a'", -EBADMSG, NULL);
	expect_error("\x01", -EBADMSG, "json: unexpected byte 0x01 at offset 0");
	expect_error("\xef\xbb\xbf{}", -EBADMSG, "json: unexpected byte 0xef at offset 0");
	expect_error("{\"a\":1,\"a\":2}", -EBADMSG, "json: duplicate key \"a\" at offset 7");
	expect_error("{\"a\":{\"b\":1,\"b\":1}}", -EBADMSG, NULL);
}

static void test_nested_duplicates_ok(void **state)
{
	struct json_doc doc;
	(void)state;
	/* the same key in different objects is fine */
	assert_int_equal(parse(&doc, "{\"a\":{\"a\":1},\"b\":{\"a\":2}}", NULL), 0);
	json_doc_free(&doc);
}

static void test_string_errors(void **state)
{
	(void)state;
	expect_error("\"abc", -EBADMSG, "json: unterminated string at offset 4");
	expect_error("\"abc\\\"", -EBADMSG, NULL);
	expect_error("\"a\\", -EBADMSG, NULL);
	expect_error("\"a\nb\"", -EBADMSG, "json: control character 0x0a in string at offset 2");
	expect_error("\"a\tb\"", -EBADMSG, NULL);
	expect_error("\"\\x\"", -EBADMSG, "json: invalid escape '\\x' at offset 1");
	expect_error("\"\\'\"", -EBADMSG, NULL);
	expect_error("\"\\u12g4\"", -EBADMSG, "json: invalid \\u escape at offset 5");
	expect_error("\"\\u12\"", -EBADMSG, NULL);
	expect_error("\"\\u\"", -EBADMSG, NULL);
	expect_error("\"\\ud800\"", -EBADMSG, "json: lone high surrogate \\ud800 at offset 1");
	expect_error("\"\\ud800\\u0041\"", -EBADMSG, NULL);
	expect_error("\"\\ud800x\"", -EBADMSG, NULL);
	expect_error("\"\\udc00\"", -EBADMSG, "json: lone low surrogate \\udc00 at offset 1");
	/* invalid UTF-8: stray continuation, overlong, encoded surrogate, > U+10FFFF, truncated */
	expect_error("\"\x80\"", -EBADMSG, "json: invalid UTF-8 in string at offset 1");
	expect_error("\"\xc0\x80\"", -EBADMSG, NULL);
	expect_error("\"\xe0\x80\x80\"", -EBADMSG, NULL);
	expect_error("\"\xed\xa0\x80\"", -EBADMSG, NULL);
	expect_error("\"\xf4\x90\x80\x80\"", -EBADMSG, NULL);
	expect_error("\"\xf5\x80\x80\x80\"", -EBADMSG, NULL);
	expect_error("\"\xe2\x82\"", -EBADMSG, NULL);
	expect_error("\"\xff\"", -EBADMSG, NULL);
}

static void check_string(const char *text, const char *want, size_t wantlen)
{
	struct json_doc doc;
	struct json_error err;

	if (parse(&doc, text, &err))
		fail_msg("'%s': %s", text, err.msg);
	assert_int_equal(doc.root->type, JSON_STRING);
	assert_int_equal(doc.root->u.str.len, wantlen);
	assert_memory_equal(doc.root->u.str.s, want, wantlen);
	assert_int_equal(doc.root->u.str.s[wantlen], '\0');
	json_doc_free(&doc);
}

static void test_escapes(void **state)
{
	(void)state;
	check_string("\"a\\\"b\\\\c\\/d\"", "a\"b\\c/d", 7);
	check_string("\"\\b\\f\\n\\r\\t\"", "\b\f\n\r\t", 5);
	check_string("\"\\u0041\\u00e9\\u20AC\"", "A\xc3\xa9\xe2\x82\xac", 6);
	check_string("\"\\ud83d\\ude00\"", "\xf0\x9f\x98\x80", 4);	 /* U+1F600 */
	check_string("\"\\uDBFF\\uDFFF\"", "\xf4\x8f\xbf\xbf", 4);	 /* U+10FFFF */
	check_string("\"\xf0\x9f\x98\x80 \xc3\xa9\"", "\xf0\x9f\x98\x80 \xc3\xa9", 7); /* raw */
	check_string("\"\\u0000x\"", "\0x", 2);

	/* a string holding NUL is not handed out as a C string */
	struct json_doc doc;
	const char *s;
	assert_int_equal(parse(&doc, "{\"k\":\"a\\u0000b\"}", NULL), 0);
	assert_int_equal(json_get_string(doc.root, "k", &s), -EINVAL);
	json_doc_free(&doc);
	/* a key holding NUL does not match its C prefix */
	assert_int_equal(parse(&doc, "{\"k\\u0000x\":1}", NULL), 0);
	assert_null(json_get(doc.root, "k"));
	json_doc_free(&doc);
}

static const struct json_number *num(struct json_doc *doc, const char *text)
{
	struct json_error err;
	if (parse(doc, text, &err))
		fail_msg("'%s': %s", text, err.msg);
	assert_int_equal(doc->root->type, JSON_NUMBER);
	return &doc->root->u.num;
}

static void test_numbers(void **state)
{
	struct json_doc doc;
	const struct json_number *n;
	uint64_t u;
	int64_t i;

	(void)state;
	n = num(&doc, "9223372036854775807"); /* 2^63 - 1 */
	assert_true(n->fits_i64 && n->fits_u64 && n->i == INT64_MAX);
	json_doc_free(&doc);

	n = num(&doc, "9223372036854775808"); /* 2^63 */
	assert_true(!n->fits_i64 && n->fits_u64 && n->u == 9223372036854775808ull);
	assert_int_equal(json_as_i64(doc.root, &i), -ERANGE);
	json_doc_free(&doc);

	n = num(&doc, "-9223372036854775808"); /* -2^63 */
	assert_true(n->fits_i64 && !n->fits_u64 && n->i == INT64_MIN);
	json_doc_free(&doc);

	n = num(&doc, "-9223372036854775809");
	assert_true(n->is_int && !n->fits_i64 && !n->fits_u64);
	assert_int_equal(json_as_i64(doc.root, &i), -ERANGE);
	json_doc_free(&doc);

	n = num(&doc, "18446744073709551615"); /* 2^64 - 1 */
	assert_true(n->fits_u64 && n->u == UINT64_MAX);
	json_doc_free(&doc);

	n = num(&doc, "18446744073709551616"); /* 2^64: a valid number, not a u64 */
	assert_true(n->is_int && !n->fits_u64 && !n->fits_i64);
	assert_true(n->d == 18446744073709551616.0);
	assert_int_equal(json_as_u64(doc.root, &u), -ERANGE);
	json_doc_free(&doc);

	n = num(&doc, "184467440737095516160000");
	assert_int_equal(json_as_u64(doc.root, &u), -ERANGE);
	json_doc_free(&doc);

	n = num(&doc, "-0");
	assert_true(n->is_int && n->fits_i64 && n->fits_u64 && n->i == 0 && n->u == 0);
	assert_true(n->d == 0.0 && signbit(n->d));
	json_doc_free(&doc);

	n = num(&doc, "1e-400"); /* underflow reads as zero */
	assert_true(!n->is_int && n->d == 0.0);
	json_doc_free(&doc);

	n = num(&doc, "1.7976931348623157e308");
	assert_true(n->d == 1.7976931348623157e308);
	json_doc_free(&doc);

	n = num(&doc, "0.1");
	assert_true(n->d == 0.1 && !n->is_int);
	assert_int_equal(json_as_u64(doc.root, &u), -EINVAL);
	json_doc_free(&doc);

	n = num(&doc, "1e2"); /* exponent: not an integer literal */
	assert_true(!n->is_int && n->d == 100.0);
	assert_int_equal(json_as_u64(doc.root, &u), -EINVAL);
	json_doc_free(&doc);

	expect_error("1e400", -EBADMSG, "json: number out of range at offset 0");
	expect_error("[-1e400]", -EBADMSG, "json: number out of range at offset 1");
	expect_error("01", -EBADMSG, "json: leading zero in number at offset 0");
	expect_error("-01", -EBADMSG, NULL);
	expect_error("1.", -EBADMSG, "json: unexpected end of input at offset 2");
	expect_error("1.e5", -EBADMSG, "json: unexpected 'e' at offset 2");
	expect_error(".5", -EBADMSG, "json: unexpected '.' at offset 0");
	expect_error("-", -EBADMSG, "json: unexpected end of input at offset 1");
	expect_error("+1", -EBADMSG, "json: unexpected '+' at offset 0");
	expect_error("1e", -EBADMSG, NULL);
	expect_error("1e+", -EBADMSG, NULL);
	expect_error("0x10", -EBADMSG, "json: unexpected 'x' at offset 1");

	char longnum[200];
	memset(longnum, '1', sizeof(longnum) - 1);
	longnum[sizeof(longnum) - 1] = '\0';
	expect_error(longnum, -EBADMSG, "json: number longer than 127 characters at offset 0");
}

static void test_bounded_buffer(void **state)
{
	struct json_doc doc;
	struct json_error err;
	uint64_t u;

	(void)state;
	/* only @len bytes are read: no terminator needed, and bytes past it are ignored */
	char *buf = malloc(5);
	memcpy(buf, "[1,2]", 5);
	assert_int_equal(json_parse(&doc, buf, 5, NULL, &err), 0);
	assert_int_equal(doc.root->u.list.count, 2);
	json_doc_free(&doc);
	assert_int_equal(json_parse(&doc, buf, 4, NULL, &err), -EBADMSG);
	assert_string_equal(err.msg, "json: unexpected end of input at offset 4");
	free(buf);

	buf = malloc(3);
	memcpy(buf, "123", 3);
	assert_int_equal(json_parse(&doc, buf, 2, NULL, NULL), 0);
	assert_int_equal(json_as_u64(doc.root, &u), 0);
	assert_int_equal(u, 12);
	json_doc_free(&doc);
	free(buf);

	/* an embedded NUL is just a bad byte */
	assert_int_equal(json_parse(&doc, "[1]\0", 4, NULL, &err), -EBADMSG);
	assert_string_equal(err.msg, "json: unexpected byte 0x00 at offset 3");
	assert_int_equal(json_parse(&doc, NULL, 0, NULL, &err), -EBADMSG);
}

static char *nested(unsigned int depth)
{
	char *s = malloc(2 * depth + 1);
	memset(s, '[', depth);
	memset(s + depth, ']', depth);
	s[2 * depth] = '\0';
	return s;
}

static void test_limits(void **state)
{
	struct json_doc doc;
	struct json_error err;
	char *s;

	(void)state;
	s = nested(JSON_DEFAULT_MAX_DEPTH);
	assert_int_equal(parse(&doc, s, &err), 0);
	json_doc_free(&doc);
	free(s);

	s = nested(JSON_DEFAULT_MAX_DEPTH + 1);
	assert_int_equal(parse(&doc, s, &err), -E2BIG);
	assert_string_equal(err.msg, "json: nesting deeper than 32 at offset 32");
	assert_int_equal(err.offset, 32);
	free(s);

	/* deep input is refused without recursing through it all */
	s = nested(100000);
	assert_int_equal(json_parse(&doc, s, strlen(s), NULL, &err), -E2BIG);
	free(s);

	struct json_limits lim = { .max_depth = 2, .max_nodes = 4, .max_size = 16 };
	assert_int_equal(json_parse(&doc, "[[1]]", 5, &lim, &err), 0);
	json_doc_free(&doc);
	assert_int_equal(json_parse(&doc, "[[[1]]]", 7, &lim, &err), -E2BIG);
	assert_int_equal(json_parse(&doc, "[1,2,3]", 7, &lim, &err), 0); /* 4 values */
	json_doc_free(&doc);
	assert_int_equal(json_parse(&doc, "[1,2,3,4]", 9, &lim, &err), -E2BIG);
	assert_string_equal(err.msg, "json: more than 4 values at offset 7");
	assert_int_equal(json_parse(&doc, "\"0123456789abcdef\"", 18, &lim, &err), -E2BIG);
	assert_string_equal(err.msg, "json: input larger than 16 bytes at offset 16");
	assert_null(doc.root);

	/* a large valid document spanning several arena blocks */
	size_t n = 3000;
	char *big = malloc(n * 8 + 16);
	size_t len = 0;
	big[len++] = '[';
	for (size_t i = 0; i < n; i++)
		len += (size_t)sprintf(big + len, "%s\"%04zu\"", i ? "," : "", i);
	big[len++] = ']';
	assert_int_equal(json_parse(&doc, big, len, NULL, &err), 0);
	assert_int_equal(doc.root->u.list.count, n);
	assert_string_equal(json_array_at(doc.root, 2999)->u.str.s, "2999");
	json_doc_free(&doc);
	free(big);
}

/* ------------------------------------------------------------------------------------------ */

static void expect_jw(struct jw *w, const char *want)
{
	assert_int_equal(jw_error(w), 0);
	assert_string_equal(jw_cstr(w), want);
	assert_int_equal(jw_len(w), strlen(want));
}

static void test_writer_basic(void **state)
{
	struct jw w;

	(void)state;
	jw_init(&w, 0);
	assert_string_equal(jw_cstr(&w), "");
	assert_int_equal(jw_error(&w), -EINVAL); /* nothing written yet */
	jw_obj_begin(&w);
	jw_kv_u64(&w, "v", 1);
	jw_kv_bool(&w, "ok", true);
	jw_kv_str(&w, "state", "running");
	jw_kv_i64(&w, "neg", INT64_MIN);
	jw_kv_u64(&w, "max", UINT64_MAX);
	jw_kv_double(&w, "d", 0.1);
	jw_key(&w, "n");
	jw_null(&w);
	jw_kv_str(&w, "nul", NULL);
	jw_key(&w, "a");
	jw_arr_begin(&w);
	jw_u64(&w, 1);
	jw_str(&w, "x");
	jw_obj_begin(&w);
	jw_obj_end(&w);
	jw_arr_begin(&w);
	jw_arr_end(&w);
	jw_bool(&w, false);
	jw_arr_end(&w);
	jw_obj_end(&w);
	expect_jw(&w, "{\"v\":1,\"ok\":true,\"state\":\"running\",\"neg\":-9223372036854775808,"
		      "\"max\":18446744073709551615,\"d\":0.1,\"n\":null,\"nul\":null,"
		      "\"a\":[1,\"x\",{},[],false]}");

	jw_reset(&w);
	jw_u64(&w, 7);
	expect_jw(&w, "7");
	jw_free(&w);
}

static void test_writer_escaping(void **state)
{
	struct jw w;

	(void)state;
	jw_init(&w, 0);
	jw_str(&w, "q\"b\\s/ n\n r\r t\t \x01\x1f\x7f");
	expect_jw(&w, "\"q\\\"b\\\\s/ n\\n r\\r t\\t \\u0001\\u001f\\u007f\"");

	jw_reset(&w);
	jw_str(&w, "caf\xc3\xa9 \xf0\x9f\x98\x80"); /* valid UTF-8 passes through */
	expect_jw(&w, "\"caf\xc3\xa9 \xf0\x9f\x98\x80\"");

	jw_reset(&w);
	jw_str(&w, "a\xff" "b\xc0\x80" "c\xe2\x82"); /* invalid UTF-8 is replaced */
	expect_jw(&w, "\"a\\ufffdb\\ufffd\\ufffdc\\ufffd\\ufffd\"");

	jw_reset(&w);
	jw_strn(&w, "a\0b", 3);
	expect_jw(&w, "\"a\\u0000b\"");

	jw_reset(&w);
	jw_obj_begin(&w);
	jw_kv_str(&w, "k\"ey\n", "v");
	jw_obj_end(&w);
	expect_jw(&w, "{\"k\\\"ey\\n\":\"v\"}");
	jw_free(&w);
}

static void test_writer_doubles(void **state)
{
	static const struct {
		double v;
		const char *want;
	} cases[] = {
		{ 0.0, "0" },	     { -0.0, "-0.0" },	 { 1.0, "1" },
		{ 0.1, "0.1" },	     { 1.5, "1.5" },	 { 1e300, "1e+300" },
		{ 1.0 / 3, "0.3333333333333333" },	 { 5e-324, "4.94065645841247e-324" },
		{ NAN, "null" },     { INFINITY, "null" }, { -INFINITY, "null" },
	};
	struct jw w;

	(void)state;
	jw_init(&w, 0);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		jw_reset(&w);
		jw_double(&w, cases[i].v);
		expect_jw(&w, cases[i].want);
	}
	/* independent of the process locale (if a comma-decimal locale is installed) */
	if (setlocale(LC_NUMERIC, "de_DE.UTF-8") || setlocale(LC_NUMERIC, "fr_FR.UTF-8")) {
		struct json_doc doc;
		double d;
		jw_reset(&w);
		jw_double(&w, 2.5);
		expect_jw(&w, "2.5");
		assert_int_equal(json_parse(&doc, "2.5", 3, NULL, NULL), 0);
		assert_int_equal(json_as_double(doc.root, &d), 0);
		assert_true(d == 2.5);
		json_doc_free(&doc);
		setlocale(LC_NUMERIC, "C");
	}
	jw_free(&w);
}

static void test_writer_misuse(void **state)
{
	struct jw w;

	(void)state;
	jw_init(&w, 0);
	jw_obj_begin(&w);
	jw_u64(&w, 1); /* value without key */
	assert_int_equal(jw_error(&w), -EINVAL);

	jw_reset(&w);
	jw_arr_begin(&w);
	jw_key(&w, "k"); /* key in an array */
	assert_int_equal(jw_error(&w), -EINVAL);

	jw_reset(&w);
	jw_obj_begin(&w);
	jw_arr_end(&w); /* mismatched end */
	assert_int_equal(jw_error(&w), -EINVAL);

	jw_reset(&w);
	jw_obj_begin(&w);
	jw_key(&w, "k");
	jw_obj_end(&w); /* key without value */
	assert_int_equal(jw_error(&w), -EINVAL);

	jw_reset(&w);
	jw_obj_begin(&w);
	assert_int_equal(jw_error(&w), -EINVAL); /* still open */
	jw_obj_end(&w);
	assert_int_equal(jw_error(&w), 0);
	jw_obj_begin(&w); /* a second top-level value */
	assert_int_equal(jw_error(&w), -EINVAL);

	jw_reset(&w);
	jw_obj_end(&w);
	assert_int_equal(jw_error(&w), -EINVAL);

	jw_reset(&w);
	for (int i = 0; i < JW_MAX_DEPTH; i++)
		jw_arr_begin(&w);
	assert_int_equal(w.err, 0);
	jw_arr_begin(&w);
	assert_int_equal(jw_error(&w), -EINVAL);
	jw_free(&w);

	/* the size limit is sticky */
	jw_init(&w, 16);
	jw_obj_begin(&w);
	jw_kv_str(&w, "k", "0123456789");
	assert_int_equal(jw_error(&w), -E2BIG);
	jw_obj_end(&w);
	assert_int_equal(jw_error(&w), -E2BIG);
	assert_true(jw_len(&w) <= 16);
	jw_reset(&w);
	jw_str(&w, "0123456789abcd"); /* 16 bytes exactly */
	expect_jw(&w, "\"0123456789abcd\"");
	jw_free(&w);
}

static void round_trip(const char *text, const char *want)
{
	struct json_doc doc, doc2;
	struct json_error err;
	struct jw w;

	if (parse(&doc, text, &err))
		fail_msg("'%s': %s", text, err.msg);
	jw_init(&w, 0);
	jw_value(&w, doc.root);
	expect_jw(&w, want ? want : text);
	/* and the output parses back */
	assert_int_equal(json_parse(&doc2, jw_cstr(&w), jw_len(&w), NULL, NULL), 0);
	json_doc_free(&doc2);
	jw_free(&w);
	json_doc_free(&doc);
}

static void test_round_trip(void **state)
{
	(void)state;
	round_trip("{\"a\":[1,-2,3.5,true,false,null,\"s\"],\"b\":{\"c\":{}},\"d\":[]}", NULL);
	round_trip(" { \"x\" : [ 1 , 2 ] } ", "{\"x\":[1,2]}");
	round_trip("[18446744073709551615,-9223372036854775808,-0,1E2,0.5e-3]",
		   "[18446744073709551615,-9223372036854775808,0,100,0.0005]");
	round_trip("[\"\\u00e9\\ud83d\\ude00\\n\\\"\\u0000\", {\"k\\u0000\":1}]",
		   "[\"\xc3\xa9\xf0\x9f\x98\x80\\n\\\"\\u0000\",{\"k\\u0000\":1}]");
	round_trip("\"\\/\"", "\"/\"");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_documents),
		cmocka_unit_test(test_tree_and_lookup),
		cmocka_unit_test(test_error_messages),
		cmocka_unit_test(test_nested_duplicates_ok),
		cmocka_unit_test(test_string_errors),
		cmocka_unit_test(test_escapes),
		cmocka_unit_test(test_numbers),
		cmocka_unit_test(test_bounded_buffer),
		cmocka_unit_test(test_limits),
		cmocka_unit_test(test_writer_basic),
		cmocka_unit_test(test_writer_escaping),
		cmocka_unit_test(test_writer_doubles),
		cmocka_unit_test(test_writer_misuse),
		cmocka_unit_test(test_round_trip),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
