// SPDX-License-Identifier: GPL-2.0
/*
 * PT_TRACK_UFFD end to end, against the real service: a forked child is the VMM and its
 * device. It maps guest memory, registers it with pt_client_register_uffd() (the library
 * creates the userfaultfd and hands it and the VMM's pagemap to the service), arms, hints,
 * writes some hinted pages through its own mapping (the VMM's own writes, which this mode
 * sees without WRITTEN), and queries: 0 false free, written pages kept, untouched hinted
 * pages free. No KVM needed; the service holds only the descriptors.
 */
#include <pthread.h>
#include <time.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <bpf/bpf.h>

#include "t.h"
#include "svc.h"
#include "writelog/uffd_abi.h"
#include "writelog.h"

#define PAGE	  4096ull
#define SLOT1_GPA (1ull << 40)
#define NPAGES	  8192 /* 32 MiB, two slots of 16 MiB */

enum mem_kind { MEM_ANON, MEM_THP, MEM_SHMEM };

/* The child's guest memory and its registration. */
struct vmm {
	char *mem;
	struct pt_reg_slot2 slots[2];
	struct pt_client *c;
	int uffd;
};

static uint64_t page_gpa(uint64_t p)
{
	return p < NPAGES / 2 ? p * PAGE : SLOT1_GPA + (p - NPAGES / 2) * PAGE;
}

static char *map_guest(enum mem_kind kind)
{
	size_t len = NPAGES * PAGE;
	char *m;

	if (kind == MEM_SHMEM) {
		int fd = memfd_create("guest", MFD_CLOEXEC);

		if (fd < 0 || ftruncate(fd, len))
			return NULL;
		m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		close(fd);
	} else {
		m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m != MAP_FAILED)
			madvise(m, len, kind == MEM_THP ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	}
	if (m == MAP_FAILED)
		return NULL;
	memset(m, 1, len);
	return m;
}

static int vmm_register(struct vmm *v, enum mem_kind kind)
{
	uint32_t handle;
	int err;

	memset(v, 0, sizeof(*v));
	v->uffd = -1;
	v->mem = map_guest(kind);
	CHECK(v->mem);
	v->slots[0] = (struct pt_reg_slot2){
		.gpa = 0, .size = NPAGES / 2 * PAGE, .hva = (uintptr_t)v->mem, .id = 1
	};
	v->slots[1] = (struct pt_reg_slot2){ .gpa = SLOT1_GPA,
					     .size = NPAGES / 2 * PAGE,
					     .hva = (uintptr_t)v->mem + NPAGES / 2 * PAGE,
					     .id = 2 };
	v->c = connect_svc();
	CHECK(v->c);
	err = pt_client_register_uffd(v->c, v->slots, 2, -1, &v->uffd, &handle);
	CHECKF(!err, "register: %s (%s)", strerror(-err), pt_client_last_error(v->c)->reason);
	return 0;
}

static int vmm_up(struct vmm *v, enum mem_kind kind)
{
	CHECK(!vmm_register(v, kind));
	CHECKF(pt_client_coverage(v->c) == 0, "coverage %#llx",
	       (unsigned long long)pt_client_coverage(v->c));
	return 0;
}

/* Page p written through the VMM's own mapping. */
static void vmm_write(struct vmm *v, uint64_t p)
{
	*(volatile uint64_t *)(v->mem + p * PAGE + 128) = p;
}

static bool in_ranges(const struct pt_client_result *r, uint64_t gpa)
{
	for (uint32_t i = 0; i < r->v.nranges; i++)
		if (gpa >= r->ranges[i].gpa && gpa - r->ranges[i].gpa < r->ranges[i].len)
			return true;
	return false;
}

/* Hinted pages: every 3rd page; written: every 7th hinted page, plus non-hinted ones. */
static bool hinted(uint64_t p)
{
	return p % 3 == 0;
}

static bool written(uint64_t p)
{
	return hinted(p) ? p % 7 == 0 : p % 11 == 0;
}

