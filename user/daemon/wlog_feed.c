// SPDX-License-Identifier: GPL-2.0
/*
 * Why feeding the BPF log words is sound (PT_TRACK_UFFD).
 *
 * A verdict frees hinted AND NOT log-word pages, with the doubt checked around the read.
 * pt_feed_set() runs first and ORs into the words every page of the set the backend has seen
 * written since its arm; bits are only ever added, and nothing clears the words between that
 * OR and the read (one thread; only ARM clears). So every page the backend saw written is
 * kept, and whatever the backend could not read is in its doubt, which the verdict checks
 * after the feed. Pages written after the feed's read are beyond any verdict's promise: a
 * verdict describes the past (PROTOCOL.md section 8), as in the BPF modes.
 *
 * ARM: the backend is armed before the words are cleared, and the pages of its ending epoch
 * are ORed into the words first, so the clear's fold sees them (a reported page written in
 * the old epoch is not carried into the new one as free). The backend reports those pages
 * atomically with forgetting them, so none falls between a read and a protect. If the
 * backend's state was unknown (first arm, failure), it reports every page. Writes landing
 * during the arm belong to either epoch, never to none.
 *
 * The layout: the backend and the BPF region were both built from the REGISTER2 slot list in
 * order, so log page indexes agree. For a VM with a given slot table BPF never moves a slot's
 * place in the region; it only marks slots invalid, and taints, when the VMM changes its
 * memslots, which pt_feed_doubt() turns into keep (the gpa -> hva map the backend was given
 * may be stale then).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cmdstate.h"
#include "shared/log.h"
#include "wlog_feed.h"
#include "writelog/backend.h"

#define PAGE_SHIFT 12
#define BATCH	   4096 /* gfn ranges per backend read */

/* OR a backend bitmap into the VM's log words (BPF may set bits there at the same time). */
static void or_words(struct pt_vmctx *c, const uint64_t *bits)
{
	for (uint64_t w = 0; w < c->words; w++)
		if (bits[w])
			pt_vm_log_or(c->t, c->vm, w, bits[w]);
}

void pt_feed_arm(struct pt_vmctx *c)
{
	uint64_t *prev;

	if (!c->wlog)
		return;
	prev = calloc(c->words ? c->words : 1, 8);
	if (!prev) {
		/* Cannot hand the ending epoch over page by page: all of it counts as written. */
		pt_vm_mark_written(c->t, c->vm, 0, c->words * 64);
		pt_wlog_arm(c->wlog, NULL);
		return;
	}
	/* A failed arm leaves its reason in the backend's doubt: every verdict keeps until an arm
	 * succeeds, and that one reports every page (the backend's state is unknown by then). */
	pt_wlog_arm(c->wlog, prev);
	or_words(c, prev);
	free(prev);
}

/* The guest frame of log page `page`, and how many pages follow in its slot. */
static int page_gfn(const struct pt_vmctx *c, uint64_t page, uint64_t *gfn, uint64_t *left)
{
	for (uint32_t i = 0; i < c->slots.nslots && i < PT_MAX_SLOTS; i++) {
		const struct pt_slot *s = &c->slots.slots[i];

		/* Layout only: a slot BPF marked invalid keeps its place (and taints). */
		if (page >= s->bit_off && page - s->bit_off < s->npages) {
			*gfn = s->base_gfn + page - s->bit_off;
			*left = s->npages - (page - s->bit_off);
			return 0;
		}
	}
	return -ENOENT;
}

struct batch {
	struct pt_gfn_range r[BATCH];
	size_t n;
	uint64_t *bits;
};

static void batch_flush(struct pt_vmctx *c, struct batch *b)
{
	if (b->n)
		pt_wlog_read(c->wlog, b->r, b->n, b->bits);
	b->n = 0;
}

