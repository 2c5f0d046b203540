// SPDX-License-Identifier: GPL-2.0
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>
#include <linux/magic.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "compat.h"
#include "loader.h"
#include "shared/log.h"
#include "writelog.skel.h"

_Static_assert(PT_KVM_SET_USER_MEMORY_REGION == KVM_SET_USER_MEMORY_REGION, "ioctl number");
_Static_assert(PT_KVM_ENABLE_CAP == KVM_ENABLE_CAP, "ioctl number");
_Static_assert(PT_KVM_GET_DIRTY_LOG == KVM_GET_DIRTY_LOG, "ioctl number");
_Static_assert(PT_KVM_CLEAR_DIRTY_LOG == KVM_CLEAR_DIRTY_LOG, "ioctl number");
_Static_assert(PT_KVM_RESET_DIRTY_RINGS == KVM_RESET_DIRTY_RINGS, "ioctl number");
_Static_assert(PT_KVM_CREATE_VCPU == KVM_CREATE_VCPU, "ioctl number");
_Static_assert(PT_KVM_CREATE_VM == KVM_CREATE_VM, "ioctl number");
_Static_assert(PT_KVM_CAP_DIRTY_LOG_RING == KVM_CAP_DIRTY_LOG_RING, "cap number");
/* Each CPU's cache in one cache line of the page-aligned pt_cache values. */
_Static_assert(sizeof(struct pt_cpu_cache) == 64, "pt_cpu_cache is one cache line");
_Static_assert(sizeof(struct pt_cpu_ring) % 64 == 0, "pt_cpu_ring keeps its cache aligned");

static int mount_if_missing(const char *dir, const char *type, long magic)
{
	struct statfs sf;

	if (!statfs(dir, &sf) && sf.f_type == (typeof(sf.f_type))magic)
		return 0;
	if (mkdir(dir, 0755) && errno != EEXIST)
		return -errno;
	if (mount(type, dir, type, 0, NULL))
		return -errno;
	pt_info("mounted %s on %s", type, dir);
	return 0;
}

int pt_ensure_mounts(void)
{
	int err;

	err = mount_if_missing("/sys/fs/bpf", "bpf", BPF_FS_MAGIC);
	if (err) {
		pt_err("cannot mount bpffs on /sys/fs/bpf: %s", strerror(-err));
		return err;
	}
	/* libbpf finds tracepoint ids under tracefs; debugfs/tracing is the old place. */
	err = mount_if_missing("/sys/kernel/tracing", "tracefs", TRACEFS_MAGIC);
	if (err)
		pt_warn("cannot mount tracefs on /sys/kernel/tracing: %s", strerror(-err));
	return 0;
}

static bool param_on(const char *path)
{
	char buf[8] = "";
	FILE *f = fopen(path, "r");

	if (!f)
		return false;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = 0;
	fclose(f);
	return buf[0] == 'Y' || buf[0] == 'y' || buf[0] == '1';
}

/* With EPT/NPT the fault tracepoints carry GPAs; with shadow paging (or PVM) they carry GVAs. */
bool pt_host_tdp(void)
{
	return param_on("/sys/module/kvm_intel/parameters/ept") ||
	       param_on("/sys/module/kvm_amd/parameters/npt");
}

/*
 * pids the service sees are the ones devices register; outside the initial PID namespace the
 * programs must translate into ours (bpf_get_ns_current_pid_tgid).
 */
#define PROC_PID_INIT_INO 0xEFFFFFFCu

static void set_pidns(struct pt_tracker *t)
{
	struct writelog_bpf *skel = t->skel;
	struct stat st;

	if (stat("/proc/self/ns/pid", &st) || st.st_ino == PROC_PID_INIT_INO)
		return;
	skel->rodata->pidns_dev = st.st_dev;
	skel->rodata->pidns_ino = st.st_ino;
	t->pidns_ino = st.st_ino;
	pt_info("running in a PID namespace (inode %lu): VMM pids are taken in it",
		(unsigned long)st.st_ino);
}

