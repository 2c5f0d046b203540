#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# `make demo`: one free-page-hinting round on a real KVM guest, checked against KVM's log.
set -eu
BUILD=${BUILD:-build}
if [ "$(id -u)" != 0 ]; then
	echo "make demo: needs root (BPF programs, /dev/kvm)" >&2
	exit 1
fi
"$BUILD/ptdemo"
