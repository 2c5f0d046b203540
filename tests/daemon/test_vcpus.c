// SPDX-License-Identifier: GPL-2.0
/*
 * A guest with 4 vCPUs, each with its own dirty ring, raced against the real service: the
 * vCPUs write at once, all the time; a reaper thread harvests the rings on its own schedule
 * (collect, pause, reset), so its resets straddle ARMs; the device's own sync harvests the
 * rings in a different order every epoch, sometimes in two passes; one vCPU stays idle
 * through some whole epochs; rings fill up and exit around ARM. At least 100,000 pages are
 * hinted. Required: 0 false free (a page listed free that a batch started after the sync and
 * finished before the QUERY wrote), no epoch tainted or left unsynced by this healthy VMM,
 * and a free fraction near 1 among the hinted pages no batch touched.
 */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>

#include <pagetrack/client.h>

#include "t.h"
#include "svc.h"
#include "guest.h"

#define NVCPUS	     4
#define DATA_GPA     (1ull << 30)
#define DATA_PAGES   65536 /* 256 MiB */
#define WORDS	     (DATA_PAGES / 64)
#define BATCH	     64
#define HINT_RUN     16
#define HINT_RUNS    256 /* 4096 pages per epoch */
#define MIN_HINTED   100000
#define MIN_EPOCHS   20
#define TIME_LIMIT_S 240

struct race {
	struct minivm *m;
	volatile int stop;
	volatile int idle; /* vCPU that sits out this epoch, -1 for none */
	uint64_t arm_gen, sync_gen;
	pthread_mutex_t lock;	 /* written[] against the ARM that clears it and its snapshot */
	uint64_t written[WORDS]; /* batches begun after the sync and finished */
	uint64_t touched[WORDS]; /* batches that may have written since the ARM */
	struct writer {
		struct race *r;
		unsigned idx;
		uint64_t gpas[BATCH];
		int inflight;
		int err;
		unsigned long batches, full;
	} w[NVCPUS];
};

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void mark(uint64_t *set, const uint64_t *gpas, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		uint64_t p = (gpas[i] - DATA_GPA) >> 12;

		__atomic_fetch_or(&set[p / 64], 1ull << (p % 64), __ATOMIC_SEQ_CST);
	}
}

/* A vCPU thread: random batches, forever; a full ring waits for a harvest. */
static void *writer_main(void *arg)
{
	struct writer *w = arg;
	struct race *r = w->r;
	uint64_t seed = 0x9e3779b97f4a7c15ull * (w->idx + 1);

	while (!r->stop) {
		uint64_t gen = __atomic_load_n(&r->arm_gen, __ATOMIC_SEQ_CST);
		bool synced = __atomic_load_n(&r->sync_gen, __ATOMIC_SEQ_CST) == gen;
		int err;

		if (r->idle == (int)w->idx) {
			usleep(200);
			continue;
		}
		for (unsigned i = 0; i < BATCH; i++)
			w->gpas[i] = DATA_GPA + (rnd(&seed) % DATA_PAGES) * 4096 + 8 * w->idx;
		__atomic_store_n(&w->inflight, 1, __ATOMIC_SEQ_CST);
		mark(r->touched, w->gpas, BATCH);
		err = minivm_vcpu_write(r->m, w->idx, w->gpas, BATCH, gen);
		while (err == -ENOSPC && !r->stop) {
			w->full++;
			usleep(50);
			err = minivm_vcpu_resume(r->m, w->idx);
		}
		__atomic_store_n(&w->inflight, 0, __ATOMIC_SEQ_CST);
		if (err && !r->stop) {
			w->err = err;
			break;
		}
		w->batches++;
		pthread_mutex_lock(&r->lock);
		if (synced && __atomic_load_n(&r->arm_gen, __ATOMIC_SEQ_CST) == gen)
			mark(r->written, w->gpas, BATCH);
		pthread_mutex_unlock(&r->lock);
	}
	return NULL;
}

/* The reaper: collect rings, pause, reset, on its own schedule (QEMU's does the same). */
static void *reaper_main(void *arg)
{
	struct race *r = arg;
	uint64_t seed = 12345;

	while (!r->stop) {
		for (unsigned i = 0; i < NVCPUS; i++) {
			uint64_t *g;
			size_t n;

			if (!minivm_harvest_vcpu(r->m, (i + rnd(&seed)) % NVCPUS, &g, &n))
				free(g);
		}
		usleep(rnd(&seed) % 3000);
		minivm_reset_rings(r->m);
	}
	return NULL;
}

