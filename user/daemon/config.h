/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The service's configuration: its struct, its defaults and the parser of
 * /etc/pagetrack/pagetrack.conf. The service, the status writer and the CLI all read it; it
 * depends on none of them.
 */
#ifndef PT_CONFIG_H
#define PT_CONFIG_H

#include <stdbool.h>

#define PT_DEFAULT_SOCKET  "/run/pagetrack/balloon.sock"
#define PT_DEFAULT_RUN_DIR "/run/pagetrack"
#define PT_DEFAULT_CONFIG  "/etc/pagetrack/pagetrack.conf"

struct pt_config {
	char socket[256];  /* AF_UNIX path the devices connect to */
	char pin_dir[256]; /* bpffs directory of maps and links */
	char run_dir[256]; /* status.json lives here */
	char metrics[256]; /* Prometheus textfile; "" = run_dir/metrics.prom, "-" = off */
	unsigned log_mb;   /* write-log bitmap size */
	unsigned learn_mb; /* log reserved per VM whose memslots are learned (MiB of bitmap) */
	int tdp;	   /* -1 auto */
	bool canary;	   /* run the coverage canary at start (default yes) */
	bool verbose;
	unsigned tick_ms; /* status/metrics/VMM liveness period */
	/* Per-uid quotas (root is exempt): connections open, VMs registered, MiB of write-log
	 * bitmap those VMs hold. */
	unsigned quota_conns, quota_vms, quota_log_mb;
	int listen_fd;		 /* socket activation: inherited listening socket, else -1 */
	const char *config_path; /* for reload */
};

void pt_config_defaults(struct pt_config *cfg);
/* Reads key = value lines; unknown keys are errors. Returns 0 or negative errno. */
int pt_config_load(struct pt_config *cfg, const char *path, bool must_exist);

#endif
