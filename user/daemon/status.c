// SPDX-License-Identifier: GPL-2.0
#include <dirent.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "shared/log.h"
#include "status.h"
#include "top.h"

const char *pt_cmd_state_str(enum pt_cmd_state s)
{
	static const char *const n[] = { "idle", "active", "stopped", "done" };

	return (unsigned)s < 4 ? n[s] : "?";
}

static const char *mode_str(enum pt_dirty_mode m)
{
	return m == PT_TRACK_UFFD ? "uffd" : m == PT_DIRTY_RING ? "dirty-ring" : "bitmap";
}

static struct pt_vm_stats events(struct pt_tracker *t, uint32_t vm)
{
	struct pt_vm_stats ev;

	if (pt_vm_stats_get(t, vm, &ev))
		memset(&ev, 0, sizeof(ev));
	return ev;
}

/*
 * The dirty rate of each VM: pages first written since ARM per second, from the written-page
 * counts of successive samples (pt_dirty_rate()). Indexed by VM; `t` tells which tracker a
 * sample came from (tests run several services in one process).
 *
 * Counting reads a VM's whole log region on the event loop. A tick samples VMs in turn until
 * it has read RATE_WORDS_PER_TICK words (at least one VM), so the pause stays about a
 * millisecond however many guests the host has (a full pass over 1 TiB of guests reads 32 MiB),
 * longer only for one VM above 256 GiB, counted whole; a VM not reached keeps its last sample
 * and that sample's time.
 */
#define RATE_WORDS_PER_TICK (1ull << 20) /* 8 MiB of log: 256 GiB of guest */

struct vm_rate {
	const struct pt_tracker *t;
	struct pt_rate_sample s;
	double rate; /* < 0: not known yet */
};
static struct vm_rate rates[PT_MAX_VMS];
static uint64_t rates_ms;  /* when the status was written: status.json's "time_ms" */
static uint32_t rate_next; /* the VM index the next tick's sampling starts at */

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Pages whose bit is set in the VM's log region: written since ARM. */
static uint64_t written_pages(struct pt_tracker *t, const struct pt_vmctx *c)
{
	uint64_t n = 0;

	for (uint64_t w = 0; w < c->words; w++)
		n += __builtin_popcountll(pt_vm_log_word(t, c->vm, w));
	return n;
}

static void sample_vm(struct pt_tracker *t, const struct pt_vmctx *c, uint64_t t_ms)
{
	struct vm_rate *r = &rates[c->vm];
	struct pt_rate_sample cur;

	/* The epoch first: an ARM in between then looks like a log that shrank. */
	cur.t_ms = t_ms;
	cur.pid = c->pid;
	cur.epoch = __atomic_load_n(&pt_vm(t, c->vm)->epoch, __ATOMIC_ACQUIRE);
	cur.written = written_pages(t, c);
	r->rate = r->t == t ? pt_dirty_rate(&r->s, &cur) : -1;
	r->t = t;
	r->s = cur;
}

unsigned pt_status_sample(struct pt_tracker *t, struct pt_vmctx *const *vms, uint64_t t_ms,
			  uint64_t budget_words)
{
	uint64_t read = 0;
	unsigned n = 0;

	for (uint32_t k = 0; k < PT_MAX_VMS && (!n || read < budget_words); k++) {
		uint32_t i = (rate_next + k) % PT_MAX_VMS;
		const struct pt_vmctx *c = vms[i];

		if (!c || c->vm >= PT_MAX_VMS)
			continue;
		sample_vm(t, c, t_ms);
		read += c->words;
		n++;
		rate_next = (i + 1) % PT_MAX_VMS;
	}
	return n;
}

bool pt_status_written(const struct pt_tracker *t, const struct pt_vmctx *c, uint64_t *written,
		       uint64_t *t_ms)
{
	const struct vm_rate *r;

	if (c->vm >= PT_MAX_VMS)
		return false;
	r = &rates[c->vm];
	if (r->t != t || r->s.pid != c->pid || !r->s.t_ms)
		return false;
	*written = r->s.written;
	*t_ms = r->s.t_ms;
	return true;
}

