// SPDX-License-Identifier: GPL-2.0
/*
 * Pins are trusted as a whole or not at all. A restart reuses a complete set (the write log
 * keeps what the guests wrote); a set with one map missing (removed by hand) starts afresh
 * instead of creating that map empty beside the others: an empty write log under the reused
 * VM table would read as "nothing written", an empty 32-bit record under its kept "complete
 * since boot" as "no 32-bit process". So does a set missing a write-log program's link (it was
 * detached). One tracker per pin directory. Each case uses its own directory and removes it.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bpf/bpf.h>

#include "t.h"
#include "writelog/loader.h"
#include "writelog/vmlog.h"
#include "writelog.skel.h"

#define PAGE_WRITTEN 5

struct pins {
	char dir[128];
	uint64_t bit; /* the written page's bit in pt_log */
};

static struct pt_tracker *open_pinned(struct pins *p)
{
	struct pt_loader_opts o = { .tdp = 0, .log_mb = 1, .pin_dir = p->dir };
	struct pt_tracker *t = NULL;

	return pt_tracker_open(&t, &o) ? NULL : t;
}

static bool bit_set(const struct pt_tracker *t, uint64_t bit)
{
	return __atomic_load_n(&t->log[bit / 64], __ATOMIC_RELAXED) & (1ull << (bit % 64));
}

/* A first run: a VM tracked, one of its pages written; the pins stay. */
static int first_run(struct pins *p, const char *name)
{
	struct pt_slot_cfg slot = { .gpa = 1ull << 30, .size = 64 << 12, .id = 1, .logged = 1 };
	struct pt_tracker *t;
	bool existed;
	uint32_t vm;
	int err = -1;

	snprintf(p->dir, sizeof(p->dir), "/sys/fs/bpf/pt_test_pins_%s_%d", name, (int)getpid());
	pt_tracker_unpin(p->dir);
	t = open_pinned(p);
	if (t && !t->reused_maps && !pt_vm_track(t, getpid(), &slot, 1, 0, &vm, &existed)) {
		pt_vm_mark_written(t, vm, PAGE_WRITTEN, 1);
		p->bit = t->vms[vm].log_bit_base + PAGE_WRITTEN;
		err = bit_set(t, p->bit) ? 0 : -1;
	}
	pt_tracker_close(t);
	return err;
}

static int whole_pins_reused(void)
{
	struct pt_tracker *t;
	struct pins p;
	bool reused, kept;

	T_REQUIRE(t_need_bpf());
	CHECK(!first_run(&p, "whole"));
	t = open_pinned(&p);
	reused = t && t->reused_maps;
	kept = t && bit_set(t, p.bit);
	pt_tracker_close(t);
	pt_tracker_unpin(p.dir);
	CHECKF(reused && kept, "reused %d, written page still logged %d", reused, kept);
	return 0;
}

/* One map's pin removed between two runs: the next starts afresh, with every map pinned. */
static int one_missing(const char *map)
{
	char path[256];
	struct pt_tracker *t;
	struct pins p;
	bool reused = true, kept = true, all = false;

	CHECK(!first_run(&p, map));
	snprintf(path, sizeof(path), "%s/%s", p.dir, map);
	CHECKF(!unlink(path), "unlink %s", path);
	t = open_pinned(&p);
	if (t) {
		reused = t->reused_maps;
		kept = bit_set(t, p.bit);
		all = !access(path, F_OK);
	}
	pt_tracker_close(t);
	pt_tracker_unpin(p.dir);
	CHECKF(t && !reused && !kept && all,
	       "without %s: opened %d, reused %d, old written page still logged %d, pinned again "
	       "%d",
	       map, t != NULL, reused, kept, all);
	return 0;
}

static int missing_log_starts_afresh(void)
{
	T_REQUIRE(t_need_bpf());
	return one_missing("pt_log");
}

static int missing_compat_record_starts_afresh(void)
{
	T_REQUIRE(t_need_bpf());
	return one_missing("pt_compat");
}

/* Pins that cannot all be removed (here an entry that is a directory) stop the start. */
static int unremovable_pins_stop_the_start(void)
{
	char path[256], stuck[256];
	struct pt_tracker *t;
	struct pins p;

	T_REQUIRE(t_need_bpf());
	CHECK(!first_run(&p, "stuck"));
	snprintf(path, sizeof(path), "%s/pt_log", p.dir);
	snprintf(stuck, sizeof(stuck), "%s/stuck", p.dir);
	CHECK(!unlink(path) && !mkdir(stuck, 0700));
	t = open_pinned(&p);
	pt_tracker_close(t);
	rmdir(stuck);
	pt_tracker_unpin(p.dir);
	CHECKF(!t, "a tracker opened on pins it could not all remove");
	return 0;
}

/* The dirty-ring program's link removed: it was detached, its pushes unseen. */
static int missing_link_starts_afresh(void)
{
	T_REQUIRE(t_need_bpf());
	return one_missing("link_pt_ring_push");
}

/* The id of the link pinned at @path, or 0. */
static uint32_t pinned_link_id(const char *path)
{
	struct bpf_link_info info = { 0 };
	uint32_t len = sizeof(info);
	int fd = bpf_obj_get(path);

	if (fd < 0)
		return 0;
	if (bpf_obj_get_info_by_fd(fd, &info, &len))
		info.id = 0;
	close(fd);
	return info.id;
}

