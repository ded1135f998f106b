#!/usr/bin/env bash
# Boot-time benchmark: time from launching the VMM to the test guest's first heartbeat and to
# its READY line, vmsnap next to QEMU (-M microvm), on the same guest ELF with the same command
# line, for 1 and 4 vCPUs and 256 MiB / 1 GiB; plus the machine's own bounds (fork+exec of a
# static do-nothing program, starting each VMM binary, creating an empty KVM VM). Results:
# docs/BENCHMARKS.md.
#
# usage: bench/boot.sh [RUNS]        (RUNS per configuration, default 10; as root, for /dev/kvm)
# environment: BUILD (build dir, default build), QEMU (default qemu-system-x86_64),
#              OUT (raw samples, default a new /tmp/vmsnap-bench-boot.* directory)
#
# How: bench/boottime (C) takes CLOCK_MONOTONIC just before fork(), execs the VMM with the guest
# console on a pipe, and timestamps the first console byte, the first heartbeat token and the
# READY line as they arrive; then it kills the VMM. Runs of the different VMMs are interleaved
# so that drift of the (shared, virtual) machine hits them alike.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
RUNS=${1:-10}
BUILD=${BUILD:-build}
QEMU=${QEMU:-qemu-system-x86_64}
OUT=${OUT:-$(mktemp -d /tmp/vmsnap-bench-boot.XXXXXX)}
mkdir -p "$OUT"

die() { echo "bench/boot.sh: $*" >&2; exit 1; }
[ -c /dev/kvm ] || die "/dev/kvm is missing"
command -v "$QEMU" >/dev/null || die "$QEMU not found (scripts/deps.sh installs qemu-system-x86)"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive number"

echo "building (cmake --build $BUILD --target vmsnap guest_elf boottime bench_true)" >&2
cmake -S . -B "$BUILD" >"$OUT/configure.log" 2>&1 || die "configure failed: $OUT/configure.log"
cmake --build "$BUILD" -j"$(nproc)" --target vmsnap guest_elf boottime bench_true \
	>"$OUT/build.log" 2>&1 || die "build failed: $OUT/build.log"
VMSNAP=$(realpath "$BUILD/vmsnap")
GUEST=$(realpath "$BUILD/tests/guest/guest.elf")
BT=$(realpath "$BUILD/bench/boottime")
TRUE=$(realpath "$BUILD/bench/bench_true")

# QEMU configurations: the one tests/guest/README.md shows, and leaner ones. Each must boot the
# guest to READY with every CPU; the fastest (lowest median to first heartbeat) is compared.
QEMU_BASE="-enable-kvm -cpu host -no-reboot"
QEMU_NAMES=(readme nodefaults nodisplay lean)
declare -A QEMU_FLAGS=(
	[readme]="-M microvm -nographic"
	[nodefaults]="-M microvm -nographic -nodefaults -no-user-config -serial stdio"
	[nodisplay]="-M microvm -display none -nodefaults -no-user-config -serial stdio"
	[lean]="-M microvm,x-option-roms=off,pit=off,pic=off,rtc=off,acpi=off -display none -nodefaults -no-user-config -serial stdio"
)

