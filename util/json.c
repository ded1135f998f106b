/* SPDX-License-Identifier: MIT */
#include "util/json.h"

#include <errno.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* Number conversion independent of the process locale (a tool may call setlocale()).         */

static locale_t c_locale;
static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;

static void c_locale_init(void)
{
	c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
}

static locale_t get_c_locale(void)
{
	pthread_once(&c_locale_once, c_locale_init);
	return c_locale;
}

static double strtod_c(const char *s, char **end)
{
	locale_t loc = get_c_locale();
	return loc ? strtod_l(s, end, loc) : strtod(s, end);
}

/* ------------------------------------------------------------------------------------------ */
/* Arena: nodes and decoded strings of one document; blocks never move.                        */

struct json_arena_block {
	struct json_arena_block *next;
	size_t used;
	size_t cap;
	max_align_t data[];
};

#define ARENA_BLOCK 8192u
#define ARENA_ALIGN (alignof(max_align_t))

static void *arena_alloc(struct json_doc *doc, size_t n)
{
	struct json_arena_block *b = doc->blocks;

	n = (n + ARENA_ALIGN - 1) & ~(ARENA_ALIGN - 1);
	if (!b || b->cap - b->used < n) {
		size_t cap = n > ARENA_BLOCK ? n : ARENA_BLOCK;
		b = malloc(sizeof(*b) + cap);
		if (!b)
			return NULL;
		b->used = 0;
		b->cap = cap;
		b->next = doc->blocks;
		doc->blocks = b;
	}
	void *p = (char *)b->data + b->used;
	b->used += n;
	return p;
}

