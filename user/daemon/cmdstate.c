// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmdstate.h"
#include "lib/proto.h"
#include "shared/log.h"
#include "wlog_feed.h"

#define PAGE_SHIFT 12

/* --- page bitmaps over the VM's log region -------------------------------------------------- */

static void bits_word(uint64_t *w, uint64_t mask, bool on)
{
	if (on)
		*w |= mask;
	else
		*w &= ~mask;
}

/* Set or clear n bits from `first`: partial head and tail words, whole words in between. */
static void bits_set(uint64_t *b, uint64_t first, uint64_t n, bool on)
{
	uint64_t w = first / 64, off = first % 64, k;

	if (off) {
		k = 64 - off < n ? 64 - off : n;
		bits_word(&b[w++], (k == 64 ? ~0ull : (1ull << k) - 1) << off, on);
		n -= k;
	}
	if (n >= 64) {
		memset(&b[w], on ? 0xff : 0, n / 64 * 8);
		w += n / 64;
		n %= 64;
	}
	if (n)
		bits_word(&b[w], (1ull << n) - 1, on);
}

static uint64_t *lazy_bitmap(struct pt_vmctx *c, uint64_t **b)
{
	if (!*b)
		*b = calloc(c->words ? c->words : 1, 8);
	return *b;
}

/*
 * Walk [gpa, gpa + len) slot by slot, calling fn on each piece as (first page index in the
 * region, pages). With fn == NULL it only checks that every page lies in a known memslot.
 */
typedef void (*piece_fn)(struct pt_vmctx *c, uint64_t page, uint64_t n, void *arg);

static bool slot_has(const struct pt_slot *x, uint64_t gfn)
{
	return (x->flags & PT_SLOT_VALID) && !(x->id >> 16) && gfn >= x->base_gfn &&
	       gfn - x->base_gfn < x->npages;
}

/* Hints come in runs inside one memslot: the slot of the last hit is tried first. */
static const struct pt_slot *slot_of(struct pt_vmctx *c, uint64_t gfn)
{
	const struct pt_slot *x = &c->slots.slots[c->last_slot % PT_MAX_SLOTS];

	if (slot_has(x, gfn))
		return x;
	for (uint32_t i = 0; i < c->slots.nslots && i < PT_MAX_SLOTS; i++) {
		if (slot_has(&c->slots.slots[i], gfn)) {
			c->last_slot = i;
			return &c->slots.slots[i];
		}
	}
	return NULL;
}

/* Inlined at each caller, so the piece function is a direct call, not an indirect one. */
static inline __attribute__((always_inline)) int
for_each_piece(struct pt_vmctx *c, const struct pt_range *r, piece_fn fn, void *arg)
{
	uint64_t gfn = r->gpa >> PAGE_SHIFT, left = r->len >> PAGE_SHIFT;

	while (left) {
		const struct pt_slot *s = slot_of(c, gfn);
		uint64_t n;

		if (!s || s->bit_off + s->npages > c->words * 64)
			return -PT_E_BAD_RANGE;
		n = s->npages - (gfn - s->base_gfn);
		if (n > left)
			n = left;
		if (fn)
			fn(c, s->bit_off + gfn - s->base_gfn, n, arg);
		gfn += n;
		left -= n;
	}
	return 0;
}

/*
 * Memslots may have been learned or changed by BPF since the last request. Every memslot
 * ioctl bumps slot_changes, so the table is re-read only after one (a bpf() call saved per
 * batch). The counter is read before the table: a change racing with the read is re-read
 * next time, and BPF taints the epoch of any change that moves or drops a slot anyway.
 */
static int refresh_slots(struct pt_vmctx *c)
{
	uint64_t gen = __atomic_load_n(&pt_vm(c->t, c->vm)->slot_changes, __ATOMIC_ACQUIRE);

	if (c->slots_valid && gen == c->slots_gen)
		return 0;
	if (pt_vm_slots_get(c->t, c->vm, &c->slots))
		return -PT_E_INTERNAL;
	c->slots_gen = gen;
	c->slots_valid = true;
	return 0;
}

/*
 * The slot the last range fell in, held in locals: hints come in runs inside one memslot, so
 * most ranges are checked against it with two compares and no lookup. Empty (npages 0) when
 * that slot is not one for_each_piece would accept; slot_of stays the authority.
 */
struct slot_win {
	uint64_t base, npages, bit_off;
};

static void win_load(struct pt_vmctx *c, struct slot_win *w)
{
	const struct pt_slot *s = &c->slots.slots[c->last_slot % PT_MAX_SLOTS];

	*w = (struct slot_win){ 0 };
	if (c->last_slot < c->slots.nslots && slot_has(s, s->base_gfn) &&
	    s->bit_off + s->npages <= c->words * 64)
		*w = (struct slot_win){ s->base_gfn, s->npages, s->bit_off };
}

/* The range lies wholly inside the window: its first page's region index in *page. */
static inline bool win_has(const struct slot_win *w, const struct pt_range *r, uint64_t *page)
{
	uint64_t off = (r->gpa >> PAGE_SHIFT) - w->base;

	*page = w->bit_off + off;
	return (off < w->npages) & (r->len >> PAGE_SHIFT <= w->npages - off); /* no branch */
}

/*
 * The common frame: every range inside the window, within the bound. No branch per range: the
 * ranges' lowest first page and highest end are taken, and that box checked against the window
 * once. A box inside the window has every range in it (as win_has() would find); one that is
 * not goes the precise way, which decides alone.
 */
static PT_RANGE_LOOP bool all_in_win(const struct slot_win *w, const struct pt_range *r, uint32_t n)
{
	uint64_t lo = UINT64_MAX, hi = 0, sum = 0, over = 0;

	for (uint32_t i = 0; i < n; i++) {
		/* gpa >> 12 and len >> 12 are below 2^52: their sum cannot wrap. */
		uint64_t first = r[i].gpa >> PAGE_SHIFT, np = r[i].len >> PAGE_SHIFT;
		uint64_t end = first + np;

		lo = first < lo ? first : lo;
		hi = end > hi ? end : hi;
		over |= (uint64_t)(np > PT_MAX_BATCH_PAGES);
		sum += np; /* each term at most the bound, fewer than 2^32 terms: no wrap */
	}
	/* lo - base wraps when lo < base; hi >= lo. */
	return !n || (lo - w->base < w->npages && hi - w->base <= w->npages && !over &&
		      sum <= PT_MAX_BATCH_PAGES);
}

