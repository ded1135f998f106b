#!/usr/bin/env bash
# Snapshot benchmark (issue 3, "Performance"): vmsnap save/restore next to QEMU 7.2 migrate to a
# file and -incoming from it, and the machine's own bounds (disk write with fdatasync, memcpy),
# in one run on the same test guest. Guest sizes 256 MiB, 1 GiB, 4 GiB; 0 %, 25 %, 100 % of RAM
# touched. Pause time, time to a durable image, image size, restore time to the first heartbeat.
# What is measured and how: the docstring of bench/snapshot.py. Results: docs/BENCHMARKS.md.
#
# usage: bench/snapshot.sh [--quick] [--sizes 256M,1G,4G] [--fractions 0,25,100] [--keep]
#                          [--markdown FILE] [--drop-caches] [--vmms vmsnap,qemu] [...]
#        (bench/snapshot.sh --help lists all; as root, for /dev/kvm and --drop-caches)
# environment: BUILD (build dir, default build), QEMU (default qemu-system-x86_64)
# Runtime: about 6-10 minutes for the full matrix on the development machines; --quick < 1 min.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
QEMU=${QEMU:-qemu-system-x86_64}

die() { echo "bench/snapshot.sh: $*" >&2; exit 1; }
for a in "$@"; do
	case $a in -h | --help) exec python3 bench/snapshot.py --help ;; esac
done
[ -c /dev/kvm ] || die "/dev/kvm is missing"
command -v "$QEMU" >/dev/null || die "$QEMU not found (scripts/deps.sh installs qemu-system-x86)"
command -v python3 >/dev/null || die "python3 not found"

echo "building (cmake --build $BUILD --target vmsnap guest_elf hbwatch; cc bench/snapbench_*.c)" >&2
log=$(mktemp /tmp/vmsnap-bench-snap-build.XXXXXX)
cmake -S . -B "$BUILD" >"$log" 2>&1 || die "configure failed: $log"
cmake --build "$BUILD" -j"$(nproc)" --target vmsnap guest_elf hbwatch >>"$log" 2>&1 ||
	die "build failed: $log"
mkdir -p "$BUILD/bench"
for h in hb memcpy; do
	cc -O2 -Wall -Wextra -Werror -std=gnu11 -o "$BUILD/bench/snapbench_$h" "bench/snapbench_$h.c" \
		>>"$log" 2>&1 || die "building bench/snapbench_$h.c failed: $log"
done
rm -f "$log"
exec python3 bench/snapshot.py --build "$BUILD" --qemu "$QEMU" "$@"
