// SPDX-License-Identifier: GPL-2.0
/*
 * Hostile peers against the real service (issue 11): who may register a VM, and what a
 * registration carries over.
 *
 *   takeover_starts_afresh  a same-uid process may not register another's VM; root may, but
 *                           the VM then starts afresh (hints forgotten) and the old connection
 *                           is told; the victim's reconnect starts afresh too
 *   pid_reuse_refused       P connects, forks a child that keeps the socket, exits; a root VMM
 *                           gets pid P (ns_last_pid); the child's REGISTER(P) is PT_E_PERM
 *   quota_exhaustion        uid 65534 fills its connection, VM and log quotas (PT_E_BUSY
 *                           naming the quota) while root still connects and registers
 *   token_resumes           (KVM) REGISTER2 with the ACK's token carries the state over, a
 *                           wrong token starts afresh; a device process of the VMM's uid
 *                           registers with the VM's descriptor; another VM's is refused
 *   takeover_verdict        (KVM) the break with a real guest: data in pages 0..63,
 *                           the device hints 0..15, root registers the VM and hints 16..63,
 *                           the device reconnects: its verdict lists 0..15 only
 *
 * Without KVM the state reset is read from what the service answers: QUERY of a command ID
 * armed before the takeover is PT_E_STALE_CMD, hinted counts start from zero.
 */
#include <grp.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <sys/mman.h>

#include "t.h"
#include "svc.h"
#include "vmm/minivm.h"

#define NOBODY	 65534
#define PG	 4096ull
#define SLOT_GPA (1ull << 30)

/* Small quotas, so that filling them is quick; every case stays below them but the last. */
#define Q_CONNS	 6
#define Q_VMS	 3
#define Q_LOG_MB 1 /* 8 Mi pages: 32 GiB of guest memory */

static const struct pt_reg_slot slot1 = {
	.gpa = SLOT_GPA, .size = 64ull << 20, .id = 1, .flags = PT_REG_SLOT_LOGGED
};

/* --- processes ---------------------------------------------------------------------------- */

static int become_nobody(void)
{
	CHECK(!setgroups(0, NULL) && !setgid(NOBODY) && !setuid(NOBODY));
	CHECK(geteuid() == NOBODY);
	return 0;
}

/* uid 65534 may reach the socket; restored by open_socket(false). */
static int open_socket(bool open)
{
	static struct stat st;

	if (open) {
		CHECK(!stat(svc.dir, &st));
		CHECK(!chmod(svc.dir, 0755) && !chmod(svc.socket, 0666));
	} else {
		chmod(svc.dir, st.st_mode & 07777);
	}
	return 0;
}

/* One byte through a pipe: the steps of two processes in lock step. */
static int step_send(int fd, char c)
{
	return write(fd, &c, 1) == 1 ? 0 : -1;
}

static int step_wait(int fd, char want)
{
	char c = 0;

	return read(fd, &c, 1) == 1 && c == want ? 0 : -1;
}

struct pipes {
	int to_child[2], to_parent[2];
};

