/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "formats/codec.h"
#include "vmm/uart.h"

/* What the callbacks saw. */
struct sink {
	uint8_t out[256];
	unsigned int nout;
	int levels[64]; /* every level reported, in order */
	unsigned int nlevels;
	unsigned int rx_ready;
};

static void sink_tx(void *opaque, const uint8_t *buf, size_t n)
{
	struct sink *s = opaque;
	for (size_t i = 0; i < n && s->nout < sizeof(s->out); i++)
		s->out[s->nout++] = buf[i];
}

static void sink_set_irq(void *opaque, int level)
{
	struct sink *s = opaque;
	if (s->nlevels < 64)
		s->levels[s->nlevels++] = level;
}

static void sink_rx_ready(void *opaque)
{
	struct sink *s = opaque;
	s->rx_ready++;
}

static const struct uart_ops ops = {
	.tx = sink_tx,
	.set_irq = sink_set_irq,
	.rx_ready = sink_rx_ready,
};

struct fix {
	struct uart *u;
	struct sink s;
};

static int setup(void **state)
{
	struct fix *f = test_calloc(1, sizeof(*f));
	f->u = uart_create(&ops, &f->s);
	assert_non_null(f->u);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fix *f = *state;
	uart_destroy(f->u);
	test_free(f);
	return 0;
}

static void out8(struct uart *u, unsigned int reg, uint8_t v)
{
	uart_io(u, reg, &v, 1, true);
}

static uint8_t in8(struct uart *u, unsigned int reg)
{
	uint8_t v = 0;
	uart_io(u, reg, &v, 1, false);
	return v;
}

enum { RBR = 0, THR = 0, DLL = 0, IER = 1, DLM = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4,
       LSR = 5, MSR = 6, SCR = 7 };

static void test_reset_values(void **state)
{
	struct fix *f = *state;
	assert_int_equal(in8(f->u, IER), 0);
	assert_int_equal(in8(f->u, IIR), 0x01);
	assert_int_equal(in8(f->u, LCR), 0);
	assert_int_equal(in8(f->u, MCR), 0);
	assert_int_equal(in8(f->u, LSR), 0x60);
	assert_int_equal(in8(f->u, MSR), 0xb0);
	assert_int_equal(f->s.nlevels, 0);
}

static void test_divisor_and_roundtrips(void **state)
{
	struct fix *f = *state;
	out8(f->u, LCR, 0x83); /* DLAB, 8N1 */
	out8(f->u, DLL, 0x01);
	out8(f->u, DLM, 0x02);
	assert_int_equal(in8(f->u, DLL), 0x01);
	assert_int_equal(in8(f->u, DLM), 0x02);
	out8(f->u, LCR, 0x03);
	assert_int_equal(in8(f->u, LCR), 0x03);
	/* With DLAB clear the same offsets are THR/IER again. */
	out8(f->u, IER, 0x0f);
	assert_int_equal(in8(f->u, IER), 0x0f);
	out8(f->u, IER, 0xff); /* upper bits do not exist */
	assert_int_equal(in8(f->u, IER), 0x0f);
	out8(f->u, LCR, 0x83);
	assert_int_equal(in8(f->u, DLM), 0x02);
	out8(f->u, LCR, 0x03);
	out8(f->u, MCR, 0xff);
	assert_int_equal(in8(f->u, MCR), 0x1f);
	out8(f->u, SCR, 0x5a);
	assert_int_equal(in8(f->u, SCR), 0x5a);
	assert_int_equal(f->s.nout, 0);
	/* Multi-byte access = consecutive byte accesses; past port 7 reads all-ones. */
	uint8_t w[2] = { 0 };
	uart_io(f->u, 6, w, 2, false);
	assert_int_equal(w[1], 0x5a);
	uint8_t w4[4];
	uart_io(f->u, 6, w4, 4, false);
	assert_int_equal(w4[2], 0xff);
	assert_int_equal(w4[3], 0xff);
}