static int hint_all(struct vmm *v, uint32_t cmd)
{
	static struct pt_range r[NPAGES];
	size_t n = 0;

	for (uint64_t p = 0; p < NPAGES; p++)
		if (hinted(p))
			r[n++] = (struct pt_range){ page_gpa(p), PAGE };
	return pt_client_hint(v->c, cmd, r, n);
}

/* The verdict: exactly the hinted pages not written are free. */
static int check_verdict(struct vmm *v, uint32_t cmd, bool writes)
{
	struct pt_client_result res = { 0 };
	uint64_t nh = 0, nw = 0;
	int err = pt_client_query(v->c, cmd, PT_Q_HINTS, &res);

	CHECKF(!err, "query: %s", strerror(-err));
	for (uint64_t p = 0; p < NPAGES; p++) {
		bool w = writes && written(p);

		if (!hinted(p))
			continue;
		nh++;
		nw += w;
		CHECKF(in_ranges(&res, page_gpa(p)) == !w, "page %lu (%s) %s", (unsigned long)p,
		       w ? "written" : "untouched", w ? "FREE: data loss" : "kept");
	}
	CHECKF(!res.v.unsure_reason && res.v.hinted == nh && res.v.kept_written == nw &&
		       res.v.free == nh - nw && !res.v.kept_unsure,
	       "why %#x hinted %lu free %lu written %lu unsure %lu (want %lu, %lu written)",
	       res.v.unsure_reason, (unsigned long)res.v.hinted, (unsigned long)res.v.free,
	       (unsigned long)res.v.kept_written, (unsigned long)res.v.kept_unsure,
	       (unsigned long)nh, (unsigned long)nw);
	pt_client_result_free(&res);
	return 0;
}

static void vmm_down(struct vmm *v)
{
	if (v->c)
		pt_client_close(v->c);
	if (v->uffd >= 0)
		close(v->uffd);
	if (v->mem)
		munmap(v->mem, NPAGES * PAGE);
}

/* A case's body, run by the VMM with its guest memory registered (vmm_up()). */
typedef int (*vmm_body)(struct vmm *v);

struct vmm_case {
	enum mem_kind kind;
	vmm_body body;
};

static int vmm_child(void *arg)
{
	const struct vmm_case *vc = arg;
	struct vmm v;
	int rc = vmm_up(&v, vc->kind);

	if (!rc)
		rc = vc->body(&v);
	vmm_down(&v);
	return rc;
}

/* Runs body in a forked child, the VMM (svc.h's in_child()): its result is the case's. */
static int as_vmm(enum mem_kind kind, vmm_body body)
{
	struct vmm_case vc = { kind, body };

	T_REQUIRE(need_service());
	return in_child(vmm_child, &vc);
}

/* --- cases ------------------------------------------------------------------------------- */

static int hint_write_query(struct vmm *v)
{
	/* Before any ARM nothing is vouched for; ARM is the sync, nothing else is needed. */
	CHECK(!pt_client_arm(v->c, 2));
	CHECK(!hint_all(v, 2));
	for (uint64_t p = 0; p < NPAGES; p++)
		if (written(p))
			vmm_write(v, p);
	CHECK(!pt_client_stop(v->c, 2));
	CHECK(!check_verdict(v, 2, true));
	CHECK(!pt_client_done(v->c, 2));
	/* The next epoch starts clean: nothing written since its ARM. */
	CHECK(!pt_client_arm(v->c, 3));
	CHECK(!hint_all(v, 3));
	CHECK(!check_verdict(v, 3, false));
	return 0;
}

static int hint_write_query_4k(void)
{
	return as_vmm(MEM_ANON, hint_write_query);
}

static int hint_write_query_thp(void)
{
	return as_vmm(MEM_THP, hint_write_query);
}

static int hint_write_query_shmem(void)
{
	return as_vmm(MEM_SHMEM, hint_write_query);
}

