// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>

#include "bench_uffd.h"
#include "bench_util.h"
#include "writelog/uffd.h"
#include "writelog/uffd_abi.h"

#define PAGE 4096ull
#define GIB  (1ull << 30)

/* Guest memory of one run: mapped, registered, and handed to a log (as a VMM would). */
struct ubench {
	char *mem;
	uint64_t size;
	struct pt_uffd *u;
};

static int ub_setup(struct ubench *b, uint64_t size, bool thp, bool populate)
{
	struct uffdio_api api = { .api = UFFD_API,
				  .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED };
	int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	struct pt_uffd_slot s = { .gpa = 0, .size = size };
	struct uffdio_register reg = { .mode = UFFDIO_REGISTER_MODE_WP };
	char err[256];
	int rc;

	memset(b, 0, sizeof(*b));
	b->size = size;
	b->mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (uffd < 0 || pm < 0 || b->mem == MAP_FAILED || ioctl(uffd, UFFDIO_API, &api)) {
		rc = -errno;
		goto fail;
	}
	madvise(b->mem, size, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	for (uint64_t off = 0; populate && off < size; off += PAGE)
		b->mem[off] = 1;
	reg.range = (struct uffdio_range){ (uintptr_t)b->mem, size };
	s.hva = (uintptr_t)b->mem;
	if (ioctl(uffd, UFFDIO_REGISTER, &reg)) {
		rc = -errno;
		goto fail;
	}
	rc = pt_uffd_open(&b->u, uffd, pm, getpid(), &s, 1, err, sizeof(err));
	if (!rc)
		return 0;
	fprintf(stderr, "bench uffd: %s\n", err);
fail:
	if (uffd >= 0)
		close(uffd);
	if (pm >= 0)
		close(pm);
	if (b->mem != MAP_FAILED)
		munmap(b->mem, size);
	b->mem = NULL;
	return rc;
}

static void ub_teardown(struct ubench *b)
{
	pt_uffd_close(b->u);
	if (b->mem)
		munmap(b->mem, b->size);
}

static uint64_t cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/* Wall and CPU time of one call (the machine may be shared: CPU time is the fairer cost). */
struct ub_time {
	double wall_ms, cpu_ms;
};

/* One full read: the verdict scan of the whole guest. Counts the pages found written. */
static int ub_scan(struct ubench *b, struct ub_time *t, uint64_t *found)
{
	uint64_t words = (b->size / PAGE + 63) / 64, *bits = calloc(words, 8), c0;
	struct pt_gfn_range r = { 0, b->size / PAGE };
	int rc;

	if (!bits)
		return -ENOMEM;
	c0 = cpu_ns();
	rc = pt_uffd_read(b->u, &r, 1, bits);
	t->cpu_ms = (cpu_ns() - c0) / 1e6;
	t->wall_ms = pt_uffd_stats(b->u)->last_read_ns / 1e6;
	*found = 0;
	for (uint64_t w = 0; w < words; w++)
		*found += __builtin_popcountll(bits[w]);
	free(bits);
	return rc ? rc : pt_uffd_doubt(b->u, NULL) ? -EIO : 0;
}

static int ub_arm(struct ubench *b, struct ub_time *t)
{
	uint64_t c0 = cpu_ns();
	int rc = pt_uffd_arm(b->u);

	t->cpu_ms = (cpu_ns() - c0) / 1e6;
	t->wall_ms = pt_uffd_stats(b->u)->last_arm_ns / 1e6;
	return rc;
}

/* Writes one byte to every 1000th page (0.1 %); returns ns per write. */
static double ub_write(struct ubench *b, uint64_t *n)
{
	uint64_t t0 = bench_now_ns();

	*n = 0;
	for (uint64_t off = 0; off < b->size; off += 1000 * PAGE, ++*n)
		b->mem[off + 8] = 2;
	return *n ? (double)(bench_now_ns() - t0) / *n : NAN;
}

/* Page tables (2 MiB of address space each) that ub_write() touches. */
static uint64_t ub_write_tables(const struct ubench *b)
{
	uint64_t n = 0, last = ~0ull;

	for (uint64_t off = 0; off < b->size; off += 1000 * PAGE)
		if (off >> 21 != last) {
			last = off >> 21;
			n++;
		}
	return n;
}

static void *ub_touch(void *arg)
{
	return (void *)(uintptr_t) * (volatile char *)arg;
}

/*
 * Runs a thread on every CPU this process may use, each reading the guest memory once: the
 * address space has then been live on all of them, as a VMM's with its vCPU threads is. From
 * then on every TLB flush of it also goes to the other CPUs (on a PVM guest the kernel never
 * drops a CPU from that set again), so what an ARM costs depends on where the "VMM" ran.
 */
static unsigned ub_touch_all_cpus(struct ubench *b)
{
	cpu_set_t mine, one;
	pthread_attr_t attr;
	unsigned n = 0;
	pthread_t th;

	if (sched_getaffinity(0, sizeof(mine), &mine))
		return 0;
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
		if (!CPU_ISSET(cpu, &mine) || pthread_attr_init(&attr))
			continue;
		CPU_ZERO(&one);
		CPU_SET(cpu, &one);
		if (!pthread_attr_setaffinity_np(&attr, sizeof(one), &one) &&
		    !pthread_create(&th, &attr, ub_touch, b->mem) && !pthread_join(th, NULL))
			n++;
		pthread_attr_destroy(&attr);
	}
	return n;
}

