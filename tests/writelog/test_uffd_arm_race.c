// SPDX-License-Identifier: GPL-2.0
/*
 * The guarantee of pt_uffd_arm_fold() under a concurrent writer: a forked child (the VMM,
 * tests/writelog/uffd_child.h) writes random pages of its own registered memory in a loop,
 * stamping each store with CLOCK_MONOTONIC before and after, while this process (the service)
 * runs ARM (fold into `prev`) and a verdict read of the whole guest, round after round. No
 * KVM needed: the VMM's own writes go through the same page tables as a guest's.
 *
 * For each round k (ARM_k over [a0, a1], then a read over [r0, r1]) every logged write is
 * classified by its stamps:
 *   - done between ARM_{k-1} and ARM_k, or overlapping ARM_k: in prev_k (the old epoch) or
 *     seen by read_k (left unprotected, so counted in the new epoch); never in neither;
 *   - started after ARM_k completed and done before read_k began: seen by read_k.
 * And prev_k is exact: only pages some write touched between the start of ARM_{k-1} and
 * the end of ARM_k (a page reported that nobody wrote would be a precision loss that
 * silently drops reported and inflated pages).
 */
#include "t.h"
#include "uffd_child.h"
#include "writelog/uffd.h"

#define MIB (1ull << 20)

struct arm_race {
	struct uc c;
	struct pt_uffd *u;
	uint64_t npages, words;
	uint64_t *prev, *bits, *touched;
	uint64_t cursor;		     /* first log entry not yet classified */
	uint64_t a0_prev, a1_prev;	     /* the previous round's ARM */
	uint64_t rounds, in_epoch, straddle; /* writes checked, by kind */
	uint64_t after, skipped, exact_rounds;
};

static bool has(const uint64_t *b, uint64_t p)
{
	return b[p / 64] & (1ull << (p % 64));
}

/* Classify log entries done before the read began; stop at the first one that is not. */
static int classify(struct arm_race *r, uint64_t a0, uint64_t a1, uint64_t r0)
{
	uint64_t n = __atomic_load_n(&r->c.sh->n, __ATOMIC_ACQUIRE);

	for (; r->cursor < n; r->cursor++) {
		const struct uc_wr *e = &r->c.sh->log[r->cursor];
		bool in_prev = has(r->prev, e->page), in_read = has(r->bits, e->page);

		if (e->t1 >= r0)
			break;
		if (e->t0 >= a1) { /* after ARM_k completed */
			r->after++;
			CHECKF(in_read, "page %lu written %lu ns after ARM %lu, not in the read",
			       (unsigned long)e->page, (unsigned long)(e->t0 - a1),
			       (unsigned long)r->rounds);
		} else if (e->t0 >= r->a1_prev) {
			/* In the ending epoch, or overlapping this ARM. */
			if (e->t1 > a0)
				r->straddle++;
			else
				r->in_epoch++;
			CHECKF(in_prev || in_read,
			       "page %lu written [%ld, %ld] ns around ARM %lu: in neither epoch",
			       (unsigned long)e->page, (long)(e->t0 - a0), (long)(e->t1 - a0),
			       (unsigned long)r->rounds);
		} else {
			/* Overlapped the previous ARM: its store may be in prev_{k-1} only. */
			r->skipped++;
		}
	}
	return 0;
}

/*
 * prev_k must hold only pages written between ARM_{k-1}'s start and ARM_k's end. Waits until
 * the writer has published an entry begun after a1, so that every write begun before it is
 * in the log; gives up the check for the round (not the safety checks) after a bound.
 */
static int prev_exact(struct arm_race *r, uint64_t a1)
{
	uint64_t t_end = uc_now() + t_time_scale() * 2000000000ull, n, extra = 0;

	for (;;) {
		n = __atomic_load_n(&r->c.sh->n, __ATOMIC_ACQUIRE);
		if (n && r->c.sh->log[n - 1].t0 > a1)
			break;
		if (uc_now() > t_end || n == UC_LOG_MAX)
			return 0;
		usleep(100);
	}
	memset(r->touched, 0, r->words * 8);
	for (uint64_t i = 0; i < n; i++) {
		const struct uc_wr *e = &r->c.sh->log[i];

		if (e->t1 >= r->a0_prev && e->t0 <= a1)
			r->touched[e->page / 64] |= 1ull << (e->page % 64);
	}
	for (uint64_t w = 0; w < r->words; w++)
		extra += __builtin_popcountll(r->prev[w] & ~r->touched[w]);
	CHECKF(!extra, "ARM %lu reported %lu pages nobody wrote", (unsigned long)r->rounds,
	       (unsigned long)extra);
	r->exact_rounds++;
	return 0;
}

