/* SPDX-License-Identifier: MIT */
/* vmsnap merge: flatten an incremental chain into one full image. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "snapshot/snapshot.h"
#include "tools/cli.h"
#include "util/json.h"
#include "util/log.h"

static void merge_usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: vmsnap merge IMAGE OUT [--compress] [--json]\n\n"
	    "Flatten IMAGE, an incremental image, and the chain of parents it needs into one\n"
	    "full image OUT that restores the same guest without them: memory from every image\n"
	    "of the chain (each run's checksum checked), the VM's state from IMAGE. OUT is\n"
	    "written to a temporary file, made durable and renamed into place; an existing OUT\n"
	    "is left as it was on failure. A full IMAGE is simply copied (or compressed).\n\n"
	    "  --compress     LZ4-compress the memory of OUT (restores read it eagerly)\n"
	    "  --json         print the result as one JSON object\n"
	    "  -h, --help     this text\n\n"
	    "Exit status: 0 merged, 1 not (the reason is printed), 2 on a command-line error.\n");
}

int cmd_merge(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"compress", no_argument, NULL, 'c'},
	    {"json", no_argument, NULL, 'j'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	bool compress = false, json = false;
	int c;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 'c': compress = true; break;
		case 'j': json = true; break;
		case 'h': merge_usage(stdout); return EXIT_OK;
		case ':':
			return cli_usage_error("merge", "option '%s' needs a value",
					       argv[optind - 1]);
		default: return cli_usage_error("merge", "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (argc - optind < 2)
		return cli_usage_error("merge", "IMAGE and OUT are required");
	if (argc - optind > 2)
		return cli_usage_error("merge", "unexpected argument '%s'", argv[optind + 2]);
	const char *in = argv[optind], *out = argv[optind + 1];

	struct snap_merge_result res;
	char err[512];
	if (snap_merge(in, out, compress, &res, err, sizeof(err))) {
		if (err[0])
			fprintf(stderr, "vmsnap merge: %s\n", err);
		return EXIT_FAIL;
	}
	char sha[65];
	for (int i = 0; i < 32; i++)
		sprintf(sha + 2 * i, "%02x", res.sha256[i]);
	if (json) {
		struct jw w;
		jw_init(&w, 0);
		jw_obj_begin(&w);
		jw_kv_str(&w, "path", out);
		jw_kv_str(&w, "from", in);
		jw_kv_u64(&w, "chain", res.chain);
		jw_kv_u64(&w, "file_size", res.file_size);
		jw_kv_u64(&w, "bytes_written", res.bytes_written);
		jw_kv_u64(&w, "pages_data", res.pages_data);
		jw_kv_u64(&w, "pages_lz4", res.pages_lz4);
		jw_kv_u64(&w, "pages_zero", res.pages_zero);
		jw_kv_bool(&w, "compressed", compress);
		jw_kv_double(&w, "total_ms", res.total_us / 1000.0);
		jw_kv_str(&w, "sha256", sha);
		jw_obj_end(&w);
		printf("%s\n", jw_error(&w) ? "{}" : jw_cstr(&w));
		jw_free(&w);
	} else {
		printf("merged %s (a chain of %u image%s) into %s in %.1f ms\n", in, res.chain,
		       res.chain == 1 ? "" : "s", out, res.total_us / 1000.0);
		printf("  %.1f MiB written; pages: %llu raw, %llu lz4, %llu zero\n",
		       res.bytes_written / 1048576.0, (unsigned long long)res.pages_data,
		       (unsigned long long)res.pages_lz4, (unsigned long long)res.pages_zero);
		printf("  sha256 %s\n", sha);
	}
	return EXIT_OK;
}
