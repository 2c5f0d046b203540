// SPDX-License-Identifier: GPL-2.0
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "fdlink.h"

int pt_fd_link(int fd, char *buf, size_t len)
{
	char path[64];
	ssize_t n;

	if (fd < 0 || len < 2)
		return -EINVAL;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, buf, len - 1);
	if (n < 0)
		return -errno;
	if ((size_t)n >= len - 1)
		return -ENAMETOOLONG;
	buf[n] = 0;
	return 0;
}

bool pt_fd_is_anon(int fd, const char *kind)
{
	char link[128];

	return !pt_fd_link(fd, link, sizeof(link)) && !strncmp(link, "anon_inode:", 11) &&
	       !strcmp(link + 11, kind);
}
