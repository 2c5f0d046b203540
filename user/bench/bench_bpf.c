// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "baseline.skel.h"
#include "push_loop.skel.h"
#include "bench_bpf.h"
#include "bench_svc.h"
#include "bench_util.h"
#include "writelog/loader.h"
#include "shared/log.h"
#include "vmm/minivm.h"
#include "writelog/vmlog.h"
#include "writelog.skel.h"

#define DATA_GPA    (1ull << 30)
#define DATA_PAGES  16384 /* 64 MiB */
#define ROUND_PAGES 2048  /* written between two harvests: each one pushes */

struct pair {
	const char *name; /* key part */
	const char *label;
	struct bpf_program *prog, *empty;
	uint64_t ns[2], cnt[2]; /* tracker, empty: deltas */
};

static int prog_stats(struct bpf_program *p, uint64_t *ns, uint64_t *cnt)
{
	struct bpf_prog_info info;
	__u32 len = sizeof(info);
	int err;

	memset(&info, 0, sizeof(info));
	err = bpf_obj_get_info_by_fd(bpf_program__fd(p), &info, &len);
	if (err)
		return err;
	*ns = info.run_time_ns;
	*cnt = info.run_cnt;
	return 0;
}

/* sign -1 before the run, +1 after: leaves the deltas. */
static int sample(struct pair *p, int n, int sign)
{
	for (int i = 0; i < n; i++) {
		uint64_t ns[2], cnt[2];

		if (prog_stats(p[i].prog, &ns[0], &cnt[0]) ||
		    prog_stats(p[i].empty, &ns[1], &cnt[1]))
			return -EIO;
		for (int k = 0; k < 2; k++) {
			p[i].ns[k] += sign * ns[k];
			p[i].cnt[k] += sign * cnt[k];
		}
	}
	return 0;
}

static int guest(struct pt_tracker *t, struct minivm **vm, uint32_t *idx)
{
	struct minivm_opts o = { .dirty = MINIVM_DIRTY_RING, .nslots = 1, .ring_entries = 4096 };
	struct pt_slot_cfg s[2] = { { DATA_GPA, DATA_PAGES * 4096ull, 1, true } };
	uint64_t epoch;
	bool existed;
	int err;

	o.slots[0] = (struct minivm_slot){ DATA_GPA, DATA_PAGES * 4096ull, 1 };
	err = minivm_create(vm, &o);
	if (!err)
		err = minivm_setup_memory(*vm);
	if (err)
		return err;
	minivm_system_range(*vm, &s[1].gpa, &s[1].size);
	s[1].id = 0;
	s[1].logged = true;
	err = pt_vm_track(t, getpid(), s, 2, 0, idx, &existed);
	if (!err)
		err = pt_vm_arm(t, *idx, &epoch);
	return err ? err : minivm_sync(*vm);
}

static int write_rounds(struct minivm *vm, unsigned rounds)
{
	uint64_t *gpas = malloc(ROUND_PAGES * sizeof(*gpas));
	int err = gpas ? 0 : -ENOMEM;

	for (unsigned r = 0; !err && r < rounds; r++) {
		for (unsigned i = 0; i < ROUND_PAGES; i++)
			gpas[i] = DATA_GPA + ((r * ROUND_PAGES + i) % DATA_PAGES) * 4096ull;
		err = minivm_guest_write(vm, gpas, ROUND_PAGES, r);
		if (!err)
			err = minivm_sync(vm);
	}
	free(gpas);
	return err;
}

static void put_pair_target(const struct pair *p, const char *ratio_label)
{
	double a = p->cnt[0] ? (double)p->ns[0] / p->cnt[0] : 0;
	double b = p->cnt[1] ? (double)p->ns[1] / p->cnt[1] : 0;
	char *k[4] = { NULL };

	if (asprintf(&k[0], "bpf_%s_ns", p->name) < 0 ||
	    asprintf(&k[1], "bpf_empty_%s_ns", p->name) < 0 ||
	    asprintf(&k[2], "bpf_%s_ratio", p->name) < 0 ||
	    asprintf(&k[3], "bpf_%s_events", p->name) < 0)
		return;
	/* The keys stay referenced by the results until exit. */
	bench_put(k[0], a, "ns/event", p->label);
	bench_put(k[1], b, "ns/event", "  empty program, same events");
	bench_put(k[2], b ? a / b : 0, "x", ratio_label);
	bench_put(k[3], p->cnt[0], "", "  events");
}

