#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# `make demo`: one free-page-hinting round per write-log mode (ring, then userfaultfd), each
# checked against what was really written. Without /dev/kvm the ring round is skipped.
set -eu
BUILD=${BUILD:-build}
if [ "$(id -u)" != 0 ]; then
	echo "make demo: needs root (BPF programs, userfaultfd, /dev/kvm if present)" >&2
	exit 1
fi
"$BUILD/ptdemo"
