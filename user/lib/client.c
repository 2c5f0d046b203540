// SPDX-License-Identifier: LGPL-2.1 OR BSD-2-Clause
/*
 * libpagetrack client: the balloon device's side of docs/PROTOCOL.md. All I/O goes through
 * one non-blocking socket, one output queue and one reply framer, so blocking calls and
 * queued hints can be mixed: a blocking call appends its request to the queue and then
 * writes and reads until its reply has arrived, dispatching hint acks on the way.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <linux/userfaultfd.h>
#include <time.h>
#include <unistd.h>

#include <pagetrack/client.h>

#include "proto.h"

#define RBUF_SIZE (64u << 10)

struct pt_client;

/* The one blocking request in flight. */
struct waiter {
	uint32_t seq;
	uint8_t want; /* reply type */
	bool done;
	int err;
	struct pt_ack ack;
	/* VERDICT / WR_RECORDS / WR_CAPS_REPLY handling, per frame */
	int (*on_frame)(struct waiter *w, const struct pt_msg *m);
	pt_client_verdict_cb cb;
	void *cb_arg;
	struct pt_wr_caps caps;
};

struct pt_client {
	int fd;
	int timeout_ms;
	int broken; /* sticky negative errno: the connection cannot be trusted any more */
	uint32_t next_seq;
	uint64_t coverage;
	uint64_t token; /* of the last registration */

	struct pt_framer fr;
	uint8_t *rbuf; /* 8-aligned, so whole frames are parsed in place */

	uint8_t *wbuf; /* output queue: bytes [woff, wlen) are unsent */
	size_t wcap, woff, wlen;
	size_t open_off; /* offset of the open (still growing) HINT frame, or SIZE_MAX */
	uint32_t open_cmd;

	struct waiter *w;
	int hint_err; /* first error of a hint frame since pt_client_hint() started */
	pt_client_ack_cb ack_cb;
	void *ack_arg;
	struct pt_client_stats st;
	struct pt_client_error last;
};

int pt_client_errno(int code)
{
	switch (code < 0 ? -code : code) {
	case 0:
		return 0;
	case PT_E_BAD_MAGIC:
	case PT_E_BAD_VERSION:
	case PT_E_BAD_TYPE:
		return -EPROTO;
	case PT_E_BAD_LENGTH:
		return -EMSGSIZE;
	case PT_E_RESERVED_CMD:
		return -EINVAL;
	case PT_E_STALE_CMD:
		return -ESTALE;
	case PT_E_CMD_REUSE:
		return -EALREADY;
	case PT_E_BAD_RANGE:
		return -ERANGE;
	case PT_E_NOT_REGISTERED:
		return -ENOTCONN;
	case PT_E_PERM:
		return -EPERM;
	case PT_E_BUSY:
		return -EBUSY;
	case PT_E_STATE:
		return -EBADFD;
	case PT_E_BAD_FIELD:
		return -EBADMSG;
	default: /* PT_E_INTERNAL and codes newer than this library */
		return -EIO;
	}
}

static void set_error(struct pt_client *c, int code, uint32_t seq, const char *reason, size_t len)
{
	if (len >= sizeof(c->last.reason))
		len = sizeof(c->last.reason) - 1;
	c->last.code = code;
	c->last.seq = seq;
	memcpy(c->last.reason, reason, len);
	c->last.reason[len] = 0;
}

/* A local failure that leaves the stream in an unknown state: poison the connection. */
static int fail(struct pt_client *c, int err, const char *why)
{
	if (!c->broken) {
		c->broken = err;
		set_error(c, 0, 0, why, strlen(why));
	}
	return c->broken;
}

/* --- output queue ----------------------------------------------------------------------- */

static int wreserve(struct pt_client *c, size_t n)
{
	size_t cap;
	uint8_t *nb;

	if (c->woff && c->woff == c->wlen && c->open_off == SIZE_MAX)
		c->woff = c->wlen = 0;
	if (c->wcap - c->wlen >= n)
		return 0;
	/* Reclaim the sent prefix before growing (the open frame moves with it). */
	if (c->woff) {
		memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
		if (c->open_off != SIZE_MAX)
			c->open_off -= c->woff;
		c->wlen -= c->woff;
		c->woff = 0;
		if (c->wcap - c->wlen >= n)
			return 0;
	}
	cap = c->wcap ? c->wcap : RBUF_SIZE;
	while (cap - c->wlen < n)
		cap *= 2;
	nb = realloc(c->wbuf, cap);
	if (!nb)
		return -ENOMEM;
	c->wbuf = nb;
	c->wcap = cap;
	return 0;
}