static void put_pair(const struct pair *p)
{
	put_pair_target(p, "  ratio (target <= 1.3x)");
}

/* Ioctls of any process pass the ioctl programs: the common, unwatched path. */
static int ioctl_storm(unsigned n)
{
	int fds[2], avail;

	if (pipe(fds))
		return -errno;
	for (unsigned i = 0; i < n; i++)
		ioctl(fds[0], FIONREAD, &avail);
	close(fds[0]);
	close(fds[1]);
	return 0;
}

static int measure_other(struct pt_tracker *t, struct baseline_bpf *b, bool quick)
{
	struct pair p[2] = {
		{ .name = "ioctl_enter_other",
		  .label = "pt_ioctl_enter, other ioctls (FIONREAD)",
		  .prog = t->skel->progs.pt_ioctl_enter,
		  .empty = b->progs.empty_ioctl_enter },
		{ .name = "ioctl_exit_other",
		  .label = "pt_ioctl_exit, other ioctls (FIONREAD)",
		  .prog = t->skel->progs.pt_ioctl_exit,
		  .empty = b->progs.empty_ioctl_exit },
	};
	int err = sample(p, 2, -1);

	if (!err)
		err = ioctl_storm(quick ? 100000 : 1000000);
	if (!err)
		err = sample(p, 2, 1);
	for (int i = 0; !err && i < 2; i++)
		put_pair(&p[i]);
	return err;
}

static uint64_t ring_writes(struct pt_tracker *t, uint32_t vm)
{
	struct pt_vm_stats n;

	return pt_vm_stats_get(t, vm, &n) ? 0 : n.ring_writes;
}

/* A ring-mode guest writing: ring pushes, and the VMM's KVM_RUN and RESET ioctls. */
static int measure_guest(struct pt_tracker *t, struct baseline_bpf *b, bool quick)
{
	struct pair p[3] = {
		{ .name = "ring_push",
		  .label = "pt_ring_push (kvm_dirty_ring_push)",
		  .prog = t->skel->progs.pt_ring_push,
		  .empty = b->progs.empty_ring_push },
		{ .name = "ioctl_enter",
		  .label = "pt_ioctl_enter, the VMM's KVM_RUN + RESET",
		  .prog = t->skel->progs.pt_ioctl_enter,
		  .empty = b->progs.empty_ioctl_enter },
		{ .name = "ioctl_exit",
		  .label = "pt_ioctl_exit, the VMM's KVM_RUN + RESET",
		  .prog = t->skel->progs.pt_ioctl_exit,
		  .empty = b->progs.empty_ioctl_exit },
	};
	struct minivm *vm = NULL;
	uint64_t logged;
	uint32_t idx;
	int err = guest(t, &vm, &idx);

	if (err)
		goto out;
	logged = ring_writes(t, idx);
	err = sample(p, 3, -1);
	if (!err)
		err = write_rounds(vm, quick ? 20 : 200);
	if (!err)
		err = sample(p, 3, 1);
	for (int i = 0; !err && i < 3; i++)
		put_pair(&p[i]);
	if (!err)
		bench_put("bpf_ring_writes_logged", ring_writes(t, idx) - logged, "",
			  "guest writes that reached the write log");
	pt_vm_untrack(t, idx);
out:
	minivm_destroy(vm);
	return err;
}

/*
 * kvm_dirty_ring_push through BPF_PROG_TEST_RUN, so that it is measured on hosts without
 * KVM too: this process is registered as the VMM of a 64 GiB slot, and each run pushes the
 * next page (a new bit each time, as a guest's first write to a page after a harvest).
 * Raw tracepoint programs take no repeat count in BPF_PROG_TEST_RUN, so each run is one
 * bpf() call; the time per run comes from the same bpf_stats counters as the guest figures.
 */
#define TR_SLOT_GPA   (4ull << 30)
#define TR_SLOT_PAGES (16ull << 20)

#define TR_RING 0xffff888000100000ull

