/* SPDX-License-Identifier: LGPL-2.1 OR BSD-2-Clause */
/*
 * libpagetrack: the device side of the pagetrack protocol (docs/PROTOCOL.md), for a VMM's
 * balloon device. One struct pt_client is one connection to pagetrackd and serves one VM.
 *
 * Conventions: functions return 0 (or a count) on success and a negative errno on failure.
 * When the service answered with an ERROR frame, the errno is derived from its code and
 * pt_client_last_error() gives the code and the service's reason text. A client is not
 * thread-safe; use one per thread or lock around it.
 *
 * Blocking calls (register, arm, hint, query, ...) send one request and wait for its reply,
 * matched by seq, for at most the timeout (pt_client_set_timeout(), default 30 s). While
 * waiting they keep writing queued hints and dispatching their acks. After a timeout or a
 * protocol error the connection is unusable: every later call fails with the same error.
 *
 * Event-loop use: pt_client_queue_hint() batches hints into frames without blocking,
 * pt_client_flush() writes what the socket takes (-EAGAIN: wait for POLLOUT on
 * pt_client_fd()), pt_client_poll_replies() reads and dispatches whatever replies arrived
 * (wait for POLLIN). Poll for POLLIN while writing: the service stops reading from a
 * connection whose replies are not read.
 */
#ifndef PAGETRACK_CLIENT_H
#define PAGETRACK_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pagetrack/proto.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Public symbols of libpagetrack.so; everything else is built with -fvisibility=hidden. */
#ifndef PT_API
#define PT_API __attribute__((visibility("default")))
#endif

#define PT_DEFAULT_SOCKET "/run/pagetrack/balloon.sock"
#define PT_CLIENT_BATCH	  4096	     /* hint entries per frame: 64 KiB of ranges */
#define PT_CLIENT_QUEUE	  (4u << 20) /* unsent bytes pt_client_queue_hint() may hold */

struct pt_client;

struct pt_client_error {
	int code;	  /* enum pt_err from the service, 0 for a local/protocol error */
	uint32_t seq;	  /* seq of the failed request */
	char reason[260]; /* NUL-terminated */
};

struct pt_client_stats {
	uint64_t hint_frames;	 /* HINT frames sent or queued */
	uint64_t hint_pages;	 /* pages in them */
	uint64_t pages_recorded; /* from ACKs */
	uint64_t pages_ignored;	 /* stale command ID (ACK `ignored`) */
	uint64_t hint_errors;	 /* HINT frames answered by ERROR */
	uint32_t inflight;	 /* hint frames not yet acknowledged */
};

/*
 * A collected VERDICT (or WR_RECORDS) reply: totals from its last frame, ranges of all frames.
 * Free with pt_client_result_free().
 */
struct pt_client_result {
	struct pt_verdict v; /* v.nranges is the total number of ranges */
	struct pt_range *ranges;
};

/*
 * Called for every frame of a VERDICT / WR_RECORDS reply. Ranges are only valid during the
 * call. Nothing may be acted on before the call with @last true returned and the function
 * that invoked it returned 0: a reply cut short means "keep everything". Return 0 to go on,
 * a negative errno to fail the query (the rest of the reply is still read and dropped).
 */
typedef int (*pt_client_verdict_cb)(void *arg, const struct pt_verdict *v,
				    const struct pt_range *ranges, uint32_t n, bool last);

/* Called for each reply to a queued hint frame: err 0 with @ack, or a negative errno. */
typedef void (*pt_client_ack_cb)(void *arg, uint32_t seq, int err, const struct pt_ack *ack);

/* Connection. pt_client_connect() returns NULL with errno set; @path NULL: the default. */
PT_API struct pt_client *pt_client_connect(const char *path);
PT_API void pt_client_close(struct pt_client *c);
PT_API int pt_client_fd(const struct pt_client *c);
PT_API void pt_client_set_timeout(struct pt_client *c, int timeout_ms); /* < 0: forever */
PT_API const struct pt_client_error *pt_client_last_error(const struct pt_client *c);
PT_API void pt_client_get_stats(const struct pt_client *c, struct pt_client_stats *st);

/*
 * REGISTER. @vmm_pid 0 means the calling process. @handle (may be NULL) gets the service's
 * VM handle; pt_client_coverage() then returns the ACK's coverage bits (PT_WHY_*; 0: fully
 * tracked, otherwise every verdict of this VM will be "keep").
 */
PT_API int pt_client_register(struct pt_client *c, uint32_t vmm_pid, enum pt_dirty_mode mode,
			      const struct pt_reg_slot *slots, uint32_t nslots, uint32_t *handle);
PT_API uint64_t pt_client_coverage(const struct pt_client *c);

/*
 * REGISTER2: REGISTER with file descriptors passed to the service (SCM_RIGHTS) as proof that
 * the device holds the VM (see proto.h for which descriptors each mode takes). @resume is 0 or
 * the token of an earlier registration of this VM (pt_client_token() on the old client). The
 * device may close its descriptors after the call.
 */
struct pt_client_reg {
	uint32_t vmm_pid; /* 0: the calling process */
	enum pt_dirty_mode mode;
	const struct pt_reg_slot2 *slots;
	uint32_t nslots;
	const int *fds;
	uint32_t nfds;
	uint64_t resume;
};
PT_API int pt_client_register2(struct pt_client *c, const struct pt_client_reg *reg,
			       uint32_t *handle);
/* The token the service returned with the last successful REGISTER(2), or 0. If it differs
 * from the @resume given, the VM started afresh: nothing of the earlier registration carried
 * over, and the device must ARM again before it acts on any hint (PROTOCOL.md section 2). */
