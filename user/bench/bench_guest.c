// SPDX-License-Identifier: GPL-2.0
/*
 * What guests pay: a real minivm guest in dirty-ring mode writes pages (a batch, then the
 * VMM's harvest, as a VMM under live migration or pagetrack would) in three settings,
 * interleaved in one run:
 *
 *   detached   no pagetrack program on any tracepoint (the service is stopped by then)
 *   untracked  the programs attached, this VM not tracked (what every other VM on the host pays)
 *   tracked    the programs attached, the VM tracked and armed, every write logged
 *
 * Pages written per second of wall time, harvests included, and the slowdown against
 * detached. Programs of another pagetrack on the same host would still run on our pushes
 * (as for an untracked VM): the detached figure is then the untracked one.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "bench_guest.h"
#include "bench_svc.h"
#include "bench_util.h"
#include "shared/log.h"
#include "vmm/minivm.h"
#include "writelog/loader.h"
#include "writelog/vmlog.h"
#include "writelog.skel.h"

#define G_GPA	(1ull << 30)
#define G_PAGES 65536 /* 256 MiB: every batch writes pages not written since the last harvest */
#define G_BATCH 2048  /* pages per harvest; fits the 4096-entry ring with minivm's slack */
#define G_REPS	3

enum { DETACHED, UNTRACKED, TRACKED, NMODES };

static const char *const mode_key[NMODES] = { "detached", "untracked", "tracked" };

struct guest {
	struct minivm *vm;
	struct pt_tracker *t;
	struct pt_slot_cfg slots[2];
	uint64_t *gpas;
	uint64_t next; /* next page to write */
	uint64_t pages[NMODES], ns[NMODES];
	struct bpf_link *links[16];
	int nlinks;
};

/* As the service attaches them: without TDP the fault programs stay off (loader.c). */
static int progs_attach(struct guest *g)
{
	struct bpf_program *p;

	bpf_object__for_each_program(p, g->t->skel->obj)
	{
		const char *n = bpf_program__name(p);

		if (!g->t->tdp && (!strcmp(n, "pt_page_fault") || !strcmp(n, "pt_fast_page_fault")))
			continue;
		if (g->nlinks == 16)
			return -E2BIG;
		g->links[g->nlinks] = bpf_program__attach(p);
		if (!g->links[g->nlinks])
			return -errno;
		g->nlinks++;
	}
	return 0;
}

static void progs_detach(struct guest *g)
{
	while (g->nlinks)
		bpf_link__destroy(g->links[--g->nlinks]);
}

static int guest_open(struct guest *g)
{
	struct minivm_opts o = { .dirty = MINIVM_DIRTY_RING, .nslots = 1, .ring_entries = 4096 };
	struct pt_loader_opts lo = { .no_pin = true, .no_attach = true, .log_mb = 4, .tdp = -1 };
	int err;

	g->gpas = malloc(G_BATCH * sizeof(*g->gpas));
	if (!g->gpas)
		return -ENOMEM;
	o.slots[0] = (struct minivm_slot){ G_GPA, G_PAGES * 4096ull, 1 };
	err = minivm_create(&g->vm, &o);
	if (!err)
		err = minivm_setup_memory(g->vm);
	if (!err)
		err = pt_tracker_open(&g->t, &lo);
	if (err)
		return err;
	g->slots[0] = (struct pt_slot_cfg){ G_GPA, G_PAGES * 4096ull, 1, true };
	minivm_system_range(g->vm, &g->slots[1].gpa, &g->slots[1].size);
	g->slots[1].id = 0;
	g->slots[1].logged = true;
	return minivm_sync(g->vm);
}

static void guest_close(struct guest *g)
{
	progs_detach(g);
	pt_tracker_close(g->t);
	minivm_destroy(g->vm);
	free(g->gpas);
}

/* One batch of pages the guest has not written since the last harvest, then the harvest. */
static int guest_batch(struct guest *g)
{
	int err;

	for (unsigned i = 0; i < G_BATCH; i++)
		g->gpas[i] = G_GPA + (g->next++ % G_PAGES) * 4096ull;
	err = minivm_guest_write(g->vm, g->gpas, G_BATCH, g->next);
	while (err == -ENOSPC) {
		err = minivm_sync(g->vm);
		if (!err)
			err = minivm_resume(g->vm);
	}
	return err ? err : minivm_sync(g->vm);
}

