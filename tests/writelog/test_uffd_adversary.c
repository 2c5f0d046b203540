// SPDX-License-Identifier: GPL-2.0
/*
 * Adversarial cases for the userfaultfd write log (user/writelog/uffd.c): a VMM (a forked child,
 * tests/writelog/uffd_child.h) that does unusual but legal things to its guest memory while a
 * "guest" writes it. The invariant under attack: a page the log reads unwritten was not
 * written since the arm. Each case either proves the write is seen (or the log is in doubt),
 * or, for the writes that by design cannot be seen (PROTOCOL.md 5a rule 3), proves that they
 * are not, so the documentation stays true.
 *
 *   hugetlb_dropped_*         a written shared hugetlbfs page dropped with MADV_DONTNEED keeps
 *                             its data in the file, and PAGEMAP_SCAN reports it unwritten:
 *                             the log must still count it (the fix in scan_read()), and the
 *                             next arm protect it again, even after a 4 KiB read
 *   alias_slots_refused       two slots over the same host memory are refused (an arm folded
 *                             a write into one alias only)
 *   race_*                    a writer thread stamps every store while a disturber thread in
 *                             the same VMM splits VMAs (mprotect), zaps pages (MADV_DONTNEED on
 *                             anon, shmem, THP, hugetlbfs; MADV_FREE; MADV_PAGEOUT on shmem,
 *                             and on anon where there is swap), splits and collapses THPs,
 *                             forks, or drops and re-registers the uffd; every write done after
 *                             an ARM and before a read must be in the read, every write of the
 *                             ending epoch in prev or the read
 *   migrate_compaction        pages moved by compaction keep the written set exact
 *   remote_*                  writes by another process through the VMM's page tables
 *                             (/proc/PID/mem, process_vm_writev), a read(2) and an O_DIRECT or
 *                             io_uring read into guest memory: seen
 *   reregister, remap, mremap the VMM drops its registration and registers again, maps new
 *                             memory over part of a slot and registers it, or moves memory away
 *                             and back: doubt, or written pages stay written
 *   unseen_*                  writes that bypass the VMM's page tables (a second mapping of the
 *                             memfd in the VMM itself, write(2) to the memfd, io_uring
 *                             registered buffers): not seen, as PROTOCOL.md 5a rule 3 says
 */
#include <liburing.h>
#include <sys/uio.h>

#include "t.h"
#include "uffd_child.h"
#include "pagetrack/proto.h"
#include "writelog/uffd.h"

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

#define MIB  (1ull << 20)
#define HUGE (2 * MIB)

/* --- the child's own operations ----------------------------------------------------------------
 */

enum adv_op {
	OP_PEEK = UC_EXTRA, /* returns the word the writer put at page a (uc_write's offset) */
	OP_WRITE_ALIAS,	    /* write page a through a second mapping of the memfd */
	OP_PWRITE,	    /* pwrite(2) page a of the memfd */
	OP_READ_FILE,	    /* read(2) a 4 KiB block of the scratch file into page a */
	OP_ODIRECT,	    /* the same with O_DIRECT */
	OP_URING_READ,	    /* the same through io_uring (plain buffer) */
	OP_URING_REGISTER,  /* register all guest memory as an io_uring fixed buffer */
	OP_URING_FIXED,	    /* IORING_OP_READ_FIXED of the scratch file into page a */
	OP_REREGISTER,	    /* UFFDIO_UNREGISTER then UFFDIO_REGISTER (WP) of pages [a, a + b) */
	OP_MREMAP_BACK,	    /* mremap pages [a, a + b) elsewhere and back (MREMAP_FIXED) */
	OP_DISTURB_START,   /* start disturber a (enum disturb) */
	OP_DISTURB_STOP,
};

enum disturb {
	D_MPROTECT,
	D_DONTNEED,
	D_DONTNEED_HUGE,
	D_PAGEOUT,
	D_FORK,
	D_COLLAPSE,
	D_REREG,
	D_FREE
};

static const char *scratch_path; /* the parent's scratch file, inherited by the child */

struct adv_child {
	struct uc_child *c;
	struct io_uring ring;
	bool ring_ok;
	pthread_t dist;
	volatile int stop;
	int kind;
	uint64_t ops, tries;
};
static struct adv_child ac; /* the child's copy */

