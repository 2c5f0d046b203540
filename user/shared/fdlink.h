/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What a file descriptor a peer handed over really is, read from /proc/self/fd: our own
 * process, so no ptrace right over the peer is needed.
 */
#ifndef PT_FDLINK_H
#define PT_FDLINK_H

#include <stdbool.h>
#include <stddef.h>

/* The link text of /proc/self/fd/@fd ("anon_inode:kvm-vm", "/proc/42/pagemap"). 0 or -errno. */
int pt_fd_link(int fd, char *buf, size_t len);
/* True if @fd is an anonymous inode of @kind: "kvm-vm", "[userfaultfd]". */
bool pt_fd_is_anon(int fd, const char *kind);

#endif