/* Collect the rings in a random order, in one pass or two, resetting after each pass. */
static int device_sync(struct race *r, uint64_t *seed)
{
	unsigned order[NVCPUS] = { 0, 1, 2, 3 }, split = NVCPUS;

	for (unsigned i = NVCPUS - 1; i > 0; i--) {
		unsigned j = rnd(seed) % (i + 1), t = order[i];

		order[i] = order[j];
		order[j] = t;
	}
	if (rnd(seed) % 2)
		split = 1 + rnd(seed) % (NVCPUS - 1);
	for (unsigned i = 0; i < NVCPUS; i++) {
		uint64_t *g;
		size_t n;

		if (minivm_harvest_vcpu(r->m, order[i], &g, &n))
			return -1;
		free(g);
		if (i + 1 == split || i + 1 == NVCPUS) {
			if (minivm_reset_rings(r->m))
				return -1;
			usleep(rnd(seed) % 500);
		}
	}
	return 0;
}

struct tally {
	uint64_t hinted, free, untouched, false_free;
	unsigned epochs, unsure;
};

static int one_epoch(struct race *r, struct pt_client *c, uint32_t id, uint64_t *seed,
		     struct tally *t)
{
	static uint64_t hinted[WORDS], snap[WORDS];
	struct pt_range h[HINT_RUNS];
	struct pt_client_result res;
	uint64_t free_pages = 0;

	r->idle = rnd(seed) % 3 ? -1 : (int)(rnd(seed) % NVCPUS);
	/* ARM: a new generation, then clear what belongs to the old one. */
	pthread_mutex_lock(&r->lock);
	__atomic_add_fetch(&r->arm_gen, 1, __ATOMIC_SEQ_CST);
	memset(r->written, 0, sizeof(r->written));
	memset(r->touched, 0, sizeof(r->touched));
	for (unsigned i = 0; i < NVCPUS; i++)
		if (__atomic_load_n(&r->w[i].inflight, __ATOMIC_SEQ_CST))
			mark(r->touched, r->w[i].gpas, BATCH);
	pthread_mutex_unlock(&r->lock);
	CHECK(!pt_client_arm(c, id));
	CHECK(!device_sync(r, seed));
	__atomic_store_n(&r->sync_gen, r->arm_gen, __ATOMIC_SEQ_CST);
	/* Publish, the guest hints. */
	memset(hinted, 0, sizeof(hinted));
	for (unsigned i = 0; i < HINT_RUNS; i++) {
		uint64_t p = rnd(seed) % (DATA_PAGES / HINT_RUN) * HINT_RUN;

		h[i] = (struct pt_range){ DATA_GPA + p * 4096, HINT_RUN * 4096 };
		for (unsigned k = 0; k < HINT_RUN; k++)
			hinted[(p + k) / 64] |= 1ull << ((p + k) % 64);
	}
	CHECK(!pt_client_hint(c, id, h, HINT_RUNS));
	CHECK(!pt_client_stop(c, id));
	usleep(rnd(seed) % 3000);
	pthread_mutex_lock(&r->lock);
	memcpy(snap, r->written, sizeof(snap));
	pthread_mutex_unlock(&r->lock);
	CHECK(!pt_client_query(c, id, PT_Q_HINTS, &res));
	for (uint32_t i = 0; i < res.v.nranges; i++) {
		for (uint64_t a = res.ranges[i].gpa; a < res.ranges[i].gpa + res.ranges[i].len;
		     a += 4096) {
			uint64_t p = (a - DATA_GPA) >> 12;

			CHECK(a >= DATA_GPA && p < DATA_PAGES && (hinted[p / 64] >> (p % 64) & 1));
			t->false_free += snap[p / 64] >> (p % 64) & 1;
			free_pages++;
		}
	}
	CHECK(free_pages == res.v.free);
	t->epochs++;
	t->hinted += res.v.hinted;
	if (res.v.unsure_reason) {
		fprintf(stderr, "  epoch %u: unsure %#x\n", id, res.v.unsure_reason);
		t->unsure++;
	} else {
		for (unsigned w = 0; w < WORDS; w++)
			t->untouched += __builtin_popcountll(
				hinted[w] & ~__atomic_load_n(&r->touched[w], __ATOMIC_SEQ_CST));
		t->free += res.v.free;
	}
	pt_client_result_free(&res);
	return 0;
}

