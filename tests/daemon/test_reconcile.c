// SPDX-License-Identifier: GPL-2.0
/*
 * Reconciliation per command ID, proven on real KVM guests (dirty-ring mode). A private
 * pagetrackd runs for the whole binary; each case forks a child that is the VMM: it runs a
 * minivm guest, registers it over the socket with the client library, and plays the balloon
 * device. KVM's own dirty ring is the oracle: a page reported free that KVM saw written
 * since the sync is data loss, and fails the case.
 */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <linux/kvm.h>

#include "t.h"
#include "svc.h"
#include "guest.h"

#define DATA_GPA   (1ull << 30)
#define DATA_PAGES 16384 /* 64 MiB */
#define HIGH_GPA   (64ull << 30)
#define HIGH_PAGES 4096
#define NPAGES	   (DATA_PAGES + HIGH_PAGES)
#define SCRATCH	   (DATA_GPA) /* never hinted: lets a sync always have something to reset */

struct env {
	struct minivm *m;
	struct pt_client *c;
	uint8_t hinted[NPAGES], written[NPAGES];
	uint64_t hinted_n;
};

static uint64_t page_gpa(uint32_t p)
{
	return p < DATA_PAGES ? DATA_GPA + (uint64_t)p * 4096
			      : HIGH_GPA + (uint64_t)(p - DATA_PAGES) * 4096;
}

static int gpa_page(uint64_t gpa, uint32_t *p)
{
	if (gpa >= DATA_GPA && gpa < DATA_GPA + DATA_PAGES * 4096ull)
		*p = (gpa - DATA_GPA) / 4096;
	else if (gpa >= HIGH_GPA && gpa < HIGH_GPA + HIGH_PAGES * 4096ull)
		*p = DATA_PAGES + (gpa - HIGH_GPA) / 4096;
	else
		return -1;
	return 0;
}

/* Every case: a KVM guest with a dirty ring, and this binary's service (svc.h), which must
 * start. */
static int need_guest(void)
{
	T_REQUIRE(need_ring_guest());
	svc_must_start = true;
	return need_service();
}

/* Registers all data slots, or all but the high one (to provoke an unknown-slot taint). */
static int env_setup(struct env *e, enum pt_dirty_mode mode, bool omit_high)
{
	struct minivm_opts o = { .dirty = MINIVM_DIRTY_RING, .nslots = 2, .ring_entries = 16384 };
	struct pt_reg_slot rs[3];
	uint32_t handle;

	memset(e, 0, sizeof(*e));
	o.slots[0] = (struct minivm_slot){ DATA_GPA, DATA_PAGES * 4096ull, 1 };
	o.slots[1] = (struct minivm_slot){ HIGH_GPA, HIGH_PAGES * 4096ull, 3 };
	if (minivm_create(&e->m, &o))
		return -1;
	rs[0] = (struct pt_reg_slot){ DATA_GPA, DATA_PAGES * 4096ull, 1, PT_REG_SLOT_LOGGED };
	minivm_system_range(e->m, &rs[1].gpa, &rs[1].size);
	rs[1].id = 0;
	rs[1].flags = PT_REG_SLOT_LOGGED;
	rs[2] = (struct pt_reg_slot){ HIGH_GPA, HIGH_PAGES * 4096ull, 3, PT_REG_SLOT_LOGGED };
	e->c = pt_client_connect(svc.socket);
	if (!e->c)
		return -1;
	return pt_client_register(e->c, 0, mode, rs, omit_high ? 2 : 3, &handle);
}

/* The VMM's dirty-log sync: harvest everything, then a reset KVM always performs. */
static int env_sync(struct env *e)
{
	return minivm_sync(e->m) ? -1 : 0;
}

/* Arm the next command ID, then sync: arm before protect. Resets the oracle. */
static int env_arm(struct env *e, uint32_t cmd)
{
	int err = pt_client_arm(e->c, cmd);

	if (err)
		return err;
	memset(e->written, 0, sizeof(e->written));
	memset(e->hinted, 0, sizeof(e->hinted));
	e->hinted_n = 0;
	return env_sync(e);
}

