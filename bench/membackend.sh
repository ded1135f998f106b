#!/usr/bin/env bash
# How fast the test guest writes its RAM the first time under each RAM backing: vmsnap with
# --mem-backend memfd (default) and anon (THP), and QEMU microvm (anonymous memory with THP).
# The guest dirties a 1 GiB working set at full speed on 1 vCPU; the figure is the guest time
# (its STATUS lines, every 100 ms) until it has written WSS MiB, i.e. about every page once.
#
#   bench/membackend.sh [WSS_MIB] [RUNS]      (defaults 1024, 3)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
WSS=${1:-1024}
RUNS=${2:-3}
MEM=$(( WSS + 512 ))M
VMSNAP=${VMSNAP:-build/vmsnap}
GUEST=${GUEST:-build/tests/guest/guest.elf}
CMDLINE="cpus=1 workload=dirty wss=$WSS rate=0 verify=100000 status=100ms"
WORK=$(mktemp -d /tmp/vmsnap-membench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

first_pass_ms() { # console log -> guest up_ms of the first STATUS with dirtied_mib >= WSS
	awk -v w="$WSS" '/^STATUS/ { t = ""; d = -1; for (i = 1; i <= NF; i++) { split($i, a, "="); if (a[1] == "up_ms") t = a[2]; if (a[1] == "dirtied_mib") d = a[2] } if (d + 0 >= w + 0) { print t; exit } }' "$1"
}

run_one() { # name, command...
	local name=$1 log=$WORK/$1.log
	shift
	: >"$log"
	"$@" >"$log" 2>/dev/null &
	local pid=$! i=0
	while [ -z "$(first_pass_ms "$log")" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
	kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
	local t
	t=$(first_pass_ms "$log")
	echo "${t:-timeout}"
}

printf 'guest writes %s MiB once (1 vCPU, full speed), guest ms until it wrote that much; %d runs\n' "$WSS" "$RUNS"
printf '%-22s %s\n' "VMM / backing" "runs (ms)"
for cfg in memfd anon qemu; do
	res=()
	for _ in $(seq "$RUNS"); do
		case $cfg in
		qemu) res+=("$(run_one q qemu-system-x86_64 -M microvm,x-option-roms=off,pit=off,pic=off,rtc=off,acpi=off \
			-enable-kvm -cpu host -m "$MEM" -smp 1 -display none -nodefaults -no-user-config \
			-serial stdio -no-reboot -kernel "$GUEST" -append "$CMDLINE")") ;;
		*) res+=("$(run_one v "$VMSNAP" run --kernel "$GUEST" --mem "$MEM" --cpus 1 \
			--mem-backend "$cfg" --cmdline "$CMDLINE" --console stdio)") ;;
		esac
	done
	name="vmsnap $cfg"; [ $cfg = qemu ] && name="QEMU (anon, THP)"
	printf '%-22s %s\n' "$name" "${res[*]}"
done
