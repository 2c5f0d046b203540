// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_pump.h"
#include "bench_util.h"
#include "daemon/cmdstate.h"
#include "lib/proto.h"
#include "shared/log.h"
#include "writelog/vmlog.h"

#define RBUF	   (256 * 1024)
#define TIMEOUT_MS 30000

/* --- the device side ------------------------------------------------------------------------ */

int bench_conn_init(struct bench_conn *c, int fd, bool sink)
{
	memset(c, 0, sizeof(*c));
	c->fd = fd;
	c->sink = sink;
	c->rbuf = aligned_alloc(8, RBUF);
	if (!c->rbuf)
		return -ENOMEM;
	pt_framer_init(&c->fr, PT_FRAMER_REPLIES);
	bench_set_nonblock(fd, true);
	return 0;
}

void bench_conn_close(struct bench_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	pt_framer_release(&c->fr);
	free(c->rbuf);
	c->rbuf = NULL;
}

static void on_reply(struct bench_conn *c, const struct pt_hdr *h, const void *payload)
{
	struct pt_error e;

	switch (h->type) {
	case PT_MSG_ERROR:
		c->errors++;
		if (h->len >= sizeof(e)) {
			memcpy(&e, payload, sizeof(e));
			c->last_err = e.code;
		}
		break;
	case PT_MSG_VERDICT:
	case PT_MSG_WR_RECORDS:
		if (h->flags & PT_F_MORE)
			return;
		if (h->len >= sizeof(c->verdict))
			memcpy(&c->verdict, payload, sizeof(c->verdict));
		break;
	default:
		break;
	}
	c->done++;
}

/* Bytes read (> 0), 0 when nothing was there, or a negative errno. */
static int read_replies(struct bench_conn *c)
{
	ssize_t n = read(c->fd, c->rbuf, RBUF);
	const uint8_t *p = c->rbuf;
	size_t left;

	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -errno;
	if (!n)
		return -ECONNRESET;
	for (left = n; left;) {
		const struct pt_hdr *h;
		const void *pl;
		size_t used;
		int rc = pt_framer_feed(&c->fr, p, left, &used, &h, &pl);

		if (rc < 0)
			return -EPROTO;
		p += used;
		left -= used;
		if (rc == 1)
			on_reply(c, h, pl);
	}
	return n;
}

static int wait_io(struct bench_conn *c, bool want_out)
{
	struct pollfd pfd = { c->fd, (c->sink ? 0 : POLLIN) | (want_out ? POLLOUT : 0), 0 };
	int n = poll(&pfd, 1, TIMEOUT_MS);

	if (n < 0)
		return errno == EINTR ? 0 : -errno;
	return n ? 0 : -ETIMEDOUT;
}

int bench_pump(struct bench_conn *c, const void *buf, size_t len, uint64_t want)
{
	uint64_t target = c->done + want;
	const uint8_t *p = buf;
	size_t off = 0;
	int err;

	while (off < len || (!c->sink && c->done < target)) {
		bool progress = false;

		if (off < len) {
			ssize_t n = write(c->fd, p + off, len - off);

			if (n > 0) {
				off += n;
				progress = true;
			} else if (n < 0 && errno != EAGAIN && errno != EINTR) {
				return -errno;
			}
		}
		if (!c->sink) {
			err = read_replies(c);
			if (err < 0)
				return err;
			progress |= err > 0;
		}
		if (!progress) {
			err = wait_io(c, off < len);
			if (err)
				return err;
		}
	}
	return 0;
}

int bench_request(struct bench_conn *c, const void *req, size_t len)
{
	uint64_t errors = c->errors;
	int err = bench_pump(c, req, len, 1);

	if (err)
		return err;
	return c->errors != errors ? -c->last_err : 0;
}

int bench_register(struct bench_conn *c, uint32_t pid, const struct pt_reg_slot *slots, uint32_t n)
{
	uint8_t buf[PT_HDR_SIZE + sizeof(struct pt_register) +
		    PT_MAX_REG_SLOTS * sizeof(struct pt_reg_slot)];
	size_t len = pt_build_register(buf, sizeof(buf), 1, pid, PT_DIRTY_RING, slots, n);

	return len ? bench_request(c, buf, len) : -EINVAL;
}

/* --- request streams ------------------------------------------------------------------------ */

struct pt_range *bench_ranges(const struct pt_reg_slot *slots, uint32_t n, uint64_t range_len,
			      size_t *count)
{
	struct pt_range *r;
	size_t k = 0, total = 0;

	for (uint32_t i = 0; i < n; i++)
		total += (slots[i].size + range_len - 1) / range_len;
	r = malloc(total * sizeof(*r));
	if (!r)
		return NULL;
	for (uint32_t i = 0; i < n; i++) {
		for (uint64_t off = 0; off < slots[i].size; off += range_len) {
			uint64_t len = slots[i].size - off;

			r[k++] = (struct pt_range){ slots[i].gpa + off,
						    len < range_len ? len : range_len };
		}
	}
	*count = total;
	return r;
}

