// SPDX-License-Identifier: LGPL-2.1 OR BSD-2-Clause
/*
 * ptballoon: an example balloon device speaking to pagetrackd through libpagetrack only.
 * A connection serves one VM, so one invocation runs a whole script of commands on one
 * connection: commands are separated by "," on the command line, or read one per line from
 * standard input when none is given.
 *
 *	ptballoon -s SOCK register PID [ring|bitmap] , arm 5 , hint 5 0x100000:0x400000 ,
 *		  stop 5 , query 5 , done 5
 *	ptballoon ping -n 10000
 *	ptballoon uffd-memory 64M , arm 2 , hint 2 0:0x100000 , write 0x3000:0x1000 , query 2
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <pagetrack/client.h>

#define MAX_ARGS 4096

static const char usage[] =
	"usage: ptballoon [-s SOCKET] [-t TIMEOUT_MS] [COMMAND [ARGS...] [, COMMAND ...]]\n"
	"       ptballoon -h|--help\n"
	"commands (without one, read one per line from stdin):\n"
	"  register PID [ring|bitmap] [GPA:SIZE:SLOT[:log]...]  register the VM of VMM PID\n"
	"      (:log: the memslot has KVM_MEM_LOG_DIRTY_PAGES; unlogged slots confirm nothing)\n"
	"  arm CMD | stop CMD | done CMD                    command ID life cycle\n"
	"  hint CMD GPA:LEN...                              free page hints under CMD\n"
	"  query CMD [hints|reported|reclaimed]             print the verdict\n"
	"  report|inflate|deflate GPA:LEN...                reporting and balloon pages\n"
	"  written GPA:LEN...                               pages the VMM wrote itself\n"
	"  wrcaps | wrread GPA:LEN...                       write records\n"
	"  ping [-n N]                                      round trips, prints p50/p99 RTT\n"
	"  uffd-memory SIZE[K|M|G]                          be the VMM: map SIZE of guest memory\n"
	"      at GPA 0 and register it in the userfaultfd mode (no KVM dirty logging needed)\n"
	"  write GPA:LEN...                                 write that guest memory "
	"(uffd-memory)\n";

static int parse_u64(const char *s, uint64_t *v)
{
	char *end;

	errno = 0;
	*v = strtoull(s, &end, 0);
	return errno || end == s || *end ? -EINVAL : 0;
}

static int parse_u32(const char *s, uint32_t *v)
{
	uint64_t x;

	if (parse_u64(s, &x) || x > UINT32_MAX)
		return -EINVAL;
	*v = x;
	return 0;
}

/* "GPA:LEN" (any base strtoull accepts). */
static int parse_range(const char *s, struct pt_range *r)
{
	char buf[64], *colon;

	if (strlen(s) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, s);
	colon = strchr(buf, ':');
	if (!colon)
		return -EINVAL;
	*colon = 0;
	return parse_u64(buf, &r->gpa) || parse_u64(colon + 1, &r->len) ? -EINVAL : 0;
}

static int parse_ranges(int argc, char **argv, struct pt_range **out)
{
	struct pt_range *r = calloc(argc ? argc : 1, sizeof(*r));

	if (!r)
		return -ENOMEM;
	for (int i = 0; i < argc; i++) {
		if (parse_range(argv[i], &r[i])) {
			fprintf(stderr, "ptballoon: bad range '%s' (want GPA:LEN)\n", argv[i]);
			free(r);
			return -EINVAL;
		}
	}
	*out = r;
	return argc;
}

static int report_err(struct pt_client *c, const char *what, int err)
{
	const struct pt_client_error *e = pt_client_last_error(c);

	if (e->reason[0])
		fprintf(stderr, "ptballoon: %s: %s (code %d: %s)\n", what, strerror(-err), e->code,
			e->reason);
	else
		fprintf(stderr, "ptballoon: %s: %s\n", what, strerror(-err));
	return err;
}

