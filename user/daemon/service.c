// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "writelog/canary.h"
#include "bigbatch.h"
#include "caps.h"
#include "writelog/uffd.h"
#include "cmdstate.h"
#include "identity.h"
#include "quota.h"
#include "shared/fdlink.h"
#include "shared/log.h"
#include "lib/proto.h"
#include "sdnotify.h"
#include "server.h"
#include "service.h"
#include "status.h"

/* Who holds a registered VM, and what proves it (PROTOCOL.md section 2). */
struct vm_id {
	int pidfd;	      /* the VMM process: readable once it exited; -1 */
	int vm_fd;	      /* the KVM VM descriptor a REGISTER2 passed, held; -1 */
	uint64_t token;	      /* returned in the ACK; a reconnect presents it as `resume` */
	struct pt_conn *conn; /* the connection holding the VM, NULL */
	uid_t uid;	      /* charged in the quotas ... */
	uint64_t bits;	      /* ... for this much log */
	bool charged;
};

/* pt_conn_data() of every connection. */
struct conn_info {
	uint32_t bind;	       /* generation << 16 | VM index + 1, or 0 */
	bool taken_over;       /* another connection registered the VM this one held */
	bool counted;	       /* in the uid's connection quota */
	bool refused;	       /* over the quota at accept: closing, nothing is served */
	uint64_t peer_start;   /* start time of the peer at accept (kernels without SO_PEERPIDFD) */
	struct big_batch *big; /* a batch being applied a part per turn, or NULL */
};

struct lazy_reply;

/* The journal's last "pages kept" line for a VM (log_kept). */
struct kept_log {
	uint32_t why;	/* its PT_WHY_* set, 0: none logged since registering */
	time_t at;	/* when (CLOCK_MONOTONIC_COARSE seconds) */
	uint64_t quiet; /* verdicts kept since, not logged (`why`: the last one's reason) */
};

struct svc {
	const struct pt_config *cfg;
	struct pt_config live; /* what SIGHUP may change */
	struct pt_tracker *t;
	struct pt_coverage cov;
	struct pt_server *srv;
	struct pt_vmctx *vms[PT_MAX_VMS];
	struct vm_id id[PT_MAX_VMS];
	struct kept_log kept_log[PT_MAX_VMS];
	struct pt_quota *quota;
	time_t quota_log_at;	  /* last "connection over quota" log line */
	uint16_t gen[PT_MAX_VMS]; /* bumped per context, so a connection's binding can go stale */
	uint8_t *out;		  /* one reply frame being built */
	struct pt_range *ranges;  /* WR_READ unsure: the asked ranges, sorted, merged */
	size_t nranges, cap_ranges;
	struct pt_status_counters n;
	unsigned ticks;
	struct lazy_reply *lazy; /* long replies being produced, one per connection at most */
	struct pt_range *part;	 /* one part of a large batch being applied */
};

/* --- replies -------------------------------------------------------------------------------- */

static void reply_ack(struct svc *s, struct pt_conn *c, uint32_t seq, uint32_t v32, uint64_t pages,
		      uint64_t ignored)
{
	size_t len = pt_build_ack(s->out, PT_MAX_FRAME, seq, v32, pages, ignored);

	pt_conn_send(c, s->out, len);
}

static void reply_err(struct svc *s, struct pt_conn *c, uint32_t seq, int code, const char *what)
{
	if (code < 0)
		code = -code;
	s->n.errors++;
	pt_conn_send_error(c, seq, code, "%s: %s", what, pt_err_str(code));
}

/* Reply frames stay at or below 64 KiB (PROTOCOL.md section 6): 4092 ranges each. */
#define REPLY_FRAME_BYTES 65536
#define KEPT_LOG_SECS	  60 /* log_kept: at most one line a minute per VM */

/* Ranges in as many frames as needed; every frame repeats the counts, the last lacks MORE. */
static void send_ranges(struct svc *s, struct pt_conn *c, unsigned type, uint32_t seq,
			struct pt_verdict *v)
{
	const size_t per =
		(REPLY_FRAME_BYTES - sizeof(struct pt_hdr) - sizeof(*v)) / sizeof(struct pt_range);
	size_t done = 0;

	do {
		size_t n = s->nranges - done < per ? s->nranges - done : per;
		bool more = done + n < s->nranges;
		size_t len;

		v->nranges = n;
		len = pt_build_verdict(s->out, PT_MAX_FRAME, type, seq, more ? PT_F_MORE : 0, v,
				       s->ranges + done);
		if (!len || pt_conn_send(c, s->out, len)) {
			/* A reply cut short may not be followed by the next one's frames: the
			 * device sees the close, and keeps everything (PROTOCOL.md 6). */
			pt_conn_close(c);
			break;
		}
		done += n;
	} while (done < s->nranges);
	s->nranges = 0;
}

/* --- long replies, produced as the peer reads them ------------------------------------------ */

/*
 * A VERDICT or WR_RECORDS reply may list millions of ranges (16 bytes each) for a request of
 * 24 bytes. Its pages are frozen when the request is handled (a bitmap of the VM's region, one
 * bit per page: 32 KiB per GiB of guest memory), and its frames, about 64 KiB each, are built
 * from them only as the connection's queue drains. Input from the connection waits meanwhile,
 * so the reply's frames stay together.
 */
struct lazy_reply {
	struct lazy_reply *next;
	struct pt_conn *c;
	unsigned type;
	uint32_t seq;
	struct pt_verdict v; /* totals, repeated in every frame */
	struct pt_pages pages;
	struct pt_range *r; /* ranges emitted, not yet sent */
	size_t n, cap;
	bool emitted_all;
};

/* Ranges per frame: frames near 64 KiB (PROTOCOL.md section 6). */
#define LAZY_PER \
	((65536 - sizeof(struct pt_hdr) - sizeof(struct pt_verdict)) / sizeof(struct pt_range))
/* Bitmap words looked at per call (2^26 pages, about a millisecond), and reply bytes queued
 * per call before waiting for the peer to read. */
#ifndef LAZY_WORDS /* tests/daemon/fuzz_dispatch.c makes them small */
#define LAZY_WORDS (1u << 20)
#define LAZY_QUEUE (256u << 10)
#endif

static int lazy_collect(void *ctx, uint64_t gpa, uint64_t len)
{
	struct lazy_reply *lr = ctx;

	return pt_ranges_append(&lr->r, &lr->n, &lr->cap, 2 * LAZY_PER, gpa, len);
}

static void lazy_free(struct svc *s, struct lazy_reply *lr)
{
	for (struct lazy_reply **p = &s->lazy; *p; p = &(*p)->next) {
		if (*p == lr) {
			*p = lr->next;
			break;
		}
	}
	pt_pages_release(&lr->pages);
	free(lr->r);
	free(lr);
}

static struct lazy_reply *lazy_of(struct svc *s, struct pt_conn *c)
{
	for (struct lazy_reply *lr = s->lazy; lr; lr = lr->next)
		if (lr->c == c)
			return lr;
	return NULL;
}

/*
 * Emits up to LAZY_WORDS words, and sends one frame if a full one is ready or the last one is.
 * 1: the last frame went out; 0: call again; negative: the reply failed.
 */
static int lazy_step(struct svc *s, struct lazy_reply *lr)
{
	size_t k;
	bool more;
	int err = 0;

	if (!lr->emitted_all && lr->n <= LAZY_PER) {
		err = pt_pages_emit(&lr->pages, LAZY_WORDS, lazy_collect, lr, &lr->emitted_all);
		pt_conn_charge(lr->c, (uint64_t)LAZY_WORDS * 64);
		if (err)
			return err;
	}
	if (lr->n <= LAZY_PER && !lr->emitted_all)
		return 0;
	k = lr->n < LAZY_PER ? lr->n : LAZY_PER;
	more = lr->n > k || !lr->emitted_all;
	lr->v.nranges = k;
	if (pt_conn_send(lr->c, s->out,
			 pt_build_verdict(s->out, PT_MAX_FRAME, lr->type, lr->seq,
					  more ? PT_F_MORE : 0, &lr->v, lr->r)))
		return -PT_E_INTERNAL;
	if (lr->n > k)
		memmove(lr->r, lr->r + k, (lr->n - k) * sizeof(*lr->r));
	lr->n -= k;
	return !more;
}

