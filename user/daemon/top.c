// SPDX-License-Identifier: GPL-2.0
/*
 * `pagetrackd top`: samples run_dir/status.json every interval and shows one row per VM, in a
 * plain ANSI terminal (alternate screen, no curses), as plain text frames when standard
 * output is not a terminal, or as one JSON object per sample (--json).
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include "top.h"

double pt_dirty_rate(const struct pt_rate_sample *prev, const struct pt_rate_sample *cur)
{
	double dt;

	if (!prev->t_ms || !cur->t_ms || prev->pid != cur->pid || cur->t_ms <= prev->t_ms)
		return -1;
	dt = (cur->t_ms - prev->t_ms) / 1000.0;
	if (cur->epoch != prev->epoch || cur->written < prev->written)
		return cur->written / dt;
	return (cur->written - prev->written) / dt;
}

/* --- status.json -------------------------------------------------------------------------- */

/* The value of "key" inside [p, end), or NULL. Our own output: no key appears in a string. */
static const char *jkey(const char *p, const char *end, const char *key)
{
	char pat[48];
	size_t n = snprintf(pat, sizeof(pat), "\"%s\": ", key);

	for (const char *q = p; q && q + n <= end; q++) {
		q = memchr(q, '"', end - q);
		if (!q || q + n > end)
			return NULL;
		if (!memcmp(q, pat, n))
			return q + n;
	}
	return NULL;
}

static uint64_t jnum(const char *p, const char *end, const char *key)
{
	const char *v = jkey(p, end, key);

	return v ? strtoull(v, NULL, 10) : 0;
}

static double jdouble(const char *p, const char *end, const char *key)
{
	const char *v = jkey(p, end, key);

	return v && *v != 'n' ? strtod(v, NULL) : -1; /* null: not known */
}

static bool jbool(const char *p, const char *end, const char *key)
{
	const char *v = jkey(p, end, key);

	return v && !strncmp(v, "true", 4);
}

static void jstr(const char *p, const char *end, const char *key, char *buf, size_t len)
{
	const char *v = jkey(p, end, key), *q;
	size_t n;

	buf[0] = 0;
	if (!v || *v != '"')
		return;
	q = memchr(v + 1, '"', end - v - 1);
	if (!q)
		return;
	n = q - v - 1 < (ptrdiff_t)len - 1 ? (size_t)(q - v - 1) : len - 1;
	memcpy(buf, v + 1, n);
	buf[n] = 0;
}

static void parse_vm(const char *p, const char *end, struct pt_top_vm *v)
{
	memset(v, 0, sizeof(*v));
	v->vm = jnum(p, end, "vm");
	v->pid = jnum(p, end, "pid");
	jstr(p, end, "mode", v->mode, sizeof(v->mode));
	v->tracked = jbool(p, end, "mode_tracked");
	jstr(p, end, "state", v->state, sizeof(v->state));
	jstr(p, end, "doubt", v->doubt, sizeof(v->doubt));
	v->cmd = jnum(p, end, "cmd_id");
	v->epoch = jnum(p, end, "epoch");
	v->written = jnum(p, end, "written_pages");
	v->written_ms = jnum(p, end, "written_ms");
	v->svc_rate = jdouble(p, end, "dirty_rate");
	v->rate = v->svc_rate;
	v->last_cmd = jnum(p, end, "last_cmd_id");
	v->last_hinted = jnum(p, end, "last_hinted");
	v->last_free = jnum(p, end, "last_free");
	v->last_kept = jnum(p, end, "last_kept");
}

int pt_top_parse(const char *json, struct pt_top_sample *s)
{
	const char *end = json + strlen(json), *vms = jkey(json, end, "vms"), *p;

	memset(s, 0, sizeof(*s));
	if (json[0] != '{' || !vms || *vms != '[' || !jkey(json, vms, "time_ms"))
		return -EINVAL;
	s->pid = jnum(json, vms, "pid");
	s->t_ms = jnum(json, vms, "time_ms");
	jstr(json, vms, "text", s->coverage, sizeof(s->coverage));
	/* The VM objects are flat: each ends at its first '}'; the array at the ']' after one. */
	for (p = vms + 1; s->nvms < PT_MAX_VMS; p++) {
		const char *c;

		p += strspn(p, " \t\r\n,");
		if (*p != '{')
			break;
		c = strchr(p, '}');
		if (!c)
			return -EINVAL;
		parse_vm(p, c + 1, &s->vms[s->nvms++]);
		p = c;
	}
	return 0;
}

void pt_top_rates(const struct pt_top_sample *prev, struct pt_top_sample *cur)
{
	for (unsigned i = 0; i < cur->nvms; i++) {
		struct pt_top_vm *v = &cur->vms[i];

		v->rate = v->svc_rate;
		for (unsigned j = 0; prev && j < prev->nvms; j++) {
			const struct pt_top_vm *p = &prev->vms[j];
			/* A tick counts some VMs only (status.c): each count has its own time. */
			struct pt_rate_sample a = { p->written_ms, p->pid, p->epoch, p->written };
			struct pt_rate_sample b = { v->written_ms, v->pid, v->epoch, v->written };
			double r;

			if (p->vm != v->vm)
				continue;
			r = pt_dirty_rate(&a, &b);
			if (r >= 0)
				v->rate = r;
			break;
		}
	}
}

