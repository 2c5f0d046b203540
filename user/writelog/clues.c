// SPDX-License-Identifier: GPL-2.0
/* The decision shared by the VM-creation and 32-bit records (clues.h). */
#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <bpf/libbpf.h>

#include "clues.h"
#include "loader.h"
#include "shared/procfs.h"
#include "writelog.h"

bool pt_clues_decide(int recorded, bool after_since, int proc, const struct pt_clue_why *w,
		     const char **why)
{
	if (recorded > 0) {
		*why = w->recorded;
		return true;
	}
	if (proc > 0) {
		*why = w->proc_yes;
		return true;
	}
	if (after_since && !recorded) {
		*why = w->covered;
		return false;
	}
	if (!proc) {
		*why = w->proc_no;
		return false;
	}
	*why = after_since ? w->unreadable : w->before;
	return true;
}

/* 1 if the process behind `pidfd` has an entry in `m`, 0 if not, -1 if the map cannot say. */
static int task_recorded(struct bpf_map *m, int pidfd)
{
	unsigned char v[64];

	if (bpf_map__value_size(m) > sizeof(v))
		return -1;
	if (!bpf_map__lookup_elem(m, &pidfd, sizeof(pidfd), v, bpf_map__value_size(m), 0))
		return 1;
	return errno == ENOENT ? 0 : -1;
}

int pt_pid_recorded(struct bpf_map *m, uint32_t pid, uint64_t start)
{
	int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0), r = -1;
	uint64_t again;

	/* The pidfd names the process of that start time only if the pid still has it. */
	if (pidfd >= 0 && !pt_proc_start_time(pid, &again) && again == start)
		r = task_recorded(m, pidfd);
	if (pidfd >= 0)
		close(pidfd);
	return r;
}

int pt_clues_gather(uint32_t pid, struct bpf_map *record, struct bpf_map *since,
		    int (*proc_says)(uint32_t pid), int *recorded, bool *after, int *proc)
{
	uint64_t start, again;

	*recorded = -1;
	*after = false;
	*proc = -1;
	if (pt_proc_start_time(pid, &start))
		return -ESRCH;
	*recorded = pt_pid_recorded(record, pid, start);
	*after = pt_started_after_since(since, start);
	if (*recorded < 0 || (!*recorded && !*after))
		*proc = proc_says(pid);
	/* The answers are of the process of that start time only if the pid still has it. */
	if (pt_proc_start_time(pid, &again) || again != start) {
		*recorded = -1;
		*after = false;
		*proc = -1;
		return -ESRCH;
	}
	return 0;
}

bool pt_started_after_since(struct bpf_map *m, uint64_t ticks)
{
	uint32_t k_since = PT_CREATED_SINCE, k_lost = PT_CREATED_LOST;
	uint64_t since = 0, lost = 0;
	long hz = sysconf(_SC_CLK_TCK);

	if (hz <= 0 || !pt_boottime_ns() ||
	    bpf_map__lookup_elem(m, &k_since, sizeof(k_since), &since, sizeof(since), 0) ||
	    bpf_map__lookup_elem(m, &k_lost, sizeof(k_lost), &lost, sizeof(lost), 0) || !since)
		return false;
	if (lost > since)
		since = lost;
	return ticks * (1000000000ull / (uint64_t)hz) > since;
}