static uint64_t xs(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static int reg_range(struct uc_child *c, char *at, uint64_t len, bool on)
{
	struct uffdio_register reg = { .range = { (uintptr_t)at, len },
				       .mode = UFFDIO_REGISTER_MODE_WP };
	struct uffdio_range r = { (uintptr_t)at, len };

	return ioctl(c->uffd, on ? UFFDIO_REGISTER : UFFDIO_UNREGISTER, on ? (void *)&reg : &r)
		       ? -errno
		       : 0;
}

/* One disturbance of the VMM's memory; 0 if it took effect. */
static int disturb_once(struct uc_child *c, uint64_t *x)
{
	uint64_t pages = c->size / UC_PAGE - 4, huge = c->size / HUGE;
	char *page = c->mem + xs(x) % pages * UC_PAGE, *chunk = c->mem + xs(x) % huge * HUGE;
	pid_t pid;

	switch (ac.kind) {
	case D_MPROTECT: /* splits the VMA and merges it back; every pte rewritten twice */
		return mprotect(chunk, HUGE, PROT_READ | PROT_WRITE | PROT_EXEC) ||
		       mprotect(chunk, HUGE, PROT_READ | PROT_WRITE);
	case D_DONTNEED:
		return madvise(page, 4 * UC_PAGE, MADV_DONTNEED);
	case D_DONTNEED_HUGE:
		return madvise(chunk, HUGE, MADV_DONTNEED);
	case D_PAGEOUT:
		return madvise(chunk, HUGE, MADV_PAGEOUT);
	case D_FORK: /* COW-protects every pte of the VMM, and back on the first write */
		pid = fork();
		if (pid == 0)
			_exit(0);
		return pid < 0 || waitpid(pid, NULL, 0) != pid;
	case D_COLLAPSE: /* khugepaged's code, on demand */
		return madvise(chunk, HUGE, MADV_COLLAPSE);
	case D_FREE: /* lazy free: ptes made clean and old, the pages dropped under pressure */
		return madvise(page, 4 * UC_PAGE, MADV_FREE);
	case D_REREG: /* unregister clears every marker: all of it then reads written */
		return reg_range(c, chunk, HUGE, false) || reg_range(c, chunk, HUGE, true);
	}
	return -1;
}

static void *disturber(void *arg)
{
	uint64_t x = 0x5eed0077;

	while (!ac.stop) {
		ac.ops += !disturb_once(arg, &x);
		ac.tries++;
		__atomic_store_n(&ac.c->sh->extra[0], ac.tries, __ATOMIC_RELAXED);
		/* Re-registering puts the log in doubt for a round: leave it most rounds. */
		usleep(ac.kind == D_REREG ? 20000 : 200);
	}
	return NULL;
}

/* Read a 4 KiB block of the scratch file into page a, by method op. */
static int64_t file_into(struct uc_child *c, uint32_t op, char *at)
{
	int fd = open(scratch_path, O_RDONLY | (op == OP_ODIRECT ? O_DIRECT : 0));
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	int64_t rc;

	if (fd < 0)
		return -errno;
	if (!ac.ring_ok && (op == OP_URING_READ || op == OP_URING_FIXED))
		ac.ring_ok = !io_uring_queue_init(8, &ac.ring, 0);
	if (op == OP_READ_FILE || op == OP_ODIRECT) {
		rc = pread(fd, at, UC_PAGE, 0) == (ssize_t)UC_PAGE ? 0 : -EIO;
	} else if (!ac.ring_ok) {
		rc = -ENXIO;
	} else {
		sqe = io_uring_get_sqe(&ac.ring);
		if (op == OP_URING_FIXED)
			io_uring_prep_read_fixed(sqe, fd, at, UC_PAGE, 0, 0);
		else
			io_uring_prep_read(sqe, fd, at, UC_PAGE, 0);
		rc = io_uring_submit(&ac.ring) == 1 && !io_uring_wait_cqe(&ac.ring, &cqe) ? cqe->res
											  : -EIO;
		if (rc >= 0)
			io_uring_cqe_seen(&ac.ring, cqe);
		rc = rc == (int64_t)UC_PAGE ? 0 : rc < 0 ? rc : -EIO;
	}
	close(fd);
	return rc;
}

static int64_t uring_register(struct uc_child *c)
{
	struct iovec iov = { c->mem, c->size };

	if (!ac.ring_ok && !(ac.ring_ok = !io_uring_queue_init(8, &ac.ring, 0)))
		return -ENXIO;
	return io_uring_register_buffers(&ac.ring, &iov, 1);
}

static int64_t write_alias(struct uc_child *c, uint64_t page)
{
	char *alias = mmap(NULL, c->size, PROT_READ | PROT_WRITE, MAP_SHARED, c->memfd, 0);

	if (alias == MAP_FAILED)
		return -errno;
	*(volatile uint64_t *)(alias + page * UC_PAGE + 64) = page + 1;
	munmap(alias, c->size);
	return 0;
}

static int64_t mremap_back(char *at, uint64_t len)
{
	char *tmp = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (tmp == MAP_FAILED)
		return -errno;
	if (mremap(at, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, tmp) == MAP_FAILED ||
	    mremap(tmp, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, at) == MAP_FAILED)
		return -errno;
	return 0;
}

static int64_t adv_do(struct uc_child *c, const struct uc_cmd *cmd)
{
	char *at = c->mem + cmd->a * UC_PAGE;
	uint64_t v = cmd->a + 1;

	switch (cmd->op) {
	case OP_PEEK:
		return (int64_t) * (volatile uint64_t *)(at + 64);
	case OP_WRITE_ALIAS:
		return write_alias(c, cmd->a);
	case OP_PWRITE:
		return pwrite(c->memfd, &v, sizeof(v), cmd->a * UC_PAGE + 64) == sizeof(v) ? 0
											   : -EIO;
	case OP_READ_FILE:
	case OP_ODIRECT:
	case OP_URING_READ:
	case OP_URING_FIXED:
		return file_into(c, cmd->op, at);
	case OP_URING_REGISTER:
		return uring_register(c);
	case OP_REREGISTER: {
		int err = reg_range(c, at, cmd->b * UC_PAGE, false);

		return err ? err : reg_range(c, at, cmd->b * UC_PAGE, true);
	}
	case OP_MREMAP_BACK:
		return mremap_back(at, cmd->b * UC_PAGE);
	case OP_DISTURB_START:
		ac.c = c;
		ac.kind = (int)cmd->a;
		ac.stop = 0;
		return pthread_create(&ac.dist, NULL, disturber, c) ? -1 : 0;
	case OP_DISTURB_STOP:
		ac.stop = 1;
		if (pthread_join(ac.dist, NULL))
			return -1;
		fprintf(stderr, "  disturbances: %lu of %lu took effect\n", (unsigned long)ac.ops,
			(unsigned long)ac.tries);
		return (int64_t)ac.tries;
	default:
		return -EINVAL;
	}
}

/* --- the service side ------------------------------------------------------------------------ */

struct adv {
	struct uc c;
	struct pt_uffd *u;
	uint64_t npages, words;
	uint64_t *prev, *bits;
	struct pt_gfn_range all;
};

static bool has(const uint64_t *b, uint64_t p)
{
	return b[p / 64] >> (p % 64) & 1;
}

static uint64_t count(const uint64_t *b, uint64_t words)
{
	uint64_t n = 0;

	for (uint64_t w = 0; w < words; w++)
		n += __builtin_popcountll(b[w]);
	return n;
}

static void adv_end(struct adv *a)
{
	pt_uffd_close(a->u);
	uc_stop(&a->c, false);
	free(a->prev);
	free(a->bits);
}

/* Starts the child VMM with `o` and opens its log, one slot over all of its memory. */
static int adv_start(struct adv *a, const struct uc_opts *o)
{
	struct pt_uffd_slot s;
	char err[256] = "";

	memset(a, 0, sizeof(*a));
	a->c = (struct uc)UC_NONE;
	uc_extra = adv_do;
	if (uc_start(&a->c, o))
		return -1;
	s = (struct pt_uffd_slot){ .gpa = 0, .size = a->c.size, .hva = a->c.hva };
	if (pt_uffd_open(&a->u, a->c.uffd, a->c.pm, a->c.pid, &s, 1, err, sizeof(err))) {
		fprintf(stderr, "  pt_uffd_open: %s\n", err);
		return -1;
	}
	a->c.uffd = a->c.pm = -1; /* the log owns them now */
	a->npages = a->c.size / UC_PAGE;
	a->words = (a->npages + 63) / 64;
	a->all = (struct pt_gfn_range){ 0, a->npages };
	a->prev = calloc(a->words, 8);
	a->bits = calloc(a->words, 8);
	return a->prev && a->bits ? 0 : -1;
}

/* A fresh read of all guest memory into a->bits; the log must be trusted. */
static int read_all(struct adv *a)
{
	uint32_t d = 0;
	char text[120];
	int err;

	memset(a->bits, 0, a->words * 8);
	err = pt_uffd_read(a->u, &a->all, 1, a->bits);
	if (err || pt_uffd_doubt(a->u, &d)) {
		fprintf(stderr, "  read: %s, doubt %s\n", strerror(-err),
			pt_uffd_doubt_str(d, pt_uffd_stats(a->u)->last_errno, text, sizeof(text)));
		return -1;
	}
	return 0;
}

static int arm(struct adv *a)
{
	memset(a->prev, 0, a->words * 8);
	return pt_uffd_arm_fold(a->u, a->prev);
}

/* --- hugetlbfs ------------------------------------------------------------------------------- */

#define NR_HUGE	  "/proc/sys/vm/nr_hugepages"
#define FREE_HUGE "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"

static long read_long(const char *path)
{
	FILE *f = fopen(path, "r");
	long v = -1;

	if (f && fscanf(f, "%ld", &v) != 1)
		v = -1;
	if (f)
		fclose(f);
	return v;
}

static int write_long(const char *path, long v)
{
	FILE *f = fopen(path, "w");
	int rc = f && fprintf(f, "%ld\n", v) > 0 ? 0 : -1;

	if (f && fclose(f))
		rc = -1;
	return rc;
}

/*
 * Make `n` free 2 MiB huge pages exist, raising vm.nr_hugepages if need be (root); *restore
 * gets the value to put back (-1: nothing to undo). T_SKIP if they cannot be had.
 */
static int huge_reserve(long n, long *restore)
{
	long nr = read_long(NR_HUGE), free_ = read_long(FREE_HUGE);

	*restore = -1;
	if (free_ >= n)
		return 0;
	if (nr < 0 || free_ < 0 || write_long(NR_HUGE, nr + n - free_))
		return t_skip("no %ld free 2 MiB huge pages and vm.nr_hugepages not writable", n);
	*restore = nr;
	if (read_long(FREE_HUGE) < n)
		return t_skip("the kernel could not allocate %ld huge pages", n);
	return 0;
}

static void huge_restore(long restore)
{
	if (restore >= 0)
		write_long(NR_HUGE, restore);
}

/*
 * The VMM drops a written page of shared hugetlbfs memory (MADV_DONTNEED): the huge pte goes
 * without a write-protect marker, the data stays in the file and comes back on the next
 * access. PAGEMAP_SCAN reads the page neither present nor written (Linux 6.18): before the fix
 * the log answered it unwritten, a false free. Then the next arm must protect it again (else
 * it reads written for ever), and what the guest left there is still there.
 */
static int hugetlb_dropped_body(struct adv *a)
{
	uint64_t p = 512 + 77, q = 3 * 512 + 5; /* in huge pages 1 and 3 */

	CHECK(!arm(a));
	CHECK(!read_all(a) && !count(a->bits, a->words));
	CHECK(!uc_write(&a->c, &p, 1));
	CHECK(!uc_cmd(&a->c, UC_DONTNEED, 512, 512));
	CHECK(!read_all(a));
	CHECKF(has(a->bits, p),
	       "page %lu written, then dropped from the page tables with its data "
	       "still in the file: read as unwritten",
	       (unsigned long)p);
	/* The ending epoch hands it over; the arm protects the whole dropped huge page again. */
	CHECK(!arm(a));
	CHECK(has(a->prev, p));
	CHECK(!read_all(a));
	CHECKF(!count(a->bits, a->words), "%lu pages read written right after the arm",
	       (unsigned long)count(a->bits, a->words));
	/* The guest's data outlived the drop (a discard here would have lost it). */
	CHECK(uc_cmd(&a->c, OP_PEEK, p, 0) == (int64_t)p + 1);
	CHECK(!read_all(a) && !count(a->bits, a->words)); /* a read is not a write */
	CHECK(!uc_write(&a->c, &q, 1));
	CHECK(!uc_cmd(&a->c, UC_DONTNEED, 1536, 512));
	CHECK(!read_all(a) && has(a->bits, q));
	return 0;
}

/*
 * The same, read 4 KiB at a time (inflated pages are): the arm must protect the whole dropped
 * huge page (hugetlbfs protects no less), not fail on the part that was read.
 */
static int hugetlb_partial_body(struct adv *a)
{
	uint64_t p = 2 * 512 + 9, bits[64] = { 0 };
	struct pt_gfn_range one = { p, 1 };

	CHECK(!arm(a));
	CHECK(!uc_write(&a->c, &p, 1));
	CHECK(!uc_cmd(&a->c, UC_DONTNEED, 1024, 512));
	CHECK(!pt_uffd_read(a->u, &one, 1, bits) && has(bits, p));
	CHECKF(!arm(a), "arm after a 4 KiB read of a dropped huge page: %s",
	       strerror(pt_uffd_stats(a->u)->last_errno));
	CHECK(has(a->prev, p) && has(a->prev, 1024) && has(a->prev, 1535));
	CHECK(!read_all(a) && !count(a->bits, a->words));
	return 0;
}

static int with_hugetlb(int (*body)(struct adv *a))
{
	struct uc_opts o = { .kind = UC_HUGETLB, .size = 8 * MIB, .populate = true };
	struct adv a;
	long restore;
	int rc = huge_reserve(4, &restore);

	if (rc)
		return rc;
	rc = adv_start(&a, &o) ? -1 : body(&a);
	adv_end(&a);
	huge_restore(restore);
	return rc;
}

static int hugetlb_dropped_written(void)
{
	return with_hugetlb(hugetlb_dropped_body);
}

static int hugetlb_dropped_partial_read(void)
{
	return with_hugetlb(hugetlb_partial_body);
}

/* --- races: a stamped writer, a disturber, ARM and read rounds -------------------------------- */

struct race {
	struct adv a;
	uint64_t cursor, a1_prev, rounds, after, in_epoch, doubtful;
	long swap_kb; /* the most of the VMM's memory seen swapped out */
};

/* VmSwap of pid, in kB (0 if unknown). */
static long vm_swap_kb(pid_t pid)
{
	char path[64], line[128];
	long kb = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	f = fopen(path, "r");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "VmSwap: %ld kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb;
}

/*
 * Writes done before the read began: after ARM_k completed, they must be in read_k; from the
 * end of ARM_{k-1} on (the ending epoch, or overlapping ARM_k), in prev_k or read_k.
 */
static int classify(struct race *r, uint64_t a1, uint64_t r0, bool trusted)
{
	uint64_t n = __atomic_load_n(&r->a.c.sh->n, __ATOMIC_ACQUIRE);

	for (; r->cursor < n; r->cursor++) {
		const struct uc_wr *e = &r->a.c.sh->log[r->cursor];
		bool in_prev = has(r->a.prev, e->page), in_read = has(r->a.bits, e->page);

		if (e->t1 >= r0)
			break;
		if (!trusted || e->t0 < r->a1_prev)
			continue; /* a keep answer, or overlapped the previous ARM */
		if (e->t0 >= a1) {
			r->after++;
			CHECKF(in_read, "page %lu written %lu ns after ARM %lu: not in the read",
			       (unsigned long)e->page, (unsigned long)(e->t0 - a1),
			       (unsigned long)r->rounds);
		} else {
			r->in_epoch++;
			CHECKF(in_prev || in_read,
			       "page %lu written around ARM %lu: in neither epoch",
			       (unsigned long)e->page, (unsigned long)r->rounds);
		}
	}
	return 0;
}

/* One round. A log in doubt is a keep answer: its writes are not checked, the next arm
 * (which then reports every page) is. */
static int race_round(struct race *r)
{
	uint64_t a1, r0;
	bool trusted;
	int err;

	err = arm(&r->a);
	a1 = uc_now();
	usleep(300 + r->rounds % 5 * 500);
	r0 = uc_now();
	memset(r->a.bits, 0, r->a.words * 8);
	trusted = !err && !pt_uffd_read(r->a.u, &r->a.all, 1, r->a.bits) &&
		  !pt_uffd_doubt(r->a.u, NULL);
	r->doubtful += !trusted;
	if (vm_swap_kb(r->a.c.pid) > r->swap_kb)
		r->swap_kb = vm_swap_kb(r->a.c.pid);
	/* Round 0 follows open: its prev is every page, nothing before it to check. */
	if (r->rounds)
		CHECK(!classify(r, a1, r0, trusted));
	else
		CHECK(!classify(r, a1, r0, false));
	r->a1_prev = a1;
	r->rounds++;
	return 0;
}

static int race(enum uc_kind kind, uint64_t size, enum disturb d)
{
	struct uc_opts o = { .kind = kind, .size = size, .populate = true };
	struct race r = { 0 };
	uint64_t t_end;
	int64_t ops = 0;
	int rc = -1;

	if (adv_start(&r.a, &o))
		goto out;
	if (kind == UC_THP && uc_cmd(&r.a.c, UC_THP_KB, 0, 0) <= 0) {
		rc = t_skip("no transparent huge pages in the child's memory");
		goto out;
	}
	r.a.c.sh->seed = 0x5eed0002 + d;
	r.a.c.sh->usleep_every = 1024;
	if (uc_cmd(&r.a.c, UC_WRITER_START, 0, 0) || uc_cmd(&r.a.c, OP_DISTURB_START, d, 0))
		goto out;
	t_end = uc_now() + t_time_scale() * 8ull * 1000000000;
	rc = 0;
	while (!rc &&
	       (r.rounds < 30 || r.after < 1000 || r.in_epoch < 1000 ||
		__atomic_load_n(&r.a.c.sh->extra[0], __ATOMIC_RELAXED) < 20) &&
	       uc_now() < t_end && __atomic_load_n(&r.a.c.sh->n, __ATOMIC_ACQUIRE) < UC_LOG_MAX)
		rc = race_round(&r);
	ops = uc_cmd(&r.a.c, OP_DISTURB_STOP, 0, 0);
	uc_cmd(&r.a.c, UC_WRITER_STOP, 0, 0);
	fprintf(stderr,
		"  %lu rounds (%lu in doubt), %ld disturbances tried; writes checked: %lu after an "
		"ARM, %lu in an epoch\n",
		(unsigned long)r.rounds, (unsigned long)r.doubtful, (long)ops,
		(unsigned long)r.after, (unsigned long)r.in_epoch);
	if (r.swap_kb)
		fprintf(stderr, "  up to %ld kB of the VMM's memory swapped out\n", r.swap_kb);
	if (!rc &&
	    (r.rounds < 10 || r.after < 100 || r.in_epoch < 100 || ops < 10 ||
	     r.doubtful > r.rounds / 2 || (kind == UC_ANON && d == D_PAGEOUT && !r.swap_kb))) {
		fprintf(stderr, "  too little happened\n");
		rc = -1;
	}
out:
	adv_end(&r.a);
	return rc;
}

static int race_mprotect(void)
{
	return race(UC_ANON, 64 * MIB, D_MPROTECT);
}

static int race_dontneed(void)
{
	return race(UC_ANON, 64 * MIB, D_DONTNEED);
}

static int race_dontneed_shmem(void)
{
	return race(UC_SHMEM, 64 * MIB, D_DONTNEED);
}

static int race_dontneed_thp(void)
{
	return race(UC_THP, 64 * MIB, D_DONTNEED_HUGE);
}

/* Zapping 4 KiB of a THP splits its PMD under the writer. */
static int race_split_thp(void)
{
	return race(UC_THP, 64 * MIB, D_DONTNEED);
}

static int race_free(void)
{
	return race(UC_ANON, 64 * MIB, D_FREE);
}

static int race_pageout_shmem(void)
{
	return race(UC_SHMEM, 64 * MIB, D_PAGEOUT);
}

static int race_fork(void)
{
	return race(UC_ANON, 64 * MIB, D_FORK);
}

static int race_collapse(void)
{
	return race(UC_THP, 64 * MIB, D_COLLAPSE);
}

static int race_reregister(void)
{
	return race(UC_ANON, 16 * MIB, D_REREG);
}

static int race_dontneed_hugetlb(void)
{
	long restore;
	int rc = huge_reserve(16, &restore);

	if (rc)
		return rc;
	rc = race(UC_HUGETLB, 32 * MIB, D_DONTNEED_HUGE);
	huge_restore(restore);
	return rc;
}

/* --- writes from elsewhere through the VMM's page tables: seen ------------------------------- */

/* Exactly `pages` read written after the writes. */
static int written_exactly(struct adv *a, const uint64_t *pages, size_t n)
{
	CHECK(!read_all(a));
	for (size_t i = 0; i < n; i++)
		CHECKF(has(a->bits, pages[i]), "page %lu written, not seen",
		       (unsigned long)pages[i]);
	CHECKF(count(a->bits, a->words) == n, "%lu pages read written, %zu were",
	       (unsigned long)count(a->bits, a->words), n);
	return 0;
}

/* A debugger-like process writes the VMM's memory: /proc/PID/mem (FOLL_FORCE) and
 * process_vm_writev(). Both fault through the VMM's page tables. */
static int remote_body(struct adv *a)
{
	uint64_t pages[2] = { 100, 2000 }, v = 42;
	struct iovec local = { &v, sizeof(v) },
		     remote = { (void *)(a->c.hva + 2000 * UC_PAGE), sizeof(v) };
	char path[64];
	int fd;

	CHECK(!arm(a));
	snprintf(path, sizeof(path), "/proc/%d/mem", a->c.pid);
	fd = open(path, O_RDWR | O_CLOEXEC);
	CHECK(fd >= 0);
	CHECK(pwrite(fd, &v, sizeof(v), (off_t)(a->c.hva + 100 * UC_PAGE)) == sizeof(v));
	close(fd);
	CHECK(process_vm_writev(a->c.pid, &local, 1, &remote, 1, 0) == sizeof(v));
	return written_exactly(a, pages, 2);
}

static int run(struct uc_opts o, int (*body)(struct adv *a))
{
	struct adv a;
	int rc = adv_start(&a, &o) ? -1 : body(&a);

	adv_end(&a);
	return rc;
}

#define SMALL(k) ((struct uc_opts){ .kind = (k), .size = 16 * MIB, .populate = true })

static int remote_writes(void)
{
	return run(SMALL(UC_ANON), remote_body);
}

/* The VMM fills guest memory from a file: read(2), O_DIRECT (the page is pinned for the DMA,
 * which faults it writable first) and io_uring with a plain buffer. */
static int file_reads_body(struct adv *a)
{
	uint64_t pages[3] = { 10, 20, 30 };

	int64_t direct;

	CHECK(!arm(a));
	CHECK(!uc_cmd(&a->c, OP_READ_FILE, pages[0], 0));
	CHECK(!uc_cmd(&a->c, OP_URING_READ, pages[2], 0));
	direct = uc_cmd(&a->c, OP_ODIRECT, pages[1], 0);
	if (direct == -EINVAL) { /* a filesystem without O_DIRECT: check the others */
		fprintf(stderr, "  %s: no O_DIRECT\n", scratch_path);
		pages[1] = pages[2];
		return written_exactly(a, pages, 2);
	}
	CHECK(!direct);
	return written_exactly(a, pages, 3);
}

static char scratch[64];

/* A 4 KiB file on a filesystem with O_DIRECT. */
static int scratch_make(void)
{
	char buf[4096];
	int fd;

	snprintf(scratch, sizeof(scratch), "/var/tmp/pt_uffd_adv.XXXXXX");
	fd = mkstemp(scratch);

	if (fd < 0)
		return -1;
	memset(buf, 0x5a, sizeof(buf));
	if (write(fd, buf, sizeof(buf)) != sizeof(buf) || fsync(fd)) {
		close(fd);
		return -1;
	}
	close(fd);
	scratch_path = scratch;
	return 0;
}

static int file_reads(void)
{
	int rc;

	CHECK(!scratch_make());
	rc = run(SMALL(UC_ANON), file_reads_body);
	unlink(scratch);
	return rc;
}

/* --- page migration (compaction) and swap ----------------------------------------------------- */

#define PFN_MASK ((1ull << 55) - 1)
#define COMPACT	 "/sys/devices/system/node/node0/compact"

/* The child's PFNs (root sees them) of all its guest pages into pfn. */
static int read_pfns(struct adv *a, uint64_t *pfn)
{
	char path[64];
	ssize_t len = (ssize_t)(a->npages * 8);
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", a->c.pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	len = pread(fd, pfn, len, (off_t)(a->c.hva / UC_PAGE * 8)) == len ? 0 : -1;
	close(fd);
	for (uint64_t p = 0; !len && p < a->npages; p++)
		pfn[p] &= PFN_MASK;
	return (int)len;
}

/*
 * Compaction migrates pages under the log: a migration entry carries the write-protect bit
 * and gives it back to the new page. The written set must stay exact across it (moved written
 * pages written, moved clean pages clean), and a write to a moved page must be seen.
 */
static int migrate_body(struct adv *a)
{
	uint64_t *pfn0 = calloc(a->npages, 8), *pfn = calloc(a->npages, 8), *w, nw = 0;
	uint64_t moved_w = 0, moved_c = 0, t_end = uc_now() + t_time_scale() * 5000000000ull;
	uint64_t clean[16], nclean = 0;
	int rc = -1;

	w = calloc(a->npages, 8);
	if (!pfn0 || !pfn || !w || arm(a))
		goto out;
	for (uint64_t p = 0; p < a->npages; p += 4)
		w[nw++] = p;
	if (uc_write(&a->c, w, (uint32_t)nw) || read_pfns(a, pfn0))
		goto out;
	while ((moved_w < 8 || moved_c < 8) && uc_now() < t_end) {
		if (write_long(COMPACT, 1) || read_pfns(a, pfn))
			break;
		moved_w = moved_c = nclean = 0;
		for (uint64_t p = 0; p < a->npages; p++) {
			if (pfn[p] == pfn0[p] || !pfn[p])
				continue;
			if (p % 4 == 0) {
				moved_w++;
			} else {
				moved_c++;
				if (nclean < 16)
					clean[nclean++] = p;
			}
		}
		usleep(100000);
	}
	fprintf(stderr, "  compaction moved %lu written and %lu clean pages of %lu\n",
		(unsigned long)moved_w, (unsigned long)moved_c, (unsigned long)a->npages);
	if (moved_w < 8 || moved_c < 8) {
		rc = t_skip("compaction moved too few of the VMM's pages");
		goto out;
	}
	if (written_exactly(a, w, nw))
		goto out;
	if (uc_write(&a->c, clean, (uint32_t)nclean))
		goto out;
	memcpy(w + nw, clean, nclean * 8);
	rc = written_exactly(a, w, nw + nclean);
out:
	free(pfn0);
	free(pfn);
	free(w);
	return rc;
}

static int migrate_compaction(void)
{
	if (geteuid() || access(COMPACT, W_OK))
		return t_skip("needs root and %s", COMPACT);
	return run((struct uc_opts){ .kind = UC_ANON, .size = 256 * MIB, .populate = true },
		   migrate_body);
}

static bool have_swap(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[128];
	long kb = 0;

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "SwapFree: %ld kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb > 64 * 1024;
}

/* Anonymous pages swapped out and in (MADV_PAGEOUT) while written: the swap entry keeps the
 * write-protect bit. Skips without swap. */
static int race_pageout_anon(void)
{
	if (!have_swap())
		return t_skip("no swap: anonymous pages cannot be paged out");
	return race(UC_ANON, 64 * MIB, D_PAGEOUT);
}

/* --- the VMM re-registers ------------------------------------------------------------------ */

/*
 * UFFDIO_UNREGISTER clears the write protection of the range: all of it then reads written,
 * whether it was or not, and a page written before stays written. No doubt is needed.
 */
static int reregister_body(struct adv *a)
{
	uint64_t p = 1000;

	CHECK(!arm(a));
	CHECK(!uc_write(&a->c, &p, 1));
	CHECK(!uc_cmd(&a->c, OP_REREGISTER, 512, 1024));
	CHECK(!read_all(a));
	CHECK(has(a->bits, p));
	CHECKF(count(a->bits, a->words) == 1024, "%lu pages read written after re-registering 1024",
	       (unsigned long)count(a->bits, a->words));
	/* The next arm takes all of them back. */
	CHECK(!arm(a));
	CHECK(has(a->prev, p) && count(a->prev, a->words) == 1024);
	CHECK(!read_all(a) && !count(a->bits, a->words));
	return 0;
}

static int reregister(void)
{
	return run(SMALL(UC_ANON), reregister_body);
}

/* New memory mapped over part of a slot and registered again (a VMM replacing memory): it
 * reads written (nothing there is protected) until the next arm. */
static int remap_body(struct adv *a)
{
	uint64_t p = 3000;

	CHECK(!arm(a));
	CHECK(!uc_cmd(&a->c, UC_REMAP, 2048, 2048));
	CHECK(!uc_cmd(&a->c, OP_REREGISTER, 2048, 2048));
	CHECK(!uc_write(&a->c, &p, 1));
	CHECK(!read_all(a));
	CHECK(has(a->bits, p) && count(a->bits, a->words) == 2048);
	CHECK(!arm(a) && has(a->prev, p));
	CHECK(!read_all(a) && !count(a->bits, a->words));
	CHECK(!uc_write(&a->c, &p, 1));
	CHECK(!read_all(a) && has(a->bits, p) && count(a->bits, a->words) == 1);
	return 0;
}

static int remap_reregistered(void)
{
	return run(SMALL(UC_ANON), remap_body);
}

/*
 * mremap away and back: without UFFD_FEATURE_EVENT_REMAP the moved memory leaves the
 * registration and its write protection, with its data. The log is in doubt until the VMM
 * registers again; then every moved page reads written.
 */
static int mremap_body(struct adv *a)
{
	uint64_t p = 1500;
	uint32_t d = 0;

	CHECK(!arm(a));
	CHECK(!uc_write(&a->c, &p, 1));
	CHECK(!uc_cmd(&a->c, OP_MREMAP_BACK, 1024, 1024));
	memset(a->bits, 0, a->words * 8);
	CHECK(pt_uffd_read(a->u, &a->all, 1, a->bits) != 0);
	CHECK(pt_uffd_doubt(a->u, &d) & PT_WHY_UFFD_LOST && d & PT_UFFD_LOST);
	CHECK(uc_cmd(&a->c, OP_PEEK, p, 0) == (int64_t)p + 1); /* the data moved with it */
	CHECK(!uc_cmd(&a->c, OP_REREGISTER, 1024, 1024));
	CHECK(!arm(a) && has(a->prev, p)); /* after a failure: every page */
	CHECK(!read_all(a) && !count(a->bits, a->words));
	CHECK(!uc_write(&a->c, &p, 1));
	CHECK(!read_all(a) && has(a->bits, p));
	return 0;
}

static int mremap_away_and_back(void)
{
	return run(SMALL(UC_ANON), mremap_body);
}

/* --- slots that alias the same memory ------------------------------------------------------- */

/*
 * Two slots at different guest-physical addresses over the same host memory (KVM allows
 * memslots with overlapping userspace addresses). A write through one alias is one written
 * pte; an arm re-protects it while folding the first slot and finds nothing left to report for
 * the second, so a reported or inflated page of the second alias would stay free with live
 * data. (And discarding one alias discards the other.) The log refuses such slots.
 */
static int alias_slots_refused(void)
{
	struct uc_opts o = SMALL(UC_ANON);
	struct uc c = UC_NONE;
	struct pt_uffd *u = NULL;
	struct pt_uffd_slot s[2];
	uint64_t half, p = 100, prev[64] = { 0 };
	char err[256] = "";
	int rc = -1, r;

	uc_extra = adv_do;
	if (uc_start(&c, &o))
		goto out;
	half = c.size / 2;
	s[0] = (struct pt_uffd_slot){ .gpa = 0, .size = half, .hva = c.hva };
	s[1] = (struct pt_uffd_slot){ .gpa = 1ull << 40, .size = half, .hva = c.hva + UC_PAGE };
	r = pt_uffd_open(&u, c.uffd, c.pm, c.pid, s, 2, err, sizeof(err));
	if (r == -EINVAL) {
		fprintf(stderr, "  refused: %s\n", err);
		rc = 0;
		goto out;
	}
	c.uffd = c.pm = -1;
	/* Opened: show what it costs. Page p of slot 0 is page p - 1 of slot 1. */
	if (r || pt_uffd_arm(u) || uc_write(&c, &p, 1) || pt_uffd_arm_fold(u, prev))
		goto out;
	fprintf(stderr,
		"  opened; after a write through the alias, the arm's fold has slot 0 "
		"page %d, slot 1 page %d\n",
		has(prev, p), has(prev, half / UC_PAGE + p - 1));
	CHECKF(has(prev, p) && has(prev, half / UC_PAGE + p - 1),
	       "aliased slots: a written page reached one alias only");
	rc = 0;
out:
	pt_uffd_close(u);
	uc_stop(&c, false);
	return rc;
}

/* --- writes that bypass the VMM's page tables: not seen (PROTOCOL.md 5a rule 3) --------------- */

static int unseen(struct adv *a, uint32_t op, uint64_t p)
{
	CHECK(!arm(a));
	CHECK(!uc_cmd(&a->c, op, p, 0));
	CHECK(!read_all(a));
	CHECKF(!has(a->bits, p), "the log now sees this write: update PROTOCOL.md 5a rule 3");
	fprintf(stderr, "  page %lu written, the log reads it unwritten: as documented\n",
		(unsigned long)p);
	return 0;
}

/* A second mapping of the guest memfd in the VMM itself (not registered). */
static int alias_body(struct adv *a)
{
	CHECK(!unseen(a, OP_WRITE_ALIAS, 123));
	CHECK(uc_cmd(&a->c, OP_PEEK, 123, 0) == 124); /* the guest sees the data */
	return 0;
}

static int unseen_alias_mapping(void)
{
	return run(SMALL(UC_SHMEM), alias_body);
}

static int pwrite_body(struct adv *a)
{
	CHECK(!unseen(a, OP_PWRITE, 77));
	CHECK(uc_cmd(&a->c, OP_PEEK, 77, 0) == 78);
	return 0;
}

static int unseen_file_write(void)
{
	return run(SMALL(UC_SHMEM), pwrite_body);
}

/* io_uring registered buffers are pinned once; later READ_FIXED lands without a fault. */
static int uring_fixed_body(struct adv *a)
{
	int64_t rc = uc_cmd(&a->c, OP_URING_REGISTER, 0, 0);

	if (rc)
		return t_skip("io_uring_register_buffers: %s", strerror((int)-rc));
	return unseen(a, OP_URING_FIXED, 55);
}

static int unseen_uring_fixed(void)
{
	int rc;

	CHECK(!scratch_make());
	rc = run(SMALL(UC_ANON), uring_fixed_body);
	unlink(scratch);
	return rc;
}

T_MAIN(T_CASE(hugetlb_dropped_written), T_CASE(hugetlb_dropped_partial_read), T_CASE(race_mprotect),
       T_CASE(race_dontneed), T_CASE(race_dontneed_shmem), T_CASE(race_dontneed_thp),
       T_CASE(race_split_thp), T_CASE(race_free), T_CASE(race_pageout_shmem), T_CASE(race_fork),
       T_CASE(race_collapse), T_CASE(race_reregister), T_CASE(race_dontneed_hugetlb),
       T_CASE(race_pageout_anon), T_CASE(migrate_compaction), T_CASE(remote_writes),
       T_CASE(file_reads), T_CASE(reregister), T_CASE(remap_reregistered),
       T_CASE(mremap_away_and_back), T_CASE(alias_slots_refused), T_CASE(unseen_alias_mapping),
       T_CASE(unseen_file_write), T_CASE(unseen_uring_fixed))