/* Every page of every range in a known memslot, and the batch within its bound. */
static int check_ranges(struct pt_vmctx *c, const struct pt_range *r, uint32_t n)
{
	struct slot_win w;
	uint64_t sum = 0, page;
	int err;

	win_load(c, &w);
	for (uint32_t i = 0; i < n; i++) {
		/* One frame may not keep the only event loop busy for long: bound its pages. */
		sum += r[i].len >> PAGE_SHIFT;
		if (sum > PT_MAX_BATCH_PAGES)
			return -PT_E_BAD_RANGE;
		if (win_has(&w, &r[i], &page))
			continue;
		err = for_each_piece(c, &r[i], NULL, NULL);
		if (err)
			return err;
		win_load(c, &w);
	}
	return 0;
}

/*
 * Validate every range before any is applied, so that a batch is applied whole or not at all.
 * 1: every range lies in the window *w (loaded here), 0: valid, or a negative error.
 */
static int ranges_ready_win(struct pt_vmctx *c, const struct pt_range *r, uint32_t n,
			    struct slot_win *w)
{
	int err = refresh_slots(c);

	if (err)
		return err;
	win_load(c, w);
	return all_in_win(w, r, n) ? 1 : check_ranges(c, r, n);
}

/* As ranges_ready_win(), without the window: 0 or a negative error. */
int pt_batch_check(struct pt_vmctx *c, const struct pt_range *r, uint32_t n)
{
	struct slot_win w;
	int err = ranges_ready_win(c, r, n, &w);

	return err < 0 ? err : 0;
}

static inline __attribute__((always_inline)) int apply_ranges(struct pt_vmctx *c,
							      const struct pt_range *r, uint32_t n,
							      piece_fn fn, void *arg,
							      uint64_t *pages)
{
	struct slot_win w;
	int err = ranges_ready_win(c, r, n, &w);
	uint64_t page;

	if (err < 0)
		return err;
	if (!err) /* the precise check may have moved the window (last_slot) */
		win_load(c, &w);
	*pages = 0;
	for (uint32_t i = 0; i < n; i++) {
		if (win_has(&w, &r[i], &page)) {
			if (r[i].len >> PAGE_SHIFT)
				fn(c, page, r[i].len >> PAGE_SHIFT, arg);
		} else {
			for_each_piece(c, &r[i], fn, arg);
			win_load(c, &w);
		}
		*pages += r[i].len >> PAGE_SHIFT;
	}
	return 0;
}

struct set_arg {
	uint64_t *bits;
	bool on;
};

static void piece_set(struct pt_vmctx *c, uint64_t page, uint64_t n, void *arg)
{
	struct set_arg *a = arg;

	bits_set(a->bits, page, n, a->on);
}

/* --- range emission: region page index -> guest-physical ranges ---------------------------- */

struct emitter {
	struct pt_vmctx *c;
	const struct pt_vm_slots *sl; /* NULL: c->slots */
	pt_range_cb cb;
	void *ctx;
	uint64_t start, len; /* pending run, in region pages */
	int err;
};

static int emit_flush(struct emitter *e)
{
	const struct pt_vm_slots *sl = e->sl ? e->sl : &e->c->slots;
	uint64_t page = e->start, left = e->len;

	e->len = 0;
	/* A run may cross from one slot into the next: split it at slot ends. */
	while (left && !e->err) {
		const struct pt_slot *s = NULL;
		uint64_t n;

		for (uint32_t i = 0; i < sl->nslots && i < PT_MAX_SLOTS; i++) {
			const struct pt_slot *x = &sl->slots[i];

			if ((x->flags & PT_SLOT_VALID) && page >= x->bit_off &&
			    page - x->bit_off < x->npages) {
				s = x;
				break;
			}
		}
		if (!s)
			return e->err = -PT_E_INTERNAL;
		n = s->npages - (page - s->bit_off);
		if (n > left)
			n = left;
		if (e->cb)
			e->err = e->cb(e->ctx, (s->base_gfn + page - s->bit_off) << PAGE_SHIFT,
				       n << PAGE_SHIFT);
		page += n;
		left -= n;
	}
	return e->err;
}

static inline void freeze_word(struct emitter *e, uint64_t w, uint64_t bits);

static inline __attribute__((always_inline)) void emit_word(struct emitter *e, uint64_t w,
							    uint64_t bits)
{
	if (e->cb == pt_pages_freeze) {
		freeze_word(e, w, bits);
		return;
	}
	/* A whole word that goes on the pending run: most words of a quiet guest's verdict. */
	if (bits == ~0ull && e->len && e->start + e->len == w * 64) {
		e->len += 64;
		return;
	}
	while (bits) {
		uint64_t lo = __builtin_ctzll(bits), page = w * 64 + lo;
		uint64_t run = ~(bits >> lo) ? (uint64_t)__builtin_ctzll(~(bits >> lo)) : 64 - lo;

		if (e->len && e->start + e->len == page) {
			e->len += run;
		} else {
			if (e->len)
				emit_flush(e);
			e->start = page;
			e->len = run;
		}
		bits = run + lo >= 64 ? 0 : bits & ~(((1ull << run) - 1) << lo);
	}
}

/* --- frozen page sets: long replies produced a frame at a time ------------------------------ */

/* A marker, never called: the emitter stores the pages in the pt_pages that is its ctx. */
int pt_pages_freeze(void *ctx, uint64_t gpa, uint64_t len)
{
	(void)ctx;
	(void)gpa;
	(void)len;
	return -PT_E_INTERNAL;
}

