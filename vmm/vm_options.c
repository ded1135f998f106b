/* SPDX-License-Identifier: MIT */
/* Device option values: `--disk PATH[,readonly][,overlay=PATH]`, `--net tap=NAME[,mac=MAC]`. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "vmm/virtio_net.h"
#include "vmm/vm_internal.h"

int vm_disk_parse(char *s, struct vm_disk_config *d, char *err, size_t errlen)
{
	memset(d, 0, sizeof(*d));
	char *save = NULL;
	for (char *tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (!d->path) {
			d->path = tok;
		} else if (!strcmp(tok, "readonly") || !strcmp(tok, "ro")) {
			d->readonly = true;
		} else if (!strncmp(tok, "overlay=", 8) && tok[8]) {
			d->overlay = tok + 8;
		} else {
			snprintf(err, errlen,
				 "--disk: unknown option '%s' (known: readonly, overlay=PATH)", tok);
			return -EINVAL;
		}
	}
	if (!d->path || !*d->path || s[0] == ',') {
		snprintf(err, errlen, "--disk needs a file: --disk PATH[,readonly][,overlay=PATH]");
		return -EINVAL;
	}
	if (d->overlay && d->readonly) {
		snprintf(err, errlen, "--disk: an overlay is for writing; drop 'readonly' or the "
				      "overlay");
		return -EINVAL;
	}
	return 0;
}

int vm_net_parse(char *s, struct vm_net_config *n, char *err, size_t errlen)
{
	struct virtio_net_params p;
	memset(n, 0, sizeof(*n));
	if (virtio_net_parse(s, &p)) {
		err[0] = 0; /* virtio_net_parse said what is wrong, in one line */
		return -EINVAL;
	}
	char *save = NULL;
	for (char *tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (!strncmp(tok, "tap=", 4))
			n->tap = tok + 4;
		else if (!strncmp(tok, "mac=", 4))
			n->mac = tok + 4;
	}
	return 0;
}

int vm_net_params(const struct vm_net_config *n, struct virtio_net_params *p)
{
	char spec[64];
	if (n->mac)
		snprintf(spec, sizeof(spec), "tap=%s,mac=%s", n->tap ? n->tap : "", n->mac);
	else
		snprintf(spec, sizeof(spec), "tap=%s", n->tap ? n->tap : "");
	return virtio_net_parse(spec, p);
}
