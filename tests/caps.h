/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Tests that play the service without CAP_SYS_PTRACE, as under its unit: /proc/PID/fd and
 * /proc/PID/exe of a process with capabilities it lacks then cannot be read.
 */
#ifndef PT_TEST_CAPS_H
#define PT_TEST_CAPS_H

#include <errno.h>
#include <stdbool.h>
#include <linux/capability.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Raise (on) or drop CAP_SYS_PTRACE in this thread's effective set; permitted is kept. */
static inline int t_ptrace_cap(bool on)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[2];

	if (syscall(SYS_capget, &h, d))
		return -errno;
	if (on)
		d[CAP_SYS_PTRACE / 32].effective |= 1u << (CAP_SYS_PTRACE % 32);
	else
		d[CAP_SYS_PTRACE / 32].effective &= ~(1u << (CAP_SYS_PTRACE % 32));
	return syscall(SYS_capset, &h, d) ? -errno : 0;
}

#endif
