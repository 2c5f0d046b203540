// SPDX-License-Identifier: GPL-2.0
/*
 * The userfaultfd write log (user/writelog/uffd.c), for real: a forked child is the VMM
 * (tests/writelog/uffd_child.h); this process is the service and holds only the child's uffd
 * and pagemap fds. Written sets must be exact (0 missed, 0 extra); every failure mode must
 * give doubt, never a false "unwritten". The KVM cases (a minivm guest with dirty logging
 * off) skip where /dev/kvm is missing.
 */
#include <pthread.h>
#include <sys/eventfd.h>

#include "t.h"
#include "uffd_child.h"
#include "pagetrack/proto.h"
#include "vmm/minivm.h"
#include "writelog/loader.h"
#include "writelog/uffd.h"
#include "writelog/vmlog.h"

#define GIB (1ull << 30)
/* Guest-physical base of the second slot of the child's memory. */
#define SLOT1_GPA (1ull << 40)

/* Slot layout used by most cases: the child's memory split in two slots, the second at 1 TiB
 * guest-physical. Log page index == the child's page index. */
static unsigned two_slots(const struct uc *c, struct pt_uffd_slot *s)
{
	uint64_t half = c->size / 2 & ~(UC_PAGE - 1);

	s[0] = (struct pt_uffd_slot){ .gpa = 0, .size = half, .hva = c->hva };
	s[1] = (struct pt_uffd_slot){ .gpa = SLOT1_GPA,
				      .size = c->size - half,
				      .hva = c->hva + half };
	return 2;
}

static int open_log(struct uc *c, struct pt_uffd **u)
{
	struct pt_uffd_slot s[2];
	char err[256] = "";
	int rc = pt_uffd_open(u, c->uffd, c->pm, c->pid, s, two_slots(c, s), err, sizeof(err));

	if (rc)
		fprintf(stderr, "  pt_uffd_open: %s (%s)\n", err, strerror(-rc));
	else
		c->uffd = c->pm = -1; /* the log owns them now */
	return rc;
}

/* A case against a VMM child: its log, and buffers that with_vmm() frees after the case. */
struct ucase {
	struct uc_opts o;
	struct uc c;
	struct pt_uffd *u;
	uint64_t *bits;	 /* read_all()'s bitmap */
	uint64_t *pages; /* the case's own */
};

/* Starts the child with `o`, opens its log if `open`, runs the case, cleans up after it. */
static int with_vmm(struct uc_opts o, bool open, int (*body)(struct ucase *t))
{
	struct ucase t = { .o = o, .c = UC_NONE };
	int rc = uc_start(&t.c, &t.o) || (open && open_log(&t.c, &t.u)) ? -1 : body(&t);

	free(t.bits);
	free(t.pages);
	pt_uffd_close(t.u);
	uc_stop(&t.c, false);
	return rc;
}

/* Read every page of both slots into a fresh bitmap, t->bits. */
static int read_all(struct ucase *t)
{
	uint64_t half = t->c.size / 2 & ~(UC_PAGE - 1), words = (t->c.size / UC_PAGE + 63) / 64;
	struct pt_gfn_range r[2] = { { 0, half / UC_PAGE },
				     { SLOT1_GPA / UC_PAGE, (t->c.size - half) / UC_PAGE } };

	free(t->bits);
	t->bits = calloc(words, 8);
	return t->bits ? pt_uffd_read(t->u, r, 2, t->bits) : -ENOMEM;
}

/* Compare a bitmap with the expected page set; prints and fails on any difference. */
static int same_set(const uint64_t *bits, const uint64_t *pages, size_t n, uint64_t npages)
{
	uint64_t words = (npages + 63) / 64, missed = 0, extra = 0;
	uint64_t *want = calloc(words, 8);

	if (!want)
		return -1;
	for (size_t i = 0; i < n; i++)
		want[pages[i] / 64] |= 1ull << (pages[i] % 64);
	for (uint64_t w = 0; w < words; w++) {
		missed += __builtin_popcountll(want[w] & ~bits[w]);
		extra += __builtin_popcountll(bits[w] & ~want[w]);
	}
	free(want);
	if (missed || extra)
		fprintf(stderr, "  written set: %lu missed, %lu extra (of %zu)\n", missed, extra,
			n);
	return missed || extra ? -1 : 0;
}

/* Reads every page (read_all()): the written set must be exactly pages[0..n). */
static int written_is(struct ucase *t, const uint64_t *pages, size_t n)
{
	return read_all(t) || same_set(t->bits, pages, n, t->c.size / UC_PAGE) ? -1 : 0;
}

