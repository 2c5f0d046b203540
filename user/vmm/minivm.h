/* SPDX-License-Identifier: GPL-2.0 */
/*
 * minivm: a tiny VMM over /dev/kvm for tests, the daemon's start-up canary and the demo.
 *
 * One VM, one or more vcpus (MINIVM_MAX_VCPUS), each running a few bytes of 64-bit code that
 * writes 8-byte values at guest physical addresses it reads from its own command block. In
 * ring mode every vcpu has its own dirty ring, as KVM gives it. Guest memory is split into
 *
 *   - a system memslot (KVM slot 0) holding the GDT, code, stack, command block and identity
 *     page tables, placed at a GPA no data slot uses, and
 *   - up to MINIVM_MAX_SLOTS data memslots (ids >= 1) at caller-chosen GPAs.
 *
 * Only the guest touches data slots, so KVM's dirty log of a data slot is exactly the set of
 * pages minivm_guest_write() was asked to write. The guest never writes the system slot (all
 * accessed/dirty bits in its page tables are preset), but tests should still treat system
 * slot pages as noise: use minivm_is_system_gfn().
 *
 * A struct minivm belongs to the process that created it: KVM refuses VM ioctls from another
 * mm, and guest memory is MADV_DONTFORK so a child does not even see it; minivm calls from a
 * fork()ed child with an inherited handle return -EIO (minivm_hva() NULL). The child may
 * minivm_destroy() it, which only drops the child's references. Separate processes may each
 * run their own VM at the same time: there is no shared or global state.
 *
 * A VM is not thread safe: one thread at a time per struct minivm, with one exception that
 * models a multi-vcpu VMM: each vcpu may be driven by its own thread (minivm_vcpu_write(),
 * minivm_vcpu_resume()), while other threads harvest rings (minivm_harvest_vcpu(),
 * minivm_reset_rings(), minivm_harvest(), minivm_sync()).
 *
 * All functions that return int return 0 or a negative errno.
 */
#ifndef PAGETRACK_MINIVM_H
#define PAGETRACK_MINIVM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MINIVM_PAGE_SIZE 4096ULL
#define MINIVM_MAX_SLOTS 8
#define MINIVM_MAX_VCPUS 8

enum minivm_dirty {
	MINIVM_DIRTY_NONE,   /* no dirty logging; minivm_harvest() returns -EINVAL */
	MINIVM_DIRTY_BITMAP, /* KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG (manual protect) */
	MINIVM_DIRTY_RING,   /* per-vcpu dirty ring, ACQ_REL variant when KVM has it */
};

/* A data memslot: KVM slot id (address space 0, must be >= 1), page-aligned GPA and size. */
struct minivm_slot {
	uint64_t gpa;
	uint64_t size;
	uint32_t id;
};

struct minivm_opts {
	enum minivm_dirty dirty;
	unsigned int nslots;
	struct minivm_slot slots[MINIVM_MAX_SLOTS];
	/* Dirty ring entries per vcpu, power of 2, >= 256; 0 means 4096 (KVM's max: 65536). */
	uint32_t ring_entries;
	/*
	 * Create the VM and vcpu only; memory and memslots come with minivm_setup_memory(), so a
	 * tracer that starts watching the process in between sees KVM_SET_USER_MEMORY_REGION.
	 */
	bool defer_memory;
	/* vcpus (each with its own dirty ring); 0 means 1, at most MINIVM_MAX_VCPUS. */
	unsigned int nvcpus;
};

struct minivm;

/* 0 if a VM with this dirty mode can be created: -ENODEV without /dev/kvm, -EOPNOTSUPP if
 * KVM lacks the dirty ring / manual dirty log protection, other -errno on odd failures. */
int minivm_supported(enum minivm_dirty mode);

int minivm_create(struct minivm **out, const struct minivm_opts *o);
/* Allocates guest memory, registers the memslots and readies the vcpu; no-op if done. */
int minivm_setup_memory(struct minivm *vm);
void minivm_destroy(struct minivm *vm);

