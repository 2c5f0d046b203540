/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The BPF loader: mounts bpffs/tracefs when missing, loads bpf/writelog.bpf.c, reuses or pins
 * its maps by name under the pin directory, attaches the programs through pinned links (so a
 * restart or a crash of the service leaves the programs running: no gap in the write log),
 * and maps the write log and the per-VM state into this process.
 */
#ifndef PT_LOADER_H
#define PT_LOADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "writelog.h"

#define PT_DEFAULT_PIN_DIR "/sys/fs/bpf/pagetrack"

struct writelog_bpf;

struct pt_loader_opts {
	const char *pin_dir; /* NULL: PT_DEFAULT_PIN_DIR */
	unsigned log_mb;     /* write-log bitmap size; 0: PT_DEFAULT_LOG_MB */
	int tdp;	     /* -1: detect from kvm_intel.ept / kvm_amd.npt; 0/1: force */
	bool no_attach;	     /* load and pin maps only (BPF_PROG_TEST_RUN tests) */
	bool no_pin;	     /* private maps and links, nothing pinned: gone with the process */
	bool no_compat;	     /* leave pt_exec/pt_fork (and the iterator) out (fallback tests) */
	bool no_compat_iter; /* leave the start's task iterator out (fallback tests) */
	bool raise_gives_up; /* every raise_to() gives up at once, as after lost races (tests) */
};

struct pt_tracker {
	struct writelog_bpf *skel;
	char pin_dir[256];
	bool tdp;
	bool no_pin;
	uint64_t pidns_ino;	 /* the service's PID namespace when not the initial one, else 0 */
	bool reused_maps;	 /* maps came from pins of an earlier run (restart) */
	bool reused_links;	 /* programs were still attached when we started */
	int pin_lock;		 /* flock on pin_dir (lock_pin_dir()), or -1 */
	int attached;		 /* programs attached */
	int compat_progs;	 /* pt_exec, pt_fork attached: 2 when 32-bit code is followed */
	int compat_off;		 /* 1: no start iterator; 2: nor pt_exec/pt_fork (could not load) */
	struct pt_vm_state *vms; /* mmap of pt_vm_state, PT_MAX_VMS entries */
	uint64_t *pending;	 /* mmap of pt_pending: [PT_PENDING], [PT_GEN] */
	uint64_t *log;		 /* mmap of pt_log */
	/* mmap of pt_cache: one entry per possible CPU (ncpu of them) */
	struct pt_cpu_ring *cpus;
	int ncpu;
	uint64_t log_words;
	char progs[256];	    /* "name:attached name:off ..." for status */
	struct bpf_link *links[12]; /* no_pin: the only reference; pinned: ours beside the pin */
	int nlinks;
};

int pt_tracker_open(struct pt_tracker **out, const struct pt_loader_opts *opts);
/* Detaches nothing: pinned links keep tracking until pt_tracker_unpin(). NULL-safe. */
void pt_tracker_close(struct pt_tracker *t);
/* Removes every pin under dir (maps and links), keeping the directory. */
int pt_tracker_unpin_entries(const char *dir);
/* Removes every pin under dir (maps and links) and dir: the uninstall step. -EBUSY while a
 * tracker (a running service) holds dir. */
int pt_tracker_unpin(const char *dir);
int pt_ensure_mounts(void);
/* Make every CPU's pt_ring_push cache stale: after any change of the VM set or a slot table. */
void pt_tracker_bump_generation(struct pt_tracker *t);
bool pt_host_tdp(void);
/* CLOCK_BOOTTIME in ns, the clock of /proc/PID/stat's start times and of pt_created_since;
 * 0 if this process's clock is shifted from the kernel's (a time namespace). */
uint64_t pt_boottime_ns(void);

#endif