static uint64_t rnd(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

/* n distinct random pages below npages, plus a run of 40 at the slot boundary. */
static size_t pick(uint64_t *pages, size_t n, uint64_t npages, uint64_t seed)
{
	uint64_t *seen, x = seed | 1;
	size_t k = 0;

	if (n > npages) /* n distinct pages cannot be found: say so rather than loop forever */
		return 0;
	seen = calloc((npages + 63) / 64, 8);
	for (uint64_t p = npages / 2 - 20; p < npages / 2 + 20; p++, k++) {
		pages[k] = p;
		seen[p / 64] |= 1ull << (p % 64);
	}
	while (k < n) {
		uint64_t p = rnd(&x) % npages;

		if (seen[p / 64] & (1ull << (p % 64)))
			continue;
		seen[p / 64] |= 1ull << (p % 64);
		pages[k++] = p;
	}
	free(seen);
	return k;
}

/*
 * Marks pages[0..n) in `hinted` and lists them as guest-physical ranges in `hint` (returns how
 * many): log pages below sl0 are slot 0 at gfn 0, the others slot 1 from gfn slot1_gfn.
 */
static size_t hint_ranges(const uint64_t *pages, size_t n, uint64_t npages, uint64_t sl0,
			  uint64_t slot1_gfn, uint64_t *hinted, struct pt_gfn_range *hint)
{
	size_t nh = 0;

	for (size_t i = 0; i < n; i++)
		hinted[pages[i] / 64] |= 1ull << (pages[i] % 64);
	for (uint64_t p = 0; p < npages; p++) {
		uint64_t gfn = p < sl0 ? p : slot1_gfn + p - sl0;

		if (!(hinted[p / 64] & (1ull << (p % 64))))
			continue;
		if (nh && hint[nh - 1].gfn + hint[nh - 1].npages == gfn)
			hint[nh - 1].npages++;
		else
			hint[nh++] = (struct pt_gfn_range){ gfn, 1 };
	}
	return nh;
}

static int doubt_is(struct pt_uffd *u, uint32_t why, uint32_t detail)
{
	uint32_t d, w = pt_uffd_doubt(u, &d);
	char buf[128];

	if ((w & why) != why || (d & detail) != detail) {
		fprintf(stderr, "  doubt %#x detail %s, wanted why %#x detail %#x\n", w,
			pt_uffd_doubt_str(d, 0, buf, sizeof(buf)), why, detail);
		return -1;
	}
	return 0;
}

/* --- exact written sets ------------------------------------------------------------------- */

static int exact(struct ucase *t)
{
	enum uc_kind kind = t->o.kind;
	uint64_t pages[1040];

	if (kind == UC_THP) {
		int64_t kb = uc_cmd(&t->c, UC_THP_KB, 0, 0);

		fprintf(stderr, "  THP backing before arm: %ld kB\n", (long)kb);
		if (kb <= 0)
			return t_skip("no transparent huge pages in the child's memory");
	}
	CHECK(!open_log(&t->c, &t->u));
	CHECK(!doubt_is(t->u, PT_WHY_NO_SYNC, PT_UFFD_NOT_ARMED));
	CHECK(!pt_uffd_arm(t->u));
	CHECK(!pt_uffd_doubt(t->u, NULL));
	/* A rescan right after the arm is empty. */
	CHECK(!written_is(t, NULL, 0));
	pick(pages, 1000, t->o.size / UC_PAGE, 7 + kind);
	CHECK(!uc_write(&t->c, pages, 1000));
	/* The writes of the VMM's own mapping are seen, exactly; a second read (the page
	 * tables were re-protected by the first) still answers them. */
	for (int i = 0; i < 2; i++)
		CHECK(!written_is(t, pages, 1000));
	/* The next epoch starts empty and sees only its own writes. */
	CHECK(!pt_uffd_arm(t->u));
	CHECK(!written_is(t, NULL, 0));
	pick(pages, 1040, t->o.size / UC_PAGE, 99 + kind);
	CHECK(!uc_write(&t->c, pages + 1000, 40));
	CHECK(!written_is(t, pages + 1000, 40));
	CHECK(!pt_uffd_doubt(t->u, NULL));
	fprintf(stderr, "  stats: %lu ioctls, last read %.2f ms, last arm %.2f ms\n",
		(unsigned long)pt_uffd_stats(t->u)->ioctls, pt_uffd_stats(t->u)->last_read_ns / 1e6,
		pt_uffd_stats(t->u)->last_arm_ns / 1e6);
	return 0;
}

/* 64 MiB of child memory of each kind; opened by exact() after its THP check. */
#define EXACT_OPTS(k, pop) ((struct uc_opts){ .kind = (k), .size = 64 << 20, .populate = (pop) })

static int exact_anon(void)
{
	return with_vmm(EXACT_OPTS(UC_ANON, true), false, exact);
}

static int exact_anon_unpopulated(void)
{
	return with_vmm(EXACT_OPTS(UC_ANON, false), false, exact);
}

static int exact_thp(void)
{
	return with_vmm(EXACT_OPTS(UC_THP, true), false, exact);
}

static int exact_shmem(void)
{
	return with_vmm(EXACT_OPTS(UC_SHMEM, true), false, exact);
}

/* 16 MiB of populated anonymous memory, the log opened: what most cases start from. */
#define SMALL_OPTS ((struct uc_opts){ .kind = UC_ANON, .size = 16 << 20, .populate = true })

/* Only the ranges asked for are read; a range outside the slots is refused whole. */
static int read_ranges_body(struct ucase *t)
{
	uint64_t pages[3] = { 10, 11, 3000 }, bits[64] = { 0 };
	struct pt_gfn_range only10 = { 10, 1 }, bad[2] = { { 0, 1 }, { 1ull << 40, 1 } };

	CHECK(!pt_uffd_arm(t->u));
	CHECK(!uc_write(&t->c, pages, 3));
	CHECK(!pt_uffd_read(t->u, &only10, 1, bits) && bits[0] == 1ull << 10);
	CHECK(pt_uffd_read(t->u, bad, 2, bits) == -ENOENT && bits[0] == 1ull << 10);
	return 0;
}

static int read_ranges(void)
{
	return with_vmm(SMALL_OPTS, true, read_ranges_body);
}

/* A page the VMM discarded (a free page acted on) and the guest writes again is seen. */
static int dontneed_rewritten_body(struct ucase *t)
{
	uint64_t p = 777;

	CHECK(!pt_uffd_arm(t->u));
	CHECK(!uc_cmd(&t->c, UC_DONTNEED, p, 1));
	CHECK(!pt_uffd_arm(t->u));
	CHECK(!written_is(t, NULL, 0));
	CHECK(!uc_write(&t->c, &p, 1));
	CHECK(!written_is(t, &p, 1));
	/* Discarded within the epoch, after being written: still written. */
	p = 778;
	CHECK(!pt_uffd_arm(t->u));
	CHECK(!uc_write(&t->c, &p, 1));
	CHECK(!uc_cmd(&t->c, UC_DONTNEED, p, 1));
	CHECK(!read_all(t) && (t->bits[p / 64] & (1ull << (p % 64))));
	CHECK(!pt_uffd_doubt(t->u, NULL));
	return 0;
}

static int dontneed_rewritten(void)
{
	return with_vmm(SMALL_OPTS, true, dontneed_rewritten_body);
}

/* --- failure modes: doubt, never a false "unwritten" --------------------------------------- */

static int unregistered_body(struct ucase *t)
{
	CHECK(!pt_uffd_arm(t->u));
	CHECK(!read_all(t));
	CHECK(!uc_cmd(&t->c, UC_UNREGISTER, 0, 0));
	CHECK(read_all(t) == -EPERM);
	CHECK(!doubt_is(t->u, PT_WHY_UFFD_LOST, PT_UFFD_LOST));
	/* A new arm cannot protect what is not registered: the doubt stays. */
	CHECK(pt_uffd_arm(t->u) != 0);
	CHECK(!doubt_is(t->u, PT_WHY_UFFD_LOST | PT_WHY_NO_SYNC, PT_UFFD_LOST));
	return 0;
}

static int unregistered_behind_back(void)
{
	return with_vmm(SMALL_OPTS, true, unregistered_body);
}

static int unmapped_body(struct ucase *t)
{
	struct pt_gfn_range before = { 0, 50 }, hole = { 90, 20 };
	uint64_t bits[1024] = { 0 };

	CHECK(!pt_uffd_arm(t->u));
	CHECK(!uc_cmd(&t->c, UC_MUNMAP, 100, 4));
	/* A range clear of the hole reads fine; one over it gives doubt. */
	CHECK(!pt_uffd_read(t->u, &before, 1, bits));
	CHECK(!pt_uffd_doubt(t->u, NULL));
	CHECK(pt_uffd_read(t->u, &hole, 1, bits) == -EFAULT);
	CHECK(!doubt_is(t->u, PT_WHY_UNKNOWN_MEM, PT_UFFD_UNMAPPED));
	/* An arm skips the hole, but the next read over it sees it again. */
	CHECK(!pt_uffd_arm(t->u));
	CHECK(pt_uffd_read(t->u, &hole, 1, bits) == -EFAULT);
	CHECK(!doubt_is(t->u, PT_WHY_UNKNOWN_MEM, PT_UFFD_UNMAPPED));
	/* Memory mapped again there, not registered: the uffd lost it. */
	CHECK(!uc_cmd(&t->c, UC_REMAP, 100, 4));
	CHECK(pt_uffd_arm(t->u) != 0);
	CHECK(pt_uffd_read(t->u, &hole, 1, bits) == -EPERM);
	CHECK(!doubt_is(t->u, PT_WHY_UFFD_LOST, PT_UFFD_LOST));
	return 0;
}

static int unmapped_memory(void)
{
	return with_vmm(SMALL_OPTS, true, unmapped_body);
}

/* An exiting VMM: its address space goes, the log says so. */
static int vmm_exits_body(struct ucase *t)
{
	CHECK(!pt_uffd_arm(t->u));
	uc_stop(&t->c, true);
	CHECK(read_all(t) != 0);
	CHECK(pt_uffd_doubt(t->u, NULL) != 0);
	return 0;
}

static int vmm_exits(void)
{
	return with_vmm(SMALL_OPTS, true, vmm_exits_body);
}

static int try_open(struct uc *c, int uffd, int pm, uint32_t pid, const struct pt_uffd_slot *s,
		    unsigned n, int want)
{
	struct pt_uffd *u = NULL;
	char err[256] = "";
	int rc = pt_uffd_open(&u, uffd, pm, pid, s, n, err, sizeof(err));

	pt_uffd_close(u);
	if (rc != want) {
		fprintf(stderr, "  open gave %d (%s), wanted %d\n", rc, err, want);
		return -1;
	}
	fprintf(stderr, "  refused as expected: %s\n", err);
	return 0;
}

static int wrong_fds(void)
{
	struct uc_opts o = { .kind = UC_ANON, .size = 16 << 20, .populate = true };
	int efd = eventfd(0, EFD_CLOEXEC), own_pm = open("/proc/self/pagemap", O_RDONLY);
	int own_uffd = syscall(SYS_userfaultfd, O_CLOEXEC);
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_WP_ASYNC };
	struct pt_uffd_slot s[2], bad;
	char path[64];
	int status = -1, rc = -1;
	struct uc c = UC_NONE;

	if (efd < 0 || own_pm < 0 || own_uffd < 0 || ioctl(own_uffd, UFFDIO_API, &api) ||
	    uc_start(&c, &o))
		goto out;
	two_slots(&c, s);
	snprintf(path, sizeof(path), "/proc/%d/status", c.pid);
	status = open(path, O_RDONLY);
	if (try_open(&c, efd, c.pm, c.pid, s, 2, -EBADF) ||
	    try_open(&c, c.uffd, efd, c.pid, s, 2, -EBADF) ||
	    try_open(&c, c.uffd, status, c.pid, s, 2, -EBADF) ||
	    try_open(&c, c.uffd, own_pm, c.pid, s, 2, -EPERM) ||
	    try_open(&c, c.uffd, c.pm, getpid(), s, 2, -EPERM) ||
	    try_open(&c, own_uffd, c.pm, c.pid, s, 2, -ENOENT))
		goto out;
	bad = s[0];
	bad.hva += 100;
	if (try_open(&c, c.uffd, c.pm, c.pid, &bad, 1, -EINVAL) ||
	    try_open(&c, c.uffd, c.pm, c.pid, (struct pt_uffd_slot[]){ s[0], s[0] }, 2, -EINVAL))
		goto out;
	/* A slot with a hole in its memory. */
	if (uc_cmd(&c, UC_MUNMAP, 5, 1) || try_open(&c, c.uffd, c.pm, c.pid, s, 2, -EFAULT))
		goto out;
	rc = 0;
out:
	uc_stop(&c, false);
	close(efd);
	close(own_pm);
	close(own_uffd);
	if (status >= 0)
		close(status);
	return rc;
}

