// SPDX-License-Identifier: GPL-2.0
/*
 * io_uring server core (user/server.c), tested over a real socket: each case forks a child
 * that runs the server with a small handler, and talks to it from the parent.
 *
 * Test handler:
 *   PING    -> ACK(seq), value32 = peer pid (SO_PEERCRED), pages = connection id
 *   HINT    -> ACK(seq), value32 = count, pages = checksum of the ranges (proves the payload
 *              arrived intact, also when reassembled across receive buffers)
 *   QUERY   -> a BIG_REPLY-byte VERDICT-typed frame (exercises backpressure)
 *   WR_CAPS -> a WR_CAPS_REPLY-typed frame whose payload is struct test_stats
 *   DONE    -> ACK(seq), then pt_conn_close()
 */
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>

#include "t.h"
#include "sock.h"
#include "shared/log.h"
#include "lib/proto.h"
#include "daemon/server.h"

#define BIG_REPLY   (128u << 10)
#define MAX_OUTQ    (256u << 10)
#define TICK_MS	    20
#define RCV_TIMEOUT 10

struct test_stats {
	struct pt_server_stats st;
	uint64_t rss_kb;
	uint64_t ticks;
	uint64_t closes;
};

/* --- the server child -------------------------------------------------------------------- */

struct handler {
	struct pt_server *s;
	uint64_t ticks;
	uint64_t closes;
	uint64_t heavy; /* HINT frames with HEAVY_CMD handled */
	unsigned char *big;
};

/* A HINT with this command ID costs the whole turn of every connection together. */
#define HEAVY_CMD 99
/* ... and one with this ID holds the loop for 300 ms, so that input piles up meanwhile. */
#define SLOW_CMD 98

static void busy_ms(long ms)
{
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	do
		clock_gettime(CLOCK_MONOTONIC, &t);
	while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < ms);
}

static uint64_t rss_kb(void)
{
	unsigned long size = 0, res = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	if (!f)
		return 0;
	if (fscanf(f, "%lu %lu", &size, &res) != 2)
		res = 0;
	fclose(f);
	return (uint64_t)res * (uint64_t)sysconf(_SC_PAGESIZE) / 1024;
}

static uint64_t range_sum(const struct pt_range *r, uint32_t n)
{
	uint64_t sum = 0;

	for (uint32_t i = 0; i < n; i++)
		sum = sum * 31 + r[i].gpa + 7 * r[i].len;
	return sum;
}

static void h_frame(void *ctx, struct pt_conn *c, const struct pt_hdr *h, const void *payload)
{
	struct handler *hd = ctx;
	unsigned char buf[256];
	size_t n;

	switch (h->type) {
	case PT_MSG_PING:
		n = pt_build_ack(buf, sizeof(buf), h->seq, (uint32_t)pt_conn_peer(c)->pid,
				 pt_conn_id(c), hd->heavy);
		pt_conn_send(c, buf, n);
		break;
	case PT_MSG_HINT: {
		const struct pt_hint *hint = payload;
		struct pt_range *r = malloc((size_t)hint->count * sizeof(*r) + 1);

		/* copy: the payload may be unaligned in the receive buffer */
		memcpy(r, (const char *)payload + sizeof(*hint), (size_t)hint->count * sizeof(*r));
		if (hint->cmd_id == HEAVY_CMD) {
			struct timespec t0, t;

			/* 2 ms of work: the flood lasts long enough for a PING to arrive in it */
			clock_gettime(CLOCK_MONOTONIC, &t0);
			do
				clock_gettime(CLOCK_MONOTONIC, &t);
			while ((t.tv_sec - t0.tv_sec) * 1000000000L + t.tv_nsec - t0.tv_nsec <
			       2000000);
			hd->heavy++;
			pt_conn_charge(c, UINT64_C(1) << 40);
		}
		if (hint->cmd_id == SLOW_CMD)
			busy_ms(300);
		n = pt_build_ack(buf, sizeof(buf), h->seq, hint->count, range_sum(r, hint->count),
				 0);
		free(r);
		pt_conn_send(c, buf, n);
		break;
	}
	case PT_MSG_QUERY:
		pt_encode_hdr(hd->big, sizeof(struct pt_hdr) + BIG_REPLY, PT_MSG_VERDICT, 0,
			      BIG_REPLY, h->seq);
		pt_conn_send(c, hd->big, sizeof(struct pt_hdr) + BIG_REPLY);
		break;
	case PT_MSG_WR_CAPS: {
		struct test_stats ts;

		pt_server_get_stats(hd->s, &ts.st);
		ts.rss_kb = rss_kb();
		ts.ticks = hd->ticks;
		ts.closes = hd->closes;
		pt_encode_hdr(buf, sizeof(buf), PT_MSG_WR_CAPS_REPLY, 0, sizeof(ts), h->seq);
		memcpy(buf + sizeof(struct pt_hdr), &ts, sizeof(ts));
		pt_conn_send(c, buf, sizeof(struct pt_hdr) + sizeof(ts));
		break;
	}
	case PT_MSG_DONE:
		n = pt_build_ack(buf, sizeof(buf), h->seq, 0, 0, 0);
		pt_conn_send(c, buf, n);
		pt_conn_close(c);
		break;
	default:
		pt_conn_send_error(c, h->seq, PT_E_BAD_TYPE, "test handler: type %u", h->type);
	}
}

static void h_close(void *ctx, struct pt_conn *c)
{
	((struct handler *)ctx)->closes++;
}

static void h_tick(void *ctx)
{
	((struct handler *)ctx)->ticks++;
}

static bool h_signal(void *ctx, int signo)
{
	return signo == SIGTERM || signo == SIGINT;
}