/* Queues frames until the peer has enough to read. Frees @lr when the reply is complete. */
static void lazy_pump(struct svc *s, struct lazy_reply *lr)
{
	struct pt_conn *c = lr->c;
	int rc = 0;

	for (int calls = 0; calls < 16 && pt_conn_outq(c) < LAZY_QUEUE && !rc; calls++)
		rc = lazy_step(s, lr);
	if (!rc) {
		pt_conn_pause(c); /* on_drain comes back here */
		return;
	}
	if (rc < 0)
		reply_err(s, c, lr->seq, rc, "reply");
	lazy_free(s, lr);
	pt_conn_resume(c);
}

/* Starts a reply listing @lr's frozen pages: frames now while they fit, the rest later. */
static void lazy_start(struct svc *s, struct pt_conn *c, struct lazy_reply *lr, unsigned type,
		       uint32_t seq, const struct pt_verdict *v)
{
	lr->c = c;
	lr->type = type;
	lr->seq = seq;
	lr->v = *v;
	lr->next = s->lazy;
	s->lazy = lr;
	lazy_pump(s, lr);
}

static void big_step(struct svc *s, struct pt_conn *c);

static void on_drain(void *arg, struct pt_conn *c)
{
	struct svc *s = arg;
	struct conn_info *ci = pt_conn_data(c);
	struct lazy_reply *lr = lazy_of(s, c);

	if (ci && ci->big)
		big_step(s, c);
	else if (lr)
		lazy_pump(s, lr);
	else
		pt_conn_resume(c);
}

static void reply_verdict(struct svc *s, struct pt_conn *c, uint32_t seq, uint32_t cmd,
			  const struct pt_verdict_sum *sum, struct lazy_reply *lr)
{
	struct pt_verdict v = { .cmd_id = cmd,
				.unsure_reason = sum->why,
				.hinted = sum->hinted,
				.free = sum->free,
				.kept_written = sum->kept_written,
				.kept_unsure = sum->kept_unsure };

	/* A verdict that confirms nothing drops whatever pages were gathered. (`why` alone may
	 * only explain some unsure pages, hinted before the sync, beside confirmed ones.) */
	if (!sum->free)
		pt_pages_release(&lr->pages);
	lazy_start(s, c, lr, PT_MSG_VERDICT, seq, &v);
}

/* --- REGISTER: who may track which VM (PROTOCOL.md section 2) ------------------------------- */

/* REGISTER and REGISTER2, reduced to one request. */
struct reg_req {
	uint32_t seq;
	uint32_t vmm_pid;
	uint32_t mode; /* enum pt_dirty_mode */
	uint32_t nslots;
	uint32_t nfds; /* descriptors received with the frame (REGISTER2), owned here */
	uint64_t resume;
	struct pt_reg_slot slots[PT_MAX_REG_SLOTS];
	uint64_t hva[PT_MAX_REG_SLOTS];
	int fds[PT_MAX_REG_FDS];
	int vm_fd;	      /* fds[] entry that is the KVM VM (checked), or -1 */
	struct pt_wlog *wlog; /* PT_TRACK_UFFD: the VM's write log, taken by on_register() */
};

/* What REGISTER found out about the peer and the VMM; owns vmm_pidfd. */
struct reg_who {
	uint64_t start; /* the VMM's start time */
	int vmm_pidfd;	/* names the VMM process */
	uid_t uid;	/* the peer's, charged in the quotas */
	const char *why;
};

/*
 * Is the peer the VMM itself? Only if the process that connected is still alive (its pidfd,
 * taken by the kernel at connect time) and has the VMM's pid: a pid names that process only
 * while it lives. On success *pidfd names the VMM.
 */
static bool peer_is_vmm(struct svc *s, struct pt_conn *c, uint32_t vmm_pid, uint64_t start,
			int *pidfd, bool *exited)
{
	struct conn_info *ci = pt_conn_data(c);
	int fd;

	*exited = false;
	if ((uint32_t)pt_conn_peer(c)->pid != vmm_pid)
		return false;
	fd = pt_conn_peer_pidfd(c);
	if (fd == -ENOPROTOOPT || fd == -EINVAL) /* before Linux 6.5: the start time at accept */
		fd = ci->peer_start == start ? pt_pidfd_open_exact(vmm_pid, start) : -ESRCH;
	*exited = fd < 0 || pt_pidfd_exited(fd);
	if (*exited) {
		if (fd >= 0)
			close(fd);
		return false;
	}
	*pidfd = fd;
	return true;
}

/* The VM tracked under this pid, if it is still this process. -1 if none. */
static int tracked_vm(struct svc *s, uint32_t pid, uint64_t start)
{
	uint32_t vm;

	if (pt_vm_find(s->t, pid, &vm))
		return -1;
	if (pt_vm(s->t, vm)->start_time != start ||
	    (s->id[vm].pidfd >= 0 && pt_pidfd_exited(s->id[vm].pidfd)))
		return -1;
	return (int)vm;
}

/* Who asks, for which process, and may it? 0 or -PT_E_* with w->why. */
static int identify(struct svc *s, struct pt_conn *c, const struct reg_req *r, struct reg_who *w)
{
	struct pt_reg_claim cl = { .peer_uid = pt_conn_peer(c)->uid,
				   .vmm_pid = r->vmm_pid,
				   .vm_fd = r->vm_fd,
				   .held_vm_fd = -1 };
	int vm, err;

	w->vmm_pidfd = -1;
	w->uid = cl.peer_uid;
	w->why = "no such VMM process";
	if (pt_proc_start_time(r->vmm_pid, &w->start) || pt_proc_uid(r->vmm_pid, &cl.vmm_uid))
		return -PT_E_BAD_FIELD;
	cl.peer_is_vmm = peer_is_vmm(s, c, r->vmm_pid, w->start, &w->vmm_pidfd, &cl.peer_exited);
	vm = tracked_vm(s, r->vmm_pid, w->start);
	if (vm >= 0)
		cl.held_vm_fd = s->id[vm].vm_fd;
	err = pt_may_register(&cl, &w->why);
	if (err)
		return err;
	if (w->vmm_pidfd < 0)
		w->vmm_pidfd = pt_pidfd_open_exact(r->vmm_pid, w->start);
	w->why = "the VMM process exited";
	return w->vmm_pidfd < 0 ? -PT_E_BAD_FIELD : 0;
}

/* Log bits a new registration will hold (what pt_vm_track reserves, near enough). */
static uint64_t reg_bits(struct svc *s, const struct reg_req *r)
{
	uint64_t bits = 0;

	if (!r->nslots)
		return (uint64_t)s->live.learn_mb * 1024 * 1024 * 8;
	for (uint32_t i = 0; i < r->nslots; i++)
		bits += (r->slots[i].size / PT_PROTO_PAGE + 63) & ~63ull;
	return bits;
}

static struct pt_quota_limits quota_limits(struct svc *s)
{
	return (struct pt_quota_limits){ s->live.quota_conns, s->live.quota_vms,
					 s->live.quota_log_mb };
}

static void uncharge_vm(struct svc *s, uint32_t vm);

/*
 * Charges @bits of log and one VM to @uid: for a VM already held (@vm >= 0) the charge moves
 * from its holder to @uid; for a new one (@vm < 0) it is a reservation the caller records or
 * returns. 0 or -PT_E_BUSY.
 */
static int charge_vm(struct svc *s, int vm, uid_t uid, uint64_t bits, char *why, size_t cap)
{
	struct pt_quota_limits l = quota_limits(s);
	struct vm_id *id = vm >= 0 ? &s->id[vm] : NULL;
	int err;

	if (id && id->charged && id->uid == uid)
		return 0;
	err = pt_quota_vm_get(s->quota, &l, uid, bits, why, cap);
	if (err || !id)
		return err;
	uncharge_vm(s, (uint32_t)vm);
	id->uid = uid;
	id->bits = bits;
	id->charged = true;
	return 0;
}

static void uncharge_vm(struct svc *s, uint32_t vm)
{
	struct vm_id *id = &s->id[vm];

	if (id->charged)
		pt_quota_vm_put(s->quota, id->uid, id->bits);
	id->charged = false;
	id->bits = 0;
}