static int cmd_register(struct pt_client *c, int argc, char **argv)
{
	struct pt_reg_slot slots[PT_MAX_REG_SLOTS] = {};
	enum pt_dirty_mode mode = PT_DIRTY_RING;
	uint32_t pid, handle, n = 0;
	int i = 2, err;

	if (argc < 2 || parse_u32(argv[1], &pid))
		return -EINVAL;
	if (argc > 2 && !strcmp(argv[2], "bitmap"))
		mode = PT_DIRTY_BITMAP, i++;
	else if (argc > 2 && !strcmp(argv[2], "ring"))
		i++;
	for (; i < argc && n < PT_MAX_REG_SLOTS; i++, n++) {
		size_t len = strlen(argv[i]);
		struct pt_range r;
		char *last;

		/* A trailing ":log" declares KVM_MEM_LOG_DIRTY_PAGES on the slot. */
		if (len > 4 && !strcmp(argv[i] + len - 4, ":log")) {
			slots[n].flags = PT_REG_SLOT_LOGGED;
			argv[i][len - 4] = 0;
		}
		last = strrchr(argv[i], ':');

		if (!last || parse_u32(last + 1, &slots[n].id))
			return -EINVAL;
		*last = 0;
		if (parse_range(argv[i], &r))
			return -EINVAL;
		slots[n].gpa = r.gpa;
		slots[n].size = r.len;
	}
	err = pt_client_register(c, pid, mode, slots, n, &handle);
	if (err)
		return report_err(c, "register", err);
	printf("registered pid %u: handle %u coverage 0x%" PRIx64 "\n", pid, handle,
	       pt_client_coverage(c));
	return 0;
}

static int cmd_life(struct pt_client *c, int argc, char **argv)
{
	uint32_t id;
	int err;

	if (argc != 2 || parse_u32(argv[1], &id))
		return -EINVAL;
	if (!strcmp(argv[0], "arm"))
		err = pt_client_arm(c, id);
	else if (!strcmp(argv[0], "stop"))
		err = pt_client_stop(c, id);
	else
		err = pt_client_done(c, id);
	if (err)
		return report_err(c, argv[0], err);
	printf("%s %u: ok\n", argv[0], id);
	return 0;
}

static int cmd_hint(struct pt_client *c, int argc, char **argv)
{
	struct pt_client_stats before, after;
	struct pt_range *r;
	uint32_t id;
	int n, err;

	if (argc < 2 || parse_u32(argv[1], &id))
		return -EINVAL;
	n = parse_ranges(argc - 2, argv + 2, &r);
	if (n < 0)
		return n;
	pt_client_get_stats(c, &before);
	err = pt_client_hint(c, id, r, n);
	free(r);
	if (err)
		return report_err(c, "hint", err);
	pt_client_get_stats(c, &after);
	printf("hint %u: %" PRIu64 " pages recorded, %" PRIu64 " ignored\n", id,
	       after.pages_recorded - before.pages_recorded,
	       after.pages_ignored - before.pages_ignored);
	return 0;
}

static void print_result(const char *what, const struct pt_client_result *res)
{
	const struct pt_verdict *v = &res->v;

	printf("%s %u: hinted %" PRIu64 " free %" PRIu64 " kept_written %" PRIu64
	       " kept_unsure %" PRIu64 " unsure_reason 0x%x ranges %u\n",
	       what, v->cmd_id, v->hinted, v->free, v->kept_written, v->kept_unsure,
	       v->unsure_reason, v->nranges);
	for (uint32_t i = 0; i < v->nranges; i++)
		printf("  0x%" PRIx64 ":0x%" PRIx64 "\n", res->ranges[i].gpa, res->ranges[i].len);
}

static int cmd_query(struct pt_client *c, int argc, char **argv)
{
	static const char *const whats[] = { "hints", "reported", "reclaimed" };
	struct pt_client_result res;
	uint32_t id, what = PT_Q_HINTS;
	int err;

	if (argc < 2 || argc > 3 || parse_u32(argv[1], &id))
		return -EINVAL;
	if (argc == 3) {
		for (what = 0; what < 3 && strcmp(argv[2], whats[what]); what++)
			;
		if (what == 3)
			return -EINVAL;
	}
	err = pt_client_query(c, id, what, &res);
	if (err)
		return report_err(c, "query", err);
	print_result("verdict", &res);
	pt_client_result_free(&res);
	return 0;
}

