// SPDX-License-Identifier: GPL-2.0
/*
 * An adversarial audit of what a peer on the socket can reach (server.c, proto.c, service.c):
 * each case is a sequence a hostile device can send, and asserts the bound the service
 * promises (PROTOCOL.md sections 3 and 9, OPERATIONS.md section 2.1). Each failed before the
 * fix that came with it:
 *
 *   wr_read_overlaps_one_pass     WR_READ of the whole guest named 256 or 4096 times: one pass
 *                                 over the guest (BPF and userfaultfd modes), one turn's work
 *   bad_frame_flood_logs_bounded  8192 frames with a reserved flag: each answered, at most 64
 *                                 journal lines a second, then a line counting the rest
 *   slow_reader_closed            a peer that reads a full reply queue a little at a time is
 *                                 closed by reply-timeout, as one that does not read
 *   register2_probe_flood         REGISTER2s on a registered connection are refused before the
 *                                 userfaultfd probe reads the VMM's page tables
 *
 * The peers register their own pid with explicit memslots (no /dev/kvm needed: without a KVM
 * guest every BPF-mode verdict is "keep"), or the userfaultfd mode over their own memory.
 */
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>

#include "t.h"
#include "svc.h"

#define GIB  (1ull << 30)
#define PAGE 4096ull

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Stops this binary's service and starts one with @conf as its configuration file. */
static int restart_service(const char *conf)
{
	return svc_restart("audit", NULL, conf);
}

/* Waits for the next tick (status.json's "time" changes); returns the new time. */
static long long next_tick(void)
{
	long long t = status_num("time");
	double t0 = now_ms();

	while (status_num("time") == t && now_ms() - t0 < 5000)
		usleep(20 * 1000);
	return status_num("time");
}

/* The most CPU one turn of the loop took in the tick windows from now until @fn returned and
 * the window holding its end was published. */
static long long turn_cpu_of(int (*fn)(void *), void *arg, int *rc)
{
	long long cpu = 0, t;

	next_tick();
	t = status_num("time");
	*rc = fn(arg);
	for (int windows = 0; windows < 2;) {
		long long now = next_tick(), c = status_num("tick_max_turn_cpu_us");

		if (now != t) {
			t = now;
			windows++;
			cpu = c > cpu ? c : cpu;
		}
	}
	return cpu;
}

/* --- WR_READ of overlapping ranges --------------------------------------------------------- */

/*
 * A WR_READ may name the same pages many times (4096 ranges, each the whole guest). Its work
 * was one pass over the asked pages per range: 2^30 pages in one turn of the loop in the BPF
 * modes (47 ms of CPU here, 30 times a turn's budget), and in the userfaultfd mode, where the
 * ranges were read before the frame's bound was checked, 4096 passes over the guest's bitmap
 * (555 ms for 16 GiB, 9 s for the 256 GiB a uid's quota allows) before the frame was refused.
 * The asked ranges are now merged first: one pass over the guest at most, like QUERY.
 */
#define WR_SLOT	   (16 * GIB) /* 2^22 pages */
#define WR_GPA	   (4 * GIB)
#define WR_CPU_MAX 20000 /* us of CPU in one turn: the work is about 1 ms */

struct wr_req {
	int fd;
	struct pt_range *r;
	uint32_t n;
	int type; /* of the reply's last frame */
};

/* One WR_READ of @w->r; its reply (WR_RECORDS frames, or an ERROR) read whole. */
static int wr_read_once(void *arg)
{
	struct wr_req *w = arg;
	struct pt_hdr h;
	struct pt_msg m;
	size_t n = pt_build_report(tx, sizeof(tx), PT_MSG_WR_READ, 7, w->r, w->n);

	CHECK(n && !raw_send(w->fd, tx, n));
	do {
		CHECK(raw_recv(w->fd, &h, &m) == 1 && h.seq == 7);
	} while (m.type == PT_MSG_WR_RECORDS && (h.flags & PT_F_MORE));
	w->type = m.type;
	return 0;
}

