/* SPDX-License-Identifier: GPL-2.0 */
/*
 * For tests that talk to the real service: one private pagetrackd per test binary (its own
 * socket, pin directory and run directory, see user/tools/spawn.h), stopped and unpinned at
 * exit or when the runner's timeout kills the binary; and raw-socket helpers that send exact
 * frames and check exact replies. Include once per binary, after t.h.
 */
#ifndef PT_TESTS_SVC_H
#define PT_TESTS_SVC_H

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <pagetrack/client.h>

#include "lib/proto.h"
#include "tools/spawn.h"
#include "sock.h"

/* --- the one service of this binary ------------------------------------------------------ */

static struct pt_spawned svc;
static const char *const *svc_args; /* extra pagetrackd options, set before need_service() */
static bool svc_must_start;	    /* set: a service that does not start fails the case */
static int svc_state;		    /* 0 not tried, 1 up, -1 failed */
static pid_t svc_owner;

static inline void svc_stop(void)
{
	if (svc_state == 1 && getpid() == svc_owner)
		pt_spawn_stop(&svc, SIGTERM);
	svc_state = 0;
}

/* Killed (tests/run.sh's timeout, or a write to a closed peer): do not leave the service's pins
 * behind. */
static inline void svc_on_signal(int sig)
{
	if (getpid() == svc_owner && svc_state == 1)
		pt_spawn_stop(&svc, SIGKILL);
	signal(sig, SIG_DFL);
	raise(sig);
}

/* Starts the service on first use; T_SKIP (with a reason) where it cannot run. */
static inline int need_service(void)
{
	T_REQUIRE(t_need_bpf());
	if (svc_state == 0) {
		int err = pt_spawn_service(&svc, NULL, "tsvc", svc_args);

		svc_state = err ? -1 : 1;
		if (err)
			fprintf(stderr, "  cannot start pagetrackd: %s\n", strerror(-err));
		svc_owner = getpid();
		atexit(svc_stop);
		signal(SIGTERM, svc_on_signal);
		signal(SIGINT, svc_on_signal);
		signal(SIGPIPE, svc_on_signal); /* a write to a closed peer */
	}
	if (svc_state < 0)
		return svc_must_start ? -1 : t_skip("pagetrackd did not start");
	if (kill(svc.pid, 0))
		return -1;
	return 0;
}

/*
 * Stops this binary's service and starts one (tag @tag; @bin NULL for the default binary)
 * whose configuration file holds "canary = no" and @conf. T_SKIP if it does not start.
 */
static inline int svc_restart(const char *tag, const char *bin, const char *conf)
{
	char path[] = "/tmp/pagetrack-conf-XXXXXX";
	const char *args[] = { "-c", path, NULL };
	FILE *f;
	int fd, err;

	T_REQUIRE(t_need_bpf());
	svc_stop();
	fd = mkstemp(path);
	if (fd < 0)
		return -1;
	f = fdopen(fd, "w");
	fprintf(f, "canary = no\n%s", conf);
	fclose(f);
	err = pt_spawn_service(&svc, bin, tag, args);
	unlink(path);
	if (err) {
		fprintf(stderr, "  cannot start pagetrackd: %s\n", strerror(-err));
		svc_state = -1;
		return t_skip("pagetrackd did not start");
	}
	svc_state = 1;
	svc_owner = getpid();
	atexit(svc_stop);
	signal(SIGTERM, svc_on_signal);
	signal(SIGINT, svc_on_signal);
	signal(SIGPIPE, svc_on_signal); /* a write to a closed peer */
	return 0;
}

