/* SPDX-License-Identifier: MIT */
#ifndef VMSNAP_TOOLS_CLI_H
#define VMSNAP_TOOLS_CLI_H

#include <stdbool.h>
#include <stdio.h>

/* Exit statuses of the vmsnap command (also in README.md). */
#define EXIT_OK 0	    /* done; for run: the guest powered off, or quit was asked */
#define EXIT_FAIL 1	    /* an error: bad input, a host or VMM failure */
#define EXIT_USAGE 2	    /* the command line was wrong */
#define EXIT_GUEST_CRASH 3  /* the guest crashed: triple fault, emulation failure */

/** One subcommand: its name, a one-line summary, and its entry point (argv[0] is the name). */
struct cli_command {
	const char *name;
	const char *summary;
	int (*main)(int argc, char **argv);
};

int cmd_run(int argc, char **argv);
int cmd_ctl(int argc, char **argv);
int cmd_save(int argc, char **argv);
int cmd_restore(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_migrate(int argc, char **argv);
int cmd_receive(int argc, char **argv);
int cmd_clone(int argc, char **argv);
int cmd_ps(int argc, char **argv);

/*
 * The registry `vmsnap ps` reads (registry.c): a VM process adds itself once its vCPUs run
 * (vm_on_running, so the guest does not wait for the file) and removes itself when it
 * ends. @kind is "run", "restore", "receive" or "clone"; @name, @api and @image may be NULL.
 * Failures are silent (the VM runs all the same).
 */
struct vm;
const char *cli_registry_dir(void);
void cli_registry_add(struct vm *vm, const char *kind, const char *name, const char *api,
		      const char *image);
void cli_registry_remove(void);

/** vm_run() @vm and map how it ended to an exit status (as `run` documents). */
int cli_run_vm(struct vm *vm);

/**
 * Register the control-socket commands every VM serves besides the core ones (snapshot/'s
 * save, migrate/'s migrate, migrate-status, migrate-cancel). Logs and returns -errno on
 * failure. The caller calls mig_api_shutdown() after cli_run_vm().
 */
int cli_vm_commands(struct vm *vm);

/**
 * Parse "COMMAND [--json] [-h] IMAGE" for commands that read one image. Returns -1 with
 * *@json and *@path set, or the exit status to return (help printed, or a usage error).
 */
int cli_image_args(const char *cmd, int argc, char **argv, void (*usage)(FILE *f), bool *json,
		   const char **path);

/** The --disk and --net options of a command (run, receive). */
#include "vmm/vm.h"
struct cli_devices {
	struct vm_disk_config disks[VM_MAX_DISKS];
	unsigned int ndisks;
	struct vm_net_config nets[VM_MAX_NETS];
	unsigned int nnets;
};
/**
 * Take one --disk (@is_net false) or --net value (parsed in place). Returns -1 when taken, or
 * EXIT_USAGE after printing the usage error.
 */
int cli_device_arg(const char *cmd, bool is_net, char *val, struct cli_devices *d);

/** Print "vmsnap NAME: msg" for a usage error and return EXIT_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