/* Fixes the open HINT frame's length and count: it is complete and may be sent. */
static void seal_hint(struct pt_client *c)
{
	struct pt_hdr h;
	struct pt_hint hint;
	size_t len;

	if (c->open_off == SIZE_MAX)
		return;
	len = c->wlen - c->open_off - PT_HDR_SIZE;
	memcpy(&h, c->wbuf + c->open_off, sizeof(h));
	h.len = len;
	hint.cmd_id = c->open_cmd;
	hint.count = (len - sizeof(hint)) / sizeof(struct pt_range);
	memcpy(c->wbuf + c->open_off, &h, sizeof(h));
	memcpy(c->wbuf + c->open_off + PT_HDR_SIZE, &hint, sizeof(hint));
	c->open_off = SIZE_MAX;
}

static uint32_t open_count(const struct pt_client *c)
{
	return (c->wlen - c->open_off - PT_HDR_SIZE - sizeof(struct pt_hint)) /
	       sizeof(struct pt_range);
}

static size_t unsent(const struct pt_client *c)
{
	return c->wlen - c->woff;
}

bool pt_client_want_write(const struct pt_client *c)
{
	return c->wlen > c->woff;
}

/* The service closed the connection: an ERROR it sent first (a refusal) says why. */
static int send_failed(struct pt_client *c, int err)
{
	if (err == -EPIPE || err == -ECONNRESET)
		pt_client_poll_replies(c);
	return fail(c, err, "send failed");
}

int pt_client_flush(struct pt_client *c)
{
	if (c->broken)
		return c->broken;
	seal_hint(c);
	while (c->woff < c->wlen) {
		ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return -EAGAIN;
		if (n < 0)
			return send_failed(c, -errno);
		c->woff += n;
	}
	c->woff = c->wlen = 0;
	return 0;
}

long pt_client_queue_hint(struct pt_client *c, uint32_t cmd_id, const struct pt_range *ranges,
			  size_t n)
{
	size_t done = 0;

	if (c->broken)
		return c->broken;
	while (done < n) {
		size_t room, k;

		if (c->open_off != SIZE_MAX &&
		    (c->open_cmd != cmd_id || open_count(c) == PT_CLIENT_BATCH))
			seal_hint(c);
		if (c->open_off == SIZE_MAX) {
			struct pt_hint h = { .cmd_id = cmd_id };

			if (unsent(c) + PT_HDR_SIZE + sizeof(h) + sizeof(*ranges) > PT_CLIENT_QUEUE)
				break;
			if (wreserve(c, PT_HDR_SIZE + sizeof(h)))
				return done ? (long)done : -ENOMEM;
			c->open_off = c->wlen;
			pt_encode_hdr(c->wbuf + c->wlen, PT_MAX_FRAME, PT_MSG_HINT, 0, 0,
				      c->next_seq++);
			memcpy(c->wbuf + c->wlen + PT_HDR_SIZE, &h, sizeof(h));
			c->wlen += PT_HDR_SIZE + sizeof(h);
			c->open_cmd = cmd_id;
			c->st.hint_frames++;
			c->st.inflight++;
		}
		k = PT_CLIENT_BATCH - open_count(c);
		room = (PT_CLIENT_QUEUE - unsent(c)) / sizeof(*ranges);
		if (k > room)
			k = room;
		if (k > n - done)
			k = n - done;
		if (!k)
			break;
		if (wreserve(c, k * sizeof(*ranges)))
			return done ? (long)done : -ENOMEM;
		memcpy(c->wbuf + c->wlen, ranges + done, k * sizeof(*ranges));
		c->wlen += k * sizeof(*ranges);
		for (size_t i = 0; i < k; i++)
			c->st.hint_pages += ranges[done + i].len / PT_PROTO_PAGE;
		done += k;
	}
	return done || !n ? (long)done : -EAGAIN;
}

