/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The io_uring core of pagetrackd: a generic server for framed messages (include/pagetrack/
 * proto.h) on an AF_UNIX SOCK_STREAM socket.
 *
 * One thread, one io_uring. Multishot accept; multishot recv into a registered ring of
 * provided buffers; replies go out through the ring (one send in flight per connection, the
 * rest queued); SIGINT/SIGTERM/SIGHUP arrive through a signalfd read in the ring; the tick is
 * an IORING_OP_TIMEOUT. In steady state the only syscall is io_uring_enter.
 *
 * Frames are cut by the per-connection pt_framer; a frame lying whole in one receive buffer is
 * handed to on_frame in place, a frame spanning buffers is reassembled.
 *
 * Backpressure: once a connection has more than max_outq reply bytes queued, the server stops
 * reading from it (its multishot recv is cancelled and whatever was already received is parked
 * unprocessed) until the queue has drained to max_outq / 2. A peer that never reads its replies
 * therefore costs at most max_outq + one reply + the little it sent before the recv was
 * cancelled, and other connections are not slowed: at most nbufs / 8 receive buffers are held
 * by stalled connections, past that their bytes are copied out.
 *
 * All callbacks run on the thread inside pt_server_run(). The pt_conn_* functions may be called
 * from callbacks (on_frame, on_tick, on_signal, on_close of another connection). A connection
 * is never freed while a callback for it is running: on_close is the last call that sees it.
 */
#ifndef PT_SERVER_H
#define PT_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <pagetrack/proto.h>

struct pt_server;
struct pt_conn;

struct pt_peer {
	pid_t pid;
	uid_t uid;
	gid_t gid;
};

struct pt_server_ops {
	/* A complete frame whose header passed pt_hdr_check(). @payload (NULL when h->len is 0)
	 * and @h are valid only during the call. */
	void (*on_frame)(void *ctx, struct pt_conn *c, const struct pt_hdr *h, const void *payload);
	/* The connection is gone (peer closed, error, pt_conn_close, server shutdown). Last call
	 * that may use @c; free what pt_conn_data() points to here. */
	void (*on_close)(void *ctx, struct pt_conn *c);
	/* Every tick_ms: watchdog ping, metrics. */
	void (*on_tick)(void *ctx);
	/* SIGINT, SIGTERM or SIGHUP arrived; return true to stop the loop. Without this callback
	 * SIGINT and SIGTERM stop the loop and SIGHUP is ignored. */
	bool (*on_signal)(void *ctx, int signo);
	/* A connection was accepted (pt_conn_peer() is filled in); it may be refused with
	 * pt_conn_close(). Optional. on_close follows in any case. */
	void (*on_accept)(void *ctx, struct pt_conn *c);
	/* A connection paused with pt_conn_pause() has sent (nearly) all its queued replies:
	 * queue the next part of the long reply, or pt_conn_resume() when it is complete. If it
	 * does neither, it is called again on the next turn of the loop. */
	void (*on_drain)(void *ctx, struct pt_conn *c);
};

struct pt_server_cfg {
	const char *path;   /* socket path: created with mode 0660 whatever the umask; the parent
			     * directory must exist; a stale socket file is replaced, a live one
			     * (something accepts on it) is an error (-EADDRINUSE) */
	int listen_fd;	    /* >= 0: an already listening socket (systemd socket activation); @path
			     * is then unused. The server owns it and closes it on destroy. */
	unsigned tick_ms;   /* 0 = no tick */
	unsigned max_conns; /* 0 = 1024; further connections are accepted and closed at once */
	size_t max_outq;    /* queued reply bytes per connection before the server stops reading
			     * from it; 0 = 4 MiB */
	unsigned nbufs;	    /* receive buffers in the provided-buffer ring, a power of two
			     * <= 32768; 0 = 256 */
	unsigned buf_size;  /* bytes per receive buffer; 0 = 64 KiB */
	/* Limits (see docs/PROTOCOL.md sections 6 and 9); 0 = the default in brackets. */
	size_t max_outq_total;	   /* reply bytes queued, all connections, before every
				    * connection with replies queued stops reading [64 MiB] */
	unsigned turn_frames;	   /* frames one connection may have handled per turn [64] */
	uint64_t turn_work;	   /* work (pages, see pt_conn_charge) per turn [2^24] */
	unsigned frame_timeout_ms; /* a partial frame held longer: closed [30 s] */
	unsigned reply_timeout_ms; /* queued replies not read for longer: closed [30 s] */
	unsigned idle_timeout_ms;  /* unregistered connection without a frame for longer:
				    * closed [60 s] */
};

int pt_server_create(struct pt_server **out, const struct pt_server_cfg *cfg,
		     const struct pt_server_ops *ops, void *ctx);
/*
 * pt_server_create() blocks SIGINT, SIGTERM and SIGHUP in the calling thread (they are read
 * from a signalfd); create the server before starting other threads, so they inherit the
 * mask. pt_server_destroy() restores it. Call pt_server_run() on the creating thread.
 */