/* Guest writes pages; the oracle is what KVM's ring then reports (harvested right away). */
static int env_write(struct env *e, const uint32_t *pages, size_t n)
{
	uint64_t *gpas = malloc(n * 8 + 8), *g;
	size_t ng;
	uint32_t p;
	int err;

	if (!gpas)
		return -1;
	for (size_t i = 0; i < n; i++)
		gpas[i] = page_gpa(pages[i]) + (random() % 512) * 8;
	err = minivm_guest_write(e->m, gpas, n, random());
	free(gpas);
	if (err || minivm_harvest(e->m, &g, &ng))
		return -1;
	for (size_t i = 0; i < ng; i++)
		if (!gpa_page(g[i] << 12, &p))
			e->written[p] = 1;
	free(g);
	return 0;
}

static int env_hint(struct env *e, uint32_t cmd, const uint32_t *pages, size_t n)
{
	struct pt_range *r = malloc(n * sizeof(*r) + 1);
	int err;

	for (size_t i = 0; i < n; i++) {
		r[i] = (struct pt_range){ page_gpa(pages[i]), 4096 };
		e->hinted_n += !e->hinted[pages[i]];
		e->hinted[pages[i]] = 1;
	}
	err = pt_client_hint(e->c, cmd, r, n);
	free(r);
	return err;
}

/*
 * Query and check against the oracle: no free page may have been written (data loss), and
 * when the verdict is sure, every hinted unwritten page is free and the counts add up.
 */
static int env_check(struct env *e, uint32_t cmd, struct pt_verdict *out)
{
	struct pt_client_result res;
	static uint8_t seen[NPAGES];
	uint64_t free_n = 0, kw = 0;
	uint32_t p;

	if (pt_client_query(e->c, cmd, PT_Q_HINTS, &res))
		return -1;
	*out = res.v;
	memset(seen, 0, sizeof(seen));
	for (uint32_t i = 0; i < res.v.nranges; i++) {
		for (uint64_t a = res.ranges[i].gpa; a < res.ranges[i].gpa + res.ranges[i].len;
		     a += 4096) {
			CHECKF(!gpa_page(a, &p), "free page %#llx outside the guest",
			       (unsigned long long)a);
			CHECKF(!e->written[p],
			       "DATA LOSS: page %#llx reported free, KVM saw it written",
			       (unsigned long long)a);
			CHECKF(e->hinted[p], "page %#llx free but never hinted",
			       (unsigned long long)a);
			seen[p] = 1;
			free_n++;
		}
	}
	pt_client_result_free(&res);
	for (p = 0; p < NPAGES; p++)
		kw += e->hinted[p] && e->written[p];
	CHECKF(out->hinted == e->hinted_n, "hinted %llu, sent %llu",
	       (unsigned long long)out->hinted, (unsigned long long)e->hinted_n);
	CHECK(free_n == out->free);
	if (!out->unsure_reason) {
		for (p = 0; p < NPAGES; p++)
			CHECKF(!e->hinted[p] || e->written[p] || seen[p],
			       "page %u kept, not written", p);
		CHECK(out->kept_written == kw && out->free + kw == e->hinted_n);
	} else {
		CHECK(out->free == 0 && out->kept_written + out->kept_unsure == e->hinted_n);
	}
	return 0;
}

static void env_free(struct env *e)
{
	pt_client_close(e->c);
	minivm_destroy(e->m);
}

struct env_case {
	int (*fn)(struct env *e);
};

static int env_child(void *arg)
{
	static struct env e;
	const struct env_case *ec = arg;

	return ec->fn(&e);
}

/* Runs fn in a child process (its own VMM pid, svc.h's in_child()); passes if it passes. */
static int in_vmm(int (*fn)(struct env *e))
{
	struct env_case ec = { fn };

	T_REQUIRE(need_guest());
	return in_child(env_child, &ec);
}