static int pipes_open(struct pipes *p)
{
	return pipe(p->to_child) || pipe(p->to_parent) ? -1 : 0;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* Each side keeps only its ends, so that a side that dies is seen (EOF), not waited for. */
static void pipes_side(struct pipes *p, bool child)
{
	close_fd(&p->to_child[child]);
	close_fd(&p->to_parent[!child]);
}

static void pipes_close(struct pipes *p)
{
	close_fd(&p->to_child[0]);
	close_fd(&p->to_child[1]);
	close_fd(&p->to_parent[0]);
	close_fd(&p->to_parent[1]);
}

static struct pt_range pages(uint64_t first, uint64_t n)
{
	return (struct pt_range){ SLOT_GPA + first * PG, n * PG };
}

static uint64_t hinted(struct pt_client *c, uint32_t cmd, int *err)
{
	struct pt_client_result res;
	uint64_t n;

	*err = pt_client_query(c, cmd, PT_Q_HINTS, &res);
	if (*err)
		return 0;
	n = res.v.hinted;
	pt_client_result_free(&res);
	return n;
}

/* status.json (rewritten every tick) shows @key at @min or more, within 10 s. */
static bool status_reaches(const char *key, long long min)
{
	for (int i = 0; i < 100; i++) {
		if (status_num(key) >= min)
			return true;
		usleep(100 * 1000);
	}
	return false;
}

static bool reason_has(struct pt_client *c, const char *what)
{
	return strstr(pt_client_last_error(c)->reason, what) != NULL;
}

/* ========================================================================================= */
/* Takeover.                                                                                */

/*
 * The victim: uid 65534, registers itself, arms 2 and hints pages 0..15. Step 1: a same-uid
 * intruder was refused, its state is intact. Step 2: root registered it (and hinted 16..63 under
 * its own ARM(2)): the old connection is told, and the victim's reconnect starts afresh.
 */
static int victim(void *arg)
{
	struct pipes *p = arg;
	struct pt_range r = pages(0, 16);
	struct pt_client *c, *c2;
	int err;

	pipes_side(p, true);
	CHECK(become_nobody() == 0);
	c = connect_svc();
	CHECK(c);
	CHECK(pt_client_register(c, 0, PT_DIRTY_RING, &slot1, 1, NULL) == 0);
	CHECK(pt_client_token(c) != 0);
	CHECK(pt_client_arm(c, 2) == 0 && pt_client_hint(c, 2, &r, 1) == 0);
	CHECK(step_send(p->to_parent[1], '1') == 0 && step_wait(p->to_child[0], '1') == 0);

	CHECKF(hinted(c, 2, &err) == 16 && !err, "a refused intruder changed the VM: err %d", err);
	CHECK(step_send(p->to_parent[1], '2') == 0 && step_wait(p->to_child[0], '2') == 0);

	err = pt_client_hint(c, 2, &r, 1);
	CHECKF(err == -ENOTCONN && reason_has(c, "taken over"),
	       "old connection not told of the takeover: %d %s", err,
	       pt_client_last_error(c)->reason);
	/* The device reconnects (v1 REGISTER has no token): nothing of the intruder's state. */
	c2 = connect_svc();
	CHECK(c2);
	CHECK(pt_client_register(c2, 0, PT_DIRTY_RING, &slot1, 1, NULL) == 0);
	hinted(c2, 2, &err);
	CHECKF(err == -ESTALE, "the takeover's command state carried over: %d", err);
	CHECK(pt_client_arm(c2, 2) == 0 && pt_client_hint(c2, 2, &r, 1) == 0);
	CHECKF(hinted(c2, 2, &err) == 16 && !err, "hints of an earlier registration leaked");
	pt_client_close(c2);
	pt_client_close(c);
	return 0;
}

/* Same uid, another process: not the VMM, no descriptor. */
static int same_uid_intruder(void *arg)
{
	pid_t vmm = *(pid_t *)arg;
	struct pt_client *c;
	int err;

	CHECK(become_nobody() == 0);
	c = connect_svc();
	CHECK(c);
	err = pt_client_register(c, (uint32_t)vmm, PT_DIRTY_RING, &slot1, 1, NULL);
	CHECKF(err == -EPERM, "same-uid REGISTER of another process: %d %s", err,
	       pt_client_last_error(c)->reason);
	err = pt_client_arm(c, 3);
	CHECK(err == -ENOTCONN);
	pt_client_close(c);
	return 0;
}

static int root_takeover(pid_t vmm, uint64_t victim_token)
{
	struct pt_range r = pages(16, 48);
	struct pt_client *c = connect_svc();
	int err;

	CHECK(c);
	CHECK(pt_client_register(c, (uint32_t)vmm, PT_DIRTY_RING, &slot1, 1, NULL) == 0);
	CHECK(pt_client_token(c) != 0 && pt_client_token(c) != victim_token);
	/* Afresh: the victim's command ID 2 is not current here. */
	hinted(c, 2, &err);
	CHECKF(err == -ESTALE, "root's takeover inherited the victim's state: %d", err);
	/* But the guest is the same: the ID the victim armed stays blocked until the driver's
	 * STOP (PROTOCOL.md 4.2), a late buffer of it could be taken for a hint of the new epoch.
	 */
	err = pt_client_arm(c, 2);
	CHECKF(err == -EALREADY, "the victim's armed ID 2 was not blocked: %d", err);
	CHECK(pt_client_arm(c, 3) == 0 && pt_client_hint(c, 3, &r, 1) == 0);
	CHECK(hinted(c, 3, &err) == 48 && !err);
	pt_client_close(c);
	return 0;
}

static int takeover_starts_afresh(void)
{
	struct pipes p;
	pid_t v, in;
	int rc = -1;

	T_REQUIRE(need_service());
	if (geteuid() != 0)
		return t_skip("needs root to switch uid");
	CHECK(open_socket(true) == 0 && pipes_open(&p) == 0);
	v = start_child(victim, &p);
	pipes_side(&p, false);
	CHECK(v > 0);
	if (step_wait(p.to_parent[0], '1'))
		goto out;
	in = start_child(same_uid_intruder, &v);
	if (wait_child(in) != 0 || step_send(p.to_child[1], '1') || step_wait(p.to_parent[0], '2'))
		goto out;
	if (root_takeover(v, 0) || step_send(p.to_child[1], '2'))
		goto out;
	rc = 0;
out:
	if (rc)
		kill(v, SIGKILL);
	rc |= wait_child(v);
	pipes_close(&p);
	open_socket(false);
	CHECK(rc == 0);
	CHECKF(status_reaches("takeovers", 2) && status_reaches("refused_perm", 1),
	       "status.json: takeovers %lld refused_perm %lld", status_num("takeovers"),
	       status_num("refused_perm"));
	return 0;
}

/* ========================================================================================= */
/* Pid reuse.                                                                               */

/* The child of P that keeps P's socket: registers the pid it is given, then tries a HINT. */
static int socket_keeper(int sock, int in)
{
	struct pt_range r = pages(0, 64);
	struct pt_hdr h;
	struct pt_msg m;
	uint32_t pid;
	size_t n;

	CHECK(read(in, &pid, sizeof(pid)) == sizeof(pid));
	n = pt_build_register(tx, sizeof(tx), 10, pid, PT_DIRTY_RING, &slot1, 1);
	CHECK(!raw_send(sock, tx, n));
	CHECK(raw_recv(sock, &h, &m) == 1);
	CHECKF(m.type == PT_MSG_ERROR && m.error->code == PT_E_PERM && h.seq == 10 &&
		       memmem(m.reason, m.reason_len, "exited", 6),
	       "REGISTER of the reused pid: %s %.*s", pt_msg_type_str(m.type),
	       m.type == PT_MSG_ERROR ? (int)m.reason_len : 0,
	       m.type == PT_MSG_ERROR ? m.reason : "");
	SEND_EXPECT_ERROR(sock, pt_build_hint(tx, sizeof(tx), 11, 2, &r, 1), 11,
			  PT_E_NOT_REGISTERED);
	return 0;
}

struct reuse {
	int keeper_in[2]; /* pid to register, to the keeper */
	int keeper_pid[2];
};

/* P: uid 65534, connects (accepted: a PING answered), forks the keeper, exits. */
static int proc_p(void *arg)
{
	struct reuse *u = arg;
	pid_t k;
	int sock;

	CHECK(become_nobody() == 0);
	sock = raw_connect();
	CHECK(sock >= 0 && raw_ping(sock, 1) == 0);
	fflush(NULL);
	k = fork();
	if (k == 0)
		_exit(socket_keeper(sock, u->keeper_in[0]) ? 1 : 0);
	CHECK(k > 0 && write(u->keeper_pid[1], &k, sizeof(k)) == sizeof(k));
	return 0;
}

/* The root VMM that got P's pid: registers itself, hints, and checks its state after. */
static int reused_vmm(void *arg)
{
	struct pipes *p = arg;
	struct pt_range r = pages(0, 16);
	struct pt_client *c = connect_svc();
	int err;

	pipes_side(p, true);
	CHECK(c);
	CHECK(pt_client_register(c, 0, PT_DIRTY_RING, &slot1, 1, NULL) == 0);
	CHECK(pt_client_arm(c, 2) == 0 && pt_client_hint(c, 2, &r, 1) == 0);
	CHECK(step_send(p->to_parent[1], 'r') == 0 && step_wait(p->to_child[0], 'g') == 0);
	CHECKF(hinted(c, 2, &err) == 16 && !err, "the keeper reached the VM: hinted, err %d", err);
	pt_client_close(c);
	return 0;
}

static int write_last_pid(pid_t pid)
{
	FILE *f = fopen("/proc/sys/kernel/ns_last_pid", "w");
	int ok;

	if (!f)
		return -1;
	ok = fprintf(f, "%d", (int)pid) > 0;
	return fclose(f) == 0 && ok ? 0 : -1;
}

/* A child running fn with pid @want (ns_last_pid, retried while other forks get in first). */
static pid_t start_child_as(pid_t want, child_fn fn, void *arg)
{
	for (int tries = 0; tries < 200; tries++) {
		pid_t pid;

		if (write_last_pid(want - 1))
			return -1;
		pid = start_child(fn, arg);
		if (pid == want || pid < 0)
			return pid;
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		usleep(1000);
	}
	return -1;
}

static int pid_reuse_refused(void)
{
	struct reuse u;
	struct pipes p;
	pid_t pp, keeper = -1, v = -1;
	uint32_t target;
	int rc = -1, krc;

	T_REQUIRE(need_service());
	if (geteuid() != 0)
		return t_skip("needs root to switch uid and set ns_last_pid");
	if (access("/proc/sys/kernel/ns_last_pid", W_OK))
		return t_skip("/proc/sys/kernel/ns_last_pid not writable");
	CHECK(!prctl(PR_SET_CHILD_SUBREAPER, 1)); /* the keeper is ours to reap */
	CHECK(open_socket(true) == 0 && pipes_open(&p) == 0);
	CHECK(!pipe(u.keeper_in) && !pipe(u.keeper_pid));
	pp = start_child(proc_p, &u);
	CHECK(wait_child(pp) == 0); /* P exited and is reaped: its pid is free */
	CHECK(read(u.keeper_pid[0], &keeper, sizeof(keeper)) == sizeof(keeper));

	v = start_child_as(pp, reused_vmm, &p);
	pipes_side(&p, false);
	if (v != pp) {
		kill(keeper, SIGKILL);
		wait_child(keeper);
		open_socket(false);
		pipes_close(&p);
		return t_skip("could not get pid %d back for a new process", (int)pp);
	}
	if (step_wait(p.to_parent[0], 'r'))
		goto out;
	target = (uint32_t)pp;
	if (write(u.keeper_in[1], &target, sizeof(target)) != sizeof(target))
		goto out;
	krc = wait_child(keeper);
	keeper = -1;
	if (krc != 0 || step_send(p.to_child[1], 'g'))
		goto out;
	rc = 0;
out:
	if (keeper > 0) {
		kill(keeper, SIGKILL);
		wait_child(keeper);
	}
	if (rc)
		kill(v, SIGKILL);
	rc |= wait_child(v);
	pipes_close(&p);
	for (int i = 0; i < 2; i++) {
		close(u.keeper_in[i]);
		close(u.keeper_pid[i]);
	}
	open_socket(false);
	CHECK(rc == 0);
	return 0;
}

/* ========================================================================================= */
/* Quotas.                                                                                  */

/* A registration of this process, as uid 65534 or root, that lives until it is killed. */
struct holder {
	bool nobody;
	uint64_t size; /* slot bytes */
	int out;       /* 'A' ack, 'B' busy + quota named, 'x' anything else */
};

static int holder(void *arg)
{
	struct holder *h = arg;
	struct pt_reg_slot sl = slot1;
	struct pt_client *c;
	char res = 'x';
	int err;

	if (h->nobody && become_nobody())
		return 1;
	sl.size = h->size;
	c = connect_svc();
	if (c) {
		err = pt_client_register(c, 0, PT_DIRTY_RING, &sl, 1, NULL);
		if (!err && pt_client_token(c))
			res = 'A';
		else if (err == -EBUSY && reason_has(c, "quota"))
			res = 'B';
		if (res != 'A')
			fprintf(stderr, "  register: %d %s\n", err,
				pt_client_last_error(c)->reason);
		pt_client_close(c); /* the registration lives with the process, not the socket */
	}
	if (write(h->out, &res, 1) != 1)
		return 1;
	pause();
	return 0;
}

/* Starts a holder; its answer, and its pid in *pid (to kill). */
static char hold(bool nobody, uint64_t size, pid_t *pid)
{
	int fds[2];
	struct holder h = { nobody, size, -1 };
	char res = 'x';

	if (pipe(fds))
		return 'x';
	h.out = fds[1];
	*pid = start_child(holder, &h);
	close(fds[1]);
	if (*pid < 0 || read(fds[0], &res, 1) != 1)
		res = 'x';
	close(fds[0]);
	return res;
}

static void kill_all(pid_t *pids, int n)
{
	for (int i = 0; i < n; i++)
		if (pids[i] > 0) {
			kill(pids[i], SIGKILL);
			waitpid(pids[i], NULL, 0);
		}
}

/* Connections: uid 65534 gets Q_CONNS at most (earlier cases' may still be closing). */
static int nobody_conns(void *arg)
{
	int fds[Q_CONNS + 8], n = 0, refused = 0;
	struct pt_hdr h;
	struct pt_msg m;

	CHECK(become_nobody() == 0);
	while (n < Q_CONNS + 8) {
		int fd = raw_connect();

		CHECK(fd >= 0);
		if (raw_ping(fd, 1) == 0) {
			fds[n++] = fd;
			continue;
		}
		/* The refusal came instead: one ERROR (seq 0) naming the quota, then EOF. */
		close(fd);
		fd = raw_connect();
		CHECK(fd >= 0);
		CHECK(raw_recv(fd, &h, &m) == 1 && m.type == PT_MSG_ERROR);
		CHECKF(m.error->code == PT_E_BUSY &&
			       memmem(m.reason, m.reason_len, "quota-conns", 11),
		       "%s %.*s", pt_err_str(m.error->code), (int)m.reason_len, m.reason);
		CHECK(raw_eof(fd));
		close(fd);
		refused = 1;
		break;
	}
	CHECKF(refused && n <= Q_CONNS, "uid 65534 opened %d connections, quota %d", n, Q_CONNS);
	/* Root is not held back by uid 65534's quota. */
	CHECK(*(int *)arg >= 0);
	while (n)
		close(fds[--n]);
	return 0;
}

static int quota_exhaustion(void)
{
	pid_t pids[Q_VMS + 8] = { 0 };
	int n = 0, busy = 0, root_fd, rc;
	char r = 0;

	T_REQUIRE(need_service());
	if (geteuid() != 0)
		return t_skip("needs root to switch uid");
	CHECK(open_socket(true) == 0);

	/* Connections: root holds one open meanwhile, and it keeps working. */
	root_fd = raw_connect();
	rc = wait_child(start_child(nobody_conns, &root_fd));
	CHECK(root_fd >= 0 && raw_ping(root_fd, 5) == 0);
	close(root_fd);
	CHECK(rc == 0);

	/* VMs: uid 65534's own processes, each registering itself, until the quota says no. */
	while (n < Q_VMS + 8 && !busy) {
		r = hold(true, 4ull << 20, &pids[n++]);
		busy = r == 'B';
		if (r != 'A' && r != 'B')
			break;
	}
	rc = busy && n <= Q_VMS + 1 ? 0 : -1;
	if (rc)
		fprintf(stderr, "  uid 65534 registered %d VMs (quota %d), refused: %d\n", n - busy,
			Q_VMS, busy);
	/* Root still registers, with uid 65534 at its quota. */
	if (!rc && hold(false, 4ull << 20, &pids[n++]) != 'A')
		rc = -1;
	kill_all(pids, n);
	CHECK(rc == 0);
	/* The registrations die with their VMM processes: the quota frees up (reaped each tick). */
	r = 0;
	for (int i = 0; i < 150 && r != 'A'; i++) {
		usleep(100 * 1000);
		r = hold(true, 4ull << 20, &pids[0]);
		kill_all(pids, 1);
	}
	CHECKF(r == 'A', "uid 65534's quota still full after its VMMs exited: %c", r);

	/* Log: 64 GiB is 2 MiB of log, over uid 65534's 1 MiB; root's is not limited. */
	n = 0;
	r = hold(true, 64ull << 30, &pids[n++]);
	rc = r == 'B' ? 0 : -1;
	if (!rc && hold(false, 64ull << 30, &pids[n++]) != 'A')
		rc = -1;
	kill_all(pids, n);
	open_socket(false);
	CHECKF(rc == 0, "log quota: uid 65534's 64 GiB VM answered %c", r);
	CHECKF(status_reaches("refused_quota", 3), "status.json: refused_quota %lld",
	       status_num("refused_quota"));
	return 0;
}

/* ========================================================================================= */
/* Tokens and possession (REGISTER2 needs a real KVM VM descriptor).                        */

static const struct pt_reg_slot2 slot2 = {
	.gpa = SLOT_GPA, .size = 64ull << 20, .id = 1, .flags = PT_REG_SLOT_LOGGED
};

static int create_vm(void)
{
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC), vm;

	if (kvm < 0)
		return -1;
	vm = ioctl(kvm, KVM_CREATE_VM, 0);
	close(kvm);
	return vm;
}

