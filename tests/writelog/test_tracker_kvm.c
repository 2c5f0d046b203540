// SPDX-License-Identifier: GPL-2.0
/*
 * The write tracker on real KVM guests (minivm), dirty-ring mode: with the BPF programs
 * attached, the write log must equal what KVM's own dirty ring reports, arm after arm.
 * The test process is the VMM, so it tracks its own tgid. Maps and links are private
 * (no pins), so a service running on the machine is not disturbed.
 */
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <linux/kvm.h>

#include "t.h"
#include "writelog/loader.h"
#include "guest.h"
#include "writelog/vmlog.h"

static struct minivm_opts ring_opts(void)
{
	struct minivm_opts o = { .dirty = MINIVM_DIRTY_RING, .nslots = 3, .ring_entries = 8192 };

	o.slots[0] = (struct minivm_slot){ .gpa = 0, .size = 2 << 20, .id = 1 };
	o.slots[1] = (struct minivm_slot){ .gpa = 3ull << 30, .size = 4 << 20, .id = 2 };
	o.slots[2] = (struct minivm_slot){ .gpa = 64ull << 30, .size = 8 << 20, .id = 7 };
	return o;
}

static struct pt_tracker *open_tracker(void)
{
	struct pt_loader_opts o = { .tdp = -1, .no_pin = true, .log_mb = 4 };
	struct pt_tracker *t = NULL;

	return pt_tracker_open(&t, &o) ? NULL : t;
}

