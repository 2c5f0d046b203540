#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The operator's view, as docs/OPERATIONS.md describes it: a pagetrackd with its own socket,
# pin directory and run directory; the documented bpftool commands against its pins;
# `pagetrackd status` (text and JSON); the metrics file; bpf_stats run-time counters;
# SIGTERM leaving the links pinned; `pagetrackd uninstall` removing them. Also the default
# configuration file (every key parses, every key documented) and install.sh/uninstall.sh
# into a staging DESTDIR.
#
# Prints PASS/FAIL/SKIP lines; exit 0, 1, or 77 when it cannot run here.
# shellcheck disable=SC2016 # single-quoted code run by eval
name=ops
# shellcheck source-path=SCRIPTDIR source=../t.sh
. "$(dirname "$0")/../t.sh"
BIN=$BUILD/pagetrackd
BALLOON=$BUILD/ptballoon
PIN=/sys/fs/bpf/pagetrack-ops-$$
pid='' T='' old_stats=''

[ "$(id -u)" -eq 0 ] || skip "needs root"
command -v bpftool >/dev/null || skip "bpftool not installed"
command -v python3 >/dev/null || skip "python3 not installed"
[ -x "$BIN" ] && [ -x "$BALLOON" ] || skip "build first (make)"
# Without /dev/kvm the service runs with its canary reporting "unavailable": everything here
# but the checks that need guest writes still runs.
KVM=yes
[ -c /dev/kvm ] || KVM=

