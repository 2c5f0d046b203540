// SPDX-License-Identifier: GPL-2.0
/*
 * libFuzzer target past the parser: the service's dispatch and the command state
 * (user/daemon/service.c and cmdstate.c, compiled in unchanged) driven by a script of
 * operations read from the input: connections opening and closing, REGISTER, ARM, HINT, STOP,
 * DONE, QUERY, REPORT, INFLATE, DEFLATE, WRITTEN, WR_READ and raw frames from several peers
 * (takeover included: two connections may name the same VMM), guest writes into a synthetic
 * write log (tests/daemon/fake_daemon.c), syncs, taints, ticks, and the peer reading its
 * replies a little at a time.
 *
 * After every operation it checks what a device could rely on:
 *   - no page is reported free that was written since the ARM (HINTS) or since it was
 *     reported (REPORTED), and every free page was hinted / reported;
 *   - WR_RECORDS list every page written since ARM in the asked ranges;
 *   - a reply answers the oldest request of its connection; its frames are ascending,
 *     disjoint, agree with the totals, and an unsure reply lists nothing;
 *   - one request grows a connection's queue by a bounded amount, whatever it asks;
 *   - a connection only ever acts on the VM of the VMM it registered itself.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Small, so that long replies take several calls and several frames. */
#define LAZY_WORDS 64u
#define LAZY_QUEUE (64u << 10)
/* ... and batches of more than 64 pages are applied in parts, one per drain. */
#define BIG_PART_PAGES 64ull
#include "daemon/service.c"

#include "fake_daemon.h"

#define NCONN	4
#define NPID	3
#define A_GFN	(1ull << 18) /* 1 GiB */
#define A_PAGES 12288u
#define B_GFN	(1ull << 19) /* 2 GiB */
#define B_PAGES 2048u
#define NPAGES	(A_PAGES + B_PAGES)
#define MAX_REQ 64
#define MAX_OUT (4u << 20) /* the server's default per-connection limit */
/* What one request may add to a queue: LAZY_QUEUE, then one more frame near 64 KiB. */
#define MAX_GROWTH (LAZY_QUEUE + (80u << 10))

struct req {
	uint32_t seq;
	uint32_t type, what;
	int pidx;    /* VMM of the connection when sent, -1 if none */
	uint8_t *ok; /* QUERY: pages that may be listed free; WR_READ: pages that must be listed */
	uint8_t *asked;
	struct pt_msg *batch; /* a batch applied in parts: the request, for its later ACK */
};

struct fconn {
	struct pt_conn c;
	int pidx; /* VMM this connection registered (its own REGISTER was acked), -1 if none */
	struct req q[MAX_REQ];
	unsigned nq;
	size_t seen; /* bytes of c.out already checked */
	uint32_t seq;
	/* the reply being received: frames so far */
	bool in_reply;
	uint64_t listed, last_end;
	uint8_t got[NPAGES];
};

/* Per VMM: what the device may rely on, kept by the test. */
struct shadow {
	uint8_t written[NPAGES];  /* since the last acked ARM, or ever */
	uint8_t hinted[NPAGES];	  /* under the current command ID, since its ARM */
	uint8_t reported[NPAGES]; /* reported, not written since */
	bool armed;		  /* an ARM was acked since the last REGISTER */
};

static struct svc *S;
static struct fconn conns[NCONN];
static struct shadow sh[NPID];
static uint32_t pids[NPID];
static uint32_t next_id;
static uint8_t frame[PT_MAX_FRAME + 64] __attribute__((aligned(8)));

#define BUG(cond)                \
	do {                     \
		if (cond)        \
			abort(); \
	} while (0)

/* --- the input ------------------------------------------------------------------------------- */

struct in {
	const uint8_t *p;
	size_t n;
};

static uint32_t get8(struct in *in)
{
	if (!in->n)
		return 0;
	in->n--;
	return *in->p++;
}

static uint32_t get16(struct in *in)
{
	return get8(in) | get8(in) << 8;
}

/* --- pages and ranges ---------------------------------------------------------------------- */

static uint64_t page_gfn(uint32_t p)
{
	return p < A_PAGES ? A_GFN + p : B_GFN + (p - A_PAGES);
}

