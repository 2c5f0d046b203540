// SPDX-License-Identifier: GPL-2.0
/*
 * The per-CPU cache of the kvm_dirty_ring_push program (pt_ring_push), driven through
 * BPF_PROG_TEST_RUN with synthetic arguments on one pinned CPU, so that every push of a case
 * meets the cache the previous one left. The cache is keyed on the `ring` pointer and may
 * only ever save work: a push must land in the log of the VM that made it, whatever the cache
 * holds. The cases are the ways a cached entry goes stale or is simply the wrong one: the same
 * pointer pushed by another VMM after its new vCPU got a freed one's memory, rings of two VMs
 * alternating, a ring never seen, a VM registered again, a VM index handed to another VMM, a
 * new epoch on the same ring, another memslot.
 */
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/wait.h>

#include "t.h"
#include "prog_run.h"

#define RING_P 0xffff888000200000ull /* a ring pointer both VMMs "use" (never read) */
/* Rings whose fields cannot be read (first pages: the reads fail, vCPU index 0). */
#define RING_A 0x1000ull
#define RING_B 0x2000ull

/* Both slots with KVM_MEM_LOG_DIRTY_PAGES. */
static int track(struct pt_tracker *t, pid_t pid, uint32_t *vm)
{
	return track_slots(t, pid, true, vm);
}

/* Every case runs on CPU 0 only: one per-CPU cache for all its pushes (and its children's). */
static int pin_cpu0(void)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(0, &set);
	return sched_setaffinity(0, sizeof(set), &set) ? -errno : 0;
}

/* Every case's start: on CPU 0, a fresh tracker with this process tracked as `*a`. */
static int setup(struct pt_tracker **t, uint32_t *a)
{
	T_REQUIRE(t_need_bpf());
	CHECK(!pin_cpu0());
	return open_tracked(0, getpid(), true, t, a);
}

static int push(struct pt_tracker *t, uint64_t ring, uint64_t slot, uint64_t offset)
{
	uint64_t args[] = { ring, slot, offset };

	return run_prog(t->skel->progs.pt_ring_push, args, 3);
}

static uint64_t gen_get(struct pt_tracker *t)
{
	uint32_t key = PT_GEN;
	uint64_t gen = 0;

	bpf_map__lookup_elem(t->skel->maps.pt_pending, &key, sizeof(key), &gen, sizeof(gen), 0);
	return gen;
}

static int gen_set(struct pt_tracker *t, uint64_t gen)
{
	uint32_t key = PT_GEN;

	return bpf_map__update_elem(t->skel->maps.pt_pending, &key, sizeof(key), &gen, sizeof(gen),
				    0);
}

/*
 * What a tracked VMM does when it creates a vCPU, as far as the tracker sees it: an ioctl
 * KVM_CREATE_VCPU. On /dev/null it fails, after pt_ioctl_enter saw it begin.
 */
static int create_vcpu(void)
{
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	ioctl(fd, PT_KVM_CREATE_VCPU, 0);
	close(fd);
	return 0;
}

/* The ioctl programs only (the raw tracepoints stay detached: pushes are test runs). */
struct ioctl_links {
	struct bpf_link *enter, *exit;
};

static int attach_ioctl_progs(struct pt_tracker *t, struct ioctl_links *l)
{
	l->enter = bpf_program__attach(t->skel->progs.pt_ioctl_enter);
	l->exit = bpf_program__attach(t->skel->progs.pt_ioctl_exit);
	return l->enter && l->exit ? 0 : -1;
}

static void detach_ioctl_progs(struct ioctl_links *l)
{
	bpf_link__destroy(l->enter);
	bpf_link__destroy(l->exit);
}

/*
 * The child: a second VMM whose new vCPU got the memory of a freed one, so that it pushes the
 * very ring pointer the parent pushed last on this CPU. Exit status 0: pushed.
 */
static void __attribute__((noreturn)) other_vmm(struct pt_tracker *t, int go)
{
	char c;

	if (read(go, &c, 1) != 1)
		_exit(2);
	if (create_vcpu())
		_exit(4);
	_exit(push(t, RING_P, 5, 2) ? 3 : 0);
}

/*
 * A ring address comes back under another VM only through a vCPU's creation: the tracked VMM
 * creating it moves the generation, and its first push on the old address is its own. Nothing
 * else tells the cached entry from the new one here (same generation otherwise, the parent's
 * VM index still the parent's, same epoch).
 */
