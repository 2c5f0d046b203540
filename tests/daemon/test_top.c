// SPDX-License-Identifier: GPL-2.0
/*
 * `pagetrackd top` without a service: the dirty rate on synthetic samples (steady writing,
 * ARM in between, a sample caught between ARM's clear and its epoch bump, another VM in the
 * same index, a clock that did not advance), status.json parsing, rates across two parsed
 * samples, the service's budgeted counting, and the view's size in an 80x24 terminal with more
 * VMs than fit.
 */
#include <stdlib.h>

#include "t.h"
#include "daemon/status.h"
#include "daemon/top.h"
#include "writelog/loader.h"

#define NEAR(a, b) ((a) > (b)-0.01 && (a) < (b) + 0.01)

static int rate_steady(void)
{
	struct pt_rate_sample a = { 10000, 42, 3, 1000 }, b = { 12000, 42, 3, 1500 };

	CHECK(NEAR(pt_dirty_rate(&a, &b), 250)); /* 500 pages in 2 s */
	b.written = 1000;
	CHECK(NEAR(pt_dirty_rate(&a, &b), 0));
	b.t_ms = 10250;
	b.written = 1100;
	CHECK(NEAR(pt_dirty_rate(&a, &b), 400)); /* 100 pages in 250 ms */
	return 0;
}

static int rate_after_arm(void)
{
	/* A new epoch: the log was cleared, everything in it was written within the interval. */
	struct pt_rate_sample a = { 10000, 42, 3, 5000 }, b = { 11000, 42, 4, 300 };

	CHECK(NEAR(pt_dirty_rate(&a, &b), 300));
	/* Same epoch but fewer pages: sampled between ARM's clear and its epoch bump. */
	b.epoch = 3;
	CHECK(NEAR(pt_dirty_rate(&a, &b), 300));
	return 0;
}

static int rate_unknown(void)
{
	struct pt_rate_sample none = { 0 }, a = { 10000, 42, 3, 10 }, b = { 11000, 42, 3, 20 };

	CHECK(pt_dirty_rate(&none, &b) < 0); /* first sample */
	b.pid = 43;
	CHECK(pt_dirty_rate(&a, &b) < 0); /* another VM took the index */
	b.pid = 42;
	b.t_ms = 10000;
	CHECK(pt_dirty_rate(&a, &b) < 0); /* the service did not tick in between */
	b.t_ms = 9000;
	CHECK(pt_dirty_rate(&a, &b) < 0); /* the clock went back */
	return 0;
}

/* A status.json as status.c writes it (abridged to what top reads, plus fields it skips). */
static void status_json_at(char *buf, size_t len, uint64_t t_ms, uint64_t w0, uint64_t w0_ms,
			   uint64_t w1, uint64_t epoch1)
{
	snprintf(
		buf, len,
		"{\"pid\": %d, \"time\": 1, \"time_ms\": %llu, \"socket\": \"/run/x.sock\", "
		"\"pin_dir\": \"/sys/fs/bpf/x\", \"tdp\": false, \"programs\": \"a b\", "
		"\"maps_reused\": false,\n \"coverage\": {\"dirty-ring\": \"tracked\", \"bitmap\": "
		"\"NOT tracked\", \"text\": \"dirty-ring: tracked; bitmap: NOT tracked (why)\"},\n "
		"\"server\": {\"connections\": 1, \"frames\": 5},\n \"vms\": [\n"
		"    {\"vm\": 0, \"pid\": 100, \"mode\": \"dirty-ring\", \"mode_tracked\": true, "
		"\"state\": \"active\", \"cmd_id\": 7, \"epoch\": 4, \"synced\": true, \"doubt\": "
		"\"none\", \"hinted_pages\": 9, \"written_pages\": %llu, \"written_ms\": %llu, "
		"\"dirty_rate\": null, "
		"\"last_cmd_id\": 6, \"last_hinted\": 16384, \"last_free\": 15360, \"last_kept\": "
		"1024},\n"
		"    {\"vm\": 5, \"pid\": 200, \"mode\": \"bitmap\", \"mode_tracked\": false, "
		"\"state\": \"idle\", \"cmd_id\": 0, \"epoch\": %llu, \"synced\": false, "
		"\"doubt\": "
		"\"untracked-mode\", \"written_pages\": %llu, \"written_ms\": %llu, "
		"\"dirty_rate\": 12.5, "
		"\"last_cmd_id\": 0, \"last_hinted\": 0, \"last_free\": 0, \"last_kept\": 0}],\n"
		" \"registrations\": {\"takeovers\": 0, \"resumes\": 0}}\n",
		getpid(), (unsigned long long)t_ms, (unsigned long long)w0,
		(unsigned long long)(w0_ms ? w0_ms : t_ms), (unsigned long long)epoch1,
		(unsigned long long)w1, (unsigned long long)t_ms);
}