/* Queue log pages [page, page + n) as gfn ranges, split at slot ends. */
static void batch_add(struct pt_vmctx *c, struct batch *b, uint64_t page, uint64_t n)
{
	while (n) {
		uint64_t gfn, left;

		if (page_gfn(c, page, &gfn, &left))
			return; /* not guest memory of a slot: nothing was hinted there */
		left = left < n ? left : n;
		if (b->n && b->r[b->n - 1].gfn + b->r[b->n - 1].npages == gfn) {
			b->r[b->n - 1].npages += left;
		} else {
			if (b->n == BATCH)
				batch_flush(c, b);
			b->r[b->n++] = (struct pt_gfn_range){ gfn, left };
		}
		page += left;
		n -= left;
	}
}

static struct batch *batch_new(struct pt_vmctx *c)
{
	struct batch *b = malloc(sizeof(*b));

	if (b) {
		b->n = 0;
		b->bits = calloc(c->words ? c->words : 1, 8);
		if (b->bits)
			return b;
	}
	free(b);
	/* Nothing can be read: everything counts as written (keep), safely. */
	pt_vm_mark_written(c->t, c->vm, 0, c->words * 64);
	return NULL;
}

static void batch_done(struct pt_vmctx *c, struct batch *b)
{
	batch_flush(c, b);
	or_words(c, b->bits);
	free(b->bits);
	free(b);
}

void pt_feed_set(struct pt_vmctx *c, const uint64_t *set)
{
	struct batch *b;

	if (!c->wlog || !set || !(b = batch_new(c)))
		return;
	/* Runs of set bits, joined across word boundaries. */
	for (uint64_t w = 0, start = 0, len = 0; w <= c->words; w++) {
		uint64_t bits = w < c->words ? set[w] : 0;

		if (w == c->words && len)
			batch_add(c, b, start, len);
		while (bits) {
			unsigned lo = __builtin_ctzll(bits);
			unsigned run =
				~(bits >> lo) ? (unsigned)__builtin_ctzll(~(bits >> lo)) : 64 - lo;

			if (len && start + len == w * 64 + lo) {
				len += run;
			} else {
				if (len)
					batch_add(c, b, start, len);
				start = w * 64 + lo;
				len = run;
			}
			bits = lo + run >= 64 ? 0 : bits & ~(((1ull << run) - 1) << lo);
		}
	}
	batch_done(c, b);
}

void pt_feed_ranges(struct pt_vmctx *c, const struct pt_range *r, uint32_t n)
{
	struct batch *b;

	if (!c->wlog || !(b = batch_new(c)))
		return;
	for (uint32_t i = 0; i < n; i++) {
		if (b->n == BATCH)
			batch_flush(c, b);
		b->r[b->n++] =
			(struct pt_gfn_range){ r[i].gpa >> PAGE_SHIFT, r[i].len >> PAGE_SHIFT };
	}
	batch_done(c, b);
}

uint32_t pt_feed_doubt(struct pt_vmctx *c)
{
	struct pt_vm_state *st = pt_vm(c->t, c->vm);
	uint32_t why = pt_wlog_doubt(c->wlog, NULL, 0);

	if (!(__atomic_load_n(&st->flags, __ATOMIC_ACQUIRE) & PT_VM_ACTIVE))
		why |= PT_WHY_UNTRACKED;
	/* The VMM changed its KVM memslots in this epoch (BPF saw it): guest-physical pages may
	 * now live elsewhere than the registration said. */
	if (pt_vm_slots_changed(c->t, c->vm))
		why |= PT_WHY_TAINTED;
	/* A registered slot was deleted, moved or re-created since REGISTER2: the mapping the
	 * log reads may no longer be the guest's memory, for good (PROTOCOL 5a rule 2: register
	 * again). */
	if (__atomic_load_n(&st->slot_moves, __ATOMIC_ACQUIRE) != c->wlog_moves)
		why |= PT_WHY_UNKNOWN_MEM;
	/* A VMM that may make 32-bit syscalls: its memslot changes are not seen, so the slot
	 * count above proves nothing. */
	if (__atomic_load_n(&st->flags, __ATOMIC_ACQUIRE) & PT_VM_COMPAT)
		why |= PT_WHY_UNKNOWN_MEM;
	return why;
}
