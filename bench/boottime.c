/*
 * boottime: host-side timers for bench/boot.sh. Plain C, no project dependencies.
 *
 *   boottime [-t SEC] -- VMM ARGS...   launch a VMM that boots the test guest with its console on
 *                                       stdout; time from just before fork() to the first console
 *                                       byte, the first heartbeat token and the READY line
 *   boottime -x N -- PROG ARGS...       fork+exec+wait PROG N times (the cost of a process start)
 *   boottime -k N [-c CPUS] [-m MIB]    create and destroy an empty KVM VM N times
 *
 * Every time is CLOCK_MONOTONIC on the host, printed in milliseconds as key=value words on one
 * line, so bash can read them. The console is parsed as tests/guest/README.md says: at a line
 * start an upper-case letter begins a text line; elsewhere 'a'..'p' is a heartbeat.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: boottime [-t SEC] -- VMM ARGS...     time a test-guest boot to READY\n"
	    "       boottime -x N -- PROG ARGS...      time fork+exec+wait of PROG, N times\n"
	    "       boottime -k N [-c CPUS] [-m MIB]   time creating an empty KVM VM, N times\n"
	    "\n"
	    "Boot mode prints first_byte_ms= first_hb_ms= ready_ms= (-1: not seen) and, from the\n"
	    "READY line, ready_cpus= guest_up_ms=, then kills the VMM's process group.\n"
	    "Exit status: 0 READY and a heartbeat seen, 2 timeout or EOF, 64 usage.\n"
	    "-x and -k print one ms= word per run.\n");
}

/* Start argv in its own process group with stdout on a pipe (or /dev/null) and stdin on
 * /dev/null; the child's stderr goes to /dev/null too unless keep_stderr. */
static pid_t spawn(char **argv, int *out_fd, int keep_stderr)
{
	int p[2] = {-1, -1};
	if (out_fd && pipe2(p, O_CLOEXEC))
		return -1;
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);
		/* Own process group (killed as a whole), and killed with us if we die first. */
		setpgid(0, 0);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() == 1)
			_exit(127);
		dup2(null, 0);
		dup2(out_fd ? p[1] : null, 1);
		if (!keep_stderr)
			dup2(null, 2);
		execvp(argv[0], argv);
		_exit(127);
	}
	if (out_fd) {
		close(p[1]);
		*out_fd = p[0];
	}
	return pid;
}