static int reused_ring_pointer_other_vmm(void)
{
	struct ioctl_links l = { 0 };
	struct pt_tracker *t;
	uint32_t a, b;
	int go[2], status;
	pid_t child;

	T_REQUIRE(setup(&t, &a));
	CHECK(!attach_ioctl_progs(t, &l));
	CHECK(!pipe(go));
	child = fork();
	CHECK(child >= 0);
	if (!child)
		other_vmm(t, go[0]);
	if (track(t, child, &b) || push(t, RING_P, 5, 1) || write(go[1], "g", 1) != 1) {
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
		CHECK(0);
	}
	CHECK(waitpid(child, &status, 0) == child);
	CHECKF(WIFEXITED(status) && !WEXITSTATUS(status), "child status %d", status);
	/* Each push in the log of the VMM that made it, nowhere else. */
	CHECK(written(t, a, SLOT_B_GPA + (1 << 12)));
	CHECK(written(t, b, SLOT_B_GPA + (2 << 12)));
	CHECK(count_bits(t, a) == 1);
	CHECK(count_bits(t, b) == 1);
	/* And back: the parent's new vCPU on the same memory pushes into the parent's log. */
	CHECK(!create_vcpu());
	CHECK(!push(t, RING_P, 5, 3));
	CHECK(written(t, a, SLOT_B_GPA + (3 << 12)) && count_bits(t, b) == 1);
	detach_ioctl_progs(&l);
	close(go[0]);
	close(go[1]);
	pt_tracker_close(t);
	return 0;
}

/* A ping-pong of two processes on one CPU: each waits for its turn on `in`, passes on `out`. */
struct turn {
	int in, out;
};

static int take_turn(const struct turn *tu)
{
	char c;

	return read(tu->in, &c, 1) == 1 ? 0 : -1;
}

static int pass_turn(const struct turn *tu)
{
	return write(tu->out, "t", 1) == 1 ? 0 : -1;
}

#define ROUNDS 64

/* Round i: the pushing VM writes slot 5 page `base + i` through its ring. */
static int alternate(struct pt_tracker *t, const struct turn *tu, uint64_t ring, uint64_t base,
		     bool first)
{
	for (unsigned i = 0; i < ROUNDS; i++) {
		if ((!first || i) && take_turn(tu))
			return -1;
		if (push(t, ring, 5, base + i) || pass_turn(tu))
			return -1;
	}
	return 0;
}

static bool pages_exactly(struct pt_tracker *t, uint32_t vm, uint64_t base)
{
	for (unsigned i = 0; i < ROUNDS; i++) {
		if (!written(t, vm, SLOT_B_GPA + ((base + i) << 12)))
			return false;
	}
	return count_bits(t, vm) == ROUNDS;
}

/*
 * Two VMs whose rings alternate on one CPU, push for push: every push finds the other VM's
 * ring in the cache. Each log holds exactly its own VM's pages.
 */
static int two_vms_alternate_on_one_cpu(void)
{
	int ab[2], ba[2], status;
	struct pt_tracker *t;
	uint32_t a, b;
	pid_t child;

	T_REQUIRE(setup(&t, &a));
	CHECK(!pipe(ab) && !pipe(ba));
	child = fork();
	CHECK(child >= 0);
	if (!child) {
		struct turn tu = { ab[0], ba[1] };

		_exit(take_turn(&tu) || alternate(t, &tu, RING_B, 100, true) ? 1 : 0);
	}
	{
		struct turn tu = { ba[0], ab[1] };
		bool ok = !track(t, child, &b) && !alternate(t, &tu, RING_A, 0, true);

		if (!ok)
			kill(child, SIGKILL);
		CHECK(waitpid(child, &status, 0) == child);
		CHECK(ok);
	}
	CHECKF(WIFEXITED(status) && !WEXITSTATUS(status), "child status %d", status);
	CHECK(pages_exactly(t, a, 0));
	CHECK(pages_exactly(t, b, 100));
	CHECK(!pt_vm(t, a)->lost && !pt_vm(t, b)->lost);
	close(ab[0]);
	close(ab[1]);
	close(ba[0]);
	close(ba[1]);
	pt_tracker_close(t);
	return 0;
}

/*
 * A ring never seen, while the cache holds another: pushed by a process that is no tracked
 * VMM, it is logged nowhere and taints nothing; pushed by a tracked VMM, it lands in that
 * VM's log and is noted as the ring's first entry of the epoch.
 */