int bench_round_build(struct bench_round *r, uint32_t cmd, const struct pt_range *ranges, size_t n,
		      uint32_t per_frame)
{
	size_t frames = (n + per_frame - 1) / per_frame, cap, off = 0;
	const size_t cmd_len = PT_HDR_SIZE + sizeof(struct pt_cmd);
	uint32_t seq = 2;

	memset(r, 0, sizeof(*r));
	cap = frames * (PT_HDR_SIZE + sizeof(struct pt_hint)) + n * sizeof(*ranges) + cmd_len +
	      PT_HDR_SIZE + sizeof(struct pt_query);
	r->arm = malloc(cmd_len);
	r->body = malloc(cap);
	if (!r->arm || !r->body) {
		bench_round_free(r);
		return -ENOMEM;
	}
	r->arm_len = pt_build_cmd(r->arm, cmd_len, PT_MSG_ARM, 1, cmd);
	for (size_t i = 0; i < n; i += per_frame) {
		uint32_t k = n - i < per_frame ? n - i : per_frame;

		off += pt_build_hint(r->body + off, cap - off, seq++, cmd, ranges + i, k);
	}
	off += pt_build_cmd(r->body + off, cap - off, PT_MSG_STOP, seq++, cmd);
	off += pt_build_query(r->body + off, cap - off, seq++, cmd, PT_Q_HINTS);
	r->body_len = off;
	r->body_replies = frames + 2;
	r->records = n;
	return off == cap ? 0 : -EINVAL;
}

void bench_round_free(struct bench_round *r)
{
	free(r->arm);
	free(r->body);
	r->arm = r->body = NULL;
}

static void tally(const struct bench_conn *c, struct bench_run *out)
{
	if (c->sink)
		return;
	if (!c->verdict.unsure_reason)
		out->sure++;
	out->why |= c->verdict.unsure_reason;
	out->kept_written += c->verdict.kept_written;
}

static int one_round(struct bench_conn *c, const struct bench_round *x, bench_sync_fn sync,
		     void *arg)
{
	int err = bench_pump(c, x->arm, x->arm_len, 1);

	if (!err && sync)
		err = sync(arg);
	if (!err)
		err = bench_pump(c, x->body, x->body_len, x->body_replies);
	return err;
}

int bench_run_rounds(struct bench_conn *c, const struct bench_round *rounds, uint64_t max_rounds,
		     uint64_t max_ns, bench_sync_fn sync, void *arg, struct bench_run *out)
{
	uint64_t t0 = bench_now_ns(), bytes;
	int err = 0;

	memset(out, 0, sizeof(*out));
	while ((!max_rounds || out->rounds < max_rounds) &&
	       (!max_ns || !out->rounds || bench_now_ns() - t0 < max_ns)) {
		const struct bench_round *x = &rounds[out->rounds & 1];

		err = one_round(c, x, sync, arg);
		if (err)
			return err;
		tally(c, out);
		out->rounds++;
		out->records += x->records;
	}
	if (c->sink)
		err = bench_sink_finish(c->fd, &bytes);
	out->ns = bench_now_ns() - t0;
	return err;
}

/* --- baseline peers ------------------------------------------------------------------------- */

int bench_fork_peer(int *fd, pid_t *pid, int *child_fd)
{
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return -errno;
	*pid = fork();
	if (*pid < 0) {
		close(sv[0]);
		close(sv[1]);
		return -errno;
	}
	if (!*pid) {
		close(sv[0]);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		*child_fd = sv[1];
		return 0;
	}
	close(sv[1]);
	*fd = sv[0];
	return 0;
}

static void __attribute__((noreturn)) sink_main(int fd)
{
	size_t cap = 1 << 20;
	uint8_t *buf = malloc(cap);
	uint64_t total = 0;
	ssize_t n;

	while (buf && (n = read(fd, buf, cap)) > 0)
		total += n;
	bench_write_all(fd, &total, sizeof(total));
	_exit(0);
}

int bench_fork_sink(int *fd, pid_t *pid)
{
	int cfd = -1, err = bench_fork_peer(fd, pid, &cfd);

	if (!err && !*pid)
		sink_main(cfd);
	return err;
}

int bench_sink_finish(int fd, uint64_t *bytes)
{
	shutdown(fd, SHUT_WR);
	bench_set_nonblock(fd, false);
	return bench_read_all(fd, bytes, sizeof(*bytes));
}