/* Runs the event loop until on_signal says stop or pt_server_stop() is called, then cancels
 * everything in flight and closes every connection (on_close for each). 0 or -errno. */
int pt_server_run(struct pt_server *s);
/* Makes pt_server_run() return. Safe from callbacks, other threads and signal handlers. */
void pt_server_stop(struct pt_server *s);
/* NULL-safe; closes connections and the listener, unlinks the socket file it created. */
void pt_server_destroy(struct pt_server *s);

/* Copies @frame (a whole frame or several) into the connection's out queue; the ring sends
 * it. 0, -EPIPE once the connection has failed (send/recv error, server shutdown), -ENOMEM.
 * Sending after pt_conn_close() is allowed: the bytes go out before the close. */
int pt_conn_send(struct pt_conn *c, const void *frame, size_t len);
/* Logs "conn N pid P: <reason>" at warning and queues a PT_MSG_ERROR frame with @code (a
 * positive enum pt_err, or its negative) and the reason text. */
int pt_conn_send_error(struct pt_conn *c, uint32_t seq, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Stops reading from @c and closes it once the queued replies are sent. */
void pt_conn_close(struct pt_conn *c);
/* Reply bytes queued and not yet sent. */
size_t pt_conn_outq(const struct pt_conn *c);
const struct pt_peer *pt_conn_peer(const struct pt_conn *c); /* SO_PEERCRED at accept */
/* A new pidfd (the caller closes it) of the process that connected, even if it has exited
 * since (SO_PEERPIDFD, Linux 6.5+); -errno where the kernel cannot say. */
int pt_conn_peer_pidfd(const struct pt_conn *c);
/*
 * Moves up to @max descriptors the peer passed with SCM_RIGHTS into @fds, oldest first, and
 * returns how many. Descriptors arrive with the bytes of the sendmsg() that carried them, so
 * when a frame is dispatched the ones sent with it have arrived (possibly with ones sent for a
 * later frame in the same read). The caller owns what it takes; the rest are closed with the
 * connection. At most 4 may wait: a peer that sends more is closed.
 */
unsigned pt_conn_take_fds(struct pt_conn *c, int *fds, unsigned max);
/*
 * Fairness. pt_conn_charge() adds work (pages touched) to what the connection used in this
 * turn of the loop; once it has used turn_work, or handled turn_frames frames, the rest of its
 * input waits for the next turn, after every other connection had its turn.
 */
void pt_conn_charge(struct pt_conn *c, uint64_t work);
/*
 * Long replies: pt_conn_pause() stops handling input from @c after the current frame (what
 * arrives is kept, in order); on_drain is called as its queue drains, until pt_conn_resume().
 */
void pt_conn_pause(struct pt_conn *c);
void pt_conn_resume(struct pt_conn *c);
/* A registered connection is never closed for idling, nor evicted to make room for a new one
 * when max_conns are open (the unregistered one idle the longest is). */
void pt_conn_set_registered(struct pt_conn *c, bool registered);
uint32_t pt_conn_id(const struct pt_conn *c); /* unique for the server's life, from 1 */
void *pt_conn_data(const struct pt_conn *c);
void pt_conn_set_data(struct pt_conn *c, void *p);
struct pt_server *pt_conn_server(const struct pt_conn *c);

struct pt_server_stats {
	uint64_t conns_accepted;
	uint64_t conns_open;
	uint64_t frames; /* frames handed to on_frame */
	uint64_t bytes_in;
	uint64_t bytes_out;
	uint64_t bad_frames;	       /* framing errors and pt_hdr_check() failures */
	uint64_t backpressure_stalls;  /* times a connection's input was stopped */
	uint64_t enobufs;	       /* recvs that found the buffer ring empty */
	uint64_t conns_rejected;       /* over max_conns */
	uint64_t outq_bytes;	       /* reply bytes queued now, all connections */
	uint64_t bufs_parked;	       /* ring buffers held by stalled connections now */
	uint64_t parked_bytes;	       /* received bytes held by stalled connections now */
	uint64_t turns_yielded;	       /* times a connection's input waited for the next turn */
	uint64_t conns_timed_out;      /* closed: partial frame, unread replies, or idle */
	uint64_t conns_evicted;	       /* unregistered, closed to make room (max_conns) */
	uint64_t conns_refused_nofd;   /* accepted and closed at once: out of descriptors */
	uint64_t max_turn_us;	       /* longest turn of the loop (handling one batch of
					* completions), microseconds, since start */
	uint64_t tick_max_turn_us;     /* the same, during the last tick period */
	uint64_t max_turn_cpu_us;      /* the most CPU time of the loop's thread one turn took:
					* what a turn cost the other connections, whatever the
					* machine's load added to the wall time above */
	uint64_t tick_max_turn_cpu_us; /* the same, during the last tick period */
};
void pt_server_get_stats(const struct pt_server *s, struct pt_server_stats *st);

#endif
