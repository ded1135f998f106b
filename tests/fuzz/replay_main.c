/* SPDX-License-Identifier: MIT */
/*
 * Driver for fuzz targets in builds without libFuzzer: runs every file of the seed corpus,
 * then bounded random mutations of them (byte flips, truncations, insertions), so the ordinary
 * and sanitizer builds exercise each target. Prints "N passed, 0 failed" and exits 0 unless a
 * target crashes (which the sanitizers turn into a report and a non-zero exit).
 *
 * usage: fuzz_x CORPUS_DIR [ITERATIONS]     (FUZZ_SEED in the environment fixes the seed)
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_SEEDS 256
#define FUZZ_MAX_INPUT (1u << 20)

static uint64_t rng_state;
static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static uint8_t *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	uint8_t *buf = malloc(FUZZ_MAX_INPUT);
	*len = buf ? fread(buf, 1, FUZZ_MAX_INPUT, f) : 0;
	fclose(f);
	return buf;
}

int main(int argc, char **argv)
{
	uint8_t *seeds[MAX_SEEDS];
	size_t lens[MAX_SEEDS];
	unsigned int nseeds = 0;
	unsigned long runs = 0;
	unsigned long iters = argc > 2 ? strtoul(argv[2], NULL, 0) : 20000;
	const char *seed_env = getenv("FUZZ_SEED");

	rng_state = seed_env ? strtoull(seed_env, NULL, 0) : (uint64_t)time(NULL);
	if (!rng_state)
		rng_state = 1;
	fprintf(stderr, "%s: seed %llu\n", argv[0], (unsigned long long)rng_state);

	if (argc > 1) {
		DIR *d = opendir(argv[1]);
		struct dirent *de;
		while (d && (de = readdir(d)) && nseeds < MAX_SEEDS) {
			if (de->d_name[0] == '.')
				continue;
			char path[4096];
			snprintf(path, sizeof(path), "%s/%s", argv[1], de->d_name);
			size_t len;
			uint8_t *buf = read_file(path, &len);
			if (!buf)
				continue;
			LLVMFuzzerTestOneInput(buf, len);
			runs++;
			seeds[nseeds] = buf;
			lens[nseeds++] = len;
		}
		if (d)
			closedir(d);
	}
	if (nseeds == 0) {
		seeds[0] = calloc(1, 64);
		lens[0] = 64;
		nseeds = 1;
	}

	uint8_t *buf = malloc(FUZZ_MAX_INPUT + 64);
	for (unsigned long i = 0; i < iters; i++) {
		unsigned int s = (unsigned int)(rnd() % nseeds);
		size_t len = lens[s];
		memcpy(buf, seeds[s], len);
		unsigned int nmut = 1 + (unsigned int)(rnd() % 8);
		for (unsigned int m = 0; m < nmut; m++) {
			switch (rnd() % 4) {
			case 0: /* bit flip */
				if (len)
					buf[rnd() % len] ^= (uint8_t)(1u << (rnd() % 8));
				break;
			case 1: /* random byte */
				if (len)
					buf[rnd() % len] = (uint8_t)rnd();
				break;
			case 2: /* truncate */
				if (len)
					len = rnd() % len;
				break;
			case 3: /* append */
				if (len < FUZZ_MAX_INPUT)
					buf[len++] = (uint8_t)rnd();
				break;
			}
		}
		/* Hand the target an exact-size copy so ASan sees any over-read. */
		uint8_t *in = malloc(len ? len : 1);
		memcpy(in, buf, len);
		LLVMFuzzerTestOneInput(in, len);
		free(in);
		runs++;
	}
	free(buf);
	for (unsigned int i = 0; i < nseeds; i++)
		free(seeds[i]);
	printf("%lu passed, 0 failed\n", runs);
	return 0;
}