static void test_thr_output(void **state)
{
	struct fix *f = *state;
	const char *msg = "hello\n";
	for (const char *p = msg; *p; p++) {
		assert_true(in8(f->u, LSR) & 0x20);
		out8(f->u, THR, (uint8_t)*p);
	}
	assert_int_equal(f->s.nout, strlen(msg));
	assert_memory_equal(f->s.out, msg, strlen(msg));
	assert_int_equal(in8(f->u, LSR) & 0x60, 0x60);
}

static void test_rx_fifo_and_overflow(void **state)
{
	struct fix *f = *state;
	uint8_t buf[40];
	for (unsigned int i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)('a' + i);

	/* FIFOs disabled: the receiver holds one byte. */
	assert_int_equal(uart_receive(f->u, buf, 3), 1);
	assert_true(in8(f->u, LSR) & 0x01);
	assert_int_equal(in8(f->u, RBR), 'a');
	assert_false(in8(f->u, LSR) & 0x01);
	assert_int_equal(f->s.rx_ready, 1); /* room again after a refusal */

	/* FIFOs on: 16 bytes, the rest is left to the caller, never dropped. */
	out8(f->u, FCR, 0x07);
	assert_int_equal(uart_receive(f->u, buf, sizeof(buf)), 16);
	assert_int_equal(uart_receive(f->u, buf + 16, 4), 0);
	assert_false(in8(f->u, LSR) & 0x02); /* host input never overruns */
	for (unsigned int i = 0; i < 16; i++)
		assert_int_equal(in8(f->u, RBR), buf[i]);
	assert_false(in8(f->u, LSR) & 0x01);
	assert_int_equal(in8(f->u, RBR), 0); /* empty */
	assert_int_equal(f->s.rx_ready, 2);

	/* FIFO clear bit empties the receiver. */
	assert_int_equal(uart_receive(f->u, buf, 5), 5);
	out8(f->u, FCR, 0x03);
	assert_false(in8(f->u, LSR) & 0x01);

	/* Overrun happens only through loopback (the guest's own bytes). */
	out8(f->u, MCR, 0x10);
	for (unsigned int i = 0; i < 17; i++)
		out8(f->u, THR, buf[i]);
	assert_int_equal(f->s.nout, 0); /* loopback does not reach the wire */
	uint8_t lsr = in8(f->u, LSR);
	assert_true(lsr & 0x02);
	assert_true(lsr & 0x01);
	assert_false(in8(f->u, LSR) & 0x02); /* OE clears on read */
	for (unsigned int i = 0; i < 16; i++)
		assert_int_equal(in8(f->u, RBR), buf[i]);
}

static void test_iir_priorities(void **state)
{
	struct fix *f = *state;
	uint8_t c = 'x';

	out8(f->u, FCR, 0x01 | 0x80); /* FIFO on, trigger 8 */
	assert_int_equal(in8(f->u, IIR), 0xc1);
	out8(f->u, MCR, 0x10 | 0x08); /* loopback so OE can be produced */
	out8(f->u, IER, 0x0f);
	/* Enabling ETBEI while THR is empty raises THRE. */
	assert_int_equal(in8(f->u, IIR) & 0x0f, 0x02);
	/* That read cleared THRE; loopback dropped CTS and DSR: modem status is left. */
	assert_int_equal(in8(f->u, IIR) & 0x0f, 0x00);
	in8(f->u, MSR);
	assert_int_equal(in8(f->u, IIR) & 0x0f, 0x01);

	/* One byte, under the trigger: character timeout; at the trigger: data available. */
	out8(f->u, THR, c);
	assert_int_equal(in8(f->u, IIR) & 0x0f, 0x0c);
	for (int i = 0; i < 7; i++)
		out8(f->u, THR, c);
	assert_int_equal(in8(f->u, IIR) & 0x0f, 0x04);
	/* The THR writes re-armed THRE, below RX data in priority. Overrun beats both. */
	for (int i = 0; i < 9; i++)
		out8(f->u, THR, c);
	assert_int_equal(in8(f->u, IIR) & 0x0f, 0x06);
	in8(f->u, LSR);
	assert_int_equal(in8(f->u, IIR) & 0x0f, 0x04);
	for (int i = 0; i < 16; i++)
		in8(f->u, RBR);
	assert_int_equal(in8(f->u, IIR) & 0x0f, 0x02);
	assert_int_equal(in8(f->u, IIR) & 0x0f, 0x01); /* THRE cleared by the IIR read */
	/* THR write clears THRE, the instant transmission re-arms it. */
	out8(f->u, MCR, 0x08);
	in8(f->u, MSR);
	out8(f->u, THR, c);
	assert_int_equal(in8(f->u, IIR) & 0x0f, 0x02);
	/* Re-writing IER with ETBEI already set does not re-raise; toggling it does. */
	out8(f->u, IER, 0x0f);
	assert_int_equal(in8(f->u, IIR) & 0x0f, 0x01);
	out8(f->u, IER, 0x0d);
	out8(f->u, IER, 0x0f);
	assert_int_equal(in8(f->u, IIR) & 0x0f, 0x02);
	/* FIFO off: IIR top bits clear. */
	out8(f->u, FCR, 0x00);
	assert_int_equal(in8(f->u, IIR) & 0xc0, 0x00);
}