void json_doc_free(struct json_doc *doc)
{
	struct json_arena_block *b = doc->blocks;

	while (b) {
		struct json_arena_block *next = b->next;
		free(b);
		b = next;
	}
	doc->blocks = NULL;
	doc->root = NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* UTF-8                                                                                       */

/* Length of the valid UTF-8 sequence at p[0..avail), or 0 if it is invalid or truncated. */
static size_t utf8_seq_len(const uint8_t *p, size_t avail)
{
	uint8_t c = p[0];
	uint8_t lo = 0x80, hi = 0xBF;
	size_t n;

	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF) {
		n = 2;
	} else if (c >= 0xE0 && c <= 0xEF) {
		n = 3;
		if (c == 0xE0)
			lo = 0xA0; /* overlong */
		else if (c == 0xED)
			hi = 0x9F; /* UTF-16 surrogates */
	} else if (c >= 0xF0 && c <= 0xF4) {
		n = 4;
		if (c == 0xF0)
			lo = 0x90; /* overlong */
		else if (c == 0xF4)
			hi = 0x8F; /* above U+10FFFF */
	} else {
		return 0;
	}
	if (avail < n)
		return 0;
	if (p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if (p[i] < 0x80 || p[i] > 0xBF)
			return 0;
	return n;
}

static size_t utf8_put(char *out, uint32_t cp)
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xC0 | (cp >> 6));
		out[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xE0 | (cp >> 12));
		out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		out[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	out[0] = (char)(0xF0 | (cp >> 18));
	out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	out[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* ------------------------------------------------------------------------------------------ */
/* Reader                                                                                      */

struct parser {
	const uint8_t *in;
	size_t len;
	size_t pos;
	unsigned int max_depth;
	size_t max_nodes;
	size_t nodes;
	struct json_doc *doc;
	struct json_error *err;
};

__attribute__((format(printf, 4, 5))) static int fail(struct parser *ps, int code, size_t off,
						       const char *fmt, ...)
{
	if (ps->err) {
		char what[96];
		va_list ap;

		va_start(ap, fmt);
		vsnprintf(what, sizeof(what), fmt, ap);
		va_end(ap);
		ps->err->code = code;
		ps->err->offset = off;
		snprintf(ps->err->msg, sizeof(ps->err->msg), "json: %s at offset %zu", what, off);
	}
	return code;
}

/* "unexpected 'x'" / "unexpected byte 0x01" / "unexpected end of input" at the current byte. */
static int unexpected(struct parser *ps)
{
	if (ps->pos >= ps->len)
		return fail(ps, -EBADMSG, ps->pos, "unexpected end of input");
	uint8_t c = ps->in[ps->pos];
	if (c > 0x20 && c < 0x7F)
		return fail(ps, -EBADMSG, ps->pos, "unexpected '%c'", c);
	return fail(ps, -EBADMSG, ps->pos, "unexpected byte 0x%02x", c);
}

static void skip_ws(struct parser *ps)
{
	while (ps->pos < ps->len) {
		uint8_t c = ps->in[ps->pos];
		if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
			break;
		ps->pos++;
	}
}

static int new_node(struct parser *ps, enum json_type type, struct json_value **out)
{
	if (ps->nodes >= ps->max_nodes)
		return fail(ps, -E2BIG, ps->pos, "more than %zu values", ps->max_nodes);
	struct json_value *v = arena_alloc(ps->doc, sizeof(*v));
	if (!v)
		return fail(ps, -ENOMEM, ps->pos, "out of memory");
	memset(v, 0, sizeof(*v));
	v->type = type;
	ps->nodes++;
	*out = v;
	return 0;
}

static int hex4(struct parser *ps, size_t at, uint32_t *out)
{
	uint32_t v = 0;

	if (ps->len - at < 4) {
		ps->pos = ps->len;
		return unexpected(ps);
	}
	for (size_t i = 0; i < 4; i++) {
		uint8_t c = ps->in[at + i];
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return fail(ps, -EBADMSG, at + i, "invalid \\u escape");
	}
	*out = v;
	return 0;
}

/* A string starting at the opening quote; result NUL-terminated in the arena. */
static int parse_string(struct parser *ps, const char **out, size_t *outlen)
{
	size_t start = ++ps->pos; /* past the quote */
	size_t end = start;

	/* Find the closing quote first: the decoded string is never longer than its source. */
	while (end < ps->len && ps->in[end] != '"') {
		if (ps->in[end] == '\\')
			end++;
		end++;
	}
	if (end >= ps->len)
		return fail(ps, -EBADMSG, ps->len, "unterminated string");

	char *s = arena_alloc(ps->doc, end - start + 1);
	if (!s)
		return fail(ps, -ENOMEM, start, "out of memory");
	size_t n = 0;
	size_t i = start;
	while (i < end) {
		uint8_t c = ps->in[i];
		if (c < 0x20)
			return fail(ps, -EBADMSG, i, "control character 0x%02x in string", c);
		if (c >= 0x80) {
			size_t l = utf8_seq_len(ps->in + i, end - i);
			if (!l)
				return fail(ps, -EBADMSG, i, "invalid UTF-8 in string");
			memcpy(s + n, ps->in + i, l);
			n += l;
			i += l;
			continue;
		}
		if (c != '\\') {
			s[n++] = (char)c;
			i++;
			continue;
		}
		/* escape; the scan above guarantees a byte after the backslash before end */
		uint8_t e = ps->in[i + 1];
		uint32_t cp;
		int r;
		switch (e) {
		case '"': s[n++] = '"'; break;
		case '\\': s[n++] = '\\'; break;
		case '/': s[n++] = '/'; break;
		case 'b': s[n++] = '\b'; break;
		case 'f': s[n++] = '\f'; break;
		case 'n': s[n++] = '\n'; break;
		case 'r': s[n++] = '\r'; break;
		case 't': s[n++] = '\t'; break;
		case 'u':
			r = hex4(ps, i + 2, &cp);
			if (r)
				return r;
			if (cp >= 0xDC00 && cp <= 0xDFFF)
				return fail(ps, -EBADMSG, i, "lone low surrogate \\u%04x", cp);
			if (cp >= 0xD800 && cp <= 0xDBFF) {
				uint32_t lo;
				if (i + 12 > end || ps->in[i + 6] != '\\' || ps->in[i + 7] != 'u')
					return fail(ps, -EBADMSG, i, "lone high surrogate \\u%04x", cp);
				r = hex4(ps, i + 8, &lo);
				if (r)
					return r;
				if (lo < 0xDC00 || lo > 0xDFFF)
					return fail(ps, -EBADMSG, i, "lone high surrogate \\u%04x", cp);
				cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
				i += 6;
			}
			n += utf8_put(s + n, cp);
			i += 4;
			break;
		default:
			return fail(ps, -EBADMSG, i, "invalid escape '\\%c'",
				    e > 0x20 && e < 0x7F ? e : '?');
		}
		i += 2;
	}
	s[n] = '\0';
	ps->pos = end + 1;
	*out = s;
	*outlen = n;
	return 0;
}

#define NUM_MAX_CHARS 127

static int parse_number(struct parser *ps, struct json_number *num)
{
	size_t start = ps->pos;
	bool neg = false, overflow = false, is_int = true;
	uint64_t mag = 0;

	if (ps->in[ps->pos] == '-') {
		neg = true;
		ps->pos++;
	}
	if (ps->pos >= ps->len || ps->in[ps->pos] < '0' || ps->in[ps->pos] > '9')
		return unexpected(ps);
	if (ps->in[ps->pos] == '0') {
		ps->pos++;
		if (ps->pos < ps->len && ps->in[ps->pos] >= '0' && ps->in[ps->pos] <= '9')
			return fail(ps, -EBADMSG, start, "leading zero in number");
	} else {
		while (ps->pos < ps->len && ps->in[ps->pos] >= '0' && ps->in[ps->pos] <= '9') {
			unsigned int d = ps->in[ps->pos++] - '0';
			if (mag > (UINT64_MAX - d) / 10)
				overflow = true;
			else
				mag = mag * 10 + d;
		}
	}
	if (ps->pos < ps->len && ps->in[ps->pos] == '.') {
		is_int = false;
		ps->pos++;
		if (ps->pos >= ps->len || ps->in[ps->pos] < '0' || ps->in[ps->pos] > '9')
			return unexpected(ps);
		while (ps->pos < ps->len && ps->in[ps->pos] >= '0' && ps->in[ps->pos] <= '9')
			ps->pos++;
	}
	if (ps->pos < ps->len && (ps->in[ps->pos] == 'e' || ps->in[ps->pos] == 'E')) {
		is_int = false;
		ps->pos++;
		if (ps->pos < ps->len && (ps->in[ps->pos] == '+' || ps->in[ps->pos] == '-'))
			ps->pos++;
		if (ps->pos >= ps->len || ps->in[ps->pos] < '0' || ps->in[ps->pos] > '9')
			return unexpected(ps);
		while (ps->pos < ps->len && ps->in[ps->pos] >= '0' && ps->in[ps->pos] <= '9')
			ps->pos++;
	}

	size_t n = ps->pos - start;
	if (n > NUM_MAX_CHARS)
		return fail(ps, -EBADMSG, start, "number longer than %u characters", NUM_MAX_CHARS);
	char tmp[NUM_MAX_CHARS + 1];
	memcpy(tmp, ps->in + start, n);
	tmp[n] = '\0';
	char *end;
	double d = strtod_c(tmp, &end);
	if (end != tmp + n || isinf(d))
		return fail(ps, -EBADMSG, start, "number out of range");

	memset(num, 0, sizeof(*num));
	num->d = d;
	num->is_int = is_int;
	if (is_int && !overflow) {
		if (!neg) {
			num->u = mag;
			num->fits_u64 = true;
			if (mag <= (uint64_t)INT64_MAX) {
				num->i = (int64_t)mag;
				num->fits_i64 = true;
			}
		} else if (mag == 0) { /* "-0" */
			num->fits_u64 = num->fits_i64 = true;
		} else if (mag <= (uint64_t)INT64_MAX + 1) {
			num->i = mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag;
			num->fits_i64 = true;
		}
	}
	return 0;
}

static int parse_value(struct parser *ps, unsigned int depth, struct json_value **out);

static int parse_container(struct parser *ps, unsigned int depth, struct json_value *v)
{
	bool is_obj = v->type == JSON_OBJECT;
	uint8_t close = is_obj ? '}' : ']';
	struct json_value *last = NULL;
	int r;

	if (depth >= ps->max_depth)
		return fail(ps, -E2BIG, ps->pos, "nesting deeper than %u", ps->max_depth);
	ps->pos++; /* past '{' or '[' */
	skip_ws(ps);
	if (ps->pos < ps->len && ps->in[ps->pos] == close) {
		ps->pos++;
		return 0;
	}
	for (;;) {
		const char *key = NULL;
		size_t key_len = 0;
		struct json_value *child;

		skip_ws(ps);
		if (is_obj) {
			if (ps->pos >= ps->len || ps->in[ps->pos] != '"')
				return unexpected(ps);
			size_t key_off = ps->pos;
			r = parse_string(ps, &key, &key_len);
			if (r)
				return r;
			for (const struct json_value *m = v->u.list.first; m; m = m->next)
				if (m->key_len == key_len && !memcmp(m->key, key, key_len))
					return fail(ps, -EBADMSG, key_off, "duplicate key \"%.32s\"",
						    key);
			skip_ws(ps);
			if (ps->pos >= ps->len || ps->in[ps->pos] != ':')
				return unexpected(ps);
			ps->pos++;
			skip_ws(ps);
		}
		r = parse_value(ps, depth + 1, &child);
		if (r)
			return r;
		child->key = key;
		child->key_len = key_len;
		if (last)
			last->next = child;
		else
			v->u.list.first = child;
		last = child;
		v->u.list.count++;

		skip_ws(ps);
		if (ps->pos >= ps->len)
			return unexpected(ps);
		if (ps->in[ps->pos] == ',') {
			ps->pos++;
			continue;
		}
		if (ps->in[ps->pos] == close) {
			ps->pos++;
			return 0;
		}
		return unexpected(ps);
	}
}

static int match_literal(struct parser *ps, const char *lit)
{
	size_t n = strlen(lit);

	for (size_t i = 0; i < n; i++) {
		if (ps->pos + i >= ps->len || ps->in[ps->pos + i] != (uint8_t)lit[i]) {
			ps->pos += i;
			return unexpected(ps);
		}
	}
	ps->pos += n;
	return 0;
}

/* @depth: number of containers enclosing this value. */
static int parse_value(struct parser *ps, unsigned int depth, struct json_value **out)
{
	struct json_value *v;
	int r;

	if (ps->pos >= ps->len)
		return unexpected(ps);
	switch (ps->in[ps->pos]) {
	case '{':
	case '[':
		r = new_node(ps, ps->in[ps->pos] == '{' ? JSON_OBJECT : JSON_ARRAY, &v);
		if (!r)
			r = parse_container(ps, depth, v);
		break;
	case '"':
		r = new_node(ps, JSON_STRING, &v);
		if (!r)
			r = parse_string(ps, &v->u.str.s, &v->u.str.len);
		break;
	case 't':
		r = new_node(ps, JSON_BOOL, &v);
		if (!r) {
			v->u.boolean = true;
			r = match_literal(ps, "true");
		}
		break;
	case 'f':
		r = new_node(ps, JSON_BOOL, &v);
		if (!r)
			r = match_literal(ps, "false");
		break;
	case 'n':
		r = new_node(ps, JSON_NULL, &v);
		if (!r)
			r = match_literal(ps, "null");
		break;
	case '-':
	case '0' ... '9':
		r = new_node(ps, JSON_NUMBER, &v);
		if (!r)
			r = parse_number(ps, &v->u.num);
		break;
	default:
		return unexpected(ps);
	}
	if (r)
		return r;
	*out = v;
	return 0;
}

int json_parse(struct json_doc *doc, const void *text, size_t len, const struct json_limits *lim,
	       struct json_error *err)
{
	struct parser ps = {
		.in = text,
		.len = len,
		.max_depth = lim && lim->max_depth ? lim->max_depth : JSON_DEFAULT_MAX_DEPTH,
		.max_nodes = lim && lim->max_nodes ? lim->max_nodes : JSON_DEFAULT_MAX_NODES,
		.doc = doc,
		.err = err,
	};
	size_t max_size = lim && lim->max_size ? lim->max_size : JSON_DEFAULT_MAX_SIZE;
	struct json_value *root;
	int r;

	doc->root = NULL;
	doc->blocks = NULL;
	if (err) {
		err->code = 0;
		err->offset = 0;
		err->msg[0] = '\0';
	}
	if (ps.max_depth > JSON_MAX_DEPTH_LIMIT)
		ps.max_depth = JSON_MAX_DEPTH_LIMIT;
	if (len > max_size)
		return fail(&ps, -E2BIG, max_size, "input larger than %zu bytes", max_size);
	if (len && !text)
		return fail(&ps, -EINVAL, 0, "no input");

	skip_ws(&ps);
	r = parse_value(&ps, 0, &root);
	if (!r) {
		skip_ws(&ps);
		if (ps.pos < ps.len)
			r = unexpected(&ps);
	}
	if (r) {
		json_doc_free(doc);
		return r;
	}
	doc->root = root;
	return 0;
}

const char *json_type_name(enum json_type t)
{
	switch (t) {
	case JSON_NULL: return "null";
	case JSON_BOOL: return "boolean";
	case JSON_NUMBER: return "number";
	case JSON_STRING: return "string";
	case JSON_ARRAY: return "array";
	case JSON_OBJECT: return "object";
	}
	return "?";
}

/* ------------------------------------------------------------------------------------------ */
/* Lookup                                                                                      */

const struct json_value *json_get(const struct json_value *obj, const char *key)
{
	if (!obj || obj->type != JSON_OBJECT || !key)
		return NULL;
	size_t n = strlen(key);
	for (const struct json_value *m = obj->u.list.first; m; m = m->next)
		if (m->key_len == n && !memcmp(m->key, key, n))
			return m;
	return NULL;
}

const struct json_value *json_array_at(const struct json_value *arr, size_t idx)
{
	if (!arr || arr->type != JSON_ARRAY)
		return NULL;
	const struct json_value *e = arr->u.list.first;
	while (e && idx--)
		e = e->next;
	return e;
}

const char *json_unknown_key(const struct json_value *obj, const char *const *allowed)
{
	if (!obj || obj->type != JSON_OBJECT)
		return NULL;
	for (const struct json_value *m = obj->u.list.first; m; m = m->next) {
		bool ok = false;
		for (const char *const *a = allowed; a && *a && !ok; a++)
			ok = strlen(*a) == m->key_len && !memcmp(*a, m->key, m->key_len);
		if (!ok)
			return m->key;
	}
	return NULL;
}

int json_as_string(const struct json_value *v, const char **out)
{
	if (!v || v->type != JSON_STRING || memchr(v->u.str.s, '\0', v->u.str.len))
		return -EINVAL;
	*out = v->u.str.s;
	return 0;
}

int json_as_u64(const struct json_value *v, uint64_t *out)
{
	if (!v || v->type != JSON_NUMBER || !v->u.num.is_int)
		return -EINVAL;
	if (!v->u.num.fits_u64)
		return -ERANGE;
	*out = v->u.num.u;
	return 0;
}

int json_as_i64(const struct json_value *v, int64_t *out)
{
	if (!v || v->type != JSON_NUMBER || !v->u.num.is_int)
		return -EINVAL;
	if (!v->u.num.fits_i64)
		return -ERANGE;
	*out = v->u.num.i;
	return 0;
}

int json_as_double(const struct json_value *v, double *out)
{
	if (!v || v->type != JSON_NUMBER)
		return -EINVAL;
	*out = v->u.num.d;
	return 0;
}

int json_as_bool(const struct json_value *v, bool *out)
{
	if (!v || v->type != JSON_BOOL)
		return -EINVAL;
	*out = v->u.boolean;
	return 0;
}

#define GET_MEMBER(obj, key)                                                                       \
	const struct json_value *m_ = json_get(obj, key);                                          \
	if (!m_)                                                                                   \
		return -ENOENT

int json_get_string(const struct json_value *obj, const char *key, const char **out)
{
	GET_MEMBER(obj, key);
	return json_as_string(m_, out);
}

int json_get_u64(const struct json_value *obj, const char *key, uint64_t *out)
{
	GET_MEMBER(obj, key);
	return json_as_u64(m_, out);
}

int json_get_i64(const struct json_value *obj, const char *key, int64_t *out)
{
	GET_MEMBER(obj, key);
	return json_as_i64(m_, out);
}

int json_get_double(const struct json_value *obj, const char *key, double *out)
{
	GET_MEMBER(obj, key);
	return json_as_double(m_, out);
}

int json_get_bool(const struct json_value *obj, const char *key, bool *out)
{
	GET_MEMBER(obj, key);
	return json_as_bool(m_, out);
}

/* ------------------------------------------------------------------------------------------ */
/* Writer                                                                                      */

void jw_init(struct jw *w, size_t max)
{
	memset(w, 0, sizeof(*w));
	w->max = max ? max : JW_DEFAULT_MAX;
}

void jw_free(struct jw *w)
{
	free(w->buf);
	w->buf = NULL;
	w->len = w->cap = 0;
}

void jw_reset(struct jw *w)
{
	size_t max = w->max;
	char *buf = w->buf;
	size_t cap = w->cap;

	memset(w, 0, sizeof(*w));
	w->max = max;
	w->buf = buf;
	w->cap = cap;
	if (buf)
		buf[0] = '\0';
}

int jw_error(const struct jw *w)
{
	if (w->err)
		return w->err;
	if (w->depth || w->want_value || !w->done)
		return -EINVAL;
	return 0;
}

const char *jw_cstr(const struct jw *w)
{
	return w->buf ? w->buf : "";
}

size_t jw_len(const struct jw *w)
{
	return w->len;
}

static void jw_put(struct jw *w, const char *s, size_t n)
{
	if (w->err)
		return;
	if (n > w->max - w->len) {
		w->err = -E2BIG;
		return;
	}
	if (w->len + n + 1 > w->cap) {
		size_t cap = w->cap ? w->cap : 256;
		while (cap < w->len + n + 1)
			cap *= 2;
		if (cap > w->max + 1)
			cap = w->max + 1;
		char *nb = realloc(w->buf, cap);
		if (!nb) {
			w->err = -ENOMEM;
			return;
		}
		w->buf = nb;
		w->cap = cap;
	}
	memcpy(w->buf + w->len, s, n);
	w->len += n;
	w->buf[w->len] = '\0';
}

static void jw_putc(struct jw *w, char c)
{
	jw_put(w, &c, 1);
}

#define BIT(d) (1ull << ((d) - 1))

/* Before any value: checks the position is legal and writes a separating comma. */
static bool jw_pre_value(struct jw *w)
{
	if (w->err)
		return false;
	if (w->depth == 0) {
		if (w->done) {
			w->err = -EINVAL;
			return false;
		}
		return true;
	}
	if (w->is_obj & BIT(w->depth)) {
		if (!w->want_value) {
			w->err = -EINVAL; /* a value in an object needs a key first */
			return false;
		}
		w->want_value = false;
		return true;
	}
	if (w->has_item & BIT(w->depth))
		jw_putc(w, ',');
	w->has_item |= BIT(w->depth);
	return !w->err;
}

static void jw_post_value(struct jw *w)
{
	if (w->depth == 0)
		w->done = true;
}

static void jw_begin(struct jw *w, bool obj)
{
	if (!jw_pre_value(w))
		return;
	if (w->depth >= JW_MAX_DEPTH) {
		w->err = -EINVAL;
		return;
	}
	jw_putc(w, obj ? '{' : '[');
	w->depth++;
	if (obj)
		w->is_obj |= BIT(w->depth);
	else
		w->is_obj &= ~BIT(w->depth);
	w->has_item &= ~BIT(w->depth);
}

static void jw_end(struct jw *w, bool obj)
{
	if (w->err)
		return;
	if (!w->depth || !!(w->is_obj & BIT(w->depth)) != obj || w->want_value) {
		w->err = -EINVAL;
		return;
	}
	jw_putc(w, obj ? '}' : ']');
	w->depth--;
	jw_post_value(w);
}

void jw_obj_begin(struct jw *w)
{
	jw_begin(w, true);
}

void jw_obj_end(struct jw *w)
{
	jw_end(w, true);
}

void jw_arr_begin(struct jw *w)
{
	jw_begin(w, false);
}

void jw_arr_end(struct jw *w)
{
	jw_end(w, false);
}

/* A quoted, escaped string; invalid UTF-8 becomes U+FFFD so the output is always valid. */
static void jw_put_quoted(struct jw *w, const char *str, size_t n)
{
	const uint8_t *s = (const uint8_t *)str;
	size_t i = 0, run = 0;

	jw_putc(w, '"');
	while (i < n) {
		uint8_t c = s[i];
		const char *esc = NULL;
		char ubuf[8];
		size_t l = 1;

		if (c >= 0x80) {
			l = utf8_seq_len(s + i, n - i);
			if (l) {
				i += l;
				run += l;
				continue;
			}
			esc = "\\ufffd";
			l = 1;
		} else if (c == '"') {
			esc = "\\\"";
		} else if (c == '\\') {
			esc = "\\\\";
		} else if (c == '\n') {
			esc = "\\n";
		} else if (c == '\r') {
			esc = "\\r";
		} else if (c == '\t') {
			esc = "\\t";
		} else if (c < 0x20 || c == 0x7F) {
			snprintf(ubuf, sizeof(ubuf), "\\u%04x", c);
			esc = ubuf;
		} else {
			i++;
			run++;
			continue;
		}
		jw_put(w, (const char *)s + i - run, run);
		run = 0;
		jw_put(w, esc, strlen(esc));
		i += l;
	}
	jw_put(w, (const char *)s + i - run, run);
	jw_putc(w, '"');
}

void jw_key(struct jw *w, const char *key)
{
	if (w->err)
		return;
	if (!w->depth || !(w->is_obj & BIT(w->depth)) || w->want_value || !key) {
		w->err = -EINVAL;
		return;
	}
	if (w->has_item & BIT(w->depth))
		jw_putc(w, ',');
	w->has_item |= BIT(w->depth);
	jw_put_quoted(w, key, strlen(key));
	jw_putc(w, ':');
	w->want_value = true;
}

void jw_strn(struct jw *w, const char *s, size_t n)
{
	if (!jw_pre_value(w))
		return;
	jw_put_quoted(w, s, n);
	jw_post_value(w);
}

void jw_str(struct jw *w, const char *s)
{
	if (!s)
		jw_null(w);
	else
		jw_strn(w, s, strlen(s));
}

static void jw_scalar(struct jw *w, const char *text)
{
	if (!jw_pre_value(w))
		return;
	jw_put(w, text, strlen(text));
	jw_post_value(w);
}

void jw_u64(struct jw *w, uint64_t v)
{
	char b[24];
	snprintf(b, sizeof(b), "%llu", (unsigned long long)v);
	jw_scalar(w, b);
}

void jw_i64(struct jw *w, int64_t v)
{
	char b[24];
	snprintf(b, sizeof(b), "%lld", (long long)v);
	jw_scalar(w, b);
}

void jw_double(struct jw *w, double v)
{
	char b[40];

	if (!isfinite(v)) {
		jw_null(w);
		return;
	}
	if (v == 0 && signbit(v)) {
		jw_scalar(w, "-0.0"); /* "-0" would read back as the integer 0 */
		return;
	}
	/* Shortest of %.15g..%.17g that reads back exactly, formatted in the C locale. */
	locale_t loc = get_c_locale();
	locale_t old = loc ? uselocale(loc) : (locale_t)0;
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(b, sizeof(b), "%.*g", prec, v);
		if (strtod_c(b, NULL) == v)
			break;
	}
	if (loc)
		uselocale(old);
	jw_scalar(w, b);
}

void jw_bool(struct jw *w, bool v)
{
	jw_scalar(w, v ? "true" : "false");
}

void jw_null(struct jw *w)
{
	jw_scalar(w, "null");
}

void jw_value(struct jw *w, const struct json_value *v)
{
	if (!v) {
		jw_null(w);
		return;
	}
	switch (v->type) {
	case JSON_NULL:
		jw_null(w);
		break;
	case JSON_BOOL:
		jw_bool(w, v->u.boolean);
		break;
	case JSON_NUMBER:
		if (v->u.num.is_int && v->u.num.fits_i64)
			jw_i64(w, v->u.num.i);
		else if (v->u.num.is_int && v->u.num.fits_u64)
			jw_u64(w, v->u.num.u);
		else
			jw_double(w, v->u.num.d);
		break;
	case JSON_STRING:
		jw_strn(w, v->u.str.s, v->u.str.len);
		break;
	case JSON_ARRAY:
	case JSON_OBJECT: {
		bool obj = v->type == JSON_OBJECT;
		jw_begin(w, obj);
		for (const struct json_value *c = v->u.list.first; c && !w->err; c = c->next) {
			if (obj) {
				/* keys may hold NUL: write them as members by hand */
				if (w->has_item & BIT(w->depth))
					jw_putc(w, ',');
				w->has_item |= BIT(w->depth);
				jw_put_quoted(w, c->key, c->key_len);
				jw_putc(w, ':');
				w->want_value = true;
			}
			jw_value(w, c);
		}
		jw_end(w, obj);
		break;
	}
	}
}

void jw_kv_str(struct jw *w, const char *key, const char *s)
{
	jw_key(w, key);
	jw_str(w, s);
}

void jw_kv_u64(struct jw *w, const char *key, uint64_t v)
{
	jw_key(w, key);
	jw_u64(w, v);
}

void jw_kv_i64(struct jw *w, const char *key, int64_t v)
{
	jw_key(w, key);
	jw_i64(w, v);
}

void jw_kv_double(struct jw *w, const char *key, double v)
{
	jw_key(w, key);
	jw_double(w, v);
}

void jw_kv_bool(struct jw *w, const char *key, bool v)
{
	jw_key(w, key);
	jw_bool(w, v);
}
