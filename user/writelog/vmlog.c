// SPDX-License-Identifier: GPL-2.0
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "clues.h"
#include "compat.h"
#include "shared/log.h"
#include "shared/procfs.h"
#include "vmlog.h"
#include "writelog.skel.h"

#define ALIGN64(x) (((x) + 63) & ~63ull)

int pt_vm_find(struct pt_tracker *t, uint32_t tgid, uint32_t *vm)
{
	if (bpf_map__lookup_elem(t->skel->maps.pt_vm_by_tgid, &tgid, sizeof(tgid), vm, sizeof(*vm),
				 0))
		return -ENOENT;
	if (*vm >= PT_MAX_VMS || !(t->vms[*vm].flags & PT_VM_ACTIVE))
		return -ENOENT;
	return 0;
}

/* First fit in the log bitmap among the regions of active VMs; regions are 64-bit aligned so
 * that no two VMs share a word. */
static int alloc_region(struct pt_tracker *t, uint64_t bits, uint64_t *base)
{
	uint64_t total = t->log_words * 64, start = 0;
	bool moved = true;

	bits = ALIGN64(bits);
	while (moved) {
		moved = false;
		for (uint32_t i = 0; i < PT_MAX_VMS; i++) {
			struct pt_vm_state *s = &t->vms[i];

			if (!(s->flags & PT_VM_ACTIVE))
				continue;
			if (start < s->log_bit_base + s->log_bits &&
			    s->log_bit_base < start + bits) {
				start = ALIGN64(s->log_bit_base + s->log_bits);
				moved = true;
			}
		}
	}
	if (start + bits > total)
		return -ENOSPC;
	*base = start;
	return 0;
}

static int free_index(struct pt_tracker *t, uint32_t *vm)
{
	for (uint32_t i = 0; i < PT_MAX_VMS; i++) {
		if (!(t->vms[i].flags & PT_VM_ACTIVE)) {
			*vm = i;
			return 0;
		}
	}
	return -ENOSPC;
}

static int build_slots(const struct pt_slot_cfg *cfg, unsigned n, struct pt_vm_slots *sl)
{
	memset(sl, 0, sizeof(*sl));
	if (n > PT_MAX_SLOTS)
		return -E2BIG;
	for (unsigned i = 0; i < n; i++) {
		struct pt_slot *s = &sl->slots[i];

		if ((cfg[i].gpa | cfg[i].size) & ((1u << PT_PAGE_SHIFT) - 1) || !cfg[i].size)
			return -EINVAL;
		s->base_gfn = cfg[i].gpa >> PT_PAGE_SHIFT;
		s->npages = cfg[i].size >> PT_PAGE_SHIFT;
		s->bit_off = sl->next_bit;
		s->id = cfg[i].id;
		s->flags = PT_SLOT_VALID | (cfg[i].logged ? 0 : PT_SLOT_NOLOG);
		sl->next_bit += s->npages;
	}
	sl->nslots = n;
	return 0;
}

static void zero_stats(struct pt_tracker *t, uint32_t vm)
{
	int ncpu = libbpf_num_possible_cpus();
	struct pt_vm_stats *z = ncpu > 0 ? calloc(ncpu, sizeof(*z)) : NULL;

	if (z)
		bpf_map__update_elem(t->skel->maps.pt_vm_stats, &vm, sizeof(vm), z,
				     ncpu * sizeof(*z), 0);
	free(z);
	for (int i = 0; i < t->ncpu; i++)
		__atomic_store_n(&t->cpus[i].ring_writes[vm], 0, __ATOMIC_RELAXED);
}

/* The pushes pt_ring_push recorded for `vm`, counted in each CPU's pt_cache entry. */
static uint64_t cpu_ring_writes(struct pt_tracker *t, uint32_t vm)
{
	uint64_t n = 0;

	for (int i = 0; i < t->ncpu; i++)
		n += __atomic_load_n(&t->cpus[i].ring_writes[vm], __ATOMIC_RELAXED);
	return n;
}

