/* SPDX-License-Identifier: GPL-2.0 */
/* `pagetrackd bench` workloads against a private pagetrackd (user/spawn.h). */
#ifndef PT_BENCH_SVC_H
#define PT_BENCH_SVC_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct bench_env {
	bool quick;
	const char *socket; /* the spawned service's socket */
	pid_t svc;	    /* its pid, for /proc readings */
	uint64_t run_ns;    /* length of one timed workload */
	int kvm;	    /* minivm_supported(MINIVM_DIRTY_RING): 0 or why not */
	const char *no_kvm; /* the reason KVM workloads skip, NULL when they run */
};

/* Hinting as Linux sends it (4 MiB) and the worst case (4 KiB), against both baselines. */
int bench_hinting(const struct bench_env *env);
int bench_worst_case(const struct bench_env *env);
/* REPORT ack latency, service PING and the raw socket ping-pong floor. */
int bench_latency(const struct bench_env *env);
/* A guest of >= 1 TiB: round time and the service's memory per guest GiB. */
int bench_large_guest(const struct bench_env *env);
/* 64 devices hinting at once. */
int bench_many_devices(const struct bench_env *env);
/* 64 devices each sending REPORTs of 32 x 2 MiB, one in flight: small frames, a reply each. */
int bench_many_reporters(const struct bench_env *env);
/* A real ring-mode guest writing during the hint load; the 64 GiB verdict time. */
int bench_live_guest(const struct bench_env *env);

#endif
