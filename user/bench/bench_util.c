// SPDX-License-Identifier: GPL-2.0
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_util.h"

#define MAX_RESULTS 200

struct result {
	const char *key;   /* NULL: section heading (label) */
	const char *label; /* NULL: JSON only */
	const char *unit;
	double value;
	char text[200]; /* notes: a string value */
	bool is_note;
};

static struct result results[MAX_RESULTS];
static unsigned nresults;

static struct result *new_result(void)
{
	if (nresults == MAX_RESULTS)
		return NULL;
	return memset(&results[nresults++], 0, sizeof(struct result));
}

void bench_section(const char *title)
{
	struct result *r = new_result();

	if (r)
		r->label = title;
}

void bench_put(const char *key, double value, const char *unit, const char *label)
{
	struct result *r = new_result();

	if (!r)
		return;
	r->key = key;
	r->value = value;
	r->unit = unit ? unit : "";
	r->label = label;
}

void bench_note(const char *key, const char *label, const char *fmt, ...)
{
	struct result *r = new_result();
	va_list ap;

	if (!r)
		return;
	r->key = key;
	r->label = label;
	r->unit = "";
	r->is_note = true;
	va_start(ap, fmt);
	vsnprintf(r->text, sizeof(r->text), fmt, ap);
	va_end(ap);
}

void bench_skip(const char *pfx, const char *reason)
{
	char *key = NULL;

	/* Results keep the key until exit. */
	if (asprintf(&key, "%s_skipped", pfx) < 0)
		return;
	bench_note(key, "skipped", "%s", reason);
}

double bench_get(const char *key)
{
	for (unsigned i = 0; i < nresults; i++)
		if (results[i].key && !results[i].is_note && !strcmp(results[i].key, key))
			return results[i].value;
	return NAN;
}

static const char *fmt_num(double v, char *buf, size_t len)
{
	double a = v < 0 ? -v : v;

	if (a >= 1e9)
		snprintf(buf, len, "%.2f G", v / 1e9);
	else if (a >= 1e6)
		snprintf(buf, len, "%.2f M", v / 1e6);
	else if (a >= 1e4)
		snprintf(buf, len, "%.1f k", v / 1e3);
	else if (a >= 100 || v == (double)(long long)v)
		snprintf(buf, len, "%.0f", v);
	else
		snprintf(buf, len, "%.3g", v);
	return buf;
}

void bench_print_table(FILE *f)
{
	for (unsigned i = 0; i < nresults; i++) {
		const struct result *r = &results[i];
		char num[32];

		if (!r->key) {
			fprintf(f, "%s%s\n", i ? "\n" : "", r->label);
		} else if (r->label && r->is_note) {
			fprintf(f, "  %-46s %s\n", r->label, r->text);
		} else if (r->label) {
			fprintf(f, "  %-46s %12s %s\n", r->label,
				fmt_num(r->value, num, sizeof(num)), r->unit);
		}
	}
}

static void json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fprintf(f, "\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			fprintf(f, "\\u%04x", *s);
		else
			fputc(*s, f);
	}
	fputc('"', f);
}

void bench_print_json(FILE *f)
{
	bool first = true;

	fputc('{', f);
	for (unsigned i = 0; i < nresults; i++) {
		const struct result *r = &results[i];

		if (!r->key)
			continue;
		fprintf(f, "%s\n  ", first ? "" : ",");
		first = false;
		json_string(f, r->key);
		fputs(": ", f);
		if (r->is_note)
			json_string(f, r->text);
		else if (isfinite(r->value))
			fprintf(f, "%.6g", r->value);
		else
			fputs("null", f);
	}
	fputs("\n}\n", f);
}

