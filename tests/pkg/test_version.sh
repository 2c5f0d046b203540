#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# One release number, in VERSION: pagetrackd --version prints it, CHANGELOG.md's top entry and
# debian/changelog's name it, and nothing else in the tree spells a version of its own.
name=version
# shellcheck source-path=SCRIPTDIR source=../t.sh
. "$(dirname "$0")/../t.sh"
V=$(cat "$TOP/VERSION")
check "VERSION is one line, MAJOR.MINOR.PATCH ($V)" \
	eval '[ "$(wc -l <"$TOP/VERSION")" -eq 1 ] && [[ $V =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]'
if [ -x "$BUILD/pagetrackd" ]; then
	check "pagetrackd --version" test "$("$BUILD/pagetrackd" --version)" = "pagetrackd $V"
	check "pagetrackd -V, without reading a configuration" \
		test "$("$BUILD/pagetrackd" -c /nonexistent -V)" = "pagetrackd $V"
else
	echo "SKIP: $name: pagetrackd --version: build first"
fi
top=$(grep -m1 '^## ' "$TOP/CHANGELOG.md")
check "CHANGELOG.md's top entry is $V (${top#\#\# })" eval '[[ $top == "## $V "* ]]'
deb=$(sed -n '1s/^pagetrack (\([^)]*\)).*/\1/p' "$TOP/debian/changelog")
check "debian/changelog's top entry is $V ($deb)" test "$deb" = "$V"
# A version literal anywhere else would drift: sources take PAGETRACK_VERSION from the Makefile.
stray=$(cd "$TOP" && grep -rlF "$V" --include='*.c' --include='*.h' --include='*.in' \
	--include='*.scd' --include='*.service' --include='*.socket' user include man systemd \
	pagetrack.pc.in 2>/dev/null)
check "no other file spells $V${stray:+ (found: $stray)}" test -z "$stray"
[ "$fails" -eq 0 ]