static int pin_path(char *buf, size_t len, const char *dir, const char *name)
{
	int n = snprintf(buf, len, "%s/%s", dir, name);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/*
 * Attach one program and pin its link as link_<prog>. A link pinned by an earlier run is
 * replaced only after the new one is attached, so both run for a moment and none is missed.
 */
static int attach_pinned(struct pt_tracker *t, struct bpf_program *prog)
{
	char path[512];
	struct bpf_link *link;
	int err;

	if (t->no_pin) {
		if (t->nlinks >= (int)(sizeof(t->links) / sizeof(t->links[0])))
			return -E2BIG;
		link = bpf_program__attach(prog);
		if (!link)
			return -errno;
		t->links[t->nlinks++] = link;
		return 0;
	}
	if (t->nlinks >= (int)(sizeof(t->links) / sizeof(t->links[0])))
		return -E2BIG;
	err = pin_path(path, sizeof(path), t->pin_dir, "link_");
	if (err)
		return err;
	strncat(path, bpf_program__name(prog), sizeof(path) - strlen(path) - 1);
	if (!access(path, F_OK))
		t->reused_links = true;
	link = bpf_program__attach(prog);
	if (!link) {
		err = -errno;
		pt_err("attach %s: %s", bpf_program__name(prog), strerror(-err));
		return err;
	}
	unlink(path);
	err = bpf_link__pin(link, path);
	if (err)
		pt_err("pin link %s: %s", path, strerror(-err));
	/* The pin holds the attachment across restarts. Our reference holds it while we run,
	 * so that a pin removed by hand cannot detach the program under a running service;
	 * pt_tracker_close() drops our reference, and the pin, if still there, keeps it. */
	bpf_link__disconnect(link);
	t->links[t->nlinks++] = link;
	return err;
}

/* The programs that follow 32-bit code (exec, fork): their attach types may be missing. */
static bool is_compat_prog(const struct bpf_program *prog)
{
	const char *n = bpf_program__name(prog);

	return !strcmp(n, "pt_exec") || !strcmp(n, "pt_fork");
}

static bool is_iter_prog(const struct bpf_program *prog)
{
	return !strcmp(bpf_program__name(prog), "pt_compat_iter");
}

static bool is_fault_prog(const struct bpf_program *prog)
{
	const char *n = bpf_program__name(prog);

	return !strcmp(n, "pt_page_fault") || !strcmp(n, "pt_fast_page_fault");
}

static int attach_all(struct pt_tracker *t)
{
	struct bpf_program *prog;
	size_t off = 0;
	int err;

	bpf_object__for_each_program(prog, t->skel->obj)
	{
		/* Without TDP a fault address is a GVA: the fault path stays detached. */
		bool on = (t->tdp || !is_fault_prog(prog)) && bpf_program__autoload(prog);

		if (is_iter_prog(prog)) {
			/* Run once by mark_compat_since, never attached. */
			off += snprintf(t->progs + off, sizeof(t->progs) - off, "%s%s:%s",
					off ? " " : "", bpf_program__name(prog),
					on ? "once" : "off");
			continue;
		}
		if (on) {
			err = attach_pinned(t, prog);
			/* Without them every VMM whose /proc/PID/exe is unreadable is kept
			 * (compat.c): fail-safe, not fatal. */
			if (err && is_compat_prog(prog)) {
				pt_warn("32-bit processes are not followed (%s): %s",
					strerror(-err),
					"VMMs whose executable cannot be read get keep verdicts");
				on = false;
			} else if (err) {
				return err;
			} else {
				t->attached++;
				t->compat_progs += is_compat_prog(prog);
			}
		}
		off += snprintf(t->progs + off, sizeof(t->progs) - off, "%s%s:%s", off ? " " : "",
				bpf_program__name(prog), on ? "attached" : "off");
		if (off >= sizeof(t->progs))
			off = sizeof(t->progs) - 1;
	}
	return 0;
}

/* The id of the program behind the pinned link of program `name`; 0 if none. */
static uint32_t pinned_prog_id(struct pt_tracker *t, const char *name)
{
	struct bpf_link_info info;
	__u32 len = sizeof(info);
	char path[512];
	int fd;

	if (t->no_pin || pin_path(path, sizeof(path), t->pin_dir, "link_"))
		return 0;
	strncat(path, name, sizeof(path) - strlen(path) - 1);
	fd = bpf_obj_get(path);
	if (fd < 0)
		return 0;
	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(fd, &info, &len))
		info.prog_id = 0;
	close(fd);
	return info.prog_id;
}