static int track_vm(struct svc *s, const struct reg_req *r, uint32_t *vm)
{
	struct pt_slot_cfg slots[PT_MAX_REG_SLOTS];
	bool existed;
	int err;

	for (uint32_t i = 0; i < r->nslots; i++)
		slots[i] = (struct pt_slot_cfg){ r->slots[i].gpa, r->slots[i].size, r->slots[i].id,
						 r->slots[i].flags & PT_REG_SLOT_LOGGED };
	err = pt_vm_track(s->t, r->vmm_pid, slots, r->nslots,
			  (uint64_t)s->live.learn_mb * 1024 * 1024 * 8, vm, &existed);
	if (err == -ENOSPC)
		return -PT_E_BUSY;
	if (err)
		return -PT_E_INTERNAL;
	if (existed && !s->vms[*vm])
		pt_info("VM %u (pid %u) was tracked by an earlier run: its log continued", *vm,
			r->vmm_pid);
	return 0;
}

static struct pt_vmctx *bound_vm(struct svc *s, struct pt_conn *c);

/*
 * The service's record of a connection, made at accept (or at its first frame where the
 * server has no accept hook); NULL only when out of memory.
 */
static struct conn_info *conn_info(struct pt_conn *c)
{
	struct conn_info *ci = pt_conn_data(c);

	if (ci)
		return ci;
	ci = calloc(1, sizeof(*ci));
	if (ci) {
		pt_proc_start_time((uint32_t)pt_conn_peer(c)->pid, &ci->peer_start);
		pt_conn_set_data(c, ci);
	}
	return ci;
}

/*
 * A connection remembers its VM as index + generation, never as a pointer: the context may be
 * freed (its VMM exited, the VM was registered afresh) while the connection lives on.
 */
static void bind_conn(struct svc *s, struct pt_conn *c, uint32_t vm)
{
	struct conn_info *ci = pt_conn_data(c);

	ci->bind = (uint32_t)s->gen[vm] << 16 | (vm + 1);
	ci->taken_over = false;
}

static struct pt_vmctx *conn_vm(struct svc *s, struct pt_conn *c)
{
	struct conn_info *ci = pt_conn_data(c);
	uint32_t vm = ci ? (ci->bind & 0xffff) - 1 : 0;

	if (!ci || !ci->bind || vm >= PT_MAX_VMS || !s->vms[vm] || s->gen[vm] != ci->bind >> 16)
		return NULL;
	return s->vms[vm];
}

/* The connection that held @vm loses it; its next requests are told why. */
static void unbind_holder(struct svc *s, uint32_t vm, struct pt_conn *by)
{
	struct pt_conn *old = s->id[vm].conn;

	if (!old || old == by)
		return;
	((struct conn_info *)pt_conn_data(old))->taken_over = true;
	pt_info("VM %u (pid %u): conn %u loses it to conn %u (pid %d uid %u)", vm,
		pt_vm(s->t, vm)->tgid, pt_conn_id(old), pt_conn_id(by), (int)pt_conn_peer(by)->pid,
		(unsigned)pt_conn_peer(by)->uid);
	s->id[vm].conn = NULL;
}

/* The VM's kept verdicts not logged yet, counted before the VM goes (released, or registered
 * afresh): the count must not be lost. */
static void kept_done(struct svc *s, uint32_t vm, const char *until)
{
	struct kept_log *k = &s->kept_log[vm];
	char reason[128];

	if (k->quiet && s->vms[vm])
		pt_info("VM %u (pid %u): %llu more verdicts kept, none confirmed (%s), until %s",
			vm, s->vms[vm]->pid, (unsigned long long)k->quiet,
			pt_why_str(k->why, reason, sizeof(reason)), until);
	*k = (struct kept_log){ 0 };
}

static void drop_identity(struct svc *s, uint32_t vm)
{
	struct vm_id *id = &s->id[vm];

	if (id->pidfd >= 0)
		close(id->pidfd);
	if (id->vm_fd >= 0)
		close(id->vm_fd);
	uncharge_vm(s, vm);
	*id = (struct vm_id){ .pidfd = -1, .vm_fd = -1 };
}

/* Forget a VM whose VMM is gone: BPF tracking, command-ID state, any connection's binding. */
static void release_vm(struct svc *s, uint32_t vm, const char *why)
{
	kept_done(s, vm, "the VM was released");
	pt_info("VM %u (pid %u) released: %s", vm, pt_vm(s->t, vm)->tgid, why);
	pt_vm_untrack(s->t, vm);
	pt_vmctx_free(s->vms[vm]);
	s->vms[vm] = NULL;
	drop_identity(s, vm);
	s->gen[vm]++;
}

/* Is the VMM of this index still the process that registered it? */
static bool vmm_alive(struct svc *s, uint32_t vm)
{
	const struct pt_vm_state *st = pt_vm(s->t, vm);
	uint64_t start;

	if (s->id[vm].pidfd >= 0)
		return !pt_pidfd_exited(s->id[vm].pidfd);
	return !pt_proc_start_time(st->tgid, &start) && start == st->start_time;
}

/* Same memory map as the one already tracked (a reconnect), or a different VM config? */
static bool same_slots(struct svc *s, uint32_t vm, const struct reg_req *r)
{
	struct pt_vm_slots sl;

	if (pt_vm(s->t, vm)->flags & PT_VM_LEARN_SLOTS)
		return !r->nslots;
	if (pt_vm_slots_get(s->t, vm, &sl) || sl.nslots != r->nslots)
		return false;
	/* A slot BPF dropped (moved, deleted) or whose logging differs is another map too. */
	for (uint32_t i = 0; i < r->nslots; i++)
		if (sl.slots[i].id != r->slots[i].id ||
		    sl.slots[i].base_gfn != r->slots[i].gpa >> 12 ||
		    sl.slots[i].npages != r->slots[i].size >> 12 ||
		    !(sl.slots[i].flags & PT_SLOT_VALID) ||
		    !(sl.slots[i].flags & PT_SLOT_NOLOG) !=
			    !!(r->slots[i].flags & PT_REG_SLOT_LOGGED))
			return false;
	return true;
}

/*
 * How deep a process's PID namespace is: the number of pids on its NSpid line, one per level
 * from the root namespace down. A process this service can see is in its namespace or below,
 * so the same depth means the same namespace. -1 if unreadable.
 */
static int pidns_depth(const char *status_path)
{
	char line[512];
	int depth = -1;
	FILE *f = fopen(status_path, "re");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		char *tok, *save = NULL;

		if (strncmp(line, "NSpid:", 6))
			continue;
		depth = 0;
		for (tok = strtok_r(line + 6, " \t\n", &save); tok;
		     tok = strtok_r(NULL, " \t\n", &save))
			depth++;
		break;
	}
	fclose(f);
	return depth;
}

/*
 * In a PID namespace the BPF programs name processes in exactly the service's namespace: a
 * VMM in a namespace below it is invisible to them, so nothing of it could ever be confirmed.
 */
static bool vmm_visible(struct svc *s, uint32_t pid)
{
	char path[64];

	if (!s->t->pidns_ino)
		return true;
	/* Not /proc/PID/ns/pid: following it needs ptrace rights over another user's VMM,
	 * which the service gave up with its capabilities. /proc/PID/status is readable. */
	snprintf(path, sizeof(path), "/proc/%u/status", pid);
	return pidns_depth(path) == pidns_depth("/proc/self/status");
}

/* A VM under this pid that is not this process (pid reused), or another memory map: its
 * state says nothing about this VM. */
static void release_if_other(struct svc *s, struct pt_conn *c, const struct reg_req *r,
			     uint64_t start)
{
	bool reused;
	uint32_t vm;

	if (pt_vm_find(s->t, r->vmm_pid, &vm))
		return;
	reused = tracked_vm(s, r->vmm_pid, start) < 0;
	if (!reused && same_slots(s, vm, r))
		return;
	unbind_holder(s, vm, c);
	release_vm(s, vm,
		   reused ? "pid reused by another process"
			  : "registered again with another memory map");
}

/* The IDs armed since the driver's last STOP (pt_vmctx.used), carried into a fresh state. */
struct blocked_ids {
	struct pt_id_run used[PT_MAX_ID_RUNS];
	unsigned n;
};

