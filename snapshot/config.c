/* SPDX-License-Identifier: MIT */
/* The config section: the VM's configuration as the VMM was given it (snapshot_internal.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "formats/image.h"
#include "snapshot/snapshot.h"
#include "snapshot/snapshot_internal.h"
#include "util/log.h"

void snap_config_encode(struct enc *e, const struct vm_config *cfg)
{
	enc_u64(e, cfg->mem_size);
	enc_u32(e, cfg->ncpus);
	enc_str(e, cfg->cpu_template ? cfg->cpu_template : "host");
	enc_str(e, cfg->kernel);
	enc_str(e, cfg->initrd);
	enc_str(e, cfg->cmdline);
	/* version 2: the devices */
	enc_u32(e, cfg->ndisks);
	for (unsigned int i = 0; i < cfg->ndisks; i++) {
		enc_str(e, cfg->disks[i].path);
		enc_str(e, cfg->disks[i].overlay);
		enc_u8(e, cfg->disks[i].readonly);
		enc_u8(e, cfg->disks[i].has_identity);
		enc_u64(e, cfg->disks[i].id_size);
		enc_bytes(e, cfg->disks[i].id_sha256, 32);
	}
	enc_u32(e, cfg->nnets);
	for (unsigned int i = 0; i < cfg->nnets; i++) {
		enc_str(e, cfg->nets[i].tap);
		enc_str(e, cfg->nets[i].mac);
	}
}

static char *take_str(struct dec *d)
{
	char buf[IMG_STR_MAX];
	buf[0] = 0;
	dec_str(d, buf, sizeof(buf));
	if (dec_error(d) || !buf[0])
		return NULL;
	char *s = strdup(buf);
	if (!s)
		dec_fail(d, -ENOMEM);
	return s;
}

int snap_config_decode(struct dec *d, unsigned int version, struct snap_config *c)
{
	char buf[IMG_STR_MAX];
	memset(c, 0, sizeof(*c));
	if (version < 1 || version > SNAP_CONFIG_VERSION)
		return -ENOTSUP;
	dec_u64_val(d);
	dec_u32_val(d);
	dec_str(d, buf, 64);
	for (int i = 0; i < 3; i++)
		dec_str(d, buf, sizeof(buf));
	if (version >= 2) {
		uint32_t n = dec_u32_val(d);
		if (n > VM_MAX_DISKS)
			dec_fail(d, -EBADMSG);
		for (uint32_t i = 0; i < n && !dec_error(d); i++) {
			c->disks[i].path = take_str(d);
			c->disks[i].overlay = take_str(d);
			c->disks[i].readonly = dec_u8_val(d) != 0;
			c->disks[i].has_identity = dec_u8_val(d) != 0;
			c->disks[i].id_size = dec_u64_val(d);
			dec_bytes(d, c->disks[i].id_sha256, 32);
			if (!c->disks[i].path)
				dec_fail(d, -EBADMSG);
			c->ndisks = i + 1;
		}
		n = dec_u32_val(d);
		if (n > VM_MAX_NETS)
			dec_fail(d, -EBADMSG);
		for (uint32_t i = 0; i < n && !dec_error(d); i++) {
			c->nets[i].tap = take_str(d);
			c->nets[i].mac = take_str(d);
			if (!c->nets[i].tap)
				dec_fail(d, -EBADMSG);
			c->nnets = i + 1;
		}
	}
	int r = dec_error(d);
	if (r)
		snap_config_free(c);
	return r;
}

int snap_config_read(struct img *img, const char *path, struct snap_config *c)
{
	void *buf = NULL;
	size_t len;
	uint16_t ver;
	memset(c, 0, sizeof(*c));
	int r = img_read_section(img, IMG_SEC_ID(IMG_SEC_CONFIG, 0), &buf, &len, &ver);
	if (r == -ENOENT)
		return 0;
	if (r)
		return r; /* logged by the reader */
	struct dec d;
	dec_init(&d, buf, len);
	r = snap_config_decode(&d, ver, c);
	free(buf);
	if (r)
		log_err("%s: corrupt config section (%s)", path, strerror(-r));
	return r;
}

void snap_config_free(struct snap_config *c)
{
	for (unsigned int i = 0; i < VM_MAX_DISKS; i++) {
		free((char *)c->disks[i].path);
		free((char *)c->disks[i].overlay);
	}
	for (unsigned int i = 0; i < VM_MAX_NETS; i++) {
		free((char *)c->nets[i].tap);
		free((char *)c->nets[i].mac);
	}
	memset(c, 0, sizeof(*c));
}