static int arm_round(struct arm_race *r, const struct pt_gfn_range *all)
{
	uint64_t a0, a1, r0;

	memset(r->prev, 0, r->words * 8);
	memset(r->bits, 0, r->words * 8);
	a0 = uc_now();
	CHECK(!pt_uffd_arm_fold(r->u, r->prev));
	a1 = uc_now();
	/* Vary where the writer's stores fall relative to ARM and read. */
	usleep(500 + r->rounds % 5 * 700);
	r0 = uc_now();
	CHECK(!pt_uffd_read(r->u, all, 1, r->bits));
	CHECK(!pt_uffd_doubt(r->u, NULL));
	/* Round 0 follows open: every page is reported, nothing to classify before it. */
	if (r->rounds) {
		CHECK(!classify(r, a0, a1, r0));
		CHECK(!prev_exact(r, a1));
	} else {
		uint64_t n = __atomic_load_n(&r->c.sh->n, __ATOMIC_ACQUIRE);

		while (r->cursor < n && r->c.sh->log[r->cursor].t1 < r0)
			r->cursor++;
	}
	r->a0_prev = a0;
	r->a1_prev = a1;
	r->rounds++;
	return 0;
}

static int arm_fold_race_size(uint64_t size)
{
	struct uc_opts o = { .kind = UC_ANON, .size = size };
	struct arm_race r = { .c = UC_NONE };
	struct pt_uffd_slot s;
	struct pt_gfn_range all;
	char err[256] = "";
	uint64_t t_end;
	int rc = -1;

	if (uc_start(&r.c, &o))
		goto out;
	s = (struct pt_uffd_slot){ .gpa = 0, .size = r.c.size, .hva = r.c.hva };
	if (pt_uffd_open(&r.u, r.c.uffd, r.c.pm, r.c.pid, &s, 1, err, sizeof(err))) {
		fprintf(stderr, "  pt_uffd_open: %s\n", err);
		goto out;
	}
	r.c.uffd = r.c.pm = -1; /* the log owns them now */
	r.npages = r.c.size / UC_PAGE;
	r.words = (r.npages + 63) / 64;
	all = (struct pt_gfn_range){ 0, r.npages };
	r.prev = calloc(r.words, 8);
	r.bits = calloc(r.words, 8);
	r.touched = calloc(r.words, 8);
	if (!r.prev || !r.bits || !r.touched)
		goto out;
	r.c.sh->seed = 0x5eed0001;
	r.c.sh->usleep_every = 2048; /* leave the machine to the others now and then */
	if (uc_cmd(&r.c, UC_WRITER_START, 0, 0))
		goto out;
	t_end = uc_now() + t_time_scale() * 20ull * 1000000000;
	rc = 0;
	while (!rc && (r.rounds < 40 || r.straddle < 200 || r.in_epoch < 2000 || r.after < 2000) &&
	       uc_now() < t_end && __atomic_load_n(&r.c.sh->n, __ATOMIC_ACQUIRE) < UC_LOG_MAX)
		rc = arm_round(&r, &all);
	uc_cmd(&r.c, UC_WRITER_STOP, 0, 0);
	fprintf(stderr,
		"  %lu rounds; writes checked: %lu in an epoch, %lu overlapping an ARM, %lu after "
		"an ARM (%lu skipped); prev exact in %lu rounds\n",
		(unsigned long)r.rounds, (unsigned long)r.in_epoch, (unsigned long)r.straddle,
		(unsigned long)r.after, (unsigned long)r.skipped, (unsigned long)r.exact_rounds);
	if (!rc && (r.rounds < 10 || r.straddle < 20 || r.in_epoch < 200 || r.after < 200 ||
		    r.exact_rounds < r.rounds / 2)) {
		fprintf(stderr, "  too little happened\n");
		rc = -1;
	}
out:
	pt_uffd_close(r.u);
	uc_stop(&r.c, false);
	free(r.prev);
	free(r.bits);
	free(r.touched);
	return rc;
}

/* 1 GiB: ARMs long enough (a walk and a re-protect per written page) for writes to overlap. */
static int arm_fold_race(void)
{
	return arm_fold_race_size(1024 * MIB);
}

/* 64 MiB: many more rounds, the writer hitting the same pages again within and across them. */
static int arm_fold_race_small(void)
{
	return arm_fold_race_size(64 * MIB);
}

T_MAIN(T_CASE(arm_fold_race), T_CASE(arm_fold_race_small))