/* --- replies ---------------------------------------------------------------------------- */

static void on_error_frame(struct pt_client *c, const struct pt_msg *m)
{
	set_error(c, m->error->code, m->seq, m->reason, m->reason_len);
}

/*
 * An ERROR that answers no request: the service refuses the connection (a uid over its
 * connection quota, too many descriptors) and closes it (PROTOCOL.md section 2). Its code and
 * reason are what the device needs to see, not a protocol error.
 */
static int unsolicited_error(struct pt_client *c, const struct pt_msg *m)
{
	if (!c->broken) {
		on_error_frame(c, m);
		c->broken = pt_client_errno(m->error->code);
	}
	return c->broken;
}

/* A reply that is not the waiter's: it answers a queued hint frame. */
static int dispatch_async(struct pt_client *c, const struct pt_msg *m)
{
	int err = 0;

	if (!c->st.inflight && m->type == PT_MSG_ERROR)
		return unsolicited_error(c, m);
	if (!c->st.inflight || (m->type != PT_MSG_ACK && m->type != PT_MSG_ERROR))
		return fail(c, -EPROTO, "reply to no outstanding request");
	c->st.inflight--;
	if (m->type == PT_MSG_ACK) {
		c->st.pages_recorded += m->ack->pages;
		c->st.pages_ignored += m->ack->ignored;
	} else {
		on_error_frame(c, m);
		err = pt_client_errno(m->error->code);
		c->st.hint_errors++;
		if (!c->hint_err)
			c->hint_err = err;
	}
	if (c->ack_cb)
		c->ack_cb(c->ack_arg, m->seq, err, m->type == PT_MSG_ACK ? m->ack : NULL);
	return 0;
}

static int dispatch_waiter(struct pt_client *c, struct waiter *w, const struct pt_msg *m)
{
	int err;

	if (m->type == PT_MSG_ERROR) {
		on_error_frame(c, m);
		w->err = pt_client_errno(m->error->code);
		w->done = true;
		return 0;
	}
	if (m->type != w->want)
		return fail(c, -EPROTO, "unexpected reply type");
	if (!w->on_frame) {
		w->ack = *m->ack;
		w->done = true;
		return 0;
	}
	err = w->on_frame(w, m);
	if (err && !w->err)
		w->err = err;
	if (!(m->flags & PT_F_MORE))
		w->done = true;
	return 0;
}

static int dispatch(struct pt_client *c, const struct pt_hdr *h, const void *payload)
{
	struct pt_msg m;
	int err = pt_frame_parse(h, payload, &m);

	if (err)
		return fail(c, -EPROTO, "malformed reply from the service");
	if (c->w && !c->w->done && m.seq == c->w->seq)
		return dispatch_waiter(c, c->w, &m);
	return dispatch_async(c, &m);
}

static int feed(struct pt_client *c, const uint8_t *p, size_t len)
{
	int handled = 0;

	while (len) {
		const struct pt_hdr *h;
		const void *payload;
		size_t used;
		int rc = pt_framer_feed(&c->fr, p, len, &used, &h, &payload);

		if (rc < 0)
			return fail(c, -EPROTO, "bad frame header from the service");
		p += used;
		len -= used;
		if (rc == 1) {
			rc = dispatch(c, h, payload);
			if (rc)
				return rc;
			handled++;
		}
	}
	return handled;
}

int pt_client_poll_replies(struct pt_client *c)
{
	int handled = 0;

	if (c->broken)
		return c->broken;
	for (;;) {
		ssize_t n = recv(c->fd, c->rbuf, RBUF_SIZE, 0);
		int rc;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return handled;
		if (n < 0)
			return fail(c, -errno, "recv failed");
		if (n == 0)
			return fail(c, -ECONNRESET, "service closed the connection");
		rc = feed(c, c->rbuf, n);
		if (rc < 0)
			return rc;
		handled += rc;
	}
}