/* A VM no tick has sampled yet (just registered, or the ticks' budget has not reached it)
 * shows null: a number would be another VM's, or made up. */
static void json_rate(FILE *f, struct pt_tracker *t, const struct pt_vmctx *c)
{
	uint64_t written, t_ms;
	bool known = pt_status_written(t, c, &written, &t_ms);

	if (known)
		fprintf(f, ", \"written_pages\": %llu, \"written_ms\": %llu, \"dirty_rate\": ",
			(unsigned long long)written, (unsigned long long)t_ms);
	else
		fprintf(f, ", \"written_pages\": null, \"written_ms\": null, \"dirty_rate\": ");
	if (!known || rates[c->vm].rate < 0)
		fprintf(f, "null");
	else
		fprintf(f, "%.1f", rates[c->vm].rate);
	fprintf(f,
		", \"last_cmd_id\": %u, \"last_hinted\": %llu, \"last_free\": %llu, "
		"\"last_kept\": %llu",
		c->last.cmd, (unsigned long long)c->last.hinted, (unsigned long long)c->last.free,
		(unsigned long long)c->last.kept);
}

static void json_vm(FILE *f, struct pt_tracker *t, const struct pt_vmctx *c, bool first)
{
	const struct pt_vm_state *st = pt_vm(t, c->vm);
	struct pt_vm_stats ev = events(t, c->vm);
	char why[128];

	fprintf(f,
		"%s\n    {\"vm\": %u, \"pid\": %u, \"mode\": \"%s\", \"mode_tracked\": %s, "
		"\"state\": \"%s\", \"cmd_id\": %u, \"epoch\": %llu, \"synced\": %s, "
		"\"doubt\": \"%s\", \"taint_reason\": %u, \"marks_saturated\": %s, "
		"\"ring_writes\": %llu, "
		"\"fault_writes\": %llu, \"lost_events\": %llu, \"syncs\": %llu, "
		"\"syncs_incomplete\": %llu, \"hint_batches\": %llu, \"hinted_pages\": %llu, "
		"\"stale_pages\": %llu, \"queries\": %llu, \"confirmed_free\": %llu, "
		"\"kept_written\": %llu, \"kept_unsure\": %llu, \"reported_pages\": %llu, "
		"\"reclaimed_pages\": %llu",
		first ? "" : ",", c->vm, c->pid, mode_str(c->mode),
		c->mode_tracked ? "true" : "false", pt_cmd_state_str(c->state), c->cur,
		(unsigned long long)st->epoch, st->sync_epoch == st->epoch ? "true" : "false",
		pt_why_str(pt_epoch_doubt((struct pt_vmctx *)c), why, sizeof(why)),
		pt_epoch_tainted(st, st->epoch) ? st->taint_reason : 0,
		pt_vm_marks_saturated(st) ? "true" : "false", (unsigned long long)ev.ring_writes,
		(unsigned long long)ev.fault_writes, (unsigned long long)st->lost,
		(unsigned long long)st->syncs, (unsigned long long)st->syncs_incomplete,
		(unsigned long long)c->n.hint_batches, (unsigned long long)c->n.hinted_pages,
		(unsigned long long)c->n.stale_pages, (unsigned long long)c->n.queries,
		(unsigned long long)c->n.confirmed_free, (unsigned long long)c->n.kept_written,
		(unsigned long long)c->n.kept_unsure, (unsigned long long)c->n.reported_pages,
		(unsigned long long)c->n.reclaimed_pages);
	json_rate(f, t, c);
	fputc('}', f);
}

static FILE *open_tmp(const char *path, char *tmp, size_t len)
{
	snprintf(tmp, len, "%s.tmp", path);
	return fopen(tmp, "w");
}

static void commit_tmp(FILE *f, const char *tmp, const char *path)
{
	if (fclose(f) || rename(tmp, path))
		pt_warn("cannot write %s: %s", path, strerror(errno));
}

/* Whose writes the uffd canary saw: "guest" (a KVM guest and so the host's path too), "host"
 * (no KVM here: only the VMM's own writes could be checked), or "none". */