PT_API uint64_t pt_client_token(const struct pt_client *c);

/*
 * PT_TRACK_UFFD, for a VMM without KVM dirty logging (or one it does not use): the service
 * tracks writes with asynchronous userfaultfd write-protection and PAGEMAP_SCAN (Linux 6.7).
 * Call it in the VMM process, with every slot's `hva` set to the VMM's address of its memory.
 *
 * With *uffd == -1 it creates a userfaultfd with UFFD_FEATURE_WP_ASYNC |
 * UFFD_FEATURE_WP_UNPOPULATED (and UFFD_FEATURE_WP_HUGETLBFS_SHMEM where the kernel has it,
 * for memfd/shmem memory), registers each slot's memory with UFFDIO_REGISTER_MODE_WP, and
 * returns it in *uffd: keep it open to register again (a new connection, a restarted service);
 * closing it ends the tracking of that memory. With *uffd >= 0 it reuses that userfaultfd as
 * is. It then opens /proc/self/pagemap and sends REGISTER2 with both descriptors (and
 * `kvm_vm_fd` if >= 0). ARM is then the sync: no KVM dirty-log sync is needed.
 *
 * Nothing else may write-protect this memory or re-protect it with PAGEMAP_SCAN while it is
 * tracked (that would hide writes). Writes through another process's mapping of shared
 * memory (a vhost-user backend) are not seen: report them with pt_client_written().
 * Returns 0 or a negative errno (-EOPNOTSUPP: the kernel lacks async write-protect).
 */
PT_API int pt_client_register_uffd(struct pt_client *c, const struct pt_reg_slot2 *slots,
				   uint32_t nslots, int kvm_vm_fd, int *uffd, uint32_t *handle);

/*
 * Command IDs: ARM before the dirty-log sync (-EALREADY: armed since the driver's last STOP,
 * arm the next ID); STOP with the ID of the round the driver's STOP buffer ends, never for a
 * STOP the device itself writes into free_page_hint_cmd_id (-ESTALE: that round's ID is no
 * longer current, nothing changed); DONE when the device wrote DONE (PROTOCOL.md 4.2).
 */
PT_API int pt_client_arm(struct pt_client *c, uint32_t cmd_id);
PT_API int pt_client_stop(struct pt_client *c, uint32_t cmd_id);
PT_API int pt_client_done(struct pt_client *c, uint32_t cmd_id);

/*
 * Sends hints in frames of up to PT_CLIENT_BATCH ranges and waits until every queued hint
 * frame is acknowledged. Returns 0, or the first error of those frames. Per-page results
 * accumulate in pt_client_get_stats().
 */
PT_API int pt_client_hint(struct pt_client *c, uint32_t cmd_id, const struct pt_range *ranges,
			  size_t n);

/* Non-blocking: queues up to @n hints; returns how many were queued, -EAGAIN if none fit. */
PT_API long pt_client_queue_hint(struct pt_client *c, uint32_t cmd_id,
				 const struct pt_range *ranges, size_t n);
/* Writes queued frames: 0 when all are out, -EAGAIN when the socket is full, or -errno. */
PT_API int pt_client_flush(struct pt_client *c);
/* True when queued bytes wait for the socket (poll for POLLOUT). */
PT_API bool pt_client_want_write(const struct pt_client *c);
/* Reads and dispatches available replies without blocking: count handled, or -errno. */
PT_API int pt_client_poll_replies(struct pt_client *c);
PT_API void pt_client_set_ack_cb(struct pt_client *c, pt_client_ack_cb cb, void *arg);

/*
 * QUERY: @what is enum pt_query_what. pt_client_query() collects the reply into @res and
 * checks it (ranges add up to `free`); pt_client_query_cb() streams it frame by frame.
 */
PT_API int pt_client_query(struct pt_client *c, uint32_t cmd_id, uint32_t what,
			   struct pt_client_result *res);
PT_API int pt_client_query_cb(struct pt_client *c, uint32_t cmd_id, uint32_t what,
			      pt_client_verdict_cb cb, void *arg);
PT_API void pt_client_result_free(struct pt_client_result *res);

/* REPORT (n <= PT_MAX_REPORT; returns once recorded), INFLATE, DEFLATE. @pages may be NULL. */
PT_API int pt_client_report(struct pt_client *c, const struct pt_range *ranges, uint32_t n,
			    uint64_t *pages);
PT_API int pt_client_inflate(struct pt_client *c, const struct pt_range *ranges, uint32_t n,
			     uint64_t *pages);
PT_API int pt_client_deflate(struct pt_client *c, const struct pt_range *ranges, uint32_t n,
			     uint64_t *pages);

/*
 * WRITTEN: pages the VMM itself wrote into guest memory (device emulation, DMA into guest
 * buffers). KVM's dirty log never sees those writes, so a device whose VMM writes guest
 * memory MUST report them before it trusts a verdict. Returns once they are logged.
 */
PT_API int pt_client_written(struct pt_client *c, const struct pt_range *ranges, uint32_t n,
			     uint64_t *pages);

/* Write records: capabilities, and the pages written since ARM in the ranges (or unsure). */
PT_API int pt_client_wr_caps(struct pt_client *c, struct pt_wr_caps *caps);
PT_API int pt_client_wr_read(struct pt_client *c, const struct pt_range *ranges, uint32_t n,
			     struct pt_client_result *res);

/* Round trip; 0 or -errno. */
PT_API int pt_client_ping(struct pt_client *c);

/* Maps an enum pt_err code (either sign) to the errno the client returns for it. */
PT_API int pt_client_errno(int code);

#ifdef __cplusplus
}
#endif

#endif
