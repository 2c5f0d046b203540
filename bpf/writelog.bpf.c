// SPDX-License-Identifier: GPL-2.0
/*
 * The write log: per tracked VM, one bit per guest page written since the VM's current epoch
 * was armed. Fed by KVM tracepoints:
 *
 *   kvm_dirty_ring_push  every page KVM marks dirty in dirty-ring mode (slot + offset)
 *   kvm_page_fault       EPT/NPT violations; a GPA only under TDP, so used only when tdp is set
 *   fast_page_fault      write-protect faults fixed on the fast path (fault->is_tdp)
 *   kvm_dirty_ring_reset the end of a ring reset: did the VMM's sync re-protect every page
 *                        that was dirty before the arm?
 *   sys_enter/exit_ioctl the VMM's memslot changes, dirty-ring enablement and dirty-log syncs
 *   sched_process_exec,  which processes run 32-bit code: their (compat) syscalls never reach
 *   sched_process_fork   the syscall tracepoints, so their VMs cannot be vouched for
 *
 * Anything that cannot be recorded taints the VM's epoch: the reconciler then answers "keep"
 * for every page until the next arm. Userspace owns arming (clear the region, then bump
 * pt_vm_state.epoch); BPF only sets bits and records epochs, so the two never race on a value.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "writelog.h"

char LICENSE[] SEC("license") = "GPL";

/* Host uses two-dimensional paging (EPT/NPT): fault addresses are GPAs. Set by the loader. */
const volatile bool tdp = false;
/*
 * The service's PID namespace when it is not the initial one (a container, a sandbox):
 * VMMs are registered by the pids the service sees, so the programs translate into it.
 */
const volatile __u64 pidns_dev = 0;
const volatile __u64 pidns_ino = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PT_MAX_VMS);
	__type(key, __u32);   /* VMM tgid */
	__type(value, __u32); /* vm index */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_vm_by_tgid SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PT_MAX_VMS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct pt_vm_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_vm_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PT_MAX_VMS);
	__type(key, __u32);
	__type(value, struct pt_vm_slots);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_vm_slots SEC(".maps");

/* The bitmap. max_entries (u64 words) is set by the loader from the configured size. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PT_DEFAULT_LOG_MB * 1024 * 1024 / 8);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_log SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PT_MAX_VMS *PT_MAX_VCPUS);
	__type(key, __u32);
	__type(value, struct pt_ring);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_rings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* pid_tgid of the thread inside the ioctl */
	__type(value, struct pt_ioctl);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_ioctl SEC(".maps");

/*
 * Threads of tracked VMs currently inside a watched ioctl: lets sys_exit_ioctl skip the hash
 * lookup for the millions of other ioctls (KVM_RUN above all). A pinned map rather than a
 * global, so the programs of a restarted service share it with those of the old one.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PT_MAX_VMS);
	__type(key, __u32);
	__type(value, struct pt_vm_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_vm_stats SEC(".maps");

/*
 * One pt_cpu_ring per CPU, indexed by CPU number (max_entries: set by the loader to the
 * possible CPUs): unlike a PERCPU_ARRAY its address takes no load of a per-CPU pointer, one
 * cold load less on every push. Mmapable for its alignment (each cache in one line) and for
 * userspace to read the counts. Pinned: the counts outlive a restart of the service, as the
 * other counters do. Only programs running on that CPU, which cannot be preempted there,
 * write an entry.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct pt_cpu_ring);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_cache SEC(".maps");

/*
 * Which processes created a KVM VM (KVM_CREATE_VM by any thread, seen since the program was
 * attached; the ioctl may have failed), so that REGISTER with learned slots can tell whether a
 * VMM made a VM before it registered without reading its /proc/PID/fd (which needs ptrace
 * rights the service dropped). Task storage on the thread-group leader rather than a hash by
 * pid: it lives exactly as long as the process, a reused pid can never find it, nothing is
 * evicted, and userspace looks it up by pidfd.
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct pt_vm_created);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_vm_created SEC(".maps");

/*
 * [PT_CREATED_SINCE]: CLOCK_BOOTTIME ns from which every KVM_CREATE_VM is in pt_vm_created (set
 * by the loader once the program is attached; 0: not known), [PT_CREATED_PROG] the id of the
 * pt_ioctl_enter that has recorded since then. [PT_CREATED_LOST]: the last time a creation
 * could not be recorded: processes that started before it are not answered by the map.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_created_since SEC(".maps");

/*
 * Processes that ran 32-bit code (pt_exec, pt_fork): what pt_vm_created is for KVM_CREATE_VM,
 * for the question "can this VMM make syscalls the syscall tracepoints do not show?".
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct pt_compat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_compat SEC(".maps");

/* As pt_created_since, for pt_compat: [PT_CREATED_PROG] is the id of the pt_exec recording. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pt_compat_since SEC(".maps");

static __always_inline __u64 *pending_ioctls(void)
{
	__u32 key = PT_PENDING;

	return bpf_map_lookup_elem(&pt_pending, &key);
}

/*
 * Make every CPU's pt_ring_push cache stale. After the change it covers, so that a push that
 * read the old generation and then the old state cannot cache it under the new one.
 */