static int boot_mode(char **argv, double timeout_s)
{
	double first_byte = -1, first_hb = -1, ready = -1, guest_up = -1;
	int fd, at_start = 1, in_text = 0, rc = 2, ready_cpus = -1;
	char line[64];
	size_t len = 0;
	double t0 = now_ms();
	pid_t pid = spawn(argv, &fd, 1);
	if (pid < 0) {
		perror("boottime: spawn");
		return 64;
	}
	double deadline = t0 + timeout_s * 1e3;
	while (ready < 0 || first_hb < 0) {
		double left = deadline - now_ms();
		if (left <= 0)
			break;
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		int r = poll(&pfd, 1, (int)left + 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			continue;
		char buf[4096];
		ssize_t n = read(fd, buf, sizeof(buf));
		double t = now_ms() - t0;
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (first_byte < 0)
			first_byte = t;
		for (ssize_t i = 0; i < n; i++) {
			char c = buf[i];
			if (in_text) {
				if (c == '\n') {
					line[len] = 0;
					in_text = 0;
					at_start = 1;
					/* "READY cpus=N up_ms=M": N CPUs in ring 3 after
					 * M ms of guest (TSC) time */
					if (ready < 0 && !strncmp(line, "READY", 5)) {
						ready = t;
						const char *nc = strstr(line, "cpus=");
						const char *up = strstr(line, "up_ms=");
						ready_cpus = nc ? atoi(nc + 5) : -1;
						guest_up = up ? atof(up + 6) : -1;
					}
				} else if (len < sizeof(line) - 1) {
					line[len++] = c;
				}
				continue;
			}
			if (at_start && c >= 'A' && c <= 'Z') {
				in_text = 1;
				len = 0;
				line[len++] = c;
			} else if (c >= 'a' && c <= 'p') {
				if (first_hb < 0)
					first_hb = t;
				at_start = 0;
			} else if (c == '\n') {
				at_start = 1;
			}
		}
	}
	if (ready >= 0 && first_hb >= 0)
		rc = 0;
	kill(-pid, SIGKILL);
	waitpid(pid, NULL, 0);
	close(fd);
	printf("first_byte_ms=%.3f first_hb_ms=%.3f ready_ms=%.3f ready_cpus=%d guest_up_ms=%.0f\n",
	       first_byte, first_hb, ready, ready_cpus, guest_up);
	return rc;
}

static int exec_mode(char **argv, int runs)
{
	for (int i = 0; i < runs; i++) {
		int status;
		double t0 = now_ms();
		pid_t pid = spawn(argv, NULL, 0);
		if (pid < 0 || waitpid(pid, &status, 0) < 0) {
			perror("boottime: spawn");
			return 64;
		}
		double t = now_ms() - t0;
		if (!WIFEXITED(status) || WEXITSTATUS(status) == 127) {
			fprintf(stderr, "boottime: %s failed\n", argv[0]);
			return 1;
		}
		printf("ms=%.3f\n", t);
	}
	return 0;
}

/* What a VMM does before it can load a guest: open /dev/kvm, create the VM with an in-kernel
 * irqchip and PIT, one memory slot (anonymous, untouched), the vCPUs and their kvm_run maps. */
static int kvm_once(int cpus, size_t mem, double *created)
{
	int kvm = -1, vm = -1, vcpu[64], n = 0, rc = -1;
	void *ram = MAP_FAILED;
	long run_size;
	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		goto out;
	vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		goto out;
	if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL))
		goto out;
	/* RAM before the irqchip, as vmsnap does: a memslot change after KVM_CREATE_IRQCHIP
	 * waits for a grace period (4-9 ms on the development machines). */
	ram = mmap(NULL, mem, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		   -1, 0);
	if (ram == MAP_FAILED)
		goto out;
	struct kvm_userspace_memory_region slot = {
	    .slot = 0, .guest_phys_addr = 0, .memory_size = mem, .userspace_addr = (__u64)ram};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &slot) || ioctl(vm, KVM_CREATE_IRQCHIP, 0))
		goto out;
	struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
	if (ioctl(vm, KVM_CREATE_PIT2, &pit))
		goto out;
	run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size <= 0)
		goto out;
	for (n = 0; n < cpus; n++) {
		vcpu[n] = ioctl(vm, KVM_CREATE_VCPU, n);
		if (vcpu[n] < 0)
			goto out;
		void *run =
		    mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu[n], 0);
		if (run == MAP_FAILED) {
			close(vcpu[n]);
			goto out;
		}
		munmap(run, (size_t)run_size);
	}
	rc = 0;
	*created = now_ms();
out:
	if (rc)
		perror("boottime: kvm");
	while (n-- > 0)
		close(vcpu[n]);
	if (ram != MAP_FAILED)
		munmap(ram, mem);
	if (vm >= 0)
		close(vm);
	if (kvm >= 0)
		close(kvm);
	return rc;
}

int main(int argc, char **argv)
{
	int opt, exec_runs = 0, kvm_runs = 0, cpus = 1;
	double timeout_s = 30;
	size_t mem_mib = 256;
	while ((opt = getopt(argc, argv, "+t:x:k:c:m:h")) != -1) {
		switch (opt) {
		case 't': timeout_s = atof(optarg); break;
		case 'x': exec_runs = atoi(optarg); break;
		case 'k': kvm_runs = atoi(optarg); break;
		case 'c': cpus = atoi(optarg); break;
		case 'm': mem_mib = (size_t)atol(optarg); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 64;
		}
	}
	if (kvm_runs > 0) {
		if (cpus < 1 || cpus > 64 || mem_mib < 1)
			return usage(stderr), 64;
		for (int i = 0; i < kvm_runs; i++) {
			double t0 = now_ms(), t1;
			if (kvm_once(cpus, mem_mib << 20, &t1))
				return 1;
			printf("ms=%.3f destroy_ms=%.3f\n", t1 - t0, now_ms() - t1);
		}
		return 0;
	}
	if (optind >= argc || timeout_s <= 0) {
		usage(stderr);
		return 64;
	}
	if (exec_runs > 0)
		return exec_mode(argv + optind, exec_runs);
	return boot_mode(argv + optind, timeout_s);
}
