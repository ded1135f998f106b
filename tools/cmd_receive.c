/* SPDX-License-Identifier: MIT */
/* vmsnap receive: the destination of a live migration. */
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

static void receive_usage(FILE *f)
{
	fprintf(f,
		"usage: vmsnap receive --listen ADDR:PORT [OPTIONS]\n\n"
		"Wait for one 'vmsnap migrate' to connect, check that its guest can run here,\n"
		"receive its memory and state, then run the guest until it ends (like 'run').\n\n"
		"  --listen ADDR:PORT    address to listen on (port 0: any, see --port-file)\n"
		"  --api SOCKET          serve the new VM's control socket at this path\n"
		"  --console stdio|FILE  guest serial console (default stdio)\n"
		"  --tls-cert FILE       this host's certificate (PEM); with --tls-key and\n"
		"  --tls-key FILE        --tls-ca the stream is TLS 1.3 and the source must present\n"
		"  --tls-ca FILE         a certificate from that CA\n"
		"  --timeout SEC         give up if no source connects within SEC (default: wait)\n"
		"  --port-file FILE      write the listening port to FILE once listening\n"
		"  --mem-backend memfd|anon  guest RAM backing, as for 'vmsnap run'\n"
		"  --disk ..., --net ...  the guest's disks and networks, as for 'vmsnap run':\n"
		"                        the same ones, in the same order, as the source's (the\n"
		"                        disk files shared with it or copied before)\n"
		"  -v, --verbose         more log output (repeat for debug)\n"
		"  -h, --help            this text\n\n"
		"Exit status: as 'run' once the guest runs here; 1 when the migration fails\n"
		"(nothing is left behind, the source keeps its guest), 2 on a command-line error.\n");
}

static void write_port(void *arg, int port)
{
	const char *path = arg;
	if (!path)
		return;
	char tmp[4096];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f) {
		log_errno("cannot write %s", tmp);
		return;
	}
	fprintf(f, "%d\n", port);
	fclose(f);
	if (rename(tmp, path) < 0)
		log_errno("cannot rename %s", tmp);
}

int cmd_receive(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "api", required_argument, NULL, 'a' },
		{ "console", required_argument, NULL, 'o' },
		{ "tls-cert", required_argument, NULL, 'C' },
		{ "tls-key", required_argument, NULL, 'K' },
		{ "tls-ca", required_argument, NULL, 'A' },
		{ "timeout", required_argument, NULL, 't' },
		{ "port-file", required_argument, NULL, 'p' },
		{ "mem-backend", required_argument, NULL, 'b' },
		{ "disk", required_argument, NULL, 'D' },
		{ "net", required_argument, NULL, 'N' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct mig_receive_opts o = { .stall_timeout_s = 30 };
	struct cli_devices devs = { .ndisks = 0 };
	const char *port_file = NULL;
	int verbose = 0, c, r;
	uint64_t v;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "+:vh", opts, NULL)) != -1) {
		switch (c) {
		case 'l': o.listen = optarg; break;
		case 'a': o.api_path = optarg; break;
		case 'o': o.console = optarg; break;
		case 'C': o.tls.cert = optarg; break;
		case 'K': o.tls.key = optarg; break;
		case 'A': o.tls.ca = optarg; break;
		case 'p': port_file = optarg; break;
		case 'b': o.mem_backend = optarg; break;
		case 'D':
		case 'N':
			if ((r = cli_device_arg("receive", c == 'N', optarg, &devs)) >= 0)
				return r;
			break;
		case 'v': verbose++; break;
		case 'h': receive_usage(stdout); return EXIT_OK;
		case 't':
			if (parse_uint(optarg, 1, 86400, &v))
				return cli_usage_error("receive", "--timeout '%s' is not 1..86400 s",
						       optarg);
			o.accept_timeout_s = (int)v;
			break;
		case ':':
			return cli_usage_error("receive", "option '%s' needs a value",
					       argv[optind - 1]);
		default:
			return cli_usage_error("receive", "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return cli_usage_error("receive", "unexpected argument '%s'", argv[optind]);
	if (!o.listen)
		return cli_usage_error("receive", "--listen ADDR:PORT is required");
	if (mig_tls_wanted(&o.tls) && !(o.tls.cert && o.tls.key && o.tls.ca))
		return cli_usage_error("receive", "TLS needs --tls-cert, --tls-key and --tls-ca");
	log_set_level(verbose >= 2 ? LOG_DEBUG : verbose ? LOG_INFO : LOG_WARN);
	o.disks = devs.disks;
	o.ndisks = devs.ndisks;
	o.nets = devs.nets;
	o.nnets = devs.nnets;
	o.listening = write_port;
	o.listening_arg = (void *)port_file;

	struct mig_receive *rx;
	struct mig_receive_stats st;
	if (mig_receive(&o, &rx, &st))
		return EXIT_FAIL;
	struct vm *vm = mig_receive_vm(rx);
	if (o.api_path && cli_vm_commands(vm)) {
		/* The source resumes its guest when we do not confirm. */
		mig_receive_free(rx);
		return EXIT_FAIL;
	}
	fprintf(stderr,
		"vmsnap receive: %.1f MiB in %.1f ms over %s (%u rounds, %llu pages); starting the "
		"guest\n",
		(double)st.bytes / (1 << 20), (double)st.total_us / 1e3, st.transport, st.rounds,
		(unsigned long long)st.pages);
	r = mig_receive_confirm(rx);
	if (r) {
		log_err("cannot start the confirmation thread: %s", strerror(-r));
		mig_receive_free(rx);
		return EXIT_FAIL;
	}
	cli_registry_add(vm, "receive", NULL, o.api_path, NULL);
	int status = cli_run_vm(vm);
	cli_registry_remove();
	mig_receive_finish(rx);
	mig_api_shutdown(vm);
	mig_receive_free(rx);
	return status;
}
