// SPDX-License-Identifier: GPL-2.0
/*
 * The coverage canary's verdict on this machine. Guests here run under a shadow-paging KVM
 * (no EPT/NPT): dirty-ring pushes reach BPF, write faults do not, so the dirty ring must be
 * "tracked" and bitmap mode "NOT tracked". On a TDP host without PML bitmap mode may be
 * tracked; the test only demands what it can know.
 */
#include "t.h"
#include "writelog/canary.h"
#include "guest.h"

static int canary_verdict_here(void)
{
	struct pt_loader_opts o = { .tdp = -1, .no_pin = true, .log_mb = 4 };
	struct pt_tracker *t;
	struct pt_coverage cov;
	char buf[400];

	T_REQUIRE(need_ring_guest());
	CHECK(!pt_tracker_open(&t, &o));
	CHECK(!pt_canary_run(t, &cov));
	printf("  coverage: %s\n", pt_coverage_str(&cov, buf, sizeof(buf)));
	CHECK(cov.mode[PT_DIRTY_RING] == PT_COV_TRACKED);
	CHECK(pt_coverage_tracked(&cov, PT_DIRTY_RING));
	if (!pt_host_tdp()) {
		CHECK(cov.mode[PT_DIRTY_BITMAP] == PT_COV_NOT_TRACKED);
		CHECK(strstr(buf, "bitmap: NOT tracked (no write faults seen"));
	}
	/* With KVM the uffd canary must have checked a real guest's writes. */
	CHECKF(cov.uffd == PT_COV_TRACKED && !cov.uffd_host_only, "%s", buf);
	CHECK(strstr(buf, "; uffd-wp: tracked") && !strstr(buf, "host writes only"));
	/* The canary leaves no VM behind. */
	for (int i = 0; i < PT_MAX_VMS; i++)
		CHECK(!(t->vms[i].flags & PT_VM_ACTIVE));
	pt_tracker_close(t);
	return 0;
}

/*
 * The userfaultfd canary runs everywhere: with KVM a guest without dirty logging writes, without
 * it this process writes its own registered memory, and says so.
 */
static int uffd_canary_here(void)
{
	struct pt_coverage cov = { 0 };
	int no_kvm = minivm_supported(MINIVM_DIRTY_NONE);
	char buf[400];

	pt_canary_uffd(&cov);
	pt_coverage_str(&cov, buf, sizeof(buf));
	printf("  coverage: %s\n", buf);
	CHECKF(cov.uffd == PT_COV_TRACKED, "%s", cov.uffd_why);
	CHECK(cov.uffd_host_only == !!no_kvm);
	if (no_kvm == -ENODEV || no_kvm == -ENOENT) /* no /dev/kvm */
		CHECK(strstr(buf, "; uffd-wp: tracked (host writes only: no /dev/kvm)"));
	else if (!no_kvm)
		CHECK(strstr(buf, "; uffd-wp: tracked") && !strstr(buf, "host writes only"));
	return 0;
}

/* Whatever failed is named on the coverage line, and never reads as tracked. */
static int uffd_line_not_tracked(void)
{
	struct pt_coverage cov = { .uffd = PT_COV_NOT_TRACKED };
	char buf[400];

	snprintf(cov.uffd_why, sizeof(cov.uffd_why), "uffd log saw 63 of 64 host writes");
	pt_coverage_str(&cov, buf, sizeof(buf));
	CHECKF(strstr(buf, "; uffd-wp: NOT tracked (uffd log saw 63 of 64 host writes)"), "%s",
	       buf);
	cov.uffd = PT_COV_UNKNOWN;
	cov.uffd_why[0] = 0;
	CHECK(strstr(pt_coverage_str(&cov, buf, sizeof(buf)), "; uffd-wp: unknown"));
	return 0;
}

T_MAIN(T_CASE(canary_verdict_here), T_CASE(uffd_canary_here), T_CASE(uffd_line_not_tracked))