/* The VMM registered nothing, or without async WP: refused, the memory is not trackable. */
static int not_registered(void)
{
	struct uc_opts none = { .kind = UC_ANON, .size = 16 << 20, .no_register = true };
	struct uc_opts sync = { .kind = UC_ANON,
				.size = 16 << 20,
				.features = UFFD_FEATURE_WP_UNPOPULATED };
	struct pt_uffd_slot s[2];
	struct uc c = UC_NONE;
	int rc;

	if (uc_start(&c, &none))
		return -1;
	rc = try_open(&c, c.uffd, c.pm, c.pid, s, two_slots(&c, s), -ENOENT);
	uc_stop(&c, false);
	if (rc || uc_start(&c, &sync))
		return -1;
	rc = try_open(&c, c.uffd, c.pm, c.pid, s, two_slots(&c, s), -ENOENT);
	uc_stop(&c, false);
	return rc;
}

/* --- the race: a writer thread in the VMM while the service arms and scans ---------------- */

struct race {
	uint64_t rounds, checked, free_total, hinted;
};

/*
 * One round: arm while the writer runs, read the hinted pages, and check every write the
 * writer finished after the arm returned and before the read began: it must be in the read.
 */
static int race_round(struct uc *c, struct pt_uffd *u, const struct pt_gfn_range *hint, size_t nh,
		      const uint64_t *hinted, struct race *st)
{
	uint64_t words = (c->size / UC_PAGE + 63) / 64, *bits = calloc(words, 8);
	uint64_t t_arm, t_read, n0, n1;
	int rc = -1;

	if (!bits || pt_uffd_arm(u))
		goto out;
	t_arm = uc_now();
	n0 = __atomic_load_n(&c->sh->n, __ATOMIC_ACQUIRE);
	usleep(2000 + st->rounds % 7 * 1000);
	t_read = uc_now();
	if (pt_uffd_read(u, hint, nh, bits) || pt_uffd_doubt(u, NULL))
		goto out;
	n1 = __atomic_load_n(&c->sh->n, __ATOMIC_ACQUIRE);
	for (uint64_t w = 0; w < words; w++)
		st->free_total += __builtin_popcountll(hinted[w] & ~bits[w]);
	/* Entries are appended in time order; those before n0 may straddle the arm. */
	for (uint64_t i = n0 ? n0 - 1 : 0; i < n1; i++) {
		const struct uc_wr *e = &c->sh->log[i];
		uint64_t p = e->page;

		if (e->t0 < t_arm || e->t1 > t_read || !(hinted[p / 64] & (1ull << (p % 64))))
			continue;
		st->checked++;
		if (!(bits[p / 64] & (1ull << (p % 64)))) {
			fprintf(stderr,
				"  FALSE FREE: page %lu written (seq %lu) %lu ns after the "
				"arm, %lu ns before the read; round %lu\n",
				(unsigned long)p, (unsigned long)i, (unsigned long)(e->t0 - t_arm),
				(unsigned long)(t_read - e->t1), (unsigned long)st->rounds);
			goto out;
		}
	}
	st->rounds++;
	rc = 0;
out:
	free(bits);
	return rc;
}

