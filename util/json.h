/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_UTIL_JSON_H
#define VMSNAP_UTIL_JSON_H

/*
 * A small, strict JSON (RFC 8259) reader and a one-line JSON writer.
 *
 * Reader: json_parse() turns one JSON text from a bounded buffer (no NUL terminator needed)
 * into a tree of struct json_value allocated in the document's own arena. Depth, node count and
 * input size are limited; the first error is reported with its byte offset. Strict means:
 * no comments, no trailing commas, no leading zeros, no NaN/Infinity, no control characters
 * or invalid UTF-8 in strings, no lone surrogates, no duplicate object keys, nothing but
 * whitespace after the value.
 *
 * Numbers: an integer literal (no fraction, no exponent) also yields its exact int64/uint64
 * value when it fits one of them; every number has a double. A number whose magnitude does
 * not fit a double (1e400) is an error; one that underflows (1e-400) reads as 0 or a denormal.
 * "-0" is the integer 0 (its double is -0.0).
 *
 * Writer: struct jw builds one JSON text without newlines (strings are escaped, invalid UTF-8 is
 * replaced by U+FFFD), for control-socket lines and every `--json` output. Errors (misuse,
 * output too large, no memory) are sticky: check jw_error() once at the end.
 *
 * Neither side keeps global state; a document or writer is used by one thread at a time.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum json_type { JSON_NULL = 0, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT };

/** A number: @d always; @i / @u valid when @is_int and the matching fits_* flag are set. */
struct json_number {
	double d;
	int64_t i;
	uint64_t u;
	bool is_int;   /* written without fraction or exponent */
	bool fits_i64; /* is_int and in [INT64_MIN, INT64_MAX] */
	bool fits_u64; /* is_int and in [0, UINT64_MAX] */
};

/** One node of a parsed document. Read-only for users; owned by its struct json_doc. */
struct json_value {
	enum json_type type;
	const char *key;	       /* member name (NUL-terminated) inside an object, else NULL */
	size_t key_len;		       /* bytes of key (it may contain "\u0000") */
	const struct json_value *next; /* next element/member of the parent, or NULL */
	union {
		bool boolean;
		struct json_number num;
		struct {
			const char *s; /* NUL-terminated UTF-8; may contain NUL from "\u0000" */
			size_t len;
		} str;
		struct {
			const struct json_value *first; /* elements or members, in order */
			size_t count;
		} list; /* JSON_ARRAY and JSON_OBJECT */
	} u;
};

/** Parser limits; a zero field means the default. */
struct json_limits {
	unsigned int max_depth; /* nesting of arrays/objects, default JSON_DEFAULT_MAX_DEPTH */
	size_t max_nodes;	/* values in the tree, default JSON_DEFAULT_MAX_NODES */
	size_t max_size;	/* input bytes, default JSON_DEFAULT_MAX_SIZE */
};
#define JSON_DEFAULT_MAX_DEPTH 32
#define JSON_DEFAULT_MAX_NODES 4096
#define JSON_DEFAULT_MAX_SIZE (1u << 20)
#define JSON_MAX_DEPTH_LIMIT 256 /* max_depth is clamped to this (the parser recurses) */

/** The first parse error: code (-EBADMSG syntax, -E2BIG limit, -ENOMEM), offset, message. */
struct json_error {
	int code;
	size_t offset; /* byte offset in the input where the error was found */
	char msg[128]; /* e.g. "json: unexpected '}' at offset 17" */
};

struct json_arena_block;

/** A parsed document. @root is valid until json_doc_free(). */
struct json_doc {
	const struct json_value *root;
	struct json_arena_block *blocks; /* private */
};

/**
 * Parse exactly one JSON text from @text[0..@len) into @doc (any previous contents are not
 * freed; start from an uninitialised or freed doc). @lim may be NULL for the defaults. On error
 * returns -EBADMSG (malformed), -E2BIG (a limit was exceeded) or -ENOMEM, fills @err if not
 * NULL, and leaves @doc empty (root NULL, nothing to free but json_doc_free() is harmless).
 */
int json_parse(struct json_doc *doc, const void *text, size_t len, const struct json_limits *lim,
	       struct json_error *err);

/** Free the document's memory; @doc may be reused for json_parse(). Safe on an empty doc. */
void json_doc_free(struct json_doc *doc);

