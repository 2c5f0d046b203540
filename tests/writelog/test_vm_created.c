// SPDX-License-Identifier: GPL-2.0
/*
 * Does a VMM that registers with learned slots already hold a VM? pt_ioctl_enter records
 * KVM_CREATE_VM of every process (pt_vm_created, task storage looked up by pidfd), and
 * pt_vmm_may_hold_vm() answers from three clues: that record for a process that started after
 * the program was attached, else its /proc/PID/fd, else "cannot tell", which is yes.
 *
 * No KVM here: KVM_CREATE_VM issued on a pipe fails with ENOTTY, but passes sys_enter_ioctl
 * like the real one, so the real tracepoint runs. "Unreadable" is made real too: the checker
 * (this process) drops CAP_SYS_PTRACE from its effective set, and a child that kept every
 * capability then has a /proc/PID/fd whose links it cannot read, as a root VMM's are for the
 * service once it dropped its capabilities.
 */
#include <linux/capability.h>
#include <linux/sched.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "t.h"
#include "caps.h"
#include "writelog/loader.h"
#include "writelog/vmlog.h"
#include "writelog.skel.h"

/* /proc/PID/stat counts start times in clock ticks (10 ms): a process forked within one tick
 * of the attach cannot be told from one that started before it. */
#define TICKS_APART_US 30000

static struct pt_tracker *open_attached(const char *pin_dir)
{
	struct pt_loader_opts o = { .tdp = 0, .log_mb = 1, .no_pin = !pin_dir, .pin_dir = pin_dir };
	struct pt_tracker *t = NULL;

	if (pt_tracker_open(&t, &o))
		return NULL;
	return t;
}

static uint64_t since_get(struct pt_tracker *t, uint32_t key)
{
	uint64_t v = 0;

	bpf_map__lookup_elem(t->skel->maps.pt_created_since, &key, sizeof(key), &v, sizeof(v), 0);
	return v;
}

static int since_set(struct pt_tracker *t, uint32_t key, uint64_t v)
{
	return bpf_map__update_elem(t->skel->maps.pt_created_since, &key, sizeof(key), &v,
				    sizeof(v), 0);
}

/* What a VMM does first, as far as the tracepoint sees it: KVM_CREATE_VM (on a pipe). */
static void *create_vm(void *unused)
{
	int fds[2];
	long ok;

	if (pipe(fds))
		return (void *)0l;
	ok = ioctl(fds[0], PT_KVM_CREATE_VM, 0) < 0 && errno == ENOTTY;
	close(fds[0]);
	close(fds[1]);
	return (void *)ok;
}

/* A child's part: what it does before telling the parent (one byte), then it waits to be
 * killed. CHILD_CREATE_THREAD issues the ioctl from a second thread. */
enum child_kind { CHILD_IDLE, CHILD_CREATE, CHILD_CREATE_THREAD };

static void __attribute__((noreturn)) child_body(enum child_kind k, int ready)
{
	pthread_t th;
	void *ok = (void *)1l;
	int fds[2], avail;

	if (k == CHILD_CREATE)
		ok = create_vm(NULL);
	if (k == CHILD_CREATE_THREAD &&
	    (pthread_create(&th, NULL, create_vm, NULL) || pthread_join(th, &ok)))
		ok = NULL;
	/* An unwatched ioctl too: it must leave no record. */
	if (!pipe(fds))
		ioctl(fds[0], FIONREAD, &avail);
	if (write(ready, ok ? "y" : "n", 1) != 1)
		_exit(2);
	for (;;)
		pause();
}

struct child {
	pid_t pid;
	int ready;
};

static int child_start(struct child *c, enum child_kind k)
{
	int p[2];
	char ch;

	if (pipe(p))
		return -errno;
	c->pid = fork();
	if (c->pid < 0)
		return -errno;
	if (!c->pid) {
		close(p[0]);
		child_body(k, p[1]);
	}
	close(p[1]);
	c->ready = p[0];
	return read(p[0], &ch, 1) == 1 && ch == 'y' ? 0 : -EIO;
}

static void child_stop(struct child *c)
{
	if (c->pid > 0) {
		kill(c->pid, SIGKILL);
		waitpid(c->pid, NULL, 0);
		close(c->ready);
	}
	c->pid = 0;
}