/*
 * A takeover starts the VM afresh, but the guest is the same: its queue may still carry
 * buffers of every ID armed since the driver's last STOP, so those stay blocked (virtio: no
 * reuse before STOP; PROTOCOL.md 4.2), even if the new registration brings another memory
 * map. A closed connection already released them. Read before release_if_other().
 */
static void blocked_ids_of(struct svc *s, const struct reg_req *r, uint64_t start,
			   struct blocked_ids *b)
{
	int vm = tracked_vm(s, r->vmm_pid, start);

	b->n = 0;
	if (vm < 0 || !s->vms[vm])
		return;
	memcpy(b->used, s->vms[vm]->used, sizeof(b->used));
	b->n = s->vms[vm]->nused;
}

/*
 * The VM's command state for this registration: the old one only with the old registration's
 * token (a reconnect); otherwise a new one, and every hint, report and inflate is forgotten.
 */
static int vm_state(struct svc *s, uint32_t vm, const struct reg_req *r, bool tracked,
		    const struct blocked_ids *b)
{
	struct vm_id *id = &s->id[vm];
	struct pt_vmctx *ctx;
	int err;

	if (s->vms[vm] && r->resume && pt_token_eq(r->resume, id->token)) {
		s->n.resumes++;
		return 0;
	}
	s->n.takeovers += !!s->vms[vm];
	if (s->vms[vm])
		pt_info("VM %u (pid %u): registered without its token: starts afresh", vm,
			r->vmm_pid);
	err = pt_vmctx_new(&ctx, s->t, vm, r->vmm_pid, r->mode, tracked);
	if (err)
		return err;
	memcpy(ctx->used, b->used, sizeof(ctx->used));
	ctx->nused = b->n;
	kept_done(s, vm, "the VM registered afresh");
	pt_vmctx_free(s->vms[vm]);
	s->vms[vm] = ctx;
	s->gen[vm]++;
	id->token = pt_token_new();
	return 0;
}

/* The registration holds the VMM's pidfd and the VM's descriptor (REGISTER2). */
static void hold_identity(struct svc *s, uint32_t vm, struct reg_who *w, struct reg_req *r)
{
	struct vm_id *id = &s->id[vm];

	if (id->pidfd >= 0)
		close(id->pidfd);
	id->pidfd = w->vmm_pidfd;
	w->vmm_pidfd = -1;
	if (r->vm_fd >= 0) {
		if (id->vm_fd >= 0)
			close(id->vm_fd);
		id->vm_fd = r->vm_fd;
		for (uint32_t i = 0; i < r->nfds; i++)
			if (r->fds[i] == r->vm_fd)
				r->fds[i] = -1; /* kept, not closed with the request */
	}
}

static int register_vm(struct svc *s, struct pt_conn *c, struct reg_req *r, struct reg_who *w,
		       bool tracked, uint32_t *vm, char *why, size_t cap)
{
	struct blocked_ids blocked;
	uint64_t bits;
	int err, held;

	blocked_ids_of(s, r, w->start, &blocked);
	release_if_other(s, c, r, w->start);
	held = tracked_vm(s, r->vmm_pid, w->start);
	bits = held >= 0 ? pt_vm(s->t, held)->log_bits : reg_bits(s, r);
	err = charge_vm(s, held, w->uid, bits, why, cap);
	if (err)
		return err;
	err = track_vm(s, r, vm);
	if (err) {
		if (held < 0)
			pt_quota_vm_put(s->quota, w->uid, bits);
		snprintf(why, cap, "%s", err == -PT_E_BUSY ? "write log full" : "cannot track");
		return err;
	}
	if (held < 0)
		s->id[*vm] = (struct vm_id){
			.pidfd = -1, .vm_fd = -1, .uid = w->uid, .bits = bits, .charged = true
		};
	pt_vm(s->t, *vm)->start_time = w->start;
	if (vm_state(s, *vm, r, tracked, &blocked)) {
		snprintf(why, cap, "out of memory");
		return -PT_E_BUSY;
	}
	unbind_holder(s, *vm, c);
	hold_identity(s, *vm, w, r);
	return 0;
}

static void on_register(struct svc *s, struct pt_conn *c, struct reg_req *r)
{
	/* A VM with its own write log does not depend on what BPF can see. */
	bool tracked =
		r->wlog || (pt_coverage_tracked(&s->cov, r->mode) && vmm_visible(s, r->vmm_pid));
	uint64_t resumes = s->n.resumes;
	struct reg_who w;
	struct pt_vmctx *ctx;
	char why[160];
	uint32_t vm;
	int err;

	if (bound_vm(s, c)) {
		reply_err(s, c, r->seq, -PT_E_STATE, "register: this connection has a VM");
		return;
	}
	err = identify(s, c, r, &w);
	if (err) {
		if (w.vmm_pidfd >= 0)
			close(w.vmm_pidfd);
		s->n.refused_perm += err == -PT_E_PERM;
		s->n.errors++;
		pt_conn_send_error(c, r->seq, err, "register pid %u: %s", r->vmm_pid, w.why);
		return;
	}
	err = register_vm(s, c, r, &w, tracked, &vm, why, sizeof(why));
	if (w.vmm_pidfd >= 0)
		close(w.vmm_pidfd);
	if (err) {
		s->n.refused_quota += !!strstr(why, "quota");
		s->n.errors++;
		pt_conn_send_error(c, r->seq, err, "register pid %u: %s", r->vmm_pid, why);
		return;
	}
	ctx = s->vms[vm];
	ctx->mode = r->mode;
	ctx->mode_tracked = tracked;
	/* The registration's write log replaces the old one, or drops it (registered again in a
	 * dirty-logging mode). A resumed registration keeps the log it had: same epoch. */
	if (!(r->wlog && ctx->wlog && s->n.resumes != resumes)) {
		pt_wlog_destroy(ctx->wlog);
		ctx->wlog = r->wlog;
		ctx->wlog_moves = __atomic_load_n(&pt_vm(s->t, vm)->slot_moves, __ATOMIC_ACQUIRE);
		r->wlog = NULL;
	}
	s->id[vm].conn = c;
	bind_conn(s, c, vm);
	pt_conn_set_registered(c, true);
	pt_conn_charge(c, ctx->words * 64); /* the VM's region was cleared: a turn's work */
	if (!tracked)
		pt_warn("VM %u (pid %u): BPF does not see its writes (%s dirty logging%s): every "
			"verdict will be keep",
			vm, r->vmm_pid, r->mode == PT_DIRTY_RING ? "dirty-ring" : "bitmap",
			vmm_visible(s, r->vmm_pid) ? "" : ", VMM in another PID namespace");
	/* Coverage: 0 when every write path is observed, else why every verdict will be keep. */
	reply_ack(s, c, r->seq, vm, pt_coverage_bits(ctx), s->id[vm].token);
}

static void reg_from_v1(struct reg_req *r, const struct pt_msg *m)
{
	memset(r, 0, sizeof(*r));
	r->seq = m->seq;
	r->vmm_pid = m->reg->vmm_pid;
	r->mode = m->reg->dirty_mode;
	r->nslots = m->count;
	memcpy(r->slots, m->slots, m->count * sizeof(r->slots[0]));
	r->vm_fd = -1;
}

/* REGISTER2's fields, and the descriptors that came with it. 0 or -PT_E_*. */
static int reg_from_v2(struct reg_req *r, struct pt_conn *c, const struct pt_msg *m)
{
	const struct pt_register2 *r2 = m->reg2;

	memset(r, 0, sizeof(*r));
	r->seq = m->seq;
	r->vmm_pid = r2->vmm_pid;
	r->mode = r2->mode;
	r->nslots = m->count;
	r->resume = r2->resume;
	for (uint32_t i = 0; i < m->count; i++) {
		const struct pt_reg_slot2 *sl = &m->slots2[i];

		r->slots[i] = (struct pt_reg_slot){ sl->gpa, sl->size, sl->id, sl->flags };
		r->hva[i] = sl->hva;
	}
	r->vm_fd = -1;
	r->nfds = pt_conn_take_fds(c, r->fds, r2->nfds);
	return r->nfds == r2->nfds ? 0 : -PT_E_BAD_FIELD;
}

