/* SPDX-License-Identifier: MIT */
#include "formats/codec.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void enc_init(struct enc *e)
{
	*e = (struct enc){ 0 };
}

void enc_free(struct enc *e)
{
	free(e->buf);
	*e = (struct enc){ 0 };
}

void enc_reset(struct enc *e)
{
	e->len = 0;
	e->err = 0;
}

/* Room for @n more bytes, or latch -ENOMEM (also on size_t overflow) and return NULL. */
static uint8_t *enc_room(struct enc *e, size_t n)
{
	if (e->err)
		return NULL;
	if (n > SIZE_MAX - e->len) {
		e->err = -ENOMEM;
		return NULL;
	}
	size_t need = e->len + n;
	if (need > e->cap) {
		size_t cap = e->cap ? e->cap : 64;
		while (cap < need) {
			if (cap > SIZE_MAX / 2) {
				cap = need;
				break;
			}
			cap *= 2;
		}
		uint8_t *nb = realloc(e->buf, cap);
		if (!nb) {
			e->err = -ENOMEM;
			return NULL;
		}
		e->buf = nb;
		e->cap = cap;
	}
	uint8_t *p = e->buf + e->len;
	e->len = need;
	return p;
}

uint8_t *enc_append(struct enc *e, size_t n)
{
	return enc_room(e, n);
}

static void enc_le(struct enc *e, uint64_t v, unsigned int n)
{
	uint8_t *p = enc_room(e, n);
	if (!p)
		return;
	for (unsigned int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

void enc_u8(struct enc *e, uint8_t v)
{
	enc_le(e, v, 1);
}

void enc_u16(struct enc *e, uint16_t v)
{
	enc_le(e, v, 2);
}

void enc_u32(struct enc *e, uint32_t v)
{
	enc_le(e, v, 4);
}

void enc_u64(struct enc *e, uint64_t v)
{
	enc_le(e, v, 8);
}

void enc_bytes(struct enc *e, const void *p, size_t n)
{
	uint8_t *d = enc_room(e, n);
	if (d && n)
		memcpy(d, p, n);
}

void enc_str(struct enc *e, const char *s)
{
	size_t n = s ? strlen(s) : 0;
	if (n > UINT32_MAX) {
		if (!e->err)
			e->err = -ENOMEM;
		return;
	}
	enc_u32(e, (uint32_t)n);
	enc_bytes(e, s, n);
}

int enc_error(const struct enc *e)
{
	return e->err;
}

void dec_init(struct dec *d, const void *p, size_t len)
{
	*d = (struct dec){ .p = p, .len = p ? len : 0 };
}

/* The next @n bytes, or NULL with -EBADMSG latched. Nothing is consumed after an error. */
static const uint8_t *dec_take(struct dec *d, size_t n)
{
	if (d->err)
		return NULL;
	if (n > d->len - d->pos) {
		d->err = -EBADMSG;
		return NULL;
	}
	const uint8_t *p = d->p + d->pos;
	d->pos += n;
	return p;
}

static uint64_t dec_le(struct dec *d, unsigned int n)
{
	const uint8_t *p = dec_take(d, n);
	uint64_t v = 0;
	if (!p)
		return 0;
	for (unsigned int i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

uint8_t dec_u8_val(struct dec *d)
{
	return (uint8_t)dec_le(d, 1);
}

uint16_t dec_u16_val(struct dec *d)
{
	return (uint16_t)dec_le(d, 2);
}

uint32_t dec_u32_val(struct dec *d)
{
	return (uint32_t)dec_le(d, 4);
}

uint64_t dec_u64_val(struct dec *d)
{
	return dec_le(d, 8);
}

void dec_u8(struct dec *d, uint8_t *v)
{
	*v = dec_u8_val(d);
}

void dec_u16(struct dec *d, uint16_t *v)
{
	*v = dec_u16_val(d);
}

void dec_u32(struct dec *d, uint32_t *v)
{
	*v = dec_u32_val(d);
}

void dec_u64(struct dec *d, uint64_t *v)
{
	*v = dec_u64_val(d);
}

void dec_bytes(struct dec *d, void *p, size_t n)
{
	const uint8_t *s = dec_take(d, n);
	if (!n)
		return;
	if (s)
		memcpy(p, s, n);
	else
		memset(p, 0, n);
}

void dec_str(struct dec *d, char *buf, size_t size)
{
	uint32_t n = dec_u32_val(d);
	const uint8_t *s = NULL;

	if (!d->err && (size == 0 || n >= size))
		d->err = -EBADMSG;
	else
		s = dec_take(d, n);
	if (s && memchr(s, 0, n)) {
		d->err = -EBADMSG;
		s = NULL;
	}
	if (!size)
		return;
	if (s) {
		memcpy(buf, s, n);
		buf[n] = 0;
	} else {
		buf[0] = 0;
	}
}

const void *dec_ptr(struct dec *d, size_t n)
{
	return dec_take(d, n);
}

size_t dec_remaining(const struct dec *d)
{
	return d->err ? 0 : d->len - d->pos;
}

void dec_fail(struct dec *d, int err)
{
	if (!d->err)
		d->err = err;
}

int dec_error(const struct dec *d)
{
	return d->err;
}