static const char *uffd_writes(const struct pt_coverage *cov)
{
	if (cov->uffd != PT_COV_TRACKED)
		return "none";
	return cov->uffd_host_only ? "host" : "guest";
}

static void write_json(const char *path, const struct pt_config *cfg, struct pt_tracker *t,
		       const struct pt_coverage *cov, struct pt_vmctx *const *vms,
		       const struct pt_server_stats *st, const struct pt_status_counters *n)
{
	char tmp[320], c[400];
	bool first = true;
	FILE *f = open_tmp(path, tmp, sizeof(tmp));

	if (!f)
		return;
	fprintf(f,
		"{\"pid\": %d, \"time\": %lld, \"time_ms\": %llu, \"socket\": \"%s\", \"pin_dir\": "
		"\"%s\", "
		"\"tdp\": %s, \"programs\": \"%s\", \"maps_reused\": %s,\n \"coverage\": "
		"{\"dirty-ring\": \"%s\", \"bitmap\": \"%s\", \"uffd-wp\": \"%s\", "
		"\"uffd-wp-writes\": \"%s\", \"text\": \"%s\"},\n \"server\": "
		"{\"connections\": %llu, \"accepted\": %llu, \"frames\": %llu, \"errors\": %llu, "
		"\"bytes_in\": %llu, \"bytes_out\": %llu, \"bad_frames\": %llu, "
		"\"backpressure_stalls\": %llu, \"hint_records\": %llu, \"verdicts\": %llu, "
		"\"turns_yielded\": %llu, \"max_turn_us\": %llu, \"tick_max_turn_us\": %llu, "
		"\"max_turn_cpu_us\": %llu, \"tick_max_turn_cpu_us\": %llu, "
		"\"timed_out\": %llu, "
		"\"evicted\": %llu, \"rejected\": %llu, \"refused_nofd\": %llu, "
		"\"outq_bytes\": %llu},\n \"vms\": [",
		getpid(), (long long)time(NULL), (unsigned long long)rates_ms, cfg->socket,
		t->pin_dir, t->tdp ? "true" : "false", t->progs, t->reused_maps ? "true" : "false",
		pt_cov_name(cov->mode[PT_DIRTY_RING]), pt_cov_name(cov->mode[PT_DIRTY_BITMAP]),
		pt_cov_name(cov->uffd), uffd_writes(cov), pt_coverage_str(cov, c, sizeof(c)),
		(unsigned long long)st->conns_open, (unsigned long long)st->conns_accepted,
		(unsigned long long)n->frames, (unsigned long long)n->errors,
		(unsigned long long)st->bytes_in, (unsigned long long)st->bytes_out,
		(unsigned long long)st->bad_frames, (unsigned long long)st->backpressure_stalls,
		(unsigned long long)n->hint_records, (unsigned long long)n->verdicts,
		(unsigned long long)st->turns_yielded, (unsigned long long)st->max_turn_us,
		(unsigned long long)st->tick_max_turn_us, (unsigned long long)st->max_turn_cpu_us,
		(unsigned long long)st->tick_max_turn_cpu_us,
		(unsigned long long)st->conns_timed_out, (unsigned long long)st->conns_evicted,
		(unsigned long long)st->conns_rejected, (unsigned long long)st->conns_refused_nofd,
		(unsigned long long)st->outq_bytes);
	for (uint32_t i = 0; i < PT_MAX_VMS; i++) {
		if (vms[i]) {
			json_vm(f, t, vms[i], first);
			first = false;
		}
	}
	fprintf(f,
		"],\n \"registrations\": {\"takeovers\": %llu, \"resumes\": %llu, "
		"\"refused_perm\": %llu, \"refused_quota\": %llu}}\n",
		(unsigned long long)n->takeovers, (unsigned long long)n->resumes,
		(unsigned long long)n->refused_perm, (unsigned long long)n->refused_quota);
	commit_tmp(f, tmp, path);
}