static void reg_close_fds(struct reg_req *r)
{
	while (r->nfds)
		if (r->fds[--r->nfds] >= 0)
			close(r->fds[r->nfds]);
}

static int uffd_err_code(int err)
{
	switch (err) {
	case -EPERM:
		return -PT_E_PERM;
	case -ENOMEM:
	case -EMFILE:
		return -PT_E_BUSY;
	default:
		return -PT_E_BAD_FIELD;
	}
}

/*
 * PT_TRACK_UFFD: build the VM's userfaultfd write log from the descriptors (our own copies:
 * the request's are closed after it) and the slots' host addresses, then register as any VM.
 * The log checks what it was given (fd kinds, pagemap of vmm_pid, memory mapped and registered
 * for async write-protect) and refuses with the reason; it vouches for nothing until ARM.
 */
static void on_register_uffd(struct svc *s, struct pt_conn *c, struct reg_req *r)
{
	struct pt_uffd_slot sl[PT_MAX_REG_SLOTS];
	char why[200], msg[240];
	struct pt_uffd *u = NULL;
	struct reg_who w;
	int uffd, pm, err;

	if (r->nfds == 3 && !pt_fd_is_anon(r->fds[2], "kvm-vm")) {
		reply_err(s, c, r->seq, -PT_E_BAD_FIELD, "register: descriptor 2 is not a KVM VM");
		return;
	}
	if (r->nfds == 3)
		r->vm_fd = r->fds[2]; /* possession, as in the other modes */
	/* Before the log touches the memory: the peer must be allowed to register this VMM. */
	err = identify(s, c, r, &w);
	if (w.vmm_pidfd >= 0)
		close(w.vmm_pidfd);
	if (err) {
		s->n.refused_perm += err == -PT_E_PERM;
		s->n.errors++;
		pt_conn_send_error(c, r->seq, err, "register pid %u: %s", r->vmm_pid, w.why);
		return;
	}
	for (uint32_t i = 0; i < r->nslots; i++)
		sl[i] = (struct pt_uffd_slot){ r->slots[i].gpa, r->slots[i].size, r->hva[i] };
	uffd = fcntl(r->fds[0], F_DUPFD_CLOEXEC, 3);
	pm = fcntl(r->fds[1], F_DUPFD_CLOEXEC, 3);
	snprintf(why, sizeof(why), "out of descriptors");
	err = uffd < 0 || pm < 0
		      ? -EMFILE
		      : pt_uffd_open(&u, uffd, pm, r->vmm_pid, sl, r->nslots, why, sizeof(why));
	/* The probe's work counts whatever the answer (a refusal after it costs it too), as
	 * REGISTER counts the VM's pages: a peer repeating it gets a turn's worth. */
	pt_conn_charge(c, reg_bits(s, r));
	if (err) {
		if (uffd >= 0)
			close(uffd);
		if (pm >= 0)
			close(pm);
		pt_warn("register (pid %u): userfaultfd mode refused: %s", r->vmm_pid, why);
		snprintf(msg, sizeof(msg), "register: userfaultfd: %s", why);
		reply_err(s, c, r->seq, uffd_err_code(err), msg);
		return;
	}
	r->wlog = pt_uffd_wlog(u);
	on_register(s, c, r);
	pt_wlog_destroy(r->wlog); /* still ours if the registration failed */
}

static void on_register2(struct svc *s, struct pt_conn *c, const struct pt_msg *m)
{
	struct reg_req r;

	if (reg_from_v2(&r, c, m)) {
		reply_err(s, c, m->seq, -PT_E_BAD_FIELD,
			  "register: fewer descriptors arrived than nfds announced");
	} else if (bound_vm(s, c)) {
		/* Before the descriptors are used: opening a userfaultfd log touches the memory
		 * (the probe reads the VMM's page tables, a pass over its memory). */
		reply_err(s, c, m->seq, -PT_E_STATE, "register: this connection has a VM");
	} else if (r.mode == PT_TRACK_UFFD) {
		on_register_uffd(s, c, &r);
	} else if (!pt_fd_is_anon(r.fds[0], "kvm-vm")) {
		reply_err(s, c, m->seq, -PT_E_BAD_FIELD, "register: descriptor 0 is not a KVM VM");
	} else {
		r.vm_fd = r.fds[0]; /* possession: may register it, and the VM is bound to it */
		on_register(s, c, &r);
	}
	reg_close_fds(&r);
}

/* --- the other requests --------------------------------------------------------------------- */

/*
 * Reclaimed pages are facts, not permissions, but an incomplete list is read as "the others
 * are still in the balloon". While the log is in doubt nothing is listed: every inflated page
 * is counted unsure, and the device treats each as possibly reclaimed (PROTOCOL.md 4.4).
 */
static void reply_reclaimed(struct svc *s, struct pt_conn *c, const struct pt_msg *m,
			    const struct pt_verdict_sum *sum, struct lazy_reply *lr)
{
	struct pt_verdict v = { .cmd_id = m->cmd_id,
				.unsure_reason = sum->why,
				.hinted = sum->hinted,
				.free = sum->free };

	if (sum->why) {
		pt_pages_release(&lr->pages);
		v.free = 0;
		v.kept_unsure = sum->hinted;
	}
	lazy_start(s, c, lr, PT_MSG_VERDICT, m->seq, &v);
}

/*
 * Fail safe, and say why: the operator sees what kept a verdict's pages. A device may ask for
 * verdicts many times a second and a VM in doubt stays so for every one of them, so the journal
 * gets at most one line a minute per VM, with the count of the verdicts since the last one
 * (each line is a write to journald, and a wakeup of it).
 */
static void log_kept(struct svc *s, const struct pt_vmctx *ctx, uint32_t cmd, uint64_t hinted,
		     uint32_t why)
{
	struct kept_log *k = &s->kept_log[ctx->vm];
	char reason[128], more[160] = "";
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
	/* At most one line a minute, whatever the reason: a device could make it alternate. */
	if (k->why && now.tv_sec - k->at < KEPT_LOG_SECS) {
		k->quiet++;
		k->why = why;
		return;
	}
	if (k->quiet)
		snprintf(more, sizeof(more), " (%llu kept verdicts since the last such line)",
			 (unsigned long long)k->quiet);
	if (pt_vm_marks_saturated(pt_vm(s->t, ctx->vm)))
		snprintf(more + strlen(more), sizeof(more) - strlen(more),
			 "; a mark BPF could not date: every verdict keeps all pages until the "
			 "VMM exits");
	pt_info("VM %u (pid %u) command ID %u: %llu pages kept, none confirmed: %s%s", ctx->vm,
		ctx->pid, cmd, (unsigned long long)hinted, pt_why_str(why, reason, sizeof(reason)),
		more);
	*k = (struct kept_log){ .why = why, .at = now.tv_sec };
}

static void on_query(struct svc *s, struct pt_conn *c, struct pt_vmctx *ctx, const struct pt_msg *m)
{
	struct lazy_reply *lr = calloc(1, sizeof(*lr));
	struct pt_verdict_sum sum;
	int err;

	if (!lr) {
		reply_err(s, c, m->seq, -PT_E_BUSY, "query: out of memory");
		return;
	}
	/* The whole log region is read, whatever the answer: that is the work done. */
	pt_conn_charge(c, ctx->words * 64);
	switch (m->query->what) {
	case PT_Q_HINTS:
		err = pt_cmd_verdict(ctx, m->cmd_id, &sum, pt_pages_freeze, &lr->pages);
		break;
	case PT_Q_REPORTED:
		err = pt_report_verdict(ctx, &sum, pt_pages_freeze, &lr->pages);
		break;
	default:
		err = pt_balloon_reclaimed(ctx, &sum, pt_pages_freeze, &lr->pages);
		if (!err) {
			reply_reclaimed(s, c, m, &sum, lr);
			return;
		}
	}
	if (err) {
		pt_pages_release(&lr->pages);
		free(lr);
		reply_err(s, c, m->seq, err, "query");
		return;
	}
	s->n.verdicts++;
	if (sum.why && !sum.free)
		log_kept(s, ctx, m->cmd_id, sum.hinted, sum.why);
	reply_verdict(s, c, m->seq, m->cmd_id, &sum, lr);
}

