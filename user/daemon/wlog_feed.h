/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A second write log feeding the reconciler (PT_TRACK_UFFD). The reconciler (cmdstate.c)
 * reads one thing: the VM's words in the BPF log region. A VM with a backend attached
 * (pt_vmctx.wlog, e.g. the userfaultfd log) gets that backend's written pages ORed into those
 * words right before each read, and its doubt instead of the dirty-logging mode's:
 *
 *   pt_feed_arm     at ARM, before the words are cleared: arm the backend, and OR the pages
 *                   written in its ending epoch into the words, so the clear folds them into
 *                   reported/inflated pages like any other write of that epoch;
 *   pt_feed_set     before a verdict over a page set (hinted, reported, inflated);
 *   pt_feed_ranges  before WR_READ over ranges;
 *   pt_feed_doubt   the backend's doubt, plus what only BPF can see (the VM's memory map
 *                   changed in KVM).
 *
 * All are no-ops for a VM without a backend. Failures of the backend become doubt, so nothing
 * here returns an error.
 */
#ifndef PT_WLOG_FEED_H
#define PT_WLOG_FEED_H

#include <stdint.h>

#include "pagetrack/proto.h"

struct pt_vmctx;

void pt_feed_arm(struct pt_vmctx *c);
void pt_feed_set(struct pt_vmctx *c, const uint64_t *set);
void pt_feed_ranges(struct pt_vmctx *c, const struct pt_range *r, uint32_t n);
uint32_t pt_feed_doubt(struct pt_vmctx *c);

#endif
