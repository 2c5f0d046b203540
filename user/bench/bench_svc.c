// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_pump.h"
#include "bench_svc.h"
#include "bench_util.h"
#include "vmm/minivm.h"

#define GIB	  (1ull << 30)
#define MIB	  (1ull << 20)
#define PAGE	  4096ull
#define PER_FRAME 4096 /* hint entries per frame: libpagetrack's PT_CLIENT_BATCH */

/* Keys and labels live as long as the process: results keep pointers to them. */
static const char *kfmt(const char *pfx, const char *name)
{
	char *s = NULL;

	if (asprintf(&s, "%s_%s", pfx, name) < 0)
		return name;
	return s;
}

static uint64_t slots_bytes(const struct pt_reg_slot *s, uint32_t n)
{
	uint64_t b = 0;

	for (uint32_t i = 0; i < n; i++)
		b += s[i].size;
	return b;
}

static double per_s(uint64_t n, uint64_t ns)
{
	return ns ? n * 1e9 / ns : 0;
}

static uint64_t svc_cpu(const struct bench_env *env)
{
	uint64_t ns = 0;

	bench_proc_cpu_ns(env->svc, &ns);
	return ns;
}

/* A guest laid out like a PC: 2 GiB below the hole, the rest from 4 GiB. */
static uint32_t pc_guest(struct pt_reg_slot *s, uint64_t bytes)
{
	s[0] = (struct pt_reg_slot){ 0, 2 * GIB, 1, 0 };
	s[1] = (struct pt_reg_slot){ 4 * GIB, bytes - 2 * GIB, 2, 0 };
	return 2;
}

static int build_rounds(struct bench_round r[2], const struct pt_reg_slot *s, uint32_t n,
			uint64_t range_len)
{
	size_t count;
	struct pt_range *ranges = bench_ranges(s, n, range_len, &count);
	int err;

	if (!ranges)
		return -ENOMEM;
	err = bench_round_build(&r[0], 2, ranges, count, PER_FRAME);
	if (!err)
		err = bench_round_build(&r[1], 3, ranges, count, PER_FRAME);
	free(ranges);
	return err;
}

static void free_rounds(struct bench_round r[2])
{
	bench_round_free(&r[0]);
	bench_round_free(&r[1]);
}

static int conn_open(const struct bench_env *env, struct bench_conn *c)
{
	int fd = bench_connect(env->socket), err;

	if (fd < 0)
		return fd;
	err = bench_conn_init(c, fd, false);
	if (err)
		bench_conn_close(c);
	return err;
}

static int check_errors(const struct bench_conn *c, const char *what)
{
	if (!c->errors)
		return 0;
	bench_progress("%s: %llu requests failed, last: %s", what, (unsigned long long)c->errors,
		       pt_err_str(c->last_err));
	return -EPROTO;
}

/* --- hinting against the raw socket and the epoll loop ------------------------------------- */

struct cmp {
	const char *pfx;
	struct pt_reg_slot slots[2];
	uint32_t nslots;
	uint64_t range_len;
	struct bench_round rounds[2];
	/* Per contender the fastest of REPS interleaved runs: interference only slows a run. */
	struct bench_run svc, sink, ep, floor;
	/* Over all runs: CPU time and what it bought, the service's rounds and verdicts. */
	uint64_t svc_cpu, svc_records, ep_cpu, ep_records, floor_cpu, floor_records, svc_rounds,
		sure;
	bool last;	 /* the last repetition: time QUERY round trips after it */
	double query_ns; /* QUERY round trip on the fully hinted guest, p50 */
};

#define REPS 3

/* QUERY round trips on the fully hinted guest the last round left behind. */
static int time_queries(struct bench_conn *c, uint32_t cmd, unsigned n, uint64_t *ns,
			unsigned *sure)
{
	uint8_t q[PT_HDR_SIZE + sizeof(struct pt_query)];
	size_t len = pt_build_query(q, sizeof(q), 9, cmd, PT_Q_HINTS);

	for (unsigned i = 0; i < n; i++) {
		uint64_t t0 = bench_now_ns();
		int err = bench_request(c, q, len);

		if (err)
			return err;
		ns[i] = bench_now_ns() - t0;
		*sure += !c->verdict.unsure_reason;
	}
	return 0;
}

static int put_query_times(const struct bench_env *env, struct bench_conn *c, struct cmp *x)
{
	unsigned n = env->quick ? 10 : 50;
	uint64_t ns[50];
	uint32_t cmd = x->svc.rounds & 1 ? 2 : 3; /* the last round's ID */
	unsigned sure = 0;
	int err = time_queries(c, cmd, n, ns, &sure);

	if (err)
		return err;
	bench_sort_u64(ns, n);
	x->query_ns = bench_percentile(ns, n, 50);
	return 0;
}

