/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Shared between bpf/writelog.bpf.c and userspace: the maps that make up the write log.
 * Plain __u32/__u64 structs only, so both sides (and bpftool's BTF dump) agree.
 *
 * Maps (pinned by these names under the pin directory, default /sys/fs/bpf/pagetrack/):
 *   pt_vm_by_tgid  HASH   VMM tgid -> vm index (which processes are tracked VMs)
 *   pt_vm_state    ARRAY  vm index -> struct pt_vm_state (mmapable: epoch, sync, taint, counters)
 *   pt_vm_slots    ARRAY  vm index -> struct pt_vm_slots (the VM's memslot table)
 *   pt_log         ARRAY  u64 words of the write-log bitmap (mmapable); each VM owns a region
 *   pt_rings       ARRAY  vm index * PT_MAX_VCPUS + vcpu -> struct pt_ring (pre-arm entries)
 *   pt_ioctl       HASH   thread -> struct pt_ioctl (an ioctl between its enter and exit)
 *   pt_pending     ARRAY  u64 [PT_PENDING] threads in a watched ioctl, [PT_GEN] cache generation
 *   pt_vm_created  TASK_STORAGE process (pidfd) -> struct pt_vm_created (it made a KVM VM)
 *   pt_created_since ARRAY u64 [PT_CREATED_SINCE] since when pt_vm_created is complete,
 *                  [PT_CREATED_LOST] last creation it missed (CLOCK_BOOTTIME ns),
 *                  [PT_CREATED_PROG] the pt_ioctl_enter program recording it
 *   pt_compat      TASK_STORAGE process (pidfd) -> struct pt_compat (it ran 32-bit code)
 *   pt_compat_since ARRAY u64, as pt_created_since, for pt_compat
 *   pt_vm_stats    PERCPU vm index -> struct pt_vm_stats (event counters)
 *   pt_cache       ARRAY  cpu -> struct pt_cpu_ring (mmapable: the dirty ring pushed last on
 *                         the CPU, and the CPU's count of recorded pushes per VM)
 */
#ifndef PAGETRACK_WRITELOG_H
#define PAGETRACK_WRITELOG_H

#ifndef __bpf__
#include <linux/types.h>
#endif

#define PT_MAX_VMS	  256
#define PT_MAX_SLOTS	  32
#define PT_PAGE_SHIFT	  12
#define PT_DEFAULT_LOG_MB 32 /* 2^28 bits: 1 TiB of guest memory in 4 KiB pages */

/* pt_vm_state.flags */
#define PT_VM_ACTIVE	  (1u << 0) /* index in use */
#define PT_VM_DIRTY_RING  (1u << 1) /* VMM enabled KVM_CAP_DIRTY_LOG_RING(_ACQ_REL) */
#define PT_VM_LEARN_SLOTS (1u << 2) /* learn memslots from the VMM's ioctls */
/* KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (or a CLEAR) seen: KVM_GET_DIRTY_LOG protects nothing */
#define PT_VM_MANUAL_PROTECT (1u << 3)
/* KVM_CREATE_VM seen while tracked: every KVM_ENABLE_CAP of the VM has been seen too */
#define PT_VM_SEEN_CREATE (1u << 4)
/* Slots are learned, but the VMM may have held a VM when tracking began (userspace, at
 * REGISTER), or changes the memslots of a VM not created while tracked (BPF): memslots made
 * before were never seen, so the table is incomplete for good */
#define PT_VM_SLOTS_UNSEEN (1u << 5)
/* The VMM may make 32-bit (compat) syscalls, which the syscall tracepoints never show: its
 * memslot changes, dirty-log syncs and ring resets go unseen, so no verdict can vouch for a
 * page. Set by BPF (a tracked VMM exec'd a 32-bit image) or userspace (at REGISTER); sticky. */
#define PT_VM_COMPAT (1u << 6)

/* Why an epoch is tainted (pt_vm_state.taint_reason, a bit set; sticky until next arm). */
#define PT_TAINT_UNKNOWN_SLOT (1u << 0) /* write to a slot id not in the table */
#define PT_TAINT_GFN_RANGE    (1u << 1) /* offset/GPA past the slot or outside every slot */
#define PT_TAINT_LOG_FULL     (1u << 2) /* slot does not fit the VM's bitmap region */
#define PT_TAINT_SLOT_CHANGE  (1u << 3) /* memslot created/deleted/moved during the epoch */
#define PT_TAINT_RING_UNRESET (1u << 4) /* a ring that cannot be followed (vCPU index too big) */
#define PT_TAINT_USER	      (1u << 5) /* userspace declared a gap (restart, lost state) */

/* pt_slot.flags */
#define PT_SLOT_VALID (1u << 0)
#define PT_SLOT_NOLOG (1u << 1) /* KVM does not log this slot's writes: nothing is confirmable */

/*
 * Per-VM state, written by BPF and by userspace through an mmap of pt_vm_state, so every
 * field is updated with atomics or single aligned stores. Epochs only grow: a field that
 * records "the epoch in which X happened" is compared with the current epoch instead of
 * being cleared at arm time, so arming never races with BPF updates.
 */
struct pt_vm_state {
	__u32 tgid;	       /* VMM process */
	__u32 flags;	       /* PT_VM_* */
	__u64 epoch;	       /* current epoch; userspace bumps it after clearing the log */
	__u64 sync_epoch;      /* epoch of the last complete dirty-log sync (any kind) */
	__u64 ring_sync_epoch; /* epoch of the last complete KVM_RESET_DIRTY_RINGS: it succeeds
				* only on a dirty-ring VM, so it also proves the VM's mode */
	__u64 taint_epoch;  /* epoch in which the last taint happened; all ones: a taint BPF could
			     * not record exactly (raise_to), every epoch is tainted */
	__u32 taint_reason; /* PT_TAINT_* of taint_epoch (OR-ed, older epochs' bits stay: for
			     * reports only) */
	__u32 pad;
	__u64 slot_change_epoch; /* last epoch a memslot change (PT_TAINT_SLOT_CHANGE) may fall
				  * in: the one taint a userfaultfd-mode VM's verdict depends on */
	__u64 start_time;	 /* VMM start time (/proc/PID/stat, clock ticks): with tgid, the
				  * VM's identity; a reused pid has another. Userspace only. */
	__u64 log_bit_base;	 /* first bit of this VM's region in pt_log */
	__u64 log_bits;		 /* size of the region */
	/* counters (monotonic) */
	__u64 lost;		/* events that could not be recorded (each taints) */
	__u64 syncs;		/* complete syncs */
	__u64 syncs_incomplete; /* ring resets that left pre-arm entries: not a sync, not a loss */
	__u64 slot_changes;	/* memslot ioctls seen */
	__u64 slot_moves;	/* known memslots deleted, moved, resized or re-created (not a
				 * flags change): the memory behind their GPAs may be another */
};

/* Per-CPU event counters (pt_vm_stats, PERCPU_ARRAY by vm index): no shared cache line on
 * the per-write path. Userspace sums the CPUs. */
struct pt_vm_stats {
	__u64 ring_writes;    /* unused since the count moved to pt_cpu_ring (kept: 0) */
	__u64 fault_writes;   /* write faults recorded (TDP hosts) */
	__u64 faults_ignored; /* write faults seen while the fault path is off (no TDP) */
};

/*
 * Per-CPU cache of pt_ring_push: the dirty ring pushed last on this CPU, its VM, and the slot
 * of its last write, so that the next push of that ring needs no helper call and no lookup
 * but its log word. Valid while pt_pending[PT_GEN] equals `gen`: the generation moves when
 * the tracked-VM set changes (userspace), a memslot table changes or a tracked VMM creates a
 * vCPU (BPF).
 */
struct pt_cpu_cache {
	__u64 ring;   /* struct kvm_dirty_ring * of the last push */
	__u64 gen;    /* pt_pending[PT_GEN], read before `ring` was looked up */
	__u64 epoch;  /* VM epoch in which `ring` was noted in pt_rings (0: not yet) */
	__u64 bit;    /* pt_log bit of page 0 of `slot` */
	__u64 npages; /* pages of `slot` inside the VM's region (0: no fast path) */
	__u32 vm;
	__u32 tgid; /* pt_vm_state.tgid of `vm` when it was looked up */
	__u32 slot; /* as_id << 16 | slot id of the last logged push */
	__u32 pad;
	__u64 pad2; /* to 64 bytes: one cache line */
};

/*
 * One CPU's entry of pt_cache. The map is mmapable, so its values start page-aligned and,
 * every entry being a multiple of 64 bytes, the cache `c` is exactly one cache line. The
 * push's fast path touches that line, the count of its VM here and the log word: under
 * BPF_PROG_TEST_RUN every further map it read cost as much again (per-CPU counters elsewhere
 * took a lookup of the CPU's pointer and a line in another region, about 12 ns a push).
 */
struct pt_cpu_ring {
	struct pt_cpu_cache c;
	/* Dirty-ring pushes recorded on this CPU, by vm index (what pt_vm_stats.ring_writes
	 * counted): written only by pt_ring_push on this CPU; userspace sums the CPUs and zeroes
	 * an index before a VM gets it. */
	__u64 ring_writes[PT_MAX_VMS];
};

#define PT_PENDING 0 /* pt_pending[0]: threads inside a watched ioctl */
#define PT_GEN	   1 /* pt_pending[1]: generation of what pt_cpu_cache may hold */

struct pt_slot {
	__u64 base_gfn;
	__u64 npages;
	__u64 bit_off;	  /* offset of the slot's first page inside the VM's region */
	__u32 id;	  /* as_id << 16 | slot id, as in KVM's ioctls and kvm_dirty_ring_push */
	__u32 flags;	  /* PT_SLOT_* */
	__u64 sync_epoch; /* bitmap mode: epoch of the last KVM_GET_DIRTY_LOG of this slot */
};

struct pt_vm_slots {
	__u32 nslots; /* entries in use, valid or not */
	__u32 pad;
	__u64 next_bit; /* next free bit in the VM's region, for slots learned from ioctls */
	struct pt_slot slots[PT_MAX_SLOTS];
};

/* Per dirty ring: the first entry pushed in the current epoch. Entries before it predate the
 * arm; a sync that leaves any of them un-reset left a page writable without logging. */
struct pt_ring {
	__u64 epoch;
	__u32 first_idx;
	__u32 vm;
};

struct pt_ioctl {
	__u32 cmd;
	__u32 vm;
	__u32 incomplete; /* set by kvm_dirty_ring_reset when a pre-arm entry stayed */
	__u32 tgid;	  /* host tgid of the caller: the VM index must still be its own */
	__u64 arg;
	__u64 epoch; /* epoch when the ioctl started: a sync counts only for an epoch armed
		      * before it began */
};

/*
 * KVM ioctl numbers the tracker watches (x86-64 values; user/loader.c checks them against
 * <linux/kvm.h> at build time where the header has them).
 */
#define PT_KVM_SET_USER_MEMORY_REGION	     0x4020ae46u
#define PT_KVM_SET_USER_MEMORY_REGION2	     0x40a0ae49u
#define PT_KVM_ENABLE_CAP		     0x4068aea3u
#define PT_KVM_GET_DIRTY_LOG		     0x4010ae42u
#define PT_KVM_CLEAR_DIRTY_LOG		     0xc018aec0u
#define PT_KVM_RESET_DIRTY_RINGS	     0x0000aec7u
#define PT_KVM_CREATE_VM		     0x0000ae01u
#define PT_KVM_CREATE_VCPU		     0x0000ae41u
#define PT_KVM_CAP_DIRTY_LOG_RING	     192
#define PT_KVM_CAP_DIRTY_LOG_RING_ACQ_REL    223
#define PT_KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 168
#define PT_KVM_MEM_LOG_DIRTY_PAGES	     (1u << 0)

#define PT_MAX_VCPUS 512 /* dirty rings tracked per VM (one per vCPU) */

/* pt_vm_created: a process issued KVM_CREATE_VM (possibly failed) while the program ran. */
struct pt_vm_created {
	__u64 first_ns; /* CLOCK_BOOTTIME of its first KVM_CREATE_VM seen */
	__u64 count;	/* KVM_CREATE_VM ioctls seen */
};

/*
 * pt_compat: a process that ran 32-bit code while the programs were attached (x86-64: ia32 or
 * x32). Task storage on the thread-group leader, as pt_vm_created. Never cleared: a process
 * that was 32-bit may hold a VM whose memslots it changed unseen.
 */
struct pt_compat {
	__u64 first_ns; /* CLOCK_BOOTTIME when first marked */
	__u32 how;	/* PT_COMPAT_* */
	__u32 pad;
};

/* pt_compat.how */
#define PT_COMPAT_EXEC (1u << 0) /* exec'd a 32-bit ELF image (or one BPF could not read) */
#define PT_COMPAT_FORK (1u << 1) /* made by a 32-bit fork/clone, or forked by a marked process */
#define PT_COMPAT_USER (1u << 2) /* marked from userspace (tests) */
#define PT_COMPAT_SCAN (1u << 3) /* found at start (pt_compat_iter): its mm is not 64-bit */

/* The start's task iterator (pt_compat_iter): its one output, written after the last task. */
struct pt_compat_iter_sum {
	__u64 tasks;	/* tasks visited (threads included) */
	__u64 marked;	/* tasks whose mm is not a plain 64-bit one (their process marked) */
	__u32 complete; /* the kernel has the field read (x86-64 mm->context.flags) */
	__u32 pad;
};

/* x86-64 mm->context.flags, low byte (arch/x86/include/asm/mmu.h; #defines, not in BTF). */
#define PT_MM_UPROBE_IA32  0x01u /* set at an ia32 exec */
#define PT_MM_HAS_VSYSCALL 0x02u /* set at a 64-bit exec (not ia32, not x32) */
/* task_struct.flags: a kernel thread (include/linux/sched.h, unchanged since 2.6). */
#define PT_PF_KTHREAD 0x00200000u

/* The kernel's x86 thread_info.status bit for "inside a 32-bit syscall" (TS_COMPAT, 0x0002 since
 * 2.6; a #define, so not in BTF). */
#define PT_TS_COMPAT 0x0002u

#define PT_CREATED_SINCE 0 /* pt_created_since[0]: the map is complete from this time on */
#define PT_CREATED_LOST	 1 /* pt_created_since[1]: the last creation the map missed */
#define PT_CREATED_PROG	 2 /* pt_created_since[2]: id of the program recording since then */

#endif
