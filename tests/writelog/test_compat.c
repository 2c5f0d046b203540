// SPDX-License-Identifier: GPL-2.0
/*
 * A 32-bit (compat) VMM must never get a false free. Its syscalls never reach the syscall
 * tracepoints, so BPF cannot see its memslot changes or dirty-log syncs: pt_exec and pt_fork
 * record which processes run 32-bit code (pt_compat), REGISTER marks such a VMM's VM
 * PT_VM_COMPAT (compat.c: the record, else /proc/PID/exe, else keep), and every verdict of it
 * keeps the pages with PT_WHY_UNTRACKED.
 *
 * Real 32-bit processes (build/tests/compat32, and a 64-bit one forking with `int $0x80`) need
 * the kernel's ia32 emulation: where it is off (this project's PVM hosts) those cases skip and
 * run in `make test-nested`. The rest runs anywhere: a process marked from userspace, as pt_exec
 * would, forks for real through pt_fork, and the verdict of a marked VMM is computed for real.
 */
#include <linux/capability.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "t.h"
#include "caps.h"
#include "daemon/cmdstate.h"
#include "writelog/compat.h"
#include "writelog/loader.h"
#include "writelog/vmlog.h"
#include "writelog.skel.h"

/* /proc/PID/stat counts start times in clock ticks (10 ms). */
#define TICKS_APART_US 30000
#define PAGE	       4096ull
#define SLOT_GPA       (1ull << 30)
#define SLOT_PAGES     64

static char compat32[512];

/* build/tests/compat32, beside this binary (the Makefile builds it with the tests). */
static const char *compat32_path(void)
{
	ssize_t n;
	char *slash;

	if (compat32[0])
		return compat32;
	n = readlink("/proc/self/exe", compat32, sizeof(compat32) - 16);
	if (n <= 0 || !(compat32[n] = 0, slash = strrchr(compat32, '/')))
		return compat32[0] = 0, "compat32";
	strcpy(slash + 1, "compat32");
	return compat32;
}

static struct pt_tracker *open_attached(bool no_compat)
{
	struct pt_loader_opts o = { .tdp = 0, .log_mb = 1, .no_pin = true, .no_compat = no_compat };
	struct pt_tracker *t = NULL;

	if (pt_tracker_open(&t, &o))
		return NULL;
	return t;
}

/* --- children ---------------------------------------------------------------------------- */

/*
 * A child that obeys one-byte commands on `cmd` and answers on `ans`: 'f' forks (the new
 * process answers nothing and waits), answering the new pid; 'x' execs compat32 with its
 * stdout on `ans` (compat32 answers "y"). Killed at the end.
 */
struct child {
	pid_t pid;
	int cmd, ans;
};

static void __attribute__((noreturn)) child_loop(int cmd, int ans, char **argv32)
{
	char c;

	while (read(cmd, &c, 1) == 1) {
		if (c == 'f') {
			pid_t p = fork();

			if (!p)
				for (;;)
					pause();
			if (write(ans, &p, sizeof(p)) != sizeof(p))
				_exit(2);
		} else if (c == 'x') {
			dup2(ans, 1);
			execv(argv32[0], argv32);
			c = errno == ENOEXEC ? 'E' : 'e';
			if (write(ans, &c, 1) != 1)
				_exit(2);
		}
	}
	_exit(0);
}

static int child_start(struct child *ch, char *arg32)
{
	char *argv32[] = { (char *)compat32_path(), arg32, NULL };
	int c[2], a[2];

	if (pipe(c))
		return -errno;
	if (pipe(a)) {
		close(c[0]);
		close(c[1]);
		return -errno;
	}
	ch->pid = fork();
	if (ch->pid < 0)
		return -errno;
	if (!ch->pid) {
		close(c[1]);
		close(a[0]);
		child_loop(c[0], a[1], argv32);
	}
	close(c[0]);
	close(a[1]);
	ch->cmd = c[1];
	ch->ans = a[0];
	return 0;
}

static void child_stop(struct child *ch)
{
	if (ch->pid > 0) {
		kill(ch->pid, SIGKILL);
		waitpid(ch->pid, NULL, 0);
		close(ch->cmd);
		close(ch->ans);
	}
	ch->pid = 0;
}

/* The child forks; the new process's pid, or -1. */
static pid_t child_fork(struct child *ch)
{
	pid_t p = -1;

	if (write(ch->cmd, "f", 1) != 1 || read(ch->ans, &p, sizeof(p)) != sizeof(p))
		return -1;
	return p;
}