# run_vmm NAME CPUS MEM: one boot; appends "first_hb ready" to $OUT/NAME-CPUS-MEM.txt.
run_vmm() {
	local name=$1 cpus=$2 mem=$3 line
	local file="$OUT/$name-$cpus-$mem.txt"
	if [ "$name" = vmsnap ]; then
		line=$("$BT" -t 20 -- "$VMSNAP" run --kernel "$GUEST" --cpus "$cpus" --mem "$mem" \
			--cmdline "cpus=$cpus" 2>>"$OUT/stderr.log")
	else
		# shellcheck disable=SC2086 # flag lists are meant to split
		line=$("$BT" -t 20 -- "$QEMU" $QEMU_BASE ${QEMU_FLAGS[${name#qemu-}]} -m "$mem" \
			-smp "$cpus" -kernel "$GUEST" -append "cpus=$cpus" 2>>"$OUT/stderr.log")
	fi
	echo "$name cpus=$cpus mem=$mem $line" >>"$OUT/raw.txt"
	local hb ready rc up
	hb=$(sed -nE 's/.*first_hb_ms=([-0-9.]+).*/\1/p' <<<"$line")
	up=$(sed -nE 's/.*guest_up_ms=([-0-9.]+).*/\1/p' <<<"$line")
	ready=$(sed -nE 's/.*ready_ms=([-0-9.]+).*/\1/p' <<<"$line")
	rc=$(sed -nE 's/.*ready_cpus=([-0-9]+).*/\1/p' <<<"$line")
	if [ "${rc:-x}" != "$cpus" ] || [[ "$hb" == -* ]]; then
		echo "$name cpus=$cpus mem=$mem: did not boot with $cpus CPUs: $line" >&2
		echo "FAIL" >>"$file"
		return 1
	fi
	echo "$hb $ready $up" >>"$file"
}

# stats FILE COLUMN: "median min max" in ms of the column, or "failed".
stats() {
	grep -q FAIL "$1" 2>/dev/null && { echo failed; return; }
	awk -v c="$2" '{ print $c }' "$1" | sort -g | awk '
		{ v[NR] = $1 }
		END {
			if (NR == 0) { print "failed"; exit }
			m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
			printf "%.1f (%.1f-%.1f)\n", m, v[1], v[NR]
		}'
}
median() { stats "$@" | awk '{ print $1 }'; }

echo "# bench/boot.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), $RUNS runs per cell"
echo "# machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ { print $2 }') GiB, kernel $(uname -r)"
echo "# vmsnap $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo '+changes'), $($QEMU -version | head -1)"
echo "# guest: $GUEST, command line \"cpus=N\" (idle workload); raw samples in $OUT"
echo

# 1. Machine bounds.
bound() { # bound LABEL FILE [KEY]: print a table row from the KEY= (default ms=) values
	tr ' ' '\n' <"$2" | sed -n "s/^${3:-ms}=//p" >"$2.${3:-ms}"
	printf '| %s | %s |\n' "$1" "$(stats "$2.${3:-ms}" 1)"
}
"$BT" -x $((RUNS * 3)) -- "$TRUE" >"$OUT/bound-true.txt" || die "fork+exec of $TRUE failed"
"$BT" -x $((RUNS * 3)) -- "$VMSNAP" --version >"$OUT/bound-vmsnap.txt" || die "vmsnap --version failed"
"$BT" -x $((RUNS * 3)) -- "$QEMU" -version >"$OUT/bound-qemu.txt" || die "$QEMU -version failed"
"$BT" -k $((RUNS * 3)) -c 1 -m 256 >"$OUT/bound-kvm1.txt" || die "creating a KVM VM failed"
"$BT" -k $((RUNS * 3)) -c 4 -m 1024 >"$OUT/bound-kvm4.txt" || die "creating a KVM VM failed"
echo "Machine bounds, ms: median (min-max) of $((RUNS * 3))"
echo
echo "| what | ms |"
echo "|---|---|"
bound "fork+exec+exit of a static do-nothing program" "$OUT/bound-true.txt"
bound "fork+exec+exit of \`vmsnap --version\` (dynamic linking, no VM)" "$OUT/bound-vmsnap.txt"
bound "fork+exec+exit of \`$QEMU -version\`" "$OUT/bound-qemu.txt"
bound "create an empty KVM VM: open, CREATE_VM, irqchip, PIT, 256 MiB slot, 1 vCPU" "$OUT/bound-kvm1.txt"
bound "create an empty KVM VM: the same with 1 GiB and 4 vCPUs" "$OUT/bound-kvm4.txt"
bound "destroy that VM (close the fds; not part of a boot)" "$OUT/bound-kvm4.txt" destroy_ms
echo

# 2. Which QEMU configuration is fastest (1 vCPU, 256 MiB)?
for _ in $(seq "$RUNS"); do
	for q in "${QEMU_NAMES[@]}"; do run_vmm "qemu-$q" 1 256M; done
done
echo "QEMU configurations, 1 vCPU, 256 MiB: ms from launch, median (min-max) of $RUNS"
echo "(all: $QEMU $QEMU_BASE -m 256M -smp 1 -kernel guest.elf -append cpus=1 ...)"
echo
echo "| name | extra flags | first heartbeat | READY |"
echo "|---|---|---|---|"
BEST=
best_ms=
for q in "${QEMU_NAMES[@]}"; do
	f="$OUT/qemu-$q-1-256M.txt"
	# shellcheck disable=SC2016 # the backquotes are markdown
	printf '| %s | `%s` | %s | %s |\n' "$q" "${QEMU_FLAGS[$q]}" "$(stats "$f" 1)" "$(stats "$f" 2)"
	m=$(median "$f" 1)
	[ "$m" = failed ] && continue
	if [ -z "$BEST" ] || awk -v a="$m" -v b="$best_ms" 'BEGIN { exit !(a < b) }'; then
		BEST=$q
		best_ms=$m
	fi
done
[ -n "$BEST" ] || die "no QEMU configuration booted the guest"
echo
echo "fastest: $BEST"
echo

# 3. vmsnap vs QEMU (README configuration and the fastest one), interleaved.
COMPARE=(vmsnap qemu-readme)
[ "$BEST" != readme ] && COMPARE+=("qemu-$BEST")
for cpus in 1 4; do
	for mem in 256M 1G; do
		for _ in $(seq "$RUNS"); do
			for v in "${COMPARE[@]}"; do run_vmm "$v" "$cpus" "$mem"; done
		done
	done
done
echo "Launch to first heartbeat / to READY, ms: median (min-max) of $RUNS"
echo
hdr="| vCPUs | RAM |"
sep="|---|---|"
for v in "${COMPARE[@]}"; do
	hdr+=" $v first hb | $v READY |"
	sep+="---|---|"
done
echo "$hdr"
echo "$sep"
for cpus in 1 4; do
	for mem in 256M 1G; do
		row="| $cpus | $mem |"
		for v in "${COMPARE[@]}"; do
			f="$OUT/$v-$cpus-$mem.txt"
			row+=" $(stats "$f" 1) | $(stats "$f" 2) |"
		done
		echo "$row"
	done
done
echo
echo "The guest's own clock (TSC) at READY: up_ms, median (min-max); the rest of the time above"
echo "is the VMM's (process start, VM setup, loading) and the host's"
echo
echo "| vCPUs | RAM |$(printf ' %s |' "${COMPARE[@]}")"
echo "|---|---|$(printf -- '---|%.0s' "${COMPARE[@]}")"
for cpus in 1 4; do
	for mem in 256M 1G; do
		row="| $cpus | $mem |"
		for v in "${COMPARE[@]}"; do row+=" $(stats "$OUT/$v-$cpus-$mem.txt" 3) |"; done
		echo "$row"
	done
done
echo
if grep -q FAIL "$OUT"/*-*-*.txt 2>/dev/null; then
	echo "some runs failed: see $OUT/raw.txt and $OUT/stderr.log"
	exit 1
fi