static void prom_vm(FILE *f, struct pt_tracker *t, const struct pt_vmctx *c)
{
	const struct pt_vm_state *st = pt_vm(t, c->vm);
	struct pt_vm_stats ev = events(t, c->vm);
	uint64_t written, t_ms;
	const struct {
		const char *name;
		unsigned long long v;
	} m[] = {
		{ "pagetrack_vm_epoch", st->epoch },
		{ "pagetrack_vm_ring_writes_total", ev.ring_writes },
		{ "pagetrack_vm_fault_writes_total", ev.fault_writes },
		{ "pagetrack_vm_lost_events_total", st->lost },
		{ "pagetrack_vm_syncs_total", st->syncs },
		{ "pagetrack_vm_syncs_incomplete_total", st->syncs_incomplete },
		{ "pagetrack_vm_hinted_pages_total", c->n.hinted_pages },
		{ "pagetrack_vm_stale_pages_total", c->n.stale_pages },
		{ "pagetrack_vm_confirmed_free_pages_total", c->n.confirmed_free },
		{ "pagetrack_vm_kept_written_pages_total", c->n.kept_written },
		{ "pagetrack_vm_kept_unsure_pages_total", c->n.kept_unsure },
		{ "pagetrack_vm_tainted", pt_epoch_tainted(st, st->epoch) },
		{ "pagetrack_vm_marks_saturated", pt_vm_marks_saturated(st) },
		{ "pagetrack_vm_mode_tracked", c->mode_tracked },
	};

	for (size_t i = 0; i < sizeof(m) / sizeof(m[0]); i++)
		fprintf(f, "%s{vm=\"%u\",pid=\"%u\",mode=\"%s\"} %llu\n", m[i].name, c->vm, c->pid,
			mode_str(c->mode), m[i].v);
	if (!pt_status_written(t, c, &written, &t_ms))
		return; /* not sampled yet: no figure rather than another VM's */
	fprintf(f, "pagetrack_vm_written_pages{vm=\"%u\",pid=\"%u\",mode=\"%s\"} %llu\n", c->vm,
		c->pid, mode_str(c->mode), (unsigned long long)written);
	if (rates[c->vm].rate >= 0)
		fprintf(f,
			"pagetrack_vm_dirty_rate_pages_per_second{vm=\"%u\",pid=\"%u\",mode=\"%s\"}"
			" "
			"%.1f\n",
			c->vm, c->pid, mode_str(c->mode), rates[c->vm].rate);
}

/* What the limits against hostile or broken devices did (docs/OPERATIONS.md section 2.1). */
static void prom_limits(FILE *f, const struct pt_server_stats *st)
{
	static const struct {
		const char *name, *type;
		size_t off;
	} m[] = {
		{ "pagetrack_conns_timed_out_total", "counter",
		  offsetof(struct pt_server_stats, conns_timed_out) },
		{ "pagetrack_conns_evicted_total", "counter",
		  offsetof(struct pt_server_stats, conns_evicted) },
		{ "pagetrack_conns_rejected_total", "counter",
		  offsetof(struct pt_server_stats, conns_rejected) },
		{ "pagetrack_conns_refused_nofd_total", "counter",
		  offsetof(struct pt_server_stats, conns_refused_nofd) },
		{ "pagetrack_turns_yielded_total", "counter",
		  offsetof(struct pt_server_stats, turns_yielded) },
		{ "pagetrack_output_queued_bytes", "gauge",
		  offsetof(struct pt_server_stats, outq_bytes) },
		{ "pagetrack_loop_turn_max_seconds", "gauge",
		  offsetof(struct pt_server_stats, tick_max_turn_us) },
		{ "pagetrack_loop_turn_max_cpu_seconds", "gauge",
		  offsetof(struct pt_server_stats, tick_max_turn_cpu_us) },
	};

	for (size_t i = 0; i < sizeof(m) / sizeof(m[0]); i++) {
		uint64_t v;

		memcpy(&v, (const char *)st + m[i].off, sizeof(v));
		fprintf(f, "# TYPE %s %s\n", m[i].name, m[i].type);
		if (strstr(m[i].name, "_seconds"))
			fprintf(f, "%s %.6f\n", m[i].name, v / 1e6);
		else
			fprintf(f, "%s %llu\n", m[i].name, (unsigned long long)v);
	}
}