static int do_hint_then_write(struct env *e)
{
	uint32_t hint[400], wr[50];
	struct pt_verdict v;

	CHECK(!env_setup(e, PT_DIRTY_RING, false));
	CHECK(!env_arm(e, 7));
	for (int i = 0; i < 400; i++)
		hint[i] = 100 + i * 37 % NPAGES;
	CHECK(!env_hint(e, 7, hint, 400));
	/* The seed-002 race: the guest takes hinted pages back and writes them. */
	for (int i = 0; i < 50; i++)
		wr[i] = hint[i * 8];
	CHECK(!env_write(e, wr, 50));
	CHECK(!pt_client_stop(e->c, 7));
	CHECK(!env_check(e, 7, &v));
	CHECKF(!v.unsure_reason, "unsure %#x", v.unsure_reason);
	CHECK(v.kept_written == 50 && v.free == 350);
	env_free(e);
	return 0;
}

static int hint_then_write_is_kept(void)
{
	return in_vmm(do_hint_then_write);
}

static int do_write_before_arm(struct env *e)
{
	uint32_t pages[64];
	struct pt_verdict v;

	CHECK(!env_setup(e, PT_DIRTY_RING, false));
	for (int i = 0; i < 64; i++)
		pages[i] = 500 + i;
	CHECK(!env_write(e, pages, 64));
	CHECK(!env_arm(e, 2));
	CHECK(!env_hint(e, 2, pages, 64));
	CHECK(!env_check(e, 2, &v));
	CHECK(!v.unsure_reason && v.free == 64);
	env_free(e);
	return 0;
}

static int write_before_arm_does_not_block(void)
{
	return in_vmm(do_write_before_arm);
}

static int do_cmd_rules(struct env *e)
{
	struct pt_client_result res;
	uint32_t pages[4] = { 1, 2, 3, 4 };
	struct pt_verdict v;

	CHECK(!env_setup(e, PT_DIRTY_RING, false));
	CHECK(!env_arm(e, 10));
	/* Pages under an ID that is not current are ignored, and the device is told. */
	CHECK(env_hint(e, 11, pages, 4) < 0);
	CHECK(pt_client_last_error(e->c)->code == PT_E_STALE_CMD);
	e->hinted_n = 0;
	memset(e->hinted, 0, sizeof(e->hinted));
	CHECK(pt_client_query(e->c, 11, PT_Q_HINTS, &res) < 0);
	CHECK(pt_client_last_error(e->c)->code == PT_E_STALE_CMD);
	CHECK(!env_check(e, 10, &v) && v.hinted == 0);
	/* No reuse before the driver's STOP. */
	CHECK(!env_arm(e, 12));
	CHECK(pt_client_arm(e->c, 10) < 0);
	CHECK(pt_client_last_error(e->c)->code == PT_E_CMD_REUSE);
	CHECK(!pt_client_stop(e->c, 12));
	CHECK(!env_arm(e, 10));
	/* Reserved IDs. */
	CHECK(pt_client_arm(e->c, 1) < 0);
	CHECK(pt_client_last_error(e->c)->code == PT_E_RESERVED_CMD);
	env_free(e);
	return 0;
}

static int stale_reuse_reserved_ids(void)
{
	return in_vmm(do_cmd_rules);
}

static int do_no_sync(struct env *e)
{
	uint32_t pages[32];
	struct pt_verdict v;

	CHECK(!env_setup(e, PT_DIRTY_RING, false));
	for (int i = 0; i < 32; i++)
		pages[i] = 40 + i;
	/* ARM without the VMM's sync afterwards: nothing is write-protected for this ID. */
	CHECK(!pt_client_arm(e->c, 3));
	CHECK(!env_hint(e, 3, pages, 32));
	CHECK(!env_check(e, 3, &v));
	CHECK(v.free == 0 && (v.unsure_reason & PT_WHY_NO_SYNC) && v.kept_unsure == 32);
	/* A sync that began before ARM does not count either. */
	CHECK(!env_sync(e));
	CHECK(!pt_client_stop(e->c, 3));
	CHECK(!pt_client_arm(e->c, 4));
	memset(e->hinted, 0, sizeof(e->hinted));
	e->hinted_n = 0;
	CHECK(!env_hint(e, 4, pages, 32));
	CHECK(!env_check(e, 4, &v));
	CHECK(v.free == 0 && (v.unsure_reason & PT_WHY_NO_SYNC));
	env_free(e);
	return 0;
}

