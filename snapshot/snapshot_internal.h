/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_SNAPSHOT_SNAPSHOT_INTERNAL_H
#define VMSNAP_SNAPSHOT_SNAPSHOT_INTERNAL_H

/* Shared by the files of snapshot/ only. */

#include <stdint.h>

#include "formats/codec.h"
#include "vmm/vm.h"

/** CLOCK_MONOTONIC in microseconds. */
uint64_t snap_now_us(void);

/*
 * The config section (SNAP_CONFIG_VERSION 1): u64 mem_size, u32 ncpus, string cpu_template,
 * string kernel, string initrd, string cmdline. The header's vm-config record carries the
 * same; this section is where VMM options that the header does not know will go.
 */
void snap_config_encode(struct enc *e, const struct vm_config *cfg);

#endif
