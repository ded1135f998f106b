/* SPDX-License-Identifier: MIT */
/* Live saves: the convergence decision of the pre-copy loop (pure; the loop is in save.c). */
#include "snapshot/snapshot_internal.h"

#include "formats/image.h"

#define FIXED_FINAL_US	  1000	/* state capture and the last sync, beyond the pages */
#define DEFAULT_WRITE_BPS 500e6 /* until a round has measured the page-cache write rate */

enum snap_live_step snap_live_decide(const struct snap_live_policy *p, uint32_t round,
				     uint64_t remaining, uint64_t prev, unsigned int *stuck,
				     double write_Bps, uint64_t elapsed_us, uint64_t *expected_us)
{
	double bps = write_Bps > 0 ? write_Bps : DEFAULT_WRITE_BPS;
	*expected_us = FIXED_FINAL_US + (uint64_t)((double)remaining * IMG_PAGE_SIZE * 1e6 / bps);
	if (round == 0)
		return SNAP_LIVE_AGAIN; /* the full pass comes first, whatever the estimate */
	if (*expected_us <= p->target_us)
		return SNAP_LIVE_FINAL;
	if (round > p->max_rounds)
		return SNAP_LIVE_MAX_ROUNDS;
	if (elapsed_us >= p->max_time_us)
		return SNAP_LIVE_MAX_TIME;
	/*
	 * A guest that dirties pages as fast as they are written never converges: after three
	 * rounds in a row that did not shrink the set by a tenth, stop wasting the disk's time.
	 */
	if (prev != UINT64_MAX && remaining * 10 > prev * 9)
		(*stuck)++;
	else
		*stuck = 0;
	return *stuck >= 3 ? SNAP_LIVE_STUCK : SNAP_LIVE_AGAIN;
}
