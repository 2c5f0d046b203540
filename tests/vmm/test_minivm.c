// SPDX-License-Identifier: GPL-2.0
/*
 * minivm: the guest's writes land where asked, and KVM's dirty log (bitmap or ring) reports
 * exactly the written data pages, round after round.
 */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "vmm/minivm.h"
#include "t.h"

#define PAGE  MINIVM_PAGE_SIZE
#define SZ_1M (1ULL << 20)
#define SZ_1G (1ULL << 30)

/* Three data slots: at GPA 0, at an odd non-zero base, and one above 4 GiB. */
static void three_slots(struct minivm_opts *o, enum minivm_dirty dirty)
{
	*o = (struct minivm_opts){ .dirty = dirty, .nslots = 3 };
	o->slots[0] = (struct minivm_slot){ .gpa = 0, .size = 4 * SZ_1M, .id = 1 };
	o->slots[1] =
		(struct minivm_slot){ .gpa = 256 * SZ_1M + 12 * PAGE, .size = 3 * SZ_1M, .id = 2 };
	o->slots[2] =
		(struct minivm_slot){ .gpa = 4 * SZ_1G + 2 * SZ_1M, .size = 8 * SZ_1M, .id = 5 };
}

static int need_mode(enum minivm_dirty mode)
{
	int r = minivm_supported(mode);

	T_REQUIRE(t_need_kvm());
	if (r == -EOPNOTSUPP)
		return t_skip("KVM lacks %s", mode == MINIVM_DIRTY_RING
						      ? "the dirty ring"
						      : "manual dirty log protection");
	if (r)
		return t_skip("minivm unsupported: %s", strerror(-r));
	return 0;
}

