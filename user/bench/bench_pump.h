/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The synthetic balloon device of `pagetrackd bench`: prebuilt request streams (hinting
 * rounds as Linux drives them: ARM, sync, HINT..., STOP, QUERY), a pump that writes them
 * pipelined while reading and counting replies, and the baselines that read the very same
 * bytes: a sink that only reads, an epoll/read()/write() loop running the same cmdstate
 * functions, and a 16-byte echo for the socket's ping-pong floor.
 */
#ifndef PT_BENCH_PUMP_H
#define PT_BENCH_PUMP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <pagetrack/proto.h>

#include "lib/proto.h"

/* One device connection. */
struct bench_conn {
	int fd;
	bool sink; /* the peer sends nothing back */
	struct pt_framer fr;
	uint8_t *rbuf;
	uint64_t done; /* requests completed: ACK, ERROR, last VERDICT frame */
	uint64_t errors;
	int last_err;		   /* code of the last ERROR */
	struct pt_verdict verdict; /* totals of the last complete VERDICT */
};

int bench_conn_init(struct bench_conn *c, int fd, bool sink);
void bench_conn_close(struct bench_conn *c);
/* Writes @len bytes while reading replies, until all are out and @want more completed. */
int bench_pump(struct bench_conn *c, const void *buf, size_t len, uint64_t want);
/* REGISTER @pid with @slots (ring mode); 0 or a negative error. */
int bench_register(struct bench_conn *c, uint32_t pid, const struct pt_reg_slot *slots, uint32_t n);
/* One request and its complete reply; returns 0 or -PT_E_* of an ERROR reply. */
int bench_request(struct bench_conn *c, const void *req, size_t len);

/* The byte stream of one hinting round under one command ID. */
struct bench_round {
	uint8_t *arm, *body; /* ARM; HINT frames + STOP + QUERY */
	size_t arm_len, body_len;
	uint64_t body_replies;
	uint64_t records;
};

/* Ranges of @range_len bytes covering every slot. */
struct pt_range *bench_ranges(const struct pt_reg_slot *slots, uint32_t n, uint64_t range_len,
			      size_t *count);
int bench_round_build(struct bench_round *r, uint32_t cmd, const struct pt_range *ranges, size_t n,
		      uint32_t per_frame);
void bench_round_free(struct bench_round *r);

/* Called between ARM's ACK and the hints: the VMM's dirty-log sync. */
typedef int (*bench_sync_fn)(void *arg);

struct bench_run {
	uint64_t rounds, records, ns;
	uint64_t sure;	       /* verdicts without unsure_reason */
	uint64_t kept_written; /* summed over the verdicts */
	uint32_t why;	       /* unsure_reason bits seen */
};

/*
 * Rounds alternating between rounds[0] and rounds[1] (command IDs may not be reused before
 * STOP), until @max_rounds or @max_ns, whichever comes first (0: no limit). A sink
 * connection gets the same bytes without waiting for replies.
 */
int bench_run_rounds(struct bench_conn *c, const struct bench_round *rounds, uint64_t max_rounds,
		     uint64_t max_ns, bench_sync_fn sync, void *arg, struct bench_run *out);

/* Baseline peers, forked: *fd is our end of an AF_UNIX SOCK_STREAM socketpair. */
/* A bare socketpair + fork: in the child *pid == 0 and *child_fd is its end. */
int bench_fork_peer(int *fd, pid_t *pid, int *child_fd);
/* The floor: only the bitmap work of the stream, no replies (a sink); bench_floor.c. */
int bench_fork_floor(int *fd, pid_t *pid, const struct pt_reg_slot *slots, uint32_t n);
int bench_fork_sink(int *fd, pid_t *pid);
/* After a sink run: shut our side, wait for the child's byte count. */
int bench_sink_finish(int fd, uint64_t *bytes);
int bench_fork_epoll(int *fd, pid_t *pid, const struct pt_reg_slot *slots, uint32_t n);
/* One epoll loop serving @n <= 64 connections, connection i for a VM of pid @vm_pids[i]. */
int bench_fork_epoll_multi(int *fds, int n, pid_t *pid, const struct pt_reg_slot *slots,
			   uint32_t nslots, const pid_t *vm_pids);
int bench_fork_echo(int *fd, pid_t *pid, size_t msg);
void bench_child_reap(int fd, pid_t pid);

#endif
