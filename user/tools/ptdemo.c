// SPDX-License-Identifier: GPL-2.0
/*
 * ptdemo: the main job on an embedded default. Starts a private pagetrackd and walks one
 * free-page-hinting round the way the design brief prescribes, once in each write-log mode:
 *
 *   ring  a real KVM guest (minivm, dirty ring) whose balloon device is built on the client
 *         library: ARM(N) -> VMM sync (KVM_RESET_DIRTY_RINGS) -> guest hints free pages under
 *         N -> guest takes some hinted pages back and writes them -> STOP -> QUERY(N), checked
 *         against KVM's own dirty ring. Needs /dev/kvm; skipped (and said so) without it.
 *   uffd  the same round with KVM dirty logging off: guest memory is registered through
 *         pt_client_register_uffd() and ARM alone is the sync. With KVM the guest writes; without
 *         it this process, as the VMM, writes its own guest-memory mapping (writes this mode
 *         catches just the same). Checked against what guest memory really holds afterwards.
 *
 * It prints what the service answered next to what was really written. Exit status 0 only if
 * every round that ran matched: no page confirmed free that was written, counts exact.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#include "vmm/minivm.h"
#include "pagetrack/client.h"
#include "spawn.h"

#define GUEST_GPA   (1ull << 30)
#define GUEST_PAGES 32768 /* 128 MiB */
#define GUEST_BYTES (GUEST_PAGES * 4096ull)
#define HINT_BLOCK  1024 /* 4 MiB, as Linux's free page hinting sends */
#define CMD_ID	    2
#define REWRITES    700
#define MARK	    0xdeadbeefull /* what the guest writes at the start of a page it reuses */

enum demo_mode {
	DEMO_RING,	/* KVM guest, dirty ring, BPF write log */
	DEMO_UFFD_KVM,	/* KVM guest, no dirty logging, userfaultfd write log */
	DEMO_UFFD_HOST, /* no KVM: this process writes its own guest memory */
};

/* One round: a VM (or only its memory), its device, what was hinted and really written. */
struct round {
	enum demo_mode mode;
	const char *truth; /* where the reference comes from, for the table */
	struct minivm *m;
	struct pt_client *c;
	char *mem; /* guest memory as the VMM maps it (uffd modes) */
	int uffd;
	uint8_t hinted[GUEST_PAGES], asked[GUEST_PAGES], written[GUEST_PAGES];
	uint64_t n_hinted;
};

static int step(const char *what, int err)
{
	printf("  %-58s %s\n", what, err ? "FAILED" : "ok");
	if (err)
		fprintf(stderr, "ptdemo: %s: %s\n", what, strerror(err < 0 ? -err : err));
	return err;
}

static int connect_device(struct round *r, const char *socket)
{
	r->c = pt_client_connect(socket);
	return step("balloon device connects to pagetrackd", r->c ? 0 : -errno);
}

static int setup_ring(struct round *r, const char *socket)
{
	struct minivm_opts o = { .dirty = MINIVM_DIRTY_RING, .nslots = 1, .ring_entries = 16384 };
	struct pt_reg_slot rs[2] = { { GUEST_GPA, GUEST_BYTES, 1, PT_REG_SLOT_LOGGED } };
	uint32_t handle;
	int err;

	o.slots[0] = (struct minivm_slot){ GUEST_GPA, GUEST_BYTES, 1 };
	err = minivm_create(&r->m, &o);
	if (step("start a KVM guest (128 MiB at 1 GiB, dirty ring)", err))
		return err;
	minivm_system_range(r->m, &rs[1].gpa, &rs[1].size);
	rs[1].flags = PT_REG_SLOT_LOGGED; /* minivm logs every slot, its own included */
	if ((err = connect_device(r, socket)))
		return err;
	err = pt_client_register(r->c, 0, PT_DIRTY_RING, rs, 2, &handle);
	step("register the VM (pid, memslots, dirty-ring mode)", err);
	if (!err && pt_client_coverage(r->c)) {
		fprintf(stderr,
			"ptdemo: the service says dirty-ring writes are not tracked here\n");
		err = -ENOTSUP;
	}
	return err;
}

