// SPDX-License-Identifier: GPL-2.0
/*
 * The real service (a private pagetrackd started once for this binary, see user/spawn.h)
 * over its real socket: every message type through the client library, many concurrent
 * devices, peers that vanish mid-frame, every malformed-frame class on raw sockets, peer
 * credentials, reconnects, and a real KVM guest whose writes must show in the verdict.
 *
 * The service allows one registration per VMM pid, so every case that registers a VM does it
 * in a forked child (its own pid is the VMM pid) and reports by exit status: in_child().
 * Children leave with _exit(): the atexit() handler that stops the service is the parent's.
 */
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>

#include <pagetrack/client.h>
#include <bpf/bpf.h>

#include "t.h"
#include "guest.h"
#include "lib/proto.h"
#include "writelog.h"
#include "tools/spawn.h"
#include "svc.h"

#define PG 4096ull

/* The slot every explicitly registered test VM has: 64 MiB at 1 GiB, KVM slot 1. */
#define SLOT_GPA  (1ull << 30)
#define SLOT_SIZE (64ull << 20)
static const struct pt_reg_slot slot1 = {
	.gpa = SLOT_GPA, .size = SLOT_SIZE, .id = 1, .flags = PT_REG_SLOT_LOGGED
};

/* Ranges: n single pages, every other page of the test slot, from page `first`. */
static struct pt_range *sparse_pages(size_t first, size_t n)
{
	struct pt_range *r = calloc(n, sizeof(*r));

	for (size_t i = 0; r && i < n; i++)
		r[i] = (struct pt_range){ SLOT_GPA + (first + 2 * i) * PG, PG };
	return r;
}

/* PING on a fresh connection: the service is alive and accepting. */
static int fresh_ping(void)
{
	struct pt_client *c = connect_svc();
	int rc = c ? pt_client_ping(c) : -1;

	pt_client_close(c);
	return rc;
}

/* ========================================================================================= */
/* Every message type through the client library.                                           */

static struct pt_ack last_hint_ack;
static int hint_acks;

static void on_hint_ack(void *arg, uint32_t seq, int err, const struct pt_ack *ack)
{
	hint_acks++;
	if (ack)
		last_hint_ack = *ack;
}

static int round_trip_child(void *arg)
{
	const size_t nh = PT_CLIENT_BATCH; /* one full frame: 64 KiB of ranges */
	struct pt_range *r = sparse_pages(0, nh);
	struct pt_range rep[PT_MAX_REPORT], infl[4], defl[1], wr[2];
	struct pt_client_result res;
	struct pt_client_stats st;
	struct pt_client *c = connect_svc();
	struct pt_wr_caps caps;
	uint32_t handle = ~0u;
	uint64_t pages = 0;
	int err;

	CHECK(c && r);
	CHECK(pt_client_ping(c) == 0);

	/* REGISTER with an explicit slot: handle and coverage (0: ring mode is fully seen). */
	err = pt_client_register(c, 0, PT_DIRTY_RING, &slot1, 1, &handle);
	CHECKF(err == 0, "%s: %s", strerror(-err), pt_client_last_error(c)->reason);
	CHECK(handle < 256);
	CHECKF(pt_client_coverage(c) == (ring_tracked() ? 0 : PT_WHY_UNTRACKED),
	       "coverage %llu, ring %s: a tracked mode must report 0, an untracked one "
	       "PT_WHY_UNTRACKED",
	       (unsigned long long)pt_client_coverage(c), ring_tracked() ? "tracked" : "untracked");

	CHECK(pt_client_arm(c, 7) == 0);

	/* HINT: one frame of 4096 ranges (64 KiB), acked with the exact counts. */
	pt_client_set_ack_cb(c, on_hint_ack, NULL);
	CHECK(pt_client_hint(c, 7, r, nh) == 0);
	pt_client_get_stats(c, &st);
	CHECKF(st.hint_frames == 1 && hint_acks == 1, "frames %llu acks %d",
	       (unsigned long long)st.hint_frames, hint_acks);
	CHECKF(last_hint_ack.value32 == nh && last_hint_ack.pages == nh &&
		       last_hint_ack.ignored == 0,
	       "ack ranges %u pages %llu ignored %llu", last_hint_ack.value32,
	       (unsigned long long)last_hint_ack.pages, (unsigned long long)last_hint_ack.ignored);
	CHECK(st.pages_recorded == nh && st.hint_errors == 0 && st.inflight == 0);
	/* A second, bigger batch (two frames), overlapping the first: still nh distinct pages
	 * in the verdict, twice hinted on the wire. */
	CHECK(pt_client_hint(c, 7, r, nh) == 0);

	CHECK(pt_client_stop(c, 7) == 0);

	/* QUERY without any dirty-log sync after ARM: everything kept, NO_SYNC. */
	CHECK(pt_client_query(c, 7, PT_Q_HINTS, &res) == 0);
	CHECKF(res.v.cmd_id == 7 && res.v.hinted == nh && res.v.free == 0 &&
		       res.v.kept_written == 0 && res.v.kept_unsure == nh && res.v.nranges == 0,
	       "cmd %u hinted %llu free %llu written %llu unsure %llu nranges %u", res.v.cmd_id,
	       (unsigned long long)res.v.hinted, (unsigned long long)res.v.free,
	       (unsigned long long)res.v.kept_written, (unsigned long long)res.v.kept_unsure,
	       res.v.nranges);
	CHECK(res.v.unsure_reason & PT_WHY_NO_SYNC);
	if (ring_tracked())
		CHECKF(res.v.unsure_reason == PT_WHY_NO_SYNC, "why %#x", res.v.unsure_reason);
	pt_client_result_free(&res);

	/* DONE: then the verdict is "keep" because of DONE. */
	CHECK(pt_client_done(c, 7) == 0);
	CHECK(pt_client_query(c, 7, PT_Q_HINTS, &res) == 0);
	CHECK(res.v.free == 0 && (res.v.unsure_reason & PT_WHY_DONE) && res.v.nranges == 0);
	pt_client_result_free(&res);

	/* REPORT: 32 entries (the maximum), acked once recorded; then QUERY REPORTED. */
	for (int i = 0; i < PT_MAX_REPORT; i++)
		rep[i] = (struct pt_range){ SLOT_GPA + (32ull << 20) + i * 8 * PG, 2 * PG };
	CHECK(pt_client_report(c, rep, PT_MAX_REPORT, &pages) == 0 && pages == 2 * PT_MAX_REPORT);
	CHECK(pt_client_query(c, 0, PT_Q_REPORTED, &res) == 0);
	CHECKF(res.v.hinted == 2 * PT_MAX_REPORT && res.v.free == 0 &&
		       res.v.kept_unsure == 2 * PT_MAX_REPORT,
	       "reported: hinted %llu free %llu unsure %llu", (unsigned long long)res.v.hinted,
	       (unsigned long long)res.v.free, (unsigned long long)res.v.kept_unsure);
	pt_client_result_free(&res);

	/* INFLATE 4 ranges of 4 pages, DEFLATE one of them: 12 pages stay inflated. */
	for (int i = 0; i < 4; i++)
		infl[i] = (struct pt_range){ SLOT_GPA + (48ull << 20) + i * 16 * PG, 4 * PG };
	defl[0] = infl[2];
	CHECK(pt_client_inflate(c, infl, 4, &pages) == 0 && pages == 16);
	CHECK(pt_client_deflate(c, defl, 1, &pages) == 0 && pages == 4);
	CHECK(pt_client_query(c, 0, PT_Q_RECLAIMED, &res) == 0);
	CHECKF(res.v.hinted == 12 && res.v.free == 0 && res.v.nranges == 0,
	       "reclaimed: inflated %llu reclaimed %llu ranges %u",
	       (unsigned long long)res.v.hinted, (unsigned long long)res.v.free, res.v.nranges);
	pt_client_result_free(&res);

	/* WR_CAPS, WR_READ. No VMM sync followed the ARM (this VMM is no KVM VM), so the log
	 * cannot vouch that nothing was written: every asked page is listed, as unsure. */
	CHECK(pt_client_wr_caps(c, &caps) == 0);
	CHECK(caps.page_size == 4096 && caps.max_ranges >= 1 && caps.flags == 0);
	wr[0] = (struct pt_range){ SLOT_GPA, 16 * PG };
	wr[1] = (struct pt_range){ SLOT_GPA + (8ull << 20), 8 * PG };
	CHECK(pt_client_wr_read(c, wr, 2, &res) == 0);
	CHECK(res.v.cmd_id == 0 && res.v.nranges == 2 && res.v.kept_written == 0);
	CHECKF(res.v.hinted == 24 && res.v.free == 0 && res.v.kept_unsure == 24 &&
		       (res.v.unsure_reason & PT_WHY_NO_SYNC),
	       "WR_RECORDS: asked %llu free %llu written %llu unsure %llu why %#x",
	       (unsigned long long)res.v.hinted, (unsigned long long)res.v.free,
	       (unsigned long long)res.v.kept_written, (unsigned long long)res.v.kept_unsure,
	       res.v.unsure_reason);
	pt_client_result_free(&res);

	CHECK(pt_client_ping(c) == 0);
	pt_client_close(c);
	free(r);
	return 0;
}