/* One bit per region page, allocated at the first page, with the memory map of that moment. */
static inline __attribute__((always_inline)) void freeze_word(struct emitter *e, uint64_t w,
							      uint64_t bits)
{
	struct pt_pages *p = e->ctx;

	if (!bits || e->err)
		return;
	if (!p->bits) {
		p->bits = calloc(e->c->words, sizeof(uint64_t));
		if (!p->bits) {
			e->err = -PT_E_BUSY;
			return;
		}
		p->words = e->c->words;
		p->slots = e->c->slots;
	}
	p->count += __builtin_popcountll(bits & ~p->bits[w]);
	p->bits[w] |= bits;
}

/*
 * The valid slots of @sl by guest-physical address: region order is the order slots were
 * registered or learned, and a reply lists its ranges ascending (PROTOCOL.md section 6).
 */
static uint32_t slots_by_gpa(const struct pt_vm_slots *sl, uint32_t *order)
{
	uint32_t n = 0;

	for (uint32_t i = 0; i < sl->nslots && i < PT_MAX_SLOTS; i++) {
		uint32_t k;

		if (!(sl->slots[i].flags & PT_SLOT_VALID))
			continue;
		for (k = n++; k && sl->slots[order[k - 1]].base_gfn > sl->slots[i].base_gfn; k--)
			order[k] = order[k - 1];
		order[k] = i;
	}
	return n;
}

/* The bits of word w that lie in region pages [first, end). */
static uint64_t word_mask(uint64_t w, uint64_t first, uint64_t end)
{
	uint64_t lo = w * 64, m = ~0ull;

	if (first > lo)
		m &= ~0ull << (first - lo);
	if (end < lo + 64)
		m &= (1ull << (end - lo)) - 1;
	return m;
}

/* The slots lie in the region in address order (the usual case): so do the region's words. */
static bool region_by_gpa(const struct pt_vm_slots *sl, const uint32_t *order, uint32_t n)
{
	for (uint32_t i = 1; i < n; i++)
		if (sl->slots[order[i]].bit_off < sl->slots[order[i - 1]].bit_off)
			return false;
	return true;
}

/*
 * Slot by slot in address order (p->rank), a word at a time (p->next: words of the current
 * slot done), each word masked to the slot's pages; a run goes on across slots that are
 * neighbours in both orders.
 */
static void emit_by_slot(struct emitter *e, struct pt_pages *p, const uint32_t *order, uint32_t n,
			 uint64_t max_words)
{
	while (p->rank < n && max_words && !e->err) {
		const struct pt_slot *sl = &p->slots.slots[order[p->rank]];
		uint64_t first = sl->bit_off, end = first + sl->npages, w = first / 64 + p->next;

		if (end > p->words * 64)
			end = p->words * 64;
		for (; w * 64 < end && max_words && !e->err; w++, p->next++, max_words--)
			emit_word(e, w, p->bits[w] & word_mask(w, first, end));
		if (w * 64 >= end) {
			p->rank++;
			p->next = 0;
		}
	}
}

int pt_pages_emit(struct pt_pages *p, uint64_t max_words, pt_range_cb cb, void *ctx, bool *done)
{
	struct emitter e = { .sl = &p->slots, .cb = cb, .ctx = ctx };
	uint32_t order[PT_MAX_SLOTS], n = slots_by_gpa(&p->slots, order);

	e.start = p->run_start;
	e.len = p->run_len;
	if (region_by_gpa(&p->slots, order, n)) {
		uint64_t end = p->words - p->next > max_words ? p->next + max_words : p->words;
		uint64_t w;

		/* The whole region as it lies, with a local index: the loop stores nothing per
		 * word but the run's length (p->next: words done). */
		for (w = p->next; w < end && !e.err; w++)
			emit_word(&e, w, p->bits[w]);
		p->next = w;
		*done = p->next == p->words;
	} else {
		emit_by_slot(&e, p, order, n, max_words);
		*done = p->rank >= n;
	}
	if (*done && e.len && !e.err)
		emit_flush(&e);
	p->run_start = e.start;
	p->run_len = e.len;
	return e.err;
}

void pt_pages_release(struct pt_pages *p)
{
	free(p->bits);
	memset(p, 0, sizeof(*p));
}

/* --- the state machine ---------------------------------------------------------------------- */

int pt_vmctx_new(struct pt_vmctx **out, struct pt_tracker *t, uint32_t vm, uint32_t pid,
		 enum pt_dirty_mode mode, bool mode_tracked)
{
	struct pt_vmctx *c = calloc(1, sizeof(*c));

	if (!c)
		return -ENOMEM;
	c->t = t;
	c->vm = vm;
	c->pid = pid;
	c->mode = mode;
	c->mode_tracked = mode_tracked;
	c->words = (t->vms[vm].log_bits + 63) / 64;
	c->hinted = calloc(c->words ? c->words : 1, 8);
	if (!c->hinted || pt_vm_slots_get(t, vm, &c->slots)) {
		pt_vmctx_free(c);
		return -ENOMEM;
	}
	*out = c;
	return 0;
}

void pt_vmctx_free(struct pt_vmctx *c)
{
	if (!c)
		return;
	free(c->hinted);
	free(c->reported);
	free(c->inflated);
	free(c->reclaimed);
	free(c->early);
	free(c->undo);
	pt_wlog_destroy(c->wlog);
	free(c);
}

/* A memslot KVM does not dirty-log: its writes are invisible, so nothing can be vouched for. */
static bool any_unlogged_slot(struct pt_vmctx *c)
{
	if (refresh_slots(c))
		return true;
	for (uint32_t i = 0; i < c->slots.nslots && i < PT_MAX_SLOTS; i++)
		if ((c->slots.slots[i].flags & (PT_SLOT_VALID | PT_SLOT_NOLOG)) ==
		    (PT_SLOT_VALID | PT_SLOT_NOLOG))
			return true;
	return false;
}

/*
 * Bitmap mode: KVM_GET_DIRTY_LOG write-protects one memslot, and under manual protect none at
 * all (KVM_CLEAR_DIRTY_LOG protects only what it is given, which is not checked here). The
 * epoch is synced only if every slot had its own GET after the arm and manual protect is off.
 * The table is read fresh: per-slot sync epochs change without a memslot ioctl.
 */
