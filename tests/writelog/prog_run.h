/* SPDX-License-Identifier: GPL-2.0 */
/*
 * For tests that drive the write tracker's BPF programs through BPF_PROG_TEST_RUN with
 * synthetic arguments: a tracker loaded but neither attached nor pinned, a VMM tracked with
 * two slots, and what its write log holds. Include after t.h.
 */
#ifndef PT_TESTS_PROG_RUN_H
#define PT_TESTS_PROG_RUN_H

#include <stdbool.h>
#include <stdint.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "writelog/loader.h"
#include "writelog/vmlog.h"
#include "writelog.skel.h"

#define SLOT_A_GPA (1ull << 20)
#define SLOT_B_GPA (4ull << 30)

static inline struct pt_tracker *open_tracker(int tdp)
{
	struct pt_loader_opts o = { .tdp = tdp, .no_attach = true, .no_pin = true, .log_mb = 1 };
	struct pt_tracker *t = NULL;

	if (pt_tracker_open(&t, &o))
		return NULL;
	return t;
}

/* Tracks `pid` with slot 1: 64 pages at SLOT_A_GPA and slot 5: 256 pages at SLOT_B_GPA. */
static inline int track_slots(struct pt_tracker *t, pid_t pid, bool logged, uint32_t *vm)
{
	struct pt_slot_cfg slots[] = {
		{ .gpa = SLOT_A_GPA, .size = 64 << 12, .id = 1, .logged = logged },
		{ .gpa = SLOT_B_GPA, .size = 256 << 12, .id = 5, .logged = logged },
	};
	bool existed;

	return pt_vm_track(t, pid, slots, 2, 0, vm, &existed);
}

/* A case's start: BPF, a fresh tracker (open_tracker(tdp)) with `pid` tracked as `*vm`. */
static inline int open_tracked(int tdp, pid_t pid, bool logged, struct pt_tracker **t, uint32_t *vm)
{
	int err;

	T_REQUIRE(t_need_bpf());
	*t = open_tracker(tdp);
	CHECK(*t);
	err = track_slots(*t, pid, logged, vm);
	if (err)
		pt_tracker_close(*t);
	CHECKF(!err, "tracking pid %d: %s", (int)pid, strerror(-err));
	return 0;
}

static inline int run_prog(struct bpf_program *prog, const uint64_t *args, size_t n)
{
	LIBBPF_OPTS(bpf_test_run_opts, o, .ctx_in = args, .ctx_size_in = n * sizeof(*args));

	return bpf_prog_test_run_opts(bpf_program__fd(prog), &o);
}

/* The page at `gpa` is in the VM's write log. */
static inline bool written(struct pt_tracker *t, uint32_t vm, uint64_t gpa)
{
	struct pt_vm_slots sl;
	uint64_t page;

	if (pt_vm_slots_get(t, vm, &sl) || pt_slots_page(&sl, gpa >> 12, &page))
		return false;
	return pt_vm_page_written(t, vm, page);
}

/* Pages in the VM's write log. */
static inline uint64_t count_bits(struct pt_tracker *t, uint32_t vm)
{
	uint64_t n = 0;

	for (uint64_t w = 0; w < (t->vms[vm].log_bits + 63) / 64; w++)
		n += __builtin_popcountll(pt_vm_log_word(t, vm, w));
	return n;
}

#endif
