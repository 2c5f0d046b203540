#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# `make uninstall`: stops and disables the units, removes the BPF pins (programs detach, the
# write log is gone) and every file scripts/install.sh put in place. A configuration that
# differs from the shipped default is left in /etc/pagetrack.
#   DESTDIR  staging root: only its files are removed; no unit is stopped, no pin touched.
set -eu
TOP=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
LIBDIR=${LIBDIR:-$PREFIX/lib}
UNITDIR=${UNITDIR:-/etc/systemd/system}
DOCDIR=${DOCDIR:-$PREFIX/share/doc/pagetrack}
MANDIR=${MANDIR:-$PREFIX/share/man}
CONFDIR=/etc/pagetrack
BIN=$DESTDIR$PREFIX/sbin/pagetrackd

if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
	echo "uninstall: run as root (or set DESTDIR)" >&2
	exit 1
fi
say() { printf '  %-8s %s\n' "$1" "$2"; }
rm_f() {
	for f in "$@"; do
		if [ -e "$DESTDIR$f" ] || [ -L "$DESTDIR$f" ]; then
			rm -f "$DESTDIR$f"
			say RM "$DESTDIR$f"
		fi
	done
}

if [ -z "$DESTDIR" ]; then
	if [ -d /run/systemd/system ]; then
		for u in pagetrackd.service pagetrackd.socket; do
			if systemctl cat "$u" >/dev/null 2>&1; then
				systemctl disable --now "$u" 2>/dev/null || systemctl stop "$u" || true
				say STOP "$u"
			fi
		done
	fi
	# The links keep the programs attached after the service stops: unpinning detaches them.
	# pagetrackd reads the pin directory from /etc/pagetrack/pagetrack.conf.
	if [ -x "$BIN" ]; then
		"$BIN" uninstall || echo "uninstall: pagetrackd uninstall failed: pins may remain" >&2
	elif [ -d /sys/fs/bpf/pagetrack ]; then
		echo "uninstall: $BIN missing; remove the pins with: rm -r /sys/fs/bpf/pagetrack" >&2
	fi
	rm -rf /run/pagetrack
fi

# libpagetrack.so.0: the SONAME before 0.1.0.
rm_f "$PREFIX/sbin/pagetrackd" "$PREFIX/bin/ptballoon" "$LIBDIR/libpagetrack.a" \
	"$LIBDIR/libpagetrack.so" "$LIBDIR/libpagetrack.so.1" "$LIBDIR/libpagetrack.so.0" \
	"$LIBDIR/pkgconfig/pagetrack.pc" "$UNITDIR/pagetrackd.service" "$UNITDIR/pagetrackd.socket"
for h in "$TOP"/include/pagetrack/*.h; do
	rm_f "$PREFIX/include/pagetrack/$(basename "$h")"
done
for m in "$TOP"/man/*.scd; do
	m=$(basename "$m" .scd)
	rm_f "$MANDIR/man${m##*.}/$m"
done
rm_f "$DOCDIR/OPERATIONS.md" "$DOCDIR/PROTOCOL.md"
conf=$DESTDIR$CONFDIR/pagetrack.conf
if [ -f "$conf" ]; then
	if cmp -s "$conf" "$DESTDIR$DOCDIR/pagetrack.conf.default" ||
		cmp -s "$conf" "$TOP/systemd/pagetrack.conf"; then
		rm_f $CONFDIR/pagetrack.conf
	else
		say KEEP "$conf (changed from the default)"
	fi
fi
rm_f "$DOCDIR/pagetrack.conf.default"
for d in "$PREFIX/include/pagetrack" "$DOCDIR" "$LIBDIR/pkgconfig" $CONFDIR \
	"$UNITDIR/pagetrackd.service.d" "$UNITDIR/pagetrackd.socket.d"; do
	[ -d "$DESTDIR$d" ] && rmdir "$DESTDIR$d" 2>/dev/null && say RMDIR "$DESTDIR$d"
done
if [ -z "$DESTDIR" ]; then
	command -v ldconfig >/dev/null && ldconfig
	[ -d /run/systemd/system ] && systemctl daemon-reload
fi
exit 0
