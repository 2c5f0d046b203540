// SPDX-License-Identifier: GPL-2.0
/*
 * `pagetrackd bench`: drives a private pagetrackd (user/spawn.h: real io_uring core, real
 * socket, real reconciliation) with synthetic balloon devices, and measures in the same run,
 * with the same bytes, what the machine allows: a raw AF_UNIX stream into a reader that does
 * nothing, an epoll + read()/write() loop applying the same cmdstate functions, and a 16-byte
 * ping-pong. Then the BPF programs' cost per event against empty programs, and the userfaultfd
 * write log (the uffd mode) beside the ring mode: its 64 GiB verdict, ARM and first-write cost.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "bench_bpf.h"
#include "bench_guest.h"
#include "bench_svc.h"
#include "bench_uffd.h"
#include "bench_verdict.h"
#include "bench_util.h"
#include "tools/spawn.h"
#include "vmm/minivm.h"

#define RUN_NS_QUICK 600000000ull
#define RUN_NS_FULL  4000000000ull

typedef int (*workload_fn)(const struct bench_env *env);

static const struct {
	const char *name;
	workload_fn fn;
} workloads[] = {
	{ "hinting (4 MiB)", bench_hinting },
	{ "worst case (4 KiB)", bench_worst_case },
	{ "latency", bench_latency },
	{ "large guest", bench_large_guest },
	{ "64 devices", bench_many_devices },
	{ "64 reporters", bench_many_reporters },
	{ "live guest + 64 GiB verdict", bench_live_guest },
	{ "verdict pass (in-process)", bench_verdict_pass },
};

/* PT_BENCH_ONLY=<substring of a workload name> runs only those (development aid). */
static bool selected(const char *name)
{
	const char *only = getenv("PT_BENCH_ONLY");

	return !only || !*only || strstr(name, only);
}

static int run_service_workloads(struct bench_env *env)
{
	/* 128 MiB of write log: 4 TiB of guest, since VMs of finished workloads are released
	 * only at the service's next tick. */
	static const char *const extra[] = { "--log-mb", "128", NULL };
	struct pt_spawned svc;
	int err = pt_spawn_service(&svc, NULL, "bench", extra);

	if (err) {
		fprintf(stderr, "pagetrackd bench: cannot start a private pagetrackd: %s\n",
			strerror(-err));
		return err;
	}
	env->socket = svc.socket;
	env->svc = svc.pid;
	for (size_t i = 0; !err && i < sizeof(workloads) / sizeof(workloads[0]); i++) {
		if (!selected(workloads[i].name))
			continue;
		bench_progress("%s", workloads[i].name);
		err = workloads[i].fn(env);
		if (err)
			fprintf(stderr, "pagetrackd bench: %s: %s (service log: %s)\n",
				workloads[i].name, strerror(err < 0 ? -err : err), svc.log);
	}
	if (pt_spawn_stop(&svc, SIGTERM) && !err)
		fprintf(stderr, "pagetrackd bench: the service did not exit cleanly\n");
	return err;
}

/* @target NULL: informational, no target. */
static void print_ratio(const char *what, const char *key, const char *target, double goal,
			bool at_least)
{
	double v = bench_get(key);
	bool met = at_least ? v >= goal : v <= goal;

	if (isnan(v)) {
		printf("  %-44s %8s  (its workload was skipped, see above)\n", what, "-");
		return;
	}
	if (!target) {
		printf("  %-44s %8.3f\n", what, v);
		return;
	}
	printf("  %-44s %8.3f  (target %s %s)  %s\n", what, v, at_least ? ">=" : "<=", target,
	       met ? "met" : "MISSED");
}

/*
 * The uffd mode beside the ring mode: same share of pages written. The targets are for a 64 GiB
 * guest; --quick runs a smaller sparse guest, so its figures are shown without them.
 */
static void print_uffd_ratios(void)
{
	double gib = bench_get("uffd_sparse_gib");
	bool full = gib == 64;
	char verdict[64], arm[64], first[64];

	/* Skipped: no size was measured (NaN); the lines still say what they would show. */
	if (!(gib > 0)) {
		snprintf(verdict, sizeof(verdict), "uffd sparse guest verdict, 0.1 %% written, ms");
		snprintf(arm, sizeof(arm), "uffd sparse guest ARM, 0.1 %% written, ms");
		snprintf(first, sizeof(first), "uffd sparse guest first ARM (protect all), ms");
	} else {
		snprintf(verdict, sizeof(verdict), "uffd %.0f GiB verdict, 0.1 %% written, ms",
			 gib);
		snprintf(arm, sizeof(arm), "uffd %.0f GiB ARM, 0.1 %% written, ms", gib);
		snprintf(first, sizeof(first), "uffd %.0f GiB first ARM (protect all), ms", gib);
	}
	printf("\nuffd mode (userfaultfd write log, 4 KiB pages; ring mode: \"64 GiB verdict\")\n");
	print_ratio(verdict, "uffd_sparse_4k_verdict_ms", full ? "200 ms" : NULL, 200, false);
	print_ratio(arm, "uffd_sparse_4k_arm_ms", full ? "200 ms" : NULL, 200, false);
	print_ratio(first, "uffd_sparse_4k_arm_first_ms", NULL, 0, false);
	if (full) /* the ring mode's verdict is of a 64 GiB guest */
		print_ratio("uffd verdict / ring verdict, 64 GiB", "uffd_verdict_ratio_vs_ring",
			    NULL, 0, false);
	print_ratio("uffd first write after ARM / rewrite", "uffd_first_write_ratio_vs_rewrite",
		    NULL, 0, false);
}