static __always_inline void bump_generation(void)
{
	__u32 key = PT_GEN;
	__u64 *gen = bpf_map_lookup_elem(&pt_pending, &key);

	if (gen)
		__sync_fetch_and_add(gen, 1);
}

static __always_inline struct pt_vm_stats *vm_stats(__u32 vm)
{
	return bpf_map_lookup_elem(&pt_vm_stats, &vm);
}

static __always_inline struct pt_vm_state *vm_state(__u32 vm)
{
	return bpf_map_lookup_elem(&pt_vm_state, &vm);
}

/* The current process as the service names it; 0 if it is outside the service's namespace. */
static __always_inline __u32 current_tgid(void)
{
	struct bpf_pidns_info ns;

	if (!pidns_ino)
		return bpf_get_current_pid_tgid() >> 32;
	if (bpf_get_ns_current_pid_tgid(pidns_dev, pidns_ino, &ns, sizeof(ns)))
		return 0;
	return ns.tgid;
}

static __always_inline int current_vm(__u32 *vm)
{
	__u32 tgid = current_tgid();
	__u32 *idx = bpf_map_lookup_elem(&pt_vm_by_tgid, &tgid);

	if (!idx)
		return -1;
	*vm = *idx;
	return 0;
}

/* The state of the current process's VM (its index in *vm), or NULL if it holds none. */
static __always_inline struct pt_vm_state *current_vm_state(__u32 *vm)
{
	return current_vm(vm) ? NULL : vm_state(*vm);
}

/* Compare-and-swaps raise_to() tries before it gives up (at most 8, the loop's bound); tests
 * set 0: every raise gives up. */
const volatile __u32 raise_tries = 8;

/*
 * Raise *at to epoch (or a time). It only ever grows: a program that read an old epoch and was
 * delayed must not overwrite the mark of a newer one. Each failed compare-and-swap means the
 * mark moved (another program, or userspace, raised it); after raise_tries of them the mark
 * goes to all ones, the one value no store can lower: a plain store of `epoch` could overwrite
 * a newer epoch's mark and lose it. Readers compare with >=, so all ones marks every epoch
 * from then on (a taint until the VM's index is given to another VM; a time after which
 * nothing counts as recorded).
 */
static __always_inline void raise_to(__u64 *at, __u64 epoch)
{
	__u64 old = *at;

	for (int i = 0; i < 8 && old < epoch; i++) {
		__u64 seen;

		if (i >= raise_tries)
			break;
		seen = __sync_val_compare_and_swap(at, old, epoch);
		if (seen == old)
			return;
		old = seen;
	}
	if (old < epoch)
		*at = ~0ull;
}

/* Mark the current epoch unable to vouch for its log (`reason`: PT_TAINT_*). */
static __always_inline void doubt_epoch(struct pt_vm_state *st, __u32 reason)
{
	__u64 epoch = st->epoch;

	raise_to(&st->taint_epoch, epoch);
	/* The reason bits are informational and OR-ed: a reason from an older epoch only makes
	 * the report say more. A decision that depends on one reason needs its own epoch. */
	if (reason & PT_TAINT_SLOT_CHANGE)
		raise_to(&st->slot_change_epoch, epoch);
	__sync_fetch_and_or(&st->taint_reason, reason);
}

/*
 * A known memslot deleted, moved, resized or re-created, or a memslot ioctl we could not read
 * or follow to its end: not usable in this epoch, and counted for the userfaultfd mode, whose
 * gpa -> hva map may now name other memory for good (KVM gives a slot other memory only by
 * deleting and re-creating it).
 */
static __always_inline void slot_moved(struct pt_vm_state *st)
{
	doubt_epoch(st, PT_TAINT_SLOT_CHANGE);
	__sync_fetch_and_add(&st->slot_moves, 1);
}

/* An event that could not be recorded: the epoch is tainted and the loss counted. */
static __always_inline void taint(struct pt_vm_state *st, __u32 reason)
{
	doubt_epoch(st, reason);
	__sync_fetch_and_add(&st->lost, 1);
}

/* Set the bit for page `page` of the VM's region. Returns 0 or a PT_TAINT_* reason. */
static __always_inline __u32 log_page(struct pt_vm_state *st, __u64 page)
{
	__u64 bit, *word;
	__u32 key;

	if (page >= st->log_bits)
		return PT_TAINT_LOG_FULL;
	bit = st->log_bit_base + page;
	key = bit / 64;
	word = bpf_map_lookup_elem(&pt_log, &key);
	if (!word)
		return PT_TAINT_LOG_FULL;
	if (!(*word & (1ull << (bit % 64))))
		__sync_fetch_and_or(word, 1ull << (bit % 64));
	return 0;
}

