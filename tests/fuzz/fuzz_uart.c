/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for the 16550A model: the input is a saved state to load (which must be
 * rejected or accepted without harm, and if accepted must save back to the same bytes)
 * followed by a script of port accesses and host input run against the UART.
 *
 * Layout: u8 version, u8 state_len, state_len bytes of state, then 3-byte script steps
 * {op, arg, value}: op % 4 == 0 write port arg%8 (+ width), 1 read, 2 host input of
 * (arg % 20) copies of value, 3 save/load round trip.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "formats/codec.h"
#include "util/log.h"
#include "vmm/uart.h"

static unsigned long sink_count;

static void fz_tx(void *opaque, const uint8_t *buf, size_t n)
{
	for (size_t i = 0; i < n; i++)
		sink_count += buf[i];
}

static void fz_set_irq(void *opaque, int level)
{
	if (level != 0 && level != 1)
		abort();
}

static const struct uart_ops fz_ops = { .tx = fz_tx, .set_irq = fz_set_irq };

/* A loaded state must save back to exactly the bytes it came from. */
static void roundtrip(struct uart *u)
{
	struct enc e1, e2;
	struct dec d;
	struct uart *v = uart_create(&fz_ops, NULL);

	enc_init(&e1);
	enc_init(&e2);
	if (uart_save(u, &e1))
		abort();
	if (!v)
		abort();
	dec_init(&d, e1.buf, e1.len);
	if (uart_load(v, &d, UART_STATE_VERSION) || uart_save(v, &e2))
		abort();
	if (e1.len != e2.len || memcmp(e1.buf, e2.buf, e1.len))
		abort();
	if (uart_irq_level(v) != uart_irq_level(u))
		abort();
	uart_destroy(v);
	enc_free(&e1);
	enc_free(&e2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct uart *u;
	struct dec d;
	size_t pos = 0;

	/* Rejected states are logged as errors; keep the run quiet. */
	log_set_level((enum log_level)-1);
	u = uart_create(&fz_ops, NULL);
	if (!u)
		abort();

	if (size >= 2) {
		unsigned int version = data[0] % 4;
		size_t slen = data[1];
		if (slen > size - 2)
			slen = size - 2;
		dec_init(&d, data + 2, slen);
		if (uart_load(u, &d, version) == 0)
			roundtrip(u);
		pos = 2 + slen;
	}

	for (; pos + 3 <= size; pos += 3) {
		uint8_t op = data[pos], arg = data[pos + 1], val = data[pos + 2];
		static const unsigned int widths[4] = { 1, 2, 4, 1 };
		uint8_t buf[20];
		switch (op % 4) {
		case 0:
			memset(buf, val, 4);
			uart_io(u, arg % 8, buf, widths[(op >> 2) % 4], true);
			break;
		case 1:
			uart_io(u, arg % 8, buf, widths[(op >> 2) % 4], false);
			break;
		case 2:
			memset(buf, val, sizeof(buf));
			if (uart_receive(u, buf, arg % 20) > arg % 20u)
				abort();
			break;
		case 3:
			roundtrip(u);
			break;
		}
	}
	roundtrip(u);
	uart_destroy(u);
	return 0;
}
