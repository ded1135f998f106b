/* SPDX-License-Identifier: MIT */
#include "uart.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"

/* Register offsets. */
#define REG_RBR_THR 0 /* DLL when LCR.DLAB */
#define REG_IER 1     /* DLM when LCR.DLAB */
#define REG_IIR_FCR 2
#define REG_LCR 3
#define REG_MCR 4
#define REG_LSR 5
#define REG_MSR 6
#define REG_SCR 7

#define IER_ERBFI 0x01 /* received data available */
#define IER_ETBEI 0x02 /* THR empty */
#define IER_ELSI 0x04  /* receiver line status */
#define IER_EDSSI 0x08 /* modem status */
#define IER_MASK 0x0f

#define IIR_NONE 0x01
#define IIR_MSI 0x00
#define IIR_THRI 0x02
#define IIR_RDI 0x04
#define IIR_RLSI 0x06
#define IIR_CTI 0x0c /* character timeout (FIFO mode) */
#define IIR_ID_MASK 0x0f
#define IIR_FIFO_BITS 0xc0

#define FCR_ENABLE 0x01
#define FCR_CLEAR_RX 0x02
#define FCR_CLEAR_TX 0x04
#define FCR_DMA 0x08
#define FCR_STORED (FCR_ENABLE | FCR_DMA | 0xc0)

#define LCR_DLAB 0x80

#define MCR_DTR 0x01
#define MCR_RTS 0x02
#define MCR_OUT1 0x04
#define MCR_OUT2 0x08
#define MCR_LOOP 0x10
#define MCR_MASK 0x1f

#define LSR_DR 0x01
#define LSR_OE 0x02
#define LSR_PE 0x04
#define LSR_FE 0x08
#define LSR_BI 0x10
#define LSR_THRE 0x20
#define LSR_TEMT 0x40
#define LSR_ERR_MASK (LSR_OE | LSR_PE | LSR_FE | LSR_BI)

#define MSR_DCTS 0x01
#define MSR_DDSR 0x02
#define MSR_TERI 0x04
#define MSR_DDCD 0x08
#define MSR_DELTA_MASK 0x0f
#define MSR_CTS 0x10
#define MSR_DSR 0x20
#define MSR_RI 0x40
#define MSR_DCD 0x80
/* Outside loopback, the "modem" is a host stream that is always there and ready. */
#define MSR_LINES_CONNECTED (MSR_CTS | MSR_DSR | MSR_DCD)

#define STATE_FLAG_THR_IPENDING 0x01

struct uart {
	pthread_mutex_t lock;
	struct uart_ops ops;
	void *opaque;

	uint16_t divisor; /* DLM:DLL */
	uint8_t ier;	  /* bits 0-3 */
	uint8_t lcr;
	uint8_t mcr;	  /* bits 0-4 */
	uint8_t lsr_err;  /* latched LSR error bits (OE, PE, FE, BI); the rest is derived */
	uint8_t msr;	  /* modem status: bits 4-7 lines, bits 0-3 deltas */
	uint8_t scr;
	uint8_t fcr;	  /* FIFO enable, DMA mode, RX trigger (bits 0, 3, 6-7) */
	bool thr_ipending; /* THR-empty interrupt latched (cleared by IIR read / THR write) */
	uint8_t rx_fifo[UART_FIFO_SIZE];
	uint8_t rx_head;  /* index of the oldest byte */
	uint8_t rx_count; /* bytes in the FIFO (at most 1 with FIFOs disabled) */

	int irq_level;	  /* level last reported through set_irq */
	bool rx_refused;  /* uart_receive() turned bytes away: rx_ready is owed */
};

/* Lock helpers: uart_save() takes a const UART but still has to hold its lock. */
static void lock(const struct uart *u)
{
	pthread_mutex_lock((pthread_mutex_t *)&u->lock);
}

static void unlock(const struct uart *u)
{
	pthread_mutex_unlock((pthread_mutex_t *)&u->lock);
}

static bool fifo_enabled(const struct uart *u)
{
	return u->fcr & FCR_ENABLE;
}

static unsigned int rx_capacity(const struct uart *u)
{
	return fifo_enabled(u) ? UART_FIFO_SIZE : 1;
}

static unsigned int rx_trigger(const struct uart *u)
{
	static const unsigned int levels[4] = { 1, 4, 8, 14 };
	return levels[u->fcr >> 6];
}

