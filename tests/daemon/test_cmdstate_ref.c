// SPDX-License-Identifier: GPL-2.0
/*
 * cmdstate's fast paths (whole words, one-page words gathered in a register, the hinted set
 * standing for its own early pages, the count-only verdict under doubt) against a model that
 * keeps one byte per page and applies the rules of cmdstate.h page by page: random ARMs,
 * syncs, hint and report batches (some with a bad range, rejected whole), guest writes and
 * verdicts (listed directly, or frozen and emitted in slices as the service does), checked after
 * every step. A fast path that loses an early or written page shows
 * up here as a page the model keeps and cmdstate calls free.
 */
#include <stdlib.h>

#include "t.h"
#include "daemon/cmdstate.h"
#include "writelog/loader.h"
#include "writelog/vmlog.h"

#define GPA	  (1ull << 30)
#define PAGES	  4096
#define STEPS	  3000
#define SEEDS	  6
#define BIG_BATCH (PT_UNDO_WORDS * 2)

struct model {
	uint8_t hinted[PAGES], reported[PAGES], early[PAGES], written[PAGES];
	bool synced;
	uint32_t cur;
};

struct env {
	struct pt_tracker *t;
	struct pt_vmctx *c;
	uint32_t vm;
	uint64_t seed;
	uint8_t listed[PAGES]; /* pages the verdict's callback got */
	bool listed_bad;
	bool frozen;	   /* the verdict came from a frozen set: ranges must ascend */
	bool reversed;	   /* the upper slot was registered first: the region's halves swap */
	uint64_t last_end; /* of the last range listed */
};

static uint64_t rnd(struct env *e)
{
	e->seed = e->seed * 6364136223846793005ull + 1442695040888963407ull;
	return e->seed >> 33;
}

static int collect(void *arg, uint64_t gpa, uint64_t len)
{
	struct env *e = arg;

	if (e->frozen && gpa < e->last_end)
		e->listed_bad = true; /* a reply's ranges ascend (PROTOCOL.md section 6) */
	e->last_end = gpa + len;
	for (uint64_t g = gpa; g < gpa + len; g += 4096) {
		if (g < GPA || g >= GPA + PAGES * 4096ull || e->listed[(g - GPA) / 4096])
			e->listed_bad = true;
		else
			e->listed[(g - GPA) / 4096] = 1;
	}
	return 0;
}

/* A batch of ranges: single pages in runs (one word gathered), longer and whole-word runs. */
static uint32_t random_batch(struct env *e, struct pt_range *r, uint32_t max, bool *bad)
{
	uint32_t n = 1 + rnd(e) % max;
	uint64_t cursor = rnd(e) % PAGES;

	*bad = false;
	if (rnd(e) % 32 == 0) { /* scattered single pages: more words than one pass may save */
		n = BIG_BATCH;
		for (uint32_t i = 0; i < n; i++)
			r[i] = (struct pt_range){ GPA + rnd(e) % PAGES * 4096, 4096 };
	}
	for (uint32_t i = 0; i < n && n != BIG_BATCH; i++) {
		uint64_t k = rnd(e) % 8, len = 1;

		if (k < 4)
			cursor = (cursor + 1) % PAGES;
		else if (k == 4)
			cursor = rnd(e) % 2 ? rnd(e) % PAGES : PAGES / 2 - 1 - rnd(e) % 8;
		else if (k == 5)
			len = 1 + rnd(e) % 200;
		else if (k == 6)
			len = 64 * (1 + rnd(e) % 4), cursor &= ~63ull;
		if (cursor + len > PAGES)
			len = PAGES - cursor;
		r[i] = (struct pt_range){ GPA + cursor * 4096, len * 4096 };
	}
	if (rnd(e) % 16 == 0) { /* outside the slots: the whole batch is refused */
		r[rnd(e) % n] = rnd(e) % 2
					? (struct pt_range){ GPA + (PAGES - 1) * 4096ull, 2 * 4096 }
					: (struct pt_range){ GPA - 4096, 4096 };
		*bad = true;
	}
	return n;
}

/* The rule of cmdstate.h: a page added before the sync and not in the set before is early. */
static void model_add(struct model *m, uint8_t *set, const struct pt_range *r, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		for (uint64_t p = (r[i].gpa - GPA) / 4096; p < (r[i].gpa + r[i].len - GPA) / 4096;
		     p++) {
			if (!m->synced && !set[p])
				m->early[p] = 1;
			set[p] = 1;
		}
}

