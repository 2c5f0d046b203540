// SPDX-License-Identifier: GPL-2.0
/*
 * The command-ID state machine and the verdict (user/daemon/cmdstate.c) on a real write log
 * (the BPF maps, loaded but not attached), with the events a guest would cause played by the
 * test: a complete ring sync is ring_sync_epoch reaching the epoch (what the BPF program
 * records), a guest write is a bit set in the log. This runs where no KVM guest can: the
 * cases with a real guest are in test_conformance.c and test_reconcile.c.
 */
#include <stdlib.h>

#include "t.h"
#include "daemon/cmdstate.h"
#include "writelog/loader.h"
#include "writelog/vmlog.h"

#define GPA   (1ull << 30)
#define PAGES 1024

struct env {
	struct pt_tracker *t;
	struct pt_vmctx *c;
	uint32_t vm;
	struct pt_range listed[64];
	unsigned nlisted;
};

static int collect(void *arg, uint64_t gpa, uint64_t len)
{
	struct env *e = arg;

	if (e->nlisted == 64)
		return -PT_E_BUSY;
	e->listed[e->nlisted++] = (struct pt_range){ gpa, len };
	return 0;
}

static int setup_pages(struct env *e, bool logged, uint64_t npages)
{
	struct pt_loader_opts o = { .no_attach = true, .no_pin = true, .log_mb = 1 };
	struct pt_slot_cfg s = { GPA, npages * 4096ull, 1, logged };
	bool existed;

	memset(e, 0, sizeof(*e));
	if (pt_tracker_open(&e->t, &o) || pt_vm_track(e->t, getpid(), &s, 1, 0, &e->vm, &existed))
		return -1;
	return pt_vmctx_new(&e->c, e->t, e->vm, getpid(), PT_DIRTY_RING, true);
}

static int setup(struct env *e, bool logged)
{
	return setup_pages(e, logged, PAGES);
}

static void teardown(struct env *e)
{
	pt_vmctx_free(e->c);
	pt_tracker_close(e->t);
}

/* What a complete KVM_RESET_DIRTY_RINGS after the arm leaves in the VM's state. */
static void sync_now(struct env *e)
{
	struct pt_vm_state *st = pt_vm(e->t, e->vm);

	__atomic_store_n(&st->ring_sync_epoch, st->epoch, __ATOMIC_SEQ_CST);
}

/* The guest writes page p (a dirty-ring push the BPF program logged). */
static void guest_write(struct env *e, uint64_t p)
{
	pt_vm_mark_written(e->t, e->vm, p, 1);
}

static struct pt_range pages(uint64_t first, uint64_t n)
{
	return (struct pt_range){ GPA + first * 4096, n * 4096 };
}

static int hint(struct env *e, uint32_t id, uint64_t first, uint64_t n)
{
	struct pt_range r = pages(first, n);
	uint64_t got;

	return pt_cmd_hint(e->c, id, &r, 1, &got) || got != n ? -1 : 0;
}

static int report(struct env *e, uint64_t first, uint64_t n)
{
	struct pt_range r = pages(first, n);
	uint64_t got;

	return pt_report_add(e->c, &r, 1, &got) || got != n ? -1 : 0;
}

/* The count of an unsure verdict takes every word: 19 words, not a multiple of its 4 sums. */
static int unsure_count_every_word(void)
{
	const uint64_t n = 19 * 64;
	struct pt_verdict_sum v;
	struct env e;

	T_REQUIRE(t_need_bpf());
	CHECK(!setup_pages(&e, true, n));
	CHECK(e.c->words % 4 != 0);
	CHECK(!pt_cmd_arm(e.c, 2));
	CHECK(!hint(&e, 2, 0, n));
	CHECK(!pt_cmd_verdict(e.c, 2, &v, collect, &e));
	CHECKF((v.why & PT_WHY_NO_SYNC) && v.hinted == n && v.kept_unsure == n && !v.free,
	       "hinted %llu of %llu", (unsigned long long)v.hinted, (unsigned long long)n);
	teardown(&e);
	return 0;
}

