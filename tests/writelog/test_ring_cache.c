// SPDX-License-Identifier: GPL-2.0
/*
 * The per-CPU cache of the kvm_dirty_ring_push program (pt_ring_push), driven through
 * BPF_PROG_TEST_RUN with synthetic arguments on one pinned CPU, so that every push of a case
 * meets the cache the previous one left. The cache may only ever save work: a push must land
 * in the log of the VM that made it, whatever the cache holds. The cases are the ways a cached
 * entry goes stale: the same `ring` pointer pushed by another VMM (a freed vcpu's memory
 * reused), a VM index handed to another VMM, a new epoch on the same ring, another memslot.
 */
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "t.h"
#include "prog_run.h"

#define RING_P 0xffff888000200000ull /* a ring pointer both VMMs "use" (never read) */

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
 * The child: a second VMM (its own tgid) pushing the very ring pointer the parent pushed last
 * on this CPU, as a vcpu allocated where a freed one was would. Exit status 0: pushed.
 */
static void __attribute__((noreturn)) other_vmm(struct pt_tracker *t, int go)
{
	char c;

	if (read(go, &c, 1) != 1)
		_exit(2);
	_exit(push(t, RING_P, 5, 2) ? 3 : 0);
}

static int reused_ring_pointer_other_vmm(void)
{
	struct pt_tracker *t;
	uint32_t a, b;
	int go[2], status;
	pid_t child;

	T_REQUIRE(setup(&t, &a));
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
	/* And back: the parent's next push on the same pointer is its own again. */
	CHECK(!push(t, RING_P, 5, 3));
	CHECK(written(t, a, SLOT_B_GPA + (3 << 12)) && count_bits(t, b) == 1);
	close(go[0]);
	close(go[1]);
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

T_MAIN(T_CASE(reused_ring_pointer_other_vmm), T_CASE(index_reused_generation_missed),
       T_CASE(same_ring_new_epoch_noted), T_CASE(slot_guess_checked))