static int race_100k(void)
{
	struct uc_opts o = { .kind = UC_ANON, .size = 1 * GIB };
	uint64_t npages = o.size / UC_PAGE, *pages = malloc(100000 * 8), x = 12345;
	uint64_t *hinted = calloc((npages + 63) / 64, 8), t_end;
	struct pt_gfn_range *hint = malloc(100000 * sizeof(*hint));
	struct pt_uffd *u = NULL;
	struct race st = { 0 };
	size_t nh = 0;
	struct uc c = UC_NONE;
	int rc = -1, failed = 0;

	if (!pages || !hinted || !hint || uc_start(&c, &o) || open_log(&c, &u))
		goto out;
	/* 100,000 random pages hinted, as ranges in guest-physical order. */
	pick(pages, 100000, npages, rnd(&x));
	nh = hint_ranges(pages, 100000, npages, npages / 2, SLOT1_GPA / UC_PAGE, hinted, hint);
	c.sh->seed = rnd(&x);
	c.sh->usleep_every = 4096; /* leave the machine to the others now and then */
	if (uc_cmd(&c, UC_WRITER_START, 0, 0))
		goto out;
	t_end = uc_now() + t_time_scale() * 10ull * 1000000000;
	while ((st.rounds < 30 || st.checked < 20000) && uc_now() < t_end &&
	       __atomic_load_n(&c.sh->n, __ATOMIC_ACQUIRE) < UC_LOG_MAX)
		if ((failed = race_round(&c, u, hint, nh, hinted, &st)))
			break;
	uc_cmd(&c, UC_WRITER_STOP, 0, 0);
	fprintf(stderr,
		"  %lu rounds, %lu writes to hinted pages after arm checked, %lu writes "
		"in all, %lu free candidates\n",
		(unsigned long)st.rounds, (unsigned long)st.checked, (unsigned long)c.sh->n,
		(unsigned long)st.free_total);
	if (failed)
		fprintf(stderr, "  round %lu failed\n", (unsigned long)st.rounds);
	else if (st.rounds < 10 || st.checked < 1000)
		fprintf(stderr, "  too little happened\n");
	else
		rc = 0;
out:
	pt_uffd_close(u);
	uc_stop(&c, false);
	free(pages);
	free(hinted);
	free(hint);
	return rc;
}