static void __attribute__((noreturn)) echo_main(int fd, size_t msg)
{
	char buf[256];

	if (msg > sizeof(buf))
		_exit(1);
	while (!bench_read_all(fd, buf, msg) && !bench_write_all(fd, buf, msg))
		;
	_exit(0);
}

int bench_fork_echo(int *fd, pid_t *pid, size_t msg)
{
	int cfd = -1, err = bench_fork_peer(fd, pid, &cfd);

	if (!err && !*pid)
		echo_main(cfd, msg);
	return err;
}

void bench_child_reap(int fd, pid_t pid)
{
	if (fd >= 0)
		close(fd);
	if (pid > 0)
		waitpid(pid, NULL, 0);
}

/* --- the epoll + read()/write() loop over the same cmdstate functions ----------------------- */

struct ep_child {
	int fd;
	struct pt_framer fr;
	struct pt_vmctx *ctx;
	uint8_t *out;
	size_t out_len, out_cap;
	struct pt_range *ranges;
	size_t nranges, cap_ranges;
};

static uint8_t *ep_room(struct ep_child *e, size_t need)
{
	if (e->out_cap - e->out_len < need) {
		size_t cap =
			e->out_cap * 2 > e->out_len + need ? e->out_cap * 2 : e->out_len + need;
		uint8_t *p = realloc(e->out, cap);

		if (!p)
			_exit(3);
		e->out = p;
		e->out_cap = cap;
	}
	return e->out + e->out_len;
}

static int ep_collect(void *arg, uint64_t gpa, uint64_t len)
{
	struct ep_child *e = arg;

	return pt_ranges_append(&e->ranges, &e->nranges, &e->cap_ranges, 4096, gpa, len);
}

static int ep_query(struct ep_child *e, const struct pt_msg *m)
{
	const size_t per = (PT_MAX_PAYLOAD - sizeof(struct pt_verdict)) / sizeof(struct pt_range);
	struct pt_verdict_sum s;
	struct pt_verdict v;
	size_t done = 0;
	int err;

	e->nranges = 0;
	err = pt_cmd_verdict(e->ctx, m->cmd_id, &s, ep_collect, e);
	if (err)
		return err;
	if (s.why || !s.free)
		e->nranges = 0;
	v = (struct pt_verdict){ m->cmd_id,	 s.why,		s.hinted, s.free,
				 s.kept_written, s.kept_unsure, 0,	  0 };
	do {
		size_t n = e->nranges - done < per ? e->nranges - done : per;
		bool more = done + n < e->nranges;
		size_t need = PT_HDR_SIZE + sizeof(v) + n * sizeof(struct pt_range);

		v.nranges = n;
		e->out_len += pt_build_verdict(ep_room(e, need), need, PT_MSG_VERDICT, m->seq,
					       more ? PT_F_MORE : 0, &v, e->ranges + done);
		done += n;
	} while (done < e->nranges);
	return 0;
}

static int ep_apply(struct ep_child *e, const struct pt_msg *m, uint64_t *pages)
{
	switch (m->type) {
	case PT_MSG_ARM:
		return pt_cmd_arm(e->ctx, m->cmd_id);
	case PT_MSG_STOP:
		return pt_cmd_stop(e->ctx, m->cmd_id);
	case PT_MSG_DONE:
		return pt_cmd_done(e->ctx, m->cmd_id);
	case PT_MSG_HINT:
		return pt_cmd_hint(e->ctx, m->cmd_id, m->ranges, m->count, pages);
	case PT_MSG_REPORT:
		return pt_report_add(e->ctx, m->ranges, m->count, pages);
	case PT_MSG_PING:
		return 0;
	default:
		return -PT_E_BAD_TYPE;
	}
}

static void ep_frame(struct ep_child *e, const struct pt_hdr *h, const void *payload)
{
	const size_t room = PT_HDR_SIZE + sizeof(struct pt_error) + PT_MAX_REASON;
	uint64_t pages = 0;
	struct pt_msg m;
	int err = pt_frame_parse(h, payload, &m);

	if (!err && m.type == PT_MSG_QUERY)
		err = ep_query(e, &m);
	else if (!err)
		err = ep_apply(e, &m, &pages);
	if (err)
		e->out_len += pt_build_error(ep_room(e, room), room, h->seq, -err, "request");
	else if (m.type != PT_MSG_QUERY)
		e->out_len += pt_build_ack(ep_room(e, room), room, h->seq,
					   m.ranges ? m.count : m.cmd_id, pages, 0);
}

