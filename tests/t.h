/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A tiny test framework. Each test binary holds several cases; every case prints one line
 * "PASS: bin/case", "FAIL: bin/case" or "SKIP: bin/case: reason", which tests/run.sh counts.
 * A case returns 0 (pass), T_SKIP (77, after t_skip()) or anything else (fail).
 */
#ifndef PT_TESTS_T_H
#define PT_TESTS_T_H

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#define T_SKIP 77

struct t_case {
	const char *name;
	int (*fn)(void);
};

#define T_CASE(fn)      \
	{               \
#fn, fn \
	}

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "  %s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
			return -1;                                                                 \
		}                                                                                  \
	} while (0)

#define CHECKF(cond, fmt, ...)                                                            \
	do {                                                                              \
		if (!(cond)) {                                                            \
			fprintf(stderr, "  %s:%d: CHECK failed: %s: " fmt "\n", __FILE__, \
				__LINE__, #cond, ##__VA_ARGS__);                          \
			return -1;                                                        \
		}                                                                         \
	} while (0)

/* Records why the current case is skipped; the case then returns T_SKIP. */
static char t_skip_reason[256];
static inline int t_skip(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(t_skip_reason, sizeof(t_skip_reason), fmt, ap);
	va_end(ap);
	return T_SKIP;
}

/*
 * Factor for the time bounds of guards that run until their minimum is reached: an integer from
 * PT_TEST_TIME_SCALE (1 to 100, default 1), set where the machine is known to be slow (under
 * emulation: tests/nested/run-kvm.sh). It scales bounds only, never a minimum or a check.
 */
static inline unsigned t_time_scale(void)
{
	const char *s = getenv("PT_TEST_TIME_SCALE");
	long v = s ? strtol(s, NULL, 10) : 1;

	return v >= 1 && v <= 100 ? (unsigned)v : 1;
}

/* Cases that need /dev/kvm call this first: returns T_SKIP with a reason where it is missing. */
static inline int t_need_kvm(void)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return t_skip("/dev/kvm not usable: %s", strerror(errno));
	close(fd);
	return 0;
}

/* Cases that load BPF need root (CAP_BPF + CAP_PERFMON) and a kernel with BTF. */
static inline int t_need_bpf(void)
{
	if (geteuid() != 0)
		return t_skip("BPF needs root");
	if (access("/sys/kernel/btf/vmlinux", R_OK))
		return t_skip("kernel has no BTF (/sys/kernel/btf/vmlinux)");
	return 0;
}

#define T_REQUIRE(check)               \
	do {                           \
		int t_req_ = (check);  \
		if (t_req_)            \
			return t_req_; \
	} while (0)

static inline int t_run(const struct t_case *cases, size_t n, int argc, char **argv)
{
	const char *bin = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
	int failed = 0, ran = 0;

	for (size_t i = 0; i < n; i++) {
		int rc;

		if (argc > 1 && !strstr(cases[i].name, argv[1]))
			continue;
		ran++;
		t_skip_reason[0] = 0;
		fflush(NULL);
		rc = cases[i].fn();
		fflush(NULL);
		if (rc == 0) {
			printf("PASS: %s/%s\n", bin, cases[i].name);
		} else if (rc == T_SKIP) {
			printf("SKIP: %s/%s: %s\n", bin, cases[i].name, t_skip_reason);
		} else {
			printf("FAIL: %s/%s\n", bin, cases[i].name);
			failed++;
		}
		fflush(stdout);
	}
	return failed ? 1 : (ran ? 0 : T_SKIP);
}

#define T_MAIN(...)                                                                \
	int main(int argc, char **argv)                                            \
	{                                                                          \
		static const struct t_case cases[] = { __VA_ARGS__ };              \
		setvbuf(stdout, NULL, _IOLBF, 0);                                  \
		return t_run(cases, sizeof(cases) / sizeof(cases[0]), argc, argv); \
	}

#endif