static int gfn_page(uint64_t gfn)
{
	if (gfn >= A_GFN && gfn < A_GFN + A_PAGES)
		return (int)(gfn - A_GFN);
	if (gfn >= B_GFN && gfn < B_GFN + B_PAGES)
		return (int)(gfn - B_GFN + A_PAGES);
	return -1;
}

static int vm_of(int pidx)
{
	uint32_t vm;

	return pidx >= 0 && !pt_vm_find(S->t, pids[pidx], &vm) ? (int)vm : -1;
}

/* A guest write, or one by the VMM itself. */
static void guest_write(int pidx, uint32_t page)
{
	int vm = vm_of(pidx);

	if (vm >= 0)
		fake_write_gfn(S->t, (uint32_t)vm, page_gfn(page));
	sh[pidx].written[page] = 1;
	sh[pidx].hinted[page] = 0;
	sh[pidx].reported[page] = 0;
}

/* Ranges from the input: mostly inside the slots, sometimes not (errors are fine). */
static uint32_t get_ranges(struct in *in, struct pt_range *r, uint32_t max)
{
	uint32_t n = 1 + get8(in) % 8;

	if (n > max)
		n = max;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t start = get16(in) % NPAGES, len = 1 + get8(in) % 64;
		uint32_t mode = get8(in);

		r[i].gpa = page_gfn(start) << 12;
		r[i].len = (uint64_t)len << 12;
		if (mode == 0xff)
			r[i].gpa += 512; /* unaligned */
		else if (mode == 0xfe)
			r[i].gpa = 0;
	}
	return n;
}

/* Every other page of slot A, from @first: thousands of ranges, several reply frames. */
static uint32_t checkerboard(struct pt_range *r, uint32_t first)
{
	uint32_t n = 0;

	for (uint32_t p = first; p < A_PAGES; p += 2)
		r[n++] = (struct pt_range){ page_gfn(p) << 12, 4096 };
	return n;
}

static void mark(uint8_t *set, const struct pt_range *r, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		for (uint64_t g = r[i].gpa >> 12; g < (r[i].gpa + r[i].len) >> 12; g++)
			if (gfn_page(g) >= 0)
				set[gfn_page(g)] = 1;
}

/* --- replies --------------------------------------------------------------------------------- */

static void req_done(struct fconn *f)
{
	free(f->q[0].ok);
	free(f->q[0].asked);
	free(f->q[0].batch);
	memmove(f->q, f->q + 1, (f->nq - 1) * sizeof(f->q[0]));
	f->nq--;
	f->in_reply = false;
}

/*
 * Once a takeover starts the VM afresh (issue 11, identity: its quota.h comes with it), a
 * REGISTER by another connection must forget what the previous one hinted, and this checks
 * it. Before, a takeover carried the state over.
 */
#ifndef CHECK_TAKEOVER
#ifdef PT_QUOTA_H
#define CHECK_TAKEOVER 1
#else
#define CHECK_TAKEOVER 0
#endif
#endif
static uint32_t owner_conn[NPID];

static int pid_index(uint32_t pid)
{
	for (int i = 0; i < NPID; i++)
		if (pids[i] == pid)
			return i;
	return -2; /* a live process the test does not follow (a raw frame named it) */
}

/* What an ACK means for the test's picture of the VMM. */
static void on_ack(struct fconn *f, const struct req *r, const struct pt_msg *m)
{
	struct shadow *v;

	if (r->type == PT_MSG_REGISTER || r->type == PT_MSG_REGISTER2) {
		f->pidx =
			pid_index(r->type == PT_MSG_REGISTER ? m->reg->vmm_pid : m->reg2->vmm_pid);
		if (f->pidx >= 0) {
			sh[f->pidx].armed = false;
			if (CHECK_TAKEOVER && owner_conn[f->pidx] != f->c.id)
				memset(sh[f->pidx].hinted, 0, NPAGES);
			owner_conn[f->pidx] = f->c.id;
		}
		return;
	}
	if (r->type == PT_MSG_PING || r->type == PT_MSG_WR_CAPS)
		return;
	/* Acting on a VM: only the connection that registered it, for its own VMM. */
	BUG(f->pidx == -1 || r->pidx != f->pidx);
	if (f->pidx < 0)
		return;
	v = &sh[f->pidx];
	switch (r->type) {
	case PT_MSG_ARM:
		memset(v->written, 0, NPAGES);
		memset(v->hinted, 0, NPAGES);
		v->armed = true;
		break;
	case PT_MSG_HINT:
		mark(v->hinted, m->ranges, m->count);
		break;
	case PT_MSG_REPORT:
		mark(v->reported, m->ranges, m->count);
		break;
	case PT_MSG_WRITTEN:
		for (uint32_t i = 0; i < m->count; i++)
			for (uint64_t g = m->ranges[i].gpa >> 12;
			     g < (m->ranges[i].gpa + m->ranges[i].len) >> 12; g++)
				if (gfn_page(g) >= 0)
					guest_write(f->pidx, (uint32_t)gfn_page(g));
		break;
	}
}