static int round_trip_every_type(void)
{
	T_REQUIRE(need_service());
	CHECK(in_child(round_trip_child, NULL) == 0);
	CHECK(fresh_ping() == 0);
	return 0;
}

/* ========================================================================================= */
/* 64 devices at once, each its own process and VM.                                         */

#define NCONC 64

/* Children block on the read end until the parent closes the write end. */
static int conc_gate, conc_gate_w;

static int concurrent_child(void *arg)
{
	unsigned i = (unsigned)(uintptr_t)arg, n = 100 + i;
	struct pt_range *r = sparse_pages(i, n);
	struct pt_client_result res;
	struct pt_client *c = connect_svc();
	char b;

	close(conc_gate_w);
	CHECK(c && r);
	/* Everybody connected: go together. */
	CHECK(read(conc_gate, &b, 1) == 0);
	CHECK(pt_client_ping(c) == 0);
	CHECK(pt_client_register(c, 0, PT_DIRTY_RING, &slot1, 1, NULL) == 0);
	CHECK(pt_client_arm(c, 2 + i) == 0);
	CHECK(pt_client_hint(c, 2 + i, r, n) == 0);
	CHECK(pt_client_query(c, 2 + i, PT_Q_HINTS, &res) == 0);
	CHECKF(res.v.cmd_id == 2 + i && res.v.hinted == n && res.v.free == 0 &&
		       res.v.kept_unsure == n,
	       "child %u: hinted %llu", i, (unsigned long long)res.v.hinted);
	pt_client_result_free(&res);
	CHECK(pt_client_ping(c) == 0);
	pt_client_close(c);
	free(r);
	return 0;
}

static int concurrent_64_clients(void)
{
	pid_t pids[NCONC];
	int gate[2], ok = 0;

	T_REQUIRE(need_service());
	CHECK(!pipe(gate));
	conc_gate = gate[0];
	conc_gate_w = gate[1];
	for (unsigned i = 0; i < NCONC; i++) {
		pids[i] = start_child(concurrent_child, (void *)(uintptr_t)i);
		CHECK(pids[i] > 0);
	}
	close(gate[0]);
	usleep(100 * 1000);
	close(gate[1]);
	for (unsigned i = 0; i < NCONC; i++) {
		int rc = wait_child(pids[i]);

		if (rc == 0)
			ok++;
		else
			fprintf(stderr, "  client %u failed (%d)\n", i, rc);
	}
	CHECKF(ok == NCONC, "%d of %d clients succeeded", ok, NCONC);
	CHECK(fresh_ping() == 0);
	return 0;
}

/* ========================================================================================= */
/* A device that disconnects in the middle of a frame.                                      */

static int mid_frame_child(void *arg)
{
	struct pt_range *r = sparse_pages(0, 4096);
	struct pt_client_result res;
	struct pt_client *c;
	struct pt_ack ack;
	size_t n;
	int fd = raw_connect();

	CHECK(fd >= 0 && r);
	SEND_EXPECT_ACK(fd,
			pt_build_register(tx, sizeof(tx), 1, getpid(), PT_DIRTY_RING, &slot1, 1), 1,
			&ack);
	SEND_EXPECT_ACK(fd, pt_build_cmd(tx, sizeof(tx), PT_MSG_ARM, 2, 5), 2, &ack);
	/* Half of a 64 KiB HINT frame, then gone. */
	n = pt_build_hint(tx, sizeof(tx), 3, 5, r, 4096);
	CHECK(n && !raw_send(fd, tx, n / 2));
	usleep(50 * 1000);
	close(fd);

	/* The same VMM reconnects: registers again, nothing of the half frame was recorded. */
	c = connect_svc();
	CHECK(c);
	CHECKF(pt_client_register(c, 0, PT_DIRTY_RING, &slot1, 1, NULL) == 0, "%s",
	       pt_client_last_error(c)->reason);
	CHECK(pt_client_arm(c, 6) == 0);
	CHECK(pt_client_hint(c, 6, r, 10) == 0);
	CHECK(pt_client_query(c, 6, PT_Q_HINTS, &res) == 0);
	CHECK(res.v.hinted == 10);
	pt_client_result_free(&res);
	pt_client_close(c);
	free(r);
	return 0;
}

static int disconnect_mid_frame(void)
{
	int other, fd;

	T_REQUIRE(need_service());
	/* A bystander connection, open all along. */
	other = raw_connect();
	CHECK(other >= 0);
	CHECK(raw_ping(other, 100) == 0);
	CHECK(in_child(mid_frame_child, NULL) == 0);
	CHECK(raw_ping(other, 101) == 0);

	/* An unregistered peer too: half a header, then half a payload. */
	fd = raw_connect();
	CHECK(fd >= 0);
	CHECK(!raw_send(fd, tx, 7));
	close(fd);
	fd = raw_connect();
	CHECK(fd >= 0);
	{
		struct pt_range r = { SLOT_GPA, PG };
		size_t n = pt_build_hint(tx, sizeof(tx), 1, 5, &r, 1);

		CHECK(n && !raw_send(fd, tx, n - 3));
	}
	close(fd);
	CHECK(raw_ping(other, 102) == 0);
	close(other);
	CHECK(fresh_ping() == 0);
	CHECK(kill(svc.pid, 0) == 0);
	return 0;
}

