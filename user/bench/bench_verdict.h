/* SPDX-License-Identifier: GPL-2.0 */
#ifndef PT_BENCH_VERDICT_H
#define PT_BENCH_VERDICT_H

struct bench_env;

/* The sure verdict's pass in-process (no KVM needed): bench_verdict.c. */
int bench_verdict_pass(const struct bench_env *env);

#endif