/* IIR as the guest would read it now, by the datasheet's priority order. */
static uint8_t compute_iir(const struct uart *u)
{
	uint8_t id = IIR_NONE;

	if ((u->ier & IER_ELSI) && u->lsr_err)
		id = IIR_RLSI;
	else if ((u->ier & IER_ERBFI) && u->rx_count)
		/*
		 * Below the trigger level the chip raises a character timeout once no byte has
		 * come for 4 character times. Host input arrives in bursts with nothing after,
		 * so the timeout is taken as already expired rather than run on a timer.
		 */
		id = fifo_enabled(u) && u->rx_count < rx_trigger(u) ? IIR_CTI : IIR_RDI;
	else if ((u->ier & IER_ETBEI) && u->thr_ipending)
		id = IIR_THRI;
	else if ((u->ier & IER_EDSSI) && (u->msr & MSR_DELTA_MASK))
		id = IIR_MSI;
	return id | (fifo_enabled(u) ? IIR_FIFO_BITS : 0);
}

/*
 * On a PC the INTR output reaches the PIC only through a buffer enabled by OUT2; in loopback
 * mode the chip forces OUT2 inactive, so no interrupt reaches the PIC then either.
 */
static int compute_irq_level(const struct uart *u)
{
	if ((u->mcr & (MCR_OUT2 | MCR_LOOP)) != MCR_OUT2)
		return 0;
	return !(compute_iir(u) & IIR_NONE);
}

static void update_irq(struct uart *u)
{
	int level = compute_irq_level(u);
	if (level != u->irq_level) {
		u->irq_level = level;
		u->ops.set_irq(u->opaque, level);
	}
}

static uint8_t read_lsr_value(const struct uart *u)
{
	/* THR and the shifter are always empty: the wire is infinitely fast. */
	return u->lsr_err | (u->rx_count ? LSR_DR : 0) | LSR_THRE | LSR_TEMT;
}

static uint8_t loopback_lines(uint8_t mcr)
{
	return ((mcr & MCR_RTS) ? MSR_CTS : 0) | ((mcr & MCR_DTR) ? MSR_DSR : 0) |
	       ((mcr & MCR_OUT1) ? MSR_RI : 0) | ((mcr & MCR_OUT2) ? MSR_DCD : 0);
}

static uint8_t expected_lines(uint8_t mcr)
{
	return (mcr & MCR_LOOP) ? loopback_lines(mcr) : MSR_LINES_CONNECTED;
}

/* Set the modem input lines, latching the delta bits the way the chip does. */
static void set_modem_lines(struct uart *u, uint8_t lines)
{
	uint8_t old = u->msr & 0xf0;
	uint8_t delta = 0;

	if ((old ^ lines) & MSR_CTS)
		delta |= MSR_DCTS;
	if ((old ^ lines) & MSR_DSR)
		delta |= MSR_DDSR;
	if ((old & MSR_RI) && !(lines & MSR_RI)) /* trailing edge only */
		delta |= MSR_TERI;
	if ((old ^ lines) & MSR_DCD)
		delta |= MSR_DDCD;
	u->msr = lines | (u->msr & MSR_DELTA_MASK) | delta;
}

static void rx_clear(struct uart *u)
{
	u->rx_head = 0;
	u->rx_count = 0;
	memset(u->rx_fifo, 0, sizeof(u->rx_fifo));
}

static bool rx_push(struct uart *u, uint8_t b)
{
	if (u->rx_count >= rx_capacity(u))
		return false;
	u->rx_fifo[(u->rx_head + u->rx_count) % UART_FIFO_SIZE] = b;
	u->rx_count++;
	return true;
}

/* Tell a waiting input thread there is room again, if it was turned away. */
static void notify_rx_room(struct uart *u)
{
	if (!u->rx_refused || (u->mcr & MCR_LOOP) || u->rx_count >= rx_capacity(u))
		return;
	u->rx_refused = false;
	if (u->ops.rx_ready)
		u->ops.rx_ready(u->opaque);
}

static void write_thr(struct uart *u, uint8_t b)
{
	/* Writing THR clears the THRE interrupt ... */
	u->thr_ipending = false;
	update_irq(u);
	if (u->mcr & MCR_LOOP) {
		/* The shifter feeds the receiver; a full FIFO overruns and the byte is lost. */
		if (!rx_push(u, b))
			u->lsr_err |= LSR_OE;
	} else {
		u->ops.tx(u->opaque, &b, 1);
	}
	/* ... and the byte leaves at once, so THR is empty again and THRE re-arms. */
	u->thr_ipending = true;
	update_irq(u);
}

static void write_fcr(struct uart *u, uint8_t v)
{
	/* Changing the FIFO enable bit empties both FIFOs. */
	if ((v ^ u->fcr) & FCR_ENABLE)
		rx_clear(u);
	/* With FCR0 clear the other bits are not programmed. */
	if (!(v & FCR_ENABLE)) {
		u->fcr = 0;
	} else {
		u->fcr = v & FCR_STORED;
		if (v & FCR_CLEAR_RX)
			rx_clear(u);
		/* FCR_CLEAR_TX: the transmit FIFO is always empty already. */
	}
	notify_rx_room(u);
}