/* The child's VMs: one per connection, each under its own pid, as the service keys them. */
static int ep_setup(struct ep_child *e, struct pt_tracker **t, uint32_t pid,
		    const struct pt_reg_slot *slots, uint32_t n)
{
	struct pt_loader_opts lo = { .no_pin = true, .no_attach = true, .log_mb = 40, .tdp = -1 };
	struct pt_slot_cfg cfg[PT_MAX_REG_SLOTS];
	uint32_t vm;
	bool existed;
	int err = 0;

	pt_log_level = LOG_WARNING;
	for (uint32_t i = 0; i < n && i < PT_MAX_REG_SLOTS; i++)
		cfg[i] = (struct pt_slot_cfg){ slots[i].gpa, slots[i].size, slots[i].id,
					       slots[i].flags & PT_REG_SLOT_LOGGED };
	if (!*t)
		err = pt_tracker_open(t, &lo);
	if (!err)
		err = pt_vm_track(*t, pid, cfg, n, 0, &vm, &existed);
	if (!err)
		err = pt_vmctx_new(&e->ctx, *t, vm, pid, PT_DIRTY_RING, true);
	pt_framer_init(&e->fr, PT_FRAMER_REQUESTS);
	return err;
}

/* Reads what one connection has, answers every whole frame; false once it is closed. */
static bool ep_serve(struct ep_child *e, uint8_t *buf)
{
	const uint8_t *p = buf;
	ssize_t n = read(e->fd, buf, RBUF);

	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return true;
	if (n <= 0)
		return false;
	while (n > 0) {
		const struct pt_hdr *h;
		const void *pl;
		size_t used;
		int rc = pt_framer_feed(&e->fr, p, n, &used, &h, &pl);

		if (rc < 0)
			_exit(4);
		p += used;
		n -= used;
		if (rc == 1)
			ep_frame(e, h, pl);
	}
	if (e->out_len && bench_write_all(e->fd, e->out, e->out_len))
		return false;
	e->out_len = 0;
	return true;
}

static void __attribute__((noreturn)) ep_loop(struct ep_child *e, int n)
{
	uint8_t *buf = aligned_alloc(8, RBUF);
	struct epoll_event ev[64];
	int ep = epoll_create1(EPOLL_CLOEXEC), open = n;

	if (!buf || ep < 0)
		_exit(2);
	for (int i = 0; i < n; i++) {
		ev[0] = (struct epoll_event){ .events = EPOLLIN, .data.u32 = i };
		if (epoll_ctl(ep, EPOLL_CTL_ADD, e[i].fd, &ev[0]))
			_exit(2);
	}
	while (open > 0) {
		int k = epoll_wait(ep, ev, 64, -1);

		if (k < 0 && errno != EINTR)
			_exit(2);
		for (int i = 0; i < k; i++) {
			struct ep_child *c = &e[ev[i].data.u32];

			if (!ep_serve(c, buf)) {
				epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
				open--;
			}
		}
	}
	_exit(0);
}

int bench_fork_epoll_multi(int *fds, int n, pid_t *pid, const struct pt_reg_slot *slots,
			   uint32_t nslots, const pid_t *vm_pids)
{
	int sv[64][2], err = 0;
	struct pt_tracker *t = NULL;
	struct ep_child *e;
	char ready = 'R';

	if (n < 1 || n > 64)
		return -EINVAL;
	for (int i = 0; i < n; i++) {
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv[i])) {
			err = -errno;
			while (i--) {
				close(sv[i][0]);
				close(sv[i][1]);
			}
			return err;
		}
	}
	*pid = fork();
	if (*pid) {
		for (int i = 0; i < n; i++) {
			close(sv[i][1]);
			fds[i] = sv[i][0];
		}
		if (*pid < 0)
			err = -errno;
		if (!err)
			err = bench_read_all(fds[0], &ready, 1);
		if (!err && ready != 'R')
			err = -EPROTO;
		if (err) {
			for (int i = 0; i < n; i++)
				close(fds[i]);
			if (*pid > 0)
				bench_child_reap(-1, *pid);
		}
		return err;
	}
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	e = calloc((size_t)n, sizeof(*e));
	for (int i = 0; e && !err && i < n; i++) {
		close(sv[i][0]);
		e[i].fd = sv[i][1];
		err = ep_setup(&e[i], &t, vm_pids ? (uint32_t)vm_pids[i] : (uint32_t)getpid(),
			       slots, nslots);
	}
	ready = !e || err ? 'E' : 'R';
	bench_write_all(sv[0][1], &ready, 1);
	if (ready != 'R')
		_exit(1);
	ep_loop(e, n);
}

int bench_fork_epoll(int *fd, pid_t *pid, const struct pt_reg_slot *slots, uint32_t n)
{
	return bench_fork_epoll_multi(fd, 1, pid, slots, n, NULL);
}