static bool bitmap_synced(struct pt_vmctx *c, uint64_t epoch)
{
	uint32_t flags = __atomic_load_n(&pt_vm(c->t, c->vm)->flags, __ATOMIC_ACQUIRE);
	struct pt_vm_slots sl;

	/* Whether manual protect is on is known only if tracking began before the VMM created
	 * the VM (so its KVM_ENABLE_CAP calls were all seen). */
	if ((flags & PT_VM_MANUAL_PROTECT) || !(flags & PT_VM_SEEN_CREATE))
		return false;
	if (pt_vm_slots_get(c->t, c->vm, &sl))
		return false;
	for (uint32_t i = 0; i < sl.nslots && i < PT_MAX_SLOTS; i++)
		if ((sl.slots[i].flags & PT_SLOT_VALID) && sl.slots[i].sync_epoch != epoch)
			return false;
	return true;
}

uint32_t pt_epoch_doubt(struct pt_vmctx *c)
{
	struct pt_vm_state *st = pt_vm(c->t, c->vm);
	uint64_t epoch = __atomic_load_n(&st->epoch, __ATOMIC_ACQUIRE);
	uint32_t why = 0;

	if (c->wlog) /* another write log: its doubt, not the dirty-logging mode's */
		return pt_feed_doubt(c);
	if (any_unlogged_slot(c))
		why |= PT_WHY_UNTRACKED;
	if (!c->mode_tracked)
		why |= PT_WHY_UNTRACKED;
	/* A ring VM's sync is a complete KVM_RESET_DIRTY_RINGS, which only a ring VM can do. */
	if (c->mode == PT_DIRTY_RING
		    ? __atomic_load_n(&st->ring_sync_epoch, __ATOMIC_ACQUIRE) != epoch
		    : !bitmap_synced(c, epoch))
		why |= PT_WHY_NO_SYNC;
	if (pt_epoch_tainted(st, epoch))
		why |= PT_WHY_TAINTED;
	if (!(__atomic_load_n(&st->flags, __ATOMIC_ACQUIRE) & PT_VM_ACTIVE))
		why |= PT_WHY_UNTRACKED;
	if (__atomic_load_n(&st->flags, __ATOMIC_ACQUIRE) & PT_VM_SLOTS_UNSEEN)
		why |= PT_WHY_UNKNOWN_MEM;
	/* A VMM that may make 32-bit syscalls: its syncs and memslot changes are not seen. */
	if (__atomic_load_n(&st->flags, __ATOMIC_ACQUIRE) & PT_VM_COMPAT)
		why |= PT_WHY_UNTRACKED;
	return why;
}

uint32_t pt_coverage_bits(struct pt_vmctx *c)
{
	return pt_epoch_doubt(c) & (PT_WHY_UNTRACKED | PT_WHY_UNKNOWN_MEM);
}

static bool id_used(struct pt_vmctx *c, uint32_t cmd)
{
	for (unsigned i = 0; i < c->nused; i++)
		if (cmd >= c->used[i].lo && cmd <= c->used[i].hi)
			return true;
	return false;
}

/* Run i grew: merge the run it now touches, if any, into it. */
static void merge_runs(struct pt_vmctx *c, unsigned i)
{
	for (unsigned j = 0; j < c->nused; j++) {
		struct pt_id_run *a = &c->used[i], *b = &c->used[j];

		if (j == i || !((uint64_t)a->hi + 1 == b->lo || (uint64_t)b->hi + 1 == a->lo))
			continue;
		a->lo = a->lo < b->lo ? a->lo : b->lo;
		a->hi = a->hi > b->hi ? a->hi : b->hi;
		*b = c->used[--c->nused];
		return; /* growing by one ID can close one gap only */
	}
}

/* Block an unused ID until the driver's next STOP. -PT_E_BUSY if it would need a new run and
 * every run is taken (a device whose next ID extends a run never gets it). */
static int id_block(struct pt_vmctx *c, uint32_t cmd)
{
	for (unsigned i = 0; i < c->nused; i++) {
		struct pt_id_run *r = &c->used[i];

		if ((uint64_t)r->hi + 1 == cmd || (uint64_t)cmd + 1 == r->lo) {
			if (cmd < r->lo)
				r->lo = cmd;
			else
				r->hi = cmd;
			merge_runs(c, i);
			return 0;
		}
	}
	if (c->nused == PT_MAX_ID_RUNS)
		return -PT_E_BUSY;
	c->used[c->nused++] = (struct pt_id_run){ cmd, cmd };
	return 0;
}

/*
 * As the log is cleared for a new epoch, settle what reporting and ballooning learned from the
 * old one: a page written since is no longer free (reported) or was reclaimed (inflated).
 */
static void fold_word(void *arg, uint64_t w, uint64_t wr)
{
	struct pt_vmctx *c = arg;

	/* Reported before the sync: may have been written unseen before it (PROTOCOL.md 5,
	 * rule 8). Those pages leave the reported set; the others stay. */
	if (c->reported)
		c->reported[w] &= ~(wr | pt_early_word(c, w));
	if (c->inflated && c->reclaimed) {
		c->reclaimed[w] |= c->inflated[w] & wr;
		c->inflated[w] &= ~wr;
	}
}

/* Clear the log (folding the old epoch into reported/inflated), start the next epoch. */
static int next_epoch(struct pt_vmctx *c, uint64_t *epoch)
{
	struct pt_vm_state *st = pt_vm(c->t, c->vm);
	bool fold = c->reported || (c->inflated && c->reclaimed);
	uint32_t doubt;
	uint64_t old = __atomic_load_n(&st->epoch, __ATOMIC_ACQUIRE);
	int err;

	doubt = fold ? pt_epoch_doubt(c) & PT_WHY_TAINTED : 0;
	pt_feed_arm(c); /* its ending epoch goes into the words before they are folded */
	err = pt_vm_arm_fold(c->t, c->vm, fold ? fold_word : NULL, c, epoch);
	if (err || !c->reported)
		goto out;
	/* A tainted epoch (or one tainted while we cleared it) lost events: a reported page may
	 * have been written unseen, forget them all. Without a taint a page reported in an
	 * earlier epoch and never written is still write-protected (a sync protected it before
	 * it was reported), so its writes in an unsynced epoch were logged: it stays. */
	if (doubt || __atomic_load_n(&st->taint_epoch, __ATOMIC_ACQUIRE) >= old)
		memset(c->reported, 0, c->words * 8);
out:
	if (c->early)
		memset(c->early, 0, c->words * 8);
	return err;
}

