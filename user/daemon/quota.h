/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Per-uid quotas: connections open, VMs registered, write-log bits those VMs hold
 * (docs/OPERATIONS.md, "Quotas"). Root (uid 0) is counted but never refused: the service
 * belongs to it, and a full quota of another user must not lock root's VMMs out.
 */
#ifndef PT_QUOTA_H
#define PT_QUOTA_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct pt_quota_limits {
	unsigned conns;	 /* connections open per uid */
	unsigned vms;	 /* VMs registered per uid */
	unsigned log_mb; /* write log held by a uid's VMs, MiB of bitmap (8 Mi pages per MiB) */
};

struct pt_quota;

struct pt_quota *pt_quota_new(void);
void pt_quota_free(struct pt_quota *q);

/* 0, or -PT_E_BUSY with the exhausted quota named in @why (@cap bytes). Success counts. */
int pt_quota_conn_get(struct pt_quota *q, const struct pt_quota_limits *l, uid_t uid, char *why,
		      size_t cap);
void pt_quota_conn_put(struct pt_quota *q, uid_t uid);
int pt_quota_vm_get(struct pt_quota *q, const struct pt_quota_limits *l, uid_t uid, uint64_t bits,
		    char *why, size_t cap);
void pt_quota_vm_put(struct pt_quota *q, uid_t uid, uint64_t bits);

#endif
