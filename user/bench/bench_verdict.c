// SPDX-License-Identifier: GPL-2.0
/*
 * The sure verdict's own work, in-process: the service's cmdstate over a 64 GiB guest on a
 * tracker whose BPF programs are not attached, with the dirty-ring sync after ARM marked by
 * hand (as the tests mark it) and the guest's writes set in the write log directly. This is
 * what a QUERY costs on the event loop once the log is complete; the live-guest row adds the
 * socket and a real guest where KVM exists. Its baseline in the same run: one plain pass over
 * the same two bitmaps that only counts the free pages.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_svc.h"
#include "bench_util.h"
#include "bench_verdict.h"
#include "daemon/cmdstate.h"
#include "lib/proto.h"
#include "writelog/loader.h"
#include "writelog/vmlog.h"

#define GIB	   (1ull << 30)
#define MIB	   (1ull << 20)
#define PAGE	   4096ull
#define GUEST	   (64 * GIB)
#define GUEST_GPA  (4 * GIB)
#define PER_FRAME  4096u
#define CMD	   2u
#define EMIT_WORDS (1u << 20) /* service.c's LAZY_WORDS */
#define WRITE_STEP 1000u      /* one page in 1,000 written: 0.1 % */

struct vset {
	struct pt_tracker *t;
	struct pt_vmctx *c;
	uint32_t vm;
	struct pt_range *out; /* the verdict's ranges, as the service buffers them */
	size_t nout, cap;
};

static int collect(void *arg, uint64_t gpa, uint64_t len)
{
	struct vset *s = arg;

	return pt_ranges_append(&s->out, &s->nout, &s->cap, 4096, gpa, len);
}

/* ARM, the sync, every page hinted in 4 MiB ranges, STOP: what a full round leaves. */
static int hint_all(struct vset *s)
{
	struct pt_range r[PER_FRAME];
	struct pt_vm_state *st = pt_vm(s->t, s->vm);
	uint64_t gpa = GUEST_GPA, pages;
	int err = pt_cmd_arm(s->c, CMD);

	if (err)
		return err;
	__atomic_store_n(&st->ring_sync_epoch, st->epoch, __ATOMIC_SEQ_CST);
	while (!err && gpa < GUEST_GPA + GUEST) {
		uint32_t n = 0;

		for (; n < PER_FRAME && gpa < GUEST_GPA + GUEST; n++, gpa += 4 * MIB)
			r[n] = (struct pt_range){ gpa, 4 * MIB };
		err = pt_cmd_hint(s->c, CMD, r, n, &pages);
	}
	return err ? err : pt_cmd_stop(s->c, CMD);
}

static int vset_open(struct vset *s)
{
	struct pt_loader_opts lo = { .no_pin = true, .no_attach = true, .log_mb = 4, .tdp = -1 };
	struct pt_slot_cfg cfg = { GUEST_GPA, GUEST, 1, true };
	bool existed;
	int err;

	memset(s, 0, sizeof(*s));
	err = pt_tracker_open(&s->t, &lo);
	if (!err)
		err = pt_vm_track(s->t, (uint32_t)getpid(), &cfg, 1, 0, &s->vm, &existed);
	if (!err)
		err = pt_vmctx_new(&s->c, s->t, s->vm, (uint32_t)getpid(), PT_DIRTY_RING, true);
	return err ? err : hint_all(s);
}

static void vset_close(struct vset *s)
{
	pt_vmctx_free(s->c);
	pt_tracker_close(s->t);
	free(s->out);
}

/* The baseline: free pages counted from the hinted set and the log, nothing else. */
static uint64_t __attribute__((noinline))
plain_count(const uint64_t *h, const uint64_t *log, uint64_t words)
{
	uint64_t free = 0;

	for (uint64_t w = 0; w < words; w++)
		free += __builtin_popcountll(h[w] & ~log[w]);
	return free;
}

/*
 * As the service answers a QUERY: the pass freezes the free pages into a set, which is then
 * emitted a slice of words at a time (service.c, LAZY_WORDS) into the reply's ranges.
 */
