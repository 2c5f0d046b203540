// SPDX-License-Identifier: GPL-2.0
/*
 * Hostile peers against the real service's resources (issue 11, breaks 3 to 5): a 24-byte
 * QUERY that would list millions of ranges to a peer that never reads; a burst of HINT frames
 * each covering 2^28 pages while another client pings and the tick must keep writing
 * status.json; slowloris and idle connections; running out of descriptors; and 1,100 idle
 * connections while a registered device and a new device are served. Each case starts its own
 * private service with the limits it needs (a configuration file passed with -c).
 *
 * The peers register their own pid with explicit memslots, which needs no /dev/kvm: without a
 * KVM guest every verdict is "keep" (untracked mode), which is all these cases need.
 */
#include <dirent.h>
#include <poll.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "t.h"
#include "svc.h"

#define GIB (1ull << 30)

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Stops this binary's service and starts one with @conf as its configuration file and at
 * most @nofile descriptors (0: as this process). */
static int restart_service_limited(const char *conf, unsigned nofile)
{
	static char wrapper[] = "/tmp/pagetrack-hostile-sh-XXXXXX";
	const char *run = NULL;
	char bin[256];
	FILE *f;
	int fd, err;

	if (nofile) {
		/* The limit is set in the service's own process, hard and soft, before it starts.
		 */
		strcpy(wrapper, "/tmp/pagetrack-hostile-sh-XXXXXX");
		fd = mkstemp(wrapper);
		if (fd < 0)
			return -1;
		f = fdopen(fd, "w");
		fprintf(f, "#!/bin/sh\nulimit -S -n %u && ulimit -H -n %u && exec %s \"$@\"\n",
			nofile, nofile, pt_spawn_default_bin(bin, sizeof(bin)));
		fclose(f);
		chmod(wrapper, 0700);
		run = wrapper;
	}
	err = svc_restart("hostile", run, conf);
	if (run)
		unlink(wrapper);
	return err;
}

static int restart_service(const char *conf)
{
	return restart_service_limited(conf, 0);
}

