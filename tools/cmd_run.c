/* SPDX-License-Identifier: MIT */
/* vmsnap run: boot a kernel in a new VM. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migrate/migrate.h"
#include "snapshot/snapshot.h"
#include "tools/cli.h"
#include "util/log.h"
#include "util/parse.h"
#include "vmm/vm.h"

static void run_usage(FILE *f)
{
	fprintf(f,
		"usage: vmsnap run --kernel FILE [OPTIONS]\n\n"
		"Boot a Linux bzImage or an ELF with a PVH entry note in a new VM and run it until\n"
		"the guest powers off.\n\n"
		"  --kernel FILE         bzImage (64-bit boot protocol) or PVH ELF (e.g. vmlinux)\n"
		"  --initrd FILE         initial ramdisk\n"
		"  --cmdline STRING      kernel command line\n"
		"  --mem SIZE            guest RAM, e.g. 512M, 4G (default 256M)\n"
		"  --cpus N              number of vCPUs, 1..%d (default 1)\n"
		"  --api SOCKET          serve the control socket at this path\n"
		"  --console stdio|FILE  guest serial console (default stdio)\n"
		"  --cpu-template NAME   host (all KVM offers, default) or baseline (hides CX16,\n"
		"                        XSAVE, AVX and what depends on them)\n"
		"  --mem-backend memfd|anon  guest RAM on a memfd (default: shareable, untouched\n"
		"                        pages found without reading them) or anonymous memory\n"
		"                        with transparent huge pages (faster to fault in)\n"
		"  --disk PATH[,readonly][,overlay=FILE]  a virtio-blk disk on a raw file; with\n"
		"                        overlay=FILE writes go to a copy-on-write overlay (made\n"
		"                        if missing) and PATH is never written (repeatable, %d)\n"
		"  --net tap=NAME[,mac=MAC]  a virtio-net interface on host tap NAME (created if\n"
		"                        missing; MAC generated if not given) (repeatable, %d)\n"
		"  -v, --verbose         more log output (repeat for debug)\n"
		"  -h, --help            this text\n\n"
		"Exit status: 0 when the guest powers off or the VM is told to quit, 1 on an\n"
		"error, 2 on a command-line error, 3 when the guest crashes (triple fault,\n"
		"instruction the CPU cannot run), 128+N when stopped by signal N.\n",
		VM_MAX_CPUS, VM_MAX_DISKS, VM_MAX_NETS);
}

int cmd_run(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "kernel", required_argument, NULL, 'k' },
		{ "initrd", required_argument, NULL, 'i' },
		{ "cmdline", required_argument, NULL, 'c' },
		{ "mem", required_argument, NULL, 'm' },
		{ "cpus", required_argument, NULL, 'n' },
		{ "api", required_argument, NULL, 'a' },
		{ "console", required_argument, NULL, 'o' },
		{ "cpu-template", required_argument, NULL, 't' },
		{ "mem-backend", required_argument, NULL, 'b' },
		{ "disk", required_argument, NULL, 'D' },
		{ "net", required_argument, NULL, 'N' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct vm_config cfg = { .mem_size = 256ull << 20, .ncpus = 1 };
	struct cli_devices devs = { .ndisks = 0 };
	int verbose = 0;
	int c, r;
	uint64_t v;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "+:vh", opts, NULL)) != -1) {
		switch (c) {
		case 'k': cfg.kernel = optarg; break;
		case 'i': cfg.initrd = optarg; break;
		case 'c': cfg.cmdline = optarg; break;
		case 'a': cfg.api_path = optarg; break;
		case 'o': cfg.console = optarg; break;
		case 't': cfg.cpu_template = optarg; break;
		case 'b': cfg.mem_backend = optarg; break;
		case 'v': verbose++; break;
		case 'h': run_usage(stdout); return EXIT_OK;
		case 'D':
		case 'N':
			if ((r = cli_device_arg("run", c == 'N', optarg, &devs)) >= 0)
				return r;
			break;
		case 'm':
			if (parse_size(optarg, &v))
				return cli_usage_error("run", "--mem '%s' is not a size like 512M or 4G",
						       optarg);
			if (v == 0)
				return cli_usage_error("run", "--mem must be more than 0");
			if (v % 4096)
				return cli_usage_error("run", "--mem must be a multiple of 4 KiB");
			cfg.mem_size = v;
			break;
		case 'n':
			if (parse_uint(optarg, 1, VM_MAX_CPUS, &v))
				return cli_usage_error("run", "--cpus '%s' must be a number from 1 to %d",
						       optarg, VM_MAX_CPUS);
			cfg.ncpus = (unsigned int)v;
			break;
		case ':':
			return cli_usage_error("run", "option '%s' needs a value", argv[optind - 1]);
		default:
			return cli_usage_error("run", "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return cli_usage_error("run", "unexpected argument '%s'", argv[optind]);
	if (!cfg.kernel)
		return cli_usage_error("run", "--kernel FILE is required");
	log_set_level(verbose >= 2 ? LOG_DEBUG : verbose ? LOG_INFO : LOG_WARN);

	cfg.disks = devs.disks;
	cfg.ndisks = devs.ndisks;
	cfg.nets = devs.nets;
	cfg.nnets = devs.nnets;
	struct vm *vm;
	r = vm_create(&cfg, &vm);
	if (r)
		return EXIT_FAIL;
	if (cfg.api_path && cli_vm_commands(vm)) {
		vm_destroy(vm);
		return EXIT_FAIL;
	}
	cli_registry_add(vm, "run", NULL, cfg.api_path, cfg.kernel);
	int status = cli_run_vm(vm);
	cli_registry_remove();
	mig_api_shutdown(vm);
	vm_destroy(vm);
	return status;
}

int cli_device_arg(const char *cmd, bool is_net, char *val, struct cli_devices *d)
{
	char err[256];
	if (is_net) {
		if (d->nnets == VM_MAX_NETS)
			return cli_usage_error(cmd, "at most %d --net options", VM_MAX_NETS);
		if (vm_net_parse(val, &d->nets[d->nnets], err, sizeof(err)))
			return err[0] ? cli_usage_error(cmd, "%s", err) : EXIT_USAGE;
		d->nnets++;
	} else {
		if (d->ndisks == VM_MAX_DISKS)
			return cli_usage_error(cmd, "at most %d --disk options", VM_MAX_DISKS);
		if (vm_disk_parse(val, &d->disks[d->ndisks], err, sizeof(err)))
			return cli_usage_error(cmd, "%s", err);
		d->ndisks++;
	}
	return -1;
}

int cli_vm_commands(struct vm *vm)
{
	int r = snap_api_register(vm);
	if (!r)
		r = mig_api_register(vm);
	if (r)
		log_err("cannot register the control-socket commands: %s", strerror(-r));
	return r;
}

int cli_run_vm(struct vm *vm)
{
	const char *reason = "";
	enum vm_exit_kind kind = vm_run(vm, &reason);
	int status;
	switch (kind) {
	case VM_EXIT_POWEROFF:
	case VM_EXIT_QUIT:
		log_info("%s", reason);
		status = EXIT_OK;
		break;
	case VM_EXIT_GUEST_CRASH:
		log_err("%s", reason);
		status = EXIT_GUEST_CRASH;
		break;
	case VM_EXIT_SIGNAL:
		log_warn("%s", reason);
		status = 128 + vm_stop_signal(vm);
		break;
	default:
		if (reason && *reason) /* an empty reason was logged where it happened */
			log_err("%s", reason);
		status = EXIT_FAIL;
		break;
	}
	return status;
}
