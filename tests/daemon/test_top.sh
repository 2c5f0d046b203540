#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# `pagetrackd top` against a running private service (own socket, pins and run directory;
# --no-canary, so no KVM is needed): a `sleep` stands in for the VMM, ptballoon registers it,
# arms, hints, and reports pages the VMM wrote (WRITTEN), which land in the write log.
#   --json: one valid JSON line per sample, the VM's written pages and last verdict, and the
#           rates add up to the pages written between the samples;
#   the Prometheus file has the written pages and the rate;
#   the view in tmux at 80x24: it renders the VM's row, `q` and Ctrl-C end it, and the
#   terminal is given back (main screen, cursor, canonical mode with echo).
# The rate against a real guest writing at a known rate: test_top_kvm (needs /dev/kvm).
name=top
# shellcheck source-path=SCRIPTDIR source=../t.sh
. "$(dirname "$0")/../t.sh"
BIN=$BUILD/pagetrackd
[ "$(id -u)" -eq 0 ] || skip "needs root (BPF)"
for t in tmux python3; do command -v $t >/dev/null || skip "$t not installed (make deps)"; done
[ -x "$BIN" ] && [ -x "$BUILD/ptballoon" ] || skip "build first (make)"
[ -r /sys/kernel/btf/vmlinux ] || skip "kernel has no BTF"
[ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" = bpf_fs ] || skip "bpffs not mounted on /sys/fs/bpf"

D=$(mktemp -d /tmp/pagetrack-top.XXXXXX)
PIN=/sys/fs/bpf/pagetrack-top-$$
TM="tmux -L pagetrack-top-$$"
SVC='' VMM='' DEV=''
cleanup() {
	$TM kill-server 2>/dev/null
	exec 7>&- 2>/dev/null
	[ -n "$DEV" ] && kill "$DEV" 2>/dev/null
	[ -n "$VMM" ] && kill "$VMM" 2>/dev/null
	if [ -n "$SVC" ]; then
		kill "$SVC" 2>/dev/null
		wait "$SVC" 2>/dev/null
	fi
	"$BIN" -p "$PIN" uninstall >/dev/null 2>&1
	rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

until_true() { # TRIES(0.1 s) COMMAND...: bounded wait
	local n=$1
	shift
	for _ in $(seq "$n"); do
		"$@" && return 0
		sleep 0.1
	done
	return 1
}
json() { # KEY of the VM in status.json
	python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["vms"][0][sys.argv[2]] if d["vms"] else "")' \
		"$D/status.json" "$1" 2>/dev/null
}

# --- a service, a VM, a device ------------------------------------------------------------------
"$BIN" -s "$D/s.sock" -p "$PIN" -r "$D" -m "$D/metrics.prom" --no-canary run 2>"$D/log" &
SVC=$!
if ! until_true 300 test -S "$D/s.sock" -a -f "$D/status.json"; then
	sed 's/^/# /' "$D/log"
	fail "service did not start"
	exit 1
fi
sleep 300 &
VMM=$!
mkfifo "$D/dev"
"$BUILD/ptballoon" -s "$D/s.sock" <"$D/dev" >"$D/dev.out" 2>&1 &
DEV=$!
exec 7>"$D/dev"
dev() { echo "$*" >&7; }
dev register $VMM ring 0x40000000:0x4000000:1:log
dev arm 2
dev hint 2 0x40000000:0x100000 # 256 pages
dev written 0x40000000:0x40000 # 64 of them written by the "VMM"
dev stop 2
dev query 2
check "status.json: the VM's 64 written pages and the last verdict (256 hinted, 256 kept)" \
	until_true 300 eval '[ "$(json written_pages)/$(json last_hinted)/$(json last_kept)" = 64/256/256 ]'
check "metrics.prom: written pages and dirty rate of the VM" until_true 50 eval \
	'grep -q "^pagetrack_vm_written_pages{vm=\"0\",pid=\"$VMM\",mode=\"dirty-ring\"} 64$" "$D/metrics.prom" &&
	 grep -q "^pagetrack_vm_dirty_rate_pages_per_second{vm=\"0\",pid=\"$VMM\",.*} [0-9.]*$" "$D/metrics.prom"'

# --- --json ------------------------------------------------------------------------------------
"$BIN" -r "$D" top --json -n 3 -i 0.5 >"$D/top.json" 2>"$D/top.err"
rc=$?
check "top --json -n 3: exit 0, three lines" test "$rc/$(wc -l <"$D/top.json")" = "0/3"
check "each line one JSON sample with the VM (pid, mode, written pages, last verdict)" \
	python3 - "$D/top.json" "$VMM" <<'EOF'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
for l in lines:
    s = json.loads(l)
    v = s["vms"][0]
    assert v["pid"] == int(sys.argv[2]) and v["mode"] == "dirty-ring", v
    assert v["written_pages"] == 64 and v["state"] == "stopped", v
    assert v["last_verdict"] == {"cmd_id": 2, "hinted": 256, "free": 0, "kept": 256}, v
EOF

# While pages are written: what the rates say, times the intervals, is what was written.
"$BIN" -r "$D" top --json -i 0.5 >"$D/rate.json" 2>&1 &
TOPJ=$!
until_true 100 test -s "$D/rate.json"
dev written 0x40100000:0x100000 # 256 more
sleep 1
dev written 0x40200000:0x80000 # 128 more
# Until a sample has them all (bounded), then SIGTERM ends it like Ctrl-C.
until_true 300 eval 'tail -1 "$D/rate.json" | grep -q "\"written_pages\": 448,"'
kill -TERM $TOPJ
wait $TOPJ
check "top --json ends cleanly on SIGTERM (status $?)" test $? -eq 0
check "rates between samples add up to the pages written (64 -> 448)" \
	python3 - "$D/rate.json" <<'EOF'
import json, sys
s = [json.loads(l) for l in open(sys.argv[1])]
v = [x["vms"][0] for x in s]
assert v[-1]["written_pages"] == 448 or print("# last sample:", v[-1]), v[-1]
total = 0.0
for a, b, vb in zip(s, s[1:], v[1:]):
    dt = (b["time_ms"] - a["time_ms"]) / 1000
    if dt > 0 and vb["dirty_rate"] is not None:
        total += vb["dirty_rate"] * dt
want = v[-1]["written_pages"] - v[0]["written_pages"]
print("# written between the first and last sample: %d, rates x intervals: %.1f" % (want, total))
assert want > 0 and abs(total - want) <= 1 + 0.001 * want, (total, want)
EOF

# --- the view in tmux, 80x24 -----------------------------------------------------------------------
# tmux needs a pseudo-terminal: a chroot or container without /dev/pts has none. That is the
# machine, not top: skip the view's checks there (the JSON checks above ran).
if ! python3 -c 'import os; os.close(os.openpty()[0])' 2>/dev/null; then
	echo "SKIP: $name: view in tmux: no pseudo-terminals here (/dev/pts)"
	[ "$fails" -eq 0 ]
	exit
fi
$TM new-session -d -s top -x 80 -y 24 "env PS1='$ ' TERM=xterm bash --norc --noprofile" || {
	fail "tmux new-session"
	exit 1
}
pane() { $TM capture-pane -p -t top; }
fmt() { $TM display-message -p -t top "$1"; }
run_top() {
	$TM send-keys -t top "$BIN -r $D top -i 0.5; echo rc=\$? >$D/rc" Enter
	until_true 100 eval 'pane | grep -q "^pagetrackd top: pid $SVC (running), 1 VM"'
}
shell_back() { until_true 100 test -s "$D/rc" && [ "$(fmt '#{alternate_on}')" = 0 ]; }
if run_top; then pass "view renders in 80x24"; else
	pane | sed 's/^/# /'
	fail "view renders in 80x24"
fi
screen=$(pane)
row=$(grep -E "^ +0 $VMM +ring +NO +2 stopped " <<<"$screen")
echo "# $row"
check "VM row: mode, coverage, command ID, state, written 448, last verdict 256/0/256" \
	eval '[[ $row =~ " 448 "+256" "+0" "+256 ]]'
check "alternate screen while it runs, cursor hidden" test "$(fmt '#{alternate_on}/#{cursor_flag}')" = 1/0
width=$(awk '{ if (length > m) m = length } END { print m + 0 }' <<<"$screen")
check "no line longer than 80 columns ($width)" test "$width" -le 80
$TM send-keys -t top q
check "q exits (status 0), main screen back" eval 'shell_back && grep -qx rc=0 "$D/rc"'
check "cursor visible again" test "$(fmt '#{cursor_flag}')" = 1
$TM send-keys -t top "stty -a >$D/stty" Enter
until_true 50 test -s "$D/stty"
check "terminal modes restored (icanon, echo)" \
	eval 'grep -qw icanon "$D/stty" && grep -qw echo "$D/stty" && ! grep -qw -- -icanon "$D/stty"'
rm -f "$D/rc"
run_top || fail "view renders again"
$TM send-keys -t top C-c
check "Ctrl-C exits (status 0), main screen and cursor back" \
	eval 'shell_back && grep -qx rc=0 "$D/rc" && [ "$(fmt "#{cursor_flag}")" = 1 ]'

# --- no service ------------------------------------------------------------------------------------
out=$("$BIN" -r "$D/nothing" top -n 1 2>&1)
rc=$?
check "no status.json: exit 1 and says why" eval '[ $rc -eq 1 ] && grep -q "is the service running" <<<"$out"'
[ "$fails" -eq 0 ]
