/* SPDX-License-Identifier: MIT */
/* Merge: flatten an incremental chain into one full image. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "formats/image.h"
#include "snapshot/snapshot.h"
#include "snapshot/snapshot_internal.h"
#include "util/log.h"

/* Every section of @img but the format's own and the parent, as they are. */
static int copy_sections(struct img *img, struct img_writer *w)
{
	for (size_t i = 0; i < img_section_count(img); i++) {
		const struct img_section_info *s = img_section_at(img, i);
		uint32_t type = IMG_SEC_TYPE(s->id);
		void *buf = NULL;
		size_t len;
		uint16_t ver;
		if (type == IMG_SEC_PAD || type == IMG_SEC_PARENT || type == IMG_SEC_MEM_MAP ||
		    type == IMG_SEC_MEM_DATA || type == IMG_SEC_INDEX)
			continue;
		int r = img_read_section(img, s->id, &buf, &len, &ver);
		if (!r)
			r = img_write_section(w, s->id, ver, s->flags & IMG_SEC_REQUIRED, buf, len);
		free(buf);
		if (r)
			return r;
	}
	return 0;
}

int snap_merge(const char *child, const char *out, bool compress, struct snap_merge_result *res,
	       char *err, size_t errlen)
{
	struct snap_chain chain;
	struct img_writer *w = NULL;
	struct img_write_stats ws;
	char tmp[4096 + 64] = "";
	bool made_tmp = false;
	uint8_t *ram = MAP_FAILED;
	uint64_t t0 = snap_now_us(), size = 0;
	int fd = -1, r;

	memset(res, 0, sizeof(*res));
	err[0] = 0;
	r = snap_chain_open(&chain, child);
	if (r)
		return r; /* logged, naming the file */
	res->chain = (unsigned int)chain.n;
	struct img_header h = *img_get_header(chain.link[0].img);
	size = h.vm.ram_size;
	/* Anonymous and sparse: only what the chain stores gets memory. */
	ram = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		   -1, 0);
	if (ram == MAP_FAILED) {
		r = -errno;
		snprintf(err, errlen, "cannot map %llu bytes for the guest memory: %s",
			 (unsigned long long)size, strerror(errno));
		goto out;
	}
	r = snap_chain_read_memory(&chain, ram, size, true);
	if (r)
		goto out; /* logged with the file and page */

	/* A temporary file next to @out, renamed over it once durable (as save does). */
	char *d = strdup(out), *b = strdup(out);
	if (!d || !b) {
		free(d);
		free(b);
		r = -ENOMEM;
		goto out;
	}
	snprintf(tmp, sizeof(tmp), "%s/.%s.tmp-%d", dirname(d), basename(b), (int)getpid());
	free(d);
	free(b);
	fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		r = -errno;
		snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
		goto out;
	}
	made_tmp = true;
	h.flags &= ~IMG_HDR_INCREMENTAL;
	r = img_writer_open(&w, fd, &h);
	if (!r)
		r = copy_sections(chain.link[0].img, w);
	if (!r) {
		struct img_write_opts wo = {.compress = compress};
		r = img_write_memory(w, ram, size, NULL, &wo);
	}
	if (!r)
		r = img_writer_finish(w, &ws);
	if (r)
		goto out; /* the writer logged what and where */
	if (fsync(fd) < 0 || close(fd) < 0) {
		fd = -1;
		r = -errno;
		snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
		goto out;
	}
	fd = -1;
	if (rename(tmp, out) < 0) {
		r = -errno;
		snprintf(err, errlen, "cannot rename %s to %s: %s", tmp, out, strerror(errno));
		goto out;
	}
	d = strdup(out);
	if (d) {
		int dfd = open(dirname(d), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd >= 0) {
			fsync(dfd);
			close(dfd);
		}
		free(d);
	}
	made_tmp = false;
	res->file_size = ws.file_size;
	res->bytes_written = ws.bytes_written;
	res->pages_data = ws.pages_data;
	res->pages_zero = ws.pages_zero;
	res->pages_lz4 = ws.pages_lz4;
	memcpy(res->sha256, ws.sha256, 32);
	res->total_us = snap_now_us() - t0;
out:
	img_writer_free(w);
	if (fd >= 0) {
		close(fd);
	}
	if (made_tmp)
		unlink(tmp);
	if (ram != MAP_FAILED)
		munmap(ram, size);
	snap_chain_close(&chain);
	return r;
}