void bench_progress(const char *fmt, ...)
{
	va_list ap;

	fputs("bench: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* --- statistics ----------------------------------------------------------------------------- */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

void bench_sort_u64(uint64_t *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_u64);
}

/* Nearest rank. */
double bench_percentile(const uint64_t *sorted, size_t n, double p)
{
	double rank = p / 100.0 * n;
	size_t i;

	if (!n)
		return NAN;
	i = (size_t)rank;
	if (i < rank)
		i++;
	if (i > n)
		i = n;
	return sorted[i ? i - 1 : 0];
}

void bench_put_latency(const char *prefix, const char *label, uint64_t *ns, size_t n)
{
	static const double pct[3] = { 50, 99, 99.9 };
	static const char *const sfx[3] = { "p50", "p99", "p999" };
	static char keys[32][64], labels[32][96];
	static unsigned used;

	bench_sort_u64(ns, n);
	for (int i = 0; i < 3 && used < 32; i++, used++) {
		snprintf(keys[used], sizeof(keys[used]), "%s_%s_us", prefix, sfx[i]);
		snprintf(labels[used], sizeof(labels[used]), "%s %s", label, sfx[i]);
		bench_put(keys[used], bench_percentile(ns, n, pct[i]) / 1000.0, "us", labels[used]);
	}
}

/* --- /proc ---------------------------------------------------------------------------------- */

static int read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = 0;
	return 0;
}

/* utime + stime of /proc/PID/stat: in clock ticks (10 ms), the fallback. */
static int proc_cpu_ticks_ns(pid_t pid, uint64_t *ns)
{
	unsigned long long ut, st;
	char path[64], buf[1024], *p;
	int err;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	err = read_file(path, buf, sizeof(buf));
	if (err)
		return err;
	p = strrchr(buf, ')');
	/* After the comm: state is field 3; utime and stime are fields 14 and 15. */
	if (!p ||
	    sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return -EINVAL;
	*ns = (ut + st) * (1000000000ull / sysconf(_SC_CLK_TCK));
	return 0;
}

/*
 * The process's CPU time to the nanosecond: the scheduler's run time of each of its threads
 * (/proc/PID/task/TID/schedstat, first field). utime and stime come in 10 ms ticks, which over
 * a run of a few hundred ms of CPU is a few per cent either way, for each of the two reads.
 * Threads that exit between two reads take their time with them: every process measured here
 * is single-threaded.
 */
int bench_proc_cpu_ns(pid_t pid, uint64_t *ns)
{
	char path[320], buf[128];
	struct dirent *d;
	uint64_t sum = 0;
	DIR *dir;

	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	dir = opendir(path);
	if (!dir)
		return proc_cpu_ticks_ns(pid, ns);
	while ((d = readdir(dir))) {
		unsigned long long run;

		if (d->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%s/schedstat", pid, d->d_name);
		/* A thread gone since readdir: its time is gone from both reads' view alike. */
		if (read_file(path, buf, sizeof(buf)) || sscanf(buf, "%llu", &run) != 1)
			continue;
		sum += run;
	}
	closedir(dir);
	/* No scheduler statistics (or no thread left): ticks, for both reads of a pair. */
	if (!sum)
		return proc_cpu_ticks_ns(pid, ns);
	*ns = sum;
	return 0;
}

int bench_proc_rss(pid_t pid, uint64_t *bytes)
{
	unsigned long long size, rss;
	char path[64], buf[256];
	int err;

	snprintf(path, sizeof(path), "/proc/%d/statm", pid);
	err = read_file(path, buf, sizeof(buf));
	if (err)
		return err;
	if (sscanf(buf, "%llu %llu", &size, &rss) != 2)
		return -EINVAL;
	*bytes = rss * sysconf(_SC_PAGESIZE);
	return 0;
}

/* --- pid holders ---------------------------------------------------------------------------- */

int bench_holders_spawn(pid_t *pids, int n)
{
	for (int i = 0; i < n; i++) {
		pids[i] = fork();
		if (pids[i] < 0) {
			int err = -errno;

			bench_holders_kill(pids, i);
			return err;
		}
		if (!pids[i]) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			for (;;)
				pause();
		}
	}
	return 0;
}

void bench_holders_kill(pid_t *pids, int n)
{
	for (int i = 0; i < n; i++) {
		if (pids[i] <= 0)
			continue;
		kill(pids[i], SIGKILL);
		waitpid(pids[i], NULL, 0);
		pids[i] = 0;
	}
}

/* --- sockets -------------------------------------------------------------------------------- */

int bench_connect(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a))) {
		int err = -errno;

		close(fd);
		return err;
	}
	return fd;
}

int bench_write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n ? -errno : -EPIPE;
		p += n;
		len -= n;
	}
	return 0;
}

int bench_read_all(int fd, void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n = read(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n ? -errno : -ECONNRESET;
		p += n;
		len -= n;
	}
	return 0;
}

void bench_set_nonblock(int fd, bool on)
{
	int fl = fcntl(fd, F_GETFL);

	fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}
