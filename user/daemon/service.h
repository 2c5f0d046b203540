/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The service: BPF tracker + canary + io_uring socket server, and the dispatch of device
 * frames to the per-VM command-ID state machines (cmdstate.c).
 */
#ifndef PT_SERVICE_H
#define PT_SERVICE_H

#include "config.h"

int pt_service_run(const struct pt_config *cfg);

#endif