static void print_ratios(void)
{
	printf("\nRatios (a: pagetrackd, b: raw socket, c: epoll loop, d: ping-pong, f: floor)\n");
	print_ratio("a/b hinting 4 MiB, records/s", "hint_ratio_vs_raw_socket", "0.5x", 0.5, true);
	print_ratio("a/b worst case 4 KiB, records/s", "worst_ratio_vs_raw_socket", "0.5x", 0.5,
		    true);
	print_ratio("a/f hinting 4 MiB, records/s", "hint_ratio_vs_floor", "0.7x", 0.7, true);
	print_ratio("a/f worst case 4 KiB, records/s", "worst_ratio_vs_floor", "0.7x", 0.7, true);
	print_ratio("a/f hinting 4 MiB, on CPU time", "hint_cpu_ratio_vs_floor", NULL, 0, true);
	print_ratio("a/f worst case 4 KiB, on CPU time", "worst_cpu_ratio_vs_floor", NULL, 0, true);
	print_ratio("a/c hinting 4 MiB, records/s (io_uring/epoll)", "hint_ratio_vs_epoll", NULL, 0,
		    true);
	print_ratio("a/c worst case 4 KiB, records/s", "worst_ratio_vs_epoll", NULL, 0, true);
	print_ratio("a/c 64 devices, 4 MiB hints, records/s", "multi_ratio_vs_epoll", "1.3x", 1.3,
		    true);
	print_ratio("a/c 64 devices, REPORT 32 x 2 MiB, records/s", "multi_report_ratio_vs_epoll",
		    "1.3x", 1.3, true);
	print_ratio("ack p99 / ping-pong p99", "ratio_ack_p99_vs_pingpong_p99", "2x", 2, false);
	print_ratio("64 GiB verdict p50 (sure), ms", "verdict_64g_ms_p50", "2 ms", 2, false);
	print_ratio("bits per guest page (measured)", "mem_bits_per_page", "2", 2.05, false);
	print_ratio("BPF ring push / empty program", "bpf_ring_push_ratio", "1.3x", 1.3, false);
	print_ratio("BPF ring push / empty, BPF_PROG_TEST_RUN", "bpf_ring_push_test_run_ratio",
		    NULL, 0, false);
	print_ratio("guest pages/s, tracked / detached", "guest_ratio_tracked_vs_detached", "0.97x",
		    0.97, true);
	print_ratio("BPF ioctl enter / empty, other processes", "bpf_ioctl_enter_other_ratio",
		    "1.3x", 1.3, false);
	print_uffd_ratios();
}

/* The uffd section, and its figures against their baselines: the ring mode's verdict, a write
 * that does not fault. */
static int run_uffd(bool quick)
{
	double ring = bench_get("verdict_64g_ms_p50"), uffd;
	int err;

	bench_progress("userfaultfd write log");
	err = bench_uffd(quick);
	if (err) {
		fprintf(stderr, "pagetrackd bench: userfaultfd section: %s\n", strerror(-err));
		return err;
	}
	uffd = bench_get("uffd_sparse_4k_verdict_ms");
	if (!isnan(ring) && ring > 0 && bench_get("uffd_sparse_gib") == 64)
		bench_put("uffd_verdict_ratio_vs_ring", uffd / ring, "x",
			  "64 GiB verdict, uffd / ring mode (p50)");
	bench_put("uffd_first_write_ratio_vs_rewrite",
		  bench_get("uffd_sparse_4k_first_write_ns") /
			  bench_get("uffd_sparse_4k_rewrite_ns"),
		  "x", "first write after ARM / write to a page already written");
	return 0;
}

/* KVM workloads need a dirty-ring VM; without one they skip with this reason. */
static void check_kvm(struct bench_env *env)
{
	static char why[160];

	env->kvm = minivm_supported(MINIVM_DIRTY_RING);
	if (!env->kvm) {
		bench_note("kvm", NULL, "usable");
		return;
	}
	snprintf(why, sizeof(why), "needs a KVM dirty-ring guest: /dev/kvm not usable (%s)",
		 strerror(-env->kvm));
	env->no_kvm = why;
	bench_note("kvm", "KVM workloads", "skipped: %s", why);
}

int pt_bench_run(bool quick, bool json)
{
	struct bench_env env = { .quick = quick, .run_ns = quick ? RUN_NS_QUICK : RUN_NS_FULL };
	int err;

	if (geteuid()) {
		fprintf(stderr, "pagetrackd bench: needs root (BPF, KVM)\n");
		return -EPERM;
	}
	bench_note("mode", NULL, "%s", quick ? "quick" : "full");
	check_kvm(&env);
	err = run_service_workloads(&env);
	if (!err && selected("what guests pay")) {
		bench_progress("what guests pay");
		err = bench_guest_pays(&env);
		if (err)
			fprintf(stderr, "pagetrackd bench: what guests pay: %s\n", strerror(-err));
	}
	if (!err && selected("BPF cost per event")) {
		bench_progress("BPF cost per event");
		err = bench_bpf(&env);
		if (err)
			fprintf(stderr, "pagetrackd bench: BPF section: %s\n", strerror(-err));
	}
	if (!err && selected("userfaultfd write log"))
		err = run_uffd(quick);
	if (err)
		return err;
	if (json) {
		bench_print_json(stdout);
		return 0;
	}
	bench_print_table(stdout);
	print_ratios();
	return 0;
}