/* The child execs compat32: 0 when it runs (n "y" answers), T_SKIP where 32-bit cannot run. */
static int child_exec32(struct child *ch, int n)
{
	char c = 0;

	if (write(ch->cmd, "x", 1) != 1)
		return -1;
	for (int i = 0; i < n; i++) {
		if (read(ch->ans, &c, 1) != 1)
			return -1;
		if (c == 'E')
			return t_skip("32-bit programs do not run here (ia32 emulation off)");
		if (c != 'y')
			return -1;
	}
	return 0;
}

/* Reaps and kills a grandchild (it is not ours to wait for: killing it is enough). */
static void kill_pid(pid_t p)
{
	if (p > 0)
		kill(p, SIGKILL);
}

/* --- the record ---------------------------------------------------------------------------- */

/* pt_compat's entry for process `pid`: its `how`, 0 if none, -errno. */
static int mark_of(struct pt_tracker *t, pid_t pid)
{
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0), r;
	struct pt_compat v;

	if (pidfd < 0)
		return -errno;
	r = bpf_map__lookup_elem(t->skel->maps.pt_compat, &pidfd, sizeof(pidfd), &v, sizeof(v), 0);
	r = r ? (errno == ENOENT ? 0 : -errno) : (int)v.how;
	close(pidfd);
	return r;
}

/* Mark process `pid` from userspace, as pt_exec would for a 32-bit exec. */
static int mark(struct pt_tracker *t, pid_t pid)
{
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0), r;
	struct pt_compat v = { .first_ns = 1, .how = PT_COMPAT_USER };

	if (pidfd < 0)
		return -errno;
	r = bpf_map__update_elem(t->skel->maps.pt_compat, &pidfd, sizeof(pidfd), &v, sizeof(v),
				 BPF_ANY);
	close(pidfd);
	return r;
}

static uint64_t since_get(struct pt_tracker *t, uint32_t key)
{
	uint64_t v = 0;

	bpf_map__lookup_elem(t->skel->maps.pt_compat_since, &key, sizeof(key), &v, sizeof(v), 0);
	return v;
}

static bool exe_unreadable(pid_t pid)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/%d/exe", (int)pid);
	return pt_elf_not_64bit(path) < 0;
}

/* Track process `pid` with one logged slot; PT_VM_COMPAT of its VM, or -1. */
static int track_compat(struct pt_tracker *t, pid_t pid, uint32_t *vm)
{
	struct pt_slot_cfg slot = {
		.gpa = SLOT_GPA, .size = SLOT_PAGES * PAGE, .id = 1, .logged = 1
	};
	bool existed;

	if (pt_vm_track(t, (uint32_t)pid, &slot, 1, 0, vm, &existed))
		return -1;
	return !!(pt_vm(t, *vm)->flags & PT_VM_COMPAT);
}

/* --- cases ------------------------------------------------------------------------------- */

/* A marked process's fork is marked (pt_fork, for real); an unmarked one's is not. */
static int fork_of_marked_process_marked(void)
{
	struct child a = { 0 }, b = { 0 };
	pid_t fa = -1, fb = -1;
	struct pt_tracker *t;
	int err = -1;

	T_REQUIRE(t_need_bpf());
	t = open_attached(false);
	CHECK(t);
	if (t->compat_progs != 2) {
		pt_tracker_close(t);
		return t_skip("pt_exec/pt_fork did not attach here");
	}
	if (child_start(&a, NULL) || child_start(&b, NULL) || mark(t, a.pid))
		goto out;
	fa = child_fork(&a);
	fb = child_fork(&b);
	if (fa <= 0 || fb <= 0)
		goto out;
	if (mark_of(t, fa) != PT_COMPAT_FORK || mark_of(t, fb) != 0 || mark_of(t, b.pid) != 0) {
		fprintf(stderr, "  marks: fork of marked %d, fork of unmarked %d, unmarked %d\n",
			mark_of(t, fa), mark_of(t, fb), mark_of(t, b.pid));
		goto out;
	}
	err = 0;
out:
	kill_pid(fa);
	kill_pid(fb);
	child_stop(&a);
	child_stop(&b);
	pt_tracker_close(t);
	return err;
}

/*
 * Which VMMs REGISTER marks, with a checker that cannot read their /proc/PID/exe (as the
 * service once it dropped its capabilities): one never marked is not (an ordinary 64-bit root
 * VMM keeps its verdicts), whether it started after the programs or before them (the start's
 * task iterator answered for it from kernel state); a marked one is.
 */
