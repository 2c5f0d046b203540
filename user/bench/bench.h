/* SPDX-License-Identifier: GPL-2.0 */
/* `pagetrackd bench`: hint throughput of the real service core over the real socket. */
#ifndef PT_BENCH_H
#define PT_BENCH_H

#include <stdbool.h>

int pt_bench_run(bool quick, bool json);

#endif
