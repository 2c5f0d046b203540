/* SPDX-License-Identifier: GPL-2.0 */
/*
 * `pagetrackd bench` userfaultfd section: the cost of the uffd write log (user/writelog/uffd.c)
 * on memory this process maps, registers and hands to the log as a VMM would: ARM
 * (write-protect), the verdict scan over the whole guest with 0.1 % of its pages written, a
 * scan with nothing written, on a 64 GiB sparse guest (4 KiB pages) and on populated 4 KiB
 * and THP memory, and what ARM costs the writer (each first write after ARM faults once).
 * No KVM needed: the writes are the VMM's own, which the log sees the same way.
 *
 * Results go through bench_put() (keys uffd_*); returns 0 or a negative errno.
 */
#ifndef PT_BENCH_UFFD_H
#define PT_BENCH_UFFD_H

#include <stdbool.h>

int bench_uffd(bool quick);

#endif