/* Guest memory of the uffd round: a minivm slot without dirty logging, or a plain mapping. */
static int uffd_memory(struct round *r)
{
	struct minivm_opts o = { .dirty = MINIVM_DIRTY_NONE, .nslots = 1 };
	int err;

	if (r->mode == DEMO_UFFD_HOST) {
		r->mem = mmap(NULL, GUEST_BYTES, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (r->mem == MAP_FAILED)
			r->mem = NULL;
		return step("map 128 MiB of guest memory in this process (the VMM)",
			    r->mem ? 0 : -errno);
	}
	o.slots[0] = (struct minivm_slot){ GUEST_GPA, GUEST_BYTES, 1 };
	err = minivm_create(&r->m, &o);
	if (!err)
		r->mem = minivm_hva(r->m, GUEST_GPA, GUEST_BYTES);
	if (!err && !r->mem)
		err = -EFAULT;
	return step("start a KVM guest (128 MiB at 1 GiB, dirty logging off)", err);
}

static int setup_uffd(struct round *r, const char *socket)
{
	struct pt_reg_slot2 s = { GUEST_GPA, GUEST_BYTES, 0, 1, 0 };
	uint32_t handle;
	int err;

	if ((err = uffd_memory(r)) || (err = connect_device(r, socket)))
		return err;
	s.hva = (uintptr_t)r->mem;
	r->uffd = -1;
	err = pt_client_register_uffd(r->c, &s, 1, r->m ? minivm_vm_fd(r->m) : -1, &r->uffd,
				      &handle);
	step("register guest memory (userfaultfd + pagemap fds)", err);
	if (!err && pt_client_coverage(r->c)) {
		fprintf(stderr, "ptdemo: the service says this memory is not tracked\n");
		err = -ENOTSUP;
	}
	return err;
}

/* The guest frees every other 4 MiB block; its driver hints them under the command ID. */
static int guest_hints(struct round *r)
{
	struct pt_range rg[GUEST_PAGES / HINT_BLOCK];
	int n = 0;

	for (int b = 2; b < GUEST_PAGES / HINT_BLOCK; b += 2) {
		rg[n++] = (struct pt_range){ GUEST_GPA + (uint64_t)b * HINT_BLOCK * 4096,
					     HINT_BLOCK * 4096ull };
		memset(r->hinted + b * HINT_BLOCK, 1, HINT_BLOCK);
		r->n_hinted += HINT_BLOCK;
	}
	return pt_client_hint(r->c, CMD_ID, rg, n);
}

/* What KVM's dirty ring says the guest wrote since the sync. */
static int harvest_ring(struct round *r)
{
	uint64_t *g;
	size_t ng;
	int err = minivm_harvest(r->m, &g, &ng);

	if (err)
		return err;
	for (size_t i = 0; i < ng; i++)
		if (g[i] >= GUEST_GPA >> 12 && g[i] < (GUEST_GPA >> 12) + GUEST_PAGES)
			r->written[g[i] - (GUEST_GPA >> 12)] = 1;
	free(g);
	return 0;
}

/* What guest memory holds: pages starting with MARK were written (reading protects nothing). */
static void read_back(struct round *r)
{
	for (uint64_t p = 0; p < GUEST_PAGES; p++)
		r->written[p] = *(volatile uint64_t *)(r->mem + p * 4096) == MARK;
}

/* The seed-002 race: before the host looks, the guest reuses some hinted pages. */
static int guest_rewrites(struct round *r)
{
	uint64_t gpas[REWRITES];
	size_t n = 0;
	int err = 0;

	srandom(42);
	while (n < REWRITES) {
		uint32_t p = random() % GUEST_PAGES;

		/* Mostly hinted pages (taken back), some never hinted. */
		if (!r->hinted[p] && random() % 4)
			continue;
		gpas[n++] = GUEST_GPA + (uint64_t)p * 4096;
		r->asked[p] = 1;
	}
	if (r->mode == DEMO_UFFD_HOST) {
		for (size_t i = 0; i < n; i++)
			*(volatile uint64_t *)(r->mem + (gpas[i] - GUEST_GPA)) = MARK;
	} else {
		err = minivm_guest_write(r->m, gpas, n, MARK);
	}
	if (err)
		return err;
	if (r->mode == DEMO_RING)
		return harvest_ring(r);
	read_back(r);
	return 0;
}

static uint64_t count_pages(const struct pt_client_result *res, const struct round *r,
			    uint64_t *bad)
{
	uint64_t n = 0;

	*bad = 0;
	for (uint32_t i = 0; i < res->v.nranges; i++) {
		for (uint64_t a = res->ranges[i].gpa; a < res->ranges[i].gpa + res->ranges[i].len;
		     a += 4096) {
			uint64_t p = (a - GUEST_GPA) / 4096;

			n++;
			*bad += a < GUEST_GPA || p >= GUEST_PAGES || !r->hinted[p] || r->written[p];
		}
	}
	return n;
}

/* Every confirmed page must be hinted and not really written; counts must match exactly. */
static int check(struct round *r, const struct pt_client_result *res)
{
	uint64_t bad, free_pages = count_pages(res, r, &bad), expect_free = 0, rewritten = 0;
	uint64_t off_plan = 0;

	for (uint64_t p = 0; p < GUEST_PAGES; p++) {
		expect_free += r->hinted[p] && !r->written[p];
		rewritten += r->hinted[p] && r->written[p];
		off_plan += r->asked[p] != r->written[p];
	}
	printf("\n  %-44s %10s %10s\n", "", "service", r->truth);
	printf("  %-44s %10llu %10llu\n", "pages hinted", (unsigned long long)res->v.hinted,
	       (unsigned long long)r->n_hinted);
	printf("  %-44s %10llu %10llu\n", "pages confirmed free (safe to skip/drop)",
	       (unsigned long long)res->v.free, (unsigned long long)expect_free);
	printf("  %-44s %10llu %10llu\n", "pages kept: written after the hint",
	       (unsigned long long)res->v.kept_written, (unsigned long long)rewritten);
	printf("  %-44s %10llu %10d\n", "pages kept: unsure",
	       (unsigned long long)res->v.kept_unsure, 0);
	printf("  %-44s %10llu\n", "confirmed pages really written (data loss)",
	       (unsigned long long)bad);
	if (off_plan)
		printf("  %llu pages written differ from the writes asked for\n",
		       (unsigned long long)off_plan);
	return bad || off_plan || free_pages != res->v.free || res->v.free != expect_free ||
	       res->v.kept_written != rewritten || res->v.hinted != r->n_hinted ||
	       res->v.unsure_reason;
}

/* ARM and what makes it effective: the VMM's ring reset, or nothing (uffd: ARM protects). */
static int arm(struct round *r)
{
	if (r->mode != DEMO_RING)
		return step("ARM command ID 2 (guest memory write-protected)",
			    pt_client_arm(r->c, CMD_ID));
	return step("ARM command ID 2 (write log cleared, new epoch)",
		    pt_client_arm(r->c, CMD_ID)) ||
	       step("VMM sync: harvest + KVM_RESET_DIRTY_RINGS (write-protect)", minivm_sync(r->m));
}

static int hint_round(struct round *r)
{
	const char *who = r->mode == DEMO_UFFD_HOST
				  ? "VMM writes 700 pages of its guest memory"
				  : "guest writes 700 pages, most of them hinted ones";
	struct pt_client_result res = { 0 };
	int err;

	if (arm(r) || step("guest hints its free 4 MiB blocks under ID 2", guest_hints(r)) ||
	    step(who, guest_rewrites(r)) ||
	    step("driver STOP for ID 2", pt_client_stop(r->c, CMD_ID)) ||
	    step("QUERY ID 2: verdict computed now",
		 pt_client_query(r->c, CMD_ID, PT_Q_HINTS, &res)))
		return -1;
	err = check(r, &res);
	pt_client_result_free(&res);
	step("DONE for ID 2", pt_client_done(r->c, CMD_ID));
	printf("\n  check against %s: %s\n",
	       r->mode == DEMO_RING ? "KVM's dirty ring" : "guest memory",
	       err ? "MISMATCH" : "OK (every confirmed page untouched; every rewrite kept)");
	return err;
}

static void round_end(struct round *r)
{
	pt_client_close(r->c);
	if (r->uffd >= 0)
		close(r->uffd);
	if (r->mode == DEMO_UFFD_HOST && r->mem)
		munmap(r->mem, GUEST_BYTES);
	minivm_destroy(r->m);
}

/* Runs one round in `mode`: 0 if it matched. */
static int run_round(enum demo_mode mode, const char *socket)
{
	static struct round r;
	int err;

	memset(&r, 0, sizeof(r));
	r.mode = mode;
	r.uffd = -1;
	r.truth = mode == DEMO_RING ? "guest/KVM" : mode == DEMO_UFFD_KVM ? "guest" : "VMM";
	err = mode == DEMO_RING ? setup_ring(&r, socket) : setup_uffd(&r, socket);
	if (!err)
		err = hint_round(&r);
	round_end(&r);
	return err ? 1 : 0;
}

static int ring_part(const char *socket)
{
	int kvm = minivm_supported(MINIVM_DIRTY_RING);

	printf("\n1. dirty-ring mode (KVM's dirty ring, BPF write log)\n");
	if (kvm) {
		printf("  SKIPPED: needs a KVM guest with a dirty ring: /dev/kvm not usable (%s)\n",
		       strerror(-kvm));
		return 0;
	}
	return run_round(DEMO_RING, socket);
}

static int uffd_part(const char *socket)
{
	int kvm = minivm_supported(MINIVM_DIRTY_NONE);

	printf("\n2. userfaultfd mode (dirty logging off, write-protect write log)\n");
	if (kvm)
		printf("  no /dev/kvm: the VMM writes its own memory (KVM: %s)\n", strerror(-kvm));
	return run_round(kvm ? DEMO_UFFD_HOST : DEMO_UFFD_KVM, socket);
}

int main(void)
{
	struct pt_spawned svc;
	int err;

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("pagetrack demo: one free-page-hinting round in each write-log mode\n\n");
	err = pt_spawn_service(&svc, NULL, "demo", NULL);
	if (step("start pagetrackd (private socket and pins, canary)", err))
		return 1;
	printf("    socket %s, pins %s\n", svc.socket, svc.pin_dir);
	err = ring_part(svc.socket);
	err |= uffd_part(svc.socket);
	printf("\n");
	step("stop pagetrackd and remove its pins", pt_spawn_stop(&svc, SIGTERM));
	printf("\npagetrack demo: %s\n",
	       err ? "MISMATCH (see above)" : "every round that ran matched");
	return err ? 1 : 0;
}
