/* SPDX-License-Identifier: MIT */
/* vmsnap restore: continue a VM saved in an image. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "migrate/migrate.h"
#include "snapshot/snapshot.h"
#include "tools/cli.h"
#include "util/log.h"
#include "vmm/vm.h"

static void restore_usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: vmsnap restore IMAGE [OPTIONS]\n\n"
	    "Continue the VM saved in IMAGE in this process, exactly where it was saved: same\n"
	    "configuration, registers, memory and devices; the guest's clock continues from\n"
	    "the moment of the save. Restoring one image twice gives two independent VMs.\n\n"
	    "  --api SOCKET              serve the control socket at this path (the restored\n"
	    "                            VM can be saved again)\n"
	    "  --memory-mode MODE        auto (default): mmap for uncompressed images, eager\n"
	    "                            for compressed ones;\n"
	    "                            mmap: map the image copy-on-write, pages load when the\n"
	    "                            guest touches them (fastest; run 'vmsnap verify' first\n"
	    "                            if the file may be damaged: memory is not checked);\n"
	    "                            eager: read and checksum all memory before running\n"
	    "  --console stdio|FILE      guest serial console (default stdio)\n"
	    "  --mem-backend memfd|anon  RAM backing for eager restores, as for 'vmsnap run'\n"
	    "  --disk-overlay FILE       where the restored VM writes its next disk (repeat in\n"
	    "                            disk order): the image's disk is a frozen layer, never\n"
	    "                            written; default IMAGE.PID.diskK.ovl\n"
	    "  -v, --verbose             print the restore timing; repeat for debug output\n"
	    "  -h, --help                this text\n\n"
	    "Exit status as for 'vmsnap run': 0 when the guest powers off or is told to quit,\n"
	    "1 on an error (an unusable image among them), 2 on a command-line error, 3 when\n"
	    "the guest crashes, 128+N when stopped by signal N.\n");
}

int cmd_restore(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"api", required_argument, NULL, 'a'},
	    {"memory-mode", required_argument, NULL, 'm'},
	    {"console", required_argument, NULL, 'o'},
	    {"mem-backend", required_argument, NULL, 'b'},
	    {"disk-overlay", required_argument, NULL, 'D'},
	    {"verbose", no_argument, NULL, 'v'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct snap_restore_opts ro = {0};
	const char *overlays[VM_MAX_DISKS];
	int verbose = 0, c;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":vh", opts, NULL)) != -1) {
		switch (c) {
		case 'a': ro.api_path = optarg; break;
		case 'o': ro.console = optarg; break;
		case 'b': ro.mem_backend = optarg; break;
		case 'D':
			if (ro.ndisk_overlays == VM_MAX_DISKS)
				return cli_usage_error("restore", "at most %d --disk-overlay options",
						       VM_MAX_DISKS);
			overlays[ro.ndisk_overlays++] = optarg;
			ro.disk_overlays = overlays;
			break;
		case 'v': verbose++; break;
		case 'h': restore_usage(stdout); return EXIT_OK;
		case 'm':
			if (snap_mem_mode_parse(optarg, &ro.mem_mode))
				return cli_usage_error(
				    "restore", "--memory-mode '%s' is not auto, eager or mmap",
				    optarg);
			break;
		case ':':
			return cli_usage_error("restore", "option '%s' needs a value",
					       argv[optind - 1]);
		default: return cli_usage_error("restore", "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return cli_usage_error("restore", "IMAGE is required");
	if (argc - optind > 1)
		return cli_usage_error("restore", "unexpected argument '%s'", argv[optind + 1]);
	ro.path = argv[optind];
	log_set_level(verbose >= 2 ? LOG_DEBUG : verbose ? LOG_INFO : LOG_WARN);

	struct snap_restore *sr;
	struct snap_restore_stats st;
	if (snap_restore(&ro, &sr, &st))
		return EXIT_FAIL; /* logged, one line */
	struct vm *vm = snap_restore_vm(sr);
	if (ro.api_path && cli_vm_commands(vm)) {
		snap_restore_free(sr);
		return EXIT_FAIL;
	}
	log_info("restored %s in %.2f ms (open+checks %.2f, create %.2f, memory %.2f %s, "
		 "state %.2f)",
		 ro.path, st.total_us / 1000.0, st.open_us / 1000.0, st.create_us / 1000.0,
		 st.memory_us / 1000.0, st.mmap ? "mmap" : "eager", st.state_us / 1000.0);
	cli_registry_add(vm, "restore", NULL, ro.api_path, ro.path);
	int status = cli_run_vm(vm);
	cli_registry_remove();
	mig_api_shutdown(vm);
	snap_restore_free(sr);
	return status;
}
