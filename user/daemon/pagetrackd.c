// SPDX-License-Identifier: GPL-2.0
/*
 * pagetrackd: the service, and its operator commands.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <bpf/libbpf.h>

#include "bench/bench.h"
#include "writelog/canary.h"
#include "writelog/loader.h"
#include "shared/log.h"
#include "service.h"
#include "status.h"
#include "top.h"

static const char usage[] =
	"Usage: pagetrackd [OPTIONS] [COMMAND]\n"
	"\n"
	"Makes virtio-balloon free page hints safe to act on: BPF programs on KVM tracepoints\n"
	"log every guest page written since a command ID was armed; balloon devices send hints\n"
	"over a Unix socket and get back the pages that are provably untouched.\n"
	"\n"
	"Commands:\n"
	"  run           run the service (default)\n"
	"  status        show the running service, its VMs, coverage and counters (--json)\n"
	"  top           live view of the tracked VMs and their dirty rates (--json, -n, -i)\n"
	"  canary        load the tracker, run the coverage canary, print the result\n"
	"  bench         hint-throughput benchmark, side by side with the socket's limits "
	"(--json)\n"
	"  uninstall     remove every pin (maps and program links) under the pin directory\n"
	"\n"
	"Options (override " PT_DEFAULT_CONFIG "):\n"
	"  -c, --config PATH     configuration file\n"
	"  -s, --socket PATH     device socket (default " PT_DEFAULT_SOCKET ")\n"
	"  -p, --pin-dir DIR     bpffs pin directory (default " PT_DEFAULT_PIN_DIR ")\n"
	"  -r, --run-dir DIR     status and metrics directory (default " PT_DEFAULT_RUN_DIR ")\n"
	"  -m, --metrics PATH    Prometheus textfile ('-' to disable)\n"
	"      --log-mb N        write-log bitmap size in MiB (32 covers 1 TiB of guest memory)\n"
	"      --tdp auto|yes|no whether fault tracepoints carry GPAs (EPT/NPT)\n"
	"      --no-canary       skip the start-up coverage canary (every VM is then untracked)\n"
	"  -j, --json            machine-readable output (status, bench)\n"
	"  -q, --quick           short benchmark run\n"
	"  -n, --iterations N    top: stop after N samples (default: until q or Ctrl-C)\n"
	"  -i, --interval SEC    top: seconds between samples (default 1)\n"
	"  -v, --verbose         debug logging, libbpf messages\n"
	"  -V, --version         print the version and exit\n"
	"  -h, --help            this text\n"
	"\n"
	"Examples:\n"
	"  pagetrackd                                   # as systemd runs it\n"
	"  pagetrackd -s /tmp/pt.sock -p /sys/fs/bpf/pt-test -r /tmp/pt run\n"
	"  pagetrackd status --json\n"
	"  pagetrackd top                               # q quits\n"
	"  pagetrackd top --json -n 5                   # five samples, one JSON line each\n"
	"  pagetrackd bench --quick\n"
	"  bpftool map dump pinned /sys/fs/bpf/pagetrack/pt_vm_state\n";

static int libbpf_print(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	if (level == LIBBPF_DEBUG && pt_log_level < LOG_DEBUG)
		return 0;
	return vfprintf(stderr, fmt, ap);
}

/* systemd socket activation: LISTEN_FDS for this pid hands us fd 3. */
static int activation_fd(void)
{
	const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");

	if (!pid || !fds || atoi(pid) != getpid() || atoi(fds) < 1)
		return -1;
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	return 3;
}

enum { OPT_LOG_MB = 256, OPT_TDP, OPT_NO_CANARY };
#define OPTSTRING "c:s:p:r:m:jqvhVn:i:"

static const struct option longopts[] = { { "config", required_argument, NULL, 'c' },
					  { "socket", required_argument, NULL, 's' },
					  { "pin-dir", required_argument, NULL, 'p' },
					  { "run-dir", required_argument, NULL, 'r' },
					  { "metrics", required_argument, NULL, 'm' },
					  { "log-mb", required_argument, NULL, OPT_LOG_MB },
					  { "tdp", required_argument, NULL, OPT_TDP },
					  { "no-canary", no_argument, NULL, OPT_NO_CANARY },
					  { "json", no_argument, NULL, 'j' },
					  { "quick", no_argument, NULL, 'q' },
					  { "verbose", no_argument, NULL, 'v' },
					  { "help", no_argument, NULL, 'h' },
					  { "version", no_argument, NULL, 'V' },
					  { "iterations", required_argument, NULL, 'n' },
					  { "interval", required_argument, NULL, 'i' },
					  { 0 } };

struct cli {
	struct pt_config cfg;
	const char *cmd;
	bool json, quick;
	struct pt_top_opts top;
};

/* `top -i SEC`: 0.1 s to 1 hour. */
static int parse_interval(const char *v, unsigned *ms)
{
	char *end;
	double s = strtod(v, &end);

	if (end == v || *end || !(s >= 0.1 && s <= 3600))
		return -EINVAL;
	*ms = s * 1000;
	return 0;
}