/* --- output ------------------------------------------------------------------------------- */

/* A count in at most 6 characters: 123456 -> "123k", 1234567 -> "1.2M". */
static const char *human(double n, char *buf, size_t len)
{
	static const char unit[] = "kMGTP";
	int u = -1;

	if (n < 0)
		return "-";
	if (n < 100000) {
		snprintf(buf, len, "%.0f", n);
		return buf;
	}
	while (n >= 1000 && u < 4) {
		n /= 1000;
		u++;
	}
	snprintf(buf, len, n < 10 ? "%.1f%c" : "%.0f%c", n, unit[u]);
	return buf;
}

/* Writes one line cut to @cols (the view never wraps). */
static void line(FILE *f, unsigned cols, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (cols < sizeof(buf))
		buf[cols] = 0;
	fprintf(f, "%s\n", buf);
}

#define ROW_FMT "%3s %-7s %-6s %-3s %4s %-7s %5s %8s %7s %6s %6s %6s"

static void render_vm(FILE *f, const struct pt_top_vm *v, unsigned cols)
{
	char vm[12], pid[12], cmd[12], ep[8], rate[8], wr[8], h[8], fr[8], k[8];

	snprintf(vm, sizeof(vm), "%u", v->vm);
	snprintf(pid, sizeof(pid), "%u", v->pid);
	snprintf(cmd, sizeof(cmd), "%u", v->cmd);
	line(f, cols, ROW_FMT "  %s", vm, pid, strcmp(v->mode, "dirty-ring") ? v->mode : "ring",
	     v->tracked ? "yes" : "NO", cmd, v->state, human(v->epoch, ep, sizeof(ep)),
	     human(v->rate, rate, sizeof(rate)), human(v->written, wr, sizeof(wr)),
	     human(v->last_hinted, h, sizeof(h)), human(v->last_free, fr, sizeof(fr)),
	     human(v->last_kept, k, sizeof(k)), v->doubt);
}

void pt_top_render(FILE *f, const struct pt_top_sample *s, bool alive, unsigned cols, unsigned rows)
{
	char when[32];
	time_t t = s->t_ms / 1000;
	unsigned shown = 0, room = rows > 5 ? rows - 5 : 0;

	strftime(when, sizeof(when), "%H:%M:%S", localtime(&t));
	line(f, cols, "pagetrackd top: pid %d (%s), %u VM%s, status of %s   q: quit", s->pid,
	     alive ? "running" : "NOT running", s->nvms, s->nvms == 1 ? "" : "s", when);
	line(f, cols, "coverage: %s", s->coverage);
	line(f, cols, "%s", "");
	line(f, cols, ROW_FMT "  %s", "VM", "PID", "MODE", "COV", "CMD", "STATE", "EPOCH",
	     "DIRTY/s", "WRITTEN", "HINTED", "FREE", "KEPT", "DOUBT");
	for (unsigned i = 0; i < s->nvms && shown < room; i++, shown++) {
		if (shown + 1 == room && s->nvms > room) {
			line(f, cols, "... %u more VMs (a taller terminal shows them)",
			     s->nvms - shown);
			break;
		}
		render_vm(f, &s->vms[i], cols);
	}
	if (!s->nvms)
		line(f, cols, "(no VM registered)");
}

static void json_double(FILE *f, const char *key, double v)
{
	if (v < 0)
		fprintf(f, "\"%s\": null", key);
	else
		fprintf(f, "\"%s\": %.1f", key, v);
}

void pt_top_json(FILE *f, const struct pt_top_sample *s)
{
	fprintf(f, "{\"time_ms\": %llu, \"pid\": %d, \"coverage\": \"%s\", \"vms\": [",
		(unsigned long long)s->t_ms, s->pid, s->coverage);
	for (unsigned i = 0; i < s->nvms; i++) {
		const struct pt_top_vm *v = &s->vms[i];

		fprintf(f,
			"%s{\"vm\": %u, \"pid\": %u, \"mode\": \"%s\", \"mode_tracked\": %s, "
			"\"state\": \"%s\", \"cmd_id\": %u, \"epoch\": %llu, \"doubt\": \"%s\", "
			"\"written_pages\": %llu, ",
			i ? ", " : "", v->vm, v->pid, v->mode, v->tracked ? "true" : "false",
			v->state, v->cmd, (unsigned long long)v->epoch, v->doubt,
			(unsigned long long)v->written);
		json_double(f, "dirty_rate", v->rate);
		fprintf(f,
			", \"last_verdict\": {\"cmd_id\": %u, \"hinted\": %llu, \"free\": %llu, "
			"\"kept\": %llu}}",
			v->last_cmd, (unsigned long long)v->last_hinted,
			(unsigned long long)v->last_free, (unsigned long long)v->last_kept);
	}
	fprintf(f, "]}\n");
	fflush(f);
}