/* --- blocking core ---------------------------------------------------------------------- */

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Writes and reads until @cond holds; keeps reading while writing (see backpressure). */
static int run_until(struct pt_client *c, bool (*cond)(struct pt_client *c))
{
	int64_t deadline = c->timeout_ms < 0 ? -1 : now_ms() + c->timeout_ms;

	for (;;) {
		struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
		int left = -1, rc;

		rc = pt_client_flush(c);
		if (rc && rc != -EAGAIN)
			return rc;
		rc = pt_client_poll_replies(c);
		if (rc < 0)
			return rc;
		if (cond(c))
			return 0;
		if (pt_client_want_write(c))
			pfd.events |= POLLOUT;
		if (deadline >= 0) {
			left = deadline - now_ms();
			if (left <= 0)
				return fail(c, -ETIMEDOUT, "timed out waiting for the service");
		}
		rc = poll(&pfd, 1, left);
		if (rc < 0 && errno != EINTR)
			return fail(c, -errno, "poll failed");
	}
}

static bool waiter_done(struct pt_client *c)
{
	return c->w->done;
}

/* Queues the request built in @frame, waits for its (last) reply. */
static int transact(struct pt_client *c, const void *frame, size_t len, struct waiter *w)
{
	int err;

	if (c->broken)
		return c->broken;
	if (!len)
		return -EMSGSIZE;
	seal_hint(c);
	err = wreserve(c, len);
	if (err)
		return err;
	memcpy(c->wbuf + c->wlen, frame, len);
	c->wlen += len;
	memcpy(&w->seq, (const uint8_t *)frame + offsetof(struct pt_hdr, seq), sizeof(w->seq));
	c->w = w;
	err = run_until(c, waiter_done);
	c->w = NULL;
	return err ? err : w->err;
}

/* Small requests are built on the stack; big ones (INFLATE, WR_READ) in a heap buffer. */
#define SMALL_FRAME 1024

static int simple(struct pt_client *c,
		  size_t (*build)(struct pt_client *c, void *buf, size_t cap, const void *arg),
		  const void *arg, size_t need, struct waiter *w)
{
	uint8_t small[SMALL_FRAME] __attribute__((aligned(8)));
	uint8_t *buf = need <= sizeof(small) ? small : malloc(need);
	int err;

	if (!buf)
		return -ENOMEM;
	err = transact(c, buf, build(c, buf, need, arg), w);
	if (buf != small)
		free(buf);
	return err;
}

/* --- requests --------------------------------------------------------------------------- */

struct cmd_arg {
	unsigned int type;
	uint32_t cmd_id;
};

static size_t build_cmd(struct pt_client *c, void *buf, size_t cap, const void *arg)
{
	const struct cmd_arg *a = arg;

	return pt_build_cmd(buf, cap, a->type, c->next_seq++, a->cmd_id);
}

static int cmd(struct pt_client *c, unsigned int type, uint32_t cmd_id)
{
	struct cmd_arg a = { type, cmd_id };
	struct waiter w = { .want = PT_MSG_ACK };

	return simple(c, build_cmd, &a, SMALL_FRAME, &w);
}

int pt_client_arm(struct pt_client *c, uint32_t cmd_id)
{
	return cmd(c, PT_MSG_ARM, cmd_id);
}

int pt_client_stop(struct pt_client *c, uint32_t cmd_id)
{
	return cmd(c, PT_MSG_STOP, cmd_id);
}

int pt_client_done(struct pt_client *c, uint32_t cmd_id)
{
	return cmd(c, PT_MSG_DONE, cmd_id);
}

struct reg_arg {
	uint32_t pid, mode, n;
	const struct pt_reg_slot *slots;
};

static size_t build_reg(struct pt_client *c, void *buf, size_t cap, const void *arg)
{
	const struct reg_arg *a = arg;

	return pt_build_register(buf, cap, c->next_seq++, a->pid, a->mode, a->slots, a->n);
}

/* What a registration's ACK tells the device: coverage, the resume token, the handle. */
static void registered(struct pt_client *c, const struct waiter *w, uint32_t *handle)
{
	c->coverage = w->ack.pages;
	c->token = w->ack.token;
	if (handle)
		*handle = w->ack.value32;
}

int pt_client_register(struct pt_client *c, uint32_t vmm_pid, enum pt_dirty_mode mode,
		       const struct pt_reg_slot *slots, uint32_t nslots, uint32_t *handle)
{
	struct reg_arg a = { vmm_pid ? vmm_pid : (uint32_t)getpid(), mode, nslots, slots };
	struct waiter w = { .want = PT_MSG_ACK };
	int err;

	if (nslots > PT_MAX_REG_SLOTS)
		return -E2BIG;
	err = simple(c, build_reg, &a, SMALL_FRAME, &w);
	if (err)
		return err;
	registered(c, &w, handle);
	return 0;
}

