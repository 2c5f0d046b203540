// SPDX-License-Identifier: GPL-2.0
/* Which VMMs may make 32-bit syscalls the tracepoints do not show (compat.h). */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "compat.h"
#include "shared/log.h"
#include "shared/procfs.h"
#include "vmlog.h"
#include "writelog.skel.h"

bool pt_compat_clues_decide(const struct pt_compat_clues *c, const char **why)
{
	if (c->marked > 0) {
		*why = "it ran 32-bit code (a 32-bit exec or fork was recorded)";
		return true;
	}
	if (c->exe > 0) {
		*why = "its executable is not a 64-bit ELF";
		return true;
	}
	if (c->after_since && !c->marked) {
		*why = "it started after 32-bit processes were followed and never ran 32-bit code";
		return false;
	}
	if (!c->exe) {
		*why = "its executable is a 64-bit ELF";
		return false;
	}
	*why = c->after_since ? "cannot tell: the record of 32-bit processes is unreadable"
			      : "cannot tell: it started before 32-bit processes were followed "
				"(or they are not) and its /proc/PID/exe is unreadable";
	return true;
}

int pt_elf_not_64bit(const char *path)
{
	unsigned char id[5];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, id, sizeof(id));
	close(fd);
	if (n != (ssize_t)sizeof(id))
		return n < 0 ? -1 : 1;
	/* ELFCLASS64 only: a 32-bit ELF (ia32, x32) or anything else cannot be vouched for. */
	return !(id[0] == 0x7f && id[1] == 'E' && id[2] == 'L' && id[3] == 'F' && id[4] == 2);
}

/* 1 if the process behind `pidfd` is in pt_compat, 0 if not, -1 if the map cannot say. */
static int marked(struct pt_tracker *t, int pidfd)
{
	struct pt_compat v;

	if (!bpf_map__lookup_elem(t->skel->maps.pt_compat, &pidfd, sizeof(pidfd), &v, sizeof(v), 0))
		return 1;
	return errno == ENOENT ? 0 : -1;
}

int pt_vmm_compat_clues(struct pt_tracker *t, uint32_t pid, struct pt_compat_clues *c)
{
	uint64_t start, again;
	char path[64];
	int pidfd;

	*c = (struct pt_compat_clues){ .marked = -1, .exe = -1 };
	if (pt_proc_start_time(pid, &start))
		return -ESRCH;
	pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
	/* The pidfd and the path name the process of that start time only if it still has it. */
	if (pidfd >= 0 && !pt_proc_start_time(pid, &again) && again == start)
		c->marked = marked(t, pidfd);
	if (pidfd >= 0)
		close(pidfd);
	snprintf(path, sizeof(path), "/proc/%u/exe", pid);
	c->exe = pt_elf_not_64bit(path);
	if (pt_proc_start_time(pid, &again) || again != start) {
		*c = (struct pt_compat_clues){ .marked = -1, .exe = -1 };
		return -ESRCH;
	}
	c->after_since = pt_started_after_since(t->skel->maps.pt_compat_since, start);
	return 0;
}

bool pt_vm_check_compat(struct pt_tracker *t, uint32_t vm)
{
	struct pt_vm_state *st = pt_vm(t, vm);
	const char *why = "cannot tell: the process changed or is gone";
	struct pt_compat_clues c;
	bool may = true;

	if (!pt_vmm_compat_clues(t, st->tgid, &c))
		may = pt_compat_clues_decide(&c, &why);
	if (!may) {
		pt_debug("VM %u (pid %u) runs 64-bit code only: %s", vm, st->tgid, why);
		return false;
	}
	__atomic_fetch_or(&st->flags, PT_VM_COMPAT, __ATOMIC_SEQ_CST);
	pt_warn("VM %u (pid %u) may make 32-bit syscalls, which BPF cannot see (%s): every "
		"verdict will be keep",
		vm, st->tgid, why);
	return true;
}

/* Mark process `pid` (if it still exists) in pt_compat. 0, or -errno if the mark failed. */
static int mark_pid(struct pt_tracker *t, uint32_t pid)
{
	struct pt_compat v = { .first_ns = pt_boottime_ns(), .how = PT_COMPAT_SCAN };
	int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0), err = 0;

	if (pidfd < 0)
		return errno == ESRCH ? 0 : -errno;
	if (bpf_map__update_elem(t->skel->maps.pt_compat, &pidfd, sizeof(pidfd), &v, sizeof(v),
				 BPF_NOEXIST) &&
	    errno != EEXIST)
		err = -errno;
	close(pidfd);
	return err;
}

int pt_compat_scan(struct pt_tracker *t)
{
	unsigned marked = 0, failed = 0;
	struct dirent *de;
	DIR *d = opendir("/proc");

	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		char path[64], *end;
		unsigned long pid = strtoul(de->d_name, &end, 10);
		int r;

		if (*end || !pid)
			continue;
		snprintf(path, sizeof(path), "/proc/%lu/exe", pid);
		errno = 0;
		r = pt_elf_not_64bit(path);
		/* No executable: a kernel thread, a zombie, or gone; none can register. */
		if (!r || (r < 0 && errno == ENOENT))
			continue;
		if (mark_pid(t, (uint32_t)pid))
			failed++;
		else
			marked++;
	}
	closedir(d);
	pt_debug("processes that existed before 32-bit code was followed: %u marked (not 64-bit "
		 "or unreadable), %u could not be marked",
		 marked, failed);
	return failed ? -EIO : 0;
}
