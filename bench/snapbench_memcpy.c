/*
 * snapbench_memcpy: the machine's memcpy bandwidth, for bench/snapshot.sh.
 *
 *   snapbench_memcpy [MIB] [REPS]     (default 256 MiB, 5 repetitions)
 *
 * Two buffers of MIB MiB, populated up front (MAP_POPULATE, so first-touch cost is not in
 * the figure), memcpy'd REPS times; prints the best and the median copy speed as
 * "memcpy_best_gbps= memcpy_median_gbps= mib=" (GB/s = 1e9 bytes per second of data copied).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 256;
	int reps = argc > 2 ? atoi(argv[2]) : 5;
	if (mib < 1 || reps < 1 || reps > 100) {
		fprintf(stderr, "usage: snapbench_memcpy [MIB] [REPS]\n");
		return 64;
	}
	size_t len = mib << 20;
	char *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
		       -1, 0);
	char *b = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
		       -1, 0);
	if (a == MAP_FAILED || b == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	memset(a, 0x5a, len);
	memset(b, 0xa5, len);
	double gbps[100];
	for (int i = 0; i < reps; i++) {
		double t = now_s();
		memcpy(i & 1 ? a : b, i & 1 ? b : a, len);
		t = now_s() - t;
		gbps[i] = (double)len / t / 1e9;
	}
	/* keep the copies observable */
	volatile char sink = a[len / 2] ^ b[len / 3];
	(void)sink;
	qsort(gbps, (size_t)reps, sizeof(double), cmp);
	printf("memcpy_best_gbps=%.2f memcpy_median_gbps=%.2f mib=%zu\n", gbps[reps - 1],
	       gbps[reps / 2], mib);
	return 0;
}