static void status_json(char *buf, size_t len, uint64_t t_ms, uint64_t w0, uint64_t w1,
			uint64_t epoch1)
{
	status_json_at(buf, len, t_ms, w0, 0, w1, epoch1);
}

static struct pt_top_sample s1, s2;

static int parse_status(void)
{
	char buf[4096];

	status_json(buf, sizeof(buf), 5000, 800, 40, 1);
	CHECK(pt_top_parse(buf, &s1) == 0);
	CHECK(s1.pid == getpid() && s1.t_ms == 5000 && s1.nvms == 2);
	CHECK(!strcmp(s1.coverage, "dirty-ring: tracked; bitmap: NOT tracked (why)"));
	CHECK(s1.vms[0].vm == 0 && s1.vms[0].pid == 100 && !strcmp(s1.vms[0].mode, "dirty-ring"));
	CHECK(s1.vms[0].tracked && !strcmp(s1.vms[0].state, "active") && s1.vms[0].cmd == 7);
	CHECK(s1.vms[0].epoch == 4 && s1.vms[0].written == 800 && s1.vms[0].svc_rate < 0);
	CHECK(s1.vms[0].last_cmd == 6 && s1.vms[0].last_hinted == 16384);
	CHECK(s1.vms[0].last_free == 15360 && s1.vms[0].last_kept == 1024);
	CHECK(!strcmp(s1.vms[0].doubt, "none"));
	CHECK(s1.vms[1].vm == 5 && !s1.vms[1].tracked && NEAR(s1.vms[1].svc_rate, 12.5));
	CHECK(!strcmp(s1.vms[1].doubt, "untracked-mode") && !strcmp(s1.vms[1].state, "idle"));
	CHECK(pt_top_parse("{\"pid\": 1}", &s2) == -EINVAL);
	CHECK(pt_top_parse("", &s2) == -EINVAL);
	CHECK(pt_top_parse("{\"pid\": 1, \"vms\": [", &s2) == -EINVAL); /* no time_ms */
	return 0;
}

static int rates_across_samples(void)
{
	char buf[4096];

	status_json(buf, sizeof(buf), 5000, 800, 40, 1);
	CHECK(pt_top_parse(buf, &s1) == 0);
	pt_top_rates(NULL, &s1); /* first sample: the service's own rate where it has one */
	CHECK(s1.vms[0].rate < 0 && NEAR(s1.vms[1].rate, 12.5));
	status_json(buf, sizeof(buf), 7000, 1800, 10, 2); /* 2 s later; VM 5 re-armed */
	CHECK(pt_top_parse(buf, &s2) == 0);
	pt_top_rates(&s1, &s2);
	CHECK(NEAR(s2.vms[0].rate, 500)); /* 1000 pages in 2 s */
	CHECK(NEAR(s2.vms[1].rate, 5));	  /* 10 pages since the new ARM, in 2 s */
	return 0;
}

/*
 * The service counts some VMs per tick (status.c's budget): a VM whose count was not renewed
 * between two samples has no rate from them (not 0), and one renewed a tick late is divided by
 * its own interval, not the status file's.
 */
static int rates_use_each_count_time(void)
{
	char buf[4096];

	status_json(buf, sizeof(buf), 5000, 800, 40, 1);
	CHECK(pt_top_parse(buf, &s1) == 0 && s1.vms[0].written_ms == 5000);
	status_json_at(buf, sizeof(buf), 7000, 800, 5000, 40, 1); /* VM 0 not counted again */
	CHECK(pt_top_parse(buf, &s2) == 0 && s2.vms[0].written_ms == 5000);
	pt_top_rates(&s1, &s2);
	CHECKF(s2.vms[0].rate < 0, "rate %.1f from a count that did not change", s2.vms[0].rate);
	status_json_at(buf, sizeof(buf), 7000, 1800, 6000, 40, 1); /* counted at 6 s, shown at 7 */
	CHECK(pt_top_parse(buf, &s2) == 0);
	pt_top_rates(&s1, &s2);
	CHECK(NEAR(s2.vms[0].rate, 1000)); /* 1000 pages in 1 s */
	return 0;
}

/*
 * The service's side: a tick counts VMs in turn until it has read its budget of log words, so
 * the pause stays short however much guest memory there is; the next tick goes on from there.
 */