static __always_inline struct pt_slot *slot_by_id(struct pt_vm_slots *sl, __u32 id)
{
	for (__u32 i = 0; i < PT_MAX_SLOTS; i++) {
		if (i >= sl->nslots)
			break;
		if (sl->slots[i].id == id && (sl->slots[i].flags & PT_SLOT_VALID))
			return &sl->slots[i];
	}
	return NULL;
}

/* Address space 0 only: a GPA from a fault of the normal (non-SMM) address space. */
static __always_inline struct pt_slot *slot_by_gfn(struct pt_vm_slots *sl, __u64 gfn)
{
	for (__u32 i = 0; i < PT_MAX_SLOTS; i++) {
		struct pt_slot *s;

		if (i >= sl->nslots)
			break;
		s = &sl->slots[i];
		if ((s->flags & PT_SLOT_VALID) && !(s->id >> 16) && gfn >= s->base_gfn &&
		    gfn - s->base_gfn < s->npages)
			return s;
	}
	return NULL;
}

static __always_inline void record_gfn(__u32 vm, struct pt_vm_state *st, __u64 gfn)
{
	struct pt_vm_slots *sl = bpf_map_lookup_elem(&pt_vm_slots, &vm);
	struct pt_slot *s;
	__u32 why;

	if (!sl) {
		taint(st, PT_TAINT_UNKNOWN_SLOT);
		return;
	}
	s = slot_by_gfn(sl, gfn);
	if (!s) {
		taint(st, PT_TAINT_GFN_RANGE);
		return;
	}
	why = log_page(st, s->bit_off + gfn - s->base_gfn);
	if (why) {
		taint(st, why);
	} else {
		struct pt_vm_stats *n = vm_stats(vm);

		if (n)
			n->fault_writes++;
	}
}

/* Remember the first ring entry of this epoch; entries before it predate the arm. */
static __always_inline void note_ring_push(__u32 vm, struct pt_vm_state *st, __u64 epoch,
					   struct kvm_dirty_ring *ring)
{
	__u32 vcpu = BPF_CORE_READ(ring, index);
	__u32 key = vm * PT_MAX_VCPUS + vcpu;
	struct pt_ring *r;

	if (vcpu >= PT_MAX_VCPUS) {
		taint(st, PT_TAINT_RING_UNRESET);
		return;
	}
	r = bpf_map_lookup_elem(&pt_rings, &key);
	if (!r)
		return;
	if (r->epoch != epoch || r->vm != vm + 1) {
		/* The push already advanced dirty_index: this entry is dirty_index - 1. */
		r->first_idx = BPF_CORE_READ(ring, dirty_index) - 1;
		r->vm = vm + 1;
		r->epoch = epoch;
	}
}

/* The fast path's slot: its region bits from `bit`, the pages of it that fit the region. */
static __always_inline void cache_slot(struct pt_cpu_cache *c, struct pt_vm_state *st,
				       struct pt_slot *s, __u32 slot)
{
	__u64 bits = st->log_bits, off = s->bit_off;

	c->slot = slot;
	c->bit = st->log_bit_base + off;
	c->npages = off >= bits ? 0 : (s->npages < bits - off ? s->npages : bits - off);
}

/* A push recorded: counted on this CPU, in the entry the push already holds. */
static __always_inline void count_ring_write(struct pt_cpu_ring *cr, __u32 vm)
{
	if (vm < PT_MAX_VMS)
		cr->ring_writes[vm]++;
}

/*
 * A push of the VM `cr` names, the long way: note the ring once per epoch, find the slot in
 * the table, check and log, and cache the slot for the next push. Everything that cannot be
 * recorded taints here, so the fast path only ever handles pushes that log cleanly.
 */
static __noinline int ring_push_vm(struct pt_cpu_ring *cr, struct pt_vm_state *st,
				   struct kvm_dirty_ring *ring, __u32 slot, __u64 offset)
{
	struct pt_cpu_cache *c = &cr->c;
	__u64 epoch = st->epoch;
	__u32 vm = c->vm, why;
	struct pt_vm_slots *sl;
	struct pt_slot *s;

	/* Once per ring and epoch on this CPU: the rest of the epoch's pushes skip it. */
	if (c->epoch != epoch) {
		note_ring_push(vm, st, epoch, ring);
		c->epoch = epoch;
	}
	sl = bpf_map_lookup_elem(&pt_vm_slots, &vm);
	if (!sl) {
		taint(st, PT_TAINT_UNKNOWN_SLOT);
		return 0;
	}
	s = slot_by_id(sl, slot);
	if (!s) {
		taint(st, PT_TAINT_UNKNOWN_SLOT);
		return 0;
	}
	if (offset >= s->npages) {
		taint(st, PT_TAINT_GFN_RANGE);
		return 0;
	}
	why = log_page(st, s->bit_off + offset);
	if (why) {
		taint(st, why);
		return 0;
	}
	cache_slot(c, st, s, slot);
	count_ring_write(cr, vm);
	return 0;
}

/*
 * A push whose ring is not the one this CPU cached, or the cache is stale (the generation
 * moved): which VM is it? The process's, as registered. `gen` was read before the lookup, so
 * a change of the VM set (or of a memslot table, or a new vCPU) after it leaves the entry
 * stale.
 */