static int cmp_service(const struct bench_env *env, struct cmp *x)
{
	struct bench_run warm;
	struct bench_conn c;
	pid_t holder = 0;
	uint64_t cpu0;
	int err = bench_holders_spawn(&holder, 1);

	if (err)
		return err;
	err = conn_open(env, &c);
	if (err)
		goto out_holder;
	err = bench_register(&c, holder, x->slots, x->nslots);
	/* Two untimed rounds (both command IDs): the VM's bitmaps are faulted in and the IDs
	 * used once, as in the steady state the figure stands for. */
	if (!err)
		err = bench_run_rounds(&c, x->rounds, 2, 0, NULL, NULL, &warm);
	cpu0 = svc_cpu(env);
	if (!err)
		err = bench_run_rounds(&c, x->rounds, 0, env->run_ns / REPS, NULL, NULL, &x->svc);
	x->svc_cpu = svc_cpu(env) - cpu0;
	if (!err)
		err = check_errors(&c, x->pfx);
	if (!err && x->last && x->range_len == 4 * MIB)
		err = put_query_times(env, &c, x);
	bench_conn_close(&c);
out_holder:
	bench_holders_kill(&holder, 1);
	return err;
}

static int cmp_sink(struct cmp *x)
{
	struct bench_conn c;
	pid_t pid;
	int fd, err = bench_fork_sink(&fd, &pid);

	if (err)
		return err;
	err = bench_conn_init(&c, fd, true);
	if (!err)
		err = bench_run_rounds(&c, x->rounds, x->svc.rounds, 0, NULL, NULL, &x->sink);
	bench_conn_close(&c);
	bench_child_reap(-1, pid);
	return err;
}

/* Its CPU time too: the service's waits for replies (ARM's ACK, the verdict) cost it wall
 * time the replyless floor never spends, the more so on a busy machine. */
static int cmp_floor(struct cmp *x)
{
	uint64_t cpu0 = 0, cpu1 = 0;
	struct bench_conn c;
	pid_t pid;
	int fd, err = bench_fork_floor(&fd, &pid, x->slots, x->nslots);

	if (err)
		return err;
	err = bench_conn_init(&c, fd, true);
	bench_proc_cpu_ns(pid, &cpu0);
	if (!err)
		err = bench_run_rounds(&c, x->rounds, x->svc.rounds, 0, NULL, NULL, &x->floor);
	bench_proc_cpu_ns(pid, &cpu1); /* it has sent its count: done, not yet reaped */
	x->floor_cpu = cpu1 - cpu0;
	bench_conn_close(&c);
	bench_child_reap(-1, pid);
	return err;
}

static int cmp_epoll(struct cmp *x)
{
	uint64_t cpu0 = 0, cpu1 = 0;
	struct bench_run warm;
	struct bench_conn c;
	pid_t pid;
	int fd, err = bench_fork_epoll(&fd, &pid, x->slots, x->nslots);

	if (err)
		return err;
	err = bench_conn_init(&c, fd, false);
	/* The same untimed warm-up as the service gets. */
	if (!err)
		err = bench_run_rounds(&c, x->rounds, 2, 0, NULL, NULL, &warm);
	bench_proc_cpu_ns(pid, &cpu0);
	if (!err)
		err = bench_run_rounds(&c, x->rounds, x->svc.rounds, 0, NULL, NULL, &x->ep);
	bench_proc_cpu_ns(pid, &cpu1);
	x->ep_cpu = cpu1 - cpu0;
	if (!err)
		err = check_errors(&c, "epoll loop");
	bench_conn_close(&c);
	bench_child_reap(-1, pid);
	return err;
}