/* Set before srv_start() to run the child with other limits; 0 = the server's defaults. */
static unsigned g_nbufs, g_buf_size, g_max_conns;
static int g_listen_fd = -1;

static int server_main(const char *path)
{
	static const struct pt_server_ops ops = {
		.on_frame = h_frame,
		.on_close = h_close,
		.on_tick = h_tick,
		.on_signal = h_signal,
	};
	struct pt_server_cfg cfg = {
		.path = path,
		.listen_fd = g_listen_fd,
		.tick_ms = TICK_MS,
		.max_outq = MAX_OUTQ,
		.nbufs = g_nbufs,
		.buf_size = g_buf_size,
		.max_conns = g_max_conns,
	};
	struct handler hd = { 0 };
	int rc;

	hd.big = calloc(1, sizeof(struct pt_hdr) + BIG_REPLY);
	if (!hd.big)
		return 1;
	memset(hd.big + sizeof(struct pt_hdr), 0x5a, BIG_REPLY);
	rc = pt_server_create(&hd.s, &cfg, &ops, &hd);
	if (rc) {
		fprintf(stderr, "server child: create: %s\n", strerror(-rc));
		return 2;
	}
	rc = pt_server_run(hd.s);
	pt_server_destroy(hd.s);
	free(hd.big);
	return rc ? 3 : 0;
}

/* --- parent side helpers ------------------------------------------------------------------- */

struct srv {
	pid_t pid;
	char dir[64];
	char path[108];
};

static int srv_start(struct srv *sv)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	strcpy(sv->dir, "/tmp/pt-server-test.XXXXXX");
	if (!mkdtemp(sv->dir))
		return -1;
	snprintf(sv->path, sizeof(sv->path), "%s/sock", sv->dir);
	fflush(NULL);
	sv->pid = fork();
	if (sv->pid < 0)
		return -1;
	if (sv->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (!getenv("PT_TEST_VERBOSE"))
			pt_log_level = LOG_ERR;
		_exit(server_main(sv->path));
	}
	strcpy(sa.sun_path, sv->path);
	for (int i = 0; i < 500; i++) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		int rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));

		close(fd);
		if (rc == 0)
			return 0;
		if (waitpid(sv->pid, NULL, WNOHANG) == sv->pid) {
			sv->pid = 0;
			fprintf(stderr, "  server child exited early\n");
			return -1;
		}
		usleep(10000);
	}
	fprintf(stderr, "  server did not come up\n");
	return -1;
}

/* Waits up to @ms for @pid; returns its wait status, or -1 (after SIGKILL) on timeout. */
static int wait_pid(pid_t pid, int ms)
{
	int status;

	for (int i = 0; i < ms; i += 5) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid)
			return status;
		if (r < 0)
			return -1;
		usleep(5000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	return -1;
}

/* SIGTERM, then checks the server exited 0 and removed its socket. */
static int srv_stop(struct srv *sv)
{
	int status, rc = 0;

	if (sv->pid > 0) {
		kill(sv->pid, SIGTERM);
		status = wait_pid(sv->pid, 5000);
		if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status)) {
			fprintf(stderr, "  server child: bad exit (status %#x)\n", status);
			rc = -1;
		}
		sv->pid = 0;
	}
	if (access(sv->path, F_OK) == 0) {
		fprintf(stderr, "  socket file %s left behind\n", sv->path);
		unlink(sv->path);
		rc = -1;
	}
	rmdir(sv->dir);
	return rc;
}

static int cli_connect(const struct srv *sv)
{
	struct timeval tv = { .tv_sec = RCV_TIMEOUT };
	int fd = raw_connect_to(sv->path, RCV_TIMEOUT);

	if (fd >= 0)
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return fd;
}

/* Reads one frame; the payload (up to @cap bytes, the rest discarded) goes to @payload. */
static int read_frame(int fd, struct pt_hdr *h, void *payload, size_t cap)
{
	char junk[4096];
	size_t left;

	if (read_full(fd, h, sizeof(*h)) != sizeof(*h))
		return -1;
	if (h->magic != PT_PROTO_MAGIC)
		return -1;
	left = h->len;
	if (payload && cap) {
		size_t n = left < cap ? left : cap;

		if (read_full(fd, payload, n) != (ssize_t)n)
			return -1;
		left -= n;
	}
	while (left) {
		size_t n = left < sizeof(junk) ? left : sizeof(junk);

		if (read_full(fd, junk, n) != (ssize_t)n)
			return -1;
		left -= n;
	}
	return 1;
}

/* PING -> ACK round trip; returns 0 if the ACK echoes @seq. */
static int ping(int fd, uint32_t seq, struct pt_ack *ack_out)
{
	unsigned char buf[64];
	struct pt_hdr h;
	struct pt_ack ack;
	size_t n = pt_build_empty(buf, sizeof(buf), PT_MSG_PING, seq);

	if (raw_send(fd, buf, n))
		return -1;
	if (read_frame(fd, &h, &ack, sizeof(ack)) != 1)
		return -1;
	if (h.type != PT_MSG_ACK || h.seq != seq || h.len != sizeof(ack))
		return -1;
	if (ack_out)
		*ack_out = ack;
	return 0;
}

static int get_stats(const struct srv *sv, struct test_stats *ts)
{
	unsigned char buf[64];
	struct pt_hdr h;
	int fd = cli_connect(sv), rc = -1;
	size_t n = pt_build_empty(buf, sizeof(buf), PT_MSG_WR_CAPS, 99);

	if (fd < 0)
		return -1;
	if (!raw_send(fd, buf, n) && read_frame(fd, &h, ts, sizeof(*ts)) == 1 &&
	    h.type == PT_MSG_WR_CAPS_REPLY && h.seq == 99 && h.len == sizeof(*ts))
		rc = 0;
	close(fd);
	return rc;
}

