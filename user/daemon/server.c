// SPDX-License-Identifier: GPL-2.0
/*
 * io_uring framed-message server. See server.h for the contract; the notes here are about
 * how it is built.
 *
 * user_data: bits 0..7 the operation (enum op), bits 8..31 the connection slot, bits 32..63
 * the slot's generation. A slot's generation changes when the slot is freed, so a completion
 * that outlives its connection is recognised as stale (and its buffer, if any, returned).
 * Receive buffer ids come from cqe->flags, not from user_data.
 *
 * Per connection at most one multishot recv and one send are in flight. Completion handlers
 * only update state and put the connection on the "dirty" list; after each batch of CQEs,
 * conn_update() decides for every dirty connection what to arm next (recv, send), resumes a
 * stalled connection whose out queue drained, and frees a connection once it is closing and
 * nothing of it is in flight. So everything a connection does is decided in one place, and no
 * callback can free a connection under the code that is using it.
 *
 * Receive buffers: nbufs x buf_size bytes in one mmap, registered as buffer group 0. A buffer
 * goes back to the ring as soon as its bytes have been through the framer (the framer copies
 * a partial frame out). The exception is a stalled connection: the rest of its buffer, and any
 * buffer that arrives before its recv is cancelled, is parked on the connection in order and
 * processed when it resumes. At most nbufs / 8 ring buffers are parked server-wide; past that
 * the bytes are copied out and the buffer returned, so stalled peers cannot starve the others
 * of buffers. Returned buffers wait on a stack; once per loop turn the ring is topped up from
 * its top (the most recently used, warm in cache) to a few more than the last turn's receives:
 * one busy connection cycles through a handful of buffers, many connections get them all.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "shared/log.h"
#include "lib/proto.h"
#include "server.h"

#define DEF_MAX_CONNS 1024u
#define DEF_MAX_OUTQ  (4u << 20)
#define DEF_NBUFS     256u
#define DEF_BUF_SIZE  (64u << 10)

/* Limits against hostile peers (server.h, PROTOCOL.md section 9). */
#define DEF_MAX_OUTQ_TOTAL (64u << 20)
#define DEF_TURN_FRAMES	   64u
#define DEF_TURN_WORK	   (1ull << 24)
#define DEF_FRAME_TIMEOUT  30000u
#define DEF_REPLY_TIMEOUT  30000u
#define DEF_IDLE_TIMEOUT   60000u
/* A paused connection (long reply) is asked for more once its queue is below this. */
#define DRAIN_MARK (256u << 10)
/* Out of descriptors: one log line per this many ms at most. */
#define NOFD_LOG_MS 10000u
/* Errors answered to peers: log lines per second at most, all connections together. Each line
 * is a write to journald from the loop, and a peer makes an error with 16 bytes. */
#define ERR_LOG_PER_SEC 64u
/* Slots beyond max_conns: a new connection is accepted while the one evicted for it closes. */
#define EVICT_SPARE 16u
/* Work of all connections together per turn, in turn_work units: the tick, and connections
 * that only PING, wait for at most this much, however many connections are busy. */
#define TURN_TOTAL    4u
#define EVICT_IDLE_MS 1000u
/* Bytes parked from one completion up to this are copied: no ring buffer held for them. */
#define PARK_COPY_MAX 4096u
#define BGID	      0
#define RING_ENTRIES  1024u
#define CQ_ENTRIES    16384u
#define CHUNK_MIN     (64u << 10)
#define RING_BASE     4u /* ring buffers published beyond the last turn's receives */
#define MAX_CONN_IDX  ((1u << 24) - 1)
/* A framer buffer grown past this by a large frame is freed once the frame is done. */
#define FRAMER_KEEP	(256u << 10)
#define ACCEPT_RETRY_MS 100
/* Descriptors a connection may have received and not yet handed to a frame (REGISTER2 takes
 * at most PT_MAX_REG_FDS); more, or more than one recvmsg's control buffer holds, is an error. */
#define CONN_MAX_FDS 4
/* ... and all connections together: keeps the descriptors peers can park in this process
 * well inside LimitNOFILE, whatever max-conns is. */
#define SERVER_MAX_FDS 256
/* ... and one uid's connections (root's excepted, as for the quotas): the devices of one or
 * two users cannot take them all from the others'. */
#define UID_MAX_FDS (SERVER_MAX_FDS / 4)
#define CMSG_BYTES  CMSG_SPACE(CONN_MAX_FDS * sizeof(int))

enum op {
	OP_NONE = 0,
	OP_ACCEPT,	 /* multishot accept on the listener */
	OP_ACCEPT_RETRY, /* timeout before re-arming accept after EMFILE and the like */
	OP_RECV,	 /* multishot recv, provided buffers */
	OP_SEND,
	OP_SIGNAL, /* read of the signalfd */
	OP_WAKE,   /* read of the eventfd pt_server_stop() writes */
	OP_TICK,   /* IORING_OP_TIMEOUT */
	OP_CANCEL, /* async cancel; its own completion is ignored */
};

static inline uint64_t ud_make(enum op op, uint32_t idx, uint32_t gen)
{
	return (uint64_t)gen << 32 | (uint64_t)(idx & MAX_CONN_IDX) << 8 | (uint64_t)op;
}
static inline enum op ud_op(uint64_t ud)
{
	return (enum op)(ud & 0xff);
}
static inline uint32_t ud_idx(uint64_t ud)
{
	return (uint32_t)(ud >> 8) & MAX_CONN_IDX;
}
static inline uint32_t ud_gen(uint64_t ud)
{
	return (uint32_t)(ud >> 32);
}

struct chunk {
	struct chunk *next;
	size_t off; /* sent up to here */
	size_t len; /* filled up to here */
	size_t cap;
	unsigned char data[];
};

/* Received bytes not yet processed, held while a connection is stalled. */
struct parked {
	struct parked *next;
	int32_t bid;  /* ring buffer holding the bytes, or -1: they are in data[] */
	uint32_t off; /* unprocessed bytes: [off, off + len) of the buffer or of data[] */
	uint32_t len;
	unsigned char data[] __attribute__((aligned(8)));
};

struct pt_conn {
	struct pt_server *s;
	uint32_t idx;
	uint32_t gen;
	uint32_t id;
	int fd;
	bool used;
	bool recv_armed;  /* a multishot recv is in flight */
	bool recv_cancel; /* ... and a cancel for it was issued */
	bool send_inflight;
	bool stalled;	/* out queue over max_outq: input stopped */
	bool eof;	/* peer shut down its side; replies still go out */
	bool closing;	/* pt_conn_close or bad framing: no more input, flush, close */
	bool dead;	/* error: drop everything, close as soon as nothing is in flight */
	bool fd_cancel; /* cancel of everything on fd issued */
	bool nobufs;	/* recv ended with -ENOBUFS; re-arm when buffers come back */
	bool dirty;
	uint32_t dirty_next;
	bool paused;	   /* pt_conn_pause: a long reply is being produced, input waits */
	bool yielded;	   /* used its turn's budget: input waits for the next turn */
	bool registered;   /* pt_conn_set_registered: never idle-closed nor evicted */
	bool yield_listed; /* on the server's yield list (may outlive the connection) */
	uint32_t yield_next;
	uint64_t turn_id; /* the turn turn_frames/turn_work count for */
	uint32_t turn_frames;
	uint64_t turn_work;
	uint64_t t_active;   /* ms: accepted, or last frame handled */
	uint64_t t_partial;  /* ms: a partial frame started to arrive */
	uint64_t t_sendprog; /* ms: the replies queued then (up to sent_mark) are to be read */
	uint64_t sent;	     /* reply bytes sent, all told */
	uint64_t sent_mark;  /* ... once it reaches this, the peer read what t_sendprog saw */
	struct pt_peer peer;
	void *data;
	struct pt_framer fr;
	int fds[CONN_MAX_FDS]; /* received with SCM_RIGHTS, not yet taken by a frame */
	uint32_t nfds;
	struct chunk *oq_head, *oq_tail;
	size_t oq_bytes;
	size_t send_len;
	struct parked *pk_head, *pk_tail;
	uint32_t nparked;
	uint32_t free_next;
};

struct pt_server {
	struct io_uring ring;
	bool ring_ok;
	struct pt_server_ops ops;
	void *ctx;

	int lfd;
	char *path; /* set when we created the socket file */
	int sfd;    /* signalfd */
	int efd;    /* eventfd for pt_server_stop */
	sigset_t oldmask;
	bool mask_set;
	struct signalfd_siginfo siginfo;
	uint64_t wake_val;

