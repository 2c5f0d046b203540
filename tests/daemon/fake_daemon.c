// SPDX-License-Identifier: GPL-2.0
/*
 * The fakes of fake_daemon.h: the write log (writelog/loader.h, writelog/vmlog.h), the
 * canary, the status writer, sd_notify, the capability drop and the io_uring server's
 * connection API, each as small as the dispatch needs.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/caps.h"
#include "daemon/config.h"
#include "daemon/sdnotify.h"
#include "daemon/status.h"
#include "writelog/canary.h"
#include "writelog/vmlog.h"
#include "fake_daemon.h"
#include "lib/proto.h"

/* --- the write log ---------------------------------------------------------------------------- */

static struct pt_vm_slots fake_slots[PT_MAX_VMS];

/* One tracker at a time, its memory kept from one to the next (a fuzzer makes thousands). */
static struct pt_tracker fake_t;
static struct pt_vm_state fake_vms[PT_MAX_VMS];
static uint64_t fake_log[(uint64_t)PT_MAX_VMS * FAKE_VM_BITS / 64];

struct pt_tracker *fake_tracker_new(void)
{
	memset(&fake_t, 0, sizeof(fake_t));
	memset(fake_vms, 0, sizeof(fake_vms));
	memset(fake_slots, 0, sizeof(fake_slots));
	fake_t.vms = fake_vms;
	fake_t.log = fake_log;
	fake_t.log_words = sizeof(fake_log) / sizeof(fake_log[0]);
	return &fake_t;
}

void fake_tracker_free(struct pt_tracker *t)
{
	(void)t;
}

void fake_write(struct pt_tracker *t, uint32_t vm, uint64_t page)
{
	struct pt_vm_state *st = &t->vms[vm];

	if ((st->flags & PT_VM_ACTIVE) && page < st->log_bits)
		pt_vm_log_or(t, vm, page / 64, 1ull << (page % 64));
}

void fake_write_gfn(struct pt_tracker *t, uint32_t vm, uint64_t gfn)
{
	const struct pt_vm_slots *sl = &fake_slots[vm];

	for (uint32_t i = 0; i < sl->nslots && i < PT_MAX_SLOTS; i++) {
		const struct pt_slot *x = &sl->slots[i];

		if (gfn >= x->base_gfn && gfn - x->base_gfn < x->npages &&
		    !(x->flags & PT_SLOT_NOLOG)) {
			fake_write(t, vm, x->bit_off + gfn - x->base_gfn);
			return;
		}
	}
}

void fake_sync(struct pt_tracker *t, uint32_t vm)
{
	t->vms[vm].ring_sync_epoch = t->vms[vm].epoch;
	t->vms[vm].sync_epoch = t->vms[vm].epoch;
}

int pt_tracker_open(struct pt_tracker **out, const struct pt_loader_opts *opts)
{
	(void)opts;
	*out = fake_tracker_new();
	return 0;
}

void pt_tracker_close(struct pt_tracker *t)
{
	fake_tracker_free(t);
}

int pt_vm_find(struct pt_tracker *t, uint32_t tgid, uint32_t *vm)
{
	for (uint32_t i = 0; i < PT_MAX_VMS; i++) {
		if ((t->vms[i].flags & PT_VM_ACTIVE) && t->vms[i].tgid == tgid) {
			*vm = i;
			return 0;
		}
	}
	return -ENOENT;
}

