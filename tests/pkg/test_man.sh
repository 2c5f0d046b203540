#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The manual pages (make man): each renders with man -l at 80 columns without a warning from
# groff, has the usual sections, and says what the code does: every long option of
# `pagetrackd --help` is in pagetrackd(8), every key of the shipped pagetrack.conf in
# pagetrack.conf(5), every command of ptballoon's usage in ptballoon(1), every PT_API
# function of client.h in libpagetrack(3).
name=man
# shellcheck source-path=SCRIPTDIR source=../t.sh
. "$(dirname "$0")/../t.sh"
command -v man >/dev/null || skip "man not installed (make deps: man-db)"
command -v groff >/dev/null || skip "groff not installed (make deps: groff-base)"
pages="pagetrackd.8 pagetrack.conf.5 ptballoon.1 libpagetrack.3"
for p in $pages; do
	[ -f "$BUILD/man/$p" ] || skip "$BUILD/man/$p missing: make man"
done
VERSION=$(cat "$TOP/VERSION")
text() { MANWIDTH=80 MAN_KEEP_FORMATTING= man -l "$BUILD/man/$1" 2>/dev/null | col -b; }

for p in $pages; do
	w=$(MANWIDTH=80 man -l --warnings=all "$BUILD/man/$p" 2>&1 >/dev/null)
	w2=$(groff -ww -z -man "$BUILD/man/$p" 2>&1)
	if [ -z "$w$w2" ]; then pass "$p renders without warnings"; else
		echo "$w$w2" | sed 's/^/# /'
		fail "$p renders without warnings"
	fi
	t=$(text "$p")
	miss=
	for s in NAME SYNOPSIS DESCRIPTION "SEE ALSO"; do
		grep -q "^$s" <<<"$t" || miss="$miss $s"
	done
	grep -q "pagetrack $VERSION" <<<"$t" || miss="$miss version-$VERSION"
	w=$(awk 'length > 80' <<<"$t" | head -3)
	[ -z "$w" ] || miss="$miss lines-over-80"
	if [ -z "$miss" ]; then pass "$p: sections, version, fits 80 columns"; else
		fail "$p: missing:$miss"
	fi
done

# Accuracy against the code.
t8=$(text pagetrackd.8)
miss=
if [ -x "$BUILD/pagetrackd" ]; then
	for o in $("$BUILD/pagetrackd" --help | grep -o -- '--[a-z][a-z-]*' | sort -u); do
		grep -q -- "$o" <<<"$t8" || miss="$miss $o"
	done
	for c in $("$BUILD/pagetrackd" --help | sed -n '/^Commands:/,/^$/p' | awk 'NF { print $1 }' | grep -v Commands); do
		grep -q "^ *$c\b" <<<"$t8" || miss="$miss $c"
	done
	if [ -z "$miss" ]; then pass "pagetrackd.8 has every option and command of --help"; else
		fail "pagetrackd.8 lacks:$miss"
	fi
fi
t5=$(text pagetrack.conf.5)
miss=
for k in $(sed -n 's/^#\([a-z-]*\) =.*/\1/p' "$TOP/systemd/pagetrack.conf"); do
	grep -q "^ *$k = " <<<"$t5" || miss="$miss $k"
done
nkeys=$(grep -c '^#[a-z-]* =' "$TOP/systemd/pagetrack.conf")
if [ -z "$miss" ] && [ "$nkeys" -ge 9 ]; then pass "pagetrack.conf.5 has all $nkeys keys"; else
	fail "pagetrack.conf.5 lacks:$miss ($nkeys keys)"
fi
t1=$(text ptballoon.1)
miss=
for c in register arm stop done hint query report inflate deflate written wrcaps wrread ping; do
	grep -q "^ *$c\b" <<<"$(sed -n '/^COMMANDS/,/^EXIT/p' <<<"$t1" | tr '|,' '\n\n' | sed 's/^ *//')" || miss="$miss $c"
done
if [ -z "$miss" ]; then pass "ptballoon.1 has every command"; else fail "ptballoon.1 lacks:$miss"; fi
t3=$(text libpagetrack.3)
miss=
for f in $(grep -ho 'PT_API[^(]*(' "$TOP"/include/pagetrack/*.h | grep -o 'pt_[a-z_]*(' | tr -d '('); do
	grep -q "$f" <<<"$t3" || miss="$miss $f"
done
if [ -z "$miss" ]; then pass "libpagetrack.3 names every PT_API function"; else
	fail "libpagetrack.3 lacks:$miss"
fi
[ "$fails" -eq 0 ]