/* Expects EOF (or a reset) next on @fd. */
static bool at_eof(int fd)
{
	char c;
	ssize_t n = recv(fd, &c, 1, 0);

	return n == 0 || (n < 0 && errno == ECONNRESET);
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Each case body runs between srv_start and srv_stop, so a failed CHECK still reaps the
 * server child (and checks it shut down cleanly). */
#define WITH_SERVER(name) WITH_SERVER_CFG(name, 0, 0, 0)
#define WITH_SERVER_CFG(name, nbufs, buf_size, max_conns) \
	static int name##_body(struct srv *sv);           \
	static int name(void)                             \
	{                                                 \
		struct srv sv;                            \
		int rc;                                   \
		g_nbufs = nbufs;                          \
		g_buf_size = buf_size;                    \
		g_max_conns = max_conns;                  \
		rc = srv_start(&sv);                      \
		g_nbufs = g_buf_size = g_max_conns = 0;   \
		if (rc) {                                 \
			if (sv.pid > 0)                   \
				srv_stop(&sv);            \
			return -1;                        \
		}                                         \
		rc = name##_body(&sv);                    \
		if (srv_stop(&sv))                        \
			rc = -1;                          \
		return rc;                                \
	}                                                 \
	static int name##_body(struct srv *sv)

/* --- cases ------------------------------------------------------------------------------------ */

WITH_SERVER(round_trip)
{
	struct pt_ack ack;
	struct stat stb;
	int fd = cli_connect(sv);

	CHECK(fd >= 0);
	CHECK(ping(fd, 7, &ack) == 0);
	CHECK(ping(fd, 0xfffffffe, NULL) == 0);
	CHECK(stat(sv->path, &stb) == 0);
	CHECKF((stb.st_mode & 0777) == 0660, "mode %o", stb.st_mode & 0777);
	CHECK(S_ISSOCK(stb.st_mode));
	close(fd);
	return 0;
}

WITH_SERVER(peercred_pid)
{
	pid_t kid;
	int status;
	struct pt_ack ack;
	int fd = cli_connect(sv);

	CHECK(fd >= 0);
	CHECK(ping(fd, 1, &ack) == 0);
	CHECKF(ack.value32 == (uint32_t)getpid(), "peer pid %u, mine %d", ack.value32, getpid());
	close(fd);
	/* and from another process: the pid is the connecting process's */
	kid = fork();
	CHECK(kid >= 0);
	if (kid == 0) {
		int cfd = cli_connect(sv);

		_exit(cfd < 0 || ping(cfd, 2, &ack) || ack.value32 != (uint32_t)getpid());
	}
	status = wait_pid(kid, 10000);
	CHECKF(status == 0, "child status %#x", status);
	return 0;
}

#define NCLIENTS 64
#define NROUNDS	 300

WITH_SERVER(concurrent_clients)
{
	pid_t kids[NCLIENTS];
	int bad = 0;
	struct test_stats ts;

	for (int i = 0; i < NCLIENTS; i++) {
		kids[i] = fork();
		if (kids[i] == 0) {
			int fd = cli_connect(sv);
			struct pt_ack ack;
			uint32_t last_id = 0;

			if (fd < 0)
				_exit(2);
			for (int r = 0; r < NROUNDS; r++) {
				uint32_t seq = (uint32_t)i << 16 | (uint32_t)r;

				if (ping(fd, seq, &ack))
					_exit(3);
				/* same connection every time */
				if (r && ack.pages != last_id)
					_exit(4);
				last_id = (uint32_t)ack.pages;
			}
			close(fd);
			_exit(0);
		}
		if (kids[i] < 0)
			bad++;
	}
	for (int i = 0; i < NCLIENTS; i++) {
		if (kids[i] <= 0)
			continue;
		int status = wait_pid(kids[i], 30000);

		if (status != 0) {
			fprintf(stderr, "  client %d: status %#x\n", i, status);
			bad++;
		}
	}
	CHECKF(bad == 0, "%d clients failed", bad);
	CHECK(get_stats(sv, &ts) == 0);
	CHECKF(ts.st.frames >= (uint64_t)NCLIENTS * NROUNDS, "frames %llu",
	       (unsigned long long)ts.st.frames);
	CHECKF(ts.st.conns_accepted >= NCLIENTS + 1, "accepted %llu",
	       (unsigned long long)ts.st.conns_accepted);
	return 0;
}

WITH_SERVER(disconnect_mid_frame)
{
	unsigned char buf[4096];
	struct pt_range r[64];
	struct test_stats ts;
	int other = cli_connect(sv), fd;
	size_t n;

	CHECK(other >= 0);
	CHECK(ping(other, 1, NULL) == 0);
	for (int i = 0; i < 64; i++)
		r[i] = (struct pt_range){ .gpa = (uint64_t)i << 12, .len = 4096 };
	n = pt_build_hint(buf, sizeof(buf), 5, 2, r, 64);
	CHECK(n > 100);
	/* half a header */
	fd = cli_connect(sv);
	CHECK(fd >= 0);
	CHECK(raw_send(fd, buf, 8) == 0);
	close(fd);
	/* header and part of the payload */
	fd = cli_connect(sv);
	CHECK(fd >= 0);
	CHECK(raw_send(fd, buf, n / 2) == 0);
	close(fd);
	CHECK(ping(other, 2, NULL) == 0);
	/* the server noticed both closes */
	for (int i = 0; i < 100; i++) {
		CHECK(get_stats(sv, &ts) == 0);
		if (ts.st.conns_open == 2) /* `other` and the stats connection */
			break;
		usleep(10000);
	}
	CHECKF(ts.st.conns_open == 2, "conns_open %llu", (unsigned long long)ts.st.conns_open);
	CHECK(ping(other, 3, NULL) == 0);
	close(other);
	return 0;
}

WITH_SERVER(one_byte_writes)
{
	unsigned char buf[4096];
	struct pt_range r[16];
	struct pt_hdr h;
	struct pt_ack ack;
	int fd = cli_connect(sv);
	size_t n;

	CHECK(fd >= 0);
	n = pt_build_empty(buf, sizeof(buf), PT_MSG_PING, 42);
	for (size_t i = 0; i < n; i++) {
		CHECK(raw_send(fd, buf + i, 1) == 0);
		usleep(500);
	}
	CHECK(read_frame(fd, &h, &ack, sizeof(ack)) == 1);
	CHECK(h.type == PT_MSG_ACK && h.seq == 42);

	for (int i = 0; i < 16; i++)
		r[i] = (struct pt_range){ .gpa = (uint64_t)(i * 3) << 12, .len = 8192 };
	n = pt_build_hint(buf, sizeof(buf), 43, 2, r, 16);
	for (size_t i = 0; i < n; i++) {
		CHECK(raw_send(fd, buf + i, 1) == 0);
		if (i % 7 == 0)
			usleep(200);
	}
	CHECK(read_frame(fd, &h, &ack, sizeof(ack)) == 1);
	CHECK(h.type == PT_MSG_ACK && h.seq == 43);
	CHECK(ack.value32 == 16 && ack.pages == range_sum(r, 16));
	close(fd);
	return 0;
}

#define NFRAMES 2000

WITH_SERVER(many_frames_one_write)
{
	static unsigned char buf[NFRAMES * 16];
	struct pt_hdr h;
	struct pt_ack ack;
	int fd = cli_connect(sv);
	size_t off = 0;

	CHECK(fd >= 0);
	for (uint32_t i = 0; i < NFRAMES; i++)
		off += pt_build_empty(buf + off, sizeof(buf) - off, PT_MSG_PING, 1000 + i);
	CHECK(off == sizeof(buf));
	CHECK(raw_send(fd, buf, off) == 0);
	for (uint32_t i = 0; i < NFRAMES; i++) {
		CHECK(read_frame(fd, &h, &ack, sizeof(ack)) == 1);
		CHECKF(h.type == PT_MSG_ACK && h.seq == 1000 + i, "frame %u: type %u seq %u", i,
		       h.type, h.seq);
	}
	close(fd);
	return 0;
}

#define BIG_N 19200 /* 8 + 16 * 19200 = 307208 payload bytes: spans several 64 KiB buffers */

WITH_SERVER(frame_larger_than_buffer)
{
	size_t cap = 3 * (sizeof(struct pt_hdr) + 8 + BIG_N * sizeof(struct pt_range)) + 64;
	unsigned char *buf = malloc(cap);
	struct pt_range *r = malloc(BIG_N * sizeof(*r));
	struct pt_hdr h;
	struct pt_ack ack;
	int fd = cli_connect(sv);
	size_t off = 0;

	CHECK(fd >= 0 && buf && r);
	for (uint32_t i = 0; i < BIG_N; i++)
		r[i] = (struct pt_range){ .gpa = (uint64_t)i * 3 << 12, .len = 4096 * (i % 5 + 1) };
	/* a ping first, so the big frames do not start at a buffer boundary */
	off += pt_build_empty(buf + off, cap - off, PT_MSG_PING, 1);
	for (uint32_t k = 0; k < 2; k++)
		off += pt_build_hint(buf + off, cap - off, 10 + k, 2, r, BIG_N);
	off += pt_build_empty(buf + off, cap - off, PT_MSG_PING, 2);
	CHECK(raw_send(fd, buf, off) == 0);
	CHECK(read_frame(fd, &h, &ack, sizeof(ack)) == 1 && h.seq == 1);
	for (uint32_t k = 0; k < 2; k++) {
		CHECK(read_frame(fd, &h, &ack, sizeof(ack)) == 1);
		CHECK(h.type == PT_MSG_ACK && h.seq == 10 + k);
		CHECKF(ack.value32 == BIG_N, "count %u", ack.value32);
		CHECK(ack.pages == range_sum(r, BIG_N));
	}
	CHECK(read_frame(fd, &h, &ack, sizeof(ack)) == 1 && h.seq == 2);
	close(fd);
	free(buf);
	free(r);
	return 0;
}

/* Sends one raw header on a fresh connection, expects ERROR(@code, @seq) and then EOF. */
static int expect_fatal(const struct srv *sv, const struct pt_hdr *bad, int code)
{
	struct {
		struct pt_error e;
		char reason[PT_MAX_REASON];
	} err;
	struct pt_hdr h;
	int fd = cli_connect(sv);

	CHECK(fd >= 0);
	CHECK(raw_send(fd, bad, sizeof(*bad)) == 0);
	CHECK(read_frame(fd, &h, &err, sizeof(err)) == 1);
	CHECKF(h.type == PT_MSG_ERROR, "type %u", h.type);
	CHECKF(err.e.code == (uint32_t)code, "code %u, want %d", err.e.code, code);
	CHECKF(h.seq == bad->seq && err.e.bad_seq == bad->seq, "seq %u/%u", h.seq, err.e.bad_seq);
	CHECK(at_eof(fd));
	close(fd);
	return 0;
}

WITH_SERVER(bad_magic)
{
	struct pt_hdr bad = {
		.magic = 0xdeadbeef, .version = PT_PROTO_VERSION, .type = PT_MSG_PING, .seq = 77
	};
	int other = cli_connect(sv);

	CHECK(other >= 0);
	CHECK(ping(other, 1, NULL) == 0);
	CHECK(expect_fatal(sv, &bad, PT_E_BAD_MAGIC) == 0);
	CHECK(ping(other, 2, NULL) == 0);
	close(other);
	return 0;
}

WITH_SERVER(bad_length)
{
	struct pt_hdr big = { .magic = PT_PROTO_MAGIC,
			      .version = PT_PROTO_VERSION,
			      .type = PT_MSG_HINT,
			      .len = PT_MAX_PAYLOAD + 1,
			      .seq = 5 };
	struct pt_hdr ver = {
		.magic = PT_PROTO_MAGIC, .version = 9, .type = PT_MSG_PING, .seq = 6
	};
	unsigned char buf[64];
	struct {
		struct pt_error e;
		char reason[PT_MAX_REASON];
	} err;
	struct pt_hdr h;
	int other = cli_connect(sv);

	CHECK(other >= 0);
	CHECK(expect_fatal(sv, &big, PT_E_BAD_LENGTH) == 0);
	CHECK(expect_fatal(sv, &ver, PT_E_BAD_VERSION) == 0);
	/* A PING with a payload: framing holds, the frame fails pt_hdr_check -> ERROR, and the
	 * connection carries on. */
	CHECK(pt_encode_hdr(buf, sizeof(buf), PT_MSG_PING, 0, 8, 9) == sizeof(struct pt_hdr));
	memset(buf + sizeof(struct pt_hdr), 0, 8);
	CHECK(raw_send(other, buf, sizeof(struct pt_hdr) + 8) == 0);
	CHECK(read_frame(other, &h, &err, sizeof(err)) == 1);
	CHECK(h.type == PT_MSG_ERROR && h.seq == 9 && err.e.code == PT_E_BAD_LENGTH);
	CHECK(ping(other, 10, NULL) == 0);
	close(other);
	return 0;
}

#define NQUERY 16    /* answered with BIG_REPLY bytes each: 2 MiB, over MAX_OUTQ */
#define NPINGS 60000 /* 960 KB of requests behind them: more than the socket holds */
#define FLOOD  (NQUERY + NPINGS)

/* Expects the reply to request @i of the flood. */
static int check_flood_reply(const struct pt_hdr *h, uint32_t i)
{
	if (i < NQUERY)
		CHECKF(h->type == PT_MSG_VERDICT && h->seq == i && h->len == BIG_REPLY,
		       "reply %u: type %u seq %u len %u", i, h->type, h->seq, h->len);
	else
		CHECKF(h->type == PT_MSG_ACK && h->seq == i, "reply %u: type %u seq %u", i, h->type,
		       h->seq);
	return 0;
}

WITH_SERVER(backpressure)
{
	static unsigned char req[NQUERY * 24 + NPINGS * 16];
	struct test_stats ts0, ts;
	size_t off = 0, sent = 0;
	double worst = 0;
	int fd = cli_connect(sv), other = cli_connect(sv);
	uint32_t got = 0;
	struct pt_hdr h;

	CHECK(fd >= 0 && other >= 0);
	CHECK(get_stats(sv, &ts0) == 0);
	for (uint32_t i = 0; i < FLOOD; i++) {
		if (i < NQUERY)
			off += pt_build_query(req + off, sizeof(req) - off, i, 2, 0);
		else
			off += pt_build_empty(req + off, sizeof(req) - off, PT_MSG_PING, i);
	}
	CHECK(off == sizeof(req));
	/* Flood without reading, in slices with pauses, so data keeps arriving while the server
	 * is stalled, until the socket is full: the server must have stopped reading. */
	while (sent < off) {
		size_t n = off - sent < 4096 ? off - sent : 4096;
		ssize_t w = send(fd, req + sent, n, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (w < 0 && errno == EAGAIN)
			break;
		CHECK(w > 0);
		sent += (size_t)w;
		usleep(200);
	}
	CHECKF(sent < off, "the server swallowed all %zu bytes of requests", off);
	usleep(100000);
	/* Another client is served promptly meanwhile. */
	for (int i = 0; i < 50; i++) {
		double t = now_ms();

		CHECK(ping(other, 100 + i, NULL) == 0);
		t = now_ms() - t;
		if (t > worst)
			worst = t;
	}
	CHECKF(worst < 500, "worst ping %.1f ms", worst);
	CHECK(get_stats(sv, &ts) == 0);
	fprintf(stderr, "  sent %zu of %zu bytes; outq %llu, parked %llu, rss %llu kB (was %llu)\n",
		sent, off, (unsigned long long)ts.st.outq_bytes,
		(unsigned long long)ts.st.bufs_parked, (unsigned long long)ts.rss_kb,
		(unsigned long long)ts0.rss_kb);
	CHECKF(ts.st.backpressure_stalls > ts0.st.backpressure_stalls, "stalls %llu",
	       (unsigned long long)ts.st.backpressure_stalls);
	/* bounded: max_outq + one reply */
	CHECKF(ts.st.outq_bytes <= MAX_OUTQ + BIG_REPLY + 16, "outq %llu",
	       (unsigned long long)ts.st.outq_bytes);
	/* The server's promise: stalled peers hold at most nbufs / 8 ring buffers (32 of the
	 * default 256); how many this one got before its recv was cancelled is timing. */
	CHECKF(ts.st.bufs_parked <= 32, "parked %llu", (unsigned long long)ts.st.bufs_parked);
	CHECKF(ts.rss_kb < ts0.rss_kb + 32 * 1024, "rss %llu kB, was %llu kB",
	       (unsigned long long)ts.rss_kb, (unsigned long long)ts0.rss_kb);
	/* Now read, and send the rest as the server takes it: every request is answered, in
	 * order, nothing lost or reordered while parked. */
	while (got < FLOOD) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN | (sent < off ? POLLOUT : 0) };

		CHECK(poll(&pfd, 1, RCV_TIMEOUT * 1000) == 1);
		if (pfd.revents & POLLOUT) {
			ssize_t w = send(fd, req + sent, off - sent, MSG_DONTWAIT | MSG_NOSIGNAL);

			CHECK(w > 0 || errno == EAGAIN);
			if (w > 0)
				sent += (size_t)w;
		}
		if (pfd.revents & POLLIN) {
			CHECK(read_frame(fd, &h, NULL, 0) == 1);
			CHECK(check_flood_reply(&h, got) == 0);
			got++;
		}
	}
	CHECK(ping(fd, FLOOD + 1, NULL) == 0);
	CHECK(get_stats(sv, &ts) == 0);
	CHECKF(ts.st.bufs_parked == 0, "parked %llu", (unsigned long long)ts.st.bufs_parked);
	CHECK(ts.st.outq_bytes < 4096);
	close(fd);
	close(other);
	return 0;
}

