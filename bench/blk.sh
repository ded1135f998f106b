#!/usr/bin/env bash
# virtio-blk benchmark: the test guest's disk=bench (sequential write + flush, sequential read,
# random 4 KiB reads) under vmsnap and under QEMU 7.2 microvm (virtio-blk-device, ACPI), on the
# same raw file, next to the host's own speed on that file (dd buffered and O_DIRECT,
# bench/blkbench_host), in one run, repetitions interleaved. What is measured and how: the
# docstring of bench/blk.py. Results: docs/BENCHMARKS.md ("virtio-blk").
#
# usage: bench/blk.sh [--mib 1024] [--runs 5] [--qd 16] [--req-kib 256] [--rand-s 2]
#                     [--cases host,host-direct,vmsnap,qemu] [--dir DIR] [--markdown FILE]
#        (bench/blk.sh --help; as root, for /dev/kvm)
# environment: BUILD (build dir, default build), QEMU (default qemu-system-x86_64)
# Runtime: about 2 minutes with the defaults on the development machines.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
QEMU=${QEMU:-qemu-system-x86_64}

die() { echo "bench/blk.sh: $*" >&2; exit 1; }
for a in "$@"; do
	case $a in -h | --help) exec python3 bench/blk.py --help ;; esac
done
[ -c /dev/kvm ] || die "/dev/kvm is missing"
command -v "$QEMU" >/dev/null || die "$QEMU not found (scripts/deps.sh installs qemu-system-x86)"
command -v python3 >/dev/null || die "python3 not found"

echo "building (cmake --build $BUILD --target vmsnap guest_elf; cc bench/blkbench_host.c)" >&2
log=$(mktemp /tmp/vmsnap-bench-blk-build.XXXXXX)
cmake -S . -B "$BUILD" >"$log" 2>&1 || die "configure failed: $log"
cmake --build "$BUILD" -j"$(nproc)" --target vmsnap guest_elf >>"$log" 2>&1 ||
	die "build failed: $log"
mkdir -p "$BUILD/bench"
cc -O2 -Wall -Wextra -Werror -std=gnu11 -o "$BUILD/bench/blkbench_host" bench/blkbench_host.c \
	>>"$log" 2>&1 || die "building bench/blkbench_host.c failed: $log"
rm -f "$log"
exec python3 bench/blk.py --build "$BUILD" --qemu "$QEMU" "$@"