	unsigned tick_ms;
	struct __kernel_timespec tick_ts;
	struct __kernel_timespec retry_ts;
	unsigned max_conns;
	unsigned nslots; /* max_conns + EVICT_SPARE: room while an evicted one is closing */
	size_t max_outq;

	/* provided buffers; each multishot recvmsg completion fills one as
	 * [io_uring_recvmsg_out][control: CMSG_BYTES][payload] */
	struct msghdr rmsg;
	struct io_uring_buf_ring *br;
	size_t br_size;
	unsigned char *bufs;
	size_t bufs_size;
	unsigned nbufs;
	unsigned buf_size;
	unsigned br_pending; /* returned, not yet published */
	/* Returned buffers wait on a stack and the ring is kept only as deep as the last turn's
	 * receives need: the kernel takes ring entries oldest first, so a ring holding every
	 * buffer cycles a busy connection through all of them (16 MiB), each cold in cache. */
	unsigned short *free_bids;
	unsigned nfree;
	unsigned ring_avail;	  /* published and not yet seen consumed (a CQE with a buffer) */
	unsigned turn_recvs;	  /* receive completions since the last publish */
	unsigned nparked_bufs;	  /* ring buffers parked, all connections */
	unsigned max_parked_bufs; /* past this, parked bytes are copied out */
	uint64_t parked_bytes;
	bool br_registered;

	struct pt_conn *conns; /* max_conns slots */
	uint32_t free_head;    /* UINT32_MAX = none */
	uint32_t dirty_head, dirty_tail;
	uint32_t next_id;

	volatile sig_atomic_t stop;
	bool stopping; /* shutdown phase: arm nothing new */
	bool accept_armed;
	uint64_t inflight;   /* SQEs whose final CQE has not been seen */
	unsigned queued_fds; /* received descriptors no frame has taken yet, all connections */

	struct pt_server_stats st;

	/* limits (server.h) */
	size_t max_outq_total;
	unsigned turn_frames;
	uint64_t turn_work;
	unsigned frame_timeout_ms, reply_timeout_ms, idle_timeout_ms;
	uint64_t turn_id;
	uint64_t turn_total;		 /* work charged in this turn, all connections */
	uint64_t turn_us_window;	 /* longest turn since the last tick */
	uint64_t turn_cpu_window;	 /* the most CPU time one turn took since the last tick */
	uint32_t yield_head, yield_tail; /* connections waiting for the next turn */
	uint32_t yield_starved;		 /* the last of those that got nothing done */
	int reserve_fd;			 /* given up to refuse connections when out of fds */
	uint64_t nofd_logged_ms;	 /* last "out of descriptors" line */
	uint64_t nofd_unlogged;		 /* refused since */
	uint64_t err_log_sec;		 /* the second err_logged counts for */
	unsigned err_logged;		 /* peer error lines logged in it */
	uint64_t err_unlogged;		 /* peer errors not logged since the last line */
};

#define NIL UINT32_MAX

/* --- submission helpers ---------------------------------------------------------------- */

static struct io_uring_sqe *get_sqe(struct pt_server *s)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);

	while (!sqe) {
		/* SQ full: hand what we have to the kernel (no wait) and retry. */
		int rc = io_uring_submit(&s->ring);

		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
			pt_err("server: io_uring_submit: %s", strerror(-rc));
			abort();
		}
		sqe = io_uring_get_sqe(&s->ring);
	}
	s->inflight++;
	return sqe;
}

static void arm_accept(struct pt_server *s)
{
	struct io_uring_sqe *sqe = get_sqe(s);

	io_uring_prep_multishot_accept(sqe, s->lfd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, ud_make(OP_ACCEPT, 0, 0));
	s->accept_armed = true;
}

static void arm_accept_retry(struct pt_server *s)
{
	struct io_uring_sqe *sqe = get_sqe(s);

	io_uring_prep_timeout(sqe, &s->retry_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, ud_make(OP_ACCEPT_RETRY, 0, 0));
	s->accept_armed = true;
}

static void arm_signal(struct pt_server *s)
{
	struct io_uring_sqe *sqe = get_sqe(s);

	io_uring_prep_read(sqe, s->sfd, &s->siginfo, sizeof(s->siginfo), 0);
	io_uring_sqe_set_data64(sqe, ud_make(OP_SIGNAL, 0, 0));
}

static void arm_wake(struct pt_server *s)
{
	struct io_uring_sqe *sqe = get_sqe(s);

	io_uring_prep_read(sqe, s->efd, &s->wake_val, sizeof(s->wake_val), 0);
	io_uring_sqe_set_data64(sqe, ud_make(OP_WAKE, 0, 0));
}

static void arm_tick(struct pt_server *s)
{
	struct io_uring_sqe *sqe = get_sqe(s);

	io_uring_prep_timeout(sqe, &s->tick_ts, 0, 0);
	io_uring_sqe_set_data64(sqe, ud_make(OP_TICK, 0, 0));
}

static void arm_recv(struct pt_conn *c)
{
	struct io_uring_sqe *sqe = get_sqe(c->s);

	/* recvmsg, not recv: descriptors passed with REGISTER2 arrive as control messages, and a
	 * plain recv would have the kernel close them. */
	io_uring_prep_recvmsg_multishot(sqe, c->fd, &c->s->rmsg, MSG_CMSG_CLOEXEC);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = BGID;
	io_uring_sqe_set_data64(sqe, ud_make(OP_RECV, c->idx, c->gen));
	c->recv_armed = true;
	c->recv_cancel = false;
	c->nobufs = false;
}

static void cancel_recv(struct pt_conn *c)
{
	struct io_uring_sqe *sqe;

	if (!c->recv_armed || c->recv_cancel)
		return;
	sqe = get_sqe(c->s);
	io_uring_prep_cancel64(sqe, ud_make(OP_RECV, c->idx, c->gen), 0);
	io_uring_sqe_set_data64(sqe, ud_make(OP_CANCEL, c->idx, c->gen));
	c->recv_cancel = true;
}

static void cancel_fd(struct pt_conn *c)
{
	struct io_uring_sqe *sqe;

	if (c->fd_cancel || (!c->recv_armed && !c->send_inflight))
		return;
	sqe = get_sqe(c->s);
	io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL);
	io_uring_sqe_set_data64(sqe, ud_make(OP_CANCEL, c->idx, c->gen));
	c->fd_cancel = true;
	c->recv_cancel = true;
}

/* --- provided buffers ------------------------------------------------------------------ */

static inline unsigned char *buf_addr(struct pt_server *s, unsigned bid)
{
	return s->bufs + (size_t)bid * s->buf_size;
}

static void buf_return(struct pt_server *s, unsigned bid)
{
	/* Each buffer is returned once per use: more would be a bug, and publishing one buffer
	 * twice would let two receives fill it. */
	if (s->nfree >= s->nbufs) {
		pt_err("server: receive buffer %u returned twice", bid);
		return;
	}
	s->free_bids[s->nfree++] = (unsigned short)bid;
}

/* A receive completion: it took a ring buffer, or found none (-ENOBUFS: the ring is empty). */
static void buf_taken(struct pt_server *s, bool has_buf, int res)
{
	s->turn_recvs++;
	if (has_buf && s->ring_avail)
		s->ring_avail--;
	else if (res == -ENOBUFS)
		s->ring_avail = 0;
}

/*
 * Tops the ring up to RING_BASE + the receives of the last turn, most recently returned
 * (cache-warm) buffers first. Many connections receiving at once deepen it to every buffer; a
 * receive that finds it empty (-ENOBUFS) is re-armed after this, as before.
 */
static void buf_publish(struct pt_server *s)
{
	unsigned target = RING_BASE + s->turn_recvs;

	s->turn_recvs = 0;
	while (s->ring_avail < target && s->nfree) {
		unsigned bid = s->free_bids[--s->nfree];

		io_uring_buf_ring_add(s->br, buf_addr(s, bid), s->buf_size, (unsigned short)bid,
				      io_uring_buf_ring_mask(s->nbufs), (int)s->br_pending);
		s->br_pending++;
		s->ring_avail++;
	}
	if (s->br_pending) {
		io_uring_buf_ring_advance(s->br, (int)s->br_pending);
		s->br_pending = 0;
	}
}

static void park_link(struct pt_conn *c, struct parked *pk, bool front)
{
	pk->next = NULL;
	if (!c->pk_head) {
		c->pk_head = c->pk_tail = pk;
	} else if (front) {
		pk->next = c->pk_head;
		c->pk_head = pk;
	} else {
		c->pk_tail->next = pk;
		c->pk_tail = pk;
	}
	c->nparked++;
	c->s->parked_bytes += pk->len;
}

