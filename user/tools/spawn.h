/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Starts a private pagetrackd (its own socket, pin directory and run directory) and stops it
 * again, removing its pins. Used by the demo, the benchmark and the tests, so none of them
 * ever disturbs a service already running on the machine.
 */
#ifndef PT_SPAWN_H
#define PT_SPAWN_H

#include <sys/types.h>

struct pt_spawned {
	pid_t pid;
	char dir[128];	   /* temporary run directory */
	char socket[192];  /* dir/balloon.sock */
	char pin_dir[128]; /* /sys/fs/bpf/pagetrack-<tag>-<pid> */
	char log[192];	   /* dir/pagetrackd.log: the service's stderr */
};

/* bin: path of pagetrackd, NULL for the one beside the running executable (or $BUILD). */
int pt_spawn_service(struct pt_spawned *s, const char *bin, const char *tag,
		     const char *const *extra_args);
/* SIGTERM, wait, remove pins and the directory. Returns the service's exit status. */
int pt_spawn_stop(struct pt_spawned *s, int sig);
/* Path of pagetrackd to run: $PAGETRACKD, else beside /proc/self/exe, else $BUILD/pagetrackd. */
const char *pt_spawn_default_bin(char *buf, size_t len);

#endif