static int no_sync_after_arm_keeps_all(void)
{
	return in_vmm(do_no_sync);
}

static int do_done(struct env *e)
{
	uint32_t pages[16];
	struct pt_verdict v;

	CHECK(!env_setup(e, PT_DIRTY_RING, false));
	CHECK(!env_arm(e, 9));
	for (int i = 0; i < 16; i++)
		pages[i] = 900 + i;
	CHECK(!env_hint(e, 9, pages, 16));
	CHECK(!pt_client_done(e->c, 9));
	CHECK(!env_check(e, 9, &v));
	CHECK(v.free == 0 && (v.unsure_reason & PT_WHY_DONE));
	env_free(e);
	return 0;
}

static int done_then_query_keeps_all(void)
{
	return in_vmm(do_done);
}

static int do_untracked(struct env *e)
{
	uint32_t pages[16];
	struct pt_verdict v;

	/* Bitmap mode is not seen by BPF on these machines (the canary says so). */
	CHECK(!env_setup(e, PT_DIRTY_BITMAP, false));
	CHECK(!env_arm(e, 2));
	for (int i = 0; i < 16; i++)
		pages[i] = 77 + i;
	CHECK(!env_hint(e, 2, pages, 16));
	CHECK(!env_check(e, 2, &v));
	CHECK(v.free == 0 && (v.unsure_reason & PT_WHY_UNTRACKED));
	env_free(e);
	return 0;
}

static int untracked_mode_keeps_all(void)
{
	return in_vmm(do_untracked);
}

static int do_tainted(struct env *e)
{
	uint32_t pages[16], high = DATA_PAGES + 5;
	struct pt_verdict v;

	/* The high memslot is not registered: a write there cannot be placed in the log. */
	CHECK(!env_setup(e, PT_DIRTY_RING, true));
	CHECK(!env_arm(e, 2));
	for (int i = 0; i < 16; i++)
		pages[i] = 300 + i;
	CHECK(!env_hint(e, 2, pages, 16));
	CHECK(!env_write(e, &high, 1));
	CHECK(!env_check(e, 2, &v));
	CHECK(v.free == 0 && (v.unsure_reason & PT_WHY_TAINTED) && v.kept_unsure == 16);
	env_free(e);
	return 0;
}

static int tainted_epoch_keeps_all(void)
{
	return in_vmm(do_tainted);
}

static unsigned seed_from_env(void)
{
	const char *s = getenv("PT_SEED");

	return s ? strtoul(s, NULL, 0) : (unsigned)time(NULL) ^ (unsigned)getpid();
}

/* Rounds interleaving guest writes and hints; >= 100,000 hinted pages in all. */
static int do_random(struct env *e)
{
	static uint32_t pages[4096];
	uint64_t total = 0, free_total = 0, kept_total = 0;
	unsigned seed = seed_from_env();
	struct pt_verdict v;

	fprintf(stderr, "  randomized rounds: seed %u (replay with PT_SEED=%u)\n", seed, seed);
	srandom(seed);
	CHECK(!env_setup(e, PT_DIRTY_RING, false));
	for (uint32_t round = 0; total < 100000; round++) {
		uint32_t cmd = 2 + round % 50;

		if (round)
			CHECK(!pt_client_stop(e->c, 2 + (round - 1) % 50));
		CHECK(!env_arm(e, cmd));
		for (int step = 0; step < 6; step++) {
			size_t nh = 200 + random() % 1500, nw = random() % 300;

			for (size_t i = 0; i < nh; i++)
				pages[i] = 1 + random() % (NPAGES - 1);
			CHECK(!env_hint(e, cmd, pages, nh));
			/* Writes favour hinted pages, so the race is exercised hard. */
			for (size_t i = 0; i < nw; i++)
				pages[i] = random() % 2 ? pages[random() % nh]
							: 1 + random() % (NPAGES - 1);
			CHECK(!env_write(e, pages, nw));
		}
		CHECKF(!env_check(e, cmd, &v), "round %u seed %u", round, seed);
		CHECKF(!v.unsure_reason, "round %u unsure %#x", round, v.unsure_reason);
		total += v.hinted;
		free_total += v.free;
		kept_total += v.kept_written;
	}
	fprintf(stderr,
		"  %llu pages hinted, %llu confirmed free, %llu kept (written), 0 false free\n",
		(unsigned long long)total, (unsigned long long)free_total,
		(unsigned long long)kept_total);
	env_free(e);
	return 0;
}

