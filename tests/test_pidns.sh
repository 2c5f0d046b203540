#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# pagetrackd inside a PID namespace (a container, a sandboxed unit): VMMs register with the
# pids the service sees, and the BPF programs must translate host pids into that namespace.
# The canary, run inside `unshare --pid`, must still see every dirty-ring write.
BUILD=${BUILD:-build}
name=test_pidns
if [ "$(id -u)" != 0 ] || [ ! -e /dev/kvm ] || ! command -v unshare >/dev/null; then
	echo "SKIP: $name: needs root, /dev/kvm and unshare"
	exit 77
fi
out=$(unshare --pid --fork --mount-proc "$BUILD/pagetrackd" canary 2>&1)
rc=$?
if [ $rc -eq 0 ] && grep -q '^dirty-ring: tracked' <<<"$out" &&
	grep -q 'running in a PID namespace' <<<"$out"; then
	echo "PASS: $name/canary_in_pid_namespace"
	exit 0
fi
echo "$out"
echo "FAIL: $name/canary_in_pid_namespace"
exit 1