static int cmd_pages(struct pt_client *c, int argc, char **argv)
{
	struct pt_client_result res;
	struct pt_range *r;
	uint64_t pages = 0;
	int n, err;

	n = parse_ranges(argc - 1, argv + 1, &r);
	if (n < 0)
		return n;
	if (!strcmp(argv[0], "report"))
		err = pt_client_report(c, r, n, &pages);
	else if (!strcmp(argv[0], "inflate"))
		err = pt_client_inflate(c, r, n, &pages);
	else if (!strcmp(argv[0], "deflate"))
		err = pt_client_deflate(c, r, n, &pages);
	else if (!strcmp(argv[0], "written"))
		err = pt_client_written(c, r, n, &pages);
	else
		err = pt_client_wr_read(c, r, n, &res);
	free(r);
	if (err)
		return report_err(c, argv[0], err);
	if (!strcmp(argv[0], "wrread")) {
		print_result("write records", &res);
		pt_client_result_free(&res);
	} else {
		printf("%s: %" PRIu64 " pages recorded\n", argv[0], pages);
	}
	return 0;
}

static int cmd_wrcaps(struct pt_client *c, int argc, char **argv)
{
	struct pt_wr_caps caps;
	int err = pt_client_wr_caps(c, &caps);

	if (err)
		return report_err(c, "wrcaps", err);
	printf("write records: page size %u, %u ranges per read\n", caps.page_size,
	       caps.max_ranges);
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int cmd_ping(struct pt_client *c, int argc, char **argv)
{
	uint32_t n = 1;
	uint64_t *rtt;
	int err = 0;

	if (argc == 3 && !strcmp(argv[1], "-n")) {
		if (parse_u32(argv[2], &n) || !n)
			return -EINVAL;
	} else if (argc != 1) {
		return -EINVAL;
	}
	rtt = malloc(n * sizeof(*rtt));
	if (!rtt)
		return -ENOMEM;
	for (uint32_t i = 0; i < n && !err; i++) {
		uint64_t t0 = now_ns();

		err = pt_client_ping(c);
		rtt[i] = now_ns() - t0;
	}
	if (!err) {
		qsort(rtt, n, sizeof(*rtt), cmp_u64);
		printf("ping: %u round trips, p50 %.1f us, p99 %.1f us, max %.1f us\n", n,
		       rtt[n / 2] / 1e3, rtt[(uint64_t)n * 99 / 100] / 1e3, rtt[n - 1] / 1e3);
	}
	free(rtt);
	return err ? report_err(c, "ping", err) : 0;
}

/*
 * The userfaultfd mode, with this process as the VMM: its own anonymous memory stands for the
 * guest's, so the mode can be tried without a VM. A real VMM calls pt_client_register_uffd()
 * the same way, with its guest memory's slots.
 */
static char *uffd_mem;
static uint64_t uffd_size;
static int uffd_fd = -1;

static int cmd_uffd_memory(struct pt_client *c, int argc, char **argv)
{
	struct pt_reg_slot2 slot = { .gpa = 0, .id = 1 };
	char *end;
	uint32_t handle;
	int err;

	if (argc != 2 || uffd_mem)
		return -EINVAL;
	uffd_size = strtoull(argv[1], &end, 0);
	uffd_size <<= *end == 'K' ? 10 : *end == 'M' ? 20 : *end == 'G' ? 30 : 0;
	if (!uffd_size || uffd_size % 4096 || (*end && end[1]))
		return -EINVAL;
	uffd_mem = mmap(NULL, uffd_size, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (uffd_mem == MAP_FAILED) {
		uffd_mem = NULL;
		return -errno;
	}
	slot.size = uffd_size;
	slot.hva = (uintptr_t)uffd_mem;
	err = pt_client_register_uffd(c, &slot, 1, -1, &uffd_fd, &handle);
	if (err)
		return report_err(c, "uffd-memory", err);
	printf("registered pid %d (userfaultfd mode): %" PRIu64 " bytes at GPA 0, handle %u "
	       "coverage 0x%" PRIx64 "\n",
	       getpid(), uffd_size, handle, pt_client_coverage(c));
	return 0;
}

static int cmd_write(struct pt_client *c, int argc, char **argv)
{
	struct pt_range *r;
	int n = parse_ranges(argc - 1, argv + 1, &r);

	if (n < 0)
		return n;
	for (int i = 0; i < n; i++) {
		if (!uffd_mem || r[i].gpa + r[i].len > uffd_size ||
		    r[i].gpa + r[i].len < r[i].gpa) {
			free(r);
			fprintf(stderr, "ptballoon: write: outside uffd-memory\n");
			return -EINVAL;
		}
		for (uint64_t off = 0; off < r[i].len; off += 4096)
			uffd_mem[r[i].gpa + off] = 1;
	}
	free(r);
	printf("written %d ranges\n", n);
	return 0;
}

struct command {
	const char *name;
	int (*fn)(struct pt_client *c, int argc, char **argv);
};

static const struct command commands[] = {
	{ "register", cmd_register }, { "arm", cmd_life },
	{ "stop", cmd_life },	      { "done", cmd_life },
	{ "hint", cmd_hint },	      { "query", cmd_query },
	{ "report", cmd_pages },      { "inflate", cmd_pages },
	{ "deflate", cmd_pages },     { "wrread", cmd_pages },
	{ "wrcaps", cmd_wrcaps },     { "ping", cmd_ping },
	{ "written", cmd_pages },     { "uffd-memory", cmd_uffd_memory },
	{ "write", cmd_write },
};

static int run(struct pt_client *c, int argc, char **argv)
{
	int err;

	if (!argc)
		return 0;
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(argv[0], commands[i].name))
			continue;
		err = commands[i].fn(c, argc, argv);
		if (err == -EINVAL && !pt_client_last_error(c)->reason[0])
			fprintf(stderr, "ptballoon: bad arguments to '%s'\n%s", argv[0], usage);
		return err;
	}
	fprintf(stderr, "ptballoon: unknown command '%s'\n%s", argv[0], usage);
	return -EINVAL;
}