/* The VMM unregisters its memory behind the service's back: keep, with the reason. */
static int unregistered_body(struct vmm *v)
{
	struct uffdio_range r = { (uintptr_t)v->mem, NPAGES * PAGE };
	struct pt_client_result res = { 0 };

	CHECK(!pt_client_arm(v->c, 2));
	CHECK(!hint_all(v, 2));
	CHECK(!ioctl(v->uffd, UFFDIO_UNREGISTER, &r));
	vmm_write(v, 3); /* now unseen */
	CHECK(!pt_client_query(v->c, 2, PT_Q_HINTS, &res));
	CHECKF((res.v.unsure_reason & PT_WHY_UFFD_LOST) && !res.v.free && !res.v.nranges &&
		       res.v.kept_unsure == res.v.hinted,
	       "why %#x free %lu", res.v.unsure_reason, (unsigned long)res.v.free);
	pt_client_result_free(&res);
	return 0;
}

static int unregistered_behind_back(void)
{
	return as_vmm(MEM_ANON, unregistered_body);
}

/*
 * This process in the service's record of processes that ran 32-bit code (pt_compat, by
 * pidfd), as pt_exec marks a VMM that execs a 32-bit image.
 */
static int mark_self_32bit(void)
{
	struct pt_compat m = { .first_ns = 1, .how = PT_COMPAT_USER };
	int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0), fd, err;
	char path[256];

	snprintf(path, sizeof(path), "%s/pt_compat", svc.pin_dir);
	fd = bpf_obj_get(path);
	err = fd < 0 || pidfd < 0 ? -1 : bpf_map_update_elem(fd, &pidfd, &m, BPF_ANY);
	if (fd >= 0)
		close(fd);
	if (pidfd >= 0)
		close(pidfd);
	return err;
}

/*
 * A VMM that may make 32-bit syscalls: its memslot changes are invisible to BPF, so the
 * registration's map of guest memory cannot be trusted. REGISTER says so in its coverage and
 * every verdict keeps every page (UNKNOWN_MEM), untouched ones included.
 */
#define COMPAT_REREGISTER 10

static int compat_body(void *unused)
{
	struct pt_client_result res = { 0 };
	struct vmm v;
	int err = -1;

	CHECK(!mark_self_32bit());
	if (vmm_register(&v, MEM_ANON))
		goto out;
	if (pt_client_coverage(v.c) != PT_WHY_UNKNOWN_MEM) {
		fprintf(stderr, "  coverage %#llx\n", (unsigned long long)pt_client_coverage(v.c));
		goto out;
	}
	if (pt_client_arm(v.c, 2) || hint_all(&v, 2))
		goto out;
	vmm_write(&v, 0);
	if (pt_client_stop(v.c, 2) || pt_client_query(v.c, 2, PT_Q_HINTS, &res))
		goto out;
	if (!(res.v.unsure_reason & PT_WHY_UNKNOWN_MEM) || res.v.free || res.v.nranges ||
	    res.v.kept_unsure + res.v.kept_written != res.v.hinted || !res.v.hinted) {
		fprintf(stderr, "  why %#x hinted %lu free %lu\n", res.v.unsure_reason,
			(unsigned long)res.v.hinted, (unsigned long)res.v.free);
		goto out;
	}
	/* A device that registers the VM again and again (each a takeover on a new connection)
	 * gets the same coverage every time, and the journal one warning in all (the parent
	 * counts them). */
	for (int i = 0; i < COMPAT_REREGISTER; i++) {
		pt_client_close(v.c);
		v.c = connect_svc();
		if (!v.c || pt_client_register_uffd(v.c, v.slots, 2, -1, &v.uffd, NULL) ||
		    pt_client_coverage(v.c) != PT_WHY_UNKNOWN_MEM)
			goto out;
	}
	err = 0;
out:
	pt_client_result_free(&res);
	vmm_down(&v);
	return err;
}