static int add(struct env *e, struct model *m, bool hints)
{
	static struct pt_range r[BIG_BATCH];
	bool bad;
	uint32_t n = random_batch(e, r, 64, &bad);
	uint64_t got;
	int err = hints ? pt_cmd_hint(e->c, m->cur, r, n, &got) : pt_report_add(e->c, r, n, &got);

	CHECKF(bad ? err == -PT_E_BAD_RANGE : !err, "add: %d", err);
	if (!bad)
		model_add(m, hints ? m->hinted : m->reported, r, n);
	return 0;
}

/* The previous epoch folded into the reported set, then everything of an epoch cleared. */
static int arm(struct env *e, struct model *m)
{
	struct pt_vm_state *st = pt_vm(e->t, e->vm);
	bool forget = __atomic_load_n(&st->taint_epoch, __ATOMIC_SEQ_CST) >=
		      __atomic_load_n(&st->epoch, __ATOMIC_SEQ_CST);

	if (m->cur >= PT_CMD_ID_MIN && rnd(e) % 2)
		CHECK(!pt_cmd_stop(e->c, m->cur));
	m->cur++;
	CHECK(!pt_cmd_arm(e->c, m->cur));
	for (int p = 0; p < PAGES; p++) {
		m->reported[p] &= !forget && !m->written[p] && !m->early[p];
		m->hinted[p] = m->early[p] = m->written[p] = 0;
	}
	m->synced = false;
	return 0;
}

static int direct_verdict(struct env *e, struct model *m, bool hints, struct pt_verdict_sum *v)
{
	return hints ? pt_cmd_verdict(e->c, m->cur, v, collect, e)
		     : pt_report_verdict(e->c, v, collect, e);
}

/* As the service answers: the free pages frozen into a set, emitted in random slices. */
static int frozen_verdict(struct env *e, struct model *m, bool hints, struct pt_verdict_sum *v)
{
	struct pt_pages p = { 0 };
	bool done = false;
	int err = hints ? pt_cmd_verdict(e->c, m->cur, v, pt_pages_freeze, &p)
			: pt_report_verdict(e->c, v, pt_pages_freeze, &p);

	if (!err && !v->why && p.count != v->free)
		err = -1000; /* the set holds other pages than the verdict counts */
	e->frozen = true;
	while (!err && p.bits && !done)
		err = pt_pages_emit(&p, 1 + rnd(e) % (PAGES / 64), collect, e, &done);
	pt_pages_release(&p);
	return err;
}

static int verdict(struct env *e, struct model *m, bool hints)
{
	const uint8_t *set = hints ? m->hinted : m->reported;
	uint64_t total = 0, written = 0, unsure = 0;
	struct pt_verdict_sum v;
	int err;

	memset(e->listed, 0, sizeof(e->listed));
	e->listed_bad = false;
	e->frozen = false;
	e->last_end = 0;
	err = rnd(e) % 2 ? frozen_verdict(e, m, hints, &v) : direct_verdict(e, m, hints, &v);
	CHECKF(!err, "verdict: %d", err);
	if (!hints && !e->c->reported) { /* nothing ever reported: an empty answer */
		CHECK(!v.why && !v.hinted && !v.free && !v.kept_written && !v.kept_unsure);
		return 0;
	}
	for (int p = 0; p < PAGES; p++) {
		total += set[p];
		written += set[p] && m->written[p];
		unsure += set[p] && !m->written[p] && m->early[p];
	}
	if (!m->synced) {
		CHECKF(v.why == PT_WHY_NO_SYNC && v.hinted == total && !v.free && !v.kept_written &&
			       v.kept_unsure == total,
		       "unsynced: why %#x hinted %llu/%llu free %llu", v.why,
		       (unsigned long long)v.hinted, (unsigned long long)total,
		       (unsigned long long)v.free);
		return 0;
	}
	CHECKF(v.hinted == total && v.kept_written == written && v.kept_unsure == unsure &&
		       v.free == total - written - unsure && v.why == (unsure ? PT_WHY_NO_SYNC : 0),
	       "why %#x hinted %llu/%llu written %llu/%llu unsure %llu/%llu", v.why,
	       (unsigned long long)v.hinted, (unsigned long long)total,
	       (unsigned long long)v.kept_written, (unsigned long long)written,
	       (unsigned long long)v.kept_unsure, (unsigned long long)unsure);
	CHECK(!e->listed_bad);
	for (int p = 0; p < PAGES; p++)
		CHECKF(e->listed[p] == (set[p] && !m->written[p] && !m->early[p]),
		       "page %d listed %d", p, e->listed[p]);
	return 0;
}