static int verdict_as_service(struct vset *s, struct pt_verdict_sum *v)
{
	struct pt_pages pages = { 0 };
	bool done = false;
	int err = pt_cmd_verdict(s->c, CMD, v, pt_pages_freeze, &pages);

	while (!err && !done && v->free)
		err = pt_pages_emit(&pages, EMIT_WORDS, collect, s, &done);
	pt_pages_release(&pages);
	return err;
}

struct times {
	uint64_t verdict[64], plain[64];
	uint64_t free, ranges, plain_free;
	uint32_t why;
};

/* @n interleaved timings of each; the verdict's figures from its last run. */
static int time_both(struct vset *s, const uint64_t *hinted, unsigned n, struct times *x)
{
	const uint64_t *log = &s->t->log[pt_vm(s->t, s->vm)->log_bit_base / 64];
	uint64_t words = GUEST / PAGE / 64;

	for (unsigned i = 0; i < n; i++) {
		struct pt_verdict_sum v;
		uint64_t t0 = bench_now_ns();
		int err;

		s->nout = 0;
		err = verdict_as_service(s, &v);
		x->verdict[i] = bench_now_ns() - t0;
		if (err)
			return err;
		x->free = v.free;
		x->why = v.why;
		x->ranges = s->nout;
		t0 = bench_now_ns();
		x->plain_free = plain_count(hinted, log, words);
		x->plain[i] = bench_now_ns() - t0;
	}
	return 0;
}

static void put_times(const char *pfx, const char *label, struct times *x, unsigned n)
{
	char *k1 = NULL, *k2 = NULL, *k3 = NULL, *l1 = NULL;
	double v, p;

	bench_sort_u64(x->verdict, n);
	bench_sort_u64(x->plain, n);
	v = bench_percentile(x->verdict, n, 50) / 1e6;
	p = bench_percentile(x->plain, n, 50) / 1e6;
	/* Keys and labels live as long as the process: results keep pointers to them. */
	if (asprintf(&k1, "verdict_pass_%s_ms", pfx) < 0 ||
	    asprintf(&k2, "verdict_pass_%s_plain_ms", pfx) < 0 ||
	    asprintf(&k3, "verdict_pass_%s_ratio_vs_plain", pfx) < 0 ||
	    asprintf(&l1, "sure verdict, %s, p50", label) < 0)
		return;
	bench_put(k1, v, "ms", l1);
	bench_put(k2, p, "ms", "  baseline: count the free pages from the two bitmaps, p50");
	bench_put(k3, p > 0 ? v / p : 0, "x", "  verdict / baseline");
}

int bench_verdict_pass(const struct bench_env *env)
{
	unsigned n = env->quick ? 8 : 40;
	uint64_t pages = GUEST / PAGE, *hinted = NULL;
	struct times x;
	struct vset s;
	int err;

	bench_section("The sure verdict's pass, in-process: 64 GiB fully hinted, sync marked by "
		      "hand, 4 MiB hints");
	err = vset_open(&s);
	if (err == -EPERM || err == -ENOSYS || err == -EOPNOTSUPP) {
		/* The tracker's maps need BPF even with nothing attached. */
		bench_skip("verdict_pass", "needs BPF to create the write log's maps");
		vset_close(&s);
		return 0;
	}
	/* The baseline's hinted set: every page, as hint_all() hinted it. */
	if (!err && !(hinted = malloc(pages / 8)))
		err = -ENOMEM;
	if (!err) {
		memset(hinted, 0xff, pages / 8);
		err = time_both(&s, hinted, n, &x);
	}
	if (!err && (x.why || x.free != pages || x.plain_free != pages))
		err = -EPROTO; /* not the sure verdict this row claims to time */
	if (!err) {
		put_times("none", "nothing written", &x, n);
		for (uint64_t p = 0; p < pages; p += WRITE_STEP)
			pt_vm_mark_written(s.t, s.vm, p, 1);
		err = time_both(&s, hinted, n, &x);
	}
	if (!err && (x.why || x.free != x.plain_free))
		err = -EPROTO;
	if (!err) {
		put_times("written", "0.1 % written (every 1,000th page)", &x, n);
		bench_put("verdict_pass_written_ranges", (double)x.ranges, "",
			  "  free ranges in that verdict");
	}
	free(hinted);
	vset_close(&s);
	return err;
}