/* Hints before the sync are unsure (not written); the same verdict confirms the later ones. */
static int early_hints_unsure_not_written(void)
{
	struct pt_verdict_sum v;
	struct env e;

	T_REQUIRE(t_need_bpf());
	CHECK(!setup(&e, true));
	CHECK(!pt_cmd_arm(e.c, 2));
	CHECK(!hint(&e, 2, 0, 10)); /* before the sync */
	sync_now(&e);
	CHECK(!hint(&e, 2, 10, 10));
	guest_write(&e, 5);
	guest_write(&e, 15);
	CHECK(!pt_cmd_verdict(e.c, 2, &v, collect, &e));
	CHECKF(v.why == PT_WHY_NO_SYNC && v.hinted == 20 && v.free == 9 && v.kept_written == 2 &&
		       v.kept_unsure == 9,
	       "why %#x free %llu written %llu unsure %llu", v.why, (unsigned long long)v.free,
	       (unsigned long long)v.kept_written, (unsigned long long)v.kept_unsure);
	CHECK(e.nlisted == 2 && e.listed[0].gpa == pages(10, 5).gpa &&
	      e.listed[0].len == 5 * 4096 && e.listed[1].gpa == pages(16, 4).gpa &&
	      e.listed[1].len == 4 * 4096);
	/* The next epoch starts without early pages. */
	CHECK(!pt_cmd_stop(e.c, 2) && !pt_cmd_arm(e.c, 3));
	sync_now(&e);
	CHECK(!hint(&e, 3, 0, 10));
	e.nlisted = 0;
	CHECK(!pt_cmd_verdict(e.c, 3, &v, collect, &e));
	CHECK(!v.why && v.free == 10 && v.kept_unsure == 0);
	teardown(&e);
	return 0;
}

/*
 * A taint BPF could not record exactly leaves all ones (raise_to): it taints this epoch and
 * every later one, while an ordinary taint belongs to its epoch alone.
 */
static int all_ones_taint_every_epoch(void)
{
	struct pt_verdict_sum v;
	struct env e;

	T_REQUIRE(t_need_bpf());
	CHECK(!setup(&e, true));
	for (uint32_t id = 2; id <= 3; id++) { /* the epoch of the mark, then the next */
		CHECK(!pt_cmd_arm(e.c, id));
		sync_now(&e);
		CHECK(!hint(&e, id, 0, 10));
		if (id == 2)
			__atomic_store_n(&pt_vm(e.t, e.vm)->taint_epoch, ~0ull, __ATOMIC_SEQ_CST);
		CHECK(!pt_cmd_verdict(e.c, id, &v, collect, &e));
		CHECKF((v.why & PT_WHY_TAINTED) && !v.free, "epoch of ID %u: why %#x free %llu", id,
		       v.why, (unsigned long long)v.free);
		CHECK(!pt_cmd_stop(e.c, id));
	}
	teardown(&e);
	return 0;
}

/* Without a sync nothing is confirmed, and everything hinted counts as unsure. */
static int no_sync_confirms_nothing(void)
{
	struct pt_verdict_sum v;
	struct env e;

	T_REQUIRE(t_need_bpf());
	CHECK(!setup(&e, true));
	CHECK(!pt_cmd_arm(e.c, 2));
	CHECK(!hint(&e, 2, 0, 10));
	guest_write(&e, 3);
	CHECK(!pt_cmd_verdict(e.c, 2, &v, collect, &e));
	CHECK((v.why & PT_WHY_NO_SYNC) && v.free == 0 && v.kept_unsure == 10 && e.nlisted == 0);
	teardown(&e);
	return 0;
}

/*
 * Issue 13 item 8: one REPORT before the sync loses only itself. Pages reported earlier and
 * never written stay reported; pages written leave at the next ARM; an unsynced epoch does
 * not empty the set, a tainted one does.
 */
static int reported_set_loses_only_what_it_must(void)
{
	struct pt_verdict_sum v;
	struct env e;

	T_REQUIRE(t_need_bpf());
	CHECK(!setup(&e, true));
	CHECK(!pt_cmd_arm(e.c, 2));
	sync_now(&e);
	CHECK(!report(&e, 100, 64));
	CHECK(!pt_cmd_arm(e.c, 3));
	CHECK(!report(&e, 200, 1)); /* early */
	CHECK(!report(&e, 100, 1)); /* early, but already reported and clean: stays */
	sync_now(&e);
	CHECK(!pt_report_verdict(e.c, &v, collect, &e));
	CHECKF(v.why == PT_WHY_NO_SYNC && v.hinted == 65 && v.free == 64 && v.kept_unsure == 1 &&
		       v.kept_written == 0,
	       "why %#x hinted %llu free %llu", v.why, (unsigned long long)v.hinted,
	       (unsigned long long)v.free);
	guest_write(&e, 101);
	CHECK(!pt_cmd_arm(e.c, 4)); /* settles: 200 (early) and 101 (written) leave */
	sync_now(&e);
	CHECK(!pt_report_verdict(e.c, &v, NULL, NULL));
	CHECK(!v.why && v.hinted == 63 && v.free == 63);
	/* An epoch without any sync: the clean reported pages stay. */
	CHECK(!pt_cmd_arm(e.c, 5));
	CHECK(!pt_cmd_arm(e.c, 6));
	sync_now(&e);
	CHECK(!pt_report_verdict(e.c, &v, NULL, NULL));
	CHECK(!v.why && v.hinted == 63 && v.free == 63);
	/* A taint (an event really lost): a reported page may have been written unseen. */
	pt_vm_taint(e.t, e.vm, PT_TAINT_USER);
	CHECK(!pt_cmd_arm(e.c, 7));
	sync_now(&e);
	CHECK(!pt_report_verdict(e.c, &v, NULL, NULL));
	CHECK(v.hinted == 0);
	teardown(&e);
	return 0;
}