/* --- 64 GiB sparse: cost --------------------------------------------------------------------- */

static int sparse_64g_body(struct ucase *t)
{
	uint64_t npages = t->o.size / UC_PAGE, n = npages / 1000, t0, t_open;

	t->pages = malloc(n * 8);
	CHECK(t->pages);
	t0 = uc_now();
	CHECK(!open_log(&t->c, &t->u));
	t_open = uc_now() - t0;
	CHECK(!pt_uffd_arm(t->u));
	fprintf(stderr, "  64 GiB sparse: open (validation scan) %.1f ms, first arm %.1f ms\n",
		t_open / 1e6, pt_uffd_stats(t->u)->last_arm_ns / 1e6);
	pick(t->pages, n, npages, 4242);
	for (uint64_t i = 0; i < n; i += 4096)
		CHECK(!uc_write(&t->c, t->pages + i, n - i < 4096 ? n - i : 4096));
	CHECK(!written_is(t, t->pages, n));
	fprintf(stderr, "  64 GiB, %lu pages written (0.1%%): verdict scan %.1f ms (%lu ioctls)\n",
		(unsigned long)n, pt_uffd_stats(t->u)->last_read_ns / 1e6,
		(unsigned long)pt_uffd_stats(t->u)->ioctls);
	CHECK(!pt_uffd_arm(t->u));
	CHECK(!written_is(t, NULL, 0));
	fprintf(stderr, "  64 GiB: re-arm %.1f ms, scan with nothing written %.1f ms\n",
		pt_uffd_stats(t->u)->last_arm_ns / 1e6, pt_uffd_stats(t->u)->last_read_ns / 1e6);
	return 0;
}

/* The case opens the log itself: its validation scan is timed. */
static int sparse_64g(void)
{
	return with_vmm((struct uc_opts){ .kind = UC_ANON, .size = 64 * GIB }, false,
			sparse_64g_body);
}

/* --- the BPF log behind the same interface --------------------------------------------------- */

static int bpf_adapter(void)
{
	struct pt_loader_opts lo = { .tdp = -1, .no_pin = true, .no_attach = true, .log_mb = 1 };
	struct pt_slot_cfg s[2] = { { 0, 1 << 20, 1, true }, { 1ull << 32, 1 << 20, 2, true } };
	struct pt_gfn_range r[2] = { { 0, 256 }, { (1ull << 32) / 4096 + 10, 2 } };
	struct pt_tracker *t = NULL;
	struct pt_wlog *l = NULL;
	uint64_t bits[8] = { 0 }, prev[8] = { 0 };
	uint32_t vm;
	bool existed;
	int rc = -1;

	T_REQUIRE(t_need_bpf());
	if (pt_tracker_open(&t, &lo))
		return t_skip("BPF programs do not load here");
	if (pt_vm_track(t, getpid(), s, 2, 0, &vm, &existed) || pt_wlog_bpf_new(&l, t, vm))
		goto out;
	pt_vm_mark_written(t, vm, 3, 2);	 /* gfn 3, 4 */
	pt_vm_mark_written(t, vm, 256 + 11, 1);	 /* second slot, gfn base + 11 */
	pt_vm_mark_written(t, vm, 256 + 100, 1); /* not asked for */
	if (pt_wlog_read(l, r, 2, bits) || bits[0] != 0x18 || bits[4] != 1ull << 11 || bits[5])
		goto out;
	if (pt_wlog_doubt(l, NULL, 0))
		goto out;
	memset(bits, 0, sizeof(bits));
	r[1].gfn = 1ull << 30;
	if (pt_wlog_read(l, r, 2, bits) != -ENOENT || bits[0])
		goto out;
	r[1].gfn = (1ull << 32) / 4096;
	/* The arm hands over the ending epoch's pages, all of them, as it clears them. */
	if (pt_wlog_arm(l, prev) || prev[0] != 0x18 || prev[4] != 1ull << 11 ||
	    prev[5] != 1ull << 36 || pt_wlog_pages(l) != 512 || pt_wlog_read(l, r, 2, bits) ||
	    bits[0] || bits[4])
		goto out;
	pt_vm_taint(t, vm, PT_TAINT_USER);
	if (pt_wlog_doubt(l, NULL, 0) != PT_WHY_TAINTED)
		goto out;
	rc = 0;
out:
	pt_wlog_destroy(l);
	pt_tracker_close(t);
	return rc;
}