static void check_ranges(struct fconn *f, const struct req *r, const struct pt_msg *m)
{
	for (uint32_t i = 0; i < m->count; i++) {
		const struct pt_range *x = &m->ranges[i];

		BUG(!x->len || (x->gpa | x->len) & 4095);
		BUG(f->last_end && x->gpa < f->last_end); /* ascending, disjoint */
		f->last_end = x->gpa + x->len;
		f->listed += x->len >> 12;
		for (uint64_t g = x->gpa >> 12; g < (x->gpa + x->len) >> 12; g++) {
			int p = gfn_page(g);

			BUG(p < 0);
			f->got[p] = 1;
			/* The safety property: listed free means hinted/reported and unwritten. */
			if (r->type == PT_MSG_QUERY && r->what != PT_Q_RECLAIMED && r->ok)
				BUG(!r->ok[p]);
			if (r->type == PT_MSG_WR_READ && r->asked)
				BUG(!r->asked[p]);
		}
	}
}

/* One VERDICT / WR_RECORDS frame of the reply to the oldest request. */
static void on_listing(struct fconn *f, const struct req *r, const struct pt_hdr *h,
		       const struct pt_msg *m)
{
	const struct pt_verdict *v = m->verdict;

	BUG(r->type != PT_MSG_QUERY && r->type != PT_MSG_WR_READ);
	BUG((h->type == PT_MSG_WR_RECORDS) != (r->type == PT_MSG_WR_READ));
	if (!f->in_reply) {
		f->in_reply = true;
		f->listed = f->last_end = 0;
		memset(f->got, 0, sizeof(f->got));
	}
	check_ranges(f, r, m);
	if (h->flags & PT_F_MORE)
		return;
	if (h->type == PT_MSG_VERDICT) {
		BUG(f->listed != v->free);
		/* Any doubt but NO_SYNC confirms nothing. NO_SYNC alone may stand beside free
		 * pages: it then covers only pages hinted before the sync (PROTOCOL.md 6). */
		if (v->unsure_reason & ~PT_WHY_NO_SYNC)
			BUG(v->free || f->listed);
	} else {
		BUG(f->listed != v->kept_written + v->kept_unsure);
		/* A page asked twice is one page asked (PROTOCOL.md 4.7). */
		BUG(v->hinted != v->free + v->kept_written + v->kept_unsure);
		/* Every page written since ARM in the asked ranges is listed. */
		for (uint32_t p = 0; r->ok && p < NPAGES; p++)
			BUG(r->ok[p] && !f->got[p]);
	}
	req_done(f);
}

