#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# make deb, checked: builds the packages once (scripts/deb.sh: dpkg-buildpackage -us -uc -b in
# a copy of the tree, lintian without errors), reads them with dpkg-deb -I/-c, unpacks them
# with `dpkg --root` into a throw-away root (its own dpkg database; no maintainer script runs
# there) and checks what landed: the programs run, the library resolves by its SONAME,
# the unit starts the packaged binary, the configuration is a conffile, the manual pages
# render, and the example device builds against libpagetrack-dev with pkg-config alone.
name=deb
# shellcheck source-path=SCRIPTDIR source=../t.sh
. "$(dirname "$0")/../t.sh"
for t in dpkg-buildpackage dh lintian dpkg-deb fakeroot clang bpftool scdoc pkg-config; do
	command -v $t >/dev/null || skip "$t not installed (make deps)"
done
VERSION=$(cat "$TOP/VERSION")
MA=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
ARCH=$(dpkg-architecture -qDEB_HOST_ARCH)
[ "$ARCH" = amd64 ] || skip "the packages are built for amd64 only (vmlinux.h), this is $ARCH"
OUT=$BUILD/deb-test
R=$(mktemp -d /tmp/pagetrack-debroot.XXXXXX)
trap 'rm -rf "$R" "$OUT"' EXIT

# --- build (once) ---------------------------------------------------------------------------
t0=$(date +%s)
# No -dbgsym packages: they add nothing to check and double lintian's time.
if DEB_BUILD_OPTIONS="noautodbgsym parallel=$(nproc)" "$TOP/scripts/deb.sh" "$OUT" >"$R.log" 2>&1; then
	pass "make deb: dpkg-buildpackage and lintian without errors ($(($(date +%s) - t0)) s)"
else
	sed 's/^/# /' "$R.log" | tail -40
	fail "make deb"
	rm -f "$R.log"
	exit 1
fi
grep -E '^[EW]: ' "$OUT/lintian.txt" | sed 's/^/# lintian: /'
check "lintian: no errors, no warnings" eval '! grep -qE "^[EW]: " "$OUT/lintian.txt"'
rm -f "$R.log"
deb() { echo "$OUT/${1}_${VERSION}_$ARCH.deb"; }
for p in pagetrackd libpagetrack1 libpagetrack-dev; do
	[ -f "$(deb $p)" ] || { fail "$(basename "$(deb $p)") built"; exit 1; }
done
pass "three packages: pagetrackd, libpagetrack1, libpagetrack-dev ($VERSION)"
check "nothing written outside the output directory (no ../*.deb)" \
	eval '[ -z "$(ls "$TOP"/../*.deb "$TOP"/../*.changes "$(dirname "$OUT")"/*.deb 2>/dev/null)" ]'

# --- control data (dpkg-deb -I) ---------------------------------------------------------------
field() { dpkg-deb -f "$(deb "$1")" "$2"; }
for p in pagetrackd libpagetrack1 libpagetrack-dev; do
	[ "$(field $p Version)" = "$VERSION" ] || fail "$p: Version $(field $p Version)"
done
check "pagetrackd depends on the libraries it links (libbpf1, liburing2)" \
	eval 'd=$(field pagetrackd Depends); [[ $d == *libbpf1* && $d == *liburing2* ]]'
check "libpagetrack-dev depends on libpagetrack1 (= $VERSION)" \
	eval '[[ $(field libpagetrack-dev Depends) == *"libpagetrack1 (= $VERSION)"* ]]'
check "pagetrackd: /etc/pagetrack/pagetrack.conf is a conffile" \
	eval '[ "$(dpkg-deb -I "$(deb pagetrackd)" conffiles)" = /etc/pagetrack/pagetrack.conf ]'
post=$(dpkg-deb -I "$(deb pagetrackd)" postinst 2>/dev/null)
check "pagetrackd: postinst enables the units (dh_installsystemd)" \
	eval 'grep -q "deb-systemd-helper.*pagetrackd.service" <<<"$post" && grep -q "pagetrackd.socket" <<<"$post"'
prerm=$(dpkg-deb -I "$(deb pagetrackd)" prerm 2>/dev/null)
check "pagetrackd: prerm stops the units, then removes the pins on remove (not upgrade)" \
	eval 'grep -q "deb-systemd-invoke stop.*pagetrackd" <<<"$prerm" &&
		[ "$(grep -n "deb-systemd-invoke stop" <<<"$prerm" | cut -d: -f1)" -lt \
		  "$(grep -n "pagetrackd uninstall" <<<"$prerm" | head -1 | cut -d: -f1)" ]'