static __noinline int ring_push_lookup(struct pt_cpu_ring *cr, struct kvm_dirty_ring *ring,
				       __u32 slot, __u64 offset, __u64 gen)
{
	struct pt_cpu_cache *c = &cr->c;
	__u32 tgid = current_tgid();
	__u32 *idx = bpf_map_lookup_elem(&pt_vm_by_tgid, &tgid);
	struct pt_vm_state *st;
	__u32 vm;

	if (!idx)
		return 0;
	vm = *idx;
	st = vm_state(vm);
	/* The index may have passed to another VMM since it was looked up: its ring state must
	 * not be planted in the new tenant's epoch. */
	if (!st || st->tgid != tgid)
		return 0;
	c->ring = (__u64)ring;
	c->gen = gen;
	c->vm = vm;
	c->tgid = tgid;
	c->epoch = 0; /* no epoch (they start at 1): the ring gets noted */
	c->npages = 0;
	return ring_push_vm(cr, st, ring, slot, offset);
}

/*
 * Every page KVM marks dirty on a dirty-ring VM. The fast path is a push of the ring this CPU
 * saw last, in its epoch and slot: no helper call, no hash lookup, one bit. The cache is keyed
 * on the ring pointer, which names one vCPU (so one VM) for as long as the vCPU lives;
 * the generation check covers everything that can change the answer: the VM set (userspace
 * bumps it on register and unregister), a memslot table change, and a tracked VMM creating a
 * vCPU (the one way a freed ring's address comes back under another VM). A stale entry only
 * ever sends a push to the lookup.
 */
SEC("raw_tp/kvm_dirty_ring_push")
int BPF_PROG(pt_ring_push, struct kvm_dirty_ring *ring, u32 slot, u64 offset)
{
	__u32 cpu = bpf_get_smp_processor_id(), gkey = PT_GEN, key;
	struct pt_cpu_ring *cr = bpf_map_lookup_elem(&pt_cache, &cpu);
	__u64 *genp = bpf_map_lookup_elem(&pt_pending, &gkey);
	struct pt_cpu_cache *c;
	struct pt_vm_state *st;
	__u64 gen, bit, *word;

	if (!cr || !genp)
		return 0;
	c = &cr->c;
	gen = *genp;
	if (c->ring != (__u64)ring || c->gen != gen)
		return ring_push_lookup(cr, ring, slot, offset, gen);
	st = vm_state(c->vm);
	/* Same generation, so the same tenant: a mismatch means a racing register. */
	if (!st || st->tgid != c->tgid)
		return ring_push_lookup(cr, ring, slot, offset, gen);
	if (c->slot != slot || offset >= c->npages || c->epoch != st->epoch)
		return ring_push_vm(cr, st, ring, slot, offset);
	bit = c->bit + offset;
	key = bit / 64;
	word = bpf_map_lookup_elem(&pt_log, &key);
	if (!word)
		return ring_push_vm(cr, st, ring, slot, offset);
	if (!(*word & (1ull << (bit % 64))))
		__sync_fetch_and_or(word, 1ull << (bit % 64));
	count_ring_write(cr, c->vm);
	return 0;
}

/*
 * The end of one ring's reset inside KVM_RESET_DIRTY_RINGS (KVM resets every vCPU's ring in
 * one ioctl, firing this once per ring). Entries before the ring's first entry of this epoch
 * were pushed before the arm: their pages stay writable, without any further push, until a
 * reset covers them. A reset that leaves one of them is therefore not (yet) the sync of this
 * epoch: the ioctl is marked incomplete and does not count. Nothing is lost: writes to such a
 * page happen before the sync, and hints before the sync are kept anyway (PROTOCOL.md 5, rule
 * 8). The first complete reset after the arm is the sync; no taint, no lost event.
 */
SEC("raw_tp/kvm_dirty_ring_reset")
int BPF_PROG(pt_ring_reset, struct kvm_dirty_ring *ring)
{
	__u32 vm, vcpu, key, reset_idx, boundary;
	__u64 id = bpf_get_current_pid_tgid();
	struct pt_vm_state *st;
	struct pt_ioctl *io;
	struct pt_ring *r = NULL;

	st = current_vm_state(&vm);
	if (!st)
		return 0;
	vcpu = BPF_CORE_READ(ring, index);
	key = vm * PT_MAX_VCPUS + vcpu;
	if (vcpu < PT_MAX_VCPUS)
		r = bpf_map_lookup_elem(&pt_rings, &key);
	reset_idx = BPF_CORE_READ(ring, reset_index);
	/* A ring with no entry noted in this epoch (or not tracked) must be reset to its end. */
	if (r && r->vm == vm + 1 && r->epoch == st->epoch)
		boundary = r->first_idx;
	else
		boundary = BPF_CORE_READ(ring, dirty_index);
	if ((__s32)(reset_idx - boundary) >= 0)
		return 0;
	io = bpf_map_lookup_elem(&pt_ioctl, &id);
	if (io)
		io->incomplete = 1;
	return 0;
}