int pt_vm_stats_get(struct pt_tracker *t, uint32_t vm, struct pt_vm_stats *sum)
{
	int ncpu = libbpf_num_possible_cpus(), err;
	struct pt_vm_stats *v;

	memset(sum, 0, sizeof(*sum));
	if (ncpu <= 0 || vm >= PT_MAX_VMS)
		return -EINVAL;
	v = calloc(ncpu, sizeof(*v));
	if (!v)
		return -ENOMEM;
	err = bpf_map__lookup_elem(t->skel->maps.pt_vm_stats, &vm, sizeof(vm), v, ncpu * sizeof(*v),
				   0);
	for (int i = 0; !err && i < ncpu; i++) {
		sum->ring_writes += v[i].ring_writes;
		sum->fault_writes += v[i].fault_writes;
		sum->faults_ignored += v[i].faults_ignored;
	}
	if (!err)
		sum->ring_writes += cpu_ring_writes(t, vm);
	free(v);
	return err;
}

int pt_pid_scan_kvm_vm(uint32_t pid)
{
	char path[64], link[64];
	int found = 0, denied = 0;
	struct dirent *d;
	DIR *dir;

	snprintf(path, sizeof(path), "/proc/%u/fd", pid);
	dir = opendir(path);
	if (!dir)
		return -1;
	while (!found && (d = readdir(dir))) {
		ssize_t n;

		if (d->d_name[0] == '.')
			continue;
		n = readlinkat(dirfd(dir), d->d_name, link, sizeof(link) - 1);
		if (n > 0) {
			link[n] = 0;
			found = !strcmp(link, "anon_inode:kvm-vm");
		} else if (errno != ENOENT) {
			/* EACCES: listing needs no ptrace rights, reading a link does (a process
			 * with capabilities the reader lacks). An unread link may be the VM. */
			denied = 1;
		}
	}
	closedir(dir);
	return found ? 1 : denied ? -1 : 0;
}

static const struct pt_clue_why vm_why = {
	.recorded = "it issued KVM_CREATE_VM (seen by the ioctl program)",
	.proc_yes = "it holds a kvm-vm descriptor",
	.covered = "it started after the ioctl program was attached and never created a VM",
	.proc_no = "no kvm-vm descriptor in its /proc/PID/fd",
	.unreadable = "cannot tell: the record of VM creations is unreadable",
	.before = "cannot tell: it started before the ioctl program was attached and its "
		  "/proc/PID/fd is unreadable",
};

bool pt_vm_clues_decide(const struct pt_vm_clues *c, const char **why)
{
	return pt_clues_decide(c->created, c->after_since, c->fds, &vm_why, why);
}

int pt_vmm_vm_clues(struct pt_tracker *t, uint32_t pid, struct pt_vm_clues *c)
{
	/* The descriptors only where the record does not answer: a scan of every fd. */
	return pt_clues_gather(pid, t->skel->maps.pt_vm_created, t->skel->maps.pt_created_since,
			       pt_pid_scan_kvm_vm, &c->created, &c->after_since, &c->fds);
}

bool pt_vmm_may_hold_vm(struct pt_tracker *t, uint32_t pid)
{
	const char *why = "cannot tell: the process changed or is gone";
	struct pt_vm_clues c;
	bool held = true;

	if (!pt_vmm_vm_clues(t, pid, &c))
		held = pt_vm_clues_decide(&c, &why);
	pt_debug("pid %u %s: %s", pid,
		 held ? "may hold a VM made before it registered" : "holds no VM made before now",
		 why);
	return held;
}