cleanup() {
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"
		wait "$pid" 2>/dev/null
	fi
	[ -n "$old_stats" ] && sysctl -qw kernel.bpf_stats_enabled="$old_stats"
	[ -d "$PIN" ] && "$BIN" -p "$PIN" uninstall >/dev/null 2>&1
	[ -n "$T" ] && rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
T=$(mktemp -d /tmp/pagetrack-ops.XXXXXX) || exit 1
RUN=$T/run
SOCK=$T/balloon.sock

# --- the default configuration: every key of config.c, documented and parsable --------------
keys=$(sed -n 's/.*strcmp(k, "\([a-z-]*\)").*/\1/p' "$TOP/user/daemon/config.c" | sort -u)
missing=
for k in $keys; do
	grep -Eq "^#$k =( |$)" "$TOP/systemd/pagetrack.conf" || missing="$missing conf:$k"
	grep -q "^| \`$k\`" "$TOP/docs/OPERATIONS.md" || missing="$missing docs:$k"
done
check "every configuration key ($(echo "$keys" | wc -w)) in pagetrack.conf and OPERATIONS.md${missing:+, missing:$missing}" test -z "$missing"
sed -n 's/^#\([a-z-]* = .*\)$/\1/p; s/^#\([a-z-]* =\)$/\1/p' "$TOP/systemd/pagetrack.conf" >"$T/all.conf"
"$BIN" -c "$T/all.conf" -r "$T/none" status >/dev/null 2>"$T/conf.err"
rc=$?
check "default configuration, every key uncommented, parses (rc $rc)" test "$rc" -ne 2

# --- start -------------------------------------------------------------------------------------
old_stats=$(sysctl -n kernel.bpf_stats_enabled 2>/dev/null) || old_stats=
[ -n "$old_stats" ] && sysctl -qw kernel.bpf_stats_enabled=1
"$BIN" -c /dev/null -s "$SOCK" -p "$PIN" -r "$RUN" run >"$T/log" 2>&1 &
pid=$!
for _ in $(seq 150); do
	[ -s "$RUN/status.json" ] && break
	kill -0 "$pid" 2>/dev/null || break
	sleep 0.1
done
if [ -s "$RUN/status.json" ]; then pass "status.json written"; else
	fail "pagetrackd did not start"
	sed 's/^/# /' "$T/log"
	exit 1
fi

# --- bpftool, exactly as in OPERATIONS.md --------------------------------------------------------
out=$(bpftool map dump pinned "$PIN/pt_vm_state" 2>&1)
miss=
for f in tgid flags epoch sync_epoch ring_sync_epoch taint_epoch taint_reason lost syncs; do
	grep -q "\"$f\": " <<<"$out" || miss="$miss $f"
done
check "bpftool map dump pinned pt_vm_state: BTF field names${miss:+ (missing:$miss)}" test -z "$miss"
check "bpftool map show pinned pt_vm_state: array, 256 entries" \
	grep -Eq 'array +name pt_vm_state.*max_entries 256' <<<"$(bpftool map show pinned "$PIN/pt_vm_state" 2>&1 | tr '\n' ' ')"
check "bpftool map show pinned pt_log: mmapable (flags 0x400)" \
	grep -Eq 'name pt_log +flags 0x400' <<<"$(bpftool map show pinned "$PIN/pt_log" 2>&1)"
check "bpftool map dump pinned pt_vm_by_tgid: valid" bpftool map dump pinned "$PIN/pt_vm_by_tgid" >/dev/null
link=$(bpftool link show pinned "$PIN/link_pt_ring_push" 2>&1)
check "bpftool link show pinned link_pt_ring_push: raw tracepoint kvm_dirty_ring_push" \
	grep -q "tp 'kvm_dirty_ring_push'" <<<"$link"
prog_id=$(bpftool -j link show pinned "$PIN/link_pt_ring_push" |
	python3 -c 'import json, sys; print(json.load(sys.stdin)["prog_id"])' 2>/dev/null)
check "bpftool prog show lists pt_ring_push (id ${prog_id:-?})" \
	grep -Eq "^${prog_id:-x}: raw_tracepoint +name pt_ring_push" <<<"$(bpftool prog show)"
nlinks=0
for l in "$PIN"/link_*; do
	bpftool link show pinned "$l" >/dev/null 2>&1 && nlinks=$((nlinks + 1))
done
check "bpftool link show pinned: $nlinks links" test "$nlinks" -ge 4
if [ -z "$KVM" ]; then
	echo "SKIP: ops: bpf_stats run_cnt: no /dev/kvm, so no canary guest writes"
elif [ -n "$old_stats" ]; then
	stats=$(bpftool prog show id "$prog_id" 2>&1)
	echo "# $(head -1 <<<"$stats")"
	# The canary's 64 guest writes ran pt_ring_push while the statistics were on.
	check "kernel.bpf_stats_enabled=1: run_time_ns and run_cnt reported" \
		grep -Eq 'run_time_ns [0-9]+ run_cnt [1-9]' <<<"$stats"
else
	echo "SKIP: ops: bpf_stats: no kernel.bpf_stats_enabled sysctl"
fi

# --- pagetrackd status, metrics --------------------------------------------------------------------
st=$("$BIN" -p "$PIN" -r "$RUN" status 2>&1)
check "pagetrackd status: running, pins listed" \
	grep -q "pid $pid (running)" <<<"$st"
# As many as bpftool found pinned: 4 without KVM's TDP MMU, 6 with it (the fault programs).
check "pagetrackd status: $nlinks program links" grep -q " $nlinks program links" <<<"$st"
check "pagetrackd status --json is valid JSON" \
	eval '"$BIN" -r "$RUN" status --json | python3 -m json.tool >/dev/null'
cov=$("$BIN" -r "$RUN" status --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["coverage"]["dirty-ring"])')
if [ -n "$KVM" ]; then
	check "status --json: coverage dirty-ring = ${cov:-?}" test "$cov" = tracked
	check "metrics.prom: pagetrack_coverage{mode=\"dirty-ring\"} 1" \
		grep -qx 'pagetrack_coverage{mode="dirty-ring"} 1' "$RUN/metrics.prom"
else
	# No KVM: the canary cannot vouch for any mode, and must not claim it does.
	check "status --json without KVM: coverage dirty-ring = ${cov:-?} (unavailable)" \
		test "$cov" = unavailable
	check "metrics.prom without KVM: pagetrack_coverage{mode=\"dirty-ring\"} 0" \
		grep -qx 'pagetrack_coverage{mode="dirty-ring"} 0' "$RUN/metrics.prom"
fi
# The userfaultfd canary runs with or without KVM: without it, on the host's own writes.
ucov=$("$BIN" -r "$RUN" status --json | python3 -c 'import json, sys; c = json.load(sys.stdin)["coverage"]; print(c["uffd-wp"], c["uffd-wp-writes"])')
want="tracked guest"
[ -n "$KVM" ] || want="tracked host"
check "status --json: coverage uffd-wp = ${ucov:-?} (want $want)" test "$ucov" = "$want"
check "metrics.prom: pagetrack_coverage{mode=\"uffd-wp\"} 1" \
	grep -qx 'pagetrack_coverage{mode="uffd-wp"} 1' "$RUN/metrics.prom"
check "ptballoon ping through the socket" eval '"$BALLOON" -s "$SOCK" ping -n 3 >/dev/null'

# --- uninstall while the service runs: refused, nothing removed -------------------------------------
out=$("$BIN" -p "$PIN" uninstall 2>&1)
rc=$?
echo "$out" | sed 's/^/# /'
check "uninstall while running: refused (exit $rc), says why" \
	eval 'test "$rc" -eq 1 && grep -q "a running pagetrackd holds" <<<"$out"'
check "uninstall while running: pins and links kept" \
	eval 'bpftool link show pinned "$PIN/link_pt_ring_push" >/dev/null 2>&1 && test -e "$PIN/pt_log"'

# --- SIGTERM: exits 0, links stay; uninstall removes them ------------------------------------------
kill -TERM "$pid"
wait "$pid"
rc=$?
pid=
check "SIGTERM: exit status $rc" test "$rc" -eq 0
check "after SIGTERM: links still pinned and attached" \
	eval 'bpftool link show pinned "$PIN/link_pt_ring_push" >/dev/null 2>&1'
check "pagetrackd status after stop: NOT running" \
	grep -q "(NOT running)" <<<"$("$BIN" -p "$PIN" -r "$RUN" status 2>&1)"
link_id=$(bpftool -j link show pinned "$PIN/link_pt_ring_push" |
	python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])' 2>/dev/null)
