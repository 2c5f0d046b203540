// SPDX-License-Identifier: GPL-2.0
/*
 * ptdemo: the main job on an embedded default. Starts a private pagetrackd, runs a real KVM
 * guest (minivm, dirty-ring mode) whose balloon device is built on the client library, and
 * walks one hinting round the way the design brief prescribes:
 *
 *   ARM(N) -> VMM sync (KVM_RESET_DIRTY_RINGS) -> guest hints free pages under N ->
 *   guest takes some hinted pages back and writes them -> driver STOP -> QUERY(N)
 *
 * It prints what the service answered next to what the guest did, and checks the answer
 * against KVM's own dirty ring. Exit status 0 only if the check holds.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

#include "vmm/minivm.h"
#include "pagetrack/client.h"
#include "spawn.h"

#define GUEST_GPA   (1ull << 30)
#define GUEST_PAGES 32768 /* 128 MiB */
#define HINT_BLOCK  1024  /* 4 MiB, as Linux's free page hinting sends */
#define CMD_ID	    2

struct demo {
	struct pt_spawned svc;
	struct minivm *m;
	struct pt_client *c;
	uint8_t hinted[GUEST_PAGES], rewritten[GUEST_PAGES], kvm_dirty[GUEST_PAGES];
	uint64_t n_hinted, n_rewritten;
};

static int step(const char *what, int err)
{
	printf("  %-58s %s\n", what, err ? "FAILED" : "ok");
	if (err)
		fprintf(stderr, "ptdemo: %s: %s\n", what, strerror(err < 0 ? -err : err));
	return err;
}

static int setup(struct demo *d)
{
	struct minivm_opts o = { .dirty = MINIVM_DIRTY_RING, .nslots = 1, .ring_entries = 16384 };
	struct pt_reg_slot rs[2] = { { GUEST_GPA, GUEST_PAGES * 4096ull, 1, PT_REG_SLOT_LOGGED } };
	uint32_t handle;
	int err;

	o.slots[0] = (struct minivm_slot){ GUEST_GPA, GUEST_PAGES * 4096ull, 1 };
	err = minivm_create(&d->m, &o);
	if (step("start a KVM guest (128 MiB at 1 GiB, dirty ring)", err))
		return err;
	minivm_system_range(d->m, &rs[1].gpa, &rs[1].size);
	rs[1].flags = PT_REG_SLOT_LOGGED; /* minivm logs every slot, its own included */
	d->c = pt_client_connect(d->svc.socket);
	if (step("balloon device connects to pagetrackd", d->c ? 0 : -errno))
		return -errno;
	err = pt_client_register(d->c, 0, PT_DIRTY_RING, rs, 2, &handle);
	step("register the VM (pid, memslots, dirty-ring mode)", err);
	if (!err && pt_client_coverage(d->c)) {
		fprintf(stderr,
			"ptdemo: the service says dirty-ring writes are not tracked here\n");
		err = -ENOTSUP;
	}
	return err;
}

/* The guest frees every other 4 MiB block; its driver hints them under the command ID. */
static int guest_hints(struct demo *d)
{
	struct pt_range r[GUEST_PAGES / HINT_BLOCK];
	int n = 0;

	for (int b = 0; b < GUEST_PAGES / HINT_BLOCK; b++) {
		if (b % 2 == 0 && b != 0) {
			r[n++] = (struct pt_range){ GUEST_GPA + (uint64_t)b * HINT_BLOCK * 4096,
						    HINT_BLOCK * 4096ull };
			memset(d->hinted + b * HINT_BLOCK, 1, HINT_BLOCK);
			d->n_hinted += HINT_BLOCK;
		}
	}
	return pt_client_hint(d->c, CMD_ID, r, n);
}