static uint32_t prog_id(struct bpf_program *prog)
{
	struct bpf_prog_info info;
	__u32 len = sizeof(info);

	memset(&info, 0, sizeof(info));
	return bpf_obj_get_info_by_fd(bpf_program__fd(prog), &info, &len) ? 0 : info.id;
}

#define PROC_TIME_INIT_INO 0xEFFFFFFAu

uint64_t pt_boottime_ns(void)
{
	struct timespec ts;
	struct stat st;

	/* In a time namespace our clock (and /proc's start times) are shifted from BPF's. */
	if (!stat("/proc/self/ns/time", &st) && st.st_ino != PROC_TIME_INIT_INO)
		return 0;
	if (clock_gettime(CLOCK_BOOTTIME, &ts))
		return 0;
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * Since when does a record (pt_vm_created, pt_compat) hold every event? From the moment its
 * program (`mine`) was attached: `now`, read after our attach, or kept from an earlier run if
 * the program it recorded with (`old_id`, behind the pinned link we replaced) is the one that
 * recorded that time, which then ran until ours was attached beside it. 0 (never complete) in
 * a time namespace (`now` 0).
 */
static int mark_since(struct bpf_map *m, uint32_t old_id, uint64_t mine, uint64_t now)
{
	uint32_t k_since = PT_CREATED_SINCE, k_prog = PT_CREATED_PROG;
	uint64_t since = 0, id = 0;

	bpf_map__lookup_elem(m, &k_since, sizeof(k_since), &since, sizeof(since), 0);
	bpf_map__lookup_elem(m, &k_prog, sizeof(k_prog), &id, sizeof(id), 0);
	if (!now || !old_id || id != old_id || !since)
		since = now;
	if (bpf_map__update_elem(m, &k_since, sizeof(k_since), &since, sizeof(since), 0) ||
	    bpf_map__update_elem(m, &k_prog, sizeof(k_prog), &mine, sizeof(mine), 0))
		return -errno;
	return 0;
}

/*
 * Run the start's task iterator (compat.c) over the processes that exist already; 0 if it
 * judged every one, with the time and count it took in the log.
 */
static int compat_iterate(struct pt_tracker *t)
{
	struct pt_compat_iter_sum sum;
	uint64_t t0 = pt_boottime_ns();
	int err = pt_compat_iter_run(t, &sum);

	if (err == -ENOENT)
		pt_warn("32-bit processes that exist already cannot be told (the task iterator is "
			"not loaded): VMMs started before now whose executable cannot be read get "
			"keep verdicts; later ones are followed");
	else if (err)
		pt_warn("32-bit processes that exist already cannot be told (task iterator: %s): "
			"VMMs started before now whose executable cannot be read get keep "
			"verdicts; "
			"later ones are followed",
			strerror(-err));
	else
		pt_info("existing processes looked at for 32-bit code: %llu tasks in %.2f ms, %llu "
			"not 64-bit (marked)",
			(unsigned long long)sum.tasks, (double)(pt_boottime_ns() - t0) / 1e6,
			(unsigned long long)sum.marked);
	return err;
}

/*
 * A mark BPF lost at a time it could not record exactly leaves the lost time all ones
 * (raise_to): nothing would count as recorded again, across restarts. Every such loss
 * happened before now. A loss between our read and our write raises nothing (all ones is
 * the top) and would be lost with it, so the time written is a second ahead: a process
 * started within that second counts as "cannot tell".
 */
static void lost_not_after(struct bpf_map *m, uint64_t now)
{
	/* The same key in pt_created_since and pt_compat_since. */
	uint32_t k_lost = PT_CREATED_LOST;
	uint64_t lost = 0, ahead = now + 1000000000ull;

	if (now && !bpf_map__lookup_elem(m, &k_lost, sizeof(k_lost), &lost, sizeof(lost), 0) &&
	    lost > ahead)
		bpf_map__update_elem(m, &k_lost, sizeof(k_lost), &ahead, sizeof(ahead), 0);
}

/*
 * Since when pt_compat holds every process that ran 32-bit code. pt_exec and pt_fork see every
 * exec and fork from their attach on, so the record holds every process started after that;
 * the start's iterator judges the processes that existed before, and once it has finished (an
 * exec or fork while it runs is the programs' to see) the record holds every process (since 1).
 * A failed iterator leaves the time of the attach: only processes started before it are then
 * "cannot tell", and a later start tries the iterator again. Kept from an earlier run if the
 * pt_exec that recorded it (`old_exec`, behind the pinned link we replaced) ran until ours was
 * attached, and pt_fork's link was still pinned (the caller passes 0 otherwise). 0 (never:
 * REGISTER falls back to the executable, else keeps) without the programs, or in a time
 * namespace.
 */
static void mark_compat_since(struct pt_tracker *t, uint32_t old_exec)
{
	struct bpf_map *m = t->skel->maps.pt_compat_since;
	uint32_t k_since = PT_CREATED_SINCE, k_lost = PT_CREATED_LOST;
	uint64_t now = pt_boottime_ns(), since = 0, zero = 0, one = 1;
	bool followed = t->compat_progs == 2 && now;
	uint64_t mine = followed ? prog_id(t->skel->progs.pt_exec) : 0;

	lost_not_after(m, now);
	if (mark_since(m, followed ? old_exec : 0, mine, followed ? now : 0) ||
	    bpf_map__lookup_elem(m, &k_since, sizeof(k_since), &since, sizeof(since), 0)) {
		pt_warn("cannot record since when 32-bit processes are seen: %s", strerror(errno));
		return;
	}
	if (!followed || since == 1)
		return;
	/* The walk judges every live process afresh: a mark lost before it is found again (one
	 * lost during it raises the time again). */
	bpf_map__update_elem(m, &k_lost, sizeof(k_lost), &zero, sizeof(zero), 0);
	if (!compat_iterate(t) &&
	    bpf_map__update_elem(m, &k_since, sizeof(k_since), &one, sizeof(one), 0))
		pt_warn("cannot record that every process was judged: %s", strerror(errno));
}

static void mark_created_since(struct pt_tracker *t, uint32_t old_id)
{
	struct bpf_map *m = t->skel->maps.pt_created_since;
	uint32_t k_since = PT_CREATED_SINCE;
	uint64_t since = 0, now = pt_boottime_ns();
	uint64_t mine = prog_id(t->skel->progs.pt_ioctl_enter);

	lost_not_after(m, now);
	if (mark_since(m, old_id, mine, now) ||
	    bpf_map__lookup_elem(m, &k_since, sizeof(k_since), &since, sizeof(since), 0))
		pt_warn("cannot record since when VM creations are seen: %s", strerror(errno));
	else if (since)
		pt_debug("KVM_CREATE_VM of every process recorded since boot + %llu ms%s",
			 (unsigned long long)(since / 1000000),
			 since == now ? "" : " (earlier run)");
	else
		pt_info("in a time namespace: VM creations are recorded, but no process is known "
			"to have started after the recording began");
}

/* pt_pending: two u64, one page when mapped. */
#define PENDING_BYTES 4096

void pt_tracker_bump_generation(struct pt_tracker *t)
{
	/* Atomic: the BPF programs bump it too (memslot changes, new vCPUs). */
	__atomic_add_fetch(&t->pending[PT_GEN], 1, __ATOMIC_SEQ_CST);
}

/* pt_cache, whole pages. */
static size_t cpus_bytes(const struct pt_tracker *t)
{
	size_t page = sysconf(_SC_PAGESIZE);

	return (t->ncpu * sizeof(struct pt_cpu_ring) + page - 1) / page * page;
}

static int map_mmap(struct bpf_map *map, size_t size, void **out)
{
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, bpf_map__fd(map), 0);

	if (p == MAP_FAILED)
		return -errno;
	*out = p;
	return 0;
}

