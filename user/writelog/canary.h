/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The coverage canary: at start-up the service runs its own tiny KVM guest (minivm) in each
 * dirty-logging mode, has it write known pages, and compares what the BPF programs logged
 * with KVM's own dirty log. A mode is "tracked" only if the two agree; VMs using a mode that
 * is not tracked never get a page confirmed free.
 */
#ifndef PT_CANARY_H
#define PT_CANARY_H

#include <stdbool.h>
#include <stddef.h>

#include "loader.h"
#include "pagetrack/proto.h"

enum pt_cov {
	PT_COV_UNKNOWN = 0, /* canary not run */
	PT_COV_TRACKED,	    /* BPF log == KVM's log */
	PT_COV_NOT_TRACKED, /* BPF missed writes KVM saw */
	PT_COV_UNAVAILABLE, /* KVM cannot run this mode here */
	PT_COV_ERROR,	    /* the canary itself failed */
};

struct pt_coverage {
	enum pt_cov mode[2]; /* indexed by enum pt_dirty_mode */
	char why[2][160];
	/* The userfaultfd write log (PT_TRACK_UFFD), checked by canary_uffd.c. */
	enum pt_cov uffd;
	bool uffd_host_only; /* tracked, but only the host's writes could be checked (no KVM) */
	char uffd_why[160];
};

int pt_canary_run(struct pt_tracker *t, struct pt_coverage *cov);
/*
 * The userfaultfd canary (run by pt_canary_run()): a minivm guest with dirty logging off writes
 * known pages of write-protected memory, and the uffd log must report exactly those. Without
 * KVM this process writes its own registered mapping instead: "tracked", host writes only.
 */
void pt_canary_uffd(struct pt_coverage *cov);
bool pt_coverage_tracked(const struct pt_coverage *cov, enum pt_dirty_mode mode);
/* "dirty-ring: tracked; bitmap: NOT tracked (...); uffd-wp: tracked" */
const char *pt_coverage_str(const struct pt_coverage *cov, char *buf, size_t len);
const char *pt_cov_name(enum pt_cov c);

#endif
