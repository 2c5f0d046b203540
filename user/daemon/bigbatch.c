// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bigbatch.h"

int pt_bigbatch_init(struct pt_bigbatch *b, const struct pt_range *r, uint32_t n)
{
	*b = (struct pt_bigbatch){ 0 };
	b->r = malloc((size_t)n * sizeof(*r) + 1);
	if (!b->r)
		return -ENOMEM;
	memcpy(b->r, r, (size_t)n * sizeof(*r));
	b->n = n;
	return 0;
}

uint32_t pt_bigbatch_next(struct pt_bigbatch *b, uint64_t max_pages, struct pt_range *out,
			  uint32_t cap)
{
	uint64_t room = max_pages * PT_PROTO_PAGE;
	uint32_t k = 0;

	while (k < cap && room && b->next < b->n) {
		const struct pt_range *r = &b->r[b->next];
		uint64_t left = r->len - b->offset;
		uint64_t take = left < room ? left : room;

		/* Lengths are whole pages (the parser checks), and so is room: so is take. */
		out[k++] = (struct pt_range){ r->gpa + b->offset, take };
		room -= take;
		b->offset += take;
		if (b->offset == r->len) {
			b->next++;
			b->offset = 0;
		}
	}
	return k;
}

void pt_bigbatch_free(struct pt_bigbatch *b)
{
	free(b->r);
	*b = (struct pt_bigbatch){ 0 };
}