static void write_prom(const char *path, const struct pt_coverage *cov, struct pt_tracker *t,
		       struct pt_vmctx *const *vms, const struct pt_server_stats *st,
		       const struct pt_status_counters *n)
{
	char tmp[320];
	unsigned nvms = 0;
	FILE *f = open_tmp(path, tmp, sizeof(tmp));

	if (!f)
		return;
	for (uint32_t i = 0; i < PT_MAX_VMS; i++)
		nvms += !!vms[i];
	fprintf(f,
		"# HELP pagetrack_coverage 1 if the canary saw the write log report every write in "
		"this mode (uffd-wp: without KVM, the host's own writes).\n# TYPE "
		"pagetrack_coverage gauge\n");
	fprintf(f, "pagetrack_coverage{mode=\"dirty-ring\"} %d\n",
		cov->mode[PT_DIRTY_RING] == PT_COV_TRACKED);
	fprintf(f, "pagetrack_coverage{mode=\"bitmap\"} %d\n",
		cov->mode[PT_DIRTY_BITMAP] == PT_COV_TRACKED);
	fprintf(f, "pagetrack_coverage{mode=\"uffd-wp\"} %d\n", cov->uffd == PT_COV_TRACKED);
	fprintf(f, "# TYPE pagetrack_vms gauge\npagetrack_vms %u\n", nvms);
	fprintf(f, "# TYPE pagetrack_connections gauge\npagetrack_connections %llu\n",
		(unsigned long long)st->conns_open);
	fprintf(f, "# TYPE pagetrack_frames_total counter\npagetrack_frames_total %llu\n",
		(unsigned long long)n->frames);
	fprintf(f, "# TYPE pagetrack_errors_total counter\npagetrack_errors_total %llu\n",
		(unsigned long long)n->errors);
	fprintf(f, "# TYPE pagetrack_bad_frames_total counter\npagetrack_bad_frames_total %llu\n",
		(unsigned long long)st->bad_frames);
	fprintf(f, "# TYPE pagetrack_takeovers_total counter\npagetrack_takeovers_total %llu\n",
		(unsigned long long)n->takeovers);
	fprintf(f, "# TYPE pagetrack_refused_total counter\n");
	fprintf(f, "pagetrack_refused_total{why=\"perm\"} %llu\n",
		(unsigned long long)n->refused_perm);
	fprintf(f, "pagetrack_refused_total{why=\"quota\"} %llu\n",
		(unsigned long long)n->refused_quota);
	prom_limits(f, st);
	for (uint32_t i = 0; i < PT_MAX_VMS; i++)
		if (vms[i])
			prom_vm(f, t, vms[i]);
	commit_tmp(f, tmp, path);
}

static void text_vm(FILE *f, struct pt_tracker *t, const struct pt_vmctx *c)
{
	const struct pt_vm_state *st = pt_vm(t, c->vm);
	struct pt_vm_stats ev = events(t, c->vm);
	char why[128];

	fprintf(f,
		"%-3u %-8u %-10s %-8s %-7s %-6u %-6llu %-10llu %-5llu %-10llu %-10llu %-8llu "
		"%-8llu  %s\n",
		c->vm, c->pid, mode_str(c->mode), c->mode_tracked ? "yes" : "NO",
		pt_cmd_state_str(c->state), c->cur, (unsigned long long)st->epoch,
		(unsigned long long)(ev.ring_writes + ev.fault_writes),
		(unsigned long long)st->lost, (unsigned long long)c->n.hinted_pages,
		(unsigned long long)c->n.confirmed_free, (unsigned long long)c->n.kept_written,
		(unsigned long long)c->n.kept_unsure,
		pt_why_str(pt_epoch_doubt((struct pt_vmctx *)c), why, sizeof(why)));
}