static int register2(struct pt_client *c, uint32_t pid, int vmfd, uint64_t resume)
{
	struct pt_client_reg reg = { .vmm_pid = pid,
				     .mode = PT_DIRTY_RING,
				     .slots = &slot2,
				     .nslots = 1,
				     .fds = &vmfd,
				     .nfds = 1,
				     .resume = resume };

	return pt_client_register2(c, &reg, NULL);
}

static int token_child(void *arg)
{
	struct pt_range r = pages(0, 3);
	struct pt_client *c1 = connect_svc(), *c2 = connect_svc(), *c3 = connect_svc();
	int vm = create_vm(), err;
	uint64_t tok;

	CHECK(vm >= 0 && c1 && c2 && c3);
	CHECK(register2(c1, 0, vm, 0) == 0);
	tok = pt_client_token(c1);
	CHECK(tok != 0);
	CHECK(pt_client_arm(c1, 2) == 0 && pt_client_hint(c1, 2, &r, 1) == 0);

	/* A reconnect with the token: the same registration, its state carried over. */
	CHECK(register2(c2, 0, vm, tok) == 0);
	CHECK(pt_client_token(c2) == tok);
	CHECKF(hinted(c2, 2, &err) == 3 && !err, "resume lost the state: err %d", err);
	err = pt_client_ping(c1) ? -1 : pt_client_arm(c1, 3);
	CHECKF(err == -ENOTCONN && reason_has(c1, "taken over"), "old connection: %d", err);

	/* A wrong token: afresh. */
	CHECK(register2(c3, 0, vm, tok ^ 1) == 0);
	CHECK(pt_client_token(c3) != tok && pt_client_token(c3) != 0);
	hinted(c3, 2, &err);
	CHECKF(err == -ESTALE, "a wrong token carried the state over: %d", err);
	pt_client_close(c1);
	pt_client_close(c2);
	pt_client_close(c3);
	close(vm);
	return 0;
}