int pt_cmd_arm(struct pt_vmctx *c, uint32_t cmd)
{
	uint64_t epoch;
	int err;

	if (cmd < PT_CMD_ID_MIN)
		return -PT_E_RESERVED_CMD;
	/* Spec: the device MUST NOT reuse a command ID until it has received the driver's STOP.
	 * Every ID armed since the last STOP is blocked: a late buffer of the guest may still
	 * carry it, and would be taken for a hint of the new epoch. */
	if (id_used(c, cmd))
		return -PT_E_CMD_REUSE;
	err = id_block(c, cmd);
	if (err)
		return err;
	err = next_epoch(c, &epoch);
	if (err)
		return -PT_E_INTERNAL;
	/* Nothing hinted since the last clear (hint_early leaves EMPTY before a hint writes a
	 * word): the set is still zero. Clearing it anyway touches every page of a bitmap that
	 * may never have been written: 8 MiB for a 256 GiB guest, tens of ms of page faults. */
	if (c->hint_early != PT_HE_EMPTY)
		memset(c->hinted, 0, c->words * 8);
	c->hint_early = PT_HE_EMPTY;
	c->cur = cmd;
	c->epoch = epoch;
	c->state = PT_CS_ACTIVE;
	c->n.arms++;
	return 0;
}

static int check_current(struct pt_vmctx *c, uint32_t cmd)
{
	if (cmd < PT_CMD_ID_MIN)
		return -PT_E_RESERVED_CMD;
	if (c->state == PT_CS_IDLE || cmd != c->cur)
		return -PT_E_STALE_CMD;
	return 0;
}

static void piece_written(struct pt_vmctx *c, uint64_t page, uint64_t n, void *arg)
{
	pt_vm_mark_written(c->t, c->vm, page, n);
}

/*
 * Pages hinted or reported before the epoch's sync may still be writable in KVM (dirty since
 * the last sync): a write to them before the sync would raise no event. They are unsure for
 * this epoch (PT_WHY_NO_SYNC), not written: the `early` set remembers them until the next
 * ARM. (Rule 1 of the protocol, publish the command ID only after the sync, makes this rare
 * for hints; reports have no such ordering.) A page already reported and not written since
 * is still write-protected, so reporting it again does not make it early.
 */
struct early_arg {
	uint64_t *set;	 /* the hinted or reported set */
	uint64_t *early; /* NULL once the epoch is synced */
};

/* Pages of mask m in word w into the set; those not in it before into the early set too. */
static inline void early_word(struct early_arg *a, uint64_t w, uint64_t m)
{
	a->early[w] |= m & ~a->set[w];
	a->set[w] |= m;
}

/* early_word() with every bit, over n whole words (restrict: the two sets never overlap). */
static void early_words(uint64_t *restrict early, uint64_t *restrict set, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++) {
		early[i] |= ~set[i];
		set[i] = ~0ull;
	}
}

static inline __attribute__((always_inline)) void piece_add(struct pt_vmctx *c, uint64_t page,
							    uint64_t n, void *arg)
{
	struct early_arg *a = arg;
	uint64_t w = page / 64, off = page % 64, k;

	if (n == 1) { /* the worst case, one 4 KiB page per range: one word */
		if (a->early)
			early_word(a, w, 1ull << off);
		else
			a->set[w] |= 1ull << off;
		return;
	}
	if (!a->early) { /* the common case: synced, whole words at a time */
		bits_set(a->set, page, n, true);
		return;
	}
	/* As bits_set: partial head and tail words, whole words in between. */
	if (off) {
		k = 64 - off < n ? 64 - off : n;
		early_word(a, w++, (k == 64 ? ~0ull : (1ull << k) - 1) << off);
		n -= k;
	}
	early_words(&a->early[w], &a->set[w], n / 64);
	w += n / 64;
	if (n % 64)
		early_word(a, w, (1ull << (n % 64)) - 1);
}

/*
 * One-page ranges of one bitmap word, gathered in a register: consecutive pages (the worst
 * case's load) would otherwise load and store the same word 64 times in a row. Adding the
 * word's pages at once marks the same early bits as one at a time: a page is early iff it was
 * not in the set before the batch.
 */
struct word_acc {
	uint64_t w, bits;
};

static inline void acc_flush(struct early_arg *a, struct word_acc *x)
{
	if (!x->bits)
		return;
	if (a->early)
		a->early[x->w] |= x->bits & ~a->set[x->w];
	a->set[x->w] |= x->bits;
	x->bits = 0;
}

/* One range of add_ranges(): a one-page range goes into the word being gathered. */
static inline __attribute__((always_inline)) void
add_one(struct pt_vmctx *c, struct early_arg *a, struct word_acc *x, uint64_t page, uint64_t np)
{
	if (np == 1) {
		if (page / 64 != x->w)
			acc_flush(a, x);
		x->w = page / 64;
		x->bits |= 1ull << (page % 64);
		return;
	}
	acc_flush(a, x);
	if (np)
		piece_add(c, page, np, a);
}

/*
 * One-page ranges are applied as they are checked, in one pass instead of two: each word is
 * saved before it changes, and if a range is not a single page inside the window the words
 * are put back, newest first, and the batch goes the way of check, then apply. So a batch is
 * still applied whole or not at all, and nothing else runs in between (one thread).
 */
struct pt_undo {
	uint64_t w, set, early;
};

/* Word w gets the pages of bits (as acc_flush()), its old words saved first; false if there
 * is no room to save them. Inlined, so that the loop below keeps its state in registers. */
static inline __attribute__((always_inline)) bool
spec_put(struct early_arg *a, uint64_t w, uint64_t bits, struct pt_undo *u, uint32_t *nu)
{
	if (*nu == PT_UNDO_WORDS)
		return false;
	u[*nu] = (struct pt_undo){ w, a->set[w], a->early ? a->early[w] : 0 };
	(*nu)++;
	if (a->early)
		a->early[w] |= bits & ~a->set[w];
	a->set[w] |= bits;
	return true;
}

