/* SPDX-License-Identifier: GPL-2.0 */
/*
 * `pagetrackd top`: a live view of a running service, one row per tracked VM, read from the
 * status.json it rewrites every tick (status.c). Also the dirty-rate computation, which the
 * status writer uses for status.json and the Prometheus file.
 *
 * The dirty rate of a VM is the number of pages first written since ARM, per second: the
 * growth of its written-page count (the bits set in its write log) between two samples. A
 * page written again within the same epoch is not counted again, as with QEMU's
 * calc-dirty-rate over a period.
 */
#ifndef PT_TOP_H
#define PT_TOP_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "writelog.h"
#include "config.h"

/* One VM's written-page count at one moment. */
struct pt_rate_sample {
	uint64_t t_ms;	  /* the service's clock (status.json "time_ms"); 0: no sample */
	uint32_t pid;	  /* VMM: another pid under the same VM index is another VM */
	uint64_t epoch;	  /* write-log epoch: a new one means ARM cleared the log */
	uint64_t written; /* pages written since ARM */
};

/*
 * Pages first written per second from @prev to @cur, or -1 when it cannot be told (no earlier
 * sample, another VM, the clock did not advance). When the log was cleared in between (a new
 * epoch, or fewer pages than before: a sample between ARM's clear and its epoch bump), every
 * page in it was written during the interval.
 */
double pt_dirty_rate(const struct pt_rate_sample *prev, const struct pt_rate_sample *cur);

/* What top shows of a VM. */
struct pt_top_vm {
	uint32_t vm, pid;
	char mode[16];	/* dirty-ring, bitmap */
	bool tracked;	/* the canary covers its mode */
	char state[12]; /* idle, active, stopped, done */
	char doubt[64]; /* none, or why a verdict would be "keep" now */
	uint32_t cmd;
	uint64_t epoch, written;
	uint64_t written_ms; /* when the service counted `written` (0: not yet) */
	double svc_rate;     /* the service's own (tick to tick); < 0 unknown */
	double rate;	     /* between top's samples (pt_top_rates); < 0 unknown */
	uint32_t last_cmd;
	uint64_t last_hinted, last_free, last_kept;
};

struct pt_top_sample {
	int pid;       /* the service */
	uint64_t t_ms; /* status.json "time_ms" */
	char coverage[200];
	unsigned nvms;
	struct pt_top_vm vms[PT_MAX_VMS];
};

/* Parses status.json text. 0, or -EINVAL when it is not one the service wrote. */
int pt_top_parse(const char *json, struct pt_top_sample *s);
/* Fills cur's rates from prev (same VM index and pid); the service's rate where unknown. */
void pt_top_rates(const struct pt_top_sample *prev, struct pt_top_sample *cur);
/* The view, at most @cols columns and @rows lines (a status line included). */
void pt_top_render(FILE *f, const struct pt_top_sample *s, bool alive, unsigned cols,
		   unsigned rows);
/* One JSON object (one line) per sample. */
void pt_top_json(FILE *f, const struct pt_top_sample *s);

struct pt_top_opts {
	bool json;
	long iterations;      /* 0: until q, Ctrl-C or SIGTERM */
	unsigned interval_ms; /* between samples */
};

int pt_top_run(const struct pt_config *cfg, const struct pt_top_opts *o);

#endif