static void cmp_put(const struct cmp *x)
{
	const char *p = x->pfx;
	double rounds = x->svc_rounds;
	double a = per_s(x->svc.records, x->svc.ns), b = per_s(x->sink.records, x->sink.ns);
	double c = per_s(x->ep.records, x->ep.ns), f = per_s(x->floor.records, x->floor.ns);
	double gib = (double)slots_bytes(x->slots, x->nslots) / GIB;
	double bytes = (double)x->rounds[0].arm_len + x->rounds[0].body_len;

	bench_put(kfmt(p, "guest_gib"), gib, "GiB", "guest size (hinted whole each round)");
	bench_put(kfmt(p, "rounds"), rounds, "", "rounds (ARM, sync, HINT.., STOP, QUERY)");
	bench_put(kfmt(p, "reps"), REPS, "",
		  "interleaved runs per contender (rates: the best run)");
	bench_put(kfmt(p, "records_per_s"), a, "rec/s", "(a) pagetrackd: hint records");
	bench_put(kfmt(p, "gib_validated_per_s"), per_s(x->svc.rounds, x->svc.ns) * gib, "GiB/s",
		  "(a) pagetrackd: guest validated");
	bench_put(kfmt(p, "cpu_ns_per_record"), (double)x->svc_cpu / x->svc_records, "ns",
		  "(a) pagetrackd: service CPU per record");
	bench_put(kfmt(p, "raw_socket_records_per_s"), b, "rec/s",
		  "(b) raw AF_UNIX stream, reader only");
	bench_put(kfmt(p, "raw_socket_gbytes_per_s"),
		  per_s(x->sink.rounds, x->sink.ns) * bytes / 1e9, "GB/s",
		  "(b) raw AF_UNIX stream, bytes");
	bench_put(kfmt(p, "epoll_records_per_s"), c, "rec/s",
		  "(c) epoll + read/write, same cmdstate");
	bench_put(kfmt(p, "epoll_cpu_ns_per_record"), (double)x->ep_cpu / x->ep_records, "ns",
		  "(c) epoll loop CPU per record");
	bench_put(kfmt(p, "floor_records_per_s"), f, "rec/s",
		  "(f) floor: same stream, only the bitmap work");
	bench_put(kfmt(p, "floor_cpu_ns_per_record"), (double)x->floor_cpu / x->floor_records, "ns",
		  "(f) floor CPU per record");
	bench_put(kfmt(p, "ratio_vs_raw_socket"), a / b, "x", "a/b");
	bench_put(kfmt(p, "ratio_vs_epoll"), a / c, "x", "a/c");
	bench_put(kfmt(p, "ratio_vs_floor"), a / f, "x", "a/f");
	bench_put(kfmt(p, "cpu_ratio_vs_floor"),
		  ((double)x->floor_cpu / x->floor_records) / ((double)x->svc_cpu / x->svc_records),
		  "x", "a/f on CPU time: floor CPU per record / pagetrackd's");
	if (x->query_ns)
		bench_put("verdict_64g_unsure_ms_p50", x->query_ns / 1e6, "ms",
			  "64 GiB verdict, synthetic VMM (kept_unsure), p50");
	bench_note(kfmt(p, "verdicts"), "verdicts",
		   "%llu of %llu sure (synthetic VMM, no KVM sync: kept_unsure expected)",
		   (unsigned long long)x->sure, (unsigned long long)x->svc_rounds);
}

static void keep_best(struct bench_run *best, const struct bench_run *r)
{
	if (!best->ns || (double)r->records * best->ns > (double)best->records * r->ns)
		*best = *r;
}

static void cmp_keep(struct cmp *x, const struct cmp *r)
{
	keep_best(&x->svc, &r->svc);
	keep_best(&x->sink, &r->sink);
	keep_best(&x->ep, &r->ep);
	keep_best(&x->floor, &r->floor);
	x->svc_cpu += r->svc_cpu;
	x->svc_records += r->svc.records;
	x->ep_cpu += r->ep_cpu;
	x->ep_records += r->ep.records;
	x->floor_cpu += r->floor_cpu;
	x->floor_records += r->floor.records;
	x->svc_rounds += r->svc.rounds;
	x->sure += r->svc.sure;
	if (r->query_ns)
		x->query_ns = r->query_ns;
}

/* One run of each contender, the baselines with as many rounds as the service managed. */
static int compare_once(const struct bench_env *env, struct cmp *r)
{
	int err = cmp_service(env, r);

	if (!err)
		err = cmp_sink(r);
	if (!err)
		err = cmp_epoll(r);
	if (!err)
		err = cmp_floor(r);
	return err;
}

static int compare(const struct bench_env *env, struct cmp *x)
{
	int err = build_rounds(x->rounds, x->slots, x->nslots, x->range_len);

	for (int i = 0; !err && i < REPS; i++) {
		struct cmp r = *x;

		r.last = i == REPS - 1;
		r.query_ns = 0;
		err = compare_once(env, &r);
		if (!err)
			cmp_keep(x, &r);
	}
	if (!err)
		cmp_put(x);
	free_rounds(x->rounds);
	return err;
}

int bench_hinting(const struct bench_env *env)
{
	struct cmp x = { .pfx = "hint", .range_len = 4 * MIB };

	bench_section("Hinting as Linux sends it: 4 MiB ranges, 4096 per frame, rounds of "
		      "ARM, sync, HINT.., STOP, QUERY");
	x.nslots = pc_guest(x.slots, 64 * GIB);
	return compare(env, &x);
}

int bench_worst_case(const struct bench_env *env)
{
	struct cmp x = { .pfx = "worst", .range_len = PAGE };

	bench_section("Worst case: every range one 4 KiB page");
	x.slots[0] = (struct pt_reg_slot){ 4 * GIB, env->quick ? GIB : 4 * GIB, 1, 0 };
	x.nslots = 1;
	return compare(env, &x);
}

/* --- latency -------------------------------------------------------------------------------- */

/* One request, blocking, until its one-frame reply; the reply type is returned. */
static int rpc(int fd, const void *req, size_t len, uint8_t *reply, size_t cap)
{
	struct pt_hdr h;
	int err = bench_write_all(fd, req, len);

	if (!err)
		err = bench_read_all(fd, &h, sizeof(h));
	if (!err && h.len > cap)
		err = -EMSGSIZE;
	if (!err)
		err = bench_read_all(fd, reply, h.len);
	return err ? err : h.type;
}

