/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_FORMATS_CODEC_H
#define VMSNAP_FORMATS_CODEC_H

/*
 * Little-endian fixed-width encoder and bounds-checked decoder with sticky errors, used for
 * every piece of state that crosses a boundary (image sections, migration stream records,
 * device state). Straight-line code encodes or decodes many fields and checks the error once.
 */

#include <stddef.h>
#include <stdint.h>

/** Growable output buffer. The first failure (out of memory) is latched in err. */
struct enc {
	uint8_t *buf;
	size_t len;
	size_t cap;
	int err; /* 0 or -ENOMEM */
};

/** Start an empty encoder (no allocation until the first write). */
void enc_init(struct enc *e);
/** Free the buffer; the encoder may be reused after enc_init(). */
void enc_free(struct enc *e);
/** Forget the contents, keep the allocation, clear the error. */
void enc_reset(struct enc *e);
void enc_u8(struct enc *e, uint8_t v);
void enc_u16(struct enc *e, uint16_t v);
void enc_u32(struct enc *e, uint32_t v);
void enc_u64(struct enc *e, uint64_t v);
void enc_bytes(struct enc *e, const void *p, size_t n);
/** @n more bytes for the caller to fill in place, or NULL with -ENOMEM latched. */
uint8_t *enc_append(struct enc *e, size_t n);
/** A string as u32 length + bytes (no terminator). NULL encodes as the empty string. */
void enc_str(struct enc *e, const char *s);
/** 0 or the latched error. */
int enc_error(const struct enc *e);

/** Reader over a fixed buffer. A read past the end latches -EBADMSG and yields zeros. */
struct dec {
	const uint8_t *p;
	size_t len;
	size_t pos;
	int err; /* 0 or -EBADMSG */
};

void dec_init(struct dec *d, const void *p, size_t len);
void dec_u8(struct dec *d, uint8_t *v);
void dec_u16(struct dec *d, uint16_t *v);
void dec_u32(struct dec *d, uint32_t *v);
void dec_u64(struct dec *d, uint64_t *v);
uint8_t dec_u8_val(struct dec *d);
uint16_t dec_u16_val(struct dec *d);
uint32_t dec_u32_val(struct dec *d);
uint64_t dec_u64_val(struct dec *d);
void dec_bytes(struct dec *d, void *p, size_t n);
/**
 * Read a string written by enc_str() into @buf (NUL-terminated). A length >= @size, or a NUL
 * inside, latches -EBADMSG.
 */
void dec_str(struct dec *d, char *buf, size_t size);
/** Pointer to the next @n bytes without copying, or NULL (and -EBADMSG latched). */
const void *dec_ptr(struct dec *d, size_t n);
/** Bytes not yet read. */
size_t dec_remaining(const struct dec *d);
/** Latch @err (e.g. -EBADMSG for a field with an impossible value) unless one is latched. */
void dec_fail(struct dec *d, int err);
/** 0 or the latched error. */
int dec_error(const struct dec *d);

#endif