static int open_skel(struct pt_tracker *t, const struct pt_loader_opts *o)
{
	LIBBPF_OPTS(bpf_object_open_opts, oo, .pin_root_path = o->no_pin ? NULL : t->pin_dir);
	unsigned log_mb = o->log_mb ? o->log_mb : PT_DEFAULT_LOG_MB;
	struct bpf_map *map;
	int err, ncpu;

	t->skel = writelog_bpf__open_opts(&oo);
	if (!t->skel)
		return -errno;
	t->skel->rodata->tdp = t->tdp;
	if (o->raise_gives_up)
		t->skel->rodata->raise_tries = 0;
	if (t->compat_off >= 1)
		bpf_program__set_autoload(t->skel->progs.pt_compat_iter, false);
	if (t->compat_off >= 2) {
		bpf_program__set_autoload(t->skel->progs.pt_exec, false);
		bpf_program__set_autoload(t->skel->progs.pt_fork, false);
	}
	set_pidns(t);
	t->log_words = (uint64_t)log_mb * 1024 * 1024 / 8;
	err = bpf_map__set_max_entries(t->skel->maps.pt_log, t->log_words);
	if (err)
		return err;
	/* pt_ring_push's cache: one entry per CPU, indexed by CPU number. */
	ncpu = libbpf_num_possible_cpus();
	if (ncpu <= 0)
		return ncpu ? ncpu : -EINVAL;
	err = bpf_map__set_max_entries(t->skel->maps.pt_cache, ncpu);
	if (err)
		return err;
	t->ncpu = ncpu;
	if (o->no_pin) {
		bpf_object__for_each_map(map, t->skel->obj) bpf_map__set_pin_path(map, NULL);
	}
	return 0;
}