static __always_inline void count_ignored_fault(__u32 vm)
{
	struct pt_vm_stats *n = vm_stats(vm);

	if (n)
		n->faults_ignored++;
}

/* A write fault of the current process at `addr`, a GPA only if gpa is true (TDP). */
static __always_inline void write_fault(__u64 addr, bool gpa)
{
	struct pt_vm_state *st;
	__u32 vm;

	st = current_vm_state(&vm);
	if (!st)
		return;
	if (!gpa) {
		/* Shadow paging: the address is a GVA, useless for the log. */
		count_ignored_fault(vm);
		return;
	}
	record_gfn(vm, st, addr >> PT_PAGE_SHIFT);
}

SEC("raw_tp/kvm_page_fault")
int BPF_PROG(pt_page_fault, struct kvm_vcpu *vcpu, u64 fault_address, u64 error_code)
{
	if (error_code & 2) /* PFERR_WRITE_MASK */
		write_fault(fault_address, tdp);
	return 0;
}

SEC("raw_tp/fast_page_fault")
int BPF_PROG(pt_fast_page_fault, struct kvm_vcpu *vcpu, struct kvm_page_fault *fault, u64 *sptep,
	     u64 old_spte, int ret)
{
	if (BPF_CORE_READ(fault, write))
		write_fault(BPF_CORE_READ(fault, addr), tdp && BPF_CORE_READ(fault, is_tdp));
	return 0;
}

static __always_inline bool watched_ioctl(__u32 cmd)
{
	return cmd == PT_KVM_SET_USER_MEMORY_REGION || cmd == PT_KVM_SET_USER_MEMORY_REGION2 ||
	       cmd == PT_KVM_CREATE_VM || cmd == PT_KVM_ENABLE_CAP || cmd == PT_KVM_GET_DIRTY_LOG ||
	       cmd == PT_KVM_CLEAR_DIRTY_LOG || cmd == PT_KVM_RESET_DIRTY_RINGS ||
	       cmd == PT_KVM_CREATE_VCPU;
}

/*
 * The record of process `leader` in a task-storage map whose value starts with the time it was
 * first recorded (pt_vm_created, pt_compat), made if new. NULL when it cannot be stored (out of
 * memory, or storage busy on this CPU): the map can then no longer vouch for the processes that
 * exist now, which `since`[PT_CREATED_LOST] dates (two at once: the later stays).
 */
_Static_assert(__builtin_offsetof(struct pt_vm_created, first_ns) == 0 &&
		       __builtin_offsetof(struct pt_compat, first_ns) == 0,
	       "task_record() takes the first field for the time");

static __always_inline __u64 *task_record(void *storage, void *since, struct task_struct *leader)
{
	__u32 key = PT_CREATED_LOST;
	__u64 *first, *lost;

	first = bpf_task_storage_get(storage, leader, NULL, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (first) {
		if (!*first)
			*first = bpf_ktime_get_boot_ns();
		return first;
	}
	lost = bpf_map_lookup_elem(since, &key);
	if (lost)
		raise_to(lost, bpf_ktime_get_boot_ns());
	return NULL;
}

/* KVM_CREATE_VM by any process: remember it on the process (its thread-group leader). */
static __noinline void note_vm_created(void)
{
	struct task_struct *leader = bpf_get_current_task_btf()->group_leader;
	struct pt_vm_created *c = (void *)task_record(&pt_vm_created, &pt_created_since, leader);

	if (c)
		__sync_fetch_and_add(&c->count, 1);
}

SEC("tp/syscalls/sys_enter_ioctl")
int pt_ioctl_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u32 cmd = ctx->args[1];
	struct pt_vm_state *st;
	struct pt_ioctl io;
	__u64 *pending, id;
	__u32 vm;

	/* Every ioctl of every process passes here (KVM_RUN above all): no call, not even a
	 * store, before this. */
	if (!watched_ioctl(cmd))
		return 0;
	if (cmd == PT_KVM_CREATE_VM)
		note_vm_created();
	st = current_vm_state(&vm);
	if (!st)
		return 0;
	id = bpf_get_current_pid_tgid();
	io = (struct pt_ioctl){ .cmd = cmd,
				.vm = vm,
				.tgid = current_tgid(),
				.arg = ctx->args[2],
				.epoch = st->epoch };
	/* A new vCPU may get a freed one's address, so the ring pointer of another VM: no
	 * cached ring survives it. Here as well as at the exit, in case the exit goes unseen. */
	if (cmd == PT_KVM_CREATE_VCPU)
		bump_generation();
	/* KVM makes new memslots live before the ioctl returns (it then waits for readers to
	 * go): the change belongs to this epoch as soon as it starts, and the exit marks the
	 * epoch it ends in. */
	if (cmd == PT_KVM_SET_USER_MEMORY_REGION || cmd == PT_KVM_SET_USER_MEMORY_REGION2)
		raise_to(&st->slot_change_epoch, io.epoch);
	if (bpf_map_update_elem(&pt_ioctl, &id, &io, BPF_ANY)) {
		/* We will not see how this ioctl ends: a memslot change or sync goes unseen, in
		 * this epoch or, after an ARM while it runs, the next. */
		taint(st, PT_TAINT_SLOT_CHANGE);
		raise_to(&st->slot_change_epoch, io.epoch + 1);
		/* A slot move (slot_moved()) whose marks taint() just raised. */
		if (cmd == PT_KVM_SET_USER_MEMORY_REGION || cmd == PT_KVM_SET_USER_MEMORY_REGION2)
			__sync_fetch_and_add(&st->slot_moves, 1);
		return 0;
	}
	pending = pending_ioctls();
	if (pending)
		__sync_fetch_and_add(pending, 1);
	return 0;
}