static void __attribute__((noreturn)) untracked_pusher(struct pt_tracker *t)
{
	_exit(push(t, RING_B, 5, 9) ? 1 : 0);
}

static int ring_state(struct pt_tracker *t, uint32_t vm, struct pt_ring *r);

static int never_seen_ring(void)
{
	struct pt_tracker *t;
	struct pt_ring r;
	uint64_t epoch;
	uint32_t a;
	int status;
	pid_t child;

	T_REQUIRE(setup(&t, &a));
	CHECK(!pt_vm_arm(t, a, &epoch));
	CHECK(!push(t, RING_A, 5, 1));
	child = fork();
	CHECK(child >= 0);
	if (!child)
		untracked_pusher(t);
	CHECK(waitpid(child, &status, 0) == child);
	CHECKF(WIFEXITED(status) && !WEXITSTATUS(status), "child status %d", status);
	CHECK(count_bits(t, a) == 1 && !pt_vm(t, a)->lost);
	CHECK(pt_vm(t, a)->taint_epoch != epoch);
	/* A ring never seen of the tracked VMM (a vCPU that had not written yet). */
	memset(&r, 0, sizeof(r));
	CHECK(!bpf_map__update_elem(t->skel->maps.pt_rings, &(uint32_t){ a * PT_MAX_VCPUS }, 4, &r,
				    sizeof(r), 0));
	CHECK(!push(t, RING_B, 5, 9));
	CHECK(written(t, a, SLOT_B_GPA + (9 << 12)) && count_bits(t, a) == 2);
	CHECK(!ring_state(t, a, &r));
	CHECKF(r.epoch == epoch && r.vm == a + 1, "ring noted in epoch %llu for %u",
	       (unsigned long long)r.epoch, r.vm);
	pt_tracker_close(t);
	return 0;
}

/* Slot 5 first and 64 pages (its bits move to 0), slot 1 second: another table. */
static int track_swapped(struct pt_tracker *t, pid_t pid, uint32_t *vm)
{
	struct pt_slot_cfg slots[] = {
		{ .gpa = SLOT_B_GPA, .size = 64 << 12, .id = 5, .logged = true },
		{ .gpa = SLOT_A_GPA, .size = 64 << 12, .id = 1, .logged = true },
	};
	bool existed;

	return pt_vm_track(t, pid, slots, 2, 0, vm, &existed);
}

/*
 * A VM unregistered (its pushes log nowhere) and registered again, another VMM on its old
 * index meanwhile: the ring
 * it pushed last before goes on in its new VM, at the bits of its new slot table, never in
 * the old index (now the other VMM's) nor at the old bits. Then the same with the VM back on
 * its old index, same tenant and a new table.
 */
static int ring_after_reregister(void)
{
	struct pt_tracker *t;
	uint32_t a, x, c;

	T_REQUIRE(setup(&t, &a));
	CHECK(!push(t, RING_A, 5, 3));
	CHECK(!pt_vm_untrack(t, a));
	/* Not tracked: its ring logs nowhere, the cached entry notwithstanding. */
	CHECK(!push(t, RING_A, 5, 6));
	CHECK(!written(t, a, SLOT_B_GPA + (6 << 12)) && count_bits(t, a) == 1);
	CHECK(!track(t, 1, &x)); /* pid 1 is never this test */
	CHECKF(x == a, "the index was not reused (%u, %u): the case tests nothing", a, x);
	CHECK(!track_swapped(t, getpid(), &c));
	CHECK(c != a);
	CHECK(!push(t, RING_A, 5, 4));
	CHECK(written(t, c, SLOT_B_GPA + (4 << 12)) && count_bits(t, c) == 1);
	CHECK(count_bits(t, x) == 0);
	/* Back on index a with the swapped table: slot 5 now starts at bit 0 of the region. */
	CHECK(!pt_vm_untrack(t, c) && !pt_vm_untrack(t, x));
	CHECK(!track_swapped(t, getpid(), &c));
	CHECKF(c == a, "not back on index %u (%u): the case tests nothing", a, c);
	CHECK(!push(t, RING_A, 5, 5));
	CHECK(written(t, c, SLOT_B_GPA + (5 << 12)) && pt_vm_page_written(t, c, 5));
	CHECK(count_bits(t, c) == 1);
	pt_tracker_close(t);
	return 0;
}

/*
 * A VM index handed to another VMM while a CPU still caches the old owner, and the
 * generation bump not seen (a program that read the generation just before it): the old
 * owner's push must not land in the new owner's log.
 */