"$BIN" -p "$PIN" uninstall | sed 's/^/# /'
check "pagetrackd -p DIR uninstall: pins removed" test ! -e "$PIN"
check "after uninstall: link ${link_id:-?} gone (programs detached)" \
	eval '! bpftool link show id "${link_id:-0}" >/dev/null 2>&1'
[ -n "$old_stats" ] && sysctl -qw kernel.bpf_stats_enabled="$old_stats"
check "kernel.bpf_stats_enabled restored to ${old_stats:-?}" \
	test "$(sysctl -n kernel.bpf_stats_enabled 2>/dev/null)" = "$old_stats"

# --- install.sh / uninstall.sh into a staging root --------------------------------------------------
D=$T/destdir
if [ -f "$BUILD/libpagetrack.a" ] && [ -f "$BUILD/libpagetrack.so" ]; then
	BUILD=$BUILD DESTDIR=$D "$TOP/scripts/install.sh" >"$T/install.log" 2>&1
	ok=yes
	for f in usr/local/sbin/pagetrackd usr/local/lib/libpagetrack.a usr/local/lib/libpagetrack.so \
		usr/local/lib/libpagetrack.so.1 usr/local/include/pagetrack/client.h \
		etc/systemd/system/pagetrackd.service etc/systemd/system/pagetrackd.socket \
		etc/pagetrack/pagetrack.conf; do
		[ -e "$D/$f" ] || { echo "# missing $f"; ok=no; }
	done
	check "install.sh into DESTDIR" test $ok = yes
	echo "pin-dir = /sys/fs/bpf/elsewhere" >>"$D/etc/pagetrack/pagetrack.conf"
	BUILD=$BUILD DESTDIR=$D "$TOP/scripts/install.sh" >/dev/null 2>&1
	check "install.sh keeps an existing configuration" grep -q elsewhere "$D/etc/pagetrack/pagetrack.conf"
	DESTDIR=$D "$TOP/scripts/uninstall.sh" >"$T/uninstall.log" 2>&1
	left=$(cd "$D" && find . -type f -o -type l | sort | tr '\n' ' ')
	check "uninstall.sh removes all but the changed configuration (left: $left)" \
		test "$left" = "./etc/pagetrack/pagetrack.conf "
else
	echo "SKIP: ops: install.sh: libpagetrack not built"
fi
[ "$fails" -eq 0 ]