static int compat_vmm_kept(void)
{
	const char *warn = "may make 32-bit syscalls, which BPF cannot see";
	pid_t pid;

	T_REQUIRE(need_service());
	pid = start_child(compat_body, NULL);
	CHECK(pid > 0 && wait_child(pid) == 0);
	CHECKF(svc_log_lines(pid, warn) == 1, "%d warnings for %d registrations",
	       svc_log_lines(pid, warn), COMPAT_REREGISTER + 1);
	return 0;
}

/* Registrations the service must refuse, with a clear error. */
static int refused_body(void *unused)
{
	struct pt_reg_slot2 sl = { .gpa = 0, .size = 16 * PAGE, .id = 1 };
	int efd = eventfd(0, EFD_CLOEXEC), pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	int ppm, fds[2], uffd = syscall(SYS_userfaultfd, O_CLOEXEC);
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_WP_ASYNC };
	struct pt_client_reg reg = {
		.mode = PT_TRACK_UFFD, .slots = &sl, .nslots = 1, .fds = fds, .nfds = 2
	};
	char path[64], *mem = mmap(NULL, 16 * PAGE, PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct pt_client *c = connect_svc();
	int err;

	CHECK(c && efd >= 0 && pm >= 0 && uffd >= 0 && mem != MAP_FAILED &&
	      !ioctl(uffd, UFFDIO_API, &api));
	sl.hva = (uintptr_t)mem;
	/* Not a userfaultfd. */
	fds[0] = efd;
	fds[1] = pm;
	err = pt_client_register2(c, &reg, NULL);
	CHECKF(err == pt_client_errno(PT_E_BAD_FIELD), "eventfd as uffd: %d", err);
	fprintf(stderr, "  refused: %s\n", pt_client_last_error(c)->reason);
	/* A userfaultfd, but the memory is not registered with it. */
	fds[0] = uffd;
	err = pt_client_register2(c, &reg, NULL);
	CHECKF(err == pt_client_errno(PT_E_BAD_FIELD), "unregistered memory: %d", err);
	fprintf(stderr, "  refused: %s\n", pt_client_last_error(c)->reason);
	/* The pagemap of another process (our parent). */
	snprintf(path, sizeof(path), "/proc/%d/pagemap", getppid());
	ppm = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(ppm >= 0);
	fds[1] = ppm;
	err = pt_client_register2(c, &reg, NULL);
	CHECKF(err == pt_client_errno(PT_E_PERM), "another process's pagemap: %d", err);
	fprintf(stderr, "  refused: %s\n", pt_client_last_error(c)->reason);
	/* The connection is still usable. */
	CHECK(pt_client_ping(c) == 0);
	pt_client_close(c);
	return 0;
}

static int refused_registrations(void)
{
	T_REQUIRE(need_service());
	return in_child(refused_body, NULL);
}

/* Free page reporting across an ARM: a page written in the old epoch is not free after it. */
static int report_body(struct vmm *v)
{
	static struct pt_range r[32];
	struct pt_client_result res = { 0 };

	for (int i = 0; i < 32; i++)
		r[i] = (struct pt_range){ page_gpa(100 + i * 2), PAGE };
	CHECK(!pt_client_arm(v->c, 2));
	CHECK(!pt_client_report(v->c, r, 32, NULL));
	vmm_write(v, 100);		/* old epoch */
	CHECK(!pt_client_arm(v->c, 3)); /* folds page 100 into "not free" */
	vmm_write(v, 102);		/* new epoch */
	CHECK(!pt_client_query(v->c, 0, PT_Q_REPORTED, &res));
	CHECKF(!res.v.unsure_reason && res.v.free == 30 && !in_ranges(&res, page_gpa(100)) &&
		       !in_ranges(&res, page_gpa(102)) && in_ranges(&res, page_gpa(104)),
	       "why %#x free %lu", res.v.unsure_reason, (unsigned long)res.v.free);
	pt_client_result_free(&res);
	return 0;
}