WITH_SERVER(conn_close_flushes)
{
	unsigned char buf[64];
	struct pt_hdr h;
	struct pt_ack ack;
	int fd = cli_connect(sv);
	size_t n;

	CHECK(fd >= 0);
	n = pt_build_empty(buf, sizeof(buf), PT_MSG_PING, 1);
	n += pt_build_cmd(buf + n, sizeof(buf) - n, PT_MSG_DONE, 2, 5);
	n += pt_build_empty(buf + n, sizeof(buf) - n, PT_MSG_PING, 3); /* after close: dropped */
	CHECK(raw_send(fd, buf, n) == 0);
	CHECK(read_frame(fd, &h, &ack, sizeof(ack)) == 1 && h.seq == 1);
	CHECK(read_frame(fd, &h, &ack, sizeof(ack)) == 1 && h.seq == 2);
	CHECK(at_eof(fd));
	close(fd);
	return 0;
}

WITH_SERVER(tick_and_close_callbacks)
{
	struct test_stats ts0, ts;
	int fd = cli_connect(sv);

	CHECK(fd >= 0);
	CHECK(get_stats(sv, &ts0) == 0);
	usleep(10 * TICK_MS * 1000);
	close(fd);
	usleep(50000);
	CHECK(get_stats(sv, &ts) == 0);
	CHECKF(ts.ticks >= ts0.ticks + 5, "ticks %llu -> %llu", (unsigned long long)ts0.ticks,
	       (unsigned long long)ts.ticks);
	/* the first stats connection and fd */
	CHECKF(ts.closes >= ts0.closes + 2, "closes %llu -> %llu", (unsigned long long)ts0.closes,
	       (unsigned long long)ts.closes);
	return 0;
}