/* WR_READs of @counts copies of the whole slot on @fd; each within one turn's bound. */
static int wr_read_copies(int fd, const uint32_t *counts, int ncounts, const char *mode)
{
	static struct pt_range r[4096];
	struct wr_req w = { .fd = fd, .r = r };
	long long cpu;
	int rc;

	for (int i = 0; i < 4096; i++)
		r[i] = (struct pt_range){ WR_GPA, WR_SLOT };
	for (int i = 0; i < ncounts; i++) {
		w.n = counts[i];
		cpu = turn_cpu_of(wr_read_once, &w, &rc);
		fprintf(stderr, "  %s: WR_READ of %u x 16 GiB: %s, one turn %lld us of CPU\n", mode,
			w.n, pt_msg_type_str(w.type), cpu);
		CHECK(rc == 0);
		/* 2^30 pages is the frame's bound, overlaps counted: over it, refused. */
		CHECK(w.type == (w.n * (WR_SLOT / PAGE) > PT_MAX_BATCH_PAGES ? PT_MSG_ERROR
									     : PT_MSG_WR_RECORDS));
		CHECKF(cpu < WR_CPU_MAX * (long long)t_time_scale(),
		       "%s: a WR_READ of %u copies of the guest held the loop for %lld us of CPU",
		       mode, w.n, cpu);
	}
	return 0;
}