static int report_across_arm(void)
{
	return as_vmm(MEM_ANON, report_body);
}

/* WR_READ: exactly the pages written since ARM, on every read. */
static int wr_read_body(struct vmm *v)
{
	struct pt_range r = { 0, 64 * PAGE };
	struct pt_client_result res = { 0 };

	CHECK(!pt_client_arm(v->c, 2));
	vmm_write(v, 5);
	vmm_write(v, 6);
	vmm_write(v, 40);
	for (int i = 0; i < 2; i++) {
		CHECK(!pt_client_wr_read(v->c, &r, 1, &res));
		CHECKF(!res.v.unsure_reason && res.v.nranges == 2 &&
			       res.ranges[0].gpa == 5 * PAGE && res.ranges[0].len == 2 * PAGE &&
			       res.ranges[1].gpa == 40 * PAGE,
		       "why %#x, %u ranges", res.v.unsure_reason, res.v.nranges);
		pt_client_result_free(&res);
	}
	return 0;
}

static int wr_read(void)
{
	return as_vmm(MEM_ANON, wr_read_body);
}

/*
 * A new connection (a reconnect, or a restarted service) registers again with the same
 * userfaultfd: nothing is vouched for until its ARM, then verdicts are exact again.
 */
static int reregister_body(struct vmm *v)
{
	struct pt_client_result res = { 0 };
	int err;

	CHECK(!pt_client_arm(v->c, 2));
	CHECK(!hint_all(v, 2));
	pt_client_close(v->c);
	v->c = connect_svc();
	err = v->c ? pt_client_register_uffd(v->c, v->slots, 2, -1, &v->uffd, NULL) : -EIO;
	CHECKF(!err, "register again: %s", strerror(-err));
	/* Hinting before ARM: refused as stale, nothing to vouch for. */
	CHECK(hint_all(v, 2) == pt_client_errno(PT_E_STALE_CMD));
	CHECK(!pt_client_arm(v->c, 4));
	CHECK(!hint_all(v, 4));
	vmm_write(v, 0);
	vmm_write(v, 7);
	CHECK(!pt_client_query(v->c, 4, PT_Q_HINTS, &res));
	CHECK(!res.v.unsure_reason && res.v.kept_written == 1 && !in_ranges(&res, page_gpa(0)) &&
	      in_ranges(&res, page_gpa(3)));
	pt_client_result_free(&res);
	return 0;
}

/*
 * A reconnect with the registration's token resumes: command IDs go (PROTOCOL.md section 2),
 * but reported pages and the armed write log go on, so the reported set is still sure.
 */
static int resume_body(struct vmm *v)
{
	struct pt_client_reg reg = { .mode = PT_TRACK_UFFD, .nslots = 2, .nfds = 2 };
	struct pt_range r[8];
	struct pt_client_result res = { 0 };
	uint64_t token;
	int fds[2];

	for (int i = 0; i < 8; i++)
		r[i] = (struct pt_range){ page_gpa(200 + i), PAGE };
	CHECK(!pt_client_arm(v->c, 2));
	CHECK(!pt_client_report(v->c, r, 8, NULL));
	vmm_write(v, 201); /* before the reconnect */
	token = pt_client_token(v->c);
	pt_client_close(v->c);
	v->c = connect_svc();
	fds[0] = v->uffd;
	fds[1] = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	reg.slots = v->slots;
	reg.fds = fds;
	reg.resume = token;
	CHECK(v->c && token && !pt_client_register2(v->c, &reg, NULL));
	close(fds[1]);
	vmm_write(v, 203); /* after it */
	CHECK(!pt_client_query(v->c, 0, PT_Q_REPORTED, &res));
	CHECKF(!res.v.unsure_reason && res.v.free == 6 && !in_ranges(&res, page_gpa(201)) &&
		       !in_ranges(&res, page_gpa(203)) && in_ranges(&res, page_gpa(200)),
	       "why %#x hinted %lu free %lu", res.v.unsure_reason, (unsigned long)res.v.hinted,
	       (unsigned long)res.v.free);
	pt_client_result_free(&res);
	return 0;
}