static int cmp_range(const void *a, const void *b)
{
	const struct pt_range *x = a, *y = b;

	return x->gpa < y->gpa ? -1 : x->gpa > y->gpa;
}

/*
 * The asked ranges, sorted and merged, in s->ranges: a page asked twice is one page asked
 * (PROTOCOL.md 4.7: hinted = pages asked about). Their pages in *pages; -1 out of memory.
 */
static int merge_asked(struct svc *s, const struct pt_msg *m, uint64_t *pages)
{
	size_t k = 0;

	/* At most WR_MAX_RANGES asked ranges: one small buffer, grown once, kept. */
	if (m->count > s->cap_ranges) {
		struct pt_range *r = realloc(s->ranges, m->count * sizeof(*r));

		if (!r)
			return -1;
		s->ranges = r;
		s->cap_ranges = m->count;
	}
	memcpy(s->ranges, m->ranges, m->count * sizeof(*s->ranges));
	qsort(s->ranges, m->count, sizeof(*s->ranges), cmp_range);
	for (size_t i = 0; i < m->count; i++) {
		struct pt_range r = s->ranges[i];
		struct pt_range *last = k ? &s->ranges[k - 1] : NULL;

		if (last && r.gpa <= last->gpa + last->len) {
			if (r.gpa + r.len > last->gpa + last->len)
				last->len = r.gpa + r.len - last->gpa;
		} else {
			s->ranges[k++] = r;
		}
	}
	s->nranges = k;
	*pages = 0;
	for (size_t i = 0; i < k; i++)
		*pages += s->ranges[i].len / PT_PROTO_PAGE;
	return 0;
}

/*
 * The log cannot vouch for the asked pages: all of them are unsure, and a reader treats the
 * listed pages as written, so every asked page is listed (the merged asked ranges, in
 * s->ranges; the written ones collected so far are among them).
 */
static void list_unsure(struct pt_verdict *v)
{
	v->free = 0;
	v->kept_written = 0; /* as for verdicts: an unsure log vouches for nothing, either way */
	v->kept_unsure = v->hinted;
}

/* Ranges per WR_READ (WR_CAPS max_ranges): one more still fits a frame, so the documented
 * PT_E_BUSY is what a device that asks too much gets, not a closed connection. */
#define WR_MAX_RANGES 4096

static void on_wr_read(struct svc *s, struct pt_conn *c, struct pt_vmctx *ctx,
		       const struct pt_msg *m)
{
	struct lazy_reply *lr = calloc(1, sizeof(*lr));
	struct pt_verdict v = { 0 };
	uint64_t pages;
	int err;

	if (m->count > WR_MAX_RANGES || !lr)
		err = -PT_E_BUSY;
	else if (m->pages > PT_MAX_BATCH_PAGES) /* the frame bound, overlaps counted */
		err = -PT_E_BAD_RANGE;
	else /* asked ranges may overlap: a page is read, listed and counted once */
		err = merge_asked(s, m, &v.hinted)
			      ? -PT_E_BUSY
			      : pt_wr_read(ctx, s->ranges, s->nranges, pt_pages_freeze, &lr->pages,
					   &pages);
	if (err) {
		if (lr)
			pt_pages_release(&lr->pages);
		free(lr);
		s->nranges = 0;
		reply_err(s, c, m->seq, err, "write records");
		return;
	}
	/* Without a sync after ARM, pages dirtied before it stay writable and their writes
	 * go unseen; a taint or an untracked mode loses writes too: all make the records
	 * incomplete, and then every asked page is listed. */
	v.unsure_reason = pt_epoch_doubt(ctx);
	v.kept_written = lr->pages.count;
	pt_conn_charge(c, v.hinted);
	if (!v.unsure_reason) {
		s->nranges = 0;
		v.free = v.hinted - v.kept_written;
		lazy_start(s, c, lr, PT_MSG_WR_RECORDS, m->seq, &v);
		return;
	}
	pt_pages_release(&lr->pages);
	free(lr);
	/* The asked ranges themselves, at most one request's worth: sent at once. */
	list_unsure(&v);
	send_ranges(s, c, PT_MSG_WR_RECORDS, m->seq, &v);
}

static int apply_batch(struct pt_vmctx *ctx, unsigned type, uint32_t cmd, const struct pt_range *r,
		       uint32_t n, uint64_t *pages)
{
	switch (type) {
	case PT_MSG_HINT:
		return pt_cmd_hint(ctx, cmd, r, n, pages);
	case PT_MSG_REPORT:
		return pt_report_add(ctx, r, n, pages);
	case PT_MSG_INFLATE:
		return pt_balloon_inflate(ctx, r, n, pages);
	case PT_MSG_WRITTEN:
		return pt_vmm_written(ctx, r, n, pages);
	default:
		return pt_balloon_deflate(ctx, r, n, pages);
	}
}

/* A batch applied whole: counted (one HINT frame is one batch, however many parts), acked. */
static void batch_acked(struct svc *s, struct pt_conn *c, struct pt_vmctx *ctx, unsigned type,
			uint32_t seq, uint32_t count, uint64_t pages)
{
	if (type == PT_MSG_HINT) {
		s->n.hint_records += count;
		ctx->n.hint_batches++;
	}
	reply_ack(s, c, seq, count, pages, 0);
}

/* --- batches too large for one turn (bigbatch.h) -------------------------------------------- */

/* A part: at most this many pages (512 KiB of bitmap: a millisecond or less, a few where the
 * bitmap's pages are touched for the first time) and ranges. */
#ifndef BIG_PART_PAGES /* tests/daemon/fuzz_dispatch.c makes them small */
#define BIG_PART_PAGES (1ull << 22)
#endif
#define BIG_PART_RANGES 4096u

struct big_batch {
	struct pt_bigbatch cut;
	unsigned type;
	uint32_t seq, cmd_id, count;
	uint32_t cur; /* a HINT: the command ID and epoch it was checked against */
	uint64_t epoch;
	uint64_t pages; /* applied so far */
	uint64_t total; /* pages in the batch */
};

static void not_registered(struct svc *s, struct pt_conn *c, const struct pt_msg *m);

static void big_free(struct conn_info *ci)
{
	pt_bigbatch_free(&ci->big->cut);
	free(ci->big);
	ci->big = NULL;
}

static void big_end(struct pt_conn *c)
{
	big_free(pt_conn_data(c));
	pt_conn_resume(c);
}

/* Still the state the batch was checked against? The connection's own input waits, but the VM
 * may have been taken over, released or registered afresh since the last part. */
static int big_still_valid(struct svc *s, struct pt_conn *c, struct pt_vmctx **ctx)
{
	const struct big_batch *bb = ((struct conn_info *)pt_conn_data(c))->big;

	*ctx = bound_vm(s, c);
	if (!*ctx)
		return -PT_E_NOT_REGISTERED;
	if (bb->type == PT_MSG_HINT && ((*ctx)->cur != bb->cur || (*ctx)->epoch != bb->epoch))
		return -PT_E_STALE_CMD;
	return 0;
}

/* Applies the next part; the ACK goes out with the last. Input waits until then (paused). */
static void big_step(struct svc *s, struct pt_conn *c)
{
	struct big_batch *bb = ((struct conn_info *)pt_conn_data(c))->big;
	struct pt_vmctx *ctx;
	uint64_t pages = 0;
	uint32_t k = 0;
	int err = big_still_valid(s, c, &ctx);

	if (!err) {
		k = pt_bigbatch_next(&bb->cut, BIG_PART_PAGES, s->part, BIG_PART_RANGES);
		err = apply_batch(ctx, bb->type, bb->cmd_id, s->part, k, &pages);
	}
	if (err) {
		/* Part of the batch may be applied: only pages the guest did name. A taken-over
		 * connection is told so as for any other frame. A HINT gone stale counts what it
		 * leaves unapplied, as a stale HINT frame counts its pages. */
		if (err == -PT_E_STALE_CMD && ctx)
			ctx->n.stale_pages += bb->total - bb->pages;
		if (err == -PT_E_NOT_REGISTERED)
			not_registered(s, c, &(struct pt_msg){ .type = bb->type, .seq = bb->seq });
		else
			reply_err(s, c, bb->seq, err, pt_msg_type_str(bb->type));
		big_end(c);
		return;
	}
	bb->pages += pages;
	pt_conn_charge(c, pages + 1);
	if (bb->cut.next < bb->cut.n) {
		pt_conn_pause(c); /* on_drain comes back, next turn */
		return;
	}
	batch_acked(s, c, ctx, bb->type, bb->seq, bb->count, bb->pages);
	big_end(c);
}