static int index_reused_generation_missed(void)
{
	struct pt_tracker *t;
	uint32_t a, x;
	uint64_t gen;

	T_REQUIRE(setup(&t, &a));
	CHECK(!push(t, RING_P, 5, 1));
	CHECK(count_bits(t, a) == 1);
	gen = gen_get(t);
	CHECK(!pt_vm_untrack(t, a));
	CHECK(!track(t, 1, &x)); /* pid 1 is never this test */
	CHECKF(x == a, "the index was not reused (%u, %u): the case tests nothing", a, x);
	CHECK(gen_get(t) != gen);
	CHECK(!gen_set(t, gen));
	CHECK(!push(t, RING_P, 5, 4));
	CHECK(count_bits(t, x) == 0);
	pt_tracker_close(t);
	return 0;
}

static int ring_state(struct pt_tracker *t, uint32_t vm, struct pt_ring *r)
{
	uint32_t key = vm * PT_MAX_VCPUS; /* vcpu 0: the synthetic pointer reads as index 0 */

	return bpf_map__lookup_elem(t->skel->maps.pt_rings, &key, sizeof(key), r, sizeof(*r), 0);
}

/* The ring's first entry is noted once per ring and epoch: a new epoch on the same ring
 * pointer must be noted again, not skipped as already seen. */
static int same_ring_new_epoch_noted(void)
{
	struct pt_tracker *t;
	struct pt_ring r;
	uint64_t epoch;
	uint32_t a;

	T_REQUIRE(setup(&t, &a));
	CHECK(!pt_vm_arm(t, a, &epoch));
	CHECK(!push(t, RING_P, 1, 0));
	CHECK(!ring_state(t, a, &r));
	CHECKF(r.epoch == epoch && r.vm == a + 1, "epoch %llu vm %u", (unsigned long long)r.epoch,
	       r.vm);
	CHECK(!pt_vm_arm(t, a, &epoch));
	CHECK(!push(t, RING_P, 1, 1));
	CHECK(!ring_state(t, a, &r));
	CHECKF(r.epoch == epoch, "ring noted in epoch %llu, current %llu",
	       (unsigned long long)r.epoch, (unsigned long long)epoch);
	CHECK(written(t, a, SLOT_A_GPA + (1 << 12)) && count_bits(t, a) == 1);
	pt_tracker_close(t);
	return 0;
}

/* The cached slot is a guess: a push on another slot (same offset) lands in that slot. */
static int slot_guess_checked(void)
{
	static const struct {
		uint64_t slot, off, gpa;
	} p[] = {
		{ 5, 7, SLOT_B_GPA + (7 << 12) },
		{ 1, 7, SLOT_A_GPA + (7 << 12) },
		{ 5, 8, SLOT_B_GPA + (8 << 12) },
		{ 1, 63, SLOT_A_GPA + (63 << 12) },
	};
	struct pt_tracker *t;
	uint32_t a;

	T_REQUIRE(setup(&t, &a));
	for (unsigned i = 0; i < sizeof(p) / sizeof(p[0]); i++) {
		CHECK(!push(t, RING_P, p[i].slot, p[i].off));
		CHECKF(written(t, a, p[i].gpa), "push %u", i);
	}
	CHECK(count_bits(t, a) == sizeof(p) / sizeof(p[0]));
	/* Past the end of slot 1 (64 pages) after a hit on it: refused (taint), not logged. */
	CHECK(!push(t, RING_P, 1, 64));
	CHECK(count_bits(t, a) == sizeof(p) / sizeof(p[0]));
	CHECK(pt_vm(t, a)->taint_reason & PT_TAINT_GFN_RANGE);
	pt_tracker_close(t);
	return 0;
}

static uint64_t ring_writes(struct pt_tracker *t, uint32_t vm)
{
	struct pt_vm_stats n;

	return pt_vm_stats_get(t, vm, &n) ? ~0ull : n.ring_writes;
}

static int pin_cpu(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set) ? -errno : 0;
}

/*
 * The count of recorded pushes lives in each CPU's cache entry: every recorded push counts
 * once, whichever path logged it (a miss, a hit, another slot, a bit already set), a refused
 * one does not, and a second CPU's pushes add up with the first's.
 */