/* Has the record an entry for the process `pid` is now? 1, 0, or -errno. */
static int recorded(struct pt_tracker *t, pid_t pid)
{
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0), err = 0;
	struct pt_vm_created v;

	if (pidfd < 0)
		return -errno;
	if (bpf_map__lookup_elem(t->skel->maps.pt_vm_created, &pidfd, sizeof(pidfd), &v, sizeof(v),
				 0))
		err = errno == ENOENT ? 0 : -errno;
	else
		err = v.count >= 1 && v.first_ns ? 1 : -EINVAL;
	close(pidfd);
	return err;
}

/* KVM_CREATE_VM of any process, from any thread, is recorded on that process; nothing else. */
static int create_vm_recorded_for_any_process(void)
{
	struct child a = { 0 }, b = { 0 }, idle = { 0 };
	struct pt_tracker *t;
	int err = -1;

	T_REQUIRE(t_need_bpf());
	t = open_attached(NULL);
	CHECK(t);
	if (child_start(&a, CHILD_CREATE) || child_start(&b, CHILD_CREATE_THREAD) ||
	    child_start(&idle, CHILD_IDLE)) {
		fprintf(stderr, "  cannot start the children\n");
		goto out;
	}
	if (recorded(t, a.pid) != 1 || recorded(t, b.pid) != 1 || recorded(t, idle.pid) != 0) {
		fprintf(stderr, "  recorded: %d %d %d\n", recorded(t, a.pid), recorded(t, b.pid),
			recorded(t, idle.pid));
		goto out;
	}
	/* The process that issued no ioctl of its own (this one) has no record either. */
	err = recorded(t, getpid()) == 0 ? 0 : -1;
out:
	child_stop(&a);
	child_stop(&b);
	child_stop(&idle);
	pt_tracker_close(t);
	return err;
}

/* A child with pid `pid` exactly (clone3's set_tid; root in the initial user namespace). */
static pid_t fork_with_pid(pid_t pid, int ready)
{
	struct clone_args ca = { .exit_signal = SIGCHLD,
				 .set_tid = (uintptr_t)&pid,
				 .set_tid_size = 1 };
	pid_t c = (pid_t)syscall(SYS_clone3, &ca, sizeof(ca));

	if (!c)
		child_body(CHILD_IDLE, ready);
	return c;
}

/* A pid that comes back on another process does not find the old process's record. */
static int reused_pid_not_matched(void)
{
	struct child a = { 0 };
	struct pt_tracker *t;
	struct pt_vm_clues c;
	int p[2], err = -1;
	pid_t pid, again;
	char ch;

	T_REQUIRE(t_need_bpf());
	t = open_attached(NULL);
	CHECK(t);
	if (child_start(&a, CHILD_CREATE) || recorded(t, a.pid) != 1)
		goto out;
	pid = a.pid;
	child_stop(&a);
	/* Gone: nothing can be read about it, which is "may hold". */
	if (pt_vmm_vm_clues(t, pid, &c) != -ESRCH || !pt_vmm_may_hold_vm(t, pid))
		goto out;
	if (pipe(p))
		goto out;
	again = fork_with_pid(pid, p[1]);
	close(p[1]);
	if (again < 0) {
		close(p[0]);
		pt_tracker_close(t);
		return t_skip("clone3 with set_tid: %s", strerror(errno));
	}
	if (read(p[0], &ch, 1) == 1 && again == pid) {
		err = recorded(t, pid) == 0 && !pt_vmm_vm_clues(t, pid, &c) && c.created == 0 &&
				      !pt_vmm_may_hold_vm(t, pid)
			      ? 0
			      : -1;
		if (err)
			fprintf(stderr, "  reused pid %d: created %d after %d fds %d\n", pid,
				c.created, c.after_since, c.fds);
	}
	kill(again, SIGKILL);
	waitpid(again, NULL, 0);
	close(p[0]);
out:
	child_stop(&a);
	pt_tracker_close(t);
	return err;
}

