# SPDX-License-Identifier: GPL-2.0
# shellcheck shell=bash disable=SC2154 # name: set by the script that sources this
#
# The shell counterpart of t.h, sourced by tests/<concern>/test_*.sh once they have set `name`:
# TOP (the tree), BUILD (made absolute), and pass/fail/check/skip, which print the
# "PASS: name: what" lines tests/run.sh counts. A script ends with [ "$fails" -eq 0 ].
set -u
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-build}
case $BUILD in /*) ;; *) BUILD=$TOP/$BUILD ;; esac
fails=0
pass() { echo "PASS: $name: $*"; }
fail() {
	echo "FAIL: $name: $*"
	fails=$((fails + 1))
}
check() { # WHAT COMMAND...: WHAT passes if COMMAND succeeds
	local t_what=$1
	shift
	if "$@"; then pass "$t_what"; else fail "$t_what"; fi
}
skip() { # REASON: the whole script is skipped
	echo "SKIP: $name: $*"
	exit 77
}