/* The uffd log through the same interface. */
static int uffd_wlog_iface_body(struct ucase *t)
{
	struct pt_gfn_range r = { 0, 64 };
	uint64_t p = 5, bits[1] = { 0 };
	struct pt_wlog *l = pt_uffd_wlog(t->u);
	char why[128];

	CHECK(pt_wlog_doubt(l, why, sizeof(why)) == PT_WHY_NO_SYNC && !strcmp(why, "not-armed"));
	CHECK(!pt_wlog_arm(l, NULL));
	CHECK(!uc_write(&t->c, &p, 1));
	CHECK(!pt_wlog_read(l, &r, 1, bits) && bits[0] == 32);
	CHECK(!pt_wlog_doubt(l, why, sizeof(why)));
	CHECK(!strcmp(l->ops->name, "uffd"));
	pt_wlog_destroy(l);
	t->u = NULL; /* destroyed with its wlog */
	return 0;
}

static int uffd_wlog_iface(void)
{
	return with_vmm(SMALL_OPTS, true, uffd_wlog_iface_body);
}

/* --- real KVM guests with dirty logging off ------------------------------------------------ */

struct kvm_uffd {
	struct minivm *vm;
	struct minivm_opts o;
	struct pt_uffd *u;
};

/* A minivm with no dirty logging, its data slots registered with an async-WP uffd; this
 * process is the VMM and hands its own fds to the log, as a device would. */
static int kvm_setup_size(struct kvm_uffd *k, bool thp, uint64_t slot1)
{
	struct uffdio_api api = { .api = UFFD_API,
				  .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED };
	struct pt_uffd_slot s[2];
	int uffd, pm;
	char err[256];

	T_REQUIRE(t_need_kvm());
	if (minivm_supported(MINIVM_DIRTY_NONE))
		return t_skip("minivm cannot run here");
	memset(k, 0, sizeof(*k));
	k->o = (struct minivm_opts){ .dirty = MINIVM_DIRTY_NONE, .nslots = 2 };
	k->o.slots[0] = (struct minivm_slot){ .gpa = 0, .size = 64 << 20, .id = 1 };
	k->o.slots[1] = (struct minivm_slot){ .gpa = 4 * GIB, .size = slot1, .id = 2 };
	if (minivm_create(&k->vm, &k->o))
		return -1;
	uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (uffd < 0 || pm < 0 || ioctl(uffd, UFFDIO_API, &api))
		return -1;
	for (int i = 0; i < 2; i++) {
		void *hva = minivm_hva(k->vm, k->o.slots[i].gpa, k->o.slots[i].size);
		struct uffdio_register reg = { .range = { (uintptr_t)hva, k->o.slots[i].size },
					       .mode = UFFDIO_REGISTER_MODE_WP };

		if (!hva)
			return -1;
		/* THP only backs memory faulted in before the first arm (after it, untouched
		 * memory holds write-protect markers in 4 KiB page tables). */
		if (thp && !madvise(hva, k->o.slots[i].size, MADV_HUGEPAGE))
			memset(hva, 0, k->o.slots[i].size);
		if (ioctl(uffd, UFFDIO_REGISTER, &reg))
			return -1;
		s[i] = (struct pt_uffd_slot){ k->o.slots[i].gpa, k->o.slots[i].size,
					      (uintptr_t)hva };
	}
	if (pt_uffd_open(&k->u, uffd, pm, getpid(), s, 2, err, sizeof(err))) {
		fprintf(stderr, "  %s\n", err);
		return -1;
	}
	return 0;
}

static void kvm_teardown(struct kvm_uffd *k)
{
	pt_uffd_close(k->u);
	minivm_destroy(k->vm);
}

/* Log pages of GPAs: slot 0 first, then slot 1 (the layout pt_uffd_open gives). */
static uint64_t kvm_page(const struct kvm_uffd *k, uint64_t gpa)
{
	return gpa >= 4 * GIB ? k->o.slots[0].size / UC_PAGE + (gpa - 4 * GIB) / UC_PAGE
			      : gpa / UC_PAGE;
}

/* The GPA of log page p: the inverse of kvm_page(). */
static uint64_t kvm_gpa(const struct kvm_uffd *k, uint64_t p)
{
	uint64_t sl0 = k->o.slots[0].size / UC_PAGE;

	return p < sl0 ? p * UC_PAGE : 4 * GIB + (p - sl0) * UC_PAGE;
}

