// SPDX-License-Identifier: GPL-2.0
/*
 * What runs after the drop needs no capability: the BPF maps are used through descriptors
 * and mmaps opened before (kernels since 6.5 check CAP_BPF only when maps and programs are
 * created or loaded, not on lookups and updates), /proc/PID/stat and /proc/PID/status are
 * world-readable, and the run directory belongs to the service's own uid. Nothing is pinned,
 * attached or mounted after start-up: a new map layout or program needs a restart.
 */
#include <errno.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "caps.h"

static int capset_all(const struct __user_cap_data_struct d[2])
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };

	return syscall(SYS_capset, &h, d) ? -errno : 0;
}

int pt_caps_drop_all(void)
{
	struct __user_cap_data_struct d[2] = { { 0 } };

	/* Ambient first: it may only hold what permitted holds. Fails harmlessly on kernels
	 * without ambient capabilities. */
	prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
	/* Keep nothing through a setuid() to 0 or an execve() of anything. */
	prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
	return capset_all(d);
}

unsigned long long pt_caps_effective(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[2] = { { 0 } };

	if (syscall(SYS_capget, &h, d))
		return ~0ull;
	return (unsigned long long)d[1].effective << 32 | d[0].effective;
}