/* Track `pid` with the minivm's data slots and its system slot. */
static int track(struct pt_tracker *t, pid_t pid, const struct minivm_opts *o,
		 const struct minivm *m, uint32_t *vm)
{
	struct pt_slot_cfg s[MINIVM_MAX_SLOTS + 1];
	bool existed;
	unsigned i;

	for (i = 0; i < o->nslots; i++)
		s[i] = (struct pt_slot_cfg){ o->slots[i].gpa, o->slots[i].size, o->slots[i].id,
					     true };
	minivm_system_range(m, &s[i].gpa, &s[i].size);
	s[i].id = 0;
	s[i].logged = true;
	return pt_vm_track(t, pid, s, o->nslots + 1, 0, vm, &existed);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Random distinct page addresses inside the data slots, with duplicates written twice. */
static size_t pick_pages(const struct minivm_opts *o, unsigned seed, uint64_t *gpas, size_t n)
{
	srandom(seed);
	for (size_t i = 0; i < n; i++) {
		const struct minivm_slot *s = &o->slots[random() % o->nslots];

		gpas[i] = s->gpa + (random() % (s->size / 4096)) * 4096 + (random() % 512) * 8;
	}
	return n;
}

/* Unique sorted page frames of the GPAs. */
static size_t gfns_of(const uint64_t *gpas, size_t n, uint64_t *out)
{
	size_t m = 0;

	for (size_t i = 0; i < n; i++)
		out[i] = gpas[i] >> 12;
	qsort(out, n, sizeof(*out), cmp_u64);
	for (size_t i = 0; i < n; i++)
		if (!m || out[m - 1] != out[i])
			out[m++] = out[i];
	return m;
}

/* The VMM's harvest (and the reset after it), the harvested GFNs not needed. */
static int harvest_drop(struct minivm *m)
{
	uint64_t *junk;
	size_t nj;
	int err = minivm_harvest(m, &junk, &nj);

	if (!err)
		free(junk);
	return err;
}

/* A case's start: a tracker, a minivm of `o`, and this process tracked with its slots. */
static int ring_vm_start(struct pt_tracker **t, const struct minivm_opts *o, struct minivm **m,
			 uint32_t *vm)
{
	T_REQUIRE(need_ring_guest());
	*t = open_tracker();
	CHECK(*t);
	CHECK(!minivm_create(m, o));
	CHECK(!track(*t, getpid(), o, *m, vm));
	return 0;
}

/* The start of a case on learned slots: tracking begins before the VMM sets up its memory, so
 * the slots come from its ioctls. */
static int learning_vm_start(struct pt_tracker **t, struct minivm_opts *o, struct minivm **m,
			     uint32_t *vm)
{
	bool existed;

	*t = open_tracker();
	CHECK(*t);
	o->defer_memory = true;
	CHECK(!pt_vm_track(*t, getpid(), NULL, 0, 1 << 20, vm, &existed));
	CHECK(!minivm_create(m, o));
	CHECK(!minivm_setup_memory(*m));
	return 0;
}

/*
 * KVM's harvest minus system pages must equal `want`, and the BPF log must equal KVM's whole
 * harvest: a CPU may dirty the system pages it walks or runs from (nested SVM under QEMU does),
 * and BPF must see those as KVM does.
 */
static int compare(struct pt_tracker *t, uint32_t vm, struct minivm *m, const uint64_t *want,
		   size_t nwant)
{
	uint64_t *kvm = NULL, *bpf = NULL, *data = NULL;
	size_t nk = 0, nb = 0, nd = 0;
	int ret = -1;

	if (pt_vm_written_gfns(t, vm, &bpf, &nb) || minivm_harvest(m, &kvm, &nk))
		goto out;
	qsort(bpf, nb, sizeof(*bpf), cmp_u64);
	data = malloc(nk * sizeof(*data) + 1);
	if (!data)
		goto out;
	for (size_t i = 0; i < nk; i++)
		if (!minivm_is_system_gfn(m, kvm[i]))
			data[nd++] = kvm[i];
	if (nd != nwant || memcmp(data, want, nd * 8)) {
		fprintf(stderr, "  KVM reported %zu pages, guest wrote %zu\n", nd, nwant);
		goto out;
	}
	if (nb != nk || memcmp(bpf, kvm, nb * 8)) {
		fprintf(stderr, "  BPF log has %zu pages, KVM %zu (%zu of them data)\n", nb, nk,
			nd);
		goto out;
	}
	ret = 0;
out:
	free(data);
	free(kvm);
	free(bpf);
	return ret;
}

static int ring_log_matches_kvm(void)
{
	struct minivm_opts o = ring_opts();
	uint64_t gpas[3000], want[3000], epoch;
	struct pt_tracker *t;
	struct minivm *m;
	size_t nw;
	uint32_t vm;

	T_REQUIRE(ring_vm_start(&t, &o, &m, &vm));
	for (unsigned round = 0; round < 5; round++) {
		size_t n = round == 4 ? 3000 : 50 + round * 300;

		/* A write before the arm must not show after it. */
		pick_pages(&o, 1000 + round, gpas, 40);
		CHECK(!minivm_guest_write(m, gpas, 40, round));
		CHECK(!pt_vm_arm(t, vm, &epoch));
		CHECK(!harvest_drop(m)); /* the VMM's sync, after the arm */
		CHECK(pt_vm(t, vm)->sync_epoch == epoch);
		nw = gfns_of(gpas, pick_pages(&o, round, gpas, n), want);
		CHECK(!minivm_guest_write(m, gpas, n, 0xabc0 + round));
		CHECKF(!compare(t, vm, m, want, nw), "round %u", round);
		CHECK(pt_vm(t, vm)->taint_epoch != epoch);
	}
	CHECK(pt_vm(t, vm)->flags & PT_VM_ACTIVE);
	minivm_destroy(m);
	pt_tracker_close(t);
	return 0;
}

static int sync_counting_matches_ioctls(void)
{
	struct minivm_opts o = ring_opts();
	struct pt_tracker *t;
	struct minivm *m;
	uint64_t epoch, syncs0, gpa = 3ull << 30;
	uint32_t vm;

	T_REQUIRE(ring_vm_start(&t, &o, &m, &vm));
	syncs0 = pt_vm(t, vm)->syncs;
	/* minivm, like QEMU, issues KVM_RESET_DIRTY_RINGS only when it harvested something. */
	for (int i = 0; i < 7; i++) {
		CHECK(!minivm_guest_write(m, &gpa, 1, i));
		CHECK(!harvest_drop(m));
	}
	CHECK(pt_vm(t, vm)->syncs == syncs0 + 7);
	/* A sync before the arm does not count for the new epoch. */
	CHECK(!pt_vm_arm(t, vm, &epoch));
	CHECK(pt_vm(t, vm)->sync_epoch != epoch);
	CHECK(!minivm_guest_write(m, &gpa, 1, 1));
	CHECK(!harvest_drop(m));
	CHECK(pt_vm(t, vm)->sync_epoch == epoch);
	CHECK(pt_vm(t, vm)->syncs == syncs0 + 8);
	minivm_destroy(m);
	pt_tracker_close(t);
	return 0;
}

/*
 * A reset that leaves pre-arm entries is not yet the sync: no taint, no lost event, no sync
 * epoch. The reset that covers them (the second pass of a two-pass harvest) is the sync.
 */
static int incomplete_reset_not_synced(void)
{
	struct minivm_opts o = ring_opts();
	uint64_t gpas[8], epoch;
	struct pt_tracker *t;
	struct minivm *m;
	uint32_t vm;

	T_REQUIRE(ring_vm_start(&t, &o, &m, &vm));
	CHECK(!harvest_drop(m));
	/* Pages dirtied before the arm, then a reset that harvested nothing: those pages stay
	 * writable without faulting, so this reset cannot be the sync. */
	pick_pages(&o, 7, gpas, 8);
	CHECK(!minivm_guest_write(m, gpas, 8, 1));
	CHECK(!pt_vm_arm(t, vm, &epoch));
	CHECK(ioctl(minivm_vm_fd(m), KVM_RESET_DIRTY_RINGS, 0) >= 0);
	CHECK(pt_vm(t, vm)->taint_epoch != epoch);
	CHECK(pt_vm(t, vm)->lost == 0);
	CHECK(pt_vm(t, vm)->sync_epoch != epoch && pt_vm(t, vm)->ring_sync_epoch != epoch);
	CHECK(pt_vm(t, vm)->syncs_incomplete >= 1);
	/* The second pass harvests and resets them: that is the sync, and the epoch is clean. */
	CHECK(!harvest_drop(m));
	CHECK(pt_vm(t, vm)->ring_sync_epoch == epoch && pt_vm(t, vm)->taint_epoch != epoch);
	CHECK(!minivm_guest_write(m, gpas, 1, 2));
	CHECK(!harvest_drop(m));
	CHECK(pt_vm(t, vm)->sync_epoch == epoch && pt_vm(t, vm)->taint_epoch != epoch);
	CHECK(pt_vm(t, vm)->lost == 0);
	minivm_destroy(m);
	pt_tracker_close(t);
	return 0;
}

static int learned_slots_from_ioctls(void)
{
	struct minivm_opts o = ring_opts();
	uint64_t gpas[200], want[200], epoch;
	struct pt_vm_slots sl;
	struct pt_tracker *t;
	struct minivm *m;
	size_t nw;
	uint32_t vm;

	T_REQUIRE(need_ring_guest());
	CHECK(learning_vm_start(&t, &o, &m, &vm) == 0);
	CHECK(!pt_vm_slots_get(t, vm, &sl));
	CHECKF(sl.nslots == o.nslots + 1, "learned %u slots", sl.nslots);
	for (unsigned i = 0; i < o.nslots; i++) {
		bool found = false;

		for (unsigned k = 0; k < sl.nslots; k++)
			found |= sl.slots[k].id == o.slots[i].id &&
				 sl.slots[k].base_gfn == o.slots[i].gpa >> 12 &&
				 sl.slots[k].npages == o.slots[i].size >> 12 &&
				 (sl.slots[k].flags & PT_SLOT_VALID);
		CHECKF(found, "slot %u", o.slots[i].id);
	}
	CHECK(pt_vm(t, vm)->flags & PT_VM_DIRTY_RING);
	/* Created while tracked: every memslot was seen. */
	CHECK(pt_vm(t, vm)->flags & PT_VM_SEEN_CREATE);
	CHECK(!(pt_vm(t, vm)->flags & PT_VM_SLOTS_UNSEEN));
	CHECK(!pt_vm_arm(t, vm, &epoch));
	CHECK(!harvest_drop(m));
	nw = gfns_of(gpas, pick_pages(&o, 99, gpas, 200), want);
	CHECK(!minivm_guest_write(m, gpas, 200, 5));
	CHECK(!compare(t, vm, m, want, nw));
	minivm_destroy(m);
	pt_tracker_close(t);
	return 0;
}

/*
 * Learned slots of a VM that was not created while tracked: REGISTER's check says so (this
 * process holds the VM's descriptor), and, should the check miss it (a descriptor passed in
 * from another process, unreadable to the service), the first memslot change says so too.
 */
static int learned_slots_vm_made_before_unseen(void)
{
	struct minivm_opts o = ring_opts();
	struct pt_tracker *t;
	struct minivm *m;
	bool existed;
	uint32_t vm;

	T_REQUIRE(need_ring_guest());
	t = open_tracker();
	CHECK(t);
	o.defer_memory = true;
	CHECK(!minivm_create(&m, &o));
	CHECK(!pt_vm_track(t, getpid(), NULL, 0, 1 << 20, &vm, &existed));
	CHECK(pt_vm(t, vm)->flags & PT_VM_SLOTS_UNSEEN);
	CHECK(!(pt_vm(t, vm)->flags & PT_VM_SEEN_CREATE));
	/* As if the check had not seen it. */
	__atomic_and_fetch(&pt_vm(t, vm)->flags, ~PT_VM_SLOTS_UNSEEN, __ATOMIC_SEQ_CST);
	CHECK(!minivm_setup_memory(m));
	CHECK(pt_vm(t, vm)->flags & PT_VM_SLOTS_UNSEEN);
	minivm_destroy(m);
	pt_tracker_close(t);
	return 0;
}

static const struct pt_slot *slot_with_id(const struct pt_vm_slots *sl, uint32_t id)
{
	for (uint32_t i = 0; i < sl->nslots && i < PT_MAX_SLOTS; i++)
		if (sl->slots[i].id == id && (sl->slots[i].flags & PT_SLOT_VALID))
			return &sl->slots[i];
	return NULL;
}

/* Delete memslot `s` and create it again, twice as large, on fresh memory (*mem, *len). */
static int recreate_larger(struct minivm *m, const struct minivm_slot *s, void **mem, size_t *len)
{
	struct kvm_userspace_memory_region r = {
		.slot = s->id,
		.flags = KVM_MEM_LOG_DIRTY_PAGES,
		.guest_phys_addr = s->gpa,
	};

	*len = 2 * s->size;
	*mem = mmap(NULL, *len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		    -1, 0);
	if (*mem == MAP_FAILED)
		return -errno;
	r.userspace_addr = (uintptr_t)*mem;
	if (ioctl(minivm_vm_fd(m), KVM_SET_USER_MEMORY_REGION, &r))
		return -errno;
	r.memory_size = *len;
	return ioctl(minivm_vm_fd(m), KVM_SET_USER_MEMORY_REGION, &r) ? -errno : 0;
}

/*
 * A memslot the VMM creates again larger gets new bits in a learned table: the ring's next
 * push of that slot, in the same epoch and on the same CPU, lands at the new bits, not at
 * the ones pt_ring_push cached for the slot before (a memslot change moves the generation).
 * The whole case runs on CPU 0, so the guest's pushes meet the entry its first write left.
 */
static int recreated_slot_not_cached(void)
{
	struct minivm_opts o = ring_opts();
	uint64_t first = o.slots[1].gpa + 5 * 4096, next = o.slots[1].gpa + 7 * 4096;
	const struct pt_slot *was, *now;
	struct pt_vm_slots before, after;
	uint64_t epoch, page;
	struct pt_tracker *t;
	struct minivm *m;
	void *mem = MAP_FAILED;
	size_t len = 0;
	cpu_set_t cpu;
	uint32_t vm;

	T_REQUIRE(need_ring_guest());
	CPU_ZERO(&cpu);
	CPU_SET(0, &cpu);
	CHECK(!sched_setaffinity(0, sizeof(cpu), &cpu));
	CHECK(learning_vm_start(&t, &o, &m, &vm) == 0);
	CHECK(!pt_vm_arm(t, vm, &epoch));
	CHECK(!harvest_drop(m));
	CHECK(!minivm_guest_write(m, &first, 1, 1));
	CHECK(!pt_vm_slots_get(t, vm, &before));
	CHECK(!recreate_larger(m, &o.slots[1], &mem, &len));
	CHECK(!pt_vm_slots_get(t, vm, &after));
	was = slot_with_id(&before, o.slots[1].id);
	now = slot_with_id(&after, o.slots[1].id);
	CHECK(was && now);
	CHECKF(now->bit_off != was->bit_off, "bits did not move (%llu): the case tests nothing",
	       (unsigned long long)now->bit_off);
	/* Inside the old size: the guest's page tables map only that much. */
	CHECK(!minivm_guest_write(m, &next, 1, 2));
	CHECK(!pt_slots_page(&after, next >> 12, &page));
	CHECK(pt_vm_page_written(t, vm, page));
	minivm_destroy(m);
	munmap(mem, len);
	pt_tracker_close(t);
	return 0;
}

/*
 * Bitmap mode: each KVM_GET_DIRTY_LOG syncs one memslot, and manual dirty-log protection
 * (minivm turns it on, as QEMU does) means GET protects nothing: BPF must record both.
 */
static int bitmap_sync_per_slot_and_manual_protect(void)
{
	struct minivm_opts o = ring_opts();
	struct pt_vm_slots sl;
	struct pt_tracker *t;
	struct minivm *m;
	uint64_t epoch;
	bool existed;
	uint32_t vm, synced = 0;

	T_REQUIRE(t_need_kvm());
	T_REQUIRE(t_need_bpf());
	if (minivm_supported(MINIVM_DIRTY_BITMAP))
		return t_skip("KVM has no manual dirty-log protection");
	t = open_tracker();
	CHECK(t);
	o.dirty = MINIVM_DIRTY_BITMAP;
	o.defer_memory = true;
	CHECK(!pt_vm_track(t, getpid(), NULL, 0, 1 << 20, &vm, &existed));
	CHECK(!minivm_create(&m, &o));
	CHECK(!minivm_setup_memory(m));
	CHECK(pt_vm(t, vm)->flags & PT_VM_MANUAL_PROTECT);
	CHECK(pt_vm(t, vm)->flags & PT_VM_SEEN_CREATE); /* tracked before KVM_CREATE_VM */
	CHECK(!(pt_vm(t, vm)->flags & PT_VM_DIRTY_RING));
	CHECK(!pt_vm_arm(t, vm, &epoch));
	CHECK(!harvest_drop(m));
	CHECK(!pt_vm_slots_get(t, vm, &sl));
	for (unsigned i = 0; i < sl.nslots; i++)
		synced += (sl.slots[i].flags & PT_SLOT_VALID) && sl.slots[i].sync_epoch == epoch;
	CHECKF(synced == sl.nslots, "%u of %u slots synced", synced, sl.nslots);
	minivm_destroy(m);
	pt_tracker_close(t);
	return 0;
}

struct armer {
	struct pt_tracker *t;
	uint32_t vm;
	volatile int stop;
	unsigned arms;
	unsigned seq; /* odd while an arm is in progress (the log is being cleared) */
};

/* Arms again and again, at random moments, while the guest writes and the VMM syncs. */
static void *armer_main(void *arg)
{
	struct armer *a = arg;
	unsigned seed = 7;

	while (!a->stop) {
		struct timespec ts = { 0, (rand_r(&seed) % 300) * 1000 };
		uint64_t epoch;

		__atomic_add_fetch(&a->seq, 1, __ATOMIC_SEQ_CST);
		if (pt_vm_arm(a->t, a->vm, &epoch))
			break;
		__atomic_add_fetch(&a->seq, 1, __ATOMIC_SEQ_CST);
		a->arms++;
		nanosleep(&ts, NULL);
	}
	return NULL;
}

/*
 * The arm-before-protect invariant under a race: another thread arms at random while the
 * guest writes and the VMM syncs. Whenever the epoch in force was armed before the latest
 * sync began (and is still in force after the writes), every page written after that sync
 * must be in the log. Rounds where an arm intervened are not checkable and are counted apart.
 * (The service never computes a verdict while it arms the same VM: both run on its one event
 * loop. So "during an arm" is excluded here too, with a sequence count.)
 */
#define MIN_ROUNDS	 100
#define ARM_RACE_SECONDS 120

static int arm_races_writes(void)
{
	struct minivm_opts o = ring_opts();
	struct armer a = { 0 };
	uint64_t gpas[64];
	unsigned checked = 0, skipped = 0;
	struct timespec t0, now;
	struct pt_tracker *t;
	struct minivm *m;
	pthread_t th;

	T_REQUIRE(ring_vm_start(&t, &o, &m, &a.vm));
	a.t = t;
	CHECK(!pthread_create(&th, NULL, armer_main, &a));
	clock_gettime(CLOCK_MONOTONIC, &t0);
	/* Until both kinds of round reached their minimum, within a time bound (the machine may
	 * be busy: never a fixed count). */
	for (unsigned round = 0; checked < MIN_ROUNDS || skipped < MIN_ROUNDS; round++) {
		struct pt_vm_state *st = pt_vm(t, a.vm);
		unsigned s0 = __atomic_load_n(&a.seq, __ATOMIC_SEQ_CST);
		uint64_t e0 = __atomic_load_n(&st->epoch, __ATOMIC_SEQ_CST), e1;
		bool ok = true;

		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - t0.tv_sec > ARM_RACE_SECONDS)
			break;
		CHECK(!harvest_drop(m)); /* the sync */
		CHECK(ioctl(minivm_vm_fd(m), KVM_RESET_DIRTY_RINGS, 0) >= 0);
		pick_pages(&o, round, gpas, 64);
		CHECK(!minivm_guest_write(m, gpas, 64, round));
		e1 = __atomic_load_n(&st->epoch, __ATOMIC_SEQ_CST);
		if (e0 != e1 || st->ring_sync_epoch != e1 || st->taint_epoch == e1) {
			skipped++;
			continue;
		}
		for (int i = 0; i < 64; i++) {
			struct pt_vm_slots sl;
			uint64_t page;

			CHECK(!pt_vm_slots_get(t, a.vm, &sl));
			CHECK(!pt_slots_page(&sl, gpas[i] >> 12, &page));
			ok &= pt_vm_page_written(t, a.vm, page);
		}
		if ((s0 & 1) || __atomic_load_n(&a.seq, __ATOMIC_SEQ_CST) != s0) {
			skipped++;
			continue;
		}
		CHECKF(ok, "round %u: a page written after the sync of epoch %llu is not logged",
		       round, (unsigned long long)e1);
		checked++;
	}
	a.stop = 1;
	pthread_join(th, NULL);
	printf("  %u rounds checked, %u with an arm in between, %u arms\n", checked, skipped,
	       a.arms);
	/* Both kinds of round happened: not vacuous. */
	CHECKF(checked >= MIN_ROUNDS && skipped >= MIN_ROUNDS,
	       "only %u checked and %u skipped rounds in %d s", checked, skipped, ARM_RACE_SECONDS);
	minivm_destroy(m);
	pt_tracker_close(t);
	return 0;
}