static void test_irq_line(void **state)
{
	struct fix *f = *state;
	uint8_t c = 'q';

	out8(f->u, IER, 0x01);
	assert_int_equal(uart_receive(f->u, &c, 1), 1);
	assert_int_equal(f->s.nlevels, 0); /* OUT2 clear: the PC sees nothing */
	assert_int_equal(uart_irq_level(f->u), 0);
	out8(f->u, MCR, 0x0b); /* DTR RTS OUT2 */
	assert_int_equal(f->s.nlevels, 1);
	assert_int_equal(f->s.levels[0], 1);
	in8(f->u, RBR);
	assert_int_equal(f->s.nlevels, 2);
	assert_int_equal(f->s.levels[1], 0);

	/* THRE: enabling raises; each THR write pulses the line low then high again. */
	out8(f->u, IER, 0x02);
	assert_int_equal(f->s.levels[f->s.nlevels - 1], 1);
	unsigned int before = f->s.nlevels;
	out8(f->u, THR, c);
	assert_int_equal(f->s.nlevels, before + 2);
	assert_int_equal(f->s.levels[before], 0);
	assert_int_equal(f->s.levels[before + 1], 1);
	in8(f->u, IIR); /* clears THRE */
	assert_int_equal(f->s.levels[f->s.nlevels - 1], 0);

	/* Loopback gates the line even with OUT2 set. */
	out8(f->u, IER, 0x00);
	out8(f->u, IER, 0x02);
	assert_int_equal(uart_irq_level(f->u), 1);
	out8(f->u, MCR, 0x1b);
	assert_int_equal(uart_irq_level(f->u), 0);
	out8(f->u, MCR, 0x0b);
	assert_int_equal(uart_irq_level(f->u), 1);
	/* Clearing OUT2 drops it. */
	out8(f->u, MCR, 0x03);
	assert_int_equal(uart_irq_level(f->u), 0);
	/* Levels alternate: only changes are reported. */
	for (unsigned int i = 1; i < f->s.nlevels; i++)
		assert_int_not_equal(f->s.levels[i], f->s.levels[i - 1]);
}

static void test_loopback_modem(void **state)
{
	struct fix *f = *state;
	out8(f->u, MCR, 0x10);
	/* All outputs low: CTS DSR DCD dropped (deltas), RI was low. */
	assert_int_equal(in8(f->u, MSR), 0x0b);
	out8(f->u, MCR, 0x10 | 0x01 | 0x02 | 0x04 | 0x08);
	assert_int_equal(in8(f->u, MSR), 0xf0 | 0x0b);
	out8(f->u, MCR, 0x10 | 0x01 | 0x02 | 0x08); /* OUT1 -> RI falling edge: TERI */
	assert_int_equal(in8(f->u, MSR), 0xb0 | 0x04);
	assert_int_equal(in8(f->u, MSR), 0xb0);
	/* Host input is disconnected in loopback. */
	uint8_t c = 'z';
	assert_int_equal(uart_receive(f->u, &c, 1), 0);
	out8(f->u, MCR, 0x00);
	assert_int_equal(f->s.rx_ready, 1);
	assert_int_equal(uart_receive(f->u, &c, 1), 1);
}