static int test_run_push(struct bpf_program *p, uint64_t ring, uint64_t page)
{
	uint64_t args[3] = { ring, 1, page % TR_SLOT_PAGES }; /* ring, slot 1, offset */
	LIBBPF_OPTS(bpf_test_run_opts, o, .ctx_in = args, .ctx_size_in = sizeof(args));

	return bpf_prog_test_run_opts(bpf_program__fd(p), &o);
}

/*
 * The program's slow path: two rings of the VM alternate on this CPU (two vCPUs sharing it),
 * so every push misses the per-CPU cache and looks its VM up by the process. A guest's pushes
 * mostly come in runs of one vCPU, which the figure above measures.
 */
static int measure_alternating(struct pt_tracker *t, struct baseline_bpf *b, unsigned n)
{
	struct pair p = { .name = "ring_push_test_run_alternating",
			  .label = "pt_ring_push, two rings alternating (lookups)",
			  .prog = t->skel->progs.pt_ring_push,
			  .empty = b->progs.empty_ring_push };
	int err = sample(&p, 1, -1);

	for (unsigned i = 0; !err && i < n; i++) {
		err = test_run_push(p.prog, TR_RING + (i & 1) * 4096, i);
		if (!err)
			err = test_run_push(p.empty, TR_RING, i);
	}
	if (!err)
		err = sample(&p, 1, 1);
	if (!err)
		put_pair_target(&p, "  ratio (the slow path: no target)");
	return err;
}

#define TR_BATCH 1000 /* interleaved pairs of runs per batch of the steadier figure */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* One batch: TR_BATCH pushes of each program, interleaved; their mean ns per run. */
static int test_run_batch(struct pair *p, uint64_t *page, double *prog_ns, double *empty_ns)
{
	int err = 0;

	memset(p->ns, 0, sizeof(p->ns));
	memset(p->cnt, 0, sizeof(p->cnt));
	err = sample(p, 1, -1);
	for (unsigned i = 0; !err && i < TR_BATCH; i++, (*page)++) {
		err = test_run_push(p->prog, TR_RING, *page);
		if (!err)
			err = test_run_push(p->empty, TR_RING, *page);
	}
	if (!err)
		err = sample(p, 1, 1);
	if (!err && (!p->cnt[0] || !p->cnt[1]))
		err = -EIO;
	if (!err) {
		*prog_ns = (double)p->ns[0] / p->cnt[0];
		*empty_ns = (double)p->ns[1] / p->cnt[1];
	}
	return err;
}

/* Pin this thread to the CPU it is on; true if it was (then unpin() with `old`). */
static bool pin_here(cpu_set_t *old)
{
	int cpu = sched_getcpu();
	cpu_set_t one;

	if (cpu < 0 || sched_getaffinity(0, sizeof(*old), old))
		return false;
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	return !sched_setaffinity(0, sizeof(one), &one);
}

static void unpin(bool pinned, const cpu_set_t *old)
{
	if (pinned)
		sched_setaffinity(0, sizeof(*old), old);
}

/* Sorts each of the k rows of `batches` values: v[k * batches / 2] is row k's median. */
static void sort_rows(double *v, unsigned k, unsigned batches)
{
	for (unsigned i = 0; i < k; i++)
		qsort(v + i * batches, batches, sizeof(*v), cmp_double);
}

/*
 * The same pushes measured more steadily: this thread pinned to the CPU it is on (no
 * migration, so one CPU's caches and cache entry throughout), the runs in batches, and for
 * each program the median of its batch means; the ratio is the median of the batches' ratios.
 * A batch that a preemption or another process's burst hit lands in the tail, not in the
 * figure. Both programs are measured the same way in the same batches.
 */