static __always_inline __u32 slot_flags(__u32 kvm_flags)
{
	return PT_SLOT_VALID | (kvm_flags & PT_KVM_MEM_LOG_DIRTY_PAGES ? 0 : PT_SLOT_NOLOG);
}

/* Fill table entry idx with the region; bits from `bit_off`. */
static __always_inline void slot_fill(struct pt_vm_slots *sl, __u32 idx,
				      const struct kvm_userspace_memory_region *r, __u64 npages,
				      __u64 bit_off)
{
	struct pt_slot *s;

	/* The barrier keeps the compiler from computing the address before the check. */
	barrier_var(idx);
	if (idx >= PT_MAX_SLOTS)
		return;
	s = &sl->slots[idx];
	s->id = r->slot;
	s->base_gfn = r->guest_phys_addr >> PT_PAGE_SHIFT;
	s->npages = npages;
	s->bit_off = bit_off;
	s->flags = slot_flags(r->flags);
}

/*
 * The VMM changed memslot r.slot. For a slot in the table: deleted or moved pages are no
 * longer what was hinted, and switching dirty logging off (or on) means writes of this epoch
 * went unseen: both taint. A slot without dirty logging stays marked PT_SLOT_NOLOG, which
 * makes every verdict of the VM "keep" until logging is back. Unknown slots are added only
 * for a VM whose table is learned from the ioctls.
 *
 * A slot created again under an id the table knows (deleted and re-created, moved: memory map
 * changes, hotplug, virtio-mem) becomes valid again at once, reusing its bits where it fits
 * in them, and taints the epoch in which it changed: it is usable from the next ARM on, never
 * inside that epoch. A change the VMM made is no lost event: it taints without counting one. A
 * registered slot re-created larger than registered stays invalid (its pages are unknown memory:
 * hints of them are refused, writes to it taint).
 */
static __always_inline void memslot_changed(__u32 vm, struct pt_vm_state *st, __u64 uarg)
{
	struct pt_vm_slots *sl = bpf_map_lookup_elem(&pt_vm_slots, &vm);
	bool learn = st->flags & PT_VM_LEARN_SLOTS;
	struct kvm_userspace_memory_region r;
	struct pt_slot *s = NULL;
	__u64 npages, bits = 0, bit_off = 0;
	__u32 i, idx;

	if (!sl || bpf_probe_read_user(&r, sizeof(r), (void *)uarg)) {
		/* A memslot changed and we cannot tell which: a lost event and a slot move, with
		 * one raise of each mark. */
		taint(st, PT_TAINT_UNKNOWN_SLOT | PT_TAINT_SLOT_CHANGE);
		__sync_fetch_and_add(&st->slot_moves, 1);
		return;
	}
	npages = r.memory_size >> PT_PAGE_SHIFT;
	for (i = 0; i < PT_MAX_SLOTS; i++) {
		if (i >= sl->nslots)
			break;
		if (sl->slots[i].id == r.slot) {
			s = &sl->slots[i];
			break;
		}
	}
	idx = i;
	if (s && (s->flags & PT_SLOT_VALID)) {
		if (npages && s->base_gfn == r.guest_phys_addr >> PT_PAGE_SHIFT &&
		    s->npages == npages) {
			if (s->flags != slot_flags(r.flags)) {
				s->flags = slot_flags(r.flags);
				doubt_epoch(st, PT_TAINT_SLOT_CHANGE);
			}
			return;
		}
		s->flags = 0;
		slot_moved(st);
	}
	if (!npages)
		return;
	if (s) {
		/* Known id, created again. */
		slot_moved(st);
		bits = s->npages;
		bit_off = s->bit_off;
	} else if (!learn) {
		return;
	} else if (idx >= PT_MAX_SLOTS) {
		taint(st, PT_TAINT_LOG_FULL);
		return;
	}
	if (npages > bits) {
		if (!learn)
			return;
		if (sl->next_bit + npages > st->log_bits) {
			taint(st, PT_TAINT_LOG_FULL);
			return;
		}
		bit_off = sl->next_bit;
		sl->next_bit += npages;
	}
	slot_fill(sl, idx, &r, npages, bit_off);
	if (!s)
		sl->nslots = idx + 1;
}