static int parse_count(const char *v, long *n)
{
	char *end;

	*n = strtol(v, &end, 10);
	return end == v || *end || *n < 1 ? -EINVAL : 0;
}

static int parse_tdp(const char *v)
{
	if (!strcmp(v, "auto"))
		return -1;
	if (!strcmp(v, "yes"))
		return 1;
	if (!strcmp(v, "no"))
		return 0;
	return -2;
}

#define SETSTR(dst, v) snprintf((dst), sizeof(dst), "%s", (v))

/* Options are applied after the configuration file, so they win over it. */
static int apply_opt(struct cli *c, int opt, const char *arg)
{
	switch (opt) {
	case 's':
		SETSTR(c->cfg.socket, arg);
		break;
	case 'p':
		SETSTR(c->cfg.pin_dir, arg);
		break;
	case 'r':
		SETSTR(c->cfg.run_dir, arg);
		break;
	case 'm':
		SETSTR(c->cfg.metrics, arg);
		break;
	case OPT_LOG_MB:
		c->cfg.log_mb = atoi(arg);
		if (!c->cfg.log_mb)
			return -EINVAL;
		break;
	case OPT_TDP:
		c->cfg.tdp = parse_tdp(arg);
		if (c->cfg.tdp < -1)
			return -EINVAL;
		break;
	case OPT_NO_CANARY:
		c->cfg.canary = false;
		break;
	case 'j':
		c->json = true;
		break;
	case 'q':
		c->quick = true;
		break;
	case 'v':
		c->cfg.verbose = true;
		break;
	case 'n':
		return parse_count(arg, &c->top.iterations);
	case 'i':
		return parse_interval(arg, &c->top.interval_ms);
	default:
		return -EINVAL;
	}
	return 0;
}

static int parse_args(struct cli *c, int argc, char **argv)
{
	const char *config = NULL;
	int opt, err;

	/* First pass: only find the configuration file. */
	while ((opt = getopt_long(argc, argv, OPTSTRING, longopts, NULL)) != -1) {
		if (opt == 'h') {
			fputs(usage, stdout);
			exit(0);
		}
		if (opt == 'V') {
			printf("pagetrackd %s\n", PAGETRACK_VERSION);
			exit(0);
		}
		if (opt == '?')
			return -EINVAL;
		if (opt == 'c')
			config = optarg;
	}
	pt_config_defaults(&c->cfg);
	err = pt_config_load(&c->cfg, config ? config : PT_DEFAULT_CONFIG, !!config);
	if (err)
		return err;
	c->cfg.config_path = config ? config : PT_DEFAULT_CONFIG;
	optind = 1;
	while ((opt = getopt_long(argc, argv, OPTSTRING, longopts, NULL)) != -1) {
		if (opt != 'c' && apply_opt(c, opt, optarg)) {
			fprintf(stderr, "pagetrackd: bad value for option: %s\n", optarg);
			return -EINVAL;
		}
	}
	c->cmd = optind < argc ? argv[optind++] : "run";
	if (optind < argc) {
		fprintf(stderr, "pagetrackd: unexpected argument '%s'\n", argv[optind]);
		return -EINVAL;
	}
	return 0;
}

static int cmd_canary(struct cli *c)
{
	struct pt_loader_opts lo = { .tdp = c->cfg.tdp, .no_pin = true, .log_mb = 4 };
	struct pt_tracker *t;
	struct pt_coverage cov;
	char buf[400];
	int err;

	err = pt_tracker_open(&t, &lo);
	if (err)
		return err;
	pt_canary_run(t, &cov);
	printf("%s\n", pt_coverage_str(&cov, buf, sizeof(buf)));
	pt_tracker_close(t);
	return 0;
}

int main(int argc, char **argv)
{
	struct cli c = { .top.interval_ms = 1000 };
	int err;

	if (parse_args(&c, argc, argv)) {
		fputs(usage, stderr);
		return 2;
	}
	pt_log_level = c.cfg.verbose ? LOG_DEBUG : LOG_INFO;
	libbpf_set_print(libbpf_print);
	if (!strcmp(c.cmd, "run")) {
		c.cfg.listen_fd = activation_fd();
		err = pt_service_run(&c.cfg);
	} else if (!strcmp(c.cmd, "status")) {
		err = pt_status_show(&c.cfg, c.json);
	} else if (!strcmp(c.cmd, "top")) {
		c.top.json = c.json;
		err = pt_top_run(&c.cfg, &c.top);
	} else if (!strcmp(c.cmd, "canary")) {
		err = cmd_canary(&c);
	} else if (!strcmp(c.cmd, "bench")) {
		err = pt_bench_run(c.quick, c.json);
	} else if (!strcmp(c.cmd, "uninstall")) {
		err = pt_tracker_unpin(c.cfg.pin_dir);
		if (!err)
			printf("removed pins under %s\n", c.cfg.pin_dir);
	} else {
		fprintf(stderr, "pagetrackd: unknown command '%s'\n%s", c.cmd, usage);
		return 2;
	}
	if (err)
		fprintf(stderr, "pagetrackd %s: %s\n", c.cmd, strerror(err < 0 ? -err : err));
	return err ? 1 : 0;
}
