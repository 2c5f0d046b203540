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
fail=0
out=$(unshare --pid --fork --mount-proc "$BUILD/pagetrackd" canary 2>&1)
rc=$?
if [ $rc -eq 0 ] && grep -q '^dirty-ring: tracked' <<<"$out" &&
	grep -q 'running in a PID namespace' <<<"$out"; then
	echo "PASS: $name/canary_in_pid_namespace"
else
	echo "$out"
	echo "FAIL: $name/canary_in_pid_namespace"
	fail=1
fi

# The service in a namespace, a VMM in the same one and a VMM in a namespace below it: the
# programs see only the first, so REGISTER must report the second as untracked (coverage 1).
dir=$(mktemp -d /tmp/pagetrack-pidns.XXXXXX)
pin=/sys/fs/bpf/pagetrack-pidns-$$
trap '"$BUILD/pagetrackd" -p "$pin" uninstall >/dev/null 2>&1; rm -rf "$dir"' EXIT
BIN=$(cd "$BUILD" && pwd)
unshare --pid --fork --mount-proc bash -c '
	"$0/pagetrackd" -s "$1/s.sock" -p "$2" -r "$1" -m - run 2>"$1/log" &
	svc=$!
	for i in $(seq 200); do [ -S "$1/s.sock" ] && break; sleep 0.1; done
	sleep 30 & same=$!
	unshare --pid --fork sleep 30 & outer=$!
	sleep 0.3
	nested=$(pgrep -P "$outer" sleep)
	for p in "$same" "$nested"; do
		"$0/ptballoon" -s "$1/s.sock" register "$p" ring 0x40000000:0x100000:1:log
	done
	kill -9 "$nested" 2>/dev/null # init of its namespace: only SIGKILL reaches it
	kill "$same" "$outer" "$svc" 2>/dev/null
	wait
' "$BIN" "$dir" "$pin" >"$dir/out" 2>&1
# In order: the same-namespace VMM fully covered (0), the nested one untracked (1), and why.
if [ "$(grep -o 'coverage 0x[0-9a-f]*' "$dir/out" | tr '\n' ' ')" = "coverage 0x0 coverage 0x1 " ] &&
	[ "$(grep -c 'VMM in another PID namespace' "$dir/log")" -eq 1 ]; then
	echo "PASS: $name/vmm_in_nested_namespace_untracked"
else
	cat "$dir/out" "$dir/log"
	echo "FAIL: $name/vmm_in_nested_namespace_untracked"
	fail=1
fi
exit $fail