/* uid 65534 with a VM of its own, registering the other uid-65534 VMM: refused. */
static int other_vm_child(void *arg)
{
	pid_t victim = *(pid_t *)arg;
	int vm = create_vm(), err;
	struct pt_client *c;

	CHECK(vm >= 0 && become_nobody() == 0);
	c = connect_svc();
	CHECK(c);
	err = register2(c, (uint32_t)victim, vm, 0);
	CHECKF(err == -EPERM && reason_has(c, "not the VM"), "another VM's descriptor: %d %s", err,
	       pt_client_last_error(c)->reason);
	pt_client_close(c);
	close(vm);
	return 0;
}

/* A device process of the VMM's user, not the VMM: the VM's descriptor is its proof. */
static int device_of(pid_t vmm, int vm, uint64_t tok)
{
	struct pt_client *c = connect_svc();
	int err;

	CHECK(c);
	err = register2(c, (uint32_t)vmm, vm, tok);
	CHECKF(err == 0 && pt_client_token(c) == tok, "possession with the token: %d %s", err,
	       pt_client_last_error(c)->reason);
	pt_client_close(c);
	return 0;
}

static int vm_holder(void *arg)
{
	struct pipes *p = arg;
	int vm = create_vm();
	struct pt_client *c;
	pid_t vmm = getpid(), dev;

	pipes_side(p, true);
	CHECK(vm >= 0 && become_nobody() == 0);
	c = connect_svc();
	CHECK(c && register2(c, 0, vm, 0) == 0);
	fflush(NULL);
	dev = fork();
	if (dev == 0)
		_exit(device_of(vmm, vm, pt_client_token(c)) ? 1 : 0);
	CHECK(wait_child(dev) == 0);
	CHECK(step_send(p->to_parent[1], 'r') == 0 && step_wait(p->to_child[0], 'g') == 0);
	pt_client_close(c);
	close(vm);
	return 0;
}

