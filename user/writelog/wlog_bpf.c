// SPDX-License-Identifier: GPL-2.0
/* The BPF write log (vmlog.c) behind the write-log interface: a thin adapter. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend.h"
#include "pagetrack/proto.h"
#include "vmlog.h"

struct wlog_bpf {
	struct pt_wlog base;
	struct pt_tracker *t;
	uint32_t vm;
};

static struct wlog_bpf *to_bpf(struct pt_wlog *l)
{
	return (struct wlog_bpf *)l;
}

static void fold_prev(void *arg, uint64_t w, uint64_t written)
{
	((uint64_t *)arg)[w] |= written;
}

static int bpf_arm(struct pt_wlog *l, uint64_t *prev)
{
	uint64_t epoch;

	return pt_vm_arm_fold(to_bpf(l)->t, to_bpf(l)->vm, prev ? fold_prev : NULL, prev, &epoch);
}

static uint64_t bpf_pages(struct pt_wlog *l)
{
	return pt_vm(to_bpf(l)->t, to_bpf(l)->vm)->log_bits;
}

/* The slot holding gfn, or NULL (address space 0 only, as the reconciler). */
static const struct pt_slot *slot_of(const struct pt_vm_slots *sl, uint64_t gfn)
{
	for (uint32_t i = 0; i < sl->nslots && i < PT_MAX_SLOTS; i++) {
		const struct pt_slot *s = &sl->slots[i];

		if ((s->flags & PT_SLOT_VALID) && !(s->id >> 16) && gfn >= s->base_gfn &&
		    gfn - s->base_gfn < s->npages)
			return s;
	}
	return NULL;
}

/* OR log bits [page, page + n) into bits. */
static void or_pages(struct wlog_bpf *b, uint64_t page, uint64_t n, uint64_t *bits)
{
	for (uint64_t end = page + n; page < end;) {
		uint64_t off = page % 64, k = 64 - off < end - page ? 64 - off : end - page;
		uint64_t mask = (k == 64 ? ~0ull : (1ull << k) - 1) << off;

		bits[page / 64] |= pt_vm_log_word(b->t, b->vm, page / 64) & mask;
		page += k;
	}
}

static int bpf_read(struct pt_wlog *l, const struct pt_gfn_range *r, size_t n, uint64_t *bits)
{
	struct wlog_bpf *b = to_bpf(l);
	uint64_t limit = pt_vm(b->t, b->vm)->log_bits;
	struct pt_vm_slots sl;

	if (pt_vm_slots_get(b->t, b->vm, &sl))
		return -EIO;
	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < n; i++) {
			uint64_t gfn = r[i].gfn, left = r[i].npages;

			while (left) {
				const struct pt_slot *s = slot_of(&sl, gfn);
				uint64_t k;

				if (!s || s->bit_off + s->npages > limit)
					return -ENOENT;
				k = s->npages - (gfn - s->base_gfn);
				k = k < left ? k : left;
				/* First pass validates: a bad range ORs nothing. */
				if (pass)
					or_pages(b, s->bit_off + gfn - s->base_gfn, k, bits);
				gfn += k;
				left -= k;
			}
		}
	}
	return 0;
}

static uint32_t bpf_doubt(struct pt_wlog *l, char *text, size_t len)
{
	struct pt_vm_state *st = pt_vm(to_bpf(l)->t, to_bpf(l)->vm);
	uint64_t epoch = __atomic_load_n(&st->epoch, __ATOMIC_ACQUIRE);
	uint32_t why = 0;

	if (pt_epoch_tainted(st, epoch))
		why |= PT_WHY_TAINTED;
	if (!(__atomic_load_n(&st->flags, __ATOMIC_ACQUIRE) & PT_VM_ACTIVE))
		why |= PT_WHY_UNTRACKED;
	if (text)
		snprintf(text, len, "%s",
			 !why			  ? "none"
			 : why & PT_WHY_UNTRACKED ? "vm-not-tracked"
						  : "tainted-epoch");
	return why;
}

static void bpf_destroy(struct pt_wlog *l)
{
	free(l);
}

static const struct pt_wlog_ops bpf_ops = {
	.name = "bpf",
	.arm = bpf_arm,
	.read = bpf_read,
	.doubt = bpf_doubt,
	.pages = bpf_pages,
	.destroy = bpf_destroy,
};

int pt_wlog_bpf_new(struct pt_wlog **out, struct pt_tracker *t, uint32_t vm)
{
	struct wlog_bpf *b;

	if (vm >= PT_MAX_VMS)
		return -EINVAL;
	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->base.ops = &bpf_ops;
	b->t = t;
	b->vm = vm;
	*out = &b->base;
	return 0;
}