static int register_marks_only_what_may_be_32bit(void)
{
	struct child before = { 0 }, plain = { 0 }, marked = { 0 };
	struct pt_tracker *t = NULL;
	uint32_t vm;
	int err = -1;

	T_REQUIRE(t_need_bpf());
	CHECK(!child_start(&before, NULL));
	usleep(TICKS_APART_US);
	/* Started without CAP_SYS_PTRACE, as under the unit. */
	if (t_ptrace_cap(false))
		goto out;
	t = open_attached(false);
	t_ptrace_cap(true);
	if (!t)
		goto out;
	if (t->compat_progs != 2) {
		err = t_skip("pt_exec/pt_fork did not attach here");
		goto out;
	}
	/* The iterator at the start covered every process: the record is complete from boot. */
	if (since_get(t, PT_CREATED_SINCE) != 1 || mark_of(t, before.pid) != 0) {
		fprintf(stderr, "  since %llu, mark of a 64-bit process from before: %d\n",
			(unsigned long long)since_get(t, PT_CREATED_SINCE), mark_of(t, before.pid));
		goto out;
	}
	usleep(TICKS_APART_US);
	if (child_start(&plain, NULL) || child_start(&marked, NULL) || mark(t, marked.pid) ||
	    t_ptrace_cap(false))
		goto out;
	if (!exe_unreadable(plain.pid)) {
		err = t_skip("a child's /proc/PID/exe stays readable without CAP_SYS_PTRACE here");
		goto out;
	}
	if (track_compat(t, plain.pid, &vm) != 0 || track_compat(t, marked.pid, &vm) != 1 ||
	    track_compat(t, before.pid, &vm) != 0) {
		fprintf(stderr, "  PT_VM_COMPAT: plain %d marked %d before %d\n",
			track_compat(t, plain.pid, &vm), track_compat(t, marked.pid, &vm),
			track_compat(t, before.pid, &vm));
		goto out;
	}
	err = 0;
out:
	t_ptrace_cap(true);
	child_stop(&before);
	child_stop(&plain);
	child_stop(&marked);
	pt_tracker_close(t);
	return err;
}

/* Without the programs (a kernel lacking tp_btf) nothing is "after": the executable decides. */
static int without_programs_exe_decides(void)
{
	struct child plain = { 0 };
	struct pt_tracker *t;
	uint32_t vm;
	int err = -1;

	T_REQUIRE(t_need_bpf());
	t = open_attached(true);
	CHECK(t);
	usleep(TICKS_APART_US);
	if (t->compat_progs || since_get(t, PT_CREATED_SINCE) || child_start(&plain, NULL))
		goto out;
	if (track_compat(t, plain.pid, &vm) != 0)
		goto out;
	pt_vm_untrack(t, vm);
	if (t_ptrace_cap(false))
		goto out;
	if (!exe_unreadable(plain.pid)) {
		err = t_skip("a child's /proc/PID/exe stays readable without CAP_SYS_PTRACE here");
		goto out;
	}
	err = track_compat(t, plain.pid, &vm) == 1 ? 0 : -1;
out:
	t_ptrace_cap(true);
	child_stop(&plain);
	pt_tracker_close(t);
	return err;
}

/* pt_iter_sum as the start's iterator left it. */
static int iter_sum_of(struct pt_tracker *t, struct pt_compat_iter_sum *sum)
{
	uint32_t zero = 0;

	return bpf_map__lookup_elem(t->skel->maps.pt_iter_sum, &zero, sizeof(zero), sum,
				    sizeof(*sum), 0);
}

/*
 * The start's task iterator runs here for real, without CAP_SYS_PTRACE as under the unit: it
 * visits every task of the machine, marks no 64-bit process (this test, its children and a
 * grandchild, all started before it ran, whose executables it could not open), and the record
 * claims completeness (since 1) only because it finished; without it (the fallback) the record
 * holds only what started after pt_exec and pt_fork were attached (since: that time).
 */
