#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Installs what pagetrack needs to build and test on Debian 12. Idempotent.
# `--check` only reports (exit 1) whether something is missing.
set -eu

# Build and test (build-essential: dpkg-buildpackage checks for it); then the tests' tools: man-db + groff + col (man -l renders the manual pages),
# scdoc (builds them), tmux (`pagetrackd top` test), debhelper/dpkg-dev/fakeroot/lintian
# (`make deb` and its test).
PKGS="build-essential make gcc clang llvm libbpf-dev bpftool liburing-dev libelf-dev zlib1g-dev pkg-config
      libclang-rt-14-dev systemd util-linux procps python3
      man-db groff-base bsdextrautils scdoc tmux debhelper dpkg-dev fakeroot lintian"

missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
		missing="$missing $p"
done

if [ "${1:-}" = "--check" ]; then
	[ -z "$missing" ] && exit 0
	echo "missing:$missing"
	exit 1
fi

if [ -n "$missing" ]; then
	echo "pagetrack deps: installing$missing"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $missing
fi
echo "pagetrack deps: all present"