static int resume_keeps_log(void)
{
	return as_vmm(MEM_ANON, resume_body);
}

static int reregister_same_uffd(void)
{
	return as_vmm(MEM_ANON, reregister_body);
}

/* Balloon pages the guest writes without a deflate are reclaims, found by this mode too. */
static int reclaim_body(struct vmm *v)
{
	struct pt_range r = { page_gpa(10), 8 * PAGE };
	struct pt_client_result res = { 0 };

	CHECK(!pt_client_arm(v->c, 2));
	CHECK(!pt_client_inflate(v->c, &r, 1, NULL));
	vmm_write(v, 12);
	CHECK(!pt_client_query(v->c, 0, PT_Q_RECLAIMED, &res));
	CHECKF(res.v.nranges == 1 && res.ranges[0].gpa == page_gpa(12) && res.ranges[0].len == PAGE,
	       "%u reclaimed ranges", res.v.nranges);
	pt_client_result_free(&res);
	return 0;
}

static int silent_reclaim(void)
{
	return as_vmm(MEM_ANON, reclaim_body);
}

/*
 * The race, through the service: a writer thread in the VMM writes random pages (each stamped
 * before and after the store) while the device arms, hints 100,000 random pages and queries.
 * No page the writer finished writing after ARM was acknowledged and before QUERY was sent may
 * be free.
 */
#define RACE_PAGES (1u << 18) /* 1 GiB */
#define RACE_HINTS 100000
#define RACE_LOG   (1u << 20)

struct race_wr {
	uint32_t page;
	uint64_t t0, t1;
};

static struct race_wr *race_log;
static uint64_t race_n;
static volatile int race_stop;
static char *race_mem;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void *race_writer(void *arg)
{
	uint64_t x = 88172645463325252ull;

	(void)arg;
	while (!race_stop && race_n < RACE_LOG) {
		struct race_wr *w = &race_log[race_n];

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		w->page = x % RACE_PAGES;
		w->t0 = now_ns();
		*(volatile uint64_t *)(race_mem + (uint64_t)w->page * PAGE) = x;
		w->t1 = now_ns();
		__atomic_store_n(&race_n, race_n + 1, __ATOMIC_RELEASE);
		if (race_n % 4096 == 0)
			usleep(1);
	}
	return NULL;
}

static int race_round(struct pt_client *c, uint32_t cmd, const struct pt_range *hints,
		      uint64_t *checked)
{
	struct pt_client_result res = { 0 };
	uint64_t t_arm, t_query, n0, n1;
	int rc = -1;

	if (pt_client_arm(c, cmd))
		return -1;
	t_arm = now_ns();
	n0 = __atomic_load_n(&race_n, __ATOMIC_ACQUIRE);
	if (pt_client_hint(c, cmd, hints, RACE_HINTS) || pt_client_stop(c, cmd))
		return -1;
	t_query = now_ns();
	if (pt_client_query(c, cmd, PT_Q_HINTS, &res) || res.v.unsure_reason) {
		fprintf(stderr, "  query failed or unsure (%#x)\n", res.v.unsure_reason);
		goto out;
	}
	n1 = __atomic_load_n(&race_n, __ATOMIC_ACQUIRE);
	for (uint64_t i = n0 ? n0 - 1 : 0; i < n1; i++) {
		const struct race_wr *w = &race_log[i];

		if (w->t0 < t_arm || w->t1 > t_query)
			continue;
		/* Free ranges are sorted: binary search. */
		for (uint32_t lo = 0, hi = res.v.nranges; lo < hi;) {
			uint32_t mid = (lo + hi) / 2;
			const struct pt_range *r = &res.ranges[mid];
			uint64_t gpa = (uint64_t)w->page * PAGE;

			if (gpa < r->gpa) {
				hi = mid;
			} else if (gpa >= r->gpa + r->len) {
				lo = mid + 1;
			} else {
				fprintf(stderr, "  FALSE FREE: page %u written %lu ns after ARM\n",
					w->page, (unsigned long)(w->t0 - t_arm));
				goto out;
			}
		}
		++*checked;
	}
	rc = pt_client_done(c, cmd);
	if (rc)
		fprintf(stderr, "  DONE: %d\n", rc);
out:
	pt_client_result_free(&res);
	return rc;
}