/*
 * Sends @frame with @fds attached to its first byte, after everything queued before it, so
 * that the service finds the descriptors when it reads this frame. A partial send queues the
 * rest normally: the descriptors went with the first byte.
 */
static int send_with_fds(struct pt_client *c, const uint8_t *frame, size_t len, const int *fds,
			 uint32_t nfds)
{
	char ctl[CMSG_SPACE(PT_MAX_REG_FDS * sizeof(int))] __attribute__((aligned(8)));
	struct iovec iov = { (void *)frame, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *cm;
	ssize_t n;
	int err;

	if (!nfds || nfds > PT_MAX_REG_FDS)
		return -EINVAL;
	seal_hint(c);
	while (pt_client_want_write(c)) {
		struct pollfd pfd = { .fd = c->fd, .events = POLLOUT };

		err = pt_client_flush(c);
		if (err && err != -EAGAIN)
			return err;
		if (err && poll(&pfd, 1, c->timeout_ms) <= 0)
			return fail(c, -ETIMEDOUT, "timed out sending");
	}
	memset(ctl, 0, sizeof(ctl));
	mh.msg_control = ctl;
	mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
	cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
	memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
	do
		n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return send_failed(c, -errno);
	if (!n) /* a nonblocking socket with an empty queue takes at least a byte */
		return fail(c, -EIO, "sendmsg failed");
	if ((size_t)n == len) /* all sent (and wbuf may still be NULL: no memcpy) */
		return 0;
	err = wreserve(c, len - n);
	if (err)
		return err;
	memcpy(c->wbuf + c->wlen, frame + n, len - n);
	c->wlen += len - n;
	return 0;
}

int pt_client_register2(struct pt_client *c, const struct pt_client_reg *reg, uint32_t *handle)
{
	struct pt_register2 r = { .vmm_pid = reg->vmm_pid ? reg->vmm_pid : (uint32_t)getpid(),
				  .mode = reg->mode,
				  .nslots = reg->nslots,
				  .nfds = reg->nfds,
				  .resume = reg->resume };
	uint8_t buf[sizeof(struct pt_hdr) + sizeof(r) +
		    PT_MAX_REG_SLOTS * sizeof(struct pt_reg_slot2)] __attribute__((aligned(8)));
	struct waiter w = { .want = PT_MSG_ACK };
	size_t len;
	int err;

	if (c->broken)
		return c->broken;
	if (reg->nslots > PT_MAX_REG_SLOTS)
		return -E2BIG;
	len = pt_build_register2(buf, sizeof(buf), c->next_seq++, &r, reg->slots);
	if (!len)
		return -EMSGSIZE;
	memcpy(&w.seq, buf + offsetof(struct pt_hdr, seq), sizeof(w.seq));
	err = send_with_fds(c, buf, len, reg->fds, reg->nfds);
	if (err)
		return err;
	c->w = &w;
	err = run_until(c, waiter_done);
	c->w = NULL;
	err = err ? err : w.err;
	if (err)
		return err;
	registered(c, &w, handle);
	return 0;
}

uint64_t pt_client_token(const struct pt_client *c)
{
	return c->token;
}

/* Kernel ABI older headers lack (values of include/uapi/linux/userfaultfd.h; the service's
 * copy with versions is user/writelog/uffd_abi.h, which the library cannot include). */
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12) /* Linux 5.19 */
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13) /* Linux 6.4 */
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15) /* Linux 6.7 */
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

static int uffd_new(void)
{
	int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	/* Without the right to handle kernel-mode faults (vm.unprivileged_userfaultfd = 0): the
	 * asynchronous write-protect this needs is resolved without a handler anyway. */
	if (fd < 0 && errno == EPERM)
		fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	return fd < 0 ? -errno : fd;
}

