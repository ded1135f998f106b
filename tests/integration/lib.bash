# Helpers for integration tests (sourced). ctest sets VMSNAP, GUEST, BUILD_DIR, SRC_DIR.
set -uo pipefail

: "${VMSNAP:?VMSNAP must point at the vmsnap binary}"
: "${GUEST:?GUEST must point at the test guest ELF}"
: "${BUILD_DIR:?}"
HBWATCH=${HBWATCH:-$BUILD_DIR/tests/hbwatch}
TEST_NAME=$(basename "$0" .sh)
WORK=$(mktemp -d "/tmp/vmsnap-it-$TEST_NAME.XXXXXX")
PIDS=()
FAILURES=0
CHECKS=0

cleanup() {
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
	wait 2>/dev/null
	if [ "$FAILURES" -eq 0 ]; then rm -rf "$WORK"; else echo "work dir kept: $WORK"; fi
}
trap cleanup EXIT

# A test that needs KVM fails loudly when it is missing: never a silent skip.
require_kvm() {
	if [ ! -c /dev/kvm ] || [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
		echo "FAIL: /dev/kvm is missing or not usable: this test needs KVM" >&2
		exit 1
	fi
	[ -f "$GUEST" ] || { echo "FAIL: test guest $GUEST not built" >&2; exit 1; }
}

pass() { CHECKS=$((CHECKS + 1)); echo "ok: $*"; }
fail() { CHECKS=$((CHECKS + 1)); FAILURES=$((FAILURES + 1)); echo "FAIL: $*" >&2; }
check() { # check DESCRIPTION command...
	local what=$1; shift
	if "$@"; then pass "$what"; else fail "$what"; fi
}

# Start a VM whose console goes through hbwatch. Sets VM_PID, WATCH_PID, CON (console log),
# SUM (summary file), API (socket path). Extra vmsnap args follow the guest command line.
start_vm() { # start_vm CPUS MEM "GUEST CMDLINE" [vmsnap args...]
	local cpus=$1 mem=$2 cmdline=$3; shift 3
	CON=$WORK/console.log
	SUM=$WORK/summary.json
	API=$WORK/api.sock
	VM_ERR=$WORK/vmsnap.err
	: >"$CON"
	rm -f "$WORK/vm.status" "$WORK/con.fifo"
	mkfifo "$WORK/con.fifo"
	"$HBWATCH" -l "$CON" -j -s "$SUM" <"$WORK/con.fifo" >/dev/null 2>&1 &
	WATCH_PID=$!
	( "$VMSNAP" run --kernel "$GUEST" --cpus "$cpus" --mem "$mem" \
		--cmdline "cpus=$cpus $cmdline" --api "$API" "$@" >"$WORK/con.fifo" 2>"$VM_ERR" <"${VM_STDIN:-/dev/null}"
	  echo "$?" >"$WORK/vm.status" ) &
	VM_PID=$!
	PIDS+=("$VM_PID" "$WATCH_PID")
}

# wait_line STR [TIMEOUT] [FROM_OFFSET]: wait for a console line containing STR.
wait_line() {
	"$HBWATCH" -w "$CON" -F "$1" -t "${2:-30}" -o "${3:-0}" -f PANIC -f 'VERIFY FAIL' >/dev/null
}

# Count heartbeat tokens ('a'..'z' runs) in the console log from byte OFFSET on.
heartbeats_since() {
	tail -c +"$(($1 + 1))" "$CON" | grep -E '^[a-z]+$' | tr -d '\n' | wc -c
}

con_size() { stat -c %s "$CON"; }

# wait_heartbeats OFFSET N [TIMEOUT]: wait (up to TIMEOUT s, default 10) until more than N
# heartbeats have arrived since OFFSET; prints the count seen. Fails if the guest stays stuck,
# never because a loaded host was slow to schedule it.
wait_heartbeats() {
	local off=$1 want=$2 t=${3:-10} n=0 i=0
	while :; do
		n=$(heartbeats_since "$off")
		[ "$n" -gt "$want" ] && break
		[ "$i" -ge $((t * 10)) ] && break
		sleep 0.1; i=$((i + 1))
	done
	echo "$n"
	[ "$n" -gt "$want" ]
}

ctl() { "$VMSNAP" ctl --timeout 10000 "$API" "$@"; }

# wait_exit TIMEOUT: wait for the VM to end; sets VM_STATUS.
wait_exit() {
	local t=${1:-30} i=0
	while kill -0 "$VM_PID" 2>/dev/null && [ $i -lt $((t * 10)) ]; do sleep 0.1; i=$((i + 1)); done
	if kill -0 "$VM_PID" 2>/dev/null; then VM_STATUS=timeout; return 1; fi
	wait "$VM_PID" 2>/dev/null
	for _ in $(seq 50); do [ -s "$WORK/vm.status" ] && break; sleep 0.1; done
	VM_STATUS=$(cat "$WORK/vm.status" 2>/dev/null || echo unknown)
	wait "$WATCH_PID" 2>/dev/null
	return 0
}

# json_field FILE KEY: a number or string value from a one-line JSON object.
json_field() {
	python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

finish() {
	echo "$((CHECKS - FAILURES)) passed, $FAILURES failed"
	[ "$FAILURES" -eq 0 ]
	exit $?
}