/* The seed-002 race: before the host looks, the guest reuses some hinted pages. */
static int guest_rewrites(struct demo *d)
{
	uint64_t gpas[700], *g;
	size_t n = 0, ng;
	int err;

	srandom(42);
	while (n < 700) {
		uint32_t p = random() % GUEST_PAGES;

		/* Mostly hinted pages (taken back), some never hinted. */
		if (!d->hinted[p] && random() % 4)
			continue;
		gpas[n++] = GUEST_GPA + (uint64_t)p * 4096;
		if (d->hinted[p] && !d->rewritten[p])
			d->n_rewritten++;
		d->rewritten[p] = 1;
	}
	err = minivm_guest_write(d->m, gpas, n, 0xdeadbeef);
	if (err || (err = minivm_harvest(d->m, &g, &ng)))
		return err;
	for (size_t i = 0; i < ng; i++)
		if (g[i] >= GUEST_GPA >> 12 && g[i] < (GUEST_GPA >> 12) + GUEST_PAGES)
			d->kvm_dirty[g[i] - (GUEST_GPA >> 12)] = 1;
	free(g);
	return 0;
}

/* Every confirmed page must be hinted and absent from KVM's ring; counts must match. */
static int check(struct demo *d, const struct pt_client_result *res)
{
	uint64_t free_pages = 0, bad = 0, expect_free = 0;

	for (uint32_t i = 0; i < res->v.nranges; i++) {
		for (uint64_t a = res->ranges[i].gpa; a < res->ranges[i].gpa + res->ranges[i].len;
		     a += 4096) {
			uint64_t p = (a - GUEST_GPA) / 4096;

			free_pages++;
			bad += a < GUEST_GPA || p >= GUEST_PAGES || !d->hinted[p] ||
			       d->kvm_dirty[p];
		}
	}
	for (uint64_t p = 0; p < GUEST_PAGES; p++)
		expect_free += d->hinted[p] && !d->kvm_dirty[p];
	printf("\n  %-44s %10s %10s\n", "", "service", "guest/KVM");
	printf("  %-44s %10llu %10llu\n", "pages hinted", (unsigned long long)res->v.hinted,
	       (unsigned long long)d->n_hinted);
	printf("  %-44s %10llu %10llu\n", "pages confirmed free (safe to skip/drop)",
	       (unsigned long long)res->v.free, (unsigned long long)expect_free);
	printf("  %-44s %10llu %10llu\n", "pages kept: written after the hint",
	       (unsigned long long)res->v.kept_written, (unsigned long long)d->n_rewritten);
	printf("  %-44s %10llu %10d\n", "pages kept: unsure",
	       (unsigned long long)res->v.kept_unsure, 0);
	printf("  %-44s %10llu\n", "confirmed pages KVM saw written (data loss)",
	       (unsigned long long)bad);
	return bad || free_pages != res->v.free || res->v.free != expect_free ||
	       res->v.kept_written != d->n_rewritten || res->v.hinted != d->n_hinted ||
	       res->v.unsure_reason;
}

static int run(struct demo *d)
{
	struct pt_client_result res = { 0 };
	int err;

	if ((err = setup(d)))
		return err;
	if (step("ARM command ID 2 (write log cleared, new epoch)", pt_client_arm(d->c, CMD_ID)) ||
	    step("VMM sync: harvest + KVM_RESET_DIRTY_RINGS (write-protect)", minivm_sync(d->m)) ||
	    step("guest hints its free 4 MiB blocks under ID 2", guest_hints(d)) ||
	    step("guest writes 700 pages, most of them hinted ones", guest_rewrites(d)) ||
	    step("driver STOP for ID 2", pt_client_stop(d->c, CMD_ID)) ||
	    step("QUERY ID 2: verdict computed now",
		 pt_client_query(d->c, CMD_ID, PT_Q_HINTS, &res)))
		return -1;
	err = check(d, &res);
	pt_client_result_free(&res);
	step("DONE for ID 2", pt_client_done(d->c, CMD_ID));
	printf("\n  check against KVM's dirty ring: %s\n",
	       err ? "MISMATCH" : "OK (every confirmed page untouched; every rewrite kept)");
	return err;
}

int main(void)
{
	static struct demo d;
	int err;

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("pagetrack demo: one free-page-hinting round on a real KVM guest\n\n");
	err = pt_spawn_service(&d.svc, NULL, "demo", NULL);
	if (step("start pagetrackd (private socket and pins, canary)", err))
		return 1;
	printf("    socket %s, pins %s\n", d.svc.socket, d.svc.pin_dir);
	err = run(&d);
	pt_client_close(d.c);
	minivm_destroy(d.m);
	step("stop pagetrackd and remove its pins", pt_spawn_stop(&d.svc, SIGTERM));
	return err ? 1 : 0;
}
