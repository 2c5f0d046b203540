#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# systemd/pagetrackd.{service,socket} under a real systemd: PID 1 of a private PID, mount,
# UTS and IPC namespace, so nothing of the host's is started, stopped or installed.
#
# Inside the namespace, before systemd runs: tmpfs on /tmp, /var/tmp and /run (otherwise its
# tmpfiles clean-up would empty the machine's /tmp), a private /etc/systemd/system holding
# only our units (plus masks for the early-boot units that would touch the host), the build's
# pagetrackd at /usr/local/sbin/pagetrackd, /proc/sys read-only, /dev/console pointing at a
# log file, and no tracefs (the units must mount it). systemd is put in a cgroup of its own (removed at the end) and boots an
# empty target. The service gets a test-only pin directory and configuration through a
# drop-in, so a real pagetrackd on this machine is never disturbed.
#
# Prints PASS/FAIL/SKIP lines; exit 0, 1, or 77 when it cannot run here.
# shellcheck disable=SC2016 # single-quoted code run by eval, awk or bash -c
name=systemd
# shellcheck source-path=SCRIPTDIR source=../t.sh
. "$(dirname "$0")/../t.sh"
BIN=$BUILD/pagetrackd
BALLOON=$BUILD/ptballoon
PIN=/sys/fs/bpf/pagetrack-systest-$$
CG=pagetrack-systest-$$
SOCK=/run/pagetrack/balloon.sock
NSPID='' W='' MARK=''
DEFPIN_NEW=
[ -e /sys/fs/bpf/pagetrack ] || DEFPIN_NEW=yes

[ "$(id -u)" -eq 0 ] || skip "needs root"
for t in unshare nsenter systemctl systemd-analyze mountpoint python3; do
	command -v $t >/dev/null || skip "$t not installed"
