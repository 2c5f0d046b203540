/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the service shows operators: run_dir/status.json (read by `pagetrackd status`) and a
 * Prometheus textfile (node_exporter's textfile collector), both replaced atomically.
 */
#ifndef PT_STATUS_H
#define PT_STATUS_H

#include <stdbool.h>
#include <stdint.h>

#include "writelog/canary.h"
#include "cmdstate.h"
#include "server.h"
#include "config.h"

struct pt_status_counters {
	uint64_t frames, errors, verdicts, hint_records;
	/* Registrations (PROTOCOL.md section 2): VMs started afresh because another connection
	 * registered them without the token, resumed with it, refused (PT_E_PERM), refused or
	 * connections closed over a uid's quota. */
	uint64_t takeovers, resumes, refused_perm, refused_quota;
};

void pt_status_write(const struct pt_config *cfg, struct pt_tracker *t,
		     const struct pt_coverage *cov, struct pt_vmctx *const *vms,
		     const struct pt_server_stats *st, const struct pt_status_counters *n);
/*
 * Samples the written-page counts (and dirty rates) of the VMs in turn, from where the last
 * call stopped, until @budget_words log words were read (at least one VM). Returns how many
 * VMs it sampled. pt_status_write() calls it once per tick.
 */
unsigned pt_status_sample(struct pt_tracker *t, struct pt_vmctx *const *vms, uint64_t t_ms,
			  uint64_t budget_words);
/* The VM's last sample: pages written since ARM and when it was read (false: none yet). */
bool pt_status_written(const struct pt_tracker *t, const struct pt_vmctx *c, uint64_t *written,
		       uint64_t *t_ms);
/* `pagetrackd status [--json]`: prints the status file and what is pinned. */
int pt_status_show(const struct pt_config *cfg, int json);
const char *pt_cmd_state_str(enum pt_cmd_state s);

#endif
