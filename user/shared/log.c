// SPDX-License-Identifier: GPL-2.0
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

int pt_log_level = LOG_INFO;

void pt_log(int prio, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;

	if (prio > pt_log_level)
		return;
	n = snprintf(buf, sizeof(buf), "<%d>", prio);
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	if (buf[n - 1] != '\n')
		buf[n++] = '\n';
	/* One write per line, so lines from several threads do not interleave. */
	if (write(STDERR_FILENO, buf, n) < 0)
		return;
}
