// SPDX-License-Identifier: GPL-2.0
/*
 * The coverage canary's verdict on this machine. Guests here run under a shadow-paging KVM
 * (no EPT/NPT): dirty-ring pushes reach BPF, write faults do not, so the dirty ring must be
 * "tracked" and bitmap mode "NOT tracked". On a TDP host without PML bitmap mode may be
 * tracked; the test only demands what it can know.
 */
#include "t.h"
#include "writelog/canary.h"
#include "vmm/minivm.h"

static int canary_verdict_here(void)
{
	struct pt_loader_opts o = { .tdp = -1, .no_pin = true, .log_mb = 4 };
	struct pt_tracker *t;
	struct pt_coverage cov;
	char buf[400];

	T_REQUIRE(t_need_kvm());
	T_REQUIRE(t_need_bpf());
	if (minivm_supported(MINIVM_DIRTY_RING))
		return t_skip("KVM has no dirty ring");
	CHECK(!pt_tracker_open(&t, &o));
	CHECK(!pt_canary_run(t, &cov));
	printf("  coverage: %s\n", pt_coverage_str(&cov, buf, sizeof(buf)));
	CHECK(cov.mode[PT_DIRTY_RING] == PT_COV_TRACKED);
	CHECK(pt_coverage_tracked(&cov, PT_DIRTY_RING));
	if (!pt_host_tdp()) {
		CHECK(cov.mode[PT_DIRTY_BITMAP] == PT_COV_NOT_TRACKED);
		CHECK(strstr(buf, "bitmap: NOT tracked (no write faults seen"));
	}
	/* The canary leaves no VM behind. */
	for (int i = 0; i < PT_MAX_VMS; i++)
		CHECK(!(t->vms[i].flags & PT_VM_ACTIVE));
	pt_tracker_close(t);
	return 0;
}

T_MAIN(T_CASE(canary_verdict_here))