static __always_inline void slot_synced(__u32 vm, __u64 uarg, __u64 epoch)
{
	struct pt_vm_slots *sl = bpf_map_lookup_elem(&pt_vm_slots, &vm);
	struct kvm_dirty_log log;
	struct pt_slot *s;

	if (!sl || bpf_probe_read_user(&log, sizeof(log), (void *)uarg))
		return;
	s = slot_by_id(sl, log.slot);
	if (s)
		s->sync_epoch = epoch;
}

/* A sync that began before the arm protects nothing for the new epoch. */
static __always_inline void synced(struct pt_ioctl *io, struct pt_vm_state *st)
{
	if (io->epoch == st->epoch)
		st->sync_epoch = io->epoch;
	__sync_fetch_and_add(&st->syncs, 1);
}

static __always_inline void ioctl_done(struct pt_ioctl *io, struct pt_vm_state *st)
{
	struct kvm_enable_cap cap;

	switch (io->cmd) {
	case PT_KVM_SET_USER_MEMORY_REGION:
	case PT_KVM_SET_USER_MEMORY_REGION2:
		/* A learned table of a VM not created while tracked (made before REGISTER where
		 * the check could not see it, or its descriptor came from another process): it
		 * may have memslots from before, which the table will never hold. */
		if ((st->flags & (PT_VM_LEARN_SLOTS | PT_VM_SEEN_CREATE)) == PT_VM_LEARN_SLOTS)
			__sync_fetch_and_or(&st->flags, PT_VM_SLOTS_UNSEEN);
		/* REGION2 starts with the same fields, so one reader serves both. */
		memslot_changed(io->vm, st, io->arg);
		/* Bumped after the table changed: userspace re-reads it when this moves, and
		 * pt_ring_push drops the slots it cached. */
		__sync_fetch_and_add(&st->slot_changes, 1);
		bump_generation();
		break;
	case PT_KVM_CREATE_VCPU:
		/* The vCPU exists now: a ring cached before it was allocated is stale. */
		bump_generation();
		break;
	case PT_KVM_ENABLE_CAP:
		if (bpf_probe_read_user(&cap, sizeof(cap), (void *)io->arg))
			break;
		if (cap.cap == PT_KVM_CAP_DIRTY_LOG_RING ||
		    cap.cap == PT_KVM_CAP_DIRTY_LOG_RING_ACQ_REL)
			__sync_fetch_and_or(&st->flags, PT_VM_DIRTY_RING);
		/* With manual protect, KVM_GET_DIRTY_LOG write-protects nothing. */
		if (cap.cap == PT_KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)
			__sync_fetch_and_or(&st->flags, PT_VM_MANUAL_PROTECT);
		break;
	case PT_KVM_CREATE_VM:
		/* Tracked from before the VM existed: every KVM_ENABLE_CAP of it will be seen. */
		__sync_fetch_and_or(&st->flags, PT_VM_SEEN_CREATE);
		break;
	case PT_KVM_RESET_DIRTY_RINGS:
		/* Not the sync (yet): the epoch stays unsynced until a complete reset. */
		if (io->incomplete) {
			__sync_fetch_and_add(&st->syncs_incomplete, 1);
			break;
		}
		if (io->epoch == st->epoch)
			st->ring_sync_epoch = io->epoch;
		synced(io, st);
		break;
	case PT_KVM_CLEAR_DIRTY_LOG:
		/* A VMM that clears explicitly (QEMU under manual protect) does not rely on GET
		 * to write-protect: treat its GETs as protecting nothing. */
		__sync_fetch_and_or(&st->flags, PT_VM_MANUAL_PROTECT);
		synced(io, st);
		break;
	case PT_KVM_GET_DIRTY_LOG:
		/* Bitmap mode syncs one memslot per ioctl: the slot records it. */
		if (io->epoch == st->epoch)
			slot_synced(io->vm, io->arg, io->epoch);
		synced(io, st);
		break;
	}
}

SEC("tp/syscalls/sys_exit_ioctl")
int pt_ioctl_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 *pending = pending_ioctls();
	struct pt_vm_state *st;
	struct pt_ioctl *io;

	if (!pending || !*pending)
		return 0;
	io = bpf_map_lookup_elem(&pt_ioctl, &id);
	if (!io)
		return 0;
	st = vm_state(io->vm);
	/* The VM index may have been given to another VMM while the ioctl ran. */
	if (st && ctx->ret >= 0 && st->tgid == io->tgid)
		ioctl_done(io, st);
	bpf_map_delete_elem(&pt_ioctl, &id);
	__sync_fetch_and_add(pending, -1);
	return 0;
}

/* Mark process `leader` as one that ran 32-bit code; a mark that cannot be stored is a loss. */
static __noinline void note_compat(struct task_struct *leader, __u32 how)
{
	struct pt_compat *c = (void *)task_record(&pt_compat, &pt_compat_since, leader);

	if (c)
		__sync_fetch_and_or(&c->how, how);
}