done
[ -x /lib/systemd/systemd ] || skip "no /lib/systemd/systemd"
[ -x "$BIN" ] && [ -x "$BALLOON" ] || skip "build first (make)"
[ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" = bpf_fs ] || skip "bpffs not mounted on /sys/fs/bpf"
unshare --pid --fork --mount --mount-proc true 2>/dev/null || skip "unshare --pid --mount fails here"

# --- cleanup --------------------------------------------------------------------------------
cg_dirs() { # the hierarchies where systemd may create cgroups
	local d
	for d in /sys/fs/cgroup /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup/*; do
		[ -f "$d/cgroup.procs" ] && echo "$d"
	done | sort -u
}
cg_join_dirs() { # the ones systemd is put in (cpuset would need cpus and mems set up first)
	local d
	for d in /sys/fs/cgroup /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup/devices \
		/sys/fs/cgroup/pids; do
		[ -f "$d/cgroup.procs" ] && echo "$d"
	done
}
cg_remove() { # removes every cgroup under $1/$CG, deepest first (they are empty by now)
	local d=$1/$CG
	[ -d "$d" ] || return 0
	find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
	[ ! -d "$d" ]
}
kill_ns() {
	[ -n "$NSPID" ] || return 0
	kill -KILL "$NSPID" 2>/dev/null # PID 1 of the namespace: the kernel kills the rest
	for _ in $(seq 50); do
		kill -0 "$NSPID" 2>/dev/null || break
		sleep 0.1
	done
	wait "$UNSHARE" 2>/dev/null
	NSPID=
}
cleanup() {
	kill_ns
	local d
	for d in $(cg_dirs); do cg_remove "$d"; done
	[ -d "$PIN" ] && "$BIN" -p "$PIN" uninstall >/dev/null 2>&1
	# The unit's ExecStartPre makes the default pin directory on the host's bpffs: remove it
	# again if this test made it (empty: the test's service pinned elsewhere).
	[ -n "$DEFPIN_NEW" ] && rmdir /sys/fs/bpf/pagetrack 2>/dev/null
	[ -n "$MARK" ] && rm -f "$MARK"
	[ -n "$W" ] && rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# --- the private root pieces ------------------------------------------------------------------
# Not under /tmp, /var/tmp or /run, which the namespace hides behind its own tmpfs; not in the
# build directory either, since a checkout may itself live under /tmp (CI clones anywhere).
W=$(mktemp -d /var/lib/pagetrack-systest.XXXXXX) || exit 1
MARK=$(mktemp /tmp/pagetrack-systest-mark.XXXXXX) # must survive the namespace's systemd
U=$W/units
mkdir -p "$U/pagetrackd.service.d" "$W/sbin"
cp "$TOP/systemd/pagetrackd.service" "$TOP/systemd/pagetrackd.socket" "$U/"
cp "$BIN" "$W/sbin/pagetrackd"
cp "$BALLOON" "$W/sbin/ptballoon" # the build directory may be hidden (under /tmp)
cat >"$U/pt-test.target" <<'EOF'
[Unit]
Description=pagetrack test boot target (nothing)
DefaultDependencies=no
EOF
# Early-boot units that would write to the shared kernel, /var, /etc or the host's devices.
for u in kmod-static-nodes.service proc-sys-fs-binfmt_misc.automount systemd-binfmt.service \
	sys-fs-fuse-connections.mount sys-kernel-config.mount sys-kernel-debug.mount \
	dev-hugepages.mount dev-mqueue.mount tmp.mount systemd-firstboot.service \
	systemd-journal-flush.service systemd-machine-id-commit.service \
	systemd-modules-load.service systemd-pcrphase.service systemd-pcrphase-sysinit.service \
	systemd-random-seed.service systemd-repart.service systemd-sysctl.service \
	systemd-sysusers.service systemd-tmpfiles-setup-dev.service \
	systemd-tmpfiles-setup.service systemd-tmpfiles-clean.timer \
	systemd-tmpfiles-clean.service systemd-update-utmp.service systemd-remount-fs.service \
	systemd-udevd.service systemd-udev-trigger.service systemd-udev-settle.service \
	systemd-hwdb-update.service systemd-journald-audit.socket ldconfig.service \
	getty.target console-getty.service systemd-logind.service dbus.socket dbus.service \
	swap.target cryptsetup.target veritysetup.target integritysetup.target; do
	ln -s /dev/null "$U/$u"
done
# Test-only pin directory and configuration; the real /etc/pagetrack is left alone.
cat >"$W/pagetrack.conf" <<EOF
# test configuration
pin-dir = $PIN
verbose = no
EOF
# The unit starts only where /dev/kvm exists; on a machine without it, the test lifts that
# condition so that everything else about the unit is still checked.
nokvm_dropin=
[ -c /dev/kvm ] || nokvm_dropin=$'[Unit]\nConditionPathExists=\n'
cat >"$U/pagetrackd.service.d/test.conf" <<EOF
${nokvm_dropin}[Service]
ConfigurationDirectory=
ExecStart=
ExecStart=/usr/local/sbin/pagetrackd -c $W/pagetrack.conf run
# The unit makes only its default pin directory writable: the test's one too.
ExecStartPre=+/bin/mkdir -p -m 0700 $PIN
ReadWritePaths=-$PIN
# A sanitizer build (make SANITIZE=...): LeakSanitizer's stop-the-world cannot run inside the
# unit's seccomp filter, and would turn a clean stop into exit status 1. No effect otherwise.
Environment=ASAN_OPTIONS=detect_leaks=0
EOF
: >"$W/console"

# --- boot ------------------------------------------------------------------------------------
for d in $(cg_join_dirs); do mkdir -p "$d/$CG"; done
# shellcheck disable=SC2016
unshare --pid --fork --kill-child --mount --mount-proc --uts --ipc --propagation private \
	env W="$W" CG="$CG" CGDIRS="$(cg_join_dirs | tr '\n' ' ')" /bin/bash -ec '
	for d in $CGDIRS; do echo 0 >"$d/$CG/cgroup.procs"; done
	mount -t tmpfs -o mode=1777 tmpfs /tmp
	mount -t tmpfs -o mode=1777 tmpfs /var/tmp
	mount -t tmpfs -o mode=755 tmpfs /run
	mount --bind "$W/units" /etc/systemd/system
	mount --bind "$W/sbin" /usr/local/sbin
	mount --bind /proc/sys /proc/sys
	mount -o remount,bind,ro /proc/sys
	mount --bind "$W/console" /dev/console
	umount /sys/kernel/tracing 2>/dev/null || true # the units must mount it again
	exec </dev/null >"$W/console" 2>&1
	exec env -i container=pagetrack-test /lib/systemd/systemd --unit=pt-test.target \
		--show-status=no
' 2>/dev/null &
UNSHARE=$!
for _ in $(seq 50); do # the namespace's PID 1 is the child of unshare
	NSPID=$(pgrep -P "$UNSHARE" 2>/dev/null | head -1)
	[ -n "$NSPID" ] && [ "$(cat /proc/"$NSPID"/comm 2>/dev/null)" = systemd ] && break
	NSPID=
	sleep 0.1
done
if [ -z "$NSPID" ]; then
	fail "namespace systemd did not start"
	cat "$W/console"
	exit 1
fi
ns() { nsenter -t "$NSPID" -a "$@"; }
sctl() { ns systemctl "$@"; }
prop() { sctl show -P "$2" "$1" 2>/dev/null; }
for _ in $(seq 100); do
	s=$(sctl is-system-running 2>/dev/null) && break
	case $s in running | degraded) break ;; esac
	sleep 0.1
done
echo "# namespace systemd pid $NSPID: $s"

wait_state() { # UNIT ACTIVE SUB [TRIES]: wait for ActiveState/SubState
	for _ in $(seq "${4:-150}"); do
		[ "$(prop "$1" ActiveState)/$(prop "$1" SubState)" = "$2/$3" ] && return 0
		sleep 0.1
	done
	echo "# $1: $(prop "$1" ActiveState)/$(prop "$1" SubState), wanted $2/$3"
	return 1
}
json_get() { # FILE KEY: a top-level key of status.json
	ns python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))[sys.argv[2]]))' "$1" "$2"
}
journal() { ns journalctl -q -o cat -u pagetrackd.service --no-pager 2>/dev/null; }

# --- static checks ---------------------------------------------------------------------------
# --man=no: Documentation=man:... must not need man-db (a minimal host has no man pages).
out=$(ns systemd-analyze verify --man=no /etc/systemd/system/pagetrackd.socket \
	/etc/systemd/system/pagetrackd.service 2>&1)
if [ -z "$out" ]; then pass "systemd-analyze verify"; else
	echo "$out" | sed 's/^/# /'
	fail "systemd-analyze verify"
fi
sec=$(systemd-analyze security --offline=true "$TOP/systemd/pagetrackd.service" 2>&1 |
	sed -n 's/.*Overall exposure level for pagetrackd.service: \([0-9.]*\).*/\1/p')
echo "# exposure: ${sec:-?}"
check "security exposure ${sec:-?} <= 1.3" awk -v e="${sec:-99}" 'BEGIN { exit !(e <= 1.3) }'
check "LimitNOFILE above max-conns + 256" test "$(prop pagetrackd.service LimitNOFILE)" -ge 1280

# --- a VMM that was running before the service (a fresh start: nothing pinned) ---------------
# A 64-bit root process with every capability, as an operator's running VMMs are when pagetrack
# is installed: the unit's service (CAP_BPF CAP_PERFMON only, no CAP_SYS_PTRACE) may not open
# its /proc/PID/exe, so only kernel state read by BPF can tell that it runs 64-bit code. It
# waits on a FIFO, then execs ptballoon (same pid, same start time), which registers its own
# memory in the userfaultfd mode (no /dev/kvm needed) once the service is up.
mkfifo "$W/vmm.go"
ns bash -c 'read -r _ <"$1"; exec "$2" -s "$3" uffd-memory 4M' sh "$W/vmm.go" \
	/usr/local/sbin/ptballoon "$SOCK" >"$W/vmm.out" 2>&1 &
VMM_NS=$!
vmm_pid=''
for _ in $(seq 50); do # its pid inside the namespace, where the service takes VMM pids
	vmm_pid=$(ns pgrep -f "read -r _ <" 2>/dev/null | head -1)
	[ -n "$vmm_pid" ] && break
	sleep 0.1
done
echo "# VMM started before the service: pid $vmm_pid in the namespace"
sleep 0.05 # /proc start times count 10 ms ticks: it starts clearly before the service

# --- start: READY=1 after attach + canary + listen -------------------------------------------
t0=$(date +%s.%N)
sctl start pagetrackd.socket pagetrackd.service 2>&1 | sed 's/^/# /'
if wait_state pagetrackd.service active running; then
	pass "active (running) after READY=1 ($(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'))"
else
	fail "service did not become active"
	journal | tail -30 | sed 's/^/# /'
fi
check "tracefs (unmounted in the namespace) mounted again before the start" \
	ns mountpoint -q /sys/kernel/tracing
st=$(prop pagetrackd.service StatusText)
echo "# StatusText: $st"
# (The tracker keys VMs by init-namespace tgid: inside this PID namespace the canary's own pid
# differs, so "NOT tracked" is expected here; test_ops.sh checks real coverage.)
check "StatusText reports coverage" grep -q 'dirty-ring: ' <<<"$st"
check "socket unit listening, mode 0660" test "$(prop pagetrackd.socket SubState)/$(ns stat -c %a "$SOCK")" = "running/660"
ping_ok() { ns /usr/local/sbin/ptballoon -s "$SOCK" ping -n "$1" >/dev/null; }
check "device ping through the activated socket" ping_ok 5
# The VMM from before the start registers now: it runs 64-bit code, which the start's task
# iterator read from kernel state, so REGISTER must not keep its VM for want of a readable
# executable (coverage without PT_WHY_UNKNOWN_MEM, 0x8, and no "32-bit syscalls" warning).
echo go >"$W/vmm.go"
wait "$VMM_NS"
reg=$(cat "$W/vmm.out")
echo "# $reg"
cov=$(sed -n 's/.*coverage 0x\([0-9a-f]*\).*/\1/p' <<<"$reg")
check "VMM running before a fresh start: registered, coverage 0x${cov:-?} without the 32-bit keep (0x8)" \
	eval '[ -n "$vmm_pid" ] && grep -q "registered pid $vmm_pid " <<<"$reg" && [ $((0x${cov:-8} & 8)) -eq 0 ]'
if grep -q "pid $vmm_pid) may make 32-bit syscalls" <<<"$(journal)"; then
	grep "pid $vmm_pid)" <<<"$(journal)" | sed 's/^/# /'
	fail "VMM running before a fresh start: kept as a possible 32-bit VMM"
else
	pass "VMM running before a fresh start: not taken for a 32-bit VMM"
fi
check "start: existing processes judged by the task iterator" \
	grep -q "existing processes looked at for 32-bit code" <<<"$(journal)"

pid1=$(prop pagetrackd.service MainPID)
[ "${pid1:-0}" -gt 1 ] 2>/dev/null || pid1=0
caps=$(ns awk '/^CapBnd/ { b = $2 } /^CapEff/ { e = $2 } END { print b "/" e }' /proc/"$pid1"/status)
nnp=$(ns awk '/^NoNewPrivs/ { print $2 }' /proc/"$pid1"/status)
seccomp=$(ns awk '/^Seccomp:/ { print $2 }' /proc/"$pid1"/status)
# CAP_PERFMON = 38, CAP_BPF = 39: bounded to those two, and all dropped once serving.
check "sandbox: CapBnd/CapEff=$caps (CAP_BPF CAP_PERFMON, none effective), NoNewPrivs=$nnp, Seccomp=$seccomp" \
	test "$caps/$nnp/$seccomp" = "000000c000000000/0000000000000000/1/2"
check "first start: maps_reused false" test "$(json_get /run/pagetrack/status.json maps_reused 2>/dev/null)" = false
sleep 1.2
wd=$(prop pagetrackd.service WatchdogTimestampMonotonic)
check "watchdog pings arrive (WatchdogUSec=$(prop pagetrackd.service WatchdogUSec))" test "${wd:-0}" -gt 0

# --- reload: SIGHUP, RELOADING=1 ... READY=1 --------------------------------------------------
sctl reload pagetrackd.service 2>&1 | sed 's/^/# /'
sleep 0.3
check "reload: still active, same pid" test "$(prop pagetrackd.service ActiveState)/$(prop pagetrackd.service MainPID)" = "active/$pid1"
check "reload: log says configuration reloaded" grep -q "configuration reloaded" <<<"$(journal)"

# --- kill -9: Restart=on-failure, the pinned maps and links carried on ------------------------
case $pid1 in [0-9]*[0-9] | [2-9]) ns kill -KILL "$pid1" ;; *) fail "no main pid ($pid1)" ;; esac
for _ in $(seq 100); do
	pid2=$(prop pagetrackd.service MainPID)
	[ "${pid2:-0}" != 0 ] && [ "$pid2" != "$pid1" ] && break
	sleep 0.1