/* Writes the first n pages: as many pages as ub_write(), packed into few page tables. */
static void ub_write_run(struct ubench *b, uint64_t n)
{
	for (uint64_t p = 0; p < n && p < b->size / PAGE; p++)
		b->mem[p * PAGE + 16] = 3;
}

/* bench_put() keeps pointers: keys and labels live here. */
static void ub_put(const char *key, const char *what, const char *label, double v, const char *unit,
		   const char *text)
{
	static char keys[64][64], labels[64][128];
	static unsigned used;

	if (used == 64)
		return;
	snprintf(keys[used], sizeof(keys[used]), "uffd_%s_%s", key, what);
	snprintf(labels[used], sizeof(labels[used]), "%s: %s", label, text);
	bench_put(keys[used], v, unit, labels[used]);
	used++;
}

static void ub_put_time(const char *key, const char *what, const char *label,
			const struct ub_time *t, const char *text)
{
	char k[48], l[128];

	snprintf(k, sizeof(k), "%s_ms", what);
	snprintf(l, sizeof(l), "%s (wall)", text);
	ub_put(key, k, label, t->wall_ms, "ms", l);
	snprintf(k, sizeof(k), "%s_cpu_ms", what);
	snprintf(l, sizeof(l), "%s (CPU)", text);
	ub_put(key, k, label, t->cpu_ms, "ms", l);
}

/*
 * What an ARM costs beyond its walk: ARM with nothing written (the walk alone), ARM with the
 * same number of pages written as the 0.1 % case but packed into 2 MiB runs, and the 0.1 %
 * case again once the memory has been live on every CPU (ub_touch_all_cpus()). The
 * re-protection of written pages is paid per page table holding one (a TLB flush each, and
 * on a shadow-paging hypervisor such as PVM a trapped page-table write), not per page.
 */
static int ub_arm_parts(struct ubench *b, uint64_t n, struct ub_time *walk, struct ub_time *runs,
			struct ub_time *all_cpus, unsigned *cpus)
{
	uint64_t found;
	int rc = ub_arm(b, walk);

	if (!rc) {
		ub_write_run(b, n);
		rc = ub_scan(b, runs, &found);
	}
	if (!rc && found != n)
		rc = -EIO;
	if (!rc)
		rc = ub_arm(b, runs);
	if (!rc) {
		ub_write(b, &found);
		*cpus = ub_touch_all_cpus(b);
		rc = ub_arm(b, all_cpus);
	}
	return rc;
}