/*
 * Tiny receive buffers (4 x 4 KiB) shared by many busy clients: recvs run out of buffers
 * (-ENOBUFS) and must be re-armed; frames span many buffers; nothing is lost.
 */
#define SMALL_CLIENTS 16

WITH_SERVER_CFG(small_buffers_enobufs, 4, 4096, 0)
{
	pid_t kids[SMALL_CLIENTS];
	struct test_stats ts;
	int bad = 0;

	for (int i = 0; i < SMALL_CLIENTS; i++) {
		kids[i] = fork();
		if (kids[i] == 0) {
			static unsigned char buf[64 << 10];
			struct pt_range r[1000];
			struct pt_hdr h;
			struct pt_ack ack;
			int fd = cli_connect(sv);
			size_t off = 0;

			if (fd < 0)
				_exit(2);
			for (int k = 0; k < 1000; k++)
				r[k] = (struct pt_range){ .gpa = (uint64_t)(k + i) << 12,
							  .len = 4096 };
			for (int round = 0; round < 20; round++) {
				off = 0;
				for (uint32_t k = 0; k < 200; k++)
					off += pt_build_empty(buf + off, sizeof(buf) - off,
							      PT_MSG_PING, k);
				off += pt_build_hint(buf + off, sizeof(buf) - off, 200, 2, r, 1000);
				if (raw_send(fd, buf, off))
					_exit(3);
				for (uint32_t k = 0; k <= 200; k++) {
					if (read_frame(fd, &h, &ack, sizeof(ack)) != 1 ||
					    h.seq != k)
						_exit(4);
				}
				if (ack.value32 != 1000 || ack.pages != range_sum(r, 1000))
					_exit(5);
			}
			_exit(0);
		}
	}
	for (int i = 0; i < SMALL_CLIENTS; i++) {
		int status = kids[i] > 0 ? wait_pid(kids[i], 60000) : -1;

		if (status != 0) {
			fprintf(stderr, "  client %d: status %#x\n", i, status);
			bad++;
		}
	}
	CHECKF(bad == 0, "%d clients failed", bad);
	CHECK(get_stats(sv, &ts) == 0);
	fprintf(stderr, "  enobufs %llu, frames %llu\n", (unsigned long long)ts.st.enobufs,
		(unsigned long long)ts.st.frames);
	CHECK(ts.st.frames >= SMALL_CLIENTS * 20 * 201);
	CHECK(ts.st.bufs_parked == 0);
	return 0;
}

