#!/usr/bin/env bash
# Clone benchmark: time to start N = 1, 10, 50, 100 clones of a saved test guest (256 MiB and
# 1 GiB) to each clone's first heartbeat, and host memory per clone (private, PSS) idle and
# after writing 10 % of its RAM; `vmsnap clone` next to QEMU 7.2's fastest ways (templating:
# RAM file mapped share=off + x-ignore-shared migration of the device state; and -incoming of one
# saved file per clone), with the machine's floor (creating empty KVM VMs), in one run, at the
# guest's default timer rate and at a low one. What is measured and how: the docstring of
# bench/clone.py. Results: docs/BENCHMARKS.md ("Clones").
#
# usage: bench/clone.sh [--sizes 256,1024] [--hz 1000,100] [--counts 1,10,50,100]
#                       [--qemu-counts 1,10,50] [--qemu-incoming-counts 1,10] [--dirty-count 10]
#                       [--reps 3] [--vmms vmsnap,qemu] [--dir DIR] [--markdown FILE]
#        (bench/clone.sh --help; as root, for /dev/kvm)
# environment: BUILD (build dir, default build), QEMU (default qemu-system-x86_64)
# Runtime: about 4-5 minutes with the defaults on the development machines.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
QEMU=${QEMU:-qemu-system-x86_64}

die() { echo "bench/clone.sh: $*" >&2; exit 1; }
for a in "$@"; do
	case $a in -h | --help) exec python3 bench/clone.py --help ;; esac
done
[ -c /dev/kvm ] || die "/dev/kvm is missing"
command -v "$QEMU" >/dev/null || die "$QEMU not found (scripts/deps.sh installs qemu-system-x86)"
command -v python3 >/dev/null || die "python3 not found"

echo "building (cmake --build $BUILD --target vmsnap guest_elf boottime; cc bench/clonebench_hb.c)" >&2
log=$(mktemp /tmp/vmsnap-bench-clone-build.XXXXXX)
cmake -S . -B "$BUILD" >"$log" 2>&1 || die "configure failed: $log"
cmake --build "$BUILD" -j"$(nproc)" --target vmsnap guest_elf boottime >>"$log" 2>&1 ||
	die "build failed: $log"
mkdir -p "$BUILD/bench"
cc -O2 -Wall -Wextra -Werror -std=gnu11 -o "$BUILD/bench/clonebench_hb" bench/clonebench_hb.c \
	>>"$log" 2>&1 || die "building bench/clonebench_hb.c failed: $log"
rm -f "$log"
exec python3 bench/clone.py --build "$BUILD" --qemu "$QEMU" "$@"