/* The same facts as status.json, laid out for a terminal (what `pagetrackd status` prints). */
static void write_text(const char *path, const struct pt_config *cfg, struct pt_tracker *t,
		       const struct pt_coverage *cov, struct pt_vmctx *const *vms,
		       const struct pt_server_stats *st, const struct pt_status_counters *n)
{
	char tmp[320], c[400];
	FILE *f = open_tmp(path, tmp, sizeof(tmp));
	unsigned nvms = 0;

	if (!f)
		return;
	for (uint32_t i = 0; i < PT_MAX_VMS; i++)
		nvms += !!vms[i];
	fprintf(f, "socket:   %s\ncoverage: %s\nprograms: %s (tdp %s, maps %s)\n", cfg->socket,
		pt_coverage_str(cov, c, sizeof(c)), t->progs, t->tdp ? "yes" : "no",
		t->reused_maps ? "reused from an earlier run" : "new");
	fprintf(f,
		"traffic:  %llu connections, %llu frames, %llu errors, %llu bad frames, "
		"%llu hint records, %llu verdicts\n\n",
		(unsigned long long)st->conns_open, (unsigned long long)n->frames,
		(unsigned long long)n->errors, (unsigned long long)st->bad_frames,
		(unsigned long long)n->hint_records, (unsigned long long)n->verdicts);
	fprintf(f, "%u VMs\n", nvms);
	if (nvms)
		fprintf(f,
			"%-3s %-8s %-10s %-8s %-7s %-6s %-6s %-10s %-5s %-10s %-10s %-8s %-8s  "
			"%s\n",
			"VM", "PID", "MODE", "TRACKED", "STATE", "CMD", "EPOCH", "WRITES", "LOST",
			"HINTED", "FREE", "KEPT-W", "KEPT-U", "DOUBT");
	for (uint32_t i = 0; i < PT_MAX_VMS; i++)
		if (vms[i])
			text_vm(f, t, vms[i]);
	commit_tmp(f, tmp, path);
}

void pt_status_write(const struct pt_config *cfg, struct pt_tracker *t,
		     const struct pt_coverage *cov, struct pt_vmctx *const *vms,
		     const struct pt_server_stats *st, const struct pt_status_counters *n)
{
	char path[300];

	rates_ms = now_ms();
	pt_status_sample(t, vms, rates_ms, RATE_WORDS_PER_TICK);
	snprintf(path, sizeof(path), "%s/status.json", cfg->run_dir);
	write_json(path, cfg, t, cov, vms, st, n);
	snprintf(path, sizeof(path), "%s/status.txt", cfg->run_dir);
	write_text(path, cfg, t, cov, vms, st, n);
	if (!strcmp(cfg->metrics, "-"))
		return;
	if (cfg->metrics[0])
		snprintf(path, sizeof(path), "%s", cfg->metrics);
	else
		snprintf(path, sizeof(path), "%s/metrics.prom", cfg->run_dir);
	write_prom(path, cov, t, vms, st, n);
}

static void show_pins(const char *dir)
{
	struct dirent *de;
	DIR *d = opendir(dir);
	int maps = 0, links = 0;

	if (!d) {
		printf("pins:     none under %s (%s)\n", dir, strerror(errno));
		return;
	}
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		if (!strncmp(de->d_name, "link_", 5))
			links++;
		else
			maps++;
	}
	closedir(d);
	printf("pins:     %s: %d maps, %d program links (tracking continues while linked)\n", dir,
	       maps, links);
}

int pt_status_show(const struct pt_config *cfg, int json)
{
	char path[300], line[4096];
	FILE *f;
	pid_t pid = 0;

	snprintf(path, sizeof(path), "%s/status.json", cfg->run_dir);
	f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "pagetrackd status: %s: %s (is the service running?)\n", path,
			strerror(errno));
		if (!json)
			show_pins(cfg->pin_dir);
		return -ENOENT;
	}
	if (json) {
		while (fgets(line, sizeof(line), f))
			fputs(line, stdout);
		fclose(f);
		return 0;
	}
	if (fscanf(f, "{\"pid\": %d", &pid) != 1)
		pid = 0;
	rewind(f);
	printf("service:  pid %d (%s)\n", pid,
	       pid > 0 && !kill(pid, 0) ? "running" : "NOT running");
	fclose(f);
	show_pins(cfg->pin_dir);
	snprintf(path, sizeof(path), "%s/status.txt", cfg->run_dir);
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		fputs(line, stdout);
	fclose(f);
	return 0;
}
