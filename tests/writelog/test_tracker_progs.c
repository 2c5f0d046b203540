// SPDX-License-Identifier: GPL-2.0
/*
 * The write tracker's BPF programs driven through BPF_PROG_TEST_RUN with synthetic
 * tracepoint arguments. This is how the paths that cannot fire on the project's machines
 * (write faults under TDP: guests here use shadow paging, so kvm_page_fault carries no GPA
 * and no write faults reach it) are tested, together with the taint paths of the dirty-ring
 * program. The test process itself is registered as the "VMM", so bpf_get_current_pid_tgid()
 * inside the programs matches.
 */
#include <stdlib.h>

#include "t.h"
#include "prog_run.h"

static struct pt_vm_stats stats(struct pt_tracker *t, uint32_t vm)
{
	struct pt_vm_stats n;

	if (pt_vm_stats_get(t, vm, &n))
		memset(&n, 0xff, sizeof(n));
	return n;
}

static bool tainted(struct pt_tracker *t, uint32_t vm, uint32_t why)
{
	struct pt_vm_state *st = pt_vm(t, vm);

	return pt_epoch_tainted(st, st->epoch) && (st->taint_reason & why);
}

static int ring_push_records_page(void)
{
	struct pt_tracker *t;
	uint64_t args[] = { 0, 5, 17 }; /* ring, slot 5, offset 17 */
	uint32_t vm;

	T_REQUIRE(open_tracked(0, getpid(), false, &t, &vm));
	CHECK(!run_prog(t->skel->progs.pt_ring_push, args, 3));
	CHECK(written(t, vm, SLOT_B_GPA + (17 << 12)) && count_bits(t, vm) == 1);
	CHECK(stats(t, vm).ring_writes == 1 && !tainted(t, vm, ~0u));
	pt_tracker_close(t);
	return 0;
}

static int ring_push_unknown_slot_taints(void)
{
	struct pt_tracker *t;
	uint64_t args[] = { 0, 7, 0 }, range[] = { 0, 1, 64 }; /* slot 1 has 64 pages */
	uint32_t vm;

	T_REQUIRE(open_tracked(0, getpid(), false, &t, &vm));
	CHECK(!run_prog(t->skel->progs.pt_ring_push, args, 3));
	CHECK(tainted(t, vm, PT_TAINT_UNKNOWN_SLOT));
	CHECK(!run_prog(t->skel->progs.pt_ring_push, range, 3));
	CHECK(tainted(t, vm, PT_TAINT_GFN_RANGE));
	CHECK(pt_vm(t, vm)->lost == 2);
	CHECK(count_bits(t, vm) == 0);
	/* A new epoch starts clean: the taint belongs to the old one. */
	{
		uint64_t epoch;

		CHECK(!pt_vm_arm(t, vm, &epoch));
		CHECK(!tainted(t, vm, ~0u));
	}
	pt_tracker_close(t);
	return 0;
}

/*
 * A taint whose compare-and-swaps all lose (here: none is tried) must not be stored plainly,
 * which could lower a newer epoch's mark: it marks every epoch, this one and the next.
 */
static int taint_kept_when_raise_gives_up(void)
{
	struct pt_loader_opts o = {
		.no_attach = true, .no_pin = true, .log_mb = 1, .raise_gives_up = true
	};
	uint64_t args[] = { 0, 7, 0 }, epoch; /* slot 7 is unknown: a taint */
	struct pt_tracker *t = NULL;
	uint32_t vm;

	T_REQUIRE(t_need_bpf());
	CHECK(!pt_tracker_open(&t, &o));
	CHECK(!track_slots(t, getpid(), true, &vm));
	CHECK(!run_prog(t->skel->progs.pt_ring_push, args, 3));
	CHECKF(pt_vm(t, vm)->taint_epoch == ~0ull &&
		       pt_epoch_tainted(pt_vm(t, vm), pt_vm(t, vm)->epoch),
	       "taint_epoch %#llx", (unsigned long long)pt_vm(t, vm)->taint_epoch);
	CHECK(!pt_vm_arm(t, vm, &epoch));
	CHECK(pt_epoch_tainted(pt_vm(t, vm), epoch));
	/* Userspace's taint raises too: it leaves all ones. */
	pt_vm_taint(t, vm, PT_TAINT_USER);
	CHECK(pt_vm(t, vm)->taint_epoch == ~0ull);
	/* The next VM on this index starts untainted. */
	CHECK(!pt_vm_untrack(t, vm));
	CHECK(!track_slots(t, getpid(), true, &vm));
	CHECK(!pt_epoch_tainted(pt_vm(t, vm), pt_vm(t, vm)->epoch));
	pt_tracker_close(t);
	return 0;
}