/*
 * The cases of one memory kind: ARM, the verdict scan with 0.1 % written, re-ARM, a scan with
 * nothing written, the ARM's parts (ub_arm_parts()), and the writer's cost per first write
 * after ARM against a write to a page already written in the epoch (no fault).
 */
static int ub_case(const char *key, const char *label, uint64_t size, bool thp, bool populate)
{
	struct ub_time arm1, verdict, arm2, empty, walk, runs, all_cpus;
	uint64_t n, found, again, tables;
	unsigned cpus = 0;
	double first_ns, again_ns;
	char text[96];
	struct ubench b;
	int rc = ub_setup(&b, size, thp, populate);

	if (rc)
		return rc;
	rc = ub_arm(&b, &arm1);
	if (!rc) {
		first_ns = ub_write(&b, &n);
		again_ns = ub_write(&b, &again);
		rc = ub_scan(&b, &verdict, &found);
	}
	if (!rc && found != n)
		rc = -EIO;
	if (!rc)
		rc = ub_arm(&b, &arm2);
	if (!rc)
		rc = ub_scan(&b, &empty, &found);
	if (!rc && found)
		rc = -EIO;
	if (!rc)
		rc = ub_arm_parts(&b, n, &walk, &runs, &all_cpus, &cpus);
	if (rc) {
		fprintf(stderr, "bench uffd %s: %s\n", key, strerror(-rc));
		ub_teardown(&b);
		return rc;
	}
	ub_put_time(key, "arm_first", label, &arm1, "first ARM (protect all)");
	snprintf(text, sizeof(text), "verdict, %llu pages written (0.1 %%)", (unsigned long long)n);
	ub_put_time(key, "verdict", label, &verdict, text);
	ub_put_time(key, "arm", label, &arm2, "ARM, 0.1 % written (re-protect)");
	ub_put_time(key, "scan_empty", label, &empty, "verdict, nothing written");
	ub_put_time(key, "arm_walk", label, &walk, "ARM, nothing written (the walk)");
	snprintf(text, sizeof(text), "ARM, %llu pages written in 2 MiB runs",
		 (unsigned long long)n);
	ub_put_time(key, "arm_runs", label, &runs, text);
	snprintf(text, sizeof(text), "ARM, 0.1 %% written, VMM live on %u CPU(s)", cpus);
	ub_put_time(key, "arm_all_cpus", label, &all_cpus, text);
	tables = ub_write_tables(&b);
	snprintf(text, sizeof(text), "ARM beyond its walk, per page table written (%llu)",
		 (unsigned long long)tables);
	ub_put(key, "arm_table_us", label, (arm2.cpu_ms - walk.cpu_ms) * 1e3 / tables, "us", text);
	ub_put(key, "first_write_ns", label, first_ns, "ns", "first write after ARM (faults)");
	ub_put(key, "rewrite_ns", label, again_ns, "ns", "write to a page already written");
	ub_teardown(&b);
	return 0;
}

int bench_uffd(bool quick)
{
	uint64_t sparse = quick ? 8 * GIB : 64 * GIB, dense = quick ? GIB / 4 : 2 * GIB;
	char label[64];
	int rc;

	bench_section("userfaultfd write log");
	bench_put("uffd_sparse_gib", (double)(sparse / GIB), "GiB", NULL);
	snprintf(label, sizeof(label), "%llu GiB sparse, 4 KiB",
		 (unsigned long long)(sparse / GIB));
	rc = ub_case("sparse_4k", label, sparse, false, false);
	snprintf(label, sizeof(label), "%llu MiB populated, 4 KiB",
		 (unsigned long long)(dense >> 20));
	if (!rc)
		rc = ub_case("dense_4k", label, dense, false, true);
	snprintf(label, sizeof(label), "%llu MiB populated, THP",
		 (unsigned long long)(dense >> 20));
	if (!rc)
		rc = ub_case("dense_thp", label, dense, true, true);
	return rc;
}