static int report_samples(int fd, const struct pt_range *r, size_t nr, uint64_t *ns, size_t n)
{
	uint8_t req[PT_HDR_SIZE + sizeof(struct pt_report) + 32 * sizeof(struct pt_range)];
	uint8_t reply[512];

	for (size_t i = 0; i < n; i++) {
		size_t len =
			pt_build_report(req, sizeof(req), PT_MSG_REPORT, i, r + (i * 32) % nr, 32);
		uint64_t t0 = bench_now_ns();
		int type = rpc(fd, req, len, reply, sizeof(reply));

		if (type != PT_MSG_ACK)
			return type < 0 ? type : -EPROTO;
		ns[i] = bench_now_ns() - t0;
	}
	return 0;
}

static int ping_samples(int fd, uint64_t *ns, size_t n)
{
	uint8_t req[PT_HDR_SIZE], reply[512];

	for (size_t i = 0; i < n; i++) {
		size_t len = pt_build_empty(req, sizeof(req), PT_MSG_PING, i);
		uint64_t t0 = bench_now_ns();
		int type = rpc(fd, req, len, reply, sizeof(reply));

		if (type != PT_MSG_ACK)
			return type < 0 ? type : -EPROTO;
		ns[i] = bench_now_ns() - t0;
	}
	return 0;
}

static int service_latency(const struct bench_env *env, uint64_t *ns, size_t n)
{
	struct pt_reg_slot s[2];
	uint32_t nslots = pc_guest(s, 64 * GIB);
	struct bench_conn c;
	struct pt_range *r;
	pid_t holder = 0;
	size_t nr;
	uint64_t t0;
	int err = bench_holders_spawn(&holder, 1);

	r = bench_ranges(s, nslots, 2 * MIB, &nr);
	if (!err && !r)
		err = -ENOMEM;
	if (!err)
		err = conn_open(env, &c);
	if (err)
		goto out;
	err = bench_register(&c, holder, s, nslots);
	bench_set_nonblock(c.fd, false);
	t0 = bench_now_ns();
	if (!err)
		err = report_samples(c.fd, r, nr - nr % 32, ns, n);
	if (!err)
		bench_put("report_records_per_s", per_s(n * 32, bench_now_ns() - t0), "rec/s",
			  "REPORT 32 x 2 MiB, ack awaited: records");
	if (!err)
		bench_put_latency("report_ack", "REPORT ack latency", ns, n);
	if (!err)
		err = ping_samples(c.fd, ns, n);
	if (!err)
		bench_put_latency("service_ping", "service PING round trip", ns, n);
	bench_conn_close(&c);
out:
	free(r);
	bench_holders_kill(&holder, 1);
	return err;
}

static int pingpong(uint64_t *ns, size_t n)
{
	char msg[16] = "pagetrack-ping";
	pid_t pid;
	int fd, err = bench_fork_echo(&fd, &pid, sizeof(msg));

	for (size_t i = 0; !err && i < n; i++) {
		uint64_t t0 = bench_now_ns();

		err = bench_write_all(fd, msg, sizeof(msg));
		if (!err)
			err = bench_read_all(fd, msg, sizeof(msg));
		ns[i] = bench_now_ns() - t0;
	}
	if (pid > 0)
		bench_child_reap(fd, pid);
	if (!err)
		bench_put_latency("pingpong", "raw socket ping-pong 16+16 B", ns, n);
	return err;
}

int bench_latency(const struct bench_env *env)
{
	size_t n = env->quick ? 3000 : 30000;
	uint64_t *ns = calloc(n, sizeof(*ns));
	int err = ns ? 0 : -ENOMEM;

	bench_section("Latency: one request in flight");
	if (!err)
		err = service_latency(env, ns, n);
	if (!err)
		err = pingpong(ns, n);
	if (!err)
		bench_put("ratio_ack_p99_vs_pingpong_p99",
			  bench_get("report_ack_p99_us") / bench_get("pingpong_p99_us"), "x",
			  "report ack p99 / ping-pong p99");
	free(ns);
	return err;
}

/* --- a large guest -------------------------------------------------------------------------- */

#define LARGE_SLOTS 16

static int large_run(const struct bench_env *env, const struct pt_reg_slot *s,
		     struct bench_round *r, struct bench_run *run, uint64_t *rss)
{
	uint64_t rss0 = 0, rss1 = 0;
	struct bench_conn c;
	pid_t holder = 0;
	int err = bench_holders_spawn(&holder, 1);

	if (!err)
		err = conn_open(env, &c);
	if (err) {
		bench_holders_kill(&holder, 1);
		return err;
	}
	bench_proc_rss(env->svc, &rss0);
	err = bench_register(&c, holder, s, LARGE_SLOTS);
	if (!err)
		err = bench_run_rounds(&c, r, env->quick ? 1 : 3, 0, NULL, NULL, run);
	bench_proc_rss(env->svc, &rss1);
	*rss = rss1 > rss0 ? rss1 - rss0 : 0;
	if (!err)
		err = check_errors(&c, "large guest");
	bench_conn_close(&c);
	bench_holders_kill(&holder, 1);
	return err;
}