static int iterator_marks_no_64bit_process(void)
{
	struct child kids[3] = { 0 };
	struct pt_compat_iter_sum sum = { 0 }, again, huge = { .tasks = 1ull << 40 };
	struct pt_loader_opts o = { .tdp = 0, .log_mb = 1, .no_pin = true, .no_compat_iter = true };
	struct pt_compat_clues clues = { 0 };
	struct child late = { 0 };
	struct pt_tracker *t = NULL;
	pid_t grandchild = -1;
	uint32_t zero = 0;
	int err = -1;

	T_REQUIRE(t_need_bpf());
	for (int i = 0; i < 3; i++)
		CHECK(!child_start(&kids[i], NULL));
	grandchild = child_fork(&kids[0]);
	/* Without the iterator: the programs follow every exec and fork, but nothing vouches for
	 * the processes that existed before them. */
	if (pt_tracker_open(&t, &o))
		goto out;
	if (t->compat_progs != 2) {
		err = t_skip("pt_exec/pt_fork did not attach here");
		goto out;
	}
	/* The record then holds the processes started after the programs' attach (since: that
	 * time), not the ones before. A start time is known to the tick (10 ms) rounded down: one
	 * 20 ms after the attach is provably after it. */
	usleep(20 * 1000);
	if (since_get(t, PT_CREATED_SINCE) <= 1 ||
	    bpf_program__autoload(t->skel->progs.pt_compat_iter) || child_start(&late, NULL) ||
	    pt_vmm_compat_clues(t, late.pid, &clues) || !clues.after_since || clues.marked ||
	    pt_vmm_compat_clues(t, kids[1].pid, &clues) || clues.after_since) {
		fprintf(stderr, "  without the iterator: since %llu, after it: %d\n",
			(unsigned long long)since_get(t, PT_CREATED_SINCE), clues.after_since);
		goto out;
	}
	pt_tracker_close(t);
	/* As under the unit: no CAP_SYS_PTRACE, so their /proc/PID/exe cannot be opened (the scan
	 * this iterator replaced took them for possible 32-bit processes). */
	if (t_ptrace_cap(false))
		goto out;
	fprintf(stderr, "  children's /proc/PID/exe %s\n",
		exe_unreadable(kids[0].pid) ? "unreadable" : "readable");
	t = open_attached(false);
	t_ptrace_cap(true);
	if (!t || iter_sum_of(t, &sum)) {
		err = t ? -1 : t_skip("the task iterator does not load here");
		goto out;
	}
	fprintf(stderr, "  iterator: %llu tasks, %llu marked, complete %u; since %llu\n",
		(unsigned long long)sum.tasks, (unsigned long long)sum.marked, sum.complete,
		(unsigned long long)since_get(t, PT_CREATED_SINCE));
	/* This process, 3 children and a grandchild at least, and every task seen: complete. */
	if (!sum.complete || sum.tasks < 5 || since_get(t, PT_CREATED_SINCE) != 1)
		goto out;
	for (int i = 0; i < 3; i++)
		if (mark_of(t, kids[i].pid) != 0)
			goto out;
	if (mark_of(t, getpid()) != 0 || grandchild <= 0 || mark_of(t, grandchild) != 0)
		goto out;
	/* It can run again and counts this run's tasks only: a count left in the summary is not
	 * added on. */
	if (bpf_map__update_elem(t->skel->maps.pt_iter_sum, &zero, sizeof(zero), &huge,
				 sizeof(huge), 0) ||
	    pt_compat_iter_run(t, &again) || again.tasks < 5 || again.tasks >= huge.tasks ||
	    mark_of(t, kids[1].pid) != 0)
		goto out;
	err = 0;
out:
	t_ptrace_cap(true);
	kill_pid(grandchild);
	child_stop(&late);
	for (int i = 0; i < 3; i++)
		child_stop(&kids[i]);
	pt_tracker_close(t);
	return err;
}

/*
 * A process that was already 32-bit before the service started (no exec or fork for pt_exec or
 * pt_fork to see): the start's iterator marks it from its mm, and REGISTER keeps its VM.
 */
static int iterator_marks_32bit_from_before(void)
{
	struct child a = { 0 };
	struct pt_tracker *t = NULL;
	uint32_t vm;
	int err = -1;

	T_REQUIRE(t_need_bpf());
	CHECK(!child_start(&a, NULL));
	err = child_exec32(&a, 1);
	if (err)
		goto out;
	err = -1;
	t = open_attached(false);
	if (!t)
		goto out;
	if (t->compat_progs != 2 || !bpf_program__autoload(t->skel->progs.pt_compat_iter)) {
		err = t_skip("pt_exec/pt_fork or the task iterator did not load here");
		goto out;
	}
	if (mark_of(t, a.pid) != PT_COMPAT_SCAN || track_compat(t, a.pid, &vm) != 1) {
		fprintf(stderr, "  32-bit process from before: mark %d\n", mark_of(t, a.pid));
		goto out;
	}
	err = 0;
out:
	child_stop(&a);
	pt_tracker_close(t);
	return err;
}