/* 1: the batch is applied; 0: it is not (the sets are as before), check it first. */
static int add_single_pages(struct pt_vmctx *c, const struct pt_range *r, uint32_t n,
			    struct early_arg *a)
{
	struct pt_undo *u = c->undo ? c->undo : (c->undo = malloc(PT_UNDO_WORDS * sizeof(*u)));
	uint64_t base, npages, bit_off, cw = 0, bits = 0;
	struct slot_win w;
	uint32_t nu = 0, i;

	if (!u || refresh_slots(c) || n > PT_MAX_BATCH_PAGES)
		return 0;
	win_load(c, &w);
	base = w.base;
	npages = w.npages;
	bit_off = w.bit_off;
	for (i = 0; i < n; i++) {
		/* One page inside the window: win_has() with a length of one page. */
		uint64_t off = (r[i].gpa >> PAGE_SHIFT) - base, page = bit_off + off;

		if (r[i].len >> PAGE_SHIFT != 1 || off >= npages)
			break;
		if (page / 64 != cw) {
			if (bits && !spec_put(a, cw, bits, u, &nu))
				break;
			cw = page / 64;
			bits = 0;
		}
		bits |= 1ull << (page % 64);
	}
	if (i == n && (!bits || spec_put(a, cw, bits, u, &nu)))
		return 1;
	while (nu--) {
		a->set[u[nu].w] = u[nu].set;
		if (a->early)
			a->early[u[nu].w] = u[nu].early;
	}
	return 0;
}

/* apply_ranges(piece_add) with the one-page ranges gathered a word at a time. */
static int add_ranges(struct pt_vmctx *c, const struct pt_range *r, uint32_t n, struct early_arg *a,
		      uint64_t *pages)
{
	struct slot_win w;
	int err = n && r[0].len >> PAGE_SHIFT == 1 ? add_single_pages(c, r, n, a) : 0;
	struct word_acc x = { 0 };
	uint64_t page, sum = 0;

	if (err) {
		*pages = n;
		return 0;
	}
	err = ranges_ready_win(c, r, n, &w);
	if (err < 0)
		return err;
	if (err) { /* all in the window: no check per range */
		for (uint32_t i = 0; i < n; i++) {
			uint64_t np = r[i].len >> PAGE_SHIFT;

			sum += np;
			add_one(c, a, &x, w.bit_off + (r[i].gpa >> PAGE_SHIFT) - w.base, np);
		}
		goto out;
	}
	for (uint32_t i = 0; i < n; i++) {
		uint64_t np = r[i].len >> PAGE_SHIFT;

		sum += np;
		if (win_has(&w, &r[i], &page)) {
			add_one(c, a, &x, page, np);
			continue;
		}
		acc_flush(a, &x);
		for_each_piece(c, &r[i], piece_add, a);
		win_load(c, &w);
	}
out:
	acc_flush(a, &x);
	*pages = sum;
	return 0;
}

uint64_t pt_early_word(const struct pt_vmctx *c, uint64_t w)
{
	return (c->early ? c->early[w] : 0) | (c->hint_early == PT_HE_ALL ? c->hinted[w] : 0);
}

/*
 * Where the hinted set's early pages go. Hinting before the sync (the bench's synthetic VMM,
 * a driver that ignores rule 1) marks every page it adds early, as hinted is empty at ARM:
 * so while no hint came after the sync, early pages of hinted are exactly hinted (PT_HE_ALL),
 * and writing each one twice is saved. The first hint after the sync moves them into the
 * bitmap (once per epoch at most), from where early_word() goes on as for any set.
 */
static int hint_early_bitmap(struct pt_vmctx *c, bool synced)
{
	if (c->hint_early == PT_HE_BITMAP)
		return 0;
	if (!synced) {
		c->hint_early = PT_HE_ALL;
		return 1; /* the hinted set alone */
	}
	if (c->hint_early == PT_HE_ALL) {
		if (!lazy_bitmap(c, &c->early))
			return -PT_E_BUSY;
		for (uint64_t w = 0; w < c->words; w++)
			c->early[w] |= c->hinted[w];
	}
	c->hint_early = PT_HE_BITMAP;
	return 0;
}

/* Record pages into `set`, and into the early set while the epoch is not synced. */
static int add_pages(struct pt_vmctx *c, uint64_t *set, const struct pt_range *r, uint32_t n,
		     uint64_t *pages)
{
	struct early_arg a = { set, NULL };
	bool synced = !(pt_epoch_doubt(c) & PT_WHY_NO_SYNC);
	int err = set == c->hinted ? hint_early_bitmap(c, synced) : 0;

	if (err < 0)
		return err;
	if (!synced && !err && !(a.early = lazy_bitmap(c, &c->early)))
		return -PT_E_BUSY;
	return add_ranges(c, r, n, &a, pages);
}

/* A HINT under an ID that is not current (or after DONE) is refused, and its pages counted. */
static int hint_refused(struct pt_vmctx *c, uint32_t cmd, const struct pt_range *r, uint32_t n)
{
	int err = check_current(c, cmd);

	if (!err && c->state == PT_CS_DONE)
		err = -PT_E_STALE_CMD;
	if (err) {
		/* Spec: pages sent with an ID that is not current are ignored. Count them. */
		for (uint32_t i = 0; i < n; i++)
			c->n.stale_pages += r[i].len >> PAGE_SHIFT;
	}
	return err;
}

int pt_cmd_hint_check(struct pt_vmctx *c, uint32_t cmd, const struct pt_range *r, uint32_t n)
{
	int err = hint_refused(c, cmd, r, n);

	return err ? err : pt_batch_check(c, r, n);
}

int pt_cmd_hint(struct pt_vmctx *c, uint32_t cmd, const struct pt_range *r, uint32_t n,
		uint64_t *pages)
{
	int err = hint_refused(c, cmd, r, n);

	if (err)
		return err;
	err = add_pages(c, c->hinted, r, n, pages);
	if (err)
		return err;
	c->n.hinted_pages += *pages;
	return 0;
}

