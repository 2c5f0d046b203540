/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Who a peer is and who may register which VM (docs/PROTOCOL.md section 2).
 *
 * A process is named by a pidfd, never by its pid number alone: a pid is reused once its
 * process is reaped, a pidfd keeps naming the process it was opened for and becomes readable
 * when that process exits. Where only a pid is at hand, the pair (pid, start time) names the
 * process and a pidfd is opened and the start time checked again after it, closing the race.
 */
#ifndef PT_IDENTITY_H
#define PT_IDENTITY_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "shared/procfs.h"

/* Real uid of the process (owner of /proc/PID). */
int pt_proc_uid(uint32_t pid, uid_t *uid);

/* A pidfd of @pid, provided @pid is still the process that started at @start; else -ESRCH. */
int pt_pidfd_open_exact(uint32_t pid, uint64_t start);
/* The process of @pidfd has exited (or cannot be told: fail safe, "exited"). */
bool pt_pidfd_exited(int pidfd);

/* A fresh, nonzero 64-bit registration token from getrandom(). */
uint64_t pt_token_new(void);
/* Compares in constant time: a peer learns nothing from how fast a wrong token is refused. */
bool pt_token_eq(uint64_t a, uint64_t b);

/* @a and @b (both this process's descriptors) are the same open file: the same KVM VM. */
bool pt_same_open_file(int a, int b);

/* What the service knows of a REGISTER when it decides whether to honour it. */
struct pt_reg_claim {
	uid_t peer_uid;
	bool peer_is_vmm; /* the process that connected is alive and is the VMM (pidfd) */
	bool peer_exited; /* the process that connected had pid vmm_pid and has exited since */
	uint32_t vmm_pid;
	uid_t vmm_uid;
	int vm_fd;	/* REGISTER2's KVM VM descriptor (checked: anon_inode:kvm-vm), or -1 */
	int held_vm_fd; /* the descriptor held for this VMM's registration, or -1 */
};

/* 0 if the claim may register the VM, else -PT_E_PERM and *why says which rule failed. */
int pt_may_register(const struct pt_reg_claim *c, const char **why);

#endif