static int token_resumes(void)
{
	struct pipes p;
	pid_t v;
	int rc = -1;

	T_REQUIRE(t_need_kvm());
	T_REQUIRE(need_service());
	CHECK(wait_child(start_child(token_child, NULL)) == 0);
	if (geteuid() != 0)
		return 0;
	CHECK(open_socket(true) == 0 && pipes_open(&p) == 0);
	v = start_child(vm_holder, &p);
	pipes_side(&p, false);
	if (!step_wait(p.to_parent[0], 'r'))
		rc = wait_child(start_child(other_vm_child, &v));
	step_send(p.to_child[1], 'g');
	rc |= wait_child(v);
	pipes_close(&p);
	open_socket(false);
	CHECK(rc == 0);
	return 0;
}

/* ========================================================================================= */
/* The verdict a device acts on, with a real guest.                                          */

#define VM_DATA_GPA  (4ull << 30)
#define VM_DATA_SIZE (8ull << 20)

/* The slots the intruder registers: written by the VMM child in shared memory. */
struct shared_slots {
	struct pt_reg_slot slots[2];
};

struct verdict_arg {
	struct pipes p;
	struct shared_slots *sh;
};

static int verdict_check(struct pt_client *c, uint32_t cmd, const struct pt_range *first)
{
	struct pt_client_result res;
	uint64_t listed = 0;

	CHECK(pt_client_query(c, cmd, PT_Q_HINTS, &res) == 0);
	for (uint32_t i = 0; i < res.v.nranges; i++) {
		const struct pt_range *x = &res.ranges[i];

		listed += x->len / PG;
		CHECKF(x->gpa >= first->gpa && x->gpa + x->len <= first->gpa + first->len,
		       "page %#llx listed free: the device never hinted it",
		       (unsigned long long)x->gpa);
	}
	CHECKF(res.v.free == listed && res.v.hinted == first->len / PG && listed <= res.v.hinted,
	       "hinted %llu free %llu listed %llu", (unsigned long long)res.v.hinted,
	       (unsigned long long)res.v.free, (unsigned long long)listed);
	pt_client_result_free(&res);
	return 0;
}