/* Checks the replies that arrived since the last call. */
static void check_replies(struct fconn *f)
{
	while (f->c.len - f->seen >= sizeof(struct pt_hdr)) {
		static uint64_t payload[(PT_MAX_PAYLOAD + 8) / 8];
		struct pt_hdr h;
		struct pt_msg m;

		memcpy(&h, f->c.out + f->seen, sizeof(h));
		BUG(pt_hdr_check(&h) || !pt_type_is_reply(h.type));
		if (f->c.len - f->seen < sizeof(h) + h.len)
			return;
		memcpy(payload, f->c.out + f->seen + sizeof(h), h.len);
		BUG(pt_frame_parse(&h, h.len ? payload : NULL, &m));
		f->seen += sizeof(h) + h.len;
#ifdef FUZZ_DEBUG /* -DFUZZ_DEBUG: every reply, to see what an input does */
		fprintf(stderr, "conn %u: %s seq %u", f->c.id, pt_msg_type_str(h.type), h.seq);
		if (h.type == PT_MSG_ERROR)
			fprintf(stderr, " %s: %.*s", pt_err_str(m.error->code), (int)m.reason_len,
				m.reason);
		if (h.type == PT_MSG_VERDICT || h.type == PT_MSG_WR_RECORDS)
			fprintf(stderr, " free %llu why %#x nranges %u%s",
				(unsigned long long)m.verdict->free, m.verdict->unsure_reason,
				m.count, h.flags & PT_F_MORE ? " MORE" : "");
		fprintf(stderr, "\n");
#endif
		BUG(!f->nq || h.seq != f->q[0].seq); /* in order, one reply per request */
		if (h.type == PT_MSG_VERDICT || h.type == PT_MSG_WR_RECORDS) {
			on_listing(f, &f->q[0], &h, &m);
			continue;
		}
		BUG(f->in_reply);
		/* A batch answered after its parts: what its ACK means, now. */
		if (h.type == PT_MSG_ACK && f->q[0].batch)
			on_ack(f, &f->q[0], f->q[0].batch);
		req_done(f);
	}
}

/* --- requests -------------------------------------------------------------------------------- */

static int conn_pidx(struct fconn *f)
{
	struct pt_vmctx *ctx = conn_vm(S, &f->c);

	return ctx ? pid_index(ctx->pid) : -1;
}

/* The pages a QUERY may list free, as the test knows them when the QUERY is handled. */
static uint8_t *may_be_free(int pidx, uint32_t what)
{
	uint8_t *ok;

	if (pidx < 0 || what == PT_Q_RECLAIMED)
		return NULL;
	ok = calloc(NPAGES, 1);
	for (uint32_t p = 0; p < NPAGES; p++)
		ok[p] = what == PT_Q_HINTS ? sh[pidx].hinted[p] && !sh[pidx].written[p]
					   : sh[pidx].reported[p];
	return ok;
}

/* For a listing request: what may be listed (QUERY), or what must be (WR_READ). */
static void expect_listing(struct req *r, const struct pt_msg *m)
{
	if (m->type == PT_MSG_QUERY) {
		r->what = m->query->what;
		r->ok = may_be_free(r->pidx, r->what);
	} else if (m->type == PT_MSG_WR_READ) {
		r->asked = calloc(NPAGES, 1);
		mark(r->asked, m->ranges, m->count);
		/* Written since an ARM both the log and the test saw: must be listed. */
		if (r->pidx >= 0 && sh[r->pidx].armed) {
			r->ok = calloc(NPAGES, 1);
			for (uint32_t p = 0; p < NPAGES; p++)
				r->ok[p] = r->asked[p] && sh[r->pidx].written[p];
		}
	}
}

/*
 * Hands the frame in frame[] to the service as the server would (only frames whose header
 * passed pt_hdr_check), and checks the reply: bounded, and in order.
 */
static void deliver(struct fconn *f)
{
	const struct pt_hdr *h = (const struct pt_hdr *)frame;
	const void *payload = h->len ? frame + sizeof(*h) : NULL;
	struct req r = { .seq = h->seq, .type = 0, .pidx = conn_pidx(f) };
	size_t before = f->c.len;
	struct pt_msg m;
	bool parsed;

	if (pt_hdr_check(h) || f->nq == MAX_REQ)
		return; /* the server answers those itself */
	parsed = !pt_frame_parse(h, payload, &m);
	if (parsed) {
		r.type = m.type;
		expect_listing(&r, &m);
	}
	f->q[f->nq++] = r;
	on_frame(S, &f->c, h, payload);
	BUG(f->c.len - before > MAX_GROWTH);
	if (f->c.len >= before + sizeof(struct pt_hdr)) {
		struct pt_hdr rh;

		memcpy(&rh, f->c.out + before, sizeof(rh));
		BUG(rh.seq != h->seq);
		if (rh.type == PT_MSG_ACK) {
			BUG(!parsed);
			on_ack(f, &r, &m);
		}
	} else if (parsed && m.ranges && m.type != PT_MSG_WR_READ) {
		/* No reply yet: a batch applied in parts, acked later (keep its ranges). */
		struct pt_msg *b = malloc(sizeof(*b) + (size_t)m.count * sizeof(*m.ranges) + 1);

		BUG(!b);
		*b = m;
		memcpy(b + 1, m.ranges, (size_t)m.count * sizeof(*m.ranges));
		b->ranges = (const struct pt_range *)(b + 1);
		f->q[f->nq - 1].batch = b;
	}
	check_replies(f);
}

