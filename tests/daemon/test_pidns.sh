#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# pagetrackd inside a PID namespace (a container, a sandboxed unit): VMMs register with the
# pids the service sees, and the BPF programs must translate host pids into that namespace.
# The canary, run inside `unshare --pid`, must still see every dirty-ring write.
BUILD=${BUILD:-build}
name=test_pidns
skip() {
	echo "SKIP: $name: $*"
	exit 77
}
[ "$(id -u)" = 0 ] || skip "needs root"
[ -c /dev/kvm ] || skip "/dev/kvm not usable"
command -v unshare >/dev/null || skip "unshare not installed"
command -v pgrep >/dev/null || skip "pgrep not installed (procps)"
# A chroot or a container may forbid new mount or PID namespaces (test_systemd skips there too).
unshare --pid --fork --mount-proc true 2>/dev/null ||
	skip "unshare --pid --mount fails here (chroot or container)"
unshare --pid --fork --mount-proc unshare --pid --fork true 2>/dev/null ||
	skip "nested unshare --pid fails here"
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
	# The nested sleep appears once the inner unshare has forked: wait for it (bounded, 20 s),
	# a loaded machine (sanitizers, parallel builds) may take far longer than usual.
	nested=
	for i in $(seq 200); do
		nested=$(pgrep -P "$outer" -x sleep) && [ -n "$nested" ] && break
		sleep 0.1
	done
	[ -n "$nested" ] || echo "no nested sleep after 20 s" >&2
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
