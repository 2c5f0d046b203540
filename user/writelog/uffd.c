// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/magic.h>
#include <sys/statfs.h>

#include "pagetrack/proto.h"
#include "shared/fdlink.h"
#include "shared/log.h"
#include "uffd.h"
#include "uffd_abi.h"

#define PAGE	   4096ull
#define PAGE_SHIFT 12

/*
 * Bounds per ioctl. Both ioctls hold the VMM's mmap lock (read side) for the walk, so one call
 * covers at most a chunk of address space; a scan also stops after SCAN_MAX_PAGES written pages
 * (each re-protected: the expensive part) and continues from walk_end.
 */
#define ARM_CHUNK      (1ull << 30)
#define SCAN_CHUNK     (1ull << 30)
#define SCAN_MAX_PAGES 65536
#define SCAN_VEC       4096
/* Requested ranges closer than this (in pages) are scanned as one: fewer ioctls. */
#define MERGE_GAP 2048
/* UFFDIO_WRITEPROTECT answers EAGAIN while the VMM's address space is changing. */
#define EAGAIN_TRIES 100

/* Detail bits an arm clears (they describe one epoch) and those that stay. */
#define EPOCH_DOUBTS (PT_UFFD_LOST | PT_UFFD_UNMAPPED | PT_UFFD_SCAN_FAILED)

struct uslot {
	uint64_t gfn, npages, hva, bit_off;
};