static long long vm_rss_kb(pid_t pid)
{
	char path[64], line[256];
	long long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %lld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

/* Lines of the service's log that hold @what. */
static int log_lines(const char *what)
{
	return svc_log_count(what);
}

/* A new connection, registered as this process's VMM with one slot: its fd, or -1. */
static int registered_conn(uint64_t gpa, uint64_t size)
{
	int fd = raw_connect();

	if (fd >= 0 && register_self(fd, 1, gpa, size)) {
		close(fd);
		fd = -1;
	}
	return fd;
}

/* --- break 3: one request, millions of ranges --------------------------------------------- */

#define AMP_PEERS 4
#define AMP_SLOT  (32 * GIB)
#define AMP_GPA	  (4 * GIB)

/*
 * A child (its own VMM pid, so its own VM): INFLATE 32 GiB, WRITTEN every other page (4 Mi
 * ranges), then QUERY(RECLAIMED) twenty times, never reading the replies. Reports on @out.
 */
static int amp_child(int out)
{
	const uint32_t per = PT_MAX_HINTS;
	const uint64_t pages = AMP_SLOT >> 12;
	struct pt_range *r = malloc(per * sizeof(*r));
	struct pt_range all = { AMP_GPA, AMP_SLOT };
	uint32_t seq = 1;
	size_t n;
	int fd = raw_connect();

	CHECK(fd >= 0 && r);
	CHECK(register_self(fd, seq++, AMP_GPA, AMP_SLOT) == 0);
	SEND_EXPECT_ACK(fd, pt_build_report(tx, sizeof(tx), PT_MSG_INFLATE, seq, &all, 1), seq,
			NULL);
	seq++;
	for (uint64_t p = 0; p < pages; p += 2ull * per) {
		uint32_t k = 0;

		for (; k < per && p + 2ull * k < pages; k++)
			r[k] = (struct pt_range){ AMP_GPA + ((p + 2ull * k) << 12), 4096 };
		SEND_EXPECT_ACK(fd, pt_build_report(tx, sizeof(tx), PT_MSG_WRITTEN, seq, r, k), seq,
				NULL);
		seq++;
	}
	for (int i = 0; i < 20; i++) {
		n = pt_build_query(tx, sizeof(tx), seq++, 0, PT_Q_RECLAIMED);
		CHECK(n && !raw_send(fd, tx, n));
	}
	CHECK(write(out, "q", 1) == 1);
	pause(); /* never reads; killed by the parent */
	return 0;
}

static int query_amplification_rss(void)
{
	pid_t kids[AMP_PEERS];
	int p[2];
	long long rss0, rss = 0, peak = 0;
	char c;

	/* A sanitizer build keeps freed memory in quarantine (256 MiB): RSS would measure that. */
	{
		const char *old = getenv("ASAN_OPTIONS");
		char opts[512];

		snprintf(opts, sizeof(opts), "%s%squarantine_size_mb=4", old ? old : "",
			 old && *old ? ":" : "");
		setenv("ASAN_OPTIONS", opts, 1);
		T_REQUIRE(restart_service("reply-timeout = 600\n"));
		if (old)
			setenv("ASAN_OPTIONS", old, 1);
		else
			unsetenv("ASAN_OPTIONS");
	}
	CHECK(pipe(p) == 0);
	rss0 = vm_rss_kb(svc.pid);
	for (int i = 0; i < AMP_PEERS; i++) {
		kids[i] = fork();
		CHECK(kids[i] >= 0);
		if (!kids[i]) {
			close(p[0]);
			_exit(amp_child(p[1]) ? 1 : 0);
		}
	}
	close(p[1]);
	for (int i = 0; i < AMP_PEERS; i++)
		CHECK(read(p[0], &c, 1) == 1);
	/* The queries are handled (or stuck) within a few seconds: watch the RSS meanwhile. */
	for (int i = 0; i < 30; i++) {
		usleep(100 * 1000);
		rss = vm_rss_kb(svc.pid);
		if (rss > peak)
			peak = rss;
	}
	for (int i = 0; i < AMP_PEERS; i++) {
		kill(kids[i], SIGKILL);
		waitpid(kids[i], NULL, 0);
	}
	close(p[0]);
	fprintf(stderr,
		"  service RSS %lld kB before, peak %lld kB with %d peers x 20 queries "
		"of 4 Mi reclaimed ranges unread\n",
		rss0, peak, AMP_PEERS);
	/* Before the fix every query queued 67 MB (over 1 GB here). What may grow: the receive
	 * buffers (16 MiB), four VMs' balloon bitmaps (8 MiB), a frozen bitmap being sent. */
	CHECKF(peak - rss0 < 48 * 1024, "RSS grew by %lld kB", peak - rss0);
	CHECK(kill(svc.pid, 0) == 0);
	{
		int fd = raw_connect();

		CHECK(fd >= 0 && raw_ping(fd, 1) == 0);
		close(fd);
	}
	return 0;
}

/*
 * Without a KVM guest the log is in doubt (untracked mode): RECLAIMED must then list nothing
 * and count every inflated page unsure, not list the reclaims it happens to know of.
 */
static int reclaimed_in_doubt_lists_nothing(void)
{
	struct pt_range in = { AMP_GPA, 64 * 4096 }, wr = { AMP_GPA + 8 * 4096, 10 * 4096 };
	struct pt_hdr h;
	struct pt_msg m;
	size_t n;
	int fd;

	T_REQUIRE(restart_service(""));
	fd = registered_conn(AMP_GPA, 64 << 20);
	CHECK(fd >= 0);
	SEND_EXPECT_ACK(fd, pt_build_report(tx, sizeof(tx), PT_MSG_INFLATE, 2, &in, 1), 2, NULL);
	SEND_EXPECT_ACK(fd, pt_build_report(tx, sizeof(tx), PT_MSG_WRITTEN, 3, &wr, 1), 3, NULL);
	n = pt_build_query(tx, sizeof(tx), 4, 0, PT_Q_RECLAIMED);
	CHECK(n && !raw_send(fd, tx, n));
	CHECK(raw_recv(fd, &h, &m) == 1 && m.type == PT_MSG_VERDICT && h.seq == 4);
	fprintf(stderr,
		"  RECLAIMED in doubt (%#x): hinted %llu free %llu kept_unsure %llu, %u ranges\n",
		m.verdict->unsure_reason, (unsigned long long)m.verdict->hinted,
		(unsigned long long)m.verdict->free, (unsigned long long)m.verdict->kept_unsure,
		m.count);
	CHECK(m.verdict->unsure_reason != 0 && !(h.flags & PT_F_MORE));
	CHECK(m.count == 0 && m.verdict->free == 0);
	CHECK(m.verdict->hinted == 64 && m.verdict->kept_unsure == 64);
	close(fd);
	return 0;
}

/* --- one large batch, applied in parts --------------------------------------------------- */

#define BIG_GPA	  (4 * GIB)
#define BIG_SLOT  (64 * GIB) /* 2^24 pages: four parts of 2^22 */
#define BIG_PAGES (BIG_SLOT >> 12)

/*
 * A HINT of 2^24 pages is applied a part per turn, but answered as one batch: its ACK counts
 * every page, comes before the answer to the PING sent right behind it, and a batch with one
 * bad range (past the memslot) applies nothing at all, however large.
 */
static int big_batch_applied_whole(void)
{
	struct pt_range whole = { BIG_GPA, BIG_SLOT },
			bad[2] = { { BIG_GPA, BIG_SLOT / 2 },
				   { BIG_GPA + BIG_SLOT - 4096, 2 * 4096 } };
	struct pt_ack ack;
	struct pt_hdr h;
	struct pt_msg m;
	size_t n;
	int fd;

	T_REQUIRE(restart_service(""));
	fd = registered_conn(BIG_GPA, BIG_SLOT);
	CHECK(fd >= 0);
	n = pt_build_cmd(tx, sizeof(tx), PT_MSG_ARM, 2, 2);
	CHECK(n && !raw_send(fd, tx, n));
	EXPECT_ACK(fd, 2, NULL);
	/* The bad batch first: refused whole, nothing of its first 2^23 pages recorded. */
	n = pt_build_hint(tx, sizeof(tx), 3, 2, bad, 2);
	CHECK(n && !raw_send(fd, tx, n));
	EXPECT_ERROR(fd, 3, PT_E_BAD_RANGE);
	n = pt_build_query(tx, sizeof(tx), 7, 2, PT_Q_HINTS);
	CHECK(n && !raw_send(fd, tx, n));
	CHECK(raw_recv(fd, &h, &m) == 1 && m.type == PT_MSG_VERDICT && h.seq == 7);
	CHECKF(m.verdict->hinted == 0, "a refused batch left %llu pages hinted",
	       (unsigned long long)m.verdict->hinted);
	/* Then the good one and a PING in one write: ACK (all pages), then the PING's ACK. */
	n = pt_build_hint(tx, sizeof(tx), 4, 2, &whole, 1);
	n += pt_build_empty(tx + n, sizeof(tx) - n, PT_MSG_PING, 5);
	CHECK(!raw_send(fd, tx, n));
	EXPECT_ACK(fd, 4, &ack);
	CHECKF(ack.pages == BIG_PAGES, "HINT ACK: %llu pages of %llu",
	       (unsigned long long)ack.pages, (unsigned long long)BIG_PAGES);
	EXPECT_ACK(fd, 5, NULL);
	n = pt_build_query(tx, sizeof(tx), 6, 2, PT_Q_HINTS);
	CHECK(n && !raw_send(fd, tx, n));
	CHECK(raw_recv(fd, &h, &m) == 1 && m.type == PT_MSG_VERDICT && h.seq == 6);
	CHECKF(m.verdict->hinted == BIG_PAGES, "QUERY: %llu pages hinted, wanted %llu",
	       (unsigned long long)m.verdict->hinted, (unsigned long long)BIG_PAGES);
	/* The parts took CPU: the next status.json (every second) says how much at most. */
	for (int i = 0; i < 60 && status_num("max_turn_cpu_us") <= 0; i++)
		usleep(50 * 1000);
	CHECKF(status_num("max_turn_cpu_us") > 0, "status.json: max_turn_cpu_us %lld",
	       status_num("max_turn_cpu_us"));
	/* One frame is one batch in the VM's counters, however many parts it was applied in. */
	for (int i = 0; i < 60 && status_num("hinted_pages") != (long long)BIG_PAGES; i++)
		usleep(50 * 1000);
	CHECKF(status_num("hinted_pages") == (long long)BIG_PAGES &&
		       status_num("hint_batches") == 1,
	       "status.json: %lld hint batches, %lld pages", status_num("hint_batches"),
	       status_num("hinted_pages"));
	close(fd);
	return 0;
}

/* --- break 4: a HINT burst, a concurrent PING, the tick ------------------------------------ */

#define BURST_FRAMES 3000
#define BURST_SLOT   (256 * GIB)
#define BURST_GPA    (4 * GIB)

struct burst {
	int fd;
	volatile int done;
	int err;
	int acks; /* answered in order */
};

/* Each frame: 4 ranges of the whole 256 GiB slot (2^26 pages each, 2^28 per frame). */
static void *burst_thread(void *arg)
{
	struct burst *b = arg;
	struct pt_range r[4];
	static uint8_t buf[BURST_FRAMES * 128];
	size_t off = 0;

	for (int i = 0; i < 4; i++)
		r[i] = (struct pt_range){ BURST_GPA, BURST_SLOT };
	for (uint32_t i = 0; i < BURST_FRAMES; i++)
		off += pt_build_hint(buf + off, sizeof(buf) - off, 100 + i, 2, r, 4);
	b->err = raw_send(b->fd, buf, off);
	for (uint32_t i = 0; !b->err && i < BURST_FRAMES; i++) {
		struct pt_hdr h;
		struct pt_msg m;

		if (raw_recv(b->fd, &h, &m) != 1 || h.seq != 100 + i || m.type != PT_MSG_ACK)
			break;
		b->acks++;
	}
	b->done = 1;
	return NULL;
}

/* The "time" field of status.json (seconds), or -1. */
static long long status_time(void)
{
	return status_num("time");
}

/* Registers on @fd (as this process's VMM) and arms command ID 2. */
static int burst_setup(int fd)
{
	CHECK(register_self(fd, 1, BURST_GPA, BURST_SLOT) == 0);
	SEND_EXPECT_ACK(fd, pt_build_cmd(tx, sizeof(tx), PT_MSG_ARM, 2, 2), 2, NULL);
	return 0;
}

/* A second flooder, its own VMM: starts when @go is readable, exits 0 if all was answered. */
static pid_t burst_child(int go)
{
	pid_t pid = fork();

	if (pid)
		return pid;
	{
		struct burst b = { .fd = raw_connect() };
		char c;

		if (b.fd < 0 || burst_setup(b.fd) || read(go, &c, 1) != 1)
			_exit(2);
		burst_thread(&b);
		_exit(b.err || b.acks != BURST_FRAMES ? 1 : 0);
	}
}

/*
 * 64 ARMs of a 512 GiB VM in one write (each clears its 16 MiB of bitmap, milliseconds): one
 * per turn, not a frame budget's worth in one turn (that held the loop for 64 clears). The
 * first ARM, which touches the bitmap's pages for the first time (slow on this project's PVM
 * machines), goes before, in a tick window of its own.
 */
#define ARM_SLOT (512 * GIB)
#define ARMS	 64

static int arm_flood_one_per_turn(void)
{
	static uint8_t buf[ARMS * 64];
	size_t off = 0;
	long long cpu = 0, t;
	int fd, pfd;

	T_REQUIRE(restart_service(""));
	fd = registered_conn(BIG_GPA, ARM_SLOT);
	pfd = raw_connect();
	CHECK(fd >= 0 && pfd >= 0);
	off = pt_build_cmd(buf, sizeof(buf), PT_MSG_ARM, 2, 2);
	CHECK(!raw_send(fd, buf, off));
	EXPECT_ACK(fd, 2, NULL);
	off = 0;
	for (t = status_time(); status_time() == t;)
		usleep(50 * 1000);
	t = status_time();
	for (uint32_t i = 0; i < ARMS; i++)
		off += pt_build_cmd(buf + off, sizeof(buf) - off, PT_MSG_ARM, 10 + i, 3 + i);
	CHECK(!raw_send(fd, buf, off));
	CHECK(raw_ping(pfd, 7) == 0);
	/* Every tick window the flood spans, up to the one after its last ACK. */
	for (uint32_t i = 0; i <= ARMS;) {
		if (i < ARMS)
			EXPECT_ACK(fd, 10 + i, NULL);
		else
			usleep(50 * 1000);
		if (status_time() != t) {
			t = status_time();
			if (status_num("tick_max_turn_cpu_us") > cpu)
				cpu = status_num("tick_max_turn_cpu_us");
			i += i == ARMS;
		}
		i += i < ARMS;
	}
	fprintf(stderr, "  %d ARMs of a 512 GiB VM: at most %lld us of CPU in one turn\n", ARMS,
		cpu);
	CHECKF(cpu < 50000, "one turn took %lld us of CPU", cpu);
	close(fd);
	close(pfd);
	return 0;
}

/*
 * A takeover while a large HINT is being applied part by part: the parts still to come must
 * not land in the new registration's state, whatever it arms at once (a leftover part there
 * would be a hint the new device never sent). The same command ID is refused: it stays blocked
 * across the takeover (PROTOCOL.md 4.2). Rounds are repeated until the takeover fell inside a
 * batch a few times, within a time bound.
 */
#define TAKE_SLOT (256 * GIB) /* 2^26 pages: 16 parts */

static int takeover_mid_batch_leaks_nothing(void)
{
	struct pt_range whole = { BIG_GPA, TAKE_SLOT };
	struct pt_reg_slot slot = {
		.gpa = BIG_GPA, .size = TAKE_SLOT, .id = 1, .flags = PT_REG_SLOT_LOGGED
	};
	int rounds = 0, inside = 0;
	double t0 = now_ms();

	T_REQUIRE(restart_service(""));
	while ((inside < 3 || rounds < 5) && now_ms() - t0 < 60000) {
		int a = registered_conn(BIG_GPA, TAKE_SLOT), b = raw_connect();
		/* New IDs each round: an earlier round's closes may still be on their way. */
		uint32_t id = 2 + 2 * (uint32_t)rounds;
		struct pt_hdr h;
		struct pt_msg m;
		size_t n;

		CHECK(a >= 0 && b >= 0);
		SEND_EXPECT_ACK(a, pt_build_cmd(tx, sizeof(tx), PT_MSG_ARM, 2, id), 2, NULL);
		n = pt_build_hint(tx, sizeof(tx), 3, id, &whole, 1);
		CHECK(n && !raw_send(a, tx, n));
		/* The new registration and its ARMs, right behind the HINT: the same ID (blocked),
		 * the next one. */
		n = pt_build_register(tx, sizeof(tx), 1, getpid(), PT_DIRTY_RING, &slot, 1);
		n += pt_build_cmd(tx + n, sizeof(tx) - n, PT_MSG_ARM, 2, id);
		n += pt_build_cmd(tx + n, sizeof(tx) - n, PT_MSG_ARM, 5, id + 1);
		CHECK(!raw_send(b, tx, n));
		EXPECT_ACK(b, 1, NULL);
		EXPECT_ERROR(b, 2, PT_E_CMD_REUSE);
		EXPECT_ACK(b, 5, NULL);
		/* The old connection: its HINT was answered (done before) or refused (cut short).
		 */
		CHECK(raw_recv(a, &h, &m) == 1 && h.seq == 3);
		inside += m.type == PT_MSG_ERROR;
		n = pt_build_query(tx, sizeof(tx), 4, id + 1, PT_Q_HINTS);
		CHECK(n && !raw_send(b, tx, n));
		CHECK(raw_recv(b, &h, &m) == 1 && m.type == PT_MSG_VERDICT && h.seq == 4);
		CHECKF(m.verdict->hinted == 0,
		       "round %d: %llu pages of the old connection's HINT in the new state", rounds,
		       (unsigned long long)m.verdict->hinted);
		close(a);
		close(b);
		rounds++;
	}
	fprintf(stderr, "  %d rounds, the takeover cut a batch short in %d\n", rounds, inside);
	CHECKF(inside > 0, "no takeover fell inside a batch in %d rounds", rounds);
	return 0;
}

static int hint_burst_ping_and_tick(void)
{
	struct burst b = { .fd = -1 };
	int go[2], wst;
	pid_t kid;
	pthread_t th;
	double worst = 0, sum = 0, t0;
	long long last_time, gap_max = 0, turn_max = 0, cpu_max = 0;
	double last_change;
	int pings = 0, ping_fd;

	/* Two flooders (two VMs of 256 GiB: a larger log than the default 32 MiB). */
	T_REQUIRE(restart_service("turn-frames = 64\nlog-mb = 64\n"));
	CHECK(pipe(go) == 0);
	kid = burst_child(go[0]);
	CHECK(kid > 0);
	b.fd = raw_connect();
	ping_fd = raw_connect();
	CHECK(b.fd >= 0 && ping_fd >= 0);
	CHECK(burst_setup(b.fd) == 0);
	/* REGISTER and ARM of a 256 GiB VM are one step each (tens of ms): let the tick window
	 * that holds them pass, so that what is measured below is the burst. */
	last_time = status_time();
	while (status_time() == last_time)
		usleep(50 * 1000);
	last_time = status_time();
	last_change = now_ms();
	t0 = now_ms();
	CHECK(write(go[1], "g", 1) == 1);
	CHECK(pthread_create(&th, NULL, burst_thread, &b) == 0);
	/* Ping every 20 ms until the last HINT is answered; watch status.json's time advance. */
	while (!b.done || pings < 10) {
		double t = now_ms(), dt;
		long long st;

		CHECK(raw_ping(ping_fd, 1000 + pings) == 0);
		dt = now_ms() - t;
		sum += dt;
		if (dt > worst)
			worst = dt;
		pings++;
		/* The tick rewrites it every second: "time" changes every 1 to 2 s of wall time. */
		st = status_time();
		if (now_ms() - last_change > gap_max)
			gap_max = (long long)(now_ms() - last_change);
		if (st != last_time) {
			last_time = st;
			last_change = now_ms();
			if (status_num("tick_max_turn_us") > turn_max)
				turn_max = status_num("tick_max_turn_us");
			if (status_num("tick_max_turn_cpu_us") > cpu_max)
				cpu_max = status_num("tick_max_turn_cpu_us");
		}
		usleep(20 * 1000);
		CHECK(now_ms() - t0 < 120 * 1000);
	}
	pthread_join(th, NULL);
	CHECK(waitpid(kid, &wst, 0) == kid);
	CHECKF(WIFEXITED(wst) && WEXITSTATUS(wst) == 0, "the second flooder: status %#x", wst);
	CHECK(b.err == 0);
	fprintf(stderr,
		"  2 x %d HINT frames (2^28 pages each, two VMs) took %.0f ms; %d pings: worst "
		"%.1f ms, mean %.1f ms; status.json unchanged for %lld ms at most; longest loop "
		"turn during the burst %lld us, %lld us of CPU (since start: %lld us, %lld us of "
		"CPU)\n",
		BURST_FRAMES, now_ms() - t0, pings, worst, sum / pings, gap_max, turn_max, cpu_max,
		status_num("max_turn_us"), status_num("max_turn_cpu_us"));
	CHECKF(b.acks == BURST_FRAMES, "%d of %d HINTs answered in order", b.acks, BURST_FRAMES);
	/* What the service makes a PING wait is one turn's work: at most 50 ms of CPU (the
	 * issue's bound), however busy the machine. The wall-clock wait also holds whatever else
	 * the machine runs (up to 562 ms seen at a load average of 8), so its bound only catches
	 * a PING left behind the flood (10 s before the turn order was fixed). */
	CHECKF(cpu_max < 50000, "one turn of the loop took %lld us of CPU during the burst",
	       cpu_max);
	CHECKF(worst < 2000, "a PING waited %.1f ms behind the burst", worst);
	CHECKF(gap_max < 3000, "status.json was not rewritten for %lld ms", gap_max);
	close(b.fd);
	close(ping_fd);
	return 0;
}

/* --- timeouts --------------------------------------------------------------------------------- */

/* Waits up to @ms for the service to close @fd (reading and dropping whatever comes). */
static bool closed_within(int fd, int ms)
{
	double end = now_ms() + ms;
	uint8_t buf[4096];

	while (now_ms() < end) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t k;

		if (poll(&p, 1, 100) <= 0)
			continue;
		k = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR))
			return true;
	}
	return false;
}