static int randomized_rounds_zero_false_free(void)
{
	return in_vmm(do_random);
}

struct writer {
	struct env *e;
	uint32_t pages[2000];
	int err;
};

static void *writer_thread(void *arg)
{
	struct writer *w = arg;

	for (int i = 0; i < 2000 && !w->err; i += 50)
		w->err = env_write(w->e, w->pages + i, 50);
	return NULL;
}

/* The guest writes while the device streams hints in another thread. */
static int do_concurrent(struct env *e)
{
	static struct writer w;
	uint32_t hint[256];
	struct pt_verdict v;
	pthread_t th;

	CHECK(!env_setup(e, PT_DIRTY_RING, false));
	CHECK(!env_arm(e, 5));
	w.e = e;
	for (int i = 0; i < 2000; i++)
		w.pages[i] = 1 + (i * 7919) % (NPAGES - 1);
	CHECK(!pthread_create(&th, NULL, writer_thread, &w));
	for (int r = 0; r < 40; r++) {
		for (int i = 0; i < 256; i++)
			hint[i] = random() % 3 ? w.pages[random() % 2000]
					       : 1 + random() % (NPAGES - 1);
		/* env_hint touches the hinted oracle only; written belongs to the writer. */
		CHECK(!env_hint(e, 5, hint, 256));
	}
	pthread_join(th, NULL);
	CHECK(!w.err);
	CHECK(!env_check(e, 5, &v));
	CHECK(!v.unsure_reason && v.kept_written > 0);
	env_free(e);
	return 0;
}

static int concurrent_writes_and_hints(void)
{
	return in_vmm(do_concurrent);
}

static int do_reporting(struct env *e)
{
	struct pt_range r[32];
	struct pt_client_result res;
	uint32_t wr[5] = { 2000, 2001, 2100, 2300, 2005 }; /* 2005 was not reported */
	uint64_t pages = 0, freed = 0;

	CHECK(!env_setup(e, PT_DIRTY_RING, false));
	CHECK(!env_arm(e, 2));
	for (int i = 0; i < 32; i++)
		r[i] = (struct pt_range){ page_gpa(2000 + i * 10), 4 * 4096 };
	CHECK(!pt_client_report(e->c, r, 32, &pages));
	CHECK(pages == 128);
	CHECK(!env_write(e, wr, 5));
	CHECK(!pt_client_query(e->c, 0, PT_Q_REPORTED, &res));
	CHECKF(!res.v.unsure_reason && res.v.hinted == 128 && res.v.kept_written == 4,
	       "why %#x hinted %llu written %llu", res.v.unsure_reason,
	       (unsigned long long)res.v.hinted, (unsigned long long)res.v.kept_written);
	for (uint32_t i = 0; i < res.v.nranges; i++)
		freed += res.ranges[i].len / 4096;
	CHECK(freed == 124 && res.v.free == 124);
	pt_client_result_free(&res);
	env_free(e);
	return 0;
}