static uint32_t next_seq(struct fconn *f)
{
	return ++f->seq;
}

static void send_register(struct fconn *f, struct in *in)
{
	uint32_t pidx = get8(in) % NPID, shape = get8(in) % 4;
	struct pt_reg_slot sl[2] = {
		{ A_GFN << 12, (uint64_t)A_PAGES << 12, 1, PT_REG_SLOT_LOGGED },
		{ B_GFN << 12, (uint64_t)B_PAGES << 12, 2, PT_REG_SLOT_LOGGED },
	};

	if (shape == 3)
		sl[1].flags = 0; /* an unlogged slot: every verdict keeps */
	pt_build_register(frame, sizeof(frame), next_seq(f), pids[pidx],
			  get8(in) & 1 ? PT_DIRTY_BITMAP : PT_DIRTY_RING, sl, shape ? 2 : 1);
	deliver(f);
}

static void send_query(struct fconn *f, struct in *in)
{
	uint32_t cmd = 2 + get8(in) % 4;

	pt_build_query(frame, sizeof(frame), next_seq(f), cmd, get8(in) % 3);
	deliver(f);
}

static void send_batch(struct fconn *f, struct in *in, uint32_t type)
{
	static struct pt_range rg[A_PAGES / 2 + 8];
	uint32_t cmd = 2 + get8(in) % 4, n, sel = get8(in);

	if (type != PT_MSG_REPORT && type != PT_MSG_WR_READ && sel >= 0xf0)
		n = checkerboard(rg, sel & 1);
	else
		n = get_ranges(in, rg, type == PT_MSG_REPORT ? PT_MAX_REPORT : 8);
	if (type == PT_MSG_HINT)
		pt_build_hint(frame, sizeof(frame), next_seq(f), cmd, rg, n);
	else
		pt_build_report(frame, sizeof(frame), type, next_seq(f), rg, n);
	deliver(f);
}

static void send_cmd(struct fconn *f, struct in *in, uint32_t type)
{
	pt_build_cmd(frame, sizeof(frame), type, next_seq(f), get8(in) % 6);
	deliver(f);
}

/* Anything at all, for the parser behind the dispatch. */
static void send_raw(struct fconn *f, struct in *in)
{
	uint32_t type = get8(in) % 16, len = get8(in) * 8;

	if (len > in->n)
		len = (uint32_t)in->n & ~7u;
	pt_encode_hdr(frame, sizeof(struct pt_hdr) + len, type, 0, len, next_seq(f));
	memcpy(frame + sizeof(struct pt_hdr), in->p, len);
	in->p += len;
	in->n -= len;
	deliver(f);
}

/* --- the world ----------------------------------------------------------------------------- */

static void conn_gone(struct fconn *f)
{
	on_close(S, &f->c);
	while (f->nq)
		req_done(f);
	fake_conn_free(&f->c);
	f->pidx = -1;
}

/* The peer reads some of its replies; a paused connection then gets the next part. */
static void peer_reads(struct fconn *f, size_t n)
{
	check_replies(f);
	if (n > f->seen)
		n = f->seen;
	fake_conn_consume(&f->c, n);
	f->seen -= n;
	for (int turn = 0; turn < 4 && f->c.paused && f->c.len <= LAZY_QUEUE; turn++) {
		size_t before = f->c.len;

		on_drain(S, &f->c);
		BUG(f->c.len - before > MAX_GROWTH);
		check_replies(f);
	}
}