/* Sets the mode up: programs attached or not, the VM tracked and armed or not. */
static int mode_enter(struct guest *g, int mode, uint32_t *vm)
{
	uint64_t epoch;
	bool existed;
	int err;

	if (mode == DETACHED)
		return 0;
	err = progs_attach(g);
	if (err || mode == UNTRACKED)
		return err;
	err = pt_vm_track(g->t, getpid(), g->slots, 2, 0, vm, &existed);
	if (!err)
		err = pt_vm_arm(g->t, *vm, &epoch);
	/* The sync after the arm, as the protocol wants: from here every write is logged. */
	return err ? err : minivm_sync(g->vm);
}

static void mode_leave(struct guest *g, int mode, uint32_t vm)
{
	if (mode == TRACKED)
		pt_vm_untrack(g->t, vm);
	progs_detach(g);
}

static int guest_run(struct guest *g, int mode, uint64_t run_ns)
{
	uint64_t t0, n = 0;
	uint32_t vm = 0;
	int err = mode_enter(g, mode, &vm);

	t0 = bench_now_ns();
	while (!err && bench_now_ns() - t0 < run_ns) {
		err = guest_batch(g);
		n += G_BATCH;
	}
	g->ns[mode] += bench_now_ns() - t0;
	g->pages[mode] += n;
	if (!err && mode == TRACKED) {
		struct pt_vm_stats st;

		/* Every page written must have reached the log, or the figure is not tracking. */
		if (pt_vm_stats_get(g->t, vm, &st) || st.ring_writes < n)
			err = -EPROTO;
	}
	mode_leave(g, mode, vm);
	return err;
}

/* pt_ring_push programs loaded by other pagetracks on this host: they run in every mode. */
static unsigned foreign_ring_progs(const struct guest *g)
{
	struct bpf_prog_info own = { 0 };
	__u32 len = sizeof(own), id = 0;
	unsigned n = 0;

	if (bpf_obj_get_info_by_fd(bpf_program__fd(g->t->skel->progs.pt_ring_push), &own, &len))
		return 0;
	while (!bpf_prog_get_next_id(id, &id)) {
		struct bpf_prog_info info = { 0 };
		int fd = bpf_prog_get_fd_by_id(id);

		len = sizeof(info);
		if (fd < 0)
			continue;
		if (!bpf_obj_get_info_by_fd(fd, &info, &len) && info.id != own.id &&
		    !strcmp(info.name, "pt_ring_push"))
			n++;
		close(fd);
	}
	return n;
}

static void guest_put(const struct guest *g)
{
	double rate[NMODES];

	for (int m = 0; m < NMODES; m++) {
		char *key = NULL, *label = NULL;

		rate[m] = g->ns[m] ? g->pages[m] * 1e9 / g->ns[m] : 0;
		if (asprintf(&key, "guest_%s_pages_per_s", mode_key[m]) < 0 ||
		    asprintf(&label, "guest pages written/s, programs %s",
			     m == DETACHED    ? "detached"
			     : m == UNTRACKED ? "attached, VM not tracked"
					      : "attached, VM tracked") < 0)
			return;
		bench_put(key, rate[m], "pages/s", label);
	}
	bench_put("guest_slowdown_tracked_pct", (1 - rate[TRACKED] / rate[DETACHED]) * 100, "%",
		  "slowdown, tracked vs detached (target <= 3 %)");
	bench_put("guest_slowdown_untracked_pct", (1 - rate[UNTRACKED] / rate[DETACHED]) * 100, "%",
		  "slowdown, untracked VM vs detached");
	bench_put("guest_ratio_tracked_vs_detached", rate[TRACKED] / rate[DETACHED], "x",
		  "tracked / detached");
	bench_put("guest_other_ring_programs", foreign_ring_progs(g), "",
		  "pt_ring_push of other pagetracks on this host (they run in every mode)");
	bench_note("guest_uffd_skipped", "uffd mode",
		   "not here: see the userfaultfd write log section (first write after ARM)");
}

int bench_guest_pays(const struct bench_env *env)
{
	struct guest g = { 0 };
	int level = pt_log_level, err;

	bench_section("What guests pay: a minivm guest (dirty ring, 256 MiB) writing pages, a "
		      "harvest every 2048");
	if (env->no_kvm) {
		bench_skip("guest", env->no_kvm);
		return 0;
	}
	pt_log_level = LOG_WARNING;
	err = guest_open(&g);
	/* Interleaved, so that the three settings see the same machine. */
	for (int r = 0; !err && r < G_REPS; r++)
		for (int m = 0; !err && m < NMODES; m++)
			err = guest_run(&g, m, env->run_ns / G_REPS / 2);
	if (!err)
		guest_put(&g);
	guest_close(&g);
	pt_log_level = level;
	return err;
}
