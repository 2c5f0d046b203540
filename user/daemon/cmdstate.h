/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The command-ID state machine and the reconciliation, per VM. This is where the safety
 * invariants of the design brief (section 2) are enforced:
 *
 *   ARM(N)    N >= 2 and not armed since the driver's last STOP; clears the write log and
 *             starts a new epoch. The VMM's dirty-log sync must follow (arm before protect).
 *   HINT(N)   recorded only while N is current; otherwise ignored, counted, refused.
 *   STOP(N)   the driver's STOP: hinting is over, every ID may be reused again (N too).
 *   QUERY(N)  verdict computed now: hinted AND NOT written since ARM(N). Everything the
 *             service cannot vouch for (no sync after ARM, tainted epoch, untracked mode) is
 *             "keep", with the reason.
 *   DONE(N)   nothing hinted under N may be discarded any more; queries answer "keep".
 *
 * Free page reporting and balloon inflation use the same write log: a reported page stays
 * free until the guest writes it; an inflated page the guest writes without a deflate is
 * "silently reclaimed".
 */
#ifndef PT_CMDSTATE_H
#define PT_CMDSTATE_H

#include <stdbool.h>
#include <stdint.h>

#include "pagetrack/proto.h"
#include "writelog/backend.h"
#include "writelog/vmlog.h"

/* Words a batch of one-page hints may change before it has been checked whole; a batch that
 * needs more is checked first, then applied. */
#define PT_UNDO_WORDS 1024

/* Disjoint runs of blocked command IDs a VM may hold; one more is PT_E_BUSY (PROTOCOL.md 4.2). */
#define PT_MAX_ID_RUNS 64

enum pt_cmd_state {
	PT_CS_IDLE,    /* no command ID armed yet */
	PT_CS_ACTIVE,  /* current command ID armed, hints accepted */
	PT_CS_STOPPED, /* the driver sent STOP for the current ID */
	PT_CS_DONE,    /* the device sent DONE: nothing may be discarded */
};

struct pt_vm_counters {
	/* hint_batches: HINT frames acknowledged (counted by the service: a large frame is
	 * applied in parts, each a pt_cmd_hint() call) */
	uint64_t arms, hint_batches, hinted_pages, stale_pages, queries;
	uint64_t confirmed_free, kept_written, kept_unsure;
	uint64_t reported_pages, inflated_pages, reclaimed_pages;
};

struct pt_vmctx {
	struct pt_tracker *t;
	uint32_t vm;  /* index in the BPF maps */
	uint32_t pid; /* VMM */
	enum pt_dirty_mode mode;
	bool mode_tracked; /* the canary saw writes in this dirty-logging mode */
	enum pt_cmd_state state;
	uint32_t cur;	/* current command ID (valid unless IDLE) */
	uint64_t epoch; /* write-log epoch armed for cur */
	/* IDs armed since the driver's last STOP, as disjoint runs [lo, hi]: a device that counts
	 * its IDs upwards fills one run, however many ARMs the guest leaves without a STOP. */
	struct pt_id_run {
		uint32_t lo, hi;
	} used[PT_MAX_ID_RUNS];
	unsigned nused;	     /* runs in use; 0 forgets them all (a STOP, a closed connection) */
	uint64_t words;	     /* bitmap words covering the VM's log region */
	uint64_t *hinted;    /* pages hinted under cur */
	uint64_t *reported;  /* pages reported free (lazy) */
	uint64_t *inflated;  /* pages in the balloon (lazy) */
	uint64_t *reclaimed; /* inflated pages written without deflate (lazy) */
	uint64_t *early;     /* hinted/reported before this epoch's sync: unsure (lazy) */
	/* Whether `early` holds the hinted set's early pages: while every hint of the epoch came
	 * before the sync, all of `hinted` is early and only this says so (no early bit is
	 * written per hint); the first hint after the sync copies `hinted` into `early`. */
	enum pt_hint_early {
		PT_HE_EMPTY,  /* nothing hinted since ARM */
		PT_HE_ALL,    /* every hinted page is early; `early` holds none of them */
		PT_HE_BITMAP, /* `early` holds the hinted set's early pages */
	} hint_early;
	struct pt_undo *undo; /* words saved while one-page hints are applied as checked (lazy) */
	struct pt_vm_slots slots;
	uint64_t slots_gen; /* pt_vm_state.slot_changes when slots was read */
	uint32_t last_slot; /* index of the slot the last range fell in */
	bool slots_valid;
	/* PT_TRACK_UFFD: the write log feeding the log words and answering doubt (wlog_feed.h);
	 * owned (freed with the context). NULL: the BPF log alone. */
	struct pt_wlog *wlog;
	/* pt_vm_state.slot_moves when wlog was installed: its gpa -> hva map holds while the
	 * count stays (KVM gives a slot other memory only by deleting and re-creating it). */
	uint64_t wlog_moves;
	struct pt_vm_counters n;
	struct {
		uint32_t cmd;
		uint64_t hinted, free, kept;
	} last; /* the last hint verdict (status.json, `pagetrackd top`) */
};