/* ========================================================================================= */
/* A VM held by another VMM while a hostile peer works: afterwards it must be intact.      */

struct held_vm {
	uint32_t cmd, npages;		   /* armed and hinted before the hostile part */
	int (*after)(struct pt_client *c); /* its checks once released */
	int ready[2], go[2];
	pid_t pid;
};

static int held_vm_child(void *arg)
{
	struct held_vm *h = arg;
	struct pt_range *r = sparse_pages(0, h->npages);
	struct pt_client *c = connect_svc();
	char x;

	close(h->ready[0]);
	close(h->go[1]);
	CHECK(c && r);
	CHECK(pt_client_register(c, 0, PT_DIRTY_RING, &slot1, 1, NULL) == 0);
	CHECK(pt_client_arm(c, h->cmd) == 0);
	CHECK(pt_client_hint(c, h->cmd, r, h->npages) == 0);
	CHECK(write(h->ready[1], "r", 1) == 1);
	CHECK(read(h->go[0], &x, 1) == 1);
	CHECK(h->after(c) == 0);
	pt_client_close(c);
	free(r);
	return 0;
}

/* Starts the held VM's VMM and waits until its VM is armed and hinted. */
static int held_vm_start(struct held_vm *h)
{
	char x;

	CHECK(!pipe(h->ready) && !pipe(h->go));
	h->pid = start_child(held_vm_child, h);
	CHECK(h->pid > 0);
	close(h->ready[1]);
	close(h->go[0]);
	CHECK(read(h->ready[0], &x, 1) == 1);
	return 0;
}

/* Releases it to run its checks: 0 if they passed. */
static int held_vm_finish(struct held_vm *h)
{
	int rc = write(h->go[1], "g", 1) == 1 ? wait_child(h->pid) : -1;

	close(h->ready[0]);
	close(h->go[1]);
	return rc;
}

/* ========================================================================================= */
/* Malformed frames, one class at a time.                                                   */

/* A VM armed and hinted before the storm; afterwards its verdict must still count 300. */
static int bystander_after(struct pt_client *c)
{
	struct pt_client_result res;

	CHECK(pt_client_ping(c) == 0);
	CHECK(pt_client_query(c, 9, PT_Q_HINTS, &res) == 0);
	CHECKF(res.v.cmd_id == 9 && res.v.hinted == 300 && res.v.kept_unsure == 300,
	       "bystander: hinted %llu", (unsigned long long)res.v.hinted);
	pt_client_result_free(&res);
	return 0;
}

/* A frame with a header and a payload of our own making. */
static size_t frame(void *buf, unsigned type, uint32_t len, uint32_t seq, const void *payload,
		    size_t plen)
{
	size_t n = pt_encode_hdr(buf, PT_MAX_FRAME + 64, type, 0, len, seq);

	if (!n)
		return 0;
	memcpy((uint8_t *)buf + n, payload, plen);
	return n + plen;
}

/*
 * Requests that need a registered VM, on a connection that has none: each gets
 * NOT_REGISTERED (ARM of arm_id, HINT of r, DONE if `done`, QUERY, WR_READ of r); then the
 * connection registers this process's VM. *seq advances past them all.
 */
static int not_registered_then_own(int fd, uint32_t *seq, uint32_t arm_id, const struct pt_range *r,
				   bool done)
{
	struct pt_ack ack;

	SEND_EXPECT_ERROR(fd, pt_build_cmd(tx, sizeof(tx), PT_MSG_ARM, *seq, arm_id), *seq,
			  PT_E_NOT_REGISTERED);
	(*seq)++;
	SEND_EXPECT_ERROR(fd, pt_build_hint(tx, sizeof(tx), *seq, 2, r, 1), *seq,
			  PT_E_NOT_REGISTERED);
	(*seq)++;
	if (done) {
		SEND_EXPECT_ERROR(fd, pt_build_cmd(tx, sizeof(tx), PT_MSG_DONE, *seq, 2), *seq,
				  PT_E_NOT_REGISTERED);
		(*seq)++;
	}
	SEND_EXPECT_ERROR(fd, pt_build_query(tx, sizeof(tx), *seq, 2, PT_Q_HINTS), *seq,
			  PT_E_NOT_REGISTERED);
	(*seq)++;
	SEND_EXPECT_ERROR(fd, pt_build_report(tx, sizeof(tx), PT_MSG_WR_READ, *seq, r, 1), *seq,
			  PT_E_NOT_REGISTERED);
	(*seq)++;
	SEND_EXPECT_ACK(fd,
			pt_build_register(tx, sizeof(tx), *seq, getpid(), PT_DIRTY_RING, &slot1, 1),
			*seq, &ack);
	(*seq)++;
	return 0;
}

/* Framing errors: the ERROR with the header's seq, then the service closes the stream. */
static int fatal_header(uint32_t magic, uint8_t version, uint8_t type, uint32_t len, int code)
{
	struct pt_hdr h = { magic, version, type, 0, len, 4242 };
	int fd = raw_connect();

	CHECK(fd >= 0);
	CHECK(!raw_send(fd, &h, sizeof(h)));
	EXPECT_ERROR(fd, 4242, code);
	CHECKF(raw_eof(fd), "no close after %s", pt_err_str(code));
	close(fd);
	return 0;
}