/*
 * A page reported (or hinted, by a device that publishes its ID too early) between ARM and
 * the VMM's sync may still be writable: the guest could write it without a fault, the sync
 * would then re-protect it, and the log would never see the write. (This PVM host pushes a
 * ring entry on every emulated write, so the race cannot be shown here; hosts with hardware
 * dirty tracking do not.) Such pages are kept for the epoch even if never written: that is
 * what is checked.
 */
static int do_before_sync(struct env *e)
{
	struct pt_range rep = { page_gpa(2500), 4096 }, hint = { page_gpa(2600), 4096 };
	struct pt_range later = { page_gpa(2700), 4096 };
	struct pt_client_result res;

	CHECK(!env_setup(e, PT_DIRTY_RING, false));
	CHECK(!pt_client_arm(e->c, 2));
	CHECK(!pt_client_report(e->c, &rep, 1, NULL));
	CHECK(!pt_client_hint(e->c, 2, &hint, 1));
	CHECK(!env_sync(e));
	CHECK(!pt_client_report(e->c, &later, 1, NULL)); /* after the sync: may be free */
	CHECK(!pt_client_query(e->c, 0, PT_Q_REPORTED, &res));
	/* Unsure, not written: nothing wrote them. Only they carry the reason. */
	CHECKF(res.v.unsure_reason == PT_WHY_NO_SYNC && res.v.free == 1 && res.v.kept_unsure == 1 &&
		       res.v.kept_written == 0 && res.v.nranges == 1 &&
		       res.ranges[0].gpa == later.gpa,
	       "reported before the sync: free %llu unsure %llu written %llu why %#x",
	       (unsigned long long)res.v.free, (unsigned long long)res.v.kept_unsure,
	       (unsigned long long)res.v.kept_written, res.v.unsure_reason);
	pt_client_result_free(&res);
	CHECK(!pt_client_query(e->c, 2, PT_Q_HINTS, &res));
	CHECK(res.v.unsure_reason == PT_WHY_NO_SYNC && res.v.free == 0 && res.v.kept_unsure == 1 &&
	      res.v.kept_written == 0);
	pt_client_result_free(&res);
	/* At the next ARM the early report leaves the reported set, the later one stays. */
	CHECK(!env_arm(e, 3));
	CHECK(!pt_client_query(e->c, 0, PT_Q_REPORTED, &res));
	CHECK(!res.v.unsure_reason && res.v.hinted == 1 && res.v.free == 1 &&
	      res.ranges[0].gpa == later.gpa);
	pt_client_result_free(&res);
	env_free(e);
	return 0;
}

static int before_sync_reports_and_hints_kept(void)
{
	return in_vmm(do_before_sync);
}

static int reported_page_free_until_written(void)
{
	return in_vmm(do_reporting);
}

static int do_silent_deflate(struct env *e)
{
	struct pt_range in = { page_gpa(4000), 64 * 4096 }, de = { page_gpa(4000), 8 * 4096 };
	uint32_t wr[3] = { 4002, 4020, 4063 }; /* 4002 was deflated (told), the rest not */
	struct pt_client_result res;

	CHECK(!env_setup(e, PT_DIRTY_RING, false));
	CHECK(!env_arm(e, 2));
	CHECK(!pt_client_inflate(e->c, &in, 1, NULL));
	CHECK(!pt_client_deflate(e->c, &de, 1, NULL));
	CHECK(!env_write(e, wr, 3));
	CHECK(!pt_client_query(e->c, 0, PT_Q_RECLAIMED, &res));
	CHECKF(res.v.free == 2 && res.v.nranges == 2, "reclaimed %llu",
	       (unsigned long long)res.v.free);
	CHECK(res.ranges[0].gpa == page_gpa(4020) && res.ranges[1].gpa == page_gpa(4063));
	pt_client_result_free(&res);
	env_free(e);
	return 0;
}

static int silent_deflate_reported(void)
{
	return in_vmm(do_silent_deflate);
}