static int race_child(void *unused)
{
	struct minivm_opts o = {
		.dirty = MINIVM_DIRTY_RING, .nslots = 1, .nvcpus = NVCPUS, .ring_entries = 1024
	};
	static struct race r;
	struct pt_reg_slot rs[2];
	struct tally t = { 0 };
	pthread_t th[NVCPUS], reaper;
	struct timespec t0, now;
	uint64_t seed = 777;
	struct pt_client *c;
	int ret = -1;

	o.slots[0] = (struct minivm_slot){ DATA_GPA, DATA_PAGES * 4096ull, 1 };
	CHECK(!minivm_create(&r.m, &o));
	rs[0] = (struct pt_reg_slot){ DATA_GPA, DATA_PAGES * 4096ull, 1, PT_REG_SLOT_LOGGED };
	minivm_system_range(r.m, &rs[1].gpa, &rs[1].size);
	rs[1].id = 0;
	rs[1].flags = PT_REG_SLOT_LOGGED;
	c = pt_client_connect(svc.socket);
	CHECK(c);
	pt_client_set_timeout(c, 60000);
	CHECK(!pt_client_register(c, 0, PT_DIRTY_RING, rs, 2, NULL));
	CHECKF(!pt_client_coverage(c), "coverage %#llx", (unsigned long long)pt_client_coverage(c));
	pthread_mutex_init(&r.lock, NULL);
	r.idle = -1;
	for (unsigned i = 0; i < NVCPUS; i++) {
		r.w[i] = (struct writer){ .r = &r, .idx = i };
		CHECK(!pthread_create(&th[i], NULL, writer_main, &r.w[i]));
	}
	CHECK(!pthread_create(&reaper, NULL, reaper_main, &r));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (uint32_t id = 2; t.hinted < MIN_HINTED || t.epochs < MIN_EPOCHS; id++) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - t0.tv_sec > TIME_LIMIT_S)
			break; /* the minimum check below fails */
		if (one_epoch(&r, c, id, &seed, &t))
			goto out;
		for (unsigned i = 0; i < NVCPUS; i++)
			if (r.w[i].err)
				goto out;
	}
	ret = 0;
out:
	r.stop = 1;
	for (unsigned i = 0; i < NVCPUS; i++)
		pthread_join(th[i], NULL);
	pthread_join(reaper, NULL);
	printf("  %u epochs, %llu pages hinted, %llu free of %llu untouched, %llu false free, "
	       "%u epochs unsure\n",
	       t.epochs, (unsigned long long)t.hinted, (unsigned long long)t.free,
	       (unsigned long long)t.untouched, (unsigned long long)t.false_free, t.unsure);
	for (unsigned i = 0; i < NVCPUS; i++)
		printf("  vCPU %u: %lu batches, %lu ring-full waits%s\n", i, r.w[i].batches,
		       r.w[i].full, r.w[i].err ? " (failed)" : "");
	CHECK(!ret);
	CHECK(t.false_free == 0);
	CHECKF(t.hinted >= MIN_HINTED && t.epochs >= MIN_EPOCHS, "only %llu pages in %u epochs",
	       (unsigned long long)t.hinted, t.epochs);
	/* A healthy VMM whose syncs end complete: never tainted, never left unsynced. */
	CHECK(t.unsure == 0);
	CHECKF(t.free * 100 >= t.untouched * 99, "free %llu of %llu untouched",
	       (unsigned long long)t.free, (unsigned long long)t.untouched);
	pt_client_close(c);
	minivm_destroy(r.m);
	return 0;
}

/* The VMM is a child (svc.h's in_child()) of this binary's service, which must start. */
static int four_vcpus_race_zero_false_free(void)
{
	T_REQUIRE(need_ring_guest());
	svc_must_start = true;
	T_REQUIRE(need_service());
	return in_child(race_child, NULL);
}

T_MAIN(T_CASE(four_vcpus_race_zero_false_free))
