/* SPDX-License-Identifier: GPL-2.0 */
/*
 * For cases that run a minivm guest with a dirty ring (user/vmm/minivm.h) under the write
 * tracker: skip, with the reason, where KVM, BPF or KVM's dirty ring is missing. Include
 * after t.h.
 */
#ifndef PT_TESTS_GUEST_H
#define PT_TESTS_GUEST_H

#include "vmm/minivm.h"

static inline int need_ring_guest(void)
{
	T_REQUIRE(t_need_kvm());
	T_REQUIRE(t_need_bpf());
	if (minivm_supported(MINIVM_DIRTY_RING))
		return t_skip("KVM has no dirty ring");
	return 0;
}

#endif