/* Splits argv at "," tokens (also a trailing "," glued to a word) and runs each command. */
static int run_argv(struct pt_client *c, int argc, char **argv)
{
	int start = 0;

	for (int i = 0; i <= argc; i++) {
		size_t len = i < argc ? strlen(argv[i]) : 0;
		bool glued = len > 1 && argv[i][len - 1] == ',';
		int err;

		if (i < argc && strcmp(argv[i], ",") && !glued)
			continue;
		if (glued)
			argv[i][len - 1] = 0;
		err = run(c, i - start + glued, argv + start);
		if (err)
			return err;
		start = i + 1;
	}
	return 0;
}

static int run_stdin(struct pt_client *c)
{
	char line[65536], *args[MAX_ARGS];

	while (fgets(line, sizeof(line), stdin)) {
		int n = 0, err;

		for (char *tok = strtok(line, " \t\n"); tok && n < MAX_ARGS;
		     tok = strtok(NULL, " \t\n"))
			args[n++] = tok;
		if (!n || args[0][0] == '#')
			continue;
		err = run(c, n, args);
		if (err)
			return err;
		fflush(stdout);
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *path = getenv("PAGETRACK_SOCKET");
	struct pt_client *c;
	int opt, err, timeout = -2;

	if (argc > 1 && !strcmp(argv[1], "--help")) {
		fputs(usage, stdout);
		return 0;
	}
	while ((opt = getopt(argc, argv, "+s:t:h")) != -1) {
		switch (opt) {
		case 's':
			path = optarg;
			break;
		case 't':
			timeout = atoi(optarg);
			break;
		default:
			fputs(usage, opt == 'h' ? stdout : stderr);
			return opt == 'h' ? 0 : 2;
		}
	}
	c = pt_client_connect(path);
	if (!c) {
		fprintf(stderr, "ptballoon: connect %s: %s\n", path ? path : PT_DEFAULT_SOCKET,
			strerror(errno));
		return 1;
	}
	if (timeout != -2)
		pt_client_set_timeout(c, timeout);
	err = optind < argc ? run_argv(c, argc - optind, argv + optind) : run_stdin(c);
	pt_client_close(c);
	return err ? 1 : 0;
}
