/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A forked child playing a Firecracker-style VMM for the userfaultfd write log: it maps guest
 * memory (anonymous 4 KiB, THP, or memfd/shmem), creates a userfaultfd with WP_ASYNC |
 * WP_UNPOPULATED (| WP_HUGETLBFS_SHMEM), registers the memory in WP mode, opens its own
 * /proc/self/pagemap and hands both fds to the parent with SCM_RIGHTS. The parent (the
 * service) has no mapping of that memory. On command the child writes pages through its own
 * mapping (the VMM's own writes), discards, unmaps, remaps or unregisters memory, or runs a
 * writer thread that logs every write with CLOCK_MONOTONIC stamps into a shared log.
 */
#ifndef PT_TESTS_UFFD_CHILD_H
#define PT_TESTS_UFFD_CHILD_H

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

#include "writelog/uffd_abi.h"

#define UC_PAGE 4096ull

enum uc_kind { UC_ANON, UC_THP, UC_SHMEM, UC_HUGETLB /* shared hugetlbfs memfd, 2 MiB */ };

struct uc_opts {
	enum uc_kind kind;
	uint64_t size;	   /* bytes of guest memory */
	bool populate;	   /* touch every page before registering (THP needs it) */
	bool no_register;  /* create the uffd but register nothing */
	uint64_t features; /* 0: WP_ASYNC | WP_UNPOPULATED (| WP_HUGETLBFS_SHMEM for shmem) */
};

/* The writer thread's log, in memory shared with the parent. */
struct uc_wr {
	uint64_t page, t0, t1; /* t0 before the store, t1 after it */
};
#define UC_LOG_MAX (1u << 20)
struct uc_shared {
	volatile int stop;
	uint64_t n; /* entries in log (release/acquire) */
	uint64_t pages, seed;
	uint64_t usleep_every; /* writer sleeps 1 us after this many writes (0: never) */
	uint64_t extra[4];     /* for a test's own child operations (uc_extra) */
	struct uc_wr log[UC_LOG_MAX];
};

/* Declare as `struct uc c = UC_NONE;` so uc_stop() is safe before uc_start(). */
#define UC_NONE                                  \
	{                                        \
		.sock = -1, .uffd = -1, .pm = -1 \
	}
struct uc {
	pid_t pid;
	int sock;
	int uffd, pm; /* received fds (the parent's copies) */
	uint64_t hva, size;
	struct uc_shared *sh;
};

enum uc_op {
	UC_WRITE = 1,
	UC_DONTNEED,
	UC_UNREGISTER,
	UC_MUNMAP,
	UC_REMAP,
	UC_WRITER_START,
	UC_WRITER_STOP,
	UC_THP_KB,
	UC_EXIT
};

struct uc_cmd {
	uint32_t op, n; /* UC_WRITE: n page indices follow */
	uint64_t a, b;	/* page index, page count */
};

static inline uint64_t uc_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int uc_io(int fd, void *buf, size_t len, bool wr)
{
	for (size_t off = 0; off < len;) {
		ssize_t k = wr ? write(fd, (char *)buf + off, len - off)
			       : read(fd, (char *)buf + off, len - off);

		if (k <= 0)
			return -1;
		off += k;
	}
	return 0;
}

/* --- the child ----------------------------------------------------------------------------- */

struct uc_child {
	int sock, uffd;
	int memfd; /* UC_SHMEM, UC_HUGETLB: the memory's file (-1 otherwise) */
	char *mem;
	struct uc_shared *sh;
	uint64_t size;
	pthread_t writer;
};

static void *uc_writer(void *arg)
{
	struct uc_child *c = arg;
	struct uc_shared *sh = c->sh;
	uint64_t x = sh->seed | 1, k = 0;

	while (!sh->stop) {
		uint64_t n = __atomic_load_n(&sh->n, __ATOMIC_RELAXED), page;
		struct uc_wr *w;

		if (n == UC_LOG_MAX)
			break;
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		page = x % sh->pages;
		w = &sh->log[n];
		w->page = page;
		w->t0 = uc_now();
		*(volatile uint64_t *)(c->mem + page * UC_PAGE) = n + 1;
		w->t1 = uc_now();
		__atomic_store_n(&sh->n, n + 1, __ATOMIC_RELEASE);
		if (sh->usleep_every && ++k % sh->usleep_every == 0)
			usleep(1);
	}
	return NULL;
}

static uint64_t uc_thp_kb(void)
{
	FILE *f = fopen("/proc/self/smaps_rollup", "r");
	char line[256];
	uint64_t kb = 0;

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "AnonHugePages: %lu kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb;
}

/* A test's own operations (op >= UC_EXTRA), run in the child; NULL: none. */
#define UC_EXTRA 100
static int64_t (*uc_extra)(struct uc_child *c, const struct uc_cmd *cmd);

static int64_t uc_do(struct uc_child *c, const struct uc_cmd *cmd)
{
	char *at = c->mem + cmd->a * UC_PAGE;
	uint64_t len = cmd->b * UC_PAGE;
	struct uffdio_range r = { (uintptr_t)c->mem, c->size };

	switch (cmd->op) {
	case UC_WRITE:
		for (uint32_t i = 0; i < cmd->n; i++) {
			uint64_t p;

			if (uc_io(c->sock, &p, sizeof(p), false))
				return -1;
			*(volatile uint64_t *)(c->mem + p * UC_PAGE + 64) = p + 1;
		}
		return 0;
	case UC_DONTNEED:
		return madvise(at, len, MADV_DONTNEED) ? -errno : 0;
	case UC_UNREGISTER:
		return ioctl(c->uffd, UFFDIO_UNREGISTER, &r) ? -errno : 0;
	case UC_MUNMAP:
		return munmap(at, len) ? -errno : 0;
	case UC_REMAP:
		return mmap(at, len, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED
			       ? -errno
			       : 0;
	case UC_WRITER_START:
		c->sh->stop = 0;
		return pthread_create(&c->writer, NULL, uc_writer, c) ? -1 : 0;
	case UC_WRITER_STOP:
		c->sh->stop = 1;
		return pthread_join(c->writer, NULL) ? -1 : 0;
	case UC_THP_KB:
		return (int64_t)uc_thp_kb();
	default:
		if (cmd->op >= UC_EXTRA && uc_extra)
			return uc_extra(c, cmd);
		return -EINVAL;
	}
}

/* Map, register, send the fds; returns the mapping or NULL (errno). */
static char *uc_setup(const struct uc_opts *o, int *uffd_out, int *memfd_out)
{
	bool shared = o->kind == UC_SHMEM || o->kind == UC_HUGETLB;
	uint64_t feat = o->features ? o->features
				    : UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED |
					      (shared ? UFFD_FEATURE_WP_HUGETLBFS_SHMEM : 0);
	struct uffdio_api api = { .api = UFFD_API, .features = feat };
	int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	char *mem;

	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api))
		return NULL;
	*memfd_out = -1;
	if (shared) {
		int fd = memfd_create("guest",
				      MFD_CLOEXEC | (o->kind == UC_HUGETLB ? MFD_HUGETLB : 0));

		if (fd < 0 || ftruncate(fd, o->size))
			return NULL;
		mem = mmap(NULL, o->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		*memfd_out = fd;
	} else {
		/* 2 MiB aligned, so THP can back it. */
		char *raw = mmap(NULL, o->size + (2 << 20), PROT_READ | PROT_WRITE,
				 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

		mem = raw == MAP_FAILED
			      ? raw
			      : (char *)(((uintptr_t)raw + (2 << 20) - 1) & ~((2ul << 20) - 1));
		if (raw != MAP_FAILED && o->kind == UC_THP)
			madvise(mem, o->size, MADV_HUGEPAGE);
		if (raw != MAP_FAILED && o->kind == UC_ANON)
			madvise(mem, o->size, MADV_NOHUGEPAGE);
	}
	if (mem == MAP_FAILED)
		return NULL;
	if (o->populate)
		for (uint64_t off = 0; off < o->size; off += UC_PAGE)
			mem[off] = 1;
	if (!o->no_register) {
		struct uffdio_register reg = { .range = { (uintptr_t)mem, o->size },
					       .mode = UFFDIO_REGISTER_MODE_WP };

		if (ioctl(uffd, UFFDIO_REGISTER, &reg))
			return NULL;
	}
	*uffd_out = uffd;
	return mem;
}

static int uc_send_fds(int sock, int a, int b, const void *msg, size_t len)
{
	char cbuf[CMSG_SPACE(2 * sizeof(int))] = { 0 };
	struct iovec iov = { (void *)msg, len };
	struct msghdr mh = { .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	int fds[2] = { a, b };

	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(cm), fds, sizeof(fds));
	return sendmsg(sock, &mh, 0) == (ssize_t)len ? 0 : -1;
}

static int uc_recv_fds(int sock, int *a, int *b, void *msg, size_t len)
{
	char cbuf[CMSG_SPACE(2 * sizeof(int))];
	struct iovec iov = { msg, len };
	struct msghdr mh = { .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = cbuf,
			     .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *cm;

	if (recvmsg(sock, &mh, MSG_CMSG_CLOEXEC) != (ssize_t)len)
		return -1;
	cm = CMSG_FIRSTHDR(&mh);
	if (!cm || cm->cmsg_type != SCM_RIGHTS || cm->cmsg_len != CMSG_LEN(2 * sizeof(int)))
		return -1;
	memcpy(a, CMSG_DATA(cm), sizeof(int));
	memcpy(b, (int *)CMSG_DATA(cm) + 1, sizeof(int));
	return 0;
}

static void __attribute__((noreturn))
uc_child_main(int sock, const struct uc_opts *o, struct uc_shared *sh)
{
	struct uc_child c = { .sock = sock, .sh = sh, .size = o->size };
	uint64_t hello[2] = { 0, o->size };
	int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	struct uc_cmd cmd;

	c.mem = uc_setup(o, &c.uffd, &c.memfd);
	if (!c.mem || pm < 0) {
		hello[0] = 0;
		hello[1] = errno;
		uc_send_fds(sock, 0, 1, hello, sizeof(hello));
		_exit(1);
	}
	hello[0] = (uintptr_t)c.mem;
	sh->pages = o->size / UC_PAGE;
	if (uc_send_fds(sock, c.uffd, pm, hello, sizeof(hello)))
		_exit(1);
	while (!uc_io(sock, &cmd, sizeof(cmd), false) && cmd.op != UC_EXIT) {
		int64_t rc = uc_do(&c, &cmd);

		if (uc_io(sock, &rc, sizeof(rc), true))
			break;
	}
	_exit(0);
}

/* --- the parent ---------------------------------------------------------------------------- */

static int uc_start(struct uc *u, const struct uc_opts *o)
{
	uint64_t hello[2];
	int sv[2];

	memset(u, 0, sizeof(*u));
	u->uffd = u->pm = u->sock = -1;
	u->sh = mmap(NULL, sizeof(*u->sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1,
		     0);
	if (u->sh == MAP_FAILED || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return -1;
	u->pid = fork();
	if (u->pid < 0)
		return -1;
	if (!u->pid) {
		close(sv[0]);
		uc_child_main(sv[1], o, u->sh);
	}
	close(sv[1]);
	u->sock = sv[0];
	if (uc_recv_fds(u->sock, &u->uffd, &u->pm, hello, sizeof(hello)) || !hello[0]) {
		fprintf(stderr, "  child VMM setup failed: %s\n", strerror((int)hello[1]));
		return -1;
	}
	u->hva = hello[0];
	u->size = hello[1];
	return 0;
}

static int64_t uc_cmd(struct uc *u, uint32_t op, uint64_t a, uint64_t b)
{
	struct uc_cmd c = { .op = op, .a = a, .b = b };
	int64_t rc;

	if (uc_io(u->sock, &c, sizeof(c), true) || uc_io(u->sock, &rc, sizeof(rc), false))
		return -EIO;
	return rc;
}

/* The child writes each page of the list through its own mapping. */
static inline int uc_write(struct uc *u, const uint64_t *pages, uint32_t n)
{
	struct uc_cmd c = { .op = UC_WRITE, .n = n };
	int64_t rc;

	if (uc_io(u->sock, &c, sizeof(c), true) ||
	    uc_io(u->sock, (void *)pages, n * sizeof(*pages), true) ||
	    uc_io(u->sock, &rc, sizeof(rc), false))
		return -EIO;
	return (int)rc;
}

/* Ends the child; closes the parent's copies of the fds unless `keep_fds` (given away). */
static void uc_stop(struct uc *u, bool keep_fds)
{
	struct uc_cmd c = { .op = UC_EXIT };

	if (u->pid > 0) {
		if (uc_io(u->sock, &c, sizeof(c), true))
			kill(u->pid, SIGKILL);
		waitpid(u->pid, NULL, 0);
	}
	if (u->sock >= 0)
		close(u->sock);
	u->sock = -1;
	if (!keep_fds) {
		if (u->uffd >= 0)
			close(u->uffd);
		if (u->pm >= 0)
			close(u->pm);
	}
	if (u->sh && u->sh != MAP_FAILED)
		munmap(u->sh, sizeof(*u->sh));
	u->sh = NULL;
	u->uffd = u->pm = -1;
	u->pid = 0;
}

#endif