/* Small deterministic PRNG so failures reproduce. */
static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* n random 8-byte-aligned GPAs spread over the slots of @o. */
static uint64_t *random_gpas(const struct minivm_opts *o, size_t n, uint64_t seed)
{
	uint64_t *g = malloc(n * sizeof(*g));

	for (size_t i = 0; g && i < n; i++) {
		const struct minivm_slot *s = &o->slots[rnd(&seed) % o->nslots];

		g[i] = s->gpa + (rnd(&seed) % (s->size / 8)) * 8;
	}
	return g;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * Harvests and compares the non-system GFNs with the pages of @gpas (sorted, unique). Also
 * checks the log itself is sorted and unique as promised. Returns 0 or -1 (printing why).
 */
static int check_harvest(struct minivm *vm, const uint64_t *gpas, size_t n)
{
	uint64_t *want = malloc((n + 1) * sizeof(*want)), *got = NULL;
	size_t nwant = 0, ngot = 0, ndata = 0, i, j;
	int r, bad = 0;

	CHECK(want);
	for (i = 0; i < n; i++)
		want[i] = gpas[i] / PAGE;
	qsort(want, n, sizeof(*want), cmp_u64);
	for (i = 0; i < n; i++) {
		if (!nwant || want[nwant - 1] != want[i])
			want[nwant++] = want[i];
	}

	r = minivm_harvest(vm, &got, &ngot);
	if (r) {
		fprintf(stderr, "  harvest: %s\n", strerror(-r));
		free(want);
		return -1;
	}
	for (i = 1; i < ngot; i++) {
		if (got[i - 1] >= got[i]) {
			fprintf(stderr, "  harvest not sorted/unique at %zu\n", i);
			bad = 1;
		}
	}
	/* Merge walk over the data part of the log against the wanted set. */
	for (i = 0, j = 0; i < ngot || j < nwant;) {
		if (i < ngot && minivm_is_system_gfn(vm, got[i])) {
			i++;
			continue;
		}
		if (i < ngot && j < nwant && got[i] == want[j]) {
			i++, j++, ndata++;
		} else if (j >= nwant || (i < ngot && got[i] < want[j])) {
			if (bad++ < 10)
				fprintf(stderr, "  unexpected dirty gfn 0x%llx\n",
					(unsigned long long)got[i]);
			i++;
		} else {
			if (bad++ < 10)
				fprintf(stderr, "  missing dirty gfn 0x%llx\n",
					(unsigned long long)want[j]);
			j++;
		}
	}
	free(want);
	free(got);
	if (bad)
		fprintf(stderr, "  %d mismatches (%zu data pages matched, %zu wanted)\n", bad,
			ndata, nwant);
	return bad ? -1 : 0;
}

/* Every GPA holds @value. */
static int check_values(struct minivm *vm, const uint64_t *gpas, size_t n, uint64_t value)
{
	for (size_t i = 0; i < n; i++) {
		uint64_t v = 0;

		CHECK(minivm_host_read(vm, gpas[i], &v) == 0);
		CHECKF(v == value, "gpa 0x%llx holds 0x%llx, want 0x%llx",
		       (unsigned long long)gpas[i], (unsigned long long)v,
		       (unsigned long long)value);
	}
	return 0;
}

/* One round: write, verify contents, verify the log. */
static int round_trip(struct minivm *vm, const uint64_t *gpas, size_t n, uint64_t value)
{
	int r = minivm_guest_write(vm, gpas, n, value);

	CHECKF(r == 0, "guest_write: %s", strerror(-r));
	CHECK(check_values(vm, gpas, n, value) == 0);
	CHECK(check_harvest(vm, gpas, n) == 0);
	return 0;
}

/* Rounds shared by the bitmap and ring cases. */
static int dirty_rounds(enum minivm_dirty mode, int rounds)
{
	struct minivm_opts o;
	struct minivm *vm = NULL;
	int r, ret = -1;

	three_slots(&o, mode);
	r = minivm_create(&vm, &o);
	CHECKF(r == 0, "create: %s", strerror(-r));

	/* Nothing written yet: the log has no data pages. */
	if (check_harvest(vm, NULL, 0))
		goto cleanup;
	{
		/* Hand-picked: slot edges, >= 4 GiB, and one page written twice. */
		const uint64_t gpas[] = {
			0x0,
			0x1008,
			4 * SZ_1M - 8,
			256 * SZ_1M + 12 * PAGE,
			256 * SZ_1M + 12 * PAGE + 3 * SZ_1M - 8,
			4 * SZ_1G + 2 * SZ_1M,
			4 * SZ_1G + 2 * SZ_1M + 5 * PAGE + 16,
			0x1010,
			4 * SZ_1G + 10 * SZ_1M - 8,
		};

		if (round_trip(vm, gpas, sizeof(gpas) / sizeof(gpas[0]), 0x1122334455667788ULL))
			goto cleanup;
	}
	{
		/* A disjoint set: only it may show up, proving the clear re-protected. */
		const uint64_t gpas[] = { 0x2000, 0x2000, 256 * SZ_1M + 20 * PAGE,
					  4 * SZ_1G + 3 * SZ_1M };

		if (round_trip(vm, gpas, 4, 0xa5a5a5a5a5a5a5a5ULL))
			goto cleanup;
	}
	/* Rewriting pages already logged (and cleared) before must be reported again. */
	for (int i = 0; i < rounds; i++) {
		uint64_t *g = random_gpas(&o, 200, 0x9e3779b97f4a7c15ULL + i);

		if (!g)
			goto cleanup;
		r = round_trip(vm, g, 200, 0x100 + i);
		free(g);
		if (r)
			goto cleanup;
	}
	/* And a quiet round reports nothing. */
	if (check_harvest(vm, NULL, 0))
		goto cleanup;
	ret = 0;
cleanup:
	minivm_destroy(vm);
	return ret;
}

static int bitmap_log(void)
{
	T_REQUIRE(need_mode(MINIVM_DIRTY_BITMAP));
	return dirty_rounds(MINIVM_DIRTY_BITMAP, 3);
}

static int ring_log(void)
{
	T_REQUIRE(need_mode(MINIVM_DIRTY_RING));
	return dirty_rounds(MINIVM_DIRTY_RING, 6);
}

static int deferred_memory(void)
{
	struct minivm_opts o;
	struct minivm *vm = NULL;
	const uint64_t gpas[] = { 0x3000, 4 * SZ_1G + 2 * SZ_1M + PAGE };
	uint64_t v;
	int r, ret = -1;

	T_REQUIRE(need_mode(MINIVM_DIRTY_RING));
	three_slots(&o, MINIVM_DIRTY_RING);
	o.defer_memory = true;
	r = minivm_create(&vm, &o);
	CHECKF(r == 0, "create: %s", strerror(-r));
	/* No memory yet: everything that needs it refuses. */
	if (minivm_guest_write(vm, gpas, 2, 1) != -EINVAL || minivm_host_read(vm, 0, &v) != -EFAULT)
		goto cleanup;
	r = minivm_setup_memory(vm);
	if (r) {
		fprintf(stderr, "  setup_memory: %s\n", strerror(-r));
		goto cleanup;
	}
	if (minivm_setup_memory(vm) || round_trip(vm, gpas, 2, 0xdeadbeefULL))
		goto cleanup;
	ret = 0;
cleanup:
	minivm_destroy(vm);
	return ret;
}

static int host_read_clean(void)
{
	struct minivm_opts o;
	struct minivm *vm = NULL;
	const uint64_t gpa = 256 * SZ_1M + 40 * PAGE + 8;
	uint64_t v = 1, sys, sys_size;
	int ret = -1;

	T_REQUIRE(need_mode(MINIVM_DIRTY_BITMAP));
	three_slots(&o, MINIVM_DIRTY_BITMAP);
	CHECK(minivm_create(&vm, &o) == 0);
	if (round_trip(vm, &gpa, 1, 0x0123456789abcdefULL))
		goto cleanup;
	/* Read everything around it, the untouched slots and the system slot too. */
	for (unsigned int i = 0; i < o.nslots; i++) {
		for (uint64_t a = 0; a < o.slots[i].size; a += PAGE) {
			if (minivm_host_read(vm, o.slots[i].gpa + a, &v))
				goto cleanup;
		}
	}
	minivm_system_range(vm, &sys, &sys_size);
	if (minivm_host_read(vm, sys, &v) || minivm_host_read(vm, sys + sys_size - 8, &v))
		goto cleanup;
	if (minivm_host_read(vm, gpa, &v) || v != 0x0123456789abcdefULL) {
		fprintf(stderr, "  host_read got 0x%llx\n", (unsigned long long)v);
		goto cleanup;
	}
	if (minivm_host_read(vm, gpa + PAGE, &v) || v != 0)
		goto cleanup;
	/* Outside every slot, and straddling a slot's end. */
	if (minivm_host_read(vm, 8 * SZ_1M, &v) != -EFAULT ||
	    minivm_host_read(vm, 4 * SZ_1M - 4, &v) != -EFAULT)
		goto cleanup;
	if (check_harvest(vm, NULL, 0))
		goto cleanup;
	/* The guest cannot be asked to write outside data slots either. */
	if (minivm_guest_write(vm, &sys, 1, 0) != -EFAULT)
		goto cleanup;
	ret = 0;
cleanup:
	minivm_destroy(vm);
	return ret;
}

static int ring_many_pages(void)
{
	struct minivm_opts o;
	struct minivm *vm = NULL;
	const size_t n = 3000;
	uint64_t *g = malloc(n * sizeof(*g));
	int ret = -1;

	T_REQUIRE(need_mode(MINIVM_DIRTY_RING));
	CHECK(g);
	three_slots(&o, MINIVM_DIRTY_RING);
	/* 3000 distinct pages: every page of slot 1 (1024), most of slot 3 (1976). */
	for (size_t i = 0; i < n; i++)
		g[i] = i < 1024 ? i * PAGE + 24 : o.slots[2].gpa + (i - 1024) * PAGE;
	if (minivm_create(&vm, &o))
		goto cleanup;
	if (minivm_ring_entries(vm) != 4096)
		goto cleanup;
	if (round_trip(vm, g, n, 0x5555aaaa5555aaaaULL))
		goto cleanup;
	/* Again, backwards, and with more than one command block's worth. */
	for (size_t i = 0; i < n / 2; i++) {
		uint64_t t = g[i];

		g[i] = g[n - 1 - i];
		g[n - 1 - i] = t;
	}
	if (round_trip(vm, g, n, 7))
		goto cleanup;
	ret = 0;
cleanup:
	minivm_destroy(vm);
	free(g);
	return ret;
}

/* Harvests the ring and appends its GFNs to all[*nall] (room for cap in all). */
static int harvest_append(struct minivm *vm, uint64_t *all, size_t *nall, size_t cap)
{
	uint64_t *got;
	size_t ngot;

	if (minivm_harvest(vm, &got, &ngot))
		return -1;
	CHECKF(*nall + ngot <= cap, "%zu + %zu harvested GFNs, room for %zu", *nall, ngot, cap);
	memcpy(all + *nall, got, ngot * sizeof(*got));
	*nall += ngot;
	free(got);
	return 0;
}

/* Harvests the ring and adds how many of its GFNs are data pages (not the system slot's). */
static int harvest_count_data(struct minivm *vm, size_t *ndata)
{
	uint64_t *got;
	size_t ngot;

	if (minivm_harvest(vm, &got, &ngot))
		return -1;
	for (size_t i = 0; i < ngot; i++)
		*ndata += !minivm_is_system_gfn(vm, got[i]);
	free(got);
	return 0;
}

/* A ring smaller than the write: -ENOSPC, harvest, resume; the union is complete. */
static int ring_full_resume(void)
{
	struct minivm_opts o;
	struct minivm *vm = NULL;
	const size_t n = 3000;
	uint64_t *g = malloc(n * sizeof(*g)), *all = malloc(n * 2 * sizeof(*all));
	size_t nall = 0;
	int r, stops = 0, ret = -1;

	T_REQUIRE(need_mode(MINIVM_DIRTY_RING));
	CHECK(g && all);
	three_slots(&o, MINIVM_DIRTY_RING);
	o.ring_entries = 1024;
	for (size_t i = 0; i < n; i++)
		g[i] = i < 1024 ? i * PAGE : o.slots[2].gpa + (i - 1024) * PAGE + 8;
	if (minivm_create(&vm, &o))
		goto cleanup;
	for (r = minivm_guest_write(vm, g, n, 42); r == -ENOSPC; r = minivm_resume(vm)) {
		if (!minivm_write_pending(vm) || ++stops > 100 ||
		    harvest_append(vm, all, &nall, n * 2))
			goto cleanup;
	}
	/* 3000 writes, 896 per harvest with a 1024 entry ring: 3 stops. */
	if (r || minivm_write_pending(vm) || stops < 2) {
		fprintf(stderr, "  r=%d stops=%d\n", r, stops);
		goto cleanup;
	}
	if (harvest_append(vm, all, &nall, n * 2))
		goto cleanup;
	/* Compare the union of the partial harvests, as GPAs, with what was asked. */
	for (size_t i = 0; i < nall; i++)
		all[i] *= PAGE;
	{
		size_t ndata = 0;

		for (size_t i = 0; i < nall; i++) {
			if (!minivm_is_system_gfn(vm, all[i] / PAGE))
				all[ndata++] = all[i];
		}
		/* Each page is reported once overall: resets come only after the harvest. */
		if (ndata != n) {
			fprintf(stderr, "  %zu data pages over %d stops, want %zu\n", ndata, stops,
				n);
			goto cleanup;
		}
		qsort(all, ndata, sizeof(*all), cmp_u64);
		qsort(g, n, sizeof(*g), cmp_u64);
		for (size_t i = 0; i < n; i++) {
			if (all[i] != g[i] / PAGE * PAGE)
				goto cleanup;
		}
	}
	if (check_values(vm, g, n, 42))
		goto cleanup;
	ret = 0;
cleanup:
	minivm_destroy(vm);
	free(g);
	free(all);
	return ret;
}

/* The same page over and over: on PVM each write is a ring entry, but it is logged once. */
static int ring_same_page(void)
{
	struct minivm_opts o;
	struct minivm *vm = NULL;
	const size_t n = 5000;
	uint64_t *g = malloc(n * sizeof(*g));
	size_t ndata = 0;
	int r, stops = 0, ret = -1;

	T_REQUIRE(need_mode(MINIVM_DIRTY_RING));
	CHECK(g);
	three_slots(&o, MINIVM_DIRTY_RING);
	o.ring_entries = 512;
	for (size_t i = 0; i < n; i++)
		g[i] = o.slots[1].gpa + 5 * PAGE + (i % 512) * 8;
	if (minivm_create(&vm, &o))
		goto cleanup;
	for (r = minivm_guest_write(vm, g, n, 9); r == -ENOSPC; r = minivm_resume(vm)) {
		if (++stops > 1000 || harvest_count_data(vm, &ndata))
			goto cleanup;
	}
	if (r) {
		fprintf(stderr, "  write: %s after %d stops\n", strerror(-r), stops);
		goto cleanup;
	}
	if (harvest_count_data(vm, &ndata))
		goto cleanup;
	/* At most once per harvest: the page, and nothing else. */
	CHECKF(ndata >= 1 && ndata <= (size_t)stops + 1, "%zu data gfns over %d stops", ndata,
	       stops);
	CHECK(check_values(vm, g, 512, 9) == 0);
	ret = 0;
cleanup:
	minivm_destroy(vm);
	free(g);
	return ret;
}

/* Slots far up (64 GiB, 16 GiB large, sparse) and a VM without dirty logging. */
static int high_slots(void)
{
	struct minivm_opts o = { .dirty = MINIVM_DIRTY_BITMAP, .nslots = 2 };
	struct minivm *vm = NULL;
	const uint64_t gpas[] = {
		64 * SZ_1G,
		64 * SZ_1G + 7 * SZ_1G + 123 * PAGE,
		80 * SZ_1G - 8,
		0x10000,
	};
	uint64_t *got = NULL, v;
	size_t ngot;
	int r, ret = -1;

	T_REQUIRE(need_mode(MINIVM_DIRTY_BITMAP));
	o.slots[0] = (struct minivm_slot){ .gpa = 64 * SZ_1G, .size = 16 * SZ_1G, .id = 3 };
	o.slots[1] = (struct minivm_slot){ .gpa = 0x10000, .size = 64 * PAGE, .id = 1 };
	r = minivm_create(&vm, &o);
	if (r == -ERANGE)
		return t_skip("guest MAXPHYADDR below 80 GiB");
	CHECKF(r == 0, "create: %s", strerror(-r));
	if (round_trip(vm, gpas, 4, 0xfeedfacecafebeefULL) || round_trip(vm, gpas + 1, 2, 0x1234))
		goto cleanup;
	minivm_destroy(vm);

	o.dirty = MINIVM_DIRTY_NONE;
	r = minivm_create(&vm, &o);
	CHECKF(r == 0, "create: %s", strerror(-r));
	if (minivm_guest_write(vm, gpas, 4, 77) || check_values(vm, gpas, 4, 77))
		goto cleanup;
	if (minivm_harvest(vm, &got, &ngot) != -EINVAL || minivm_host_read(vm, 0, &v) != -EFAULT)
		goto cleanup;
	ret = 0;
cleanup:
	minivm_destroy(vm);
	return ret;
}

/* Slot layouts minivm must refuse. */
static int bad_opts(void)
{
	struct minivm_opts o;
	struct minivm *vm = (struct minivm *)1;

	T_REQUIRE(t_need_kvm());
	three_slots(&o, MINIVM_DIRTY_NONE);
	o.slots[1].id = 0; /* the system slot's id */
	CHECK(minivm_create(&vm, &o) == -EINVAL && vm == NULL);
	three_slots(&o, MINIVM_DIRTY_NONE);
	o.slots[2].id = o.slots[0].id;
	CHECK(minivm_create(&vm, &o) == -EINVAL);
	three_slots(&o, MINIVM_DIRTY_NONE);
	o.slots[1].gpa = o.slots[0].gpa + PAGE; /* overlap */
	CHECK(minivm_create(&vm, &o) == -EINVAL);
	three_slots(&o, MINIVM_DIRTY_NONE);
	o.slots[1].size += 8; /* not page aligned */
	CHECK(minivm_create(&vm, &o) == -EINVAL);
	three_slots(&o, MINIVM_DIRTY_NONE);
	o.slots[1].gpa = 1ULL << 52; /* beyond any MAXPHYADDR */
	CHECK(minivm_create(&vm, &o) == -ERANGE);
	if (minivm_supported(MINIVM_DIRTY_RING) == 0) {
		three_slots(&o, MINIVM_DIRTY_RING);
		o.ring_entries = 1000; /* not a power of 2 */
		CHECK(minivm_create(&vm, &o) == -EINVAL);
	}
	minivm_destroy(NULL);
	return 0;
}

/* Body of one of the concurrent VMs; returns the exit status. */
static int child_vm(int go_fd, int id)
{
	struct minivm_opts o;
	struct minivm *vm = NULL;
	char c;
	int ret = 1;

	three_slots(&o, id ? MINIVM_DIRTY_RING : MINIVM_DIRTY_BITMAP);
	if (minivm_create(&vm, &o))
		return 2;
	/* Both VMs exist before either runs. */
	if (read(go_fd, &c, 1) != 0)
		goto cleanup;
	for (int i = 0; i < 20; i++) {
		uint64_t *g = random_gpas(&o, 300, 1000 * (id + 1) + i);
		int r = g ? round_trip(vm, g, 300, ((uint64_t)id << 32) | i) : -1;

		free(g);
		if (r)
			goto cleanup;
	}
	ret = 0;
cleanup:
	minivm_destroy(vm);
	return ret;
}

/* A fork()ed child's inherited handle is refused cleanly; the parent's VM is unharmed. */
static int inherited_handle(void)
{
	struct minivm_opts o;
	struct minivm *vm = NULL;
	const uint64_t gpa = 0x5000;
	int status = 0, ret = -1;
	pid_t pid;

	T_REQUIRE(need_mode(MINIVM_DIRTY_RING));
	three_slots(&o, MINIVM_DIRTY_RING);
	CHECK(minivm_create(&vm, &o) == 0);
	if (round_trip(vm, &gpa, 1, 1))
		goto cleanup;
	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		uint64_t v, *g;
		size_t n;
		int bad = minivm_guest_write(vm, &gpa, 1, 2) != -EIO ||
			  minivm_host_read(vm, gpa, &v) != -EIO ||
			  minivm_harvest(vm, &g, &n) != -EIO || minivm_hva(vm, gpa, 8);

		minivm_destroy(vm);
		_exit(bad);
	}
	if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
	    WEXITSTATUS(status)) {
		fprintf(stderr, "  child status 0x%x\n", status);
		goto cleanup;
	}
	if (check_values(vm, &gpa, 1, 1) || round_trip(vm, &gpa, 1, 3))
		goto cleanup;
	ret = 0;