/*
 * Does `mm` run plain 64-bit code? x86-64 sets mm->context.flags at exec: HAS_VSYSCALL (bit 1)
 * for a 64-bit image, UPROBE_IA32 (bit 0) for an ia32 one, neither for x32 (arch/x86 process_64.c;
 * masks in an unsigned short up to 6.3, bit numbers in an unsigned long since: the same low
 * byte). 1 yes, 0 no (or unreadable: counts as no), -1 nothing to judge: no mm, or no such
 * field on this kernel (not x86-64).
 */
static __always_inline int mm_runs_64bit(struct mm_struct *mm)
{
	unsigned char low;

	if (!mm || !bpf_core_field_exists(mm->context.flags))
		return -1;
	if (bpf_core_read(&low, sizeof(low), &mm->context.flags))
		return 0;
	return (low & (PT_MM_UPROBE_IA32 | PT_MM_HAS_VSYSCALL)) == PT_MM_HAS_VSYSCALL;
}

/* The image exec'd is a 32-bit ELF (ia32, x32): e_ident's class. Unreadable counts as one. */
static __always_inline bool image_32bit(struct linux_binprm *bprm)
{
	unsigned char id[5];

	if (bpf_core_read(id, sizeof(id), &bprm->buf))
		return true;
	return id[0] == 0x7f && id[1] == 'E' && id[2] == 'L' && id[3] == 'F' && id[4] == 1;
}

/*
 * A tracked VMM seen running 32-bit code (exec'd a 32-bit image, or made a 32-bit syscall):
 * its VM is marked for good, and the epoch counts as one with an unseen memslot change.
 */
static __always_inline void compat_vm(void)
{
	struct pt_vm_state *st;
	__u32 vm;

	st = current_vm_state(&vm);
	if (!st)
		return;
	__sync_fetch_and_or(&st->flags, PT_VM_COMPAT);
	slot_moved(st);
}

/*
 * Every exec of the machine (rare: no per-syscall cost). A 32-bit image marks the process;
 * if it is a tracked VMM (it may keep its VM's descriptors across the exec), its VM too.
 */
SEC("raw_tp/sched_process_exec")
int BPF_PROG(pt_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	if (!image_32bit(bprm))
		return 0;
	/* After the exec the caller leads its thread group. */
	note_compat(bpf_get_current_task_btf()->group_leader, PT_COMPAT_EXEC);
	compat_vm();
	return 0;
}

/*
 * Every fork/clone of the machine. A new process made by a 32-bit clone (the parent is inside
 * a compat syscall: TS_COMPAT), by a marked process, or by one whose mm is not 64-bit (an x32
 * parent, whose syscalls are not compat syscalls) runs that same image: it is marked too. A
 * parent caught inside a compat syscall proves it makes them (a 64-bit process using
 * `int $0x80`, or x32 syscalls): it is marked as well, and its VM if it is a tracked VMM. New
 * threads belong to a process already marked or not.
 */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(pt_fork, struct task_struct *parent, struct task_struct *child)
{
	bool in_compat = parent->thread_info.status & PT_TS_COMPAT;

	if (in_compat) {
		note_compat(parent->group_leader, PT_COMPAT_FORK);
		compat_vm();
	}
	if (child->group_leader != child)
		return 0;
	if (!in_compat && !bpf_task_storage_get(&pt_compat, parent->group_leader, NULL, 0) &&
	    mm_runs_64bit(parent->mm) != 0)
		return 0;
	note_compat(child, PT_COMPAT_FORK);
	return 0;
}

/* What the start's iterator saw so far (pt_compat_iter); one entry, not pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pt_compat_iter_sum);
} pt_iter_sum SEC(".maps");

/*
 * Once at a fresh start, with pt_exec and pt_fork already attached: every task of the machine.
 * A process whose mm is not a plain 64-bit one (ia32 or x32, or unreadable) is marked on its
 * thread-group leader, as pt_exec would have marked it. Kernel state, no ptrace rights needed.
 * A process that execs or forks while this runs is pt_exec's and pt_fork's to see.
 */
SEC("iter/task")
int pt_compat_iter(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	struct pt_compat_iter_sum *sum;
	__u32 zero = 0;
	int r;

	sum = bpf_map_lookup_elem(&pt_iter_sum, &zero);
	if (!sum)
		return 0; /* no summary at the end: nothing claims completeness */
	if (!task) {
		/* The last call, after every task: the summary is the iterator's only output. */
		sum->complete = bpf_core_field_exists(task->mm->context.flags);
		bpf_seq_write(ctx->meta->seq, sum, sizeof(*sum));
		return 0;
	}
	sum->tasks++;
	/* Kernel threads never register; one borrowing a user mm is not that process. */
	if (task->flags & PT_PF_KTHREAD)
		return 0;
	/* Nothing to judge (< 0): no mm (exiting, or a zombie leader whose live threads answer
	 * for it), or no field on this kernel, which the summary says (nothing is complete). */
	r = mm_runs_64bit(task->mm);
	if (r != 0)
		return 0;
	sum->marked++;
	note_compat(task->group_leader, PT_COMPAT_SCAN);
	return 0;
}