static int count_range(void *ctx, uint64_t gpa, uint64_t len)
{
	*(uint64_t *)ctx += len / PAGE;
	return 0;
}

/* Hint the whole slot, say nothing was written, and take the verdict. */
static int verdict_of(struct pt_tracker *t, uint32_t vm, pid_t pid, struct pt_verdict_sum *v)
{
	struct pt_range r = { SLOT_GPA, SLOT_PAGES * PAGE };
	struct pt_vmctx *c = NULL;
	struct pt_vm_state *st = pt_vm(t, vm);
	uint64_t pages = 0, listed = 0;
	int err;

	err = pt_vmctx_new(&c, t, vm, (uint32_t)pid, PT_DIRTY_RING, true);
	if (!err)
		err = pt_cmd_arm(c, 5);
	/* The ring reset the tracepoints would have seen for a 64-bit VMM: the sync. */
	if (!err)
		__atomic_store_n(&st->ring_sync_epoch, st->epoch, __ATOMIC_SEQ_CST);
	if (!err)
		err = pt_cmd_hint(c, 5, &r, 1, &pages);
	if (!err)
		err = pt_cmd_stop(c, 5);
	if (!err)
		err = pt_cmd_verdict(c, 5, v, count_range, &listed);
	pt_vmctx_free(c);
	return err || listed != v->free ? -1 : 0;
}

/*
 * The verdict of a marked VMM's VM keeps every page, UNTRACKED, where the same VM of a 64-bit
 * VMM has them free: the syncs and memslot changes a 32-bit VMM makes are not seen.
 */
static int marked_vmm_verdict_keeps(void)
{
	struct child plain = { 0 }, marked = { 0 };
	struct pt_verdict_sum v1 = { 0 }, v2 = { 0 };
	struct pt_tracker *t;
	uint32_t vm1, vm2;
	int err = -1;

	T_REQUIRE(t_need_bpf());
	t = open_attached(false);
	CHECK(t);
	if (child_start(&plain, NULL) || child_start(&marked, NULL) || mark(t, marked.pid))
		goto out;
	if (track_compat(t, plain.pid, &vm1) != 0 || track_compat(t, marked.pid, &vm2) != 1)
		goto out;
	if (verdict_of(t, vm1, plain.pid, &v1) || verdict_of(t, vm2, marked.pid, &v2))
		goto out;
	if (v1.free != SLOT_PAGES || v1.why || v2.free || v2.kept_unsure != SLOT_PAGES ||
	    !(v2.why & PT_WHY_UNTRACKED)) {
		fprintf(stderr,
			"  64-bit: free %llu why %#x; marked: free %llu unsure %llu why %#x\n",
			(unsigned long long)v1.free, v1.why, (unsigned long long)v2.free,
			(unsigned long long)v2.kept_unsure, v2.why);
		goto out;
	}
	err = 0;
out:
	child_stop(&plain);
	child_stop(&marked);
	pt_tracker_close(t);
	return err;
}

/* A real 32-bit exec marks the process (pt_exec reads the image's ELF class). */
static int exec_32bit_marked(void)
{
	struct child a = { 0 };
	struct pt_tracker *t;
	int err = -1;

	T_REQUIRE(t_need_bpf());
	t = open_attached(false);
	CHECK(t);
	if (child_start(&a, NULL) || mark_of(t, a.pid) != 0)
		goto out;
	err = child_exec32(&a, 1);
	if (err)
		goto out;
	err = mark_of(t, a.pid) == PT_COMPAT_EXEC ? 0 : -1;
	if (err)
		fprintf(stderr, "  mark after the exec: %d\n", mark_of(t, a.pid));
out:
	child_stop(&a);
	pt_tracker_close(t);
	return err;
}

/*
 * A tracked 64-bit VMM that execs a 32-bit image (its VM descriptors may survive the exec): BPF
 * marks its VM at once, and the current epoch counts as one with a memslot change.
 */