/*
 * Open and load with every program; if that fails, without the start's task iterator (a kernel
 * without iter/task or the BTF it needs); then also without pt_exec/pt_fork (no tp_btf). The
 * write log still loads, fail-safe: compat.c then keeps every VMM it cannot judge otherwise
 * (by its executable). A failed load leaves the pins as they were. t->skel is NULL on error.
 */
static int load_any(struct pt_tracker *t, const struct pt_loader_opts *o)
{
	static const char *const without[] = { "the start's task iterator",
					       "the 32-bit process programs" };
	int err = -EINVAL;

	for (int off = o->no_compat ? 2 : o->no_compat_iter; off < 3; off++) {
		t->compat_off = off;
		err = open_skel(t, o);
		if (!err)
			err = writelog_bpf__load(t->skel);
		if (!err)
			break;
		writelog_bpf__destroy(t->skel);
		t->skel = NULL;
		if (off < 2)
			pt_warn("loading BPF programs: %s; again without %s (VMMs whose executable "
				"cannot be read may get keep verdicts)",
				strerror(-err), without[off]);
	}
	return err;
}

/*
 * Pins are trusted only as a whole. Each map means something only beside the others: a write
 * log beside the VM table whose epochs it belongs to, the 32-bit and VM-creation records
 * beside the times since when they are complete. One missing (removed by hand, or a map this
 * build adds) would be created empty beside reused ones: an empty log under a reused VM table
 * reads as "nothing written", an empty 32-bit record under a kept "complete since boot" as "no
 * 32-bit process". A write-log program's link missing beside reused maps means the program was
 * detached for a while, its writes unseen. (pt_exec and pt_fork have their own record of a
 * gap: mark_compat_since.)
 */
struct pin_census {
	int maps, maps_all; /* map pins present, of the maps this build pins */
	int links_missing;  /* links of write-log programs this host attaches */
};

static bool link_pinned(struct pt_tracker *t, const struct bpf_program *prog)
{
	char path[512];

	if (pin_path(path, sizeof(path), t->pin_dir, "link_"))
		return false;
	strncat(path, bpf_program__name(prog), sizeof(path) - strlen(path) - 1);
	return !access(path, F_OK);
}