static int malformed_child(void *arg)
{
	struct pt_range good = { SLOT_GPA, 4 * PG };
	struct pt_ack ack;
	uint8_t p[64] __attribute__((aligned(8)));
	uint32_t seq = 1;
	size_t n;
	int fd = raw_connect();

	CHECK(fd >= 0);

	/* Before REGISTER: NOT_REGISTERED, whatever the request. */
	CHECK(!not_registered_then_own(fd, &seq, 2, &good, false));

	/* Reserved command IDs. */
	for (uint32_t id = 0; id < 2; id++) {
		SEND_EXPECT_ERROR(fd, pt_build_cmd(tx, sizeof(tx), PT_MSG_ARM, seq, id), seq,
				  PT_E_RESERVED_CMD);
		seq++;
	}
	SEND_EXPECT_ERROR(fd, pt_build_hint(tx, sizeof(tx), seq, 1, &good, 1), seq,
			  PT_E_RESERVED_CMD);
	seq++;
	SEND_EXPECT_ERROR(fd, pt_build_query(tx, sizeof(tx), seq, 0, PT_Q_HINTS), seq,
			  PT_E_RESERVED_CMD);
	seq++;

	SEND_EXPECT_ACK(fd, pt_build_cmd(tx, sizeof(tx), PT_MSG_ARM, seq, 5), seq, &ack);
	CHECK(ack.value32 == 5);
	seq++;
	SEND_EXPECT_ACK(fd, pt_build_hint(tx, sizeof(tx), seq, 5, &good, 1), seq, &ack);
	CHECK(ack.value32 == 1 && ack.pages == 4 && ack.ignored == 0);
	seq++;

	/* Length not fixed + k * 16: refused, the stream goes on (pipelined PING answered). */
	{
		struct pt_hint hh = { 5, 1 };

		memcpy(p, &hh, sizeof(hh));
		memcpy(p + 8, &good, sizeof(good));
		memset(p + 24, 0, 4);
		n = frame(tx, PT_MSG_HINT, 28, seq, p, 28);
		n += pt_build_empty(tx + n, sizeof(tx) - n, PT_MSG_PING, seq + 1);
		CHECK(!raw_send(fd, tx, n));
		EXPECT_ERROR(fd, seq, PT_E_BAD_LENGTH);
		EXPECT_ACK(fd, seq + 1, NULL);
		seq += 2;
		/* The count field disagrees with the length. */
		hh.count = 2;
		memcpy(p, &hh, sizeof(hh));
		SEND_EXPECT_ERROR(fd, frame(tx, PT_MSG_HINT, 24, seq, p, 24), seq, PT_E_BAD_LENGTH);
		seq++;
		/* A fixed-size request with extra bytes. */
		SEND_EXPECT_ERROR(fd, frame(tx, PT_MSG_PING, 8, seq, p, 8), seq, PT_E_BAD_LENGTH);
		seq++;
		/* REPORT with 33 entries. */
		{
			static struct pt_range r33[33];

			for (int i = 0; i < 33; i++)
				r33[i] = (struct pt_range){ SLOT_GPA + i * PG, PG };
			n = pt_encode_hdr(tx, sizeof(tx), PT_MSG_REPORT, 0, 8 + 33 * 16, seq);
			memcpy(tx + n, &(struct pt_report){ 33, 0 }, 8);
			memcpy(tx + n + 8, r33, sizeof(r33));
			CHECK(!raw_send(fd, tx, n + 8 + sizeof(r33)));
			EXPECT_ERROR(fd, seq, PT_E_BAD_LENGTH);
			seq++;
		}
		CHECK(raw_ping(fd, seq++) == 0);
	}

	/* Stale command IDs: STOP, DONE, QUERY of an ID that is not the current one. */
	SEND_EXPECT_ERROR(fd, pt_build_cmd(tx, sizeof(tx), PT_MSG_STOP, seq, 6), seq,
			  PT_E_STALE_CMD);
	seq++;
	SEND_EXPECT_ERROR(fd, pt_build_cmd(tx, sizeof(tx), PT_MSG_DONE, seq, 6), seq,
			  PT_E_STALE_CMD);
	seq++;
	SEND_EXPECT_ERROR(fd, pt_build_query(tx, sizeof(tx), seq, 6, PT_Q_HINTS), seq,
			  PT_E_STALE_CMD);
	seq++;
	/* ARM of an ID not yet stopped. */
	SEND_EXPECT_ERROR(fd, pt_build_cmd(tx, sizeof(tx), PT_MSG_ARM, seq, 5), seq,
			  PT_E_CMD_REUSE);
	seq++;

	/* Ranges: outside the registered memory, overflowing, unaligned, empty. A batch with
	 * one bad range records none of its ranges. */
	{
		struct pt_range bad[][2] = {
			{ good, { SLOT_GPA + SLOT_SIZE, PG } },	     /* just past the slot */
			{ good, { SLOT_GPA - PG, 2 * PG } },	     /* straddles its start */
			{ good, { 0, PG } },			     /* no memory there */
			{ good, { 0xfffffffffffff000ull, 0x2000 } }, /* gpa + len wraps */
			{ good, { 0xfffffffffffff000ull, 0x1000 } }, /* ends at 2^64 */
			{ good, { SLOT_GPA + 8, PG } },		     /* unaligned */
			{ good, { SLOT_GPA, 0 } },		     /* empty */
		};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			n = pt_build_hint(tx, sizeof(tx), seq, 5, bad[i], 2);
			CHECK(!raw_send(fd, tx, n));
			CHECKF(expect_error(fd, seq, PT_E_BAD_RANGE, __LINE__) == 0,
			       "bad range %zu", i);
			seq++;
			n = pt_build_report(tx, sizeof(tx), PT_MSG_INFLATE, seq, bad[i], 2);
			CHECK(!raw_send(fd, tx, n));
			CHECKF(expect_error(fd, seq, PT_E_BAD_RANGE, __LINE__) == 0,
			       "bad inflate range %zu", i);
			seq++;
		}
	}

	/* Reserved fields and unknown enum values. */
	SEND_EXPECT_ERROR(fd, pt_build_query(tx, sizeof(tx), seq, 5, 3), seq, PT_E_BAD_FIELD);
	seq++;
	{
		struct pt_cmd cmd = { 5, 1 };

		SEND_EXPECT_ERROR(fd, frame(tx, PT_MSG_STOP, 8, seq, &cmd, 8), seq, PT_E_BAD_FIELD);
		seq++;
	}

	/* Hints under an ID that is not current: ignored, and the device is told (spec 4.3). */
	SEND_EXPECT_ERROR(fd, pt_build_hint(tx, sizeof(tx), seq, 6, &good, 1), seq, PT_E_STALE_CMD);
	seq++;

	/* Nothing of the refused frames was recorded: the verdict counts the one good hint. */
	{
		struct pt_hdr h;
		struct pt_msg m;

		n = pt_build_query(tx, sizeof(tx), seq, 5, PT_Q_HINTS);
		CHECK(!raw_send(fd, tx, n));
		CHECK(raw_recv(fd, &h, &m) == 1 && m.type == PT_MSG_VERDICT && h.seq == seq);
		CHECK(!(h.flags & PT_F_MORE));
		CHECKF(m.verdict->hinted == 4, "hinted %llu",
		       (unsigned long long)m.verdict->hinted);
		seq++;
	}
	CHECK(raw_ping(fd, seq++) == 0);
	close(fd);

	/* Framing errors: ERROR, then the connection is closed. */
	CHECK(fatal_header(0x12345678, 1, PT_MSG_PING, 0, PT_E_BAD_MAGIC) == 0);
	CHECK(fatal_header(PT_PROTO_MAGIC, 2, PT_MSG_PING, 0, PT_E_BAD_VERSION) == 0);
	CHECK(fatal_header(PT_PROTO_MAGIC, 0, PT_MSG_PING, 0, PT_E_BAD_VERSION) == 0);
	CHECK(fatal_header(PT_PROTO_MAGIC, 1, 40, 0, PT_E_BAD_TYPE) == 0);
	CHECK(fatal_header(PT_PROTO_MAGIC, 1, 0, 0, PT_E_BAD_TYPE) == 0);
	CHECK(fatal_header(PT_PROTO_MAGIC, 1, PT_MSG_ACK, 24, PT_E_BAD_TYPE) == 0);
	CHECK(fatal_header(PT_PROTO_MAGIC, 1, PT_MSG_HINT, PT_MAX_PAYLOAD + 1, PT_E_BAD_LENGTH) ==
	      0);
	CHECK(fatal_header(PT_PROTO_MAGIC, 1, PT_MSG_HINT, 0xffffffffu, PT_E_BAD_LENGTH) == 0);

	/* A frame after a bad header is never looked at: one ERROR, then EOF. */
	fd = raw_connect();
	CHECK(fd >= 0);
	{
		struct pt_hdr h = { 0xdeadbeef, 1, PT_MSG_PING, 0, 0, 77 };

		memcpy(tx, &h, sizeof(h));
		SEND_EXPECT_ERROR(
			fd, sizeof(h) + pt_build_empty(tx + sizeof(h), sizeof(tx), PT_MSG_PING, 78),
			77, PT_E_BAD_MAGIC);
		CHECK(raw_eof(fd));
		close(fd);
	}

	/* Truncated payload: len says 100, 40 bytes come, then the peer closes. No reply. */
	fd = raw_connect();
	CHECK(fd >= 0);
	memset(p, 0, sizeof(p));
	n = frame(tx, PT_MSG_HINT, 100, seq, p, 40);
	CHECK(!raw_send(fd, tx, n));
	shutdown(fd, SHUT_WR);
	CHECKF(raw_eof(fd), "a truncated frame must get no reply");
	close(fd);
	/* The same truncation of a 100-byte (bad-length) frame, completed later: an ERROR. */
	fd = raw_connect();
	CHECK(fd >= 0);
	CHECK(!raw_send(fd, tx, n));
	usleep(20 * 1000);
	CHECK(!raw_send(fd, p, 60));
	EXPECT_ERROR(fd, seq, PT_E_BAD_LENGTH);
	CHECK(raw_ping(fd, seq + 1) == 0);
	close(fd);
	return 0;
}

