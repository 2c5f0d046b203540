// SPDX-License-Identifier: GPL-2.0
/*
 * The userfaultfd canary: does the uffd write log (uffd.c) report every write to guest memory,
 * and nothing else? A small region is registered for async write-protect the way
 * pt_client_register_uffd() does it, handed to pt_uffd_open() with this process's pagemap,
 * armed, and written at known pages: by a minivm guest with dirty logging off when KVM is
 * usable, else by this process through its own mapping (what a VMM's device emulation does).
 * The log must report exactly those pages, and nothing after a re-arm.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include "canary.h"
#include "shared/log.h"
#include "uffd.h"
#include "uffd_abi.h"
#include "vmm/minivm.h"

#define UC_GPA	   (1ull << 30)
#define UC_SIZE	   (2ull << 20)
#define UC_NPAGES  (UC_SIZE / 4096)
#define UC_WRITES  64 /* every other page, so that a log shifted by one page does not match */
#define UC_WHY_LEN sizeof(((struct pt_coverage *)0)->uffd_why)

struct uc {
	struct minivm *m; /* NULL: this process writes */
	char *mem;	  /* the memory as the writer's VMM maps it */
	struct pt_uffd *u;
};

/* An async write-protect userfaultfd, as the client library creates it. */
static int uc_uffd(char *why)
{
	struct uffdio_api api = { .api = UFFD_API,
				  .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED };
	int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK), err;

	if (fd < 0 && errno == EPERM)
		fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd < 0) {
		err = -errno;
		snprintf(why, UC_WHY_LEN, "userfaultfd: %s", strerror(-err));
		return err;
	}
	if (!ioctl(fd, UFFDIO_API, &api))
		return fd;
	err = -errno;
	snprintf(why, UC_WHY_LEN, "kernel lacks async write-protect (Linux 6.7): %s",
		 strerror(-err));
	close(fd);
	return err;
}

/* Registers c->mem with a new userfaultfd and opens the log on it. */
static int uc_open(struct uc *c, char *why)
{
	struct uffdio_register reg = { .range = { (uintptr_t)c->mem, UC_SIZE },
				       .mode = UFFDIO_REGISTER_MODE_WP };
	struct pt_uffd_slot s = { UC_GPA, UC_SIZE, (uintptr_t)c->mem };
	int uffd = uc_uffd(why), pm, err;

	if (uffd < 0)
		return uffd;
	pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pm < 0 || ioctl(uffd, UFFDIO_REGISTER, &reg)) {
		err = -errno;
		snprintf(why, UC_WHY_LEN, "%s: %s", pm < 0 ? "pagemap" : "UFFDIO_REGISTER",
			 strerror(-err));
	} else {
		err = pt_uffd_open(&c->u, uffd, pm, getpid(), &s, 1, why, UC_WHY_LEN);
		if (!err)
			return 0;
	}
	if (pm >= 0)
		close(pm);
	close(uffd);
	return err;
}

static bool uc_expected(uint64_t p)
{
	return p % 2 == 0 && p / 2 < UC_WRITES;
}

static int uc_write(struct uc *c)
{
	uint64_t gpas[UC_WRITES];

	for (uint64_t i = 0; i < UC_WRITES; i++)
		gpas[i] = UC_GPA + i * 2 * 4096;
	if (c->m)
		return minivm_guest_write(c->m, gpas, UC_WRITES, 0xca7a11);
	for (uint64_t i = 0; i < UC_WRITES; i++)
		*(volatile uint64_t *)(c->mem + (gpas[i] - UC_GPA)) = 0xca7a11;
	return 0;
}

/* Reads the log over the whole region: pages seen that were written, and pages seen extra. */
static int uc_read(struct uc *c, bool wrote, unsigned *seen, unsigned *extra, char *why)
{
	uint64_t bits[UC_NPAGES / 64] = { 0 };
	struct pt_gfn_range r = { UC_GPA / 4096, UC_NPAGES };
	uint32_t detail = 0;
	char text[120];
	int err = pt_uffd_read(c->u, &r, 1, bits);

	if (err || pt_uffd_doubt(c->u, &detail)) {
		pt_uffd_doubt_str(detail, pt_uffd_stats(c->u)->last_errno, text, sizeof(text));
		snprintf(why, UC_WHY_LEN, "log unreadable: %s", err ? strerror(-err) : text);
		return err ? err : -EIO;
	}
	*seen = *extra = 0;
	for (uint64_t p = 0; p < UC_NPAGES; p++) {
		bool set = bits[p / 64] >> (p % 64) & 1;

		*seen += set && wrote && uc_expected(p);
		*extra += set && !(wrote && uc_expected(p));
	}
	return 0;
}

