// SPDX-License-Identifier: GPL-2.0
/*
 * /etc/pagetrack/pagetrack.conf: "key = value" lines, '#' comments. Keys are the long
 * command-line options (socket, pin-dir, run-dir, metrics, log-mb, learn-mb, tdp, canary,
 * verbose), the per-uid quotas (quota-conns, quota-vms, quota-log-mb) and the limits
 * (max-conns, conn-output-kb, max-output-mb, turn-frames, turn-pages, frame-timeout,
 * reply-timeout, idle-timeout); docs/OPERATIONS.md documents them and systemd/pagetrack.conf
 * shows the defaults.
 */
#include <ctype.h>
#include <stddef.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "writelog/loader.h"
#include "shared/log.h"
#include "config.h"

void pt_config_defaults(struct pt_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	snprintf(cfg->socket, sizeof(cfg->socket), "%s", PT_DEFAULT_SOCKET);
	snprintf(cfg->pin_dir, sizeof(cfg->pin_dir), "%s", PT_DEFAULT_PIN_DIR);
	snprintf(cfg->run_dir, sizeof(cfg->run_dir), "%s", PT_DEFAULT_RUN_DIR);
	cfg->log_mb = PT_DEFAULT_LOG_MB;
	cfg->learn_mb = 2; /* 2 MiB of bitmap: 64 GiB of guest memory */
	cfg->tdp = -1;
	cfg->canary = true;
	cfg->tick_ms = 1000;
	cfg->listen_fd = -1;
	/* One user's share: a few VMMs with their reconnects, a quarter of the default log. */
	cfg->quota_conns = 32;
	cfg->quota_vms = 8;
	cfg->quota_log_mb = 8;
	cfg->max_conns = 1024;
	cfg->conn_output_kb = 4096;
	cfg->max_output_mb = 64;
	cfg->turn_frames = 64;
	cfg->turn_pages = 1ull << 24; /* a millisecond or a few of bitmap work */
	cfg->frame_timeout = 30;
	cfg->reply_timeout = 30;
	cfg->idle_timeout = 60;
}

static int parse_bool(const char *v, bool *out)
{
	if (!strcmp(v, "yes") || !strcmp(v, "true") || !strcmp(v, "1"))
		*out = true;
	else if (!strcmp(v, "no") || !strcmp(v, "false") || !strcmp(v, "0"))
		*out = false;
	else
		return -EINVAL;
	return 0;
}

static int parse_uint(const char *v, unsigned *out)
{
	char *end;
	unsigned long n = strtoul(v, &end, 10);

	if (!*v || *end || !n || n > 1u << 20)
		return -EINVAL;
	*out = n;
	return 0;
}

static int parse_u64(const char *v, unsigned long long *out)
{
	char *end;
	unsigned long long n = strtoull(v, &end, 10);

	if (!*v || *end || !n || n > 1ull << 40)
		return -EINVAL;
	*out = n;
	return 0;
}

/* The limits; -ENOENT if @k is not one of them. */
static int set_limit(struct pt_config *c, const char *k, const char *v)
{
	static const struct {
		const char *key;
		size_t off;
	} keys[] = {
		{ "max-conns", offsetof(struct pt_config, max_conns) },
		{ "conn-output-kb", offsetof(struct pt_config, conn_output_kb) },
		{ "max-output-mb", offsetof(struct pt_config, max_output_mb) },
		{ "turn-frames", offsetof(struct pt_config, turn_frames) },
		{ "frame-timeout", offsetof(struct pt_config, frame_timeout) },
		{ "reply-timeout", offsetof(struct pt_config, reply_timeout) },
		{ "idle-timeout", offsetof(struct pt_config, idle_timeout) },
	};

	if (!strcmp(k, "turn-pages"))
		return parse_u64(v, &c->turn_pages);
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		if (!strcmp(k, keys[i].key))
			return parse_uint(v, (unsigned *)((char *)c + keys[i].off));
	return -ENOENT;
}

#define SET(dst, v) \
	(snprintf((dst), sizeof(dst), "%s", (v)) >= (int)sizeof(dst) ? -ENAMETOOLONG : 0)

static int set_key(struct pt_config *c, const char *k, const char *v)
{
	if (!strcmp(k, "socket"))
		return SET(c->socket, v);
	if (!strcmp(k, "pin-dir"))
		return SET(c->pin_dir, v);
	if (!strcmp(k, "run-dir"))
		return SET(c->run_dir, v);
	if (!strcmp(k, "metrics"))
		return SET(c->metrics, v);
	if (!strcmp(k, "log-mb"))
		return parse_uint(v, &c->log_mb);
	if (!strcmp(k, "learn-mb"))
		return parse_uint(v, &c->learn_mb);
	if (!strcmp(k, "quota-conns"))
		return parse_uint(v, &c->quota_conns);
	if (!strcmp(k, "quota-vms"))
		return parse_uint(v, &c->quota_vms);
	if (!strcmp(k, "quota-log-mb"))
		return parse_uint(v, &c->quota_log_mb);
	if (!strcmp(k, "canary"))
		return parse_bool(v, &c->canary);
	if (!strcmp(k, "verbose"))
		return parse_bool(v, &c->verbose);
	if (!strcmp(k, "tdp")) {
		c->tdp = !strcmp(v, "auto")  ? -1
			 : !strcmp(v, "yes") ? 1
			 : !strcmp(v, "no")  ? 0
					     : -2;
		return c->tdp < -1 ? -EINVAL : 0;
	}
	return set_limit(c, k, v);
}

static char *trim(char *s)
{
	char *e;

	while (isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = 0;
	return s;
}

int pt_config_load(struct pt_config *cfg, const char *path, bool must_exist)
{
	char line[512];
	int lineno = 0, err = 0;
	FILE *f = fopen(path, "r");

	if (!f)
		return must_exist || errno != ENOENT ? -errno : 0;
	while (!err && fgets(line, sizeof(line), f)) {
		char *k = trim(line), *eq, *v;

		lineno++;
		if (!*k || *k == '#')
			continue;
		eq = strchr(k, '=');
		if (!eq) {
			err = -EINVAL;
			break;
		}
		*eq = 0;
		v = trim(eq + 1);
		k = trim(k);
		err = set_key(cfg, k, v);
	}
	fclose(f);
	if (err)
		fprintf(stderr, "pagetrackd: %s:%d: %s\n", path, lineno,
			err == -ENOENT ? "unknown key" : "bad value");
	return err == -ENOENT ? -EINVAL : err;
}
