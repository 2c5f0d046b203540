#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# `make install`: pagetrackd, ptballoon, the device client library (static, shared with its
# SONAME, headers, pagetrack.pc), the manual pages, the systemd units, a default
# configuration (only if none exists) and the operator documentation.
#   BUILD    build directory (default build)
#   DESTDIR  staging root (default: none, install into the running system)
#   PREFIX   default /usr/local; LIBDIR ($PREFIX/lib), UNITDIR (/etc/systemd/system),
#            DOCDIR ($PREFIX/share/doc/pagetrack), MANDIR ($PREFIX/share/man) follow it
#            unless set. debian/rules sets them for the package.
# The units' paths (/usr/local/...) are rewritten to PREFIX. Enables nothing: see
# docs/OPERATIONS.md ("systemctl enable --now pagetrackd.socket pagetrackd.service").
set -eu
TOP=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$TOP/$BUILD ;; esac
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
LIBDIR=${LIBDIR:-$PREFIX/lib}
UNITDIR=${UNITDIR:-/etc/systemd/system}
DOCDIR=${DOCDIR:-$PREFIX/share/doc/pagetrack}
MANDIR=${MANDIR:-$PREFIX/share/man}
CONFDIR=/etc/pagetrack
VERSION=${VERSION:-$(cat "$TOP/VERSION")}
SONAME=libpagetrack.so.1

for f in pagetrackd ptballoon libpagetrack.a $SONAME man/pagetrackd.8; do
	[ -f "$BUILD/$f" ] || { echo "install: $BUILD/$f missing: run make progs first" >&2; exit 1; }
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
# A unit or template with /usr/local paths, written for this PREFIX and DOCDIR.
inst_sed() { # SRC DST
	mkdir -p "$(dirname "$DESTDIR$2")"
	sed -e "s|/usr/local/share/doc/pagetrack|$DOCDIR|g" -e "s|/usr/local/|$PREFIX/|g" \
		-e "s|@PREFIX@|$PREFIX|g" -e "s|@LIBDIR@|$LIBDIR|g" \
		-e "s|@INCLUDEDIR@|$PREFIX/include|g" -e "s|@VERSION@|$VERSION|g" "$1" >"$DESTDIR$2"
	chmod 0644 "$DESTDIR$2"
	say INSTALL "$2"
}

inst 0755 "$BUILD/pagetrackd" "$PREFIX/sbin/pagetrackd"
inst 0755 "$BUILD/ptballoon" "$PREFIX/bin/ptballoon"
inst 0644 "$BUILD/libpagetrack.a" "$LIBDIR/libpagetrack.a"
# The real file is named by its SONAME; libpagetrack.so is the link-time name.
inst 0644 "$BUILD/$SONAME" "$LIBDIR/$SONAME"
ln -sf $SONAME "$DESTDIR$LIBDIR/libpagetrack.so"
say LN "$LIBDIR/libpagetrack.so"
inst_sed "$TOP/pagetrack.pc.in" "$LIBDIR/pkgconfig/pagetrack.pc"
for h in "$TOP"/include/pagetrack/*.h; do
	inst 0644 "$h" "$PREFIX/include/pagetrack/$(basename "$h")"
done
for m in "$BUILD"/man/*.[0-9]; do
	inst 0644 "$m" "$MANDIR/man${m##*.}/$(basename "$m")"
done
inst_sed "$TOP/systemd/pagetrackd.service" "$UNITDIR/pagetrackd.service"
inst_sed "$TOP/systemd/pagetrackd.socket" "$UNITDIR/pagetrackd.socket"
for d in OPERATIONS.md PROTOCOL.md; do
	[ -f "$TOP/docs/$d" ] && inst 0644 "$TOP/docs/$d" "$DOCDIR/$d"
done
inst 0644 "$TOP/systemd/pagetrack.conf" "$DOCDIR/pagetrack.conf.default"
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
