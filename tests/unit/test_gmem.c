/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "vmm/gmem.h"
#include "vmm/iobus.h"

static void test_layout_small(void **state)
{
	(void)state;
	struct gmem m;
	assert_int_equal(gmem_layout(&m, 256ull << 20), 0);
	assert_int_equal(m.nregions, 1);
	assert_int_equal(m.regions[0].gpa, 0);
	assert_int_equal(m.regions[0].size, 256ull << 20);
}

static void test_layout_split(void **state)
{
	(void)state;
	struct gmem m;
	assert_int_equal(gmem_layout(&m, 4ull << 30), 0);
	assert_int_equal(m.nregions, 2);
	assert_int_equal(m.regions[0].size, GMEM_LOW_END);
	assert_int_equal(m.regions[1].gpa, GMEM_HIGH_START);
	assert_int_equal(m.regions[1].size, (4ull << 30) - GMEM_LOW_END);
	assert_int_equal(m.regions[1].offset, GMEM_LOW_END);
	assert_int_equal(gmem_offset(&m, GMEM_HIGH_START + 5), GMEM_LOW_END + 5);
	assert_int_equal(gmem_offset(&m, GMEM_LOW_END), UINT64_MAX);
	assert_int_equal(gmem_layout(&m, 0), -EINVAL);
	assert_int_equal(gmem_layout(&m, 4097), -EINVAL);
}

static void test_bounds(void **state)
{
	(void)state;
	struct gmem m;
	assert_int_equal(gmem_create(&m, 1ull << 20, GMEM_MEMFD), 0);
	assert_non_null(gmem_ptr(&m, 0, 1ull << 20));
	assert_null(gmem_ptr(&m, 0, (1ull << 20) + 1));
	assert_null(gmem_ptr(&m, (1ull << 20) - 1, 2));
	assert_null(gmem_ptr(&m, UINT64_MAX, 2));
	assert_null(gmem_ptr(&m, 16, UINT64_MAX));
	uint32_t v = 0x12345678, r = 0;
	assert_int_equal(gmem_write(&m, 4096, &v, 4), 0);
	assert_int_equal(gmem_read(&m, 4096, &r, 4), 0);
	assert_int_equal(r, v);
	assert_int_equal(gmem_write(&m, (1ull << 20) - 2, &v, 4), -EFAULT);
	gmem_free(&m);
	gmem_free(&m); /* idempotent */
}

static void test_anon_and_bitmap(void **state)
{
	(void)state;
	struct gmem m;
	enum gmem_backend b;
	uint64_t bm[4];
	assert_int_equal(gmem_backend_parse("anon", &b), 0);
	assert_int_equal(b, GMEM_ANON);
	assert_int_equal(gmem_backend_parse(NULL, &b), 0);
	assert_int_equal(b, GMEM_MEMFD);
	assert_int_equal(gmem_backend_parse("hugetlb", &b), -EINVAL);

	/* memfd: only the touched page shows up. */
	assert_int_equal(gmem_create(&m, 1ull << 20, GMEM_MEMFD), 0);
	memset(bm, 0, sizeof(bm));
	assert_int_equal(gmem_nonzero_bitmap(&m, bm), 0);
	assert_int_equal(bm[0] | bm[1] | bm[2] | bm[3], 0);
	m.host[70 * 4096 + 5] = 1;
	assert_int_equal(gmem_nonzero_bitmap(&m, bm), 0);
	assert_int_equal(bm[1], 1ull << 6);
	assert_int_equal(bm[0] | bm[2] | bm[3], 0);
	gmem_free(&m);

	/* anon: no holes to find, every page may hold data. */
	assert_int_equal(gmem_create(&m, 1ull << 20, GMEM_ANON), 0);
	assert_int_equal(m.fd, -1);
	m.host[(1ull << 20) - 1] = 7;
	assert_int_equal(m.host[(1ull << 20) - 1], 7);
	memset(bm, 0, sizeof(bm));
	assert_int_equal(gmem_nonzero_bitmap(&m, bm), 0);
	assert_int_equal(bm[0] & bm[1] & bm[2] & bm[3], ~0ull);
	gmem_free(&m);
}

static unsigned int hits;
static uint64_t last_off;
static void handler(void *opaque, uint64_t offset, uint8_t *data, unsigned int len, bool is_write)
{
	(void)opaque;
	hits++;
	last_off = offset;
	if (!is_write)
		memset(data, 0x5a, len);
}

static void test_iobus(void **state)
{
	(void)state;
	struct iobus bus = { 0 };
	uint8_t d[8];
	assert_int_equal(iobus_register(&bus, IO_SPACE_PIO, 0x3f8, 8, handler, NULL, "a"), 0);
	assert_int_equal(iobus_register(&bus, IO_SPACE_PIO, 0x3ff, 1, handler, NULL, "b"), -EEXIST);
	assert_int_equal(iobus_register(&bus, IO_SPACE_MMIO, 0x3f8, 8, handler, NULL, "c"), 0);
	assert_int_equal(iobus_register(&bus, IO_SPACE_PIO, 0, 0, handler, NULL, "d"), -EINVAL);
	assert_true(iobus_dispatch(&bus, IO_SPACE_PIO, 0x3fd, d, 1, false));
	assert_int_equal(last_off, 5);
	assert_int_equal(d[0], 0x5a);
	assert_false(iobus_dispatch(&bus, IO_SPACE_PIO, 0x400, d, 4, false));
	assert_int_equal(d[0], 0xff);
	assert_int_equal(d[3], 0xff);
	assert_int_equal(hits, 1);
	for (int i = 0; bus.n < IOBUS_MAX_HANDLERS; i++)
		assert_int_equal(iobus_register(&bus, IO_SPACE_PIO, 0x1000 + i, 1, handler, NULL, "x"), 0);
	assert_int_equal(iobus_register(&bus, IO_SPACE_PIO, 0x9000, 1, handler, NULL, "y"), -ENOSPC);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_layout_small),
		cmocka_unit_test(test_layout_split),
		cmocka_unit_test(test_bounds),
		cmocka_unit_test(test_iobus),
		cmocka_unit_test(test_anon_and_bitmap),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