static void write_mcr(struct uart *u, uint8_t v)
{
	u->mcr = v & MCR_MASK;
	set_modem_lines(u, expected_lines(u->mcr));
	notify_rx_room(u); /* leaving loopback reconnects the input */
}

static void reg_write(struct uart *u, unsigned int reg, uint8_t v)
{
	switch (reg) {
	case REG_RBR_THR:
		if (u->lcr & LCR_DLAB)
			u->divisor = (uint16_t)((u->divisor & 0xff00) | v);
		else
			write_thr(u, v);
		break;
	case REG_IER:
		if (u->lcr & LCR_DLAB) {
			u->divisor = (uint16_t)((u->divisor & 0x00ff) | (v << 8));
		} else {
			uint8_t changed = (u->ier ^ v) & IER_MASK;
			u->ier = v & IER_MASK;
			/* Enabling ETBEI with THR empty (always) raises THRE at once. */
			if (changed & IER_ETBEI)
				u->thr_ipending = u->ier & IER_ETBEI;
		}
		break;
	case REG_IIR_FCR:
		write_fcr(u, v);
		break;
	case REG_LCR:
		u->lcr = v;
		break;
	case REG_MCR:
		write_mcr(u, v);
		break;
	case REG_LSR:
	case REG_MSR:
		/* Factory-test writes on some parts; ignored, as QEMU and most chips do. */
		break;
	case REG_SCR:
		u->scr = v;
		break;
	}
	update_irq(u);
}

static uint8_t reg_read(struct uart *u, unsigned int reg)
{
	uint8_t v = 0;

	switch (reg) {
	case REG_RBR_THR:
		if (u->lcr & LCR_DLAB) {
			v = (uint8_t)u->divisor;
		} else if (u->rx_count) {
			v = u->rx_fifo[u->rx_head];
			u->rx_head = (uint8_t)((u->rx_head + 1) % UART_FIFO_SIZE);
			u->rx_count--;
			notify_rx_room(u);
		}
		break;
	case REG_IER:
		v = (u->lcr & LCR_DLAB) ? (uint8_t)(u->divisor >> 8) : u->ier;
		break;
	case REG_IIR_FCR:
		v = compute_iir(u);
		/* Reading IIR while THRE is the reported source clears it. */
		if ((v & IIR_ID_MASK) == IIR_THRI)
			u->thr_ipending = false;
		break;
	case REG_LCR:
		v = u->lcr;
		break;
	case REG_MCR:
		v = u->mcr;
		break;
	case REG_LSR:
		v = read_lsr_value(u);
		u->lsr_err = 0;
		break;
	case REG_MSR:
		v = u->msr;
		u->msr &= (uint8_t)~MSR_DELTA_MASK;
		break;
	case REG_SCR:
		v = u->scr;
		break;
	}
	update_irq(u);
	return v;
}

/* Power-on/MR state of everything but SCR, the divisor and the IRQ bookkeeping. */
static void reset_regs(struct uart *u)
{
	u->ier = 0;
	u->lcr = 0;
	u->mcr = 0;
	u->lsr_err = 0;
	u->msr = MSR_LINES_CONNECTED;
	u->fcr = 0;
	u->thr_ipending = false;
	rx_clear(u);
}

struct uart *uart_create(const struct uart_ops *ops, void *opaque)
{
	struct uart *u = calloc(1, sizeof(*u));
	if (!u) {
		log_err("uart: out of memory");
		return NULL;
	}
	int err = pthread_mutex_init(&u->lock, NULL);
	if (err) {
		log_err("uart: mutex init: %s", strerror(err));
		free(u);
		return NULL;
	}
	u->ops = *ops;
	u->opaque = opaque;
	u->divisor = 12; /* 9600 baud, what firmware commonly leaves */
	reset_regs(u);
	return u;
}

void uart_destroy(struct uart *u)
{
	if (!u)
		return;
	pthread_mutex_destroy(&u->lock);
	free(u);
}

void uart_reset(struct uart *u)
{
	lock(u);
	reset_regs(u);
	notify_rx_room(u);
	update_irq(u);
	unlock(u);
}

size_t uart_receive(struct uart *u, const uint8_t *buf, size_t n)
{
	size_t taken = 0;

	lock(u);
	/* In loopback mode the serial input is disconnected from the receiver. */
	if (!(u->mcr & MCR_LOOP)) {
		while (taken < n && rx_push(u, buf[taken]))
			taken++;
	}
	if (taken < n)
		u->rx_refused = true;
	update_irq(u);
	unlock(u);
	return taken;
}

