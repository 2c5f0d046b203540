/* SPDX-License-Identifier: GPL-2.0 */
/*
 * One interface for any write log, so the reconciler does not care which one fed it.
 *
 *   arm    start an epoch: from its return on, every write to the VM's memory is logged.
 *          Optionally ORs into `prev` every page written in the ending epoch, atomically with
 *          forgetting it (a caller that keeps pages across epochs, like reported or inflated
 *          ones, must see every write of the old epoch: a read-then-arm would lose one that
 *          lands in between).
 *   read   OR the pages written since the arm, over the given guest-frame ranges, into a
 *          bitmap indexed by log page (a slot's pages are consecutive from its bit_off: the
 *          layout of struct pt_vm_slots, which both implementations share).
 *   doubt  why the log cannot be trusted right now (PT_WHY_* bits, 0 if it can), and a text
 *          that names the case for logs and status.
 *
 * Implementations: the BPF write log (vmlog.c, through wlog_bpf.c) and the userfaultfd
 * write-protect log (uffd.c). Each has its own constructor; everything after goes through
 * these calls.
 */
#ifndef PT_WLOG_BACKEND_H
#define PT_WLOG_BACKEND_H

#include <stddef.h>
#include <stdint.h>

struct pt_tracker;

/* Guest frames [gfn, gfn + npages). */
struct pt_gfn_range {
	uint64_t gfn;
	uint64_t npages;
};

struct pt_wlog;

struct pt_wlog_ops {
	const char *name;
	int (*arm)(struct pt_wlog *l, uint64_t *prev); /* prev may be NULL */
	/* -ENOENT if a range leaves the known slots (nothing is ORed then); other errors mean
	 * the log could not be read: doubt() says why. */
	int (*read)(struct pt_wlog *l, const struct pt_gfn_range *r, size_t n, uint64_t *bits);
	uint32_t (*doubt)(struct pt_wlog *l, char *text, size_t len);
	uint64_t (*pages)(struct pt_wlog *l); /* log pages: the bitmaps' size in bits */
	void (*destroy)(struct pt_wlog *l);
};

struct pt_wlog {
	const struct pt_wlog_ops *ops;
};

static inline int pt_wlog_arm(struct pt_wlog *l, uint64_t *prev)
{
	return l->ops->arm(l, prev);
}

static inline uint64_t pt_wlog_pages(struct pt_wlog *l)
{
	return l->ops->pages(l);
}

static inline int pt_wlog_read(struct pt_wlog *l, const struct pt_gfn_range *r, size_t n,
			       uint64_t *bits)
{
	return l->ops->read(l, r, n, bits);
}

/* text may be NULL. */
static inline uint32_t pt_wlog_doubt(struct pt_wlog *l, char *text, size_t len)
{
	return l->ops->doubt(l, text, len);
}

/* NULL-safe. */
static inline void pt_wlog_destroy(struct pt_wlog *l)
{
	if (l)
		l->ops->destroy(l);
}

/*
 * The BPF write log of tracked VM index `vm` as a backend. It knows what vmlog knows: taint
 * and a dropped VM. Whether the VMM's dirty-log sync after the arm completed depends on the
 * dirty-logging mode; the reconciler (cmdstate.c) adds that.
 */
int pt_wlog_bpf_new(struct pt_wlog **out, struct pt_tracker *t, uint32_t vm);

#endif
