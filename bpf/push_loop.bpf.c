// SPDX-License-Identifier: GPL-2.0
/*
 * For `pagetrackd bench` only, never attached: pt_ring_push's code run push_loop_n times
 * back to back inside one program run (bpf_loop), beside the same loop doing nothing. One
 * BPF_PROG_TEST_RUN is one syscall, and on a host whose syscalls flush the TLB (page table
 * isolation without PCID) each test run pays a first touch of every page it reads; pushes
 * that KVM makes in a row (one vCPU's ring, one exit) do not. The difference of the two loops
 * per iteration is the push's own cost when its memory is warm. The bench reuses the loaded
 * tracker's maps, so these pushes meet the same cache and VM.
 */
#include "writelog.bpf.c"

/* Pushes per run (the bench reads it from here). */
const volatile __u32 push_loop_n = 1024;

struct push_args {
	unsigned long long *ctx;
	__u64 ring, slot, offset;
};

static long push_one(__u32 i, void *data)
{
	struct push_args *a = data;

	____pt_ring_push(a->ctx, (struct kvm_dirty_ring *)a->ring, a->slot, a->offset + i);
	return 0;
}

static long nothing(__u32 i, void *data)
{
	return 0;
}

/* Pushes of `ring`, slot `slot`, offsets offset .. offset + push_loop_n - 1. */
SEC("raw_tp/kvm_dirty_ring_push")
int BPF_PROG(bench_push_loop, struct kvm_dirty_ring *ring, u32 slot, u64 offset)
{
	struct push_args a = { ctx, (__u64)ring, slot, offset };

	bpf_loop(push_loop_n, push_one, &a, 0);
	return 0;
}

SEC("raw_tp/kvm_dirty_ring_push")
int BPF_PROG(bench_empty_loop, struct kvm_dirty_ring *ring, u32 slot, u64 offset)
{
	struct push_args a = { ctx, (__u64)ring, slot, offset };

	bpf_loop(push_loop_n, nothing, &a, 0);
	return 0;
}