/* A KVM case: its guest and log, and buffers that with_kvm() frees after the case. */
struct kcase {
	struct kvm_uffd k;
	uint64_t *bits; /* kvm_written_is()'s bitmap */
	uint64_t *pages, *gpas;
};

/* Sets up the guest (kvm_setup_size()), runs the case, tears the guest down. */
static int with_kvm(bool thp, uint64_t slot1, int (*body)(struct kcase *t))
{
	struct kcase t = { 0 };
	int setup = kvm_setup_size(&t.k, thp, slot1), rc = setup ? setup : body(&t);

	free(t.bits);
	free(t.pages);
	free(t.gpas);
	if (setup != T_SKIP)
		kvm_teardown(&t.k);
	return rc;
}

/* Reads every page of both slots: the written set must be exactly pages[0..n). */
static int kvm_written_is(struct kcase *t, const uint64_t *pages, size_t n)
{
	struct kvm_uffd *k = &t->k;
	struct pt_gfn_range r[2] = { { 0, k->o.slots[0].size / UC_PAGE },
				     { 4 * GIB / UC_PAGE, k->o.slots[1].size / UC_PAGE } };

	free(t->bits);
	t->bits = calloc((pt_uffd_pages(k->u) + 63) / 64, 8);
	if (!t->bits || pt_uffd_read(k->u, r, 2, t->bits))
		return -1;
	return same_set(t->bits, pages, n, pt_uffd_pages(k->u));
}

static int kvm_guest(struct kcase *t)
{
	struct kvm_uffd *k = &t->k;
	uint64_t gpas[3000], pages[3001], x = 77;

	CHECK(!pt_uffd_arm(k->u));
	CHECK(!kvm_written_is(t, NULL, 0));
	/* Distinct pages written by the guest, and one by the VMM through its own mapping. */
	pick(pages, 3000, pt_uffd_pages(k->u), rnd(&x));
	for (int i = 0; i < 3000; i++)
		gpas[i] = kvm_gpa(k, pages[i]) + 8;
	CHECK(!minivm_guest_write(k->vm, gpas, 3000, 0xfeed));
	*(volatile uint64_t *)minivm_hva(k->vm, 4 * GIB + 123 * UC_PAGE, 8) = 1;
	pages[3000] = kvm_page(k, 4 * GIB + 123 * UC_PAGE);
	CHECK(!kvm_written_is(t, pages, 3001));
	CHECK(!pt_uffd_doubt(k->u, NULL));
	return 0;
}

static int kvm_guest_4k(void)
{
	return with_kvm(false, 256 << 20, kvm_guest);
}

static int kvm_guest_thp(void)
{
	return with_kvm(true, 256 << 20, kvm_guest);
}

/* A guest write to a page discarded with MADV_DONTNEED (a free page acted on) is seen. */
static int kvm_dontneed_body(struct kcase *t)
{
	struct kvm_uffd *k = &t->k;
	uint64_t gpa = 4 * GIB + 50 * UC_PAGE, p = kvm_page(k, gpa);

	CHECK(!minivm_guest_write(k->vm, &gpa, 1, 1));
	CHECK(!pt_uffd_arm(k->u));
	CHECK(!madvise(minivm_hva(k->vm, gpa, UC_PAGE), UC_PAGE, MADV_DONTNEED));
	CHECK(!pt_uffd_arm(k->u));
	CHECK(!minivm_guest_write(k->vm, &gpa, 1, 2));
	CHECK(!kvm_written_is(t, &p, 1));
	return 0;
}

static int kvm_dontneed(void)
{
	return with_kvm(false, 256 << 20, kvm_dontneed_body);
}

/* A 64 GiB sparse guest (lazily backed) writing 0.1 % of its pages: exact, and the costs. */
static int kvm_sparse_64g_body(struct kcase *t)
{
	struct kvm_uffd *k = &t->k;
	uint64_t n = pt_uffd_pages(k->u) / 1000;

	t->pages = malloc(n * 8);
	t->gpas = malloc(n * 8);
	CHECK(t->pages && t->gpas);
	CHECK(!pt_uffd_arm(k->u));
	fprintf(stderr, "  first arm %.1f ms\n", pt_uffd_stats(k->u)->last_arm_ns / 1e6);
	pick(t->pages, n, pt_uffd_pages(k->u), 4242);
	for (uint64_t i = 0; i < n; i++)
		t->gpas[i] = kvm_gpa(k, t->pages[i]);
	CHECK(!minivm_guest_write(k->vm, t->gpas, n, 1));
	CHECK(!kvm_written_is(t, t->pages, n));
	CHECK(!pt_uffd_doubt(k->u, NULL));
	fprintf(stderr, "  %lu guest-written pages: verdict %.1f ms\n", (unsigned long)n,
		pt_uffd_stats(k->u)->last_read_ns / 1e6);
	CHECK(!pt_uffd_arm(k->u));
	fprintf(stderr, "  re-arm %.1f ms\n", pt_uffd_stats(k->u)->last_arm_ns / 1e6);
	return 0;
}

static int kvm_sparse_64g(void)
{
	return with_kvm(false, 64 * GIB, kvm_sparse_64g_body);
}

