// SPDX-License-Identifier: GPL-2.0
/*
 * The identity rules and the quota table on their own (user/daemon/identity.c, quota.c):
 * who may register, pidfds that name a process and not a pid number, tokens, per-uid limits
 * with root exempt.
 */
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/wait.h>

#include <pagetrack/proto.h>

#include "t.h"
#include "daemon/identity.h"
#include "daemon/quota.h"

static int register_rules(void)
{
	int a = eventfd(0, EFD_CLOEXEC), b = eventfd(0, EFD_CLOEXEC), a2 = dup(a);
	struct pt_reg_claim c = {
		.peer_uid = 1000, .vmm_pid = 42, .vmm_uid = 1000, .vm_fd = -1, .held_vm_fd = -1
	};
	const char *why = "";

	CHECK(a >= 0 && b >= 0 && a2 >= 0);
	/* Same uid, not the VMM, no descriptor: refused (the takeover). */
	CHECK(pt_may_register(&c, &why) == -PT_E_PERM && strstr(why, "REGISTER2"));
	c.peer_exited = true;
	CHECK(pt_may_register(&c, &why) == -PT_E_PERM && strstr(why, "exited"));
	c.peer_exited = false;
	c.peer_is_vmm = true;
	CHECK(pt_may_register(&c, &why) == 0);
	c.peer_is_vmm = false;
	c.peer_uid = 0;
	CHECK(pt_may_register(&c, &why) == 0);

	/* Possession: the VMM's uid and, once one is held, the same VM. */
	c.peer_uid = 1000;
	c.vm_fd = a;
	CHECK(pt_may_register(&c, &why) == 0);
	c.held_vm_fd = a2; /* a dup: the same open file */
	CHECK(pt_may_register(&c, &why) == 0);
	c.held_vm_fd = b;
	CHECK(pt_may_register(&c, &why) == -PT_E_PERM && strstr(why, "not the VM"));
	c.held_vm_fd = -1;
	c.peer_uid = 1001;
	CHECK(pt_may_register(&c, &why) == -PT_E_PERM && strstr(why, "another user"));
	close(a);
	close(b);
	close(a2);
	return 0;
}

/* A pidfd names the process, its exit is seen; a wrong start time opens nothing. */
static int pidfd_names_process(void)
{
	uint64_t start;
	pid_t pid;
	int fd;

	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		pause();
		_exit(0);
	}
	CHECK(pid > 0 && pt_proc_start_time((uint32_t)pid, &start) == 0);
	CHECK(pt_pidfd_open_exact((uint32_t)pid, start + 1) == -ESRCH);
	fd = pt_pidfd_open_exact((uint32_t)pid, start);
	CHECK(fd >= 0 && !pt_pidfd_exited(fd));
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	CHECK(pt_pidfd_exited(fd));
	CHECK(pt_pidfd_open_exact((uint32_t)pid, start) < 0);
	close(fd);
	CHECK(pt_pidfd_exited(-1)); /* nothing to vouch with: exited */
	return 0;
}

static int tokens(void)
{
	uint64_t t[64];

	for (int i = 0; i < 64; i++) {
		t[i] = pt_token_new();
		CHECK(t[i] != 0);
		for (int j = 0; j < i; j++)
			CHECK(t[i] != t[j]);
	}
	CHECK(pt_token_eq(t[3], t[3]) && !pt_token_eq(t[3], t[3] ^ 1));
	return 0;
}

static int quotas(void)
{
	struct pt_quota_limits l = { .conns = 2, .vms = 2, .log_mb = 1 };
	struct pt_quota *q = pt_quota_new();
	const uint64_t mib = 8ull << 20; /* bits in 1 MiB of bitmap */
	char why[160];

	CHECK(q);
	CHECK(!pt_quota_conn_get(q, &l, 7, why, sizeof(why)));
	CHECK(!pt_quota_conn_get(q, &l, 7, why, sizeof(why)));
	CHECK(pt_quota_conn_get(q, &l, 7, why, sizeof(why)) == -PT_E_BUSY &&
	      strstr(why, "quota-conns"));
	CHECK(!pt_quota_conn_get(q, &l, 8, why, sizeof(why))); /* another uid: its own count */
	for (int i = 0; i < 10; i++)			       /* root: counted, never refused */
		CHECK(!pt_quota_conn_get(q, &l, 0, why, sizeof(why)));
	pt_quota_conn_put(q, 7);
	CHECK(!pt_quota_conn_get(q, &l, 7, why, sizeof(why)));

	CHECK(pt_quota_vm_get(q, &l, 7, mib + 64, why, sizeof(why)) == -PT_E_BUSY &&
	      strstr(why, "quota-log-mb"));
	CHECK(!pt_quota_vm_get(q, &l, 7, mib / 2, why, sizeof(why)));
	CHECK(!pt_quota_vm_get(q, &l, 7, mib / 2, why, sizeof(why)));
	CHECK(pt_quota_vm_get(q, &l, 7, 64, why, sizeof(why)) == -PT_E_BUSY &&
	      strstr(why, "quota-vms"));
	CHECK(!pt_quota_vm_get(q, &l, 0, 100 * mib, why, sizeof(why)));
	pt_quota_vm_put(q, 7, mib / 2);
	CHECK(pt_quota_vm_get(q, &l, 7, mib, why, sizeof(why)) == -PT_E_BUSY);
	CHECK(!pt_quota_vm_get(q, &l, 7, mib / 2, why, sizeof(why)));
	pt_quota_free(q);
	return 0;
}

T_MAIN(T_CASE(register_rules), T_CASE(pidfd_names_process), T_CASE(tokens), T_CASE(quotas))