cleanup:
	minivm_destroy(vm);
	return ret;
}

static int two_processes(void)
{
	int go[2], status, ret = 0;
	pid_t pid[2];

	T_REQUIRE(need_mode(MINIVM_DIRTY_RING));
	T_REQUIRE(need_mode(MINIVM_DIRTY_BITMAP));
	CHECK(pipe(go) == 0);
	fflush(NULL);
	for (int i = 0; i < 2; i++) {
		pid[i] = fork();
		CHECK(pid[i] >= 0);
		if (pid[i] == 0) {
			close(go[1]);
			_exit(child_vm(go[0], i));
		}
	}
	close(go[0]);
	close(go[1]); /* EOF on the pipe starts both */
	for (int i = 0; i < 2; i++) {
		CHECK(waitpid(pid[i], &status, 0) == pid[i]);
		if (!WIFEXITED(status) || WEXITSTATUS(status)) {
			fprintf(stderr, "  child %d: status 0x%x\n", i, status);
			ret = -1;
		}
	}
	return ret;
}

/* Four vcpus write at once, each its own pages, each into its own ring: the rings harvested
 * one by one (then one reset for all) report exactly the pages written, and the values land. */
struct vwriter {
	struct minivm *m;
	unsigned int idx;
	uint64_t gpas[256];
	int err;
};