/* The blocked IDs: the exact virtio rule, the run limit, merging, STOP emptying the set. */
static int command_id_runs(void)
{
	struct env e;
	uint32_t id;

	T_REQUIRE(t_need_bpf());
	CHECK(!setup(&e, true));
	CHECK(!pt_cmd_arm(e.c, 10) && !pt_cmd_arm(e.c, 11));
	CHECK(pt_cmd_arm(e.c, 10) == -PT_E_CMD_REUSE);
	CHECK(!pt_cmd_stop(e.c, 11));
	CHECK(!pt_cmd_arm(e.c, 10) && !pt_cmd_arm(e.c, 11));
	CHECK(!pt_cmd_stop(e.c, 11));
	/* Runs below and above, joined by the ID between them. */
	for (id = 100; id < 100 + 2 * PT_MAX_ID_RUNS; id += 2)
		CHECK(!pt_cmd_arm(e.c, id));
	CHECK(e.c->nused == PT_MAX_ID_RUNS);
	CHECK(pt_cmd_arm(e.c, 5000) == -PT_E_BUSY);
	CHECK(pt_cmd_arm(e.c, 99) == 0 && e.c->nused == PT_MAX_ID_RUNS); /* extends downwards */
	CHECK(pt_cmd_arm(e.c, 101) == 0 && e.c->nused == PT_MAX_ID_RUNS - 1); /* joins two */
	CHECK(pt_cmd_arm(e.c, 99) == -PT_E_CMD_REUSE && pt_cmd_arm(e.c, 102) == -PT_E_CMD_REUSE);
	CHECK(!pt_cmd_arm(e.c, 5000));
	/* The top of the ID space: no wrap into a run. */
	CHECK(!pt_cmd_stop(e.c, 5000));
	CHECK(!pt_cmd_arm(e.c, UINT32_MAX) && !pt_cmd_arm(e.c, 2));
	CHECK(e.c->nused == 2 && !pt_cmd_arm(e.c, UINT32_MAX - 1) && e.c->nused == 2);
	teardown(&e);
	return 0;
}

/*
 * A batch as pt_cmd_hint's fast paths see it: runs of one-page ranges across words, repeats,
 * longer ranges, ranges crossing from one memslot into the adjacent one, ranges in a third
 * slot between them. The sets must hold exactly the pages a page-at-a-time walk would set
 * (pt_slots_page), and a batch with one bad range must record nothing.
 */
#define B_SLOT_A 1024 /* pages at GPA, then B (512 pages) right after it, C far away */
#define B_SLOT_C (8ull << 30)
#define B_N	 300

static uint64_t b_rand(uint64_t *x)
{
	*x = *x * 6364136223846793005ull + 1442695040888963407ull;
	return *x >> 33;
}

/* Range i of the batch: region-independent, guest-physical. */
static struct pt_range b_range(uint64_t *x, uint64_t *cursor)
{
	uint64_t k = b_rand(x) % 10, len = 1;

	if (k < 5) /* the next page */
		*cursor = (*cursor + 1) % (B_SLOT_A + 512);
	else if (k == 5) /* a few pages on */
		*cursor = (*cursor + 2 + b_rand(x) % 4) % (B_SLOT_A + 512);
	else if (k == 6) /* a jump */
		*cursor = b_rand(x) % (B_SLOT_A + 512);
	else if (k == 7) /* a longer run, may cross from A into B */
		len = 1 + b_rand(x) % (b_rand(x) % 4 ? 20 : 160); /* whole words too */
	else if (k == 8)					  /* slot C */
		return (struct pt_range){ B_SLOT_C + (b_rand(x) % 200) * 4096,
					  (1 + b_rand(x) % 3) * 4096 };
	/* k == 9: the same page again */
	if (*cursor + len > B_SLOT_A + 512)
		len = B_SLOT_A + 512 - *cursor;
	return (struct pt_range){ GPA + *cursor * 4096, len * 4096 };
}

static void b_expect(const struct pt_vm_slots *sl, const struct pt_range *r, uint32_t n,
		     uint64_t *set)
{
	for (uint32_t i = 0; i < n; i++)
		for (uint64_t g = r[i].gpa >> 12; g < (r[i].gpa + r[i].len) >> 12; g++) {
			uint64_t page;

			if (!pt_slots_page(sl, g, &page))
				set[page / 64] |= 1ull << (page % 64);
		}
}