static int tracked_vmm_exec_32bit_marks_vm(void)
{
	struct child a = { 0 };
	struct pt_tracker *t;
	uint64_t moves;
	uint32_t vm;
	int err = -1;

	T_REQUIRE(t_need_bpf());
	t = open_attached(false);
	CHECK(t);
	if (child_start(&a, NULL) || track_compat(t, a.pid, &vm) != 0)
		goto out;
	moves = pt_vm(t, vm)->slot_moves;
	err = child_exec32(&a, 1);
	if (err)
		goto out;
	err = (pt_vm(t, vm)->flags & PT_VM_COMPAT) && pt_vm(t, vm)->slot_moves > moves &&
			      pt_vm_slots_changed(t, vm)
		      ? 0
		      : -1;
	if (err)
		fprintf(stderr, "  VM flags %#x, slot moves %llu\n", pt_vm(t, vm)->flags,
			(unsigned long long)pt_vm(t, vm)->slot_moves);
out:
	child_stop(&a);
	pt_tracker_close(t);
	return err;
}

/* The pid of the one child of process `pid` (/proc/PID/task/PID/children), or -1. */
static pid_t only_child_of(pid_t pid)
{
	char path[96];
	FILE *f;
	int c = -1;

	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)pid, (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (fscanf(f, "%d", &c) != 1)
		c = -1;
	fclose(f);
	return c;
}

/* A real 32-bit process forks: its child is marked (pt_fork, TS_COMPAT of the fork). */
static int fork_32bit_marked(void)
{
	struct child a = { 0 };
	struct pt_tracker *t;
	pid_t g = -1;
	int err = -1;

	T_REQUIRE(t_need_bpf());
	t = open_attached(false);
	CHECK(t);
	if (child_start(&a, "fork"))
		goto out;
	err = child_exec32(&a, 2);
	if (err)
		goto out;
	g = only_child_of(a.pid);
	err = g > 0 && mark_of(t, g) == PT_COMPAT_FORK ? 0 : -1;
	if (err)
		fprintf(stderr, "  child %d of the 32-bit process: mark %d\n", (int)g,
			g > 0 ? mark_of(t, g) : 0);
out:
	kill_pid(g);
	child_stop(&a);
	pt_tracker_close(t);
	return err;
}

/* fork(2) through `int $0x80` from 64-bit code: the i386 fork, a compat syscall. */
static long int80_fork(void)
{
	long r;

	__asm__ volatile("int $0x80" : "=a"(r) : "a"(2L) : "memory", "cc");
	return r;
}

/*
 * A 64-bit process that forks through `int $0x80`: the child is marked (the parent is inside a
 * compat syscall). Where `int $0x80` is refused (ia32 emulation off: SIGSEGV) this skips.
 */
static int int80_fork_marked(void)
{
	struct pt_tracker *t;
	int p[2], status, err = -1;
	pid_t c, g = -1;

	T_REQUIRE(t_need_bpf());
	t = open_attached(false);
	CHECK(t);
	if (pipe(p))
		goto out;
	c = fork();
	if (!c) {
		long r = int80_fork();

		if (r == 0)
			for (;;)
				pause();
		g = (pid_t)r;
		if (write(p[1], &g, sizeof(g)) != sizeof(g))
			_exit(2);
		for (;;)
			pause();
	}
	close(p[1]);
	if (read(p[0], &g, sizeof(g)) != sizeof(g)) {
		waitpid(c, &status, 0);
		err = WIFSIGNALED(status) ? t_skip("int $0x80 is refused here (ia32 emulation off)")
					  : -1;
		g = -1;
		goto done;
	}
	/* The child runs the parent's image; the parent made a 32-bit syscall: both marked. */
	err = g > 0 && mark_of(t, g) == PT_COMPAT_FORK && mark_of(t, c) == PT_COMPAT_FORK ? 0 : -1;
	if (err)
		fprintf(stderr, "  int $0x80 fork: child %d mark %d, parent mark %d\n", (int)g,
			mark_of(t, g), mark_of(t, c));
	kill_pid(g);
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
done:
	close(p[0]);
out:
	pt_tracker_close(t);
	return err;
}

T_MAIN(T_CASE(fork_of_marked_process_marked), T_CASE(register_marks_only_what_may_be_32bit),
       T_CASE(without_programs_exe_decides), T_CASE(marked_vmm_verdict_keeps),
       T_CASE(exec_32bit_marked), T_CASE(tracked_vmm_exec_32bit_marks_vm),
       T_CASE(fork_32bit_marked), T_CASE(int80_fork_marked),
       T_CASE(iterator_marks_no_64bit_process), T_CASE(iterator_marks_32bit_from_before))