/* Lines of the service's log that hold `what`, or -1. */
static inline int svc_log_count(const char *what)
{
	char line[1024];
	int n = 0;
	FILE *f = fopen(svc.log, "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		n += !!strstr(line, what);
	fclose(f);
	return n;
}

/* Lines of the service's log that hold `what` and name process `pid` ("(pid N)"). */
static inline int svc_log_lines(pid_t pid, const char *what)
{
	char line[512], who[32];
	FILE *f = fopen(svc.log, "r");
	int n = 0;

	snprintf(who, sizeof(who), "(pid %d)", (int)pid);
	while (f && fgets(line, sizeof(line), f))
		n += strstr(line, who) && strstr(line, what);
	if (f)
		fclose(f);
	return f ? n : -1;
}

static inline struct pt_client *connect_svc(void)
{
	struct pt_client *c = pt_client_connect(svc.socket);

	if (c)
		pt_client_set_timeout(c, 20000);
	return c;
}

/* The service's status.json, or "" (it is rewritten every tick). */
static inline const char *status_json(char *buf, size_t cap)
{
	char path[256];
	FILE *f;
	size_t n = 0;

	snprintf(path, sizeof(path), "%s/status.json", svc.dir);
	f = fopen(path, "r");
	if (f) {
		n = fread(buf, 1, cap - 1, f);
		fclose(f);
	}
	buf[n] = 0;
	return buf;
}

/* A numeric field of status.json ("errors", "bad_frames", ...), or -1. */
static inline long long status_num(const char *key)
{
	static char buf[65536];
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\": ", key);
	p = strstr(status_json(buf, sizeof(buf)), pat);
	return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

static inline bool ring_tracked(void)
{
	static char buf[65536];

	return strstr(status_json(buf, sizeof(buf)), "\"dirty-ring\": \"tracked\"") != NULL;
}

static inline bool bitmap_tracked(void)
{
	static char buf[65536];

	return strstr(status_json(buf, sizeof(buf)), "\"bitmap\": \"tracked\"") != NULL;
}

/* --- children: one VMM pid each ---------------------------------------------------------- */

typedef int (*child_fn)(void *arg);

static inline pid_t start_child(child_fn fn, void *arg)
{
	pid_t pid;

	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		int rc = fn(arg);

		fflush(NULL);
		_exit(rc == 0 ? 0 : rc == T_SKIP ? T_SKIP : 1);
	}
	return pid;
}