/* The userfaultfd mode: the child is the VMM of a sparse 16 GiB guest. */
static int wr_read_uffd_child(void *arg)
{
	static const uint32_t counts[] = { 256, 4096 };
	struct pt_reg_slot2 slot = { .gpa = WR_GPA, .size = WR_SLOT, .id = 1 };
	struct pt_client *c = connect_svc();
	struct timeval tv = { 20, 0 };
	char *mem = mmap(NULL, WR_SLOT, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	int uffd = -1, fd, rc;

	(void)arg;
	CHECK(c && mem != MAP_FAILED);
	slot.hva = (uintptr_t)mem;
	rc = pt_client_register_uffd(c, &slot, 1, -1, &uffd, NULL);
	if (rc == -EOPNOTSUPP || rc == -ENOSYS)
		return t_skip("no async userfaultfd write-protect: %s", strerror(-rc));
	CHECKF(!rc, "register: %s", strerror(-rc));
	/* The rest on the raw socket, blocking, as the raw helpers expect. */
	fd = pt_client_fd(c);
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return wr_read_copies(fd, counts, 2, "uffd");
}

static int wr_read_overlaps_one_pass(void)
{
	static const uint32_t counts[] = { 256 };
	struct pt_range all = { WR_GPA, WR_SLOT };
	int fd, rc;

	T_REQUIRE(restart_service(""));
	/* BPF mode, every page written (the reply's bitmap is built for each). */
	fd = raw_connect();
	CHECK(fd >= 0 && register_self(fd, 1, WR_GPA, WR_SLOT) == 0);
	SEND_EXPECT_ACK(fd, pt_build_report(tx, sizeof(tx), PT_MSG_WRITTEN, 2, &all, 1), 2, NULL);
	CHECK(wr_read_copies(fd, counts, 1, "bpf") == 0);
	close(fd);
	rc = in_child(wr_read_uffd_child, NULL);
	return rc == T_SKIP ? t_skip("no async userfaultfd write-protect") : rc;
}

/* --- the journal: one line per bad frame ----------------------------------------------- */

/* Lines of the service's log that hold @what. */
static int log_lines(const char *what)
{
	return svc_log_count(what);
}

/*
 * A frame that breaks a payload rule is skipped with an ERROR, and the service logged each
 * one: a peer sending 16-byte frames with a reserved flag set made one journal line per 16
 * bytes (65,536 per MiB, each a write to journald from the only event loop, which blocks when
 * journald falls behind). Errors of peers are logged at most ERR_LOG_PER_SEC a second now,
 * and the next line logged says how many were not.
 */
#define FLOOD_FRAMES 8192
#define LOG_PER_SEC  64 /* the service's bound (server.c ERR_LOG_PER_SEC) */

static int bad_frame_flood_logs_bounded(void)
{
	static uint8_t buf[FLOOD_FRAMES * sizeof(struct pt_hdr)];
	const char *what = "bad frame (type 12 len 0)";
	double t0, secs;
	int fd, lines;

	T_REQUIRE(restart_service(""));
	fd = raw_connect();
	CHECK(fd >= 0);
	for (uint32_t i = 0; i < FLOOD_FRAMES; i++) {
		struct pt_hdr h = { PT_PROTO_MAGIC, PT_PROTO_VERSION, PT_MSG_PING, 1, 0, i };

		memcpy(buf + i * sizeof(h), &h, sizeof(h));
	}
	t0 = now_ms();
	CHECK(!raw_send(fd, buf, sizeof(buf)));
	/* Every frame is still answered, in order. */
	for (uint32_t i = 0; i < FLOOD_FRAMES; i++)
		CHECK(expect_error(fd, i, PT_E_BAD_FIELD, __LINE__) == 0);
	secs = (now_ms() - t0) / 1000;
	lines = log_lines(what);
	fprintf(stderr, "  %d bad frames in %.2f s: %d log lines\n", FLOOD_FRAMES, secs, lines);
	CHECKF(lines >= 1 && lines <= LOG_PER_SEC * ((int)secs + 2),
	       "%d log lines for %d bad frames in %.2f s", lines, FLOOD_FRAMES, secs);
	/* A second later, the next error is logged with the count of those that were not. */
	usleep(1100 * 1000);
	CHECK(!raw_send(fd, buf, sizeof(struct pt_hdr)));
	CHECK(expect_error(fd, 0, PT_E_BAD_FIELD, __LINE__) == 0);
	for (int ms = 0; ms < 5000 && !log_lines("not logged"); ms += 50)
		usleep(50 * 1000);
	CHECKF(log_lines("not logged") == 1, "%d lines say how many were not logged",
	       log_lines("not logged"));
	close(fd);
	return 0;
}

/* --- reply-timeout: a reader that reads a little ----------------------------------------- */

/*
 * reply-timeout closes a connection that leaves its replies unread. It counted any progress of
 * a send as reading: a peer reading 64 KiB every 250 ms kept 4 MiB of replies queued (and the
 * frozen bitmap of a long reply) for as long as it liked, 16 such peers of one uid the whole
 * max-output-mb, which slows every other device to a request per send. Now the replies queued
 * at a moment must all be read within reply-timeout of it.
 */
#define SLOW_PINGS 120000 /* 1.9 MB of PINGs, 4.8 MB of ACKs: the queue reaches its limit */

static int slow_reader_closed(void)
{
	static uint8_t pings[SLOW_PINGS * sizeof(struct pt_hdr)];
	static uint8_t sink[65536];
	double t0;
	size_t n = 0;
	int fd, good;
	bool open = true;

	T_REQUIRE(restart_service("reply-timeout = 2\n"));
	fd = raw_connect();
	good = raw_connect();
	CHECK(fd >= 0 && good >= 0);
	for (uint32_t i = 0; i < SLOW_PINGS; i++)
		n += pt_build_empty(pings + n, sizeof(pings) - n, PT_MSG_PING, i);
	/* The service stops reading when the queue is full: the rest waits in the socket. */
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	t0 = now_ms();
	for (size_t off = 0; off < n && now_ms() - t0 < 1000;) {
		ssize_t k = send(fd, pings + off, n - off, MSG_NOSIGNAL);

		if (k > 0)
			off += (size_t)k;
		else
			usleep(10 * 1000);
	}
	/* 256 KB/s: a 4 MiB queue takes 16 s to read; reply-timeout is 2 s. */
	t0 = now_ms();
	while (open && now_ms() - t0 < 15000 * t_time_scale()) {
		ssize_t k = recv(fd, sink, sizeof(sink), MSG_DONTWAIT);

		open = k != 0 && !(k < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
		usleep(250 * 1000);
	}
	fprintf(stderr, "  a reader of 256 KB/s: %s after %.1f s (reply-timeout 2 s)\n",
		open ? "still open" : "closed", (now_ms() - t0) / 1000);
	CHECKF(!open, "a peer reading 256 KB/s of a full queue stayed open for %.0f s",
	       (now_ms() - t0) / 1000);
	CHECK(log_lines("replies not read for too long") == 1);
	/* Another device was served meanwhile and still is. */
	CHECK(raw_ping(good, 1) == 0);
	close(fd);
	close(good);
	return 0;
}

/* --- REGISTER2 probes ------------------------------------------------------------------- */

/*
 * REGISTER2 in the userfaultfd mode probes the VMM's memory (a PAGEMAP_SCAN over every slot)
 * before anything else: a connection that holds a VM had it done for each REGISTER2 and only
 * then got PT_E_STATE, and nothing counted the work against its turn (REGISTER counts the
 * VM's pages only when it succeeds). 64 such frames over 2 GiB of populated guest memory held
 * the loop for 50 ms of CPU in one turn, 64 GiB for over a second. Now the second REGISTER is
 * refused before the probe, and a probe counts its pages whatever the answer.
 */
#define PROBE_MEM    (2ull << 30)
#define PROBE_FRAMES 64

/* Sends REGISTER2 (userfaultfd mode, @slot) with @fds attached, in one sendmsg. */
static int send_register2(int fd, uint32_t seq, const struct pt_reg_slot2 *slot, const int *fds)
{
	struct pt_register2 r = {
		.vmm_pid = (uint32_t)getpid(), .mode = PT_TRACK_UFFD, .nslots = 1, .nfds = 2
	};
	char ctl[CMSG_SPACE(2 * sizeof(int))] __attribute__((aligned(8))) = { 0 };
	struct iovec iov = { tx, pt_build_register2(tx, sizeof(tx), seq, &r, slot) };
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof(ctl)
	};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);

	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(2 * sizeof(int));
	memcpy(CMSG_DATA(cm), fds, 2 * sizeof(int));
	return sendmsg(fd, &mh, MSG_NOSIGNAL) == (ssize_t)iov.iov_len ? 0 : -1;
}

