/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Kernel ABI for the userfaultfd write log that Debian 12's headers (linux-libc-dev 6.1) lack.
 * Values are those of the kernel's include/uapi/linux/fs.h and include/uapi/linux/userfaultfd.h.
 * Each block is guarded, so newer headers win where they have the definition.
 *
 *   UFFD_FEATURE_WP_HUGETLBFS_SHMEM  Linux 5.19  WP on shmem/memfd and hugetlbfs
 *   UFFD_FEATURE_WP_UNPOPULATED      Linux 6.4   WP also marks never-touched (none) PTEs
 *   UFFD_FEATURE_WP_ASYNC            Linux 6.7   a WP fault is resolved by the kernel at once,
 *                                                leaving the page "written" (no handler thread)
 *   PAGEMAP_SCAN                     Linux 6.7   ioctl on /proc/PID/pagemap: read page
 *                                                categories over a range, optionally
 *                                                re-protecting the matched pages atomically
 *   PAGE_IS_SOFT_DIRTY               Linux 6.7 (with PAGEMAP_SCAN)
 *   PAGE_IS_GUARD                    Linux 6.14
 */
#ifndef PT_UFFD_ABI_H
#define PT_UFFD_ABI_H

#include <linux/fs.h>
#include <linux/types.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>

#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif

#ifndef PAGEMAP_SCAN
/* One output record: pages [start, end) share the categories (after return_mask). */
struct page_region {
	__u64 start;
	__u64 end;
	__u64 categories;
};

/* The argument of PAGEMAP_SCAN; size must be sizeof(struct pm_scan_arg) (96). */
struct pm_scan_arg {
	__u64 size;
	__u64 flags;
	__u64 start;
	__u64 end;
	__u64 walk_end; /* out: where the walk stopped (end, or earlier when vec/max_pages ran out)
			 */
	__u64 vec;	/* struct page_region[vec_len] */
	__u64 vec_len;
	__u64 max_pages; /* 0: unlimited; otherwise stop after this many matching pages */
	__u64 category_inverted;
	__u64 category_mask;
	__u64 category_anyof_mask;
	__u64 return_mask;
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)

/* pm_scan_arg.flags */
#define PM_SCAN_WP_MATCHING   (1 << 0) /* write-protect the matched pages */
#define PM_SCAN_CHECK_WPASYNC (1 << 1) /* fail (EPERM) on a VMA without async WP */
#endif

/* Page categories (the masks of pm_scan_arg, page_region.categories). */
#ifndef PAGE_IS_WPALLOWED
#define PAGE_IS_WPALLOWED (1 << 0) /* in a VMA registered for async WP */
#define PAGE_IS_WRITTEN	  (1 << 1) /* written since it was write-protected */
#define PAGE_IS_FILE	  (1 << 2)
#define PAGE_IS_PRESENT	  (1 << 3)
#define PAGE_IS_SWAPPED	  (1 << 4)
#define PAGE_IS_PFNZERO	  (1 << 5)
#define PAGE_IS_HUGE	  (1 << 6)
#endif
#ifndef PAGE_IS_SOFT_DIRTY
#define PAGE_IS_SOFT_DIRTY (1 << 7)
#endif
#ifndef PAGE_IS_GUARD
#define PAGE_IS_GUARD (1 << 8)
#endif

_Static_assert(sizeof(struct pm_scan_arg) == 96, "struct pm_scan_arg is 96 bytes");
_Static_assert(sizeof(struct page_region) == 24, "struct page_region is 24 bytes");

#endif