/*
 * Parks bytes [off, off + len) of ring buffer @bid on @c, at the front (older than anything
 * parked) or the back. Keeps the buffer while few are parked server-wide, else copies the
 * bytes and returns the buffer. -ENOMEM: the bytes are lost (the buffer is returned).
 */
static int park(struct pt_conn *c, unsigned bid, uint32_t off, uint32_t len, bool front)
{
	struct pt_server *s = c->s;
	bool copy = s->nparked_bufs >= s->max_parked_bufs || len <= PARK_COPY_MAX;
	struct parked *pk = malloc(sizeof(*pk) + (copy ? len : 0));

	if (!pk) {
		buf_return(s, bid);
		return -ENOMEM;
	}
	pk->len = len;
	if (copy) {
		memcpy(pk->data, buf_addr(s, bid) + off, len);
		pk->bid = -1;
		pk->off = 0;
		buf_return(s, bid);
	} else {
		pk->bid = (int32_t)bid;
		pk->off = off;
		s->nparked_bufs++;
	}
	park_link(c, pk, front);
	return 0;
}

static struct parked *park_pop(struct pt_conn *c)
{
	struct parked *pk = c->pk_head;

	if (!pk)
		return NULL;
	c->pk_head = pk->next;
	if (!c->pk_head)
		c->pk_tail = NULL;
	c->nparked--;
	c->s->parked_bytes -= pk->len;
	return pk;
}

static const unsigned char *parked_data(struct pt_server *s, const struct parked *pk)
{
	return (pk->bid >= 0 ? buf_addr(s, (unsigned)pk->bid) : pk->data) + pk->off;
}

static void parked_free(struct pt_server *s, struct parked *pk)
{
	if (pk->bid >= 0) {
		buf_return(s, (unsigned)pk->bid);
		s->nparked_bufs--;
	}
	free(pk);
}

static void park_drop(struct pt_conn *c)
{
	struct parked *pk;

	while ((pk = park_pop(c)))
		parked_free(c->s, pk);
}

/* --- connections ----------------------------------------------------------------------- */

static void mark_dirty(struct pt_conn *c)
{
	struct pt_server *s = c->s;

	if (c->dirty)
		return;
	c->dirty = true;
	c->dirty_next = NIL;
	if (s->dirty_head == NIL)
		s->dirty_head = c->idx;
	else
		s->conns[s->dirty_tail].dirty_next = c->idx;
	s->dirty_tail = c->idx;
}

static struct pt_conn *conn_lookup(struct pt_server *s, uint64_t ud)
{
	uint32_t idx = ud_idx(ud);
	struct pt_conn *c;

	if (idx >= s->nslots)
		return NULL;
	c = &s->conns[idx];
	if (!c->used || c->gen != ud_gen(ud))
		return NULL;
	return c;
}

static void oq_free(struct pt_conn *c, bool keep_inflight)
{
	struct chunk *ch = c->oq_head, *next;

	if (keep_inflight && c->send_inflight && ch) {
		/* The kernel may be reading from the head chunk: keep it until the send ends. */
		c->s->st.outq_bytes -= c->oq_bytes - (ch->len - ch->off);
		c->oq_bytes = ch->len - ch->off;
		next = ch->next;
		ch->next = NULL;
		c->oq_tail = ch;
		ch = next;
	} else {
		c->s->st.outq_bytes -= c->oq_bytes;
		c->oq_bytes = 0;
		c->oq_head = c->oq_tail = NULL;
	}
	while (ch) {
		next = ch->next;
		free(ch);
		ch = next;
	}
}

/* Error or shutdown: stop everything, close as soon as nothing is in flight. */
static void conn_abort(struct pt_conn *c)
{
	if (c->dead)
		return;
	c->dead = true;
	c->closing = true;
	oq_free(c, true);
	park_drop(c);
	cancel_fd(c);
	mark_dirty(c);
}

static void conn_free(struct pt_conn *c)
{
	struct pt_server *s = c->s;

	if (s->ops.on_close)
		s->ops.on_close(s->ctx, c);
	pt_debug("conn %u pid %d: closed", c->id, (int)c->peer.pid);
	close(c->fd);
	c->fd = -1;
	s->queued_fds -= c->nfds;
	while (c->nfds)
		close(c->fds[--c->nfds]);
	oq_free(c, false);
	park_drop(c);
	pt_framer_release(&c->fr);
	c->used = false;
	c->gen++;
	c->data = NULL;
	c->free_next = s->free_head;
	s->free_head = c->idx;
	s->st.conns_open--;
}

static void framer_error(struct pt_conn *c, int rc)
{
	struct pt_server *s = c->s;
	uint32_t seq = c->fr.hdr_have >= sizeof(struct pt_hdr) ? c->fr.hdr.seq : 0;

	s->st.bad_frames++;
	pt_conn_send_error(c, seq, rc, "bad frame header: %s; closing", pt_err_str(rc));
	pt_conn_close(c);
}

static void dispatch(struct pt_conn *c, const struct pt_hdr *h, const void *payload)
{
	struct pt_server *s = c->s;
	int rc = pt_hdr_check(h);

	if (rc < 0) {
		/* Framing is intact (the framer checked it): refuse this frame, keep going. */
		s->st.bad_frames++;
		pt_conn_send_error(c, h->seq, rc, "bad frame (type %u len %u): %s", h->type, h->len,
				   pt_err_str(rc));
		return;
	}
	s->st.frames++;
	if (s->ops.on_frame) {
		s->ops.on_frame(s->ctx, c, h, h->len ? payload : NULL);
	}
}

/*
 * Over its own limit, or holding replies while all connections together are over theirs. A
 * connection with an empty queue is never over: one request of every peer can be answered.
 */
static bool conn_over(const struct pt_conn *c)
{
	return c->oq_bytes > c->s->max_outq ||
	       (c->oq_bytes && c->s->st.outq_bytes > c->s->max_outq_total);
}

