#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Runs pagetrack's KVM-backed tests on a machine without /dev/kvm, inside a QEMU guest that has
# one: QEMU's software emulator (TCG) emulates AMD SVM with nested paging, so a Debian kernel
# booted in it can load kvm_amd and run the tests' minivm guests as real (nested) KVM guests,
# with the dirty ring and the kvm tracepoints of that kernel.
#
# Usage: tests/nested/run-kvm.sh [filter[:cases]...]
#   Each filter is a test name substring as tests/run.sh takes it, optionally with a case name
#   substring after a colon (test_minivm:ring); without one, every test whose source asks for
#   /dev/kvm or 32-bit processes runs (kvm_tests below). Prints the summed "N passed, N failed, N skipped" line and
#   exits 0 only if the guest ran and nothing failed.
#
# Nothing is installed on the host but Debian packages (qemu-system-x86, busybox-static, kmod,
# xz-utils, cpio); the guest kernel is unpacked into the cache directory, never into /boot or
# /lib/modules. The guest's root file system is the host's own /, exported read-only over
# virtio-9p, so the binaries built on the host in build/ run unchanged inside; the worktree is
# exported writable at the same path, and /tmp, /run, /var/tmp are the guest's own tmpfs.
#
# Environment:
#   PT_NESTED_CACHE    cache directory (kernel, initramfs, per-run job dirs); /var/tmp/nested-cache
#   PT_NESTED_SUITE    Debian suite for the kernel: bookworm-backports (default, 6.12: it has
#                      PAGEMAP_SCAN) or bookworm (6.1)
#   PT_NESTED_CPUS     guest vCPUs (default 2), PT_NESTED_MEM guest memory (default 4G)
#   PT_NESTED_TIMEOUT  bound on the whole QEMU run in seconds (default 10800)
#   PT_TEST_TIMEOUT    per-test bound inside (tests/run.sh), default here 1800: TCG is slow
#   PT_TEST_TIME_SCALE factor for the time bounds of guards with a minimum (tests/t.h), default
#                      here 10
#   BUILD              build directory, relative to the worktree or absolute (default build)
#   PT_NESTED_CMD      instead of the tests, run this bash command in the worktree inside the
#                      guest (e.g. 'build/tests/test_minivm ring_log; dmesg | tail')
set -eu

TOP=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${PT_NESTED_CACHE:-/var/tmp/nested-cache}
SUITE=${PT_NESTED_SUITE:-bookworm-backports}
BUILD=${BUILD:-build}
KDIR=$CACHE/kernel-$SUITE

log() { echo "run-kvm: $*" >&2; }

