/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_VMM_I8042_H
#define VMSNAP_VMM_I8042_H

/*
 * The minimal PC keyboard controller (8042) at ports 0x60 (data) and 0x64 (status/command):
 * enough for Linux's i8042 probe and for a guest's reset. There is no keyboard and no AUX
 * (mouse) device behind it and no IRQ 1; only controller commands are answered:
 *   0x20 / 0x60     read / write the command byte (controller RAM byte 0; 0x21-0x3f read 0)
 *   0xa7 / 0xa8     disable / enable the AUX interface (command byte bit 5)
 *   0xa9            AUX interface test -> 0x01 (clock stuck low: no AUX port)
 *   0xaa            controller self-test -> 0x55, sets the system flag
 *   0xab            keyboard interface test -> 0x00
 *   0xad / 0xae     disable / enable the keyboard (command byte bit 4)
 *   0xc0            read input port -> 0x80 (keyboard not inhibited)
 *   0xd0 / 0xd1     read / write the output port (a write with bit 0 clear resets the CPU)
 *   0xdd / 0xdf     A20 off / on (output port bit 1)
 *   0xe0            read test inputs -> 0x00
 *   0xf0-0xff       pulse output port bits 0-3 low where the command's bit is 0: bit 0
 *                   (0xfe, "reboot=k") resets the CPU
 * A reset request calls the reset callback; the VMM ends the VM (a PC without ACPI reboots and
 * powers off this way). Bytes written to 0x60 without a pending command would go to the
 * keyboard and are dropped. Reads of 0x60 return the last byte the controller produced.
 * Linux guests should boot with "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd" to skip
 * probing for devices that are not there.
 */

#include <stdbool.h>
#include <stdint.h>

#include "formats/codec.h"

#define I8042_DATA_PORT 0x60
#define I8042_CMD_PORT 0x64

/* v1: status flags, command byte, output port, output buffer, pending command. */
#define I8042_STATE_VERSION 1

struct i8042;

/**
 * Create the controller in its post-firmware state: output port 0x03 (reset line inactive,
 * A20 on), command byte 0x45 (keyboard interrupt, system flag, translation), system flag set.
 * @reset (required) is called from the vCPU thread that asked for a reset, without the
 * controller's lock held; it may stop the VM but must not call back into the controller.
 * Returns NULL (after logging) when out of memory. Free with i8042_destroy().
 */
struct i8042 *i8042_create(void (*reset)(void *opaque), void *opaque);

/** Free a controller from i8042_create(); NULL is ignored. */
void i8042_destroy(struct i8042 *k);

/** io_handler_fn for port 0x60 (register with length 1); @opaque is the struct i8042. */
void i8042_io_data(void *opaque, uint64_t offset, uint8_t *data, unsigned int len, bool is_write);

/** io_handler_fn for port 0x64 (register with length 1); @opaque is the struct i8042. */
void i8042_io_cmd(void *opaque, uint64_t offset, uint8_t *data, unsigned int len, bool is_write);

/** Encode the controller state (I8042_STATE_VERSION layout). Returns 0 or the enc error. */
int i8042_save(const struct i8042 *k, struct enc *e);

/**
 * Decode and validate state of format @version. Returns 0, -ENOTSUP for an unknown version,
 * -EBADMSG for truncated or impossible data (then @k is unchanged).
 */
int i8042_load(struct i8042 *k, struct dec *d, unsigned int version);

#endif