int pt_vm_track(struct pt_tracker *t, uint32_t tgid, const struct pt_slot_cfg *slots, unsigned n,
		uint64_t learn_pages, uint32_t *vm, bool *existed)
{
	struct pt_vm_slots sl = { 0 };
	struct pt_vm_state *st;
	uint32_t i;

	*existed = !pt_vm_find(t, tgid, vm);
	if (*existed)
		return 0;
	for (unsigned k = 0; k < n && k < PT_MAX_SLOTS; k++) {
		sl.slots[k] = (struct pt_slot){ .base_gfn = slots[k].gpa >> 12,
						.npages = slots[k].size >> 12,
						.bit_off = sl.next_bit,
						.id = slots[k].id,
						.flags = PT_SLOT_VALID |
							 (slots[k].logged ? 0 : PT_SLOT_NOLOG) };
		sl.next_bit += slots[k].size >> 12;
	}
	sl.nslots = n;
	if ((n ? sl.next_bit : learn_pages) > FAKE_VM_BITS)
		return -ENOSPC;
	for (i = 0; i < PT_MAX_VMS && (t->vms[i].flags & PT_VM_ACTIVE); i++)
		;
	if (i == PT_MAX_VMS)
		return -ENOSPC;
	st = &t->vms[i];
	st->tgid = tgid;
	st->log_bit_base = (uint64_t)i * FAKE_VM_BITS;
	st->log_bits = n ? sl.next_bit : learn_pages;
	memset(t->log + st->log_bit_base / 64, 0, FAKE_VM_BITS / 8);
	st->epoch++;
	st->flags = PT_VM_ACTIVE | (n ? 0 : PT_VM_LEARN_SLOTS);
	fake_slots[i] = sl;
	*vm = i;
	return 0;
}

int pt_vm_untrack(struct pt_tracker *t, uint32_t vm)
{
	if (vm >= PT_MAX_VMS || !(t->vms[vm].flags & PT_VM_ACTIVE))
		return -ENOENT;
	t->vms[vm].flags = 0;
	return 0;
}

int pt_vm_slots_get(struct pt_tracker *t, uint32_t vm, struct pt_vm_slots *out)
{
	(void)t;
	*out = fake_slots[vm];
	return 0;
}

int pt_vm_arm_fold(struct pt_tracker *t, uint32_t vm, pt_log_fold fold, void *arg, uint64_t *epoch)
{
	struct pt_vm_state *st = &t->vms[vm];
	uint64_t *log = t->log + st->log_bit_base / 64, words = (st->log_bits + 63) / 64;

	if (vm >= PT_MAX_VMS || !(st->flags & PT_VM_ACTIVE))
		return -ENOENT;
	for (uint64_t w = 0; w < words; w++) {
		uint64_t old = log[w];

		log[w] = 0;
		if (fold)
			fold(arg, w, old);
	}
	*epoch = ++st->epoch;
	return 0;
}

int pt_vm_arm(struct pt_tracker *t, uint32_t vm, uint64_t *epoch)
{
	return pt_vm_arm_fold(t, vm, NULL, NULL, epoch);
}

void pt_vm_taint(struct pt_tracker *t, uint32_t vm, uint32_t reason)
{
	struct pt_vm_state *st = &t->vms[vm];

	/* Marks only grow, as in vmlog.c (one thread here: a plain max). */
	st->taint_reason |= reason;
	if (st->taint_epoch < st->epoch)
		st->taint_epoch = st->epoch;
	if ((reason & PT_TAINT_SLOT_CHANGE) && st->slot_change_epoch < st->epoch)
		st->slot_change_epoch = st->epoch;
}

bool pt_vm_slots_changed(struct pt_tracker *t, uint32_t vm)
{
	return t->vms[vm].slot_change_epoch >= t->vms[vm].epoch;
}

void pt_vm_mark_written(struct pt_tracker *t, uint32_t vm, uint64_t page, uint64_t n)
{
	for (uint64_t p = page; p < page + n; p++)
		fake_write(t, vm, p);
}

/* --- canary, status, notifications, capabilities, configuration ------------------------------ */

int pt_canary_run(struct pt_tracker *t, struct pt_coverage *cov)
{
	(void)t;
	cov->mode[PT_DIRTY_RING] = PT_COV_TRACKED;
	cov->mode[PT_DIRTY_BITMAP] = PT_COV_NOT_TRACKED;
	return 0;
}

bool pt_coverage_tracked(const struct pt_coverage *cov, enum pt_dirty_mode mode)
{
	return (unsigned)mode < 2 && cov->mode[mode] == PT_COV_TRACKED;
}

const char *pt_coverage_str(const struct pt_coverage *cov, char *buf, size_t len)
{
	(void)cov;
	snprintf(buf, len, "fake");
	return buf;
}

