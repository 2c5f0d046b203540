// SPDX-License-Identifier: GPL-2.0
/*
 * /etc/pagetrack/pagetrack.conf: "key = value" lines, '#' comments. Keys are the long
 * command-line options (socket, pin-dir, run-dir, metrics, log-mb, learn-mb, tdp, canary,
 * verbose), and the per-uid quotas (quota-conns, quota-vms, quota-log-mb) that only this file
 * sets; docs/OPERATIONS.md documents them and systemd/pagetrack.conf shows the defaults.
 */
#include <ctype.h>
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
	return -ENOENT;
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
