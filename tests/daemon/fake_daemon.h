/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A world without BPF, io_uring or KVM for the service's dispatch (user/daemon/service.c):
 * a write log in plain memory that the test writes into, and connections whose replies
 * collect in a buffer the test reads. The service's code and the command state run unchanged
 * against it (tests/daemon/fuzz_dispatch.c).
 */
#ifndef PT_FAKE_DAEMON_H
#define PT_FAKE_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/server.h"
#include "writelog/loader.h"

struct pt_conn {
	uint32_t id;
	struct pt_peer peer;
	void *data;
	bool used, paused, registered, closing;
	uint8_t *out; /* replies queued, not yet read by the test */
	size_t len, cap;
	uint64_t work; /* charged */
};

/* The fake log: every VM's region is at most FAKE_VM_BITS pages. */
#define FAKE_VM_BITS (1u << 14)

struct pt_tracker *fake_tracker_new(void);
void fake_tracker_free(struct pt_tracker *t);
/* A guest write: the log bit of region page @page of VM @vm. */
void fake_write(struct pt_tracker *t, uint32_t vm, uint64_t page);
/* A guest write to guest frame @gfn, logged if a logged memslot of the VM holds it. */
void fake_write_gfn(struct pt_tracker *t, uint32_t vm, uint64_t gfn);
/* The VMM's dirty-ring reset completed in the current epoch. */
void fake_sync(struct pt_tracker *t, uint32_t vm);

void fake_conn_init(struct pt_conn *c, uint32_t id, pid_t pid, uid_t uid);
/* Drops @n bytes from the front of the queue (the peer read them). */
void fake_conn_consume(struct pt_conn *c, size_t n);
void fake_conn_free(struct pt_conn *c);

#endif