static void op(struct in *in)
{
	uint32_t o = get8(in), i = get8(in) % NCONN;
	struct fconn *f = &conns[i];

	if (o % 16 == 0) {
		if (!f->c.used) {
			fake_conn_init(&f->c, ++next_id, (pid_t)pids[get8(in) % NPID],
				       get8(in) & 1 ? 1000 : 0);
#ifdef PT_QUOTA_H /* the service with per-uid quotas sees every connection accepted */
			on_accept(S, &f->c);
#endif
			f->pidx = -1;
			f->seen = 0;
			f->seq = 0;
		}
		return;
	}
	if (o % 16 == 9) {
		uint32_t pidx = i % NPID, p = get16(in) % NPAGES, n = 1 + get8(in) % 8;

		for (uint32_t k = 0; k < n && p + k < NPAGES; k++)
			guest_write((int)pidx, p + k);
		return;
	}
	if (o % 16 == 10) {
		int vm = vm_of((int)(i % NPID));

		if (vm >= 0 && get8(in) < 16)
			pt_vm_taint(S->t, (uint32_t)vm, 1);
		else if (vm >= 0)
			fake_sync(S->t, (uint32_t)vm);
		return;
	}
	if (o % 16 == 12) {
		on_tick(S);
		return;
	}
	if (!f->c.used)
		return;
	if (o % 16 == 11) {
		peer_reads(f, get8(in) == 0xff ? SIZE_MAX : (size_t)get8(in) * 1024);
		return;
	}
	if (o % 16 == 1) {
		conn_gone(f);
		return;
	}
	/* The server hands no frame to a connection that is paused or over its queue limit. */
	if (f->c.paused || f->c.len > MAX_OUT)
		return;
	switch (o % 16) {
	case 2:
		send_register(f, in);
		break;
	case 3:
		send_cmd(f, in, PT_MSG_ARM);
		break;
	case 4:
		send_batch(f, in, PT_MSG_HINT);
		break;
	case 5:
		send_query(f, in);
		break;
	case 6:
		send_batch(f, in, PT_MSG_REPORT + get8(in) % 3); /* REPORT, INFLATE, DEFLATE */
		break;
	case 7:
		send_batch(f, in, PT_MSG_WR_READ);
		break;
	case 8:
		send_cmd(f, in, get8(in) & 1 ? PT_MSG_STOP : PT_MSG_DONE);
		break;
	case 13:
		send_raw(f, in);
		break;
	case 14:
		send_batch(f, in, PT_MSG_WRITTEN);
		break;
	default:
		pt_build_empty(frame, sizeof(frame), PT_MSG_PING, next_seq(f));
		deliver(f);
	}
}

static uint64_t out_frame[PT_MAX_FRAME / 8]; /* the service's reply buffer, kept */

static void setup(void)
{
	static struct pt_config cfg;

	pt_config_defaults(&cfg);
	cfg.learn_mb = 1;
	S = calloc(1, sizeof(*S));
	S->cfg = &cfg;
	S->live = cfg;
	S->out = (uint8_t *)out_frame;
	S->part = calloc(BIG_PART_RANGES, sizeof(*S->part));
	S->t = fake_tracker_new();
	pt_canary_run(S->t, &S->cov);
#ifdef PT_QUOTA_H
	S->quota = pt_quota_new();
#endif
	memset(sh, 0, sizeof(sh));
	memset(conns, 0, sizeof(conns));
	memset(owner_conn, 0, sizeof(owner_conn));
	pids[0] = (uint32_t)getpid();
	pids[1] = (uint32_t)getppid();
	pids[2] = 1;
}

static void teardown(void)
{
	for (int i = 0; i < NCONN; i++)
		if (conns[i].c.used)
			conn_gone(&conns[i]);
	BUG(S->lazy); /* every long reply went with its connection */
	for (uint32_t i = 0; i < PT_MAX_VMS; i++)
		pt_vmctx_free(S->vms[i]);
	fake_tracker_free(S->t);
#ifdef PT_QUOTA_H
	pt_quota_free(S->quota);
#endif
	free(S->ranges);
	free(S->part);
	free(S);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct in in = { data, size };

	pt_log_level = 0; /* quiet */
	setup();
	for (int n = 0; in.n && n < 256; n++)
		op(&in);
	for (int i = 0; i < NCONN; i++) /* drain: every reply is checked */
		if (conns[i].c.used)
			for (int k = 0; k < 64 && (conns[i].c.len || conns[i].c.paused); k++)
				peer_reads(&conns[i], SIZE_MAX);
	teardown();
	return 0;
}