static void *vwriter_main(void *arg)
{
	struct vwriter *w = arg;

	w->err = minivm_vcpu_write(w->m, w->idx, w->gpas, 256, 0x1000 + w->idx);
	return NULL;
}

/*
 * A vcpu ring holds exactly vcpu v's pages (v, v + 4, ... v + 1020 of slot 0), each once. System
 * slot entries are noise (minivm.h): a CPU may dirty the pages it walks or runs from (nested SVM
 * under QEMU TCG logs the code, command and page table pages of the first vcpu).
 */
static int ring_is_vcpu_pages(struct minivm *m, const uint64_t *gfns, size_t n, unsigned int v)
{
	bool seen[256] = { false };
	size_t ndata = 0;

	for (size_t i = 0; i < n; i++) {
		if (minivm_is_system_gfn(m, gfns[i]))
			continue;
		if (gfns[i] >= 1024 || gfns[i] % 4 != v || seen[gfns[i] / 4]) {
			fprintf(stderr, "  unexpected gfn 0x%llx\n", (unsigned long long)gfns[i]);
			return -1;
		}
		seen[gfns[i] / 4] = true;
		ndata++;
	}
	if (ndata != 256)
		fprintf(stderr, "  %zu data pages of %zu entries, want 256\n", ndata, n);
	return ndata == 256 ? 0 : -1;
}