/*
 * Stalled connections must not starve the others of receive buffers: with only 4 buffers,
 * 6 peers that flood requests and never read their replies are all stalled at once, and a
 * well-behaved client is still served.
 */
#define NSTALLED 6

WITH_SERVER_CFG(stalled_peers_do_not_starve_ring, 4, 4096, 0)
{
	static unsigned char req[NQUERY * 24 + 4000 * 16];
	int fds[NSTALLED], other;
	struct test_stats ts;
	size_t off = 0;
	double t;

	for (uint32_t i = 0; i < NQUERY + 4000; i++) {
		if (i < NQUERY)
			off += pt_build_query(req + off, sizeof(req) - off, i, 2, 0);
		else
			off += pt_build_empty(req + off, sizeof(req) - off, PT_MSG_PING, i);
	}
	for (int k = 0; k < NSTALLED; k++) {
		fds[k] = cli_connect(sv);
		CHECK(fds[k] >= 0);
		/* as much as the socket takes */
		for (size_t sent = 0; sent < off;) {
			ssize_t w =
				send(fds[k], req + sent, off - sent, MSG_DONTWAIT | MSG_NOSIGNAL);

			if (w <= 0)
				break;
			sent += (size_t)w;
		}
	}
	usleep(100000);
	CHECK(get_stats(sv, &ts) == 0);
	fprintf(stderr, "  stalls %llu, ring buffers parked %llu, parked bytes %llu\n",
		(unsigned long long)ts.st.backpressure_stalls,
		(unsigned long long)ts.st.bufs_parked, (unsigned long long)ts.st.parked_bytes);
	CHECK(ts.st.backpressure_stalls >= NSTALLED);
	CHECK(ts.st.bufs_parked < 4);
	other = cli_connect(sv);
	CHECK(other >= 0);
	t = now_ms();
	for (int i = 0; i < 20; i++)
		CHECK(ping(other, (uint32_t)i, NULL) == 0);
	t = now_ms() - t;
	CHECKF(t < 1000, "20 pings took %.0f ms", t);
	for (int k = 0; k < NSTALLED; k++)
		close(fds[k]);
	close(other);
	return 0;
}

