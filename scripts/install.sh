#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# `make install`: pagetrackd, the device client library and headers, the systemd units, a
# default configuration (only if none exists) and the operator documentation.
#   BUILD    build directory (default build)
#   DESTDIR  staging root (default: none, install into the running system)
# Under /usr/local; the units point at /usr/local/sbin/pagetrackd. Enables nothing: see
# docs/OPERATIONS.md ("systemctl enable --now pagetrackd.socket pagetrackd.service").
set -eu
TOP=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$TOP/$BUILD ;; esac
DESTDIR=${DESTDIR:-}
PREFIX=/usr/local
UNITDIR=/etc/systemd/system
CONFDIR=/etc/pagetrack

for f in pagetrackd libpagetrack.a libpagetrack.so; do
	[ -f "$BUILD/$f" ] || { echo "install: $BUILD/$f missing: run make first" >&2; exit 1; }
done
if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
	echo "install: run as root (or set DESTDIR)" >&2
	exit 1
fi

say() { printf '  %-8s %s\n' "$1" "$DESTDIR$2"; }
inst() { # MODE SRC DST
	install -D -m "$1" "$2" "$DESTDIR$3"
	say INSTALL "$3"
}

inst 0755 "$BUILD/pagetrackd" $PREFIX/sbin/pagetrackd
inst 0644 "$BUILD/libpagetrack.a" $PREFIX/lib/libpagetrack.a
# The shared library's soname is libpagetrack.so.0; libpagetrack.so is the link-time name.
inst 0755 "$BUILD/libpagetrack.so" $PREFIX/lib/libpagetrack.so.0
ln -sf libpagetrack.so.0 "$DESTDIR$PREFIX/lib/libpagetrack.so"
say LN $PREFIX/lib/libpagetrack.so
for h in "$TOP"/include/pagetrack/*.h; do
	inst 0644 "$h" $PREFIX/include/pagetrack/"$(basename "$h")"
done
inst 0644 "$TOP/systemd/pagetrackd.service" $UNITDIR/pagetrackd.service
inst 0644 "$TOP/systemd/pagetrackd.socket" $UNITDIR/pagetrackd.socket
for d in OPERATIONS.md PROTOCOL.md; do
	[ -f "$TOP/docs/$d" ] && inst 0644 "$TOP/docs/$d" $PREFIX/share/doc/pagetrack/$d
done
inst 0644 "$TOP/systemd/pagetrack.conf" $PREFIX/share/doc/pagetrack/pagetrack.conf.default
if [ -e "$DESTDIR$CONFDIR/pagetrack.conf" ]; then
	say KEEP $CONFDIR/pagetrack.conf
else
	inst 0644 "$TOP/systemd/pagetrack.conf" $CONFDIR/pagetrack.conf
fi

if [ -z "$DESTDIR" ]; then
	command -v ldconfig >/dev/null && ldconfig
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload
		if systemctl -q is-active pagetrackd.service; then
			echo "pagetrackd.service is running the old binary: systemctl restart pagetrackd.service"
			echo "(the pinned programs keep tracking across the restart)"
		else
			echo "start it: systemctl enable --now pagetrackd.socket pagetrackd.service"
		fi
	fi
fi