static void setup_busy_state(struct uart *u)
{
	uint8_t buf[11] = "0123456789";
	out8(u, LCR, 0x80);
	out8(u, DLL, 0x34);
	out8(u, DLM, 0x12);
	out8(u, LCR, 0x1b);
	out8(u, FCR, 0xc7);
	out8(u, IER, 0x07);
	out8(u, MCR, 0x0b);
	out8(u, SCR, 0xa5);
	assert_int_equal(uart_receive(u, buf, 10), 10);
	for (int i = 0; i < 4; i++)
		in8(u, RBR);
	assert_int_equal(uart_receive(u, buf, 10), 10); /* wraps the ring */
}

static void test_save_load_roundtrip(void **state)
{
	struct fix *f = *state;
	struct enc e, e2;
	struct dec d;
	struct fix g = { 0 };

	setup_busy_state(f->u);
	enc_init(&e);
	assert_int_equal(uart_save(f->u, &e), 0);

	g.u = uart_create(&ops, &g.s);
	assert_non_null(g.u);
	dec_init(&d, e.buf, e.len);
	assert_int_equal(uart_load(g.u, &d, UART_STATE_VERSION), 0);
	assert_int_equal(dec_remaining(&d), 0);
	assert_int_equal(g.s.nlevels, 1); /* line re-raised: RX data pending, OUT2 set */
	assert_int_equal(g.s.levels[0], 1);
	assert_int_equal(uart_irq_level(g.u), uart_irq_level(f->u));

	enc_init(&e2);
	assert_int_equal(uart_save(g.u, &e2), 0);
	assert_int_equal(e.len, e2.len);
	assert_memory_equal(e.buf, e2.buf, e.len);

	/* Same behaviour afterwards: every register and the FIFO contents. */
	for (unsigned int reg = 1; reg < 8; reg++)
		if (reg != LSR && reg != MSR && reg != IIR)
			assert_int_equal(in8(g.u, reg), in8(f->u, reg));
	assert_int_equal(in8(g.u, IIR), in8(f->u, IIR));
	assert_int_equal(in8(g.u, LSR), in8(f->u, LSR));
	for (int i = 0; i < 16; i++)
		assert_int_equal(in8(g.u, RBR), in8(f->u, RBR));
	out8(g.u, LCR, 0x9b);
	assert_int_equal(in8(g.u, DLL), 0x34);
	assert_int_equal(in8(g.u, DLM), 0x12);

	enc_free(&e);
	enc_free(&e2);
	uart_destroy(g.u);
}

