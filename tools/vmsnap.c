/* SPDX-License-Identifier: MIT */
/* The vmsnap command: dispatches to one subcommand. */
#include <getopt.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "tools/cli.h"
#include "util/log.h"

static const struct cli_command commands[] = {
	{ "run", "boot a kernel in a new VM", cmd_run },
	{ "ctl", "send a command to a running VM's control socket", cmd_ctl },
	{ "save", "save a running VM to an image file", cmd_save },
	{ "restore", "continue a VM saved in an image file", cmd_restore },
	{ "inspect", "describe an image file", cmd_inspect },
	{ "verify", "check every checksum of an image file", cmd_verify },
	{ "merge", "flatten an incremental image and its parents into one image", cmd_merge },
	{ "migrate", "live-migrate a running VM to a 'vmsnap receive'", cmd_migrate },
	{ "receive", "receive a live-migrated VM over TCP and run it", cmd_receive },
	{ "clone", "start N copy-on-write clones of a saved VM", cmd_clone },
	{ "ps", "list the VMs running on this host", cmd_ps },
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "vmsnap %s: %s (see 'vmsnap %s --help')\n", cmd, msg, cmd);
	return EXIT_USAGE;
}

int cli_image_args(const char *cmd, int argc, char **argv, void (*usage_fn)(FILE *f), bool *json,
		   const char **path)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	*json = false;
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 'j': *json = true; break;
		case 'h': usage_fn(stdout); return EXIT_OK;
		default: return cli_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind >= argc)
		return cli_usage_error(cmd, "IMAGE is required");
	if (argc - optind > 1)
		return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind + 1]);
	*path = argv[optind];
	return -1;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: vmsnap COMMAND [OPTIONS]\n\n"
		   "A KVM virtual machine monitor whose VMs can be saved, restored, cloned and "
		   "moved.\n\nCommands:\n");
	for (size_t i = 0; i < NCOMMANDS; i++)
		fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
	fprintf(f, "\n'vmsnap COMMAND --help' describes a command. 'vmsnap --version' prints the "
		   "version.\n");
}

int main(int argc, char **argv)
{
	log_set_prog("vmsnap");
	/* A disk file hitting RLIMIT_FSIZE is an I/O error for the guest, not our death. */
	signal(SIGXFSZ, SIG_IGN);
	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return EXIT_OK;
	}
	if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
		printf("vmsnap %s\n", VMSNAP_VERSION);
		return EXIT_OK;
	}
	for (size_t i = 0; i < NCOMMANDS; i++)
		if (!strcmp(argv[1], commands[i].name))
			return commands[i].main(argc - 1, argv + 1);
	fprintf(stderr, "vmsnap: unknown command '%s' (see 'vmsnap --help')\n", argv[1]);
	return EXIT_USAGE;
}