# Host tools, from Debian's archive. The script only installs what is missing.
need_tools() {
	local missing=
	command -v qemu-system-x86_64 >/dev/null || missing="$missing qemu-system-x86"
	[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q static ||
		missing="$missing busybox-static"
	command -v depmod >/dev/null || missing="$missing kmod"
	command -v xz >/dev/null || missing="$missing xz-utils"
	command -v cpio >/dev/null || missing="$missing cpio"
	command -v file >/dev/null || missing="$missing file"
	[ -z "$missing" ] && return 0
	log "installing$missing"
	# shellcheck disable=SC2086 # a list of package names
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing >&2
}

# apt with private lists in the cache, so that adding bookworm-backports touches nothing of the
# host's apt configuration.
cache_apt() {
	local tool=$1
	shift
	"$tool" -o Dir::Etc::SourceList="$CACHE/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null \
		-o Dir::State::Lists="$CACHE/apt/lists" -o Dir::Cache="$CACHE/apt" "$@"
}

# Debian's current kernel of $SUITE, unpacked into $KDIR (boot/vmlinuz-*, lib/modules/*).
fetch_kernel() {
	ls "$KDIR"/boot/vmlinuz-* >/dev/null 2>&1 && return 0
	log "fetching the kernel of $SUITE into $KDIR"
	mkdir -p "$CACHE/apt/lists/partial" "$CACHE/apt/archives/partial" "$CACHE/debs"
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]" \
		"http://deb.debian.org/debian $SUITE main" >"$CACHE/apt/sources.list"
	cache_apt apt-get -q update >&2
	# linux-image-amd64 is a metapackage; its one dependency is the versioned kernel.
	local pkg
	pkg=$(cache_apt apt-cache show linux-image-amd64 | sed -n 's/^Depends: \([^ ,]*\).*/\1/p' |
		head -1)
	[ -n "$pkg" ] || { log "no linux-image-amd64 in $SUITE"; return 1; }
	rm -f "$CACHE"/debs/*.deb
	(cd "$CACHE/debs" && cache_apt apt-get -q download "$pkg" >&2)
	rm -rf "$KDIR.tmp"
	dpkg-deb -x "$CACHE"/debs/"$pkg"_*.deb "$KDIR.tmp"
	depmod -b "$KDIR.tmp" "$(ls "$KDIR.tmp/lib/modules")"
	mv "$KDIR.tmp" "$KDIR"
}

# The guest's first program (busybox sh): mounts the host's / (9p, read-only) with the guest's
# own proc, sys, dev, bpffs, tracefs, debugfs, cgroup2, tmpfs on /tmp /run /var/tmp, a tmpfs
# overlay on /var/lib, the worktree (9p, writable) at its host path and the job directory at
# /run/pt-job; loads kvm_amd;
# runs /run/pt-job/cmd chrooted and stores its exit status in /run/pt-job/rc; powers off.
write_init() {
	cat >"$1" <<'EOF'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /lib/mod/$m.ko || echo "init: insmod $m failed"; done
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
work=$(arg pt_work)
o=trans=virtio,version=9p2000.L,msize=512000
R=/newroot
mkdir -p $R
mount -t 9p -o $o,ro,cache=loose root $R || { echo "init: no 9p root"; poweroff -f; }
for d in tmp run var/tmp; do mount -t tmpfs -o mode=1777 tmpfs $R/$d; done
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t bpf bpf $R/sys/fs/bpf
mount -t tracefs tracefs $R/sys/kernel/tracing
mount -t debugfs debugfs $R/sys/kernel/debug
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup
# /var/lib writable (tests make their directories there): the host's, under a tmpfs overlay.
mkdir -p /ovl && mount -t tmpfs tmpfs /ovl && mkdir /ovl/u /ovl/w
mount -t overlay overlay -o lowerdir=$R/var/lib,upperdir=/ovl/u,workdir=/ovl/w $R/var/lib ||
	echo "init: no overlay on /var/lib"
mkdir -p $R/run/pt-job $R$work
mount -t 9p -o $o job $R/run/pt-job
mount -t 9p -o $o work $R$work
echo "init: kernel $(uname -r), $(nproc) cpus, /dev/kvm: $(ls /dev/kvm 2>&1)"
chroot $R /bin/bash -c 'cd / && /bin/bash /run/pt-job/cmd 2>&1 | tee /run/pt-job/out;
	echo ${PIPESTATUS[0]} >/run/pt-job/rc'
sync
umount $R$work $R/run/pt-job
poweroff -f
EOF
	chmod +x "$1"
}

# Modules the guest needs before its root exists (9p over virtio; virtio_pci is a module in
# Debian's 6.1, built in later) and for /dev/kvm, with their dependencies in load order,
# decompressed (busybox insmod reads plain .ko; built-in ones are skipped).
MODULES="virtio_pci 9pnet_virtio 9p overlay kvm_amd"

build_initramfs() {
	local kver=$1 out=$2 dir m f name
	[ -s "$out" ] && [ "$out" -nt "$0" ] && return 0
	log "building $out"
	dir=$(mktemp -d "$CACHE/initramfs.XXXXXX")
	mkdir -p "$dir"/{bin,proc,sys,dev,lib/mod}
	cp /bin/busybox "$dir/bin/"
	for a in sh mount umount insmod mkdir sed cat ls echo poweroff chroot sync uname nproc; do
		ln -s busybox "$dir/bin/$a"
	done
	: >"$dir/modules.order"
	for m in $MODULES; do
		for f in $(modprobe -d "$KDIR" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'); do
			name=$(basename "$f" | sed 's/\.ko.*//')
			grep -qx "$name" "$dir/modules.order" && continue
			case $f in
			*.xz) xz -dc "$f" >"$dir/lib/mod/$name.ko" ;;
			*.zst) zstd -dc "$f" >"$dir/lib/mod/$name.ko" ;;
			*) cp "$f" "$dir/lib/mod/$name.ko" ;;
			esac
			echo "$name" >>"$dir/modules.order"
		done
	done
	write_init "$dir/init"
	(cd "$dir" && find . | cpio -o -H newc --quiet | gzip -1) >"$out.tmp"
	mv "$out.tmp" "$out"
	rm -rf "$dir"
}

