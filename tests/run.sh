#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Runs every test binary ($BUILD/tests/test_*) and script (tests/<concern>/test_*.sh) and counts the
# PASS/FAIL/SKIP lines they print. A program that exits without a verdict line counts as one
# failure (exit code 77 with none counts as one skip). Last line: "N passed, N failed, N skipped".
# PT_CASES=substring runs only the cases of the test binaries whose name contains it (scripts
# run whole).
set -u
BUILD=${BUILD:-build}
export BUILD
TOP=$(cd "$(dirname "$0")/.." && pwd)
cd "$TOP" || exit 1
filter=${1:-}
pass=0 fail=0 skip=0
log=$(mktemp -d /tmp/pagetrack-tests.XXXXXX)
trap 'rm -rf "$log"' EXIT

run_one() {
	local name=$1
	shift
	local out="$log/$name.out" rc start
	start=$(date +%s)
	timeout -k 10 "${PT_TEST_TIMEOUT:-600}" "$@" >"$out" 2>&1
	rc=$?
	local p f s
	p=$(grep -c '^PASS: ' "$out")
	f=$(grep -c '^FAIL: ' "$out")
	s=$(grep -c '^SKIP: ' "$out")
	if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && [ "$f" -eq 0 ]; then
		echo "FAIL: $name: exited with status $rc and no FAIL line" >>"$out"
		f=$((f + 1))
	fi
	if [ "$rc" -eq 77 ] && [ $((p + f + s)) -eq 0 ] && [ $# -gt 1 ] && [ -n "${PT_CASES:-}" ]; then
		echo "  ($name: no case matches '$PT_CASES')"
		return
	fi
	if [ "$rc" -eq 77 ] && [ $((p + f + s)) -eq 0 ]; then
		echo "SKIP: $name: exit 77" >>"$out"
		s=1
	fi
	if [ "$f" -gt 0 ]; then
		cat "$out"
	else
		grep -E '^(PASS|SKIP|FAIL): ' "$out"
	fi
	echo "  ($name: $(( $(date +%s) - start ))s)"
	pass=$((pass + p)) fail=$((fail + f)) skip=$((skip + s))
}

for t in "$BUILD"/tests/test_* tests/*/test_*.sh; do
	[ -x "$t" ] || continue
	name=$(basename "$t")
	[ -n "$filter" ] && [[ $name != *"$filter"* ]] && continue
	if [[ $t == *.sh ]]; then
		run_one "$name" "$t"
	else
		run_one "$name" "$t" ${PT_CASES:+"$PT_CASES"}
	fi
done

for f in "$BUILD"/fuzz/fuzz_*; do
	[ -x "$f" ] || continue
	name=$(basename "$f")
	[ -n "$filter" ] && [[ $name != *"$filter"* ]] && continue
	# Smoke run: a few seconds of coverage-guided input on each target (the frame parser, the
	# dispatch); inputs up to 1.2 MB, so frames of PT_MAX_PAYLOAD are reassembled too.
	corpus=$(mktemp -d /tmp/pagetrack-fuzz.XXXXXX)
	# Seeds that reach deep states (tests/<concern>/<target>.seeds/), if the target has any.
	for seeds in tests/*/"$name".seeds; do [ -d "$seeds" ] && cp "$seeds"/* "$corpus"/; done
	if "$f" -max_len=1200000 -max_total_time="${FUZZ_SECONDS:-15}" -print_final_stats=1 "$corpus" >"$log/$name.out" 2>&1; then
		echo "PASS: $name (smoke, ${FUZZ_SECONDS:-15}s: $(grep -o 'stat::number_of_executed_units: [0-9]*' "$log/$name.out" | awk '{print $2}') runs)"
		pass=$((pass + 1))
	else
		tail -40 "$log/$name.out"
		echo "FAIL: $name"
		fail=$((fail + 1))
	fi
	rm -rf "$corpus"
done

echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
