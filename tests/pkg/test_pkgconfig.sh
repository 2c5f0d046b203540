#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The installed client library, as a VMM developer meets it: `make install` into a DESTDIR,
# then pkg-config alone (PKG_CONFIG_PATH + PKG_CONFIG_SYSROOT_DIR pointing into the DESTDIR)
# gives the flags to build the example device, user/tools/ptballoon.c, against the installed
# headers and libpagetrack.so.1; the result runs (`--help`). Also: the SONAME, the symbol
# versions (exactly the PT_API functions of the headers, all at LIBPAGETRACK_1, as the
# generated version script lists them), a static link through `pkg-config --static`, and that
# uninstall.sh removes it all again.
name=pkgconfig
# shellcheck source-path=SCRIPTDIR source=../t.sh
. "$(dirname "$0")/../t.sh"
for t in pkg-config readelf objdump cc; do
	command -v $t >/dev/null || skip "$t not installed (make deps)"
done
for f in pagetrackd ptballoon libpagetrack.a libpagetrack.so.1 man/pagetrackd.8; do
	[ -e "$BUILD/$f" ] || skip "$BUILD/$f missing: make all man"
done
T=$(mktemp -d /tmp/pagetrack-pkgconfig.XXXXXX)
trap 'rm -rf "$T"' EXIT
D=$T/root
VERSION=$(cat "$TOP/VERSION")

# --- the library as built -------------------------------------------------------------------
so=$BUILD/libpagetrack.so.1
check "SONAME is libpagetrack.so.1" \
	test "$(readelf -d "$so" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')" = libpagetrack.so.1
api=$(grep -ho 'PT_API[^(]*(' "$TOP"/include/pagetrack/*.h | grep -o 'pt_[a-z_0-9]*(' | tr -d '(' | sort)
map=$(grep -o '^[[:space:]]*pt_[a-z_0-9]*;' "$BUILD/libpagetrack.map" | tr -d ' \t;' | sort)
exported=$(objdump -T "$so" | awk '$2 == "g" && $4 == ".text" { print $6 " " $7 }' | sort)
check "version script lists exactly the PT_API functions ($(wc -w <<<"$api"))" test "$api" = "$map"
check "exports exactly the PT_API functions, each at LIBPAGETRACK_1" \
	test "$exported" = "$(sed 's/^/LIBPAGETRACK_1 /' <<<"$api")"
other=$(objdump -T "$so" | awk '$2 == "g" && $4 != "*UND*" && $7 !~ /^pt_client_/ && $7 != "LIBPAGETRACK_1"')
check "no other symbol exported" test -z "$other"

# --- make install into a DESTDIR ------------------------------------------------------------
BUILD=$BUILD DESTDIR=$D "$TOP/scripts/install.sh" >"$T/install.log" 2>&1 || cat "$T/install.log"
L=$D/usr/local/lib
check "installed: libpagetrack.so.1, libpagetrack.so -> libpagetrack.so.1, .a, .pc, headers" \
	test -f "$L/libpagetrack.so.1" -a "$(readlink "$L/libpagetrack.so")" = libpagetrack.so.1 \
	-a -f "$L/libpagetrack.a" -a -f "$L/pkgconfig/pagetrack.pc" \
	-a -f "$D/usr/local/include/pagetrack/client.h" -a -f "$D/usr/local/include/pagetrack/proto.h"
export PKG_CONFIG_PATH=$L/pkgconfig PKG_CONFIG_SYSROOT_DIR=$D PKG_CONFIG_LIBDIR=/nonexistent
check "pkg-config --modversion pagetrack = $VERSION" test "$(pkg-config --modversion pagetrack)" = "$VERSION"
flags=$(pkg-config --cflags --libs pagetrack | sed 's/ *$//')
echo "# pkg-config --cflags --libs pagetrack: $flags"
check "flags point into the installed tree" test "$flags" = "-I$D/usr/local/include -L$L -lpagetrack"

# --- the example device, built with nothing but pkg-config -------------------------------------
# (No -I of the source tree: the file is copied out, so only the installed headers are found.)
cp "$TOP/user/tools/ptballoon.c" "$T/"
# shellcheck disable=SC2046
if (cd "$T" && cc -std=gnu11 -Wall -Werror ptballoon.c $(pkg-config --cflags --libs pagetrack) \
	-o ptballoon) 2>"$T/cc.log"; then
	pass "ptballoon.c builds with pkg-config's flags only"
else
	sed 's/^/# /' "$T/cc.log"
	fail "ptballoon.c builds with pkg-config's flags only"
fi
needed=$(readelf -d "$T/ptballoon" 2>/dev/null | sed -n 's/.*Shared library: \[\(libpagetrack[^]]*\)\]/\1/p')
check "it needs libpagetrack.so.1 (needed: ${needed:-none})" test "$needed" = libpagetrack.so.1
vers=$(objdump -T "$T/ptballoon" 2>/dev/null | awk '/pt_client_/ { print $5 }' | tr -d '()' | sort -u)
check "its pt_client_* references are bound to LIBPAGETRACK_1 (${vers//$'\n'/ })" \
	test "$vers" = LIBPAGETRACK_1
out=$(LD_LIBRARY_PATH=$L "$T/ptballoon" --help 2>&1)
rc=$?
check "installed build runs: ptballoon --help (exit $rc)" eval '[ $rc -eq 0 ] && grep -q "^usage: ptballoon" <<<"$out"'
# The resolved library is the installed one.
check "loader resolves libpagetrack.so.1 to the installed copy" \
	grep -q "libpagetrack.so.1 => $L/libpagetrack.so.1" <<<"$(LD_LIBRARY_PATH=$L ldd "$T/ptballoon")"
# shellcheck disable=SC2046
(cd "$T" && cc -static-libgcc ptballoon.c $(pkg-config --cflags pagetrack) \
	"$L/libpagetrack.a" -o ptballoon-static) 2>"$T/cc2.log"
check "static link against the installed libpagetrack.a runs without the .so" \
	eval '"$T/ptballoon-static" --help >/dev/null && ! readelf -d "$T/ptballoon-static" | grep -q libpagetrack'

# --- and away again -------------------------------------------------------------------------
DESTDIR=$D "$TOP/scripts/uninstall.sh" >"$T/uninstall.log" 2>&1
left=$(cd "$D" && find . -type f -o -type l | sort | tr '\n' ' ')
check "uninstall.sh removes every file (left: ${left:-none})" test -z "$left"
[ "$fails" -eq 0 ]