static int malformed_frames(void)
{
	struct held_vm b = { .cmd = 9, .npages = 300, .after = bystander_after };
	long long errors0, bad0, errors = -1, bad = -1;
	int rc, by_rc;

	T_REQUIRE(need_service());
	errors0 = status_num("errors");
	bad0 = status_num("bad_frames");
	CHECK(errors0 >= 0 && bad0 >= 0);

	CHECK(!held_vm_start(&b));

	rc = in_child(malformed_child, NULL);

	/* The bystander's VM is as it was, and the service is alive. */
	by_rc = held_vm_finish(&b);
	CHECK(rc == 0);
	CHECK(by_rc == 0);
	CHECK(kill(svc.pid, 0) == 0);
	CHECK(fresh_ping() == 0);

	/* status.json (rewritten every tick) counts them. */
	for (int i = 0; i < 50; i++) {
		errors = status_num("errors");
		bad = status_num("bad_frames");
		if (errors >= errors0 + 30 && bad >= bad0 + 10)
			break;
		usleep(100 * 1000);
	}
	CHECKF(errors >= errors0 + 30 && bad >= bad0 + 10,
	       "status.json: errors %lld -> %lld, bad_frames %lld -> %lld", errors0, errors, bad0,
	       bad);
	return 0;
}

/* ========================================================================================= */
/* Peer credentials.                                                                        */

#define NOBODY 65534

struct perm_arg {
	pid_t root_vmm;	  /* a root process whose VM another connection registered */
	pid_t root_alive; /* a live root process nobody registered */
};

static int nobody_child(void *arg)
{
	struct perm_arg *a = arg;
	struct pt_range good = { SLOT_GPA, PG };
	uint32_t seq = 1;
	int fd;

	CHECK(!setgroups(0, NULL) && !setgid(NOBODY) && !setuid(NOBODY));
	CHECK(geteuid() == NOBODY);
	fd = raw_connect();
	CHECKF(fd >= 0, "connect as nobody: %s", strerror(errno));
	CHECK(raw_ping(fd, seq++) == 0);

	/* Root's VMs: refused. */
	SEND_EXPECT_ERROR(
		fd, pt_build_register(tx, sizeof(tx), seq, a->root_alive, PT_DIRTY_RING, &slot1, 1),
		seq, PT_E_PERM);
	seq++;
	SEND_EXPECT_ERROR(
		fd, pt_build_register(tx, sizeof(tx), seq, a->root_vmm, PT_DIRTY_RING, &slot1, 1),
		seq, PT_E_PERM);
	seq++;

	/* And nothing reaches the VM registered by the other connection; its own pid is fine
	 * (the peer is the VMM). */
	CHECK(!not_registered_then_own(fd, &seq, 3, &good, true));
	close(fd);
	return 0;
}

/* Root VMM: registers, arms 2 and hints 50 pages; after the intruder, its state is intact. */
static int owner_after(struct pt_client *c)
{
	struct pt_client_result res;

	CHECK(pt_client_query(c, 2, PT_Q_HINTS, &res) == 0);
	CHECKF(res.v.hinted == 50 && !(res.v.unsure_reason & PT_WHY_DONE), "hinted %llu why %#x",
	       (unsigned long long)res.v.hinted, res.v.unsure_reason);
	pt_client_result_free(&res);
	CHECK(pt_client_arm(c, 3) == 0); /* ID 3 is free: the intruder's ARM(3) did nothing */
	return 0;
}

static int other_uid_refused(void)
{
	struct perm_arg a = { .root_alive = getpid() };
	struct held_vm o = { .cmd = 2, .npages = 50, .after = owner_after };
	struct stat st;
	int rc, owner_rc;

	T_REQUIRE(need_service());
	if (geteuid() != 0)
		return t_skip("needs root to switch uid");
	/* Let uid 65534 reach the socket. */
	CHECK(!stat(svc.dir, &st));
	CHECK(!chmod(svc.dir, 0755) && !chmod(svc.socket, 0666));

	CHECK(!held_vm_start(&o));
	a.root_vmm = o.pid;

	rc = in_child(nobody_child, &a);

	owner_rc = held_vm_finish(&o);
	chmod(svc.dir, st.st_mode & 07777);
	CHECK(owner_rc == 0);
	CHECK(rc == 0);
	return 0;
}

/* ========================================================================================= */
/* Reconnects and the one-registration-per-VM rule.                                         */

static int reconnect_child(void *arg)
{
	struct pt_range *r = sparse_pages(0, 40);
	struct pt_client_result res;
	struct pt_client *c = connect_svc();
	uint32_t h1 = 0, h2 = 0;

	CHECK(c && r);
	CHECK(pt_client_register(c, 0, PT_DIRTY_RING, &slot1, 1, &h1) == 0);
	CHECK(pt_client_arm(c, 3) == 0);
	CHECK(pt_client_hint(c, 3, r, 20) == 0);
	pt_client_close(c);

	for (int round = 0; round < 3; round++) {
		uint32_t id = 4 + round;

		usleep(20 * 1000);
		c = connect_svc();
		CHECK(c);
		CHECKF(pt_client_register(c, 0, PT_DIRTY_RING, &slot1, 1, &h2) == 0, "round %d: %s",
		       round, pt_client_last_error(c)->reason);
		CHECK(h2 == h1);
		CHECK(pt_client_ping(c) == 0);
		CHECK(pt_client_arm(c, id) == 0);
		CHECK(pt_client_hint(c, id, r + 20, 5 + round) == 0);
		CHECK(pt_client_query(c, id, PT_Q_HINTS, &res) == 0);
		CHECKF(res.v.cmd_id == id && res.v.hinted == 5u + round,
		       "round %d: hinted %llu (hints of the old connection leaked?)", round,
		       (unsigned long long)res.v.hinted);
		pt_client_result_free(&res);
		pt_client_close(c);
	}

	/* Closing a connection releases every command ID of it (spec 2): the old ID is not
	 * current for the new connection, and may be armed again. */
	c = connect_svc();
	CHECK(c);
	CHECK(pt_client_register(c, 0, PT_DIRTY_RING, &slot1, 1, NULL) == 0);
	CHECKF(pt_client_query(c, 6, PT_Q_HINTS, &res) == -ESTALE,
	       "spec 2: QUERY of a command ID of a closed connection must be PT_E_STALE_CMD");
	CHECKF(pt_client_arm(c, 6) == 0, "spec 2: the IDs of a closed connection are released: %s",
	       pt_client_last_error(c)->reason);

	CHECK(pt_client_ping(c) == 0);
	CHECK(pt_client_stop(c, 6) == 0);
	pt_client_close(c);
	free(r);
	return 0;
}