static int measure_test_run_median(struct pair *p, uint64_t page, unsigned batches)
{
	double *v = calloc(3 * batches, sizeof(*v));
	int err = v ? 0 : -ENOMEM;
	cpu_set_t old;
	bool pinned = pin_here(&old);

	for (unsigned i = 0; !err && i < batches; i++) {
		err = test_run_batch(p, &page, &v[i], &v[batches + i]);
		if (!err)
			v[2 * batches + i] = v[i] / v[batches + i];
	}
	unpin(pinned, &old);
	if (!err)
		sort_rows(v, 3, batches);
	if (!err) {
		bench_put("bpf_ring_push_test_run_median_ns", v[batches / 2], "ns/event",
			  "pt_ring_push, BPF_PROG_TEST_RUN, pinned, median of batches");
		bench_put("bpf_empty_ring_push_test_run_median_ns", v[batches + batches / 2],
			  "ns/event", "  empty program, same batches");
		bench_put("bpf_ring_push_test_run_median_ratio", v[2 * batches + batches / 2], "x",
			  "  ratio, median of the batches' ratios (target <= 1.3x)");
	}
	free(v);
	return err;
}

/* The bench's push loop (bpf/push_loop.bpf.c) on the tracker's maps: the same VM and cache. */
static int open_push_loop(struct pt_tracker *t, struct push_loop_bpf **out)
{
	struct push_loop_bpf *s = push_loop_bpf__open();
	struct bpf_program *prog;
	struct bpf_map *map;
	int err = 0;

	if (!s)
		return -errno;
	s->rodata->tdp = t->skel->rodata->tdp;
	s->rodata->pidns_dev = t->skel->rodata->pidns_dev;
	s->rodata->pidns_ino = t->skel->rodata->pidns_ino;
	bpf_object__for_each_program(prog, s->obj)
	{
		bpf_program__set_autoload(prog, prog == s->progs.bench_push_loop ||
							prog == s->progs.bench_empty_loop);
	}
	bpf_object__for_each_map(map, s->obj)
	{
		struct bpf_map *own =
			bpf_object__find_map_by_name(t->skel->obj, bpf_map__name(map));

		bpf_map__set_pin_path(map, NULL);
		if (own && !err)
			err = bpf_map__reuse_fd(map, bpf_map__fd(own));
	}
	if (!err)
		err = push_loop_bpf__load(s);
	if (err) {
		push_loop_bpf__destroy(s);
		return err;
	}
	*out = s;
	return 0;
}

#define LOOP_RUNS 8	       /* runs of each loop per batch */
#define LOOP_PAGE (8ull << 20) /* the loop's pages: after every other figure's */

/* One batch of both loops, interleaved: ns per iteration of each. */
static int loop_batch(struct push_loop_bpf *s, uint64_t *page, double *push_ns, double *empty_ns)
{
	struct pair p = { .prog = s->progs.bench_push_loop, .empty = s->progs.bench_empty_loop };
	uint32_t n = s->rodata->push_loop_n;
	int err = sample(&p, 1, -1);

	for (unsigned i = 0; !err && i < LOOP_RUNS; i++, *page += n) {
		err = test_run_push(p.prog, TR_RING, *page);
		if (!err)
			err = test_run_push(p.empty, TR_RING, *page);
	}
	if (!err)
		err = sample(&p, 1, 1);
	if (!err && (!p.cnt[0] || !p.cnt[1] || !n))
		err = -EIO;
	if (!err) {
		*push_ns = (double)p.ns[0] / p.cnt[0] / n;
		*empty_ns = (double)p.ns[1] / p.cnt[1] / n;
	}
	return err;
}

/*
 * The push's own cost with its memory warm: push_loop_n pushes in a row inside one program
 * run, against the same loop doing nothing, pinned, median of batches. Under test runs every
 * push is a syscall of its own, which on a host with page table isolation and no PCID (this
 * project's PVM guests) flushes the TLB: the figures above pay that for every page a push
 * reads, and pushes KVM makes in a row do not.
 */
