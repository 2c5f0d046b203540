// SPDX-License-Identifier: GPL-2.0
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include <pagetrack/proto.h>

#include "quota.h"

struct use {
	uid_t uid;
	unsigned conns, vms;
	uint64_t bits;
};

/* One entry per uid with something open; few uids share a host's service, so a list will do. */
struct pt_quota {
	struct use *u;
	size_t n, cap;
};

struct pt_quota *pt_quota_new(void)
{
	return calloc(1, sizeof(struct pt_quota));
}

void pt_quota_free(struct pt_quota *q)
{
	if (q)
		free(q->u);
	free(q);
}

static struct use *find(struct pt_quota *q, uid_t uid, bool add)
{
	for (size_t i = 0; i < q->n; i++)
		if (q->u[i].uid == uid)
			return &q->u[i];
	if (!add)
		return NULL;
	if (q->n == q->cap) {
		size_t cap = q->cap ? q->cap * 2 : 16;
		struct use *u = realloc(q->u, cap * sizeof(*u));

		if (!u)
			return NULL;
		q->u = u;
		q->cap = cap;
	}
	q->u[q->n] = (struct use){ .uid = uid };
	return &q->u[q->n++];
}

/* An entry with nothing left goes, so the list holds only uids that use something now. */
static void drop_if_unused(struct pt_quota *q, struct use *u)
{
	if (!u->conns && !u->vms && !u->bits)
		*u = q->u[--q->n];
}

int pt_quota_conn_get(struct pt_quota *q, const struct pt_quota_limits *l, uid_t uid, char *why,
		      size_t cap)
{
	struct use *u = find(q, uid, true);

	if (!u) {
		snprintf(why, cap, "out of memory");
		return -PT_E_BUSY;
	}
	if (uid && u->conns >= l->conns) {
		snprintf(why, cap, "uid %u has %u connections open (quota-conns %u)", (unsigned)uid,
			 u->conns, l->conns);
		return -PT_E_BUSY;
	}
	u->conns++;
	return 0;
}

void pt_quota_conn_put(struct pt_quota *q, uid_t uid)
{
	struct use *u = find(q, uid, false);

	if (u && u->conns) {
		u->conns--;
		drop_if_unused(q, u);
	}
}

int pt_quota_vm_get(struct pt_quota *q, const struct pt_quota_limits *l, uid_t uid, uint64_t bits,
		    char *why, size_t cap)
{
	uint64_t max_bits = (uint64_t)l->log_mb * 8 * 1024 * 1024;
	struct use *u = find(q, uid, true);

	if (!u) {
		snprintf(why, cap, "out of memory");
		return -PT_E_BUSY;
	}
	if (uid && u->vms >= l->vms) {
		snprintf(why, cap, "uid %u has %u VMs registered (quota-vms %u)", (unsigned)uid,
			 u->vms, l->vms);
		drop_if_unused(q, u);
		return -PT_E_BUSY;
	}
	if (uid && u->bits + bits > max_bits) {
		snprintf(why, cap,
			 "uid %u's VMs would hold %llu MiB of write log, over quota-log-mb %u",
			 (unsigned)uid,
			 (unsigned long long)((u->bits + bits + (8 << 20) - 1) >> 23), l->log_mb);
		drop_if_unused(q, u);
		return -PT_E_BUSY;
	}
	u->vms++;
	u->bits += bits;
	return 0;
}

void pt_quota_vm_put(struct pt_quota *q, uid_t uid, uint64_t bits)
{
	struct use *u = find(q, uid, false);

	if (!u || !u->vms)
		return;
	u->vms--;
	u->bits -= bits < u->bits ? bits : u->bits;
	drop_if_unused(q, u);
}