/* Over max_conns: the extra connection is closed at once, the others keep working, and a
 * slot freed by a close is reused (with a new generation) for the next client. */
WITH_SERVER_CFG(max_conns_and_slot_reuse, 0, 0, 3)
{
	int a, b, c, d;
	struct pt_ack ack;
	uint32_t id_c;

	usleep(50000); /* let the server see srv_start's probe connection go */
	a = cli_connect(sv);
	b = cli_connect(sv);
	c = cli_connect(sv);
	CHECK(a >= 0 && b >= 0 && c >= 0);
	CHECK(ping(a, 1, NULL) == 0 && ping(b, 1, NULL) == 0 && ping(c, 1, &ack) == 0);
	id_c = (uint32_t)ack.pages;
	d = cli_connect(sv);
	CHECK(d >= 0);
	CHECK(ping(d, 1, NULL) != 0); /* refused: closed without an answer */
	close(d);
	CHECK(ping(a, 2, NULL) == 0);
	/* free c's slot, with a reply of c still to be sent being cut off */
	close(c);
	usleep(50000);
	for (int round = 0; round < 20; round++) {
		c = cli_connect(sv);
		CHECK(c >= 0);
		CHECK(ping(c, 3, &ack) == 0);
		CHECKF(ack.pages > id_c, "conn id %llu after %u", (unsigned long long)ack.pages,
		       id_c);
		id_c = (uint32_t)ack.pages;
		close(c);
		usleep(20000);
	}
	CHECK(ping(b, 2, NULL) == 0);
	close(a);
	close(b);
	return 0;
}

/* SIGHUP does not stop the server (the handler says so); it keeps serving. */
WITH_SERVER(sighup_ignored)
{
	int fd = cli_connect(sv);

	CHECK(fd >= 0);
	CHECK(kill(sv->pid, SIGHUP) == 0);
	usleep(50000);
	CHECK(waitpid(sv->pid, NULL, WNOHANG) == 0);
	CHECK(ping(fd, 1, NULL) == 0);
	close(fd);
	return 0;
}

/* SIGTERM with clients connected, one of them stalled: run returns, exit 0, socket gone. */
static int sigterm_shutdown(void)
{
	struct srv sv;
	unsigned char req[24 * 100];
	size_t off = 0;
	int fd, idle, status;

	CHECK(srv_start(&sv) == 0);
	fd = cli_connect(&sv);
	idle = cli_connect(&sv);
	if (fd < 0 || idle < 0 || ping(fd, 1, NULL)) {
		srv_stop(&sv);
		return -1;
	}
	for (uint32_t i = 0; i < 100; i++)
		off += pt_build_query(req + off, sizeof(req) - off, i, 2, 0);
	raw_send(fd, req, off);
	usleep(50000);
	kill(sv.pid, SIGTERM);
	status = wait_pid(sv.pid, 5000);
	sv.pid = 0;
	CHECKF(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %#x", status);
	CHECK(access(sv.path, F_OK) != 0 && errno == ENOENT);
	/* the clients see the connection go away */
	{
		char junk[65536];
		ssize_t n;

		while ((n = recv(fd, junk, sizeof(junk), 0)) > 0)
			;
		CHECK(n == 0 || errno == ECONNRESET);
		CHECK(at_eof(idle));
	}
	close(fd);
	close(idle);
	rmdir(sv.dir);
	return 0;
}

/* systemd socket activation: an inherited listening fd is used, and the socket file (not
 * the server's) is left alone at exit. */
static int listen_fd_activation(void)
{
	struct srv sv = { 0 };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int lfd, fd, status, rc = 0;

	strcpy(sv.dir, "/tmp/pt-server-test.XXXXXX");
	CHECK(mkdtemp(sv.dir));
	snprintf(sv.path, sizeof(sv.path), "%s/activated", sv.dir);
	strcpy(sa.sun_path, sv.path);
	lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(lfd >= 0 && bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	      listen(lfd, 8) == 0);
	fflush(NULL);
	sv.pid = fork();
	if (sv.pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		pt_log_level = LOG_ERR;
		g_listen_fd = lfd;
		_exit(server_main("/nonexistent/ignored"));
	}
	close(lfd);
	CHECK(sv.pid > 0);
	fd = cli_connect(&sv);
	if (fd < 0 || ping(fd, 1, NULL) || ping(fd, 2, NULL))
		rc = -1;
	if (fd >= 0)
		close(fd);
	kill(sv.pid, SIGTERM);
	status = wait_pid(sv.pid, 5000);
	if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status)) {
		fprintf(stderr, "  server: status %#x\n", status);
		rc = -1;
	}
	if (access(sv.path, F_OK)) {
		fprintf(stderr, "  the server removed a socket file it did not create\n");
		rc = -1;
	}
	unlink(sv.path);
	rmdir(sv.dir);
	return rc;
}