/* Can this process not read the link of `pid`'s descriptor 0? */
static bool fd0_unreadable(pid_t pid)
{
	char path[64], link[64];

	snprintf(path, sizeof(path), "/proc/%d/fd/0", (int)pid);
	return readlink(path, link, sizeof(link)) < 0 && errno == EACCES;
}

/* Each clue of process `pid` is as expected, and so is the answer. */
static int expect(struct pt_tracker *t, pid_t pid, int created, bool after, int fds, bool held)
{
	struct pt_vm_clues c;

	CHECK(!pt_vmm_vm_clues(t, pid, &c));
	CHECKF(c.created == created && c.after_since == after && c.fds == fds,
	       "pid %d: created %d after %d fds %d", pid, c.created, c.after_since, c.fds);
	CHECK(pt_vmm_may_hold_vm(t, pid) == held);
	return 0;
}

/*
 * The three ways to answer, with a checker that cannot read its VMMs' descriptors: a VMM
 * started after the program is answered by the record (yes or no); one started before it by
 * its fds if readable, else "cannot tell": yes. A creation the record missed moves "after".
 */
static int three_way_unreadable_vmm(void)
{
	struct child before = { 0 }, idle = { 0 }, made = { 0 };
	struct pt_tracker *t = NULL;
	uint32_t vm, vm2;
	bool existed;
	int err = -1;

	T_REQUIRE(t_need_bpf());
	CHECK(!child_start(&before, CHILD_IDLE));
	usleep(TICKS_APART_US);
	t = open_attached(NULL);
	if (!t)
		goto out;
	usleep(TICKS_APART_US);
	if (child_start(&idle, CHILD_IDLE) || child_start(&made, CHILD_CREATE))
		goto out;
	if (t_ptrace_cap(false))
		goto out;
	if (!fd0_unreadable(idle.pid)) {
		err = t_skip("a child's descriptors stay readable without CAP_SYS_PTRACE here");
		goto out;
	}
	/* The scan must not take links it cannot read for "no VM" (the bug this fixes). */
	if (pt_pid_scan_kvm_vm((uint32_t)idle.pid) != -1) {
		fprintf(stderr, "  unreadable descriptors scanned as readable\n");
		goto out;
	}
	if (expect(t, before.pid, 0, false, -1, true) || expect(t, idle.pid, 0, true, -1, false) ||
	    expect(t, made.pid, 1, true, -1, true))
		goto out;
	/* Learned slots: only the VMM that made a VM is told its memory is unknown. */
	if (pt_vm_track(t, (uint32_t)idle.pid, NULL, 0, 4096, &vm, &existed) ||
	    pt_vm_track(t, (uint32_t)made.pid, NULL, 0, 4096, &vm2, &existed))
		goto out;
	if ((pt_vm(t, vm)->flags & PT_VM_SLOTS_UNSEEN) ||
	    !(pt_vm(t, vm2)->flags & PT_VM_SLOTS_UNSEEN)) {
		fprintf(stderr, "  SLOTS_UNSEEN: idle %#x made %#x\n", pt_vm(t, vm)->flags,
			pt_vm(t, vm2)->flags);
		goto out;
	}
	/* A creation the record missed (now): the idle VMM started before it, cannot tell. */
	if (since_set(t, PT_CREATED_LOST, pt_boottime_ns()) ||
	    expect(t, idle.pid, 0, false, -1, true) || expect(t, made.pid, 1, false, -1, true))
		goto out;
	/* With the right to read them, the fds answer for processes the record cannot. */
	if (t_ptrace_cap(true) || expect(t, before.pid, 0, false, 0, false) ||
	    expect(t, idle.pid, 0, false, 0, false))
		goto out;
	err = 0;
out:
	t_ptrace_cap(true);
	child_stop(&before);
	child_stop(&idle);
	child_stop(&made);
	pt_tracker_close(t);
	return err;
}

/*
 * The record is complete since the first run that attached the program, as long as that
 * program stayed attached (its pinned link); a gap (the link removed) starts it afresh.
 */
