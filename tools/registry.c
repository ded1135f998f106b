/* SPDX-License-Identifier: MIT */
/*
 * The registry of running VMs that `vmsnap ps` reads: every VM process (run, restore, receive,
 * clone) writes one small JSON file, <dir>/<pid>.json, while it runs. A file whose process is
 * gone (killed with -9) is stale; ps ignores and removes it.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tools/cli.h"
#include "util/json.h"
#include "util/log.h"
#include "vmm/vm.h"

static char reg_file[PATH_MAX];

const char *cli_registry_dir(void)
{
	static char dir[PATH_MAX];
	const char *env = getenv("VMSNAP_RUN_DIR");
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	if (env && *env)
		snprintf(dir, sizeof(dir), "%s", env);
	else if (geteuid() == 0)
		snprintf(dir, sizeof(dir), "/run/vmsnap");
	else if (xdg && *xdg)
		snprintf(dir, sizeof(dir), "%s/vmsnap", xdg);
	else
		snprintf(dir, sizeof(dir), "/tmp/vmsnap-%u", (unsigned)geteuid());
	return dir;
}

static char *abs_path(const char *p, char *buf, size_t len)
{
	if (!p || !*p) {
		buf[0] = 0;
		return buf;
	}
	if (p[0] == '/' || !getcwd(buf, len)) {
		snprintf(buf, len, "%s", p);
		return buf;
	}
	size_t n = strlen(buf);
	snprintf(buf + n, len - n, "/%s", p);
	return buf;
}

/* What cli_registry_add() was given, written once the vCPUs run. */
static struct {
	char kind[16], name[256], api[PATH_MAX], image[PATH_MAX];
} pending;

static void registry_write(void *unused)
{
	(void)unused;
	const char *dir = cli_registry_dir();
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		log_debug("registry %s: %s", dir, strerror(errno));
		return; /* ps will not list this VM; it runs all the same */
	}
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	struct jw w;
	jw_init(&w, 8192);
	jw_obj_begin(&w);
	jw_kv_u64(&w, "v", 1);
	jw_kv_u64(&w, "pid", (uint64_t)getpid());
	jw_kv_str(&w, "kind", pending.kind);
	jw_kv_str(&w, "name", pending.name);
	jw_kv_str(&w, "api", pending.api);
	jw_kv_str(&w, "image", pending.image);
	jw_kv_u64(&w, "started_ms", (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
	jw_obj_end(&w);
	char tmp[PATH_MAX + 8];
	snprintf(reg_file, sizeof(reg_file), "%s/%d.json", dir, (int)getpid());
	snprintf(tmp, sizeof(tmp), "%s.tmp", reg_file);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd >= 0) {
		const char *s = jw_cstr(&w);
		ssize_t n = write(fd, s, strlen(s));
		close(fd);
		if (n != (ssize_t)strlen(s) || rename(tmp, reg_file) < 0) {
			unlink(tmp);
			reg_file[0] = 0;
		}
	} else {
		reg_file[0] = 0;
	}
	jw_free(&w);
}

void cli_registry_add(struct vm *vm, const char *kind, const char *name, const char *api,
		      const char *image)
{
	snprintf(pending.kind, sizeof(pending.kind), "%s", kind);
	snprintf(pending.name, sizeof(pending.name), "%s", name ? name : "");
	abs_path(api, pending.api, sizeof(pending.api));
	abs_path(image, pending.image, sizeof(pending.image));
	if (vm_on_running(vm, registry_write, NULL, false))
		log_debug("registry: no room for the hook; ps will not list this VM");
}

void cli_registry_remove(void)
{
	if (reg_file[0])
		unlink(reg_file);
	reg_file[0] = 0;
}