/*
 * The guest writes @value (8 bytes, little endian) at each GPA of @gpas, in order, then
 * exits to us with a port write; returns after that. Each GPA must lie (all 8 bytes) in a
 * data slot. Any n works: the list goes to the guest in batches of MINIVM_CMD_MAX.
 *
 * Ring mode: a batch only goes to the guest if the ring has room for one entry per write (on
 * PVM every guest write pushes an entry, even for a page already in the ring) plus a slack of
 * 128 entries, because PVM overshoots KVM's soft-full limit and an overflowing ring silently
 * loses entries. Without room (or on KVM_EXIT_DIRTY_RING_FULL) this returns -ENOSPC with the
 * rest of the write pending. minivm does not harvest behind the caller's back (the log is
 * what tests check); the caller harvests and then calls minivm_resume() to finish. Writes per
 * harvest that fit without that: ring_entries - 128 (3968 with the default ring).
 */
int minivm_guest_write(struct minivm *vm, const uint64_t *gpas, size_t n, uint64_t value);
/* Finishes a write interrupted by -ENOSPC (may return -ENOSPC again); 0 if none pending. */
int minivm_resume(struct minivm *vm);
/* The same on vcpu `idx` (minivm_guest_write() is vcpu 0). With several vcpus, -ENOSPC
 * may also mean another thread harvested the ring and has not reset it yet: retry later. */
int minivm_vcpu_write(struct minivm *vm, unsigned int idx, const uint64_t *gpas, size_t n,
		      uint64_t value);
int minivm_vcpu_resume(struct minivm *vm, unsigned int idx);
unsigned int minivm_nvcpus(const struct minivm *vm);
/* True while a minivm_guest_write() is waiting for minivm_resume(). */
bool minivm_write_pending(const struct minivm *vm);

/* Reads 8 bytes of guest memory through the host mapping (any slot); does not dirty. */
int minivm_host_read(struct minivm *vm, uint64_t gpa, uint64_t *value);

/*
 * KVM's dirty log since the previous harvest, all slots (system slot too), as absolute GFNs
 * sorted and unique, in a malloc'd array the caller frees (NULL when *n == 0). This is the
 * VMM's "sync": the reported pages are write-protected again.
 *   bitmap: KVM_GET_DIRTY_LOG per slot, then KVM_CLEAR_DIRTY_LOG of exactly what it reported;
 *   ring:   collect dirty entries, mark them KVM_DIRTY_GFN_F_RESET, KVM_RESET_DIRTY_RINGS.
 *           -EOVERFLOW if the whole ring was dirty: KVM may have overwritten entries (cannot
 *           happen through minivm_guest_write(), which keeps room in the ring).
 */
int minivm_harvest(struct minivm *vm, uint64_t **gfns, size_t *n);
/*
 * The VMM's sync when the log itself is not wanted: harvest and drop it, and in ring mode
 * issue KVM_RESET_DIRTY_RINGS even when nothing was harvested (as pagetrack's protocol asks:
 * an empty ring must still show the sync).
 */
int minivm_sync(struct minivm *vm);
/*
 * Half of a ring harvest, as a VMM's reaper does it: collect vcpu `idx`'s dirty entries
 * (absolute GFNs in ring order, malloc'd) and flag them for reset, without resetting.
 * minivm_reset_rings() is KVM_RESET_DIRTY_RINGS: it resets every flagged entry of every ring.
 */
int minivm_harvest_vcpu(struct minivm *vm, unsigned int idx, uint64_t **gfns, size_t *n);
int minivm_reset_rings(struct minivm *vm);

/* True for GFNs of the system slot: pages the guest machinery may dirty by itself. */
bool minivm_is_system_gfn(const struct minivm *vm, uint64_t gfn);
/* The system slot's placement (KVM slot id 0), for tests and logs. */
void minivm_system_range(const struct minivm *vm, uint64_t *gpa, uint64_t *size);

int minivm_vm_fd(const struct minivm *vm);
int minivm_vcpu_fd(const struct minivm *vm); /* vcpu 0 */
/* The ring size actually in use (0 unless ring mode) and whether it is the ACQ_REL flavour. */
uint32_t minivm_ring_entries(const struct minivm *vm);
bool minivm_ring_acq_rel(const struct minivm *vm);
/* Host address of guest memory [gpa, gpa + len) if it is inside one slot, else NULL. */
void *minivm_hva(struct minivm *vm, uint64_t gpa, uint64_t len);

/* GPAs per guest batch (one command block). */
#define MINIVM_CMD_PAGES 16
#define MINIVM_CMD_MAX	 (MINIVM_CMD_PAGES * MINIVM_PAGE_SIZE / 8 - 2)

#endif