int pt_vm_track(struct pt_tracker *t, uint32_t tgid, const struct pt_slot_cfg *slots, unsigned n,
		uint64_t learn_pages, uint32_t *vm, bool *existed)
{
	struct pt_vm_slots sl;
	struct pt_vm_state *st;
	uint64_t base, bits;
	uint32_t learn = 0;
	int err;

	*existed = false;
	if (!pt_vm_find(t, tgid, vm)) {
		*existed = true;
		/* Asked at every REGISTER of a tracked VMM (a resume, a re-registration, one
		 * tracked by an older build that did not follow 32-bit code). */
		pt_vm_check_compat(t, *vm);
		return 0;
	}
	err = build_slots(slots, n, &sl);
	if (err)
		return err;
	bits = n ? sl.next_bit : learn_pages;
	if (!n)
		learn = PT_VM_LEARN_SLOTS;
	err = free_index(t, vm);
	if (!err)
		err = alloc_region(t, bits, &base);
	if (err)
		return err;
	st = &t->vms[*vm];
	/* Epoch numbers continue from the old tenant of this index, so a stale pt_rings entry
	 * (keyed by index) or an old sync or taint can never look current. Counters restart:
	 * no program touches this index until pt_vm_by_tgid points at it. */
	memset(&st->lost, 0, sizeof(*st) - offsetof(struct pt_vm_state, lost));
	/* Except a mark BPF could not record exactly (all ones, raise_to): it would taint every
	 * epoch of the new tenant too. */
	if (st->taint_epoch == ~0ull)
		st->taint_epoch = 0;
	/* A stale ioctl may have marked the next epoch (io.epoch + 1), the new tenant's first. */
	if (st->slot_change_epoch == ~0ull)
		st->slot_change_epoch = st->epoch + 1;
	zero_stats(t, *vm);
	st->tgid = tgid;
	st->log_bit_base = base;
	st->log_bits = bits;
	memset(t->log + base / 64, 0, ALIGN64(bits) / 8);
	__atomic_add_fetch(&st->epoch, 1, __ATOMIC_SEQ_CST);
	__atomic_store_n(&st->flags, PT_VM_ACTIVE | learn, __ATOMIC_SEQ_CST);
	err = bpf_map__update_elem(t->skel->maps.pt_vm_slots, vm, sizeof(*vm), &sl, sizeof(sl),
				   BPF_ANY);
	if (!err)
		err = bpf_map__update_elem(t->skel->maps.pt_vm_by_tgid, &tgid, sizeof(tgid), vm,
					   sizeof(*vm), BPF_ANY);
	if (err) {
		st->flags = 0;
		return err;
	}
	/*
	 * Learning sees only the memslots made from now on: any made before are unknown. Asked
	 * once the programs follow the VMM, so that a VM it creates meanwhile is either in the
	 * record of creations already or created while tracked (its memslots seen).
	 */
	if (!n && pt_vmm_may_hold_vm(t, tgid))
		__atomic_fetch_or(&st->flags, PT_VM_SLOTS_UNSEEN, __ATOMIC_SEQ_CST);
	/* Asked once pt_exec follows the VMM too: an exec of a 32-bit image from now on is
	 * BPF's to mark, one before is in the record. */
	pt_vm_check_compat(t, *vm);
	pt_tracker_bump_generation(t);
	pt_info("tracking VM %u: pid %u, %u memslots%s, %llu pages of log at bit %llu", *vm, tgid,
		n, n ? "" : " (learned from ioctls)", (unsigned long long)bits,
		(unsigned long long)base);
	return 0;
}

int pt_vm_untrack(struct pt_tracker *t, uint32_t vm)
{
	struct pt_vm_state *st = &t->vms[vm];
	uint32_t tgid;

	if (vm >= PT_MAX_VMS || !(st->flags & PT_VM_ACTIVE))
		return -ENOENT;
	tgid = st->tgid;
	bpf_map__delete_elem(t->skel->maps.pt_vm_by_tgid, &tgid, sizeof(tgid), 0);
	__atomic_store_n(&st->flags, 0, __ATOMIC_SEQ_CST);
	pt_tracker_bump_generation(t);
	pt_info("VM %u (pid %u) no longer tracked", vm, tgid);
	return 0;
}

int pt_vm_arm_fold(struct pt_tracker *t, uint32_t vm, pt_log_fold fold, void *arg, uint64_t *epoch)
{
	struct pt_vm_state *st = &t->vms[vm];
	uint64_t *log, words;

	if (vm >= PT_MAX_VMS || !(st->flags & PT_VM_ACTIVE))
		return -ENOENT;
	log = t->log + st->log_bit_base / 64;
	words = ALIGN64(st->log_bits) / 64;
	/*
	 * Clear first, then publish the epoch. A write that lands while we clear is either
	 * kept (its bit survives: a harmless "keep") or belongs to a page whose dirty state the
	 * VMM's sync (which must start after this returns) re-protects; a dirty-ring entry of
	 * such a write carries the old epoch, so a reset that leaves it is not the sync. A caller
	 * that needs the old epoch's bits takes each word as it clears it: read-then-clear would
	 * lose a write that lands in between.
	 */
	if (fold) {
		for (uint64_t w = 0; w < words; w++)
			fold(arg, w, __atomic_exchange_n(&log[w], 0, __ATOMIC_SEQ_CST));
	} else {
		memset(log, 0, words * 8);
	}
	*epoch = __atomic_add_fetch(&st->epoch, 1, __ATOMIC_SEQ_CST);
	return 0;
}

