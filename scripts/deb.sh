#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# `make deb`: builds the Debian packages (debian/) with dpkg-buildpackage -us -uc -b and checks
# them with lintian. dpkg-buildpackage writes its results next to the source directory, so
# the build runs in a copy of the tree under OUT/src/ and nothing is written outside OUT:
#   OUT/*.deb, *.buildinfo, *.changes   the results
#   OUT/lintian.txt                     lintian's findings (it fails on errors)
# Usage: scripts/deb.sh [OUT]   (default build/deb)
set -eu
TOP=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-build/deb}
case $OUT in /*) ;; *) OUT=$TOP/$OUT ;; esac
VERSION=$(cat "$TOP/VERSION")
SRC=$OUT/src/pagetrack-$VERSION

for t in dpkg-buildpackage dh lintian; do
	command -v $t >/dev/null || { echo "deb: $t missing: make deps" >&2; exit 1; }
done
# debian/changelog names the version too: it must be VERSION's.
deb_version=$(dpkg-parsechangelog -l "$TOP/debian/changelog" -S Version)
if [ "$deb_version" != "$VERSION" ]; then
	echo "deb: debian/changelog is at $deb_version, VERSION at $VERSION: add a changelog entry" >&2
	exit 1
fi

rm -rf "$OUT"
mkdir -p "$SRC"
# The tree as it is (committed or not), without build output: git's view where there is one.
if git -C "$TOP" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	(cd "$TOP" && git ls-files -co --exclude-standard | while IFS= read -r f; do
		[ -f "$f" ] && printf '%s\n' "$f"
	done | tar -cf - -T -) | tar -xf - -C "$SRC"
else
	(cd "$TOP" && tar -cf - --exclude='./build*' --exclude=./fuzz-corpus .) | tar -xf - -C "$SRC"
fi

echo "  DEB      $SRC"
export DEB_BUILD_OPTIONS="${DEB_BUILD_OPTIONS:-parallel=$(nproc)}"
(cd "$SRC" && dpkg-buildpackage -us -uc -b) >"$OUT/build.log" 2>&1 || {
	tail -40 "$OUT/build.log" >&2
	echo "deb: dpkg-buildpackage failed: $OUT/build.log" >&2
	exit 1
}
mv "$OUT"/src/*.deb "$OUT"/src/*.buildinfo "$OUT"/src/*.changes "$OUT/"
rm -rf "$OUT/src"

changes=$(ls "$OUT"/*.changes)
echo "  LINTIAN  $changes"
t0=$(date +%s)
rc=0
lintian --fail-on error "$changes" \
	>"$OUT/lintian.txt" 2>&1 || rc=$?
grep -v '^running with root privileges' "$OUT/lintian.txt" || true
echo "  (lintian: $(($(date +%s) - t0)) s)"
[ "$rc" -eq 0 ] || { echo "deb: lintian found errors" >&2; exit 1; }
ls -1 "$OUT"/*.deb
