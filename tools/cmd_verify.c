/* SPDX-License-Identifier: MIT */
/* vmsnap verify: check every checksum of an image. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "formats/image.h"
#include "snapshot/snapshot.h"
#include "tools/cli.h"
#include "util/json.h"

static void verify_usage(FILE *f)
{
	fprintf(f, "usage: vmsnap verify IMAGE [--json]\n\n"
		   "Check the image completely: its structure, the CRC32C of every section and of\n"
		   "every memory run, every LZ4 block, that holes are zero, the SHA-256 of the\n"
		   "whole file, and that every vCPU, VM and device record decodes.\n\n"
		   "  --json       print the result as one JSON object on stdout\n"
		   "  -h, --help   this text\n\n"
		   "Exit status: 0 the image is sound, 1 it is not (the first failure is named,\n"
		   "with its section and offset), 2 on a command-line error.\n");
}

int cmd_verify(int argc, char **argv)
{
	bool json = false;
	const char *path;
	int st = cli_image_args("verify", argc, argv, verify_usage, &json, &path);
	if (st >= 0)
		return st;

	char err[1024] = "";
	struct snap_verify_result res;
	int r;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		snprintf(err, sizeof(err), "cannot open: %s", strerror(errno));
	} else {
		img_set_quiet(true);
		r = snap_verify_fd(fd, &res, err, sizeof(err));
		close(fd);
	}
	if (json) {
		struct jw w;
		char sha[65] = "";
		jw_init(&w, 0);
		jw_obj_begin(&w);
		jw_kv_str(&w, "path", path);
		jw_kv_bool(&w, "ok", r == 0);
		if (r) {
			jw_kv_str(&w, "error", err);
		} else {
			for (int i = 0; i < 32; i++)
				sprintf(sha + 2 * i, "%02x", res.sha256[i]);
			jw_kv_u64(&w, "sections", res.sections);
			jw_kv_u64(&w, "runs", res.runs);
			jw_kv_u64(&w, "bytes_hashed", res.bytes_hashed);
			jw_kv_str(&w, "sha256", sha);
		}
		jw_obj_end(&w);
		printf("%s\n", jw_error(&w) ? "{}" : jw_cstr(&w));
		jw_free(&w);
	}
	if (r) {
		fprintf(stderr, "vmsnap verify: %s: %s\n", path, err);
		return EXIT_FAIL;
	}
	if (!json) {
		printf("%s: sound: %llu sections, %llu memory runs, %.1f MiB hashed, sha256 ", path,
		       (unsigned long long)res.sections, (unsigned long long)res.runs,
		       res.bytes_hashed / 1048576.0);
		for (int i = 0; i < 32; i++)
			printf("%02x", res.sha256[i]);
		printf("\n");
	}
	return EXIT_OK;
}
