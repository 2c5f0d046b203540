/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The write log from userspace: which VMs are tracked, their memslot tables, arming an epoch,
 * and reading which pages were written since. All reads go through the mmapped maps.
 */
#ifndef PT_VMLOG_H
#define PT_VMLOG_H

#include <stdbool.h>
#include <stdint.h>

#include "loader.h"

struct pt_slot_cfg {
	uint64_t gpa;
	uint64_t size;
	uint32_t id; /* as_id << 16 | slot id */
	bool logged; /* KVM_MEM_LOG_DIRTY_PAGES is set on the slot */
};

/*
 * Track the VMM process `tgid`. With n > 0 the memslot table is `slots`; with n == 0 the table
 * is learned from the VMM's KVM_SET_USER_MEMORY_REGION ioctls and `learn_pages` of bitmap are
 * reserved (if the VMM may already hold a VM, pt_vmm_may_hold_vm(), the memslots it made before
 * are unknown for good: PT_VM_SLOTS_UNSEEN). If `tgid` is already tracked (service restarted) its
 * index is returned and *existed set: its log continues. Returns 0 or negative errno.
 */
int pt_vm_track(struct pt_tracker *t, uint32_t tgid, const struct pt_slot_cfg *slots, unsigned n,
		uint64_t learn_pages, uint32_t *vm, bool *existed);
int pt_vm_untrack(struct pt_tracker *t, uint32_t vm);
/*
 * Scan /proc/PID/fd for a KVM VM descriptor (anon_inode:kvm-vm): 1 found, 0 none, -1 cannot
 * tell (no such process, or a link unreadable: another user's process or one with capabilities
 * the reader lacks).
 */
int pt_pid_scan_kvm_vm(uint32_t pid);

/* What is known about whether a VMM process made a KVM VM before it registered. */
struct pt_vm_clues {
	int created;	  /* pt_vm_created: 1 it issued KVM_CREATE_VM, 0 none seen, -1 unknown */
	bool after_since; /* it started after pt_vm_created became complete (no loss since) */
	int fds;	  /* pt_pid_scan_kvm_vm() */
};
/*
 * May the process hold a VM whose memslots were never seen? A creation or a descriptor seen
 * says yes; a process that started after the program and created none, or whose descriptors
 * show none, says no; anything else cannot tell, which is yes. *why names the clue.
 */
bool pt_vm_clues_decide(const struct pt_vm_clues *c, const char **why);
/* The clues about process `pid`; -ESRCH if it is gone or its pid changed hands meanwhile. */
int pt_vmm_vm_clues(struct pt_tracker *t, uint32_t pid, struct pt_vm_clues *c);
/* Gathers the clues of process `pid` and decides (logged at debug level with the reason). */
bool pt_vmm_may_hold_vm(struct pt_tracker *t, uint32_t pid);
/* Event counters of a VM, summed over CPUs. */
int pt_vm_stats_get(struct pt_tracker *t, uint32_t vm, struct pt_vm_stats *sum);
int pt_vm_find(struct pt_tracker *t, uint32_t tgid, uint32_t *vm);

/* Arm: clear the VM's log region, then start a new epoch (returned). */
int pt_vm_arm(struct pt_tracker *t, uint32_t vm, uint64_t *epoch);
/* The same, handing each log word of the ending epoch to fold() as it is atomically cleared. */
typedef void (*pt_log_fold)(void *arg, uint64_t word, uint64_t written);
int pt_vm_arm_fold(struct pt_tracker *t, uint32_t vm, pt_log_fold fold, void *arg, uint64_t *epoch);
/* Declare that writes may have been missed (e.g. a restart gap) in the current epoch. */
void pt_vm_taint(struct pt_tracker *t, uint32_t vm, uint32_t reason);

/* Epoch `epoch` of the VM is tainted: >=, since a taint BPF could not record exactly leaves all
 * ones (raise_to in writelog.bpf.c) until the index goes to another VM. */
static inline bool pt_epoch_tainted(const struct pt_vm_state *st, uint64_t epoch)
{
	return __atomic_load_n(&st->taint_epoch, __ATOMIC_ACQUIRE) >= epoch;
}
/* A mark BPF could not date went to all ones (raise_to): every epoch of the VM is tainted (the
 * taint), or in doubt for a userfaultfd-mode verdict (the memslot mark), until the index goes
 * to another VM. The operator is told: nothing but the VMM's exit clears it. */
static inline bool pt_vm_marks_saturated(const struct pt_vm_state *st)
{
	return __atomic_load_n(&st->taint_epoch, __ATOMIC_RELAXED) == ~0ull ||
	       __atomic_load_n(&st->slot_change_epoch, __ATOMIC_RELAXED) == ~0ull;
}
/* Did the VMM change a memslot (or an ioctl that might have) in the VM's current epoch? */
bool pt_vm_slots_changed(struct pt_tracker *t, uint32_t vm);

int pt_vm_slots_get(struct pt_tracker *t, uint32_t vm, struct pt_vm_slots *out);
/* Region page index of a guest frame; -ENOENT if no valid slot (of address space 0) holds it. */
int pt_slots_page(const struct pt_vm_slots *sl, uint64_t gfn, uint64_t *page);

/* Set the bits of n pages from region page `page`: writes KVM did not see (the VMM's own). */
void pt_vm_mark_written(struct pt_tracker *t, uint32_t vm, uint64_t page, uint64_t n);

/* Every guest frame whose bit is set, in slot order (malloc'd; NULL when *n == 0). */
int pt_vm_written_gfns(struct pt_tracker *t, uint32_t vm, uint64_t **out, size_t *n);

static inline struct pt_vm_state *pt_vm(struct pt_tracker *t, uint32_t vm)
{
	return &t->vms[vm];
}

/* Was page `page` of the VM's region written since the arm? */
static inline bool pt_vm_page_written(struct pt_tracker *t, uint32_t vm, uint64_t page)
{
	uint64_t bit = t->vms[vm].log_bit_base + page;

	return __atomic_load_n(&t->log[bit / 64], __ATOMIC_RELAXED) & (1ull << (bit % 64));
}

/* Mark pages of word `w` written (atomic: BPF sets bits in the same word concurrently). */
static inline void pt_vm_log_or(struct pt_tracker *t, uint32_t vm, uint64_t w, uint64_t mask)
{
	__atomic_fetch_or(&t->log[t->vms[vm].log_bit_base / 64 + w], mask, __ATOMIC_SEQ_CST);
}

/* Word `w` (64 pages from page w * 64) of the VM's region. The region is 64-page aligned. */
static inline uint64_t pt_vm_log_word(struct pt_tracker *t, uint32_t vm, uint64_t w)
{
	return __atomic_load_n(&t->log[t->vms[vm].log_bit_base / 64 + w], __ATOMIC_RELAXED);
}

#endif