static int slowloris_and_idle_timeout(void)
{
	static uint8_t pings[20000 * sizeof(struct pt_hdr)];
	struct pt_hdr h;
	int partial, idle, unread, good;
	size_t n;
	double t, t_idle;
	int sent = 0;

	T_REQUIRE(restart_service("frame-timeout = 2\nreply-timeout = 2\nidle-timeout = 8\n"));
	partial = raw_connect();
	idle = raw_connect();
	t_idle = now_ms();
	unread = raw_connect();
	good = raw_connect();
	CHECK(partial >= 0 && idle >= 0 && unread >= 0 && good >= 0);
	CHECK(register_self(good, 1, 4 * GIB, 64 << 20) == 0);
	/* Half a header, then nothing: slowloris. */
	n = pt_build_empty(&h, sizeof(h), PT_MSG_PING, 1);
	CHECK(n && !raw_send(partial, &h, n / 2));
	/* 20,000 pings never read: 960 KB of replies, more than the socket holds. Sent in one
	 * write: 20,000 writes on a loaded machine could outlast the reply timeout, and the
	 * service would rightly close the connection before the last one. */
	t = now_ms();
	for (n = 0; sent < 20000; sent++)
		n += pt_build_empty(pings + n, sizeof(pings) - n, PT_MSG_PING, (uint32_t)sent);
	CHECK(raw_send(unread, pings, n) == 0);
	CHECKF(closed_within(partial, 15000), "a partial frame was held for 15 s");
	fprintf(stderr, "  partial frame: closed after %.1f s (frame-timeout 2 s)\n",
		(now_ms() - t) / 1000);
	CHECKF(closed_within(unread, 15000), "a connection that never reads stayed open");
	fprintf(stderr, "  %d pings never read: closed after %.1f s (reply-timeout 2 s)\n", sent,
		(now_ms() - t) / 1000);
	CHECKF(closed_within(idle, 20000), "an idle connection stayed open");
	fprintf(stderr, "  idle, unregistered: closed after %.1f s (idle-timeout 8 s)\n",
		(now_ms() - t) / 1000);
	CHECKF(now_ms() - t_idle > 7000, "the idle connection was closed before its timeout");
	/* The registered connection idled as long and is still served. */
	CHECK(raw_ping(good, 2) == 0);
	CHECK(log_lines("a partial frame held for too long") == 1);
	CHECK(log_lines("replies not read for too long") == 1);
	CHECK(log_lines("idle without a registration for too long") == 1);
	close(partial);
	close(idle);
	close(unread);
	close(good);
	return 0;
}

