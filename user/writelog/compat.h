/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Can a VMM make 32-bit (compat) syscalls? On x86-64 the syscall tracepoints skip every
 * syscall made in 32-bit mode, so a 32-bit VMM's memslot changes, dirty-log syncs and ring
 * resets are invisible to BPF, and its VM must get "keep" verdicts (PT_VM_COMPAT).
 *
 * Three clues, in the shape of the learned-VM check (vmlog.h, pt_vm_clues): pt_compat, the
 * record of processes that ran 32-bit code (BPF marks them at exec and fork), which answers for
 * a process that started after it became complete (at a fresh start a BPF task iterator marks
 * the processes that exist already); else the ELF class of /proc/PID/exe, which the service may
 * not be allowed to read (no CAP_SYS_PTRACE under the unit); else "cannot tell", which is yes.
 */
#ifndef PT_COMPAT_H
#define PT_COMPAT_H

#include <stdbool.h>
#include <stdint.h>

#include "loader.h"

struct pt_compat_clues {
	int marked;	  /* pt_compat: 1 it ran 32-bit code, 0 not seen, -1 unknown */
	bool after_since; /* it started after pt_compat became complete (no loss since) */
	int exe;	  /* /proc/PID/exe: 1 a 32-bit (or not a 64-bit ELF), 0 64-bit, -1 unread */
};

/* May the process run 32-bit code? *why names the clue that decided. */
bool pt_compat_clues_decide(const struct pt_compat_clues *c, const char **why);
/* The clues about process `pid`; -ESRCH if it is gone or its pid changed hands meanwhile. */
int pt_vmm_compat_clues(struct pt_tracker *t, uint32_t pid, struct pt_compat_clues *c);
/* The ELF class of the file at `path`: 0 64-bit, 1 anything else readable, -1 unreadable. */
int pt_elf_not_64bit(const char *path);
/*
 * Runs the task iterator pt_compat_iter once: it marks in pt_compat every process that exists
 * now and whose mm is not a plain 64-bit one, from kernel state (no ptrace rights needed, so it
 * works under the unit's capabilities). Run once pt_exec and pt_fork are attached, it makes the
 * record complete for every process. *sum is what it saw. 0 if it visited every task and could
 * judge each; -ENOENT if it is not loaded, -EOPNOTSUPP if this kernel has nothing to judge by,
 * other -errno if it could not run or stopped early.
 */
int pt_compat_iter_run(struct pt_tracker *t, struct pt_compat_iter_sum *sum);
/*
 * Marks VM `vm` (tracked, pid already in pt_vm_by_tgid so that a later exec is BPF's to see)
 * PT_VM_COMPAT if its VMM may run 32-bit code, with a warning. Returns whether it did.
 */
bool pt_vm_check_compat(struct pt_tracker *t, uint32_t vm);

#endif