void uart_io(void *opaque, uint64_t offset, uint8_t *data, unsigned int len, bool is_write)
{
	struct uart *u = opaque;

	lock(u);
	for (unsigned int i = 0; i < len; i++) {
		uint64_t reg = offset + i;
		if (reg >= UART_NR_PORTS) {
			if (!is_write)
				data[i] = 0xff;
			continue;
		}
		if (is_write)
			reg_write(u, (unsigned int)reg, data[i]);
		else
			data[i] = reg_read(u, (unsigned int)reg);
	}
	unlock(u);
}

int uart_irq_level(struct uart *u)
{
	lock(u);
	int level = u->irq_level;
	unlock(u);
	return level;
}

int uart_save(const struct uart *u, struct enc *e)
{
	lock(u);
	enc_u16(e, u->divisor);
	enc_u8(e, u->ier);
	enc_u8(e, u->lcr);
	enc_u8(e, u->mcr);
	enc_u8(e, u->lsr_err);
	enc_u8(e, u->msr);
	enc_u8(e, u->scr);
	enc_u8(e, u->fcr);
	enc_u8(e, u->thr_ipending ? STATE_FLAG_THR_IPENDING : 0);
	enc_u8(e, u->rx_head);
	enc_u8(e, u->rx_count);
	enc_bytes(e, u->rx_fifo, sizeof(u->rx_fifo));
	unlock(u);
	return enc_error(e);
}

/* Reject a field with an impossible value: log it once, here, and latch -EBADMSG. */
static void check(struct dec *d, bool ok, const char *what, unsigned int val)
{
	if (ok || dec_error(d))
		return;
	log_err("uart state: invalid %s 0x%x", what, val);
	dec_fail(d, -EBADMSG);
}

int uart_load(struct uart *u, struct dec *d, unsigned int version)
{
	struct uart s; /* the registers only; ops, lock and bookkeeping stay in @u */
	uint8_t flags;

	if (version < 1 || version > UART_STATE_VERSION) {
		log_err("uart state: version %u not supported (max %u)", version,
			UART_STATE_VERSION);
		return -ENOTSUP;
	}
	dec_u16(d, &s.divisor);
	dec_u8(d, &s.ier);
	dec_u8(d, &s.lcr);
	dec_u8(d, &s.mcr);
	dec_u8(d, &s.lsr_err);
	dec_u8(d, &s.msr);
	dec_u8(d, &s.scr);
	dec_u8(d, &s.fcr);
	dec_u8(d, &flags);
	dec_u8(d, &s.rx_head);
	dec_u8(d, &s.rx_count);
	dec_bytes(d, s.rx_fifo, sizeof(s.rx_fifo));
	if (dec_error(d)) {
		log_err("uart state: truncated (%zu bytes)", d->len);
		return dec_error(d);
	}

	check(d, !(s.ier & ~IER_MASK), "IER", s.ier);
	check(d, !(s.mcr & ~MCR_MASK), "MCR", s.mcr);
	check(d, !(s.lsr_err & ~LSR_ERR_MASK), "LSR error bits", s.lsr_err);
	check(d, (s.msr & 0xf0) == expected_lines(s.mcr), "MSR lines", s.msr);
	check(d, !(s.fcr & ~FCR_STORED) && (s.fcr & FCR_ENABLE || !s.fcr), "FCR", s.fcr);
	check(d, !(flags & ~STATE_FLAG_THR_IPENDING), "flags", flags);
	check(d, s.rx_head < UART_FIFO_SIZE, "RX FIFO head", s.rx_head);
	check(d, s.rx_count <= ((s.fcr & FCR_ENABLE) ? UART_FIFO_SIZE : 1), "RX FIFO count",
	      s.rx_count);
	if (dec_error(d))
		return dec_error(d);

	lock(u);
	u->divisor = s.divisor;
	u->ier = s.ier;
	u->lcr = s.lcr;
	u->mcr = s.mcr;
	u->lsr_err = s.lsr_err;
	u->msr = s.msr;
	u->scr = s.scr;
	u->fcr = s.fcr;
	u->thr_ipending = flags & STATE_FLAG_THR_IPENDING;
	u->rx_head = s.rx_head;
	u->rx_count = s.rx_count;
	memcpy(u->rx_fifo, s.rx_fifo, sizeof(u->rx_fifo));
	/*
	 * The line in the new machine starts wherever its irqchip state says; report the level
	 * this state implies unconditionally so both agree.
	 */
	u->irq_level = compute_irq_level(u);
	u->ops.set_irq(u->opaque, u->irq_level);
	notify_rx_room(u);
	unlock(u);
	return 0;
}
