/* SPDX-License-Identifier: GPL-2.0 */
/* `pagetrackd bench`: what a guest pays for being tracked (bench_guest.c). */
#ifndef PT_BENCH_GUEST_H
#define PT_BENCH_GUEST_H

struct bench_env;

/* Runs with the service stopped: "detached" must mean no pagetrack program attached. */
int bench_guest_pays(const struct bench_env *env);

#endif