int pt_cmd_stop(struct pt_vmctx *c, uint32_t cmd)
{
	int err = check_current(c, cmd);

	if (err)
		return err;
	/*
	 * The driver's STOP follows, in queue order, every buffer it sent under any earlier ID:
	 * none can arrive later. The spec then lets the device reuse any ID, the current one too
	 * (it stays current until the next ARM, which opens a new epoch whatever its number).
	 */
	c->nused = 0;
	if (c->state == PT_CS_ACTIVE)
		c->state = PT_CS_STOPPED;
	return 0;
}

int pt_cmd_done(struct pt_vmctx *c, uint32_t cmd)
{
	int err = check_current(c, cmd);

	if (err)
		return err;
	c->state = PT_CS_DONE;
	return 0;
}

/* Pages in the set: all the verdict needs once it is known that it vouches for nothing. */
static uint64_t count_set(const uint64_t *set, uint64_t words)
{
	/* Four sums: one chain of adds would wait on each popcount (75 against 46 us per 2 MiB
	 * here). */
	uint64_t t[4] = { 0 }, w = 0;

	for (; w + 4 <= words; w += 4) {
		t[0] += __builtin_popcountll(set[w]);
		t[1] += __builtin_popcountll(set[w + 1]);
		t[2] += __builtin_popcountll(set[w + 2]);
		t[3] += __builtin_popcountll(set[w + 3]);
	}
	for (; w < words; w++)
		t[0] += __builtin_popcountll(set[w]);
	return t[0] + t[1] + t[2] + t[3];
}

/* Nothing can be vouched for: every page of the set is kept, unsure. */
static void verdict_unsure(struct pt_verdict_sum *v, uint64_t total)
{
	v->hinted = total;
	v->free = 0;
	v->kept_written = 0;
	v->kept_unsure = total;
}

/*
 * Where a verdict's free words go. Into an empty frozen set (the service's QUERY) they are
 * stored directly, each word once and in order: no read back, no count per word. A set that
 * is not empty, or another callback, takes the emitter.
 */
struct free_out {
	struct emitter e;
	struct pt_pages *fresh; /* the empty frozen set, or NULL */
	uint64_t *bits;		/* fresh->bits once the first free word came */
};

static void free_out_init(struct free_out *o, struct pt_vmctx *c, pt_range_cb cb, void *ctx)
{
	struct pt_pages *p = ctx;

	*o = (struct free_out){ .e = { .c = c, .cb = cb, .ctx = ctx } };
	if (cb == pt_pages_freeze && !p->bits)
		o->fresh = p;
}

/* Word w has no hinted page. */
static inline void free_none(struct free_out *o, uint64_t w)
{
	if (o->bits)
		o->bits[w] = 0;
}

static inline void free_word(struct free_out *o, uint64_t w, uint64_t bits)
{
	if (!o->fresh) {
		emit_word(&o->e, w, bits);
		return;
	}
	if (!o->bits && bits) {
		/* The words before w held nothing free; from w on every word is stored. */
		o->bits = malloc(o->e.c->words * sizeof(uint64_t));
		if (!o->bits) {
			o->e.err = -PT_E_BUSY;
			return;
		}
		memset(o->bits, 0, w * sizeof(uint64_t));
		o->fresh->bits = o->bits;
		o->fresh->words = o->e.c->words;
		o->fresh->slots = o->e.c->slots;
	}
	if (o->bits)
		o->bits[w] = bits;
}

/*
 * free = hinted AND NOT written AND NOT early, read now. Written pages are kept_written; early
 * pages not written are kept_unsure (PT_WHY_NO_SYNC). The log words are read before the doubt
 * check, so a taint raised while we read (a write that could not be logged) is seen by it.
 */
static int verdict_over(struct pt_vmctx *c, const uint64_t *set, struct pt_verdict_sum *v,
			pt_range_cb cb, void *ctx)
{
	struct free_out o;
	/* The region's first word, taken once: this loop reads the whole region per QUERY. */
	const uint64_t *log = &c->t->log[pt_vm(c->t, c->vm)->log_bit_base / 64];
	/* The early pages: the bitmap, and the hinted set while all of it is early. */
	const uint64_t *eb = c->early, *eh = c->hint_early == PT_HE_ALL ? c->hinted : NULL;
	uint64_t written = 0, total = 0, chosen, unsure = 0;

	pt_feed_set(c, set);
	v->why |= pt_epoch_doubt(c);
	if (v->why) {
		/* Doubt only grows the answer "keep": the log and early sets would not change it.
		 */
		verdict_unsure(v, count_set(set, c->words));
		v->why |= pt_epoch_doubt(c);
		return 0;
	}
	free_out_init(&o, c, cb, ctx);
	for (uint64_t w = 0; w < c->words; w++) {
		uint64_t h = set[w], wr, early;

		if (!h) {
			free_none(&o, w);
			continue;
		}
		wr = __atomic_load_n(&log[w], __ATOMIC_RELAXED) & h;
		early = ((eb ? eb[w] : 0) | (eh ? eh[w] : 0)) & h & ~wr;
		total += __builtin_popcountll(h);
		written += __builtin_popcountll(wr);
		if (early)
			unsure += __builtin_popcountll(early);
		free_word(&o, w, h & ~wr & ~early);
		if (o.e.err)
			return o.e.err;
	}
	/* wr and early are disjoint parts of h: what is left of it is free. */
	chosen = total - written - unsure;
	if (o.fresh)
		o.fresh->count = chosen;
	v->why |= pt_epoch_doubt(c);
	if (v->why) {
		/* Nothing can be vouched for. Ranges already passed to cb must be dropped: the
		 * caller buffers them and sends none unless this returns with free > 0. */
		verdict_unsure(v, total);
		return 0;
	}
	if (o.e.len && emit_flush(&o.e))
		return o.e.err;
	v->hinted = total;
	v->free = chosen;
	v->kept_written = written;
	v->kept_unsure = unsure;
	if (unsure)
		v->why |= PT_WHY_NO_SYNC; /* only these pages: they came before the sync */
	return 0;
}

