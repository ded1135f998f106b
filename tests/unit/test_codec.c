/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "formats/codec.h"
#include "formats/crc32c.h"

static void test_round_trip(void **state)
{
	struct enc e;
	struct dec d;
	char s[16];
	uint8_t raw[3];

	enc_init(&e);
	enc_u8(&e, 0xab);
	enc_u16(&e, 0x1234);
	enc_u32(&e, 0xdeadbeef);
	enc_u64(&e, 0x0102030405060708ull);
	enc_bytes(&e, "xyz", 3);
	enc_str(&e, "hello");
	enc_str(&e, NULL);
	assert_int_equal(enc_error(&e), 0);
	assert_int_equal(e.len, 1 + 2 + 4 + 8 + 3 + 4 + 5 + 4);
	/* Little-endian on the wire, whatever the host. */
	static const uint8_t head[] = { 0xab, 0x34, 0x12, 0xef, 0xbe, 0xad, 0xde,
					0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01 };
	assert_memory_equal(e.buf, head, sizeof(head));

	dec_init(&d, e.buf, e.len);
	assert_int_equal(dec_u8_val(&d), 0xab);
	uint16_t v16;
	dec_u16(&d, &v16);
	assert_int_equal(v16, 0x1234);
	assert_int_equal(dec_u32_val(&d), 0xdeadbeef);
	assert_true(dec_u64_val(&d) == 0x0102030405060708ull);
	dec_bytes(&d, raw, 3);
	assert_memory_equal(raw, "xyz", 3);
	dec_str(&d, s, sizeof(s));
	assert_string_equal(s, "hello");
	dec_str(&d, s, sizeof(s));
	assert_string_equal(s, "");
	assert_int_equal(dec_remaining(&d), 0);
	assert_int_equal(dec_error(&d), 0);
	enc_free(&e);
}

static void test_short_read_latches(void **state)
{
	static const uint8_t buf[] = { 1, 2, 3 };
	struct dec d;
	uint64_t v64 = 99;

	dec_init(&d, buf, sizeof(buf));
	assert_int_equal(dec_u16_val(&d), 0x0201);
	dec_u64(&d, &v64); /* only 1 byte left */
	assert_true(v64 == 0);
	assert_int_equal(dec_error(&d), -EBADMSG);
	/* Sticky: even a read that would fit now yields zero. */
	assert_int_equal(dec_u8_val(&d), 0);
	assert_int_equal(dec_remaining(&d), 0);
	assert_null(dec_ptr(&d, 1));
	uint8_t out[4] = { 9, 9, 9, 9 };
	dec_bytes(&d, out, 4);
	assert_memory_equal(out, "\0\0\0\0", 4);
	dec_fail(&d, -EPROTO); /* first error wins */
	assert_int_equal(dec_error(&d), -EBADMSG);

	/* Every prefix of a u32 is short. */
	for (size_t n = 0; n < 4; n++) {
		dec_init(&d, buf, n);
		dec_u32_val(&d);
		assert_int_equal(dec_error(&d), -EBADMSG);
	}
	dec_init(&d, NULL, 0);
	assert_int_equal(dec_remaining(&d), 0);

	dec_init(&d, buf, sizeof(buf));
	dec_fail(&d, -EPROTO);
	assert_int_equal(dec_error(&d), -EPROTO);
}