static int do_write_records(struct env *e)
{
	struct pt_range q = { page_gpa(6000), 100 * 4096 };
	uint32_t wr[3] = { 6001, 6050, 7000 };
	struct pt_client_result res;
	struct pt_wr_caps caps;

	CHECK(!env_setup(e, PT_DIRTY_RING, false));
	CHECK(!pt_client_wr_caps(e->c, &caps) && caps.page_size == 4096 && caps.max_ranges);
	CHECK(!env_arm(e, 2));
	CHECK(!env_write(e, wr, 3));
	CHECK(!pt_client_wr_read(e->c, &q, 1, &res));
	CHECK(res.v.nranges == 2 && res.ranges[0].gpa == page_gpa(6001) &&
	      res.ranges[1].gpa == page_gpa(6050));
	pt_client_result_free(&res);
	/* A second read returns them again: a written page stays writable until the VMM's next
	 * sync, so later writes to it would raise no event; forgetting it would lose them. */
	CHECK(!pt_client_wr_read(e->c, &q, 1, &res));
	CHECK(res.v.nranges == 2 && res.v.kept_written == 2);
	pt_client_result_free(&res);
	/* ARM, then the sync, is the clear. */
	CHECK(!pt_client_stop(e->c, 2) && !env_arm(e, 3));
	CHECK(!pt_client_wr_read(e->c, &q, 1, &res));
	CHECK(res.v.nranges == 0 && !res.v.unsure_reason && res.v.free == 100);
	pt_client_result_free(&res);
	env_free(e);
	return 0;
}

static int write_records_read_cleared_by_arm(void)
{
	return in_vmm(do_write_records);
}

/* The VMM changes the dirty-logging flag of a memslot, as QEMU does around migration. */
static int set_logging(struct env *e, bool on)
{
	struct kvm_userspace_memory_region r = {
		.slot = 3,
		.flags = on ? KVM_MEM_LOG_DIRTY_PAGES : 0,
		.guest_phys_addr = HIGH_GPA,
		.memory_size = HIGH_PAGES * 4096ull,
		.userspace_addr = (uintptr_t)minivm_hva(e->m, HIGH_GPA, HIGH_PAGES * 4096ull),
	};

	return ioctl(minivm_vm_fd(e->m), KVM_SET_USER_MEMORY_REGION, &r) ? -1 : 0;
}

/*
 * A memslot KVM does not dirty-log hides its writes. Switching logging off taints the epoch
 * and keeps every later verdict "keep" until it is back on; switching it on again taints the
 * epoch it happens in (writes before it went unseen); the next epoch is clean.
 */
static int do_logging_toggled(struct env *e)
{
	uint32_t pages[4] = { 10, 11, 12, 13 };
	struct pt_verdict v;

	CHECK(!env_setup(e, PT_DIRTY_RING, false));
	CHECK(!env_arm(e, 2));
	CHECK(!env_hint(e, 2, pages, 4));
	CHECK(!set_logging(e, false));
	CHECK(!env_check(e, 2, &v));
	CHECK(v.free == 0 && (v.unsure_reason & PT_WHY_TAINTED) &&
	      (v.unsure_reason & PT_WHY_UNTRACKED));
	CHECK(!pt_client_stop(e->c, 2));
	CHECK(!env_arm(e, 3)); /* a new epoch, but the slot is still unlogged */
	CHECK(!env_hint(e, 3, pages, 4));
	CHECK(!env_check(e, 3, &v));
	CHECK(v.free == 0 && (v.unsure_reason & PT_WHY_UNTRACKED) &&
	      !(v.unsure_reason & PT_WHY_TAINTED));
	CHECK(!set_logging(e, true));
	CHECK(!env_check(e, 3, &v));
	CHECK(v.free == 0 && v.unsure_reason == PT_WHY_TAINTED);
	CHECK(!pt_client_stop(e->c, 3));
	CHECK(!env_arm(e, 4));
	CHECK(!env_hint(e, 4, pages, 4));
	CHECK(!env_check(e, 4, &v));
	CHECK(!v.unsure_reason && v.free == 4);
	env_free(e);
	return 0;
}

static int memslot_logging_toggled(void)
{
	return in_vmm(do_logging_toggled);
}

