#!/usr/bin/env bash
# Repeated saves of one running test guest: boots it with the memory dirtier, waits until its
# working set is written, then saves it N times over the same image and prints each save's
# figures (pause, time to a durable image, and of that the finish (index, end record, SHA-256)
# and the fsync). For judging a change to the save path: its spread shows how noisy a single
# bench/snapshot.sh figure is. Results: docs/BENCHMARKS.md (section 3a).
#
# usage: bench/save_repeat.sh [MIB] [WSS_MIB] [N]     (default 4096 1024 4; as root)
# environment: BUILD (build dir, default build), VMSNAP (binary, default $BUILD/vmsnap),
#              DIR (image directory, default a new /var/tmp/vmsnap-save-repeat.* directory)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
MIB=${1:-4096}
WSS=${2:-1024}
N=${3:-4}
BUILD=${BUILD:-build}
VMSNAP=${VMSNAP:-$BUILD/vmsnap}
GUEST=$BUILD/tests/guest/guest.elf
die() { echo "bench/save_repeat.sh: $*" >&2; exit 1; }
[ -c /dev/kvm ] || die "/dev/kvm is missing"
[ -x "$VMSNAP" ] && [ -f "$GUEST" ] || die "build first: cmake --build $BUILD (need $VMSNAP and $GUEST)"
DIR=${DIR:-$(mktemp -d /var/tmp/vmsnap-save-repeat.XXXXXX)}
mkdir -p "$DIR"
"$VMSNAP" run --kernel "$GUEST" --mem "${MIB}M" --cpus 2 --api "$DIR/vm.sock" \
	--cmdline "cpus=2 workload=dirty wss=$WSS rate=0 verify=1s status=250ms" >"$DIR/console.log" 2>&1 &
vm=$!
trap 'kill $vm 2>/dev/null; wait $vm 2>/dev/null; rm -f "$DIR/image"' EXIT
for _ in $(seq 600); do
	grep -aq 'VERIFY OK.*unwritten=0' "$DIR/console.log" && break
	kill -0 $vm 2>/dev/null || die "the guest ended: $DIR/console.log"
	sleep 0.2
done
grep -aq 'VERIFY OK.*unwritten=0' "$DIR/console.log" || die "the working set was not written in 120 s"
echo "RAM ${MIB} MiB, working set ${WSS} MiB, 2 vCPUs dirtying at full speed; $N saves to $DIR/image"
echo "pause_ms total_ms finish_ms fsync_ms"
for _ in $(seq "$N"); do
	"$VMSNAP" save --api "$DIR/vm.sock" "$DIR/image" --json |
		python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["pause_ms"], d["total_ms"], d["finish_ms"], d["fsync_ms"])' ||
		die "save failed"
	sleep 0.5
done
"$VMSNAP" ctl "$DIR/vm.sock" quit >/dev/null 2>&1