static void test_dec_str_limits(void **state)
{
	struct enc e;
	struct dec d;
	char s[6];

	enc_init(&e);
	enc_str(&e, "12345"); /* fits a 6-byte buffer with its NUL */
	enc_str(&e, "123456");
	dec_init(&d, e.buf, e.len);
	dec_str(&d, s, sizeof(s));
	assert_string_equal(s, "12345");
	assert_int_equal(dec_error(&d), 0);
	dec_str(&d, s, sizeof(s)); /* too long */
	assert_int_equal(dec_error(&d), -EBADMSG);
	assert_string_equal(s, "");

	/* An embedded NUL is refused. */
	enc_reset(&e);
	enc_u32(&e, 3);
	enc_bytes(&e, "a\0b", 3);
	dec_init(&d, e.buf, e.len);
	dec_str(&d, s, sizeof(s));
	assert_int_equal(dec_error(&d), -EBADMSG);

	/* A length past the end of the buffer (a huge claimed length allocates nothing). */
	enc_reset(&e);
	enc_u32(&e, 0xffffffffu);
	dec_init(&d, e.buf, e.len);
	char big[64];
	dec_str(&d, big, sizeof(big));
	assert_int_equal(dec_error(&d), -EBADMSG);
	enc_reset(&e);
	enc_u32(&e, 10);
	enc_bytes(&e, "abc", 3);
	dec_init(&d, e.buf, e.len);
	dec_str(&d, big, sizeof(big));
	assert_int_equal(dec_error(&d), -EBADMSG);
	assert_string_equal(big, "");

	/* Size 0 buffer: nothing fits. */
	enc_reset(&e);
	enc_str(&e, "");
	dec_init(&d, e.buf, e.len);
	dec_str(&d, s, 0);
	assert_int_equal(dec_error(&d), -EBADMSG);
	enc_free(&e);
}

static void test_enc_growth(void **state)
{
	struct enc e;

	enc_init(&e);
	assert_null(e.buf);
	for (uint32_t i = 0; i < 100000; i++)
		enc_u32(&e, i);
	assert_int_equal(enc_error(&e), 0);
	assert_int_equal(e.len, 400000);
	assert_true(e.cap >= e.len);
	struct dec d;
	dec_init(&d, e.buf, e.len);
	for (uint32_t i = 0; i < 100000; i++)
		assert_int_equal(dec_u32_val(&d), i);

	enc_reset(&e);
	assert_int_equal(e.len, 0);
	assert_non_null(e.buf);

	/* Overflowing size_t latches -ENOMEM and later writes do nothing. */
	e.len = SIZE_MAX - 2;
	size_t keep = e.len;
	enc_u32(&e, 1);
	assert_int_equal(enc_error(&e), -ENOMEM);
	enc_u8(&e, 1);
	assert_int_equal(e.len, keep);
	e.len = 0;
	enc_free(&e);
	enc_init(&e);
	enc_bytes(&e, NULL, 0);
	assert_int_equal(enc_error(&e), 0);
	enc_free(&e);
}

static void test_crc32c_vectors(void **state)
{
	uint8_t buf[32];

	assert_int_equal(crc32c(0, "123456789", 9), 0xE3069283u);
	assert_int_equal(crc32c_sw(0, "123456789", 9), 0xE3069283u);
	/* RFC 3720 (iSCSI) B.4 vectors. */
	memset(buf, 0, sizeof(buf));
	assert_int_equal(crc32c(0, buf, 32), 0x8A9136AAu);
	memset(buf, 0xff, sizeof(buf));
	assert_int_equal(crc32c(0, buf, 32), 0x62A8AB43u);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)i;
	assert_int_equal(crc32c(0, buf, 32), 0x46DD794Eu);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)(31 - i);
	assert_int_equal(crc32c_sw(0, buf, 32), 0x113FDB5Cu);
	assert_int_equal(crc32c(0, NULL, 0), 0);
}

static void test_crc32c_hw_matches_sw(void **state)
{
	enum { N = 8192 };
	uint8_t *buf = malloc(N + 16);
	uint64_t x = 0x9e3779b97f4a7c15ull;

	for (size_t i = 0; i < N + 16; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		buf[i] = (uint8_t)x;
	}
	/* Every alignment and many lengths, and incremental extension. */
	for (size_t off = 0; off < 16; off++)
		for (size_t len = 0; len < N; len = len * 3 / 2 + 1) {
			uint32_t a = crc32c(0, buf + off, len), b = crc32c_sw(0, buf + off, len);
			assert_int_equal(a, b);
			size_t h = len / 3;
			assert_int_equal(crc32c(crc32c(0, buf + off, h), buf + off + h, len - h), a);
		}
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_short_read_latches),
		cmocka_unit_test(test_dec_str_limits),
		cmocka_unit_test(test_enc_growth),
		cmocka_unit_test(test_crc32c_vectors),
		cmocka_unit_test(test_crc32c_hw_matches_sw),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