/* --- limits: turns, timeouts, descriptors ---------------------------------------------- */

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t clock_us(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static uint64_t now_us(void)
{
	return clock_us(CLOCK_MONOTONIC);
}

/* Input of @c waits: for its replies to drain (stall), a long reply (pause), or its turn. */
static bool conn_blocked(const struct pt_conn *c)
{
	return c->stalled || c->paused || c->yielded;
}

/* Has @c used up this turn of the loop? The counters start afresh at every turn. */
static bool turn_used(struct pt_conn *c)
{
	struct pt_server *s = c->s;

	if (c->turn_id != s->turn_id) {
		c->turn_id = s->turn_id;
		c->turn_frames = 0;
		c->turn_work = 0;
	}
	return c->turn_frames >= s->turn_frames || c->turn_work >= s->turn_work ||
	       s->turn_total >= TURN_TOTAL * s->turn_work;
}

/*
 * Puts @c on the list looked at in the next turn (at most once: yield_listed). Ones that got
 * nothing done in this turn (all connections together used the turn) go first, in the order
 * they came, so that the busy ones cannot keep them waiting turn after turn. In that order:
 * put at the very front instead, two flooders that take turns using the whole budget jump
 * ahead of a PING that waits behind them, every turn, for ever.
 */
static void yield_link(struct pt_conn *c)
{
	struct pt_server *s = c->s;
	bool starved = c->turn_id == s->turn_id && !c->turn_frames && !c->turn_work;
	uint32_t *prev;

	if (c->yield_listed)
		return;
	c->yield_listed = true;
	if (!starved)
		prev = s->yield_tail == NIL ? &s->yield_head : &s->conns[s->yield_tail].yield_next;
	else if (s->yield_starved == NIL)
		prev = &s->yield_head;
	else
		prev = &s->conns[s->yield_starved].yield_next;
	c->yield_next = *prev;
	*prev = c->idx;
	if (c->yield_next == NIL)
		s->yield_tail = c->idx;
	if (starved)
		s->yield_starved = c->idx;
}

/*
 * The rest of @c's input waits until every other connection had its turn. Its recv stops, so
 * what the peer sends meanwhile stays in the kernel's socket buffer, not in ours.
 */
static void conn_yield(struct pt_conn *c)
{
	if (c->yielded)
		return;
	c->yielded = true;
	c->s->st.turns_yielded++;
	yield_link(c);
	cancel_recv(c);
}

/* A new turn: the connections that waited for it go again (in the order they yielded). */
static void resume_yielded(struct pt_server *s)
{
	uint32_t i = s->yield_head;

	s->yield_head = s->yield_tail = s->yield_starved = NIL;
	s->turn_id++;
	s->turn_total = 0;
	while (i != NIL) {
		struct pt_conn *c = &s->conns[i];

		i = c->yield_next;
		c->yield_listed = false;
		c->yielded = false;
		if (c->used)
			mark_dirty(c);
	}
}

/* A paused connection whose queue drained: ask for the next part of its long reply. */
static void conn_drain(struct pt_conn *c)
{
	struct pt_server *s = c->s;

	if (c->oq_bytes > DRAIN_MARK || (c->oq_bytes && s->st.outq_bytes > s->max_outq_total))
		return; /* a send completion brings it back here */
	if (!s->ops.on_drain) {
		pt_conn_resume(c);
		return;
	}
	/* A long reply or a large batch goes on a part at a time, within the turn's budget:
	 * send completions in the same turn must not bring it back for more. */
	if (turn_used(c)) {
		yield_link(c);
		return;
	}
	s->ops.on_drain(s->ctx, c);
	if (c->paused && !c->dead && c->oq_bytes <= DRAIN_MARK)
		yield_link(c); /* nothing queued: try again next turn */
}

static const char *conn_overdue(struct pt_server *s, const struct pt_conn *c, uint64_t now)
{
	if (c->t_partial && now - c->t_partial > s->frame_timeout_ms)
		return "a partial frame held";
	if (c->oq_bytes && now - c->t_sendprog > s->reply_timeout_ms)
		return "replies not read";
	if (!c->registered && now - c->t_active > s->idle_timeout_ms)
		return "idle without a registration";
	return NULL;
}

/* Every tick: close connections that hold a partial frame, unread replies, or idle too long. */
static void sweep_timeouts(struct pt_server *s)
{
	uint64_t now = now_ms();

	for (uint32_t i = 0; i < s->nslots; i++) {
		struct pt_conn *c = &s->conns[i];
		const char *why;

		if (!c->used || c->dead)
			continue;
		why = conn_overdue(s, c, now);
		if (!why)
			continue;
		s->st.conns_timed_out++;
		pt_warn("conn %u pid %d: %s for too long; closing", c->id, (int)c->peer.pid, why);
		conn_abort(c);
	}
}

/* One line per NOFD_LOG_MS at most, with what was refused since the last one. */
static void log_nofd(struct pt_server *s, int err, unsigned refused)
{
	uint64_t now = now_ms();

	s->nofd_unlogged += refused;
	if (s->nofd_logged_ms && now - s->nofd_logged_ms < NOFD_LOG_MS)
		return;
	pt_warn("server: accept: %s: %llu connections refused (next report in %u s at most)",
		strerror(-err), (unsigned long long)s->nofd_unlogged, NOFD_LOG_MS / 1000);
	s->nofd_logged_ms = now;
	s->nofd_unlogged = 0;
}

/*
 * Out of descriptors: free the reserve, accept and close at once what waits on the listener
 * (those peers see the connection closed, instead of hanging), take the reserve back. Returns
 * how many were refused; 0 means nothing could be done and the caller waits before retrying.
 */
static unsigned refuse_nofd(struct pt_server *s)
{
	int fl = fcntl(s->lfd, F_GETFL);
	unsigned n = 0;
	int fd;

	if (fl < 0 || fcntl(s->lfd, F_SETFL, fl | O_NONBLOCK))
		return 0;
	if (s->reserve_fd >= 0)
		close(s->reserve_fd);
	while (n < 4096 && (fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
		close(fd);
		n++;
	}
	fcntl(s->lfd, F_SETFL, fl);
	s->reserve_fd = eventfd(0, EFD_CLOEXEC);
	s->st.conns_refused_nofd += n;
	return n;
}

/*
 * The unregistered connection idle the longest (at least EVICT_IDLE_MS: a device that just
 * connected gets the time to register), to close for a new one; NULL if none.
 */
static struct pt_conn *evict_candidate(struct pt_server *s)
{
	uint64_t now = now_ms();
	struct pt_conn *best = NULL;

	for (uint32_t i = 0; i < s->nslots; i++) {
		struct pt_conn *c = &s->conns[i];

		if (c->used && !c->dead && !c->registered && now - c->t_active >= EVICT_IDLE_MS &&
		    (!best || c->t_active < best->t_active))
			best = c;
	}
	return best;
}

/* max_conns are open: make room by closing the unregistered connection idle the longest. */
static bool make_room(struct pt_server *s)
{
	struct pt_conn *c = evict_candidate(s);

	if (!c)
		return false;
	s->st.conns_evicted++;
	if (!(s->st.conns_evicted & (s->st.conns_evicted - 1)))
		pt_warn("server: %u connections open: closing unregistered conn %u pid %d, idle "
			"the longest, for a new one (%llu so far)",
			s->max_conns, c->id, (int)c->peer.pid,
			(unsigned long long)s->st.conns_evicted);
	conn_abort(c);
	return true;
}

/*
 * A turn ends: from the completions it handled to the next wait. Wall time includes whatever
 * else the machine ran meanwhile; the loop thread's CPU time is what the turn itself cost the
 * other connections. @cpu is from one turn's start to the next's: the enter between them (its
 * sends, the kernel's completion work) is the turn's too, and one clock read a turn is enough
 * (it is a syscall: the thread's CPU clock has no vDSO path).
 */
static void turn_done(struct pt_server *s, uint64_t us, uint64_t cpu)
{
	if (us > s->st.max_turn_us)
		s->st.max_turn_us = us;
	if (us > s->turn_us_window)
		s->turn_us_window = us;
	if (cpu > s->st.max_turn_cpu_us)
		s->st.max_turn_cpu_us = cpu;
	if (cpu > s->turn_cpu_window)
		s->turn_cpu_window = cpu;
}

static void conn_stall(struct pt_conn *c)
{
	if (!c->stalled) {
		c->stalled = true;
		c->s->st.backpressure_stalls++;
		pt_debug("conn %u: %zu reply bytes queued, input stopped", c->id, c->oq_bytes);
	}
	cancel_recv(c);
	mark_dirty(c);
}

/*
 * Runs @len received bytes through the connection's framer, handing complete frames to
 * on_frame. Stops early when the connection's out queue goes over max_outq (the connection
 * stalls). Returns how many bytes are left for later: nonzero only when stalled; bytes left
 * when the connection is closing are dropped.
 */
static uint32_t conn_feed(struct pt_conn *c, const unsigned char *p, uint32_t len)
{
	uint32_t done = 0;

	while (done < len && !c->closing) {
		const struct pt_hdr *h;
		const void *payload;
		size_t used = 0;
		int rc;

		if (conn_over(c) || c->paused)
			break;
		if (turn_used(c)) {
			conn_yield(c);
			break;
		}
		rc = pt_framer_feed(&c->fr, p + done, len - done, &used, &h, &payload);
		done += (uint32_t)used;
		if (rc < 0) {
			framer_error(c, rc);
			break;
		}
		if (rc == 1) {
			c->turn_frames++;
			c->t_active = now_ms();
			c->t_partial = 0;
			dispatch(c, h, payload);
			if (c->fr.buf_cap > FRAMER_KEEP && pt_framer_idle(&c->fr)) {
				pt_framer_release(&c->fr);
				pt_framer_init(&c->fr, PT_FRAMER_REQUESTS);
			}
		} else if (!used) {
			break; /* cannot happen with a sane framer; do not spin */
		}
	}
	if (c->closing)
		return 0;
	if (!pt_framer_idle(&c->fr) && !c->t_partial)
		c->t_partial = now_ms();
	if (conn_over(c))
		conn_stall(c);
	return conn_blocked(c) ? len - done : 0;
}

static void conn_start_send(struct pt_conn *c)
{
	struct chunk *ch = c->oq_head;
	struct io_uring_sqe *sqe;

	while (ch && ch->off == ch->len && ch->next) {
		c->oq_head = ch->next;
		free(ch);
		ch = c->oq_head;
	}
	if (!ch || ch->off == ch->len)
		return;
	sqe = get_sqe(c->s);
	c->send_len = ch->len - ch->off;
	io_uring_prep_send(sqe, c->fd, ch->data + ch->off, c->send_len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, ud_make(OP_SEND, c->idx, c->gen));
	c->send_inflight = true;
}

static bool conn_can_read(const struct pt_conn *c)
{
	return !c->eof && !c->closing && !conn_blocked(c) && !c->nparked && !c->s->stopping;
}

/* Decides what a connection does next; see the file comment. */
static void conn_update(struct pt_conn *c)
{
	struct pt_server *s = c->s;

	if (s->stopping && !c->dead)
		conn_abort(c);
	if (c->dead) {
		if (!c->recv_armed && !c->send_inflight)
			conn_free(c);
		else
			cancel_fd(c);
		return;
	}
	/* Resume a stalled connection once its queue has drained to half the limit. */
	if (c->stalled && c->oq_bytes <= s->max_outq / 2 &&
	    (!c->oq_bytes || s->st.outq_bytes <= s->max_outq_total)) {
		c->stalled = false;
		pt_debug("conn %u: out queue drained, input resumed", c->id);
	}
	if (c->paused && !c->closing)
		conn_drain(c);
	if (!conn_blocked(c) && !c->closing && c->nparked) {
		struct parked *pk;

		while (!conn_blocked(c) && !c->closing && (pk = park_pop(c))) {
			uint32_t left = conn_feed(c, parked_data(s, pk), pk->len);

			if (left) {
				pk->off += pk->len - left;
				pk->len = left;
				park_link(c, pk, true);
			} else {
				parked_free(s, pk);
			}
		}
	}
	if (c->closing) {
		park_drop(c);
		cancel_recv(c);
	}
	if (!c->send_inflight && c->oq_bytes)
		conn_start_send(c);
	if (!c->recv_armed && conn_can_read(c) && (!c->nobufs || s->nparked_bufs < s->nbufs))
		arm_recv(c);
	if ((c->closing || (c->eof && !c->nparked)) && !c->oq_bytes && !c->send_inflight) {
		if (c->recv_armed)
			cancel_recv(c);
		else
			conn_free(c);
	}
}

static void process_dirty(struct pt_server *s)
{
	while (s->dirty_head != NIL) {
		struct pt_conn *c = &s->conns[s->dirty_head];

		s->dirty_head = c->dirty_next;
		c->dirty = false;
		if (c->used)
			conn_update(c);
	}
	s->dirty_tail = NIL;
}

/* --- completions ----------------------------------------------------------------------- */

static void handle_accept(struct pt_server *s, int res, bool more)
{
	struct pt_conn *c;
	struct ucred cred;
	socklen_t clen = sizeof(cred);

	if (!more)
		s->accept_armed = false;
	if (res < 0) {
		if (res == -ECANCELED || s->stopping)
			return;
		if (res == -EMFILE || res == -ENFILE) {
			unsigned n = refuse_nofd(s);

			log_nofd(s, res, n);
			if (!more)
				n ? arm_accept(s) : arm_accept_retry(s);
			return;
		}
		pt_warn("server: accept: %s", strerror(-res));
		if (!more) {
			if (res == -ENOMEM || res == -ENOBUFS)
				arm_accept_retry(s);
			else
				arm_accept(s);
		}
		return;
	}
	if (!more && !s->stopping)
		arm_accept(s);
	if (s->stopping) {
		close(res);
		return;
	}
	/* Full: an unregistered connection makes room (it closes, this one takes a spare slot);
	 * when every connection is registered, the new one is refused. */
	if ((s->st.conns_open >= s->max_conns && !make_room(s)) || s->free_head == NIL) {
		s->st.conns_rejected++;
		if (!(s->st.conns_rejected & (s->st.conns_rejected - 1))) /* 1, 2, 4, ...: rarer */
			pt_warn("server: %u connections open, all registered: refusing another "
				"(%llu so far)",
				s->max_conns, (unsigned long long)s->st.conns_rejected);
		close(res);
		return;
	}
	c = &s->conns[s->free_head];
	s->free_head = c->free_next;

	c->used = true;
	c->fd = res;
	c->id = ++s->next_id;
	c->recv_armed = c->recv_cancel = c->send_inflight = c->stalled = false;
	c->eof = c->closing = c->dead = c->fd_cancel = c->nobufs = false;
	c->paused = c->yielded = c->registered = false;
	c->t_active = now_ms();
	c->t_partial = 0;
	c->sent = c->sent_mark = 0;
	c->data = NULL;
	c->oq_head = c->oq_tail = NULL;
	c->oq_bytes = 0;
	c->pk_head = c->pk_tail = NULL;
	c->nparked = 0;
	c->nfds = 0;
	memset(&c->peer, 0, sizeof(c->peer));
	if (getsockopt(res, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0) {
		c->peer.pid = cred.pid;
		c->peer.uid = cred.uid;
		c->peer.gid = cred.gid;
	} else {
		c->peer.pid = -1;
		c->peer.uid = (uid_t)-1;
		c->peer.gid = (gid_t)-1;
	}
	pt_framer_init(&c->fr, PT_FRAMER_REQUESTS);
	s->st.conns_accepted++;
	s->st.conns_open++;
	pt_debug("conn %u pid %d uid %u: accepted", c->id, (int)c->peer.pid, (unsigned)c->peer.uid);
	if (s->ops.on_accept)
		s->ops.on_accept(s->ctx, c);
	mark_dirty(c); /* arms the recv */
}

/* Untaken descriptors held by the connections of @uid. Descriptors come only with REGISTER2:
 * a walk of the connections per message that carries some costs nothing that matters. */
static unsigned uid_fds(const struct pt_server *s, uid_t uid)
{
	unsigned n = 0;

	for (uint32_t i = 0; i < s->nslots; i++)
		if (s->conns[i].used && s->conns[i].peer.uid == uid)
			n += s->conns[i].nfds;
	return n;
}

/*
 * Keeps the descriptors that came with received bytes for the frame that will take them
 * (pt_conn_take_fds). Returns false when the peer sent more than a frame may carry: the
 * kernel closed what did not fit (MSG_CTRUNC) or the queue is full.
 */
static bool conn_keep_fds(struct pt_conn *c, struct io_uring_recvmsg_out *o)
{
	struct msghdr *mh = &c->s->rmsg;
	bool ok = !(o->flags & MSG_CTRUNC);
	unsigned held = c->peer.uid ? uid_fds(c->s, c->peer.uid) : 0;
	unsigned uid_room = held < UID_MAX_FDS ? UID_MAX_FDS - held : 0;

	for (struct cmsghdr *cm = io_uring_recvmsg_cmsg_firsthdr(o, mh); cm;
	     cm = io_uring_recvmsg_cmsg_nexthdr(o, mh, cm)) {
		int n = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		int *fds = (int *)CMSG_DATA(cm);

		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		for (int i = 0; i < n; i++) {
			int fd;

			memcpy(&fd, &fds[i], sizeof(fd));
			if (c->nfds < CONN_MAX_FDS && c->s->queued_fds < SERVER_MAX_FDS &&
			    (!c->peer.uid || uid_room)) {
				c->fds[c->nfds++] = fd;
				c->s->queued_fds++;
				uid_room -= !!uid_room;
			} else {
				close(fd);
				ok = false;
			}
		}
	}
	return ok;
}

/* Bytes of one completion: feed them, or park them while the connection is stalled. */
static void conn_input(struct pt_conn *c, unsigned bid, uint32_t off, uint32_t len)
{
	struct pt_server *s = c->s;
	uint32_t left;

	if (c->closing) {
		buf_return(s, bid);
	} else if (conn_blocked(c) || c->nparked) {
		if (park(c, bid, off, len, false))
			conn_abort(c);
	} else {
		left = conn_feed(c, buf_addr(s, bid) + off, len);
		if (!left)
			buf_return(s, bid);
		else if (park(c, bid, off + len - left, left, true))
			conn_abort(c);
	}
}

/* A multishot recvmsg completion that holds a buffer. Returns false at end of stream. */
static bool handle_recv_buf(struct pt_conn *c, unsigned bid, int res)
{
	struct pt_server *s = c->s;
	struct io_uring_recvmsg_out *o = io_uring_recvmsg_validate(buf_addr(s, bid), res, &s->rmsg);
	uint32_t off, len;

	if (!o) {
		buf_return(s, bid);
		conn_abort(c);
		return true;
	}
	len = io_uring_recvmsg_payload_length(o, res, &s->rmsg);
	off = (uint32_t)((unsigned char *)io_uring_recvmsg_payload(o, &s->rmsg) - buf_addr(s, bid));
	if ((o->controllen || (o->flags & MSG_CTRUNC)) && !conn_keep_fds(c, o)) {
		buf_return(s, bid);
		pt_conn_send_error(
			c, 0, PT_E_BAD_FIELD,
			"more file descriptors than a frame takes (%d), or than the service "
			"holds for one user (%d) or for all peers (%d); closing",
			CONN_MAX_FDS, UID_MAX_FDS, SERVER_MAX_FDS);
		pt_conn_close(c);
		return true;
	}
	if (!len) {
		buf_return(s, bid);
		return false;
	}
	s->st.bytes_in += len;
	conn_input(c, bid, off, len);
	return true;
}

static void handle_recv(struct pt_server *s, struct io_uring_cqe *cqe)
{
	struct pt_conn *c = conn_lookup(s, cqe->user_data);
	bool has_buf = cqe->flags & IORING_CQE_F_BUFFER;
	unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
	int res = cqe->res;

	buf_taken(s, has_buf, res);
	if (!c) {
		if (has_buf)
			buf_return(s, bid);
		return;
	}
	if (!(cqe->flags & IORING_CQE_F_MORE))
		c->recv_armed = false;
	mark_dirty(c);
	if (res > 0 && has_buf && handle_recv_buf(c, bid, res))
		return;
	if (res > 0 && has_buf)
		res = 0; /* a completion with no payload: the peer shut down */
	else if (has_buf)
		buf_return(s, bid);
	if (res == 0) {
		c->eof = true;
		if (!pt_framer_idle(&c->fr))
			pt_debug("conn %u pid %d: closed mid-frame", c->id, (int)c->peer.pid);
	} else if (res == -ENOBUFS) {
		s->st.enobufs++;
		c->nobufs = true;
	} else if (res != -ECANCELED) {
		pt_debug("conn %u pid %d: recv: %s", c->id, (int)c->peer.pid, strerror(-res));
		conn_abort(c);
	}
}

/*
 * reply-timeout counts from a moment at which replies were queued until all of them are read,
 * not until any byte is: a peer reading a little at a time would keep a full queue (and a
 * long reply's frozen pages) for ever. Once read, the replies queued by then are next.
 */
static void reply_progress(struct pt_conn *c, uint64_t res)
{
	c->sent += res;
	if (c->sent < c->sent_mark)
		return;
	c->t_sendprog = now_ms();
	c->sent_mark = c->sent + c->oq_bytes;
}

static void handle_send_conn(struct pt_conn *c, int res)
{
	struct pt_server *s = c->s;
	struct chunk *ch = c->oq_head;

	c->send_inflight = false;
	mark_dirty(c);
	if (res <= 0) {
		if (res != -ECANCELED)
			pt_debug("conn %u pid %d: send: %s", c->id, (int)c->peer.pid,
				 res ? strerror(-res) : "0 bytes");
		conn_abort(c);
		if (c->oq_head) /* the chunk kept for the kernel */
			oq_free(c, false);
		return;
	}
	s->st.bytes_out += (uint64_t)res;
	if (c->dead) {
		oq_free(c, false);
		return;
	}
	ch->off += (size_t)res;
	c->oq_bytes -= (size_t)res;
	s->st.outq_bytes -= (uint64_t)res;
	reply_progress(c, (uint64_t)res);
	if (ch->off == ch->len) {
		if (ch->next) {
			c->oq_head = ch->next;
			free(ch);
		} else if (ch->cap > CHUNK_MIN) {
			free(ch); /* made for one big reply: do not keep it */
			c->oq_head = c->oq_tail = NULL;
		} else {
			ch->off = ch->len = 0; /* keep one chunk for the next reply */
		}
	}
}

static void handle_signal(struct pt_server *s, int res)
{
	bool stop;
	int signo;

	if (res == -ECANCELED || s->stopping)
		return;
	if (res != (int)sizeof(s->siginfo)) {
		/* Should not happen; give up on signals rather than spin on a broken fd. */
		pt_err("server: signalfd read: %s; signals no longer handled",
		       res < 0 ? strerror(-res) : "short read");
		return;
	}
	signo = (int)s->siginfo.ssi_signo;
	if (s->ops.on_signal)
		stop = s->ops.on_signal(s->ctx, signo);
	else
		stop = signo != SIGHUP;
	if (stop) {
		pt_info("server: %s, stopping", strsignal(signo));
		s->stop = 1;
		return;
	}
	arm_signal(s);
}

static void handle_cqe(struct pt_server *s, struct io_uring_cqe *cqe)
{
	uint64_t ud = cqe->user_data;
	bool more = cqe->flags & IORING_CQE_F_MORE;
	struct pt_conn *c;

	if (!more)
		s->inflight--;
	switch (ud_op(ud)) {
	case OP_ACCEPT:
		handle_accept(s, cqe->res, more);
		break;
	case OP_ACCEPT_RETRY:
		s->accept_armed = false;
		if (!s->stopping)
			arm_accept(s);
		break;
	case OP_RECV:
		handle_recv(s, cqe);
		break;
	case OP_SEND:
		c = conn_lookup(s, ud); /* NULL: stale, cannot happen (slots wait for sends) */
		if (c)
			handle_send_conn(c, cqe->res);
		break;
	case OP_SIGNAL:
		handle_signal(s, cqe->res);
		break;
	case OP_WAKE:
		if (!s->stopping && cqe->res != -ECANCELED && !s->stop)
			arm_wake(s);
		break;
	case OP_TICK:
		if (s->stopping || cqe->res == -ECANCELED)
			break;
		sweep_timeouts(s);
		s->st.tick_max_turn_us = s->turn_us_window;
		s->st.tick_max_turn_cpu_us = s->turn_cpu_window;
		s->turn_us_window = s->turn_cpu_window = 0;
		if (s->ops.on_tick)
			s->ops.on_tick(s->ctx);
		arm_tick(s);
		break;
	case OP_CANCEL:
	case OP_NONE:
		break;
	}
}

/* Handles every CQE that is ready, with one cq_advance. Returns how many. */
static unsigned reap(struct pt_server *s)
{
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;

	io_uring_for_each_cqe(&s->ring, head, cqe)
	{
		handle_cqe(s, cqe);
		n++;
	}
	io_uring_cq_advance(&s->ring, n);
	return n;
}

/* --- setup ------------------------------------------------------------------------------ */

static int listen_path(struct pt_server *s, const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	mode_t old;
	int fd, rc;

	if (!path || !*path || strlen(path) >= sizeof(sa.sun_path))
		return -EINVAL;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	for (int attempt = 0;; attempt++) {
		/* Created 0600 at most, then widened to 0660: never more open than asked. */
		old = umask(0177);
		rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
		umask(old);
		if (rc == 0)
			break;
		rc = -errno;
		if (rc == -EADDRINUSE && attempt == 0) {
			struct stat stb;
			int probe;

			if (lstat(path, &stb) || !S_ISSOCK(stb.st_mode))
				goto fail;
			probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
			if (probe < 0)
				goto fail;
			rc = connect(probe, (struct sockaddr *)&sa, sizeof(sa)) ? -errno : 0;
			close(probe);
			if (rc == 0) {
				pt_err("server: %s: another server is listening", path);
				rc = -EADDRINUSE;
				goto fail;
			}
			if (rc != -ECONNREFUSED && rc != -ENOENT) {
				rc = -EADDRINUSE;
				goto fail;
			}
			pt_info("server: replacing stale socket %s", path);
			if (unlink(path) && errno != ENOENT) {
				rc = -errno;
				goto fail;
			}
			continue;
		}
		goto fail;
	}
	s->path = strdup(path);
	if (!s->path) {
		rc = -ENOMEM;
		unlink(path);
		goto fail;
	}
	if (chmod(path, 0660) || listen(fd, SOMAXCONN)) {
		rc = -errno;
		unlink(path);
		free(s->path);
		s->path = NULL;
		goto fail;
	}
	s->lfd = fd;
	return 0;
fail:
	close(fd);
	return rc;
}

/*
 * The ring was created disabled: allow only what the server submits, then enable it. Peer
 * input is parsed in this process; should it ever be subverted, the ring cannot be used to
 * open, read or write files, or to register new buffers or descriptors. Registration done
 * before this (the buffer ring) is not restricted; after it, no register call is allowed.
 */
static int restrict_ring(struct pt_server *s)
{
	static const uint8_t ops[] = {
		IORING_OP_ACCEPT, IORING_OP_RECVMSG, IORING_OP_SEND,
		IORING_OP_READ,	  IORING_OP_TIMEOUT, IORING_OP_ASYNC_CANCEL
	};
	struct io_uring_restriction res[sizeof(ops) + 1];
	unsigned n = 0;
	int rc;

	memset(res, 0, sizeof(res));
	for (; n < sizeof(ops); n++) {
		res[n].opcode = IORING_RESTRICTION_SQE_OP;
		res[n].sqe_op = ops[n];
	}
	res[n].opcode = IORING_RESTRICTION_SQE_FLAGS_ALLOWED;
	res[n++].sqe_flags = IOSQE_BUFFER_SELECT;
	/* Debian's liburing 2.3 declares io_uring_register_restrictions() but does not export
	 * it: the system call itself. */
	rc = (int)syscall(__NR_io_uring_register, s->ring.ring_fd, IORING_REGISTER_RESTRICTIONS,
			  res, n);
	if (!rc)
		rc = (int)syscall(__NR_io_uring_register, s->ring.ring_fd,
				  IORING_REGISTER_ENABLE_RINGS, NULL, 0);
	return rc ? -errno : 0;
}

/*
 * Ring flags, best first; older kernels refuse newer flags with -EINVAL. DEFER_TASKRUN (with
 * SINGLE_ISSUER, which it needs): completions are made when the loop asks for them, in its own
 * thread, not by interrupting it. It once seemed to starve a PING for more than 10 s under a
 * HINT flood; the cause was the loop's own turn order (yield_link), fixed since.
 */
#ifndef IORING_SETUP_DEFER_TASKRUN /* liburing 2.3's headers may lack them; 6.1 kernels have them \
				    */
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
static const unsigned ring_flags[] = {
	IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER |
		IORING_SETUP_DEFER_TASKRUN,
	IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN,
	IORING_SETUP_CQSIZE,
};

static int init_ring(struct pt_server *s, struct io_uring_params *p)
{
	int rc = -EINVAL;

	for (size_t i = 0; rc == -EINVAL && i < sizeof(ring_flags) / sizeof(ring_flags[0]); i++) {
		memset(p, 0, sizeof(*p));
		p->flags = ring_flags[i] | IORING_SETUP_R_DISABLED; /* restrict_ring() enables */
		p->cq_entries = CQ_ENTRIES;
		rc = io_uring_queue_init_params(RING_ENTRIES, &s->ring, p);
	}
	if (rc < 0)
		return rc;
	/* io_uring_enter by ring index, not fd: no fdget per call. Optional (5.18). */
	if (io_uring_register_ring_fd(&s->ring) < 0)
		pt_debug("server: no registered ring fd");
	return 0;
}

static int setup_ring(struct pt_server *s)
{
	struct io_uring_params p;
	struct io_uring_buf_reg reg;
	int rc;

	rc = init_ring(s, &p);
	if (rc < 0)
		return rc;
	s->ring_ok = true;
	if (!(p.features & IORING_FEAT_NODROP))
		pt_warn("server: kernel io_uring may drop completions under overload");

	s->br_size = ((size_t)s->nbufs * sizeof(struct io_uring_buf) + 4095) & ~(size_t)4095;
	s->br = mmap(NULL, s->br_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (s->br == MAP_FAILED) {
		s->br = NULL;
		return -errno;
	}
	s->bufs_size = (size_t)s->nbufs * s->buf_size;
	s->bufs = mmap(NULL, s->bufs_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		       0);
	if (s->bufs == MAP_FAILED) {
		s->bufs = NULL;
		return -errno;
	}
	s->free_bids = calloc(s->nbufs, sizeof(*s->free_bids));
	if (!s->free_bids)
		return -ENOMEM;
	io_uring_buf_ring_init(s->br);
	s->rmsg.msg_controllen = CMSG_BYTES;
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (unsigned long)s->br;
	reg.ring_entries = s->nbufs;
	reg.bgid = BGID;
	rc = io_uring_register_buf_ring(&s->ring, &reg, 0);
	if (rc < 0)
		return rc;
	s->br_registered = true;
	for (unsigned i = 0; i < s->nbufs; i++)
		buf_return(s, i);
	buf_publish(s);
	return restrict_ring(s);
}

static void server_limits(struct pt_server *s, const struct pt_server_cfg *cfg)
{
	s->nslots = s->max_conns + EVICT_SPARE;
	s->max_outq_total = cfg->max_outq_total ? cfg->max_outq_total : DEF_MAX_OUTQ_TOTAL;
	s->turn_frames = cfg->turn_frames ? cfg->turn_frames : DEF_TURN_FRAMES;
	s->turn_work = cfg->turn_work ? cfg->turn_work : DEF_TURN_WORK;
	s->frame_timeout_ms = cfg->frame_timeout_ms ? cfg->frame_timeout_ms : DEF_FRAME_TIMEOUT;
	s->reply_timeout_ms = cfg->reply_timeout_ms ? cfg->reply_timeout_ms : DEF_REPLY_TIMEOUT;
	s->idle_timeout_ms = cfg->idle_timeout_ms ? cfg->idle_timeout_ms : DEF_IDLE_TIMEOUT;
	s->yield_head = s->yield_tail = s->yield_starved = NIL;
	s->reserve_fd = eventfd(0, EFD_CLOEXEC);
}

int pt_server_create(struct pt_server **out, const struct pt_server_cfg *cfg,
		     const struct pt_server_ops *ops, void *ctx)
{
	struct pt_server *s;
	sigset_t set;
	int rc;

	*out = NULL;
	if (!cfg || !ops)
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->ops = *ops;
	s->ctx = ctx;
	s->lfd = s->sfd = s->efd = -1;
	s->dirty_head = s->dirty_tail = NIL;
	s->tick_ms = cfg->tick_ms;
	s->tick_ts.tv_sec = cfg->tick_ms / 1000;
	s->tick_ts.tv_nsec = (long long)(cfg->tick_ms % 1000) * 1000000;
	s->retry_ts.tv_nsec = ACCEPT_RETRY_MS * 1000000LL;
	s->max_conns = cfg->max_conns ? cfg->max_conns : DEF_MAX_CONNS;
	s->max_outq = cfg->max_outq ? cfg->max_outq : DEF_MAX_OUTQ;
	s->nbufs = cfg->nbufs ? cfg->nbufs : DEF_NBUFS;
	s->buf_size = cfg->buf_size ? cfg->buf_size : DEF_BUF_SIZE;
	s->max_parked_bufs = s->nbufs / 8;
	server_limits(s, cfg);
	rc = -EINVAL;
	if (s->nslots > MAX_CONN_IDX || (s->nbufs & (s->nbufs - 1)) || s->nbufs > 32768 ||
	    s->buf_size < 64 || s->buf_size > (1u << 30))
		goto fail;

	rc = -ENOMEM;
	s->conns = calloc(s->nslots, sizeof(*s->conns));
	if (!s->conns)
		goto fail;
	s->free_head = NIL;
	for (uint32_t i = s->nslots; i-- > 0;) {
		s->conns[i].s = s;
		s->conns[i].idx = i;
		s->conns[i].fd = -1;
		s->conns[i].free_next = s->free_head;
		s->free_head = i;
	}

	rc = setup_ring(s);
	if (rc < 0) {
		pt_err("server: io_uring setup: %s", strerror(-rc));
		goto fail;
	}

	if (cfg->listen_fd >= 0) {
		s->lfd = cfg->listen_fd;
	} else {
		rc = listen_path(s, cfg->path);
		if (rc < 0) {
			pt_err("server: listen on %s: %s", cfg->path ? cfg->path : "(null)",
			       strerror(-rc));
			goto fail;
		}
	}

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	rc = -pthread_sigmask(SIG_BLOCK, &set, &s->oldmask);
	if (rc < 0)
		goto fail;
	s->mask_set = true;
	s->sfd = signalfd(-1, &set, SFD_CLOEXEC);
	s->efd = eventfd(0, EFD_CLOEXEC);
	if (s->sfd < 0 || s->efd < 0) {
		rc = -errno;
		goto fail;
	}
	*out = s;
	return 0;
fail:
	pt_server_destroy(s);
	return rc;
}

/* --- loop ------------------------------------------------------------------------------- */

/*
 * Closes what is still open without waiting for the kernel: only after a failed drain, or from
 * destroy once the ring is gone (nothing can be in flight then).
 */
static void force_close_all(struct pt_server *s)
{
	for (uint32_t i = 0; i < s->nslots; i++) {
		struct pt_conn *c = &s->conns[i];

		if (c->used) {
			c->recv_armed = c->send_inflight = false;
			c->fd_cancel = true; /* no more SQEs */
			conn_abort(c);
			conn_free(c);
		}
		c->dirty = false;
	}
	s->dirty_head = s->dirty_tail = NIL;
}

static int submit_wait(struct pt_server *s, unsigned want, unsigned timeout_ms)
{
	int rc;

	if (timeout_ms) {
		struct __kernel_timespec ts = {
			.tv_sec = timeout_ms / 1000,
			.tv_nsec = (long long)(timeout_ms % 1000) * 1000000,
		};
		struct io_uring_cqe *cqe;

		rc = io_uring_submit_and_wait_timeout(&s->ring, &cqe, want, &ts, NULL);
		if (rc == -ETIME)
			rc = 0;
	} else {
		rc = io_uring_submit_and_wait(&s->ring, want);
	}
	if (rc == -EINTR || rc == -EAGAIN || rc == -EBUSY)
		rc = 0;
	return rc < 0 ? rc : 0;
}

int pt_server_run(struct pt_server *s)
{
	uint64_t t0 = 0, us = 0, cpu = 0, cpu0 = 0;
	bool turn = false;
	int rc = 0;

	if (!s)
		return -EINVAL;
	s->stopping = false;
	arm_accept(s);
	arm_signal(s);
	arm_wake(s);
	if (s->tick_ms)
		arm_tick(s);

	while (!s->stop) {
		resume_yielded(s);
		process_dirty(s);
		buf_publish(s);
		if (turn)
			us = now_us() - t0;
		/* Connections waiting for their next turn: look for completions, do not sleep. The
		 * kernel must still run its deferred completion work (timer, other connections'
		 * receives): with COOP_TASKRUN only an enter that asks for events does. */
		if (s->yield_head != NIL)
			rc = io_uring_submit_and_get_events(&s->ring);
		else
			rc = submit_wait(s, 1, 0);
		if (rc == -EINTR || rc == -EAGAIN || rc == -EBUSY || rc > 0)
			rc = 0;
		if (rc < 0) {
			pt_err("server: io_uring_submit_and_wait: %s", strerror(-rc));
			break;
		}
		t0 = now_us();
		cpu = clock_us(CLOCK_THREAD_CPUTIME_ID);
		if (turn)
			turn_done(s, us, cpu - cpu0);
		cpu0 = cpu;
		turn = true;
		reap(s);
		process_dirty(s);
	}

	/* Shutdown: cancel everything, drain, close. */
	s->stopping = true;
	for (uint32_t i = 0; i < s->nslots; i++)
		if (s->conns[i].used)
			mark_dirty(&s->conns[i]);
	for (int round = 0; s->inflight && round < 50; round++) {
		struct io_uring_sqe *sqe;

		process_dirty(s);
		buf_publish(s);
		if (round % 10 == 0) {
			sqe = get_sqe(s);
			io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
			io_uring_sqe_set_data64(sqe, ud_make(OP_CANCEL, 0, 0));
		}
		if (submit_wait(s, 1, 100) < 0)
			break;
		reap(s);
		process_dirty(s);
	}
	if (s->inflight)
		pt_warn("server: %llu operations still in flight at shutdown",
			(unsigned long long)s->inflight);
	force_close_all(s);
	return rc;
}

void pt_server_stop(struct pt_server *s)
{
	uint64_t one = 1;

	if (!s)
		return;
	s->stop = 1;
	if (s->efd >= 0 && write(s->efd, &one, sizeof(one)) < 0)
		return;
}

void pt_server_destroy(struct pt_server *s)
{
	if (!s)
		return;
	if (s->ring_ok)
		io_uring_queue_exit(&s->ring); /* cancels and waits for anything left */
	if (s->conns)
		force_close_all(s);
	if (s->bufs)
		munmap(s->bufs, s->bufs_size);
	if (s->br)
		munmap(s->br, s->br_size);
	if (s->lfd >= 0)
		close(s->lfd);
	if (s->path) {
		unlink(s->path);
		free(s->path);
	}
	if (s->sfd >= 0)
		close(s->sfd);
	if (s->efd >= 0)
		close(s->efd);
	if (s->reserve_fd >= 0)
		close(s->reserve_fd);
	if (s->mask_set)
		pthread_sigmask(SIG_SETMASK, &s->oldmask, NULL);
	free(s->free_bids);
	free(s->conns);
	free(s);
}

/* --- connection API ----------------------------------------------------------------------- */

int pt_conn_send(struct pt_conn *c, const void *frame, size_t len)
{
	struct pt_server *s = c->s;
	struct chunk *t = c->oq_tail;

	if (c->dead || !c->used)
		return -EPIPE;
	if (!len)
		return 0;
	if (!t || t->cap - t->len < len) {
		size_t cap = len < CHUNK_MIN ? CHUNK_MIN : len;

		t = malloc(sizeof(*t) + cap);
		if (!t)
			return -ENOMEM;
		t->next = NULL;
		t->off = t->len = 0;
		t->cap = cap;
		if (c->oq_tail)
			c->oq_tail->next = t;
		else
			c->oq_head = t;
		c->oq_tail = t;
	}
	if (!c->oq_bytes) {
		c->t_sendprog = now_ms();
		c->sent_mark = c->sent + len;
	}
	/* Appending behind a send in flight is fine: the kernel reads only [off, off+send_len). */
	memcpy(t->data + t->len, frame, len);
	t->len += len;
	c->oq_bytes += len;
	s->st.outq_bytes += len;
	mark_dirty(c);
	return 0;
}

/*
 * Logs an error answered to a peer, ERR_LOG_PER_SEC a second at most: a flood of bad frames
 * would otherwise write a journal line per 16 bytes received. The next line logged counts the
 * errors that were not.
 */
static void log_peer_error(struct pt_conn *c, const char *reason)
{
	struct pt_server *s = c->s;
	uint64_t sec = now_ms() / 1000;
	char more[64] = "";

	if (sec != s->err_log_sec) {
		s->err_log_sec = sec;
		s->err_logged = 0;
	}
	if (s->err_logged >= ERR_LOG_PER_SEC) {
		s->err_unlogged++;
		return;
	}
	s->err_logged++;
	if (s->err_unlogged)
		snprintf(more, sizeof(more), " (%llu errors of peers not logged before this)",
			 (unsigned long long)s->err_unlogged);
	s->err_unlogged = 0;
	pt_warn("conn %u pid %d: %s%s", c->id, (int)c->peer.pid, reason, more);
}

int pt_conn_send_error(struct pt_conn *c, uint32_t seq, int code, const char *fmt, ...)
{
	char reason[PT_MAX_REASON + 1];
	unsigned char frame[sizeof(struct pt_hdr) + sizeof(struct pt_error) + PT_MAX_REASON];
	va_list ap;
	size_t n;

	if (code < 0)
		code = -code;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	log_peer_error(c, reason);
	n = pt_build_error(frame, sizeof(frame), seq, code, reason);
	if (!n)
		return -EINVAL;
	return pt_conn_send(c, frame, n);
}

void pt_conn_close(struct pt_conn *c)
{
	if (!c->used || c->closing)
		return;
	c->closing = true;
	mark_dirty(c);
}

void pt_conn_charge(struct pt_conn *c, uint64_t work)
{
	turn_used(c); /* a charge from a new turn starts the count afresh */
	c->turn_work += work;
	c->s->turn_total += work;
}

void pt_conn_pause(struct pt_conn *c)
{
	if (c->paused || !c->used)
		return;
	c->paused = true;
	cancel_recv(c); /* what the peer sends meanwhile stays in the kernel */
	mark_dirty(c);
}

void pt_conn_resume(struct pt_conn *c)
{
	if (!c->paused)
		return;
	c->paused = false;
	mark_dirty(c);
}

void pt_conn_set_registered(struct pt_conn *c, bool registered)
{
	c->registered = registered;
}

size_t pt_conn_outq(const struct pt_conn *c)
{
	return c->oq_bytes;
}

unsigned pt_conn_take_fds(struct pt_conn *c, int *fds, unsigned max)
{
	unsigned n = c->nfds < max ? c->nfds : max;

	memcpy(fds, c->fds, n * sizeof(int));
	memmove(c->fds, c->fds + n, (c->nfds - n) * sizeof(int));
	c->nfds -= n;
	c->s->queued_fds -= n;
	return n;
}

const struct pt_peer *pt_conn_peer(const struct pt_conn *c)
{
	return &c->peer;
}

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

int pt_conn_peer_pidfd(const struct pt_conn *c)
{
	int fd = -1;
	socklen_t len = sizeof(fd);

	if (getsockopt(c->fd, SOL_SOCKET, SO_PEERPIDFD, &fd, &len))
		return -errno;
	return fd >= 0 ? fd : -ESRCH;
}

uint32_t pt_conn_id(const struct pt_conn *c)
{
	return c->id;
}

void *pt_conn_data(const struct pt_conn *c)
{
	return c->data;
}

void pt_conn_set_data(struct pt_conn *c, void *p)
{
	c->data = p;
}

struct pt_server *pt_conn_server(const struct pt_conn *c)
{
	return c->s;
}

void pt_server_get_stats(const struct pt_server *s, struct pt_server_stats *st)
{
	*st = s->st;
	st->bufs_parked = s->nparked_bufs;
	st->parked_bytes = s->parked_bytes;
}