/* Which features this kernel offers (a throwaway uffd: UFFDIO_API works once per uffd). */
static int uffd_features(uint64_t *features)
{
	struct uffdio_api api = { .api = UFFD_API };
	int fd = uffd_new(), err = 0;

	if (fd < 0)
		return fd;
	if (ioctl(fd, UFFDIO_API, &api))
		err = -errno;
	close(fd);
	*features = api.features;
	return err;
}

/* A userfaultfd with async write-protect, every slot registered in WP mode. */
static int uffd_setup(const struct pt_reg_slot2 *slots, uint32_t nslots)
{
	const uint64_t need = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
	struct uffdio_api api = { .api = UFFD_API };
	uint64_t have;
	int fd, err = uffd_features(&have);

	if (err)
		return err;
	if ((have & need) != need)
		return -EOPNOTSUPP;
	api.features = need | (have & UFFD_FEATURE_WP_HUGETLBFS_SHMEM);
	fd = uffd_new();
	if (fd < 0)
		return fd;
	if (ioctl(fd, UFFDIO_API, &api))
		goto fail;
	for (uint32_t i = 0; i < nslots; i++) {
		struct uffdio_register reg = { .range = { slots[i].hva, slots[i].size },
					       .mode = UFFDIO_REGISTER_MODE_WP };

		if (ioctl(fd, UFFDIO_REGISTER, &reg))
			goto fail;
	}
	return fd;
fail:
	err = -errno;
	close(fd); /* unregisters whatever was registered */
	return err;
}

int pt_client_register_uffd(struct pt_client *c, const struct pt_reg_slot2 *slots, uint32_t nslots,
			    int kvm_vm_fd, int *uffd, uint32_t *handle)
{
	struct pt_client_reg reg = { .mode = PT_TRACK_UFFD, .slots = slots, .nslots = nslots };
	bool created = *uffd < 0;
	int fds[3], fd = *uffd, pm, err;

	if (c->broken)
		return c->broken;
	if (!nslots || nslots > PT_MAX_REG_SLOTS)
		return -EINVAL;
	if (created) {
		fd = uffd_setup(slots, nslots);
		if (fd < 0)
			return fd;
	}
	pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pm < 0) {
		err = -errno;
		goto out;
	}
	fds[0] = fd;
	fds[1] = pm;
	fds[2] = kvm_vm_fd;
	reg.fds = fds;
	reg.nfds = kvm_vm_fd >= 0 ? 3 : 2;
	err = pt_client_register2(c, &reg, handle);
	close(pm);
out:
	if (err && created)
		close(fd);
	else
		*uffd = fd;
	return err;
}

uint64_t pt_client_coverage(const struct pt_client *c)
{
	return c->coverage;
}

static bool hints_acked(struct pt_client *c)
{
	return !c->st.inflight && !pt_client_want_write(c);
}

int pt_client_hint(struct pt_client *c, uint32_t cmd_id, const struct pt_range *ranges, size_t n)
{
	int err;

	c->hint_err = 0;
	while (n) {
		long q = pt_client_queue_hint(c, cmd_id, ranges, n);

		if (q == -EAGAIN) {
			/* Queue full: write (and read acks) until some of it is out. */
			err = pt_client_flush(c);
			if (err == -EAGAIN) {
				struct pollfd pfd = { c->fd, POLLIN | POLLOUT, 0 };

				if (poll(&pfd, 1, c->timeout_ms) == 0)
					return fail(c, -ETIMEDOUT, "timed out sending hints");
				err = pt_client_poll_replies(c);
				if (err < 0)
					return err;
			} else if (err) {
				return err;
			}
			continue;
		}
		if (q < 0)
			return (int)q;
		ranges += q;
		n -= q;
	}
	err = run_until(c, hints_acked);
	return err ? err : c->hint_err;
}

struct ranges_arg {
	unsigned int type;
	uint32_t n;
	const struct pt_range *r;
};

static size_t build_ranges(struct pt_client *c, void *buf, size_t cap, const void *arg)
{
	const struct ranges_arg *a = arg;

	return pt_build_report(buf, cap, a->type, c->next_seq++, a->r, a->n);
}

static size_t ranges_frame(uint32_t n)
{
	return PT_HDR_SIZE + sizeof(struct pt_report) + (size_t)n * sizeof(struct pt_range);
}

