/* SPDX-License-Identifier: GPL-2.0 */
/*
 * `pagetrackd bench` helpers: the result table (printed as a table or one JSON object),
 * clocks, percentiles, /proc readings of the service, pid holders (live processes whose pids
 * synthetic devices register as their VMMs) and plain socket I/O.
 */
#ifndef PT_BENCH_UTIL_H
#define PT_BENCH_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <time.h>

/* Results, in the order they are put. @label NULL: JSON only. */
void bench_section(const char *title);
void bench_put(const char *key, double value, const char *unit, const char *label);
void bench_note(const char *key, const char *label, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/*
 * A workload that cannot run here: "<pfx>_skipped" carries @reason in the JSON, and the table
 * prints it under the section, so no figure of it silently goes missing.
 */
void bench_skip(const char *pfx, const char *reason);
/* A value put earlier, or NAN. */
double bench_get(const char *key);
void bench_print_table(FILE *f);
void bench_print_json(FILE *f);
void bench_progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static inline uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/* Sorts @ns and puts <prefix>_p50_us, _p99_us, _p999_us. */
void bench_put_latency(const char *prefix, const char *label, uint64_t *ns, size_t n);
double bench_percentile(const uint64_t *sorted, size_t n, double p);
void bench_sort_u64(uint64_t *v, size_t n);

/* utime + stime of a process in ns (/proc/<pid>/stat), resident bytes (/proc/<pid>/statm). */
int bench_proc_cpu_ns(pid_t pid, uint64_t *ns);
int bench_proc_rss(pid_t pid, uint64_t *bytes);

/* Children that only wait to be killed: live VMM pids for synthetic devices. */
int bench_holders_spawn(pid_t *pids, int n);
void bench_holders_kill(pid_t *pids, int n);

int bench_connect(const char *path);
int bench_write_all(int fd, const void *buf, size_t len);
int bench_read_all(int fd, void *buf, size_t len);
void bench_set_nonblock(int fd, bool on);

#endif