static int verdict_vmm(void *arg)
{
	struct verdict_arg *va = arg;
	struct pipes *p = &va->p;
	struct shared_slots *sh = va->sh;
	struct minivm_opts o = { .dirty = MINIVM_DIRTY_RING, .nslots = 1, .ring_entries = 4096 };
	struct pt_range first = { VM_DATA_GPA, 16 * PG };
	struct pt_client *c, *c2;
	uint64_t gpas[64];
	struct minivm *m;
	int err;

	pipes_side(p, true);
	o.slots[0] = (struct minivm_slot){ .gpa = VM_DATA_GPA, .size = VM_DATA_SIZE, .id = 1 };
	CHECK(!minivm_create(&m, &o));
	sh->slots[0] = (struct pt_reg_slot){ VM_DATA_GPA, VM_DATA_SIZE, 1, PT_REG_SLOT_LOGGED };
	minivm_system_range(m, &sh->slots[1].gpa, &sh->slots[1].size);
	sh->slots[1].flags = PT_REG_SLOT_LOGGED;
	for (int i = 0; i < 64; i++)
		gpas[i] = VM_DATA_GPA + i * PG;
	CHECK(!minivm_guest_write(m, gpas, 64, 0x1111)); /* live data, never hinted past 15 */

	c = connect_svc();
	CHECK(c && pt_client_register(c, 0, PT_DIRTY_RING, sh->slots, 2, NULL) == 0);
	CHECK(pt_client_arm(c, 2) == 0 && !minivm_sync(m) && pt_client_hint(c, 2, &first, 1) == 0);
	CHECK(step_send(p->to_parent[1], '1') == 0 && step_wait(p->to_child[0], '1') == 0);

	hinted(c, 2, &err);
	CHECKF(err == -ENOTCONN, "the device was not told of the takeover: %d", err);
	c2 = connect_svc();
	CHECK(c2 && pt_client_register(c2, 0, PT_DIRTY_RING, sh->slots, 2, NULL) == 0);
	hinted(c2, 2, &err);
	CHECKF(err == -ESTALE, "the intruder's round carried over: %d", err);
	/* IDs 2 (ours) and 3 (root's) stay blocked until the driver's STOP (PROTOCOL.md 4.2). */
	CHECK(pt_client_arm(c2, 4) == 0 && !minivm_sync(m));
	CHECK(pt_client_hint(c2, 4, &first, 1) == 0);
	CHECK(verdict_check(c2, 4, &first) == 0);
	pt_client_close(c2);
	pt_client_close(c);
	minivm_destroy(m);
	return 0;
}

