/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "util/parse.h"

static void test_sizes(void **state)
{
	(void)state;
	uint64_t v;
	assert_int_equal(parse_size("512M", &v), 0);
	assert_int_equal(v, 512ull << 20);
	assert_int_equal(parse_size("4G", &v), 0);
	assert_int_equal(v, 4ull << 30);
	assert_int_equal(parse_size("4GiB", &v), 0);
	assert_int_equal(v, 4ull << 30);
	assert_int_equal(parse_size("64k", &v), 0);
	assert_int_equal(v, 64ull << 10);
	assert_int_equal(parse_size("4096", &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(parse_size("0", &v), 0);
	assert_int_equal(v, 0);
}

static void test_bad_sizes(void **state)
{
	(void)state;
	uint64_t v = 7;
	assert_int_equal(parse_size("", &v), -EINVAL);
	assert_int_equal(parse_size("-1G", &v), -EINVAL);
	assert_int_equal(parse_size("G", &v), -EINVAL);
	assert_int_equal(parse_size("12X", &v), -EINVAL);
	assert_int_equal(parse_size("1GG", &v), -EINVAL);
	assert_int_equal(parse_size("1 G", &v), -EINVAL);
	assert_int_equal(parse_size("99999999999999999999", &v), -ERANGE);
	assert_int_equal(parse_size("17179869184G", &v), -ERANGE);
	assert_int_equal(parse_size(NULL, &v), -EINVAL);
	assert_int_equal(v, 7);
}

static void test_uint(void **state)
{
	(void)state;
	uint64_t v;
	assert_int_equal(parse_uint("4", 1, 64, &v), 0);
	assert_int_equal(v, 4);
	assert_int_equal(parse_uint("0", 1, 64, &v), -ERANGE);
	assert_int_equal(parse_uint("65", 1, 64, &v), -ERANGE);
	assert_int_equal(parse_uint("4x", 1, 64, &v), -EINVAL);
	assert_int_equal(parse_uint("", 1, 64, &v), -EINVAL);
	assert_int_equal(parse_uint("+4", 1, 64, &v), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sizes),
		cmocka_unit_test(test_bad_sizes),
		cmocka_unit_test(test_uint),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