static int untracked_process_ignored(void)
{
	uint64_t args[] = { 0, 5, 3 }, fault[] = { 0, SLOT_A_GPA, 2 };
	struct pt_tracker *t;
	uint32_t vm;

	T_REQUIRE(open_tracked(1, getpid(), false, &t, &vm));
	CHECK(!pt_vm_untrack(t, vm));
	CHECK(!run_prog(t->skel->progs.pt_ring_push, args, 3));
	CHECK(!run_prog(t->skel->progs.pt_page_fault, fault, 3));
	CHECK(count_bits(t, vm) == 0);
	CHECK(pt_vm(t, vm)->lost == 0 && stats(t, vm).ring_writes == 0);
	pt_tracker_close(t);
	return 0;
}

static int tdp_write_fault_records_gpa(void)
{
	uint64_t wr[] = { 0, SLOT_A_GPA + (3 << 12) + 0x123, 0x2 | 0x1 };
	uint64_t rd[] = { 0, SLOT_A_GPA + (4 << 12), 0x1 };
	uint64_t out[] = { 0, 8ull << 30, 0x2 };
	struct pt_tracker *t;
	uint32_t vm;

	T_REQUIRE(open_tracked(1, getpid(), false, &t, &vm));
	CHECK(!run_prog(t->skel->progs.pt_page_fault, wr, 3));
	CHECK(!run_prog(t->skel->progs.pt_page_fault, rd, 3));
	CHECK(written(t, vm, SLOT_A_GPA + (3 << 12)));
	CHECK(!written(t, vm, SLOT_A_GPA + (4 << 12)));
	CHECK(count_bits(t, vm) == 1);
	CHECK(stats(t, vm).fault_writes == 1);
	CHECK(!tainted(t, vm, ~0u));
	/* A GPA outside every memslot: the write cannot be placed, so the epoch is tainted. */
	CHECK(!run_prog(t->skel->progs.pt_page_fault, out, 3));
	CHECK(tainted(t, vm, PT_TAINT_GFN_RANGE));
	pt_tracker_close(t);
	return 0;
}

/*
 * A memslot change has its own epoch mark: a userfaultfd-mode verdict depends on that taint
 * alone, and the reason bits of older epochs stay OR-ed in. A write fault outside the
 * registered slots (a slot the device left out) in a later epoch taints that epoch, but says
 * nothing of a memslot change in it.
 */
static int slot_change_has_its_own_epoch(void)
{
	uint64_t out[] = { 0, 8ull << 30, 0x2 }, epoch;
	struct pt_tracker *t;
	uint32_t vm;

	T_REQUIRE(open_tracked(1, getpid(), false, &t, &vm));
	CHECK(!pt_vm_slots_changed(t, vm));
	pt_vm_taint(t, vm, PT_TAINT_SLOT_CHANGE);
	CHECK(pt_vm_slots_changed(t, vm) && tainted(t, vm, PT_TAINT_SLOT_CHANGE));
	CHECK(!pt_vm_arm(t, vm, &epoch));
	CHECK(!pt_vm_slots_changed(t, vm));
	CHECK(!run_prog(t->skel->progs.pt_page_fault, out, 3));
	CHECK(tainted(t, vm, PT_TAINT_GFN_RANGE));
	CHECKF(!pt_vm_slots_changed(t, vm),
	       "a GFN_RANGE taint counted as a memslot change "
	       "(reason bits 0x%x)",
	       pt_vm(t, vm)->taint_reason);
	pt_tracker_close(t);
	return 0;
}

static int no_tdp_fault_path_off(void)
{
	uint64_t wr[] = { 0, SLOT_A_GPA + (3 << 12), 0x2 };
	struct pt_tracker *t;
	uint32_t vm;

	T_REQUIRE(open_tracked(0, getpid(), false, &t, &vm));
	/* Under shadow paging the address is a GVA: it must not be logged as a GPA. */
	CHECK(!run_prog(t->skel->progs.pt_page_fault, wr, 3));
	CHECK(count_bits(t, vm) == 0);
	CHECK(stats(t, vm).faults_ignored == 1);
	CHECK(!tainted(t, vm, ~0u));
	pt_tracker_close(t);
	return 0;
}

