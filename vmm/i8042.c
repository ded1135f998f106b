/* SPDX-License-Identifier: MIT */
#include "i8042.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"

/* Status register. */
#define STS_OBF 0x01	 /* output buffer full */
#define STS_SYS 0x04	 /* system flag: POST passed */
#define STS_CMD 0x08	 /* last write was to 0x64 */
#define STS_UNLOCKED 0x10 /* keyboard inhibit switch off (not stored: always) */
#define STS_STORED (STS_OBF | STS_SYS | STS_CMD)

/* Command byte. */
#define CTR_KBDINT 0x01
#define CTR_SYS 0x04
#define CTR_KBDDIS 0x10
#define CTR_AUXDIS 0x20
#define CTR_XLATE 0x40

/* Output port. */
#define OUTP_RESET 0x01 /* active low: 0 holds the CPU in reset */
#define OUTP_A20 0x02

#define CMD_READ_RAM 0x20 /* 0x20-0x3f: byte 0 is the command byte */
#define CMD_WRITE_RAM 0x60 /* 0x60-0x7f */
#define CMD_AUX_DISABLE 0xa7
#define CMD_AUX_ENABLE 0xa8
#define CMD_AUX_TEST 0xa9
#define CMD_SELF_TEST 0xaa
#define CMD_KBD_TEST 0xab
#define CMD_KBD_DISABLE 0xad
#define CMD_KBD_ENABLE 0xae
#define CMD_READ_INPUT 0xc0
#define CMD_READ_OUTP 0xd0
#define CMD_WRITE_OUTP 0xd1
#define CMD_WRITE_KBD_OBUF 0xd2
#define CMD_WRITE_AUX_OBUF 0xd3
#define CMD_WRITE_AUX 0xd4
#define CMD_A20_OFF 0xdd
#define CMD_A20_ON 0xdf
#define CMD_READ_TEST 0xe0
#define CMD_PULSE 0xf0 /* 0xf0-0xff */

struct i8042 {
	pthread_mutex_t lock;
	void (*reset)(void *opaque);
	void *opaque;

	uint8_t status;	 /* stored bits: OBF, system flag, last write was a command */
	uint8_t ctr;	 /* command byte */
	uint8_t outp;	 /* output port */
	uint8_t obuf;	 /* output buffer (valid while OBF is set; else the last byte) */
	uint8_t pending; /* command waiting for its data byte on 0x60, or 0 */
};

static void lock(const struct i8042 *k)
{
	pthread_mutex_lock((pthread_mutex_t *)&k->lock);
}

static void unlock(const struct i8042 *k)
{
	pthread_mutex_unlock((pthread_mutex_t *)&k->lock);
}

static void put_output(struct i8042 *k, uint8_t v)
{
	k->obuf = v;
	k->status |= STS_OBF;
}

static bool takes_data(uint8_t cmd)
{
	return (cmd >= CMD_WRITE_RAM && cmd <= CMD_WRITE_RAM + 0x1f) ||
	       (cmd >= CMD_WRITE_OUTP && cmd <= CMD_WRITE_AUX);
}

static void set_ctr(struct i8042 *k, uint8_t v)
{
	k->ctr = v;
	/* The command byte's system flag is what the status register reports. */
	k->status = (uint8_t)((k->status & ~STS_SYS) | ((v & CTR_SYS) ? STS_SYS : 0));
}

/* Returns true when the command asks for a CPU reset. */
static bool do_command(struct i8042 *k, uint8_t cmd)
{
	if (takes_data(cmd)) {
		k->pending = cmd;
		return false;
	}
	k->pending = 0;
	if (cmd >= CMD_READ_RAM && cmd <= CMD_READ_RAM + 0x1f) {
		put_output(k, cmd == CMD_READ_RAM ? k->ctr : 0);
		return false;
	}
	/* Pulse: bits 0-3 of the command clear = pulse that output-port bit low. */
	if (cmd >= CMD_PULSE)
		return !(cmd & OUTP_RESET);

	switch (cmd) {
	case CMD_AUX_DISABLE:
		k->ctr |= CTR_AUXDIS;
		break;
	case CMD_AUX_ENABLE:
		k->ctr &= (uint8_t)~CTR_AUXDIS;
		break;
	case CMD_AUX_TEST:
		put_output(k, 0x01); /* clock line stuck low: there is no AUX port */
		break;
	case CMD_SELF_TEST:
		k->status |= STS_SYS;
		put_output(k, 0x55);
		break;
	case CMD_KBD_TEST:
		put_output(k, 0x00);
		break;
	case CMD_KBD_DISABLE:
		k->ctr |= CTR_KBDDIS;
		break;
	case CMD_KBD_ENABLE:
		k->ctr &= (uint8_t)~CTR_KBDDIS;
		break;
	case CMD_READ_INPUT:
		put_output(k, 0x80);
		break;
	case CMD_READ_OUTP:
		put_output(k, k->outp);
		break;
	case CMD_A20_OFF:
		k->outp &= (uint8_t)~OUTP_A20;
		break;
	case CMD_A20_ON:
		k->outp |= OUTP_A20;
		break;
	case CMD_READ_TEST:
		put_output(k, 0x00);
		break;
	default:
		log_ratelimited(LOG_DEBUG, "i8042: unsupported command 0x%02x ignored", cmd);
		break;
	}
	return false;
}