/* 0 if the log reported exactly the writes, then nothing after a re-arm; else why says why. */
static int uc_probe(struct uc *c, char *why)
{
	const char *who = c->m ? "guest" : "host";
	unsigned seen, extra;
	int err = uc_open(c, why);

	if (!err && (err = pt_uffd_arm(c->u)))
		snprintf(why, UC_WHY_LEN, "arm: %s", strerror(-err));
	if (!err && (err = uc_write(c)))
		snprintf(why, UC_WHY_LEN, "%s writes: %s", who, strerror(-err));
	if (!err)
		err = uc_read(c, true, &seen, &extra, why);
	if (err)
		return err;
	if (seen != UC_WRITES || extra) {
		snprintf(why, UC_WHY_LEN, "uffd log saw %u of %u %s writes (%u extra)", seen,
			 UC_WRITES, who, extra);
		return -EIO;
	}
	if ((err = pt_uffd_arm(c->u))) {
		snprintf(why, UC_WHY_LEN, "re-arm: %s", strerror(-err));
		return err;
	}
	err = uc_read(c, false, &seen, &extra, why);
	if (!err && extra) {
		snprintf(why, UC_WHY_LEN, "%u pages reported written after a re-arm, none were",
			 extra);
		err = -EIO;
	}
	return err;
}

/* The memory to probe: a minivm data slot without dirty logging, or a plain mapping. */
static int uc_memory(struct uc *c, int no_kvm, char *why)
{
	struct minivm_opts o = { .dirty = MINIVM_DIRTY_NONE, .nslots = 1 };
	int err;

	if (no_kvm) {
		c->mem = mmap(NULL, UC_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			      -1, 0);
		if (c->mem != MAP_FAILED)
			return 0;
		c->mem = NULL;
		snprintf(why, UC_WHY_LEN, "mmap: %s", strerror(errno));
		return -ENOMEM;
	}
	o.slots[0] = (struct minivm_slot){ UC_GPA, UC_SIZE, 1 };
	err = minivm_create(&c->m, &o);
	if (!err && !(c->mem = minivm_hva(c->m, UC_GPA, UC_SIZE)))
		err = -EFAULT;
	if (err)
		snprintf(why, UC_WHY_LEN, "KVM guest without dirty logging: %s", strerror(-err));
	return err;
}

void pt_canary_uffd(struct pt_coverage *cov)
{
	int no_kvm = minivm_supported(MINIVM_DIRTY_NONE); /* 0 if a guest can run */
	struct uc c = { 0 };
	int err = uc_memory(&c, no_kvm, cov->uffd_why);

	if (err) {
		cov->uffd = PT_COV_ERROR;
	} else if (uc_probe(&c, cov->uffd_why)) {
		cov->uffd = PT_COV_NOT_TRACKED;
	} else {
		cov->uffd = PT_COV_TRACKED;
		cov->uffd_host_only = no_kvm;
		if (!no_kvm)
			snprintf(cov->uffd_why, UC_WHY_LEN, "%d of %d guest writes seen", UC_WRITES,
				 UC_WRITES);
		else if (no_kvm == -ENODEV || no_kvm == -ENOENT)
			snprintf(cov->uffd_why, UC_WHY_LEN, "host writes only: no /dev/kvm");
		else
			snprintf(cov->uffd_why, UC_WHY_LEN, "host writes only: KVM: %s",
				 strerror(-no_kvm));
	}
	pt_uffd_close(c.u);
	if (c.m)
		minivm_destroy(c.m);
	else if (c.mem)
		munmap(c.mem, UC_SIZE);
	pt_info("canary uffd-wp: %s (%s)", pt_cov_name(cov->uffd), cov->uffd_why);
}