static int hint_batch_paths(void)
{
	struct pt_loader_opts o = { .no_attach = true, .no_pin = true, .log_mb = 1 };
	struct pt_slot_cfg s[3] = { { GPA, B_SLOT_A * 4096ull, 1, true },
				    { GPA + B_SLOT_A * 4096ull, 512 * 4096ull, 2, true },
				    { B_SLOT_C, 256 * 4096ull, 3, true } };
	static struct pt_range r[B_N];
	uint64_t x = 1, cursor = 0, got, distinct = 0, *want;
	struct env e;
	bool existed;

	T_REQUIRE(t_need_bpf());
	memset(&e, 0, sizeof(e));
	CHECK(!pt_tracker_open(&e.t, &o) && !pt_vm_track(e.t, getpid(), s, 3, 0, &e.vm, &existed));
	CHECK(!pt_vmctx_new(&e.c, e.t, e.vm, getpid(), PT_DIRTY_RING, true));
	want = calloc(e.c->words, 8);
	CHECK(want);
	for (uint32_t i = 0; i < B_N; i++)
		r[i] = b_range(&x, &cursor);
	b_expect(&e.c->slots, r, B_N, want);
	/* Before the sync: every page hinted is early too. */
	CHECK(!pt_cmd_arm(e.c, 2));
	CHECK(!pt_cmd_hint(e.c, 2, r, B_N, &got));
	for (uint64_t w = 0; w < e.c->words; w++) /* sparse, so that a misplaced bit shows */
		distinct += __builtin_popcountll(want[w]);
	CHECKF(distinct < (B_SLOT_A + 512) * 3 / 4, "%llu pages", (unsigned long long)distinct);
	CHECK(!memcmp(e.c->hinted, want, e.c->words * 8));
	for (uint64_t w = 0; w < e.c->words; w++)
		CHECKF(pt_early_word(e.c, w) == want[w], "early word %llu", (unsigned long long)w);
	/* After it: the same sets from the other half of the batch first, then the whole. */
	CHECK(!pt_cmd_stop(e.c, 2) && !pt_cmd_arm(e.c, 3));
	sync_now(&e);
	CHECK(!pt_cmd_hint(e.c, 3, r + B_N / 2, B_N - B_N / 2, &got));
	CHECK(!pt_cmd_hint(e.c, 3, r, B_N, &got));
	CHECK(!memcmp(e.c->hinted, want, e.c->words * 8));
	/* A bad range anywhere (the gap after B, or past C's end) rejects the batch whole. */
	memset(e.c->hinted, 0, e.c->words * 8);
	r[B_N - 1] = (struct pt_range){ GPA + (B_SLOT_A + 512) * 4096ull, 4096 };
	CHECK(pt_cmd_hint(e.c, 3, r, B_N, &got) == -PT_E_BAD_RANGE);
	r[B_N - 1] = (struct pt_range){ B_SLOT_C + 255 * 4096ull, 2 * 4096 };
	CHECK(pt_cmd_hint(e.c, 3, r, B_N, &got) == -PT_E_BAD_RANGE);
	r[0] = (struct pt_range){ GPA + 1000 * 4096ull, (B_SLOT_A + 512) * 4096ull };
	CHECK(pt_cmd_hint(e.c, 3, r, 1, &got) == -PT_E_BAD_RANGE);
	for (uint64_t w = 0; w < e.c->words; w++)
		CHECKF(!e.c->hinted[w], "word %llu set by a rejected batch", (unsigned long long)w);
	free(want);
	teardown(&e);
	return 0;
}

/* REGISTER's coverage: an unlogged slot and memslots never seen are both reported. */
static int coverage_bits(void)
{
	struct env e;

	T_REQUIRE(t_need_bpf());
	CHECK(!setup(&e, false));
	CHECK(pt_coverage_bits(e.c) == PT_WHY_UNTRACKED);
	teardown(&e);
	CHECK(!setup(&e, true));
	CHECK(pt_coverage_bits(e.c) == 0);
	__atomic_fetch_or(&pt_vm(e.t, e.vm)->flags, PT_VM_SLOTS_UNSEEN, __ATOMIC_SEQ_CST);
	CHECK(pt_coverage_bits(e.c) == PT_WHY_UNKNOWN_MEM);
	teardown(&e);
	/* This process holds no VM; a process that cannot be inspected counts as holding one. */
	CHECK(pt_pid_scan_kvm_vm(getpid()) == 0);
	CHECK(pt_pid_scan_kvm_vm(0x7ffffff0) != 0); /* cannot tell counts as a VM */
	return 0;
}

T_MAIN(T_CASE(early_hints_unsure_not_written), T_CASE(no_sync_confirms_nothing),
       T_CASE(unsure_count_every_word), T_CASE(all_ones_taint_every_epoch),
       T_CASE(reported_set_loses_only_what_it_must), T_CASE(command_id_runs), T_CASE(coverage_bits),
       T_CASE(hint_batch_paths))
