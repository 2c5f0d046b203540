/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Logging to stderr with sd-daemon priority prefixes ("<3>"), so the journal keeps levels
 * when the service runs under systemd. pt_log_level filters; -v raises it to LOG_DEBUG.
 */
#ifndef PT_LOG_H
#define PT_LOG_H

#include <syslog.h>

extern int pt_log_level;

void pt_log(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define pt_err(...)   pt_log(LOG_ERR, __VA_ARGS__)
#define pt_warn(...)  pt_log(LOG_WARNING, __VA_ARGS__)
#define pt_info(...)  pt_log(LOG_INFO, __VA_ARGS__)
#define pt_debug(...) pt_log(LOG_DEBUG, __VA_ARGS__)

#endif