/* --- the loop ------------------------------------------------------------------------------ */

static volatile sig_atomic_t quit_sig, resized;

static void on_signal(int sig)
{
	if (sig == SIGWINCH)
		resized = 1;
	else
		quit_sig = sig;
}

static int read_status(const char *path, struct pt_top_sample *s)
{
	struct stat st;
	FILE *f = fopen(path, "r");
	char *buf;
	size_t n;
	int err;

	if (!f)
		return -errno;
	if (fstat(fileno(f), &st) || !(buf = malloc(st.st_size + 1))) {
		fclose(f);
		return -ENOMEM;
	}
	n = fread(buf, 1, st.st_size, f);
	buf[n] = 0;
	fclose(f);
	err = pt_top_parse(buf, s);
	free(buf);
	return err;
}

static bool service_alive(int pid)
{
	return pid > 0 && (!kill(pid, 0) || errno == EPERM);
}

struct term {
	bool raw; /* stdin switched to non-canonical, no echo */
	struct termios saved;
};

/* Alternate screen, hidden cursor, keys without Enter; Ctrl-C still raises SIGINT. */
static void term_enter(struct term *t)
{
	struct termios raw;

	if (isatty(STDIN_FILENO) && !tcgetattr(STDIN_FILENO, &t->saved)) {
		raw = t->saved;
		raw.c_lflag &= ~(ICANON | ECHO);
		raw.c_cc[VMIN] = 0;
		raw.c_cc[VTIME] = 0;
		t->raw = !tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw);
	}
	fputs("\033[?1049h\033[?25l", stdout);
}

static void term_leave(struct term *t)
{
	fputs("\033[?25h\033[?1049l", stdout);
	fflush(stdout);
	if (t->raw)
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &t->saved);
}

static void term_size(unsigned *cols, unsigned *rows)
{
	struct winsize ws;

	*cols = 80;
	*rows = 24;
	if (!ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) && ws.ws_col && ws.ws_row) {
		*cols = ws.ws_col;
		*rows = ws.ws_row;
	}
}

/* Waits up to @ms for a key; true when it asks to quit ('q'). Signals cut the wait short. */
static bool wait_key(bool keys, unsigned ms)
{
	struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN };
	char c;

	if (!keys) {
		struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

		nanosleep(&ts, NULL);
		return false;
	}
	if (poll(&p, 1, ms) > 0 && read(STDIN_FILENO, &c, 1) == 1)
		return c == 'q' || c == 'Q';
	return false;
}

static void draw(const struct pt_top_sample *s, int err, const char *path, bool tty)
{
	unsigned cols = 80, rows = 1000;

	if (tty) {
		term_size(&cols, &rows);
		fputs("\033[H\033[J", stdout);
	}
	if (err)
		printf("pagetrackd top: %s: %s (is the service running?)   q: quit\n", path,
		       strerror(-err));
	else
		pt_top_render(stdout, s, service_alive(s->pid), cols, rows);
	if (!tty)
		putchar('\n');
	fflush(stdout);
}

static void setup_signals(void)
{
	struct sigaction sa = { .sa_handler = on_signal }; /* no SA_RESTART: waits end early */

	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGWINCH, &sa, NULL);
}

int pt_top_run(const struct pt_config *cfg, const struct pt_top_opts *o)
{
	static struct pt_top_sample a, b; /* 2 x 256 VMs: too big for the stack */
	struct pt_top_sample *prev = NULL, *cur = &a;
	bool tty = !o->json && isatty(STDOUT_FILENO), quit = false;
	struct term t = { 0 };
	char path[300];
	long n = 0;
	int err = 0;

	snprintf(path, sizeof(path), "%s/status.json", cfg->run_dir);
	setup_signals();
	if (tty)
		term_enter(&t);
	while (!quit && !quit_sig) {
		err = read_status(path, cur);
		if (!err) {
			pt_top_rates(prev, cur);
			prev = cur;
			cur = cur == &a ? &b : &a;
		} else if (!tty) {
			fprintf(stderr, "pagetrackd top: %s: %s (is the service running?)\n", path,
				strerror(-err));
			break;
		}
		if (o->json)
			pt_top_json(stdout, prev);
		else
			draw(prev, err, path, tty);
		if (o->iterations && ++n >= o->iterations)
			break;
		quit = wait_key(t.raw, o->interval_ms);
		while (resized && !quit_sig && !quit) { /* redraw at the new size, keep waiting */
			resized = 0;
			if (prev)
				draw(prev, 0, path, tty);
			quit = wait_key(t.raw, o->interval_ms / 2);
		}
	}
	if (tty)
		term_leave(&t);
	return tty ? 0 : err; /* the view showed the error already */
}
