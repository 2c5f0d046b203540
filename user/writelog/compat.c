// SPDX-License-Identifier: GPL-2.0
/* Which VMMs may make 32-bit syscalls the tracepoints do not show (compat.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "clues.h"
#include "compat.h"
#include "shared/log.h"
#include "shared/procfs.h"
#include "vmlog.h"
#include "writelog.skel.h"

static const struct pt_clue_why compat_why = {
	.recorded = "it ran 32-bit code (a 32-bit exec or fork was recorded)",
	.proc_yes = "its executable is not a 64-bit ELF",
	.covered = "the record of 32-bit processes covers it (started after their programs, or "
		   "seen by the start's task iterator) and it never ran 32-bit code",
	.proc_no = "its executable is a 64-bit ELF",
	.unreadable = "cannot tell: the record of 32-bit processes is unreadable",
	.before = "cannot tell: it started before 32-bit processes were followed (or they are "
		  "not) and its /proc/PID/exe is unreadable",
};

bool pt_compat_clues_decide(const struct pt_compat_clues *c, const char **why)
{
	return pt_clues_decide(c->marked, c->after_since, c->exe, &compat_why, why);
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

static int exe_not_64bit(uint32_t pid)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/%u/exe", pid);
	return pt_elf_not_64bit(path);
}

int pt_vmm_compat_clues(struct pt_tracker *t, uint32_t pid, struct pt_compat_clues *c)
{
	/* The executable only where the record does not answer: a file on a hung network mount
	 * would stall the event loop. */
	return pt_clues_gather(pid, t->skel->maps.pt_compat, t->skel->maps.pt_compat_since,
			       exe_not_64bit, &c->marked, &c->after_since, &c->exe);
}

bool pt_vm_check_compat(struct pt_tracker *t, uint32_t vm)
{
	struct pt_vm_state *st = pt_vm(t, vm);
	const char *why = "cannot tell: the process changed or is gone";
	struct pt_compat_clues c;
	bool may = true;

	/* Sticky: once marked (here or by BPF) nothing is asked again, and a device registering
	 * the VM over and over gets no journal line per REGISTER (its verdicts say why). */
	if (__atomic_load_n(&st->flags, __ATOMIC_ACQUIRE) & PT_VM_COMPAT) {
		pt_debug("VM %u (pid %u) marked already as one that may make 32-bit syscalls", vm,
			 st->tgid);
		return true;
	}
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

int pt_compat_iter_run(struct pt_tracker *t, struct pt_compat_iter_sum *sum)
{
	struct bpf_program *prog = t->skel->progs.pt_compat_iter;
	size_t got = 0;
	struct bpf_link *link;
	int fd, err = 0, again = 0;
	uint32_t zero = 0;
	char buf[256];
	ssize_t n;

	memset(sum, 0, sizeof(*sum));
	if (!bpf_program__autoload(prog) || bpf_program__fd(prog) < 0)
		return -ENOENT;
	/* Counts of this run only (the map outlives a run). */
	if (bpf_map__update_elem(t->skel->maps.pt_iter_sum, &zero, sizeof(zero), sum, sizeof(*sum),
				 0))
		return -errno;
	link = bpf_program__attach_iter(prog, NULL);
	if (!link)
		return -errno;
	fd = bpf_iter_create(bpf_link__fd(link));
	if (fd < 0) {
		err = -errno;
		bpf_link__destroy(link);
		return err;
	}
	/* read() runs the program over the tasks; EOF once the last one (and the summary) is out.
	 */
	while ((n = read(fd, buf, sizeof(buf))) != 0) {
		/* EAGAIN: the kernel stops a read after a million objects without output (a host
		 * with that many tasks); the next read goes on from there. Bounded: a walk that
		 * never ends is a failed one. */
		if (n < 0 && (errno == EINTR || (errno == EAGAIN && ++again < 1000)))
			continue;
		if (n < 0) {
			err = -errno;
			break;
		}
		if (got + (size_t)n <= sizeof(*sum))
			memcpy((char *)sum + got, buf, (size_t)n);
		got += (size_t)n;
	}
	close(fd);
	bpf_link__destroy(link);
	if (!err && got != sizeof(*sum))
		err = -EIO; /* the walk stopped early: no summary, or more than one */
	if (!err && !sum->complete)
		err = -EOPNOTSUPP; /* this kernel has no field that tells */
	return err;
}