/* Everything that could refuse the batch, before any part of it is applied. */
static int big_check(struct pt_vmctx *ctx, const struct pt_msg *m)
{
	if (m->type == PT_MSG_HINT)
		return pt_cmd_hint_check(ctx, m->cmd_id, m->ranges, m->count);
	return pt_batch_check(ctx, m->ranges, m->count);
}

static void big_start(struct svc *s, struct pt_conn *c, struct pt_vmctx *ctx,
		      const struct pt_msg *m)
{
	struct conn_info *ci = pt_conn_data(c);
	struct big_batch *bb;
	int err = big_check(ctx, m);

	if (err) {
		reply_err(s, c, m->seq, err, pt_msg_type_str(m->type));
		return;
	}
	bb = calloc(1, sizeof(*bb));
	if (!bb || pt_bigbatch_init(&bb->cut, m->ranges, m->count)) {
		free(bb);
		reply_err(s, c, m->seq, -PT_E_BUSY, "batch: out of memory");
		return;
	}
	bb->type = m->type;
	bb->seq = m->seq;
	bb->cmd_id = m->cmd_id;
	bb->count = m->count;
	bb->total = m->pages;
	bb->cur = ctx->cur;
	bb->epoch = ctx->epoch;
	ci->big = bb;
	big_step(s, c);
}

static void on_batch(struct svc *s, struct pt_conn *c, struct pt_vmctx *ctx, const struct pt_msg *m)
{
	uint64_t pages = 0;
	int err;

	if (m->pages > BIG_PART_PAGES) {
		big_start(s, c, ctx, m);
		return;
	}
	err = apply_batch(ctx, m->type, m->cmd_id, m->ranges, m->count, &pages);
	if (err) {
		reply_err(s, c, m->seq, err, pt_msg_type_str(m->type));
		return;
	}
	pt_conn_charge(c, pages);
	batch_acked(s, c, ctx, m->type, m->seq, m->count, pages);
}

static void on_cmd(struct svc *s, struct pt_conn *c, struct pt_vmctx *ctx, const struct pt_msg *m)
{
	int err;

	if (m->type == PT_MSG_ARM) {
		/* ARM passes over the VM's whole bitmap: one per turn for a large VM, not a frame
		 * budget's worth (64 ARMs of a 256 GiB VM held the loop for seconds). */
		err = pt_cmd_arm(ctx, m->cmd_id);
		pt_conn_charge(c, ctx->words * 64);
	} else if (m->type == PT_MSG_STOP)
		err = pt_cmd_stop(ctx, m->cmd_id);
	else
		err = pt_cmd_done(ctx, m->cmd_id);
	if (err) {
		reply_err(s, c, m->seq, err, pt_msg_type_str(m->type));
		return;
	}
	if (m->type == PT_MSG_ARM)
		pt_debug("VM %u: command ID %u armed, epoch %llu", ctx->vm, m->cmd_id,
			 (unsigned long long)ctx->epoch);
	reply_ack(s, c, m->seq, m->cmd_id, 0, 0);
}

static struct pt_vmctx *bound_vm(struct svc *s, struct pt_conn *c)
{
	struct pt_vmctx *ctx = conn_vm(s, c);

	/* Another connection may have registered the VM since (unbind_holder()). */
	if (ctx && s->id[ctx->vm].conn != c) {
		((struct conn_info *)pt_conn_data(c))->bind = 0;
		pt_conn_set_registered(c, false); /* idle-timeout and eviction apply again */
		return NULL;
	}
	return ctx;
}

static void not_registered(struct svc *s, struct pt_conn *c, const struct pt_msg *m)
{
	struct conn_info *ci = pt_conn_data(c);

	if (!ci->taken_over) {
		reply_err(s, c, m->seq, -PT_E_NOT_REGISTERED, pt_msg_type_str(m->type));
		return;
	}
	s->n.errors++;
	pt_conn_send_error(c, m->seq, PT_E_NOT_REGISTERED,
			   "%s: taken over by another connection: its state is not this one's; "
			   "register again",
			   pt_msg_type_str(m->type));
}

static void dispatch(struct svc *s, struct pt_conn *c, const struct pt_msg *m)
{
	struct pt_vmctx *ctx;

	/* PING is a liveness probe, valid before REGISTER too: always an ACK, whose value32 says
	 * whether this connection holds a VM now (1) or not (0: never registered, or moved away).
	 */
	if (m->type == PT_MSG_PING) {
		reply_ack(s, c, m->seq, bound_vm(s, c) ? 1 : 0, 0, 0);
		return;
	}
	if (m->type == PT_MSG_REGISTER) {
		struct reg_req r;

		reg_from_v1(&r, m);
		on_register(s, c, &r);
		return;
	}
	if (m->type == PT_MSG_REGISTER2) {
		on_register2(s, c, m);
		return;
	}
	ctx = bound_vm(s, c);
	if (!ctx) {
		not_registered(s, c, m);
		return;
	}
	switch (m->type) {
	case PT_MSG_ARM:
	case PT_MSG_STOP:
	case PT_MSG_DONE:
		on_cmd(s, c, ctx, m);
		break;
	case PT_MSG_HINT:
	case PT_MSG_REPORT:
	case PT_MSG_INFLATE:
	case PT_MSG_DEFLATE:
	case PT_MSG_WRITTEN:
		on_batch(s, c, ctx, m);
		break;
	case PT_MSG_QUERY:
		on_query(s, c, ctx, m);
		break;
	case PT_MSG_WR_CAPS: {
		struct pt_wr_caps caps = { PT_PROTO_PAGE, WR_MAX_RANGES, 0 };

		pt_conn_send(c, s->out, pt_build_wr_caps(s->out, PT_MAX_FRAME, m->seq, &caps));
		break;
	}
	case PT_MSG_WR_READ:
		on_wr_read(s, c, ctx, m);
		break;
	default:
		reply_err(s, c, m->seq, -PT_E_BAD_TYPE, "request");
	}
}

static void on_frame(void *arg, struct pt_conn *c, const struct pt_hdr *h, const void *payload)
{
	struct svc *s = arg;
	struct pt_msg m;
	int err;

	if (!conn_info(c) || conn_info(c)->refused)
		return; /* refused at accept (quota, memory): closing, nothing is served */
	s->n.frames++;
	err = pt_frame_parse(h, payload, &m);
	if (err) {
		/* Payload errors skip the frame; the connection and every VM go on. */
		reply_err(s, c, h->seq, err, pt_msg_type_str(h->type));
		return;
	}
	dispatch(s, c, &m);
}

/* A uid over its connection quota is refused at once: one ERROR (seq 0), then the close. */
static void on_accept(void *arg, struct pt_conn *c)
{
	struct svc *s = arg;
	const struct pt_peer *p = pt_conn_peer(c);
	struct pt_quota_limits l = quota_limits(s);
	struct conn_info *ci = conn_info(c);
	uint8_t frame[sizeof(struct pt_hdr) + sizeof(struct pt_error) + 160];
	char why[160];
	time_t now;

	if (!ci || pt_quota_conn_get(s->quota, &l, p->uid, why, sizeof(why))) {
		if (!ci)
			snprintf(why, sizeof(why), "out of memory");
		else
			ci->refused = true;
		s->n.refused_quota++;
		pt_conn_send(c, frame, pt_build_error(frame, sizeof(frame), 0, PT_E_BUSY, why));
		pt_conn_close(c);
		now = time(NULL);
		if (now != s->quota_log_at) /* a flood of them logs once a second */
			pt_warn("conn %u pid %d: refused: %s", pt_conn_id(c), (int)p->pid, why);
		s->quota_log_at = now;
		return;
	}
	ci->counted = true;
}

