#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# `pagetrackd bench --quick`: the JSON object has every key (the uffd mode's too, which runs
# without KVM), with positive finite numbers, and the table prints its ratio lines. No timing
# is asserted: the numbers depend on the machine.
# Without /dev/kvm the bench still runs everything else and says which workloads skipped: the
# checks of those workloads' keys print SKIP lines instead.
set -u
BUILD=${BUILD:-build}
BIN="$BUILD/pagetrackd"

if [ "$(id -u)" -ne 0 ]; then
	echo "SKIP: test_bench: needs root"
	exit 77
fi
if [ ! -x "$BIN" ]; then
	echo "FAIL: test_bench: $BIN not built"
	exit 1
fi

out=$(mktemp -d /tmp/pagetrack-test-bench.XXXXXX)
trap 'rm -rf "$out"' EXIT
fail=0

start=$(date +%s)
if timeout -k 5 120 "$BIN" bench --quick --json >"$out/json" 2>"$out/err"; then
	echo "PASS: bench --quick --json exits 0 ($(( $(date +%s) - start ))s)"
else
	echo "FAIL: bench --quick --json exited with status $?"
	tail -30 "$out/err"
	fail=1
fi

if python3 - "$out/json" <<'EOF'; then
import json, math, sys

# Keys whose value must be a number > 0.
positive = """
hint_guest_gib hint_rounds hint_records_per_s hint_gib_validated_per_s hint_cpu_ns_per_record
hint_raw_socket_records_per_s hint_raw_socket_gbytes_per_s hint_epoll_records_per_s
hint_epoll_cpu_ns_per_record hint_ratio_vs_raw_socket hint_ratio_vs_epoll
worst_guest_gib worst_rounds worst_records_per_s worst_gib_validated_per_s
worst_cpu_ns_per_record worst_raw_socket_records_per_s worst_raw_socket_gbytes_per_s
worst_epoll_records_per_s worst_epoll_cpu_ns_per_record worst_ratio_vs_raw_socket
worst_ratio_vs_epoll hint_floor_records_per_s hint_ratio_vs_floor worst_floor_records_per_s
worst_ratio_vs_floor
report_records_per_s report_ack_p50_us report_ack_p99_us report_ack_p999_us
service_ping_p50_us service_ping_p99_us service_ping_p999_us
pingpong_p50_us pingpong_p99_us pingpong_p999_us ratio_ack_p99_vs_pingpong_p99
large_guest_gib large_round_ms large_gib_validated_per_s mem_rss_bytes_per_gib
mem_rss_bits_per_page mem_log_bits_per_page mem_bits_per_page mem_bits_per_page_theoretical
multi_devices multi_records_per_s multi_gib_validated_per_s multi_cpu_ns_per_record
multi_epoll_records_per_s multi_epoll_cpu_ns_per_record multi_ratio_vs_epoll hint_reps worst_reps
multi_cpu_ratio_vs_epoll multi_report_devices multi_report_records_per_s multi_report_reports_per_s
multi_report_cpu_ns_per_record multi_report_epoll_records_per_s
multi_report_epoll_cpu_ns_per_record multi_report_cpu_ratio_vs_epoll multi_report_ratio_vs_epoll
bpf_ring_push_test_run_ns bpf_empty_ring_push_test_run_ns bpf_ring_push_test_run_ratio
bpf_ring_push_test_run_events bpf_ring_push_test_run_logged
bpf_ring_push_test_run_median_ns bpf_ring_push_test_run_median_ratio
bpf_empty_ring_push_test_run_median_ns bpf_ring_push_loop_ns bpf_empty_loop_ns
bpf_ring_push_loop_logged
verdict_64g_unsure_ms_p50
verdict_pass_none_ms verdict_pass_none_plain_ms verdict_pass_none_ratio_vs_plain
verdict_pass_written_ms verdict_pass_written_plain_ms verdict_pass_written_ratio_vs_plain
verdict_pass_written_ranges
bpf_ioctl_enter_other_ns bpf_empty_ioctl_enter_other_ns bpf_ioctl_enter_other_ratio
bpf_ioctl_enter_other_events bpf_ioctl_exit_other_ns bpf_empty_ioctl_exit_other_ns
bpf_ioctl_exit_other_ratio bpf_ioctl_exit_other_events
uffd_sparse_gib uffd_sparse_4k_verdict_ms uffd_sparse_4k_verdict_cpu_ms uffd_sparse_4k_arm_ms
uffd_sparse_4k_arm_cpu_ms uffd_sparse_4k_arm_first_ms uffd_sparse_4k_scan_empty_ms
uffd_sparse_4k_first_write_ns uffd_sparse_4k_rewrite_ns uffd_first_write_ratio_vs_rewrite
uffd_dense_4k_verdict_ms uffd_dense_4k_arm_ms uffd_dense_4k_first_write_ns
uffd_dense_thp_verdict_ms uffd_dense_thp_arm_ms uffd_dense_thp_first_write_ns
uffd_sparse_4k_arm_walk_ms uffd_sparse_4k_arm_runs_ms uffd_sparse_4k_arm_all_cpus_ms
uffd_sparse_4k_arm_table_us uffd_dense_4k_arm_walk_ms uffd_dense_4k_arm_runs_ms
uffd_dense_4k_arm_all_cpus_ms uffd_dense_4k_arm_table_us uffd_dense_thp_arm_walk_ms
uffd_dense_thp_arm_runs_ms uffd_dense_thp_arm_all_cpus_ms uffd_dense_thp_arm_table_us
""".split()
# Counts that may legitimately be 0 (verdict outcomes): numbers >= 0.
counts = ["bpf_ring_push_warm_ns"]  # a difference of two loops: >= 0
strings = "mode kvm hint_verdicts worst_verdicts".split()
# Workloads with a real KVM guest: their keys, and the key naming why they were skipped.
kvm_parts = {
    "live": ("""live_records_per_s live_guest_writes_per_s live_rounds verdict_64g_ms_p50
                verdict_64g_ms_max""".split(),
             "live_sure_verdicts live_kept_written_per_round verdict_64g_free_gib "
             "verdict_64g_sure".split(), ["verdict_64g_queries"]),
    "bpf_guest": ("""bpf_ring_push_ns bpf_empty_ring_push_ns bpf_ring_push_ratio
                     bpf_ring_push_events bpf_ioctl_enter_ns bpf_empty_ioctl_enter_ns
                     bpf_ioctl_enter_ratio bpf_ioctl_enter_events bpf_ioctl_exit_ns
                     bpf_empty_ioctl_exit_ns bpf_ioctl_exit_ratio bpf_ioctl_exit_events
                     bpf_ring_writes_logged""".split(), [], []),
    "guest": ("""guest_detached_pages_per_s guest_untracked_pages_per_s guest_tracked_pages_per_s
                 guest_ratio_tracked_vs_detached""".split(), ["guest_other_ring_programs"],
              ["guest_uffd_skipped"]),
}