struct probe_req {
	int fd;
	const struct pt_reg_slot2 *slot;
	int fds[2];
	int errors;
};

static int probe_flood(void *arg)
{
	struct probe_req *p = arg;
	struct pt_hdr h;
	struct pt_msg m;

	for (uint32_t i = 0; i < PROBE_FRAMES; i++)
		CHECK(send_register2(p->fd, 100 + i, p->slot, p->fds) == 0);
	for (uint32_t i = 0; i < PROBE_FRAMES; i++) {
		CHECK(raw_recv(p->fd, &h, &m) == 1 && h.seq == 100 + i);
		p->errors += m.type == PT_MSG_ERROR && m.error->code == PT_E_STATE;
	}
	return 0;
}

static int probe_child(void *arg)
{
	struct pt_reg_slot2 slot = { .gpa = WR_GPA, .size = PROBE_MEM, .id = 1 };
	struct pt_client *c = connect_svc();
	struct timeval tv = { 60, 0 };
	char *mem =
		mmap(NULL, PROBE_MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct probe_req p = { .slot = &slot };
	struct pt_ack ack;
	long long cpu;
	int uffd = -1, rc;

	(void)arg;
	CHECK(c && mem != MAP_FAILED);
	madvise(mem, PROBE_MEM, MADV_NOHUGEPAGE);
	memset(mem, 1, PROBE_MEM);
	slot.hva = (uintptr_t)mem;
	rc = pt_client_register_uffd(c, &slot, 1, -1, &uffd, NULL);
	if (rc == -EOPNOTSUPP || rc == -ENOSYS)
		return t_skip("no async userfaultfd write-protect: %s", strerror(-rc));
	CHECKF(!rc, "register: %s", strerror(-rc));
	p.fd = pt_client_fd(c);
	fcntl(p.fd, F_SETFL, fcntl(p.fd, F_GETFL) & ~O_NONBLOCK);
	setsockopt(p.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	p.fds[0] = uffd;
	p.fds[1] = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	CHECK(p.fds[1] >= 0);
	cpu = turn_cpu_of(probe_flood, &p, &rc);
	fprintf(stderr,
		"  %d REGISTER2 of 2 GiB populated on a registered connection: %d PT_E_STATE, "
		"one turn %lld us of CPU\n",
		PROBE_FRAMES, p.errors, cpu);
	CHECK(rc == 0);
	CHECK(p.errors == PROBE_FRAMES);
	CHECKF(cpu < WR_CPU_MAX * (long long)t_time_scale(),
	       "%d refused REGISTER2 held the loop for %lld us of CPU", PROBE_FRAMES, cpu);
	/* The connection still holds its VM (PING's value32). */
	SEND_EXPECT_ACK(p.fd, pt_build_empty(tx, sizeof(tx), PT_MSG_PING, 7), 7, &ack);
	CHECK(ack.value32 == 1);
	return 0;
}

static int register2_probe_flood(void)
{
	T_REQUIRE(restart_service(""));
	return in_child(probe_child, NULL);
}

T_MAIN(T_CASE(wr_read_overlaps_one_pass), T_CASE(bad_frame_flood_logs_bounded),
       T_CASE(slow_reader_closed), T_CASE(register2_probe_flood))