/* A byte written to 0x60. Returns true when it asks for a CPU reset. */
static bool do_data(struct i8042 *k, uint8_t v)
{
	uint8_t cmd = k->pending;

	k->pending = 0;
	switch (cmd) {
	case 0:
		log_ratelimited(LOG_DEBUG, "i8042: byte 0x%02x to the absent keyboard dropped", v);
		return false;
	case CMD_WRITE_RAM:
		set_ctr(k, v);
		return false;
	case CMD_WRITE_OUTP:
		k->outp = v;
		return !(v & OUTP_RESET);
	case CMD_WRITE_KBD_OBUF:
		put_output(k, v);
		return false;
	default:
		/* Other RAM bytes, and bytes for the absent AUX device. */
		return false;
	}
}

static void request_reset(struct i8042 *k)
{
	log_ratelimited(LOG_INFO, "i8042: guest requested a CPU reset");
	k->reset(k->opaque);
}

struct i8042 *i8042_create(void (*reset)(void *opaque), void *opaque)
{
	struct i8042 *k = calloc(1, sizeof(*k));
	if (!k) {
		log_err("i8042: out of memory");
		return NULL;
	}
	int err = pthread_mutex_init(&k->lock, NULL);
	if (err) {
		log_err("i8042: mutex init: %s", strerror(err));
		free(k);
		return NULL;
	}
	k->reset = reset;
	k->opaque = opaque;
	k->outp = OUTP_RESET | OUTP_A20;
	set_ctr(k, CTR_KBDINT | CTR_SYS | CTR_XLATE);
	return k;
}

void i8042_destroy(struct i8042 *k)
{
	if (!k)
		return;
	pthread_mutex_destroy(&k->lock);
	free(k);
}

/* One access to port 0x60 (@cmd_port false) or 0x64 (true). */
static void i8042_io(struct i8042 *k, bool cmd_port, uint64_t offset, uint8_t *data,
		     unsigned int len, bool is_write)
{
	bool reset = false;

	if (offset != 0 || len == 0) {
		if (!is_write)
			memset(data, 0xff, len);
		return;
	}
	lock(k);
	if (is_write && cmd_port) {
		k->status |= STS_CMD;
		reset = do_command(k, data[0]);
	} else if (is_write) {
		k->status &= (uint8_t)~STS_CMD;
		reset = do_data(k, data[0]);
	} else if (cmd_port) {
		data[0] = k->status | STS_UNLOCKED; /* input buffer never full */
	} else {
		/* With the buffer empty the chip returns its last byte again. */
		data[0] = k->obuf;
		k->status &= (uint8_t)~STS_OBF;
	}
	unlock(k);
	if (!is_write && len > 1)
		memset(data + 1, 0xff, len - 1);
	if (reset)
		request_reset(k);
}

void i8042_io_data(void *opaque, uint64_t offset, uint8_t *data, unsigned int len, bool is_write)
{
	i8042_io(opaque, false, offset, data, len, is_write);
}

void i8042_io_cmd(void *opaque, uint64_t offset, uint8_t *data, unsigned int len, bool is_write)
{
	i8042_io(opaque, true, offset, data, len, is_write);
}

int i8042_save(const struct i8042 *k, struct enc *e)
{
	lock(k);
	enc_u8(e, k->status);
	enc_u8(e, k->ctr);
	enc_u8(e, k->outp);
	enc_u8(e, k->obuf);
	enc_u8(e, k->pending);
	unlock(k);
	return enc_error(e);
}

int i8042_load(struct i8042 *k, struct dec *d, unsigned int version)
{
	if (version < 1 || version > I8042_STATE_VERSION) {
		log_err("i8042 state: version %u not supported (max %u)", version,
			I8042_STATE_VERSION);
		return -ENOTSUP;
	}
	uint8_t status = dec_u8_val(d);
	uint8_t ctr = dec_u8_val(d);
	uint8_t outp = dec_u8_val(d);
	uint8_t obuf = dec_u8_val(d);
	uint8_t pending = dec_u8_val(d);
	if (dec_error(d)) {
		log_err("i8042 state: truncated");
		return dec_error(d);
	}
	if (status & ~STS_STORED) {
		log_err("i8042 state: invalid status 0x%02x", status);
		return -EBADMSG;
	}
	if (pending && !takes_data(pending)) {
		log_err("i8042 state: invalid pending command 0x%02x", pending);
		return -EBADMSG;
	}
	/* A machine whose reset line is held low is not running: no state of one to load. */
	if (!(outp & OUTP_RESET)) {
		log_err("i8042 state: output port 0x%02x holds the CPU in reset", outp);
		return -EBADMSG;
	}
	lock(k);
	k->status = status;
	k->ctr = ctr;
	k->outp = outp;
	k->obuf = obuf;
	k->pending = pending;
	unlock(k);
	return 0;
}
