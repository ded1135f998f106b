/* SPDX-License-Identifier: MIT */
/* Verify an image: every checksum, and every state record this build can decode. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/image.h"
#include "snapshot/snapshot.h"
#include "snapshot/snapshot_internal.h"
#include "vmm/kvmstate.h"
#include "vmm/vm.h"

static int check_config(struct dec *d, unsigned int version)
{
	struct snap_config c;
	int r = snap_config_decode(d, version, &c);
	snap_config_free(&c);
	return r;
}

static int check_state(struct img *img, char *err, size_t errlen)
{
	for (size_t i = 0; i < img_section_count(img); i++) {
		const struct img_section_info *s = img_section_at(img, i);
		uint32_t type = IMG_SEC_TYPE(s->id);
		char name[32];
		void *buf = NULL;
		size_t len;
		uint16_t ver;
		int r = 0;

		if (type != IMG_SEC_CONFIG && type != IMG_SEC_VM && type != IMG_SEC_VCPU &&
		    type != IMG_SEC_DEVICE)
			continue;
		img_section_name(s->id, name, sizeof(name));
		if (type == IMG_SEC_DEVICE) {
			if (!vm_device_known(NULL, (uint16_t)IMG_SEC_INST(s->id), s->version) &&
			    (s->flags & IMG_SEC_REQUIRED)) {
				snprintf(
				    err, errlen,
				    "section %s (offset %llu): no device with id %u reads state "
				    "version %u in this vmsnap",
				    name, (unsigned long long)s->offset, IMG_SEC_INST(s->id),
				    s->version);
				return -ENOTSUP;
			}
			continue;
		}
		r = img_read_section(img, s->id, &buf, &len, &ver);
		if (r) {
			snprintf(err, errlen, "%s", img_last_error());
			return r;
		}
		struct dec d;
		dec_init(&d, buf, len);
		if (type == IMG_SEC_CONFIG)
			r = check_config(&d, ver);
		else if (type == IMG_SEC_VM)
			r = kvmstate_vm_check(&d, ver);
		else
			r = kvmstate_vcpu_check(&d, ver);
		if (!r && type != IMG_SEC_CONFIG && dec_remaining(&d))
			r = -EBADMSG;
		free(buf);
		if (r == -ENOTSUP) {
			snprintf(err, errlen,
				 "section %s (offset %llu): state version %u is newer than this "
				 "vmsnap reads",
				 name, (unsigned long long)s->offset, ver);
			return r;
		}
		if (r) {
			snprintf(err, errlen,
				 "section %s (offset %llu, %llu bytes): the state record does not "
				 "decode (%s)",
				 name, (unsigned long long)s->offset, (unsigned long long)s->length,
				 strerror(-r));
			return -EBADMSG;
		}
	}
	return 0;
}

int snap_verify_fd(int fd, struct snap_verify_result *res, char *err, size_t errlen)
{
	struct img *img = NULL;
	struct img_verify_stats vs;
	int r;

	memset(res, 0, sizeof(*res));
	err[0] = 0;
	r = img_open(&img, fd);
	if (r) {
		snprintf(err, errlen, "%s", img_last_error());
		goto out;
	}
	r = img_verify(img, &vs);
	if (r) {
		snprintf(err, errlen, "%s", img_last_error());
		goto out;
	}
	res->sections = vs.sections;
	res->runs = vs.runs;
	res->bytes_hashed = vs.bytes_hashed;
	memcpy(res->sha256, img_get_sha256(img), 32);
	r = check_state(img, err, errlen);
out:
	if (r && !err[0])
		snprintf(err, errlen, "%s", strerror(-r));
	img_close(img);
	return r;
}