/* Verdict counts; ranges go to the callback as they are found (gpa, bytes). */
struct pt_verdict_sum {
	uint32_t why; /* PT_WHY_* */
	uint64_t hinted, free, kept_written, kept_unsure;
};
typedef int (*pt_range_cb)(void *ctx, uint64_t gpa, uint64_t len);

/*
 * A set of pages frozen when a verdict or listing was computed, emitted as ranges later, a
 * part at a time (long replies are produced as the peer reads them). Pass pt_pages_freeze as
 * the callback and a zeroed struct pt_pages as its ctx to any function below that takes a
 * pt_range_cb: the pages go into the set (one bit per page of the VM's log region, allocated
 * at the first page) instead of to a callback. The set holds a copy of the memory map, so it
 * stays valid when the VM goes away.
 */
struct pt_pages {
	uint64_t *bits;
	uint64_t words;
	uint64_t count; /* pages in the set */
	uint32_t rank;	/* slots emitted, in guest-physical order (slots out of region order) */
	uint64_t next;	/* words emitted: of the region, or of the current slot (rank) */
	uint64_t run_start, run_len;
	struct pt_vm_slots slots;
};
int pt_pages_freeze(void *ctx, uint64_t gpa, uint64_t len);
/* Emits the ranges of the next @max_words words of the set (ascending by guest-physical address
 * whatever the order of the slots in the region, disjoint, merged across calls) to @cb; *done
 * once the whole set is out. 0 or the callback's error. */
int pt_pages_emit(struct pt_pages *p, uint64_t max_words, pt_range_cb cb, void *ctx, bool *done);
void pt_pages_release(struct pt_pages *p);

int pt_vmctx_new(struct pt_vmctx **out, struct pt_tracker *t, uint32_t vm, uint32_t pid,
		 enum pt_dirty_mode mode, bool mode_tracked);
void pt_vmctx_free(struct pt_vmctx *c);

/* All return 0 or a negative enum pt_err code. */
int pt_cmd_arm(struct pt_vmctx *c, uint32_t cmd);
int pt_cmd_hint(struct pt_vmctx *c, uint32_t cmd, const struct pt_range *r, uint32_t n,
		uint64_t *pages);
int pt_cmd_stop(struct pt_vmctx *c, uint32_t cmd);
int pt_cmd_done(struct pt_vmctx *c, uint32_t cmd);
int pt_cmd_verdict(struct pt_vmctx *c, uint32_t cmd, struct pt_verdict_sum *v, pt_range_cb cb,
		   void *ctx);

int pt_report_add(struct pt_vmctx *c, const struct pt_range *r, uint32_t n, uint64_t *pages);
int pt_report_verdict(struct pt_vmctx *c, struct pt_verdict_sum *v, pt_range_cb cb, void *ctx);
int pt_balloon_inflate(struct pt_vmctx *c, const struct pt_range *r, uint32_t n, uint64_t *pages);
int pt_balloon_deflate(struct pt_vmctx *c, const struct pt_range *r, uint32_t n, uint64_t *pages);
/* Pages the VMM wrote itself (device emulation): logged as written, so never confirmed. */
int pt_vmm_written(struct pt_vmctx *c, const struct pt_range *r, uint32_t n, uint64_t *pages);
/* Inflated pages the guest wrote: "free" counts them, ranges lists them. */
int pt_balloon_reclaimed(struct pt_vmctx *c, struct pt_verdict_sum *v, pt_range_cb cb, void *ctx);
/* Write records inside the ranges: every page written since ARM (ARM is the clear). */
int pt_wr_read(struct pt_vmctx *c, const struct pt_range *r, uint32_t n, pt_range_cb cb, void *ctx,
	       uint64_t *pages);

/* Checks @r as the batch functions above do before they apply anything: a caller that applies
 * a large batch in parts (daemon/bigbatch.h) checks it whole first. 0 or a negative code. */
int pt_batch_check(struct pt_vmctx *c, const struct pt_range *r, uint32_t n);
/* The same for a HINT, which is also refused (its pages counted as ignored) under an ID that is
 * not current. */
int pt_cmd_hint_check(struct pt_vmctx *c, uint32_t cmd, const struct pt_range *r, uint32_t n);

/* Why the current epoch cannot vouch for anything (PT_WHY_* bits, 0 if it can). */
uint32_t pt_epoch_doubt(struct pt_vmctx *c);
/* REGISTER's coverage: the bits that will make every verdict "keep" whatever the device does
 * (untracked mode, an unlogged slot, memslots never seen), 0 if none. */
uint32_t pt_coverage_bits(struct pt_vmctx *c);

const char *pt_why_str(uint32_t why, char *buf, size_t len);

/* Word @w of the pages that are unsure because they came before the epoch's sync: the early
 * bitmap, with the hinted set while it is all early (struct pt_vmctx.hint_early). */
uint64_t pt_early_word(const struct pt_vmctx *c, uint64_t w);

#endif