/* @links: count the missing links too (an opener that attaches relies on them). */
static int pin_census(struct pt_tracker *t, bool links, struct pin_census *c)
{
	LIBBPF_OPTS(bpf_object_open_opts, oo, .pin_root_path = t->pin_dir);
	struct writelog_bpf *skel = writelog_bpf__open_opts(&oo);
	struct bpf_program *prog;
	struct bpf_map *map;

	memset(c, 0, sizeof(*c));
	if (!skel)
		return -errno;
	bpf_object__for_each_map(map, skel->obj)
	{
		const char *path = bpf_map__pin_path(map);

		if (!path)
			continue;
		c->maps_all++;
		c->maps += !access(path, F_OK);
	}
	bpf_object__for_each_program(prog, skel->obj)
	{
		if (!links || is_iter_prog(prog) || is_compat_prog(prog) ||
		    (is_fault_prog(prog) && !t->tdp))
			continue;
		c->links_missing += !link_pinned(t, prog);
	}
	writelog_bpf__destroy(skel);
	return 0;
}

/*
 * Every pin goes, the directory stays (it holds our lock: lock_pin_dir). A map pin left
 * behind would be reused beside new empty ones: the start stops instead.
 */
static int drop_all_pins(struct pt_tracker *t)
{
	struct pin_census c;
	int err = pt_tracker_unpin_entries(t->pin_dir);

	if (!err)
		err = pin_census(t, false, &c);
	if (!err && c.maps)
		err = -EEXIST;
	if (err)
		pt_err("cannot remove the pins in %s (%s): not starting on a partial set",
		       t->pin_dir, strerror(-err));
	t->reused_maps = false;
	return err;
}

/* Pins of an earlier run that cannot be trusted as a whole go, all of them; 0 or -errno. */
static int drop_partial_pins(struct pt_tracker *t, bool links)
{
	struct pin_census c;
	int err = pin_census(t, links, &c);

	if (err) {
		pt_err("reading the pins in %s: %s", t->pin_dir, strerror(-err));
		return err;
	}
	if (!c.maps || (c.maps == c.maps_all && !c.links_missing))
		return 0;
	pt_warn("pins in %s are incomplete (%d of %d maps, %d program links missing): removing "
		"them; every VM must register again, nothing is confirmed from the old log",
		t->pin_dir, c.maps, c.maps_all, c.links_missing);
	return drop_all_pins(t);
}

static int load_skel(struct pt_tracker *t, const struct pt_loader_opts *o)
{
	char path[512];
	int err;

	if (!o->no_pin) {
		pin_path(path, sizeof(path), t->pin_dir, "pt_vm_state");
		t->reused_maps = !access(path, F_OK);
		err = drop_partial_pins(t, !o->no_attach);
		if (err)
			return err;
	}
	err = load_any(t, o);
	if (err && t->reused_maps) {
		/* Pins from an incompatible build (other layout or log size): start afresh.
		 * Every VM must register again; nothing can be confirmed from the old log. */
		pt_warn("pinned maps in %s do not match this build (%s): removing them", t->pin_dir,
			strerror(-err));
		err = drop_all_pins(t);
		if (!err)
			err = load_any(t, o);
	}
	if (err)
		pt_err("loading BPF programs: %s", strerror(-err));
	return err;
}

/* An exclusive flock on directory @dir, its descriptor in *fd (else -1): 0, -EBUSY if another
 * process holds it, or -errno. */
static int flock_dir(const char *dir, int *fd)
{
	int err;

	*fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (*fd < 0)
		return -errno;
	if (!flock(*fd, LOCK_EX | LOCK_NB))
		return 0;
	err = errno == EWOULDBLOCK ? -EBUSY : -errno;
	close(*fd);
	*fd = -1;
	return err;
}

/*
 * One service per pin directory, for the life of the process: a second one's start would
 * re-pin or remove the first one's maps and links while it answers from them.
 */
static int lock_pin_dir(struct pt_tracker *t)
{
	int err = flock_dir(t->pin_dir, &t->pin_lock);

	if (err == -EBUSY)
		pt_err("another pagetrackd holds %s: one service per pin directory", t->pin_dir);
	return err;
}