syms=$(dpkg-deb -I "$(deb libpagetrack1)" symbols 2>/dev/null)
names() { grep -v '#MISSING' | grep -o '[A-Za-z0-9_]*@LIBPAGETRACK_1 ' | sed 's/@.*//' | sort -u; }
api=$( (grep -ho 'PT_API[^(]*(' "$TOP"/include/pagetrack/*.h | grep -o 'pt_[a-z0-9_]*($' |
	tr -d '('; echo LIBPAGETRACK_1) | sort -u)
# Every PT_API function is in it; every symbol it requires (not optional) is one of them.
lacks=$(comm -23 <(echo "$api") <(names <<<"$syms") | tr '\n' ' ')
extra=$(comm -13 <(echo "$api") <(grep -v '(optional)' <<<"$syms" | names) | tr '\n' ' ')
check "libpagetrack1: symbols file has the $(wc -l <<<"$api") PT_API functions and the node${lacks:+, lacks: $lacks}${extra:+, extra: $extra}" \
	test -z "$lacks$extra"
check "libpagetrack1: shlibs names libpagetrack.so.1" \
	grep -q '^libpagetrack 1 libpagetrack1' <<<"$(dpkg-deb -I "$(deb libpagetrack1)" shlibs)"

# --- contents (dpkg-deb -c) -------------------------------------------------------------------
has() { # PACKAGE PATH...
	local p=$1 f list miss=
	shift
	list=$(dpkg-deb -c "$(deb "$p")" | awk '{ print $6 }' | sed 's|^\./|/|; s|/$||')
	for f in "$@"; do grep -qx "$f" <<<"$list" || miss="$miss $f"; done
	[ -z "$miss" ] || echo "# $p lacks:$miss"
	[ -z "$miss" ]
}
check "pagetrackd: daemon, ptballoon, units, conf, man 1/5/8, docs" has pagetrackd \
	/usr/sbin/pagetrackd /usr/bin/ptballoon /lib/systemd/system/pagetrackd.service \
	/lib/systemd/system/pagetrackd.socket /etc/pagetrack/pagetrack.conf \
	/usr/share/man/man8/pagetrackd.8.gz /usr/share/man/man5/pagetrack.conf.5.gz \
	/usr/share/man/man1/ptballoon.1.gz /usr/share/doc/pagetrackd/OPERATIONS.md \
	/usr/share/doc/pagetrackd/PROTOCOL.md /usr/share/doc/pagetrackd/copyright \
	/usr/share/doc/pagetrackd/changelog.gz
check "libpagetrack1: the shared library by its SONAME" has libpagetrack1 \
	/usr/lib/$MA/libpagetrack.so.1
check "libpagetrack-dev: headers, static library, link name, pagetrack.pc, man 3" \
	has libpagetrack-dev /usr/include/pagetrack/client.h /usr/include/pagetrack/proto.h \
	/usr/lib/$MA/libpagetrack.a /usr/lib/$MA/libpagetrack.so \
	/usr/lib/$MA/pkgconfig/pagetrack.pc /usr/share/man/man3/libpagetrack.3.gz
check "no /usr/local path in any package" \
	eval '! dpkg-deb -c "$(deb pagetrackd)" "$(deb libpagetrack1)" "$(deb libpagetrack-dev)" 2>/dev/null | grep -q usr/local'

# --- unpacked into a throw-away root ----------------------------------------------------------
mkdir -p "$R/var/lib/dpkg/info" "$R/var/lib/dpkg/updates"
: >"$R/var/lib/dpkg/status"
: >"$R/var/lib/dpkg/available"
if dpkg --root="$R" --force-depends --force-not-root --unpack "$(deb pagetrackd)" \
	"$(deb libpagetrack1)" "$(deb libpagetrack-dev)" >"$R.unpack" 2>&1; then
	pass "dpkg --root --unpack of the three packages"
else
	sed 's/^/# /' "$R.unpack"
	fail "dpkg --root --unpack of the three packages"
fi
rm -f "$R.unpack"
check "dpkg in the root records the conffile" \
	grep -q '^ /etc/pagetrack/pagetrack.conf ' <<<"$(dpkg --root="$R" -s pagetrackd 2>/dev/null)"
L=$R/usr/lib/$MA
check "the packaged pagetrackd --version says $VERSION" \
	test "$("$R/usr/sbin/pagetrackd" --version 2>&1)" = "pagetrackd $VERSION"
check "the packaged ptballoon runs (--help)" eval '"$R/usr/bin/ptballoon" --help >/dev/null'
check "unit: ExecStart is the packaged /usr/sbin/pagetrackd, Documentation= file exists" \
	eval 'grep -qx "ExecStart=/usr/sbin/pagetrackd run" "$R/lib/systemd/system/pagetrackd.service" &&
		grep -q "file:/usr/share/doc/pagetrackd/OPERATIONS.md" "$R/lib/systemd/system/pagetrackd.service" &&
		test -f "$R/usr/share/doc/pagetrackd/OPERATIONS.md"'
warn=
for m in man8/pagetrackd.8 man5/pagetrack.conf.5 man1/ptballoon.1 man3/libpagetrack.3; do
	w=$(MANWIDTH=80 man -l --warnings=all "$R/usr/share/man/$m.gz" 2>&1 >/dev/null)
	[ -z "$w" ] || warn="$warn $m"
done
check "the packaged manual pages render without warnings${warn:+ (not:$warn)}" test -z "$warn"
export PKG_CONFIG_PATH=$L/pkgconfig PKG_CONFIG_SYSROOT_DIR=$R PKG_CONFIG_LIBDIR=/nonexistent
cp "$TOP/user/tools/ptballoon.c" "$R/"
# shellcheck disable=SC2046
check "ptballoon.c builds against libpagetrack-dev with pkg-config alone, and runs" \
	eval '(cd "$R" && cc -Wall -Werror ptballoon.c $(pkg-config --cflags --libs pagetrack) -o pb) &&
		LD_LIBRARY_PATH=$L "$R/pb" --help >/dev/null'
[ "$fails" -eq 0 ]