static int sampling_has_a_budget(void)
{
	static const uint32_t idx[3] = { 0, 3, 7 }, written[3] = { 5, 7, 9 };
	struct pt_vmctx *vms[PT_MAX_VMS] = { 0 }, ctx[3] = { 0 };
	struct pt_tracker t = { 0 };
	uint64_t w, at;

	t.vms = calloc(PT_MAX_VMS, sizeof(*t.vms));
	t.log = calloc(3 * 100, sizeof(*t.log));
	CHECK(t.vms && t.log);
	for (int i = 0; i < 3; i++) {
		ctx[i] = (struct pt_vmctx){ .vm = idx[i], .pid = 100 + i, .words = 100 };
		vms[idx[i]] = &ctx[i];
		t.vms[idx[i]].log_bit_base = i * 100 * 64;
		for (uint32_t p = 0; p < written[i]; p++)
			t.log[i * 100 + p] = 1; /* one page in each of the first words */
	}
	CHECK(pt_status_sample(&t, vms, 1000, 150) == 2); /* 100 words, then 200: over */
	CHECK(pt_status_written(&t, &ctx[0], &w, &at) && w == 5 && at == 1000);
	CHECK(pt_status_written(&t, &ctx[1], &w, &at) && w == 7 && at == 1000);
	CHECK(!pt_status_written(&t, &ctx[2], &w, &at));  /* not reached: no figure */
	CHECK(pt_status_sample(&t, vms, 2000, 150) == 2); /* VM 7, then round to VM 0 */
	CHECK(pt_status_written(&t, &ctx[2], &w, &at) && w == 9 && at == 2000);
	CHECK(pt_status_written(&t, &ctx[0], &w, &at) && at == 2000);
	CHECK(pt_status_written(&t, &ctx[1], &w, &at) && at == 1000); /* kept its count's time */
	CHECK(pt_status_sample(&t, vms, 3000, 10) == 1); /* one VM over the budget still counts */
	CHECK(pt_status_sample(&t, vms, 4000, 1000) == 3);
	ctx[1].pid = 999; /* another VMM took the index: the old count is not its */
	CHECK(!pt_status_written(&t, &ctx[1], &w, &at));
	free(t.vms);
	free(t.log);
	return 0;
}

static int view_fits_80x24(void)
{
	struct pt_top_sample *s = calloc(1, sizeof(*s));
	char *out = NULL, *p, *nl;
	size_t len = 0;
	unsigned lines = 0, longest = 0;
	FILE *f;

	CHECK(s);
	s->pid = getpid();
	s->t_ms = 1;
	snprintf(s->coverage, sizeof(s->coverage), "%0199d", 0); /* longer than any line */
	s->nvms = 40;
	for (unsigned i = 0; i < s->nvms; i++) {
		s->vms[i] = (struct pt_top_vm){ .vm = i,
						.pid = 4000000 + i,
						.cmd = 4000000000u,
						.epoch = 123456789012ull,
						.written = 1ull << 40,
						.rate = 98765432.1,
						.last_hinted = 16777216 };
		snprintf(s->vms[i].mode, sizeof(s->vms[i].mode), "dirty-ring");
		snprintf(s->vms[i].state, sizeof(s->vms[i].state), "stopped");
		snprintf(s->vms[i].doubt, sizeof(s->vms[i].doubt), "no-sync-after-arm");
	}
	f = open_memstream(&out, &len);
	CHECK(f);
	pt_top_render(f, s, true, 80, 24);
	fclose(f);
	for (p = out; (nl = strchr(p, '\n')); p = nl + 1) {
		lines++;
		if ((unsigned)(nl - p) > longest)
			longest = nl - p;
	}
	CHECKF(lines <= 23 && longest <= 80, "%u lines, longest %u", lines, longest);
	CHECK(strstr(out, "more VMs") && strstr(out, "DIRTY/s") && strstr(out, " 17M "));
	free(out);
	free(s);
	return 0;
}

static int json_sample(void)
{
	char buf[4096], *out = NULL;
	size_t len = 0;
	FILE *f;

	status_json(buf, sizeof(buf), 5000, 800, 40, 1);
	CHECK(pt_top_parse(buf, &s1) == 0);
	pt_top_rates(NULL, &s1);
	f = open_memstream(&out, &len);
	CHECK(f);
	pt_top_json(f, &s1);
	fclose(f);
	CHECK(strchr(out, '\n') == out + len - 1); /* one line */
	CHECK(strstr(out, "\"dirty_rate\": null") && strstr(out, "\"dirty_rate\": 12.5"));
	CHECK(strstr(out, "\"last_verdict\": {\"cmd_id\": 6, \"hinted\": 16384, \"free\": 15360, "
			  "\"kept\": 1024}"));
	free(out);
	return 0;
}

T_MAIN(T_CASE(rate_steady), T_CASE(rate_after_arm), T_CASE(rate_unknown), T_CASE(parse_status),
       T_CASE(rates_across_samples), T_CASE(rates_use_each_count_time),
       T_CASE(sampling_has_a_budget), T_CASE(view_fits_80x24), T_CASE(json_sample))
