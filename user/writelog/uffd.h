/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The userfaultfd write log: for VMMs without a dirty ring (or without KVM dirty logging at
 * all). The VMM creates a userfaultfd with UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
 * registers its guest memory with UFFDIO_REGISTER_MODE_WP and hands the service that uffd and
 * an fd of its /proc/self/pagemap. Then:
 *
 *   arm   write-protects every slot. A later write by anyone through the VMM's page tables
 *         (the guest through KVM, whose MMU notifier dropped its writable mappings, or the VMM
 *         itself) faults once; in async mode the kernel unprotects the page and leaves it
 *         "written". No handler thread is involved. The first arm (and any after a failure)
 *         is UFFDIO_WRITEPROTECT over everything; later ones are a PAGEMAP_SCAN with
 *         PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC, category PAGE_IS_WRITTEN, which
 *         re-protects only the pages written in the ending epoch and reports them in the same
 *         atomic step (pt_uffd_arm_fold(): what reported/inflated pages need).
 *   read  a read-only PAGEMAP_SCAN (PM_SCAN_CHECK_WPASYNC) over only the ranges asked for,
 *         returning PAGE_IS_WPALLOWED | PAGE_IS_WRITTEN regions: the written pages, and
 *         (as gaps) memory that is no longer mapped at all, in one walk. It changes nothing:
 *         re-protecting at read time would cost a TLB flush per page table and a second
 *         fault per written page for nothing, since a page once written stays written for
 *         the epoch. The backend still keeps what it found in its own bitmap for the epoch
 *         (a written page later discarded with MADV_DONTNEED must stay written). A page with
 *         no page-table entry at all (zapped since the arm: its data may live on in a shared
 *         file) counts as written whatever the kernel says, and the next arm protects it
 *         explicitly, since no re-protecting scan does.
 *
 * Fail safe: any error leaves a reason in doubt() until the next successful arm, and a
 * failure that may have lost written state makes the next arm protect everything and report
 * every page as written; nothing here ever reports a page unwritten that it could not read. Writes
 * that do not fault through the registered mapping are not seen: another mapping of shared guest
 * memory (a vhost-user backend, a second mapping in the VMM), write(2) to its file, DMA and
 * io_uring fixed buffers into pinned pages (PROTOCOL.md 5a rule 3).
 *
 * Not thread-safe: one caller (the service's event loop) at a time.
 */
#ifndef PT_UFFD_H
#define PT_UFFD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"

#define PT_UFFD_MAX_SLOTS 32

struct pt_uffd_slot {
	uint64_t gpa;  /* page aligned */
	uint64_t size; /* bytes, page aligned, > 0 */
	uint64_t hva;  /* the VMM's virtual address of gpa, page aligned */
};

/* Why the log cannot be trusted (pt_uffd_doubt() detail bits). */
#define PT_UFFD_NOT_ARMED (1u << 0) /* no successful arm yet (or the last one failed) */
/* Memory no longer registered for async WP with this uffd: unregistered, uffd closed,
 * memory remapped. */
#define PT_UFFD_LOST	    (1u << 1)
#define PT_UFFD_UNMAPPED    (1u << 2) /* part of the guest memory is not mapped */
#define PT_UFFD_SCAN_FAILED (1u << 3) /* a scan failed: written state may have been consumed */
#define PT_UFFD_NO_SCAN	    (1u << 4) /* the kernel lacks PAGEMAP_SCAN (Linux 6.7) */
#define PT_UFFD_VMM_GONE    (1u << 5) /* the VMM's address space is gone */

struct pt_uffd_stats {
	uint64_t arms, reads;
	uint64_t ioctls;	/* UFFDIO_WRITEPROTECT and PAGEMAP_SCAN calls */
	uint64_t pages_scanned; /* pages covered by reads */
	uint64_t pages_written; /* written pages found by reads (each counted once an epoch) */
	uint64_t last_arm_ns, last_read_ns;
	int last_errno; /* of the last failed ioctl, 0 if none */
};

struct pt_uffd;

/*
 * Validate and adopt the fds: `uffd` must be a userfaultfd, `pagemap_fd` an fd of
 * /proc/<vmm_pid>/pagemap, and every slot's memory [hva, hva + size) mapped and registered
 * with that uffd for async write-protect. On success the backend owns both fds (closed by
 * pt_uffd_close()); on failure the caller still does, and `err` says why. The log is not armed
 * yet: doubt() answers PT_UFFD_NOT_ARMED until pt_uffd_arm().
 *
 * Returns 0, -EBADF (fd of the wrong type), -EPERM (pagemap of another process),
 * -EINVAL (slot geometry: unaligned, or guest or host ranges of two slots overlap), -ENOENT (memory
 * not registered with this uffd for async WP), -EFAULT (memory not mapped), -EOPNOTSUPP (no
 * PAGEMAP_SCAN), -ENOMEM.
 */
int pt_uffd_open(struct pt_uffd **out, int uffd, int pagemap_fd, uint32_t vmm_pid,
		 const struct pt_uffd_slot *slots, unsigned n, char *err, size_t errlen);
void pt_uffd_close(struct pt_uffd *u); /* NULL-safe */

/* Write-protect every slot and start a new epoch. */
int pt_uffd_arm(struct pt_uffd *u);
/*
 * The same, also ORing into `prev` (log page index) every page written in the ending epoch,
 * atomically with its re-protection (after open or a failure: every page, as nothing can be
 * vouched for), so a caller that keeps pages across epochs (reported, inflated) misses none.
 */
int pt_uffd_arm_fold(struct pt_uffd *u, uint64_t *prev);
/* OR the pages written since the arm, inside the ranges, into bits (log page index). */
int pt_uffd_read(struct pt_uffd *u, const struct pt_gfn_range *r, size_t n, uint64_t *bits);
/* PT_WHY_* bits (0: the log can be trusted); *detail gets the PT_UFFD_* bits (may be NULL). */
uint32_t pt_uffd_doubt(struct pt_uffd *u, uint32_t *detail);
/* "uffd-lost,unmapped (errno 1)" or "none". */
const char *pt_uffd_doubt_str(uint32_t detail, int err, char *buf, size_t len);

/* The same object behind the write-log interface (destroy closes it). */
struct pt_wlog *pt_uffd_wlog(struct pt_uffd *u);

uint64_t pt_uffd_pages(const struct pt_uffd *u); /* log pages: sum of slot sizes */
const struct pt_uffd_stats *pt_uffd_stats(const struct pt_uffd *u);
/* The epoch's written-page bitmap as far as read so far (log page index). */
const uint64_t *pt_uffd_bits(const struct pt_uffd *u);

#endif