int pt_tracker_open(struct pt_tracker **out, const struct pt_loader_opts *o)
{
	struct pt_tracker *t;
	int err;

	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->pin_lock = -1;
	snprintf(t->pin_dir, sizeof(t->pin_dir), "%s",
		 o->pin_dir ? o->pin_dir : PT_DEFAULT_PIN_DIR);
	t->tdp = o->tdp < 0 ? pt_host_tdp() : o->tdp;
	t->no_pin = o->no_pin;
	err = pt_ensure_mounts();
	if (err)
		goto cleanup;
	if (!o->no_pin && mkdir(t->pin_dir, 0700) && errno != EEXIST) {
		err = -errno;
		pt_err("create pin directory %s: %s", t->pin_dir, strerror(errno));
		goto cleanup;
	}
	if (!o->no_pin) {
		err = lock_pin_dir(t);
		if (err)
			goto cleanup;
	}
	err = load_skel(t, o);
	if (err)
		goto cleanup;
	err = map_mmap(t->skel->maps.pt_vm_state, sizeof(struct pt_vm_state) * PT_MAX_VMS,
		       (void **)&t->vms);
	if (err)
		goto cleanup;
	err = map_mmap(t->skel->maps.pt_log, t->log_words * 8, (void **)&t->log);
	if (!err)
		err = map_mmap(t->skel->maps.pt_pending, PENDING_BYTES, (void **)&t->pending);
	if (!err)
		err = map_mmap(t->skel->maps.pt_cache, cpus_bytes(t), (void **)&t->cpus);
	if (err)
		goto cleanup;
	if (!o->no_attach) {
		uint32_t old_ioctl = pinned_prog_id(t, "pt_ioctl_enter");
		/* Both programs must have run for the record to go on: a fork unseen leaves
		 * its child unmarked. */
		uint32_t old_exec = pinned_prog_id(t, "pt_fork") ? pinned_prog_id(t, "pt_exec") : 0;

		err = attach_all(t);
		if (err)
			goto cleanup;
		mark_created_since(t, old_ioctl);
		mark_compat_since(t, old_exec);
		/* Programs of an earlier build ran until now beside ours, and may have changed a
		 * slot table without moving the generation our caches rely on. */
		pt_tracker_bump_generation(t);
	}
	pt_info("BPF write tracker loaded (tdp=%s, log %llu MiB, maps %s, %s)",
		t->tdp ? "yes" : "no", (unsigned long long)(t->log_words * 8 >> 20),
		t->reused_maps ? "reused" : "new", t->progs[0] ? t->progs : "not attached");
	*out = t;
	return 0;
cleanup:
	pt_tracker_close(t);
	return err;
}

void pt_tracker_close(struct pt_tracker *t)
{
	if (!t)
		return;
	for (int i = 0; i < t->nlinks; i++) {
		/* A pinned link is disconnected: destroy would leave its descriptor open. (A
		 * tracepoint link's perf event descriptor, which libbpf keeps to itself, stays
		 * open until the process exits: two per pinned open.) */
		if (!t->no_pin)
			close(bpf_link__fd(t->links[i]));
		bpf_link__destroy(t->links[i]);
	}
	if (t->vms)
		munmap(t->vms, sizeof(struct pt_vm_state) * PT_MAX_VMS);
	if (t->log)
		munmap(t->log, t->log_words * 8);
	if (t->pending)
		munmap(t->pending, PENDING_BYTES);
	if (t->cpus)
		munmap(t->cpus, cpus_bytes(t));
	writelog_bpf__destroy(t->skel);
	if (t->pin_lock >= 0)
		close(t->pin_lock);
	free(t);
}

int pt_tracker_unpin_entries(const char *dir)
{
	char path[512];
	struct dirent *de;
	int err = 0;
	DIR *d;

	d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		if (pin_path(path, sizeof(path), dir, de->d_name) || unlink(path))
			err = -errno;
	}
	closedir(d);
	return err;
}

/*
 * The uninstall step, refused while a service holds the directory (lock_pin_dir): its pins
 * would go while it answers from the maps, and its next start would find nothing of the log.
 */
int pt_tracker_unpin(const char *dir)
{
	int lock, err = flock_dir(dir, &lock);

	if (err == -ENOENT)
		return 0;
	if (err == -EBUSY)
		pt_err("a running pagetrackd holds %s: stop it first (systemctl stop "
		       "pagetrackd.service pagetrackd.socket)",
		       dir);
	if (err)
		return err;
	err = pt_tracker_unpin_entries(dir);
	if (rmdir(dir) && errno != ENOENT && !err)
		err = -errno;
	close(lock);
	return err;
}
