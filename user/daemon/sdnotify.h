/* SPDX-License-Identifier: GPL-2.0 */
/* sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET. No-op outside systemd. */
#ifndef PT_SDNOTIFY_H
#define PT_SDNOTIFY_H

int sd_notify_str(const char *msg);
int sd_notifyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