static int reconnect_same_pid(void)
{
	T_REQUIRE(need_service());
	CHECK(in_child(reconnect_child, NULL) == 0);
	return 0;
}

static int register_twice_child(void *arg)
{
	struct pt_client *c = connect_svc(), *c2 = connect_svc();
	struct pt_client_result res;
	struct pt_range r = { SLOT_GPA, 3 * PG };
	uint64_t tok;
	int err;

	CHECK(c && c2);
	CHECK(pt_client_register(c, 0, PT_DIRTY_RING, &slot1, 1, NULL) == 0);
	CHECK(pt_client_arm(c, 2) == 0);
	CHECK(pt_client_hint(c, 2, &r, 1) == 0);

	/* The same connection again: PT_E_STATE, and the registration stands. */
	err = pt_client_register(c, 0, PT_DIRTY_RING, &slot1, 1, NULL);
	CHECKF(err == -EBADFD && pt_client_last_error(c)->code == PT_E_STATE,
	       "second REGISTER on one connection: %d %s", err, pt_client_last_error(c)->reason);

	/* Another connection of the same VMM, without the first registration's token (v1
	 * REGISTER has none): the VM starts afresh (PROTOCOL 2), and the old connection is told. */
	tok = pt_client_token(c);
	err = pt_client_register(c2, 0, PT_DIRTY_RING, &slot1, 1, NULL);
	CHECKF(err == 0, "takeover REGISTER: %d %s", err, pt_client_last_error(c2)->reason);
	CHECK(tok && pt_client_token(c2) && pt_client_token(c2) != tok);
	err = pt_client_query(c2, 2, PT_Q_HINTS, &res);
	CHECKF(err == -ESTALE, "a takeover without the token kept the command state: %d", err);
	CHECK(pt_client_ping(c) == 0);
	err = pt_client_query(c, 2, PT_Q_HINTS, &res);
	CHECKF(err < 0 && pt_client_last_error(c)->code == PT_E_NOT_REGISTERED &&
		       strstr(pt_client_last_error(c)->reason, "taken over"),
	       "old connection not told of the takeover: %d %s", err,
	       pt_client_last_error(c)->reason);
	/* Its close does not reset the VM it no longer holds. */
	CHECK(pt_client_arm(c2, 3) == 0 && pt_client_hint(c2, 3, &r, 1) == 0);
	pt_client_close(c);
	CHECK(pt_client_ping(c2) == 0 && pt_client_query(c2, 3, PT_Q_HINTS, &res) == 0);
	CHECK(res.v.hinted == 3);
	pt_client_result_free(&res);
	pt_client_close(c2);
	return 0;
}

static int register_twice_and_takeover(void)
{
	T_REQUIRE(need_service());
	CHECK(in_child(register_twice_child, NULL) == 0);
	return 0;
}

/* ========================================================================================= */
/* A real guest: arm, sync, write, hint, query. The verdict must exclude written pages.     */

#define VM_DATA_GPA  (4ull << 30)
#define VM_DATA_SIZE (8ull << 20)

static int real_vm_child(void *arg)
{
	struct minivm_opts o = { .dirty = MINIVM_DIRTY_RING, .nslots = 1, .ring_entries = 4096 };
	struct pt_reg_slot slots[2];
	struct pt_range hint = { VM_DATA_GPA, 256 * PG };
	struct pt_client_result res;
	struct pt_client *c;
	uint64_t gpas[10], *junk, free_pages = 0;
	struct minivm *m;
	size_t nj;

	o.slots[0] = (struct minivm_slot){ .gpa = VM_DATA_GPA, .size = VM_DATA_SIZE, .id = 1 };
	CHECK(!minivm_create(&m, &o));
	slots[0] = (struct pt_reg_slot){
		.gpa = VM_DATA_GPA, .size = VM_DATA_SIZE, .id = 1, .flags = PT_REG_SLOT_LOGGED
	};
	minivm_system_range(m, &slots[1].gpa, &slots[1].size);
	slots[1].id = 0;
	slots[1].flags = PT_REG_SLOT_LOGGED;

	c = connect_svc();
	CHECK(c);
	CHECK(pt_client_register(c, 0, PT_DIRTY_RING, slots, 2, NULL) == 0);
	CHECK(pt_client_coverage(c) == 0);

	/* Something dirty before the arm, so that the harvest after it really resets. */
	gpas[0] = VM_DATA_GPA + 300 * PG;
	CHECK(!minivm_guest_write(m, gpas, 1, 1));
	CHECK(pt_client_arm(c, 2) == 0);
	CHECK(!minivm_harvest(m, &junk, &nj)); /* the VMM's sync, after the ARM's ack */
	free(junk);

	/* The guest writes 10 pages (one outside the hint), then the device hints 256 pages. */
	for (int i = 0; i < 10; i++)
		gpas[i] = VM_DATA_GPA + (i == 9 ? 1000 : 3 + i * 20) * PG + 8 * i;
	CHECK(!minivm_guest_write(m, gpas, 10, 0xfeed));
	CHECK(pt_client_hint(c, 2, &hint, 1) == 0);
	CHECK(pt_client_query(c, 2, PT_Q_HINTS, &res) == 0);
	CHECKF(res.v.unsure_reason == 0 && res.v.hinted == 256 && res.v.kept_written == 9 &&
		       res.v.free == 247 && res.v.kept_unsure == 0,
	       "why %#x hinted %llu free %llu written %llu unsure %llu", res.v.unsure_reason,
	       (unsigned long long)res.v.hinted, (unsigned long long)res.v.free,
	       (unsigned long long)res.v.kept_written, (unsigned long long)res.v.kept_unsure);
	for (uint32_t i = 0; i < res.v.nranges; i++) {
		const struct pt_range *x = &res.ranges[i];

		free_pages += x->len / PG;
		CHECK(x->gpa >= hint.gpa && x->gpa + x->len <= hint.gpa + hint.len);
		CHECK(i == 0 || res.ranges[i - 1].gpa + res.ranges[i - 1].len < x->gpa);
		for (int k = 0; k < 9; k++)
			CHECKF(gpas[k] / PG * PG < x->gpa || gpas[k] >= x->gpa + x->len,
			       "written page %#llx listed free", (unsigned long long)gpas[k]);
	}
	CHECK(free_pages == 247 && res.v.nranges == 10);
	pt_client_result_free(&res);

	/* WR_READ lists the written pages, on every read until the next ARM. */
	{
		struct pt_range all = { VM_DATA_GPA, VM_DATA_SIZE };

		CHECK(pt_client_wr_read(c, &all, 1, &res) == 0);
		CHECKF(res.v.kept_written + res.v.kept_unsure == 10 ||
			       (res.v.hinted == 10 && res.v.nranges == 10),
		       "WR_RECORDS: hinted %llu written %llu ranges %u",
		       (unsigned long long)res.v.hinted, (unsigned long long)res.v.kept_written,
		       res.v.nranges);
		CHECK(res.v.nranges == 10);
		pt_client_result_free(&res);
		CHECK(pt_client_wr_read(c, &all, 1, &res) == 0);
		CHECK(res.v.nranges == 10);
		pt_client_result_free(&res);
	}
	CHECK(pt_client_stop(c, 2) == 0);
	CHECK(pt_client_done(c, 2) == 0);
	pt_client_close(c);
	minivm_destroy(m);
	return 0;
}