int bench_large_guest(const struct bench_env *env)
{
	struct pt_reg_slot s[LARGE_SLOTS];
	struct bench_round r[2];
	struct bench_run run;
	uint64_t rss = 0, bytes;
	double gib, pages;
	int err;

	bench_section("Large guest: 16 sparse memslots of 64 GiB (1 TiB), 4 MiB hints");
	for (int i = 0; i < LARGE_SLOTS; i++)
		s[i] = (struct pt_reg_slot){ 4 * GIB + i * 128 * GIB, 64 * GIB, i + 1, 0 };
	bytes = slots_bytes(s, LARGE_SLOTS);
	gib = (double)bytes / GIB;
	pages = (double)bytes / PAGE;
	err = build_rounds(r, s, LARGE_SLOTS, 4 * MIB);
	if (!err)
		err = large_run(env, s, r, &run, &rss);
	free_rounds(r);
	if (err)
		return err;
	bench_put("large_guest_gib", gib, "GiB", "guest size");
	bench_put("large_round_ms", run.ns / 1e6 / run.rounds, "ms",
		  "one round: ARM, HINT all, STOP, QUERY");
	bench_put("large_gib_validated_per_s", per_s(run.rounds, run.ns) * gib, "GiB/s",
		  "guest validated");
	bench_put("mem_rss_bytes_per_gib", rss / gib, "B/GiB", "service RSS growth per guest GiB");
	bench_put("mem_rss_bits_per_page", rss * 8.0 / pages, "bits",
		  "  as bits per guest page (hinted bitmap)");
	bench_put("mem_log_bits_per_page", 1, "bits",
		  "write log (BPF array, preallocated by --log-mb)");
	bench_put("mem_bits_per_page", rss * 8.0 / pages + 1, "bits",
		  "bits per guest page: RSS growth + write log");
	bench_put("mem_bits_per_page_theoretical", 2, "bits",
		  "theoretical: write log + hinted bitmap");
	return 0;
}

/* --- 64 devices at once --------------------------------------------------------------------- */

#define NDEV 64

struct dev {
	pthread_t th;
	const struct bench_env *env;
	const struct bench_round *rounds; /* NULL: REPORTs of @ranges, one in flight */
	const struct pt_range *ranges;
	size_t nranges;
	const struct pt_reg_slot *slots;
	pthread_barrier_t *bar;
	pid_t pid;
	int fd; /* >= 0: an epoll loop's socketpair end (no REGISTER); -1: the service */
	struct bench_run run;
	int err;
};

static int dev_open(struct dev *d, struct bench_conn *c)
{
	int err;

	if (d->fd < 0)
		return conn_open(d->env, c);
	err = bench_conn_init(c, d->fd, false);
	if (err)
		close(d->fd);
	d->fd = -1;
	return err;
}

/*
 * Free page reporting as Linux drives it: REPORTs of 32 ranges, each waiting for its ACK
 * before the next (the guest's reporting queue holds one batch), until @max_ns (or @max
 * reports). Small frames with a reply each: where a loop's syscalls count.
 */
static int dev_reports(struct dev *d, int fd, uint64_t max, uint64_t max_ns)
{
	uint8_t req[PT_HDR_SIZE + sizeof(struct pt_report) + 32 * sizeof(struct pt_range)];
	uint8_t reply[512];
	uint64_t t0 = bench_now_ns(), i;

	for (i = 0; (!max || i < max) && (!max_ns || bench_now_ns() - t0 < max_ns); i++) {
		size_t len = pt_build_report(req, sizeof(req), PT_MSG_REPORT, i,
					     d->ranges + (i * 32) % d->nranges, 32);
		int type = rpc(fd, req, len, reply, sizeof(reply));

		if (type != PT_MSG_ACK)
			return type < 0 ? type : -EPROTO;
	}
	d->run.records += i * 32;
	d->run.rounds += i;
	return 0;
}

static int dev_work(struct dev *d, struct bench_conn *c, uint64_t max, uint64_t max_ns)
{
	if (d->rounds)
		return bench_run_rounds(c, d->rounds, max, max_ns, NULL, NULL, &d->run);
	bench_set_nonblock(c->fd, false);
	return dev_reports(d, c->fd, max, max_ns);
}

