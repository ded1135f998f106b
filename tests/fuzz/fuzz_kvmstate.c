/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target for vmm/kvmstate.c's decoders (no ioctls). Input: one selector byte, then a
 * record. Selector bit 0: vCPU (0) or VM (1) record; bits 1-2: version - 1 (so versions
 * 1..4 are tried; unknown ones must give -ENOTSUP). Checked properties:
 *  - decode returns 0, -EBADMSG or -ENOTSUP and never reads out of bounds (the replay
 *    driver hands over exact-size copies, ASan watches);
 *  - a record that decodes re-encodes to exactly the bytes it was decoded from (the
 *    encoding is canonical), and describe agrees with check.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "formats/codec.h"
#include "util/log.h"
#include "vmm/kvmstate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_result(int r)
{
	if (r != 0 && r != -EBADMSG && r != -ENOTSUP)
		abort();
}

static void fuzz_vcpu(const uint8_t *p, size_t n, unsigned int version)
{
	struct kvmstate_vcpu s;
	struct dec d;
	char buf[256];

	dec_init(&d, p, n);
	int r = kvmstate_vcpu_decode(&d, version, &s);
	check_result(r);
	if (r == 0) {
		struct enc e;
		enc_init(&e);
		if (kvmstate_vcpu_encode(&s, &e) == 0 &&
		    (e.len != d.pos || memcmp(e.buf, p, e.len) != 0))
			abort();
		enc_free(&e);
	}
	kvmstate_vcpu_free(&s);

	dec_init(&d, p, n);
	if (kvmstate_vcpu_describe(&d, version, buf, sizeof(buf)) != r)
		abort();
}

static void fuzz_vm(const uint8_t *p, size_t n, unsigned int version)
{
	struct kvmstate_vm s;
	struct dec d;
	char buf[256];

	dec_init(&d, p, n);
	int r = kvmstate_vm_decode(&d, version, &s);
	check_result(r);
	if (r == 0) {
		struct enc e;
		enc_init(&e);
		if (kvmstate_vm_encode(&s, &e) == 0 &&
		    (e.len != d.pos || memcmp(e.buf, p, e.len) != 0))
			abort();
		enc_free(&e);
	}
	dec_init(&d, p, n);
	if (kvmstate_vm_describe(&d, version, buf, sizeof(buf)) != r)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Corrupt records are logged as errors; here they are the point: below LOG_ERR, quiet. */
	log_set_level((enum log_level)-1);
	if (size < 1)
		return 0;
	unsigned int version = 1 + ((data[0] >> 1) & 3);
	if (data[0] & 1)
		fuzz_vm(data + 1, size - 1, version);
	else
		fuzz_vcpu(data + 1, size - 1, version);
	return 0;
}