static int ring_writes_counted_once(void)
{
	uint64_t want = 0, pages = 0;
	struct pt_tracker *t;
	uint32_t a;

	T_REQUIRE(setup(&t, &a));
	for (unsigned i = 0; i < 30; i++, want++, pages++) {
		uint64_t ring = i % 3 ? RING_A : RING_B, slot = i % 5 ? 5 : 1;

		CHECK(!push(t, ring, slot, i));
	}
	CHECK(!push(t, RING_A, 5, 1)); /* its bit is set already: recorded, not new */
	want++;
	CHECK(!push(t, RING_A, 1, 64)); /* past slot 1: refused */
	CHECKF(ring_writes(t, a) == want, "%llu counted, %llu recorded",
	       (unsigned long long)ring_writes(t, a), (unsigned long long)want);
	CHECK(t->cpus[0].ring_writes[a] == want);
	if (t->ncpu > 1 && !pin_cpu(1)) {
		for (unsigned i = 0; i < 5; i++, want++, pages++)
			CHECK(!push(t, RING_A, 5, 100 + i));
		CHECK(!pin_cpu(0));
		CHECK(t->cpus[1].ring_writes[a] == 5);
		CHECKF(ring_writes(t, a) == want, "%llu counted, %llu recorded",
		       (unsigned long long)ring_writes(t, a), (unsigned long long)want);
	}
	CHECK(count_bits(t, a) == pages);
	pt_tracker_close(t);
	return 0;
}

/* A VM index handed to another VMM, or to the same one again, counts from zero. */
static int ring_writes_zero_for_new_tenant(void)
{
	struct pt_tracker *t;
	uint32_t a, x;

	T_REQUIRE(setup(&t, &a));
	for (unsigned i = 0; i < 3; i++)
		CHECK(!push(t, RING_A, 5, i));
	CHECK(ring_writes(t, a) == 3);
	CHECK(!pt_vm_untrack(t, a));
	CHECK(!track(t, 1, &x)); /* pid 1 is never this test */
	CHECKF(x == a, "the index was not reused (%u, %u): the case tests nothing", a, x);
	CHECK(ring_writes(t, x) == 0);
	CHECK(!pt_vm_untrack(t, x));
	CHECK(!track(t, getpid(), &x) && x == a);
	CHECK(ring_writes(t, a) == 0);
	CHECK(!push(t, RING_A, 5, 7) && !push(t, RING_A, 5, 8));
	CHECK(ring_writes(t, a) == 2);
	pt_tracker_close(t);
	return 0;
}

static struct pt_tracker *open_pinned(const char *dir)
{
	struct pt_loader_opts o = { .pin_dir = dir, .tdp = 0, .no_attach = true, .log_mb = 1 };
	struct pt_tracker *t = NULL;

	return pt_tracker_open(&t, &o) ? NULL : t;
}

static int count_across_restart(const char *dir)
{
	struct pt_tracker *t = open_pinned(dir);
	uint32_t a, again;

	CHECK(t);
	if (track(t, getpid(), &a)) {
		pt_tracker_close(t);
		CHECK(0);
	}
	for (unsigned i = 0; i < 4; i++)
		CHECK(!push(t, RING_A, 5, i));
	pt_tracker_close(t);
	t = open_pinned(dir);
	CHECK(t && t->reused_maps);
	CHECK(!pt_vm_find(t, getpid(), &again) && again == a);
	CHECKF(ring_writes(t, a) == 4, "%llu after the restart",
	       (unsigned long long)ring_writes(t, a));
	CHECK(!push(t, RING_A, 5, 4));
	CHECK(ring_writes(t, a) == 5);
	pt_tracker_close(t);
	return 0;
}

/* The counts are in pinned maps like every other counter: a restart of the service keeps them. */
static int ring_writes_survive_restart(void)
{
	char dir[64];
	int rc;

	T_REQUIRE(t_need_bpf());
	CHECK(!pin_cpu0());
	snprintf(dir, sizeof(dir), "/sys/fs/bpf/pt-test-ring-cache-%d", (int)getpid());
	rc = count_across_restart(dir);
	CHECK(!pt_tracker_unpin(dir));
	return rc;
}

T_MAIN(T_CASE(reused_ring_pointer_other_vmm), T_CASE(two_vms_alternate_on_one_cpu),
       T_CASE(never_seen_ring), T_CASE(ring_after_reregister),
       T_CASE(index_reused_generation_missed), T_CASE(same_ring_new_epoch_noted),
       T_CASE(slot_guess_checked), T_CASE(ring_writes_counted_once),
       T_CASE(ring_writes_zero_for_new_tenant), T_CASE(ring_writes_survive_restart))
