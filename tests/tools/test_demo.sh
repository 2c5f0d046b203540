#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# `make demo` (build/ptdemo): a ring round, then a userfaultfd round, each checked against what
# was really written; exit 0 only if every round that ran matched. Without /dev/kvm the ring
# round must say it is skipped and why, and the uffd round must run with the demo as the VMM.
name=demo
# shellcheck source-path=SCRIPTDIR source=../t.sh
. "$(dirname "$0")/../t.sh"
DEMO="$BUILD/ptdemo"

if [ "$(id -u)" -ne 0 ]; then
	echo "SKIP: test_demo: needs root"
	exit 77
fi
if [ ! -x "$DEMO" ]; then
	echo "FAIL: test_demo: $DEMO not built"
	exit 1
fi
out=$(mktemp /tmp/pagetrack-test-demo.XXXXXX)
trap 'rm -f "$out"' EXIT

timeout -k 5 120 "$DEMO" >"$out" 2>&1
rc=$?
check "exits 0 (status $rc)" test "$rc" -eq 0
ring=$(grep -n '^1\. dirty-ring mode' "$out" | cut -d: -f1)
uffd=$(grep -n '^2\. userfaultfd mode' "$out" | cut -d: -f1)
check "ring round, then uffd round (lines ${ring:-?}, ${uffd:-?})" \
	test "${ring:-0}" -gt 0 -a "${uffd:-0}" -gt "${ring:-0}"
check "uffd round matched guest memory" \
	grep -q '^  check against guest memory: OK' "$out"
check "0 confirmed pages really written" \
	grep -Eq '^  confirmed pages really written \(data loss\) +0$' "$out"
if grep -q '^  SKIPPED: ' "$out"; then
	check "the ring round says it is skipped and why" \
		grep -q '^  SKIPPED: needs a KVM guest with a dirty ring: /dev/kvm not usable' "$out"
else
	check "ring round matched KVM's dirty ring" \
		grep -q "^  check against KVM's dirty ring: OK" "$out"
fi
if grep -q '^  no /dev/kvm: the VMM writes its own memory' "$out"; then
	check "no KVM: the VMM wrote its own guest memory" \
		grep -q 'VMM writes 700 pages of its guest memory *ok' "$out"
else
	check "uffd round on a KVM guest with dirty logging off" \
		grep -q 'start a KVM guest (128 MiB at 1 GiB, dirty logging off) *ok' "$out"
fi
if [ ! -c /dev/kvm ]; then
	check "no /dev/kvm: ring round skipped, uffd round labelled as the VMM's own writes" \
		grep -q '^  no /dev/kvm: the VMM writes its own memory' "$out"
	check "no /dev/kvm: no ring round ran" grep -q '^  SKIPPED: ' "$out"
fi
[ "$fails" -eq 0 ] || cat "$out"
[ "$fails" -eq 0 ]