static int arm_clears_only_own_region(void)
{
	uint64_t args[] = { 0, 1, 9 };
	struct pt_tracker *t;
	uint32_t vm1, vm2;
	uint64_t epoch, before;
	bool existed;
	struct pt_slot_cfg other = { .gpa = 0, .size = 128 << 12, .id = 1 };

	T_REQUIRE(open_tracked(0, getpid(), false, &t, &vm1));
	/* A second VM (another tgid) whose bits must survive vm1's arm. */
	CHECK(!pt_vm_track(t, 1, &other, 1, 0, &vm2, &existed));
	CHECK(vm1 != vm2);
	CHECK(t->vms[vm1].log_bit_base + t->vms[vm1].log_bits <= t->vms[vm2].log_bit_base ||
	      t->vms[vm2].log_bit_base + t->vms[vm2].log_bits <= t->vms[vm1].log_bit_base);
	t->log[t->vms[vm2].log_bit_base / 64] = 0x5;
	CHECK(!run_prog(t->skel->progs.pt_ring_push, args, 3));
	CHECK(written(t, vm1, SLOT_A_GPA + (9 << 12)));
	before = pt_vm(t, vm1)->epoch;
	CHECK(!pt_vm_arm(t, vm1, &epoch));
	CHECK(epoch == before + 1);
	CHECK(count_bits(t, vm1) == 0);
	CHECK(pt_vm_log_word(t, vm2, 0) == 0x5);
	pt_tracker_close(t);
	return 0;
}

/*
 * kvm_dirty_ring_reset with synthetic state: the ring pointer is NULL, so the program reads
 * vCPU 0, reset_index 0 and dirty_index 0; the ring's first entry of the epoch is planted in
 * pt_rings (unless first_idx < 0: the ring keeps what it noted before), and the ioctl in
 * flight in pt_ioctl (as sys_enter_ioctl would have recorded it).
 * A reset that leaves pre-arm entries marks the ioctl incomplete: not the sync, but no taint
 * and no lost event. A reset past every pre-arm entry leaves the ioctl complete.
 */
static int ring_reset_verdict(struct pt_tracker *t, uint32_t vm, int64_t first_idx,
			      uint32_t *incomplete)
{
	uint64_t id = (uint64_t)getpid() << 32 | (uint32_t)gettid(), args[] = { 0 };
	struct pt_ring r = { .epoch = pt_vm(t, vm)->epoch,
			     .first_idx = (uint32_t)first_idx,
			     .vm = vm + 1 };
	struct pt_ioctl io = { .cmd = PT_KVM_RESET_DIRTY_RINGS,
			       .vm = vm,
			       .tgid = getpid(),
			       .epoch = pt_vm(t, vm)->epoch };
	uint32_t key = vm * PT_MAX_VCPUS;

	if ((first_idx >= 0 &&
	     bpf_map__update_elem(t->skel->maps.pt_rings, &key, sizeof(key), &r, sizeof(r), 0)) ||
	    bpf_map__update_elem(t->skel->maps.pt_ioctl, &id, sizeof(id), &io, sizeof(io), 0) ||
	    run_prog(t->skel->progs.pt_ring_reset, args, 1) ||
	    bpf_map__lookup_elem(t->skel->maps.pt_ioctl, &id, sizeof(id), &io, sizeof(io), 0))
		return -1;
	*incomplete = io.incomplete;
	return bpf_map__delete_elem(t->skel->maps.pt_ioctl, &id, sizeof(id), 0);
}

static int ring_reset_incomplete_is_not_a_loss(void)
{
	struct pt_tracker *t;
	uint32_t vm, inc;
	uint64_t epoch;

	T_REQUIRE(open_tracked(0, getpid(), false, &t, &vm));
	CHECK(!pt_vm_arm(t, vm, &epoch));
	/* First entry of the epoch at index 5: entries 0..4 predate the arm, reset_index is 0. */
	CHECK(!ring_reset_verdict(t, vm, 5, &inc));
	CHECK(inc == 1);
	CHECK(!tainted(t, vm, ~0u) && pt_vm(t, vm)->lost == 0);
	/* Reset up to the epoch's first entry: every pre-arm entry was reset, the ioctl is whole.
	 */
	CHECK(!ring_reset_verdict(t, vm, 0, &inc));
	CHECK(inc == 0);
	CHECK(!tainted(t, vm, ~0u) && pt_vm(t, vm)->lost == 0);
	/* An entry noted in an older epoch says nothing now: the ring must be reset to its end
	 * (dirty_index, 0 here), which it is. */
	CHECK(!pt_vm_arm(t, vm, &epoch));
	CHECK(!ring_reset_verdict(t, vm, -1, &inc));
	CHECK(inc == 0);
	CHECK(pt_vm(t, vm)->lost == 0);
	pt_tracker_close(t);
	return 0;
}

T_MAIN(T_CASE(ring_push_records_page), T_CASE(ring_push_unknown_slot_taints),
       T_CASE(taint_kept_when_raise_gives_up), T_CASE(untracked_process_ignored),
       T_CASE(tdp_write_fault_records_gpa), T_CASE(no_tdp_fault_path_off),
       T_CASE(arm_clears_only_own_region), T_CASE(ring_reset_incomplete_is_not_a_loss),
       T_CASE(slot_change_has_its_own_epoch))