/*
 * The race on a real guest: a thread drives the guest, which writes random pages in batches
 * (each batch stamped before and after), while this thread arms and reads 100,000 hinted
 * pages. Every page of a batch that ran entirely between the arm and the read must be seen.
 */
struct kvm_race {
	struct kvm_uffd *k;
	volatile int stop;
	uint64_t n, seed;
	struct {
		uint64_t gpa[64], t0, t1;
	} * log;
};

#define KVM_RACE_LOG 65536

static void *kvm_race_writer(void *arg)
{
	struct kvm_race *r = arg;
	uint64_t x = r->seed | 1;

	while (!r->stop && r->n < KVM_RACE_LOG) {
		typeof(&r->log[0]) e = &r->log[r->n];

		for (int i = 0; i < 64; i++)
			e->gpa[i] = kvm_gpa(r->k, rnd(&x) % pt_uffd_pages(r->k->u));
		e->t0 = uc_now();
		if (minivm_guest_write(r->k->vm, e->gpa, 64, r->n))
			break;
		e->t1 = uc_now();
		__atomic_store_n(&r->n, r->n + 1, __ATOMIC_RELEASE);
	}
	return NULL;
}

static int kvm_race_100k(void)
{
	uint64_t words, *hinted = NULL, *bits = NULL, *pages = NULL, x = 99, checked = 0;
	struct pt_gfn_range *hint = NULL;
	struct kvm_race r = { 0 };
	size_t nh = 0, np;
	struct kvm_uffd k;
	/* 64 + 512 MiB: room for 100,000 distinct hinted pages (the other cases' 320 MiB has
	 * 81,920) */
	int rc = kvm_setup_size(&k, false, 512 << 20), rounds = 0, false_free = 0;
	pthread_t th;

	if (rc)
		goto out;
	rc = -1;
	np = pt_uffd_pages(k.u);
	words = (np + 63) / 64;
	hinted = calloc(words, 8);
	bits = calloc(words, 8);
	pages = malloc(100000 * 8);
	hint = malloc(100000 * sizeof(*hint));
	r.log = calloc(KVM_RACE_LOG, sizeof(*r.log));
	if (!hinted || !bits || !pages || !hint || !r.log)
		goto out;
	if (pick(pages, 100000, np, rnd(&x)) != 100000)
		goto out;
	nh = hint_ranges(pages, 100000, np, k.o.slots[0].size / UC_PAGE, 4 * GIB / UC_PAGE, hinted,
			 hint);
	r.k = &k;
	r.seed = rnd(&x);
	if (pthread_create(&th, NULL, kvm_race_writer, &r))
		goto out;
	/* Until both minima are reached (or the bound), stopping at the first false free. */
	for (uint64_t t_end = uc_now() + t_time_scale() * 10ull * 1000000000;
	     (rounds < 20 || checked < 1000) && !false_free && uc_now() < t_end; rounds++) {
		uint64_t t_arm, t_read, n0, n1;

		if (pt_uffd_arm(k.u))
			break;
		t_arm = uc_now();
		n0 = __atomic_load_n(&r.n, __ATOMIC_ACQUIRE);
		usleep(20000);
		t_read = uc_now();
		memset(bits, 0, words * 8);
		if (pt_uffd_read(k.u, hint, nh, bits) || pt_uffd_doubt(k.u, NULL))
			break;
		n1 = __atomic_load_n(&r.n, __ATOMIC_ACQUIRE);
		for (uint64_t i = n0; i < n1; i++) {
			if (r.log[i].t0 < t_arm || r.log[i].t1 > t_read)
				continue;
			for (int j = 0; j < 64; j++) {
				uint64_t p = kvm_page(&k, r.log[i].gpa[j]);

				if (!(hinted[p / 64] & (1ull << (p % 64))))
					continue;
				checked++;
				if (!(bits[p / 64] & (1ull << (p % 64)))) {
					fprintf(stderr, "  FALSE FREE: gpa %#lx, round %d\n",
						(unsigned long)r.log[i].gpa[j], rounds);
					false_free++;
				}
			}
		}
	}
	r.stop = 1;
	pthread_join(th, NULL);
	fprintf(stderr, "  %d rounds, %lu guest writes to hinted pages checked\n", rounds,
		(unsigned long)checked);
	rc = !false_free && rounds >= 20 && checked >= 1000 ? 0 : -1;
out:
	free(hinted);
	free(bits);
	free(pages);
	free(hint);
	free(r.log);
	if (rc != T_SKIP)
		kvm_teardown(&k);
	return rc;
}

T_MAIN(T_CASE(exact_anon), T_CASE(exact_anon_unpopulated), T_CASE(exact_thp), T_CASE(exact_shmem),
       T_CASE(read_ranges), T_CASE(dontneed_rewritten), T_CASE(unregistered_behind_back),
       T_CASE(unmapped_memory), T_CASE(vmm_exits), T_CASE(wrong_fds), T_CASE(not_registered),
       T_CASE(race_100k), T_CASE(sparse_64g), T_CASE(bpf_adapter), T_CASE(uffd_wlog_iface),
       T_CASE(kvm_guest_4k), T_CASE(kvm_guest_thp), T_CASE(kvm_dontneed), T_CASE(kvm_race_100k),
       T_CASE(kvm_sparse_64g))