static bool link_alive(uint32_t id)
{
	int fd = bpf_link_get_fd_by_id(id);

	if (fd < 0)
		return false;
	close(fd);
	return true;
}

/*
 * A link pin removed by hand while the tracker runs does not detach the program: the tracker
 * holds its own reference until it closes (the next start then finds the pin missing).
 */
static int running_tracker_keeps_its_links(void)
{
	char path[256];
	struct pt_tracker *t;
	struct pins p;
	uint32_t id;
	bool while_open, after_close;

	T_REQUIRE(t_need_bpf());
	snprintf(p.dir, sizeof(p.dir), "/sys/fs/bpf/pt_test_pins_links_%d", (int)getpid());
	snprintf(path, sizeof(path), "%s/link_pt_ring_push", p.dir);
	t = open_pinned(&p);
	CHECK(t);
	id = pinned_link_id(path);
	unlink(path);
	while_open = id && link_alive(id);
	pt_tracker_close(t);
	after_close = id && link_alive(id);
	pt_tracker_unpin(p.dir);
	CHECKF(id && while_open && !after_close, "link %u: alive while open %d, after close %d", id,
	       while_open, after_close);
	return 0;
}

/* Tasks the start's iterator visited in this open (its sum map is not pinned). */
static uint64_t walked(struct pt_tracker *t)
{
	struct pt_compat_iter_sum sum = { 0 };
	uint32_t zero = 0;

	if (!t || bpf_map__lookup_elem(t->skel->maps.pt_iter_sum, &zero, sizeof(zero), &sum,
				       sizeof(sum), 0))
		return 0;
	return sum.tasks;
}

/*
 * A restart keeps the 32-bit record without walking the processes again, unless a program
 * that keeps it was detached meanwhile: pt_fork's link removed means forks went unseen (a
 * 32-bit child unmarked), and the start walks every process again.
 */
static int missing_fork_link_walks_again(void)
{
	char path[256];
	struct pt_tracker *t;
	struct pins p;
	uint64_t kept, again;
	int progs;

	T_REQUIRE(t_need_bpf());
	snprintf(p.dir, sizeof(p.dir), "/sys/fs/bpf/pt_test_pins_fork_%d", (int)getpid());
	snprintf(path, sizeof(path), "%s/link_pt_fork", p.dir);
	t = open_pinned(&p);
	CHECK(t);
	progs = t->compat_progs;
	pt_tracker_close(t);
	if (progs != 2) {
		pt_tracker_unpin(p.dir);
		return t_skip("pt_exec/pt_fork did not attach here");
	}
	t = open_pinned(&p);
	kept = walked(t);
	pt_tracker_close(t);
	unlink(path);
	t = open_pinned(&p);
	again = walked(t);
	pt_tracker_close(t);
	pt_tracker_unpin(p.dir);
	CHECKF(!kept && again, "tasks walked at a plain restart %llu, after pt_fork's gap %llu",
	       (unsigned long long)kept, (unsigned long long)again);
	return 0;
}

/* A second tracker on the same pin directory is refused while the first holds it. */
static int one_service_per_pin_dir(void)
{
	struct pt_tracker *a, *b = NULL, *c = NULL;
	struct pins p;

	T_REQUIRE(t_need_bpf());
	snprintf(p.dir, sizeof(p.dir), "/sys/fs/bpf/pt_test_pins_lock_%d", (int)getpid());
	a = open_pinned(&p);
	if (a)
		b = open_pinned(&p);
	pt_tracker_close(a);
	if (a && !b)
		c = open_pinned(&p);
	pt_tracker_close(b);
	pt_tracker_close(c);
	pt_tracker_unpin(p.dir);
	CHECKF(a && !b && c, "first %d, second while the first is open %d, after it %d", !!a, !!b,
	       !!c);
	return 0;
}

/* The uninstall step is refused while a tracker holds the directory, and removes it after. */
static int uninstall_waits_for_the_service(void)
{
	struct pt_tracker *a;
	struct pins p;
	char log[192];
	int busy = 0, kept = 0, done = -1;

	T_REQUIRE(t_need_bpf());
	snprintf(p.dir, sizeof(p.dir), "/sys/fs/bpf/pt_test_pins_uninstall_%d", (int)getpid());
	snprintf(log, sizeof(log), "%s/pt_log", p.dir);
	a = open_pinned(&p);
	if (a) {
		busy = pt_tracker_unpin(p.dir);
		kept = !access(log, F_OK);
	}
	pt_tracker_close(a);
	if (a)
		done = pt_tracker_unpin(p.dir);
	CHECKF(a && busy == -EBUSY && kept && !done && access(p.dir, F_OK),
	       "open %d, unpin while open %d (log kept %d), after close %d", !!a, busy, kept, done);
	return 0;
}

T_MAIN(T_CASE(whole_pins_reused), T_CASE(missing_log_starts_afresh),
       T_CASE(missing_compat_record_starts_afresh), T_CASE(missing_link_starts_afresh),
       T_CASE(one_service_per_pin_dir), T_CASE(running_tracker_keeps_its_links),
       T_CASE(missing_fork_link_walks_again), T_CASE(unremovable_pins_stop_the_start),
       T_CASE(uninstall_waits_for_the_service))