static int ranges_req(struct pt_client *c, unsigned int type, const struct pt_range *r, uint32_t n,
		      uint64_t *pages)
{
	struct ranges_arg a = { type, n, r };
	struct waiter w = { .want = PT_MSG_ACK };
	int err;

	if (ranges_frame(n) > PT_MAX_FRAME)
		return -E2BIG;
	err = simple(c, build_ranges, &a, ranges_frame(n), &w);
	if (!err && pages)
		*pages = w.ack.pages;
	return err;
}

int pt_client_report(struct pt_client *c, const struct pt_range *ranges, uint32_t n,
		     uint64_t *pages)
{
	if (n > PT_MAX_REPORT)
		return -E2BIG;
	return ranges_req(c, PT_MSG_REPORT, ranges, n, pages);
}

int pt_client_inflate(struct pt_client *c, const struct pt_range *ranges, uint32_t n,
		      uint64_t *pages)
{
	return ranges_req(c, PT_MSG_INFLATE, ranges, n, pages);
}

int pt_client_deflate(struct pt_client *c, const struct pt_range *ranges, uint32_t n,
		      uint64_t *pages)
{
	return ranges_req(c, PT_MSG_DEFLATE, ranges, n, pages);
}

int pt_client_written(struct pt_client *c, const struct pt_range *ranges, uint32_t n,
		      uint64_t *pages)
{
	return ranges_req(c, PT_MSG_WRITTEN, ranges, n, pages);
}

static size_t build_ping(struct pt_client *c, void *buf, size_t cap, const void *arg)
{
	return pt_build_empty(buf, cap, *(const unsigned int *)arg, c->next_seq++);
}

int pt_client_ping(struct pt_client *c)
{
	static const unsigned int type = PT_MSG_PING;
	struct waiter w = { .want = PT_MSG_ACK };

	return simple(c, build_ping, &type, SMALL_FRAME, &w);
}

static int caps_frame(struct waiter *w, const struct pt_msg *m)
{
	w->caps = *m->caps;
	return 0;
}

int pt_client_wr_caps(struct pt_client *c, struct pt_wr_caps *caps)
{
	static const unsigned int type = PT_MSG_WR_CAPS;
	struct waiter w = { .want = PT_MSG_WR_CAPS_REPLY, .on_frame = caps_frame };
	int err = simple(c, build_ping, &type, SMALL_FRAME, &w);

	if (!err)
		*caps = w.caps;
	return err;
}

/* --- verdicts --------------------------------------------------------------------------- */

static int verdict_frame(struct waiter *w, const struct pt_msg *m)
{
	if (w->err) /* drain the rest of a failed reply */
		return 0;
	return w->cb(w->cb_arg, m->verdict, m->ranges, m->count, !(m->flags & PT_F_MORE));
}

struct query_arg {
	uint32_t cmd_id, what;
};

static size_t build_query(struct pt_client *c, void *buf, size_t cap, const void *arg)
{
	const struct query_arg *a = arg;

	return pt_build_query(buf, cap, c->next_seq++, a->cmd_id, a->what);
}

int pt_client_query_cb(struct pt_client *c, uint32_t cmd_id, uint32_t what, pt_client_verdict_cb cb,
		       void *arg)
{
	struct query_arg a = { cmd_id, what };
	struct waiter w = {
		.want = PT_MSG_VERDICT, .on_frame = verdict_frame, .cb = cb, .cb_arg = arg
	};

	return simple(c, build_query, &a, SMALL_FRAME, &w);
}

/* Collects frames into a pt_client_result; counts pages to check them against the totals,
 * and the order of the ranges (ascending, disjoint: PROTOCOL.md section 6). */
struct collect {
	struct pt_client_result *res;
	size_t cap;
	uint64_t pages;
	uint64_t end; /* of the last range */
	bool disorder;
};