static int measure_push_loop(struct pt_tracker *t, uint32_t vm, unsigned batches)
{
	double *v = calloc(3 * batches, sizeof(*v));
	uint64_t page = LOOP_PAGE, logged = ring_writes(t, vm);
	struct push_loop_bpf *s = NULL;
	int err = v ? open_push_loop(t, &s) : -ENOMEM;
	cpu_set_t old;
	bool pinned = !err && pin_here(&old);

	for (unsigned i = 0; !err && i < batches; i++) {
		err = loop_batch(s, &page, &v[i], &v[batches + i]);
		if (!err)
			v[2 * batches + i] = v[i] - v[batches + i];
	}
	unpin(pinned, &old);
	if (!err) {
		sort_rows(v, 3, batches);
		bench_put("bpf_ring_push_loop_ns", v[batches / 2], "ns/push",
			  "pt_ring_push's code, pushes in a row in one run (bpf_loop)");
		bench_put("bpf_empty_loop_ns", v[batches + batches / 2], "ns/iter",
			  "  the same loop doing nothing");
		bench_put("bpf_ring_push_warm_ns", v[2 * batches + batches / 2], "ns/push",
			  "  a push's own cost, memory warm (median of differences)");
		bench_put("bpf_ring_push_loop_logged", ring_writes(t, vm) - logged, "",
			  "  pushes of the loop that reached the write log");
	}
	push_loop_bpf__destroy(s);
	free(v);
	return err;
}

static int measure_test_run(struct pt_tracker *t, struct baseline_bpf *b, bool quick)
{
	struct pt_slot_cfg s = { TR_SLOT_GPA, TR_SLOT_PAGES * 4096, 1, true };
	struct pair p = { .name = "ring_push_test_run",
			  .label = "pt_ring_push, BPF_PROG_TEST_RUN, synthetic args",
			  .prog = t->skel->progs.pt_ring_push,
			  .empty = b->progs.empty_ring_push };
	unsigned n = quick ? 200000 : 2000000;
	uint64_t epoch, logged;
	uint32_t idx;
	bool existed;
	int err = pt_vm_track(t, getpid(), &s, 1, 0, &idx, &existed);

	if (!err)
		err = pt_vm_arm(t, idx, &epoch);
	if (err)
		return err;
	logged = ring_writes(t, idx);
	err = sample(&p, 1, -1);
	/* Interleaved, so that both see the same machine. */
	for (unsigned i = 0; !err && i < n; i++) {
		err = test_run_push(p.prog, TR_RING, i);
		if (!err)
			err = test_run_push(p.empty, TR_RING, i);
	}
	if (!err)
		err = sample(&p, 1, 1);
	if (!err) {
		put_pair(&p);
		bench_put("bpf_ring_push_test_run_logged", ring_writes(t, idx) - logged, "",
			  "  pushes that reached the write log");
	}
	/* New pages after those of the figure above: each push still sets a new bit. */
	if (!err)
		err = measure_test_run_median(&p, n, quick ? 51 : 201);
	if (!err)
		err = measure_push_loop(t, idx, quick ? 21 : 101);
	if (!err)
		err = measure_alternating(t, b, n / 4);
	pt_vm_untrack(t, idx);
	return err;
}

static int measure(const struct bench_env *env, struct pt_tracker *t, struct baseline_bpf *b)
{
	int err = 0;

	if (env->no_kvm)
		bench_skip("bpf_guest", env->no_kvm);
	else
		err = measure_guest(t, b, env->quick);
	if (!err)
		err = measure_other(t, b, env->quick);
	return err ? err : measure_test_run(t, b, env->quick);
}

static int load_both(struct pt_tracker **t, struct baseline_bpf **b)
{
	struct pt_loader_opts lo = { .no_pin = true, .log_mb = 4, .tdp = -1 };
	int err = pt_tracker_open(t, &lo);

	if (err)
		return err;
	*b = baseline_bpf__open_and_load();
	if (!*b)
		return -errno ? -errno : -EINVAL;
	return baseline_bpf__attach(*b);
}

int bench_bpf(const struct bench_env *env)
{
	struct baseline_bpf *b = NULL;
	struct pt_tracker *t = NULL;
	int err, level, stats;

	bench_section("BPF cost per event (kernel.bpf_stats_enabled), tracker vs empty program");
	/* Run-time stats on while this fd is open: counted by the kernel, so benches and tests
	 * running at the same time do not switch them off under each other (as saving and
	 * restoring the sysctl would). */
	stats = bpf_enable_stats(BPF_STATS_RUN_TIME);
	if (stats < 0)
		return stats;
	level = pt_log_level;
	pt_log_level = LOG_WARNING;
	err = load_both(&t, &b);
	if (!err)
		err = measure(env, t, b);
	baseline_bpf__destroy(b);
	pt_tracker_close(t);
	close(stats);
	pt_log_level = level;
	return err;
}