static void *dev_main(void *arg)
{
	struct dev *d = arg;
	bool svc = d->fd < 0;
	struct bench_conn c;
	int err = dev_open(d, &c);
	bool opened = !err;

	if (!err && svc)
		err = bench_register(&c, d->pid, d->slots, 1);
	/* Untimed, as for one device: two rounds, or one pass of REPORTs over the whole VM, so
	 * that the bitmaps of all 64 VMs are faulted in before the clock starts. */
	if (!err)
		err = dev_work(d, &c, d->rounds ? 2 : d->nranges / 32, 0);
	d->run = (struct bench_run){ 0 };
	pthread_barrier_wait(d->bar);
	if (!err)
		err = dev_work(d, &c, 0, d->env->run_ns / REPS);
	if (!err)
		err = check_errors(&c, "device");
	if (opened)
		bench_conn_close(&c);
	d->err = err;
	return NULL;
}

static const struct pt_reg_slot multi_slot = { 4 * GIB, 16 * GIB, 1, 0 };

/* What each of the 64 devices sends: hinting rounds of 4 MiB ranges, or 2 MiB REPORTs. */
struct load {
	const char *pfx;
	bool reports;
	struct bench_round rounds[2];
	struct pt_range *ranges;
	size_t nranges;
};

/* @fds NULL: the devices connect to the service; else to an epoll loop, @peer its pid. */
static int run_devices(const struct bench_env *env, const struct load *l, struct dev *d,
		       const pid_t *pids, const int *fds, pid_t peer, uint64_t *ns, uint64_t *cpu)
{
	pid_t who = fds ? peer : env->svc;
	pthread_barrier_t bar;
	uint64_t t0, cpu0 = 0, cpu1 = 0;
	int err = 0, started = 0;

	pthread_barrier_init(&bar, NULL, NDEV + 1);
	for (int i = 0; i < NDEV; i++) {
		d[i] = (struct dev){ .env = env,
				     .rounds = l->reports ? NULL : l->rounds,
				     .ranges = l->ranges,
				     .nranges = l->nranges,
				     .slots = &multi_slot,
				     .bar = &bar,
				     .pid = pids[i],
				     .fd = fds ? fds[i] : -1 };
		if (pthread_create(&d[i].th, NULL, dev_main, &d[i]))
			break;
		started++;
	}
	if (started < NDEV)
		abort(); /* the barrier would never open */
	pthread_barrier_wait(&bar);
	t0 = bench_now_ns();
	bench_proc_cpu_ns(who, &cpu0);
	for (int i = 0; i < NDEV; i++) {
		pthread_join(d[i].th, NULL);
		err = err ? err : d[i].err;
	}
	*ns = bench_now_ns() - t0;
	bench_proc_cpu_ns(who, &cpu1);
	*cpu = cpu1 - cpu0;
	pthread_barrier_destroy(&bar);
	return err;
}

struct multi {
	uint64_t ns, cpu, records, rounds;
	double best; /* records/s of the best run */
};

static void multi_add(struct multi *m, const struct dev *d, uint64_t ns, uint64_t cpu)
{
	uint64_t records = 0;

	for (int i = 0; i < NDEV; i++) {
		records += d[i].run.records;
		m->rounds += d[i].run.rounds;
	}
	m->records += records;
	m->ns += ns;
	m->cpu += cpu;
	if (per_s(records, ns) > m->best)
		m->best = per_s(records, ns);
}

/* The same 64 devices against one epoll loop serving 64 connections. */
static int multi_epoll(const struct bench_env *env, const struct load *l, struct dev *d,
		       const pid_t *pids, struct multi *m)
{
	uint64_t ns = 0, cpu = 0;
	int fds[NDEV];
	pid_t peer;
	int err = bench_fork_epoll_multi(fds, NDEV, &peer, &multi_slot, 1, pids);

	if (err)
		return err;
	err = run_devices(env, l, d, pids, fds, peer, &ns, &cpu);
	bench_child_reap(-1, peer);
	if (!err)
		multi_add(m, d, ns, cpu);
	return err;
}

static int multi_service(const struct bench_env *env, const struct load *l, struct dev *d,
			 const pid_t *pids, struct multi *m)
{
	uint64_t ns = 0, cpu = 0;
	int err = run_devices(env, l, d, pids, NULL, 0, &ns, &cpu);

	if (!err)
		multi_add(m, d, ns, cpu);
	return err;
}

static void multi_put(const struct load *l, const struct multi *a, const struct multi *c)
{
	bench_put(kfmt(l->pfx, "devices"), NDEV, "", "devices");
	bench_put(kfmt(l->pfx, "records_per_s"), a->best, "rec/s",
		  l->reports ? "(a) REPORT records, all devices" : "(a) hint records, all devices");
	if (l->reports)
		bench_put(kfmt(l->pfx, "reports_per_s"), a->best / 32, "/s",
			  "(a) REPORTs acked, all devices");
	else
		bench_put(kfmt(l->pfx, "gib_validated_per_s"), a->best / 4096 * 16, "GiB/s",
			  "(a) guest validated");
	bench_put(kfmt(l->pfx, "cpu_ns_per_record"), (double)a->cpu / a->records, "ns",
		  "(a) service CPU per record");
	bench_put(kfmt(l->pfx, "epoll_records_per_s"), c->best, "rec/s",
		  "(c) one epoll loop, 64 connections, same cmdstate");
	bench_put(kfmt(l->pfx, "epoll_cpu_ns_per_record"), (double)c->cpu / c->records, "ns",
		  "(c) epoll loop CPU per record");
	bench_put(kfmt(l->pfx, "cpu_ratio_vs_epoll"),
		  ((double)c->cpu / c->records) / ((double)a->cpu / a->records), "x",
		  "a/c on CPU time: epoll CPU / service CPU per record");
	bench_put(kfmt(l->pfx, "ratio_vs_epoll"), a->best / c->best, "x", "a/c");
}