# Test programs whose source asks for KVM (t_need_kvm, a minivm guest; scripts that look for
# /dev/kvm) or for 32-bit processes (ia32 emulation): the default selection. test_uffd runs only
# its kvm_ cases: the others run on the host in `make test`, and their 64 GiB userfaultfd scans
# take a long time under emulation.
# test_systemd.sh does not run here: it installs into / (read-only in the guest) and boots
# systemd in a namespace; it needs no guest either (without /dev/kvm it lifts the condition).
kvm_tests() {
	(
		grep -l 't_need_kvm\|minivm_create' "$TOP"/tests/*/test_*.c
		# 32-bit processes: hosts like this one boot with ia32 emulation off
		grep -l 'ia32 emulation' "$TOP"/tests/*/test_*.c
		grep -l -- '-c /dev/kvm\|kvm.*usable' "$TOP"/tests/*/test_*.sh
	) | xargs -n1 basename | sed 's/\.c$//; s/^test_uffd$/test_uffd:kvm_/' |
		grep -vx 'test_systemd.sh'
}

# The job the guest runs: each filter through tests/run.sh, then the summed counts; or, for a
# look around, the command in PT_NESTED_CMD (bash, in the worktree) and its exit status.
# shellcheck disable=SC2016 # the $ in single quotes are the guest's
write_job() {
	local job=$1 t cases
	shift
	{
		echo "cd '$TOP' || exit 1"
		echo "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
		echo "export BUILD='$BUILD' PT_TEST_TIMEOUT=${PT_TEST_TIMEOUT:-1800}"
		# Guards that run until a minimum within a time bound get 10 times the time.
		echo "export PT_TEST_TIME_SCALE=${PT_TEST_TIME_SCALE:-10}"
		echo "echo \"guest: \$(uname -r); /dev/kvm: \$(ls -l /dev/kvm 2>&1)\""
		if [ -n "${PT_NESTED_CMD:-}" ]; then
			printf '%s\n' "$PT_NESTED_CMD"
			return 0
		fi
		echo 'p=0 f=0 s=0'
		for t in "$@"; do
			cases=
			[[ $t == *:* ]] && cases=${t#*:}
			echo "PT_CASES='$cases' tests/run.sh '${t%%:*}' | tee /tmp/run.out"
			echo "set -- \$(tail -1 /tmp/run.out)"
			echo 'p=$((p + ${1:-0})) f=$((f + ${3:-1})) s=$((s + ${5:-0}))'
		done
		echo 'echo "$p passed, $f failed, $s skipped"'
		echo '[ "$f" -eq 0 ]'
	} >"$job/cmd"
}

main() {
	local kver kernel initrd rc filters
	need_tools
	fetch_kernel
	kver=$(ls "$KDIR/lib/modules")
	kernel=$(ls "$KDIR"/boot/vmlinuz-*)
	initrd=$CACHE/initramfs-$kver.cpio.gz
	build_initramfs "$kver" "$initrd"
	case $BUILD in
	/*) [ -x "$BUILD/tests/test_minivm" ] ;;
	*) [ -x "$TOP/$BUILD/tests/test_minivm" ] ;;
	esac || { log "build $BUILD first: make -j2 all"; exit 1; }

	if [ $# -gt 0 ]; then filters="$*"; else filters=$(kvm_tests | tr '\n' ' '); fi
	job=$(mktemp -d "$CACHE/job.XXXXXX")
	trap 'rm -rf "$job"' EXIT
	# shellcheck disable=SC2086
	write_job "$job" $filters
	log "kernel $kver, tests: $filters"

	# -cpu max under TCG has SVM with nested paging (npt), which kvm_amd needs for its guests.
	# thread=single: with multi-threaded TCG the guest kernel's live code patching (int3 then
	# bytes, as attaching a tracepoint flips a static key) raced and oopsed on a stale int3
	# in syscall_exit_to_user_mode_prepare; one thread running the vCPUs in turn does not.
	local start=$SECONDS
	timeout -k 30 "${PT_NESTED_TIMEOUT:-10800}" qemu-system-x86_64 \
		-accel tcg,thread=single -cpu max -smp "${PT_NESTED_CPUS:-2}" -m "${PT_NESTED_MEM:-4G}" \
		-nographic -no-reboot -nic none \
		-kernel "$kernel" -initrd "$initrd" \
		-append "console=ttyS0 panic=-1 loglevel=4 mitigations=off pt_work=$TOP" \
		-virtfs local,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap \
		-virtfs local,path="$TOP",mount_tag=work,security_model=none,multidevs=remap \
		-virtfs local,path="$job",mount_tag=job,security_model=none </dev/null >&2 || true
	log "guest ran $((SECONDS - start)) s"
	if [ ! -s "$job/rc" ]; then
		log "the guest did not finish the job (no exit status)"
		echo "0 passed, 1 failed, 0 skipped"
		return 1
	fi
	[ -n "${PT_NESTED_CMD:-}" ] || tail -1 "$job/out"
	rc=$(cat "$job/rc")
	return "$rc"
}

main "$@"
