#!/usr/bin/env bash
# Live-migration benchmark (issue 4, "Performance"): vmsnap migrate/receive next to QEMU 7.2
# (-incoming tcp:, migrate through QMP, max-bandwidth raised, downtime-limit = vmsnap's
# --downtime-ms) over loopback, on the same test guest ELF and workload, with the loopback
# bound measured in the same run. Guests 256 MiB, 1 GiB, 4 GiB; idle, and the dirtier at 1/2
# and 1/8 of the measured loopback rate. What is measured and how: bench/migrate.py's docstring.
# Results: docs/BENCHMARKS.md.
#
# usage: bench/migrate.sh [--quick] [--sizes 256,1024,4096] [--rates 1/2,1/8] [--downtime-ms 50]
#                         [--max-time 30] [--vmms vmsnap,qemu] [--markdown FILE] [--dir DIR]
# environment: BUILD (build dir, default build), QEMU (default qemu-system-x86_64)
# Runtime: about 10 minutes for the full matrix on the development machines; --quick ~1-2 min.
# Memory: the 4 GiB runs hold two 4 GiB guests (source and destination) at once.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
QEMU=${QEMU:-qemu-system-x86_64}

die() { echo "bench/migrate.sh: $*" >&2; exit 1; }
for a in "$@"; do
	case $a in -h | --help) exec python3 bench/migrate.py --help ;; esac
done
[ -c /dev/kvm ] || die "/dev/kvm is missing"
command -v "$QEMU" >/dev/null || die "$QEMU not found (scripts/deps.sh installs qemu-system-x86)"
command -v python3 >/dev/null || die "python3 not found"

echo "building (cmake --build $BUILD --target vmsnap guest_elf hbwatch)" >&2
log=$(mktemp /tmp/vmsnap-bench-mig-build.XXXXXX)
cmake -S . -B "$BUILD" >"$log" 2>&1 || die "configure failed: $log"
cmake --build "$BUILD" -j"$(nproc)" --target vmsnap guest_elf hbwatch >>"$log" 2>&1 ||
	die "build failed: $log"
rm -f "$log"
exec python3 bench/migrate.py --build "$BUILD" --qemu "$QEMU" "$@"