static int takeover_verdict(void)
{
	struct pt_range rest = { VM_DATA_GPA + 16 * PG, 48 * PG };
	struct pt_client *c = NULL;
	struct verdict_arg va;
	pid_t v;
	int rc = -1;

	T_REQUIRE(t_need_kvm());
	T_REQUIRE(need_service());
	if (!ring_tracked())
		return t_skip("dirty-ring writes not tracked on this host");
	va.sh = mmap(NULL, sizeof(*va.sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1,
		     0);
	CHECK(va.sh != MAP_FAILED && pipes_open(&va.p) == 0);
	v = start_child(verdict_vmm, &va);
	pipes_side(&va.p, false);
	if (step_wait(va.p.to_parent[0], '1') == 0) {
		/* Root registers the VMM's VM (allowed, but afresh) and hints the rest (under 3:
		 * the device's 2 stays blocked). */
		c = connect_svc();
		if (c &&
		    !pt_client_register(c, (uint32_t)v, PT_DIRTY_RING, va.sh->slots, 2, NULL) &&
		    !pt_client_arm(c, 3) && !pt_client_hint(c, 3, &rest, 1))
			rc = step_send(va.p.to_child[1], '1');
	}
	if (rc)
		kill(v, SIGKILL);
	rc |= wait_child(v);
	pt_client_close(c);
	pipes_close(&va.p);
	munmap(va.sh, sizeof(*va.sh));
	CHECK(rc == 0);
	return 0;
}

/* ========================================================================================= */

static char conf[64];

static void remove_conf(void)
{
	unlink(conf);
}

static int write_conf(void)
{
	static const char *args[3];
	FILE *f;

	snprintf(conf, sizeof(conf), "/tmp/pt-hostile-%d.conf", (int)getpid());
	f = fopen(conf, "w");
	if (!f)
		return -1;
	fprintf(f,
		getenv("OLDCONF") ? "#%d %d %d\n"
				  : "quota-conns = %d\nquota-vms = %d\nquota-log-mb = %d\n",
		Q_CONNS, Q_VMS, Q_LOG_MB);
	fclose(f);
	atexit(remove_conf);
	args[0] = "-c";
	args[1] = conf;
	svc_args = args;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct t_case cases[] = {
		T_CASE(takeover_starts_afresh), T_CASE(pid_reuse_refused), T_CASE(quota_exhaustion),
		T_CASE(token_resumes),		T_CASE(takeover_verdict),
	};

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (write_conf())
		return 1;
	return t_run(cases, sizeof(cases) / sizeof(cases[0]), argc, argv);
}