static void test_load_rejects(void **state)
{
	struct fix *f = *state;
	struct enc e;
	struct dec d;
	struct fix g = { 0 };

	setup_busy_state(f->u);
	enc_init(&e);
	assert_int_equal(uart_save(f->u, &e), 0);
	g.u = uart_create(&ops, &g.s);
	assert_non_null(g.u);

	dec_init(&d, e.buf, e.len);
	assert_int_equal(uart_load(g.u, &d, UART_STATE_VERSION + 1), -ENOTSUP);
	dec_init(&d, e.buf, e.len);
	assert_int_equal(uart_load(g.u, &d, 0), -ENOTSUP);

	for (size_t len = 0; len < e.len; len++) {
		dec_init(&d, e.buf, len);
		assert_int_equal(uart_load(g.u, &d, UART_STATE_VERSION), -EBADMSG);
	}

	/* Offsets in the v1 layout and a bad value for each. */
	static const struct {
		size_t off;
		uint8_t val;
	} bad[] = {
		{ 2, 0x10 },  /* IER reserved bits */
		{ 4, 0x20 },  /* MCR reserved bits */
		{ 5, 0x01 },  /* LSR error byte with DR */
		{ 6, 0x00 },  /* MSR lines disagree with MCR */
		{ 8, 0x06 },  /* FCR clear bits are not state */
		{ 9, 0x02 },  /* unknown flag */
		{ 10, 16 },   /* RX head */
		{ 11, 17 },   /* RX count > 16 */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint8_t copy[64];
		assert_true(e.len <= sizeof(copy));
		memcpy(copy, e.buf, e.len);
		copy[bad[i].off] = bad[i].val;
		dec_init(&d, copy, e.len);
		assert_int_equal(uart_load(g.u, &d, UART_STATE_VERSION), -EBADMSG);
	}
	/* FIFO disabled with 2 bytes in the receiver. */
	uint8_t copy[64];
	memcpy(copy, e.buf, e.len);
	copy[8] = 0x00;
	copy[11] = 2;
	dec_init(&d, copy, e.len);
	assert_int_equal(uart_load(g.u, &d, UART_STATE_VERSION), -EBADMSG);

	assert_int_equal(g.s.nlevels, 0); /* nothing was applied */
	assert_int_equal(in8(g.u, SCR), 0);
	enc_free(&e);
	uart_destroy(g.u);
}

static void test_reset(void **state)
{
	struct fix *f = *state;
	setup_busy_state(f->u);
	assert_int_equal(uart_irq_level(f->u), 1);
	uart_reset(f->u);
	assert_int_equal(uart_irq_level(f->u), 0);
	assert_int_equal(in8(f->u, LSR), 0x60);
	assert_int_equal(in8(f->u, IIR), 0x01);
	assert_int_equal(in8(f->u, SCR), 0xa5); /* SCR survives MR */
}

/* The host input thread and a vCPU draining the FIFO: every byte arrives once, in order. */
#define STREAM_LEN 20000

static void *feeder(void *arg)
{
	struct uart *u = arg;
	uint8_t buf[64];
	unsigned int sent = 0;
	while (sent < STREAM_LEN) {
		unsigned int n = STREAM_LEN - sent < sizeof(buf) ? STREAM_LEN - sent : sizeof(buf);
		for (unsigned int i = 0; i < n; i++)
			buf[i] = (uint8_t)((sent + i) * 7);
		sent += (unsigned int)uart_receive(u, buf, n);
	}
	return NULL;
}

static void test_concurrent_input(void **state)
{
	struct fix *f = *state;
	pthread_t th;
	out8(f->u, FCR, 0x01);
	out8(f->u, IER, 0x01);
	out8(f->u, MCR, 0x08);
	assert_int_equal(pthread_create(&th, NULL, feeder, f->u), 0);
	for (unsigned int got = 0; got < STREAM_LEN;) {
		if (in8(f->u, LSR) & 0x01)
			assert_int_equal(in8(f->u, RBR), (uint8_t)(got++ * 7));
	}
	pthread_join(th, NULL);
	assert_false(in8(f->u, LSR) & 0x03);
	assert_int_equal(uart_irq_level(f->u), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_reset_values, setup, teardown),
		cmocka_unit_test_setup_teardown(test_divisor_and_roundtrips, setup, teardown),
		cmocka_unit_test_setup_teardown(test_thr_output, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rx_fifo_and_overflow, setup, teardown),
		cmocka_unit_test_setup_teardown(test_iir_priorities, setup, teardown),
		cmocka_unit_test_setup_teardown(test_irq_line, setup, teardown),
		cmocka_unit_test_setup_teardown(test_loopback_modem, setup, teardown),
		cmocka_unit_test_setup_teardown(test_save_load_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_load_rejects, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reset, setup, teardown),
		cmocka_unit_test_setup_teardown(test_concurrent_input, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