static int real_vm_verdict(void)
{
	T_REQUIRE(need_ring_guest());
	T_REQUIRE(need_service());
	if (!ring_tracked())
		return t_skip("the service's canary found dirty-ring mode untracked");
	CHECK(in_child(real_vm_child, NULL) == 0);
	return 0;
}

/* Bitmap mode is untracked on this machine's canary: REGISTER must say so in its coverage. */
static int bitmap_coverage_child(void *arg)
{
	struct pt_client *c = connect_svc();

	CHECK(c);
	CHECK(pt_client_register(c, 0, PT_DIRTY_BITMAP, &slot1, 1, NULL) == 0);
	CHECKF(pt_client_coverage(c) == (bitmap_tracked() ? 0 : PT_WHY_UNTRACKED),
	       "bitmap %s: coverage %llu", bitmap_tracked() ? "tracked" : "untracked",
	       (unsigned long long)pt_client_coverage(c));
	pt_client_close(c);
	return 0;
}

static int register_coverage_bits(void)
{
	T_REQUIRE(need_service());
	CHECK(in_child(bitmap_coverage_child, NULL) == 0);
	return 0;
}

/*
 * WR_READ where the service cannot vouch for its log (an untracked mode): every asked page is
 * unsure, and unsure pages must be listed (spec 4.7: a reader treats listed pages as written,
 * so an unlisted page would be skipped by a migration, with its data lost).
 */
static int wr_unsure_child(void *arg)
{
	const struct pt_range ask[3] = {
		{ SLOT_GPA, 8 * PG },
		{ SLOT_GPA + 4 * PG, 8 * PG },
		{ SLOT_GPA + 100 * PG, 2 * PG },
	};
	struct pt_client *c = connect_svc();
	struct pt_client_result res;
	uint64_t listed = 0;

	CHECK(c);
	CHECK(pt_client_register(c, 0, PT_DIRTY_BITMAP, &slot1, 1, NULL) == 0);
	if (!pt_client_coverage(c))
		return t_skip("bitmap mode is tracked here");
	CHECK(pt_client_arm(c, 2) == 0);
	CHECK(pt_client_wr_read(c, ask, 3, &res) == 0);
	CHECK(res.v.unsure_reason & PT_WHY_UNTRACKED);
	for (uint32_t i = 0; i < res.v.nranges; i++) {
		listed += res.ranges[i].len / PG;
		CHECK(i == 0 || res.ranges[i - 1].gpa + res.ranges[i - 1].len <= res.ranges[i].gpa);
	}
	CHECKF(res.v.free == 0 && listed == res.v.kept_written + res.v.kept_unsure && listed == 14,
	       "untracked WR_RECORDS: free %llu written %llu unsure %llu, %llu pages listed in %u "
	       "ranges (want all 14 asked pages listed as unsure)",
	       (unsigned long long)res.v.free, (unsigned long long)res.v.kept_written,
	       (unsigned long long)res.v.kept_unsure, (unsigned long long)listed, res.v.nranges);
	CHECK(res.v.nranges == 2 && res.ranges[0].gpa == SLOT_GPA && res.ranges[0].len == 12 * PG &&
	      res.ranges[1].gpa == SLOT_GPA + 100 * PG);
	pt_client_result_free(&res);
	pt_client_close(c);
	return 0;
}

static int wr_read_lists_unsure_pages(void)
{
	int rc;

	T_REQUIRE(need_service());
	rc = in_child(wr_unsure_child, NULL);
	if (rc == T_SKIP)
		return t_skip("bitmap mode is tracked here");
	CHECK(rc == 0);
	return 0;
}

/*
 * A device in another process registers a VMM that then exits. After the service's reap tick
 * the device's connection is still open: its next requests must be refused cleanly (the
 * context it was bound to is gone), and the service must stay up for everyone else.
 */
static int vmm_exit_child(void *arg)
{
	pid_t vmm = fork();
	struct pt_client *c;
	struct timespec ts = { 1, 600 * 1000 * 1000 }; /* more than one tick (1 s) */
	int err;

	if (!vmm) {
		pause();
		_exit(0);
	}
	c = connect_svc();
	CHECK(vmm > 0 && c);
	CHECK(pt_client_register(c, vmm, PT_DIRTY_RING, &slot1, 1, NULL) == 0);
	CHECK(pt_client_arm(c, 2) == 0);
	kill(vmm, SIGKILL);
	waitpid(vmm, NULL, 0);
	nanosleep(&ts, NULL);
	err = pt_client_arm(c, 3);
	CHECKF(err < 0 && pt_client_last_error(c)->code == PT_E_NOT_REGISTERED,
	       "ARM after the VMM exited: %d", err);
	CHECK(pt_client_ping(c) == 0);
	pt_client_close(c);
	CHECK(fresh_ping() == 0);
	return 0;
}

static int vmm_exit_releases_vm(void)
{
	T_REQUIRE(need_service());
	CHECK(in_child(vmm_exit_child, NULL) == 0);
	CHECK(kill(svc.pid, 0) == 0);
	return 0;
}

/* The same VMM registered again with another memory map is a new VM: nothing carries over. */
static int new_map_child(void *arg)
{
	static const struct pt_reg_slot other = {
		.gpa = SLOT_GPA, .size = SLOT_SIZE / 2, .id = 1, .flags = PT_REG_SLOT_LOGGED
	};
	struct pt_range r = { SLOT_GPA, 4 * PG };
	struct pt_client_result res;
	struct pt_client *c = connect_svc();

	CHECK(c && pt_client_register(c, 0, PT_DIRTY_RING, &slot1, 1, NULL) == 0);
	CHECK(pt_client_arm(c, 2) == 0 && pt_client_hint(c, 2, &r, 1) == 0);
	pt_client_close(c);
	c = connect_svc();
	CHECK(c && pt_client_register(c, 0, PT_DIRTY_RING, &other, 1, NULL) == 0);
	CHECK(pt_client_query(c, 2, PT_Q_HINTS, &res) < 0);
	CHECK(pt_client_last_error(c)->code == PT_E_STALE_CMD);
	/* ID 2 may be armed again at once: the old VM's IDs went with it. */
	CHECK(pt_client_arm(c, 2) == 0 && pt_client_query(c, 2, PT_Q_HINTS, &res) == 0);
	CHECK(res.v.hinted == 0);
	pt_client_result_free(&res);
	pt_client_close(c);
	return 0;
}