int pt_vm_arm(struct pt_tracker *t, uint32_t vm, uint64_t *epoch)
{
	return pt_vm_arm_fold(t, vm, NULL, NULL, epoch);
}

/* As the BPF programs' raise_to(): a mark only grows (here the loop needs no bound). */
static void raise_mark(__u64 *at, __u64 epoch)
{
	__u64 old = __atomic_load_n(at, __ATOMIC_SEQ_CST);

	while (old < epoch && !__atomic_compare_exchange_n(at, &old, epoch, false, __ATOMIC_SEQ_CST,
							   __ATOMIC_SEQ_CST))
		;
}

void pt_vm_taint(struct pt_tracker *t, uint32_t vm, uint32_t reason)
{
	struct pt_vm_state *st = &t->vms[vm];
	uint64_t epoch = __atomic_load_n(&st->epoch, __ATOMIC_SEQ_CST);

	__atomic_fetch_or(&st->taint_reason, reason, __ATOMIC_SEQ_CST);
	raise_mark(&st->taint_epoch, epoch);
	if (reason & PT_TAINT_SLOT_CHANGE)
		raise_mark(&st->slot_change_epoch, epoch);
}

bool pt_vm_slots_changed(struct pt_tracker *t, uint32_t vm)
{
	struct pt_vm_state *st = &t->vms[vm];

	/* Above the epoch: an ioctl whose end went unseen marks the next epoch as well. */
	return __atomic_load_n(&st->slot_change_epoch, __ATOMIC_ACQUIRE) >=
	       __atomic_load_n(&st->epoch, __ATOMIC_ACQUIRE);
}

int pt_vm_slots_get(struct pt_tracker *t, uint32_t vm, struct pt_vm_slots *out)
{
	return bpf_map__lookup_elem(t->skel->maps.pt_vm_slots, &vm, sizeof(vm), out, sizeof(*out),
				    0);
}

int pt_slots_page(const struct pt_vm_slots *sl, uint64_t gfn, uint64_t *page)
{
	for (uint32_t i = 0; i < sl->nslots && i < PT_MAX_SLOTS; i++) {
		const struct pt_slot *s = &sl->slots[i];

		if ((s->flags & PT_SLOT_VALID) && !(s->id >> 16) && gfn >= s->base_gfn &&
		    gfn - s->base_gfn < s->npages) {
			*page = s->bit_off + gfn - s->base_gfn;
			return 0;
		}
	}
	return -ENOENT;
}

int pt_vm_written_gfns(struct pt_tracker *t, uint32_t vm, uint64_t **out, size_t *n)
{
	struct pt_vm_slots sl;
	size_t cap = 0, len = 0;
	uint64_t *v = NULL;
	int err;

	err = pt_vm_slots_get(t, vm, &sl);
	if (err)
		return err;
	for (uint32_t i = 0; i < sl.nslots && i < PT_MAX_SLOTS; i++) {
		const struct pt_slot *s = &sl.slots[i];

		if (!(s->flags & PT_SLOT_VALID))
			continue;
		for (uint64_t p = 0; p < s->npages; p++) {
			if (!pt_vm_page_written(t, vm, s->bit_off + p))
				continue;
			if (len == cap) {
				uint64_t *nv = realloc(v, (cap = cap ? cap * 2 : 256) * sizeof(*v));

				if (!nv) {
					free(v);
					return -ENOMEM;
				}
				v = nv;
			}
			v[len++] = s->base_gfn + p;
		}
	}
	*out = v;
	*n = len;
	return 0;
}

void pt_vm_mark_written(struct pt_tracker *t, uint32_t vm, uint64_t page, uint64_t n)
{
	uint64_t bit = t->vms[vm].log_bit_base + page;

	/*
	 * BPF programs set bits in the same words concurrently: a partial word takes an atomic
	 * OR; a whole word may simply be stored all-ones, which no concurrent set can undo.
	 */
	for (uint64_t end = bit + n; bit < end;) {
		uint64_t off = bit % 64, k = 64 - off < end - bit ? 64 - off : end - bit;
		uint64_t mask = (k == 64 ? ~0ull : (1ull << k) - 1) << off;

		if (k == 64)
			__atomic_store_n(&t->log[bit / 64], ~0ull, __ATOMIC_RELAXED);
		else
			__atomic_fetch_or(&t->log[bit / 64], mask, __ATOMIC_SEQ_CST);
		bit += k;
	}
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}
