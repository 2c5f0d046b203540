// SPDX-License-Identifier: GPL-2.0
/*
 * `pagetrackd top --json` against a real guest writing at a known rate (needs /dev/kvm): a
 * private service, a dirty-ring minivm in this process registered through the client library,
 * ARM + sync, then the guest writes 20 new pages every 50 ms (about 400 pages/s) for 6 s while
 * top samples every second. For each pair of top's samples inside the writing, the rate it
 * shows times the interval must match the pages this test had the guest write between the
 * two sample times (its own clock, so a slow machine changes the rate, not the check), and
 * the final written-page count is the number of pages written.
 */
#include <signal.h>
#include <stdlib.h>
#include <time.h>

#include "t.h"
#include "svc.h"
#include "guest.h"

#define DATA_GPA   (1ull << 30)
#define DATA_PAGES 16384
#define BATCH	   20
#define PERIOD_MS  50
#define WRITE_MS   6000
#define SAMPLES	   9

struct mark {
	uint64_t t_ms, pages; /* pages written when t_ms ended */
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* Pages the guest had written at time t (the last mark at or before it). */
static uint64_t pages_at(const struct mark *m, size_t n, uint64_t t)
{
	uint64_t p = 0;

	for (size_t i = 0; i < n && m[i].t_ms <= t; i++)
		p = m[i].pages;
	return p;
}

static int setup(struct minivm **vm, struct pt_client **c)
{
	struct minivm_opts o = { .dirty = MINIVM_DIRTY_RING, .nslots = 1, .ring_entries = 16384 };
	struct pt_reg_slot rs[2];
	uint32_t handle;

	o.slots[0] = (struct minivm_slot){ DATA_GPA, DATA_PAGES * 4096ull, 1 };
	if (minivm_create(vm, &o))
		return -1;
	rs[0] = (struct pt_reg_slot){ DATA_GPA, DATA_PAGES * 4096ull, 1, PT_REG_SLOT_LOGGED };
	minivm_system_range(*vm, &rs[1].gpa, &rs[1].size);
	rs[1].id = 0;
	rs[1].flags = PT_REG_SLOT_LOGGED;
	*c = pt_client_connect(svc.socket);
	if (!*c || pt_client_register(*c, 0, PT_DIRTY_RING, rs, 2, &handle))
		return -1;
	if (pt_client_arm(*c, 2) || minivm_sync(*vm))
		return -1;
	return 0;
}

/* The guest writes BATCH new pages every PERIOD_MS for WRITE_MS, syncing after each batch. */
static int write_at_rate(struct minivm *vm, struct mark *m, size_t *nm, size_t max)
{
	uint64_t end = now_ms() + WRITE_MS, page = 0, gpas[BATCH];

	*nm = 0;
	while (now_ms() < end && *nm < max && page + BATCH <= DATA_PAGES) {
		for (int i = 0; i < BATCH; i++)
			gpas[i] = DATA_GPA + (page + i) * 4096;
		if (minivm_guest_write(vm, gpas, BATCH, page) || minivm_sync(vm))
			return -1;
		page += BATCH;
		m[(*nm)++] = (struct mark){ now_ms(), page };
		sleep_ms(PERIOD_MS);
	}
	return 0;
}

struct sample {
	uint64_t t_ms, written;
	double rate; /* < 0: null */
};

static int parse_line(const char *l, struct sample *s)
{
	const char *t = strstr(l, "\"time_ms\": "), *w = strstr(l, "\"written_pages\": "),
		   *r = strstr(l, "\"dirty_rate\": ");

	if (!t || !w || !r)
		return -1;
	s->t_ms = strtoull(t + 11, NULL, 10);
	s->written = strtoull(w + 17, NULL, 10);
	s->rate = r[14] == 'n' ? -1 : strtod(r + 14, NULL);
	return 0;
}

/* status.json now, parsed: -1 while it lists no VM. */
static int status_sample(struct sample *s)
{
	char path[300], buf[8192];
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "%s/status.json", svc.dir);
	f = fopen(path, "r");
	n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
	if (f)
		fclose(f);
	buf[n] = 0;
	return parse_line(buf, s);
}

/* The tick rewrites status.json every second: wait (10 s at most) until it lists the VM, so
 * that every sample top takes has it. */
static int wait_listed(void)
{
	struct sample s;

	for (int i = 0; i < 100; i++) {
		if (!status_sample(&s))
			return 0;
		sleep_ms(100);
	}
	return -1;
}

/* status.json's count reaches what the guest wrote (and no more than a few system pages). */
static int final_written(uint64_t want)
{
	struct sample s = { 0 };

	for (int i = 0; i < 100; i++) {
		if (!status_sample(&s) && s.written >= want)
			break;
		sleep_ms(100);
	}
	printf("# status.json: %llu pages written since ARM\n", (unsigned long long)s.written);
	return s.written >= want && s.written <= want + 16 ? 0 : -1;
}

static int rate_matches_guest(void)
{
	static struct mark marks[4096];
	struct sample s[SAMPLES];
	struct minivm *vm = NULL;
	struct pt_client *c = NULL;
	char bin[256], cmd[640], line[4096];
	size_t nm = 0, ns = 0, compared = 0;
	FILE *top;

	T_REQUIRE(need_ring_guest());
	svc_must_start = true; /* this binary's service (svc.h) */
	T_REQUIRE(need_service());
	CHECK(setup(&vm, &c) == 0);
	CHECKF(wait_listed() == 0, "status.json did not list the VM within 10 s");
	snprintf(cmd, sizeof(cmd), "%s -r %s top --json -n %d -i 1",
		 pt_spawn_default_bin(bin, sizeof(bin)), svc.dir, SAMPLES);
	top = popen(cmd, "r");
	CHECK(top);
	CHECK(write_at_rate(vm, marks, &nm, 4096) == 0);
	while (ns < SAMPLES && fgets(line, sizeof(line), top)) {
		if (!parse_line(line, &s[ns]))
			ns++;
		else
			printf("# top printed a sample without the VM: %s", line);
	}
	CHECK(pclose(top) == 0);
	CHECKF(ns == SAMPLES, "%zu samples", ns);
	for (size_t i = 1; i < ns; i++) {
		uint64_t want = pages_at(marks, nm, s[i].t_ms) - pages_at(marks, nm, s[i - 1].t_ms);
		double got = s[i].rate * (s[i].t_ms - s[i - 1].t_ms) / 1000.0;

		if (s[i - 1].t_ms < marks[0].t_ms || s[i].t_ms > marks[nm - 1].t_ms ||
		    s[i].rate < 0)
			continue; /* not entirely inside the writing */
		printf("# %.1f pages/s shown over %llu ms: %.0f pages; the guest wrote %llu\n",
		       s[i].rate, (unsigned long long)(s[i].t_ms - s[i - 1].t_ms), got,
		       (unsigned long long)want);
		/* One batch of slack each side: a sample may land between a write and its mark. */
		CHECKF(got >= (double)want - 2 * BATCH && got <= (double)want + 2 * BATCH,
		       "shown %.0f, written %llu", got, (unsigned long long)want);
		compared++;
	}
	CHECKF(compared >= 2, "only %zu intervals inside the writing", compared);
	CHECKF(final_written(marks[nm - 1].pages) == 0, "guest wrote %llu pages",
	       (unsigned long long)marks[nm - 1].pages);
	pt_client_close(c);
	minivm_destroy(vm);
	return 0;
}

T_MAIN(T_CASE(rate_matches_guest))
