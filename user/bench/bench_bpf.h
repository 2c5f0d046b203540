/* SPDX-License-Identifier: GPL-2.0 */
/*
 * `pagetrackd bench` BPF section: run time per event of the write tracker's programs next to
 * empty programs on the same tracepoints (bpf/baseline.bpf.c), both attached at once so they
 * see the same events, while a ring-mode minivm guest writes.
 */
#ifndef PT_BENCH_BPF_H
#define PT_BENCH_BPF_H

#include <stdbool.h>

struct bench_env;

/* The guest-driven part skips without KVM (env->no_kvm); the rest runs anywhere. */
int bench_bpf(const struct bench_env *env);

#endif