/* --- limits ----------------------------------------------------------------------------------- */

/* The highest descriptor number @pid has open (a limit counts numbers, not descriptors). */
static int max_fd(pid_t pid)
{
	char path[64];
	struct dirent *e;
	int hi = -1;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/fd", pid);
	d = opendir(path);
	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.' && atoi(e->d_name) > hi)
			hi = atoi(e->d_name);
	closedir(d);
	return hi;
}

/* A PING on a fresh connection: 1 answered, 0 refused (closed or reset), -1 no answer. */
static int ping_outcome(int fd)
{
	struct timeval tv = { 2, 0 };
	struct pt_hdr h;
	struct pt_msg m;
	size_t n = pt_build_empty(tx, sizeof(tx), PT_MSG_PING, 7);
	int rc;

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (raw_send(fd, tx, n))
		return 0;
	rc = raw_recv(fd, &h, &m);
	if (rc == 1)
		return 1;
	return rc == 0 || errno == ECONNRESET || errno == EPIPE ? 0 : -1;
}

#define FD_EXTRA 400

static int fd_limit_refuses_at_once(void)
{
	struct rlimit low;
	static int fds[FD_EXTRA];
	int nfd = 0, refused = 0, hung = 0, answered = 0, lines0;
	double t;

	/* The service is started under the low limit (as under systemd's default 1,024 without
	 * LimitNOFILE): io_uring's accept reads the limit when it is armed, so lowering it on the
	 * running service would not be seen. */
	T_REQUIRE(restart_service(""));
	low.rlim_cur = (rlim_t)max_fd(svc.pid) + 48;
	T_REQUIRE(restart_service_limited("", (unsigned)low.rlim_cur));
	lines0 = log_lines("accept");
	t = now_ms();
	for (int i = 0; i < FD_EXTRA; i++) {
		int fd = raw_connect();
		int o;

		CHECK(fd >= 0);
		o = ping_outcome(fd);
		refused += o == 0;
		hung += o < 0;
		answered += o == 1;
		if (o == 1)
			fds[nfd++] = fd;
		else
			close(fd);
		if (hung || refused > 8)
			break;
	}
	fprintf(stderr,
		"  limit %llu fds: %d connections answered, %d refused at once, %d left hanging, "
		"in %.0f ms; %d accept log lines\n",
		(unsigned long long)low.rlim_cur, answered, refused, hung, now_ms() - t,
		log_lines("accept") - lines0);
	CHECKF(hung == 0, "%d connections hung instead of being refused", hung);
	CHECKF(refused > 0, "nothing was refused (the limit was not reached)");
	CHECKF(log_lines("accept") - lines0 <= 3, "%d log lines", log_lines("accept") - lines0);
	/* Room again: new connections are served. */
	while (nfd)
		close(fds[--nfd]);
	usleep(200 * 1000);
	{
		int fd = raw_connect();

		CHECK(fd >= 0 && ping_outcome(fd) == 1);
		close(fd);
	}
	return 0;
}

