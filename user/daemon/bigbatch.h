/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A batch of ranges too large for one turn of the event loop, cut into parts that are applied
 * one per turn. A HINT of 2^30 pages sets 128 MiB of bitmap: done at once it holds the only
 * event loop, and every other device's PING, for tens of milliseconds. The batch is checked
 * whole before its first part is applied (cmdstate's pt_batch_check), so it is still applied
 * whole or not at all; the parts only spread the work over turns.
 */
#ifndef PT_BIGBATCH_H
#define PT_BIGBATCH_H

#include <stdint.h>

#include "pagetrack/proto.h"

struct pt_bigbatch {
	struct pt_range *r; /* the frame's ranges, copied: the frame is gone after its turn */
	uint32_t n;
	uint32_t next;	 /* first range not wholly handed out */
	uint64_t offset; /* bytes of r[next] handed out already */
};

/* Copies the ranges. 0 or -ENOMEM. */
int pt_bigbatch_init(struct pt_bigbatch *b, const struct pt_range *r, uint32_t n);
/* The next part, in order: at most @max_pages pages in at most @cap ranges written to @out.
 * Returns how many ranges; 0 once everything was handed out. */
uint32_t pt_bigbatch_next(struct pt_bigbatch *b, uint64_t max_pages, struct pt_range *out,
			  uint32_t cap);
void pt_bigbatch_free(struct pt_bigbatch *b);

#endif