done
if wait_state pagetrackd.service active running && [ "$pid2" != "$pid1" ]; then
	pass "kill -9: restarted by systemd (NRestarts=$(prop pagetrackd.service NRestarts), pid $pid1 -> $pid2)"
else
	fail "kill -9: not restarted"
	journal | tail -20 | sed 's/^/# /'
fi
for _ in $(seq 30); do # status.json of the new process
	[ "$(json_get /run/pagetrack/status.json pid 2>/dev/null)" = "$pid2" ] && break
	sleep 0.1
done
check "after restart: maps_reused true (tracking continued)" test "$(json_get /run/pagetrack/status.json maps_reused 2>/dev/null)" = true
check "after restart: log says maps reused" grep -q "maps reused" <<<"$(journal)"
check "after restart: same socket still served" ping_ok 1

# --- stop: clean exit, links stay pinned ---------------------------------------------------------
sctl stop pagetrackd.service 2>&1 | sed 's/^/# /'
as=$(prop pagetrackd.service ActiveState)
res=$(prop pagetrackd.service Result)
code=$(prop pagetrackd.service ExecMainStatus)
check "stop: inactive, Result=$res, exit status $code" test "$as/$res/$code" = "inactive/success/0"
nl=$(find "$PIN" -maxdepth 1 -name 'link_*' 2>/dev/null | wc -l)
check "stop: program links still pinned ($nl links)" test "$nl" -ge 1
check "stop: runtime directory and socket preserved" ns test -S "$SOCK"
sctl stop pagetrackd.socket

# --- teardown ------------------------------------------------------------------------------------
# shellcheck disable=SC2034 # used through eval
nspid_was=$NSPID
kill_ns
d_left=0
for d in $(cg_dirs); do cg_remove "$d" || d_left=$((d_left + 1)); done
check "teardown: namespace gone, no cgroup left ($d_left)" eval '[ "$d_left" -eq 0 ] && ! kill -0 "$nspid_was" 2>/dev/null'
check "teardown: host /tmp untouched" test -f "$MARK"
"$BIN" -p "$PIN" uninstall >/dev/null
check "teardown: test pins removed" test ! -e "$PIN"
[ "$fails" -eq 0 ]