static int load_build(struct load *l)
{
	if (!l->reports)
		return build_rounds(l->rounds, &multi_slot, 1, 4 * MIB);
	l->ranges = bench_ranges(&multi_slot, 1, 2 * MIB, &l->nranges);
	if (!l->ranges)
		return -ENOMEM;
	l->nranges -= l->nranges % 32;
	return 0;
}

static void load_free(struct load *l)
{
	if (!l->reports)
		free_rounds(l->rounds);
	free(l->ranges);
}

static int many_devices(const struct bench_env *env, struct load *l)
{
	struct dev *d = calloc(NDEV, sizeof(*d));
	struct multi a = { 0 }, c = { 0 };
	pid_t pids[NDEV] = { 0 };
	int err = d ? bench_holders_spawn(pids, NDEV) : -ENOMEM;

	if (!err)
		err = load_build(l);
	for (int i = 0; !err && i < REPS; i++) {
		err = multi_service(env, l, d, pids, &a);
		if (!err)
			err = multi_epoll(env, l, d, pids, &c);
	}
	bench_holders_kill(pids, NDEV);
	load_free(l);
	free(d);
	if (!err)
		multi_put(l, &a, &c);
	return err;
}

int bench_many_devices(const struct bench_env *env)
{
	struct load l = { .pfx = "multi" };

	bench_section("64 devices at once: 64 connections, 64 VMs of 16 GiB, 4 MiB hints");
	return many_devices(env, &l);
}

int bench_many_reporters(const struct bench_env *env)
{
	struct load l = { .pfx = "multi_report", .reports = true };

	bench_section("64 devices reporting: 64 VMs, REPORT 32 x 2 MiB each, one in flight");
	return many_devices(env, &l);
}

/* --- a real guest writing while it is hinted ------------------------------------------------ */

#define LIVE_GPA    (4 * GIB)
#define LIVE_SIZE   (64 * GIB)
#define LIVE_WINDOW 8192 /* pages the guest writes into: 32 MiB */
#define LIVE_BATCH  64

struct live {
	struct minivm *vm;
	pthread_t th;
	bool stop, dead;
	uint64_t harvests, writes;
	int err;
};

/* The guest writes a batch of pseudo-random pages; the VMM then syncs (harvest). */
static int write_batch(struct minivm *vm, uint64_t *x)
{
	uint64_t gpas[LIVE_BATCH];
	int err;

	for (int i = 0; i < LIVE_BATCH; i++) {
		*x ^= *x << 13;
		*x ^= *x >> 7;
		*x ^= *x << 17;
		gpas[i] = LIVE_GPA + (*x % LIVE_WINDOW) * PAGE;
	}
	err = minivm_guest_write(vm, gpas, LIVE_BATCH, *x);
	while (err == -ENOSPC) {
		err = minivm_sync(vm);
		if (!err)
			err = minivm_resume(vm);
	}
	return err ? err : minivm_sync(vm);
}

static void *writer_main(void *arg)
{
	struct live *l = arg;
	uint64_t x = 0x9e3779b97f4a7c15ull;

	while (!__atomic_load_n(&l->stop, __ATOMIC_ACQUIRE)) {
		l->err = write_batch(l->vm, &x);
		if (l->err)
			break;
		__atomic_add_fetch(&l->writes, LIVE_BATCH, __ATOMIC_RELAXED);
		__atomic_add_fetch(&l->harvests, 1, __ATOMIC_RELEASE);
	}
	__atomic_store_n(&l->dead, true, __ATOMIC_RELEASE);
	return NULL;
}

/* The sync after ARM: a whole harvest that began after ARM's ACK. */
static int wait_harvest(void *arg)
{
	struct live *l = arg;
	uint64_t h0 = __atomic_load_n(&l->harvests, __ATOMIC_ACQUIRE);
	uint64_t t0 = bench_now_ns();

	while (__atomic_load_n(&l->harvests, __ATOMIC_ACQUIRE) < h0 + 2) {
		if (__atomic_load_n(&l->dead, __ATOMIC_ACQUIRE))
			return l->err ? l->err : -EIO;
		if (bench_now_ns() - t0 > 10000000000ull)
			return -ETIMEDOUT;
		sched_yield();
	}
	return 0;
}

static int harvest_now(void *arg)
{
	struct live *l = arg;

	return minivm_sync(l->vm);
}