static int race_body(void *unused)
{
	struct pt_reg_slot2 slot = { .gpa = 0, .size = (uint64_t)RACE_PAGES * PAGE, .id = 1 };
	struct pt_range *hints = calloc(RACE_HINTS, sizeof(*hints));
	uint8_t *seen = calloc(RACE_PAGES, 1);
	uint64_t x = 1234567, checked = 0, t_end;
	struct pt_client *c = connect_svc();
	uint32_t rounds = 0, n = 0;
	int uffd = -1, rc = -1, failed = 0;
	pthread_t th;

	race_log = calloc(RACE_LOG, sizeof(*race_log));
	race_mem = mmap(NULL, slot.size, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	CHECK(c && hints && seen && race_log && race_mem != MAP_FAILED);
	slot.hva = (uintptr_t)race_mem;
	CHECK(!pt_client_register_uffd(c, &slot, 1, -1, &uffd, NULL));
	/* 100,000 distinct random pages, in address order. */
	while (n < RACE_HINTS) {
		uint64_t p;

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p = x % RACE_PAGES;
		n += !seen[p];
		seen[p] = 1;
	}
	n = 0;
	for (uint32_t p = 0; p < RACE_PAGES; p++)
		if (seen[p])
			hints[n++] = (struct pt_range){ (uint64_t)p * PAGE, PAGE };
	CHECK(!pthread_create(&th, NULL, race_writer, NULL));
	t_end = now_ns() + 10ull * 1000000000;
	while ((rounds < 10 || checked < 20000) && now_ns() < t_end &&
	       __atomic_load_n(&race_n, __ATOMIC_ACQUIRE) < RACE_LOG)
		if ((failed = race_round(c, 2 + rounds++ % 2, hints, &checked)))
			break;
	race_stop = 1;
	pthread_join(th, NULL);
	fprintf(stderr, "  %u rounds, %lu writes to hinted pages after ARM checked, %lu in all\n",
		rounds, (unsigned long)checked, (unsigned long)race_n);
	CHECKF(!failed, "round %u failed", rounds);
	CHECKF(rounds >= 3 && checked >= 500, "too little happened");
	rc = 0;
	pt_client_close(c);
	close(uffd);
	return rc;
}

static int race_writer_100k(void)
{
	T_REQUIRE(need_service());
	return in_child(race_body, NULL);
}

/*
 * kill -9 of the service: the descriptors die with it. The restarted service (same pins)
 * answers nothing of the old command ID; the device registers again with the same
 * userfaultfd and ARMs, and verdicts are exact again (a write made while the service was
 * down predates that ARM).
 */
static int restart_body(void *unused)
{
	struct pt_range hint = { page_gpa(0), 16 * PAGE };
	struct pt_client_result res = { 0 };
	struct pt_spawned s1, s2;
	struct pt_client *c;
	struct vmm v;
	int st;

	memset(&v, 0, sizeof(v));
	v.uffd = -1;
	v.mem = map_guest(MEM_ANON);
	CHECK(v.mem);
	v.slots[0] = (struct pt_reg_slot2){
		.gpa = 0, .size = NPAGES / 2 * PAGE, .hva = (uintptr_t)v.mem, .id = 1
	};
	CHECK(!pt_spawn_service(&s1, NULL, "uffdrestart", NULL));
	c = pt_client_connect(s1.socket);
	CHECK(c && !pt_client_register_uffd(c, v.slots, 1, -1, &v.uffd, NULL));
	CHECK(!pt_client_arm(c, 2) && !pt_client_hint(c, 2, &hint, 1));
	CHECK(!kill(s1.pid, SIGKILL) && waitpid(s1.pid, &st, 0) == s1.pid);
	pt_client_close(c);
	vmm_write(&v, 5); /* while no service runs */

	CHECK(!pt_spawn_service(&s2, NULL, "uffdrestart", NULL));
	c = pt_client_connect(s2.socket);
	CHECK(c && !pt_client_register_uffd(c, v.slots, 1, -1, &v.uffd, NULL));
	CHECK(pt_client_query(c, 2, PT_Q_HINTS, &res) < 0);
	CHECK(pt_client_last_error(c)->code == PT_E_STALE_CMD);
	CHECK(!pt_client_arm(c, 3) && !pt_client_hint(c, 3, &hint, 1));
	vmm_write(&v, 6);
	CHECK(!pt_client_query(c, 3, PT_Q_HINTS, &res));
	CHECKF(!res.v.unsure_reason && res.v.free == 15 && res.v.kept_written == 1 &&
		       !in_ranges(&res, page_gpa(6)) && in_ranges(&res, page_gpa(5)),
	       "why %#x free %lu", res.v.unsure_reason, (unsigned long)res.v.free);
	pt_client_result_free(&res);
	pt_client_close(c);
	s1.pid = 0;
	pt_spawn_stop(&s1, SIGTERM);
	pt_spawn_stop(&s2, SIGTERM);
	close(v.uffd);
	return 0;
}

static int kill9_restart(void)
{
	T_REQUIRE(need_service()); /* runs beside the two services this case starts */
	return in_child(restart_body, NULL);
}

/* status.json names the mode. */
static int status_body(struct vmm *v)
{
	static char buf[65536];
	int i;

	for (i = 0; i < 300 && !strstr(status_json(buf, sizeof(buf)), "\"mode\": \"uffd\""); i++)
		usleep(10000);
	CHECKF(i < 300, "status.json never said \"mode\": \"uffd\"");
	return 0;
}

static int status_mode(void)
{
	return as_vmm(MEM_ANON, status_body);
}

/* ptballoon's userfaultfd mode: its own memory as the guest, one page written of 16 hinted. */
static int ptballoon_mode(void)
{
	char cmd[1024], out[4096], self[512];
	ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
	size_t n;
	FILE *f;

	T_REQUIRE(need_service());
	CHECK(len > 0);
	self[len] = 0;
	*strrchr(self, '/') = 0; /* $BUILD/tests: ptballoon is in $BUILD */
	snprintf(cmd, sizeof(cmd),
		 "%s/../ptballoon -s %s uffd-memory 1M , arm 2 , hint 2 0:0x10000 , "
		 "write 0x3000:0x1000 , stop 2 , query 2 2>&1",
		 self, svc.socket);
	f = popen(cmd, "r");
	CHECK(f);
	n = fread(out, 1, sizeof(out) - 1, f);
	out[n] = 0;
	CHECKF(!pclose(f), "%s", out);
	CHECKF(strstr(out, "userfaultfd mode") && strstr(out, "free 15 kept_written 1") &&
		       strstr(out, "0x0:0x3000") && strstr(out, "0x4000:0xc000"),
	       "%s", out);
	return 0;
}

T_MAIN(T_CASE(hint_write_query_4k), T_CASE(hint_write_query_thp), T_CASE(hint_write_query_shmem),
       T_CASE(unregistered_behind_back), T_CASE(refused_registrations), T_CASE(report_across_arm),
       T_CASE(wr_read), T_CASE(status_mode), T_CASE(ptballoon_mode), T_CASE(reregister_same_uffd),
       T_CASE(silent_reclaim), T_CASE(race_writer_100k), T_CASE(kill9_restart),
       T_CASE(resume_keeps_log), T_CASE(compat_vmm_kept))