int pt_cmd_verdict(struct pt_vmctx *c, uint32_t cmd, struct pt_verdict_sum *v, pt_range_cb cb,
		   void *ctx)
{
	int err = check_current(c, cmd);

	memset(v, 0, sizeof(*v));
	if (err)
		return err;
	c->n.queries++;
	if (c->state == PT_CS_DONE)
		v->why |= PT_WHY_DONE;
	err = refresh_slots(c);
	if (!err)
		err = verdict_over(c, c->hinted, v, cb, ctx);
	if (err)
		return err;
	c->n.confirmed_free += v->free;
	c->n.kept_written += v->kept_written;
	c->n.kept_unsure += v->kept_unsure;
	c->last.cmd = cmd;
	c->last.hinted = v->hinted;
	c->last.free = v->free;
	c->last.kept = v->kept_written + v->kept_unsure;
	return 0;
}

int pt_vmm_written(struct pt_vmctx *c, const struct pt_range *r, uint32_t n, uint64_t *pages)
{
	return apply_ranges(c, r, n, piece_written, NULL, pages);
}

/* --- reporting, ballooning, write records --------------------------------------------------- */

int pt_report_add(struct pt_vmctx *c, const struct pt_range *r, uint32_t n, uint64_t *pages)
{
	int err;

	if (!lazy_bitmap(c, &c->reported))
		return -PT_E_BUSY;
	err = add_pages(c, c->reported, r, n, pages);
	if (err)
		return err;
	c->n.reported_pages += *pages;
	return 0;
}

int pt_report_verdict(struct pt_vmctx *c, struct pt_verdict_sum *v, pt_range_cb cb, void *ctx)
{
	int err = refresh_slots(c);

	memset(v, 0, sizeof(*v));
	if (err)
		return err;
	if (!c->reported)
		return 0;
	/* A reported page written before it was reported is dirty and writable: its next write
	 * would not fault. Its bit is set, so it counts as written, i.e. kept. */
	return verdict_over(c, c->reported, v, cb, ctx);
}

int pt_balloon_inflate(struct pt_vmctx *c, const struct pt_range *r, uint32_t n, uint64_t *pages)
{
	struct set_arg a = { lazy_bitmap(c, &c->inflated), true };
	int err;

	if (!a.bits || !lazy_bitmap(c, &c->reclaimed))
		return -PT_E_BUSY;
	err = apply_ranges(c, r, n, piece_set, &a, pages);
	if (!err)
		c->n.inflated_pages += *pages;
	return err;
}

int pt_balloon_deflate(struct pt_vmctx *c, const struct pt_range *r, uint32_t n, uint64_t *pages)
{
	struct set_arg a = { lazy_bitmap(c, &c->inflated), false };
	struct set_arg b = { lazy_bitmap(c, &c->reclaimed), false };
	int err;

	if (!a.bits || !b.bits)
		return -PT_E_BUSY;
	err = apply_ranges(c, r, n, piece_set, &a, pages);
	if (!err)
		apply_ranges(c, r, n, piece_set, &b, pages);
	return err;
}

int pt_balloon_reclaimed(struct pt_vmctx *c, struct pt_verdict_sum *v, pt_range_cb cb, void *ctx)
{
	struct emitter e = { .c = c, .cb = cb, .ctx = ctx };
	int err = refresh_slots(c);

	memset(v, 0, sizeof(*v));
	if (err)
		return err;
	if (!c->inflated)
		return 0;
	pt_feed_set(c, c->inflated);
	/* Written since the arm, or found written at an earlier arm: either is a reclaim. Doubt
	 * about the log only means more reclaims may exist; it is reported in `why`. */
	for (uint64_t w = 0; w < c->words; w++) {
		uint64_t in = c->inflated[w] | c->reclaimed[w], rec;

		if (!in)
			continue;
		rec = c->reclaimed[w] | (c->inflated[w] & pt_vm_log_word(c->t, c->vm, w));
		v->hinted += __builtin_popcountll(in);
		v->free += __builtin_popcountll(rec);
		emit_word(&e, w, rec);
	}
	if (e.len)
		emit_flush(&e);
	v->why = pt_epoch_doubt(c);
	c->n.reclaimed_pages = v->free;
	return e.err;
}

struct wr_arg {
	struct emitter *e;
	uint64_t count;
};

/* Written pages of one piece, a word at a time. */
static void piece_wr(struct pt_vmctx *c, uint64_t page, uint64_t n, void *arg)
{
	struct wr_arg *a = arg;

	for (uint64_t p = page, end = page + n; p < end;) {
		uint64_t off = p % 64, k = 64 - off < end - p ? 64 - off : end - p;
		uint64_t mask = (k == 64 ? ~0ull : (1ull << k) - 1) << off;
		uint64_t bits = pt_vm_log_word(c->t, c->vm, p / 64) & mask;

		a->count += __builtin_popcountll(bits);
		emit_word(a->e, p / 64, bits);
		p += k;
	}
}

/*
 * Every page in the ranges written since ARM, on every read. Records cannot be cleared one
 * by one: a page once written stays writable in KVM until the VMM's next sync, so its later
 * writes raise no event. ARM (followed by the sync) is the clear.
 */
int pt_wr_read(struct pt_vmctx *c, const struct pt_range *r, uint32_t n, pt_range_cb cb, void *ctx,
	       uint64_t *pages)
{
	struct emitter e = { .c = c, .cb = cb, .ctx = ctx };
	struct wr_arg a = { &e, 0 };
	uint64_t total;
	int err;

	pt_feed_ranges(c, r, n);
	err = apply_ranges(c, r, n, piece_wr, &a, &total);
	if (!err && e.len)
		emit_flush(&e);
	*pages = a.count;
	return err ? err : e.err;
}

const char *pt_why_str(uint32_t why, char *buf, size_t len)
{
	static const char *const names[] = {
		"untracked-mode", "tainted-epoch",    "no-sync-after-arm", "unknown-memory",
		"done",		  "stale-command-id", "uffd-lost",
	};
	size_t off = 0;

	buf[0] = 0;
	for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (why & (1u << i))
			off += snprintf(buf + off, off < len ? len - off : 0, "%s%s",
					off ? "," : "", names[i]);
	if (!off)
		snprintf(buf, len, "none");
	return buf;
}
