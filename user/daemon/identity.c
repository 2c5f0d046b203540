// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <pagetrack/proto.h>

#include "identity.h"

#ifndef KCMP_FILE
#define KCMP_FILE 0
#endif

int pt_proc_uid(uint32_t pid, uid_t *uid)
{
	char path[64];
	struct stat st;

	snprintf(path, sizeof(path), "/proc/%u", pid);
	if (stat(path, &st))
		return -errno;
	*uid = st.st_uid;
	return 0;
}

int pt_pidfd_open_exact(uint32_t pid, uint64_t start)
{
	int fd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
	uint64_t now;

	if (fd < 0)
		return -errno;
	/* The pid may have been reused between reading @start and the open: only if it still
	 * names a process of that start time does the pidfd name the process meant. */
	if (pt_proc_start_time(pid, &now) || now != start || pt_pidfd_exited(fd)) {
		close(fd);
		return -ESRCH;
	}
	return fd;
}

bool pt_pidfd_exited(int pidfd)
{
	struct pollfd p = { .fd = pidfd, .events = POLLIN };

	if (pidfd < 0)
		return true;
	/* Readable once the process exited (zombie or reaped). A signal 0 is the second
	 * opinion; EPERM (another user's process, no CAP_KILL) still means alive. */
	if (poll(&p, 1, 0) != 0)
		return true;
	return syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) < 0 && errno == ESRCH;
}

uint64_t pt_token_new(void)
{
	uint64_t t = 0;

	while (!t)
		if (getrandom(&t, sizeof(t), 0) != sizeof(t))
			t = 0;
	return t;
}

bool pt_token_eq(uint64_t a, uint64_t b)
{
	volatile uint64_t d = a ^ b;

	return d == 0;
}

bool pt_same_open_file(int a, int b)
{
	pid_t self = getpid();

	return syscall(SYS_kcmp, self, self, KCMP_FILE, a, b) == 0;
}

int pt_may_register(const struct pt_reg_claim *c, const char **why)
{
	/* Root and the VMM itself are authoritative for the VM. */
	if (c->peer_uid == 0 || c->peer_is_vmm)
		return 0;
	if (c->vm_fd < 0)
		*why = c->peer_exited
			       ? "the process that connected has exited: its pid names "
				 "another process now"
			       : "neither root nor the VMM process: pass the VM's descriptor "
				 "with REGISTER2";
	else if (c->peer_uid != c->vmm_uid)
		*why = "the VMM belongs to another user";
	else if (c->held_vm_fd >= 0 && !pt_same_open_file(c->vm_fd, c->held_vm_fd))
		*why = "the descriptor is not the VM registered for this VMM";
	else
		return 0; /* possession: the VM's own descriptor, from the VMM's user */
	return -PT_E_PERM;
}