struct pt_uffd {
	struct pt_wlog wlog; /* first: the write-log interface */
	int uffd, pm;
	uint32_t pid;
	unsigned nslots;
	struct uslot slots[PT_UFFD_MAX_SLOTS];
	uint64_t pages, words;
	uint64_t *acc; /* written pages found by scans in this epoch */
	/* Pages of acc that a read found unpopulated and not reported written (see scan_read()):
	 * no re-protecting scan would protect them again, the next arm does it explicitly. */
	uint64_t *unarmed;
	bool any_unarmed;
	uint32_t detail;
	bool state_unknown; /* page tables may hold unreported writes: arm protects all */
	struct pt_uffd_stats st;
	struct page_region vec[SCAN_VEC];
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/* --- ioctls ----------------------------------------------------------------------------------- */

/* Record a failed ioctl as doubt. Returns -err. */
static int fail(struct pt_uffd *u, int err, bool scan)
{
	uint32_t d;

	if (err == ESRCH)
		d = PT_UFFD_VMM_GONE;
	else if (scan && err == EPERM) /* PM_SCAN_CHECK_WPASYNC: a VMA without async WP */
		d = PT_UFFD_LOST;
	else if (!scan && err == ENOENT) /* no VMA registered for WP in the range */
		d = PT_UFFD_LOST;
	else if (scan && err == ENOTTY)
		d = PT_UFFD_NO_SCAN;
	else
		d = PT_UFFD_SCAN_FAILED;
	if (!(u->detail & d))
		pt_warn("uffd log of pid %u: %s failed: %s", u->pid,
			scan ? "PAGEMAP_SCAN" : "UFFDIO_WRITEPROTECT", strerror(err));
	u->detail |= d;
	u->st.last_errno = err;
	/* The page tables may hold writes nobody read: the next arm protects everything and
	 * counts every page as written in the ending epoch. */
	if (d & (PT_UFFD_LOST | PT_UFFD_SCAN_FAILED | PT_UFFD_VMM_GONE))
		u->state_unknown = true;
	return -err;
}

static int wp_range(struct pt_uffd *u, uint64_t hva, uint64_t len)
{
	struct uffdio_writeprotect w = {
		.range = { .start = hva, .len = len },
		.mode = UFFDIO_WRITEPROTECT_MODE_WP,
	};
	int tries = 0;

	u->st.ioctls++;
	while (ioctl(u->uffd, UFFDIO_WRITEPROTECT, &w)) {
		if ((errno != EAGAIN && errno != EINTR) || ++tries == EAGAIN_TRIES)
			return fail(u, errno, false);
	}
	return 0;
}

/*
 * One PAGEMAP_SCAN over [start, end): regions into u->vec, returns their number or -errno.
 * Not retried on any error: a re-protecting scan that failed may have consumed written state
 * it could not report.
 */
static long scan(struct pt_uffd *u, uint64_t start, uint64_t end, uint64_t flags, uint64_t cat,
		 uint64_t ret, uint64_t *walk_end)
{
	struct pm_scan_arg a = {
		.size = sizeof(a),
		.flags = flags,
		.start = start,
		.end = end,
		.vec = (uintptr_t)u->vec,
		.vec_len = SCAN_VEC,
		/* Bounds the re-protecting work of one call; a read-only walk stops when the
		 * vector is full. Either way the next call continues from walk_end. */
		.max_pages = flags & PM_SCAN_WP_MATCHING ? SCAN_MAX_PAGES : 0,
		.category_mask = cat,
		.return_mask = ret,
	};
	long n;

	u->st.ioctls++;
	n = ioctl(u->pm, PAGEMAP_SCAN, &a);
	if (n < 0)
		return -errno;
	if (n > SCAN_VEC || a.walk_end < start || a.walk_end > end)
		return -EIO;
	*walk_end = a.walk_end;
	return n;
}

static int unmapped(struct pt_uffd *u, uint64_t hva)
{
	if (!(u->detail & PT_UFFD_UNMAPPED))
		pt_warn("uffd log of pid %u: guest memory at %#llx not mapped", u->pid,
			(unsigned long long)hva);
	u->detail |= PT_UFFD_UNMAPPED;
	return -EFAULT;
}

/* Is [start, end) entirely mapped by VMAs registered for async WP? 0, -EFAULT or -errno. */
static int covered(struct pt_uffd *u, uint64_t start, uint64_t end)
{
	uint64_t at = start, we;

	while (at < end) {
		long n = scan(u, at, end, PM_SCAN_CHECK_WPASYNC, PAGE_IS_WPALLOWED,
			      PAGE_IS_WPALLOWED, &we);
		uint64_t from = at;

		if (n < 0)
			return (int)n;
		/* Regions merge across VMAs: a gap is a hole in the mapping. */
		for (long i = 0; i < n; i++) {
			if (u->vec[i].start != at || u->vec[i].end <= at || u->vec[i].end > end)
				return -EFAULT;
			at = u->vec[i].end;
		}
		if (we >= end)
			break;
		if (at == from) /* no progress: the vector cannot be full with nothing in it */
			return -EIO;
	}
	return at == end ? 0 : -EFAULT;
}

/* --- bitmaps (log page index)  ---------------------------------------------------------------- */

/* Set bits [bit, bit + n) in acc; returns how many were newly set. */
static uint64_t acc_set(uint64_t *acc, uint64_t bit, uint64_t n)
{
	uint64_t added = 0;

	for (uint64_t end = bit + n; bit < end;) {
		uint64_t off = bit % 64, k = 64 - off < end - bit ? 64 - off : end - bit;
		uint64_t mask = (k == 64 ? ~0ull : (1ull << k) - 1) << off;

		added += __builtin_popcountll(mask & ~acc[bit / 64]);
		acc[bit / 64] |= mask;
		bit += k;
	}
	return added;
}

static void acc_or(const uint64_t *acc, uint64_t bit, uint64_t n, uint64_t *out)
{
	for (uint64_t end = bit + n; bit < end;) {
		uint64_t off = bit % 64, k = 64 - off < end - bit ? 64 - off : end - bit;
		uint64_t mask = (k == 64 ? ~0ull : (1ull << k) - 1) << off;

		out[bit / 64] |= acc[bit / 64] & mask;
		bit += k;
	}
}

/* --- arm and read ------------------------------------------------------------------------ */

/* Is an output region of a scan over [from, to) well formed? */
static bool region_ok(const struct page_region *r, uint64_t from, uint64_t to)
{
	return r->start >= from && r->end <= to && r->start < r->end &&
	       !((r->start | r->end) % PAGE);
}

/*
 * Re-protect every page of slot s written since the last arm, atomically reporting each into
 * `prev` (if given): a write that lands while we re-protect is either reported here (old
 * epoch) or faults again afterwards (new epoch); none is lost between a read and a protect.
 *
 * Cost: a walk of the slot's page tables plus, per page table (2 MiB) holding a written page,
 * one page-table write and one TLB flush: the kernel flushes once per PMD inside the scan,
 * on every CPU the VMM has run on. Pages written in runs are cheap, pages scattered one per
 * 2 MiB the worst case. Measured on a PVM guest and kept out (test_uffd_arm_race checks the
 * guarantee): bigger chunks, a bigger vector or no max_pages change nothing (the kernel
 * restarts its walk every 512 regions anyway); a read-only pre-scan followed by scans or
 * UFFDIO_WRITEPROTECT over just the written regions adds ioctls that cost more than the
 * flushes they might save. UFFDIO_WRITEPROTECT over merged spans would batch the flushes but
 * silently re-protect a page of a span written after the pre-scan: a lost write.
 */
static int arm_scan(struct pt_uffd *u, const struct uslot *s, uint64_t *prev)
{
	uint64_t hva = s->hva, end = s->hva + (s->npages << PAGE_SHIFT), we;

	while (hva < end) {
		uint64_t stop = end - hva < SCAN_CHUNK ? end : hva + SCAN_CHUNK;
		long n = scan(u, hva, stop, PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
			      PAGE_IS_WRITTEN, PAGE_IS_WRITTEN, &we);

		if (n < 0)
			return fail(u, (int)-n, true);
		for (long i = 0; i < n; i++) {
			const struct page_region *r = &u->vec[i];

			if (!region_ok(r, hva, stop))
				return fail(u, EIO, true);
			if (prev)
				acc_set(prev, s->bit_off + (r->start - s->hva) / PAGE,
					(r->end - r->start) / PAGE);
		}
		if (we <= hva)
			return fail(u, EIO, true);
		hva = we;
	}
	return 0;
}

/* Write-protect all of slot s, whatever its state (UFFDIO_WRITEPROTECT, in chunks). */
static int arm_protect(struct pt_uffd *u, const struct uslot *s)
{
	uint64_t len = s->npages << PAGE_SHIFT;
	int err = 0;

	for (uint64_t off = 0; !err && off < len; off += ARM_CHUNK)
		err = wp_range(u, s->hva + off, len - off < ARM_CHUNK ? len - off : ARM_CHUNK);
	return err;
}

/*
 * Protect pages [p, p + n) of slot s. hugetlbfs protects whole huge pages only (EINVAL for
 * part of one): then the run grows to 2 MiB boundaries inside the slot, and what it grew by
 * goes into prev too (the same unpopulated huge entries; written for all we know).
 */
static int protect_run(struct pt_uffd *u, const struct uslot *s, uint64_t p, uint64_t n,
		       uint64_t *prev)
{
	const uint64_t huge = 2ull << 20;
	uint64_t start = s->hva + (p << PAGE_SHIFT), end = start + (n << PAGE_SHIFT);
	uint64_t slot_end = s->hva + (s->npages << PAGE_SHIFT);
	struct uffdio_writeprotect w = { .range = { start, end - start },
					 .mode = UFFDIO_WRITEPROTECT_MODE_WP };

	u->st.ioctls++;
	if (!ioctl(u->uffd, UFFDIO_WRITEPROTECT, &w))
		return 0;
	if (errno == EINVAL) {
		start &= ~(huge - 1);
		start = start < s->hva ? s->hva : start;
		end = (end + huge - 1) & ~(huge - 1);
		end = end > slot_end ? slot_end : end;
		if (prev)
			acc_set(prev, s->bit_off + (start - s->hva) / PAGE, (end - start) / PAGE);
	}
	return wp_range(u, start, end - start);
}

/*
 * Protect the pages reads found unpopulated and unprotected (unpopulated_unarmed()), a run at
 * a time. They are all in prev already (acc holds them), so a write that lands in one before
 * it is protected here is reported, not hidden; one after it faults in the new epoch.
 */
static int arm_unarmed(struct pt_uffd *u, uint64_t *prev)
{
	int err = 0;

	for (unsigned i = 0; !err && i < u->nslots; i++) {
		const struct uslot *s = &u->slots[i];

		for (uint64_t p = 0, run; !err && p < s->npages; p += run) {
			uint64_t b = s->bit_off + p, rest = u->unarmed[b / 64] >> (b % 64);

			if (!rest) { /* nothing more in this word */
				run = 64 - b % 64;
				continue;
			}
			for (run = 0; p + run < s->npages &&
				      u->unarmed[(b + run) / 64] >> ((b + run) % 64) & 1;)
				run++;
			if (run)
				err = protect_run(u, s, p, run, prev);
			else
				run = 1;
		}
	}
	return err;
}

int pt_uffd_arm_fold(struct pt_uffd *u, uint64_t *prev)
{
	bool unknown = u->state_unknown;
	uint64_t t0 = now_ns();
	int err = 0;

	/* Until every slot is protected the log vouches for nothing. */
	u->detail = (u->detail & ~EPOCH_DOUBTS) | PT_UFFD_NOT_ARMED;
	u->state_unknown = true;
	if (prev && unknown)
		acc_set(prev, 0, u->pages);
	else if (prev)
		acc_or(u->acc, 0, u->pages, prev);
	memset(u->acc, 0, u->words * 8);
	/*
	 * Normally only the pages written in the ending epoch are unprotected: the re-protecting
	 * scan finds and protects just those, and reports them. After open or a failure the
	 * page-table state is unknown: protect everything (and everything counts as written).
	 */
	for (unsigned i = 0; !err && i < u->nslots; i++)
		err = unknown ? arm_protect(u, &u->slots[i]) : arm_scan(u, &u->slots[i], prev);
	if (!err && !unknown && u->any_unarmed)
		err = arm_unarmed(u, prev);
	/* Only when set: an untouched bitmap stays unbacked (2 MiB for a 64 GiB guest). */
	if (!err && u->any_unarmed) {
		memset(u->unarmed, 0, u->words * 8);
		u->any_unarmed = false;
	}
	u->st.last_arm_ns = now_ns() - t0;
	if (err)
		return err;
	u->detail &= ~PT_UFFD_NOT_ARMED;
	u->state_unknown = false;
	u->st.arms++;
	return 0;
}

int pt_uffd_arm(struct pt_uffd *u)
{
	return pt_uffd_arm_fold(u, NULL);
}

/*
 * An async-WP page that is neither present nor swapped (no page-table entry, or no page table)
 * carries no write-protect marker: protection put one there (UFFD_FEATURE_WP_UNPOPULATED), so
 * something zapped it since, and what it held may live on elsewhere. A shared hugetlbfs page
 * written and then MADV_DONTNEED'd is such an entry, its data still in the file, and
 * PAGEMAP_SCAN reports it not written even on kernels that report an empty pte as written
 * (before the July 2026 stable fixes "fix PAGEMAP_SCAN written state for unpopulated ptes" and
 * "... for PMD holes", a shmem pte or an anon THP hole dropped the same way read not written
 * too). Whatever the kernel says, it counts as written, and since no re-protecting scan
 * matches it, the next arm protects it explicitly.
 */
static bool unpopulated_unarmed(uint64_t cat)
{
	return !(cat & (PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_WRITTEN));
}

/*
 * Read [hva, hva + len) of slot s without changing it: one walk returns regions covering every
 * page mapped in a VMA registered for async WP, written or not. Written pages go into acc; a
 * gap between regions is memory with no mapping at all, which a scan would otherwise skip in
 * silence. Written pages stay unprotected (acc remembers them; the next arm re-protects).
 */
static int scan_read(struct pt_uffd *u, const struct uslot *s, uint64_t hva, uint64_t len)
{
	uint64_t end = hva + len, at = hva, we;

	while (at < end) {
		uint64_t stop = end - at < SCAN_CHUNK ? end : at + SCAN_CHUNK, from = at;
		long n = scan(u, at, stop, PM_SCAN_CHECK_WPASYNC, PAGE_IS_WPALLOWED,
			      PAGE_IS_WPALLOWED | PAGE_IS_WRITTEN | PAGE_IS_PRESENT |
				      PAGE_IS_SWAPPED,
			      &we);

		if (n < 0)
			return fail(u, (int)-n, true);
		for (long i = 0; i < n; i++) {
			const struct page_region *r = &u->vec[i];
			uint64_t bit = s->bit_off + (r->start - s->hva) / PAGE;

			if (!region_ok(r, at, stop))
				return fail(u, EIO, true);
			if (r->start != at)
				return unmapped(u, at);
			if (unpopulated_unarmed(r->categories)) {
				acc_set(u->unarmed, bit, (r->end - r->start) / PAGE);
				u->any_unarmed = true;
			}
			if (r->categories & PAGE_IS_WRITTEN || unpopulated_unarmed(r->categories))
				u->st.pages_written +=
					acc_set(u->acc, bit, (r->end - r->start) / PAGE);
			at = r->end;
		}
		if (we >= stop && at < stop)
			return unmapped(u, at);
		if (at == from)
			return fail(u, EIO, true);
	}
	return 0;
}

/* One piece of a request, inside slot `slot`: log pages [bit, bit + n). */
struct piece {
	unsigned slot;
	uint64_t bit, n;
};

static int scan_piece(struct pt_uffd *u, const struct piece *p)
{
	const struct uslot *s = &u->slots[p->slot];

	return scan_read(u, s, s->hva + ((p->bit - s->bit_off) << PAGE_SHIFT), p->n << PAGE_SHIFT);
}

/* Split gfn range r into slot pieces, calling fn on each; -ENOENT if it leaves the slots. */
static int for_pieces(struct pt_uffd *u, const struct pt_gfn_range *r,
		      int (*fn)(struct pt_uffd *u, const struct piece *p, void *arg), void *arg)
{
	uint64_t gfn = r->gfn, left = r->npages;

	while (left) {
		struct piece p = { .slot = u->nslots };
		int err;

		for (unsigned i = 0; i < u->nslots; i++)
			if (gfn >= u->slots[i].gfn && gfn - u->slots[i].gfn < u->slots[i].npages)
				p.slot = i;
		if (p.slot == u->nslots)
			return -ENOENT;
		p.bit = u->slots[p.slot].bit_off + gfn - u->slots[p.slot].gfn;
		p.n = u->slots[p.slot].npages - (gfn - u->slots[p.slot].gfn);
		p.n = p.n < left ? p.n : left;
		err = fn ? fn(u, &p, arg) : 0;
		if (err)
			return err;
		gfn += p.n;
		left -= p.n;
	}
	return 0;
}

/* Pieces close together in one slot are scanned as one (the pending piece). */
static int merge_piece(struct pt_uffd *u, const struct piece *p, void *arg)
{
	struct piece *pend = arg;
	int err = 0;

	if (pend->n && pend->slot == p->slot && p->bit >= pend->bit &&
	    p->bit <= pend->bit + pend->n + MERGE_GAP) {
		uint64_t end =
			p->bit + p->n > pend->bit + pend->n ? p->bit + p->n : pend->bit + pend->n;

		pend->n = end - pend->bit;
		return 0;
	}
	if (pend->n)
		err = scan_piece(u, pend);
	*pend = *p;
	return err;
}

static int or_piece(struct pt_uffd *u, const struct piece *p, void *arg)
{
	acc_or(u->acc, p->bit, p->n, arg);
	return 0;
}

int pt_uffd_read(struct pt_uffd *u, const struct pt_gfn_range *r, size_t n, uint64_t *bits)
{
	struct piece pend = { 0 };
	uint64_t t0 = now_ns();
	int err = 0;

	for (size_t i = 0; i < n; i++) {
		if (for_pieces(u, &r[i], NULL, NULL))
			return -ENOENT;
		u->st.pages_scanned += r[i].npages;
	}
	for (size_t i = 0; !err && i < n; i++)
		err = for_pieces(u, &r[i], merge_piece, &pend);
	if (!err && pend.n)
		err = scan_piece(u, &pend);
	/* On error the doubt says why; the bits found so far are still true. */
	for (size_t i = 0; i < n; i++)
		for_pieces(u, &r[i], or_piece, bits);
	u->st.reads++;
	u->st.last_read_ns = now_ns() - t0;
	return err;
}

/* --- doubt ------------------------------------------------------------------------------- */

uint32_t pt_uffd_doubt(struct pt_uffd *u, uint32_t *detail)
{
	uint32_t d = u->detail, why = 0;

	if (detail)
		*detail = d;
	if (d & PT_UFFD_NOT_ARMED)
		why |= PT_WHY_NO_SYNC;
	if (d & (PT_UFFD_LOST | PT_UFFD_NO_SCAN | PT_UFFD_VMM_GONE))
		why |= PT_WHY_UFFD_LOST;
	if (d & PT_UFFD_NO_SCAN)
		why |= PT_WHY_UNTRACKED;
	if (d & PT_UFFD_UNMAPPED)
		why |= PT_WHY_UNKNOWN_MEM;
	if (d & PT_UFFD_SCAN_FAILED)
		why |= PT_WHY_TAINTED;
	return why;
}

const char *pt_uffd_doubt_str(uint32_t detail, int err, char *buf, size_t len)
{
	static const char *const names[] = { "not-armed",   "uffd-lost",       "memory-unmapped",
					     "scan-failed", "no-pagemap-scan", "vmm-gone" };
	size_t off = 0;

	buf[0] = 0;
	for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (detail & (1u << i))
			off += snprintf(buf + off, off < len ? len - off : 0, "%s%s",
					off ? "," : "", names[i]);
	if (!off)
		snprintf(buf, len, "none");
	else if (err && off < len)
		snprintf(buf + off, len - off, " (%s)", strerror(err));
	return buf;
}

/* --- validation and setup ---------------------------------------------------------------- */

#define ERR(code, ...)                              \
	do {                                        \
		snprintf(err, errlen, __VA_ARGS__); \
		return code;                        \
	} while (0)

/* The pagemap fd: procfs, and the path of vmm_pid's pagemap (opened by the VMM itself). */
static int check_fds(int uffd, int pm, uint32_t pid, char *err, size_t errlen)
{
	char link[256], want[64];
	struct statfs fs;
	unsigned other;
	int end = 0;

	if (!pt_fd_is_anon(uffd, "[userfaultfd]"))
		ERR(-EBADF, "the uffd is not a userfaultfd");
	if (fstatfs(pm, &fs) || fs.f_type != PROC_SUPER_MAGIC || pt_fd_link(pm, link, sizeof(link)))
		ERR(-EBADF, "the pagemap fd is not a /proc/PID/pagemap file");
	snprintf(want, sizeof(want), "/proc/%u/pagemap", pid);
	if (!strcmp(link, want))
		return 0;
	if (sscanf(link, "/proc/%u/pagemap%n", &other, &end) == 1 && end && !link[end])
		ERR(-EPERM, "the pagemap fd belongs to pid %u, not the VMM (pid %u)", other, pid);
	ERR(-EBADF, "the pagemap fd is %.100s, not %s", link, want);
}

static int build_slots(struct pt_uffd *u, const struct pt_uffd_slot *sl, unsigned n, char *err,
		       size_t errlen)
{
	if (!n || n > PT_UFFD_MAX_SLOTS)
		ERR(-EINVAL, "%u slots (1 to %u)", n, PT_UFFD_MAX_SLOTS);
	for (unsigned i = 0; i < n; i++) {
		struct uslot *s = &u->slots[i];

		if ((sl[i].gpa | sl[i].size | sl[i].hva) % PAGE || !sl[i].size ||
		    sl[i].gpa + sl[i].size < sl[i].gpa || sl[i].hva + sl[i].size < sl[i].hva)
			ERR(-EINVAL, "slot %u: unaligned, empty or overflowing", i);
		for (unsigned j = 0; j < i; j++)
			if (sl[i].gpa < sl[j].gpa + sl[j].size &&
			    sl[j].gpa < sl[i].gpa + sl[i].size)
				ERR(-EINVAL, "slots %u and %u overlap", j, i);
		/* Two guest ranges over the same memory: an arm reports a write to one alias
		 * only (it re-protects the page while folding the first), and discarding a free
		 * page of one destroys the other. */
		for (unsigned j = 0; j < i; j++)
			if (sl[i].hva < sl[j].hva + sl[j].size &&
			    sl[j].hva < sl[i].hva + sl[i].size)
				ERR(-EINVAL, "slots %u and %u map the same memory (hva %#llx)", j,
				    i, (unsigned long long)sl[i].hva);
		s->gfn = sl[i].gpa >> PAGE_SHIFT;
		s->npages = sl[i].size >> PAGE_SHIFT;
		s->hva = sl[i].hva;
		s->bit_off = u->pages;
		u->pages += s->npages;
	}
	u->nslots = n;
	return 0;
}

/*
 * UFFDIO_WRITEPROTECT (un-protect) of the first page of slot s: 4 KiB, or a huge page where
 * the memory is hugetlbfs (EINVAL for less than one). 0 or -1 (errno).
 */
static int unprotect_first(int uffd, const struct uslot *s)
{
	static const uint64_t sizes[] = { PAGE, 2ull << 20, 1ull << 30 };

	for (unsigned k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		struct uffdio_writeprotect w = { .range = { .start = s->hva, .len = sizes[k] } };

		if (sizes[k] > s->npages << PAGE_SHIFT || s->hva % sizes[k])
			break;
		if (!ioctl(uffd, UFFDIO_WRITEPROTECT, &w))
			return 0;
		if (errno != EINVAL)
			return -1;
	}
	errno = EINVAL;
	return -1;
}

/*
 * Prove what can be proved without changing the VMM's state: every slot is mapped and
 * registered for async WP in the pagemap fd's address space (a read-only scan; it also proves
 * the kernel has PAGEMAP_SCAN), and the uffd is one that can write-protect there. The uffd's
 * features cannot be read back once UFFDIO_API was done; the probe un-protects the first
 * page of each slot (nothing is armed yet, and an unprotected page can only read as written).
 */
static int probe(struct pt_uffd *u, char *err, size_t errlen)
{
	for (unsigned i = 0; i < u->nslots; i++) {
		const struct uslot *s = &u->slots[i];
		int r = covered(u, s->hva, s->hva + (s->npages << PAGE_SHIFT));

		if (r == -ENOTTY || r == -EINVAL)
			ERR(-EOPNOTSUPP, "the kernel lacks PAGEMAP_SCAN (Linux 6.7)");
		if (r == -EPERM)
			ERR(-ENOENT,
			    "slot %u: memory not registered for async write-protect "
			    "(UFFD_FEATURE_WP_ASYNC|WP_UNPOPULATED, UFFDIO_REGISTER_MODE_WP)",
			    i);
		if (r == -EFAULT)
			ERR(-EFAULT, "slot %u: memory at %#llx not (entirely) mapped", i,
			    (unsigned long long)s->hva);
		if (r == -ESRCH)
			ERR(-ESRCH, "the VMM's address space is gone");
		if (r)
			ERR(r, "slot %u: PAGEMAP_SCAN: %s", i, strerror(-r));
		if (unprotect_first(u->uffd, s))
			ERR(errno == ENOENT ? -ENOENT : -errno,
			    "slot %u: the uffd cannot write-protect the VMM's memory: %s", i,
			    strerror(errno));
	}
	return 0;
}

static int uffd_wlog_read(struct pt_wlog *l, const struct pt_gfn_range *r, size_t n, uint64_t *bits)
{
	return pt_uffd_read((struct pt_uffd *)l, r, n, bits);
}

static int uffd_wlog_arm(struct pt_wlog *l, uint64_t *prev)
{
	return pt_uffd_arm_fold((struct pt_uffd *)l, prev);
}

static uint64_t uffd_wlog_pages(struct pt_wlog *l)
{
	return ((struct pt_uffd *)l)->pages;
}

static uint32_t uffd_wlog_doubt(struct pt_wlog *l, char *text, size_t len)
{
	struct pt_uffd *u = (struct pt_uffd *)l;
	uint32_t detail, why = pt_uffd_doubt(u, &detail);

	if (text)
		pt_uffd_doubt_str(detail, u->st.last_errno, text, len);
	return why;
}

static void uffd_wlog_destroy(struct pt_wlog *l)
{
	pt_uffd_close((struct pt_uffd *)l);
}

static const struct pt_wlog_ops uffd_ops = {
	.name = "uffd",
	.arm = uffd_wlog_arm,
	.read = uffd_wlog_read,
	.doubt = uffd_wlog_doubt,
	.pages = uffd_wlog_pages,
	.destroy = uffd_wlog_destroy,
};

int pt_uffd_open(struct pt_uffd **out, int uffd, int pagemap_fd, uint32_t vmm_pid,
		 const struct pt_uffd_slot *slots, unsigned n, char *err, size_t errlen)
{
	struct pt_uffd *u = calloc(1, sizeof(*u));
	int r;

	if (!u)
		ERR(-ENOMEM, "out of memory");
	u->wlog.ops = &uffd_ops;
	u->uffd = uffd;
	u->pm = pagemap_fd;
	u->pid = vmm_pid;
	u->detail = PT_UFFD_NOT_ARMED;
	u->state_unknown = true;
	r = check_fds(uffd, pagemap_fd, vmm_pid, err, errlen);
	if (!r)
		r = build_slots(u, slots, n, err, errlen);
	if (!r) {
		u->words = (u->pages + 63) / 64;
		u->acc = calloc(u->words ? u->words : 1, 8);
		u->unarmed = calloc(u->words ? u->words : 1, 8);
		if (!u->acc || !u->unarmed) {
			snprintf(err, errlen, "out of memory");
			r = -ENOMEM;
		}
	}
	if (!r)
		r = probe(u, err, errlen);
	if (r) {
		free(u->acc);
		free(u->unarmed);
		free(u);
		return r;
	}
	pt_info("uffd log of pid %u: %u slots, %llu pages", vmm_pid, n,
		(unsigned long long)u->pages);
	*out = u;
	return 0;
}

void pt_uffd_close(struct pt_uffd *u)
{
	if (!u)
		return;
	close(u->uffd);
	close(u->pm);
	free(u->acc);
	free(u->unarmed);
	free(u);
}

struct pt_wlog *pt_uffd_wlog(struct pt_uffd *u)
{
	return &u->wlog;
}

uint64_t pt_uffd_pages(const struct pt_uffd *u)
{
	return u->pages;
}

const struct pt_uffd_stats *pt_uffd_stats(const struct pt_uffd *u)
{
	return &u->st;
}

const uint64_t *pt_uffd_bits(const struct pt_uffd *u)
{
	return u->acc;
}