static int since_survives_restart_only_without_gap(void)
{
	char dir[128], link[256];
	struct pt_tracker *t;
	uint64_t s1, s2, s3;

	T_REQUIRE(t_need_bpf());
	snprintf(dir, sizeof(dir), "/sys/fs/bpf/pt_test_vm_created_%d", (int)getpid());
	snprintf(link, sizeof(link), "%s/link_pt_ioctl_enter", dir);
	t = open_attached(dir);
	CHECK(t);
	s1 = since_get(t, PT_CREATED_SINCE);
	pt_tracker_close(t);
	usleep(TICKS_APART_US);
	t = open_attached(dir);
	s2 = t ? since_get(t, PT_CREATED_SINCE) : 0;
	pt_tracker_close(t);
	usleep(TICKS_APART_US);
	unlink(link); /* detaches the program: creations go unseen from now on */
	t = open_attached(dir);
	s3 = t ? since_get(t, PT_CREATED_SINCE) : 0;
	pt_tracker_close(t);
	pt_tracker_unpin(dir);
	CHECKF(s1 && s2 == s1 && s3 > s1, "since %llu, %llu, %llu", (unsigned long long)s1,
	       (unsigned long long)s2, (unsigned long long)s3);
	return 0;
}

/*
 * A tracked VMM's memslot ioctl marks the epoch it starts in as one with a memslot change
 * (KVM makes new slots live before the ioctl returns), whatever it returns: here it fails on a
 * pipe, which the tracepoint still sees. Another ioctl marks nothing, and the next ARM starts
 * clean.
 */
static int memslot_ioctl_marks_its_epoch(void)
{
	struct pt_slot_cfg slot = { .gpa = 1ull << 30, .size = 64 << 12, .id = 1, .logged = 1 };
	struct pt_tracker *t;
	uint64_t epoch;
	bool existed;
	uint32_t vm;
	int fds[2] = { -1, -1 }, err = -1;

	T_REQUIRE(t_need_bpf());
	t = open_attached(NULL);
	CHECK(t);
	if (pipe(fds) || pt_vm_track(t, getpid(), &slot, 1, 0, &vm, &existed) ||
	    pt_vm_arm(t, vm, &epoch))
		goto out;
	if (ioctl(fds[0], PT_KVM_CREATE_VCPU, 0) == 0 || pt_vm_slots_changed(t, vm)) {
		fprintf(stderr, "  a vCPU ioctl counted as a memslot change\n");
		goto out;
	}
	if (ioctl(fds[0], PT_KVM_SET_USER_MEMORY_REGION, 0) == 0 || !pt_vm_slots_changed(t, vm)) {
		fprintf(stderr, "  a memslot ioctl left the epoch unmarked\n");
		goto out;
	}
	if (pt_vm_arm(t, vm, &epoch) || pt_vm_slots_changed(t, vm)) {
		fprintf(stderr, "  the next epoch is marked too\n");
		goto out;
	}
	err = 0;
out:
	close(fds[0]);
	close(fds[1]);
	pt_tracker_close(t);
	return err;
}

/*
 * A lost time BPF could not record exactly is all ones (raise_to): nothing would count as
 * recorded again. The next start brings it back to about now (a second ahead), no further.
 */
static int all_ones_lost_time_reset_at_start(void)
{
	char dir[128];
	struct pt_tracker *t;
	uint64_t lost = 0, now;

	T_REQUIRE(t_need_bpf());
	snprintf(dir, sizeof(dir), "/sys/fs/bpf/pt_test_vm_created_lost_%d", (int)getpid());
	t = open_attached(dir);
	CHECK(t);
	since_set(t, PT_CREATED_LOST, ~0ull);
	pt_tracker_close(t);
	now = pt_boottime_ns();
	t = open_attached(dir);
	if (t)
		lost = since_get(t, PT_CREATED_LOST);
	pt_tracker_close(t);
	pt_tracker_unpin(dir);
	CHECKF(t && lost > now && lost <= pt_boottime_ns() + 1000000000ull,
	       "lost %llu, start at %llu", (unsigned long long)lost, (unsigned long long)now);
	return 0;
}

T_MAIN(T_CASE(create_vm_recorded_for_any_process), T_CASE(memslot_ioctl_marks_its_epoch),
       T_CASE(reused_pid_not_matched), T_CASE(three_way_unreadable_vmm),
       T_CASE(since_survives_restart_only_without_gap), T_CASE(all_ones_lost_time_reset_at_start))
