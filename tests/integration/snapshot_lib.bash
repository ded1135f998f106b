# Helpers for the snapshot integration tests (sourced after lib.bash). Each VM lives in
# $WORK/NAME/ (console.log through hbwatch, api.sock, vmsnap.err, vm.status); use_vm NAME
# points lib.bash's CON/API/SUM/VM_PID/WATCH_PID at it, so wait_line, heartbeats_since, ctl
# and con_size work on the current VM.

# vm_launch NAME VMSNAP-ARGS...: start `vmsnap VMSNAP-ARGS` with its console watched.
vm_launch() {
	local name=$1 d=$WORK/$1; shift
	mkdir -p "$d"
	: >"$d/console.log"
	rm -f "$d/con.fifo" "$d/vm.status"
	mkfifo "$d/con.fifo"
	"$HBWATCH" -l "$d/console.log" -j -s "$d/summary.json" <"$d/con.fifo" >/dev/null 2>&1 &
	local w=$!
	( "$VMSNAP" "$@" >"$d/con.fifo" 2>"$d/vmsnap.err" </dev/null; echo "$?" >"$d/vm.status" ) &
	local p=$!
	PIDS+=("$p" "$w")
	echo "$p $w" >"$d/pids"
	use_vm "$name"
}

use_vm() {
	local d=$WORK/$1
	CON=$d/console.log SUM=$d/summary.json API=$d/api.sock VM_ERR=$d/vmsnap.err VM_DIR=$d
	read -r VM_PID WATCH_PID <"$d/pids"
}

# vm_boot NAME CPUS MEM "GUEST CMDLINE" [run args...]: a fresh test guest with a control socket.
vm_boot() {
	vm_launch "$1" run --kernel "$GUEST" --cpus "$2" --mem "$3" --cmdline "cpus=$2 $4" \
		--api "$WORK/$1/api.sock" "${@:5}"
}

# vm_restore NAME IMAGE [restore args...]
vm_restore() {
	local name=$1 img=$2; shift 2
	vm_launch "$name" restore "$img" --api "$WORK/$name/api.sock" "$@"
}

# vm_wait_exit TIMEOUT: wait for the current VM to end; sets VM_STATUS.
vm_wait_exit() {
	local t=${1:-30} i=0
	while kill -0 "$VM_PID" 2>/dev/null && [ $i -lt $((t * 10)) ]; do sleep 0.1; i=$((i + 1)); done
	if kill -0 "$VM_PID" 2>/dev/null; then VM_STATUS=timeout; return 1; fi
	for _ in $(seq 50); do [ -s "$VM_DIR/vm.status" ] && break; sleep 0.1; done
	VM_STATUS=$(cat "$VM_DIR/vm.status" 2>/dev/null || echo unknown)
	return 0
}

# wait_socket: the current VM's control socket answers.
wait_socket() {
	for _ in $(seq 100); do ctl status >/dev/null 2>&1 && return 0; sleep 0.1; done
	return 1
}

# Heartbeats of vCPU INDEX (0 = 'a') in the current console from byte OFFSET on.
cpu_heartbeats_since() { # OFFSET INDEX
	local letter
	letter=$(printf "\\x$(printf %x $((97 + $2)))")
	tail -c +"$(($1 + 1))" "$CON" | grep -E '^[a-z]+$' | tr -cd "$letter" | wc -c
}

# every_cpu_beats CPUS OFFSET: every vCPU produced heartbeats since OFFSET.
every_cpu_beats() {
	local i n t
	for ((i = 0; i < $1; i++)); do
		for ((t = 0; ; t++)); do # up to 10 s: a loaded host may be slow, a stuck vCPU never beats
			n=$(cpu_heartbeats_since "$2" "$i")
			[ "$n" -gt 0 ] && break
			[ $t -lt 100 ] || { echo "vCPU $i: no heartbeats" >&2; return 1; }
			sleep 0.1
		done
	done
}

# status_field FIELD [first|last] [FROM_OFFSET]: a field of the first/last STATUS line.
status_field() {
	local which=${2:-last} from=${3:-0} lines
	lines=$(tail -c +"$((from + 1))" "$CON" | grep -aE '^STATUS ')
	if [ "$which" = first ]; then lines=$(head -1 <<<"$lines"); else lines=$(tail -1 <<<"$lines"); fi
	sed -nE "s/.* $1=([0-9]+).*/\\1/p" <<<"$lines"
}

now_ms() { date +%s%3N; }

# no_failures: no VERIFY FAIL or PANIC in the current console.
no_failures() { ! grep -qaE 'VERIFY FAIL|PANIC' "$CON"; }

# save_image IMAGE [save args...]: vmsnap save on the current VM, JSON result in $WORK/save.json
save_image() {
	local img=$1; shift
	"$VMSNAP" save --api "$API" --json "$img" "$@" >"$WORK/save.json" 2>"$WORK/save.err"
}