/* The model's page (in address order) of page @rp of the VM's log region. */
static uint64_t model_page(const struct env *e, uint64_t rp)
{
	return e->reversed ? (rp + PAGES / 2) % PAGES : rp;
}

/* Early pages as cmdstate holds them, whatever their representation. */
static int same_sets(struct env *e, const struct model *m)
{
	for (uint64_t w = 0; w < PAGES / 64; w++) {
		uint64_t h = 0, r = 0, x = 0, mp = model_page(e, w * 64);

		for (int b = 0; b < 64; b++) {
			h |= (uint64_t)m->hinted[mp + b] << b;
			r |= (uint64_t)m->reported[mp + b] << b;
			x |= (uint64_t)m->early[mp + b] << b;
		}
		CHECKF(e->c->hinted[w] == h, "hinted word %llu", (unsigned long long)w);
		CHECKF((e->c->reported ? e->c->reported[w] : 0) == r, "reported word %llu",
		       (unsigned long long)w);
		CHECKF(pt_early_word(e->c, w) == x, "early word %llu: %#llx, model %#llx",
		       (unsigned long long)w, (unsigned long long)pt_early_word(e->c, w),
		       (unsigned long long)x);
	}
	return 0;
}

static int step(struct env *e, struct model *m)
{
	uint64_t k = rnd(e) % 100, p = rnd(e) % PAGES;

	if (k < 4)
		return arm(e, m);
	if (k < 8) {
		__atomic_store_n(&pt_vm(e->t, e->vm)->ring_sync_epoch, pt_vm(e->t, e->vm)->epoch,
				 __ATOMIC_SEQ_CST);
		m->synced = true;
		return 0;
	}
	if (k < 45)
		return add(e, m, true);
	if (k < 55)
		return add(e, m, false);
	if (k < 80) {
		uint64_t n = k % 3 ? 1 : 1 + rnd(e) % (PAGES - p < 100 ? PAGES - p : 100);

		pt_vm_mark_written(e->t, e->vm, p, n); /* region pages */
		for (uint64_t i = 0; i < n; i++)
			m->written[model_page(e, p + i)] = 1;
		return 0;
	}
	return verdict(e, m, k < 92);
}

static int one_seed(uint64_t seed)
{
	struct pt_loader_opts o = { .no_attach = true, .no_pin = true, .log_mb = 1 };
	/* Two memslots back to back: ranges cross from one into the other, the window moves. */
	struct pt_slot_cfg s[2] = { { GPA, PAGES / 2 * 4096ull, 1, true },
				    { GPA + PAGES / 2 * 4096ull, PAGES / 2 * 4096ull, 2, true } };
	static struct model m;
	struct env e = { .seed = seed };
	bool existed;

	memset(&m, 0, sizeof(m));
	e.reversed = seed % 2; /* the upper slot first: region order is not address order */
	if (e.reversed) {
		struct pt_slot_cfg t = s[0];

		s[0] = s[1];
		s[1] = t;
	}
	CHECK(!pt_tracker_open(&e.t, &o) && !pt_vm_track(e.t, getpid(), s, 2, 0, &e.vm, &existed));
	CHECK(!pt_vmctx_new(&e.c, e.t, e.vm, getpid(), PT_DIRTY_RING, true));
	m.cur = 1;
	CHECK(!arm(&e, &m));
	for (int i = 0; i < STEPS; i++) {
		CHECKF(!step(&e, &m), "seed %llu step %d", (unsigned long long)seed, i);
		CHECKF(!same_sets(&e, &m), "seed %llu step %d", (unsigned long long)seed, i);
	}
	pt_vmctx_free(e.c);
	pt_tracker_close(e.t);
	return 0;
}

static int random_against_model(void)
{
	T_REQUIRE(t_need_bpf());
	for (uint64_t seed = 1; seed <= SEEDS; seed++)
		CHECK(!one_seed(seed));
	return 0;
}

T_MAIN(T_CASE(random_against_model))
