/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Dropping privileges once the BPF programs are attached, the maps mapped and the socket
 * listening: the code that parses peer input runs with no capability at all.
 */
#ifndef PT_CAPS_H
#define PT_CAPS_H

/* Clears the effective, permitted, inheritable and ambient sets, so no later execve() or
 * setuid() can bring a capability back either. 0 or negative errno. */
int pt_caps_drop_all(void);
/* The effective set now, as the low 64 bits (for status and tests). */
unsigned long long pt_caps_effective(void);

#endif