/* A socket file nobody listens on is replaced; the mode is 0660 even with umask 0. */
static int stale_socket_replaced(void)
{
	struct srv sv;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat stb;
	int fd, rc = 0;
	mode_t old;

	strcpy(sv.dir, "/tmp/pt-server-test.XXXXXX");
	CHECK(mkdtemp(sv.dir));
	snprintf(sv.path, sizeof(sv.path), "%s/sock", sv.dir);
	strcpy(sa.sun_path, sv.path);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	close(fd); /* stale file left */
	CHECK(stat(sv.path, &stb) == 0);

	/* fork a server on the stale path, with umask 0 */
	old = umask(0);
	fflush(NULL);
	sv.pid = fork();
	if (sv.pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		pt_log_level = LOG_ERR;
		_exit(server_main(sv.path));
	}
	umask(old);
	CHECK(sv.pid > 0);
	for (int i = 0; i < 300; i++) {
		fd = cli_connect(&sv);
		if (fd >= 0)
			break;
		usleep(10000);
	}
	rc = fd >= 0 && ping(fd, 1, NULL) == 0 ? 0 : -1;
	if (fd >= 0)
		close(fd);
	if (stat(sv.path, &stb) || (stb.st_mode & 0777) != 0660) {
		fprintf(stderr, "  mode %o\n", stb.st_mode & 0777);
		rc = -1;
	}
	/* a second server on a live socket must refuse, not steal it */
	{
		pid_t k = fork();
		int status;

		if (k == 0) {
			pt_log_level = -1;
			_exit(server_main(sv.path));
		}
		status = wait_pid(k, 5000);
		if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 2) {
			fprintf(stderr, "  second server: status %#x\n", status);
			rc = -1;
		}
		fd = cli_connect(&sv);
		if (fd < 0 || ping(fd, 2, NULL))
			rc = -1;
		if (fd >= 0)
			close(fd);
	}
	if (srv_stop(&sv))
		rc = -1;
	return rc;
}

/*
 * Two flooders whose every frame uses the whole turn (and 2 ms) take turns; a PING whose bytes
 * arrive between theirs, in one batch of completions, is answered within a few of their frames,
 * not after all of them. The bug this guards against: starved connections were put at the
 * front of the next turn one by one, so the flooder that starved after the PING went ahead of
 * it, and the two flooders kept it waiting turn after turn until they were done.
 */
#define FLOOD_FRAMES 400

static int send_hints(int fd, uint32_t cmd, uint32_t n)
{
	static unsigned char buf[FLOOD_FRAMES * 64];
	struct pt_range r = { 1ull << 30, 1ull << 30 };
	size_t off = 0;

	for (uint32_t i = 0; i < n; i++)
		off += pt_build_hint(buf + off, sizeof(buf) - off, 10 + i, cmd, &r, 1);
	return raw_send(fd, buf, off);
}

static int ping_not_starved_by_flooders(void)
{
	struct srv sv;
	struct pt_ack ack;
	unsigned char b[64];
	int f1, f2, p, slow, rc = -1;

	if (srv_start(&sv))
		return -1;
	f1 = cli_connect(&sv);
	f2 = cli_connect(&sv);
	p = cli_connect(&sv);
	slow = cli_connect(&sv);
	if (f1 < 0 || f2 < 0 || p < 0 || slow < 0 || ping(p, 1, NULL))
		goto out;
	/* While the loop is held, the two floods and the PING (between them) pile up. */
	if (send_hints(slow, SLOW_CMD, 1))
		goto out;
	usleep(50 * 1000);
	if (send_hints(f1, HEAVY_CMD, FLOOD_FRAMES) ||
	    raw_send(p, b, pt_build_empty(b, sizeof(b), PT_MSG_PING, 2)) ||
	    send_hints(f2, HEAVY_CMD, FLOOD_FRAMES))
		goto out;
	if (read_frame(p, &(struct pt_hdr){ 0 }, &ack, sizeof(ack)) != 1)
		goto out;
	fprintf(stderr, "  PING answered after %llu of %u heavy frames\n",
		(unsigned long long)ack.ignored, 2 * FLOOD_FRAMES);
	if (ack.ignored >= FLOOD_FRAMES) {
		fprintf(stderr, "  a PING waited behind %llu frames that each used a whole turn\n",
			(unsigned long long)ack.ignored);
		goto out;
	}
	rc = 0;
out:
	close(f1);
	close(f2);
	close(p);
	close(slow);
	if (srv_stop(&sv))
		rc = -1;
	return rc;
}

T_MAIN(T_CASE(round_trip), T_CASE(peercred_pid), T_CASE(concurrent_clients),
       T_CASE(disconnect_mid_frame), T_CASE(one_byte_writes), T_CASE(many_frames_one_write),
       T_CASE(frame_larger_than_buffer), T_CASE(bad_magic), T_CASE(bad_length),
       T_CASE(backpressure), T_CASE(conn_close_flushes), T_CASE(tick_and_close_callbacks),
       T_CASE(small_buffers_enobufs), T_CASE(stalled_peers_do_not_starve_ring),
       T_CASE(max_conns_and_slot_reuse), T_CASE(sighup_ignored), T_CASE(sigterm_shutdown),
       T_CASE(listen_fd_activation), T_CASE(stale_socket_replaced),
       T_CASE(ping_not_starved_by_flooders))