try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print(f"FAIL: bench JSON does not parse: {e}")
    sys.exit(1)
kvm_ran = d.get("kvm") == "usable"
bad = []
for part, (pos, cnt, strs) in kvm_parts.items():
    if kvm_ran:
        positive += pos
        counts += cnt
        strings += strs
        if f"{part}_skipped" in d:
            bad.append(f"{part}_skipped={d[part + '_skipped']!r} although KVM is usable")
    elif not isinstance(d.get(f"{part}_skipped"), str) or not d[f"{part}_skipped"]:
        bad.append(f"{part}_skipped={d.get(part + '_skipped')!r} (KVM is {d.get('kvm')!r})")
    else:
        print(f"SKIP: bench JSON: {len(pos) + len(cnt) + len(strs)} keys of '{part}': "
              f"{d[part + '_skipped']}")
for k in positive + counts:
    v = d.get(k)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        bad.append(f"{k}={v!r}")
    elif v < 0 or (k in positive and v <= 0):
        bad.append(f"{k}={v!r}")
for k in strings:
    if not isinstance(d.get(k), str) or not d[k]:
        bad.append(f"{k}={d.get(k)!r}")
if bad:
    print("FAIL: bench JSON keys missing or not positive/finite: " + ", ".join(bad))
    sys.exit(1)
print(f"PASS: bench JSON has all {len(positive) + len(counts) + len(strings)} keys, numbers finite and positive")
if not kvm_ran:
    print(f"SKIP: real-guest verdicts in the bench: {d['kvm']}")
    sys.exit(0)
# The live guest is a real KVM VM synced after every ARM: its verdicts must be sure. Zero would
# mean the bench measured "keep everything", not reconciliation.
if d["live_sure_verdicts"] <= 0 or d["verdict_64g_sure"] <= 0:
    print(f"FAIL: real-guest verdicts were never sure (live {d['live_sure_verdicts']}, "
          f"64 GiB {d['verdict_64g_sure']})")
    sys.exit(1)
print("PASS: real-guest verdicts in the bench were sure")
EOF
	:
else
	fail=1
fi

if timeout -k 5 120 "$BIN" bench --quick >"$out/table" 2>"$out/err"; then
	echo "PASS: bench --quick (table) exits 0"
else
	echo "FAIL: bench --quick (table) exited with status $?"
	tail -30 "$out/err"
	fail=1
fi
missing=
for line in "^Ratios" "a/b hinting 4 MiB" "a/b worst case 4 KiB" "a/c hinting 4 MiB" \
	"a/c worst case 4 KiB" "a/c 64 devices" "a/f hinting 4 MiB" "a/f worst case 4 KiB" \
	"guest pages/s, tracked / detached" \
	"ack p99 / ping-pong p99" "64 GiB verdict p50" \
	"bits per guest page" "BPF ring push / empty program" \
	"^uffd mode" "uffd [0-9]* GiB verdict, 0.1 % written" "uffd [0-9]* GiB ARM, 0.1 % written" \
	"uffd first write after ARM / rewrite"; do
	grep -q -- "$line" "$out/table" || missing="$missing '$line'"
done
if [ -z "$missing" ]; then
	echo "PASS: bench table prints the ratio lines"
else
	echo "FAIL: bench table lacks:$missing"
	cat "$out/table"
	fail=1
fi
exit $fail
