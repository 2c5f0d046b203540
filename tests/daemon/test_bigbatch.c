// SPDX-License-Identifier: GPL-2.0
/*
 * The cutter of large batches (daemon/bigbatch.h): on random batches, its parts put back
 * together are the batch, in order, and no part is over its page or range bound.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "t.h"
#include "daemon/bigbatch.h"

#define PAGE 4096ull

static uint64_t ranges_pages(const struct pt_range *r, uint32_t n)
{
	uint64_t sum = 0;

	for (uint32_t i = 0; i < n; i++)
		sum += r[i].len / PAGE;
	return sum;
}

/* Random batch: n ranges, lengths from 0 to ~2^24 pages, some adjacent. */
static void random_batch(struct pt_range *r, uint32_t n, unsigned *seed)
{
	uint64_t gpa = 1ull << 32;

	for (uint32_t i = 0; i < n; i++) {
		uint64_t pages = (uint64_t)rand_r(seed) % 4 == 0 ? (uint64_t)rand_r(seed) % 3
								 : (uint64_t)rand_r(seed) << 3 >> 7;

		r[i] = (struct pt_range){ gpa, pages * PAGE };
		gpa += r[i].len + (rand_r(seed) % 2 ? 0 : PAGE * (1 + rand_r(seed) % 64));
	}
}

static int parts_rebuild_batch(void)
{
	static struct pt_range r[512], part[64];
	unsigned seed = 7;

	for (int round = 0; round < 300; round++) {
		uint32_t n = 1 + rand_r(&seed) % 512, cap = 1 + rand_r(&seed) % 64, k;
		uint64_t max = 1 + (uint64_t)rand_r(&seed) % (1u << 22);
		uint32_t i = 0;
		uint64_t off = 0, total = 0;
		struct pt_bigbatch b;

		random_batch(r, n, &seed);
		CHECK(pt_bigbatch_init(&b, r, n) == 0);
		while ((k = pt_bigbatch_next(&b, max, part, cap))) {
			uint64_t pages = ranges_pages(part, k);

			CHECKF(k <= cap && pages <= max,
			       "part of %u ranges, %llu pages (bounds %u, %llu)", k,
			       (unsigned long long)pages, cap, (unsigned long long)max);
			for (uint32_t j = 0; j < k; j++) {
				/* Each piece continues the batch exactly where the last one
				 * stopped. */
				CHECK(i < n && part[j].gpa == r[i].gpa + off);
				CHECK(part[j].len <= r[i].len - off && !(part[j].len % PAGE));
				off += part[j].len;
				total += part[j].len / PAGE;
				if (off == r[i].len) {
					i++;
					off = 0;
				}
			}
		}
		CHECKF(i == n && total == ranges_pages(r, n), "round %d: %u of %u ranges", round, i,
		       n);
		pt_bigbatch_free(&b);
	}
	return 0;
}

T_MAIN(T_CASE(parts_rebuild_batch))