/* A slot registered without PT_REG_SLOT_LOGGED: the service may not assume KVM logs it. */
static int do_unlogged_registration(struct env *e)
{
	struct pt_reg_slot rs[2] = { { DATA_GPA, DATA_PAGES * 4096ull, 1, 0 } };
	struct minivm_opts o = { .dirty = MINIVM_DIRTY_RING, .nslots = 1 };
	struct pt_range r = { DATA_GPA + 4096, 4096 };
	struct pt_client_result res;

	memset(e, 0, sizeof(*e));
	o.slots[0] = (struct minivm_slot){ DATA_GPA, DATA_PAGES * 4096ull, 1 };
	CHECK(!minivm_create(&e->m, &o));
	minivm_system_range(e->m, &rs[1].gpa, &rs[1].size);
	rs[1].flags = PT_REG_SLOT_LOGGED;
	e->c = pt_client_connect(svc.socket);
	CHECK(e->c && !pt_client_register(e->c, 0, PT_DIRTY_RING, rs, 2, NULL));
	CHECK(!pt_client_arm(e->c, 2) && !env_sync(e));
	CHECK(!pt_client_hint(e->c, 2, &r, 1));
	CHECK(!pt_client_query(e->c, 2, PT_Q_HINTS, &res));
	CHECKF(res.v.free == 0 && (res.v.unsure_reason & PT_WHY_UNTRACKED), "free %llu why %#x",
	       (unsigned long long)res.v.free, res.v.unsure_reason);
	pt_client_result_free(&res);
	env_free(e);
	return 0;
}

static int unlogged_slot_registration_keeps_all(void)
{
	return in_vmm(do_unlogged_registration);
}

/*
 * The VMM writes guest memory itself (device emulation, DMA into a guest buffer): KVM logs
 * nothing, so only the device's WRITTEN report keeps such a page from being confirmed.
 */
static int do_vmm_written(struct env *e)
{
	uint32_t pages[8] = { 3000, 3001, 3002, 3003, 3004, 3005, 3006, 3007 };
	struct pt_range dma = { page_gpa(3002), 2 * 4096 };
	struct pt_verdict v;
	uint64_t n = 0;
	uint8_t *hva;

	CHECK(!env_setup(e, PT_DIRTY_RING, false));
	CHECK(!env_arm(e, 2));
	CHECK(!env_hint(e, 2, pages, 8));
	hva = minivm_hva(e->m, page_gpa(3002), 2 * 4096);
	CHECK(hva);
	memset(hva, 0x5a, 2 * 4096);		    /* the "device" writes; KVM does not see it */
	CHECK(!env_check(e, 2, &v) && v.free == 8); /* the hole the report closes */
	CHECK(!pt_client_written(e->c, &dma, 1, &n) && n == 2);
	e->written[3002] = e->written[3003] = 1;
	CHECK(!env_check(e, 2, &v));
	CHECK(!v.unsure_reason && v.free == 6 && v.kept_written == 2);
	env_free(e);
	return 0;
}

static int vmm_own_writes_reported_are_kept(void)
{
	return in_vmm(do_vmm_written);
}

T_MAIN(T_CASE(hint_then_write_is_kept), T_CASE(vmm_own_writes_reported_are_kept),
       T_CASE(memslot_logging_toggled), T_CASE(unlogged_slot_registration_keeps_all),
       T_CASE(write_before_arm_does_not_block), T_CASE(stale_reuse_reserved_ids),
       T_CASE(no_sync_after_arm_keeps_all), T_CASE(done_then_query_keeps_all),
       T_CASE(untracked_mode_keeps_all), T_CASE(tainted_epoch_keeps_all),
       T_CASE(randomized_rounds_zero_false_free), T_CASE(concurrent_writes_and_hints),
       T_CASE(before_sync_reports_and_hints_kept), T_CASE(reported_page_free_until_written),
       T_CASE(silent_deflate_reported), T_CASE(write_records_read_cleared_by_arm))
