/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_VMM_UART_H
#define VMSNAP_VMM_UART_H

/*
 * A 16550A UART as on a PC's COM port: 8 registers, 16-byte receive FIFO, interrupt priority
 * and THRE semantics of the datasheet, OUT2 gating the interrupt line, loopback mode.
 *
 * The transmit side never stalls the guest: a byte written to THR goes to the tx callback
 * at once, as if the wire were infinitely fast, so THR and the transmit FIFO are always empty
 * when the guest looks (LSR.THRE and LSR.TEMT read 1) and there is no transmit FIFO state.
 * The receive side is fed by uart_receive() from a host thread; it never drops a byte the
 * caller handed in: what does not fit is left for the caller to retry.
 *
 * Not modelled: line break and parity/framing errors (nothing on the host side can produce
 * them), baud-rate timing (the divisor is stored and read back only), DMA mode signalling.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "formats/codec.h"

#define UART_COM1_BASE 0x3f8
#define UART_COM1_IRQ 4
#define UART_NR_PORTS 8
#define UART_FIFO_SIZE 16

/*
 * Saved-state version written by uart_save() (see uart_load() for what each version holds).
 * v1: divisor, ier, lcr, mcr, lsr error bits, msr, scr, fcr, THRE-pending flag, RX FIFO.
 */
#define UART_STATE_VERSION 1

/**
 * Callbacks of a UART. All are called with the UART's lock held, from whichever thread made
 * the call into the UART, in the order of the events: they must not call back into the UART.
 */
struct uart_ops {
	/** Bytes the guest transmitted (never in loopback mode). Required; must not block long. */
	void (*tx)(void *opaque, const uint8_t *buf, size_t n);
	/** The interrupt line changed to @level (0 or 1). Required. */
	void (*set_irq)(void *opaque, int level);
	/**
	 * Optional: room appeared in the receive FIFO after uart_receive() had turned bytes
	 * away, so an input thread waiting to retry can do so now.
	 */
	void (*rx_ready)(void *opaque);
};

struct uart;

/**
 * Create a UART in its power-on state. @ops is copied; @opaque is passed to every callback.
 * The IRQ line starts low and is not reported. Returns NULL (after logging) when out of
 * memory. Free with uart_destroy().
 */
struct uart *uart_create(const struct uart_ops *ops, void *opaque);

/** Free a UART from uart_create(); NULL is ignored. No other thread may still use it. */
void uart_destroy(struct uart *u);

/**
 * Master reset (the MR pin): registers to their reset values, FIFOs emptied; SCR and the
 * divisor keep their values, as on the chip. Reports the IRQ line going low if it was high.
 */
void uart_reset(struct uart *u);

/**
 * Host input: append up to @n bytes of @buf to the receive FIFO and raise the receive
 * interrupt as the registers say. Returns how many bytes were taken (0..@n): fewer than @n
 * when the FIFO is full (1 byte deep with FIFOs disabled) or in loopback mode, where the
 * serial input is disconnected. The caller keeps the rest and retries later (see rx_ready).
 * Thread-safe.
 */
size_t uart_receive(struct uart *u, const uint8_t *buf, size_t n);

/**
 * Port-I/O handler (io_handler_fn) for the UART's 8 ports; @opaque is the struct uart.
 * Accesses wider than a byte act as consecutive byte accesses, as on the ISA bus; bytes past
 * the 8 ports read as 0xff. Thread-safe.
 */
void uart_io(void *opaque, uint64_t offset, uint8_t *data, unsigned int len, bool is_write);

/** Current level of the interrupt line (what set_irq last reported). Thread-safe. */
int uart_irq_level(struct uart *u);

/**
 * Encode the complete device state (UART_STATE_VERSION layout) into @e. Takes the lock, so
 * it is safe while the input thread runs; callers normally save with vCPUs paused.
 * Returns 0 or the encoder's error.
 */
int uart_save(const struct uart *u, struct enc *e);

/**
 * Decode state of format @version from @d into @u, validating every field; on success the
 * UART takes the new state and the IRQ line is reported (set_irq) at the level the state
 * implies, so a line that was high in the saved machine is raised again.
 * Returns 0, -ENOTSUP for a version this build does not know, -EBADMSG for truncated or
 * inconsistent data; on error @u is unchanged.
 */
int uart_load(struct uart *u, struct dec *d, unsigned int version);

#endif