static void on_close(void *arg, struct pt_conn *c)
{
	struct svc *s = arg;
	struct conn_info *ci = pt_conn_data(c);
	struct pt_vmctx *ctx = ci ? conn_vm(s, c) : NULL;
	struct lazy_reply *lr = lazy_of(s, c);

	if (lr)
		lazy_free(s, lr);
	if (ci && ci->big)
		big_free(ci);
	/* The VM stays tracked: its device may reconnect. It goes when its VMM exits. Its
	 * command IDs go now (PROTOCOL.md section 2): a new connection arms anew. */
	if (ctx && s->id[ctx->vm].conn == c) {
		s->id[ctx->vm].conn = NULL;
		ctx->state = PT_CS_IDLE;
		ctx->cur = 0;
		ctx->nused = 0;
	}
	if (ci && ci->counted)
		pt_quota_conn_put(s->quota, pt_conn_peer(c)->uid);
	free(ci);
	pt_conn_set_data(c, NULL);
}

/* --- housekeeping --------------------------------------------------------------------------- */

/* Every tracked VM, with or without a context here (adopted after a restart). */
static void reap_dead_vmms(struct svc *s)
{
	for (uint32_t i = 0; i < PT_MAX_VMS; i++)
		if ((pt_vm(s->t, i)->flags & PT_VM_ACTIVE) && !vmm_alive(s, i))
			release_vm(s, i, "its VMM exited");
}

static void publish_status(struct svc *s)
{
	struct pt_server_stats st;

	pt_server_get_stats(s->srv, &st);
	pt_status_write(&s->live, s->t, &s->cov, s->vms, &st, &s->n);
}

static void on_tick(void *arg)
{
	struct svc *s = arg;

	sd_notify_str("WATCHDOG=1");
	reap_dead_vmms(s);
	publish_status(s);
	if (!(s->ticks++ % 10)) {
		char cov[400], msg[512];
		unsigned nvms = 0;

		for (uint32_t i = 0; i < PT_MAX_VMS; i++)
			nvms += !!s->vms[i];
		snprintf(msg, sizeof(msg), "STATUS=%u VMs; %s", nvms,
			 pt_coverage_str(&s->cov, cov, sizeof(cov)));
		sd_notify_str(msg);
	}
}

static void reload(struct svc *s)
{
	struct pt_config c = *s->cfg;

	sd_notify_str("RELOADING=1");
	if (s->cfg->config_path && pt_config_load(&c, s->cfg->config_path, false))
		pt_err("reload: %s unreadable or invalid, keeping the old settings",
		       s->cfg->config_path);
	else {
		/* Socket, pins and log size need a restart; the rest applies now. */
		snprintf(s->live.metrics, sizeof(s->live.metrics), "%s", c.metrics);
		s->live.learn_mb = c.learn_mb;
		s->live.quota_conns = c.quota_conns;
		s->live.quota_vms = c.quota_vms;
		s->live.quota_log_mb = c.quota_log_mb;
		pt_log_level = c.verbose ? LOG_DEBUG : LOG_INFO;
		pt_info("configuration reloaded");
	}
	sd_notify_str("READY=1");
}

static bool on_signal(void *arg, int signo)
{
	struct svc *s = arg;

	if (signo == SIGHUP) {
		reload(s);
		return false;
	}
	pt_info("signal %d: stopping (BPF links stay pinned: tracking continues)", signo);
	sd_notify_str("STOPPING=1");
	return true;
}

/*
 * VMs tracked by an earlier run of the service: their log went on through the pinned links.
 * Their command-ID state died with that run, so they wait for their device to register
 * again (and arm anew); those whose VMM is gone are released.
 */
static void adopt_pinned_vms(struct svc *s)
{
	for (uint32_t i = 0; i < PT_MAX_VMS; i++) {
		struct pt_vm_state *st = pt_vm(s->t, i);

		if (!(st->flags & PT_VM_ACTIVE))
			continue;
		/* From now on its pidfd tells when the VMM exits. */
		s->id[i].pidfd = pt_pidfd_open_exact(st->tgid, st->start_time);
		if (s->id[i].pidfd < 0) {
			release_vm(s, i, "its VMM exited while the service was down");
			continue;
		}
		pt_info("VM %u (pid %u) still tracked from an earlier run; waiting for its device",
			i, st->tgid);
	}
}

/* Descriptors beyond the connections: BPF objects, the ring, status files, the canary's VMs. */
#define FD_OVERHEAD 256

/*
 * Every connection holds a descriptor: raise the soft limit to the hard one (systemd's
 * LimitNOFILE), and say so when even that cannot hold max-conns connections. Running out is
 * survived (new connections are refused at once), but devices are then turned away.
 */
static void raise_fd_limit(unsigned max_conns)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl))
		return;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)max_conns + FD_OVERHEAD)
		pt_warn("descriptor limit %llu is below max-conns %u + %u: raise LimitNOFILE, "
			"or connections will be refused before max-conns",
			(unsigned long long)rl.rlim_cur, max_conns, FD_OVERHEAD);
}

static int start(struct svc *s)
{
	struct pt_loader_opts lo = { .pin_dir = s->cfg->pin_dir,
				     .log_mb = s->cfg->log_mb,
				     .tdp = s->cfg->tdp };
	/* 128 KiB receive buffers: a full 4096-range HINT frame (64 KiB + 24 bytes) lands in one
	 * buffer and is parsed in place instead of being reassembled. */
	struct pt_server_cfg sc = { .path = s->cfg->socket,
				    .listen_fd = s->cfg->listen_fd,
				    .tick_ms = s->cfg->tick_ms,
				    .nbufs = 128,
				    .buf_size = 128 * 1024,
				    .max_conns = s->cfg->max_conns,
				    .max_outq = (size_t)s->cfg->conn_output_kb << 10,
				    .max_outq_total = (size_t)s->cfg->max_output_mb << 20,
				    .turn_frames = s->cfg->turn_frames,
				    .turn_work = s->cfg->turn_pages,
				    .frame_timeout_ms = s->cfg->frame_timeout * 1000,
				    .reply_timeout_ms = s->cfg->reply_timeout * 1000,
				    .idle_timeout_ms = s->cfg->idle_timeout * 1000 };
	struct pt_server_ops ops = { .on_frame = on_frame,
				     .on_close = on_close,
				     .on_tick = on_tick,
				     .on_signal = on_signal,
				     .on_accept = on_accept,
				     .on_drain = on_drain };
	char cov[400];
	int err;

	mkdir(s->cfg->run_dir, 0755);
	raise_fd_limit(s->cfg->max_conns);
	err = pt_tracker_open(&s->t, &lo);
	if (err)
		return err;
	adopt_pinned_vms(s);
	if (s->cfg->canary)
		pt_canary_run(s->t, &s->cov);
	pt_info("coverage: %s", pt_coverage_str(&s->cov, cov, sizeof(cov)));
	err = pt_server_create(&s->srv, &sc, &ops, s);
	if (err) {
		pt_err("socket %s: %s", s->cfg->socket, strerror(-err));
		return err;
	}
	err = pt_caps_drop_all();
	if (err) {
		pt_err("dropping capabilities: %s", strerror(-err));
		return err;
	}
	publish_status(s);
	pt_info("listening on %s (capabilities dropped)",
		s->cfg->socket[0] ? s->cfg->socket : "(inherited socket)");
	sd_notifyf("READY=1\nSTATUS=0 VMs; %s", cov);
	return 0;
}

int pt_service_run(const struct pt_config *cfg)
{
	struct svc *s = calloc(1, sizeof(*s));
	int err;

	if (!s)
		return -ENOMEM;
	s->cfg = cfg;
	s->live = *cfg;
	for (uint32_t i = 0; i < PT_MAX_VMS; i++)
		s->id[i] = (struct vm_id){ .pidfd = -1, .vm_fd = -1 };
	s->quota = pt_quota_new();
	s->out = aligned_alloc(8, PT_MAX_FRAME);
	s->part = calloc(BIG_PART_RANGES, sizeof(*s->part));
	err = s->out && s->part && s->quota ? start(s) : -ENOMEM;
	if (!err)
		err = pt_server_run(s->srv);
	pt_server_destroy(s->srv);
	for (uint32_t i = 0; i < PT_MAX_VMS; i++) {
		pt_vmctx_free(s->vms[i]);
		drop_identity(s, i);
	}
	pt_quota_free(s->quota);
	pt_tracker_close(s->t);
	free(s->ranges);
	free(s->part);
	free(s->out);
	free(s);
	return err;
}