void pt_status_write(const struct pt_config *cfg, struct pt_tracker *t,
		     const struct pt_coverage *cov, struct pt_vmctx *const *vms,
		     const struct pt_server_stats *st, const struct pt_status_counters *n)
{
	(void)cfg, (void)t, (void)cov, (void)vms, (void)st, (void)n;
}

int sd_notify_str(const char *msg)
{
	(void)msg;
	return 0;
}

int sd_notifyf(const char *fmt, ...)
{
	(void)fmt;
	return 0;
}

int pt_caps_drop_all(void)
{
	return 0;
}

/* --- the server ----------------------------------------------------------------------------------
 */

void fake_conn_init(struct pt_conn *c, uint32_t id, pid_t pid, uid_t uid)
{
	memset(c, 0, sizeof(*c));
	c->id = id;
	c->peer = (struct pt_peer){ pid, uid, uid };
	c->used = true;
}

void fake_conn_consume(struct pt_conn *c, size_t n)
{
	if (n > c->len)
		n = c->len;
	if (n < c->len)
		memmove(c->out, c->out + n, c->len - n);
	c->len -= n;
}

void fake_conn_free(struct pt_conn *c)
{
	free(c->out);
	memset(c, 0, sizeof(*c));
}

int pt_server_create(struct pt_server **out, const struct pt_server_cfg *cfg,
		     const struct pt_server_ops *ops, void *ctx)
{
	(void)cfg, (void)ops, (void)ctx;
	*out = (struct pt_server *)calloc(1, 1);
	return *out ? 0 : -ENOMEM;
}

int pt_server_run(struct pt_server *s)
{
	(void)s;
	return 0;
}

void pt_server_destroy(struct pt_server *s)
{
	free(s);
}

void pt_server_get_stats(const struct pt_server *s, struct pt_server_stats *st)
{
	(void)s;
	memset(st, 0, sizeof(*st));
}

int pt_conn_send(struct pt_conn *c, const void *frame, size_t len)
{
	if (!c->used)
		return -EPIPE;
	if (c->len + len > c->cap) {
		size_t cap = (c->len + len) * 2;
		uint8_t *p = realloc(c->out, cap);

		if (!p)
			return -ENOMEM;
		c->out = p;
		c->cap = cap;
	}
	memcpy(c->out + c->len, frame, len);
	c->len += len;
	return 0;
}

int pt_conn_send_error(struct pt_conn *c, uint32_t seq, int code, const char *fmt, ...)
{
	uint8_t frame[sizeof(struct pt_hdr) + sizeof(struct pt_error) + PT_MAX_REASON];
	char reason[PT_MAX_REASON + 1];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	return pt_conn_send(
		c, frame,
		pt_build_error(frame, sizeof(frame), seq, code < 0 ? -code : code, reason));
}

void pt_conn_close(struct pt_conn *c)
{
	c->closing = true;
}

size_t pt_conn_outq(const struct pt_conn *c)
{
	return c->len;
}

unsigned pt_conn_take_fds(struct pt_conn *c, int *fds, unsigned max)
{
	(void)c, (void)fds, (void)max;
	return 0;
}

void pt_conn_charge(struct pt_conn *c, uint64_t work)
{
	c->work += work;
}

void pt_conn_pause(struct pt_conn *c)
{
	c->paused = true;
}

void pt_conn_resume(struct pt_conn *c)
{
	c->paused = false;
}

void pt_conn_set_registered(struct pt_conn *c, bool registered)
{
	c->registered = registered;
}

/* The peer's pidfd (SO_PEERPIDFD) where the server has it: here, as on kernels before 6.5. */
int pt_conn_peer_pidfd(const struct pt_conn *c);
int pt_conn_peer_pidfd(const struct pt_conn *c)
{
	(void)c;
	return -ENOPROTOOPT;
}

const struct pt_peer *pt_conn_peer(const struct pt_conn *c)
{
	return &c->peer;
}

uint32_t pt_conn_id(const struct pt_conn *c)
{
	return c->id;
}

void *pt_conn_data(const struct pt_conn *c)
{
	return c->data;
}

void pt_conn_set_data(struct pt_conn *c, void *p)
{
	c->data = p;
}

struct pt_server *pt_conn_server(const struct pt_conn *c)
{
	(void)c;
	return NULL;
}
