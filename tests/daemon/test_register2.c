// SPDX-License-Identifier: GPL-2.0
/*
 * REGISTER2 against the real service: descriptors passed with SCM_RIGHTS reach the frame
 * they were sent with (also behind pipelined frames), a descriptor that is not a KVM VM is
 * refused, too few or too many are errors, and the service keeps none of them once the
 * connection is gone. With /dev/kvm, a real VM fd registers and the ACK carries a token.
 */
#include <dirent.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/eventfd.h>
#include <sys/wait.h>

#include "t.h"
#include "svc.h"
#include "vmm/minivm.h"

static const struct pt_reg_slot2 slot2 = {
	.gpa = 1ull << 30, .size = 64ull << 20, .id = 1, .flags = PT_REG_SLOT_LOGGED
};

static size_t build_reg2(uint32_t seq, uint32_t mode, uint32_t nfds)
{
	struct pt_register2 r = {
		.vmm_pid = (uint32_t)getpid(), .mode = mode, .nslots = 1, .nfds = nfds
	};

	return pt_build_register2(tx, sizeof(tx), seq, &r, &slot2);
}

/* Sends @len bytes of tx with @n descriptors attached to the first byte. */
static int send_fds(int sock, const void *buf, size_t len, const int *fds, int n)
{
	char ctl[CMSG_SPACE(8 * sizeof(int))] __attribute__((aligned(8))) = { 0 };
	struct iovec iov = { (void *)buf, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *cm;

	if (n) {
		mh.msg_control = ctl;
		mh.msg_controllen = CMSG_SPACE(n * sizeof(int));
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(n * sizeof(int));
		memcpy(CMSG_DATA(cm), fds, n * sizeof(int));
	}
	return sendmsg(sock, &mh, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -1;
}

static int count_fds(pid_t pid)
{
	char path[64];
	struct dirent *e;
	DIR *d;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%d/fd", pid);
	d = opendir(path);
	if (!d)
		return -1;
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

/* An eventfd where a KVM VM fd belongs: refused, and the connection goes on. */
static int not_a_vm_fd(void)
{
	int fd, efd = eventfd(0, EFD_CLOEXEC);

	T_REQUIRE(need_service());
	fd = raw_connect();
	CHECK(fd >= 0 && efd >= 0);
	CHECK(!send_fds(fd, tx, build_reg2(7, PT_DIRTY_RING, 1), &efd, 1));
	EXPECT_ERROR(fd, 7, PT_E_BAD_FIELD);
	CHECK(raw_ping(fd, 8) == 0);
	close(efd);
	close(fd);
	return 0;
}

/* nfds says 1, nothing was attached. */
static int missing_fd(void)
{
	int fd;

	T_REQUIRE(need_service());
	fd = raw_connect();
	CHECK(fd >= 0);
	CHECK(!raw_send(fd, tx, build_reg2(3, PT_DIRTY_RING, 1)));
	EXPECT_ERROR(fd, 3, PT_E_BAD_FIELD);
	close(fd);
	return 0;
}

/*
 * A PING sent first, REGISTER2 with its descriptor right behind it: the descriptor is found
 * by the REGISTER2 (the error is "not a KVM VM", not "fewer descriptors"), so the service
 * matched it to its frame although both may come in one read.
 */
static int fd_behind_pipelined_frame(void)
{
	int fd, efd = eventfd(0, EFD_CLOEXEC);
	size_t n;
	struct pt_hdr h;
	struct pt_msg m;

	T_REQUIRE(need_service());
	fd = raw_connect();
	CHECK(fd >= 0 && efd >= 0);
	n = pt_build_empty(tx, sizeof(tx), PT_MSG_PING, 1);
	CHECK(!raw_send(fd, tx, n));
	CHECK(!send_fds(fd, tx, build_reg2(2, PT_DIRTY_RING, 1), &efd, 1));
	EXPECT_ACK(fd, 1, NULL);
	CHECK(raw_recv(fd, &h, &m) == 1 && m.type == PT_MSG_ERROR);
	CHECKF(m.reason_len && memmem(m.reason, m.reason_len, "not a KVM VM", 12), "reason: %.*s",
	       (int)m.reason_len, m.reason);
	close(efd);
	close(fd);
	return 0;
}

/* More descriptors than any frame takes: an error, the connection is closed. */
static int too_many_fds(void)
{
	int fd, fds[6];
	size_t n;
	struct pt_hdr h;
	struct pt_msg m;

	T_REQUIRE(need_service());
	fd = raw_connect();
	CHECK(fd >= 0);
	for (int i = 0; i < 6; i++)
		fds[i] = eventfd(0, EFD_CLOEXEC);
	n = pt_build_empty(tx, sizeof(tx), PT_MSG_PING, 1);
	CHECK(!send_fds(fd, tx, n, fds, 6));
	/* The ERROR may come before or after the PING's ACK; then the end of the stream. */
	for (int i = 0; i < 2; i++) {
		int rc = raw_recv(fd, &h, &m);

		if (rc == 1 && m.type == PT_MSG_ERROR)
			break;
		CHECKF(rc == 1 && m.type == PT_MSG_ACK, "wanted ERROR, got rc %d", rc);
	}
	CHECK(m.type == PT_MSG_ERROR && m.error->code == PT_E_BAD_FIELD);
	CHECK(raw_eof(fd));
	for (int i = 0; i < 6; i++)
		close(fds[i]);
	close(fd);
	return 0;
}

/* Descriptors that no frame took are closed with the connection: the service keeps none. */
static int no_fd_leak(void)
{
	int before, after = -1, fds[4];
	size_t n;

	T_REQUIRE(need_service());
	before = count_fds(svc.pid);
	CHECK(before > 0);
	for (int round = 0; round < 20; round++) {
		int fd = raw_connect();

		CHECK(fd >= 0);
		for (int i = 0; i < 4; i++)
			fds[i] = eventfd(0, EFD_CLOEXEC);
		n = pt_build_empty(tx, sizeof(tx), PT_MSG_PING, 1);
		CHECK(!send_fds(fd, tx, n, fds, 4));
		EXPECT_ACK(fd, 1, NULL);
		for (int i = 0; i < 4; i++)
			close(fds[i]);
		close(fd);
	}
	/* The service closes a connection when it reads its end of stream: allow it a moment.
	 * Connections of earlier cases may close meanwhile, so the count may also drop. */
	for (int i = 0; i < 500 && (after = count_fds(svc.pid)) > before; i++)
		usleep(10000);
	CHECKF(after <= before, "service had %d descriptors, now %d", before, after);
	return 0;
}

/*
 * Parks 4 descriptors (a PING's) on each of @nconn new connections, then sends one more on a
 * further connection, which the service must refuse (PT_E_BAD_FIELD) and close.
 */
static int park_until_refused(int *conns, int nconn, const int *fds)
{
	size_t n = pt_build_empty(tx, sizeof(tx), PT_MSG_PING, 1);
	struct pt_hdr h;
	struct pt_msg m;
	int fd;

	for (int i = 0; i < nconn; i++) {
		conns[i] = raw_connect();
		CHECK(conns[i] >= 0 && !send_fds(conns[i], tx, n, fds, 4));
		EXPECT_ACK(conns[i], 1, NULL);
	}
	fd = raw_connect();
	CHECK(fd >= 0 && !send_fds(fd, tx, n, fds, 1));
	for (int i = 0; i < 2; i++) { /* the ERROR, before or after the PING's ACK */
		CHECK(raw_recv(fd, &h, &m) == 1);
		if (m.type == PT_MSG_ERROR)
			break;
	}
	CHECKF(m.type == PT_MSG_ERROR && m.error->code == PT_E_BAD_FIELD, "connection %d: got %s",
	       nconn + 1, pt_msg_type_str(m.type));
	CHECK(raw_eof(fd));
	close(fd);
	return 0;
}

/*
 * Descriptors no frame takes, parked by many connections: the service holds 256 for all of
 * them at most (4 each, so 64 connections); the next connection that sends some is closed
 * with an error, and once the others are gone, descriptors are accepted again.
 */
static int fds_bounded_for_all(void)
{
	enum { NCONN = 64 };
	int conns[NCONN], fds[4], fd;
	size_t n = pt_build_empty(tx, sizeof(tx), PT_MSG_PING, 1);
	struct pt_hdr h;
	struct pt_msg m;

	T_REQUIRE(need_service());
	for (int i = 0; i < 4; i++)
		fds[i] = eventfd(0, EFD_CLOEXEC);
	CHECK(!park_until_refused(conns, NCONN, fds));
	for (int i = 0; i < NCONN; i++)
		close(conns[i]);
	/* The service frees them as it reads each end of stream: a bounded wait. */
	for (int tries = 0;; tries++) {
		fd = raw_connect();
		CHECK(fd >= 0 && !send_fds(fd, tx, n, fds, 4));
		CHECK(raw_recv(fd, &h, &m) == 1);
		close(fd);
		if (m.type == PT_MSG_ACK)
			break;
		CHECKF(tries < 200, "descriptors still refused after the connections closed");
		usleep(20000);
	}
	for (int i = 0; i < 4; i++)
		close(fds[i]);
	return 0;
}

/*
 * One user's connections hold at most 64 untaken descriptors (a quarter of the 256): a device
 * of another user can still register while uid 65534 parks all it may. The child, as 65534,
 * parks 4 on each of 16 connections, then sees the 17th closed; the parent (root, not
 * capped) is then served while they are still held.
 */
#define NOBODY 65534

static int park_as_nobody(int done_fd)
{
	enum { NCONN = 16 };
	int conns[NCONN], fds[4];
	char c = 0;

	CHECK(!setgroups(0, NULL) && !setgid(NOBODY) && !setuid(NOBODY));
	for (int i = 0; i < 4; i++)
		fds[i] = eventfd(0, EFD_CLOEXEC);
	CHECK(!park_until_refused(conns, NCONN, fds));
	CHECK(write(done_fd, &c, 1) == 1);
	CHECK(read(done_fd, &c, 1) == 1); /* hold them until the parent is done */
	return 0;
}

static int fds_bounded_per_user(void)
{
	size_t n = pt_build_empty(tx, sizeof(tx), PT_MSG_PING, 1);
	struct stat st;
	int sv[2], fds[4], fd, rc;
	struct pt_hdr h;
	struct pt_msg m;
	pid_t pid;
	char c;

	T_REQUIRE(need_service());
	CHECK(!stat(svc.dir, &st) && !chmod(svc.dir, 0755) && !chmod(svc.socket, 0666));
	CHECK(!socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
	pid = fork();
	if (!pid) {
		close(sv[0]);
		_exit(park_as_nobody(sv[1]) ? 1 : 0);
	}
	close(sv[1]);
	rc = read(sv[0], &c, 1) == 1 ? 0 : -1; /* 0 bytes: the child failed */
	for (int i = 0; i < 4; i++)
		fds[i] = eventfd(0, EFD_CLOEXEC);
	fd = raw_connect();
	if (!rc && fd >= 0 && !send_fds(fd, tx, n, fds, 4) && raw_recv(fd, &h, &m) == 1)
		rc = m.type == PT_MSG_ACK ? 0 : -2;
	close(fd);
	if (send(sv[0], "", 1, MSG_NOSIGNAL) != 1 || wait_child(pid))
		rc = rc ? rc : -3;
	chmod(svc.dir, st.st_mode & 07777);
	for (int i = 0; i < 4; i++)
		close(fds[i]);
	close(sv[0]);
	CHECKF(!rc, "uid %d parking, then another user's descriptors: %s", NOBODY,
	       rc == -1	  ? "the child failed"
	       : rc == -2 ? pt_msg_type_str(m.type)
			  : "the child failed after");
	return 0;
}

/* A real VM fd: accepted, and the ACK carries a nonzero resume token. */
static int real_vm_fd(void)
{
	struct minivm_opts o = { .dirty = MINIVM_DIRTY_RING };
	struct pt_client_reg reg = { .mode = PT_DIRTY_RING, .slots = &slot2, .nslots = 1 };
	struct minivm *vm = NULL;
	struct pt_client *c;
	int vmfd;

	T_REQUIRE(t_need_kvm());
	T_REQUIRE(need_service());
	CHECK(minivm_create(&vm, &o) == 0);
	vmfd = minivm_vm_fd(vm);
	reg.fds = &vmfd;
	reg.nfds = 1;
	c = connect_svc();
	CHECK(c);
	CHECKF(pt_client_register2(c, &reg, NULL) == 0, "%s", pt_client_last_error(c)->reason);
	CHECK(pt_client_token(c) != 0);
	pt_client_close(c);
	minivm_destroy(vm);
	return 0;
}

T_MAIN(T_CASE(not_a_vm_fd), T_CASE(missing_fd), T_CASE(fd_behind_pipelined_frame),
       T_CASE(too_many_fds), T_CASE(no_fd_leak), T_CASE(fds_bounded_for_all),
       T_CASE(fds_bounded_per_user), T_CASE(real_vm_fd))