static int four_vcpus_own_rings(void)
{
	struct minivm_opts o;
	struct vwriter w[4];
	pthread_t th[4];
	struct minivm *m;

	T_REQUIRE(need_mode(MINIVM_DIRTY_RING));
	three_slots(&o, MINIVM_DIRTY_RING);
	o.nvcpus = 4;
	CHECK(!minivm_create(&m, &o));
	CHECK(minivm_nvcpus(m) == 4);
	for (unsigned int v = 0; v < 4; v++) {
		w[v] = (struct vwriter){ .m = m, .idx = v };
		for (unsigned int i = 0; i < 256; i++) /* vcpu v: pages v, v + 4, ... of slot 0 */
			w[v].gpas[i] = (uint64_t)(i * 4 + v) * PAGE + 8 * v;
		CHECK(!pthread_create(&th[v], NULL, vwriter_main, &w[v]));
	}
	for (unsigned int v = 0; v < 4; v++) {
		CHECK(!pthread_join(th[v], NULL));
		CHECKF(!w[v].err, "vcpu %u: %s", v, strerror(-w[v].err));
	}
	for (unsigned int v = 0; v < 4; v++) {
		uint64_t *gfns, val;
		size_t n;

		CHECK(!minivm_harvest_vcpu(m, v, &gfns, &n));
		CHECKF(ring_is_vcpu_pages(m, gfns, n, v) == 0, "vcpu %u ring", v);
		free(gfns);
		CHECK(!minivm_host_read(m, w[v].gpas[7], &val) && val == 0x1000 + v);
	}
	CHECK(!minivm_reset_rings(m));
	{
		uint64_t *gfns;
		size_t n, ndata = 0;

		CHECK(!minivm_harvest(m, &gfns, &n));
		for (size_t i = 0; i < n; i++)
			ndata += !minivm_is_system_gfn(m, gfns[i]);
		free(gfns);
		CHECKF(ndata == 0, "%zu data pages dirty after the reset", ndata);
	}
	CHECK(minivm_vcpu_write(m, 4, w[0].gpas, 1, 0) == -EINVAL);
	minivm_destroy(m);
	return 0;
}

T_MAIN(T_CASE(bitmap_log), T_CASE(ring_log), T_CASE(deferred_memory), T_CASE(host_read_clean),
       T_CASE(ring_many_pages), T_CASE(ring_full_resume), T_CASE(ring_same_page),
       T_CASE(high_slots), T_CASE(bad_opts), T_CASE(inherited_handle), T_CASE(two_processes),
       T_CASE(four_vcpus_own_rings))