static int reregister_new_map_starts_afresh(void)
{
	T_REQUIRE(need_service());
	CHECK(in_child(new_map_child, NULL) == 0);
	return 0;
}

/*
 * A VM whose every verdict is in doubt: the journal names the reason once, not once per
 * verdict (a device asking many times a second would otherwise flood it).
 */
#define KEPT_ROUNDS 20

static int kept_rounds_child(void *arg)
{
	struct pt_range r = { SLOT_GPA, 4 * PG };
	struct pt_client_result res;
	struct pt_client *c = connect_svc();

	CHECK(c && pt_client_register(c, 0, PT_DIRTY_RING, &slot1, 1, NULL) == 0);
	for (uint32_t i = 0; i < KEPT_ROUNDS; i++) {
		CHECK(pt_client_arm(c, 2 + i) == 0 && pt_client_hint(c, 2 + i, &r, 1) == 0);
		CHECK(pt_client_query(c, 2 + i, PT_Q_HINTS, &res) == 0);
		CHECKF(res.v.free == 0 && res.v.kept_unsure == 4 && res.v.unsure_reason,
		       "round %u: free %llu kept_unsure %llu", i, (unsigned long long)res.v.free,
		       (unsigned long long)res.v.kept_unsure);
		pt_client_result_free(&res);
	}
	pt_client_close(c);
	return 0;
}

static int kept_verdicts_logged_once(void)
{
	char rest[96];
	pid_t pid;

	T_REQUIRE(need_service());
	pid = start_child(kept_rounds_child, NULL);
	CHECK(pid > 0 && wait_child(pid) == 0);
	CHECKF(svc_log_lines(pid, "pages kept, none confirmed") == 1,
	       "%d log lines for %d kept verdicts",
	       svc_log_lines(pid, "pages kept, none confirmed"), KEPT_ROUNDS);
	/* The VMM is gone: when its VM is released (a tick), the verdicts not logged are counted.
	 */
	snprintf(rest, sizeof(rest), "%d more verdicts kept, none confirmed", KEPT_ROUNDS - 1);
	for (unsigned ms = 0; ms < 10000 * t_time_scale() && !svc_log_lines(pid, rest); ms += 50)
		usleep(50 * 1000);
	CHECKF(svc_log_lines(pid, rest) == 1, "no \"%s\" line when the VM was released", rest);
	return 0;
}

/*
 * A taint BPF could not date (all ones, raise_to in writelog.bpf.c) keeps every verdict of the
 * VM until its VMM exits: the operator is told, in the journal's kept line, in status.json and
 * in the metrics. The child makes the mark as BPF would, through the service's pinned map.
 */
static char metrics_path[64];

static void metrics_remove(void)
{
	unlink(metrics_path);
}

/* The service of this binary writes its metrics (off in pt_spawn_service) to a file of ours. */
__attribute__((constructor)) static void metrics_on(void)
{
	static const char *args[3] = { "-m", metrics_path, NULL };

	snprintf(metrics_path, sizeof(metrics_path), "/tmp/pt-test-service-%d.prom", (int)getpid());
	svc_args = args;
	atexit(metrics_remove);
}

static bool saturated_shown(pid_t pid)
{
	static char buf[65536];
	const char *want = "pagetrack_vm_marks_saturated{vm=";
	char line[256];
	bool metric = false;
	FILE *f = fopen(metrics_path, "r");

	while (f && fgets(line, sizeof(line), f)) {
		char who[32];

		snprintf(who, sizeof(who), "pid=\"%d\"", (int)pid);
		metric |= !strncmp(line, want, strlen(want)) && strstr(line, who) &&
			  strstr(line, "} 1\n");
	}
	if (f)
		fclose(f);
	return metric && strstr(status_json(buf, sizeof(buf)), "\"marks_saturated\": true");
}

static int saturated_child(void *arg)
{
	const size_t len = sizeof(struct pt_vm_state) * PT_MAX_VMS;
	struct pt_range r = { SLOT_GPA, 4 * PG };
	struct pt_client *c = connect_svc();
	struct pt_client_result res;
	struct pt_vm_state *vms;
	char path[192];
	int fd, found = 0;

	CHECK(c && pt_client_register(c, 0, PT_DIRTY_RING, &slot1, 1, NULL) == 0);
	snprintf(path, sizeof(path), "%s/pt_vm_state", svc.pin_dir);
	fd = bpf_obj_get(path);
	CHECK(fd >= 0);
	vms = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	CHECK(vms != MAP_FAILED);
	for (uint32_t i = 0; i < PT_MAX_VMS; i++) {
		if (vms[i].tgid != (uint32_t)getpid() || !(vms[i].flags & PT_VM_ACTIVE))
			continue;
		__atomic_store_n(&vms[i].taint_epoch, ~0ull, __ATOMIC_SEQ_CST);
		found++;
	}
	munmap(vms, len);
	CHECKF(found == 1, "%d VMs of this pid in pt_vm_state", found);
	for (uint32_t i = 0; i < 3; i++) {
		CHECK(pt_client_arm(c, 2 + i) == 0 && pt_client_hint(c, 2 + i, &r, 1) == 0);
		CHECK(pt_client_query(c, 2 + i, PT_Q_HINTS, &res) == 0);
		CHECKF(res.v.free == 0 && res.v.kept_unsure == 4 &&
			       (res.v.unsure_reason & PT_WHY_TAINTED),
		       "round %u: free %llu kept_unsure %llu why %#x", i,
		       (unsigned long long)res.v.free, (unsigned long long)res.v.kept_unsure,
		       res.v.unsure_reason);
		pt_client_result_free(&res);
	}
	/* Shown while the VMM lives: status and metrics are rewritten every tick. */
	for (unsigned ms = 0; ms < 10000 * t_time_scale() && !saturated_shown(getpid()); ms += 50)
		usleep(50 * 1000);
	CHECKF(saturated_shown(getpid()), "marks_saturated not in status.json and metrics.prom");
	pt_client_close(c);
	return 0;
}

static int saturated_taint_told(void)
{
	pid_t pid;

	T_REQUIRE(need_service());
	pid = start_child(saturated_child, NULL);
	CHECK(pid > 0 && wait_child(pid) == 0);
	CHECKF(svc_log_lines(pid, "a mark BPF could not date") == 1,
	       "%d kept lines name the undated mark",
	       svc_log_lines(pid, "a mark BPF could not date"));
	return 0;
}

T_MAIN(T_CASE(round_trip_every_type), T_CASE(concurrent_64_clients), T_CASE(disconnect_mid_frame),
       T_CASE(malformed_frames), T_CASE(other_uid_refused), T_CASE(reconnect_same_pid),
       T_CASE(register_twice_and_takeover), T_CASE(register_coverage_bits),
       T_CASE(wr_read_lists_unsure_pages), T_CASE(real_vm_verdict), T_CASE(vmm_exit_releases_vm),
       T_CASE(reregister_new_map_starts_afresh), T_CASE(kept_verdicts_logged_once),
       T_CASE(saturated_taint_told))