/*
 * Child: run a VM, tell the parent its system slot (GPA, size), wait for the parent to track
 * and arm it, sync, write, send KVM's whole log (system pages a CPU dirtied too: BPF sees them).
 */
static void child_vm(int rd, int wr, unsigned seed)
{
	struct minivm_opts o = ring_opts();
	uint64_t gpas[500], *kvm, sys[2];
	struct minivm *m;
	size_t nk;
	char go;

	if (minivm_create(&m, &o))
		_exit(1);
	minivm_system_range(m, &sys[0], &sys[1]);
	if (write(wr, sys, sizeof(sys)) != sizeof(sys) || read(rd, &go, 1) != 1)
		_exit(1);
	if (harvest_drop(m))
		_exit(2);
	if (write(wr, &go, 1) != 1 || read(rd, &go, 1) != 1)
		_exit(3);
	pick_pages(&o, seed, gpas, 500);
	if (minivm_guest_write(m, gpas, 500, seed) || minivm_harvest(m, &kvm, &nk))
		_exit(4);
	if (write(wr, &nk, sizeof(nk)) != sizeof(nk) || write(wr, kvm, nk * 8) != (ssize_t)(nk * 8))
		_exit(5);
	_exit(0);
}

static int two_vms_no_crosstalk(void)
{
	struct minivm_opts o = ring_opts();
	int to[2][2], from[2][2], status;
	struct pt_tracker *t;
	uint32_t vm[2];
	pid_t pid[2];
	char c = 'g';

	T_REQUIRE(need_ring_guest());
	t = open_tracker();
	CHECK(t);
	for (int i = 0; i < 2; i++) {
		CHECK(!pipe(to[i]) && !pipe(from[i]));
		pid[i] = fork();
		CHECK(pid[i] >= 0);
		if (!pid[i])
			child_vm(to[i][0], from[i][1], 500 + i);
	}
	for (int i = 0; i < 2; i++) {
		struct pt_slot_cfg s[4];
		uint64_t epoch, sys[2];
		bool existed;

		CHECK(read(from[i][0], sys, sizeof(sys)) == sizeof(sys));
		for (unsigned k = 0; k < 3; k++)
			s[k] = (struct pt_slot_cfg){ o.slots[k].gpa, o.slots[k].size, o.slots[k].id,
						     true };
		s[3] = (struct pt_slot_cfg){ sys[0], sys[1], 0, true };
		CHECK(!pt_vm_track(t, pid[i], s, 4, 0, &vm[i], &existed));
		CHECK(!pt_vm_arm(t, vm[i], &epoch));
		CHECK(write(to[i][1], &c, 1) == 1);
	}
	/* Both synced; let both write at the same time. */
	for (int i = 0; i < 2; i++)
		CHECK(read(from[i][0], &c, 1) == 1);
	for (int i = 0; i < 2; i++)
		CHECK(write(to[i][1], &c, 1) == 1);
	for (int i = 0; i < 2; i++) {
		uint64_t *kvm, *bpf;
		size_t nk, nb;

		CHECK(read(from[i][0], &nk, sizeof(nk)) == sizeof(nk));
		kvm = malloc(nk * 8 + 8);
		CHECK(kvm && read(from[i][0], kvm, nk * 8) == (ssize_t)(nk * 8));
		CHECK(waitpid(pid[i], &status, 0) == pid[i] && WIFEXITED(status));
		CHECKF(!WEXITSTATUS(status), "child %d exit %d", i, WEXITSTATUS(status));
		CHECK(!pt_vm_written_gfns(t, vm[i], &bpf, &nb));
		qsort(bpf, nb, 8, cmp_u64);
		CHECKF(nb == nk && !memcmp(bpf, kvm, nk * 8), "vm %d: bpf %zu kvm %zu", i, nb, nk);
		CHECK(pt_vm(t, vm[i])->taint_epoch != pt_vm(t, vm[i])->epoch);
		free(kvm);
		free(bpf);
	}
	pt_tracker_close(t);
	return 0;
}

T_MAIN(T_CASE(ring_log_matches_kvm), T_CASE(sync_counting_matches_ioctls),
       T_CASE(incomplete_reset_not_synced), T_CASE(learned_slots_from_ioctls),
       T_CASE(two_vms_no_crosstalk), T_CASE(bitmap_sync_per_slot_and_manual_protect),
       T_CASE(arm_races_writes), T_CASE(recreated_slot_not_cached),
       T_CASE(learned_slots_vm_made_before_unseen))
