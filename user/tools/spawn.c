// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "writelog/loader.h"
#include "spawn.h"

const char *pt_spawn_default_bin(char *buf, size_t len)
{
	static const char *const rel[] = { "pagetrackd", "../pagetrackd" }; /* BUILD, BUILD/tests */
	char self[256], *slash;
	ssize_t n;

	if (getenv("PAGETRACKD")) {
		snprintf(buf, len, "%s", getenv("PAGETRACKD"));
		return buf;
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	self[n > 0 ? n : 0] = 0;
	slash = strrchr(self, '/');
	if (slash) {
		*slash = 0;
		for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
			snprintf(buf, len, "%.200s/%s", self, rel[i]);
			if (!access(buf, X_OK))
				return buf;
		}
	}
	snprintf(buf, len, "%.200s/pagetrackd", getenv("BUILD") ? getenv("BUILD") : "build");
	return buf;
}

static void exec_service(struct pt_spawned *s, const char *bin, const char *const *extra)
{
	const char *argv[32] = { bin, "-s", s->socket, "-p", s->pin_dir, "-r", s->dir, "-m", "-" };
	int i = 9, fd;

	for (; extra && *extra && i < 30; extra++)
		argv[i++] = *extra;
	argv[i++] = "run";
	argv[i] = NULL;
	fd = open(s->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd >= 0) {
		dup2(fd, STDERR_FILENO);
		dup2(fd, STDOUT_FILENO);
	}
	/* A test or demo that dies must not leave its service behind. */
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	execv(bin, (char **)argv);
	_exit(127);
}

static int wait_ready(struct pt_spawned *s)
{
	char status[256];
	struct timespec ts = { 0, 20 * 1000 * 1000 };

	snprintf(status, sizeof(status), "%s/status.json", s->dir);
	for (int i = 0; i < 1500; i++) { /* 30 s: the canary runs two VMs first */
		int st;

		if (!access(status, F_OK) && !access(s->socket, F_OK))
			return 0;
		if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
			s->pid = 0;
			return -ECHILD;
		}
		nanosleep(&ts, NULL);
	}
	return -ETIMEDOUT;
}

int pt_spawn_service(struct pt_spawned *s, const char *bin, const char *tag,
		     const char *const *extra_args)
{
	char binbuf[256];
	int err;

	memset(s, 0, sizeof(*s));
	snprintf(s->dir, sizeof(s->dir), "/tmp/pagetrack-%s.XXXXXX", tag);
	if (!mkdtemp(s->dir))
		return -errno;
	snprintf(s->socket, sizeof(s->socket), "%s/balloon.sock", s->dir);
	snprintf(s->log, sizeof(s->log), "%s/pagetrackd.log", s->dir);
	snprintf(s->pin_dir, sizeof(s->pin_dir), "/sys/fs/bpf/pagetrack-%s-%d", tag, getpid());
	if (!bin)
		bin = pt_spawn_default_bin(binbuf, sizeof(binbuf));
	s->pid = fork();
	if (s->pid < 0)
		return -errno;
	if (!s->pid)
		exec_service(s, bin, extra_args);
	err = wait_ready(s);
	if (err) {
		char cmd[300];

		snprintf(cmd, sizeof(cmd), "cat %s >&2", s->log);
		if (system(cmd))
			err = err ? err : -EIO;
		pt_spawn_stop(s, SIGKILL);
	}
	return err;
}

int pt_spawn_stop(struct pt_spawned *s, int sig)
{
	char path[320];
	int st = 0;

	if (s->pid > 0) {
		kill(s->pid, sig);
		if (waitpid(s->pid, &st, 0) < 0)
			st = -1;
		s->pid = 0;
	}
	pt_tracker_unpin(s->pin_dir);
	if (s->dir[0] && !getenv("PAGETRACK_KEEP_LOGS")) {
		const char *files[] = { "status.json", "status.txt", "metrics.prom", "balloon.sock",
					"pagetrackd.log" };

		for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
			snprintf(path, sizeof(path), "%s/%s", s->dir, files[i]);
			unlink(path);
		}
		rmdir(s->dir);
	}
	return st;
}