static int collect_frame(void *arg, const struct pt_verdict *v, const struct pt_range *r,
			 uint32_t n, bool last)
{
	struct collect *col = arg;
	struct pt_client_result *res = col->res;
	size_t have = res->v.nranges;

	if (have + n > col->cap) {
		size_t cap = col->cap ? col->cap : 256;
		struct pt_range *nr;

		while (cap < have + n)
			cap *= 2;
		nr = realloc(res->ranges, cap * sizeof(*nr));
		if (!nr)
			return -ENOMEM;
		res->ranges = nr;
		col->cap = cap;
	}
	if (n)
		memcpy(res->ranges + have, r, n * sizeof(*r));
	for (uint32_t i = 0; i < n; i++) {
		col->disorder |= r[i].gpa < col->end;
		col->end = r[i].gpa + r[i].len;
		col->pages += r[i].len / PT_PROTO_PAGE;
	}
	if (last) {
		res->v = *v;
		res->v.nranges = have + n;
	} else {
		res->v.nranges = have + n;
	}
	return 0;
}

static int collected(struct pt_client *c, int err, struct collect *col, bool verdict)
{
	struct pt_client_result *res = col->res;

	/* The listed pages must be exactly the `free` ones (WR_RECORDS: the written and unsure
	 * ones), ascending and disjoint, or nothing can be trusted. */
	if (!err &&
	    col->pages != (verdict ? res->v.free : res->v.kept_written + res->v.kept_unsure))
		err = fail(c, -EPROTO, "reply ranges do not add up to its counts");
	if (!err && col->disorder)
		err = fail(c, -EPROTO, "reply ranges not ascending and disjoint");
	if (err) {
		pt_client_result_free(res);
		memset(res, 0, sizeof(*res));
	}
	return err;
}

int pt_client_query(struct pt_client *c, uint32_t cmd_id, uint32_t what,
		    struct pt_client_result *res)
{
	struct collect col = { .res = res };

	memset(res, 0, sizeof(*res));
	return collected(c, pt_client_query_cb(c, cmd_id, what, collect_frame, &col), &col, true);
}

int pt_client_wr_read(struct pt_client *c, const struct pt_range *ranges, uint32_t n,
		      struct pt_client_result *res)
{
	struct ranges_arg a = { PT_MSG_WR_READ, n, ranges };
	struct collect col = { .res = res };
	struct waiter w = { .want = PT_MSG_WR_RECORDS,
			    .on_frame = verdict_frame,
			    .cb = collect_frame,
			    .cb_arg = &col };

	memset(res, 0, sizeof(*res));
	if (ranges_frame(n) > PT_MAX_FRAME)
		return -E2BIG;
	return collected(c, simple(c, build_ranges, &a, ranges_frame(n), &w), &col, false);
}

void pt_client_result_free(struct pt_client_result *res)
{
	free(res->ranges);
	res->ranges = NULL;
	res->v.nranges = 0;
}

/* --- connection ------------------------------------------------------------------------- */

static struct pt_client *client_new(int fd)
{
	struct pt_client *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	if (posix_memalign((void **)&c->rbuf, PT_PAYLOAD_ALIGN, RBUF_SIZE)) {
		free(c);
		return NULL;
	}
	c->fd = fd;
	c->timeout_ms = 30000;
	c->next_seq = 1;
	c->open_off = SIZE_MAX;
	pt_framer_init(&c->fr, PT_FRAMER_REPLIES);
	return c;
}

struct pt_client *pt_client_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct pt_client *c;
	int fd, err;

	if (!path)
		path = PT_DEFAULT_SOCKET;
	if (strlen(path) >= sizeof(sa.sun_path)) {
		errno = ENAMETOOLONG;
		return NULL;
	}
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return NULL;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) ||
	    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK))
		goto err;
	c = client_new(fd);
	if (c)
		return c;
err:
	err = errno;
	close(fd);
	errno = err;
	return NULL;
}

void pt_client_close(struct pt_client *c)
{
	if (!c)
		return;
	close(c->fd);
	pt_framer_release(&c->fr);
	free(c->rbuf);
	free(c->wbuf);
	free(c);
}

int pt_client_fd(const struct pt_client *c)
{
	return c->fd;
}

void pt_client_set_timeout(struct pt_client *c, int timeout_ms)
{
	c->timeout_ms = timeout_ms;
}

const struct pt_client_error *pt_client_last_error(const struct pt_client *c)
{
	return &c->last;
}

void pt_client_get_stats(const struct pt_client *c, struct pt_client_stats *st)
{
	*st = c->st;
}

void pt_client_set_ack_cb(struct pt_client *c, pt_client_ack_cb cb, void *arg)
{
	c->ack_cb = cb;
	c->ack_arg = arg;
}
