/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "formats/codec.h"
#include "vmm/i8042.h"

static unsigned int resets;

static void on_reset(void *opaque)
{
	assert_ptr_equal(opaque, &resets);
	resets++;
}

static int setup(void **state)
{
	struct i8042 *k = i8042_create(on_reset, &resets);
	assert_non_null(k);
	resets = 0;
	*state = k;
	return 0;
}

static int teardown(void **state)
{
	i8042_destroy(*state);
	return 0;
}

static void cmd(struct i8042 *k, uint8_t v)
{
	i8042_io_cmd(k, 0, &v, 1, true);
}

static void data_out(struct i8042 *k, uint8_t v)
{
	i8042_io_data(k, 0, &v, 1, true);
}

static uint8_t status(struct i8042 *k)
{
	uint8_t v;
	i8042_io_cmd(k, 0, &v, 1, false);
	return v;
}

static uint8_t data_in(struct i8042 *k)
{
	uint8_t v;
	i8042_io_data(k, 0, &v, 1, false);
	return v;
}

static void test_status_idle(void **state)
{
	struct i8042 *k = *state;
	uint8_t s = status(k);
	assert_false(s & 0x01); /* no data */
	assert_false(s & 0x02); /* input buffer never full: kb_wait() passes */
	assert_true(s & 0x04);	/* system flag */
	/* Reads of 0x60 with nothing pending are stable, not all-ones garbage. */
	assert_int_equal(data_in(k), data_in(k));
	data_out(k, 0xf2); /* to the absent keyboard: dropped */
	assert_false(status(k) & 0x01);
}

static void test_reset_fe(void **state)
{
	struct i8042 *k = *state;
	cmd(k, 0xfe);
	assert_int_equal(resets, 1);
	cmd(k, 0xff); /* pulse nothing */
	cmd(k, 0xf1); /* bit 0 set: reset line not pulsed */
	assert_int_equal(resets, 1);
	cmd(k, 0xf0);
	assert_int_equal(resets, 2);
	/* Output port write with bit 0 clear resets too; with it set (A20 games) it does not. */
	cmd(k, 0xd1);
	data_out(k, 0xdf);
	assert_int_equal(resets, 2);
	cmd(k, 0xd0);
	assert_int_equal(data_in(k), 0xdf);
	cmd(k, 0xd1);
	data_out(k, 0xde);
	assert_int_equal(resets, 3);
}

static void test_self_test_and_interface(void **state)
{
	struct i8042 *k = *state;
	cmd(k, 0xaa);
	assert_true(status(k) & 0x01);
	assert_int_equal(data_in(k), 0x55);
	assert_false(status(k) & 0x01);
	cmd(k, 0xab);
	assert_int_equal(data_in(k), 0x00);
	cmd(k, 0xa9);
	assert_int_not_equal(data_in(k), 0x00); /* no AUX port */
	assert_true(status(k) & 0x08);		/* last write was a command */
	/* Multi-byte and out-of-range accesses read all-ones beyond the port. */
	uint8_t w[2];
	i8042_io_cmd(k, 0, w, 2, false);
	assert_int_equal(w[1], 0xff);
}

static void test_command_byte(void **state)
{
	struct i8042 *k = *state;
	cmd(k, 0x20);
	uint8_t ctr = data_in(k);
	assert_int_equal(ctr, 0x45);
	cmd(k, 0x60);
	data_out(k, 0x30); /* ints off, both ports disabled, system flag clear */
	assert_false(status(k) & 0x08);
	assert_false(status(k) & 0x04);
	cmd(k, 0x20);
	assert_int_equal(data_in(k), 0x30);
	cmd(k, 0xae);
	cmd(k, 0xa8);
	cmd(k, 0x20);
	assert_int_equal(data_in(k), 0x00);
	cmd(k, 0xad);
	cmd(k, 0x20);
	assert_int_equal(data_in(k), 0x10);
	/* A20 through the output port. */
	cmd(k, 0xdd);
	cmd(k, 0xd0);
	assert_int_equal(data_in(k) & 0x02, 0);
	cmd(k, 0xdf);
	cmd(k, 0xd0);
	assert_int_equal(data_in(k) & 0x03, 0x03);
}

static void test_save_load(void **state)
{
	struct i8042 *k = *state;
	struct i8042 *k2;
	struct enc e, e2;
	struct dec d;

	cmd(k, 0x60); /* leave a command waiting for its byte */
	enc_init(&e);
	assert_int_equal(i8042_save(k, &e), 0);
	k2 = i8042_create(on_reset, &resets);
	assert_non_null(k2);
	dec_init(&d, e.buf, e.len);
	assert_int_equal(i8042_load(k2, &d, I8042_STATE_VERSION), 0);
	enc_init(&e2);
	assert_int_equal(i8042_save(k2, &e2), 0);
	assert_int_equal(e.len, e2.len);
	assert_memory_equal(e.buf, e2.buf, e.len);
	data_out(k2, 0x01);
	cmd(k2, 0x20);
	assert_int_equal(data_in(k2), 0x01);

	dec_init(&d, e.buf, e.len);
	assert_int_equal(i8042_load(k2, &d, I8042_STATE_VERSION + 1), -ENOTSUP);
	for (size_t len = 0; len < e.len; len++) {
		dec_init(&d, e.buf, len);
		assert_int_equal(i8042_load(k2, &d, I8042_STATE_VERSION), -EBADMSG);
	}
	uint8_t bad[8];
	memcpy(bad, e.buf, e.len);
	bad[0] = 0x80; /* status bit that is not state */
	dec_init(&d, bad, e.len);
	assert_int_equal(i8042_load(k2, &d, I8042_STATE_VERSION), -EBADMSG);
	memcpy(bad, e.buf, e.len);
	bad[4] = 0xaa; /* not a command that takes data */
	dec_init(&d, bad, e.len);
	assert_int_equal(i8042_load(k2, &d, I8042_STATE_VERSION), -EBADMSG);
	memcpy(bad, e.buf, e.len);
	bad[2] = 0x02; /* reset held */
	dec_init(&d, bad, e.len);
	assert_int_equal(i8042_load(k2, &d, I8042_STATE_VERSION), -EBADMSG);

	enc_free(&e);
	enc_free(&e2);
	i8042_destroy(k2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_status_idle, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reset_fe, setup, teardown),
		cmocka_unit_test_setup_teardown(test_self_test_and_interface, setup, teardown),
		cmocka_unit_test_setup_teardown(test_command_byte, setup, teardown),
		cmocka_unit_test_setup_teardown(test_save_load, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
