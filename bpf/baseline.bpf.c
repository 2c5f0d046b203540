// SPDX-License-Identifier: GPL-2.0
/*
 * Empty programs on the tracepoints writelog.bpf.c uses: the baseline that `pagetrackd bench`
 * and the tracker's cost test compare run time per event against (kernel.bpf_stats_enabled).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

SEC("raw_tp/kvm_dirty_ring_push")
int BPF_PROG(empty_ring_push)
{
	return 0;
}

SEC("raw_tp/kvm_page_fault")
int BPF_PROG(empty_page_fault)
{
	return 0;
}

SEC("tp/syscalls/sys_enter_ioctl")
int empty_ioctl_enter(void *ctx)
{
	return 0;
}

SEC("tp/syscalls/sys_exit_ioctl")
int empty_ioctl_exit(void *ctx)
{
	return 0;
}