/* Exit status of the child: 0 pass, T_SKIP, anything else fail (-1 if killed). */
static inline int wait_child(pid_t pid)
{
	int st;

	if (pid < 0 || waitpid(pid, &st, 0) != pid)
		return -1;
	if (!WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

/* Runs fn(arg) in a forked child, so that the child's pid is a fresh VMM pid. */
static inline int in_child(child_fn fn, void *arg)
{
	return wait_child(start_child(fn, arg));
}

/* --- raw sockets ------------------------------------------------------------------------- */

/* How long raw_recv() waits for a reply; a binary may define its own before the include. */
#ifndef SVC_RAW_TIMEOUT_S
#define SVC_RAW_TIMEOUT_S 10
#endif

static inline int raw_connect(void)
{
	return raw_connect_to(svc.socket, SVC_RAW_TIMEOUT_S);
}

/* Payload buffer for replies; 8-aligned so pt_frame_parse() can read it in place. */
static uint64_t rx_store[(PT_MAX_PAYLOAD + 64) / 8];

/* One reply frame, parsed: 1, 0 at EOF, -1 on timeout/garbage. */
static inline int raw_recv(int fd, struct pt_hdr *h, struct pt_msg *m)
{
	ssize_t n = read_full(fd, h, sizeof(*h));

	if (n == 0)
		return 0;
	if (n != sizeof(*h) || pt_hdr_check(h) || !pt_type_is_reply(h->type))
		return -1;
	if (h->len && read_full(fd, rx_store, h->len) != (ssize_t)h->len)
		return -1;
	return pt_frame_parse(h, h->len ? rx_store : NULL, m) ? -1 : 1;
}

/* The next frame must be ERROR `code` for request `seq`. 0 or -1 (with a message). */
static inline int expect_error(int fd, uint32_t seq, int code, int line)
{
	struct pt_hdr h;
	struct pt_msg m;
	int rc = raw_recv(fd, &h, &m);

	if (rc != 1 || m.type != PT_MSG_ERROR) {
		fprintf(stderr, "  line %d: seq %u: wanted ERROR %s, got %s\n", line, seq,
			pt_err_str(code),
			rc == 1	  ? pt_msg_type_str(m.type)
			: rc == 0 ? "EOF"
				  : "nothing");
		return -1;
	}
	if (m.error->code != (uint32_t)code || m.error->bad_seq != seq || h.seq != seq) {
		fprintf(stderr,
			"  line %d: wanted ERROR %s for seq %u, got %s bad_seq %u seq %u: %.*s\n",
			line, pt_err_str(code), seq, pt_err_str(m.error->code), m.error->bad_seq,
			h.seq, (int)m.reason_len, m.reason);
		return -1;
	}
	return 0;
}
#define EXPECT_ERROR(fd, seq, code) CHECK(expect_error((fd), (seq), (code), __LINE__) == 0)

/* The next frame must be an ACK for `seq`; copied to *ack if not NULL. */
static inline int expect_ack(int fd, uint32_t seq, struct pt_ack *ack, int line)
{
	struct pt_hdr h;
	struct pt_msg m;
	int rc = raw_recv(fd, &h, &m);

	if (rc != 1 || m.type != PT_MSG_ACK || h.seq != seq) {
		fprintf(stderr, "  line %d: seq %u: wanted ACK, got %s (seq %u)", line, seq,
			rc == 1	  ? pt_msg_type_str(m.type)
			: rc == 0 ? "EOF"
				  : "nothing",
			h.seq);
		if (rc == 1 && m.type == PT_MSG_ERROR)
			fprintf(stderr, ": %s: %.*s", pt_err_str(m.error->code), (int)m.reason_len,
				m.reason);
		fprintf(stderr, "\n");
		return -1;
	}
	if (ack)
		*ack = *m.ack;
	return 0;
}
#define EXPECT_ACK(fd, seq, ack) CHECK(expect_ack((fd), (seq), (ack), __LINE__) == 0)

/* The service closed the connection: EOF (not a timeout, not another frame). */
static inline bool raw_eof(int fd)
{
	uint8_t b;

	return recv(fd, &b, 1, 0) == 0;
}

static uint8_t tx[PT_MAX_FRAME + 64] __attribute__((aligned(8)));

/* Sends the first n bytes of tx (n is a pt_build_*() result: 0 means the build failed). */
static inline int send_tx(int fd, size_t n, uint32_t seq, int line)
{
	if (n && !raw_send(fd, tx, n))
		return 0;
	fprintf(stderr, "  line %d: seq %u: %s\n", line, seq,
		n ? "cannot send the frame" : "the frame did not build");
	return -1;
}

/* REGISTER of this process with one logged slot at @gpa of @size bytes, on a raw socket; the
 * reply must be its ACK. */
static inline int register_self(int fd, uint32_t seq, uint64_t gpa, uint64_t size)
{
	struct pt_reg_slot slot = {
		.gpa = gpa, .size = size, .id = 1, .flags = PT_REG_SLOT_LOGGED
	};
	size_t n = pt_build_register(tx, sizeof(tx), seq, getpid(), PT_DIRTY_RING, &slot, 1);

	if (!n || raw_send(fd, tx, n))
		return -1;
	return expect_ack(fd, seq, NULL, __LINE__);
}

/* Sends the frame in tx; the reply must be ERROR `code` for `seq` (see expect_error()). */
static inline int send_expect_error(int fd, size_t n, uint32_t seq, int code, int line)
{
	return send_tx(fd, n, seq, line) ? -1 : expect_error(fd, seq, code, line);
}
#define SEND_EXPECT_ERROR(fd, n, seq, code) \
	CHECK(send_expect_error((fd), (n), (seq), (code), __LINE__) == 0)

/* Sends the frame in tx; the reply must be an ACK for `seq` (see expect_ack()). */
static inline int send_expect_ack(int fd, size_t n, uint32_t seq, struct pt_ack *ack, int line)
{
	return send_tx(fd, n, seq, line) ? -1 : expect_ack(fd, seq, ack, line);
}
#define SEND_EXPECT_ACK(fd, n, seq, ack) \
	CHECK(send_expect_ack((fd), (n), (seq), (ack), __LINE__) == 0)

static inline int raw_ping(int fd, uint32_t seq)
{
	return send_expect_ack(fd, pt_build_empty(tx, sizeof(tx), PT_MSG_PING, seq), seq, NULL,
			       __LINE__);
}

#endif
