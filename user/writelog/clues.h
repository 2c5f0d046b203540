/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Questions about a process that a BPF record answers from the moment its program was attached,
 * and /proc answers where the service may read it: may this VMM hold a VM whose memslots were
 * never seen (pt_vm_created, vmlog.c), may it run 32-bit code (pt_compat, compat.c)? Both are
 * decided the same way, here.
 */
#ifndef PT_CLUES_H
#define PT_CLUES_H

#include <stdbool.h>
#include <stdint.h>

struct bpf_map;

/* What a decision says, one reason per way it can go (pt_clues_decide). */
struct pt_clue_why {
	const char *recorded;	/* the record has the process */
	const char *proc_yes;	/* /proc says yes */
	const char *covered;	/* started after the record was complete, and not in it */
	const char *proc_no;	/* /proc says no */
	const char *unreadable; /* covered, but the record could not be read; /proc unread */
	const char *before;	/* started before the record was complete; /proc unread */
};

/*
 * Yes if the record (1 has it, 0 not, -1 unreadable) or /proc (1 yes, 0 no, -1 unread) says
 * so; no if the process started after the record became complete and is not in it, or if /proc
 * says no; anything else cannot tell, which is yes. *why is the matching reason of @w.
 */
bool pt_clues_decide(int recorded, bool after_since, int proc, const struct pt_clue_why *w,
		     const char **why);

/* 1 if process @pid, started at @start (/proc/PID/stat ticks), has an entry in the
 * task-storage map @m, 0 if not, -1 if the map cannot say or the pid changed hands. */
int pt_pid_recorded(struct bpf_map *m, uint32_t pid, uint64_t start);

/*
 * Did a process that started at `ticks` (/proc/PID/stat) start after the record behind `since`
 * (pt_created_since, pt_compat_since) became complete, and after the last event it missed? The
 * tick count rounds the start down, so ticks * tick > since proves it.
 */
bool pt_started_after_since(struct bpf_map *since, uint64_t ticks);

/*
 * The three clues about process @pid: *recorded (pt_pid_recorded() in @record), *after
 * (pt_started_after_since() of @since) and *proc (@proc_says(pid): 1 yes, 0 no, -1 unread),
 * asked only where the record does not answer, since it reads /proc on the event loop. 0, or
 * -ESRCH if the process is gone or its pid changed hands meanwhile (*recorded and *proc -1).
 */
int pt_clues_gather(uint32_t pid, struct bpf_map *record, struct bpf_map *since,
		    int (*proc_says)(uint32_t pid), int *recorded, bool *after, int *proc);

#endif