#define IDLE_CONNS 1100

/* A device registered before the flood, and one that connects after it, are both served. */
static int idle_flood_devices_served(void)
{
	static int fds[IDLE_CONNS];
	int dev, late, opened = 0, dropped = 0;
	struct rlimit rl;

	T_REQUIRE(restart_service("max-conns = 1024\n"));
	CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0);
	if (rl.rlim_cur < IDLE_CONNS + 64) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	dev = raw_connect();
	CHECK(dev >= 0);
	CHECK(register_self(dev, 1, 4 * GIB, 64 << 20) == 0);
	for (int i = 0; i < IDLE_CONNS; i++) {
		fds[i] = raw_connect();
		if (fds[i] < 0)
			break;
		opened++;
	}
	CHECKF(opened == IDLE_CONNS, "only %d connections", opened);
	/* Past the eviction grace period: the idle ones may make room for a device. */
	usleep(1500 * 1000);
	CHECK(raw_ping(dev, 2) == 0);
	late = raw_connect();
	CHECK(late >= 0);
	CHECKF(ping_outcome(late) == 1, "a new device was turned away: %s", strerror(errno));
	{
		/* It registers (it is another VMM: a child process), the first device goes on. */
		pid_t kid = fork();

		CHECK(kid >= 0);
		if (!kid) {
			int fd = raw_connect();

			_exit(fd >= 0 && register_self(fd, 1, 4 * GIB, 64 << 20) == 0 &&
					      raw_ping(fd, 2) == 0
				      ? 0
				      : 1);
		}
		int st;

		CHECK(waitpid(kid, &st, 0) == kid);
		CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the new device did not register");
	}
	CHECK(raw_ping(dev, 3) == 0);
	for (int i = 0; i < opened; i++) {
		struct pollfd p = { .fd = fds[i], .events = POLLIN };

		dropped += poll(&p, 1, 0) == 1;
		close(fds[i]);
	}
	fprintf(stderr, "  %d idle connections: %d of them closed to make room; devices served\n",
		opened, dropped);
	CHECK(dropped > 0);
	close(dev);
	close(late);
	return 0;
}

T_MAIN(T_CASE(query_amplification_rss), T_CASE(reclaimed_in_doubt_lists_nothing),
       T_CASE(big_batch_applied_whole), T_CASE(arm_flood_one_per_turn),
       T_CASE(takeover_mid_batch_leaks_nothing), T_CASE(hint_burst_ping_and_tick),
       T_CASE(slowloris_and_idle_timeout), T_CASE(fd_limit_refuses_at_once),
       T_CASE(idle_flood_devices_served))
