/*
 * blkbench_host: the host's own read rates on a file, for bench/blk.sh.
 *
 *   blkbench_host rand FILE SECONDS [direct]
 *   blkbench_host read FILE REQ_KIB NBUF
 *
 * rand: one thread, one request at a time (pread of 4 KiB at a uniformly random 4 KiB-aligned
 * offset of the whole file) for SECONDS; with "direct" the file is opened O_DIRECT (no page
 * cache). That is how a single-threaded, synchronous device backend (vmsnap's I/O thread)
 * reads. Prints "rand4k_iops= ops= ms= direct=0|1".
 *
 * read: the whole file in order, REQ_KIB per pread, into NBUF buffers used in turn (populated
 * before the clock starts) in a shared memfd mapping: the memory a guest with NBUF requests of
 * REQ_KIB in flight reads into under vmsnap (guest RAM is a memfd), where dd reuses one
 * anonymous buffer that stays in the CPU's cache. Prints "read_mibps= ms=".
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int usage(void)
{
	fprintf(stderr, "usage: blkbench_host rand FILE SECONDS [direct]\n"
			"       blkbench_host read FILE REQ_KIB NBUF\n");
	return 64;
}

static int seq_read(const char *path, long req_kib, long nbuf)
{
	if (req_kib < 4 || req_kib > 65536 || nbuf < 1 || nbuf > 1024)
		return usage();
	size_t req = (size_t)req_kib << 10, len = req * (size_t)nbuf;
	/* In a memfd mapped shared, as vmsnap's guest RAM is (shmem: 4 KiB pages, no THP). */
	int mfd = memfd_create("blkbench", MFD_CLOEXEC);
	char *bufs = mfd < 0 || ftruncate(mfd, (off_t)len) ? MAP_FAILED
		   : mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (bufs == MAP_FAILED) {
		perror("blkbench_host: memfd");
		return 1;
	}
	memset(bufs, 1, req * (size_t)nbuf);
	int fd = open(path, O_RDONLY);
	if (fd < 0) {
		perror(path);
		return 1;
	}
	uint64_t total = 0;
	long i = 0;
	double t0 = now_s();
	for (;;) {
		ssize_t n = pread(fd, bufs + (size_t)(i % nbuf) * req, req, (off_t)total);
		if (n < 0) {
			perror("pread");
			return 1;
		}
		if (n == 0)
			break;
		total += (uint64_t)n;
		i++;
	}
	double t = now_s() - t0;
	printf("read_mibps=%.1f ms=%.1f bytes=%llu\n", (double)total / (1 << 20) / t, t * 1e3,
	       (unsigned long long)total);
	munmap(bufs, len);
	close(mfd);
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 5 && strcmp(argv[1], "read") == 0)
		return seq_read(argv[2], strtol(argv[3], NULL, 10), strtol(argv[4], NULL, 10));
	if (argc < 4 || argc > 5 || strcmp(argv[1], "rand") != 0 ||
	    (argc == 5 && strcmp(argv[4], "direct") != 0))
		return usage();
	argv++;
	argc--;
	double secs = atof(argv[2]);
	int direct = argc == 4;
	if (secs <= 0 || secs > 600) {
		fprintf(stderr, "blkbench_host: SECONDS must be in (0, 600]\n");
		return 64;
	}
	int fd = open(argv[1], O_RDONLY | (direct ? O_DIRECT : 0));
	if (fd < 0) {
		perror(argv[1]);
		return 1;
	}
	struct stat st;
	if (fstat(fd, &st) || st.st_size < 4096) {
		fprintf(stderr, "blkbench_host: %s: not a file of at least 4 KiB\n", argv[1]);
		return 1;
	}
	uint64_t blocks = (uint64_t)st.st_size / 4096;
	void *buf;
	if (posix_memalign(&buf, 4096, 4096)) {
		fprintf(stderr, "blkbench_host: out of memory\n");
		return 1;
	}
	uint64_t x = 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid(), ops = 0;
	double t0 = now_s(), t = t0, end = t0 + secs;
	while (t < end) {
		for (int i = 0; i < 256; i++) { /* check the clock every 256 reads */
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			if (pread(fd, buf, 4096, (off_t)((x % blocks) * 4096)) != 4096) {
				perror("pread");
				return 1;
			}
		}
		ops += 256;
		t = now_s();
	}
	printf("rand4k_iops=%.0f ops=%llu ms=%.1f direct=%d\n", (double)ops / (t - t0),
	       (unsigned long long)ops, (t - t0) * 1e3, direct);
	free(buf);
	close(fd);
	return 0;
}
