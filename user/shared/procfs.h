/* SPDX-License-Identifier: GPL-2.0 */
/* What /proc says of another process without any right over it (no ptrace access). */
#ifndef PT_PROCFS_H
#define PT_PROCFS_H

#include <stdint.h>

/* Field 22 of /proc/PID/stat (clock ticks after boot): tells this process from a later one. */
int pt_proc_start_time(uint32_t pid, uint64_t *start);

#endif