/** Name of a type ("null", "boolean", "number", "string", "array", "object"). */
const char *json_type_name(enum json_type t);

/*
 * Lookup and conversion. json_get() returns NULL when @obj is NULL or not an object or has
 * no member @key. The json_as_* functions return 0, -EINVAL on a wrong type (for strings also
 * when the string contains a NUL byte, so C callers cannot be fooled by "a\u0000b"), or -ERANGE
 * when an integer does not fit. The json_get_* forms add -ENOENT for a missing member.
 */
const struct json_value *json_get(const struct json_value *obj, const char *key);
int json_as_string(const struct json_value *v, const char **out);
int json_as_u64(const struct json_value *v, uint64_t *out);
int json_as_i64(const struct json_value *v, int64_t *out);
int json_as_double(const struct json_value *v, double *out);
int json_as_bool(const struct json_value *v, bool *out);
int json_get_string(const struct json_value *obj, const char *key, const char **out);
int json_get_u64(const struct json_value *obj, const char *key, uint64_t *out);
int json_get_i64(const struct json_value *obj, const char *key, int64_t *out);
int json_get_double(const struct json_value *obj, const char *key, double *out);
int json_get_bool(const struct json_value *obj, const char *key, bool *out);

/** Element @idx of an array (O(idx)), or NULL. */
const struct json_value *json_array_at(const struct json_value *arr, size_t idx);

/**
 * The first member name of object @obj that is not in the NULL-terminated list @allowed,
 * or NULL when all are allowed (or @obj is not an object). For rejecting unknown arguments.
 */
const char *json_unknown_key(const struct json_value *obj, const char *const *allowed);

/* ------------------------------------------------------------------------------------------ */
/* Writer                                                                                      */

#define JW_MAX_DEPTH 64
#define JW_DEFAULT_MAX (1u << 20)

/** A JSON text being built. Fields are private; use the functions. */
struct jw {
	char *buf;
	size_t len;
	size_t cap;
	size_t max;	   /* output limit in bytes (the text, without the terminating NUL) */
	int err;	   /* sticky: 0, -EINVAL (misuse), -E2BIG (over max), -ENOMEM */
	unsigned int depth; /* open containers */
	uint64_t is_obj;   /* bit d-1: container at depth d is an object */
	uint64_t has_item; /* bit d-1: container at depth d has an element already */
	bool want_value;   /* a key was written, its value is next */
	bool done;	   /* a complete top-level value has been written */
};

/** Start an empty writer limited to @max bytes of output (0: JW_DEFAULT_MAX). No allocation. */
void jw_init(struct jw *w, size_t max);
/** Free the buffer; jw_init() again before reuse. */
void jw_free(struct jw *w);
/** Forget the contents and the error, keep the buffer and limit. */
void jw_reset(struct jw *w);
/** 0 or the sticky error. Also -EINVAL if containers are still open or nothing was written. */
int jw_error(const struct jw *w);
/** The text so far, NUL-terminated ("" when empty). Valid until the next write or jw_free(). */
const char *jw_cstr(const struct jw *w);
/** Length of the text in bytes. */
size_t jw_len(const struct jw *w);

void jw_obj_begin(struct jw *w);
void jw_obj_end(struct jw *w);
void jw_arr_begin(struct jw *w);
void jw_arr_end(struct jw *w);
/** Member name inside an object; a value must follow. */
void jw_key(struct jw *w, const char *key);
/** A string value (NULL writes null). */
void jw_str(struct jw *w, const char *s);
/** A string value of @n bytes (may contain NUL, written as \u0000). */
void jw_strn(struct jw *w, const char *s, size_t n);
void jw_u64(struct jw *w, uint64_t v);
void jw_i64(struct jw *w, int64_t v);
/** A double, shortest form that reads back exactly; NaN and infinities are written as null. */
void jw_double(struct jw *w, double v);
void jw_bool(struct jw *w, bool v);
void jw_null(struct jw *w);
/** Copy a parsed value (recursively). */
void jw_value(struct jw *w, const struct json_value *v);

/* key + value shorthands for the common case */
void jw_kv_str(struct jw *w, const char *key, const char *s);
void jw_kv_u64(struct jw *w, const char *key, uint64_t v);
void jw_kv_i64(struct jw *w, const char *key, int64_t v);
void jw_kv_double(struct jw *w, const char *key, double v);
void jw_kv_bool(struct jw *w, const char *key, bool v);

#endif