static int live_vm(struct live *l, struct pt_reg_slot *s)
{
	struct minivm_opts o = { .dirty = MINIVM_DIRTY_RING, .nslots = 1, .ring_entries = 4096 };
	int err = minivm_supported(MINIVM_DIRTY_RING);

	o.slots[0] = (struct minivm_slot){ LIVE_GPA, LIVE_SIZE, 1 };
	if (!err)
		err = minivm_create(&l->vm, &o);
	if (!err)
		err = minivm_setup_memory(l->vm);
	if (err)
		return err;
	s[0] = (struct pt_reg_slot){ LIVE_GPA, LIVE_SIZE, 1, PT_REG_SLOT_LOGGED };
	minivm_system_range(l->vm, &s[1].gpa, &s[1].size);
	s[1].id = 0;
	s[1].flags = PT_REG_SLOT_LOGGED; /* minivm logs every slot, its own included */
	return minivm_sync(l->vm);
}

static int live_rounds(const struct bench_env *env, struct live *l, struct bench_conn *c,
		       const struct bench_round *r, struct bench_run *run)
{
	int err;

	if (pthread_create(&l->th, NULL, writer_main, l))
		return -EAGAIN;
	err = bench_run_rounds(c, r, 0, env->run_ns, wait_harvest, l, run);
	__atomic_store_n(&l->stop, true, __ATOMIC_RELEASE);
	pthread_join(l->th, NULL);
	if (!err)
		err = l->err;
	if (!err)
		err = check_errors(c, "live guest");
	if (err)
		return err;
	bench_put("live_records_per_s", per_s(run->records, run->ns), "rec/s",
		  "hint records while the guest writes");
	bench_put("live_guest_writes_per_s", per_s(l->writes, run->ns), "pages/s",
		  "guest page writes (each one a ring push)");
	bench_put("live_rounds", run->rounds, "", "rounds");
	bench_put("live_sure_verdicts", run->sure, "", "verdicts that were sure");
	bench_put("live_kept_written_per_round", (double)run->kept_written / run->rounds, "pages",
		  "hinted pages kept as written, per round");
	return 0;
}

/* A fully hinted 64 GiB guest, guest stopped: QUERY round trips. */
static int live_verdict(const struct bench_env *env, struct live *l, struct bench_conn *c,
			const struct bench_round *r, uint64_t done)
{
	/* Continue the alternation: the last round's ID may not be armed again yet. */
	struct bench_round next[2] = { r[done & 1], r[(done + 1) & 1] };
	unsigned n = env->quick ? 10 : 50, sure = 0;
	uint64_t ns[50], gpa = LIVE_GPA;
	struct bench_run run;
	int err;

	/*
	 * KVM_RESET_DIRTY_RINGS is the sync the service watches for, and minivm (like most
	 * VMMs) issues it only when the ring holds entries: the guest writes a page before ARM
	 * so that the harvest after ARM resets it.
	 */
	err = minivm_guest_write(l->vm, &gpa, 1, 1);
	if (!err)
		err = bench_run_rounds(c, next, 1, 0, harvest_now, l, &run);

	if (!err)
		err = time_queries(c, done & 1 ? 3 : 2, n, ns, &sure);
	if (!err)
		err = check_errors(c, "64 GiB verdict");
	if (err)
		return err;
	bench_sort_u64(ns, n);
	bench_put("verdict_64g_ms_p50", bench_percentile(ns, n, 50) / 1e6, "ms",
		  "64 GiB verdict (QUERY round trip), p50");
	bench_put("verdict_64g_ms_max", ns[n - 1] / 1e6, "ms", "64 GiB verdict, max");
	bench_put("verdict_64g_free_gib", (double)c->verdict.free * PAGE / GIB, "GiB",
		  "64 GiB verdict: free (provably untouched)");
	bench_put("verdict_64g_sure", sure, "", "64 GiB verdicts that were sure");
	bench_note("verdict_64g_queries", "64 GiB verdicts", "%u of %u sure", sure, n);
	return 0;
}

int bench_live_guest(const struct bench_env *env)
{
	struct live l = { 0 };
	struct pt_reg_slot s[2];
	struct bench_round r[2] = { 0 };
	struct bench_conn c;
	struct bench_run run;
	int err;

	bench_section("Real guest (minivm, dirty ring, 64 GiB slot) writing during the hint load");
	if (env->no_kvm) {
		bench_skip("live", env->no_kvm);
		return 0;
	}
	err = live_vm(&l, s);
	if (!err)
		err = build_rounds(r, s, 1, 4 * MIB);
	if (!err)
		err = conn_open(env, &c);
	if (err)
		goto out;
	err = bench_register(&c, getpid(), s, 2);
	if (!err)
		err = live_rounds(env, &l, &c, r, &run);
	if (!err)
		err = live_verdict(env, &l, &c, r, run.rounds);
	bench_conn_close(&c);
out:
	free_rounds(r);
	minivm_destroy(l.vm);
	return err;
}
